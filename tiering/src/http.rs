//! The one HTTP endpoint every long-running role serves on `[metrics] listen`:
//!
//! - `/metrics`: Prometheus text (what the global recorder holds, see [`crate::metrics`]);
//! - `/healthz`: `200 ok` while the process runs (a liveness probe: restart it if this fails);
//! - `/readyz`: `200 ready` only when the role can do its work — connected to NATS and, for the
//!   upload role, its S3 tiers reachable — else `503` with a one-line reason (a readiness probe:
//!   look at it, or route nothing to it, but do not restart it for this).
//!
//! The checks behind `/readyz` are the role's ([`Readiness::set`]); until it sets them (it is
//! still connecting), the role is not ready. Each check runs under [`CHECK_DEADLINE`]; one that
//! costs a request (the S3 probe) is wrapped in [`cached`] so scrapes do not hammer the service.
//!
//! We serve this ourselves (hyper) rather than through metrics-exporter-prometheus' listener,
//! which serves only `/metrics`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

/// How long one readiness check may take before it counts as failed.
pub const CHECK_DEADLINE: Duration = Duration::from_secs(3);

/// How long a client may take to send a request's headers; also bounds an idle keep-alive
/// connection, so a silent client never holds a task for long.
const HEADER_DEADLINE: Duration = Duration::from_secs(10);

/// A connection is closed after this, whatever it does (every network await has a deadline).
const CONNECTION_DEADLINE: Duration = Duration::from_secs(300);

/// How often histograms and summaries are maintained (the recorder's upkeep).
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// A readiness check: `Ok(())` when ready, or the one-line reason it is not.
pub type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// What `/readyz` asks. Cheap to clone; the role sets its checks once it has connected.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<RwLock<Option<Vec<Check>>>>,
}

impl Readiness {
    /// From now on the role is ready when every one of `checks` passes (in order; the first
    /// failure is the reason given).
    pub fn set(&self, checks: Vec<Check>) {
        *self.checks.write().unwrap_or_else(|e| e.into_inner()) = Some(checks);
    }

    /// `Ok(())` when ready, or why not.
    pub async fn check(&self) -> Result<(), String> {
        let checks = self
            .checks
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(checks) = checks else {
            return Err("starting: not connected yet".to_string());
        };
        for check in checks {
            match tokio::time::timeout(CHECK_DEADLINE, check()).await {
                Ok(Ok(())) => {}
                Ok(Err(why)) => return Err(why),
                Err(_) => return Err(format!("a check took longer than {CHECK_DEADLINE:?}")),
            }
        }
        Ok(())
    }
}

/// A check that passes while every one of `clients` is connected to NATS (async-nats
/// reconnects by itself; while it is disconnected the role can do nothing). `clients` are
/// `(what, client)`, `what` naming the connection in the reason.
pub fn nats_connected(clients: Vec<(String, async_nats::Client)>) -> Check {
    let clients = Arc::new(clients);
    Arc::new(move || {
        let clients = clients.clone();
        Box::pin(async move {
            for (what, client) in clients.iter() {
                let state = client.connection_state();
                if state != async_nats::connection::State::Connected {
                    return Err(format!("nats {what}: {state}"));
                }
            }
            Ok(())
        })
    })
}

/// A check's answer and when it was given.
type Answer = (Instant, Result<(), String>);

/// How long a [`cached`] probe may take: less than [`CHECK_DEADLINE`], so its answer (a
/// timeout included) is what gets cached.
pub const PROBE_DEADLINE: Duration = Duration::from_secs(2);

/// Wraps `check` so it runs at most once per `ttl`, under [`PROBE_DEADLINE`]: later calls
/// within `ttl` answer with the last result. For checks that cost a request to another
/// service. Concurrent callers wait for the one probe in flight. `what` names the service in
/// the reason a probe past its deadline gives (a loaded machine gets there before the
/// check's own error).
pub fn cached(ttl: Duration, what: String, check: Check) -> Check {
    let last: Arc<tokio::sync::Mutex<Option<Answer>>> = Arc::default();
    let what: Arc<str> = Arc::from(what);
    Arc::new(move || {
        let (last, check, what) = (last.clone(), check.clone(), what.clone());
        Box::pin(async move {
            let mut last = last.lock().await;
            if let Some((at, result)) = last.as_ref() {
                if at.elapsed() < ttl {
                    return result.clone();
                }
            }
            let result = match tokio::time::timeout(PROBE_DEADLINE, check()).await {
                Ok(result) => result,
                Err(_) => Err(format!("{what}: no answer within {PROBE_DEADLINE:?}")),
            };
            *last = Some((Instant::now(), result.clone()));
            result
        })
    })
}

