//! The one `ProxyHttp` implementation: it gathers facts about each request, asks the layers
//! of the policy in force for their verdicts, and applies them.
//!
//! Phases: `new_ctx` takes the policy for the whole request and a request id;
//! `on_connection_reuse` tells connection setup that the request head arrived (the header
//! deadline, [`crate::app`]); `request_filter` resolves the client ([`client_identity`]) and
//! runs the layers on the head (the plain-HTTP listener is not a proxy: [`crate::redirect`]);
//! `request_body_filter` runs them on the body as it streams; `upstream_peer` and
//! `upstream_request_filter` pick the origin and write the forwarding headers
//! ([`upstream`]); `response_filter` adds HSTS and strips `Server`/`X-Powered-By`;
//! `fail_to_proxy` writes the error page; `logging` writes the access log line and counts
//! the request.

use std::{
    any::Any,
    borrow::Cow,
    net::IpAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
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
    access::{
        self, Access, AccessRequest, Answer, CodeTry, Grant, Outcome, Submitted,
        app_token::TokenStatus,
        cloudflare::{self, FetchCause},
        login::Attempt,
    },
    access_log::{self, AccessRecord},
    antivirus::{self, Finding},
    app::HeaderWatch,
    app_rules, bots, challenge, client_identity, error_page,
    geo::Country,
    hygiene::{self, ContentLength, RequestFacts},
    model::Policy,
    ratelimit::{
        KeyFacts, Rule, Stage,
        gcra::{Op, Outcome as LimitOutcome},
    },
    request_id::{RequestId, X_REQUEST_ID},
    state::Shared,
    upstream::{self, CLIENT_FORWARDING_HEADERS, X_FORWARDED_FOR},
    verdict::{Body, Decision, DecisionKind, LayerId, Reason, Response, Verdict},
    waf,
};

/// The edge proxy, behind the HTTPS listener.
#[derive(Debug)]
pub struct Edge {
    shared: Arc<Shared>,
}

impl Edge {
    /// The proxy of the HTTPS listener.
    pub const fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
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
    country: Option<Country>,
    email: Option<String>,
    /// The e-mail was vouched for by a Cloudflare Access token (forwarded to the app).
    cloudflare_identity: bool,
    set_cookie: Option<HeaderValue>,
    /// Rate limits that count this request only if its response matches: (rule, key).
    response_counts: Vec<(usize, String)>,
    /// The WAF's inspection, while it waits for the body.
    waf: Option<Box<portcullis_waf::Transaction>>,
    /// The body held back while the WAF has not decided (at most its limit and one chunk).
    waf_body: Vec<u8>,
    /// The antivirus scan in flight, holding the body until clamd's verdict.
    av: Option<Box<antivirus::Scan>>,
    /// Jellyfin's server info, gathered to hide its own address (see
    /// [`app_rules::hide_local_address`]); `None` for every other response.
    server_info: Option<Vec<u8>>,
}

const CF_IPCOUNTRY: http::HeaderName = http::HeaderName::from_static("cf-ipcountry");

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Milliseconds since the epoch, the time unit of the rate limiter and its bans.
pub fn unix_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// Reads a posted form of the edge's own pages: `None` once it is over
/// [`access::MAX_FORM_BYTES`] (the rest is not read).
async fn read_form(session: &mut Session) -> Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await? {
        body.extend_from_slice(&chunk);
        if body.len() > access::MAX_FORM_BYTES {
            return Ok(None);
        }
    }
    Ok(Some(body))
}

/// Whether the request posts a proof-of-work solution ([`challenge::CHALLENGE_PATH`]).
fn is_challenge_answer(request: &RequestHeader) -> bool {
    request.method == http::Method::POST && request.uri.path() == challenge::CHALLENGE_PATH
}

/// The facts the access layer decides on.
fn access_request(request: &RequestHeader) -> AccessRequest<'_> {
    AccessRequest {
        method: &request.method,
        path: request.uri.path(),
        query: request.uri.query(),
        target: request
            .uri
            .path_and_query()
            .map_or("/", |target| target.as_str()),
        headers: &request.headers,
    }
}

