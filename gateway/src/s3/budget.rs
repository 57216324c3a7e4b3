//! [`MemoryBudget`]: the bytes a process may hold in buffers of one kind — the upload role's
//! blob buffers across all its uploads (`[upload] memory_budget_mib`), restore's objects in
//! flight (`restore::MEMORY_BUDGET`).
//!
//! Every buffer an upload fills with compressed bytes — the single-PutObject buffer, each
//! multipart part, being filled or in flight — is charged to the budget before it is allocated
//! and released when it is dropped (a part's charge travels with it into the task that sends
//! it). So the buffers of all concurrent uploads stay within the budget whatever the object
//! sizes and `[work] concurrency`: a large object waits for room instead of growing the
//! process. No deadlock: an upload waits for room only while it holds no unsent buffer, and
//! every charged buffer is released by a part upload that finishes (or fails) on its own.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Accounting unit: permits are KiB (a semaphore counts at most `u32::MAX` per acquire).
const UNIT: u64 = 1024;

/// A process-wide byte budget for buffers. Cheap to clone; clones share the budget.
#[derive(Clone)]
pub struct MemoryBudget {
    semaphore: Arc<Semaphore>,
    bytes: u64,
}

impl std::fmt::Debug for MemoryBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBudget")
            .field("bytes", &self.bytes)
            .field("free", &(self.semaphore.available_permits() as u64 * UNIT))
            .finish()
    }
}

impl PartialEq for MemoryBudget {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.semaphore, &other.semaphore)
    }
}

impl Eq for MemoryBudget {}

/// Room charged to a budget; given back when dropped.
#[derive(Debug)]
pub struct Charge(Option<OwnedSemaphorePermit>);

impl Charge {
    /// Takes `bytes` (rounded up to KiB) off this charge into a charge of its own — for a part
    /// cut from a larger buffer; takes what is left when that is less.
    pub fn split(&mut self, bytes: u64) -> Charge {
        let Some(permit) = self.0.as_mut() else {
            return Charge(None);
        };
        let n = units(bytes).min(permit.num_permits());
        Charge(permit.split(n))
    }

    /// Adds `other` to this charge.
    pub fn merge(&mut self, other: Charge) {
        match (self.0.as_mut(), other.0) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (None, theirs) => self.0 = theirs,
            (_, None) => {}
        }
    }

    /// The bytes charged (a multiple of KiB).
    pub fn bytes(&self) -> u64 {
        self.0.as_ref().map_or(0, |p| p.num_permits() as u64 * UNIT)
    }
}

fn units(bytes: u64) -> usize {
    usize::try_from(bytes.div_ceil(UNIT)).unwrap_or(usize::MAX)
}

impl MemoryBudget {
    /// A budget of `bytes` (at least 1 KiB).
    pub fn new(bytes: u64) -> Self {
        let permits = units(bytes).clamp(1, Semaphore::MAX_PERMITS);
        MemoryBudget {
            semaphore: Arc::new(Semaphore::new(permits)),
            bytes: permits as u64 * UNIT,
        }
    }

    /// The budget's size in bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Waits until `bytes` (capped at the whole budget, so that one buffer larger than the
    /// budget waits for all of it instead of forever) are free, and charges them.
    pub async fn charge(&self, bytes: u64) -> Charge {
        let n = units(bytes).min(units(self.bytes));
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if n == 0 {
            return Charge(None);
        }
        // The semaphore is never closed.
        Charge(self.semaphore.clone().acquire_many_owned(n).await.ok())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn buffers_wait_for_room_and_give_it_back() {
        let budget = MemoryBudget::new(10 * UNIT);
        let mut a = budget.charge(6 * UNIT).await;
        assert_eq!(a.bytes(), 6 * UNIT);
        // Only 4 KiB left: a second 6 KiB buffer waits.
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.charge(6 * UNIT).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // A part cut from `a` carries its share; dropping it frees room.
        let part = a.split(3 * UNIT);
        assert_eq!((a.bytes(), part.bytes()), (3 * UNIT, 3 * UNIT));
        drop(part);
        let b = waiting.await.unwrap();
        assert_eq!(b.bytes(), 6 * UNIT);
        // More than the whole budget waits for all of it, never forever.
        drop((a, b));
        assert_eq!(budget.charge(100 * UNIT).await.bytes(), 10 * UNIT);
        // Bytes round up to KiB.
        assert_eq!(budget.charge(1).await.bytes(), UNIT);
    }
}
