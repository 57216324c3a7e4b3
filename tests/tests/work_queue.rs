//! The work queue on real servers: bounded however long items wait, versioned items, no item
//! held forever, prompt shutdown.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, object_store, stream};
use cim_tests::{wait_until, RoleProcess, Topology};
use common::{content, sample, spawn_role};

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
