//! Layer 4, request hygiene: the request must be well formed and within limits before any
//! later layer or the upstream sees it.
//!
//! Runs in `request_filter` on the request head ([`Hygiene::check`]) and in
//! `request_body_filter` on every body chunk ([`Hygiene::check_body`], so an oversized body
//! is refused while it streams, never buffered). Both are pure functions of the facts the
//! proxy gathered ([`RequestFacts`]) and the compiled limits.
//!
//! | rule | status |
//! | --- | --- |
//! | `Content-Length` together with `Transfer-Encoding`, duplicate or malformed `Content-Length` (smuggling) | 400 |
//! | request target longer than `maxUriBytes` | 414 |
//! | more than `maxHeaderCount` headers, or more than `maxHeaderBytes` of them | 431 |
//! | no `Host` | 400 |
//! | `Host` is not the configured host | 421 |
//! | method not in `allowedMethods` | 405 (with `Allow`) |
//! | declared or streamed body larger than `maxBody` | 413 |

use http::{HeaderValue, Method, StatusCode, header};
use portcullis_crds::{edge, rate_limit::HttpMethod};

use crate::verdict::{Reason, Response, Verdict};

/// The compiled hygiene layer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hygiene {
    host: Box<str>,
    max_uri_bytes: usize,
    head: HeadLimits,
    max_body: u64,
    methods: MethodSet,
}

/// Bounds on a request head: checked by this layer on HTTPS, and by the plain-HTTP
/// listener's HTTP parser ([`crate::redirect`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadLimits {
    /// Most header fields (`limits.maxHeaderCount`).
    pub max_headers: usize,
    /// Most bytes of head (`limits.maxHeaderBytes`).
    pub max_bytes: usize,
}

/// What the proxy found out about a request head.
#[derive(Clone, Debug)]
pub struct RequestFacts<'a> {
    /// The method.
    pub method: &'a Method,
    /// The `Host` header, or the HTTP/2 `:authority`.
    pub host: Option<&'a [u8]>,
    /// Length of the request target (path and query).
    pub uri_bytes: usize,
    /// Number of header lines.
    pub header_count: usize,
    /// Bytes of all header lines (`name: value\r\n`).
    pub header_bytes: usize,
    /// What `Content-Length` says.
    pub content_length: ContentLength,
    /// Whether `Transfer-Encoding` is present.
    pub transfer_encoding: bool,
    /// Whether the raw request carried `Content-Length` next to `Transfer-Encoding` (Pingora
    /// drops the `Content-Length` in that case, so the proxy looks at the raw head).
    pub content_length_with_transfer_encoding: bool,
}

/// What the `Content-Length` headers of a request say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentLength {
    /// No `Content-Length`.
    Absent,
    /// One well-formed value.
    Valid(u64),
    /// More than one value (several headers, or a comma list).
    Duplicate,
    /// A value that is not a decimal number.
    Malformed,
}

impl ContentLength {
    /// Classifies the values of every `Content-Length` header of a request.
    pub fn of<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Self {
        let Some(first) = values.next() else {
            return Self::Absent;
        };
        if values.next().is_some() || first.contains(&b',') {
            return Self::Duplicate;
        }
        let digits = first.trim_ascii();
        if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
            return Self::Malformed;
        }
        std::str::from_utf8(digits)
            .ok()
            .and_then(|d| d.parse().ok())
            .map_or(Self::Malformed, Self::Valid)
    }
}

/// Whether the raw request head has a `Content-Length` header line.
pub fn raw_head_has_content_length(head: &[u8]) -> bool {
    const NAME: &[u8] = b"content-length:";
    head.split(|&b| b == b'\n').skip(1).any(|line| {
        let line = line.trim_ascii_start();
        line.len() >= NAME.len() && line[..NAME.len()].eq_ignore_ascii_case(NAME)
    })
}

/// The methods a policy allows, as a bit set, with the `Allow` header that lists them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MethodSet {
    bits: u8,
    allow: HeaderValue,
}

fn method_bit(method: &Method) -> Option<u8> {
    Some(match *method {
        Method::GET => 1,
        Method::HEAD => 1 << 1,
        Method::POST => 1 << 2,
        Method::PUT => 1 << 3,
        Method::PATCH => 1 << 4,
        Method::DELETE => 1 << 5,
        Method::OPTIONS => 1 << 6,
        _ => return None,
    })
}

