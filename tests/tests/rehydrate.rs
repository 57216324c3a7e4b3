//! Temporary rehydration (issue 10 item 6): `cim-gateway restore --for` writes a temporary copy
//! that no policy re-archives or re-evicts while it lasts, and that the storage manager has
//! evicted from the tier it was restored to when its time is up — the S3 copy untouched, the
//! catalog left with S3 alone, and a restore possible again. Into a leaf only with `--for`, and
//! the copy the hub sources from the leaf is recognised as the same temporary version.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cim_tests::{cim_bin, wait_until, Topology};
use common::{content, describe, gateway, put_hub, work_messages, Roles, Tiers, MOVE_ALL};

/// How long the restored copies stay: long enough for the checks made while they are
/// temporary (one manager pass, plan, explain), short enough for the test to wait it out.
const FOR: &str = "20s";

/// Every key under the S3 tier's prefix with its ETag: S3 "untouched" means this is unchanged
/// (no manifest, history manifest, blob or tombstone written or removed).
async fn s3_keys(topology: &Topology) -> BTreeMap<String, String> {
    let s3 = topology.s3.client().await;
    let mut keys = BTreeMap::new();
    let mut token = None;
    loop {
        let page = s3
            .list_objects_v2()
            .bucket(&topology.s3.bucket)
            .prefix(common::PREFIX)
            .set_continuation_token(token)
            .send()
            .await
            .unwrap();
        for object in page.contents() {
            keys.insert(
                object.key().unwrap().to_string(),
                object.e_tag().unwrap_or_default().to_string(),
            );
        }
        token = page.next_continuation_token().map(str::to_string);
        if token.is_none() {
            return keys;
        }
    }
}

fn storage(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(cim_bin("cim-storage"))
        .args(args)
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap()
}

/// One manager pass (`run --once`, no role running): the work items it queued for `name`.
async fn one_pass_queues(tiers: &Tiers, config: &Path, name: &str) -> Vec<String> {
    let once = storage(config, &["run", "--once"]);
    assert!(once.status.success(), "{}", describe(&once));
    work_messages(&tiers.hub)
        .await
        .into_iter()
        .filter(|(_, item)| item["name"] == name)
        .map(|(subject, item)| format!("{subject} {item}"))
        .collect()
}

/// The catalog's tiers for `bucket`/`name`.
async fn catalog_tiers(tiers: &Tiers, bucket: &str, name: &str) -> Option<Vec<String>> {
    tiers.catalog_locations(bucket).await.remove(name)
}

/// Waits until `bucket`/`name` is on none of `gone_from` and the catalog places it in S3 only.
async fn wait_only_in_s3(
    tiers: &Tiers,
    roles: &Roles,
    bucket: &str,
    name: &str,
    gone_from: &[&str],
) {
    let reached = wait_until(
        "the object only in s3",
        Duration::from_secs(120),
        || async {
            let mut gone = true;
            for tier in gone_from {
                let tier = if *tier == "leaf" {
                    &tiers.leaf_tier
                } else {
                    &tiers.hub_tier
                };
                gone &= !Tiers::names(tier, bucket).await.iter().any(|n| n == name);
            }
            gone && catalog_tiers(tiers, bucket, name).await == Some(vec!["s3".to_string()])
        },
    )
    .await;
    if let Err(e) = reached {
        panic!(
            "{e:#}\ncatalog: {:?}\nleaf: {:?}\nhub: {:?}\n{}",
            catalog_tiers(tiers, bucket, name).await,
            Tiers::names(&tiers.leaf_tier, bucket).await,
            Tiers::names(&tiers.hub_tier, bucket).await,
            roles.logs()
        );
    }
}

/// An object moved to S3 (hub → s3 `move`, after = 0), restored `--for` into the hub: while
/// temporary, a manager pass queues nothing for it (no upload, no eviction) and `explain` says
/// until when; then the roles evict it from the hub when its time is up, the catalog lists S3
/// only, S3 is exactly as before (nothing uploaded, nothing deleted), and it can be restored
/// again — as an ordinary copy this time, which the `move` policy takes again at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rehydration_into_the_hub_expires() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(common::HUB_TO_S3);
    let tiers = Tiers::connect(&topology).await;
    let (bucket, name) = ("rehydrate-hub", "report.pdf");
    let data = content(61, 300_000);
    put_hub(&tiers, bucket, name, &data).await;

    let mut roles = Roles::start(&topology, &config);
    wait_only_in_s3(&tiers, &roles, bucket, name, &["hub"]).await;
    roles.stop();
    let before = s3_keys(&topology).await;

    let out = gateway(
        &config,
        &["restore", "--bucket", bucket, "--name", name, "--for", FOR],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("restored {bucket}/{name}")));
    let (held, info) = Tiers::read(&tiers.hub, bucket, name).await;
    assert!(held == data, "the restored copy differs");
    let mark = info
        .headers
        .as_ref()
        .and_then(|h| h.get("Cim-Temporary-For"));
    assert_eq!(mark.map(|v| v.as_str()), Some(FOR), "{info:?}");

    // While temporary: one pass of the `move` policy (after = 0) queues nothing for it.
    let queued = one_pass_queues(&tiers, &config, name).await;
    assert!(queued.is_empty(), "queued for a temporary copy: {queued:?}");
    let planned = storage(&config, &["plan"]);
    assert!(
        String::from_utf8_lossy(&planned.stdout)
            .contains(&format!("{bucket}/{name} on hub: temporary copy until")),
        "{}",
        describe(&planned)
    );
    let explained = storage(&config, &["explain", "--bucket", bucket, "--name", name]);
    let text = String::from_utf8_lossy(&explained.stdout);
    assert!(
        explained.status.success() && text.contains("temporary copy until"),
        "{}",
        describe(&explained)
    );

    // Its time up, the roles evict it from the hub; S3 is untouched.
    let roles = Roles::start(&topology, &config);
    wait_only_in_s3(&tiers, &roles, bucket, name, &["hub"]).await;
    let mut roles = roles;
    roles.stop();
    assert_eq!(s3_keys(&topology).await, before, "S3 changed");

    // Restored again, without --for: an ordinary copy, which the `move` policy takes at once.
    let out = gateway(&config, &["restore", "--bucket", bucket, "--name", name]);
    assert!(out.status.success(), "{}", describe(&out));
    let (held, _) = Tiers::read(&tiers.hub, bucket, name).await;
    assert!(held == data, "the restored copy differs");
    let queued = one_pass_queues(&tiers, &config, name).await;
    assert!(
        queued.iter().any(|q| q.contains("\"upload\"")),
        "an ordinary restored copy is the policies' again: {queued:?}"
    );
}

