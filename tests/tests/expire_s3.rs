//! `expire` on S3 tiers (issue 10 item 1): the upload role writes a tombstone on the S3 tier,
//! for `from = "<s3 tier>"` and for `from = "*"` when only S3 holds the object (moved off the
//! hub), so `list` hides it, restore reports it deleted, and the blob stays for `gc`; a
//! version written after the decision is never expired, and an expired version is never
//! uploaded again.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use cim_tests::{cim_bin, wait_until, Topology};
use common::{
    content, current_manifest, describe, gateway, is_tombstone, listed, put_hub, s3_has, sample,
    scrape, spawn_role, wait_only_in_s3, work_messages, Roles, Tiers,
};

const MOVE: &str = r#"
[[policy]]
name = "tier-down"
buckets = ["exps3-one", "exps3-all"]
from = "hub"
to = "s3"
action = "move"
after = "0s"
"#;

const RETENTION: &str = r#"
[[policy]]
name = "s3-retention"
buckets = ["exps3-one"]
from = "s3"
action = "expire"
after = "1s"
force = true

[[policy]]
name = "everywhere"
buckets = ["exps3-all"]
prefix = "old/"
from = "*"
action = "expire"
after = "1s"
force = true
"#;

fn storage(args: &[&str]) -> std::process::Output {
    Command::new(cim_bin("cim-storage"))
        .args(args)
        .output()
        .unwrap()
}

/// The `(policy, from, to, name)` of every `expire` row `plan --json` lists.
fn planned_expires(config: &str) -> BTreeSet<(String, String, String, String)> {
    let planned = storage(&["plan", "--json", "--config", config]);
    assert!(planned.status.success(), "{}", describe(&planned));
    let rows: serde_json::Value = serde_json::from_slice(&planned.stdout).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "expire")
        .map(|r| {
            let f = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (f("policy"), f("from"), f("to"), f("name"))
        })
        .collect()
}

/// Objects moved to S3 first (only S3 holds them), then two retentions: `from = "s3"` and
/// `from = "*"` (of `old/`). `plan` lists both; the upload role writes a tombstone for each,
/// counted and logged; `list` hides them, restore reports them deleted, and their blobs stay
/// (removing them is `gc`'s job, after the retention). `new/k` is not due and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expire_from_s3_and_from_every_tier_tombstones_objects_only_s3_holds() {
    let topology = Topology::start().await.unwrap();
    let tiers = Tiers::connect(&topology).await;
    put_hub(&tiers, "exps3-one", "m1", &content(11, 3000)).await;
    put_hub(&tiers, "exps3-all", "old/a1", &content(12, 4000)).await;
    put_hub(&tiers, "exps3-all", "new/k", &content(13, 5000)).await;

    let moved = topology.write_config(MOVE);
    let mut roles = Roles::start(&topology, &moved);
    let timeout = Duration::from_secs(120);
    wait_only_in_s3(&tiers, &roles, "exps3-one", &["m1"], timeout).await;
    wait_only_in_s3(&tiers, &roles, "exps3-all", &["old/a1", "new/k"], timeout).await;
    roles.stop();
    let mut blobs = Vec::new();
    for (bucket, name) in [("exps3-one", "m1"), ("exps3-all", "old/a1")] {
        let manifest = current_manifest(&topology, bucket, name).await.unwrap();
        blobs.push(manifest["blob_key"].as_str().unwrap().to_string());
    }

    let config = topology.write_config(&format!("{MOVE}\n{RETENTION}"));
    let config_path = config.to_str().unwrap();
    // Older than the 1 s retention, counted from the S3 copy's verification.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let expected: BTreeSet<(String, String, String, String)> = [
        ("s3-retention", "s3", "", "m1"),
        ("everywhere", "s3", "*", "old/a1"),
    ]
    .map(|(p, f, t, n)| (p.into(), f.into(), t.into(), n.into()))
    .into();
    assert_eq!(planned_expires(config_path), expected);

    let mut roles = Roles::start(&topology, &config);
    let expired = wait_until("both tombstones written", timeout, || async {
        is_tombstone(&current_manifest(&topology, "exps3-one", "m1").await)
            && is_tombstone(&current_manifest(&topology, "exps3-all", "old/a1").await)
    })
    .await;
    expired.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    let metrics = scrape(roles.upload_metrics).await;
    assert_eq!(
        sample(&metrics, "cim_expired_total", &[("tier", "s3")]),
        Some(2.0),
        "{metrics}"
    );
    let log = roles.upload.log();
    assert!(
        log.contains("expired") && log.contains("m1") && log.contains("old/a1"),
        "no log line names the expired objects\n{}",
        roles.logs()
    );
    roles.stop();
    // The catalog records the deletes (no location left), `new/k` untouched.
    assert_eq!(
        tiers.catalog_locations("exps3-one").await.get("m1"),
        Some(&Vec::new())
    );
    assert_eq!(
        tiers.catalog_locations("exps3-all").await.get("new/k"),
        Some(&vec!["s3".to_string()])
    );

    for bucket in ["exps3-one", "exps3-all"] {
        let out = gateway(&config, &["list", "--bucket", bucket, "--json"]);
        assert!(out.status.success(), "{}", describe(&out));
        let names: Vec<String> = listed(&out).into_iter().map(|(_, n, _)| n).collect();
        let left: Vec<String> = if bucket == "exps3-all" {
            vec!["new/k".into()]
        } else {
            vec![]
        };
        assert_eq!(names, left, "{}", describe(&out));
    }
    for (bucket, name) in [("exps3-one", "m1"), ("exps3-all", "old/a1")] {
        let out = gateway(&config, &["restore", "--bucket", bucket, "--all"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("deleted") && l.contains(&format!("{bucket}/{name}"))),
            "restore does not report {bucket}/{name} as deleted\n{}",
            describe(&out)
        );
        assert!(
            Tiers::names(&tiers.hub_tier, bucket)
                .await
                .iter()
                .all(|n| n != name),
            "restore brought {bucket}/{name} back\n{}",
            describe(&out)
        );
    }
    for blob in blobs {
        assert!(s3_has(&topology, &blob).await, "blob {blob} removed early");
    }
}

