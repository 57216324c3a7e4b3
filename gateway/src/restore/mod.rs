//! Restore (`cim-gateway restore`): S3 → a JetStream tier.
//!
//! Each object streams from S3 through the zstd decoder and SHA-256 (the S3 read's checks:
//! stored size, declared size, digest) into chunk publishes on the target
//! ([`cim_tiering::jetstream::write`]); its meta — what makes it visible — is published only once
//! the content hashed to the manifest's digest and every chunk was acknowledged. A corrupted S3
//! copy is refused with an error naming the object, its chunks are purged, and it never replaces
//! anything. The restored version is recorded in the catalog under its meta's sequence.
//!
//! Nothing is staged on disk; memory is bounded per object in flight (the chunk ack window, the
//! zstd window, a small pipe) and by `[restore] concurrency` objects at once. Writes are
//! journaled before their first chunk, so a restore killed mid-object leaves no visible object
//! and [`Restorer::recover`] (run first by every restore) purges its chunks once its writer's
//! lease has expired.
//!
//! # Layout
//!
//! * this file — [`Restorer`]: the decisions (deleted? present? newer version? catalog
//!   disagrees?), the per-object pipeline, a selection (`--all`, `--prefix`, `--match`) as a
//!   concurrent pipeline over the listing, and the dry run that stops after the decisions.
//! * `select.rs` — [`Selection`]: which names a run takes (prefix, rclone-style globs).
//! * `target.rs` — what is looked up once per target bucket, and the room reservation.
//! * `room.rs` — how much a target stream can still store (pure).
//!
//! # Dry run
//!
//! [`Restorer::dry_run`] makes every decision a restore makes — deleted, present, another
//! version held, replaceable, catalog agreement, room (reserved across the run as if written) —
//! from the manifests, the catalog and the target's metas, and stops there: it reports
//! [`Restored::WouldRestore`] and writes nothing (no journal record, no writer lease, no bucket
//! created, no catalog update, no chunk). It does not read the blobs, so a damaged blob shows
//! only in a real run (or in `scrub`).
//!
//! # Temporary copies
//!
//! With [`Restorer::temporary`] (`--for 7d`) each version written carries the header
//! [`cim_tiering::temporary::HEADER`] in its meta: no policy acts on it until the time is up,
//! and then the storage manager has it evicted from the target (see [`cim_tiering::temporary`]).
//! An object the target already holds is left as it is (`present`): a permanent copy does not
//! become temporary, nor is a temporary one extended.
//!
//! # Restore never replaces a newer version
//!
//! The S3 copy of an object may be older than the version the target holds: v1 archived, the
//! uploader stopped, v2 written and moved up to the cluster. Restoring v1 over v2 would lose v2 if
//! the cluster held its only copy. So an object whose target holds a *different* version is
//! skipped ([`Restored::Skipped`]) unless [`Restorer::overwrite`] is set, and even then it is
//! replaced only when the catalog records a verified copy of exactly that version on another
//! tier; otherwise [`Error::WouldLoseVersion`] refuses it, naming the object.
//!
//! # Restore never resurrects
//!
//! A deleted object stays deleted: a tombstone manifest, a catalog entry recording a delete
//! newer than the manifest, or a delete marker on the target newer than the manifest's version
//! makes the object [`Restored::Deleted`] — reported, nothing written. [`Restorer::include_deleted`]
//! (`--include-deleted`) restores the last version the S3 tier held before the delete instead,
//! while its blob is still kept (see `docs/s3-format.md`, retention).
//!
//! # Manifests are untrusted input
//!
//! Before anything is read or written: a manifest whose digest disagrees with the catalog's
//! record of the copy on that S3 tier is refused ([`Error::CatalogDisagrees`]); an object that
//! declares more bytes than the target can still store — the stream's `max_bytes` and the
//! account's JetStream storage limits, whichever is tightest — is refused ([`Error::NoRoom`]), so
//! a decompression bomb fills nothing. The S3 read itself checks the blob's length against the
//! manifest's `stored_size` and never passes on more than the declared size.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use async_nats::jetstream::object_store::ObjectMetadata;
use cim_tiering::catalog::{Entry, Version};
use cim_tiering::digest::Sha256Digest;
use cim_tiering::jetstream::write::{Recovered, WriteJournal, ACK_WINDOW, CHUNK_SIZE};
use cim_tiering::jetstream::{ingest_digest, is_live, JetStreamTier, StoredObject};
use cim_tiering::lease::Leases;
use cim_tiering::metrics::{self, RestoreOutcome};
use cim_tiering::progress::Progress;
use cim_tiering::retry::{retry, Backoff};
use cim_tiering::System;
use futures::StreamExt;
use tracing::Instrument;

