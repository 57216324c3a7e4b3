//! `cim-gateway reconcile` on the real topology (issue 10 item 8): a catalog deleted and rebuilt
//! from the tiers and the S3 manifests; a location removed behind the catalog's back dropped; a
//! dry run that writes nothing; a disagreement reported with exit status 1.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cim_tests::{cim_bin, wait_until, Topology};
use common::{content, describe, gateway, plant, put_hub, wait_only_in_s3, Roles, Tiers};

/// Leaf objects copied to the hub and backed up to S3 (held by all three tiers); hub objects
/// moved to S3.
const POLICIES: &str = r#"
[[policy]]
name = "edge-copy"
buckets = ["rc-edge"]
from = "leaf"
to = "hub"
action = "copy"
after = "0s"

[[policy]]
name = "edge-backup"
buckets = ["rc-edge"]
from = "hub"
to = "s3"
action = "copy"
after = "0s"

[[policy]]
name = "archive"
buckets = ["rc-arch"]
from = "hub"
to = "s3"
action = "move"
after = "0s"
"#;

fn storage(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(cim_bin("cim-storage"))
        .args(args)
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(out)))
}

/// (bucket, name) → what the catalog says that matters: sequence, digest, deleted, and each
/// location with its locator (not when it was verified).
async fn catalog_state(tiers: &Tiers, buckets: &[&str]) -> BTreeMap<(String, String), String> {
    tiers
        .catalog
        .entries()
        .await
        .unwrap()
        .into_iter()
        .filter(|e| buckets.contains(&e.bucket.as_str()))
        .map(|e| {
            let locations: Vec<(String, Option<String>)> = e
                .locations
                .into_iter()
                .map(|(t, l)| (t, l.locator))
                .collect();
            let deleted = e.deleted.map(|d| d.reached);
            (
                (e.bucket, e.name),
                format!(
                    "seq {} {} {} deleted {deleted:?} at {locations:?}",
                    e.seq, e.size, e.digest
                ),
            )
        })
        .collect()
}

/// (tier, found, action) of every finding of `name`.
fn findings(report: &serde_json::Value, name: &str) -> Vec<(String, String, String)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["name"] == name)
        .map(|f| {
            let s = |k: &str| f[k].as_str().unwrap().to_string();
            (s("tier"), s("what"), s("action"))
        })
        .collect()
}

