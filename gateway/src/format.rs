//! The self-describing S3 layout: key scheme and the per-object manifest.
//!
//! Pure functions and types, no I/O. The layout is specified for humans in `docs/s3-format.md`;
//! this module is its executable form, and the two must change together.
//!
//! # Why this layout
//!
//! * **Self-describing.** With NATS gone, listing `P objects/` finds every bucket, listing
//!   `P objects/<bucket>/` finds every object, and each manifest carries the name, size, digest,
//!   NATS metadata and the blob key: S3 alone is enough to list and restore everything.
//! * **Content-addressed blobs.** A blob's key is derived from the SHA-256 of the object's
//!   uncompressed content only, so identical content is stored once whatever its name or bucket,
//!   and re-uploading an object never overwrites a good blob with different bytes. Wasabi bills a
//!   90-day minimum per stored object, so avoiding overwrites matters.
//! * **Reversible, safe keys.** Object names may contain spaces, `/` or any unicode; the manifest
//!   key carries the name as unpadded base64url, which is reversible and never contains `/`.
//! * **Commit point.** The blob is written (and verified) first, the manifest last; an object
//!   exists on S3 exactly when its manifest does.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cim_tiering::digest::Sha256Digest;
use serde::{Deserialize, Serialize};

use crate::Error;

/// The manifest format version this crate writes. It reads every version from 1 up to this one.
///
/// 2 added `source_seq` (the order of versions) and the per-version history under `versions/`;
/// 3 added tombstones (`deleted`); 4 added `verified` (how the blob was verified, with the
/// checksums the service checked) and blobs carry zstd's frame checksum.
pub const FORMAT_VERSION: u32 = 4;

/// The manifest formats this crate reads: every format from 1 up to the one it writes, so a
/// reader of format N also reads N−1 (bumping [`FORMAT_VERSION`] is the only change needed).
/// A manifest outside this range was written by a newer version (or is not ours): it is
/// [`Error::UnsupportedFormat`], skipped and reported, never trusted or overwritten.
pub const READABLE_FORMATS: std::ops::RangeInclusive<u32> = 1..=FORMAT_VERSION;

/// Key of the content-addressed blob holding `digest`'s content, zstd-compressed.
///
/// `prefix` is the tier prefix: `""` or ending with `/`.
/// Layout: `P blobs/sha256/<hex[0..2]>/<hex>.zst`; the two-digit fan-out keeps listings of one
/// directory level small on stores that care.
pub fn blob_key(prefix: &str, digest: &Sha256Digest) -> String {
    let hex = digest.to_hex();
    format!("{prefix}blobs/sha256/{}/{hex}.zst", &hex[..2])
}

/// Key of the manifest of object `name` in NATS bucket `bucket`.
///
/// Layout: `P objects/<bucket>/<base64url_nopad(name)>.json`.
pub fn manifest_key(prefix: &str, bucket: &str, name: &str) -> String {
    format!(
        "{prefix}objects/{bucket}/{}.json",
        URL_SAFE_NO_PAD.encode(name.as_bytes())
    )
}

/// Key of the history manifest of one version of `name`: the version whose meta message has
/// sequence `seq` on the tier it was uploaded from.
///
/// Layout: `P versions/<bucket>/<base64url_nopad(name)>/<seq, 20 digits>.json`. Written before
/// the version may become current and never overwritten with other content, so a listing of
/// one object's history sorts by version.
pub fn version_manifest_key(prefix: &str, bucket: &str, name: &str, seq: u64) -> String {
    format!(
        "{prefix}versions/{bucket}/{}/{seq:020}.json",
        URL_SAFE_NO_PAD.encode(name.as_bytes())
    )
}

