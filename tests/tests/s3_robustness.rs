//! The S3 side under stress: an endpoint that never answers, identical content uploaded twice
//! at once, and blobs or sources that fail verification. Real servers throughout (3-node hub,
//! leaf, Garage); the only stand-in is a TCP listener that accepts and never answers, which is
//! what a hung S3 endpoint looks like from the client.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cim_gateway::s3::S3Store;
use cim_tests::{cim_bin, free_port, wait_until, RoleProcess, Topology};
use cim_tiering::digest::Sha256Digest;
use common::{content, put_hub, rewrite_meta, sample, scrape, spawn_role, try_scrape, Tiers};
use tokio::net::{TcpListener, TcpStream};

/// Only hub → S3, immediately (objects are written straight into hub buckets).
const HUB_TO_S3: &str = r#"
[[policy]]
name = "hub-to-s3"
buckets = ["*"]
from = "hub"
to = "s3"
action = "move"
after = "0s"
"#;

/// How long a command may take against an S3 endpoint that never answers before the test calls
/// it hung. Well above the client's deadlines (`cim_gateway::s3::REQUEST_TIMEOUT`), far below
/// "forever".
const HANG_BOUND: Duration = Duration::from_secs(90);

/// A TCP listener on 127.0.0.1 that accepts every connection and never sends a byte (the
/// connections are kept open, so the client sees neither an answer nor a reset).
struct SilentEndpoint {
    port: u16,
    accepted: Arc<Mutex<Vec<TcpStream>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SilentEndpoint {
    async fn start() -> SilentEndpoint {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(Mutex::new(Vec::new()));
        let keep = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                keep.lock().unwrap().push(stream);
            }
        });
        SilentEndpoint {
            port,
            accepted,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn connections(&self) -> usize {
        self.accepted.lock().unwrap().len()
    }
}

impl Drop for SilentEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Config for this topology with the S3 tier pointed at `endpoint` (when given).
fn config_with_s3(topology: &Topology, endpoint: Option<&str>, extra: &str) -> std::path::PathBuf {
    let s3 = endpoint
        .map(|e| format!("[tiers.s3]\nendpoint = \"{e}\"\n"))
        .unwrap_or_default();
    topology.write_config(&format!("{s3}{HUB_TO_S3}{extra}"))
}

