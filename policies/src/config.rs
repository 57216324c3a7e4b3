//! The configuration file: raw serde types, defaults, validation and the
//! validated [`Config`].
//!
//! Parsing is two-stage. The TOML text is first deserialized into private
//! *raw* structs (unknown keys rejected) that keep anything that can be
//! semantically wrong as plain strings and integers; a TOML syntax or shape
//! error becomes [`ConfigError::Syntax`]. The raw structs are then checked
//! field by field, collecting every [`Problem`]; if there is any, the result
//! is [`ConfigError::Invalid`] listing all of them.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{ConfigError, Problem};
use crate::policy::{
    check_policy_name, compile_buckets, is_simple_name, same_tier_problem, Action, Policy, Route,
};

/// Default values of optional keys. This is the only place defaults live.
pub mod defaults {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    use std::ops::RangeInclusive;
    use std::time::Duration;

    use super::S3Flavor;

    /// `[nats] replicas`: replicas of the control-plane streams.
    pub const NATS_REPLICAS: usize = 3;
    /// `[tiers.<name>] replicas` of a JetStream tier.
    pub const JETSTREAM_REPLICAS: usize = 1;
    /// Allowed range of every `replicas` key.
    pub const REPLICAS_RANGE: RangeInclusive<i64> = 1..=5;
    /// `[tiers.<name>] prefix` of an S3 tier.
    pub const S3_PREFIX: &str = "";
    /// `[tiers.<name>] flavor` of an S3 tier.
    pub const S3_FLAVOR: S3Flavor = S3Flavor::Other;
    /// `[metrics] listen`.
    pub const METRICS_LISTEN: SocketAddr =
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9464);
    /// `[manager] interval`.
    pub const MANAGER_INTERVAL: Duration = Duration::from_secs(10);
    /// `[work] stream`.
    pub const WORK_STREAM: &str = "CIM_WORK";
    /// `[work] ack_wait`.
    pub const WORK_ACK_WAIT: Duration = Duration::from_secs(60);
    /// `[work] max_deliver`.
    pub const WORK_MAX_DELIVER: i64 = 20;
    /// `[work] concurrency`.
    pub const WORK_CONCURRENCY: usize = 2;
    /// `[upload] part_size_mib`.
    pub const UPLOAD_PART_SIZE_MIB: u64 = 16;
    /// Allowed range of `[upload] part_size_mib` (S3/Wasabi part size limits).
    pub const UPLOAD_PART_SIZE_MIB_RANGE: RangeInclusive<i64> = 5..=5120;
    /// `[upload] multipart_threshold_mib`.
    pub const UPLOAD_MULTIPART_THRESHOLD_MIB: u64 = 16;
    /// Allowed range of `[upload] multipart_threshold_mib` (a single S3 PUT
    /// is limited to 5 GiB).
    pub const UPLOAD_MULTIPART_THRESHOLD_MIB_RANGE: RangeInclusive<i64> = 1..=5120;
    /// `[upload] zstd_level`.
    pub const UPLOAD_ZSTD_LEVEL: i32 = 3;
    /// Allowed range of `[upload] zstd_level`.
    pub const UPLOAD_ZSTD_LEVEL_RANGE: RangeInclusive<i64> = 1..=19;
    /// `[catalog] bucket`.
    pub const CATALOG_BUCKET: &str = "cim_catalog";
}

/// Bytes per MiB.
const MIB: u64 = 1024 * 1024;

/// The validated configuration, shared by all roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// `[nats]`: the NATS connection used for the control plane.
    pub nats: NatsConfig,
    /// `[tiers.<name>]`: storage tiers by name (at least one).
    pub tiers: BTreeMap<String, Tier>,
    /// `[[policy]]`: policies in file order (may be empty).
    pub policies: Vec<Policy>,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// `[manager]`.
    pub manager: ManagerConfig,
    /// `[work]`.
    pub work: WorkConfig,
    /// `[upload]`.
    pub upload: UploadConfig,
    /// `[restore]`.
    pub restore: RestoreConfig,
    /// `[catalog]`.
    pub catalog: CatalogConfig,
}

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

/// `[tiers.<name>]`: one storage tier. TOML: `kind = "jetstream"` or
/// `kind = "s3"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tier {
    /// JetStream object stores on a nats-server (edge leaf or hub cluster).
    JetStream(JetStreamTier),
    /// An S3-compatible bucket (Wasabi, AWS, Garage, MinIO, ...).
    S3(S3Tier),
}

