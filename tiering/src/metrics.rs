//! Every metric the roles export, in one place (names, labels, descriptions, one typed helper
//! each), and the Prometheus recorder
//! (served by [`crate::http`]). `docs/metrics.md` lists exactly these; the test
//! `tests/tests/metrics_doc.rs` compares the two with what the roles expose.
//!
//! Names follow Prometheus conventions: `cim_` prefix, base units (`_bytes`, `_seconds`),
//! counters end in `_total`. Labels are low-cardinality only — `tier`, `from_tier`, `to_tier`,
//! `policy`, `role`, `outcome`, `reason` — never an object or bucket name; tier label values are
//! the tier names of the configuration. Distinctions of kind are separate names (e.g.
//! [`GC_REMOVED_BLOBS`] and [`GC_REMOVED_MANIFESTS`]), so a sum over a name never adds apples
//! to pears.
//!
//! A role registers at start-up every series it may ever set, at zero (see [`role_started`]):
//! an alert on `increase(...)` then sees the first failure, and a series that is absent means
//! "this role never sets it", not "nothing happened yet".

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cim_policies::{Action, Config, Route, Tier};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::PrometheusHandle;

use crate::work::Role as WorkRole;

/// 1, labelled with the software's `version` and the `role` of the process.
pub const BUILD_INFO: &str = "cim_build_info";
/// Objects a tier currently holds (JetStream tiers from the manager's index, S3 tiers from the
/// catalog), by tier.
pub const TIER_OBJECTS: &str = "cim_tier_objects";
/// Bytes of the objects a tier currently holds (as recorded at ingest), by tier.
pub const TIER_BYTES: &str = "cim_tier_bytes";
/// JetStream storage used in a JetStream tier's domain (its account info), by tier.
pub const TIER_STORAGE_USED: &str = "cim_tier_storage_used_bytes";
/// The JetStream storage limit of a tier's domain (the account's `max_storage`, else the
/// server's file store limit), by tier; absent when unknown.
pub const TIER_STORAGE_LIMIT: &str = "cim_tier_storage_limit_bytes";
/// Transfer attempts that ended, by tier pair and outcome (`ok`, `failed`).
pub const TRANSFERS: &str = "cim_transfers_total";
/// Transfers that failed, by tier pair and reason (one of [`TRANSFER_FAILURE_REASONS`], from
/// each crate's `Error::reason`).
pub const TRANSFER_FAILURES: &str = "cim_transfer_failures_total";
/// Every `reason` of [`TRANSFER_FAILURES`] (`cim_tiering::Error::reason` and
/// `cim_gateway::Error::reason` answer only these); each is registered at zero per tier pair,
/// so an alert sees the first failure of any kind.
pub const TRANSFER_FAILURE_REASONS: &[&str] = &[
    "nats",
    "not_ready",
    "integrity",
    "bad_meta",
    "config",
    "internal",
    "s3_unreachable",
    "s3_throttled",
    "s3_server_error",
    "s3_denied",
    "s3_refused",
    "unverified",
    "io",
    "refused",
];
/// Bytes of object content moved and verified at the destination, by tier pair.
pub const TRANSFER_BYTES: &str = "cim_transfer_bytes_total";
/// Seconds one successful transfer took, from its start to its verification, by tier pair.
pub const TRANSFER_DURATION: &str = "cim_transfer_duration_seconds";
/// Cluster copies the mirror role verified as they arrived (its follower hashed them while
/// they were sourced), by the tier holding the copy.
pub const MIRROR_VERIFIED_ON_ARRIVAL: &str = "cim_mirror_verified_on_arrival_total";
/// Cluster copies the mirror role read back in full to verify them (the follower had no
/// verdict), by the tier holding the copy.
pub const MIRROR_READ_BACKS: &str = "cim_mirror_read_backs_total";
/// Objects dropped from a tier after verified replication, by tier.
pub const EVICTIONS: &str = "cim_evictions_total";
/// Objects due for a move or copy and not yet moved, per policy (and its tier pair).
pub const BACKLOG_OBJECTS: &str = "cim_backlog_objects";
/// Bytes of the objects in [`BACKLOG_OBJECTS`].
pub const BACKLOG_BYTES: &str = "cim_backlog_bytes";
/// How long the oldest due object of a policy has been due (0 when nothing is due).
pub const BACKLOG_OLDEST_AGE: &str = "cim_backlog_oldest_age_seconds";
/// Unix time of a role's last successful pass (what a pass is depends on the role).
pub const LAST_SUCCESS: &str = "cim_last_success_timestamp_seconds";
/// Integrity check failures (digest or size mismatch), by tier holding the bad copy.
pub const INTEGRITY_FAILURES: &str = "cim_integrity_failures_total";
/// Versions marked damaged (no verified copy left anywhere), by tier whose copy failed.
pub const DAMAGED_OBJECTS: &str = "cim_damaged_objects_total";
/// User deletes carried to an S3 tier as tombstones, by tier.
pub const DELETES: &str = "cim_deletes_total";
/// Objects an `expire` policy deleted from a tier (on JetStream its copy dropped, or a delete
/// marker written there; on S3 a tombstone written there), by tier.
pub const EXPIRED: &str = "cim_expired_total";
/// Unreferenced blobs garbage collection removed from an S3 tier, by tier.
pub const GC_REMOVED_BLOBS: &str = "cim_gc_removed_blobs_total";
/// Superseded history manifests garbage collection removed from an S3 tier, by tier.
pub const GC_REMOVED_MANIFESTS: &str = "cim_gc_removed_manifests_total";
/// Items the manager queued (not counting de-duplicated ones), by the role they are for.
pub const MANAGER_DISPATCHED: &str = "cim_manager_dispatched_total";
/// Tiers, buckets or objects the manager passed over because of an error, by policy and reason.
pub const MANAGER_SKIPPED: &str = "cim_manager_skipped_total";
/// 1 while this manager leads (plans), 0 while it stands by for another.
pub const MANAGER_LEADER: &str = "cim_manager_leader";
/// Completed manager evaluation passes.
pub const MANAGER_PASSES: &str = "cim_manager_passes_total";
/// How long the manager's last completed pass took, in seconds.
pub const MANAGER_LAST_PASS_DURATION: &str = "cim_manager_last_pass_duration_seconds";
/// Work items queued or in flight, by role.
pub const WORK_BACKLOG: &str = "cim_work_backlog_items";
/// Work items handled, by role and [`WorkOutcome`].
pub const WORK_ITEMS: &str = "cim_work_items_total";
/// Objects `cim-gateway restore` handled, by target tier and [`RestoreOutcome`].
pub const RESTORE_OBJECTS: &str = "cim_restore_objects_total";
/// Bytes of object content restored (verified) into a tier, by tier.
pub const RESTORE_BYTES: &str = "cim_restore_bytes_total";
/// Blobs uploaded to an S3 tier (new content), by tier.
pub const S3_BLOBS_UPLOADED: &str = "cim_s3_blobs_uploaded_total";
/// Uploads that found their content-addressed blob already stored and reused it, by tier.
pub const S3_BLOBS_REUSED: &str = "cim_s3_blobs_reused_total";
/// Multipart parts uploaded to an S3 tier, by tier.
pub const S3_PARTS_UPLOADED: &str = "cim_s3_parts_uploaded_total";
/// Compressed bytes sent to an S3 tier (single puts and parts), by tier.
pub const S3_BYTES_UPLOADED: &str = "cim_s3_bytes_uploaded_total";
/// Counter, by `outcome`: requests answered by the `cim.storage.object.ensure` service.
pub const ENSURE_REQUESTS: &str = "cim_ensure_requests_total";
/// Counter: reads whose access record (for the policies' `idle`) could not be read or written;
/// the read itself went on (see [`crate::access`]).
pub const ACCESS_RECORD_FAILURES: &str = "cim_access_record_failures_total";
/// Histogram: seconds each restore the ensure service started took, whatever its outcome.
pub const ENSURE_RESTORE_DURATION: &str = "cim_ensure_restore_duration_seconds";

