//! Prometheus and the Pushgateway: our own instances (Debian's `prometheus` and
//! `prometheus-pushgateway` binaries, never the packaged services) on free loopback ports, with
//! their config and data in the test's temp dir.
//!
//! A test proves what an operator sees: [`Prometheus`] scrapes the roles' endpoints every
//! [`SCRAPE_INTERVAL`] and [`Prometheus::query`] asks its HTTP API, so the metric names, labels
//! and values are checked as PromQL sees them, not as a text parser in the test reads them.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use crate::process::Proc;
use crate::{free_port, http_client, locate, tail_file, wait_for};

/// How often [`Prometheus`] scrapes (and evaluates rules): short, so tests wait little.
pub const SCRAPE_INTERVAL: Duration = Duration::from_secs(1);

/// How long [`Prometheus::start`] and [`Pushgateway::start`] wait for `/-/ready`.
pub const PROMETHEUS_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The Prometheus server binary: `$CIM_PROMETHEUS`, else `/usr/bin/prometheus` (Debian's
/// `prometheus` package), else `prometheus` on `$PATH`.
pub fn prometheus_bin() -> PathBuf {
    locate(
        "CIM_PROMETHEUS",
        PathBuf::from("/usr/bin/prometheus"),
        "prometheus",
    )
}

/// `promtool` from the same package: `$CIM_PROMTOOL`, else `/usr/bin/promtool`, else `$PATH`.
pub fn promtool_bin() -> PathBuf {
    locate(
        "CIM_PROMTOOL",
        PathBuf::from("/usr/bin/promtool"),
        "promtool",
    )
}

/// The Pushgateway binary: `$CIM_PUSHGATEWAY`, else `/usr/bin/prometheus-pushgateway`
/// (Debian's `prometheus-pushgateway` package), else `prometheus-pushgateway` on `$PATH`.
pub fn pushgateway_bin() -> PathBuf {
    locate(
        "CIM_PUSHGATEWAY",
        PathBuf::from("/usr/bin/prometheus-pushgateway"),
        "prometheus-pushgateway",
    )
}

/// A scrape target: Prometheus job `job` (one per role, e.g. `cim-manager`) at `address`
/// (`127.0.0.1:PORT`, serving `/metrics`).
///
/// One job per role, and no target label of our own: a target label named like a metric label
/// (`role`) would rename the metric's own to `exported_role`.
#[derive(Debug, Clone)]
pub struct Target {
    /// The `job` label of everything scraped from it.
    pub job: String,
    /// `host:port`.
    pub address: String,
    /// Keep the scraped `job` and `instance` labels (what a Pushgateway's scrape job needs: the
    /// pushed groups carry their own).
    pub honor_labels: bool,
}

impl Target {
    /// A target on `127.0.0.1:port`.
    pub fn local(job: &str, port: u16) -> Target {
        Target {
            job: job.to_string(),
            address: format!("127.0.0.1:{port}"),
            honor_labels: false,
        }
    }

    /// The scrape target of a [`Pushgateway`], job `pushgateway`, with `honor_labels` as
    /// production sets it.
    pub fn pushgateway(gateway: &Pushgateway) -> Target {
        Target {
            job: "pushgateway".to_string(),
            address: gateway.url.trim_start_matches("http://").to_string(),
            honor_labels: true,
        }
    }
}

/// One element of an instant vector: its labels (`__name__` included when the series has one)
/// and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Label names to values.
    pub labels: BTreeMap<String, String>,
    /// The value (`NaN` and infinities as Prometheus renders them).
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, `""` when absent (as in PromQL).
    pub fn label(&self, name: &str) -> &str {
        self.labels.get(name).map_or("", String::as_str)
    }
}

/// How one loaded rule fared ([`Prometheus::rules`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleHealth {
    /// The alert's or recording rule's name.
    pub name: String,
    /// `ok`, `err`, or `unknown` (not evaluated yet).
    pub health: String,
    /// Why the last evaluation failed (empty when it did not).
    pub last_error: String,
}

/// Our own Prometheus server on a free loopback port, scraping the given targets every
/// [`SCRAPE_INTERVAL`]; config (`prometheus.yml`), TSDB (`data/`) and log in `dir/prometheus/`.
/// Killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct Prometheus {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    dir: PathBuf,
    proc: Proc,
}

