//! `docs/metrics.md` against what the roles expose: after an end-to-end move (leaf → hub → S3,
//! the real roles), every documented metric is on some role's endpoint, every exposed `cim_`
//! metric is documented, and `promtool check metrics` accepts each endpoint's text.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use cim_tests::{free_port, wait_until, Topology};
use common::{
    content, put_hub, sample, scrape, spawn_role, try_scrape, wait_only_in_s3, Roles, Tiers,
    MOVE_ALL,
};

const BUCKET: &str = "sensors-metrics";

/// The roles that serve an endpoint; a row whose roles are all one-shot commands (`restore`,
/// `gc`, `scrub`) is reported only through a Pushgateway and is not looked for here.
const SERVING: [&str; 4] = ["all", "manager", "mirror", "upload"];

/// One row of the table in `docs/metrics.md`.
#[derive(Debug)]
struct Documented {
    name: String,
    kind: String,
    roles: Vec<String>,
    meaning: String,
}

/// The rows of the table: lines `| \`name\` | type | labels | roles | meaning |`.
fn documented(markdown: &str) -> Vec<Documented> {
    markdown
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            // No cell of the table holds a `|` (an escaped `\|` would split here).
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            assert!(cells.len() >= 5, "a table row has five cells: {l}");
            Documented {
                name: cells[0].trim_matches('`').to_string(),
                kind: cells[1].to_string(),
                roles: cells[3].split(',').map(|r| r.trim().to_string()).collect(),
                meaning: cells[4].to_string(),
            }
        })
        .collect()
}

/// Metric family → its `# TYPE`, from one endpoint's text.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_string(), kind.trim().to_string()))
        })
        .collect()
}

