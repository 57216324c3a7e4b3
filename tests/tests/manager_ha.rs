//! Manager high availability on real servers: two managers, one plans; SIGKILL the leader and
//! the standby takes over; objects keep flowing and each version lands in S3 exactly once.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use cim_tests::{cim_bin, free_port, wait_until, RoleProcess, Topology};
use cim_tiering::status::StatusBucket;
use common::{content, put_hub, sample, spawn_role, try_scrape, Tiers, PREFIX};

const BUCKET: &str = "ha";

/// The `cim_manager_leader` gauge of the manager serving metrics on `port`, once it answers.
async fn leader_gauge(port: u16) -> Option<f64> {
    sample(&try_scrape(port).await, "cim_manager_leader", &[])
}

async fn wait_gauge(port: u16, value: f64, what: &str, logs: &[&RoleProcess]) {
    let result = wait_until(what, Duration::from_secs(60), || async {
        leader_gauge(port).await == Some(value)
    })
    .await;
    if let Err(e) = result {
        let logs: Vec<String> = logs.iter().map(|p| p.log()).collect();
        panic!("{e:#}\n{}", logs.join("\n-----\n"));
    }
}

/// Waits until every `names` of [`BUCKET`] is in S3 only (catalog) and gone from the hub.
async fn wait_in_s3(tiers: &Tiers, names: &[String], logs: &[&RoleProcess]) {
    let result = wait_until("objects in s3 only", Duration::from_secs(120), || async {
        let catalog = tiers.catalog_locations(BUCKET).await;
        names
            .iter()
            .all(|n| catalog.get(n).is_some_and(|l| l == &vec!["s3".to_string()]))
            && Tiers::names(&tiers.hub_tier, BUCKET).await.is_empty()
    })
    .await;
    if let Err(e) = result {
        let logs: Vec<String> = logs.iter().map(|p| p.log()).collect();
        panic!(
            "{e:#}\ncatalog: {:?}\n{}",
            tiers.catalog_locations(BUCKET).await,
            logs.join("\n-----\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_standby_takes_over_when_the_leader_is_killed_and_nothing_moves_twice() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(common::HUB_TO_S3);
    let tiers = Tiers::connect(&topology).await;
    let dir = topology.dir().to_path_buf();

    let (a_port, b_port, up_port) = (free_port(), free_port(), free_port());
    let mut a = spawn_role(
        "cim-storage",
        "run",
        &config,
        a_port,
        &dir.join("manager-a.log"),
    );
    wait_gauge(a_port, 1.0, "manager a leads", &[&a]).await;
    let b = spawn_role(
        "cim-storage",
        "run",
        &config,
        b_port,
        &dir.join("manager-b.log"),
    );
    wait_gauge(b_port, 0.0, "manager b stands by", &[&a, &b]).await;
    let upload = spawn_role(
        "cim-gateway",
        "upload",
        &config,
        up_port,
        &dir.join("upload.log"),
    );

    let first: Vec<String> = (0..5).map(|i| format!("first-{i}")).collect();
    for (i, name) in first.iter().enumerate() {
        put_hub(&tiers, BUCKET, name, &content(i as u64, 50_000 + i * 1000)).await;
    }
    wait_in_s3(&tiers, &first, &[&a, &b, &upload]).await;
    assert_eq!(leader_gauge(b_port).await, Some(0.0), "b never planned");

    // The leader dies without a word; objects keep coming.
    a.sigkill();
    let second: Vec<String> = (0..5).map(|i| format!("second-{i}")).collect();
    for (i, name) in second.iter().enumerate() {
        put_hub(&tiers, BUCKET, name, &content(100 + i as u64, 60_000 + i)).await;
    }
    wait_gauge(b_port, 1.0, "manager b takes over", &[&b]).await;
    assert!(
        b.log().contains("leading"),
        "b never said it leads:\n{}",
        b.log()
    );

    // A second planner at the same time (a pass outside any lease) queues everything due
    // again: the work queue and the handlers make that harmless.
    let once = std::process::Command::new(cim_bin("cim-storage"))
        .args(["run", "--once", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(once.status.success(), "{once:?}");
    wait_in_s3(&tiers, &second, &[&b, &upload]).await;

    // Every version in S3 exactly once: one history manifest per object, no more.
    let s3 = topology.s3.client().await;
    let listed = s3
        .list_objects_v2()
        .bucket(&topology.s3.bucket)
        .prefix(format!("{PREFIX}versions/{BUCKET}/"))
        .send()
        .await
        .unwrap();
    let keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    assert_eq!(keys.len(), first.len() + second.len(), "{keys:#?}");
    let uploaded = sample(
        &try_scrape(up_port).await,
        "cim_s3_blobs_uploaded_total",
        &[("tier", "s3")],
    );
    assert_eq!(
        uploaded,
        Some((first.len() + second.len()) as f64),
        "each blob uploaded once"
    );

    // Who leads is in the shared status: b's heartbeat says so.
    let status = StatusBucket::open(&tiers.hub, 3).await.unwrap();
    let result = wait_until(
        "b's heartbeat says it leads",
        Duration::from_secs(30),
        || async {
            let mut leading = Vec::new();
            for key in status.heartbeat_keys().await.unwrap_or_default() {
                if let Ok(Some(beat)) = status.heartbeat(&key).await {
                    if beat.role == "manager" && beat.leader == Some(true) {
                        leading.push(beat.pid);
                    }
                }
            }
            leading == vec![b.pid().unwrap()]
        },
    )
    .await;
    result.unwrap_or_else(|e| panic!("{e:#}\n{}", b.log()));
}

/// A role started while the hub has no JetStream quorum yet — two of three nodes down, as
/// during a site's restart, so every bucket lookup is refused ("temporarily unavailable") or
/// unanswered — asks again (the start-up retry) instead of exiting; once the nodes are back it
/// opens its buckets and leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_role_started_before_the_hub_has_a_quorum_waits_for_it() {
    let mut topology = Topology::start().await.unwrap();
    let config = topology.write_config(common::HUB_TO_S3);
    topology.hub.nodes[1].stop();
    topology.hub.nodes[2].stop();
    let port = free_port();
    let manager = spawn_role(
        "cim-storage",
        "run",
        &config,
        port,
        &topology.dir().join("manager-forming.log"),
    );
    let waiting = wait_until(
        "the manager retries its start-up",
        Duration::from_secs(20),
        || async { manager.log().contains("transient failure; retrying") },
    )
    .await;
    waiting.unwrap_or_else(|e| panic!("{e:#}\n{}", manager.log()));
    assert!(manager.is_running(), "{}", manager.log());

    topology.hub.nodes[2].start().unwrap();
    wait_gauge(
        port,
        1.0,
        "the manager leads once the node is back",
        &[&manager],
    )
    .await;
}
