//! What a run measures, and the statistics over repeated runs.
//!
//! A *run* moves one data set through one scenario once and records [`Run`]. A *cell* (scenario
//! × size × data kind × concurrency) is run several times; [`Summary`] gives the median with its
//! min–max, as S3 benchmarks (MinIO's `warp`) report them.

use std::time::Duration;

use serde::Serialize;

/// CPU time and peak resident memory of one of our processes during a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcUsage {
    /// What the process is (`upload`, `manager`, `restore`, ...).
    pub name: String,
    /// User + system CPU seconds the process used during the run.
    pub cpu_seconds: f64,
    /// Peak resident set size in bytes (`VmHWM`).
    pub peak_rss_bytes: u64,
}

/// One run of one cell.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Run {
    /// Bytes of object content moved (what the user stored).
    pub logical_bytes: u64,
    /// Bytes the destination stores for them (compressed on S3); 0 when not known.
    pub stored_bytes: u64,
    /// Objects moved.
    pub objects: u64,
    /// Wall-clock time from the first object's start to the last object's end.
    #[serde(with = "secs")]
    pub elapsed: Duration,
    /// Per-object latency (start to verified at the destination), where the scenario can see it.
    #[serde(skip)]
    pub latencies: Vec<Duration>,
    /// Our processes' CPU and memory during the run (empty for baselines with no process of ours).
    pub procs: Vec<ProcUsage>,
}

impl Run {
    /// A baseline's run over every object of `set`: stored as is (stored = logical bytes), no
    /// process of ours watched. Shared by `raw-nats` (and fit for `raw-s3`'s own `run_of`).
    pub fn stored_as_is(
        set: &crate::data::DataSet,
        elapsed: Duration,
        latencies: Vec<Duration>,
    ) -> Run {
        Run {
            logical_bytes: set.bytes(),
            stored_bytes: set.bytes(),
            objects: set.files.len() as u64,
            elapsed,
            latencies,
            procs: Vec::new(),
        }
    }

    /// Logical MiB/s.
    pub fn mib_per_sec(&self) -> f64 {
        self.logical_bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Objects/s.
    pub fn objects_per_sec(&self) -> f64 {
        self.objects as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) of the per-object latencies (nearest rank); `None` without any.
    pub fn latency_quantile(&self, q: f64) -> Option<Duration> {
        quantile(&self.latencies, q)
    }
}

/// Nearest-rank quantile of `values` (unsorted); `None` when empty.
pub fn quantile(values: &[Duration], q: f64) -> Option<Duration> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = ((q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize).max(1);
    Some(sorted[rank - 1])
}

/// Median with its range over repeated runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Spread {
    /// The spread of `values`; `None` when empty.
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Spread {
            median,
            min: sorted[0],
            max: sorted[n - 1],
        })
    }
}

/// Serializes a duration as fractional seconds.
mod secs {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_spreads() {
        let ms = |v: u64| Duration::from_millis(v);
        let values: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(quantile(&values, 0.5), Some(ms(50)));
        assert_eq!(quantile(&values, 0.99), Some(ms(99)));
        assert_eq!(quantile(&values, 1.0), Some(ms(100)));
        assert_eq!(quantile(&[], 0.5), None);
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap_or(Spread {
            median: 0.0,
            min: 0.0,
            max: 0.0,
        });
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap_or(Spread {
            median: 0.0,
            min: 0.0,
            max: 0.0,
        });
        assert_eq!(s.median, 2.5);
        let run = Run {
            logical_bytes: 10 * 1024 * 1024,
            stored_bytes: 0,
            objects: 5,
            elapsed: Duration::from_secs(2),
            latencies: vec![],
            procs: vec![],
        };
        assert_eq!((run.mib_per_sec(), run.objects_per_sec()), (5.0, 2.5));
    }
}
