//! The storage manager on real servers: one bad object or one unavailable bucket never stops
//! the policies for everything else.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use cim_tests::{wait_until, Topology};
use cim_tiering::jetstream::{bucket_stream_config, meta_subject, stream_name};
use common::{content, rewrite_meta, sample, scrape, Roles, Tiers};

const COPY_ALL_TO_S3: &str = r#"
[[policy]]
name = "all-to-s3"
buckets = ["*"]
from = "hub"
to = "s3"
action = "copy"
after = "0s"
"#;

/// Item 8: a bucket whose stream lost quorum, a meta message that does not decode and an object
/// without a digest are each skipped, counted with a reason and logged; every other object of
/// every other bucket still moves. Bucket names sort the bad ones first, so a pass that aborts
/// at the first error never reaches the good bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_bad_object_or_bucket_never_stops_the_rest() {
    let mut topology = Topology::start().await.unwrap();
    let config = topology.write_config(COPY_ALL_TO_S3);
    let tiers = Tiers::connect(&topology).await;

    // "a-lost-quorum": a one-replica bucket whose only server is then killed.
    let lost = "a-lost-quorum";
    tiers
        .hub
        .create_stream(bucket_stream_config(lost, 1, None))
        .await
        .unwrap();
    let store = tiers.hub.get_object_store(lost).await.unwrap();
    store.put("x", &mut &content(81, 100)[..]).await.unwrap();
    let mut stream = tiers.hub.get_stream(stream_name(lost)).await.unwrap();
    let leader = stream
        .info()
        .await
        .unwrap()
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .unwrap();
    let index = topology.hub.index_of(&leader).unwrap();

    // "b-bad-meta": one good object, one whose meta is not JSON, one without a digest.
    let bad = "b-bad-meta";
    let store = common::ensure_bucket(&tiers.hub_tier, bad).await;
    store.put("good", &mut &content(82, 100)[..]).await.unwrap();
    store
        .put("no-digest", &mut &content(83, 100)[..])
        .await
        .unwrap();
    rewrite_meta(&tiers.hub, bad, "no-digest", |m| {
        m.as_object_mut().unwrap().remove("digest");
    })
    .await;
    tiers
        .hub
        .publish(meta_subject(bad, "garbage"), "this is not json".into())
        .await
        .unwrap()
        .await
        .unwrap();

    // "c-fine": ordinary objects.
    let fine = "c-fine";
    let store = common::ensure_bucket(&tiers.hub_tier, fine).await;
    for i in 0..3 {
        store
            .put(format!("f{i}").as_str(), &mut &content(90 + i, 1000)[..])
            .await
            .unwrap();
    }

    // The roles' control-plane streams exist before the node goes (an R3 stream cannot be
    // created while a peer is offline; that is not what this test is about).
    cim_tiering::work::WorkQueue::open(tiers.hub.clone(), &Default::default(), 3)
        .await
        .unwrap();
    topology.hub.nodes[index].kill();

    let roles = Roles::start(&topology, &config);
    let arrived = wait_until(
        "the good objects copied to s3 despite the bad ones",
        Duration::from_secs(120),
        || async {
            let fine_done = tiers.catalog_locations(fine).await;
            let bad_done = tiers.catalog_locations(bad).await;
            (0..3).all(|i| {
                fine_done
                    .get(&format!("f{i}"))
                    .is_some_and(|l| l.contains(&"s3".to_string()))
            }) && bad_done
                .get("good")
                .is_some_and(|l| l.contains(&"s3".to_string()))
        },
    )
    .await;
    arrived.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));

    // Each problem is counted with its reason and named in the manager's log.
    let metrics = scrape(roles.manager_metrics).await;
    for reason in ["bucket_unavailable", "undecodable_meta", "missing_digest"] {
        let skipped = sample(&metrics, "cim_manager_skipped_total", &[("reason", reason)]);
        assert!(
            skipped.is_some_and(|n| n >= 1.0),
            "no skip counted for reason {reason}:\n{metrics}"
        );
    }
    let log = roles.manager.log();
    for needle in [lost, "garbage", "no-digest"] {
        assert!(
            log.contains(needle),
            "manager log never names {needle}:\n{log}"
        );
    }
}
