//! State the roles share in NATS rather than in one process's memory: who is running and how
//! it is doing (heartbeats), and what one-shot commands did (cumulative counters).
//!
//! # Layout: the KV bucket [`STATUS_BUCKET`] on the control plane (beside `cim_catalog`)
//!
//! - `hb.<role>.<instance>`: a [`Heartbeat`] (JSON) that every long-running role rewrites every
//!   [`HEARTBEAT_EVERY`], each write with a per-message TTL of [`HEARTBEAT_TTL`] (`Nats-TTL`,
//!   the server's clock): the entry of a role that died disappears within that, and a role that
//!   stops cleanly deletes its own at once.
//! - [`RESTORE_COUNTERS`] (`counters.restore`): [`Counters`] (JSON), what every `cim-gateway
//!   restore` run added up so far, by tier and outcome; each run adds its own by compare-and-set
//!   when it ends. The manager exports them on its endpoint, so `cim_restore_objects_total` and
//!   `cim_restore_bytes_total` stay visible after the command is gone. No TTL.
//!
//! - [`summary::SUMMARY_KEY`] (`summary.manager`): the manager's [`summary::ManagerSummary`] of
//!   its last pass — what each tier holds per bucket, each policy's backlog. No TTL.
//!
//! `cim-storage status` ([`report`]) reads these keys: it works from any host that reaches NATS.
//!
//! What a heartbeat says about the role's health comes from [`succeeded`] and [`failed`], which
//! the role's loops call (process-wide, like the metrics facade).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use async_nats::HeaderMap;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::error::Error;

pub mod report;
pub mod summary;

pub use summary::{record_summary, Held, ManagerSummary, PolicyBacklog};

/// The KV bucket holding heartbeats and counters.
pub const STATUS_BUCKET: &str = "cim_status";
/// How often a long-running role rewrites its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// A heartbeat not rewritten for this long expires (three beats: one lost write is no death).
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(15);
/// The key of the restore runs' cumulative counters.
pub const RESTORE_COUNTERS: &str = "counters.restore";
/// How many of a role's last errors its heartbeat carries.
pub const RECENT_ERRORS: usize = 5;
/// Deadline of each request to the status bucket.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Compare-and-set attempts when adding counters (each loses only to another writer's add).
const CAS_ATTEMPTS: usize = 10;

/// One role's heartbeat: who it is and how it is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// `manager`, `mirror`, `upload`.
    pub role: String,
    /// This process's id (unique per start).
    pub instance: String,
    /// The host it runs on.
    pub host: String,
    /// Its process id there.
    pub pid: u32,
    /// The cim version.
    pub version: String,
    /// When the process started.
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    /// When this heartbeat was written.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The role's last success (a manager pass, a work item done), if any yet.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_success: Option<OffsetDateTime>,
    /// The role's last error, if any.
    #[serde(default)]
    pub last_error: Option<LastError>,
    /// Its last [`RECENT_ERRORS`] errors, oldest first (the last one is `last_error`).
    #[serde(default)]
    pub recent_errors: Vec<LastError>,
    /// Managers only: whether this one leads (plans) now, or stands by (see
    /// [`crate::manager::leader`]). Absent for the other roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<bool>,
}

/// The last error a role met.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastError {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// What, on one line.
    pub reason: String,
}

/// Cumulative counters of one-shot runs: objects by tier and outcome, bytes by tier.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    /// Runs that added to these counters.
    pub runs: u64,
    /// Objects by tier, then outcome (`restored`, `skipped`, `failed`).
    pub objects: BTreeMap<String, BTreeMap<String, u64>>,
    /// Bytes by tier.
    pub bytes: BTreeMap<String, u64>,
}

impl Counters {
    /// Counts one object of `tier` with `outcome` and `bytes`.
    pub fn count(&mut self, tier: &str, outcome: &str, bytes: u64) {
        *self
            .objects
            .entry(tier.to_string())
            .or_default()
            .entry(outcome.to_string())
            .or_default() += 1;
        if bytes > 0 {
            *self.bytes.entry(tier.to_string()).or_default() += bytes;
        }
    }

