//! The edge-config contract: the versioned, self-contained document (`edge.yaml`) the
//! operator renders for each MediaServer and the proxy loads.
//!
//! The document is complete (the proxy needs nothing else) and refers to secret material
//! only by file path: TLS keys, session keys, SMTP and Redis credentials are mounted files,
//! never embedded. Unknown keys are errors, so a typo cannot silently switch a defence off.
//! [`EdgeConfig::content_hash`] identifies a document; [`EdgeConfig::restart_hash`] changes
//! only when a running proxy cannot apply the change live (its listening sockets).

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    access_policy::SmtpTls,
    common::{ByteSize, Cidr, CountryCode, DomainName, Duration, EmailAddress},
    media_server::{AppKind, UnscannableAction},
    rate_limit::{HttpMethod, KeyKind},
    validation::{Problems, ValidationErrors},
    waf_rule_set::WafMode,
};

/// The `apiVersion` of the edge document this crate reads and writes.
pub const EDGE_API_VERSION: &str = "edge.portcullis.dev/v1";
/// The `kind` of the edge document.
pub const EDGE_KIND: &str = "EdgeConfig";

/// Why an edge document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EdgeConfigError {
    /// The text is not YAML of the document's shape (unknown key, wrong type, ...).
    #[error("the edge document does not parse: {0}")]
    Parse(#[from] serde_saphyr::Error),
    /// The document parses but breaks a rule.
    #[error("the edge document is invalid: {0}")]
    Invalid(#[from] ValidationErrors),
}

/// The whole configuration of one edge proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeConfig {
    /// Always `edge.portcullis.dev/v1`.
    pub api_version: String,
    /// Always `EdgeConfig`.
    pub kind: String,
    /// Which MediaServer the document was rendered from, for logs.
    pub source: Source,
    /// The protected application.
    pub app: App,
    /// The only host name the edge answers for.
    pub host: DomainName,
    /// Where the edge listens.
    pub listen: Listen,
    /// The certificate the edge presents.
    pub tls: Tls,
    /// How the client's address is found.
    #[serde(default)]
    pub client_identity: ClientIdentity,
    /// Request hygiene limits.
    #[serde(default)]
    pub limits: Limits,
    /// Timeouts on both sides of the proxy.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// The application behind the edge.
    pub upstream: Upstream,
    /// Zero-trust access; everyone who passes the other layers gets through when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    /// The web application firewall; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waf: Option<Waf>,
    /// Rate limits, checked in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
    /// Upload scanning by clamd; off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub antivirus: Option<Antivirus>,
}

/// The object an edge document was rendered from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Source {
    /// The MediaServer's namespace.
    pub namespace: String,
    /// The MediaServer's name.
    pub name: String,
    /// The MediaServer generation rendered.
    #[serde(default)]
    pub generation: i64,
}

/// The protected application.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct App {
    /// Which application, for its app-aware rules.
    pub kind: AppKind,
    /// The name shown on the edge's own pages (sign-in, errors).
    pub display_name: String,
}

/// The edge's sockets. Changing them needs a restart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listen {
    /// HTTPS, the public entry.
    pub https: SocketAddr,
    /// Plain HTTP, which only redirects to HTTPS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<SocketAddr>,
    /// Health, readiness and metrics; never exposed publicly.
    pub admin: SocketAddr,
    /// Expect the PROXY protocol (v1 or v2) on the public sockets.
    #[serde(default)]
    pub proxy_protocol: bool,
}

/// The certificate and HSTS.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain; reloaded when the file changes.
    pub cert_file: PathBuf,
    /// PEM private key; reloaded when the file changes.
    pub key_file: PathBuf,
    /// `Strict-Transport-Security` max-age on every HTTPS response.
    #[serde(default = "default_hsts")]
    pub hsts_max_age: Duration,
}

const fn default_hsts() -> Duration {
    Duration::from_secs(365 * 24 * 3600)
}

/// How the client's address is found.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientIdentity {
    /// Peers whose X-Forwarded-For is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// Also trust Cloudflare's published ranges and their `CF-IPCountry`.
    #[serde(default)]
    pub behind_cloudflare: bool,
}