impl Prometheus {
    /// Writes the config, starts the server and waits until it is ready. `rules`: rule files
    /// (e.g. `docs/alerts.yml`) to load, checked and evaluated like in production.
    pub async fn start(dir: &Path, targets: &[Target], rules: &[PathBuf]) -> anyhow::Result<Self> {
        let dir = dir.join("prometheus");
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(&config, config_yaml(targets, rules))
            .with_context(|| format!("write {}", config.display()))?;
        let args: Vec<OsString> = vec![
            format!("--config.file={}", config.display()).into(),
            format!("--storage.tsdb.path={}", dir.join("data").display()).into(),
            format!("--web.listen-address=127.0.0.1:{port}").into(),
            "--log.level=info".into(),
        ];
        let proc = Proc::new(&prometheus_bin(), &args, &[], &dir.join("prometheus.log"));
        proc.spawn()?;
        let prometheus = Prometheus {
            url: format!("http://127.0.0.1:{port}"),
            dir,
            proc,
        };
        wait_ready("prometheus", &prometheus.url, &prometheus.proc).await?;
        Ok(prometheus)
    }

    /// `dir/prometheus/` (`prometheus.yml`, `prometheus.log`, `data/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The last lines of the server's log (for failure messages).
    pub fn log_tail(&self) -> String {
        tail_file(self.proc.log_path(), 40)
    }

    /// Evaluates `expr` now (`/api/v1/query`). An instant vector comes back as its samples, a
    /// scalar as one sample without labels; an error of the query is an `Err` quoting it.
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<Sample>> {
        let response = http_client()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .with_context(|| format!("query {expr:?}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .with_context(|| format!("query {expr:?}: {status}, body is not JSON"))?;
        parse_query_response(&body).with_context(|| format!("query {expr:?} ({status})"))
    }

    /// The value of `expr` when it yields exactly one sample, `None` when it yields none.
    /// Errors when it yields several (the query should aggregate).
    pub async fn value(&self, expr: &str) -> anyhow::Result<Option<f64>> {
        let samples = self.query(expr).await?;
        match samples.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.value)),
            _ => anyhow::bail!(
                "query {expr:?} yields {} samples: {samples:?}",
                samples.len()
            ),
        }
    }

    /// Polls `expr` (one sample or none) until `accept` says yes; errors after `timeout`
    /// quoting the last value seen. Returns the accepted value.
    pub async fn wait_value(
        &self,
        expr: &str,
        timeout: Duration,
        accept: impl Fn(Option<f64>) -> bool,
    ) -> anyhow::Result<Option<f64>> {
        let accepted = std::cell::Cell::new(None);
        wait_for(&format!("prometheus: {expr}"), timeout, || {
            let (accepted, accept) = (&accepted, &accept);
            async move {
                let value = self.value(expr).await?;
                if accept(value) {
                    accepted.set(value);
                    Ok(None)
                } else {
                    Ok(Some(format!("value {value:?}")))
                }
            }
        })
        .await?;
        Ok(accepted.get())
    }

    /// Every loaded rule (`/api/v1/rules`): its name (an alert's or a recording rule's), health
    /// (`ok`, `err`, `unknown` until first evaluated) and last error.
    pub async fn rules(&self) -> anyhow::Result<Vec<RuleHealth>> {
        let url = format!("{}/api/v1/rules", self.url);
        let body: Value = http_client()
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?
            .json()
            .await
            .with_context(|| format!("GET {url}: not JSON"))?;
        anyhow::ensure!(body["status"] == "success", "GET {url}: {body}");
        let groups = body["data"]["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| RuleHealth {
                name: r["name"].as_str().unwrap_or_default().to_string(),
                health: r["health"].as_str().unwrap_or_default().to_string(),
                last_error: r["lastError"].as_str().unwrap_or_default().to_string(),
            })
            .collect())
    }

    /// Waits until every job of `targets` was scraped successfully (`up == 1`).
    pub async fn wait_up(&self, targets: &[Target], timeout: Duration) -> anyhow::Result<()> {
        wait_for("prometheus: every target up", timeout, || async {
            let up = self.query("up == 1").await?;
            let missing: Vec<&str> = targets
                .iter()
                .filter(|t| !up.iter().any(|s| s.label("job") == t.job))
                .map(|t| t.job.as_str())
                .collect();
            if self.proc.exit_status().is_some() {
                anyhow::bail!("prometheus exited; log tail:\n{}", self.log_tail());
            }
            Ok((!missing.is_empty()).then(|| format!("not up yet: {missing:?}")))
        })
        .await
    }

    /// Waits until `job` has been scraped `scrapes` more times than when called (its `up`
    /// sample's timestamp moved on by that many intervals): what a test waits for before
    /// saying a counter "stopped rising", instead of sleeping.
    pub async fn wait_scrapes(
        &self,
        job: &str,
        scrapes: u32,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let expr = format!("timestamp(up{{job={job:?}}})");
        let start = self
            .wait_value(&expr, timeout, |v| v.is_some())
            .await?
            .unwrap_or_default();
        let needed = start + f64::from(scrapes) * SCRAPE_INTERVAL.as_secs_f64() * 0.9;
        self.wait_value(&expr, timeout, |v| v.is_some_and(|t| t >= needed))
            .await
            .map(|_| ())
    }

    /// Stops the server (SIGTERM, SIGKILL after 5 s).
    pub fn stop(&mut self) {
        if self.proc.started() {
            let _ = self.proc.terminate(Duration::from_secs(5));
        }
    }
}

