//! The work queue on real servers: bounded however long items wait, versioned items, no item
//! held forever, prompt shutdown.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, object_store, stream};
use cim_tests::{wait_until, RoleProcess, Topology};
use cim_tiering::digest::Sha256Digest;
use cim_tiering::work::{ObjectMove, WorkItem, WorkQueue};
use common::{content, sample, scrape, spawn_role, work_messages, Roles, Tiers};

/// The work stream's name (`[work] stream` default).
const WORK_STREAM: &str = "CIM_WORK";

/// Puts `data` as `name` into the hub bucket `bucket` (created R3 if missing).
async fn put_hub(hub: &jetstream::Context, bucket: &str, name: &str, data: &[u8]) {
    let store = match hub.get_object_store(bucket).await {
        Ok(store) => store,
        Err(_) => hub
            .create_object_store(object_store::Config {
                bucket: bucket.to_string(),
                num_replicas: 3,
                ..Default::default()
            })
            .await
            .unwrap(),
    };
    let mut reader = data;
    store.put(name, &mut reader).await.unwrap();
}

/// Completed manager passes, from the manager's /metrics (0 while it is not serving yet).
async fn manager_passes(port: u16) -> f64 {
    match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(response) => sample(
            &response.text().await.unwrap_or_default(),
            "cim_manager_passes_total",
            &[],
        )
        .unwrap_or(0.0),
        Err(_) => 0.0,
    }
}

async fn wait_passes(manager: &RoleProcess, port: u16, at_least: f64) {
    if let Err(e) = wait_until(
        &format!("{at_least} manager passes"),
        Duration::from_secs(60),
        || async { manager_passes(port).await >= at_least },
    )
    .await
    {
        panic!("{e:#}\n--- manager ---\n{}", manager.log());
    }
}

/// Issue 5 item 9: an object that waits longer than the stream's de-duplication window is not
/// queued again and again — at most one pending item per object and step, however long it
/// waits, in a stream created by an older version.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn waiting_objects_are_queued_once_however_long_they_wait() {
    const BUCKET: &str = "waiting";
    const OBJECTS: usize = 5;
    let topology = Topology::start().await.unwrap();
    let hub_client = topology.hub.connect().await.unwrap();
    let hub = jetstream::new(hub_client);

    // The work stream as an older deployment created it; the window is short so that the test
    // need not wait ten minutes for it to pass.
    // (Right after start-up a peer may not be current yet: placement can fail for a moment.)
    cim_tests::wait_for(
        "the old-style work stream created",
        Duration::from_secs(30),
        || async {
            let created = hub
                .create_stream(stream::Config {
                    name: WORK_STREAM.to_string(),
                    subjects: vec!["cim.work.>".to_string()],
                    retention: stream::RetentionPolicy::WorkQueue,
                    num_replicas: 3,
                    duplicate_window: Duration::from_secs(1),
                    ..Default::default()
                })
                .await;
            Ok(created.err().map(|e| e.to_string()))
        },
    )
    .await
    .unwrap();
    for i in 0..OBJECTS {
        put_hub(&hub, BUCKET, &format!("o/{i}"), &content(i as u64, 1000)).await;
    }

    // Only the manager runs: nothing consumes the items, as when the upload role is down.
    let config = topology.write_config(&format!(
        r#"
[[policy]]
name = "waiting-to-s3"
buckets = ["{BUCKET}"]
from = "hub"
to = "s3"
action = "move"
after = "0s"
"#
    ));
    let port = cim_tests::free_port();
    let manager = spawn_role(
        "cim-storage",
        "run",
        &config,
        port,
        &topology.dir().join("manager.log"),
    );
    wait_passes(&manager, port, 1.0).await;
    // Whatever the manager set up, de-duplication by id forgets after the window: keep the
    // window short, as if ten minutes had passed between passes.
    let mut work = hub.get_stream(WORK_STREAM).await.unwrap();
    let mut cfg = work.info().await.unwrap().config.clone();
    cfg.duplicate_window = Duration::from_secs(1);
    hub.update_stream(cfg).await.unwrap();
    let passes = manager_passes(port).await;
    // Several passes, each at least an interval (1 s) after the previous one's items.
    wait_passes(&manager, port, passes + 5.0).await;

    let messages = work_messages(&hub).await;
    let mut per_object: BTreeMap<String, usize> = BTreeMap::new();
    for (subject, item) in &messages {
        assert_eq!(
            item["policy"], "waiting-to-s3",
            "an item names the policy that decided it: {subject} {item}"
        );
        let key = format!("{} {} -> {}", item["name"], item["from"], item["to"]);
        *per_object.entry(key).or_default() += 1;
    }
    let repeated: Vec<_> = per_object.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty() && per_object.len() == OBJECTS,
        "expected exactly one pending item per object and step ({OBJECTS} objects) after {} \
         manager passes; the work stream holds {} messages: {per_object:?}\n--- manager ---\n{}",
        manager_passes(port).await,
        messages.len(),
        manager
            .log()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Issue 5 item 12 (work items): an item of a newer format than the role understands is left
