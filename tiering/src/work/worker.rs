//! The worker: fetches a role's items, runs the handler under watch, acks (see [`super`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::item::{decode, Decoded, FORMAT_VERSION};
use super::{Handler, Progress, Retryable, Role};
use crate::metrics::{self, WorkOutcome};

/// How long a role leaves an item of a newer format before it is offered again (to a newer
/// role, if one runs, or back to this one).
const NEWER_ITEM_DELAY: Duration = Duration::from_secs(300);

/// Most items asked for in one pull request (bounded further by the free handler slots).
const FETCH_BATCH: usize = 64;

/// Deadline of one ack, nak or progress ack sent to the server.
const ACK_DEADLINE: Duration = Duration::from_secs(2);

/// What the fetch loops of one role share.
pub(super) struct Worker<H> {
    pub(super) role: Role,
    pub(super) handler: Arc<H>,
    /// Bounds the items in flight across all of the role's consumers.
    pub(super) permits: Arc<Semaphore>,
    pub(super) in_flight: Arc<Mutex<HashSet<String>>>,
    pub(super) tracker: TaskTracker,
    pub(super) ack_wait: Duration,
    pub(super) max_deliver: i64,
}

impl<H: Handler> Worker<H> {
    /// Fetches from one consumer, handing each message to a task, until `shutdown`.
    ///
    /// Items are fetched in batches: one pull request asks for as many items as there are free
    /// handler slots (a permit each, taken before the request), so a backlog of small objects
    /// costs one round trip per batch instead of one per item. The server answers as soon as
    /// any item is pending (`fetch` is a no-wait pull with an expiry), so a batch never waits
    /// to fill up. A loop whose last fetch found nothing waits with a single permit: a role
    /// reads several consumers (one per item format) from one pool of permits, and an idle
    /// consumer must not hold the slots the busy one needs. Permits of a batch that came back
    /// short are returned at its end. Acks stay per item (see [`process`]).
    pub(super) async fn fetch_loop(
        &self,
        consumer: &consumer::PullConsumer,
        shutdown: &CancellationToken,
    ) {
        let role = self.role;
        let mut idle = true;
        loop {
            let first = tokio::select! {
                permit = self.permits.clone().acquire_owned() => permit.expect("semaphore is never closed"),
                _ = shutdown.cancelled() => break,
            };
            let mut permits = vec![first];
            if !idle {
                while permits.len() < FETCH_BATCH {
                    match self.permits.clone().try_acquire_owned() {
                        Ok(permit) => permits.push(permit),
                        Err(_) => break,
                    }
                }
            }
            let fetched = tokio::select! {
                batch = consumer.fetch().max_messages(permits.len()).expires(Duration::from_secs(2)).messages() => batch,
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
            idle = true;
            loop {
                let next = tokio::select! {
                    next = batch.next() => next,
                    _ = shutdown.cancelled() => return,
                };
                let message = match next {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => {
                        tracing::warn!(%role, error = %e, "fetch failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        break;
                    }
                    None => break,
                };
                let Some(permit) = permits.pop() else {
                    // More than asked for; never expected. Released for redelivery.
                    reply(&message, AckKind::Nak(None)).await;
                    continue;
                };
                idle = false;
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
            metrics::work_item(role, WorkOutcome::Newer);
            reply(&message, AckKind::Nak(Some(NEWER_ITEM_DELAY))).await;
            return;
        }
        Decoded::Garbage(e) => {
            tracing::error!(%role, subject = %message.subject, error = %e, "undecodable work item; terminating it");
            metrics::work_item(role, WorkOutcome::Invalid);
            reply(&message, AckKind::Term).await;
            return;
        }
    };
    let id = item.id();
    // The same logical item twice in one process (one an older manager queued on its per-bucket
    // subject, say) waits instead of racing the first.
    let Some(_claim) = InFlight::claim(&in_flight, &id) else {
        reply(&message, AckKind::Nak(Some(ack_wait))).await;
        return;
    };
    let (bucket, object) = (
        item.bucket().to_string(),
        item.object().unwrap_or("").to_string(),
    );
    // The one span of an object move in the mirror and upload roles: every line logged while
    // the item is handled and settled carries the object and the tier pair (restore has its
    // own, with the same fields), so one grep follows an object through every role.
    let (from_tier, to_tier) = item.tiers();
    let span = tracing::info_span!("work", %role, id = %id, delivered, %bucket, %object, %from_tier, %to_tier);

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
    // The outcome is logged and acked inside the item's span, never by holding `span.enter()`
    // across an await: a task resumed on another thread would corrupt the span stack (seen:
    // "tried to clone Id(..), but no span exists with that ID", a panic that left its item
    // claimed and silently renewed forever).
    settle(
        role,
        &message,
        ended,
        delivered,
        max_deliver,
        &bucket,
        &object,
        &progress,
    )
    .instrument(span)
    .await;
}

/// An item id claimed by this process while its handler runs; released on drop, panics
/// included, so that a failed task never leaves its item unclaimable.
struct InFlight<'a> {
    set: &'a Mutex<HashSet<String>>,
    id: String,
}

impl<'a> InFlight<'a> {
    fn claim(set: &'a Mutex<HashSet<String>>, id: &str) -> Option<Self> {
        let mut ids = set.lock().unwrap_or_else(|e| e.into_inner());
        ids.insert(id.to_string()).then(|| InFlight {
            set,
            id: id.to_string(),
        })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// Logs, counts and acks how an item's handling ended.
#[allow(clippy::too_many_arguments)]
async fn settle<E: Retryable>(
    role: Role,
    message: &jetstream::Message,
    ended: Ended<E>,
    delivered: i64,
    max_deliver: i64,
    bucket: &str,
    object: &str,
    progress: &Progress,
) {
    match ended {
        Ended::Finished(Ok(())) => {
            metrics::work_item(role, WorkOutcome::Done);
            metrics::succeeded(role.into());
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
        Ended::Finished(Err(e)) => {
            crate::status::failed(format_args!("{bucket}/{object}: {e}"));
            match after_failure(e.is_transient(), delivered, max_deliver) {
                Some(delay) => {
                    metrics::work_item(role, WorkOutcome::Retry);
                    tracing::warn!(error = %e, retry_in = ?delay, "work failed; will retry");
                    reply(message, AckKind::Nak(Some(delay))).await;
                }
                None => {
                    metrics::work_item(role, WorkOutcome::GivenUp);
                    tracing::error!(error = %e, delivered, "work failed, giving up; the manager queues it again after the duplicate window");
                    reply(message, AckKind::Term).await;
                }
            }
        }
        Ended::Stalled(idle) => {
            metrics::work_item(role, WorkOutcome::Stalled);
            crate::status::failed(format_args!("{bucket}/{object}: no progress for {idle:?}"));
            match after_failure(true, delivered, max_deliver) {
                Some(delay) => {
                    tracing::error!(%bucket, %object, idle = ?idle, moved_bytes = progress.bytes(), retry_in = ?delay, "no progress; abandoned the item, will retry");
                    reply(message, AckKind::Nak(Some(delay))).await;
                }
                None => {
                    tracing::error!(%bucket, %object, idle = ?idle, moved_bytes = progress.bytes(), delivered, "no progress; abandoned the item, giving up; the manager queues it again after the duplicate window");
                    reply(message, AckKind::Term).await;
                }
            }
        }
        Ended::ShutDown => {
            metrics::work_item(role, WorkOutcome::Released);
            tracing::info!(%bucket, %object, "shutting down; released the item for redelivery");
            reply(message, AckKind::Nak(None)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