/// Request hygiene limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Limits {
    /// Longest request target (path and query); longer is 414.
    pub max_uri_bytes: u32,
    /// Most request headers; more is 431.
    pub max_header_count: u32,
    /// Largest total of request header bytes; more is 431.
    pub max_header_bytes: ByteSize,
    /// Largest request body; more is 413 (checked as the body streams).
    pub max_body: ByteSize,
    /// Methods allowed; others are 405.
    pub allowed_methods: Vec<HttpMethod>,
    /// Most open client connections in total.
    pub max_connections: u32,
    /// Most open connections from one client address.
    pub max_connections_per_ip: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_uri_bytes: 8192,
            max_header_count: 100,
            max_header_bytes: ByteSize::from_kib(64),
            max_body: ByteSize::from_mib(64),
            allowed_methods: vec![
                HttpMethod::GET,
                HttpMethod::HEAD,
                HttpMethod::POST,
                HttpMethod::PUT,
                HttpMethod::PATCH,
                HttpMethod::DELETE,
                HttpMethod::OPTIONS,
            ],
            max_connections: 10_000,
            max_connections_per_ip: 128,
        }
    }
}

/// Timeouts on both sides of the proxy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timeouts {
    /// Time allowed to send the request headers (slowloris guard); the same deadline bounds
    /// the TLS handshake, the PROXY protocol header, an idle HTTP/1.1 keep-alive connection
    /// between requests and an idle HTTP/2 connection.
    pub header_read: Duration,
    /// Longest pause allowed while a request body streams in.
    pub body_read: Duration,
    /// Time allowed to connect to the upstream.
    pub upstream_connect: Duration,
    /// Longest pause allowed while the upstream answers.
    pub upstream_read: Duration,
    /// How long an idle upstream connection is kept for reuse.
    pub upstream_idle: Duration,
    /// How long requests in flight may finish when the edge stops.
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header_read: Duration::from_secs(10),
            body_read: Duration::from_secs(30),
            upstream_connect: Duration::from_secs(5),
            upstream_read: Duration::from_secs(300),
            upstream_idle: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(25),
        }
    }
}

/// The application behind the edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Upstream {
    /// `host:port` of the application's Service.
    pub address: String,
    /// Verified TLS to the application; plain HTTP when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
    /// Idle keep-alive connections kept to the application.
    #[serde(default = "default_pool_size")]
    pub pool_size: u32,
}

const fn default_pool_size() -> u32 {
    128
}

/// Verified TLS to the application.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM bundle of the CAs the application's certificate must chain to.
    pub ca_file: PathBuf,
    /// The name the certificate must carry.
    pub server_name: String,
}

/// Zero-trust access.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Access {
    /// Countries allowed (empty: any) and denied.
    #[serde(default)]
    pub countries: Countries,
    /// The mmdb country database; required when countries are listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geoip_file: Option<PathBuf>,
    /// Addresses allowed to sign in.
    #[serde(default)]
    pub emails: Vec<EmailAddress>,
    /// Domains whose addresses may sign in.
    #[serde(default)]
    pub email_domains: Vec<DomainName>,
    /// One-time codes by e-mail; no sign-in page when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otp: Option<Otp>,
    /// Sessions.
    pub session: Session,
    /// Path prefixes that skip sign-in.
    #[serde(default)]
    pub bypass: Vec<String>,
    /// Accept the app's own access tokens, remembering the app's answer this long.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_token_cache_ttl: Option<Duration>,
    /// Sessions issued before this time are invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_before: Option<Time>,
    /// Sessions of these addresses are invalid.
    #[serde(default)]
    pub revoked_emails: Vec<EmailAddress>,
    /// Cloudflare Access in front of the edge: every request outside `bypass` must carry a
    /// valid token of the application.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudflare_access: Option<CloudflareAccess>,
}

