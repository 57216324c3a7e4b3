//! The storage manager (`cim-storage run`): decides, never moves data itself.
//!
//! Every `[manager] interval` it evaluates the policies against what each JetStream tier holds
//! and queues work for the mirror and upload roles (see [`crate::work`]). A pass is cheap to
//! repeat: queued items are de-duplicated by id, and handlers re-check state before acting.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::object_store::ObjectInfo;
use cim_policies::{Action, Policy, Route};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::Error;
use crate::jetstream::StoredObject;
use crate::jetstream::{ingest_digest, JetStreamTier};
use crate::metrics;
use crate::system::System;
use crate::work::{ObjectDelete, ObjectMove, WorkItem};

/// What one pass found and queued.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Objects due for a move or copy.
    pub due: usize,
    /// Items newly queued (not de-duplicated).
    pub queued: usize,
    /// Tiers, buckets or objects passed over because of an error (see [`Manager::pass`]).
    pub skipped: usize,
}

/// A pass that takes longer is abandoned (logged) and the next one starts after the interval.
/// Far above a pass over a large deployment; it only keeps a hung pass from stopping the
/// manager for good. (A constant until the configuration grows a `[manager]` knob for it.)
pub const PASS_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// The storage manager.
pub struct Manager {
    system: Arc<System>,
}

impl Manager {
    /// A manager over the role's connections.
    pub fn new(system: Arc<System>) -> Self {
        Self { system }
    }