impl Tier {
    /// The TOML `kind`: `"jetstream"` or `"s3"`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Tier::JetStream(_) => "jetstream",
            Tier::S3(_) => "s3",
        }
    }

    /// The JetStream settings, if this is a JetStream tier.
    pub fn as_jetstream(&self) -> Option<&JetStreamTier> {
        match self {
            Tier::JetStream(t) => Some(t),
            Tier::S3(_) => None,
        }
    }

    /// The S3 settings, if this is an S3 tier.
    pub fn as_s3(&self) -> Option<&S3Tier> {
        match self {
            Tier::S3(t) => Some(t),
            Tier::JetStream(_) => None,
        }
    }
}

/// A JetStream tier (`kind = "jetstream"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamTier {
    /// Server URL(s) of this tier; `None` = use `[nats] url`.
    pub url: Option<String>,
    /// JetStream domain (`[A-Za-z0-9_-]+`).
    pub domain: String,
    /// Replicas of object stores created on this tier, 1..=5. Default 1.
    pub replicas: usize,
    /// NATS credentials file for this tier; `None` = use `[nats]
    /// credentials_file` (if any).
    pub credentials_file: Option<PathBuf>,
}

impl JetStreamTier {
    /// The URL to connect to: the tier's own `url`, else `[nats] url`.
    pub fn effective_url<'a>(&'a self, nats: &'a NatsConfig) -> &'a str {
        self.url.as_deref().unwrap_or(&nats.url)
    }
}

/// An S3 tier (`kind = "s3"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Tier {
    /// `http://` or `https://` endpoint. `None` (allowed only for the `aws`
    /// and `wasabi` flavors) = the flavor's default: the AWS SDK's endpoint
    /// for `region`, or `https://s3.<region>.wasabisys.com`.
    pub endpoint: Option<String>,
    /// Region name (non-empty).
    pub region: String,
    /// S3 bucket name.
    pub bucket: String,
    /// Key prefix: `""` (the default) or ending with `/` (added if missing).
    pub prefix: String,
    /// AWS shared-credentials file; `None` = the standard AWS environment
    /// variables.
    pub credentials_file: Option<PathBuf>,
    /// Which S3 implementation this is. Default [`S3Flavor::Other`].
    pub flavor: S3Flavor,
    /// Use path-style addressing. Default: `true` unless `flavor` is
    /// [`S3Flavor::Aws`].
    pub force_path_style: bool,
}

/// Which S3 implementation an S3 tier talks to. TOML: lowercase strings.
/// Serializes (serde) as the same strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum S3Flavor {
    /// Amazon S3 (`"aws"`).
    Aws,
    /// Wasabi (`"wasabi"`).
    Wasabi,
    /// Garage (`"garage"`).
    Garage,
    /// MinIO (`"minio"`).
    Minio,
    /// Any other S3-compatible service (`"other"`).
    Other,
}

impl S3Flavor {
    /// Every flavor.
    pub const ALL: [S3Flavor; 5] = [
        S3Flavor::Aws,
        S3Flavor::Wasabi,
        S3Flavor::Garage,
        S3Flavor::Minio,
        S3Flavor::Other,
    ];

    /// The TOML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            S3Flavor::Aws => "aws",
            S3Flavor::Wasabi => "wasabi",
            S3Flavor::Garage => "garage",
            S3Flavor::Minio => "minio",
            S3Flavor::Other => "other",
        }
    }

    /// Parse the TOML spelling (exact, lowercase).
    pub fn from_name(name: &str) -> Option<S3Flavor> {
        S3Flavor::ALL.into_iter().find(|f| f.as_str() == name)
    }
}

impl fmt::Display for S3Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Address of the Prometheus endpoint. Default `127.0.0.1:9464`.
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: defaults::METRICS_LISTEN,
        }
    }
}

/// `[manager]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerConfig {
    /// How often the storage manager evaluates policies (> 0). Default 10s.
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
    /// Jobs a worker processes at once, >= 1. Default 2.
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
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            part_size: defaults::UPLOAD_PART_SIZE_MIB * MIB,
            multipart_threshold: defaults::UPLOAD_MULTIPART_THRESHOLD_MIB * MIB,
            zstd_level: defaults::UPLOAD_ZSTD_LEVEL,
        }
    }
}

/// `[restore]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RestoreConfig {
    /// Directory for staging downloads during restore; `None` = the system
    /// temporary directory (as chosen by `cim-gateway restore`).
    pub staging_dir: Option<PathBuf>,
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

