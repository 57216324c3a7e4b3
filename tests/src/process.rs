//! Child processes: the handle shared by every server, and [`RoleProcess`] for our binaries.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

/// A restartable child process whose stdout and stderr are appended to a log file.
///
/// Killed with SIGKILL (and reaped) on drop. The `Mutex` lets `&self` methods notice a crash.
#[derive(Debug)]
pub(crate) struct Proc {
    program: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    log: PathBuf,
    child: Mutex<Option<Child>>,
}

/// Sends `signal` (e.g. "TERM") with the `kill` command: `libc::kill` would need `unsafe`.
fn send_signal(pid: u32, signal: &str) -> std::io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "kill -{signal} {pid}: {status}"
        )))
    }
}

impl Proc {
    pub(crate) fn new(
        program: &Path,
        args: &[OsString],
        envs: &[(OsString, OsString)],
        log: &Path,
    ) -> Proc {
        Proc {
            program: program.to_path_buf(),
            args: args.to_vec(),
            envs: envs.to_vec(),
            log: log.to_path_buf(),
            child: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Child>> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log
    }

    /// Spawns the process (again). Errors if it is still running.
    pub(crate) fn spawn(&self) -> anyhow::Result<()> {
        let mut slot = self.lock();
        if let Some(child) = slot.as_mut() {
            if child.try_wait()?.is_none() {
                anyhow::bail!("{} is already running", self.program.display());
            }
        }
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open log {}", self.log.display()))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        writeln!(
            log,
            "==== cim-tests: starting {} {:?} at unix {}.{:03} ====",
            self.program.display(),
            self.args,
            now.as_secs(),
            now.subsec_millis()
        )?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            // With no credentials the AWS SDK's default chain would probe the cloud metadata
            // address; test processes talk to loopback only.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd.spawn().with_context(|| {
            format!(
                "cannot spawn {} (run scripts/install-tools.sh, or cargo build --workspace --bins)",
                self.program.display()
            )
        })?;
        *slot = Some(child);
        Ok(())
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.lock().as_ref().map(Child::id)
    }

    /// Whether the process was started (and not stopped by us) — it may have crashed since.
    pub(crate) fn started(&self) -> bool {
        self.lock().is_some()
    }

    /// The exit status if the process was started and has exited on its own.
    pub(crate) fn exit_status(&self) -> Option<ExitStatus> {
        self.lock()
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// Started and not exited.
    pub(crate) fn is_running(&self) -> bool {
        self.started() && self.exit_status().is_none()
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to the running process.
    pub(crate) fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let slot = self.lock();
        let Some(child) = slot.as_ref() else {
            anyhow::bail!("{} is not running", self.program.display());
        };
        // Not reaped yet (we hold the lock), so the pid is still ours.
        send_signal(child.id(), signal)
            .with_context(|| format!("kill -{signal} {}", self.program.display()))
    }

    /// SIGKILL and reap; a no-op if not started.
    pub(crate) fn kill(&self) {
        if let Some(mut child) = self.lock().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, wait up to `timeout` for the exit, then SIGKILL and error.
    pub(crate) fn terminate(&self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let mut slot = self.lock();
        let Some(child) = slot.as_mut() else {
            anyhow::bail!("{} is not running", self.program.display());
        };
        if let Some(status) = child.try_wait()? {
            *slot = None;
            return Ok(status);
        }
        // Not reaped yet, so the pid is still ours.
        send_signal(child.id(), "TERM")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                *slot = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let status = child.wait();
                *slot = None;
                anyhow::bail!(
                    "{} did not exit within {timeout:?} of SIGTERM; killed ({status:?})",
                    self.program.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running role process (one of our binaries), stdout and stderr appended to a log file.
/// Killed with SIGKILL on drop.
#[derive(Debug)]
pub struct RoleProcess {
    proc: Proc,
}

impl RoleProcess {
    /// Spawns `bin args...` with output appended to `log`. `RUST_LOG` defaults to
    /// `info,cim=debug` unless set in the test's environment.
    pub fn spawn(bin: &Path, args: &[&str], log: &Path) -> anyhow::Result<RoleProcess> {
        RoleProcess::spawn_with_env(bin, args, &[], log)
    }

    /// Like [`RoleProcess::spawn`], with extra environment variables.
    pub fn spawn_with_env(
        bin: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        log: &Path,
    ) -> anyhow::Result<RoleProcess> {
        let mut envs: Vec<(OsString, OsString)> = Vec::new();
        if std::env::var_os("RUST_LOG").is_none() {
            envs.push(("RUST_LOG".into(), "info,cim=debug".into()));
        }
        envs.extend(
            env.iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v))),
        );
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let proc = Proc::new(bin, &args, &envs, log);
        proc.spawn()?;
        Ok(RoleProcess { proc })
    }

    /// Spawns the same command again (after [`RoleProcess::sigkill`] or an exit), appending
    /// to the same log.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.proc.spawn()
    }

    /// The process id, if started and not yet reaped.
    pub fn pid(&self) -> Option<u32> {
        self.proc.pid()
    }

    /// Whether the process is running (started and not exited).
    pub fn is_running(&self) -> bool {
        self.proc.is_running()
    }

    /// The exit status if the process exited on its own.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.proc.exit_status()
    }

    /// SIGKILL and wait for the exit.
    pub fn sigkill(&mut self) {
        self.proc.kill();
    }

    /// SIGTERM and wait up to `timeout` for the exit; on timeout SIGKILL and error.
    pub fn sigterm_and_wait(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.proc.terminate(timeout)
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    /// The log so far (to print on failure).
    pub fn log(&self) -> String {
        self.proc.log_text()
    }

    /// Waits until the log contains `needle`; errors early if the process exits.
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        crate::wait_for(&format!("log line {needle:?}"), timeout, || async {
            if self.log().contains(needle) {
                return Ok(None);
            }
            if let Some(status) = self.exit_status() {
                anyhow::bail!(
                    "process exited ({status}); log tail:\n{}",
                    crate::tail_file(self.log_path(), 40)
                );
            }
            Ok(Some("not in the log yet".to_string()))
        })
        .await
    }
}
