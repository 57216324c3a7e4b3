//! Verifying cluster copies as they arrive: the mirror role's follower.
//!
//! Sourcing copies a leaf bucket's messages into the hub's stream of the same name; a `move`
//! may evict the leaf copy only once the hub copy is proven to be the content the leaf ingested
//! (size and SHA-256 of the meta's ingest digest). Reading every hub copy back in full once
//! sourcing has caught up costs a second pass over the data after it arrived, on the same cores
//! the servers use. The follower reads each followed hub bucket's stream once, in sequence
//! order, *while* it arrives — chunks and metas alike, by batched direct gets from a cursor —
//! and keeps per chunk subject (`$O.<bucket>.C.<nuid>`) a SHA-256 state, a byte count and a
//! chunk count. When the version's meta arrives, the content is judged against it:
//!
//! * **Match** (the chunks it saw are every chunk of the version, they add up to the meta's size
//!   and chunk count, and hash to its ingest digest): the hub copy is recorded in the catalog
//!   exactly as a full read-back records it (this hub sequence of the meta, this digest), so the
//!   `LeafEvict` that follows finds "already verified" and only evicts.
//! * **Mismatch** (every chunk seen, but size or digest differ): an integrity failure, counted and
//!   logged naming the object like any other ([`check_content`]), and kept for the `LeafEvict`
//!   of that version, which fails with it instead of evicting.
//! * **Anything else** (the follower started mid-object, chunks were purged or rolled up before
//!   it read them, too many objects in flight, an error): no verdict. The `LeafEvict` then reads
//!   the copy back in full, as before. The follower is only ever an optimisation, never the only
//!   proof.
//!
//! # Why the chunks hashed are the ones the meta refers to
//! A reader of a version asks for the messages on its chunk subject from sequence 1 and stops
//! once it has the meta's size ([`super::super::jetstream::read`]). The follower reads the
//! stream in sequence order from its start position without gaps (a lagging replica answers
//! fewer messages, never a hole), so when the meta arrives it has seen every message on the
//! chunk subject stored before the meta since it started. If it started at sequence 1, those are
//! all of them; otherwise one direct get asks for the subject's first message, which must be the
//! first one hashed. Chunks that add up to exactly the meta's size and chunk count are then
//! exactly what a reader reads. At eviction time the handler re-reads the object's meta from the
//! stream leader and evicts only if it is still this version (same sequence, same nuid, the
//! catalog's digest), as it does after a read-back.
//!
//! # Bounds
//! * **Memory:** per followed bucket at most [`MAX_IN_FLIGHT`] versions are hashed at once (a
//!   SHA-256 state and three counters each); beyond that the oldest is dropped and falls back to
//!   the read-back. A reply holds at most [`BATCH_BYTES`] of payload. Mismatches kept for their
//!   `LeafEvict`: at most [`MAX_MISMATCHES`] per bucket.
//! * **Restart:** nothing is stored; a bucket is followed from its stream's end when the role
//!   (re)starts, so a restart never rehashes the stream. Versions whose chunks started before
//!   are read back.
//! * **Time:** every request has a deadline ([`super::super::jetstream::direct::REPLY_TIMEOUT`]);
//!   a `LeafEvict` waits for the follower at most [`VERDICT_WAIT`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::object_store::ObjectInfo;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::catalog::{Catalog, Version};
use crate::digest::{Hasher, Sha256Digest};
use crate::error::{Error, IntegrityFailure};
use crate::jetstream::direct::{DirectMessage, MAX_BATCH};
use crate::jetstream::{check_content, chunk_subject, ingest_digest, is_live, JetStreamTier};
use crate::metrics;

/// Versions hashed at once per followed bucket; beyond, the oldest falls back to read-back.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Mismatches kept per bucket for the `LeafEvict` of their version.
pub const MAX_MISMATCHES: usize = 1024;
/// Payload bytes one reply of the follower's direct gets holds at most.
pub const BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Longest a `LeafEvict` waits for the follower to reach its version's meta before reading the
/// copy back itself.
pub const VERDICT_WAIT: Duration = Duration::from_secs(30);
/// Pause before asking again when the stream had nothing new.
const IDLE_POLL: Duration = Duration::from_millis(50);
/// Pause after a failed request.
const ERROR_PAUSE: Duration = Duration::from_secs(1);
/// The header nats-server adds to every message a stream sourced.
const SOURCED: &str = "Nats-Stream-Source";

