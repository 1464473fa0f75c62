//! Layer 11, the upstream: where requests that pass every layer go, and how its failures are
//! told to the client.
//!
//! `upstream_peer` builds an [`HttpPeer`] from the compiled [`Upstream`]: the address
//! resolved off the request path ([`Upstream::resolve`], by the config watcher), explicit
//! connect/read/idle timeouts, and verified TLS with the document's CA bundle when set.
//! Connections are kept in Pingora's keep-alive pool (sized by `upstream.poolSize`).
//! `upstream_request_filter` sets the forwarding headers ([`forwarding_headers`]); websocket
//! upgrades, range requests and long streams pass through Pingora unbuffered. A failed
//! origin becomes 502, a slow one 504 ([`classify`]), with the edge's error page.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    sync::Arc,
    time::Duration,
};

use arc_swap::ArcSwapOption;
use http::{HeaderName, StatusCode, header::HeaderValue};
use pingora::{
    ErrorSource, ErrorType, connectors::http::Connector, http::RequestHeader,
    protocols::tls::CaType, upstreams::peer::HttpPeer,
};

use crate::{access::app_token::TokenStatus, request_id::X_REQUEST_ID};

/// The compiled upstream.
#[derive(Debug)]
pub struct Upstream {
    /// `host:port` as the document gives it.
    pub address: String,
    /// Verified TLS to the origin.
    pub tls: Option<UpstreamTls>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Longest pause while the origin answers.
    pub read_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// Idle connections kept (applies at start).
    pub pool_size: usize,
    resolved: ArcSwapOption<SocketAddr>,
}

/// Verified TLS to the origin.
#[derive(Clone)]
pub struct UpstreamTls {
    /// The CAs the origin's certificate must chain to.
    pub ca: Arc<CaType>,
    /// The name its certificate must carry (also sent as SNI).
    pub server_name: String,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("ca", &format_args!("{} certificates", self.ca.len()))
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl Upstream {
    /// A compiled upstream; an address that is an IP literal is resolved at once.
    pub fn new(
        address: String,
        tls: Option<UpstreamTls>,
        connect_timeout: Duration,
        read_timeout: Duration,
        idle_timeout: Duration,
        pool_size: usize,
    ) -> Self {
        let literal = address.parse::<SocketAddr>().ok().map(Arc::new);
        Self {
            address,
            tls,
            connect_timeout,
            read_timeout,
            idle_timeout,
            pool_size,
            resolved: ArcSwapOption::new(literal),
        }
    }

    /// The address requests go to, if it has been resolved.
    pub fn resolved(&self) -> Option<SocketAddr> {
        self.resolved.load().as_deref().copied()
    }

    /// Resolves the address (blocking DNS: call it off the request path) and keeps the
    /// first answer for the requests to come. A failure keeps the previous answer.
    pub fn resolve(&self) -> std::io::Result<SocketAddr> {
        let first = self
            .address
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("the name has no address"))?;
        if self.resolved() != Some(first) {
            self.resolved.store(Some(Arc::new(first)));
        }
        Ok(first)
    }

    /// Sets the address requests go to (an earlier answer for the same name).
    pub fn set_resolved(&self, address: SocketAddr) {
        self.resolved.store(Some(Arc::new(address)));
    }

    /// The peer a request goes to.
    pub fn peer(&self, address: SocketAddr) -> Box<HttpPeer> {
        let (tls, sni) = match &self.tls {
            Some(tls) => (true, tls.server_name.clone()),
            None => (false, String::new()),
        };
        let mut peer = HttpPeer::new(address, tls, sni);
        let options = &mut peer.options;
        options.connection_timeout = Some(self.connect_timeout);
        options.read_timeout = Some(self.read_timeout);
        options.write_timeout = Some(self.read_timeout);
        options.idle_timeout = Some(self.idle_timeout);
        if let Some(tls) = &self.tls {
            options.verify_cert = true;
            options.verify_hostname = true;
            options.ca = Some(Arc::clone(&tls.ca));
        }
        Box::new(peer)
    }
}

/// How long the application may take to answer the edge's own questions (tokens, setup).
const APP_QUESTION_TIMEOUT: Duration = Duration::from_secs(5);

