//! Test kit for the cim workspace: real servers on loopback for end-to-end tests.
//!
//! The kit starts, inside one temporary directory per test:
//!
//! * a 3-node nats-server JetStream cluster, JetStream domain `hub` ([`Hub`]);
//! * an edge nats-server attached to the hub as a leaf node, JetStream domain `leaf` ([`Leaf`]);
//! * a single-node Garage S3 server with a key and a bucket ([`Garage`]);
//!
//! and runs our own role binaries (`cim-storage`, `cim-gateway`) against them
//! ([`RoleProcess`], [`cim_bin`]). [`Topology::start`] does all of it and polls readiness
//! (never fixed sleeps). Every server listens on `127.0.0.1` only, on ports from
//! [`free_port`]. Every child process is killed (SIGKILL) when its handle is dropped, panics
//! included.
//!
//! # Layout
//!
//! * `lib.rs` — binary lookup ([`nats_server_bin`], [`garage_bin`], [`cim_bin`]), [`free_port`],
//!   [`wait_until`] / [`wait_for`].
//! * `process.rs` — [`RoleProcess`] and the child-process handle shared by all servers.
//! * `nats.rs` — [`NatsServer`], [`Hub`], [`Leaf`].
//! * `garage.rs` — [`Garage`].
//! * `fault_proxy.rs` — [`FaultProxy`]: a proxy in front of S3 that corrupts request bodies on
//!   demand (bytes changed after the client hashed them).
//! * `prometheus.rs` — [`Prometheus`] (our own server scraping the roles, with a query helper)
//!   and [`Pushgateway`], for the observability tests.
//! * `topology.rs` — [`Topology`]: everything together, plus the cim config TOML for it.
//!
//! Inside the temp dir: `hub-1/`, `hub-2/`, `hub-3/`, `leaf/` (each with `server.conf`,
//! `server.log`, `jetstream/`), `garage/` (`garage.toml`, `garage.log`, `credentials`, `meta/`,
//! `data/`), and the `cim-N.toml` files from [`Topology::write_config`].
//!
//! # Environment
//!
//! * `CIM_NATS_SERVER`, `CIM_GARAGE`, `CIM_BIN_DIR` — override binary locations.
//! * `CIM_KEEP_TEST_DIR=1` keeps the temp dir of a test that panicked (`always` keeps every one).
//!
//! Tools are installed by `scripts/install-tools.sh`.

use std::collections::HashSet;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

mod fault_proxy;
mod garage;
mod nats;
mod process;
mod prometheus;
mod topology;

pub use fault_proxy::{Corrupted, FaultProxy, Rule};
pub use garage::{s3_client, Garage, GARAGE_READY_TIMEOUT};
pub use nats::{Hub, Leaf, NatsServer, HUB_DOMAIN, LEAF_DOMAIN, PROBE_TIMEOUT, READY_TIMEOUT};
pub use process::RoleProcess;
pub use prometheus::{
    prometheus_bin, promtool_bin, pushgateway_bin, Prometheus, Pushgateway, RuleHealth, Sample,
    Target, PROMETHEUS_READY_TIMEOUT, SCRAPE_INTERVAL,
};
pub use topology::{Topology, DUMP_LINES};

/// The nats-server version that `scripts/install-tools.sh` installs.
pub const NATS_SERVER_VERSION: &str = "2.15.1";
/// The Garage version that `scripts/install-tools.sh` installs.
pub const GARAGE_VERSION: &str = "2.5.0";

/// Looks for `name` in the directories of `$PATH`.
fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

/// Locates a tool: `$env_var` if set, else `well_known` if it exists, else `$PATH`, else
/// `well_known` (so that the spawn error names the expected place).
fn locate(env_var: &str, well_known: PathBuf, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return PathBuf::from(path);
    }
    if well_known.is_file() {
        return well_known;
    }
    which(name).unwrap_or(well_known)
}

/// The nats-server binary: `$CIM_NATS_SERVER`, else
/// `$HOME/.cache/cim-tools/venv/bin/nats-server`, else `nats-server` on `$PATH`.
///
/// The kit refuses to start servers older than 2.11 (Debian's 2.9 lacks what we need).
pub fn nats_server_bin() -> PathBuf {
    locate(
        "CIM_NATS_SERVER",
        home().join(".cache/cim-tools/venv/bin/nats-server"),
        "nats-server",
    )
}

/// The Garage binary: `$CIM_GARAGE`, else `$HOME/.cargo/bin/garage`, else `garage` on `$PATH`.
pub fn garage_bin() -> PathBuf {
    locate("CIM_GARAGE", home().join(".cargo/bin/garage"), "garage")
}

