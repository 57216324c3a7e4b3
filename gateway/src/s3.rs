//! [`S3Store`]: the S3 tier's client, on top of the layout in [`crate::format`].
//!
//! Everything here is streaming: uploads read the content once, hashing the plaintext while it is
//! compressed into part-sized buffers; restores decompress and hash on the way to the writer. The
//! only buffers are the single-upload buffer (up to the multipart threshold) and at most three
//! part buffers (one being filled, two in flight).
//!
//! S3 makes a key visible only when a PutObject or CompleteMultipartUpload succeeds, and both are
//! issued only after the content hashed to the expected digest: nothing unverified or
//! half-written is ever visible under a blob key.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_compression::tokio::bufread::{ZstdDecoder, ZstdEncoder};
use async_compression::Level;
use aws_config::profile::ProfileFileCredentialsProvider;
use aws_config::BehaviorVersion;
use aws_runtime::env_config::file::{EnvConfigFileKind, EnvConfigFiles};
use aws_sdk_s3::config::{
    ProvideCredentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::{BufMut, Bytes, BytesMut};
use cim_policies::{S3Flavor, S3Tier, UploadConfig};
use cim_tiering::digest::{Hasher, Sha256Digest};
use futures::{StreamExt, TryStreamExt};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::format::{self, blob_key, manifest_key, manifest_prefix, Compression, Manifest};
use crate::Error;

/// Smallest part S3 accepts (except for the last part of an upload).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Largest part, and largest single PutObject, S3 accepts.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// Most parts one multipart upload may have.
pub const MAX_PARTS: u64 = 10_000;
/// Parts uploading concurrently while the next one is compressed. Memory ≈ (this + 1) × part size.
const MAX_PARTS_IN_FLIGHT: usize = 2;
/// Read buffer between the source and the compressor, and between decompressor and writer.
const IO_BUF: usize = 64 * 1024;
/// Concurrent manifest fetches when listing a bucket.
const MANIFEST_FETCH_CONCURRENCY: usize = 8;

/// Blob user metadata: lowercase hex SHA-256 of the uncompressed content.
pub const META_SHA256: &str = "cim-sha256";
/// Blob user metadata: uncompressed size in bytes (decimal).
pub const META_SIZE: &str = "cim-size";
/// Blob user metadata: compression of the stored bytes (`zstd`).
pub const META_COMPRESSION: &str = "cim-compression";

/// Default tier name blamed in integrity errors and metrics for copies read back from S3 (see
/// [`S3Store::with_tier_name`]).
pub const TIER_S3: &str = "s3";

/// How blobs are cut and compressed.
///
/// Sizes are in bytes. `part_size` is clamped to S3's limits ([`MIN_PART_SIZE`] ..
/// [`MAX_PART_SIZE`]) and raised when needed so an object of the expected size fits in
/// [`MAX_PARTS`] parts; `multipart_threshold` is capped at [`MAX_PART_SIZE`] (the largest single
/// PutObject).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadOptions {
    /// Size of each multipart part (compressed bytes).
    pub part_size: u64,
    /// Compressed blobs smaller than this are uploaded with one PutObject; the whole compressed
    /// blob is buffered in memory up to this size.
    pub multipart_threshold: u64,
    /// zstd level (1..=22; 3 is zstd's default).
    pub zstd_level: i32,
    /// Whether an existing blob whose metadata matches is reused instead of uploaded again.
    ///
    /// `true` (the default) avoids re-uploading content that is already stored: Wasabi bills each
    /// stored object for at least 90 days, so overwrites cost money. Set `false` to repair a blob
    /// that failed [`S3Store::verify`]: the replacement only becomes visible once the new content
    /// has been verified, so a bad source never replaces the blob.
    pub reuse_existing: bool,
}

impl From<&UploadConfig> for UploadOptions {
    fn from(config: &UploadConfig) -> Self {
        UploadOptions {
            part_size: config.part_size,
            multipart_threshold: config.multipart_threshold,
            zstd_level: config.zstd_level,
            reuse_existing: true,
        }
    }
}

impl UploadOptions {
    /// The part size actually used for an object of `expected_size` bytes (see the type docs).
    pub fn effective_part_size(&self, expected_size: u64) -> u64 {
        self.part_size
            .clamp(MIN_PART_SIZE, MAX_PART_SIZE)
            .max(compress_bound(expected_size).div_ceil(MAX_PARTS))
            .min(MAX_PART_SIZE)
    }
}

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

