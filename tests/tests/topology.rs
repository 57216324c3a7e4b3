//! Smoke test of the test kit: the real topology replicates an object from the leaf to the
//! hub by stream sourcing, survives the loss of a hub node, and Garage serves S3.

use std::time::{Duration, Instant};

use async_nats::jetstream::{
    self,
    object_store::{self, ObjectStore},
    stream::{self, DiscardPolicy, External, Source},
};
use aws_sdk_s3::primitives::ByteStream;
use base64::Engine as _;
use cim_tests::{wait_for, Topology};
use sha2::{Digest as _, Sha256};

const OBJECT_SIZE: usize = 1024 * 1024;

/// The object store digest of `data`: `SHA-256=<base64url>`.
fn digest_of(data: &[u8]) -> String {
    format!(
        "SHA-256={}",
        base64::engine::general_purpose::URL_SAFE.encode(Sha256::digest(data))
    )
}

/// Reads `name` from `store`: its bytes and the digest from its info.
async fn read_object(store: &ObjectStore, name: &str) -> anyhow::Result<(Vec<u8>, String)> {
    let info = store.info(name).await?;
    let mut object = store.get(name).await?;
    let data = cim_tests::read_object_to_end(&mut object).await?;
    Ok((data, info.digest.unwrap_or_default()))
}

