//! `raw-nats`: object-store put and get on the hub cluster with the fastest client we can write
//! — the NATS-side ceiling that `upload` reads from and `restore` writes into.
//!
//! The bucket is a hub bucket like ours (domain `hub`, 3 replicas, the stream configuration
//! `cim_tiering` creates), and the objects are stored exactly as async-nats stores them
//! (128 KiB chunks on `$O.<bucket>.C.<nuid>`, then the meta message with `Nats-Rollup: sub`), so
//! any object-store client reads them back. What differs from async-nats' `ObjectStore::put` is
//! the pacing: it waits for each chunk's ack before sending the next, which bounds it by chunk
//! size / round-trip time; here up to [`ACK_WINDOW`] chunk acks per object are in flight. The meta
//! message goes out only once every chunk is acknowledged, so an object becomes visible only
//! when complete — the guarantee any writer must keep. Hashing (SHA-256, for the meta's digest)
//! is part of the put, as for any writer.
//!
//! The get reads each object's meta (a direct get of the last message on its meta subject) and
//! then its chunks with batched direct gets (ADR-31, nats-server ≥ 2.11; see [`read_chunks`]),
//! counting bytes; it does not hash (like `raw-s3`'s GET). Integrity is still checked: after the
//! timed put, one object is read back with async-nats' own `ObjectStore::get` and compared with
//! the source file's SHA-256, and every timed get must count exactly the object's size.

use std::collections::VecDeque;
use std::future::Future;
use std::io::Read as _;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use async_nats::jetstream::object_store::{ObjectInfo, ObjectOptions};
use async_nats::{HeaderMap, Subject};
use bytes::{Bytes, BytesMut};
use cim_tiering::digest::{Hasher, Sha256Digest};
use cim_tiering::jetstream::{bucket_stream_config, chunk_subject, meta_subject, stream_name};
use futures::StreamExt as _;
use tokio::io::AsyncReadExt as _;

use super::raw_copy;
use crate::data::DataSet;
use crate::env::Env;
use crate::measure::Run;

/// Chunk size, as async-nats writes objects.
pub const CHUNK_SIZE: usize = 128 * 1024;
/// Chunk publish acks in flight per object: enough to keep the pipe to the stream leader full
/// (16 MiB per object) without the leader's proposal queue growing without bound.
pub const ACK_WINDOW: usize = 128;
/// Replicas of the bucket, as on our hub tier.
pub const HUB_REPLICAS: usize = 3;
/// Chunks asked for in one batched direct get (32 MiB): few round trips per object, while a
/// reply stays far below the subscription's buffer.
pub const GET_BATCH: usize = 256;
/// The hub's JetStream domain.
const DOMAIN: &str = cim_tests::HUB_DOMAIN;
/// Longest wait for any single ack or reply (the default 5 s is short for a loaded 2-core box).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// The four runs of this scenario, in row order.
#[derive(Debug)]
pub struct Runs {
    /// `raw-nats put`.
    pub put: Run,
    /// `raw-nats get`.
    pub get: Run,
    /// `raw copy up` (see [`super::raw_copy`]).
    pub copy_up: Run,
    /// `raw copy down`.
    pub copy_down: Run,
}

/// Puts then gets every object of `set` in hub bucket `bucket` (created, and deleted
/// afterwards), `concurrency` objects in flight; then copies them to S3 under `prefix` and
/// back into the bucket under new names (the `raw copy` rows; the S3 objects are deleted
/// afterwards).
///
/// Each in-flight slot has its own connection, so one client's I/O task never serializes them.
/// Errors name the object.
pub async fn run(
    env: &Env,
    set: &DataSet,
    bucket: &str,
    prefix: &str,
    concurrency: usize,
) -> anyhow::Result<Runs> {
    anyhow::ensure!(!set.files.is_empty(), "raw-nats: the data set is empty");
    let admin = hub_context(env).await?;
    // A bucket left over by an interrupted run would mix old objects into the counts.
    let _ = admin.delete_stream(stream_name(bucket)).await;
    admin
        .create_stream(bucket_stream_config(bucket, HUB_REPLICAS, None))
        .await
        .with_context(|| format!("raw-nats: creating hub bucket {bucket}"))?;
    let keys: Vec<String> = (0..set.files.len())
        .map(|i| format!("{prefix}{}", set.name(i)))
        .collect();
    let result = put_and_get(env, &admin, set, bucket, &keys, concurrency.max(1)).await;
    let deleted = admin.delete_stream(stream_name(bucket)).await;
    let cleanup = env.s3.delete_objects(&keys).await;
    let runs = result?;
    deleted.with_context(|| format!("raw-nats: deleting hub bucket {bucket}"))?;
    cleanup.context("raw copy: deleting the S3 objects afterwards")?;
    Ok(runs)
}

