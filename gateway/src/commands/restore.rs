//! The `restore` command: arguments, per-object report and summary, exit status.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use cim_gateway::restore::{Restored, Restorer};
use cim_policies::Tier;
use cim_tiering::{cli, metrics, push, status, System};
use clap::Args;

use crate::{connect_s3, exit_status, restore_target, s3_tier_name, ConfigArg};

/// Arguments of `cim-gateway restore`.
#[derive(Args)]
pub(crate) struct RestoreArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The object-store bucket.
    #[arg(long)]
    bucket: String,
    /// One object to restore.
    #[arg(long, conflicts_with = "all", required_unless_present = "all")]
    name: Option<String>,
    /// Restore every object of the bucket.
    #[arg(long)]
    all: bool,
    /// Replace a different version held by the target, if another tier holds a verified
    /// copy of it.
    #[arg(long)]
    overwrite: bool,
    /// Restore deleted objects too: the last version the S3 tier held before the delete
    /// (while the retention keeps its blob).
    #[arg(long)]
    include_deleted: bool,
    /// S3 tier to read from (default: the only S3 tier).
    #[arg(long)]
    from: Option<String>,
    /// JetStream tier to write into (default: the tier that uploads to the S3 tier).
    #[arg(long)]
    to: Option<String>,
    /// Objects restored at once with --all (default: `[restore] concurrency`, 32).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: Option<u32>,
}

/// Exit status of `restore`: 0 when everything was restored (or listed), 1 when an
/// object failed, [`crate::EXIT_SKIPPED`] when none failed but some were skipped.
pub(crate) const EXIT_STATUS_HELP: &str = "Exit status: 0 every object restored or already present \
(deleted objects are named and left out); 1 at least one object failed (or the run could not \
start); 3 none failed, but at least one was skipped (the target holds another version, or its \
manifest has a format this version cannot read) and is named on its own line, or the one object \
asked for by --name is deleted.";

/// Counts of a restore run, printing one line per object as its outcome arrives.
#[derive(Default)]
struct Summary {
    total: usize,
    failed: usize,
    skipped: usize,
}

impl Summary {
    /// Prints and counts one object's outcome. `all`: the run restores a whole bucket (a deleted
    /// object is then reported but not counted as skipped).
    fn report(
        &mut self,
        bucket: &str,
        name: &str,
        outcome: Result<Restored, cim_gateway::Error>,
        all: bool,
    ) {
        self.total += 1;
        match outcome {
            Ok(Restored::Written) => println!("restored {bucket}/{name}"),
            Ok(Restored::AlreadyPresent) => println!("present  {bucket}/{name}"),
            Ok(Restored::Skipped(why)) => {
                self.skipped += 1;
                println!("skipped  {bucket}/{name}: {why}");
            }
            Ok(Restored::Deleted(why)) => {
                // Asked for by name, it was not restored: say so in the status too.
                if !all {
                    self.skipped += 1;
                }
                println!(
                    "deleted  {bucket}/{name}: {why}; not restored (--include-deleted restores it)"
                );
            }
            Err(e) => {
                self.failed += 1;
                eprintln!("FAILED   {bucket}/{name}: {e}");
            }
        }
    }
}

/// Runs `restore` to its end: one line per object on stdout (failures on stderr), then a
/// summary; the exit status says how it went ([`EXIT_STATUS_HELP`]).
pub(crate) async fn run(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let RestoreArgs {
        config,
        bucket,
        name,
        all,
        overwrite,
        include_deleted,
        from,
        to,
        concurrency,
    } = args;
    let config = cli::load_config(&config.config)?;
    push::install(&config.metrics, metrics::Role::Restore);
    metrics::role_started(metrics::Role::Restore, &config);
    let s3_name = s3_tier_name(&config, from)?;
    let target = restore_target(&config, &s3_name, to)?;
    let Some(Tier::S3(s3_config)) = config.tier(&s3_name).cloned() else {
        bail!("{s3_name:?} is not an s3 tier");
    };
    let concurrency = concurrency.map_or(config.restore.concurrency, |c| c as usize);
    let system = Arc::new(
        System::connect(config, "cim-gateway restore")
            .await
            .context("connecting to nats")?,
    );
    let store = connect_s3(&s3_name, &s3_config).await?;
    let restorer = Restorer::new(system.clone(), store, &target)
        .await?
        .overwrite(overwrite)
        .include_deleted(include_deleted)
        .concurrency(concurrency);
    // Chunks of restores that were killed: found and purged before anything else.
    let recovered = restorer
        .recover()
        .await
        .context("cleaning up after interrupted restores")?;
    for w in &recovered.purged {
        println!(
            "purged   {}/{}: chunks of an interrupted restore (tier {}, nuid {}, started {})",
            w.bucket, w.name, w.tier, w.nuid, w.started
        );
    }
    let mut summary = Summary::default();
    let mut report = |name: &str, outcome: Result<Restored, cim_gateway::Error>| {
        summary.report(&bucket, name, outcome, all)
    };
    if all {
        let reported = restorer.restore_bucket(&bucket, &mut report).await?;
        if reported == 0 {
            restorer.close().await;
            bail!("s3 tier {s3_name:?} holds no objects of bucket {bucket:?}");
        }
    } else {
        let name = name.context("--name or --all is required")?;
        let outcome = restorer.restore(&bucket, &name).await;
        report(&name, outcome);
    }
    restorer.close().await;
    status::record_restore_run(&system).await;
    let Summary {
        total,
        failed,
        skipped,
    } = summary;
    println!(
        "{} restored or present, {failed} failed, {skipped} skipped",
        total - failed - skipped
    );
    Ok(exit_status(failed, skipped))
}
