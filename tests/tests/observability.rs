//! What an operator sees of the running roles, on real servers: each role's HTTP endpoint
//! (`/metrics`, `/healthz`, `/readyz`), JSON logs that follow an object through every role, the
//! S3 request counters, and the state the roles keep in NATS.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use cim_tests::{cim_bin, wait_until, Topology};
use cim_tiering::status::StatusBucket;
use common::{content, describe, Roles, Tiers};

/// Both hops under `move`, immediately.
const MOVE_ALL: &str = r#"
[[policy]]
name = "edge-to-cluster"
buckets = ["*"]
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

const WAIT: Duration = Duration::from_secs(60);

/// `GET http://127.0.0.1:<port><path>`: status and body, or status 0 and the error when no
/// answer came.
async fn get(port: u16, path: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    match client
        .get(format!("http://127.0.0.1:{port}{path}"))
        .send()
        .await
    {
        Ok(response) => (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        ),
        Err(e) => (0, e.to_string()),
    }
}

/// Waits until `GET path` answers `status`, failing with the last answer and the role logs.
async fn wait_status(roles: &Roles, port: u16, path: &str, status: u16) -> String {
    let last = std::sync::Mutex::new((0, String::new()));
    let waited = wait_until(
        &format!("{path} on :{port} to answer {status}"),
        WAIT,
        || async {
            let answer = get(port, path).await;
            let ok = answer.0 == status;
            *last.lock().unwrap() = answer;
            ok
        },
    )
    .await;
    let (got, body) = last.into_inner().unwrap();
    if let Err(e) = waited {
        panic!("{e:#}: last answer {got} {body:?}\n{}", roles.logs());
    }
    body
}

#[tokio::test]
async fn every_role_is_alive_and_ready_and_the_uploader_is_not_ready_without_s3() {
    let mut topology = Topology::start().await.unwrap();
    let config = topology.write_config(MOVE_ALL);
    let mut roles = Roles::start(&topology, &config);
    let ports = [
        ("manager", roles.manager_metrics),
        ("mirror", roles.mirror_metrics),
        ("upload", roles.upload_metrics),
    ];
    for (role, port) in ports {
        assert_eq!(
            wait_status(&roles, port, "/readyz", 200).await,
            "ready\n",
            "{role}"
        );
        assert_eq!(get(port, "/healthz").await, (200, "ok\n".into()), "{role}");
        // Prometheus text (possibly empty: a role that has counted nothing yet).
        let (status, metrics) = get(port, "/metrics").await;
        assert_eq!(status, 200, "{role}");
        assert!(
            metrics.lines().all(|l| l.is_empty()
                || l.starts_with('#')
                || l.starts_with("cim_")
                || l.starts_with("process_")),
            "{role}: {metrics}"
        );
        assert_eq!(get(port, "/nothing").await.0, 404, "{role}");
    }

    // Without S3 the uploader can do nothing: not ready, saying why; the others stay ready.
    topology.s3.stop();
    let why = wait_status(&roles, roles.upload_metrics, "/readyz", 503).await;
    assert!(
        why.starts_with("not ready: s3 tier s3") && why.ends_with('\n') && why.lines().count() == 1,
        "{why:?}"
    );
    assert_eq!(get(roles.upload_metrics, "/healthz").await.0, 200);
    // The probe's attempts were counted, each retry too (the SDK retries a refused connection
    // after at most 1 s, within the probe's 2 s).
    let metrics = common::scrape(roles.upload_metrics).await;
    let head_bucket = [("tier", "s3"), ("operation", "HeadBucket")];
    assert!(
        common::sample(
            &metrics,
            "cim_s3_requests_total",
            &[head_bucket[0], head_bucket[1], ("status", "error")]
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert!(
        common::sample(&metrics, "cim_s3_retries_total", &head_bucket).is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert_eq!(get(roles.manager_metrics, "/readyz").await.0, 200);
    assert_eq!(get(roles.mirror_metrics, "/readyz").await.0, 200);

    topology.s3.start().unwrap();
    topology.s3.wait_ready().await.unwrap();
    wait_status(&roles, roles.upload_metrics, "/readyz", 200).await;

    // SIGTERM ends each role, endpoint included, within the shutdown deadline.
    for (role, process) in [
        ("manager", &mut roles.manager),
        ("mirror", &mut roles.mirror),
        ("upload", &mut roles.upload),
    ] {
        let status = process.sigterm_and_wait(Duration::from_secs(10)).unwrap();
        assert!(status.success(), "{role} exited with {status}");
    }
    for (role, port) in ports {
        assert_eq!(get(port, "/healthz").await.0, 0, "{role} still answers");
    }
}

/// The fields of every span enclosing a JSON log line (`spans`), merged; empty for a line
/// outside any span.
fn span_fields(line: &serde_json::Value) -> Vec<&serde_json::Map<String, serde_json::Value>> {
    line.get("spans")
        .and_then(|s| s.as_array())
        .map(|spans| spans.iter().filter_map(|s| s.as_object()).collect())
        .unwrap_or_default()
}

/// Every line of `log` parsed as JSON (panics naming the first line that is not), except the
/// test kit's own `==== cim-tests: starting …` headers.
fn json_lines(what: &str, log: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("==== cim-tests:"))
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{what}: a log line is not JSON ({e}): {l}"))
        })
        .collect()
}

