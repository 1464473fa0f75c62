//! Cloudflare Access in front of the edge (behind-Cloudflare mode): every request carries the
//! token Cloudflare Access signed for the application — the `Cf-Access-Jwt-Assertion` header,
//! or the `CF_Authorization` cookie — and the edge checks it itself, so a request that went
//! around Cloudflare, or one Cloudflare did not authenticate for this application, never
//! reaches the app.
//!
//! A token is a JWT signed with RS256 by one of the team's keys. The keys are a JWKS the edge
//! fetches from `https://<team>/cdn-cgi/access/certs` ([`crate::cloudflare_keys`]), keeps,
//! fetches again periodically and when a token names a key id it does not know (Cloudflare
//! rotates its keys; [`super::Access::keys_to_fetch`]), at most once every
//! [`REFETCH_EVERY`] seconds for unknown ids, so forged key ids cannot make it hammer the
//! endpoint. [`CloudflareAccess::verify`] is the pure check
//! on a token with the keys known: only `RS256` (no algorithm from the token is trusted), a
//! known `kid`, the signature, `iss` (`https://<team>`), `aud` (one of the application's
//! tags), `exp` and `nbf` with [`LEEWAY`]. The verified `email` is the request's identity.
//!
//! | rule | answer |
//! | --- | --- |
//! | `cloudflare-access` (valid token, allowed e-mail) | let through, e-mail logged and forwarded |
//! | `cf-access-missing` | 403 |
//! | `cf-access-malformed`, `cf-access-algorithm`, `cf-access-unknown-key`, `cf-access-signature` | 403 |
//! | `cf-access-issuer`, `cf-access-audience`, `cf-access-expired`, `cf-access-not-yet-valid` | 403 |

use std::{collections::HashMap, time::Duration};

use http::{HeaderMap, HeaderName};
use portcullis_crds::edge::{self, HttpUrl};
use ring::signature::{RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use serde::Deserialize;

use super::signing;

/// The rule of a request let through on its Cloudflare Access token.
pub const GRANT_RULE: &str = "cloudflare-access";
/// The header Cloudflare Access puts its token in.
pub const TOKEN_HEADER: HeaderName = HeaderName::from_static("cf-access-jwt-assertion");
/// The cookie Cloudflare Access keeps its token in, in browsers.
pub const TOKEN_COOKIE: &str = "CF_Authorization";
/// The header Cloudflare sends the user's e-mail in; the edge sets it from the verified token
/// (and removes what a client sent).
pub const EMAIL_HEADER: HeaderName = HeaderName::from_static("cf-access-authenticated-user-email");
/// Clock difference allowed on `exp` and `nbf`, in seconds.
pub const LEEWAY: u64 = 30;
/// Least time between two fetches of the keys caused by unknown key ids, in seconds.
pub const REFETCH_EVERY: u64 = 10;
/// Least time between two fetches of the keys after a failed one, in seconds.
pub const RETRY_EVERY: u64 = 5;
/// Longest token read.
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// One RSA public key of the team, as the JWKS gives it.
#[derive(Clone, PartialEq, Eq)]
struct RsaKey {
    n: Vec<u8>,
    e: Vec<u8>,
}

impl std::fmt::Debug for RsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RsaKey({} bits)", self.n.len() * 8)
    }
}

/// The team's keys as last fetched from one URL, and when fetches happened.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeySet {
    /// The URL they come from.
    pub url: String,
    keys: HashMap<String, RsaKey>,
    /// When they were last fetched successfully (seconds since the epoch).
    pub fetched: Option<u64>,
    /// When a fetch was last tried, for any reason.
    pub attempted: u64,
    /// When a fetch was last tried because a token named an unknown key id.
    pub refetched: u64,
    /// Why the last fetch failed, when it did.
    pub error: Option<String>,
}

/// Why a fetch of the keys happens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchCause<'a> {
    /// The periodic refresh (and the first fetch).
    Schedule,
    /// A token named this key id, which the keys do not have.
    UnknownKey(&'a str),
}