const X_POWERED_BY: http::HeaderName = http::HeaderName::from_static("x-powered-by");
// Header names the edge writes on every response, as `&'static str` in the case they go out
// in: Pingora copies a `HeaderName` it has no title case for into a new buffer on each
// insert, and borrows a static string (`X-Request-Id` is [`X_REQUEST_ID`]).
const STRICT_TRANSPORT_SECURITY: &str = "strict-transport-security";
const LOCATION: &str = "location";

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
    let mut text = Vec::with_capacity(39);
    access_log::push_ip(&mut text, ip);
    HeaderValue::from_maybe_shared(Bytes::from(text)).unwrap_or(HeaderValue::from_static("unknown"))
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
        let mut head = ResponseHeader::build(response.status, Some(6 + response.headers.len()))?;
        head.insert_header(X_REQUEST_ID, ctx.request_id.header_value())?;
        head.insert_header(header::CONTENT_TYPE, content_type)?;
        head.insert_header(header::CONTENT_LENGTH, body.len())?;
        head.insert_header(header::CACHE_CONTROL, "no-store")?;
        for (name, value) in response.headers {
            head.append_header(name, value)?;
        }
        head.insert_header(STRICT_TRANSPORT_SECURITY, ctx.policy.hsts.clone())?;
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
                let mut head = ResponseHeader::build(redirect.status, Some(4))?;
                head.insert_header(X_REQUEST_ID, ctx.request_id.header_value())?;
                head.insert_header(LOCATION, redirect.location)?;
                head.insert_header(header::CONTENT_LENGTH, 0)?;
                head.insert_header(STRICT_TRANSPORT_SECURITY, ctx.policy.hsts.clone())?;
                session.write_response_header(Box::new(head), true).await?;
                Ok(true)
            }
        }
    }
}

