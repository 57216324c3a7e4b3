//! Readers that watch content as it passes: [`HashingReader`] hashes what is uploaded,
//! [`BodyReader`] tells a failing GetObject body from bad stored bytes.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use cim_tiering::digest::{Hasher, Sha256Digest};
use tokio::io::{AsyncBufRead, AsyncRead, ReadBuf};

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
pub(super) struct BodyReader {
    pub(super) inner: Pin<Box<dyn AsyncBufRead + Send>>,
    pub(super) failed: bool,
    pub(super) bytes: u64,
}

impl AsyncRead for BodyReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = ready!(this.inner.as_mut().poll_read(cx, buf));
        match &result {
            Ok(()) => this.bytes += (buf.filled().len() - before) as u64,
            Err(_) => this.failed = true,
        }
        Poll::Ready(result)
    }
}

impl AsyncBufRead for BodyReader {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        match ready!(this.inner.as_mut().poll_fill_buf(cx)) {
            Ok(data) => Poll::Ready(Ok(data)),
            Err(e) => {
                this.failed = true;
                Poll::Ready(Err(e))
            }
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
}
