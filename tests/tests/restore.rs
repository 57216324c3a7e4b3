//! `cim-gateway restore` and `list` on real servers: restore never replaces a newer version,
//! manifests read from S3 are untrusted input, and manifests of a format this build does not
//! understand are skipped and reported, never fatal.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use cim_tests::{wait_until, Topology};
use cim_tiering::catalog::Version;
use cim_tiering::digest::Sha256Digest;
use common::{content, describe, gateway, plant, Roles, Tiers};

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

/// Messages in the hub stream of `bucket` (0 when the stream does not exist).
async fn hub_messages(tiers: &Tiers, bucket: &str) -> u64 {
    match tiers.hub.get_stream(format!("OBJ_{bucket}")).await {
        Ok(mut stream) => stream.info().await.unwrap().state.messages,
        Err(_) => 0,
    }
}

/// Item 10: a manifest whose digest disagrees with the catalog's record of the S3 copy, a blob
/// shorter or longer than its manifest's `stored_size`, and a decompression bomb declaring more
/// than the target stream can still store are each refused with an error naming the object;
/// nothing of them is written to the hub, and the good object beside them is restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_refuses_manifests_that_lie() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(POLICIES);
    let tiers = Tiers::connect(&topology).await;

    // The catalog says the S3 tier holds `truth`; the manifest found there describes `forged`.
    let (truth, forged) = (content(200, 50_000), content(201, 50_000));
    let key = plant(&topology, "untrusted", "disagrees", &forged, |_| {}).await;
    let truth_digest = Sha256Digest::of(&truth);
    tiers
        .catalog
        .record_copy(
            "untrusted",
            "disagrees",
            &Version {
                size: 50_000,
                digest: truth_digest,
                seq: 1,
            },
            "s3",
            Some(key),
        )
        .await
        .unwrap();
    // Blobs shorter and longer than their manifests say.
    let stored = |m: &serde_json::Value| m["stored_size"].as_u64().unwrap();
    plant(
        &topology,
        "untrusted",
        "shorter",
        &content(202, 60_000),
        |m| m["stored_size"] = (stored(m) + 1).into(),
    )
    .await;
    plant(
        &topology,
        "untrusted",
        "longer",
        &content(203, 60_000),
        |m| m["stored_size"] = (stored(m) - 1).into(),
    )
    .await;
    let good = content(204, 10_000);
    plant(&topology, "untrusted", "good", &good, |_| {}).await;

    let out = gateway(&config, &["restore", "--bucket", "untrusted", "--all"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        Tiers::names(&tiers.hub_tier, "untrusted").await,
        vec!["good"],
        "only the good object may reach the hub\n{}",
        describe(&out)
    );
    assert!(Tiers::read(&tiers.hub, "untrusted", "good").await.0 == good);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr.contains("\"disagrees\"")
            && stderr.contains(&truth_digest.to_nats())
            && stderr.contains(&Sha256Digest::of(&forged).to_nats()),
        "the refusal must name the object and both digests\n{}",
        describe(&out)
    );
    for name in ["\"shorter\"", "\"longer\""] {
        assert!(
            stderr.contains(name),
            "{name} not refused\n{}",
            describe(&out)
        );
    }

    // A decompression bomb: 16 MiB of zeros (a few hundred bytes compressed), into a hub stream
    // that can hold 1 MiB.
    let mut stream = cim_tiering::jetstream::bucket_stream_config("bomb", 3, None);
    stream.max_bytes = 1024 * 1024;
    tiers.hub.create_stream(stream).await.unwrap();
    plant(&topology, "bomb", "zeros", &vec![0u8; 16 << 20], |_| {}).await;
    let out = gateway(&config, &["restore", "--bucket", "bomb", "--name", "zeros"]);
    assert_eq!(
        hub_messages(&tiers, "bomb").await,
        0,
        "the bomb wrote into the hub stream\n{}",
        describe(&out)
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"zeros\""),
        "{}",
        describe(&out)
    );
}

/// Item 12 (manifests): a manifest of a format this build does not understand (99), next to
/// normal ones, is skipped and reported by `list` and `restore`, never aborting the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manifest_of_a_future_format_is_skipped_and_reported() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(POLICIES);
    let tiers = Tiers::connect(&topology).await;
    let (a, b) = (content(300, 20_000), content(301, 30_000));
    plant(&topology, "formats", "a", &a, |_| {}).await;
    plant(&topology, "formats", "b", &b, |_| {}).await;
    let future_key = plant(&topology, "formats", "future", &content(302, 1000), |m| {
        m["format"] = 99.into();
        // A future format may drop or change any field but `format`.
        m.as_object_mut().unwrap().remove("sha256_hex");
        m["digest"] = serde_json::json!({ "algorithm": "sha-512", "value": "..." });
    })
    .await;

    for args in [&["list", "--bucket", "formats"][..], &["list"][..]] {
        let out = gateway(&config, args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        for name in ["a", "b"] {
            assert!(
                stdout
                    .lines()
                    .any(|l| l.split_whitespace().take(2).eq(["formats", name])),
                "{args:?}: {name} missing\n{}",
                describe(&out)
            );
        }
        assert!(
            stderr.contains(&future_key) && stderr.contains("format 99"),
            "{args:?}: the future manifest must be reported\n{}",
            describe(&out)
        );
        assert_eq!(
            out.status.code(),
            Some(EXIT_SKIPPED),
            "{args:?}\n{}",
            describe(&out)
        );
    }

    let out = gateway(&config, &["restore", "--bucket", "formats", "--all"]);
    assert_eq!(
        Tiers::names(&tiers.hub_tier, "formats").await,
        vec!["a", "b"],
        "{}",
        describe(&out)
    );
    assert!(Tiers::read(&tiers.hub, "formats", "a").await.0 == a);
    assert!(Tiers::read(&tiers.hub, "formats", "b").await.0 == b);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("skipped  formats/future") && stdout.contains("format 99"),
        "{}",
        describe(&out)
    );
    assert_eq!(out.status.code(), Some(EXIT_SKIPPED), "{}", describe(&out));
}
