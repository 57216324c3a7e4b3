//! Verified streaming reads of blobs (restore, and the read-back before another tier drops its
//! copy).

use async_compression::tokio::bufread::ZstdDecoder;
use cim_tiering::digest::Hasher;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::Instrument;

use super::hashing::BodyReader;
use super::{check_content, integrity_failure, Origin, S3Store, IO_BUF};
use crate::format::Manifest;
use crate::Error;
impl S3Store {
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