/// Both objects backed up (the hub keeps them: `copy`), then a pass decides to expire both
/// from S3 (queued, no upload role running); one is then written again on the hub. The upload
/// role tombstones the untouched one and leaves the other, whose newer version is younger
/// than the decision; the next pass uploads nothing of the expired version, though the hub
/// still holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_written_after_an_s3_expire_was_decided_is_never_expired() {
    let topology = Topology::start().await.unwrap();
    let tiers = Tiers::connect(&topology).await;
    const COPY: &str = r#"
[[policy]]
name = "backup"
buckets = ["exps3-new"]
from = "hub"
to = "s3"
action = "copy"
after = "0s"
"#;
    put_hub(&tiers, "exps3-new", "rewritten", &content(14, 2000)).await;
    put_hub(&tiers, "exps3-new", "untouched", &content(15, 2000)).await;
    let backup = topology.write_config(COPY);
    let mut roles = Roles::start(&topology, &backup);
    let copied = wait_until("backed up to s3", Duration::from_secs(120), || async {
        let at = tiers.catalog_locations("exps3-new").await;
        ["rewritten", "untouched"]
            .iter()
            .all(|n| at.get(*n).is_some_and(|l| l.contains(&"s3".to_string())))
    })
    .await;
    copied.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    roles.stop();

    let config = topology.write_config(&format!(
        "{COPY}\n{}",
        r#"
[[policy]]
name = "short"
buckets = ["exps3-new"]
from = "s3"
action = "expire"
after = "2s"
force = true
"#
    ));
    let config_path = config.to_str().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let once = storage(&["run", "--once", "--config", config_path]);
    assert!(once.status.success(), "{}", describe(&once));
    let queued = |kind: &'static str| {
        let hub = tiers.hub.clone();
        async move {
            work_messages(&hub)
                .await
                .into_iter()
                .filter(|(_, item)| item["kind"] == kind)
                .map(|(_, item)| item["name"].as_str().unwrap().to_string())
                .collect::<BTreeSet<String>>()
        }
    };
    assert_eq!(
        queued("s3_expire").await,
        ["rewritten", "untouched"].map(String::from).into(),
        "{}",
        describe(&once)
    );

    // Written again after the decision: a newer version, young, not yet uploaded.
    let newer = content(16, 2500);
    put_hub(&tiers, "exps3-new", "rewritten", &newer).await;

    let upload = spawn_role(
        "cim-gateway",
        "upload",
        &config,
        cim_tests::free_port(),
        &topology.dir().join("upload-expire.log"),
    );
    upload
        .wait_for_log(
            "written again since the expire was decided",
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", upload.log()));
    let gone = wait_until("untouched expired", Duration::from_secs(60), || async {
        is_tombstone(&current_manifest(&topology, "exps3-new", "untouched").await)
    })
    .await;
    gone.unwrap_or_else(|e| panic!("{e:#}\n{}", upload.log()));
    drop(upload);
    let rewritten = current_manifest(&topology, "exps3-new", "rewritten").await;
    assert!(
        rewritten.is_some() && !is_tombstone(&rewritten),
        "{rewritten:#?}"
    );
    let (data, _) = Tiers::read(&tiers.hub, "exps3-new", "rewritten").await;
    assert!(data == newer, "the newer version was not kept");

    // The hub still holds the expired version; no pass uploads it again (asked of `plan`: a
    // queuing pass would have its item dropped as a duplicate of the backup's, within the
    // work stream's duplicate window).
    let planned = storage(&["plan", "--json", "--config", config_path]);
    assert!(planned.status.success(), "{}", describe(&planned));
    let rows: serde_json::Value = serde_json::from_slice(&planned.stdout).unwrap();
    let copies: BTreeSet<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "copy")
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        copies,
        ["rewritten"].map(String::from).into(),
        "{}",
        describe(&planned)
    );
}
