//! The verification modes of S3 uploads, proved against bytes corrupted on the way and at rest.
//! Real servers throughout (3-node hub, leaf, Garage); the only thing between the upload role and
//! Garage is [`FaultProxy`], which flips one byte in the body of chosen blob uploads after our
//! hashing, and re-signs the request, so that only what the upload computed in its own pass
//! (a read-back, `Content-MD5`, `x-amz-checksum-crc32c`) can catch it.
//!
//! * `verify = "read-back"`: the read-back catches the bad blob.
//! * `verify = "md5"` / `"crc32c"`: the service refuses the bad request (`BadDigest`,
//!   `InvalidDigest`), and the upload is retried.
//! * A blob rewritten in S3 after it was verified: restore refuses it and `cim-gateway scrub`
//!   reports it.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;
use std::time::Duration;

use cim_gateway::s3::S3Store;
use cim_policies::Tier;
use cim_tests::{wait_for, FaultProxy, Garage, Rule, Topology};
use cim_tiering::digest::Sha256Digest;
use common::{content, describe, gateway, put_hub, sample, scrape, Roles, Tiers};

/// Hub → S3, `move`, at once (objects are written straight into hub buckets). Parts of 5 MiB
/// from 5 MiB on, so a 12 MiB object is a multipart upload of three parts.
const HUB_TO_S3: &str = r#"
[[policy]]
name = "hub-to-s3"
buckets = ["*"]
from = "hub"
to = "s3"
action = "move"
after = "0s"

[upload]
part_size_mib = 5
multipart_threshold_mib = 5
"#;

/// How long an object may take to reach S3 (including one retry) before the test gives up.
const ARRIVAL_BOUND: Duration = Duration::from_secs(150);

/// A body smaller than this is never corrupted (manifests and the like are not blob uploads).
const MIN_BLOB_BODY: u64 = 1024;

/// The proxy between Garage and everything the roles do, re-signing what it corrupts.
async fn proxy_for(garage: &Garage) -> FaultProxy {
    FaultProxy::start(&garage.endpoint)
        .await
        .unwrap()
        .resigning(&garage.secret_key)
}

/// The `[tiers.s3]` lines pointing the tier at `endpoint` with verification `mode`.
fn s3_tier_lines(endpoint: &str, mode: Option<&str>) -> String {
    let verify = mode
        .map(|m| format!("verify = \"{m}\"\n"))
        .unwrap_or_default();
    format!("[tiers.s3]\nendpoint = \"{endpoint}\"\n{verify}")
}

/// `mode`, after checking that the configuration accepts `verify = "<mode>"` on an S3 tier (a
/// rejection fails the test, naming why).
fn verify_mode<'a>(topology: &Topology, mode: &'a str) -> Option<&'a str> {
    let toml = topology.config_toml(&format!(
        "{}{HUB_TO_S3}",
        s3_tier_lines(&topology.s3.endpoint, Some(mode))
    ));
    if let Err(e) = cim_policies::Config::from_toml_str(&toml, "verification.rs") {
        panic!("the configuration rejects verify = {mode:?}: {e}");
    }
    Some(mode)
}

/// An S3 client for the tier as `config` describes it.
async fn store_of(config: &Path) -> S3Store {
    let config = cim_tiering::cli::load_config(config).unwrap();
    let Some(Tier::S3(tier)) = config.tier("s3") else {
        panic!("no s3 tier in the config")
    };
    S3Store::connect(tier).await.unwrap().with_tier_name("s3")
}

/// Waits until the catalog places `bucket`/`name` (version `data`) on S3 only (the hub copy
/// evicted) and its manifest is there. Fails at once, naming it, if the upload role gave the item
/// up instead of retrying it.
async fn wait_in_s3_only(
    tiers: &Tiers,
    s3: &S3Store,
    roles: &Roles,
    bucket: &str,
    name: &str,
    data: &[u8],
) {
    let digest = Sha256Digest::of(data);
    let arrived = wait_for(
        &format!("{bucket}/{name} in s3 only"),
        ARRIVAL_BOUND,
        || async {
            let log = roles.upload.log();
            if let Some(line) = log
                .lines()
                .find(|l| l.contains("giving up") && l.contains(name))
            {
                anyhow::bail!("the upload role gave the item up instead of retrying it: {line}");
            }
            let entry = tiers.catalog.get(bucket, name).await.ok().flatten();
            let placed = entry.is_some_and(|e| {
                e.digest == digest && e.locations.keys().map(String::as_str).eq(["s3"])
            });
            let manifest =
                matches!(s3.get_manifest(bucket, name).await, Ok(Some(m)) if m.digest == digest);
            Ok((!(placed && manifest))
                .then(|| format!("catalog placed: {placed}, manifest: {manifest}")))
        },
    )
    .await;
    if let Err(e) = arrived {
        panic!("{e:#}\n--- upload log ---\n{}", roles.upload.log());
    }
}

