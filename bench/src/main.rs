//! `cim-bench` command line (see `docs/benchmarking.md`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use cim_bench::data::DataKind;
use cim_bench::env::{Env, S3Options};
use cim_bench::report;
use cim_bench::runner::{self, Plan, Scenario, GIB, KIB, MIB};
use clap::Parser;

/// Every stage's throughput beside the S3 server's own ceiling, NATS's and rclone's, in one run.
///
/// Without `--full` or `--tiny` it runs the default subset (16 and 256 MiB random at
/// concurrency 4, 1 GiB per cell, 3 repeats; small 5,000 objects and policy-eval 1,000,000
/// objects once): about 20 minutes on 2 cores against the local servers. The role binaries
/// are the ones next to this executable (a release build runs release roles).
#[derive(Debug, Parser)]
#[command(name = "cim-bench")]
struct Args {
    /// The whole matrix: 4 KiB–256 MiB, random and corpus, concurrency 1/4/16, 1 GiB per cell.
    #[arg(long, conflicts_with = "tiny")]
    full: bool,
    /// A few small objects, one repeat, every scenario (for CI).
    #[arg(long)]
    tiny: bool,
    /// Scenarios to run (default: all).
    #[arg(long = "scenario", value_enum, num_args = 1..)]
    scenarios: Vec<Scenario>,
    /// Object sizes: 4k, 1m, 16m, 256m, 2g (2 GiB only when asked).
    #[arg(long = "size", value_parser = parse_size, num_args = 1..)]
    sizes: Vec<u64>,
    /// Data kinds.
    #[arg(long = "kind", value_enum, num_args = 1..)]
    kinds: Vec<DataKind>,
    /// Concurrency levels (tools and our roles' `[work] concurrency`).
    #[arg(long, num_args = 1..)]
    concurrency: Vec<usize>,
    /// Runs per cell (small and policy-eval included; default 3, small and policy-eval once).
    #[arg(long)]
    repeat: Option<usize>,
    /// Each cell moves at least this much (e.g. 1g, 256m) ...
    #[arg(long, value_parser = parse_size)]
    min_bytes: Option<u64>,
    /// ... or at least this many seconds of work at 50 MiB/s, whichever is less.
    #[arg(long)]
    min_secs: Option<u64>,
    /// Objects in the `small` set.
    #[arg(long)]
    small_objects: Option<usize>,
    /// Objects for `policy-eval`.
    #[arg(long)]
    policy_objects: Option<u64>,
    /// One object of this size up and back once, for the roles' peak memory (`0`: skip).
    /// Default 2 GiB (none with `--tiny`).
    #[arg(long, value_parser = parse_size)]
    memory_size: Option<u64>,
    /// Writes the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Writes BENCHMARKS.md-style markdown, and the plot beside it.
    #[arg(long)]
    markdown: Option<PathBuf>,
    #[command(flatten)]
    s3: S3Options,
}

/// `4k`, `1m`, `16M`, `2g`, or bytes.
fn parse_size(text: &str) -> Result<u64, String> {
    let lower = text.trim().to_lowercase();
    let lower = lower.trim_end_matches("ib").trim_end_matches('b');
    let (digits, unit) = match lower.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => lower.split_at(i),
        None => (lower, ""),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (4k, 16m, 2g)"))?;
    let unit = match unit.trim() {
        "" => 1,
        "k" => KIB,
        "m" => MIB,
        "g" => GIB,
        other => return Err(format!("unknown unit {other:?} in {text:?}")),
    };
    Ok(n * unit)
}

impl Args {
    fn plan(&self) -> Plan {
        let mut plan = if self.full {
            Plan::full()
        } else if self.tiny {
            Plan::tiny()
        } else {
            Plan::default_subset()
        };
        if !self.scenarios.is_empty() {
            plan.scenarios = self.scenarios.clone();
        }
        if !self.sizes.is_empty() {
            plan.sizes = self.sizes.clone();
        }
        if !self.kinds.is_empty() {
            plan.kinds = self.kinds.clone();
        }
        if !self.concurrency.is_empty() {
            plan.concurrency = self.concurrency.clone();
        }
        if let Some(repeat) = self.repeat {
            let repeat = repeat.max(1);
            (plan.repeat, plan.small_repeat, plan.policy_repeat) = (repeat, repeat, repeat);
        }
        plan.min_bytes = self.min_bytes.unwrap_or(plan.min_bytes);
        plan.min_secs = self.min_secs.unwrap_or(plan.min_secs);
        plan.small_objects = self.small_objects.unwrap_or(plan.small_objects);
        plan.policy_objects = self.policy_objects.unwrap_or(plan.policy_objects);
        if let Some(size) = self.memory_size {
            plan.memory_size = (size > 0).then_some(size);
        }
        plan
    }
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    let plan = args.plan();
    eprintln!("cim-bench: plan {}", serde_json::to_string(&plan)?);
    let env = Env::start(&args.s3).await.context("starting the servers")?;
    let results = runner::run_plan(&env, &plan).await?;
    let summaries = report::summarize(&results);
    print!("{}", report::table(&summaries));
    println!("S3: {}; pipeline: {}", results.s3, results.conditions);
    print!(
        "{}",
        cim_bench::targets::markdown(&cim_bench::targets::check(&summaries))
    );
    let machine = report::machine(&command);
    if let Some(path) = &args.json {
        report::write_json(path, &results, &summaries, &machine)?;
    }
    if let Some(path) = &args.markdown {
        report::write_markdown(path, &results, &summaries, &machine)?;
    }
    Ok(!results.failed())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cim-bench: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("cim-bench: some cells failed (see the table)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("cim-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("4k"), Ok(4 * KIB));
        assert_eq!(parse_size("16MiB"), Ok(16 * MIB));
        assert_eq!(parse_size("2g"), Ok(2 * GIB));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("3x").is_err());
    }
}