/// for a newer role — never terminated, never acked — while the role goes on with the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_newer_work_item_is_left_for_a_newer_role() {
    const BUCKET: &str = "future";
    let topology = Topology::start().await.unwrap();
    let tiers = Tiers::connect(&topology).await;
    let config_path = topology.write_config("");
    let config = cim_policies::Config::from_toml_str(
        &std::fs::read_to_string(&config_path).unwrap(),
        "test.toml",
    )
    .unwrap();
    // The work stream as the roles create it.
    WorkQueue::open(tiers.hub.clone(), &config.work, 3)
        .await
        .unwrap();

    // A future role's item, as a future version might write it: a higher version, a kind and
    // fields this version does not know. Once on the subjects this version's upload role reads
    // (the oldest layout it reads, version 1), once on the subjects of its own version.
    let future = serde_json::json!({
        "v": 99,
        "kind": "upload_batch",
        "policy": "from-the-future",
        "objects": [{"bucket": BUCKET, "name": "a"}],
    });
    let mut future_seqs = Vec::new();
    for subject in [
        format!("cim.work.v1.upload.{BUCKET}"),
        format!("cim.work.v99.upload.{BUCKET}.hub.s3.YQ"),
    ] {
        let ack = tiers
            .hub
            .publish(subject.clone(), future.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
        future_seqs.push((subject, ack.sequence));
    }

    // Then an ordinary item, queued after the future ones on the same (oldest) layout, for an
    // object on the hub.
    let data = content(12, 5000);
    let store = common::ensure_bucket(&tiers.hub_tier, BUCKET).await;
    let info = store.put("later", &mut &data[..]).await.unwrap();
    let item = WorkItem::Upload(ObjectMove {
        policy: "today".into(),
        from: "hub".into(),
        to: "s3".into(),
        action: cim_policies::Action::Copy,
        bucket: BUCKET.into(),
        name: "later".into(),
        size: data.len() as u64,
        digest: Sha256Digest::of(&data),
        nuid: info.nuid.clone(),
        seq: 0,
    });
    tiers
        .hub
        .publish(
            format!("cim.work.v1.upload.{BUCKET}.hub.s3.bGF0ZXI"),
            serde_json::to_vec(&item).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let port = cim_tests::free_port();
    let upload = spawn_role(
        "cim-gateway",
        "upload",
        &config_path,
        port,
        &topology.dir().join("upload.log"),
    );
    // The role has been through the queue once the ordinary item, queued last, is done.
    if let Err(e) = wait_until(
        "the ordinary item uploaded",
        Duration::from_secs(60),
        || async {
            tiers
                .catalog
                .get(BUCKET, "later")
                .await
                .ok()
                .flatten()
                .is_some_and(|entry| entry.locations.contains_key("s3"))
        },
    )
    .await
    {
        panic!("{e:#}\n--- upload ---\n{}", upload.log());
    }

    let metrics = scrape(port).await;
    let work = tiers.hub.get_stream(WORK_STREAM).await.unwrap();
    for (subject, seq) in &future_seqs {
        let kept = work.get_raw_message(*seq).await;
        assert!(
            kept.is_ok(),
            "the future item on {subject} (seq {seq}) must stay in the stream for a newer role, \
             but it is gone ({:?}); invalid items counted: {:?}\n--- upload ---\n{}",
            kept.err(),
            sample(&metrics, "cim_work_items_total", &[("outcome", "invalid")]),
            upload.log()
        );
    }
    assert_eq!(
        sample(&metrics, "cim_work_items_total", &[("outcome", "invalid")]),
        Some(0.0),
        "a newer item is not invalid\n{metrics}"
    );
}

/// A hub → S3 `move` of everything in `bucket`, immediately.
fn hub_to_s3(bucket: &str) -> String {
    format!(
        r#"
[[policy]]
name = "{bucket}-to-s3"
buckets = ["{bucket}"]
from = "hub"
to = "s3"
action = "move"
after = "0s"
"#
    )
}

/// Objects of `bucket` the catalog places only in S3.
async fn only_in_s3(tiers: &Tiers, bucket: &str) -> usize {
    tiers
        .catalog_locations(bucket)
        .await
        .values()
        .filter(|l| l.as_slice() == ["s3"])
        .count()
}

async fn transferred_to_s3(port: u16) -> f64 {
    match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(response) => sample(
            &response.text().await.unwrap_or_default(),
            "cim_transfers_total",
            &[("from_tier", "hub"), ("to_tier", "s3"), ("outcome", "ok")],
        )
        .unwrap_or(0.0),
        Err(_) => 0.0,
    }
}

