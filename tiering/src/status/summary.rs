//! The manager's summary of its last pass, kept in the status bucket so that `cim-storage
//! status` can show, from any host, what each tier holds and how far behind the policies are.
//!
//! The manager records a [`ManagerSummary`] after every pass ([`record_summary`]); its heartbeat
//! task writes it under [`SUMMARY_KEY`] (no TTL: a summary outlives its manager, and says when it
//! was made) whenever it changed. With several managers only the one that plans has passes to
//! summarise, so only it writes.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{deadline, record, status_error, StatusBucket};
use crate::error::Error;

/// The key of the manager's last summary.
pub const SUMMARY_KEY: &str = "summary.manager";

/// What one manager pass saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManagerSummary {
    /// When the pass ended.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The host of the manager that made it.
    pub host: String,
    /// How long the pass took, in seconds.
    pub pass_seconds: f64,
    /// What each tier holds, per bucket: JetStream tiers from the manager's index of the buckets
    /// its policies cover, S3 tiers from the catalog's verified copies.
    pub held: Vec<Held>,
    /// Per policy: what is due and not yet done.
    pub backlog: Vec<PolicyBacklog>,
}

/// Objects and bytes one tier holds of one bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    /// The tier.
    pub tier: String,
    /// The object-store bucket.
    pub bucket: String,
    /// Live objects (deleted ones are not counted).
    pub objects: u64,
    /// Their bytes (content, uncompressed).
    pub bytes: u64,
}

/// What one policy has due and not yet done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyBacklog {
    /// The policy.
    pub policy: String,
    /// Its source tier.
    pub from: String,
    /// Its destination tier.
    pub to: String,
    /// Objects due.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
    /// How long the one due longest has been due, in seconds.
    pub oldest_due_seconds: u64,
}

/// The manager finished a pass that saw `summary`; the heartbeat task writes it.
pub fn record_summary(summary: ManagerSummary) {
    record().summary = Some((summary, false));
}

/// The summary recorded and not written yet, marked as written.
pub(super) fn take_unwritten_summary() -> Option<ManagerSummary> {
    let mut record = record();
    match &mut record.summary {
        Some((summary, written)) if !*written => {
            *written = true;
            Some(summary.clone())
        }
        _ => None,
    }
}

impl StatusBucket {
    /// Writes the manager's summary (replacing the last one).
    pub async fn write_summary(&self, summary: &ManagerSummary) -> Result<(), Error> {
        let payload =
            serde_json::to_vec(summary).map_err(|e| status_error("encode", SUMMARY_KEY, e))?;
        deadline(
            "write",
            SUMMARY_KEY,
            self.kv.put(SUMMARY_KEY, payload.into()),
        )
        .await?;
        Ok(())
    }

    /// The manager's last summary, if a manager ever wrote one.
    pub async fn summary(&self) -> Result<Option<ManagerSummary>, Error> {
        let value = deadline("read", SUMMARY_KEY, self.kv.get(SUMMARY_KEY)).await?;
        match value {
            Some(v) if !v.is_empty() => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|e| status_error("decode", SUMMARY_KEY, e)),
            _ => Ok(None),
        }
    }
}
