//! The catalog: where verified copies of each object live, kept in a NATS KV bucket on the hub.
//!
//! One key per object (`o.<bucket>.<base64url(name)>`); the value lists the tiers holding a
//! verified copy of the object's current version (identified by its ingest digest). Every change
//! is a compare-and-set on the key's revision, so concurrent roles never lose each other's
//! updates. A tier drops an object only after the catalog durably records the destination copy
//! (invariant 1): callers `record_copy` first, evict, then `record_eviction`.
//!
//! A user delete turns the entry into a *tombstone* ([`Entry::deleted`]): no tier holds the
//! object any more, and the entry keeps the delete's sequence, so a copy of an older version
//! finishing late is refused like any older version (see [`Catalog::record_deletion`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_nats::jetstream::{self, kv};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;
use crate::error::{BoxError, Error};
use crate::jetstream::direct::{DirectGet, DirectMessage};

mod copies;
mod repair;
pub use copies::HeldCopy;
pub use repair::found_copy;

/// Where one verified copy lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// When the copy was verified (RFC 3339).
    pub verified_at: String,
    /// Tier-specific locator, e.g. the S3 manifest key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locator: Option<String>,
    /// The version (meta sequence, see [`Entry::seq`]) this copy was verified for. The same
    /// content may be recorded under a later version — a metadata update keeps the content —
    /// and then this copy's description, metadata and headers may be older than the entry's:
    /// [`Entry::has_version`] tells. `None` in entries written before copies were versioned:
    /// taken as the entry's own `seq`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

impl Location {
    /// A copy of `version` verified now, found at `locator`.
    fn verified(version: &Version, locator: Option<String>) -> Location {
        Location {
            verified_at: now(),
            locator,
            seq: Some(version.seq),
        }
    }
}

/// The catalog's record of one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Object-store bucket.
    pub bucket: String,
    /// Object name.
    pub name: String,
    /// Uncompressed size in bytes.
    pub size: u64,
    /// Digest taken at ingest; identifies the content the locations hold.
    pub digest: Sha256Digest,
    /// Hub stream sequence of the meta message of the newest version recorded: versions are
    /// ordered by it, never by clocks (servers and writers disagree). A copy of an older
    /// version is never recorded over a newer one. 0 in entries written before versions were
    /// ordered.
    #[serde(default)]
    pub seq: u64,
    /// Tier name → verified copy.
    pub locations: BTreeMap<String, Location>,
    /// Last change (RFC 3339).
    pub updated_at: String,
    /// Set when this version has no verified copy left anywhere (see
    /// [`Catalog::record_damaged`]): nothing dispatches work for it any more, so it is reported
    /// once instead of retried forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub damaged: Option<Damage>,
    /// Set when the object was deleted by a user: `seq` is then the sequence of the delete
    /// marker, `size` and `digest` describe the version it deleted, and `locations` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<Deletion>,
}

/// A user delete, as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deletion {
    /// When the first tier recorded it (RFC 3339).
    pub at: String,
    /// The tiers (S3 tiers) the delete has reached: each holds a tombstone, or never held the
    /// object. The manager dispatches the delete to the others.
    pub reached: BTreeSet<String>,
}

/// Why a version was marked damaged: the copy that failed its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Damage {
    /// The tier whose copy failed.
    pub tier: String,
    /// What differed: `"sha-256"` or `"size"`.
    pub what: String,
    /// When it was found (RFC 3339).
    pub found_at: String,
}

impl Entry {
    /// A new entry for `version` of `bucket`/`name`: no copies yet, not damaged, not deleted.
    fn fresh(bucket: &str, name: &str, version: &Version) -> Entry {
        Entry {
            bucket: bucket.to_string(),
            name: name.to_string(),
            size: version.size,
            digest: version.digest,
            seq: version.seq,
            locations: BTreeMap::new(),
            updated_at: String::new(),
            damaged: None,
            deleted: None,
        }
    }

    /// True when `tier` holds a verified copy of exactly this digest (of this version or an
    /// earlier one with the same content: see [`Entry::has_version`]).
    pub fn has(&self, tier: &str, digest: &Sha256Digest) -> bool {
        self.deleted.is_none() && &self.digest == digest && self.locations.contains_key(tier)
    }