/// Waits until every one of `expected` objects of `bucket` is only in S3: the catalog says so,
/// the hub bucket is empty, and each has its manifest in S3.
async fn wait_all_in_s3(
    tiers: &Tiers,
    bucket: &str,
    expected: usize,
    timeout: Duration,
    logs: impl Fn() -> String,
) {
    let result = wait_until(
        &format!("{expected} objects of {bucket} only in s3"),
        timeout,
        || async {
            only_in_s3(tiers, bucket).await == expected
                && Tiers::names(&tiers.hub_tier, bucket).await.is_empty()
        },
    )
    .await;
    if let Err(e) = result {
        panic!(
            "{e:#}\nonly in s3: {} of {expected}; still on the hub: {}\n{}",
            only_in_s3(tiers, bucket).await,
            Tiers::names(&tiers.hub_tier, bucket).await.len(),
            logs()
        );
    }
}

/// Issue 5 item 11: a hub server paused (SIGSTOP) during a move leaves handlers waiting on it;
/// each stuck item is abandoned after `[work] ack_wait` without progress, logged with its
/// bucket and object, and retried — and once the server runs again every object arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_item_stuck_on_a_paused_hub_server_is_abandoned_and_retried() {
    const BUCKET: &str = "paused";
    const OBJECTS: usize = 40;
    let topology = Topology::start().await.unwrap();
    let tiers = Tiers::connect(&topology).await;
    let store = common::ensure_bucket(&tiers.hub_tier, BUCKET).await;
    for i in 0..OBJECTS {
        let data = content(1100 + i as u64, 2 * 1024 * 1024);
        store
            .put(format!("o/{i:02}").as_str(), &mut &data[..])
            .await
            .unwrap();
    }
    let config = topology.write_config(&hub_to_s3(BUCKET));
    let dir = topology.dir();
    let (manager_port, upload_port) = (cim_tests::free_port(), cim_tests::free_port());
    let manager = spawn_role(
        "cim-storage",
        "run",
        &config,
        manager_port,
        &dir.join("manager.log"),
    );
    let upload = spawn_role(
        "cim-gateway",
        "upload",
        &config,
        upload_port,
        &dir.join("upload.log"),
    );
    let logs = || {
        format!(
            "--- manager ---\n{}\n--- upload ---\n{}",
            manager.log(),
            upload.log()
        )
    };

    // Moves are under way: one has finished, so the next ones are normally in flight. On a
    // loaded machine the pause may land between two items (nothing in flight, so nothing to
    // abandon): then the hub runs again until another object has moved, and is paused again.
    let mut stalled = Err(anyhow::anyhow!("never paused"));
    for round in 1..=3 {
        let moved = wait_until("an object moved", Duration::from_secs(60), || async {
            transferred_to_s3(upload_port).await >= round as f64
        })
        .await;
        if let Err(e) = moved {
            panic!("{e:#}\n{}", logs());
        }
        // Freeze the whole hub: every handler now waits on a server that answers nothing.
        for node in &topology.hub.nodes {
            node.pause().unwrap();
        }
        // Abandoned after ack_wait (5 s) without progress; a round without an item in flight
        // shows nothing within several times that.
        stalled = upload
            .wait_for_log("abandon", Duration::from_secs(30))
            .await;
        for node in &topology.hub.nodes {
            node.resume().unwrap();
        }
        if stalled.is_ok() {
            break;
        }
    }
    if let Err(e) = stalled {
        panic!(
            "no stuck item was abandoned in three pauses: {e:#}\n{}",
            logs()
        );
    }
    let log = upload.log();
    let line = log.lines().find(|l| l.contains("abandon")).unwrap();
    assert!(
        line.contains(&format!("bucket={BUCKET}")) && line.contains("object=o/"),
        "the log line names the bucket and object: {line}"
    );

    wait_all_in_s3(&tiers, BUCKET, OBJECTS, Duration::from_secs(180), logs).await;
}

