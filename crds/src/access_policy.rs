//! `AccessPolicy`: who may reach the app — countries, e-mail addresses, one-time codes,
//! sessions and native-app tokens.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    common::{CountryCode, DomainName, Duration, EmailAddress, SecretKeyReference},
    validation::{Problems, Validate, ValidationErrors},
};

/// Zero-trust access in front of a media server: only people in allowed countries, with
/// an allowed e-mail address, who prove it with a one-time code sent to that address,
/// get a session.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "AccessPolicy",
    namespaced,
    doc = "Zero-trust access in front of a MediaServer: allowed countries, allowed e-mail addresses, one-time codes by e-mail, sessions and app tokens.",
    status = "AccessPolicyStatus",
    shortname = "ap",
    category = "portcullis",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Countries","type":"string","jsonPath":".spec.countries.allow"}"#,
    printcolumn = r#"{"name":"Used-By","type":"string","priority":1,"jsonPath":".status.usedBy"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!has(self.countries) || has(self.geoip)").message("countries need a geoip database to look client addresses up in").field_path(".geoip").reason(Reason::FieldValueRequired))]
#[x_kube(validation = Rule::new("!has(self.otp) || size(self.emails) + size(self.emailDomains) > 0").message("one-time codes need at least one allowed e-mail or e-mail domain, or nobody could sign in").field_path(".emails").reason(Reason::FieldValueRequired))]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicySpec {
    /// Which countries requests may come from, by the client address's country.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub countries: Option<CountryRules>,
    /// Where the country database comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geoip: Option<GeoIpSource>,
    /// E-mail addresses allowed to sign in, e.g. `alice@example.org`.
    #[serde(default)]
    #[schemars(length(max = 1000))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub emails: Vec<EmailAddress>,
    /// E-mail domains whose every address may sign in, e.g. `example.org`.
    #[serde(default)]
    #[schemars(length(max = 100))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub email_domains: Vec<DomainName>,
    /// One-time codes sent by e-mail to prove the address. Required for the sign-in page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otp: Option<OtpSpec>,
    /// The session a successful sign-in opens.
    #[serde(default)]
    pub session: SessionSpec,
    /// Path prefixes that skip sign-in (still subject to country, WAF and rate limits),
    /// e.g. `/health`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^/[^\s?#]*$"), length(max = 512))
    )]
    pub bypass: Vec<String>,
    /// Let the app's own TV and phone clients through with their app access token.
    #[serde(default)]
    pub app_tokens: AppTokensSpec,
    /// Incident response: every session issued before this time is invalid at once, on
    /// every edge replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_before: Option<Time>,
    /// Incident response: every session of these addresses is invalid at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub revoked_emails: Vec<EmailAddress>,
    /// The edge sits behind Cloudflare Access (Zero Trust): every request must carry the
    /// token Cloudflare Access signs for this application (the `Cf-Access-Jwt-Assertion`
    /// header or the `CF_Authorization` cookie), or it is refused with 403. The e-mail the
    /// token names is the request's identity: when it is allowed by `emails` or
    /// `emailDomains` (or both are empty), the edge's own sign-in is skipped. Paths in
    /// `bypass` need no token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cloudflare_access: Option<CloudflareAccessSpec>,
}

/// The Cloudflare Access application in front of the edge.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CloudflareAccessSpec {
    /// The Zero Trust team domain, e.g. `myteam.cloudflareaccess.com`: tokens must be issued
    /// by `https://<teamDomain>`, and the edge fetches the team's signing keys from
    /// `https://<teamDomain>/cdn-cgi/access/certs`.
    #[schemars(
        regex(pattern = r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\.)+cloudflareaccess\.com$"),
        length(max = 253)
    )]
    pub team_domain: String,
    /// The Application Audience (AUD) tags a token may be for (64 hex digits each, on the
    /// Access application's overview page); usually one.
    #[schemars(length(min = 1, max = 16), inner(regex(pattern = r"^[0-9a-f]{64}$")))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub audiences: Vec<String>,
}

/// Country allow and deny lists (ISO 3166-1 alpha-2 codes, upper case).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("size(self.allow) + size(self.deny) > 0").message("list at least one country in allow or deny"))]
#[x_kube(validation = Rule::new("self.deny.all(c, !(c in self.allow))").message("a country cannot be both allowed and denied").field_path(".deny"))]
#[serde(rename_all = "camelCase")]
pub struct CountryRules {
    /// Only these countries may connect. Addresses with no known country are refused
    /// when this list is set.
    #[serde(default)]
    #[schemars(length(max = 250))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub allow: Vec<CountryCode>,
    /// These countries may never connect.
    #[serde(default)]
    #[schemars(length(max = 250))]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub deny: Vec<CountryCode>,
}

/// A MaxMind-format (mmdb) country database.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("(has(self.secretRef) ? 1 : 0) + (has(self.configMapRef) ? 1 : 0) + (has(self.path) ? 1 : 0) == 1").message("set exactly one of secretRef, configMapRef or path"))]
#[serde(rename_all = "camelCase")]
pub struct GeoIpSource {
    /// A key of a Secret holding the mmdb file (e.g. a licensed MaxMind GeoLite2 database).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretKeyReference>,
    /// A key of a ConfigMap holding the mmdb file (binaryData).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_ref: Option<ConfigMapKeyReference>,
    /// A file path inside the edge container, for a database mounted by other means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^/[^\x00]*$"), length(max = 1024))]
    pub path: Option<String>,
}

