//! The `restore` command: which objects (`--name`, `--all`, `--prefix`, `--match`), the dry run,
//! the report (one line per object, or JSON lines with `--json`), progress on stderr (a bar on a
//! terminal, a plain line every 10 s otherwise — never both), and the exit status.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cim_gateway::restore::{globs, Restored, Restorer, Selection};
use cim_policies::Tier;
use cim_tiering::jetstream::write::WriteRecord;
use cim_tiering::progress::Progress;
use cim_tiering::{cli, metrics, push, status, System};
use clap::{ArgGroup, Args};
use indicatif::{HumanBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;

use crate::{connect_s3, restore_target, s3_tier_name, ConfigArg, EXIT_SKIPPED};

/// Arguments of `cim-gateway restore`.
#[derive(Args)]
#[command(group(
    ArgGroup::new("selection")
        .args(["name", "all", "prefix", "matches"])
        .required(true)
        .multiple(true)
))]
pub(crate) struct RestoreArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The object-store bucket.
    #[arg(long)]
    bucket: String,
    /// One object, by its exact name (no pattern).
    #[arg(long, conflicts_with_all = ["all", "prefix", "matches"])]
    name: Option<String>,
    /// Every object of the bucket.
    #[arg(long, conflicts_with_all = ["prefix", "matches"])]
    all: bool,
    /// The objects whose name starts with P (a plain prefix, as S3's; with --match, the objects
    /// under P that match).
    #[arg(long, value_name = "P", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    prefix: Option<String>,
    /// The objects whose name matches GLOB (repeatable: any of them), as rclone's filters: `*`
    /// and `?` stay within one `/`-separated element, `**` crosses them; a pattern starting
    /// with `/` is anchored at the start of the name, any other matches whole trailing elements
    /// (`*.csv` takes `a.csv` and `reports/2026/a.csv`). Quote it from the shell.
    #[arg(long = "match", value_name = "GLOB", value_parser = parse_glob)]
    matches: Vec<String>,
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
    /// JetStream tier to write into (default: the tier that uploads to the S3 tier). A leaf
    /// tier only with --for.
    #[arg(long)]
    to: Option<String>,
    /// Restore as a temporary copy for DURATION (`7d`, `12h`, `30m`; at least 1s): no policy
    /// re-archives or re-evicts it meanwhile, and the storage manager removes it from the
    /// target when the time is up (the S3 copy stays). Counted from when the target stores it.
    #[arg(long = "for", value_name = "DURATION", value_parser = parse_for)]
    temporary: Option<Duration>,
    /// Objects restored at once (default: `[restore] concurrency`, 128); memory stays within a
    /// fixed budget whatever it is.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    concurrency: Option<u32>,
    /// Decide for every selected object what a restore would do — restore, present, skipped,
    /// deleted, refused — and why, from the manifests, the catalog and the target; write
    /// nothing (no journal, no lease, no catalog update, no chunk). Blobs are not read.
    #[arg(long)]
    dry_run: bool,
    /// Report as JSON lines on stdout: one object per selected object, then one summary
    /// object (see the docs for the fields). Progress and logs stay on stderr.
    #[arg(long)]
    json: bool,
}

/// Parses `--for` with the configuration's duration grammar.
fn parse_for(text: &str) -> Result<Duration, String> {
    cim_tiering::temporary::parse(text).ok_or_else(|| {
        format!("{text:?} is not a duration of at least 1s (examples: 7d, 12h, 30m, 90s)")
    })
}

/// Exit status of bad arguments (as clap's own).
const EXIT_BAD_ARGUMENTS: u8 = 2;

/// Checks a `--match` pattern the way the restore will use it.
fn parse_glob(pattern: &str) -> Result<String, String> {
    globs(pattern).map(|_| pattern.to_string())
}

/// Exit status of `restore`.
pub(crate) const EXIT_STATUS_HELP: &str = "Exit status: 0 every selected object restored or \
already present (deleted objects are named and left out); 1 at least one object failed (or the \
run could not start); 2 bad arguments; 3 none failed, but at least one was skipped (the target \
holds another version, or its manifest has a format this version cannot read) and is named on \
its own line, or the one object asked for by --name is deleted; 4 nothing matched (no object \
of the bucket under --prefix / --match, none at all for --all, or no --name object in S3). \
A --dry-run exits the same way for what a restore would do (1: some would fail).";

