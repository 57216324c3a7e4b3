//! `expire` on S3 tiers (the upload role's [`WorkItem::S3Expire`]): the object stops being
//! listed and restorable there. A tombstone is written through the one tombstone path
//! ([`versions::write_tombstone`]: history manifest, catalog, current manifest), so the catalog
//! refuses any upload of the expired version from then on, and the blob goes through `gc` after
//! the tier's retention like a user delete's (see `docs/architecture.md`, "Expire").
//!
//! [`WorkItem::S3Expire`]: cim_tiering::work::WorkItem::S3Expire

use std::collections::BTreeMap;

use cim_tiering::work::S3Expire;
use cim_tiering::{metrics, System};

use crate::s3::S3Store;
use crate::versions::{self, Tombstoned};
use crate::Error;

/// Carries out one `expire` on S3. From one tier (`job.all` false) a tombstone on `job.tier`;
/// from every tier (an object only S3 holds) a tombstone on every S3 tier, with one sequence,
/// as a user delete leaves.
///
/// A version newer than the decided one is never expired: the catalog must still record the
/// decided version (same sequence and digest); the source tier (whose bucket stream orders the
/// versions) must hold nothing newer; and the tombstone's sequence is taken from that stream
/// *before* those checks, so any version written there afterwards has a higher sequence and
/// wins over the tombstone (the catalog's compare-and-set refuses the older one).
///
/// Idempotent and crash-safe: a redelivered item that finds the catalog already recording the
/// tombstone finishes it (the current manifest on each tier, the tiers not reached yet).
pub async fn expire(
    system: &System,
    stores: &BTreeMap<String, S3Store>,
    job: &S3Expire,
) -> Result<(), Error> {
    let catalog = &system.catalog;
    let (bucket, name) = (job.bucket.as_str(), job.name.as_str());
    let targets: Vec<&S3Store> = if job.all {
        stores.values().collect()
    } else {
        vec![stores.get(&job.tier).ok_or_else(|| Error::Config {
            message: format!("no s3 tier named {:?}", job.tier),
        })?]
    };
    // First: every version stored on the source from now on is ordered after the tombstone.
    let source = system.jetstream_tier(&job.source)?;
    let last = source.last_sequence(bucket).await?;
    let Some(entry) = catalog.get(bucket, name).await? else {
        tracing::debug!("no longer in the catalog; nothing to expire");
        return Ok(());
    };
    if entry.deleted.is_some() && entry.seq >= job.seq {
        // Deleted since the decision: by this expire (an interrupted attempt: finish it) or by
        // another delete. From every tier, each tier gets that same delete.
        for store in &targets {
            if entry.deletion_reached(entry.seq, store.tier_name()) {
                versions::publish_current(catalog, store, bucket, name).await?;
            } else if job.all {
                tombstone(catalog, store, job, entry.seq).await?;
            }
        }
        tracing::debug!(seq = entry.seq, "already deleted");
        return Ok(());
    }
    if entry.seq != job.seq || entry.digest != job.digest {
        tracing::info!(
            decided = job.seq,
            current = entry.seq,
            "written again since the expire was decided; the newer version stays"
        );
        return Ok(());
    }
    if !job.all && !entry.locations.contains_key(&job.tier) {
        tracing::debug!("the tier no longer holds the object; nothing to expire");
        return Ok(());
    }
    if job.all {
        // Held by a JetStream tier after all: deleted there, the delete reaches S3 as a
        // user's does.
        if let Some((tier, _)) = versions::held_on_jetstream(system, bucket, name).await? {
            tracing::info!(
                tier = %tier,
                "a jetstream tier holds the object; its expire there deletes it"
            );
            return Ok(());
        }
    } else if let Some(newer) = source
        .latest(bucket, name)
        .await?
        .filter(|v| v.seq > job.seq)
    {
        tracing::info!(
            decided = job.seq,
            current = newer.seq,
            "written again since the expire was decided; the newer version stays"
        );
        return Ok(());
    }
    let seq = last.max(job.seq + 1);
    for store in targets {
        tombstone(catalog, store, job, seq).await?;
    }
    Ok(())
}

/// The tombstone with sequence `seq` on `store`, counted and logged when written.
async fn tombstone(
    catalog: &cim_tiering::catalog::Catalog,
    store: &S3Store,
    job: &S3Expire,
    seq: u64,
) -> Result<(), Error> {
    let (bucket, name, tier) = (job.bucket.as_str(), job.name.as_str(), store.tier_name());
    let by = format!("expire policy {}", job.policy);
    match versions::write_tombstone(catalog, store, bucket, name, seq, &by).await? {
        Tombstoned::Written => {
            metrics::expired(tier);
            tracing::info!(
                policy = %job.policy,
                tier,
                bucket,
                object = name,
                seq,
                from_all_tiers = job.all,
                "expired"
            );
        }
        Tombstoned::Superseded => tracing::info!(
            tier,
            "a newer version was recorded meanwhile; the newer version stays"
        ),
        outcome => tracing::debug!(tier, ?outcome, "nothing more to do on the tier"),
    }
    Ok(())
}
