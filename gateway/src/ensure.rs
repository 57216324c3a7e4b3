//! The `cim.storage.object.ensure` NATS service (`cim-gateway serve`): asked for an object, it
//! makes sure the hub's object store holds it — restoring it from S3, verified, when only S3 does
//! — and answers once it is there; the caller then reads it with any object-store client.
//!
//! # Decisions, in order
//! 1. The hub holds a live version: ready at once (`restored: false`). A delete marker there:
//!    `deleted`.
//! 2. Else S3 holds a manifest: a tombstone is `deleted`; otherwise the object is restored into
//!    the hub by [`Restorer`] — the same code as `cim-gateway restore --name`, with all its
//!    checks (SHA-256 against the ingest digest, nothing visible before it matched, journal for
//!    SIGKILL) — and the answer is `ready` with `restored: true`.
//! 3. Else a leaf holds it: `unavailable`, without waiting. The object reaches the hub when the
//!    policies say (the mirror role); waiting here would hold the request for as long as a
//!    policy's `after`, so the caller is told to ask again later instead.
//! 4. Else `not_found`.
//!
//! A request may name the version it wants (`digest`); a tier holding another version then
//! answers `not_found`, naming both.
//!
//! # One restore per object
//! Concurrent requests for the same object in one process share one restore: the first starts
//! it as a task of its own (it runs to its end even when every caller gave up, so it never
//! leaves chunks behind), the others wait for the same outcome. Instances in other processes
//! (the queue group spreads requests over them) may race on the same object: the write's commit
//! lets only one version in, and a loser whose restore failed answers ready if the winner's copy
//! is on the hub by then, `unavailable` otherwise (the caller asks again and finds it).
//!
//! # Deadlines
//! Every request has a deadline (`--deadline`); past it the caller gets `unavailable` (the
//! restore, if one started, goes on and a later request finds the object). Each NATS and S3
//! call below has its own deadline as everywhere else.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::service::ServiceExt as _;
use bytes::Bytes;
use cim_tiering::access::AccessLog;
use cim_tiering::digest::Sha256Digest;
use cim_tiering::jetstream::is_live;
use cim_tiering::{metrics, System};
use futures::future::{BoxFuture, FutureExt as _, Shared};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::format::Manifest;
use crate::restore::{Restored, Restorer};
use crate::s3::S3Store;
use crate::Error;

/// The subject the service answers on.
pub const SUBJECT: &str = "cim.storage.object.ensure";
/// The service's name in the NATS micro-service API (`$SRV.PING.cim-storage-object`, …).
pub const SERVICE_NAME: &str = "cim-storage-object";
/// The queue group every instance joins, so that each request reaches one of them.
pub const QUEUE_GROUP: &str = "cim-storage-object";
/// Answering a request (a publish) gets this long.
const RESPOND_DEADLINE: Duration = Duration::from_secs(5);

/// A request: which object, optionally which version.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnsureRequest {
    /// The object-store bucket.
    pub bucket: String,
    /// The object's name.
    pub name: String,
    /// The version wanted, as its ingest digest (`SHA-256=…`, as in the object's meta);
    /// default: the current version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// Why an object cannot be made ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// The request is not a valid [`EnsureRequest`].
    BadRequest,
    /// No tier holds the object (or the version asked for).
    NotFound,
    /// The object was deleted.
    Deleted,
    /// The S3 copy failed verification; nothing was written to the hub.
    Integrity,
    /// Not now: held only on a leaf, a tier unreachable, or the deadline passed. Ask again.
    Unavailable,
}

impl Code {
    /// The label in `cim_ensure_requests_total` and the `code` in the reply.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::NotFound => "not_found",
            Code::Deleted => "deleted",
            Code::Integrity => "integrity",
            Code::Unavailable => "unavailable",
        }
    }

    /// The `Nats-Service-Error-Code` header (HTTP-like, as NATS micro-services use).
    fn number(self) -> u16 {
        match self {
            Code::BadRequest => 400,
            Code::NotFound => 404,
            Code::Deleted => 410,
            Code::Integrity => 500,
            Code::Unavailable => 503,
        }
    }
}

