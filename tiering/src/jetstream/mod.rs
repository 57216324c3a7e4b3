//! JetStream object-store tiers: connecting, listing, verified reads, sourcing and eviction.
//!
//! A tier is one JetStream domain (`leaf`, `hub`, ...) reached through a NATS connection. All
//! JetStream API calls go through `$JS.<domain>.API`, so a tier can be reached directly or over a
//! leafnode link.
//!
//! # Why the hub bucket *sources* the leaf bucket instead of mirroring it
//! A mirror stream has no subjects and rejects writes, and a put addressed to a hub bucket that
//! is only a mirror travels over the leafnode link into the *leaf's* bucket. Restore must write
//! into the hub, and a fleet of leaves must feed one hub bucket; a stream with its own
//! `$O.<bucket>.>` subjects plus `sources` does both. The price: leaf remotes must deny `$O.>`
//! in both directions, or the hub stream captures every chunk a second time through leafnode
//! interest and digests fail (see `docs/architecture.md`).
//!
//! # Why eviction purges instead of deleting
//! An object-store `delete` writes a meta message (`deleted: true`) that sourcing copies to the
//! hub — a policy eviction would then look like a user delete. Purges are not replicated by
//! sources or mirrors, so eviction purges the object's meta subject (bounded by the sequence we
//! verified, so a concurrent overwrite survives) and then its chunk subject. Meta goes first: a
//! crash in between leaves orphaned chunks, never a visible object with missing chunks.

use std::time::Duration;

use async_nats::jetstream::{self, object_store::ObjectInfo, object_store::ObjectStore, stream};
use base64::engine::general_purpose::URL_SAFE;
use base64::Engine;
use futures::TryStreamExt;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::digest::{Hasher, Sha256Digest};
use crate::error::{Error, IntegrityFailure};

pub mod direct;
pub mod kv;
pub mod read;
pub mod scan;
pub mod write;

pub use read::ObjectReader;

/// Connects to NATS at `url` (a comma-separated list is fine), with an optional credentials file.
pub async fn connect(
    url: &str,
    credentials_file: Option<&std::path::Path>,
    name: &str,
) -> Result<async_nats::Client, Error> {
    let connect_err = |source: Box<dyn std::error::Error + Send + Sync>| Error::Connect {
        url: url.to_string(),
        source,
    };
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(10)));
    if let Some(path) = credentials_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| connect_err(format!("credentials file {}: {e}", path.display()).into()))?;
    }
    // async-nats takes one URL per address; operators write a comma-separated list.
    let addrs = url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| connect_err(Box::new(e)))?;
    options
        .connect(addrs.as_slice())
        .await
        .map_err(|e| connect_err(Box::new(e)))
}

/// One JetStream domain holding object-store buckets.
#[derive(Clone)]
pub struct JetStreamTier {
    name: String,
    domain: String,
    replicas: usize,
    js: jetstream::Context,
}

/// Longest a read of a stored object may wait for its next chunk. A healthy cluster streams
/// chunks continuously and elects a new stream leader within seconds; a reader whose chunks were
/// purged underneath it (the object moved on) would otherwise wait forever.
pub const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// One version of an object as a tier's stream holds it: the meta message's content plus where
/// and when this tier's server stored it.
#[derive(Debug, Clone)]
pub struct StoredObject {
    /// The object's meta: name, nuid, size, ingest digest, and the writer's own `modified`.
    pub info: ObjectInfo,
    /// Stream sequence of the meta message on this tier. It orders the versions of an object
    /// on one tier; the writers' clocks do not (devices disagree, and may say 1970).
    pub seq: u64,
    /// When this tier's server stored the meta message. Policy ages are measured from it, never
    /// from `info.modified`, which the writing client sets.
    pub stored_at: time::OffsetDateTime,
}

impl StoredObject {
    /// How long ago this tier stored the version (zero if the server's clock is behind ours).
    pub fn age(&self, now: time::OffsetDateTime) -> Duration {
        (now - self.stored_at).try_into().unwrap_or(Duration::ZERO)
    }
}

