//! The crate's one error type.
//!
//! Every variant carries the names an operator needs to act on it (the S3 key, the object's bucket
//! and name, the tier) as structured fields, and keeps the underlying error as its `source` so the
//! whole chain can be logged. [`Error::is_transient`] is the single place that decides whether a
//! retry can help; the upload and restore loops rely on it instead of matching on messages.

use std::fmt;

use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// A boxed error that can cross threads, used as the `source` of S3 and NATS failures.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that can go wrong in the S3 tier.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An S3 request failed (network, service error, or reading a response body).
    ///
    /// When it comes from the AWS SDK the cause is an [`S3Failure`], which records the HTTP
    /// status, the service error code and whether a retry can help.
    #[error("s3 {op} {key}{}: {cause}", object_suffix(.object))]
    S3 {
        /// The S3 operation, e.g. `"put_object"`.
        op: &'static str,
        /// The key (or key prefix, for listings) the operation was about.
        key: String,
        /// The NATS object the call was for (`bucket/name`), where there is one (see
        /// [`Error::for_object`]): a blob key alone does not tell an operator which object waits.
        object: Option<String>,
        /// What went wrong. Shown in this error's message and deliberately not its `source()`:
        /// a chain printed with `{:#}` would say it twice.
        cause: BoxError,
    },

    /// Content did not match the digest or size recorded at NATS ingest.
    ///
    /// Never retried blindly: the copy being checked is bad, and the good copy (if any) must be
    /// kept. Raised together with the `cim_integrity_failures_total{tier}` metric and an error
    /// log line naming the object.
    #[error(
        "integrity check failed for object {name:?} in bucket {bucket:?} on tier {tier}: \
         {what} expected {expected}, got {actual}"
    )]
    Integrity {
        /// The NATS object-store bucket of the object.
        bucket: String,
        /// The object's name.
        name: String,
        /// The tier whose copy is bad (`"s3"` on restore, the source tier on upload).
        tier: String,
        /// What was compared: `"sha-256"`, `"size"` or `"zstd"` (undecodable stored bytes).
        what: String,
        /// The value recorded at ingest.
        expected: String,
        /// The value found.
        actual: String,
    },

    /// The service accepted an upload without confirming the checksum the tier's `verify` mode
    /// relies on (no echoed `x-amz-checksum-crc32c`, or an ETag that is not the body's MD5, as
    /// with SSE-KMS encryption). The copy is not counted as verified. Not transient: the same
    /// service answers the same way; the operator must choose another mode.
    #[error(
        "s3 {op} {key}: the service did not confirm the {mode} checksum of what we sent \
         ({found}), so the copy is not verified; set `verify = {}` on this tier",
        other_modes(*.mode)
    )]
    Unconfirmed {
        /// The S3 operation, e.g. `"upload_part"`.
        op: &'static str,
        /// The blob key.
        key: String,
        /// The tier's verification mode.
        mode: cim_policies::S3Verify,
        /// What the response said instead.
        found: String,
    },

    /// A manifest could not be parsed, or parsed but contradicts itself or its key.
    #[error("invalid manifest {key}: {source}")]
    Manifest {
        /// The manifest's S3 key.
        key: String,
        /// The parse error, or a custom serde error describing the inconsistency.
        #[source]
        source: serde_json::Error,
    },

    /// A manifest of a format this version cannot read (see [`crate::format::READABLE_FORMATS`]),
    /// written by a newer version: skipped and reported by `list` and `restore`, never trusted
    /// and never overwritten.
    #[error(
        "manifest {key} has format {format}, which this version cannot read (it reads {}..={}); \
         left for a newer cim-gateway",
        crate::format::READABLE_FORMATS.start(),
        crate::format::READABLE_FORMATS.end()
    )]
    UnsupportedFormat {
        /// The manifest's S3 key.
        key: String,
        /// The format it declares.
        format: u64,
    },

    /// Local I/O failed (reading the content to upload, writing restored content).
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The tier configuration cannot work (unreadable credentials file, missing endpoint, ...).
    #[error("s3 tier configuration: {message}")]
    Config {
        /// What is wrong and where.
        message: String,
    },

    /// A failure in the NATS tiers, catalog or work queue, from `cim-tiering`; kept whole so its
    /// structured fields (bucket, object, tier) and its transience survive (`?` converts it).
    #[error(transparent)]
    Tiering(#[from] cim_tiering::Error),

    /// Restore was asked to overwrite (`--overwrite`) a version that no other tier holds a
    /// verified copy of: replacing it would lose it, so it is refused.
    #[error(
        "refusing to overwrite object {name:?} in bucket {bucket:?} on tier {tier}: its version \
         {digest} has no verified copy on another tier"
    )]
    WouldLoseVersion {
        /// The object-store bucket.
        bucket: String,
        /// The object's name.
        name: String,
        /// The tier holding the only copy.
        tier: String,
        /// Ingest digest of the version held there.
        digest: String,
    },

    /// A manifest read from S3 names another version than the catalog records as verified on
    /// that S3 tier: one of them lies, so the manifest is not trusted.
    #[error(
        "manifest {key} of object {name:?} in bucket {bucket:?} says {manifest}, but the catalog \
         records {catalog} on tier {tier}; refused"
    )]
    CatalogDisagrees {
        /// The manifest's S3 key.
        key: String,
        /// The object-store bucket.
        bucket: String,
        /// The object's name.
        name: String,
        /// The S3 tier.
        tier: String,
        /// The manifest's digest.
        manifest: String,
        /// The catalog's digest.
        catalog: String,
    },

    /// An object declares more bytes than the target can still store (a decompression bomb, or
    /// simply a full stream): refused before anything is read or written.
    #[error(
        "object {name:?} in bucket {bucket:?} declares {size} bytes, more than tier {tier} can \
         still store ({room} bytes: {limit}); refused"
    )]
    NoRoom {
        /// The object-store bucket.
        bucket: String,
        /// The object's name.
        name: String,
        /// The target tier.
        tier: String,
        /// The declared (uncompressed) size.
        size: u64,
        /// What the tightest limit still allows.
        room: u64,
        /// Which limit that is.
        limit: String,
    },

    /// `delete` was asked for an object that a JetStream tier still holds: it is deleted there,
    /// and the delete then reaches S3; deleting only the S3 copy would leave tiers disagreeing.
    #[error(
        "object {name:?} in bucket {bucket:?} is held by tier {tier}; delete it there (e.g.          `nats object rm`), and the delete reaches S3 by itself"
    )]
    HeldByTier {
        /// The object-store bucket.
        bucket: String,
        /// The object's name.
        name: String,
        /// The JetStream tier holding it.
        tier: String,
    },

    /// The S3 tier holds no manifest for the object.
    #[error("no object {name:?} in bucket {bucket:?} on s3 tier {tier}")]
    NotInS3 {
        /// The object-store bucket.
        bucket: String,
        /// The object's name.
        name: String,
        /// The S3 tier.
        tier: String,
    },

    /// A NATS object-store operation failed (used by the upload and restore orchestration).
    #[error("nats {op} {bucket}/{name}: {cause}")]
    Nats {
        /// The operation, e.g. `"get"`.
        op: String,
        /// The object-store bucket.
        bucket: String,
        /// The object's name.
        name: String,
        /// What went wrong. Shown in this error's message and deliberately not its `source()`:
        /// a chain printed with `{:#}` would say it twice.
        cause: BoxError,
    },
}