    /// True when `tier` holds a verified copy of exactly this digest, made for version `seq` or
    /// a later one: its description, metadata and headers are those of `seq` or newer, not
    /// only its content.
    pub fn has_version(&self, tier: &str, digest: &Sha256Digest, seq: u64) -> bool {
        self.has(tier, digest) && self.location_seq(tier).is_some_and(|s| s >= seq)
    }

    /// The version `tier`'s copy was verified for, if it holds one (see [`Location::seq`]).
    pub fn location_seq(&self, tier: &str) -> Option<u64> {
        self.locations
            .get(tier)
            .map(|l| l.seq.unwrap_or(self.seq).min(self.seq))
    }

    /// True when this is the tombstone of a delete with sequence `seq` or a later one, which
    /// has reached `tier`.
    pub fn deletion_reached(&self, seq: u64, tier: &str) -> bool {
        self.seq >= seq
            && self
                .deleted
                .as_ref()
                .is_some_and(|d| d.reached.contains(tier))
    }

    /// True when the version with `digest` is marked damaged.
    pub fn is_damaged(&self, digest: &Sha256Digest) -> bool {
        &self.digest == digest && self.damaged.is_some()
    }
}

/// Which version of an object a copy holds: what the catalog records and compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Version {
    /// Uncompressed size in bytes.
    pub size: u64,
    /// Digest taken at ingest.
    pub digest: Sha256Digest,
    /// Hub stream sequence of the version's meta message (see [`Entry::seq`]).
    pub seq: u64,
}

/// The entry `version` of an object is recorded in, given the current one: `None` when the
/// catalog already records a newer version (a higher `seq`), which must then stay; the current
/// entry when the content is the same (its copies hold those bytes); a fresh one otherwise.
fn entry_for(current: Option<Entry>, bucket: &str, name: &str, version: &Version) -> Option<Entry> {
    let mut entry = match current {
        Some(e) if e.seq > version.seq => return None,
        // A version written after a delete starts afresh, whatever its content.
        Some(e) if e.digest == version.digest && e.deleted.is_none() => e,
        _ => Entry::fresh(bucket, name, version),
    };
    entry.seq = version.seq;
    Some(entry)
}

