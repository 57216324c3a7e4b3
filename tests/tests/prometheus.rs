//! What an operator's Prometheus sees: our own Prometheus server scrapes every role during real
//! moves and the assertions go through its HTTP query API; one-shot commands push to a
//! Pushgateway; the alert rules and the dashboard shipped in docs/ are checked.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use cim_tests::{Prometheus, Pushgateway, Target};

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
