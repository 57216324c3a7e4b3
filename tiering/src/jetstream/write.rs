//! Writing verified bytes into a JetStream object store as object X, ourselves: the tier-level
//! "put" that restore uses (and an `ensure` service will).
//!
//! Why not async-nats' `ObjectStore::put`: it waits for each 128 KiB chunk's ack before sending
//! the next, so it runs at chunk size / round-trip time, and it publishes the meta message
//! whatever the content turned out to be. Here:
//!
//! * Chunks go to `$O.<bucket>.C.<nuid>` (128 KiB, as async-nats writes them) with up to
//!   [`ACK_WINDOW`] acks in flight per object, counted on the way. The content is hashed once,
//!   by the caller's reader, which checks it against the digest before it reports success
//!   (restore's S3 reader); the commit checks that digest and the size published.
//! * The meta message — exactly the JSON async-nats writes (its own [`ObjectInfo`] type), with
//!   `Nats-Rollup: sub`, so any object-store client reads the object — goes out only after every
//!   chunk was acknowledged **and** the content hashed to the digest the caller expects. So the
//!   object becomes visible only once complete and verified; a mismatch purges the chunks and
//!   never touches the version the bucket held.
//! * The meta is published with `Nats-Expected-Last-Subject-Sequence` of the meta the caller
//!   decided on (0: none): if anyone wrote or deleted the object meanwhile, the publish is
//!   refused and nothing is replaced ([`Error::NotReady`]).
//!
//! # Crash safety: the write journal
//!
//! A writer killed (SIGKILL) between its first chunk and its meta leaves chunks no meta
//! references: invisible, but stored. So before the first chunk, the write is recorded in the KV
//! bucket [`WRITE_JOURNAL_BUCKET`] on the control plane (tier, bucket, name, nuid, writer,
//! started, state), and the record is removed once the meta is published (or the chunks purged).
//! [`WriteJournal::recover`] purges the chunks of records whose writer is dead.
//!
//! Liveness: each [`WriteJournal`] (one per process) holds a lease `writer.<id>` in
//! [`crate::lease::LEASE_BUCKET`], renewed while it lives and expired by the server
//! [`crate::lease::LEASE_TTL`] after it dies; a record whose writer's lease is gone belongs to a
//! dead writer. A record of a live writer is never touched.
//!
//! The record's state decides races by compare-and-set on its revision: a writer moves it
//! `writing → committing` before publishing its meta, a recoverer `writing → purging` before
//! purging; only one of them can win. A `committing` record of a dead writer is finished (its
//! meta was published) or purged (it was not); a `purging` record is purged again (idempotent).
//! "Its meta was published" is asked of the whole bucket, not only of the record's name: the
//! object store's rename (`update_metadata` with a new name) moves the meta to another name and
//! keeps the nuid, so a version committed and then renamed before the recovery still owns its
//! chunks. Recovery walks the bucket's metas for the nuid ([`super::scan::MetaIndex`], once per
//! bucket per recovery) and purges only when no meta names it.
//! The one case this cannot tell apart: a writer frozen for longer than the lease TTL right
//! between its `committing` step and its meta publish, while another restore recovers — its
//! object would then be visible with purged chunks, and fail its digest on read.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::object_store::{ObjectInfo, ObjectMetadata, ObjectOptions};
use async_nats::jetstream::{self, kv, stream};
use async_nats::{HeaderMap, Subject};
use bytes::{Bytes, BytesMut};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use super::{check_content, chunk_subject, meta_subject, JetStreamTier, StoredObject};
use crate::digest::Sha256Digest;
use crate::error::Error;
use crate::lease::{Lease, Leases};

/// Chunk size of written objects: async-nats' default.
pub const CHUNK_SIZE: usize = 128 * 1024;
/// Chunk acks in flight per object (4 MiB): enough to keep the pipe to the stream leader full
/// on loopback and LAN, while bounding what one object holds unsent.
pub const ACK_WINDOW: usize = 32;
/// The KV bucket of the write journal (on the control plane, beside `cim_catalog`).
pub const WRITE_JOURNAL_BUCKET: &str = "cim_writes";
/// Longest wait for one ack or API reply while writing (a loaded 2-core box with an R3 stream
/// needs more than async-nats' 5 s at times).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a journaled write stands (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteState {
    /// Chunks are being published; no meta yet.
    Writing,
    /// The writer is publishing the meta: the chunks are (about to be) referenced.
    Committing,
    /// A recoverer claimed the write: its chunks are being purged; the writer can no longer commit.
    Purging,
}