/// The catalog KV bucket.
#[derive(Clone)]
pub struct Catalog {
    kv: kv::Store,
    /// Batched reads of the KV stream, for [`Catalog::follow`]; `None` when the catalog is
    /// reached through a JetStream domain prefix, whose name the KV handle does not tell.
    direct: Option<DirectGet>,
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The catalog key of an object.
pub fn key(bucket: &str, name: &str) -> String {
    format!("o.{bucket}.{}", URL_SAFE_NO_PAD.encode(name))
}

impl Catalog {
    /// Opens the catalog, creating the KV bucket (with `replicas`) if needed.
    pub async fn open(
        js: &jetstream::Context,
        bucket: &str,
        replicas: usize,
    ) -> Result<Self, Error> {
        let err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Catalog {
            op: "open",
            key: bucket.to_string(),
            source,
        };
        let kv = crate::jetstream::kv::open_or_create(
            js,
            kv::Config {
                bucket: bucket.to_string(),
                description: "cim catalog: verified copies per object".into(),
                history: 5,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(err)?;
        let direct = (!kv.use_jetstream_prefix).then(|| {
            DirectGet::with_api_prefix(js.client(), "$JS.API", &kv.stream_name, "catalog", bucket)
        });
        Ok(Self { kv, direct })
    }

    /// Brings `index` up to date: reads every catalog change written after its cursor (with
    /// batched direct gets on the KV stream, in sequence order; the first call reads the whole
    /// catalog), instead of one KV get per object. Returns how many messages it read.
    ///
    /// Deletes and purges of keys write a marker, which the walk sees; older revisions that
    /// the KV history drops no longer matter once a newer one was read. So the index lags the
    /// catalog by at most the time since the last call. It is in memory only: a restarted
    /// manager reads the catalog once in full.
    pub async fn follow(&self, index: &mut CatalogIndex) -> Result<u64, Error> {
        let direct = self.direct.as_ref().ok_or_else(|| Error::Catalog {
            op: "follow",
            key: "*".into(),
            source: "bulk reads need the catalog on the default JetStream API prefix".into(),
        })?;
        let filter = format!("{}>", self.kv.prefix);
        let prefix = &self.kv.prefix;
        direct
            .walk(&filter, index.cursor + 1, |message| {
                index.cursor = index.cursor.max(message.seq);
                index.take(prefix, message);
            })
            .await
    }

    /// The entry of an object, if any.
    pub async fn get(&self, bucket: &str, name: &str) -> Result<Option<Entry>, Error> {
        Ok(self.get_with_revision(bucket, name).await?.map(|(e, _)| e))
    }

    async fn get_with_revision(
        &self,
        bucket: &str,
        name: &str,
    ) -> Result<Option<(Entry, u64)>, Error> {
        self.read_key(&key(bucket, name)).await
    }

    /// The live entry under `key` and its revision; `None` when absent or deleted.
    async fn read_key(&self, key: &str) -> Result<Option<(Entry, u64)>, Error> {
        let err = |op, source: BoxError| Error::Catalog {
            op,
            key: key.to_string(),
            source,
        };
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|e| err("read", Box::new(e)))?;
        let Some(entry) = entry else { return Ok(None) };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let value: Entry =
            serde_json::from_slice(&entry.value).map_err(|e| err("decode", Box::new(e)))?;
        Ok(Some((value, entry.revision)))
    }

    /// Records that `tier` holds a verified copy of the version whose hub meta message has
    /// sequence `seq` and whose content has `digest` — unless the catalog already records a
    /// newer version (a higher `seq`): then nothing is written and `None` is returned, and the
    /// caller must not make its copy current anywhere (the compare-and-set on the key's
    /// revision decides races). A newer version with different content starts a fresh entry;
    /// one with the same content keeps the copies already verified, which hold those bytes.
    pub async fn record_copy(
        &self,
        bucket: &str,
        name: &str,
        version: &Version,
        tier: &str,
        locator: Option<String>,
    ) -> Result<Option<Entry>, Error> {
        self.modify(bucket, name, |current| {
            let mut entry = entry_for(current, bucket, name, version)?;
            // A verified copy exists after all: the version is no longer damaged.
            entry.damaged = None;
            entry.locations.insert(
                tier.to_string(),
                Location::verified(version, locator.clone()),
            );
            Some(entry)
        })
        .await
    }

    /// Marks `version` damaged: no tier holds a verified copy of it (the copy on `tier` failed
    /// its digest and no other was found), and `tier` no longer counts as holding it. Managers
    /// stop dispatching it; a newer version (an overwrite) or a verified copy
    /// ([`Catalog::record_copy`]) clears the mark. Like `record_copy`, writes nothing (`None`)
    /// when the catalog already records a newer version.
    pub async fn record_damaged(
        &self,
        bucket: &str,
        name: &str,
        version: &Version,
        tier: &str,
        what: &str,
    ) -> Result<Option<Entry>, Error> {
        self.modify(bucket, name, |current| {
            let mut entry = entry_for(current, bucket, name, version)?;
            entry.locations.remove(tier);
            entry.damaged = Some(Damage {
                tier: tier.to_string(),
                what: what.to_string(),
                found_at: now(),
            });
            Some(entry)
        })
        .await
    }

    /// Records a user delete, with sequence `version.seq` (the delete marker's), of the object
    /// whose last content was `version.size`/`version.digest`, as reached by `tier`: the entry
    /// becomes a tombstone with no locations; a tombstone of the same delete gains `tier`. True
    /// when the catalog now records this delete as reached by `tier` (written now or before);
    /// false, writing nothing, when it records a newer version or delete. A copy of any version
    /// older than the delete is refused from then on ([`Catalog::record_copy`]), so a late
    /// upload never brings the object back.
    pub async fn record_deletion(
        &self,
        bucket: &str,
        name: &str,
        version: &Version,
        tier: &str,
    ) -> Result<bool, Error> {
        let written = self
            .modify(bucket, name, |current| {
                let mut entry = match current {
                    Some(e) if e.seq > version.seq => return None,
                    Some(e) if e.seq == version.seq && e.deleted.is_some() => e,
                    _ => Entry {
                        deleted: Some(Deletion {
                            at: now(),
                            reached: BTreeSet::new(),
                        }),
                        ..Entry::fresh(bucket, name, version)
                    },
                };
                let deletion = entry.deleted.as_mut()?;
                if !deletion.reached.insert(tier.to_string()) {
                    return None; // already recorded
                }
                Some(entry)
            })
            .await?;
        if written.is_some() {
            return Ok(true);
        }
        let now = self.get(bucket, name).await?;
        Ok(now.is_some_and(|e| e.seq == version.seq && e.deletion_reached(version.seq, tier)))
    }

    /// Records that `tier` no longer holds the version with `digest`.
    pub async fn record_eviction(
        &self,
        bucket: &str,
        name: &str,
        digest: &Sha256Digest,
        tier: &str,
    ) -> Result<(), Error> {
        self.modify(bucket, name, |current| {
            let mut entry = current?;
            if &entry.digest != digest || entry.locations.remove(tier).is_none() {
                return None;
            }
            Some(entry)
        })
        .await
        .map(|_| ())
    }

    /// Compare-and-set loop: `change` maps the current entry to the new one (`None` = no write).
    async fn modify<F>(&self, bucket: &str, name: &str, change: F) -> Result<Option<Entry>, Error>
    where
        F: Fn(Option<Entry>) -> Option<Entry>,
    {
        let key = key(bucket, name);
        for _ in 0..16 {
            let current = self.get_with_revision(bucket, name).await?;
            let revision = current.as_ref().map(|(_, r)| *r);
            let Some(mut next) = change(current.map(|(e, _)| e)) else {
                return Ok(None);
            };
            next.updated_at = now();
            let value = Bytes::from(serde_json::to_vec(&next).map_err(|e| Error::Catalog {
                op: "encode",
                key: key.clone(),
                source: Box::new(e),
            })?);
            let written = match revision {
                Some(revision) => self.kv.update(&key, value, revision).await.map_err(|e| {
                    (
                        e.kind() == kv::UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                }),
                None => self.kv.create(&key, value).await.map_err(|e| {
                    (
                        e.kind() == kv::CreateErrorKind::AlreadyExists,
                        e.to_string(),
                    )
                }),
            };
            match written {
                Ok(_) => return Ok(Some(next)),
                Err((true, _)) => continue, // lost a race; re-read and retry
                Err((false, message)) => {
                    return Err(Error::Catalog {
                        op: "write",
                        key,
                        source: message.into(),
                    })
                }
            }
        }
        Err(Error::Catalog {
            op: "write",
            key,
            source: "too many concurrent updates".into(),
        })
    }

    /// Every entry (for operators and tests; the catalog is small relative to the data).
    pub async fn entries(&self) -> Result<Vec<Entry>, Error> {
        use futures::TryStreamExt;
        let list_err = |e: Box<dyn std::error::Error + Send + Sync>| Error::Catalog {
            op: "list",
            key: "*".into(),
            source: e,
        };
        let keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(|e| list_err(Box::new(e)))?
            .try_collect()
            .await
            .map_err(|e| list_err(Box::new(e)))?;
        let mut out = Vec::new();
        for key in keys {
            if let Some((entry, _)) = self.read_key(&key).await? {
                out.push(entry);
            }
        }
        out.sort_by(|a, b| (&a.bucket, &a.name).cmp(&(&b.bucket, &b.name)));
        Ok(out)
    }
}

/// What the manager needs to know of the catalog, for every object, without a KV get per
/// object: kept up to date by [`Catalog::follow`]. Per entry: the key, the digest, the
/// sequence and the tiers as bits of a table of tier names (about 90 bytes and the key).
#[derive(Debug, Default)]
pub struct CatalogIndex {
    cursor: u64,
    /// Tier names; a tier's position is its bit in [`Summary`]'s sets (at most 64 tiers are
    /// told apart, which is far more than a deployment has).
    tiers: Vec<String>,
    entries: HashMap<Box<str>, Summary>,
}

/// One catalog entry, reduced to what the manager decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Summary {
    seq: u64,
    digest: Sha256Digest,
    /// Uncompressed size of the version (for what a tier holds, in bytes).
    size: u64,
    /// Tiers holding a verified copy (bits of [`CatalogIndex::tiers`]).
    locations: u64,
    /// Of those, the tiers whose copy was verified for an earlier version than `seq` (same
    /// content, older description, metadata or headers: see [`Entry::has_version`]).
    behind: u64,
    /// For a tombstone: tiers the delete reached.
    reached: u64,
    damaged: bool,
    deleted: bool,
    /// The newest `verified_at` of its locations (Unix seconds; `i64::MAX` when none parses):
    /// what an `expire` from an S3 tier ages from (see [`HeldCopy`]).
    verified_at: i64,
}

impl CatalogIndex {
    /// An empty index; the first [`Catalog::follow`] reads the whole catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// The sequence up to which the catalog has been read.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Entries indexed.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entry is indexed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn summary(&self, bucket: &str, name: &str) -> Option<&Summary> {
        self.entries.get(key(bucket, name).as_str())
    }

