//! Issue 5 item 4: deletes reach every tier, restore never resurrects, and blobs nothing
//! references any more are collected after the retention — never one that another object or a
//! live upload still uses.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cim_gateway::format;
use cim_gateway::upload::blob_lease_key;
use cim_tests::{wait_until, Topology};
use cim_tiering::digest::Sha256Digest;
use cim_tiering::lease::Leases;
use common::{content, current_manifest, describe, gateway, is_tombstone, s3_has, Roles, Tiers};

const PREFIX: &str = "cim/";

/// Keys under `prefix` in the test's S3 bucket.
async fn s3_keys(topology: &Topology, prefix: &str) -> Vec<String> {
    let s3 = topology.s3.client().await;
    let listed = s3
        .list_objects_v2()
        .bucket(&topology.s3.bucket)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect()
}

/// A user delete on the leaf and one on the hub both reach S3 as tombstones and leave the
/// catalog; the hub drops the chunks a leaf delete left behind; `restore --all` brings neither
/// back, `--include-deleted` does; a new version written after a delete goes up again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn user_deletes_reach_s3_and_restore_never_resurrects() {
    const POLICIES: &str = r#"
[[policy]]
name = "docs-to-cluster"
buckets = ["docs"]
from = "leaf"
to = "hub"
action = "copy"
after = "0s"

