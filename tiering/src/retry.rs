//! The one retry helper: jittered exponential backoff, bounded by attempts *and* total time.
//!
//! Used where a role meets a transient condition it cannot wait out through the work queue, such
//! as start-up while the cluster is still electing leaders or another role is creating the same
//! stream at the same instant.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use rand::Rng;

use crate::error::Error;

/// Bounds of a retry loop.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Attempts at most (the first one included).
    pub attempts: u32,
    /// Give up once this much time has passed since the first attempt.
    pub deadline: Duration,
}

impl Backoff {
    /// For start-up: up to a minute of retries, delays from 200 ms to 5 s.
    pub const STARTUP: Backoff = Backoff {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(5),
        attempts: 30,
        deadline: Duration::from_secs(60),
    };
}

/// Runs `f` until it succeeds, fails with a non-transient error, or the bounds are spent;
/// returns the last error then. Logs each retry with `what`.
pub async fn retry<T, F, Fut>(what: &str, backoff: Backoff, mut f: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let started = Instant::now();
    let mut delay = backoff.initial;
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(value) => return Ok(value),
            Err(e)
                if e.is_transient()
                    && attempt < backoff.attempts
                    && started.elapsed() + delay < backoff.deadline =>
            {
                // Full jitter between half and all of the delay, so roles started together spread out.
                let jittered = delay.mul_f64(rand::rng().random_range(0.5..=1.0));
                tracing::warn!(what, attempt, error = %e, retry_in = ?jittered, "transient failure; retrying");
                tokio::time::sleep(jittered).await;
                delay = (delay * 2).min(backoff.max);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn transient() -> Error {
        Error::Work {
            op: "test",
            source: "flaky".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_errors_until_success() {
        let mut calls = 0;
        let value = retry("t", Backoff::STARTUP, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 4 {
                    Err(transient())
                } else {
                    Ok(n)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(value, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_on_permanent_errors_at_once() {
        let mut calls = 0;
        let err = retry::<(), _, _>("t", Backoff::STARTUP, || {
            calls += 1;
            async { Err(Error::Config("bad".into())) }
        })
        .await
        .unwrap_err();
        assert!(matches!(err, Error::Config(_)));
        assert_eq!(calls, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_the_attempt_bound() {
        let mut calls = 0;
        let bounds = Backoff {
            attempts: 3,
            ..Backoff::STARTUP
        };
        let result = retry::<(), _, _>("t", bounds, || {
            calls += 1;
            async { Err(transient()) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn stops_at_the_deadline() {
        let started = tokio::time::Instant::now();
        let bounds = Backoff {
            attempts: u32::MAX,
            ..Backoff::STARTUP
        };
        let result = retry::<(), _, _>("t", bounds, || async { Err(transient()) }).await;
        assert!(result.is_err());
        assert!(started.elapsed() <= Backoff::STARTUP.deadline);
    }
}
