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

use metrics::{counter, gauge, histogram};

use crate::work::Role as WorkRole;

mod labels;
mod names;
mod recorder;

pub use labels::{Backlog, RestoreOutcome, Role, WorkOutcome};
pub use names::*;
pub use recorder::{install, role_started};

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