    /// Runs passes every interval until `shutdown`, which also cancels a pass under way:
    /// dropping a pass is safe, it only queues items and queueing is idempotent.
    pub async fn run(&self, shutdown: CancellationToken) {
        let interval = self.system.config.manager.interval;
        loop {
            let pass = tokio::select! {
                pass = tokio::time::timeout(PASS_DEADLINE, self.pass()) => pass,
                _ = shutdown.cancelled() => return,
            };
            match pass {
                Ok(Ok(report)) => {
                    tracing::debug!(due = report.due, queued = report.queued, "manager pass")
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "manager pass failed; retrying next interval")
                }
                Err(_) => tracing::warn!(
                    deadline = ?PASS_DEADLINE,
                    "manager pass exceeded its deadline; abandoned, the next one starts over"
                ),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One evaluation of every policy. Failures are isolated: an unavailable tier skips its
    /// policy, an unavailable bucket (a stream without quorum, say) skips that bucket, and a bad
    /// object (meta that does not decode, no usable digest) skips that object; each is counted
    /// in `cim_manager_skipped_total{policy, reason}` and logged once per pass, and the pass goes
    /// on with everything else.
    pub async fn pass(&self) -> Result<PassReport, Error> {
        let mut report = PassReport::default();
        let now = time::OffsetDateTime::now_utc();
        for policy in &self.system.config.policies {
            let span = tracing::info_span!("policy", policy = %policy.name, from = %policy.from, to = %policy.to);
            self.evaluate(policy, now, &mut report)
                .instrument(span)
                .await?;
        }
        metrics::manager_pass();
        Ok(report)
    }

    /// One policy over every bucket of its source tier.
    async fn evaluate(
        &self,
        policy: &Policy,
        now: time::OffsetDateTime,
        report: &mut PassReport,
    ) -> Result<(), Error> {
        let tier = self.system.jetstream_tier(&policy.from)?;
        let buckets = match tier.bucket_names().await {
            Ok(buckets) => buckets,
            Err(e) => {
                skipped(policy, Skip::TierUnavailable, &e, report);
                return Ok(());
            }
        };
        let mut due = 0u64;
        for bucket in buckets.iter().filter(|b| policy.matches_bucket(b)) {
            if let Err((reason, e)) = self
                .evaluate_bucket(policy, tier, bucket, now, &mut due, report)
                .await
            {
                skipped(policy, reason, &e, report);
            }
        }
        report.due += due as usize;
        metrics::manager_backlog(&policy.from, &policy.to, due);
        Ok(())
    }

    async fn evaluate_bucket(
        &self,
        policy: &Policy,
        tier: &JetStreamTier,
        bucket: &str,
        now: time::OffsetDateTime,
        due: &mut u64,
        report: &mut PassReport,
    ) -> Result<(), (Skip, Error)> {
        let route = self.system.config.route(policy);
        if route == Route::LeafToCluster {
            let source = WorkItem::EnsureSource {
                policy: policy.name.clone(),
                from: policy.from.clone(),
                to: policy.to.clone(),
                bucket: bucket.to_string(),
            };
            self.queue(source, report)
                .await
                .map_err(|e| (Skip::QueueUnavailable, e))?;
            // Replication is continuous; only `move` has per-object work (eviction).
            if policy.action != Action::Move {
                return Ok(());
            }
        }
        let listing = tier
            .list_objects(bucket)
            .await
            .map_err(|e| (Skip::BucketUnavailable, e))?;
        for e in &listing.unreadable {
            skipped(policy, Skip::UndecodableMeta, e, report);
        }
        // User deletes go on to S3 at once, whatever the policy's age: a deleted object must
        // not stay listed and restorable there.
        if route == Route::ClusterToS3 {
            for marker in &listing.deleted {
                if let Err(e) = self
                    .evaluate_deletion(policy, tier, bucket, marker, report)
                    .await
                {
                    skipped(policy, Skip::CatalogUnavailable, &e, report);
                }
            }
        }
        for version in listing.objects {
            // Age from when the tier stored it: the writer's clock may say anything.
            if !policy.is_due(version.age(now)) {
                continue;
            }
            if let Err((reason, e)) = self
                .evaluate_object(policy, route, tier, bucket, &version.info, due, report)
                .await
            {
                skipped(policy, reason, &e, report);
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn evaluate_object(
        &self,
        policy: &Policy,
        route: Route,
        tier: &JetStreamTier,
        bucket: &str,
        info: &ObjectInfo,
        due: &mut u64,
        report: &mut PassReport,
    ) -> Result<(), (Skip, Error)> {
        let job = self
            .object_move(policy, tier.name(), bucket, info)
            .map_err(|e| (Skip::MissingDigest, e))?;
        let item = match route {
            Route::LeafToCluster => WorkItem::LeafEvict(job),
            Route::ClusterToS3 => {
                let entry = self
                    .system
                    .catalog
                    .get(bucket, &info.name)
                    .await
                    .map_err(|e| (Skip::CatalogUnavailable, e))?;
                // A damaged version has no verified copy to move: reported once, never retried.
                if entry.as_ref().is_some_and(|e| e.is_damaged(&job.digest)) {
                    return Ok(());
                }
                // A copy that is already in S3 needs nothing more; a move still needs eviction.
                if policy.action == Action::Copy
                    && entry.is_some_and(|e| e.has(&policy.to, &job.digest))
                {
                    return Ok(());
                }
                WorkItem::Upload(job)
            }
        };
        *due += 1;
        self.queue(item, report)
            .await
            .map_err(|e| (Skip::QueueUnavailable, e))
    }

    /// Queues the delete whose marker is `marker` for the policy's S3 tier, unless the catalog
    /// shows it has nothing to do there: no entry (this system never copied the object
    /// anywhere), a newer version recorded, or this delete (or a later one) already reached the
    /// tier.
    async fn evaluate_deletion(
        &self,
        policy: &Policy,
        tier: &JetStreamTier,
        bucket: &str,
        marker: &StoredObject,
        report: &mut PassReport,
    ) -> Result<(), Error> {
        let name = &marker.info.name;
        let Some(entry) = self.system.catalog.get(bucket, name).await? else {
            return Ok(());
        };
        if entry.seq > marker.seq || entry.deletion_reached(marker.seq, &policy.to) {
            return Ok(());
        }
        let item = WorkItem::Delete(ObjectDelete {
            policy: policy.name.clone(),
            from: tier.name().to_string(),
            to: policy.to.clone(),
            bucket: bucket.to_string(),
            name: name.clone(),
            seq: marker.seq,
            nuid: marker.info.nuid.clone(),
        });
        self.queue(item, report).await
    }

    async fn queue(&self, item: WorkItem, report: &mut PassReport) -> Result<(), Error> {
        let role = item.role();
        if self.system.work.publish(&item).await? {
            report.queued += 1;
            metrics::dispatched(role);
            tracing::debug!(id = %item.id(), "queued");
        }
        Ok(())
    }

    fn object_move(
        &self,
        policy: &Policy,
        tier: &str,
        bucket: &str,
        info: &ObjectInfo,
    ) -> Result<ObjectMove, Error> {
        Ok(ObjectMove {
            policy: policy.name.clone(),
            from: policy.from.clone(),
            to: policy.to.clone(),
            action: policy.action,
            bucket: bucket.to_string(),
            name: info.name.clone(),
            size: info.size as u64,
            digest: ingest_digest(tier, bucket, info)?,
            nuid: info.nuid.clone(),
        })
    }
}

/// Why the manager passed over a tier, bucket or object in one pass: the `reason` label of
/// `cim_manager_skipped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Skip {
    /// The source tier could not list its buckets.
    TierUnavailable,
    /// A bucket's stream could not be read (e.g. it lost quorum).
    BucketUnavailable,
    /// An object's meta message does not decode.
    UndecodableMeta,
    /// An object has no usable ingest digest (missing or malformed).
    MissingDigest,
    /// The catalog could not be read for an object.
    CatalogUnavailable,
    /// The work queue refused an item.
    QueueUnavailable,
}

impl Skip {
    fn as_str(self) -> &'static str {
        match self {
            Skip::TierUnavailable => "tier_unavailable",
            Skip::BucketUnavailable => "bucket_unavailable",
            Skip::UndecodableMeta => "undecodable_meta",
            Skip::MissingDigest => "missing_digest",
            Skip::CatalogUnavailable => "catalog_unavailable",
            Skip::QueueUnavailable => "queue_unavailable",
        }
    }
}

/// Counts and logs one skip; the error names the tier, bucket and object where there is one.
fn skipped(policy: &Policy, reason: Skip, error: &Error, report: &mut PassReport) {
    report.skipped += 1;
    metrics::manager_skipped(&policy.name, reason.as_str());
    tracing::warn!(policy = %policy.name, reason = reason.as_str(), error = %error, "skipped this pass");
}