use crate::format::{decode_manifest_key, manifest_key, manifest_key_prefix, Manifest};
use crate::s3::{MemoryBudget, S3Store};
use crate::Error;

mod room;
mod select;
mod target;
pub use select::{globs, Selection};
use target::TargetBucket;

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// Written into the target tier.
    Written,
    /// The target already held this exact version.
    AlreadyPresent,
    /// Left as it is, nothing written; the operator should look (see [`Skip`]).
    Skipped(Skip),
    /// Deleted by a user: not restored (see the module docs); says when and by whom, if known.
    Deleted(String),
    /// A dry run ([`Restorer::dry_run`]): it would be written; nothing was.
    WouldRestore,
}

/// Why an object was not restored although nothing failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Skip {
    /// The target holds another version than the S3 copy; it is kept (`--overwrite` replaces it
    /// when another tier holds a verified copy of it).
    TargetHoldsOtherVersion {
        /// The target tier.
        tier: String,
        /// Ingest digest of the version the target holds.
        held: Sha256Digest,
        /// Digest of the S3 copy.
        s3: Sha256Digest,
    },
    /// The manifest has a format this version cannot read; left for a newer version.
    UnsupportedFormat {
        /// The manifest's key.
        key: String,
        /// The format it declares.
        format: u64,
    },
}

impl Skip {
    /// The skip a manifest read error stands for, if it is one ([`Error::UnsupportedFormat`]).
    fn of(error: &Error) -> Option<Skip> {
        match error {
            Error::UnsupportedFormat { key, format } => Some(Skip::UnsupportedFormat {
                key: key.clone(),
                format: *format,
            }),
            _ => None,
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::TargetHoldsOtherVersion { tier, held, s3 } => write!(
                f,
                "tier {tier} holds another version ({held}) than s3 ({s3}); kept it \
                 (--overwrite replaces it if another tier holds a verified copy)"
            ),
            Skip::UnsupportedFormat { key, format } => write!(
                f,
                "manifest {key} has format {format}, which this version cannot read (it reads \
                 {}..={}); left for a newer cim-gateway",
                crate::format::READABLE_FORMATS.start(),
                crate::format::READABLE_FORMATS.end()
            ),
        }
    }
}

/// Restores objects from one S3 tier into one JetStream tier.
pub struct Restorer {
    system: Arc<System>,
    store: S3Store,
    target: JetStreamTier,
    /// `None` in a dry run, which writes nothing (not even its writer lease).
    journal: Option<WriteJournal>,
    overwrite: bool,
    include_deleted: bool,
    concurrency: usize,
    /// [`MEMORY_BUDGET`]; each object in flight holds [`in_flight_cost`] of it.
    memory: MemoryBudget,
    /// What does not change per object, looked up once per bucket (see [`TargetBucket`]).
    buckets: tokio::sync::Mutex<HashMap<String, Arc<TargetBucket>>>,
    /// Content bytes restored so far (decompressed, verified as they go), for progress displays.
    progress: Progress,
    /// `--for`: each restored version is a temporary copy for this long (see "Temporary
    /// copies" in the module docs).
    temporary: Option<std::time::Duration>,
}

/// Bytes the pipe between the S3 read and the chunk publisher holds: two chunks, so the reader
/// decompresses the next chunk while the previous one is published.
const PIPE_BUF: usize = 2 * 128 * 1024;

/// Memory the objects in flight may hold together, whatever `[restore] concurrency` says: many
/// small objects fly at once (each costs a few hundred KiB), large ones a few at a time.
pub const MEMORY_BUDGET: u64 = 64 << 20;

/// What one object in flight may hold at most: its unacknowledged chunks (up to the ack window),
/// the zstd decoder's window (at most 8 MiB for blobs written at level ≤ 19; never more than the
/// content), the pipe, the S3 read buffer and one chunk being filled.
fn in_flight_cost(size: u64) -> u64 {
    let window = (ACK_WINDOW * CHUNK_SIZE) as u64;
    let overhead = (PIPE_BUF + 64 * 1024 + CHUNK_SIZE) as u64;
    (size.min(window) + size.min(8 << 20) + overhead).min(MEMORY_BUDGET)
}

