//! Raw serde types: the TOML shape, with anything that can be semantically
//! wrong kept as strings and integers.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Config {
    pub nats: Nats,
    pub tiers: BTreeMap<String, Tier>,
    #[serde(default)]
    pub policy: Vec<Policy>,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default)]
    pub manager: Manager,
    #[serde(default)]
    pub work: Work,
    #[serde(default)]
    pub upload: Upload,
    #[serde(default)]
    pub restore: Restore,
    #[serde(default)]
    pub catalog: Catalog,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Nats {
    pub url: String,
    pub credentials_file: Option<String>,
    pub replicas: Option<i64>,
}

/// Both tier kinds' keys; which ones are allowed depends on `kind` and is
/// checked during validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Tier {
    pub kind: String,
    pub credentials_file: Option<String>,
    // jetstream
    pub url: Option<String>,
    pub domain: Option<String>,
    pub replicas: Option<i64>,
    // s3
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub bucket: Option<String>,
    pub prefix: Option<String>,
    pub flavor: Option<String>,
    pub force_path_style: Option<bool>,
    pub retention: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Policy {
    pub name: String,
    pub buckets: Vec<String>,
    pub from: String,
    pub to: String,
    pub action: String,
    pub after: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Metrics {
    pub listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Manager {
    pub interval: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Work {
    pub stream: Option<String>,
    pub ack_wait: Option<String>,
    pub max_deliver: Option<i64>,
    pub concurrency: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Upload {
    pub part_size_mib: Option<i64>,
    pub multipart_threshold_mib: Option<i64>,
    pub zstd_level: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Restore {
    pub staging_dir: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Catalog {
    pub bucket: Option<String>,
}