/// The Cloudflare Access application in front of the edge.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudflareAccess {
    /// The team domain, `myteam.cloudflareaccess.com`; tokens must be issued by
    /// `https://<teamDomain>`.
    pub team_domain: DomainName,
    /// Application audience tags; a token must be for one of them.
    pub audiences: Vec<String>,
    /// Where the team's signing keys (a JWKS) are fetched;
    /// `https://<teamDomain>/cdn-cgi/access/certs` when absent. `http://` only to a loopback
    /// address (tests, local demos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// How often the keys are fetched again; a token signed by a key not yet known also
    /// fetches them (at most once every 10 s).
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: Duration,
}

/// How often the Cloudflare Access keys are fetched again unless the document says otherwise.
pub const JWKS_REFRESH: Duration = Duration::from_secs(3600);

const fn default_jwks_refresh() -> Duration {
    JWKS_REFRESH
}

impl CloudflareAccess {
    /// The issuer tokens must name: `https://<teamDomain>`.
    pub fn issuer(&self) -> String {
        format!("https://{}", self.team_domain)
    }

    /// Where the keys are fetched: `jwksUrl`, or the team's certificate endpoint.
    pub fn jwks_url(&self) -> String {
        self.jwks_url
            .clone()
            .unwrap_or_else(|| format!("https://{}/cdn-cgi/access/certs", self.team_domain))
    }
}

/// An `http://` or `https://` URL split into what a client needs to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpUrl {
    /// `https://`.
    pub https: bool,
    /// The host name or address (IPv6 without brackets).
    pub host: String,
    /// The port (443 or 80 when not written).
    pub port: u16,
    /// The path and query, `/` at least.
    pub path: String,
}

impl HttpUrl {
    /// Parses `http[s]://host[:port][/path]`; no user information, no fragment.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("http://") {
            (false, rest)
        } else {
            return Err(format!("{url:?} is not an http:// or https:// URL"));
        };
        if url.bytes().any(|b| !b.is_ascii_graphic()) || url.contains(['#', '@', '\\']) {
            return Err(format!(
                "{url:?} has spaces, user information, a fragment or a backslash"
            ));
        }
        let (authority, path) = rest
            .find(['/', '?'])
            .map_or((rest, "/"), |at| rest.split_at(at));
        let default_port = if https { 443 } else { 80 };
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("{url:?} has an unclosed [ in its host"))?;
            let port = match after.strip_prefix(':') {
                Some(port) => Some(port),
                None if after.is_empty() => None,
                None => return Err(format!("{url:?} has text after its host")),
            };
            (host, port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("{url:?} has no valid port"))?,
            None => default_port,
        };
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_owned()
        };
        Ok(Self {
            https,
            host: host.to_ascii_lowercase(),
            port,
            path,
        })
    }

    /// Whether the host is a loopback address or `localhost`.
    pub fn is_loopback(&self) -> bool {
        self.host == "localhost"
            || self
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

/// Country allow and deny lists.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Countries {
    /// Only these; any when empty.
    #[serde(default)]
    pub allow: Vec<CountryCode>,
    /// Never these.
    #[serde(default)]
    pub deny: Vec<CountryCode>,
}

/// One-time codes by e-mail.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Otp {
    /// Digits in a code.
    pub length: i32,
    /// How long a code lives.
    pub ttl: Duration,
    /// Wrong codes allowed before the attempt ends.
    pub max_attempts: i32,
    /// Wait before another code goes to the same address.
    pub resend_cooldown: Duration,
    /// The mail server.
    pub smtp: Smtp,
    /// File holding the URL of a Redis the replicas share wrong-code counts and spent codes
    /// in, so the attempt cap holds across replicas and a code works once on all of them;
    /// each replica's own memory when absent (or while Redis cannot answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url_file: Option<PathBuf>,
}

/// The mail server that sends codes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Smtp {
    /// Host name.
    pub host: String,
    /// Port.
    pub port: i32,
    /// Encryption.
    pub tls: SmtpTls,
    /// File holding the user name; no authentication when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_file: Option<PathBuf>,
    /// File holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// The sender.
    pub from: String,
}

/// Sessions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Session {
    /// Absolute lifetime.
    pub ttl: Duration,
    /// Idle lifetime.
    pub idle_ttl: Duration,
    /// Cookie name.
    pub cookie_name: String,
    /// Cookie domain; the exact host when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_domain: Option<DomainName>,
    /// Files holding the signing keys: the first signs, all verify (key rotation).
    pub key_files: Vec<PathBuf>,
}