/// Binds `listen` now (so a taken port fails the role at start) and serves `/metrics`,
/// `/healthz` and `/readyz` until `shutdown`. Returns the bound address.
pub async fn serve(
    listen: SocketAddr,
    metrics: PrometheusHandle,
    readiness: Readiness,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let bound = listener.local_addr()?;
    let state = Arc::new(State { metrics, readiness });
    tokio::spawn({
        let (state, shutdown) = (state.clone(), shutdown.clone());
        async move {
            let mut every = tokio::time::interval(UPKEEP_EVERY);
            loop {
                tokio::select! {
                    _ = every.tick() => state.metrics.run_upkeep(),
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    });
    tokio::spawn(async move {
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, say: back off instead of spinning.
                        tracing::warn!(error = %e, "metrics endpoint: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => return,
            };
            let (state, shutdown) = (state.clone(), shutdown.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(state.answer(request).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_DEADLINE)
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = tokio::time::timeout(CONNECTION_DEADLINE, connection) => {}
                    _ = shutdown.cancelled() => {}
                }
            });
        }
    });
    Ok(bound)
}

struct State {
    metrics: PrometheusHandle,
    readiness: Readiness,
}

impl State {
    async fn answer(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != Method::GET && request.method() != Method::HEAD {
            return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        }
        match request.uri().path() {
            "/metrics" => {
                let mut response = text(StatusCode::OK, self.metrics.render());
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                response
            }
            "/healthz" => text(StatusCode::OK, "ok\n".into()),
            "/readyz" => match self.readiness.check().await {
                Ok(()) => text(StatusCode::OK, "ready\n".into()),
                Err(why) => text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n", one_line(&why)),
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "not found (try /metrics, /healthz, /readyz)\n".into(),
            ),
        }
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The reason on one line: error chains from the SDK can span several.
fn one_line(why: &str) -> String {
    why.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn counting(calls: Arc<AtomicUsize>, result: Result<(), String>) -> Check {
        Arc::new(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let result = result.clone();
            Box::pin(async move { result })
        })
    }

    #[tokio::test]
    async fn not_ready_until_checks_are_set_then_the_first_failure_is_the_reason() {
        let readiness = Readiness::default();
        assert!(readiness.check().await.unwrap_err().contains("starting"));
        let calls = Arc::new(AtomicUsize::new(0));
        readiness.set(vec![
            counting(calls.clone(), Ok(())),
            counting(calls.clone(), Err("s3 tier wasabi: unreachable".into())),
        ]);
        assert_eq!(
            readiness.check().await.unwrap_err(),
            "s3 tier wasabi: unreachable"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        readiness.set(vec![]);
        assert_eq!(readiness.check().await, Ok(()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cached_check_runs_once_per_ttl() {
        let calls = Arc::new(AtomicUsize::new(0));
        let check = cached(
            Duration::from_secs(5),
            "the service".into(),
            counting(calls.clone(), Err("down".into())),
        );
        assert_eq!(check().await, Err("down".into()));
        assert_eq!(check().await, Err("down".into()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(check().await, Err("down".into()));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_past_its_deadline_names_what_did_not_answer() {
        let check = cached(
            Duration::from_secs(5),
            "s3 tier archive (http://127.0.0.1:1) unreachable".into(),
            Arc::new(|| Box::pin(std::future::pending::<Result<(), String>>())),
        );
        assert_eq!(
            check().await,
            Err("s3 tier archive (http://127.0.0.1:1) unreachable: no answer within 2s".into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_check_fails_at_its_deadline() {
        let readiness = Readiness::default();
        readiness.set(vec![Arc::new(|| {
            Box::pin(std::future::pending::<Result<(), String>>())
        })]);
        assert!(readiness.check().await.unwrap_err().contains("longer than"));
    }

    #[test]
    fn reasons_are_one_line() {
        assert_eq!(one_line("a\n  b\tc"), "a b c");
    }
}
