//! Versions of one object on real servers: which version counts as newer, how old an object is,
//! and that no tier ever goes back to an older version.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use async_nats::jetstream;
use cim_tests::{wait_until, Topology};
use cim_tiering::jetstream::{meta_subject, stream_name};
use common::{content, rewrite_meta, sample, Roles, Tiers};

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
        // Same nuid and chunks, as a device with a wrong clock would have written it.
        rewrite_meta(&tiers.hub, bucket, "obj", |m| {
            m["mtime"] = serde_json::Value::String(mtime.to_string())
        })
        .await;
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
    wait_until(
        "two more manager passes",
        Duration::from_secs(30),
        || async { manager_passes(&roles).await >= after + 2.0 },
    )
    .await
    .unwrap();
    wait_until(
        "the work queue drained",
        Duration::from_secs(60),
        || async { work_items(&tiers.hub).await == 0 },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    let old = tiers.catalog_locations("clock-old").await;
    assert!(
        !old.get("obj")
            .is_some_and(|l| l.contains(&"s3".to_string())),
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

/// Leaf `copy` (continuous sourcing), hub `move` to S3, immediately.
const ARCHIVE_FROM_HUB: &str = r#"
[[policy]]
name = "edge-to-cluster"
buckets = ["*"]
from = "leaf"
to = "hub"
action = "copy"
after = "0s"

[[policy]]
name = "cluster-to-s3"
buckets = ["*"]
from = "hub"
to = "s3"
action = "move"
after = "0s"
"#;

/// What the hub stream of `bucket` holds: meta subjects with their message counts, and chunk
/// subjects with theirs.
async fn hub_subjects(
    tiers: &Tiers,
    bucket: &str,
) -> (
    std::collections::BTreeMap<String, usize>,
    std::collections::BTreeMap<String, usize>,
) {
    use futures::TryStreamExt;
    let stream = tiers.hub.get_stream(stream_name(bucket)).await.unwrap();
    let all: Vec<(String, usize)> = stream
        .info_with_subjects(format!("$O.{bucket}.>"))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let meta_prefix = format!("$O.{bucket}.M.");
    let (meta, chunks): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|(s, _)| s.starts_with(&meta_prefix));
    (meta.into_iter().collect(), chunks.into_iter().collect())
}

/// How the hub's sourcing stream is disturbed after everything was archived.
#[derive(Clone, Copy, Debug)]
enum Disturbance {
    LeaderStepDown,
    RestartAllHubNodes,
}

/// Item 3 (a regression guard for nats-server upgrades): objects archived to S3 and evicted from
/// the hub by purging must not come back when the hub's sourcing stream changes leader or every
/// hub node restarts — sources keep their position and do not re-deliver purged messages. New
/// objects written on the leaf afterwards still arrive, each exactly once.
async fn archived_objects_stay_archived(disturbance: Disturbance) {
    let mut topology = Topology::start().await.unwrap();
    let config = topology.write_config(ARCHIVE_FROM_HUB);
    let tiers = Tiers::connect(&topology).await;
    let bucket = "archive";
    let old: Vec<String> = (0..5).map(|i| format!("old-{i}")).collect();
    for (i, name) in old.iter().enumerate() {
        tiers
            .put_leaf(bucket, name, &content(30 + i as u64, 200 * 1024))
            .await;
    }
    let mut roles = Roles::start(&topology, &config);
    let archived = wait_until(
        "every object archived and evicted from the hub",
        Duration::from_secs(120),
        || async {
            let catalog = tiers.catalog_locations(bucket).await;
            old.iter().all(|n| {
                catalog
                    .get(n)
                    .is_some_and(|l| l.contains(&"s3".to_string()))
            }) && Tiers::names(&tiers.hub_tier, bucket).await.is_empty()
        },
    )
    .await;
    archived.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    // Stop the roles: anything that reappeared would otherwise be archived again unseen.
    roles.stop();
    let (meta, chunks) = hub_subjects(&tiers, bucket).await;
    assert!(
        meta.is_empty() && chunks.is_empty(),
        "after eviction the hub still holds {meta:?} {chunks:?}"
    );

    match disturbance {
        Disturbance::LeaderStepDown => {
            let leader = || async {
                let mut stream = tiers.hub.get_stream(stream_name(bucket)).await.ok()?;
                stream.info().await.ok()?.cluster.clone()?.leader
            };
            let before = leader().await.unwrap();
            let response: async_nats::Message = topology
                .hub
                .connect()
                .await
                .unwrap()
                .request(
                    format!("$JS.API.STREAM.LEADER.STEPDOWN.{}", stream_name(bucket)),
                    "".into(),
                )
                .await
                .unwrap();
            assert!(
                String::from_utf8_lossy(&response.payload).contains("\"success\":true"),
                "step-down refused: {}",
                String::from_utf8_lossy(&response.payload)
            );
            wait_until("a new stream leader", Duration::from_secs(30), || async {
                leader().await.is_some_and(|l| l != before)
            })
            .await
            .unwrap();
        }
        Disturbance::RestartAllHubNodes => {
            topology.hub.stop();
            for node in &mut topology.hub.nodes {
                node.start().unwrap();
            }
            topology.wait_ready().await.unwrap();
        }
    }

    // New objects on the leaf still arrive; the archived ones do not come back.
    let tiers = Tiers::connect(&topology).await;
    let new: Vec<String> = (0..3).map(|i| format!("new-{i}")).collect();
    let mut nuids = Vec::new();
    for (i, name) in new.iter().enumerate() {
        let info = tiers
            .put_leaf(bucket, name, &content(40 + i as u64, 200 * 1024))
            .await;
        nuids.push(info.nuid);
    }
    let arrived = wait_until(
        "the new objects on the hub",
        Duration::from_secs(60),
        || async { Tiers::names(&tiers.hub_tier, bucket).await == new },
    )
    .await;
    if let Err(e) = arrived {
        let names = Tiers::names(&tiers.hub_tier, bucket).await;
        panic!("{e:#} ({disturbance:?}): hub holds {names:?}");
    }
    let (meta, chunks) = hub_subjects(&tiers, bucket).await;
    let expected_meta: std::collections::BTreeMap<String, usize> =
        new.iter().map(|n| (meta_subject(bucket, n), 1)).collect();
    assert_eq!(meta, expected_meta, "{disturbance:?}: meta on the hub");
    let expected_chunks: std::collections::BTreeMap<String, usize> = nuids
        .iter()
        .map(|nuid| (cim_tiering::jetstream::chunk_subject(bucket, nuid), 2))
        .collect();
    assert_eq!(
        chunks, expected_chunks,
        "{disturbance:?}: every new object's two chunks exactly once, nothing of the archived ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archived_objects_stay_archived_across_a_hub_leader_change() {
    archived_objects_stay_archived(Disturbance::LeaderStepDown).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn archived_objects_stay_archived_across_a_restart_of_every_hub_node() {
    archived_objects_stay_archived(Disturbance::RestartAllHubNodes).await;
}

async fn system(topology: &Topology) -> std::sync::Arc<cim_tiering::System> {
    let text = topology.config_toml("");
    let config = cim_policies::Config::from_toml_str(&text, "test.toml").unwrap();
    std::sync::Arc::new(
        cim_tiering::System::connect(config, "versions-test")
            .await
            .unwrap(),
    )
}

/// The work item the manager would queue for the hub's current version of an object.
async fn upload_item(
    hub: &cim_tiering::jetstream::JetStreamTier,
    bucket: &str,
    name: &str,
) -> cim_tiering::work::WorkItem {
    let info = hub.info(bucket, name).await.unwrap().unwrap();
    cim_tiering::work::WorkItem::Upload(cim_tiering::work::ObjectMove {
        policy: "to-s3".into(),
        from: "hub".into(),
        to: "s3".into(),
        action: cim_policies::Action::Copy,
        bucket: bucket.into(),
        name: name.into(),
        size: info.size as u64,
        digest: cim_tiering::jetstream::ingest_digest("hub", bucket, &info).unwrap(),
        nuid: info.nuid,
        seq: 0,
    })
}

/// Item 2: v1's long upload is in flight when the user writes v2 on the leaf; v2 is uploaded and
/// committed first, then v1's upload finishes. The S3 side and the catalog must end on v2.
/// (On the hub, a sourced bucket keeps v1's chunks after the overwrite — sources do not carry
/// purges — so v1's upload can still read them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_upload_of_an_older_version_never_replaces_the_newer_one() {
    use cim_tiering::work::{Handler, Progress};
    let topology = Topology::start().await.unwrap();
    let tiers = Tiers::connect(&topology).await;
    let system = system(&topology).await;
    let hub = system.jetstream_tier("hub").unwrap().clone();
    let leaf = system.jetstream_tier("leaf").unwrap().clone();
    let bucket = "races";

    // v1: large enough that its upload takes a while (multipart).
    let v1 = content(21, 128 * 1024 * 1024);
    let v1_info = tiers.put_leaf(bucket, "doc", &v1).await;
    hub.ensure_sourced_from(bucket, &leaf).await.unwrap();
    let on_hub = |nuid: String| {
        let hub = hub.clone();
        async move {
            hub.info(bucket, "doc")
                .await
                .ok()
                .flatten()
                .is_some_and(|i| i.nuid == nuid)
        }
    };
    wait_until("v1 on the hub", Duration::from_secs(60), || {
        on_hub(v1_info.nuid.clone())
    })
    .await
    .unwrap();

    let stores = cim_gateway::upload::connect_s3_tiers(&system)
        .await
        .unwrap();
    let s3 = stores["s3"].clone();
    let handler = std::sync::Arc::new(cim_gateway::upload::UploadHandler::new(
        system.clone(),
        stores,
    ));
    let v1_item = upload_item(&hub, bucket, "doc").await;
    let v1_upload = {
        let handler = handler.clone();
        tokio::spawn(async move { handler.handle(v1_item, Progress::new()).await })
    };
    wait_until(
        "v1's multipart upload in flight",
        Duration::from_secs(60),
        || async { !s3.list_multipart_uploads().await.unwrap().is_empty() },
    )
    .await
    .unwrap();

    // v2 written while v1 uploads; uploaded and committed first.
    let v2 = content(22, 1000);
    let v2_info = tiers.put_leaf(bucket, "doc", &v2).await;
    wait_until("v2 on the hub", Duration::from_secs(60), || {
        on_hub(v2_info.nuid.clone())
    })
    .await
    .unwrap();
    handler
        .handle(upload_item(&hub, bucket, "doc").await, Progress::new())
        .await
        .unwrap();
    assert!(
        !v1_upload.is_finished(),
        "precondition: v1's upload must still be running when v2 commits (make v1 larger)"
    );
    let v1_result = v1_upload.await.unwrap();

    let v2_digest = cim_tiering::digest::Sha256Digest::of(&v2);
    let entry = system.catalog.get(bucket, "doc").await.unwrap().unwrap();
    let manifest = s3.get_manifest(bucket, "doc").await.unwrap().unwrap();
    assert!(
        entry.digest == v2_digest && manifest.digest == v2_digest,
        "the late v1 upload (result {v1_result:?}) replaced v2: catalog has {}, manifest has {}, \
         v2 is {}",
        entry.digest,
        manifest.digest,
        v2_digest
    );
    let mut out = Vec::new();
    s3.read_verified(&manifest, &mut out).await.unwrap();
    assert!(out == v2, "S3 does not restore v2");
}

/// Item 12 (upload side): a current manifest written by a newer format is left for the newer
/// software — an upload of the same object by this version never overwrites it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_never_overwrites_a_manifest_of_a_newer_format() {
    use cim_tiering::work::Handler;
    let topology = Topology::start().await.unwrap();
    let system = system(&topology).await;
    let hub = system.jetstream_tier("hub").unwrap().clone();
    let (bucket, name) = ("formats-up", "doc");
    let key = cim_gateway::format::manifest_key("cim/", bucket, name);
    let future =
        serde_json::json!({ "format": 99, "bucket": bucket, "name": name, "anything": [1, 2] });
    let s3 = topology.s3.client().await;
    s3.put_object()
        .bucket(&topology.s3.bucket)
        .key(&key)
        .body(serde_json::to_vec(&future).unwrap().into())
        .send()
        .await
        .unwrap();

    let store = common::ensure_bucket(&hub, bucket).await;
    store.put(name, &mut &content(50, 5000)[..]).await.unwrap();
    let stores = cim_gateway::upload::connect_s3_tiers(&system)
        .await
        .unwrap();
    let handler = cim_gateway::upload::UploadHandler::new(system.clone(), stores);
    let result = handler
        .handle(
            upload_item(&hub, bucket, name).await,
            cim_tiering::work::Progress::new(),
        )
        .await;
    let stored = s3
        .get_object()
        .bucket(&topology.s3.bucket)
        .key(&key)
        .send()
        .await
        .unwrap()
        .body
        .collect()
        .await
        .unwrap()
        .into_bytes();
    let stored: serde_json::Value = serde_json::from_slice(&stored).unwrap();
    assert_eq!(
        stored["format"], 99,
        "the upload (result {result:?}) overwrote a newer format's manifest: {stored}"
    );
    assert!(result.is_err(), "the upload must report the newer manifest");
}
