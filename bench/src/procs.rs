//! CPU time and peak memory of our processes, read from `/proc` (Linux).
//!
//! CPU: `utime + stime` from `/proc/<pid>/stat` at the start and end of a run (clock ticks,
//! `sysconf(_SC_CLK_TCK)`, which is 100 on every Linux this runs on). Peak memory: `VmHWM` from
//! `/proc/<pid>/status`, the process's high-water mark since it started — so a role started
//! for one cell reports that cell's peak.

use std::time::Duration;

use crate::measure::ProcUsage;

/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ).
const TICKS_PER_SEC: f64 = 100.0;

/// CPU seconds (user + system) the process has used so far; `None` if it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state is field 3; utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// Peak resident set size in bytes (`VmHWM`); `None` if the process is gone.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Watches one process over a run: CPU used since [`Watch::start`], peak RSS at the end.
#[derive(Debug, Clone)]
pub struct Watch {
    name: String,
    pid: u32,
    cpu_at_start: f64,
}

impl Watch {
    /// Starts watching `pid` under `name`.
    pub fn start(name: &str, pid: u32) -> Watch {
        Watch {
            name: name.to_string(),
            pid,
            cpu_at_start: cpu_seconds(pid).unwrap_or(0.0),
        }
    }

    /// What the process used since the start (zeros if it is gone).
    pub fn finish(&self) -> ProcUsage {
        ProcUsage {
            name: self.name.clone(),
            cpu_seconds: (cpu_seconds(self.pid).unwrap_or(self.cpu_at_start) - self.cpu_at_start)
                .max(0.0),
            peak_rss_bytes: peak_rss_bytes(self.pid).unwrap_or(0),
        }
    }
}

/// Runs a child command to its end, returning its own usage (from `wait4`-style rusage of the
/// children of this process would mix runs; instead the command is timed and sampled).
pub async fn sample_until_exit(
    name: &str,
    child: &mut tokio::process::Child,
) -> anyhow::Result<(std::process::ExitStatus, ProcUsage)> {
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("{name} exited before it could be watched"))?;
    let watch = Watch::start(name, pid);
    let mut last = watch.finish();
    loop {
        tokio::select! {
            status = child.wait() => return Ok((status?, last)),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                let now = watch.finish();
                if now.peak_rss_bytes > 0 {
                    last = now;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_process_has_cpu_and_memory() {
        let pid = std::process::id();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(cpu_seconds(pid).is_some_and(|s| s >= 0.0));
        assert!(peak_rss_bytes(pid).is_some_and(|b| b > 1024 * 1024));
        assert!(cpu_seconds(u32::MAX).is_none());
    }
}
