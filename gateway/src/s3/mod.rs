//! [`S3Store`]: the S3 tier's client, on top of the layout in [`crate::format`].
//!
//! Everything here is streaming: uploads read the content once, hashing the plaintext while it is
//! compressed into part-sized buffers; restores decompress and hash on the way to the writer. The
//! only buffers are the single-upload buffer (up to the multipart threshold) and the part
//! buffers (one being filled, a few in flight), all charged to one memory budget per process
//! (`[upload] memory_budget_mib`, see `budget`).
//!
//! S3 makes a key visible only when a PutObject or CompleteMultipartUpload succeeds, and both are
//! issued only after the content hashed to the expected digest: nothing unverified or
//! half-written is ever visible under a blob key.

//! # Layout
//!
//! * this module — [`S3Store`]: connection from the tier configuration, accessors, and the
//!   integrity report shared by uploads and reads;
//! * `blob_upload` — verified blob upload, single or multipart, and part streaming;
//! * `budget` — the memory budget every upload buffer is charged to;
//! * `checksums` — the per-request checksums of `verify = "md5" | "crc32c"` and the check of
//!   the service's answer;
//! * `multipart` — listing and aborting unfinished multipart uploads;
//! * `manifests` — writing, reading and listing manifests;
//! * `keys` — plain key listings with their ages, and deletes (garbage collection);
//! * `read` — verified streaming reads of blobs;
//! * `hashing` — the readers that hash content on the way in and watch response bodies;
//! * [`deadlines`] — the timeouts of every S3 call.

use std::path::Path;

use aws_config::environment::credentials::EnvironmentVariableCredentialsProvider;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::BehaviorVersion;
use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
use aws_sdk_s3::config::{
    ProvideCredentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::Client;
use cim_policies::{S3Flavor, S3Tier, S3Verify};
use cim_tiering::digest::Sha256Digest;

use crate::Error;
mod blob_upload;
mod budget;
mod checksums;
pub mod deadlines;
mod hashing;
mod keys;
mod manifests;
mod multipart;
pub mod observe;
mod parts;
mod read;

pub use blob_upload::{BlobUpload, UploadOptions, MAX_PARTS, MAX_PART_SIZE, MIN_PART_SIZE};
pub use budget::{Buffer, Charge, CodecSlot, MemoryBudget, CODEC_SLOTS};
pub use checksums::recorded_checksum;
pub use keys::ListedKey;
pub use manifests::ListedManifest;

/// Read buffer between the source and the compressor, and between decompressor and writer.
const IO_BUF: usize = 64 * 1024;

/// Blob user metadata: lowercase hex SHA-256 of the uncompressed content.
pub const META_SHA256: &str = "cim-sha256";
/// Blob user metadata: uncompressed size in bytes (decimal).
pub const META_SIZE: &str = "cim-size";
/// Blob user metadata: compression of the stored bytes (`zstd`).
pub const META_COMPRESSION: &str = "cim-compression";

/// Default tier name blamed in integrity errors and metrics for copies read back from S3 (see
/// [`S3Store::with_tier_name`]).
pub const TIER_S3: &str = "s3";

/// Which object some content is, and which tier it is read from.
///
/// Only names things in errors, logs and metrics; it never affects where a blob is stored (blob
/// keys depend on the content alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin<'a> {
    /// NATS object-store bucket.
    pub bucket: &'a str,
    /// Object name.
    pub name: &'a str,
    /// The tier the content is read from (e.g. `"hub"`); blamed when the content is wrong.
    pub tier: &'a str,
}

/// The S3 tier: an SDK client bound to the tier's bucket and key prefix.
///
/// Cheap to clone (the SDK client is reference-counted); clones share connections.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    tier_name: String,
    /// The endpoint URL, or `"<aws default>"` (named in errors and logs).
    endpoint: String,
    /// How uploads to this tier are verified (the tier's `verify`).
    verify: S3Verify,
    /// The client's request counter (`observe`), told the tier's name.
    requests: observe::RequestMetrics,
}