/// Result of [`S3Store::upload_blob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobUpload {
    /// The blob's key.
    pub key: String,
    /// Compressed size stored on S3 (for [`Manifest::stored_size`]).
    pub stored_size: u64,
    /// True when the blob was already stored and nothing was uploaded.
    pub reused: bool,
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
}

impl S3Store {
    /// Builds a client for `tier`. Performs no request to S3 (see [`S3Store::check_bucket`]).
    ///
    /// # Contract
    ///
    /// * Checksums: request checksums and response validation are `WhenRequired`. Since 2025 the
    ///   SDK otherwise sends CRC32 trailers with aws-chunked encoding, which Wasabi and other
    ///   S3-compatible services reject. Integrity is ensured by our own SHA-256 instead.
    /// * Region: used for signing exactly as configured (Garage rejects every request with
    ///   "Invalid signature" unless it is the region in Garage's config).
    /// * Addressing: path-style when `tier.force_path_style`, and always for Garage and MinIO.
    /// * Endpoint: `tier.endpoint`; without one, AWS uses the SDK's default and Wasabi uses
    ///   `https://s3.<region>.wasabisys.com`; other flavors need an endpoint.
    /// * Credentials: if `tier.credentials_file` is set, the `[default]` profile of that AWS
    ///   shared-credentials file, resolved now so a missing or bad file is an [`Error::Config`]
    ///   at startup rather than a failure on the first upload; otherwise the SDK's standard chain
    ///   (environment, `~/.aws`, instance metadata, ...).
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
        if let Some(path) = &tier.credentials_file {
            loader = loader.credentials_provider(file_credentials(path).await?);
        }
        let sdk_config = loader.load().await;
        let config = aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(path_style)
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
        })
    }

    /// The tier's key prefix: `""` or ending with `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The tier's S3 bucket.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Names this store's tier (its name in the configuration) in integrity errors, logs and the
    /// `cim_integrity_failures_total{tier}` metric of reads; [`TIER_S3`] until set.
    pub fn with_tier_name(mut self, name: impl Into<String>) -> Self {
        self.tier_name = name.into();
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

    /// Stores `content` as the blob of `expected`, verifying it on the way.
    ///
    /// # Contract
    ///
    /// * The key is [`format::blob_key`] of `expected`. If a blob is already there whose
    ///   `cim-sha256`/`cim-size` metadata match (and `opts.reuse_existing`), nothing is read from
    ///   `content` and `reused: true` is returned: identical content is stored once.
    /// * Otherwise `content` is read once to EOF, hashed (plaintext) and zstd-compressed.
    ///   Compressed blobs below `opts.multipart_threshold` go up in one PutObject, larger ones as a
    ///   multipart upload of [`UploadOptions::effective_part_size`] parts, at most two in flight.
    /// * The blob becomes visible (PutObject / CompleteMultipartUpload) only if `content` hit EOF
    ///   with exactly `expected_size` bytes hashing to `expected`. Otherwise the multipart upload
    ///   is aborted and [`Error::Integrity`] names `origin` (with `origin.tier` as the bad tier);
    ///   content longer than `expected_size` is rejected as soon as it overflows.
    /// * Before a multipart upload, unfinished uploads of the same key (left by a killed
    ///   uploader) are aborted, so retrying the work leaves no orphaned parts. Cancelling this
    ///   future mid-upload can likewise leave one, cleaned up by the next attempt.
    /// * The blob's user metadata: `cim-sha256` (hex), `cim-size` (uncompressed bytes),
    ///   `cim-compression` (`zstd`).
    ///
    /// Needs a multi-threaded runtime for parts to upload while the next one is compressed.
    pub async fn upload_blob<R: AsyncRead + Unpin + Send>(
        &self,
        content: R,
        expected_size: u64,
        expected: &Sha256Digest,
        origin: &Origin<'_>,
        opts: &UploadOptions,
    ) -> Result<BlobUpload, Error> {
        let key = blob_key(&self.prefix, expected);
        let span = tracing::info_span!(
            "upload_blob",
            key = %key,
            size = expected_size,
            bucket = origin.bucket,
            name = origin.name,
        );
        self.upload_blob_inner(content, key, expected_size, expected, origin, opts)
            .instrument(span)
            .await
    }

    async fn upload_blob_inner<R: AsyncRead + Unpin + Send>(
        &self,
        content: R,
        key: String,
        expected_size: u64,
        expected: &Sha256Digest,
        origin: &Origin<'_>,
        opts: &UploadOptions,
    ) -> Result<BlobUpload, Error> {
        let hex = expected.to_hex();
        if opts.reuse_existing {
            if let Some(stored_size) = self.existing_blob(&key, &hex, expected_size).await? {
                tracing::debug!(stored_size, "blob already stored; reusing it");
                cim_tiering::metrics::s3_blob(true);
                return Ok(BlobUpload {
                    key,
                    stored_size,
                    reused: true,
                });
            }
        }

        let upload = BlobWrite {
            store: self,
            key: &key,
            hex: &hex,
            expected,
            expected_size,
            origin,
        };
        let hashing = HashingReader::new(content, expected_size);
        let mut encoder = ZstdEncoder::with_quality(
            tokio::io::BufReader::with_capacity(IO_BUF, hashing),
            Level::Precise(opts.zstd_level),
        );
        let threshold = usize_of(opts.multipart_threshold.min(MAX_PART_SIZE));
        // Sized for this object rather than the threshold: small objects are the common case.
        let mut first =
            BytesMut::with_capacity(threshold.min(usize_of(compress_bound(expected_size))));
        let eof = fill(&mut encoder, &mut first, threshold)
            .await
            .map_err(|e| upload.read_error(&encoder, e))?;

        let stored_size = if eof {
            upload.check(hashing_result(&encoder))?;
            upload.put_single(first.freeze()).await?
        } else {
            let part_size = usize_of(opts.effective_part_size(expected_size));
            upload.multipart(encoder, first, part_size).await?
        };
        cim_tiering::metrics::s3_blob(false);
        tracing::info!(stored_size, "blob uploaded");
        Ok(BlobUpload {
            key,
            stored_size,
            reused: false,
        })
    }

    /// Stored size of the blob at `key` if it exists with matching metadata.
    async fn existing_blob(&self, key: &str, hex: &str, size: u64) -> Result<Option<u64>, Error> {
        let head = match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => head,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => return Ok(None),
            Err(e) => return Err(Error::s3("head_object", key, e)),
        };
        let meta = head.metadata();
        let get = |k: &str| meta.and_then(|m| m.get(k)).map(String::as_str);
        if get(META_SHA256) == Some(hex) && get(META_SIZE) == Some(size.to_string().as_str()) {
            Ok(Some(head.content_length().unwrap_or(0).max(0) as u64))
        } else {
            tracing::warn!(
                key,
                found_sha256 = get(META_SHA256),
                found_size = get(META_SIZE),
                "blob exists without matching metadata; replacing it with verified content"
            );
            Ok(None)
        }
    }

    /// Aborts every unfinished multipart upload of exactly `key`; returns how many.
    ///
    /// Unfinished uploads are invisible but their parts are stored (and billed) until aborted.
    /// They are left behind when an uploader is killed; [`S3Store::upload_blob`] calls this before
    /// starting a multipart upload so that retrying the work cleans them up.
    pub async fn abort_uploads_for(&self, key: &str) -> Result<usize, Error> {
        let mut aborted = 0;
        for upload in self.list_uploads(key).await? {
            if upload.key != key {
                continue;
            }
            tracing::warn!(key, upload_id = %upload.upload_id, "aborting stale multipart upload");
            if self.abort_upload(key, &upload.upload_id).await? {
                aborted += 1;
            }
        }
        Ok(aborted)
    }

    /// Aborts every unfinished multipart upload under the tier prefix started more than
    /// `older_than` ago; returns how many.
    ///
    /// [`S3Store::upload_blob`] only cleans up after a killed uploader when the same blob is
    /// uploaded again. If that never happens (the object was deleted from NATS before the work
    /// was retried) the parts would stay stored and billed forever; running this at start-up with
    /// an age well above the longest plausible upload removes them. An upload still running in
    /// another process fails at completion if swept, and is retried.
    pub async fn abort_stale_uploads(&self, older_than: Duration) -> Result<usize, Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let cutoff = now.saturating_sub(older_than.as_secs().min(i64::MAX as u64) as i64);
        let mut aborted = 0;
        for upload in self.list_uploads(&self.prefix).await? {
            // Unknown start time: treat as stale (S3 always sends it; be conservative otherwise).
            if upload.initiated_secs.is_some_and(|t| t > cutoff) {
                continue;
            }
            tracing::warn!(
                key = %upload.key,
                upload_id = %upload.upload_id,
                initiated = upload.initiated_secs,
                "aborting abandoned multipart upload"
            );
            if self.abort_upload(&upload.key, &upload.upload_id).await? {
                aborted += 1;
            }
        }
        Ok(aborted)
    }

    /// Unfinished multipart uploads under the tier prefix, as `(key, upload id)`.
    ///
    /// Should be empty whenever no upload is running: anything listed is an orphan (used by tests
    /// and by operators checking crash-safety).
    pub async fn list_multipart_uploads(&self) -> Result<Vec<(String, String)>, Error> {
        Ok(self
            .list_uploads(&self.prefix)
            .await?
            .into_iter()
            .map(|u| (u.key, u.upload_id))
            .collect())
    }

    /// Unfinished uploads whose key starts with `prefix`: `(key, upload id, initiated)`.
    async fn list_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>, Error> {
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut upload_id_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_id_marker.take())
                .send()
                .await
                .map_err(|e| Error::s3("list_multipart_uploads", prefix, e))?;
            out.extend(page.uploads().iter().filter_map(|u| {
                Some(PendingUpload {
                    key: u.key()?.to_string(),
                    upload_id: u.upload_id()?.to_string(),
                    initiated_secs: u.initiated().map(|t| t.secs()),
                })
            }));
            if !page.is_truncated().unwrap_or(false) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            upload_id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && upload_id_marker.is_none() {
                break; // a truncated page without markers would loop forever
            }
        }
        Ok(out)
    }

    /// Aborts one unfinished upload; `Ok(false)` if it no longer exists.
    async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<bool, Error> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            // Completed or aborted by someone else meanwhile: nothing left to clean.
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_upload()) => Ok(false),
            Err(e) => Err(Error::s3("abort_multipart_upload", key, e)),
        }
    }

    /// Writes `m` at [`format::manifest_key`] (one PutObject: all or nothing).
    ///
    /// # Contract
    ///
    /// This is the commit point of an upload: call it only after the blob `m.blob_key` has been
    /// uploaded (and, before another tier drops its copy, verified). A manifest that contradicts
    /// itself (see [`Manifest::from_json`]) is refused rather than written. Overwrites the
    /// previous manifest of the same object.
    pub async fn put_manifest(&self, m: &Manifest) -> Result<(), Error> {
        let key = manifest_key(&self.prefix, &m.bucket, &m.name);
        let json = m.to_json();
        Manifest::from_json(&key, &json)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type("application/json")
            .body(ByteStream::from(json))
            .send()
            .await
            .map_err(|e| Error::s3("put_object", &key, e))?;
        tracing::debug!(key, bucket = %m.bucket, name = %m.name, "manifest written");
        Ok(())
    }

    /// The manifest of `bucket`/`name`, or `None` if the object is not on S3.
    ///
    /// A manifest that does not parse, contradicts itself, or describes another object is an
    /// [`Error::Manifest`] naming its key.
    pub async fn get_manifest(&self, bucket: &str, name: &str) -> Result<Option<Manifest>, Error> {
        let key = manifest_key(&self.prefix, bucket, name);
        self.get_manifest_at(&key, bucket, name).await
    }

    async fn get_manifest_at(
        &self,
        key: &str,
        bucket: &str,
        name: &str,
    ) -> Result<Option<Manifest>, Error> {
        let response = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(Error::s3("get_object", key, e)),
        };
        let bytes = response
            .body
            .collect()
            .await
            .map_err(|e| Error::s3_body("get_object", key, &DisplayErrorContext(&e)))?
            .into_bytes();
        let manifest = Manifest::from_json(key, &bytes)?;
        if manifest.bucket != bucket || manifest.name != name {
            return Err(Error::Manifest {
                key: key.to_string(),
                source: <serde_json::Error as serde::de::Error>::custom(format!(
                    "describes {:?}/{:?}, but its key is that of {bucket:?}/{name:?}",
                    manifest.bucket, manifest.name
                )),
            });
        }
        Ok(Some(manifest))
    }

    /// Every manifest of NATS bucket `bucket`, sorted by name.
    ///
    /// Lists `P objects/<bucket>/` (paginated) and fetches each manifest, a few concurrently.
    /// Keys that are not manifest keys are skipped with a warning; an invalid manifest is an
    /// error (it would otherwise hide an object from a restore).
    pub async fn list_manifests(&self, bucket: &str) -> Result<Vec<Manifest>, Error> {
        let list_prefix = manifest_prefix(&self.prefix, Some(bucket));
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&list_prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| Error::s3("list_objects_v2", &list_prefix, e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                match format::decode_manifest_key(&self.prefix, key) {
                    Some((b, name)) if b == bucket => keys.push((key.to_string(), name)),
                    _ => tracing::warn!(key, "skipping key that is not a manifest"),
                }
            }
        }
        let mut manifests: Vec<Manifest> = futures::stream::iter(keys)
            .map(|(key, name)| async move { self.get_manifest_at(&key, bucket, &name).await })
            .buffered(MANIFEST_FETCH_CONCURRENCY)
            .try_filter_map(|m| async move { Ok(m) }) // deleted since listed
            .try_collect()
            .await?;
        manifests.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(manifests)
    }

    /// The NATS buckets that have at least one manifest, sorted.
    pub async fn list_buckets(&self) -> Result<Vec<String>, Error> {
        let list_prefix = manifest_prefix(&self.prefix, None);
        let mut buckets = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&list_prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| Error::s3("list_objects_v2", &list_prefix, e))?;
            buckets.extend(page.common_prefixes().iter().filter_map(|p| {
                let bucket = p.prefix()?.strip_prefix(&list_prefix)?.strip_suffix('/')?;
                (!bucket.is_empty()).then(|| bucket.to_string())
            }));
        }
        buckets.sort();
        buckets.dedup();
        Ok(buckets)
    }

    /// Streams the object described by `m` into `out`, verifying it; returns the bytes written.
    ///
    /// # Contract
    ///
    /// * Reads `m.blob_key`, decompresses, hashes and counts on the way; memory does not depend on
    ///   the object's size.
    /// * Bytes reach `out` before the check at EOF can pass, so on **any** error the caller must
    ///   discard what was written (e.g. write to a temporary file or an uncommitted NATS object
    ///   and delete it). `Ok` means `out` received exactly `m.size` bytes hashing to `m.digest`
    ///   and was flushed.
    /// * A size or SHA-256 mismatch, or stored bytes that are not a valid zstd stream, is an
    ///   [`Error::Integrity`] naming the object, with tier [`S3Store::tier_name`] (`"s3"` by
    ///   default), counted in `cim_integrity_failures_total{tier}` and logged at error level with
    ///   bucket, name and key. Network failures while reading are [`Error::S3`] (transient); failures writing
    ///   to `out` are [`Error::Io`].
    pub async fn read_verified<W: AsyncWrite + Unpin + Send>(
        &self,
        m: &Manifest,
        out: &mut W,
    ) -> Result<u64, Error> {
        let span = tracing::info_span!(
            "read_verified",
            key = %m.blob_key,
            size = m.size,
            bucket = %m.bucket,
            name = %m.name,
        );
        self.read_verified_inner(m, out).instrument(span).await
    }

    async fn read_verified_inner<W: AsyncWrite + Unpin + Send>(
        &self,
        m: &Manifest,
        out: &mut W,
    ) -> Result<u64, Error> {
        let key = m.blob_key.as_str();
        let origin = Origin {
            bucket: &m.bucket,
            name: &m.name,
            tier: &self.tier_name,
        };
        let response = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| Error::s3("get_object", key, e))?;
        let body = BodyReader {
            inner: Box::pin(response.body.into_async_read()),
            failed: false,
            bytes: 0,
        };
        let mut decoder = ZstdDecoder::new(body);
        // Trailing bytes after the frame must decode too: a blob is exactly what we wrote.
        decoder.multiple_members(true);
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; IO_BUF];
        loop {
            let n = match decoder.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if decoder.get_ref().failed => {
                    return Err(Error::s3_body("get_object", key, &e));
                }
                Err(e) => {
                    return Err(integrity_failure(
                        &origin,
                        key,
                        "zstd",
                        "a valid zstd stream".into(),
                        format!("undecodable bytes ({e})"),
                    ));
                }
            };
            hasher.update(&buf[..n]);
            if hasher.len() > m.size {
                return Err(integrity_failure(
                    &origin,
                    key,
                    "size",
                    m.size.to_string(),
                    format!("more than {}", m.size),
                ));
            }
            out.write_all(&buf[..n])
                .await
                .map_err(|e| Error::io(format!("writing restored {}/{}", m.bucket, m.name), e))?;
        }
        out.flush()
            .await
            .map_err(|e| Error::io(format!("writing restored {}/{}", m.bucket, m.name), e))?;
        let stored = decoder.get_ref().bytes;
        let (digest, size) = hasher.finish();
        check_content(&origin, key, (digest, size), &m.digest, m.size)?;
        tracing::debug!(stored, "blob read and verified");
        Ok(size)
    }

    /// Reads the whole object described by `m` and checks size and SHA-256 (see
    /// [`S3Store::read_verified`]); nothing is written anywhere.
    ///
    /// This is the check required before any other tier drops its copy.
    pub async fn verify(&self, m: &Manifest) -> Result<(), Error> {
        self.read_verified(m, &mut tokio::io::sink())
            .await
            .map(|_| ())
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

/// An unfinished multipart upload, as listed.
struct PendingUpload {
    key: String,
    upload_id: String,
    /// Start time, seconds since the Unix epoch.
    initiated_secs: Option<i64>,
}

/// One blob being written: what it must contain and whom to blame otherwise.
struct BlobWrite<'a> {
    store: &'a S3Store,
    key: &'a str,
    hex: &'a str,
    expected: &'a Sha256Digest,
    expected_size: u64,
    origin: &'a Origin<'a>,
}