/// The timed put, the untimed checks between, the timed get, then the timed copies up (to
/// `keys`) and down (to `down-<name>`).
async fn put_and_get(
    env: &Env,
    admin: &jetstream::Context,
    set: &DataSet,
    bucket: &str,
    keys: &[String],
    concurrency: usize,
) -> anyhow::Result<Runs> {
    let mut contexts = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        contexts.push(hub_context(env).await?);
    }
    let set = Arc::new(set.clone());
    let bucket: Arc<str> = Arc::from(bucket);

    let (s, b) = (set.clone(), bucket.clone());
    let (elapsed, latencies) = timed(&contexts, set.files.len(), move |js, i| {
        let (s, b) = (s.clone(), b.clone());
        async move { put_object(&js, &b, &s.name(i), &s.files[i], s.size).await }
    })
    .await
    .context("raw-nats put")?;
    let put = Run::stored_as_is(&set, elapsed, latencies);

    settle(env, admin, &bucket).await?;
    let last = set.files.len() - 1;
    verify_with_async_nats(admin, &bucket, &set.name(last), &set.files[last]).await?;

    let (s, b) = (set.clone(), bucket.clone());
    let (elapsed, latencies) = timed(&contexts, set.files.len(), move |js, i| {
        let (s, b) = (s.clone(), b.clone());
        async move { get_object(&js, &b, &s.name(i), s.size).await }
    })
    .await
    .context("raw-nats get")?;
    let get = Run::stored_as_is(&set, elapsed, latencies);

    let s3 = env.s3.client();
    let keys: Arc<[String]> = Arc::from(keys);
    let s3_bucket: Arc<str> = Arc::from(env.s3.bucket.as_str());
    let (s, b, k, c, sb) = (
        set.clone(),
        bucket.clone(),
        keys.clone(),
        s3.clone(),
        s3_bucket.clone(),
    );
    let (elapsed, latencies) = timed(&contexts, set.files.len(), move |js, i| {
        let (s, b, k, c, sb) = (s.clone(), b.clone(), k.clone(), c.clone(), sb.clone());
        async move { raw_copy::up(&js, &c, &sb, &b, &s.name(i), &k[i], s.size).await }
    })
    .await
    .context("raw copy up")?;
    let copy_up = Run::stored_as_is(&set, elapsed, latencies);

    let (s, b) = (set.clone(), bucket.clone());
    let (elapsed, latencies) = timed(&contexts, set.files.len(), move |js, i| {
        let (s, b, k, c, sb) = (
            s.clone(),
            b.clone(),
            keys.clone(),
            s3.clone(),
            s3_bucket.clone(),
        );
        async move {
            let name = format!("down-{}", s.name(i));
            raw_copy::down(&js, &c, &sb, &k[i], &b, &name, s.size).await
        }
    })
    .await
    .context("raw copy down")?;
    let copy_down = Run::stored_as_is(&set, elapsed, latencies);
    Ok(Runs {
        put,
        get,
        copy_up,
        copy_down,
    })
}

/// A JetStream context for the hub domain on a connection of its own.
async fn hub_context(env: &Env) -> anyhow::Result<jetstream::Context> {
    let client = env.topology.hub.connect().await?;
    let mut js = jetstream::with_domain(client, DOMAIN);
    js.set_timeout(REPLY_TIMEOUT);
    Ok(js)
}

