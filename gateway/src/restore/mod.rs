//! Restore (`cim-gateway restore`): S3 → a JetStream tier.
//!
//! Each object is read from S3, decompressed and verified against its manifest's ingest digest
//! into a staging file *before* anything is written to NATS, so a corrupted S3 copy is refused
//! with an error naming the object and never overwrites anything. The verified content is then
//! put into the target bucket under its original name, description, metadata and headers; the
//! object store computes the same digest, which is checked once more and recorded in the catalog.
//!
//! Staging on disk keeps memory bounded whatever the object size (invariant 4).
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

use std::path::PathBuf;
use std::sync::Arc;

use std::fmt;

use async_nats::jetstream::object_store::ObjectMetadata;
use async_nats::jetstream::stream::StorageType;
use cim_tiering::catalog::{Entry, Version};
use cim_tiering::digest::Sha256Digest;
use cim_tiering::jetstream::{check_content, ingest_digest, stream_name, JetStreamTier};
use cim_tiering::{metrics, System};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tracing::Instrument;

use crate::format::{manifest_key, Manifest};
use crate::s3::S3Store;
use crate::Error;

mod room;
use room::{room, stored_size_estimate, StreamUse};

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
    staging_dir: PathBuf,
    overwrite: bool,
    include_deleted: bool,
}

impl Restorer {
    /// A restorer from `store` into the JetStream tier named `target`; creates the staging dir.
    pub fn new(system: Arc<System>, store: S3Store, target: &str) -> Result<Self, Error> {
        let target = system.jetstream_tier(target)?.clone();
        let staging_dir = system
            .config
            .restore
            .staging_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&staging_dir)
            .map_err(|e| Error::io(format!("create staging dir {}", staging_dir.display()), e))?;
        Ok(Self {
            system,
            store,
            target,
            staging_dir,
            overwrite: false,
            include_deleted: false,
        })
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

