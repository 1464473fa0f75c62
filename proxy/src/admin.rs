//! The admin listener: `/healthz`, `/readyz` and Prometheus `/metrics`, on their own port,
//! never on the public ones.
//!
//! A Pingora background service rather than a listening one: listening services stop
//! accepting as soon as SIGTERM arrives, but during the shutdown grace period the kubelet
//! must still get an answer, `/healthz` 200 (alive) and `/readyz` 503 (take me out of the
//! endpoints).
//!
//! `/readyz` says ready only once the HTTPS listener accepts connections: Pingora binds it
//! in its own service, which may start after this one.

use std::{
    net::TcpListener as StdTcpListener,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use async_trait::async_trait;
use bytes::Bytes;
use http::{StatusCode, header};
use pingora::{
    http::ResponseHeader,
    protocols::{http::ServerSession, l4::stream::Stream as L4Stream},
    server::ShutdownWatch,
    services::background::BackgroundService,
};

use crate::state::Shared;

/// How long an admin client has to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The admin endpoint.
#[derive(Debug)]
pub struct Admin {
    shared: Arc<Shared>,
    listener: Mutex<Option<StdTcpListener>>,
}

impl Admin {
    /// The endpoint on an already bound socket (bound at start, so a taken port fails
    /// loudly before anything is served).
    pub fn new(shared: Arc<Shared>, listener: StdTcpListener) -> Self {
        Self {
            shared,
            listener: Mutex::new(Some(listener)),
        }
    }
}

/// The answer to an admin request: status, content type, body.
pub fn answer(shared: &Shared, path: &str) -> (StatusCode, &'static str, Bytes) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path {
        "/healthz" => (StatusCode::OK, TEXT, Bytes::from_static(b"ok\n")),
        "/readyz" if shared.is_shutting_down() => (
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            Bytes::from_static(b"shutting down\n"),
        ),
        "/readyz" if !shared.is_accepting() => (
            StatusCode::SERVICE_UNAVAILABLE,
            TEXT,
            Bytes::from_static(b"the HTTPS listener is not accepting yet\n"),
        ),
        "/readyz" => (StatusCode::OK, TEXT, Bytes::from_static(b"ready\n")),
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(shared.metrics.render()),
        ),
        "/bans" => (StatusCode::OK, "application/json", bans(shared)),
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            Bytes::from_static(b"not found\n"),
        ),
    }
}

/// The bans this replica holds, as JSON: `[{"limit", "key", "start", "end"}]` with times in
/// seconds since the epoch (Redis-backed bans live in Redis and are not listed here).
fn bans(shared: &Shared) -> Bytes {
    let now = crate::edge::unix_millis(std::time::SystemTime::now());
    let mut list: Vec<serde_json::Value> = shared
        .limiter
        .bans(now)
        .into_iter()
        .map(|(limit, key, start, end)| {
            serde_json::json!({"limit": limit, "key": key, "start": start / 1000, "end": end / 1000})
        })
        .collect();
    list.extend(
        shared
            .honeypot_bans
            .list(now)
            .into_iter()
            .map(|(ip, start, end)| {
                serde_json::json!({
                    "limit": crate::bots::HONEYPOT_RULE,
                    "key": ip.to_string(),
                    "start": start / 1000,
                    "end": end / 1000,
                })
            }),
    );
    Bytes::from(serde_json::Value::Array(list).to_string())
}

/// How often the open connections are counted while draining.
const DRAIN_CHECK: Duration = Duration::from_millis(100);

/// Ends the process as soon as no client connection is open any more. Pingora sleeps the
/// whole grace period after SIGTERM whatever is in flight (its listeners are already
/// closed); an edge with nothing left to finish need not keep a rollout waiting.
async fn exit_when_drained(shared: Arc<Shared>) {
    let mut idle_checks = 0;
    loop {
        tokio::time::sleep(DRAIN_CHECK).await;
        if shared.connections.open() == 0 {
            idle_checks += 1;
        } else {
            idle_checks = 0;
        }
        // Twice in a row, so a connection being handed over is not missed.
        if idle_checks >= 2 {
            tracing::info!(
                "drained: no client connection is open; exiting before the grace period ends"
            );
            std::process::exit(0);
        }
    }
}

/// How long the readiness check waits for the HTTPS listener to accept.
const ACCEPT_CHECK: Duration = Duration::from_secs(1);

/// Whether a connection to the HTTPS listener (on loopback when it listens on every address)
/// is accepted.
async fn https_accepts(shared: &Shared) -> bool {
    let mut address = shared.bound.https;
    if address.ip().is_unspecified() {
        address.set_ip(match address {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    matches!(
        tokio::time::timeout(ACCEPT_CHECK, tokio::net::TcpStream::connect(address)).await,
        Ok(Ok(_))
    )
}

async fn serve(shared: Arc<Shared>, tcp: tokio::net::TcpStream) {
    let mut session = ServerSession::new_http1(Box::new(L4Stream::from(tcp)));
    match tokio::time::timeout(READ_TIMEOUT, session.read_request()).await {
        Ok(Ok(true)) => {}
        _ => return,
    }
    let path = session.req_header().uri.path();
    if path == "/readyz" && !shared.is_accepting() && https_accepts(&shared).await {
        shared.set_accepting();
    }
    let (status, content_type, body) = answer(&shared, path);
    session.set_keepalive(None);
    let Ok(mut head) = ResponseHeader::build(status, Some(3)) else {
        return;
    };
    if head
        .insert_header(header::CONTENT_TYPE, content_type)
        .is_err()
        || head
            .insert_header(header::CONTENT_LENGTH, body.len())
            .is_err()
        || head
            .insert_header(header::CACHE_CONTROL, "no-store")
            .is_err()
    {
        return;
    }
    if session.write_response_header(Box::new(head)).await.is_ok()
        && session.write_response_body(body, true).await.is_ok()
    {
        let _ = session.finish().await;
    }
}

#[async_trait]
impl BackgroundService for Admin {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .map(tokio::net::TcpListener::from_std);
        let listener = match listener {
            Some(Ok(listener)) => listener,
            Some(Err(error)) => {
                tracing::error!(%error, "the admin listener cannot be used");
                return;
            }
            None => return,
        };
        let mut watching = true;
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, _)) => {
                        tokio::spawn(serve(Arc::clone(&self.shared), tcp));
                    }
                    Err(error) => tracing::warn!(%error, "admin accept failed"),
                },
                changed = shutdown.changed(), if watching => {
                    watching = false;
                    if changed.is_ok() && *shutdown.borrow() {
                        tracing::info!("shutting down: /readyz now answers 503");
                        self.shared.begin_shutdown();
                        tokio::spawn(exit_when_drained(Arc::clone(&self.shared)));
                    }
                }
            }
        }
    }
}
