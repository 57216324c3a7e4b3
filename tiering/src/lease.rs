//! Leases: at most one worker does a piece of work at a time, across tasks and processes.
//!
//! Used for S3 blobs (`cim-gateway`'s upload) and for the manager's leadership
//! ([`crate::manager::leader`], its own bucket with a shorter TTL). Blobs are content-addressed, so two objects with the same content (or two deliveries of one
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
//! * The bucket's `max_age` is its TTL ([`LEASE_TTL`] for [`LEASE_BUCKET`]): a key not renewed for
//!   that long disappears, measured by the server's clock (never the holders' clocks, which may
//!   differ). The holder renews every third of the TTL ([`LEASE_RENEW_EVERY`] for blobs;
//!   compare-and-set on the revision it wrote), so a lease lives as long as its holder does, and
//!   a holder that dies (SIGKILL) frees it within the TTL.
//! * A holder knows how long its lease is surely still its own ([`Lease::held_until`]): the TTL
//!   from when it *sent* its last successful write, less [`HELD_MARGIN`] — the server's expiry
//!   counts from when it stored that write, which is later.
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
/// Taken off a lease's TTL when its holder counts how long it surely holds it: clocks run at
/// slightly different rates, and a holder must stop before the server could expire its key.
pub const HELD_MARGIN: Duration = Duration::from_secs(1);

/// A lease bucket. Keys are KV keys chosen by the caller (e.g. `blob.<tier>.<hex>`).
#[derive(Clone)]
pub struct Leases {
    kv: kv::Store,
    ttl: Duration,
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
        Self::open_bucket(
            js,
            LEASE_BUCKET,
            "cim leases: one uploader per blob",
            LEASE_TTL,
            replicas,
        )
        .await
    }

    /// Opens the lease bucket `bucket` whose leases live `ttl` unless renewed (its `max_age`),
    /// creating it if needed, as [`Leases::open`] does.
    pub async fn open_bucket(
        js: &jetstream::Context,
        bucket: &str,
        description: &str,
        ttl: Duration,
        replicas: usize,
    ) -> Result<Leases, Error> {
        let kv = crate::jetstream::kv::open_or_create(
            js,
            kv::Config {
                bucket: bucket.to_string(),
                description: description.to_string(),
                history: 1,
                max_age: ttl,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| lease_error("open", bucket, e))?;
        let deadline = tokio::time::Instant::now() + READY_WAIT;
        loop {
            match kv.entry("ready-probe").await {
                Ok(_) => return Ok(Leases { kv, ttl }),
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(lease_error("open (waiting until it answers)", bucket, e))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Takes the lease `key` for `holder` if nobody holds it; `None` when someone does.
    pub async fn try_acquire(&self, key: &str, holder: &str) -> Result<Option<Lease>, Error> {
        let value = Bytes::from(holder.to_string());
        let sent = tokio::time::Instant::now();
        match self.kv.create(key, value.clone()).await {
            Ok(revision) => Ok(Some(Lease::start(
                self.kv.clone(),
                key,
                value,
                revision,
                Held {
                    ttl: self.ttl,
                    sent,
                },
            ))),
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

/// When a lease's last successful write was sent, and its TTL.
#[derive(Debug, Clone, Copy)]
struct Held {
    ttl: Duration,
    sent: tokio::time::Instant,
}

impl Held {
    /// Until when the lease is surely ours (see the module docs).
    fn until(&self) -> tokio::time::Instant {
        self.sent + self.ttl.saturating_sub(HELD_MARGIN)
    }
}

/// A held lease, renewed in the background until released or dropped.
pub struct Lease {
    kv: kv::Store,
    key: String,
    /// The revision we last wrote; `None` once the lease was lost to someone else.
    revision: Arc<Mutex<Option<u64>>>,
    /// When the last successful write was sent.
    held: Arc<Mutex<Held>>,
    renewer: JoinHandle<()>,
}

impl Lease {
    fn start(kv: kv::Store, key: &str, value: Bytes, revision: u64, held: Held) -> Lease {
        let shared = Arc::new(Mutex::new(Some(revision)));
        let held = Arc::new(Mutex::new(held));
        let renew_every = held.lock().expect("lock").ttl / 3;
        let renewer = tokio::spawn({
            let (kv, key, shared, held) =
                (kv.clone(), key.to_string(), shared.clone(), held.clone());
            async move {
                loop {
                    tokio::time::sleep(renew_every).await;
                    let Some(current) = *shared.lock().expect("lock") else {
                        return;
                    };
                    let sent = tokio::time::Instant::now();
                    // A renewal that does not answer within a renewal period counts as failed.
                    let renewed =
                        tokio::time::timeout(renew_every, kv.update(&key, value.clone(), current))
                            .await;
                    let renewed = match renewed {
                        Ok(result) => result,
                        Err(_) => {
                            tracing::warn!(key, "could not renew lease: no answer");
                            continue;
                        }
                    };
                    match renewed {
                        Ok(next) => {
                            *shared.lock().expect("lock") = Some(next);
                            held.lock().expect("lock").sent = sent;
                        }
                        Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                            // Expired and taken over: the new holder may abort our multipart
                            // upload, which then fails transiently and is retried.
                            tracing::warn!(key, "lease lost to another holder");
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
            held,
            renewer,
        }
    }

    /// Until when this lease is surely still ours: the TTL from when its last successful write
    /// was sent, less [`HELD_MARGIN`]; `None` once it was lost to someone else. Past that
    /// instant the server may have expired it and another holder may have it.
    pub fn held_until(&self) -> Option<tokio::time::Instant> {
        self.revision.lock().expect("lock").as_ref()?;
        Some(self.held.lock().expect("lock").until())
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
