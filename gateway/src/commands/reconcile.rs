//! The `reconcile` command: catalog repair (see [`cim_gateway::reconcile`]) — a table of
//! findings for people, one JSON document with `--json` for scripts.

use std::process::ExitCode;

use anyhow::Context as _;
use cim_gateway::reconcile::{self, Finding, Options, Report};
use cim_policies::Tier;
use cim_tiering::{cli, System};
use clap::Args;

use crate::{connect_s3, ConfigArg};

/// Exit status of `reconcile`.
pub(crate) const EXIT_STATUS_HELP: &str = "Exit status: 0 the catalog agrees with the tiers, or \
every difference was fixed (with --dry-run: would be); 1 at least one finding is left for \
people (ACTION none: a disagreement, an unreadable or newer manifest or meta, a copy that failed \
its check, a version no tier holds, a damaged version) or the run failed; 2 bad arguments.";

/// Arguments of `cim-gateway reconcile`.
#[derive(Args)]
pub(crate) struct ReconcileArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Only this bucket (repeatable; default: every bucket a tier or the catalog knows).
    #[arg(long)]
    bucket: Vec<String>,
    /// Decide and report, write nothing.
    #[arg(long)]
    dry_run: bool,
    /// Read every S3 blob about to be recorded back whole (size and SHA-256) instead of
    /// checking its length only. JetStream copies are always read back.
    #[arg(long)]
    verify: bool,
    /// Print one JSON document (counts and findings) instead of the table.
    #[arg(long)]
    json: bool,
}

/// Runs `reconcile`.
pub(crate) async fn run(args: ReconcileArgs) -> anyhow::Result<ExitCode> {
    let config = cli::load_config(&args.config.config)?;
    let mut stores = Vec::new();
    for (name, tier) in &config.tiers {
        if let Tier::S3(s3) = tier {
            stores.push(connect_s3(name, s3).await?);
        }
    }
    let system = System::connect(config, "cim-gateway reconcile")
        .await
        .context("connecting to nats")?;
    let options = Options {
        dry_run: args.dry_run,
        verify: args.verify,
        buckets: args.bucket,
    };
    let report = reconcile::reconcile(&system, &stores, &options).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.findings.iter().any(Finding::is_unfixed) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The table and the summary line.
fn render(report: &Report) -> String {
    let rows = report.findings.iter().map(|f| {
        vec![
            f.bucket.clone(),
            f.name.clone(),
            f.tier.clone(),
            spelling(&f.what),
            spelling(&f.action),
            f.detail.clone(),
        ]
    });
    let mut text = if report.findings.is_empty() {
        String::new()
    } else {
        cli::table(
            &["BUCKET", "NAME", "TIER", "FOUND", "ACTION", "DETAIL"],
            rows,
        )
    };
    let unfixed = report.findings.iter().filter(|f| f.is_unfixed()).count();
    text.push_str(&format!(
        "{} object{} in {} bucket{}: {} finding{}, {} left for people{}\n",
        report.objects,
        if report.objects == 1 { "" } else { "s" },
        report.buckets,
        if report.buckets == 1 { "" } else { "s" },
        report.findings.len(),
        if report.findings.len() == 1 { "" } else { "s" },
        unfixed,
        if report.dry_run {
            " (dry run: nothing written)"
        } else {
            ""
        },
    ));
    text
}

/// The JSON spelling of a finding's enums (`not-held`, `would-add`), for the table.
fn spelling<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