fn triple(tier: &str, what: &str, action: &str) -> (String, String, String) {
    (tier.into(), what.into(), action.into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_catalog_is_rebuilt_and_the_manager_queues_nothing_new() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(POLICIES);
    let tiers = Tiers::connect(&topology).await;
    let mut roles = Roles::start(&topology, &config);
    for (i, name) in ["e1", "e2"].iter().enumerate() {
        tiers
            .put_leaf("rc-edge", name, &content(i as u64, 3000))
            .await;
    }
    for (i, name) in ["a1", "a2", "gone"].iter().enumerate() {
        put_hub(&tiers, "rc-arch", name, &content(10 + i as u64, 3000)).await;
    }
    // The catalog records the cluster and the S3 copies; the leaf keeps its own (a `copy`).
    let recorded = vec!["hub".to_string(), "s3".into()];
    let settled = wait_until("rc-edge on every tier", Duration::from_secs(90), || async {
        let catalog = tiers.catalog_locations("rc-edge").await;
        ["e1", "e2"]
            .iter()
            .all(|n| catalog.get(*n) == Some(&recorded))
            && Tiers::names(&tiers.leaf_tier, "rc-edge").await.len() == 2
    })
    .await;
    if let Err(e) = settled {
        panic!(
            "{e:#}\ncatalog {:?}\nleaf {:?}\n{}",
            tiers.catalog_locations("rc-edge").await,
            Tiers::names(&tiers.leaf_tier, "rc-edge").await,
            roles.logs()
        );
    }
    wait_only_in_s3(
        &tiers,
        &roles,
        "rc-arch",
        &["a1", "a2", "gone"],
        Duration::from_secs(90),
    )
    .await;
    let deleted = gateway(
        &config,
        &["delete", "--bucket", "rc-arch", "--name", "gone"],
    );
    assert!(deleted.status.success(), "{}", describe(&deleted));
    roles.stop();

    let buckets = ["rc-edge", "rc-arch"];
    let before = catalog_state(&tiers, &buckets).await;
    assert_eq!(before.len(), 5, "{before:#?}");
    let plan_before = json(&storage(&config, &["plan", "--json"]));
    let explain = |name: &'static str| {
        let out = storage(
            &config,
            &["explain", "--json", "--bucket", "rc-edge", "--name", name],
        );
        let mut e = json(&out);
        // A copy's age moves with the clock (0 s before, 1 s after, seen in CI): not what the
        // rebuild is compared on.
        for copy in e["copies"].as_array_mut().into_iter().flatten() {
            copy.as_object_mut().unwrap().remove("age_secs");
        }
        (
            e["copies"].clone(),
            e["catalog"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>(),
        )
    };
    let explain_before = explain("e1");
    let list_before = gateway(&config, &["list", "--json", "--include-deleted"]);

    // The catalog is lost.
    tiers.hub.delete_key_value("cim_catalog").await.unwrap();
    let out = gateway(&config, &["reconcile", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let report = json(&out);
    assert_eq!(report["objects"], 5, "{report:#}");
    assert_eq!(
        findings(&report, "e1"),
        [
            triple("hub", "not-recorded", "added"),
            triple("s3", "not-recorded", "added"),
        ],
        "{report:#}"
    );
    assert_eq!(
        findings(&report, "a1"),
        [triple("s3", "not-recorded", "added")]
    );
    assert_eq!(
        findings(&report, "gone"),
        [triple("s3", "tombstone", "carried")]
    );

    // The same catalog as before; `explain`, `list` and the manager's plan agree with it: a
    // pass queues nothing new (no upload again) and loses nothing.
    assert_eq!(catalog_state(&tiers, &buckets).await, before);
    assert_eq!(explain("e1"), explain_before);
    assert_eq!(
        json(&storage(&config, &["plan", "--json"])),
        plan_before,
        "the plan changed"
    );
    assert!(
        !plan_before.to_string().contains("edge-backup")
            && !plan_before.to_string().contains("archive"),
        "{plan_before:#}"
    );
    let list_after = gateway(&config, &["list", "--json", "--include-deleted"]);
    assert_eq!(json(&list_after)["objects"], json(&list_before)["objects"]);

    // Once repaired, there is nothing left to find.
    let again = gateway(&config, &["reconcile"]);
    assert_eq!(again.status.code(), Some(0), "{}", describe(&again));
    let text = String::from_utf8_lossy(&again.stdout);
    assert!(
        text.starts_with("5 objects in 2 buckets: 0 findings"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_drops_what_went_away_reports_disagreements_and_dry_runs_write_nothing() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(common::HUB_TO_S3);
    let tiers = Tiers::connect(&topology).await;
    let data = content(1, 5000);
    put_hub(&tiers, "rc-fix", "kept", &data).await;
    put_hub(&tiers, "rc-twin", "twin", &content(2, 5000)).await;
    let seq = |name: &'static str, bucket: &'static str| {
        let tiers = &tiers;
        async move {
            tiers
                .hub_tier
                .latest(bucket, name)
                .await
                .unwrap()
                .unwrap()
                .seq
        }
    };
    // S3 holds "kept" as an upload would have left it; "twin" with other content under the
    // same version (sequence) as the hub's: a disagreement.
    let kept_seq = seq("kept", "rc-fix").await;
    let manifest_key = plant(&topology, "rc-fix", "kept", &data, |m| {
        m["format"] = 2.into();
        m["source_seq"] = kept_seq.into();
    })
    .await;
    let twin_seq = seq("twin", "rc-twin").await;
    plant(&topology, "rc-twin", "twin", &content(3, 5000), |m| {
        m["format"] = 2.into();
        m["source_seq"] = twin_seq.into();
    })
    .await;
    let buckets = ["rc-fix", "rc-twin"];

    // A dry run decides, reports and writes nothing.
    let dry = gateway(&config, &["reconcile", "--dry-run", "--json"]);
    assert_eq!(dry.status.code(), Some(1), "{}", describe(&dry));
    let report = json(&dry);
    assert_eq!(
        findings(&report, "kept"),
        [
            triple("hub", "not-recorded", "would-add"),
            triple("s3", "not-recorded", "would-add")
        ],
        "{report:#}"
    );
    assert_eq!(
        findings(&report, "twin"),
        [triple("hub,s3", "disagree", "none")],
        "{report:#}"
    );
    assert!(catalog_state(&tiers, &buckets).await.is_empty());

    let out = gateway(&config, &["reconcile", "--json", "--verify"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the disagreement stays: {}",
        describe(&out)
    );
    let report = json(&out);
    assert_eq!(
        findings(&report, "kept"),
        [
            triple("hub", "not-recorded", "added"),
            triple("s3", "not-recorded", "added")
        ],
        "{report:#}"
    );
    assert_eq!(
        tiers.catalog_locations("rc-fix").await["kept"],
        ["hub", "s3"]
    );
    assert!(
        tiers
            .catalog
            .get("rc-twin", "twin")
            .await
            .unwrap()
            .is_none(),
        "not decided"
    );
    let table = gateway(&config, &["reconcile", "--bucket", "rc-twin"]);
    assert_eq!(table.status.code(), Some(1));
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.trim_start().starts_with("BUCKET") && text.contains("disagree"),
        "{text}"
    );

    // The S3 copy is removed behind the catalog's back: a dry run only says so; a run drops
    // the location, and the manager would upload it again.
    let s3 = topology.s3.client().await;
    s3.delete_object()
        .bucket(&topology.s3.bucket)
        .key(&manifest_key)
        .send()
        .await
        .unwrap();
    let before = catalog_state(&tiers, &buckets).await;
    let dry = gateway(
        &config,
        &["reconcile", "--dry-run", "--json", "--bucket", "rc-fix"],
    );
    assert_eq!(dry.status.code(), Some(0), "{}", describe(&dry));
    assert_eq!(
        findings(&json(&dry), "kept"),
        [triple("s3", "not-held", "would-drop")]
    );
    assert_eq!(
        catalog_state(&tiers, &buckets).await,
        before,
        "a dry run wrote"
    );
    let fixed = gateway(&config, &["reconcile", "--json", "--bucket", "rc-fix"]);
    assert_eq!(fixed.status.code(), Some(0), "{}", describe(&fixed));
    assert_eq!(
        findings(&json(&fixed), "kept"),
        [triple("s3", "not-held", "dropped")]
    );
    assert_eq!(tiers.catalog_locations("rc-fix").await["kept"], ["hub"]);
    let plan = json(&storage(&config, &["plan", "--json"]));
    assert!(plan.to_string().contains("\"kept\""), "{plan:#}");

    // Bad arguments.
    let bad = gateway(&config, &["reconcile", "--no-such-flag"]);
    assert_eq!(bad.status.code(), Some(2), "{}", describe(&bad));
}
