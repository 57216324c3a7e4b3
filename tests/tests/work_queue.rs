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
use common::{content, sample, scrape, spawn_role, Tiers};

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

/// Every message in the work stream: (subject, decoded JSON payload).
async fn work_messages(hub: &jetstream::Context) -> Vec<(String, serde_json::Value)> {
    let mut work = hub.get_stream(WORK_STREAM).await.unwrap();
    let state = work.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        // Acked (work-queue) messages are gone; gaps are normal.
        if let Ok(message) = work.get_raw_message(seq).await {
            let value = serde_json::from_slice(&message.payload)
                .unwrap_or_else(|_| serde_json::Value::String("<not json>".into()));
            out.push((message.subject.to_string(), value));
        }
    }
    out
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
    hub.create_stream(stream::Config {
        name: WORK_STREAM.to_string(),
        subjects: vec!["cim.work.>".to_string()],
        retention: stream::RetentionPolicy::WorkQueue,
        num_replicas: 3,
        duplicate_window: Duration::from_secs(1),
        ..Default::default()
    })
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
    // (the oldest layout), once on the subjects of its own version.
    let future = serde_json::json!({
        "v": 99,
        "kind": "upload_batch",
        "policy": "from-the-future",
        "objects": [{"bucket": BUCKET, "name": "a"}],
    });
    let mut future_seqs = Vec::new();
    for subject in [
        format!("cim.work.upload.{BUCKET}"),
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
    let store = tiers.hub_tier.ensure_bucket(BUCKET).await.unwrap();
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
    });
    tiers
        .hub
        .publish(
            format!("cim.work.upload.{BUCKET}.hub.s3.bGF0ZXI"),
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
        None,
        "a newer item is not invalid\n{metrics}"
    );
}
