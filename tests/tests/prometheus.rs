//! What an operator's Prometheus sees: our own Prometheus server scrapes every role during real
//! moves and the assertions go through its HTTP query API; one-shot commands push to a
//! Pushgateway; the alert rules and the dashboard shipped in docs/ are checked.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cim_tests::{promtool_bin, Prometheus, Pushgateway, Target, Topology};
use common::{content, describe, plant, sample, wait_only_in_s3, Roles, Tiers, MOVE_ALL};

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

/// A file of the repository's docs/.
fn doc(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name)
}

/// Runs `promtool args…`; panics with its output unless it succeeds.
fn promtool(args: &[&str], dir: &Path) -> String {
    let out = Command::new(promtool_bin())
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", promtool_bin().display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?}: {}\n{text}",
        out.status
    );
    text
}

/// Every `cim_…` metric name in a PromQL expression (`cim_x_bucket` etc. stay as written).
fn cim_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut rest = expr;
    while let Some(at) = rest.find("cim_") {
        let before = rest[..at].chars().next_back();
        let tail = &rest[at..];
        let end = tail.find(|c: char| !word(c)).unwrap_or(tail.len());
        if !before.is_some_and(word) {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// The metric names docs/metrics.md documents: every `` `cim_…` `` in its table rows.
fn documented_metrics() -> BTreeSet<String> {
    let text = std::fs::read_to_string(doc("metrics.md")).unwrap();
    text.lines()
        .filter(|l| l.starts_with('|'))
        .flat_map(|l| l.split('`').skip(1).step_by(2))
        .filter(|token| token.starts_with("cim_") && !token.contains(['{', ' ']))
        .map(str::to_string)
        .collect()
}

/// The names of `used` that docs/metrics.md does not document (a histogram's `_bucket`, `_sum`
/// and `_count` series count as documented with it).
fn undocumented(used: &BTreeSet<String>) -> Vec<String> {
    let documented = documented_metrics();
    used.iter()
        .filter(|name| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            !documented.contains(*name) && !documented.contains(base)
        })
        .cloned()
        .collect()
}

/// Item 4: docs/alerts.yml is valid (`promtool check rules`), every alert does what its unit
/// tests in docs/alerts.test.yml say (`promtool test rules`), and it names only documented
/// metrics.
#[test]
fn the_alert_rules_pass_promtool_and_name_documented_metrics() {
    let docs = doc("");
    let checked = promtool(&["check", "rules", "alerts.yml"], &docs);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&["test", "rules", "alerts.test.yml"], &docs);
    assert!(tested.contains("SUCCESS"), "{tested}");

    let rules = std::fs::read_to_string(doc("alerts.yml")).unwrap();
    let used = cim_names(&rules);
    assert!(used.contains("cim_backlog_objects"), "{used:?}");
    assert_eq!(
        undocumented(&used),
        Vec::<String>::new(),
        "not in docs/metrics.md"
    );
    // Every alert has a unit test.
    let tests = std::fs::read_to_string(doc("alerts.test.yml")).unwrap();
    for line in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            tests.contains(&format!("alertname: {line}\n")),
            "alert {line} has no test in docs/alerts.test.yml"
        );
    }
}

