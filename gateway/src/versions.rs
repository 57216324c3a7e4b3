//! Which version of an object is current on an S3 tier: publishing the catalog's choice, and
//! tombstones for deletes.
//!
//! The rule everywhere: versions (and deletes) are ordered by the sequence of their meta message
//! on the tier they came from; the catalog's compare-and-set decides which one is current; the
//! history manifest (`versions/…/<seq>.json`) is written *before* the catalog records a version,
//! and the current manifest (`objects/…`) after it. So whoever later finds the catalog ahead of
//! the current manifest can publish the right one ([`publish_current`]) — after a crash between
//! the two writes, or when an older version's write landed last.
//!
//! A delete is one more version: a *tombstone* manifest (`deleted` set, `source_seq` = the
//! delete's sequence), recorded in the catalog as a tombstone entry ([`Catalog::record_deletion`]),
//! which refuses any older version from then on. A tombstone keeps the content fields of the
//! last version the tier held, so `restore --include-deleted` can bring it back while its blob
//! is kept (see `docs/s3-format.md` for retention).

use cim_tiering::catalog::{Catalog, Version};
use cim_tiering::System;

use crate::format::{self, Deletion, Manifest, FORMAT_VERSION};
use crate::s3::S3Store;
use crate::Error;

/// What [`write_tombstone`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tombstoned {
    /// The tombstone was written (or finished after an interrupted attempt).
    Written,
    /// This delete, or a later one, is already current on the tier.
    AlreadyDeleted,
    /// The tier never held the object: nothing to mark there; the catalog records the delete.
    NeverStored,
    /// A newer version is current or recorded: the delete is history and changes nothing.
    Superseded,
}

/// Makes the current manifest of `bucket`/`name` on `store` the version the catalog records
/// there, when the current manifest is older (or missing): the repair step after every commit.
/// For a tombstone entry that reached this tier it is the tombstone's history manifest; for a
/// live entry, the history manifest its locator names (entries written before version history
/// existed have the current manifest as locator and need nothing).
pub async fn publish_current(
    catalog: &Catalog,
    store: &S3Store,
    bucket: &str,
    name: &str,
) -> Result<(), Error> {
    let Some(entry) = catalog.get(bucket, name).await? else {
        return Ok(());
    };
    let (prefix, tier) = (store.prefix(), store.tier_name());
    let key = if entry.deletion_reached(entry.seq, tier) {
        format::version_manifest_key(prefix, bucket, name, entry.seq)
    } else {
        let Some(locator) = entry.locations.get(tier).and_then(|l| l.locator.clone()) else {
            return Ok(());
        };
        locator
    };
    let Some(seq) = format::version_seq_of_key(prefix, bucket, name, &key) else {
        return Ok(());
    };
    let current = store.get_manifest(bucket, name).await?;
    if current.as_ref().is_some_and(|c| c.source_seq >= seq) {
        return Ok(());
    }
    let Some(newer) = store.get_version_manifest(&key, bucket, name).await? else {
        // A delete that reached a tier which never held the object writes no tombstone.
        if current.is_some() {
            tracing::warn!(key, "the catalog names a version manifest that does not exist; leaving the current manifest");
        }
        return Ok(());
    };
    store.put_manifest(&newer).await?;
    tracing::info!(
        seq,
        "published the catalog's version over an older manifest"
    );
    Ok(())
}