/// Polls until the hub serves `smoke/obj` with exactly `expected` bytes and `digest`.
async fn wait_hub_object(
    hub_js: &jetstream::Context,
    expected: &[u8],
    digest: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_for("object smoke/obj readable on the hub", timeout, || async {
        let store = match hub_js.get_object_store("smoke").await {
            Ok(s) => s,
            Err(e) => return Ok(Some(format!("get_object_store: {e}"))),
        };
        match read_object(&store, "obj").await {
            Ok((data, hub_digest)) => {
                anyhow::ensure!(
                    hub_digest == digest,
                    "hub digest {hub_digest} != leaf digest {digest}"
                );
                anyhow::ensure!(
                    data.len() == expected.len() && data == expected,
                    "hub returned {} bytes that differ from the {} bytes written",
                    data.len(),
                    expected.len()
                );
                anyhow::ensure!(digest_of(&data) == digest, "bytes do not match the digest");
                Ok(None)
            }
            Err(e) => Ok(Some(format!("read: {e}"))),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topology_replicates_survives_node_loss_and_serves_s3() -> anyhow::Result<()> {
    let t0 = Instant::now();
    let mut topo = Topology::start().await?;
    let started = t0.elapsed();

    // 1. Object store bucket on the leaf, sourced into the hub.
    let leaf_js = jetstream::new(topo.leaf.connect().await?);
    let leaf_store = leaf_js
        .create_object_store(object_store::Config {
            bucket: "smoke".to_string(),
            ..Default::default()
        })
        .await?;
    let data: Vec<u8> = (0..OBJECT_SIZE)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 9)) as u8)
        .collect();
    let put = leaf_store.put("obj", &mut data.as_slice()).await?;
    let digest = put.digest.clone().unwrap_or_default();
    assert_eq!(digest, digest_of(&data), "leaf digest");
    assert_eq!(put.size, OBJECT_SIZE);

    let mut hub_js = jetstream::new(topo.hub.connect().await?);
    // Short request timeout: while a stream leader is re-elected, requests go unanswered.
    hub_js.set_timeout(Duration::from_secs(2));
    hub_js
        .create_stream(stream::Config {
            name: "OBJ_smoke".to_string(),
            subjects: vec!["$O.smoke.C.>".to_string(), "$O.smoke.M.>".to_string()],
            num_replicas: 3,
            discard: DiscardPolicy::New,
            allow_rollup: true,
            allow_direct: true,
            sources: Some(vec![Source {
                name: "OBJ_smoke".to_string(),
                external: Some(External {
                    api_prefix: "$JS.leaf.API".to_string(),
                    delivery_prefix: None,
                }),
                ..Default::default()
            }]),
            ..Default::default()
        })
        .await?;
    wait_hub_object(&hub_js, &data, &digest, Duration::from_secs(20)).await?;

    // Every chunk exactly once: no duplicates through leaf-node interest.
    let leaf_msgs = leaf_js
        .get_stream("OBJ_smoke")
        .await?
        .info()
        .await?
        .state
        .messages;
    let mut hub_stream = hub_js.get_stream("OBJ_smoke").await?;
    let hub_info = hub_stream.info().await?.clone();
    assert_eq!(
        hub_info.state.messages, leaf_msgs,
        "hub stream has {} messages, leaf {leaf_msgs}",
        hub_info.state.messages
    );
    let replicated = t0.elapsed();

    // 2. Kill the node leading the hub stream; the hub still serves the object.
    let victim_name = hub_info
        .cluster
        .as_ref()
        .and_then(|c| c.leader.clone())
        .ok_or_else(|| anyhow::anyhow!("OBJ_smoke has no leader: {hub_info:?}"))?;
    let victim = topo
        .hub
        .index_of(&victim_name)
        .ok_or_else(|| anyhow::anyhow!("unknown hub node {victim_name}"))?;
    topo.hub.nodes[victim].kill();
    assert!(!topo.hub.nodes[victim].is_running());
    wait_hub_object(&hub_js, &data, &digest, Duration::from_secs(20)).await?;
    let read_after_kill = t0.elapsed();

    topo.hub.nodes[victim].start()?;
    topo.hub.wait_ready().await?;
    let restarted = t0.elapsed();
    assert!(topo.hub.nodes[victim].is_running());
    // The restarted node catches up on the stream.
    let node_name = victim_name.clone();
    wait_for(
        "restarted node current in OBJ_smoke",
        Duration::from_secs(20),
        || async {
            let mut s = match hub_js.get_stream("OBJ_smoke").await {
                Ok(s) => s,
                Err(e) => return Ok(Some(e.to_string())),
            };
            let info = match s.info().await {
                Ok(i) => i.clone(),
                Err(e) => return Ok(Some(e.to_string())),
            };
            let cluster = info.cluster.unwrap_or_default();
            let current = cluster.leader.as_deref() == Some(node_name.as_str())
                || cluster
                    .replicas
                    .iter()
                    .any(|r| r.name == node_name && r.current && !r.offline);
            Ok((!current).then(|| format!("cluster: {cluster:?}")))
        },
    )
    .await?;
    wait_hub_object(&hub_js, &data, &digest, Duration::from_secs(20)).await?;
    let recovered = t0.elapsed();

    // 3. Garage: S3 round trip.
    let s3 = topo.s3.client().await;
    let body = b"hello from cim-tests".to_vec();
    s3.put_object()
        .bucket(&topo.s3.bucket)
        .key("smoke/hello.txt")
        .body(ByteStream::from(body.clone()))
        .send()
        .await?;
    let got = s3
        .get_object()
        .bucket(&topo.s3.bucket)
        .key("smoke/hello.txt")
        .send()
        .await?
        .body
        .collect()
        .await?
        .into_bytes();
    assert_eq!(got.as_ref(), body.as_slice());
    let credentials = std::fs::read_to_string(topo.s3.credentials_file())?;
    assert!(credentials.contains(&topo.s3.access_key));

    // The generated config is valid TOML and carries the topology.
    let config_path =
        topo.write_config("[[policy]]\nname = \"p\"\n\n[manager]\ninterval = \"2s\"\n");
    let config: toml::Table = toml::from_str(&std::fs::read_to_string(&config_path)?)?;
    assert_eq!(
        config["nats"]["url"].as_str(),
        Some(topo.hub.client_url().as_str())
    );
    assert_eq!(config["manager"]["interval"].as_str(), Some("2s"));
    assert_eq!(config["work"]["ack_wait"].as_str(), Some("5s"));
    assert_eq!(config["policy"][0]["name"].as_str(), Some("p"));

    eprintln!(
        "timings: topology ready {started:.2?}, replicated {replicated:.2?}, \
         read after kill {read_after_kill:.2?}, \
         restarted node ready {restarted:.2?}, node loss recovered {recovered:.2?}, total {:.2?}",
        t0.elapsed()
    );
    Ok(())
}