/// Line numbers (0-based) of the upload log lines containing every needle.
fn lines_with(log: &str, needles: &[&str]) -> Vec<usize> {
    log.lines()
        .enumerate()
        .filter(|(_, l)| needles.iter().all(|n| l.contains(n)))
        .map(|(i, _)| i)
        .collect()
}

/// What must catch the corrupted upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CaughtBy {
    /// Our read-back of the blob (an integrity failure on tier `s3`).
    ReadBack,
    /// The service, checking the checksum header we sent (an S3 error on the upload request).
    Service,
}

/// The scenario shared by every mode: with `verify = "<mode>"` on the S3 tier, two objects moved hub → S3 through the proxy, one small
/// (one PutObject) and one of 12 MiB (three parts); the proxy corrupts the small object's first
/// PutObject and the big object's second part. Each corruption must be caught as `caught_by`
/// says, never recorded as verified nor evicted before the upload is retried and verified, and
/// both objects must restore byte-identical.
async fn corrupted_uploads_are_caught_and_retried(mode: &str, caught_by: CaughtBy) {
    let topology = Topology::start().await.unwrap();
    let mode = verify_mode(&topology, mode);
    let proxy = proxy_for(&topology.s3).await;
    let config = topology.write_config(&format!(
        "{}{HUB_TO_S3}",
        s3_tier_lines(&proxy.endpoint(), mode)
    ));
    let direct = topology.write_config(&format!(
        "{}{HUB_TO_S3}",
        s3_tier_lines(&topology.s3.endpoint, mode)
    ));
    let tiers = Tiers::connect(&topology).await;
    let bucket = "verify";
    let objects = [
        ("small-object", content(8100, 300_000)),
        ("big-object", content(8101, 12 << 20)),
    ];
    for (name, data) in &objects {
        put_hub(&tiers, bucket, name, data).await;
    }
    // Blob keys are content-addressed: each rule hits exactly one object's blob.
    let hex = |data: &[u8]| Sha256Digest::of(data).to_hex();
    proxy.arm(Rule::put(&hex(&objects[0].1), MIN_BLOB_BODY), 1);
    proxy.arm(
        Rule::put(&hex(&objects[1].1), MIN_BLOB_BODY).and_path_contains("partNumber=2&"),
        1,
    );
    let mut roles = Roles::start(&topology, &config);
    let s3 = store_of(&direct).await;
    for (name, data) in &objects {
        wait_in_s3_only(&tiers, &s3, &roles, bucket, name, data).await;
    }
    let metrics = scrape(roles.upload_metrics).await;
    roles.stop();
    let log = roles.upload.log();
    let corrupted = proxy.corrupted();
    assert_eq!(
        corrupted.len(),
        2,
        "both uploads must have been corrupted: {corrupted:?}"
    );

    let integrity_failures =
        sample(&metrics, "cim_integrity_failures_total", &[("tier", "s3")]).unwrap_or(0.0);
    for (name, _) in &objects {
        let caught = match caught_by {
            CaughtBy::ReadBack => lines_with(&log, &["integrity check failed", name]),
            CaughtBy::Service => log
                .lines()
                .enumerate()
                .filter(|(_, l)| l.contains(name) && !l.contains("uploaded and verified"))
                // The service's refusal, as logged when the upload fails or is redone.
                .filter(|(_, l)| {
                    let l = l.to_lowercase();
                    ["baddigest", "invaliddigest", "checksum"]
                        .iter()
                        .any(|c| l.contains(c))
                })
                .map(|(i, _)| i)
                .collect(),
        };
        let verified = lines_with(&log, &["uploaded and verified", name]);
        let evicted = lines_with(&log, &["evicted cluster copy", name]);
        assert!(
            !caught.is_empty(),
            "the corruption of {name} was not caught by {caught_by:?}:\n{log}"
        );
        assert_eq!(
            verified.len(),
            1,
            "{name} must be recorded as verified exactly once:\n{log}"
        );
        assert!(
            caught[0] < verified[0],
            "{name} was recorded before the corruption was caught:\n{log}"
        );
        assert!(
            evicted.len() == 1 && verified[0] < evicted[0],
            "{name} must be evicted once, after its verified upload:\n{log}"
        );
    }
    match caught_by {
        CaughtBy::ReadBack => assert!(integrity_failures >= 2.0, "{metrics}"),
        // The service refused the bytes: nothing bad was ever stored, so nothing read back bad.
        CaughtBy::Service => assert_eq!(integrity_failures, 0.0, "{metrics}"),
    }
    assert!(
        s3.list_multipart_uploads().await.unwrap().is_empty(),
        "no multipart upload left"
    );

    // Both restore byte-identical (read through the proxy, now passing everything unchanged).
    for (name, data) in &objects {
        let out = gateway(&config, &["restore", "--bucket", bucket, "--name", name]);
        assert!(out.status.success(), "restore {name}: {}", describe(&out));
        assert!(
            Tiers::read(&tiers.hub, bucket, name).await.0 == *data,
            "{name} differs after restore"
        );
    }
}

