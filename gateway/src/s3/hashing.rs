//! Readers that watch content as it passes: [`HashingReader`] hashes what is uploaded,
//! [`BodyReader`] tells a failing GetObject body from bad stored bytes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use cim_tiering::digest::{Hasher, Sha256Digest};
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};
use tokio::time::Sleep;

use super::deadlines::BODY_IDLE_TIMEOUT;

/// Hashes and counts plaintext as it is read; fails as soon as more than `limit` bytes arrive.
///
/// Also yields to the scheduler every [`YIELD_EVERY`] bytes. The zstd encoder keeps pulling input
/// within one poll for as long as its output buffer has room, which for compressible content read
/// from memory means megabytes of hashing and compression without an await point; yielding
/// bounds the CPU time of one poll so other tasks on the worker keep running.
pub(super) struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    limit: u64,
    pub(super) oversize: bool,
    since_yield: usize,
}

/// Plaintext bytes hashed and compressed between two yields (~0.5 ms of zstd level 3 here).
const YIELD_EVERY: usize = 256 * 1024;

impl<R> HashingReader<R> {
    pub(super) fn new(inner: R, limit: u64) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(),
            limit,
            oversize: false,
            since_yield: 0,
        }
    }

    pub(super) fn result(&self) -> (Sha256Digest, u64) {
        self.hasher.clone().finish()
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for HashingReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.since_yield >= YIELD_EVERY {
            this.since_yield = 0;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let new = &buf.filled()[before..];
        this.since_yield += new.len();
        this.hasher.update(new);
        if this.hasher.len() > this.limit {
            this.oversize = true;
            // An `AsyncRead` that fails must not hand out bytes.
            buf.set_filled(before);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "content is longer than its recorded size",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

/// The GetObject body, remembering whether it (rather than the decompressor) failed, so that a
/// dropped connection is reported as a transient S3 error and not as corrupted content.
///
/// Also the body's idle-read deadline: a read that waits [`BODY_IDLE_TIMEOUT`] without a byte
/// fails with [`io::ErrorKind::TimedOut`]. The clock runs only while the reader waits for S3,
/// never while the consumer is busy elsewhere.
pub(super) struct BodyReader {
    inner: Pin<Box<dyn AsyncBufRead + Send>>,
    idle: Option<Pin<Box<Sleep>>>,
    /// Whether the body (not the decompressor) failed.
    pub(super) failed: bool,
    /// Bytes read from the body so far.
    pub(super) bytes: u64,
}

impl BodyReader {
    pub(super) fn new(inner: impl AsyncBufRead + Send + 'static) -> Self {
        BodyReader {
            inner: Box::pin(inner),
            idle: None,
            failed: false,
            bytes: 0,
        }
    }
}

/// Polls the idle deadline (arming it on the first wait); the error once it has passed.
fn idle_expired(idle: &mut Option<Pin<Box<Sleep>>>, cx: &mut Context<'_>) -> Option<io::Error> {
    let sleep = idle.get_or_insert_with(|| Box::pin(tokio::time::sleep(BODY_IDLE_TIMEOUT)));
    sleep.as_mut().poll(cx).is_ready().then(|| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("timed out: no data for {BODY_IDLE_TIMEOUT:?}"),
        )
    })
}

impl AsyncRead for BodyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match this.inner.as_mut().poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.idle = None;
                this.bytes += (buf.filled().len() - before) as u64;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => {
                this.failed = true;
                Poll::Ready(Err(e))
            }
            Poll::Pending => match idle_expired(&mut this.idle, cx) {
                Some(e) => {
                    this.failed = true;
                    Poll::Ready(Err(e))
                }
                None => Poll::Pending,
            },
        }
    }
}

impl AsyncBufRead for BodyReader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        match this.inner.as_mut().poll_fill_buf(cx) {
            Poll::Ready(Ok(data)) => {
                this.idle = None;
                Poll::Ready(Ok(data))
            }
            Poll::Ready(Err(e)) => {
                this.failed = true;
                Poll::Ready(Err(e))
            }
            Poll::Pending => match idle_expired(&mut this.idle, cx) {
                Some(e) => {
                    this.failed = true;
                    Poll::Ready(Err(e))
                }
                None => Poll::Pending,
            },
        }
    }

    fn consume(self: Pin<&mut Self>, amt: usize) {
        let this = self.get_mut();
        this.bytes += amt as u64;
        this.inner.as_mut().consume(amt);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use tokio::io::AsyncReadExt;

    use super::*;

    #[tokio::test]
    async fn hashing_reader_hashes_and_stops_at_limit() {
        let data = b"hello world".to_vec();
        let mut r = HashingReader::new(&data[..], 11);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(r.result(), (Sha256Digest::of(&data), 11));

        // Larger than YIELD_EVERY: yields (Pending + wake) along the way, still reads it all.
        let big = vec![1u8; 3 * YIELD_EVERY + 5];
        let mut r = HashingReader::new(&big[..], big.len() as u64);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(r.result(), (Sha256Digest::of(&big), big.len() as u64));

        let mut r = HashingReader::new(&data[..], 5);
        let err = r.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(r.oversize);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_body_times_out_and_is_blamed_on_s3() {
        let (_writer, reader) = tokio::io::duplex(64);
        let mut body = BodyReader::new(tokio::io::BufReader::new(reader));
        let started = tokio::time::Instant::now();
        let err = body.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(body.failed);
        assert_eq!(started.elapsed(), BODY_IDLE_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_but_steady_body_does_not_time_out() {
        let (mut writer, reader) = tokio::io::duplex(64);
        let mut body = BodyReader::new(tokio::io::BufReader::new(reader));
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for _ in 0..5 {
                tokio::time::sleep(BODY_IDLE_TIMEOUT / 2).await;
                writer.write_all(b"x").await.unwrap();
            }
        });
        let mut out = Vec::new();
        body.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"xxxxx");
        assert_eq!(body.bytes, 5);
    }
}
