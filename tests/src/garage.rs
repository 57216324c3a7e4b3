//! Garage: a single-node S3 server with a default key and bucket.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};

use crate::process::Proc;
use crate::{free_port, garage_bin, http_client, random_hex, tail_file, wait_for};

/// How long [`Garage::wait_ready`] waits.
pub const GARAGE_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A single-node Garage server (`garage server --single-node --default-bucket`) on loopback,
/// with its key and bucket created at start-up. Killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct Garage {
    /// S3 endpoint, `http://127.0.0.1:PORT` (use path-style addressing).
    pub endpoint: String,
    /// S3 region: clients must sign with it or every request fails with "Invalid signature".
    pub region: String,
    /// The bucket created at start-up.
    pub bucket: String,
    /// Access key id (`GK` + 24 hex digits).
    pub access_key: String,
    /// Secret key (64 hex digits).
    pub secret_key: String,
    admin_url: String,
    dir: PathBuf,
    proc: Proc,
}

impl Garage {
    /// Writes the config (mode 0600) and credentials into `dir/garage/` and spawns the server
    /// (does not wait: see [`Garage::wait_ready`]).
    pub fn launch(dir: &Path) -> anyhow::Result<Garage> {
        let dir = dir.join("garage");
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let (s3_port, rpc_port, admin_port) = (free_port(), free_port(), free_port());
        let region = "garage".to_string();
        let bucket = "cim-test".to_string();
        let access_key = format!("GK{}", random_hex(12));
        let secret_key = random_hex(32);
        let config = format!(
            "metadata_dir = {meta:?}\n\
             data_dir = {data:?}\n\
             db_engine = \"lmdb\"\n\
             replication_factor = 1\n\
             rpc_bind_addr = \"127.0.0.1:{rpc_port}\"\n\
             rpc_public_addr = \"127.0.0.1:{rpc_port}\"\n\
             rpc_secret = \"{secret}\"\n\
             \n\
             [s3_api]\n\
             s3_region = \"{region}\"\n\
             api_bind_addr = \"127.0.0.1:{s3_port}\"\n\
             root_domain = \".s3.garage.localhost\"\n\
             \n\
             [admin]\n\
             api_bind_addr = \"127.0.0.1:{admin_port}\"\n",
            meta = dir.join("meta").display().to_string(),
            data = dir.join("data").display().to_string(),
            secret = random_hex(32),
        );
        let conf = dir.join("garage.toml");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&conf)
            .with_context(|| format!("create {}", conf.display()))?;
        file.write_all(config.as_bytes())?;
        drop(file);
        std::fs::write(
            dir.join("credentials"),
            format!(
                "[default]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n"
            ),
        )?;
        let args: Vec<OsString> = vec![
            "-c".into(),
            conf.into_os_string(),
            "server".into(),
            "--single-node".into(),
            "--default-bucket".into(),
        ];
        let envs: Vec<(OsString, OsString)> = vec![
            (
                "GARAGE_DEFAULT_ACCESS_KEY".into(),
                access_key.clone().into(),
            ),
            (
                "GARAGE_DEFAULT_SECRET_KEY".into(),
                secret_key.clone().into(),
            ),
            ("GARAGE_DEFAULT_BUCKET".into(), bucket.clone().into()),
            ("RUST_LOG".into(), "garage=info".into()),
        ];
        let proc = Proc::new(&garage_bin(), &args, &envs, &dir.join("garage.log"));
        proc.spawn()?;
        Ok(Garage {
            endpoint: format!("http://127.0.0.1:{s3_port}"),
            region,
            bucket,
            access_key,
            secret_key,
            admin_url: format!("http://127.0.0.1:{admin_port}"),
            dir,
            proc,
        })
    }

    /// The Garage directory (`garage.toml`, `garage.log`, `credentials`, `meta/`, `data/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An AWS shared-credentials file with a `[default]` profile holding the key.
    pub fn credentials_file(&self) -> PathBuf {
        self.dir.join("credentials")
    }

    /// The log file.
    pub fn log_path(&self) -> PathBuf {
        self.proc.log_path().to_path_buf()
    }

    /// An S3 client for this server: path-style, the server's region, static credentials,
    /// checksums only when required. Built without `aws-config`, so the environment
    /// (`AWS_*` variables, profiles, `AWS_CA_BUNDLE`) does not affect it.
    pub async fn client(&self) -> aws_sdk_s3::Client {
        s3_client(
            &self.endpoint,
            &self.region,
            &self.access_key,
            &self.secret_key,
        )
    }

    /// Waits until the admin `/health` answers and a real S3 request (HeadBucket) succeeds.
    /// Errors at once if the server died.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let client = self.client().await;
        let http = http_client();
        wait_for("garage ready", GARAGE_READY_TIMEOUT, || async {
            self.check_alive()?;
            let health = format!("{}/health", self.admin_url);
            match http.get(&health).send().await {
                Ok(r) if r.status().is_success() => {}
                Ok(r) => return Ok(Some(format!("GET {health}: {}", r.status()))),
                Err(e) => return Ok(Some(format!("GET {health}: {e}"))),
            }
            match client.head_bucket().bucket(&self.bucket).send().await {
                Ok(_) => Ok(None),
                Err(e) => Ok(Some(format!(
                    "HeadBucket {}: {}",
                    self.bucket,
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                ))),
            }
        })
        .await
    }

    fn check_alive(&self) -> anyhow::Result<()> {
        if let Some(status) = self.proc.exit_status() {
            anyhow::bail!(
                "garage exited ({status}); log tail:\n{}",
                tail_file(self.proc.log_path(), 40)
            );
        }
        Ok(())
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// SIGTERM and wait for the exit (SIGKILL after 5 s). A no-op if not running.
    pub fn stop(&mut self) {
        if self.proc.started() {
            let _ = self.proc.terminate(Duration::from_secs(5));
        }
    }

    /// SIGKILL and wait. A no-op if not running.
    pub fn kill(&mut self) {
        self.proc.kill();
    }

    /// (Re)spawns the server with the same config and data; does not wait for readiness.
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.proc.spawn()
    }
}

/// An S3 client for an S3-compatible endpoint with static keys: path-style, and checksums only
/// where an operation requires one (the SDK's default checksums break S3-compatible services;
/// see FACTS.md), as our own client is configured.
pub fn s3_client(
    endpoint: &str,
    region: &str,
    access_key: &str,
    secret_key: &str,
) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(
            access_key,
            secret_key,
            None,
            None,
            "cim-tests",
        ))
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}
