//! `cim-storage plan` and `explain` on the real topology (issue 10 item 2): with objects on both
//! sides of `after`, `plan` lists exactly the items a manager pass then queues, and `explain`
//! says for one object where its copies are and what each policy makes of it.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use cim_tests::{cim_bin, Topology};
use common::{content, describe, put_hub, work_messages, Tiers};

/// Old enough to be due for the objects written first, too young for those written after the
/// wait; the commands run well within it.
const AFTER_SECS: u64 = 30;

fn storage(args: &[&str]) -> std::process::Output {
    Command::new(cim_bin("cim-storage"))
        .args(args)
        .output()
        .unwrap()
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", describe(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", describe(out)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_lists_exactly_what_a_pass_queues_and_explain_says_why() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(&format!(
        r#"
[[policy]]
name = "backup"
buckets = ["plan"]
from = "hub"
to = "s3"
action = "copy"
after = "{AFTER_SECS}s"

[[policy]]
name = "big-only"
buckets = ["plan"]
min_size = "1 MiB"
from = "hub"
to = "s3"
action = "move"
after = "0s"

[[policy]]
name = "off"
buckets = ["*"]
from = "hub"
to = "s3"
action = "move"
after = "0s"
enabled = false
"#
    ));
    let config = config.to_str().unwrap();
    let tiers = Tiers::connect(&topology).await;
    for name in ["old-1", "old-2"] {
        put_hub(&tiers, "plan", name, &content(1, 2000)).await;
    }
    // Age them past `after` (setting up ages, not waiting for something not to happen).
    tokio::time::sleep(Duration::from_secs(AFTER_SECS + 1)).await;
    let young_at = Instant::now();
    put_hub(&tiers, "plan", "young", &content(2, 2000)).await;

    let planned = json(&storage(&["plan", "--json", "--config", config]));
    let rows: BTreeSet<(String, String, String)> = planned
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_string(),
                r["action"].as_str().unwrap().to_string(),
                r["policy"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String, String)> = ["old-1", "old-2"]
        .map(|n| (n.to_string(), "copy".to_string(), "backup".to_string()))
        .into();
    assert_eq!(rows, expected, "{planned:#}");
    assert!(
        planned[0]["reason"]
            .as_str()
            .unwrap()
            .contains(&format!(">= after {AFTER_SECS}s")),
        "{planned:#}"
    );
    let table = storage(&["plan", "--config", config]);
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(text.starts_with("ACTION  POLICY"), "{}", describe(&table));
    assert!(text.contains("2 items, 4000 bytes"), "{}", describe(&table));

    // A manager pass queues exactly what the plan listed.
    let once = storage(&["run", "--once", "--config", config]);
    assert!(once.status.success(), "{}", describe(&once));
    let queued: BTreeSet<(String, String, String)> = work_messages(&tiers.hub)
        .await
        .into_iter()
        .map(|(_, item)| {
            let action = item["action"].as_str().unwrap().to_string();
            (
                item["name"].as_str().unwrap().to_string(),
                action,
                item["policy"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(queued, expected);

    // Explain: the young object is on the hub only, `backup` is not yet due, `big-only` does not
    // match its size, `off` is disabled.
    let explained = json(&storage(&[
        "explain", "--json", "--config", config, "--bucket", "plan", "--name", "young",
    ]));
    assert!(
        young_at.elapsed() < Duration::from_secs(AFTER_SECS),
        "the commands took longer than `after`; the young object aged meanwhile"
    );
    let copies: Vec<(String, String)> = explained["copies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["tier"].as_str().unwrap().to_string(),
                c["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        copies,
        [
            ("hub".to_string(), "live".to_string()),
            ("leaf".to_string(), "absent".to_string())
        ],
        "{explained:#}"
    );
    let outcomes: Vec<(String, String)> = explained["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["policy"].as_str().unwrap().to_string(),
                p["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("backup".to_string(), "not-yet".to_string()),
            ("big-only".to_string(), "no-match".to_string()),
            ("off".to_string(), "disabled".to_string())
        ],
        "{explained:#}"
    );
    assert!(
        explained["policies"][1]["reason"]
            .as_str()
            .unwrap()
            .contains("min_size"),
        "{explained:#}"
    );
    let text = storage(&[
        "explain", "--config", config, "--bucket", "plan", "--name", "old-1",
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("backup") && text.contains("decides"),
        "{text}"
    );
}
