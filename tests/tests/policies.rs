//! The policy language on the real topology (issue 10 item 1): object conditions decide what
//! the roles move, and a `copy` plus a `move` on the same tier pair (the backup-and-tier
//! pattern) upload once, then evict.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::object_store::ObjectMetadata;
use cim_tests::{cim_bin, wait_until, Topology};
use common::{content, describe, put_hub, work_messages, Roles, Tiers};

const CONDITIONS: &str = r#"
[[policy]]
name = "csv-mid-size"
buckets = ["pol"]
names = ["*.csv"]
min_size = "2 KiB"
max_size = "8 KiB"
from = "hub"
to = "s3"
action = "copy"
after = "0s"

[[policy]]
name = "cold"
buckets = ["pol"]
prefix = "cold/"
metadata = { class = "cold" }
from = "hub"
to = "s3"
action = "copy"
after = "0s"

[[policy]]
name = "switched-off"
buckets = ["*"]
from = "hub"
to = "s3"
action = "move"
after = "0s"
enabled = false
"#;

async fn put_with_metadata(tiers: &Tiers, bucket: &str, name: &str, class: &str, data: &[u8]) {
    let store = common::ensure_bucket(&tiers.hub_tier, bucket).await;
    let meta = ObjectMetadata {
        name: name.to_string(),
        metadata: HashMap::from([("class".to_string(), class.to_string())]),
        ..Default::default()
    };
    store.put(meta, &mut &data[..]).await.unwrap();
}

