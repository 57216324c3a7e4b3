//! The access records: when each object was last read, for the policies' `idle` condition.
//!
//! A KV bucket on the control plane (`[access] bucket`, default `cim_access`, `[nats] replicas`)
//! holds one key per object, the catalog's key ([`crate::catalog::key`]). Reads that count —
//! `cim-gateway get` and the answers of the ensure service — call [`AccessLog::record`], the one
//! helper for it. The time of an access is the **server's** time of the KV write (the stream
//! message's timestamp): the age `after` is measured with is the server's time the tier stored
//! the object, so both come from the NATS servers' clocks, and a reader on a host with a wrong
//! clock (a leaf, a laptop running `get`) can make an object look neither fresher nor older
//! than it is. The value holds the writer's own time (RFC 3339), for people only.
//!
//! Writes are coalesced: a reader writes only when the stored record is older than
//! `[access] interval` (default 1 h), so a hot object costs one KV get per read and at most one
//! write per interval; `idle` is known to within that interval. Recording never fails a read:
//! an error is logged and counted (`cim_access_record_failures_total`), and the read goes on.
//! Every request has a deadline ([`DEADLINE`]).
//!
//! The manager does not read one record per object: it follows the bucket
//! ([`AccessLog::follow`] into an [`AccessIndex`], read once in full, then only what changed),
//! and only when an enabled policy has an `idle`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use tokio::sync::OnceCell;

use crate::error::{BoxError, Error};
use crate::jetstream::direct::{DirectGet, DirectMessage};
use crate::System;

/// Deadline of each request on the access bucket (open, get, put): a read waits at most this
/// long for its record, twice.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// The access bucket, opened (created if needed) on first use.
#[derive(Clone)]
pub struct AccessLog {
    js: jetstream::Context,
    bucket: String,
    replicas: usize,
    interval: Duration,
    opened: Arc<OnceCell<Opened>>,
}

#[derive(Clone)]
struct Opened {
    kv: kv::Store,
    /// Batched reads of the KV stream for [`AccessLog::follow`]; `None` behind a JetStream
    /// domain prefix (as for the catalog).
    direct: Option<DirectGet>,
}

impl AccessLog {
    /// The access log of `system`'s configuration (`[access]`); nothing is asked of NATS yet.
    pub fn new(system: &System) -> Self {
        let config = &system.config;
        AccessLog {
            js: system.control().clone(),
            bucket: config.access.bucket.clone(),
            replicas: config.nats.replicas,
            interval: config.access.interval,
            opened: Arc::new(OnceCell::new()),
        }
    }

    fn error(&self, op: &'static str, key: &str, source: impl Into<BoxError>) -> Error {
        Error::Access {
            op,
            key: format!("{}/{key}", self.bucket),
            source: source.into(),
        }
    }

    async fn opened(&self) -> Result<&Opened, Error> {
        self.opened
            .get_or_try_init(|| async {
                // Lookup and create bounded together: a read waits no longer for its record.
                let kv = deadline(crate::jetstream::kv::open_or_create(
                    &self.js,
                    kv::Config {
                        bucket: self.bucket.clone(),
                        description: "cim access records: when each object was last read".into(),
                        history: 1,
                        num_replicas: self.replicas,
                        ..Default::default()
                    },
                ))
                .await
                .ok_or_else(|| self.error("open", "", "no answer within the deadline"))?
                .map_err(|e| self.error("open", "", e))?;
                let direct = (!kv.use_jetstream_prefix).then(|| {
                    DirectGet::with_api_prefix(
                        self.js.client(),
                        "$JS.API",
                        &kv.stream_name,
                        "access",
                        &self.bucket,
                    )
                });
                Ok(Opened { kv, direct })
            })
            .await
    }

    /// Records that `bucket/name` was read now, unless its record is younger than
    /// `[access] interval`. Never fails: an error is logged and counted, and the caller's read
    /// goes on.
    pub async fn record(&self, bucket: &str, name: &str) {
        match self.try_record(bucket, name).await {
            Ok(wrote) => tracing::debug!(bucket, name, wrote, "access recorded"),
            Err(e) => {
                crate::metrics::access_record_failed();
                tracing::warn!(bucket, name, error = %e, "cannot record the access (the read goes on)");
            }
        }
    }

