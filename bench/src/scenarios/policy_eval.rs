//! `policy-eval`: the manager's planning over a real hub bucket holding many objects — seconds
//! and peak memory per pass.
//!
//! The bench fills a hub bucket (3 replicas, like our hub tier) with meta messages only: each
//! names a chunk subject that holds nothing (size 0, a digest), which is all a pass reads (the
//! manager walks the bucket's meta subjects with batched direct gets; see
//! `cim_tiering::jetstream::scan`). Then it runs the real manager (`cim-storage run`) with one
//! hub → s3 `copy` policy whose `after` (100000 days) no object reaches: every pass evaluates
//! every object and queues nothing, so what is timed is the planning alone.
//!
//! Three passes are reported (rows `manager scan`, `manager pass`, `manager pass new`; the
//! pass's time is each run's one latency):
//! - the *first scan*: the manager's first pass, which reads every meta;
//! - a *steady* pass with nothing new (the third): what every pass costs once the bucket is
//!   indexed — issue 8's target 6;
//! - a pass after [`NEW_OBJECTS`] new metas were written during the interval before it.
//!
//! Each pass's time is the manager's own `cim_manager_last_pass_duration_seconds`, read from `/metrics` (every
//! [`SCRAPE_EVERY`]) as soon as `cim_manager_passes_total` counts it. CPU is counted from the end
//! of the pass before (the manager idles for the interval in between); peak memory is the
//! manager's high-water mark (`VmHWM`), which the first scan sets (the index of every object is
//! built then).
//!
//! Verified: the bucket holds exactly `objects` messages before the manager starts; no pass
//! skips anything (`cim_manager_skipped_total` stays 0) or finds anything due; the hub servers
//! delivered at least one message per object to the manager's connection during the first
//! pass, so it cannot have indexed fewer objects than there are, and at least one per new object
//! during the pass after them.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use bytes::Bytes;
use cim_tests::{cim_bin, free_port, RoleProcess};
use cim_tiering::digest::Sha256Digest;
use cim_tiering::jetstream::{bucket_stream_config, meta_subject, stream_name};
use cim_tiering::manager::PASS_DEADLINE;

use crate::env::Env;
use crate::measure::Run;
use crate::procs::Watch;
use crate::scenarios::raw_nats::{object_info, rollup_headers, HUB_REPLICAS};

/// The hub bucket the metas go into.
pub const BUCKET: &str = "bench-policy-eval";
/// The manager's sleep between passes (set in its configuration, subtracted from the timing).
pub const INTERVAL: Duration = Duration::from_secs(1);
/// How often `/metrics` is read while waiting for a pass to end.
pub const SCRAPE_EVERY: Duration = Duration::from_millis(10);
/// Connections writing metas, each with [`WRITE_WINDOW`] publish acks in flight.
const WRITERS: u64 = 4;
/// Publish acks in flight per writer.
const WRITE_WINDOW: usize = 1024;
/// The name our roles give their NATS connections (`System::connect`), as `/connz` shows it.
const MANAGER_CONNECTION: &str = "cim-storage manager";

/// Fills [`BUCKET`] with `objects` metas, runs the manager over it and returns its passes
/// (each a [`Run`]: `objects` = metas, `elapsed` = the pass, `procs` = [the manager]). The
/// bucket is deleted afterwards.
pub async fn run(env: &Env, objects: u64) -> anyhow::Result<PolicyEval> {
    let js = jetstream::with_domain(env.topology.hub.connect().await?, cim_tests::HUB_DOMAIN);
    let _ = js.delete_stream(stream_name(BUCKET)).await;
    js.create_stream(bucket_stream_config(BUCKET, HUB_REPLICAS, None))
        .await
        .context("policy-eval: creating the hub bucket")?;
    let result = fill_and_evaluate(env, &js, objects).await;
    let deleted = js.delete_stream(stream_name(BUCKET)).await;
    let run = result?;
    deleted.context("policy-eval: deleting the hub bucket")?;
    Ok(run)
}