impl Error {
    /// Whether retrying the same operation later may succeed.
    ///
    /// Transient: S3 timeouts, connection failures, 5xx, throttling (429, `SlowDown`), truncated
    /// response bodies, local I/O errors and NATS failures (the cluster being briefly unreachable is
    /// the common case; callers that need finer decisions match on the variant). `Tiering` errors
    /// answer for themselves (`cim_tiering::Error::is_transient`). Not transient:
    /// integrity failures (the copy is bad, retrying the same read gives the same answer), invalid
    /// manifests, configuration errors, refusals to lose a version, and S3 client errors such as
    /// 403 or 404.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::S3 { cause, .. } => match cause.downcast_ref::<S3Failure>() {
                Some(failure) => failure.transient,
                // Errors we did not classify (none today) are assumed retryable: the upload
                // protocol is idempotent, so a retry is safe.
                None => true,
            },
            Error::Io { .. } | Error::Nats { .. } => true,
            Error::Tiering(e) => e.is_transient(),
            Error::Integrity { .. }
            | Error::Manifest { .. }
            | Error::Unconfirmed { .. }
            | Error::UnsupportedFormat { .. }
            | Error::Config { .. }
            | Error::WouldLoseVersion { .. }
            | Error::CatalogDisagrees { .. }
            | Error::NoRoom { .. }
            | Error::HeldByTier { .. }
            | Error::NotInS3 { .. } => false,
        }
    }

    /// Why a transfer failed, as a low-cardinality `reason` label
    /// (`cim_transfer_failures_total`): `s3_unreachable` (no answer: connection refused,
    /// timed out), `s3_throttled` (429, 503 SlowDown), `s3_server_error` (other 5xx),
    /// `s3_denied` (403), `s3_refused` (other answers, e.g. a bad digest), `unverified` (the
    /// service did not confirm our checksum), `integrity`, `io`, `nats`, `config`, `refused`
    /// (a rule kept the copy: newer version held, no room, catalog disagrees), or the NATS side's
    /// own reason ([`cim_tiering::Error::reason`]).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::S3 { cause, .. } => match cause.downcast_ref::<S3Failure>() {
                Some(S3Failure {
                    status: None,
                    transient: true,
                    ..
                }) => "s3_unreachable",
                Some(S3Failure {
                    status: Some(429 | 503),
                    ..
                }) => "s3_throttled",
                Some(S3Failure {
                    status: Some(500..=599),
                    ..
                }) => "s3_server_error",
                Some(S3Failure {
                    status: Some(403), ..
                }) => "s3_denied",
                _ => "s3_refused",
            },
            Error::Unconfirmed { .. } => "unverified",
            Error::Integrity { .. } => "integrity",
            Error::Io { .. } => "io",
            Error::Nats { .. } => "nats",
            Error::Tiering(e) => e.reason(),
            Error::Config { .. } => "config",
            Error::Manifest { .. }
            | Error::UnsupportedFormat { .. }
            | Error::WouldLoseVersion { .. }
            | Error::CatalogDisagrees { .. }
            | Error::NoRoom { .. }
            | Error::HeldByTier { .. }
            | Error::NotInS3 { .. } => "refused",
        }
    }

    /// True when this is an S3 error for a missing key or bucket (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        match self {
            Error::S3 { cause, .. } => cause
                .downcast_ref::<S3Failure>()
                .is_some_and(|f| f.status == Some(404)),
            _ => false,
        }
    }

    /// Names the NATS object an S3 call was for, if the error does not name one yet; other
    /// errors are returned unchanged.
    pub fn for_object(self, bucket: &str, name: &str) -> Self {
        match self {
            Error::S3 {
                op,
                key,
                object: None,
                cause,
            } => Error::S3 {
                op,
                key,
                object: Some(format!("{bucket}/{name}")),
                cause,
            },
            other => other,
        }
    }

    /// Builds an [`Error::S3`] from an SDK error, classifying it (see [`S3Failure`]).
    pub(crate) fn s3<E>(op: &'static str, key: impl Into<String>, err: SdkError<E>) -> Self
    where
        E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    {
        Error::S3 {
            op,
            key: key.into(),
            object: None,
            cause: Box::new(S3Failure::from_sdk(&err)),
        }
    }

    /// Builds an [`Error::S3`] for a failure reading a response body (always transient).
    pub(crate) fn s3_body(
        op: &'static str,
        key: impl Into<String>,
        err: &dyn fmt::Display,
    ) -> Self {
        Error::S3 {
            op,
            key: key.into(),
            object: None,
            cause: Box::new(S3Failure {
                message: format!("reading response body: {err}"),
                detail: err.to_string(),
                status: None,
                code: None,
                transient: true,
            }),
        }
    }

    /// Builds an [`Error::Io`].
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Builds an [`Error::Config`].
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Error::Config {
            message: message.into(),
        }
    }
}

