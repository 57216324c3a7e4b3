//! The `get` command: one object, streamed from the nearest tier that holds its current version
//! (the leaves, then the cluster, then S3), verified against the ingest digest and size as it is
//! read.
//!
//! # Which copy, and why fall back
//! The nearest tier that holds the object decides what its current version is (its meta's
//! digest and size, or the S3 manifest's); a delete marker or tombstone there means the object
//! is deleted. A copy that fails (a bad digest, a short read, an unreachable tier) is reported,
//! named, and the next tier is tried — but only a tier holding the *same* version (same digest
//! and size): an older copy further away is never handed out in place of the current one.
//! `--from` reads one tier and never falls back.
//!
//! # Never a bad byte where the user cannot tell
//! With `-o FILE` the bytes go to a temporary file beside FILE, which is fsynced and renamed over
//! FILE only once size and digest matched; any failure removes it and leaves FILE untouched, so
//! a failed copy costs nothing and the next tier starts afresh. A `get` killed outright
//! (SIGKILL, power loss) leaves its hidden temporary file; the next `get -o` of the same FILE
//! removes those of processes that no longer run. To stdout the bytes stream out
//! before the check at the end can pass: a failure then exits 1 with a message, and once bytes
//! have gone out nothing falls back (it would append a second copy to the first).
//!
//! Memory is bounded by the readers' buffers (a JetStream reader's two batches, the S3 read's
//! decode buffer), whatever the object's size.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll};

use anyhow::{bail, Context as _};
use async_nats::jetstream::object_store::ObjectInfo;
use cim_gateway::format::Manifest;
use cim_gateway::s3::S3Store;
use cim_policies::{Config, JetStreamRole, Tier};
use cim_tiering::access::AccessLog;
use cim_tiering::digest::Sha256Digest;
use cim_tiering::jetstream::is_live;
use cim_tiering::{cli, System};
use clap::Args;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tracing::Instrument;

use super::restore::EXIT_NOTHING_MATCHED;
use crate::{connect_s3, ConfigArg};

/// Exit status of `get`.
pub(crate) const EXIT_STATUS_HELP: &str = "Exit status: 0 the object was written and its size \
and SHA-256 match the ingest digest; 1 no copy could be read and verified (each failure is named \
on stderr with the tier; to stdout, the bytes already written are then bad and must be \
discarded), or the run could not start; 4 not found: no tier holds the object, or the nearest \
one holds it deleted.";

/// Arguments of `cim-gateway get`.
#[derive(Args)]
pub(crate) struct GetArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The object-store bucket.
    #[arg(long)]
    bucket: String,
    /// The object to read.
    #[arg(long)]
    name: String,
    /// Write the object to FILE (through a temporary file beside it, renamed over FILE only
    /// once verified). Without it the object goes to stdout: a failure is then only known at
    /// the end (message and exit status 1), and stdout holds bad bytes.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Read only this tier (a leaf, the cluster or an S3 tier), with no fallback to another.
    #[arg(long, value_name = "TIER")]
    from: Option<String>,
}

/// Where a copy lives and how to read it.
enum Source {
    JetStream(Box<ObjectInfo>),
    S3(Box<(S3Store, Manifest)>),
}

/// One tier's copy of the object: the version it holds and how to read it.
struct Held {
    tier: String,
    digest: Sha256Digest,
    size: u64,
    source: Source,
}

