//! What the manager remembers between passes: an index per bucket and tier, what it queued for
//! each object, and the catalog (see `docs/architecture.md`, "The manager's scan").

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::access::AccessIndex;
use crate::catalog::CatalogIndex;
use crate::error::Error;
use crate::jetstream::direct::DirectGet;
use crate::jetstream::scan::{Kind, MetaIndex};
use crate::work::DUPLICATE_WINDOW;

/// How long the manager trusts that an item it queued is still queued or done. After that it
/// queues the item again (the stream refuses it if it is still pending): the worker terminates
/// an item after `[work] max_deliver` failed deliveries, and that one must come back. Equal to
/// the stream's duplicate window, so a re-queued item is never mistaken for a duplicate of the
/// first.
pub const REQUEUE_AFTER: Duration = DUPLICATE_WINDOW;

/// (policy position, object) → the version last queued for it, and when.
pub(super) type QueuedByObject = HashMap<(usize, Arc<str>), Queued>;

/// Bucket → (objects, bytes).
pub(super) type HeldByBucket = std::collections::BTreeMap<String, (u64, u64)>;

/// Everything the manager keeps in memory between passes. Nothing of it is persisted: a
/// restarted manager reads every bucket and the catalog in full once, and queues again what is
/// due (the work stream refuses what is still pending).
#[derive(Default)]
pub(super) struct State {
    /// (tier, bucket) → what the manager knows of it.
    pub buckets: HashMap<(String, String), BucketState>,
    /// The catalog, followed once per pass.
    pub catalog: CatalogIndex,
    /// The access records, followed once per pass while an enabled policy tests `idle`.
    pub access: AccessIndex,
    /// (policy position, bucket) → when its `EnsureSource` was queued.
    pub sources: HashMap<(usize, String), Instant>,
    /// (tier, bucket) pairs a pass looked at; the others went away and are forgotten.
    pub touched: HashSet<(String, String)>,
    /// S3 tier → what the catalog places there, and the catalog's state it was counted at.
    pub catalog_held: HashMap<String, (Counted, HeldByBucket)>,
    /// (S3 tier, bucket) → the `expire` tombstones queued there (see `s3expire.rs`).
    pub s3_expiring: HashMap<(String, String), QueuedByObject>,
}

/// The state of an index something was counted at: its cursor and length. Counting again only
/// when it changed keeps a pass that found nothing new from walking every object.
pub(super) type Counted = (u64, usize);

/// One bucket of one tier.
#[derive(Default)]
pub(super) struct BucketState {
    /// Its objects' current metas.
    pub index: MetaIndex,
    /// (policy position, object) → the version last queued for it, and when.
    pub queued: QueuedByObject,
    /// Its live objects and their bytes, and the index's state they were counted at.
    held: Option<(Counted, (u64, u64))>,
}

/// An item the manager queued.
#[derive(Debug, Clone, Copy)]
pub(super) struct Queued {
    /// Sequence of the meta message (version or delete marker) it was queued for.
    pub seq: u64,
    /// When.
    pub at: Instant,
    /// Whether the item evicts the object from this tier when done (a `move`).
    pub evicts: bool,
}

impl Queued {
    /// Whether the same version was queued recently enough not to queue it again.
    pub fn covers(&self, seq: u64, now: Instant) -> bool {
        self.seq == seq && now.duration_since(self.at) < REQUEUE_AFTER
    }
}

impl State {
    /// The bucket's state, taken out of the map (so that two buckets can be used at once);
    /// put it back with [`State::put`].
    pub fn take(&mut self, tier: &str, bucket: &str) -> BucketState {
        let key = (tier.to_string(), bucket.to_string());
        self.touched.insert(key.clone());
        self.buckets.remove(&key).unwrap_or_default()
    }

    /// Puts back what [`State::take`] took.
    pub fn put(&mut self, tier: &str, bucket: &str, state: BucketState) {
        self.buckets
            .insert((tier.to_string(), bucket.to_string()), state);
    }

    /// Forgets the buckets no policy looked at in this pass (deleted buckets, changed
    /// policies) and starts the next pass's record.
    pub fn forget_untouched(&mut self) {
        let touched = std::mem::take(&mut self.touched);
        self.buckets.retain(|key, _| touched.contains(key));
    }
}

impl BucketState {
    /// Whether policy `position` queued version `seq` of `name` recently enough not to queue it
    /// again (see [`Queued::covers`]).
    pub fn queued_recently(
        &self,
        position: usize,
        name: &Arc<str>,
        seq: u64,
        now: Instant,
    ) -> bool {
        self.queued
            .get(&(position, name.clone()))
            .is_some_and(|q| q.covers(seq, now))
    }

    /// Brings the index up to date (see [`crate::jetstream::scan`]): what was written since the
    /// last pass; when the bucket holds fewer metas than indexed, re-reads the objects queued
    /// for eviction and, if that does not account for all of them, the whole bucket.
    pub async fn follow(&mut self, direct: &DirectGet, bucket: &str) -> Result<(), Error> {
        let first = self.index.cursor() == 0;
        let started = Instant::now();
        let followed = self.index.follow(direct, bucket).await?;
        if first && self.index.cursor() > 0 {
            tracing::info!(
                bucket,
                objects = self.index.len(),
                secs = started.elapsed().as_secs_f64(),
                "indexed a bucket"
            );
        }
        if followed.missing == 0 {
            return Ok(());
        }
        let mut evicting: Vec<Arc<str>> = self
            .queued
            .iter()
            .filter(|(_, q)| q.evicts)
            .map(|((_, name), _)| name.clone())
            .collect();
        evicting.sort_unstable();
        evicting.dedup();
        let dropped = self.index.recheck(direct, bucket, &evicting).await?;
        tracing::debug!(
            bucket,
            missing = followed.missing,
            dropped,
            "removals found"
        );
        if dropped < followed.missing {
            self.index.rescan(direct, bucket).await?;
        }
        Ok(())
    }

    /// The bucket's live objects and their bytes (counted again only when the index changed).
    pub fn held(&mut self) -> (u64, u64) {
        let at = (self.index.cursor(), self.index.len());
        if let Some((counted, held)) = self.held {
            if counted == at {
                return held;
            }
        }
        let held = self
            .index
            .objects()
            .filter(|(_, meta)| meta.kind == Kind::Live)
            .fold((0, 0), |(objects, bytes), (_, meta)| {
                (objects + 1, bytes + meta.size)
            });
        self.held = Some((at, held));
        held
    }

    /// Drops what was queued for versions the index no longer holds (changed or gone).
    pub fn prune(&mut self) {
        let index = &self.index;
        self.queued
            .retain(|(_, name), q| index.get(name).is_some_and(|m| m.seq == q.seq));
    }
}
