//! `RateLimit`: limits on sensitive routes, keyed by client address, e-mail or session,
//! with bans for repeat offenders.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    common::{Duration, SecretKeyReference},
    validation::{Problems, Validate, ValidationErrors},
};

/// A limit on how often matching requests may be made, e.g. five sign-in attempts a
/// minute per client address, with a ban for clients that keep exceeding it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "RateLimit",
    namespaced,
    doc = "A rate limit on sensitive routes of a MediaServer (sign-in, API), keyed by address, e-mail, session or header, with bans.",
    status = "RateLimitStatus",
    shortname = "rl",
    category = "portcullis",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Limit","type":"integer","jsonPath":".spec.limit"}"#,
    printcolumn = r#"{"name":"Period","type":"string","jsonPath":".spec.period"}"#,
    printcolumn = r#"{"name":"Bans","type":"integer","jsonPath":".status.activeBanCount"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("duration(self.period) > duration('0s')").message("period must be longer than 0s").field_path(".period"))]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    /// Which requests count.
    #[serde(rename = "match")]
    pub match_: RequestMatch,
    /// What requests are counted per: client address, e-mail, session or a header.
    #[serde(default)]
    pub key: RateLimitKey,
    /// How many matching requests each key may make per period.
    #[schemars(range(min = 1, max = 1000000))]
    pub limit: i32,
    /// The period the limit applies to, e.g. `1m`.
    pub period: Duration,
    /// Extra requests allowed in a short burst above the steady rate.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000000))]
    pub burst: i32,
    /// Ban keys that keep exceeding the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ban: Option<BanPolicy>,
    /// The answer to a limited or banned request.
    #[serde(default)]
    pub response: LimitResponse,
    /// Where counters and bans live.
    #[serde(default)]
    pub backend: Backend,
    /// Bans added or lifted by hand (incident response).
    #[serde(default)]
    pub manual_bans: ManualBans,
}

/// Which requests a rate limit counts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("size(self.pathPrefixes) > 0 || has(self.pathRegex)").message("match needs pathPrefixes or pathRegex"))]
#[serde(rename_all = "camelCase")]
pub struct RequestMatch {
    /// Paths starting with one of these, e.g. `/Users/AuthenticateByName`.
    #[serde(default)]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^/[^\s?#]*$"), length(max = 512))
    )]
    pub path_prefixes: Vec<String>,
    /// Paths matching this regular expression (RE2 syntax, linear time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub path_regex: Option<String>,
    /// Only these methods; every method when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 9))]
    pub methods: Vec<HttpMethod>,
    /// Count only responses with these statuses (e.g. 401 and 403, the way fail2ban counts
    /// failures); every response when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(range(min = 100, max = 599)))]
    pub only_statuses: Vec<i32>,
}

/// An HTTP method.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "UPPERCASE")]
#[allow(missing_docs, clippy::upper_case_acronyms)]
pub enum HttpMethod {
    GET,
    HEAD,
    POST,
    PUT,
    PATCH,
    DELETE,
    OPTIONS,
}

/// What a rate limit counts requests per.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(self.by == 'Header') == has(self.header)").message("header is required with by: Header, and only then").field_path(".header"))]
#[serde(rename_all = "camelCase")]
pub struct RateLimitKey {
    /// The kind of key.
    #[serde(default)]
    pub by: KeyKind,
    /// The header whose value is the key, with `by: Header`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9-]{1,128}$"))]
    pub header: Option<String>,
    /// IPv6 clients are counted per network of this prefix length (one home usually holds
    /// a whole /64), with `by: Ip`.
    #[serde(default = "default_ipv6_prefix")]
    #[schemars(range(min = 32, max = 128))]
    pub ipv6_prefix_length: i32,
}

impl Default for RateLimitKey {
    fn default() -> Self {
        Self {
            by: KeyKind::default(),
            header: None,
            ipv6_prefix_length: default_ipv6_prefix(),
        }
    }
}

const fn default_ipv6_prefix() -> i32 {
    64
}

/// The kinds of rate-limit key.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyKind {
    /// The client address (after trusted proxies).
    #[default]
    Ip,
    /// The e-mail address being signed in with, or of the session.
    Email,
    /// The session; requests without one are counted by client address.
    Session,
    /// The value of a request header.
    Header,
}

/// A ban for keys that keep exceeding the limit.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("duration(self.duration) > duration('0s')").message("a ban needs a duration longer than 0s").field_path(".duration"))]
#[serde(rename_all = "camelCase")]
pub struct BanPolicy {
    /// Ban after this many limited requests.
    #[schemars(range(min = 1, max = 1000000))]
    pub after: i32,
    /// How long a ban lasts.
    pub duration: Duration,
}