impl Edge {
    /// A posted proof-of-work solution: a pass, or 403.
    async fn challenge_answer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        policy: &Policy,
    ) -> Result<bool> {
        let body = read_form(session).await?;
        let verdict = match (ctx.client_ip, body) {
            (Some(ip), Some(body)) => policy.challenger.submit(&body, ip, unix_seconds(ctx.time)),
            _ => Verdict::Respond(
                Response::error(StatusCode::BAD_REQUEST),
                Reason::new("challenge-failed", "no client address or an oversized form"),
            ),
        };
        if let Verdict::Respond(_, reason) = &verdict {
            self.shared
                .metrics
                .ratelimit_decisions
                .with_label_values(&["challenge", reason.rule])
                .inc();
        }
        self.apply(session, ctx, LayerId::RateLimit, verdict).await
    }

    /// Counts the WAF's matches and reports what detect-only mode let through.
    fn record_waf(&self, ctx: &Ctx, verdict: &portcullis_waf::Verdict) {
        let metrics = &self.shared.metrics;
        for matched in &verdict.matched {
            metrics
                .waf_matches
                .with_label_values(&[matched.id.to_string().as_str()])
                .inc();
        }
        if let portcullis_waf::Decision::Detected { rule_id, .. } = verdict.decision {
            metrics.waf_detected.inc();
            tracing::warn!(
                request_id = ctx.request_id.as_str(),
                detail = waf::summary(verdict, rule_id),
                "the WAF would have blocked this request (detect-only)"
            );
        }
    }

    /// Layer 10 on the request head: phases 1 (and 2 when no body follows).
    async fn waf_head(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        policy: &Policy,
    ) -> Result<bool> {
        let Some(waf) = &policy.waf else {
            return Ok(false);
        };
        let request = session.req_header();
        let target = request
            .uri
            .path_and_query()
            .map_or("/", |target| target.as_str());
        let headers = request
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()));
        let server_port = policy.listen.https.port();
        let facts = waf::facts(
            request.method.as_str(),
            target,
            session.is_http2(),
            request.uri.authority().map(|a| a.as_str()),
            headers,
            ctx.client_ip.map(|ip| (ip, 0)),
            server_port,
        );
        // Whether a body follows, as the session knows it: a length or chunking over
        // HTTP/1.1, and over HTTP/2 a stream not ended with its headers (which needs
        // neither a length nor chunking).
        let body_follows = !session.is_body_empty();
        let mut tx = waf.transaction(facts);
        let mut verdict = tx.process_request_headers();
        if !verdict.is_blocked() {
            if body_follows {
                self.record_waf(ctx, &verdict);
                ctx.waf = Some(Box::new(tx));
                return Ok(false);
            }
            verdict = tx.process_request_body(b"");
        }
        self.record_waf(ctx, &verdict);
        self.apply(session, ctx, LayerId::Waf, waf::outcome(&verdict))
            .await
    }

    /// Layer 10 on the body: holds it back, up to the inspection limit, and runs phase 2
    /// when it is complete (or the limit is reached); only then does what was held go
    /// upstream. Nothing reaches the application before the decision: the end of a body
    /// may come apart from its last bytes (an HTTP/2 END_STREAM in an empty frame), and an
    /// application that has read all the bytes it was promised answers before it.
    fn waf_body(
        &self,
        ctx: &mut Ctx,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Option<Verdict> {
        let limit = ctx.policy.waf.as_ref()?.body_limit;
        ctx.waf.as_ref()?;
        // Held back: an empty chunk (Pingora reads `None` as the end of the body).
        if let Some(chunk) = body.as_mut().map(std::mem::take) {
            ctx.waf_body.extend_from_slice(&chunk);
        }
        if !end_of_stream && ctx.waf_body.len() < limit {
            return None;
        }
        let mut tx = ctx.waf.take()?;
        let held = std::mem::take(&mut ctx.waf_body);
        let verdict = tx.process_request_body(&held[..held.len().min(limit)]);
        self.record_waf(ctx, &verdict);
        if !held.is_empty() {
            *body = Some(Bytes::from(held));
        }
        Some(waf::outcome(&verdict))
    }

    /// Counts a scan's finding and logs what was found or let through unscanned.
    fn record_av(&self, ctx: &Ctx, finding: &Finding, verdict: &Verdict) {
        self.shared
            .metrics
            .av_scans
            .with_label_values(&[finding.label()])
            .inc();
        match (finding, verdict) {
            (Finding::Clean, _) => {}
            (Finding::Infected(signature), _) => tracing::warn!(
                request_id = ctx.request_id.as_str(),
                signature,
                "an upload carried malware; refused"
            ),
            (Finding::Unscannable(_), Verdict::Continue) => tracing::warn!(
                request_id = ctx.request_id.as_str(),
                finding = finding.label(),
                detail = finding.detail(),
                "an upload could not be scanned; let through (onUnscannable: Allow)"
            ),
            (Finding::Unscannable(_), _) => tracing::warn!(
                request_id = ctx.request_id.as_str(),
                finding = finding.label(),
                detail = finding.detail(),
                "an upload could not be scanned; refused"
            ),
        }
    }

    /// Layer 10b on the request head: a request whose body is to be scanned gets its clamd
    /// session before the upstream is contacted. A body announced over the size limit, or
    /// clamd out of reach, is decided at once (refused before the upstream hears of it, or
    /// let through unscanned).
    async fn av_head(&self, session: &mut Session, ctx: &mut Ctx, policy: &Policy) -> Result<bool> {
        let Some(av) = &policy.antivirus else {
            return Ok(false);
        };
        // Whether a body follows (an HTTP/2 request may send one with neither a length
        // nor chunking).
        if session.is_body_empty() {
            return Ok(false);
        }
        let request = session.req_header();
        let content_length: Option<u64> = request
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok());
        if !av.wants(
            &request.method,
            request.uri.path(),
            request
                .headers
                .get(header::CONTENT_TYPE)
                .map(HeaderValue::as_bytes),
        ) {
            return Ok(false);
        }
        let started = if content_length.is_some_and(|len| len > av.max_scan_size as u64) {
            Err(Finding::Unscannable(antivirus::Unscannable::TooLarge))
        } else {
            antivirus::Scan::start(av).await
        };
        let finding = match started {
            Ok(scan) => {
                ctx.av = Some(Box::new(scan));
                return Ok(false);
            }
            Err(finding) => finding,
        };
        let verdict = match antivirus::outcome(&finding, av.on_unscannable) {
            // The body is not read: the connection cannot carry another request.
            Verdict::Respond(response, reason) => Verdict::Respond(response.closing(), reason),
            verdict => verdict,
        };
        self.record_av(ctx, &finding, &verdict);
        self.apply(session, ctx, LayerId::Antivirus, verdict).await
    }

    /// Layer 10b on the body: what the WAF let go is held and streamed to clamd; at the
    /// end of the body (or once the scan ends early) the finding decides whether the held
    /// body goes upstream. Allowed unscannable bodies go on unscanned, the rest streaming.
    async fn av_body(
        &self,
        ctx: &mut Ctx,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Option<Verdict> {
        let scan = ctx.av.as_mut()?;
        let fed = match body.take() {
            Some(chunk) if !chunk.is_empty() => scan.feed(&chunk).await,
            _ => Ok(()),
        };
        let (finding, held) = match fed {
            Ok(()) if !end_of_stream => {
                // Held back: an empty chunk (Pingora reads `None` as the end of the body).
                *body = Some(Bytes::new());
                return None;
            }
            Ok(()) => {
                let policy = Arc::clone(&ctx.policy);
                ctx.av.take()?.finish(policy.antivirus.as_ref()?).await
            }
            Err(finding) => (finding, ctx.av.take()?.into_held()),
        };
        let on_unscannable = ctx.policy.antivirus.as_ref()?.on_unscannable;
        let verdict = antivirus::outcome(&finding, on_unscannable);
        self.record_av(ctx, &finding, &verdict);
        match verdict {
            Verdict::Continue => {
                *body = Some(Bytes::from(held));
                None
            }
            verdict => Some(verdict),
        }
    }

    /// Layer 5: Jellyfin's setup wizard, metrics and logs. Also keeps what the edge knows of
    /// the setup wizard fresh (one request every 30 s asks Jellyfin, off the request path).
    async fn app_rules(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        policy: &Arc<Policy>,
    ) -> Result<bool> {
        if self.shared.startup.claim_check(unix_seconds(ctx.time)) {
            let shared = Arc::clone(&self.shared);
            let policy = Arc::clone(policy);
            tokio::spawn(async move {
                let asked = shared
                    .app_client
                    .get(
                        &policy.upstream,
                        &policy.host_header,
                        "/System/Info/Public",
                        &[],
                    )
                    .await;
                match asked {
                    Ok((StatusCode::OK, body)) => match app_rules::startup_completed(&body) {
                        Some(completed) => shared.startup.set_completed(completed),
                        None => tracing::warn!(
                            "the app's /System/Info/Public does not say whether setup is complete"
                        ),
                    },
                    Ok((status, _)) => {
                        tracing::warn!(%status, "the app's /System/Info/Public failed")
                    }
                    Err(error) => {
                        tracing::debug!(%error, "the app could not be asked about its setup")
                    }
                }
            });
        }
        let path = session.req_header().uri.path();
        if app_rules::reveals_local_address(policy.app_kind, path) {
            ctx.server_info = Some(Vec::new());
        }
        let verdict = app_rules::check(policy.app_kind, path, self.shared.startup.completed());
        self.apply(session, ctx, LayerId::App, verdict).await
    }

    /// Layer 7: addresses banned by a honeypot, scanners, sign-in without a user agent, and
    /// honeypots (which ban).
    async fn bots(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let now = unix_millis(SystemTime::now());
        let metrics = &self.shared.metrics;
        if let Some(ip) = ctx.client_ip
            && let Some(end) = self.shared.honeypot_bans.ban_end(ip, now)
        {
            metrics
                .ratelimit_decisions
                .with_label_values(&[bots::HONEYPOT_RULE, "banned"])
                .inc();
            let verdict = Verdict::Respond(
                Response::error(StatusCode::FORBIDDEN).with_header(
                    header::RETRY_AFTER,
                    HeaderValue::from(end.saturating_sub(now).div_ceil(1000)),
                ),
                Reason::new("banned", "banned for touching a honeypot"),
            );
            return self.apply(session, ctx, LayerId::Bot, verdict).await;
        }
        let request = session.req_header();
        let user_agent = request
            .headers
            .get(header::USER_AGENT)
            .map(HeaderValue::as_bytes);
        let decided = self.shared.bot_guard.check(request.uri.path(), user_agent);
        if decided.ban
            && let Some(ip) = ctx.client_ip
        {
            let path = request.uri.path().to_owned();
            let end = now + u64::try_from(bots::HONEYPOT_BAN.as_millis()).unwrap_or(u64::MAX);
            let shared = match &ctx.policy.honeypots {
                Some(honeypots) => match honeypots.publish(ip, now, end).await {
                    Ok(()) => true,
                    Err(error) => {
                        self.shared.redis_failed(
                            bots::HONEYPOT_RULE,
                            &error,
                            "the honeypot ban holds on this replica only",
                        );
                        false
                    }
                },
                None => false,
            };
            self.shared.honeypot_bans.ban(ip, now, end, shared);
            metrics.bans.with_label_values(&[bots::HONEYPOT_RULE]).inc();
            tracing::warn!(
                limit = bots::HONEYPOT_RULE,
                key = %ip,
                path,
                seconds = bots::HONEYPOT_BAN.as_secs(),
                shared,
                "banned"
            );
        }
        self.apply(session, ctx, LayerId::Bot, decided.verdict)
            .await
    }

    /// One step of a rule's limiter: in Redis when the rule shares its counters, in this
    /// replica's memory otherwise or while Redis cannot answer (said in logs and metrics).
    async fn limiter_step(&self, rule: &Rule, key: &str, op: Op, now: u64) -> LimitOutcome {
        let lifted_before = rule.lifted_before(key);
        if let Some(redis) = &rule.redis {
            match redis
                .step(&rule.redis_key(key), &rule.params, op, now, lifted_before)
                .await
            {
                Ok(outcome) => return outcome,
                Err(error) => self.shared.redis_failed(
                    &rule.name,
                    &error,
                    "rate limits are decided by this replica alone",
                ),
            }
        }
        self.shared
            .limiter
            .step(&rule.name, key, &rule.params, op, now, lifted_before)
    }

    /// Layer 6: the rate limits of `stage` that match the request, in order; the first that
    /// limits or bans answers. Rules that challenge browsers do not count a posted solution
    /// (it is how a challenged browser gets back in) nor requests with a pass; other rules
    /// count them like any request.
    async fn rate_limit(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        policy: &Policy,
        stage: Stage,
    ) -> Result<bool> {
        let now = unix_millis(SystemTime::now());
        let mut decided = None;
        {
            let request = session.req_header();
            let path = request.uri.path();
            let session_cookie = policy
                .access
                .as_ref()
                .and_then(|access| access::cookie(&request.headers, access.session_cookie_name()));
            let now_seconds = now / 1000;
            let solution = is_challenge_answer(request);
            for (index, rule) in policy.rate_limits.iter().enumerate() {
                if rule.stage() != stage || !rule.matches(&request.method, path) {
                    continue;
                }
                if rule.challenge
                    && (solution
                        || ctx.client_ip.is_some_and(|ip| {
                            policy
                                .challenger
                                .has_pass(&request.headers, ip, now_seconds)
                        }))
                {
                    continue;
                }
                let facts = KeyFacts {
                    client_ip: ctx.client_ip,
                    headers: &request.headers,
                    session: session_cookie,
                    email: ctx.email.as_deref(),
                };
                let Some(key) = rule.key(&facts) else {
                    continue;
                };
                let outcome = match rule.manual_ban(&key, now) {
                    Some(end) => LimitOutcome::Banned {
                        start: 0,
                        end,
                        new: false,
                    },
                    None => self.limiter_step(rule, &key, rule.op(), now).await,
                };
                match outcome {
                    LimitOutcome::Allowed => {
                        if rule.op() == Op::Peek {
                            ctx.response_counts.push((index, key));
                        }
                    }
                    _ => {
                        let navigation = access::is_navigation(&request.method, &request.headers);
                        let challenge = match (outcome, ctx.client_ip) {
                            (LimitOutcome::Limited { .. }, Some(ip))
                                if rule.challenge && navigation =>
                            {
                                let target = request
                                    .uri
                                    .path_and_query()
                                    .map_or("/", |target| target.as_str());
                                Some(policy.challenger.page(ip, now_seconds, target, &rule.name))
                            }
                            _ => None,
                        };
                        decided = Some((rule, key, outcome, challenge));
                        break;
                    }
                }
            }
        }
        let Some((rule, key, outcome, challenge)) = decided else {
            return Ok(false);
        };
        let metrics = &self.shared.metrics;
        let label = match outcome {
            LimitOutcome::Banned { new: true, end, .. } => {
                metrics.bans.with_label_values(&[&*rule.name]).inc();
                tracing::warn!(
                    limit = &*rule.name,
                    key = key.as_str(),
                    seconds = end.saturating_sub(now) / 1000,
                    "banned"
                );
                "banned"
            }
            LimitOutcome::Banned { .. } => "banned",
            _ if challenge.is_some() => "challenged",
            _ => "limited",
        };
        metrics
            .ratelimit_decisions
            .with_label_values(&[&*rule.name, label])
            .inc();
        let verdict = challenge.unwrap_or_else(|| rule.verdict(outcome, now));
        self.apply(session, ctx, LayerId::RateLimit, verdict).await
    }

    /// Counts the response of a request for the rules that count only some statuses.
    async fn count_response(&self, ctx: &mut Ctx, status: u16) {
        if ctx.response_counts.is_empty() {
            return;
        }
        let now = unix_millis(SystemTime::now());
        let policy = Arc::clone(&ctx.policy);
        for (index, key) in std::mem::take(&mut ctx.response_counts) {
            if let Some(rule) = policy.rate_limits.get(index)
                && rule.counts_response(status)
            {
                self.limiter_step(rule, &key, Op::Count, now).await;
            }
        }
    }

    /// Layer 8: finds the client's country and applies the allow and deny lists.
    async fn geo(&self, session: &mut Session, ctx: &mut Ctx, policy: &Policy) -> Result<bool> {
        let geo = &policy.geo;
        if geo.db.is_none() && !geo.cloudflare_country {
            return Ok(false);
        }
        let from_cloudflare = geo.cloudflare_country
            && peer_ip(session).is_some_and(|peer| policy.trusted_proxies.contains(peer));
        let told = from_cloudflare
            .then(|| session.get_header(CF_IPCOUNTRY))
            .flatten()
            .and_then(|value| Country::parse(value.as_bytes()))
            .filter(|country| country.as_str() != "XX");
        let country = told.or_else(|| geo.db.as_ref()?.country(ctx.client_ip?));
        ctx.country = country;
        let metrics = &self.shared.metrics;
        metrics
            .requests_by_country
            .with_label_values(&[country.as_ref().map_or("unknown", Country::as_str)])
            .inc();
        let verdict = geo.filter.check(country);
        if let Verdict::Respond(_, reason) = &verdict {
            metrics
                .access_decisions
                .with_label_values(&[reason.rule])
                .inc();
        }
        self.apply(session, ctx, LayerId::Geo, verdict).await
    }

    /// Layer 9: a session, a token the application accepts, a bypass, or the sign-in flow.
    async fn access(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        policy: &Policy,
        access: &Access,
    ) -> Result<bool> {
        let now = unix_seconds(ctx.time);
        let mut keys = access
            .cloudflare()
            .map(|cf| (cf, self.shared.cloudflare_keys.keys(cf.jwks_url())));
        if let Some((cf, known)) = &mut keys
            && let Some(kid) =
                access.keys_to_fetch(&access_request(session.req_header()), known, now)
        {
            *known = self
                .shared
                .cloudflare_keys
                .fetch(cf, FetchCause::UnknownKey(&kid))
                .await;
        }
        let outcome = access.check(
            &access_request(session.req_header()),
            now,
            keys.as_ref().map(|(_, known)| &**known),
        );
        match outcome {
            Outcome::Granted(grant) => {
                self.grant(ctx, grant);
                self.rate_limit(session, ctx, policy, Stage::AfterAccess)
                    .await
            }
            Outcome::Answered(answer) => self.answer(session, ctx, policy, access, answer).await,
            Outcome::ReadForm(kind) => {
                let Some(body) = read_form(session).await? else {
                    let verdict = Verdict::Respond(
                        Response::error(StatusCode::PAYLOAD_TOO_LARGE).closing(),
                        Reason::new("form-too-large", "the sign-in form is too large"),
                    );
                    return self.apply(session, ctx, LayerId::Access, verdict).await;
                };
                let submitted = access.submit(
                    kind,
                    &access_request(session.req_header()),
                    &body,
                    &self.shared.logins,
                    now,
                );
                let answer = match submitted {
                    Submitted::Answered(answer) => answer,
                    Submitted::TryCode(tried) => {
                        let attempt = self.code_attempt(access, &tried, now).await;
                        access.code_tried(
                            &access_request(session.req_header()),
                            &tried,
                            attempt,
                            now,
                        )
                    }
                };
                self.answer(session, ctx, policy, access, answer).await
            }
            Outcome::VerifyToken(token) => {
                let metrics = &self.shared.metrics;
                let cache = &self.shared.app_tokens;
                let status = match cache.get(&token, now) {
                    Some(status) => {
                        metrics
                            .app_token_checks
                            .with_label_values(&["cached"])
                            .inc();
                        Ok(status)
                    }
                    None => {
                        let asked = self
                            .shared
                            .app_client
                            .ask_token(&policy.upstream, &policy.host_header, &token)
                            .await;
                        let label = match &asked {
                            Ok(TokenStatus::Valid) => "valid",
                            Ok(TokenStatus::Invalid) => "invalid",
                            Err(_) => "error",
                        };
                        metrics.app_token_checks.with_label_values(&[label]).inc();
                        if let Ok(status) = asked {
                            let ttl = access.app_token_ttl().unwrap_or_default();
                            cache.put(&token, status, ttl, now);
                        }
                        asked
                    }
                };
                let verdict = match status {
                    Ok(TokenStatus::Valid) => {
                        self.grant(ctx, Access::token_accepted());
                        return self
                            .rate_limit(session, ctx, policy, Stage::AfterAccess)
                            .await;
                    }
                    Ok(TokenStatus::Invalid) => Access::token_refused(),
                    Err(error) => Verdict::Respond(
                        Response::error(StatusCode::BAD_GATEWAY),
                        Reason::owned("app-token-unverified", error),
                    ),
                };
                if let Verdict::Respond(_, reason) = &verdict {
                    metrics
                        .access_decisions
                        .with_label_values(&[reason.rule])
                        .inc();
                }
                self.apply(session, ctx, LayerId::Access, verdict).await
            }
        }
    }

    /// Judges a typed code: in the Redis the replicas share when there is one, in this
    /// replica's memory otherwise or while Redis cannot answer (said in logs and metrics).
    async fn code_attempt(&self, access: &Access, tried: &CodeTry, now: u64) -> Attempt {
        if let Some(shared) = access.otp().and_then(|otp| otp.shared.as_ref()) {
            match shared
                .attempt(&tried.pending, tried.correct, tried.max_wrong, now)
                .await
            {
                Ok(attempt) => return attempt,
                Err(error) => {
                    self.shared.metrics.otp_backend_errors.inc();
                    let last = self.shared.otp_redis_warned_at.load(Ordering::Relaxed);
                    if now >= last + 10
                        && self
                            .shared
                            .otp_redis_warned_at
                            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                    {
                        tracing::warn!(
                            %error,
                            "Redis cannot answer; one-time-code attempts are counted by this replica alone"
                        );
                    }
                }
            }
        }
        self.shared
            .logins
            .attempt(&tried.pending, tried.correct, tried.max_wrong, now)
    }

    fn grant(&self, ctx: &mut Ctx, grant: Grant) {
        self.shared
            .metrics
            .access_decisions
            .with_label_values(&[grant.rule])
            .inc();
        ctx.cloudflare_identity = grant.rule == cloudflare::GRANT_RULE;
        ctx.email = grant.email;
        ctx.set_cookie = grant.set_cookie;
        ctx.decision = Decision {
            layer: LayerId::Access,
            kind: DecisionKind::Pass,
            rule: grant.rule,
            reason: Cow::Borrowed(""),
        };
    }

    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        policy: &Policy,
        access: &Access,
        answer: Answer,
    ) -> Result<bool> {
        if answer.email.is_some() {
            // Limits per e-mail apply before a code goes out.
            ctx.email.clone_from(&answer.email);
            if self
                .rate_limit(session, ctx, policy, Stage::AfterAccess)
                .await?
            {
                return Ok(true);
            }
        }
        let metrics = &self.shared.metrics;
        if let Verdict::Respond(_, reason) = &answer.verdict {
            metrics
                .access_decisions
                .with_label_values(&[reason.rule])
                .inc();
        }
        if let (Some(mail), Some(otp)) = (answer.mail, access.otp()) {
            let mailer = otp.mailer.clone();
            let ttl = otp.ttl();
            let metrics = metrics.clone();
            let request_id = ctx.request_id;
            tokio::spawn(async move {
                match mailer.send_code(&mail.to, &mail.code, ttl).await {
                    Ok(()) => {
                        metrics.otp_mails.with_label_values(&["sent"]).inc();
                        tracing::info!(
                            request_id = request_id.as_str(),
                            email = mail.to,
                            "one-time code sent"
                        );
                    }
                    Err(error) => {
                        metrics.otp_mails.with_label_values(&["failed"]).inc();
                        tracing::error!(request_id = request_id.as_str(), email = mail.to, %error, "one-time code not sent");
                    }
                }
            });
        }
        ctx.email = answer.email;
        self.apply(session, ctx, LayerId::Access, answer.verdict)
            .await
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
            country: None,
            email: None,
            cloudflare_identity: false,
            set_cookie: None,
            response_counts: Vec::new(),
            waf: None,
            waf_body: Vec::new(),
            av: None,
            server_info: None,
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
        if session.is_upgrade_req() {
            // A websocket's client side may be quiet for long; the upstream read timeout
            // bounds it instead.
            session.set_read_timeout(None);
        } else {
            session.set_read_timeout(Some(policy.timeouts.body_read));
        }
        if let Some((layer, verdict)) = policy.check_head(&request_facts(session)) {
            return self.apply(session, ctx, layer, verdict).await;
        }
        if self.app_rules(session, ctx, &policy).await? {
            return Ok(true);
        }
        // Limits per address, header or session come before anything that reads a body,
        // hashes, asks the application or runs the WAF.
        if self
            .rate_limit(session, ctx, &policy, Stage::BeforeAccess)
            .await?
        {
            return Ok(true);
        }
        if self.bots(session, ctx).await? {
            return Ok(true);
        }
        if is_challenge_answer(session.req_header()) {
            return self.challenge_answer(session, ctx, &policy).await;
        }
        if self.geo(session, ctx, &policy).await? {
            return Ok(true);
        }
        if let Some(access) = &policy.access
            && self.access(session, ctx, &policy, access).await?
        {
            return Ok(true);
        }
        if self.waf_head(session, ctx, &policy).await? {
            return Ok(true);
        }
        self.av_head(session, ctx, &policy).await
    }

    async fn request_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.body_received += body.as_ref().map_or(0, |chunk| chunk.len() as u64);
        let mut limited = ctx.policy.check_body(ctx.body_received).or_else(|| {
            self.waf_body(ctx, body, end_of_stream)
                .filter(|verdict| *verdict != Verdict::Continue)
                .map(|verdict| (LayerId::Waf, verdict))
        });
        if limited.is_none() {
            limited = self
                .av_body(ctx, body, end_of_stream)
                .await
                .map(|verdict| (LayerId::Antivirus, verdict));
        }
        if let Some((layer, verdict)) = limited {
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
        if ctx.server_info.is_some() {
            // A plain body, so that the edge can rewrite it.
            upstream_request.remove_header(&header::ACCEPT_ENCODING);
        }
        let client = ctx
            .client_ip
            .map_or(HeaderValue::from_static("unknown"), header_value_of_ip);
        let request_id = ctx.request_id.header_value();
        for (name, value) in
            upstream::forwarding_headers(&client, &ctx.policy.host_header, &request_id)
        {
            upstream_request.insert_header(name, value)?;
        }
        if ctx
            .policy
            .access
            .as_ref()
            .is_some_and(|access| access.cloudflare().is_some())
        {
            // Only what the edge verified: the e-mail of the token it let the request in on.
            upstream_request.remove_header(&cloudflare::EMAIL_HEADER);
            if ctx.cloudflare_identity
                && let Some(email) = ctx.email.as_deref()
                && let Ok(value) = HeaderValue::from_str(email)
            {
                upstream_request.insert_header(cloudflare::EMAIL_HEADER, value)?;
            }
        }
        if let Some(access) = &ctx.policy.access
            && upstream_request.headers.contains_key(header::COOKIE)
        {
            // The edge's own cookies (the session) are none of the application's business.
            let kept = access.strip_own_cookies(
                upstream_request
                    .headers
                    .get_all(header::COOKIE)
                    .iter()
                    .map(HeaderValue::as_bytes),
            );
            upstream_request.remove_header(&header::COOKIE);
            if let Some(kept) = kept {
                upstream_request.insert_header(header::COOKIE, kept)?;
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        upstream_response.remove_header(&header::SERVER);
        upstream_response.remove_header(&X_POWERED_BY);
        if ctx.server_info.is_some() {
            if upstream_response
                .headers
                .contains_key(header::CONTENT_ENCODING)
            {
                // Not the plain body asked for: refuse rather than pass the address on.
                return Error::e_explain(
                    ErrorType::HTTPStatus(502),
                    "the app's server info came encoded",
                );
            }
            // The length changes with the rewrite.
            upstream_response.remove_header(&header::CONTENT_LENGTH);
            if !session.is_http2() {
                upstream_response.insert_header(header::TRANSFER_ENCODING, "chunked")?;
            }
        }
        upstream_response.insert_header(X_REQUEST_ID, ctx.request_id.header_value())?;
        if let Some(cookie) = ctx.set_cookie.take() {
            upstream_response.append_header(header::SET_COOKIE, cookie)?;
        }
        upstream_response.insert_header(STRICT_TRANSPORT_SECURITY, ctx.policy.hsts.clone())?;
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

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        let Some(info) = ctx.server_info.as_mut() else {
            return Ok(None);
        };
        if let Some(chunk) = body.take() {
            info.extend_from_slice(&chunk);
        }
        if info.len() > app_rules::SERVER_INFO_LIMIT {
            *body = Some(Bytes::from(std::mem::take(info)));
            ctx.server_info = None;
        } else if end_of_stream {
            let original = std::mem::take(info);
            let public_url = format!("https://{}", ctx.policy.host);
            let hidden = app_rules::hide_local_address(&original, &public_url);
            *body = Some(Bytes::from(hidden.unwrap_or(original)));
            ctx.server_info = None;
        }
        Ok(None)
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, error: &Error) -> bool {
        // Clients that go away are normal at the edge; the access log has them.
        error.esource() == &ErrorSource::Downstream
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session
            .response_written()
            .map_or(0, |response| response.status.as_u16());
        self.count_response(ctx, status).await;
        let metrics = &self.shared.metrics;
        let duration = ctx.start.elapsed();
        metrics.request(ctx.decision.layer, ctx.decision.kind).inc();
        metrics.request_duration.observe(duration.as_secs_f64());
        let request = session.req_header();
        access_log::emit(&AccessRecord {
            time: ctx.time,
            request_id: ctx.request_id.as_str(),
            client_ip: ctx.client_ip.or_else(|| peer_ip(session)),
            country: ctx.country.as_ref().map_or("", Country::as_str),
            email: ctx.email.as_deref().unwrap_or(""),
            method: request.method.as_str(),
            path: request
                .uri
                .path_and_query()
                .map_or("", |target| target.as_str()),
            status,
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
