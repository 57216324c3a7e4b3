//! Leases: at most one worker does a piece of work at a time, across tasks and processes.
//!
//! Used for S3 blobs (`cim-gateway`'s upload): blobs are content-addressed, so two objects with the same content (or two deliveries of one
//! object) upload to the same key. Without coordination the second uploader would abort the
//! first one's multipart upload (taking it for a dead uploader's leftover) and both would fail.
//! Instead, whoever holds the blob's lease uploads; the others wait until it is released and then
//! find the blob complete and reuse it. Only the holder aborts unfinished multipart uploads of
//! its blob: anything there while it holds the lease was left by an uploader that died (or lost
//! its lease).
//!
//! # Contract
//!
//! * A lease is a key in the KV bucket [`LEASE_BUCKET`] on the control plane, created with
//!   compare-and-set (`create` fails while the key exists), so at most one holder at a time.
//! * The bucket's `max_age` is [`LEASE_TTL`]: a key not renewed for that long disappears, measured
//!   by the server's clock (never the holders' clocks, which may differ). The holder renews every
//!   [`LEASE_RENEW_EVERY`] (compare-and-set on the revision it wrote), so a lease lives as long as
//!   its holder does, and a holder that dies (SIGKILL) frees its blobs within [`LEASE_TTL`].
//! * Releasing deletes the key (compare-and-set); dropping a [`Lease`] releases it in the
//!   background.
//! * Correctness never depends on the lease: uploads are verified and idempotent, and an upload
//!   whose multipart upload was aborted under it (a holder that lost its lease) fails
//!   transiently and is retried. The lease only keeps live uploads from undoing each other.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::error::Error;

/// The KV bucket holding the leases (on the control plane, beside `cim_catalog`).
pub const LEASE_BUCKET: &str = "cim_leases";
/// A lease not renewed for this long expires (the bucket's `max_age`).
pub const LEASE_TTL: Duration = Duration::from_secs(30);
/// How often a holder renews its lease: three renewals per [`LEASE_TTL`], so one lost renewal
/// (a leader election) does not lose the lease.
pub const LEASE_RENEW_EVERY: Duration = Duration::from_secs(10);
/// How long [`Leases::open`] waits for a bucket it created to answer.
pub const READY_WAIT: Duration = Duration::from_secs(10);
/// How often a waiter checks whether a lease was released.
pub const LEASE_POLL: Duration = Duration::from_millis(500);

/// The lease bucket. Keys are KV keys chosen by the caller (e.g. `blob.<tier>.<hex>`).
#[derive(Clone)]
pub struct Leases {
    kv: kv::Store,
}

fn lease_error(op: &'static str, key: &str, source: impl std::fmt::Display) -> Error {
    Error::Lease {
        op,
        key: key.to_string(),
        source: source.to_string().into(),
    }
}

