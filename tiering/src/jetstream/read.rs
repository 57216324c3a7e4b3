//! Reading one stored version of an object: its chunks, by batched direct gets, as an
//! [`AsyncRead`].
//!
//! Why not async-nats' object reader: it creates an ordered push consumer per object (a consumer
//! create and delete through the stream leader, which nats-server keeps for 30 s and caps at
//! 1,000 per stream), and it hashes the content itself — a second SHA-256 pass beside the one
//! every caller of ours makes against the ingest digest. This reader asks for the chunks on
//! `$O.<bucket>.C.<nuid>` in batches ([`super::direct`]) and does not hash: callers check size
//! and SHA-256 against the ingest digest, as they must anyway ([`super::JetStreamTier::read_verified`],
//! the upload role's hashing reader).
//!
//! # Bounds
//! * **Memory:** a batch asks for at most [`BATCH_BYTES`] of chunks, and the next batch is asked
//!   for only when the current one has been handed to a channel of the same size. So at most two
//!   batches (one received, one buffered) are held per reader, whatever the object's size, and
//!   none before the reader is first read.
//! * **Pipelining:** the next batch is requested as soon as the current one is received, while
//!   the caller still consumes it, so the network round trip hides behind the caller's work.
//! * **Time:** every reply must come within [`READ_IDLE_TIMEOUT`](super::READ_IDLE_TIMEOUT);
//!   longer, and the read fails (a stalled server, or chunks purged under a replica that still
//!   answers).
//!
//! # A lagging replica is not corruption
//! Direct gets may be answered by any replica, and a follower may not yet hold the last chunks of
//! an object the leader acknowledged. Chunks that end before the object's size are asked for
//! again (from the last sequence received) a few times with a growing pause; if they still end
//! short, the read fails with [`Error::NotReady`] — retried later like any lag — never with
//! content that would then fail its digest and raise a false integrity alarm.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::direct::{DirectGet, MAX_BATCH};
use super::READ_IDLE_TIMEOUT;
use crate::error::Error;

/// Bytes of chunks asked for in one batched direct get; a reader holds at most twice this. At
/// async-nats' 128 KiB chunks, 8 chunks per request: one round trip per MiB, which loopback
/// answers in a fraction of the time the caller takes to hash and compress that MiB, while
/// `[work] concurrency` readers together hold at most 2 MiB each.
pub const BATCH_BYTES: u64 = 1024 * 1024;

/// Pauses before asking again for chunks that ended short of the object's size (a lagging
/// replica); after the last, the read is [`Error::NotReady`]. About 1.5 s in all.
const SHORT_READ_PAUSES: [Duration; 5] = [
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
];

/// What a reader reads: one version of an object of one bucket's stream.
#[derive(Debug, Clone)]
pub struct ChunkSource {
    /// Tier name, for errors.
    pub tier: String,
    /// The object-store bucket.
    pub bucket: String,
    /// The object's name, for errors.
    pub object: String,
    /// The version's chunk subject, `$O.<bucket>.C.<nuid>`.
    pub subject: String,
    /// The size recorded in the version's meta.
    pub size: u64,
    /// The chunk count recorded in the version's meta.
    pub chunks: u64,
}

impl ChunkSource {
    /// Chunks to ask for per request: [`BATCH_BYTES`] worth at this object's chunk size.
    fn batch_len(&self) -> usize {
        let chunk = self.size.div_ceil(self.chunks.max(1)).max(1);
        usize::try_from(BATCH_BYTES / chunk)
            .unwrap_or(MAX_BATCH)
            .clamp(1, MAX_BATCH)
    }

    fn not_ready(&self, reason: String) -> Error {
        Error::NotReady {
            bucket: self.bucket.clone(),
            object: self.object.clone(),
            tier: self.tier.clone(),
            reason,
        }
    }
}

