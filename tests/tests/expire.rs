//! `expire` carried out (issue 10 item 1): from one JetStream tier only that tier's copy goes;
//! from every tier (`"*"`) the object is deleted as a user deletes it, so S3 shows a tombstone,
//! `list` no longer shows it and restore reports it deleted; a version written after the
//! decision is never deleted.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use cim_tests::{cim_bin, wait_until, Topology};
use common::{
    content, current_manifest, describe, gateway, is_tombstone, listed, put_hub, sample, scrape,
    spawn_role, work_messages, Roles, Tiers,
};

const BACKUP: &str = r#"
[[policy]]
name = "backup"
buckets = ["exp-hub", "exp-all"]
from = "hub"
to = "s3"
action = "copy"
after = "0s"
"#;

const RETENTION: &str = r#"
[[policy]]
name = "hub-retention"
buckets = ["exp-hub"]
from = "hub"
action = "expire"
after = "0s"

[[policy]]
name = "retention"
buckets = ["exp-all"]
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

/// Objects backed up to S3 first (so the test does not race the copy), then a configuration
/// with two retentions: `expire from = "hub"` drops only the hub copy (S3 keeps it, not a
/// tombstone; the catalog places it in S3 only); `expire from = "*"` of `old/` deletes as a
/// user would — a delete marker on the hub, a tombstone in S3, gone from `list`, reported
/// deleted by restore — and leaves `new/` alone. `plan` lists both before the roles act.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expire_from_one_tier_drops_that_copy_and_from_all_deletes_like_a_user() {
    let topology = Topology::start().await.unwrap();
    let tiers = Tiers::connect(&topology).await;
    put_hub(&tiers, "exp-hub", "h1", &content(1, 3000)).await;
    put_hub(&tiers, "exp-all", "old/a1", &content(2, 4000)).await;
    put_hub(&tiers, "exp-all", "new/k", &content(3, 5000)).await;
    let objects = [
        ("exp-hub", "h1"),
        ("exp-all", "old/a1"),
        ("exp-all", "new/k"),
    ];

    let backup = topology.write_config(BACKUP);
    let mut roles = Roles::start(&topology, &backup);
    let copied = wait_until("backed up to s3", Duration::from_secs(120), || async {
        let mut all = true;
        for (bucket, name) in objects {
            let at = tiers.catalog_locations(bucket).await;
            all &= at.get(name).is_some_and(|l| l.contains(&"s3".to_string()));
        }
        all
    })
    .await;
    copied.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    roles.stop();

    let config = topology.write_config(&format!("{BACKUP}\n{RETENTION}"));
    let config_path = config.to_str().unwrap();
    // Old enough for the 1 s retention.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let planned = storage(&["plan", "--json", "--config", config_path]);
    assert!(planned.status.success(), "{}", describe(&planned));
    let rows: serde_json::Value = serde_json::from_slice(&planned.stdout).unwrap();
    let expires: BTreeSet<(String, String, String, String)> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "expire")
        .map(|r| {
            let f = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (f("policy"), f("from"), f("to"), f("name"))
        })
        .collect();
    let expected: BTreeSet<(String, String, String, String)> = [
        ("hub-retention", "hub", "", "h1"),
        ("retention", "hub", "*", "old/a1"),
    ]
    .map(|(p, f, t, n)| (p.into(), f.into(), t.into(), n.into()))
    .into();
    assert_eq!(expires, expected, "{}", describe(&planned));

    let mut roles = Roles::start(&topology, &config);
    let expired = wait_until(
        "both retentions carried out",
        Duration::from_secs(120),
        || async {
            let hub_gone = Tiers::names(&tiers.hub_tier, "exp-hub").await.is_empty();
            let tombstone = is_tombstone(&current_manifest(&topology, "exp-all", "old/a1").await);
            hub_gone && tombstone
        },
    )
    .await;
    if let Err(e) = expired {
        panic!(
            "{e:#}\nexp-hub on hub: {:?}\nmanifest old/a1: {:#?}\n{}",
            Tiers::names(&tiers.hub_tier, "exp-hub").await,
            current_manifest(&topology, "exp-all", "old/a1").await,
            roles.logs()
        );
    }
    // From the hub only: S3 keeps it, live, and the catalog places it there only.
    let h1 = current_manifest(&topology, "exp-hub", "h1").await;
    assert!(h1.is_some() && !is_tombstone(&h1), "{h1:#?}");
    let at = tiers.catalog_locations("exp-hub").await;
    assert_eq!(at.get("h1"), Some(&vec!["s3".to_string()]), "{at:?}");
    // From every tier: a delete marker on the hub (a user delete there), the rest untouched.
    let hub = tiers.hub_tier.latest("exp-all", "old/a1").await.unwrap();
    assert!(
        hub.is_some_and(|v| v.info.deleted),
        "no delete marker on the hub"
    );
    assert_eq!(
        Tiers::names(&tiers.hub_tier, "exp-all").await,
        vec!["new/k".to_string()]
    );
    let metrics = scrape(roles.mirror_metrics).await;
    assert_eq!(
        sample(&metrics, "cim_expired_total", &[("tier", "hub")]),
        Some(2.0),
        "{metrics}"
    );
    assert!(
        roles.mirror.log().contains("old/a1") && roles.mirror.log().contains("expired"),
        "no log line names the expired object\n{}",
        roles.logs()
    );
    roles.stop();

    // `list` no longer shows it; restore reports it deleted and brings nothing back.
    let out = gateway(&config, &["list", "--bucket", "exp-all", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let names: Vec<String> = listed(&out).into_iter().map(|(_, n, _)| n).collect();
    assert_eq!(names, vec!["new/k".to_string()], "{}", describe(&out));
    let out = gateway(&config, &["restore", "--bucket", "exp-all", "--all"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("deleted") && l.contains("exp-all/old/a1")),
        "restore does not report old/a1 as deleted\n{}",
        describe(&out)
    );
    assert_eq!(
        Tiers::names(&tiers.hub_tier, "exp-all").await,
        vec!["new/k".to_string()],
        "restore brought an expired object back\n{}",
        describe(&out)
    );
}

/// A pass decides to expire two objects (queued, no mirror running); one is then written
/// again. The mirror role deletes the untouched one and keeps the newer version of the other:
/// the handler re-checks the version (sequence and nuid) it was asked to delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_version_written_after_the_decision_is_never_expired() {
    let topology = Topology::start().await.unwrap();
    let tiers = Tiers::connect(&topology).await;
    let config = topology.write_config(
        r#"
[[policy]]
name = "short"
buckets = ["exp-new"]
from = "hub"
action = "expire"
after = "2s"
"#,
    );
    let config_path = config.to_str().unwrap();
    put_hub(&tiers, "exp-new", "rewritten", &content(4, 2000)).await;
    put_hub(&tiers, "exp-new", "untouched", &content(5, 2000)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let once = storage(&["run", "--once", "--config", config_path]);
    assert!(once.status.success(), "{}", describe(&once));
    let queued: BTreeSet<String> = work_messages(&tiers.hub)
        .await
        .into_iter()
        .filter(|(_, item)| item["kind"] == "expire")
        .map(|(_, item)| item["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        queued,
        ["rewritten", "untouched"].map(String::from).into(),
        "{}",
        describe(&once)
    );

    // Written again after the decision: a newer version, young, not due.
    let newer = content(6, 2500);
    put_hub(&tiers, "exp-new", "rewritten", &newer).await;

    let dir = topology.dir().to_path_buf();
    let mirror = spawn_role(
        "cim-storage",
        "mirror",
        &config,
        cim_tests::free_port(),
        &dir.join("mirror-expire.log"),
    );
    mirror
        .wait_for_log(
            "written again since the expire was decided",
            Duration::from_secs(60),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", mirror.log()));
    let gone = wait_until("untouched expired", Duration::from_secs(60), || async {
        tiers
            .hub_tier
            .latest("exp-new", "untouched")
            .await
            .unwrap()
            .is_none()
    })
    .await;
    gone.unwrap_or_else(|e| panic!("{e:#}\n{}", mirror.log()));
    let (data, _) = Tiers::read(&tiers.hub, "exp-new", "rewritten").await;
    assert!(data == newer, "the newer version was not kept");
}

/// From every tier, an object written on the leaf: the leaf's delete marker (published with
/// `Nats-Expected-Last-Subject-Sequence`) is sourced to the cluster like a user's delete, and
/// sourcing goes on afterwards — the header does not make the cluster refuse the sourced copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expire_from_every_tier_on_the_leaf_reaches_the_cluster_and_sourcing_goes_on() {
    let topology = Topology::start().await.unwrap();
    let tiers = Tiers::connect(&topology).await;
    let config = topology.write_config(
        r#"
[[policy]]
name = "edge"
buckets = ["exp-leaf"]
from = "leaf"
to = "hub"
action = "copy"
after = "0s"

[[policy]]
name = "gone"
buckets = ["exp-leaf"]
prefix = "old/"
from = "*"
action = "expire"
after = "3s"
force = true
"#,
    );
    tiers.put_leaf("exp-leaf", "old/x", &content(7, 3000)).await;
    let mut roles = Roles::start(&topology, &config);
    let deleted = wait_until(
        "delete markers on the leaf and the cluster",
        Duration::from_secs(90),
        || async {
            let mut both = true;
            for tier in [&tiers.leaf_tier, &tiers.hub_tier] {
                let latest = tier.latest("exp-leaf", "old/x").await.ok().flatten();
                both &= latest.is_some_and(|v| v.info.deleted);
            }
            both
        },
    )
    .await;
    deleted.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    // Sourcing goes on: had the cluster kept the leaf marker's expected-sequence header (a leaf
    // sequence, checked against the cluster's), it would refuse the sourced marker and stall.
    tiers.put_leaf("exp-leaf", "new/y", &content(8, 3000)).await;
    let sourced = wait_until(
        "new/y sourced to the hub",
        Duration::from_secs(60),
        || async { Tiers::names(&tiers.hub_tier, "exp-leaf").await == vec!["new/y".to_string()] },
    )
    .await;
    sourced.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    roles.stop();
}
