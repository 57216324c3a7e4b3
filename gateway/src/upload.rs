//! The upload role (`cim-gateway upload`): cluster → S3.
//!
//! For each [`WorkItem::Upload`]: stream the object from the cluster's object store through
//! SHA-256 and zstd into a content-addressed blob (multipart above the threshold), verify the
//! blob — by the checksums the service checked on receipt (`verify = "md5" | "crc32c"`), or by
//! reading it back against the ingest digest (`"read-back"`, and any blob found already
//! stored) — write the object's manifests, record the S3 location in the catalog, and only then
//! — for `move` — evict the cluster copy.
//!
//! Every step is idempotent, so a redelivered item (after a crash or SIGKILL) resumes: a blob
//! already complete is reused, a stale multipart upload of the same blob is aborted before a new
//! one starts, and a catalog entry already naming S3 skips straight to eviction.
//!
//! One uploader at a time writes a given blob: the blob's lease ([`cim_tiering::lease`]) is taken
//! before anything is read or written, so two objects with the same content (in one process or
//! several) never undo each other's multipart upload; the second waits, then reuses the blob.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use cim_policies::{Action, S3Verify, Tier};
use cim_tiering::catalog::Version;
use cim_tiering::digest::Sha256Digest;
use cim_tiering::jetstream::{ingest_digest, JetStreamTier, StoredObject};
use cim_tiering::lease::{Lease, Leases, LEASE_POLL};
use cim_tiering::retry::{retry, Backoff};
use cim_tiering::work::{Handler, ObjectDelete, ObjectMove, Progress, Retryable, WorkItem};
use cim_tiering::{metrics, System};
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tracing::Instrument;

use crate::format::{self, Compression, Manifest, Verification, FORMAT_VERSION};
use crate::s3::{BlobUpload, Origin, S3Store, UploadOptions};
use crate::versions::{self, Tombstoned};
use crate::Error;

impl Retryable for Error {
    fn is_transient(&self) -> bool {
        Error::is_transient(self)
    }
}

/// Multipart uploads older than this are leftovers of a dead uploader whose object was never
/// retried (e.g. deleted meanwhile); the upload role aborts them at start-up. Far above the
/// longest plausible upload.
pub const STALE_MULTIPART_AGE: Duration = Duration::from_secs(24 * 3600);

/// How long an upload waits for another uploader's lease on the same blob before giving its
/// work item back to be retried later. A lease lives only while its holder renews it (a dead
/// holder's expires within [`cim_tiering::lease::LEASE_TTL`]), so this bounds how long one
/// handler slot stays occupied, not the correctness of anything.
pub const LEASE_WAIT_LIMIT: Duration = Duration::from_secs(10 * 60);

/// How often an upload whose fresh blob fails its read-back is sent again within one work item
/// before the item fails (and the worker retries it later).
const MAX_FRESH_REUPLOADS: u32 = 2;

/// The lease key of the blob of `digest` on S3 tier `tier` (different tiers are different blobs).
pub fn blob_lease_key(tier: &str, digest: &Sha256Digest) -> String {
    format!("blob.{}.{}", URL_SAFE_NO_PAD.encode(tier), digest.to_hex())
}

/// Connects to every S3 tier of the configuration, keyed by tier name.
pub async fn connect_s3_tiers(system: &System) -> Result<BTreeMap<String, S3Store>, Error> {
    let mut stores = BTreeMap::new();
    for (name, tier) in &system.config.tiers {
        if let Tier::S3(s3) = tier {
            stores.insert(
                name.clone(),
                S3Store::connect(s3).await?.with_tier_name(name.as_str()),
            );
        }
    }
    Ok(stores)
}

/// Aborts multipart uploads left behind longer than [`STALE_MULTIPART_AGE`] on every store.
/// Best effort: a failure is logged, not fatal (the per-blob cleanup still runs on retry).
pub async fn sweep_stale_uploads(stores: &BTreeMap<String, S3Store>) {
    for (name, store) in stores {
        match store.abort_stale_uploads(STALE_MULTIPART_AGE).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tier = %name, aborted = n, "aborted stale multipart uploads"),
            Err(e) => {
                tracing::warn!(tier = %name, error = %e, "could not sweep stale multipart uploads")
            }
        }
    }
}

/// Handles [`WorkItem::Upload`], [`WorkItem::Delete`], [`WorkItem::S3Expire`] and
/// [`WorkItem::DropTemporary`].
pub struct UploadHandler {
    system: Arc<System>,
    stores: BTreeMap<String, S3Store>,
    options: UploadOptions,
    leases: OnceCell<Leases>,
}

