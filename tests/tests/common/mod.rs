//! Helpers shared by the end-to-end tests: sample data, role processes, tier inspection.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, object_store};
use cim_tests::{cim_bin, free_port, wait_until, RoleProcess, Topology};
use cim_tiering::catalog::{Catalog, Entry};
use cim_tiering::jetstream::JetStreamTier;
use cim_tiering::retry::{retry, Backoff};

/// Deterministic, poorly compressible content (xorshift), so compression cannot hide bugs.
pub fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Both hops under `move`, immediately: leaf → hub for buckets `sensors*`, hub → s3 for all.
pub const MOVE_ALL: &str = r#"
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
after = "0s"
"#;

/// Cluster → S3 under `move`, immediately.
pub const HUB_TO_S3: &str = r#"
[[policy]]
name = "cluster-to-s3"
buckets = ["*"]
from = "hub"
to = "s3"
action = "move"
after = "0s"
"#;

/// Waits until every named object of `bucket` is only in S3: absent from leaf and hub, the
/// catalog says "s3" only. Panics with the roles' logs after `timeout`.
pub async fn wait_only_in_s3(
    tiers: &Tiers,
    roles: &Roles,
    bucket: &str,
    names: &[&str],
    timeout: Duration,
) {
    let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    expected.sort();
    let result = wait_until("every object only in s3", timeout, || async {
        let catalog = tiers.catalog_locations(bucket).await;
        let only_s3 = expected
            .iter()
            .all(|n| catalog.get(n).is_some_and(|l| l == &vec!["s3".to_string()]));
        only_s3
            && Tiers::names(&tiers.leaf_tier, bucket).await.is_empty()
            && Tiers::names(&tiers.hub_tier, bucket).await.is_empty()
    })
    .await;
    if let Err(e) = result {
        panic!(
            "{e:#}\ncatalog: {:?}\nleaf: {:?}\nhub: {:?}\n{}",
            tiers.catalog_locations(bucket).await,
            Tiers::names(&tiers.leaf_tier, bucket).await,
            Tiers::names(&tiers.hub_tier, bucket).await,
            roles.logs()
        );
    }
}

/// The three long-running roles, each its own OS process with its own metrics port.
pub struct Roles {
    pub manager: RoleProcess,
    pub mirror: RoleProcess,
    pub upload: RoleProcess,
    pub manager_metrics: u16,
    pub mirror_metrics: u16,
    pub upload_metrics: u16,
    config: PathBuf,
    dir: PathBuf,
}

pub fn spawn_role(bin: &str, sub: &str, config: &Path, metrics: u16, log: &Path) -> RoleProcess {
    spawn_role_with_env(bin, sub, config, metrics, log, &[])
}

/// [`spawn_role`] with extra environment variables (e.g. `CIM_LOG_FORMAT`).
pub fn spawn_role_with_env(
    bin: &str,
    sub: &str,
    config: &Path,
    metrics: u16,
    log: &Path,
    env: &[(&str, &str)],
) -> RoleProcess {
    let listen = format!("127.0.0.1:{metrics}");
    RoleProcess::spawn_with_env(
        &cim_bin(bin),
        &[
            sub,
            "--config",
            config.to_str().unwrap(),
            "--metrics-listen",
            &listen,
        ],
        env,
        log,
    )
    .unwrap()
}

impl Roles {
    pub fn start(topology: &Topology, config: &Path) -> Roles {
        Roles::start_with_env(topology, config, &[])
    }

    /// [`Roles::start`] with extra environment variables for every role.
    pub fn start_with_env(topology: &Topology, config: &Path, env: &[(&str, &str)]) -> Roles {
        let dir = topology.dir().to_path_buf();
        let (manager_metrics, mirror_metrics, upload_metrics) =
            (free_port(), free_port(), free_port());
        Roles {
            manager: spawn_role_with_env(
                "cim-storage",
                "run",
                config,
                manager_metrics,
                &dir.join("manager.log"),
                env,
            ),
            mirror: spawn_role_with_env(
                "cim-storage",
                "mirror",
                config,
                mirror_metrics,
                &dir.join("mirror.log"),
                env,
            ),
            upload: spawn_role_with_env(
                "cim-gateway",
                "upload",
                config,
                upload_metrics,
                &dir.join("upload.log"),
                env,
            ),
            manager_metrics,
            mirror_metrics,
            upload_metrics,
            config: config.to_path_buf(),
            dir,
        }
    }

