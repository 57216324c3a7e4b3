//! Leaf → cluster verification on real servers: the mirror role verifies each cluster copy as
//! it is sourced (its follower), reads a copy back only when the follower has no verdict, and a
//! bad copy is caught — no eviction, an error naming the object — whichever of the two proves it.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use cim_tests::{wait_until, Topology};
use cim_tiering::digest::Sha256Digest;
use common::{content, rewrite_meta, sample, scrape, try_scrape, Roles, Tiers};

const BUCKET: &str = "sensors";

/// Leaf → cluster only, at once: nothing moves on to S3, so the cluster copies stay to look at.
const LEAF_TO_HUB: &str = r#"
[[policy]]
name = "edge-to-cluster"
buckets = ["sensors*"]
from = "leaf"
to = "hub"
action = "move"
after = "0s"
"#;

const HUB: [(&str, &str); 1] = [("tier", "hub")];

/// Puts an object on the leaf whose meta lies: its digest is not its content's (the size is).
/// The cluster copy sourced from it fails its digest, as a copy damaged on the way would.
async fn put_liar(tiers: &Tiers, name: &str) {
    let data = content(66, 300 * 1024);
    tiers.put_leaf(BUCKET, name, &data).await;
    let lie = Sha256Digest::of(b"not the content").to_nats();
    rewrite_meta(&tiers.leaf, BUCKET, name, |meta| {
        meta["digest"] = serde_json::Value::String(lie);
    })
    .await;
}

/// Waits until the leaf holds exactly `left` (sorted) of `BUCKET`.
async fn wait_leaf_holds(tiers: &Tiers, roles: &Roles, left: &[&str]) {
    let result = wait_until("the leaf evictions", Duration::from_secs(120), || async {
        Tiers::names(&tiers.leaf_tier, BUCKET).await == left
    })
    .await;
    if let Err(e) = result {
        panic!(
            "{e:#}\nleaf: {:?}\ncatalog: {:?}\n{}",
            Tiers::names(&tiers.leaf_tier, BUCKET).await,
            tiers.catalog_locations(BUCKET).await,
            roles.logs()
        );
    }
}

/// Waits until the mirror role's metric `name` (tier hub) reaches `at_least`; returns its value.
async fn wait_metric(roles: &Roles, name: &str, at_least: f64) -> f64 {
    let port = roles.mirror_metrics;
    let result = wait_until(name, Duration::from_secs(60), || async {
        sample(&try_scrape(port).await, name, &HUB).is_some_and(|v| v >= at_least)
    })
    .await;
    if let Err(e) = result {
        panic!("{e:#}\n{}\n{}", scrape(port).await, roles.logs());
    }
    sample(&scrape(port).await, name, &HUB).unwrap()
}

