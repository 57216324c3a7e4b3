//! Validation: checks the raw values field by field, collecting every
//! [`Problem`], and builds the validated [`Config`].

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use super::{
    defaults, duration, raw, AccessConfig, CatalogConfig, Config, JetStreamRole, ManagerConfig,
    MetricsConfig, NatsConfig, RestoreConfig, UploadConfig, WorkConfig, MIB,
};
use crate::error::Problem;
use crate::policy::{is_simple_name, Policy};

mod policy;
mod tier;

/// Collects problems while converting raw values.
struct Checker {
    problems: Vec<Problem>,
}

const NATS_SCHEMES: [&str; 4] = ["nats://", "tls://", "ws://", "wss://"];
const AFTER_EXAMPLES: &str = r#""10m", "30d", "0s""#;
const INTERVAL_EXAMPLES: &str = r#""10s", "1m", "500ms""#;

impl Checker {
    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    fn nats_url(&mut self, path: &str, url: &str) -> Option<String> {
        if url.trim().is_empty() {
            self.problem(path, "must not be empty");
            return None;
        }
        for part in url.split(',').map(str::trim) {
            let ok = NATS_SCHEMES
                .iter()
                .any(|s| part.strip_prefix(s).is_some_and(|rest| !rest.is_empty()));
            if !ok {
                self.problem(
                    path,
                    format!(
                        "{part:?} is not a NATS server URL (expected nats://HOST:PORT, \
                         tls://, ws:// or wss://; several URLs may be separated by commas)"
                    ),
                );
                return None;
            }
        }
        Some(url.to_owned())
    }

    /// A Pushgateway base URL: `http://HOST[:PORT][/PREFIX]`, returned without a trailing `/`.
    /// Plain http only (the push client carries no TLS; a Pushgateway is usually reached on the
    /// host or its network), no query or fragment (the push appends the grouping-key path).
    fn pushgateway_url(&mut self, path: &str, url: &str) -> Option<String> {
        let trimmed = url.trim_end_matches('/');
        let host = trimmed.strip_prefix("http://").unwrap_or_default();
        let host = host.split('/').next().unwrap_or_default();
        let why = if url.starts_with("https://") {
            Some("https is not supported: use http:// (a Pushgateway on this host or its network)")
        } else if !url.starts_with("http://") {
            Some("must start with http://")
        } else if host.is_empty() || host.starts_with(':') {
            Some("has no host")
        } else if trimmed.contains(['?', '#']) || trimmed.contains(char::is_whitespace) {
            Some("must not contain a query, a fragment or white space")
        } else {
            None
        };
        match why {
            None => Some(trimmed.to_owned()),
            Some(why) => {
                self.problem(
                    path,
                    format!(
                        "{url:?} {why} (expected the Pushgateway's base URL, e.g. \
                         \"http://127.0.0.1:9091\")"
                    ),
                );
                None
            }
        }
    }

    fn int_in(&mut self, path: &str, value: i64, range: RangeInclusive<i64>) -> Option<i64> {
        if range.contains(&value) {
            Some(value)
        } else {
            self.problem(
                path,
                format!(
                    "{value} is out of range {}..={}",
                    range.start(),
                    range.end()
                ),
            );
            None
        }
    }

    fn usize_in(&mut self, path: &str, value: i64, range: RangeInclusive<i64>) -> Option<usize> {
        self.int_in(path, value, range)
            .and_then(|v| usize::try_from(v).ok())
    }

    fn duration(&mut self, path: &str, text: &str, examples: &str) -> Option<Duration> {
        let parsed = duration::parse(text);
        if parsed.is_none() {
            self.problem(
                path,
                format!("{text:?} is not a duration (examples: {examples})"),
            );
        }
        parsed
    }

    fn positive_duration(
        &mut self,
        path: &str,
        text: Option<&str>,
        default: Duration,
    ) -> Option<Duration> {
        let text = match text {
            None => return Some(default),
            Some(t) => t,
        };
        let d = self.duration(path, text, INTERVAL_EXAMPLES)?;
        if d.is_zero() {
            self.problem(path, format!("{text:?} must be greater than zero"));
            return None;
        }
        Some(d)
    }

    fn simple_name(&mut self, path: &str, value: &str, what: &str) -> Option<String> {
        if value.is_empty() {
            self.problem(path, "must not be empty");
            None
        } else if is_simple_name(value) {
            Some(value.to_owned())
        } else {
            self.problem(
                path,
                format!("{value:?} is not a valid {what} (use only A-Z a-z 0-9 _ -)"),
            );
            None
        }
    }