/// The config: one job per target, scraped every [`SCRAPE_INTERVAL`], rules evaluated as
/// often.
fn config_yaml(targets: &[Target], rules: &[PathBuf]) -> String {
    let interval = format!("{}ms", SCRAPE_INTERVAL.as_millis());
    let mut yaml = format!(
        "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  \
         evaluation_interval: {interval}\n"
    );
    if !rules.is_empty() {
        yaml.push_str("rule_files:\n");
        for rule in rules {
            yaml.push_str(&format!(
                "  - {}\n",
                yaml_string(&rule.display().to_string())
            ));
        }
    }
    yaml.push_str("scrape_configs:\n");
    for target in targets {
        yaml.push_str(&format!(
            "  - job_name: {}\n    honor_labels: {}\n    static_configs:\n      - targets: [{}]\n",
            yaml_string(&target.job),
            target.honor_labels,
            yaml_string(&target.address)
        ));
    }
    yaml
}

/// A YAML double-quoted string (JSON's escaping is valid YAML).
fn yaml_string(s: &str) -> String {
    Value::String(s.to_string()).to_string()
}

/// The samples of a `/api/v1/query` answer (vector or scalar), or the error it reports.
fn parse_query_response(body: &Value) -> anyhow::Result<Vec<Sample>> {
    if body["status"] != "success" {
        anyhow::bail!(
            "{}: {}",
            body["errorType"].as_str().unwrap_or("error"),
            body["error"].as_str().unwrap_or("(no message)")
        );
    }
    let data = &body["data"];
    let value_of = |pair: &Value| -> anyhow::Result<f64> {
        let text = pair[1]
            .as_str()
            .with_context(|| format!("value {pair} is not [time, \"number\"]"))?;
        parse_value(text)
    };
    match data["resultType"].as_str() {
        Some("vector") => data["result"]
            .as_array()
            .context("vector result is not an array")?
            .iter()
            .map(|element| {
                let labels = element["metric"]
                    .as_object()
                    .context("sample without a metric object")?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect();
                Ok(Sample {
                    labels,
                    value: value_of(&element["value"])?,
                })
            })
            .collect(),
        Some("scalar") => Ok(vec![Sample {
            labels: BTreeMap::new(),
            value: value_of(&data["result"])?,
        }]),
        other => anyhow::bail!("result type {other:?} is not an instant vector or scalar"),
    }
}

/// A sample value as Prometheus renders it (`"1.5"`, `"NaN"`, `"+Inf"`, `"-Inf"`).
fn parse_value(text: &str) -> anyhow::Result<f64> {
    match text {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => text
            .parse()
            .with_context(|| format!("{text:?} is not a number")),
    }
}

/// Our own Pushgateway on a free loopback port, keeping what is pushed in memory only.
/// Killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct Pushgateway {
    /// `http://127.0.0.1:PORT`: what `[metrics] pushgateway` is set to.
    pub url: String,
    proc: Proc,
}

