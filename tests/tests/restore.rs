//! `cim-gateway restore` and `list` on real servers: restore never replaces a newer version,
//! manifests read from S3 are untrusted input, and manifests of a format this build does not
//! understand are skipped and reported, never fatal.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use cim_tests::{cim_bin, wait_until, Topology};
use cim_tiering::digest::Sha256Digest;
use common::{content, Roles, Tiers};

/// Exit status of a restore that skipped objects but failed none (documented in `--help`).
const EXIT_SKIPPED: i32 = 3;

/// `sensors*` moves leaf → hub; everything moves hub → S3.
const POLICIES: &str = r#"
[[policy]]
name = "sensors-to-cluster"
buckets = ["sensors*"]
from = "leaf"
to = "hub"
action = "move"
after = "0s"

[[policy]]
name = "cluster-to-s3"
buckets = ["*"]
from = "hub"
to = "s3"
action = "move"
after = "0s"
"#;

/// Runs `cim-gateway <args…> --config <config>`.
fn gateway(config: &Path, args: &[&str]) -> Output {
    Command::new(cim_bin("cim-gateway"))
        .args(args)
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap()
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits until the catalog records version `data` of `bucket`/`name` on exactly the tiers `at`
/// (on at least those, with `exact` false).
async fn wait_catalog(
    tiers: &Tiers,
    roles: &Roles,
    (bucket, name): (&str, &str),
    data: &[u8],
    at: &[&str],
    exact: bool,
) {
    let digest = Sha256Digest::of(data);
    let what = format!("catalog: {bucket}/{name} at {at:?}");
    let reached = wait_until(&what, Duration::from_secs(120), || async {
        tiers
            .catalog
            .get(bucket, name)
            .await
            .ok()
            .flatten()
            .is_some_and(|e| {
                let found: Vec<&str> = e.locations.keys().map(String::as_str).collect();
                e.digest == digest
                    && if exact {
                        found == at
                    } else {
                        at.iter().all(|t| found.contains(t))
                    }
            })
    })
    .await;
    if let Err(e) = reached {
        panic!(
            "{e:#}\ncatalog: {:?}\n{}",
            tiers.catalog.get(bucket, name).await,
            roles.logs()
        );
    }
}

/// Item 1, exactly as reproduced on `main`: v1 archived to S3 (hub → s3 `move`); the upload role
/// stopped; v2 written on the leaf (leaf → hub `move`), verified on the hub and evicted from the
/// leaf by the mirror role; then `restore --all`. The hub must keep v2: restore skips and reports
/// the object, and even `--overwrite` refuses to replace a version with no verified copy on
/// another tier.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_never_replaces_a_newer_version() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(POLICIES);
    let tiers = Tiers::connect(&topology).await;
    let (v1, v2) = (content(100, 300_000), content(101, 200_000));

    // v1 archived to S3.
    tiers.put_leaf("sensors", "doc", &v1).await;
    let mut roles = Roles::start(&topology, &config);
    wait_catalog(&tiers, &roles, ("sensors", "doc"), &v1, &["s3"], true).await;
    let hub_empty = wait_until(
        "v1 evicted from the hub",
        Duration::from_secs(60),
        || async {
            Tiers::names(&tiers.hub_tier, "sensors").await.is_empty()
                && Tiers::names(&tiers.leaf_tier, "sensors").await.is_empty()
        },
    )
    .await;
    hub_empty.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));

    // The upload role stops; v2 is written on the leaf, verified on the hub, evicted from the leaf.
    roles
        .upload
        .sigterm_and_wait(Duration::from_secs(10))
        .unwrap();
    tiers.put_leaf("sensors", "doc", &v2).await;
    wait_catalog(&tiers, &roles, ("sensors", "doc"), &v2, &["hub"], true).await;
    let leaf_evicted = wait_until(
        "v2 evicted from the leaf",
        Duration::from_secs(60),
        || async { Tiers::names(&tiers.leaf_tier, "sensors").await.is_empty() },
    )
    .await;
    leaf_evicted.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    roles.stop();

    // restore --all: the hub keeps v2; the object is skipped and reported.
    let out = gateway(&config, &["restore", "--bucket", "sensors", "--all"]);
    let (held, _) = Tiers::read(&tiers.hub, "sensors", "doc").await;
    assert!(
        held == v2,
        "restore replaced v2 on the hub (held {} bytes, v1 is {}, v2 is {}): v2 exists nowhere now\n{}",
        held.len(),
        v1.len(),
        v2.len(),
        describe(&out)
    );
    assert_eq!(out.status.code(), Some(EXIT_SKIPPED), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("skipped  sensors/doc") && stdout.contains("1 skipped"),
        "{}",
        describe(&out)
    );

    // --overwrite still refuses: v2 has no verified copy on another tier.
    let out = gateway(
        &config,
        &["restore", "--bucket", "sensors", "--all", "--overwrite"],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("\"doc\"") && stderr.contains("no verified copy on another tier"),
        "{}",
        describe(&out)
    );
    assert!(Tiers::read(&tiers.hub, "sensors", "doc").await.0 == v2);
}
