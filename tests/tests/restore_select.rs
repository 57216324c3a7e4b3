//! Selective restore on real servers: `--prefix` and `--match` globs choose the objects, a
//! `--dry-run` decides without writing anything, `--json` reports for scripts, exit statuses
//! tell "failed", "bad arguments", "skipped" and "nothing matched" apart, and a restore by
//! prefix killed with SIGKILL is finished by the next run — every object restored once, no
//! stray chunks.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use cim_tests::{cim_bin, wait_until, RoleProcess, Topology};
use cim_tiering::catalog::Version;
use cim_tiering::digest::Sha256Digest;
use cim_tiering::jetstream::stream_name;
use cim_tiering::jetstream::write::WRITE_JOURNAL_BUCKET;
use cim_tiering::lease::LEASE_BUCKET;
use common::{content, describe, gateway, plant, put_hub, Tiers};
use futures::TryStreamExt;

/// Everything moves hub → S3, so restore's default target is the hub.
const POLICIES: &str = r#"
[[policy]]
name = "cluster-to-s3"
buckets = ["*"]
from = "hub"
to = "s3"
action = "move"
after = "0s"
"#;

/// Subjects (with message counts) of `stream` under `filter`; empty without the stream.
async fn subjects(hub: &jetstream::Context, stream: &str, filter: &str) -> Vec<(String, usize)> {
    let Ok(stream) = hub.get_stream(stream).await else {
        return Vec::new();
    };
    let mut found: Vec<(String, usize)> = stream
        .info_with_subjects(filter)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    found.sort();
    found
}

/// Chunk subjects of `bucket` on the hub.
async fn chunk_subjects(hub: &jetstream::Context, bucket: &str) -> Vec<(String, usize)> {
    subjects(hub, &stream_name(bucket), &format!("$O.{bucket}.C.>")).await
}

/// Keys of the write journal.
async fn journal_keys(hub: &jetstream::Context) -> Vec<String> {
    let prefix = format!("$KV.{WRITE_JOURNAL_BUCKET}.");
    subjects(
        hub,
        &format!("KV_{WRITE_JOURNAL_BUCKET}"),
        &format!("{prefix}>"),
    )
    .await
    .into_iter()
    .map(|(s, _)| s.trim_start_matches(&prefix).to_string())
    .collect()
}

/// Writer leases held (`writer.<id>` keys of the lease bucket).
async fn writer_leases(hub: &jetstream::Context) -> Vec<String> {
    let prefix = format!("$KV.{LEASE_BUCKET}.writer.");
    subjects(hub, &format!("KV_{LEASE_BUCKET}"), &format!("{prefix}>"))
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

/// The JSON lines of a `--json` run: the object lines by name, and the summary.
fn json_report(
    out: &std::process::Output,
) -> (BTreeMap<String, serde_json::Value>, serde_json::Value) {
    let mut objects = BTreeMap::new();
    let mut summary = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\n{}", describe(out)));
        match value["type"].as_str() {
            Some("object") => {
                objects.insert(value["name"].as_str().unwrap().to_string(), value);
            }
            Some("summary") => summary = Some(value),
            _ => {}
        }
    }
    (
        objects,
        summary.unwrap_or_else(|| panic!("no summary\n{}", describe(out))),
    )
}

/// The names on stdout lines that start with `verb` (`restored`, `present`, …) in bucket `bucket`.
fn named(stdout: &str, verb: &str, bucket: &str) -> Vec<String> {
    let start = format!("{verb} {bucket}/");
    let mut names: Vec<String> = stdout
        .lines()
        .filter_map(|l| {
            l.split_once(&start)
                .filter(|(pad, _)| pad.trim().is_empty())
        })
        .map(|(_, rest)| rest.split(": ").next().unwrap().to_string())
        .collect();
    names.sort();
    names
}