/// The modes to suggest when `mode` cannot be confirmed by a service.
fn other_modes(mode: cim_policies::S3Verify) -> &'static str {
    match mode {
        cim_policies::S3Verify::Crc32c => "\"md5\"` or `verify = \"read-back\"",
        _ => "\"crc32c\"` or `verify = \"read-back\"",
    }
}

fn object_suffix(object: &Option<String>) -> String {
    match object {
        Some(object) => format!(" (object {object:?})"),
        None => String::new(),
    }
}

/// A classified S3 failure: the source of [`Error::S3`] for SDK errors.
///
/// The SDK's error types are generic per operation, so instead of boxing them (and losing the
/// ability to classify them later) the conversion records what retry logic and operators need: the
/// full error chain rendered with [`DisplayErrorContext`] (so the message shows the real cause,
/// not just "service error"), the HTTP status and S3 error code when there was a response, and
/// whether a retry may help.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct S3Failure {
    /// One line for people: the cause (the innermost error, or the service's status, code and
    /// message) and a hint where the cause is a common one. What `Display` shows.
    pub message: String,
    /// The whole cause chain as the SDK renders it (with its `Debug` dump): shown by `Debug`,
    /// so under `RUST_LOG=debug` (the binaries log the full error there), never to a user by
    /// default.
    pub detail: String,
    /// HTTP status of the response, if one was received.
    pub status: Option<u16>,
    /// S3 error code (`NoSuchKey`, `SlowDown`, ...), if the service sent one.
    pub code: Option<String>,
    /// Whether retrying may succeed.
    pub transient: bool,
}

