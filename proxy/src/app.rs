//! Connection setup, before any request: layer 1 (connection guards) and the connection
//! half of layers 2 and 3 (TLS handshake, PROXY protocol).
//!
//! Pingora's listeners accept plain TCP; [`EdgeApp`] takes each connection from there:
//!
//! 1. reads the PROXY protocol header when `listen.proxyProtocol` is set, and makes its
//!    source the connection's peer (within `timeouts.headerRead`);
//! 2. admits the connection under the total and per-address caps
//!    ([`crate::connection_guard`]), or closes it;
//! 3. on the HTTPS listener, runs the TLS handshake with the acceptor of the policy in force
//!    (within `timeouts.headerRead`), so a renewed certificate applies to the next handshake,
//!    and gives HTTP/1.1 connections one TLS record per small response ([`crate::coalesce`]);
//! 4. on the plain-HTTP listener, hands the connection to [`redirect`], which answers every
//!    request with the redirect to HTTPS;
//! 5. on the HTTPS listener, serves HTTP/2 through Pingora's proxy, or HTTP/1.1 request by
//!    request with a deadline on each request head: from the moment the edge waits for a
//!    request until its head has arrived, at most `timeouts.headerRead` may pass (slowloris;
//!    also the keep-alive idle time). Pingora's own timeout applies per read only, so a
//!    client trickling a byte at a time would otherwise never be cut.

use std::{
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use async_trait::async_trait;
use pingora::{
    apps::{HttpServerApp, ServerApp},
    protocols::{
        ALPN, GetSocketDigest, SocketDigest, Ssl, Stream,
        http::ServerSession,
        l4::{socket::SocketAddr as PingoraAddr, stream::Stream as L4Stream},
        tls::server::handshake,
    },
    proxy::HttpProxy,
    server::ShutdownWatch,
};

use crate::{coalesce::Coalesced, edge::Edge, proxy_protocol, redirect, state::Shared};

/// Tells connection setup that a request head has arrived, from inside the proxy
/// (`on_connection_reuse`).
#[derive(Debug, Default)]
pub struct HeaderWatch(AtomicBool);

impl HeaderWatch {
    /// The request head has arrived.
    pub fn head_received(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn has_head(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// What a listener serves once a connection is admitted.
pub enum Role {
    /// TLS, then the proxy and every layer.
    Https(Arc<HttpProxy<Edge>>),
    /// Plain HTTP: the redirect to HTTPS and nothing else ([`redirect`]).
    Redirect,
}

/// One listener's connection handling.
pub struct EdgeApp {
    shared: Arc<Shared>,
    role: Role,
}

impl EdgeApp {
    /// The HTTPS listener's connection handling, in front of `proxy`.
    pub fn https(proxy: HttpProxy<Edge>, shared: Arc<Shared>) -> Self {
        Self {
            shared,
            role: Role::Https(Arc::new(proxy)),
        }
    }

    /// The plain-HTTP listener's connection handling.
    pub const fn redirect(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            role: Role::Redirect,
        }
    }

    fn dropped(&self, reason: &str) {
        self.shared
            .metrics
            .connections_dropped
            .with_label_values(&[reason])
            .inc();
    }

    /// Serves HTTP/1.1 requests through `proxy` one after the other, each head within the
    /// deadline.
    async fn serve_http1(
        &self,
        proxy: &Arc<HttpProxy<Edge>>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) {
        let header_read = self.shared.policy.load().timeouts.header_read;
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(if *shutdown.borrow() {
            None
        } else {
            Some(header_read.as_secs().max(1))
        });
        loop {
            let watch = Arc::new(HeaderWatch::default());
            session.set_connection_user_context(Some(Box::new(Arc::clone(&watch))));
            let request = proxy.process_new_http(session, shutdown);
            let deadline = async {
                tokio::time::sleep(header_read).await;
                if watch.has_head() {
                    std::future::pending::<()>().await;
                }
            };
            let reused = tokio::select! {
                biased;
                reused = request => reused,
                () = deadline => {
                    self.dropped("header-timeout");
                    None
                }
            };
            let Some(reused) = reused else {
                return;
            };
            let (stream, settings) = reused.consume();
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
        }
    }
}

/// Makes `source` the peer of the connection (the PROXY protocol's client).
fn set_peer(stream: &mut L4Stream, source: std::net::SocketAddr) {
    let digest = SocketDigest::from_raw_fd(stream.as_raw_fd());
    let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(source)));
    stream.set_socket_digest(digest);
}

/// Decrements the open-connection gauge when the connection ends.
struct OpenConnection<'a>(&'a prometheus::IntGauge);

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[async_trait]
impl ServerApp for EdgeApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let policy = self.shared.policy.load_full();
        let deadline = policy.timeouts.header_read;
        let Ok(mut tcp) = stream.into_any().downcast::<L4Stream>() else {
            tracing::error!("a listener handed over something other than a TCP stream");
            return None;
        };
        if policy.listen.proxy_protocol {
            match tokio::time::timeout(deadline, proxy_protocol::read_header(&mut *tcp)).await {
                Ok(Ok(header)) => {
                    if let Some(source) = header.source {
                        set_peer(&mut tcp, source);
                    }
                }
                Ok(Err(error)) => {
                    tracing::debug!(%error, "connection closed");
                    self.dropped("proxy-protocol");
                    return None;
                }
                Err(_) => {
                    self.dropped("proxy-protocol-timeout");
                    return None;
                }
            }
        }
        let peer = tcp
            .get_socket_digest()
            .and_then(|digest| digest.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
            .map(|ip| ip.to_canonical());
        let limits = policy.connections;
        let _permit =
            match self
                .shared
                .connections
                .try_admit(peer, limits.max_total, limits.max_per_ip)
            {
                Ok(permit) => permit,
                Err(refusal) => {
                    self.shared
                        .metrics
                        .connections_refused
                        .with_label_values(&[refusal.as_str()])
                        .inc();
                    return None;
                }
            };
        self.shared.metrics.connections_open.inc();
        let _open = OpenConnection(&self.shared.metrics.connections_open);
        let Role::Https(proxy) = &self.role else {
            drop(policy);
            if let Err(error) = redirect::serve(&self.shared, tcp, peer, shutdown).await {
                if error.is_timeout() {
                    self.dropped("header-timeout");
                } else {
                    tracing::debug!(%error, "connection closed");
                }
            }
            return None;
        };
        let stream: Stream =
            match tokio::time::timeout(deadline, handshake(&policy.tls_acceptor, *tcp)).await {
                // HTTP/2 frames its own writes; HTTP/1.1 responses go out as one TLS record
                // where they fit in one.
                Ok(Ok(tls)) if matches!(tls.selected_alpn_proto(), Some(ALPN::H2)) => Box::new(tls),
                Ok(Ok(tls)) => Box::new(Coalesced::new(tls)),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "TLS handshake failed");
                    self.dropped("tls-handshake");
                    return None;
                }
                Err(_) => {
                    self.dropped("tls-handshake-timeout");
                    return None;
                }
            };
        drop(policy);
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            ServerApp::process_new(proxy, stream, shutdown).await;
        } else {
            self.serve_http1(proxy, stream, shutdown).await;
        }
        None
    }

    async fn cleanup(&self) {
        if let Role::Https(proxy) = &self.role {
            proxy.http_cleanup().await;
        }
    }
}