/// Item 4: docs/grafana-dashboard.json is a dashboard Grafana can import (JSON, a title and
/// uid, panels with a type, a place on the 24-column grid and queries), every query is valid
/// PromQL (checked by promtool as a recording rule, Grafana's `$__rate_interval` replaced), and
/// every `cim_` metric it queries is documented in docs/metrics.md.
#[test]
fn the_dashboard_parses_and_queries_only_documented_metrics() {
    let text = std::fs::read_to_string(doc("grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["uid"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["schemaVersion"].as_u64().is_some());
    let panels = dashboard["panels"].as_array().unwrap();
    let mut exprs = Vec::new();
    let mut titles = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or_default();
        let grid = &panel["gridPos"];
        let (x, w) = (grid["x"].as_u64().unwrap(), grid["w"].as_u64().unwrap());
        assert!(
            x + w <= 24 && grid["h"].as_u64().unwrap() > 0,
            "{title}: {grid}"
        );
        if panel["type"] == "row" {
            titles.insert(title.to_string());
            continue;
        }
        assert!(
            panel["type"].as_str().is_some_and(|t| !t.is_empty()),
            "{panel}"
        );
        assert!(!title.is_empty(), "{panel}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            assert!(ref_ids.insert(target["refId"].as_str().unwrap()), "{title}");
            let expr = target["expr"].as_str().unwrap();
            assert!(!expr.trim().is_empty(), "{title}: empty query");
            exprs.push((title.to_string(), expr.to_string()));
        }
    }
    // The sections issue 9 asks for.
    for row in ["Tiers", "Throughput", "Backlog and lag", "Failures"] {
        assert!(titles.contains(row), "no row {row:?}: {titles:?}");
    }
    assert!(
        exprs
            .iter()
            .any(|(_, e)| e.contains("cim_tier_storage_limit_bytes")),
        "no headroom panel"
    );

    let used: BTreeSet<String> = exprs.iter().flat_map(|(_, e)| cim_names(e)).collect();
    assert_eq!(
        undocumented(&used),
        Vec::<String>::new(),
        "not in docs/metrics.md"
    );

    // Every query parses: promtool checks them as recording rules.
    let dir = tempfile::tempdir().unwrap();
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "5m")
            .replace("$__interval", "1m")
            .replace("$__range", "1h");
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        # {title}\n        expr: {}\n",
            serde_json::Value::String(expr)
        ));
    }
    std::fs::write(dir.path().join("dashboard.yml"), rules).unwrap();
    promtool(&["check", "rules", "dashboard.yml"], dir.path());
}

/// The three long-running roles as scrape targets, one job each (`cim-<role>`, as the NixOS
/// module names them and docs/alerts.yml expects).
fn role_targets(roles: &Roles) -> Vec<Target> {
    vec![
        Target::local("cim-manager", roles.manager_metrics),
        Target::local("cim-mirror", roles.mirror_metrics),
        Target::local("cim-upload", roles.upload_metrics),
    ]
}

/// The roles running under [`MOVE_ALL`], scraped by our own Prometheus with docs/alerts.yml
/// loaded; every target is up when this returns.
async fn watched_roles(topology: &Topology) -> (Tiers, Roles, Prometheus) {
    let config = topology.write_config(MOVE_ALL);
    let tiers = Tiers::connect(topology).await;
    let roles = Roles::start(topology, &config);
    let targets = role_targets(&roles);
    let prometheus = Prometheus::start(topology.dir(), &targets, &[doc("alerts.yml")])
        .await
        .unwrap();
    if let Err(e) = prometheus.wait_up(&targets, Duration::from_secs(60)).await {
        panic!("{e:#}\n{}", roles.logs());
    }
    (tiers, roles, prometheus)
}

/// `expr`'s samples keyed by their (from_tier, to_tier), zeros left out (series registered at
/// zero for pairs nothing moved on).
async fn per_pair(prometheus: &Prometheus, expr: &str) -> BTreeMap<(String, String), f64> {
    prometheus
        .query(expr)
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|s| s.value != 0.0)
        .map(|s| {
            let pair = (
                s.label("from_tier").to_string(),
                s.label("to_tier").to_string(),
            );
            (pair, s.value)
        })
        .collect()
}

/// Polls `expr` (summed by tier pair) until it equals `expected`; panics with the last value.
async fn wait_per_pair(
    prometheus: &Prometheus,
    expr: &str,
    expected: &BTreeMap<(String, String), f64>,
    roles: &Roles,
) {
    let result = cim_tests::wait_for(expr, SEEN, || async {
        let got = per_pair(prometheus, expr).await;
        Ok((got != *expected).then(|| format!("{got:?}, want {expected:?}")))
    })
    .await;
    if let Err(e) = result {
        panic!("{e:#}\n{}", roles.logs());
    }
}

fn pair(from: &str, to: &str) -> (String, String) {
    (from.to_string(), to.to_string())
}

