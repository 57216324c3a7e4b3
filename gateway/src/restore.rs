//! Restore (`cim-gateway restore`): S3 → a JetStream tier.
//!
//! Each object is read from S3, decompressed and verified against its manifest's ingest digest
//! into a staging file *before* anything is written to NATS, so a corrupted S3 copy is refused
//! with an error naming the object and never overwrites anything. The verified content is then
//! put into the target bucket under its original name, description, metadata and headers; the
//! object store computes the same digest, which is checked once more and recorded in the catalog.
//!
//! Staging on disk keeps memory bounded whatever the object size (invariant 4).

use std::path::PathBuf;
use std::sync::Arc;

use async_nats::jetstream::object_store::ObjectMetadata;
use cim_tiering::catalog::Version;
use cim_tiering::jetstream::{check_content, ingest_digest, JetStreamTier};
use cim_tiering::{metrics, System};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};
use tracing::Instrument;

use crate::format::Manifest;
use crate::s3::S3Store;
use crate::Error;

/// What happened to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restored {
    /// Written into the target tier.
    Written,
    /// The target already held this exact version.
    AlreadyPresent,
}

/// Restores objects from one S3 tier into one JetStream tier.
pub struct Restorer {
    system: Arc<System>,
    store: S3Store,
    target: JetStreamTier,
    staging_dir: PathBuf,
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
        })
    }

    /// The S3 store read from.
    pub fn store(&self) -> &S3Store {
        &self.store
    }

    /// Restores one object by bucket and name.
    pub async fn restore(&self, bucket: &str, name: &str) -> Result<Restored, Error> {
        let manifest = self
            .store
            .get_manifest(bucket, name)
            .await?
            .ok_or_else(|| Error::Config {
                message: format!("no object {name:?} in bucket {bucket:?} on s3"),
            })?;
        self.restore_manifest(&manifest).await
    }

    /// Restores every object of a bucket; one result per object, failures do not stop the rest.
    pub async fn restore_bucket(
        &self,
        bucket: &str,
    ) -> Result<Vec<(String, Result<Restored, Error>)>, Error> {
        let manifests = self.store.list_manifests(bucket).await?;
        let mut results = Vec::with_capacity(manifests.len());
        for manifest in manifests {
            let outcome = self.restore_manifest(&manifest).await;
            results.push((manifest.name.clone(), outcome));
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
        if let Some(existing) = self.target.info(bucket, name).await? {
            if ingest_digest(self.target.name(), bucket, &existing)? == m.digest {
                tracing::info!("already present with the same digest");
                return Ok(Restored::AlreadyPresent);
            }
        }

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

        // 2. Staging file → target bucket, under the original name and metadata.
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
}