/// The version sequence in `key` if it is the [`version_manifest_key`] of `bucket`/`name`.
pub fn version_seq_of_key(prefix: &str, bucket: &str, name: &str, key: &str) -> Option<u64> {
    let object_prefix = format!(
        "{prefix}versions/{bucket}/{}/",
        URL_SAFE_NO_PAD.encode(name.as_bytes())
    );
    let digits = key.strip_prefix(&object_prefix)?.strip_suffix(".json")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Listing prefix of every history manifest of the tier.
pub fn versions_prefix(prefix: &str) -> String {
    format!("{prefix}versions/")
}

/// Recovers `(bucket, name, seq)` from a [`version_manifest_key`], or `None` if `key` is not one.
pub fn decode_version_key(prefix: &str, key: &str) -> Option<(String, String, u64)> {
    let rest = key.strip_prefix(prefix)?.strip_prefix("versions/")?;
    let mut parts = rest.split('/');
    let (bucket, encoded) = (parts.next()?, parts.next()?);
    if bucket.is_empty() {
        return None;
    }
    let name = String::from_utf8(URL_SAFE_NO_PAD.decode(encoded).ok()?).ok()?;
    // Checks the rest: exactly one more part, 20 digits and `.json`.
    let seq = version_seq_of_key(prefix, bucket, &name, key)?;
    Some((bucket.to_string(), name, seq))
}

/// Listing prefix of every blob of the tier.
pub fn blobs_prefix(prefix: &str) -> String {
    format!("{prefix}blobs/sha256/")
}

/// The digest whose blob is at `key`, or `None` if `key` is not a [`blob_key`].
pub fn digest_of_blob_key(prefix: &str, key: &str) -> Option<Sha256Digest> {
    let hex = key
        .strip_prefix(&blobs_prefix(prefix))?
        .split_once('/')?
        .1
        .strip_suffix(".zst")?;
    let digest = Sha256Digest::from_hex(hex).ok()?;
    (blob_key(prefix, &digest) == key).then_some(digest)
}

/// Listing prefix for the manifests of one bucket (`Some`), or of all buckets (`None`).
///
/// List `manifest_prefix(P, None)` with delimiter `/` to get one common prefix per bucket; list
/// `manifest_prefix(P, Some(b))` to get every manifest of bucket `b`.
pub fn manifest_prefix(prefix: &str, bucket: Option<&str>) -> String {
    match bucket {
        Some(bucket) => format!("{prefix}objects/{bucket}/"),
        None => format!("{prefix}objects/"),
    }
}

/// The longest key prefix every [`manifest_key`] of `bucket` whose name starts with
/// `name_prefix` shares: base64 maps each whole 3-byte group of the name to the same 4
/// characters whatever follows, so the encoding of `name_prefix`'s whole groups is a prefix of
/// every such key (the rest of `name_prefix` must be checked on the decoded names).
pub fn manifest_key_prefix(prefix: &str, bucket: &str, name_prefix: &str) -> String {
    let whole = name_prefix.len() / 3 * 3;
    format!(
        "{}{}",
        manifest_prefix(prefix, Some(bucket)),
        URL_SAFE_NO_PAD.encode(&name_prefix.as_bytes()[..whole])
    )
}

/// Recovers `(bucket, name)` from a manifest key, or `None` if `key` is not one.
///
/// The inverse of [`manifest_key`]: used when listing, so stray keys (a README someone dropped in,
/// a half-typed `aws s3 cp`) are skipped rather than mistaken for objects.
pub fn decode_manifest_key(prefix: &str, key: &str) -> Option<(String, String)> {
    let rest = key.strip_prefix(prefix)?.strip_prefix("objects/")?;
    let (bucket, file) = rest.split_once('/')?;
    if bucket.is_empty() || file.contains('/') {
        return None;
    }
    let encoded = file.strip_suffix(".json")?;
    let bytes = URL_SAFE_NO_PAD.decode(encoded).ok()?;
    let name = String::from_utf8(bytes).ok()?;
    Some((bucket.to_string(), name))
}

/// The current time in RFC 3339 (UTC), for [`Manifest::uploaded_at`].
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// How a blob's bytes are encoded on S3.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Compression {
    /// One zstd frame of the whole content (`zstd -d` restores it).
    Zstd,
}

impl Compression {
    /// The name used in manifests and in the blob's `cim-compression` metadata.
    pub fn as_str(&self) -> &'static str {
        match self {
            Compression::Zstd => "zstd",
        }
    }
}