/// Objects on both sides of every condition (name glob, size range, prefix, metadata) and a
/// disabled policy that would move everything: one manager pass queues exactly the matching
/// objects (read from the work stream before any role runs), and the roles then copy exactly
/// those to S3 and leave every object on the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_roles_move_exactly_the_objects_the_conditions_match() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(CONDITIONS);
    let tiers = Tiers::connect(&topology).await;
    let bucket = "pol";
    for (name, len) in [
        ("a.csv", 4096),      // matches csv-mid-size
        ("small.csv", 1000),  // below min_size
        ("large.csv", 16384), // above max_size
        ("a.txt", 4096),      // name glob does not match
    ] {
        put_hub(&tiers, bucket, name, &content(len as u64, len)).await;
    }
    put_with_metadata(&tiers, bucket, "cold/x", "cold", &content(1, 100)).await; // matches cold
    put_with_metadata(&tiers, bucket, "cold/y", "hot", &content(2, 100)).await; // metadata differs
    put_with_metadata(&tiers, bucket, "warm/z", "cold", &content(3, 100)).await; // prefix differs
    let expected: BTreeSet<String> = ["a.csv", "cold/x"].map(String::from).into();

    // One pass, before any role runs: what it queued is what the policies decided.
    let once = Command::new(cim_bin("cim-storage"))
        .args(["run", "--once", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(once.status.success(), "{}", describe(&once));
    let queued: BTreeSet<String> = work_messages(&tiers.hub)
        .await
        .into_iter()
        .map(|(_, item)| item["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(queued, expected, "{}", describe(&once));

    let roles = Roles::start(&topology, &config);
    let copied = wait_until(
        "the matching objects copied to s3",
        Duration::from_secs(120),
        || async {
            let catalog = tiers.catalog_locations(bucket).await;
            expected.iter().all(|n| {
                catalog
                    .get(n)
                    .is_some_and(|l| l.contains(&"s3".to_string()))
            })
        },
    )
    .await;
    copied.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    let in_s3: BTreeSet<String> = tiers
        .catalog_locations(bucket)
        .await
        .into_iter()
        .filter(|(_, l)| l.contains(&"s3".to_string()))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(in_s3, expected);
    // `copy` keeps the hub copies; the disabled `move` evicted nothing.
    assert_eq!(Tiers::names(&tiers.hub_tier, bucket).await.len(), 7);
}

/// The backup-and-tier pattern: `copy` hub → S3 at once plus `move` hub → S3 after a few
/// seconds on the same pair. The copy uploads; the move then evicts the hub copy within
/// seconds — before, its work item had the copy's id and was dropped as a duplicate for the
/// stream's 10-minute window, so the eviction came 10 minutes late.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_then_tier_on_the_same_pair_uploads_then_evicts() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(
        r#"
[[policy]]
name = "backup"
buckets = ["tiered"]
from = "hub"
to = "s3"
action = "copy"
after = "0s"

[[policy]]
name = "tier"
buckets = ["tiered"]
from = "hub"
to = "s3"
action = "move"
after = "6s"
"#,
    );
    let tiers = Tiers::connect(&topology).await;
    let bucket = "tiered";
    let names = ["t1", "t2", "t3"];
    for (i, name) in names.iter().enumerate() {
        put_hub(&tiers, bucket, name, &content(10 + i as u64, 3000)).await;
    }
    let roles = Roles::start(&topology, &config);
    // First the backup: in S3, still on the hub.
    let backed_up = wait_until(
        "backed up, still on the hub",
        Duration::from_secs(60),
        || async {
            let catalog = tiers.catalog_locations(bucket).await;
            names.iter().all(|n| {
                catalog
                    .get(*n)
                    .is_some_and(|l| l.contains(&"s3".to_string()))
            })
        },
    )
    .await;
    backed_up.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    // Then the move: only in S3, well within the duplicate window.
    let moved = wait_until("moved off the hub", Duration::from_secs(90), || async {
        let catalog = tiers.catalog_locations(bucket).await;
        names.iter().all(|n| {
            catalog
                .get(*n)
                .is_some_and(|l| l == &vec!["s3".to_string()])
        }) && Tiers::names(&tiers.hub_tier, bucket).await.is_empty()
    })
    .await;
    if let Err(e) = moved {
        let catalog = tiers.catalog_locations(bucket).await;
        panic!("{e:#}\ncatalog: {catalog:?}\n{}", roles.logs());
    }
}

/// A `copy` to one tier and a `move` to another from the same source both decide (transfers
/// to different destinations are independent), so both are queued. The move must not evict
/// the source before the copy is verified: that would leave the copy nothing to read and the
/// object with one copy where the policies declare two. Here the copy's tier is unreachable
/// at first: the move's upload completes, the hub copy stays (several retries of the move
/// later); once the copy's tier is reachable, the copy lands and only then the hub copy goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_waits_for_a_copy_to_another_tier_before_evicting() {
    let topology = Topology::start().await.unwrap();
    let policies = |backup_endpoint: &str| {
        common::s3_tier_toml(&topology, "backup", backup_endpoint, "backup/")
            + r#"
[[policy]]
name = "backup"
buckets = ["both"]
from = "hub"
to = "backup"
action = "copy"
after = "0s"

[[policy]]
name = "archive"
buckets = ["both"]
from = "hub"
to = "s3"
action = "move"
after = "0s"
"#
    };
    // Nothing listens there: every attempt of the backup copy fails (and is retried).
    let closed = format!("http://127.0.0.1:{}", cim_tests::free_port());
    let config = topology.write_config(&policies(&closed));
    let tiers = Tiers::connect(&topology).await;
    let bucket = "both";
    let data = content(40, 5000);
    put_hub(&tiers, bucket, "o", &data).await;
    let mut roles = Roles::start(&topology, &config);

    let archived = wait_until("archived on s3", Duration::from_secs(60), || async {
        tiers
            .catalog_locations(bucket)
            .await
            .get("o")
            .is_some_and(|l| l.contains(&"s3".to_string()))
    })
    .await;
    archived.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    // The move's item is retried with a growing pause; give it several attempts.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        Tiers::names(&tiers.hub_tier, bucket).await,
        vec!["o".to_string()],
        "the move evicted the hub copy before the backup copy existed\n{}",
        roles.logs()
    );
    assert!(
        roles.logs().contains("kept until policy"),
        "no log line says why the hub copy stays\n{}",
        roles.logs()
    );
    // `explain` says so too: the move is waiting, for the backup copy.
    let explained = common::explain_json(&config, bucket, "o");
    let archive = explained["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["tier"] == "hub" && p["policy"] == "archive")
        .unwrap_or_else(|| panic!("{explained:#}"));
    assert_eq!(archive["outcome"], "waiting", "{explained:#}");
    assert!(
        archive["reason"]
            .as_str()
            .unwrap()
            .contains("waits for a verified copy from policy \"backup\" (copy to tier backup)"),
        "{explained:#}"
    );

    // The backup tier becomes reachable (the real endpoint): the copy lands, then the move
    // evicts.
    std::fs::write(
        &config,
        topology.config_toml(&policies(&topology.s3.endpoint)),
    )
    .unwrap();
    roles.restart_upload();
    let done = wait_until(
        "backed up and archived, gone from the hub",
        Duration::from_secs(90),
        || async {
            let catalog = tiers.catalog_locations(bucket).await;
            catalog
                .get("o")
                .is_some_and(|l| l == &vec!["backup".to_string(), "s3".to_string()])
                && Tiers::names(&tiers.hub_tier, bucket).await.is_empty()
        },
    )
    .await;
    if let Err(e) = done {
        let catalog = tiers.catalog_locations(bucket).await;
        panic!("{e:#}\ncatalog: {catalog:?}\n{}", roles.logs());
    }
}

