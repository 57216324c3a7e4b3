//! Scrubbing an S3 tier (`cim-gateway scrub`): read back what S3 stores and prove it is still
//! what was uploaded.
//!
//! For every current manifest of the tier (or a random sample of them), the blob it names is
//! read in full with [`S3Store::read_verified`]: its length against the manifest's
//! `stored_size`, a zstd decode, and size and SHA-256 of the content against the manifest's
//! digest — the ingest digest the upload checked the copy against. So a scrub proves, for each
//! object it checks, that S3 can still deliver the exact bytes ingested; it catches blobs
//! damaged or replaced after they were verified (bit rot, tampering, a bad repair by hand), and
//! blobs that disappeared.
//!
//! A scrub only reads. A bad copy is reported (an error log line naming bucket, name and key, and
//! `cim_integrity_failures_total{tier}`), never changed: repair needs a verified source, which is
//! the upload role's job (it uploads a bad blob again from the source copy the next time that
//! content is uploaded), and meanwhile `cim-gateway restore` refuses the bad copy.
//!
//! Each blob is read once per scrub, however many manifests name it (identical content is stored
//! once), and a few are read at a time; memory does not depend on object sizes.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use futures::StreamExt;
use rand::seq::SliceRandom;

use crate::format::Manifest;
use crate::s3::S3Store;
use crate::Error;

/// Blobs read at the same time.
const CONCURRENCY: usize = 4;

/// Which of the objects a scrub checks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sample {
    /// Every object.
    All,
    /// This share of the objects (above 0, at most 1), rounded up, chosen at random.
    Fraction(f64),
    /// This many objects (at least 1; all of them if there are fewer), chosen at random.
    Count(usize),
}

impl FromStr for Sample {
    type Err = String;

    /// `all`, a percentage (`10%`, `0.5%`) or a number of objects (`100`).
    fn from_str(s: &str) -> Result<Sample, String> {
        let s = s.trim();
        if s == "all" {
            return Ok(Sample::All);
        }
        if let Some(percent) = s.strip_suffix('%') {
            return match percent.trim().parse::<f64>() {
                Ok(p) if p > 0.0 && p <= 100.0 => Ok(Sample::Fraction(p / 100.0)),
                _ => Err(format!(
                    "{s:?}: a percentage must be above 0% and at most 100%"
                )),
            };
        }
        match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Sample::Count(n)),
            _ => Err(format!(
                "{s:?}: expected `all`, a percentage such as `10%`, or a number of objects above 0"
            )),
        }
    }
}

impl fmt::Display for Sample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sample::All => f.write_str("all"),
            Sample::Fraction(share) => write!(f, "{}%", share * 100.0),
            Sample::Count(n) => write!(f, "{n}"),
        }
    }
}

impl Sample {
    /// How many of `total` objects to check.
    fn size(self, total: usize) -> usize {
        match self {
            Sample::All => total,
            Sample::Fraction(share) => ((total as f64 * share).ceil() as usize).min(total),
            Sample::Count(n) => n.min(total),
        }
    }
}

/// An object whose S3 copy failed the scrub.
#[derive(Debug)]
pub struct Finding {
    /// NATS object-store bucket.
    pub bucket: String,
    /// Object name.
    pub name: String,
    /// The S3 key of what failed: the blob, or the manifest when it could not be read.
    pub key: String,
    /// Why: [`Error::Integrity`] for a bad blob, a not-found [`Error::S3`] for a missing one,
    /// [`Error::Manifest`] for an unreadable manifest. Shared by the objects of one blob.
    pub error: Arc<Error>,
}

impl Finding {
    /// Whether the copy is proven bad (rather than not checked: an S3 request that failed).
    pub fn is_bad(&self) -> bool {
        matches!(
            *self.error,
            Error::Integrity { .. } | Error::Manifest { .. }
        ) || self.error.is_not_found()
    }
}

/// What one scrub found.
#[derive(Debug, Default)]
pub struct Report {
    /// Live objects (current manifests that are not tombstones) in the buckets scrubbed.
    pub objects: usize,
    /// Objects whose copy was read back and verified.
    pub verified: usize,
    /// Objects that failed, bad or not checkable (see [`Finding::is_bad`]), sorted by bucket and
    /// name.
    pub findings: Vec<Finding>,
    /// Manifests of a format this version cannot read: left alone, named (bucket, name, why).
    pub skipped: Vec<(String, String, String)>,
}

impl Report {
    /// Objects proven bad.
    pub fn bad(&self) -> usize {
        self.findings.iter().filter(|f| f.is_bad()).count()
    }

    /// Objects that could not be checked (S3 unreachable, say): neither good nor bad.
    pub fn unchecked(&self) -> usize {
        self.findings.len() - self.bad()
    }
}

