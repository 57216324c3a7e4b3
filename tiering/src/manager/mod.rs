//! The storage manager (`cim-storage run`): decides, never moves data itself.
//!
//! Every `[manager] interval` it evaluates the policies against what each JetStream tier holds
//! and queues work for the mirror and upload roles (see [`crate::work`]). It reads each bucket
//! once in full and then follows it (see [`crate::jetstream::scan`] and [`state`]): a pass reads
//! only what changed since the last one, decides in memory, and queues what is due with
//! pipelined publishes, skipping what it queued recently. A pass is cheap to repeat: queued
//! items are de-duplicated by id, and handlers re-check state before acting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cim_policies::{Action, Config, Policy, Route};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::access::AccessLog;
use crate::error::Error;
use crate::jetstream::JetStreamTier;
use crate::metrics::{self, Backlog};
use crate::system::System;
use crate::work::WorkItem;

mod decide;
pub mod explain;
pub mod leader;
pub mod plan;
mod s3expire;
mod skip;
mod state;
mod temporary;

use skip::{skipped, Skip};
pub use state::REQUEUE_AFTER;
use state::{BucketState, Queued, State};

/// What one pass found and queued.
#[derive(Debug, Default, Clone)]
pub struct PassReport {
    /// Objects due for a move or copy.
    pub due: usize,
    /// Items newly queued (not de-duplicated).
    pub queued: usize,
    /// Tiers, buckets or objects passed over because of an error (see [`Manager::pass`]).
    pub skipped: usize,
    /// Per policy, what is due and not yet done (for `cim-storage status`).
    pub backlog: Vec<crate::status::PolicyBacklog>,
    /// What a planner's pass would have queued, in order (empty for a manager that queues).
    pub planned: Vec<plan::Planned>,
    /// The temporary copies (`restore --for`) a planner's pass found still running, which no
    /// policy acts on until then (empty for a manager that queues).
    pub temporary: Vec<plan::Temporary>,
}

/// A pass that takes longer is abandoned (logged) and the next one starts after the interval.
/// Far above a pass over a large deployment; it only keeps a hung pass from stopping the
/// manager for good. (A constant until the configuration grows a `[manager]` knob for it.)
pub const PASS_DEADLINE: Duration = Duration::from_secs(15 * 60);

/// The storage manager.
pub struct Manager {
    system: Arc<System>,
    /// The indexes and what was queued; one pass at a time.
    state: Mutex<State>,
    /// A planner (`cim-storage plan`): passes decide as always but queue nothing, and report
    /// what they would have queued.
    dry: bool,
    /// The access records (the policies' `idle`).
    access: AccessLog,
}

/// An item to queue and what to remember of it.
struct Pending {
    item: WorkItem,
    name: Arc<str>,
    queued: Queued,
    /// Why it is due, for a planner (`None` for a manager that queues: no string per object).
    why: Option<String>,
}

/// Why this version's manager cannot carry out `config`'s policies, if it cannot. An enabled
/// `expire` is carried out on JetStream tiers by the mirror role and on S3 tiers by the upload
/// role (see `docs/architecture.md`, "Expire"). On an S3 tier it decides from the catalog,
/// which keeps no metadata or headers, and reads are not followed for S3 tiers: an `expire`
/// from an S3 tier with such conditions (or `idle`), or
/// from `"*"` while a `move` to S3 leaves objects only S3 holds, would never match there, and
/// the manager must not look as if it kept a retention it does not keep.
pub fn unsupported(config: &Config) -> Option<String> {
    let is_s3 = |tier: &str| matches!(config.tier(tier), Some(cim_policies::Tier::S3(_)));
    // From every tier, S3 decides only for objects a `move` left there alone.
    let moves_to_s3 = config
        .policies
        .iter()
        .any(|p| p.enabled && p.action == Action::Move && is_s3(&p.to));
    let expiring: Vec<String> = config
        .policies
        .iter()
        .enumerate()
        .filter(|(_, p)| p.enabled && p.action == Action::Expire)
        .filter(|(_, p)| is_s3(&p.from) || (p.from == cim_policies::ALL_TIERS && moves_to_s3))
        .filter(|(_, p)| p.conditions.needs_attributes() || p.conditions.needs_access())
        .map(|(i, p)| format!("policy[{i}] {:?}", p.name))
        .collect();
    (!expiring.is_empty()).then(|| {
        format!(
            "{}: an expire acting on an S3 tier cannot match metadata, header or idle \
             conditions there (it decides from the catalog, which keeps no metadata or headers, \
             and does not follow reads for S3 tiers yet); drop those conditions, expire \
             from the JetStream tiers only, or set enabled = false (cim-storage plan and explain \
             show what it would do)",
            expiring.join(", ")
        )
    })
}