/// S3 error codes that mean "try again later" whatever the HTTP status says.
const TRANSIENT_CODES: &[&str] = &[
    // The body the service received does not match the checksum we sent (`Content-MD5`,
    // `x-amz-checksum-*`): damaged on the way; the upload is sent again.
    "BadDigest",
    "InvalidDigest",
    "XAmzContentSHA256Mismatch",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "OperationAborted",
    // The multipart upload was aborted under us (by a lease holder that took over after ours
    // expired, or the day-old sweep): the retry finds the blob complete or uploads it again.
    "NoSuchUpload",
];

impl S3Failure {
    fn from_sdk<E>(err: &SdkError<E>) -> Self
    where
        E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.code().map(str::to_string);
        let transient = match err {
            SdkError::TimeoutError(_) => true,
            SdkError::DispatchFailure(failure) => !failure.is_user(),
            // The response could not be read or parsed: usually a connection cut mid-body.
            SdkError::ResponseError(_) => true,
            SdkError::ServiceError(_) => {
                matches!(status, Some(s) if s >= 500 || s == 429 || s == 408)
                    || code
                        .as_deref()
                        .is_some_and(|c| TRANSIENT_CODES.contains(&c))
            }
            // ConstructionFailure and future variants: a bug or bad input, not the network.
            _ => false,
        };
        S3Failure {
            message: summarize(err, status, code.as_deref()),
            detail: DisplayErrorContext(err).to_string(),
            status,
            code,
            transient,
        }
    }
}

/// The one-line cause of an SDK error (see [`S3Failure::message`]).
fn summarize<E>(err: &SdkError<E>, status: Option<u16>, code: Option<&str>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
{
    let inner = innermost(err);
    match err {
        SdkError::ServiceError(_) => {
            let mut line = match status {
                Some(status) => format!("HTTP {status}"),
                None => "the service refused the request".to_string(),
            };
            if let Some(code) = code {
                line.push_str(&format!(" {code}"));
            }
            if let Some(message) = err.message().filter(|m| !m.is_empty()) {
                line.push_str(&format!(": {}", first_line(message)));
            }
            let credentials = matches!(
                code,
                Some(
                    "InvalidAccessKeyId"
                        | "SignatureDoesNotMatch"
                        | "AccessDenied"
                        | "InvalidSignature"
                        | "AuthorizationHeaderMalformed"
                )
            ) || (code.is_none() && status == Some(403));
            if credentials {
                line.push_str(&format!(" (hint: {CREDENTIALS_HINT}, and the tier's region)"));
            } else if code == Some("NoSuchBucket") || (code.is_none() && status == Some(404)) {
                line.push_str(" (hint: the tier's bucket does not exist at this endpoint)");
            }
            line
        }
        SdkError::DispatchFailure(_) if is_credentials(err) => {
            format!("no credentials: {inner} (hint: {CREDENTIALS_HINT})")
        }
        SdkError::DispatchFailure(failure) if failure.is_timeout() => {
            format!("timed out connecting: {inner} (hint: is the tier's endpoint right and reachable?)")
        }
        SdkError::DispatchFailure(failure) if failure.is_io() => format!(
            "cannot reach the endpoint: {inner} (hint: is the tier's endpoint right and the service up?)"
        ),
        SdkError::DispatchFailure(_) => format!("request not sent: {inner}"),
        // The SDK renders a deadline as "timeout: ... occurred after 30s"; say it plainly.
        SdkError::TimeoutError(_) => format!("timed out: {inner}"),
        SdkError::ResponseError(_) => format!("reading the response failed: {inner}"),
        _ => format!("could not build the request: {inner}"),
    }
}

/// Where credentials come from, for hints (`docs/configuration.md` names the same sources).
const CREDENTIALS_HINT: &str =
    "check the tier's `credentials_file`, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY";

/// The first line of the deepest error in `err`'s source chain: the real cause, without the
/// wrappers' restatements of it.
fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = err;
    while let Some(source) = deepest.source() {
        deepest = source;
    }
    first_line(&deepest.to_string()).to_string()
}

