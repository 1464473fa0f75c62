//! The one `ProxyHttp` implementation: it gathers facts about each request, asks the layers
//! of the policy in force for their verdicts, and applies them.
//!
//! Phases: `new_ctx` takes the policy for the whole request and a request id;
//! `on_connection_reuse` tells connection setup that the request head arrived (the header
//! deadline, [`crate::app`]); `request_filter` resolves the client ([`client_identity`]) and
//! runs the layers on the head (the plain-HTTP listener only redirects, [`tls`]);
//! `request_body_filter` runs them on the body as it streams; `upstream_peer` and
//! `upstream_request_filter` pick the origin and write the forwarding headers
//! ([`upstream`]); `response_filter` adds HSTS and strips `Server`/`X-Powered-By`;
//! `fail_to_proxy` writes the error page; `logging` writes the access log line and counts
//! the request.

use std::{
    any::Any,
    net::IpAddr,
    sync::Arc,
    time::{Instant, SystemTime},
};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use pingora::{
    Error, ErrorSource, ErrorType, Result,
    http::{RequestHeader, ResponseHeader},
    proxy::{FailToProxy, ProxyHttp, Session},
    upstreams::peer::HttpPeer,
};

use crate::{
    access_log::{self, AccessRecord},
    app::HeaderWatch,
    client_identity, error_page,
    hygiene::{self, ContentLength, RequestFacts},
    model::Policy,
    request_id::RequestId,
    state::Shared,
    tls,
    upstream::{self, CLIENT_FORWARDING_HEADERS, X_FORWARDED_FOR},
    verdict::{Body, Decision, DecisionKind, LayerId, Response, Verdict},
};

/// Which listener a proxy serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The HTTPS listener: every layer, then the upstream.
    Https,
    /// The plain-HTTP listener: a 308 to HTTPS and nothing else.
    Redirect,
}

/// The edge proxy.
#[derive(Debug)]
pub struct Edge {
    shared: Arc<Shared>,
    role: Role,
}

impl Edge {
    /// The proxy of one listener.
    pub const fn new(shared: Arc<Shared>, role: Role) -> Self {
        Self { shared, role }
    }
}

/// What the edge knows about one request.
#[derive(Debug)]
pub struct Ctx {
    start: Instant,
    time: SystemTime,
    policy: Arc<Policy>,
    request_id: RequestId,
    client_ip: Option<IpAddr>,
    decision: Decision,
    body_received: u64,
}

const X_POWERED_BY: http::HeaderName = http::HeaderName::from_static("x-powered-by");

fn peer_ip(session: &Session) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|addr| addr.as_inet())
        .map(|addr| addr.ip().to_canonical())
}

/// Gathers the facts the hygiene layer decides on.
fn request_facts(session: &Session) -> RequestFacts<'_> {
    let request = session.req_header();
    let headers = &request.headers;
    let host = headers
        .get(header::HOST)
        .map(HeaderValue::as_bytes)
        .or_else(|| request.uri.authority().map(|a| a.as_str().as_bytes()));
    let transfer_encoding = headers.contains_key(header::TRANSFER_ENCODING);
    RequestFacts {
        method: &request.method,
        host,
        uri_bytes: request.raw_path().len(),
        header_count: headers.len(),
        header_bytes: headers
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum(),
        content_length: ContentLength::of(
            headers
                .get_all(header::CONTENT_LENGTH)
                .iter()
                .map(HeaderValue::as_bytes),
        ),
        transfer_encoding,
        // Pingora drops Content-Length when Transfer-Encoding is present; look at the raw
        // head for it (rare: only requests with Transfer-Encoding pay for the scan).
        content_length_with_transfer_encoding: transfer_encoding
            && !session.is_http2()
            && hygiene::raw_head_has_content_length(&session.to_h1_raw()),
    }
}

fn header_value_of_ip(ip: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{ip}"));
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    HeaderValue::from_bytes(&buf[..len]).unwrap_or(HeaderValue::from_static("unknown"))
}