/// Upper bounds of the [`TRANSFER_DURATION`] buckets, in seconds: from a small object on
/// loopback to a large one over a slow link.
const TRANSFER_DURATION_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// How often the process metrics (`process_*`) are refreshed.
const PROCESS_REFRESH: Duration = Duration::from_secs(5);

/// The process a metric comes from: the `role` label of [`BUILD_INFO`] and [`LAST_SUCCESS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `cim-storage run`.
    Manager,
    /// `cim-storage mirror`.
    Mirror,
    /// `cim-gateway upload`.
    Upload,
    /// `cim-gateway restore` (one-shot).
    Restore,
    /// `cim-gateway gc` (one-shot).
    Gc,
    /// `cim-gateway scrub` (one-shot).
    Scrub,
    /// `cim-gateway serve` (the `cim.storage.object.ensure` service).
    Serve,
}

impl Role {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Mirror => "mirror",
            Role::Upload => "upload",
            Role::Restore => "restore",
            Role::Gc => "gc",
            Role::Scrub => "scrub",
            Role::Serve => "serve",
        }
    }
}

impl From<WorkRole> for Role {
    fn from(role: WorkRole) -> Self {
        match role {
            WorkRole::Mirror => Role::Mirror,
            WorkRole::Upload => Role::Upload,
        }
    }
}