fn crd_method(method: &HttpMethod) -> Method {
    match method {
        HttpMethod::GET => Method::GET,
        HttpMethod::HEAD => Method::HEAD,
        HttpMethod::POST => Method::POST,
        HttpMethod::PUT => Method::PUT,
        HttpMethod::PATCH => Method::PATCH,
        HttpMethod::DELETE => Method::DELETE,
        HttpMethod::OPTIONS => Method::OPTIONS,
    }
}

impl MethodSet {
    /// The set of the given methods.
    pub fn new<'a>(methods: impl IntoIterator<Item = &'a HttpMethod>) -> Self {
        let mut bits = 0;
        let mut names = Vec::new();
        for method in methods.into_iter().map(crd_method) {
            let bit = method_bit(&method).unwrap_or(0);
            if bits & bit == 0 {
                bits |= bit;
                names.push(method.as_str().to_owned());
            }
        }
        let allow =
            HeaderValue::from_str(&names.join(", ")).unwrap_or(HeaderValue::from_static(""));
        Self { bits, allow }
    }

    /// Whether `method` is allowed.
    pub fn allows(&self, method: &Method) -> bool {
        method_bit(method).is_some_and(|bit| self.bits & bit != 0)
    }
}

/// A count from the document as `usize` (the document's integer types may be signed; it
/// validates that counts are positive).
pub(crate) fn usize_of<T: TryInto<usize>>(n: T) -> usize {
    n.try_into().unwrap_or(usize::MAX)
}

/// The host part of a `Host` value: without port, brackets or a trailing dot.
fn host_name(value: &[u8]) -> &[u8] {
    let name = if let Some(rest) = value.strip_prefix(b"[") {
        rest.split(|&b| b == b']').next().unwrap_or(rest)
    } else {
        value.split(|&b| b == b':').next().unwrap_or(value)
    };
    name.strip_suffix(b".").unwrap_or(name)
}

impl Hygiene {
    /// Compiles the layer from the document's host and limits.
    pub fn new(host: &str, limits: &edge::Limits) -> Self {
        Self {
            host: host.to_ascii_lowercase().into_boxed_str(),
            max_uri_bytes: usize_of(limits.max_uri_bytes),
            head: HeadLimits {
                max_headers: usize_of(limits.max_header_count),
                max_bytes: usize_of(limits.max_header_bytes.bytes()),
            },
            max_body: limits.max_body.bytes(),
            methods: MethodSet::new(&limits.allowed_methods),
        }
    }

    /// The largest body allowed.
    pub const fn max_body(&self) -> u64 {
        self.max_body
    }

    /// The bounds on a request head.
    pub const fn head_limits(&self) -> HeadLimits {
        self.head
    }

