//! Why a pass passed over a tier, bucket or object, counted and logged.

use cim_policies::Policy;

use super::PassReport;
use crate::error::Error;
use crate::metrics;

/// Why the manager passed over a tier, bucket or object in one pass: the `reason` label of
/// `cim_manager_skipped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Skip {
    /// The source tier could not list its buckets.
    TierUnavailable,
    /// A bucket's stream could not be read (e.g. it lost quorum).
    BucketUnavailable,
    /// An object's meta message does not decode.
    UndecodableMeta,
    /// An object has no usable ingest digest (missing or malformed).
    MissingDigest,
    /// The catalog could not be read for an object.
    CatalogUnavailable,
    /// The work queue refused an item.
    QueueUnavailable,
    /// The access records could not be read, and a policy of the bucket tests `idle`.
    AccessUnavailable,
}

impl Skip {
    /// Every reason, for registering the counters at zero.
    pub(super) const ALL: [Skip; 7] = [
        Skip::TierUnavailable,
        Skip::BucketUnavailable,
        Skip::UndecodableMeta,
        Skip::MissingDigest,
        Skip::CatalogUnavailable,
        Skip::QueueUnavailable,
        Skip::AccessUnavailable,
    ];

    pub(super) fn as_str(self) -> &'static str {
        match self {
            Skip::TierUnavailable => "tier_unavailable",
            Skip::BucketUnavailable => "bucket_unavailable",
            Skip::UndecodableMeta => "undecodable_meta",
            Skip::MissingDigest => "missing_digest",
            Skip::CatalogUnavailable => "catalog_unavailable",
            Skip::QueueUnavailable => "queue_unavailable",
            Skip::AccessUnavailable => "access_unavailable",
        }
    }
}

/// Counts and logs one skip; the error names the tier, bucket and object where there is one.
pub(super) fn skipped(policy: &Policy, reason: Skip, error: &Error, report: &mut PassReport) {
    report.skipped += 1;
    metrics::manager_skipped(&policy.name, reason.as_str());
    tracing::warn!(policy = %policy.name, reason = reason.as_str(), error = %error, "skipped this pass");
}