/// The answer to a limited or banned request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LimitResponse {
    /// The HTTP status.
    #[serde(default = "default_status")]
    #[schemars(range(min = 400, max = 599))]
    pub status: i32,
    /// Send `Retry-After` with the seconds until the key may try again.
    #[serde(default = "default_true")]
    pub retry_after: bool,
    /// What a browser over the limit gets: `Reject` (the status above) or `Challenge` (a
    /// proof-of-work page its JavaScript solves in a second or two; once solved, the address
    /// passes this limit for an hour). Clients that are not browsers are always rejected;
    /// bans are never challenged.
    #[serde(default)]
    pub action: LimitAction,
}

/// What a browser over a limit gets.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LimitAction {
    /// The rule's status.
    #[default]
    Reject,
    /// A proof-of-work challenge page (a self-hosted answer to Cloudflare's bot challenge).
    Challenge,
}

impl Default for LimitResponse {
    fn default() -> Self {
        Self {
            action: LimitAction::Reject,
            status: default_status(),
            retry_after: true,
        }
    }
}

const fn default_status() -> i32 {
    429
}

const fn default_true() -> bool {
    true
}

/// Where counters and bans live.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("(self.type == 'Redis') == has(self.redis)").message("redis is required with type: Redis, and only then").field_path(".redis"))]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// `Memory` counts in each edge replica; `Redis` shares counters and bans between them.
    #[serde(default, rename = "type")]
    pub type_: BackendType,
    /// The Redis server, with `type: Redis`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisBackend>,
}

/// The kinds of backend.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackendType {
    /// In the memory of each edge replica.
    #[default]
    Memory,
    /// In Redis, shared by every replica; falls back to memory while Redis is unreachable.
    Redis,
}

/// A Redis server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedisBackend {
    /// A Secret key holding the URL, e.g. `redis://:password@redis:6379/0`.
    pub url_secret_ref: SecretKeyReference,
}

/// Bans added or lifted by hand.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManualBans {
    /// Keys banned until a time.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub add: Vec<ManualBan>,
    /// Lifts the bans of a key that began before a time (later offences ban again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub lift: Vec<BanLift>,
}

/// A ban added by hand.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ManualBan {
    /// The key, as the limit counts it: an address or network, an e-mail, a header value.
    #[schemars(length(min = 1, max = 320))]
    pub key: String,
    /// When the ban ends.
    pub until: Time,
    /// Why, for the log and the status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub reason: Option<String>,
}

/// A lifted ban.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BanLift {
    /// The key whose bans are lifted.
    #[schemars(length(min = 1, max = 320))]
    pub key: String,
    /// Bans that began before this time are lifted.
    pub before: Time,
}

/// What the operator last observed of a RateLimit.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling and Stalled, in the standard Kubernetes shape.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Bans in force, as the edge pods of the MediaServers using this limit report them
    /// (merged across replicas, the latest end kept), with the manual bans of the spec; the
    /// operator refreshes it every `--ban-poll-interval`. At most 50 are listed, those that
    /// end last first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub active_bans: Vec<ActiveBan>,
    /// How many bans are in force, listed or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_ban_count: Option<i32>,
    /// The MediaServers that use this limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
}

/// A ban in force.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ActiveBan {
    /// The banned key.
    pub key: String,
    /// When the ban ends.
    pub until: Time,
    /// Why: `limit exceeded`, `honeypot`, or the manual reason.
    pub reason: String,
}

impl Validate for RateLimitSpec {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut problems = Problems::default();
        if let Some(pattern) = &self.match_.path_regex {
            problems.check(
                Regex::new(pattern).map_err(|e| format!("not a valid regular expression: {e}")),
                "spec.match.pathRegex",
            );
        }
        if let Some(ban) = &self.ban {
            problems.require(
                ban.duration >= self.period,
                "spec.ban.duration",
                format!(
                    "a ban of {} is shorter than the period of {}, so it would end before the limit does",
                    ban.duration, self.period
                ),
            );
        }
        for (i, ban) in self.manual_bans.add.iter().enumerate() {
            if self.key.by == KeyKind::Ip {
                problems.check(
                    ban.key.parse::<crate::common::Cidr>(),
                    format!("spec.manualBans.add[{i}].key"),
                );
            }
        }
        problems.finish()
    }
}
