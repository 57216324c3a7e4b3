//! The `serve` role: the `cim.storage.object.ensure` NATS service ([`cim_gateway::ensure`]).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use cim_gateway::ensure::{serve, Ensurer};
use cim_policies::Tier;
use cim_tiering::{cli, metrics, status, System};
use clap::Args;

use crate::{connect_s3, restore_target, s3_tier_name, ConfigArg};

/// Arguments of `cim-gateway serve`.
#[derive(Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Serve /metrics, /healthz and /readyz here instead of `[metrics] listen`.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// S3 tier to restore from (default: the only S3 tier).
    #[arg(long)]
    from: Option<String>,
    /// JetStream tier objects are made ready on (default: the tier that uploads to the S3
    /// tier, as for `restore`).
    #[arg(long)]
    to: Option<String>,
    /// How long one request may take, restore included; past it the caller gets
    /// `unavailable` (a restore that started goes on).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    deadline: Duration,
}

/// Runs the role until SIGTERM.
pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let config = cli::load_config(&args.config.config)?;
    let shutdown = cli::shutdown_on_signal();
    let readiness = cli::serve_metrics(&config, args.metrics_listen, &shutdown).await?;
    metrics::role_started(metrics::Role::Serve, &config);
    let s3_name = s3_tier_name(&config, args.from)?;
    let hub = restore_target(&config, &s3_name, args.to)?;
    let Some(Tier::S3(s3_config)) = config.tier(&s3_name).cloned() else {
        bail!("{s3_name:?} is not an s3 tier");
    };
    let system = Arc::new(
        System::connect(config, "cim-gateway serve")
            .await
            .context("connecting to nats")?,
    );
    let store = connect_s3(&s3_name, &s3_config).await?;
    readiness.set(vec![system.nats_ready(), store.ready_check()]);
    let heartbeat = status::start_heartbeat(&system, "serve", &shutdown, false);
    let ensurer = Arc::new(Ensurer::new(system.clone(), store, &hub, args.deadline)?);
    ensurer
        .recover()
        .await
        .context("cleaning up after interrupted restores")?;
    serve(ensurer, system.control().client(), shutdown).await?;
    status::stop_heartbeat(heartbeat).await;
    Ok(ExitCode::SUCCESS)
}
