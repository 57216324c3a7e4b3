//! The mirror role (`cim-storage mirror`): leaf → cluster.
//!
//! Replication itself is JetStream stream sourcing (see [`crate::jetstream`]); this role sets it
//! up on request and, for `move` policies, evicts a leaf copy once the cluster copy is verified
//! byte for byte and recorded in the catalog. A cluster copy is verified once: as it arrives,
//! by the [`follow`]er, or else read back in full before the eviction.

use std::sync::Arc;

use async_nats::jetstream::object_store::ObjectInfo;
use tracing::Instrument;

use crate::catalog::Version;
use crate::digest::Sha256Digest;
use crate::error::Error;
use crate::jetstream::ingest_digest;
use crate::metrics;
use crate::system::System;
use crate::work::{Handler, ObjectExpire, ObjectMove, Progress, WorkItem};

pub mod follow;

use follow::{Follower, Verdict};

/// Handles [`WorkItem::EnsureSource`], [`WorkItem::LeafEvict`] and [`WorkItem::Expire`].
pub struct MirrorHandler {
    system: Arc<System>,
    follower: Follower,
}

impl MirrorHandler {
    /// A handler over the role's connections. Must be created inside a Tokio runtime: the
    /// follower's tasks (stopped when the handler is dropped) start as buckets are set up.
    pub fn new(system: Arc<System>) -> Self {
        let follower = Follower::new(system.catalog.clone());
        Self { system, follower }
    }

    async fn ensure_source(&self, from: &str, to: &str, bucket: &str) -> Result<(), Error> {
        let leaf = self.system.jetstream_tier(from)?;
        let hub = self.system.jetstream_tier(to)?;
        if !leaf.stream_exists(bucket).await? {
            return Ok(()); // the bucket went away; nothing to source
        }
        let existed = self.follower.follows(hub, bucket) || hub.stream_exists(bucket).await?;
        hub.ensure_sourced_from(bucket, leaf).await?;
        // A bucket created now is followed from its first message, so every object sourced into
        // it is verified as it arrives; one that existed, from its end (no rehashing).
        if !existed {
            self.follower.follow(hub, bucket, 1);
        } else if let Err(e) = self.follower.follow_from_now(hub, bucket).await {
            // Only an optimisation: the evictions read the copies back meanwhile.
            tracing::debug!(error = %e, "cannot follow the bucket yet");
        }
        Ok(())
    }

    /// Whether the follower verified the cluster copy `hub_version` (recorded in the catalog as
    /// verified, for this sequence and `digest`); fails with its integrity failure when it found
    /// the copy bad. Starts following a bucket not followed yet, for the objects sourced next.
    async fn followed(
        &self,
        hub: &crate::jetstream::JetStreamTier,
        bucket: &str,
        name: &str,
        hub_seq: u64,
        digest: &Sha256Digest,
    ) -> Result<bool, Error> {
        if !self.follower.follows(hub, bucket) {
            if let Err(e) = self.follower.follow_from_now(hub, bucket).await {
                tracing::debug!(error = %e, "cannot follow the bucket yet");
            }
            return Ok(false);
        }
        match self.follower.verdict(hub.name(), bucket, hub_seq).await {
            Verdict::Mismatch(failure) => Err(failure.into()),
            Verdict::Unknown => Ok(false),
            Verdict::Passed => Ok(self
                .system
                .catalog
                .get(bucket, name)
                .await?
                .is_some_and(|entry| entry.seq == hub_seq && entry.has(hub.name(), digest))),
        }
    }

