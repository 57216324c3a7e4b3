//! The matrix: scenarios × object sizes × data kinds × concurrency, each cell repeated.
//!
//! Every cell of one size and kind moves the same data set (files on tmpfs), so our stages and
//! the baselines (`raw-s3`, `raw-nats`, `peer`) are compared on the same bytes in the same run.
//! A run that fails is recorded with its error and no number; the other cells go on.

use std::time::Instant;

use serde::Serialize;

use crate::data::{DataKind, DataSet};
use crate::env::Env;
use crate::measure::Run;
use crate::scenarios::pipeline::{self, Stage};

/// KiB, MiB, GiB.
pub const KIB: u64 = 1024;
/// A mebibyte.
pub const MIB: u64 = 1024 * KIB;
/// A gibibyte.
pub const GIB: u64 = 1024 * MIB;

/// The slowest stage's rate in issue 8 (restore, ~50 MB/s): `--min-secs` of work is sized by
/// it and by [`ASSUMED_OBJECTS_PER_SEC`].
pub const ASSUMED_RATE: u64 = 50 * MIB;

/// The per-object rate of issue 8's small objects (26–29 objects/s of 4 KiB): an object costs
/// at least `1 / ASSUMED_OBJECTS_PER_SEC` seconds whatever its size.
pub const ASSUMED_OBJECTS_PER_SEC: u64 = 26;

/// A scenario on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Leaf → hub (mirror + manager).
    Replicate,
    /// Hub → S3 (manager + upload role).
    Upload,
    /// S3 → hub (`cim-gateway restore --all`).
    Restore,
    /// Many 4 KiB objects through upload and restore.
    Small,
    /// Plain S3 PUT and GET: the S3 side's ceiling.
    RawS3,
    /// Object-store put and get on the hub (the NATS side's ceiling), then the same objects
    /// copied hub → S3 and back with nothing in between (the ceiling of a copy when both
    /// servers share the machine).
    RawNats,
    /// rclone upload and download.
    Peer,
    /// The manager's planning over one million objects.
    PolicyEval,
}

impl Scenario {
    /// Every scenario, in report order.
    pub const ALL: [Scenario; 8] = [
        Scenario::Upload,
        Scenario::Restore,
        Scenario::Replicate,
        Scenario::RawS3,
        Scenario::RawNats,
        Scenario::Peer,
        Scenario::Small,
        Scenario::PolicyEval,
    ];

    /// The rows a scenario produces (pairs for put/get scenarios).
    pub fn rows(self) -> &'static [&'static str] {
        match self {
            // Item 7 of issue 8: sourcing with our roles running against sourcing alone, and the
            // time from the hub holding an object to its eviction from the leaf.
            Scenario::Replicate => &[
                "replicate",
                "replicate sourcing",
                "replicate settle",
                "sourcing alone",
            ],
            Scenario::Upload => &["upload"],
            Scenario::Restore => &["restore"],
            Scenario::Small => &["upload", "restore"],
            Scenario::RawS3 => &["raw-s3 put", "raw-s3 get"],
            // The copies need the hub objects the put stored (and S3 beside them).
            Scenario::RawNats => &[
                "raw-nats put",
                "raw-nats get",
                "raw copy up",
                "raw copy down",
            ],
            Scenario::Peer => &["peer upload", "peer download"],
            // The first pass, a pass with nothing new (target 6 reads "manager pass"), and a
            // pass after a few new objects; each run's one latency is the pass's time.
            Scenario::PolicyEval => &["manager scan", "manager pass", "manager pass new"],
        }
    }
}

/// What to run.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// Scenarios, in order.
    pub scenarios: Vec<Scenario>,
    /// Object sizes in bytes (the matrix; `small` has its own set).
    pub sizes: Vec<u64>,
    /// Data kinds.
    pub kinds: Vec<DataKind>,
    /// Concurrency levels.
    pub concurrency: Vec<usize>,
    /// Runs per cell.
    pub repeat: usize,
    /// Each cell moves at least this many bytes ...
    pub min_bytes: u64,
    /// ... or at least this many seconds of work at [`ASSUMED_RATE`] and
    /// [`ASSUMED_OBJECTS_PER_SEC`], whichever is less.
    pub min_secs: u64,
    /// Objects of the `small` set (4 KiB each).
    pub small_objects: usize,
    /// Objects for `policy-eval`.
    pub policy_objects: u64,
    /// Runs of each cell of the `small` set (its baselines included).
    pub small_repeat: usize,
    /// Runs of `policy-eval` (each writes its million meta messages again).
    pub policy_repeat: usize,
    /// One object of this size through `upload` and `restore`, once (set `memory`): the roles'
    /// peak memory on a big object, issue 8's bound at 2 GiB. `None`: not run.
    pub memory_size: Option<u64>,
}