/// The proxy itself, against Garage: unarmed it changes nothing; a corrupted request whose
/// payload is signed is refused by the service (SigV4's payload hash) unless the proxy re-signs
/// it, in which case the service stores the corrupted bytes — exactly one byte differs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fault_proxy_corrupts_what_the_service_receives() {
    let dir = tempfile::tempdir().unwrap();
    let garage = Garage::launch(dir.path()).unwrap();
    garage.wait_ready().await.unwrap();
    let plain = FaultProxy::start(&garage.endpoint).await.unwrap();
    let resigning = proxy_for(&garage).await;
    let client = |proxy: &FaultProxy| {
        cim_tests::s3_client(
            &proxy.endpoint(),
            &garage.region,
            &garage.access_key,
            &garage.secret_key,
        )
    };
    let direct = garage.client().await;
    let data = content(8000, 5000);
    let put = |proxy: &FaultProxy, key: &str| {
        client(proxy)
            .put_object()
            .bucket(&garage.bucket)
            .key(key)
            .body(data.clone().into())
            .send()
    };
    let stored = |key: &str| {
        let direct = direct.clone();
        let (bucket, key) = (garage.bucket.clone(), key.to_string());
        async move {
            let object = direct
                .get_object()
                .bucket(bucket)
                .key(key)
                .send()
                .await
                .unwrap();
            object.body.collect().await.unwrap().into_bytes().to_vec()
        }
    };

    put(&plain, "p/blobs/unarmed").await.unwrap();
    assert!(stored("p/blobs/unarmed").await == data);

    plain.arm(Rule::put("/blobs/", MIN_BLOB_BODY), 1);
    let refused = put(&plain, "p/blobs/signed").await.unwrap_err();
    let refused = aws_sdk_s3::error::DisplayErrorContext(&refused).to_string();
    assert!(
        refused.contains("InvalidDigest") || refused.contains("SHA256"),
        "{refused}"
    );
    assert_eq!(plain.corrupted().len(), 1);

    resigning.arm(Rule::put("/blobs/", MIN_BLOB_BODY), 1);
    put(&resigning, "p/blobs/resigned").await.unwrap();
    put(&resigning, "p/blobs/after").await.unwrap();
    let got = stored("p/blobs/resigned").await;
    let differing: Vec<usize> = (0..data.len()).filter(|&i| got[i] != data[i]).collect();
    assert_eq!((got.len(), differing), (data.len(), vec![data.len() / 2]));
    assert!(
        stored("p/blobs/after").await == data,
        "only the armed count is corrupted"
    );
    assert_eq!(resigning.corrupted().len(), 1);
    assert_eq!(resigning.corrupted()[0].offset, data.len() as u64 / 2);
}

/// CRC-32C (Castagnoli), bitwise: enough for test bodies.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The S3 error code of a failed request, if the service sent one.
fn error_code<E, R>(e: aws_sdk_s3::error::SdkError<E, R>) -> Option<String>
where
    E: aws_sdk_s3::error::ProvideErrorMetadata,
{
    aws_sdk_s3::error::ProvideErrorMetadata::code(&e).map(str::to_string)
}