/// Exit status of a run that found no object to restore: not a failure of anything, but a
/// script that asked for something must notice it got nothing.
pub(crate) const EXIT_NOTHING_MATCHED: u8 = 4;

/// Seconds between two plain progress lines when stderr is not a terminal.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// How one object came out, as the report names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Restored,
    Present,
    WouldRestore,
    Skipped,
    Deleted,
    Failed,
}

impl Outcome {
    /// The name in the JSON report.
    fn json(self) -> &'static str {
        match self {
            Outcome::Restored => "restored",
            Outcome::Present => "present",
            Outcome::WouldRestore => "would_restore",
            Outcome::Skipped => "skipped",
            Outcome::Deleted => "deleted",
            Outcome::Failed => "failed",
        }
    }
}

/// Counts of a run.
#[derive(Debug, Default)]
struct Counts {
    restored: usize,
    present: usize,
    would_restore: usize,
    skipped: usize,
    deleted: usize,
    failed: usize,
}

/// The report of a run: what it prints per object and at the end, and its counts.
struct Report {
    bucket: String,
    json: bool,
    dry_run: bool,
    /// The run asked for one object by name: a deleted object is then not what was asked for,
    /// and counts in the exit status as skipped.
    by_name: bool,
    counts: Counts,
    /// The terminal's progress bar, if stderr is one; lines are printed around it.
    bar: Option<ProgressBar>,
}

