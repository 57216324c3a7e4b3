//! How much a target stream can still store: the room check that keeps a decompression bomb (or
//! an honest object too big for the target) from filling anything.

use async_nats::jetstream::account::{Account, Limits};

/// Chunk size of restored objects (async-nats' default, which restore uses).
pub(super) const CHUNK_SIZE: u64 = 128 * 1024;

/// Bytes a stream needs to store an object of `size` bytes: the content, plus per chunk message
/// its subject, headers and framing (well under 256 bytes), plus the meta message.
pub(super) fn stored_size_estimate(size: u64) -> u64 {
    size.saturating_add((size / CHUNK_SIZE + 1).saturating_mul(256))
        .saturating_add(4096)
}

/// The target stream as far as storage limits care.
#[derive(Debug, Clone)]
pub(super) struct StreamUse {
    pub(super) name: String,
    /// `max_bytes` of its config (≤ 0: unlimited; a stream still to be created is unlimited).
    pub(super) max_bytes: i64,
    /// Bytes it stores now.
    pub(super) bytes: u64,
    /// Memory rather than file storage.
    pub(super) memory: bool,
    pub(super) replicas: usize,
}

/// What the target can still store for one object (per replica), with the limit that decides
/// it; `None` when nothing limits it.
///
/// The tightest of: the stream's `max_bytes` minus its bytes; the account's storage limit minus
/// its usage, and the same for the account's tier of this replica count (`R1`, `R3`) when the
/// account has tiered limits. Account usage counts every replica, so those limits are divided by
/// the replica count.
pub(super) fn room(stream: &StreamUse, account: &Account) -> Option<(u64, String)> {
    let mut limits: Vec<(u64, String)> = Vec::new();
    if stream.max_bytes > 0 {
        let max = stream.max_bytes as u64;
        limits.push((
            max.saturating_sub(stream.bytes),
            format!(
                "stream {} max_bytes {max}, {} used",
                stream.name, stream.bytes
            ),
        ));
    }
    let replicas = stream.replicas.max(1) as u64;
    let mut account_limit = |scope: String,
                             limits_of: &Limits,
                             memory_used: u64,
                             storage_used: u64| {
        let (max, used) = if stream.memory {
            (limits_of.max_memory, memory_used)
        } else {
            (limits_of.max_storage, storage_used)
        };
        if let Some(max) = max.filter(|m| *m > 0) {
            let max = max as u64;
            limits.push((
                max.saturating_sub(used) / replicas,
                format!("{scope} jetstream storage limit {max}, {used} used, {replicas} replicas"),
            ));
        }
    };
    account_limit(
        "account".to_string(),
        &account.limits,
        account.memory,
        account.storage,
    );
    if let Some(tier) = account.tiers.get(&format!("R{replicas}")) {
        account_limit(
            format!("account tier R{replicas}"),
            &tier.limits,
            tier.memory,
            tier.storage,
        );
    }
    limits.into_iter().min_by_key(|(room, _)| *room)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn stream(max_bytes: i64, bytes: u64) -> StreamUse {
        StreamUse {
            name: "OBJ_b".into(),
            max_bytes,
            bytes,
            memory: false,
            replicas: 3,
        }
    }

    #[test]
    fn room_is_the_tightest_limit() {
        let unlimited = Account::default();
        assert_eq!(room(&stream(-1, 5), &unlimited), None);
        assert_eq!(room(&stream(0, 5), &unlimited), None);
        let (left, why) = room(&stream(1000, 300), &unlimited).unwrap();
        assert_eq!(left, 700);
        assert!(
            why.contains("OBJ_b") && why.contains("max_bytes 1000"),
            "{why}"
        );
        assert_eq!(room(&stream(1000, 3000), &unlimited).unwrap().0, 0);

        // Account usage counts every replica: 3000 left is 1000 per replica of an R3 stream.
        let mut account = Account::default();
        account.limits.max_storage = Some(10_000);
        account.storage = 7_000;
        let (left, why) = room(&stream(-1, 0), &account).unwrap();
        assert_eq!(left, 1000);
        assert!(
            why.starts_with("account jetstream storage limit 10000"),
            "{why}"
        );
        assert_eq!(room(&stream(500, 0), &account).unwrap().0, 500);

        // A tiered account: the R3 tier's limit applies to an R3 stream.
        let mut tiered = Account::default();
        let mut r3 = async_nats::jetstream::account::Tier::default();
        r3.limits.max_storage = Some(600);
        r3.storage = 0;
        tiered.tiers.insert("R3".into(), r3);
        let (left, why) = room(&stream(-1, 0), &tiered).unwrap();
        assert_eq!(left, 200);
        assert!(why.starts_with("account tier R3"), "{why}");

        // Memory streams are bounded by the memory limit, not the storage one.
        let mut memory = stream(-1, 0);
        memory.memory = true;
        assert_eq!(room(&memory, &account), None);
        account.limits.max_memory = Some(3_000);
        assert_eq!(room(&memory, &account).unwrap().0, 1000);
    }

    #[test]
    fn the_estimate_covers_chunk_overhead() {
        assert!(stored_size_estimate(0) > 0);
        let size = 16 * 1024 * 1024;
        assert!(stored_size_estimate(size) > size + 128 * 100);
        assert_eq!(stored_size_estimate(u64::MAX), u64::MAX);
    }
}