/// Waits for `child` to exit on its own within `bound`; kills it and panics otherwise.
async fn wait_exit(mut child: Child, what: &str, bound: Duration) -> std::process::Output {
    let exited = wait_until(what, bound, || {
        let done = child.try_wait().unwrap().is_some();
        async move { done }
    })
    .await;
    if let Err(e) = exited {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "{e:#}: it hangs\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child.wait_with_output().unwrap()
}

fn upload_role(config: &Path, dir: &Path, log: &str) -> (RoleProcess, u16) {
    let port = free_port();
    let role = spawn_role("cim-gateway", "upload", config, port, &dir.join(log));
    (role, port)
}

fn manager_role(config: &Path, dir: &Path) -> (RoleProcess, u16) {
    let port = free_port();
    let role = spawn_role("cim-storage", "run", config, port, &dir.join("manager.log"));
    (role, port)
}

/// The first log line containing every needle, if any.
fn log_line(log: &str, needles: &[&str]) -> Option<String> {
    log.lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
}

async fn wait_log_line(role: &RoleProcess, needles: &[&str], bound: Duration) -> String {
    let found = wait_until(&format!("a log line with {needles:?}"), bound, || {
        let hit = log_line(&role.log(), needles).is_some();
        async move { hit }
    })
    .await;
    if let Err(e) = found {
        panic!("{e:#}\nlog:\n{}", role.log());
    }
    log_line(&role.log(), needles).unwrap()
}

async fn s3_store(topology: &Topology) -> S3Store {
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
    S3Store::connect(&tier).await.unwrap()
}

/// Waits until the catalog places `bucket`/`name` in S3 only and its manifest is there.
async fn wait_in_s3(
    tiers: &Tiers,
    s3: &S3Store,
    bucket: &str,
    name: &str,
    logs: &dyn Fn() -> String,
) {
    let arrived = wait_until(
        &format!("{bucket}/{name} in s3"),
        Duration::from_secs(120),
        || async {
            let catalog = tiers.catalog_locations(bucket).await;
            catalog
                .get(name)
                .is_some_and(|l| l == &vec!["s3".to_string()])
                && matches!(s3.get_manifest(bucket, name).await, Ok(Some(_)))
        },
    )
    .await;
    if let Err(e) = arrived {
        panic!(
            "{e:#}\ncatalog: {:?}\n{}",
            tiers.catalog_locations(bucket).await,
            logs()
        );
    }
}

/// Item 11 (S3 half): an S3 endpoint that accepts connections and never answers. `list` gives
/// up within a bounded time naming the operation and the endpoint; the upload role logs a
/// timeout naming the object, keeps running, answers SIGTERM, and the item is not lost: an
/// upload role pointed at the real S3 finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_endpoint_that_never_answers_hangs_nothing() {
    let topology = Topology::start().await.unwrap();
    let silent = SilentEndpoint::start().await;
    // An ack_wait above the S3 deadlines, as in the defaults (60 s), so the S3 timeout fires
    // before the worker's no-progress watchdog (which would also end the hang, differently).
    let config = config_with_s3(
        &topology,
        Some(&silent.url()),
        "\n[work]\nack_wait = \"60s\"\n",
    );

    // (a) `list` exits non-zero within a bounded time, naming the operation and endpoint.
    let child = Command::new(cim_bin("cim-gateway"))
        .args(["list", "--config", config.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_exit(child, "`cim-gateway list` to exit", HANG_BOUND).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "list must fail: {stderr}");
    assert!(silent.connections() > 0, "list never reached the endpoint");
    assert!(
        stderr.contains("list_objects_v2") && stderr.contains(&silent.url()),
        "the error must name the operation and the endpoint: {stderr}"
    );
    assert!(
        stderr.to_lowercase().contains("timed out") || stderr.to_lowercase().contains("timeout"),
        "the error must say it timed out: {stderr}"
    );

    // (b) the upload role with an object to upload.
    let tiers = Tiers::connect(&topology).await;
    let (bucket, name) = ("robust-hang", "waits/for-s3");
    let data = content(1100, 300_000);
    put_hub(&tiers, bucket, name, &data).await;
    let dir = topology.dir().to_path_buf();
    let (mut manager, _) = manager_role(&config, &dir);
    let (mut upload, _) = upload_role(&config, &dir, "upload-silent.log");
    let line = wait_log_line(&upload, &["will retry", name], HANG_BOUND).await;
    assert!(
        line.to_lowercase().contains("timed out") || line.to_lowercase().contains("timeout"),
        "the retry must be for a timeout: {line}"
    );
    assert!(upload.is_running(), "the upload role must keep running");
    upload
        .sigterm_and_wait(Duration::from_secs(15))
        .unwrap_or_else(|e| panic!("{e:#}\n{}", upload.log()));

    // The item is not lost: the same role against the real S3 finishes it.
    let real = config_with_s3(&topology, None, "");
    let (mut upload, _) = upload_role(&real, &dir, "upload-real.log");
    let s3 = s3_store(&topology).await;
    wait_in_s3(&tiers, &s3, bucket, name, &|| upload.log()).await;
    let manifest = s3.get_manifest(bucket, name).await.unwrap().unwrap();
    let mut restored = Vec::new();
    s3.read_verified(&manifest, &mut restored).await.unwrap();
    assert!(restored == data, "{name} differs in s3");
    assert_eq!(manifest.digest, Sha256Digest::of(&data));
    let _ = upload.sigterm_and_wait(Duration::from_secs(15));
    let _ = manager.sigterm_and_wait(Duration::from_secs(15));
}

/// Item 5: two objects with the same incompressible 20 MiB content (multipart-sized) under
/// different names, uploaded at the same time by one upload role (concurrency 4). Both end in S3,
/// and neither upload is terminated because the other aborted its multipart upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn identical_content_in_flight_twice_both_finish() {
    let topology = Topology::start().await.unwrap();
    let config = config_with_s3(&topology, None, "[work]\nconcurrency = 4\n");
    let tiers = Tiers::connect(&topology).await;
    let bucket = "robust-twins";
    let names = ["twin-a", "twin-b"];
    let data = content(1200, 20 * 1024 * 1024);
    for name in names {
        put_hub(&tiers, bucket, name, &data).await;
    }
    let dir = topology.dir().to_path_buf();
    let (mut manager, _) = manager_role(&config, &dir);
    let (mut upload, upload_port) = upload_role(&config, &dir, "upload-twins.log");
    let s3 = s3_store(&topology).await;

    // Both in S3, or one terminated (what happened before leases).
    let settled = wait_until("both twins in s3, or one failed", HANG_BOUND, || async {
        let failed = sample(
            &try_scrape(upload_port).await,
            "cim_work_items_total",
            &[("role", "upload"), ("outcome", "given_up")],
        );
        if failed.unwrap_or(0.0) > 0.0 {
            return true;
        }
        let catalog = tiers.catalog_locations(bucket).await;
        names.iter().all(|n| {
            catalog
                .get(*n)
                .is_some_and(|l| l == &vec!["s3".to_string()])
        })
    })
    .await;
    let metrics = scrape(upload_port).await;
    let log = upload.log();
    settled.unwrap_or_else(|e| panic!("{e:#}\n{log}"));
    for terminated in ["permanently", "giving up"] {
        if let Some(line) = log_line(&log, &[terminated]) {
            panic!("an upload was terminated: {line}");
        }
    }
    assert_eq!(
        sample(
            &metrics,
            "cim_work_items_total",
            &[("role", "upload"), ("outcome", "given_up")]
        )
        .unwrap_or(0.0),
        0.0,
        "no upload item may fail"
    );
    for name in names {
        let manifest = s3.get_manifest(bucket, name).await.unwrap().unwrap();
        let mut restored = Vec::new();
        s3.read_verified(&manifest, &mut restored).await.unwrap();
        assert!(restored == data, "{name} differs in s3");
    }
    assert!(s3.list_multipart_uploads().await.unwrap().is_empty());
    let _ = upload.sigterm_and_wait(Duration::from_secs(15));
    let _ = manager.sigterm_and_wait(Duration::from_secs(15));
}
/// Sum of `cim_work_items_total{role}` over every outcome: the items a role has handled.
fn work_items_handled(metrics: &str, role: &str) -> f64 {
    ["done", "retry", "given_up", "invalid"]
        .iter()
        .filter_map(|outcome| {
            sample(
                metrics,
                "cim_work_items_total",
                &[("role", role), ("outcome", outcome)],
            )
        })
        .sum()
}

