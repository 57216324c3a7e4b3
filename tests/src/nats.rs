//! nats-server processes: one server, the 3-node hub cluster and the leaf node.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use crate::process::Proc;
use crate::{free_port, http_client, nats_server_bin, tail_file, wait_for};

/// How long [`Hub::wait_ready`] and [`Leaf::wait_ready`] wait.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Timeout of each JetStream request made by the readiness probes: short, because the first
/// requests through a fresh leaf connection can be lost while interest propagates.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// JetStream domain of the hub cluster.
pub const HUB_DOMAIN: &str = "hub";
/// JetStream domain of the leaf node.
pub const LEAF_DOMAIN: &str = "leaf";

/// Checks once per process that the nats-server binary is recent enough.
fn check_version(bin: &Path) -> anyhow::Result<()> {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let out = Command::new(bin).arg("--version").output().map_err(|e| {
                format!(
                    "cannot run {} --version: {e} (run scripts/install-tools.sh)",
                    bin.display()
                )
            })?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            // "nats-server: v2.15.1"
            let version = text.trim().rsplit('v').next().unwrap_or("").to_string();
            let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
            let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
            if (major, minor) < (2, 11) {
                return Err(format!(
                    "{} is version {:?}, need >= 2.11 (2.15.1 expected; run scripts/install-tools.sh)",
                    bin.display(),
                    text.trim()
                ));
            }
            Ok(())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// One nats-server process with its config file, store dir and log in `dir`.
/// Killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct NatsServer {
    name: String,
    dir: PathBuf,
    client_port: u16,
    monitor_port: u16,
    proc: Proc,
}

impl NatsServer {
    /// Writes `dir/server.conf` = the `server_name`, `listen`, `http` lines and
    /// `jetstream { store_dir: dir/jetstream, domain }`, followed by `extra_config`; checks
    /// it with `nats-server -t`, and spawns the server (without waiting for readiness).
    pub fn launch(
        name: &str,
        dir: &Path,
        domain: &str,
        extra_config: &str,
    ) -> anyhow::Result<NatsServer> {
        let bin = nats_server_bin();
        check_version(&bin)?;
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let client_port = free_port();
        let monitor_port = free_port();
        let store = dir.join("jetstream");
        let config = format!(
            "server_name: {name:?}\n\
             listen: \"127.0.0.1:{client_port}\"\n\
             http: \"127.0.0.1:{monitor_port}\"\n\
             jetstream {{\n  store_dir: {store:?}\n  domain: {domain:?}\n}}\n\
             {extra_config}\n",
            store = store.display().to_string(),
        );
        let conf = dir.join("server.conf");
        std::fs::write(&conf, config).with_context(|| format!("write {}", conf.display()))?;
        let check = Command::new(&bin)
            .arg("-t")
            .arg("-c")
            .arg(&conf)
            .output()
            .with_context(|| format!("run {} -t", bin.display()))?;
        if !check.status.success() {
            anyhow::bail!(
                "nats-server rejects {}: {}{}",
                conf.display(),
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
        }
        let args: Vec<OsString> = vec!["-c".into(), conf.into_os_string()];
        let proc = Proc::new(&bin, &args, &[], &dir.join("server.log"));
        proc.spawn()?;
        Ok(NatsServer {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            client_port,
            monitor_port,
            proc,
        })
    }

    /// The `server_name`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's directory (config, log, `jetstream/` store).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The client port on 127.0.0.1.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn client_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// `http://127.0.0.1:PORT`, the monitoring endpoint.
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// SIGTERM and wait for the exit (SIGKILL after 5 s). A no-op if not running.
    pub fn stop(&mut self) {
        if self.proc.started() {
            let _ = self.proc.terminate(Duration::from_secs(5));
        }
    }

    /// SIGKILL and wait. A no-op if not running.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// Freezes the process (SIGSTOP): it keeps its connections open but answers nothing, like a
    /// hung server. Undo with [`NatsServer::resume`]; a paused server is killed normally on drop.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.proc.signal("STOP")
    }