/// A bucket's live objects and its deleted ones, plus the meta messages that could not be
/// decoded.
#[derive(Debug, Default)]
pub struct Listing {
    /// Live objects (not deleted, not links), sorted by name.
    pub objects: Vec<StoredObject>,
    /// Objects whose latest meta message is a user delete (`deleted: true`), sorted by name:
    /// the delete marker's sequence orders the delete among the object's versions.
    pub deleted: Vec<StoredObject>,
    /// One [`Error::BadMeta`] per object whose meta message does not decode.
    pub unreadable: Vec<Error>,
}

/// Stream name of an object-store bucket.
pub fn stream_name(bucket: &str) -> String {
    format!("OBJ_{bucket}")
}

/// Meta subject of an object, exactly as async-nats and nats-server tools write it.
pub fn meta_subject(bucket: &str, object: &str) -> String {
    format!("$O.{bucket}.M.{}", URL_SAFE.encode(object))
}

/// The object name a meta subject encodes, for messages about it; the raw subject if it does
/// not decode.
fn object_of_meta_subject(bucket: &str, subject: &str) -> String {
    subject
        .strip_prefix(&format!("$O.{bucket}.M."))
        .and_then(|encoded| URL_SAFE.decode(encoded).ok())
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .unwrap_or_else(|| subject.to_string())
}

/// Chunk subject of one stored version of an object.
pub fn chunk_subject(bucket: &str, nuid: &str) -> String {
    format!("$O.{bucket}.C.{nuid}")
}

impl JetStreamTier {
    /// A tier over an existing client; API calls go to `$JS.<domain>.API`.
    pub fn new(name: &str, domain: &str, replicas: usize, client: async_nats::Client) -> Self {
        Self {
            name: name.to_string(),
            domain: domain.to_string(),
            replicas,
            js: jetstream::with_domain(client, domain),
        }
    }

    /// The tier's name in the configuration.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tier's JetStream domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The JetStream context (domain-scoped).
    pub fn context(&self) -> &jetstream::Context {
        &self.js
    }

    /// JetStream file storage used in the tier's domain by this account, and the account's
    /// storage limit when it has one (an account without a limit is bounded only by the
    /// server's `max_file_store`, which only the system account can read).
    pub async fn storage(&self) -> Result<(u64, Option<u64>), Error> {
        let account = self
            .js
            .query_account()
            .await
            .map_err(|e| Error::bucket_op("account info", &self.name, "*", e))?;
        let limit = account
            .limits
            .max_storage
            .and_then(|l| u64::try_from(l).ok());
        Ok((account.storage, limit.filter(|l| *l > 0)))
    }

    /// Batched direct gets on a bucket's stream (see [`direct`]).
    pub fn direct(&self, bucket: &str) -> direct::DirectGet {
        direct::DirectGet::new(
            self.js.client(),
            &self.domain,
            &stream_name(bucket),
            &self.name,
            bucket,
        )
    }

    /// Names of every object-store bucket in this domain.
    pub async fn bucket_names(&self) -> Result<Vec<String>, Error> {
        let names: Vec<String> = self
            .js
            .stream_names()
            .try_collect()
            .await
            .map_err(|e| Error::bucket_op("list streams", &self.name, "*", e))?;
        let mut buckets: Vec<String> = names
            .into_iter()
            .filter_map(|n| n.strip_prefix("OBJ_").map(str::to_string))
            .collect();
        buckets.sort();
        Ok(buckets)
    }

    /// The bucket, or `None` when its stream does not exist.
    pub async fn bucket(&self, bucket: &str) -> Result<Option<ObjectStore>, Error> {
        if !self.stream_exists(bucket).await? {
            return Ok(None);
        }
        self.js
            .get_object_store(bucket)
            .await
            .map(Some)
            .map_err(|e| Error::bucket_op("open bucket", &self.name, bucket, e))
    }

