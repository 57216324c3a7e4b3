//! Batched direct gets (`cim_tiering::jetstream::direct`) against a real hub: chunks of one
//! object in order, the last meta of every object of a bucket, and what the server does with a
//! `multi_last` that matches more subjects than one answer may hold.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use async_nats::jetstream::object_store;
use cim_tests::Topology;
use cim_tiering::jetstream::{chunk_subject, JetStreamTier};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_chunks_and_of_last_metas() {
    let topology = Topology::start().await.unwrap();
    let client = topology.hub.connect().await.unwrap();
    let hub = JetStreamTier::new("hub", "hub", 3, client);
    let store = common::ensure_bucket(&hub, "direct").await;

    // One object of 10 chunks (async-nats writes 128 KiB chunks).
    let data = common::content(1, 10 * 128 * 1024 + 5);
    let info = store.put("big", &mut data.as_slice()).await.unwrap();
    let direct = hub.direct("direct");
    let mut batch = direct
        .next_by_subject(&chunk_subject("direct", &info.nuid), 1, 4)
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut last = 0;
    while let Some(m) = batch.next().await.unwrap() {
        assert!(m.seq > last, "in sequence order");
        last = m.seq;
        got.extend_from_slice(&m.payload);
    }
    assert_eq!(got.len(), 4 * 128 * 1024, "a batch of 4 chunks");
    assert_eq!(batch.num_pending(), Some(7), "7 of the 11 chunks are left");

    // 1,500 small objects: the last meta of each.
    for i in 0..1500 {
        let name = format!("o{i:04}");
        store
            .put(
                object_store::ObjectMetadata {
                    name,
                    ..Default::default()
                },
                &mut &b"x"[..],
            )
            .await
            .unwrap();
    }
    // More subjects than one multi_last answer may hold: the server refuses it (413)...
    let subjects = vec!["$O.direct.M.>".to_string()];
    let mut batch = direct
        .last_per_subject(&subjects, None, None)
        .await
        .unwrap();
    let refused = batch.next().await.unwrap_err().to_string();
    assert!(refused.contains("413"), "{refused}");
    // ... so a bucket is scanned by walking its meta subjects in sequence order: a rollup keeps
    // only the last meta of each object, so every object shows up exactly once.
    let mut seen = std::collections::BTreeSet::new();
    let mut from = 1;
    loop {
        let mut batch = direct
            .next_by_subject("$O.direct.M.>", from, 1000)
            .await
            .unwrap();
        let mut any = false;
        while let Some(m) = batch.next().await.unwrap() {
            assert!(seen.insert(m.subject.clone()), "{} twice", m.subject);
            from = m.seq + 1;
            any = true;
        }
        if !any || batch.num_pending() == Some(0) {
            break;
        }
    }
    assert_eq!(seen.len(), 1501, "every object once");
    // A multi_last within the limit answers with the last meta of each subject named.
    let two = vec![
        "$O.direct.M.bzAwMDE=".to_string(),
        "$O.direct.M.bzAwMDI=".to_string(),
    ];
    let mut batch = direct.last_per_subject(&two, None, None).await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = batch.next().await.unwrap() {
        got.push(m.subject);
    }
    got.sort();
    assert_eq!(got, two);
}
