//! The NATS-side baselines on the test kit's servers, tiny enough for CI: `raw-nats` put and
//! get and its raw copies hub → S3 → hub, and the manager's `policy-eval` pass. Checks the bench's bookkeeping (counts, bytes,
//! the processes watched) and that a failure names the object; never a speed.
//!
//! `policy-eval` runs `cim-storage`: build it first (`cargo build -p cim-tiering --bins`).
#![allow(clippy::unwrap_used, missing_docs)]

use cim_bench::data::{DataKind, DataSet};
use cim_bench::env::{Env, S3Options};
use cim_bench::scenarios::{policy_eval, raw_nats};

const MIB: u64 = 1024 * 1024;

/// The local servers (Garage as the S3 side, for the raw copies).
async fn local_env() -> Env {
    let options = S3Options {
        s3_endpoint: None,
        s3_region: "us-east-1".into(),
        s3_bucket: None,
        s3_access_key: None,
        s3_secret_key: None,
    };
    Env::start(&options).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raw_nats_puts_and_gets_every_byte_and_names_a_bad_object() {
    let env = local_env().await;
    let dir = env.scratch.path().join("raw-nats");
    let set = DataSet::create(&dir, DataKind::Random, MIB, 3, 1).unwrap();
    let runs = raw_nats::run(&env, &set, "bench-raw-nats", "bench/raw-nats/", 2)
        .await
        .unwrap();
    for run in [&runs.put, &runs.get, &runs.copy_up, &runs.copy_down] {
        assert_eq!(run.objects, 3);
        assert_eq!(run.logical_bytes, 3 * MIB);
        assert_eq!(run.stored_bytes, 3 * MIB);
        assert_eq!(run.latencies.len(), 3);
        assert!(run.elapsed >= *run.latencies.iter().max().unwrap());
        assert!(run.procs.is_empty());
    }

    // An object whose file lost half its bytes behind the bench's back fails the run, by name.
    std::fs::write(&set.files[1], vec![0u8; (MIB / 2) as usize]).unwrap();
    let error = raw_nats::run(&env, &set, "bench-raw-nats", "bench/raw-nats/", 2)
        .await
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("o-000001"), "{message}");
    assert!(message.contains("524288 bytes"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn policy_eval_times_a_manager_pass_over_every_meta() {
    let env = local_env().await;
    let eval = policy_eval::run(&env, 2_000).await.unwrap();
    for run in [&eval.first_scan, &eval.steady, &eval.with_new] {
        assert_eq!(run.objects, 2_000);
        assert!(run.elapsed > std::time::Duration::ZERO);
        assert_eq!(run.procs.len(), 1);
        assert_eq!(run.procs[0].name, "manager");
        assert!(run.procs[0].peak_rss_bytes > 0);
    }
    assert!(eval.first_scan.procs[0].cpu_seconds > 0.0);
}
