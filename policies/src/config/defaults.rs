//! Default values of optional keys. This is the only place defaults live.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use super::{S3Flavor, S3Verify};

/// `[nats] replicas`: replicas of the control-plane streams.
pub const NATS_REPLICAS: usize = 3;
/// `[tiers.<name>] replicas` of a JetStream tier.
pub const JETSTREAM_REPLICAS: usize = 1;
/// Allowed range of every `replicas` key.
pub const REPLICAS_RANGE: RangeInclusive<i64> = 1..=5;
/// `[tiers.<name>] prefix` of an S3 tier.
pub const S3_PREFIX: &str = "";
/// `[tiers.<name>] flavor` of an S3 tier.
pub const S3_FLAVOR: S3Flavor = S3Flavor::Other;
/// `[tiers.<name>] retention` of an S3 tier: Wasabi bills every stored object for at least 90
/// days, so removing anything earlier would be billed anyway (and lose the chance to restore).
pub const S3_RETENTION: Duration = Duration::from_secs(90 * 86_400);
/// `[tiers.<name>] verify` of an S3 tier of `flavor`: `crc32c` where the service is known to
/// check `x-amz-checksum-crc32c` on receipt and echo it (AWS, Garage ≥ 1.0, MinIO); `md5`
/// elsewhere (every S3 implementation checks `Content-MD5`, Wasabi included).
pub fn s3_verify(flavor: S3Flavor) -> S3Verify {
    match flavor {
        S3Flavor::Aws | S3Flavor::Garage | S3Flavor::Minio => S3Verify::Crc32c,
        S3Flavor::Wasabi | S3Flavor::Other => S3Verify::Md5,
    }
}
/// `[metrics] listen`.
pub const METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9464);
/// `[manager] interval`.
/// One second: a pass reads only what changed since the last one (the manager follows each
/// bucket's stream), so passes are cheap, and leaf copies are evicted within seconds of
/// replication.
pub const MANAGER_INTERVAL: Duration = Duration::from_secs(1);
/// `[work] stream`.
pub const WORK_STREAM: &str = "CIM_WORK";
/// `[work] ack_wait`.
pub const WORK_ACK_WAIT: Duration = Duration::from_secs(60);
/// `[work] max_deliver`.
pub const WORK_MAX_DELIVER: i64 = 20;
/// `[work] concurrency`: items a role works on at once. Small objects are bound by round trips,
/// not bytes, so they need many in flight; large ones share `[upload] memory_budget_mib`, so
/// more of them in flight costs no memory beyond each one's hub-read batches.
pub const WORK_CONCURRENCY: usize = 8;
/// `[upload] part_size_mib`.
pub const UPLOAD_PART_SIZE_MIB: u64 = 16;
/// Allowed range of `[upload] part_size_mib` (S3/Wasabi part size limits).
pub const UPLOAD_PART_SIZE_MIB_RANGE: RangeInclusive<i64> = 5..=5120;
/// `[upload] multipart_threshold_mib`.
pub const UPLOAD_MULTIPART_THRESHOLD_MIB: u64 = 16;
/// Allowed range of `[upload] multipart_threshold_mib` (a single S3 PUT
/// is limited to 5 GiB).
pub const UPLOAD_MULTIPART_THRESHOLD_MIB_RANGE: RangeInclusive<i64> = 1..=5120;
/// `[upload] zstd_level`.
pub const UPLOAD_ZSTD_LEVEL: i32 = 3;
/// Allowed range of `[upload] zstd_level`.
pub const UPLOAD_ZSTD_LEVEL_RANGE: RangeInclusive<i64> = 1..=19;
/// `[upload] memory_budget_mib`: four default-size part buffers (one per codec slot) and 4 MiB
/// of room beside them for small objects and the short last parts of blobs. Why the room: with
/// exactly four parts' worth, every blob just over a part (16 MiB of incompressible content is
/// 16 MiB + ~400 bytes once compressed) waited for room for its last bytes, and a wait for room
/// frees the kept part buffers, so every part buffer was allocated afresh (measured: a sixth of
/// the upload role's CPU in page faults). With the room, kept buffers are reused. With a role's
/// other memory (runtime, clients, the hub read batches of a few MiB per object in flight) the
/// upload role stays below 128 MiB RSS.
pub const UPLOAD_MEMORY_BUDGET_MIB: u64 = 68;
/// Allowed range of `[upload] memory_budget_mib`: at least room for a part being filled and
/// one being sent at S3's smallest part size, rounded up.
pub const UPLOAD_MEMORY_BUDGET_MIB_RANGE: RangeInclusive<i64> = 16..=1_048_576;
/// `[restore] concurrency`: objects restored at once. Small objects spend their time waiting for
/// round trips (an S3 GET of a 4 KiB object takes ~45 ms on Garage, and each object needs two):
/// measured, 32 gives ~370 objects/s of 4 KiB, so 1,000/s takes about 128. Memory does not grow
/// with it: the objects in flight share restore's 64 MiB budget (a 4 KiB object costs ~450 KiB
/// of it, a large one ~12.5 MiB), so large objects go a few at a time.
pub const RESTORE_CONCURRENCY: usize = 128;
/// `[catalog] bucket`.
pub const CATALOG_BUCKET: &str = "cim_catalog";
/// `[access] bucket`: the KV bucket of the objects' last reads.
pub const ACCESS_BUCKET: &str = "cim_access";
/// `[access] interval`: a reader writes an object's access record only when the stored one is
/// older than this, so a hot object costs at most one KV write per interval; `idle` is then
/// known to within this much, which is nothing against the days an `idle` is written in.
pub const ACCESS_INTERVAL: Duration = Duration::from_secs(3_600);