    async fn leaf_evict(&self, job: &ObjectMove, progress: &Progress) -> Result<(), Error> {
        let leaf = self.system.jetstream_tier(&job.from)?;
        let hub = self.system.jetstream_tier(&job.to)?;
        let bucket = job.bucket.as_str();
        let name = job.name.as_str();

        let started = std::time::Instant::now();
        let Some(leaf_info) = leaf.info(bucket, name).await? else {
            // Gone: a user delete, or our own eviction interrupted after its meta purge. Finish
            // that eviction: drop its chunks and make sure the catalog no longer places it here.
            if job.action == cim_policies::Action::Move {
                leaf.purge_chunks(bucket, name, &job.nuid).await?;
                self.system
                    .catalog
                    .record_eviction(bucket, name, &job.digest, leaf.name())
                    .await?;
            }
            tracing::debug!("already gone from the leaf");
            return Ok(());
        };
        if leaf_info.nuid != job.nuid {
            tracing::info!(
                "object changed on the leaf since dispatch; the manager will re-evaluate it"
            );
            return Ok(());
        }
        let digest = ingest_digest(leaf.name(), bucket, &leaf_info)?;
        let size = leaf_info.size as u64;

        let catalog = &self.system.catalog;
        match hub.version(bucket, name).await? {
            Some(hub_version) => {
                // The cluster copy must be this version, read back in full against the ingest
                // digest — once: when the catalog already records this very version (same hub
                // sequence, same digest) as verified on the cluster, a redelivered or re-queued
                // item goes straight to eviction instead of reading the copy again.
                let same_version = hub_version.info.nuid == leaf_info.nuid;
                let mut verified = catalog.get(bucket, name).await?.is_some_and(|entry| {
                    entry.seq == hub_version.seq && entry.has(hub.name(), &digest)
                });
                // Not yet: the follower may be about to verify it (or have found it bad).
                if !verified && same_version {
                    verified = self
                        .followed(hub, bucket, name, hub_version.seq, &digest)
                        .await?;
                }
                if verified && same_version {
                    tracing::debug!("cluster copy already verified; eviction only");
                } else {
                    self.verify_cluster_copy(job, &leaf_info, &hub_version.info, &digest, progress)
                        .await?;
                }
                // Versions are ordered by the hub's sequence of their meta message.
                let version = Version {
                    size,
                    digest,
                    seq: hub_version.seq,
                };
                for tier in [leaf.name(), hub.name()] {
                    let recorded = catalog
                        .record_copy(bucket, name, &version, tier, None)
                        .await?;
                    if recorded.is_none() {
                        return Err(Error::NotReady {
                            bucket: bucket.to_string(),
                            object: name.to_string(),
                            tier: hub.name().to_string(),
                            reason: "the catalog records a newer version than the one verified"
                                .into(),
                        });
                    }
                }
                // The upload role may have moved the cluster copy on to S3 (and recorded that)
                // between our read and our record; if so, undo our now-stale cluster entry.
                if hub.info(bucket, name).await?.map(|i| i.nuid) != Some(leaf_info.nuid.clone()) {
                    catalog
                        .record_eviction(bucket, name, &digest, hub.name())
                        .await?;
                }
            }
            None => {
                // Not on the cluster: either not replicated yet, or already moved further up
                // (to S3) after a verified copy — the catalog knows which. The cluster itself
                // does not count: we just saw it does not hold the object, whatever the catalog says.
                let elsewhere = catalog.get(bucket, name).await?.is_some_and(|entry| {
                    entry.digest == digest
                        && entry
                            .locations
                            .keys()
                            .any(|tier| tier != leaf.name() && tier != hub.name())
                });
                if !elsewhere {
                    return Err(Error::NotReady {
                        bucket: bucket.to_string(),
                        object: name.to_string(),
                        tier: hub.name().to_string(),
                        reason: "not replicated yet".into(),
                    });
                }
                tracing::debug!("cluster copy already moved on to a verified tier");
            }
        }
        // Either way the object made the leaf → cluster hop, verified.
        metrics::transferred(leaf.name(), hub.name(), size, started.elapsed());

        if job.action == cim_policies::Action::Move {
            if !leaf.evict(bucket, &leaf_info).await? {
                // Changed since read (its metadata): the next pass verifies it again.
                return Ok(());
            }
            catalog
                .record_eviction(bucket, name, &digest, leaf.name())
                .await?;
            metrics::evicted(leaf.name());
            tracing::info!(size, "evicted leaf copy after verified replication");
        }
        Ok(())
    }