impl KeySet {
    /// No keys yet, for `url`.
    pub fn empty(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            ..Self::default()
        }
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether key `kid` is known.
    pub fn has(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// Whether a fetch for `cause` is due at `now`: for the schedule, once the keys are
    /// `refresh` seconds old (a failed fetch is retried after [`RETRY_EVERY`]); for an
    /// unknown key id, once [`REFETCH_EVERY`] has passed since the last such fetch.
    pub fn fetch_due(&self, cause: FetchCause<'_>, refresh: u64, now: u64) -> bool {
        match cause {
            FetchCause::Schedule => {
                let stale = self
                    .fetched
                    .is_none_or(|at| now >= at.saturating_add(refresh));
                let resting =
                    self.error.is_some() && now < self.attempted.saturating_add(RETRY_EVERY);
                stale && !resting
            }
            FetchCause::UnknownKey(kid) => {
                !self.has(kid) && now >= self.refetched.saturating_add(REFETCH_EVERY)
            }
        }
    }

    /// The set after a fetch at `now` for `cause` that gave `body` (or failed): new keys on
    /// success, the old ones kept on a failure (the last good state).
    pub fn after_fetch(
        &self,
        cause: FetchCause<'_>,
        now: u64,
        body: Result<&[u8], String>,
    ) -> Self {
        let mut next = self.clone();
        next.attempted = now;
        if matches!(cause, FetchCause::UnknownKey(_)) {
            next.refetched = now;
        }
        match body.and_then(parse_jwks) {
            Ok(keys) => {
                next.keys = keys;
                next.fetched = Some(now);
                next.error = None;
            }
            Err(error) => next.error = Some(error),
        }
        next
    }
}

#[derive(Deserialize)]
struct Jwks {
    keys: Vec<Jwk>,
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
}

fn unsigned(text: &str) -> Option<Vec<u8>> {
    let bytes = signing::decode(text)?;
    let first = bytes.iter().position(|&b| b != 0)?;
    Some(bytes[first..].to_vec())
}

/// The RS256 signing keys of a JWKS document, by key id. Keys of other kinds or uses are
/// skipped; a set with no usable key is an error.
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, RsaKey>, String> {
    let jwks: Jwks =
        serde_json::from_slice(body).map_err(|e| format!("the key set is not a JWKS: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in jwks.keys {
        let usable = jwk.kty == "RSA"
            && jwk.alg.as_deref().is_none_or(|alg| alg == "RS256")
            && jwk.use_.as_deref().is_none_or(|use_| use_ == "sig");
        let (Some(kid), Some(n), Some(e), true) = (jwk.kid, jwk.n, jwk.e, usable) else {
            continue;
        };
        let (Some(n), Some(e)) = (unsigned(&n), unsigned(&e)) else {
            continue;
        };
        // RS256 as ring verifies it: a 2048- to 8192-bit modulus, a small odd exponent.
        let bits = n.len() * 8 - n[0].leading_zeros() as usize;
        if (2048..=8192).contains(&bits) && e.len() <= 4 && e[e.len() - 1] & 1 == 1 {
            keys.insert(kid, RsaKey { n, e });
        }
    }
    if keys.is_empty() {
        return Err("the key set has no RS256 signing key".to_owned());
    }
    Ok(keys)
}

/// The compiled Cloudflare Access settings of a policy.
#[derive(Clone, Debug)]
pub struct CloudflareAccess {
    issuer: String,
    audiences: Vec<String>,
    url: HttpUrl,
    url_text: String,
    refresh: Duration,
}

/// What a valid token says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified {
    /// The user's e-mail, lower case; none for service tokens.
    pub email: Option<String>,
    /// When the token was issued, if it says.
    pub issued: Option<u64>,
}

/// Why a token was not accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No token in the header or the cookie.
    Missing,
    /// Not a JWT, or one the edge cannot read.
    Malformed(&'static str),
    /// Signed with an algorithm other than RS256.
    Algorithm(String),
    /// Signed by a key the team's keys do not have.
    UnknownKey(String),
    /// The signature does not verify with the key it names.
    Signature(String),
    /// Issued by someone other than the team.
    Issuer(String),
    /// For another application.
    Audience(Vec<String>),
    /// Expired at this time.
    Expired(u64),
    /// Not valid before this time.
    NotYetValid(u64),
}

impl Failure {
    /// The rule id, for the decision log and metrics.
    pub const fn rule(&self) -> &'static str {
        match self {
            Self::Missing => "cf-access-missing",
            Self::Malformed(_) => "cf-access-malformed",
            Self::Algorithm(_) => "cf-access-algorithm",
            Self::UnknownKey(_) => "cf-access-unknown-key",
            Self::Signature(_) => "cf-access-signature",
            Self::Issuer(_) => "cf-access-issuer",
            Self::Audience(_) => "cf-access-audience",
            Self::Expired(_) => "cf-access-expired",
            Self::NotYetValid(_) => "cf-access-not-yet-valid",
        }
    }

