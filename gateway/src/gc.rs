//! Garbage collection of an S3 tier (`cim-gateway gc`): what deletes and overwrites leave
//! behind is removed after the tier's `retention`, and nothing else.
//!
//! # Rules
//!
//! 1. **History expires.** A history manifest (`versions/<bucket>/<name>/<seq>.json`) of a
//!    version older than the object's current manifest is removed once the version that
//!    superseded it has been stored for `retention` (by S3's `LastModified` of the next history
//!    manifest). The current version's history, and anything newer (an upload in flight), stays.
//!    Tombstones stay: S3 alone keeps saying the object was deleted.
//! 2. **A blob lives while anything references it.** References are the `blob_key`s of every
//!    live current manifest and of every history manifest left after rule 1 (tombstones
//!    reference nothing). A blob nothing references is removed once it is at least `retention`
//!    old (S3's `LastModified`): with the default of 90 days, Wasabi never bills an early delete.
//! 3. **Never under a live upload.** Before removing a blob the collector takes the blob's
//!    lease ([`crate::upload::blob_lease_key`]), the one an uploader holds from before it looks
//!    for the blob until its history manifest is written. A held lease means "in use": skipped,
//!    reported. With the leases held, the manifests written since the scan began are read again
//!    and any blob they reference is kept. So an upload that reused a blob either finished
//!    before the collector took the lease (its manifest is found) or starts after it is
//!    released (and uploads the blob again).
//!
//! A collection may be interrupted at any point (SIGKILL included): it only removes what is
//! unreferenced, each removal is one idempotent DeleteObject, and the next run starts over.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, SystemTime};

use cim_tiering::lease::{Lease, Leases};
use cim_tiering::metrics;
use futures::StreamExt;

use crate::format::{self, Manifest};
use crate::s3::{ListedKey, S3Store};
use crate::upload::blob_lease_key;
use crate::Error;

/// Manifests written this long before a collection started are read again after it takes the
/// blob leases: far above any clock difference between S3 and this host.
const RESCAN_MARGIN: Duration = Duration::from_secs(15 * 60);
/// Blobs handled per round of leases (each round re-reads the recent manifests).
const BATCH: usize = 500;
/// Concurrent S3 requests (manifest reads, deletes).
const CONCURRENCY: usize = 8;

/// What one collection found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// History manifests removed (or, in a dry run, that would be).
    pub manifests_removed: Vec<String>,
    /// Blobs removed (or, in a dry run, that would be).
    pub blobs_removed: Vec<String>,
    /// Unreferenced blobs kept because an upload holds their lease.
    pub blobs_in_use: Vec<String>,
    /// Unreferenced blobs kept because they are younger than the retention.
    pub blobs_too_young: usize,
    /// Blobs still referenced.
    pub blobs_referenced: usize,
}