/// The web application firewall.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Waf {
    /// Block or only detect.
    pub mode: WafMode,
    /// The directory of the CRS rule files (`rules/*.conf`); the CRS is off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crs_dir: Option<PathBuf>,
    /// Blocking paranoia level, 1-4.
    pub paranoia_level: i32,
    /// Executing paranoia level, at least the blocking one.
    pub executing_paranoia_level: i32,
    /// Request anomaly score that blocks.
    pub inbound_anomaly_threshold: i32,
    /// Response anomaly score that blocks.
    pub outbound_anomaly_threshold: i32,
    /// Apply the built-in exclusions for the app's normal traffic.
    pub app_exclusions: bool,
    /// Exclusions.
    #[serde(default)]
    pub exclusions: Vec<WafExclusion>,
    /// Custom SecLang rules: after the CRS setup when `crsDir` is set, alone otherwise
    /// (then only their own disruptive actions refuse, and `@pmFromFile` is refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_rules: Option<String>,
    /// Most request body inspected.
    pub request_body_limit: ByteSize,
    /// Run the response phases.
    pub inspect_responses: bool,
}

/// The most a scanned body may be: the edge holds it in memory until the verdict.
pub const MAX_SCAN_SIZE: ByteSize = ByteSize::from_mib(256);

/// Upload scanning: request bodies streamed to clamd and held until its verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Antivirus {
    /// clamd's address: `host:port`, or `unix:` and the absolute path of its socket.
    pub clamd: String,
    /// Path regular expressions (matched on the percent-decoded path, ignoring case);
    /// every path when empty.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Methods scanned.
    pub methods: Vec<HttpMethod>,
    /// Media types scanned (`type/subtype` or `type/*`); all when empty.
    #[serde(default)]
    pub content_types: Vec<String>,
    /// The largest body scanned; a larger one is unscannable.
    pub max_scan_size: ByteSize,
    /// What happens to an unscannable body.
    pub on_unscannable: UnscannableAction,
    /// The longest clamd may take over one step of a scan (connect, a part of the body,
    /// the verdict).
    pub timeout: Duration,
}

/// Whether `text` is a media type the antivirus section can match: `type/subtype` or
/// `type/*`, in the characters of RFC 6838.
pub fn valid_media_type(text: &str) -> bool {
    let token = |part: &str| {
        !part.is_empty()
            && part.len() <= 127
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    text.split_once('/')
        .is_some_and(|(kind, sub)| token(kind) && (sub == "*" || token(sub)))
}

/// A WAF exclusion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WafExclusion {
    /// Rule ids.
    #[serde(default)]
    pub rule_ids: Vec<i32>,
    /// Inclusive rule id ranges.
    #[serde(default)]
    pub rule_id_ranges: Vec<(i32, i32)>,
    /// Rule tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Path prefixes it applies to; all when empty.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Targets removed from the rules; the whole rules when empty.
    #[serde(default)]
    pub targets: Vec<String>,
}

/// One rate limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// The RateLimit's name, for logs and metrics.
    pub name: String,
    /// Path prefixes that count.
    #[serde(default)]
    pub path_prefixes: Vec<String>,
    /// Path regular expression that counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_regex: Option<String>,
    /// Methods that count; all when empty.
    #[serde(default)]
    pub methods: Vec<HttpMethod>,
    /// Response statuses that count; all when empty.
    #[serde(default)]
    pub only_statuses: Vec<i32>,
    /// What requests are counted per.
    pub key: KeyKind,
    /// The header, for header keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_header: Option<String>,
    /// IPv6 prefix length for address keys.
    pub ipv6_prefix_length: i32,
    /// Requests per period.
    pub limit: i32,
    /// The period.
    pub period: Duration,
    /// Burst above the steady rate.
    pub burst: i32,
    /// Ban after this many limited requests, for `ban_duration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ban_after: Option<i32>,
    /// Ban length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ban_duration: Option<Duration>,
    /// Response status.
    pub status: i32,
    /// Send Retry-After.
    pub retry_after: bool,
    /// Browsers over the limit get a proof-of-work challenge instead of the status.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub challenge: bool,
    /// File holding the Redis URL; counters stay in memory when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_url_file: Option<PathBuf>,
    /// Bans added by hand: key and end.
    #[serde(default)]
    pub manual_bans: Vec<EdgeBan>,
    /// Bans lifted by hand: key, and bans that began before this time.
    #[serde(default)]
    pub lifted_bans: Vec<EdgeBan>,
}

