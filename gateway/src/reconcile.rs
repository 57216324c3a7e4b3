//! Catalog repair (`cim-gateway reconcile`): compares the catalog with what the tiers really
//! hold, fixes what is safe, and reports the rest. Deleting the catalog's KV bucket and running
//! it rebuilds the catalog from the tiers and the S3 manifests.
//!
//! # What it reads
//! Per bucket: every JetStream tier's latest meta per object (one bulk walk of the bucket's
//! meta subjects, [`MetaIndex`]), every S3 tier's current manifests, and per object the
//! catalog's entry (read again right before each decision, so a role's commit made meanwhile
//! is seen). History manifests are read where a recorded S3 location's locator names one.
//!
//! # The rules (also in `docs/architecture.md`, "Catalog repair")
//! * A location the catalog records but the tier does not hold (with the entry's digest) is
//!   dropped. A tier "holds" a version when its latest meta is live with that digest
//!   (JetStream), or when the current manifest, or the history manifest the locator names,
//!   describes it and its blob exists with the manifest's `stored_size` (S3). A missing answer
//!   is asked again of the tier before anything is dropped.
//! * A copy a tier holds that the catalog does not record is added only once checked: on S3 the
//!   manifest is valid and its blob exists with its `stored_size` (read back whole with
//!   `--verify`); on a cluster tier the meta's digest is the version's and the copy is read back
//!   whole (size and SHA-256) — a cluster location lets the mirror evict a leaf copy without
//!   reading the cluster copy again, so it is never recorded from the meta alone.
//! * Only what the roles would have recorded is made: a cluster copy starts an entry only where
//!   a leaf → cluster policy feeds the bucket (the mirror records those as they arrive);
//!   elsewhere it joins an existing entry (an entry means "copied somewhere", and a user delete
//!   then goes on to S3). Leaf copies are never added (the mirror records one only while a
//!   `move` verifies it, just before evicting it) and, while held, never dropped.
//! * Versions are ordered by the cluster's sequence (`source_seq` on S3): an older version never
//!   replaces a newer one ([`cim_tiering::catalog::found_copy`]).
//! * An S3 tombstone not recorded becomes a deletion entry (`record_deletion`).
//! * A damaged mark stays; the copy on the tier it names is never recorded again.
//! * Reported, never fixed: two tiers (or the catalog) with different digests for the same
//!   sequence, manifests that are invalid or of a newer format, metas that do not decode,
//!   copies that fail their check, entries no tier holds a copy of any more, damaged versions.
//!
//! Every write is a compare-and-set on the entry's revision (the catalog's helpers), so roles
//! running meanwhile never lose a commit: on a conflict the helper reads again and decides again;
//! a location is dropped only if it is still the one found wanting (same `verified_at`).

use std::collections::{BTreeMap, BTreeSet};

use cim_policies::{JetStreamRole, Route, Tier};
use cim_tiering::catalog::{found_copy, Entry, Version};
use cim_tiering::digest::Sha256Digest;
use cim_tiering::jetstream::scan::{Kind, MetaIndex};
use cim_tiering::jetstream::JetStreamTier;
use cim_tiering::System;
use serde::Serialize;
use tracing::Instrument;

use crate::format::{version_manifest_key, Manifest};
use crate::s3::S3Store;
use crate::Error;

/// What to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Decide and report, write nothing.
    pub dry_run: bool,
    /// Read S3 blobs back whole before recording them (JetStream copies always are).
    pub verify: bool,
    /// Only these buckets (default: every bucket a tier or the catalog knows).
    pub buckets: Vec<String>,
}

