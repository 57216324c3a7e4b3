//! `cim-storage`: the storage manager and the leaf-mirroring role.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use cim_tiering::cli::{self, LogFormat};
use cim_tiering::manager::{Manager, PASS_DEADLINE};
use cim_tiering::mirror::MirrorHandler;
use cim_tiering::work::Role;
use cim_tiering::System;
use cim_tiering::{metrics, status};
use clap::{Parser, Subcommand};

/// Storage manager and leaf mirroring for NATS JetStream object stores.
#[derive(Parser)]
#[command(name = "cim-storage", version)]
struct Cli {
    /// How log lines (stderr) are written: `human`, or `json` (one object per line, with the
    /// fields of every enclosing span).
    #[arg(long, global = true, env = "CIM_LOG_FORMAT", value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a configuration file; print every problem with its location.
    CheckConfig {
        /// The configuration file shared by all roles (.toml or .json).
        #[arg(long, env = "CIM_CONFIG")]
        config: PathBuf,
    },
    /// Run the storage manager: evaluate policies every interval and queue work for the roles.
    Run {
        /// The configuration file shared by all roles (.toml or .json).
        #[arg(long, env = "CIM_CONFIG")]
        config: PathBuf,
        /// Serve /metrics, /healthz and /readyz here instead of `[metrics] listen`.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
        /// Run one evaluation pass (queueing its work) and exit.
        #[arg(long)]
        once: bool,
    },
    /// Run the mirror role: set up leaf → cluster sourcing and evict verified leaf copies.
    Mirror {
        /// The configuration file shared by all roles (.toml or .json).
        #[arg(long, env = "CIM_CONFIG")]
        config: PathBuf,
        /// Serve /metrics, /healthz and /readyz here instead of `[metrics] listen`.
        #[arg(long)]
        metrics_listen: Option<SocketAddr>,
    },
    /// Show what the system is doing, from NATS alone (any host with the configuration): the
    /// running roles, what each tier holds per bucket, each policy's backlog, recent failures,
    /// and what restore runs did.
    ///
    /// Exit status: 0 shown; 1 NATS could not be read.
    Status {
        /// The configuration file shared by all roles (.toml or .json).
        #[arg(long, env = "CIM_CONFIG")]
        config: PathBuf,
        /// Print one JSON document (the same fields) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Show what the manager would queue now, object by object, with the policy and the reason
    /// (read-only: runs the manager's evaluation against the tiers and queues nothing).
    Plan {
        /// The configuration file shared by all roles (.toml or .json).
        #[arg(long, env = "CIM_CONFIG")]
        config: PathBuf,
        /// One JSON array of items instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Show where one object's copies are and what every policy makes of it, and why.
    Explain {
        /// The configuration file shared by all roles (.toml or .json).
        #[arg(long, env = "CIM_CONFIG")]
        config: PathBuf,
        /// The object-store bucket.
        #[arg(long)]
        bucket: String,
        /// The object's name.
        #[arg(long)]
        name: String,
        /// One JSON object instead of the text.
        #[arg(long)]
        json: bool,
    },
    /// Print the shell completion script for SHELL to stdout.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: cli::generated::Shell,
    },
    /// Print the man page (roff) to stdout: this command's, or SUBCOMMAND's.
    Manpage {
        /// A subcommand whose own page to print (e.g. `run`).
        subcommand: Option<String>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    cim_tiering::memory::bound_heap();
    let cli = Cli::parse();
    match &cli.command {
        Command::Completions { shell } => {
            return cli::generated::exit(cli::generated::completions::<Cli>(*shell, "cim-storage"));
        }
        Command::Manpage { subcommand } => {
            return cli::generated::exit(cli::generated::manpage::<Cli>(subcommand.as_deref()));
        }
        _ => {}
    }
    if let Command::CheckConfig { config } = &cli.command {
        return match cli::load_config(config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    cli::init_tracing(cli.log_format);
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line for people; the whole chain under RUST_LOG=debug.
            tracing::debug!("the error in full: {e:#?}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::CheckConfig { .. } | Command::Completions { .. } | Command::Manpage { .. } => {
            unreachable!("handled before logging starts")
        }
        Command::Run {
            config,
            metrics_listen,
            once,
        } => {
            let path = config.display().to_string();
            let config = cli::load_config(&config)?;
            if let Some(why) = cim_tiering::manager::unsupported(&config) {
                anyhow::bail!("{path}: {why}");
            }
            if once {
                let system = Arc::new(
                    System::connect(config, "cim-storage manager")
                        .await
                        .context("connecting")?,
                );
                let manager = Manager::new(system);
                let shutdown = cli::shutdown_on_signal();
                let report = tokio::select! {
                    report = tokio::time::timeout(PASS_DEADLINE, manager.pass()) => report
                        .map_err(|_| anyhow::anyhow!("the pass exceeded its deadline ({PASS_DEADLINE:?})"))??,
                    _ = shutdown.cancelled() => anyhow::bail!("interrupted"),
                };
                println!("due {} queued {}", report.due, report.queued);
                return Ok(());
            }
            let shutdown = cli::shutdown_on_signal();
            let readiness = cli::serve_metrics(&config, metrics_listen, &shutdown).await?;
            metrics::role_started(metrics::Role::Manager, &config);
            let system = Arc::new(
                System::connect(config, "cim-storage manager")
                    .await
                    .context("connecting")?,
            );
            readiness.set(vec![system.nats_ready()]);
            let heartbeat = status::start_heartbeat(&system, "manager", &shutdown, true);
            Manager::new(system).run(shutdown).await;
            status::stop_heartbeat(heartbeat).await;
            Ok(())
        }
        Command::Status { config, json } => {
            let config = cli::load_config(&config)?;
            let client = cim_tiering::jetstream::connect(
                &config.nats.url,
                config.nats.credentials_file.as_deref(),
                "cim-storage status",
            )
            .await?;
            let js = async_nats::jetstream::new(client);
            let report = match status::StatusBucket::open_existing(&js).await? {
                Some(bucket) => status::report::StatusReport::read(&bucket).await?,
                None => status::report::StatusReport::empty(),
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
            Ok(())
        }
        Command::Plan { config, json } => {
            let config = cli::load_config(&config)?;
            let system = Arc::new(
                System::connect(config, "cim-storage plan")
                    .await
                    .context("connecting")?,
            );
            let planner = Manager::planner(system);
            let report = tokio::time::timeout(PASS_DEADLINE, planner.pass())
                .await
                .map_err(|_| {
                    anyhow::anyhow!("the pass exceeded its deadline ({PASS_DEADLINE:?})")
                })??;
            let rows = cim_tiering::manager::plan::rows(&report.planned);
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print!("{}", cim_tiering::manager::plan::table(&rows));
                print!(
                    "{}",
                    cim_tiering::manager::plan::temporary_table(&report.temporary)
                );
            }
            if report.skipped > 0 {
                eprintln!(
                    "warning: {} tiers, buckets or objects could not be evaluated (see the log)",
                    report.skipped
                );
            }
            Ok(())
        }
        Command::Explain {
            config,
            bucket,
            name,
            json,
        } => {
            let config = cli::load_config(&config)?;
            let system = System::connect(config, "cim-storage explain")
                .await
                .context("connecting")?;
            let explanation =
                cim_tiering::manager::explain::explain(&system, &bucket, &name).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&explanation)?);
            } else {
                print!("{}", explanation.text());
            }
            Ok(())
        }
        Command::Mirror {
            config,
            metrics_listen,
        } => {
            let config = cli::load_config(&config)?;
            let shutdown = cli::shutdown_on_signal();
            let readiness = cli::serve_metrics(&config, metrics_listen, &shutdown).await?;
            metrics::role_started(metrics::Role::Mirror, &config);
            let system = Arc::new(
                System::connect(config, "cim-storage mirror")
                    .await
                    .context("connecting")?,
            );
            readiness.set(vec![system.nats_ready()]);
            let heartbeat = status::start_heartbeat(&system, "mirror", &shutdown, false);
            let handler = Arc::new(MirrorHandler::new(system.clone()));
            system
                .work
                .run_worker(Role::Mirror, handler, shutdown)
                .await?;
            status::stop_heartbeat(heartbeat).await;
            Ok(())
        }
    }
}