/// The content of one stored version of an object, read with batched direct gets (see the
/// module docs). Not hashed: callers check it against the ingest digest.
///
/// Errors come as [`io::Error`]s wrapping this crate's [`Error`] (see [`tiering_error`]): a
/// short read is [`Error::NotReady`], a failed or timed-out request [`Error::JetStream`].
/// Dropping the reader stops its requests.
pub struct ObjectReader {
    chunks: mpsc::Receiver<Result<Bytes, Error>>,
    current: Bytes,
    delivered: u64,
    source: ChunkSource,
    fetcher: Fetcher,
    done: bool,
}

/// The task asking for the chunks: not started until the reader is first read, so that a
/// reader opened while its consumer still waits (for room in the upload role's memory budget,
/// say) holds no chunks.
enum Fetcher {
    NotStarted(Box<Start>),
    Running(JoinHandle<()>),
    /// Only while switching from one to the other.
    Gone,
}

/// What the fetcher starts with.
struct Start {
    direct: DirectGet,
    batch: usize,
    tx: mpsc::Sender<Result<Bytes, Error>>,
}

impl ObjectReader {
    /// A reader of `source` through `direct` (the direct gets of the same bucket's stream). The
    /// first request goes out on the first read, not before.
    pub fn new(direct: DirectGet, source: ChunkSource) -> Self {
        let batch = source.batch_len();
        let (tx, rx) = mpsc::channel(batch);
        ObjectReader {
            chunks: rx,
            current: Bytes::new(),
            delivered: 0,
            source,
            fetcher: Fetcher::NotStarted(Box::new(Start { direct, batch, tx })),
            done: false,
        }
    }

    fn start(&mut self) {
        if !matches!(self.fetcher, Fetcher::NotStarted(_)) {
            return;
        }
        if let Fetcher::NotStarted(start) = std::mem::replace(&mut self.fetcher, Fetcher::Gone) {
            let Start { direct, batch, tx } = *start;
            let task = tokio::spawn(fetch(direct, self.source.clone(), batch, tx));
            self.fetcher = Fetcher::Running(task);
        }
    }
}

impl Drop for ObjectReader {
    fn drop(&mut self) {
        if let Fetcher::Running(task) = &self.fetcher {
            task.abort();
        }
    }
}

/// The [`Error`] inside an error an [`ObjectReader`] returned, if it carries one.
pub fn tiering_error(e: io::Error) -> Result<Error, io::Error> {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        let inner = e.into_inner().expect("checked above");
        return Ok(*inner.downcast::<Error>().expect("checked above"));
    }
    Err(e)
}

impl AsyncRead for ObjectReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.start();
        loop {
            if !this.current.is_empty() {
                let n = this.current.len().min(buf.remaining());
                buf.put_slice(&this.current.split_to(n));
                this.delivered += n as u64;
                return Poll::Ready(Ok(()));
            }
            if this.done {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.chunks.poll_recv(cx)) {
                Some(Ok(chunk)) => this.current = chunk,
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Err(io::Error::other(e)));
                }
                None => {
                    this.done = true;
                    // The fetcher stops early only after sending an error; anything else (a
                    // panic) must not look like a complete, short object.
                    if this.delivered < this.source.size {
                        let e = this.source.not_ready(format!(
                            "chunk reader stopped after {} of {} bytes",
                            this.delivered, this.source.size
                        ));
                        return Poll::Ready(Err(io::Error::other(e)));
                    }
                }
            }
        }
    }
}

/// Asks for the chunks batch by batch until `source.size` bytes have been sent to `tx`, or an
/// error has been; stops when the reader is dropped.
async fn fetch(
    direct: DirectGet,
    source: ChunkSource,
    batch_len: usize,
    tx: mpsc::Sender<Result<Bytes, Error>>,
) {
    if let Err(e) = fetch_all(&direct, &source, batch_len, &tx).await {
        let _ = tx.send(Err(e)).await;
    }
}