impl S3Store {
    /// Builds a client for `tier`. Performs no request to S3 (see [`S3Store::check_bucket`]).
    ///
    /// # Contract
    ///
    /// * Checksums: request checksums and response validation are `WhenRequired`. Since 2025 the
    ///   SDK otherwise sends CRC32 trailers with aws-chunked encoding, which Wasabi and other
    ///   S3-compatible services reject. Integrity is ensured by our own SHA-256, and uploads
    ///   carry the checksum of the tier's `verify` mode as a plain header (`Content-MD5` or
    ///   `x-amz-checksum-crc32c`), computed by us (see `checksums`).
    /// * Region: used for signing exactly as configured (Garage rejects every request with
    ///   "Invalid signature" unless it is the region in Garage's config).
    /// * Addressing: path-style when `tier.force_path_style`, and always for Garage and MinIO.
    /// * Endpoint: `tier.endpoint`; without one, AWS uses the SDK's default and Wasabi uses
    ///   `https://s3.<region>.wasabisys.com`; other flavors need an endpoint.
    /// * Credentials: if `tier.credentials_file` is set, the `[default]` profile of that AWS
    ///   shared-credentials file; otherwise the `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`
    ///   (/ `AWS_SESSION_TOKEN`) environment — the two sources `docs/configuration.md` names.
    ///   Both are resolved now, so a missing or bad source is an [`Error::Config`] at startup
    ///   rather than a failure on the first request. Only `flavor = "aws"` without a file uses
    ///   the SDK's whole chain (environment, `~/.aws`, SSO, container and instance metadata):
    ///   elsewhere probing the cloud's metadata address only delays the error by seconds.
    /// * Deadlines: every call has connect, per-attempt and whole-operation timeouts and at most
    ///   [`deadlines::MAX_ATTEMPTS`] attempts (see [`deadlines`]).
    pub async fn connect(tier: &S3Tier) -> Result<S3Store, Error> {
        if !(tier.prefix.is_empty() || tier.prefix.ends_with('/')) || tier.prefix.starts_with('/') {
            return Err(Error::config(format!(
                "prefix {:?} must be empty or end with '/' (and not start with '/')",
                tier.prefix
            )));
        }
        if tier.bucket.is_empty() {
            return Err(Error::config("bucket is empty"));
        }
        let endpoint = match (&tier.endpoint, &tier.flavor) {
            (Some(endpoint), _) => Some(endpoint.clone()),
            (None, S3Flavor::Aws) => None,
            (None, S3Flavor::Wasabi) => Some(format!("https://s3.{}.wasabisys.com", tier.region)),
            (None, flavor) => {
                return Err(Error::config(format!(
                    "flavor {flavor:?} needs an endpoint (bucket {})",
                    tier.bucket
                )))
            }
        };
        let path_style =
            tier.force_path_style || matches!(tier.flavor, S3Flavor::Garage | S3Flavor::Minio);

        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(tier.region.clone()))
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        match (&tier.credentials_file, tier.flavor) {
            (Some(path), _) => loader = loader.credentials_provider(file_credentials(path).await?),
            (None, S3Flavor::Aws) => {}
            (None, _) => {
                loader = loader.credentials_provider(env_credentials(tier, &endpoint).await?)
            }
        }
        let sdk_config = loader.load().await;
        let requests = observe::RequestMetrics::new(TIER_S3);
        let config = aws_sdk_s3::config::Builder::from(&sdk_config)
            .interceptor(requests.clone())
            .force_path_style(path_style)
            .timeout_config(deadlines::client_timeouts())
            .retry_config(deadlines::retries())
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        tracing::debug!(
            bucket = %tier.bucket,
            prefix = %tier.prefix,
            endpoint = endpoint.as_deref().unwrap_or("<aws default>"),
            region = %tier.region,
            path_style,
            "s3 client configured"
        );
        Ok(S3Store {
            client: Client::from_conf(config),
            bucket: tier.bucket.clone(),
            prefix: tier.prefix.clone(),
            tier_name: TIER_S3.to_string(),
            endpoint: endpoint.unwrap_or_else(|| "<aws default>".to_string()),
            verify: tier.verify,
            requests,
        })
    }

    /// How uploads to this tier are verified: by checksums the service checks on receipt
    /// (`md5`, `crc32c`), or by reading every blob back (`read-back`).
    pub fn verify_mode(&self) -> S3Verify {
        self.verify
    }

    /// The tier's key prefix: `""` or ending with `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The endpoint URL (`"<aws default>"` for AWS without one), for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The tier's S3 bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Names this store's tier (its name in the configuration) in integrity errors, logs and the
    /// `cim_integrity_failures_total{tier}` metric of reads, and in the `tier` label of its S3
    /// request metrics (shared with the store's clones: name it before cloning); [`TIER_S3`]
    /// until set.
    pub fn with_tier_name(mut self, name: impl Into<String>) -> Self {
        self.tier_name = name.into();
        self.requests.set_tier(&self.tier_name);
        self
    }

    /// The tier name blamed for bad copies read from this store.
    pub fn tier_name(&self) -> &str {
        &self.tier_name
    }

    /// The underlying SDK client (for tools and tests; everything else goes through the methods).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Checks that the bucket exists and the credentials can reach it (HeadBucket).
    pub async fn check_bucket(&self) -> Result<(), Error> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map_err(|e| Error::s3("head_bucket", &self.bucket, e))?;
        Ok(())
    }
}