/// Scrubs `buckets` (every bucket with a manifest when `None`) of `store`: reads back and
/// verifies the blobs of the current manifests chosen by `sample`. Modifies nothing.
///
/// Fails only when a listing fails; every object's problem is its own [`Finding`].
pub async fn scrub(
    store: &S3Store,
    buckets: Option<Vec<String>>,
    sample: Sample,
) -> Result<Report, Error> {
    let buckets = match buckets {
        Some(buckets) => buckets,
        None => store.list_buckets().await?,
    };
    let mut report = Report::default();
    let mut live: Vec<Manifest> = Vec::new();
    for bucket in buckets {
        for listed in store.scan_manifests(&bucket).await? {
            match listed.manifest {
                Ok(m) if m.is_deleted() => {}
                Ok(m) => live.push(m),
                Err(e @ Error::UnsupportedFormat { .. }) => {
                    report
                        .skipped
                        .push((bucket.clone(), listed.name, e.to_string()));
                }
                Err(error) => {
                    cim_tiering::metrics::integrity_failure(store.tier_name());
                    tracing::error!(bucket = %bucket, name = %listed.name, key = %listed.key, error = %error, "scrub: manifest cannot be read");
                    report.findings.push(Finding {
                        bucket: bucket.clone(),
                        name: listed.name,
                        key: listed.key,
                        error: Arc::new(error),
                    });
                }
            }
        }
    }
    report.objects = live.len() + report.findings.len();
    let chosen = sample.size(live.len());
    if chosen < live.len() {
        live.shuffle(&mut rand::rng());
        live.truncate(chosen);
    }

    // One read per blob: objects with the same content share it (and its stored size).
    let mut by_blob: HashMap<(String, u64), Vec<Manifest>> = HashMap::new();
    for m in live {
        by_blob
            .entry((m.blob_key.clone(), m.stored_size))
            .or_default()
            .push(m);
    }
    let mut checks = futures::stream::iter(by_blob.into_values())
        .map(|manifests| async move {
            let first = &manifests[0];
            let span = tracing::info_span!("scrub", bucket = %first.bucket, object = %first.name, key = %first.blob_key);
            let result = tracing::Instrument::instrument(verify(store, first), span).await;
            (manifests, result)
        })
        .buffer_unordered(CONCURRENCY);
    while let Some((manifests, result)) = checks.next().await {
        match result {
            Ok(()) => report.verified += manifests.len(),
            Err(e) => {
                let e = Arc::new(e);
                for m in manifests {
                    report.findings.push(Finding {
                        bucket: m.bucket,
                        name: m.name,
                        key: m.blob_key,
                        error: e.clone(),
                    });
                }
            }
        }
    }
    report
        .findings
        .sort_by(|a, b| (&a.bucket, &a.name).cmp(&(&b.bucket, &b.name)));
    Ok(report)
}

/// Reads the blob of `m` back in full and verifies it. A missing blob is counted and logged as
/// an integrity failure here ([`S3Store::read_verified`] does so for bad bytes).
async fn verify(store: &S3Store, m: &Manifest) -> Result<(), Error> {
    match store.verify(m).await {
        Ok(()) => {
            tracing::debug!("verified");
            Ok(())
        }
        Err(e) if e.is_not_found() => {
            cim_tiering::metrics::integrity_failure(store.tier_name());
            tracing::error!(bucket = %m.bucket, name = %m.name, key = %m.blob_key, tier = store.tier_name(), "scrub: blob missing");
            Err(e)
        }
        Err(e @ Error::Integrity { .. }) => Err(e), // logged and counted by read_verified
        Err(e) => {
            tracing::error!(bucket = %m.bucket, name = %m.name, key = %m.blob_key, error = %e, "scrub: blob could not be checked");
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn samples_parse_and_size() {
        assert_eq!("all".parse::<Sample>(), Ok(Sample::All));
        assert_eq!("10%".parse::<Sample>(), Ok(Sample::Fraction(0.1)));
        assert_eq!("25".parse::<Sample>(), Ok(Sample::Count(25)));
        for bad in ["0%", "101%", "0", "-3", "ten", "%"] {
            assert!(bad.parse::<Sample>().is_err(), "{bad}");
        }
        assert_eq!(Sample::All.size(7), 7);
        assert_eq!(Sample::Fraction(0.1).size(11), 2, "rounded up");
        assert_eq!(Sample::Fraction(0.1).size(0), 0);
        assert_eq!(Sample::Fraction(1.0).size(5), 5);
        assert_eq!(Sample::Count(3).size(2), 2);
        assert_eq!(Sample::Count(3).size(9), 3);
        assert_eq!(Sample::Fraction(0.5).to_string(), "50%");
    }
}