/// Item 2a (issue 9's first acceptance test): a Prometheus scraping every role during an
/// end-to-end move leaf → hub → S3 reports, through its query API, exactly the bytes and
/// objects the test moved per tier pair, and no failure; every rule of docs/alerts.yml
/// evaluates without error against the real series.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_sees_the_bytes_and_objects_moved_per_tier_pair() {
    let topology = Topology::start().await.unwrap();
    let (tiers, mut roles, prometheus) = watched_roles(&topology).await;
    let objects = [
        ("empty", Vec::new()),
        ("one-byte", content(1, 1)),
        ("three-hundred-kb", content(2, 300_000)),
        ("reports/three mib", content(3, 3 * 1024 * 1024)),
    ];
    for (name, data) in &objects {
        tiers.put_leaf(BUCKET, name, data).await;
    }
    let names: Vec<&str> = objects.iter().map(|(n, _)| *n).collect();
    wait_only_in_s3(&tiers, &roles, BUCKET, &names, Duration::from_secs(180)).await;

    let bytes = objects.iter().map(|(_, d)| d.len() as f64).sum::<f64>();
    let count = objects.len() as f64;
    wait_per_pair(
        &prometheus,
        "sum by (from_tier, to_tier) (cim_transfer_bytes_total)",
        &BTreeMap::from([(pair("leaf", "hub"), bytes), (pair("hub", "s3"), bytes)]),
        &roles,
    )
    .await;
    wait_per_pair(
        &prometheus,
        r#"sum by (from_tier, to_tier) (cim_transfers_total{outcome="ok"})"#,
        &BTreeMap::from([(pair("leaf", "hub"), count), (pair("hub", "s3"), count)]),
        &roles,
    )
    .await;
    let failed = per_pair(
        &prometheus,
        r#"sum by (from_tier, to_tier) (cim_transfers_total{outcome="failed"})"#,
    )
    .await;
    assert!(failed.is_empty(), "failed transfers: {failed:?}");
    // Every successful transfer is in the duration histogram of its pair.
    wait_per_pair(
        &prometheus,
        "sum by (from_tier, to_tier) (cim_transfer_duration_seconds_count)",
        &BTreeMap::from([(pair("leaf", "hub"), count), (pair("hub", "s3"), count)]),
        &roles,
    )
    .await;

    // The alert rules evaluate against the real series without an error (a label mismatch in
    // a division, say, would show as `err`).
    let health = std::cell::RefCell::new(Vec::new());
    let evaluated = cim_tests::wait_for("every alert rule evaluated", SEEN, || async {
        let rules = prometheus.rules().await?;
        let pending: Vec<String> = rules
            .iter()
            .filter(|r| r.health == "unknown")
            .map(|r| r.name.clone())
            .collect();
        let done = !rules.is_empty() && pending.is_empty();
        *health.borrow_mut() = rules;
        Ok((!done).then(|| format!("not yet: {pending:?}")))
    })
    .await;
    evaluated.unwrap();
    let health = health.into_inner();
    let broken: Vec<_> = health.iter().filter(|r| r.health != "ok").collect();
    assert!(broken.is_empty(), "{broken:?}");
    assert!(health.len() >= 10, "{health:?}");
    roles.stop();
}

