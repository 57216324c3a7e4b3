//! The name of every metric the roles export (see `docs/metrics.md`).

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
/// Work items handled, by role and [`WorkOutcome`](super::WorkOutcome).
pub const WORK_ITEMS: &str = "cim_work_items_total";
/// Objects `cim-gateway restore` handled, by target tier and [`RestoreOutcome`](super::RestoreOutcome).
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
