//! `cim-gateway serve` on real servers: the `cim.storage.object.ensure` service answers at once
//! for an object on the hub; restores one held only by S3 (planted, or moved there by the real
//! roles), verified, and then the plain object-store client reads it byte-for-byte; two concurrent requests share one restore; an
//! unknown object is `not_found`, a deleted one `deleted`, one only on the leaf `unavailable`;
//! a corrupted S3 blob is an `integrity` error and nothing appears on the hub; SIGTERM ends the
//! role promptly; a ready answer records an access (the policies' `idle`). Each case has its own bucket; one topology for all.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use cim_gateway::ensure::SUBJECT;
use cim_tests::{free_port, Topology};
use cim_tiering::digest::Sha256Digest;
use common::{
    content, plant, put_hub, sample, scrape, spawn_role, wait_only_in_s3, Roles, Tiers, HUB_TO_S3,
};
use serde_json::{json, Value};

/// Asks the service about `bucket`/`name`; the reply's JSON and its error-code header.
async fn ensure(client: &async_nats::Client, bucket: &str, name: &str) -> (Value, Option<String>) {
    ask(client, json!({"bucket": bucket, "name": name})).await
}

async fn ask(client: &async_nats::Client, request: Value) -> (Value, Option<String>) {
    let request = async_nats::Request::new()
        .payload(serde_json::to_vec(&request).unwrap().into())
        .timeout(Some(Duration::from_secs(120)));
    let reply = client.send_request(SUBJECT, request).await.unwrap();
    let code = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::service::NATS_SERVICE_ERROR_CODE))
        .map(|v| v.to_string());
    (serde_json::from_slice(&reply.payload).unwrap(), code)
}