    /// The S3 store read from.
    pub fn store(&self) -> &S3Store {
        &self.store
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
            Err(e) => return Skip::of(&e).map(Restored::Skipped).ok_or(e),
        };
        self.restore_manifest(&manifest).await
    }

    /// Restores every object of a bucket; one result per object, failures do not stop the rest.
    /// A manifest of a format this version cannot read is skipped ([`Skip::UnsupportedFormat`]).
    pub async fn restore_bucket(
        &self,
        bucket: &str,
    ) -> Result<Vec<(String, Result<Restored, Error>)>, Error> {
        let listed = self.store.scan_manifests(bucket).await?;
        let mut results = Vec::with_capacity(listed.len());
        for entry in listed {
            let outcome = match entry.manifest {
                Ok(manifest) => self.restore_manifest(&manifest).await,
                Err(e) => match Skip::of(&e) {
                    Some(skip) => {
                        tracing::warn!(key = %entry.key, %skip, "skipped");
                        Ok(Restored::Skipped(skip))
                    }
                    None => Err(e),
                },
            };
            results.push((entry.name, outcome));
        }
        Ok(results)
    }

    /// Restores the object a manifest describes.
    pub async fn restore_manifest(&self, manifest: &Manifest) -> Result<Restored, Error> {
        let span = tracing::info_span!("restore", bucket = %manifest.bucket, object = %manifest.name, to = %self.target.name(), size = manifest.size);
        self.restore_inner(manifest).instrument(span).await
    }

    async fn restore_inner(&self, m: &Manifest) -> Result<Restored, Error> {
        let (bucket, name) = (m.bucket.as_str(), m.name.as_str());
        let entry = self.system.catalog.get(bucket, name).await?;
        if !self.include_deleted {
            if let Some(why) = self.deleted(m, entry.as_ref()).await? {
                tracing::info!(why, "deleted; not restored");
                return Ok(Restored::Deleted(why));
            }
        }
        self.check_against_catalog(m, entry.as_ref())?;
        let existing = self.target.info(bucket, name).await?;
        if let Some(existing) = &existing {
            let held = ingest_digest(self.target.name(), bucket, existing)?;
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
        self.check_room(m).await?;

        // 1. S3 → staging file, verified. Nothing in NATS is touched if this fails.
        let staging = tempfile::NamedTempFile::new_in(&self.staging_dir).map_err(|e| {
            Error::io(
                format!("create staging file in {}", self.staging_dir.display()),
                e,
            )
        })?;
        let reopened = staging
            .reopen()
            .map_err(|e| Error::io("reopen staging file", e))?;
        let mut file = tokio::fs::File::from_std(reopened);
        self.store.read_verified(m, &mut file).await?;
        file.flush()
            .await
            .map_err(|e| Error::io("flush staging file", e))?;
        file.rewind()
            .await
            .map_err(|e| Error::io("rewind staging file", e))?;

        // 2. Staging file → target bucket, under the original name and metadata. Staging took a
        //    while: if the target changed meanwhile, the decision above no longer holds.
        let now = self.target.info(bucket, name).await?;
        if now.as_ref().map(|i| &i.nuid) != existing.as_ref().map(|i| &i.nuid) {
            return Err(cim_tiering::Error::NotReady {
                bucket: bucket.to_string(),
                object: name.to_string(),
                tier: self.target.name().to_string(),
                reason: "changed while being restored; run the restore again".into(),
            }
            .into());
        }
        let store = self.target.ensure_bucket(bucket).await?;
        let meta = ObjectMetadata {
            name: name.to_string(),
            description: m.description.clone(),
            chunk_size: None,
            metadata: m.metadata.clone(),
            headers: m.headers.clone(),
        };
        let info = store.put(meta, &mut file).await.map_err(|e| Error::Nats {
            op: "put".into(),
            bucket: bucket.to_string(),
            name: name.to_string(),
            source: Box::new(e),
        })?;
        drop(staging);

        // 3. The object store hashed what it stored; it must be the ingest digest.
        let stored = ingest_digest(self.target.name(), bucket, &info)?;
        check_content(
            self.target.name(),
            bucket,
            name,
            m.size,
            &m.digest,
            info.size as u64,
            &stored,
        )?;
        // The restored version is the newest on the target: record it under its own sequence.
        let written = self.target.version(bucket, name).await?;
        match written.filter(|v| v.info.nuid == info.nuid) {
            Some(version) => {
                self.system
                    .catalog
                    .record_copy(
                        bucket,
                        name,
                        &Version {
                            size: m.size,
                            digest: m.digest,
                            seq: version.seq,
                        },
                        self.target.name(),
                        None,
                    )
                    .await?;
            }
            None => tracing::warn!("replaced on the target right after the restore; not recorded"),
        }
        metrics::restored(self.target.name());
        tracing::info!("restored");
        Ok(Restored::Written)
    }

    /// Why the object `m` describes counts as deleted, if it does: `m` is a tombstone, the
    /// catalog records a delete newer than `m`'s version, or the target's latest meta for it is
    /// a delete marker newer than `m`'s version (sequences compare only on the tier `m` was
    /// uploaded from).
    async fn deleted(&self, m: &Manifest, entry: Option<&Entry>) -> Result<Option<String>, Error> {
        if let Some(d) = &m.deleted {
            return Ok(Some(format!("{} at {}", d.by, d.at)));
        }
        if let Some(e) = entry.filter(|e| e.seq > m.source_seq) {
            if let Some(d) = &e.deleted {
                return Ok(Some(format!("deleted at {} (catalog)", d.at)));
            }
        }
        if m.source_tier == self.target.name() {
            let latest = self.target.latest(&m.bucket, &m.name).await?;
            if let Some(marker) = latest.filter(|l| l.info.deleted && l.seq > m.source_seq) {
                return Ok(Some(format!(
                    "deleted on {} (delete marker at sequence {})",
                    self.target.name(),
                    marker.seq
                )));
            }
        }
        Ok(None)
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

    /// Refuses an object that declares more than the target can still store (see [`room`]).
    async fn check_room(&self, m: &Manifest) -> Result<(), Error> {
        let (bucket, tier) = (m.bucket.as_str(), self.target.name());
        let js = self.target.context();
        let stream = match js.get_stream(stream_name(bucket)).await {
            Ok(mut stream) => Some(
                stream
                    .info()
                    .await
                    .map_err(|e| {
                        cim_tiering::Error::bucket_op("read stream info", tier, bucket, e)
                    })?
                    .clone(),
            ),
            Err(e)
                if matches!(e.kind(), async_nats::jetstream::context::GetStreamErrorKind::JetStream(js)
                    if js.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                None
            }
            Err(e) => {
                return Err(cim_tiering::Error::bucket_op("open bucket", tier, bucket, e).into())
            }
        };
        let account = js
            .query_account()
            .await
            .map_err(|e| cim_tiering::Error::bucket_op("read account info", tier, bucket, e))?;
        let replicas = match &stream {
            Some(info) => info.config.num_replicas,
            None => match self.system.config.tier(tier) {
                Some(cim_policies::Tier::JetStream(t)) => t.replicas,
                _ => 1,
            },
        };
        let target = StreamUse {
            name: stream_name(bucket),
            max_bytes: stream.as_ref().map_or(-1, |i| i.config.max_bytes),
            bytes: stream.as_ref().map_or(0, |i| i.state.bytes),
            memory: stream
                .as_ref()
                .is_some_and(|i| i.config.storage == StorageType::Memory),
            replicas: replicas.max(1),
        };
        let needed = stored_size_estimate(m.size);
        match room(&target, &account) {
            Some((room, limit)) if needed > room => Err(Error::NoRoom {
                bucket: bucket.to_string(),
                name: m.name.clone(),
                tier: tier.to_string(),
                size: m.size,
                room,
                limit,
            }),
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
