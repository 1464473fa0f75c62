//! Native apps: Jellyfin's TV and phone apps cannot use an e-mail sign-in page, so a request
//! that carries a Jellyfin access token is let through when Jellyfin itself accepts that
//! token. The answer is remembered for a short while ([`TokenCache`]), so the app is asked
//! once per token and lifetime, not once per request.
//!
//! Where Jellyfin clients put their token: `X-Emby-Token` or `X-MediaBrowser-Token`,
//! `Authorization` or `X-Emby-Authorization` as `MediaBrowser ..., Token="..."`, or the
//! `api_key`/`ApiKey` query parameter (streams and images).

use std::{collections::HashMap, sync::Mutex, time::Duration};

use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};

const X_EMBY_TOKEN: HeaderName = HeaderName::from_static("x-emby-token");
const X_MEDIABROWSER_TOKEN: HeaderName = HeaderName::from_static("x-mediabrowser-token");
const X_EMBY_AUTHORIZATION: HeaderName = HeaderName::from_static("x-emby-authorization");

/// Longest token accepted; Jellyfin's are 32 hex digits.
const MAX_TOKEN_LEN: usize = 128;

/// Jellyfin's paths a native app needs before it has a token: server discovery, branding and
/// the app's own sign-in (password or Quick Connect). They stay behind the geo layer and the
/// login rate limits.
pub const APP_SIGN_IN_PATHS: [&str; 7] = [
    "/System/Info/Public",
    "/System/Ping",
    "/Branding/Configuration",
    "/Branding/Css",
    "/Users/AuthenticateByName",
    "/Users/AuthenticateWithQuickConnect",
    "/QuickConnect/",
];

/// Whether `path` is one of [`APP_SIGN_IN_PATHS`] (case-insensitive, as Jellyfin routes).
pub fn is_app_sign_in(path: &str) -> bool {
    APP_SIGN_IN_PATHS.iter().any(|known| {
        if known.ends_with('/') {
            crate::app_rules::starts_with_ignore_case(path, known)
        } else {
            path.eq_ignore_ascii_case(known)
        }
    })
}

fn well_formed(token: &str) -> Option<&str> {
    (!token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'))
    .then_some(token)
}

/// The `Token="..."` parameter of a `MediaBrowser` authorization value.
fn from_authorization(value: &str) -> Option<&str> {
    let rest = value.trim_start();
    let scheme_len = "MediaBrowser".len();
    if rest.len() < scheme_len || !rest[..scheme_len].eq_ignore_ascii_case("MediaBrowser") {
        return None;
    }
    rest[scheme_len..].split(',').find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("Token")
            .then(|| value.trim().trim_matches('"'))
    })
}

/// The Jellyfin token a request carries, if any (and only if well formed).
pub fn extract<'a>(headers: &'a HeaderMap, query: Option<&'a str>) -> Option<&'a str> {
    let header = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(token) = header(&X_EMBY_TOKEN).or_else(|| header(&X_MEDIABROWSER_TOKEN)) {
        return well_formed(token.trim());
    }
    for name in [&http::header::AUTHORIZATION, &X_EMBY_AUTHORIZATION] {
        if let Some(token) = header(name).and_then(from_authorization) {
            return well_formed(token);
        }
    }
    query?.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        (name.eq_ignore_ascii_case("api_key") || name.eq_ignore_ascii_case("apikey"))
            .then(|| well_formed(value))?
    })
}

/// What the app said about a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenStatus {
    /// The app accepts it.
    Valid,
    /// The app refuses it.
    Invalid,
}

/// Most tokens remembered; past it, expired answers are dropped, then the oldest.
const CACHE_CAPACITY: usize = 50_000;
/// How long a refusal is remembered at most (a token just issued must work soon).
const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(30);

