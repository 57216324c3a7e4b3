//! Time since last access on the real topology (issue 10 item 1): reads through `cim-gateway get`
//! are recorded (coalesced: at most one write per `[access] interval`), a `move` with `idle`
//! leaves an object read recently where it is while it moves one never read, and `explain`
//! names the last read.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use cim_tests::{cim_bin, Topology};
use common::{content, describe, gateway, put_hub, work_messages, Tiers};

/// Both objects are older than this when the object read is read; the pass runs well within it
/// after that read.
const IDLE_SECS: u64 = 20;
const BUCKET: &str = "idle-access";

fn storage(args: &[&str]) -> std::process::Output {
    Command::new(cim_bin("cim-storage"))
        .args(args)
        .output()
        .unwrap()
}

/// The access record's revision of `name`, if it has one.
async fn revision(tiers: &Tiers, name: &str) -> Option<u64> {
    let kv = tiers.hub.get_key_value("cim_access").await.unwrap();
    let key = cim_tiering::catalog::key(BUCKET, name);
    kv.entry(key).await.unwrap().map(|e| e.revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_with_idle_leaves_what_was_read_and_moves_what_was_not() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(&format!(
        r#"
[[policy]]
name = "cold"
buckets = ["{BUCKET}"]
from = "hub"
to = "s3"
action = "move"
after = "0s"
idle = "{IDLE_SECS}s"

[access]
interval = "1h"
"#
    ));
    let config = config.to_str().unwrap();
    let tiers = Tiers::connect(&topology).await;
    put_hub(&tiers, BUCKET, "read", &content(1, 3000)).await;
    put_hub(&tiers, BUCKET, "unread", &content(2, 3000)).await;
    // Both older than `idle`: the stored time is the server's, so wait out the whole span.
    tokio::time::sleep(Duration::from_secs(IDLE_SECS + 1)).await;

    // Two gets within the interval: one write of the access record.
    let out = topology.dir().join("read.out");
    let out = out.to_str().unwrap();
    let first = gateway(
        std::path::Path::new(config),
        &["get", "--bucket", BUCKET, "--name", "read", "-o", out],
    );
    assert!(first.status.success(), "{}", describe(&first));
    let read_at = Instant::now();
    let written = revision(&tiers, "read").await;
    assert!(written.is_some(), "no access record after a get");
    let second = gateway(
        std::path::Path::new(config),
        &["get", "--bucket", BUCKET, "--name", "read", "-o", out],
    );
    assert!(second.status.success(), "{}", describe(&second));
    assert_eq!(
        revision(&tiers, "read").await,
        written,
        "the second get within the interval wrote again"
    );
    assert_eq!(revision(&tiers, "unread").await, None);

    // One pass: the unread object is moved, the one just read is not.
    let once = storage(&["run", "--once", "--config", config]);
    assert!(once.status.success(), "{}", describe(&once));
    assert!(
        read_at.elapsed() < Duration::from_secs(IDLE_SECS),
        "the pass came too late after the read to tell anything"
    );
    let queued: BTreeSet<String> = work_messages(&tiers.hub)
        .await
        .into_iter()
        .map(|(_, item)| item["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        queued,
        BTreeSet::from(["unread".to_string()]),
        "{}",
        describe(&once)
    );

    // `explain` names the last read (and says when nothing was read).
    let explained = common::explain_json(std::path::Path::new(config), BUCKET, "read");
    let last_read = explained["last_read"].as_str().unwrap();
    assert!(last_read.starts_with("20"), "{explained:#}");
    assert!(explained["last_read_secs"].as_u64().unwrap() < IDLE_SECS);
    assert_eq!(
        explained["policies"][0]["outcome"], "no-match",
        "{explained:#}"
    );
    assert!(
        explained["policies"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("idle"),
        "{explained:#}"
    );
    let text = storage(&[
        "explain", "--config", config, "--bucket", BUCKET, "--name", "read",
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("last read {last_read}")), "{text}");
    let never = storage(&[
        "explain", "--config", config, "--bucket", BUCKET, "--name", "unread",
    ]);
    let never = String::from_utf8_lossy(&never.stdout);
    assert!(never.contains("never read"), "{never}");
}