/// The directory holding the workspace's binaries: `$CIM_BIN_DIR`, else derived from the
/// running test executable (`target/<profile>/deps/<test>` → `target/<profile>/`).
pub fn cim_bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CIM_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    dir
}

/// One of our own role binaries (`cim-storage`, `cim-gateway`) from the workspace target dir
/// (see [`cim_bin_dir`]).
///
/// # Panics
/// If the binary does not exist: run `cargo build --workspace --bins` first.
pub fn cim_bin(name: &str) -> PathBuf {
    let path = cim_bin_dir().join(name);
    if !path.is_file() {
        panic!(
            "binary {name} not found at {}: run `cargo build --workspace --bins` first \
             (or set CIM_BIN_DIR)",
            path.display()
        );
    }
    path
}

/// Ports handed out by [`free_port`] in this process, never handed out twice.
fn handed_out() -> &'static Mutex<HashSet<u16>> {
    static PORTS: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    PORTS.get_or_init(|| Mutex::new(HashSet::new()))
}

/// A free TCP port on 127.0.0.1, never returned twice by this process.
///
/// Ports are picked at random in 20000–32767, below Linux's ephemeral range (32768–60999), so
/// that the outgoing connections of the servers (routes, leaf nodes, clients) cannot take a port
/// that a server of the same topology is about to bind; each candidate is checked by binding it.
/// Falls back to binding port 0 if no candidate is found.
pub fn free_port() -> u16 {
    let mut taken = handed_out().lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..500 {
        let port: u16 = rand::random_range(20000..32768);
        if taken.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return port;
        }
    }
    loop {
        let port = TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0: {e}"));
        if taken.insert(port) {
            return port;
        }
    }
}

/// How often the `wait_*` helpers poll.
pub const POLL_INTERVAL: Duration = Duration::from_millis(75);

/// Polls `f` every [`POLL_INTERVAL`] until it returns `true`; errors naming `what` after
/// `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, || {
        let fut = f();
        async move {
            if fut.await {
                Ok(None)
            } else {
                Ok(Some("condition still false".to_string()))
            }
        }
    })
    .await
}

/// Waits longer than this are reported on stderr by [`wait_for`], with the last reason.
pub const SLOW_WAIT: Duration = Duration::from_secs(2);

/// Polls `f` every [`POLL_INTERVAL`] until it returns `Ok(None)` (ready).
///
/// `Ok(Some(reason))` means "not yet" (the last reason is quoted in the timeout error);
/// `Err(e)` aborts the wait at once (e.g. a server process died).
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<String>>>,
{
    let start = Instant::now();
    let mut last: Option<String> = None;
    loop {
        let reason = match tokio::time::timeout(timeout, f()).await {
            Ok(Ok(None)) => {
                if start.elapsed() >= SLOW_WAIT {
                    eprintln!(
                        "cim-tests: waited {:.2?} for {what} (last: {})",
                        start.elapsed(),
                        last.as_deref().unwrap_or("-")
                    );
                }
                return Ok(());
            }
            Ok(Ok(Some(reason))) => reason,
            Ok(Err(e)) => return Err(e.context(format!("while waiting for {what}"))),
            Err(_) => "one poll took longer than the whole timeout".to_string(),
        };
        if start.elapsed() >= timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}: {reason}");
        }
        last = Some(reason);
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Reads `reader` to its end, like tokio's `read_to_end`, for async-nats' object reader.
///
/// async-nats 0.51's `Object` writes a chunk into the caller's buffer and then may return an
/// error for the same call ("wrong digest" when the chunks came from a replica that had not
/// stored them all yet, right after a write). tokio's `read_to_end` debug-asserts that an
/// error read nothing, so in a test build that turns a retryable error into a panic; a plain
/// `read` loop returns the error.
pub async fn read_object_to_end<R>(reader: &mut R) -> std::io::Result<Vec<u8>>
where
    R: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt as _;
    let mut data = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(data);
        }
        data.extend_from_slice(&buf[..n]);
    }
}

/// The last `n` lines of a text file (lossy UTF-8), or a note if it cannot be read.
pub fn tail_file(path: &Path, n: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Lower-case hex of `n` random bytes.
pub(crate) fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

/// An HTTP client for monitoring endpoints (plain http on loopback, short timeouts).
pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .no_proxy()
        .build()
        .unwrap_or_else(|e| panic!("reqwest client: {e}"))
}