    fn bits(&self, tier: &str) -> u64 {
        self.tiers
            .iter()
            .position(|t| t == tier)
            .filter(|i| *i < 64)
            .map_or(0, |i| 1 << i)
    }

    /// Like [`Entry::has`]: `tier` holds a verified copy of exactly `digest`.
    pub fn has(&self, bucket: &str, name: &str, tier: &str, digest: &Sha256Digest) -> bool {
        self.summary(bucket, name).is_some_and(|s| {
            !s.deleted && &s.digest == digest && s.locations & self.bits(tier) != 0
        })
    }

    /// Like [`Entry::has_version`]: `tier` holds a verified copy of exactly `digest`, made for
    /// version `seq` or a later one.
    pub fn has_version(
        &self,
        bucket: &str,
        name: &str,
        tier: &str,
        digest: &Sha256Digest,
        seq: u64,
    ) -> bool {
        let bit = self.bits(tier);
        self.summary(bucket, name).is_some_and(|s| {
            !s.deleted && &s.digest == digest && s.seq >= seq && s.locations & !s.behind & bit != 0
        })
    }

    /// Like [`Entry::is_damaged`].
    pub fn is_damaged(&self, bucket: &str, name: &str, digest: &Sha256Digest) -> bool {
        self.summary(bucket, name)
            .is_some_and(|s| &s.digest == digest && s.damaged)
    }

