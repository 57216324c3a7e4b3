//! The upload role's fast paths on real servers: the hub copy read with batched direct gets, and
//! S3 copies verified by the checksums the service checks on receipt.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use cim_gateway::s3::recorded_checksum;
use cim_policies::S3Verify;
use cim_tests::{wait_until, Topology};
use cim_tiering::digest::Sha256Digest;
use cim_tiering::jetstream::{chunk_subject, stream_name, JetStreamTier};
use common::{content, s3_store, Roles, Tiers};
use tokio::io::AsyncReadExt;

/// An object of many chunks (several batches of direct gets) reads back whole and in order,
/// verified; an empty object reads as empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_copy_is_read_whole_and_in_order_by_batched_direct_gets() {
    let topology = Topology::start().await.unwrap();
    let hub = JetStreamTier::new("hub", "hub", 3, topology.hub.connect().await.unwrap());
    let store = common::ensure_bucket(&hub, "fast-read").await;
    // 41 chunks of 128 KiB and a bit: three batches of 16.
    let data = content(800, 5 * 1024 * 1024 + 5);
    let info = store.put("big", &mut data.as_slice()).await.unwrap();
    let mut read = Vec::new();
    hub.open("fast-read", &info)
        .read_to_end(&mut read)
        .await
        .unwrap();
    assert!(read == data, "read {} bytes of {}", read.len(), data.len());

    let mut out = Vec::new();
    let n = hub
        .read_verified(
            "fast-read",
            &info,
            data.len() as u64,
            &Sha256Digest::of(&data),
            &mut out,
        )
        .await
        .unwrap();
    assert_eq!(n, data.len() as u64);
    assert!(out == data);

    let empty = store.put("empty", &mut &b""[..]).await.unwrap();
    let mut read = Vec::new();
    hub.open("fast-read", &empty)
        .read_to_end(&mut read)
        .await
        .unwrap();
    assert!(read.is_empty());
}

/// Chunks that end short of the object's size (here: the first ones purged, as a replica that
/// lags or a purge under way would show it) are "not ready", retried later — never an integrity
/// failure, which would mark the object damaged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_ending_short_are_not_ready_rather_than_corrupt() {
    let topology = Topology::start().await.unwrap();
    let hub = JetStreamTier::new("hub", "hub", 3, topology.hub.connect().await.unwrap());
    let store = common::ensure_bucket(&hub, "fast-short").await;
    let data = content(801, 1024 * 1024);
    let info = store.put("obj", &mut data.as_slice()).await.unwrap();
    let stream = hub
        .context()
        .get_stream(stream_name("fast-short"))
        .await
        .unwrap();
    let subject = chunk_subject("fast-short", &info.nuid);
    let first = stream
        .direct_get_next_for_subject(&subject, None)
        .await
        .unwrap()
        .sequence;
    stream
        .purge()
        .filter(&subject)
        .sequence(first + 2)
        .await
        .unwrap();

    let err = hub
        .read_verified(
            "fast-short",
            &info,
            data.len() as u64,
            &Sha256Digest::of(&data),
            &mut tokio::io::sink(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, cim_tiering::Error::NotReady { .. }),
        "missing chunks are not ready, not corrupt: {err}"
    );
    assert!(err.is_transient());
}

