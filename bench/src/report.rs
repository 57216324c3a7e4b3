//! What a run prints and writes: the table on stdout, JSON, `BENCHMARKS.md`-style markdown
//! with the machine and versions, and an SVG plot drawn here (no plotting crate).
//!
//! Every ratio divides two medians of the same invocation: ours over a baseline of the same
//! data set (size, kind) and concurrency.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::Context as _;
use serde::Serialize;

use crate::data::DataKind;
use crate::measure::Spread;
use crate::runner::{Cell, Results, KIB, MIB};

/// The baselines a row is compared with: upload sits between the hub's read (`raw-nats get`)
/// and S3's write (`raw-s3 put`), restore between S3's read and the hub's write.
pub fn baselines_of(row: &str) -> &'static [&'static str] {
    match row {
        "upload" => &["raw-s3 put", "raw-nats get", "raw copy up", "peer upload"],
        "restore" => &[
            "raw-s3 get",
            "raw-nats put",
            "raw copy down",
            "peer download",
        ],
        _ => &[],
    }
}

/// Median and range of one process's usage over a cell's runs.
#[derive(Debug, Clone, Serialize)]
pub struct ProcSummary {
    /// The process (`upload`, `manager`, ...).
    pub name: String,
    /// CPU seconds.
    pub cpu_seconds: Spread,
    /// Peak resident memory in bytes.
    pub peak_rss_bytes: Spread,
}

/// Ours over one baseline (medians of MiB/s).
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// The baseline row.
    pub baseline: String,
    /// Ours / baseline.
    pub ratio: f64,
}

/// One cell, summarized over its runs.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `matrix`, `small` or `manager`.
    pub set: String,
    /// The row.
    pub scenario: String,
    /// Object size in bytes.
    pub size: u64,
    /// Data kind.
    pub kind: DataKind,
    /// Concurrency.
    pub concurrency: usize,
    /// Successful runs.
    pub runs: usize,
    /// Objects per run (the first run's).
    pub objects: u64,
    /// Logical MiB/s.
    pub mib_per_sec: Option<Spread>,
    /// Objects/s.
    pub objects_per_sec: Option<Spread>,
    /// Per-object latency quantiles in milliseconds (each run's quantile, spread over runs).
    pub p50_ms: Option<Spread>,
    /// 90th percentile.
    pub p90_ms: Option<Spread>,
    /// 99th percentile.
    pub p99_ms: Option<Spread>,
    /// Bytes stored at the destination (S3 blobs), when known.
    pub stored_bytes: Option<Spread>,
    /// Our processes.
    pub procs: Vec<ProcSummary>,
    /// Ratios to the baselines of the same data and concurrency.
    pub ratios: Vec<Ratio>,
    /// Why the cell has no number.
    pub error: Option<String>,
}

/// Summarizes every cell; a failed cell keeps its error and no numbers.
pub fn summarize(results: &Results) -> Vec<Summary> {
    let mut out: Vec<Summary> = results.cells.iter().map(summarize_cell).collect();
    let medians: Vec<Option<f64>> = out
        .iter()
        .map(|s| s.mib_per_sec.map(|m| m.median))
        .collect();
    for (i, summary) in out.iter_mut().enumerate() {
        let Some(ours) = medians[i] else { continue };
        for baseline in baselines_of(&summary.scenario) {
            let found = results.cells.iter().position(|c| {
                c.scenario == *baseline
                    && c.set == summary.set
                    && c.size == summary.size
                    && c.kind == summary.kind
                    && c.concurrency == summary.concurrency
            });
            if let Some(theirs) = found.and_then(|j| medians[j]).filter(|m| *m > 0.0) {
                summary.ratios.push(Ratio {
                    baseline: baseline.to_string(),
                    ratio: ours / theirs,
                });
            }
        }
    }
    out
}