    /// Checks a request head.
    pub fn check(&self, facts: &RequestFacts<'_>) -> Verdict {
        let bad_request = |rule, detail| {
            Verdict::Respond(
                Response::error(StatusCode::BAD_REQUEST).closing(),
                Reason::new(rule, detail),
            )
        };
        if facts.content_length_with_transfer_encoding
            || (facts.transfer_encoding && facts.content_length != ContentLength::Absent)
        {
            return bad_request(
                "content-length-with-transfer-encoding",
                "Content-Length and Transfer-Encoding both present",
            );
        }
        match facts.content_length {
            ContentLength::Duplicate => {
                return bad_request(
                    "duplicate-content-length",
                    "more than one Content-Length value",
                );
            }
            ContentLength::Malformed => {
                return bad_request("malformed-content-length", "Content-Length is not a number");
            }
            ContentLength::Absent | ContentLength::Valid(_) => {}
        }
        if facts.uri_bytes > self.max_uri_bytes {
            return Verdict::Respond(
                Response::error(StatusCode::URI_TOO_LONG),
                Reason::owned(
                    "uri-too-long",
                    format!("{} bytes > {}", facts.uri_bytes, self.max_uri_bytes),
                ),
            );
        }
        if facts.header_count > self.head.max_headers {
            return Verdict::Respond(
                Response::error(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
                Reason::owned(
                    "too-many-headers",
                    format!("{} headers > {}", facts.header_count, self.head.max_headers),
                ),
            );
        }
        if facts.header_bytes > self.head.max_bytes {
            return Verdict::Respond(
                Response::error(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
                Reason::owned(
                    "headers-too-large",
                    format!(
                        "{} header bytes > {}",
                        facts.header_bytes, self.head.max_bytes
                    ),
                ),
            );
        }
        match facts.host {
            None => return bad_request("host-missing", "no Host header"),
            Some(host) if !host_name(host).eq_ignore_ascii_case(self.host.as_bytes()) => {
                return Verdict::Respond(
                    Response::error(StatusCode::MISDIRECTED_REQUEST),
                    Reason::owned(
                        "host-mismatch",
                        format!("Host {:?}", String::from_utf8_lossy(host)),
                    ),
                );
            }
            Some(_) => {}
        }
        if !self.methods.allows(facts.method) {
            return Verdict::Respond(
                Response::error(StatusCode::METHOD_NOT_ALLOWED)
                    .with_header(header::ALLOW, self.methods.allow.clone()),
                Reason::owned(
                    "method-not-allowed",
                    format!("method {}", facts.method.as_str()),
                ),
            );
        }
        if let ContentLength::Valid(length) = facts.content_length
            && length > self.max_body
        {
            return self.body_too_large(length);
        }
        Verdict::Continue
    }

    /// Checks the body received so far, chunk by chunk, while it streams.
    pub fn check_body(&self, received: u64) -> Verdict {
        if received > self.max_body {
            self.body_too_large(received)
        } else {
            Verdict::Continue
        }
    }

    fn body_too_large(&self, length: u64) -> Verdict {
        Verdict::Respond(
            Response::error(StatusCode::PAYLOAD_TOO_LARGE).closing(),
            Reason::owned(
                "body-too-large",
                format!("{length} body bytes > {}", self.max_body),
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use portcullis_crds::common::ByteSize;

    use super::*;

    fn hygiene() -> Hygiene {
        let limits = edge::Limits {
            max_uri_bytes: 64,
            max_header_count: 5,
            max_header_bytes: ByteSize::from_kib(1),
            max_body: ByteSize::from_kib(4),
            allowed_methods: vec![HttpMethod::GET, HttpMethod::POST],
            ..edge::Limits::default()
        };
        Hygiene::new("Media.Example.org", &limits)
    }

    #[test]
    fn the_plain_listener_gets_the_head_limits_this_layer_checks() {
        assert_eq!(
            hygiene().head_limits(),
            HeadLimits {
                max_headers: 5,
                max_bytes: 1024
            }
        );
    }

    fn clean() -> RequestFacts<'static> {
        RequestFacts {
            method: &Method::GET,
            host: Some(b"media.example.org"),
            uri_bytes: 10,
            header_count: 3,
            header_bytes: 100,
            content_length: ContentLength::Absent,
            transfer_encoding: false,
            content_length_with_transfer_encoding: false,
        }
    }

    fn outcome(verdict: Verdict) -> (u16, &'static str) {
        match verdict {
            Verdict::Respond(response, reason) => (response.status.as_u16(), reason.rule),
            other => panic!("expected a response, got {other:?}"),
        }
    }

    #[test]
    fn a_clean_request_continues() {
        assert_eq!(hygiene().check(&clean()), Verdict::Continue);
    }

    #[test]
    fn the_host_may_carry_a_port_case_or_a_trailing_dot() {
        for host in [
            &b"media.example.org:8443"[..],
            b"MEDIA.example.ORG",
            b"media.example.org.",
        ] {
            let facts = RequestFacts {
                host: Some(host),
                ..clean()
            };
            assert_eq!(hygiene().check(&facts), Verdict::Continue, "{host:?}");
        }
    }

    #[test]
    fn another_host_is_misdirected() {
        let facts = RequestFacts {
            host: Some(b"evil.example.org"),
            ..clean()
        };
        assert_eq!(outcome(hygiene().check(&facts)), (421, "host-mismatch"));
        let facts = RequestFacts {
            host: Some(b"media.example.org.evil.net"),
            ..clean()
        };
        assert_eq!(outcome(hygiene().check(&facts)), (421, "host-mismatch"));
    }

    #[test]
    fn a_missing_host_is_a_bad_request() {
        let facts = RequestFacts {
            host: None,
            ..clean()
        };
        assert_eq!(outcome(hygiene().check(&facts)), (400, "host-missing"));
    }

    #[test]
    fn a_method_off_the_list_is_refused_with_allow() {
        let facts = RequestFacts {
            method: &Method::DELETE,
            ..clean()
        };
        let Verdict::Respond(response, reason) = hygiene().check(&facts) else {
            panic!("expected a response");
        };
        assert_eq!(response.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(reason.rule, "method-not-allowed");
        assert_eq!(
            response.headers,
            [(header::ALLOW, HeaderValue::from_static("GET, POST"))]
        );
        let trace = RequestFacts {
            method: &Method::TRACE,
            ..clean()
        };
        assert_eq!(outcome(hygiene().check(&trace)).0, 405);
    }

    #[test]
    fn a_long_target_is_414() {
        let facts = RequestFacts {
            uri_bytes: 65,
            ..clean()
        };
        assert_eq!(outcome(hygiene().check(&facts)), (414, "uri-too-long"));
    }

    #[test]
    fn too_many_or_too_large_headers_are_431() {
        let many = RequestFacts {
            header_count: 6,
            ..clean()
        };
        assert_eq!(outcome(hygiene().check(&many)), (431, "too-many-headers"));
        let large = RequestFacts {
            header_bytes: 1025,
            ..clean()
        };
        assert_eq!(outcome(hygiene().check(&large)), (431, "headers-too-large"));
    }

    #[test]
    fn a_declared_body_over_the_limit_is_413_and_closes() {
        let facts = RequestFacts {
            method: &Method::POST,
            content_length: ContentLength::Valid(4097),
            ..clean()
        };
        let Verdict::Respond(response, reason) = hygiene().check(&facts) else {
            panic!("expected a response");
        };
        assert_eq!(
            (response.status.as_u16(), reason.rule),
            (413, "body-too-large")
        );
        assert!(response.close);
        let at_limit = RequestFacts {
            method: &Method::POST,
            content_length: ContentLength::Valid(4096),
            ..clean()
        };
        assert_eq!(hygiene().check(&at_limit), Verdict::Continue);
    }

    #[test]
    fn a_streamed_body_is_cut_when_it_passes_the_limit() {
        assert_eq!(hygiene().check_body(4096), Verdict::Continue);
        assert_eq!(outcome(hygiene().check_body(4097)), (413, "body-too-large"));
    }

    #[test]
    fn smuggling_shapes_are_400_and_close() {
        let both = RequestFacts {
            transfer_encoding: true,
            content_length_with_transfer_encoding: true,
            ..clean()
        };
        let both_parsed = RequestFacts {
            transfer_encoding: true,
            content_length: ContentLength::Valid(3),
            ..clean()
        };
        let duplicate = RequestFacts {
            content_length: ContentLength::Duplicate,
            ..clean()
        };
        let malformed = RequestFacts {
            content_length: ContentLength::Malformed,
            ..clean()
        };
        for (facts, rule) in [
            (both, "content-length-with-transfer-encoding"),
            (both_parsed, "content-length-with-transfer-encoding"),
            (duplicate, "duplicate-content-length"),
            (malformed, "malformed-content-length"),
        ] {
            let Verdict::Respond(response, reason) = hygiene().check(&facts) else {
                panic!("expected a response for {rule}");
            };
            assert_eq!((response.status.as_u16(), reason.rule), (400, rule));
            assert!(response.close, "{rule} must close the connection");
        }
    }

    #[test]
    fn content_length_values_are_classified() {
        let of = |values: &[&[u8]]| ContentLength::of(values.iter().copied());
        assert_eq!(of(&[]), ContentLength::Absent);
        assert_eq!(of(&[b"42"]), ContentLength::Valid(42));
        assert_eq!(of(&[b"42", b"42"]), ContentLength::Duplicate);
        assert_eq!(of(&[b"42, 42"]), ContentLength::Duplicate);
        assert_eq!(of(&[b"-1"]), ContentLength::Malformed);
        assert_eq!(of(&[b"0x10"]), ContentLength::Malformed);
        assert_eq!(of(&[b""]), ContentLength::Malformed);
        assert_eq!(of(&[b"99999999999999999999"]), ContentLength::Malformed);
    }

    #[test]
    fn the_raw_head_is_searched_for_content_length_lines_only() {
        let head = b"POST /a HTTP/1.1\r\nHost: x\r\nContent-length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(raw_head_has_content_length(head));
        let head = b"POST /content-length: HTTP/1.1\r\nHost: x\r\nX-Content-Length: 5\r\n\r\n";
        assert!(!raw_head_has_content_length(head));
    }
}