impl Edge {
    /// Writes a response of the edge's own: the verdict's headers, the error page when asked
    /// for, HSTS on HTTPS.
    async fn respond(&self, session: &mut Session, ctx: &Ctx, response: Response) -> Result<()> {
        let (content_type, body) = match response.body {
            Body::ErrorPage => {
                let json = error_page::wants_json(
                    session
                        .get_header(header::ACCEPT)
                        .map(HeaderValue::as_bytes),
                );
                let (content_type, body) =
                    error_page::render(response.status, &ctx.request_id, json);
                (HeaderValue::from_static(content_type), body)
            }
            Body::Bytes {
                content_type,
                bytes,
            } => (content_type, bytes),
        };
        let mut head = ResponseHeader::build(response.status, Some(5 + response.headers.len()))?;
        head.insert_header(header::CONTENT_TYPE, content_type)?;
        head.insert_header(header::CONTENT_LENGTH, body.len())?;
        head.insert_header(header::CACHE_CONTROL, "no-store")?;
        for (name, value) in response.headers {
            head.append_header(name, value)?;
        }
        if self.role == Role::Https {
            head.insert_header(header::STRICT_TRANSPORT_SECURITY, ctx.policy.hsts.clone())?;
        }
        if response.close {
            session.set_keepalive(None);
        }
        let head_only = session.req_header().method == http::Method::HEAD;
        session
            .write_response_header(Box::new(head), head_only)
            .await?;
        if !head_only {
            session.write_response_body(Some(body), true).await?;
        }
        Ok(())
    }

