//! Versions of one object on real servers: which version counts as newer, how old an object is,
//! and that no tier ever goes back to an older version.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use async_nats::jetstream;
use cim_tests::{wait_until, Topology};
use cim_tiering::jetstream::{meta_subject, stream_name};
use common::{content, sample, Roles, Tiers};

/// Rewrites the `mtime` (the writer's `modified`) of an object's current meta message in place:
/// same nuid and chunks, as a device with a wrong clock would have written it.
async fn set_writer_clock(js: &jetstream::Context, bucket: &str, name: &str, mtime: &str) {
    let stream = js.get_stream(stream_name(bucket)).await.unwrap();
    let subject = meta_subject(bucket, name);
    let last = stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .unwrap();
    let mut meta: serde_json::Value = serde_json::from_slice(&last.payload).unwrap();
    meta["mtime"] = serde_json::Value::String(mtime.to_string());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Rollup", "sub");
    js.publish_with_headers(subject, headers, serde_json::to_vec(&meta).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Messages in the work-queue stream (queued or in flight).
async fn work_items(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream("CIM_WORK").await.unwrap();
    stream.info().await.unwrap().state.messages
}

/// Completed manager passes; 0 while the manager's endpoint is not up yet.
async fn manager_passes(roles: &Roles) -> f64 {
    let url = format!("http://127.0.0.1:{}/metrics", roles.manager_metrics);
    let Ok(response) = reqwest::get(url).await else {
        return 0.0;
    };
    let text = response.text().await.unwrap_or_default();
    sample(&text, "cim_manager_passes_total", &[]).unwrap_or(0.0)
}

/// Item 6: `after` is measured from when the hub stored the object, not from the `modified` time
/// the writing client claims. A device whose clock says 1970 must not get everything evicted at
/// once, and one whose clock says 2100 must not keep its objects forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn age_comes_from_the_server_not_the_writer_clock() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(
        r#"
[[policy]]
name = "old-clock-hour"
buckets = ["clock-old"]
from = "hub"
to = "s3"
action = "copy"
after = "1h"

[[policy]]
name = "future-clock-second"
buckets = ["clock-future"]
from = "hub"
to = "s3"
action = "copy"
after = "1s"
"#,
    );
    let tiers = Tiers::connect(&topology).await;
    for (bucket, mtime) in [
        ("clock-old", "1970-01-01T00:00:00Z"),
        ("clock-future", "2100-01-01T00:00:00Z"),
    ] {
        let store = tiers
            .hub_tier
            .ensure_bucket(bucket)
            .await
            .unwrap_or_else(|e| panic!("{bucket}: {e}"));
        store.put("obj", &mut &content(6, 4096)[..]).await.unwrap();
        set_writer_clock(&tiers.hub, bucket, "obj", mtime).await;
    }

    let roles = Roles::start(&topology, &config);
    // Two full manager passes after the objects exist, and the work they queued all done: had
    // the 1970 object been due, it would be in S3 by now.
    let first = wait_until("a first manager pass", Duration::from_secs(30), || async {
        manager_passes(&roles).await >= 1.0
    })
    .await;
    first.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    let after = manager_passes(&roles).await;
    wait_until("two more manager passes", Duration::from_secs(30), || async {
        manager_passes(&roles).await >= after + 2.0
    })
    .await
    .unwrap();
    wait_until("the work queue drained", Duration::from_secs(60), || async {
        work_items(&tiers.hub).await == 0
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    let old = tiers.catalog_locations("clock-old").await;
    assert!(
        !old.get("obj").is_some_and(|l| l.contains(&"s3".to_string())),
        "an object the hub stored seconds ago was copied under `after = 1h` because its writer's \
         clock said 1970: catalog {old:?}\n{}",
        roles.logs()
    );

    // The 2100 object is due one second after the hub stored it, whatever its writer claims.
    let arrived = wait_until(
        "the 2100-clock object copied to s3",
        Duration::from_secs(60),
        || async {
            tiers
                .catalog_locations("clock-future")
                .await
                .get("obj")
                .is_some_and(|l| l.contains(&"s3".to_string()))
        },
    )
    .await;
    arrived.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
}
