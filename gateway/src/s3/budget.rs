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
//!
//! **Part buffers are reused, not freed** ([`MemoryBudget::buffer`], [`MemoryBudget::recycle`]):
//! a sent part's buffer goes back to a pool, still charged, for the next part. Why: glibc raises
//! its mmap threshold to the size of a freed mmapped block, after which every 16 MiB buffer
//! comes from, and goes back to, per-thread arenas that keep freed memory resident: measured,
//! that slack was ~70 MiB of the upload role's 200 MiB peak. A kept buffer is charged like one
//! in use, so the pool never takes the process past the budget. An upload waiting for a part
//! buffer takes the next one sent; one waiting for room of another size (a small object, a
//! short last part) frees the kept ones, and none is kept while it waits.
//!
//! **Codec slots** ([`MemoryBudget::codec`]): besides its buffers, an upload reading and
//! compressing holds zstd's encoder state (about 3.5 MiB at level 3) and the hub reader's
//! read-ahead (at most 2 MiB), and a read-back holds a decoder. At most [`CODEC_SLOTS`] uploads
//! hold these at once, each from before its reader is first read until its content hit EOF, so
//! this memory is bounded however many items are in flight. A slot is taken before any buffer,
//! and is never waited for while holding unsent bytes, so slots and budget cannot deadlock.

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Accounting unit: permits are KiB (a semaphore counts at most `u32::MAX` per acquire).
const UNIT: u64 = 1024;

/// Uploads that may hold a zstd codec and a hub reader at once (see the module docs). Four keep
/// both cores busy compressing and hashing while others wait on the network, and fill the
/// default budget (four 16 MiB parts, and room for small ones); with a larger budget one upload
/// sends up to four parts at once, so four still fill it.
pub const CODEC_SLOTS: usize = 4;

/// A process-wide byte budget for buffers. Cheap to clone; clones share the budget.
#[derive(Clone)]
pub struct MemoryBudget {
    semaphore: Arc<Semaphore>,
    bytes: u64,
    /// Size of a reusable part buffer (0: no reuse).
    spare_size: usize,
    spares: Arc<Mutex<Spares>>,
    /// Signalled when a part buffer is kept, for callers waiting for one.
    returned: Arc<Notify>,
    codecs: Arc<Semaphore>,
}

/// Sent part buffers kept for reuse, each with its charge; and how many callers wait for room
/// (while any does, nothing is kept: a kept buffer would hold room that a waiter needs).
#[derive(Default)]
struct Spares {
    buffers: Vec<(BytesMut, Charge)>,
    waiting: usize,
}

/// A buffer for compressed bytes and its charge, from [`MemoryBudget::buffer`].
#[derive(Debug)]
pub struct Buffer {
    /// Empty, with room for at least the bytes asked for.
    pub bytes: BytesMut,
    /// What the buffer is charged.
    pub charge: Charge,
    /// Whether it is a reusable part buffer: one cut from its start, of its full length, may
    /// go back with [`MemoryBudget::recycle`].
    pub reusable: bool,
}

/// Held while an upload reads and compresses (see [`MemoryBudget::codec`]).
#[derive(Debug)]
pub struct CodecSlot(#[allow(dead_code)] OwnedSemaphorePermit);

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
#[derive(Debug, Default)]
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
    /// A budget of `bytes` (at least 1 KiB), without reusable part buffers.
    pub fn new(bytes: u64) -> Self {
        let permits = units(bytes).clamp(1, Semaphore::MAX_PERMITS);
        MemoryBudget {
            semaphore: Arc::new(Semaphore::new(permits)),
            bytes: permits as u64 * UNIT,
            spare_size: 0,
            spares: Arc::default(),
            returned: Arc::default(),
            codecs: Arc::new(Semaphore::new(CODEC_SLOTS)),
        }
    }

    /// This budget, reusing part buffers of `size` bytes (see the module docs).
    pub fn with_part_buffers(mut self, size: u64) -> Self {
        self.spare_size = usize::try_from(size).unwrap_or(0);
        self
    }

    /// Waits for one of the [`CODEC_SLOTS`].
    pub async fn codec(&self) -> CodecSlot {
        // The semaphore is never closed.
        CodecSlot(
            self.codecs
                .clone()
                .acquire_owned()
                .await
                .expect("codec slots are never closed"),
        )
    }

    /// A charged buffer with room for `len` bytes. A request that a part buffer fits (`len` at
    /// most its size and more than half of it) gets a kept one if any, else a new one of the
    /// part size (charged in full, so that it can be reused); others get exactly `len`.
    pub async fn buffer(&self, len: usize) -> Buffer {
        if self.spare_size > 0 && len <= self.spare_size && len > self.spare_size / 2 {
            let n = u32::try_from(units(self.spare_size as u64).min(units(self.bytes)))
                .unwrap_or(u32::MAX);
            loop {
                // Registered before looking, so a buffer kept meanwhile wakes this.
                let returned = self.returned.notified();
                tokio::pin!(returned);
                returned.as_mut().enable();
                let kept = lock(&self.spares).buffers.pop();
                if let Some((bytes, charge)) = kept {
                    return Buffer {
                        bytes,
                        charge,
                        reusable: true,
                    };
                }
                // Room for a new one, or a sent one coming back, whichever comes first.
                tokio::select! {
                    biased;
                    permit = self.semaphore.clone().acquire_many_owned(n) => {
                        return Buffer {
                            bytes: BytesMut::with_capacity(self.spare_size),
                            charge: Charge(permit.ok()),
                            reusable: true,
                        };
                    }
                    () = &mut returned => {}
                }
            }
        }
        let charge = self.charge(len as u64).await;
        Buffer {
            bytes: BytesMut::with_capacity(len),
            charge,
            reusable: false,
        }
    }

    /// Takes back a sent part (the whole of a reusable [`Buffer`], cut from its start) with its
    /// charge, to be handed out again by [`MemoryBudget::buffer`]; frees it instead when
    /// someone waits for room, or when the bytes are still shared.
    pub fn recycle(&self, part: Bytes, charge: Charge) {
        if self.spare_size == 0 || charge.bytes() < self.spare_size as u64 {
            return;
        }
        let Ok(mut bytes) = part.try_into_mut() else {
            return;
        };
        if bytes.capacity() != self.spare_size {
            return;
        }
        bytes.clear();
        let mut spares = lock(&self.spares);
        if spares.waiting == 0 && spares.buffers.len() < self.max_spares() {
            spares.buffers.push((bytes, charge));
            drop(spares);
            self.returned.notify_waiters();
        }
    }

    /// Kept buffers never hold more than the budget (they are charged anyway).
    fn max_spares(&self) -> usize {
        usize::try_from(self.bytes).unwrap_or(usize::MAX) / self.spare_size.max(1)
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
        if let Ok(permit) = self.semaphore.clone().try_acquire_many_owned(n) {
            return Charge(Some(permit));
        }
        // No room: kept buffers give theirs back, and none is kept while this waits.
        let freed = {
            let mut spares = lock(&self.spares);
            spares.waiting += 1;
            std::mem::take(&mut spares.buffers)
        };
        drop(freed);
        let _waiting = Waiting(&self.spares);
        // The semaphore is never closed.
        Charge(self.semaphore.clone().acquire_many_owned(n).await.ok())
    }
}

