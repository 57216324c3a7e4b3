//! Verified blob upload: one PutObject below the multipart threshold, a multipart upload of
//! streamed parts above it. Nothing becomes visible before the content hashed to its digest.

use std::io;

use async_compression::tokio::bufread::ZstdEncoder;
use async_compression::zstd::CParameter;
use async_compression::Level;
use aws_sdk_s3::primitives::ByteStream;
use bytes::{BufMut, Bytes, BytesMut};
use cim_policies::{S3Verify, UploadConfig};
use cim_tiering::digest::Sha256Digest;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::Instrument;

use super::budget::{Buffer, MemoryBudget};
use super::checksums::BodyChecksum;
use super::deadlines;
use super::hashing::HashingReader;
use super::{
    check_content, integrity_failure, Origin, S3Store, IO_BUF, META_COMPRESSION, META_SHA256,
    META_SIZE,
};
use crate::format::{blob_key, Compression, Verification};
use crate::Error;
/// Smallest part S3 accepts (except for the last part of an upload).
pub const MIN_PART_SIZE: u64 = 5 * 1024 * 1024;
/// Largest part, and largest single PutObject, S3 accepts.
pub const MAX_PART_SIZE: u64 = 5 * 1024 * 1024 * 1024;
/// Most parts one multipart upload may have.
pub const MAX_PARTS: u64 = 10_000;

/// How blobs are cut and compressed.
///
/// Sizes are in bytes. `part_size` is clamped to S3's limits ([`MIN_PART_SIZE`] ..
/// [`MAX_PART_SIZE`]) and raised when needed so an object of the expected size fits in
/// [`MAX_PARTS`] parts; `multipart_threshold` is capped at [`MAX_PART_SIZE`] (the largest single
/// PutObject). From a configuration, both are also capped at half the memory budget, so that
/// one part can be sent while the next is filled.
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
    /// Bounds the compressed-byte buffers of every upload sharing it (see [`MemoryBudget`]).
    pub budget: MemoryBudget,
}

