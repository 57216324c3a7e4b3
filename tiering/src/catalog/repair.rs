//! What `cim-gateway reconcile` writes to the catalog: the same compare-and-set as the roles',
//! with the repair's own rules (see `docs/architecture.md`, "Catalog repair"). A child module
//! of the catalog, so that it reuses its compare-and-set loop and its version rules.

use super::{entry_for, Catalog, Entry, Location, Version};
use crate::digest::Sha256Digest;
use crate::error::Error;

/// The entry once a copy found by a repair (`cim-gateway reconcile`) on `tier` is recorded, like
/// [`Catalog::record_copy`]'s but for a repair: a damaged mark stays (only a copy a role verified
/// clears it), the copy on the tier the mark names is never recorded again, and a copy of the
/// same version (`seq`) with other content than the catalog records is refused (a disagreement
/// to report, not to decide). `None`: nothing to write, for these reasons or because a newer
/// version is recorded. Pure, so a dry run shows what the write would do.
pub fn found_copy(
    current: Option<Entry>,
    bucket: &str,
    name: &str,
    version: &Version,
    tier: &str,
    locator: Option<String>,
) -> Option<Entry> {
    if let Some(e) = &current {
        let same_version = e.seq == version.seq && e.deleted.is_none();
        if same_version && e.digest != version.digest {
            return None;
        }
        if e.is_damaged(&version.digest) && e.damaged.as_ref().is_some_and(|d| d.tier == tier) {
            return None;
        }
    }
    let mut entry = entry_for(current, bucket, name, version)?;
    entry
        .locations
        .insert(tier.to_string(), Location::verified(version, locator));
    Some(entry)
}

impl Catalog {
    /// Records a copy that `cim-gateway reconcile` found on `tier` and checked: the
    /// compare-and-set of [`found_copy`]; `None` when it records nothing.
    pub async fn record_found_copy(
        &self,
        bucket: &str,
        name: &str,
        version: &Version,
        tier: &str,
        locator: Option<String>,
    ) -> Result<Option<Entry>, Error> {
        self.modify(bucket, name, |current| {
            found_copy(current, bucket, name, version, tier, locator.clone())
        })
        .await
    }

    /// Removes `tier`'s location of the version with `digest`, only if it is still the one
    /// verified at `verified_at` (what `cim-gateway reconcile` found the tier not to hold): a
    /// copy a role recorded again meanwhile stays. True when removed.
    pub async fn record_not_held(
        &self,
        bucket: &str,
        name: &str,
        digest: &Sha256Digest,
        tier: &str,
        verified_at: &str,
    ) -> Result<bool, Error> {
        let written = self
            .modify(bucket, name, |current| {
                let mut entry = current.filter(|e| &e.digest == digest && e.deleted.is_none())?;
                let location = entry.locations.get(tier)?;
                if location.verified_at != verified_at {
                    return None;
                }
                entry.locations.remove(tier);
                Some(entry)
            })
            .await?;
        Ok(written.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{now, Damage};
    use super::*;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn a_found_copy_never_decides_a_disagreement_nor_clears_damage() {
        let v = |data: &[u8], seq| Version {
            size: data.len() as u64,
            digest: Sha256Digest::of(data),
            seq,
        };
        let mut e = entry_for(None, "b", "n", &v(b"one", 10)).unwrap();
        let found = |e: &Entry, data: &[u8], seq, tier| {
            found_copy(Some(e.clone()), "b", "n", &v(data, seq), tier, None)
        };
        // Same sequence, other content: refused (entry_for would start afresh); older refused.
        assert!(found(&e, b"two", 10, "s3").is_none() && found(&e, b"one", 9, "s3").is_none());
        assert!(entry_for(Some(e.clone()), "b", "n", &v(b"two", 10)).is_some());
        assert!(found(&e, b"one", 10, "s3").is_some());
        e.damaged = Some(Damage {
            tier: "hub".into(),
            what: "sha-256".into(),
            found_at: now(),
        });
        // The copy that failed is not recorded again; another is, and the mark stays.
        assert!(found(&e, b"one", 10, "hub").is_none());
        assert!(found(&e, b"one", 10, "s3").unwrap().damaged.is_some());
    }
}