/// What the follower knows about one version when its `LeafEvict` asks.
#[derive(Debug)]
pub enum Verdict {
    /// The follower read past the version's meta: if it verified the copy, the catalog says so.
    Passed,
    /// The copy's content does not match its meta (already counted and logged).
    Mismatch(IntegrityFailure),
    /// The bucket is not followed, or the follower did not get there in time.
    Unknown,
}

/// Follows the hub buckets the mirror role works on (see the module docs).
pub struct Follower {
    catalog: Catalog,
    buckets: Mutex<HashMap<(String, String), Arc<Followed>>>,
}

/// One followed bucket.
struct Followed {
    /// The next stream sequence to read: every message below it was taken into account.
    cursor: watch::Receiver<u64>,
    mismatches: Arc<Mutex<BTreeMap<u64, IntegrityFailure>>>,
    task: JoinHandle<()>,
}

impl Drop for Follower {
    fn drop(&mut self) {
        if let Ok(buckets) = self.buckets.lock() {
            for followed in buckets.values() {
                followed.task.abort();
            }
        }
    }
}

impl Follower {
    /// A follower recording verified copies in `catalog`; it follows nothing yet.
    pub fn new(catalog: Catalog) -> Self {
        Self {
            catalog,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `bucket` of `tier` is followed (by a task still running).
    pub fn follows(&self, tier: &JetStreamTier, bucket: &str) -> bool {
        self.get(tier.name(), bucket).is_some()
    }

    fn get(&self, tier: &str, bucket: &str) -> Option<Arc<Followed>> {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .get(&(tier.to_string(), bucket.to_string()))
            .filter(|f| !f.task.is_finished())
            .cloned()
    }

    /// Follows `bucket` of `tier` from stream sequence `from` on (1: everything), unless it is
    /// followed already.
    pub fn follow(&self, tier: &JetStreamTier, bucket: &str, from: u64) {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tier.name().to_string(), bucket.to_string());
        if buckets.get(&key).is_some_and(|f| !f.task.is_finished()) {
            return;
        }
        let (tx, rx) = watch::channel(from.max(1));
        let mismatches = Arc::new(Mutex::new(BTreeMap::new()));
        let run = BucketFollow {
            hub: tier.clone(),
            catalog: self.catalog.clone(),
            bucket: bucket.to_string(),
            start: from.max(1),
            hashes: Hashes::new(MAX_IN_FLIGHT),
            mismatches: mismatches.clone(),
            cursor: tx,
        };
        tracing::info!(bucket, tier = %tier.name(), from, "following the bucket's stream to verify copies as they arrive");
        let task = tokio::spawn(run.run());
        buckets.insert(
            key,
            Arc::new(Followed {
                cursor: rx,
                mismatches,
                task,
            }),
        );
    }

    /// Follows `bucket` of `tier` from what its stream stores next (a role that starts does not
    /// rehash what is already there), unless it is followed already.
    pub async fn follow_from_now(&self, tier: &JetStreamTier, bucket: &str) -> Result<(), Error> {
        if self.follows(tier, bucket) {
            return Ok(());
        }
        let last = tier.last_sequence(bucket).await?;
        self.follow(tier, bucket, last + 1);
        Ok(())
    }

    /// What the follower of `bucket` on `tier` found for the version whose meta has hub
    /// sequence `seq`, waiting up to [`VERDICT_WAIT`] for it to read that far.
    pub async fn verdict(&self, tier: &str, bucket: &str, seq: u64) -> Verdict {
        let Some(followed) = self.get(tier, bucket) else {
            return Verdict::Unknown;
        };
        let mut cursor = followed.cursor.clone();
        let passed = tokio::time::timeout(VERDICT_WAIT, cursor.wait_for(|next| *next > seq)).await;
        if !matches!(passed, Ok(Ok(_))) {
            tracing::debug!(
                bucket,
                seq,
                "the follower did not reach the version in time"
            );
            return Verdict::Unknown;
        }
        let mut mismatches = followed
            .mismatches
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // Taken, not kept: a later delivery of the item reads the copy back, in case what was
        // wrong was our read, not the copy.
        match mismatches.remove(&seq) {
            Some(failure) => Verdict::Mismatch(failure),
            None => Verdict::Passed,
        }
    }
}

/// The task following one bucket.
struct BucketFollow {
    hub: JetStreamTier,
    catalog: Catalog,
    bucket: String,
    /// Where the follow started: chunks stored before it were never seen.
    start: u64,
    hashes: Hashes,
    mismatches: Arc<Mutex<BTreeMap<u64, IntegrityFailure>>>,
    cursor: watch::Sender<u64>,
}

impl BucketFollow {
    async fn run(mut self) {
        let direct = self.hub.direct(&self.bucket);
        let subject = format!("$O.{}.>", self.bucket);
        let chunk_prefix = format!("$O.{}.C.", self.bucket);
        let meta_prefix = format!("$O.{}.M.", self.bucket);
        loop {
            let next = *self.cursor.borrow();
            let got = async {
                let mut batch = direct
                    .next_by_subject_max_bytes(&subject, next, MAX_BATCH, BATCH_BYTES)
                    .await?;
                let mut got = 0usize;
                while let Some(message) = batch.next().await? {
                    got += 1;
                    if let Some(nuid) = message.subject.strip_prefix(&chunk_prefix) {
                        if message.headers.get(SOURCED).is_some() {
                            self.hashes.chunk(nuid, message.seq, &message.payload);
                        }
                    } else if message.subject.starts_with(&meta_prefix) {
                        self.meta(&message).await;
                    }
                    self.cursor.send_replace(message.seq + 1);
                }
                Ok::<_, Error>(got)
            }
            .await;
            match got {
                Ok(0) => tokio::time::sleep(IDLE_POLL).await,
                Ok(_) => {}
                Err(e) => {
                    if matches!(self.hub.stream_exists(&self.bucket).await, Ok(false)) {
                        tracing::info!(bucket = %self.bucket, "bucket gone; no longer followed");
                        return;
                    }
                    tracing::warn!(bucket = %self.bucket, error = %e, "following the bucket failed; trying again");
                    tokio::time::sleep(ERROR_PAUSE).await;
                }
            }
        }
    }

