//! Crash points inside a move, reproduced by leaving the system in the state a SIGKILL at that
//! line would leave, then letting the role handle the redelivered work item.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_nats::jetstream::stream::LastRawMessageErrorKind;
use cim_gateway::upload::UploadHandler;
use cim_policies::{Action, Config};
use cim_tests::Topology;
use cim_tiering::jetstream::{chunk_subject, meta_subject, stream_name};
use cim_tiering::work::{Handler, ObjectMove, Progress, WorkItem};
use cim_tiering::System;
use common::content;

async fn system(topology: &Topology) -> Arc<System> {
    let text = topology.config_toml("");
    let config = Config::from_toml_str(&text, "test.toml").unwrap();
    Arc::new(System::connect(config, "crash-test").await.unwrap())
}

async fn has_messages(system: &System, bucket: &str, subject: &str) -> bool {
    let hub = system.jetstream_tier("hub").unwrap();
    let stream = hub.context().get_stream(stream_name(bucket)).await.unwrap();
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(_) => true,
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => false,
        Err(e) => panic!("{e}"),
    }
}

/// SIGKILL between an eviction's meta purge and its chunk purge: the object is invisible but its
/// chunks remain, and the catalog still places it on the cluster. The redelivered item must drop
/// the chunks and correct the catalog.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_killed_between_meta_and_chunk_purge_leaves_no_orphans() {
    let topology = Topology::start().await.unwrap();
    let system = system(&topology).await;
    let hub = system.jetstream_tier("hub").unwrap().clone();
    let store = common::ensure_bucket(&hub, "crash").await;
    let data = content(40, 3 * 1024 * 1024);
    let info = store.put("obj", &mut &data[..]).await.unwrap();

    let stores = cim_gateway::upload::connect_s3_tiers(&system)
        .await
        .unwrap();
    let handler = UploadHandler::new(system.clone(), stores);
    let job = |action| ObjectMove {
        policy: "p".into(),
        from: "hub".into(),
        to: "s3".into(),
        action,
        bucket: "crash".into(),
        name: "obj".into(),
        size: data.len() as u64,
        digest: cim_tiering::digest::Sha256Digest::of(&data),
        nuid: info.nuid.clone(),
        seq: 0,
    };
    // A copy first: S3 holds a verified copy, recorded in the catalog; the hub keeps its own.
    handler
        .handle(WorkItem::Upload(job(Action::Copy)), Progress::new())
        .await
        .unwrap();
    let entry = system.catalog.get("crash", "obj").await.unwrap().unwrap();
    let tiers: Vec<&str> = entry.locations.keys().map(String::as_str).collect();
    assert_eq!(
        tiers,
        ["s3"],
        "the hub copy is not recorded by the upload role"
    );

    // The mirror role had recorded the cluster copy when it evicted the leaf copy.
    let digest = cim_tiering::digest::Sha256Digest::of(&data);
    system
        .catalog
        .record_copy(
            "crash",
            "obj",
            &cim_tiering::catalog::Version {
                size: data.len() as u64,
                digest,
                seq: hub.version("crash", "obj").await.unwrap().unwrap().seq,
            },
            "hub",
            None,
        )
        .await
        .unwrap();

    // The state a kill right after the meta purge leaves behind.
    let stream = hub
        .context()
        .get_stream(stream_name("crash"))
        .await
        .unwrap();
    stream
        .purge()
        .filter(meta_subject("crash", "obj"))
        .await
        .unwrap();
    assert!(hub.info("crash", "obj").await.unwrap().is_none());
    assert!(has_messages(&system, "crash", &chunk_subject("crash", &info.nuid)).await);

    // Redelivery of the move.
    handler
        .handle(WorkItem::Upload(job(Action::Move)), Progress::new())
        .await
        .unwrap();
    assert!(
        !has_messages(&system, "crash", &chunk_subject("crash", &info.nuid)).await,
        "orphaned chunks must be purged"
    );
    // The catalog no longer places the object on the cluster.
    let entry = system.catalog.get("crash", "obj").await.unwrap().unwrap();
    let tiers: Vec<&str> = entry.locations.keys().map(String::as_str).collect();
    assert_eq!(tiers, ["s3"]);
    // And the S3 copy is intact.
    let s3: BTreeMap<_, _> = cim_gateway::upload::connect_s3_tiers(&system)
        .await
        .unwrap();
    let manifest = s3["s3"]
        .get_manifest("crash", "obj")
        .await
        .unwrap()
        .unwrap();
    let mut out = Vec::new();
    s3["s3"].read_verified(&manifest, &mut out).await.unwrap();
    assert!(out == data);
}

/// A reader whose chunks vanish underneath it (purged by an eviction, or a lagging replica
/// answering for an object already moved on) must fail within the idle timeout as a transient
/// error, never hang its worker forever nor raise an integrity alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_whose_chunks_vanish_fails_transiently_instead_of_hanging() {
    let topology = Topology::start().await.unwrap();
    let system = system(&topology).await;
    let hub = system.jetstream_tier("hub").unwrap().clone();
    let store = common::ensure_bucket(&hub, "vanish").await;
    let data = content(41, 1024 * 1024);
    let info = store.put("obj", &mut &data[..]).await.unwrap();
    let stream = hub
        .context()
        .get_stream(stream_name("vanish"))
        .await
        .unwrap();
    stream
        .purge()
        .filter(chunk_subject("vanish", &info.nuid))
        .await
        .unwrap();

    let digest = cim_tiering::digest::Sha256Digest::of(&data);
    let bound = cim_tiering::jetstream::READ_IDLE_TIMEOUT * 3;
    let result = tokio::time::timeout(
        bound,
        hub.read_verified(
            "vanish",
            &info,
            data.len() as u64,
            &digest,
            &mut tokio::io::sink(),
        ),
    )
    .await
    .expect("the read must not hang");
    let err = result.expect_err("chunks are gone");
    assert!(err.is_transient(), "{err}");
    assert!(
        !matches!(err, cim_tiering::Error::Integrity(_)),
        "missing chunks are not corruption: {err}"
    );
}