/// One journaled write: what a recoverer needs to find its chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRecord {
    /// The JetStream tier written to (its configuration name).
    pub tier: String,
    /// The object-store bucket.
    pub bucket: String,
    /// The object's name.
    pub name: String,
    /// The version's nuid: its chunks are on `$O.<bucket>.C.<nuid>`.
    pub nuid: String,
    /// The writer (its lease is `writer.<writer>`).
    pub writer: String,
    /// When the write started (the writer's clock; for operators only).
    #[serde(with = "time::serde::rfc3339")]
    pub started: time::OffsetDateTime,
    /// Where it stands.
    pub state: WriteState,
}

/// What [`WriteJournal::recover`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Writes of dead writers whose chunks were purged.
    pub purged: Vec<WriteRecord>,
    /// Writes of dead writers that had published their meta: only the record was removed.
    pub finished: usize,
    /// Writes of live writers (other processes), left alone.
    pub live: usize,
}

/// The write journal of one process: its records, and the lease that says it is alive.
pub struct WriteJournal {
    kv: kv::Store,
    leases: Leases,
    writer: String,
    lease: Lease,
}

fn journal_error(op: &'static str, key: &str, source: impl std::fmt::Display) -> Error {
    Error::Journal {
        op,
        key: key.to_string(),
        source: source.to_string().into(),
    }
}

/// The lease key that says writer `writer` is alive.
fn writer_lease_key(writer: &str) -> String {
    format!("writer.{writer}")
}

impl WriteJournal {
    /// Opens the journal (creating its bucket with `replicas` if needed) and takes this process's
    /// writer lease. `holder` says who we are in the lease (for operators).
    pub async fn open(
        control: &jetstream::Context,
        replicas: usize,
        leases: Leases,
        holder: &str,
    ) -> Result<WriteJournal, Error> {
        let kv = super::kv::open_or_create(
            control,
            kv::Config {
                bucket: WRITE_JOURNAL_BUCKET.to_string(),
                description: "cim write journal: object writes in progress".into(),
                history: 1,
                num_replicas: replicas,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| journal_error("open", "", e))?;
        let writer = nuid::next().to_string();
        let lease = leases
            .try_acquire(&writer_lease_key(&writer), holder)
            .await?
            .ok_or_else(|| journal_error("take writer lease", &writer, "already held"))?;
        Ok(WriteJournal {
            kv,
            leases,
            writer,
            lease,
        })
    }

    /// This process's writer id.
    pub fn writer(&self) -> &str {
        &self.writer
    }

    fn key(writer: &str, nuid: &str) -> String {
        format!("{writer}.{nuid}")
    }

    /// Records a write before its first chunk; returns the record's revision.
    async fn begin(&self, record: &WriteRecord) -> Result<u64, Error> {
        let key = Self::key(&record.writer, &record.nuid);
        let value = serde_json::to_vec(record).map_err(|e| journal_error("encode", &key, e))?;
        self.kv
            .create(&key, value.into())
            .await
            .map_err(|e| journal_error("record write", &key, e))
    }

    /// Moves a record to `state` if it is still at `revision`; `Ok(false)` when someone else
    /// changed it first.
    async fn transition(
        &self,
        record: &WriteRecord,
        state: WriteState,
        revision: u64,
    ) -> Result<bool, Error> {
        let key = Self::key(&record.writer, &record.nuid);
        let mut next = record.clone();
        next.state = state;
        let value = serde_json::to_vec(&next).map_err(|e| journal_error("encode", &key, e))?;
        match self.kv.update(&key, value.into(), revision).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(journal_error("update write record", &key, e)),
        }
    }

    /// Removes a record entirely (a purge of its subject, so no delete marker accumulates).
    async fn end(&self, record: &WriteRecord) -> Result<(), Error> {
        let key = Self::key(&record.writer, &record.nuid);
        self.kv
            .stream
            .purge()
            .filter(format!("$KV.{WRITE_JOURNAL_BUCKET}.{key}"))
            .await
            .map_err(|e| journal_error("remove write record", &key, e))?;
        Ok(())
    }

