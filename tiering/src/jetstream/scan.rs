//! The meta index: what one bucket of one tier holds, read once and then followed.
//!
//! The manager needs, every pass, each object's current meta (stored time, size, nuid, ingest
//! digest, deleted or not). Listing a bucket costs a round trip per object; a million objects
//! took two minutes, every pass. Instead the index walks the bucket's meta subjects
//! (`$O.<bucket>.M.>`) in sequence order with batched direct gets ([`super::direct`]): a rollup
//! keeps only the last meta message of each object, so the first walk (from sequence 1) sees
//! every object once, and every later walk starts after the last sequence seen (the *cursor*)
//! and sees only what was written since: new objects, overwrites, user deletes (a delete is a
//! meta message too).
//!
//! # What a walk does not see, and how the index finds out
//! Evictions and purges write no message: they remove meta messages. After each walk the index
//! asks how many meta messages the stream holds (one direct get of one message; the server
//! reports how many more match). Every object has exactly one, so fewer messages than indexed
//! objects means something was removed. The caller then re-reads the objects it expects to be
//! gone (those it queued an eviction for; [`MetaIndex::recheck`]) and, if that does not account
//! for the difference, walks the whole bucket again ([`MetaIndex::rescan`]), dropping what the
//! walk no longer finds. Removals that coincide with as many new objects are found on the next
//! pass, once the walk has taken in the new ones.
//!
//! # Why a stale index is safe
//! The index may lag the bucket by up to a pass (plus a pass for the removals above). It only
//! decides what to *queue*: every handler re-reads the object's current state from the stream
//! leader before acting, and does nothing for an object that changed or went away. And the index
//! is kept in memory only: a restarted manager walks every bucket from sequence 1 once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::object_store::ObjectInfo;

use super::direct::{DirectGet, DirectMessage};
use super::{ingest_digest, is_live, object_of_meta_subject};
use crate::digest::Sha256Digest;
use crate::error::Error;

/// Most subjects named in one `multi_last` request (nats-server 2.15 refuses more than 1,024).
const RECHECK_BATCH: usize = 1000;

/// What the index keeps of one object's current meta message: 88 bytes, plus the name and the
/// nuid on the heap (a million objects: 283 MiB peak RSS of the manager in the bench).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// Stream sequence of the meta message on this tier (orders versions).
    pub seq: u64,
    /// When this tier stored it, in Unix milliseconds (ages are measured from it).
    pub stored_ms: i64,
    /// Size recorded at ingest.
    pub size: u64,
    /// The version's nuid (names its chunk subject).
    pub nuid: Box<str>,
    /// The ingest digest; `None` when the meta has none or a malformed one.
    pub digest: Option<Sha256Digest>,
    /// Live object, user delete marker, or something the system does not move (a link).
    pub kind: Kind,
    /// The object's metadata and headers, kept only by an index asked to
    /// ([`MetaIndex::keep_attributes`]: a policy of the bucket tests them); 8 bytes when not.
    pub attributes: Option<Box<Attributes>>,
    /// Seconds the version stays a temporary copy from `stored_ms`, if it is one
    /// (`cim-gateway restore --for`, see [`crate::temporary`]); fits in the struct's padding.
    pub temporary_secs: Option<std::num::NonZeroU32>,
    /// Set by the walk of a [`MetaIndex::rescan`]; entries it leaves unset are gone.
    seen: bool,
}

/// An object's object-store `metadata` and `headers` (each header's first value), for the
/// policies' metadata and header conditions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// `metadata`: key → value.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// `headers`: name → first value.
    pub headers: std::collections::BTreeMap<String, String>,
}

impl Attributes {
    /// The metadata and headers (each header's first value) of the version `info` describes.
    pub fn of(info: &ObjectInfo) -> Attributes {
        let headers = info.headers.as_ref().map(|h| {
            h.iter()
                .filter_map(|(name, values)| {
                    let name: &str = name.as_ref();
                    Some((name.to_owned(), values.first()?.as_str().to_owned()))
                })
                .collect()
        });
        Attributes {
            metadata: info
                .metadata
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            headers: headers.unwrap_or_default(),
        }
    }
}

/// What an object's current meta message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A live object the system moves.
    Live,
    /// A user delete (`deleted: true`).
    Deleted,
    /// A link or anything else the system leaves alone.
    Other,
}

impl Meta {
    /// Until when the version is a temporary copy, if it is one (see [`crate::temporary`]).
    pub fn temporary_until(&self) -> Option<time::OffsetDateTime> {
        let secs = self.temporary_secs?;
        Some(crate::temporary::until(
            self.stored_ms,
            Duration::from_secs(u64::from(secs.get())),
        ))
    }