/// The `AWS_*` environment's credentials, failing early (naming the tier's bucket and
/// endpoint, and both sources) when it has none.
async fn env_credentials(
    tier: &S3Tier,
    endpoint: &Option<String>,
) -> Result<EnvironmentVariableCredentialsProvider, Error> {
    let provider = EnvironmentVariableCredentialsProvider::new();
    match provider.provide_credentials().await {
        Ok(_) => Ok(provider),
        Err(e) => {
            tracing::debug!("environment credentials: {e:?}");
            Err(Error::config(format!(
                "no credentials for bucket {} at {}: the tier has no `credentials_file`, and \
                 AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are not both set",
                tier.bucket,
                endpoint.as_deref().unwrap_or("<aws default>"),
            )))
        }
    }
}

/// Loads the `[default]` profile of an AWS shared-credentials file, failing early if it is
/// unreadable or has no usable credentials.
async fn file_credentials(path: &Path) -> Result<ProfileFileCredentialsProvider, Error> {
    let bad = |why: String| Error::config(format!("credentials file {}: {why}", path.display()));
    tokio::fs::metadata(path)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let files = EnvConfigFiles::builder()
        .include_default_config_file(false)
        .include_default_credentials_file(false)
        .with_file(EnvConfigFileKind::Credentials, path)
        .build();
    let provider = ProfileFileCredentialsProvider::builder()
        .profile_files(files)
        .profile_name("default")
        .build();
    provider
        .provide_credentials()
        .await
        .map_err(|e| bad(DisplayErrorContext(&e).to_string()))?;
    Ok(provider)
}

/// Compares content against what was recorded at ingest; size first (cheaper to read in logs).
fn check_content(
    origin: &Origin<'_>,
    key: &str,
    (digest, size): (Sha256Digest, u64),
    expected: &Sha256Digest,
    expected_size: u64,
) -> Result<(), Error> {
    if size != expected_size {
        return Err(integrity_failure(
            origin,
            key,
            "size",
            expected_size.to_string(),
            size.to_string(),
        ));
    }
    if digest != *expected {
        return Err(integrity_failure(
            origin,
            key,
            "sha-256",
            expected.to_nats(),
            digest.to_nats(),
        ));
    }
    Ok(())
}

/// Builds an [`Error::Integrity`], counting and logging it (invariant: a mismatch is always
/// reported with an error, a metric and a log line).
fn integrity_failure(
    origin: &Origin<'_>,
    key: &str,
    what: &str,
    expected: String,
    actual: String,
) -> Error {
    cim_tiering::metrics::integrity_failure(origin.tier);
    tracing::error!(
        bucket = origin.bucket,
        name = origin.name,
        tier = origin.tier,
        key,
        what,
        expected = %expected,
        actual = %actual,
        "integrity check failed"
    );
    Error::Integrity {
        bucket: origin.bucket.to_string(),
        name: origin.name.to_string(),
        tier: origin.tier.to_string(),
        what: what.to_string(),
        expected,
        actual,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use cim_policies::UploadConfig;

    use super::*;
    use crate::format::Manifest;

    /// The orchestration spawns these futures: they must stay `Send`.
    #[allow(dead_code)]
    fn futures_are_send(store: &S3Store, m: &Manifest, origin: &Origin<'_>, d: &Sha256Digest) {
        fn is_send<T: Send>(_: T) {}
        let opts = UploadOptions::from(&UploadConfig::default());
        is_send(store.upload_blob(tokio::io::empty(), 0, d, origin, &opts));
        let mut out = tokio::io::sink();
        is_send(store.read_verified(m, &mut out));
        is_send(store.verify(m));
        is_send(store.list_manifests("b"));
        is_send(store.list_buckets());
        is_send(store.put_manifest(m));
        is_send(store.abort_stale_uploads(Duration::ZERO));
    }
}