/// The answer, as JSON: `{"status": "ready", …}` or `{"status": "error", "code": …, …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Reply {
    /// The hub holds the object; read it there.
    Ready {
        /// The JetStream tier holding it (the hub).
        tier: String,
        /// Its size in bytes.
        size: u64,
        /// Its ingest digest (`SHA-256=…`).
        digest: String,
        /// Whether this request's answer waited for a restore from S3.
        restored: bool,
    },
    /// It cannot be made ready; `message` says why, naming the object.
    Error {
        /// What kind of failure.
        code: Code,
        /// The bucket asked for.
        bucket: String,
        /// The name asked for.
        name: String,
        /// For people: the object, the tier and the cause.
        message: String,
    },
}

impl Reply {
    fn error(code: Code, bucket: &str, name: &str, message: impl Into<String>) -> Reply {
        Reply::Error {
            code,
            bucket: bucket.to_string(),
            name: name.to_string(),
            message: message.into(),
        }
    }

    /// The `outcome` label of `cim_ensure_requests_total`.
    fn outcome(&self) -> &'static str {
        match self {
            Reply::Ready {
                restored: false, ..
            } => "ready",
            Reply::Ready { restored: true, .. } => "restored",
            Reply::Error { code, .. } => code.as_str(),
        }
    }
}

/// A restore in progress, shared by every request for the same object.
type SharedRestore = Shared<BoxFuture<'static, Reply>>;

/// Makes objects ready on the hub (see the module docs).
pub struct Ensurer {
    system: Arc<System>,
    store: S3Store,
    /// The JetStream tier objects are made ready on (restore's target).
    hub: String,
    /// The leaf tiers, looked at when neither the hub nor S3 holds an object.
    leaves: Vec<String>,
    deadline: Duration,
    restores: Mutex<HashMap<(String, String), SharedRestore>>,
    /// Where the answers are recorded as accesses (the policies' `idle`).
    access: AccessLog,
}

impl Ensurer {
    /// An ensurer restoring from `store` into the JetStream tier `hub`, answering within
    /// `deadline`.
    pub fn new(
        system: Arc<System>,
        store: S3Store,
        hub: &str,
        deadline: Duration,
    ) -> Result<Ensurer, Error> {
        system.jetstream_tier(hub)?;
        let leaves = system
            .config
            .tiers
            .iter()
            .filter(|(_, t)| {
                matches!(t, cim_policies::Tier::JetStream(js)
                    if js.role == cim_policies::JetStreamRole::Leaf)
            })
            .map(|(n, _)| n.clone())
            .collect();
        Ok(Ensurer {
            access: AccessLog::new(&system),
            system,
            store,
            hub: hub.to_string(),
            leaves,
            deadline,
            restores: Mutex::new(HashMap::new()),
        })
    }

    /// Cleans up after restores of a killed instance (see [`Restorer::recover`]).
    pub async fn recover(&self) -> Result<(), Error> {
        let restorer = Restorer::new(self.system.clone(), self.store.clone(), &self.hub).await?;
        let recovered = restorer.recover().await;
        restorer.close().await;
        for w in &recovered?.purged {
            tracing::warn!(tier = %w.tier, bucket = %w.bucket, name = %w.name, "purged the chunks of an interrupted restore");
        }
        Ok(())
    }

    /// Answers one request (raw JSON), within the deadline.
    pub async fn answer(self: &Arc<Self>, payload: &[u8]) -> Reply {
        let request: EnsureRequest = match serde_json::from_slice(payload) {
            Ok(request) => request,
            Err(e) => {
                return Reply::error(
                    Code::BadRequest,
                    "",
                    "",
                    format!(
                        "the request is not {{\"bucket\": …, \"name\": …, \"digest\"?: …}}: {e}"
                    ),
                )
            }
        };
        let (bucket, name) = (request.bucket.as_str(), request.name.as_str());
        if bucket.is_empty() || name.is_empty() {
            return Reply::error(
                Code::BadRequest,
                bucket,
                name,
                "bucket and name are required",
            );
        }
        let wanted = match request.digest.as_deref().map(Sha256Digest::from_nats) {
            None => None,
            Some(Ok(digest)) => Some(digest),
            Some(Err(e)) => {
                return Reply::error(
                    Code::BadRequest,
                    bucket,
                    name,
                    format!("digest {:?} is not SHA-256=…: {e}", request.digest),
                )
            }
        };
        match tokio::time::timeout(self.deadline, self.ensure(bucket, name, wanted)).await {
            Ok(reply) => {
                if let Reply::Ready { .. } = &reply {
                    self.accessed(bucket, name).await;
                }
                reply
            }
            Err(_) => Reply::error(
                Code::Unavailable,
                bucket,
                name,
                format!(
                    "{bucket}/{name} was not ready on tier {} within {} (a restore may still be \
                     running; ask again)",
                    self.hub,
                    humantime::format_duration(self.deadline)
                ),
            ),
        }
    }