    /// How long ago this tier stored the version (zero if the server's clock is ahead of ours).
    pub fn age(&self, now: time::OffsetDateTime) -> Duration {
        let now_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
        Duration::from_millis(now_ms.saturating_sub(self.stored_ms).max(0) as u64)
    }
}

/// Every object of one bucket of one tier, as of the last walk (see the module docs).
#[derive(Debug, Default)]
pub struct MetaIndex {
    cursor: u64,
    objects: HashMap<Arc<str>, Meta>,
    /// Objects whose current meta does not decode: name → why.
    unreadable: HashMap<Arc<str>, String>,
    /// Whether the first walk is done.
    scanned: bool,
    /// Whether to keep each object's [`Attributes`].
    attributes: bool,
}

/// What one [`MetaIndex::follow`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Followed {
    /// Meta messages read by the walk.
    pub read: u64,
    /// How many indexed objects the stream no longer holds a meta message for (0 when none
    /// were removed, as far as the count tells).
    pub missing: u64,
}

impl MetaIndex {
    /// An empty index: the first [`MetaIndex::follow`] walks the bucket from sequence 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keeps each object's metadata and headers from now on. An index that did not keep them
    /// walks its bucket again from the start at its next follow, to take them in.
    pub fn keep_attributes(&mut self) {
        if !self.attributes {
            self.attributes = true;
            self.cursor = 0;
        }
    }

    /// The last stream sequence the index has taken in.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Objects indexed (live, deleted or other), not counting unreadable ones.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether the index holds no object.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Every indexed object (in no particular order).
    pub fn objects(&self) -> impl Iterator<Item = (&Arc<str>, &Meta)> {
        self.objects.iter()
    }

    /// One object's entry.
    pub fn get(&self, name: &str) -> Option<&Meta> {
        self.objects.get(name)
    }

    /// The shared name of an indexed object (to key other maps without another allocation).
    pub fn name(&self, name: &str) -> Option<Arc<str>> {
        self.objects.get_key_value(name).map(|(k, _)| k.clone())
    }

    /// Objects whose current meta message does not decode, with the decoder's complaint.
    pub fn unreadable(&self) -> impl Iterator<Item = (&Arc<str>, &String)> {
        self.unreadable.iter()
    }

    /// Takes in every meta message stored after the cursor, then counts the bucket's meta
    /// messages to find removals the walk cannot see ([`Followed::missing`]).
    pub async fn follow(&mut self, direct: &DirectGet, bucket: &str) -> Result<Followed, Error> {
        if !self.scanned {
            // Room for every object at once: growing the table doubles it, and holds the old
            // and the new one together while it does (a third more peak memory at a million).
            let held = count(direct, &meta_filter(bucket)).await?;
            self.objects
                .reserve((held as usize).saturating_sub(self.objects.len()));
        }
        let read = self.walk(direct, bucket, self.cursor + 1, false).await?;
        self.scanned = true;
        let held = count(direct, &meta_filter(bucket)).await?;
        let indexed = (self.objects.len() + self.unreadable.len()) as u64;
        Ok(Followed {
            read,
            missing: indexed.saturating_sub(held),
        })
    }

    /// Re-reads the current meta of `names` (with `multi_last`, up to 1,000 a request) and
    /// drops those the stream no longer holds; returns how many were dropped.
    pub async fn recheck(
        &mut self,
        direct: &DirectGet,
        bucket: &str,
        names: &[Arc<str>],
    ) -> Result<u64, Error> {
        let mut dropped = 0;
        for chunk in names.chunks(RECHECK_BATCH) {
            let subjects: Vec<String> = chunk
                .iter()
                .map(|name| super::meta_subject(bucket, name))
                .collect();
            let mut batch = direct.last_per_subject(&subjects, None, None).await?;
            let mut present = std::collections::HashSet::new();
            while let Some(message) = batch.next().await? {
                present.insert(message.subject.clone());
                self.take(bucket, &message, false);
            }
            for (name, subject) in chunk.iter().zip(&subjects) {
                if !present.contains(subject) {
                    dropped += u64::from(self.objects.remove(name).is_some());
                    dropped += u64::from(self.unreadable.remove(name).is_some());
                }
            }
        }
        Ok(dropped)
    }

    /// Walks the whole bucket again and drops every object the walk does not find.
    pub async fn rescan(&mut self, direct: &DirectGet, bucket: &str) -> Result<u64, Error> {
        for meta in self.objects.values_mut() {
            meta.seen = false;
        }
        self.unreadable.clear();
        // A stream deleted and created again numbers from 1 again.
        self.cursor = 0;
        let read = self.walk(direct, bucket, 1, true).await?;
        let before = self.objects.len();
        self.objects.retain(|_, meta| meta.seen);
        tracing::info!(
            bucket,
            read,
            dropped = before - self.objects.len(),
            "rescanned a bucket"
        );
        Ok(read)
    }