[[policy]]
name = "docs-to-s3"
buckets = ["docs"]
from = "hub"
to = "s3"
action = "copy"
after = "0s"
"#;
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(POLICIES);
    let tiers = Tiers::connect(&topology).await;
    let (a, b, keep) = (content(1, 50_000), content(2, 60_000), content(3, 70_000));
    tiers.put_leaf("docs", "a", &a).await;
    tiers.put_leaf("docs", "b", &b).await;
    tiers.put_leaf("docs", "keep", &keep).await;
    let mut roles = Roles::start(&topology, &config);
    let uploaded = wait_until("all three in s3", Duration::from_secs(120), || async {
        let at = tiers.catalog_locations("docs").await;
        ["a", "b", "keep"]
            .iter()
            .all(|n| at.get(*n).is_some_and(|t| t.contains(&"s3".to_string())))
    })
    .await;
    uploaded.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    let a_on_hub = tiers.hub_tier.info("docs", "a").await.unwrap().unwrap();

    // A user delete on the leaf (sourced to the hub as a delete marker) and one on the hub.
    let leaf_docs = tiers.leaf.get_object_store("docs").await.unwrap();
    leaf_docs.delete("a").await.unwrap();
    let hub_docs = tiers.hub.get_object_store("docs").await.unwrap();
    hub_docs.delete("b").await.unwrap();

    let tombstones = wait_until(
        "tombstones for a and b in s3",
        Duration::from_secs(90),
        || async {
            is_tombstone(&current_manifest(&topology, "docs", "a").await)
                && is_tombstone(&current_manifest(&topology, "docs", "b").await)
        },
    )
    .await;
    if let Err(e) = tombstones {
        panic!(
            "{e:#}\nmanifest a: {:#?}\nmanifest b: {:#?}\ncatalog: {:?}\n{}",
            current_manifest(&topology, "docs", "a").await,
            current_manifest(&topology, "docs", "b").await,
            tiers.catalog_locations("docs").await,
            roles.logs()
        );
    }
    let keep_manifest = current_manifest(&topology, "docs", "keep").await;
    assert!(!is_tombstone(&keep_manifest), "{keep_manifest:#?}");
    // The catalog no longer places the deleted objects on any tier.
    let at = tiers.catalog_locations("docs").await;
    for name in ["a", "b"] {
        assert!(
            at.get(name).is_none_or(|t| t.is_empty()),
            "the catalog still places deleted {name} at {at:?}"
        );
    }
    assert!(
        at.get("keep")
            .is_some_and(|t| t.contains(&"s3".to_string())),
        "{at:?}"
    );
    // The leaf's delete purged the leaf's chunks only; the hub's copy of them is dropped too.
    let hub_stream = tiers
        .hub
        .get_stream(cim_tiering::jetstream::stream_name("docs"))
        .await
        .unwrap();
    let chunks = format!("$O.docs.C.{}", a_on_hub.nuid);
    let left = hub_stream.info_with_subjects(chunks.clone()).await.unwrap();
    let left: Vec<_> = futures::TryStreamExt::try_collect(left).await.unwrap();
    assert!(
        left.is_empty(),
        "the hub still holds chunks of deleted a: {left:?}"
    );
    roles.stop();

    // restore --all brings back neither deleted object, and says so.
    let out = gateway(&config, &["restore", "--bucket", "docs", "--all"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in ["a", "b"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("deleted") && l.contains(&format!("docs/{name}"))),
            "restore does not report docs/{name} as deleted\n{}",
            describe(&out)
        );
    }
    assert_eq!(
        Tiers::names(&tiers.hub_tier, "docs").await,
        vec!["keep".to_string()],
        "restore --all resurrected a deleted object\n{}",
        describe(&out)
    );

    // --include-deleted restores the last version before the delete.
    let out = gateway(
        &config,
        &[
            "restore",
            "--bucket",
            "docs",
            "--name",
            "a",
            "--include-deleted",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let (data, _) = Tiers::read(&tiers.hub, "docs", "a").await;
    assert!(data == a, "--include-deleted restored other content");

    // A new version written after a delete goes up and replaces the tombstone.
    let b2 = content(4, 40_000);
    tiers.put_leaf("docs", "b", &b2).await;
    let mut roles = Roles::start(&topology, &config);
    let digest = Sha256Digest::of(&b2).to_nats();
    let back = wait_until("b's new version in s3", Duration::from_secs(90), || async {
        let m = current_manifest(&topology, "docs", "b").await;
        !is_tombstone(&m) && m.is_some_and(|m| m["digest"] == digest.as_str())
    })
    .await;
    back.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    roles.stop();
}

/// `cim-gateway delete` removes objects that live only in S3 (and refuses one a JetStream tier
/// still holds); `gc` removes what nothing references after the retention — never under the
/// default retention, never a blob another object shares, never a blob whose lease is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_only_deletes_and_blob_collection_after_retention() {
    const POLICIES: &str = r#"
[[policy]]
name = "arch-to-s3"
buckets = ["arch"]
from = "hub"
to = "s3"
action = "move"
after = "0s"
"#;
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(POLICIES);
    let tiers = Tiers::connect(&topology).await;
    let (x, y, w, z) = (
        content(10, 30_000),
        content(11, 31_000),
        content(12, 32_000),
        content(13, 33_000),
    );
    let store = common::ensure_bucket(&tiers.hub_tier, "arch").await;
    for (name, data) in [("x", &x), ("twin", &x), ("y", &y), ("w", &w), ("z", &z)] {
        store.put(name, &mut &data[..]).await.unwrap();
    }
    let mut roles = Roles::start(&topology, &config);
    let archived = wait_until("all archived", Duration::from_secs(120), || async {
        let at = tiers.catalog_locations("arch").await;
        at.len() == 5
            && at.values().all(|t| t == &vec!["s3".to_string()])
            && Tiers::names(&tiers.hub_tier, "arch").await.is_empty()
    })
    .await;
    archived.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    roles.stop();

    // An object a JetStream tier holds is deleted there, not behind its back.
    let out = gateway(&config, &["restore", "--bucket", "arch", "--name", "z"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let out = gateway(&config, &["delete", "--bucket", "arch", "--name", "z"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("hub"),
        "the refusal does not name the tier holding z\n{}",
        describe(&out)
    );
    assert!(!is_tombstone(
        &current_manifest(&topology, "arch", "z").await
    ));

    // Objects that live only in S3.
    for name in ["x", "y", "w", "x"] {
        let out = gateway(&config, &["delete", "--bucket", "arch", "--name", name]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "delete {name}: {}",
            describe(&out)
        );
    }
    let out = gateway(
        &config,
        &["delete", "--bucket", "arch", "--name", "nothere"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothere"),
        "{}",
        describe(&out)
    );
    for name in ["x", "y", "w"] {
        assert!(
            is_tombstone(&current_manifest(&topology, "arch", name).await),
            "{name}"
        );
    }
    let out = gateway(&config, &["list", "--bucket", "arch", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let mut listed: Vec<String> = common::listed(&out)
        .into_iter()
        .map(|(_, name, _)| name)
        .collect();
    listed.sort();
    assert_eq!(listed, ["twin", "z"], "{}", describe(&out));
    let out = gateway(&config, &["restore", "--bucket", "arch", "--all"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let mut on_hub = Tiers::names(&tiers.hub_tier, "arch").await;
    on_hub.sort();
    assert_eq!(on_hub, ["twin", "z"], "{}", describe(&out));

    let blob = |data: &[u8]| format::blob_key(PREFIX, &Sha256Digest::of(data));
    let history = |name: &str| format!("{PREFIX}versions/arch/{}/", URL_SAFE_NO_PAD.encode(name));
    for data in [&x, &y, &w, &z] {
        assert!(s3_has(&topology, &blob(data)).await);
    }
    let y_history = s3_keys(&topology, &history("y")).await;
    assert!(y_history.len() >= 2, "y's history: {y_history:?}");

    // Under the default retention (at least Wasabi's 90 days) nothing is removed.
    let out = gateway(&config, &["gc"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    for data in [&x, &y, &w, &z] {
        assert!(s3_has(&topology, &blob(data)).await, "{}", describe(&out));
    }
    assert_eq!(s3_keys(&topology, &history("y")).await, y_history);

    // A short retention: what nothing references goes, except a blob whose lease is held.
    let leases = Leases::open(&tiers.hub, 3).await.unwrap();
    let held = leases
        .try_acquire(
            &blob_lease_key("s3", &Sha256Digest::of(&w)),
            "test: a live upload",
        )
        .await
        .unwrap()
        .unwrap();
    let short = topology.write_config(&format!("{POLICIES}\n[tiers.s3]\nretention = \"2s\"\n"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let out = gateway(&short, &["gc"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        !s3_has(&topology, &blob(&y)).await,
        "y's blob survived gc\n{}",
        describe(&out)
    );
    assert!(
        s3_has(&topology, &blob(&x)).await,
        "x's blob is twin's too\n{}",
        describe(&out)
    );
    assert!(s3_has(&topology, &blob(&z)).await, "{}", describe(&out));
    assert!(
        s3_has(&topology, &blob(&w)).await,
        "w's blob was removed under a held lease\n{}",
        describe(&out)
    );
    // The deleted versions' history went; the tombstones stay, so S3 alone says "deleted".
    assert_eq!(s3_keys(&topology, &history("y")).await.len(), 1);
    for name in ["x", "y", "w"] {
        assert!(
            is_tombstone(&current_manifest(&topology, "arch", name).await),
            "{name}"
        );
    }
    let out = gateway(
        &config,
        &[
            "restore",
            "--bucket",
            "arch",
            "--name",
            "y",
            "--include-deleted",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("arch/y"),
        "{}",
        describe(&out)
    );

    held.release().await;
    let out = gateway(&short, &["gc"]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        !s3_has(&topology, &blob(&w)).await,
        "w's blob survived gc\n{}",
        describe(&out)
    );
    // twin's content is still whole in S3.
    let s3 = topology.s3.client().await;
    let stored = s3
        .get_object()
        .bucket(&topology.s3.bucket)
        .key(blob(&x))
        .send()
        .await
        .unwrap();
    let stored = stored.body.collect().await.unwrap().into_bytes();
    assert!(zstd::decode_all(&stored[..]).unwrap() == x);
}