    /// The object was handed out through the service (found on the hub or restored there):
    /// recorded as an access for the policies' `idle` (coalesced, at most one write per
    /// `[access] interval`; never fails the answer, and bounded by the access log's deadlines,
    /// which the answer's own deadline does not include).
    async fn accessed(&self, bucket: &str, name: &str) {
        tracing::debug!(bucket, name, tier = %self.hub, "accessed through the ensure service");
        self.access.record(bucket, name).await;
    }

    async fn ensure(
        self: &Arc<Self>,
        bucket: &str,
        name: &str,
        wanted: Option<Sha256Digest>,
    ) -> Reply {
        let object = format!("{bucket}/{name}");
        if let Some(reply) = self.on_hub(bucket, name, wanted.as_ref()).await {
            return reply;
        }
        let manifest = match self.store.get_manifest(bucket, name).await {
            Ok(manifest) => manifest,
            Err(e) => {
                return Reply::error(
                    Code::Unavailable,
                    bucket,
                    name,
                    format!(
                        "{object}: cannot read its manifest on tier {}: {e}",
                        self.store.tier_name()
                    ),
                )
            }
        };
        if let Some(m) = manifest {
            if let Some(d) = &m.deleted {
                let s3 = self.store.tier_name();
                let message = format!("{object} is deleted (tier {s3}: {} at {})", d.by, d.at);
                return Reply::error(Code::Deleted, bucket, name, message);
            }
            if let Some(wanted) = wanted.filter(|w| *w != m.digest) {
                let message = format!(
                    "{object}: tier {} holds version {}, not {wanted}",
                    self.store.tier_name(),
                    m.digest
                );
                return Reply::error(Code::NotFound, bucket, name, message);
            }
            return self.shared_restore(m).await;
        }
        for leaf in &self.leaves {
            if let Ok(Some(found)) = self.latest(leaf, bucket, name).await {
                if is_live(&found.info) {
                    let message = format!(
                        "{object} is held only on leaf {leaf}: it reaches tier {} when the \
                         policies move it there; ask again later",
                        self.hub
                    );
                    return Reply::error(Code::Unavailable, bucket, name, message);
                }
            }
        }
        let mut looked = vec![self.hub.clone(), self.store.tier_name().to_string()];
        looked.extend(self.leaves.iter().cloned());
        let message = format!("no tier holds {object} (looked on {})", looked.join(", "));
        Reply::error(Code::NotFound, bucket, name, message)
    }

    /// The object's latest meta on JetStream tier `tier`.
    async fn latest(
        &self,
        tier: &str,
        bucket: &str,
        name: &str,
    ) -> Result<Option<cim_tiering::jetstream::StoredObject>, cim_tiering::Error> {
        self.system.jetstream_tier(tier)?.latest(bucket, name).await
    }