/// Everything needed to list and restore one object from S3 alone.
///
/// Stored as pretty JSON at [`manifest_key`]. Writing it is the commit point of an upload: it is
/// only written after the blob it names has been verified, so a manifest's existence means the
/// object is safely on S3.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Manifest {
    /// Format version it was written in: [`FORMAT_VERSION`] when written by this crate, any of
    /// [`READABLE_FORMATS`] when read.
    pub format: u32,
    /// NATS object-store bucket.
    pub bucket: String,
    /// Object name, verbatim.
    pub name: String,
    /// Size of the uncompressed content in bytes.
    pub size: u64,
    /// SHA-256 of the uncompressed content in NATS form (`SHA-256=<base64url>`), exactly as
    /// recorded at ingest. The reference every copy is checked against.
    pub digest: Sha256Digest,
    /// The same digest as lowercase hex (what `sha256sum` prints).
    pub sha256_hex: String,
    /// Encoding of the blob.
    pub compression: Compression,
    /// Size of the blob on S3 (compressed bytes).
    pub stored_size: u64,
    /// Full S3 key of the blob, i.e. [`blob_key`] of the tier prefix and [`Manifest::digest`].
    pub blob_key: String,
    /// The NATS object description, if any.
    pub description: Option<String>,
    /// The NATS object metadata (user key/values).
    #[serde(default)]
    pub metadata: HashMap<String, String>,
    /// The NATS object headers, if any.
    #[serde(default)]
    pub headers: Option<async_nats::HeaderMap>,
    /// NATS modification time (RFC 3339), if known.
    #[serde(default)]
    pub modified: Option<String>,
    /// When the manifest was written (RFC 3339).
    pub uploaded_at: String,
    /// Name of the tier the content was read from when uploading.
    pub source_tier: String,
    /// NATS object NUID at upload time (identifies the exact NATS version that was copied).
    pub source_nuid: String,
    /// Stream sequence of the version's meta message on `source_tier`: versions of an object
    /// are ordered by it (a higher one is newer), never by clocks. 0 in format 1.
    #[serde(default)]
    pub source_seq: u64,
    /// Set on a tombstone: the object was deleted, `source_seq` is the delete's sequence, and
    /// the content fields describe the last version this tier held (`restore
    /// --include-deleted` restores it while its blob is kept, see `docs/s3-format.md`). A
    /// tombstone keeps no blob alive. Absent before format 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Deletion>,
    /// How the blob was verified when this version was uploaded. Absent before format 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified: Option<Verification>,
}

/// How a version's blob was proven stored before the version was committed (format 4).
///
/// What each mode proves is in `docs/architecture.md` ("Verification").
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    /// `"md5"` or `"crc32c"`: the service checked a checksum of every request body on receipt
    /// and confirmed it; `"read-back"`: the blob was read back whole and checked against
    /// `digest`.
    pub mode: cim_policies::S3Verify,
    /// For `md5` and `crc32c`: the checksum of each request body, base64 as sent in its header
    /// (`Content-MD5`, `x-amz-checksum-crc32c`), in order: one for a single PutObject, one per
    /// part of a multipart upload. Empty for `read-back`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checksums: Vec<String>,
    /// For a multipart upload: the size of every part but the last (compressed bytes), so the
    /// blob can be cut again to recompute the checksums. Absent for a single PutObject.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_size: Option<u64>,
}

/// What a tombstone records about the delete.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Deletion {
    /// When the tombstone was written (RFC 3339).
    pub at: String,
    /// Who deleted: `"user delete on <tier>"` or `"cim-gateway delete"`.
    pub by: String,
}

impl Manifest {
    /// Whether this manifest says what `info` says of the object beyond its content: the
    /// description, metadata and headers a user can update without writing the content again
    /// (an object-store `update_metadata` keeps the nuid and the chunks).
    pub fn describes(&self, info: &async_nats::jetstream::object_store::ObjectInfo) -> bool {
        self.description == info.description
            && self.metadata == info.metadata
            && self.headers == info.headers
    }

    /// True for a tombstone (the object was deleted).
    pub fn is_deleted(&self) -> bool {
        self.deleted.is_some()
    }