impl Report {
    /// Prints one line (or JSON line) on stdout, around the progress bar.
    fn out(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.suspend(|| println!("{line}")),
            None => println!("{line}"),
        }
    }

    /// Prints one line on stderr, around the progress bar.
    fn err(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Reports the chunks of an interrupted restore that this run's recovery purged.
    fn purged(&self, w: &WriteRecord) {
        if self.json {
            self.out(
                json!({
                    "type": "purged",
                    "tier": w.tier,
                    "bucket": w.bucket,
                    "name": w.name,
                    "nuid": w.nuid,
                    "started": w
                        .started
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                })
                .to_string(),
            );
        } else {
            self.out(format!(
                "purged   {}/{}: chunks of an interrupted restore (tier {}, nuid {}, started {})",
                w.bucket, w.name, w.tier, w.nuid, w.started
            ));
        }
    }

    /// Reports and counts one object's outcome.
    fn object(&mut self, name: &str, outcome: Result<Restored, cim_gateway::Error>) {
        let bucket = &self.bucket;
        let (kind, why, error_kind) = match &outcome {
            Ok(Restored::Written) => (Outcome::Restored, None, None),
            Ok(Restored::AlreadyPresent) => (Outcome::Present, None, None),
            Ok(Restored::WouldRestore) => (Outcome::WouldRestore, None, None),
            Ok(Restored::Skipped(why)) => (Outcome::Skipped, Some(why.to_string()), None),
            Ok(Restored::Deleted(why)) => (Outcome::Deleted, Some(why.clone()), None),
            Err(e) => (Outcome::Failed, Some(e.to_string()), Some(e.reason())),
        };
        let c = &mut self.counts;
        *match kind {
            Outcome::Restored => &mut c.restored,
            Outcome::Present => &mut c.present,
            Outcome::WouldRestore => &mut c.would_restore,
            Outcome::Skipped => &mut c.skipped,
            Outcome::Deleted => &mut c.deleted,
            Outcome::Failed => &mut c.failed,
        } += 1;
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        if self.json {
            let mut line = json!({
                "type": "object",
                "bucket": bucket,
                "name": name,
                "outcome": kind.json(),
            });
            if let Some(why) = why {
                line["reason"] = why.into();
            }
            if let Some(error_kind) = error_kind {
                line["error_kind"] = error_kind.into();
            }
            return self.out(line.to_string());
        }
        let why = why.unwrap_or_default();
        match kind {
            Outcome::Restored => self.out(format!("restored {bucket}/{name}")),
            Outcome::Present => self.out(format!("present  {bucket}/{name}")),
            Outcome::WouldRestore => self.out(format!("would restore {bucket}/{name}")),
            Outcome::Skipped => self.out(format!("skipped  {bucket}/{name}: {why}")),
            Outcome::Deleted => self.out(format!(
                "deleted  {bucket}/{name}: {why}; not restored (--include-deleted restores it)"
            )),
            // A dry run's refusals are its answer, on stdout with the rest of the plan.
            Outcome::Failed if self.dry_run => self.out(format!("refused  {bucket}/{name}: {why}")),
            Outcome::Failed => self.err(format!("FAILED   {bucket}/{name}: {why}")),
        }
    }

    /// The run's exit status (see [`EXIT_STATUS_HELP`]); `matched`: objects selected.
    fn exit_status(&self, matched: usize) -> u8 {
        let c = &self.counts;
        let skipped = c.skipped + if self.by_name { c.deleted } else { 0 };
        if matched == 0 {
            EXIT_NOTHING_MATCHED
        } else if c.failed > 0 {
            1
        } else if skipped > 0 {
            EXIT_SKIPPED
        } else {
            0
        }
    }

    /// Prints the summary: one line, or the JSON summary object.
    fn summary(&self, matched: usize, bytes: u64, elapsed: Duration, exit: u8) {
        let c = &self.counts;
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        if self.json {
            return self.out(
                json!({
                    "type": "summary",
                    "bucket": self.bucket,
                    "dry_run": self.dry_run,
                    "matched": matched,
                    "restored": c.restored,
                    "present": c.present,
                    "would_restore": c.would_restore,
                    "skipped": c.skipped,
                    "deleted": c.deleted,
                    "failed": c.failed,
                    "bytes": bytes,
                    "seconds": elapsed.as_secs_f64(),
                    "exit_status": exit,
                })
                .to_string(),
            );
        }
        let deleted = if c.deleted > 0 {
            format!(", {} deleted (not restored)", c.deleted)
        } else {
            String::new()
        };
        if self.dry_run {
            self.out(format!(
                "dry run, nothing written: {} would be restored, {} present, {} refused, {} \
                 skipped{deleted}",
                c.would_restore, c.present, c.failed, c.skipped
            ));
        } else {
            self.out(format!(
                "{} restored or present, {} failed, {} skipped{deleted}; {} in {:.1} s",
                c.restored + c.present,
                c.failed,
                c.skipped,
                HumanBytes(bytes),
                elapsed.as_secs_f64()
            ));
        }
    }
}

/// One progress line: objects done of the selected, bytes restored and the rate.
fn progress_line(done: u64, total: u64, bytes: u64, elapsed: Duration) -> String {
    let rate = bytes as f64 / elapsed.as_secs_f64().max(0.001);
    format!(
        "{done}/{total} objects, {} at {}/s",
        HumanBytes(bytes),
        HumanBytes(rate as u64)
    )
}

