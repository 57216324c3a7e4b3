//! `cim-gateway`: the S3 tier's roles — the upload worker, restore, and listing and scrubbing
//! from S3 alone.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use cim_gateway::gc;
use cim_gateway::scrub;
use cim_gateway::upload::{connect_s3_tiers, sweep_stale_uploads, UploadHandler};
use cim_gateway::versions::{delete_s3_only, Tombstoned};
use cim_policies::{Config, Route, Tier};
use cim_tiering::cli::LogFormat;
use cim_tiering::lease::Leases;
use cim_tiering::retry::{retry, Backoff};
use cim_tiering::work::Role;
use cim_tiering::{cli, metrics, push, status, System};
use clap::{Args, Parser, Subcommand};

mod commands {
    //! The commands whose code outgrew this file.
    pub(crate) mod get;
    pub(crate) mod list;
    pub(crate) mod reconcile;
    pub(crate) mod restore;
    pub(crate) mod serve;
}
use commands::get as cli_get;
use commands::list as cli_list;
use commands::reconcile as cli_reconcile;
use commands::restore as cli_restore;
use commands::serve as cli_serve;

/// S3 tier of the NATS JetStream storage gateway.
#[derive(Parser)]
#[command(name = "cim-gateway", version)]
struct Cli {
    /// How log lines (stderr) are written: `human`, or `json` (one object per line, with the
    /// fields of every enclosing span).
    #[arg(long, global = true, env = "CIM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct ConfigArg {
    /// The configuration file shared by all roles (TOML or JSON).
    #[arg(long, env = "CIM_CONFIG")]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the upload role: move objects from the cluster to S3 as the manager queues them.
    Upload {
        #[command(flatten)]
        config: ConfigArg,
        /// Serve /metrics, /healthz and /readyz here instead of `[metrics] listen`.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
    },
    /// Restore objects from S3 into a JetStream tier, verifying every byte first.
    ///
    /// An object whose target already holds a different version is skipped and reported, unless
    /// --overwrite is given; even then a version is only replaced when the catalog records a
    /// verified copy of it on another tier (otherwise the object fails, named).
    #[command(after_help = cli_restore::EXIT_STATUS_HELP)]
    Restore(cli_restore::RestoreArgs),
    /// Read one object to a file (-o) or stdout, from the nearest tier that holds its current
    /// version (the leaves, then the cluster, then S3), verifying size and SHA-256 against the
    /// ingest digest as it reads.
    ///
    /// With -o FILE the object is written to a temporary file beside FILE and renamed over it
    /// only once verified; a copy that fails is named on stderr and removed, and the next tier
    /// holding the same version is tried (never with --from). To stdout the bytes stream out
    /// before the check at the end: if it fails, stdout holds bad bytes, a message says so and
    /// the exit status is 1. One line for people on stderr at the end; nothing on stdout but
    /// the object.
    #[command(after_help = cli_get::EXIT_STATUS_HELP)]
    Get(cli_get::GetArgs),
    /// Delete an object that lives only in S3 (a tombstone manifest; the catalog records it).
    ///
    /// Refused, naming the tier, when a JetStream tier still holds the object: delete it there
    /// (`nats object rm`), and the delete reaches S3 by itself. Deleting an object already
    /// deleted succeeds. The deleted version stays restorable (`restore --include-deleted`)
    /// until `gc` removes it after the tier's retention.
    Delete {
        #[command(flatten)]
        config: ConfigArg,
        /// The object-store bucket.
        #[arg(long)]
        bucket: String,
        /// The object to delete.
        #[arg(long)]
        name: String,
        /// S3 tier to delete from (default: the only S3 tier).
        #[arg(long)]
        from: Option<String>,
    },
    /// Remove what deletes and overwrites left behind longer ago than the tier's retention:
    /// history of superseded versions, and blobs no manifest references (never one an upload
    /// holds the lease of). Tombstones stay.
    Gc {
        #[command(flatten)]
        config: ConfigArg,
        /// S3 tier to collect (default: the only S3 tier).
        #[arg(long)]
        from: Option<String>,
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// List what an S3 tier holds, from its manifests alone (no NATS needed): a table (bucket,
    /// name, size, stored size, times, SHA-256) and a totals line, or `--json` for scripts.
    /// Deleted objects (tombstones) are left out unless --include-deleted. A manifest that
    /// cannot be read, or has a format this version cannot read, is reported on stderr (in
    /// `problems` with --json) and the listing goes on.
    #[command(after_help = cli_list::EXIT_STATUS_HELP)]
    List(cli_list::ListArgs),
    /// Read back and verify what an S3 tier stores, from S3 alone (no NATS needed): for every
    /// current manifest, or a random sample, the blob's length, zstd decoding, size and SHA-256
    /// against the manifest's digest. Only reads; each bad object is named on stderr (and in an
    /// error log line), then a summary.
    #[command(after_help = SCRUB_EXIT_STATUS_HELP)]
    Scrub {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this bucket (repeatable; default: every bucket the tier holds).
        #[arg(long)]
        bucket: Vec<String>,
        /// S3 tier to scrub (default: the only S3 tier).
        #[arg(long)]
        from: Option<String>,
        /// Check only a random sample: a share of the objects (`10%`) or a number (`100`).
        #[arg(long, default_value = "all")]
        sample: cim_gateway::scrub::Sample,
    },
    /// Run the `cim.storage.object.ensure` NATS service: asked for an object, make sure the hub
    /// holds it (restoring it from S3, verified, if only S3 does) and answer once it is ready.
    Serve(cli_serve::ServeArgs),
    /// Repair the catalog: compare it with what the tiers hold (JetStream metas, S3 manifests),
    /// drop locations a tier no longer holds, record checked copies it does not know, carry S3
    /// tombstones, and report what it cannot decide. Rebuilds a lost catalog (its KV bucket
    /// deleted) from the tiers. Safe beside running roles: every write is a compare-and-set.
    #[command(after_help = cli_reconcile::EXIT_STATUS_HELP)]
    Reconcile(cli_reconcile::ReconcileArgs),
    /// Print the shell completion script for SHELL to stdout.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: cli::generated::Shell,
    },
    /// Print the man page (roff) to stdout: this command's, or SUBCOMMAND's.
    Manpage {
        /// A subcommand whose own page to print (e.g. `restore`).
        subcommand: Option<String>,
    },
}