    /// Pretty JSON, as stored on S3.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain data with string map keys cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parses and checks a manifest read from `key`.
    ///
    /// The `format` is read first, alone: a format outside [`READABLE_FORMATS`] is
    /// [`Error::UnsupportedFormat`] whatever its other fields look like (a newer format may
    /// change any of them). Beyond the JSON shape, rejects a manifest that lies: a `sha256_hex`
    /// that disagrees with `digest`, or a `blob_key` that is not the blob key of `digest`. A
    /// restore trusting such a manifest would fetch or verify against the wrong content.
    pub fn from_json(key: &str, bytes: &[u8]) -> Result<Manifest, Error> {
        /// Just the format: the one field every format keeps.
        #[derive(Deserialize)]
        struct Format {
            format: u64,
        }
        let invalid = |message: String| Error::Manifest {
            key: key.to_string(),
            source: <serde_json::Error as serde::de::Error>::custom(message),
        };
        let parse_error = |source| Error::Manifest {
            key: key.to_string(),
            source,
        };
        let Format { format } = serde_json::from_slice(bytes).map_err(parse_error)?;
        if !u32::try_from(format).is_ok_and(|f| READABLE_FORMATS.contains(&f)) {
            return Err(Error::UnsupportedFormat {
                key: key.to_string(),
                format,
            });
        }
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(parse_error)?;
        let hex = manifest.digest.to_hex();
        if manifest.sha256_hex != hex {
            return Err(invalid(format!(
                "sha256_hex {} does not match digest {} ({hex})",
                manifest.sha256_hex, manifest.digest
            )));
        }
        let expected_tail = blob_key("", &manifest.digest);
        let blob_prefix = manifest.blob_key.strip_suffix(&expected_tail);
        if !blob_prefix.is_some_and(|p| p.is_empty() || p.ends_with('/')) {
            return Err(invalid(format!(
                "blob_key {:?} is not the blob of digest {}",
                manifest.blob_key, manifest.digest
            )));
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> Manifest {
        let digest = Sha256Digest::of(b"hello");
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "text/plain");
        Manifest {
            format: FORMAT_VERSION,
            bucket: "media".into(),
            name: "dir/ä b.txt".into(),
            size: 5,
            digest,
            sha256_hex: digest.to_hex(),
            compression: Compression::Zstd,
            stored_size: 18,
            blob_key: blob_key("t/", &digest),
            description: Some("greeting".into()),
            metadata: HashMap::from([("k".to_string(), "v".to_string())]),
            headers: Some(headers),
            modified: Some("2025-01-02T03:04:05Z".into()),
            uploaded_at: "2025-01-02T03:04:06Z".into(),
            source_tier: "hub".into(),
            source_nuid: "NUID123".into(),
            source_seq: 7,
            deleted: None,
            verified: None,
        }
    }

    #[test]
    fn verifications_round_trip_and_older_formats_have_none() {
        let mut m = sample();
        m.verified = Some(Verification {
            mode: cim_policies::S3Verify::Crc32c,
            checksums: vec!["yZRlqg==".into(), "AAAAAA==".into()],
            part_size: Some(16 << 20),
        });
        let json = String::from_utf8(m.to_json()).unwrap();
        assert!(json.contains(r#""mode": "crc32c""#), "{json}");
        assert_eq!(Manifest::from_json("k", json.as_bytes()).unwrap(), m);
        m.verified = Some(Verification {
            mode: cim_policies::S3Verify::ReadBack,
            checksums: vec![],
            part_size: None,
        });
        let json = String::from_utf8(m.to_json()).unwrap();
        assert!(json.contains(r#""mode": "read-back""#), "{json}");
        assert!(!json.contains("checksums"), "{json}");
        assert_eq!(Manifest::from_json("k", json.as_bytes()).unwrap(), m);
        // A format-3 manifest knows no `verified`.
        let mut v3 = serde_json::to_value(sample()).unwrap();
        v3["format"] = 3.into();
        let read = Manifest::from_json("k", v3.to_string().as_bytes()).unwrap();
        assert_eq!(read.verified, None);
    }

    #[test]
    fn tombstones_round_trip_and_older_formats_read_as_live() {
        let mut tombstone = sample();
        tombstone.deleted = Some(Deletion {
            at: "2026-11-26T10:00:00Z".into(),
            by: "user delete on hub".into(),
        });
        let read = Manifest::from_json("k", &tombstone.to_json()).unwrap();
        assert!(read.is_deleted());
        assert_eq!(read, tombstone);
        // A format-2 manifest knows no `deleted`: it is a live object.
        let mut v2 = serde_json::to_value(sample()).unwrap();
        v2["format"] = 2.into();
        v2.as_object_mut().unwrap().remove("deleted");
        let read = Manifest::from_json("k", v2.to_string().as_bytes()).unwrap();
        assert!(!read.is_deleted());
    }

    #[test]
    fn version_keys_sort_by_version_and_round_trip() {
        let key = version_manifest_key("t/", "b", "dir/x y", 42);
        assert_eq!(key, "t/versions/b/ZGlyL3ggeQ/00000000000000000042.json");
        assert_eq!(version_seq_of_key("t/", "b", "dir/x y", &key), Some(42));
        assert!(version_manifest_key("t/", "b", "n", 9) < version_manifest_key("t/", "b", "n", 10));
        assert_eq!(version_seq_of_key("t/", "b", "other", &key), None);
        assert_eq!(
            decode_version_key("t/", &key),
            Some(("b".to_string(), "dir/x y".to_string(), 42))
        );
        assert_eq!(decode_version_key("t/", "t/versions/b/x.json"), None);
        let d = Sha256Digest::of(b"x");
        assert_eq!(digest_of_blob_key("t/", &blob_key("t/", &d)), Some(d));
        assert_eq!(digest_of_blob_key("t/", "t/blobs/sha256/00/zz.zst"), None);
        assert_eq!(
            version_seq_of_key("t/", "b", "n", &manifest_key("t/", "b", "n")),
            None
        );
    }

    #[test]
    fn blob_key_is_content_addressed() {
        let d = Sha256Digest::of(b"hello");
        assert_eq!(
            blob_key("p/", &d),
            "p/blobs/sha256/2c/2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824.zst"
        );
        assert_eq!(blob_key("", &d), blob_key("p/", &d)["p/".len()..]);
    }

    #[test]
    fn manifest_keys_round_trip_awkward_names() {
        for name in [
            "a",
            "with space",
            "dir/sub/file",
            "ünï/cödé 🚀",
            "..",
            "",
            "x.json",
        ] {
            for prefix in ["", "t/", "deep/er/"] {
                let key = manifest_key(prefix, "bkt", name);
                assert!(key.starts_with(&manifest_prefix(prefix, Some("bkt"))));
                assert!(key.starts_with(&manifest_prefix(prefix, None)));
                let rest = &key[manifest_prefix(prefix, Some("bkt")).len()..];
                assert!(!rest.contains('/'), "{key}");
                assert_eq!(
                    decode_manifest_key(prefix, &key),
                    Some(("bkt".to_string(), name.to_string()))
                );
            }
        }
        assert_eq!(manifest_key("t/", "b", "hello"), "t/objects/b/aGVsbG8.json");
    }

    #[test]
    fn a_name_prefix_narrows_the_manifest_listing_without_losing_a_name() {
        let names = [
            "dir/a",
            "dir/abc",
            "dir/",
            "di",
            "dir/ünï 🚀",
            "other/dir/a",
            "",
        ];
        for name_prefix in ["", "d", "di", "dir", "dir/", "dir/a", "dir/ü", "dir/ünï"] {
            let key_prefix = manifest_key_prefix("t/", "b", name_prefix);
            assert!(key_prefix.starts_with(&manifest_prefix("t/", Some("b"))));
            for name in names {
                if name.starts_with(name_prefix) {
                    assert!(
                        manifest_key("t/", "b", name).starts_with(&key_prefix),
                        "{name:?} under {name_prefix:?} is not listed by {key_prefix:?}"
                    );
                }
            }
        }
        assert_eq!(manifest_key_prefix("t/", "b", "hello"), "t/objects/b/aGVs");
    }

    #[test]
    fn decode_rejects_stray_keys() {
        for key in [
            "t/objects/b/README",
            "t/objects/b/!!.json",
            "t/objects/b/sub/aGVsbG8.json",
            "t/objects//aGVsbG8.json",
            "t/blobs/sha256/2c/x.zst",
            "objects/b/aGVsbG8.json",
            "t/objects/b/_w.json", // decodes to invalid utf-8
        ] {
            assert_eq!(decode_manifest_key("t/", key), None, "{key}");
        }
    }

    #[test]
    fn manifest_json_round_trips() {
        let m = sample();
        let json = m.to_json();
        let text = String::from_utf8(json.clone()).unwrap();
        assert!(
            text.contains("\"digest\": \"SHA-256=LPJNul-wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=\"")
        );
        assert!(text.contains("\"compression\": \"zstd\""));
        assert!(text.contains("\"Content-Type\""));
        assert_eq!(Manifest::from_json("k", &json).unwrap(), m);
    }

    #[test]
    fn lying_manifests_are_rejected_naming_the_key() {
        let check = |m: Manifest, needle: &str| {
            let err = Manifest::from_json("t/objects/b/x.json", &m.to_json()).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, Error::Manifest { .. }));
            assert!(msg.contains("t/objects/b/x.json"), "{msg}");
            assert!(msg.contains(needle), "{msg}");
        };
        let mut m = sample();
        m.sha256_hex = Sha256Digest::of(b"other").to_hex();
        check(m, "sha256_hex");
        let mut m = sample();
        m.blob_key = blob_key("t/", &Sha256Digest::of(b"other"));
        check(m, "blob_key");
        let mut m = sample();
        m.blob_key = format!("t/x{}", blob_key("", &m.digest));
        check(m, "blob_key");
        let err = Manifest::from_json("k", b"{not json").unwrap_err();
        assert!(matches!(err, Error::Manifest { .. }));
    }

    /// The example of format 1 in `docs/s3-format.md`, verbatim: every later reader must read it.
    const FORMAT_1_EXAMPLE: &str = r#"{
  "format": 1,
  "bucket": "media",
  "name": "hello",
  "size": 5,
  "digest": "SHA-256=LPJNul-wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ=",
  "sha256_hex": "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
  "compression": "zstd",
  "stored_size": 18,
  "blob_key": "cim/blobs/sha256/2c/2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824.zst",
  "description": "a greeting",
  "metadata": { "owner": "alice" },
  "headers": { "Content-Type": ["text/plain"] },
  "modified": "2025-01-02T03:04:05Z",
  "uploaded_at": "2025-01-02T03:10:00Z",
  "source_tier": "hub",
  "source_nuid": "f3N2yRRtAhqU4AhfXGEKR8"
}"#;

    #[test]
    fn every_format_up_to_the_current_one_is_read() {
        assert_eq!(*READABLE_FORMATS.start(), 1);
        assert_eq!(*READABLE_FORMATS.end(), FORMAT_VERSION);
        let m = Manifest::from_json("k", FORMAT_1_EXAMPLE.as_bytes()).unwrap();
        assert_eq!((m.format, m.name.as_str(), m.size), (1, "hello", 5));
        assert_eq!(m.digest, Sha256Digest::of(b"hello"));
        for format in READABLE_FORMATS {
            let mut m = sample();
            m.format = format;
            assert_eq!(
                Manifest::from_json("k", &m.to_json()).unwrap().format,
                format
            );
        }
    }

    #[test]
    fn unknown_formats_are_their_own_error_whatever_the_other_fields() {
        let newer = u64::from(FORMAT_VERSION) + 1;
        for (format, json) in [
            (
                newer,
                format!(r#"{{"format": {newer}, "digest": {{"sha-512": "x"}}}}"#),
            ),
            (99, r#"{"format": 99}"#.to_string()),
            (
                0,
                FORMAT_1_EXAMPLE.replace("\"format\": 1", "\"format\": 0"),
            ),
            (1 << 40, format!(r#"{{"format": {}}}"#, 1u64 << 40)),
        ] {
            let err = Manifest::from_json("t/objects/b/x.json", json.as_bytes()).unwrap_err();
            assert!(
                matches!(&err, Error::UnsupportedFormat { key, format: f } if key == "t/objects/b/x.json" && *f == format),
                "{err:?}"
            );
            assert!(!err.is_transient());
            let msg = err.to_string();
            assert!(
                msg.contains("t/objects/b/x.json") && msg.contains(&format!("format {format}")),
                "{msg}"
            );
        }
        // No format at all is not a future format: just invalid.
        let err = Manifest::from_json("k", br#"{"bucket": "b"}"#).unwrap_err();
        assert!(matches!(err, Error::Manifest { .. }), "{err:?}");
    }

    #[test]
    fn optional_fields_may_be_absent() {
        let m = sample();
        let mut v: serde_json::Value = serde_json::from_slice(&m.to_json()).unwrap();
        let obj = v.as_object_mut().unwrap();
        obj.remove("headers");
        obj.remove("metadata");
        obj.remove("modified");
        obj.insert("description".into(), serde_json::Value::Null);
        let parsed = Manifest::from_json("k", &serde_json::to_vec(&v).unwrap()).unwrap();
        assert_eq!(parsed.headers, None);
        assert!(parsed.metadata.is_empty());
    }
}