/// Whether the catalog entry of `bucket`/`name` is for version `digest` and marks it damaged
/// (read as raw JSON: the field is optional).
async fn damaged_in_catalog(
    tiers: &Tiers,
    bucket: &str,
    name: &str,
    digest: &Sha256Digest,
) -> bool {
    let Ok(kv) = tiers.hub.get_key_value("cim_catalog").await else {
        return false;
    };
    let Ok(Some(value)) = kv.get(cim_tiering::catalog::key(bucket, name)).await else {
        return false;
    };
    let entry: serde_json::Value = serde_json::from_slice(&value).unwrap();
    entry["digest"] == serde_json::to_value(digest).unwrap() && !entry["damaged"].is_null()
}

/// Item 7 (a): a blob already in S3 under the right key with matching metadata but wrong bytes
/// (bit rot, tampering). The upload finds it, fails to verify it, counts and logs that naming the
/// object, uploads the blob again from the hub and verifies again: the object ends in S3
/// verified, and restores byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_blob_in_s3_is_repaired_from_the_verified_source() {
    let topology = Topology::start().await.unwrap();
    let config = config_with_s3(&topology, None, "");
    let tiers = Tiers::connect(&topology).await;
    let (bucket, name) = ("robust-repair", "victim");
    let data = content(1300, 300_000);
    let digest = Sha256Digest::of(&data);

    // Plant the bad blob: right key, right metadata, other (valid zstd) bytes.
    let raw = topology.s3.client().await;
    raw.put_object()
        .bucket(&topology.s3.bucket)
        .key(cim_gateway::format::blob_key("cim/", &digest))
        .metadata("cim-sha256", digest.to_hex())
        .metadata("cim-size", data.len().to_string())
        .metadata("cim-compression", "zstd")
        .body(
            zstd::encode_all(&content(1301, 300_000)[..], 3)
                .unwrap()
                .into(),
        )
        .send()
        .await
        .unwrap();

    put_hub(&tiers, bucket, name, &data).await;
    let dir = topology.dir().to_path_buf();
    let (mut manager, _) = manager_role(&config, &dir);
    let (mut upload, upload_port) = upload_role(&config, &dir, "upload-repair.log");
    let s3 = s3_store(&topology).await;
    wait_in_s3(&tiers, &s3, bucket, name, &|| upload.log()).await;

    let metrics = scrape(upload_port).await;
    assert!(
        sample(&metrics, "cim_integrity_failures_total", &[("tier", "s3")]).unwrap_or(0.0) >= 1.0,
        "the bad blob must be counted:\n{metrics}"
    );
    let log = upload.log();
    assert!(
        log_line(&log, &["integrity check failed", name]).is_some(),
        "the bad blob must be logged naming the object:\n{log}"
    );
    let manifest = s3.get_manifest(bucket, name).await.unwrap().unwrap();
    let mut restored = Vec::new();
    s3.read_verified(&manifest, &mut restored).await.unwrap();
    assert!(restored == data, "the repaired blob differs");
    let _ = upload.sigterm_and_wait(Duration::from_secs(15));
    let _ = manager.sigterm_and_wait(Duration::from_secs(15));

    // The hub copy was evicted (move): restore brings it back byte for byte.
    assert!(Tiers::names(&tiers.hub_tier, bucket).await.is_empty());
    let out = Command::new(cim_bin("cim-gateway"))
        .args(["restore", "--config", config.to_str().unwrap()])
        .args(["--bucket", bucket, "--name", name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(Tiers::read(&tiers.hub, bucket, name).await.0 == data);
}

/// Item 7 (b): an object on the hub whose chunks do not match its digest (its meta claims
/// another digest), and no blob in S3: no verified copy is left anywhere. The upload role marks
/// the version damaged in the catalog, counts and logs it once, and the manager stops
/// dispatching it: over further manager passes the upload role handles no further item for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_object_with_no_verified_copy_is_marked_damaged_once() {
    let topology = Topology::start().await.unwrap();
    let config = config_with_s3(&topology, None, "");
    let tiers = Tiers::connect(&topology).await;
    let (bucket, name) = ("robust-rot", "rotten");
    let data = content(1400, 300_000);
    put_hub(&tiers, bucket, name, &data).await;

    // Rewrite the meta message (rolled up, as the object store does) to claim another digest
    // for the same chunks and size.
    let claimed = Sha256Digest::of(&content(1401, 300_000));
    rewrite_meta(&tiers.hub, bucket, name, |m| {
        m["digest"] = serde_json::Value::String(claimed.to_nats())
    })
    .await;

    let dir = topology.dir().to_path_buf();
    let (mut manager, manager_port) = manager_role(&config, &dir);
    let (mut upload, upload_port) = upload_role(&config, &dir, "upload-rot.log");

    // Marked damaged, or a second attempt at it (what happened before: retried forever).
    let settled = wait_until("damaged, or a second attempt", HANG_BOUND, || async {
        damaged_in_catalog(&tiers, bucket, name, &claimed).await
            || work_items_handled(&try_scrape(upload_port).await, "upload") >= 2.0
    })
    .await;
    settled.unwrap_or_else(|e| panic!("{e:#}\n{}", upload.log()));

    // Let the manager pass over it a few more times: nothing more may be dispatched or handled.
    let passes = |m: &str| sample(m, "cim_manager_passes_total", &[]).unwrap_or(0.0);
    let start = passes(&try_scrape(manager_port).await);
    wait_until("three more manager passes", HANG_BOUND, || async {
        passes(&try_scrape(manager_port).await) >= start + 3.0
    })
    .await
    .unwrap();
    let upload_metrics = scrape(upload_port).await;
    let manager_metrics = scrape(manager_port).await;
    let log = upload.log();
    assert_eq!(
        work_items_handled(&upload_metrics, "upload"),
        1.0,
        "one attempt, no retries or re-dispatches:\n{upload_metrics}\n{log}"
    );
    assert!(
        damaged_in_catalog(&tiers, bucket, name, &claimed).await,
        "the catalog must mark the version damaged: {:?}",
        tiers.catalog.get(bucket, name).await
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("marked damaged") && l.contains(name))
            .count(),
        1,
        "reported exactly once:\n{log}"
    );
    assert_eq!(
        sample(
            &upload_metrics,
            "cim_integrity_failures_total",
            &[("tier", "hub")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &upload_metrics,
            "cim_damaged_objects_total",
            &[("tier", "hub")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &manager_metrics,
            "cim_backlog_objects",
            &[("from_tier", "hub"), ("to_tier", "s3")]
        ),
        Some(0.0),
        "a damaged version is not due for a move"
    );
    // The object itself is left where it is, for an operator to look at.
    assert_eq!(Tiers::names(&tiers.hub_tier, bucket).await, vec![name]);
    let _ = upload.sigterm_and_wait(Duration::from_secs(15));
    let _ = manager.sigterm_and_wait(Duration::from_secs(15));
}
