//! `cim-gateway get` on real servers: the object comes from the nearest tier that holds it
//! (leaf, hub, S3 — planted or after a real move), byte-identical with `-o` and to stdout; a copy
//! that fails its digest is refused (no file, exit 1, the object and tier named) and, with
//! `-o`, the next tier holding the same version is used; not found is exit 4.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use cim_tests::Topology;
use cim_tiering::digest::Sha256Digest;
use cim_tiering::jetstream::{chunk_subject, stream_name};
use common::{content, describe, gateway, plant, put_hub, rewrite_meta, Roles, Tiers, MOVE_ALL};

/// Runs `get` for `bucket`/`name` with `extra` arguments.
fn get(config: &Path, bucket: &str, name: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["get", "--bucket", bucket, "--name", name];
    args.extend_from_slice(extra);
    gateway(config, &args)
}

/// A fresh, empty directory for `-o` files.
fn out_dir(topology: &Topology, name: &str) -> PathBuf {
    let dir = topology.dir().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Every entry of `dir` (temporary files included).
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Gets `bucket`/`name` with `-o` and to stdout and checks both are `data`, read from `tier`.
fn assert_gets(config: &Path, dir: &Path, bucket: &str, name: &str, data: &[u8], tier: &str) {
    let file = dir.join(format!("{bucket}-{}", name.replace('/', "_")));
    let out = get(config, bucket, name, &["-o", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    assert!(
        std::fs::read(&file).unwrap() == data,
        "{bucket}/{name}: -o content differs"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("got {bucket}/{name} from {tier}: "))
            && stderr.contains("sha-256 ok"),
        "{}",
        describe(&out)
    );

    let out = get(config, bucket, name, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        out.stdout == data,
        "{bucket}/{name}: stdout content differs"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&format!("from {tier}: ")),
        "{}",
        describe(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_streams_verified_copies_from_the_nearest_tier() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config("");
    let tiers = Tiers::connect(&topology).await;
    let dir = out_dir(&topology, "get-ok");

    // Several chunks and batches: more than one batched direct get.
    let on_leaf = content(1, 1_300_000);
    tiers.put_leaf("sensors", "a/leaf.bin", &on_leaf).await;
    assert_gets(&config, &dir, "sensors", "a/leaf.bin", &on_leaf, "leaf");

    let on_hub = content(2, 700_000);
    put_hub(&tiers, "archive", "hub.bin", &on_hub).await;
    // The temporary files of two earlier gets of the same FILE: one killed outright (its pid
    // can no longer exist: Linux pids stay below 2^22), one still running (this process).
    let stale = dir.join(".archive-hub.bin.cim-get-4194305");
    let running = dir.join(format!(".archive-hub.bin.cim-get-{}", std::process::id()));
    std::fs::write(&stale, b"partial").unwrap();
    std::fs::write(&running, b"partial").unwrap();
    assert_gets(&config, &dir, "archive", "hub.bin", &on_hub, "hub");
    assert!(!stale.exists(), "the killed get's temporary file is left");
    assert!(
        running.exists(),
        "a running get's temporary file was removed"
    );
    std::fs::remove_file(&running).unwrap();

    let in_s3 = content(3, 500_000);
    plant(&topology, "cold", "s3.bin", &in_s3, |_| {}).await;
    assert_gets(&config, &dir, "cold", "s3.bin", &in_s3, "s3");

    // --from forces a tier: the leaf object is not on the hub.
    let out = get(&config, "sensors", "a/leaf.bin", &["--from", "hub"]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));

    // Not found anywhere: exit 4, no file.
    let missing = dir.join("missing");
    let out = get(
        &config,
        "archive",
        "nope",
        &["-o", missing.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("archive/nope"), "{}", describe(&out));
    assert!(!missing.exists());

    // Deleted in S3 (a tombstone): not found, and said so.
    plant(&topology, "cold", "gone.bin", &in_s3, |m| {
        // Tombstones came with format 3.
        m["format"] = 3.into();
        m["deleted"] =
            serde_json::json!({"at": "2026-01-02T00:00:00Z", "by": "cim-gateway delete"});
    })
    .await;
    let out = get(&config, "cold", "gone.bin", &[]);
    assert_eq!(out.status.code(), Some(4), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("deleted"),
        "{}",
        describe(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_refuses_a_corrupt_copy_and_falls_back_to_a_good_one() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config("");
    let tiers = Tiers::connect(&topology).await;
    let dir = out_dir(&topology, "get-bad");

    // The hub's meta claims another digest: refused, nothing written, both digests named.
    let data = content(10, 400_000);
    let claimed = Sha256Digest::of(b"something else");
    put_hub(&tiers, "archive", "lying.bin", &data).await;
    rewrite_meta(&tiers.hub, "archive", "lying.bin", |meta| {
        meta["digest"] = claimed.to_nats().into();
    })
    .await;
    let file = dir.join("lying.bin");
    let out = get(
        &config,
        "archive",
        "lying.bin",
        &["-o", file.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "lying.bin",
        "tier hub",
        &claimed.to_nats(),
        &Sha256Digest::of(&data).to_nats(),
    ] {
        assert!(stderr.contains(needle), "no {needle:?}: {}", describe(&out));
    }
    assert!(out.stdout.is_empty(), "{}", describe(&out));
    assert!(entries(&dir).is_empty(), "left behind: {:?}", entries(&dir));
    // To stdout: the bytes went out, the exit status and stderr say they are bad.
    let out = get(&config, "archive", "lying.bin", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lying.bin"),
        "{}",
        describe(&out)
    );

    // A bad blob in S3 (its manifest claims another digest): refused the same way.
    // (The blob stored under the claimed digest's key holds `data`.)
    common::plant_lying(&topology, "cold", "bad.bin", &data, &claimed).await;
    let file = dir.join("bad.bin");
    let out = get(&config, "cold", "bad.bin", &["-o", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad.bin")
            && stderr.contains("tier s3")
            && stderr.contains(&claimed.to_nats()),
        "{}",
        describe(&out)
    );
    assert!(entries(&dir).is_empty(), "left behind: {:?}", entries(&dir));

    // The hub's chunks are damaged (same length), S3 holds a good copy of the same version:
    // -o falls back to it; --from hub does not; stdout cannot once bad bytes went out.
    let good = content(11, 300_000);
    put_hub(&tiers, "archive", "patched.bin", &good).await;
    plant(&topology, "archive", "patched.bin", &good, |_| {}).await;
    let info = tiers
        .hub_tier
        .info("archive", "patched.bin")
        .await
        .unwrap()
        .unwrap();
    let chunks = chunk_subject("archive", &info.nuid);
    let stream = tiers.hub.get_stream(stream_name("archive")).await.unwrap();
    stream.purge().filter(&chunks).await.unwrap();
    tiers
        .hub
        .publish(chunks, content(12, good.len()).into())
        .await
        .unwrap()
        .await
        .unwrap();

    let file = dir.join("patched.bin");
    let out = get(
        &config,
        "archive",
        "patched.bin",
        &["-o", file.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("patched.bin on tier hub") && stderr.contains("from s3: "),
        "{}",
        describe(&out)
    );
    assert!(
        std::fs::read(&file).unwrap() == good,
        "fallback content differs"
    );
    assert_eq!(entries(&dir), vec!["patched.bin".to_string()]);

    let elsewhere = out_dir(&topology, "get-from-hub");
    let forced = elsewhere.join("patched.bin");
    let out = get(
        &config,
        "archive",
        "patched.bin",
        &["--from", "hub", "-o", forced.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        entries(&elsewhere).is_empty(),
        "left behind: {:?}",
        entries(&elsewhere)
    );

    let out = get(&config, "archive", "patched.bin", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stdout already holds"),
        "{}",
        describe(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_reads_from_s3_after_a_move() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(MOVE_ALL);
    let tiers = Tiers::connect(&topology).await;
    let mut roles = Roles::start(&topology, &config);
    let data = content(20, 900_000);
    tiers.put_leaf("sensors", "moved.bin", &data).await;
    common::wait_only_in_s3(
        &tiers,
        &roles,
        "sensors",
        &["moved.bin"],
        Duration::from_secs(120),
    )
    .await;
    roles.stop();
    let dir = out_dir(&topology, "get-moved");
    assert_gets(&config, &dir, "sensors", "moved.bin", &data, "s3");
}
