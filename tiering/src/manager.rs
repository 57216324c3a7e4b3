//! The storage manager (`cim-storage run`): decides, never moves data itself.
//!
//! Every `[manager] interval` it evaluates the policies against what each JetStream tier holds
//! and queues work for the mirror and upload roles (see [`crate::work`]). A pass is cheap to
//! repeat: queued items are de-duplicated by id, and handlers re-check state before acting.

use std::sync::Arc;

use async_nats::jetstream::object_store::ObjectInfo;
use cim_policies::{Action, Policy, Route};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::Error;
use crate::jetstream::ingest_digest;
use crate::metrics;
use crate::system::System;
use crate::work::{ObjectMove, WorkItem};

/// What one pass found and queued.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Objects due for a move or copy.
    pub due: usize,
    /// Items newly queued (not de-duplicated).
    pub queued: usize,
}

/// The storage manager.
pub struct Manager {
    system: Arc<System>,
}


impl Manager {
    /// A manager over the role's connections.
    pub fn new(system: Arc<System>) -> Self {
        Self { system }
    }

    /// Runs passes every interval until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) {
        let interval = self.system.config.manager.interval;
        loop {
            match self.pass().await {
                Ok(report) => {
                    tracing::debug!(due = report.due, queued = report.queued, "manager pass")
                }
                Err(e) => tracing::warn!(error = %e, "manager pass failed; retrying next interval"),
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    }

    /// One evaluation of every policy.
    pub async fn pass(&self) -> Result<PassReport, Error> {
        let mut report = PassReport::default();
        for policy in &self.system.config.policies {
            let span = tracing::info_span!("policy", policy = %policy.name, from = %policy.from, to = %policy.to);
            match self.system.config.route(policy) {
                Route::LeafToCluster => {
                    self.leaf_to_cluster(policy, &mut report)
                        .instrument(span)
                        .await?
                }
                Route::ClusterToS3 => {
                    self.cluster_to_s3(policy, &mut report)
                        .instrument(span)
                        .await?
                }
            }
        }
        metrics::manager_pass();
        Ok(report)
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

    async fn leaf_to_cluster(&self, policy: &Policy, report: &mut PassReport) -> Result<(), Error> {
        let leaf = self.system.jetstream_tier(&policy.from)?;
        let now = time::OffsetDateTime::now_utc();
        let mut due = 0u64;
        for bucket in leaf.bucket_names().await? {
            if !policy.matches_bucket(&bucket) {
                continue;
            }
            self.queue(
                WorkItem::EnsureSource {
                    policy: policy.name.clone(),
                    from: policy.from.clone(),
                    to: policy.to.clone(),
                    bucket: bucket.clone(),
                },
                report,
            )
            .await?;
            // Replication is continuous; only `move` has per-object work (eviction).
            if policy.action != Action::Move {
                continue;
            }
            for version in leaf.list_objects(&bucket).await? {
                // Age from when the tier stored it: the writer's clock may say anything.
                if !policy.is_due(version.age(now)) {
                    continue;
                }
                let info = version.info;
                due += 1;
                let job = self.object_move(policy, leaf.name(), &bucket, &info)?;
                self.queue(WorkItem::LeafEvict(job), report).await?;
            }
        }
        report.due += due as usize;
        metrics::manager_backlog(&policy.from, &policy.to, due);
        Ok(())
    }

    async fn cluster_to_s3(&self, policy: &Policy, report: &mut PassReport) -> Result<(), Error> {
        let hub = self.system.jetstream_tier(&policy.from)?;
        let now = time::OffsetDateTime::now_utc();
        let mut due = 0u64;
        for bucket in hub.bucket_names().await? {
            if !policy.matches_bucket(&bucket) {
                continue;
            }
            for version in hub.list_objects(&bucket).await? {
                if !policy.is_due(version.age(now)) {
                    continue;
                }
                let info = version.info;
                let job = self.object_move(policy, hub.name(), &bucket, &info)?;
                // A copy that is already in S3 needs nothing more; a move still needs eviction.
                if policy.action == Action::Copy {
                    let entry = self.system.catalog.get(&bucket, &info.name).await?;
                    if entry.is_some_and(|e| e.has(&policy.to, &job.digest)) {
                        continue;
                    }
                }
                due += 1;
                self.queue(WorkItem::Upload(job), report).await?;
            }
        }
        report.due += due as usize;
        metrics::manager_backlog(&policy.from, &policy.to, due);
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