/// Whether the manager acts on `policy` in its passes: every enabled policy.
fn acts(policy: &Policy) -> bool {
    policy.enabled
}

impl Manager {
    /// A manager over the role's connections.
    pub fn new(system: Arc<System>) -> Self {
        for policy in &system.config.policies {
            for reason in Skip::ALL {
                metrics::manager_skip_reason(&policy.name, reason.as_str());
            }
        }
        Self {
            access: AccessLog::new(&system),
            system,
            state: Mutex::new(State::default()),
            dry: false,
        }
    }

    /// A planner over the role's connections: its [`Manager::pass`] runs the manager's very
    /// evaluation against the tiers' current state, queues nothing, and lists in
    /// [`PassReport::planned`] what it would have queued, with the policy and the reason.
    pub fn planner(system: Arc<System>) -> Self {
        Self {
            dry: true,
            ..Self::new(system)
        }
    }

    /// Plans while this manager leads, until `shutdown`; stands by while another manager
    /// leads (see [`leader`]). Losing the lease, or no longer being sure of it, stops planning
    /// at once — a pass under way is dropped — and this manager stands by again.
    pub async fn run(&self, shutdown: CancellationToken) {
        let Some(leadership) = self.open_leadership(&shutdown).await else {
            return;
        };
        loop {
            leader::set_leading(false);
            let Some(lease) = leadership.acquire(&shutdown).await else {
                return;
            };
            leader::set_leading(true);
            tracing::info!(holder = leadership.holder(), "leading: this manager plans");
            tokio::select! {
                _ = self.plan_while_leading(&shutdown) => {
                    leader::set_leading(false);
                    lease.release().await;
                    return;
                }
                _ = leader::lost(&lease) => {
                    tracing::warn!("leadership lost (taken over, or not renewed in time); planning stopped, standing by");
                }
            }
        }
    }