impl Plan {
    /// The default run: 16 MiB and 256 MiB random at concurrency 4, 1 GiB per cell, 3 repeats;
    /// `small` 5,000 objects once; `policy-eval` 1,000,000 objects once (issue 8's target 6 is
    /// at a million: writing the metas, the manager's first scan of about 90 s and three short
    /// passes take about 2.5 minutes). `small` moves 5,000 objects, as `--full` does (at ~100
    /// objects/s up and ~500 down, about a minute in all; it was cut to 1,000 while the rates were
    /// ~35 and ~19).
    ///
    /// Budget, from the first default run (256 MiB per cell, 463 s in all): per size and 1 GiB,
    /// upload 3 × 15 s, restore 3 × 19 s, replicate 3 × 18 s, the baselines ≈ 100 s, set-up puts
    /// ≈ 50 s: ≈ 5 minutes per size; small ≈ 100 s; policy-eval ≈ 2.5 min (a million metas);
    /// servers ≈ 30 s. About 15 minutes.
    pub fn default_subset() -> Plan {
        Plan {
            scenarios: Scenario::ALL.to_vec(),
            sizes: vec![16 * MIB, 256 * MIB],
            kinds: vec![DataKind::Random],
            concurrency: vec![4],
            repeat: 3,
            min_bytes: GIB,
            min_secs: 30,
            small_objects: 5_000,
            policy_objects: 1_000_000,
            small_repeat: 1,
            policy_repeat: 1,
            memory_size: Some(2 * GIB),
        }
    }

    /// The whole matrix of issue 7 (2 GiB objects only with `--size 2g`).
    pub fn full() -> Plan {
        Plan {
            scenarios: Scenario::ALL.to_vec(),
            sizes: vec![4 * KIB, MIB, 16 * MIB, 256 * MIB],
            kinds: vec![DataKind::Random, DataKind::Corpus],
            concurrency: vec![1, 4, 16],
            repeat: 3,
            min_bytes: GIB,
            min_secs: 30,
            small_objects: 5_000,
            policy_objects: 1_000_000,
            small_repeat: 3,
            policy_repeat: 3,
            memory_size: Some(2 * GIB),
        }
    }

    /// For CI: a few small objects, one repeat, every scenario.
    pub fn tiny() -> Plan {
        Plan {
            scenarios: Scenario::ALL.to_vec(),
            sizes: vec![64 * KIB, MIB],
            kinds: vec![DataKind::Random],
            concurrency: vec![2],
            repeat: 1,
            min_bytes: 3 * MIB,
            min_secs: 1,
            small_objects: 20,
            policy_objects: 1_000,
            small_repeat: 1,
            policy_repeat: 1,
            memory_size: None,
        }
    }

    /// Objects of `size` a cell moves: enough for `min_bytes`, or for `min_secs` of work if
    /// that is less (each object taking `size / ASSUMED_RATE + 1 / ASSUMED_OBJECTS_PER_SEC`);
    /// at least one.
    pub fn objects_for(&self, size: u64) -> usize {
        let by_bytes = self.min_bytes.div_ceil(size.max(1));
        let secs_per_object =
            size as f64 / ASSUMED_RATE as f64 + 1.0 / ASSUMED_OBJECTS_PER_SEC as f64;
        let by_secs = (self.min_secs as f64 / secs_per_object).ceil() as u64;
        by_bytes.min(by_secs).max(1) as usize
    }

    fn has(&self, s: Scenario) -> bool {
        self.scenarios.contains(&s)
    }
}

/// One cell's key and its runs.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    /// `matrix` or `small` (the small set's own baselines), so ratios compare the same data.
    pub set: String,
    /// The row: `upload`, `raw-s3 put`, ...
    pub scenario: String,
    /// Object size in bytes.
    pub size: u64,
    /// Data kind.
    pub kind: DataKind,
    /// Concurrency.
    pub concurrency: usize,
    /// The runs that succeeded.
    pub runs: Vec<Run>,
    /// The first failure, if any run failed (the cell then reports no number).
    pub error: Option<String>,
}

