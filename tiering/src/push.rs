//! One-shot commands (`cim-gateway restore`, `gc`, `scrub`) report to a Prometheus Pushgateway.
//!
//! They exit before any scrape could see them, so when `[metrics] pushgateway` is set they
//! record their metrics in memory (no endpoint) and, when the run ends — succeeded or not: a
//! failed run's counters matter most — replace their group on the Pushgateway with everything
//! they counted (HTTP `PUT` of the rendered registry). The group is
//! `/metrics/job/cim/role/<role>/instance/<host>`, so every command on every host keeps its own
//! last run. The push has a deadline and never fails the command: a Pushgateway that is down
//! costs a warning in the log, not a restore.

use std::sync::OnceLock;
use std::time::Duration;

use base64::Engine as _;
use cim_policies::MetricsConfig;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::metrics::Role;
use crate::Error;

/// The push as a whole (connect, send, answer) gets this long: a one-shot command must end
/// even when the Pushgateway hangs.
pub const PUSH_DEADLINE: Duration = Duration::from_secs(10);

/// The `job` label of every pushed group.
pub const JOB: &str = "cim";

/// A one-shot command's metrics, kept in memory for one push at the end of the run.
struct Pusher {
    handle: PrometheusHandle,
    url: String,
    role: Role,
}

/// The process's pusher: one recorder per process, as the metrics facade allows.
static PUSHER: OnceLock<Pusher> = OnceLock::new();

/// Installs the process's metrics recorder (the roles' own, histogram buckets included) for a
/// one-shot command (`restore`, `gc`, `scrub`) when `config` names a Pushgateway; without one,
/// nothing is recorded and [`push`] does nothing. Call it once, right after loading the
/// configuration and before [`crate::metrics::role_started`] (which then registers the
/// command's series); returns the group's URL when pushing is on.
pub fn install(config: &MetricsConfig, role: Role) -> Option<String> {
    let base = config.pushgateway.as_deref()?;
    let handle = match crate::metrics::install() {
        Ok(handle) => handle,
        Err(e) => {
            tracing::warn!(error = %e, "cannot record metrics; nothing will be pushed");
            return None;
        }
    };
    let url = group_url(base, role.as_str(), &host_name());
    let _ = PUSHER.set(Pusher {
        handle,
        url: url.clone(),
        role,
    });
    Some(url)
}

/// Replaces the command's group on the Pushgateway with what the run recorded, within
/// [`PUSH_DEADLINE`], if [`install`] turned pushing on. Call it when the run ended, whatever the
/// outcome (a failed run's counts matter most); `succeeded` (exit status 0) first sets the
/// command's `cim_last_success_timestamp_seconds` to now. Logs the outcome; never fails.
pub async fn push(succeeded: bool) {
    let Some(pusher) = PUSHER.get() else { return };
    if succeeded {
        crate::metrics::succeeded(pusher.role);
    }
    match put(&pusher.url, pusher.handle.render()).await {
        Ok(()) => tracing::info!(url = %pusher.url, "pushed metrics to the pushgateway"),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot push metrics; this run's metrics are lost (the command's outcome is not affected)"
        ),
    }
}

/// `PUT`s `body` (Prometheus text format) to `url` within [`PUSH_DEADLINE`].
async fn put(url: &str, body: String) -> Result<(), Error> {
    let failed = |reason: String| Error::Push {
        url: url.to_string(),
        reason,
    };
    let client = reqwest::Client::builder()
        .timeout(PUSH_DEADLINE)
        .connect_timeout(PUSH_DEADLINE)
        .build()
        .map_err(|e| failed(format!("http client: {e}")))?;
    let request = client
        .put(url)
        .header("Content-Type", "text/plain; version=0.0.4")
        .body(body)
        .send();
    // The client's timeout covers the request; this one also covers reading the answer.
    let response = tokio::time::timeout(PUSH_DEADLINE, async {
        let response = request.await.map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        Ok::<_, String>((status, text))
    })
    .await
    .map_err(|_| failed(format!("no answer within {PUSH_DEADLINE:?}")))?
    .map_err(failed)?;
    match response {
        (status, _) if status.is_success() => Ok(()),
        (status, text) => Err(failed(format!("{status}: {}", text.trim()))),
    }
}

/// The URL of group `job=cim, role, instance=host` under Pushgateway base URL `base`.
fn group_url(base: &str, role: &str, host: &str) -> String {
    format!(
        "{}/metrics/job/{JOB}/{}/{}",
        base.trim_end_matches('/'),
        grouping_label("role", role),
        grouping_label("instance", host)
    )
}

/// One grouping-key label as a path: `name/value`, or `name@base64/<base64url>` when the value
/// is not plain (the Pushgateway's encoding for values with `/` or other characters; an empty
/// value is `=` in it).
fn grouping_label(name: &str, value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if plain {
        format!("{name}/{value}")
    } else if value.is_empty() {
        format!("{name}@base64/=")
    } else {
        format!(
            "{name}@base64/{}",
            base64::engine::general_purpose::URL_SAFE.encode(value)
        )
    }
}

/// This host's name (the kernel's), for the `instance` label; `unknown` if it cannot be read.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_group_is_job_role_instance() {
        assert_eq!(
            group_url("http://127.0.0.1:9091/", "restore", "edge-1.example"),
            "http://127.0.0.1:9091/metrics/job/cim/role/restore/instance/edge-1.example"
        );
        assert_eq!(
            group_url("http://pg/prefix", "gc", "a/b"),
            "http://pg/prefix/metrics/job/cim/role/gc/instance@base64/YS9i"
        );
        assert_eq!(grouping_label("instance", ""), "instance@base64/=");
    }

    #[test]
    fn the_host_name_is_never_empty() {
        assert!(!host_name().is_empty());
    }

    #[tokio::test]
    async fn a_pushgateway_that_is_not_there_is_an_error_not_a_hang() {
        // A port nobody listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(9);
        let url = format!("http://127.0.0.1:{port}/metrics/job/cim");
        let result = put(&url, "x 1\n".to_string()).await;
        assert!(result.is_err(), "{result:?}");
    }
}