impl Restorer {
    /// A restorer from `store` into the JetStream tier named `target`. Opens the write journal
    /// (and this process's writer lease); call [`Restorer::recover`] to clean up after restores
    /// that were killed.
    pub async fn new(system: Arc<System>, store: S3Store, target: &str) -> Result<Self, Error> {
        let mut restorer = Self::dry_run(system, store, target)?;
        let system = &restorer.system;
        if let Some(dir) = &system.config.restore.staging_dir {
            tracing::warn!(
                staging_dir = %dir.display(),
                "[restore] staging_dir is deprecated and ignored: restore streams from s3 into \
                 nats without staging on disk"
            );
        }
        // Retried like a role's start: a cluster still forming (or slow to answer) is waited for.
        let replicas = system.config.nats.replicas;
        let leases = retry("open leases", Backoff::STARTUP, || {
            Leases::open(system.control(), replicas)
        })
        .await?;
        let holder = format!("cim-gateway restore (pid {})", std::process::id());
        let journal = retry("open write journal", Backoff::STARTUP, || {
            WriteJournal::open(system.control(), replicas, leases.clone(), &holder)
        })
        .await?;
        restorer.journal = Some(journal);
        Ok(restorer)
    }

    /// A restorer that only decides (see "Dry run" in the module docs): every object it would
    /// write is reported [`Restored::WouldRestore`]; it writes nothing anywhere.
    pub fn dry_run(system: Arc<System>, store: S3Store, target: &str) -> Result<Self, Error> {
        let target = system.jetstream_tier(target)?.clone();
        let concurrency = system.config.restore.concurrency.max(1);
        Ok(Self {
            system,
            store,
            target,
            journal: None,
            overwrite: false,
            include_deleted: false,
            concurrency,
            memory: MemoryBudget::new(MEMORY_BUDGET),
            buckets: Default::default(),
            progress: Progress::new(),
            temporary: None,
        })
    }

    /// Whether this is a dry run ([`Restorer::dry_run`]).
    pub fn is_dry_run(&self) -> bool {
        self.journal.is_none()
    }

    /// Counts the content bytes restored into `progress` as they are published (see
    /// [`Progress::bytes`]), for a progress display.
    pub fn progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// Whether a target version different from the S3 copy may be replaced (`--overwrite`);
    /// even then only when another tier holds a verified copy of it (see the module docs).
    pub fn overwrite(mut self, overwrite: bool) -> Self {
        self.overwrite = overwrite;
        self
    }

    /// Whether deleted objects are restored too (`--include-deleted`): the last version the S3
    /// tier held before the delete, while its blob is kept.
    pub fn include_deleted(mut self, include_deleted: bool) -> Self {
        self.include_deleted = include_deleted;
        self
    }

    /// Makes every version this restorer writes a temporary copy for `duration` (`--for`): its
    /// meta carries [`cim_tiering::temporary::HEADER`], no policy acts on it, and the storage
    /// manager has it evicted when the time is up. Without it, a restored version is an
    /// ordinary one (a mark the S3 copy might carry is dropped).
    pub fn temporary(mut self, duration: Option<std::time::Duration>) -> Self {
        self.temporary = duration;
        self
    }

    /// Objects restored at once by [`Restorer::restore_bucket`] (default `[restore]
    /// concurrency`; at least 1).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// The S3 store read from.
    pub fn store(&self) -> &S3Store {
        &self.store
    }

    /// Cleans up after restores that were killed: purges the chunks their journal records name
    /// when their writer is dead (see `cim_tiering::jetstream::write`); restores running in
    /// other processes are left alone.
    /// A dry run recovers nothing.
    pub async fn recover(&self) -> Result<Recovered, Error> {
        let Some(journal) = &self.journal else {
            return Ok(Recovered::default());
        };
        let system = self.system.clone();
        Ok(journal
            .recover(|tier| system.jetstream_tier(tier).ok().cloned())
            .await?)
    }

    /// Releases this process's writer lease at once (it would expire by itself otherwise).
    pub async fn close(self) {
        if let Some(journal) = self.journal {
            journal.close().await;
        }
    }