    /// Adds `other` to these counters, runs included.
    pub fn add(&mut self, other: &Counters) {
        self.runs += other.runs;
        for (tier, outcomes) in &other.objects {
            let mine = self.objects.entry(tier.clone()).or_default();
            for (outcome, n) in outcomes {
                *mine.entry(outcome.clone()).or_default() += n;
            }
        }
        for (tier, n) in &other.bytes {
            *self.bytes.entry(tier.clone()).or_default() += n;
        }
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty() && self.bytes.is_empty()
    }
}

/// What this process recorded for its heartbeat and its run's counters.
struct Record {
    last_success: Option<OffsetDateTime>,
    last_error: Option<LastError>,
    recent_errors: Vec<LastError>,
    leader: Option<bool>,
    restore: Counters,
    /// The manager's last summary, and whether the heartbeat task wrote it yet.
    summary: Option<(ManagerSummary, bool)>,
}

fn record() -> std::sync::MutexGuard<'static, Record> {
    static RECORD: Mutex<Record> = Mutex::new(Record {
        last_success: None,
        last_error: None,
        recent_errors: Vec::new(),
        leader: None,
        restore: Counters {
            runs: 0,
            objects: BTreeMap::new(),
            bytes: BTreeMap::new(),
        },
        summary: None,
    });
    // A poisoned lock only means a panic elsewhere while recording; the record is still usable.
    RECORD.lock().unwrap_or_else(|e| e.into_inner())
}

/// The role succeeded at its work just now (a manager pass, a work item done).
pub fn succeeded() {
    record().last_success = Some(OffsetDateTime::now_utc());
}

/// The role failed at its work just now, for `reason`.
pub fn failed(reason: impl std::fmt::Display) {
    let reason = reason.to_string();
    let error = LastError {
        at: OffsetDateTime::now_utc(),
        reason: reason.split_whitespace().collect::<Vec<_>>().join(" "),
    };
    let mut record = record();
    if record.recent_errors.len() == RECENT_ERRORS {
        record.recent_errors.remove(0);
    }
    record.recent_errors.push(error.clone());
    record.last_error = Some(error);
}

/// This manager leads now (`true`) or stands by (`false`); said in its heartbeat.
pub fn leading(leader: bool) {
    record().leader = Some(leader);
}

/// A restore in this process ended for one object of `tier` with `outcome`, writing `bytes`;
/// added to the shared counters by [`StatusBucket::add_restore_counters`] when the run ends.
pub fn restore_counted(tier: &str, outcome: &str, bytes: u64) {
    record().restore.count(tier, outcome, bytes);
}

/// What this process counted with [`restore_counted`], as one run (taken: counted once).
pub fn take_restore_counters() -> Counters {
    let mut counters = std::mem::take(&mut record().restore);
    counters.runs = 1;
    counters
}

/// The status bucket.
#[derive(Clone)]
pub struct StatusBucket {
    kv: kv::Store,
    js: jetstream::Context,
}

fn status_error(op: &'static str, key: &str, source: impl std::fmt::Display) -> Error {
    Error::Status {
        op,
        key: key.to_string(),
        source: source.to_string().into(),
    }
}

async fn deadline<T, E: std::fmt::Display>(
    op: &'static str,
    key: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    match tokio::time::timeout(REQUEST_DEADLINE, fut).await {
        Ok(result) => result.map_err(|e| status_error(op, key, e)),
        Err(_) => Err(status_error(
            op,
            key,
            format!("no answer within {REQUEST_DEADLINE:?}"),
        )),
    }
}

impl StatusBucket {
    /// Opens the status bucket on the control plane `js`, creating it (with `replicas`, and
    /// per-message TTLs allowed) if needed.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<StatusBucket, Error> {
        let kv = crate::jetstream::kv::open_or_create(
            js,
            kv::Config {
                bucket: STATUS_BUCKET.to_string(),
                description: "cim status: role heartbeats, one-shot commands' counters".into(),
                history: 1,
                num_replicas: replicas,
                // Allows per-message TTLs (heartbeats); an expired heartbeat leaves a delete
                // marker for this long, so watchers see it go.
                limit_markers: Some(HEARTBEAT_TTL),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| status_error("open", STATUS_BUCKET, e))?;
        Ok(StatusBucket { kv, js: js.clone() })
    }