/// Runs `op(context, i)` for every object index `i` below `count`, one worker per context
/// (so `contexts.len()` objects in flight), each worker taking the next index as it finishes
/// one. Returns the time from the first start to the last end and each object's latency. The
/// first error aborts the rest (dropping the join set cancels the other workers).
async fn timed<F, Fut>(
    contexts: &[jetstream::Context],
    count: usize,
    op: F,
) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: Fn(jetstream::Context, usize) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    let start = Instant::now();
    for js in contexts {
        let (js, next, op) = (js.clone(), next.clone(), op.clone());
        workers.spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let began = Instant::now();
                op(js.clone(), i).await?;
                latencies.push(began.elapsed());
            }
        });
    }
    let mut latencies = Vec::with_capacity(count);
    while let Some(done) = workers.join_next().await {
        latencies.extend(done.context("a worker panicked")??);
    }
    let elapsed = start.elapsed();
    anyhow::ensure!(
        latencies.len() == count,
        "{} of {count} objects done",
        latencies.len()
    );
    Ok((elapsed, latencies))
}

/// Stores one object: chunks published with up to [`ACK_WINDOW`] acks in flight (awaited in
/// order) while hashing, then — every chunk acknowledged — the meta message as async-nats
/// writes it. Fails if the file does not hold `expected_size` bytes.
async fn put_object(
    js: &jetstream::Context,
    bucket: &str,
    name: &str,
    path: &Path,
    expected_size: u64,
) -> anyhow::Result<()> {
    let fail = || format!("raw-nats put of {name} ({})", path.display());
    let mut file = std::fs::File::open(path).with_context(fail)?;
    // The data set lives on tmpfs: a read is a memory copy, not worth a blocking thread.
    let chunks = std::iter::from_fn(|| match read_chunk(&mut file) {
        Ok(chunk) if chunk.is_empty() => None,
        other => Some(other),
    });
    put_chunks(js, bucket, name, chunks, expected_size)
        .await
        .with_context(fail)
}

/// Stores object `name` from `chunks` (each at most [`CHUNK_SIZE`]): published with up to
/// [`ACK_WINDOW`] acks in flight (awaited in order) while hashing, then — every chunk
/// acknowledged — the meta message as async-nats writes it. Fails unless the chunks hold
/// `expected_size` bytes.
pub async fn put_chunks(
    js: &jetstream::Context,
    bucket: &str,
    name: &str,
    chunks: impl Iterator<Item = std::io::Result<Bytes>>,
    expected_size: u64,
) -> anyhow::Result<()> {
    let fail = || format!("storing {name} in hub bucket {bucket}");
    let nuid = nuid::next().to_string();
    let subject = Subject::from(chunk_subject(bucket, &nuid));
    let mut hasher = Hasher::new();
    let mut acks = VecDeque::with_capacity(ACK_WINDOW);
    let mut count = 0usize;
    for chunk in chunks {
        let chunk = chunk.with_context(fail)?;
        hasher.update(&chunk);
        count += 1;
        if acks.len() == ACK_WINDOW {
            let ack: jetstream::context::PublishAckFuture =
                acks.pop_front().context("ack window")?;
            ack.await.with_context(fail)?;
        }
        acks.push_back(
            js.publish(subject.clone(), chunk)
                .await
                .with_context(fail)?,
        );
    }
    for ack in acks {
        ack.await.with_context(fail)?;
    }
    let (digest, size) = hasher.finish();
    anyhow::ensure!(
        size == expected_size,
        "{}: the file holds {size} bytes, the data set says {expected_size}",
        fail()
    );
    let info = object_info(bucket, name, &nuid, size, count, &digest);
    let payload = Bytes::from(serde_json::to_vec(&info)?);
    js.publish_with_headers(meta_subject(bucket, name), rollup_headers(), payload)
        .await
        .with_context(fail)?
        .await
        .with_context(fail)?;
    Ok(())
}

