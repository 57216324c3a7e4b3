//! Streaming restore (S3 → decompress → SHA-256 → pipelined chunk publishes → meta) on real
//! servers: a restore killed with SIGKILL leaves no visible object and its chunks are purged by
//! the next run; a blob that does not match its manifest is refused after its chunks were
//! published, which are purged, and the version the target held stays; many small objects are
//! restored concurrently, each verified.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use async_nats::jetstream;
use cim_tests::{cim_bin, wait_until, RoleProcess, Topology};
use cim_tiering::catalog::Version;
use cim_tiering::digest::Sha256Digest;
use cim_tiering::jetstream::write::WRITE_JOURNAL_BUCKET;
use cim_tiering::jetstream::{chunk_subject, stream_name};
use cim_tiering::lease::LEASE_BUCKET;
use common::{content, describe, gateway, plant, Tiers, PREFIX};
use futures::{StreamExt, TryStreamExt};

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

/// Chunk messages the hub stream of `bucket` holds per chunk subject (empty without a stream).
async fn chunk_counts(hub: &jetstream::Context, bucket: &str) -> Vec<(String, usize)> {
    let Ok(stream) = hub.get_stream(stream_name(bucket)).await else {
        return Vec::new();
    };
    let mut counts: Vec<(String, usize)> = stream
        .info_with_subjects(format!("$O.{bucket}.C.>"))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    counts.sort();
    counts
}

/// Keys of the write journal (records of writes in progress or interrupted).
async fn journal_keys(hub: &jetstream::Context) -> Vec<String> {
    let Ok(stream) = hub.get_stream(format!("KV_{WRITE_JOURNAL_BUCKET}")).await else {
        return Vec::new();
    };
    let prefix = format!("$KV.{WRITE_JOURNAL_BUCKET}.");
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(format!("{prefix}>"))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    subjects
        .into_iter()
        .map(|(s, _)| s.trim_start_matches(&prefix).to_string())
        .collect()
}

/// Whether the writer lease of journal key `<writer>.<nuid>` is still held.
async fn writer_alive(hub: &jetstream::Context, key: &str) -> bool {
    let writer = key.split('.').next().unwrap();
    let kv = hub.get_key_value(LEASE_BUCKET).await.unwrap();
    kv.get(format!("writer.{writer}")).await.unwrap().is_some()
}

