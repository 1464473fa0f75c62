//! The verdict every layer returns, and the decision recorded for each request.
//!
//! A layer is a pure function from the request's facts and the compiled policy to a
//! [`Verdict`]. The Pingora glue in [`crate::edge`] only gathers facts and applies verdicts,
//! so every layer is tested without sockets. Layers that stop a request say which of their
//! rules did and why ([`Reason`]); the runner adds which layer it was ([`Decision`]), and
//! that is what the access log and `portcullis_requests_total{layer,decision}` record.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

/// What a layer decided about a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to say: the next layer decides.
    Continue,
    /// Answer the request now, without contacting the upstream.
    Respond(Response, Reason),
    /// Send the client elsewhere.
    Redirect(Redirect, Reason),
}

/// A response the edge writes itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: StatusCode,
    /// Headers besides the ones every edge response gets (content type and length, HSTS).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The body.
    pub body: Body,
    /// Whether the connection must be closed after the response (framing errors, bodies
    /// that will not be read).
    pub close: bool,
}

impl Response {
    /// The edge's error page for `status` (HTML or JSON, with the request id).
    pub fn error(status: StatusCode) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::ErrorPage,
            close: false,
        }
    }

    /// Adds a header.
    #[must_use]
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Closes the connection after the response.
    #[must_use]
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }
}

/// The body of a response the edge writes itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// The shared error page, rendered when the response is written (it needs the request
    /// id and the client's `Accept`).
    ErrorPage,
    /// Fixed bytes with their content type.
    Bytes {
        /// `Content-Type`.
        content_type: HeaderValue,
        /// The bytes.
        bytes: Bytes,
    },
}

/// A redirect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redirect {
    /// 301, 302, 303, 307 or 308.
    pub status: StatusCode,
    /// Where to.
    pub location: HeaderValue,
}

/// Which rule of a layer decided, and why, in words for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    /// A stable rule id, such as `method-not-allowed`.
    pub rule: &'static str,
    /// Details for the log line (never sent to the client).
    pub detail: Cow<'static, str>,
}

impl Reason {
    /// A reason with a fixed text.
    pub const fn new(rule: &'static str, detail: &'static str) -> Self {
        Self {
            rule,
            detail: Cow::Borrowed(detail),
        }
    }

    /// A reason whose text is built for this request.
    pub fn owned(rule: &'static str, detail: String) -> Self {
        Self {
            rule,
            detail: Cow::Owned(detail),
        }
    }
}

/// The layers of the edge, in request order. Each one names itself in logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerId {
    /// Connection guards (caps, handshake and header timeouts).
    Connection,
    /// TLS termination and the plain-HTTP redirect.
    Tls,
    /// Request hygiene.
    Hygiene,
    /// Rules that know the application (Jellyfin's setup wizard, metrics, logs).
    App,
    /// Rate limits and bans.
    RateLimit,
    /// Bot guards (scanners, honeypots).
    Bot,
    /// The client's country.
    Geo,
    /// Zero-trust access (sessions, sign-in, app tokens).
    Access,
    /// The web application firewall (the OWASP CRS).
    Waf,
    /// Upload antivirus (clamd).
    Antivirus,
    /// The upstream (proxied requests and origin failures).
    Upstream,
}

impl LayerId {
    /// Every layer, in request order.
    pub const ALL: [Self; 11] = [
        Self::Connection,
        Self::Tls,
        Self::Hygiene,
        Self::App,
        Self::RateLimit,
        Self::Bot,
        Self::Geo,
        Self::Access,
        Self::Waf,
        Self::Antivirus,
        Self::Upstream,
    ];

    /// The name used in logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::Tls => "tls",
            Self::Hygiene => "hygiene",
            Self::App => "app",
            Self::RateLimit => "ratelimit",
            Self::Bot => "bot",
            Self::Geo => "geo",
            Self::Access => "access",
            Self::Waf => "waf",
            Self::Antivirus => "antivirus",
            Self::Upstream => "upstream",
        }
    }

    /// The position in [`Self::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// What happened to a request, in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecisionKind {
    /// Every layer let it through and it went to the upstream.
    Pass,
    /// A layer answered it.
    Respond,
    /// A layer redirected it.
    Redirect,
    /// The edge could not complete it (origin failure, client gone).
    Error,
}

impl DecisionKind {
    /// Every kind.
    pub const ALL: [Self; 4] = [Self::Pass, Self::Respond, Self::Redirect, Self::Error];

    /// The name used in logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "pass",
            Self::Respond => "respond",
            Self::Redirect => "redirect",
            Self::Error => "error",
        }
    }

    /// The position in [`Self::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// The decision that mattered for a request: which layer, what kind, which rule, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The deciding layer.
    pub layer: LayerId,
    /// What it decided.
    pub kind: DecisionKind,
    /// The rule.
    pub rule: &'static str,
    /// Why.
    pub reason: Cow<'static, str>,
}

impl Decision {
    /// The decision of a request every layer let through.
    pub const fn pass() -> Self {
        Self {
            layer: LayerId::Upstream,
            kind: DecisionKind::Pass,
            rule: "",
            reason: Cow::Borrowed(""),
        }
    }

    /// The decision a non-`Continue` verdict of `layer` stands for; `None` for `Continue`.
    pub fn of(layer: LayerId, verdict: &Verdict) -> Option<Self> {
        let (kind, reason) = match verdict {
            Verdict::Continue => return None,
            Verdict::Respond(_, reason) => (DecisionKind::Respond, reason),
            Verdict::Redirect(_, reason) => (DecisionKind::Redirect, reason),
        };
        Some(Self {
            layer,
            kind,
            rule: reason.rule,
            reason: reason.detail.clone(),
        })
    }

    /// An error of `layer`.
    pub fn error(layer: LayerId, rule: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            layer,
            kind: DecisionKind::Error,
            rule,
            reason: reason.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continue_records_no_decision() {
        assert_eq!(Decision::of(LayerId::Hygiene, &Verdict::Continue), None);
    }

    #[test]
    fn a_response_records_its_layer_rule_and_reason() {
        let verdict = Verdict::Respond(
            Response::error(StatusCode::METHOD_NOT_ALLOWED),
            Reason::new("method-not-allowed", "TRACE is not allowed"),
        );
        let decision = Decision::of(LayerId::Hygiene, &verdict).unwrap();
        assert_eq!(decision.layer.as_str(), "hygiene");
        assert_eq!(decision.kind.as_str(), "respond");
        assert_eq!(decision.rule, "method-not-allowed");
        assert_eq!(decision.reason, "TRACE is not allowed");
    }

    #[test]
    fn indexes_follow_the_order_of_all() {
        for (i, layer) in LayerId::ALL.iter().enumerate() {
            assert_eq!(layer.index(), i);
        }
        for (i, kind) in DecisionKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }
}