/// Whether some line was logged inside a span naming `object` of `bucket` moving `from` → `to`.
fn follows(lines: &[serde_json::Value], bucket: &str, object: &str, from: &str, to: &str) -> bool {
    lines.iter().any(|line| {
        span_fields(line).iter().any(|span| {
            span.get("bucket").and_then(|v| v.as_str()) == Some(bucket)
                && span.get("object").and_then(|v| v.as_str()) == Some(object)
                && span.get("from_tier").and_then(|v| v.as_str()) == Some(from)
                && span.get("to_tier").and_then(|v| v.as_str()) == Some(to)
        })
    })
}

#[tokio::test]
async fn json_logs_follow_one_object_through_every_role_and_its_s3_requests_are_counted() {
    const BUCKET: &str = "followed";
    const NAME: &str = "reports/a b.csv";
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(MOVE_ALL);
    let mut roles = Roles::start_with_env(&topology, &config, &[("CIM_LOG_FORMAT", "json")]);
    let tiers = Tiers::connect(&topology).await;
    let data = content(9, 300 * 1024);
    tiers.put_leaf(BUCKET, NAME, &data).await;
    let moved = wait_until("the object only in s3", WAIT, || async {
        tiers.catalog_locations(BUCKET).await.get(NAME) == Some(&vec!["s3".to_string()])
            && Tiers::names(&tiers.leaf_tier, BUCKET).await.is_empty()
            && Tiers::names(&tiers.hub_tier, BUCKET).await.is_empty()
    })
    .await;
    if let Err(e) = moved {
        panic!("{e:#}\n{}", roles.logs());
    }
    // Every S3 request of the upload was counted where it was made: the blob and the two
    // manifests are PutObjects (300 KiB is below the multipart threshold).
    let metrics = common::scrape(roles.upload_metrics).await;
    let puts = common::sample(
        &metrics,
        "cim_s3_requests_total",
        &[
            ("tier", "s3"),
            ("operation", "PutObject"),
            ("status", "200"),
        ],
    );
    assert!(puts.is_some_and(|n| n >= 3.0), "{metrics}");
    roles.stop();

    let manager = json_lines("manager", &roles.manager.log());
    let mirror = json_lines("mirror", &roles.mirror.log());
    let upload = json_lines("upload", &roles.upload.log());
    assert!(!manager.is_empty(), "the manager logged nothing");
    for line in manager.iter().chain(&mirror).chain(&upload) {
        for field in ["timestamp", "level", "target"] {
            assert!(line.get(field).is_some(), "no {field}: {line}");
        }
    }
    assert!(
        follows(&mirror, BUCKET, NAME, "leaf", "hub"),
        "no mirror line in the object's span:\n{}",
        roles.mirror.log()
    );
    assert!(
        follows(&upload, BUCKET, NAME, "hub", "s3"),
        "no upload line in the object's span:\n{}",
        roles.upload.log()
    );

    // The one-shot restore too, with the flag this time.
    let out = std::process::Command::new(cim_bin("cim-gateway"))
        .args([
            "--log-format",
            "json",
            "restore",
            "--config",
            config.to_str().unwrap(),
            "--bucket",
            BUCKET,
            "--name",
            NAME,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", describe(&out));
    let restore = json_lines("restore", &String::from_utf8_lossy(&out.stderr));
    assert!(
        follows(&restore, BUCKET, NAME, "s3", "hub"),
        "no restore line in the object's span:\n{}",
        describe(&out)
    );
    assert_eq!(Tiers::read(&tiers.hub, BUCKET, NAME).await.0, data);
}

/// The heartbeat keys of `role` now in the status bucket.
async fn heartbeats_of(status: &StatusBucket, role: &str) -> Vec<String> {
    let prefix = format!("hb.{role}.");
    status
        .heartbeat_keys()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|k| k.starts_with(&prefix))
        .collect()
}

#[tokio::test]
async fn heartbeats_go_with_their_role_and_restore_counters_outlive_the_command() {
    const BUCKET: &str = "counted";
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(common::HUB_TO_S3);
    let mut roles = Roles::start(&topology, &config);
    let tiers = Tiers::connect(&topology).await;
    let status = StatusBucket::open(&tiers.hub, 3).await.unwrap();

    // Every long-running role beats.
    for role in ["manager", "mirror", "upload"] {
        let beating = wait_until(&format!("a heartbeat of the {role}"), WAIT, || async {
            heartbeats_of(&status, role).await.len() == 1
        })
        .await;
        if let Err(e) = beating {
            panic!("{e:#}\n{}", roles.logs());
        }
    }
    let upload_key = heartbeats_of(&status, "upload").await.remove(0);
    let beat = status.heartbeat(&upload_key).await.unwrap().unwrap();
    assert_eq!(beat.role, "upload");
    assert_eq!(Some(beat.pid), roles.upload.pid());
    assert_eq!(beat.version, env!("CARGO_PKG_VERSION"));
    assert!(!beat.host.is_empty() && beat.at >= beat.started, "{beat:?}");

    // A role stopped cleanly removes its heartbeat; a killed one's expires (the server's TTL).
    let mirror_key = heartbeats_of(&status, "mirror").await.remove(0);
    roles
        .mirror
        .sigterm_and_wait(Duration::from_secs(10))
        .unwrap();
    assert_eq!(status.heartbeat(&mirror_key).await.unwrap(), None);
    roles.upload.sigkill();
    assert!(status.heartbeat(&upload_key).await.unwrap().is_some());
    wait_until(
        "the killed uploader's heartbeat to expire",
        WAIT,
        || async { matches!(status.heartbeat(&upload_key).await, Ok(None)) },
    )
    .await
    .unwrap();

    // A restore run adds its counters to NATS; the manager exports them after the command is
    // gone.
    roles.restart_upload();
    let data = content(11, 70_000);
    common::put_hub(&tiers, BUCKET, "a", &data).await;
    wait_until("the object only in s3", WAIT, || async {
        tiers.catalog_locations(BUCKET).await.get("a") == Some(&vec!["s3".to_string()])
    })
    .await
    .unwrap();
    let out = common::gateway(&config, &["restore", "--bucket", BUCKET, "--all"]);
    assert!(out.status.success(), "{}", describe(&out));
    let counters = status.restore_counters().await.unwrap();
    assert_eq!(counters.runs, 1, "{counters:?}");
    assert_eq!(counters.objects["hub"]["restored"], 1, "{counters:?}");
    assert_eq!(counters.bytes["hub"], data.len() as u64, "{counters:?}");
    let exported = wait_until(
        "the manager to export the restore counters",
        WAIT,
        || async {
            let metrics = common::scrape(roles.manager_metrics).await;
            common::sample(
                &metrics,
                "cim_restore_objects_total",
                &[("tier", "hub"), ("outcome", "restored")],
            ) == Some(1.0)
                && common::sample(&metrics, "cim_restore_bytes_total", &[("tier", "hub")])
                    == Some(data.len() as f64)
        },
    )
    .await;
    if let Err(e) = exported {
        panic!("{e:#}\n{}", common::scrape(roles.manager_metrics).await);
    }
}