    /// Restores one object by bucket and name.
    pub async fn restore(&self, bucket: &str, name: &str) -> Result<Restored, Error> {
        let manifest = match self.store.get_manifest(bucket, name).await {
            Ok(Some(manifest)) => manifest,
            Ok(None) => {
                return Err(Error::NotInS3 {
                    bucket: bucket.to_string(),
                    name: name.to_string(),
                    tier: self.store.tier_name().to_string(),
                })
            }
            Err(e) => {
                let outcome = Skip::of(&e).map(Restored::Skipped).ok_or(e);
                self.count(&outcome);
                return outcome;
            }
        };
        let outcome = self.restore_manifest(&manifest).await;
        self.count(&outcome);
        outcome
    }

    /// Counts an outcome in `cim_restore_objects_total`, except a restore just written: that
    /// one is counted where it is written, with its bytes.
    /// A dry run counts nothing.
    fn count(&self, outcome: &Result<Restored, Error>) {
        if self.is_dry_run() {
            return;
        }
        let counted = match outcome {
            Ok(Restored::Written | Restored::WouldRestore) => return,
            Ok(Restored::AlreadyPresent) => RestoreOutcome::Restored,
            Ok(Restored::Skipped(_) | Restored::Deleted(_)) => RestoreOutcome::Skipped,
            Err(_) => RestoreOutcome::Failed,
        };
        metrics::restored(self.target.name(), counted, 0);
    }

    /// Restores every object of a bucket (see [`Restorer::restore_names`]); returns how many
    /// objects were reported.
    pub async fn restore_bucket(
        &self,
        bucket: &str,
        report: impl FnMut(&str, Result<Restored, Error>),
    ) -> Result<usize, Error> {
        let names = self.select(bucket, &Selection::all()).await?;
        Ok(self.restore_names(bucket, names, report).await)
    }

    /// The names of the objects of `bucket` the S3 tier holds a manifest for (tombstones
    /// included: restoring decides about them) that `selection` takes, in key order.
    ///
    /// The listing is narrowed to the selection's prefix where the key layout allows it (see
    /// [`manifest_key_prefix`]); keys that are not manifests are logged and left out.
    pub async fn select(&self, bucket: &str, selection: &Selection) -> Result<Vec<String>, Error> {
        let prefix = manifest_key_prefix(self.store.prefix(), bucket, selection.prefix());
        let keys = self.store.list_keys(&prefix).await?;
        Ok(keys
            .into_iter()
            .filter_map(
                |listed| match decode_manifest_key(self.store.prefix(), &listed.key) {
                    Some((b, name)) if b == bucket => Some(name),
                    _ => {
                        tracing::warn!(key = %listed.key, "skipping key that is not a manifest");
                        None
                    }
                },
            )
            .filter(|name| selection.matches(name))
            .collect())
    }

    /// Restores the objects `names` of `bucket`, [`Restorer::concurrency`] at a time, calling
    /// `report` with each object's outcome as it finishes; failures do not stop the rest.
    /// Returns how many objects were reported.
    ///
    /// A pipeline: each object's manifest is fetched and the object restored by the same task,
    /// so restoring starts with the first manifest, not after the last. A manifest of a format
    /// this version cannot read is skipped ([`Skip::UnsupportedFormat`]); one deleted since the
    /// listing is left out.
    pub async fn restore_names(
        &self,
        bucket: &str,
        names: Vec<String>,
        mut report: impl FnMut(&str, Result<Restored, Error>),
    ) -> usize {
        let mut outcomes = futures::stream::iter(names)
            .map(|name| async move {
                let outcome = match self.store.get_manifest(bucket, &name).await {
                    Ok(Some(manifest)) => Some(self.restore_manifest(&manifest).await),
                    Ok(None) => None, // deleted since listed
                    Err(e) => Some(match Skip::of(&e) {
                        Some(skip) => {
                            tracing::warn!(bucket, name, %skip, "skipped");
                            Ok(Restored::Skipped(skip))
                        }
                        None => Err(e),
                    }),
                };
                (name, outcome)
            })
            .buffer_unordered(self.concurrency);
        let mut reported = 0;
        while let Some((name, outcome)) = outcomes.next().await {
            if let Some(outcome) = outcome {
                self.count(&outcome);
                report(&name, outcome);
                reported += 1;
            }
        }
        reported
    }

    /// Restores the object a manifest describes.
    pub async fn restore_manifest(&self, manifest: &Manifest) -> Result<Restored, Error> {
        let span = tracing::info_span!("restore", bucket = %manifest.bucket, object = %manifest.name, from_tier = %self.store.tier_name(), to_tier = %self.target.name(), size = manifest.size);
        self.restore_inner(manifest).instrument(span).await
    }