    /// What exactly was wrong, for the decision log (never sent to the client).
    pub fn detail(&self, keys: &KeySet, now: u64) -> String {
        match self {
            Self::Missing => format!(
                "no Cloudflare Access token (header {TOKEN_HEADER} or cookie {TOKEN_COOKIE})"
            ),
            Self::Malformed(what) => format!("the Cloudflare Access token is malformed: {what}"),
            Self::Algorithm(alg) => format!("the token is signed with {alg:?}, not RS256"),
            Self::UnknownKey(kid) => {
                let mut detail = format!(
                    "key id {kid:?} is not among the team's {} keys from {}",
                    keys.len(),
                    keys.url
                );
                match (&keys.error, keys.fetched) {
                    (Some(error), _) => {
                        detail.push_str(&format!("; the last fetch failed: {error}"))
                    }
                    (None, Some(at)) => {
                        detail.push_str(&format!(", fetched {}s ago", now.saturating_sub(at)));
                    }
                    (None, None) => detail.push_str("; they have not been fetched yet"),
                }
                detail
            }
            Self::Signature(kid) => format!("the signature does not verify with key {kid:?}"),
            Self::Issuer(issuer) => format!("the token is issued by {issuer:?}, not the team"),
            Self::Audience(audiences) => {
                format!("the token is for audience {audiences:?}, not this application's")
            }
            Self::Expired(exp) => format!("the token expired {}s ago", now.saturating_sub(*exp)),
            Self::NotYetValid(nbf) => {
                format!(
                    "the token is not valid for {}s yet",
                    nbf.saturating_sub(now)
                )
            }
        }
    }
}

/// The token a request carries: the header, else the cookie.
pub fn token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(&TOKEN_HEADER)
        .and_then(|value| value.to_str().ok())
        .or_else(|| super::cookie(headers, TOKEN_COOKIE))
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// The key id in a token's header, if it reads as one (nothing is verified).
pub fn key_id(token: &str) -> Option<String> {
    let header = token.split('.').next()?;
    let header: Header = serde_json::from_slice(&signing::decode(header)?).ok()?;
    header.kid
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// `aud` is one string or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum Audiences {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<Audiences>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    email: Option<String>,
}

impl CloudflareAccess {
    /// Compiles the document's settings (the document validated the URL).
    pub fn new(doc: &edge::CloudflareAccess) -> Result<Self, String> {
        let url_text = doc.jwks_url();
        Ok(Self {
            issuer: doc.issuer(),
            audiences: doc.audiences.clone(),
            url: HttpUrl::parse(&url_text)?,
            url_text,
            refresh: doc.jwks_refresh.get(),
        })
    }

    /// Where the keys are fetched.
    pub fn jwks_url(&self) -> &str {
        &self.url_text
    }

    /// The key URL, split for a client.
    pub const fn jwks_location(&self) -> &HttpUrl {
        &self.url
    }

    /// How often the keys are fetched again, in seconds.
    pub const fn refresh_secs(&self) -> u64 {
        self.refresh.as_secs()
    }