    /// Finds the writes of dead writers and cleans up after them: purges the chunks of every
    /// write that did not publish its meta, and removes their records. Writes of live writers
    /// (another restore running now) are left alone. `tier` maps a record's tier name to the
    /// tier; records of tiers it does not know are left (and logged).
    pub async fn recover(
        &self,
        tier: impl Fn(&str) -> Option<JetStreamTier>,
    ) -> Result<Recovered, Error> {
        let prefix = format!("$KV.{WRITE_JOURNAL_BUCKET}.");
        let subjects: Vec<(String, usize)> = self
            .kv
            .stream
            .info_with_subjects(format!("{prefix}>"))
            .await
            .map_err(|e| journal_error("list write records", "", e))?
            .try_collect()
            .await
            .map_err(|e| journal_error("list write records", "", e))?;
        let mut recovered = Recovered::default();
        let mut alive: std::collections::HashMap<String, bool> = Default::default();
        let mut nuids = NuidOwners::default();
        for (subject, _) in subjects {
            let Some(key) = subject.strip_prefix(&prefix) else {
                continue;
            };
            let entry = match self.kv.entry(key).await {
                Ok(Some(entry)) if entry.operation == kv::Operation::Put => entry,
                Ok(_) => continue,
                Err(e) => return Err(journal_error("read write record", key, e)),
            };
            let record: WriteRecord = match serde_json::from_slice(&entry.value) {
                Ok(record) => record,
                Err(e) => {
                    tracing::warn!(key, error = %e, "write record does not decode; left alone");
                    continue;
                }
            };
            if record.writer == self.writer {
                continue;
            }
            let writer_alive = match alive.get(&record.writer) {
                Some(a) => *a,
                None => {
                    let a = self
                        .leases
                        .holder(&writer_lease_key(&record.writer))
                        .await?
                        .is_some();
                    alive.insert(record.writer.clone(), a);
                    a
                }
            };
            if writer_alive && record.state != WriteState::Purging {
                recovered.live += 1;
                continue;
            }
            let Some(target) = tier(&record.tier) else {
                tracing::warn!(key, tier = %record.tier, "write record of a tier this configuration does not have; left alone");
                continue;
            };
            if record.state == WriteState::Committing {
                let latest = target.latest(&record.bucket, &record.name).await?;
                let holder = if latest.is_some_and(|l| l.info.nuid == record.nuid) {
                    Holder::Named(record.name.clone())
                } else {
                    nuids.holder(&target, &record.bucket, &record.nuid).await?
                };
                if let Holder::Unsure(unreadable) = &holder {
                    tracing::warn!(
                        key,
                        bucket = %record.bucket,
                        unreadable = %unreadable,
                        "an interrupted write may have been committed and renamed to an object \
                         whose meta does not decode; its chunks and record are left alone"
                    );
                    continue;
                }
                if let Holder::Named(holder) = holder {
                    if holder != record.name {
                        tracing::info!(
                            bucket = %record.bucket,
                            object = %record.name,
                            renamed = %holder,
                            nuid = %record.nuid,
                            "an interrupted write was committed and renamed since; its chunks stay"
                        );
                    }
                    self.end(&record).await?;
                    recovered.finished += 1;
                    continue;
                }
            }
            if record.state != WriteState::Purging
                && !self
                    .transition(&record, WriteState::Purging, entry.revision)
                    .await?
            {
                // Someone (the writer, or another recoverer) moved first; look again next run.
                continue;
            }
            target
                .purge_chunks(&record.bucket, &record.name, &record.nuid)
                .await?;
            self.end(&record).await?;
            tracing::warn!(
                tier = %record.tier,
                bucket = %record.bucket,
                object = %record.name,
                nuid = %record.nuid,
                started = %record.started,
                "purged the chunks of an interrupted write"
            );
            recovered.purged.push(record);
        }
        Ok(recovered)
    }

    /// Releases the writer lease (dropping the journal does too, in the background).
    pub async fn close(self) {
        self.lease.release().await;
    }
}

/// Which object's current meta names each nuid, per (tier, bucket): walked once per recovery,
/// only for buckets with a `committing` record whose own name no longer holds its nuid.
#[derive(Default)]
struct NuidOwners {
    buckets: std::collections::HashMap<(String, String), Owners>,
}