    /// The target bucket's per-bucket state, looked up on first use.
    async fn target_bucket(&self, bucket: &str) -> Result<Arc<TargetBucket>, Error> {
        let mut buckets = self.buckets.lock().await;
        if let Some(found) = buckets.get(bucket) {
            return Ok(found.clone());
        }
        let opened = Arc::new(TargetBucket::open(&self.system, &self.target, bucket).await?);
        buckets.insert(bucket.to_string(), opened.clone());
        Ok(opened)
    }

    async fn restore_inner(&self, m: &Manifest) -> Result<Restored, Error> {
        let (bucket, name) = (m.bucket.as_str(), m.name.as_str());
        let entry = self.system.catalog.get(bucket, name).await?;
        let target = self.target_bucket(bucket).await?;
        // The object's latest meta on the target, live or a delete marker: what this restore
        // decides on, and what its commit requires to be unchanged.
        let latest = target.latest(name).await?;
        if !self.include_deleted {
            if let Some(why) = self.deleted(m, entry.as_ref(), latest.as_ref()) {
                tracing::info!(why, "deleted; not restored");
                return Ok(Restored::Deleted(why));
            }
        }
        self.check_against_catalog(m, entry.as_ref())?;
        let existing = latest.as_ref().filter(|l| is_live(&l.info));
        if let Some(existing) = existing {
            let held = ingest_digest(self.target.name(), bucket, &existing.info)?;
            if held == m.digest {
                tracing::info!("already present with the same digest");
                return Ok(Restored::AlreadyPresent);
            }
            if !self.overwrite {
                let skip = Skip::TargetHoldsOtherVersion {
                    tier: self.target.name().to_string(),
                    held,
                    s3: m.digest,
                };
                tracing::warn!(%skip, "skipped");
                return Ok(Restored::Skipped(skip));
            }
            self.check_replaceable(bucket, name, &held, entry.as_ref())?;
        }
        let reservation = target.reserve(m)?;
        let Some(journal) = &self.journal else {
            // A dry run: the room stays reserved, as the write would fill it.
            reservation.keep();
            tracing::info!("would restore (dry run)");
            return Ok(Restored::WouldRestore);
        };
        let _memory = self.memory.charge(in_flight_cost(m.size)).await;

        // S3 → decompress → verify, piped into chunk publishes; the meta (visibility) only once
        // the content hashed to the manifest's digest and every chunk was acknowledged. One
        // SHA-256 pass: the S3 reader hashes exactly the bytes it writes into the pipe and checks
        // them against the manifest, so the publisher only counts them; the commit checks that
        // digest and the size published.
        let writer = target.writer().await?;
        let mut write = writer
            .begin(journal, name, latest.as_ref().map_or(0, |l| l.seq))
            .await?;
        let (pipe_in, mut pipe_out) = tokio::io::duplex(PIPE_BUF);
        let mut pipe_in = self.progress.writer(pipe_in);
        // Both sides run to their end (no early return on the first error): each drops its end
        // of the pipe when done, so the other finishes too, and no chunk publish is still in
        // flight when a failed write purges its chunks.
        let read = async move {
            let read = self.store.read_verified(m, &mut pipe_in).await;
            drop(pipe_in); // EOF for the publisher, whatever the outcome
            read
        };
        let publishing = &mut write;
        let publish = async move {
            let written = publishing.write_unhashed(&mut pipe_out, m.size).await;
            drop(pipe_out); // a failed publisher stops the reader (broken pipe)
            written
        };
        let (read, published) = tokio::join!(read, publish);
        if let Err(e) = read.and(published.map_err(Error::from)) {
            write.abort(journal).await;
            return Err(e);
        }
        // `read_verified` returned `Ok`: what it wrote hashed to the manifest's digest.
        write.hashed_by_reader(m.digest);
        let meta = ObjectMetadata {
            name: name.to_string(),
            description: m.description.clone(),
            chunk_size: None,
            metadata: m.metadata.clone(),
            headers: self.headers(m),
        };
        let committed = write
            .commit(journal, meta, m.size, &m.digest, existing.map(|e| &e.info))
            .await?;
        reservation.keep();

        // The restored version is the newest on the target: record it under its own sequence.
        self.system
            .catalog
            .record_copy(
                bucket,
                name,
                &Version {
                    size: m.size,
                    digest: m.digest,
                    seq: committed.seq,
                },
                self.target.name(),
                None,
            )
            .await?;
        metrics::restored(self.target.name(), RestoreOutcome::Restored, m.size);
        tracing::info!(nuid = %committed.info.nuid, "restored");
        Ok(Restored::Written)
    }