/// How a work item's handling ended: the `outcome` label of [`WORK_ITEMS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkOutcome {
    /// Handled; acked.
    Done,
    /// Failed; offered again after a delay.
    Retry,
    /// Failed `max_deliver` times (or permanently); terminated. The manager queues it again
    /// after the duplicate window.
    GivenUp,
    /// Undecodable; terminated.
    Invalid,
    /// Of a newer format; left for a newer role.
    Newer,
    /// No progress for `ack_wait`; abandoned and retried.
    Stalled,
    /// In flight at shutdown; released for redelivery.
    Released,
}

impl WorkOutcome {
    /// Every outcome, for registering the series at zero.
    pub const ALL: [WorkOutcome; 7] = [
        WorkOutcome::Done,
        WorkOutcome::Retry,
        WorkOutcome::GivenUp,
        WorkOutcome::Invalid,
        WorkOutcome::Newer,
        WorkOutcome::Stalled,
        WorkOutcome::Released,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkOutcome::Done => "done",
            WorkOutcome::Retry => "retry",
            WorkOutcome::GivenUp => "given_up",
            WorkOutcome::Invalid => "invalid",
            WorkOutcome::Newer => "newer",
            WorkOutcome::Stalled => "stalled",
            WorkOutcome::Released => "released",
        }
    }
}

/// What `restore` did with one object: the `outcome` label of [`RESTORE_OBJECTS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreOutcome {
    /// Restored (verified), or already present.
    Restored,
    /// Left alone (a different version on the target, a deleted object, a newer format).
    Skipped,
    /// Could not be restored.
    Failed,
}

impl RestoreOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreOutcome::Restored => "restored",
            RestoreOutcome::Skipped => "skipped",
            RestoreOutcome::Failed => "failed",
        }
    }
}

/// The objects due for one policy and not yet moved, as one pass of the manager saw them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// How many.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// How long the one due longest has been due (zero when none is).
    pub oldest_due: Duration,
}

impl Backlog {
    /// Adds one object of `bytes`, due for `due_for`.
    pub fn add(&mut self, bytes: u64, due_for: Duration) {
        self.objects += 1;
        self.bytes += bytes;
        self.oldest_due = self.oldest_due.max(due_for);
    }
}

/// The recorder every role installs: the Prometheus text exporter with the histogram buckets
/// the metrics above need (without them a histogram would be rendered as a summary).
fn builder() -> metrics_exporter_prometheus::PrometheusBuilder {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(TRANSFER_DURATION.to_string()),
            TRANSFER_DURATION_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(ENSURE_RESTORE_DURATION.to_string()),
                TRANSFER_DURATION_BUCKETS,
            )
        })
        .expect("the bucket list is not empty")
}

/// Installs the global Prometheus recorder and describes every metric; the handle renders
/// what it holds (served on `/metrics` by [`crate::http::serve`], which also runs its upkeep).
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = builder().install_recorder()?;
    describe();
    describe_s3_requests();
    Ok(handle)
}