/// Each verification mode on its own S3 tier: a `move` evicts the hub copy only once the copy
/// is verified, and the manifest records how — for `md5` and `crc32c` the checksum of every
/// request body (recomputed here from the stored blob, cut at the recorded part size), for
/// `read-back` none. Every blob carries zstd's frame checksum.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_evicts_only_a_verified_copy_and_the_manifest_says_how() {
    let topology = Topology::start().await.unwrap();
    let modes = [
        (S3Verify::Md5, "md5"),
        (S3Verify::Crc32c, "crc"),
        (S3Verify::ReadBack, "rb"),
    ];
    let mut extra = String::new();
    for (mode, short) in modes {
        extra += &common::s3_tier_toml(
            &topology,
            &format!("s3-{short}"),
            &topology.s3.endpoint,
            &format!("{short}/"),
        );
        extra += &format!(
            r#"verify = "{mode}"

[[policy]]
name = "to-{short}"
buckets = ["fast-{short}"]
from = "hub"
to = "s3-{short}"
action = "move"
after = "0s"
"#
        );
    }
    let config = topology.write_config(&extra);
    let tiers = Tiers::connect(&topology).await;
    // One single PutObject and one multipart upload (two parts of 16 MiB) per tier.
    let objects = [
        ("small", content(810, 200 * 1024)),
        ("big", content(811, 20 * 1024 * 1024 + 3)),
    ];
    for (_, short) in modes {
        let store = tiers
            .hub_tier
            .ensure_bucket(&format!("fast-{short}"))
            .await
            .unwrap();
        for (name, data) in &objects {
            store.put(*name, &mut data.as_slice()).await.unwrap();
        }
    }
    let mut roles = Roles::start(&topology, &config);
    let stores = [
        s3_store(&topology, "md5/").await,
        s3_store(&topology, "crc/").await,
        s3_store(&topology, "rb/").await,
    ];

    let moved = wait_until(
        "every object moved to its tier",
        Duration::from_secs(120),
        || async {
            let mut all = true;
            for ((_, short), store) in modes.iter().zip(&stores) {
                let bucket = format!("fast-{short}");
                let on_hub = Tiers::names(&tiers.hub_tier, &bucket).await;
                let catalog = tiers.catalog_locations(&bucket).await;
                for (name, _) in &objects {
                    if on_hub.iter().any(|n| n == name) {
                        all = false;
                        continue;
                    }
                    // Evicted from the hub: the S3 copy must be recorded, and verified.
                    let tier = format!("s3-{short}");
                    assert_eq!(catalog.get(*name), Some(&vec![tier]), "{bucket}/{name}");
                    let manifest = store.get_manifest(&bucket, name).await.unwrap().unwrap();
                    assert!(manifest.verified.is_some(), "{bucket}/{name}: {manifest:?}");
                }
            }
            all
        },
    )
    .await;
    moved.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));

    for ((mode, short), store) in modes.iter().zip(&stores) {
        let bucket = format!("fast-{short}");
        for (name, data) in &objects {
            let manifest = store.get_manifest(&bucket, name).await.unwrap().unwrap();
            let verified = manifest.verified.clone().unwrap();
            assert_eq!(verified.mode, *mode, "{bucket}/{name}");
            let blob = store
                .client()
                .get_object()
                .bucket(store.bucket())
                .key(&manifest.blob_key)
                .send()
                .await
                .unwrap()
                .body
                .collect()
                .await
                .unwrap()
                .into_bytes();
            assert_eq!(blob.len() as u64, manifest.stored_size);
            // Frame header descriptor: Content_Checksum_flag (bit 2).
            assert_eq!(&blob[..4], &[0x28, 0xb5, 0x2f, 0xfd], "a zstd frame");
            assert_ne!(blob[4] & 0x04, 0, "{bucket}/{name}: no zstd frame checksum");
            assert!(zstd::decode_all(&blob[..]).unwrap() == *data);
            if *mode == S3Verify::ReadBack {
                assert!(verified.checksums.is_empty(), "{verified:?}");
                continue;
            }
            let pieces: Vec<&[u8]> = match verified.part_size {
                None => vec![&blob[..]],
                Some(size) => blob.chunks(size as usize).collect(),
            };
            let expected: Vec<String> = pieces
                .iter()
                .map(|p| recorded_checksum(*mode, p).unwrap())
                .collect();
            assert_eq!(verified.checksums, expected, "{bucket}/{name}");
            let parts = if *name == "big" { 2 } else { 1 };
            assert_eq!(verified.checksums.len(), parts, "{bucket}/{name}");
        }
    }
    roles.stop();
}