    /// [`AccessLog::record`], saying whether it wrote.
    pub async fn try_record(&self, bucket: &str, name: &str) -> Result<bool, Error> {
        let opened = self.opened().await?;
        let key = crate::catalog::key(bucket, name);
        let entry = deadline(opened.kv.entry(&key))
            .await
            .ok_or_else(|| self.error("read", &key, "no answer within the deadline"))?
            .map_err(|e| self.error("read", &key, e))?;
        let now = time::OffsetDateTime::now_utc();
        if let Some(entry) = &entry {
            let fresh = entry.operation == kv::Operation::Put
                && now - entry.created
                    < time::Duration::try_from(self.interval).unwrap_or_default();
            if fresh {
                return Ok(false);
            }
        }
        let value = now
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        deadline(opened.kv.put(&key, value.into()))
            .await
            .ok_or_else(|| self.error("write", &key, "no answer within the deadline"))?
            .map_err(|e| self.error("write", &key, e))?;
        Ok(true)
    }

    /// When `bucket/name` was last read (the server's time of its record), if ever: one KV
    /// get, for `explain`.
    pub async fn last_read(
        &self,
        bucket: &str,
        name: &str,
    ) -> Result<Option<time::OffsetDateTime>, Error> {
        let opened = self.opened().await?;
        let key = crate::catalog::key(bucket, name);
        let entry = deadline(opened.kv.entry(&key))
            .await
            .ok_or_else(|| self.error("read", &key, "no answer within the deadline"))?
            .map_err(|e| self.error("read", &key, e))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| e.created))
    }

    /// Brings `index` up to date: every record written after its cursor, in batches (the
    /// first call reads the whole bucket). Returns how many messages it read.
    pub async fn follow(&self, index: &mut AccessIndex) -> Result<u64, Error> {
        let opened = self.opened().await?;
        let direct = opened.direct.as_ref().ok_or_else(|| {
            self.error(
                "follow",
                "*",
                "bulk reads need the access bucket on the default JetStream API prefix",
            )
        })?;
        let prefix = &opened.kv.prefix;
        let filter = format!("{prefix}>");
        direct
            .walk(&filter, index.cursor + 1, |message| {
                index.cursor = index.cursor.max(message.seq);
                index.take(prefix, message);
            })
            .await
    }
}

/// `future`, or `None` past [`DEADLINE`].
async fn deadline<T>(future: impl std::future::Future<Output = T>) -> Option<T> {
    tokio::time::timeout(DEADLINE, future).await.ok()
}

/// The last read of every object that has a record, kept up to date by
/// [`AccessLog::follow`]: the manager's view (a key and a timestamp per object read).
#[derive(Debug, Default)]
pub struct AccessIndex {
    cursor: u64,
    last: HashMap<Box<str>, time::OffsetDateTime>,
}

impl AccessIndex {
    /// When `bucket/name` was last read, if it has a record.
    pub fn last_read(&self, bucket: &str, name: &str) -> Option<time::OffsetDateTime> {
        self.last
            .get(crate::catalog::key(bucket, name).as_str())
            .copied()
    }

    /// Records indexed.
    pub fn len(&self) -> usize {
        self.last.len()
    }

    /// Whether no record is indexed.
    pub fn is_empty(&self) -> bool {
        self.last.is_empty()
    }

    /// Takes one KV message in: a put sets the key's time (the server's), a delete or purge
    /// drops it.
    fn take(&mut self, prefix: &str, message: &DirectMessage) {
        let Some(key) = message.subject.strip_prefix(prefix) else {
            return;
        };
        let operation = message.headers.get("KV-Operation").map(|v| v.as_str());
        if matches!(operation, Some("DEL") | Some("PURGE")) {
            self.last.remove(key);
            return;
        }
        match self.last.get_mut(key) {
            Some(at) => *at = (*at).max(message.time),
            None => {
                self.last.insert(key.into(), message.time);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_index_keeps_the_latest_read_and_follows_deletes() {
        let message = |seq, secs: i64, delete: bool| {
            let mut headers = async_nats::HeaderMap::new();
            if delete {
                headers.insert("KV-Operation", "DEL");
            }
            DirectMessage {
                subject: format!("$KV.a.{}", crate::catalog::key("b", "n/1")),
                seq,
                time: time::OffsetDateTime::from_unix_timestamp(secs).unwrap(),
                headers,
                payload: bytes::Bytes::new(),
            }
        };
        let mut index = AccessIndex::default();
        assert_eq!(index.last_read("b", "n/1"), None);
        index.take("$KV.a.", &message(1, 100, false));
        index.take("$KV.a.", &message(2, 200, false));
        assert_eq!(
            index.last_read("b", "n/1").map(|t| t.unix_timestamp()),
            Some(200)
        );
        assert_eq!(index.len(), 1);
        index.take("$KV.a.", &message(3, 300, true));
        assert_eq!(index.last_read("b", "n/1"), None);
        assert!(index.is_empty());
    }
}