/// Carries a delete with sequence `seq` to `store`: the last version's history is kept, a
/// tombstone is written as history, the catalog records the delete (compare-and-set: refused
/// when a newer version is recorded), then the tombstone becomes the current manifest.
/// Idempotent: a redelivered delete finishes what an interrupted one began.
pub async fn write_tombstone(
    catalog: &Catalog,
    store: &S3Store,
    bucket: &str,
    name: &str,
    seq: u64,
    by: &str,
) -> Result<Tombstoned, Error> {
    let tier = store.tier_name();
    // A manifest of a newer format is left alone (`UnsupportedFormat`), like every writer here.
    let current = store.get_manifest(bucket, name).await?;
    let Some(current) = current else {
        // Nothing of it on this tier. The catalog still records that the delete reached it, so
        // the manager stops dispatching it, and a late upload of an older version is refused.
        if let Some(entry) = catalog.get(bucket, name).await? {
            let deleted = Version {
                size: entry.size,
                digest: entry.digest,
                seq,
            };
            if !catalog
                .record_deletion(bucket, name, &deleted, tier)
                .await?
            {
                return Ok(Tombstoned::Superseded);
            }
        }
        return Ok(Tombstoned::NeverStored);
    };
    let deleted = Version {
        size: current.size,
        digest: current.digest,
        seq,
    };
    if current.source_seq > seq || (current.source_seq == seq && current.is_deleted()) {
        // Already current: this delete (make sure the catalog says so) or a newer version.
        if current.is_deleted()
            && catalog
                .record_deletion(bucket, name, &deleted, tier)
                .await?
        {
            return Ok(Tombstoned::AlreadyDeleted);
        }
        return Ok(Tombstoned::Superseded);
    }
    if !current.is_deleted() && current.format < 2 {
        // Format 1 kept no history: keep the deleted version restorable for the retention.
        store.put_version_manifest(&current).await?;
    }
    let tombstone = Manifest {
        format: FORMAT_VERSION,
        uploaded_at: format::now_rfc3339(),
        source_seq: seq,
        deleted: Some(Deletion {
            at: format::now_rfc3339(),
            by: by.to_string(),
        }),
        ..current
    };
    store.put_version_manifest(&tombstone).await?;
    if !catalog
        .record_deletion(bucket, name, &deleted, tier)
        .await?
    {
        tracing::info!("a newer version was recorded meanwhile; the delete stays history");
        return Ok(Tombstoned::Superseded);
    }
    store.put_manifest(&tombstone).await?;
    // A newer version may have committed while we wrote: never leave the tombstone over it.
    publish_current(catalog, store, bucket, name).await?;
    Ok(Tombstoned::Written)
}

/// The first JetStream tier (in configuration order) holding a live version of
/// `bucket`/`name`, and that version; `None` when none does. Every JetStream tier is asked: one
/// that does not answer is an error, since whether it holds the object is then unknown.
pub async fn held_on_jetstream(
    system: &System,
    bucket: &str,
    name: &str,
) -> Result<Option<(String, cim_tiering::jetstream::StoredObject)>, Error> {
    let jetstream_tiers = system
        .config
        .tiers
        .iter()
        .filter(|(_, t)| matches!(t, cim_policies::Tier::JetStream(_)))
        .map(|(name, _)| name.as_str());
    for tier in jetstream_tiers {
        let held = system
            .jetstream_tier(tier)?
            .version(bucket, name)
            .await
            .map_err(|e| Error::Config {
                message: format!(
                    "cannot tell whether tier {tier} holds {bucket}/{name}, so it is not \
                     deleted: {e}"
                ),
            })?;
        if let Some(version) = held {
            return Ok(Some((tier.to_string(), version)));
        }
    }
    Ok(None)
}

/// `cim-gateway delete`: deletes an object that lives only in S3. Refused, naming the tier,
/// while a JetStream tier holds a live version of it (delete it there; the delete then reaches
/// S3 through the manager) or cannot be asked. `source` is the JetStream tier that uploads to
/// this S3 tier: the delete is ordered after everything its bucket stream holds.
pub async fn delete_s3_only(
    system: &System,
    store: &S3Store,
    source: &str,
    bucket: &str,
    name: &str,
) -> Result<Tombstoned, Error> {
    if let Some((tier, _)) = held_on_jetstream(system, bucket, name).await? {
        return Err(Error::HeldByTier {
            bucket: bucket.to_string(),
            name: name.to_string(),
            tier,
        });
    }
    let Some(current) = store.get_manifest(bucket, name).await? else {
        return Err(Error::NotInS3 {
            bucket: bucket.to_string(),
            name: name.to_string(),
            tier: store.tier_name().to_string(),
        });
    };
    if current.is_deleted() {
        return Ok(Tombstoned::AlreadyDeleted);
    }
    // Later than every version the source tier or the catalog knows; any version written on
    // the source tier from now on gets a higher sequence and so wins over this delete.
    let known = system.catalog.get(bucket, name).await?.map_or(0, |e| e.seq);
    let last = system.jetstream_tier(source)?.last_sequence(bucket).await?;
    let seq = last.max(current.source_seq + 1).max(known + 1);
    write_tombstone(
        &system.catalog,
        store,
        bucket,
        name,
        seq,
        "cim-gateway delete",
    )
    .await
}
