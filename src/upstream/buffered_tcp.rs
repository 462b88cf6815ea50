//! The TCP stream under an upstream TLS session, read through a buffer.
//!
//! rustls asks its transport for at most 4 KiB at a time (rustls `DeframerVecBuffer::
//! prepare_read`), so a blob arriving at 600 MB/s cost 150,000 `recv` calls a second, each of
//! them also acknowledging data (and, over loopback, running the sender's TCP work). With a
//! [`READ_BUFFER`] under rustls one `recv` takes what the socket holds and rustls copies its
//! 4 KiB from memory. Writes pass straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio::net::TcpStream;

/// Bytes one `recv` may take from an upstream socket.
pub const READ_BUFFER: usize = 64 * 1024;

/// A connected upstream socket with a read buffer.
#[derive(Debug)]
pub struct BufferedTcp {
    inner: BufReader<TcpStream>,
}

impl BufferedTcp {
    /// Buffers reads from `stream`.
    pub fn new(stream: TcpStream) -> Self {
        Self {
            inner: BufReader::with_capacity(READ_BUFFER, stream),
        }
    }
}

impl AsyncRead for BufferedTcp {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for BufferedTcp {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Connection for BufferedTcp {
    fn connected(&self) -> Connected {
        self.inner.get_ref().connected()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    #[tokio::test]
    async fn bytes_pass_both_ways_unchanged() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = vec![0u8; 300_000];
            s.read_exact(&mut got).await.unwrap();
            s.write_all(&got).await.unwrap();
        });
        let mut client = BufferedTcp::new(TcpStream::connect(addr).await.unwrap());
        let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&sent).await.unwrap();
        let mut back = Vec::new();
        // Small reads, as rustls makes them, come out of the buffer in order.
        let mut piece = [0u8; 4096];
        while back.len() < sent.len() {
            let n = client.read(&mut piece).await.unwrap();
            assert!(n > 0);
            back.extend_from_slice(&piece[..n]);
        }
        assert_eq!(back, sent);
        assert!(!client.connected().is_proxied());
        echo.await.unwrap();
    }
}