    /// Starts the upload role again on the same metrics port (and so with the same config
    /// file, read anew). A role still running is stopped first (SIGTERM): two would contend
    /// for the port, and the new one would exit.
    pub fn restart_upload(&mut self) {
        if self.upload.is_running() {
            let _ = self.upload.sigterm_and_wait(Duration::from_secs(10));
        }
        self.upload = spawn_role(
            "cim-gateway",
            "upload",
            &self.config,
            self.upload_metrics,
            &self.dir.join("upload-2.log"),
        );
    }

    pub fn logs(&self) -> String {
        format!(
            "--- manager ---\n{}\n--- mirror ---\n{}\n--- upload ---\n{}",
            tail(&self.manager.log()),
            tail(&self.mirror.log()),
            tail(&self.upload.log())
        )
    }

    pub fn stop(&mut self) {
        for role in [&mut self.manager, &mut self.mirror, &mut self.upload] {
            let _ = role.sigterm_and_wait(Duration::from_secs(10));
        }
    }
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Fetches a role's /metrics text.
pub async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A role's /metrics text, or nothing while its endpoint is not up yet.
pub async fn try_scrape(port: u16) -> String {
    match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Value of the sample whose line starts with `series` (name plus labels as rendered).
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Object-store contexts on both NATS sides.
pub struct Tiers {
    pub leaf: jetstream::Context,
    pub hub: jetstream::Context,
    /// The same tiers through the product's own listing (never hangs on concurrent purges,
    /// unlike async-nats' `list()`).
    pub leaf_tier: JetStreamTier,
    pub hub_tier: JetStreamTier,
    pub catalog: Catalog,
}

impl Tiers {
    pub async fn connect(topology: &Topology) -> Tiers {
        let leaf_client = topology.leaf.connect().await.unwrap();
        let hub_client = topology.hub.connect().await.unwrap();
        let leaf = jetstream::new(leaf_client.clone());
        let hub = jetstream::new(hub_client.clone());
        // As the roles do: on a loaded machine the meta leader can count a peer offline for a
        // moment right after the topology came up, and refuse an R3 bucket (err 10005).
        let catalog = retry("open catalog", Backoff::STARTUP, || {
            Catalog::open(&hub, "cim_catalog", 3)
        })
        .await
        .unwrap();
        Tiers {
            leaf,
            hub,
            leaf_tier: JetStreamTier::new("leaf", "leaf", 1, leaf_client),
            hub_tier: JetStreamTier::new("hub", "hub", 3, hub_client),
            catalog,
        }
    }

    pub async fn put_leaf(
        &self,
        bucket: &str,
        name: &str,
        data: &[u8],
    ) -> object_store::ObjectInfo {
        let store = match self.leaf.get_object_store(bucket).await {
            Ok(store) => store,
            Err(_) => self
                .leaf
                .create_object_store(object_store::Config {
                    bucket: bucket.to_string(),
                    ..Default::default()
                })
                .await
                .unwrap(),
        };
        let mut reader = data;
        store.put(name, &mut reader).await.unwrap()
    }

    /// Live object names; a listing error (a leader election, say) shows up as one
    /// `<error: ...>` entry, so polling conditions read it as "not yet" instead of panicking.
    pub async fn names(tier: &JetStreamTier, bucket: &str) -> Vec<String> {
        match tier.list_objects(bucket).await {
            Ok(listing) => listing.objects.into_iter().map(|v| v.info.name).collect(),
            Err(e) => vec![format!("<error: {e}>")],
        }
    }

    pub async fn read(
        js: &jetstream::Context,
        bucket: &str,
        name: &str,
    ) -> (Vec<u8>, object_store::ObjectInfo) {
        let store = js.get_object_store(bucket).await.unwrap();
        // The object store reads with direct gets, which any replica answers: one that has not
        // applied a write acknowledged by the others a moment ago answers "not found" for a
        // little while (JetStream's read-after-write on R3 streams). Ask again briefly.
        let mut attempts = 0;
        let mut object = loop {
            match store.get(name).await {
                Ok(object) => break object,
                Err(e) if e.kind() == object_store::GetErrorKind::NotFound && attempts < 50 => {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("read {bucket}/{name}: {e}"),
            }
        };
        let data = cim_tests::read_object_to_end(&mut object)
            .await
            .unwrap_or_else(|e| panic!("read {bucket}/{name}: {e}"));
        (data, object.info().clone())
    }

    pub async fn catalog_locations(&self, bucket: &str) -> BTreeMap<String, Vec<String>> {
        let entries: Vec<Entry> = self.catalog.entries().await.unwrap_or_default();
        entries
            .into_iter()
            .filter(|e| e.bucket == bucket)
            .map(|e| (e.name, e.locations.into_keys().collect()))
            .collect()
    }
}

/// The TOML of one more S3 tier `name` on the topology's Garage bucket, under `prefix`, at
/// `endpoint` (the topology's own, or one that fails on purpose).
pub fn s3_tier_toml(topology: &Topology, name: &str, endpoint: &str, prefix: &str) -> String {
    format!(
        r#"
[tiers.{name}]
kind = "s3"
endpoint = "{endpoint}"
region = "{region}"
bucket = "{bucket}"
prefix = "{prefix}"
flavor = "garage"
credentials_file = "{credentials}"
"#,
        region = topology.s3.region,
        bucket = topology.s3.bucket,
        credentials = topology.s3.credentials_file().display(),
    )
}

/// `tier.ensure_bucket(bucket)`, retried as a role's work item would be: on a loaded machine the
/// meta leader can count a peer offline for a moment and refuse an R3 bucket (err 10005), or
/// answer late (see `Tiers::connect`).
pub async fn ensure_bucket(tier: &JetStreamTier, bucket: &str) -> object_store::ObjectStore {
    retry("create bucket", Backoff::STARTUP, || {
        tier.ensure_bucket(bucket)
    })
    .await
    .unwrap_or_else(|e| panic!("create bucket {bucket} on {}: {e}", tier.name()))
}

/// Puts `data` as `bucket`/`name` straight into the hub tier (creating the bucket).
pub async fn put_hub(tiers: &Tiers, bucket: &str, name: &str, data: &[u8]) {
    let store = ensure_bucket(&tiers.hub_tier, bucket).await;
    let mut reader = data;
    store.put(name, &mut reader).await.unwrap();
}

/// Rewrites the current meta message of `bucket`/`name` in place (same nuid and chunks, rolled up
/// over the old one) after `edit` changed its JSON: how tests make a writer with a wrong clock, a
/// missing digest or a digest that lies.
pub async fn rewrite_meta(
    js: &jetstream::Context,
    bucket: &str,
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) {
    let stream = js
        .get_stream(cim_tiering::jetstream::stream_name(bucket))
        .await
        .unwrap();
    let subject = cim_tiering::jetstream::meta_subject(bucket, name);
    let last = stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .unwrap();
    let mut meta: serde_json::Value = serde_json::from_slice(&last.payload).unwrap();
    edit(&mut meta);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Rollup", "sub");
    js.publish_with_headers(subject, headers, serde_json::to_vec(&meta).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Runs `cim-gateway <args…> --config <config>` to its end.
pub fn gateway(config: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(cim_bin("cim-gateway"))
        .args(args)
        .args(["--config", config.to_str().unwrap()])
        .output()
        .unwrap()
}

/// The (bucket, name, digest) of every object `cim-gateway list --json` printed.
pub fn listed(out: &std::process::Output) -> Vec<(String, String, String)> {
    let listing: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("list --json: {e}\n{}", describe(out)));
    listing["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            let field = |k: &str| o[k].as_str().unwrap().to_string();
            (field("bucket"), field("name"), field("digest"))
        })
        .collect()
}

/// A finished command's status and output, for assertion messages.
pub fn describe(out: &std::process::Output) -> String {
    format!(
        "status {:?}\n--- stdout ---\n{}--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `cim-storage explain --json` of `bucket`/`name` under `config`, parsed; panics with the
/// command's output when it fails.
pub fn explain_json(config: &Path, bucket: &str, name: &str) -> serde_json::Value {
    let out = std::process::Command::new(cim_tests::cim_bin("cim-storage"))
        .args(["explain", "--json", "--config", config.to_str().unwrap()])
        .args(["--bucket", bucket, "--name", name])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The tier prefix of [`Topology::config_toml`]'s S3 tier.
pub const PREFIX: &str = "cim/";

/// Plants object `name` of `bucket` in S3 with a lying copy: a manifest that claims digest
/// `claimed`, and under `claimed`'s blob key a blob that holds `data` (which hashes otherwise).
/// A restore or read of it must fail its digest check; returns the manifest key.
pub async fn plant_lying(
    topology: &Topology,
    bucket: &str,
    name: &str,
    data: &[u8],
    claimed: &cim_tiering::digest::Sha256Digest,
) -> String {
    let bad_blob = cim_gateway::format::blob_key(PREFIX, claimed);
    topology
        .s3
        .client()
        .await
        .put_object()
        .bucket(&topology.s3.bucket)
        .key(&bad_blob)
        .body(zstd::encode_all(data, 3).unwrap().into())
        .send()
        .await
        .unwrap();
    plant(topology, bucket, name, data, |m| {
        m["digest"] = claimed.to_nats().into();
        m["sha256_hex"] = claimed.to_hex().into();
        m["blob_key"] = bad_blob.into();
    })
    .await
}

/// Plants object `name` of NATS bucket `bucket` directly in S3, blob and format-1 manifest as an
/// uploader writes them, after `tweak` edited the manifest's JSON; returns the manifest key.
pub async fn plant(
    topology: &Topology,
    bucket: &str,
    name: &str,
    data: &[u8],
    tweak: impl FnOnce(&mut serde_json::Value),
) -> String {
    let s3 = topology.s3.client().await;
    let digest = cim_tiering::digest::Sha256Digest::of(data);
    let blob = zstd::encode_all(data, 3).unwrap();
    let blob_key = cim_gateway::format::blob_key(PREFIX, &digest);
    s3.put_object()
        .bucket(&topology.s3.bucket)
        .key(&blob_key)
        .metadata("cim-sha256", digest.to_hex())
        .metadata("cim-size", data.len().to_string())
        .metadata("cim-compression", "zstd")
        .body(blob.clone().into())
        .send()
        .await
        .unwrap();
    let mut manifest = serde_json::json!({
        "format": 1,
        "bucket": bucket,
        "name": name,
        "size": data.len(),
        "digest": digest.to_nats(),
        "sha256_hex": digest.to_hex(),
        "compression": "zstd",
        "stored_size": blob.len(),
        "blob_key": blob_key,
        "description": null,
        "metadata": {},
        "headers": null,
        "modified": null,
        "uploaded_at": "2026-01-01T00:00:00Z",
        "source_tier": "hub",
        "source_nuid": "PLANTED",
    });
    tweak(&mut manifest);
    let key = cim_gateway::format::manifest_key(PREFIX, bucket, name);
    s3.put_object()
        .bucket(&topology.s3.bucket)
        .key(&key)
        .content_type("application/json")
        .body(serde_json::to_vec_pretty(&manifest).unwrap().into())
        .send()
        .await
        .unwrap();
    key
}

/// A client of the topology's S3 bucket under `prefix` (for reading what the roles wrote).
pub async fn s3_store(topology: &Topology, prefix: &str) -> cim_gateway::s3::S3Store {
    let tier = cim_policies::S3Tier {
        endpoint: Some(topology.s3.endpoint.clone()),
        region: topology.s3.region.clone(),
        bucket: topology.s3.bucket.clone(),
        prefix: prefix.into(),
        credentials_file: Some(topology.s3.credentials_file()),
        flavor: cim_policies::S3Flavor::Garage,
        force_path_style: true,
        retention: Duration::from_secs(90 * 86_400),
        verify: cim_policies::S3Verify::Crc32c,
    };
    cim_gateway::s3::S3Store::connect(&tier).await.unwrap()
}

/// Every message in the work stream: (subject, decoded JSON payload).
pub async fn work_messages(hub: &jetstream::Context) -> Vec<(String, serde_json::Value)> {
    let mut work = hub.get_stream("CIM_WORK").await.unwrap();
    let state = work.info().await.unwrap().state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        // Acked (work-queue) messages are gone; gaps are normal.
        if let Ok(message) = work.get_raw_message(seq).await {
            let value = serde_json::from_slice(&message.payload)
                .unwrap_or_else(|_| serde_json::Value::String("<not json>".into()));
            out.push((message.subject.to_string(), value));
        }
    }
    out
}

/// The JSON stored at `key` in the test's S3 bucket, `None` when there is no such key.
pub async fn s3_json(topology: &Topology, key: &str) -> Option<serde_json::Value> {
    let s3 = topology.s3.client().await;
    let response = s3
        .get_object()
        .bucket(&topology.s3.bucket)
        .key(key)
        .send()
        .await
        .ok()?;
    let bytes = response.body.collect().await.unwrap().into_bytes();
    Some(serde_json::from_slice(&bytes).unwrap())
}

/// Whether the test's S3 bucket holds `key`.
pub async fn s3_has(topology: &Topology, key: &str) -> bool {
    let s3 = topology.s3.client().await;
    s3.head_object()
        .bucket(&topology.s3.bucket)
        .key(key)
        .send()
        .await
        .is_ok()
}

/// The current manifest of `bucket`/`name` in the test's S3 bucket, as raw JSON.
pub async fn current_manifest(
    topology: &Topology,
    bucket: &str,
    name: &str,
) -> Option<serde_json::Value> {
    s3_json(
        topology,
        &cim_gateway::format::manifest_key(PREFIX, bucket, name),
    )
    .await
}

/// True when the current manifest says the object was deleted (a tombstone).
pub fn is_tombstone(manifest: &Option<serde_json::Value>) -> bool {
    manifest
        .as_ref()
        .is_some_and(|m| m.get("deleted").is_some_and(|d| !d.is_null()))
}
