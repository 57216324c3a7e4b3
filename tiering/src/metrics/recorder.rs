//! The Prometheus recorder, the process metrics, and every series a role registers at zero
//! when it starts.

use std::time::Duration;

use cim_policies::{Action, Config, Route, Tier};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::PrometheusHandle;

use super::*;
use crate::work::Role as WorkRole;

/// Upper bounds of the [`TRANSFER_DURATION`] buckets, in seconds: from a small object on
/// loopback to a large one over a slow link.
const TRANSFER_DURATION_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
];

/// How often the process metrics (`process_*`) are refreshed.
const PROCESS_REFRESH: Duration = Duration::from_secs(5);

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
