//! The per-object decision of one pass: which of a bucket's objects one policy decides now, and
//! the work item each needs. Pure over the indexes the pass has read (no I/O), so `plan` and
//! a queuing pass decide alike.

use std::sync::Arc;
use std::time::Instant;

use cim_policies::evaluate::{
    any_transfer_elsewhere, describe, transfers_elsewhere, BucketEvaluator, Outcome,
};
use cim_policies::{Action, Object, Route, ALL_TIERS};

use super::skip::{skipped, Skip};
use super::state::{BucketState, Queued};
use super::{Context, Manager, Pending};
use crate::error::{Error, IntegrityFailure};
use crate::jetstream::scan::{Kind, Meta};
use crate::jetstream::JetStreamTier;
use crate::manager::PassReport;
use crate::metrics::Backlog;
use crate::work::{ObjectDelete, ObjectExpire, ObjectMove, WorkItem};

impl Manager {
    /// What to queue for one bucket, decided in memory from the indexes.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn plan(
        &self,
        cx: &Context<'_>,
        tier: &JetStreamTier,
        bucket: &str,
        source: &BucketState,
        hub: Option<&crate::jetstream::scan::MetaIndex>,
        catalog: &crate::catalog::CatalogIndex,
        access: Option<&crate::access::AccessIndex>,
        due: &mut Backlog,
        report: &mut PassReport,
    ) -> Vec<Pending> {
        let policy = cx.policy;
        let now = Instant::now();
        let mut pending = Vec::new();
        let mut outcomes = Vec::with_capacity(self.system.config.policies.len());
        let evaluator = BucketEvaluator::new(&self.system.config.policies, tier.name(), bucket);
        // Whether a move here may have to wait for transfers to other tiers (rare: asked per
        // object only then).
        let others = policy.action == Action::Move
            && any_transfer_elsewhere(
                &self.system.config.policies,
                tier.name(),
                bucket,
                &policy.to,
            );
        for (name, reason) in source.index.unreadable() {
            let e = Error::BadMeta {
                tier: tier.name().to_string(),
                bucket: bucket.to_string(),
                object: name.to_string(),
                reason: reason.clone(),
            };
            skipped(policy, Skip::UndecodableMeta, &e, report);
        }
        let recently =
            |name: &Arc<str>, seq: u64| source.queued_recently(cx.position, name, seq, now);
        for (name, meta) in source.index.objects() {
            match meta.kind {
                // User deletes go on to S3 at once, whatever the policy's age: a deleted object
                // must not stay listed and restorable there.
                Kind::Deleted if cx.route == Route::ClusterToS3 => {
                    if !catalog.deletion_pending(bucket, name, meta.seq, &policy.to)
                        || recently(name, meta.seq)
                    {
                        continue;
                    }
                    pending.push(Pending {
                        item: WorkItem::Delete(ObjectDelete {
                            policy: policy.name.clone(),
                            from: tier.name().to_string(),
                            to: policy.to.clone(),
                            bucket: bucket.to_string(),
                            name: name.to_string(),
                            seq: meta.seq,
                            nuid: meta.nuid.to_string(),
                        }),
                        name: name.clone(),
                        queued: Queued {
                            seq: meta.seq,
                            at: now,
                            evicts: false,
                        },
                        why: self
                            .dry
                            .then(|| "deleted by a user: the deletion goes on to S3".into()),
                    });
                    continue;
                }
                Kind::Live => {}
                _ => continue,
            }
            // A temporary copy (`restore --for`) is no policy's to act on, due or not, and no
            // backlog: the manager's expiry removes it when its time is up (`temporary.rs`).
            if meta.temporary_secs.is_some() {
                continue;
            }
            // Age from when the tier stored it: the writer's clock may say anything. Whether
            // this policy decides is the one evaluation `plan` and `explain` show.
            let attributes = meta.attributes.as_deref();
            let object = Object {
                bucket,
                name,
                size: meta.size,
                age: meta.age(cx.now),
                metadata: attributes.map(|a| &a.metadata),
                headers: attributes.map(|a| &a.headers),
                // Looked up only for the buckets of `idle` policies (a key per object).
                last_read: access
                    .and_then(|a| a.last_read(bucket, name))
                    .map(|at| since(cx.now, at)),
            };
            evaluator.evaluate_into(&object, &mut outcomes);
            if outcomes.get(cx.position) != Some(&Outcome::Decides) {
                continue;
            }
            // An expire needs no digest: it deletes, it copies nothing.
            let item = if cx.route == Route::Expire {
                due.add(meta.size, meta.age(cx.now).saturating_sub(policy.after));
                WorkItem::Expire(ObjectExpire {
                    policy: policy.name.clone(),
                    tier: tier.name().to_string(),
                    all: policy.from == ALL_TIERS,
                    bucket: bucket.to_string(),
                    name: name.to_string(),
                    size: meta.size,
                    seq: meta.seq,
                    nuid: meta.nuid.to_string(),
                })
            } else {
                let Some(digest) = meta.digest else {
                    let e = missing_digest(tier.name(), bucket, name);
                    skipped(policy, Skip::MissingDigest, &e, report);
                    continue;
                };
                let job = ObjectMove {
                    policy: policy.name.clone(),
                    from: policy.from.clone(),
                    to: policy.to.clone(),
                    action: policy.action,
                    bucket: bucket.to_string(),
                    name: name.to_string(),
                    size: meta.size,
                    digest,
                    nuid: meta.nuid.to_string(),
                    seq: meta.seq,
                };
                match cx.route {
                    Route::LeafToCluster => {
                        // Only once the cluster holds this version (or a copy verified beyond it
                        // lets the leaf copy go): queued earlier, the item would only wait.
                        due.add(meta.size, meta.age(cx.now).saturating_sub(policy.after));
                        let on_hub = hub
                            .and_then(|h| h.get(name))
                            .is_some_and(|h: &Meta| h.kind == Kind::Live && h.nuid == meta.nuid);
                        if !on_hub
                            && !catalog.verified_elsewhere(
                                bucket,
                                name,
                                &digest,
                                &[&policy.from, &policy.to],
                            )
                        {
                            continue;
                        }
                        WorkItem::LeafEvict(job)
                    }
                    Route::ClusterToS3 => {
                        // A damaged version has no verified copy to move: reported once, never retried.
                        if catalog.is_damaged(bucket, name, &digest) {
                            continue;
                        }
                        // Deleted after this version (an expire's tombstone on S3): never
                        // uploaded again.
                        if catalog.deleted_after(bucket, name, meta.seq) {
                            continue;
                        }
                        // A copy already in S3 — of this version, not only of its content: a
                        // metadata update since must reach S3 too — needs nothing more; a move
                        // still needs eviction.
                        let uploaded =
                            catalog.has_version(bucket, name, &policy.to, &digest, meta.seq);
                        if policy.action == Action::Copy && uploaded {
                            continue;
                        }
                        // ... but not before the transfers to other tiers have their copies:
                        // nothing to queue until then (the upload role checks again).
                        if others
                            && uploaded
                            && transfers_elsewhere(
                                &self.system.config.policies,
                                tier.name(),
                                &object,
                                &policy.to,
                            )
                            .iter()
                            .any(|other| {
                                !catalog.has_version(bucket, name, &other.to, &digest, meta.seq)
                            })
                        {
                            continue;
                        }
                        due.add(meta.size, meta.age(cx.now).saturating_sub(policy.after));
                        WorkItem::Upload(job)
                    }
                    Route::Expire => continue, // decided above
                }
            };
            if recently(name, meta.seq) {
                continue;
            }
            let why = self.dry.then(|| {
                describe(
                    &self.system.config.policies,
                    cx.position,
                    &Outcome::Decides,
                    meta.age(cx.now),
                )
            });
            pending.push(Pending {
                item,
                name: name.clone(),
                queued: Queued {
                    seq: meta.seq,
                    at: now,
                    // Gone from this tier once done: a `move`, or an `expire` of this tier's
                    // copy (from every tier, a delete marker stays in the index).
                    evicts: policy.action == Action::Move
                        || (cx.route == Route::Expire && policy.from != ALL_TIERS),
                },
                why,
            });
        }
        pending
    }

    /// Whether `p`, a `move`, was queued for a version that a `copy` on the same tier pair
    /// queued within [`super::REQUEUE_AFTER`] (the two share the item's subject).
    pub(super) fn behind_a_copy(
        &self,
        cx: &Context<'_>,
        bucket: &BucketState,
        p: &Pending,
    ) -> bool {
        if cx.policy.action != Action::Move {
            return false;
        }
        let now = Instant::now();
        let policies = &self.system.config.policies;
        policies.iter().enumerate().any(|(position, other)| {
            other.action == Action::Copy
                && other.from == cx.policy.from
                && other.to == cx.policy.to
                && bucket.queued_recently(position, &p.name, p.queued.seq, now)
        })
    }
}

/// How long before `now` the server time `at` was (zero if after it: clocks differ).
pub(super) fn since(now: time::OffsetDateTime, at: time::OffsetDateTime) -> std::time::Duration {
    (now - at).try_into().unwrap_or_default()
}

/// The error for an object whose meta has no usable ingest digest.
fn missing_digest(tier: &str, bucket: &str, name: &str) -> Error {
    IntegrityFailure {
        bucket: bucket.to_string(),
        object: name.to_string(),
        tier: tier.to_string(),
        what: "sha-256",
        expected: "a digest in the object's meta (SHA-256=<base64url>)".into(),
        actual: "none, or malformed".into(),
    }
    .into()
}