/// What was found about one copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum What {
    /// The catalog records a copy the tier does not hold.
    NotHeld,
    /// The tier holds a copy the catalog does not record.
    NotRecorded,
    /// An S3 tombstone the catalog does not record.
    Tombstone,
    /// Different digests for the same version (sequence).
    Disagree,
    /// A manifest of a format this version cannot read.
    NewerFormat,
    /// A manifest that is invalid.
    BadManifest,
    /// A meta message that does not decode, or has no digest.
    BadMeta,
    /// A copy that failed its check (blob missing or of another size, content wrong).
    BadCopy,
    /// The catalog's version has no copy left on any tier.
    NoCopy,
    /// The version is marked damaged (kept).
    Damaged,
    /// The tier could not be asked (an error; nothing was changed).
    Unchecked,
}

/// What reconcile did about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// The location was removed from the entry.
    Dropped,
    /// The copy was recorded.
    Added,
    /// The deletion was recorded.
    Carried,
    /// Dry run: would drop.
    WouldDrop,
    /// Dry run: would add.
    WouldAdd,
    /// Dry run: would record the deletion.
    WouldCarry,
    /// A role's commit meanwhile made it moot (a newer version, the same copy).
    Moot,
    /// Nothing: for people to look at.
    None,
}

/// One finding.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Object-store bucket.
    pub bucket: String,
    /// Object name.
    pub name: String,
    /// The tier concerned (tiers joined by `,` for a disagreement; `catalog` when none is).
    pub tier: String,
    /// What was found.
    pub what: What,
    /// What was done.
    pub action: Action,
    /// Why, for people.
    pub detail: String,
}

impl Finding {
    /// Whether this finding is left for people (the exit status is 1 when one is).
    pub fn is_unfixed(&self) -> bool {
        self.action == Action::None
    }
}

/// What a run found, and how much it looked at.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Buckets looked at.
    pub buckets: usize,
    /// Objects looked at (every name a tier or the catalog knows).
    pub objects: usize,
    /// Whether nothing was written.
    pub dry_run: bool,
    /// Every finding, in bucket and name order.
    pub findings: Vec<Finding>,
}

/// One JetStream tier and whether it is a leaf (whose sequences the catalog does not use).
struct JsTier<'a> {
    tier: &'a JetStreamTier,
    leaf: bool,
}

/// What one bucket's tiers hold, read in bulk.
#[derive(Default)]
struct Held {
    js: BTreeMap<String, MetaIndex>,
    s3: BTreeMap<String, BTreeMap<String, Result<Manifest, Error>>>,
}

/// Runs a reconcile over every JetStream tier of `system` and the S3 `stores`.
pub async fn reconcile(
    system: &System,
    stores: &[S3Store],
    options: &Options,
) -> Result<Report, Error> {
    let config = &system.config;
    // Leaves: marked so, or the source of a leaf → cluster policy.
    let leaves: BTreeSet<&str> = config
        .policies_on(Route::LeafToCluster)
        .map(|p| p.from.as_str())
        .collect();
    let mut js = Vec::new();
    for (name, tier) in &config.tiers {
        if let Tier::JetStream(t) = tier {
            js.push(JsTier {
                tier: system.jetstream_tier(name)?,
                leaf: t.role == JetStreamRole::Leaf || leaves.contains(name.as_str()),
            });
        }
    }
    let entries = system.catalog.entries().await?;
    let mut buckets: BTreeSet<String> = entries.iter().map(|e| e.bucket.clone()).collect();
    for t in &js {
        buckets.extend(t.tier.bucket_names().await?);
    }
    for store in stores {
        buckets.extend(store.list_buckets().await?);
    }
    if !options.buckets.is_empty() {
        buckets.retain(|b| options.buckets.contains(b));
    }
    let run = Run {
        system,
        js,
        stores,
        options,
    };
    let mut report = Report {
        dry_run: options.dry_run,
        ..Report::default()
    };
    for bucket in &buckets {
        report.buckets += 1;
        let span = tracing::info_span!("reconcile_bucket", bucket);
        let recorded = entries
            .iter()
            .filter(|e| &e.bucket == bucket)
            .map(|e| e.name.clone());
        run.bucket(bucket, recorded, &mut report)
            .instrument(span)
            .await?;
    }
    Ok(report)
}