    /// Lets a [`NatsServer::pause`]d process run again (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.proc.signal("CONT")
    }

    /// (Re)spawns the server with the same config and store dir; does not wait for readiness.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.proc.spawn()
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// The log file (appended to across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.proc.log_path().to_path_buf()
    }

    /// Started by us (not stopped or killed) — it may have crashed since.
    fn wanted(&self) -> bool {
        self.proc.started()
    }

    /// Errors (with the log tail) if the server was started but has exited.
    fn check_alive(&self) -> anyhow::Result<()> {
        if let Some(status) = self.proc.exit_status() {
            anyhow::bail!(
                "nats-server {} exited ({status}); log tail:\n{}",
                self.name,
                tail_file(self.proc.log_path(), 40)
            );
        }
        Ok(())
    }

    /// GETs a monitoring endpoint (`path` like `/jsz`) as JSON.
    pub async fn monitor_json(&self, path: &str) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.monitor_url());
        let resp = http_client().get(&url).send().await?;
        let status = resp.status();
        let body = resp.text().await?;
        if !status.is_success() {
            anyhow::bail!("GET {url}: {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("GET {url}: bad JSON"))
    }

    /// `Ok(None)` if `/healthz` answers 200, else the reason.
    async fn healthz(&self) -> Option<String> {
        match self.monitor_json("/healthz").await {
            Ok(_) => None,
            Err(e) => Some(format!("{}: /healthz: {e:#}", self.name)),
        }
    }

    /// The last sequence of stream `name` in this node's own store (its `/jsz`); `None` if
    /// the node does not answer or holds no such stream.
    pub async fn last_sequence(&self, name: &str) -> Option<u64> {
        let jsz = self.monitor_json("/jsz?streams=true").await.ok()?;
        jsz["account_details"]
            .as_array()?
            .iter()
            .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten())
            .find(|stream| stream["name"] == name)?["state"]["last_seq"]
            .as_u64()
    }

    /// Connects an async-nats client to this server only.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(self.client_url())
            .await
            .with_context(|| format!("connect to {} ({})", self.name, self.client_url()))
    }
}

/// The 3-node JetStream cluster, domain `hub`, with a leaf-node listener on every node.
#[derive(Debug)]
pub struct Hub {
    /// The nodes, named `hub-1`, `hub-2`, `hub-3`.
    pub nodes: Vec<NatsServer>,
    leafnode_ports: Vec<u16>,
}

impl Hub {
    /// Spawns the three nodes in `dir/hub-N/` (does not wait: see [`Hub::wait_ready`]).
    pub fn launch(dir: &Path) -> anyhow::Result<Hub> {
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let leafnode_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = cluster_ports
            .iter()
            .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::new();
        for i in 0..3 {
            let name = format!("hub-{}", i + 1);
            let extra = format!(
                "cluster {{\n  name: hub\n  listen: \"127.0.0.1:{}\"\n  routes: [{routes}]\n}}\n\
                 leafnodes {{\n  listen: \"127.0.0.1:{}\"\n}}\n",
                cluster_ports[i], leafnode_ports[i]
            );
            nodes.push(NatsServer::launch(
                &name,
                &dir.join(&name),
                HUB_DOMAIN,
                &extra,
            )?);
        }
        Ok(Hub {
            nodes,
            leafnode_ports,
        })
    }

    /// Comma-separated client URLs of all three nodes (`nats://a,nats://b,nats://c`).
    ///
    /// Note: async-nats does not split such a string; use [`Hub::client_urls`] or
    /// [`Hub::connect`] from Rust.
    pub fn client_url(&self) -> String {
        self.client_urls().join(",")
    }

    /// The client URLs of all three nodes.
    pub fn client_urls(&self) -> Vec<String> {
        self.nodes.iter().map(NatsServer::client_url).collect()
    }

    /// The leaf-node URLs (`nats-leaf://127.0.0.1:P`) of all three nodes.
    pub fn leafnode_urls(&self) -> Vec<String> {
        self.leafnode_ports
            .iter()
            .map(|p| format!("nats-leaf://127.0.0.1:{p}"))
            .collect()
    }