    /// The leadership bucket, retried until it opens or `shutdown`.
    async fn open_leadership(&self, shutdown: &CancellationToken) -> Option<leader::Leadership> {
        loop {
            let opened = tokio::select! {
                opened = crate::retry::retry("open leadership bucket", crate::retry::Backoff::STARTUP, || {
                    leader::Leadership::open(&self.system)
                }) => opened,
                _ = shutdown.cancelled() => return None,
            };
            match opened {
                Ok(leadership) => return Some(leadership),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the leadership bucket; trying again")
                }
            }
        }
    }

    /// Runs passes every interval until `shutdown`, which also cancels a pass under way:
    /// dropping a pass is safe, it only queues items and queueing is idempotent.
    async fn plan_while_leading(&self, shutdown: &CancellationToken) {
        let interval = self.system.config.manager.interval;
        loop {
            let pass = tokio::select! {
                pass = tokio::time::timeout(PASS_DEADLINE, self.pass()) => pass,
                _ = shutdown.cancelled() => return,
            };
            match pass {
                Ok(Ok(report)) => {
                    tracing::debug!(due = report.due, queued = report.queued, "manager pass");
                    self.report_storage().await;
                }
                Ok(Err(e)) => {
                    crate::status::failed(format_args!("manager pass: {e}"));
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
        let started = Instant::now();
        let now = time::OffsetDateTime::now_utc();
        let mut state = self.state.lock().await;
        let catalog = if self.needs_catalog() {
            let state = &mut *state;
            match self.system.catalog.follow(&mut state.catalog).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "catalog unreadable this pass");
                    Err(e.to_string())
                }
            }
        } else {
            Ok(())
        };
        let access = if self.needs_access() {
            let state = &mut *state;
            match self.access.follow(&mut state.access).await {
                Ok(_) => Ok(()),
                Err(e) => {
                    tracing::warn!(error = %e, "access records unreadable this pass");
                    Err(e.to_string())
                }
            }
        } else {
            Ok(())
        };
        for (position, policy) in self.system.config.policies.iter().enumerate() {
            if !acts(policy) {
                continue;
            }
            let span = tracing::info_span!("policy", policy = %policy.name, from = %policy.from, to = %policy.to);
            let context = Context {
                position,
                policy,
                route: self.system.config.route(policy),
                now,
                catalog: catalog.as_ref().err(),
                access: access.as_ref().err(),
            };
            self.evaluate(&context, &mut state, &mut report)
                .instrument(span)
                .await?;
        }
        self.expire_temporary(&mut state, now, &mut report).await;
        state.forget_untouched();
        let held = self.report_held(&mut state, catalog.is_ok());
        metrics::manager_pass(started.elapsed());
        crate::status::record_summary(crate::status::ManagerSummary {
            at: time::OffsetDateTime::now_utc(),
            host: crate::push::host_name(),
            pass_seconds: started.elapsed().as_secs_f64(),
            held,
            backlog: report.backlog.clone(),
        });
        Ok(report)
    }

    /// Sets what each tier holds: JetStream tiers from the indexes of the buckets the policies
    /// cover, S3 tiers from the catalog (when it was read this pass). Returns it per bucket.
    fn report_held(&self, state: &mut State, catalog_read: bool) -> Vec<crate::status::Held> {
        let mut per_bucket = Vec::new();
        let mut held: std::collections::BTreeMap<&str, (u64, u64)> = Default::default();
        for ((tier, name), bucket) in state.buckets.iter_mut() {
            let (objects, bytes) = bucket.held();
            let sum = held.entry(tier.as_str()).or_default();
            *sum = (sum.0 + objects, sum.1 + bytes);
            per_bucket.push(crate::status::Held {
                tier: tier.clone(),
                bucket: name.clone(),
                objects,
                bytes,
            });
        }
        for (tier, (objects, bytes)) in held {
            metrics::tier_held(tier, objects, bytes);
        }
        if !(catalog_read && self.needs_catalog()) {
            per_bucket.sort_by(|a, b| (&a.tier, &a.bucket).cmp(&(&b.tier, &b.bucket)));
            return per_bucket;
        }
        let at = (state.catalog.cursor(), state.catalog.len());
        for (name, tier) in &self.system.config.tiers {
            if !matches!(tier, cim_policies::Tier::S3(_)) {
                continue;
            }
            let by_bucket = match state.catalog_held.get(name) {
                Some((counted, held)) if *counted == at => held.clone(),
                _ => {
                    let held = state.catalog.held_by_bucket(name);
                    state.catalog_held.insert(name.clone(), (at, held.clone()));
                    held
                }
            };
            let (mut objects, mut bytes) = (0, 0);
            for (bucket, (o, b)) in by_bucket {
                objects += o;
                bytes += b;
                per_bucket.push(crate::status::Held {
                    tier: name.clone(),
                    bucket,
                    objects: o,
                    bytes: b,
                });
            }
            metrics::tier_held(name, objects, bytes);
        }
        per_bucket.sort_by(|a, b| (&a.tier, &a.bucket).cmp(&(&b.tier, &b.bucket)));
        per_bucket
    }

    /// Sets the JetStream storage used (and its limit, when known) of every JetStream tier, all
    /// asked at once; a tier that does not answer keeps its last values (and is logged).
    async fn report_storage(&self) {
        let tiers = self
            .system
            .config
            .tiers
            .keys()
            .filter_map(|name| self.system.jetstream_tier(name).ok());
        let asked = tiers.map(|tier| async move { (tier.name(), tier.storage().await) });
        for (tier, answer) in futures::future::join_all(asked).await {
            match answer {
                Ok((used, limit)) => metrics::tier_storage(tier, used, limit),
                Err(e) => tracing::debug!(tier, error = %e, "no jetstream account info"),
            }
        }
    }

    /// Whether some policy decides on the catalog: cluster → S3 (copies, damage, deletes),
    /// leaf → cluster `move` (a copy verified beyond the cluster lets the leaf copy go) and an
    /// `expire` acting on an S3 tier (the copies recorded there).
    fn needs_catalog(&self) -> bool {
        let config = &self.system.config;
        config.policies.iter().any(|p| {
            acts(p)
                && (config.route(p) == Route::ClusterToS3
                    || p.action == Action::Move
                    || (p.action == Action::Expire && !s3expire::s3_tiers(config, p).is_empty()))
        })
    }

    /// Whether some enabled policy tests `idle`: only then are the access records followed.
    fn needs_access(&self) -> bool {
        self.system
            .config
            .policies
            .iter()
            .any(|p| acts(p) && p.conditions.needs_access())
    }

    /// Whether a policy the manager acts on tests `idle` for `bucket`'s objects on `tier`.
    fn bucket_needs_access(&self, tier: &str, bucket: &str) -> bool {
        self.system
            .config
            .policies
            .iter()
            .any(|p| acts(p) && p.applies_to(tier, bucket) && p.conditions.needs_access())
    }

    /// One policy over every bucket of its source tier.
    async fn evaluate(
        &self,
        cx: &Context<'_>,
        state: &mut State,
        report: &mut PassReport,
    ) -> Result<(), Error> {
        let policy = cx.policy;
        let mut due = Backlog::default();
        for tier in self.source_tiers(policy) {
            let tier = self.system.jetstream_tier(tier)?;
            self.evaluate_tier(cx, tier, state, &mut due, report)
                .await?;
        }
        // After the JetStream tiers: `from = "*"` leaves to them what their indexes hold.
        if policy.action == Action::Expire {
            let s3 = s3expire::s3_tiers(&self.system.config, policy);
            for (i, tier) in s3.iter().enumerate() {
                self.evaluate_s3_tier(cx, tier, &s3[..i], state, &mut due, report)
                    .await;
            }
        }
        report.due += due.objects as usize;
        metrics::backlog(&policy.name, &policy.from, &policy.to, due);
        report.backlog.push(crate::status::PolicyBacklog {
            policy: policy.name.clone(),
            from: policy.from.clone(),
            to: policy.to.clone(),
            objects: due.objects,
            bytes: due.bytes,
            oldest_due_seconds: due.oldest_due.as_secs(),
        });
        Ok(())
    }

    /// The JetStream tiers whose objects `policy` decides on: its `from`, or for an `expire`
    /// every JetStream tier it acts on (all of them for `from = "*"`).
    fn source_tiers<'p>(&'p self, policy: &'p Policy) -> Vec<&'p str> {
        if policy.action != Action::Expire {
            return vec![policy.from.as_str()];
        }
        self.system
            .config
            .tiers
            .iter()
            .filter(|(name, tier)| {
                matches!(tier, cim_policies::Tier::JetStream(_)) && policy.acts_on(name)
            })
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// One policy over every bucket of one of its source tiers.
    async fn evaluate_tier(
        &self,
        cx: &Context<'_>,
        tier: &JetStreamTier,
        state: &mut State,
        due: &mut Backlog,
        report: &mut PassReport,
    ) -> Result<(), Error> {
        let policy = cx.policy;
        let buckets = match tier.bucket_names().await {
            Ok(buckets) => buckets,
            Err(e) => {
                skipped(policy, Skip::TierUnavailable, &e, report);
                // Keep what is known of the tier's buckets for when it is back.
                let from = tier.name().to_string();
                let known: Vec<_> = state
                    .buckets
                    .keys()
                    .filter(|(t, _)| *t == from)
                    .cloned()
                    .collect();
                state.touched.extend(known);
                return Ok(());
            }
        };
        // For leaf → cluster `move`: the cluster's buckets, listed once (a bucket's stream is
        // created by the mirror role, and asking a stream being created for its info can hang
        // for the request's whole deadline). Unlisted, no eviction is queued this pass.
        let mut cluster_buckets = None;
        if cx.route == Route::LeafToCluster && policy.action == Action::Move {
            match self.system.jetstream_tier(&policy.to)?.bucket_names().await {
                Ok(names) => cluster_buckets = Some(names),
                Err(e) => skipped(policy, Skip::TierUnavailable, &e, report),
            }
        }
        for bucket in buckets.iter().filter(|b| policy.matches_bucket(b)) {
            if let Err((reason, e)) = self
                .evaluate_bucket(
                    cx,
                    tier,
                    bucket,
                    cluster_buckets.as_deref(),
                    state,
                    due,
                    report,
                )
                .await
            {
                skipped(policy, reason, &e, report);
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn evaluate_bucket(
        &self,
        cx: &Context<'_>,
        tier: &JetStreamTier,
        bucket: &str,
        cluster_buckets: Option<&[String]>,
        state: &mut State,
        due: &mut Backlog,
        report: &mut PassReport,
    ) -> Result<(), (Skip, Error)> {
        let policy = cx.policy;
        if cx.route == Route::LeafToCluster {
            self.ensure_source(cx, bucket, state, report).await?;
            // Replication is continuous; only `move` has per-object work (eviction).
            if policy.action != Action::Move {
                return Ok(());
            }
        }
        if cx.route == Route::ClusterToS3 || policy.action == Action::Move {
            if let Some(message) = cx.catalog {
                return Err((
                    Skip::CatalogUnavailable,
                    Error::Catalog {
                        op: "follow",
                        key: "*".into(),
                        source: message.clone().into(),
                    },
                ));
            }
        }
        // Without the access records an object read yesterday would look never read.
        let needs_access = self.bucket_needs_access(tier.name(), bucket);
        if let (Some(message), true) = (cx.access, needs_access) {
            return Err((
                Skip::AccessUnavailable,
                Error::Access {
                    op: "follow",
                    key: "*".into(),
                    source: message.clone().into(),
                },
            ));
        }
        // The source bucket's index, and for leaf → cluster the cluster's: eviction is queued
        // only once the cluster holds the version.
        let mut source = state.take(tier.name(), bucket);
        if self.system.config.policies.iter().any(|p| {
            acts(p) && p.applies_to(tier.name(), bucket) && p.conditions.needs_attributes()
        }) {
            source.index.keep_attributes();
        }
        let followed = follow(tier, bucket, &mut source).await;
        let mut target = None;
        if let (Ok(()), Some(listed)) = (&followed, cluster_buckets) {
            let mut hub_state = state.take(&policy.to, bucket);
            let result = match self.system.jetstream_tier(&policy.to) {
                Ok(hub) if listed.iter().any(|b| b == bucket) => {
                    follow(hub, bucket, &mut hub_state).await
                }
                // Not on the cluster (yet): nothing there to evict against.
                Ok(_) => {
                    hub_state = BucketState::default();
                    Ok(())
                }
                Err(e) => Err(e),
            };
            target = Some((hub_state, result));
        }
        let result = match (followed, target.as_mut()) {
            (Err(e), _) => Err((Skip::BucketUnavailable, e)),
            (Ok(()), Some((_, Err(_)))) => Ok(false),
            (Ok(()), _) => Ok(true),
        };
        let result = match result {
            Ok(true) => {
                let hub_index = target.as_ref().map(|(s, _)| &s.index);
                let pending = self.plan(
                    cx,
                    tier,
                    bucket,
                    &source,
                    hub_index,
                    &state.catalog,
                    needs_access.then_some(&state.access),
                    due,
                    report,
                );
                self.queue(cx, pending, &mut source, report).await;
                source.prune();
                Ok(())
            }
            Ok(false) => Ok(()), // reported below
            Err(e) => Err(e),
        };
        state.put(tier.name(), bucket, source);
        if let Some((hub_state, hub_result)) = target {
            state.put(&policy.to, bucket, hub_state);
            if let Err(e) = hub_result {
                return Err((Skip::BucketUnavailable, e));
            }
        }
        result
    }

    /// Queues the bucket's `EnsureSource` unless it was queued within [`REQUEUE_AFTER`].
    async fn ensure_source(
        &self,
        cx: &Context<'_>,
        bucket: &str,
        state: &mut State,
        report: &mut PassReport,
    ) -> Result<(), (Skip, Error)> {
        let key = (cx.position, bucket.to_string());
        let now = Instant::now();
        if state
            .sources
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < REQUEUE_AFTER)
        {
            return Ok(());
        }
        let source = WorkItem::EnsureSource {
            policy: cx.policy.name.clone(),
            from: cx.policy.from.clone(),
            to: cx.policy.to.clone(),
            bucket: bucket.to_string(),
        };
        if self.dry {
            report.planned.push(plan::Planned {
                item: source,
                why: "sources the whole bucket to the cluster, continuously".into(),
            });
            state.sources.insert(key, now);
            return Ok(());
        }
        let role = source.role();
        let queued = self
            .system
            .work
            .publish(&source)
            .await
            .map_err(|e| (Skip::QueueUnavailable, e))?;
        if queued {
            report.queued += 1;
            metrics::dispatched(role);
        }
        state.sources.insert(key, now);
        Ok(())
    }

    /// Queues the items (pipelined) and remembers those the stream took or already held.
    async fn queue(
        &self,
        cx: &Context<'_>,
        pending: Vec<Pending>,
        bucket: &mut BucketState,
        report: &mut PassReport,
    ) {
        for (p, result) in self.publish(pending, report).await {
            match result {
                // Refused because this object's copy (another policy, same step) is still
                // pending: asked again next pass, so the move follows the copy at once.
                Ok(false) if self.behind_a_copy(cx, bucket, &p) => {}
                Ok(_) => {
                    bucket.queued.insert((cx.position, p.name), p.queued);
                }
                Err(e) => skipped(cx.policy, Skip::QueueUnavailable, &e, report),
            }
        }
    }

    /// Publishes `pending` (pipelined) and hands back each item with the stream's answer
    /// (`Ok(true)` queued — counted here —, `Ok(false)` already held); a planner publishes
    /// nothing and reports what it would queue, and gets nothing back.
    async fn publish(
        &self,
        pending: Vec<Pending>,
        report: &mut PassReport,
    ) -> Vec<(Pending, Result<bool, Error>)> {
        if pending.is_empty() {
            return Vec::new();
        }
        if self.dry {
            report
                .planned
                .extend(pending.into_iter().map(|p| plan::Planned {
                    item: p.item,
                    why: p.why.unwrap_or_default(),
                }));
            return Vec::new();
        }
        let items: Vec<WorkItem> = pending.iter().map(|p| p.item.clone()).collect();
        let results = self.system.work.publish_all(&items).await;
        let answered: Vec<_> = pending.into_iter().zip(results).collect();
        for (p, result) in &answered {
            if let Ok(true) = result {
                report.queued += 1;
                metrics::dispatched(p.item.role());
                tracing::debug!(id = %p.item.id(), "queued");
            }
        }
        answered
    }
}

/// Brings the index of a listed bucket up to date. One deleted since it was listed is empty,
/// not an error (asked only when the direct get fails: nats-server answers a direct get on a
/// missing stream with 503 only after seconds, so callers follow only listed buckets).
async fn follow(tier: &JetStreamTier, bucket: &str, state: &mut BucketState) -> Result<(), Error> {
    match state.follow(&tier.direct(bucket), bucket).await {
        Ok(()) => Ok(()),
        Err(e) => match tier.stream_exists(bucket).await {
            Ok(false) => {
                *state = BucketState::default();
                Ok(())
            }
            _ => Err(e),
        },
    }
}

/// What every bucket of one policy's evaluation shares.
struct Context<'a> {
    /// The policy's position in the configuration (keys what was queued for it).
    position: usize,
    policy: &'a Policy,
    route: Route,
    now: time::OffsetDateTime,
    /// Why the catalog could not be read this pass, if it could not.
    catalog: Option<&'a String>,
    /// Why the access records could not be read this pass, if they could not.
    access: Option<&'a String>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::unsupported;

    fn config(policies: &str) -> cim_policies::Config {
        let text = format!(
            r#"
[nats]
url = "nats://127.0.0.1:4222"

[tiers.leaf]
kind = "jetstream"
domain = "leaf"
role = "leaf"

[tiers.hub]
kind = "jetstream"
domain = "hub"

[tiers.s3]
kind = "s3"
endpoint = "http://127.0.0.1:3900"
region = "garage"
bucket = "cim"
{policies}"#
        );
        cim_policies::Config::from_toml_str(&text, "test.toml").unwrap()
    }

    fn expire(from: &str) -> String {
        format!(
            "[[policy]]\nname = \"gone\"\nbuckets = [\"*\"]\nfrom = \"{from}\"\naction = \"expire\"\nafter = \"90d\"\n"
        )
    }

    const COPY: &str = "[[policy]]\nname = \"up\"\nbuckets = [\"*\"]\nfrom = \"hub\"\nto = \"s3\"\naction = \"copy\"\nafter = \"1h\"\n";
    const MOVE: &str = "[[policy]]\nname = \"up\"\nbuckets = [\"*\"]\nfrom = \"hub\"\nto = \"s3\"\naction = \"move\"\nafter = \"1h\"\n";

    /// Carried out on JetStream and S3 tiers; refused, naming the policy, only where an S3
    /// tier would need metadata or headers the catalog does not keep.
    #[test]
    fn expire_is_refused_only_where_no_role_carries_it_out() {
        assert_eq!(unsupported(&config(&expire("hub"))), None);
        assert_eq!(unsupported(&config(&expire("leaf"))), None);
        assert_eq!(unsupported(&config(&expire("s3"))), None);
        assert_eq!(
            unsupported(&config(&format!("{COPY}{}", expire("*")))),
            None
        );
        assert_eq!(
            unsupported(&config(&format!("{MOVE}{}", expire("*")))),
            None
        );
        let tagged = |from| format!("{}metadata = {{ kind = \"tmp\" }}\n", expire(from));
        let s3 = unsupported(&config(&format!("{MOVE}{}", tagged("s3")))).unwrap();
        assert!(s3.contains("policy[1] \"gone\""), "{s3}");
        assert_eq!(unsupported(&config(&tagged("*"))), None);
        assert!(unsupported(&config(&format!("{MOVE}{}", tagged("*")))).is_some());
        assert_eq!(unsupported(&config(&tagged("hub"))), None);
        let off = format!("{}enabled = false\n", tagged("s3"));
        assert_eq!(unsupported(&config(&off)), None);
    }
}