impl UploadHandler {
    /// A handler over the role's connections. The lease bucket is opened (created if needed)
    /// on first use.
    pub fn new(system: Arc<System>, stores: BTreeMap<String, S3Store>) -> Self {
        let options = UploadOptions::from(&system.config.upload);
        Self {
            system,
            stores,
            options,
            leases: OnceCell::new(),
        }
    }

    /// The lease bucket, opened on first use.
    async fn leases(&self) -> Result<&Leases, Error> {
        let open = || async {
            // Roles start together and race to create it; the cluster may still be electing.
            retry("open leases", Backoff::STARTUP, || {
                Leases::open(self.system.control(), self.system.config.nats.replicas)
            })
            .await
        };
        Ok(self.leases.get_or_try_init(open).await?)
    }

    /// Takes the lease of the blob of `digest` on `tier`, waiting (up to [`LEASE_WAIT_LIMIT`])
    /// while another uploader holds it. Waiting on a held lease counts as progress: its holder
    /// renews it only while it lives, and the worker abandons a holder that stalls.
    async fn blob_lease(
        &self,
        tier: &str,
        digest: &Sha256Digest,
        job: &ObjectMove,
        progress: &Progress,
    ) -> Result<Lease, Error> {
        let key = blob_lease_key(tier, digest);
        let holder = format!("pid {} {}/{}", std::process::id(), job.bucket, job.name);
        let deadline = Instant::now() + LEASE_WAIT_LIMIT;
        let mut waiting = false;
        loop {
            if let Some(lease) = self.leases().await?.try_acquire(&key, &holder).await? {
                if waiting {
                    tracing::info!(key, "blob lease free; going on");
                }
                return Ok(lease);
            }
            if !waiting {
                let other = self.leases().await?.holder(&key).await?.unwrap_or_default();
                tracing::info!(key, holder = %other, "same content is being uploaded by another worker; waiting for it");
                waiting = true;
            }
            if Instant::now() >= deadline {
                return Err(cim_tiering::Error::Lease {
                    op: "wait",
                    key,
                    source: format!("still held after {LEASE_WAIT_LIMIT:?}").into(),
                }
                .into());
            }
            progress.advance(0);
            tokio::time::sleep(LEASE_POLL).await;
        }
    }

