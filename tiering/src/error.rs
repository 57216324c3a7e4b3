//! The crate's one error type.
//!
//! Variants carry the bucket, object and tier they concern so a log line or CLI message names the
//! offending thing (invariant 6), and keep their source. [`Error::is_transient`] tells a worker
//! whether retrying later may help.

/// Boxed source error from async-nats (its error kinds are generic; we keep them as sources).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that can go wrong in the tiering layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Connecting to a NATS server (or reading its credentials) failed.
    #[error("cannot connect to nats at {url}: {source}")]
    Connect {
        /// The URL(s) tried.
        url: String,
        /// Cause.
        #[source]
        source: BoxError,
    },
    /// A JetStream request about a bucket or object failed.
    #[error("{op} failed for bucket {bucket:?}{} on tier {tier}: {source}", object_suffix(.object))]
    JetStream {
        /// What we were doing ("read object info", "purge", ...).
        op: &'static str,
        /// The tier's name from the configuration.
        tier: String,
        /// The object-store bucket.
        bucket: String,
        /// The object, when the operation concerned one.
        object: Option<String>,
        /// Cause.
        #[source]
        source: BoxError,
    },
    /// A copy did not match the digest or size recorded at ingest.
    #[error(transparent)]
    Integrity(Box<IntegrityFailure>),
    /// An object is not (yet) where it must be before a step may proceed, e.g. not yet replicated.
    #[error("object {object:?} in bucket {bucket:?} is not ready on tier {tier}: {reason}")]
    NotReady {
        /// The object-store bucket.
        bucket: String,
        /// The object's name.
        object: String,
        /// The tier we looked at.
        tier: String,
        /// Why it is not ready.
        reason: String,
    },
    /// The catalog (a KV bucket) could not be read or written.
    #[error("catalog {op} failed for key {key:?}: {source}")]
    Catalog {
        /// What we were doing.
        op: &'static str,
        /// The catalog key.
        key: String,
        /// Cause.
        #[source]
        source: BoxError,
    },
    /// The access records (see [`crate::access`]) could not be read or written.
    #[error("access record {op} failed for {key:?}: {source}")]
    Access {
        /// What we were doing.
        op: &'static str,
        /// `<access bucket>/<key>`.
        key: String,
        /// Cause.
        #[source]
        source: BoxError,
    },
    /// A lease (see [`crate::lease`]) could not be read, taken or released.
    #[error("lease {op} failed for key {key:?}: {source}")]
    Lease {
        /// What we were doing.
        op: &'static str,
        /// The lease key.
        key: String,
        /// Cause.
        #[source]
        source: BoxError,
    },
    /// The status bucket (see [`crate::status`]) could not be read or written.
    #[error("status {op} failed for key {key:?}: {source}")]
    Status {
        /// What we were doing.
        op: &'static str,
        /// The key.
        key: String,
        /// Cause.
        #[source]
        source: BoxError,
    },
    /// The write journal (see [`crate::jetstream::write`]) could not be read or written.
    #[error("write journal {op} failed for key {key:?}: {source}")]
    Journal {
        /// What we were doing.
        op: &'static str,
        /// The record's key (`<writer>.<nuid>`), or the writer id.
        key: String,
        /// Cause.
        #[source]
        source: BoxError,
    },
    /// The work queue could not be set up, published to or consumed from.
    #[error("work queue {op} failed: {source}")]
    Work {
        /// What we were doing.
        op: &'static str,
        /// Cause.
        #[source]
        source: BoxError,
    },
    /// An object's meta message does not decode: nothing can move the object until a writer
    /// replaces it. Never transient.
    #[error("meta message of object {object:?} in bucket {bucket:?} on tier {tier} does not decode: {reason}")]
    BadMeta {
        /// The tier's name from the configuration.
        tier: String,
        /// The object-store bucket.
        bucket: String,
        /// The object's name (the raw meta subject if even that does not decode).
        object: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// The configuration does not allow what was asked (unknown tier, wrong kind...).
    #[error("configuration: {0}")]
    Config(String),
    /// A one-shot command's metrics could not be pushed to the Pushgateway (see
    /// [`crate::push`]); logged, never the command's outcome.
    #[error("pushing metrics to {url} failed: {reason}")]
    Push {
        /// The group's URL on the Pushgateway.
        url: String,
        /// What went wrong (connection, deadline, the gateway's answer).
        reason: String,
    },
}

/// A copy whose size or SHA-256 differs from what was recorded at ingest (invariant 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "integrity check failed for object {object:?} in bucket {bucket:?} on tier {tier}: {what} expected {expected}, got {actual}"
)]
pub struct IntegrityFailure {
    /// The object-store bucket.
    pub bucket: String,
    /// The object's name.
    pub object: String,
    /// The tier holding the bad copy.
    pub tier: String,
    /// "sha-256" or "size".
    pub what: &'static str,
    /// The value recorded at ingest.
    pub expected: String,
    /// The value found.
    pub actual: String,
}

impl From<IntegrityFailure> for Error {
    fn from(failure: IntegrityFailure) -> Self {
        Error::Integrity(Box::new(failure))
    }
}

fn object_suffix(object: &Option<String>) -> String {
    match object {
        Some(name) => format!(", object {name:?}"),
        None => String::new(),
    }
}

impl Error {
    /// True when the same operation may succeed later (network, leader election, replication lag).
    /// Integrity failures and configuration mistakes are never transient.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. }
            | Error::JetStream { .. }
            | Error::NotReady { .. }
            | Error::Catalog { .. }
            | Error::Access { .. }
            | Error::Lease { .. }
            | Error::Status { .. }
            | Error::Journal { .. }
            | Error::Work { .. }
            | Error::Push { .. } => true,
            Error::Integrity(_) | Error::BadMeta { .. } | Error::Config(_) => false,
        }
    }

    /// Why a transfer failed, as a low-cardinality `reason` label
    /// (`cim_transfer_failures_total`): `nats` (a NATS request or connection), `not_ready`
    /// (the source copy is not complete yet), `integrity`, `bad_meta`, `config`, `internal`
    /// (catalog, lease, journal, work queue, status or push bookkeeping).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Connect { .. } | Error::JetStream { .. } => "nats",
            Error::NotReady { .. } => "not_ready",
            Error::Integrity(_) => "integrity",
            Error::BadMeta { .. } => "bad_meta",
            Error::Config(_) => "config",
            Error::Catalog { .. }
            | Error::Access { .. }
            | Error::Lease { .. }
            | Error::Status { .. }
            | Error::Journal { .. }
            | Error::Work { .. }
            | Error::Push { .. } => "internal",
        }
    }

    /// Builds a [`Error::JetStream`] for an operation on an object.
    pub fn object_op(
        op: &'static str,
        tier: &str,
        bucket: &str,
        object: &str,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::JetStream {
            op,
            tier: tier.to_string(),
            bucket: bucket.to_string(),
            object: Some(object.to_string()),
            source: source.into(),
        }
    }

    /// Builds a [`Error::JetStream`] for an operation on a whole bucket.
    pub fn bucket_op(
        op: &'static str,
        tier: &str,
        bucket: &str,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::JetStream {
            op,
            tier: tier.to_string(),
            bucket: bucket.to_string(),
            object: None,
            source: source.into(),
        }
    }
}