/// Announces a process of `role` ([`BUILD_INFO`]), starts refreshing the process metrics, and
/// registers at zero every series the role may set for the tiers and policies of `config`.
/// Needs a running Tokio runtime. Without an installed recorder (a one-shot command that
/// reports nowhere) everything here is a no-op.
pub fn role_started(role: Role, config: &Config) {
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "role" => role.as_str()).set(1.0);
    let collector = metrics_process::Collector::default();
    collector.describe();
    collector.collect();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(PROCESS_REFRESH);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            collector.collect();
        }
    });
    for tier in config.tiers.keys() {
        counter!(INTEGRITY_FAILURES, "tier" => tier.clone()).increment(0);
    }
    let is_s3 = |name: &str| matches!(config.tier(name), Some(Tier::S3(_)));
    match role {
        Role::Manager => {
            gauge!(MANAGER_LEADER).set(0.0);
            counter!(MANAGER_PASSES).increment(0);
            for work in [WorkRole::Mirror, WorkRole::Upload] {
                counter!(MANAGER_DISPATCHED, "role" => work.as_str()).increment(0);
            }
            for policy in &config.policies {
                backlog(&policy.name, &policy.from, &policy.to, Backlog::default());
            }
        }
        Role::Mirror | Role::Upload => {
            let work_role = if role == Role::Mirror {
                WorkRole::Mirror
            } else {
                WorkRole::Upload
            };
            for outcome in WorkOutcome::ALL {
                counter!(WORK_ITEMS, "role" => work_role.as_str(), "outcome" => outcome.as_str())
                    .increment(0);
            }
            // Any tier may be expired from (`from = "*"` names none): the mirror role's
            // JetStream tiers, the upload role's S3 tiers.
            for (name, tier) in &config.tiers {
                if matches!(tier, Tier::S3(_)) == (role == Role::Upload) {
                    counter!(EXPIRED, "tier" => name.clone()).increment(0);
                }
            }
            for policy in &config.policies {
                let route = config.route(policy);
                let ours = match role {
                    // Leaf → cluster copies are stream sourcing: no per-object work, nothing
                    // counted.
                    Role::Mirror => route == Route::LeafToCluster && policy.action == Action::Move,
                    _ => route == Route::ClusterToS3,
                };
                if !ours {
                    continue;
                }
                let (from, to) = (policy.from.as_str(), policy.to.as_str());
                for outcome in ["ok", "failed"] {
                    counter!(TRANSFERS, "from_tier" => from.to_string(), "to_tier" => to.to_string(), "outcome" => outcome)
                        .increment(0);
                }
                for reason in TRANSFER_FAILURE_REASONS {
                    counter!(TRANSFER_FAILURES, "from_tier" => from.to_string(), "to_tier" => to.to_string(), "reason" => *reason)
                        .increment(0);
                }
                counter!(TRANSFER_BYTES, "from_tier" => from.to_string(), "to_tier" => to.to_string())
                    .increment(0);
                // Registered without a sample: rendered as an empty histogram.
                let _ = histogram!(TRANSFER_DURATION, "from_tier" => from.to_string(), "to_tier" => to.to_string());
                if policy.action == Action::Move {
                    counter!(EVICTIONS, "tier" => from.to_string()).increment(0);
                }
                if role == Role::Mirror {
                    for name in [MIRROR_VERIFIED_ON_ARRIVAL, MIRROR_READ_BACKS] {
                        counter!(name, "tier" => to.to_string()).increment(0);
                    }
                }
                if role == Role::Upload && is_s3(to) {
                    counter!(DAMAGED_OBJECTS, "tier" => from.to_string()).increment(0);
                    for name in [
                        DELETES,
                        S3_BLOBS_UPLOADED,
                        S3_BLOBS_REUSED,
                        S3_PARTS_UPLOADED,
                        S3_BYTES_UPLOADED,
                    ] {
                        counter!(name, "tier" => to.to_string()).increment(0);
                    }
                }
            }
        }
        Role::Serve => {
            let _ = histogram!(ENSURE_RESTORE_DURATION);
            counter!(ACCESS_RECORD_FAILURES).increment(0);
        }
        Role::Restore | Role::Gc | Role::Scrub => {}
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_gauge!(
        BUILD_INFO,
        "1, labelled with the software version and the role"
    );
    describe_gauge!(TIER_OBJECTS, "objects a tier holds");
    describe_gauge!(TIER_BYTES, Unit::Bytes, "bytes of the objects a tier holds");
    describe_gauge!(
        TIER_STORAGE_USED,
        Unit::Bytes,
        "jetstream storage used in the tier's domain"
    );
    describe_gauge!(
        TIER_STORAGE_LIMIT,
        Unit::Bytes,
        "jetstream storage limit of the tier's domain"
    );
    describe_counter!(
        TRANSFERS,
        "transfer attempts that ended, by tier pair and outcome"
    );
    describe_counter!(
        TRANSFER_FAILURES,
        "transfers that failed, by tier pair and reason"
    );
    describe_counter!(
        TRANSFER_BYTES,
        Unit::Bytes,
        "object bytes moved and verified, by tier pair"
    );
    describe_histogram!(
        TRANSFER_DURATION,
        Unit::Seconds,
        "seconds a successful transfer took, start to verified, by tier pair"
    );
    describe_counter!(
        EVICTIONS,
        "objects dropped from a tier after verified replication"
    );
    describe_counter!(
        MIRROR_VERIFIED_ON_ARRIVAL,
        "cluster copies verified as they arrived (hashed while sourced)"
    );
    describe_counter!(
        MIRROR_READ_BACKS,
        "cluster copies read back in full to verify them"
    );
    describe_gauge!(BACKLOG_OBJECTS, "objects due and not yet moved, per policy");
    describe_gauge!(
        BACKLOG_BYTES,
        Unit::Bytes,
        "bytes of the objects due and not yet moved, per policy"
    );
    describe_gauge!(
        BACKLOG_OLDEST_AGE,
        Unit::Seconds,
        "how long the oldest due object of a policy has been due"
    );
    describe_gauge!(
        LAST_SUCCESS,
        Unit::Seconds,
        "unix time of the role's last successful pass"
    );
    describe_counter!(
        INTEGRITY_FAILURES,
        "digest or size mismatches, by tier of the bad copy"
    );
    describe_counter!(
        DAMAGED_OBJECTS,
        "versions marked damaged (no verified copy left), by tier of the failed copy"
    );
    describe_counter!(DELETES, "user deletes carried to an s3 tier as tombstones");
    describe_counter!(EXPIRED, "objects an expire policy deleted from a tier");
    describe_counter!(
        GC_REMOVED_BLOBS,
        "unreferenced blobs removed by garbage collection"
    );
    describe_counter!(
        GC_REMOVED_MANIFESTS,
        "superseded history manifests removed by garbage collection"
    );
    describe_counter!(MANAGER_DISPATCHED, "work items queued by the manager");
    describe_counter!(
        MANAGER_SKIPPED,
        "tiers, buckets or objects a manager pass passed over, by policy and reason"
    );
    describe_counter!(MANAGER_PASSES, "completed manager evaluation passes");
    describe_gauge!(
        MANAGER_LEADER,
        "1 while this manager leads (plans), 0 while it stands by"
    );
    describe_gauge!(
        MANAGER_LAST_PASS_DURATION,
        Unit::Seconds,
        "seconds the last completed manager pass took"
    );
    describe_gauge!(WORK_BACKLOG, "work items queued or in flight, by role");
    describe_counter!(WORK_ITEMS, "work items handled, by role and outcome");
    describe_counter!(RESTORE_OBJECTS, "objects restore handled, by outcome");
    describe_counter!(RESTORE_BYTES, Unit::Bytes, "object bytes restored");
    describe_counter!(S3_BLOBS_UPLOADED, "blobs uploaded to s3");
    describe_counter!(
        S3_BLOBS_REUSED,
        "uploads that reused an already stored blob"
    );
    describe_counter!(S3_PARTS_UPLOADED, "multipart parts uploaded to s3");
    describe_counter!(ENSURE_REQUESTS, "ensure requests answered, by outcome");
    describe_counter!(
        ACCESS_RECORD_FAILURES,
        "reads whose access record could not be read or written (the read went on)"
    );
    describe_histogram!(
        ENSURE_RESTORE_DURATION,
        Unit::Seconds,
        "seconds each restore the ensure service started took, any outcome"
    );
    describe_counter!(
        S3_BYTES_UPLOADED,
        Unit::Bytes,
        "compressed bytes sent to s3"
    );
}