/// A `copy` policy "backup" of `bucket` (hub → s3, at once), its object "o" (5,000 bytes of
/// `seed`) put on the hub, the roles started and "o" backed up: the policy's TOML, the
/// configuration file and the running roles.
async fn backed_up(
    topology: &Topology,
    tiers: &Tiers,
    bucket: &str,
    seed: u64,
) -> (String, std::path::PathBuf, Roles) {
    let backup = format!(
        r#"
[[policy]]
name = "backup"
buckets = ["{bucket}"]
from = "hub"
to = "s3"
action = "copy"
after = "0s"
"#
    );
    put_hub(tiers, bucket, "o", &content(seed, 5000)).await;
    let config = topology.write_config(&backup);
    let roles = Roles::start(topology, &config);
    let done = wait_until("backed up", Duration::from_secs(60), || async {
        common::current_manifest(topology, bucket, "o")
            .await
            .is_some()
    })
    .await;
    done.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    (backup, config, roles)
}

/// Sets the description of the hub's object "o" of `bucket`, as a client would: the same
/// content and nuid under a new meta. (async-nats 0.51's `update_metadata` changes the name
/// and the description only — its metadata and headers fields are not applied; a client that
/// publishes the meta itself can change those too, which `Manifest::describes` compares.)
async fn describe_hub_object(tiers: &Tiers, bucket: &str, description: &str) {
    use async_nats::jetstream::object_store::UpdateMetadata;

    let store = tiers.hub.get_object_store(bucket).await.unwrap();
    store
        .update_metadata(
            "o",
            UpdateMetadata {
                name: "o".into(),
                description: Some(description.into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

/// A `copy` keeps its S3 copy up to date with the object's metadata: a description updated on
/// the hub after the backup reaches the manifest (the blob is reused, the hub keeps the
/// object), and the catalog records the S3 copy as of the updated version. An update that
/// changes nothing a manifest holds (the same description again) writes no manifest; the
/// S3 copy is only recorded as that version's, so the manager stops asking for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_follows_a_metadata_update_on_the_hub() {
    let topology = Topology::start().await.unwrap();
    let tiers = Tiers::connect(&topology).await;
    let bucket = "described";
    let (_, config, roles) = backed_up(&topology, &tiers, bucket, 71).await;
    let first = common::current_manifest(&topology, bucket, "o")
        .await
        .unwrap();

    // Both updates as a client would make them, the roles running.
    let describe_as = |text: &'static str| describe_hub_object(&tiers, bucket, text);
    // The S3 copy's recorded version, and the hub's current one.
    let versions = || async {
        let entry = tiers.catalog.get(bucket, "o").await.unwrap();
        let on_s3 = entry.as_ref().and_then(|e| e.location_seq("s3"));
        let on_hub = tiers
            .hub_tier
            .latest(bucket, "o")
            .await
            .unwrap()
            .map(|l| l.seq);
        (on_s3, on_hub)
    };

    describe_as("annotated after the backup").await;
    let updated = wait_until("the update on s3", Duration::from_secs(60), || async {
        common::current_manifest(&topology, bucket, "o")
            .await
            .is_some_and(|m| m["description"] == "annotated after the backup")
    })
    .await;
    if let Err(e) = updated {
        panic!("{e:#} {:?}\n{}", versions().await, roles.logs());
    }
    let second = common::current_manifest(&topology, bucket, "o")
        .await
        .unwrap();
    assert_eq!(second["blob_key"], first["blob_key"], "the blob is reused");
    let recorded = wait_until(
        "recorded as the update's copy",
        Duration::from_secs(30),
        || async {
            let (on_s3, on_hub) = versions().await;
            on_s3.is_some() && on_s3 == on_hub
        },
    )
    .await;
    if let Err(e) = recorded {
        panic!("{e:#} {:?}\n{}", versions().await, roles.logs());
    }

    // `explain` names the version each copy was verified for, as its copy lines do.
    let explained = common::explain_json(&config, bucket, "o");
    let hub = explained["copies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["tier"] == "hub")
        .unwrap_or_else(|| panic!("{explained:#}"));
    assert_eq!(explained["catalog_seq"]["s3"], hub["seq"], "{explained:#}");

    // The same description again: a new meta, nothing new for S3.
    describe_as("annotated after the backup").await;
    let (before, _) = versions().await;
    let recorded = wait_until(
        "recorded as the new meta's copy",
        Duration::from_secs(60),
        || async {
            let (on_s3, on_hub) = versions().await;
            on_s3 != before && on_s3 == on_hub
        },
    )
    .await;
    if let Err(e) = recorded {
        panic!("{e:#} {:?}\n{}", versions().await, roles.logs());
    }
    let third = common::current_manifest(&topology, bucket, "o")
        .await
        .unwrap();
    assert_eq!(
        third, second,
        "no manifest written for an update S3 already has"
    );
    assert_eq!(
        Tiers::names(&tiers.hub_tier, bucket).await,
        vec!["o"],
        "a copy"
    );
}

/// Backup now, tier later, and the user annotates in between: the `copy` uploads the object,
/// its metadata is updated on the hub (same content, same nuid), then a `move` takes it off the
/// hub. The S3 copy left must carry the updated metadata — before, the move found the content
/// already uploaded and evicted the hub copy, and the update was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_metadata_update_after_the_backup_reaches_s3_before_the_move_evicts() {
    let topology = Topology::start().await.unwrap();
    let tiers = Tiers::connect(&topology).await;
    let bucket = "annotated";
    let (backup, _, mut roles) = backed_up(&topology, &tiers, bucket, 70).await;
    roles.stop();
    describe_hub_object(&tiers, bucket, "annotated after the backup").await;

    let tier = format!(
        "{backup}
[[policy]]
name = \"tier\"
buckets = [\"annotated\"]
from = \"hub\"
to = \"s3\"
action = \"move\"
after = \"0s\"
"
    );
    let roles = Roles::start(&topology, &topology.write_config(&tier));
    let moved = wait_until("moved off the hub", Duration::from_secs(60), || async {
        Tiers::names(&tiers.hub_tier, bucket).await.is_empty()
    })
    .await;
    moved.unwrap_or_else(|e| panic!("{e:#}\n{}", roles.logs()));
    let manifest = common::current_manifest(&topology, bucket, "o")
        .await
        .unwrap();
    assert_eq!(
        manifest["description"],
        "annotated after the backup",
        "{manifest:#}\n{}",
        roles.logs()
    );
    assert_eq!(
        tiers.catalog_locations(bucket).await.get("o"),
        Some(&vec!["s3".to_string()])
    );
}