fn summarize_cell(cell: &Cell) -> Summary {
    let runs = if cell.error.is_some() {
        &[][..]
    } else {
        &cell.runs[..]
    };
    let spread = |f: &dyn Fn(&crate::measure::Run) -> Option<f64>| {
        Spread::of(&runs.iter().filter_map(f).collect::<Vec<_>>())
    };
    let latency = |q: f64| spread(&|r| r.latency_quantile(q).map(|d| d.as_secs_f64() * 1000.0));
    let mut names: Vec<String> = Vec::new();
    for p in runs.iter().flat_map(|r| &r.procs) {
        if !names.contains(&p.name) {
            names.push(p.name.clone());
        }
    }
    let procs = names
        .into_iter()
        .filter_map(|name| {
            let of = |f: &dyn Fn(&crate::measure::ProcUsage) -> f64| {
                let values: Vec<f64> = runs
                    .iter()
                    .flat_map(|r| &r.procs)
                    .filter(|p| p.name == name)
                    .map(f)
                    .collect();
                Spread::of(&values)
            };
            Some(ProcSummary {
                cpu_seconds: of(&|p| p.cpu_seconds)?,
                peak_rss_bytes: of(&|p| p.peak_rss_bytes as f64)?,
                name,
            })
        })
        .collect();
    Summary {
        set: cell.set.clone(),
        scenario: cell.scenario.clone(),
        size: cell.size,
        kind: cell.kind,
        concurrency: cell.concurrency,
        runs: runs.len(),
        objects: runs.first().map_or(0, |r| r.objects),
        mib_per_sec: spread(&|r| Some(r.mib_per_sec())),
        objects_per_sec: spread(&|r| Some(r.objects_per_sec())),
        p50_ms: latency(0.5),
        p90_ms: latency(0.9),
        p99_ms: latency(0.99),
        stored_bytes: spread(&|r| (r.stored_bytes > 0).then_some(r.stored_bytes as f64)),
        procs,
        ratios: Vec::new(),
        error: cell.error.clone(),
    }
}

/// `4 KiB`, `16 MiB`, `2 GiB`; `-` for rows with no object size (policy-eval).
pub fn size_label(bytes: u64) -> String {
    match bytes {
        0 => "-".to_string(),
        b if b >= 1024 * MIB && b % (1024 * MIB) == 0 => format!("{} GiB", b / (1024 * MIB)),
        b if b >= MIB && b % MIB == 0 => format!("{} MiB", b / MIB),
        b if b >= KIB && b % KIB == 0 => format!("{} KiB", b / KIB),
        b => format!("{b} B"),
    }
}

fn spread_text(s: Option<Spread>, scale: f64, digits: usize) -> String {
    match s {
        None => "—".to_string(),
        Some(s) if s.min == s.max => format!("{:.*}", digits, s.median / scale),
        Some(s) => format!(
            "{:.*} ({:.*}–{:.*})",
            digits,
            s.median / scale,
            digits,
            s.min / scale,
            digits,
            s.max / scale
        ),
    }
}