/// Whether credentials could not be loaded (the SDK reports it as a dispatch failure).
fn is_credentials(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<aws_credential_types::provider::error::CredentialsError>() {
            return true;
        }
        next = e.source();
    }
    false
}

fn first_line(text: &str) -> &str {
    text.lines()
        .next()
        .unwrap_or("")
        .trim_end_matches(['.', ':'])
}

impl fmt::Display for S3Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for S3Failure {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integrity_message_names_the_object() {
        let e = Error::Integrity {
            bucket: "media".into(),
            name: "a b/c.mp4".into(),
            tier: "s3".into(),
            what: "sha-256".into(),
            expected: "SHA-256=x".into(),
            actual: "SHA-256=y".into(),
        };
        assert_eq!(
            e.to_string(),
            "integrity check failed for object \"a b/c.mp4\" in bucket \"media\" on tier s3: \
             sha-256 expected SHA-256=x, got SHA-256=y"
        );
        assert!(!e.is_transient());
    }

    #[test]
    fn a_failure_reason_is_one_of_the_documented_few() {
        let s3 = |transient, status| Error::S3 {
            op: "put_object",
            key: "k".into(),
            object: None,
            cause: Box::new(S3Failure {
                message: "boom".into(),
                detail: "boom".into(),
                status,
                code: None,
                transient,
            }),
        };
        let cases = [
            (s3(true, None), "s3_unreachable"),
            (s3(true, Some(503)), "s3_throttled"),
            (s3(true, Some(429)), "s3_throttled"),
            (s3(true, Some(500)), "s3_server_error"),
            (s3(false, Some(403)), "s3_denied"),
            (s3(true, Some(400)), "s3_refused"),
            (Error::config("x"), "config"),
        ];
        for (error, reason) in cases {
            assert_eq!(error.reason(), reason, "{error}");
            assert!(
                cim_tiering::metrics::TRANSFER_FAILURE_REASONS.contains(&reason),
                "{reason} is not in the documented vocabulary"
            );
        }
    }

    #[test]
    fn transience_follows_the_classification() {
        let s3 = |transient, status| Error::S3 {
            op: "get_object",
            key: "k".into(),
            object: None,
            cause: Box::new(S3Failure {
                message: "boom".into(),
                detail: "boom (Boom { .. })".into(),
                status,
                code: None,
                transient,
            }),
        };
        assert!(s3(true, Some(503)).is_transient());
        assert!(!s3(false, Some(403)).is_transient());
        assert!(s3(false, Some(404)).is_not_found());
        assert_eq!(s3(true, None).to_string(), "s3 get_object k: boom");
        assert_eq!(
            s3(true, None).for_object("media", "a b").to_string(),
            "s3 get_object k (object \"media/a b\"): boom"
        );
        assert!(s3(true, None).for_object("m", "n").is_transient());
        assert!(Error::io("x", std::io::Error::other("y")).is_transient());
        assert!(!Error::config("bad").is_transient());
    }
}