impl NuidOwners {
    /// Who holds `nuid` in `bucket`: the object whose current meta (live, deleted or other)
    /// names it, nobody, or unsure when some meta does not decode. A walk that fails is an
    /// error: recovery then purges nothing and the next run asks again.
    async fn holder(
        &mut self,
        tier: &JetStreamTier,
        bucket: &str,
        nuid: &str,
    ) -> Result<Holder, Error> {
        let key = (tier.name().to_string(), bucket.to_string());
        if !self.buckets.contains_key(&key) {
            let mut index = super::scan::MetaIndex::new();
            index.follow(&tier.direct(bucket), bucket).await?;
            let owners = Owners {
                names: index
                    .objects()
                    .map(|(name, meta)| (meta.nuid.clone(), name.to_string()))
                    .collect(),
                unreadable: index.unreadable().next().map(|(name, _)| name.to_string()),
            };
            self.buckets.insert(key.clone(), owners);
        }
        let owners = &self.buckets[&key];
        Ok(match (owners.names.get(nuid), &owners.unreadable) {
            (Some(name), _) => Holder::Named(name.clone()),
            (None, Some(unreadable)) => Holder::Unsure(unreadable.clone()),
            (None, None) => Holder::Nobody,
        })
    }
}

/// One bucket's nuids and their objects, and one object whose meta does not decode, if any.
struct Owners {
    names: std::collections::HashMap<Box<str>, String>,
    unreadable: Option<String>,
}

/// Who holds an interrupted write's nuid (see [`NuidOwners::holder`]).
enum Holder {
    /// The object of this name: the write was committed (and maybe renamed since).
    Named(String),
    /// No readable meta names it, but this object's meta does not decode.
    Unsure(String),
    /// No meta names it: the write never committed.
    Nobody,
}

/// A bucket opened for writing: the stream handle and a context with write deadlines, looked up
/// once and reused for every object written into it.
#[derive(Clone)]
pub struct BucketWriter {
    tier: JetStreamTier,
    bucket: String,
    js: jetstream::Context,
    stream: stream::Stream,
}

impl JetStreamTier {
    /// Opens `bucket` for [`BucketWriter::begin`], creating it (a plain object store with this
    /// tier's replicas) if it does not exist.
    pub async fn bucket_writer(&self, bucket: &str) -> Result<BucketWriter, Error> {
        self.ensure_bucket(bucket).await?;
        let stream = self.stream(bucket).await?.ok_or_else(|| Error::NotReady {
            bucket: bucket.to_string(),
            object: String::new(),
            tier: self.name.clone(),
            reason: "bucket vanished right after it was created".into(),
        })?;
        let mut js = self.js.clone();
        js.set_timeout(WRITE_TIMEOUT);
        Ok(BucketWriter {
            tier: self.clone(),
            bucket: bucket.to_string(),
            js,
            stream,
        })
    }
}

impl BucketWriter {
    /// The tier written to.
    pub fn tier(&self) -> &JetStreamTier {
        &self.tier
    }

    /// The stream's config and state as of now (one request).
    pub async fn info(&self) -> Result<stream::Info, Error> {
        let mut stream = self.stream.clone();
        stream
            .info()
            .await
            .cloned()
            .map_err(|e| Error::bucket_op("read stream info", &self.tier.name, &self.bucket, e))
    }

    /// The object's latest meta message (live, deleted or a link), read from the stream leader.
    pub async fn latest(&self, name: &str) -> Result<Option<StoredObject>, Error> {
        self.tier
            .last_meta(
                &self.stream,
                &self.bucket,
                &meta_subject(&self.bucket, name),
            )
            .await
    }

    /// Starts writing a new version of `name`: journals it (before any chunk) and returns the
    /// [`ObjectWrite`] to feed. `expected_meta_seq` is the stream sequence of the object's meta
    /// the caller decided on (`0`: it had none); the commit is refused if it changed.
    pub async fn begin(
        &self,
        journal: &WriteJournal,
        name: &str,
        expected_meta_seq: u64,
    ) -> Result<ObjectWrite, Error> {
        let nuid = nuid::next().to_string();
        let record = WriteRecord {
            tier: self.tier.name.clone(),
            bucket: self.bucket.clone(),
            name: name.to_string(),
            nuid: nuid.clone(),
            writer: journal.writer.clone(),
            started: time::OffsetDateTime::now_utc(),
            state: WriteState::Writing,
        };
        let revision = journal.begin(&record).await?;
        Ok(ObjectWrite {
            bucket: self.clone(),
            subject: Subject::from(chunk_subject(&self.bucket, &nuid)),
            record,
            revision,
            expected_meta_seq,
            written: None,
            published: None,
            chunks: 0,
        })
    }
}

/// One version being written (see the module docs). Finish it with [`ObjectWrite::commit`] or
/// [`ObjectWrite::abort`]; one dropped without either leaves its chunks to
/// [`WriteJournal::recover`].
pub struct ObjectWrite {
    bucket: BucketWriter,
    subject: Subject,
    record: WriteRecord,
    revision: u64,
    expected_meta_seq: u64,
    written: Option<(Sha256Digest, u64)>,
    /// Bytes published by [`ObjectWrite::write_unhashed`], awaiting the reader's digest.
    published: Option<u64>,
    chunks: usize,
}