/// The table's header and rows (shared by stdout and markdown).
fn rows(summaries: &[Summary]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec![
        "set",
        "scenario",
        "size",
        "kind",
        "conc",
        "runs",
        "objects",
        "MiB/s",
        "objects/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "stored MiB",
        "CPU s / peak RSS MiB",
        "ratios",
    ];
    let rows = summaries
        .iter()
        .map(|s| {
            let procs = s
                .procs
                .iter()
                .map(|p| {
                    format!(
                        "{} {} / {}",
                        p.name,
                        spread_text(Some(p.cpu_seconds), 1.0, 1),
                        spread_text(Some(p.peak_rss_bytes), MIB as f64, 0)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            let ratios = match &s.error {
                Some(e) => format!("FAILED: {}", e.lines().next().unwrap_or_default()),
                None => s
                    .ratios
                    .iter()
                    .map(|r| format!("{:.2}× {}", r.ratio, r.baseline))
                    .collect::<Vec<_>>()
                    .join(", "),
            };
            vec![
                s.set.clone(),
                s.scenario.clone(),
                size_label(s.size),
                format!("{:?}", s.kind).to_lowercase(),
                s.concurrency.to_string(),
                s.runs.to_string(),
                s.objects.to_string(),
                spread_text(s.mib_per_sec, 1.0, 1),
                spread_text(s.objects_per_sec, 1.0, 1),
                spread_text(s.p50_ms, 1.0, 0),
                spread_text(s.p90_ms, 1.0, 0),
                spread_text(s.p99_ms, 1.0, 0),
                spread_text(s.stored_bytes, MIB as f64, 1),
                procs,
                ratios,
            ]
        })
        .collect();
    (header, rows)
}

/// The table for stdout: aligned columns.
pub fn table(summaries: &[Summary]) -> String {
    let (header, rows) = rows(summaries);
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

/// Writes the results and summaries as JSON.
pub fn write_json(
    path: &Path,
    results: &Results,
    summaries: &[Summary],
    machine: &Machine,
) -> anyhow::Result<()> {
    let targets = crate::targets::check(summaries);
    let value = serde_json::json!({ "machine": machine, "results": results, "summaries": summaries, "targets": targets });
    std::fs::write(path, serde_json::to_vec_pretty(&value)?)
        .with_context(|| path.display().to_string())
}

/// The machine and the versions of everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// `nproc`.
    pub cpus: usize,
    /// CPU model from /proc/cpuinfo.
    pub cpu_model: String,
    /// MemTotal from /proc/meminfo.
    pub memory: String,
    /// `nats-server --version`.
    pub nats_server: String,
    /// `garage --version`.
    pub garage: String,
    /// `rclone version` (first line).
    pub rclone: String,
    /// `git rev-parse HEAD` (with `-dirty` if the tree has changes).
    pub commit: String,
    /// The exact command.
    pub command: String,
}

fn first_line(program: &Path, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            let text = if o.stdout.is_empty() {
                &o.stderr
            } else {
                &o.stdout
            };
            String::from_utf8_lossy(text)
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".to_string())
}

/// `24731708 kB` → `23.6 GiB`.
fn memory(mem_total: &str) -> String {
    mem_total
        .trim_end_matches("kB")
        .trim()
        .parse::<f64>()
        .map(|kib| format!("{:.1} GiB", kib / (1024.0 * 1024.0)))
        .unwrap_or_else(|_| mem_total.to_string())
}

/// Describes this machine and the tools' versions.
pub fn machine(command: &str) -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".to_string())
    };
    let dirty = Command::new("git")
        .args(["status", "--porcelain"])
        .output()
        .ok()
        .is_some_and(|o| !o.stdout.is_empty());
    let commit = first_line(Path::new("git"), &["rev-parse", "HEAD"]);
    Machine {
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu_model: field(&cpuinfo, "model name"),
        memory: memory(&field(&meminfo, "MemTotal")),
        nats_server: first_line(&cim_tests::nats_server_bin(), &["--version"]),
        garage: first_line(&cim_tests::garage_bin(), &["--version"]),
        rclone: first_line(Path::new("rclone"), &["version"]),
        commit: if dirty {
            format!("{commit}-dirty")
        } else {
            commit
        },
        command: command.to_string(),
    }
}

/// `BENCHMARKS.md`-style content; `plot` is the SVG's file name beside it.
pub fn markdown(results: &Results, summaries: &[Summary], machine: &Machine, plot: &str) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(md, "Generated by `cim-bench` (see `docs/benchmarking.md`); regenerate with `scripts/bench.sh`.\n");
    let _ = writeln!(md, "## Machine and versions\n");
    let _ = writeln!(md, "- CPUs: {} × {}", machine.cpus, machine.cpu_model);
    let _ = writeln!(md, "- Memory: {}", machine.memory);
    let _ = writeln!(md, "- nats-server: {}", machine.nats_server);
    let _ = writeln!(md, "- garage: {}", machine.garage);
    let _ = writeln!(md, "- rclone: {}", machine.rclone);
    let _ = writeln!(md, "- commit: {}", machine.commit);
    let _ = writeln!(md, "- command: `{}`", machine.command);
    let _ = writeln!(
        md,
        "- S3 side: {} ({})",
        results.s3,
        if results.s3.starts_with("garage") {
            "every S3 number here — raw-s3, peer, upload, restore, small — comes from Garage on loopback, not MinIO or Wasabi"
        } else {
            "the endpoint given on the command line"
        }
    );
    let _ = writeln!(md, "- pipeline: {}", results.conditions);
    let _ = writeln!(md, "- whole run: {:.0} s\n", results.total_secs);
    md.push_str(&crate::targets::markdown(&crate::targets::check(summaries)));
    let _ = writeln!(md);
    let _ = writeln!(md, "## Results\n");
    let _ = writeln!(md, "Median (min–max) over the runs of each cell. MiB/s counts logical (object) bytes; ratios divide our median MiB/s by the baseline's, same data set and concurrency, same run.\n");
    let (header, rows) = rows(summaries);
    let _ = writeln!(md, "| {} |", header.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(header.len()));
    for row in rows {
        let _ = writeln!(
            md,
            "| {} |",
            row.iter()
                .map(|c| c.replace('|', "\\|"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    let _ = writeln!(md, "\n![MiB/s by object size]({plot})");
    md
}

/// The plot's series: (row, colour, dashed).
const SERIES: [(&str, &str, bool); 10] = [
    ("upload", "#d62728", false),
    ("raw-s3 put", "#1f77b4", true),
    ("raw-nats get", "#2ca02c", true),
    ("raw copy up", "#7f7f7f", true),
    ("peer upload", "#ff7f0e", true),
    ("restore", "#9467bd", false),
    ("raw-s3 get", "#17becf", true),
    ("raw-nats put", "#8c564b", true),
    ("raw copy down", "#bcbd22", true),
    ("peer download", "#e377c2", true),
];

/// A line chart of median MiB/s by object size (log x axis), upload and restore beside their
/// baselines, for the first kind and concurrency of the matrix.
pub fn svg(summaries: &[Summary]) -> String {
    let matrix: Vec<&Summary> = summaries
        .iter()
        .filter(|s| s.set == "matrix" && s.mib_per_sec.is_some())
        .collect();
    let first = matrix.first().map(|s| (s.kind, s.concurrency));
    let points = |row: &str| -> Vec<(f64, f64)> {
        let mut p: Vec<(f64, f64)> = matrix
            .iter()
            .filter(|s| s.scenario == row && Some((s.kind, s.concurrency)) == first)
            .filter_map(|s| Some(((s.size as f64).log2(), s.mib_per_sec?.median)))
            .collect();
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        p
    };
    let all: Vec<(f64, f64)> = SERIES.iter().flat_map(|(r, _, _)| points(r)).collect();
    let (w, h, left, right, top, bottom) = (760.0, 420.0, 70.0, 180.0, 30.0, 50.0);
    let xmin = all.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let xmax = all.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
    let ymax = all.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1;
    // One size only: centre it; none: any range.
    let (xmin, xmax) = match (xmin.is_finite(), xmax > xmin) {
        (true, true) => (xmin, xmax),
        (true, false) => (xmin - 1.0, xmin + 1.0),
        _ => (0.0, 1.0),
    };
    let sx = |x: f64| left + (x - xmin) / (xmax - xmin) * (w - left - right);
    let sy = |y: f64| h - bottom - y / ymax * (h - top - bottom);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let _ = writeln!(
        s,
        "<text x=\"{left}\" y=\"18\" font-size=\"14\">MiB/s by object size{}</text>",
        first
            .map(|(k, c)| format!(" ({k:?}, concurrency {c})").to_lowercase())
            .unwrap_or_default()
    );
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
        h - bottom,
        w - right,
        h - bottom
    );
    let _ = writeln!(
        s,
        "<line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>",
        h - bottom
    );
    let _ = writeln!(
        s,
        "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">object size (log scale)</text>",
        (left + w - right) / 2.0,
        h - 12.0
    );
    let _ = writeln!(
        s,
        "<text x=\"16\" y=\"{:.1}\" transform=\"rotate(-90 16 {:.1})\" text-anchor=\"middle\">MiB/s (median)</text>",
        (top + h - bottom) / 2.0,
        (top + h - bottom) / 2.0
    );
    let prec = if ymax < 20.0 { 1 } else { 0 };
    for i in 0..=4 {
        let y = ymax * i as f64 / 4.0;
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{y:.prec$}</text>",
            left - 6.0,
            sy(y) + 4.0
        );
    }
    let mut sizes: Vec<u64> = matrix.iter().map(|s| s.size).collect();
    sizes.sort();
    sizes.dedup();
    for size in sizes {
        let x = sx((size as f64).log2());
        let _ = writeln!(
            s,
            "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            h - bottom + 18.0,
            size_label(size)
        );
    }
    for (i, (row, colour, dashed)) in SERIES.iter().enumerate() {
        let p = points(row);
        if p.is_empty() {
            continue;
        }
        let path: Vec<String> = p
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y)))
            .collect();
        let dash = if *dashed {
            " stroke-dasharray=\"5,4\""
        } else {
            ""
        };
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash} points=\"{}\"/>",
            path.join(" ")
        );
        for (x, y) in &p {
            let _ = writeln!(
                s,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"/>",
                sx(*x),
                sy(*y)
            );
        }
        let ly = top + 16.0 * i as f64;
        let _ = writeln!(s, "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/><text x=\"{}\" y=\"{}\">{row}</text>", w - right + 10.0, w - right + 34.0, w - right + 40.0, ly + 4.0);
    }
    s.push_str("</svg>\n");
    s
}