impl Leases {
    /// Opens the lease bucket, creating it (with `replicas`) if needed. A bucket created here
    /// is waited for (up to [`READY_WAIT`]) until it answers reads: right after creation a
    /// replicated stream may still answer "no stream found", and the first lease taken would
    /// fail for no reason but timing (seen under load in CI).
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Leases, Error> {
        let kv = match js.get_key_value(LEASE_BUCKET).await {
            Ok(kv) => return Ok(Leases { kv }),
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: LEASE_BUCKET.to_string(),
                    description: "cim leases: one uploader per blob".into(),
                    history: 1,
                    max_age: LEASE_TTL,
                    num_replicas: replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| lease_error("open", LEASE_BUCKET, e))?,
        };
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        loop {
            match kv.entry("ready-probe").await {
                Ok(_) => return Ok(Leases { kv }),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(lease_error(
                        "open (waiting until it answers)",
                        LEASE_BUCKET,
                        e,
                    ))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Takes the lease `key` for `holder` if nobody holds it; `None` when someone does.
    pub async fn try_acquire(&self, key: &str, holder: &str) -> Result<Option<Lease>, Error> {
        let value = Bytes::from(holder.to_string());
        match self.kv.create(key, value.clone()).await {
            Ok(revision) => Ok(Some(Lease::start(self.kv.clone(), key, value, revision))),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => {
                // The key may have been written, expired or deleted between create's two steps:
                // a live key means "held", anything else is an error the caller retries.
                match self.holder(key).await? {
                    Some(_) => Ok(None),
                    None => Err(lease_error("acquire", key, e)),
                }
            }
        }
    }

    /// Who holds `key`, if anyone, as the bucket's stream leader sees it.
    ///
    /// Not a KV `entry` (a direct get, answered by any replica): each replica expires
    /// `max_age` on its own clock and may lag the leader's renewals, so a replica could call a
    /// dead holder alive (a killed writer's chunks left for one more run) or, worse, a live
    /// holder gone. The leader applies every renewal first; its answer is the one to act on.
    pub async fn holder(&self, key: &str) -> Result<Option<String>, Error> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        let subject = format!("{}{key}", self.kv.prefix);
        let message = match self
            .kv
            .stream
            .get_last_raw_message_by_subject(&subject)
            .await
        {
            Ok(message) => message,
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(e) => return Err(lease_error("read", key, e)),
        };
        // A delete or purge marker means nobody holds it.
        let operation = message
            .headers
            .get("KV-Operation")
            .map(|v| v.as_str().to_string());
        Ok(match operation.as_deref() {
            Some("DEL") | Some("PURGE") => None,
            _ => Some(String::from_utf8_lossy(&message.payload).into_owned()),
        })
    }
}

/// A held lease, renewed in the background until released or dropped.
pub struct Lease {
    kv: kv::Store,
    key: String,
    /// The revision we last wrote; `None` once the lease was lost to someone else.
    revision: Arc<Mutex<Option<u64>>>,
    renewer: JoinHandle<()>,
}

impl Lease {
    fn start(kv: kv::Store, key: &str, value: Bytes, revision: u64) -> Lease {
        let shared = Arc::new(Mutex::new(Some(revision)));
        let renewer = tokio::spawn({
            let (kv, key, shared) = (kv.clone(), key.to_string(), shared.clone());
            async move {
                loop {
                    tokio::time::sleep(LEASE_RENEW_EVERY).await;
                    let Some(current) = *shared.lock().expect("lock") else {
                        return;
                    };
                    match kv.update(&key, value.clone(), current).await {
                        Ok(next) => *shared.lock().expect("lock") = Some(next),
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            // Expired and taken over: the new holder may abort our multipart
                            // upload, which then fails transiently and is retried.
                            tracing::warn!(key, "lease lost to another uploader");
                            *shared.lock().expect("lock") = None;
                            return;
                        }
                        // A leader election: try again at the next tick (the TTL allows two).
                        Err(e) => tracing::warn!(key, error = %e, "could not renew lease"),
                    }
                }
            }
        });
        Lease {
            kv,
            key: key.to_string(),
            revision: shared,
            renewer,
        }
    }

    /// The lease's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Deletes the lease now (if still ours) so a waiter proceeds at once.
    pub async fn release(self) {
        self.renewer.abort();
        let revision = self.revision.lock().expect("lock").take();
        if let Some(revision) = revision {
            delete(&self.kv, &self.key, revision).await;
        }
    }
}

async fn delete(kv: &kv::Store, key: &str, revision: u64) {
    match tokio::time::timeout(
        LEASE_RENEW_EVERY,
        kv.delete_expect_revision(key, Some(revision)),
    )
    .await
    {
        Ok(Ok(())) => {}
        // Not released: it expires after LEASE_TTL; waiters only wait longer.
        Ok(Err(e)) => tracing::debug!(key, error = %e, "could not release lease"),
        Err(_) => tracing::debug!(key, "releasing lease timed out"),
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
        let revision = self.revision.lock().expect("lock").take();
        if let Some(revision) = revision {
            let (kv, key) = (self.kv.clone(), self.key.clone());
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { delete(&kv, &key, revision).await });
            }
        }
    }
}