    /// Whether the bucket's stream exists.
    pub async fn stream_exists(&self, bucket: &str) -> Result<bool, Error> {
        Ok(self.stream(bucket).await?.is_some())
    }

    /// Every live (not deleted, not a link) object of a bucket; empty when the bucket is absent.
    ///
    /// Lists the bucket's meta subjects from stream info, then reads each subject's last
    /// message from the stream leader. Not async-nats' `list()`: its ordered consumer waits
    /// forever for a message that an eviction purged after the listing started.
    ///
    /// A meta message that does not decode is reported in [`Listing::unreadable`] and the
    /// listing goes on: one bad object never hides the others.
    pub async fn list_objects(&self, bucket: &str) -> Result<Listing, Error> {
        let Some(stream) = self.stream(bucket).await? else {
            return Ok(Listing::default());
        };
        let subjects: Vec<(String, usize)> = stream
            .info_with_subjects(format!("$O.{bucket}.M.>"))
            .await
            .map_err(|e| Error::bucket_op("list objects", &self.name, bucket, e))?
            .try_collect()
            .await
            .map_err(|e| Error::bucket_op("list objects", &self.name, bucket, e))?;
        let mut listing = Listing::default();
        for (subject, _) in subjects {
            match self.last_meta(&stream, bucket, &subject).await {
                Ok(Some(version)) if version.info.deleted => listing.deleted.push(version),
                Ok(Some(version)) if is_live(&version.info) => listing.objects.push(version),
                Ok(_) => {}
                Err(e @ Error::BadMeta { .. }) => listing.unreadable.push(e),
                Err(e) => return Err(e),
            }
        }
        listing
            .objects
            .sort_by(|a, b| a.info.name.cmp(&b.info.name));
        listing
            .deleted
            .sort_by(|a, b| a.info.name.cmp(&b.info.name));
        Ok(listing)
    }

    /// Current info of an object; `None` when absent, deleted or a link. Read from the stream
    /// leader, so a lagging replica never answers for an object already moved on.
    pub async fn info(&self, bucket: &str, object: &str) -> Result<Option<ObjectInfo>, Error> {
        Ok(self.version(bucket, object).await?.map(|v| v.info))
    }

    /// Like [`JetStreamTier::info`], with the meta message's stream sequence and stored time.
    pub async fn version(&self, bucket: &str, object: &str) -> Result<Option<StoredObject>, Error> {
        Ok(self
            .latest(bucket, object)
            .await?
            .filter(|v| is_live(&v.info)))
    }

    /// The object's latest meta message, whatever it says: a live version, a user delete
    /// (`info.deleted`), or a link; `None` when the tier holds no meta for it (never written, or
    /// evicted).
    ///
    /// One request (to the stream leader); no stream lookup first (see [`Self::stream_handle`]).
    pub async fn latest(&self, bucket: &str, object: &str) -> Result<Option<StoredObject>, Error> {
        let stream = self.stream_handle(bucket).await?;
        self.last_meta(&stream, bucket, &meta_subject(bucket, object))
            .await
    }

    /// The bucket stream's last sequence (0 when the bucket does not exist): every message
    /// stored later has a higher one.
    pub async fn last_sequence(&self, bucket: &str) -> Result<u64, Error> {
        // The lookup's answer is the stream's info as of now: no second request for it.
        Ok(self
            .stream(bucket)
            .await?
            .map_or(0, |stream| stream.cached_info().state.last_sequence))
    }

    /// A handle on the bucket's stream for the requests that name it — an object's latest meta
    /// from the leader, purges — costing no request itself.
    ///
    /// Why not [`Self::stream`]: a lookup is a full stream-info request (config, state, cluster),
    /// and the per-object steps of an upload (read the version, evict it, purge its chunks)
    /// would each pay one for nothing — the handle is just the stream's name. A stream that
    /// does not exist is told by the request itself: the server answers it with "stream not
    /// found" (10059), which each caller reads as its lookup's `None` did ([`is_stream_not_found`]).
    /// Nothing is cached, so nothing goes stale.
    async fn stream_handle(&self, bucket: &str) -> Result<stream::Stream<()>, Error> {
        self.js
            .get_stream_no_info(stream_name(bucket))
            .await
            .map_err(|e| Error::bucket_op("open bucket", &self.name, bucket, e))
    }

