//! Manifests: the commit point of an upload, and what listings and restores read.

use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::ByteStream;
use futures::StreamExt;

use super::deadlines::BODY_IDLE_TIMEOUT;
use super::S3Store;
use crate::format::{self, manifest_key, manifest_prefix, Manifest};
use crate::Error;

/// Concurrent manifest fetches when listing a bucket.
const MANIFEST_FETCH_CONCURRENCY: usize = 8;

/// One manifest key found by [`S3Store::scan_manifests`], and what reading it gave.
#[derive(Debug)]
pub struct ListedManifest {
    /// The manifest's S3 key.
    pub key: String,
    /// The object name its key encodes.
    pub name: String,
    /// The manifest, or why it cannot be used.
    pub manifest: Result<Manifest, Error>,
}

impl S3Store {
    /// Writes `m` at [`format::manifest_key`] (one PutObject: all or nothing).
    ///
    /// # Contract
    ///
    /// This is the commit point of an upload: call it only after the blob `m.blob_key` has been
    /// uploaded (and, before another tier drops its copy, verified). A manifest that contradicts
    /// itself (see [`Manifest::from_json`]) is refused rather than written. Overwrites the
    /// previous manifest of the same object.
    pub async fn put_manifest(&self, m: &Manifest) -> Result<(), Error> {
        let key = manifest_key(&self.prefix, &m.bucket, &m.name);
        self.put_manifest_at(&key, m).await
    }

    /// Writes `m` as the history manifest of its version ([`format::version_manifest_key`] of
    /// `m.source_seq`) and returns the key. Written before the version may become current, so
    /// whoever finds the catalog naming this version can always publish it.
    pub async fn put_version_manifest(&self, m: &Manifest) -> Result<String, Error> {
        let key = format::version_manifest_key(&self.prefix, &m.bucket, &m.name, m.source_seq);
        self.put_manifest_at(&key, m).await?;
        Ok(key)
    }

    /// The history manifest at `key` (as [`S3Store::put_version_manifest`] returned it), checked
    /// to describe `bucket`/`name`; `None` if it does not exist.
    pub async fn get_version_manifest(
        &self,
        key: &str,
        bucket: &str,
        name: &str,
    ) -> Result<Option<Manifest>, Error> {
        self.get_manifest_at(key, bucket, name).await
    }

    async fn put_manifest_at(&self, key: &str, m: &Manifest) -> Result<(), Error> {
        let json = m.to_json();
        Manifest::from_json(key, &json)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(json))
            .send()
            .await
            .map_err(|e| Error::s3("put_object", key, e).for_object(&m.bucket, &m.name))?;
        tracing::debug!(key, bucket = %m.bucket, name = %m.name, "manifest written");
        Ok(())
    }

    /// The manifest of `bucket`/`name`, or `None` if the object is not on S3.
    ///
    /// A manifest that does not parse, contradicts itself, or describes another object is an
    /// [`Error::Manifest`] naming its key.
    pub async fn get_manifest(&self, bucket: &str, name: &str) -> Result<Option<Manifest>, Error> {
        let key = manifest_key(&self.prefix, bucket, name);
        self.get_manifest_at(&key, bucket, name)
            .await
            .map_err(|e| e.for_object(bucket, name))
    }

    async fn get_manifest_at(
        &self,
        key: &str,
        bucket: &str,
        name: &str,
    ) -> Result<Option<Manifest>, Error> {
        let response = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => return Ok(None),
            Err(e) => return Err(Error::s3("get_object", key, e)),
        };
        // A manifest is a few KiB: the idle deadline bounds the whole body.
        let bytes = tokio::time::timeout(BODY_IDLE_TIMEOUT, response.body.collect())
            .await
            .map_err(|_| {
                Error::s3_body(
                    "get_object",
                    key,
                    &format!("timed out after {BODY_IDLE_TIMEOUT:?}"),
                )
            })?
            .map_err(|e| Error::s3_body("get_object", key, &DisplayErrorContext(&e)))?
            .into_bytes();
        let manifest = Manifest::from_json(key, &bytes)?;
        if manifest.bucket != bucket || manifest.name != name {
            return Err(Error::Manifest {
                key: key.to_string(),
                source: <serde_json::Error as serde::de::Error>::custom(format!(
                    "describes {:?}/{:?}, but its key is that of {bucket:?}/{name:?}",
                    manifest.bucket, manifest.name
                )),
            });
        }
        Ok(Some(manifest))
    }

    /// Every manifest of NATS bucket `bucket`, sorted by name.
    ///
    /// Strict: the first manifest that cannot be read (invalid, or of a format this version
    /// does not read) is the error. `list` and `restore` use [`S3Store::scan_manifests`], which
    /// reports such manifests one by one instead.
    pub async fn list_manifests(&self, bucket: &str) -> Result<Vec<Manifest>, Error> {
        self.scan_manifests(bucket)
            .await?
            .into_iter()
            .map(|listed| listed.manifest)
            .collect()
    }

    /// Every manifest key of NATS bucket `bucket` with what reading it gave, sorted by name.
    ///
    /// Lists `P objects/<bucket>/` (paginated) and fetches each manifest, a few concurrently.
    /// Keys that are not manifest keys are skipped with a warning; a manifest deleted since it
    /// was listed is left out. A manifest that cannot be read is its own entry's error
    /// ([`Error::Manifest`], or [`Error::UnsupportedFormat`] for a newer format), so one bad or
    /// newer manifest never hides the others; only a failed listing is an error of the whole.
    pub async fn scan_manifests(&self, bucket: &str) -> Result<Vec<ListedManifest>, Error> {
        let list_prefix = manifest_prefix(&self.prefix, Some(bucket));
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&list_prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| Error::s3("list_objects_v2", &list_prefix, e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                match format::decode_manifest_key(&self.prefix, key) {
                    Some((b, name)) if b == bucket => keys.push((key.to_string(), name)),
                    _ => tracing::warn!(key, "skipping key that is not a manifest"),
                }
            }
        }
        let mut listed: Vec<ListedManifest> = futures::stream::iter(keys)
            .map(|(key, name)| async move {
                let manifest = self.get_manifest_at(&key, bucket, &name).await;
                (key, name, manifest)
            })
            .buffered(MANIFEST_FETCH_CONCURRENCY)
            .filter_map(|(key, name, manifest)| async move {
                let manifest = manifest.transpose()?; // None: deleted since listed
                Some(ListedManifest {
                    key,
                    name,
                    manifest,
                })
            })
            .collect()
            .await;
        listed.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(listed)
    }

    /// The NATS buckets that have at least one manifest, sorted.
    pub async fn list_buckets(&self) -> Result<Vec<String>, Error> {
        let list_prefix = manifest_prefix(&self.prefix, None);
        let mut buckets = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(&list_prefix)
            .delimiter("/")
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| Error::s3("list_objects_v2", &list_prefix, e))?;
            buckets.extend(page.common_prefixes().iter().filter_map(|p| {
                let bucket = p.prefix()?.strip_prefix(&list_prefix)?.strip_suffix('/')?;
                (!bucket.is_empty()).then(|| bucket.to_string())
            }));
        }
        buckets.sort();
        buckets.dedup();
        Ok(buckets)
    }
}