/// One bucket holding every case: objects under and outside a prefix, a tombstone, an object
/// whose hub copy is another version (skipped), and one whose manifest disagrees with the
/// catalog (refused). A dry run by prefix reports each as a real run would decide it and writes
/// nothing (no chunk, no meta, no journal record, no writer lease, no catalog entry); then real
/// runs by glob and by prefix restore exactly what they select.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefix_and_globs_select_and_a_dry_run_writes_nothing() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(POLICIES);
    let tiers = Tiers::connect(&topology).await;
    let bucket = "sel";
    let mut data = BTreeMap::new();
    for (i, name) in [
        "reports/2026/a.csv",
        "reports/2026/b.json",
        "reports/2025/c.csv",
        "top.csv",
        "logs/x.log",
    ]
    .into_iter()
    .enumerate()
    {
        let bytes = content(900 + i as u64, 20_000 + 1000 * i);
        plant(&topology, bucket, name, &bytes, |_| {}).await;
        data.insert(name, bytes);
    }
    plant(
        &topology,
        bucket,
        "reports/2026/gone.csv",
        &content(910, 5000),
        |m| {
            m["format"] = 3.into();
            m["source_seq"] = 7.into();
            m["deleted"] =
                serde_json::json!({"at": "2026-01-02T00:00:00Z", "by": "user delete on hub"});
        },
    )
    .await;
    // The hub holds another version of `other.csv` than S3.
    plant(
        &topology,
        bucket,
        "reports/2026/other.csv",
        &content(911, 6000),
        |_| {},
    )
    .await;
    let held = content(912, 7000);
    put_hub(&tiers, bucket, "reports/2026/other.csv", &held).await;
    // The catalog records another digest for S3's copy of `lies.csv` than its manifest says.
    let key = plant(
        &topology,
        bucket,
        "reports/2026/lies.csv",
        &content(913, 8000),
        |_| {},
    )
    .await;
    tiers
        .catalog
        .record_copy(
            bucket,
            "reports/2026/lies.csv",
            &Version {
                size: 8000,
                digest: Sha256Digest::of(b"the truth"),
                seq: 1,
            },
            "s3",
            Some(key),
        )
        .await
        .unwrap();
    let chunks_before = chunk_subjects(&tiers.hub, bucket).await;

    // The dry run: every decision, nothing written.
    let out = gateway(
        &config,
        &[
            "restore",
            "--bucket",
            bucket,
            "--prefix",
            "reports/2026/",
            "--dry-run",
            "--json",
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "a refusal is a failure\n{}",
        describe(&out)
    );
    let (objects, summary) = json_report(&out);
    let outcomes: BTreeMap<&str, &str> = objects
        .iter()
        .map(|(n, v)| (n.as_str(), v["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        outcomes,
        BTreeMap::from([
            ("reports/2026/a.csv", "would_restore"),
            ("reports/2026/b.json", "would_restore"),
            ("reports/2026/gone.csv", "deleted"),
            ("reports/2026/lies.csv", "failed"),
            ("reports/2026/other.csv", "skipped"),
        ]),
        "{}",
        describe(&out)
    );
    assert_eq!(objects["reports/2026/lies.csv"]["error_kind"], "refused");
    assert!(objects["reports/2026/other.csv"]["reason"]
        .as_str()
        .unwrap()
        .contains("another version"));
    assert_eq!(summary["dry_run"], true);
    assert_eq!(summary["matched"], 5);
    assert_eq!(summary["would_restore"], 2);
    assert_eq!(summary["exit_status"], 1);
    assert_eq!(chunk_subjects(&tiers.hub, bucket).await, chunks_before);
    assert!(tiers
        .hub_tier
        .latest(bucket, "reports/2026/a.csv")
        .await
        .unwrap()
        .is_none());
    assert!(journal_keys(&tiers.hub).await.is_empty());
    assert!(
        writer_leases(&tiers.hub).await.is_empty(),
        "a dry run took a writer lease"
    );
    assert!(tiers
        .catalog
        .get(bucket, "reports/2026/a.csv")
        .await
        .unwrap()
        .is_none());

    // The same dry run for people: one line per object, the refusal on stdout with the plan.
    let out = gateway(
        &config,
        &[
            "restore",
            "--bucket",
            bucket,
            "--prefix",
            "reports/2026/",
            "--dry-run",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        named(&stdout, "would restore", bucket),
        ["reports/2026/a.csv", "reports/2026/b.json"],
        "{}",
        describe(&out)
    );
    assert_eq!(
        named(&stdout, "refused ", bucket),
        ["reports/2026/lies.csv"]
    );
    assert!(
        stdout.contains("dry run, nothing written: 2 would be restored, 0 present, 1 refused, 1 skipped, 1 deleted"),
        "{}",
        describe(&out)
    );

    // A glob: `*.csv` takes .csv names at any depth; exit 1 for lies.csv.
    let out = gateway(
        &config,
        &["restore", "--bucket", bucket, "--match", "*.csv"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        named(&stdout, "restored", bucket),
        ["reports/2025/c.csv", "reports/2026/a.csv", "top.csv"],
        "{}",
        describe(&out)
    );
    assert_eq!(
        named(&stdout, "skipped ", bucket),
        ["reports/2026/other.csv"]
    );
    assert_eq!(
        named(&stdout, "deleted ", bucket),
        ["reports/2026/gone.csv"]
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("FAILED   sel/reports/2026/lies.csv"));
    for name in ["reports/2025/c.csv", "reports/2026/a.csv", "top.csv"] {
        assert!(
            Tiers::read(&tiers.hub, bucket, name).await.0 == data[name],
            "{name}"
        );
    }
    assert!(tiers
        .hub_tier
        .latest(bucket, "reports/2026/b.json")
        .await
        .unwrap()
        .is_none());
    assert!(tiers
        .hub_tier
        .latest(bucket, "logs/x.log")
        .await
        .unwrap()
        .is_none());

    // An anchored glob and a prefix together; what is there already is present: exit 0.
    let out = gateway(
        &config,
        &[
            "restore",
            "--bucket",
            bucket,
            "--prefix",
            "reports/",
            "--match",
            "/reports/202?/*.json",
            "--match",
            "/reports/2025/*",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        named(&stdout, "restored", bucket),
        ["reports/2026/b.json"],
        "{}",
        describe(&out)
    );
    assert_eq!(
        named(&stdout, "present ", bucket),
        ["reports/2025/c.csv"],
        "{}",
        describe(&out)
    );
    assert!(
        stdout.contains("2 restored or present, 0 failed, 0 skipped"),
        "{}",
        describe(&out)
    );

    // Only a skip: exit 3.
    let out = gateway(
        &config,
        &[
            "restore",
            "--bucket",
            bucket,
            "--prefix",
            "reports/2026/oth",
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
}

/// Exit statuses: bad arguments are clap's 2 (a bad glob, two selections that exclude each
/// other, no selection); nothing matched is 4, for a prefix, a glob, a name and a bucket with no
/// objects, in JSON too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_arguments_and_nothing_matched_have_their_own_exit_status() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(POLICIES);
    let bucket = "few";
    plant(&topology, bucket, "dir/one", &content(920, 3000), |_| {}).await;

    for args in [
        &["restore", "--bucket", bucket, "--match", "dir/[on"][..],
        &[
            "restore", "--bucket", bucket, "--name", "dir/one", "--prefix", "dir/",
        ],
        &["restore", "--bucket", bucket, "--all", "--match", "*"],
        &["restore", "--bucket", bucket],
        &["restore", "--bucket", bucket, "--prefix", ""],
    ] {
        let out = gateway(&config, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}\n{}", describe(&out));
    }
    for args in [
        &["restore", "--bucket", bucket, "--prefix", "nope/"][..],
        &["restore", "--bucket", bucket, "--match", "*.csv"],
        &["restore", "--bucket", bucket, "--name", "dir/two"],
        &["restore", "--bucket", "empty", "--all"],
        &[
            "restore",
            "--bucket",
            bucket,
            "--prefix",
            "nope/",
            "--dry-run",
        ],
    ] {
        let out = gateway(&config, args);
        assert_eq!(out.status.code(), Some(4), "{args:?}\n{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("nothing matched"),
            "{args:?}\n{}",
            describe(&out)
        );
    }
    let out = gateway(
        &config,
        &["restore", "--bucket", bucket, "--match", "*.csv", "--json"],
    );
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    let (objects, summary) = json_report(&out);
    assert!(objects.is_empty());
    assert_eq!(summary["matched"], 0);
    assert_eq!(summary["exit_status"], 4);

    // And the one object there, by glob: exit 0, restored.
    let out = gateway(&config, &["restore", "--bucket", bucket, "--match", "one"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(
        named(&String::from_utf8_lossy(&out.stdout), "restored", bucket),
        ["dir/one"]
    );
}

/// A restore by prefix killed with SIGKILL while objects are in flight: what it had made
/// visible is complete and verified; the next run (once the killed writer's lease is gone)
/// purges the stray chunks, finds what was restored present and restores the rest — every
/// object restored exactly once over both runs, nothing outside the prefix touched, no chunk
/// left that no object references, the journal empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restore_by_prefix_killed_and_run_again_restores_everything_once() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(POLICIES);
    let tiers = Tiers::connect(&topology).await;
    let bucket = "resume";
    const COUNT: usize = 16;
    let objects: BTreeMap<String, Vec<u8>> = (0..COUNT)
        .map(|i| {
            (
                format!("batch/{i:02}.bin"),
                content(930 + i as u64, 4 << 20),
            )
        })
        .collect();
    for (name, bytes) in &objects {
        plant(&topology, bucket, name, bytes, |_| {}).await;
    }
    plant(
        &topology,
        bucket,
        "elsewhere/keep.bin",
        &content(960, 10_000),
        |_| {},
    )
    .await;

    let log = topology.dir().join("restore-select-killed.log");
    let config_arg = config.to_str().unwrap();
    let mut first = RoleProcess::spawn(
        &cim_bin("cim-gateway"),
        &[
            "restore",
            "--config",
            config_arg,
            "--bucket",
            bucket,
            "--prefix",
            "batch/",
            "--concurrency",
            "2",
        ],
        &log,
    )
    .unwrap();
    let some_visible = wait_until(
        "a few objects restored",
        Duration::from_secs(120),
        || async { Tiers::names(&tiers.hub_tier, bucket).await.len() >= 3 },
    )
    .await;
    some_visible.unwrap_or_else(|e| panic!("{e:#}\n{}", first.log()));
    first.sigkill();
    let first_log = first.log();
    // What the killed process had sent is still being stored for a moment, and a listing may
    // be answered by the replica the writes' acknowledgements did not wait for: let both
    // settle before looking, or the next run finds "present" an object not counted here.
    tokio::time::sleep(Duration::from_secs(1)).await;
    topology
        .hub
        .settle(&tiers.hub, &stream_name(bucket), Duration::from_secs(30))
        .await
        .unwrap();
    let visible = Tiers::names(&tiers.hub_tier, bucket).await;
    assert!(
        visible.len() < COUNT,
        "the run finished before it was killed: {first_log}"
    );
    for name in &visible {
        assert!(
            Tiers::read(&tiers.hub, bucket, name).await.0 == objects[name],
            "{name}"
        );
    }
    let restored_first = named(&first_log, "restored", bucket);

    // The killed writer's records: the next run leaves them while its lease lives, so wait
    // for the lease to go (the server expires it 30 s after the process died).
    let records = journal_keys(&tiers.hub).await;
    for record in &records {
        let writer = record.split('.').next().unwrap().to_string();
        let gone = wait_until(
            "the killed writer's lease expires",
            Duration::from_secs(90),
            || {
                let hub = tiers.hub.clone();
                let key = format!("writer.{writer}");
                async move {
                    let kv = hub.get_key_value(LEASE_BUCKET).await.unwrap();
                    kv.get(key).await.unwrap().is_none()
                }
            },
        )
        .await;
        gone.unwrap();
    }
    // Lease replicas expire on their own clocks: a run may still see the lease and leave the
    // records; the next purges them (see restore_stream.rs). Every run must succeed.
    let mut runs = Vec::new();
    let second = loop {
        let out = gateway(
            &config,
            &[
                "restore", "--bucket", bucket, "--prefix", "batch/", "--json",
            ],
        );
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        runs.push(out);
        if journal_keys(&tiers.hub).await.is_empty() || runs.len() == 5 {
            break runs.remove(0);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(
        journal_keys(&tiers.hub).await.is_empty(),
        "records left after {} runs",
        runs.len() + 1
    );
    let (outcomes, summary) = json_report(&second);
    let of = |kind: &str| -> Vec<String> {
        outcomes
            .iter()
            .filter(|(_, v)| v["outcome"] == kind)
            .map(|(n, _)| n.clone())
            .collect()
    };
    // What the killed run had made visible is found present (a meta it published but did not
    // get to report as restored included), the rest is restored now.
    let mut visible = visible;
    visible.sort();
    assert_eq!(of("present"), visible, "{}\n{first_log}", describe(&second));
    assert!(
        restored_first.iter().all(|n| visible.contains(n)),
        "{restored_first:?} vs {visible:?}"
    );
    let mut all: Vec<String> = of("restored").into_iter().chain(of("present")).collect();
    all.sort();
    assert_eq!(
        all,
        objects.keys().cloned().collect::<Vec<_>>(),
        "{}",
        describe(&second)
    );
    assert_eq!(summary["matched"], COUNT);
    // Each object restored once: one version, one chunk subject each, nothing else.
    let chunks = chunk_subjects(&tiers.hub, bucket).await;
    assert_eq!(chunks.len(), COUNT, "stray chunks: {chunks:?}");
    for (name, bytes) in &objects {
        let (read, info) = Tiers::read(&tiers.hub, bucket, name).await;
        assert!(read == *bytes, "{name}");
        assert_eq!(info.digest, Some(Sha256Digest::of(bytes).to_nats()));
        assert!(
            chunks
                .iter()
                .any(|(s, n)| s.ends_with(&info.nuid) && *n == 32),
            "{name}: {chunks:?}"
        );
    }
    assert!(tiers
        .hub_tier
        .latest(bucket, "elsewhere/keep.bin")
        .await
        .unwrap()
        .is_none());
    // The catalog knows every copy a run reported restored. (One the killed run made visible
    // but was killed before recording is present and not in the catalog: restore records only
    // what it verified itself.)
    let catalogued = tiers.catalog_locations(bucket).await;
    for name in of("restored").iter().chain(&restored_first) {
        assert_eq!(
            catalogued.get(name),
            Some(&vec!["hub".to_string()]),
            "{name}"
        );
    }
}
