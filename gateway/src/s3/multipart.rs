//! Unfinished multipart uploads: listing them and aborting them (per blob, and the start-up
//! sweep of abandoned ones).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::S3Store;
use crate::Error;
impl S3Store {
    /// Aborts every unfinished multipart upload of exactly `key`; returns how many.
    ///
    /// Unfinished uploads are invisible but their parts are stored (and billed) until aborted.
    /// They are left behind when an uploader is killed; [`S3Store::upload_blob`] calls this before
    /// starting a multipart upload so that retrying the work cleans them up.
    pub async fn abort_uploads_for(&self, key: &str) -> Result<usize, Error> {
        let mut aborted = 0;
        for upload in self.list_uploads(key).await? {
            if upload.key != key {
                continue;
            }
            tracing::warn!(key, upload_id = %upload.upload_id, "aborting stale multipart upload");
            if self.abort_upload(key, &upload.upload_id).await? {
                aborted += 1;
            }
        }
        Ok(aborted)
    }

    /// Aborts every unfinished multipart upload under the tier prefix started more than
    /// `older_than` ago; returns how many.
    ///
    /// [`S3Store::upload_blob`] only cleans up after a killed uploader when the same blob is
    /// uploaded again. If that never happens (the object was deleted from NATS before the work
    /// was retried) the parts would stay stored and billed forever; running this at start-up with
    /// an age well above the longest plausible upload removes them. An upload still running in
    /// another process fails at completion if swept, and is retried.
    pub async fn abort_stale_uploads(&self, older_than: Duration) -> Result<usize, Error> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs() as i64;
        let cutoff = now.saturating_sub(older_than.as_secs().min(i64::MAX as u64) as i64);
        let mut aborted = 0;
        for upload in self.list_uploads(&self.prefix).await? {
            // Unknown start time: treat as stale (S3 always sends it; be conservative otherwise).
            if upload.initiated_secs.is_some_and(|t| t > cutoff) {
                continue;
            }
            tracing::warn!(
                key = %upload.key,
                upload_id = %upload.upload_id,
                initiated = upload.initiated_secs,
                "aborting abandoned multipart upload"
            );
            if self.abort_upload(&upload.key, &upload.upload_id).await? {
                aborted += 1;
            }
        }
        Ok(aborted)
    }

    /// Unfinished multipart uploads under the tier prefix, as `(key, upload id)`.
    ///
    /// Should be empty whenever no upload is running: anything listed is an orphan (used by tests
    /// and by operators checking crash-safety).
    pub async fn list_multipart_uploads(&self) -> Result<Vec<(String, String)>, Error> {
        Ok(self
            .list_uploads(&self.prefix)
            .await?
            .into_iter()
            .map(|u| (u.key, u.upload_id))
            .collect())
    }

    /// Unfinished uploads whose key starts with `prefix`: `(key, upload id, initiated)`.
    async fn list_uploads(&self, prefix: &str) -> Result<Vec<PendingUpload>, Error> {
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut upload_id_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_id_marker.take())
                .send()
                .await
                .map_err(|e| Error::s3("list_multipart_uploads", prefix, e))?;
            out.extend(page.uploads().iter().filter_map(|u| {
                Some(PendingUpload {
                    key: u.key()?.to_string(),
                    upload_id: u.upload_id()?.to_string(),
                    initiated_secs: u.initiated().map(|t| t.secs()),
                })
            }));
            if !page.is_truncated().unwrap_or(false) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            upload_id_marker = page.next_upload_id_marker().map(str::to_string);
            if key_marker.is_none() && upload_id_marker.is_none() {
                break; // a truncated page without markers would loop forever
            }
        }
        Ok(out)
    }

    /// Aborts one unfinished upload; `Ok(false)` if it no longer exists.
    pub(super) async fn abort_upload(&self, key: &str, upload_id: &str) -> Result<bool, Error> {
        match self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            // Completed or aborted by someone else meanwhile: nothing left to clean.
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_upload()) => Ok(false),
            Err(e) => Err(Error::s3("abort_multipart_upload", key, e)),
        }
    }
}

/// An unfinished multipart upload, as listed.
struct PendingUpload {
    key: String,
    upload_id: String,
    /// Start time, seconds since the Unix epoch.
    initiated_secs: Option<i64>,
}