/// One object moved from `from` to `to` and verified there, `took` from start to verified.
pub fn transferred(from: &str, to: &str, bytes: u64, took: Duration) {
    let pair = [("from_tier", from.to_string()), ("to_tier", to.to_string())];
    counter!(TRANSFER_BYTES, &pair).increment(bytes);
    histogram!(TRANSFER_DURATION, &pair).record(took.as_secs_f64());
    counter!(TRANSFERS, "from_tier" => from.to_string(), "to_tier" => to.to_string(), "outcome" => "ok")
        .increment(1);
}

/// One transfer attempt from `from` to `to` that ended in an error, for `reason` (the
/// error's own `reason()`: a short fixed word, never an object name).
pub fn transfer_failed(from: &str, to: &str, reason: &'static str) {
    counter!(TRANSFERS, "from_tier" => from.to_string(), "to_tier" => to.to_string(), "outcome" => "failed")
        .increment(1);
    counter!(TRANSFER_FAILURES, "from_tier" => from.to_string(), "to_tier" => to.to_string(), "reason" => reason)
        .increment(1);
}

/// One object evicted from `tier`.
pub fn evicted(tier: &str) {
    counter!(EVICTIONS, "tier" => tier.to_string()).increment(1);
}

/// This manager leads (`true`) or stands by.
pub fn manager_leader(leading: bool) {
    gauge!(MANAGER_LEADER).set(if leading { 1.0 } else { 0.0 });
}