/// Counts a caller waiting for room until it has it (or is dropped).
struct Waiting<'a>(&'a Mutex<Spares>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(self.0).waiting -= 1;
    }
}

fn lock(spares: &Mutex<Spares>) -> std::sync::MutexGuard<'_, Spares> {
    spares.lock().unwrap_or_else(|e| e.into_inner())
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

    #[tokio::test(start_paused = true)]
    async fn part_buffers_are_reused_within_the_budget() {
        let part = 8 * UNIT as usize;
        let budget = MemoryBudget::new(20 * UNIT).with_part_buffers(part as u64);
        let mut a = budget.buffer(part).await;
        assert!(a.reusable && a.bytes.capacity() == part);
        assert_eq!(a.charge.bytes(), part as u64);
        let ptr = a.bytes.as_ptr();
        // Sent: the whole buffer, cut from its start, comes back with its charge.
        a.bytes.extend_from_slice(&[1u8; 100]);
        let sent = a.bytes.split().freeze();
        drop(a.bytes);
        budget.recycle(sent, a.charge);
        // Still charged while kept: 12 KiB left.
        assert_eq!(budget.semaphore.available_permits(), 12);
        let b = budget.buffer(part - 1).await;
        assert_eq!(b.bytes.as_ptr(), ptr, "the kept buffer is handed out again");
        assert!(b.bytes.is_empty());
        // Shared bytes, or a small buffer, are freed, never kept.
        let shared = Bytes::from(vec![0u8; part]);
        let _clone = shared.clone();
        budget.recycle(shared, budget.charge(part as u64).await);
        assert!(lock(&budget.spares).buffers.is_empty());
        let small = budget.buffer(100).await;
        assert!(!small.reusable && small.charge.bytes() == UNIT);
        drop((b, small));
        assert_eq!(budget.semaphore.available_permits(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn kept_buffers_give_their_room_to_a_waiting_charge() {
        let part = 8 * UNIT as usize;
        let budget = MemoryBudget::new(16 * UNIT).with_part_buffers(part as u64);
        let (a, b) = (budget.buffer(part).await, budget.buffer(part).await);
        for buffer in [a, b] {
            let mut bytes = buffer.bytes;
            bytes.extend_from_slice(b"x");
            budget.recycle(bytes.freeze(), buffer.charge);
        }
        assert_eq!(lock(&budget.spares).buffers.len(), 2);
        // 12 KiB for something else: the kept buffers are freed for it, not waited for.
        let other = budget.charge(12 * UNIT).await;
        assert_eq!(other.bytes(), 12 * UNIT);
        assert!(lock(&budget.spares).buffers.is_empty());
        drop(other);
        // While a charge waits, a part coming back is freed, not kept.
        let (c, other) = (budget.buffer(part).await, budget.charge(8 * UNIT).await);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.charge(8 * UNIT).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let mut bytes = c.bytes;
        bytes.extend_from_slice(b"x");
        budget.recycle(bytes.freeze(), c.charge);
        assert_eq!(waiting.await.unwrap().bytes(), 8 * UNIT);
        assert!(lock(&budget.spares).buffers.is_empty());
        drop(other);
        assert_eq!(lock(&budget.spares).waiting, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_part_buffer_sent_goes_to_an_upload_waiting_for_one() {
        let part = 8 * UNIT as usize;
        let budget = MemoryBudget::new(16 * UNIT).with_part_buffers(part as u64);
        let (mut a, _b) = (budget.buffer(part).await, budget.buffer(part).await);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.buffer(part).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let ptr = a.bytes.as_ptr();
        a.bytes.extend_from_slice(b"part");
        budget.recycle(a.bytes.freeze(), a.charge);
        let c = waiting.await.unwrap();
        assert_eq!(
            c.bytes.as_ptr(),
            ptr,
            "handed over, not freed and allocated again"
        );
        assert_eq!(c.charge.bytes(), part as u64);
    }
}