/// One collection over `store`, keeping everything younger than `retention`. With `dry_run`
/// nothing is removed and no lease is taken; the report says what would be removed.
pub async fn collect(
    store: &S3Store,
    leases: &Leases,
    retention: Duration,
    dry_run: bool,
) -> Result<Report, Error> {
    let started = SystemTime::now();
    let prefix = store.prefix().to_string();
    let mut report = Report::default();

    // Every current manifest, read once: rule 1 needs their versions, rule 2 their blobs. A
    // current manifest only moves forward, so one read before the rules is enough for both
    // (rule 3 re-reads what was written since `started`).
    let mut currents: HashMap<(String, String), Manifest> = HashMap::new();
    for bucket in store.list_buckets().await? {
        for listed in store.scan_manifests(&bucket).await? {
            currents.insert((bucket.clone(), listed.name), listed.manifest?);
        }
    }

    // Rule 1: expire history.
    let mut histories: BTreeMap<(String, String), Vec<(u64, ListedKey)>> = BTreeMap::new();
    for listed in store.list_keys(&format::versions_prefix(&prefix)).await? {
        if let Some((bucket, name, seq)) = format::decode_version_key(&prefix, &listed.key) {
            histories
                .entry((bucket, name))
                .or_default()
                .push((seq, listed));
        }
    }
    let mut kept_history = Vec::new();
    for (object, mut versions) in histories {
        versions.sort_by_key(|(seq, _)| *seq);
        let current_seq = currents.get(&object).map(|c| c.source_seq);
        let (bucket, name) = object;
        for (i, (seq, listed)) in versions.iter().enumerate() {
            let superseded_for = versions.get(i + 1).map(|(_, next)| next.age(started));
            let expired = current_seq.is_some_and(|c| *seq < c)
                && superseded_for.is_some_and(|age| age >= retention);
            if expired {
                report.manifests_removed.push(listed.key.clone());
            } else {
                kept_history.push((bucket.clone(), name.clone(), listed.key.clone()));
            }
        }
    }
    if !dry_run {
        delete_all(store, &report.manifests_removed).await?;
        metrics::gc_removed_manifests(store.tier_name(), report.manifests_removed.len() as u64);
    }

    // Rule 2: what is referenced.
    let mut referenced: HashSet<String> = currents.into_values().filter_map(blob_of).collect();
    let reads =
        futures::stream::iter(kept_history)
            .map(|(bucket, name, key)| async move {
                store.get_version_manifest(&key, &bucket, &name).await
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
    for manifest in reads {
        referenced.extend(manifest?.and_then(blob_of));
    }
    let mut candidates = Vec::new();
    for listed in store.list_keys(&format::blobs_prefix(&prefix)).await? {
        if format::digest_of_blob_key(&prefix, &listed.key).is_none() {
            continue; // not ours
        }
        if referenced.contains(&listed.key) {
            report.blobs_referenced += 1;
        } else if listed.age(started) < retention {
            report.blobs_too_young += 1;
        } else {
            candidates.push(listed.key);
        }
    }
    if dry_run {
        report.blobs_removed = candidates;
        return Ok(report);
    }

    // Rule 3: under the blobs' leases, re-read what was written since the scan began.
    for batch in candidates.chunks(BATCH) {
        let mut held: Vec<(String, Lease)> = Vec::new();
        for key in batch {
            let Some(digest) = format::digest_of_blob_key(&prefix, key) else {
                continue;
            };
            let lease_key = blob_lease_key(store.tier_name(), &digest);
            match leases.try_acquire(&lease_key, "cim-gateway gc").await? {
                Some(lease) => held.push((key.clone(), lease)),
                None => report.blobs_in_use.push(key.clone()),
            }
        }
        let recent = recently_referenced(store, started - RESCAN_MARGIN).await?;
        let doomed: Vec<String> = held
            .iter()
            .map(|(key, _)| key.clone())
            .filter(|key| !recent.contains(key))
            .collect();
        report.blobs_referenced += held.len() - doomed.len();
        let removed = delete_all(store, &doomed).await;
        for (_, lease) in held {
            lease.release().await;
        }
        removed?;
        metrics::gc_removed_blobs(store.tier_name(), doomed.len() as u64);
        report.blobs_removed.extend(doomed);
    }
    for key in &report.blobs_in_use {
        tracing::info!(key, "unreferenced blob kept: an upload holds its lease");
    }
    Ok(report)
}

/// The blob a manifest keeps alive: its `blob_key`, unless it is a tombstone.
fn blob_of(manifest: Manifest) -> Option<String> {
    (!manifest.is_deleted()).then_some(manifest.blob_key)
}

/// Blobs referenced by the manifests (current and history) S3 wrote at or after `since`.
async fn recently_referenced(
    store: &S3Store,
    since: SystemTime,
) -> Result<BTreeSet<String>, Error> {
    let prefix = store.prefix();
    let mut keys = store.list_keys(&format::versions_prefix(prefix)).await?;
    keys.extend(
        store
            .list_keys(&format::manifest_prefix(prefix, None))
            .await?,
    );
    let recent = keys
        .into_iter()
        .filter(|k| k.modified >= since)
        .filter_map(|k| {
            let (bucket, name) = format::decode_manifest_key(prefix, &k.key)
                .or_else(|| format::decode_version_key(prefix, &k.key).map(|(b, n, _)| (b, n)))?;
            Some((k.key, bucket, name))
        });
    let reads =
        futures::stream::iter(recent)
            .map(|(key, bucket, name)| async move {
                store.get_version_manifest(&key, &bucket, &name).await
            })
            .buffer_unordered(CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
    let mut referenced = BTreeSet::new();
    for manifest in reads {
        referenced.extend(manifest?.and_then(blob_of));
    }
    Ok(referenced)
}

async fn delete_all(store: &S3Store, keys: &[String]) -> Result<(), Error> {
    let results = futures::stream::iter(keys)
        .map(|key| async move {
            let result = store.delete_key(key).await;
            if result.is_ok() {
                tracing::info!(key, "removed");
            }
            result
        })
        .buffer_unordered(CONCURRENCY)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect()
}