    /// The headers of the restored meta: the manifest's, with the temporary mark set for
    /// `--for` and removed otherwise (so only this restore decides whether the copy is temporary).
    fn headers(&self, m: &Manifest) -> Option<async_nats::HeaderMap> {
        use cim_tiering::temporary::{header_value, HEADER};
        let mut headers = async_nats::HeaderMap::new();
        for (name, values) in m.headers.iter().flat_map(|h| h.iter()) {
            if AsRef::<str>::as_ref(name) != HEADER {
                for value in values {
                    headers.append(name.clone(), value.clone());
                }
            }
        }
        if let Some(duration) = self.temporary {
            headers.insert(HEADER, header_value(duration));
        }
        (!headers.is_empty()).then_some(headers)
    }

    /// Why the object `m` describes counts as deleted, if it does: `m` is a tombstone, the
    /// catalog records a delete newer than `m`'s version, or the target's latest meta for it
    /// (`latest`) is a delete marker newer than `m`'s version (sequences compare only on the tier
    /// `m` was uploaded from).
    fn deleted(
        &self,
        m: &Manifest,
        entry: Option<&Entry>,
        latest: Option<&StoredObject>,
    ) -> Option<String> {
        if let Some(d) = &m.deleted {
            return Some(format!("{} at {}", d.by, d.at));
        }
        if let Some(e) = entry.filter(|e| e.seq > m.source_seq) {
            if let Some(d) = &e.deleted {
                return Some(format!("deleted at {} (catalog)", d.at));
            }
        }
        if m.source_tier == self.target.name() {
            if let Some(marker) = latest.filter(|l| l.info.deleted && l.seq > m.source_seq) {
                return Some(format!(
                    "deleted on {} (delete marker at sequence {})",
                    self.target.name(),
                    marker.seq
                ));
            }
        }
        None
    }

    /// Refuses a manifest whose digest is not the one the catalog records as verified on this
    /// S3 tier. Where the catalog does not place the object on this tier (never uploaded by this
    /// system, or the catalog was lost) there is nothing to compare with.
    fn check_against_catalog(&self, m: &Manifest, entry: Option<&Entry>) -> Result<(), Error> {
        let tier = self.store.tier_name();
        match entry {
            Some(e) if e.locations.contains_key(tier) && e.digest != m.digest => {
                Err(Error::CatalogDisagrees {
                    key: manifest_key(self.store.prefix(), &m.bucket, &m.name),
                    bucket: m.bucket.clone(),
                    name: m.name.clone(),
                    tier: tier.to_string(),
                    manifest: m.digest.to_nats(),
                    catalog: e.digest.to_nats(),
                })
            }
            _ => Ok(()),
        }
    }

    /// Refuses to replace the target's version `held` unless the catalog records a verified copy
    /// of exactly that version on another tier (so `--overwrite` can never lose a version).
    fn check_replaceable(
        &self,
        bucket: &str,
        name: &str,
        held: &Sha256Digest,
        entry: Option<&Entry>,
    ) -> Result<(), Error> {
        let elsewhere = entry.and_then(|e| {
            (&e.digest == held)
                .then(|| e.locations.keys().find(|t| *t != self.target.name()))
                .flatten()
        });
        match elsewhere {
            Some(tier) => {
                tracing::info!(held = %held, verified_on = %tier, "overwriting: the target's version is verified elsewhere");
                Ok(())
            }
            None => Err(Error::WouldLoseVersion {
                bucket: bucket.to_string(),
                name: name.to_string(),
                tier: self.target.name().to_string(),
                digest: held.to_nats(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_objects_cost_little_and_nothing_exceeds_the_budget() {
        let small = in_flight_cost(4096);
        assert!(small < 512 * 1024, "{small}");
        assert!(
            MEMORY_BUDGET / small >= 128,
            "128 small objects must fit at once"
        );
        let large = in_flight_cost(256 << 20);
        assert!(((12 << 20)..=(13 << 20)).contains(&large), "{large}");
        assert!(in_flight_cost(u64::MAX) <= MEMORY_BUDGET);
    }
}
