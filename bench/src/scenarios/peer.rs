//! `peer`: rclone (Debian's package, 1.60 on bookworm) copying the data set from tmpfs to
//! `<bucket>/<prefix>` and back into a fresh directory on tmpfs — what a user of "an S3 service
//! plus a sync tool" gets. rclone runs at its defaults except for the flags [`upload_args`] and
//! [`download_args`] add, each explained in `docs/benchmarking.md` ("Baselines: raw-s3 and
//! peer"): concurrency as ours, no retry of the whole copy, no bucket creation. rclone's own
//! integrity work stays on (the MD5 of each file sent as `Content-MD5`, a HEAD after each
//! upload, the MD5 checked on download): our roles verify what they move as well.
//!
//! Each direction is timed from rclone's start to its exit (a user waits for both); per-object
//! latency is not visible from outside, so the runs have none. rclone's CPU and peak RSS are
//! recorded as a process named `rclone`. After timing, every downloaded file is compared with
//! its original (size and SHA-256): a copy that did not come back intact fails the run.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

use crate::data::DataSet;
use crate::env::S3Target;
use crate::measure::{ProcUsage, Run};
use crate::procs;

/// The remote's name in the generated rclone configuration.
const REMOTE: &str = "cim-bench";

/// The rclone binary: `$CIM_RCLONE`, else `rclone` on `$PATH` (scripts/install-tools.sh
/// installs Debian's package).
fn rclone_bin() -> PathBuf {
    std::env::var_os("CIM_RCLONE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("rclone"))
}

/// Copies `set` up to `<bucket>/<prefix>` and back into a new directory under `scratch` with
/// rclone, `concurrency` transfers at a time; returns (upload run, download run). The uploaded
/// objects are deleted afterwards, also when a direction failed.
///
/// rclone copies a directory and names objects after the files, so the set's files must be
/// alone in one directory and named as [`DataSet::name`] names them; `prefix` must be empty or
/// end in `/` (rclone's paths are directories).
pub async fn run(
    s3: &S3Target,
    set: &DataSet,
    prefix: &str,
    concurrency: usize,
    scratch: &Path,
) -> anyhow::Result<(Run, Run)> {
    anyhow::ensure!(
        prefix.is_empty() || prefix.ends_with('/'),
        "peer: prefix {prefix:?} must be empty or end in '/' (rclone copies into a directory)"
    );
    let source = set_dir(set)?;
    let work = tempfile::Builder::new()
        .prefix("peer-")
        .tempdir_in(scratch)
        .with_context(|| format!("peer: creating a directory under {}", scratch.display()))?;
    let config = work.path().join("rclone.conf");
    write_private(&config, &render_config(s3)?)?;
    let download = work.path().join("download");
    std::fs::create_dir(&download)?;
    let remote = remote_path(&s3.bucket, prefix);
    let log = work.path().join("rclone.log");

    let runs = async {
        let (up_time, up_usage) = rclone(
            "upload",
            &upload_args(&config, &source, &remote, concurrency),
            &log,
        )
        .await?;
        let (down_time, down_usage) = rclone(
            "download",
            &download_args(&config, &remote, &download, concurrency),
            &log,
        )
        .await?;
        verify_copy(set, &download).await?;
        anyhow::Ok((
            run_of(set, up_time, up_usage),
            run_of(set, down_time, down_usage),
        ))
    }
    .await;
    let keys: Vec<String> = (0..set.files.len())
        .map(|i| format!("{prefix}{}", set.name(i)))
        .collect();
    let cleanup = s3.delete_objects(&keys).await;
    let runs = runs.context("peer (rclone)")?;
    cleanup.context("peer: deleting the objects afterwards")?;
    Ok(runs)
}

/// The first line of `rclone version` (e.g. `rclone v1.60.1-DEV`), for the report's versions.
pub async fn rclone_version() -> anyhow::Result<String> {
    let out = tokio::process::Command::new(rclone_bin())
        .arg("version")
        .env_remove("AWS_CA_BUNDLE")
        .output()
        .await
        .with_context(|| format!("running {} version", rclone_bin().display()))?;
    anyhow::ensure!(
        out.status.success(),
        "rclone version failed ({})",
        out.status
    );
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().next().unwrap_or_default().trim().to_string())
}

