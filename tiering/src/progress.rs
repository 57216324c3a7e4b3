//! Progress of one work item: what the worker watches to tell a slow handler from a stuck one.
//!
//! A handler receives a [`Progress`] with its item and reports bytes as they move, usually by
//! wrapping the reader or writer of its transfer ([`Progress::reader`], [`Progress::writer`]).
//! The worker keeps an item whose handler is moving bytes, however long it takes, and abandons
//! one that moved nothing for `[work] ack_wait` (see [`crate::work`]).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// A cheap, cloneable progress handle for one work item.
#[derive(Debug, Clone)]
pub struct Progress {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    start: Instant,
    /// Milliseconds after `start` of the last progress.
    last_ms: AtomicU64,
    bytes: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    /// A handle whose clock starts now (starting counts as progress).
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                start: Instant::now(),
                last_ms: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
            }),
        }
    }

    /// Records that `bytes` moved just now (0: a step finished without moving data).
    pub fn advance(&self, bytes: u64) {
        let now = self.inner.start.elapsed().as_millis() as u64;
        self.inner.last_ms.fetch_max(now, Ordering::Relaxed);
        self.inner.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// How long since the last progress.
    pub fn idle(&self) -> Duration {
        let now = self.inner.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.inner.last_ms.load(Ordering::Relaxed)))
    }

    /// Bytes reported so far.
    pub fn bytes(&self) -> u64 {
        self.inner.bytes.load(Ordering::Relaxed)
    }

    /// `inner`, reporting every byte read from it.
    pub fn reader<R>(&self, inner: R) -> Tracked<R> {
        Tracked {
            inner,
            progress: self.clone(),
        }
    }

    /// `inner`, reporting every byte written to it.
    pub fn writer<W>(&self, inner: W) -> Tracked<W> {
        Tracked {
            inner,
            progress: self.clone(),
        }
    }
}

/// A reader or writer that reports the bytes through it to a [`Progress`].
#[derive(Debug)]
pub struct Tracked<T> {
    inner: T,
    progress: Progress,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.progress.advance(n as u64);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            if n > 0 {
                self.progress.advance(n as u64);
            }
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn idle_time_restarts_with_every_byte_moved() {
        let progress = Progress::new();
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(progress.idle(), Duration::from_secs(7));

        let mut data = progress.reader(&b"hello"[..]);
        let mut out = Vec::new();
        data.read_to_end(&mut out).await.unwrap();
        assert_eq!(progress.idle(), Duration::ZERO);

        tokio::time::advance(Duration::from_secs(3)).await;
        let mut sink = progress.writer(tokio::io::sink());
        sink.write_all(b" world").await.unwrap();
        assert_eq!(progress.idle(), Duration::ZERO);
        assert_eq!(progress.bytes(), 11);

        tokio::time::advance(Duration::from_secs(2)).await;
        progress.advance(0);
        assert_eq!(
            progress.idle(),
            Duration::ZERO,
            "a finished step counts too"
        );
    }
}