impl Config {
    /// Parse + validate. `source_name` (usually the file path) is used in
    /// error messages.
    pub fn from_toml_str(text: &str, source_name: &str) -> Result<Config, ConfigError> {
        let raw: raw::Config = toml::from_str(text).map_err(|err| ConfigError::Syntax {
            source_name: source_name.to_owned(),
            message: err.to_string().trim_end().to_owned(),
        })?;
        validate(raw).map_err(|problems| ConfigError::Invalid {
            source_name: source_name.to_owned(),
            problems,
        })
    }

    /// The tier called `name`.
    pub fn tier(&self, name: &str) -> Option<&Tier> {
        self.tiers.get(name)
    }

    /// The route a (validated) policy takes, from the kinds of its tiers.
    ///
    /// For a policy that did not come from this configuration: an S3 `to`
    /// tier gives [`Route::ClusterToS3`], anything else
    /// [`Route::LeafToCluster`].
    pub fn route(&self, policy: &Policy) -> Route {
        match self.tier(&policy.to) {
            Some(Tier::S3(_)) => Route::ClusterToS3,
            _ => Route::LeafToCluster,
        }
    }

    /// Policies whose route is `route`, in file order.
    pub fn policies_on(&self, route: Route) -> impl Iterator<Item = &Policy> {
        self.policies.iter().filter(move |p| self.route(p) == route)
    }

    /// The complete documented example configuration (`docs/example.toml`).
    pub fn example() -> &'static str {
        include_str!("../../docs/example.toml")
    }
}

/// Raw serde types: the TOML shape, with anything that can be semantically
/// wrong kept as strings and integers.
mod raw {
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
}

/// Collects problems while converting raw values.
struct Checker {
    problems: Vec<Problem>,
}