/// The rclone configuration for `s3`: a generic S3 remote, path-style, keys from the file
/// rather than the environment. Values must be single-line (the file is INI).
pub fn render_config(s3: &S3Target) -> anyhow::Result<String> {
    let fields = [
        ("type", "s3"),
        ("provider", "Other"),
        ("env_auth", "false"),
        ("access_key_id", s3.access_key.as_str()),
        ("secret_access_key", s3.secret_key.as_str()),
        ("region", s3.region.as_str()),
        ("endpoint", s3.endpoint.as_str()),
        ("force_path_style", "true"),
    ];
    let mut out = format!("[{REMOTE}]\n");
    for (key, value) in fields {
        anyhow::ensure!(
            !value.contains(['\n', '\r']),
            "peer: the S3 {key} holds a line break; rclone's configuration cannot hold it"
        );
        out.push_str(&format!("{key} = {value}\n"));
    }
    Ok(out)
}

/// `<remote>:<bucket>/<prefix without its trailing '/'>`.
pub fn remote_path(bucket: &str, prefix: &str) -> String {
    format!("{REMOTE}:{bucket}/{}", prefix.trim_end_matches('/'))
}

/// Flags for both directions (see `docs/benchmarking.md` for why each is there).
fn common_flags(config: &Path, concurrency: usize) -> Vec<String> {
    let n = concurrency.max(1).to_string();
    [
        "--config",
        &config.display().to_string(),
        "--transfers",
        &n,
        "--checkers",
        &n,
        "--retries",
        "1",
        "--s3-no-check-bucket",
    ]
    .map(String::from)
    .to_vec()
}

/// `rclone copy <set dir> <remote>` with the common flags.
pub fn upload_args(config: &Path, source: &Path, remote: &str, concurrency: usize) -> Vec<String> {
    let mut args = vec![
        "copy".to_string(),
        source.display().to_string(),
        remote.to_string(),
    ];
    args.extend(common_flags(config, concurrency));
    args
}

/// `rclone copy <remote> <dir>` with the common flags.
pub fn download_args(config: &Path, remote: &str, dest: &Path, concurrency: usize) -> Vec<String> {
    let mut args = vec![
        "copy".to_string(),
        remote.to_string(),
        dest.display().to_string(),
    ];
    args.extend(common_flags(config, concurrency));
    args
}

/// Runs rclone to its exit; returns the wall-clock time from its start and its usage. Its
/// stderr goes to `log`, quoted on failure. `RCLONE_*` variables and `AWS_CA_BUNDLE` (which
/// makes Debian's rclone fail every command) are removed from its environment.
async fn rclone(what: &str, args: &[String], log: &Path) -> anyhow::Result<(Duration, ProcUsage)> {
    let stderr = std::fs::File::create(log)?;
    let mut command = tokio::process::Command::new(rclone_bin());
    command
        .args(args)
        .env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RCLONE_") {
            command.env_remove(name);
        }
    }
    let started = Instant::now();
    let mut child = command.spawn().with_context(|| {
        format!(
            "starting {} (scripts/install-tools.sh installs it; or set CIM_RCLONE)",
            rclone_bin().display()
        )
    })?;
    let (status, usage) = procs::sample_until_exit("rclone", &mut child).await?;
    let elapsed = started.elapsed();
    anyhow::ensure!(
        status.success(),
        "rclone {what} failed ({status}):\n{}",
        cim_tests::tail_file(log, 20)
    );
    Ok((elapsed, usage))
}

/// The one directory holding the set's files and nothing else, each file named as the object.
fn set_dir(set: &DataSet) -> anyhow::Result<PathBuf> {
    let first = set.files.first().context("peer: the data set is empty")?;
    let dir = first
        .parent()
        .context("peer: a data set file has no directory")?;
    for (i, file) in set.files.iter().enumerate() {
        anyhow::ensure!(
            file.parent() == Some(dir) && file.file_name() == Some(set.name(i).as_ref()),
            "peer: rclone copies one directory and names objects after the files: {} should be {}",
            file.display(),
            dir.join(set.name(i)).display()
        );
    }
    let expected: BTreeSet<String> = (0..set.files.len()).map(|i| set.name(i)).collect();
    let present = entries(dir)?;
    anyhow::ensure!(
        present == expected,
        "peer: {} holds other entries than the data set's files; rclone would copy them too",
        dir.display()
    );
    Ok(dir.to_path_buf())
}

/// The names of a directory's entries.
fn entries(dir: &Path) -> anyhow::Result<BTreeSet<String>> {
    std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect()
}