    /// Opens the status bucket on `js` if it exists: a read-only caller (`status`) creates
    /// nothing, and tells "no role ever ran here" from a failure.
    pub async fn open_existing(js: &jetstream::Context) -> Result<Option<StatusBucket>, Error> {
        use jetstream::context::GetStreamErrorKind;
        let exists = deadline("open", STATUS_BUCKET, async {
            match js.get_stream(format!("KV_{STATUS_BUCKET}")).await {
                Ok(_) => Ok(true),
                Err(e) => match e.kind() {
                    GetStreamErrorKind::JetStream(js)
                        if crate::jetstream::is_stream_not_found(&js) =>
                    {
                        Ok(false)
                    }
                    _ => Err(e),
                },
            }
        })
        .await?;
        if !exists {
            return Ok(None);
        }
        let kv = deadline("open", STATUS_BUCKET, js.get_key_value(STATUS_BUCKET)).await?;
        Ok(Some(StatusBucket { kv, js: js.clone() }))
    }

    /// The heartbeat key of `role`'s `instance`.
    pub fn heartbeat_key(role: &str, instance: &str) -> String {
        format!("hb.{role}.{instance}")
    }

    /// Writes `beat` under its key with the TTL [`HEARTBEAT_TTL`].
    pub async fn beat(&self, beat: &Heartbeat) -> Result<(), Error> {
        let key = Self::heartbeat_key(&beat.role, &beat.instance);
        let payload = serde_json::to_vec(beat).map_err(|e| status_error("encode", &key, e))?;
        // kv::Store has no put with a TTL (only create); a KV put is a publish on the key's
        // subject, so publish with the TTL header ourselves.
        let mut headers = HeaderMap::new();
        headers.insert("Nats-TTL", HEARTBEAT_TTL.as_secs().to_string().as_str());
        let subject = format!("$KV.{STATUS_BUCKET}.{key}");
        let ack = deadline(
            "write",
            &key,
            self.js
                .publish_with_headers(subject, headers, payload.into()),
        )
        .await?;
        deadline("write", &key, std::future::IntoFuture::into_future(ack)).await?;
        Ok(())
    }

    /// The heartbeat at `key`, if it is there and has not expired.
    pub async fn heartbeat(&self, key: &str) -> Result<Option<Heartbeat>, Error> {
        let value = deadline("read", key, self.kv.get(key)).await?;
        // An expired entry may read as its (empty) delete marker.
        Ok(value.and_then(|v| serde_json::from_slice(&v).ok()))
    }

    /// The keys of the heartbeats there now (`hb.<role>.<instance>`).
    pub async fn heartbeat_keys(&self) -> Result<Vec<String>, Error> {
        use futures::TryStreamExt;
        let keys = deadline("list", "hb.>", self.kv.keys()).await?;
        let keys: Vec<String> = deadline("list", "hb.>", keys.try_collect()).await?;
        Ok(keys.into_iter().filter(|k| k.starts_with("hb.")).collect())
    }

    /// Removes a heartbeat (a role stopping cleanly).
    pub async fn remove(&self, key: &str) -> Result<(), Error> {
        deadline("remove", key, self.kv.purge(key)).await
    }

    /// The restore runs' cumulative counters (empty when none ran yet).
    pub async fn restore_counters(&self) -> Result<Counters, Error> {
        let value = deadline("read", RESTORE_COUNTERS, self.kv.get(RESTORE_COUNTERS)).await?;
        match value {
            Some(v) if !v.is_empty() => {
                serde_json::from_slice(&v).map_err(|e| status_error("decode", RESTORE_COUNTERS, e))
            }
            _ => Ok(Counters::default()),
        }
    }