async fn fill_and_evaluate(
    env: &Env,
    js: &jetstream::Context,
    objects: u64,
) -> anyhow::Result<PolicyEval> {
    let started = Instant::now();
    write_metas(env, 0, objects).await?;
    let held = js
        .get_stream(stream_name(BUCKET))
        .await?
        .info()
        .await?
        .state
        .messages;
    anyhow::ensure!(
        held == objects,
        "policy-eval: the bucket holds {held} messages, {objects} metas were written"
    );
    tracing::info!(
        objects,
        secs = started.elapsed().as_secs_f64(),
        "policy-eval: metas written"
    );
    evaluate(env, objects).await
}

/// Writes metas named `meta-<n>` for `n` in `from..to` from [`WRITERS`] connections, pipelined.
async fn write_metas(env: &Env, from: u64, to: u64) -> anyhow::Result<()> {
    let mut writers = tokio::task::JoinSet::new();
    for w in 0..WRITERS {
        let client = env.topology.hub.connect().await?;
        let mut js = jetstream::with_domain(client, cim_tests::HUB_DOMAIN);
        js.set_timeout(Duration::from_secs(30));
        writers.spawn(async move {
            let empty = Sha256Digest::of(b"");
            let mut acks = std::collections::VecDeque::with_capacity(WRITE_WINDOW);
            for i in (from + w..to).step_by(WRITERS as usize) {
                let name = format!("meta-{i:08}");
                let nuid = nuid::next().to_string();
                let payload = Bytes::from(serde_json::to_vec(&object_info(
                    BUCKET, &name, &nuid, 0, 0, &empty,
                ))?);
                if acks.len() == WRITE_WINDOW {
                    let ack: jetstream::context::PublishAckFuture =
                        acks.pop_front().context("ack window")?;
                    ack.await.context("policy-eval: writing a meta")?;
                }
                let ack = js
                    .publish_with_headers(meta_subject(BUCKET, &name), rollup_headers(), payload)
                    .await
                    .with_context(|| format!("policy-eval: writing the meta of {name}"))?;
                acks.push_back(ack);
            }
            for ack in acks {
                ack.await.context("policy-eval: writing a meta")?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done.context("a meta writer panicked")??;
    }
    Ok(())
}

/// The manager's configuration: one hub → s3 copy that is never due.
fn policies() -> String {
    format!(
        "[manager]\ninterval = \"{}s\"\n\n[[policy]]\nname = \"bench-policy-eval\"\n\
         buckets = [\"{BUCKET}\"]\nfrom = \"hub\"\nto = \"s3\"\naction = \"copy\"\n\
         after = \"100000d\"\n",
        INTERVAL.as_secs()
    )
}

/// What one policy-eval run measured, each a [`Run`] over the bucket's objects.
pub struct PolicyEval {
    /// The manager's first pass: start-up plus reading every meta (the first scan).
    pub first_scan: Run,
    /// A later pass with nothing new: what every pass costs once the bucket is indexed.
    pub steady: Run,
    /// A later pass after [`NEW_OBJECTS`] new metas were written.
    pub with_new: Run,
}

/// Metas written between two passes for [`PolicyEval::with_new`].
pub const NEW_OBJECTS: u64 = 100;

/// Starts the manager, times its first scan and two later passes, and stops it.
async fn evaluate(env: &Env, objects: u64) -> anyhow::Result<PolicyEval> {
    let config = env.write_config("bench-policy-eval/", &policies());
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = env.topology.dir().join("policy-eval-manager.log");
    let config = config.display().to_string();
    let delivered_before = manager_deliveries(env).await?;
    let mut manager = RoleProcess::spawn_with_env(
        &cim_bin("cim-storage"),
        &["run", "--config", &config, "--metrics-listen", &listen],
        &[("RUST_LOG", "info")],
        &log,
    )?;
    let result = time_passes(env, &manager, port, objects, delivered_before).await;
    let _ = manager.sigterm_and_wait(Duration::from_secs(6));
    result.with_context(|| format!("policy-eval: the manager's log is {}", log.display()))
}

async fn time_passes(
    env: &Env,
    manager: &RoleProcess,
    port: u16,
    objects: u64,
    delivered_before: u64,
) -> anyhow::Result<PolicyEval> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let pid = manager.pid().context("the manager is gone")?;
    // The pass's time is also its one latency, so that the report's p50 shows it.
    let run = |elapsed: Duration, usage| Run {
        logical_bytes: 0,
        stored_bytes: 0,
        objects,
        elapsed,
        latencies: vec![elapsed],
        procs: vec![usage],
    };

    let watch = Watch::start("manager", pid);
    let took = wait_for_passes(&http, manager, port, 1).await?;
    let first_scan = run(took, watch.finish());
    let delivered = manager_deliveries(env).await? - delivered_before;
    anyhow::ensure!(
        delivered >= objects,
        "policy-eval: the manager received {delivered} messages in its first pass over {objects} objects"
    );

    // A pass with nothing new (the third: the second may still settle the first's queueing).
    wait_for_passes(&http, manager, port, 2).await?;
    let watch = Watch::start("manager", pid);
    let took = wait_for_passes(&http, manager, port, 3).await?;
    let steady = run(took, watch.finish());

    // A pass after a few new objects, written while the manager sleeps between passes.
    let watch = Watch::start("manager", pid);
    let delivered_before = manager_deliveries(env).await?;
    write_metas(env, objects, objects + NEW_OBJECTS).await?;
    let took = wait_for_passes(&http, manager, port, 4).await?;
    let with_new = run(took, watch.finish());
    let delivered = manager_deliveries(env).await? - delivered_before;
    anyhow::ensure!(
        delivered >= NEW_OBJECTS,
        "policy-eval: the manager received {delivered} messages in a pass after {NEW_OBJECTS} new objects"
    );

    let metrics = scrape(&http, port).await?;
    let skipped = metric_sum(&metrics, "cim_manager_skipped_total");
    let due = metric_sum(&metrics, "cim_backlog_objects");
    anyhow::ensure!(
        skipped == 0.0 && due == 0.0,
        "policy-eval: the manager skipped {skipped} and found {due} due (expected none)"
    );
    Ok(PolicyEval {
        first_scan,
        steady,
        with_new,
    })
}

/// Waits until the manager has completed `passes` passes and returns how long the last one
/// took (its `cim_manager_last_pass_duration_seconds`); fails if the manager exits.
async fn wait_for_passes(
    http: &reqwest::Client,
    manager: &RoleProcess,
    port: u16,
    passes: u64,
) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + PASS_DEADLINE + Duration::from_secs(60);
    loop {
        if let Some(status) = manager.exit_status() {
            anyhow::bail!(
                "the manager exited ({status}):\n{}",
                cim_tests::tail_file(manager.log_path(), 20)
            );
        }
        let text = scrape(http, port).await.unwrap_or_default();
        if metric_sum(&text, "cim_manager_passes_total") >= passes as f64 {
            let took = metric_sum(&text, "cim_manager_last_pass_duration_seconds");
            return Ok(Duration::from_secs_f64(took.max(0.0)));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no manager pass {passes} within {PASS_DEADLINE:?}"
        );
        tokio::time::sleep(SCRAPE_EVERY).await;
    }
}

/// The manager's `/metrics` text.
async fn scrape(http: &reqwest::Client, port: u16) -> anyhow::Result<String> {
    Ok(http
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?)
}

/// The sum over all label sets of metric `name` in Prometheus text (0 when absent).
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Messages the hub servers have delivered to the manager's connections so far (`out_msgs` of
/// the connections named [`MANAGER_CONNECTION`] in every node's `/connz`).
async fn manager_deliveries(env: &Env) -> anyhow::Result<u64> {
    let mut total = 0;
    for node in &env.topology.hub.nodes {
        let connz = node.monitor_json("/connz?limit=4096").await?;
        total += connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|c| c["name"] == MANAGER_CONNECTION)
            .filter_map(|c| c["out_msgs"].as_u64())
            .sum::<u64>();
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_add_label_sets_and_ignore_longer_names() {
        let text = "# TYPE cim_manager_passes_total counter\ncim_manager_passes_total 2\n\
                    cim_manager_passes_total_x 7\ncim_manager_skipped_total{policy=\"a\",reason=\"b\"} 1\n\
                    cim_manager_skipped_total{policy=\"a\",reason=\"c\"} 2\n";
        assert_eq!(metric_sum(text, "cim_manager_passes_total"), 2.0);
        assert_eq!(metric_sum(text, "cim_manager_skipped_total"), 3.0);
        assert_eq!(metric_sum(text, "cim_backlog_objects"), 0.0);
    }
}
