//! Temporary copies (`cim-gateway restore --for`): a restored version that no policy acts on
//! and that the storage manager has removed from its tier once its time is up.
//!
//! # Where "temporary" is recorded
//!
//! In the version's own meta, as the object-store header [`HEADER`] (`Cim-Temporary-For: 7d`):
//! a duration, counted from when the tier stored that meta — the tier's clock, from which
//! every policy age is measured too, never the restoring host's. So the mark
//!
//! * survives restarts and is seen from any host (it is in the stream, like the object);
//! * belongs to exactly one version: a user writing the object again writes a new meta without
//!   it, and the new version is an ordinary object at once;
//! * travels with stream sourcing: a copy restored into a leaf and sourced to the hub arrives
//!   there with the same meta, so the hub recognises it as the same temporary version (same
//!   nuid, same digest) and uploads nothing; it expires on the hub as it does on the leaf.
//!
//! The catalog records the restored copy as any verified copy (its tier in `locations`); the
//! expiry removes it from there as an eviction.
//!
//! # Expiry
//!
//! Each pass the manager looks at every JetStream tier ([`crate::manager`]): a temporary copy
//! whose time is up, whose version the catalog records as verified on an S3 tier, is handed to
//! the role that evicts from that tier ([`WorkItem::DropTemporary`] for a cluster tier, to
//! `cim-gateway upload`; [`WorkItem::LeafDropTemporary`] for a leaf, to `cim-storage mirror`),
//! which checks it all again and evicts it ([`remove_expired`]): a purge, never a delete marker,
//! so nothing reaches S3 and the S3 copy is never touched.
//!
//! [`WorkItem::DropTemporary`]: crate::work::WorkItem::DropTemporary
//! [`WorkItem::LeafDropTemporary`]: crate::work::WorkItem::LeafDropTemporary

use std::time::Duration;

use async_nats::jetstream::object_store::ObjectInfo;

use crate::error::Error;
use crate::jetstream::{ingest_digest, StoredObject};
use crate::metrics;
use crate::system::System;
use crate::work::TemporaryCopy;

/// The object-store header that makes a version temporary: how long it stays, as a duration
/// (`"7d"`, `"3s"`), from when the tier stored its meta.
pub const HEADER: &str = "Cim-Temporary-For";

/// The duration `info`'s headers declare, if the version is temporary. A value that does not
/// parse (or is zero) is not a temporary mark: the object is then an ordinary one, which is the
/// safe reading (it is archived and evicted as any other, never dropped).
pub fn declared(info: &ObjectInfo) -> Option<Duration> {
    let value = info.headers.as_ref()?.get(HEADER)?;
    parse(value.as_str())
}

/// The header value `text` as a duration (at least one second).
pub fn parse(text: &str) -> Option<Duration> {
    cim_policies::parse_duration(text.trim()).filter(|d| d.as_secs() >= 1)
}

/// The header value for `duration`: whole seconds (rounded up), written the way the
/// configuration writes durations.
pub fn header_value(duration: Duration) -> String {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    humantime::format_duration(Duration::from_secs(secs.max(1)))
        .to_string()
        .replace(' ', "")
}

/// When a temporary version stored at `stored_ms` (Unix milliseconds, the tier's clock) for
/// `duration` stops being temporary.
pub fn until(stored_ms: i64, duration: Duration) -> time::OffsetDateTime {
    let ms = i128::from(stored_ms) + duration.as_millis() as i128;
    time::OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

/// [`until`] for a version read from a tier.
pub fn until_of(version: &StoredObject) -> Option<time::OffsetDateTime> {
    let duration = declared(&version.info)?;
    let stored_ms = (version.stored_at.unix_timestamp_nanos() / 1_000_000) as i64;
    Some(until(stored_ms, duration))
}

/// RFC 3339, for messages and reports.
pub fn format_time(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Removes the expired temporary copy `copy` names from its tier, as the role that evicts from
/// that tier: only if the tier still holds that very version (same nuid and digest), its mark
/// still says it is temporary and its time is up by this host's clock too, and the catalog
/// still records a verified copy of the same digest on the S3 tier `copy.kept_on`. An eviction
/// (purges, no delete marker), recorded in the catalog as one; anything else leaves the copy
/// where it is (the manager asks again while it is due).
pub async fn remove_expired(system: &System, copy: &TemporaryCopy) -> Result<(), Error> {
    let tier = system.jetstream_tier(&copy.tier)?;
    let catalog = &system.catalog;
    let (bucket, name) = (copy.bucket.as_str(), copy.name.as_str());
    if !matches!(
        system.config.tier(&copy.kept_on),
        Some(cim_policies::Tier::S3(_))
    ) {
        return Err(Error::Config(format!(
            "temporary copy of {bucket}/{name}: {:?} is not an s3 tier",
            copy.kept_on
        )));
    }
    let Some(version) = tier.version(bucket, name).await? else {
        // Gone: a user delete, or this removal interrupted after its meta purge. Finish it.
        tier.purge_chunks(bucket, name, &copy.nuid).await?;
        catalog
            .record_eviction(bucket, name, &copy.digest, tier.name())
            .await?;
        tracing::debug!("object no longer on the tier; nothing to do");
        return Ok(());
    };
    if version.info.nuid != copy.nuid {
        tracing::info!("written again since: the new version is not temporary; kept");
        return Ok(());
    }
    let Some(until) = until_of(&version) else {
        tracing::info!("no longer marked temporary; kept");
        return Ok(());
    };
    let now = time::OffsetDateTime::now_utc();
    if until > now {
        tracing::info!(until = %format_time(until), "not yet expired by this host's clock; kept for now");
        return Ok(());
    }
    let digest = ingest_digest(tier.name(), bucket, &version.info)?;
    let kept = catalog
        .get(bucket, name)
        .await?
        .is_some_and(|e| e.has(&copy.kept_on, &digest));
    if digest != copy.digest || !kept {
        tracing::warn!(
            s3 = %copy.kept_on,
            "expired temporary copy kept: the catalog records no verified copy of this version on the s3 tier"
        );
        return Ok(());
    }
    if !tier.evict(bucket, &version.info).await? {
        // Changed since read (its metadata): looked at again next pass.
        return Ok(());
    }
    catalog
        .record_eviction(bucket, name, &digest, tier.name())
        .await?;
    metrics::evicted(tier.name());
    tracing::info!(until = %format_time(until), s3 = %copy.kept_on, "temporary copy expired: evicted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_round_trip_in_whole_seconds() {
        assert_eq!(header_value(Duration::from_secs(3)), "3s");
        assert_eq!(header_value(Duration::from_secs(7 * 86_400)), "7days");
        assert_eq!(header_value(Duration::from_millis(1500)), "2s");
        for d in [3, 60, 3_600 + 61, 7 * 86_400, 90_061] {
            let d = Duration::from_secs(d);
            assert_eq!(parse(&header_value(d)), Some(d), "{}", header_value(d));
        }
        assert_eq!(parse("0s"), None);
        assert_eq!(parse("soon"), None);
    }

    #[test]
    fn until_counts_from_the_stored_time() {
        let at = until(1_000, Duration::from_secs(2));
        assert_eq!(at.unix_timestamp_nanos(), 3_000 * 1_000_000);
    }
}