impl Pushgateway {
    /// Starts the server (log in `dir/pushgateway.log`) and waits until it is ready.
    pub async fn start(dir: &Path) -> anyhow::Result<Self> {
        let port = free_port();
        let args: Vec<OsString> = vec![
            format!("--web.listen-address=127.0.0.1:{port}").into(),
            // In memory only: never the packaged service's /var/lib file.
            "--persistence.file=".into(),
        ];
        let proc = Proc::new(&pushgateway_bin(), &args, &[], &dir.join("pushgateway.log"));
        proc.spawn()?;
        let gateway = Pushgateway {
            url: format!("http://127.0.0.1:{port}"),
            proc,
        };
        wait_ready("pushgateway", &gateway.url, &gateway.proc).await?;
        Ok(gateway)
    }

    /// Everything it holds, in the text format Prometheus would scrape (`/metrics`: the pushed
    /// groups, each sample labelled with its grouping key, plus the gateway's own metrics).
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let url = format!("{}/metrics", self.url);
        let response = http_client()
            .get(&url)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        anyhow::ensure!(status.is_success(), "GET {url}: {status}");
        Ok(response.text().await?)
    }

    /// The last lines of its log (for failure messages).
    pub fn log_tail(&self) -> String {
        tail_file(self.proc.log_path(), 40)
    }
}

/// Polls `url/-/ready` (both servers have it) until it answers 200; errors at once if the
/// process exited.
async fn wait_ready(what: &str, url: &str, proc: &Proc) -> anyhow::Result<()> {
    let http = http_client();
    let ready = format!("{url}/-/ready");
    wait_for(
        &format!("{what} ready"),
        PROMETHEUS_READY_TIMEOUT,
        || async {
            if let Some(status) = proc.exit_status() {
                anyhow::bail!(
                    "{what} exited ({status}); log tail:\n{}",
                    tail_file(proc.log_path(), 40)
                );
            }
            match http.get(&ready).send().await {
                Ok(r) if r.status().is_success() => Ok(None),
                Ok(r) => Ok(Some(format!("GET {ready}: {}", r.status()))),
                Err(e) => Ok(Some(format!("GET {ready}: {e}"))),
            }
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_and_scalars_parse_and_errors_are_quoted() -> anyhow::Result<()> {
        let vector = serde_json::json!({
            "status": "success",
            "data": {"resultType": "vector", "result": [
                {"metric": {"__name__": "up", "job": "cim-manager"}, "value": [1.5, "1"]},
                {"metric": {"job": "x"}, "value": [1.5, "+Inf"]}
            ]}
        });
        let samples = parse_query_response(&vector)?;
        assert_eq!(samples.len(), 2);
        assert_eq!(samples[0].label("job"), "cim-manager");
        assert_eq!(samples[0].label("role"), "");
        assert_eq!(samples[0].value, 1.0);
        assert_eq!(samples[1].value, f64::INFINITY);
        let scalar = serde_json::json!({
            "status": "success", "data": {"resultType": "scalar", "result": [1.5, "42"]}
        });
        assert_eq!(parse_query_response(&scalar)?[0].value, 42.0);
        let error = serde_json::json!({
            "status": "error", "errorType": "bad_data", "error": "parse error"
        });
        let Err(e) = parse_query_response(&error) else {
            panic!("an error answer parsed");
        };
        let message = format!("{e:#}");
        assert!(message.contains("bad_data: parse error"), "{message}");
        Ok(())
    }

    #[test]
    fn the_config_names_one_job_per_target() {
        let yaml = config_yaml(
            &[
                Target::local("cim-manager", 9464),
                Target::local("cim-upload", 9466),
            ],
            &[PathBuf::from("/x/alerts.yml")],
        );
        assert!(yaml.contains("scrape_interval: 1000ms"), "{yaml}");
        assert!(yaml.contains("  - \"/x/alerts.yml\"\n"), "{yaml}");
        assert!(yaml.contains("job_name: \"cim-upload\""), "{yaml}");
        assert!(yaml.contains("targets: [\"127.0.0.1:9466\"]"), "{yaml}");
    }
}
