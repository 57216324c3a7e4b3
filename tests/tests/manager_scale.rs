//! The manager reads each bucket once and then follows it (issue 8, item 6): passes against a
//! real hub, run in-process so that each pass's report can be checked. No upload role runs, so
//! queued items stay in the work stream; purging the stream stands for "the items were taken".
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;

use async_nats::jetstream;
use cim_policies::Config;
use cim_tests::Topology;
use cim_tiering::catalog::Version;
use cim_tiering::digest::Sha256Digest;
use cim_tiering::jetstream::{meta_subject, stream_name};
use cim_tiering::manager::{Manager, PassReport};
use cim_tiering::System;
use common::content;

const WORK_STREAM: &str = "CIM_WORK";

/// Every hub object to s3 at once, copies kept.
const COPY_TO_S3: &str = r#"
[[policy]]
name = "scale"
buckets = ["scale-*"]
from = "hub"
to = "s3"
action = "copy"
after = "0s"
"#;

async fn manager(topology: &Topology) -> (Manager, Arc<System>) {
    let text = topology.config_toml(COPY_TO_S3);
    let config = Config::from_toml_str(&text, "test.toml").unwrap();
    let system = Arc::new(System::connect(config, "manager-scale-test").await.unwrap());
    (Manager::new(system.clone()), system)
}

/// Drops every queued item, as if the roles had taken them all.
async fn take_all_items(hub: &jetstream::Context) {
    hub.get_stream(WORK_STREAM)
        .await
        .unwrap()
        .purge()
        .await
        .unwrap();
}

async fn queued_subjects(hub: &jetstream::Context) -> u64 {
    hub.get_stream(WORK_STREAM)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}

/// Messages the in-process manager's connections have sent to the hub so far (`in_msgs` in
/// every node's `/connz`): requests and publishes alike.
async fn sent_by_manager(topology: &Topology) -> u64 {
    let mut total = 0;
    for node in &topology.hub.nodes {
        let connz = node.monitor_json("/connz?limit=4096").await.unwrap();
        total += connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["name"] == "manager-scale-test")
            .filter_map(|c| c["in_msgs"].as_u64())
            .sum::<u64>();
    }
    total
}

/// A pass's counts: due, queued, skipped (none here).
fn report(due: usize, queued: usize) -> (usize, usize, usize) {
    (due, queued, 0)
}

fn counts(report: PassReport) -> (usize, usize, usize) {
    (report.due, report.queued, report.skipped)
}

/// New objects, overwrites, user deletes, catalog changes and an eviction by another role are
/// each seen by the next pass, which reads only what changed; what was queued is not queued
/// again while it may still be pending, even when the stream would take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_index_follows_new_objects_overwrites_deletes_and_evictions() {
    let topology = Topology::start().await.unwrap();
    let tiers = common::Tiers::connect(&topology).await;
    let bucket = "scale-follow";
    let store = common::ensure_bucket(&tiers.hub_tier, bucket).await;
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        store
            .put(*name, &mut &content(i as u64, 100)[..])
            .await
            .unwrap();
    }
    let (manager, system) = manager(&topology).await;

    assert_eq!(
        counts(manager.pass().await.unwrap()),
        report(3, 3),
        "first scan"
    );
    assert_eq!(queued_subjects(&tiers.hub).await, 3);
    // Items gone from the stream (taken, not done): nothing is queued again, each object was
    // queued moments ago.
    take_all_items(&tiers.hub).await;
    assert_eq!(
        counts(manager.pass().await.unwrap()),
        report(3, 0),
        "nothing new"
    );
    assert_eq!(queued_subjects(&tiers.hub).await, 0);

    // An overwrite and a new object: queued at once, and only they.
    store.put("b", &mut &content(10, 200)[..]).await.unwrap();
    store.put("d", &mut &content(11, 100)[..]).await.unwrap();
    assert_eq!(
        counts(manager.pass().await.unwrap()),
        report(4, 2),
        "overwrite and new"
    );

    // The catalog records "a" in s3 (as the upload role would): no longer due.
    let a = tiers.hub_tier.version(bucket, "a").await.unwrap().unwrap();
    let version = |v: &cim_tiering::jetstream::StoredObject, data: &[u8]| Version {
        size: data.len() as u64,
        digest: Sha256Digest::of(data),
        seq: v.seq,
    };
    system
        .catalog
        .record_copy(bucket, "a", &version(&a, &content(0, 100)), "s3", None)
        .await
        .unwrap();
    assert_eq!(
        counts(manager.pass().await.unwrap()),
        report(3, 0),
        "a is in s3"
    );

    // A user delete of "a", which reached s3: its delete is queued for s3 at once.
    store.delete("a").await.unwrap();
    let pass = counts(manager.pass().await.unwrap());
    assert_eq!(pass, report(3, 1), "the delete of a is queued");
    let items = queued_subjects(&tiers.hub).await;

    // Another role evicts "c" (a purge: no message says so): the pass notices the bucket holds
    // fewer metas than indexed, rescans, and "c" is neither due nor queued again, ever.
    let c = tiers.hub_tier.info(bucket, "c").await.unwrap().unwrap();
    tiers.hub_tier.evict(bucket, &c).await.unwrap();
    take_all_items(&tiers.hub).await;
    assert_eq!(
        counts(manager.pass().await.unwrap()),
        report(2, 0),
        "c is gone"
    );
    assert_eq!(counts(manager.pass().await.unwrap()), report(2, 0));
    assert!(items >= 1);

    // A restarted manager reads the bucket in full once: the same objects are due (their items
    // were queued moments ago, so the stream's duplicate window refuses them again), and it
    // follows the bucket from there.
    let (restarted, _) = self::manager(&topology).await;
    assert_eq!(
        counts(restarted.pass().await.unwrap()),
        report(2, 0),
        "after a restart"
    );
    store.put("e", &mut &content(12, 100)[..]).await.unwrap();
    assert_eq!(counts(restarted.pass().await.unwrap()), report(3, 1));
}

