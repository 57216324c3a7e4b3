//! Batched direct gets (ADR-31, nats-server ≥ 2.11): one request, many messages of a stream.
//!
//! Two shapes of request:
//! * [`DirectGet::next_by_subject`]: up to `batch` messages on a subject (wildcards allowed) from
//!   a sequence on — an object's chunks, or every meta message stored since a cursor;
//! * [`DirectGet::last_per_subject`]: the last message of each subject matching a filter, up to
//!   a sequence — the current meta of every object of a bucket.
//!
//! Why not the async-nats calls we use elsewhere: an object-store read through async-nats creates
//! an ordered push consumer per object (a consumer create and delete per object, flow control per
//! chunk), and `get_last_raw_message_by_subject` costs one round trip per object. The bench's
//! `raw-nats` get, built on batched direct gets, reads 3× faster than async-nats' object reader.
//! `jetstream-extra` (synadia-io/orbit.rs) implements the same API but is built on async-nats
//! 0.48, whose types are not ours (0.51).
//!
//! # What an answer is worth
//! Direct gets are answered by any replica of a stream with `allow_direct` (the buckets
//! [`super::bucket_stream_config`] creates have it), so a lagging follower may answer with an
//! older state. Content read this way is still checked against its ingest digest; decisions that
//! cannot be undone (eviction) re-read the meta from the stream leader first.

use std::time::Duration;

use async_nats::{HeaderMap, Subscriber};
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

use crate::error::Error;

/// The most messages the server returns for one batch request.
pub const MAX_BATCH: usize = 1000;

/// Longest wait for the next reply of a batch. Replies stream back-to-back from one server; a
/// gap this long means the server or the route to it is gone.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// One message of a stream, as a direct get returns it.
#[derive(Debug, Clone)]
pub struct DirectMessage {
    /// The subject it was stored on.
    pub subject: String,
    /// Its stream sequence.
    pub seq: u64,
    /// When the server stored it.
    pub time: time::OffsetDateTime,
    /// Its headers (the `Nats-*` ones the direct get adds included).
    pub headers: HeaderMap,
    /// Its payload.
    pub payload: Bytes,
}

/// Batched direct gets on one bucket's stream of one tier.
#[derive(Clone)]
pub struct DirectGet {
    client: async_nats::Client,
    /// `$JS.<domain>.API.DIRECT.GET.<stream>`.
    api: String,
    tier: String,
    bucket: String,
}

/// The request body (ADR-31); absent fields are left out.
#[derive(Debug, Default, Serialize)]
struct Request<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_by_subj: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    multi_last: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    up_to_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_bytes: Option<usize>,
}

impl DirectGet {
    /// Direct gets on stream `stream` of JetStream domain `domain`; errors name `tier` and
    /// `bucket`.
    pub fn new(
        client: async_nats::Client,
        domain: &str,
        stream: &str,
        tier: &str,
        bucket: &str,
    ) -> Self {
        Self::with_api_prefix(client, &format!("$JS.{domain}.API"), stream, tier, bucket)
    }

    /// Direct gets on stream `stream` through the JetStream API at `api_prefix` (`$JS.API`
    /// for the account's own JetStream, as the catalog's control plane uses it).
    pub fn with_api_prefix(
        client: async_nats::Client,
        api_prefix: &str,
        stream: &str,
        tier: &str,
        bucket: &str,
    ) -> Self {
        DirectGet {
            client,
            api: format!("{api_prefix}.DIRECT.GET.{stream}"),
            tier: tier.to_string(),
            bucket: bucket.to_string(),
        }
    }

    /// Up to `batch` (at most [`MAX_BATCH`]) messages on `subject` with sequence `from_seq` or
    /// later, in sequence order.
    pub async fn next_by_subject(
        &self,
        subject: &str,
        from_seq: u64,
        batch: usize,
    ) -> Result<Batch, Error> {
        self.send(&Request {
            seq: Some(from_seq.max(1)),
            next_by_subj: Some(subject),
            batch: Some(batch.clamp(1, MAX_BATCH)),
            ..Request::default()
        })
        .await
    }

    /// Like [`Self::next_by_subject`], but the server stops the batch once it has sent about
    /// `max_bytes` of payload (at least one message): a bound on what one reply holds when the
    /// subject mixes small and large messages (a bucket's metas and chunks).
    pub async fn next_by_subject_max_bytes(
        &self,
        subject: &str,
        from_seq: u64,
        batch: usize,
        max_bytes: usize,
    ) -> Result<Batch, Error> {
        self.send(&Request {
            seq: Some(from_seq.max(1)),
            next_by_subj: Some(subject),
            batch: Some(batch.clamp(1, MAX_BATCH)),
            max_bytes: Some(max_bytes.max(1)),
            ..Request::default()
        })
        .await
    }

    /// Every message on `subject` (wildcards allowed) with sequence `from` or later, batch by
    /// batch in sequence order until the server has no more, each handed to `take`. Returns how
    /// many were read. A scan of a bucket's metas and a follow of the catalog are both this.
    pub async fn walk(
        &self,
        subject: &str,
        from: u64,
        mut take: impl FnMut(&DirectMessage),
    ) -> Result<u64, Error> {
        let (mut from, mut read) = (from.max(1), 0u64);
        loop {
            let mut batch = self.next_by_subject(subject, from, MAX_BATCH).await?;
            let mut got = 0u64;
            while let Some(message) = batch.next().await? {
                from = message.seq + 1;
                take(&message);
                got += 1;
            }
            read += got;
            // The server says how many more match; a batch may also end early (a byte limit).
            let done = batch
                .num_pending()
                .map_or(got < MAX_BATCH as u64, |pending| pending == 0);
            if got == 0 || done {
                return Ok(read);
            }
        }
    }