    fn path_buf(&mut self, path: &str, value: Option<String>) -> Option<Option<PathBuf>> {
        match value {
            None => Some(None),
            Some(v) if v.is_empty() => {
                self.problem(path, "must not be empty (omit the key instead)");
                None
            }
            Some(v) => Some(Some(PathBuf::from(v))),
        }
    }

    fn nats(&mut self, raw: raw::Nats) -> Option<NatsConfig> {
        let url = self.nats_url("nats.url", &raw.url);
        let credentials_file = self.path_buf("nats.credentials_file", raw.credentials_file);
        let replicas = match raw.replicas {
            None => Some(defaults::NATS_REPLICAS),
            Some(r) => self.usize_in("nats.replicas", r, defaults::REPLICAS_RANGE),
        };
        Some(NatsConfig {
            url: url?,
            credentials_file: credentials_file?,
            replicas: replicas?,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TierKind {
    JetStream(JetStreamRole),
    S3,
}

pub(super) fn validate(raw: raw::Config) -> Result<Config, Vec<Problem>> {
    let mut c = Checker {
        problems: Vec::new(),
    };

    let nats = c.nats(raw.nats);

    if raw.tiers.is_empty() {
        c.problem("tiers", "at least one tier is required");
    }
    // Kinds are taken from the raw tiers so that a policy referring to a
    // tier with problems of its own reports only its own problems.
    let kinds: BTreeMap<String, Option<TierKind>> = raw
        .tiers
        .iter()
        .map(|(name, t)| {
            let kind = match t.kind.as_str() {
                "jetstream" => Some(TierKind::JetStream(
                    t.role
                        .as_deref()
                        .and_then(JetStreamRole::from_name)
                        .unwrap_or_default(),
                )),
                "s3" => Some(TierKind::S3),
                _ => None,
            };
            (name.clone(), kind)
        })
        .collect();
    let mut tiers = BTreeMap::new();
    for (name, rt) in raw.tiers {
        if let Some(t) = c.tier(&name, rt) {
            tiers.insert(name, t);
        }
    }

    let mut policies = Vec::with_capacity(raw.policy.len());
    let mut seen_names = HashMap::new();
    for (index, rp) in raw.policy.into_iter().enumerate() {
        if let Some(p) = c.policy(index, rp, &kinds, &mut seen_names) {
            policies.push((index, p));
        }
    }
    c.policy_set(&policies);
    let policies: Vec<Policy> = policies.into_iter().map(|(_, p)| p).collect();

    let listen = match raw.metrics.listen {
        None => Some(defaults::METRICS_LISTEN),
        Some(l) => match l.parse::<SocketAddr>() {
            Ok(listen) => Some(listen),
            Err(_) => {
                c.problem(
                    "metrics.listen",
                    format!(
                        "{l:?} is not a socket address (expected IP:PORT, e.g. \"127.0.0.1:9464\" \
                         or \"[::]:9464\")"
                    ),
                );
                None
            }
        },
    };
    let pushgateway = match raw.metrics.pushgateway {
        None => Some(None),
        Some(url) => c.pushgateway_url("metrics.pushgateway", &url).map(Some),
    };
    let metrics = match (listen, pushgateway) {
        (Some(listen), Some(pushgateway)) => Some(MetricsConfig {
            listen,
            pushgateway,
        }),
        _ => None,
    };

    let manager = c
        .positive_duration(
            "manager.interval",
            raw.manager.interval.as_deref(),
            defaults::MANAGER_INTERVAL,
        )
        .map(|interval| ManagerConfig { interval });

    let work = {
        let w = raw.work;
        let stream = match w.stream {
            None => Some(defaults::WORK_STREAM.to_owned()),
            Some(s) => c.simple_name("work.stream", &s, "stream name"),
        };
        let ack_wait = c.positive_duration(
            "work.ack_wait",
            w.ack_wait.as_deref(),
            defaults::WORK_ACK_WAIT,
        );
        let max_deliver = match w.max_deliver {
            None => Some(defaults::WORK_MAX_DELIVER),
            Some(m) if m >= 1 || m == -1 => Some(m),
            Some(m) => {
                c.problem(
                    "work.max_deliver",
                    format!("{m} is invalid (use a number >= 1, or -1 for unlimited)"),
                );
                None
            }
        };
        let concurrency = match w.concurrency {
            None => Some(defaults::WORK_CONCURRENCY),
            Some(n) => match usize::try_from(n) {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    c.problem("work.concurrency", format!("{n} must be at least 1"));
                    None
                }
            },
        };
        match (stream, ack_wait, max_deliver, concurrency) {
            (Some(stream), Some(ack_wait), Some(max_deliver), Some(concurrency)) => {
                Some(WorkConfig {
                    stream,
                    ack_wait,
                    max_deliver,
                    concurrency,
                })
            }
            _ => None,
        }
    };

    let upload = {
        let u = raw.upload;
        let mib = |c: &mut Checker, path: &str, v: Option<i64>, default: u64, range| match v {
            None => Some(default * MIB),
            Some(v) => c
                .int_in(path, v, range)
                .and_then(|v| u64::try_from(v).ok())
                .map(|v| v * MIB),
        };
        let part_size = mib(
            &mut c,
            "upload.part_size_mib",
            u.part_size_mib,
            defaults::UPLOAD_PART_SIZE_MIB,
            defaults::UPLOAD_PART_SIZE_MIB_RANGE,
        );
        let multipart_threshold = mib(
            &mut c,
            "upload.multipart_threshold_mib",
            u.multipart_threshold_mib,
            defaults::UPLOAD_MULTIPART_THRESHOLD_MIB,
            defaults::UPLOAD_MULTIPART_THRESHOLD_MIB_RANGE,
        );
        let memory_budget = mib(
            &mut c,
            "upload.memory_budget_mib",
            u.memory_budget_mib,
            defaults::UPLOAD_MEMORY_BUDGET_MIB,
            defaults::UPLOAD_MEMORY_BUDGET_MIB_RANGE,
        );
        let zstd_level = match u.zstd_level {
            None => Some(defaults::UPLOAD_ZSTD_LEVEL),
            Some(z) => c
                .int_in("upload.zstd_level", z, defaults::UPLOAD_ZSTD_LEVEL_RANGE)
                .and_then(|z| i32::try_from(z).ok()),
        };
        match (part_size, multipart_threshold, zstd_level, memory_budget) {
            (Some(part_size), Some(multipart_threshold), Some(zstd_level), Some(memory_budget)) => {
                Some(UploadConfig {
                    part_size,
                    multipart_threshold,
                    zstd_level,
                    memory_budget,
                })
            }
            _ => None,
        }
    };

    let restore = {
        let staging_dir = c.path_buf("restore.staging_dir", raw.restore.staging_dir);
        let concurrency = match raw.restore.concurrency {
            None => Some(defaults::RESTORE_CONCURRENCY),
            Some(n) => match usize::try_from(n) {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    c.problem("restore.concurrency", format!("{n} must be at least 1"));
                    None
                }
            },
        };
        match (staging_dir, concurrency) {
            (Some(staging_dir), Some(concurrency)) => Some(RestoreConfig {
                staging_dir,
                concurrency,
            }),
            _ => None,
        }
    };

    let catalog = match raw.catalog.bucket {
        None => Some(CatalogConfig::default()),
        Some(b) => c
            .simple_name("catalog.bucket", &b, "KV bucket name")
            .map(|bucket| CatalogConfig { bucket }),
    };

    let access = {
        let bucket = match raw.access.bucket {
            None => Some(defaults::ACCESS_BUCKET.to_owned()),
            Some(b) => c.simple_name("access.bucket", &b, "KV bucket name"),
        };
        let interval = c.positive_duration(
            "access.interval",
            raw.access.interval.as_deref(),
            defaults::ACCESS_INTERVAL,
        );
        match (bucket, interval) {
            (Some(bucket), Some(interval)) => Some(AccessConfig { bucket, interval }),
            _ => None,
        }
    };

    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    match (
        nats, metrics, manager, work, upload, restore, catalog, access,
    ) {
        (
            Some(nats),
            Some(metrics),
            Some(manager),
            Some(work),
            Some(upload),
            Some(restore),
            Some(catalog),
            Some(access),
        ) => Ok(Config {
            nats,
            tiers,
            policies,
            metrics,
            manager,
            work,
            upload,
            restore,
            catalog,
            access,
        }),
        // Every `None` above comes with a problem, so this is unreachable;
        // report it rather than panic.
        _ => Err(vec![Problem::new(
            "",
            "internal error: invalid value without a problem",
        )]),
    }
}