/// What the checksum modes rest on, checked against this Garage: with `Content-MD5` or
/// `x-amz-checksum-crc32c` on a PutObject or an UploadPart (the values computed by the client,
/// as the upload does in its hashing pass), the service refuses a body corrupted after them —
/// `BadDigest` and `InvalidDigest`, HTTP 400 — even when the request is correctly signed for the
/// corrupted bytes; without corruption it accepts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_refuses_bytes_that_miss_their_content_md5_or_crc32c() {
    use base64::Engine as _;
    use md5::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let garage = Garage::launch(dir.path()).unwrap();
    garage.wait_ready().await.unwrap();
    let proxy = proxy_for(&garage).await;
    let client = cim_tests::s3_client(
        &proxy.endpoint(),
        &garage.region,
        &garage.access_key,
        &garage.secret_key,
    );
    let bucket = garage.bucket.as_str();
    let data = content(8300, 6 << 20);
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let md5 = b64(&md5::Md5::digest(&data));
    let crc = b64(&crc32c(&data).to_be_bytes());
    for armed in [false, true] {
        let expect = |name: &str, got: Option<String>| {
            assert_eq!(got.as_deref(), armed.then_some(name), "armed: {armed}");
        };
        if armed {
            proxy.arm(Rule::put("/blobs/", MIN_BLOB_BODY), 4);
        }
        let put = |key: &str| {
            client
                .put_object()
                .bucket(bucket)
                .key(format!("c/blobs/{key}"))
                .body(data.clone().into())
        };
        expect(
            "BadDigest",
            put("md5")
                .content_md5(&md5)
                .send()
                .await
                .err()
                .and_then(error_code),
        );
        expect(
            "InvalidDigest",
            put("crc")
                .checksum_crc32_c(&crc)
                .send()
                .await
                .err()
                .and_then(error_code),
        );
        for (key, md5, crc) in [("pm", Some(&md5), None), ("pc", None, Some(&crc))] {
            let key = format!("c/blobs/{key}");
            let mut create = client.create_multipart_upload().bucket(bucket).key(&key);
            if crc.is_some() {
                create = create.checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Crc32C);
            }
            let upload = create.send().await.unwrap();
            let part = client
                .upload_part()
                .bucket(bucket)
                .key(&key)
                .upload_id(upload.upload_id().unwrap())
                .part_number(1)
                .set_content_md5(md5.cloned())
                .set_checksum_crc32_c(crc.cloned())
                .body(data.clone().into())
                .send()
                .await;
            let wanted = if md5.is_some() {
                "BadDigest"
            } else {
                "InvalidDigest"
            };
            expect(wanted, part.err().and_then(error_code));
        }
    }
    assert_eq!(proxy.corrupted().len(), 4);
}

/// `verify = "read-back"`: a blob corrupted in transit is caught by reading it back, not recorded
/// nor evicted, and uploaded again at once (a blob *just uploaded* that reads back wrong is sent
/// again, as a reused one is).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_back_catches_a_blob_corrupted_in_transit() {
    corrupted_uploads_are_caught_and_retried("read-back", CaughtBy::ReadBack).await;
}

/// `verify = "md5"`: every PutObject and part carries `Content-MD5` from our hashing pass; the
/// service refuses the corrupted bytes and the upload is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn md5_makes_the_service_refuse_a_blob_corrupted_in_transit() {
    corrupted_uploads_are_caught_and_retried("md5", CaughtBy::Service).await;
}

/// `verify = "crc32c"`: the same with `x-amz-checksum-crc32c`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crc32c_makes_the_service_refuse_a_blob_corrupted_in_transit() {
    corrupted_uploads_are_caught_and_retried("crc32c", CaughtBy::Service).await;
}

