//! The work queue: how the storage manager hands work to the mirror and upload roles.
//!
//! Roles run in separate processes (separate NixOS containers in production) and talk only
//! through NATS. The manager publishes [`WorkItem`]s to a JetStream *work-queue* stream
//! (`cim.work.<role>.<bucket>`); each role consumes its subjects with a durable pull consumer.
//!
//! - Every item carries a `Nats-Msg-Id`, so the manager re-evaluating the same object within the
//!   stream's duplicate window does not queue it twice.
//! - A worker acks only after the work is done and recorded; a worker killed mid-item leaves the
//!   message unacked and JetStream redelivers it after `ack_wait` (long items send progress acks).
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
use crate::retry::{retry, Backoff};

/// Subject prefix of the work-queue stream.
pub const SUBJECT_PREFIX: &str = "cim.work";

/// How long the stream remembers message ids for de-duplication.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

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

    /// Subject the item is published on.
    pub fn subject(&self) -> String {
        format!("{SUBJECT_PREFIX}.{}.{}", self.role(), self.bucket())
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
/// `handle` must be idempotent: it may be called again for an item that already succeeded
/// (redelivery after a crash) and must then succeed without repeating visible effects.
pub trait Handler: Send + Sync + 'static {
    /// The handler's error.
    type Error: Retryable;
    /// Performs one item.
    fn handle(&self, item: WorkItem) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// The work-queue stream and its consumers.
#[derive(Clone)]
pub struct WorkQueue {
    js: jetstream::Context,
    config: WorkConfig,
}

impl WorkQueue {
    /// Opens the work-queue stream, creating it if needed.
    pub async fn open(
        js: jetstream::Context,
        config: &WorkConfig,
        replicas: usize,
    ) -> Result<Self, Error> {
        js.get_or_create_stream(stream::Config {
            name: config.stream.clone(),
            subjects: vec![format!("{SUBJECT_PREFIX}.>")],
            retention: stream::RetentionPolicy::WorkQueue,
            num_replicas: replicas,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::Work {
            op: "create stream",
            source: Box::new(e),
        })?;
        Ok(Self {
            js,
            config: config.clone(),
        })
    }

    /// Queues an item; returns false when the stream dropped it as a duplicate.
    pub async fn publish(&self, item: &WorkItem) -> Result<bool, Error> {
        let payload = serde_json::to_vec(item).map_err(|e| Error::Work {
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
            .await
            .map_err(|e| Error::Work {
                op: "publish ack",
                source: Box::new(e),
            })?;
        Ok(!ack.duplicate)
    }

    async fn consumer(&self, role: Role) -> Result<consumer::PullConsumer, Error> {
        let stream = self
            .js
            .get_stream(&self.config.stream)
            .await
            .map_err(|e| Error::Work {
                op: "open stream",
                source: Box::new(e),
            })?;
        stream
            .get_or_create_consumer(
                role.as_str(),
                consumer::pull::Config {
                    durable_name: Some(role.as_str().to_string()),
                    filter_subject: format!("{SUBJECT_PREFIX}.{role}.>"),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.config.ack_wait,
                    max_deliver: self.config.max_deliver,
                    max_ack_pending: (self.config.concurrency * 4) as i64,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| Error::Work {
                op: "create consumer",
                source: Box::new(e),
            })
    }

    /// Items queued or in flight for `role`.
    pub async fn backlog(&self, role: Role) -> Result<u64, Error> {
        let mut consumer = self.consumer(role).await?;
        let info = consumer.info().await.map_err(|e| Error::Work {
            op: "consumer info",
            source: Box::new(e),
        })?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }

    /// Consumes `role`'s items with at most `concurrency` in flight until `shutdown` fires,
    /// then waits (up to `ack_wait`) for in-flight items; unfinished ones are redelivered later.
    pub async fn run_worker<H: Handler>(
        &self,
        role: Role,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let consumer = retry("create work consumer", Backoff::STARTUP, || {
            self.consumer(role)
        })
        .await?;
        let permits = Arc::new(Semaphore::new(self.config.concurrency));
        let in_flight: Arc<Mutex<HashSet<String>>> = Arc::default();
        let tracker = TaskTracker::new();
        tracing::info!(%role, concurrency = self.config.concurrency, "worker started");

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

        loop {
            let permit = tokio::select! {
                permit = permits.clone().acquire_owned() => permit.expect("semaphore is never closed"),
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
            let message = match batch.next().await {
                Some(Ok(message)) => message,
                Some(Err(e)) => {
                    tracing::warn!(%role, error = %e, "fetch failed; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                None => continue,
            };
            let handler = handler.clone();
            let in_flight = in_flight.clone();
            let ack_wait = self.config.ack_wait;
            tracker.spawn(async move {
                process(role, message, handler, in_flight, ack_wait).await;
                drop(permit);
            });
        }

        tracker.close();
        if tokio::time::timeout(self.config.ack_wait, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(%role, "in-flight work did not finish in time; it will be redelivered");
        }
        gauge_task.abort();
        tracing::info!(%role, "worker stopped");
        Ok(())
    }
}

async fn process<H: Handler>(
    role: Role,
    message: jetstream::Message,
    handler: Arc<H>,
    in_flight: Arc<Mutex<HashSet<String>>>,
    ack_wait: Duration,
) {
    let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
    let item: WorkItem = match serde_json::from_slice(&message.payload) {
        Ok(item) => item,
        Err(e) => {
            tracing::error!(%role, subject = %message.subject, error = %e, "undecodable work item; terminating it");
            metrics::work_item(role, "invalid");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    let id = item.id();
    // The same logical item twice in one process (a re-dispatch after the duplicate window
    // while the first is still running) waits instead of racing the first.
    if !in_flight.lock().expect("lock").insert(id.clone()) {
        let _ = message.ack_with(AckKind::Nak(Some(ack_wait))).await;
        return;
    }

    // Keep the message ours while a long item runs; a killed worker stops these and the item
    // is redelivered after ack_wait.
    let progress = {
        let message_ack = message.clone();
        tokio::spawn(async move {
            let every = (ack_wait / 3).max(Duration::from_millis(200));
            loop {
                tokio::time::sleep(every).await;
                if message_ack.ack_with(AckKind::Progress).await.is_err() {
                    return;
                }
            }
        })
    };

    let span = tracing::info_span!("work", %role, id = %id, delivered);
    let result = handler.handle(item).instrument(span.clone()).await;
    progress.abort();
    in_flight.lock().expect("lock").remove(&id);

    let _guard = span.enter();
    match result {
        Ok(()) => {
            metrics::work_item(role, "done");
            if let Err(e) = message.double_ack().await {
                tracing::warn!(error = %e, "ack failed; the item will be redelivered and found done");
            }
        }
        Err(e) if e.is_transient() => {
            metrics::work_item(role, "retry");
            // 1, 2, 4, then every 8 s: most transient failures (replication lag, a leader
            // election) clear within seconds, and max_deliver bounds the total.
            let delay = Duration::from_secs(1u64 << (delivered - 1).clamp(0, 3));
            tracing::warn!(error = %e, retry_in = ?delay, "work failed; will retry");
            let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
        }
        Err(e) => {
            metrics::work_item(role, "failed");
            tracing::error!(error = %e, "work failed permanently; the manager re-dispatches it after the duplicate window");
            let _ = message.ack_with(AckKind::Term).await;
        }
    }
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
        assert_eq!(upload.subject(), "cim.work.upload.sensors");
        let evict = WorkItem::LeafEvict(job("x", "N1"));
        assert_eq!(evict.subject(), "cim.work.mirror.sensors");
        let json = serde_json::to_string(&upload).unwrap();
        assert!(json.contains("\"kind\":\"upload\""), "{json}");
        assert!(json.contains("\"action\":\"move\""), "{json}");
        assert_eq!(serde_json::from_str::<WorkItem>(&json).unwrap(), upload);
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
}