    /// The bucket's stream (with its info as of now), or `None` when it does not exist.
    async fn stream(&self, bucket: &str) -> Result<Option<stream::Stream>, Error> {
        use jetstream::context::GetStreamErrorKind;
        match self.js.get_stream(stream_name(bucket)).await {
            Ok(stream) => Ok(Some(stream)),
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(js)
                    if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
                {
                    Ok(None)
                }
                _ => Err(Error::bucket_op("open bucket", &self.name, bucket, e)),
            },
        }
    }

    /// The latest meta message on `subject` (live, deleted or a link), if any.
    /// `None` too when the stream does not exist (any more).
    async fn last_meta<I>(
        &self,
        stream: &stream::Stream<I>,
        bucket: &str,
        subject: &str,
    ) -> Result<Option<StoredObject>, Error> {
        let message = match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => message,
            Err(e) => match e.kind() {
                stream::LastRawMessageErrorKind::NoMessageFound => return Ok(None),
                stream::LastRawMessageErrorKind::JetStream(js) if is_stream_not_found(&js) => {
                    return Ok(None)
                }
                _ => return Err(Error::bucket_op("read object meta", &self.name, bucket, e)),
            },
        };
        let info: ObjectInfo =
            serde_json::from_slice(&message.payload).map_err(|e| Error::BadMeta {
                tier: self.name.clone(),
                bucket: bucket.to_string(),
                object: object_of_meta_subject(bucket, subject),
                reason: e.to_string(),
            })?;
        Ok(Some(StoredObject {
            info,
            seq: message.sequence,
            stored_at: message.time,
        }))
    }

    /// Opens a reader over the version `info` describes: its chunks, by batched direct gets
    /// (see [`read`]). The reader does not hash; callers that must prove integrity check what
    /// they read against the ingest digest (see [`JetStreamTier::read_verified`]).
    ///
    /// Costs no round trip: the chunks of exactly this version (its nuid) are asked for, so a
    /// newer version written meanwhile is never mixed in, and a version purged meanwhile ends
    /// the read with [`Error::NotReady`].
    pub fn open(&self, bucket: &str, info: &ObjectInfo) -> ObjectReader {
        ObjectReader::new(
            self.direct(bucket),
            read::ChunkSource {
                tier: self.name.clone(),
                bucket: bucket.to_string(),
                object: info.name.clone(),
                subject: chunk_subject(bucket, &info.nuid),
                size: info.size as u64,
                chunks: info.chunks as u64,
            },
        )
    }

    /// Reads the whole object, writing it to `out`, and checks size and SHA-256 against
    /// `expected_size`/`expected` (the values taken at ingest). Returns the bytes read.
    pub async fn read_verified<W: AsyncWrite + Unpin>(
        &self,
        bucket: &str,
        info: &ObjectInfo,
        expected_size: u64,
        expected: &Sha256Digest,
        out: &mut W,
    ) -> Result<u64, Error> {
        let read = self.read_all(bucket, info, out).await;
        if let Ok((digest, size)) = &read {
            if *size == expected_size && digest == expected {
                return Ok(*size);
            }
        }
        // A copy evicted or overwritten while we read it is gone, not corrupt: say so (and
        // retry later) instead of raising a false integrity alarm.
        let current = self.info(bucket, &info.name).await?;
        if current.map(|i| i.nuid) != Some(info.nuid.clone()) {
            return Err(Error::NotReady {
                bucket: bucket.to_string(),
                object: info.name.clone(),
                tier: self.name.clone(),
                reason: "removed or replaced while being read".into(),
            });
        }
        match read {
            Ok((digest, size)) => {
                check_content(
                    &self.name,
                    bucket,
                    &info.name,
                    expected_size,
                    expected,
                    size,
                    &digest,
                )?;
                Ok(size)
            }
            Err(error) => Err(error),
        }
    }

    /// Reads the whole object into `out`, hashing it: the one SHA-256 pass over the content
    /// (the reader itself does not hash).
    async fn read_all<W: AsyncWrite + Unpin>(
        &self,
        bucket: &str,
        info: &ObjectInfo,
        out: &mut W,
    ) -> Result<(Sha256Digest, u64), Error> {
        let mut reader = self.open(bucket, info);
        let mut hasher = Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf).await.map_err(|e| {
                read::tiering_error(e).unwrap_or_else(|e| {
                    Error::object_op("read object", &self.name, bucket, &info.name, e)
                })
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .await
                .map_err(|e| Error::object_op("write copy", &self.name, bucket, &info.name, e))?;
        }
        Ok(hasher.finish())
    }

    /// Creates the bucket as a plain, writable object store with this tier's replica count,
    /// or returns it if it exists.
    pub async fn ensure_bucket(&self, bucket: &str) -> Result<ObjectStore, Error> {
        if let Some(store) = self.bucket(bucket).await? {
            return Ok(store);
        }
        self.js
            .create_stream(bucket_stream_config(bucket, self.replicas, None))
            .await
            .map_err(|e| Error::bucket_op("create bucket", &self.name, bucket, e))?;
        self.js
            .get_object_store(bucket)
            .await
            .map_err(|e| Error::bucket_op("open bucket", &self.name, bucket, e))
    }

    /// Makes this tier's bucket *source* the same bucket of `from` (see the module docs for why
    /// sourcing, not mirroring). Idempotent: creates the stream, or adds the source to an
    /// existing writable bucket. Refuses a bucket that is a mirror.
    pub async fn ensure_sourced_from(
        &self,
        bucket: &str,
        from: &JetStreamTier,
    ) -> Result<(), Error> {
        let source = stream::Source {
            name: stream_name(bucket),
            external: Some(stream::External {
                api_prefix: format!("$JS.{}.API", from.domain),
                delivery_prefix: None,
            }),
            ..Default::default()
        };
        let Some(existing) = self.stream(bucket).await? else {
            self.js
                .create_stream(bucket_stream_config(
                    bucket,
                    self.replicas,
                    Some(vec![source]),
                ))
                .await
                .map_err(|e| Error::bucket_op("create sourcing bucket", &self.name, bucket, e))?;
            tracing::info!(bucket, tier = %self.name, from = %from.name, "created bucket sourcing from leaf");
            return Ok(());
        };
        let mut config = existing.cached_info().config.clone();
        if config.mirror.is_some() {
            return Err(Error::Config(format!(
                "bucket {bucket:?} on tier {} is a mirror stream; it must be a writable stream with sources (see docs/architecture.md)",
                self.name
            )));
        }
        let sources = config.sources.get_or_insert_with(Vec::new);
        let already = sources.iter().any(|s| {
            s.name == source.name
                && s.external.as_ref().map(|e| &e.api_prefix)
                    == source.external.as_ref().map(|e| &e.api_prefix)
        });
        if already {
            return Ok(());
        }
        sources.push(source);
        config.allow_rollup = true;
        self.js
            .update_stream(config)
            .await
            .map_err(|e| Error::bucket_op("add stream source", &self.name, bucket, e))?;
        tracing::info!(bucket, tier = %self.name, from = %from.name, "added source to existing bucket");
        Ok(())
    }

    /// Removes the version `info` describes from this tier *without* writing a delete marker
    /// (see the module docs). True when that version is gone from the tier: evicted now, or
    /// overwritten or deleted by a user meanwhile (that newer state is theirs and stays; the
    /// old version's chunks are purged). False when nothing was removed because the object is
    /// still this content in a changed form: its metadata, description or headers were updated
    /// since `info` was read (same nuid, same chunks). Evicting then would leave only copies
    /// with the old metadata; the caller records no eviction and the next pass copies the
    /// updated object again. The chunks are purged only after the meta purge removed the
    /// verified meta, so a metadata update or rename landing between the read and that purge
    /// keeps its chunks. (One that read the meta before the purge and publishes after it is not
    /// seen: async-nats' `update_metadata` publishes without an expected sequence.)
    pub async fn evict(&self, bucket: &str, info: &ObjectInfo) -> Result<bool, Error> {
        // A bucket whose stream is gone fails the meta read below, as its lookup used to.
        let stream = self.stream_handle(bucket).await?;
        let meta = meta_subject(bucket, &info.name);
        let last = match stream.get_last_raw_message_by_subject(&meta).await {
            Ok(message) => message,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                return Ok(true)
            }
            Err(e) => {
                return Err(Error::object_op(
                    "read meta",
                    &self.name,
                    bucket,
                    &info.name,
                    e,
                ));
            }
        };
        let current: ObjectInfo = serde_json::from_slice(&last.payload)
            .map_err(|e| Error::object_op("decode meta", &self.name, bucket, &info.name, e))?;
        if current.nuid == info.nuid && !current.deleted {
            if !same_user_state(&current, info) {
                tracing::info!(bucket, object = %info.name, tier = %self.name, "metadata changed since the copy was verified; keeping the object");
                return Ok(false);
            }
            // Only meta messages up to the one we verified; a newer put survives.
            let purged = stream
                .purge()
                .filter(meta.clone())
                .sequence(last.sequence + 1)
                .await
                .map_err(|e| Error::object_op("purge meta", &self.name, bucket, &info.name, e))?
                .purged;
            if purged == 0 {
                // Gone since we read it: rolled up by a metadata update or a rename, which keep
                // the nuid (so the chunks are someone's again), or by a delete, which purges
                // the chunks itself. The chunks stay; the next pass sees what is there now.
                tracing::info!(bucket, object = %info.name, tier = %self.name, "meta changed while evicting; the chunks stay");
                return Ok(false);
            }
        } else {
            tracing::info!(bucket, object = %info.name, tier = %self.name, "object changed since it was verified; keeping the new version");
        }
        // The chunks of the verified version are ours to drop either way (a newer version has a new nuid).
        self.purge_chunks(bucket, &info.name, &info.nuid).await?;
        Ok(true)
    }

    /// Deletes the version `current` (the object's latest meta, at stream sequence `seq`) as a
    /// user's object-store delete does: a delete marker (the meta with `deleted: true`, size
    /// and chunks zero, rolled up over the version), then the version's chunks purged. Unlike
    /// a plain delete, the marker is published only if `seq` is still the object's latest meta
    /// (`Nats-Expected-Last-Subject-Sequence`): a version written meanwhile is newer and is never
    /// deleted. Returns whether the marker was written (`false`: changed meanwhile, nothing
    /// done). The marker replicates like a user's delete (sourcing carries a leaf's to the
    /// cluster), which the delete path then carries to S3.
    pub async fn delete_version(
        &self,
        bucket: &str,
        current: &ObjectInfo,
        seq: u64,
    ) -> Result<bool, Error> {
        let name = current.name.as_str();
        let marker = ObjectInfo {
            size: 0,
            chunks: 0,
            deleted: true,
            ..current.clone()
        };
        let payload = serde_json::to_vec(&marker)
            .map_err(|e| Error::object_op("encode meta", &self.name, bucket, name, e))?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Rollup", "sub");
        let publish = jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .headers(headers)
            .expected_last_subject_sequence(seq);
        let acked = match self
            .context()
            .send_publish(meta_subject(bucket, name), publish)
            .await
        {
            Ok(ack) => ack.await,
            Err(e) => Err(e),
        };
        match acked {
            Ok(_) => {}
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                return Ok(false)
            }
            Err(e) => {
                return Err(Error::object_op(
                    "publish delete marker",
                    &self.name,
                    bucket,
                    name,
                    e,
                ))
            }
        }
        self.purge_chunks(bucket, name, &current.nuid).await?;
        Ok(true)
    }

    /// Purges the chunks of version `nuid` of an object whose meta is already gone from this
    /// tier. Finishes an eviction interrupted between its two purges (a crash there leaves
    /// unreachable chunks); harmless otherwise, since chunks without meta are never readable.
    pub async fn purge_chunks(&self, bucket: &str, object: &str, nuid: &str) -> Result<(), Error> {
        if nuid.is_empty() {
            return Ok(());
        }
        match self
            .stream_handle(bucket)
            .await?
            .purge()
            .filter(chunk_subject(bucket, nuid))
            .await
        {
            Ok(_) => Ok(()),
            // No stream, no chunks.
            Err(e) if matches!(e.kind(), stream::PurgeErrorKind::JetStream(js) if is_stream_not_found(&js)) => {
                Ok(())
            }
            Err(e) => Err(Error::object_op(
                "purge chunks",
                &self.name,
                bucket,
                object,
                e,
            )),
        }
    }
}

