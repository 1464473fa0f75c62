//! One TLS record per small HTTP/1.1 response.
//!
//! Pingora writes a response head and then its body as two writes, and each write on a TLS
//! stream is a TLS record of its own: a second encryption, record header and tag for every
//! small response (and a second record for the client to decrypt). [`Coalesced`] sits
//! between Pingora and the TLS stream of an HTTP/1.1 connection on the HTTPS listener: it
//! holds the first write after each flush (the response head) when it is small, and hands
//! it to OpenSSL together with the next write (the first body chunk) as one record, or alone
//! at the flush.
//!
//! Nothing reaches the network later than before. Below TLS, Pingora keeps a socket buffer
//! of [`DEFAULT_L4_WRITE_BUFFER_SIZE`] bytes that sends only at a flush or when a write does
//! not fit, so a record small enough to be held here was held there anyway, until the same
//! next write or flush. The two writes are joined only where the one record leaves that
//! buffer when the two would have (either both fit in it, or the joined record alone fills
//! it); otherwise they go as two records, as before. Every later write until the flush goes
//! straight through, as before.

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
    l4::stream::DEFAULT_L4_WRITE_BUFFER_SIZE,
    raw_connect::ProxyDigest,
    tls::{SslDigest, TlsRef},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most a TLS record adds to its plaintext (TLS 1.2 AES-GCM: header, explicit nonce and
/// tag; TLS 1.3 adds less).
const RECORD_OVERHEAD: usize = 5 + 8 + 16;

/// A first write is held when its record would have fitted in Pingora's empty socket
/// buffer.
const HOLD_LIMIT: usize = DEFAULT_L4_WRITE_BUFFER_SIZE - RECORD_OVERHEAD;

/// The held write and the next one are joined when together they fit in one TLS record's
/// plaintext.
const RECORD_LIMIT: usize = 16 * 1024;

/// Whether a held write of `held` bytes and the next of `next` go as one record: not when
/// two records would have overflowed Pingora's socket buffer (sending the first) while the
/// joined one would stay in it.
const fn joins(held: usize, next: usize) -> bool {
    let joined = held + next;
    joined <= RECORD_LIMIT
        && (joined + 2 * RECORD_OVERHEAD <= DEFAULT_L4_WRITE_BUFFER_SIZE
            || joined >= DEFAULT_L4_WRITE_BUFFER_SIZE)
}

/// The buffer's capacity kept between responses; a larger one is released, so an idle
/// connection holds at most this much.
const KEEP_CAPACITY: usize = 4 * 1024;

/// A stream that joins the first write after each flush with the next one.
#[derive(Debug)]
pub struct Coalesced<S> {
    inner: S,
    held: Vec<u8>,
    /// How much of `held` the inner stream has already taken.
    taken: usize,
    /// No write since the last flush: the next one, if small, is held.
    armed: bool,
}

impl<S> Coalesced<S> {
    /// Joins `inner`'s response heads with their first body chunk.
    pub const fn new(inner: S) -> Self {
        Self {
            inner,
            held: Vec::new(),
            taken: 0,
            armed: true,
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
        if this.held.is_empty() {
            if std::mem::take(&mut this.armed) && buf.len() <= HOLD_LIMIT {
                this.held.extend_from_slice(buf);
                return Poll::Ready(Ok(buf.len()));
            }
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if this.taken == 0 && joins(this.held.len(), buf.len()) {
            // The head and the first body chunk, in one record. The write is taken even if
            // the stream cannot take all of it now; the rest goes at the next write or flush.
            this.held.extend_from_slice(buf);
            if let Poll::Ready(Err(error)) = this.poll_release(cx) {
                return Poll::Ready(Err(error));
            }
            return Poll::Ready(Ok(buf.len()));
        }
        ready!(this.poll_release(cx))?;
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_release(cx))?;
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        this.armed = true;
        Poll::Ready(Ok(()))
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
    fn a_head_and_the_first_body_chunk_go_down_as_one_write() {
        block_on(async {
            let mut stream = Coalesced::new(Writes::default());
            stream.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
            assert!(stream.inner.0.is_empty(), "the head waits for its body");
            stream.write_all(b"hello").await.unwrap();
            assert_eq!(
                stream.inner.0,
                vec![b"HTTP/1.1 200 OK\r\n\r\nhello".to_vec()]
            );
            // Until the flush, later writes go straight through.
            stream.write_all(b" world").await.unwrap();
            assert_eq!(stream.inner.0.len(), 2);
            assert_eq!(stream.inner.0[1], b" world");
            stream.flush().await.unwrap();
            // The next response's head is held again; a flush alone sends it.
            stream
                .write_all(b"HTTP/1.1 304 Not Modified\r\n\r\n")
                .await
                .unwrap();
            assert_eq!(stream.inner.0.len(), 2);
            stream.flush().await.unwrap();
            assert_eq!(stream.inner.0[2], b"HTTP/1.1 304 Not Modified\r\n\r\n");
        });
    }

    #[test]
    fn large_writes_are_not_held_nor_copied() {
        block_on(async {
            let mut stream = Coalesced::new(Writes::default());
            let large_head = vec![7u8; HOLD_LIMIT + 1];
            stream.write_all(&large_head).await.unwrap();
            assert_eq!(stream.inner.0, vec![large_head.clone()]);
            stream.flush().await.unwrap();
            let large_body = vec![8u8; RECORD_LIMIT];
            stream.write_all(b"head").await.unwrap();
            stream.write_all(&large_body).await.unwrap();
            assert_eq!(stream.inner.0[1..], [b"head".to_vec(), large_body]);
        });
    }

    #[test]
    fn writes_are_not_joined_where_the_join_would_keep_back_what_two_records_sent() {
        block_on(async {
            let mut stream = Coalesced::new(Writes::default());
            stream.write_all(&[1u8; 100]).await.unwrap();
            let next = vec![2u8; DEFAULT_L4_WRITE_BUFFER_SIZE - 100 - RECORD_OVERHEAD];
            stream.write_all(&next).await.unwrap();
            assert_eq!(stream.inner.0, vec![vec![1u8; 100], next]);
        });
        assert!(joins(300, 22));
        assert!(joins(300, DEFAULT_L4_WRITE_BUFFER_SIZE));
        assert!(!joins(300, RECORD_LIMIT));
    }

    #[test]
    fn shutdown_sends_what_is_held() {
        block_on(async {
            let mut stream = Coalesced::new(Writes::default());
            stream.write_all(b"head").await.unwrap();
            stream.shutdown().await.unwrap();
            assert_eq!(stream.inner.0, vec![b"head".to_vec()]);
            assert!(stream.held.capacity() <= KEEP_CAPACITY);
        });
    }
}