    /// A meta message: judges the version it describes against the chunks seen.
    async fn meta(&mut self, message: &DirectMessage) {
        let Ok(info) = serde_json::from_slice::<ObjectInfo>(&message.payload) else {
            return; // the manager reports undecodable metas
        };
        let whole = self.hashes.finish(&info.nuid);
        if message.headers.get(SOURCED).is_none() || !is_live(&info) {
            return; // written on the hub itself, a delete marker, or a link: nothing to evict
        }
        let Ok(expected) = ingest_digest(self.hub.name(), &self.bucket, &info) else {
            return; // the manager reports a missing digest; the read-back refuses it
        };
        let object = info.name.as_str();
        let span =
            tracing::debug_span!("follow_verify", bucket = %self.bucket, object, seq = message.seq);
        let _enter = span.enter();
        let whole = match whole {
            Some(whole) => whole,
            // An empty object has no chunks: a reader reads nothing.
            None if info.size == 0 && info.chunks == 0 => Whole::empty(),
            None => {
                tracing::debug!("chunks not seen; the eviction reads the copy back");
                return;
            }
        };
        if whole.bytes != info.size as u64 || whole.chunks != info.chunks as u64 {
            // Chunks missed (started mid-object, purged) or extra: not ours to judge.
            tracing::debug!(
                bytes = whole.bytes,
                chunks = whole.chunks,
                "chunks seen differ from the meta's; the eviction reads the copy back"
            );
            return;
        }
        if !self.saw_first_chunk(&info, &whole).await {
            return;
        }
        if let Err(Error::Integrity(failure)) = check_content(
            self.hub.name(),
            &self.bucket,
            object,
            info.size as u64,
            &expected,
            whole.bytes,
            &whole.digest,
        ) {
            let mut mismatches = self.mismatches.lock().unwrap_or_else(|p| p.into_inner());
            mismatches.insert(message.seq, *failure);
            while mismatches.len() > MAX_MISMATCHES {
                mismatches.pop_first();
            }
            return;
        }
        let version = Version {
            size: whole.bytes,
            digest: expected,
            seq: message.seq,
        };
        match self
            .catalog
            .record_copy(&self.bucket, object, &version, self.hub.name(), None)
            .await
        {
            Ok(Some(_)) => {
                metrics::mirror_followed(self.hub.name());
                tracing::debug!("cluster copy verified as it arrived");
            }
            Ok(None) => tracing::debug!("the catalog records a newer version"),
            Err(e) => {
                tracing::warn!(error = %e, "recording a verified copy failed; the eviction reads it back")
            }
        }
    }