impl From<&UploadConfig> for UploadOptions {
    /// Options for the role: one budget of `memory_budget` bytes for all its uploads.
    fn from(config: &UploadConfig) -> Self {
        let half = (config.memory_budget / 2).max(MIN_PART_SIZE);
        let part_size = config.part_size.min(half);
        UploadOptions {
            part_size,
            multipart_threshold: config.multipart_threshold.min(half),
            zstd_level: config.zstd_level,
            reuse_existing: true,
            budget: MemoryBudget::new(config.memory_budget).with_part_buffers(part_size),
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

/// Result of [`S3Store::upload_blob`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobUpload {
    /// The blob's key.
    pub key: String,
    /// Compressed size stored on S3 (for [`crate::format::Manifest::stored_size`]).
    pub stored_size: u64,
    /// True when the blob was already stored and nothing was uploaded.
    pub reused: bool,
    /// Set when the tier verifies by checksum (`md5`, `crc32c`) and the service confirmed the
    /// checksum of every body of this upload: the blob is verified without reading it back.
    /// `None` for a reused blob (nothing was sent, so nothing was checked) and for `read-back`.
    pub verified: Option<Verification>,
}

impl S3Store {
    /// Stores `content` as the blob of `expected`, verifying it on the way.
    ///
    /// # Contract
    ///
    /// * The key is [`crate::format::blob_key`] of `expected`. If a blob is already there whose
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
    ///   uploader) are aborted, so retrying the work leaves no orphaned parts. Callers that may
    ///   run several uploads of one blob at once hold the blob's lease
    ///   ([`cim_tiering::lease`]), so that what is aborted is never a live upload. Cancelling this
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
            .map_err(|e| e.for_object(origin.bucket, origin.name))
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
                cim_tiering::metrics::s3_blob(&self.tier_name, true);
                return Ok(BlobUpload {
                    key,
                    stored_size,
                    reused: true,
                    verified: None,
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
        // Taken before any buffer (see `super::budget`): bounds the encoders and hub readers
        // of all uploads; given back as soon as the content hit EOF.
        let slot = opts.budget.codec().await;
        let hashing = HashingReader::new(content, expected_size);
        // zstd's frame checksum (XXH64 of the content, 4 bytes at the end) lets any reader —
        // `zstd -d` by hand included — detect a damaged blob without our manifest.
        let mut encoder = ZstdEncoder::with_quality_and_params(
            tokio::io::BufReader::with_capacity(IO_BUF, hashing),
            Level::Precise(opts.zstd_level),
            &[CParameter::checksum_flag(true)],
        );
        let threshold = usize_of(opts.multipart_threshold.min(MAX_PART_SIZE));
        let part_size = usize_of(opts.effective_part_size(expected_size));
        // Sized for this object rather than the threshold: small objects are the common case.
        let capacity = threshold.min(usize_of(compress_bound(expected_size)));
        // An object that may need a multipart upload gets room for a whole part up front, so
        // that growing this buffer to a part never waits for room while holding some.
        let may_be_multipart = compress_bound(expected_size) > threshold as u64;
        let room = if may_be_multipart {
            capacity.max(part_size)
        } else {
            capacity
        };
        let Buffer {
            bytes: mut first,
            mut charge,
            reusable,
        } = opts.budget.buffer(room).await;
        let eof = fill(&mut encoder, &mut first, threshold)
            .await
            .map_err(|e| upload.read_error(&encoder, e))?;

        let (stored_size, checksums, part_size) = if eof {
            upload.check(hashing_result(&encoder))?;
            // The encoder's state and the reader's read-ahead are not needed for sending.
            drop((encoder, slot));
            let blob = first.freeze();
            let (stored_size, checksum) = upload.put_single(blob.clone()).await?;
            if reusable {
                opts.budget.recycle(blob, charge);
            }
            (stored_size, checksum.into_iter().collect(), None)
        } else {
            let (stored_size, checksums) = upload
                .multipart(
                    (encoder, slot),
                    (first, reusable),
                    &mut charge,
                    &opts.budget,
                    part_size,
                )
                .await?;
            (stored_size, checksums, Some(part_size as u64))
        };
        cim_tiering::metrics::s3_blob(&self.tier_name, false);
        tracing::info!(stored_size, verify = %self.verify, "blob uploaded");
        let verified = (self.verify != S3Verify::ReadBack).then_some(Verification {
            mode: self.verify,
            checksums,
            part_size,
        });
        Ok(BlobUpload {
            key,
            stored_size,
            reused: false,
            verified,
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
}

/// One blob being written: what it must contain and whom to blame otherwise.
pub(super) struct BlobWrite<'a> {
    pub(super) store: &'a S3Store,
    pub(super) key: &'a str,
    hex: &'a str,
    expected: &'a Sha256Digest,
    pub(super) expected_size: u64,
    origin: &'a Origin<'a>,
}

pub(super) type Encoder<R> = ZstdEncoder<tokio::io::BufReader<HashingReader<R>>>;

pub(super) fn hashing_result<R: AsyncRead + Unpin>(encoder: &Encoder<R>) -> (Sha256Digest, u64) {
    encoder.get_ref().get_ref().result()
}

impl BlobWrite<'_> {
    /// Maps an error reading the compressed stream: content overflowing the expected size, or a
    /// source reader that found its own content contradicting the digest (`InvalidData`), is an
    /// integrity failure of the source — reported once, not retried as if it were a network
    /// error; an error of the cluster's reader ([`cim_tiering::jetstream::ObjectReader`]: a
    /// lagging replica is `NotReady`) is passed on as it is; anything else is the source's I/O
    /// error.
    pub(super) fn read_error<R: AsyncRead + Unpin>(
        &self,
        encoder: &Encoder<R>,
        e: io::Error,
    ) -> Error {
        let e = match cim_tiering::jetstream::read::tiering_error(e) {
            Ok(tiering) => return tiering.into(),
            Err(e) => e,
        };
        if encoder.get_ref().get_ref().oversize {
            integrity_failure(
                self.origin,
                self.key,
                "size",
                self.expected_size.to_string(),
                format!("more than {}", self.expected_size),
            )
        } else if e.kind() == io::ErrorKind::InvalidData {
            integrity_failure(
                self.origin,
                self.key,
                "sha-256",
                self.expected.to_nats(),
                format!("content that does not hash to it ({e})"),
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

    pub(super) fn check(&self, got: (Sha256Digest, u64)) -> Result<(), Error> {
        check_content(
            self.origin,
            self.key,
            got,
            self.expected,
            self.expected_size,
        )
    }

    pub(super) fn metadata(&self) -> [(&'static str, String); 3] {
        [
            (META_SHA256, self.hex.to_string()),
            (META_SIZE, self.expected_size.to_string()),
            (META_COMPRESSION, Compression::Zstd.as_str().to_string()),
        ]
    }

    /// One PutObject of the whole (already verified) compressed blob; returns its length and,
    /// unless the tier verifies by reading back, the checksum the service confirmed.
    async fn put_single(&self, blob: Bytes) -> Result<(u64, Option<String>), Error> {
        let len = blob.len() as u64;
        let verify = self.store.verify;
        let checksum = BodyChecksum::of_body(verify, &blob).await;
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
        match &checksum {
            Some(BodyChecksum::Md5 { base64, .. }) => request = request.content_md5(base64),
            Some(BodyChecksum::Crc32c { base64 }) => request = request.checksum_crc32_c(base64),
            None => {}
        }
        let mut request = request
            .customize()
            .config_override(deadlines::with_timeouts(deadlines::upload_timeouts(len)));
        if checksum.is_some() {
            // The service checks our checksum; SigV4's SHA-256 of the payload would be a
            // third pass over the bytes for no further proof.
            request = request.disable_payload_signing();
        }
        let output = request
            .send()
            .await
            .map_err(|e| Error::s3("put_object", self.key, e))?;
        cim_tiering::metrics::s3_sent(&self.store.tier_name, len, false);
        if let Some(checksum) = &checksum {
            confirm(
                checksum,
                verify,
                "put_object",
                self.key,
                output.e_tag(),
                output.checksum_crc32_c(),
            )?;
        }
        Ok((len, checksum.map(|c| c.value().to_string())))
    }
}

/// Checks the service's answer against the checksum a request carried (see
/// [`super::checksums`]); an answer that does not confirm it fails the upload, naming the mode
/// to use instead.
pub(super) fn confirm(
    checksum: &BodyChecksum,
    mode: S3Verify,
    op: &'static str,
    key: &str,
    etag: Option<&str>,
    echoed_crc32c: Option<&str>,
) -> Result<(), Error> {
    checksum
        .confirm(etag, echoed_crc32c)
        .map_err(|unconfirmed| Error::Unconfirmed {
            op,
            key: key.to_string(),
            mode,
            found: unconfirmed.found,
        })
}

/// Reads from `reader` into `buf` until it holds `cap` bytes (returns `false`) or EOF (`true`).
///
/// Uses `buf`'s spare capacity first and grows it in small steps only when full, so a buffer
/// sized for the expected content is not inflated to `cap`.
pub(super) async fn fill<R: AsyncRead + Unpin>(
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
pub(super) fn compress_bound(size: u64) -> u64 {
    size.saturating_add(size / 128).saturating_add(64 * 1024)
}

pub(super) fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
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
            budget: MemoryBudget::new(64 << 20),
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

    #[test]
    fn an_unconfirmed_checksum_is_refused_and_names_the_modes_to_use() {
        let crc = BodyChecksum::of(S3Verify::Crc32c, b"part").unwrap();
        // A service that accepts the part but does not echo x-amz-checksum-crc32c.
        let err = confirm(
            &crc,
            S3Verify::Crc32c,
            "upload_part",
            "k",
            Some("\"e\""),
            None,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Unconfirmed { .. }), "{err:?}");
        assert!(!err.is_transient(), "the same service answers the same way");
        let text = err.to_string();
        assert!(
            text.contains(r#"verify = "md5""#) && text.contains(r#"verify = "read-back""#),
            "{text}"
        );
        let md5 = BodyChecksum::of(S3Verify::Md5, b"part").unwrap();
        let err = confirm(
            &md5,
            S3Verify::Md5,
            "put_object",
            "k",
            Some("\"kms\""),
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains(r#"verify = "crc32c""#), "{err}");
        confirm(
            &crc,
            S3Verify::Crc32c,
            "upload_part",
            "k",
            None,
            Some(crc.value()),
        )
        .unwrap();
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
