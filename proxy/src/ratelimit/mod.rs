//! Layer 6, rate limits: how often matching requests may be made per key, with bans for
//! keys that keep exceeding the limit (the seed's brute-force protection on sign-in).
//!
//! Each [`Rule`] is a RateLimit of the document (plus the built-in sign-in limit for
//! Jellyfin, [`builtin_sign_in`]): which requests count (path prefixes or a regex, methods,
//! optionally only some response statuses, the way fail2ban counts failures), what they are
//! counted per (client address with IPv6 networks folded to a prefix, a header, the session
//! cookie, or the e-mail once the access layer knows it), the limit, burst and ban, and where
//! counters live (the replica's [`memory`] or a shared [`redis`]). The arithmetic is
//! [`gcra`]; the proxy runs the step against the backend and turns the outcome into a
//! verdict with [`Rule::verdict`]. Rules keyed by address, header or session run before the
//! bot guards, the challenge answer, geo, access and the WAF ([`Stage::BeforeAccess`]).
//! The bans in force, in memory and in Redis, are listed on the admin port's `/bans`
//! ([`crate::admin`]).
//!
//! | rule | answer |
//! | --- | --- |
//! | `limited` | the rule's status (429) with `Retry-After` |
//! | `banned` (automatic, manual) | the rule's status with `Retry-After` until the ban ends |

pub mod gcra;
pub mod memory;
pub mod redis;

use std::{collections::HashMap, net::IpAddr, path::PathBuf, sync::Arc};

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use ipnet::IpNet;
use portcullis_crds::{edge, rate_limit::KeyKind};
use regex::Regex;

use crate::verdict::{Reason, Response, Verdict};

use self::{
    gcra::{Op, Outcome, Params},
    redis::RedisStore,
};

/// Why the rate limits could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum RateLimitError {
    /// The path regex.
    #[error("rateLimits[{name}].pathRegex: {source}")]
    Regex {
        /// The rule.
        name: String,
        /// Why.
        #[source]
        source: regex::Error,
    },
    /// The Redis URL file.
    #[error("rateLimits[{name}].redisUrlFile {path}: {source}")]
    RedisUrlFile {
        /// The rule.
        name: String,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Redis URL.
    #[error("rateLimits[{name}]: the Redis URL is not valid: {source}")]
    RedisUrl {
        /// The rule.
        name: String,
        /// Why.
        #[source]
        source: ::redis::RedisError,
    },
    /// The key header.
    #[error("rateLimits[{name}].keyHeader: not a header name")]
    Header {
        /// The rule.
        name: String,
    },
}

/// When a rule can be decided: before the access layer (address, header, session cookie)
/// or after it (the e-mail).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Before geo and access: nothing expensive has run yet.
    BeforeAccess,
    /// After access, once the e-mail is known.
    AfterAccess,
}

/// What a rule's key is made from.
#[derive(Clone, Copy, Debug)]
pub struct KeyFacts<'a> {
    /// The client's address.
    pub client_ip: Option<IpAddr>,
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The session cookie's value, when there is one.
    pub session: Option<&'a str>,
    /// The e-mail, once known.
    pub email: Option<&'a str>,
}

/// One compiled rate limit.
#[derive(Debug)]
pub struct Rule {
    /// The RateLimit's name.
    pub name: Arc<str>,
    prefixes: Vec<String>,
    regex: Option<Regex>,
    methods: Vec<Method>,
    only_statuses: Vec<u16>,
    key: KeyKind,
    header: Option<HeaderName>,
    ipv6_prefix: u8,
    /// The limiter's numbers.
    pub params: Params,
    status: StatusCode,
    retry_after: bool,
    /// Browsers over the limit get the proof-of-work challenge ([`crate::challenge`]).
    pub challenge: bool,
    /// The shared backend, when counters live in Redis.
    pub redis: Option<Arc<RedisStore>>,
    redis_prefix: String,
    manual: HashMap<String, u64>,
    lifted: HashMap<String, u64>,
}

fn millis(time: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time) -> u64 {
    u64::try_from(time.0.as_millisecond()).unwrap_or(0)
}