/// A restore SIGKILLed while its chunks are in flight leaves no visible object (no meta), only
/// chunks and a journal record. A restore run while the killed writer's lease still looks alive
/// leaves them alone (it cannot tell a dead writer from a running one yet); once the lease has
/// expired, the next run purges the stray chunks, removes the record, and restores the object
/// byte-identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_restore_leaves_nothing_visible_and_the_next_run_cleans_up() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(POLICIES);
    let tiers = Tiers::connect(&topology).await;
    let (bucket, name) = ("killed", "big.bin");
    let data = content(500, 96 << 20);
    plant(&topology, bucket, name, &data, |_| {}).await;
    let small = content(501, 10_000);
    plant(&topology, bucket, "small", &small, |_| {}).await;

    let log = topology.dir().join("restore-killed.log");
    let config_arg = config.to_str().unwrap();
    let mut restore = RoleProcess::spawn(
        &cim_bin("cim-gateway"),
        &[
            "restore", "--config", config_arg, "--bucket", bucket, "--name", name,
        ],
        &log,
    )
    .unwrap();
    let in_flight = wait_until("chunks in flight", Duration::from_secs(60), || async {
        chunk_counts(&tiers.hub, bucket)
            .await
            .iter()
            .any(|(_, n)| *n >= 4)
    })
    .await;
    in_flight.unwrap_or_else(|e| panic!("{e:#}\n{}", restore.log()));
    restore.sigkill();

    // Nothing visible: no meta, so info and get say absent; the chunks are there, and the
    // journal names them.
    assert!(tiers.hub_tier.latest(bucket, name).await.unwrap().is_none());
    let store = tiers.hub.get_object_store(bucket).await.unwrap();
    assert!(
        store.info(name).await.is_err(),
        "a killed restore is visible"
    );
    assert!(
        store.get(name).await.is_err(),
        "a killed restore is readable"
    );
    let stray = chunk_counts(&tiers.hub, bucket).await;
    assert_eq!(stray.len(), 1, "{stray:?}");
    let (stray_subject, stray_chunks) = stray[0].clone();
    assert!((4..768).contains(&stray_chunks), "{stray:?}");
    let records = journal_keys(&tiers.hub).await;
    assert_eq!(records.len(), 1, "{records:?}");
    let nuid = stray_subject.rsplit('.').next().unwrap().to_string();
    assert!(
        records[0].ends_with(&nuid),
        "{records:?} vs {stray_subject}"
    );

    // Another restore while the killed writer's lease is still alive: it must not purge what
    // may be a running restore's chunks.
    assert!(writer_alive(&tiers.hub, &records[0]).await);
    let out = gateway(&config, &["restore", "--bucket", bucket, "--name", "small"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        writer_alive(&tiers.hub, &records[0]).await,
        "the lease expired too early for this check"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("purged"),
        "{}",
        describe(&out)
    );
    // (Chunks the killed process had sent may still have landed after the first count.)
    let still = chunk_counts(&tiers.hub, bucket).await;
    assert!(
        still
            .iter()
            .any(|(s, n)| *s == stray_subject && *n >= stray_chunks),
        "a live writer's chunks were touched: {still:?}"
    );
    assert_eq!(journal_keys(&tiers.hub).await, records);
    assert!(Tiers::read(&tiers.hub, bucket, "small").await.0 == small);

    // The killed writer's lease expires (the server's max_age); the next run purges its chunks.
    let expired = wait_until(
        "the killed writer's lease expires",
        Duration::from_secs(90),
        || async { !writer_alive(&tiers.hub, &records[0]).await },
    )
    .await;
    expired.unwrap();
    // Each replica of the lease bucket expires the lease on its own clock, and KV reads may be
    // answered by any replica: the run right after may still see it on a replica that has not
    // expired it yet, and leave the chunks (a live-looking writer's chunks are never touched).
    // A later run purges them; every run must succeed, and one of the first few must purge.
    let mut runs = Vec::new();
    let purged = loop {
        let out = gateway(&config, &["restore", "--bucket", bucket, "--name", name]);
        assert!(out.status.success(), "{}", describe(&out));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if stdout.contains(&format!("purged   {bucket}/{name}")) && stdout.contains(&nuid) {
            break true;
        }
        runs.push(describe(&out));
        if runs.len() == 5 {
            break false;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(purged, "no run purged the stray chunks: {runs:?}");
    let chunks = chunk_counts(&tiers.hub, bucket).await;
    assert!(
        !chunks.iter().any(|(s, _)| *s == stray_subject),
        "stray chunks left: {chunks:?}"
    );
    assert!(journal_keys(&tiers.hub).await.is_empty());
    let (restored, info) = Tiers::read(&tiers.hub, bucket, name).await;
    assert!(restored == data, "restored content differs");
    assert_eq!(info.digest, Some(Sha256Digest::of(&data).to_nats()));
    // Only the restored version's chunks and the small object's remain.
    assert_eq!(chunks.len(), 2, "{chunks:?}");
    assert!(chunks
        .iter()
        .any(|(s, n)| *s == chunk_subject(bucket, &info.nuid) && *n == 768));
}

/// A blob whose content does not match its manifest's digest (same length, one byte flipped in
/// S3 after the upload: it decodes, to other bytes) is refused once its content was published
/// and hashed: the object is not replaced (the version the hub held stays, chunks and all), the
/// published chunks are purged, the journal is empty, and the error names the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_that_does_not_match_its_digest_is_refused_and_its_chunks_purged() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(POLICIES);
    let tiers = Tiers::connect(&topology).await;
    let (bucket, name) = ("corrupt", "doc");

    // The hub holds v1; the catalog records a verified copy of it elsewhere, so --overwrite may
    // replace it with the S3 copy, v2.
    let v1 = content(600, 700_000);
    let store = common::ensure_bucket(&tiers.hub_tier, bucket).await;
    let held = store.put(name, &mut v1.as_slice()).await.unwrap();
    let v1_seq = tiers
        .hub_tier
        .version(bucket, name)
        .await
        .unwrap()
        .unwrap()
        .seq;
    tiers
        .catalog
        .record_copy(
            bucket,
            name,
            &Version {
                size: v1.len() as u64,
                digest: Sha256Digest::of(&v1),
                seq: v1_seq,
            },
            "leaf",
            None,
        )
        .await
        .unwrap();
    let v2 = content(601, 3 << 20);
    plant(&topology, bucket, name, &v2, |_| {}).await;
    // Incompressible content is stored in raw zstd blocks: flipping a byte near the end keeps
    // the blob decodable and its length right, and changes the content.
    let s3 = topology.s3.client().await;
    let blob_key = cim_gateway::format::blob_key(PREFIX, &Sha256Digest::of(&v2));
    let mut blob = zstd::encode_all(v2.as_slice(), 3).unwrap();
    let at = blob.len() - 1000;
    blob[at] ^= 0x55;
    s3.put_object()
        .bucket(&topology.s3.bucket)
        .key(&blob_key)
        .body(blob.into())
        .send()
        .await
        .unwrap();

    let out = gateway(
        &config,
        &["restore", "--bucket", bucket, "--name", name, "--overwrite"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("\"{name}\"")) && stderr.contains("integrity"),
        "the refusal must name the object and say why\n{}",
        describe(&out)
    );
    let (kept, info) = Tiers::read(&tiers.hub, bucket, name).await;
    assert!(
        kept == v1,
        "the held version was replaced\n{}",
        describe(&out)
    );
    assert_eq!(info.nuid, held.nuid);
    let chunks = chunk_counts(&tiers.hub, bucket).await;
    assert_eq!(
        chunks,
        vec![(chunk_subject(bucket, &held.nuid), held.chunks)],
        "the refused content's chunks must be purged\n{}",
        describe(&out)
    );
    assert!(journal_keys(&tiers.hub).await.is_empty());
}

/// 240 small objects restored with --concurrency 16: every one verified by an object-store
/// client (async-nats' get checks the meta's digest), the summary counts right; a second run
/// finds every one present.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_small_objects_restore_concurrently_all_verified() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(POLICIES);
    let tiers = Tiers::connect(&topology).await;
    let bucket = "many";
    const COUNT: usize = 240;
    let objects: Vec<(String, Vec<u8>)> = (0..COUNT)
        .map(|i| {
            (
                format!("dir/obj {i:04}"),
                content(700 + i as u64, 1000 + 37 * i),
            )
        })
        .collect();
    futures::stream::iter(&objects)
        .for_each_concurrent(16, |(name, data)| {
            let topology = &topology;
            async move {
                plant(topology, bucket, name, data, |_| {}).await;
            }
        })
        .await;

    let out = gateway(
        &config,
        &[
            "restore",
            "--bucket",
            bucket,
            "--all",
            "--concurrency",
            "16",
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{COUNT} restored or present, 0 failed, 0 skipped")),
        "{}",
        describe(&out)
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("restored "))
            .count(),
        COUNT,
        "{}",
        describe(&out)
    );
    let store = tiers.hub.get_object_store(bucket).await.unwrap();
    futures::stream::iter(&objects)
        .for_each_concurrent(8, |(name, data)| {
            let store = &store;
            async move {
                let mut object = store.get(name.as_str()).await.unwrap();
                let mut read = Vec::new();
                tokio::io::AsyncReadExt::read_to_end(&mut object, &mut read)
                    .await
                    .unwrap();
                assert!(read == *data, "{name}: restored content differs");
                assert_eq!(
                    object.info().digest,
                    Some(Sha256Digest::of(data).to_nats()),
                    "{name}"
                );
            }
        })
        .await;
    let catalogued = tiers.catalog_locations(bucket).await;
    assert_eq!(catalogued.len(), COUNT);
    assert!(catalogued.values().all(|at| at == &vec!["hub".to_string()]));
    assert!(journal_keys(&tiers.hub).await.is_empty());

    let out = gateway(&config, &["restore", "--bucket", bucket, "--all"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("present "))
            .count(),
        COUNT,
        "{}",
        describe(&out)
    );
}

