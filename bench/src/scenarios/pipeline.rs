//! Our own stages through the real role processes: `replicate` (leaf → hub), `upload`
//! (hub → S3), `restore` (S3 → hub) and `small` (many 4 KiB objects up and back).
//!
//! Every run has its own NATS bucket and S3 prefix, so runs never see each other's
//! data, and starts its own role processes, so their peak memory (`VmHWM`) is that run's. A run
//! is [`prepare`]d (not timed: the data set is put where the stage starts), then [`Prepared::run`]
//! times the stage until it is verified done, then [`Prepared::cleanup`] deletes the NATS
//! buckets (the S3 prefix is left: deleting thousands of keys would slow the run and the
//! servers are thrown away at the end).
//!
//! An object is done when the catalog (`cim_catalog` KV, watched) names only the destination
//! tier with the content's digest *and* its meta is gone from the source tier (evicted; polled
//! with one stream-info request every 100 ms and more for big sets): the catalog alone is not
//! enough, as an object put straight on the hub has no hub location recorded, so its entry
//! names only S3 before the eviction. An object's latency ends at the first poll that saw both.
//! The manager runs with [`MANAGER_INTERVAL`] and policies `after = "0s"` ([`CONDITIONS`] says
//! so in the report).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::object_store::ObjectStore;
use cim_tests::{cim_bin, free_port, RoleProcess};
use cim_tiering::catalog::Entry;
use cim_tiering::jetstream::JetStreamTier;
use futures::{StreamExt as _, TryStreamExt as _};
use sha2::{Digest as _, Sha256};

use crate::data::DataSet;
use crate::env::Env;
use crate::measure::{ProcUsage, Run};
use crate::procs::{self, Watch};

/// The manager's pass interval in every pipeline run (the test kit's configuration).
pub const MANAGER_INTERVAL: &str = "1s";

/// How the pipeline runs, for the report.
pub const CONDITIONS: &str = "manager interval 1 s; policies `move`, `after = \"0s\"`; \
     an object is done when the catalog names only the destination and the source holds no \
     meta for it (polled every 100 ms or more); \
     roles started per run (the upload role idle first, the clock starts when the manager is \
     spawned; replicate: the clock starts at the first put on the leaf); our roles run with \
     their default settings, as a new user's would (the cell's concurrency is the tools' and \
     the data set-up's); restore is one `cim-gateway restore --all` process; a run's NATS \
     buckets are deleted after it, its S3 prefix stays until the servers go";

/// A run that made no progress for this long fails, naming the objects still missing.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// The catalog KV bucket the roles use (the configuration's default).
const CATALOG: &str = "cim_catalog";

/// Which stage a run times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Leaf → hub: from the put on the leaf until verified on the hub and evicted from the leaf.
    Replicate,
    /// Hub → S3 through manager and upload role, until only in S3.
    Upload,
    /// S3 → hub through `cim-gateway restore --all`, verified by reading every object back.
    Restore,
}

impl Stage {
    /// The name used in cell ids and the report.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Replicate => "replicate",
            Stage::Upload => "upload",
            Stage::Restore => "restore",
        }
    }
}