/// Every good object sourced while the mirror role ran is verified as it arrived and evicted
/// from the leaf without a single full read-back; a copy whose content does not match its meta is
/// caught by the follower, named, counted, and its leaf copy stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_are_verified_as_they_arrive_and_a_bad_one_is_caught_without_a_read_back() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(LEAF_TO_HUB);
    let tiers = Tiers::connect(&topology).await;

    // Before the roles start (the mirror role creates the cluster bucket and follows it from
    // its first message): sizes around the 128 KiB chunk, an empty object, and a liar.
    let first: Vec<(String, Vec<u8>)> = [0usize, 1, 128 * 1024, 128 * 1024 + 1, 3 << 20]
        .iter()
        .enumerate()
        .map(|(i, &len)| (format!("a{i}"), content(i as u64 + 1, len)))
        .collect();
    for (name, data) in &first {
        tiers.put_leaf(BUCKET, name, data).await;
    }
    put_liar(&tiers, "liar").await;

    let roles = Roles::start(&topology, &config);
    wait_leaf_holds(&tiers, &roles, &["liar"]).await;

    // More objects while the role runs, into the bucket it already follows.
    let second: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            (
                format!("b{i}"),
                content(100 + i, 200 * 1024 * (i as usize + 1)),
            )
        })
        .collect();
    for (name, data) in &second {
        tiers.put_leaf(BUCKET, name, data).await;
    }
    wait_leaf_holds(&tiers, &roles, &["liar"]).await;

    // The liar's eviction failed with the follower's verdict: an integrity failure.
    let failed = [
        ("from_tier", "leaf"),
        ("to_tier", "hub"),
        ("reason", "integrity"),
    ];
    let result = wait_until(
        "the liar's eviction refused",
        Duration::from_secs(60),
        || async {
            sample(
                &scrape(roles.mirror_metrics).await,
                "cim_transfer_failures_total",
                &failed,
            )
            .is_some_and(|v| v >= 1.0)
        },
    )
    .await;
    if let Err(e) = result {
        panic!("{e:#}\n{}", roles.logs());
    }

    let metrics = scrape(roles.mirror_metrics).await;
    let good = (first.len() + second.len()) as f64;
    assert_eq!(
        sample(&metrics, "cim_mirror_verified_on_arrival_total", &HUB),
        Some(good),
        "every good copy verified as it arrived:\n{metrics}"
    );
    assert_eq!(
        sample(&metrics, "cim_mirror_read_backs_total", &HUB),
        Some(0.0),
        "no copy read back:\n{metrics}\n{}",
        roles.logs()
    );
    assert!(
        sample(&metrics, "cim_integrity_failures_total", &HUB).is_some_and(|v| v >= 1.0),
        "{metrics}"
    );
    let log = roles.mirror.log();
    assert!(
        log.lines()
            .any(|l| l.contains("integrity check failed") && l.contains("liar")),
        "no error names the liar:\n{log}"
    );

    // The good ones are recorded on the cluster only; the liar nowhere as verified.
    let catalog = tiers.catalog_locations(BUCKET).await;
    for (name, _) in first.iter().chain(&second) {
        assert_eq!(catalog.get(name), Some(&vec!["hub".to_string()]), "{name}");
    }
    assert!(
        catalog
            .get("liar")
            .is_none_or(|l| !l.contains(&"hub".to_string())),
        "{catalog:?}"
    );
    // And they read back intact from the cluster.
    for (name, data) in first.iter().chain(&second) {
        assert_eq!(
            &Tiers::read(&tiers.hub, BUCKET, name).await.0,
            data,
            "{name}"
        );
    }
}

/// A bad copy sourced while the mirror role was down (its follower never saw it) is read back,
/// caught the same way — no eviction, an error naming it — and the restarted role follows the
/// bucket from then on: the next object is verified as it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_copy_sourced_while_the_mirror_was_down_is_caught_by_the_read_back() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(LEAF_TO_HUB);
    let tiers = Tiers::connect(&topology).await;

    let mut roles = Roles::start(&topology, &config);
    tiers.put_leaf(BUCKET, "before", &content(1, 1000)).await;
    wait_leaf_holds(&tiers, &roles, &[]).await;

    roles.mirror.sigkill();
    let log_before = roles.mirror.log().len();
    put_liar(&tiers, "liar").await;
    // Sourcing goes on without the role: wait for the lie to reach the cluster.
    let lie = Sha256Digest::of(b"not the content").to_nats();
    wait_until("the liar sourced", Duration::from_secs(60), || async {
        tiers
            .hub_tier
            .info(BUCKET, "liar")
            .await
            .ok()
            .flatten()
            .and_then(|i| i.digest)
            == Some(lie.clone())
    })
    .await
    .unwrap();

    roles.mirror.restart().unwrap();
    wait_metric(&roles, "cim_mirror_read_backs_total", 1.0).await;
    wait_metric(&roles, "cim_integrity_failures_total", 1.0).await;
    let log = roles.mirror.log()[log_before..].to_string();
    assert!(
        log.lines()
            .any(|l| l.contains("integrity check failed") && l.contains("liar")),
        "no error names the liar:\n{log}"
    );
    assert_eq!(Tiers::names(&tiers.leaf_tier, BUCKET).await, ["liar"]);

    // The read-back made the role follow the bucket: the next object needs none.
    tiers
        .put_leaf(BUCKET, "after", &content(2, 500 * 1024))
        .await;
    wait_leaf_holds(&tiers, &roles, &["liar"]).await;
    let metrics = scrape(roles.mirror_metrics).await;
    assert_eq!(
        sample(&metrics, "cim_mirror_verified_on_arrival_total", &HUB),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, "cim_mirror_read_backs_total", &HUB),
        Some(1.0),
        "only the liar was read back:\n{metrics}"
    );
    let catalog = tiers.catalog_locations(BUCKET).await;
    assert!(
        catalog
            .get("liar")
            .is_none_or(|l| !l.contains(&"hub".to_string())),
        "{catalog:?}"
    );
}