/// Issue 5 item 11: SIGTERM ends every role within 5 s while work is in flight — even with the
/// hub frozen under them — releasing unfinished items for redelivery instead of waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_ends_every_role_within_five_seconds_with_work_in_flight() {
    const BUCKET: &str = "sensors-term";
    let topology = Topology::start().await.unwrap();
    let tiers = Tiers::connect(&topology).await;
    for i in 0..100 {
        tiers
            .put_leaf(
                BUCKET,
                &format!("o/{i:03}"),
                &content(1200 + i, 1024 * 1024),
            )
            .await;
    }
    // A long ack_wait: waiting for in-flight work, as the roles did, takes that long.
    let config = topology.write_config(&format!(
        r#"
[work]
ack_wait = "60s"

[[policy]]
name = "edge-to-cluster"
buckets = ["{BUCKET}"]
from = "leaf"
to = "hub"
action = "move"
after = "0s"
{}"#,
        hub_to_s3(BUCKET)
    ));
    let mut roles = Roles::start(&topology, &config);
    let upload_port = roles.upload_metrics;
    if let Err(e) = wait_until("a first object in s3", Duration::from_secs(60), || async {
        transferred_to_s3(upload_port).await >= 1.0
    })
    .await
    {
        panic!("{e:#}\n{}", roles.logs());
    }
    for node in &topology.hub.nodes {
        node.pause().unwrap();
    }
    let mut results = Vec::new();
    for (name, role) in [
        ("manager", &mut roles.manager),
        ("mirror", &mut roles.mirror),
        ("upload", &mut roles.upload),
    ] {
        let started = std::time::Instant::now();
        let result = role.sigterm_and_wait(Duration::from_secs(5));
        results.push((name, result.map(|_| started.elapsed())));
    }
    for node in &topology.hub.nodes {
        node.resume().unwrap();
    }
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {e:#}")))
        .collect();
    assert!(failed.is_empty(), "{failed:?}\n{}", roles.logs());
    eprintln!("exit times after SIGTERM: {results:?}");
}

/// Issue 5 item 11: 10,000 small objects through hub → S3, every one arriving (catalog and
/// manifest). Reports how long it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_small_objects_all_arrive() {
    const BUCKET: &str = "many";
    const OBJECTS: usize = 10_000;
    let topology = Topology::start().await.unwrap();
    let tiers = Tiers::connect(&topology).await;
    let store = common::ensure_bucket(&tiers.hub_tier, BUCKET).await;
    let started = std::time::Instant::now();
    let mut writers = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in (w..OBJECTS).step_by(8) {
                let data = content(i as u64, 1024 + (i * 37) % 3072);
                store
                    .put(format!("s/{i:05}").as_str(), &mut &data[..])
                    .await
                    .unwrap();
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    eprintln!(
        "put {OBJECTS} objects on the hub in {:.1?}",
        started.elapsed()
    );

    let config = topology.write_config(&format!("[work]\nconcurrency = 16\n{}", hub_to_s3(BUCKET)));
    let dir = topology.dir();
    let (manager_port, upload_port) = (cim_tests::free_port(), cim_tests::free_port());
    let manager = spawn_role(
        "cim-storage",
        "run",
        &config,
        manager_port,
        &dir.join("manager.log"),
    );
    let upload = spawn_role(
        "cim-gateway",
        "upload",
        &config,
        upload_port,
        &dir.join("upload.log"),
    );
    let logs = || {
        let tail = |t: String| t.lines().rev().take(40).collect::<Vec<_>>().join("\n");
        format!(
            "--- manager ---\n{}\n--- upload ---\n{}",
            tail(manager.log()),
            tail(upload.log())
        )
    };
    let moving = std::time::Instant::now();
    wait_all_in_s3(&tiers, BUCKET, OBJECTS, Duration::from_secs(1200), logs).await;
    eprintln!(
        "moved {OBJECTS} objects hub -> s3 in {:.1?}",
        moving.elapsed()
    );

    // Every object has its manifest in S3.
    let s3_config = cim_policies::Config::from_toml_str(
        &std::fs::read_to_string(&config).unwrap(),
        "test.toml",
    )
    .unwrap();
    let Some(cim_policies::Tier::S3(s3)) = s3_config.tier("s3") else {
        panic!("no s3 tier");
    };
    let s3 = cim_gateway::s3::S3Store::connect(s3).await.unwrap();
    let manifests = s3.list_manifests(BUCKET).await.unwrap();
    assert_eq!(manifests.len(), OBJECTS);
}