/// Everything one invocation measured.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// The plan run.
    pub plan: Plan,
    /// The cells, in the order run.
    pub cells: Vec<Cell>,
    /// Wall-clock time of the whole run, in seconds.
    pub total_secs: f64,
    /// How the pipeline ran ([`pipeline::CONDITIONS`]).
    pub conditions: String,
    /// The S3 side (`garage (local)` or the endpoint).
    pub s3: String,
}

impl Results {
    /// Whether any cell failed.
    pub fn failed(&self) -> bool {
        self.cells.iter().any(|c| c.error.is_some())
    }

    fn cell(
        &mut self,
        set: &str,
        scenario: &str,
        size: u64,
        kind: DataKind,
        conc: usize,
    ) -> &mut Cell {
        let at = self.cells.iter().position(|c| {
            c.set == set
                && c.scenario == scenario
                && c.size == size
                && c.kind == kind
                && c.concurrency == conc
        });
        let at = at.unwrap_or_else(|| {
            self.cells.push(Cell {
                set: set.to_string(),
                scenario: scenario.to_string(),
                size,
                kind,
                concurrency: conc,
                runs: Vec::new(),
                error: None,
            });
            self.cells.len() - 1
        });
        &mut self.cells[at]
    }

    /// Records the outcome of one run of row `scenario`, with a progress line on stderr.
    fn record(
        &mut self,
        set: &str,
        scenario: &str,
        data: &DataSet,
        conc: usize,
        outcome: Result<Run, String>,
    ) {
        let cell = self.cell(set, scenario, data.size, data.kind, conc);
        match outcome {
            Ok(run) => {
                eprintln!(
                    "cim-bench: {set} {scenario:<14} {:>9} {:?} c={conc}: {} objects, {:.1} MiB/s, {:.1} objects/s, {:.2} s",
                    crate::report::size_label(data.size),
                    data.kind,
                    run.objects,
                    run.mib_per_sec(),
                    run.objects_per_sec(),
                    run.elapsed.as_secs_f64()
                );
                cell.runs.push(run);
            }
            Err(e) => {
                eprintln!(
                    "cim-bench: {set} {scenario} {} {:?} c={conc}: FAILED: {e}",
                    crate::report::size_label(data.size),
                    data.kind
                );
                cell.error.get_or_insert(e);
            }
        }
    }
}

/// Runs the plan against `env`.
pub async fn run_plan(env: &Env, plan: &Plan) -> anyhow::Result<Results> {
    let started = Instant::now();
    let mut results = Results {
        plan: plan.clone(),
        cells: Vec::new(),
        total_secs: 0.0,
        conditions: pipeline::CONDITIONS.to_string(),
        s3: env.s3.label.clone(),
    };
    let matrix: Vec<Scenario> = plan
        .scenarios
        .iter()
        .copied()
        .filter(|s| !matches!(s, Scenario::Small | Scenario::PolicyEval))
        .collect();
    for &kind in &plan.kinds {
        for &size in &plan.sizes {
            if matrix.is_empty() {
                continue;
            }
            let set = data_set(env, kind, size, plan.objects_for(size), "m")?;
            for &conc in &plan.concurrency {
                for &scenario in &matrix {
                    run_cell(env, plan, &mut results, "matrix", scenario, &set, conc).await;
                }
            }
            drop_set(set);
        }
        if plan.has(Scenario::Small) {
            let set = data_set(env, kind, 4 * KIB, plan.small_objects, "s")?;
            for &conc in &plan.concurrency {
                for scenario in [
                    Scenario::RawS3,
                    Scenario::RawNats,
                    Scenario::Peer,
                    Scenario::Small,
                ] {
                    if plan.has(scenario) {
                        run_cell(env, plan, &mut results, "small", scenario, &set, conc).await;
                    }
                }
            }
            drop_set(set);
        }
    }
    if let Some(size) = plan.memory_size {
        let stages: Vec<Scenario> = [Scenario::Upload, Scenario::Restore]
            .into_iter()
            .filter(|s| plan.has(*s))
            .collect();
        if !stages.is_empty() {
            let set = data_set(env, DataKind::Random, size, 1, "mem")?;
            for scenario in stages {
                run_cell(env, plan, &mut results, "memory", scenario, &set, 1).await;
            }
            drop_set(set);
        }
    }
    if plan.has(Scenario::PolicyEval) {
        let none = DataSet {
            kind: DataKind::Random,
            size: 0,
            files: Vec::new(),
        };
        for r in 0..plan.policy_repeat.max(1) {
            let id = format!("policy-eval-r{r}");
            let outcome = external(
                env,
                Scenario::PolicyEval,
                &none,
                &id,
                1,
                plan.policy_objects,
            )
            .await;
            record_rows(
                &mut results,
                "manager",
                Scenario::PolicyEval,
                &none,
                1,
                outcome,
            );
        }
    }
    results.total_secs = started.elapsed().as_secs_f64();
    Ok(results)
}