/// `cim_ensure_restore_duration_seconds_count`: restores the service started.
async fn restores(port: u16) -> f64 {
    sample(
        &scrape(port).await,
        "cim_ensure_restore_duration_seconds_count",
        &[],
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ensure_makes_objects_ready_on_the_hub() {
    let topology = Topology::start().await.unwrap();
    // The policy names the hub as the tier that uploads to s3: restore's default target.
    let config = topology.write_config(HUB_TO_S3);
    let tiers = Tiers::connect(&topology).await;

    // A real move first: the roles move an object from the hub to S3, then stop (their `move`
    // policy would otherwise evict the restored copy again, and move the other cases' objects).
    let moved = content(5, 800_000);
    put_hub(&tiers, "ens-moved", "m.bin", &moved).await;
    let mut roles = Roles::start(&topology, &config);
    wait_only_in_s3(
        &tiers,
        &roles,
        "ens-moved",
        &["m.bin"],
        Duration::from_secs(180),
    )
    .await;
    roles.stop();

    let port = free_port();
    let mut serve = spawn_role(
        "cim-gateway",
        "serve",
        &config,
        port,
        &topology.dir().join("serve.log"),
    );
    serve
        .wait_for_log(SUBJECT, Duration::from_secs(60))
        .await
        .unwrap();
    let client = topology.hub.connect().await.unwrap();

    // On the hub: ready at once, nothing restored.
    let data = content(1, 300_000);
    put_hub(&tiers, "ens-hub", "a.bin", &data).await;
    let (reply, code) = ensure(&client, "ens-hub", "a.bin").await;
    assert_eq!(
        reply,
        json!({"status": "ready", "tier": "hub", "size": data.len(),
               "digest": Sha256Digest::of(&data).to_nats(), "restored": false}),
        "{}",
        serve.log()
    );
    assert_eq!(code, None);
    assert_eq!(restores(port).await, 0.0);
    // A ready answer counts as a read for the policies' `idle`: recorded before it is sent.
    let access = tiers.hub.get_key_value("cim_access").await.unwrap();
    let record = access
        .entry(cim_tiering::catalog::key("ens-hub", "a.bin"))
        .await
        .unwrap();
    assert!(record.is_some(), "no access record after a ready answer");

    // Only in S3: restored, verified, then read with the plain object-store client.
    let data = content(2, 1_500_000);
    plant(&topology, "ens-s3", "dir/b.bin", &data, |_| {}).await;
    let (reply, _) = ensure(&client, "ens-s3", "dir/b.bin").await;
    assert_eq!(
        reply,
        json!({"status": "ready", "tier": "hub", "size": data.len(),
               "digest": Sha256Digest::of(&data).to_nats(), "restored": true}),
        "{}",
        serve.log()
    );
    let (read, _) = Tiers::read(&tiers.hub, "ens-s3", "dir/b.bin").await;
    assert!(read == data, "the restored object differs");
    assert_eq!(restores(port).await, 1.0);
    // Asked again: on the hub now, no second restore.
    let (reply, _) = ensure(&client, "ens-s3", "dir/b.bin").await;
    assert_eq!(reply["restored"], json!(false), "{reply}");
    assert_eq!(restores(port).await, 1.0);

    // Two requests at once for one object: one restore, both ready.
    let data = content(3, 6_000_000);
    plant(&topology, "ens-twice", "big.bin", &data, |_| {}).await;
    let (first, second) = tokio::join!(
        ensure(&client, "ens-twice", "big.bin"),
        ensure(&client, "ens-twice", "big.bin")
    );
    for (reply, _) in [&first, &second] {
        assert_eq!(reply["status"], json!("ready"), "{reply}\n{}", serve.log());
    }
    assert_eq!(restores(port).await, 2.0, "{}", serve.log());
    let (read, _) = Tiers::read(&tiers.hub, "ens-twice", "big.bin").await;
    assert!(read == data, "the restored object differs");

    // Unknown: not found, naming the object.
    let (reply, code) = ensure(&client, "ens-hub", "nope.bin").await;
    assert_eq!(reply["status"], json!("error"), "{reply}");
    assert_eq!(reply["code"], json!("not_found"), "{reply}");
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("ens-hub/nope.bin"),
        "{reply}"
    );
    assert_eq!(code.as_deref(), Some("404"));

    // Deleted in S3 (a tombstone): deleted.
    plant(&topology, "ens-s3", "gone.bin", &data[..1000], |m| {
        m["format"] = 3.into();
        m["deleted"] = json!({"at": "2026-01-02T00:00:00Z", "by": "cim-gateway delete"});
    })
    .await;
    let (reply, _) = ensure(&client, "ens-s3", "gone.bin").await;
    assert_eq!(reply["code"], json!("deleted"), "{reply}");

    // Only on the leaf: unavailable, said why, nothing waited for.
    tiers.put_leaf("ens-leaf", "l.bin", &data[..1000]).await;
    let (reply, _) = ensure(&client, "ens-leaf", "l.bin").await;
    assert_eq!(reply["code"], json!("unavailable"), "{reply}");
    assert!(
        reply["message"].as_str().unwrap().contains("leaf"),
        "{reply}"
    );

    // Not a request: bad_request.
    let (reply, _) = ask(&client, json!({"bucket": "ens-hub"})).await;
    assert_eq!(reply["code"], json!("bad_request"), "{reply}");

    // A corrupted S3 blob (it holds other bytes than its manifest's digest says): integrity
    // error naming the object, and nothing on the hub.
    let data = content(4, 400_000);
    let claimed = Sha256Digest::of(b"something else");
    common::plant_lying(&topology, "ens-bad", "bad.bin", &data, &claimed).await;
    let (reply, code) = ensure(&client, "ens-bad", "bad.bin").await;
    assert_eq!(
        reply["code"],
        json!("integrity"),
        "{reply}\n{}",
        serve.log()
    );
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("ens-bad/bad.bin"),
        "{reply}"
    );
    assert_eq!(code.as_deref(), Some("500"));
    let held = tiers.hub_tier.latest("ens-bad", "bad.bin").await.unwrap();
    assert!(held.is_none(), "the hub holds {held:?}");
    assert_eq!(restores(port).await, 3.0);

    // The object the roles moved to S3: restored, and byte-for-byte what was written.
    let (reply, _) = ensure(&client, "ens-moved", "m.bin").await;
    assert_eq!(
        reply,
        json!({"status": "ready", "tier": "hub", "size": moved.len(),
               "digest": Sha256Digest::of(&moved).to_nats(), "restored": true}),
        "{}",
        serve.log()
    );
    let (read, _) = Tiers::read(&tiers.hub, "ens-moved", "m.bin").await;
    assert!(read == moved, "the restored object differs");
    assert_eq!(restores(port).await, 4.0);

    // Every answer was counted by outcome.
    let metrics = scrape(port).await;
    let counted = |outcome| {
        sample(
            &metrics,
            "cim_ensure_requests_total",
            &[("outcome", outcome)],
        )
    };
    // The second concurrent request may come in after the restore: ready then.
    let ready = counted("ready").unwrap() + counted("restored").unwrap();
    assert_eq!(ready, 6.0, "{metrics}");
    assert_eq!(counted("integrity"), Some(1.0), "{metrics}");

    // SIGTERM ends the role within seconds.
    let status = serve.sigterm_and_wait(Duration::from_secs(10)).unwrap();
    assert!(status.success(), "{status}\n{}", serve.log());
}
