//! Where a benchmark runs: the test kit's servers on loopback (a 3-node JetStream cluster, a
//! leaf node and Garage), or — given `--s3-endpoint` and credentials — any S3 service (MinIO,
//! Wasabi) with the NATS side still local.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use cim_tests::Topology;

/// An S3 service given on the command line instead of the local Garage.
#[derive(Debug, Clone, clap::Args)]
pub struct S3Options {
    /// S3 endpoint to benchmark (default: the local Garage the bench starts).
    #[arg(long, requires_all = ["s3_bucket", "s3_access_key", "s3_secret_key"])]
    pub s3_endpoint: Option<String>,
    /// Region to sign with.
    #[arg(long, default_value = "us-east-1")]
    pub s3_region: String,
    /// Bucket to use (it must exist; the bench writes under its own prefix and removes it).
    #[arg(long)]
    pub s3_bucket: Option<String>,
    /// Access key id.
    #[arg(long, env = "CIM_BENCH_S3_ACCESS_KEY")]
    pub s3_access_key: Option<String>,
    /// Secret key.
    #[arg(long, env = "CIM_BENCH_S3_SECRET_KEY", hide_env_values = true)]
    pub s3_secret_key: Option<String>,
}

/// The S3 side every scenario uses.
#[derive(Debug, Clone)]
pub struct S3Target {
    /// Endpoint URL.
    pub endpoint: String,
    /// Region.
    pub region: String,
    /// Bucket.
    pub bucket: String,
    /// Access key id.
    pub access_key: String,
    /// Secret key.
    pub secret_key: String,
    /// A shared-credentials file with these keys (for our roles and rclone).
    pub credentials_file: PathBuf,
    /// What it is, for the report: `"garage (local)"` or the endpoint.
    pub label: String,
}

impl S3Target {
    /// An S3 client for it: path-style, checksums only where required (see FACTS.md: the SDK's
    /// default checksums break S3-compatible services), like our own client.
    pub fn client(&self) -> aws_sdk_s3::Client {
        cim_tests::s3_client(
            &self.endpoint,
            &self.region,
            &self.access_key,
            &self.secret_key,
        )
    }

    /// Deletes `keys` (what a scenario wrote) from the bucket, a few at a time. Shared by the
    /// scenarios' clean-up, which is never timed. Only the given keys are touched, never a whole
    /// prefix: the bucket may be a user's own (`--s3-bucket`).
    pub async fn delete_objects(&self, keys: &[String]) -> anyhow::Result<()> {
        use futures::{StreamExt as _, TryStreamExt as _};
        let client = self.client();
        futures::stream::iter(keys)
            .map(|key| {
                let request = client.delete_object().bucket(&self.bucket).key(key);
                async move {
                    request.send().await.map_err(|e| {
                        anyhow::anyhow!(
                            "deleting s3://{}/{key}: {}",
                            self.bucket,
                            aws_sdk_s3::error::DisplayErrorContext(e)
                        )
                    })
                }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }
}

/// The servers a benchmark runs against, and a scratch directory on tmpfs for its data.
pub struct Env {
    /// The local NATS side (and Garage, used unless an S3 endpoint was given).
    pub topology: Topology,
    /// The S3 side.
    pub s3: S3Target,
    /// Scratch space for data sets, on tmpfs where there is one (`/dev/shm`).
    pub scratch: tempfile::TempDir,
}

impl Env {
    /// Starts the local servers and settles the S3 side.
    pub async fn start(options: &S3Options) -> anyhow::Result<Env> {
        let topology = Topology::start()
            .await
            .context("starting the local servers")?;
        let scratch_root = Path::new("/dev/shm");
        let scratch = if scratch_root.is_dir() {
            tempfile::Builder::new()
                .prefix("cim-bench-")
                .tempdir_in(scratch_root)?
        } else {
            tempfile::Builder::new().prefix("cim-bench-").tempdir()?
        };
        let s3 = match &options.s3_endpoint {
            None => {
                let g = &topology.s3;
                S3Target {
                    endpoint: g.endpoint.clone(),
                    region: g.region.clone(),
                    bucket: g.bucket.clone(),
                    access_key: g.access_key.clone(),
                    secret_key: g.secret_key.clone(),
                    credentials_file: g.credentials_file(),
                    label: "garage (local)".to_string(),
                }
            }
            Some(endpoint) => {
                let (access_key, secret_key) = (
                    options.s3_access_key.clone().unwrap_or_default(),
                    options.s3_secret_key.clone().unwrap_or_default(),
                );
                let credentials_file = scratch.path().join("s3-credentials");
                std::fs::write(
                    &credentials_file,
                    format!("[default]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n"),
                )?;
                S3Target {
                    endpoint: endpoint.clone(),
                    region: options.s3_region.clone(),
                    bucket: options.s3_bucket.clone().unwrap_or_default(),
                    access_key,
                    secret_key,
                    credentials_file,
                    label: endpoint.clone(),
                }
            }
        };
        Ok(Env {
            topology,
            s3,
            scratch,
        })
    }

    /// Writes a configuration for our roles: the test kit's (manager interval 1 s) with the S3
    /// tier pointed at [`Env::s3`] under `prefix`, plus `extra` TOML (policies, ...).
    pub fn write_config(&self, prefix: &str, extra: &str) -> PathBuf {
        let s3 = format!(
            "[tiers.s3]\nendpoint = {:?}\nregion = {:?}\nbucket = {:?}\nprefix = {:?}\ncredentials_file = {:?}\n",
            self.s3.endpoint,
            self.s3.region,
            self.s3.bucket,
            prefix,
            self.s3.credentials_file.display().to_string()
        );
        self.topology.write_config(&format!("{s3}\n{extra}"))
    }
}