/// A cluster copy on `tier` verified as it arrived.
pub fn mirror_followed(tier: &str) {
    counter!(MIRROR_VERIFIED_ON_ARRIVAL, "tier" => tier.to_string()).increment(1);
}

/// A cluster copy on `tier` read back in full to verify it.
pub fn mirror_read_back(tier: &str) {
    counter!(MIRROR_READ_BACKS, "tier" => tier.to_string()).increment(1);
}

/// One integrity failure on `tier`.
pub fn integrity_failure(tier: &str) {
    counter!(INTEGRITY_FAILURES, "tier" => tier.to_string()).increment(1);
}

/// Version of `bucket`/`name` marked damaged after its copy on `tier` failed its `what` check
/// and no verified copy was left: counted, and one of the role's recent failures (`status`).
pub fn damaged(tier: &str, bucket: &str, name: &str, what: &str) {
    counter!(DAMAGED_OBJECTS, "tier" => tier.to_string()).increment(1);
    crate::status::failed(format_args!(
        "{bucket}/{name}: copy on {tier} failed its {what} check and no verified copy is left: marked damaged"
    ));
}

/// One user delete carried to S3 tier `tier`.
pub fn deleted(tier: &str) {
    counter!(DELETES, "tier" => tier.to_string()).increment(1);
}

/// One object an `expire` policy deleted from tier `tier` (JetStream or S3).
pub fn expired(tier: &str) {
    counter!(EXPIRED, "tier" => tier.to_string()).increment(1);
}

/// `n` unreferenced blobs removed from `tier` by garbage collection.
pub fn gc_removed_blobs(tier: &str, n: u64) {
    counter!(GC_REMOVED_BLOBS, "tier" => tier.to_string()).increment(n);
}

/// `n` superseded history manifests removed from `tier` by garbage collection.
pub fn gc_removed_manifests(tier: &str, n: u64) {
    counter!(GC_REMOVED_MANIFESTS, "tier" => tier.to_string()).increment(n);
}

/// What the manager's last pass found due for `policy` (moving `from` → `to`).
pub fn backlog(policy: &str, from: &str, to: &str, backlog: Backlog) {
    let labels = [
        ("policy", policy.to_string()),
        ("from_tier", from.to_string()),
        ("to_tier", to.to_string()),
    ];
    gauge!(BACKLOG_OBJECTS, &labels).set(backlog.objects as f64);
    gauge!(BACKLOG_BYTES, &labels).set(backlog.bytes as f64);
    gauge!(BACKLOG_OLDEST_AGE, &labels).set(backlog.oldest_due.as_secs_f64());
}

/// What `tier` holds: `objects` of `bytes` in all.
pub fn tier_held(tier: &str, objects: u64, bytes: u64) {
    gauge!(TIER_OBJECTS, "tier" => tier.to_string()).set(objects as f64);
    gauge!(TIER_BYTES, "tier" => tier.to_string()).set(bytes as f64);
}

/// JetStream storage of `tier`'s domain: `used`, and the `limit` when one is known.
pub fn tier_storage(tier: &str, used: u64, limit: Option<u64>) {
    gauge!(TIER_STORAGE_USED, "tier" => tier.to_string()).set(used as f64);
    if let Some(limit) = limit {
        gauge!(TIER_STORAGE_LIMIT, "tier" => tier.to_string()).set(limit as f64);
    }
}

