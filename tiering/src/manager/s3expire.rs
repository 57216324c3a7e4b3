//! `expire` on S3 tiers: which copies the catalog records there are due, and the tombstone
//! items the upload role writes for them (see `docs/architecture.md`, "Expire"). Decided from
//! the catalog index the pass already follows (never by listing S3), with the one evaluation
//! `plan` and `explain` show.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use cim_policies::evaluate::{describe, BucketEvaluator, Outcome};
use cim_policies::{Config, JetStreamRole, Object, Policy, Route, Tier, ALL_TIERS};

use super::skip::{skipped, Skip};
use super::state::{BucketState, Queued, State};
use super::{Context, Manager, PassReport, Pending};
use crate::catalog::HeldCopy;
use crate::error::Error;
use crate::metrics::Backlog;
use crate::work::{S3Expire, WorkItem};

/// The S3 tiers whose copies `policy` (an `expire`) decides on: its `from`, or every S3 tier
/// for `from = "*"`.
pub(super) fn s3_tiers<'c>(config: &'c Config, policy: &Policy) -> Vec<&'c str> {
    config
        .tiers
        .iter()
        .filter(|(name, tier)| matches!(tier, Tier::S3(_)) && policy.acts_on(name))
        .map(|(name, _)| name.as_str())
        .collect()
}

/// The JetStream tier whose bucket streams order the versions recorded for S3 tier `tier`:
/// the source of the policies that upload to it, else the (first) cluster tier.
fn ordering_source<'c>(config: &'c Config, tier: &str) -> Option<&'c str> {
    config
        .policies_on(Route::ClusterToS3)
        .find(|p| p.to == tier)
        .map(|p| p.from.as_str())
        .or_else(|| {
            config.tiers.iter().find_map(|(name, t)| match t {
                Tier::JetStream(js) if js.role == JetStreamRole::Cluster => Some(name.as_str()),
                _ => None,
            })
        })
}

impl Manager {
    /// One `expire` policy over the copies the catalog records on S3 tier `tier`. For
    /// `from = "*"`, only objects no JetStream tier's index holds (the others are deleted
    /// there, and the delete reaches S3 as a user's does), in one item per object, which
    /// tombstones every S3 tier: queued from the first of them holding it (`earlier` are the
    /// S3 tiers before `tier`).
    pub(super) async fn evaluate_s3_tier(
        &self,
        cx: &Context<'_>,
        tier: &str,
        earlier: &[&str],
        state: &mut State,
        due: &mut Backlog,
        report: &mut PassReport,
    ) {
        let policy = cx.policy;
        if let Some(message) = cx.catalog {
            let e = Error::Catalog {
                op: "follow",
                key: "*".into(),
                source: message.clone().into(),
            };
            skipped(policy, Skip::CatalogUnavailable, &e, report);
            return;
        }
        let Some(source) = ordering_source(&self.system.config, tier) else {
            return; // no JetStream tier at all: the configuration refuses that
        };
        let mut by_bucket: BTreeMap<String, Vec<HeldCopy>> = BTreeMap::new();
        for copy in state
            .catalog
            .copies_on(tier, cx.now, |b| policy.matches_bucket(b))
        {
            by_bucket.entry(copy.bucket.clone()).or_default().push(copy);
        }
        // Buckets the tier no longer holds anything due in need no memory either.
        state
            .s3_expiring
            .retain(|(t, b), _| t != tier || by_bucket.contains_key(b));
        let mut outcomes = Vec::with_capacity(self.system.config.policies.len());
        for (bucket, copies) in by_bucket {
            let key = (tier.to_string(), bucket.clone());
            // What `queue` remembers into: only its `queued` is used here.
            let mut queued = BucketState::default();
            queued.queued = state.s3_expiring.remove(&key).unwrap_or_default();
            let evaluator = BucketEvaluator::new(&self.system.config.policies, tier, &bucket);
            let now = Instant::now();
            let mut pending = Vec::new();
            let mut held = HashSet::new();
            for copy in copies {
                let name: Arc<str> = copy.name.as_str().into();
                held.insert(name.clone());
                // Metadata and headers are not in the catalog, and reads are not followed for
                // S3 tiers: `unsupported` refuses an S3 expire with such conditions.
                let object = Object {
                    bucket: &bucket,
                    name: &copy.name,
                    size: copy.size,
                    age: copy.age,
                    metadata: None,
                    headers: None,
                    last_read: None,
                };
                evaluator.evaluate_into(&object, &mut outcomes);
                if outcomes.get(cx.position) != Some(&Outcome::Decides) {
                    continue;
                }
                if policy.from == ALL_TIERS
                    && (earlier
                        .iter()
                        .any(|t| state.catalog.has(&bucket, &copy.name, t, &copy.digest))
                        || self.on_jetstream(state, &bucket, &copy.name))
                {
                    continue;
                }
                due.add(copy.size, copy.age.saturating_sub(policy.after));
                if queued.queued_recently(cx.position, &name, copy.seq, now) {
                    continue;
                }
                let why = self.dry.then(|| {
                    describe(
                        &self.system.config.policies,
                        cx.position,
                        &Outcome::Decides,
                        copy.age,
                    )
                });
                pending.push(Pending {
                    item: WorkItem::S3Expire(S3Expire {
                        policy: policy.name.clone(),
                        tier: tier.to_string(),
                        all: policy.from == ALL_TIERS,
                        source: source.to_string(),
                        bucket: bucket.clone(),
                        name: copy.name,
                        size: copy.size,
                        seq: copy.seq,
                        digest: copy.digest,
                    }),
                    name,
                    queued: Queued {
                        seq: copy.seq,
                        at: now,
                        evicts: false,
                    },
                    why,
                });
            }
            self.queue(cx, pending, &mut queued, report).await;
            // What the tier no longer holds needs no memory of being queued.
            queued.queued.retain(|(_, name), _| held.contains(name));
            if !queued.queued.is_empty() {
                state.s3_expiring.insert(key, queued.queued);
            }
        }
    }

    /// Whether some JetStream tier's index (as the pass left it) still holds `bucket`/`name`,
    /// live or as a delete marker.
    fn on_jetstream(&self, state: &State, bucket: &str, name: &str) -> bool {
        self.system
            .config
            .tiers
            .iter()
            .filter(|(_, t)| matches!(t, Tier::JetStream(_)))
            .any(|(tier, _)| {
                state
                    .buckets
                    .get(&(tier.clone(), bucket.to_string()))
                    .is_some_and(|b| b.index.get(name).is_some())
            })
    }
}
