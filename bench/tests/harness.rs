//! The bench's own bookkeeping on a tiny configuration (never its speed): objects and bytes
//! counted equal the data set, ratios come from the same run, and an object dropped behind the
//! bench's back fails the run with an error naming it.
#![allow(clippy::unwrap_used, missing_docs)]

use cim_bench::data::{DataKind, DataSet};
use cim_bench::env::{Env, S3Options};
use cim_bench::report;
use cim_bench::runner::{self, Plan, Scenario, KIB};
use cim_bench::scenarios::pipeline::{self, Stage};
use cim_tiering::digest::Sha256Digest;

fn local() -> S3Options {
    S3Options {
        s3_endpoint: None,
        s3_region: "us-east-1".into(),
        s3_bucket: None,
        s3_access_key: None,
        s3_secret_key: None,
    }
}

/// A baseline written by another module may not be merged yet on this branch.
fn not_merged(error: &Option<String>) -> bool {
    error
        .as_deref()
        .is_some_and(|e| e.contains("module not merged yet"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tiny_run_counts_what_it_moved_and_compares_within_the_run() {
    let env = Env::start(&local()).await.unwrap();
    let mut plan = Plan::tiny();
    plan.scenarios = vec![
        Scenario::Upload,
        Scenario::Restore,
        Scenario::Replicate,
        Scenario::RawS3,
        Scenario::RawNats,
        Scenario::Peer,
        Scenario::Small,
    ];
    plan.sizes = vec![256 * KIB];
    plan.min_bytes = 768 * KIB;
    plan.small_objects = 12;
    let results = runner::run_plan(&env, &plan).await.unwrap();

    let ours = ["upload", "restore", "replicate"];
    for cell in &results.cells {
        if not_merged(&cell.error) {
            continue;
        }
        assert!(
            cell.error.is_none(),
            "{} failed: {:?}",
            cell.scenario,
            cell.error
        );
        assert_eq!(cell.runs.len(), plan.repeat, "{}", cell.scenario);
        let objects = if cell.set == "small" { 12 } else { 3 };
        for run in &cell.runs {
            assert_eq!(run.objects, objects, "{} {}", cell.set, cell.scenario);
            assert_eq!(run.logical_bytes, objects * cell.size, "{}", cell.scenario);
            assert!(!run.elapsed.is_zero());
            if ours.contains(&cell.scenario.as_str()) {
                assert!(
                    !run.procs.is_empty(),
                    "{}: no process watched",
                    cell.scenario
                );
            }
            if ["upload", "restore"].contains(&cell.scenario.as_str()) {
                // Random data does not compress: S3 stores at least what was moved.
                assert!(
                    run.stored_bytes >= run.logical_bytes,
                    "{}: {run:?}",
                    cell.scenario
                );
            }
            if cell.scenario == "upload" || cell.scenario == "replicate" {
                // One latency per object, each within the run, the last one ending it.
                assert_eq!(run.latencies.len() as u64, objects, "{}", cell.scenario);
                assert!(run.latencies.iter().all(|l| *l <= run.elapsed), "{run:?}");
                if cell.scenario == "upload" {
                    assert_eq!(run.latencies.iter().max(), Some(&run.elapsed), "{run:?}");
                }
            }
        }
    }
    for (set, row) in [
        ("matrix", "upload"),
        ("matrix", "restore"),
        ("matrix", "replicate"),
        ("small", "upload"),
        ("small", "restore"),
    ] {
        assert!(
            results
                .cells
                .iter()
                .any(|c| c.set == set && c.scenario == row && c.runs.len() == 1),
            "no {set} {row} run"
        );
    }

    // Every ratio is ours over a baseline of the same data and concurrency, same run.
    let summaries = report::summarize(&results);
    for s in &summaries {
        for ratio in &s.ratios {
            let baseline = summaries
                .iter()
                .find(|b| {
                    b.scenario == ratio.baseline
                        && b.set == s.set
                        && b.size == s.size
                        && b.concurrency == s.concurrency
                })
                .unwrap();
            let expected = s.mib_per_sec.unwrap().median / baseline.mib_per_sec.unwrap().median;
            assert!((ratio.ratio - expected).abs() < 1e-9 * expected.max(1.0));
        }
        let baselines = report::baselines_of(&s.scenario);
        let merged = !baselines.is_empty()
            && baselines.iter().all(|b| {
                summaries
                    .iter()
                    .any(|x| x.scenario == *b && x.set == s.set && x.error.is_none())
            });
        if merged && s.error.is_none() {
            assert_eq!(
                s.ratios.len(),
                baselines.len(),
                "{} {}: {:?}",
                s.set,
                s.scenario,
                s.ratios
            );
        }
    }
    let table = report::table(&summaries);
    assert!(
        table.contains("upload") && table.contains("restore"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_dropped_behind_the_benchs_back_fails_the_run_naming_it() {
    let env = Env::start(&local()).await.unwrap();
    let set = DataSet::create(
        &env.scratch.path().join("neg"),
        DataKind::Random,
        100 * KIB,
        3,
        1,
    )
    .unwrap();

    // Upload: one object purged from the hub after set-up, before the clock starts.
    let mut prepared = pipeline::prepare(&env, Stage::Upload, &set, "neg-upload", 2)
        .await
        .unwrap();
    let hub = async_nats::jetstream::new(env.topology.hub.connect().await.unwrap());
    let store = hub.get_object_store(&prepared.bucket).await.unwrap();
    store.delete("o-000001").await.unwrap();
    let error = format!("{:#}", prepared.run(&env, &set).await.unwrap_err());
    eprintln!("upload failed as it should: {error}");
    assert!(error.contains("o-000001"), "{error}");

    // Restore: one blob deleted from S3 after set-up.
    let mut prepared = pipeline::prepare(&env, Stage::Restore, &set, "neg-restore", 2)
        .await
        .unwrap();
    let content = std::fs::read(&set.files[2]).unwrap();
    let key = cim_gateway::format::blob_key(&prepared.prefix, &Sha256Digest::of(&content));
    env.s3
        .client()
        .delete_object()
        .bucket(&env.s3.bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    let error = format!("{:#}", prepared.run(&env, &set).await.unwrap_err());
    eprintln!("restore failed as it should: {error}");
    assert!(
        error.contains("object o-000002 is not on the hub"),
        "{error}"
    );
}