/// A committed version: its meta and the stream sequence of its meta message.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The meta, as published.
    pub info: ObjectInfo,
    /// Stream sequence of the meta message.
    pub seq: u64,
}

impl ObjectWrite {
    /// The version's nuid (its chunks are on `$O.<bucket>.C.<nuid>`).
    pub fn nuid(&self) -> &str {
        &self.record.nuid
    }

    fn op_error(&self, op: &'static str, source: impl Into<crate::error::BoxError>) -> Error {
        Error::object_op(
            op,
            &self.bucket.tier.name,
            &self.bucket.bucket,
            &self.record.name,
            source,
        )
    }

    /// Publishes everything `reader` yields as chunks, up to [`ACK_WINDOW`] acks in flight;
    /// returns the bytes published once every chunk is acknowledged. `size_hint` (the expected
    /// size) keeps a small object from allocating a whole chunk.
    ///
    /// Not hashed here: the reader hashes exactly the bytes it yields and checks them against
    /// the version's digest itself (restore's S3 reader decompresses, hashes, and only then
    /// writes into the pipe this reads), so the same bytes are not hashed twice in one process.
    /// Before [`ObjectWrite::commit`], the caller hands over the reader's digest with
    /// [`ObjectWrite::hashed_by_reader`]; the commit checks it and the size *published* here
    /// against the expected ones.
    pub async fn write_unhashed<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        size_hint: u64,
    ) -> Result<u64, Error> {
        let size = self.publish(reader, size_hint).await?;
        self.published = Some(size);
        Ok(size)
    }

    /// The reader's SHA-256 of the bytes [`ObjectWrite::write_unhashed`] published (see
    /// there). Without a preceding `write_unhashed`, the commit refuses as for an unwritten
    /// version.
    pub fn hashed_by_reader(&mut self, digest: Sha256Digest) {
        if let Some(size) = self.published {
            self.written = Some((digest, size));
        }
    }

    /// Publishes everything `reader` yields; returns the bytes published once every chunk is
    /// acknowledged.
    async fn publish<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        size_hint: u64,
    ) -> Result<u64, Error> {
        let mut acks = VecDeque::with_capacity(ACK_WINDOW);
        let result = self.publish_all(reader, size_hint, &mut acks).await;
        if result.is_err() {
            // Let every chunk already sent land (or time out) before the caller purges: a chunk
            // stored after the purge would be a stray no record names.
            for ack in acks {
                let _ = ack.await;
            }
        }
        result
    }

    async fn publish_all<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
        size_hint: u64,
        acks: &mut VecDeque<jetstream::context::PublishAckFuture>,
    ) -> Result<u64, Error> {
        let mut published = 0u64;
        let chunk_capacity =
            usize::try_from(size_hint.clamp(1, CHUNK_SIZE as u64)).unwrap_or(CHUNK_SIZE);
        loop {
            let chunk = read_chunk(reader, chunk_capacity)
                .await
                .map_err(|e| self.op_error("read content", e))?;
            if chunk.is_empty() {
                break;
            }
            published += chunk.len() as u64;
            self.chunks += 1;
            if acks.len() == ACK_WINDOW {
                if let Some(ack) = acks.pop_front() {
                    ack.await.map_err(|e| self.op_error("publish chunk", e))?;
                }
            }
            let ack = self
                .bucket
                .js
                .publish(self.subject.clone(), chunk)
                .await
                .map_err(|e| self.op_error("publish chunk", e))?;
            acks.push_back(ack);
        }
        while let Some(ack) = acks.pop_front() {
            ack.await.map_err(|e| self.op_error("publish chunk", e))?;
        }
        Ok(published)
    }

    /// Makes the version visible under `meta`'s name, description, metadata and headers — only
    /// if what [`ObjectWrite::write_unhashed`] published is `expected_size` bytes hashing to
    /// `expected` (else an [`Error::Integrity`], counted and logged, and the chunks are purged)
    /// and the object's meta is still the one the write began on (else [`Error::NotReady`]).
    /// After the meta, the chunks of the version it replaced (`replaces`) are purged, as
    /// async-nats' `put` does.
    pub async fn commit(
        self,
        journal: &WriteJournal,
        meta: ObjectMetadata,
        expected_size: u64,
        expected: &Sha256Digest,
        replaces: Option<&ObjectInfo>,
    ) -> Result<Committed, Error> {
        let (tier, bucket, name) = (
            self.bucket.tier.name.clone(),
            self.bucket.bucket.clone(),
            self.record.name.clone(),
        );
        let Some((digest, size)) = self.written else {
            self.abort(journal).await;
            return Err(Error::NotReady {
                bucket,
                object: name,
                tier,
                reason: "commit before the content was written".into(),
            });
        };
        if let Err(e) = check_content(
            &tier,
            &bucket,
            &name,
            expected_size,
            expected,
            size,
            &digest,
        ) {
            self.abort(journal).await;
            return Err(e);
        }
        match journal
            .transition(&self.record, WriteState::Committing, self.revision)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                return Err(Error::NotReady {
                    bucket,
                    object: name,
                    tier,
                    reason: "another process took this write for abandoned and purged it; run \
                             the restore again"
                        .into(),
                })
            }
            Err(e) => {
                self.abort(journal).await;
                return Err(e);
            }
        }
        let info = ObjectInfo {
            name: meta.name,
            description: meta.description,
            metadata: meta.metadata,
            headers: meta.headers,
            options: Some(ObjectOptions {
                link: None,
                max_chunk_size: Some(CHUNK_SIZE),
            }),
            bucket: bucket.clone(),
            nuid: self.record.nuid.clone(),
            size: size as usize,
            chunks: self.chunks,
            modified: Some(time::OffsetDateTime::now_utc()),
            digest: Some(digest.to_nats()),
            deleted: false,
        };
        let payload = match serde_json::to_vec(&info) {
            Ok(p) => Bytes::from(p),
            Err(e) => {
                let error = self.op_error("encode meta", e);
                self.abort(journal).await;
                return Err(error);
            }
        };
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Rollup", "sub");
        let publish = PublishMessage::build()
            .payload(payload)
            .headers(headers)
            .expected_last_subject_sequence(self.expected_meta_seq);
        let acked = match self
            .bucket
            .js
            .send_publish(meta_subject(&bucket, &name), publish)
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        let seq = match acked {
            Ok(ack) => ack.sequence,
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                self.abort(journal).await;
                return Err(Error::NotReady {
                    bucket,
                    object: name,
                    tier,
                    reason: "changed while being written (written or deleted by someone else); \
                             kept the new state"
                        .into(),
                });
            }
            Err(e) => {
                // Unknown whether the meta landed: leave the record `committing`; recovery
                // looks at the meta and finishes or purges.
                return Err(self.op_error("publish meta", e));
            }
        };
        if let Some(old) = replaces.filter(|o| o.nuid != self.record.nuid) {
            if let Err(e) = self
                .bucket
                .tier
                .purge_chunks(&bucket, &name, &old.nuid)
                .await
            {
                tracing::warn!(bucket, object = %name, tier, error = %e, "could not purge the replaced version's chunks");
            }
        }
        if let Err(e) = journal.end(&self.record).await {
            tracing::warn!(bucket, object = %name, tier, error = %e, "could not remove the write record; the next recovery will");
        }
        Ok(Committed { info, seq })
    }

    /// Purges the chunks written so far and removes the record. Failures are logged: the record
    /// stays, and [`WriteJournal::recover`] finishes the job once this process is gone.
    pub async fn abort(self, journal: &WriteJournal) {
        let (bucket, name, nuid) = (&self.record.bucket, &self.record.name, &self.record.nuid);
        match self.bucket.tier.purge_chunks(bucket, name, nuid).await {
            Ok(()) => {
                if let Err(e) = journal.end(&self.record).await {
                    tracing::warn!(bucket, object = %name, error = %e, "could not remove the write record");
                }
            }
            Err(e) => {
                tracing::warn!(bucket, object = %name, nuid, error = %e, "could not purge the chunks of an aborted write; the next restore will")
            }
        }
    }
}

/// Up to `capacity` bytes from `reader` (fewer only at its end; empty at the end).
async fn read_chunk<R: AsyncRead + Unpin>(
    reader: &mut R,
    capacity: usize,
) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(capacity);
    while buf.len() < CHUNK_SIZE {
        if buf.capacity() == buf.len() {
            // Grow by doubling: a small object's EOF must not cost a whole chunk's allocation.
            buf.reserve(buf.len().max(4096).min(CHUNK_SIZE - buf.len()));
        }
        let room = CHUNK_SIZE - buf.len();
        let n = (&mut *reader).take(room as u64).read_buf(&mut buf).await?;
        if n == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}