/// The leaf: `restore --to leaf` without `--for` is refused, naming the tier. With `--for`,
/// the copy restored into the leaf is sourced to the hub, where it arrives as the same temporary
/// version: while it lasts, a pass queues nothing for it (no leaf eviction, no upload of the
/// hub's copy); when its time is up both copies are evicted, the catalog lists S3 only and S3
/// is exactly as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rehydration_into_a_leaf_expires_and_is_never_archived_again() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(MOVE_ALL);
    let tiers = Tiers::connect(&topology).await;
    let (bucket, name) = ("sensors-rehydrate", "trace.bin");
    let data = content(62, 200_000);
    tiers.put_leaf(bucket, name, &data).await;

    let mut roles = Roles::start(&topology, &config);
    wait_only_in_s3(&tiers, &roles, bucket, name, &["leaf", "hub"]).await;
    roles.stop();
    let before = s3_keys(&topology).await;

    let refused = gateway(
        &config,
        &[
            "restore", "--bucket", bucket, "--name", name, "--to", "leaf",
        ],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", describe(&refused));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("\"leaf\"") && stderr.contains("--for"),
        "{}",
        describe(&refused)
    );
    assert!(!Tiers::names(&tiers.leaf_tier, bucket)
        .await
        .iter()
        .any(|n| n == name));

    let out = gateway(
        &config,
        &[
            "restore", "--bucket", bucket, "--name", name, "--to", "leaf", "--for", FOR,
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let (held, leaf_info) = Tiers::read(&tiers.leaf, bucket, name).await;
    assert!(held == data, "the restored copy differs");

    // Sourced to the hub as the same version, still marked temporary.
    let sourced = wait_until(
        "the hub sources the leaf copy",
        Duration::from_secs(60),
        || async {
            Tiers::names(&tiers.hub_tier, bucket)
                .await
                .iter()
                .any(|n| n == name)
        },
    )
    .await;
    sourced.unwrap();
    let (held, hub_info) = Tiers::read(&tiers.hub, bucket, name).await;
    assert!(held == data);
    assert_eq!(
        hub_info.nuid, leaf_info.nuid,
        "the hub holds another version"
    );
    let mark = hub_info
        .headers
        .as_ref()
        .and_then(|h| h.get("Cim-Temporary-For"));
    assert_eq!(mark.map(|v| v.as_str()), Some(FOR), "{hub_info:?}");

    // While temporary: neither hop's `move` (after = 0) queues anything for it.
    let queued = one_pass_queues(&tiers, &config, name).await;
    assert!(queued.is_empty(), "queued for a temporary copy: {queued:?}");

    // Its time up, both copies are evicted; S3 is untouched.
    let mut roles = Roles::start(&topology, &config);
    wait_only_in_s3(&tiers, &roles, bucket, name, &["leaf", "hub"]).await;
    roles.stop();
    assert_eq!(s3_keys(&topology).await, before, "S3 changed");
}

/// A user writing the object again ends the temporary status: the new version carries no mark,
/// and the next pass queues its upload as for any object (the temporary one, hours from
/// expiry, got nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_version_is_not_temporary() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(common::HUB_TO_S3);
    let tiers = Tiers::connect(&topology).await;
    let (bucket, name) = ("rehydrate-rewrite", "notes.txt");
    put_hub(&tiers, bucket, name, &content(63, 50_000)).await;
    let mut roles = Roles::start(&topology, &config);
    wait_only_in_s3(&tiers, &roles, bucket, name, &["hub"]).await;
    roles.stop();

    let out = gateway(
        &config,
        &[
            "restore", "--bucket", bucket, "--name", name, "--for", "12h",
        ],
    );
    assert!(out.status.success(), "{}", describe(&out));
    let queued = one_pass_queues(&tiers, &config, name).await;
    assert!(queued.is_empty(), "queued for a temporary copy: {queued:?}");

    put_hub(&tiers, bucket, name, &content(64, 50_000)).await;
    let (_, info) = Tiers::read(&tiers.hub, bucket, name).await;
    assert!(info
        .headers
        .as_ref()
        .and_then(|h| h.get("Cim-Temporary-For"))
        .is_none());
    let queued = one_pass_queues(&tiers, &config, name).await;
    assert!(
        queued
            .iter()
            .any(|q| q.contains("\"upload\"") && q.contains(&info.nuid)),
        "the new version is the policies' again: {queued:?}"
    );
}