/// Stream configuration of an object-store bucket, as async-nats creates it, optionally with sources.
pub fn bucket_stream_config(
    bucket: &str,
    replicas: usize,
    sources: Option<Vec<stream::Source>>,
) -> stream::Config {
    stream::Config {
        name: stream_name(bucket),
        subjects: vec![format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")],
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        allow_rollup: true,
        allow_direct: true,
        sources,
        ..Default::default()
    }
}

/// Whether the server answered a request naming a stream with "stream not found" (10059).
pub(crate) fn is_stream_not_found(error: &jetstream::Error) -> bool {
    error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
}

/// Whether two metas of one version (same nuid) say the same about it beyond its content: name,
/// description, metadata, headers and options, what `update_metadata` and renames change.
fn same_user_state(a: &ObjectInfo, b: &ObjectInfo) -> bool {
    a.name == b.name
        && a.description == b.description
        && a.metadata == b.metadata
        && a.headers == b.headers
        && a.options == b.options
}

/// True for objects the system moves: not deleted, not links.
pub fn is_live(info: &ObjectInfo) -> bool {
    !info.deleted
        && info
            .options
            .as_ref()
            .and_then(|o| o.link.as_ref())
            .is_none()
}

/// The digest recorded at ingest, parsed.
pub fn ingest_digest(tier: &str, bucket: &str, info: &ObjectInfo) -> Result<Sha256Digest, Error> {
    let text = info.digest.as_deref().ok_or_else(|| IntegrityFailure {
        bucket: bucket.to_string(),
        object: info.name.clone(),
        tier: tier.to_string(),
        what: "sha-256",
        expected: "a digest in the object's meta".into(),
        actual: "none".into(),
    })?;
    let parsed = Sha256Digest::from_nats(text).map_err(|e| IntegrityFailure {
        bucket: bucket.to_string(),
        object: info.name.clone(),
        tier: tier.to_string(),
        what: "sha-256",
        expected: "SHA-256=<base64url>".into(),
        actual: e.value,
    })?;
    Ok(parsed)
}

/// Compares what was read with what was recorded at ingest; on mismatch counts and logs an
/// integrity failure naming the object and returns [`Error::Integrity`].
pub fn check_content(
    tier: &str,
    bucket: &str,
    object: &str,
    expected_size: u64,
    expected: &Sha256Digest,
    size: u64,
    digest: &Sha256Digest,
) -> Result<(), Error> {
    let mismatch = if size != expected_size {
        Some(("size", expected_size.to_string(), size.to_string()))
    } else if digest != expected {
        Some(("sha-256", expected.to_nats(), digest.to_nats()))
    } else {
        None
    };
    let Some((what, expected, actual)) = mismatch else {
        return Ok(());
    };
    crate::metrics::integrity_failure(tier);
    tracing::error!(bucket, object, tier, what, %expected, %actual, "integrity check failed");
    Err(IntegrityFailure {
        bucket: bucket.to_string(),
        object: object.to_string(),
        tier: tier.to_string(),
        what,
        expected,
        actual,
    }
    .into())
}