struct Run<'a> {
    system: &'a System,
    js: Vec<JsTier<'a>>,
    stores: &'a [S3Store],
    options: &'a Options,
}

impl Run<'_> {
    async fn bucket(
        &self,
        bucket: &str,
        recorded: impl Iterator<Item = String>,
        report: &mut Report,
    ) -> Result<(), Error> {
        let mut held = Held::default();
        let mut names: BTreeSet<String> = recorded.collect();
        let mut found = Vec::new();
        let finding = |name: &str, tier: &str, what, detail: String| Finding {
            bucket: bucket.to_string(),
            name: name.to_string(),
            tier: tier.to_string(),
            what,
            action: Action::None,
            detail,
        };
        for t in &self.js {
            let mut index = MetaIndex::new();
            if t.tier.stream_exists(bucket).await? {
                index.follow(&t.tier.direct(bucket), bucket).await?;
            }
            for (name, why) in index.unreadable() {
                found.push(finding(name, t.tier.name(), What::BadMeta, why.clone()));
            }
            names.extend(
                index
                    .objects()
                    .filter(|(_, m)| m.kind == Kind::Live)
                    .map(|(n, _)| n.to_string()),
            );
            held.js.insert(t.tier.name().to_string(), index);
        }
        for store in self.stores {
            let mut manifests = BTreeMap::new();
            for listed in store.scan_manifests(bucket).await? {
                match &listed.manifest {
                    Err(e @ Error::UnsupportedFormat { .. }) => {
                        found.push(finding(
                            &listed.name,
                            store.tier_name(),
                            What::NewerFormat,
                            e.to_string(),
                        ));
                    }
                    Err(e) => found.push(finding(
                        &listed.name,
                        store.tier_name(),
                        What::BadManifest,
                        e.to_string(),
                    )),
                    Ok(_) => {}
                }
                names.insert(listed.name.clone());
                manifests.insert(listed.name, listed.manifest);
            }
            held.s3.insert(store.tier_name().to_string(), manifests);
        }
        report.objects += names.len();
        for name in &names {
            let span = tracing::info_span!("reconcile_object", bucket, name = %name);
            let mut object = Vec::new();
            if let Err(e) = self
                .object(bucket, name, &held, &mut object)
                .instrument(span)
                .await
            {
                // One object the tiers cannot answer for never stops the others.
                object.push(finding(name, "catalog", What::Unchecked, e.to_string()));
            }
            found.extend(object);
        }
        found.sort_by(|a, b| (&a.name, &a.tier).cmp(&(&b.name, &b.tier)));
        report.findings.extend(found);
        Ok(())
    }

    /// Decides and (unless a dry run) fixes one object.
    async fn object(
        &self,
        bucket: &str,
        name: &str,
        held: &Held,
        out: &mut Vec<Finding>,
    ) -> Result<(), Error> {
        let catalog = &self.system.catalog;
        let dry = self.options.dry_run;
        let push = |out: &mut Vec<Finding>, tier: &str, what, action, detail: String| {
            out.push(Finding {
                bucket: bucket.to_string(),
                name: name.to_string(),
                tier: tier.to_string(),
                what,
                action,
                detail,
            })
        };
        let mut entry = catalog.get(bucket, name).await?;

        // Versions the tiers and the catalog claim, by sequence: two digests for one is a
        // disagreement nobody here can settle.
        let mut claims: BTreeMap<u64, Vec<(String, Sha256Digest)>> = BTreeMap::new();
        for t in self.js.iter().filter(|t| !t.leaf) {
            if let Some(m) = live_meta(held, t.tier.name(), name) {
                if let Some(d) = m.digest {
                    claims
                        .entry(m.seq)
                        .or_default()
                        .push((t.tier.name().into(), d));
                }
            }
        }
        for (tier, manifests) in &held.s3 {
            if let Some(Ok(m)) = manifests.get(name) {
                if !m.is_deleted() && m.source_seq > 0 {
                    claims
                        .entry(m.source_seq)
                        .or_default()
                        .push((tier.clone(), m.digest));
                }
            }
        }
        if let Some(e) = entry.as_ref().filter(|e| e.deleted.is_none() && e.seq > 0) {
            claims
                .entry(e.seq)
                .or_default()
                .push(("catalog".into(), e.digest));
        }
        for (seq, claimed) in &claims {
            if claimed.iter().any(|(_, d)| d != &claimed[0].1) {
                let tiers: Vec<&str> = claimed.iter().map(|(t, _)| t.as_str()).collect();
                let detail = claimed
                    .iter()
                    .map(|(t, d)| format!("{t} {d}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                push(
                    out,
                    &tiers.join(","),
                    What::Disagree,
                    Action::None,
                    format!("version {seq}: {detail}"),
                );
                return Ok(());
            }
        }

        // Drops: recorded locations the tier does not hold.
        if let Some(e) = entry.clone().filter(|e| e.deleted.is_none()) {
            for (tier, location) in &e.locations {
                let holds = self
                    .holds(
                        bucket,
                        name,
                        tier,
                        &e.digest,
                        location.locator.as_deref(),
                        held,
                    )
                    .await;
                match holds {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(err) => {
                        push(out, tier, What::Unchecked, Action::None, err.to_string());
                        continue;
                    }
                }
                let detail = format!("does not hold {}", e.digest);
                if dry {
                    push(out, tier, What::NotHeld, Action::WouldDrop, detail);
                    if let Some(local) = entry.as_mut() {
                        local.locations.remove(tier);
                    }
                } else {
                    // Only the location we found wanting: one a role recorded again stays.
                    let dropped = catalog
                        .record_not_held(bucket, name, &e.digest, tier, &location.verified_at)
                        .await?;
                    let action = if dropped {
                        Action::Dropped
                    } else {
                        Action::Moot
                    };
                    push(out, tier, What::NotHeld, action, detail);
                    entry = catalog.get(bucket, name).await?;
                }
            }
        }

        // Adds: S3 first (tombstones, then copies), then the cluster tiers; never the leaves.
        for store in self.stores {
            let tier = store.tier_name();
            let Some(Ok(m)) = held.s3.get(tier).and_then(|s| s.get(name)) else {
                continue;
            };
            let version = Version {
                size: m.size,
                digest: m.digest,
                seq: m.source_seq,
            };
            if m.is_deleted() {
                let recorded = entry.as_ref().is_some_and(|e| {
                    e.deletion_reached(m.source_seq, tier) || e.seq > m.source_seq
                });
                if recorded || m.source_seq == 0 {
                    continue;
                }
                let detail = format!("tombstone of version {}", m.source_seq);
                if dry {
                    push(out, tier, What::Tombstone, Action::WouldCarry, detail);
                    return Ok(()); // nothing older is added after a delete
                }
                let action = if catalog
                    .record_deletion(bucket, name, &version, tier)
                    .await?
                {
                    Action::Carried
                } else {
                    Action::Moot
                };
                push(out, tier, What::Tombstone, action, detail);
                entry = catalog.get(bucket, name).await?;
                continue;
            }
            if !self.wanted(&entry, tier, &version) {
                continue;
            }
            if let Err(why) = self.check_s3(store, m).await? {
                push(out, tier, What::BadCopy, Action::None, why);
                continue;
            }
            let locator = (m.source_seq > 0)
                .then(|| version_manifest_key(store.prefix(), bucket, name, m.source_seq));
            self.add(bucket, name, tier, &version, locator, &mut entry, out)
                .await?;
        }
        for t in self.js.iter().filter(|t| !t.leaf) {
            let tier = t.tier.name();
            let Some(meta) = live_meta(held, tier, name) else {
                continue;
            };
            let Some(digest) = meta.digest else {
                push(
                    out,
                    tier,
                    What::BadMeta,
                    Action::None,
                    "the meta has no digest".into(),
                );
                continue;
            };
            // Roles record a cluster copy that nothing was copied from or to only where a leaf
            // feeds the bucket (the mirror records each as it arrives); elsewhere an entry
            // means "copied somewhere" (a delete then goes on to S3), so none is made here.
            let live_entry = entry.as_ref().is_some_and(|e| e.deleted.is_none());
            if !live_entry && !self.fed(tier, bucket) {
                continue;
            }
            let version = Version {
                size: meta.size,
                digest,
                seq: meta.seq,
            };
            if !self.wanted(&entry, tier, &version) {
                continue;
            }
            // Read back whole from the stream leader: only a checked copy is recorded.
            let Some(current) = t.tier.latest(bucket, name).await? else {
                continue; // gone meanwhile
            };
            if current.info.deleted || current.info.nuid.as_str() != &*meta.nuid {
                continue; // changed meanwhile: the next run looks at the new version
            }
            let read = t
                .tier
                .read_verified(
                    bucket,
                    &current.info,
                    meta.size,
                    &digest,
                    &mut tokio::io::sink(),
                )
                .await;
            match read {
                Ok(_) => {}
                Err(cim_tiering::Error::NotReady { .. }) => continue,
                Err(e) => {
                    push(out, tier, What::BadCopy, Action::None, e.to_string());
                    continue;
                }
            }
            let added = self
                .add(bucket, name, tier, &version, None, &mut entry, out)
                .await?;
            // Evicted while we read and recorded (a move going on): undo, as the mirror does.
            if added && !dry {
                let now = t.tier.latest(bucket, name).await?;
                if now.map(|v| v.info.nuid) != Some(current.info.nuid.clone()) {
                    catalog.record_eviction(bucket, name, &digest, tier).await?;
                    entry = catalog.get(bucket, name).await?;
                }
            }
        }

        match &entry {
            Some(e) if e.damaged.is_some() => {
                let d = e.damaged.as_ref().map(|d| (d.tier.clone(), d.what.clone()));
                let (tier, what) = d.unwrap_or_default();
                push(
                    out,
                    &tier,
                    What::Damaged,
                    Action::None,
                    format!("version {} failed its {what} check; mark kept", e.seq),
                );
            }
            Some(e) if e.deleted.is_none() && e.locations.is_empty() => push(
                out,
                "catalog",
                What::NoCopy,
                Action::None,
                format!("no tier holds version {} ({}) any more", e.seq, e.digest),
            ),
            _ => {}
        }
        Ok(())
    }

    /// Whether a leaf → cluster policy feeds `bucket` on cluster tier `tier`.
    fn fed(&self, tier: &str, bucket: &str) -> bool {
        self.system
            .config
            .policies_on(Route::LeafToCluster)
            .any(|p| p.to == tier && p.matches_bucket(bucket))
    }

    /// Whether a copy of `version` on `tier` is worth checking: not recorded already, not
    /// older than what the catalog records.
    fn wanted(&self, entry: &Option<Entry>, tier: &str, version: &Version) -> bool {
        match entry {
            None => true,
            Some(e) if e.seq > version.seq => false,
            Some(e) => !(e.has(tier, &version.digest) && e.seq == version.seq),
        }
    }

    /// Records a checked copy (or, in a dry run, says it would); true when written.
    #[allow(clippy::too_many_arguments)]
    async fn add(
        &self,
        bucket: &str,
        name: &str,
        tier: &str,
        version: &Version,
        locator: Option<String>,
        entry: &mut Option<Entry>,
        out: &mut Vec<Finding>,
    ) -> Result<bool, Error> {
        let mut finding = Finding {
            bucket: bucket.to_string(),
            name: name.to_string(),
            tier: tier.to_string(),
            what: What::NotRecorded,
            action: Action::Added,
            detail: format!("holds version {} ({})", version.seq, version.digest),
        };
        let next = found_copy(entry.clone(), bucket, name, version, tier, locator.clone());
        if next.is_none() {
            return Ok(false); // damaged there, or older: the final checks report what matters
        }
        if self.options.dry_run {
            finding.action = Action::WouldAdd;
            *entry = next;
            out.push(finding);
            return Ok(false);
        }
        let written = self
            .system
            .catalog
            .record_found_copy(bucket, name, version, tier, locator)
            .await?;
        let added = written.is_some();
        if !added {
            finding.action = Action::Moot;
        }
        out.push(finding);
        *entry = self.system.catalog.get(bucket, name).await?;
        Ok(added)
    }

    /// Whether `tier` holds the version with `digest` (see the module docs); asks the tier
    /// again before saying no.
    async fn holds(
        &self,
        bucket: &str,
        name: &str,
        tier: &str,
        digest: &Sha256Digest,
        locator: Option<&str>,
        held: &Held,
    ) -> Result<bool, Error> {
        if let Some(t) = self.js.iter().find(|t| t.tier.name() == tier) {
            if live_meta(held, tier, name).is_some_and(|m| m.digest.as_ref() == Some(digest)) {
                return Ok(true);
            }
            let now = t.tier.version(bucket, name).await?;
            return Ok(now.is_some_and(|v| {
                cim_tiering::jetstream::ingest_digest(tier, bucket, &v.info)
                    .ok()
                    .as_ref()
                    == Some(digest)
            }));
        }
        let Some(store) = self.stores.iter().find(|s| s.tier_name() == tier) else {
            return Err(Error::Tiering(cim_tiering::Error::Config(format!(
                "the catalog names tier {tier:?}, which the configuration does not have"
            ))));
        };
        let describes = |m: &Manifest| !m.is_deleted() && &m.digest == digest;
        let listed = held.s3.get(tier).and_then(|s| s.get(name));
        if let Some(Ok(m)) = listed.filter(|m| m.as_ref().is_ok_and(describes)) {
            if self.check_s3(store, m).await?.is_ok() {
                return Ok(true);
            }
        }
        // Written since the listing (an upload commits before its current manifest)?
        if let Some(m) = store.get_manifest(bucket, name).await?.filter(describes) {
            if self.check_s3(store, &m).await?.is_ok() {
                return Ok(true);
            }
        }
        if let Some(key) = locator {
            if let Some(m) = store.get_version_manifest(key, bucket, name).await? {
                if describes(&m) && self.check_s3(store, &m).await?.is_ok() {
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// Checks the blob of `m`: there, with its stored size (and, with `--verify`, read back
    /// whole). `Ok(Err(why))` when it fails.
    async fn check_s3(&self, store: &S3Store, m: &Manifest) -> Result<Result<(), String>, Error> {
        match store.object_length(&m.blob_key).await? {
            None => return Ok(Err(format!("blob {} is missing", m.blob_key))),
            Some(len) if len != m.stored_size => {
                return Ok(Err(format!(
                    "blob {} is {len} bytes, the manifest says {}",
                    m.blob_key, m.stored_size
                )))
            }
            Some(_) => {}
        }
        if self.options.verify {
            match store.verify(m).await {
                Ok(()) => {}
                Err(e @ Error::Integrity { .. }) => return Ok(Err(e.to_string())),
                Err(e) => return Err(e),
            }
        }
        Ok(Ok(()))
    }
}

/// The live meta of `name` on JetStream tier `tier`, as the bulk walk read it.
fn live_meta<'a>(
    held: &'a Held,
    tier: &str,
    name: &str,
) -> Option<&'a cim_tiering::jetstream::scan::Meta> {
    held.js
        .get(tier)
        .and_then(|index| index.get(name))
        .filter(|m| m.kind == Kind::Live)
}