/// An object whose metadata was updated after its copy was verified is not evicted: the copies
/// hold the old metadata, and only the hub the new. Nothing is removed (the caller records no
/// eviction, and the next pass copies the updated object); the object as it is now evicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_keeps_an_object_whose_metadata_changed_since_it_was_read() {
    use async_nats::jetstream::object_store::UpdateMetadata;

    let topology = Topology::start().await.unwrap();
    let client = topology.hub.connect().await.unwrap();
    let hub = JetStreamTier::new("hub", "hub", 3, client.clone());
    let bucket = "meta-changed";
    let store = common::ensure_bucket(&hub, bucket).await;
    let data = content(802, 300 * 1024);
    store.put("obj", &mut data.as_slice()).await.unwrap();
    let verified = hub.version(bucket, "obj").await.unwrap().unwrap();
    store
        .update_metadata(
            "obj",
            UpdateMetadata {
                name: "obj".into(),
                description: Some("updated after the copy".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();

    assert!(!hub.evict(bucket, &verified.info).await.unwrap());
    let now = hub.latest(bucket, "obj").await.unwrap().unwrap();
    assert_eq!(
        now.info.description.as_deref(),
        Some("updated after the copy")
    );
    let mut read = Vec::new();
    store
        .get("obj")
        .await
        .unwrap()
        .read_to_end(&mut read)
        .await
        .unwrap();
    assert!(read == data, "the kept object's content differs");

    assert!(hub.evict(bucket, &now.info).await.unwrap());
    assert!(hub.latest(bucket, "obj").await.unwrap().is_none());
}

/// The per-object steps of an upload — read the version from the stream leader, evict it, purge
/// its chunks — each cost the one request they need, never a stream lookup (a full stream-info
/// request) before it; and a bucket whose stream does not exist still reads as holding nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_object_steps_make_no_stream_lookup() {
    use futures::StreamExt;

    let topology = Topology::start().await.unwrap();
    let client = topology.hub.connect().await.unwrap();
    let hub = JetStreamTier::new("hub", "hub", 3, client.clone());
    let store = common::ensure_bucket(&hub, "lookups").await;
    let data = content(801, 300 * 1024);
    let info = store.put("obj", &mut data.as_slice()).await.unwrap();

    // Every JetStream API request the tier sends, as the servers receive it (under the domain's
    // prefix, or the plain one the server maps it to).
    let mut requests = futures::stream::select(
        client.subscribe("$JS.hub.API.>").await.unwrap(),
        client.subscribe("$JS.API.>").await.unwrap(),
    );
    client.flush().await.unwrap();

    let version = hub.version("lookups", "obj").await.unwrap().unwrap();
    assert_eq!(version.info.nuid, info.nuid);
    hub.evict("lookups", &version.info).await.unwrap();
    assert!(hub.latest("lookups", "obj").await.unwrap().is_none());
    hub.purge_chunks("lookups", "obj", &info.nuid)
        .await
        .unwrap();
    // No stream at all: nothing to read, nothing to purge.
    assert!(hub.latest("no-such-bucket", "obj").await.unwrap().is_none());
    hub.purge_chunks("no-such-bucket", "obj", "nuid")
        .await
        .unwrap();
    client.flush().await.unwrap();

    let mut seen = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(500), requests.next()).await
    {
        let subject = message.subject.to_string();
        // Replies travel on inboxes; only requests are on the API subjects.
        seen.push(
            subject
                .trim_start_matches("$JS.hub.API.")
                .trim_start_matches("$JS.API.")
                .split('.')
                .take(2)
                .collect::<Vec<_>>()
                .join("."),
        );
    }
    assert!(
        !seen.iter().any(|s| s.starts_with("STREAM.INFO")),
        "no stream lookups: {seen:?}"
    );
    // version, evict (meta read, meta purge, chunk purge), latest, purge_chunks, and the two
    // against the missing bucket.
    let expected = [
        "STREAM.MSG",
        "STREAM.MSG",
        "STREAM.PURGE",
        "STREAM.PURGE",
        "STREAM.MSG",
        "STREAM.PURGE",
        "STREAM.MSG",
        "STREAM.PURGE",
    ];
    assert_eq!(seen, expected, "requests sent");
    // The object is gone from the tier, chunks included.
    let chunks = hub
        .direct("lookups")
        .next_by_subject(&chunk_subject("lookups", &info.nuid), 1, 10)
        .await
        .unwrap()
        .next()
        .await
        .unwrap();
    assert!(chunks.is_none(), "chunks left after the eviction");
}
