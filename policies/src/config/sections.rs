//! The validated sections other than `[tiers]` and `[[policy]]`, with their
//! defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::{defaults, MIB};

/// `[nats]`: the NATS connection used for the control plane (catalog KV,
/// work queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server URL(s): `nats://`, `tls://`, `ws://` or `wss://`, several
    /// separated by commas.
    pub url: String,
    /// NATS credentials (`.creds`) file; `None` = connect without credentials.
    pub credentials_file: Option<PathBuf>,
    /// Replicas of the control-plane streams (catalog KV, work queue), 1..=5.
    /// Default 3.
    pub replicas: usize,
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Address of the Prometheus endpoint. Default `127.0.0.1:9464`.
    pub listen: SocketAddr,
    /// Base URL of a Prometheus Pushgateway (`http://HOST:PORT`, optionally a path prefix, no
    /// trailing `/`) to which the one-shot commands (`restore`, `gc`, `scrub`) push their
    /// metrics when they end: they exit before any scrape could see them. `None` (default):
    /// they push nothing.
    pub pushgateway: Option<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: defaults::METRICS_LISTEN,
            pushgateway: None,
        }
    }
}

/// `[manager]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerConfig {
    /// How often the storage manager evaluates policies (> 0). Default 1s.
    pub interval: Duration,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            interval: defaults::MANAGER_INTERVAL,
        }
    }
}

/// `[work]`: the JetStream work-queue stream of upload/evict jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkConfig {
    /// Stream name (`[A-Za-z0-9_-]+`). Default `CIM_WORK`.
    pub stream: String,
    /// How long a worker may hold a job before it is redelivered (> 0).
    /// Default 60s.
    pub ack_wait: Duration,
    /// Deliveries per job before giving up, >= 1, or -1 for unlimited.
    /// Default 20.
    pub max_deliver: i64,
    /// Jobs a worker processes at once, >= 1. Default 8.
    pub concurrency: usize,
}

impl Default for WorkConfig {
    fn default() -> Self {
        WorkConfig {
            stream: defaults::WORK_STREAM.to_owned(),
            ack_wait: defaults::WORK_ACK_WAIT,
            max_deliver: defaults::WORK_MAX_DELIVER,
            concurrency: defaults::WORK_CONCURRENCY,
        }
    }
}

/// `[upload]`: S3 uploads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadConfig {
    /// Multipart part size in bytes (from `part_size_mib`, 5..=5120 MiB).
    /// Default 16 MiB.
    pub part_size: u64,
    /// (Compressed) objects of at least this many bytes use multipart upload
    /// (from `multipart_threshold_mib`, 1..=5120 MiB). Default 16 MiB.
    pub multipart_threshold: u64,
    /// zstd compression level, 1..=19. Default 3.
    pub zstd_level: i32,
    /// Bytes all upload buffers of the role may hold together (from `memory_budget_mib`,
    /// 16..=1048576 MiB). Default 68 MiB. Part size and threshold are capped at half of it.
    pub memory_budget: u64,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            part_size: defaults::UPLOAD_PART_SIZE_MIB * MIB,
            multipart_threshold: defaults::UPLOAD_MULTIPART_THRESHOLD_MIB * MIB,
            zstd_level: defaults::UPLOAD_ZSTD_LEVEL,
            memory_budget: defaults::UPLOAD_MEMORY_BUDGET_MIB * MIB,
        }
    }
}

/// `[restore]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreConfig {
    /// Deprecated and ignored: restore streams from S3 into NATS without
    /// staging on disk. Still accepted so existing configurations keep
    /// working; `cim-gateway restore` warns when it is set.
    pub staging_dir: Option<PathBuf>,
    /// Objects restored at once, >= 1. Default 128.
    pub concurrency: usize,
}

impl Default for RestoreConfig {
    fn default() -> Self {
        RestoreConfig {
            staging_dir: None,
            concurrency: defaults::RESTORE_CONCURRENCY,
        }
    }
}

/// `[catalog]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogConfig {
    /// JetStream KV bucket holding the catalog (`[A-Za-z0-9_-]+`). Default
    /// `cim_catalog`.
    pub bucket: String,
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            bucket: defaults::CATALOG_BUCKET.to_owned(),
        }
    }
}

/// `[access]`: the record of the objects' last reads, for the policies' `idle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessConfig {
    /// JetStream KV bucket of the access records (`[A-Za-z0-9_-]+`), with `[nats] replicas`.
    /// Default `cim_access`.
    pub bucket: String,
    /// A read writes the object's record only when the stored one is older than this (> 0):
    /// at most one write per object per interval. Default 1h.
    pub interval: Duration,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            bucket: defaults::ACCESS_BUCKET.to_owned(),
            interval: defaults::ACCESS_INTERVAL,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::Config;
    use crate::error::ConfigError;

    fn upload(section: &str) -> Result<UploadConfig, ConfigError> {
        let text = format!(
            "[nats]\nurl = \"nats://127.0.0.1:4222\"\n\n[tiers.hub]\nkind = \"jetstream\"\n\
             domain = \"hub\"\n\n[upload]\n{section}"
        );
        Config::from_toml_str(&text, "test.toml").map(|c| c.upload)
    }

    #[test]
    fn the_memory_budget_defaults_and_is_checked() {
        assert_eq!(upload("").unwrap().memory_budget, 68 * MIB);
        assert_eq!(
            upload("memory_budget_mib = 256\n").unwrap().memory_budget,
            256 * MIB
        );
        let Err(ConfigError::Invalid { problems, .. }) = upload("memory_budget_mib = 8\n") else {
            panic!("a budget below 16 MiB must be refused");
        };
        assert_eq!(problems[0].path, "upload.memory_budget_mib");
    }
}
