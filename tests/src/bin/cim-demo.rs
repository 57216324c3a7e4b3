//! `cim-demo`: the whole tier chain on this machine, with sensible embedded defaults.
//!
//! Starts a 3-node JetStream cluster, a leaf node and a Garage S3 server on loopback (the same
//! kit the end-to-end tests use), runs the three roles as separate processes, writes sample
//! objects on the leaf, shows them moving leaf → cluster → S3, restores them from S3 and checks
//! every byte. `--keep-running` leaves everything up until Ctrl-C so you can poke at it.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, object_store};
use cim_tests::{cim_bin, free_port, RoleProcess, Topology};
use cim_tiering::jetstream::JetStreamTier;
use tokio::io::AsyncReadExt;

const BUCKET: &str = "sensors";

const POLICIES: &str = r#"
[[policy]]
name = "edge-to-cluster"
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
after = "5s"
"#;

fn sample(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        // Half text-like, half random: something for zstd to do.
        out.extend_from_slice(format!("reading {} ", x % 1000).as_bytes());
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Live object names, through the product's listing (safe while evictions purge).
async fn names(tier: &JetStreamTier, bucket: &str) -> Vec<String> {
    match tier.list_objects(bucket).await {
        Ok(listing) => listing.objects.into_iter().map(|v| v.info.name).collect(),
        Err(_) => Vec::new(),
    }
}

fn s3_listing(config: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let out = Command::new(cim_bin("cim-gateway"))
        .args(["list", "--config"])
        .arg(config)
        // Every bucket (before the first upload the tier holds none, and `--bucket` would be an
        // error), filtered here.
        .arg("--json")
        .output()?;
    if !out.status.success() {
        bail!(
            "cim-gateway list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    Ok(listing["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["bucket"] == BUCKET)
        .filter_map(|o| o["name"].as_str().map(str::to_string))
        .collect())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let keep_running = std::env::args().any(|a| a == "--keep-running");
    println!("== starting a 3-node JetStream cluster (domain hub), a leaf node (domain leaf) and Garage S3 on 127.0.0.1");
    let topology = Topology::start().await?;
    let config = topology.write_config(POLICIES);
    println!("   working dir: {}", topology.dir().display());
    println!("   configuration: {}", config.display());

    let check = Command::new(cim_bin("cim-storage"))
        .args(["check-config", "--config"])
        .arg(&config)
        .status()?;
    if !check.success() {
        bail!("generated configuration is invalid");
    }

    let dir = topology.dir().to_path_buf();
    let ports = [free_port(), free_port(), free_port()];
    let role = |bin: &str, sub: &str, port: u16| {
        RoleProcess::spawn(
            &cim_bin(bin),
            &[
                sub,
                "--config",
                config.to_str().unwrap_or_default(),
                "--metrics-listen",
                &format!("127.0.0.1:{port}"),
            ],
            &dir.join(format!("{sub}.log")),
        )
    };
    let mut manager = role("cim-storage", "run", ports[0])?;
    let mut mirror = role("cim-storage", "mirror", ports[1])?;
    let mut upload = role("cim-gateway", "upload", ports[2])?;
    println!("== roles running as separate processes; Prometheus metrics:");
    for (name, port) in ["manager", "mirror", "upload"].iter().zip(ports) {
        println!("   {name:8} http://127.0.0.1:{port}/metrics");
    }

    let leaf_client = topology.leaf.connect().await?;
    let hub_client = topology.hub.connect().await?;
    let leaf = jetstream::new(leaf_client.clone());
    let hub = jetstream::new(hub_client.clone());
    let leaf_tier = JetStreamTier::new("leaf", "leaf", 1, leaf_client);
    let hub_tier = JetStreamTier::new("hub", "hub", 3, hub_client);
    let store = leaf
        .create_object_store(object_store::Config {
            bucket: BUCKET.into(),
            ..Default::default()
        })
        .await?;
    let objects: Vec<(String, Vec<u8>)> = vec![
        ("empty.bin".into(), Vec::new()),
        ("tiny.txt".into(), b"hello, tiers\n".to_vec()),
        ("readings/2026-11-26.csv".into(), sample(1, 300 * 1024)),
        ("camera/frame 0001.raw".into(), sample(2, 4 * 1024 * 1024)),
        ("archive/big.bin".into(), sample(3, 24 * 1024 * 1024)),
    ];
    println!(
        "== writing {} objects on the leaf, bucket {BUCKET:?}",
        objects.len()
    );
    for (name, data) in &objects {
        let mut reader = &data[..];
        let info = store.put(name.as_str(), &mut reader).await?;
        println!(
            "   {name:28} {:>10} B  {}",
            info.size,
            info.digest.unwrap_or_default()
        );
    }

    println!("== watching them move (policy: leaf→hub at once, hub→s3 after 5s)");
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let on_leaf = names(&leaf_tier, BUCKET).await;
        let on_hub = names(&hub_tier, BUCKET).await;
        let on_s3 = s3_listing(&config)?;
        let mut table = BTreeMap::new();
        for (name, _) in &objects {
            let mut places = Vec::new();
            for (tier, list) in [("leaf", &on_leaf), ("hub", &on_hub), ("s3", &on_s3)] {
                if list.contains(name) {
                    places.push(tier);
                }
            }
            table.insert(name.clone(), places.join("+"));
        }
        let line = table
            .iter()
            .map(|(n, p)| format!("   {n:28} {p}"))
            .collect::<Vec<_>>()
            .join("\n");
        if line != last {
            println!("-- t={:>4.1}s\n{line}", started.elapsed().as_secs_f64());
            last = line;
        }
        if table.values().all(|p| p == "s3") {
            break;
        }
        if started.elapsed() > Duration::from_secs(180) {
            topology.dump_logs();
            bail!(
                "objects did not reach s3 in time; logs are in {}",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    println!("== transfer metrics");
    for port in ports {
        let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
            .await?
            .text()
            .await?;
        for line in text
            .lines()
            .filter(|l| l.starts_with("cim_transfer") || l.starts_with("cim_evictions"))
            .filter(|l| !l.starts_with("cim_transfer_duration_seconds_bucket"))
        {
            println!("   {line}");
        }
    }

    println!("== restoring everything from S3 into the cluster (roles stopped first, or the move policy would evict again)");
    for r in [&mut manager, &mut mirror, &mut upload] {
        r.sigterm_and_wait(Duration::from_secs(10))?;
    }
    let out = Command::new(cim_bin("cim-gateway"))
        .args(["restore", "--config"])
        .arg(&config)
        .args(["--bucket", BUCKET, "--all"])
        .output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!("restore failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let hub_store = hub.get_object_store(BUCKET).await.context("hub bucket")?;
    for (name, data) in &objects {
        let mut object = hub_store.get(name.as_str()).await?;
        let mut restored = Vec::new();
        object.read_to_end(&mut restored).await?;
        if &restored != data {
            bail!("{name}: restored bytes differ");
        }
    }
    println!(
        "== all {} objects restored byte-identical, digests checked on every tier",
        objects.len()
    );

    if keep_running {
        println!(
            "== --keep-running: servers stay up; Ctrl-C to stop. NATS hub: {}",
            topology.hub.client_url()
        );
        tokio::signal::ctrl_c().await?;
    }
    Ok(())
}