    /// Adds `run` to the restore counters by compare-and-set: concurrent runs each add theirs.
    pub async fn add_restore_counters(&self, run: &Counters) -> Result<(), Error> {
        let key = RESTORE_COUNTERS;
        for _ in 0..CAS_ATTEMPTS {
            let entry = deadline("read", key, self.kv.entry(key)).await?;
            let (mut total, revision) = match &entry {
                Some(e) if e.operation == kv::Operation::Put && !e.value.is_empty() => (
                    serde_json::from_slice::<Counters>(&e.value)
                        .map_err(|err| status_error("decode", key, err))?,
                    Some(e.revision),
                ),
                _ => (Counters::default(), entry.as_ref().map(|e| e.revision)),
            };
            total.add(run);
            let value = serde_json::to_vec(&total).map_err(|e| status_error("encode", key, e))?;
            let written = match revision {
                Some(revision) => tokio::time::timeout(
                    REQUEST_DEADLINE,
                    self.kv.update(key, value.into(), revision),
                )
                .await
                .map(|r| r.map(|_| ()).map_err(|e| e.to_string())),
                None => tokio::time::timeout(REQUEST_DEADLINE, self.kv.create(key, value.into()))
                    .await
                    .map(|r| r.map(|_| ()).map_err(|e| e.to_string())),
            };
            match written {
                Ok(Ok(())) => return Ok(()),
                // Another run added first (wrong last sequence), or no answer: read again.
                Ok(Err(_)) | Err(_) => continue,
            }
        }
        Err(status_error(
            "add",
            key,
            format!("compare-and-set lost {CAS_ATTEMPTS} times"),
        ))
    }
}

/// Opens the status bucket on `system`'s control plane in the background (retried as the
/// other buckets are at start-up; the role never waits for it) and writes `role`'s heartbeat
/// until `shutdown` ([`spawn_heartbeat`]); with `export_counters` (the manager) it also exports
/// the one-shot commands' counters ([`spawn_counter_export`]). If the bucket cannot be opened,
/// that is logged and the role works without a heartbeat. Await the handle after `shutdown`
/// ([`stop_heartbeat`]) so a clean stop removes the heartbeat before the process exits.
pub fn start_heartbeat(
    system: &crate::System,
    role: &'static str,
    shutdown: &CancellationToken,
    export_counters: bool,
) -> tokio::task::JoinHandle<()> {
    let js = system.control().clone();
    let replicas = system.config.nats.replicas;
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        let opened = tokio::select! {
            opened = crate::retry::retry("open status bucket", crate::retry::Backoff::STARTUP, || {
                StatusBucket::open(&js, replicas)
            }) => opened,
            _ = shutdown.cancelled() => return,
        };
        match opened {
            Ok(bucket) => {
                if export_counters {
                    spawn_counter_export(bucket.clone(), shutdown.clone());
                }
                let _ = spawn_heartbeat(bucket, role, shutdown).await;
            }
            Err(e) => tracing::warn!(error = %e, "no status bucket: this role writes no heartbeat"),
        }
    })
}

/// Waits (at most 2 s) for the heartbeat task of [`start_heartbeat`] to remove its entry after
/// the role's shutdown.
pub async fn stop_heartbeat(heartbeat: tokio::task::JoinHandle<()>) {
    let _ = tokio::time::timeout(Duration::from_secs(2), heartbeat).await;
}

/// Adds what this process's restore counted ([`restore_counted`]) to the shared counters
/// ([`RESTORE_COUNTERS`]), as one run. Failures are logged, not fatal: the run's own output and
/// exit status stand.
pub async fn record_restore_run(system: &crate::System) {
    let run = take_restore_counters();
    if run.is_empty() {
        return;
    }
    let added = match StatusBucket::open(system.control(), system.config.nats.replicas).await {
        Ok(bucket) => bucket.add_restore_counters(&run).await,
        Err(e) => Err(e),
    };
    if let Err(e) = added {
        tracing::warn!(error = %e, "this run's counters were not added to {RESTORE_COUNTERS}");
    }
}

/// How often the manager re-reads the one-shot commands' counters it exports.
pub const COUNTERS_EXPORT_EVERY: Duration = Duration::from_secs(5);

