//! The admin listener: `/healthz`, `/readyz`, Prometheus `/metrics` and the bans in force
//! (`/bans`, JSON), on their own port, never on the public ones.
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
pub async fn answer(shared: &Shared, path: &str) -> (StatusCode, &'static str, Bytes) {
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
        "/bans" => (StatusCode::OK, "application/json", bans(shared).await),
        _ => (
            StatusCode::NOT_FOUND,
            TEXT,
            Bytes::from_static(b"not found\n"),
        ),
    }
}

/// Where a listed ban is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Backend {
    /// This replica's memory.
    Memory,
    /// Redis, shared by every replica.
    Redis,
}

impl Backend {
    const fn as_str(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis => "redis",
        }
    }
}

/// One listed ban: limit, key, start and end (milliseconds since the epoch), backend.
type Listed = (String, String, u64, u64, Backend);

/// The bans as JSON: `[{"limit", "key", "start", "end", "backend"}]`, times in seconds
/// since the epoch, sorted by limit, key and backend.
fn bans_json(mut bans: Vec<Listed>) -> Bytes {
    bans.sort_unstable_by(|a, b| (&a.0, &a.1, a.4).cmp(&(&b.0, &b.1, b.4)));
    let list: Vec<serde_json::Value> = bans
        .into_iter()
        .map(|(limit, key, start, end, backend)| {
            serde_json::json!({
                "limit": limit,
                "key": key,
                "start": start / 1000,
                "end": end / 1000,
                "backend": backend.as_str(),
            })
        })
        .collect();
    Bytes::from(serde_json::Value::Array(list).to_string())
}

/// The bans in force ([`bans_json`]). `backend` says where each is held: `memory` for this
/// replica's own (memory rules, bans of Redis rules made while Redis could not answer,
/// honeypot bans not shared), `redis` for those every replica shares: the bans of each
/// Redis rule, read with a bounded `SCAN` of this edge's keys of that rule
/// ([`crate::ratelimit::redis::RedisStore::bans`]), and honeypot bans shared through Redis
/// (as this replica has read them). Bans the document lifted are left out. A Redis server
/// that cannot answer is counted and logged, and its bans are missing from the list.
async fn bans(shared: &Shared) -> Bytes {
    let now = crate::edge::unix_millis(std::time::SystemTime::now());
    let policy = shared.policy.load_full();
    let lifted = |limit: &str, key: &str, start: u64| {
        policy
            .rate_limits
            .iter()
            .find(|rule| &*rule.name == limit)
            .is_some_and(|rule| rule.lifted_before(key) > start)
    };
    let mut list: Vec<Listed> = shared
        .limiter
        .bans(now)
        .into_iter()
        .filter(|(limit, key, start, _)| !lifted(limit, key, *start))
        .map(|(limit, key, start, end)| (limit, key, start, end, Backend::Memory))
        .collect();
    list.extend(shared.honeypot_bans.list(now).into_iter().map(|(ip, ban)| {
        (
            crate::bots::HONEYPOT_RULE.to_owned(),
            ip.to_string(),
            ban.start,
            ban.end,
            if ban.shared {
                Backend::Redis
            } else {
                Backend::Memory
            },
        )
    }));
    for rule in &policy.rate_limits {
        let Some(store) = &rule.redis else {
            continue;
        };
        match store.bans(rule.redis_prefix(), now).await {
            Ok(found) => {
                if !found.complete {
                    tracing::warn!(
                        limit = &*rule.name,
                        listed = found.bans.len(),
                        "the Redis bans of this limit are listed in part: a bound was reached"
                    );
                }
                list.extend(
                    found
                        .bans
                        .into_iter()
                        .filter(|(key, start, _)| rule.lifted_before(key) <= *start)
                        .map(|(key, start, end)| {
                            (rule.name.to_string(), key, start, end, Backend::Redis)
                        }),
                );
            }
            Err(error) => {
                shared.redis_failed(&rule.name, &error, "its bans are missing from /bans");
            }
        }
    }
    bans_json(list)
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
    let (status, content_type, body) = answer(&shared, path).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_are_listed_in_seconds_with_their_backend() {
        let json = bans_json(vec![
            (
                "login".into(),
                "192.0.2.2".into(),
                1_000_000,
                1_600_999,
                Backend::Redis,
            ),
            (
                "honeypot".into(),
                "192.0.2.9".into(),
                2_000,
                3_602_000,
                Backend::Memory,
            ),
            (
                "login".into(),
                "192.0.2.2".into(),
                1_000_000,
                1_600_000,
                Backend::Memory,
            ),
        ]);
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            value,
            serde_json::json!([
                {"limit": "honeypot", "key": "192.0.2.9", "start": 2, "end": 3602, "backend": "memory"},
                {"limit": "login", "key": "192.0.2.2", "start": 1000, "end": 1600, "backend": "memory"},
                {"limit": "login", "key": "192.0.2.2", "start": 1000, "end": 1600, "backend": "redis"},
            ])
        );
    }
}