type Encoder<R> = ZstdEncoder<tokio::io::BufReader<HashingReader<R>>>;

fn hashing_result<R: AsyncRead + Unpin>(encoder: &Encoder<R>) -> (Sha256Digest, u64) {
    encoder.get_ref().get_ref().result()
}

impl BlobWrite<'_> {
    /// Maps an error reading the compressed stream: content overflowing the expected size is an
    /// integrity failure of the source; anything else is the source's I/O error.
    fn read_error<R: AsyncRead + Unpin>(&self, encoder: &Encoder<R>, e: io::Error) -> Error {
        if encoder.get_ref().get_ref().oversize {
            integrity_failure(
                self.origin,
                self.key,
                "size",
                self.expected_size.to_string(),
                format!("more than {}", self.expected_size),
            )
        } else {
            Error::io(
                format!(
                    "reading {}/{} from {}",
                    self.origin.bucket, self.origin.name, self.origin.tier
                ),
                e,
            )
        }
    }

    fn check(&self, got: (Sha256Digest, u64)) -> Result<(), Error> {
        check_content(
            self.origin,
            self.key,
            got,
            self.expected,
            self.expected_size,
        )
    }

    fn metadata(&self) -> [(&'static str, String); 3] {
        [
            (META_SHA256, self.hex.to_string()),
            (META_SIZE, self.expected_size.to_string()),
            (META_COMPRESSION, Compression::Zstd.as_str().to_string()),
        ]
    }

    /// One PutObject of the whole (already verified) compressed blob.
    async fn put_single(&self, blob: Bytes) -> Result<u64, Error> {
        let len = blob.len() as u64;
        let mut request = self
            .store
            .client
            .put_object()
            .bucket(&self.store.bucket)
            .key(self.key)
            .content_type("application/zstd")
            .content_length(len as i64)
            .body(ByteStream::from(blob));
        for (k, v) in self.metadata() {
            request = request.metadata(k, v);
        }
        request
            .send()
            .await
            .map_err(|e| Error::s3("put_object", self.key, e))?;
        cim_tiering::metrics::s3_sent(len, false);
        Ok(len)
    }

    /// Multipart upload of the compressed stream, `first` being what was read so far.
    async fn multipart<R: AsyncRead + Unpin + Send>(
        &self,
        mut encoder: Encoder<R>,
        first: BytesMut,
        part_size: usize,
    ) -> Result<u64, Error> {
        let (client, bucket, key) = (&self.store.client, &self.store.bucket, self.key);
        self.store.abort_uploads_for(key).await?;
        let mut create = client
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .content_type("application/zstd");
        for (k, v) in self.metadata() {
            create = create.metadata(k, v);
        }
        let upload_id = create
            .send()
            .await
            .map_err(|e| Error::s3("create_multipart_upload", key, e))?
            .upload_id()
            .map(str::to_string)
            .ok_or_else(|| Error::S3 {
                op: "create_multipart_upload",
                key: key.to_string(),
                source: "response has no upload id".into(),
            })?;
        tracing::debug!(upload_id, part_size, "multipart upload started");

        let mut tasks = JoinSet::new();
        let result = match self
            .stream_parts(&mut encoder, first, part_size, &upload_id, &mut tasks)
            .await
        {
            Ok(parts) => self.complete(&upload_id, parts).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            // Stop parts still uploading before aborting, so none lands after the abort.
            tasks.shutdown().await;
            match self.store.abort_upload(key, &upload_id).await {
                Ok(_) => tracing::info!(upload_id, "multipart upload aborted"),
                Err(e) => tracing::warn!(
                    upload_id,
                    error = %e,
                    "could not abort multipart upload; the next upload of this blob retries"
                ),
            }
        }
        result
    }

    /// Cuts the compressed stream into parts and uploads them, at most
    /// [`MAX_PARTS_IN_FLIGHT`] at a time; checks the content at EOF. Returns the parts in order.
    async fn stream_parts<R: AsyncRead + Unpin + Send>(
        &self,
        encoder: &mut Encoder<R>,
        mut pending: BytesMut,
        part_size: usize,
        upload_id: &str,
        tasks: &mut JoinSet<Result<(CompletedPart, u64), Error>>,
    ) -> Result<Vec<(CompletedPart, u64)>, Error> {
        let mut done = Vec::new();
        let mut part_number: u64 = 0;
        let mut eof = false;
        loop {
            if !eof && pending.len() < part_size {
                if pending.is_empty() {
                    // The previous buffer is owned by in-flight parts; start a fresh one.
                    pending = BytesMut::with_capacity(part_size);
                } else {
                    pending.reserve(part_size - pending.len());
                }
                eof = fill(encoder, &mut pending, part_size)
                    .await
                    .map_err(|e| self.read_error(encoder, e))?;
            }
            if eof {
                // Verify before the last part goes out; a bad source never completes.
                self.check(hashing_result(encoder))?;
            }
            while pending.len() >= part_size || (eof && (!pending.is_empty() || part_number == 0)) {
                let body = if pending.len() >= part_size {
                    pending.split_to(part_size).freeze()
                } else {
                    pending.split().freeze()
                };
                part_number += 1;
                if part_number > MAX_PARTS {
                    return Err(Error::config(format!(
                        "blob {} needs more than {MAX_PARTS} parts of {part_size} bytes",
                        self.key
                    )));
                }
                while tasks.len() >= MAX_PARTS_IN_FLIGHT {
                    done.push(join_part(tasks).await?);
                }
                tasks.spawn(upload_part(
                    self.store.client.clone(),
                    self.store.bucket.clone(),
                    self.key.to_string(),
                    upload_id.to_string(),
                    part_number as i32,
                    body,
                ));
            }
            if eof {
                break;
            }
        }
        while !tasks.is_empty() {
            done.push(join_part(tasks).await?);
        }
        done.sort_by_key(|(part, _)| part.part_number());
        Ok(done)
    }

    async fn complete(
        &self,
        upload_id: &str,
        parts: Vec<(CompletedPart, u64)>,
    ) -> Result<u64, Error> {
        let stored: u64 = parts.iter().map(|(_, len)| len).sum();
        let count = parts.len();
        let parts = parts.into_iter().map(|(part, _)| part).collect();
        self.store
            .client
            .complete_multipart_upload()
            .bucket(&self.store.bucket)
            .key(self.key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| Error::s3("complete_multipart_upload", self.key, e))?;
        tracing::debug!(
            upload_id,
            parts = count,
            stored,
            "multipart upload completed"
        );
        Ok(stored)
    }
}