    /// Connects an async-nats client to the cluster (all three URLs; it reconnects to another
    /// node if its node goes away).
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(2))
            .connect(self.client_urls())
            .await
            .context("connect to the hub")
    }

    /// Waits until every running hub node holds stream `stream` up to the last sequence its
    /// leader reports now. A write is acknowledged once two of three replicas have it, and
    /// direct gets (the object store's reads and listings) may be answered by the third: read
    /// right after writes on a loaded machine, objects are "not found", missing from a listing,
    /// or end early.
    pub async fn settle(
        &self,
        js: &async_nats::jetstream::Context,
        stream: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let last = js
            .get_stream(stream)
            .await?
            .info()
            .await?
            .state
            .last_sequence;
        crate::wait_until(
            &format!("every hub replica of stream {stream} at sequence {last}"),
            timeout,
            || async {
                for node in self.nodes.iter().filter(|n| n.wanted()) {
                    if node.last_sequence(stream).await.unwrap_or(0) < last {
                        return false;
                    }
                }
                true
            },
        )
        .await
    }

    /// The index in [`Hub::nodes`] of the node with `server_name` `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The JetStream meta leader's `server_name`, as seen by the first node that answers.
    pub async fn meta_leader(&self) -> anyhow::Result<String> {
        let mut last = anyhow::anyhow!("no hub node is running");
        for node in self.nodes.iter().filter(|n| n.wanted()) {
            match node.monitor_json("/jsz").await {
                Ok(jsz) => {
                    if let Some(leader) = jsz["meta_cluster"]["leader"].as_str() {
                        if !leader.is_empty() {
                            return Ok(leader.to_string());
                        }
                    }
                    last = anyhow::anyhow!("{}: no meta leader", node.name);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// One readiness poll: `Ok(None)` when ready, `Ok(Some(reason))` if not yet.
    async fn ready_once(&self) -> anyhow::Result<Option<String>> {
        let running: Vec<&NatsServer> = self.nodes.iter().filter(|n| n.wanted()).collect();
        if running.is_empty() {
            anyhow::bail!("no hub node is running");
        }
        let names: HashSet<&str> = running.iter().map(|n| n.name.as_str()).collect();
        let mut leaders = HashSet::new();
        for node in &running {
            node.check_alive()?;
            if let Some(reason) = node.healthz().await {
                return Ok(Some(reason));
            }
            let routez = match node.monitor_json("/routez").await {
                Ok(v) => v,
                Err(e) => return Ok(Some(format!("{}: {e:#}", node.name))),
            };
            let peers: HashSet<&str> = routez["routes"]
                .as_array()
                .map(|routes| {
                    routes
                        .iter()
                        .filter_map(|r| r["remote_name"].as_str())
                        .collect()
                })
                .unwrap_or_default();
            for other in names.iter().filter(|n| **n != node.name) {
                if !peers.contains(other) {
                    return Ok(Some(format!("{}: no route to {other} yet", node.name)));
                }
            }
            let jsz = match node.monitor_json("/jsz").await {
                Ok(v) => v,
                Err(e) => return Ok(Some(format!("{}: {e:#}", node.name))),
            };
            match jsz["meta_cluster"]["leader"].as_str() {
                Some(leader) if !leader.is_empty() => {
                    leaders.insert(leader.to_string());
                }
                _ => return Ok(Some(format!("{}: no meta leader yet", node.name))),
            }
        }
        if leaders.len() != 1 {
            return Ok(Some(format!(
                "nodes disagree on the meta leader: {leaders:?}"
            )));
        }
        let leader = leaders.into_iter().next().unwrap_or_default();
        // The leader's view of its followers: every running node must be current.
        if let Some(node) = running.iter().find(|n| n.name == leader) {
            let jsz = match node.monitor_json("/jsz").await {
                Ok(v) => v,
                Err(e) => return Ok(Some(format!("{}: {e:#}", node.name))),
            };
            let replicas = jsz["meta_cluster"]["replicas"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for other in names.iter().filter(|n| **n != leader) {
                let current = replicas.iter().any(|r| {
                    r["name"].as_str() == Some(other) && r["current"].as_bool() == Some(true)
                });
                if !current {
                    return Ok(Some(format!(
                        "meta leader {leader} does not see {other} as current yet"
                    )));
                }
            }
        }
        Ok(None)
    }

    /// Waits until every running node answers `/healthz`, has routes to the other running
    /// nodes, agrees on a JetStream meta leader, and the leader sees every running node as
    /// current; then that JetStream answers in domain `hub`. Errors at once if a node died.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        wait_for("hub cluster ready", READY_TIMEOUT, || self.ready_once()).await?;
        let client = self.connect().await?;
        let mut js = async_nats::jetstream::with_domain(client, HUB_DOMAIN);
        js.set_timeout(PROBE_TIMEOUT);
        wait_for("hub JetStream account info", READY_TIMEOUT, || async {
            match js.query_account().await {
                Ok(_) => Ok(None),
                Err(e) => Ok(Some(e.to_string())),
            }
        })
        .await?;
        // The meta leader may see every node as current and still place nothing on them for a
        // moment: right after start, creating an R3 bucket failed with "no suitable peers for
        // placement" (err 10005; two tests at once in CI). With every node running, wait
        // until a replicated stream can be placed (a probe, deleted again).
        if self.nodes.iter().all(|n| n.wanted()) {
            let probe = format!("CIM_READY_{}", free_port());
            let replicas = self.nodes.len();
            wait_for("hub places a replicated stream", READY_TIMEOUT, || async {
                let config = async_nats::jetstream::stream::Config {
                    name: probe.clone(),
                    subjects: vec![format!("cim.ready.{probe}")],
                    num_replicas: replicas,
                    storage: async_nats::jetstream::stream::StorageType::Memory,
                    ..Default::default()
                };
                match js.create_stream(config).await {
                    Ok(_) => Ok(None),
                    Err(e) => Ok(Some(e.to_string())),
                }
            })
            .await?;
            let _ = js.delete_stream(&probe).await;
        }
        Ok(())
    }

    /// Stops every node (SIGTERM, then SIGKILL after a few seconds).
    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }

    /// Kills every node.
    pub fn kill(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
    }
}

/// The edge server: JetStream domain `leaf`, a leaf-node remote to all three hub nodes that
/// denies `$O.>` both ways (otherwise the hub's sourcing stream would capture every object
/// chunk a second time through leaf-node interest).
#[derive(Debug)]
pub struct Leaf {
    /// The server, named `leaf`.
    pub server: NatsServer,
}

impl Leaf {
    /// Spawns the leaf server in `dir/leaf/` (does not wait: see [`Leaf::wait_ready`]).
    pub fn launch(dir: &Path, hub: &Hub) -> anyhow::Result<Leaf> {
        let urls = hub
            .leafnode_urls()
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let extra = format!(
            "leafnodes {{\n  remotes: [\n    {{\n      urls: [{urls}]\n      \
             deny_imports: [\"$O.>\"]\n      deny_exports: [\"$O.>\"]\n    }}\n  ]\n}}\n"
        );
        let server = NatsServer::launch("leaf", &dir.join("leaf"), LEAF_DOMAIN, &extra)?;
        Ok(Leaf { server })
    }

    /// `nats://127.0.0.1:PORT` of the leaf server.
    pub fn client_url(&self) -> String {
        self.server.client_url()
    }

    /// Connects an async-nats client to the leaf server.
    pub async fn connect(&self) -> anyhow::Result<async_nats::Client> {
        self.server.connect().await
    }

    async fn ready_once(&self) -> anyhow::Result<Option<String>> {
        self.server.check_alive()?;
        if let Some(reason) = self.server.healthz().await {
            return Ok(Some(reason));
        }
        let leafz = match self.server.monitor_json("/leafz").await {
            Ok(v) => v,
            Err(e) => return Ok(Some(format!("leaf: {e:#}"))),
        };
        let count = leafz["leafnodes"].as_u64().unwrap_or(0);
        let listed = leafz["leafs"].as_array().map_or(0, Vec::len);
        if count == 0 && listed == 0 {
            return Ok(Some("leaf: remote not connected yet".to_string()));
        }
        Ok(None)
    }

    /// Waits until `/healthz` is ok, `/leafz` shows the remote connected, and JetStream
    /// answers through a leaf client both locally (domain `leaf`) and in domain `hub`.
    /// Errors at once if the server died.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        wait_for("leaf node ready", READY_TIMEOUT, || self.ready_once()).await?;
        let client = self.connect().await?;
        let mut local = async_nats::jetstream::new(client.clone());
        local.set_timeout(PROBE_TIMEOUT);
        let mut hub = async_nats::jetstream::with_domain(client, HUB_DOMAIN);
        hub.set_timeout(PROBE_TIMEOUT);
        wait_for("JetStream through the leaf", READY_TIMEOUT, || async {
            self.server.check_alive()?;
            if let Err(e) = local.query_account().await {
                return Ok(Some(format!("leaf JetStream: {e}")));
            }
            if let Err(e) = hub.query_account().await {
                return Ok(Some(format!("hub JetStream from the leaf: {e}")));
            }
            Ok(None)
        })
        .await
    }
}