/// A key and a time: the end of a manual ban, or the cut-off of a lift.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EdgeBan {
    /// The key.
    pub key: String,
    /// The time.
    pub at: Time,
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl EdgeConfig {
    /// Parses and validates a document.
    pub fn from_yaml(text: &str) -> Result<Self, EdgeConfigError> {
        let config: Self = serde_saphyr::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    /// Writes the document as YAML.
    pub fn to_yaml(&self) -> String {
        serde_saphyr::to_string(self).expect("an edge document always serializes")
    }

    /// A stable hash of the whole document: equal documents hash equal, whatever the
    /// process or machine.
    pub fn content_hash(&self) -> String {
        hex_sha256(&serde_json::to_vec(self).expect("an edge document always serializes"))
    }

    /// A hash of what a running proxy cannot change live: its sockets, its upstream pool
    /// size and its shutdown grace. The operator puts it in the pod template so pods
    /// restart only when it changes.
    pub fn restart_hash(&self) -> String {
        let start_only = (
            &self.listen,
            self.upstream.pool_size,
            self.timeouts.shutdown_grace,
        );
        hex_sha256(&serde_json::to_vec(&start_only).expect("start-only settings serialize"))
    }

    /// Checks every rule of the document and returns all problems with their paths.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut problems = Problems::default();
        problems.require(
            self.api_version == EDGE_API_VERSION,
            "apiVersion",
            format!("{:?} is not {EDGE_API_VERSION:?}", self.api_version),
        );
        problems.require(
            self.kind == EDGE_KIND,
            "kind",
            format!("{:?} is not {EDGE_KIND:?}", self.kind),
        );
        self.validate_listen(&mut problems);
        require_absolute(&mut problems, "tls.certFile", &self.tls.cert_file);
        require_absolute(&mut problems, "tls.keyFile", &self.tls.key_file);
        self.validate_limits(&mut problems);
        let timeouts = &self.timeouts;
        for (field, value) in [
            ("headerRead", timeouts.header_read),
            ("bodyRead", timeouts.body_read),
            ("upstreamConnect", timeouts.upstream_connect),
            ("upstreamRead", timeouts.upstream_read),
            ("upstreamIdle", timeouts.upstream_idle),
            ("shutdownGrace", timeouts.shutdown_grace),
        ] {
            problems.require(
                !value.is_zero(),
                format!("timeouts.{field}"),
                "must be longer than 0s",
            );
        }
        problems.require(
            valid_host_port(&self.upstream.address),
            "upstream.address",
            format!("{:?} is not host:port", self.upstream.address),
        );
        if let Some(tls) = &self.upstream.tls {
            require_absolute(&mut problems, "upstream.tls.caFile", &tls.ca_file);
        }
        if let Some(access) = &self.access {
            validate_access(&mut problems, access);
        }
        if let Some(waf) = &self.waf {
            validate_waf(&mut problems, waf);
        }
        if let Some(antivirus) = &self.antivirus {
            validate_antivirus(&mut problems, antivirus);
        }
        let mut names = BTreeSet::new();
        for (i, limit) in self.rate_limits.iter().enumerate() {
            problems.require(
                names.insert(&limit.name),
                format!("rateLimits[{i}].name"),
                format!("{:?} is used twice", limit.name),
            );
            validate_rate_limit(&mut problems, &format!("rateLimits[{i}]"), limit);
        }
        problems.finish()
    }

    fn validate_listen(&self, problems: &mut Problems) {
        let listen = &self.listen;
        let mut ports = vec![
            ("listen.https", listen.https),
            ("listen.admin", listen.admin),
        ];
        ports.extend(listen.http.map(|http| ("listen.http", http)));
        for (i, (field, address)) in ports.iter().enumerate() {
            problems.require(
                ports[..i].iter().all(|(_, other)| other != address),
                *field,
                format!("{address} is already used by another listener"),
            );
        }
    }

    fn validate_limits(&self, problems: &mut Problems) {
        let limits = &self.limits;
        for (field, value) in [
            ("maxUriBytes", u64::from(limits.max_uri_bytes)),
            ("maxHeaderCount", u64::from(limits.max_header_count)),
            ("maxHeaderBytes", limits.max_header_bytes.bytes()),
            ("maxConnections", u64::from(limits.max_connections)),
            (
                "maxConnectionsPerIp",
                u64::from(limits.max_connections_per_ip),
            ),
        ] {
            problems.require(value > 0, format!("limits.{field}"), "must be at least 1");
        }
        problems.require(
            limits.max_connections_per_ip <= limits.max_connections,
            "limits.maxConnectionsPerIp",
            "cannot exceed limits.maxConnections",
        );
        problems.require(
            !limits.allowed_methods.is_empty(),
            "limits.allowedMethods",
            "allow at least one method",
        );
    }
}