/// Writes a data set under the scratch dir (not timed).
fn data_set(
    env: &Env,
    kind: DataKind,
    size: u64,
    count: usize,
    tag: &str,
) -> anyhow::Result<DataSet> {
    let dir = env.scratch.path().join(format!("{tag}-{kind:?}-{size}"));
    eprintln!(
        "cim-bench: writing {count} × {} {kind:?} to {}",
        crate::report::size_label(size),
        dir.display()
    );
    Ok(DataSet::create(&dir, kind, size, count, size ^ 0x5eed)?)
}

fn drop_set(set: DataSet) {
    if let Some(dir) = set.files.first().and_then(|f| f.parent()) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A cell id unique in this invocation: NATS bucket, S3 prefix and work stream derive from it.
fn cell_id(set: &str, scenario: Scenario, data: &DataSet, conc: usize, repeat: usize) -> String {
    let name = format!("{scenario:?}").to_lowercase();
    format!(
        "{set}-{name}-{}-{:?}-c{conc}-r{repeat}",
        data.size, data.kind
    )
    .to_lowercase()
}

/// Runs one scenario's cell `plan.repeat` times (`small_repeat` for the small set) and records
/// every run.
async fn run_cell(
    env: &Env,
    plan: &Plan,
    results: &mut Results,
    set: &str,
    scenario: Scenario,
    data: &DataSet,
    conc: usize,
) {
    let repeat = match set {
        "small" => plan.small_repeat,
        "memory" => 1,
        _ => plan.repeat,
    }
    .max(1);
    match scenario {
        Scenario::Upload | Scenario::Restore | Scenario::Replicate => {
            let stage = match scenario {
                Scenario::Upload => Stage::Upload,
                Scenario::Restore => Stage::Restore,
                _ => Stage::Replicate,
            };
            let outcomes = stage_runs(env, repeat, stage, set, data, conc).await;
            for (row, outcome) in outcomes {
                results.record(set, row, data, conc, outcome.map_err(|e| format!("{e:#}")));
            }
        }
        _ => {
            for r in 0..repeat {
                let id = cell_id(set, scenario, data, conc, r);
                let outcome = match scenario {
                    Scenario::Small => pipeline::small(env, data, &id, conc)
                        .await
                        .map(|(up, down)| vec![up, down]),
                    _ => external(env, scenario, data, &id, conc, plan.policy_objects).await,
                };
                record_rows(results, set, scenario, data, conc, outcome);
            }
        }
    }
}

/// Records one run's rows: one run per row of the scenario, or the error on every row.
fn record_rows(
    results: &mut Results,
    set: &str,
    scenario: Scenario,
    data: &DataSet,
    conc: usize,
    outcome: anyhow::Result<Vec<Run>>,
) {
    let rows = scenario.rows();
    match outcome {
        Ok(runs) if runs.len() == rows.len() => {
            for (row, run) in rows.iter().zip(runs) {
                results.record(set, row, data, conc, Ok(run));
            }
        }
        Ok(runs) => {
            let e = format!("{} runs returned for {} rows", runs.len(), rows.len());
            for row in rows {
                results.record(set, row, data, conc, Err(e.clone()));
            }
        }
        Err(e) => {
            let e = format!("{e:#}");
            for row in rows {
                results.record(set, row, data, conc, Err(e.clone()));
            }
        }
    }
}

/// `repeat` runs of one pipeline stage. Upload and replicate need a fresh set-up per run (the
/// stage consumes it); restore reuses one set-up (the hub bucket is emptied before each run).
async fn stage_runs(
    env: &Env,
    repeat: usize,
    stage: Stage,
    set: &str,
    data: &DataSet,
    conc: usize,
) -> Vec<(&'static str, anyhow::Result<Run>)> {
    let scenario = match stage {
        Stage::Upload => Scenario::Upload,
        Stage::Restore => Scenario::Restore,
        Stage::Replicate => Scenario::Replicate,
    };
    let mut outcomes = Vec::new();
    let mut reusable: Option<pipeline::Prepared> = None;
    for r in 0..repeat {
        let prepared = match reusable.take() {
            Some(p) => Ok(p),
            None => {
                pipeline::prepare(
                    env,
                    stage,
                    data,
                    &cell_id(set, scenario, data, conc, r),
                    conc,
                )
                .await
            }
        };
        let mut prepared = match prepared {
            Ok(p) => p,
            Err(e) => {
                outcomes.push((
                    stage.name(),
                    Err(e.context(format!("{} set-up", stage.name()))),
                ));
                continue;
            }
        };
        outcomes.push((stage.name(), prepared.run(env, data).await));
        outcomes.extend(
            prepared
                .take_extra_rows()
                .into_iter()
                .map(|(row, run)| (row, Ok(run))),
        );
        if stage == Stage::Replicate {
            let id = format!("{}-alone", cell_id(set, scenario, data, conc, r));
            outcomes.push((
                "sourcing alone",
                pipeline::sourcing_alone(env, data, &id, conc).await,
            ));
        }
        if stage == Stage::Restore {
            reusable = Some(prepared);
        } else if let Err(e) = prepared.cleanup(env).await {
            eprintln!("cim-bench: cleanup: {e:#}");
        }
    }
    if let Some(p) = reusable {
        if let Err(e) = p.cleanup(env).await {
            eprintln!("cim-bench: cleanup: {e:#}");
        }
    }
    outcomes
}

// ---------------------------------------------------------------------------------------------
// Scenarios written by engineers D (raw_s3, peer) and E (raw_nats, policy_eval).
// ---------------------------------------------------------------------------------------------

/// The scenarios of other modules, all dispatched here: the baselines' (put/upload,
/// get/download) pairs, each on its own S3 prefix, NATS bucket and scratch directory (removed
/// afterwards), and policy-eval's one run over `policy_objects` meta messages.
async fn external(
    env: &Env,
    scenario: Scenario,
    set: &DataSet,
    id: &str,
    conc: usize,
    policy_objects: u64,
) -> anyhow::Result<Vec<Run>> {
    let prefix = format!("bench/{id}/");
    let bucket = format!("b-{id}");
    let scratch = env.scratch.path().join(id);
    std::fs::create_dir_all(&scratch)?;
    use crate::scenarios::{peer, policy_eval, raw_nats, raw_s3};
    let outcome: anyhow::Result<Vec<Run>> = match scenario {
        Scenario::RawS3 => raw_s3::run(&env.s3, set, &prefix, conc)
            .await
            .map(|(put, get)| vec![put, get]),
        Scenario::Peer => peer::run(&env.s3, set, &prefix, conc, &scratch)
            .await
            .map(|(up, down)| vec![up, down]),
        Scenario::RawNats => raw_nats::run(env, set, &bucket, &prefix, conc)
            .await
            .map(|r| vec![r.put, r.get, r.copy_up, r.copy_down]),
        Scenario::PolicyEval => policy_eval::run(env, policy_objects)
            .await
            .map(|p| vec![p.first_scan, p.steady, p.with_new]),
        other => Err(anyhow::anyhow!(
            "scenario {other:?} is not run by another module"
        )),
    };
    let _ = std::fs::remove_dir_all(&scratch);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_move_at_least_min_bytes_or_min_secs() {
        let plan = Plan::default_subset();
        assert_eq!(plan.objects_for(16 * MIB), 64);
        assert_eq!(plan.objects_for(256 * MIB), 4);
        let full = Plan::full();
        assert_eq!(full.objects_for(16 * MIB), 64);
        // 4 KiB: 30 s at 26 objects/s, not 1 GiB of 4 KiB objects.
        assert_eq!(full.objects_for(4 * KIB), 779);
        assert_eq!(full.objects_for(2 * GIB), 1);
        let tiny = Plan::tiny();
        assert_eq!(tiny.objects_for(MIB), 3);
        assert!(Scenario::ALL.iter().all(|s| tiny.scenarios.contains(s)));
    }
}