    /// Checks `token` with the team's `keys` at `now` (seconds since the epoch).
    pub fn verify(&self, token: &str, keys: &KeySet, now: u64) -> Result<Verified, Failure> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(Failure::Malformed("longer than 16 KiB"));
        }
        let mut parts = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Failure::Malformed("not three dot-separated parts"));
        };
        let header: Header = signing::decode(header)
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(Failure::Malformed("the header is not base64url JSON"))?;
        if header.alg != "RS256" {
            return Err(Failure::Algorithm(header.alg));
        }
        if header.crit.is_some() {
            return Err(Failure::Malformed("the header has critical extensions"));
        }
        let kid = header
            .kid
            .ok_or(Failure::Malformed("the header names no key id"))?;
        let key = keys
            .keys
            .get(&kid)
            .ok_or_else(|| Failure::UnknownKey(kid.clone()))?;
        let signature = signing::decode(signature)
            .ok_or(Failure::Malformed("the signature is not base64url"))?;
        let signed = &token[..header_and_payload_len(token)];
        RsaPublicKeyComponents {
            n: &key.n,
            e: &key.e,
        }
        .verify(&RSA_PKCS1_2048_8192_SHA256, signed.as_bytes(), &signature)
        .map_err(|_| Failure::Signature(kid))?;
        let claims: Claims = signing::decode(payload)
            .and_then(|json| serde_json::from_slice(&json).ok())
            .ok_or(Failure::Malformed("the claims are not base64url JSON"))?;
        let issuer = claims.iss.unwrap_or_default();
        if issuer != self.issuer {
            return Err(Failure::Issuer(issuer));
        }
        let audiences = match claims.aud {
            Some(Audiences::One(one)) => vec![one],
            Some(Audiences::Many(many)) => many,
            None => Vec::new(),
        };
        if !audiences.iter().any(|aud| self.audiences.contains(aud)) {
            return Err(Failure::Audience(audiences));
        }
        let exp = claims
            .exp
            .ok_or(Failure::Malformed("the token has no expiry"))?;
        if now >= exp.saturating_add(LEEWAY) {
            return Err(Failure::Expired(exp));
        }
        if let Some(nbf) = claims.nbf
            && now.saturating_add(LEEWAY) < nbf
        {
            return Err(Failure::NotYetValid(nbf));
        }
        Ok(Verified {
            email: claims
                .email
                .map(|email| email.trim().to_ascii_lowercase())
                .filter(|email| !email.is_empty()),
            issued: claims.iat,
        })
    }
}

/// The length of `header.payload` in a token with three parts.
fn header_and_payload_len(token: &str) -> usize {
    token.rfind('.').unwrap_or(token.len())
}

/// Keys and tokens for tests, signed with OpenSSL (an implementation other than the one
/// that verifies).
#[cfg(test)]
pub mod testing {
    use std::sync::LazyLock;

    use openssl::{hash::MessageDigest, pkey::PKey, rsa::Rsa, sign::Signer};

    use super::*;

    /// The time tokens are made for.
    pub const NOW: u64 = 1_800_000_000;

    /// base64url without padding.
    pub fn b64(bytes: &[u8]) -> String {
        signing::encode(bytes)
    }

    /// The issuer of the test team.
    pub const ISSUER: &str = "https://myteam.cloudflareaccess.com";

    /// Two 2048-bit keys, generated once.
    pub static KEYS: LazyLock<[PKey<openssl::pkey::Private>; 2]> =
        LazyLock::new(|| [0, 1].map(|_| PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap()));

    /// The JWK of `key` as `kid`.
    pub fn jwk(key: &PKey<openssl::pkey::Private>, kid: &str) -> serde_json::Value {
        let rsa = key.rsa().unwrap();
        serde_json::json!({
            "kid": kid, "kty": "RSA", "alg": "RS256", "use": "sig",
            "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())
        })
    }

    /// The keys of the team: key 0 as `k0`.
    pub fn team_keys() -> KeySet {
        let body = serde_json::json!({"keys": [jwk(&KEYS[0], "k0")]}).to_string();
        KeySet::empty("https://keys").after_fetch(FetchCause::Schedule, NOW, Ok(body.as_bytes()))
    }

    /// A token with `claims`, signed by `key` and naming key id `kid`.
    pub fn signed(
        key: &PKey<openssl::pkey::Private>,
        kid: &str,
        claims: &serde_json::Value,
    ) -> String {
        let header = serde_json::json!({"alg": "RS256", "kid": kid, "typ": "JWT"});
        let signed = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut signer = Signer::new(MessageDigest::sha256(), key).unwrap();
        signer.update(signed.as_bytes()).unwrap();
        format!("{signed}.{}", b64(&signer.sign_to_vec().unwrap()))
    }