    /// Applies a verdict of `layer`: `Ok(true)` when the request has been answered.
    async fn apply(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        layer: LayerId,
        verdict: Verdict,
    ) -> Result<bool> {
        if let Some(decision) = Decision::of(layer, &verdict) {
            ctx.decision = decision;
        }
        match verdict {
            Verdict::Continue => Ok(false),
            Verdict::Respond(response, _) => {
                self.respond(session, ctx, response).await?;
                Ok(true)
            }
            Verdict::Redirect(redirect, _) => {
                let mut head = ResponseHeader::build(redirect.status, Some(3))?;
                head.insert_header(header::LOCATION, redirect.location)?;
                head.insert_header(header::CONTENT_LENGTH, 0)?;
                if self.role == Role::Https {
                    head.insert_header(header::STRICT_TRANSPORT_SECURITY, ctx.policy.hsts.clone())?;
                }
                session.write_response_header(Box::new(head), true).await?;
                Ok(true)
            }
        }
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            start: Instant::now(),
            time: SystemTime::now(),
            policy: self.shared.policy.load_full(),
            request_id: self.shared.request_ids.next_id(),
            client_ip: None,
            decision: Decision::pass(),
            body_received: 0,
        }
    }

    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {
        // No response compression module: the origin compresses what it wants compressed.
    }

    fn on_connection_reuse(
        &self,
        _session: &mut Session,
        _ctx: &mut Ctx,
        prev_ctx: Box<dyn Any + Send + Sync>,
    ) {
        if let Ok(watch) = prev_ctx.downcast::<Arc<HeaderWatch>>() {
            watch.head_received();
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let policy = Arc::clone(&ctx.policy);
        ctx.client_ip = peer_ip(session).map(|peer| {
            client_identity::client_ip(
                &policy.trusted_proxies,
                peer,
                session
                    .req_header()
                    .headers
                    .get_all(&X_FORWARDED_FOR)
                    .iter()
                    .map(HeaderValue::as_bytes),
            )
        });
        if self.role == Role::Redirect {
            let target = session
                .req_header()
                .uri
                .path_and_query()
                .map_or("/", |target| target.as_str());
            let verdict = tls::https_redirect(&policy.host, target);
            return self.apply(session, ctx, LayerId::Tls, verdict).await;
        }
        if session.is_upgrade_req() {
            // A websocket's client side may be quiet for long; the upstream read timeout
            // bounds it instead.
            session.set_read_timeout(None);
        } else {
            session.set_read_timeout(Some(policy.timeouts.body_read));
        }
        let facts = request_facts(session);
        match policy.check_head(&facts) {
            Some((layer, verdict)) => self.apply(session, ctx, layer, verdict).await,
            None => Ok(false),
        }
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(chunk) = body else {
            return Ok(());
        };
        ctx.body_received += chunk.len() as u64;
        if let Some((layer, verdict)) = ctx.policy.check_body(ctx.body_received) {
            let status = match &verdict {
                Verdict::Respond(response, _) => response.status,
                _ => StatusCode::BAD_REQUEST,
            };
            if let Some(decision) = Decision::of(layer, &verdict) {
                ctx.decision = decision;
            }
            *body = None;
            session.set_keepalive(None);
            let mut error = Error::explain(
                ErrorType::HTTPStatus(status.as_u16()),
                "the request body broke a limit",
            );
            error.as_down();
            return Err(error);
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let upstream = &ctx.policy.upstream;
        match upstream.resolved() {
            Some(address) => Ok(upstream.peer(address)),
            None => {
                let mut error = Error::explain(
                    ErrorType::ConnectNoRoute,
                    "the upstream address has not been resolved",
                );
                error.as_up();
                Err(error)
            }
        }
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        for name in &CLIENT_FORWARDING_HEADERS {
            upstream_request.remove_header(name);
        }
        let client = ctx
            .client_ip
            .map_or(HeaderValue::from_static("unknown"), header_value_of_ip);
        let request_id = HeaderValue::from_bytes(ctx.request_id.as_bytes())
            .unwrap_or(HeaderValue::from_static("unknown"));
        for (name, value) in
            upstream::forwarding_headers(&client, &ctx.policy.host_header, &request_id)
        {
            upstream_request.insert_header(name, value)?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        upstream_response.remove_header(&header::SERVER);
        upstream_response.remove_header(&X_POWERED_BY);
        if self.role == Role::Https {
            upstream_response
                .insert_header(header::STRICT_TRANSPORT_SECURITY, ctx.policy.hsts.clone())?;
        }
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let classified = upstream::classify(e.etype(), e.esource());
        if let Some((_, rule)) = classified
            && e.esource() == &ErrorSource::Upstream
        {
            self.shared
                .metrics
                .upstream_errors
                .with_label_values(&[rule])
                .inc();
        }
        if ctx.decision.kind != DecisionKind::Respond {
            let (layer, rule) = match (classified, e.esource()) {
                (Some((_, rule)), ErrorSource::Upstream) => (LayerId::Upstream, rule),
                (Some((_, rule)), _) => (LayerId::Connection, rule),
                (None, _) => (LayerId::Connection, "client-gone"),
            };
            ctx.decision = Decision::error(layer, rule, e.etype().as_str());
        }
        let Some((status, _)) = classified else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if let Some(written) = session.response_written() {
            // Too late for an error page: the response is under way.
            return FailToProxy {
                error_code: written.status.as_u16(),
                can_reuse_downstream: false,
            };
        }
        let response = Response::error(status).closing();
        if let Err(error) = self.respond(session, ctx, response).await {
            tracing::debug!(%error, "could not send the error page");
        }
        FailToProxy {
            error_code: status.as_u16(),
            can_reuse_downstream: false,
        }
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        // Clients that go away are normal at the edge; the access log has them.
        error.esource() == &ErrorSource::Downstream
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let metrics = &self.shared.metrics;
        let duration = ctx.start.elapsed();
        metrics.request(ctx.decision.layer, ctx.decision.kind).inc();
        metrics.request_duration.observe(duration.as_secs_f64());
        let request = session.req_header();
        access_log::emit(&AccessRecord {
            time: ctx.time,
            request_id: ctx.request_id.as_str(),
            client_ip: ctx.client_ip.or_else(|| peer_ip(session)),
            country: "",
            email: "",
            method: request.method.as_str(),
            path: request
                .uri
                .path_and_query()
                .map_or("", |target| target.as_str()),
            status: session
                .response_written()
                .map_or(0, |response| response.status.as_u16()),
            bytes: session.body_bytes_sent() as u64,
            duration,
            layer: ctx.decision.layer.as_str(),
            decision: ctx.decision.kind.as_str(),
            rule: ctx.decision.rule,
            reason: &ctx.decision.reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_become_header_values() {
        assert_eq!(
            header_value_of_ip("192.0.2.1".parse().unwrap()),
            "192.0.2.1"
        );
        assert_eq!(
            header_value_of_ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap()),
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"
        );
    }
}