/// Names of the series an endpoint exposes (histograms as their `_bucket`, `_sum`, `_count`).
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_table_parser_reads_names_types_and_roles() {
    let rows = documented(
        "| metric | type | labels | role | meaning |\n|---|---|---|---|---|\n\
         | `cim_a_total` | counter | | mirror, upload | what `a` counts |\n",
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].name, "cim_a_total");
    assert_eq!(rows[0].kind, "counter");
    assert_eq!(rows[0].roles, ["mirror", "upload"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_documented_metric_is_exposed_and_every_exposed_one_documented() {
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md");
    let rows = documented(&std::fs::read_to_string(doc_path).unwrap());
    assert!(rows.len() > 20, "the table of docs/metrics.md: {rows:?}");

    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(MOVE_ALL);
    let tiers = Tiers::connect(&topology).await;
    let objects = [("a", content(11, 1000)), ("b", content(12, 300 * 1024))];
    for (name, data) in &objects {
        tiers.put_leaf(BUCKET, name, data).await;
    }
    let mut roles = Roles::start(&topology, &config);
    let names: Vec<&str> = objects.iter().map(|(n, _)| *n).collect();
    wait_only_in_s3(&tiers, &roles, BUCKET, &names, Duration::from_secs(180)).await;
    // One more manager pass: what each tier holds is set at the end of a pass, its storage
    // right after it.
    let passes = |text: &str| sample(text, "cim_manager_passes_total", &[]).unwrap_or(0.0);
    let before = passes(&scrape(roles.manager_metrics).await);
    wait_until(
        "two more manager passes",
        Duration::from_secs(60),
        || async { passes(&scrape(roles.manager_metrics).await) >= before + 2.0 },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));

    let endpoints = [
        ("manager", scrape(roles.manager_metrics).await),
        ("mirror", scrape(roles.mirror_metrics).await),
        ("upload", scrape(roles.upload_metrics).await),
    ];
    roles.stop();
    let everything = endpoints
        .iter()
        .map(|(role, text)| format!("--- {role} ---\n{text}"))
        .collect::<Vec<_>>()
        .join("\n");

    // (a) Every documented metric of a serving role is on some endpoint, except one the table
    // says is absent under a condition (the storage limit of an account without one: the test
    // servers set none).
    let exposed: BTreeSet<String> = endpoints.iter().flat_map(|(_, t)| series(t)).collect();
    let mut missing = Vec::new();
    for row in &rows {
        if !row.roles.iter().any(|r| SERVING.contains(&r.as_str()))
            || row.meaning.contains("absent when")
        {
            continue;
        }
        let wanted: Vec<String> = if row.kind == "histogram" {
            ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{}{s}", row.name))
                .collect()
        } else {
            vec![row.name.clone()]
        };
        missing.extend(wanted.into_iter().filter(|w| !exposed.contains(w)));
    }
    assert!(
        missing.is_empty(),
        "documented but on no endpoint: {missing:?}\n{everything}"
    );

    // (b) Every exposed cim_ metric is documented, with its type.
    let doc_types: BTreeMap<&str, &str> = rows
        .iter()
        .map(|r| (r.name.as_str(), r.kind.as_str()))
        .collect();
    for (role, text) in &endpoints {
        for (family, kind) in families(text) {
            if !family.starts_with("cim_") {
                continue;
            }
            assert_eq!(
                doc_types.get(family.as_str()).copied(),
                Some(kind.as_str()),
                "{role} exposes {family} ({kind}), which docs/metrics.md does not list as such"
            );
        }
        let undocumented: Vec<String> = series(text)
            .into_iter()
            .filter(|s| s.starts_with("cim_"))
            .filter(|s| {
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| s.strip_suffix(suffix))
                    .filter(|f| doc_types.get(f) == Some(&"histogram"))
                    .unwrap_or(s);
                !doc_types.contains_key(family)
            })
            .collect();
        assert!(
            undocumented.is_empty(),
            "{role} exposes undocumented metrics {undocumented:?}"
        );
    }

    // (c) promtool accepts each endpoint's text, lint included.
    for (role, text) in &endpoints {
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (Debian's prometheus package; scripts/install-tools.sh installs it)");
        promtool
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = promtool.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics on the {role} endpoint: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A `copy` and a `move` over the same tier pair each report their own backlog (the gauge used
/// to be per tier pair, and whichever policy the pass evaluated last overwrote the other), in
/// objects, bytes and age; and the manager reports what the tier holds and the storage it uses.
/// Only the manager runs, so nothing due is ever moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_policy_reports_its_own_backlog() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(
        r#"
[[policy]]
name = "copy-x"
buckets = ["backlog-x"]
from = "hub"
to = "s3"
action = "copy"
after = "0s"

[[policy]]
name = "move-y"
buckets = ["backlog-y"]
from = "hub"
to = "s3"
action = "move"
after = "0s"
"#,
    );
    let tiers = Tiers::connect(&topology).await;
    put_hub(&tiers, "backlog-x", "one", &content(21, 1000)).await;
    put_hub(&tiers, "backlog-y", "two", &content(22, 2000)).await;
    put_hub(&tiers, "backlog-y", "three", &content(23, 3000)).await;
    let port = free_port();
    let dir = topology.dir().to_path_buf();
    let mut manager = spawn_role(
        "cim-storage",
        "run",
        &config,
        port,
        &dir.join("manager.log"),
    );

    let backlog = |text: &str, name: &str, policy: &str| {
        sample(
            text,
            name,
            &[("policy", policy), ("from_tier", "hub"), ("to_tier", "s3")],
        )
    };
    let reported = wait_until(
        "both backlogs and the tier reported",
        Duration::from_secs(60),
        || async {
            let text = try_scrape(port).await;
            backlog(&text, "cim_backlog_objects", "move-y") == Some(2.0)
                && backlog(&text, "cim_backlog_objects", "copy-x") == Some(1.0)
                && sample(&text, "cim_tier_objects", &[("tier", "hub")]) == Some(3.0)
                && sample(&text, "cim_tier_storage_used_bytes", &[("tier", "hub")]).is_some()
        },
    )
    .await;
    let text = scrape(port).await;
    let log = manager.log();
    let _ = manager.sigterm_and_wait(Duration::from_secs(10));
    reported.unwrap_or_else(|e| panic!("{e:#}\n{text}\n{log}"));

    assert_eq!(backlog(&text, "cim_backlog_bytes", "copy-x"), Some(1000.0));
    assert_eq!(backlog(&text, "cim_backlog_bytes", "move-y"), Some(5000.0));
    for policy in ["copy-x", "move-y"] {
        let age = backlog(&text, "cim_backlog_oldest_age_seconds", policy).unwrap();
        assert!(age > 0.0, "{policy}: due since it was stored\n{text}");
    }
    assert_eq!(
        sample(&text, "cim_tier_bytes", &[("tier", "hub")]),
        Some(6000.0)
    );
    // Everything stored, and more (chunk and meta messages, the catalog, the work queue).
    let used = sample(&text, "cim_tier_storage_used_bytes", &[("tier", "hub")]).unwrap();
    assert!(used >= 6000.0, "{text}");
    assert!(
        sample(
            &text,
            "cim_last_success_timestamp_seconds",
            &[("role", "manager")]
        )
        .is_some_and(|t| t > 1.7e9),
        "{text}"
    );
    assert_eq!(
        sample(&text, "cim_build_info", &[("role", "manager")]),
        Some(1.0)
    );
}

/// An upload that cannot reach S3 counts as a failed transfer of its tier pair, and nothing as
/// moved; the item is retried, not given up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_upload_counts_as_a_failed_transfer() {
    let topology = Topology::start().await.unwrap();
    // Nothing listens there: every request is refused.
    let closed = free_port();
    let config = topology.write_config(&format!(
        r#"
[tiers.s3]
endpoint = "http://127.0.0.1:{closed}"

[[policy]]
name = "to-s3"
buckets = ["unreachable"]
from = "hub"
to = "s3"
action = "move"
after = "0s"
"#
    ));
    let tiers = Tiers::connect(&topology).await;
    put_hub(&tiers, "unreachable", "one", &content(31, 1000)).await;
    let dir = topology.dir().to_path_buf();
    let (manager_port, upload_port) = (free_port(), free_port());
    let mut manager = spawn_role(
        "cim-storage",
        "run",
        &config,
        manager_port,
        &dir.join("manager.log"),
    );
    let mut upload = spawn_role(
        "cim-gateway",
        "upload",
        &config,
        upload_port,
        &dir.join("upload.log"),
    );
    let transfers = |text: &str, outcome: &str| {
        sample(
            text,
            "cim_transfers_total",
            &[
                ("from_tier", "hub"),
                ("to_tier", "s3"),
                ("outcome", outcome),
            ],
        )
    };
    let failed = wait_until(
        "a failed transfer counted",
        Duration::from_secs(90),
        || async { transfers(&try_scrape(upload_port).await, "failed").is_some_and(|n| n >= 1.0) },
    )
    .await;
    let text = scrape(upload_port).await;
    let log = upload.log();
    let _ = upload.sigterm_and_wait(Duration::from_secs(10));
    let _ = manager.sigterm_and_wait(Duration::from_secs(10));
    failed.unwrap_or_else(|e| panic!("{e:#}\n{text}\n{log}"));
    assert_eq!(transfers(&text, "ok"), Some(0.0), "{text}");
    assert_eq!(
        sample(
            &text,
            "cim_transfer_bytes_total",
            &[("from_tier", "hub"), ("to_tier", "s3")]
        ),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &text,
            "cim_work_items_total",
            &[("role", "upload"), ("outcome", "given_up")]
        ),
        Some(0.0),
        "{text}"
    );
}