async fn fetch_all(
    direct: &DirectGet,
    source: &ChunkSource,
    batch_len: usize,
    tx: &mpsc::Sender<Result<Bytes, Error>>,
) -> Result<(), Error> {
    let (mut received, mut chunks_received, mut next_seq) = (0u64, 0u64, 1u64);
    let mut short_reads = 0;
    while received < source.size {
        // Never more than the chunks still missing (one request for a small object).
        let missing = source.chunks.saturating_sub(chunks_received).max(1);
        let want = batch_len.min(usize::try_from(missing).unwrap_or(batch_len));
        let mut batch = tokio::time::timeout(
            READ_IDLE_TIMEOUT,
            direct.next_by_subject(&source.subject, next_seq, want),
        )
        .await
        .map_err(|_| {
            source.not_ready(format!(
                "no answer to a direct get within {READ_IDLE_TIMEOUT:?}"
            ))
        })??;
        let before = received;
        while let Some(message) = batch.next().await? {
            next_seq = message.seq + 1;
            received += message.payload.len() as u64;
            chunks_received += 1;
            if tx.send(Ok(message.payload)).await.is_err() {
                return Ok(()); // the reader was dropped
            }
            if received >= source.size {
                break;
            }
        }
        if received > before {
            short_reads = 0;
            continue;
        }
        // Nothing new: a replica behind the leader, or chunks purged (the object moved on).
        let Some(pause) = SHORT_READ_PAUSES.get(short_reads) else {
            return Err(source.not_ready(format!(
                "its chunks end after {received} of {} bytes (a lagging replica, or purged)",
                source.size
            )));
        };
        short_reads += 1;
        tracing::debug!(
            bucket = %source.bucket,
            object = %source.object,
            received,
            size = source.size,
            "chunks end short of the object's size; asking again"
        );
        tokio::time::sleep(*pause).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn source(size: u64, chunks: u64) -> ChunkSource {
        ChunkSource {
            tier: "hub".into(),
            bucket: "b".into(),
            object: "o".into(),
            subject: "$O.b.C.n".into(),
            size,
            chunks,
        }
    }

    #[test]
    fn batches_hold_a_bounded_number_of_bytes() {
        // async-nats' 128 KiB chunks: 8 per request.
        assert_eq!(source(1 << 30, 8192).batch_len(), 8);
        // Huge chunks: one at a time.
        assert_eq!(source(1 << 30, 16).batch_len(), 1);
        // Tiny chunks: capped by what one request may ask for.
        assert_eq!(source(1 << 20, 1 << 20).batch_len(), MAX_BATCH);
        // Empty objects (no chunks) do not divide by zero.
        assert_eq!(source(0, 0).batch_len(), MAX_BATCH);
    }

    /// A reader asks for nothing until it is first read: an upload that opens it, then waits
    /// for room in the memory budget, holds no chunks meanwhile.
    #[tokio::test]
    async fn nothing_is_fetched_before_the_first_read() {
        // A client that never reaches a server (it keeps trying in the background).
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("127.0.0.1:1")
            .await
            .unwrap();
        let direct = DirectGet::new(client, "hub", "OBJ_b", "hub", "b");
        let mut reader = ObjectReader::new(direct, source(1 << 20, 8));
        assert!(matches!(reader.fetcher, Fetcher::NotStarted(_)));
        tokio::task::yield_now().await;
        assert!(matches!(reader.fetcher, Fetcher::NotStarted(_)));
        // The first read starts the fetcher (which then waits for the server).
        let mut buf = [0u8; 16];
        let read = tokio::io::AsyncReadExt::read(&mut reader, &mut buf);
        assert!(futures::poll!(Box::pin(read)).is_pending());
        assert!(matches!(reader.fetcher, Fetcher::Running(_)));
    }

    #[test]
    fn errors_come_back_out_of_io_errors() {
        let e = io::Error::other(source(1, 1).not_ready("x".into()));
        assert!(matches!(tiering_error(e), Ok(Error::NotReady { .. })));
        let plain = io::Error::new(io::ErrorKind::InvalidData, "bad");
        assert_eq!(
            tiering_error(plain).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }
}
