//! The copies the catalog records on one tier, for an `expire` from an S3 tier: the manager
//! finds what is due there in the catalog index it already follows, never by listing S3.

use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{CatalogIndex, Entry};
use crate::digest::Sha256Digest;

/// A verified copy of an object's current version on one tier, as the catalog index knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldCopy {
    /// Object-store bucket.
    pub bucket: String,
    /// Object name.
    pub name: String,
    /// The catalog's sequence of the version.
    pub seq: u64,
    /// Its ingest digest.
    pub digest: Sha256Digest,
    /// Its size.
    pub size: u64,
    /// Time since the catalog last recorded a verified copy of this version (the newest
    /// `verified_at` of its locations; normally the upload to the S3 tier). The hub's stored
    /// time is gone once the object moved, and a manifest's `uploaded_at` would cost a read
    /// per object; this is never earlier than the copy's upload, so a retention counted from
    /// it (Wasabi's 90-day minimum) is never cut short.
    pub age: Duration,
}

/// The newest `verified_at` of `entry`'s locations, in Unix seconds; `i64::MAX` (age zero:
/// never due) when none parses.
pub(super) fn newest_verification(entry: &Entry) -> i64 {
    entry
        .locations
        .values()
        .filter_map(|l| OffsetDateTime::parse(&l.verified_at, &Rfc3339).ok())
        .map(|t| t.unix_timestamp())
        .max()
        .unwrap_or(i64::MAX)
}

impl Entry {
    /// The age at `now` an `expire` on an S3 tier decides on (see [`HeldCopy::age`]).
    pub fn verified_age(&self, now: OffsetDateTime) -> Duration {
        let at = newest_verification(self);
        Duration::from_secs(now.unix_timestamp().saturating_sub(at).max(0) as u64)
    }
}

impl CatalogIndex {
    /// The current versions (not deleted, not damaged) of which `tier` holds a verified copy,
    /// in the buckets `bucket` accepts, with their age at `now`.
    pub fn copies_on(
        &self,
        tier: &str,
        now: OffsetDateTime,
        bucket: impl Fn(&str) -> bool,
    ) -> Vec<HeldCopy> {
        let bit = self.bits(tier);
        if bit == 0 {
            return Vec::new();
        }
        let now = now.unix_timestamp();
        let mut copies = Vec::new();
        for (key, s) in &self.entries {
            if s.deleted || s.damaged || s.locations & bit == 0 {
                continue;
            }
            // `o.<bucket>.<base64url(name)>`: bucket names hold no dots.
            let mut parts = key.splitn(3, '.').skip(1);
            let (Some(b), Some(encoded)) = (parts.next(), parts.next()) else {
                continue;
            };
            if !bucket(b) {
                continue;
            }
            let Some(name) = URL_SAFE_NO_PAD
                .decode(encoded)
                .ok()
                .and_then(|n| String::from_utf8(n).ok())
            else {
                continue;
            };
            copies.push(HeldCopy {
                bucket: b.to_string(),
                name,
                seq: s.seq,
                digest: s.digest,
                size: s.size,
                age: Duration::from_secs(now.saturating_sub(s.verified_at).max(0) as u64),
            });
        }
        copies.sort_by(|a, b| (&a.bucket, &a.name).cmp(&(&b.bucket, &b.name)));
        copies
    }

    /// Whether the catalog records a delete (a user's, or an expire's tombstone) newer than the
    /// version with sequence `seq`: that version is never uploaded again.
    pub fn deleted_after(&self, bucket: &str, name: &str, seq: u64) -> bool {
        self.summary(bucket, name)
            .is_some_and(|s| s.deleted && s.seq > seq)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::catalog::Location;

    #[test]
    fn age_is_from_the_newest_verification_and_unknown_is_never_due() {
        let mut entry: Entry = serde_json::from_value(serde_json::json!({
            "bucket": "b", "name": "n", "size": 1, "seq": 3,
            "digest": Sha256Digest::of(b"x"), "locations": {}, "updated_at": ""
        }))
        .unwrap();
        assert_eq!(newest_verification(&entry), i64::MAX);
        for (tier, at) in [
            ("hub", "2026-01-01T00:00:00Z"),
            ("s3", "2026-02-01T00:00:00Z"),
        ] {
            entry.locations.insert(
                tier.into(),
                Location {
                    verified_at: at.into(),
                    locator: None,
                    seq: None,
                },
            );
        }
        let feb = OffsetDateTime::parse("2026-02-01T00:00:00Z", &Rfc3339).unwrap();
        assert_eq!(newest_verification(&entry), feb.unix_timestamp());
    }
}