/// `role` just completed a successful pass: [`LAST_SUCCESS`] is now.
pub fn succeeded(role: Role) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    gauge!(LAST_SUCCESS, "role" => role.as_str()).set(now.as_secs_f64());
    crate::status::succeeded();
}

/// The manager passed over a tier, bucket or object of `policy` this pass, for `reason`.
pub fn manager_skipped(policy: &str, reason: &'static str) {
    counter!(MANAGER_SKIPPED, "policy" => policy.to_string(), "reason" => reason).increment(1);
}

/// Registers the skip counter of `policy` and `reason` at zero.
pub fn manager_skip_reason(policy: &str, reason: &'static str) {
    counter!(MANAGER_SKIPPED, "policy" => policy.to_string(), "reason" => reason).increment(0);
}

/// The manager queued an item for `role`.
pub fn dispatched(role: WorkRole) {
    counter!(MANAGER_DISPATCHED, "role" => role.as_str()).increment(1);
}

/// A manager pass completed after `took`. The duration and the success time are set before the
/// pass is counted, so whoever sees the count go up reads that pass's values.
pub fn manager_pass(took: Duration) {
    gauge!(MANAGER_LAST_PASS_DURATION).set(took.as_secs_f64());
    succeeded(Role::Manager);
    counter!(MANAGER_PASSES).increment(1);
}

/// Queue depth for a role.
pub fn work_backlog(role: WorkRole, items: u64) {
    gauge!(WORK_BACKLOG, "role" => role.as_str()).set(items as f64);
}

/// A work item of `role` finished with `outcome`.
pub fn work_item(role: WorkRole, outcome: WorkOutcome) {
    counter!(WORK_ITEMS, "role" => role.as_str(), "outcome" => outcome.as_str()).increment(1);
}

/// `restore` handled one object for `tier` with `outcome`; `bytes` restored (0 unless restored
/// now).
pub fn restored(tier: &str, outcome: RestoreOutcome, bytes: u64) {
    counter!(RESTORE_OBJECTS, "tier" => tier.to_string(), "outcome" => outcome.as_str())
        .increment(1);
    if bytes > 0 {
        counter!(RESTORE_BYTES, "tier" => tier.to_string()).increment(bytes);
    }
    crate::status::restore_counted(tier, outcome.as_str(), bytes);
}

/// The ensure service answered one request with `outcome` (`ready`, `restored`, or an error
/// code such as `not_found`).
pub fn ensured(outcome: &'static str) {
    counter!(ENSURE_REQUESTS, "outcome" => outcome).increment(1);
}

/// A read's access record could not be read or written (see [`crate::access`]).
pub fn access_record_failed() {
    counter!(ACCESS_RECORD_FAILURES).increment(1);
}

/// One restore the ensure service started ended (whatever the outcome) after `took`.
pub fn ensure_restored(took: Duration) {
    histogram!(ENSURE_RESTORE_DURATION).record(took.as_secs_f64());
}

/// A blob was uploaded to S3 tier `tier` (`reused` = found already stored, nothing sent).
pub fn s3_blob(tier: &str, reused: bool) {
    let name = if reused {
        S3_BLOBS_REUSED
    } else {
        S3_BLOBS_UPLOADED
    };
    counter!(name, "tier" => tier.to_string()).increment(1);
}