/// A blob rewritten in S3 after it was verified (same key and metadata, one byte different):
/// `restore` refuses it and writes nothing; `scrub` reports it by bucket, name and key, exits
/// non-zero, and changes nothing; an intact object beside it passes both.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_corrupted_at_rest_is_caught_by_restore_and_by_scrub() {
    let topology = Topology::start().await.unwrap();
    let config = topology.write_config(HUB_TO_S3);
    let tiers = Tiers::connect(&topology).await;
    let bucket = "at-rest";
    let (bad, good) = (
        ("rotting", content(8200, 400_000)),
        ("intact", content(8201, 300_000)),
    );
    for (name, data) in [&bad, &good] {
        put_hub(&tiers, bucket, name, data).await;
    }
    let mut roles = Roles::start(&topology, &config);
    let s3 = store_of(&config).await;
    for (name, data) in [&bad, &good] {
        wait_in_s3_only(&tiers, &s3, &roles, bucket, name, data).await;
    }
    roles.stop();

    // Everything intact: scrub passes.
    let out = gateway(&config, &["scrub"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("2 of 2 objects verified, 0 bad"),
        "{}",
        describe(&out)
    );

    // Rewrite the blob: same key, same metadata, one byte flipped in the middle.
    let raw = topology.s3.client().await;
    let manifest = s3.get_manifest(bucket, bad.0).await.unwrap().unwrap();
    let key = manifest.blob_key.clone();
    let head = raw
        .head_object()
        .bucket(&topology.s3.bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    let object = raw
        .get_object()
        .bucket(&topology.s3.bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    let mut blob = object.body.collect().await.unwrap().into_bytes().to_vec();
    let middle = blob.len() / 2;
    blob[middle] = !blob[middle];
    raw.put_object()
        .bucket(&topology.s3.bucket)
        .key(&key)
        .set_metadata(head.metadata().cloned())
        .content_type("application/zstd")
        .body(blob.clone().into())
        .send()
        .await
        .unwrap();

    // Restore refuses it, naming the object; nothing becomes visible on the hub.
    let out = gateway(&config, &["restore", "--bucket", bucket, "--name", bad.0]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stderr.contains("integrity check failed") && stderr.contains(bad.0),
        "{}",
        describe(&out)
    );
    assert!(
        Tiers::names(&tiers.hub_tier, bucket).await.is_empty(),
        "nothing may be restored"
    );

    // Scrub reports it by bucket, name and key, and only it; exit status 1.
    let out = gateway(&config, &["scrub"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    let bad_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("BAD")).collect();
    assert_eq!(bad_lines.len(), 1, "{}", describe(&out));
    let object = format!("{bucket}/{}", bad.0);
    for needle in [object.as_str(), key.as_str(), "integrity check failed"] {
        assert!(
            bad_lines[0].contains(needle),
            "{needle}: {}",
            describe(&out)
        );
    }
    assert!(
        stdout.contains("1 of 2 objects verified, 1 bad"),
        "{}",
        describe(&out)
    );
    assert!(
        stdout.contains("restore` refuses"),
        "the summary says how it is handled: {stdout}"
    );

    // A sample of one object checks exactly one; --bucket of another bucket checks nothing.
    let out = gateway(&config, &["scrub", "--sample", "1"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        (out.status.success() && stdout.contains("1 of 2 objects verified, 0 bad"))
            || (out.status.code() == Some(1) && stdout.contains("0 of 2 objects verified, 1 bad")),
        "{}",
        describe(&out)
    );
    let out = gateway(
        &config,
        &["scrub", "--bucket", "elsewhere", "--sample", "50%"],
    );
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 of 0 objects verified"),
        "{}",
        describe(&out)
    );

    // Scrub changed nothing: the bad blob is still there, byte for byte as planted.
    let object = raw
        .get_object()
        .bucket(&topology.s3.bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    assert!(object.body.collect().await.unwrap().into_bytes().to_vec() == blob);

    // A blob that disappeared, and a manifest that no longer parses, are bad too.
    let intact = s3.get_manifest(bucket, good.0).await.unwrap().unwrap();
    raw.delete_object()
        .bucket(&topology.s3.bucket)
        .key(&intact.blob_key)
        .send()
        .await
        .unwrap();
    let garbled = cim_gateway::format::manifest_key("cim/", "garbled", "m");
    raw.put_object()
        .bucket(&topology.s3.bucket)
        .key(&garbled)
        .body(b"{ not json".to_vec().into())
        .send()
        .await
        .unwrap();
    let out = gateway(&config, &["scrub"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(
        stdout.contains("0 of 3 objects verified, 3 bad"),
        "{}",
        describe(&out)
    );
    for needle in [
        format!("BAD       {bucket}/{} ({})", good.0, intact.blob_key),
        format!("BAD       garbled/m ({garbled})"),
    ] {
        assert!(stderr.contains(&needle), "{needle}: {}", describe(&out));
    }
}