fn require_absolute(problems: &mut Problems, field: &str, path: &std::path::Path) {
    problems.require(
        path.is_absolute(),
        field,
        format!("{} is not an absolute path", path.display()),
    );
}

fn valid_host_port(address: &str) -> bool {
    address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0))
}

fn validate_access(problems: &mut Problems, access: &Access) {
    for (list, codes) in [
        ("allow", &access.countries.allow),
        ("deny", &access.countries.deny),
    ] {
        for (i, code) in codes.iter().enumerate() {
            problems.check(
                code.check_assigned(),
                format!("access.countries.{list}[{i}]"),
            );
        }
    }
    let has_countries = !access.countries.allow.is_empty() || !access.countries.deny.is_empty();
    problems.require(
        !has_countries || access.geoip_file.is_some(),
        "access.geoipFile",
        "countries are listed but no country database is given",
    );
    if let Some(path) = &access.geoip_file {
        require_absolute(problems, "access.geoipFile", path);
    }
    if let Some(otp) = &access.otp {
        problems.require(
            !access.emails.is_empty() || !access.email_domains.is_empty(),
            "access.emails",
            "one-time codes need at least one allowed e-mail or domain",
        );
        problems.require(
            (6..=10).contains(&otp.length),
            "access.otp.length",
            "must be 6 to 10 digits",
        );
        problems.require(
            otp.max_attempts > 0,
            "access.otp.maxAttempts",
            "must be at least 1",
        );
        problems.require(
            (1..=65535).contains(&otp.smtp.port),
            "access.otp.smtp.port",
            "must be 1 to 65535",
        );
        problems.require(
            !otp.ttl.is_zero(),
            "access.otp.ttl",
            "must be longer than 0s",
        );
        problems.require(
            otp.smtp.username_file.is_some() == otp.smtp.password_file.is_some(),
            "access.otp.smtp",
            "give both usernameFile and passwordFile, or neither",
        );
        for (field, path) in [
            ("access.otp.smtp.usernameFile", &otp.smtp.username_file),
            ("access.otp.smtp.passwordFile", &otp.smtp.password_file),
            ("access.otp.redisUrlFile", &otp.redis_url_file),
        ] {
            if let Some(path) = path {
                require_absolute(problems, field, path);
            }
        }
    }
    let session = &access.session;
    problems.require(
        !session.key_files.is_empty(),
        "access.session.keyFiles",
        "give at least one signing key file",
    );
    for (i, path) in session.key_files.iter().enumerate() {
        require_absolute(problems, &format!("access.session.keyFiles[{i}]"), path);
    }
    problems.require(
        !session.idle_ttl.is_zero() && session.idle_ttl <= session.ttl,
        "access.session.idleTtl",
        "must be longer than 0s and no longer than ttl",
    );
    for (i, prefix) in access.bypass.iter().enumerate() {
        problems.require(
            prefix.starts_with('/'),
            format!("access.bypass[{i}]"),
            "must start with /",
        );
    }
    if let Some(cloudflare) = &access.cloudflare_access {
        validate_cloudflare_access(problems, cloudflare);
    }
}