/// Compressed bytes sent to S3 tier `tier`; `part` when they were a multipart part.
pub fn s3_sent(tier: &str, bytes: u64, part: bool) {
    counter!(S3_BYTES_UPLOADED, "tier" => tier.to_string()).increment(bytes);
    if part {
        counter!(S3_PARTS_UPLOADED, "tier" => tier.to_string()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_keeps_the_longest_due() {
        let mut b = Backlog::default();
        b.add(10, Duration::from_secs(5));
        b.add(20, Duration::from_secs(50));
        b.add(30, Duration::from_secs(7));
        assert_eq!(
            b,
            Backlog {
                objects: 3,
                bytes: 60,
                oldest_due: Duration::from_secs(50)
            }
        );
    }
}

// ---------------------------------------------------------------------------------------------
// S3 requests: counted once, in the SDK client's interceptor (`cim_gateway::s3::observe`), for
// every attempt of every call, whoever makes it (upload, restore, gc, scrub, probes).

/// S3 request attempts, by tier, operation (`PutObject`, `UploadPart`, ...) and HTTP status
/// (`error` when no response came: connection refused, timeout).
pub const S3_REQUESTS: &str = "cim_s3_requests_total";
/// S3 request attempts that were retries of an earlier attempt, by tier and operation.
pub const S3_RETRIES: &str = "cim_s3_retries_total";
/// S3 request attempts the service throttled (503 SlowDown, 429), by tier and operation.
pub const S3_THROTTLED: &str = "cim_s3_throttled_total";

fn describe_s3_requests() {
    use metrics::describe_counter;
    describe_counter!(
        S3_REQUESTS,
        "s3 request attempts, by tier, operation and http status (error: no response)"
    );
    describe_counter!(
        S3_RETRIES,
        "s3 request attempts that retried an earlier one, by tier and operation"
    );
    describe_counter!(
        S3_THROTTLED,
        "s3 request attempts throttled by the service (503, 429), by tier and operation"
    );
}

/// The S3 operations the roles make most, whose retry and throttle counters are registered at
/// zero for a tier (see [`s3_tier_named`]).
const S3_MAIN_OPERATIONS: &[&str] = &[
    "PutObject",
    "UploadPart",
    "CompleteMultipartUpload",
    "GetObject",
    "HeadObject",
    "ListObjectsV2",
];

/// An S3 client now labels its requests with `tier`: its retry and throttle counters of the
/// main operations are registered at zero, so an alert on their increase sees the first one.
pub fn s3_tier_named(tier: &str) {
    for operation in S3_MAIN_OPERATIONS {
        for name in [S3_RETRIES, S3_THROTTLED] {
            counter!(name, "tier" => tier.to_string(), "operation" => *operation).increment(0);
        }
    }
}

/// One attempt of S3 `operation` on `tier` ended with HTTP `status` (`None`: no response);
/// `attempt` counts from 1 (above 1 it is a retry).
pub fn s3_attempt(tier: &str, operation: &str, status: Option<u16>, attempt: u32) {
    let status = status.map_or_else(|| "error".to_string(), |s| s.to_string());
    let throttled = status == "503" || status == "429";
    counter!(S3_REQUESTS, "tier" => tier.to_string(), "operation" => operation.to_string(), "status" => status)
        .increment(1);
    if attempt > 1 {
        counter!(S3_RETRIES, "tier" => tier.to_string(), "operation" => operation.to_string())
            .increment(1);
    }
    if throttled {
        counter!(S3_THROTTLED, "tier" => tier.to_string(), "operation" => operation.to_string())
            .increment(1);
    }
}

#[cfg(test)]
mod s3_request_tests {
    use super::*;

    /// What one attempt counts, rendered as Prometheus text.
    fn rendered(status: Option<u16>, attempt: u32) -> String {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            s3_attempt("wasabi", "PutObject", status, attempt)
        });
        handle.render()
    }

    #[test]
    fn a_first_attempt_is_a_request_by_tier_operation_and_status() {
        let text = rendered(Some(200), 1);
        assert!(text.contains(
            r#"cim_s3_requests_total{tier="wasabi",operation="PutObject",status="200"} 1"#
        ));
        assert!(
            !text.contains(S3_RETRIES) && !text.contains(S3_THROTTLED),
            "{text}"
        );
    }

    #[test]
    fn a_retry_without_a_response_is_an_error_and_a_retry() {
        let text = rendered(None, 2);
        assert!(text.contains(r#"status="error"} 1"#), "{text}");
        assert!(text.contains(r#"cim_s3_retries_total{tier="wasabi",operation="PutObject"} 1"#));
        assert!(!text.contains(S3_THROTTLED), "{text}");
    }

    #[test]
    fn slow_down_and_too_many_requests_are_throttling() {
        for status in [503, 429] {
            let text = rendered(Some(status), 1);
            assert!(
                text.contains(r#"cim_s3_throttled_total{tier="wasabi",operation="PutObject"} 1"#),
                "{text}"
            );
        }
        assert!(!rendered(Some(500), 1).contains(S3_THROTTLED));
    }
}