    /// Stores the blob of `digest`, read from `hub`, and verifies it (invariant 1: before
    /// anything depends on it); returns the manifest to commit, which records how it was
    /// verified, and what the upload did.
    ///
    /// A blob just uploaded to a tier with `verify = "md5"` or `"crc32c"` is verified when the
    /// service has confirmed the checksum of every body we sent (see `s3::checksums`): nothing
    /// is read back. A blob uploaded with `verify = "read-back"`, and a blob found already
    /// stored (nothing was sent, so the service checked nothing), is read back whole and checked
    /// against the ingest digest.
    ///
    /// A blob already stored that fails verification (bit rot, tampering: its metadata matches,
    /// its bytes do not) is not reused forever: the failure is counted and logged naming the
    /// object (by [`S3Store::read_verified`]), the blob is uploaded again from the source —
    /// checked against the ingest digest as it is read — and verified again. The new upload
    /// uses the configured zstd level, so with the level unchanged it writes the bytes the blob
    /// had before it went bad, and the manifests of other objects or versions sharing it
    /// (their `stored_size`) stay valid.
    async fn store_verified_blob(
        &self,
        hub: &JetStreamTier,
        store: &S3Store,
        version: &StoredObject,
        digest: &Sha256Digest,
        origin: &Origin<'_>,
        progress: &Progress,
    ) -> Result<(Manifest, BlobUpload), Error> {
        let info = &version.info;
        let mut options = self.options.clone();
        let mut fresh_attempts = 0;
        loop {
            let reader = progress.reader(hub.open(origin.bucket, info));
            let blob = store
                .upload_blob(reader, info.size as u64, digest, origin, &options)
                .await?;
            let mut manifest = manifest_of(origin, version, digest, &blob);
            if manifest.verified.is_some() {
                return Ok((manifest, blob));
            }
            // A read-back holds a decoder: one of the codec slots, like a compressing upload.
            let slot = options.budget.codec().await;
            let read_back = store
                .read_verified(&manifest, &mut progress.writer(tokio::io::sink()))
                .await;
            drop(slot);
            match read_back {
                Ok(_) => {
                    manifest.verified = Some(Verification {
                        mode: S3Verify::ReadBack,
                        checksums: Vec::new(),
                        part_size: None,
                    });
                    return Ok((manifest, blob));
                }
                Err(Error::Integrity { .. }) if blob.reused => {
                    tracing::warn!(key = %blob.key, "stored blob failed verification; uploading it again from the source");
                    options.reuse_existing = false;
                }
                // What we just sent was stored wrong (damaged in transit past a service that
                // checked nothing, or on its disk): upload it again, a few times at most — the
                // read-back failure was counted and logged, and the source is checked again as
                // it is read.
                Err(Error::Integrity { .. }) if fresh_attempts < MAX_FRESH_REUPLOADS => {
                    fresh_attempts += 1;
                    tracing::warn!(key = %blob.key, attempt = fresh_attempts, "blob just uploaded failed its read-back; uploading it again");
                    options.reuse_existing = false;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The source copy failed its digest while being uploaded. Unless it changed meanwhile, no
    /// verified copy of this version is left: S3 had none (else the source would not have been
    /// read) and the source is bad. Marks the version damaged in the catalog, counts and logs it
    /// once, and finishes the item: the manager dispatches no more work for a damaged version.
    async fn source_damaged(
        &self,
        hub: &JetStreamTier,
        job: &ObjectMove,
        version: &StoredObject,
        digest: &Sha256Digest,
        what: &str,
    ) -> Result<(), Error> {
        let (bucket, name) = (job.bucket.as_str(), job.name.as_str());
        let current = hub.info(bucket, name).await?;
        if current.map(|i| i.nuid) != Some(version.info.nuid.clone()) {
            // Overwritten or evicted while we read it: gone, not damaged.
            return Err(cim_tiering::Error::NotReady {
                bucket: bucket.to_string(),
                object: name.to_string(),
                tier: hub.name().to_string(),
                reason: "removed or replaced while being read".into(),
            }
            .into());
        }
        let marked = self
            .system
            .catalog
            .record_damaged(
                bucket,
                name,
                &Version {
                    size: version.info.size as u64,
                    digest: *digest,
                    seq: version.seq,
                },
                hub.name(),
                what,
            )
            .await?;
        if marked.is_none() {
            tracing::info!("a newer version was recorded meanwhile; this one is not marked");
            return Ok(());
        }
        metrics::damaged(hub.name(), bucket, name, what);
        tracing::error!(
            tier = hub.name(),
            what,
            "no verified copy left anywhere: object marked damaged in the catalog; not retried \
             until it is written again"
        );
        Ok(())
    }

    fn store(&self, tier: &str) -> Result<&S3Store, Error> {
        self.stores.get(tier).ok_or_else(|| Error::Config {
            message: format!("no s3 tier named {tier:?}"),
        })
    }

    async fn upload(&self, job: &ObjectMove, progress: &Progress) -> Result<(), Error> {
        let hub = self.system.jetstream_tier(&job.from)?;
        let store = self.store(&job.to)?;
        let catalog = &self.system.catalog;
        let (bucket, name) = (job.bucket.as_str(), job.name.as_str());

        let started = Instant::now();
        let Some(version) = hub.version(bucket, name).await? else {
            // Gone: a user delete, or our own eviction interrupted after its meta purge. Finish
            // that eviction: drop its chunks and make sure the catalog no longer places it here.
            if job.action == Action::Move {
                hub.purge_chunks(bucket, name, &job.nuid).await?;
                catalog
                    .record_eviction(bucket, name, &job.digest, hub.name())
                    .await?;
            }
            // An earlier attempt may have died between its commit and its manifest check.
            versions::publish_current(catalog, store, bucket, name).await?;
            tracing::debug!("object no longer on the cluster; nothing to do");
            return Ok(());
        };
        if version.info.nuid != job.nuid {
            versions::publish_current(catalog, store, bucket, name).await?;
            tracing::info!("object changed since dispatch; the manager will re-evaluate it");
            return Ok(());
        }
        let info = &version.info;
        let digest = ingest_digest(hub.name(), bucket, info)?;
        let size = info.size as u64;

        let entry = catalog.get(bucket, name).await?;
        if entry.as_ref().is_some_and(|e| e.seq > version.seq) {
            tracing::info!("a newer version is already recorded; this one is not uploaded");
            return Ok(());
        }
        if entry.as_ref().is_some_and(|e| e.is_damaged(&digest)) {
            tracing::debug!("version marked damaged; nothing to do until it is written again");
            return Ok(());
        }
        let this = Version {
            size,
            digest,
            seq: version.seq,
        };
        // The content alone is not enough: metadata updated since the last upload (a `copy`,
        // then an update) must reach S3 too, and before a `move` lets the source go. The blob
        // is reused.
        let present = match entry.as_ref().filter(|e| e.has(&job.to, &digest)) {
            Some(e) => store
                .get_manifest(bucket, name)
                .await?
                .is_some_and(|m| m.digest == digest && m.describes(info))
                .then_some(e),
            None => None,
        };

        if let Some(e) = present {
            // The S3 copy already says what this version says (a restore or a repair wrote a
            // newer meta with the same description): recorded as this version's copy, so the
            // manager stops asking for it.
            if !e.has_version(&job.to, &digest, version.seq) {
                let locator = e.locations.get(&job.to).and_then(|l| l.locator.clone());
                catalog
                    .record_copy(bucket, name, &this, &job.to, locator)
                    .await?;
                tracing::debug!("s3 copy already describes this version; recorded as its copy");
            }
        } else {
            // Held until the blob is verified; dropped on error (released in the background).
            let lease = self.blob_lease(&job.to, &digest, job, progress).await?;
            let origin = Origin {
                bucket,
                name,
                tier: hub.name(),
            };
            let (manifest, blob) = match self
                .store_verified_blob(hub, store, &version, &digest, &origin, progress)
                .await
            {
                Ok(stored) => stored,
                Err(Error::Integrity { tier, what, .. }) if tier == hub.name() => {
                    drop(lease);
                    return self
                        .source_damaged(hub, job, &version, &digest, &what)
                        .await;
                }
                Err(e) => return Err(e),
            };
            // History first: whoever later finds this version current can publish it. Written
            // under the blob's lease: garbage collection takes the same lease before removing
            // a blob, so it never removes one that a manifest is about to reference.
            let version_key = store.put_version_manifest(&manifest).await?;
            // Released in the background (dropping it deletes the key): nothing below needs it
            // gone, so the upload does not wait a round trip for it.
            drop(lease);
            // The catalog's compare-and-set decides which version is current: an older version
            // finishing after a newer one was recorded stays history and changes nothing.
            let committed = catalog
                .record_copy(bucket, name, &this, &job.to, Some(version_key))
                .await?;
            if committed.is_none() {
                tracing::info!(
                    "a newer version was recorded while this one uploaded; it stays history"
                );
                return Ok(());
            }
            // A current manifest written by a newer version of this software is left for it:
            // never overwritten by a format this role writes.
            if let Err(e @ Error::UnsupportedFormat { .. }) = store.get_manifest(bucket, name).await
            {
                return Err(e);
            }
            store.put_manifest(&manifest).await?;
            // A newer version may have committed and published while we wrote: never leave
            // this one over it.
            versions::publish_current(catalog, store, bucket, name).await?;
            metrics::transferred(hub.name(), &job.to, size, started.elapsed());
            tracing::info!(
                size,
                stored = blob.stored_size,
                reused = blob.reused,
                "uploaded and verified"
            );
        }

        if job.action == Action::Move {
            // Not before every other transfer of this object has its copy (the manager waits
            // for them too, once this upload is recorded; this is the check at the last step).
            // Asked per object only when another destination covers the bucket at all.
            let policies = &self.system.config.policies;
            if cim_policies::evaluate::any_transfer_elsewhere(policies, &job.from, bucket, &job.to)
            {
                let attributes = cim_tiering::jetstream::scan::Attributes::of(info);
                let object = cim_policies::Object {
                    bucket,
                    name,
                    size,
                    age: Duration::ZERO, // not looked at
                    metadata: Some(&attributes.metadata),
                    headers: Some(&attributes.headers),
                    last_read: None,
                };
                let others = cim_policies::evaluate::transfers_elsewhere(
                    policies, &job.from, &object, &job.to,
                );
                // Read again: the other copies may have landed while this one uploaded.
                let entry = catalog.get(bucket, name).await?;
                let missing = others.iter().find(|other| {
                    !entry
                        .as_ref()
                        .is_some_and(|e| e.has_version(&other.to, &digest, version.seq))
                });
                if let Some(other) = missing {
                    return Err(cim_tiering::Error::NotReady {
                        bucket: bucket.to_string(),
                        object: name.to_string(),
                        tier: hub.name().to_string(),
                        reason: format!(
                            "kept until policy {:?} has a verified copy on tier {:?}: evicting \
                             now would leave that copy nothing to read",
                            other.name, other.to
                        ),
                    }
                    .into());
                }
            }
            if !hub.evict(bucket, info).await? {
                // Changed since read (its metadata): the next pass copies it again as it is.
                return Ok(());
            }
            catalog
                .record_eviction(bucket, name, &digest, hub.name())
                .await?;
            metrics::evicted(hub.name());
            tracing::info!("evicted cluster copy after verified upload");
        }
        Ok(())
    }
}

/// The manifest of `version`, read from `origin`, stored as `blob`.
fn manifest_of(
    origin: &Origin<'_>,
    version: &StoredObject,
    digest: &Sha256Digest,
    blob: &BlobUpload,
) -> Manifest {
    let info = &version.info;
    Manifest {
        format: FORMAT_VERSION,
        bucket: origin.bucket.to_string(),
        name: origin.name.to_string(),
        size: info.size as u64,
        digest: *digest,
        sha256_hex: digest.to_hex(),
        compression: Compression::Zstd,
        stored_size: blob.stored_size,
        blob_key: blob.key.clone(),
        description: info.description.clone(),
        metadata: info.metadata.clone(),
        headers: info.headers.clone(),
        modified: info.modified.and_then(|m| {
            m.format(&time::format_description::well_known::Rfc3339)
                .ok()
        }),
        uploaded_at: format::now_rfc3339(),
        source_tier: origin.tier.to_string(),
        source_nuid: info.nuid.clone(),
        source_seq: version.seq,
        deleted: None,
        verified: blob.verified.clone(),
    }
}

impl UploadHandler {
    /// Carries a user delete to S3 (see [`versions::write_tombstone`]), after dropping the
    /// deleted version's chunks from the tier holding the delete marker: a delete on the leaf
    /// purges the leaf's chunks only, and the hub's copy of them would stay forever.
    async fn delete(&self, job: &ObjectDelete) -> Result<(), Error> {
        let from = self.system.jetstream_tier(&job.from)?;
        let store = self.store(&job.to)?;
        let catalog = &self.system.catalog;
        let (bucket, name) = (job.bucket.as_str(), job.name.as_str());
        let latest = from.latest(bucket, name).await?;
        if latest.as_ref().is_some_and(|l| l.seq > job.seq) {
            versions::publish_current(catalog, store, bucket, name).await?;
            tracing::info!(
                "object written again since the delete; the manager will re-evaluate it"
            );
            return Ok(());
        }
        if latest.is_none_or(|l| l.info.deleted) {
            from.purge_chunks(bucket, name, &job.nuid).await?;
        }
        let by = format!("user delete on {}", job.from);
        match versions::write_tombstone(catalog, store, bucket, name, job.seq, &by).await? {
            Tombstoned::Written => {
                metrics::deleted(&job.to);
                tracing::info!("delete carried to s3: tombstone written");
            }
            outcome => tracing::info!(?outcome, "delete needs nothing more on s3"),
        }
        Ok(())
    }
}

impl Handler for UploadHandler {
    type Error = Error;

    async fn handle(&self, item: WorkItem, progress: Progress) -> Result<(), Error> {
        match &item {
            WorkItem::Upload(job) => {
                let span = tracing::info_span!("upload", size = job.size);
                let result = self.upload(job, &progress).instrument(span).await;
                if let Err(e) = &result {
                    metrics::transfer_failed(&job.from, &job.to, e.reason());
                }
                result
            }
            WorkItem::Delete(job) => {
                let span = tracing::info_span!("delete", seq = job.seq);
                self.delete(job).instrument(span).await
            }
            WorkItem::S3Expire(job) => {
                let span =
                    tracing::info_span!("expire", tier = %job.tier, seq = job.seq, all = job.all);
                crate::expire::expire(&self.system, &self.stores, job)
                    .instrument(span)
                    .await
            }
            // This role evicts from the cluster tiers: expired temporary copies there too.
            WorkItem::DropTemporary(copy) => {
                let span = tracing::info_span!("drop_temporary", tier = %copy.tier);
                Ok(cim_tiering::temporary::remove_expired(&self.system, copy)
                    .instrument(span)
                    .await?)
            }
            other => Err(Error::Config {
                message: format!("{:?} items belong to the mirror role", other.role()),
            }),
        }
    }
}
