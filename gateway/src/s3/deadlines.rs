//! Deadlines of every S3 call: nothing waits forever on S3.
//!
//! An endpoint that accepts connections and never answers (a hung load balancer, a stalled
//! proxy, a black-holed route after the handshake) would otherwise hang an upload, `list` and
//! `restore` forever: the AWS SDK sets no request timeout by default. Every call therefore has
//!
//! * a **connect** deadline ([`CONNECT_TIMEOUT`]);
//! * a deadline **per attempt** ([`ATTEMPT_TIMEOUT`] for requests without a large body; for
//!   requests carrying a blob or a part, [`upload_attempt_timeout`] of the body's length);
//! * a deadline for the **whole operation**, retries included ([`OPERATION_TIMEOUT`], or
//!   [`MAX_ATTEMPTS`] times the attempt deadline for uploads), with the SDK's standard retry
//!   (jittered exponential backoff, [`MAX_ATTEMPTS`] attempts);
//! * an **idle-read** deadline on streamed response bodies ([`BODY_IDLE_TIMEOUT`]): the attempt
//!   deadline ends when the response headers arrive, and a GetObject body is read afterwards.
//!
//! A call that runs out of time fails with a transient [`crate::Error::S3`] naming the operation
//! and key (and the object, where the call is about one); the work item is retried.

use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;

/// Time to open a TCP (and TLS) connection. A few round trips even across continents; the SDK's
/// own default is 3.1 s.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One attempt of a request without a large body (HEAD, LIST, GET up to its response headers,
/// a manifest PUT, creating or aborting a multipart upload). S3 answers these in tens of
/// milliseconds; ten seconds without an answer means the endpoint is not answering.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Attempts per call (the first plus two retries), with the SDK's jittered exponential backoff.
pub const MAX_ATTEMPTS: u32 = 3;

/// A whole call without a large body, retries included. Slightly less than [`MAX_ATTEMPTS`]
/// full attempts plus backoff: a call against a silent endpoint gives up after this long.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// Slowest upload rate an attempt carrying a body is given time for: 256 KiB/s (about
/// 2 Mbit/s, a poor uplink). A 64 MiB part gets 10 s + 256 s ≈ 4.4 minutes per attempt; the
/// default 16 MiB part gets 74 s.
pub const MIN_UPLOAD_RATE: u64 = 256 * 1024;

/// One attempt of CompleteMultipartUpload: S3 assembles the parts before it answers, which AWS
/// documents can take minutes for large objects.
pub const COMPLETE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest a streamed response body (a GetObject) may go without delivering a byte while it is
/// being read. Time spent by the reader's consumer (writing restored bytes) does not count.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// Timeouts of the client: every call without a large body.
pub(crate) fn client_timeouts() -> TimeoutConfig {
    timeouts(ATTEMPT_TIMEOUT, OPERATION_TIMEOUT)
}

/// The SDK's standard retry with [`MAX_ATTEMPTS`] attempts.
pub(crate) fn retries() -> RetryConfig {
    RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS)
}

/// Per-attempt deadline of a request carrying `len` body bytes: [`ATTEMPT_TIMEOUT`] plus the
/// time to send `len` bytes at [`MIN_UPLOAD_RATE`].
pub fn upload_attempt_timeout(len: u64) -> Duration {
    ATTEMPT_TIMEOUT + Duration::from_secs(len.div_ceil(MIN_UPLOAD_RATE))
}

/// Timeouts for a request carrying `len` body bytes (PutObject of a blob, UploadPart).
pub(crate) fn upload_timeouts(len: u64) -> TimeoutConfig {
    let attempt = upload_attempt_timeout(len);
    timeouts(attempt, attempt * MAX_ATTEMPTS)
}

/// Timeouts for CompleteMultipartUpload.
pub(crate) fn complete_timeouts() -> TimeoutConfig {
    timeouts(
        COMPLETE_ATTEMPT_TIMEOUT,
        COMPLETE_ATTEMPT_TIMEOUT * MAX_ATTEMPTS,
    )
}

fn timeouts(attempt: Duration, operation: Duration) -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(attempt)
        .operation_timeout(operation)
        .build()
}

/// A per-request configuration override with `timeouts` (for `customize().config_override`).
pub(crate) fn with_timeouts(timeouts: TimeoutConfig) -> aws_sdk_s3::config::Builder {
    aws_sdk_s3::config::Builder::default().timeout_config(timeouts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_64_mib_part_fits_a_slow_link() {
        let part = 64 * 1024 * 1024;
        assert_eq!(upload_attempt_timeout(part), Duration::from_secs(10 + 256));
        assert_eq!(upload_attempt_timeout(0), ATTEMPT_TIMEOUT);
        let t = upload_timeouts(part);
        assert_eq!(t.operation_timeout(), Some(Duration::from_secs(3 * 266)));
        assert_eq!(client_timeouts().connect_timeout(), Some(CONNECT_TIMEOUT));
    }
}