/// Thousands of objects in one bucket, written as bare meta messages (nothing reads their
/// chunks here): one pass queues each due object exactly once, and later passes queue nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pass_over_thousands_of_objects_queues_each_due_object_once() {
    const OBJECTS: u64 = 5_000;
    let topology = Topology::start().await.unwrap();
    let tiers = common::Tiers::connect(&topology).await;
    let bucket = "scale-many";
    common::ensure_bucket(&tiers.hub_tier, bucket).await;
    let digest = Sha256Digest::of(b"").to_nats();
    let mut acks = Vec::new();
    for i in 0..OBJECTS {
        let name = format!("o{i:05}");
        let meta = serde_json::json!({
            "name": name, "bucket": bucket, "nuid": format!("N{i:021}"), "size": 0,
            "chunks": 0, "mtime": "2026-01-01T00:00:00Z", "digest": digest,
        });
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Rollup", "sub");
        acks.push(
            tiers
                .hub
                .publish_with_headers(
                    meta_subject(bucket, &name),
                    headers,
                    serde_json::to_vec(&meta).unwrap().into(),
                )
                .await
                .unwrap(),
        );
        if acks.len() == 512 {
            for ack in acks.drain(..) {
                ack.await.unwrap();
            }
        }
    }
    for ack in acks {
        ack.await.unwrap();
    }
    let held = tiers
        .hub
        .get_stream(stream_name(bucket))
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    assert_eq!(held, OBJECTS);

    let (manager, _) = manager(&topology).await;
    let n = OBJECTS as usize;
    assert_eq!(counts(manager.pass().await.unwrap()), report(n, n));
    assert_eq!(queued_subjects(&tiers.hub).await, OBJECTS, "one item each");
    // A pass with nothing new sends a handful of requests, not one (or two) per object.
    let before = sent_by_manager(&topology).await;
    assert_eq!(counts(manager.pass().await.unwrap()), report(n, 0));
    let sent = sent_by_manager(&topology).await - before;
    assert!(
        sent < 50,
        "a pass over {n} indexed objects sent {sent} messages"
    );
    take_all_items(&tiers.hub).await;
    assert_eq!(counts(manager.pass().await.unwrap()), report(n, 0));
    assert_eq!(queued_subjects(&tiers.hub).await, 0, "nothing queued twice");
}

/// Leaf → cluster `move` with the real roles: the cluster bucket does not exist until the
/// mirror role sets up sourcing (until the cluster lists it, nothing is evicted), and each leaf
/// copy is evicted once the cluster holds it, verified and recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaf_copies_are_evicted_once_the_cluster_holds_them() {
    const OBJECTS: u64 = 20;
    let topology = Topology::start().await.unwrap();
    let tiers = common::Tiers::connect(&topology).await;
    let bucket = "scale-leaf";
    for i in 0..OBJECTS {
        tiers
            .put_leaf(bucket, &format!("l{i}"), &content(100 + i, 3000))
            .await;
    }
    let config = topology.write_config(&format!(
        r#"
[[policy]]
name = "leaf-to-hub"
buckets = ["{bucket}"]
from = "leaf"
to = "hub"
action = "move"
after = "0s"
"#
    ));
    let roles = common::Roles::start(&topology, &config);
    let done = cim_tests::wait_until(
        "every leaf copy evicted, verified on the cluster",
        std::time::Duration::from_secs(90),
        || async {
            let on_leaf = common::Tiers::names(&tiers.leaf_tier, bucket).await;
            let locations = tiers.catalog_locations(bucket).await;
            on_leaf.is_empty()
                && locations.len() == OBJECTS as usize
                && locations.values().all(|l| l == &["hub".to_string()])
        },
    )
    .await;
    done.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    for i in 0..OBJECTS {
        let (data, _) = common::Tiers::read(&tiers.hub, bucket, &format!("l{i}")).await;
        assert_eq!(data, content(100 + i, 3000));
    }
}