fn validate_cloudflare_access(problems: &mut Problems, cloudflare: &CloudflareAccess) {
    problems.require(
        !cloudflare.team_domain.as_str().is_empty()
            && cloudflare.team_domain.as_str().contains('.'),
        "access.cloudflareAccess.teamDomain",
        "must be a domain name such as myteam.cloudflareaccess.com",
    );
    problems.require(
        !cloudflare.audiences.is_empty(),
        "access.cloudflareAccess.audiences",
        "give at least one application audience tag",
    );
    for (i, audience) in cloudflare.audiences.iter().enumerate() {
        problems.require(
            !audience.is_empty() && audience.bytes().all(|b| b.is_ascii_graphic()),
            format!("access.cloudflareAccess.audiences[{i}]"),
            "must be a non-empty tag without spaces",
        );
    }
    if let Some(url) = &cloudflare.jwks_url {
        problems.check(
            HttpUrl::parse(url).and_then(|parsed| {
                if parsed.https || parsed.is_loopback() {
                    Ok(())
                } else {
                    Err(format!(
                        "{url:?}: keys are fetched over https:// (http:// only from a loopback address)"
                    ))
                }
            }),
            "access.cloudflareAccess.jwksUrl",
        );
    }
    problems.require(
        cloudflare.jwks_refresh.get() >= std::time::Duration::from_secs(1),
        "access.cloudflareAccess.jwksRefresh",
        "must be at least 1s",
    );
}

fn validate_antivirus(problems: &mut Problems, antivirus: &Antivirus) {
    let clamd = &antivirus.clamd;
    problems.require(
        match clamd.strip_prefix("unix:") {
            Some(path) => std::path::Path::new(path).is_absolute(),
            None => valid_host_port(clamd),
        },
        "antivirus.clamd",
        format!("{clamd:?} is neither host:port nor unix:/absolute/path"),
    );
    for (i, pattern) in antivirus.paths.iter().enumerate() {
        problems.check(
            Regex::new(pattern).map_err(|e| format!("not a valid regular expression: {e}")),
            format!("antivirus.paths[{i}]"),
        );
    }
    problems.require(
        !antivirus.methods.is_empty(),
        "antivirus.methods",
        "scan at least one method",
    );
    for (i, media_type) in antivirus.content_types.iter().enumerate() {
        problems.require(
            valid_media_type(media_type),
            format!("antivirus.contentTypes[{i}]"),
            format!("{media_type:?} is not a media type such as image/png or image/*"),
        );
    }
    let size = antivirus.max_scan_size.bytes();
    problems.require(
        size > 0 && size <= MAX_SCAN_SIZE.bytes(),
        "antivirus.maxScanSize",
        format!("must be more than 0 and at most {MAX_SCAN_SIZE}"),
    );
    problems.require(
        !antivirus.timeout.is_zero(),
        "antivirus.timeout",
        "must be longer than 0s",
    );
}

fn validate_waf(problems: &mut Problems, waf: &Waf) {
    problems.require(
        (1..=4).contains(&waf.paranoia_level),
        "waf.paranoiaLevel",
        "must be 1 to 4",
    );
    problems.require(
        (waf.paranoia_level..=4).contains(&waf.executing_paranoia_level),
        "waf.executingParanoiaLevel",
        "must be at least waf.paranoiaLevel and at most 4",
    );
    problems.require(
        waf.inbound_anomaly_threshold > 0,
        "waf.inboundAnomalyThreshold",
        "must be at least 1",
    );
    problems.require(
        waf.outbound_anomaly_threshold > 0,
        "waf.outboundAnomalyThreshold",
        "must be at least 1",
    );
    if let Some(dir) = &waf.crs_dir {
        require_absolute(problems, "waf.crsDir", dir);
    }
    for (i, exclusion) in waf.exclusions.iter().enumerate() {
        problems.require(
            !(exclusion.rule_ids.is_empty()
                && exclusion.rule_id_ranges.is_empty()
                && exclusion.tags.is_empty()),
            format!("waf.exclusions[{i}]"),
            "name the rules to exclude",
        );
        for (j, (low, high)) in exclusion.rule_id_ranges.iter().enumerate() {
            problems.require(
                low <= high,
                format!("waf.exclusions[{i}].ruleIdRanges[{j}]"),
                "the lower id comes first",
            );
        }
    }
}