/// A journaled write whose writer died after publishing its meta leaves a `committing` record.
/// If the object was renamed before the next recovery (the object store's `update_metadata`
/// keeps the nuid under the new name), its chunks belong to the renamed object: recovery must
/// find the nuid under the new name and keep them — it used to look only at the record's name
/// and purge them, leaving the renamed object without content. A `committing` record whose nuid
/// no meta names is still purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn recovery_keeps_the_chunks_of_a_committed_write_renamed_since() {
    use async_nats::jetstream::kv;
    use async_nats::jetstream::object_store::UpdateMetadata;
    use cim_tiering::jetstream::write::{WriteJournal, WriteRecord, WriteState};
    use cim_tiering::lease::Leases;

    let topology = Topology::start().await.unwrap();
    let tiers = Tiers::connect(&topology).await;
    let bucket = "renamed-since";
    let data = content(530, 3 << 20);
    common::put_hub(&tiers, bucket, "before", &data).await;
    let store = tiers.hub.get_object_store(bucket).await.unwrap();
    let committed = store.info("before").await.unwrap();
    store
        .update_metadata(
            "before",
            UpdateMetadata {
                name: "after".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(tiers
        .hub_tier
        .latest(bucket, "before")
        .await
        .unwrap()
        .is_none());

    // Chunks no meta names: a write that died before its meta.
    let stray = "STRAYNUIDNEVERCOMMITTED";
    for _ in 0..2 {
        tiers
            .hub
            .publish(chunk_subject(bucket, stray), vec![7u8; 1000].into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    // Both writes journaled as `committing` by a writer whose lease is long gone.
    let journal = match tiers.hub.get_key_value(WRITE_JOURNAL_BUCKET).await {
        Ok(kv) => kv,
        Err(_) => tiers
            .hub
            .create_key_value(kv::Config {
                bucket: WRITE_JOURNAL_BUCKET.to_string(),
                history: 1,
                num_replicas: 3,
                ..Default::default()
            })
            .await
            .unwrap(),
    };
    for (name, nuid) in [("before", committed.nuid.as_str()), ("stray", stray)] {
        let record = WriteRecord {
            tier: "hub".into(),
            bucket: bucket.into(),
            name: name.into(),
            nuid: nuid.into(),
            writer: "DEADWRITERRENAMED".into(),
            started: time::OffsetDateTime::now_utc(),
            state: WriteState::Committing,
        };
        journal
            .put(
                format!("DEADWRITERRENAMED.{nuid}"),
                serde_json::to_vec(&record).unwrap().into(),
            )
            .await
            .unwrap();
    }

    let leases = Leases::open(&tiers.hub, 3).await.unwrap();
    let recoverer = WriteJournal::open(&tiers.hub, 3, leases, "test")
        .await
        .unwrap();
    let hub = tiers.hub_tier.clone();
    let recovered = recoverer
        .recover(|tier| (tier == "hub").then(|| hub.clone()))
        .await
        .unwrap();
    recoverer.close().await;

    let purged: Vec<&str> = recovered
        .purged
        .iter()
        .filter(|r| r.bucket == bucket)
        .map(|r| r.nuid.as_str())
        .collect();
    assert_eq!(purged, vec![stray], "{recovered:?}");
    let chunks = chunk_counts(&tiers.hub, bucket).await;
    assert_eq!(
        chunks,
        vec![(chunk_subject(bucket, &committed.nuid), committed.chunks)],
        "the renamed object's chunks must stay, the stray ones go"
    );
    assert!(!journal_keys(&tiers.hub)
        .await
        .iter()
        .any(|k| k.starts_with("DEADWRITERRENAMED.")));
    let (read, info) = Tiers::read(&tiers.hub, bucket, "after").await;
    assert!(read == data, "the renamed object's content changed");
    assert_eq!(info.nuid, committed.nuid);
}