    /// The last message of every subject matching `subjects` (wildcards allowed) stored at or
    /// before `up_to_seq` (`None`: now).
    ///
    /// nats-server 2.15 refuses (`413 Too Many Results`, from [`Batch::next`]) a request
    /// matching more than 1,024 subjects, whatever `batch` says. To scan a whole bucket, walk its
    /// meta subjects with [`DirectGet::next_by_subject`] (`$O.<bucket>.M.>`) instead: a rollup
    /// keeps only each object's last meta message, so each object comes once, in sequence order.
    pub async fn last_per_subject(
        &self,
        subjects: &[String],
        up_to_seq: Option<u64>,
        batch: Option<usize>,
    ) -> Result<Batch, Error> {
        self.send(&Request {
            multi_last: Some(subjects),
            up_to_seq,
            batch: batch.map(|b| b.clamp(1, MAX_BATCH)),
            ..Request::default()
        })
        .await
    }

    async fn send(&self, request: &Request<'_>) -> Result<Batch, Error> {
        let body = serde_json::to_vec(request).map_err(|e| self.error(e))?;
        let inbox = self.client.new_inbox();
        let replies = self
            .client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| self.error(e))?;
        self.client
            .publish_with_reply(self.api.clone(), inbox, body.into())
            .await
            .map_err(|e| self.error(e))?;
        Ok(Batch {
            replies,
            source: self.clone(),
            done: false,
            num_pending: None,
            last_seq: None,
        })
    }

    fn error(&self, source: impl Into<crate::error::BoxError>) -> Error {
        Error::bucket_op("direct get", &self.tier, &self.bucket, source)
    }
}

/// The replies to one batch request, read one by one.
pub struct Batch {
    replies: Subscriber,
    source: DirectGet,
    done: bool,
    num_pending: Option<u64>,
    last_seq: Option<u64>,
}

impl Batch {
    /// The next message, or `None` at the end of the batch (or when nothing matched).
    ///
    /// Fails when no reply comes within [`REPLY_TIMEOUT`], or when the server refuses the
    /// request (e.g. `413` for a `multi_last` matching too many subjects).
    pub async fn next(&mut self) -> Result<Option<DirectMessage>, Error> {
        if self.done {
            return Ok(None);
        }
        let reply = tokio::time::timeout(REPLY_TIMEOUT, self.replies.next())
            .await
            .map_err(|_| {
                self.source
                    .error(format!("no reply within {REPLY_TIMEOUT:?}"))
            })?
            .ok_or_else(|| self.source.error("the reply subscription ended"))?;
        let headers = reply.headers.unwrap_or_default();
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_string());
        match reply.status.map(|s| s.as_u16()) {
            // End of batch; it says how many more matched and the last sequence considered.
            Some(204) => {
                self.done = true;
                self.num_pending = header("Nats-Num-Pending").and_then(|v| v.parse().ok());
                self.last_seq = header("Nats-Last-Sequence").and_then(|v| v.parse().ok());
                return Ok(None);
            }
            // Nothing matched.
            Some(404) => {
                self.done = true;
                return Ok(None);
            }
            Some(status) => {
                self.done = true;
                return Err(self.source.error(format!(
                    "status {status} {}",
                    reply.description.unwrap_or_default()
                )));
            }
            None => {}
        }
        let subject = header("Nats-Subject")
            .ok_or_else(|| self.source.error("reply without a Nats-Subject header"))?;
        let seq = header("Nats-Sequence")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                self.source
                    .error("reply without a valid Nats-Sequence header")
            })?;
        let time = header("Nats-Time-Stamp")
            .and_then(|v| {
                time::OffsetDateTime::parse(&v, &time::format_description::well_known::Rfc3339).ok()
            })
            .ok_or_else(|| {
                self.source
                    .error("reply without a valid Nats-Time-Stamp header")
            })?;
        Ok(Some(DirectMessage {
            subject,
            seq,
            time,
            headers,
            payload: reply.payload,
        }))
    }

    /// After the end of the batch: how many more messages matched than it returned, when the
    /// server says (`Nats-Num-Pending`).
    pub fn num_pending(&self) -> Option<u64> {
        self.num_pending
    }

    /// After the end of the batch: the last stream sequence the server considered, when it says
    /// (`Nats-Last-Sequence`).
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_leave_out_what_is_not_set() {
        let chunks = Request {
            seq: Some(7),
            next_by_subj: Some("$O.b.C.n"),
            batch: Some(32),
            ..Request::default()
        };
        assert_eq!(
            serde_json::to_string(&chunks).unwrap(),
            r#"{"seq":7,"next_by_subj":"$O.b.C.n","batch":32}"#
        );
        let subjects = vec!["$O.b.M.>".to_string()];
        let metas = Request {
            multi_last: Some(&subjects),
            up_to_seq: Some(99),
            ..Request::default()
        };
        assert_eq!(
            serde_json::to_string(&metas).unwrap(),
            r#"{"multi_last":["$O.b.M.>"],"up_to_seq":99}"#
        );
    }
}