fn validate_rate_limit(problems: &mut Problems, field: &str, limit: &RateLimit) {
    problems.require(
        !limit.path_prefixes.is_empty() || limit.path_regex.is_some(),
        format!("{field}.pathPrefixes"),
        "give pathPrefixes or pathRegex",
    );
    if let Some(pattern) = &limit.path_regex {
        problems.check(
            Regex::new(pattern).map_err(|e| format!("not a valid regular expression: {e}")),
            format!("{field}.pathRegex"),
        );
    }
    problems.require(
        limit.limit > 0,
        format!("{field}.limit"),
        "must be at least 1",
    );
    problems.require(
        limit.burst >= 0,
        format!("{field}.burst"),
        "cannot be negative",
    );
    problems.require(
        limit.ban_after.is_none_or(|after| after > 0),
        format!("{field}.banAfter"),
        "must be at least 1",
    );
    problems.require(
        (32..=128).contains(&limit.ipv6_prefix_length),
        format!("{field}.ipv6PrefixLength"),
        "must be 32 to 128",
    );
    for (i, status) in limit.only_statuses.iter().enumerate() {
        problems.require(
            (100..=599).contains(status),
            format!("{field}.onlyStatuses[{i}]"),
            "must be an HTTP status, 100 to 599",
        );
    }
    problems.require(
        !limit.period.is_zero(),
        format!("{field}.period"),
        "must be longer than 0s",
    );
    problems.require(
        (limit.key == KeyKind::Header) == limit.key_header.is_some(),
        format!("{field}.keyHeader"),
        "required with key Header, and only then",
    );
    problems.require(
        limit.ban_after.is_some() == limit.ban_duration.is_some(),
        format!("{field}.banDuration"),
        "give banAfter and banDuration together",
    );
    problems.require(
        (400..=599).contains(&limit.status),
        format!("{field}.status"),
        "must be 400 to 599",
    );
    if let Some(path) = &limit.redis_url_file {
        require_absolute(problems, &format!("{field}.redisUrlFile"), path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_host_port_and_path() {
        let url =
            HttpUrl::parse("https://MyTeam.cloudflareaccess.com/cdn-cgi/access/certs").unwrap();
        assert_eq!(
            url,
            HttpUrl {
                https: true,
                host: "myteam.cloudflareaccess.com".into(),
                port: 443,
                path: "/cdn-cgi/access/certs".into(),
            }
        );
        let url = HttpUrl::parse("http://127.0.0.1:8080?x=1").unwrap();
        assert_eq!((url.port, url.path.as_str()), (8080, "/?x=1"));
        assert!(url.is_loopback());
        let url = HttpUrl::parse("http://[::1]:9000/certs").unwrap();
        assert_eq!((url.host.as_str(), url.port), ("::1", 9000));
        assert!(url.is_loopback());
        assert!(
            !HttpUrl::parse("http://keys.example.org/")
                .unwrap()
                .is_loopback()
        );
        for bad in [
            "ftp://example.org/",
            "https://",
            "https://example.org:0/",
            "https://example.org:x/",
            "https://user@example.org/",
            "https://example.org/#frag",
            "https://exa mple.org/",
            "https://[::1/",
        ] {
            assert!(HttpUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn media_types_are_a_type_and_a_subtype_or_a_wildcard() {
        for good in [
            "image/png",
            "image/*",
            "application/x-subrip",
            "multipart/form-data",
        ] {
            assert!(valid_media_type(good), "{good}");
        }
        for bad in [
            "image",
            "*/*",
            "image/",
            "/png",
            "image/png; q=1",
            "im age/png",
        ] {
            assert!(!valid_media_type(bad), "{bad}");
        }
    }
}
