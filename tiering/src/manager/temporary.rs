//! The expiry of temporary copies (`cim-gateway restore --for`, see [`crate::temporary`]): each
//! pass, on every JetStream tier whether or not a policy reads it, the temporary copies whose
//! time is up are handed to the role that evicts from their tier.
//!
//! Every bucket of every JetStream tier is followed for it (incrementally, like the policies'
//! buckets: a bucket a policy already followed this pass costs one empty read), because a copy
//! restored into a tier no policy reads must expire too.

use std::sync::Arc;
use std::time::Instant;

use cim_policies::{JetStreamRole, Tier};

use super::state::{BucketState, Queued, State};
use super::{follow, plan, Manager, PassReport, Pending};
use crate::jetstream::scan::Kind;
use crate::jetstream::JetStreamTier;
use crate::temporary::format_time;
use crate::work::{TemporaryCopy, WorkItem};

/// The key [`BucketState::queued`] remembers expiry items under (no policy queues them).
const EXPIRY: usize = usize::MAX;

impl Manager {
    /// Queues the removal of every expired temporary copy, tier by tier. Failures are logged
    /// and leave the copy for the next pass (it stays, which loses nothing).
    pub(super) async fn expire_temporary(
        &self,
        state: &mut State,
        now: time::OffsetDateTime,
        report: &mut PassReport,
    ) {
        let config = &self.system.config;
        for (name, tier) in &config.tiers {
            let Tier::JetStream(settings) = tier else {
                continue;
            };
            let Ok(js) = self.system.jetstream_tier(name) else {
                continue;
            };
            let leaf = settings.role == JetStreamRole::Leaf;
            let buckets = match js.bucket_names().await {
                Ok(buckets) => buckets,
                Err(e) => {
                    tracing::warn!(tier = %name, error = %e, "temporary copies: tier unavailable this pass");
                    // Keep what is known of its buckets for when it is back.
                    let known: Vec<_> = state
                        .buckets
                        .keys()
                        .filter(|(t, _)| t == name)
                        .cloned()
                        .collect();
                    state.touched.extend(known);
                    continue;
                }
            };
            for bucket in &buckets {
                let mut source = state.take(name, bucket);
                match follow(js, bucket, &mut source).await {
                    Ok(()) => {
                        let pending = self
                            .expired(js, leaf, bucket, &source, now, &mut report.temporary)
                            .await;
                        self.queue_expired(pending, &mut source, report).await;
                    }
                    Err(e) => {
                        tracing::warn!(tier = %name, bucket, error = %e, "temporary copies: bucket unavailable this pass")
                    }
                }
                state.put(name, bucket, source);
            }
        }
    }

    /// The removals due in one bucket: live temporary copies whose time is up and whose
    /// version the catalog records as verified on an S3 tier (read per due object: there are
    /// few, and the answer must be current).
    async fn expired(
        &self,
        tier: &JetStreamTier,
        leaf: bool,
        bucket: &str,
        source: &BucketState,
        now: time::OffsetDateTime,
        running: &mut Vec<plan::Temporary>,
    ) -> Vec<Pending> {
        let mut pending = Vec::new();
        let instant = Instant::now();
        let s3_tiers: Vec<&String> = self
            .system
            .config
            .tiers
            .iter()
            .filter(|(_, t)| matches!(t, Tier::S3(_)))
            .map(|(name, _)| name)
            .collect();
        for (name, meta) in source.index.objects() {
            if meta.kind != Kind::Live {
                continue;
            }
            let Some(until) = meta.temporary_until() else {
                continue;
            };
            if until > now {
                if self.dry {
                    running.push(plan::Temporary {
                        tier: tier.name().to_string(),
                        bucket: bucket.to_string(),
                        name: name.to_string(),
                        until: format_time(until),
                    });
                }
                continue;
            }
            let Some(digest) = meta.digest else {
                continue;
            };
            if source
                .queued
                .get(&(EXPIRY, name.clone()))
                .is_some_and(|q| q.covers(meta.seq, instant))
            {
                continue;
            }
            let entry = match self.system.catalog.get(bucket, name).await {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::warn!(tier = tier.name(), bucket, object = %name, error = %e, "temporary copy: catalog unreadable; kept this pass");
                    continue;
                }
            };
            let Some(kept_on) = s3_tiers
                .iter()
                .find(|s3| entry.as_ref().is_some_and(|e| e.has(s3, &digest)))
            else {
                tracing::warn!(tier = tier.name(), bucket, object = %name, until = %format_time(until), "expired temporary copy kept: no s3 tier holds a verified copy of this version");
                continue;
            };
            let copy = TemporaryCopy {
                tier: tier.name().to_string(),
                kept_on: kept_on.to_string(),
                bucket: bucket.to_string(),
                name: name.to_string(),
                size: meta.size,
                digest,
                nuid: meta.nuid.to_string(),
            };
            pending.push(Pending {
                item: if leaf {
                    WorkItem::LeafDropTemporary(copy)
                } else {
                    WorkItem::DropTemporary(copy)
                },
                name: name.clone(),
                queued: Queued {
                    seq: meta.seq,
                    at: instant,
                    evicts: true,
                },
                why: self.dry.then(|| {
                    format!(
                        "temporary copy until {} (restore --for): expired; {kept_on} keeps a \
                         verified copy",
                        format_time(until)
                    )
                }),
            });
        }
        pending
    }

    /// Queues the removals (pipelined), or lists them for a planner.
    async fn queue_expired(
        &self,
        pending: Vec<Pending>,
        bucket: &mut BucketState,
        report: &mut PassReport,
    ) {
        for (p, result) in self.publish(pending, report).await {
            match result {
                Ok(_) => {
                    let name: Arc<str> = p.name;
                    bucket.queued.insert((EXPIRY, name), p.queued);
                }
                Err(e) => {
                    tracing::warn!(id = %p.item.id(), error = %e, "temporary copy: work queue refused the removal; asked again next pass")
                }
            }
        }
    }
}