/// What one tier says about the object.
enum Lookup {
    Copy(Held),
    /// A delete marker (JetStream) or a tombstone manifest (S3).
    Deleted(&'static str),
    Absent,
    /// It holds something that cannot be read as a verified copy (a link, a meta without a
    /// digest); the reason.
    Unusable(String),
}

/// Runs `get` (see the module docs); the exit status says how it went ([`EXIT_STATUS_HELP`]).
pub(crate) async fn run(args: GetArgs) -> anyhow::Result<ExitCode> {
    let GetArgs {
        config,
        bucket,
        name,
        output,
        from,
    } = args;
    let config = cli::load_config(&config.config)?;
    let fallback = from.is_none();
    let order = tier_order(&config, from)?;
    let needs_nats = order
        .iter()
        .any(|t| matches!(config.tier(t), Some(Tier::JetStream(_))));
    let s3_tiers: Vec<(String, cim_policies::S3Tier)> = order
        .iter()
        .filter_map(|t| match config.tier(t) {
            Some(Tier::S3(s3)) => Some((t.clone(), s3.clone())),
            _ => None,
        })
        .collect();
    let system = if needs_nats {
        Some(
            System::connect(config, "cim-gateway get")
                .await
                .context("connecting to nats")?,
        )
    } else {
        None
    };
    let mut sink = match output {
        Some(path) => {
            let file = FileSink::new(path)?;
            file.remove_stale().await;
            Sink::File(file)
        }
        None => Sink::Stdout(Counted::new(tokio::io::stdout())),
    };
    let object = format!("{bucket}/{name}");

    // The version the nearest tier holds: every later copy must be this one.
    let mut current: Option<(Sha256Digest, u64)> = None;
    let mut troubled = false;
    for tier in &order {
        let lookup = match s3_tiers.iter().find(|(n, _)| n == tier) {
            Some((_, s3)) => look_in_s3(tier, s3, &bucket, &name).await,
            None => look_in_jetstream(system.as_ref(), tier, &bucket, &name).await,
        };
        let held = match lookup {
            Err(e) => {
                eprintln!("error: {object} on tier {tier}: cannot look it up: {e:#}");
                troubled = true;
                continue;
            }
            Ok(Lookup::Absent) => continue,
            Ok(Lookup::Deleted(what)) if current.is_none() && !troubled => {
                eprintln!("not found: {object} is deleted (tier {tier} holds {what})");
                return Ok(ExitCode::from(EXIT_NOTHING_MATCHED));
            }
            Ok(Lookup::Deleted(_)) => continue,
            Ok(Lookup::Unusable(why)) => {
                eprintln!("error: {object} on tier {tier}: {why}; not used");
                troubled = true;
                continue;
            }
            Ok(Lookup::Copy(held)) => held,
        };
        match current {
            Some(version) if version != (held.digest, held.size) => {
                eprintln!(
                    "skipped  {object} on tier {tier}: another version ({}, {} bytes; the \
                     current one is {}, {} bytes)",
                    held.digest, held.size, version.0, version.1
                );
                continue;
            }
            _ => current = Some((held.digest, held.size)),
        }
        let span = tracing::info_span!("get", %bucket, %name, tier = %held.tier, size = held.size);
        // A local failure (the temporary file, the rename) is no tier's fault: it ends the run.
        let read = sink
            .write_verified(system.as_ref(), &bucket, &held)
            .instrument(span)
            .await?;
        match read {
            Ok(size) => {
                eprintln!(
                    "got {object} from {tier}: {}, sha-256 ok",
                    cli::human_bytes(size)
                );
                // A read counts for the policies' `idle`; never fails the get (logged instead).
                if let Some(system) = &system {
                    AccessLog::new(system).record(&bucket, &name).await;
                }
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => {
                eprintln!("error: {object} on tier {tier}: {e:#}");
                troubled = true;
            }
        }
        if !fallback {
            break;
        }
        if let Sink::Stdout(out) = &sink {
            if out.written > 0 {
                eprintln!(
                    "error: stdout already holds {} bytes of the copy that failed: discard them \
                     (not falling back to another tier, which would append a second copy; use \
                     -o FILE to fall back safely)",
                    out.written
                );
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    if current.is_none() && !troubled {
        eprintln!(
            "not found: no tier holds {object} (looked on {})",
            order.join(", ")
        );
        return Ok(ExitCode::from(EXIT_NOTHING_MATCHED));
    }
    eprintln!(
        "error: no verified copy of {object} could be read (looked on {})",
        order.join(", ")
    );
    Ok(ExitCode::FAILURE)
}

/// The tiers to look on, nearest first: the one named by `--from`, or every JetStream tier with
/// `role = "leaf"`, then the other (cluster) JetStream tiers, then the S3 tiers, each group by
/// name.
fn tier_order(config: &Config, from: Option<String>) -> anyhow::Result<Vec<String>> {
    if let Some(name) = from {
        if config.tier(&name).is_none() {
            bail!(
                "--from {name:?} is not a tier of the configuration (tiers: {})",
                config.tiers.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        return Ok(vec![name]);
    }
    let rank = |tier: &Tier| match tier {
        Tier::JetStream(js) if js.role == JetStreamRole::Leaf => 0,
        Tier::JetStream(_) => 1,
        Tier::S3(_) => 2,
    };
    let mut tiers: Vec<(u8, &String)> = config.tiers.iter().map(|(n, t)| (rank(t), n)).collect();
    tiers.sort();
    Ok(tiers.into_iter().map(|(_, n)| n.clone()).collect())
}

/// What JetStream tier `tier` holds of the object: its latest meta decides (from the stream
/// leader, so a lagging replica never answers).
async fn look_in_jetstream(
    system: Option<&System>,
    tier: &str,
    bucket: &str,
    name: &str,
) -> anyhow::Result<Lookup> {
    let system = system.context("not connected to nats")?;
    let Some(version) = system.jetstream_tier(tier)?.latest(bucket, name).await? else {
        return Ok(Lookup::Absent);
    };
    let info = version.info;
    if info.deleted {
        return Ok(Lookup::Deleted("a delete marker"));
    }
    if !is_live(&info) {
        return Ok(Lookup::Unusable("it is a link, not an object".into()));
    }
    let digest = match info.digest.as_deref().map(Sha256Digest::from_nats) {
        Some(Ok(digest)) => digest,
        Some(Err(e)) => {
            return Ok(Lookup::Unusable(format!(
                "its meta's digest is unreadable ({e})"
            )))
        }
        None => {
            return Ok(Lookup::Unusable(
                "its meta records no SHA-256 digest, so it cannot be verified".into(),
            ))
        }
    };
    Ok(Lookup::Copy(Held {
        tier: tier.to_string(),
        digest,
        size: info.size as u64,
        source: Source::JetStream(Box::new(info)),
    }))
}

/// What S3 tier `tier` holds of the object: its current manifest decides.
async fn look_in_s3(
    tier: &str,
    config: &cim_policies::S3Tier,
    bucket: &str,
    name: &str,
) -> anyhow::Result<Lookup> {
    let store = connect_s3(tier, config).await?;
    let Some(manifest) = store.get_manifest(bucket, name).await? else {
        return Ok(Lookup::Absent);
    };
    if manifest.is_deleted() {
        return Ok(Lookup::Deleted("a tombstone"));
    }
    Ok(Lookup::Copy(Held {
        tier: tier.to_string(),
        digest: manifest.digest,
        size: manifest.size,
        source: Source::S3(Box::new((store, manifest))),
    }))
}

/// Streams `held` into `out`, checking size and SHA-256 against the ingest digest; `Ok` only
/// when both matched (`out` may hold bad bytes otherwise).
async fn read_verified<W: AsyncWrite + Unpin + Send>(
    system: Option<&System>,
    bucket: &str,
    held: &Held,
    out: &mut W,
) -> anyhow::Result<u64> {
    match &held.source {
        Source::JetStream(info) => {
            let tier = system
                .context("not connected to nats")?
                .jetstream_tier(&held.tier)?;
            Ok(tier
                .read_verified(bucket, info, held.size, &held.digest, out)
                .await?)
        }
        Source::S3(s3) => {
            let (store, manifest) = &**s3;
            Ok(store.read_verified(manifest, out).await?)
        }
    }
}

/// Where the object goes.
enum Sink {
    File(FileSink),
    Stdout(Counted<tokio::io::Stdout>),
}

impl Sink {
    /// Writes one copy, verified: to a file only once it matched, to stdout as it streams.
    /// The inner result is the copy's (a bad or unreadable copy: try another tier); the outer
    /// one is local (the temporary file cannot be created, synced or renamed: stop).
    async fn write_verified(
        &mut self,
        system: Option<&System>,
        bucket: &str,
        held: &Held,
    ) -> anyhow::Result<anyhow::Result<u64>> {
        match self {
            Sink::Stdout(out) => {
                let read = read_verified(system, bucket, held, out).await;
                if read.is_ok() {
                    out.flush().await.context("writing to stdout")?;
                }
                Ok(read)
            }
            Sink::File(file) => {
                let mut temp = file.begin().await?;
                let read = read_verified(system, bucket, held, &mut temp).await;
                let Ok(size) = read else {
                    drop(temp);
                    file.discard().await;
                    return Ok(read);
                };
                if let Err(e) = file.commit(temp).await {
                    file.discard().await;
                    return Err(e);
                }
                Ok(Ok(size))
            }
        }
    }
}

/// `-o FILE`: a temporary file in FILE's directory (a rename within one file system is atomic),
/// renamed over FILE once verified.
struct FileSink {
    target: PathBuf,
    temp: PathBuf,
}

impl FileSink {
    fn new(target: PathBuf) -> anyhow::Result<FileSink> {
        let Some(file_name) = target.file_name() else {
            bail!("-o {}: not a file name", target.display());
        };
        // Hidden, and named after this process: a SIGKILLed get leaves it beside FILE, never
        // in FILE's place (and the next get of FILE removes it, see `remove_stale`).
        let temp = target.with_file_name(format!(
            "{}{}",
            Self::temp_prefix(file_name),
            std::process::id()
        ));
        Ok(FileSink { target, temp })
    }

    /// The temporary files of FILE are named this, then the writing process's id.
    fn temp_prefix(file_name: &std::ffi::OsStr) -> String {
        format!(".{}.cim-get-", file_name.to_string_lossy())
    }

    /// Removes the temporary files of FILE that `get`s killed outright left, those of processes
    /// that no longer run (`/proc/<pid>`); a running `get` of the same FILE keeps its own. A
    /// file that cannot be removed is reported and left: FILE itself is not at stake.
    async fn remove_stale(&self) {
        let (Some(dir), Some(file_name)) = (self.temp.parent(), self.target.file_name()) else {
            return;
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let prefix = Self::temp_prefix(file_name);
        let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
            return;
        };
        while let Ok(Some(entry)) = entries.next_entry().await {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .and_then(|n| n.strip_prefix(prefix.as_str()))
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
            let path = entry.path();
            match tokio::fs::remove_file(&path).await {
                Ok(()) => eprintln!(
                    "removed {}, left by a get (pid {pid}) that did not finish",
                    path.display()
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => eprintln!("warning: could not remove {}: {e}", path.display()),
            }
        }
    }

    /// A fresh, empty temporary file.
    async fn begin(&self) -> anyhow::Result<tokio::fs::File> {
        tokio::fs::File::create(&self.temp)
            .await
            .with_context(|| format!("creating {}", self.temp.display()))
    }

    /// Makes the verified temporary file FILE, durably: its data, then the rename, then the
    /// directory entry.
    async fn commit(&self, mut temp: tokio::fs::File) -> anyhow::Result<()> {
        let at = || format!("writing {}", self.temp.display());
        temp.flush().await.with_context(at)?;
        temp.sync_all().await.with_context(at)?;
        drop(temp);
        tokio::fs::rename(&self.temp, &self.target)
            .await
            .with_context(|| {
                format!(
                    "renaming {} to {}",
                    self.temp.display(),
                    self.target.display()
                )
            })?;
        let dir = match self.target.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        sync_dir(&dir).await
    }

    /// Removes the temporary file (what a failed copy wrote); FILE is untouched.
    async fn discard(&self) {
        if let Err(e) = tokio::fs::remove_file(&self.temp).await {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("warning: could not remove {}: {e}", self.temp.display());
            }
        }
    }
}

/// Fsyncs directory `dir`, so that a rename in it survives a crash.
async fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("syncing directory {}", dir.display()))
    })
    .await
    .context("syncing the directory")?
}

/// A writer that counts what it was given: whether stdout already received bytes of a copy
/// decides whether another tier may still be tried.
struct Counted<W> {
    inner: W,
    written: u64,
}

impl<W> Counted<W> {
    fn new(inner: W) -> Self {
        Counted { inner, written: 0 }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Counted<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            this.written += *n as u64;
        }
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tiers_are_tried_leaves_first_then_the_cluster_then_s3() {
        let config = Config::from_toml_str(
            r#"
[nats]
url = "nats://127.0.0.1:4222"

[tiers.z-edge]
kind = "jetstream"
domain = "edge"
role = "leaf"

[tiers.hub]
kind = "jetstream"
domain = "hub"

[tiers.archive]
kind = "s3"
endpoint = "http://127.0.0.1:3900"
bucket = "cim"
region = "garage"
"#,
            "test.toml",
        )
        .unwrap();
        assert_eq!(
            tier_order(&config, None).unwrap(),
            vec!["z-edge", "hub", "archive"]
        );
        assert_eq!(
            tier_order(&config, Some("hub".into())).unwrap(),
            vec!["hub"]
        );
        assert!(tier_order(&config, Some("nope".into())).is_err());
    }

    #[test]
    fn the_temporary_file_sits_beside_the_target() {
        let sink = FileSink::new(PathBuf::from("/data/out/a.bin")).unwrap();
        assert_eq!(sink.temp.parent(), Some(Path::new("/data/out")));
        assert!(sink
            .temp
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with(".a.bin.cim-get-"));
        assert!(FileSink::new(PathBuf::from("/")).is_err());
    }
}