    /// The answer the hub gives by itself: ready, deleted, unusable or unreachable; `None` when
    /// it holds nothing of the object.
    async fn on_hub(
        &self,
        bucket: &str,
        name: &str,
        wanted: Option<&Sha256Digest>,
    ) -> Option<Reply> {
        let hub = &self.hub;
        let object = format!("{bucket}/{name}");
        let error = |code, message: String| Some(Reply::error(code, bucket, name, message));
        let info = match self.latest(hub, bucket, name).await {
            Err(e) => return error(Code::Unavailable, format!("{object} on tier {hub}: {e}")),
            Ok(None) => return None,
            Ok(Some(found)) => found.info,
        };
        if info.deleted {
            return error(
                Code::Deleted,
                format!("{object} is deleted (tier {hub} holds a delete marker)"),
            );
        }
        if !is_live(&info) {
            return error(
                Code::Unavailable,
                format!("{object} on tier {hub} is a link, not an object"),
            );
        }
        let digest = match info.digest.as_deref().map(Sha256Digest::from_nats) {
            Some(Ok(digest)) => digest,
            _ => {
                return error(
                    Code::Unavailable,
                    format!("{object} on tier {hub}: its meta records no readable SHA-256 digest"),
                )
            }
        };
        if let Some(wanted) = wanted.filter(|w| **w != digest) {
            return error(
                Code::NotFound,
                format!("{object}: tier {hub} holds version {digest}, not {wanted}"),
            );
        }
        Some(Reply::Ready {
            tier: hub.clone(),
            size: info.size as u64,
            digest: digest.to_nats(),
            restored: false,
        })
    }

    /// Joins the restore of `m`'s object in progress, or starts one.
    async fn shared_restore(self: &Arc<Self>, m: Manifest) -> Reply {
        let key = (m.bucket.clone(), m.name.clone());
        let restore = {
            let mut restores = self.restores.lock().unwrap_or_else(|p| p.into_inner());
            match restores.get(&key) {
                Some(running) => running.clone(),
                None => {
                    let this = self.clone();
                    let span = tracing::Span::current();
                    let task = tokio::spawn(async move {
                        let reply = this.restore(&m).instrument(span).await;
                        this.restores
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&(m.bucket.clone(), m.name.clone()));
                        reply
                    });
                    let (bucket, name) = key.clone();
                    let shared = async move {
                        task.await.unwrap_or_else(|e| {
                            Reply::error(
                                Code::Unavailable,
                                &bucket,
                                &name,
                                format!("{bucket}/{name}: the restore task failed: {e}"),
                            )
                        })
                    }
                    .boxed()
                    .shared();
                    restores.insert(key, shared.clone());
                    shared
                }
            }
        };
        restore.await
    }

    /// Restores `m`'s object into the hub (one object, as `restore --name` does).
    async fn restore(&self, m: &Manifest) -> Reply {
        let (bucket, name) = (m.bucket.as_str(), m.name.as_str());
        let object = format!("{bucket}/{name}");
        let started = Instant::now();
        let restored = match Restorer::new(self.system.clone(), self.store.clone(), &self.hub).await
        {
            Ok(restorer) => {
                let restored = restorer.restore(bucket, name).await;
                restorer.close().await;
                restored
            }
            Err(e) => Err(e),
        };
        metrics::ensure_restored(started.elapsed());
        let ready = |restored| Reply::Ready {
            tier: self.hub.clone(),
            size: m.size,
            digest: m.digest.to_nats(),
            restored,
        };
        match restored {
            Ok(Restored::Written) => ready(true),
            Ok(Restored::AlreadyPresent) => ready(false),
            Ok(Restored::Deleted(why)) => Reply::error(
                Code::Deleted,
                bucket,
                name,
                format!("{object} is deleted ({why})"),
            ),
            Ok(Restored::Skipped(why)) => {
                Reply::error(Code::Unavailable, bucket, name, format!("{object}: {why}"))
            }
            Ok(Restored::WouldRestore) => Reply::error(
                Code::Unavailable,
                bucket,
                name,
                format!("{object}: a dry run wrote nothing"),
            ),
            Err(e @ Error::Integrity { .. }) => Reply::error(
                Code::Integrity,
                bucket,
                name,
                format!(
                    "{object}: the copy on tier {} is bad, nothing was written: {e}",
                    self.store.tier_name()
                ),
            ),
            Err(e @ Error::NotInS3 { .. }) => {
                Reply::error(Code::NotFound, bucket, name, e.to_string())
            }
            Err(e) => {
                // Another instance may have restored it meanwhile (its commit won).
                if let Some(reply @ Reply::Ready { .. }) =
                    self.on_hub(bucket, name, Some(&m.digest)).await
                {
                    return reply;
                }
                Reply::error(
                    Code::Unavailable,
                    bucket,
                    name,
                    format!("{object}: restoring it into tier {} failed: {e}", self.hub),
                )
            }
        }
    }
}