/// The edge's own client to the application (token checks), with its connection pool.
pub struct AppClient(Connector);

impl std::fmt::Debug for AppClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppClient")
    }
}

impl Default for AppClient {
    fn default() -> Self {
        Self(Connector::new(None))
    }
}

/// `GET path` on `peer` through `connector` with `headers` (`Host` among them): the status
/// and the body (at most 64 KiB are kept). The connection goes back to the pool for `idle`.
/// For the edge's own questions (the app's tokens and setup, Cloudflare's keys), never for
/// client requests.
pub async fn get(
    connector: &Connector,
    peer: &HttpPeer,
    path: &str,
    headers: &[(HeaderName, HeaderValue)],
    idle: Duration,
) -> Result<(StatusCode, Vec<u8>), String> {
    let (mut http, _) = connector
        .get_http_session(peer)
        .await
        .map_err(|e| e.to_string())?;
    let mut request = RequestHeader::build("GET", path.as_bytes(), Some(1 + headers.len()))
        .map_err(|e| e.to_string())?;
    for (name, value) in headers {
        request
            .insert_header(name.clone(), value.clone())
            .map_err(|e| e.to_string())?;
    }
    http.write_request_header(Box::new(request))
        .await
        .map_err(|e| e.to_string())?;
    http.finish_request_body()
        .await
        .map_err(|e| e.to_string())?;
    http.read_response_header()
        .await
        .map_err(|e| e.to_string())?;
    let status = http
        .response_header()
        .map(|head| head.status)
        .ok_or("no response")?;
    let mut body = Vec::new();
    while let Some(chunk) = http.read_response_body().await.map_err(|e| e.to_string())? {
        if body.len() < 64 * 1024 {
            body.extend_from_slice(&chunk);
        }
    }
    connector.release_http_session(http, peer, Some(idle)).await;
    Ok((status, body))
}