const NATS_SCHEMES: [&str; 4] = ["nats://", "tls://", "ws://", "wss://"];
const TIER_KINDS: &str = "jetstream, s3";
const JETSTREAM_KEYS: &str = "kind, url, domain, replicas, credentials_file";
const S3_KEYS: &str =
    "kind, endpoint, region, bucket, prefix, credentials_file, flavor, force_path_style";
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
        match humantime::parse_duration(text) {
            Ok(d) => Some(d),
            Err(_) => {
                self.problem(
                    path,
                    format!("{text:?} is not a duration (examples: {examples})"),
                );
                None
            }
        }
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

    fn tier(&mut self, name: &str, raw: raw::Tier) -> Option<Tier> {
        let base = format!("tiers.{}", toml_key(name));
        let at = |field: &str| format!("{base}.{field}");
        let name_ok = if is_simple_name(name) {
            true
        } else {
            self.problem(
                &base,
                format!("tier name {name:?} is not valid (use only A-Z a-z 0-9 _ -)"),
            );
            false
        };
        let credentials_file = self.path_buf(&at("credentials_file"), raw.credentials_file);
        let tier = match raw.kind.as_str() {
            "jetstream" => {
                for (key, present) in [
                    ("endpoint", raw.endpoint.is_some()),
                    ("region", raw.region.is_some()),
                    ("bucket", raw.bucket.is_some()),
                    ("prefix", raw.prefix.is_some()),
                    ("flavor", raw.flavor.is_some()),
                    ("force_path_style", raw.force_path_style.is_some()),
                ] {
                    if present {
                        self.problem(
                            &at(key),
                            format!("not a key of a jetstream tier (keys: {JETSTREAM_KEYS})"),
                        );
                    }
                }
                let url = match raw.url {
                    None => Some(None),
                    Some(u) => self.nats_url(&at("url"), &u).map(Some),
                };
                let domain = match raw.domain {
                    None => {
                        self.problem(&at("domain"), "missing: a jetstream tier needs a domain");
                        None
                    }
                    Some(d) => self.simple_name(&at("domain"), &d, "JetStream domain"),
                };
                let replicas = match raw.replicas {
                    None => Some(defaults::JETSTREAM_REPLICAS),
                    Some(r) => self.usize_in(&at("replicas"), r, defaults::REPLICAS_RANGE),
                };
                Some(Tier::JetStream(JetStreamTier {
                    url: url?,
                    domain: domain?,
                    replicas: replicas?,
                    credentials_file: credentials_file?,
                }))
            }
            "s3" => {
                for (key, present) in [
                    ("url", raw.url.is_some()),
                    ("domain", raw.domain.is_some()),
                    ("replicas", raw.replicas.is_some()),
                ] {
                    if present {
                        self.problem(
                            &at(key),
                            format!("not a key of an s3 tier (keys: {S3_KEYS})"),
                        );
                    }
                }
                let raw_endpoint_missing = raw.endpoint.is_none();
                let endpoint = match raw.endpoint {
                    None => Some(None),
                    Some(e) => {
                        let ok = ["http://", "https://"]
                            .iter()
                            .any(|s| e.strip_prefix(s).is_some_and(|rest| !rest.is_empty()));
                        if ok {
                            Some(Some(e))
                        } else {
                            self.problem(
                                &at("endpoint"),
                                format!("{e:?} must start with http:// or https://"),
                            );
                            None
                        }
                    }
                };
                let region = match raw.region {
                    Some(r) if !r.trim().is_empty() => Some(r),
                    Some(_) => {
                        self.problem(&at("region"), "must not be empty");
                        None
                    }
                    None => {
                        self.problem(&at("region"), "missing: an s3 tier needs a region");
                        None
                    }
                };
                let bucket = match raw.bucket {
                    Some(b) if is_s3_bucket_name(&b) => Some(b),
                    Some(b) => {
                        self.problem(
                            &at("bucket"),
                            format!(
                                "{b:?} is not a valid S3 bucket name (3-63 characters: lowercase \
                                 letters, digits, '.' and '-', starting and ending with a letter \
                                 or digit)"
                            ),
                        );
                        None
                    }
                    None => {
                        self.problem(&at("bucket"), "missing: an s3 tier needs a bucket");
                        None
                    }
                };
                let prefix = match raw.prefix.as_deref().unwrap_or(defaults::S3_PREFIX) {
                    p if p.starts_with('/') => {
                        self.problem(&at("prefix"), format!("{p:?} must not start with '/'"));
                        None
                    }
                    "" => Some(String::new()),
                    p if p.ends_with('/') => Some(p.to_owned()),
                    p => Some(format!("{p}/")),
                };
                let flavor = match raw.flavor {
                    None => Some(defaults::S3_FLAVOR),
                    Some(f) => {
                        let flavor = S3Flavor::from_name(&f);
                        if flavor.is_none() {
                            let names: Vec<&str> =
                                S3Flavor::ALL.iter().map(|f| f.as_str()).collect();
                            self.problem(
                                &at("flavor"),
                                format!("unknown flavor {f:?} (flavors: {})", names.join(", ")),
                            );
                        }
                        flavor
                    }
                };
                let flavor = flavor?;
                if raw_endpoint_missing && !matches!(flavor, S3Flavor::Aws | S3Flavor::Wasabi) {
                    self.problem(
                        &at("endpoint"),
                        format!(
                            "missing: flavor {:?} needs an endpoint (only \"aws\" and \"wasabi\" \
                             have a default)",
                            flavor.as_str()
                        ),
                    );
                    return None;
                }
                Some(Tier::S3(S3Tier {
                    endpoint: endpoint?,
                    region: region?,
                    bucket: bucket?,
                    prefix: prefix?,
                    credentials_file: credentials_file?,
                    flavor,
                    force_path_style: raw.force_path_style.unwrap_or(flavor != S3Flavor::Aws),
                }))
            }
            other => {
                self.problem(
                    &at("kind"),
                    format!("unknown tier kind {other:?} (kinds: {TIER_KINDS})"),
                );
                None
            }
        };
        if name_ok {
            tier
        } else {
            None
        }
    }

    /// `kinds`: every tier name in the file, with its kind if that was
    /// recognised.
    fn policy(
        &mut self,
        index: usize,
        raw: raw::Policy,
        kinds: &BTreeMap<String, Option<TierKind>>,
        seen_names: &mut HashMap<String, usize>,
    ) -> Option<Policy> {
        let at = |field: &str| format!("policy[{index}].{field}");
        let before = self.problems.len();

        check_policy_name(&raw.name, &at("name"), &mut self.problems);
        if !raw.name.is_empty() {
            if let Some(first) = seen_names.get(&raw.name) {
                self.problem(
                    &at("name"),
                    format!(
                        "duplicate policy name {:?} (also used by policy[{first}])",
                        raw.name
                    ),
                );
            } else {
                seen_names.insert(raw.name.clone(), index);
            }
        }

        let matcher = compile_buckets(&raw.buckets, &at("buckets"), &mut self.problems);

        let tier_list = if kinds.is_empty() {
            "no tiers are defined".to_owned()
        } else {
            let names: Vec<&str> = kinds.keys().map(String::as_str).collect();
            format!("tiers: {}", names.join(", "))
        };
        let mut lookup = |field: &str, tier: &str| -> Option<Option<TierKind>> {
            let kind = kinds.get(tier).copied();
            if kind.is_none() {
                self.problem(&at(field), format!("no tier named {tier:?} ({tier_list})"));
            }
            kind
        };
        let from_kind = lookup("from", &raw.from);
        lookup("to", &raw.to);

        if from_kind == Some(Some(TierKind::S3)) {
            self.problem(
                &at("from"),
                format!(
                    "tier {:?} is an s3 tier; data leaves S3 only through `cim-gateway restore`",
                    raw.from
                ),
            );
        }
        if from_kind.is_some() && raw.from == raw.to {
            self.problems.push(same_tier_problem(&at("to"), &raw.to));
        }

        let action = Action::from_name(&raw.action);
        if action.is_none() {
            let names: Vec<String> = Action::ALL
                .iter()
                .map(|a| format!("{:?}", a.as_str()))
                .collect();
            self.problem(
                &at("action"),
                format!(
                    "{:?} is not an action (use {})",
                    raw.action,
                    names.join(" or ")
                ),
            );
        }

        let after = self.duration(&at("after"), &raw.after, AFTER_EXAMPLES);

        if self.problems.len() != before {
            return None;
        }
        Some(Policy::from_parts(
            raw.name,
            raw.buckets,
            matcher?,
            raw.from,
            raw.to,
            action?,
            after?,
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TierKind {
    JetStream,
    S3,
}

/// A TOML key as it would be written in a dotted path: bare if possible,
/// quoted otherwise.
fn toml_key(key: &str) -> String {
    if is_simple_name(key) {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn is_s3_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let edge_ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && edge_ok(bytes.first())
        && edge_ok(bytes.last())
}

fn validate(raw: raw::Config) -> Result<Config, Vec<Problem>> {
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
                "jetstream" => Some(TierKind::JetStream),
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
            policies.push(p);
        }
    }

    let metrics = match raw.metrics.listen {
        None => Some(MetricsConfig::default()),
        Some(l) => match l.parse::<SocketAddr>() {
            Ok(listen) => Some(MetricsConfig { listen }),
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
        let zstd_level = match u.zstd_level {
            None => Some(defaults::UPLOAD_ZSTD_LEVEL),
            Some(z) => c
                .int_in("upload.zstd_level", z, defaults::UPLOAD_ZSTD_LEVEL_RANGE)
                .and_then(|z| i32::try_from(z).ok()),
        };
        match (part_size, multipart_threshold, zstd_level) {
            (Some(part_size), Some(multipart_threshold), Some(zstd_level)) => Some(UploadConfig {
                part_size,
                multipart_threshold,
                zstd_level,
            }),
            _ => None,
        }
    };

    let restore = c
        .path_buf("restore.staging_dir", raw.restore.staging_dir)
        .map(|staging_dir| RestoreConfig { staging_dir });

    let catalog = match raw.catalog.bucket {
        None => Some(CatalogConfig::default()),
        Some(b) => c
            .simple_name("catalog.bucket", &b, "KV bucket name")
            .map(|bucket| CatalogConfig { bucket }),
    };

    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    match (nats, metrics, manager, work, upload, restore, catalog) {
        (
            Some(nats),
            Some(metrics),
            Some(manager),
            Some(work),
            Some(upload),
            Some(restore),
            Some(catalog),
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
        }),
        // Every `None` above comes with a problem, so this is unreachable;
        // report it rather than panic.
        _ => Err(vec![Problem::new(
            "",
            "internal error: invalid value without a problem",
        )]),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[nats]
url = "nats://127.0.0.1:4222"

[tiers.hub]
kind = "jetstream"
domain = "hub"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_str(text, "test.toml")
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn paths(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|p| p.path.as_str()).collect()
    }

    #[test]
    fn example_parses_and_validates() {
        assert_eq!(Config::example(), include_str!("../../docs/example.toml"));
        let config = parse(Config::example()).unwrap_or_else(|e| panic!("{e}"));

        assert_eq!(config.nats.url, "nats://127.0.0.1:4222");
        assert_eq!(config.nats.replicas, defaults::NATS_REPLICAS);
        assert_eq!(config.tiers.len(), 3);
        let leaf = config.tier("leaf").unwrap().as_jetstream().unwrap();
        assert_eq!(leaf.url.as_deref(), Some("nats://127.0.0.1:4333"));
        assert_eq!(leaf.domain, "leaf");
        assert_eq!(leaf.replicas, 1);
        let hub = config.tier("hub").unwrap().as_jetstream().unwrap();
        assert_eq!(hub.url, None);
        assert_eq!(hub.effective_url(&config.nats), "nats://127.0.0.1:4222");
        assert_eq!(hub.replicas, 3);
        let wasabi = config.tier("wasabi").unwrap();
        assert_eq!(wasabi.kind_name(), "s3");
        let wasabi = wasabi.as_s3().unwrap();
        assert_eq!(wasabi.flavor, S3Flavor::Wasabi);
        assert_eq!(wasabi.prefix, "prod/");
        assert_eq!(wasabi.bucket, "cim-archive");
        assert!(wasabi.force_path_style);
        assert_eq!(wasabi.credentials_file, None);

        assert_eq!(config.policies.len(), 2);
        let edge = &config.policies[0];
        assert_eq!(edge.name, "edge-to-cluster");
        assert_eq!(edge.action, Action::Move);
        assert_eq!(edge.after, Duration::from_secs(600));
        assert_eq!(config.route(edge), Route::LeafToCluster);
        let archive = &config.policies[1];
        assert_eq!(archive.after, Duration::from_secs(30 * 86_400));
        assert_eq!(config.route(archive), Route::ClusterToS3);
        let on = |r| {
            config
                .policies_on(r)
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(on(Route::LeafToCluster), ["edge-to-cluster"]);
        assert_eq!(on(Route::ClusterToS3), ["cluster-to-wasabi"]);

        // The optional sections in the example show exactly the defaults.
        assert_eq!(config.metrics, MetricsConfig::default());
        assert_eq!(config.manager, ManagerConfig::default());
        assert_eq!(config.work, WorkConfig::default());
        assert_eq!(config.upload, UploadConfig::default());
        assert_eq!(config.restore, RestoreConfig::default());
        assert_eq!(config.catalog, CatalogConfig::default());
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.nats.replicas, 3);
        assert_eq!(config.nats.credentials_file, None);
        assert!(config.policies.is_empty());
        assert_eq!(config.metrics.listen.to_string(), "127.0.0.1:9464");
        assert_eq!(config.manager.interval, Duration::from_secs(10));
        assert_eq!(config.work.stream, "CIM_WORK");
        assert_eq!(config.work.ack_wait, Duration::from_secs(60));
        assert_eq!(config.work.max_deliver, 20);
        assert_eq!(config.work.concurrency, 2);
        assert_eq!(config.upload.part_size, 16 * 1024 * 1024);
        assert_eq!(config.upload.multipart_threshold, 16 * 1024 * 1024);
        assert_eq!(config.upload.zstd_level, 3);
        assert_eq!(config.restore.staging_dir, None);
        assert_eq!(config.catalog.bucket, "cim_catalog");
        let hub = config.tier("hub").unwrap().as_jetstream().unwrap();
        assert_eq!(hub.replicas, 1);
    }

    #[test]
    fn s3_defaults_and_prefix_normalisation() {
        let text = format!(
            "{MINIMAL}
[tiers.aws]
kind = \"s3\"
region = \"us-east-1\"
bucket = \"my.bucket-1\"
flavor = \"aws\"
prefix = \"a/b\"

[tiers.garage]
kind = \"s3\"
endpoint = \"http://127.0.0.1:3900\"
region = \"garage\"
bucket = \"cim\"
credentials_file = \"/run/secrets/garage\"
"
        );
        let config = parse(&text).unwrap();
        let aws = config.tier("aws").unwrap().as_s3().unwrap();
        assert_eq!(aws.endpoint, None);
        assert_eq!(aws.prefix, "a/b/");
        assert!(!aws.force_path_style);
        let garage = config.tier("garage").unwrap().as_s3().unwrap();
        assert_eq!(garage.flavor, S3Flavor::Other);
        assert_eq!(garage.prefix, "");
        assert!(garage.force_path_style);
        assert_eq!(
            garage.credentials_file.as_deref(),
            Some(std::path::Path::new("/run/secrets/garage"))
        );
    }

    #[test]
    fn three_mistakes_three_problems() {
        let text = r#"
[nats]
url = "nats://127.0.0.1:4222"

[tiers.leaf]
kind = "jetstream"
domain = "leaf"

[tiers.hub]
kind = "jetstream"
domain = "hub"

[tiers.wasabi]
kind = "s3"
region = "eu-central-2"
bucket = "cim-archive"
flavor = "wasabi"

[[policy]]
name = "edge-to-cluster"
buckets = ["*"]
from = "leaf"
to = "hubb"
action = "move"
after = "10m"

[[policy]]
name = "cluster-to-wasabi"
buckets = ["*"]
from = "hub"
to = "wasabi"
action = "mvoe"
after = "3x"
"#;
        let err = parse(text).unwrap_err();
        let problems = err.problems();
        assert_eq!(
            paths(problems),
            ["policy[0].to", "policy[1].action", "policy[1].after"]
        );
        assert_eq!(
            err.to_string(),
            r#"test.toml: 3 problems
  policy[0].to: no tier named "hubb" (tiers: hub, leaf, wasabi)
  policy[1].action: "mvoe" is not an action (use "copy" or "move")
  policy[1].after: "3x" is not a duration (examples: "10m", "30d", "0s")"#
        );
    }

    #[test]
    fn one_problem_is_singular() {
        let err = parse(&MINIMAL.replace("domain = \"hub\"", "domain = \"hub\"\nreplicas = 7"))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "test.toml: 1 problem\n  tiers.hub.replicas: 7 is out of range 1..=5"
        );
    }

    #[test]
    fn unknown_field_is_a_syntax_error_with_line() {
        let text = "[nats]\nurl = \"nats://127.0.0.1:4222\"\nreplicaz = 3\n\n[tiers.hub]\nkind = \"jetstream\"\ndomain = \"hub\"\n";
        let err = parse(text).unwrap_err();
        let ConfigError::Syntax {
            source_name,
            message,
        } = &err
        else {
            panic!("expected Syntax, got {err:?}");
        };
        assert_eq!(source_name, "test.toml");
        assert!(message.contains("replicaz"), "{message}");
        assert!(message.contains("line 3"), "{message}");
        assert!(err.to_string().starts_with("test.toml: "), "{err}");
        assert!(err.problems().is_empty());

        // Unknown keys inside tiers and policies are syntax errors too.
        let text = format!("{MINIMAL}bukket = \"x\"\n");
        let err = parse(&text).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
        assert!(err.to_string().contains("bukket"), "{err}");
    }

    #[test]
    fn syntax_errors() {
        // Missing required section.
        let err = parse("[nats]\nurl = \"nats://x:4222\"\n").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
        assert!(err.to_string().contains("tiers"), "{err}");
        // Wrong type.
        let err = parse(&MINIMAL.replace("domain = \"hub\"", "domain = \"hub\"\nreplicas = \"3\""))
            .unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
        // Not TOML.
        let err = parse("[nats\n").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    }

    #[test]
    fn every_problem_is_reported() {
        let text = r#"
[nats]
url = "http://127.0.0.1:4222"
credentials_file = ""
replicas = 0

[tiers."bad name"]
kind = "jetstream"
domain = "x"

[tiers.leaf]
kind = "jetstream"
url = "nats://a:1, localhost:2"
domain = "le.af"
replicas = 6
bucket = "oops"

[tiers.tape]
kind = "tape"

[tiers.s3]
kind = "s3"
endpoint = "s3.example.com"
region = ""
bucket = "Bad_Bucket"
prefix = "/abs"
flavor = "ceph"
domain = "d"

[tiers.s3b]
kind = "s3"

[[policy]]
name = ""
buckets = []
from = "s3"
to = "leaf"
action = "copy"
after = "0s"

[[policy]]
name = "dup"
buckets = ["ok", "no.dots", "[open"]
from = "leaf"
to = "leaf"
action = "Move"
after = "10"

[[policy]]
name = "dup"
buckets = ["*"]
from = "nowhere"
to = "tape"
action = "copy"
after = "1d"

[metrics]
listen = "localhost:9464"

[manager]
interval = "0s"

[work]
stream = "CIM.WORK"
ack_wait = "soon"
max_deliver = 0
concurrency = 0

[upload]
part_size_mib = 4
multipart_threshold_mib = 0
zstd_level = 20

[restore]
staging_dir = ""

[catalog]
bucket = "cim catalog"
"#;
        let problems = problems(text);
        let rendered: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let rendered = rendered.join("\n");
        assert_eq!(
            paths(&problems),
            [
                "nats.url",
                "nats.credentials_file",
                "nats.replicas",
                "tiers.\"bad name\"",
                "tiers.leaf.bucket",
                "tiers.leaf.url",
                "tiers.leaf.domain",
                "tiers.leaf.replicas",
                "tiers.s3.domain",
                "tiers.s3.endpoint",
                "tiers.s3.region",
                "tiers.s3.bucket",
                "tiers.s3.prefix",
                "tiers.s3.flavor",
                "tiers.s3b.region",
                "tiers.s3b.bucket",
                "tiers.s3b.endpoint",
                "tiers.tape.kind",
                "policy[0].name",
                "policy[0].buckets",
                "policy[0].from",
                "policy[1].buckets[1]",
                "policy[1].buckets[2]",
                "policy[1].to",
                "policy[1].action",
                "policy[1].after",
                "policy[2].name",
                "policy[2].from",
                "metrics.listen",
                "manager.interval",
                "work.stream",
                "work.ack_wait",
                "work.max_deliver",
                "work.concurrency",
                "upload.part_size_mib",
                "upload.multipart_threshold_mib",
                "upload.zstd_level",
                "restore.staging_dir",
                "catalog.bucket",
            ],
            "{rendered}"
        );
        for expected in [
            r#"policy[0].from: tier "s3" is an s3 tier; data leaves S3 only through `cim-gateway restore`"#,
            r#"policy[2].name: duplicate policy name "dup" (also used by policy[1])"#,
            r#"policy[2].from: no tier named "nowhere" (tiers: bad name, leaf, s3, s3b, tape)"#,
            r#"tiers.tape.kind: unknown tier kind "tape" (kinds: jetstream, s3)"#,
            r#"tiers.leaf.url: "localhost:2" is not a NATS server URL"#,
            r#"policy[1].after: "10" is not a duration (examples: "10m", "30d", "0s")"#,
            r#"manager.interval: "0s" must be greater than zero"#,
            r#"upload.part_size_mib: 4 is out of range 5..=5120"#,
            r#"work.max_deliver: 0 is invalid"#,
        ] {
            assert!(
                rendered.contains(expected),
                "missing {expected:?} in\n{rendered}"
            );
        }
    }

    #[test]
    fn policy_route_rules() {
        let base = r#"
[nats]
url = "nats://hub:4222,tls://hub2:4222"

[tiers.leaf]
kind = "jetstream"
domain = "leaf"
url = "ws://leaf:8080"

[tiers.hub]
kind = "jetstream"
domain = "hub"

[tiers.s3]
kind = "s3"
region = "r"
bucket = "bkt"
flavor = "aws"
"#;
        let policy = |from: &str, to: &str| {
            format!(
                "{base}\n[[policy]]\nname = \"p\"\nbuckets = [\"*\"]\nfrom = \"{from}\"\nto = \"{to}\"\naction = \"copy\"\nafter = \"0s\"\n"
            )
        };
        let config = parse(&policy("leaf", "hub")).unwrap();
        assert_eq!(config.route(&config.policies[0]), Route::LeafToCluster);
        assert_eq!(config.policies[0].after, Duration::ZERO);
        let config = parse(&policy("leaf", "s3")).unwrap();
        assert_eq!(config.route(&config.policies[0]), Route::ClusterToS3);
        assert_eq!(config.policies_on(Route::LeafToCluster).count(), 0);

        assert_eq!(paths(&problems(&policy("s3", "hub"))), ["policy[0].from"]);
        assert_eq!(paths(&problems(&policy("hub", "hub"))), ["policy[0].to"]);
        assert_eq!(
            paths(&problems(&policy("x", "y"))),
            ["policy[0].from", "policy[0].to"]
        );
    }

    #[test]
    fn s3_endpoint_required_unless_aws_or_wasabi() {
        let tier = |extra: &str| {
            format!(
                "{MINIMAL}\n[tiers.s3]\nkind = \"s3\"\nregion = \"r\"\nbucket = \"bkt\"\n{extra}"
            )
        };
        assert!(parse(&tier("flavor = \"aws\"")).is_ok());
        assert!(parse(&tier("flavor = \"wasabi\"")).is_ok());
        assert!(parse(&tier(
            "flavor = \"garage\"\nendpoint = \"http://garage:3900\""
        ))
        .is_ok());
        for flavor in ["", "flavor = \"other\"", "flavor = \"minio\""] {
            let problems = problems(&tier(flavor));
            assert_eq!(paths(&problems), ["tiers.s3.endpoint"], "{flavor}");
        }
    }

    #[test]
    fn no_tiers() {
        let problems = problems("[nats]\nurl = \"nats://x:4222\"\n[tiers]\n");
        assert_eq!(paths(&problems), ["tiers"]);
    }

    #[test]
    fn max_deliver_unlimited() {
        let config = parse(&format!("{MINIMAL}\n[work]\nmax_deliver = -1\n")).unwrap();
        assert_eq!(config.work.max_deliver, -1);
    }

    #[test]
    fn s3_bucket_names() {
        for ok in ["abc", "cim-archive", "a.b.c", "0bucket9", &"a".repeat(63)] {
            assert!(is_s3_bucket_name(ok), "{ok}");
        }
        for bad in [
            "ab",
            "Abc",
            "-abc",
            "abc-",
            "a_b",
            "a b",
            "",
            &"a".repeat(64),
        ] {
            assert!(!is_s3_bucket_name(bad), "{bad}");
        }
    }
}
