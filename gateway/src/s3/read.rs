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
    /// * The manifest is untrusted: a blob whose length (the GET's Content-Length, and the bytes
    ///   actually received) is not `m.stored_size` is refused before any byte reaches `out`, and
    ///   `out` never receives more than `m.size` bytes, however much the blob decompresses to.
    /// * Bytes reach `out` before the check at EOF can pass, so on **any** error the caller must
    ///   discard what was written (e.g. write to a temporary file or an uncommitted NATS object
    ///   and delete it). `Ok` means `out` received exactly `m.size` bytes hashing to `m.digest`
    ///   and was flushed.
    /// * A size, stored size or SHA-256 mismatch, or stored bytes that are not a valid zstd stream, is an
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
        self.read_verified_inner(m, out)
            .instrument(span)
            .await
            .map_err(|e| e.for_object(&m.bucket, &m.name))
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
        // Untrusted manifest: the blob must be as long as it says before we decode anything.
        if let Some(length) = response.content_length() {
            if u64::try_from(length).ok() != Some(m.stored_size) {
                return Err(integrity_failure(
                    &origin,
                    key,
                    "stored size",
                    m.stored_size.to_string(),
                    length.to_string(),
                ));
            }
        }
        let body = BodyReader::new(response.body.into_async_read());
        decode_verified(body, m, &origin, out).await
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

/// Decompresses `body` (the blob of `m`) into `out`, hashing and counting; checks the stored and
/// the decompressed size and the SHA-256 against `m`. Never writes more than `m.size` bytes to
/// `out`: a blob that decompresses to more (a decompression bomb) fails as soon as it overflows.
async fn decode_verified<W: AsyncWrite + Unpin + Send>(
    body: BodyReader,
    m: &Manifest,
    origin: &Origin<'_>,
    out: &mut W,
) -> Result<u64, Error> {
    let key = m.blob_key.as_str();
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
                    origin,
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
                origin,
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
    if stored != m.stored_size {
        return Err(integrity_failure(
            origin,
            key,
            "stored size",
            m.stored_size.to_string(),
            stored.to_string(),
        ));
    }
    let (digest, size) = hasher.finish();
    check_content(origin, key, (digest, size), &m.digest, m.size)?;
    tracing::debug!(stored, "blob read and verified");
    Ok(size)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use cim_tiering::digest::Sha256Digest;

    /// A format-1 manifest of `data` stored as `blob`, declaring `size`.
    fn manifest(data: &[u8], blob: &[u8], size: u64) -> Manifest {
        let digest = Sha256Digest::of(data);
        let json = serde_json::json!({
            "format": 1, "bucket": "b", "name": "bomb", "size": size,
            "digest": digest.to_nats(), "sha256_hex": digest.to_hex(), "compression": "zstd",
            "stored_size": blob.len(), "blob_key": crate::format::blob_key("", &digest),
            "description": null, "uploaded_at": "2026-01-01T00:00:00Z",
            "source_tier": "hub", "source_nuid": "N",
        });
        Manifest::from_json("k", &serde_json::to_vec(&json).unwrap()).unwrap()
    }

    fn body(blob: &[u8]) -> BodyReader {
        BodyReader::new(std::io::Cursor::new(blob.to_vec()))
    }

    const ORIGIN: Origin<'static> = Origin {
        bucket: "b",
        name: "bomb",
        tier: "s3",
    };

    #[tokio::test]
    async fn never_writes_more_than_the_declared_size() {
        // 64 MiB of zeros compress to a few KiB: a manifest declaring 1000 bytes must not let
        // more than 1000 bytes through (here: none, the first decoded buffer already overflows).
        let data = vec![0u8; 64 << 20];
        let blob = zstd::encode_all(&data[..], 3).unwrap();
        let m = manifest(&data, &blob, 1000);
        let mut out = Vec::new();
        let err = decode_verified(body(&blob), &m, &ORIGIN, &mut out)
            .await
            .unwrap_err();
        assert!(out.len() <= 1000, "{} bytes written", out.len());
        assert!(
            matches!(&err, Error::Integrity { what, name, .. } if what == "size" && name == "bomb"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn checks_the_stored_size_and_passes_exact_content() {
        let data = b"hello hello hello".repeat(100);
        let blob = zstd::encode_all(&data[..], 3).unwrap();
        let m = manifest(&data, &blob, data.len() as u64);
        let mut out = Vec::new();
        let n = decode_verified(body(&blob), &m, &ORIGIN, &mut out)
            .await
            .unwrap();
        assert_eq!((n, out), (data.len() as u64, data.clone()));

        let mut lying = m.clone();
        lying.stored_size += 1;
        let err = decode_verified(body(&blob), &lying, &ORIGIN, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Integrity { what, .. } if what == "stored size"),
            "{err:?}"
        );
    }
}