/// Up to [`CHUNK_SIZE`] bytes from `file` (fewer only at its end; empty at the end).
fn read_chunk(file: &mut std::fs::File) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(CHUNK_SIZE);
    let mut filled = 0;
    while filled < CHUNK_SIZE {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    buf.truncate(filled);
    Ok(buf.freeze())
}

/// The meta message of one stored object, field for field what async-nats' `put` writes.
pub fn object_info(
    bucket: &str,
    name: &str,
    nuid: &str,
    size: u64,
    chunks: usize,
    digest: &Sha256Digest,
) -> ObjectInfo {
    ObjectInfo {
        name: name.to_string(),
        description: None,
        metadata: Default::default(),
        headers: None,
        options: Some(ObjectOptions {
            link: None,
            max_chunk_size: Some(CHUNK_SIZE),
        }),
        bucket: bucket.to_string(),
        nuid: nuid.to_string(),
        size: size as usize,
        chunks,
        modified: Some(time::OffsetDateTime::now_utc()),
        digest: Some(digest.to_nats()),
        deleted: false,
    }
}

/// `Nats-Rollup: sub`: a new meta message replaces the object's previous ones.
pub fn rollup_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("Nats-Rollup", "sub");
    headers
}

/// Reads `name` back with async-nats' own `ObjectStore::get` (which checks the meta's digest)
/// and compares its SHA-256 with the source file's.
async fn verify_with_async_nats(
    js: &jetstream::Context,
    bucket: &str,
    name: &str,
    path: &Path,
) -> anyhow::Result<()> {
    let fail = || format!("raw-nats: reading {name} back with async-nats");
    let store = js.get_object_store(bucket).await.with_context(fail)?;
    let mut object = store.get(name).await.with_context(fail)?;
    let (nuid, chunks) = (object.info.nuid.clone(), object.info.chunks);
    // Plain reads, not `read_to_end`: async-nats hands over the last chunk together with a
    // digest error, which `read_to_end` does not expect.
    let mut hasher = Hasher::new();
    let mut buf = vec![0u8; CHUNK_SIZE];
    loop {
        match object.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) => {
                let stored = stored_chunks(js, bucket, &nuid).await;
                return Err(e).with_context(|| {
                    format!(
                        "{} after {} bytes (meta: {chunks} chunks; stream: {stored:?})",
                        fail(),
                        hasher.len()
                    )
                });
            }
        }
    }
    let source = std::fs::read(path).with_context(fail)?;
    let (digest, size) = hasher.finish();
    anyhow::ensure!(
        digest == Sha256Digest::of(&source),
        "{}: the {size} bytes read do not match the {} bytes of {}",
        fail(),
        source.len(),
        path.display()
    );
    Ok(())
}

/// How many chunk messages the stream holds for `nuid` (for error messages).
async fn stored_chunks(js: &jetstream::Context, bucket: &str, nuid: &str) -> anyhow::Result<u64> {
    use futures::TryStreamExt as _;
    let stream = js.get_stream(stream_name(bucket)).await?;
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(chunk_subject(bucket, nuid))
        .await?
        .try_collect()
        .await?;
    Ok(subjects.iter().map(|(_, n)| *n as u64).sum())
}

/// Waits until every hub node holds the bucket's stream up to the leader's last sequence
/// (see [`cim_tests::Hub::settle`]: reads right after the puts may be answered by the third
/// replica, which the acknowledgements did not wait for).
pub(crate) async fn settle(env: &Env, js: &jetstream::Context, bucket: &str) -> anyhow::Result<()> {
    env.topology
        .hub
        .settle(js, &stream_name(bucket), REPLY_TIMEOUT)
        .await
        .context("raw-nats: bucket replicas in sync")
}