/// Serves [`SUBJECT`] until `shutdown`: each request is answered by a task of its own, in a
/// tracing span naming the object.
pub async fn serve(
    ensurer: Arc<Ensurer>,
    client: async_nats::Client,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let nats = |e: async_nats::Error| Error::Nats {
        op: "start the ensure service on".into(),
        bucket: String::new(),
        name: SUBJECT.into(),
        cause: e,
    };
    let service = client
        .service_builder()
        .description("makes an object ready in the hub object store, restoring it from s3")
        .queue_group(QUEUE_GROUP)
        .start(SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(nats)?;
    let mut endpoint = service
        .endpoint_builder()
        .name("ensure")
        .add(SUBJECT)
        .await
        .map_err(nats)?;
    tracing::info!(subject = SUBJECT, queue_group = QUEUE_GROUP, "serving");
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => break,
            request = endpoint.next() => request,
        };
        let Some(request) = request else { break };
        let ensurer = ensurer.clone();
        tokio::spawn(async move {
            let span = request_span(&request.message.payload);
            let reply = ensurer
                .answer(&request.message.payload)
                .instrument(span.clone())
                .await;
            span.in_scope(|| match &reply {
                Reply::Ready { restored, .. } => tracing::info!(restored, "ready"),
                Reply::Error { code, message, .. } => {
                    tracing::warn!(code = code.as_str(), message, "not ready")
                }
            });
            metrics::ensured(reply.outcome());
            respond(&request, &reply).instrument(span).await;
        });
    }
    let _ = endpoint.stop().await;
    let _ = service.stop().await;
    Ok(())
}

/// The span of one request, naming the object when the payload says which.
fn request_span(payload: &[u8]) -> tracing::Span {
    let (bucket, name) = serde_json::from_slice::<EnsureRequest>(payload)
        .map(|r| (r.bucket, r.name))
        .unwrap_or_default();
    tracing::info_span!("ensure", %bucket, %name)
}

/// Sends `reply` as JSON; an error also carries the micro-service error headers.
async fn respond(request: &async_nats::service::Request, reply: &Reply) {
    let body = Bytes::from(serde_json::to_vec(reply).unwrap_or_default());
    let mut headers = async_nats::HeaderMap::new();
    if let Reply::Error { code, message, .. } = reply {
        headers.insert(async_nats::service::NATS_SERVICE_ERROR, message.as_str());
        headers.insert(
            async_nats::service::NATS_SERVICE_ERROR_CODE,
            code.number().to_string().as_str(),
        );
    }
    match tokio::time::timeout(
        RESPOND_DEADLINE,
        request.respond_with_headers(Ok(body), headers),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "could not answer"),
        Err(_) => tracing::warn!("could not answer within {RESPOND_DEADLINE:?}"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn replies_are_the_documented_json() {
        let ready = Reply::Ready {
            tier: "hub".into(),
            size: 3,
            digest: "SHA-256=abc=".into(),
            restored: true,
        };
        assert_eq!(
            serde_json::to_value(&ready).unwrap(),
            serde_json::json!({"status": "ready", "tier": "hub", "size": 3,
                               "digest": "SHA-256=abc=", "restored": true})
        );
        let error = Reply::error(Code::NotFound, "b", "n", "no tier holds b/n");
        assert_eq!(
            serde_json::to_value(&error).unwrap(),
            serde_json::json!({"status": "error", "code": "not_found", "bucket": "b",
                               "name": "n", "message": "no tier holds b/n"})
        );
        assert_eq!(error.outcome(), "not_found");
        assert_eq!(ready.outcome(), "restored");
    }

    #[test]
    fn requests_refuse_unknown_fields() {
        assert!(serde_json::from_str::<EnsureRequest>(r#"{"bucket":"b","name":"n"}"#).is_ok());
        assert!(
            serde_json::from_str::<EnsureRequest>(r#"{"bucket":"b","name":"n","x":1}"#).is_err()
        );
    }
}
