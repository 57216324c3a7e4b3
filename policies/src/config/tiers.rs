//! `[tiers.<name>]`: the validated tier types.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::NatsConfig;

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
    /// Edge leaf or hub cluster. Default [`JetStreamRole::Cluster`]; marking the leaves lets
    /// validation refuse a policy that sends data into a leaf.
    pub role: JetStreamRole,
}

/// What a JetStream tier is in the topology. TOML: `role = "leaf"` or `"cluster"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum JetStreamRole {
    /// An edge leaf node: data only leaves it (sourced to the cluster).
    Leaf,
    /// The hub cluster (the default).
    #[default]
    Cluster,
}

impl JetStreamRole {
    /// Every role.
    pub const ALL: [JetStreamRole; 2] = [JetStreamRole::Leaf, JetStreamRole::Cluster];

    /// The TOML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JetStreamRole::Leaf => "leaf",
            JetStreamRole::Cluster => "cluster",
        }
    }

    /// Parse the TOML spelling (exact, lowercase).
    pub fn from_name(name: &str) -> Option<JetStreamRole> {
        JetStreamRole::ALL.into_iter().find(|r| r.as_str() == name)
    }
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
    /// How long what a delete or an overwrite leaves behind stays in this tier before garbage
    /// collection removes it: history manifests of versions superseded at least this long ago,
    /// and blobs no manifest references that are at least this old. Default 90 days (Wasabi's
    /// minimum storage duration, so an early removal is never billed).
    pub retention: Duration,
    /// How an uploaded blob is proven stored before anything depends on it (a `move` evicts
    /// only a verified copy). Default: [`S3Verify::Crc32c`] for `aws`, `garage` and `minio`,
    /// [`S3Verify::Md5`] for `wasabi` and `other` (see [`super::defaults::s3_verify`]).
    pub verify: S3Verify,
}

/// How an S3 tier's uploads are verified. TOML: `"md5"`, `"crc32c"`, `"read-back"`.
///
/// What each proves is stated in `docs/architecture.md` ("Verification"): `md5` and `crc32c`
/// prove that the service received exactly the bytes we hashed and compressed (it checks the
/// checksum of every PutObject/UploadPart body on receipt, and we check its answer); `read-back`
/// reads the whole blob back and proves it was stored, at the cost of downloading it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum S3Verify {
    /// `Content-MD5` on every request body; the returned ETag must be that MD5 (`"md5"`).
    #[serde(rename = "md5")]
    Md5,
    /// `x-amz-checksum-crc32c` on every request body; the response must echo it (`"crc32c"`).
    #[serde(rename = "crc32c")]
    Crc32c,
    /// The whole blob read back, decompressed and checked against the ingest digest
    /// (`"read-back"`).
    #[serde(rename = "read-back")]
    ReadBack,
}

impl S3Verify {
    /// Every mode.
    pub const ALL: [S3Verify; 3] = [S3Verify::Md5, S3Verify::Crc32c, S3Verify::ReadBack];

    /// The TOML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            S3Verify::Md5 => "md5",
            S3Verify::Crc32c => "crc32c",
            S3Verify::ReadBack => "read-back",
        }
    }

    /// Parse the TOML spelling (exact, lowercase).
    pub fn from_name(name: &str) -> Option<S3Verify> {
        S3Verify::ALL.into_iter().find(|v| v.as_str() == name)
    }
}

impl fmt::Display for S3Verify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
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
