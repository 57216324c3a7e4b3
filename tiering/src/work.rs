//! The work queue: how the storage manager hands work to the mirror and upload roles.
//!
//! Roles run in separate processes (separate NixOS containers in production) and talk only
//! through NATS. The manager publishes [`WorkItem`]s to a JetStream *work-queue* stream; each
//! role consumes its subjects with a durable pull consumer.
//!
//! - **One subject per object and step**:
//!   `cim.work.v<N>.<role>.<bucket>.<from>.<to>.<base64url(name)>` (a [`WorkItem::EnsureSource`]
//!   ends in the fixed token `source`), and the stream keeps at
//!   most one message per subject, refusing the rest (`max_msgs_per_subject: 1`, `discard: new`,
//!   `discard_new_per_subject`). So however long an object waits, and however often the manager
//!   re-evaluates it, it has at most one pending item per step: the queue is bounded by the
//!   number of objects, not by time. A publish refused that way is "already queued".
//! - Every item also carries a `Nats-Msg-Id`, so an item finished moments ago is not queued
//!   again within the stream's duplicate window.
//! - A worker acks only after the work is done and recorded; a worker killed mid-item leaves the
//!   message unacked and JetStream redelivers it after `ack_wait`. While a handler moves bytes
//!   (reported through [`Progress`]) the worker sends progress acks, however long it takes; a
//!   handler that moves nothing for `ack_wait` is abandoned (dropped), logged with its bucket
//!   and object, and retried. On shutdown in-flight handlers are dropped and their items
//!   released (nak) for redelivery at once, instead of being waited for.
//! - An item is never left in the stream undeliverable (that would block its subject for good):
//!   the consumer redelivers without limit and the worker itself terminates an item after
//!   `[work] max_deliver` failed deliveries; the manager queues it again after the window.
//! - **Versioned items.** An item carries its format version `N` ([`FORMAT_VERSION`]) in its
//!   subject and as `"v"` in its JSON. A role reads its own version and the one before (so roles
//!   can be upgraded before the manager), each version through its own durable consumer
//!   (`<role>-v<N>`, filter `cim.work.v<N>.<role>.>`; version 0 is the unversioned layout
//!   `cim.work.<role>.>` read by the consumer `<role>`). A work-queue stream refuses consumers
//!   whose filters overlap, which is why the version comes before the role. So an older role is
//!   never even delivered a newer item; one that reaches it anyway (a newer `"v"` on a subject
//!   it reads) is left for a newer role: never acked, never terminated. A payload that does not
//!   decode at all and states no newer version is garbage: terminated, logged and counted.
//! - Handlers are idempotent: an item may arrive twice (after the duplicate window, or after a
//!   crash between finishing and acking); each handler re-checks the current state first.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cim_policies::{Action, WorkConfig};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::digest::Sha256Digest;
use crate::error::Error;
use crate::metrics;
pub use crate::progress::Progress;
use crate::retry::{retry, Backoff};

/// Subject prefix of the work-queue stream.
pub const SUBJECT_PREFIX: &str = "cim.work";

/// How long the stream remembers message ids for de-duplication.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// The work-item format this version writes (subject `cim.work.v<N>.…`, JSON field `"v"`).
/// Version 0 is the unversioned layout of earlier releases (`cim.work.<role>.…`).
pub const FORMAT_VERSION: u32 = 1;

/// Formats a role reads: its own and the one before, so that a role upgraded before the
/// manager still serves the older manager's items.
pub const READ_VERSIONS: [u32; 2] = [FORMAT_VERSION - 1, FORMAT_VERSION];

/// How long a role leaves an item of a newer format before it is offered again (to a newer
/// role, if one runs, or back to this one).
const NEWER_ITEM_DELAY: Duration = Duration::from_secs(300);

/// Deadline of one ack, nak or progress ack sent to the server.
const ACK_DEADLINE: Duration = Duration::from_secs(2);