/// Writes the markdown to `path` and the plot beside it (`<stem>.svg`).
pub fn write_markdown(
    path: &Path,
    results: &Results,
    summaries: &[Summary],
    machine: &Machine,
) -> anyhow::Result<()> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("benchmarks");
    let plot = format!("{}.svg", stem.to_lowercase());
    let plot_path = path.with_file_name(&plot);
    std::fs::write(&plot_path, svg(summaries)).with_context(|| plot_path.display().to_string())?;
    std::fs::write(path, markdown(results, summaries, machine, &plot))
        .with_context(|| path.display().to_string())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::measure::Run;
    use crate::runner::Plan;

    fn run(mib: u64, secs: u64) -> Run {
        Run {
            logical_bytes: mib * MIB,
            stored_bytes: 0,
            objects: mib,
            elapsed: Duration::from_secs(secs),
            latencies: vec![Duration::from_millis(10)],
            procs: vec![],
        }
    }

    fn cell(scenario: &str, runs: Vec<Run>) -> Cell {
        Cell {
            set: "matrix".into(),
            scenario: scenario.into(),
            size: MIB,
            kind: DataKind::Random,
            concurrency: 4,
            runs,
            error: None,
        }
    }

    #[test]
    fn ratios_divide_medians_of_the_same_run_and_failures_have_no_number() {
        let results = Results {
            plan: Plan::tiny(),
            cells: vec![
                cell("upload", vec![run(100, 10), run(100, 5), run(100, 20)]),
                cell("raw-s3 put", vec![run(100, 1)]),
                Cell {
                    error: Some("object o-000001 vanished".into()),
                    ..cell("raw-nats get", vec![run(1, 1)])
                },
            ],
            total_secs: 1.0,
            conditions: String::new(),
            s3: "garage (local)".into(),
        };
        let s = summarize(&results);
        assert_eq!(
            s[0].mib_per_sec.map(|m| (m.median, m.min, m.max)),
            Some((10.0, 5.0, 20.0))
        );
        assert_eq!(s[0].ratios.len(), 1);
        assert!((s[0].ratios[0].ratio - 0.1).abs() < 1e-9);
        assert!(s[2].mib_per_sec.is_none());
        let text = table(&s);
        assert!(
            text.contains("10.0 (5.0–20.0)") && text.contains("FAILED: object o-000001"),
            "{text}"
        );
        let plot = svg(&s);
        assert!(plot.starts_with("<svg") && plot.contains("polyline"));
        // One size only: drawn in the middle of the x axis, not off the chart.
        assert!(plot.contains("<circle cx=\"325.0\""), "{plot}");
        assert_eq!(size_label(4 * KIB), "4 KiB");
        assert_eq!(size_label(2048 * MIB), "2 GiB");
    }
}
