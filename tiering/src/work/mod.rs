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

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use cim_policies::WorkConfig;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::error::Error;
use crate::metrics;
pub use crate::progress::Progress;
use crate::retry::{retry, Backoff};

mod item;
mod worker;

use item::{consumer_name, encode, role_prefix};
pub use item::{
    ObjectDelete, ObjectExpire, ObjectMove, Role, S3Expire, TemporaryCopy, WorkItem,
    FORMAT_VERSION, READ_VERSIONS,
};
use worker::Worker;

/// Subject prefix of the work-queue stream.
pub const SUBJECT_PREFIX: &str = "cim.work";

/// How long the stream remembers message ids for de-duplication.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// Publish acks the manager keeps in flight while queueing many items.
pub const PUBLISH_WINDOW: usize = 256;

/// How long a stopping worker waits for its in-flight items to release themselves (nak);
/// well inside the 5 s in which a role must exit after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

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
        let mut results = self.publish_all(std::slice::from_ref(item)).await;
        results.pop().unwrap_or(Ok(false))
    }

    /// Queues many items with up to [`PUBLISH_WINDOW`] acks in flight, instead of a round trip
    /// per item; one result per item, in order, as [`WorkQueue::publish`] gives it. A failed
    /// item does not stop the others.
    pub async fn publish_all(&self, items: &[WorkItem]) -> Vec<Result<bool, Error>> {
        use std::collections::VecDeque;
        let mut results: Vec<Result<bool, Error>> = Vec::with_capacity(items.len());
        // (index of the item, its ack) in publish order.
        let mut in_flight = VecDeque::with_capacity(PUBLISH_WINDOW.min(items.len()));
        for (i, item) in items.iter().enumerate() {
            results.push(Ok(false));
            if in_flight.len() == PUBLISH_WINDOW {
                if let Some((j, ack)) = in_flight.pop_front() {
                    results[j] = acked(ack).await;
                }
            }
            match self.send(item).await {
                Ok(ack) => in_flight.push_back((i, ack)),
                Err(e) => results[i] = Err(e),
            }
        }
        for (j, ack) in in_flight {
            results[j] = acked(ack).await;
        }
        results
    }

    /// Publishes one item; the ack comes later.
    async fn send(&self, item: &WorkItem) -> Result<jetstream::context::PublishAckFuture, Error> {
        let payload = encode(item).map_err(|e| Error::Work {
            op: "encode item",
            source: Box::new(e),
        })?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, item.id().as_str());
        self.js
            .publish_with_headers(item.subject(), headers, payload.into())
            .await
            .map_err(|e| Error::Work {
                op: "publish",
                source: Box::new(e),
            })
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
                        // The work queue answered: an idle role that can reach it is healthy.
                        metrics::succeeded(role.into());
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

/// Whether a queued item was taken (true) or was already queued (false); the ack has the
/// context's deadline.
async fn acked(ack: jetstream::context::PublishAckFuture) -> Result<bool, Error> {
    match ack.await {
        Ok(ack) => Ok(!ack.duplicate),
        Err(e) if is_subject_full(&e) => Ok(false),
        Err(e) => Err(Error::Work {
            op: "publish ack",
            source: Box::new(e),
        }),
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