    /// Carries out an `expire` on one JetStream tier (see `docs/architecture.md`, "Expire"):
    /// re-reads the object's latest meta there, and acts only when it is still the version the
    /// manager decided on (same sequence and nuid) — a version written since is newer and is
    /// never deleted. From one tier, the copy is evicted (a purge: nothing replicates, other
    /// tiers keep theirs); from all tiers, a delete marker is written, as a user's delete.
    /// Idempotent: a redelivered item finishes an interrupted one (the chunk purge after the
    /// meta purge or the marker) and otherwise finds nothing to do.
    async fn expire(&self, job: &ObjectExpire) -> Result<(), Error> {
        let tier = self.system.jetstream_tier(&job.tier)?;
        let (bucket, name) = (job.bucket.as_str(), job.name.as_str());
        let latest = tier.latest(bucket, name).await?;
        let current = match latest {
            // Gone: our purge interrupted before the chunks, an eviction, or a purge by hand.
            // The version's chunks are unreachable without its meta; drop them.
            None => {
                tier.purge_chunks(bucket, name, &job.nuid).await?;
                tracing::debug!(object = name, "already gone from the tier");
                return Ok(());
            }
            // Deleted: by our marker (finish its chunk purge), or by a user.
            Some(v) if v.info.deleted => {
                if v.info.nuid == job.nuid {
                    tier.purge_chunks(bucket, name, &job.nuid).await?;
                }
                tracing::debug!(object = name, "already deleted on the tier");
                return Ok(());
            }
            Some(v) if v.seq != job.seq || v.info.nuid != job.nuid => {
                tracing::info!(
                    object = name,
                    decided = job.seq,
                    current = v.seq,
                    "written again since the expire was decided; the newer version stays"
                );
                return Ok(());
            }
            Some(v) => v,
        };
        if job.all {
            if !tier
                .delete_version(bucket, &current.info, current.seq)
                .await?
            {
                tracing::info!(
                    object = name,
                    "written again while being expired; the newer version stays"
                );
                return Ok(());
            }
        } else {
            if !tier.evict(bucket, &current.info).await? {
                // Changed since read (its metadata): the next pass decides again.
                return Ok(());
            }
            if let Ok(digest) = ingest_digest(tier.name(), bucket, &current.info) {
                self.system
                    .catalog
                    .record_eviction(bucket, name, &digest, tier.name())
                    .await?;
            }
        }
        metrics::expired(tier.name());
        tracing::info!(
            policy = %job.policy,
            tier = tier.name(),
            bucket,
            object = name,
            seq = job.seq,
            from_all_tiers = job.all,
            "expired"
        );
        Ok(())
    }

    async fn verify_cluster_copy(
        &self,
        job: &ObjectMove,
        leaf_info: &ObjectInfo,
        hub_info: &ObjectInfo,
        digest: &Sha256Digest,
        progress: &Progress,
    ) -> Result<(), Error> {
        let hub = self.system.jetstream_tier(&job.to)?;
        let (bucket, name) = (job.bucket.as_str(), job.name.as_str());
        if hub_info.nuid != leaf_info.nuid {
            return Err(Error::NotReady {
                bucket: bucket.to_string(),
                object: name.to_string(),
                tier: hub.name().to_string(),
                reason: format!(
                    "cluster holds version {} and the leaf {}; waiting for replication",
                    hub_info.nuid, leaf_info.nuid
                ),
            });
        }
        // The same nuid is the same meta message; what counts is the content, read back in
        // full and checked against the leaf's ingest size and digest.
        metrics::mirror_read_back(hub.name());
        tracing::debug!("reading the cluster copy back");
        let size = leaf_info.size as u64;
        hub.read_verified(
            bucket,
            hub_info,
            size,
            digest,
            &mut progress.writer(tokio::io::sink()),
        )
        .await?;
        Ok(())
    }
}

impl Handler for MirrorHandler {
    type Error = Error;

    async fn handle(&self, item: WorkItem, progress: Progress) -> Result<(), Error> {
        match &item {
            WorkItem::EnsureSource {
                from, to, bucket, ..
            } => self.ensure_source(from, to, bucket).await,
            WorkItem::LeafEvict(job) => {
                let span = tracing::info_span!("leaf_evict");
                let result = self.leaf_evict(job, &progress).instrument(span).await;
                if let Err(e) = &result {
                    metrics::transfer_failed(&job.from, &job.to, e.reason());
                }
                result
            }
            WorkItem::Expire(job) => {
                let span = tracing::info_span!("expire", seq = job.seq, all = job.all);
                self.expire(job).instrument(span).await
            }
            // This role evicts from the leaf tiers: expired temporary copies there too.
            WorkItem::LeafDropTemporary(copy) => {
                let span = tracing::info_span!("drop_temporary", tier = %copy.tier);
                crate::temporary::remove_expired(&self.system, copy)
                    .instrument(span)
                    .await
            }
            WorkItem::Upload(_)
            | WorkItem::Delete(_)
            | WorkItem::DropTemporary(_)
            | WorkItem::S3Expire(_) => Err(Error::Config(
                "upload, delete, s3 expire and cluster drop-temporary items belong to \
                     cim-gateway upload, not the mirror role"
                    .into(),
            )),
        }
    }
}
