//! The two baselines, `raw-s3` and `peer` (rclone), on a tiny data set against the local Garage:
//! they move every object, report what they moved, fail when an object is not what it should
//! be, and clean up after themselves. Keeps the
//! baselines working in CI; it checks bookkeeping, never a speed.

use cim_bench::data::{DataKind, DataSet};
use cim_bench::env::{Env, S3Options};
use cim_bench::scenarios::{peer, raw_s3};

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_s3_and_peer_move_every_object_and_clean_up() -> anyhow::Result<()> {
    let env = Env::start(&S3Options {
        s3_endpoint: None,
        s3_region: "us-east-1".into(),
        s3_bucket: None,
        s3_access_key: None,
        s3_secret_key: None,
    })
    .await?;
    let set = DataSet::create(&env.scratch.path().join("set"), DataKind::Random, MIB, 3, 1)?;

    let (put, get) = raw_s3::run(&env.s3, &set, "baselines/raw/", 2).await?;
    eprintln!("raw-s3 put: {put:?}\nraw-s3 get: {get:?}");
    for run in [&put, &get] {
        assert_eq!((run.objects, run.logical_bytes), (3, 3 * MIB));
        assert_eq!(run.stored_bytes, 3 * MIB);
        assert_eq!(run.latencies.len(), 3);
        assert!(run.latencies.iter().all(|l| *l <= run.elapsed));
        assert!(run.procs.is_empty());
    }

    let version = peer::rclone_version().await?;
    assert!(version.starts_with("rclone v1."), "{version}");
    let (up, down) = peer::run(&env.s3, &set, "baselines/peer/", 2, env.scratch.path()).await?;
    eprintln!("peer up: {up:?}\npeer down: {down:?}");
    for run in [&up, &down] {
        assert_eq!((run.objects, run.logical_bytes), (3, 3 * MIB));
        assert!(run.latencies.is_empty());
        assert_eq!(run.procs.len(), 1);
        assert_eq!(run.procs[0].name, "rclone");
        assert!(run.procs[0].peak_rss_bytes > 0, "{:?}", run.procs[0]);
    }

    // An object that is not what the data set says (a file cut short behind the bench's back)
    // fails both baselines, naming it, instead of giving a number.
    let short = &set.files[1];
    std::fs::write(short, &std::fs::read(short)?[..1000])?;
    let err = raw_s3::run(&env.s3, &set, "baselines/raw/", 2).await.err();
    let err = err.map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(
        err.contains("GET baselines/raw/o-000001: received 1000 bytes"),
        "{err}"
    );
    let err = peer::run(&env.s3, &set, "baselines/peer/", 2, env.scratch.path())
        .await
        .err();
    let err = err.map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(err.contains("o-000001 has 1000 bytes"), "{err}");

    let left = env
        .s3
        .client()
        .list_objects_v2()
        .bucket(&env.s3.bucket)
        .prefix("baselines/")
        .send()
        .await?;
    assert_eq!(left.key_count(), Some(0), "objects left behind: {left:?}");
    Ok(())
}
