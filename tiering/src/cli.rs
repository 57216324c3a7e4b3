//! Pieces both binaries (`cim-storage`, `cim-gateway`) share: logging, config loading,
//! the HTTP endpoint (metrics, health), shutdown on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use cim_policies::{Config, Format};
use tokio_util::sync::CancellationToken;

use crate::http::Readiness;

/// Without `RUST_LOG`: our own info lines; the AWS SDK's only from warnings up (at info it
/// announces every credentials file it reads, with the key id).
pub const DEFAULT_LOG_FILTER: &str = "info,aws_config=warn,aws_smithy_runtime=warn";

/// How log lines are written (`--log-format`, `CIM_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One readable line per event, span fields in front (colours on a terminal).
    #[default]
    Human,
    /// One JSON object per line: `timestamp`, `level`, `target`, the event's fields at the top
    /// level, and `spans`, every enclosing span with its fields (an object move's `bucket`,
    /// `object`, `from_tier`, `to_tier`), so one grep follows an object through every role.
    Json,
}

/// Logs to stderr in `format`; `RUST_LOG` overrides [`DEFAULT_LOG_FILTER`].
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .init(),
    }
}

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid configuration (every problem is listed), or its name says
    /// neither TOML nor JSON.
    #[error(transparent)]
    Invalid(#[from] cim_policies::ConfigError),
}

/// Reads and validates a configuration file: TOML or JSON, told by its extension
/// (`.toml`, `.json`; any other name is refused before the file is read).
pub fn load_config(path: &Path) -> Result<Config, LoadError> {
    let format = Format::from_path(path)?;
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(Config::from_str_in(
        format,
        &text,
        &path.display().to_string(),
    )?)
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `override_listen` or the configured
/// `[metrics] listen` until `shutdown`. The role is not ready until it sets its checks on the
/// returned [`Readiness`] (once connected).
pub async fn serve_metrics(
    config: &Config,
    override_listen: Option<SocketAddr>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Readiness> {
    let listen = override_listen.unwrap_or(config.metrics.listen);
    let handle = crate::metrics::install()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))?;
    let readiness = Readiness::default();
    let bound = crate::http::serve(listen, handle, readiness.clone(), shutdown.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot serve metrics on {listen}: {e}"))?;
    tracing::info!(listen = %bound, "serving /metrics, /healthz and /readyz");
    Ok(readiness)
}

/// After SIGTERM a role exits within this, whatever it was doing: a role that has not finished
/// its graceful shutdown by then exits at once. That is safe (nothing may lose or corrupt an
/// object if a process is killed at any line) and keeps the promise of exiting within 5 s.
pub const SHUTDOWN_DEADLINE: Duration = Duration::from_millis(4500);

/// A token cancelled on SIGTERM or SIGINT, for graceful shutdown; the process exits anyway
/// [`SHUTDOWN_DEADLINE`] after the signal.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down");
        trigger.cancel();
        // A plain thread: it must fire even if the runtime is what hangs.
        std::thread::spawn(|| {
            std::thread::sleep(SHUTDOWN_DEADLINE);
            eprintln!("shutdown took longer than {SHUTDOWN_DEADLINE:?}; exiting now");
            std::process::exit(1);
        });
    });
    token
}

/// Shell completion scripts and the man page, generated from a binary's clap definitions so
/// they never drift from its real options: `<binary> completions <shell>` and
/// `<binary> manpage` print them to stdout (packagers install them; see README).
pub mod generated {
    use std::io::Write as _;

    pub use clap_complete::Shell;

    /// Writes the completion script of `C` for `shell` (for the binary named `bin`) to stdout.
    pub fn completions<C: clap::CommandFactory>(shell: Shell, bin: &str) -> std::io::Result<()> {
        let mut command = C::command();
        // Into a buffer first: clap_complete panics on a write error (a closed pipe).
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command, bin, &mut script);
        let mut out = std::io::stdout().lock();
        out.write_all(&script)?;
        out.flush()
    }

    /// The exit status of printing one of them: a reader that stopped early (`| head`) is not
    /// an error.
    pub fn exit(printed: std::io::Result<()>) -> std::process::ExitCode {
        match printed {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    }

    /// Writes the man page of `C` (roff, section 1) to stdout: the binary's page, or with
    /// `subcommand` that subcommand's own page (`<binary>-<subcommand>(1)`, as git names its
    /// pages), with all its options.
    pub fn manpage<C: clap::CommandFactory>(subcommand: Option<&str>) -> std::io::Result<()> {
        let command = C::command();
        let page = match subcommand {
            None => command,
            Some(name) => {
                let sub = command.find_subcommand(name).cloned().ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{} has no subcommand {name:?}", command.get_name()),
                    )
                })?;
                let full = format!("{}-{}", command.get_name(), sub.get_name());
                // Both binaries carry the workspace's version.
                sub.display_name(full.clone())
                    .bin_name(full)
                    .version(env!("CARGO_PKG_VERSION"))
            }
        };
        let mut out = std::io::stdout().lock();
        clap_mangen::Man::new(page).render(&mut out)?;
        out.flush()
    }
}

/// A table for people: a header row and aligned columns, no borders (like `kubectl get` or the
/// `nats` CLI's plain tables), every line indented by two spaces, ending in a newline.
pub fn table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> String {
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(header.iter().copied());
    for row in rows {
        table.add_row(row);
    }
    let mut out = String::new();
    for line in table.to_string().lines() {
        out.push_str(&format!("  {}\n", line.trim_end()));
    }
    out
}

/// `bytes` for people, in binary units (`1.5 MiB`).
pub fn human_bytes(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

/// A duration for people, to the second (`1h 2m 3s`; `0s` for anything shorter or negative).
pub fn age(duration: time::Duration) -> String {
    let seconds = duration.whole_seconds().max(0) as u64;
    humantime::format_duration(std::time::Duration::from_secs(seconds)).to_string()
}
