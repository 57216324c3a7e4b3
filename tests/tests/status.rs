//! `cim-storage status` on real servers: what the running roles, the manager's last pass and
//! the heartbeats say, read from NATS alone with a configuration on "another host" (a copy in
//! another directory; nothing of the roles' own processes or files is used).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cim_tests::{cim_bin, wait_until, Topology};
use cim_tiering::digest::Sha256Digest;
use common::{content, describe, put_hub, rewrite_meta, Roles, Tiers};
use serde_json::Value;

const HUB_TO_S3: &str = r#"
[[policy]]
name = "cluster-to-s3"
buckets = ["st-*"]
from = "hub"
to = "s3"
action = "move"
after = "0s"
"#;

const WAIT: Duration = Duration::from_secs(60);

fn status(config: &Path, json: bool) -> std::process::Output {
    let mut command = std::process::Command::new(cim_bin("cim-storage"));
    command.args(["status", "--config", config.to_str().unwrap()]);
    if json {
        command.arg("--json");
    }
    command.output().unwrap()
}

fn status_json(config: &Path) -> Value {
    let out = status(config, true);
    assert!(out.status.success(), "{}", describe(&out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}\n{}", describe(&out)))
}

/// The manager summary's `held` row of `tier`/`bucket`: (objects, bytes).
fn held(report: &Value, tier: &str, bucket: &str) -> Option<(u64, u64)> {
    report["manager"]["held"]
        .as_array()?
        .iter()
        .find(|h| h["tier"] == tier && h["bucket"] == bucket)
        .map(|h| (h["objects"].as_u64().unwrap(), h["bytes"].as_u64().unwrap()))
}

/// The backlog row of `policy`: (objects, bytes, oldest due seconds).
fn backlog(report: &Value, policy: &str) -> Option<(u64, u64, u64)> {
    report["manager"]["backlog"]
        .as_array()?
        .iter()
        .find(|b| b["policy"] == policy)
        .map(|b| {
            (
                b["objects"].as_u64().unwrap(),
                b["bytes"].as_u64().unwrap(),
                b["oldest_due_seconds"].as_u64().unwrap(),
            )
        })
}

fn roles_running(report: &Value) -> Vec<String> {
    let mut roles: Vec<String> = report["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["role"].as_str().unwrap().to_string())
        .collect();
    roles.sort();
    roles
}

/// Waits until `status --json` satisfies `check`, failing with the last report and the logs.
async fn wait_status(what: &str, config: &Path, roles: &Roles, check: impl Fn(&Value) -> bool) {
    let last = std::sync::Mutex::new(Value::Null);
    let result = wait_until(what, WAIT, || async {
        let report = status_json(config);
        let ok = check(&report);
        *last.lock().unwrap() = report;
        ok
    })
    .await;
    if let Err(e) = result {
        panic!(
            "{e:#}\nlast status: {:#}\n{}",
            last.lock().unwrap(),
            roles.logs()
        );
    }
}

/// A copy of `config` in a directory of its own: the operator's host.
fn elsewhere(topology: &Topology, config: &Path) -> PathBuf {
    let dir = topology.dir().join("operator-host");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cim.toml");
    std::fs::copy(config, &path).unwrap();
    path
}

#[tokio::test]
async fn status_shows_roles_tiers_backlog_and_failures_from_any_host() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(HUB_TO_S3);
    let operator = elsewhere(&topology, &config);

    // Nothing ran yet: nothing to show, and that is not an error.
    let report = status_json(&operator);
    assert_eq!(report["roles"], Value::Array(vec![]), "{report:#}");
    assert_eq!(report["manager"], Value::Null, "{report:#}");
    let out = status(&operator, false);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no manager is running"), "{text}");

    // Objects moved to S3: the tiers per bucket, every role running, nothing due.
    let mut roles = Roles::start(&topology, &config);
    let tiers = Tiers::connect(&topology).await;
    let sizes = [10_000usize, 20_000, 30_000];
    for (i, size) in sizes.iter().enumerate() {
        put_hub(
            &tiers,
            "st-done",
            &format!("o{i}"),
            &content(i as u64, *size),
        )
        .await;
    }
    common::wait_only_in_s3(&tiers, &roles, "st-done", &["o0", "o1", "o2"], WAIT).await;
    let total: u64 = sizes.iter().map(|s| *s as u64).sum();
    wait_status(
        "s3 holding st-done, every role up",
        &operator,
        &roles,
        |r| {
            held(r, "s3", "st-done") == Some((3, total))
                && held(r, "hub", "st-done") == Some((0, 0))
                && backlog(r, "cluster-to-s3").is_some_and(|b| b.0 == 0)
                && roles_running(r) == ["manager", "mirror", "upload"]
        },
    )
    .await;

    // The uploader stops: what arrives waits, and the backlog says how much.
    roles
        .upload
        .sigterm_and_wait(Duration::from_secs(10))
        .unwrap();
    put_hub(&tiers, "st-wait", "a", &content(10, 5_000)).await;
    put_hub(&tiers, "st-wait", "b", &content(11, 7_000)).await;
    wait_status("a backlog of two objects", &operator, &roles, |r| {
        backlog(r, "cluster-to-s3").is_some_and(|b| b.0 == 2 && b.1 == 12_000)
            && held(r, "hub", "st-wait") == Some((2, 12_000))
            && roles_running(r) == ["manager", "mirror"]
    })
    .await;
    let out = status(&operator, false);
    assert!(out.status.success(), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for expected in [
        "POLICY",
        "cluster-to-s3",
        "st-wait",
        "OLDEST DUE",
        "11.7 KiB",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }

    // It comes back and drains the backlog; an object whose digest lies is a recent failure,
    // named.
    roles.restart_upload();
    common::wait_only_in_s3(&tiers, &roles, "st-wait", &["a", "b"], WAIT).await;
    put_hub(&tiers, "st-bad", "liar", &content(12, 9_000)).await;
    let claimed = Sha256Digest::of(&content(13, 9_000));
    rewrite_meta(&tiers.hub, "st-bad", "liar", |m| {
        m["digest"] = Value::String(claimed.to_nats())
    })
    .await;
    wait_status(
        "the lying object as the uploader's failure",
        &operator,
        &roles,
        |r| {
            r["roles"].as_array().unwrap().iter().any(|role| {
                role["role"] == "upload"
                    && role["recent_errors"].as_array().is_some_and(|errors| {
                        errors
                            .iter()
                            .any(|e| e["reason"].as_str().unwrap().contains("st-bad/liar"))
                    })
            }) && backlog(r, "cluster-to-s3").is_some_and(|b| b.0 <= 1)
                && held(r, "s3", "st-wait") == Some((2, 12_000))
        },
    )
    .await;
    let out = status(&operator, false);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Recent failures"), "{text}");
    assert!(text.contains("st-bad/liar"), "{text}");
    roles.stop();
}
