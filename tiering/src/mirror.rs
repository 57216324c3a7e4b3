//! The mirror role (`cim-storage mirror`): leaf → cluster.
//!
//! Replication itself is JetStream stream sourcing (see [`crate::jetstream`]); this role sets it
//! up on request and, for `move` policies, evicts a leaf copy once the cluster copy is verified
//! byte for byte and recorded in the catalog.

use std::sync::Arc;

use tracing::Instrument;

use crate::error::Error;
use crate::jetstream::{check_content, ingest_digest};
use crate::metrics;
use crate::system::System;
use crate::work::{Handler, ObjectMove, WorkItem};

/// Handles [`WorkItem::EnsureSource`] and [`WorkItem::LeafEvict`].
pub struct MirrorHandler {
    system: Arc<System>,
}

impl MirrorHandler {
    /// A handler over the role's connections.
    pub fn new(system: Arc<System>) -> Self {
        Self { system }
    }

    async fn ensure_source(&self, from: &str, to: &str, bucket: &str) -> Result<(), Error> {
        let leaf = self.system.jetstream_tier(from)?;
        let hub = self.system.jetstream_tier(to)?;
        if !leaf.stream_exists(bucket).await? {
            return Ok(()); // the bucket went away; nothing to source
        }
        hub.ensure_sourced_from(bucket, leaf).await
    }

    async fn leaf_evict(&self, job: &ObjectMove) -> Result<(), Error> {
        let leaf = self.system.jetstream_tier(&job.from)?;
        let hub = self.system.jetstream_tier(&job.to)?;
        let bucket = job.bucket.as_str();
        let name = job.name.as_str();

        let Some(leaf_info) = leaf.info(bucket, name).await? else {
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

        // The cluster copy must be the same version, read back in full and matching the ingest digest.
        let not_ready = |reason: String| Error::NotReady {
            bucket: bucket.to_string(),
            object: name.to_string(),
            tier: hub.name().to_string(),
            reason,
        };
        let Some(hub_info) = hub.info(bucket, name).await? else {
            return Err(not_ready("not replicated yet".into()));
        };
        if hub_info.nuid != leaf_info.nuid {
            return Err(not_ready(format!(
                "cluster holds version {} and the leaf {}; waiting for replication",
                hub_info.nuid, leaf_info.nuid
            )));
        }
        let hub_digest = ingest_digest(hub.name(), bucket, &hub_info)?;
        check_content(
            hub.name(),
            bucket,
            name,
            size,
            &digest,
            hub_info.size as u64,
            &hub_digest,
        )?;
        hub.read_verified(bucket, &hub_info, size, &digest, &mut tokio::io::sink())
            .await?;

        let catalog = &self.system.catalog;
        catalog
            .record_copy(bucket, name, size, &digest, leaf.name(), None)
            .await?;
        catalog
            .record_copy(bucket, name, size, &digest, hub.name(), None)
            .await?;
        metrics::transferred(leaf.name(), hub.name(), size);

        if job.action == cim_policies::Action::Move {
            leaf.evict(bucket, &leaf_info).await?;
            catalog
                .record_eviction(bucket, name, &digest, leaf.name())
                .await?;
            metrics::evicted(leaf.name());
            tracing::info!(size, "evicted leaf copy after verified replication");
        }
        Ok(())
    }
}

impl Handler for MirrorHandler {
    type Error = Error;

    async fn handle(&self, item: WorkItem) -> Result<(), Error> {
        match &item {
            WorkItem::EnsureSource {
                from, to, bucket, ..
            } => self.ensure_source(from, to, bucket).await,
            WorkItem::LeafEvict(job) => {
                let span = tracing::info_span!("leaf_evict", bucket = %job.bucket, object = %job.name, from = %job.from, to = %job.to);
                self.leaf_evict(job).instrument(span).await
            }
            WorkItem::Upload(_) => Err(Error::Config(
                "upload items belong to cim-gateway upload, not the mirror role".into(),
            )),
        }
    }
}