    /// Whether a verified copy of `digest` is recorded on some tier not in `except`.
    pub fn verified_elsewhere(
        &self,
        bucket: &str,
        name: &str,
        digest: &Sha256Digest,
        except: &[&str],
    ) -> bool {
        let excluded = except.iter().fold(0, |bits, tier| bits | self.bits(tier));
        self.summary(bucket, name)
            .is_some_and(|s| !s.deleted && &s.digest == digest && s.locations & !excluded != 0)
    }

    /// Whether the user delete with marker sequence `seq` still has to reach `tier`: the
    /// catalog has an entry (something was copied somewhere), records no newer version, and
    /// this delete (or a later one) has not reached `tier`.
    pub fn deletion_pending(&self, bucket: &str, name: &str, seq: u64, tier: &str) -> bool {
        self.summary(bucket, name).is_some_and(|s| {
            let reached = s.seq >= seq && s.deleted && s.reached & self.bits(tier) != 0;
            s.seq <= seq && !reached
        })
    }

    /// The objects (not deleted) of which `tier` holds a verified copy, and their bytes.
    pub fn held(&self, tier: &str) -> (u64, u64) {
        self.held_by_bucket(tier)
            .values()
            .fold((0, 0), |(objects, bytes), (o, b)| (objects + o, bytes + b))
    }

    /// Like [`CatalogIndex::held`], per bucket.
    pub fn held_by_bucket(&self, tier: &str) -> std::collections::BTreeMap<String, (u64, u64)> {
        let mut held = std::collections::BTreeMap::<String, (u64, u64)>::new();
        let bit = self.bits(tier);
        if bit == 0 {
            return held;
        }
        for (key, s) in &self.entries {
            if s.deleted || s.locations & bit == 0 {
                continue;
            }
            // `o.<bucket>.<name>`: bucket names hold no dots.
            let bucket = key.split('.').nth(1).unwrap_or_default();
            let sum = match held.get_mut(bucket) {
                Some(sum) => sum,
                None => held.entry(bucket.to_string()).or_default(),
            };
            *sum = (sum.0 + 1, sum.1 + s.size);
        }
        held
    }

