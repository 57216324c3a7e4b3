//! What an operator's Prometheus sees: our own Prometheus server scrapes every role during real
//! moves and the assertions go through its HTTP query API; one-shot commands push to a
//! Pushgateway; the alert rules and the dashboard shipped in docs/ are checked.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use cim_tests::{Prometheus, Pushgateway, Target, Topology};
use common::{content, describe, plant, sample};

/// The object-store bucket the tests write.
const BUCKET: &str = "sensors";

/// How long a value may take to show through Prometheus: a few scrape intervals, on a machine
/// shared with builds.
const SEEN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kit_scrapes_a_pushgateway_and_answers_queries() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Pushgateway::start(dir.path()).await.unwrap();
    let pushed = reqwest::Client::new()
        .put(format!(
            "{}/metrics/job/cim/role/kit/instance/here",
            gateway.url
        ))
        .body("# TYPE cim_kit_probe gauge\ncim_kit_probe{tier=\"hub\"} 42\n")
        .send()
        .await
        .unwrap();
    assert!(pushed.status().is_success(), "{pushed:?}");

    let targets = [Target::pushgateway(&gateway)];
    let prometheus = Prometheus::start(dir.path(), &targets, &[]).await.unwrap();
    prometheus.wait_up(&targets, SEEN).await.unwrap();
    let value = prometheus
        .wait_value("cim_kit_probe", SEEN, |v| v.is_some())
        .await
        .unwrap();
    assert_eq!(value, Some(42.0));
    // honor_labels keeps the pushed group's labels.
    let samples = prometheus.query("cim_kit_probe").await.unwrap();
    assert_eq!(samples[0].label("job"), "cim", "{samples:?}");
    assert_eq!(samples[0].label("role"), "kit", "{samples:?}");
    assert_eq!(samples[0].label("instance"), "here", "{samples:?}");
    assert_eq!(samples[0].label("tier"), "hub", "{samples:?}");
    // A bad query is an error that quotes Prometheus' reason.
    let Err(e) = prometheus.query("sum(").await else {
        panic!("a bad query succeeded");
    };
    assert!(format!("{e:#}").contains("bad_data"), "{e:#}");
}

/// Only the upload policy (`restore` finds its target tier, `hub`, from it); no role runs.
const UPLOAD_ONLY: &str = r#"
[[policy]]
name = "cluster-to-s3"
buckets = ["*"]
from = "hub"
to = "s3"
action = "move"
after = "0s"
"#;

/// `[metrics] pushgateway = url` for [`Topology::write_config`].
fn pushing_to(url: &str) -> String {
    format!("{UPLOAD_ONLY}\n[metrics]\npushgateway = {url:?}\n")
}

/// Item 3: `cim-gateway restore` pushes what it counted to the Pushgateway when it ends, in its
/// own group (job `cim`, role `restore`, instance = the host), which a Prometheus scraping the
/// Pushgateway with `honor_labels` keeps; a Pushgateway that is not there costs a warning, not
/// the restore.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_pushes_its_counts_to_the_pushgateway() {
    let topology = Topology::start().await.unwrap();
    let gateway = Pushgateway::start(topology.dir()).await.unwrap();
    for (i, name) in ["a", "b/c"].iter().enumerate() {
        plant(&topology, BUCKET, name, &content(i as u64, 20_000), |_| {}).await;
    }
    let config = topology.write_config(&pushing_to(&gateway.url));
    let out = common::gateway(&config, &["restore", "--bucket", BUCKET, "--all"]);
    assert!(out.status.success(), "{}", describe(&out));

    let host = cim_tiering::push::host_name();
    let pushed = gateway.metrics().await.unwrap();
    let group = [
        ("job", "cim"),
        ("role", "restore"),
        ("instance", host.as_str()),
    ];
    let restored = [
        group.as_slice(),
        &[("tier", "hub"), ("outcome", "restored")],
    ]
    .concat();
    assert_eq!(
        sample(&pushed, "cim_restore_objects_total", &restored),
        Some(2.0),
        "{pushed}\n{}",
        describe(&out)
    );
    let bytes = [group.as_slice(), &[("tier", "hub")]].concat();
    assert_eq!(
        sample(&pushed, "cim_restore_bytes_total", &bytes),
        Some(40_000.0),
        "{pushed}"
    );
    // The run succeeded: its build and the time of its end are in the group too.
    assert_eq!(
        sample(&pushed, "cim_build_info", &group),
        Some(1.0),
        "{pushed}"
    );
    let ended = sample(&pushed, "cim_last_success_timestamp_seconds", &group).unwrap_or(0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        ended > now - 600.0 && ended <= now,
        "{ended} vs {now}\n{pushed}"
    );

    // What an operator's Prometheus sees.
    let targets = [Target::pushgateway(&gateway)];
    let prometheus = Prometheus::start(topology.dir(), &targets, &[])
        .await
        .unwrap();
    let expr = format!(
        "sum(cim_restore_objects_total{{job=\"cim\",role=\"restore\",instance={host:?},tier=\"hub\",outcome=\"restored\"}})"
    );
    let seen = prometheus
        .wait_value(&expr, SEEN, |v| v.is_some())
        .await
        .unwrap();
    assert_eq!(seen, Some(2.0));

    // Nobody listens there: the restore (both objects present now) still succeeds, and says why
    // nothing was pushed.
    let nowhere = topology.write_config(&pushing_to(&format!(
        "http://127.0.0.1:{}",
        cim_tests::free_port()
    )));
    let out = common::gateway(&nowhere, &["restore", "--bucket", BUCKET, "--all"]);
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot push metrics"), "{stderr}");
}