    /// Reads every meta message from `from` on into the index; returns how many.
    async fn walk(
        &mut self,
        direct: &DirectGet,
        bucket: &str,
        from: u64,
        mark: bool,
    ) -> Result<u64, Error> {
        direct
            .walk(&meta_filter(bucket), from, |message| {
                self.cursor = self.cursor.max(message.seq);
                self.take(bucket, message, mark);
            })
            .await
    }

    /// Takes one meta message in, replacing an older one of the same object.
    fn take(&mut self, bucket: &str, message: &DirectMessage, mark: bool) {
        let info: ObjectInfo = match serde_json::from_slice(&message.payload) {
            Ok(info) => info,
            Err(e) => {
                let name: Arc<str> = object_of_meta_subject(bucket, &message.subject).into();
                self.objects.remove(&name);
                self.unreadable.insert(name, e.to_string());
                return;
            }
        };
        if let Some(current) = self.objects.get(info.name.as_str()) {
            if current.seq > message.seq {
                return; // a newer meta is already indexed (a recheck raced the walk)
            }
        }
        self.unreadable.remove(info.name.as_str());
        let kind = if info.deleted {
            Kind::Deleted
        } else if is_live(&info) {
            Kind::Live
        } else {
            Kind::Other
        };
        let attributes = self.attributes.then(|| Box::new(Attributes::of(&info)));
        let temporary_secs = crate::temporary::declared(&info).map(|d| {
            std::num::NonZeroU32::new(u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
                .unwrap_or(std::num::NonZeroU32::MIN)
        });
        let meta = Meta {
            attributes,
            temporary_secs,
            seq: message.seq,
            stored_ms: (message.time.unix_timestamp_nanos() / 1_000_000) as i64,
            size: info.size as u64,
            digest: ingest_digest("", bucket, &info).ok(),
            nuid: info.nuid.into_boxed_str(),
            kind,
            seen: mark,
        };
        match self.objects.get_mut(info.name.as_str()) {
            Some(slot) => *slot = meta,
            None => {
                self.objects.insert(info.name.into(), meta);
            }
        }
    }
}

/// `$O.<bucket>.M.>`: every object's meta subject.
fn meta_filter(bucket: &str) -> String {
    format!("$O.{bucket}.M.>")
}

/// How many messages of the stream match `filter`: one message asked for, and the server says
/// how many more there are.
pub async fn count(direct: &DirectGet, filter: &str) -> Result<u64, Error> {
    let mut batch = direct.next_by_subject(filter, 1, 1).await?;
    let mut returned = 0;
    while batch.next().await?.is_some() {
        returned += 1;
    }
    Ok(returned + batch.num_pending().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn message(bucket: &str, name: &str, seq: u64, nuid: &str, deleted: bool) -> DirectMessage {
        let info = serde_json::json!({
            "name": name, "bucket": bucket, "nuid": nuid, "size": 3, "chunks": 1,
            "mtime": "2026-01-01T00:00:00Z", "deleted": deleted,
            "digest": Sha256Digest::of(b"abc").to_nats(),
        });
        DirectMessage {
            subject: super::super::meta_subject(bucket, name),
            seq,
            time: time::OffsetDateTime::UNIX_EPOCH + Duration::from_secs(seq),
            headers: Default::default(),
            payload: serde_json::to_vec(&info).unwrap().into(),
        }
    }

    #[test]
    fn later_metas_replace_earlier_ones_and_bad_ones_are_set_aside() {
        let mut index = MetaIndex::new();
        index.take("b", &message("b", "x", 5, "n1", false), false);
        index.take("b", &message("b", "x", 3, "n0", false), false);
        assert_eq!(&*index.get("x").unwrap().nuid, "n1", "older never wins");
        index.take("b", &message("b", "x", 9, "n2", true), false);
        assert_eq!(index.get("x").unwrap().kind, Kind::Deleted);
        let mut garbage = message("b", "y", 10, "n3", false);
        garbage.payload = "not json".into();
        index.take("b", &garbage, false);
        assert_eq!(index.unreadable().count(), 1);
        index.take("b", &message("b", "y", 11, "n4", false), false);
        assert_eq!(index.unreadable().count(), 0);
        let y = index.get("y").unwrap();
        assert_eq!(
            (y.kind, y.digest),
            (Kind::Live, Some(Sha256Digest::of(b"abc")))
        );
        assert_eq!(index.len(), 2);
    }
}