/// Exit status of `scrub`, in the same scheme as `list`'s.
const SCRUB_EXIT_STATUS_HELP: &str = "Exit status: 0 every object checked is intact; 1 at least \
one is bad (damaged, missing or with an unreadable manifest) or could not be checked (or the \
listing failed); 3 none of those, but at least one manifest has a format this version cannot \
read (skipped, named).";

/// Exit status of a run that skipped objects and failed none: the data is safe, but what was
/// asked for was not all done, so scripts must notice.
const EXIT_SKIPPED: u8 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    cim_tiering::memory::bound_heap();
    let args = Cli::parse();
    let command = args.command;
    match &command {
        Command::Completions { shell } => {
            return cli::generated::exit(cli::generated::completions::<Cli>(*shell, "cim-gateway"));
        }
        Command::Manpage { subcommand } => {
            return cli::generated::exit(cli::generated::manpage::<Cli>(subcommand.as_deref()));
        }
        _ => {}
    }
    cli::init_tracing(args.log_format);
    let result = run(command).await;
    // A one-shot command that turned pushing on reports what it did, whatever the outcome.
    push::push(matches!(&result, Ok(code) if *code == ExitCode::SUCCESS)).await;
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line for people; the whole chain (the SDK's dump included) under
            // RUST_LOG=debug.
            tracing::debug!("the error in full: {e:#?}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The client of S3 tier `name`, named in its errors and metrics; a configuration it cannot
/// work with (no credentials, a bad prefix) is an error naming the tier.
async fn connect_s3(
    name: &str,
    tier: &cim_policies::S3Tier,
) -> anyhow::Result<cim_gateway::s3::S3Store> {
    let store = cim_gateway::s3::S3Store::connect(tier)
        .await
        .with_context(|| format!("s3 tier {name:?}"))?;
    Ok(store.with_tier_name(name))
}

/// The exit status of a run with `failed` failures and `skipped` skips (see [`EXIT_STATUS_HELP`]).
fn exit_status(failed: usize, skipped: usize) -> ExitCode {
    match (failed, skipped) {
        (0, 0) => ExitCode::SUCCESS,
        (0, _) => ExitCode::from(EXIT_SKIPPED),
        _ => ExitCode::FAILURE,
    }
}

/// The S3 tier to use: the one named, or the only one.
fn s3_tier_name(config: &Config, named: Option<String>) -> anyhow::Result<String> {
    if let Some(name) = named {
        return match config.tier(&name) {
            Some(Tier::S3(_)) => Ok(name),
            _ => bail!("--from {name:?} is not an s3 tier of the configuration"),
        };
    }
    let s3: Vec<&String> = config
        .tiers
        .iter()
        .filter(|(_, t)| matches!(t, Tier::S3(_)))
        .map(|(n, _)| n)
        .collect();
    match s3.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("the configuration has no s3 tier"),
        _ => bail!("the configuration has several s3 tiers; choose one with --from"),
    }
}

/// The JetStream tier restores go to: the one named, or the source of the policies that upload
/// to `s3_tier`.
fn restore_target(config: &Config, s3_tier: &str, named: Option<String>) -> anyhow::Result<String> {
    if let Some(name) = named {
        return Ok(name);
    }
    let mut sources: Vec<&str> = config
        .policies_on(Route::ClusterToS3)
        .filter(|p| p.to == s3_tier)
        .map(|p| p.from.as_str())
        .collect();
    sources.sort();
    sources.dedup();
    match sources.as_slice() {
        [one] => Ok((*one).to_string()),
        [] => bail!("no policy uploads to {s3_tier:?}; name the target tier with --to"),
        _ => bail!("several tiers upload to {s3_tier:?}; name the target tier with --to"),
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Completions { .. } | Command::Manpage { .. } => {
            unreachable!("handled before logging starts")
        }
        Command::Upload {
            config,
            metrics_listen,
        } => {
            let config = cli::load_config(&config.config)?;
            let shutdown = cli::shutdown_on_signal();
            let readiness = cli::serve_metrics(&config, metrics_listen, &shutdown).await?;
            metrics::role_started(metrics::Role::Upload, &config);
            let system = Arc::new(
                System::connect(config, "cim-gateway upload")
                    .await
                    .context("connecting to nats")?,
            );
            let stores = connect_s3_tiers(&system)
                .await
                .context("connecting the s3 tiers")?;
            // Ready while NATS is connected and every S3 tier answers: the uploader can do
            // nothing without either.
            readiness.set(
                std::iter::once(system.nats_ready())
                    .chain(stores.values().map(|store| store.ready_check()))
                    .collect(),
            );
            let heartbeat = status::start_heartbeat(&system, "upload", &shutdown, false);
            // In the background: a slow or unreachable S3 must not delay taking work.
            tokio::spawn({
                let stores = stores.clone();
                async move { sweep_stale_uploads(&stores).await }
            });
            let handler = Arc::new(UploadHandler::new(system.clone(), stores));
            system
                .work
                .run_worker(Role::Upload, handler, shutdown)
                .await?;
            status::stop_heartbeat(heartbeat).await;
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore(args) => cli_restore::run(args).await,
        Command::Get(args) => cli_get::run(args).await,
        Command::Delete {
            config,
            bucket,
            name,
            from,
        } => {
            let config = cli::load_config(&config.config)?;
            let s3_name = s3_tier_name(&config, from)?;
            let source = restore_target(&config, &s3_name, None)?;
            let Some(Tier::S3(s3_config)) = config.tier(&s3_name).cloned() else {
                bail!("{s3_name:?} is not an s3 tier");
            };
            let system = System::connect(config, "cim-gateway delete")
                .await
                .context("connecting to nats")?;
            let store = connect_s3(&s3_name, &s3_config).await?;
            let outcome = delete_s3_only(&system, &store, &source, &bucket, &name).await?;
            match outcome {
                Tombstoned::AlreadyDeleted => println!("already deleted {bucket}/{name}"),
                _ => println!("deleted {bucket}/{name}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Gc {
            config,
            from,
            dry_run,
        } => {
            let config = cli::load_config(&config.config)?;
            push::install(&config.metrics, metrics::Role::Gc);
            metrics::role_started(metrics::Role::Gc, &config);
            let s3_name = s3_tier_name(&config, from)?;
            let Some(Tier::S3(s3_config)) = config.tier(&s3_name).cloned() else {
                bail!("{s3_name:?} is not an s3 tier");
            };
            let system = System::connect(config, "cim-gateway gc")
                .await
                .context("connecting to nats")?;
            let replicas = system.config.nats.replicas;
            let leases = retry("open leases", Backoff::STARTUP, || {
                Leases::open(system.control(), replicas)
            })
            .await?;
            let store = connect_s3(&s3_name, &s3_config).await?;
            let report = gc::collect(&store, &leases, s3_config.retention, dry_run).await?;
            let verb = if dry_run { "would remove" } else { "removed" };
            for key in report.manifests_removed.iter().chain(&report.blobs_removed) {
                println!("{verb} {key}");
            }
            for key in &report.blobs_in_use {
                println!("in use   {key} (an upload holds its lease; kept)");
            }
            println!(
                "{verb} {} history manifests and {} blobs; kept {} referenced, {} younger than \
                 the retention ({}), {} in use",
                report.manifests_removed.len(),
                report.blobs_removed.len(),
                report.blobs_referenced,
                report.blobs_too_young,
                humantime::format_duration(s3_config.retention),
                report.blobs_in_use.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::List(args) => cli_list::run(args).await,
        Command::Serve(args) => cli_serve::run(args).await,
        Command::Reconcile(args) => cli_reconcile::run(args).await,
        Command::Scrub {
            config,
            bucket,
            from,
            sample,
        } => {
            let config = cli::load_config(&config.config)?;
            push::install(&config.metrics, metrics::Role::Scrub);
            metrics::role_started(metrics::Role::Scrub, &config);
            let s3_name = s3_tier_name(&config, from)?;
            let Some(Tier::S3(s3_config)) = config.tier(&s3_name) else {
                bail!("{s3_name:?} is not an s3 tier");
            };
            let store = connect_s3(&s3_name, s3_config).await?;
            let buckets = (!bucket.is_empty()).then_some(bucket);
            let report = scrub::scrub(&store, buckets, sample)
                .await
                .with_context(|| {
                    format!("scrubbing s3 tier {s3_name:?} at {}", store.endpoint())
                })?;
            for (bucket, name, why) in &report.skipped {
                eprintln!("skipped  {bucket}/{name}: {why}");
            }
            for f in &report.findings {
                let verdict = if f.is_bad() { "BAD      " } else { "UNCHECKED" };
                eprintln!("{verdict} {}/{} ({}): {}", f.bucket, f.name, f.key, f.error);
            }
            let (bad, unchecked) = (report.bad(), report.unchecked());
            println!(
                "scrub of s3 tier {s3_name:?} (sample {sample}): {} of {} objects verified, {bad} \
                 bad, {unchecked} not checked, {} skipped",
                report.verified,
                report.objects,
                report.skipped.len()
            );
            if bad > 0 {
                println!(
                    "nothing was changed. A bad copy is never used: `cim-gateway restore` refuses \
                     it. The upload role repairs a bad blob from a verified source when that \
                     content is uploaded again: write the object again from a copy you trust \
                     (e.g. the leaf's) and it is uploaded, verified and recorded anew."
                );
            }
            Ok(exit_status(bad + unchecked, report.skipped.len()))
        }
    }
}
