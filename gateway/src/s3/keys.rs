//! Plain key listings with their ages, and deletes: what garbage collection needs.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::S3Store;
use crate::Error;

/// One key under a prefix, with when S3 last wrote it (the service's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedKey {
    /// The full key.
    pub key: String,
    /// S3's `LastModified`; the Unix epoch when the service did not say.
    pub modified: SystemTime,
}

impl ListedKey {
    /// How long ago S3 wrote the key, by `now` (zero when S3's clock is ahead of ours).
    pub fn age(&self, now: SystemTime) -> Duration {
        now.duration_since(self.modified).unwrap_or_default()
    }
}

impl S3Store {
    /// Every key under `prefix` (a full key prefix, tier prefix included), paginated.
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<ListedKey>, Error> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| Error::s3("list_objects_v2", prefix, e))?;
            for object in page.contents() {
                let Some(key) = object.key() else { continue };
                let modified = object
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(UNIX_EPOCH);
                keys.push(ListedKey {
                    key: key.to_string(),
                    modified,
                });
            }
        }
        Ok(keys)
    }

    /// The length of the object at `key` (one HeadObject), `None` when it does not exist: how
    /// `reconcile` checks that a manifest's blob is there with its `stored_size`.
    pub async fn object_length(&self, key: &str) -> Result<Option<u64>, Error> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(head) => Ok(Some(head.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(Error::s3("head_object", key, e)),
        }
    }

    /// Deletes `key` (absent is fine: S3 deletes are idempotent).
    pub async fn delete_key(&self, key: &str) -> Result<(), Error> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| Error::s3("delete_object", key, e))?;
        Ok(())
    }
}
