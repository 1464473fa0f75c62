//! The Cloudflare Access team keys the edge fetches ([`crate::access::cloudflare`] checks
//! tokens with them): kept across policy reloads, fetched again by a background service
//! every `jwksRefresh` (retrying a failed fetch every few seconds), and on the request path
//! when a token names a key id not yet known, at most once every ten seconds.
//!
//! Fetches go through the edge's own HTTP client (Pingora's connector: verified TLS against
//! the system's CAs, 5 s timeouts) and are one at a time; a request that waits for a fetch
//! another one started uses its result. A failed fetch keeps the keys fetched before and is
//! logged; the keys are swapped in whole.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{HeaderValue, StatusCode, header};
use pingora::{
    connectors::http::Connector, server::ShutdownWatch, services::background::BackgroundService,
    upstreams::peer::HttpPeer,
};

use crate::{
    access::cloudflare::{CloudflareAccess, FetchCause, KeySet},
    state::Shared,
    upstream,
};

/// Longest a fetch of the keys may take (connect, then each read).
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the background service looks whether a fetch is due.
const TICK: Duration = Duration::from_secs(1);

/// The keys of the team in force, and the client that fetches them.
pub struct KeyCache {
    current: ArcSwap<KeySet>,
    fetching: tokio::sync::Mutex<()>,
    client: Connector,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("current", &self.current.load())
            .finish_non_exhaustive()
    }
}

impl Default for KeyCache {
    fn default() -> Self {
        Self {
            current: ArcSwap::from_pointee(KeySet::default()),
            fetching: tokio::sync::Mutex::new(()),
            client: Connector::new(None),
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

impl KeyCache {
    /// The keys from `url` (none yet when the last ones came from elsewhere).
    pub fn keys(&self, url: &str) -> Arc<KeySet> {
        let current = self.current.load_full();
        if current.url == url {
            current
        } else {
            Arc::new(KeySet::empty(url))
        }
    }

    /// Fetches the keys of `access` for `cause` if a fetch is still due once the fetch in
    /// progress (if any) has ended: the keys to use.
    pub async fn fetch(&self, access: &CloudflareAccess, cause: FetchCause<'_>) -> Arc<KeySet> {
        let _one_at_a_time = self.fetching.lock().await;
        let keys = self.keys(access.jwks_url());
        let now = unix_now();
        if !keys.fetch_due(cause, access.refresh_secs(), now) {
            return keys;
        }
        let body = self.download(access).await;
        let next = Arc::new(keys.after_fetch(cause, now, body.as_deref().map_err(Clone::clone)));
        match &next.error {
            Some(error) => tracing::warn!(
                url = access.jwks_url(),
                %error,
                kept = next.len(),
                "the Cloudflare Access keys could not be fetched; the ones fetched before stay in use"
            ),
            None => tracing::info!(
                url = access.jwks_url(),
                keys = next.len(),
                cause = match cause {
                    FetchCause::Schedule => "schedule",
                    FetchCause::UnknownKey(_) => "unknown key id",
                },
                "fetched the Cloudflare Access keys"
            ),
        }
        self.current.store(Arc::clone(&next));
        next
    }

    /// `GET` of the key URL: the body of a 200. Each address the host resolves to is
    /// tried in turn.
    async fn download(&self, access: &CloudflareAccess) -> Result<Vec<u8>, String> {
        let url = access.jwks_location();
        let addresses: Vec<SocketAddr> = tokio::time::timeout(
            FETCH_TIMEOUT,
            tokio::net::lookup_host((url.host.as_str(), url.port)),
        )
        .await
        .map_err(|_| format!("resolving {} timed out", url.host))?
        .map_err(|e| format!("resolving {}: {e}", url.host))?
        .collect();
        let default_port = if url.https { 443 } else { 80 };
        let host = if url.port == default_port {
            url.host.clone()
        } else if url.host.contains(':') {
            format!("[{}]:{}", url.host, url.port)
        } else {
            format!("{}:{}", url.host, url.port)
        };
        let headers = [
            (
                header::HOST,
                HeaderValue::try_from(host).map_err(|e| e.to_string())?,
            ),
            (header::ACCEPT, HeaderValue::from_static("application/json")),
        ];
        let mut error = format!("{} has no address", url.host);
        for address in addresses {
            let mut peer = HttpPeer::new(address, url.https, url.host.clone());
            let options = &mut peer.options;
            options.connection_timeout = Some(FETCH_TIMEOUT);
            options.total_connection_timeout = Some(FETCH_TIMEOUT);
            options.read_timeout = Some(FETCH_TIMEOUT);
            options.write_timeout = Some(FETCH_TIMEOUT);
            options.verify_cert = true;
            options.verify_hostname = true;
            let answer = tokio::time::timeout(
                FETCH_TIMEOUT * 2,
                upstream::get(&self.client, &peer, &url.path, &headers, FETCH_TIMEOUT),
            )
            .await
            .unwrap_or_else(|_| Err("the key server did not answer in time".to_owned()));
            match answer {
                Ok((StatusCode::OK, body)) => return Ok(body),
                Ok((status, _)) => return Err(format!("the key server answered {status}")),
                Err(failed) => error = format!("{address}: {failed}"),
            }
        }
        Err(error)
    }
}

/// Keeps the keys of the policy in force fresh: a Pingora background service.
#[derive(Debug)]
pub struct KeyRefresher {
    shared: Arc<Shared>,
}

impl KeyRefresher {
    /// The refresher of the edge's keys.
    pub const fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

#[async_trait]
impl BackgroundService for KeyRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            let policy = self.shared.policy.load_full();
            if let Some(access) = policy.access.as_ref().and_then(|a| a.cloudflare()) {
                let keys = self.shared.cloudflare_keys.keys(access.jwks_url());
                if keys.fetch_due(FetchCause::Schedule, access.refresh_secs(), unix_now()) {
                    self.shared
                        .cloudflare_keys
                        .fetch(access, FetchCause::Schedule)
                        .await;
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(TICK) => {}
            }
        }
    }
}
