//! One TLS record per small HTTP/1.1 response.
//!
//! Pingora writes a response head and then its body as two writes, and each write on a TLS
//! stream is a TLS record of its own: a second encryption, record header and tag for every
//! small response (and a second record for the client to decrypt). [`Coalesced`] sits
//! between Pingora and the TLS stream of an HTTP/1.1 connection on the HTTPS listener and
//! holds small writes until the flush that Pingora issues at the end of each body chunk (or
//! of a head without a body), then hands them to OpenSSL in one piece.
//!
//! Nothing reaches the network later than before: below TLS, Pingora's socket buffer only
//! sends at a flush as well. Writes of a full record or more go straight through (after
//! what is held), so large bodies are not copied.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Duration,
};

use async_trait::async_trait;
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    TimingDigest, UniqueID, UniqueIDType,
    raw_connect::ProxyDigest,
    tls::{SslDigest, TlsRef},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes up to this many bytes are held until the flush: the plaintext of one TLS record.
const HOLD_LIMIT: usize = 16 * 1024;

/// The buffer's capacity kept between responses; a larger one (after a body chunk of many
/// kilobytes) is released, so an idle connection holds at most this much.
const KEEP_CAPACITY: usize = 4 * 1024;

/// A stream whose small writes are held until the flush.
#[derive(Debug)]
pub struct Coalesced<S> {
    inner: S,
    held: Vec<u8>,
    /// How much of `held` the inner stream has already taken.
    taken: usize,
}

impl<S> Coalesced<S> {
    /// Holds `inner`'s small writes until each flush.
    pub const fn new(inner: S) -> Self {
        Self {
            inner,
            held: Vec::new(),
            taken: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> Coalesced<S> {
    /// Hands everything held to the inner stream.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.taken < self.held.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.held[self.taken..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.taken += n;
        }
        self.taken = 0;
        if self.held.capacity() > KEEP_CAPACITY {
            self.held = Vec::new();
        } else {
            self.held.clear();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.held.len() + buf.len() > HOLD_LIMIT {
            ready!(this.poll_release(cx))?;
            if buf.len() > HOLD_LIMIT {
                return Pin::new(&mut this.inner).poll_write(cx, buf);
            }
        }
        this.held.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_release(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_release(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

#[async_trait]
impl<S: AsyncWrite + Shutdown + Unpin + Send> Shutdown for Coalesced<S> {
    async fn shutdown(&mut self) {
        if std::future::poll_fn(|cx| self.poll_release(cx))
            .await
            .is_ok()
        {
            self.inner.shutdown().await;
        }
    }
}

impl<S: UniqueID> UniqueID for Coalesced<S> {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl<S: Ssl> Ssl for Coalesced<S> {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl<S: GetTimingDigest> GetTimingDigest for Coalesced<S> {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl<S: GetProxyDigest> GetProxyDigest for Coalesced<S> {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl<S: GetSocketDigest> GetSocketDigest for Coalesced<S> {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl<S: Peek + Send> Peek for Coalesced<S> {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Records each write it is given.
    #[derive(Default)]
    struct Writes(Vec<Vec<u8>>);

    impl AsyncWrite for Writes {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().0.push(buf.to_vec());
            Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn a_head_and_a_small_body_go_down_as_one_write_at_the_flush() {
        block_on(async {
            let mut stream = Coalesced::new(Writes::default());
            stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            stream.write_all(b"hello").await.unwrap();
            assert!(stream.inner.0.is_empty(), "nothing before the flush");
            stream.flush().await.unwrap();
            assert_eq!(
                stream.inner.0,
                vec![b"HTTP/1.1 200 OK\r\n\r\nhello".to_vec()]
            );
            stream.write_all(b"next").await.unwrap();
            stream.flush().await.unwrap();
            assert_eq!(stream.inner.0.len(), 2);
            assert_eq!(stream.inner.0[1], b"next");
        });
    }

    #[test]
    fn large_writes_go_straight_through_after_what_is_held() {
        block_on(async {
            let mut stream = Coalesced::new(Writes::default());
            let large = vec![7u8; HOLD_LIMIT + 1];
            stream.write_all(b"head").await.unwrap();
            stream.write_all(&large).await.unwrap();
            assert_eq!(stream.inner.0, vec![b"head".to_vec(), large]);
            stream.flush().await.unwrap();
            assert_eq!(stream.inner.0.len(), 2);
        });
    }

    #[test]
    fn writes_that_would_overflow_a_record_release_what_is_held_first() {
        block_on(async {
            let mut stream = Coalesced::new(Writes::default());
            let chunk = vec![1u8; HOLD_LIMIT - 10];
            stream.write_all(&chunk).await.unwrap();
            stream.write_all(&[2u8; 20]).await.unwrap();
            assert_eq!(stream.inner.0, vec![chunk]);
            stream.shutdown().await.unwrap();
            assert_eq!(stream.inner.0[1], vec![2u8; 20]);
            assert!(stream.held.capacity() <= KEEP_CAPACITY);
        });
    }
}