    /// Claims of a valid token for `aud-2`, for Alice, at [`NOW`].
    pub fn claims() -> serde_json::Value {
        serde_json::json!({
            "aud": ["aud-2"], "email": "Alice@Example.org", "exp": NOW + 600, "iat": NOW - 60,
            "nbf": NOW - 60, "iss": ISSUER, "type": "app", "sub": "7335d417"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::*, *};

    #[test]
    fn a_token_signed_by_a_team_key_for_the_application_is_verified() {
        let access = CloudflareAccess::new(&doc(None)).unwrap();
        let verified = access
            .verify(&signed(&KEYS[0], "k0", &claims()), &team_keys(), NOW)
            .unwrap();
        assert_eq!(
            verified,
            Verified {
                email: Some("alice@example.org".into()),
                issued: Some(NOW - 60),
            }
        );
        // `aud` as one string is a list of one.
        let mut one = claims();
        one["aud"] = "aud-1".into();
        assert!(
            access
                .verify(&signed(&KEYS[0], "k0", &one), &team_keys(), NOW)
                .is_ok()
        );
        // Within the leeway either side.
        assert!(
            access
                .verify(&signed(&KEYS[0], "k0", &claims()), &team_keys(), NOW + 629)
                .is_ok()
        );
        assert!(
            access
                .verify(&signed(&KEYS[0], "k0", &claims()), &team_keys(), NOW - 89)
                .is_ok()
        );
    }

    #[test]
    fn every_way_a_token_can_be_wrong_is_refused_with_its_own_rule() {
        let access = CloudflareAccess::new(&doc(None)).unwrap();
        let keys = team_keys();
        let with = |field: &str, value: serde_json::Value| {
            let mut claims = claims();
            claims[field] = value;
            signed(&KEYS[0], "k0", &claims)
        };
        let good = signed(&KEYS[0], "k0", &claims());
        let (body, signature) = good.rsplit_once('.').unwrap();
        let mut flipped = signing::decode(signature).unwrap();
        flipped[0] ^= 1;
        let cases = [
            (
                with("aud", serde_json::json!(["other-app"])),
                "cf-access-audience",
                NOW,
            ),
            (
                with("iss", "https://evil.cloudflareaccess.com".into()),
                "cf-access-issuer",
                NOW,
            ),
            (
                signed(&KEYS[0], "k0", &claims()),
                "cf-access-expired",
                NOW + 630,
            ),
            (
                signed(&KEYS[0], "k0", &claims()),
                "cf-access-not-yet-valid",
                NOW - 91,
            ),
            (
                with("exp", serde_json::Value::Null),
                "cf-access-malformed",
                NOW,
            ),
            // Key 1 is not the team's: its signature fails under the id of key 0.
            (
                signed(&KEYS[1], "k0", &claims()),
                "cf-access-signature",
                NOW,
            ),
            (
                format!("{body}.{}", b64(&flipped)),
                "cf-access-signature",
                NOW,
            ),
            (
                signed(&KEYS[1], "k1", &claims()),
                "cf-access-unknown-key",
                NOW,
            ),
        ];
        for (token, rule, now) in cases {
            let failure = access.verify(&token, &keys, now).unwrap_err();
            assert_eq!(failure.rule(), rule, "{failure:?}");
        }
        let expired = access
            .verify(&signed(&KEYS[0], "k0", &claims()), &keys, NOW + 700)
            .unwrap_err();
        assert_eq!(
            expired.detail(&keys, NOW + 700),
            "the token expired 100s ago"
        );
        let audience = access
            .verify(&with("aud", serde_json::json!(["other-app"])), &keys, NOW)
            .unwrap_err();
        assert!(audience.detail(&keys, NOW).contains("other-app"));
    }

    fn doc(jwks_url: Option<&str>) -> edge::CloudflareAccess {
        edge::CloudflareAccess {
            team_domain: "myteam.cloudflareaccess.com".into(),
            audiences: vec!["aud-1".into(), "aud-2".into()],
            jwks_url: jwks_url.map(str::to_owned),
            jwks_refresh: portcullis_crds::common::Duration::from_secs(3600),
        }
    }

    #[test]
    fn a_jwks_gives_its_rs256_signing_keys_only() {
        let n = b64(&[0xC0; 256]);
        let body = serde_json::json!({"keys": [
            {"kid": "a", "kty": "RSA", "alg": "RS256", "use": "sig", "n": n, "e": "AQAB"},
            {"kid": "ec", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kid": "enc", "kty": "RSA", "use": "enc", "n": n, "e": "AQAB"},
            {"kid": "short", "kty": "RSA", "n": b64(&[0xC0; 128]), "e": "AQAB"},
            {"kty": "RSA", "n": n, "e": "AQAB"}
        ], "public_cert": {"kid": "a", "cert": "..."}});
        let keys = parse_jwks(body.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), ["a"]);
        // A leading zero byte (some encoders keep the sign byte) is dropped.
        let padded = [&[0u8][..], &[0xC0; 256]].concat();
        let body = serde_json::json!({"keys": [{"kid": "z", "kty": "RSA", "n": b64(&padded), "e": "AQAB"}]});
        assert_eq!(
            parse_jwks(body.to_string().as_bytes()).unwrap()["z"]
                .n
                .len(),
            256
        );
        assert!(parse_jwks(b"{\"keys\": []}").is_err());
        assert!(parse_jwks(b"<html>").is_err());
    }

    #[test]
    fn fetches_are_scheduled_and_unknown_key_ids_refetch_at_most_every_ten_seconds() {
        let body = serde_json::json!({"keys": [
            {"kid": "a", "kty": "RSA", "n": b64(&[0xC0; 256]), "e": "AQAB"}
        ]})
        .to_string();
        let empty = KeySet::empty("https://keys");
        assert!(empty.fetch_due(FetchCause::Schedule, 3600, NOW));
        assert!(empty.fetch_due(FetchCause::UnknownKey("a"), 3600, NOW));
        let fetched = empty.after_fetch(FetchCause::Schedule, NOW, Ok(body.as_bytes()));
        assert!(fetched.has("a") && fetched.error.is_none());
        assert!(!fetched.fetch_due(FetchCause::Schedule, 3600, NOW + 3599));
        assert!(fetched.fetch_due(FetchCause::Schedule, 3600, NOW + 3600));
        assert!(fetched.fetch_due(FetchCause::Schedule, 1, NOW + 1));
        assert!(!fetched.fetch_due(FetchCause::UnknownKey("a"), 3600, NOW));
        assert!(fetched.fetch_due(FetchCause::UnknownKey("b"), 3600, NOW));
        let refetched = fetched.after_fetch(
            FetchCause::UnknownKey("b"),
            NOW + 1,
            Err("connection refused".into()),
        );
        // A failed fetch keeps the keys it had, says why, and is not retried at once.
        assert!(refetched.has("a"));
        assert_eq!(refetched.error.as_deref(), Some("connection refused"));
        assert!(!refetched.fetch_due(FetchCause::UnknownKey("b"), 3600, NOW + 10));
        assert!(refetched.fetch_due(FetchCause::UnknownKey("b"), 3600, NOW + 11));
        assert!(!refetched.fetch_due(FetchCause::Schedule, 0, NOW + 5));
        assert!(refetched.fetch_due(FetchCause::Schedule, 0, NOW + 6));
    }

    #[test]
    fn tokens_that_are_not_rs256_jwts_are_refused_before_any_key_is_used() {
        let access = CloudflareAccess::new(&doc(None)).unwrap();
        assert_eq!(
            access.jwks_url(),
            "https://myteam.cloudflareaccess.com/cdn-cgi/access/certs"
        );
        let keys = KeySet::empty(access.jwks_url());
        let header = |json: &str| b64(json.as_bytes());
        let claims = b64(b"{}");
        let cases = [
            ("a.b".to_owned(), "cf-access-malformed"),
            ("a.b.c.d".to_owned(), "cf-access-malformed"),
            (format!("{}.{claims}.", header("{]")), "cf-access-malformed"),
            (
                format!("{}.{claims}.", header(r#"{"alg":"none"}"#)),
                "cf-access-algorithm",
            ),
            (
                format!("{}.{claims}.", header(r#"{"alg":"HS256","kid":"a"}"#)),
                "cf-access-algorithm",
            ),
            (
                format!("{}.{claims}.", header(r#"{"alg":"RS256"}"#)),
                "cf-access-malformed",
            ),
            (
                format!("{}.{claims}.", header(r#"{"alg":"RS256","kid":"a"}"#)),
                "cf-access-unknown-key",
            ),
        ];
        for (token, rule) in cases {
            let failure = access.verify(&token, &keys, NOW).unwrap_err();
            assert_eq!(failure.rule(), rule, "{token}");
            assert!(!failure.detail(&keys, NOW).is_empty());
        }
        let detail = Failure::UnknownKey("a".into()).detail(&keys, NOW);
        assert!(detail.contains("have not been fetched yet"), "{detail}");
    }

    #[test]
    fn the_token_comes_from_the_header_then_the_cookie() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            "a=1; CF_Authorization=from-cookie".parse().unwrap(),
        );
        assert_eq!(super::token(&headers), Some("from-cookie"));
        headers.insert(TOKEN_HEADER, "from-header".parse().unwrap());
        assert_eq!(super::token(&headers), Some("from-header"));
        assert_eq!(super::token(&HeaderMap::new()), None);
    }
}