    fn bit(&mut self, tier: &str) -> u64 {
        let i = match self.tiers.iter().position(|t| t == tier) {
            Some(i) => i,
            None => {
                self.tiers.push(tier.to_string());
                self.tiers.len() - 1
            }
        };
        if i < 64 {
            1 << i
        } else {
            0
        }
    }

    /// Takes one KV message in: a put replaces the key's summary, a delete or purge drops it.
    fn take(&mut self, prefix: &str, message: &DirectMessage) {
        let Some(key) = message.subject.strip_prefix(prefix) else {
            return;
        };
        let operation = message
            .headers
            .get("KV-Operation")
            .map(|v| v.as_str().to_string());
        if matches!(operation.as_deref(), Some("DEL") | Some("PURGE")) {
            self.entries.remove(key);
            return;
        }
        let entry: Entry = match serde_json::from_slice(&message.payload) {
            Ok(entry) => entry,
            Err(e) => {
                // As `Catalog::get` would fail on it: nothing is known of this object.
                tracing::warn!(key, error = %e, "catalog entry does not decode");
                self.entries.remove(key);
                return;
            }
        };
        let (mut locations, mut behind) = (0, 0);
        for tier in entry.locations.keys() {
            let bit = self.bit(tier);
            locations |= bit;
            if entry.location_seq(tier).is_some_and(|s| s < entry.seq) {
                behind |= bit;
            }
        }
        let mut reached = 0;
        for tier in entry.deleted.iter().flat_map(|d| d.reached.iter()) {
            reached |= self.bit(tier);
        }
        let summary = Summary {
            seq: entry.seq,
            digest: entry.digest,
            size: entry.size,
            locations,
            behind,
            reached,
            damaged: entry.damaged.is_some(),
            deleted: entry.deleted.is_some(),
            verified_at: copies::newest_verification(&entry),
        };
        match self.entries.get_mut(key) {
            Some(slot) => *slot = summary,
            None => {
                self.entries.insert(key.into(), summary);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn an_older_version_never_replaces_a_newer_one() {
        let v = |data: &[u8], seq| Version {
            size: data.len() as u64,
            digest: Sha256Digest::of(data),
            seq,
        };
        let mut recorded = entry_for(None, "b", "n", &v(b"two", 20)).unwrap();
        recorded
            .locations
            .insert("s3".into(), Location::verified(&v(b"two", 20), None));
        // Older: refused, whatever its content.
        assert!(entry_for(Some(recorded.clone()), "b", "n", &v(b"one", 10)).is_none());
        assert!(entry_for(Some(recorded.clone()), "b", "n", &v(b"two", 19)).is_none());
        // Newer with the same content keeps the verified copies (of the content, not of the
        // newer version's metadata); with other content starts afresh.
        assert!(recorded.has_version("s3", &Sha256Digest::of(b"two"), 20));
        let same = entry_for(Some(recorded.clone()), "b", "n", &v(b"two", 30)).unwrap();
        assert_eq!((same.seq, same.locations.len()), (30, 1));
        assert!(same.has("s3", &Sha256Digest::of(b"two")));
        assert!(!same.has_version("s3", &Sha256Digest::of(b"two"), 30));
        assert_eq!(same.location_seq("s3"), Some(20));
        // An entry written before copies were versioned: each copy counts as of the entry's seq.
        let mut legacy = same.clone();
        legacy.locations.values_mut().for_each(|l| l.seq = None);
        assert!(legacy.has_version("s3", &Sha256Digest::of(b"two"), 30));
        assert!(!legacy.has_version("s3", &Sha256Digest::of(b"two"), 31));
        let other = entry_for(Some(recorded.clone()), "b", "n", &v(b"three", 30)).unwrap();
        assert_eq!((other.seq, other.locations.len()), (30, 0));
        // After a delete (seq 25), only a later version is recorded, and it starts afresh even
        // with the deleted content.
        let mut tombstone = recorded;
        tombstone.seq = 25;
        tombstone.locations.clear();
        tombstone.deleted = Some(Deletion {
            at: now(),
            reached: BTreeSet::from(["s3".to_string()]),
        });
        assert!(!tombstone.has("s3", &Sha256Digest::of(b"two")));
        assert!(tombstone.deletion_reached(25, "s3") && !tombstone.deletion_reached(26, "s3"));
        assert!(entry_for(Some(tombstone.clone()), "b", "n", &v(b"two", 24)).is_none());
        let again = entry_for(Some(tombstone), "b", "n", &v(b"two", 26)).unwrap();
        assert_eq!(
            (again.seq, again.deleted, again.locations.len()),
            (26, None, 0)
        );
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn the_index_keeps_what_the_manager_decides_on_and_follows_deletes() {
        let digest = Sha256Digest::of(b"x");
        let message = |seq, entry: Option<&Entry>| {
            let mut headers = async_nats::HeaderMap::new();
            if entry.is_none() {
                headers.insert("KV-Operation", "DEL");
            }
            DirectMessage {
                subject: format!("$KV.cat.{}", key("b", "n")),
                seq,
                time: time::OffsetDateTime::UNIX_EPOCH,
                headers,
                payload: entry
                    .map(|e| serde_json::to_vec(e).unwrap())
                    .unwrap_or_default()
                    .into(),
            }
        };
        let mut entry = Entry::fresh(
            "b",
            "n",
            &Version {
                size: 1,
                digest,
                seq: 7,
            },
        );
        let v7 = Version {
            size: 1,
            digest,
            seq: 7,
        };
        entry
            .locations
            .insert("hub".into(), Location::verified(&v7, None));
        let mut index = CatalogIndex::new();
        index.take("$KV.cat.", &message(1, Some(&entry)));
        assert!(index.has("b", "n", "hub", &digest));
        assert!(index.has_version("b", "n", "hub", &digest, 7));
        assert!(
            !index.has_version("b", "n", "hub", &digest, 8),
            "a newer meta"
        );
        assert!(!index.has("b", "n", "s3", &digest));
        assert!(!index.has("b", "n", "hub", &Sha256Digest::of(b"y")));
        assert!(index.verified_elsewhere("b", "n", &digest, &["leaf"]));
        assert!(!index.verified_elsewhere("b", "n", &digest, &["leaf", "hub"]));
        assert!(
            index.deletion_pending("b", "n", 9, "s3"),
            "a delete after 7"
        );
        assert!(
            !index.deletion_pending("b", "n", 5, "s3"),
            "a delete before 7"
        );
        assert!(
            !index.deletion_pending("b", "other", 9, "s3"),
            "never copied"
        );
        // The same content after a metadata update (seq 8), verified again on s3 only: the
        // hub's copy holds the content but is behind the version.
        let mut updated = entry.clone();
        updated.seq = 8;
        updated.locations.insert(
            "s3".into(),
            Location::verified(&Version { seq: 8, ..v7 }, None),
        );
        index.take("$KV.cat.", &message(2, Some(&updated)));
        assert!(index.has_version("b", "n", "s3", &digest, 8));
        assert!(index.has("b", "n", "hub", &digest));
        assert!(!index.has_version("b", "n", "hub", &digest, 8));
        entry.seq = 9;
        entry.locations.clear();
        entry.deleted = Some(Deletion {
            at: now(),
            reached: BTreeSet::from(["s3".to_string()]),
        });
        index.take("$KV.cat.", &message(2, Some(&entry)));
        assert!(!index.deletion_pending("b", "n", 9, "s3"), "reached");
        assert!(index.deletion_pending("b", "n", 9, "s3b"), "not reached");
        index.take("$KV.cat.", &message(3, None));
        assert!(index.is_empty());
    }

    #[test]
    fn keys_are_valid_kv_keys_for_any_name() {
        for name in [
            "plain",
            "with space",
            "a/b/c",
            "dots.in.name",
            "ünïcode",
            ".hidden",
        ] {
            let k = key("bucket-1", name);
            assert!(k.starts_with("o.bucket-1."));
            assert!(
                k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_=./".contains(c)),
                "{k}"
            );
            assert_eq!(
                k.matches('.').count(),
                2,
                "name must not add key tokens: {k}"
            );
        }
        assert_ne!(key("b", "x"), key("b", "y"));
    }
}