impl Rule {
    /// Compiles one rate limit of the document for the edge of `host`.
    pub fn new(doc: &edge::RateLimit, host: &str) -> Result<Self, RateLimitError> {
        let name = doc.name.clone();
        let regex = doc
            .path_regex
            .as_deref()
            .map(Regex::new)
            .transpose()
            .map_err(|source| RateLimitError::Regex {
                name: name.clone(),
                source,
            })?;
        let header = doc
            .key_header
            .as_deref()
            .map(|h| HeaderName::try_from(h.to_ascii_lowercase()))
            .transpose()
            .map_err(|_| RateLimitError::Header { name: name.clone() })?;
        let redis = match &doc.redis_url_file {
            Some(file) => {
                let url = std::fs::read_to_string(file).map_err(|source| {
                    RateLimitError::RedisUrlFile {
                        name: name.clone(),
                        path: file.display().to_string(),
                        source,
                    }
                })?;
                let store =
                    RedisStore::new(url.trim()).map_err(|source| RateLimitError::RedisUrl {
                        name: name.clone(),
                        source,
                    })?;
                Some(Arc::new(store))
            }
            None => None,
        };
        let ban = doc
            .ban_after
            .zip(doc.ban_duration)
            .map(|(after, duration)| {
                (
                    u32::try_from(after).unwrap_or(1),
                    duration.get().as_millis() as u64,
                )
            });
        Ok(Self {
            params: Params::new(
                u32::try_from(doc.limit).unwrap_or(1),
                doc.period.get().as_millis() as u64,
                u32::try_from(doc.burst).unwrap_or(0),
                ban,
            ),
            prefixes: doc.path_prefixes.clone(),
            regex,
            methods: doc
                .methods
                .iter()
                .filter_map(|m| Method::from_bytes(format!("{m:?}").as_bytes()).ok())
                .collect(),
            only_statuses: doc
                .only_statuses
                .iter()
                .filter_map(|s| u16::try_from(*s).ok())
                .collect(),
            key: doc.key,
            header,
            ipv6_prefix: u8::try_from(doc.ipv6_prefix_length).unwrap_or(64),
            status: u16::try_from(doc.status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::TOO_MANY_REQUESTS),
            retry_after: doc.retry_after,
            challenge: doc.challenge,
            redis,
            redis_prefix: format!("portcullis:rl:{host}:{name}:"),
            manual: doc
                .manual_bans
                .iter()
                .map(|ban| (ban.key.clone(), millis(&ban.at)))
                .collect(),
            lifted: doc
                .lifted_bans
                .iter()
                .map(|lift| (lift.key.clone(), millis(&lift.at)))
                .collect(),
            name: Arc::from(name),
        })
    }

    /// The file the rule read (the Redis URL); a change recompiles the policy.
    pub fn files(doc: &edge::RateLimit) -> Option<PathBuf> {
        doc.redis_url_file.clone()
    }