/// How long a stopping worker waits for its in-flight items to release themselves (nak);
/// well inside the 5 s in which a role must exit after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Last subject token of a [`WorkItem::EnsureSource`]. Never the base64url (no padding) of an
/// object name: a canonical encoding of six characters ends in a character whose low four bits
/// are zero, and `e` is not one.
const ENSURE_SOURCE_TOKEN: &str = "source";

/// The role that consumes an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Leaf → cluster: sets up sourcing, evicts leaf copies (`cim-storage mirror`).
    Mirror,
    /// Cluster → S3: uploads, verifies, evicts hub copies (`cim-gateway upload`).
    Upload,
}

impl Role {
    /// Name used in subjects, consumer names and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Mirror => "mirror",
            Role::Upload => "upload",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One version of one object to move from tier `from` to tier `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMove {
    /// The policy that asked for the move.
    pub policy: String,
    /// Source tier name.
    pub from: String,
    /// Destination tier name.
    pub to: String,
    /// Copy keeps the source copy; move evicts it once the destination is verified.
    pub action: Action,
    /// Object-store bucket.
    pub bucket: String,
    /// Object name.
    pub name: String,
    /// Size recorded at ingest.
    pub size: u64,
    /// Digest recorded at ingest.
    pub digest: Sha256Digest,
    /// The version (object-store nuid) the manager saw; a different current nuid means the
    /// object changed and the manager will re-evaluate it.
    pub nuid: String,
}

/// A unit of work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkItem {
    /// Make the `to` tier's bucket source the `from` tier's bucket of the same name.
    EnsureSource {
        /// The policy that asked.
        policy: String,
        /// Leaf tier.
        from: String,
        /// Cluster tier.
        to: String,
        /// Bucket name.
        bucket: String,
    },
    /// Verify the cluster copy of a leaf object and, for `move`, evict the leaf copy.
    LeafEvict(ObjectMove),
    /// Upload a cluster object to S3, verify it and, for `move`, evict the cluster copy.
    Upload(ObjectMove),
}

impl WorkItem {
    /// The role that handles this item.
    pub fn role(&self) -> Role {
        match self {
            WorkItem::EnsureSource { .. } | WorkItem::LeafEvict(_) => Role::Mirror,
            WorkItem::Upload(_) => Role::Upload,
        }
    }

    /// The bucket the item concerns.
    pub fn bucket(&self) -> &str {
        match self {
            WorkItem::EnsureSource { bucket, .. } => bucket,
            WorkItem::LeafEvict(m) | WorkItem::Upload(m) => &m.bucket,
        }
    }

    /// The object the item concerns; `None` for a whole-bucket item.
    pub fn object(&self) -> Option<&str> {
        match self {
            WorkItem::EnsureSource { .. } => None,
            WorkItem::LeafEvict(m) | WorkItem::Upload(m) => Some(&m.name),
        }
    }

    /// Subject the item is published on: one per object and step (see the module docs), so the
    /// stream's per-subject limit keeps at most one pending item for each.
    ///
    /// Every token is a valid subject token: bucket names are stream-name suffixes and tier
    /// names are `[A-Za-z0-9_-]+` (checked by the configuration), object names are base64url.
    pub fn subject(&self) -> String {
        let (from, to, last) = match self {
            WorkItem::EnsureSource { from, to, .. } => (from, to, ENSURE_SOURCE_TOKEN.to_string()),
            WorkItem::LeafEvict(m) | WorkItem::Upload(m) => {
                (&m.from, &m.to, URL_SAFE_NO_PAD.encode(&m.name))
            }
        };
        format!(
            "{}.{}.{from}.{to}.{last}",
            role_prefix(FORMAT_VERSION, self.role()),
            self.bucket()
        )
    }

    /// De-duplication id: the same logical work gets the same id.
    pub fn id(&self) -> String {
        match self {
            WorkItem::EnsureSource {
                from, to, bucket, ..
            } => {
                format!("ensure-source:{from}:{to}:{bucket}")
            }
            WorkItem::LeafEvict(m) | WorkItem::Upload(m) => format!(
                "{}:{}:{}:{}:{}:{}",
                self.role(),
                m.from,
                m.to,
                m.bucket,
                URL_SAFE_NO_PAD.encode(&m.name),
                m.nuid
            ),
        }
    }
}

/// An error a handler returns; the worker retries transient ones and terminates the others.
pub trait Retryable: fmt::Display + Send {
    /// True when retrying later may succeed.
    fn is_transient(&self) -> bool;
}

impl Retryable for Error {
    fn is_transient(&self) -> bool {
        Error::is_transient(self)
    }
}

/// Does the work of one role.
///
/// # Contract
/// - `handle` must be idempotent: it may be called again for an item that already succeeded
///   (redelivery after a crash) and must then succeed without repeating visible effects.
/// - It reports moved bytes to `progress` (wrap the transfer's reader or writer with
///   [`Progress::reader`]/[`Progress::writer`]). A handler that reports nothing for
///   `[work] ack_wait` is abandoned: its future is dropped and the item retried. So every step
///   that moves no data must finish within `ack_wait` (each has its own, shorter deadline).
/// - The future may be dropped at any await point (stall, shutdown): a drop must leave what a
///   SIGKILL there would leave, which a redelivered item finishes.
pub trait Handler: Send + Sync + 'static {
    /// The handler's error.
    type Error: Retryable;
    /// Performs one item.
    fn handle(
        &self,
        item: WorkItem,
        progress: Progress,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// The work-queue stream and its consumers.
#[derive(Clone)]
pub struct WorkQueue {
    js: jetstream::Context,
    config: WorkConfig,
}

impl WorkQueue {
    /// Opens the work-queue stream, creating it if needed, and brings a stream created by an
    /// older version to today's limits in place (see [`stream_config`]).
    pub async fn open(
        js: jetstream::Context,
        config: &WorkConfig,
        replicas: usize,
    ) -> Result<Self, Error> {
        let wanted = stream_config(&config.stream, replicas);
        let mut stream =
            js.get_or_create_stream(wanted.clone())
                .await
                .map_err(|e| Error::Work {
                    op: "create stream",
                    source: Box::new(e),
                })?;
        let current = stream
            .info()
            .await
            .map_err(|e| Error::Work {
                op: "stream info",
                source: Box::new(e),
            })?
            .config
            .clone();
        if let Some(updated) = upgraded(&current, &wanted) {
            // Subjects holding several items (an older version's per-bucket subjects) keep the
            // newest; the manager queues the rest again on its next pass.
            tracing::info!(stream = %config.stream, "updating the work stream to one pending item per object and step");
            js.update_stream(updated).await.map_err(|e| Error::Work {
                op: "update stream",
                source: Box::new(e),
            })?;
        }
        Ok(Self {
            js,
            config: config.clone(),
        })
    }

    /// Queues an item; returns false when it is already queued: an item for the same object and
    /// step is pending (refused by the per-subject limit), or the same item was queued within
    /// the duplicate window.
    pub async fn publish(&self, item: &WorkItem) -> Result<bool, Error> {
        let payload = encode(item).map_err(|e| Error::Work {
            op: "encode item",
            source: Box::new(e),
        })?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, item.id().as_str());
        let ack = self
            .js
            .publish_with_headers(item.subject(), headers, payload.into())
            .await
            .map_err(|e| Error::Work {
                op: "publish",
                source: Box::new(e),
            })?
            .await;
        match ack {
            Ok(ack) => Ok(!ack.duplicate),
            Err(e) if is_subject_full(&e) => Ok(false),
            Err(e) => Err(Error::Work {
                op: "publish ack",
                source: Box::new(e),
            }),
        }
    }

    /// `role`'s durable consumer of format `version`, created or updated to today's settings.
    async fn consumer(&self, role: Role, version: u32) -> Result<consumer::PullConsumer, Error> {
        let stream = self
            .js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| Error::Work {
                op: "open stream",
                source: Box::new(e),
            })?;
        // Create or update: a consumer an older version created gets today's settings.
        stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(consumer_name(role, version)),
                filter_subject: format!("{}.>", role_prefix(version, role)),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: self.config.ack_wait,
                // Unlimited here, bounded by the worker (see `after_failure`): an item the
                // server stopped delivering would stay in the stream and block its subject.
                max_deliver: -1,
                max_ack_pending: (self.config.concurrency * 4) as i64,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Work {
                op: "create consumer",
                source: Box::new(e),
            })
    }

    /// Items queued or in flight for `role`, in every format it reads.
    pub async fn backlog(&self, role: Role) -> Result<u64, Error> {
        let stream = self
            .js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| Error::Work {
                op: "open stream",
                source: Box::new(e),
            })?;
        let mut items = 0;
        for version in READ_VERSIONS {
            let info = stream
                .consumer_info(consumer_name(role, version))
                .await
                .map_err(|e| Error::Work {
                    op: "consumer info",
                    source: Box::new(e),
                })?;
            items += info.num_pending + info.num_ack_pending as u64;
        }
        Ok(items)
    }

    /// Consumes `role`'s items (every format in [`READ_VERSIONS`]) with at most `concurrency`
    /// in flight until `shutdown` fires. Then every in-flight handler is dropped and its item
    /// released (nak) for immediate redelivery, within [`SHUTDOWN_GRACE`].
    pub async fn run_worker<H: Handler>(
        &self,
        role: Role,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let mut consumers = Vec::new();
        for version in READ_VERSIONS {
            consumers.push(
                retry("create work consumer", Backoff::STARTUP, || {
                    self.consumer(role, version)
                })
                .await?,
            );
        }
        let worker = Worker {
            role,
            handler,
            permits: Arc::new(Semaphore::new(self.config.concurrency)),
            in_flight: Arc::default(),
            tracker: TaskTracker::new(),
            ack_wait: self.config.ack_wait,
            max_deliver: self.config.max_deliver,
        };
        tracing::info!(%role, concurrency = self.config.concurrency, versions = ?READ_VERSIONS, "worker started");

        // Refresh the backlog gauge now and then; it is what operators alert on.
        let gauge_task = {
            let queue = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                while !shutdown.is_cancelled() {
                    if let Ok(n) = queue.backlog(role).await {
                        metrics::work_backlog(role, n);
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
            })
        };

        futures::future::join_all(
            consumers
                .iter()
                .map(|consumer| worker.fetch_loop(consumer, &shutdown)),
        )
        .await;

        worker.tracker.close();
        if tokio::time::timeout(SHUTDOWN_GRACE, worker.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(%role, "in-flight items not released in time; they are redelivered after ack_wait");
        }
        gauge_task.abort();
        tracing::info!(%role, "worker stopped");
        Ok(())
    }
}

/// What the fetch loops of one role share.
struct Worker<H> {
    role: Role,
    handler: Arc<H>,
    /// Bounds the items in flight across all of the role's consumers.
    permits: Arc<Semaphore>,
    in_flight: Arc<Mutex<HashSet<String>>>,
    tracker: TaskTracker,
    ack_wait: Duration,
    max_deliver: i64,
}

impl<H: Handler> Worker<H> {
    /// Fetches from one consumer, handing each message to a task, until `shutdown`.
    async fn fetch_loop(&self, consumer: &consumer::PullConsumer, shutdown: &CancellationToken) {
        let role = self.role;
        loop {
            let permit = tokio::select! {
                permit = self.permits.clone().acquire_owned() => permit.expect("semaphore is never closed"),
                _ = shutdown.cancelled() => break,
            };
            let fetched = tokio::select! {
                batch = consumer.fetch().max_messages(1).expires(Duration::from_secs(2)).messages() => batch,
                _ = shutdown.cancelled() => break,
            };
            let mut batch = match fetched {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!(%role, error = %e, "fetch failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let next = tokio::select! {
                next = batch.next() => next,
                _ = shutdown.cancelled() => break,
            };
            let message = match next {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    tracing::warn!(%role, error = %e, "fetch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                None => continue,
            };
            let handler = self.handler.clone();
            let in_flight = self.in_flight.clone();
            let (ack_wait, max_deliver) = (self.ack_wait, self.max_deliver);
            let shutdown = shutdown.clone();
            self.tracker.spawn(async move {
                process(
                    role,
                    message,
                    handler,
                    in_flight,
                    ack_wait,
                    max_deliver,
                    shutdown,
                )
                .await;
                drop(permit);
            });
        }
    }
}

/// How an item's handling ended, short of the handler's own result.
enum Ended<E> {
    /// The handler returned.
    Finished(Result<(), E>),
    /// The handler made no progress for this long and was abandoned (its future dropped).
    Stalled(Duration),
    /// The role is shutting down; the handler was dropped.
    ShutDown,
}

async fn process<H: Handler>(
    role: Role,
    message: jetstream::Message,
    handler: Arc<H>,
    in_flight: Arc<Mutex<HashSet<String>>>,
    ack_wait: Duration,
    max_deliver: i64,
    shutdown: CancellationToken,
) {
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
    let item = match decode(&message.payload) {
        Decoded::Item(item) => item,
        Decoded::Newer(version) => {
            // Not ours to judge: a newer role reads it. Offered again later, never dropped.
            tracing::warn!(%role, subject = %message.subject, version, understood = FORMAT_VERSION, "work item of a newer format; leaving it for a newer role");
            metrics::work_item(role, "newer");
            reply(&message, AckKind::Nak(Some(NEWER_ITEM_DELAY))).await;
            return;
        }
        Decoded::Garbage(e) => {
            tracing::error!(%role, subject = %message.subject, error = %e, "undecodable work item; terminating it");
            metrics::work_item(role, "invalid");
            reply(&message, AckKind::Term).await;
            return;
        }
    };
    let id = item.id();
    // The same logical item twice in one process (one an older manager queued on its per-bucket
    // subject, say) waits instead of racing the first.
    if !in_flight.lock().expect("lock").insert(id.clone()) {
        reply(&message, AckKind::Nak(Some(ack_wait))).await;
        return;
    }
    let (bucket, object) = (
        item.bucket().to_string(),
        item.object().unwrap_or("").to_string(),
    );
    let span = tracing::info_span!("work", %role, id = %id, delivered);

    // Run the handler under watch: progress acks keep the message ours while it moves bytes
    // (a killed worker stops them and the item is redelivered after ack_wait); a handler that
    // moved nothing for ack_wait is abandoned; shutdown drops it at once.
    let progress = Progress::new();
    let mut work = Box::pin(
        handler
            .handle(item, progress.clone())
            .instrument(span.clone()),
    );
    let mut watch = tokio::time::interval(
        (ack_wait / 3).clamp(Duration::from_millis(100), Duration::from_secs(5)),
    );
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    watch.tick().await;
    let ended = loop {
        tokio::select! {
            result = &mut work => break Ended::Finished(result),
            _ = shutdown.cancelled() => break Ended::ShutDown,
            _ = watch.tick() => {
                let idle = progress.idle();
                if idle >= ack_wait {
                    break Ended::Stalled(idle);
                }
                reply(&message, AckKind::Progress).await;
            }
        }
    };
    drop(work);
    in_flight.lock().expect("lock").remove(&id);

    let _guard = span.enter();
    match ended {
        Ended::Finished(Ok(())) => {
            metrics::work_item(role, "done");
            match tokio::time::timeout(ACK_DEADLINE, message.double_ack()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "ack failed; the item will be redelivered and found done")
                }
                Err(_) => {
                    tracing::warn!("ack timed out; the item will be redelivered and found done")
                }
            }
        }
        Ended::Finished(Err(e)) => match after_failure(e.is_transient(), delivered, max_deliver) {
            Some(delay) => {
                metrics::work_item(role, "retry");
                tracing::warn!(error = %e, retry_in = ?delay, "work failed; will retry");
                reply(&message, AckKind::Nak(Some(delay))).await;
            }
            None => {
                metrics::work_item(role, "failed");
                tracing::error!(error = %e, delivered, "work failed, giving up; the manager queues it again after the duplicate window");
                reply(&message, AckKind::Term).await;
            }
        },
        Ended::Stalled(idle) => {
            metrics::work_item(role, "stalled");
            match after_failure(true, delivered, max_deliver) {
                Some(delay) => {
                    tracing::error!(%bucket, %object, idle = ?idle, moved_bytes = progress.bytes(), retry_in = ?delay, "no progress; abandoned the item, will retry");
                    reply(&message, AckKind::Nak(Some(delay))).await;
                }
                None => {
                    tracing::error!(%bucket, %object, idle = ?idle, moved_bytes = progress.bytes(), delivered, "no progress; abandoned the item, giving up; the manager queues it again after the duplicate window");
                    reply(&message, AckKind::Term).await;
                }
            }
        }
        Ended::ShutDown => {
            metrics::work_item(role, "released");
            tracing::info!(%bucket, %object, "shutting down; released the item for redelivery");
            reply(&message, AckKind::Nak(None)).await;
        }
    }
}

/// Sends an ack of `kind` (nak, term, progress) within [`ACK_DEADLINE`]. Best effort: an ack
/// that is lost only means the item is redelivered after `ack_wait`, and handlers are
/// idempotent.
async fn reply(message: &jetstream::Message, kind: AckKind) {
    match tokio::time::timeout(ACK_DEADLINE, message.ack_with(kind)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "ack failed; the item will be redelivered after ack_wait")
        }
        Err(_) => tracing::debug!("ack timed out; the item will be redelivered after ack_wait"),
    }
}

/// Subject prefix of `role`'s items of format `version` (see the module docs).
fn role_prefix(version: u32, role: Role) -> String {
    match version {
        0 => format!("{SUBJECT_PREFIX}.{role}"),
        v => format!("{SUBJECT_PREFIX}.v{v}.{role}"),
    }
}

/// Durable consumer of `role`'s items of format `version`.
fn consumer_name(role: Role, version: u32) -> String {
    match version {
        0 => role.as_str().to_string(),
        v => format!("{role}-v{v}"),
    }
}

/// An item as published: its JSON with the format version `"v"`.
fn encode(item: &WorkItem) -> Result<Vec<u8>, serde_json::Error> {
    let mut value = serde_json::to_value(item)?;
    if let serde_json::Value::Object(fields) = &mut value {
        fields.insert("v".into(), FORMAT_VERSION.into());
    }
    serde_json::to_vec(&value)
}

/// What a delivered payload turned out to be.
#[derive(Debug)]
enum Decoded {
    /// An item of a version this role reads.
    Item(WorkItem),
    /// An item stating a newer format version: left for a newer role.
    Newer(u64),
    /// Neither: does not decode and states no newer version.
    Garbage(serde_json::Error),
}

fn decode(payload: &[u8]) -> Decoded {
    /// Only the version, whatever else the item holds (version 0 has no `"v"`).
    #[derive(Deserialize)]
    struct Version {
        #[serde(default)]
        v: u64,
    }
    if let Ok(Version { v }) = serde_json::from_slice::<Version>(payload) {
        if v > u64::from(FORMAT_VERSION) {
            return Decoded::Newer(v);
        }
    }
    match serde_json::from_slice::<WorkItem>(payload) {
        Ok(item) => Decoded::Item(item),
        Err(e) => Decoded::Garbage(e),
    }
}

/// After a failed delivery: `Some(delay)` to retry later, `None` to give up (terminate).
///
/// Retries back off 1, 2, 4, then every 8 s: most transient failures (replication lag, a leader
/// election) clear within seconds. `max_deliver` (-1: unlimited) bounds the deliveries; the
/// consumer itself redelivers without limit, because an item the server stops delivering stays
/// in the work-queue stream and would block its subject, so its object could never be queued
/// again.
fn after_failure(transient: bool, delivered: i64, max_deliver: i64) -> Option<Duration> {
    if !transient || (max_deliver > 0 && delivered >= max_deliver) {
        return None;
    }
    Some(Duration::from_secs(1u64 << (delivered - 1).clamp(0, 3)))
}

/// The work stream as today's version wants it.
///
/// One message per subject, and a publish to a subject that already holds one is refused (not
/// replacing it: the pending item may be in flight). With one subject per object and step, that
/// bounds the queue by the number of objects however long they wait.
pub fn stream_config(name: &str, replicas: usize) -> stream::Config {
    stream::Config {
        name: name.to_string(),
        subjects: vec![format!("{SUBJECT_PREFIX}.>")],
        retention: stream::RetentionPolicy::WorkQueue,
        num_replicas: replicas,
        duplicate_window: DUPLICATE_WINDOW,
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: true,
        ..Default::default()
    }
}

/// `current` with `wanted`'s subjects, limits and duplicate window, if any of them differ
/// (a stream created by an older version). Replicas and everything else are left as they are.
fn upgraded(current: &stream::Config, wanted: &stream::Config) -> Option<stream::Config> {
    let mut updated = current.clone();
    updated.subjects = wanted.subjects.clone();
    updated.duplicate_window = wanted.duplicate_window;
    updated.max_messages_per_subject = wanted.max_messages_per_subject;
    updated.discard = wanted.discard;
    updated.discard_new_per_subject = wanted.discard_new_per_subject;
    (updated != *current).then_some(updated)
}

/// Whether a publish was refused because its subject already holds a pending item
/// (`discard_new_per_subject`): nats-server answers "maximum messages per subject exceeded".
fn is_subject_full(e: &jetstream::context::PublishError) -> bool {
    let Some(api) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<jetstream::Error>())
    else {
        return false;
    };
    api.error_code() == jetstream::ErrorCode::STREAM_STORE_FAILED
        && api
            .to_string()
            .contains("maximum messages per subject exceeded")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn job(name: &str, nuid: &str) -> ObjectMove {
        ObjectMove {
            policy: "p".into(),
            from: "hub".into(),
            to: "s3".into(),
            action: Action::Move,
            bucket: "sensors".into(),
            name: name.into(),
            size: 3,
            digest: Sha256Digest::of(b"abc"),
            nuid: nuid.into(),
        }
    }

    #[test]
    fn items_route_to_their_role_and_round_trip_as_json() {
        let upload = WorkItem::Upload(job("a b/c", "N1"));
        assert_eq!(upload.role(), Role::Upload);
        assert_eq!(
            upload.subject(),
            "cim.work.v1.upload.sensors.hub.s3.YSBiL2M"
        );
        let evict = WorkItem::LeafEvict(job("x", "N1"));
        assert_eq!(evict.subject(), "cim.work.v1.mirror.sensors.hub.s3.eA");
        let source = WorkItem::EnsureSource {
            policy: "p".into(),
            from: "leaf".into(),
            to: "hub".into(),
            bucket: "sensors".into(),
        };
        assert_eq!(
            source.subject(),
            "cim.work.v1.mirror.sensors.leaf.hub.source"
        );
        let json = String::from_utf8(encode(&upload).unwrap()).unwrap();
        assert!(json.contains("\"kind\":\"upload\""), "{json}");
        assert!(json.contains("\"action\":\"move\""), "{json}");
        assert!(json.contains("\"v\":1"), "{json}");
        assert!(matches!(decode(json.as_bytes()), Decoded::Item(i) if i == upload));
    }

    #[test]
    fn ids_identify_one_version_of_one_object() {
        let a1 = WorkItem::Upload(job("a", "N1")).id();
        assert_eq!(a1, WorkItem::Upload(job("a", "N1")).id());
        assert_ne!(
            a1,
            WorkItem::Upload(job("a", "N2")).id(),
            "a new version is new work"
        );
        assert_ne!(a1, WorkItem::Upload(job("b", "N1")).id());
        assert_ne!(a1, WorkItem::LeafEvict(job("a", "N1")).id());
        // Names with dots, spaces or slashes never leak into the id's structure.
        assert!(!WorkItem::Upload(job("x.y z/w", "N")).id().contains(' '));
    }

    #[test]
    fn subjects_are_one_per_object_and_step_whatever_the_version() {
        let a1 = WorkItem::Upload(job("a", "N1")).subject();
        assert_eq!(a1, WorkItem::Upload(job("a", "N2")).subject());
        assert_ne!(a1, WorkItem::Upload(job("b", "N1")).subject());
        let mut other_step = job("a", "N1");
        other_step.from = "hub2".into();
        assert_ne!(a1, WorkItem::Upload(other_step).subject());
        // Dots, spaces and wildcards in names stay inside one token.
        let subject = WorkItem::Upload(job("x.y z/*>", "N")).subject();
        assert_eq!(subject.split('.').count(), 8, "{subject}");
        assert!(!subject.contains([' ', '*', '>']), "{subject}");
        // No object name can take the ensure-source token.
        assert!(URL_SAFE_NO_PAD.decode(ENSURE_SOURCE_TOKEN).is_err());
    }

    #[test]
    fn items_of_the_previous_version_decode_newer_ones_are_left_and_garbage_is_garbage() {
        let item = WorkItem::Upload(job("a", "N1"));
        // Version 0 (no "v") is read.
        let v0 = serde_json::to_vec(&item).unwrap();
        assert!(matches!(decode(&v0), Decoded::Item(i) if i == item));
        // A newer version is left alone even when it would decode.
        let mut newer = serde_json::to_value(&item).unwrap();
        newer["v"] = 2.into();
        assert!(matches!(
            decode(newer.to_string().as_bytes()),
            Decoded::Newer(2)
        ));
        let future = br#"{"v": 7, "kind": "batch", "objects": []}"#;
        assert!(matches!(decode(future), Decoded::Newer(7)));
        // Garbage states no newer version.
        for garbage in [
            &b"not json"[..],
            br#"{"kind": "nonsense"}"#,
            br#"{"v": "x"}"#,
        ] {
            assert!(matches!(decode(garbage), Decoded::Garbage(_)));
        }
    }

    #[test]
    fn versions_have_subjects_and_consumers_that_never_overlap() {
        assert_eq!(role_prefix(0, Role::Upload), "cim.work.upload");
        assert_eq!(role_prefix(1, Role::Upload), "cim.work.v1.upload");
        assert_eq!(consumer_name(Role::Upload, 0), "upload");
        assert_eq!(consumer_name(Role::Mirror, 1), "mirror-v1");
        // `cim.work.upload.>` cannot match `cim.work.v1.upload.…`: token 3 differs.
        for role in [Role::Mirror, Role::Upload] {
            assert_ne!(role.as_str(), "v1");
        }
    }

    #[test]
    fn failures_retry_with_backoff_until_max_deliver() {
        assert_eq!(after_failure(true, 1, 20), Some(Duration::from_secs(1)));
        assert_eq!(after_failure(true, 3, 20), Some(Duration::from_secs(4)));
        assert_eq!(after_failure(true, 19, 20), Some(Duration::from_secs(8)));
        assert_eq!(
            after_failure(true, 20, 20),
            None,
            "the last delivery gives up"
        );
        assert_eq!(after_failure(true, 500, -1), Some(Duration::from_secs(8)));
        assert_eq!(
            after_failure(false, 1, 20),
            None,
            "permanent failures are not retried"
        );
    }

    #[test]
    fn an_older_stream_is_brought_to_the_per_subject_limit() {
        let wanted = stream_config("CIM_WORK", 3);
        let old = stream::Config {
            name: "CIM_WORK".into(),
            subjects: vec!["cim.work.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            num_replicas: 1,
            duplicate_window: Duration::from_secs(1),
            ..Default::default()
        };
        let updated = upgraded(&old, &wanted).unwrap();
        assert_eq!(updated.max_messages_per_subject, 1);
        assert!(updated.discard_new_per_subject);
        assert_eq!(updated.discard, stream::DiscardPolicy::New);
        assert_eq!(updated.duplicate_window, DUPLICATE_WINDOW);
        assert_eq!(updated.num_replicas, 1, "replicas are left alone");
        assert_eq!(upgraded(&updated, &wanted), None, "nothing to do twice");
    }
}