/// Exports the restore runs' cumulative counters ([`RESTORE_COUNTERS`]) as the manager's own
/// `cim_restore_objects_total` and `cim_restore_bytes_total` (absolute values), every
/// [`COUNTERS_EXPORT_EVERY`] until `shutdown`: what a one-shot command did stays visible on a
/// long-running role's endpoint after the command is gone.
pub fn spawn_counter_export(
    bucket: StatusBucket,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    use crate::metrics::{RESTORE_BYTES, RESTORE_OBJECTS};
    tokio::spawn(async move {
        let mut every = tokio::time::interval(COUNTERS_EXPORT_EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            match bucket.restore_counters().await {
                Ok(counters) => {
                    for (tier, outcomes) in &counters.objects {
                        for (outcome, n) in outcomes {
                            metrics::counter!(RESTORE_OBJECTS, "tier" => tier.clone(), "outcome" => outcome.clone())
                                .absolute(*n);
                        }
                    }
                    for (tier, n) in &counters.bytes {
                        metrics::counter!(RESTORE_BYTES, "tier" => tier.clone()).absolute(*n);
                    }
                }
                Err(e) => tracing::debug!(error = %e, "restore counters not read"),
            }
        }
    })
}

/// Writes `role`'s heartbeat every [`HEARTBEAT_EVERY`] until `shutdown`, then removes it.
/// A failed write is logged and tried again at the next beat (the entry may expire meanwhile:
/// that is what a role cut off from NATS looks like).
pub fn spawn_heartbeat(
    bucket: StatusBucket,
    role: &'static str,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let mut beat = Heartbeat {
        role: role.to_string(),
        instance: nuid::next().to_string(),
        host: crate::push::host_name(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started: OffsetDateTime::now_utc(),
        at: OffsetDateTime::now_utc(),
        last_success: None,
        last_error: None,
        recent_errors: Vec::new(),
        leader: None,
    };
    let key = StatusBucket::heartbeat_key(role, &beat.instance);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(HEARTBEAT_EVERY);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                _ = shutdown.cancelled() => break,
            }
            {
                let record = record();
                beat.last_success = record.last_success;
                beat.last_error = record.last_error.clone();
                beat.recent_errors = record.recent_errors.clone();
                beat.leader = record.leader;
            }
            beat.at = OffsetDateTime::now_utc();
            if let Err(e) = bucket.beat(&beat).await {
                tracing::warn!(error = %e, "heartbeat not written");
            }
            if let Some(summary) = summary::take_unwritten_summary() {
                if let Err(e) = bucket.write_summary(&summary).await {
                    tracing::warn!(error = %e, "manager summary not written");
                }
            }
        }
        if let Err(e) = bucket.remove(&key).await {
            tracing::debug!(error = %e, "heartbeat not removed; it expires");
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn counters_add_up_by_tier_and_outcome() {
        let mut run = Counters::default();
        run.count("hub", "restored", 10);
        run.count("hub", "restored", 5);
        run.count("hub", "failed", 0);
        run.runs = 1;
        let mut total = Counters::default();
        total.add(&run);
        total.add(&run);
        assert_eq!(total.runs, 2);
        assert_eq!(total.objects["hub"]["restored"], 4);
        assert_eq!(total.objects["hub"]["failed"], 2);
        assert_eq!(total.bytes["hub"], 30);
        let json = serde_json::to_string(&total).unwrap();
        assert_eq!(serde_json::from_str::<Counters>(&json).unwrap(), total);
    }

    #[test]
    fn a_heartbeat_round_trips() {
        let beat = Heartbeat {
            role: "upload".into(),
            instance: "abc".into(),
            host: "h".into(),
            pid: 1,
            version: "0.1.0".into(),
            started: OffsetDateTime::UNIX_EPOCH,
            at: OffsetDateTime::UNIX_EPOCH,
            last_success: None,
            last_error: Some(LastError {
                at: OffsetDateTime::UNIX_EPOCH,
                reason: "s3 down".into(),
            }),
            recent_errors: vec![LastError {
                at: OffsetDateTime::UNIX_EPOCH,
                reason: "s3 down".into(),
            }],
            leader: Some(true),
        };
        let json = serde_json::to_string(&beat).unwrap();
        assert_eq!(serde_json::from_str::<Heartbeat>(&json).unwrap(), beat);
    }
}