/// A key in a ConfigMap in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ConfigMapKeyReference {
    /// The ConfigMap's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key within the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// One-time codes sent by e-mail.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("duration(self.ttl) >= duration('30s')").message("a code must live at least 30s, or nobody could type it in time").field_path(".ttl"))]
#[serde(rename_all = "camelCase")]
pub struct OtpSpec {
    /// How many digits a code has.
    #[serde(default = "default_otp_length")]
    #[schemars(range(min = 6, max = 10))]
    pub length: i32,
    /// How long a code stays valid.
    #[serde(default = "default_otp_ttl")]
    pub ttl: Duration,
    /// How many wrong codes end the attempt (a new code must be asked for).
    #[serde(default = "default_otp_attempts")]
    #[schemars(range(min = 1, max = 20))]
    pub max_attempts: i32,
    /// How long to wait before another code may be sent to the same address.
    #[serde(default = "default_resend_cooldown")]
    pub resend_cooldown: Duration,
    /// The mail server that sends the codes.
    pub smtp: SmtpSpec,
}

const fn default_otp_length() -> i32 {
    6
}

const fn default_otp_ttl() -> Duration {
    Duration::from_secs(600)
}

const fn default_otp_attempts() -> i32 {
    5
}

const fn default_resend_cooldown() -> Duration {
    Duration::from_secs(60)
}

/// An SMTP server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SmtpSpec {
    /// The server's host name.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// The server's port: usually 587 with StartTls, 465 with Tls.
    #[serde(default = "default_smtp_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// How the connection is encrypted.
    #[serde(default)]
    pub tls: SmtpTls,
    /// A Secret with the keys `username` and `password`; no authentication when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: Option<String>,
    /// The sender, e.g. `Media <no-reply@example.org>` or `no-reply@example.org`.
    #[schemars(length(min = 3, max = 320))]
    pub from: String,
}

const fn default_smtp_port() -> i32 {
    587
}

/// How the connection to the SMTP server is encrypted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (port 587); refused if the server cannot.
    #[default]
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
    /// No encryption; only for a mail relay inside the cluster.
    None,
}

/// The session opened by a successful sign-in.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("duration(self.idleTtl) <= duration(self.ttl)").message("idleTtl cannot be longer than ttl").field_path(".idleTtl"))]
#[serde(rename_all = "camelCase")]
pub struct SessionSpec {
    /// The longest a session lasts, however active.
    #[serde(default = "default_session_ttl")]
    pub ttl: Duration,
    /// A session unused for this long ends.
    #[serde(default = "default_session_idle_ttl")]
    pub idle_ttl: Duration,
    /// The session cookie's name.
    #[serde(default = "default_cookie_name")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
    pub cookie_name: String,
    /// The cookie's domain; the exact host when unset (the safest choice).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie_domain: Option<DomainName>,
}

impl Default for SessionSpec {
    fn default() -> Self {
        Self {
            ttl: default_session_ttl(),
            idle_ttl: default_session_idle_ttl(),
            cookie_name: default_cookie_name(),
            cookie_domain: None,
        }
    }
}

const fn default_session_ttl() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}

const fn default_session_idle_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_cookie_name() -> String {
    "portcullis_session".to_owned()
}

/// Native-app access: the app's own clients cannot show a sign-in page, so a request that
/// carries an access token the app itself accepts is let through (after the country check).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppTokensSpec {
    /// Accept the app's access tokens.
    #[serde(default)]
    pub enabled: bool,
    /// How long the app's answer about a token is remembered.
    #[serde(default = "default_token_cache")]
    pub cache_ttl: Duration,
}

impl Default for AppTokensSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            cache_ttl: default_token_cache(),
        }
    }
}

const fn default_token_cache() -> Duration {
    Duration::from_secs(60)
}

/// What the operator last observed of an AccessPolicy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AccessPolicyStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling and Stalled, in the standard Kubernetes shape.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The MediaServers that use this policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
}

impl Validate for AccessPolicySpec {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut problems = Problems::default();
        if let Some(countries) = &self.countries {
            for (list, codes) in [("allow", &countries.allow), ("deny", &countries.deny)] {
                for (i, code) in codes.iter().enumerate() {
                    problems.check(code.check_assigned(), format!("spec.countries.{list}[{i}]"));
                }
            }
        }
        for (i, email) in self.emails.iter().enumerate() {
            problems.require(
                !self.emails[..i].contains(email),
                format!("spec.emails[{i}]"),
                format!("{email} is listed twice"),
            );
        }
        if let Some(otp) = &self.otp {
            problems.require(
                otp.resend_cooldown < otp.ttl,
                "spec.otp.resendCooldown",
                format!(
                    "a resend cooldown of {} is not shorter than the code lifetime of {}, so a lost code could not be replaced in time",
                    otp.resend_cooldown, otp.ttl
                ),
            );
            problems.require(
                otp.smtp.from.contains('@'),
                "spec.otp.smtp.from",
                format!("{:?} has no e-mail address", otp.smtp.from),
            );
        }
        problems.require(
            !self.session.idle_ttl.is_zero(),
            "spec.session.idleTtl",
            "must be longer than 0s",
        );
        problems.finish()
    }
}