/// A run set up and ready to be timed.
pub struct Prepared {
    /// The stage it times.
    pub stage: Stage,
    /// Its NATS bucket (the same name on leaf and hub).
    pub bucket: String,
    /// Its S3 prefix (ends with `/`).
    pub prefix: String,
    /// Its role configuration.
    pub config: PathBuf,
    /// SHA-256 (hex) of each object of the data set, by index.
    digests: Vec<String>,
    /// Size of each object in bytes.
    size: u64,
    concurrency: usize,
    /// Distinguishes the log files of successive runs on the same preparation.
    runs: usize,
    /// Rows a run measured besides its stage's own (replicate: `replicate sourcing`,
    /// `replicate settle`), taken by [`Prepared::take_extra_rows`].
    extra_rows: Vec<(&'static str, Run)>,
}

/// A run's id as a NATS bucket / stream name: `[A-Za-z0-9_-]` only.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Sets up a run of `stage` for `set` under the id `cell` (unique per run): writes the
/// configuration and puts the objects where the stage starts. Not timed.
pub async fn prepare(
    env: &Env,
    stage: Stage,
    set: &DataSet,
    cell: &str,
    concurrency: usize,
) -> anyhow::Result<Prepared> {
    let id = sanitize(cell);
    let bucket = format!("b-{id}");
    let prefix = format!("bench/{id}/");
    let config = env.write_config(&prefix, &extra_config(stage, &bucket));
    let digests = digests(set).await?;
    let mut prepared = Prepared {
        stage,
        bucket,
        prefix,
        config,
        digests,
        size: set.size,
        concurrency: concurrency.max(1),
        runs: 0,
        extra_rows: Vec::new(),
    };
    match stage {
        Stage::Replicate => {
            // The bucket exists on the leaf before the roles start, so the clock does not
            // include the mirror discovering it.
            leaf_tier(env)
                .await?
                .ensure_bucket(&prepared.bucket)
                .await?;
        }
        Stage::Upload => put_all(&hub_tier(env).await?, &prepared.bucket, set, concurrency).await?,
        Stage::Restore => {
            // Set-up: the objects go to S3 the way users' objects do, through upload.
            prepared.stage = Stage::Upload;
            put_all(&hub_tier(env).await?, &prepared.bucket, set, concurrency).await?;
            prepared
                .run(env, set)
                .await
                .context("restore set-up (uploading the data set)")?;
            prepared.stage = Stage::Restore;
        }
    }
    Ok(prepared)
}

/// The policy of one run; everything else is the roles' defaults, as a new user runs them. The
/// work stream is the default one (its subjects are fixed, so it cannot be per run); a run ends
/// with its items acked.
fn extra_config(stage: Stage, bucket: &str) -> String {
    let (from, to) = match stage {
        Stage::Replicate => ("leaf", "hub"),
        Stage::Upload | Stage::Restore => ("hub", "s3"),
    };
    format!(
        r#"[manager]
interval = "{MANAGER_INTERVAL}"

[[policy]]
name = "bench"
buckets = ["{bucket}"]
from = "{from}"
to = "{to}"
action = "move"
after = "0s"
"#
    )
}

/// SHA-256 (hex) of every file of the set, hashed in parallel blocking tasks.
async fn digests(set: &DataSet) -> anyhow::Result<Vec<String>> {
    let files = set.files.clone();
    tokio::task::spawn_blocking(move || {
        files
            .iter()
            .map(|f| {
                let mut file = std::fs::File::open(f).with_context(|| f.display().to_string())?;
                let mut hasher = Sha256::new();
                std::io::copy(&mut file, &mut hasher)?;
                Ok(hex(&hasher.finalize()))
            })
            .collect()
    })
    .await?
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn hub_tier(env: &Env) -> anyhow::Result<JetStreamTier> {
    let client = env.topology.hub.connect().await?;
    Ok(JetStreamTier::new("hub", "hub", 3, client))
}

async fn leaf_tier(env: &Env) -> anyhow::Result<JetStreamTier> {
    let client = env.topology.leaf.connect().await?;
    Ok(JetStreamTier::new("leaf", "leaf", 1, client))
}

/// Puts every object of `set` into `bucket` on `tier`, `concurrency` at a time.
async fn put_all(
    tier: &JetStreamTier,
    bucket: &str,
    set: &DataSet,
    concurrency: usize,
) -> anyhow::Result<()> {
    let store = tier.ensure_bucket(bucket).await?;
    futures::stream::iter(0..set.files.len())
        .map(|i| put_one(&store, set, i))
        .buffer_unordered(concurrency.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// Puts the set into `store`, `concurrency` at a time, recording when each put started (the
/// latencies of leaf → hub runs are measured from it).
async fn put_timed(
    store: &ObjectStore,
    set: &DataSet,
    concurrency: usize,
) -> anyhow::Result<Vec<(String, Instant)>> {
    futures::stream::iter(0..set.files.len())
        .map(|i| async move {
            let started = Instant::now();
            put_one(store, set, i).await?;
            Ok::<_, anyhow::Error>((set.name(i), started))
        })
        .buffer_unordered(concurrency.max(1))
        .try_collect()
        .await
}

async fn put_one(store: &ObjectStore, set: &DataSet, i: usize) -> anyhow::Result<()> {
    let name = set.name(i);
    let mut file = tokio::fs::File::open(&set.files[i]).await?;
    let info = store
        .put(name.as_str(), &mut file)
        .await
        .with_context(|| format!("put {name}"))?;
    anyhow::ensure!(
        info.size as u64 == set.size,
        "put {name}: stored {} bytes of {}",
        info.size,
        set.size
    );
    Ok(())
}

/// Our role processes of one run, with their watches.
struct Roles {
    procs: Vec<(RoleProcess, Watch)>,
}

impl Roles {
    /// Spawns `cim-<bin> <sub>` with its own metrics port and waits until the port answers.
    async fn spawn(
        &mut self,
        env: &Env,
        name: &str,
        bin: &str,
        sub: &str,
        config: &Path,
        log: &str,
    ) -> anyhow::Result<()> {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let config = config.display().to_string();
        let role = RoleProcess::spawn_with_env(
            &cim_bin(bin),
            &[sub, "--config", &config, "--metrics-listen", &listen],
            &[("RUST_LOG", "info")],
            &env.topology.dir().join(format!("{log}-{name}.log")),
        )?;
        let pid = role.pid().context("role exited at once")?;
        let watch = Watch::start(name, pid);
        self.procs.push((role, watch));
        cim_tests::wait_until(
            &format!("{name} metrics port"),
            Duration::from_secs(30),
            || async {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
            },
        )
        .await
        .with_context(|| format!("{name} did not start; log:\n{}", self.log_tail()))
    }

    fn check_running(&self) -> anyhow::Result<()> {
        for (role, watch) in &self.procs {
            if let Some(status) = role.exit_status() {
                anyhow::bail!(
                    "{} exited ({status}); log:\n{}",
                    watch.finish().name,
                    self.log_tail()
                );
            }
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        self.procs
            .iter()
            .map(|(r, _)| {
                format!(
                    "--- {} ---\n{}",
                    r.log_path().display(),
                    cim_tests::tail_file(r.log_path(), 30)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Usage so far, then SIGTERM to each.
    fn stop(mut self) -> Vec<ProcUsage> {
        let usage = self.procs.iter().map(|(_, w)| w.finish()).collect();
        for (role, _) in &mut self.procs {
            let _ = role.sigterm_and_wait(Duration::from_secs(10));
        }
        usage
    }
}

/// When each object of a bucket first had a catalog entry naming only `tier`, with the right
/// digest: a KV watch on the bucket's keys, recorded by a background task.
struct Tracker {
    done: Arc<Mutex<HashMap<String, Instant>>>,
    task: tokio::task::JoinHandle<()>,
    /// For [`Tracker::confirm`]: the catalog read directly, the tier and the digests.
    catalog: cim_tiering::catalog::Catalog,
    tier: String,
    expected: Arc<HashMap<String, String>>,
}

impl Tracker {
    async fn start(
        env: &Env,
        bucket: &str,
        tier: &str,
        expected: HashMap<String, String>,
    ) -> anyhow::Result<Tracker> {
        let client = env.topology.hub.connect().await?;
        let js = async_nats::jetstream::new(client);
        // Creates the catalog if no role did yet (the roles open it the same way).
        let catalog = cim_tiering::catalog::Catalog::open(&js, CATALOG, 3).await?;
        let kv = js.get_key_value(CATALOG).await?;
        let expected = Arc::new(expected);
        let mut watch = kv.watch_with_history(format!("o.{bucket}.>")).await?;
        let done = Arc::new(Mutex::new(HashMap::new()));
        let (record, watched_tier, digests) = (done.clone(), tier.to_string(), expected.clone());
        let task = tokio::spawn(async move {
            let (tier, expected) = (watched_tier, digests);
            while let Some(Ok(update)) = watch.next().await {
                let Ok(entry) = serde_json::from_slice::<Entry>(&update.value) else {
                    continue;
                };
                let only_tier = entry.locations.len() == 1 && entry.locations.contains_key(&tier);
                let right = expected.get(&entry.name) == Some(&entry.digest.to_hex());
                if only_tier && right && entry.deleted.is_none() {
                    let mut map = record.lock().unwrap_or_else(|e| e.into_inner());
                    map.entry(entry.name).or_insert_with(Instant::now);
                }
            }
        });
        Ok(Tracker {
            done,
            task,
            catalog,
            tier: tier.to_string(),
            expected,
        })
    }

    /// Reads `name`'s catalog entry directly and records it as arrived if it names only the
    /// tier, with the right digest: the watch (an ordered consumer) may miss an update, and an
    /// object the source no longer holds must then be confirmed, not waited for forever.
    async fn confirm(&self, bucket: &str, name: &str) -> bool {
        let Ok(Some(entry)) = self.catalog.get(bucket, name).await else {
            return false;
        };
        let ok = entry.locations.len() == 1
            && entry.locations.contains_key(&self.tier)
            && self.expected.get(name) == Some(&entry.digest.to_hex())
            && entry.deleted.is_none();
        if ok {
            let mut map = self.done.lock().unwrap_or_else(|e| e.into_inner());
            map.entry(name.to_string()).or_insert_with(Instant::now);
        }
        ok
    }

    fn snapshot(&self) -> HashMap<String, Instant> {
        self.done.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Prepared {
    fn names(&self) -> Vec<String> {
        (0..self.digests.len())
            .map(|i| format!("o-{i:06}"))
            .collect()
    }

    fn expected(&self) -> HashMap<String, String> {
        self.names()
            .into_iter()
            .zip(self.digests.iter().cloned())
            .collect()
    }

    /// Times the stage once, verifies what arrived, and returns the run. Restore runs may be
    /// repeated on the same preparation (the hub bucket is deleted first, not timed).
    pub async fn run(&mut self, env: &Env, set: &DataSet) -> anyhow::Result<Run> {
        self.extra_rows.clear();
        anyhow::ensure!(
            set.files.len() == self.digests.len(),
            "data set changed since set-up"
        );
        self.runs += 1;
        let label = format!("{}-{}", self.bucket, self.runs);
        match self.stage {
            Stage::Upload => self.run_upload(env, set, &label).await,
            Stage::Replicate => self.run_replicate(env, set, &label).await,
            Stage::Restore => self.run_restore(env, set, &label).await,
        }
        .with_context(|| {
            format!(
                "{} of {} × {} B",
                self.stage.name(),
                set.files.len(),
                set.size
            )
        })
    }

    async fn run_upload(&self, env: &Env, set: &DataSet, label: &str) -> anyhow::Result<Run> {
        let hub = hub_tier(env).await?;
        let tracker = Tracker::start(env, &self.bucket, "s3", self.expected()).await?;
        let mut roles = Roles { procs: Vec::new() };
        roles
            .spawn(env, "upload", "cim-gateway", "upload", &self.config, label)
            .await?;
        let start = Instant::now();
        roles
            .spawn(env, "manager", "cim-storage", "run", &self.config, label)
            .await?;
        let waited = self.wait_done(&tracker, &roles, &hub, true).await;
        let procs = roles.stop();
        let done = waited?;
        ensure_empty(&hub, &self.bucket).await?;
        self.finish(env, set, start, &done, Vec::new(), procs).await
    }

    /// Also measures, for issue 8's item 7, when each object reached the hub (polled like the
    /// leaf): row `replicate sourcing` (from the first put until the hub holds every object, with
    /// our roles running) and row `replicate settle` (per object, from the hub holding it to
    /// verified and evicted from the leaf; its run's time runs from sourcing caught up to the
    /// last eviction).
    async fn run_replicate(
        &mut self,
        env: &Env,
        set: &DataSet,
        label: &str,
    ) -> anyhow::Result<Run> {
        let (leaf, hub) = (leaf_tier(env).await?, hub_tier(env).await?);
        let tracker = Tracker::start(env, &self.bucket, "hub", self.expected()).await?;
        let mut roles = Roles { procs: Vec::new() };
        roles
            .spawn(env, "mirror", "cim-storage", "mirror", &self.config, label)
            .await?;
        roles
            .spawn(env, "manager", "cim-storage", "run", &self.config, label)
            .await?;
        cim_tests::wait_until(
            "the hub sourcing the leaf bucket",
            Duration::from_secs(60),
            || async { hub.stream_exists(&self.bucket).await.unwrap_or(false) },
        )
        .await?;
        let arrivals = Arrivals::watch(hub.clone(), &self.bucket, self.names().len());
        let start = Instant::now();
        let store = leaf.ensure_bucket(&self.bucket).await?;
        let put_started = put_timed(&store, set, self.concurrency).await?;
        let waited = self.wait_done(&tracker, &roles, &leaf, false).await;
        let procs = roles.stop();
        let done = waited?;
        let sourced = arrivals.stop();
        ensure_empty(&leaf, &self.bucket).await?;
        self.extra_rows = sourcing_rows(set, start, &put_started, &sourced, &done, &self.bucket);
        self.finish(env, set, start, &done, put_started, procs)
            .await
    }

    /// Rows measured besides the stage's own by the last run (see [`Prepared::run_replicate`]).
    pub fn take_extra_rows(&mut self) -> Vec<(&'static str, Run)> {
        std::mem::take(&mut self.extra_rows)
    }

    /// Waits until every object is done: its catalog entry names only the destination (the
    /// tracker) and its meta is gone from `source` (evicted; polled, so an object's end time
    /// is the first poll that saw both). Fails on a role exiting, a stall, or (with
    /// `vanish_check`) an object dropped from `source` before it arrived (checked every 2 s).
    async fn wait_done(
        &self,
        tracker: &Tracker,
        roles: &Roles,
        source: &JetStreamTier,
        vanish_check: bool,
    ) -> anyhow::Result<HashMap<String, Instant>> {
        let names = self.names();
        let subjects: Vec<String> = names
            .iter()
            .map(|n| cim_tiering::jetstream::meta_subject(&self.bucket, n))
            .collect();
        // Polling costs the roles CPU: slower for big sets (100 ms + 20 µs per object).
        let poll = Duration::from_millis(100) + Duration::from_micros(20) * names.len() as u32;
        let mut done: HashMap<String, Instant> = HashMap::new();
        let (mut last_progress, mut last_check) = (Instant::now(), Instant::now());
        let mut suspects = HashSet::new();
        loop {
            // A failed poll (a leader election, say) is only a poll that saw nothing new.
            let on_source = match meta_subjects(source, &self.bucket).await {
                Ok(subjects) => subjects,
                Err(_) => subjects.iter().cloned().collect(),
            };
            // Gone from the source but not seen arriving: ask the catalog directly once the
            // watch has had a poll to catch up (it may have missed the update).
            if last_progress.elapsed() >= poll * 5 {
                let unseen = tracker.snapshot();
                for (name, subject) in names.iter().zip(&subjects) {
                    if !unseen.contains_key(name) && !on_source.contains(subject) {
                        tracker.confirm(&self.bucket, name).await;
                    }
                }
            }
            let arrived = tracker.snapshot();
            let now = Instant::now();
            for (name, subject) in names.iter().zip(&subjects) {
                if !done.contains_key(name)
                    && arrived.contains_key(name)
                    && !on_source.contains(subject)
                {
                    done.insert(name.clone(), now);
                    last_progress = now;
                }
            }
            if done.len() >= names.len() {
                return Ok(done);
            }
            roles.check_running()?;
            let missing: Vec<&String> = names.iter().filter(|n| !done.contains_key(*n)).collect();
            if vanish_check && last_check.elapsed() >= Duration::from_secs(2) {
                last_check = Instant::now();
                suspects = self
                    .check_vanished(source, tracker, &missing, &suspects)
                    .await?;
            }
            if last_progress.elapsed() >= STALL_TIMEOUT {
                anyhow::bail!(
                    "no progress for {STALL_TIMEOUT:?}: {} of {} objects not done, first {:?}; logs:\n{}",
                    missing.len(),
                    names.len(),
                    &missing[..missing.len().min(10)],
                    roles.log_tail()
                );
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// An object missing from the source listing that has not arrived either was dropped
    /// behind the bench's back (listing first: an object leaves the source only after its
    /// destination copy is recorded). It must be missing from two listings in a row (2 s
    /// apart), as a replica's listing may lag. Returns the objects missing from this listing.
    async fn check_vanished(
        &self,
        tier: &JetStreamTier,
        tracker: &Tracker,
        missing: &[&String],
        suspects: &HashSet<String>,
    ) -> anyhow::Result<HashSet<String>> {
        let Ok(listing) = tier.list_objects(&self.bucket).await else {
            return Ok(HashSet::new());
        };
        let present: HashSet<String> = listing.objects.into_iter().map(|o| o.info.name).collect();
        let done = tracker.snapshot();
        let absent: HashSet<String> = missing
            .iter()
            .filter(|n| !present.contains(n.as_str()) && !done.contains_key(n.as_str()))
            .map(|n| n.to_string())
            .collect();
        let mut gone: Vec<&String> = absent.intersection(suspects).collect();
        gone.sort();
        anyhow::ensure!(
            gone.is_empty(),
            "object(s) {gone:?} of bucket {} vanished from the {} before reaching the destination",
            self.bucket,
            tier.name()
        );
        Ok(absent)
    }

    async fn run_restore(&self, env: &Env, set: &DataSet, label: &str) -> anyhow::Result<Run> {
        let hub = hub_tier(env).await?;
        // A repeat restores into an empty hub again (not timed).
        if hub.stream_exists(&self.bucket).await? {
            hub.context().delete_object_store(&self.bucket).await?;
        }
        let log = env.topology.dir().join(format!("{label}-restore.log"));
        let start = Instant::now();
        let (status, usage) = self.restore_process(&log).await?;
        let elapsed = start.elapsed();
        let output = cim_tests::tail_file(&log, 40);
        // Untimed: every replica up to date before reading back. async-nats' `get` may be
        // served by the one replica the restore's acknowledgements did not wait for, and ends
        // early there ("wrong digest": once in a default run, Nov 2026).
        super::raw_nats::settle(env, hub.context(), &self.bucket).await?;
        let verified = self.verify_hub(&hub).await;
        match (verified, status.success()) {
            (Ok(()), true) => {}
            (Err(e), _) => {
                return Err(e.context(format!("restore exited {status}; output:\n{output}")))
            }
            (Ok(()), false) => anyhow::bail!("restore exited {status}; output:\n{output}"),
        }
        let stored = stored_bytes(env, &self.prefix).await?;
        Ok(Run {
            logical_bytes: set.bytes(),
            stored_bytes: stored,
            objects: set.files.len() as u64,
            elapsed,
            latencies: Vec::new(),
            procs: vec![usage],
        })
    }

    /// Runs `cim-gateway restore --bucket B --all` to its end, output to `log` (a file, so a
    /// chatty child never blocks on a full pipe).
    async fn restore_process(
        &self,
        log: &Path,
    ) -> anyhow::Result<(std::process::ExitStatus, ProcUsage)> {
        let out = std::fs::File::create(log).with_context(|| log.display().to_string())?;
        let mut child = tokio::process::Command::new(cim_bin("cim-gateway"))
            .args(["restore", "--config"])
            .arg(&self.config)
            .args(["--bucket", &self.bucket, "--all"])
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .context("spawn cim-gateway restore")?;
        procs::sample_until_exit("restore", &mut child).await
    }

    /// Reads every object back from the hub and compares its SHA-256 with the data set's.
    ///
    /// With the product's reader (batched direct gets), not async-nats' `get`: that one opens an
    /// ordered consumer per object, and nats-server 2.15 allows a stream 1,000 consumers by
    /// default — reading back 5,000 small objects hit it before the first consumers expired.
    async fn verify_hub(&self, hub: &JetStreamTier) -> anyhow::Result<()> {
        let names = self.names();
        futures::stream::iter(names.iter().zip(&self.digests))
            .map(|(name, want)| async move {
                let want = cim_tiering::digest::Sha256Digest::from_hex(want)
                    .with_context(|| format!("the data set's digest of {name}"))?;
                // The meta is read with a direct get, which any replica may answer: one that
                // lags the quorum that acknowledged the restore says "not found" for a moment.
                // Asked again for a few seconds before it counts.
                let mut tries = 0;
                let info = loop {
                    match hub.info(&self.bucket, name).await {
                        Ok(Some(info)) => break info,
                        Ok(None) | Err(_) if tries < 50 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Ok(None) => {
                            anyhow::bail!("object {name} is not on the hub 5 s after restore")
                        }
                        Err(e) => return Err(anyhow::Error::new(e).context(format!("read {name}"))),
                    }
                };
                hub.read_verified(
                    &self.bucket,
                    &info,
                    self.size,
                    &want,
                    &mut tokio::io::sink(),
                )
                .await
                .with_context(|| {
                    format!("object {name}: restored content differs or unreadable")
                })?;
                Ok(())
            })
            .buffer_unordered(self.concurrency)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Builds the run from the completion times; `put_started` gives per-object start times
    /// (replicate), otherwise every object starts with the clock.
    async fn finish(
        &self,
        env: &Env,
        set: &DataSet,
        start: Instant,
        done: &HashMap<String, Instant>,
        put_started: Vec<(String, Instant)>,
        procs: Vec<ProcUsage>,
    ) -> anyhow::Result<Run> {
        let started: HashMap<String, Instant> = put_started.into_iter().collect();
        let latencies = done
            .iter()
            .map(|(name, end)| end.saturating_duration_since(*started.get(name).unwrap_or(&start)))
            .collect();
        let end = done.values().max().copied().unwrap_or(start);
        let stored = match self.stage {
            Stage::Replicate => 0,
            _ => stored_bytes(env, &self.prefix).await?,
        };
        Ok(Run {
            logical_bytes: set.bytes(),
            stored_bytes: stored,
            objects: set.files.len() as u64,
            elapsed: end.saturating_duration_since(start),
            latencies,
            procs,
        })
    }

    /// Turns an upload just run into a restore of the same objects (for `small`).
    pub fn into_restore(mut self) -> Prepared {
        self.stage = Stage::Restore;
        self
    }

    /// Deletes the run's NATS buckets (hub, and leaf for replicate). The S3 prefix is kept.
    pub async fn cleanup(self, env: &Env) -> anyhow::Result<()> {
        for tier in [hub_tier(env).await?, leaf_tier(env).await?] {
            if tier.stream_exists(&self.bucket).await.unwrap_or(false) {
                tier.context()
                    .delete_object_store(&self.bucket)
                    .await
                    .with_context(|| format!("delete bucket {} on {}", self.bucket, tier.name()))?;
            }
        }
        Ok(())
    }
}

/// Fails unless `bucket` on `tier` lists no live object (the stage evicted them all).
async fn ensure_empty(tier: &JetStreamTier, bucket: &str) -> anyhow::Result<()> {
    let left = tier.list_objects(bucket).await?.objects;
    if let Some(first) = left.first() {
        anyhow::bail!(
            "{} object(s) still on the {} after the move, e.g. {}",
            left.len(),
            tier.name(),
            first.info.name
        );
    }
    Ok(())
}

/// The meta subjects of `bucket` on `tier` that hold a message (one stream-info request): an
/// evicted object's subject holds none.
async fn meta_subjects(tier: &JetStreamTier, bucket: &str) -> anyhow::Result<HashSet<String>> {
    let stream = tier
        .context()
        .get_stream(cim_tiering::jetstream::stream_name(bucket))
        .await
        .with_context(|| format!("stream of bucket {bucket} on the {}", tier.name()))?;
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(format!("$O.{bucket}.M.>"))
        .await?
        .try_collect()
        .await?;
    Ok(subjects.into_iter().map(|(s, _)| s).collect())
}

/// When each object of a bucket first showed up on a tier, polled (one stream-info request per
/// poll, as [`Prepared::wait_done`] polls the source) by a background task.
struct Arrivals {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Arrivals {
    fn watch(tier: JetStreamTier, bucket: &str, objects: usize) -> Arrivals {
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let (record, bucket) = (seen.clone(), bucket.to_string());
        let poll = Duration::from_millis(100) + Duration::from_micros(20) * objects as u32;
        let task = tokio::spawn(async move {
            loop {
                if let Ok(subjects) = meta_subjects(&tier, &bucket).await {
                    let now = Instant::now();
                    let mut map = record.lock().unwrap_or_else(|e| e.into_inner());
                    for subject in subjects {
                        map.entry(subject).or_insert(now);
                    }
                }
                tokio::time::sleep(poll).await;
            }
        });
        Arrivals { seen, task }
    }

    /// First-seen times by meta subject.
    fn stop(self) -> HashMap<String, Instant> {
        self.task.abort();
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// `replicate sourcing` and `replicate settle` of one replicate run (see
/// [`Prepared::run_replicate`]); empty when an object was never seen on the hub (evicted from the
/// leaf between two polls of the hub cannot happen: eviction waits for the hub copy, which the
/// next poll sees — but a poll can fail, so this stays honest rather than guessing).
fn sourcing_rows(
    set: &DataSet,
    start: Instant,
    put_started: &[(String, Instant)],
    sourced: &HashMap<String, Instant>,
    done: &HashMap<String, Instant>,
    bucket: &str,
) -> Vec<(&'static str, Run)> {
    let mut on_hub = Vec::new();
    for (name, put) in put_started {
        let subject = cim_tiering::jetstream::meta_subject(bucket, name);
        let (Some(at), Some(end)) = (sourced.get(&subject), done.get(name)) else {
            return Vec::new();
        };
        on_hub.push((*put, *at, *end));
    }
    let Some(caught_up) = on_hub.iter().map(|(_, at, _)| *at).max() else {
        return Vec::new();
    };
    let last_done = on_hub
        .iter()
        .map(|(_, _, end)| *end)
        .max()
        .unwrap_or(caught_up);
    let run = |elapsed: Duration, latencies: Vec<Duration>| Run {
        logical_bytes: set.bytes(),
        stored_bytes: 0,
        objects: set.files.len() as u64,
        elapsed,
        latencies,
        procs: Vec::new(),
    };
    vec![
        (
            "replicate sourcing",
            run(
                caught_up.saturating_duration_since(start),
                on_hub
                    .iter()
                    .map(|(put, at, _)| at.saturating_duration_since(*put))
                    .collect(),
            ),
        ),
        (
            "replicate settle",
            run(
                last_done.saturating_duration_since(caught_up),
                on_hub
                    .iter()
                    .map(|(_, at, end)| end.saturating_duration_since(*at))
                    .collect(),
            ),
        ),
    ]
}

/// Leaf → hub sourcing with none of our roles running (issue 8's item 7 compares `replicate
/// sourcing` with it): a bucket created on the leaf and sourced by the hub, the set put on the
/// leaf `concurrency` at a time, timed from the first put until the hub holds every object's
/// meta. Both buckets are deleted afterwards.
pub async fn sourcing_alone(
    env: &Env,
    set: &DataSet,
    cell: &str,
    concurrency: usize,
) -> anyhow::Result<Run> {
    let bucket = format!("b-{}", sanitize(cell));
    let (leaf, hub) = (leaf_tier(env).await?, hub_tier(env).await?);
    let store = leaf.ensure_bucket(&bucket).await?;
    hub.ensure_sourced_from(&bucket, &leaf).await?;
    let result = async {
        let start = Instant::now();
        let arrivals = Arrivals::watch(hub.clone(), &bucket, set.files.len());
        let put_started = put_timed(&store, set, concurrency).await?;
        let subjects: Vec<String> = put_started
            .iter()
            .map(|(n, _)| cim_tiering::jetstream::meta_subject(&bucket, n))
            .collect();
        let deadline = Instant::now() + STALL_TIMEOUT;
        let seen = loop {
            let seen = arrivals
                .seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if subjects.iter().all(|s| seen.contains_key(s)) {
                break seen;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "sourcing alone: the hub holds {} of {} objects after {STALL_TIMEOUT:?}",
                subjects.iter().filter(|s| seen.contains_key(*s)).count(),
                subjects.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        arrivals.stop();
        let ends: Vec<Instant> = subjects
            .iter()
            .filter_map(|s| seen.get(s).copied())
            .collect();
        let end = ends.iter().max().copied().unwrap_or(start);
        Ok(Run {
            logical_bytes: set.bytes(),
            stored_bytes: 0,
            objects: set.files.len() as u64,
            elapsed: end.saturating_duration_since(start),
            latencies: put_started
                .iter()
                .zip(&ends)
                .map(|((_, put), end)| end.saturating_duration_since(*put))
                .collect(),
            procs: Vec::new(),
        })
    }
    .await;
    for tier in [&hub, &leaf] {
        if tier.stream_exists(&bucket).await.unwrap_or(false) {
            let _ = tier.context().delete_object_store(&bucket).await;
        }
    }
    result
}

/// Sum of the sizes of the blobs under `prefix` on S3 (ListObjectsV2), what the service stores.
pub async fn stored_bytes(env: &Env, prefix: &str) -> anyhow::Result<u64> {
    let client = env.s3.client();
    let mut pages = client
        .list_objects_v2()
        .bucket(&env.s3.bucket)
        .prefix(cim_gateway::format::blobs_prefix(prefix))
        .into_paginator()
        .send();
    let mut total = 0u64;
    while let Some(page) = pages.next().await {
        let page = page.context("list the S3 prefix")?;
        total += page
            .contents()
            .iter()
            .map(|o| o.size().unwrap_or(0).max(0) as u64)
            .sum::<u64>();
    }
    Ok(total)
}

/// `small`: the set through upload, then the same objects back through restore.
pub async fn small(
    env: &Env,
    set: &DataSet,
    cell: &str,
    concurrency: usize,
) -> anyhow::Result<(Run, Run)> {
    let mut prepared = prepare(env, Stage::Upload, set, cell, concurrency).await?;
    let up = prepared.run(env, set).await?;
    let mut prepared = prepared.into_restore();
    let down = prepared.run(env, set).await?;
    prepared.cleanup(env).await?;
    Ok((up, down))
}
