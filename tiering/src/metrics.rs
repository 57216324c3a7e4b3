//! Every metric the roles export, in one place (names and labels), and the Prometheus endpoint.
//!
//! Names follow `cim_<subsystem>_<thing>_<unit>`. Transfer counters are labelled by tier pair
//! (`from`, `to`); backlog gauges sit beside them so a stuck pipeline is visible.

use std::net::SocketAddr;

use metrics::{counter, gauge};

use crate::work::Role;

/// Bytes of object content moved (verified at the destination), by tier pair.
pub const TRANSFER_BYTES: &str = "cim_transfer_bytes_total";
/// Objects moved (verified at the destination), by tier pair.
pub const TRANSFER_OBJECTS: &str = "cim_transfer_objects_total";
/// Objects dropped from a tier after verified replication, by tier.
pub const EVICTIONS: &str = "cim_evictions_total";
/// Integrity check failures (digest or size mismatch), by tier holding the bad copy.
pub const INTEGRITY_FAILURES: &str = "cim_integrity_failures_total";
/// Versions marked damaged (no verified copy left anywhere), by tier whose copy failed.
pub const DAMAGED_OBJECTS: &str = "cim_damaged_objects_total";
/// User deletes carried to an S3 tier as tombstones, by tier.
pub const DELETES: &str = "cim_deletes_total";
/// What garbage collection removed from an S3 tier, by tier and kind (`blob`, `manifest`).
pub const GC_REMOVED: &str = "cim_gc_removed_total";
/// Objects the manager found due for a move in its last pass, by tier pair.
pub const MANAGER_BACKLOG: &str = "cim_manager_backlog_objects";
/// Items the manager queued (not counting de-duplicated ones), by role.
pub const MANAGER_DISPATCHED: &str = "cim_manager_dispatched_total";
/// Tiers, buckets or objects the manager passed over because of an error, by policy and reason.
pub const MANAGER_SKIPPED: &str = "cim_manager_skipped_total";
/// Completed manager evaluation passes.
pub const MANAGER_PASSES: &str = "cim_manager_passes_total";
/// How long the manager's last completed pass took, in seconds.
pub const MANAGER_PASS_SECONDS: &str = "cim_manager_pass_seconds";
/// Work items queued or in flight, by role.
pub const WORK_BACKLOG: &str = "cim_work_backlog_items";
/// Work items handled, by role and outcome (done, retry, failed, invalid).
pub const WORK_ITEMS: &str = "cim_work_items_total";
/// Objects restored from S3 into a JetStream tier.
pub const RESTORED_OBJECTS: &str = "cim_restore_objects_total";

/// Blobs uploaded to S3 (new content).
pub const S3_BLOBS_UPLOADED: &str = "cim_s3_blobs_uploaded_total";
/// Uploads that found their content-addressed blob already stored and reused it.
pub const S3_BLOBS_REUSED: &str = "cim_s3_blobs_reused_total";
/// Multipart parts uploaded to S3.
pub const S3_PARTS_UPLOADED: &str = "cim_s3_parts_uploaded_total";
/// Compressed bytes sent to S3 (single puts and parts).
pub const S3_BYTES_UPLOADED: &str = "cim_s3_bytes_uploaded_total";

/// Serves `/metrics` in Prometheus text format on `listen`. Needs a running Tokio runtime.
pub fn install(listen: SocketAddr) -> Result<(), metrics_exporter_prometheus::BuildError> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(listen)
        .install()?;
    describe();
    Ok(())
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_counter!(
        TRANSFER_BYTES,
        Unit::Bytes,
        "object bytes moved and verified, by tier pair"
    );
    describe_counter!(TRANSFER_OBJECTS, "objects moved and verified, by tier pair");
    describe_counter!(
        EVICTIONS,
        "objects dropped from a tier after verified replication"
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
    describe_counter!(
        GC_REMOVED,
        "blobs and manifests removed by garbage collection, by tier and kind"
    );
    describe_gauge!(
        MANAGER_BACKLOG,
        "objects due for a move in the last manager pass"
    );
    describe_counter!(MANAGER_DISPATCHED, "work items queued by the manager");
    describe_counter!(
        MANAGER_SKIPPED,
        "tiers, buckets or objects a manager pass passed over, by policy and reason"
    );
    describe_counter!(MANAGER_PASSES, "completed manager evaluation passes");
    describe_gauge!(
        MANAGER_PASS_SECONDS,
        "seconds the last completed manager pass took"
    );
    describe_gauge!(WORK_BACKLOG, "work items queued or in flight, by role");
    describe_counter!(WORK_ITEMS, "work items handled, by role and outcome");
    describe_counter!(RESTORED_OBJECTS, "objects restored from s3");
    describe_counter!(S3_BLOBS_UPLOADED, "blobs uploaded to s3");
    describe_counter!(
        S3_BLOBS_REUSED,
        "uploads that reused an already stored blob"
    );
    describe_counter!(S3_PARTS_UPLOADED, "multipart parts uploaded to s3");
    describe_counter!(
        S3_BYTES_UPLOADED,
        Unit::Bytes,
        "compressed bytes sent to s3"
    );
}

