//! The whole test topology: hub cluster, leaf node and S3, in one temp dir.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context as _;
use tempfile::TempDir;

use crate::nats::{HUB_DOMAIN, LEAF_DOMAIN, PROBE_TIMEOUT, READY_TIMEOUT};
use crate::{free_port, tail_file, wait_for, Garage, Hub, Leaf};

/// How many lines of each log [`Topology::dump_logs`] prints.
pub const DUMP_LINES: usize = 40;

/// Hub cluster + leaf node + Garage, all on loopback in one temp dir.
///
/// Dropping it kills every server (leaf first), prints the log tails if the thread is
/// panicking, and removes the temp dir unless `CIM_KEEP_TEST_DIR` says otherwise (`1`: keep
/// it when panicking; `always`: keep it). Declare role processes *after* the topology so that
/// they are dropped (killed) before the servers.
#[derive(Debug)]
pub struct Topology {
    /// The leaf node (JetStream domain `leaf`).
    pub leaf: Leaf,
    /// The 3-node cluster (JetStream domain `hub`).
    pub hub: Hub,
    /// The S3 server.
    pub s3: Garage,
    /// The temp dir holding everything; dropped last.
    pub dir: TempDir,
    configs: AtomicUsize,
}

fn keep_dir_setting() -> Option<String> {
    std::env::var("CIM_KEEP_TEST_DIR")
        .ok()
        .filter(|v| !v.is_empty() && v != "0")
}

/// Recursively lists the `*.log` files under `dir`, sorted.
fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() && path.extension().is_some_and(|e| e == "log") => {
                    out.push(path)
                }
                _ => {}
            }
        }
    }
    out.sort();
    out
}

/// Merges `extra` into `base`: tables merge recursively, anything else is replaced.
fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge(b, e),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

impl Topology {
    /// Starts hub, leaf and Garage in a fresh temp dir and waits until all are ready (polling,
    /// typically 1–3 s), including JetStream requests across the leaf connection in both
    /// directions. Retries with new ports if a port turned out to be taken.
    pub async fn start() -> anyhow::Result<Topology> {
        let mut attempt = 1;
        loop {
            match Topology::start_once().await {
                Ok(t) => return Ok(t),
                Err(e)
                    if attempt < 3
                        && format!("{e:#}")
                            .to_lowercase()
                            .contains("address already in use") =>
                {
                    eprintln!("cim-tests: a port was taken, starting again: {e:#}");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn start_once() -> anyhow::Result<Topology> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("cim-test-")
            .tempdir()
            .context("create temp dir")?;
        let hub = Hub::launch(dir.path())?;
        let leaf = Leaf::launch(dir.path(), &hub)?;
        let s3 = Garage::launch(dir.path())?;
        let topology = Topology {
            leaf,
            hub,
            s3,
            dir,
            configs: AtomicUsize::new(0),
        };
        if let Err(e) = topology.wait_ready().await {
            eprintln!("cim-tests: topology did not become ready: {e:#}");
            topology.dump_logs();
            if keep_dir_setting().is_some() {
                let mut topology = topology;
                topology.dir.disable_cleanup(true);
                eprintln!("cim-tests: keeping {}", topology.dir.path().display());
            }
            return Err(e);
        }
        eprintln!(
            "cim-tests: topology ready in {:.2?} in {}",
            started.elapsed(),
            topology.dir().display()
        );
        Ok(topology)
    }

    /// Waits until hub, leaf and Garage are ready, and JetStream in domain `leaf` answers
    /// from a hub client (the path the hub's sourcing streams use).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        tokio::try_join!(
            self.hub.wait_ready(),
            self.leaf.wait_ready(),
            self.s3.wait_ready()
        )?;
        let client = self.hub.connect().await?;
        let mut leaf_js = async_nats::jetstream::with_domain(client, LEAF_DOMAIN);
        leaf_js.set_timeout(PROBE_TIMEOUT);
        wait_for("leaf JetStream from the hub", READY_TIMEOUT, || async {
            match leaf_js.query_account().await {
                Ok(_) => Ok(None),
                Err(e) => Ok(Some(e.to_string())),
            }
        })
        .await
    }

    /// The temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A complete cim config TOML for this topology, with `extra` (e.g. `[[policy]]` blocks)
    /// merged in: tables in `extra` merge into the generated ones key by key, other values
    /// (including arrays such as `[[policy]]`) replace or add. Each call picks a fresh
    /// `[metrics] listen` port, so give every process its own config.
    ///
    /// # Panics
    /// If `extra` is not valid TOML.
    pub fn config_toml(&self, extra: &str) -> String {
        let base = format!(
            r#"[nats]
url = "{hub_url}"
replicas = 3

[tiers.leaf]
kind = "jetstream"
url = "{leaf_url}"
domain = "{LEAF_DOMAIN}"
role = "leaf"

[tiers.hub]
kind = "jetstream"
domain = "{HUB_DOMAIN}"
replicas = 3

[tiers.s3]
kind = "s3"
endpoint = "{endpoint}"
region = "{region}"
bucket = "{bucket}"
prefix = "cim/"
flavor = "garage"
credentials_file = "{credentials}"

[metrics]
listen = "127.0.0.1:{metrics_port}"

[manager]
interval = "1s"

[work]
ack_wait = "5s"
"#,
            hub_url = self.hub.client_url(),
            leaf_url = self.leaf.client_url(),
            endpoint = self.s3.endpoint,
            region = self.s3.region,
            bucket = self.s3.bucket,
            credentials = self.s3.credentials_file().display(),
            metrics_port = free_port(),
        );
        if extra.trim().is_empty() {
            return base;
        }
        let mut table: toml::Table = toml::from_str(&base)
            .unwrap_or_else(|e| panic!("generated config is not valid TOML: {e}\n{base}"));
        let extra_table: toml::Table = toml::from_str(extra)
            .unwrap_or_else(|e| panic!("`extra` is not valid TOML: {e}\n{extra}"));
        merge(&mut table, extra_table);
        toml::to_string(&table).unwrap_or_else(|e| panic!("cannot serialize config: {e}"))
    }

    /// Writes [`Topology::config_toml`]`(extra)` to a new `cim-N.toml` in the temp dir and
    /// returns its path.
    pub fn write_config(&self, extra: &str) -> PathBuf {
        let n = self.configs.fetch_add(1, Ordering::SeqCst) + 1;
        let path = self.dir().join(format!("cim-{n}.toml"));
        std::fs::write(&path, self.config_toml(extra))
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    }

    /// Prints the last lines of every `*.log` file in the temp dir (servers and, if their
    /// logs are there, role processes) to stderr.
    pub fn dump_logs(&self) {
        for path in log_files(self.dir()) {
            let name = path.strip_prefix(self.dir()).unwrap_or(&path);
            eprintln!(
                "==== {} (last {DUMP_LINES} lines) ====\n{}",
                name.display(),
                tail_file(&path, DUMP_LINES)
            );
        }
    }

    /// Stops everything gracefully (SIGTERM; SIGKILL after a few seconds): leaf, hub, S3.
    pub fn stop(&mut self) {
        self.leaf.server.stop();
        self.hub.stop();
        self.s3.stop();
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if panicking {
            self.dump_logs();
        }
        self.leaf.server.kill();
        self.hub.kill();
        self.s3.kill();
        match keep_dir_setting().as_deref() {
            Some("always") => self.dir.disable_cleanup(true),
            Some(_) if panicking => self.dir.disable_cleanup(true),
            _ => {}
        }
        if panicking && keep_dir_setting().is_some() {
            eprintln!("cim-tests: keeping {}", self.dir().display());
        }
    }
}