/// Reads one object: its meta, then its chunks, counting bytes; the count must equal the size
/// the meta and the data set give.
async fn get_object(
    js: &jetstream::Context,
    bucket: &str,
    name: &str,
    expected_size: u64,
) -> anyhow::Result<()> {
    let fail = || format!("raw-nats get of {name}");
    let info = read_meta(js, bucket, name).await.with_context(fail)?;
    anyhow::ensure!(
        info.size as u64 == expected_size,
        "{}: the meta says {} bytes, the data set {expected_size}",
        fail(),
        info.size
    );
    let read = read_chunks(js, bucket, &info.nuid, expected_size)
        .await
        .with_context(fail)?;
    anyhow::ensure!(
        read == expected_size,
        "{}: read {read} bytes of {expected_size}",
        fail()
    );
    Ok(())
}

/// The object's current meta, by a direct get of the last message on its meta subject.
pub async fn read_meta(
    js: &jetstream::Context,
    bucket: &str,
    name: &str,
) -> anyhow::Result<ObjectInfo> {
    let stream = js.get_stream_no_info(stream_name(bucket)).await?;
    let message = stream
        .direct_get_last_for_subject(meta_subject(bucket, name))
        .await?;
    Ok(serde_json::from_slice(&message.payload)?)
}

/// Reads the chunks on `$O.<bucket>.C.<nuid>` with batched direct gets (`next_by_subj`, up to
/// [`GET_BATCH`] per request), each batch starting after the last sequence of the previous one,
/// until `size` bytes have arrived; returns the bytes counted.
///
/// Chosen over an ordered push consumer (what async-nats' `get` uses; one consumer created per
/// object), tried on this machine's test topology with the same code otherwise (debug build,
/// 2 loaded cores, medians of 6 runs): 4 KiB × 200 objects, 4 in flight, 808 vs 638 objects/s
/// (1 in flight: 503 vs 497); 1 MiB × 32: 185 vs 182 MiB/s; 8 MiB × 8: 295 vs 339 MiB/s at 4 in
/// flight and 326 vs 328 at 1 — a tie for large objects within the noise, a clear gain for
/// small ones, where creating a consumer costs a round trip through the meta leader.
async fn read_chunks(
    js: &jetstream::Context,
    bucket: &str,
    nuid: &str,
    size: u64,
) -> anyhow::Result<u64> {
    read_chunks_into(js, bucket, nuid, size, |_| ()).await
}

/// [`read_chunks`], handing each chunk's payload to `sink` in order (the `raw copy` baseline
/// keeps them; the get only counts).
pub async fn read_chunks_into(
    js: &jetstream::Context,
    bucket: &str,
    nuid: &str,
    size: u64,
    mut sink: impl FnMut(Bytes),
) -> anyhow::Result<u64> {
    let client = js.client();
    let api = format!("$JS.{DOMAIN}.API.DIRECT.GET.{}", stream_name(bucket));
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    let subject = chunk_subject(bucket, nuid);
    let (mut read, mut next_seq) = (0u64, 1u64);
    while read < size {
        let request =
            serde_json::json!({ "seq": next_seq, "next_by_subj": subject, "batch": GET_BATCH });
        client
            .publish_with_reply(api.clone(), inbox.clone(), request.to_string().into())
            .await?;
        let before = read;
        loop {
            let reply = tokio::time::timeout(REPLY_TIMEOUT, replies.next())
                .await
                .context("no reply to a direct get")?
                .context("the reply subscription ended")?;
            match reply.status.map(|s| s.as_u16()) {
                None => {
                    read += reply.payload.len() as u64;
                    next_seq = sequence_of(&reply)? + 1;
                    sink(reply.payload);
                }
                // End of batch (204), or nothing left on the subject (404).
                Some(204) | Some(404) => break,
                Some(other) => anyhow::bail!(
                    "direct get failed: {other} {}",
                    reply.description.unwrap_or_default()
                ),
            }
        }
        anyhow::ensure!(
            read > before,
            "chunks end after {read} of {size} bytes (sequence {next_seq})"
        );
    }
    Ok(read)
}

/// The stream sequence a direct-get reply carries (`Nats-Sequence`).
fn sequence_of(reply: &async_nats::Message) -> anyhow::Result<u64> {
    reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Sequence"))
        .and_then(|v| v.as_str().parse().ok())
        .context("a direct-get reply without Nats-Sequence")
}
