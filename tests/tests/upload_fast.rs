//! The upload role's fast paths on real servers: the hub copy read with batched direct gets.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use cim_tests::Topology;
use cim_tiering::digest::Sha256Digest;
use cim_tiering::jetstream::{chunk_subject, stream_name, JetStreamTier};
use common::content;
use tokio::io::AsyncReadExt;

/// An object of many chunks (several batches of direct gets) reads back whole and in order,
/// verified; an empty object reads as empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_copy_is_read_whole_and_in_order_by_batched_direct_gets() {
    let topology = Topology::start().await.unwrap();
    let hub = JetStreamTier::new("hub", "hub", 3, topology.hub.connect().await.unwrap());
    let store = hub.ensure_bucket("fast-read").await.unwrap();
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
    let store = hub.ensure_bucket("fast-short").await.unwrap();
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