impl AppClient {
    /// `GET path` on the application with `headers` ([`get`]).
    pub async fn get(
        &self,
        upstream: &Upstream,
        host: &HeaderValue,
        path: &str,
        headers: &[(&'static str, HeaderValue)],
    ) -> Result<(StatusCode, Vec<u8>), String> {
        let address = upstream
            .resolved()
            .ok_or("the upstream address has not been resolved")?;
        let mut peer = upstream.peer(address);
        peer.options.read_timeout = Some(APP_QUESTION_TIMEOUT);
        peer.options.write_timeout = Some(APP_QUESTION_TIMEOUT);
        let mut all = Vec::with_capacity(1 + headers.len());
        all.push((http::header::HOST, host.clone()));
        all.extend(
            headers
                .iter()
                .map(|(name, value)| (HeaderName::from_static(name), value.clone())),
        );
        get(&self.0, &peer, path, &all, upstream.idle_timeout).await
    }

    /// Asks Jellyfin whether it accepts `token`: `GET /Users/Me` with `X-Emby-Token`. 200 is
    /// valid, 401 and 403 invalid; anything else is an error (the request is not let through).
    pub async fn ask_token(
        &self,
        upstream: &Upstream,
        host: &HeaderValue,
        token: &str,
    ) -> Result<TokenStatus, String> {
        let token = HeaderValue::from_str(token).map_err(|e| e.to_string())?;
        let (status, _) = self
            .get(upstream, host, "/Users/Me", &[("x-emby-token", token)])
            .await?;
        match status {
            StatusCode::OK => Ok(TokenStatus::Valid),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Ok(TokenStatus::Invalid),
            other => Err(format!("the application answered {other}")),
        }
    }
}

/// Headers a client may send to pass itself off as someone else; the edge removes them and
/// writes its own forwarding headers.
pub const CLIENT_FORWARDING_HEADERS: [HeaderName; 6] = [
    http::header::FORWARDED,
    HeaderName::from_static("x-forwarded-port"),
    HeaderName::from_static("x-forwarded-server"),
    HeaderName::from_static("x-client-ip"),
    HeaderName::from_static("true-client-ip"),
    HeaderName::from_static("cf-connecting-ip"),
];

/// `X-Forwarded-For`.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The forwarding headers the upstream gets, all set by the edge. The names are static
/// strings in the case they go out in, which Pingora takes without copying them.
pub fn forwarding_headers(
    client_ip: &HeaderValue,
    host: &HeaderValue,
    request_id: &HeaderValue,
) -> [(&'static str, HeaderValue); 5] {
    [
        ("x-forwarded-for", client_ip.clone()),
        ("x-real-ip", client_ip.clone()),
        ("x-forwarded-proto", HeaderValue::from_static("https")),
        ("x-forwarded-host", host.clone()),
        (X_REQUEST_ID, request_id.clone()),
    ]
}

/// What a proxying error means for the client: the status and a rule id, or `None` when
/// the client is gone and nothing can be sent.
pub fn classify(etype: &ErrorType, source: &ErrorSource) -> Option<(StatusCode, &'static str)> {
    use ErrorType::*;
    if let HTTPStatus(code) = etype {
        return StatusCode::from_u16(*code)
            .ok()
            .map(|status| (status, "edge-status"));
    }
    match source {
        ErrorSource::Upstream => Some(match etype {
            ConnectTimedout | ReadTimedout | WriteTimedout => {
                (StatusCode::GATEWAY_TIMEOUT, "upstream-timeout")
            }
            ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | BindError
            | SocketError => (StatusCode::BAD_GATEWAY, "upstream-connect"),
            TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert | HandshakeError => {
                (StatusCode::BAD_GATEWAY, "upstream-tls")
            }
            _ => (StatusCode::BAD_GATEWAY, "upstream-failure"),
        }),
        ErrorSource::Downstream => match etype {
            ReadTimedout => Some((StatusCode::REQUEST_TIMEOUT, "client-body-timeout")),
            ReadError | WriteError | ConnectionClosed | WriteTimedout => None,
            _ => Some((StatusCode::BAD_REQUEST, "client-protocol")),
        },
        ErrorSource::Internal | ErrorSource::Unset => {
            Some((StatusCode::INTERNAL_SERVER_ERROR, "internal"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_origin_is_502_and_a_slow_one_504() {
        let upstream = ErrorSource::Upstream;
        assert_eq!(
            classify(&ErrorType::ConnectRefused, &upstream),
            Some((StatusCode::BAD_GATEWAY, "upstream-connect"))
        );
        assert_eq!(
            classify(&ErrorType::ReadTimedout, &upstream),
            Some((StatusCode::GATEWAY_TIMEOUT, "upstream-timeout"))
        );
        assert_eq!(
            classify(&ErrorType::ConnectTimedout, &upstream),
            Some((StatusCode::GATEWAY_TIMEOUT, "upstream-timeout"))
        );
        assert_eq!(
            classify(&ErrorType::InvalidCert, &upstream),
            Some((StatusCode::BAD_GATEWAY, "upstream-tls"))
        );
    }

    #[test]
    fn a_client_that_is_gone_gets_nothing_and_a_slow_body_408() {
        let downstream = ErrorSource::Downstream;
        assert_eq!(classify(&ErrorType::ConnectionClosed, &downstream), None);
        assert_eq!(
            classify(&ErrorType::ReadTimedout, &downstream),
            Some((StatusCode::REQUEST_TIMEOUT, "client-body-timeout"))
        );
    }

    #[test]
    fn an_edge_status_is_kept() {
        assert_eq!(
            classify(&ErrorType::HTTPStatus(413), &ErrorSource::Downstream),
            Some((StatusCode::PAYLOAD_TOO_LARGE, "edge-status"))
        );
    }

    #[test]
    fn literal_addresses_resolve_without_dns() {
        let upstream = Upstream::new(
            "127.0.0.1:8096".into(),
            None,
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
            8,
        );
        assert_eq!(upstream.resolved(), Some("127.0.0.1:8096".parse().unwrap()));
        let peer = upstream.peer(upstream.resolved().unwrap());
        assert_eq!(
            peer.options.connection_timeout,
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn names_resolve_when_asked() {
        let upstream = Upstream::new(
            "localhost:8096".into(),
            None,
            Duration::from_secs(1),
            Duration::from_secs(1),
            Duration::from_secs(1),
            8,
        );
        assert_eq!(upstream.resolved(), None);
        let address = upstream.resolve().unwrap();
        assert_eq!(upstream.resolved(), Some(address));
        assert_eq!(address.port(), 8096);
    }
}