/// One object moved and verified from `from` to `to`.
pub fn transferred(from: &str, to: &str, bytes: u64) {
    let labels = [("from", from.to_string()), ("to", to.to_string())];
    counter!(TRANSFER_BYTES, &labels).increment(bytes);
    counter!(TRANSFER_OBJECTS, &labels).increment(1);
}

/// One object evicted from `tier`.
pub fn evicted(tier: &str) {
    counter!(EVICTIONS, "tier" => tier.to_string()).increment(1);
}

/// One integrity failure on `tier`.
pub fn integrity_failure(tier: &str) {
    counter!(INTEGRITY_FAILURES, "tier" => tier.to_string()).increment(1);
}

/// A version marked damaged after its copy on `tier` failed and no verified copy was left.
pub fn damaged(tier: &str) {
    counter!(DAMAGED_OBJECTS, "tier" => tier.to_string()).increment(1);
}

/// One user delete carried to S3 tier `tier`.
pub fn deleted(tier: &str) {
    counter!(DELETES, "tier" => tier.to_string()).increment(1);
}

/// `n` things of `kind` (`blob`, `manifest`) removed from `tier` by garbage collection.
pub fn gc_removed(tier: &str, kind: &'static str, n: u64) {
    counter!(GC_REMOVED, "tier" => tier.to_string(), "kind" => kind).increment(n);
}

/// The manager's view of due objects for a tier pair.
pub fn manager_backlog(from: &str, to: &str, objects: u64) {
    gauge!(MANAGER_BACKLOG, "from" => from.to_string(), "to" => to.to_string()).set(objects as f64);
}

/// The manager passed over a tier, bucket or object of `policy` this pass, for `reason`.
pub fn manager_skipped(policy: &str, reason: &'static str) {
    counter!(MANAGER_SKIPPED, "policy" => policy.to_string(), "reason" => reason).increment(1);
}

/// The manager queued an item for `role`.
pub fn dispatched(role: Role) {
    counter!(MANAGER_DISPATCHED, "role" => role.as_str()).increment(1);
}

/// A manager pass completed after `took`. The duration is set before the pass is counted, so
/// whoever sees the count go up reads that pass's duration.
pub fn manager_pass(took: std::time::Duration) {
    gauge!(MANAGER_PASS_SECONDS).set(took.as_secs_f64());
    counter!(MANAGER_PASSES).increment(1);
}

/// Queue depth for a role.
pub fn work_backlog(role: Role, items: u64) {
    gauge!(WORK_BACKLOG, "role" => role.as_str()).set(items as f64);
}

/// A work item finished with `outcome`.
pub fn work_item(role: Role, outcome: &'static str) {
    counter!(WORK_ITEMS, "role" => role.as_str(), "outcome" => outcome).increment(1);
}

/// An object restored into `tier`.
pub fn restored(tier: &str) {
    counter!(RESTORED_OBJECTS, "tier" => tier.to_string()).increment(1);
}

/// A blob was uploaded (`reused` = found already stored, nothing sent).
pub fn s3_blob(reused: bool) {
    counter!(if reused {
        S3_BLOBS_REUSED
    } else {
        S3_BLOBS_UPLOADED
    })
    .increment(1);
}

/// Compressed bytes sent to S3; `part` when they were a multipart part.
pub fn s3_sent(bytes: u64, part: bool) {
    counter!(S3_BYTES_UPLOADED).increment(bytes);
    if part {
        counter!(S3_PARTS_UPLOADED).increment(1);
    }
}
