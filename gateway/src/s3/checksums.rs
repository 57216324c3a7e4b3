//! The checksums the service checks on receipt (`verify = "md5"` or `"crc32c"` on an S3 tier):
//! computed over each request body we send, sent with it, and checked in the service's answer.
//!
//! Why this proves the transfer: the service recomputes the checksum of the body it received
//! and refuses the request (`BadDigest`, `InvalidDigest`) when it differs, so a byte changed
//! between our compression and the service's receipt fails the request, which is retried. Each
//! body's checksum is computed from the very buffer that is sent, right after our SHA-256 pass
//! hashed the plaintext and zstd compressed it into that buffer.
//!
//! Why we check the answer too ("trust but verify the service"): a service that ignores the
//! header would accept anything. For `md5`, S3, Wasabi, Garage and MinIO return the body's MD5
//! as the ETag of an unencrypted object or part; for `crc32c`, services that check
//! `x-amz-checksum-crc32c` echo it in the response. An answer without that confirmation is not
//! counted as verified ([`Unconfirmed`]): the operator is told to choose another mode.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use cim_policies::S3Verify;
use md5::{Digest as _, Md5};

/// Bodies larger than this are checksummed on the blocking pool (MD5 runs at ~0.5 GB/s: a
/// 16 MiB part would hold a runtime worker for ~30 ms).
const INLINE_LIMIT: usize = 1024 * 1024;

/// The checksum of one request body, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum BodyChecksum {
    /// `Content-MD5`: base64 of the 16-byte MD5 (the header's form), and its hex (the ETag's).
    Md5 { base64: String, hex: String },
    /// `x-amz-checksum-crc32c`: base64 of the big-endian CRC32C.
    Crc32c { base64: String },
}

/// Why a service's answer does not confirm a checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Unconfirmed {
    /// What the answer said instead.
    pub(super) found: String,
}

impl BodyChecksum {
    /// The checksum `mode` sends with `body`; `None` for `read-back` (nothing is sent: the blob
    /// is read back instead).
    pub(super) fn of(mode: S3Verify, body: &[u8]) -> Option<BodyChecksum> {
        match mode {
            S3Verify::ReadBack => None,
            S3Verify::Md5 => {
                let digest = Md5::digest(body);
                Some(BodyChecksum::Md5 {
                    base64: STANDARD.encode(digest),
                    hex: hex::encode(digest),
                })
            }
            S3Verify::Crc32c => {
                let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, body) as u32;
                Some(BodyChecksum::Crc32c {
                    base64: STANDARD.encode(crc.to_be_bytes()),
                })
            }
        }
    }

    /// [`BodyChecksum::of`], off the runtime's workers for large bodies.
    pub(super) async fn of_body(mode: S3Verify, body: &bytes::Bytes) -> Option<BodyChecksum> {
        if mode == S3Verify::ReadBack || body.len() <= INLINE_LIMIT {
            return BodyChecksum::of(mode, body);
        }
        let owned = body.clone();
        match tokio::task::spawn_blocking(move || BodyChecksum::of(mode, &owned)).await {
            Ok(checksum) => checksum,
            // The blocking pool is gone only when the runtime shuts down; compute it here then.
            Err(_) => BodyChecksum::of(mode, body),
        }
    }

    /// The value recorded in the manifest: the header's value, base64.
    pub(super) fn value(&self) -> &str {
        match self {
            BodyChecksum::Md5 { base64, .. } | BodyChecksum::Crc32c { base64 } => base64,
        }
    }

    /// Checks the service's answer to the request that carried this checksum: for MD5 the
    /// ETag must be the body's MD5 (quotes and case aside); for CRC32C the response must echo
    /// our value.
    pub(super) fn confirm(
        &self,
        etag: Option<&str>,
        echoed_crc32c: Option<&str>,
    ) -> Result<(), Unconfirmed> {
        match self {
            BodyChecksum::Md5 { hex, .. } => {
                let etag = etag.map(|e| e.trim().trim_matches('"'));
                if etag.is_some_and(|e| e.eq_ignore_ascii_case(hex)) {
                    Ok(())
                } else {
                    Err(Unconfirmed {
                        found: format!("ETag {etag:?}, not the body's MD5 {hex}"),
                    })
                }
            }
            BodyChecksum::Crc32c { base64 } => {
                if echoed_crc32c == Some(base64.as_str()) {
                    Ok(())
                } else {
                    Err(Unconfirmed {
                        found: format!(
                            "x-amz-checksum-crc32c {echoed_crc32c:?} in the response, not {base64}"
                        ),
                    })
                }
            }
        }
    }
}

/// The checksum `mode` sends with a request body `body` and records in the manifest (base64,
/// as in the header); `None` for `read-back`. Cutting a stored blob at the manifest's
/// `verified.part_size` and applying this to each piece gives the recorded checksums again.
pub fn recorded_checksum(mode: S3Verify, body: &[u8]) -> Option<String> {
    BodyChecksum::of(mode, body).map(|c| c.value().to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn checksums_match_the_published_values() {
        // RFC 1321: MD5("abc"); RFC 3720 B.4: CRC32C of 32 zero bytes is 0x8a9136aa.
        let Some(BodyChecksum::Md5 { hex, base64 }) = BodyChecksum::of(S3Verify::Md5, b"abc")
        else {
            panic!("md5 sends a checksum");
        };
        assert_eq!(hex, "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(base64, "kAFQmDzST7DWlj99KOF/cg==");
        let crc = BodyChecksum::of(S3Verify::Crc32c, &[0u8; 32]).unwrap();
        assert_eq!(crc.value(), STANDARD.encode(0x8a91_36aau32.to_be_bytes()));
        assert_eq!(BodyChecksum::of(S3Verify::ReadBack, b"abc"), None);
    }

    #[test]
    fn the_service_must_confirm_what_it_checked() {
        let md5 = BodyChecksum::of(S3Verify::Md5, b"abc").unwrap();
        // S3 quotes the ETag; case does not matter.
        md5.confirm(Some("\"900150983CD24FB0D6963F7D28E17F72\""), None)
            .unwrap();
        md5.confirm(Some("900150983cd24fb0d6963f7d28e17f72"), None)
            .unwrap();
        // Encrypted (SSE-KMS) or multipart-style ETags are not the body's MD5: not confirmed.
        assert!(md5.confirm(Some("\"0123456789abcdef\""), None).is_err());
        assert!(md5.confirm(None, None).is_err());

        let crc = BodyChecksum::of(S3Verify::Crc32c, b"abc").unwrap();
        let ours = crc.value().to_string();
        crc.confirm(Some("\"whatever\""), Some(&ours)).unwrap();
        // A service that ignores the header does not echo it: refused, whatever the ETag.
        let refused = crc.confirm(Some("\"900150983cd24fb0d6963f7d28e17f72\""), None);
        assert!(refused.unwrap_err().found.contains("None"));
        assert!(crc.confirm(None, Some("AAAAAA==")).is_err());
    }

    #[tokio::test]
    async fn large_bodies_give_the_same_checksum_off_the_runtime() {
        let body = bytes::Bytes::from(vec![7u8; INLINE_LIMIT + 1]);
        for mode in [S3Verify::Md5, S3Verify::Crc32c] {
            assert_eq!(
                BodyChecksum::of_body(mode, &body).await,
                BodyChecksum::of(mode, &body)
            );
        }
    }
}