/// Every original has the data set's size and a copy of the same size and SHA-256 in `dir`,
/// and `dir` holds nothing else; an error names the first file that differs.
pub async fn verify_copy(set: &DataSet, dir: &Path) -> anyhow::Result<()> {
    let set = set.clone();
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let expected: BTreeSet<String> = (0..set.files.len()).map(|i| set.name(i)).collect();
        let present = entries(&dir)?;
        if let Some(extra) = present.difference(&expected).next() {
            anyhow::bail!("peer: {extra} came back but is not in the data set");
        }
        for (i, original) in set.files.iter().enumerate() {
            let copy = dir.join(set.name(i));
            anyhow::ensure!(copy.is_file(), "peer: {} did not come back", set.name(i));
            let (a, b) = (size_and_sha256(original)?, size_and_sha256(&copy)?);
            anyhow::ensure!(
                a.0 == set.size,
                "peer: {} has {} bytes, the data set's objects {}",
                original.display(),
                a.0,
                set.size
            );
            anyhow::ensure!(
                a == b,
                "peer: {} came back different: {} bytes (SHA-256 {}) instead of {} bytes ({})",
                set.name(i),
                b.0,
                hex(&b.1),
                a.0,
                hex(&a.1)
            );
        }
        Ok(())
    })
    .await?
}

/// Size and SHA-256 of a file, streamed.
fn size_and_sha256(path: &Path) -> anyhow::Result<(u64, [u8; 32])> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher)
        .with_context(|| format!("reading {}", path.display()))?;
    Ok((size, hasher.finalize().into()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes a file only its owner can read (the configuration holds the secret key).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

/// The run of one direction: rclone stores the bytes as they are, so stored = logical.
fn run_of(set: &DataSet, elapsed: Duration, usage: ProcUsage) -> Run {
    Run {
        logical_bytes: set.bytes(),
        stored_bytes: set.bytes(),
        objects: set.files.len() as u64,
        elapsed,
        latencies: vec![],
        procs: vec![usage],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::DataKind;

    fn target() -> S3Target {
        S3Target {
            endpoint: "http://127.0.0.1:3900".into(),
            region: "garage".into(),
            bucket: "b".into(),
            access_key: "GK0123".into(),
            secret_key: "s3cr3t".into(),
            credentials_file: PathBuf::from("/nonexistent"),
            label: "test".into(),
        }
    }

    #[test]
    fn config_is_a_path_style_s3_remote_with_its_own_keys() {
        let config = render_config(&target()).unwrap_or_default();
        assert_eq!(
            config,
            "[cim-bench]\ntype = s3\nprovider = Other\nenv_auth = false\n\
             access_key_id = GK0123\nsecret_access_key = s3cr3t\nregion = garage\n\
             endpoint = http://127.0.0.1:3900\nforce_path_style = true\n"
        );
        let mut bad = target();
        bad.secret_key = "a\nb".into();
        assert!(render_config(&bad).is_err());
    }

    #[test]
    fn flags_are_the_documented_ones() {
        let config = Path::new("/c/rclone.conf");
        assert_eq!(remote_path("b", "run/7/"), "cim-bench:b/run/7");
        assert_eq!(remote_path("b", ""), "cim-bench:b/");
        let common = "--config /c/rclone.conf --transfers 8 --checkers 8 --retries 1 \
                      --s3-no-check-bucket";
        assert_eq!(
            upload_args(config, Path::new("/set"), "cim-bench:b/p", 8).join(" "),
            format!("copy /set cim-bench:b/p {common}")
        );
        assert_eq!(
            download_args(config, "cim-bench:b/p", Path::new("/d"), 8).join(" "),
            format!("copy cim-bench:b/p /d {common}")
        );
    }

    #[tokio::test]
    async fn a_copy_that_differs_is_named() -> anyhow::Result<()> {
        let tmp = tempfile::tempdir()?;
        let set = DataSet::create(&tmp.path().join("set"), DataKind::Random, 1000, 3, 1)?;
        assert_eq!(set_dir(&set)?, tmp.path().join("set"));
        let copy = tmp.path().join("copy");
        std::fs::create_dir(&copy)?;
        for (i, file) in set.files.iter().enumerate() {
            std::fs::copy(file, copy.join(set.name(i)))?;
        }
        verify_copy(&set, &copy).await?;

        let mut bytes = std::fs::read(copy.join(set.name(1)))?;
        bytes[500] ^= 1;
        std::fs::write(copy.join(set.name(1)), &bytes)?;
        let err = verify_copy(&set, &copy).await.err().map(|e| e.to_string());
        assert!(err
            .as_deref()
            .unwrap_or("")
            .contains("o-000001 came back different"));

        std::fs::remove_file(copy.join(set.name(1)))?;
        let err = verify_copy(&set, &copy).await.err().map(|e| e.to_string());
        assert!(err
            .as_deref()
            .unwrap_or("")
            .contains("o-000001 did not come back"));

        std::fs::write(tmp.path().join("set/stray"), b"x")?;
        assert!(set_dir(&set).is_err());
        Ok(())
    }
}
