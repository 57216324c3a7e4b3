//! The SHA-256 digest taken at ingest, in the forms each tier speaks.
//!
//! NATS object stores record `SHA-256=<base64url, padded>` in the object's meta message; S3 manifests
//! carry the same digest in that form and as lowercase hex. Every tier and every restore compares
//! against this one value (invariant 2), so it is a newtype rather than a string.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE;
use base64::Engine;
use sha2::{Digest as _, Sha256};

/// A SHA-256 digest of an object's whole, uncompressed content.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest([u8; 32]);

/// A digest string that is not of the form `SHA-256=<base64url>` or 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a SHA-256 digest ({reason})")]
pub struct ParseDigestError {
    /// The offending text.
    pub value: String,
    /// What was wrong with it.
    pub reason: &'static str,
}

impl Sha256Digest {
    /// Wraps raw digest bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Digest of a byte slice (tests and small payloads; large content goes through [`Hasher`]).
    pub fn of(data: &[u8]) -> Self {
        Self(Sha256::digest(data).into())
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses the NATS object-store form `SHA-256=<base64url>` (padding optional).
    pub fn from_nats(value: &str) -> Result<Self, ParseDigestError> {
        let err = |reason| ParseDigestError {
            value: value.to_string(),
            reason,
        };
        let encoded = value
            .strip_prefix("SHA-256=")
            .ok_or_else(|| err("missing SHA-256= prefix"))?;
        let trimmed = encoded.trim_end_matches('=');
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(trimmed)
            .map_err(|_| err("not base64url"))?;
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| err("not 32 bytes"))?;
        Ok(Self(bytes))
    }

    /// The NATS object-store form, `SHA-256=<base64url, padded>`, exactly as async-nats writes it.
    pub fn to_nats(&self) -> String {
        format!("SHA-256={}", URL_SAFE.encode(self.0))
    }

    /// Parses 64 lowercase or uppercase hex digits.
    pub fn from_hex(value: &str) -> Result<Self, ParseDigestError> {
        let err = |reason| ParseDigestError {
            value: value.to_string(),
            reason,
        };
        if value.len() != 64 {
            return Err(err("not 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&value[2 * i..2 * i + 2], 16).map_err(|_| err("not hex"))?;
        }
        Ok(Self(out))
    }

    /// Lowercase hex, used in S3 keys and manifests.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256Digest({})", self.to_hex())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_nats())
    }
}

impl serde::Serialize for Sha256Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_nats())
    }
}

impl<'de> serde::Deserialize<'de> for Sha256Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::from_nats(&text).map_err(serde::de::Error::custom)
    }
}

/// Incremental SHA-256 over a stream, counting bytes as it goes.
#[derive(Clone, Default)]
pub struct Hasher {
    inner: Sha256,
    len: u64,
}

impl Hasher {
    /// A fresh hasher.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds more content.
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.len += data.len() as u64;
    }

    /// Bytes fed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True when nothing has been fed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The digest and the byte count.
    pub fn finish(self) -> (Sha256Digest, u64) {
        (Sha256Digest(self.inner.finalize().into()), self.len)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn nats_form_round_trips_and_matches_async_nats() {
        let d = Sha256Digest::of(b"hello");
        // async-nats writes URL_SAFE (padded) base64 of the raw digest.
        assert_eq!(
            d.to_nats(),
            "SHA-256=LPJNul-wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="
        );
        assert_eq!(Sha256Digest::from_nats(&d.to_nats()).unwrap(), d);
        assert_eq!(
            Sha256Digest::from_nats("SHA-256=LPJNul-wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ").unwrap(),
            d
        );
        assert_eq!(Sha256Digest::from_hex(&d.to_hex()).unwrap(), d);
    }

    #[test]
    fn rejects_malformed_digests() {
        assert!(Sha256Digest::from_nats("MD5=abc").is_err());
        assert!(Sha256Digest::from_nats("SHA-256=!!!").is_err());
        assert!(Sha256Digest::from_nats("SHA-256=AAAA").is_err());
        assert!(Sha256Digest::from_hex("zz").is_err());
    }

    #[test]
    fn hasher_matches_one_shot() {
        let mut h = Hasher::new();
        h.update(b"hel");
        h.update(b"lo");
        assert_eq!(h.finish(), (Sha256Digest::of(b"hello"), 5));
    }
}