/// Shows progress on stderr while the run goes: on a terminal an indicatif bar (objects, bytes,
/// rate), else a plain line every [`PLAIN_PROGRESS_EVERY`]. Returns the bar (lines are printed
/// around it) and the task that feeds it, to abort at the end.
fn show_progress(
    total: u64,
    done: Arc<AtomicU64>,
    progress: Progress,
) -> (Option<ProgressBar>, tokio::task::JoinHandle<()>) {
    let start = Instant::now();
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let fed = bar.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                fed.set_message(progress_line(
                    fed.position(),
                    total,
                    progress.bytes(),
                    start.elapsed(),
                ));
                fed.tick();
            }
        });
        (Some(bar), task)
    } else {
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(PLAIN_PROGRESS_EVERY);
            tick.tick().await; // the first tick is now: nothing to say yet
            loop {
                tick.tick().await;
                eprintln!(
                    "progress: {}",
                    progress_line(
                        done.load(Ordering::Relaxed),
                        total,
                        progress.bytes(),
                        start.elapsed()
                    )
                );
            }
        });
        (None, task)
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
        prefix,
        matches,
        overwrite,
        include_deleted,
        from,
        to,
        temporary,
        concurrency,
        dry_run,
        json,
    } = args;
    let selection = match &name {
        Some(_) => None,
        None if all => Some(Selection::all()),
        None => Some(Selection::new(prefix, matches)?),
    };
    let config = cli::load_config(&config.config)?;
    if !dry_run {
        // A dry run is not a restore run: it pushes no metrics and adds no counters.
        push::install(&config.metrics, metrics::Role::Restore);
        metrics::role_started(metrics::Role::Restore, &config);
    }
    let s3_name = s3_tier_name(&config, from)?;
    let target = restore_target(&config, &s3_name, to)?;
    let leaf = matches!(
        config.tier(&target),
        Some(Tier::JetStream(t)) if t.role == cim_policies::JetStreamRole::Leaf
    );
    if leaf && temporary.is_none() {
        // A permanent copy in a leaf would be sourced back to the cluster as a new version and
        // archived again: a leaf takes restored data only as a temporary copy.
        eprintln!(
            "error: tier {target:?} is a leaf: restoring into a leaf is only allowed as a \
             temporary copy; add --for DURATION (e.g. --for 7d)"
        );
        return Ok(ExitCode::from(EXIT_BAD_ARGUMENTS));
    }
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
    let progress = Progress::new();
    let restorer = if dry_run {
        Restorer::dry_run(system.clone(), store, &target)?
    } else {
        Restorer::new(system.clone(), store, &target).await?
    };
    let restorer = restorer
        .overwrite(overwrite)
        .include_deleted(include_deleted)
        .concurrency(concurrency)
        .temporary(temporary)
        .progress(progress.clone());
    let mut report = Report {
        bucket: bucket.clone(),
        json,
        dry_run,
        by_name: name.is_some(),
        counts: Counts::default(),
        bar: None,
    };
    // Chunks of restores that were killed: found and purged before anything else (not in a
    // dry run, which touches nothing).
    let recovered = restorer
        .recover()
        .await
        .context("cleaning up after interrupted restores")?;
    for w in &recovered.purged {
        report.purged(w);
    }
    let start = Instant::now();
    let names = match (&name, &selection) {
        (Some(name), _) => vec![name.clone()],
        (None, Some(selection)) => restorer
            .select(&bucket, selection)
            .await
            .with_context(|| format!("listing bucket {bucket:?} on s3 tier {s3_name:?}"))?,
        (None, None) => unreachable!("a selection without --name"),
    };
    let done = Arc::new(AtomicU64::new(0));
    let (bar, feeder) = show_progress(names.len() as u64, done.clone(), progress.clone());
    report.bar = bar;
    let mut matched = names.len();
    if let Some(name) = &name {
        match restorer.restore(&bucket, name).await {
            Err(cim_gateway::Error::NotInS3 { .. }) => matched = 0,
            outcome => report.object(name, outcome),
        }
    } else {
        restorer
            .restore_names(&bucket, names, |name, outcome| {
                done.fetch_add(1, Ordering::Relaxed);
                report.object(name, outcome);
            })
            .await;
    }
    feeder.abort();
    restorer.close().await;
    if !dry_run {
        status::record_restore_run(&system).await;
    }
    let exit = report.exit_status(matched);
    if matched == 0 {
        let what = match (&name, &selection) {
            (Some(name), _) => format!("no object {name:?}"),
            (None, Some(selection)) => format!("no object matching {selection}"),
            (None, None) => unreachable!("a selection without --name"),
        };
        report.err(format!(
            "nothing matched: s3 tier {s3_name:?} holds {what} of bucket {bucket:?}"
        ));
    }
    report.summary(matched, progress.bytes(), start.elapsed(), exit);
    Ok(ExitCode::from(exit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_say_objects_bytes_and_rate() {
        assert_eq!(
            progress_line(3, 10, 3 << 20, Duration::from_secs(2)),
            "3/10 objects, 3.00 MiB at 1.50 MiB/s"
        );
        assert_eq!(
            progress_line(0, 0, 0, Duration::ZERO),
            "0/0 objects, 0 B at 0 B/s"
        );
    }
}
