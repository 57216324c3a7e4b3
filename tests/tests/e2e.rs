//! The whole tier chain on real servers: leaf → 3-node cluster → S3 → restore, every role a
//! separate process talking only through NATS.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cim_tests::{cim_bin, wait_until, Topology};
use cim_tiering::digest::Sha256Digest;
use common::{content, sample, scrape, wait_only_in_s3, Roles, Tiers, MOVE_ALL};

const BUCKET: &str = "sensors";

fn samples() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("empty", Vec::new()),
        ("one-byte", content(1, 1)),
        ("hundred-kib", content(2, 100 * 1024)),
        ("one-mib", content(3, 1024 * 1024)),
        ("seventeen-mib", content(4, 17 * 1024 * 1024)),
        (
            "reports/2026/with spaces.txt",
            b"a name with spaces and a / in it\n".repeat(100),
        ),
    ]
}

fn restore(config: &std::path::Path, bucket: &str) -> std::process::Output {
    Command::new(cim_bin("cim-gateway"))
        .args([
            "restore",
            "--config",
            config.to_str().unwrap(),
            "--bucket",
            bucket,
            "--all",
        ])
        .output()
        .unwrap()
}

/// Puts `objects` on the leaf under [`MOVE_ALL`], runs the roles until every object is only in
/// S3, and stops them; returns the config and the tier handles.
async fn moved_to_s3(topology: &Topology, objects: &[(&str, Vec<u8>)]) -> (PathBuf, Tiers) {
    let config = topology.write_config(MOVE_ALL);
    let tiers = Tiers::connect(topology).await;
    for (name, data) in objects {
        tiers.put_leaf(BUCKET, name, data).await;
    }
    let mut roles = Roles::start(topology, &config);
    let names: Vec<&str> = objects.iter().map(|(n, _)| *n).collect();
    wait_only_in_s3(&tiers, &roles, BUCKET, &names, Duration::from_secs(120)).await;
    roles.stop();
    (config, tiers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn objects_move_through_every_tier_and_restore_identically() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(MOVE_ALL);
    let tiers = Tiers::connect(&topology).await;

    let samples = samples();
    let mut digests = BTreeMap::new();
    for (name, data) in &samples {
        let info = tiers.put_leaf(BUCKET, name, data).await;
        assert_eq!(info.size, data.len());
        digests.insert(name.to_string(), info.digest.clone().unwrap());
    }

    let mut roles = Roles::start(&topology, &config);
    let names: Vec<&str> = samples.iter().map(|(n, _)| *n).collect();
    wait_only_in_s3(&tiers, &roles, BUCKET, &names, Duration::from_secs(180)).await;

    // The S3 side describes itself: one manifest per object, with the ingest digest.
    let listing = Command::new(cim_bin("cim-gateway"))
        .args([
            "list",
            "--config",
            config.to_str().unwrap(),
            "--bucket",
            BUCKET,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(listing.status.success(), "{listing:?}");
    let listed = common::listed(&listing);
    for (name, digest) in &digests {
        assert!(
            listed
                .iter()
                .any(|(b, n, d)| b == BUCKET && n == name && d == digest),
            "{name} missing from s3 listing:\n{listed:?}"
        );
    }
    // For people: a header, one row per object, the totals; an unknown bucket is an error
    // that names it and what the tier holds.
    let out = common::gateway(&config, &["list", "--bucket", BUCKET]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", common::describe(&out));
    let total: usize = samples.iter().map(|(_, data)| data.len()).sum();
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.contains("NAME") && l.contains("SHA-256"))
            && text.contains(&format!(
                "{} objects in 1 bucket on s3 tier s3: {}",
                names.len(),
                cim_tiering::cli::human_bytes(total as u64)
            )),
        "{text}"
    );
    let out = common::gateway(&config, &["list", "--bucket", "no-such-bucket"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", common::describe(&out));
    assert!(
        stderr.contains("\"no-such-bucket\"") && stderr.contains(BUCKET),
        "{stderr}"
    );

    // Every role exported its transfers per tier pair and its backlog.
    let total: u64 = samples.iter().map(|(_, d)| d.len() as u64).sum();
    let mirror = scrape(roles.mirror_metrics).await;
    let upload = scrape(roles.upload_metrics).await;
    let manager = scrape(roles.manager_metrics).await;
    let leaf_hub = [("from_tier", "leaf"), ("to_tier", "hub")];
    let hub_s3 = [("from_tier", "hub"), ("to_tier", "s3")];
    let ok = |pair: [(&'static str, &'static str); 2]| [pair[0], pair[1], ("outcome", "ok")];
    assert_eq!(
        sample(&mirror, "cim_transfers_total", &ok(leaf_hub)),
        Some(6.0),
        "{mirror}"
    );
    assert_eq!(
        sample(&mirror, "cim_transfer_bytes_total", &leaf_hub),
        Some(total as f64)
    );
    assert_eq!(
        sample(&upload, "cim_transfers_total", &ok(hub_s3)),
        Some(6.0),
        "{upload}"
    );
    assert_eq!(
        sample(&upload, "cim_transfer_bytes_total", &hub_s3),
        Some(total as f64)
    );
    assert!(
        sample(&upload, "cim_work_backlog_items", &[("role", "upload")]).is_some(),
        "{upload}"
    );
    assert!(
        sample(&manager, "cim_backlog_objects", &hub_s3).is_some(),
        "{manager}"
    );
    assert!(sample(&manager, "cim_manager_passes_total", &[]).unwrap_or(0.0) >= 1.0);

    // Restore while the roles are stopped (otherwise the move policy would evict again).
    roles.stop();
    let out = restore(&config, BUCKET);
    assert!(
        out.status.success(),
        "restore failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, data) in &samples {
        let (restored, info) = Tiers::read(&tiers.hub, BUCKET, name).await;
        assert!(restored == *data, "{name}: restored bytes differ");
        assert_eq!(
            info.digest.as_ref(),
            digests.get(*name),
            "{name}: digest differs"
        );
        assert_eq!(
            info.digest.clone().unwrap(),
            Sha256Digest::of(data).to_nats(),
            "{name}: digest is not the content's"
        );
    }
    // The restore wrote into the hub's own stream, not over the leafnode link into the leaf.
    assert!(Tiers::names(&tiers.leaf_tier, BUCKET).await.is_empty());
    let catalog = tiers.catalog_locations(BUCKET).await;
    for name in &names {
        assert_eq!(
            catalog[*name],
            vec!["hub".to_string(), "s3".to_string()],
            "{name}"
        );
    }

    // Restoring again is a no-op, not a duplicate.
    let again = restore(&config, BUCKET);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("6 restored or present, 0 failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tampered_s3_copy_is_refused_and_the_others_restore() {
    let topology = Topology::start().await.unwrap();
    let objects = [
        ("good-1", content(10, 300_000)),
        ("tampered", content(11, 300_000)),
        ("good-2", content(12, 7 * 1024 * 1024)),
    ];
    let (config, tiers) = moved_to_s3(&topology, &objects).await;

    // Behind the system's back: rewrite the tampered object's blob with other (valid zstd) bytes.
    let s3 = topology.s3.client().await;
    let digest = Sha256Digest::of(&objects[1].1);
    let key = cim_gateway::format::blob_key("cim/", &digest);
    let evil = zstd::encode_all(&content(99, 300_000)[..], 3).unwrap();
    s3.put_object()
        .bucket(&topology.s3.bucket)
        .key(&key)
        .body(evil.into())
        .send()
        .await
        .unwrap();

    let out = restore(&config, BUCKET);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "restore of a tampered object must fail"
    );
    assert!(
        stderr.contains("\"tampered\"") && stderr.contains("integrity check failed"),
        "the error must name the object: {stderr}"
    );
    assert_eq!(
        Tiers::names(&tiers.hub_tier, BUCKET).await,
        vec!["good-1", "good-2"]
    );
    for (name, data) in [&objects[0], &objects[2]] {
        assert!(Tiers::read(&tiers.hub, BUCKET, name).await.0 == *data);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_killed_mid_object_resumes_and_loses_nothing() {
    let topology = Topology::start().await.unwrap();
    // Small parts so the large object is many parts: a wide window to kill the uploader in.
    let config = topology.write_config(&format!(
        "{MOVE_ALL}\n[upload]\npart_size_mib = 5\nmultipart_threshold_mib = 5\n"
    ));
    let tiers = Tiers::connect(&topology).await;
    let objects = [
        ("large", content(20, 120 * 1024 * 1024)),
        ("small-1", content(21, 4096)),
        ("small-2", content(22, 2 * 1024 * 1024)),
    ];
    for (name, data) in &objects {
        tiers.put_leaf(BUCKET, name, data).await;
    }

    let mut roles = Roles::start(&topology, &config);
    let s3 = cim_tests_s3_store(&topology).await;
    // Kill the uploader while a multipart upload of the large object is in progress.
    let caught = wait_until(
        "a multipart upload in progress",
        Duration::from_secs(120),
        || async {
            !s3.list_multipart_uploads()
                .await
                .unwrap_or_default()
                .is_empty()
        },
    )
    .await;
    caught.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    roles.upload.sigkill();
    assert!(
        !s3.list_multipart_uploads().await.unwrap().is_empty(),
        "the kill must leave an unfinished multipart upload behind for this test to mean anything"
    );

    roles.restart_upload();
    let names: Vec<&str> = objects.iter().map(|(n, _)| *n).collect();
    wait_only_in_s3(&tiers, &roles, BUCKET, &names, Duration::from_secs(240)).await;
    assert_eq!(
        s3.list_multipart_uploads().await.unwrap(),
        Vec::<(String, String)>::new(),
        "no orphaned multipart upload may remain"
    );
    // Every object verifies in S3 byte for byte.
    for (name, data) in &objects {
        let manifest = s3.get_manifest(BUCKET, name).await.unwrap().unwrap();
        let mut restored = Vec::new();
        s3.read_verified(&manifest, &mut restored).await.unwrap();
        assert!(restored == *data, "{name} differs in s3");
    }
    roles.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leaf_eviction_is_not_replicated_as_a_delete_and_copy_keeps_the_leaf() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(
        r#"
[[policy]]
name = "move-sensors"
buckets = ["sensors"]
from = "leaf"
to = "hub"
action = "move"
after = "0s"

[[policy]]
name = "copy-logs"
buckets = ["logs"]
from = "leaf"
to = "hub"
action = "copy"
after = "0s"
"#,
    );
    let tiers = Tiers::connect(&topology).await;
    let a = content(30, 1_000_000);
    let b = content(31, 200_000);
    tiers.put_leaf("sensors", "a", &a).await;
    tiers.put_leaf("logs", "b", &b).await;
    let roles = Roles::start(&topology, &config);

    let evicted = wait_until(
        "leaf copy of sensors/a evicted",
        Duration::from_secs(60),
        || async { Tiers::names(&tiers.leaf_tier, "sensors").await.is_empty() },
    )
    .await;
    evicted.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    let logs_on_hub = wait_until("logs/b on the hub", Duration::from_secs(60), || async {
        Tiers::names(&tiers.hub_tier, "logs").await == vec!["b".to_string()]
    })
    .await;
    logs_on_hub.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));

    // The hub still serves the evicted object, intact: eviction was a purge, not a delete.
    let (data, info) = Tiers::read(&tiers.hub, "sensors", "a").await;
    assert!(data == a);
    assert!(!info.deleted);
    // Keep evaluating for a few passes: the copy policy never evicts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        Tiers::names(&tiers.leaf_tier, "logs").await,
        vec!["b".to_string()]
    );
    assert_eq!(Tiers::read(&tiers.hub, "logs", "b").await.0, b);

    // A later *user* delete on the leaf is a real delete and does reach the hub.
    let leaf_logs = tiers.leaf.get_object_store("logs").await.unwrap();
    leaf_logs.delete("b").await.unwrap();
    wait_until(
        "user delete replicated",
        Duration::from_secs(30),
        || async { Tiers::names(&tiers.hub_tier, "logs").await.is_empty() },
    )
    .await
    .unwrap();
    let catalog = tiers.catalog_locations("sensors").await;
    assert_eq!(catalog["a"], vec!["hub".to_string()]);
}

#[test]
fn check_config_names_every_mistake() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[nats]
url = "nats://127.0.0.1:4222"

[tiers.leaf]
kind = "jetstream"
domain = "leaf"

[tiers.hub]
kind = "jetstream"
domain = "hub"

[[policy]]
name = "a"
buckets = ["*"]
from = "leaf"
to = "hubb"
action = "move"
after = "10m"

[[policy]]
name = "b"
buckets = ["*"]
from = "leaf"
to = "hub"
action = "teleport"
after = "3x"
"#,
    )
    .unwrap();
    let out = Command::new(cim_bin("cim-storage"))
        .args(["check-config", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("policy[0].to"), "{stderr}");
    assert!(stderr.contains("policy[1].action"), "{stderr}");
    assert!(
        stderr.contains("policy[1].after: \"3x\" is not a duration"),
        "{stderr}"
    );
    assert!(stderr.contains("3 problems"), "{stderr}");

    let good = dir.path().join("good.toml");
    std::fs::write(&good, cim_policies::Config::example()).unwrap();
    let ok = Command::new(cim_bin("cim-storage"))
        .args(["check-config", "--config", good.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(ok.status.success(), "{ok:?}");
}

async fn cim_tests_s3_store(topology: &Topology) -> cim_gateway::s3::S3Store {
    let tier = cim_policies::S3Tier {
        endpoint: Some(topology.s3.endpoint.clone()),
        region: topology.s3.region.clone(),
        bucket: topology.s3.bucket.clone(),
        prefix: "cim/".into(),
        credentials_file: Some(topology.s3.credentials_file()),
        flavor: cim_policies::S3Flavor::Garage,
        force_path_style: true,
        retention: std::time::Duration::from_secs(90 * 86_400),
        verify: cim_policies::S3Verify::Crc32c,
    };
    cim_gateway::s3::S3Store::connect(&tier).await.unwrap()
}

/// Invariant 5: with the NATS side gone (bucket, catalog and work queue deleted), S3 alone lists
/// and restores everything, by name too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disaster_recovery_from_s3_alone() {
    let topology = Topology::start().await.unwrap();
    let objects = [
        ("a", content(50, 10_000)),
        ("nested/b c", content(51, 6 * 1024 * 1024)),
    ];
    let (config, tiers) = moved_to_s3(&topology, &objects).await;

    // Lose every bit of NATS-side state the system keeps on the hub.
    tiers
        .hub
        .delete_stream(format!("OBJ_{BUCKET}"))
        .await
        .unwrap();
    tiers.hub.delete_key_value("cim_catalog").await.unwrap();
    tiers.hub.delete_stream("CIM_WORK").await.unwrap();

    let one = Command::new(cim_bin("cim-gateway"))
        .args([
            "restore",
            "--config",
            config.to_str().unwrap(),
            "--bucket",
            BUCKET,
            "--name",
            "nested/b c",
        ])
        .output()
        .unwrap();
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    assert_eq!(
        Tiers::names(&tiers.hub_tier, BUCKET).await,
        vec!["nested/b c"]
    );

    let out = restore(&config, BUCKET);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (name, data) in &objects {
        assert!(
            Tiers::read(&tiers.hub, BUCKET, name).await.0 == *data,
            "{name}"
        );
    }
    let missing = Command::new(cim_bin("cim-gateway"))
        .args([
            "restore",
            "--config",
            config.to_str().unwrap(),
            "--bucket",
            "nope",
            "--all",
        ])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("\"nope\""));
}