    /// Whether the first chunk hashed is the first message on the version's chunk subject (see
    /// the module docs). Free when the follow started at the stream's beginning.
    async fn saw_first_chunk(&self, info: &ObjectInfo, whole: &Whole) -> bool {
        let Some(first_seq) = whole.first_seq else {
            return true; // no chunks: nothing to have missed
        };
        if self.start <= 1 {
            return true;
        }
        let subject = chunk_subject(&self.bucket, &info.nuid);
        let first = async {
            let mut batch = self
                .hub
                .direct(&self.bucket)
                .next_by_subject(&subject, 1, 1)
                .await?;
            let first = batch.next().await?.map(|m| m.seq);
            // Drain the end-of-batch reply so the subscription ends cleanly.
            while batch.next().await?.is_some() {}
            Ok::<_, Error>(first)
        }
        .await;
        match first {
            Ok(Some(seq)) if seq == first_seq => true,
            other => {
                tracing::debug!(
                    first_seq,
                    ?other,
                    "chunks before the follow started; the eviction reads the copy back"
                );
                false
            }
        }
    }
}

/// The chunks of one version seen so far.
struct Partial {
    first_seq: u64,
    hasher: Hasher,
    chunks: u64,
}

/// Every chunk of a version seen, hashed.
#[derive(Debug, PartialEq, Eq)]
struct Whole {
    /// Sequence of the first chunk; `None` for a version without chunks.
    first_seq: Option<u64>,
    bytes: u64,
    chunks: u64,
    digest: Sha256Digest,
}

impl Whole {
    fn empty() -> Self {
        Whole {
            first_seq: None,
            bytes: 0,
            chunks: 0,
            digest: Sha256Digest::of(&[]),
        }
    }
}

/// Hash states of the versions in flight, by nuid, at most `max` of them.
struct Hashes {
    in_flight: HashMap<String, Partial>,
    max: usize,
}

impl Hashes {
    fn new(max: usize) -> Self {
        Self {
            in_flight: HashMap::new(),
            max: max.max(1),
        }
    }

    /// A chunk of version `nuid`, stored at `seq`.
    fn chunk(&mut self, nuid: &str, seq: u64, payload: &[u8]) {
        if !self.in_flight.contains_key(nuid) && self.in_flight.len() >= self.max {
            // Full: drop the oldest (its meta may never come — a writer that died).
            if let Some(oldest) = self
                .in_flight
                .iter()
                .min_by_key(|(_, p)| p.first_seq)
                .map(|(n, _)| n.clone())
            {
                self.in_flight.remove(&oldest);
            }
        }
        let partial = self
            .in_flight
            .entry(nuid.to_string())
            .or_insert_with(|| Partial {
                first_seq: seq,
                hasher: Hasher::new(),
                chunks: 0,
            });
        partial.hasher.update(payload);
        partial.chunks += 1;
    }

    /// The version `nuid`'s chunks seen, hashed, and forgotten; `None` when none were seen.
    fn finish(&mut self, nuid: &str) -> Option<Whole> {
        let partial = self.in_flight.remove(nuid)?;
        let (digest, bytes) = partial.hasher.finish();
        Some(Whole {
            first_seq: Some(partial.first_seq),
            bytes,
            chunks: partial.chunks,
            digest,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn chunks_of_each_version_hash_separately() {
        let mut hashes = Hashes::new(8);
        hashes.chunk("a", 1, b"hello ");
        hashes.chunk("b", 2, b"other");
        hashes.chunk("a", 3, b"world");
        let a = hashes.finish("a").unwrap();
        assert_eq!(
            a,
            Whole {
                first_seq: Some(1),
                bytes: 11,
                chunks: 2,
                digest: Sha256Digest::of(b"hello world"),
            }
        );
        assert_eq!(hashes.finish("a"), None, "forgotten once finished");
        assert_eq!(
            hashes.finish("b").unwrap().digest,
            Sha256Digest::of(b"other")
        );
    }

    #[test]
    fn beyond_the_cap_the_oldest_version_is_dropped() {
        let mut hashes = Hashes::new(2);
        hashes.chunk("old", 1, b"x");
        hashes.chunk("mid", 2, b"y");
        hashes.chunk("new", 3, b"z");
        assert_eq!(hashes.in_flight.len(), 2);
        assert_eq!(hashes.finish("old"), None);
        assert!(hashes.finish("mid").is_some());
        assert!(hashes.finish("new").is_some());
        // A version already in flight is never dropped for its own next chunk.
        let mut hashes = Hashes::new(1);
        hashes.chunk("only", 1, b"a");
        hashes.chunk("only", 2, b"b");
        assert_eq!(hashes.finish("only").unwrap().chunks, 2);
    }

    #[test]
    fn an_empty_version_hashes_to_the_empty_digest() {
        assert_eq!(Whole::empty().digest, Sha256Digest::of(b""));
    }
}