    /// Whether a request counts for this rule.
    pub fn matches(&self, method: &Method, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.contains(method))
            && (self
                .prefixes
                .iter()
                .any(|prefix| path.starts_with(prefix.as_str()))
                || self
                    .regex
                    .as_ref()
                    .is_some_and(|regex| regex.is_match(path)))
    }

    /// When the rule can be decided.
    pub const fn stage(&self) -> Stage {
        match self.key {
            KeyKind::Email => Stage::AfterAccess,
            _ => Stage::BeforeAccess,
        }
    }

    /// The key a request is counted under; `None` when the rule has none for it (no e-mail,
    /// no header).
    pub fn key(&self, facts: &KeyFacts<'_>) -> Option<String> {
        let address = || {
            facts.client_ip.map(|ip| match ip {
                IpAddr::V6(v6) if self.ipv6_prefix < 128 => {
                    IpNet::new(IpAddr::V6(v6), self.ipv6_prefix)
                        .map_or_else(|_| ip.to_string(), |net| net.trunc().to_string())
                }
                ip => ip.to_string(),
            })
        };
        match self.key {
            KeyKind::Ip => address(),
            KeyKind::Email => facts.email.map(str::to_ascii_lowercase),
            KeyKind::Session => match facts.session {
                Some(session) => {
                    let digest = <sha2::Sha256 as sha2::Digest>::digest(session.as_bytes());
                    Some(format!(
                        "session:{}",
                        digest[..12]
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<String>()
                    ))
                }
                None => address(),
            },
            KeyKind::Header => {
                let value = facts.headers.get(self.header.as_ref()?)?.as_bytes();
                Some(String::from_utf8_lossy(&value[..value.len().min(256)]).into_owned())
            }
        }
    }

    /// What the request asks of the limiter: count it now, or only look (rules that count
    /// some responses count in the logging phase with [`Op::Count`]).
    pub fn op(&self) -> Op {
        if self.only_statuses.is_empty() {
            Op::Take
        } else {
            Op::Peek
        }
    }

    /// Whether a response with `status` counts, for rules that count only some.
    pub fn counts_response(&self, status: u16) -> bool {
        !self.only_statuses.is_empty() && self.only_statuses.contains(&status)
    }

    /// The key as stored in Redis.
    pub fn redis_key(&self, key: &str) -> String {
        format!("{}{key}", self.redis_prefix)
    }

    /// What every key of this rule starts with in Redis (`portcullis:rl:<host>:<name>:`), so
    /// a listing reads only this edge's keys of this rule.
    pub fn redis_prefix(&self) -> &str {
        &self.redis_prefix
    }

    /// A manual ban of `key` in force at `now`: its end.
    pub fn manual_ban(&self, key: &str, now: u64) -> Option<u64> {
        self.manual.get(key).copied().filter(|&until| until > now)
    }

    /// Bans of `key` that began before this time are lifted (0: none).
    pub fn lifted_before(&self, key: &str) -> u64 {
        self.lifted.get(key).copied().unwrap_or(0)
    }

    /// The answer to a request the limiter judged, at `now` (milliseconds).
    pub fn verdict(&self, outcome: Outcome, now: u64) -> Verdict {
        let (wait, reason) = match outcome {
            Outcome::Allowed => return Verdict::Continue,
            Outcome::Limited { retry_after } => (
                retry_after,
                Reason::owned("limited", format!("{}: over the limit", self.name)),
            ),
            Outcome::Banned { end, new, .. } => (
                end.saturating_sub(now),
                Reason::owned(
                    "banned",
                    format!(
                        "{}: {}",
                        self.name,
                        if new { "banned now" } else { "banned" }
                    ),
                ),
            ),
        };
        let mut response = Response::error(self.status);
        if self.retry_after {
            let seconds = wait.div_ceil(1000).max(1);
            response = response.with_header(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        Verdict::Respond(response, reason)
    }
}

/// The built-in limit on Jellyfin's and the edge's sign-in endpoints, always on: 10 attempts
/// a minute per client address, banned for 15 minutes after 10 limited attempts. RateLimit
/// resources add stricter ones.
pub fn builtin_sign_in(host: &str) -> Rule {
    let doc = edge::RateLimit {
        name: "builtin-sign-in".to_owned(),
        path_prefixes: [
            "/Users/AuthenticateByName",
            "/Users/AuthenticateWithQuickConnect",
            "/QuickConnect/",
            "/Users/ForgotPassword",
            "/.portcullis/login",
            "/.portcullis/code",
        ]
        .map(str::to_owned)
        .to_vec(),
        path_regex: None,
        methods: vec![portcullis_crds::rate_limit::HttpMethod::POST],
        only_statuses: Vec::new(),
        key: KeyKind::Ip,
        key_header: None,
        ipv6_prefix_length: 64,
        limit: 10,
        period: portcullis_crds::common::Duration::from_secs(60),
        burst: 0,
        ban_after: Some(10),
        ban_duration: Some(portcullis_crds::common::Duration::from_secs(15 * 60)),
        status: 429,
        retry_after: true,
        challenge: false,
        redis_url_file: None,
        manual_bans: Vec::new(),
        lifted_bans: Vec::new(),
    };
    Rule::new(&doc, host).expect("the built-in limit compiles")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(json: serde_json::Value) -> Rule {
        let doc: edge::RateLimit = serde_json::from_value(json).unwrap();
        Rule::new(&doc, "media.example.org").unwrap()
    }

    fn login() -> Rule {
        rule(serde_json::json!({
            "name": "login", "pathPrefixes": ["/Users/AuthenticateByName"], "methods": ["POST"],
            "key": "Ip", "ipv6PrefixLength": 64, "limit": 5, "period": "1m", "burst": 0,
            "banAfter": 3, "banDuration": "10m", "status": 429, "retryAfter": true,
            "manualBans": [{"key": "192.0.2.66", "at": "2030-01-01T00:00:00Z"}],
            "liftedBans": [{"key": "192.0.2.7", "at": "2026-01-01T00:00:00Z"}]
        }))
    }

    fn facts<'a>(ip: &str, headers: &'a HeaderMap) -> KeyFacts<'a> {
        KeyFacts {
            client_ip: Some(ip.parse().unwrap()),
            headers,
            session: None,
            email: None,
        }
    }

    #[test]
    fn only_matching_methods_and_paths_count() {
        let login = login();
        assert!(login.matches(&Method::POST, "/Users/AuthenticateByName"));
        assert!(!login.matches(&Method::GET, "/Users/AuthenticateByName"));
        assert!(!login.matches(&Method::POST, "/Items"));
        let regex = rule(serde_json::json!({
            "name": "api", "pathRegex": "^/Items/[^/]+/Download$", "key": "Ip",
            "ipv6PrefixLength": 64, "limit": 5, "period": "1m", "burst": 0, "status": 429,
            "retryAfter": true
        }));
        assert!(regex.matches(&Method::GET, "/Items/abc/Download"));
        assert!(!regex.matches(&Method::GET, "/Items/abc"));
    }

    #[test]
    fn ipv6_clients_are_counted_per_network() {
        let rule = login();
        let headers = HeaderMap::new();
        assert_eq!(
            rule.key(&facts("2001:db8:1:2:aaaa::1", &headers)).unwrap(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            rule.key(&facts("2001:db8:1:2:bbbb::9", &headers)),
            rule.key(&facts("2001:db8:1:2:aaaa::1", &headers))
        );
        assert_eq!(
            rule.key(&facts("192.0.2.1", &headers)).unwrap(),
            "192.0.2.1"
        );
    }

    #[test]
    fn limited_and_banned_requests_get_the_status_and_retry_after() {
        let rule = login();
        let Verdict::Respond(response, reason) = rule.verdict(
            Outcome::Limited {
                retry_after: 11_001,
            },
            0,
        ) else {
            panic!();
        };
        assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            response.headers[0],
            (http::header::RETRY_AFTER, HeaderValue::from(12))
        );
        assert_eq!(reason.rule, "limited");
        let Verdict::Respond(response, reason) = rule.verdict(
            Outcome::Banned {
                start: 0,
                end: 600_000,
                new: true,
            },
            1000,
        ) else {
            panic!();
        };
        assert_eq!(response.headers[0].1, HeaderValue::from(599));
        assert_eq!(reason.rule, "banned");
        assert_eq!(rule.verdict(Outcome::Allowed, 0), Verdict::Continue);
    }

    #[test]
    fn manual_bans_and_lifts_are_by_key() {
        let rule = login();
        let now = 1_800_000_000_000;
        assert!(rule.manual_ban("192.0.2.66", now).is_some());
        assert!(rule.manual_ban("192.0.2.67", now).is_none());
        assert!(rule.lifted_before("192.0.2.7") > 0);
        assert_eq!(rule.lifted_before("192.0.2.8"), 0);
    }

    #[test]
    fn header_session_and_email_keys() {
        let mut headers = HeaderMap::new();
        headers.insert("x-device-id", HeaderValue::from_static("tv-1"));
        let by_header = rule(serde_json::json!({
            "name": "h", "pathPrefixes": ["/"], "key": "Header", "keyHeader": "X-Device-Id",
            "ipv6PrefixLength": 64, "limit": 5, "period": "1m", "burst": 0, "status": 429,
            "retryAfter": true
        }));
        assert_eq!(
            by_header.key(&facts("192.0.2.1", &headers)).unwrap(),
            "tv-1"
        );
        assert_eq!(by_header.key(&facts("192.0.2.1", &HeaderMap::new())), None);
        let by_session = rule(serde_json::json!({
            "name": "s", "pathPrefixes": ["/"], "key": "Session", "ipv6PrefixLength": 64,
            "limit": 5, "period": "1m", "burst": 0, "status": 429, "retryAfter": true
        }));
        let mut with_session = facts("192.0.2.1", &headers);
        with_session.session = Some("sealed-value");
        assert!(
            by_session
                .key(&with_session)
                .unwrap()
                .starts_with("session:")
        );
        assert_eq!(
            by_session.key(&facts("192.0.2.1", &headers)).unwrap(),
            "192.0.2.1"
        );
        let by_email = rule(serde_json::json!({
            "name": "e", "pathPrefixes": ["/"], "key": "Email", "ipv6PrefixLength": 64,
            "limit": 5, "period": "1m", "burst": 0, "status": 429, "retryAfter": true
        }));
        assert_eq!(by_email.stage(), Stage::AfterAccess);
        let mut with_email = facts("192.0.2.1", &headers);
        with_email.email = Some("Alice@Example.org");
        assert_eq!(by_email.key(&with_email).unwrap(), "alice@example.org");
    }

    #[test]
    fn the_builtin_limit_guards_every_sign_in_endpoint() {
        let rule = builtin_sign_in("media.example.org");
        for path in [
            "/Users/AuthenticateByName",
            "/Users/AuthenticateWithQuickConnect",
            "/QuickConnect/Authorize",
            "/.portcullis/login",
            "/.portcullis/code",
            "/Users/ForgotPassword",
        ] {
            assert!(rule.matches(&Method::POST, path), "{path}");
        }
        assert!(!rule.matches(&Method::GET, "/.portcullis/login"));
    }
}