/// Item 2b (issue 9's second acceptance test): S3 stops during uploads. Through Prometheus
/// the upload policy's backlog and its age rise and the failure counters grow (with the S3
/// requests' status as the reason); after S3 returns, the gauges fall back to 0 and the failure
/// counters stop rising (checked over several more scrapes of every role, not by sleeping).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_sees_the_backlog_rise_while_s3_is_down_and_fall_after() {
    let mut topology = Topology::start().await.unwrap();
    let (tiers, mut roles, prometheus) = watched_roles(&topology).await;
    let first = [
        ("before-1", content(10, 50_000)),
        ("before-2", content(11, 50_000)),
    ];
    for (name, data) in &first {
        tiers.put_leaf(BUCKET, name, data).await;
    }
    wait_only_in_s3(
        &tiers,
        &roles,
        BUCKET,
        &["before-1", "before-2"],
        Duration::from_secs(120),
    )
    .await;

    topology.s3.stop();
    let second = [
        ("during-1", content(20, 40_000)),
        ("during-2", content(21, 400_000)),
        ("during-3", content(22, 4_000)),
    ];
    for (name, data) in &second {
        tiers.put_leaf(BUCKET, name, data).await;
    }
    let backlog = r#"sum(cim_backlog_objects{policy="cluster-to-s3"})"#;
    let backlog_bytes = r#"sum(cim_backlog_bytes{policy="cluster-to-s3"})"#;
    let age = r#"max(cim_backlog_oldest_age_seconds{policy="cluster-to-s3"})"#;
    let failed = r#"sum(cim_transfers_total{to_tier="s3",outcome="failed"})"#;
    let retried = r#"sum(cim_work_items_total{role="upload",outcome="retry"})"#;
    let s3_errors = r#"sum(cim_s3_requests_total{tier="s3",status="error"})"#;
    let unreachable = r#"sum(cim_transfer_failures_total{to_tier="s3",reason="s3_unreachable"})"#;
    let wait = Duration::from_secs(90);
    let at_least = |n: f64| move |v: Option<f64>| v.is_some_and(|v| v >= n);
    let above = |n: f64| move |v: Option<f64>| v.is_some_and(|v| v > n);

    let seen = |r: anyhow::Result<Option<f64>>| match r {
        Ok(v) => v.unwrap_or_default(),
        Err(e) => panic!("{e:#}\n{}", roles.logs()),
    };
    seen(prometheus.wait_value(backlog, wait, at_least(3.0)).await);
    seen(
        prometheus
            .wait_value(backlog_bytes, wait, at_least(444_000.0))
            .await,
    );
    let age_first = seen(prometheus.wait_value(age, wait, above(0.0)).await);
    seen(
        prometheus
            .wait_value(age, wait, above(age_first + 2.0))
            .await,
    );
    let failed_first = seen(prometheus.wait_value(failed, wait, above(0.0)).await);
    seen(
        prometheus
            .wait_value(failed, wait, above(failed_first))
            .await,
    );
    seen(prometheus.wait_value(retried, wait, above(0.0)).await);
    // The reason: the S3 requests ended without a response, and the failed transfers say so.
    seen(prometheus.wait_value(s3_errors, wait, above(0.0)).await);
    seen(prometheus.wait_value(unreachable, wait, above(0.0)).await);

    topology.s3.start().unwrap();
    topology.s3.wait_ready().await.unwrap();
    let all: Vec<&str> = first.iter().chain(&second).map(|(n, _)| *n).collect();
    wait_only_in_s3(&tiers, &roles, BUCKET, &all, Duration::from_secs(180)).await;
    for gauge in [
        "sum(cim_backlog_objects)",
        "sum(cim_backlog_bytes)",
        "max(cim_backlog_oldest_age_seconds)",
    ] {
        seen(prometheus.wait_value(gauge, wait, |v| v == Some(0.0)).await);
    }
    // Every success shows; then the failure counters stay where they are over five more
    // scrapes of every role (and more manager passes).
    wait_per_pair(
        &prometheus,
        r#"sum by (from_tier, to_tier) (cim_transfers_total{to_tier="s3",outcome="ok"})"#,
        &BTreeMap::from([(pair("hub", "s3"), 5.0)]),
        &roles,
    )
    .await;
    let failed_end = seen(prometheus.value(failed).await);
    let retried_end = seen(prometheus.value(retried).await);
    let passes = seen(prometheus.value("sum(cim_manager_passes_total)").await);
    for target in role_targets(&roles) {
        prometheus.wait_scrapes(&target.job, 5, wait).await.unwrap();
    }
    seen(
        prometheus
            .wait_value("sum(cim_manager_passes_total)", wait, above(passes + 2.0))
            .await,
    );
    assert_eq!(seen(prometheus.value(failed).await), failed_end);
    // Every failed transfer has exactly one reason.
    let reasons = r#"sum(cim_transfer_failures_total{to_tier="s3"})"#;
    assert_eq!(seen(prometheus.value(reasons).await), failed_end);
    assert_eq!(seen(prometheus.value(retried).await), retried_end);
    assert_eq!(seen(prometheus.value(backlog).await), 0.0);
    roles.stop();
}