/// Answers of the app about tokens, by the token's SHA-256 (tokens are never kept).
#[derive(Debug, Default)]
pub struct TokenCache {
    entries: Mutex<HashMap<[u8; 32], (TokenStatus, u64)>>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl TokenCache {
    /// The remembered answer for `token` at `now` (seconds), if still fresh.
    pub fn get(&self, token: &str, now: u64) -> Option<TokenStatus> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .get(&digest(token))
            .filter(|(_, until)| *until > now)
            .map(|(status, _)| *status)
    }

    /// Remembers the app's answer about `token` for `ttl` (refusals for 30 s at most).
    pub fn put(&self, token: &str, status: TokenStatus, ttl: Duration, now: u64) {
        let ttl = match status {
            TokenStatus::Valid => ttl,
            TokenStatus::Invalid => ttl.min(MAX_NEGATIVE_TTL),
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= CACHE_CAPACITY {
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= CACHE_CAPACITY
                && let Some(oldest) = entries
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(key, _)| *key)
            {
                entries.remove(&oldest);
            }
        }
        entries.insert(digest(token), (status, now + ttl.as_secs().max(1)));
    }

    /// How many answers are remembered.
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn tokens_are_found_where_jellyfin_clients_put_them() {
        let none = HeaderMap::new();
        assert_eq!(
            extract(&headers(&[("x-emby-token", "abc123")]), None),
            Some("abc123")
        );
        assert_eq!(
            extract(
                &headers(&[(
                    "authorization",
                    r#"MediaBrowser Client="Jellyfin Android", Device="Pixel", DeviceId="x", Version="2.6", Token="f00d""#
                )]),
                None
            ),
            Some("f00d")
        );
        assert_eq!(
            extract(
                &headers(&[("x-emby-authorization", r#"MediaBrowser Token="beef""#)]),
                None
            ),
            Some("beef")
        );
        assert_eq!(
            extract(&none, Some("static=true&api_key=cafe")),
            Some("cafe")
        );
        assert_eq!(extract(&none, Some("ApiKey=cafe")), Some("cafe"));
        assert_eq!(extract(&none, Some("q=1")), None);
        assert_eq!(
            extract(&headers(&[("authorization", "Bearer abc")]), None),
            None
        );
    }

    #[test]
    fn malformed_tokens_are_ignored() {
        assert_eq!(extract(&headers(&[("x-emby-token", "a b")]), None), None);
        assert_eq!(extract(&HeaderMap::new(), Some("api_key=%0d%0a")), None);
        let long = "a".repeat(200);
        assert_eq!(
            extract(&HeaderMap::new(), Some(&format!("api_key={long}"))),
            None
        );
    }

    #[test]
    fn app_sign_in_paths_are_recognised_case_insensitively() {
        assert!(is_app_sign_in("/Users/AuthenticateByName"));
        assert!(is_app_sign_in("/users/authenticatebyname"));
        assert!(is_app_sign_in("/QuickConnect/Initiate"));
        assert!(!is_app_sign_in("/Users/AuthenticateByNameX"));
        assert!(!is_app_sign_in("/Users/Me"));
    }

    #[test]
    fn answers_expire_and_refusals_are_kept_briefly() {
        let cache = TokenCache::default();
        cache.put("good", TokenStatus::Valid, Duration::from_secs(300), 1000);
        cache.put("bad", TokenStatus::Invalid, Duration::from_secs(300), 1000);
        assert_eq!(cache.get("good", 1299), Some(TokenStatus::Valid));
        assert_eq!(cache.get("good", 1300), None);
        assert_eq!(cache.get("bad", 1029), Some(TokenStatus::Invalid));
        assert_eq!(cache.get("bad", 1030), None);
        assert_eq!(cache.get("other", 1000), None);
    }

    #[test]
    fn the_cache_stays_bounded() {
        let cache = TokenCache::default();
        for i in 0..CACHE_CAPACITY + 10 {
            cache.put(
                &format!("t{i}"),
                TokenStatus::Valid,
                Duration::from_secs(60),
                i as u64,
            );
        }
        assert!(cache.len() <= CACHE_CAPACITY);
    }
}