async fn join_part(
    tasks: &mut JoinSet<Result<(CompletedPart, u64), Error>>,
) -> Result<(CompletedPart, u64), Error> {
    match tasks.join_next().await {
        Some(Ok(result)) => result,
        Some(Err(join)) => Err(Error::io(
            "multipart part upload task",
            io::Error::other(join.to_string()),
        )),
        None => Err(Error::io(
            "multipart part upload task",
            io::Error::other("no part in flight"),
        )),
    }
}

async fn upload_part(
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    part_number: i32,
    body: Bytes,
) -> Result<(CompletedPart, u64), Error> {
    let len = body.len() as u64;
    let output = client
        .upload_part()
        .bucket(bucket)
        .key(&key)
        .upload_id(upload_id)
        .part_number(part_number)
        .content_length(len as i64)
        .body(ByteStream::from(body))
        .send()
        .await
        .map_err(|e| Error::s3("upload_part", &key, e))?;
    cim_tiering::metrics::s3_sent(len, true);
    tracing::trace!(part_number, len, "part uploaded");
    let part = CompletedPart::builder()
        .part_number(part_number)
        .set_e_tag(output.e_tag().map(str::to_string))
        .build();
    Ok((part, len))
}

/// Reads from `reader` into `buf` until it holds `cap` bytes (returns `false`) or EOF (`true`).
///
/// Uses `buf`'s spare capacity first and grows it in small steps only when full, so a buffer
/// sized for the expected content is not inflated to `cap`.
async fn fill<R: AsyncRead + Unpin>(
    reader: &mut R,
    buf: &mut BytesMut,
    cap: usize,
) -> io::Result<bool> {
    while buf.len() < cap {
        let want = cap - buf.len();
        if buf.capacity() == buf.len() {
            buf.reserve(want.min(IO_BUF));
        }
        if reader.read_buf(&mut (&mut *buf).limit(want)).await? == 0 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// An upper bound of the zstd-compressed size of `size` bytes (zstd's own bound,
/// `ZSTD_compressBound`, is about size/256 plus a few hundred bytes).
fn compress_bound(size: u64) -> u64 {
    size.saturating_add(size / 128).saturating_add(64 * 1024)
}

fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
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

/// Hashes and counts plaintext as it is read; fails as soon as more than `limit` bytes arrive.
///
/// Also yields to the scheduler every [`YIELD_EVERY`] bytes. The zstd encoder keeps pulling input
/// within one poll for as long as its output buffer has room, which for compressible content read
/// from memory means megabytes of hashing and compression without an await point; yielding
/// bounds the CPU time of one poll so other tasks on the worker keep running.
struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    limit: u64,
    oversize: bool,
    since_yield: usize,
}

/// Plaintext bytes hashed and compressed between two yields (~0.5 ms of zstd level 3 here).
const YIELD_EVERY: usize = 256 * 1024;

impl<R> HashingReader<R> {
    fn new(inner: R, limit: u64) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(),
            limit,
            oversize: false,
            since_yield: 0,
        }
    }

    fn result(&self) -> (Sha256Digest, u64) {
        self.hasher.clone().finish()
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.since_yield >= YIELD_EVERY {
            this.since_yield = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        this.since_yield += new.len();
        this.hasher.update(new);
        if this.hasher.len() > this.limit {
            this.oversize = true;
            // An `AsyncRead` that fails must not hand out bytes.
            buf.set_filled(before);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "content is longer than its recorded size",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

/// The GetObject body, remembering whether it (rather than the decompressor) failed, so that a
/// dropped connection is reported as a transient S3 error and not as corrupted content.
struct BodyReader {
    inner: Pin<Box<dyn AsyncBufRead + Send>>,
    failed: bool,
    bytes: u64,
}

impl AsyncRead for BodyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = ready!(this.inner.as_mut().poll_read(cx, buf));
        match &result {
            Ok(()) => this.bytes += (buf.filled().len() - before) as u64,
            Err(_) => this.failed = true,
        }
        Poll::Ready(result)
    }
}

impl AsyncBufRead for BodyReader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        match ready!(this.inner.as_mut().poll_fill_buf(cx)) {
            Ok(data) => Poll::Ready(Ok(data)),
            Err(e) => {
                this.failed = true;
                Poll::Ready(Err(e))
            }
        }
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.bytes += amt as u64;
        this.inner.as_mut().consume(amt);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn part_size_respects_s3_limits() {
        let opts = UploadOptions {
            part_size: 1024,
            multipart_threshold: 0,
            zstd_level: 3,
            reuse_existing: true,
        };
        assert_eq!(opts.effective_part_size(0), MIN_PART_SIZE);
        let huge = 100 * 1024 * 1024 * 1024 * 1024; // 100 TiB: beyond 10,000 × 5 GiB
        assert_eq!(opts.effective_part_size(huge), MAX_PART_SIZE);
        let big = 200 * 1024 * 1024 * 1024; // 200 GiB needs parts > 20 MiB
        let p = opts.effective_part_size(big);
        assert!(p * MAX_PARTS >= big + big / 128, "{p}");
        let opts = UploadOptions {
            part_size: 8 << 20,
            ..opts
        };
        assert_eq!(opts.effective_part_size(1 << 30), 8 << 20);
    }

    #[tokio::test]
    async fn hashing_reader_hashes_and_stops_at_limit() {
        let data = b"hello world".to_vec();
        let mut r = HashingReader::new(&data[..], 11);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(r.result(), (Sha256Digest::of(&data), 11));

        // Larger than YIELD_EVERY: yields (Pending + wake) along the way, still reads it all.
        let big = vec![1u8; 3 * YIELD_EVERY + 5];
        let mut r = HashingReader::new(&big[..], big.len() as u64);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(r.result(), (Sha256Digest::of(&big), big.len() as u64));

        let mut r = HashingReader::new(&data[..], 5);
        let err = r.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(r.oversize);
    }

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

    #[tokio::test]
    async fn fill_stops_at_cap_and_reports_eof() {
        let data = vec![7u8; 1000];
        let mut r = &data[..];
        let mut buf = BytesMut::new();
        assert!(!fill(&mut r, &mut buf, 600).await.unwrap());
        assert_eq!(buf.len(), 600);
        let mut rest = BytesMut::new();
        assert!(fill(&mut r, &mut rest, 600).await.unwrap());
        assert_eq!(rest.len(), 400);
        let mut none = BytesMut::new();
        assert!(!fill(&mut r, &mut none, 0).await.unwrap());
    }
}
