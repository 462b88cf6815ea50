//! Byte-for-byte relay for CONNECTs that are not intercepted.
//!
//! The relay ends when both directions have closed, or when neither has moved a byte for the
//! idle timeout (a long one-way download keeps it alive).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes moved by a finished relay.
#[derive(Debug, Clone, Copy, Default)]
pub struct Relayed {
    /// Client to upstream.
    pub up: u64,
    /// Upstream to client.
    pub down: u64,
    /// Whether the relay ended because it sat idle.
    pub idled_out: bool,
}

/// Relays between `client` and `upstream` until both sides close or both sit idle for `idle`.
///
/// # Errors
/// The first I/O error on either side.
pub async fn relay<A, B>(client: A, upstream: B, idle: Duration) -> io::Result<Relayed>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let base = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut a = Active {
        inner: client,
        last: last.clone(),
        base,
    };
    let mut b = Active {
        inner: upstream,
        last: last.clone(),
        base,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 64 * 1024, 64 * 1024);
    tokio::pin!(copy);
    loop {
        let since = Duration::from_millis(last.load(Ordering::Relaxed));
        let deadline = base + since + idle;
        tokio::select! {
            res = &mut copy => {
                let (up, down) = res?;
                return Ok(Relayed { up, down, idled_out: false });
            }
            _ = tokio::time::sleep_until(deadline) => {
                let now_ms = base.elapsed().as_millis() as u64;
                if now_ms.saturating_sub(last.load(Ordering::Relaxed)) >= idle.as_millis() as u64 {
                    return Ok(Relayed { idled_out: true, ..Relayed::default() });
                }
            }
        }
    }
}

/// Wraps a stream and stamps the time of the last read that produced bytes.
struct Active<T> {
    inner: T,
    last: Arc<AtomicU64>,
    base: Instant,
}

impl<T: AsyncRead + Unpin> AsyncRead for Active<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.last
                .store(self.base.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Active<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn relays_both_ways_and_counts() {
        let (client, mut client_far) = tokio::io::duplex(1024);
        let (upstream, mut upstream_far) = tokio::io::duplex(1024);
        let task = tokio::spawn(relay(client, upstream, Duration::from_secs(5)));
        client_far.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        upstream_far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        upstream_far.write_all(b"pong!").await.unwrap();
        let mut buf = [0u8; 5];
        client_far.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong!");
        drop(client_far);
        drop(upstream_far);
        let r = task.await.unwrap().unwrap();
        assert_eq!((r.up, r.down, r.idled_out), (4, 5, false));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_relay_is_closed() {
        let (client, _client_far) = tokio::io::duplex(1024);
        let (upstream, _upstream_far) = tokio::io::duplex(1024);
        let r = relay(client, upstream, Duration::from_secs(30)).await.unwrap();
        assert!(r.idled_out);
    }
}
