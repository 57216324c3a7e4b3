//! `cim_gateway::s3::S3Store` against a real Garage server: verified round trips (single and
//! multipart), integrity failures on upload and restore, dedup, and cleanup of stale multipart
//! uploads.
//!
//! Each test starts its own Garage (not the whole topology: no NATS needed here), in its own
//! temp dir, so tests run in parallel without sharing state.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use anyhow::Context as _;
use aws_sdk_s3::primitives::ByteStream;
use cim_gateway::format::{self, Compression, Manifest, FORMAT_VERSION};
use cim_gateway::s3::{BlobUpload, Origin, S3Store, UploadOptions};
use cim_gateway::Error;
use cim_policies::{S3Flavor, S3Tier};
use cim_tests::Garage;
use cim_tiering::digest::Sha256Digest;
use tempfile::TempDir;

const MIB: u64 = 1024 * 1024;
const BUCKET: &str = "media";

/// One Garage server plus an [`S3Store`] on it (prefix `t/`). Field order = drop order: the
/// server is killed before its directory is removed.
struct Env {
    store: S3Store,
    raw: aws_sdk_s3::Client,
    garage: Garage,
    _dir: TempDir,
}

impl Env {
    async fn start() -> anyhow::Result<Env> {
        let mut attempt = 1;
        loop {
            let dir = tempfile::Builder::new().prefix("cim-s3-store-").tempdir()?;
            let garage = Garage::launch(dir.path())?;
            match garage.wait_ready().await {
                Ok(()) => {
                    let tier = S3Tier {
                        endpoint: Some(garage.endpoint.clone()),
                        region: garage.region.clone(),
                        bucket: garage.bucket.clone(),
                        prefix: "t/".to_string(),
                        credentials_file: Some(garage.credentials_file()),
                        flavor: S3Flavor::Garage,
                        force_path_style: true,
                        retention: std::time::Duration::from_secs(90 * 86_400),
                        verify: cim_policies::S3Verify::Crc32c,
                    };
                    let store = S3Store::connect(&tier).await.context("connect")?;
                    store.check_bucket().await.context("check_bucket")?;
                    let raw = garage.client().await;
                    return Ok(Env {
                        store,
                        raw,
                        garage,
                        _dir: dir,
                    });
                }
                // A port picked by free_port() was taken meanwhile: try again with new ones.
                Err(e) if attempt < 3 && format!("{e:#}").contains("already in use") => {
                    eprintln!("garage did not start, retrying: {e:#}");
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether `key` exists (HEAD).
    async fn exists(&self, key: &str) -> bool {
        match self
            .raw
            .head_object()
            .bucket(&self.garage.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(_) => true,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => false,
            Err(e) => panic!("HEAD {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)),
        }
    }

    async fn get_raw(&self, key: &str) -> Vec<u8> {
        let response = self
            .raw
            .get_object()
            .bucket(&self.garage.bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        response.body.collect().await.unwrap().into_bytes().to_vec()
    }

    /// Overwrites `key` behind the store's back (no metadata), like a tampering or bit-rotting
    /// storage would.
    async fn put_raw(&self, key: &str, bytes: Vec<u8>) {
        self.raw
            .put_object()
            .bucket(&self.garage.bucket)
            .key(key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .unwrap();
    }

    async fn upload(
        &self,
        name: &str,
        data: &[u8],
        digest: &Sha256Digest,
        opts: &UploadOptions,
    ) -> Result<BlobUpload, Error> {
        let origin = Origin {
            bucket: BUCKET,
            name,
            tier: "hub",
        };
        self.store
            .upload_blob(data, data.len() as u64, digest, &origin, opts)
            .await
    }

    /// Uploads `data` as object `name` and writes its manifest.
    async fn store_object(&self, name: &str, data: &[u8], opts: &UploadOptions) -> Manifest {
        let digest = Sha256Digest::of(data);
        let blob = self.upload(name, data, &digest, opts).await.unwrap();
        let manifest = manifest_for(name, data, &blob);
        self.store.put_manifest(&manifest).await.unwrap();
        manifest
    }

    async fn read_all(&self, m: &Manifest) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        let n = self.store.read_verified(m, &mut out).await?;
        assert_eq!(n, out.len() as u64);
        Ok(out)
    }
}

/// Part size and threshold of 5 MiB, so that 17 MiB of incompressible content takes 4 parts.
fn small_parts() -> UploadOptions {
    UploadOptions {
        part_size: 5 * MIB,
        multipart_threshold: 5 * MIB,
        zstd_level: 3,
        reuse_existing: true,
        budget: cim_gateway::s3::MemoryBudget::new(16 * MIB),
    }
}

/// Deterministic, incompressible pseudo-random bytes (xorshift64*), different per `seed`.
fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

fn manifest_for(name: &str, data: &[u8], blob: &BlobUpload) -> Manifest {
    let digest = Sha256Digest::of(data);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Test", "yes");
    Manifest {
        format: FORMAT_VERSION,
        bucket: BUCKET.to_string(),
        name: name.to_string(),
        size: data.len() as u64,
        digest,
        sha256_hex: digest.to_hex(),
        compression: Compression::Zstd,
        stored_size: blob.stored_size,
        blob_key: blob.key.clone(),
        description: Some(format!("test object {name}")),
        metadata: HashMap::from([("len".to_string(), data.len().to_string())]),
        headers: Some(headers),
        modified: Some("2025-01-02T03:04:05Z".to_string()),
        uploaded_at: format::now_rfc3339(),
        source_tier: "hub".to_string(),
        source_nuid: format!("NUID-{name}"),
        source_seq: 1,
        deleted: None,
        verified: blob.verified.clone(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn round_trips_single_and_multipart() {
    let env = Env::start().await.unwrap();
    let opts = small_parts();
    let cases: [(&str, usize); 4] = [
        ("empty", 0),
        ("one byte", 1),
        ("dir/100 KiB ünïcode", 100 * 1024),
        ("big/17 MiB", 17 * MIB as usize),
    ];
    let mut stored = Vec::new();
    for (i, (name, len)) in cases.iter().enumerate() {
        let data = content(*len, i as u64 + 1);
        let digest = Sha256Digest::of(&data);
        let blob = env.upload(name, &data, &digest, &opts).await.unwrap();
        assert!(!blob.reused, "{name}");
        assert_eq!(blob.key, format::blob_key("t/", &digest));
        assert!(env.exists(&blob.key).await, "{name}");
        let manifest = manifest_for(name, &data, &blob);
        env.store.put_manifest(&manifest).await.unwrap();

        let fetched = env.store.get_manifest(BUCKET, name).await.unwrap();
        assert_eq!(fetched.as_ref(), Some(&manifest), "{name}");
        let restored = env.read_all(&manifest).await.unwrap();
        assert!(restored == data, "{name}: restored bytes differ");
        env.store.verify(&manifest).await.unwrap();
        stored.push(manifest);
    }
    // The 17 MiB blob really went through multipart: its stored size exceeds one part.
    assert!(stored[3].stored_size > 5 * MIB);

    let mut listed = env.store.list_manifests(BUCKET).await.unwrap();
    listed.sort_by(|a, b| a.name.cmp(&b.name));
    stored.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(listed, stored);
    assert_eq!(
        env.store.list_buckets().await.unwrap(),
        vec![BUCKET.to_string()]
    );
    assert!(env.store.list_manifests("other").await.unwrap().is_empty());
    assert_eq!(
        env.store.get_manifest(BUCKET, "missing").await.unwrap(),
        None
    );
    assert_eq!(env.store.list_multipart_uploads().await.unwrap(), vec![]);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_digest_on_upload_leaves_nothing() {
    let env = Env::start().await.unwrap();
    let data = content(12 * MIB as usize, 42);
    let claimed = Sha256Digest::of(b"something else entirely");
    let err = env
        .upload("liar", &data, &claimed, &small_parts())
        .await
        .unwrap_err();
    match &err {
        Error::Integrity {
            bucket,
            name,
            tier,
            what,
            ..
        } => {
            assert_eq!((bucket.as_str(), name.as_str()), (BUCKET, "liar"));
            assert_eq!(tier, "hub");
            assert_eq!(what, "sha-256");
        }
        other => panic!("expected an integrity error, got {other:?}"),
    }
    assert!(err.to_string().contains("\"liar\""), "{err}");
    assert!(!err.is_transient());
    assert!(!env.exists(&format::blob_key("t/", &claimed)).await);
    assert!(
        !env.exists(&format::blob_key("t/", &Sha256Digest::of(&data)))
            .await
    );
    assert_eq!(env.store.list_multipart_uploads().await.unwrap(), vec![]);

    // Wrong size (content shorter than claimed), single-upload path: nothing visible either.
    let small = content(1000, 43);
    let digest = Sha256Digest::of(&small);
    let origin = Origin {
        bucket: BUCKET,
        name: "short",
        tier: "hub",
    };
    let err = env
        .store
        .upload_blob(&small[..], 2000, &digest, &origin, &small_parts())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Integrity { what, .. } if what == "size"),
        "{err:?}"
    );
    // Content longer than claimed is cut off as soon as it overflows.
    let err = env
        .store
        .upload_blob(&data[..], 6 * MIB, &digest, &origin, &small_parts())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Integrity { what, .. } if what == "size"),
        "{err:?}"
    );
    assert!(!env.exists(&format::blob_key("t/", &digest)).await);
    assert_eq!(env.store.list_multipart_uploads().await.unwrap(), vec![]);
}

#[tokio::test(flavor = "multi_thread")]
async fn tampered_blob_fails_restore_naming_the_object() {
    let env = Env::start().await.unwrap();
    let opts = small_parts();
    let victim = env
        .store_object("victim", &content(300_000, 7), &opts)
        .await;
    let bystander = env
        .store_object("bystander", &content(200_000, 8), &opts)
        .await;
    let original_blob = env.get_raw(&victim.blob_key).await;
    // Valid zstd of other content of the same size, made by the gateway itself.
    let decoy = env
        .store_object("decoy", &content(300_000, 10), &opts)
        .await;
    let decoy_blob = env.get_raw(&decoy.blob_key).await;

    // Garbage that is not zstd at all (as long as the real blob: a blob of another length is
    // refused before it is decoded, see below).
    env.put_raw(&victim.blob_key, content(original_blob.len(), 9))
        .await;
    let err = env.read_all(&victim).await.unwrap_err();
    assert_integrity(&err, "victim");
    assert!(
        matches!(&err, Error::Integrity { what, .. } if what == "zstd"),
        "{err:?}"
    );

    // Valid zstd, wrong content: caught by SHA-256.
    env.put_raw(&victim.blob_key, decoy_blob).await;
    let err = env.store.verify(&victim).await.unwrap_err();
    assert_integrity(&err, "victim");
    assert!(
        matches!(&err, Error::Integrity { what, .. } if what == "sha-256"),
        "{err:?}"
    );

    // The tier blamed is the store's configured name when it has one.
    let named = env.store.clone().with_tier_name("archive");
    match named.verify(&victim).await.unwrap_err() {
        Error::Integrity { tier, .. } => assert_eq!(tier, "archive"),
        other => panic!("expected an integrity error, got {other:?}"),
    }

    // Truncated blob: its length is not the manifest's stored_size.
    env.put_raw(
        &victim.blob_key,
        original_blob[..original_blob.len() / 2].to_vec(),
    )
    .await;
    assert_integrity(&env.store.verify(&victim).await.unwrap_err(), "victim");

    // Trailing garbage after the frame: likewise.
    let mut padded = original_blob.clone();
    padded.extend_from_slice(&content(100, 11));
    env.put_raw(&victim.blob_key, padded).await;
    assert_integrity(&env.store.verify(&victim).await.unwrap_err(), "victim");

    // The other objects are unaffected.
    env.store.verify(&bystander).await.unwrap();
    assert!(env.read_all(&bystander).await.unwrap() == content(200_000, 8));
    env.store.verify(&decoy).await.unwrap();

    // Repair: the tampered blob (its metadata is gone) is re-uploaded, not reused, and the
    // object verifies again.
    let data = content(300_000, 7);
    let blob = env
        .upload("victim", &data, &victim.digest, &opts)
        .await
        .unwrap();
    assert!(!blob.reused);
    env.store.verify(&victim).await.unwrap();
    assert_eq!(env.get_raw(&victim.blob_key).await, original_blob);
}

fn assert_integrity(err: &Error, object: &str) {
    match err {
        Error::Integrity {
            bucket, name, tier, ..
        } => {
            assert_eq!((bucket.as_str(), name.as_str()), (BUCKET, object));
            assert_eq!(tier, "s3");
        }
        other => panic!("expected an integrity error, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&format!("{object:?}")), "{message}");
    assert!(message.contains(&format!("{BUCKET:?}")), "{message}");
    assert!(!err.is_transient());
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_content_is_stored_once() {
    let env = Env::start().await.unwrap();
    let opts = small_parts();
    for (len, seed) in [(50_000usize, 1u64), (11 * MIB as usize, 2)] {
        let data = content(len, seed);
        let digest = Sha256Digest::of(&data);
        let first = env.upload("a", &data, &digest, &opts).await.unwrap();
        assert!(!first.reused);
        // Same content under another name: the blob is reused without reading the content.
        let second = env
            .store
            .upload_blob(
                tokio::io::empty(),
                len as u64,
                &digest,
                &Origin {
                    bucket: "other-bucket",
                    name: "b",
                    tier: "hub",
                },
                &opts,
            )
            .await
            .unwrap();
        assert_eq!(
            second,
            BlobUpload {
                key: first.key.clone(),
                stored_size: first.stored_size,
                reused: true,
                verified: None,
            }
        );
        // Unless asked to replace it (repair), which re-uploads and verifies the content.
        let replace = UploadOptions {
            reuse_existing: false,
            ..opts.clone()
        };
        let third = env.upload("a", &data, &digest, &replace).await.unwrap();
        assert!(!third.reused);
        assert_eq!(third.key, first.key);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_multipart_upload_is_aborted_by_next_upload() {
    let env = Env::start().await.unwrap();
    let data = content(13 * MIB as usize, 5);
    let digest = Sha256Digest::of(&data);
    let key = format::blob_key("t/", &digest);

    // What a SIGKILLed uploader leaves behind: an upload with one part and no completion.
    let stale = env
        .raw
        .create_multipart_upload()
        .bucket(&env.garage.bucket)
        .key(&key)
        .send()
        .await
        .unwrap();
    let stale_id = stale.upload_id().unwrap().to_string();
    env.raw
        .upload_part()
        .bucket(&env.garage.bucket)
        .key(&key)
        .upload_id(&stale_id)
        .part_number(1)
        .body(ByteStream::from(content(5 * MIB as usize, 6)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        env.store.list_multipart_uploads().await.unwrap(),
        vec![(key.clone(), stale_id)]
    );
    assert!(!env.exists(&key).await, "an unfinished upload is invisible");

    let blob = env
        .upload("crashy", &data, &digest, &small_parts())
        .await
        .unwrap();
    assert_eq!(blob.key, key);
    assert_eq!(env.store.list_multipart_uploads().await.unwrap(), vec![]);
    let manifest = manifest_for("crashy", &data, &blob);
    env.store.put_manifest(&manifest).await.unwrap();
    assert!(env.read_all(&manifest).await.unwrap() == data);

    // An orphan whose blob is never uploaded again (object deleted before the retry) is removed
    // by the start-up sweep, but only once it is old enough.
    let orphan_key = format::blob_key("t/", &Sha256Digest::of(b"never retried"));
    env.raw
        .create_multipart_upload()
        .bucket(&env.garage.bucket)
        .key(&orphan_key)
        .send()
        .await
        .unwrap();
    let hour = std::time::Duration::from_secs(3600);
    assert_eq!(env.store.abort_stale_uploads(hour).await.unwrap(), 0);
    assert_eq!(env.store.list_multipart_uploads().await.unwrap().len(), 1);
    let zero = std::time::Duration::ZERO;
    assert_eq!(env.store.abort_stale_uploads(zero).await.unwrap(), 1);
    assert_eq!(env.store.list_multipart_uploads().await.unwrap(), vec![]);
}

/// The "restoring by hand" procedure of `docs/s3-format.md` works with the AWS CLI, `zstd`,
/// `jq` and `sha256sum` alone. `scripts/install-tools.sh` installs them.
#[tokio::test(flavor = "multi_thread")]
async fn hand_restore_procedure_from_the_docs_works() {
    let tools = ["aws", "zstd", "jq", "sha256sum", "base64"];
    if let Some(missing) = tools.iter().find(|t| {
        !std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {t} >/dev/null"))
            .status()
            .is_ok_and(|s| s.success())
    }) {
        panic!("{missing} is not installed: run scripts/install-tools.sh");
    }
    let env = Env::start().await.unwrap();
    let name = "dir/hello world.txt";
    let data = content(700_000, 77);
    env.store_object(name, &data, &small_parts()).await;

    let work = tempfile::tempdir().unwrap();
    let script = format!(
        r#"set -eu
S3=s3://{bucket}; P=t/
aws s3api list-objects-v2 --bucket {bucket} --prefix "${{P}}objects/" --delimiter / \
  --query 'CommonPrefixes[].Prefix' --output text > buckets.txt
aws s3 ls "$S3/${{P}}objects/media/" > objects.txt
name='{name}'
enc=$(printf '%s' "$name" | base64 -w0 | tr '+/' '-_' | tr -d '=')
aws s3 cp "$S3/${{P}}objects/media/$enc.json" manifest.json
aws s3 cp "$S3/$(jq -r .blob_key manifest.json)" - | zstd -d > restored
echo "$(jq -r .sha256_hex manifest.json)  restored" | sha256sum -c -
test "$(stat -c %s restored)" = "$(jq -r .size manifest.json)"
"#,
        bucket = env.garage.bucket,
    );
    let output = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(work.path())
        .env("AWS_ACCESS_KEY_ID", &env.garage.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &env.garage.secret_key)
        .env("AWS_DEFAULT_REGION", &env.garage.region)
        .env("AWS_ENDPOINT_URL", &env.garage.endpoint)
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_CA_BUNDLE")
        .env("AWS_CONFIG_FILE", work.path().join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", work.path().join("none"))
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "hand restore failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(std::fs::read(work.path().join("restored")).unwrap() == data);
    let buckets = std::fs::read_to_string(work.path().join("buckets.txt")).unwrap();
    assert_eq!(buckets.trim(), "t/objects/media/");
    let objects = std::fs::read_to_string(work.path().join("objects.txt")).unwrap();
    assert!(
        objects.contains("ZGlyL2hlbGxvIHdvcmxkLnR4dA.json"),
        "{objects}"
    );
}
