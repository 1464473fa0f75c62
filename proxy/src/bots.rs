//! Layer 7, bot guards: known vulnerability scanners are refused by their user agent,
//! clients without a user agent are refused on sign-in paths, and honeypot paths — files a
//! media server never has, which only scanners ask for — ban the address on first touch.
//!
//! A honeypot ban lasts [`HONEYPOT_BAN`] and covers every path; it is logged, counted and
//! listed under the rule name [`HONEYPOT_RULE`] like any other ban. Each replica checks its
//! own [`HoneypotBans`] (a map lookup per request). When the edge has a Redis server (the
//! first RateLimit of the document that keeps its counters in Redis), a ban is also
//! appended to a Redis stream of this edge ([`SharedHoneypots`]) and every replica reads
//! that stream about twice a second ([`crate::ban_sync`]), so a scanner that touches a
//! honeypot on one replica is banned on all of them. While Redis cannot answer, the ban
//! holds on the replica that saw it and `portcullis_ratelimit_backend_errors_total{limit=
//! "honeypot"}` counts the failure.
//!
//! | rule | status |
//! | --- | --- |
//! | `scanner` | 403 |
//! | `no-user-agent` (sign-in paths) | 403 |
//! | `honeypot` | 404, and the address is banned |

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use http::StatusCode;

use crate::{
    app_rules::starts_with_ignore_case,
    ratelimit::redis::RedisStore,
    verdict::{Reason, Response, Verdict},
};

/// The rule name honeypot bans are stored under.
pub const HONEYPOT_RULE: &str = "honeypot";
/// How long touching a honeypot bans an address.
pub const HONEYPOT_BAN: Duration = Duration::from_secs(3600);

/// User agents of vulnerability scanners and brute-force tools (lower case substrings).
const SCANNERS: [&str; 22] = [
    "sqlmap",
    "nikto",
    "nmap",
    "masscan",
    "zgrab",
    "nuclei",
    "wpscan",
    "dirbuster",
    "gobuster",
    "feroxbuster",
    "ffuf",
    "hydra",
    "medusa",
    "acunetix",
    "netsparker",
    "openvas",
    "nessus",
    "w3af",
    "whatweb",
    "jaeles",
    "zmeu",
    "morfeus",
];

/// Paths only scanners ask a media server for (lower case prefixes).
const HONEYPOTS: [&str; 16] = [
    "/wp-login.php",
    "/wp-admin",
    "/xmlrpc.php",
    "/.env",
    "/.git/",
    "/.aws/",
    "/.ssh/",
    "/phpmyadmin",
    "/pma/",
    "/admin.php",
    "/config.php",
    "/phpinfo.php",
    "/cgi-bin/",
    "/server-status",
    "/.ds_store",
    "/vendor/phpunit",
];

/// Paths where a missing user agent is refused: sign-in (real apps always send one).
const SIGN_IN: [&str; 5] = [
    "/users/authenticatebyname",
    "/users/authenticatewithquickconnect",
    "/quickconnect/",
    "/.portcullis/login",
    "/.portcullis/code",
];

/// Most addresses banned by honeypots at once (on a replica, and in the shared stream);
/// past it, expired bans are dropped, then the oldest.
pub const CAPACITY: usize = 100_000;

/// One honeypot ban: start and end in milliseconds since the epoch, and whether Redis holds
/// it (written there, or read from there).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoneypotBan {
    /// When it began.
    pub start: u64,
    /// When it ends.
    pub end: u64,
    /// Whether it is shared through Redis.
    pub shared: bool,
}

/// Addresses banned for touching a honeypot, as this replica knows them. Kept across policy
/// reloads.
#[derive(Debug, Default)]
pub struct HoneypotBans {
    bans: Mutex<HashMap<IpAddr, HoneypotBan>>,
}

impl HoneypotBans {
    /// Bans `ip` from `start` to `end`; `shared`: Redis holds the ban. Of two bans of one
    /// address the one that ends later is kept (shared when either copy of it is).
    pub fn ban(&self, ip: IpAddr, start: u64, end: u64, shared: bool) {
        let mut bans = self.bans.lock().unwrap_or_else(PoisonError::into_inner);
        if bans.len() >= CAPACITY && !bans.contains_key(&ip) {
            bans.retain(|_, ban| ban.end > start);
            if bans.len() >= CAPACITY
                && let Some(oldest) = bans
                    .iter()
                    .min_by_key(|(_, ban)| ban.end)
                    .map(|(ip, _)| *ip)
            {
                bans.remove(&oldest);
            }
        }
        let new = HoneypotBan { start, end, shared };
        bans.entry(ip)
            .and_modify(|known| {
                if end > known.end {
                    *known = new;
                } else if end == known.end {
                    known.shared |= shared;
                }
            })
            .or_insert(new);
    }

    /// When the ban of `ip` in force at `now` ends, if there is one.
    pub fn ban_end(&self, ip: IpAddr, now: u64) -> Option<u64> {
        let bans = self.bans.lock().unwrap_or_else(PoisonError::into_inner);
        bans.get(&ip).map(|ban| ban.end).filter(|end| *end > now)
    }

    /// The bans in force at `now`, by address.
    pub fn list(&self, now: u64) -> Vec<(IpAddr, HoneypotBan)> {
        let bans = self.bans.lock().unwrap_or_else(PoisonError::into_inner);
        let mut list: Vec<_> = bans
            .iter()
            .filter(|(_, ban)| ban.end > now)
            .map(|(ip, ban)| (*ip, *ban))
            .collect();
        list.sort_unstable_by_key(|(ip, _)| *ip);
        list
    }
}

/// Where an edge shares its honeypot bans: a Redis stream of its own.
#[derive(Clone, Debug)]
pub struct SharedHoneypots {
    /// The server (the first Redis RateLimit's).
    pub store: Arc<RedisStore>,
    /// The stream: `portcullis:bots:<host>:honeypot`.
    pub stream: String,
}

impl SharedHoneypots {
    /// The stream of the edge for `host` on `store`.
    pub fn new(store: Arc<RedisStore>, host: &str) -> Self {
        Self {
            store,
            stream: format!("portcullis:bots:{host}:honeypot"),
        }
    }

    /// Whether both name the same stream on the same server.
    pub fn same_stream(&self, other: &Self) -> bool {
        self.stream == other.stream && self.store.same_server(&other.store)
    }

    /// Appends the ban of `ip` to the stream.
    pub async fn publish(&self, ip: IpAddr, start: u64, end: u64) -> Result<(), String> {
        self.store
            .publish_ban(
                &self.stream,
                &ip.to_string(),
                start,
                end,
                CAPACITY,
                HONEYPOT_BAN + Duration::from_secs(60),
            )
            .await
    }
}

/// The compiled guards.
#[derive(Debug)]
pub struct BotGuard {
    scanners: AhoCorasick,
}

impl Default for BotGuard {
    fn default() -> Self {
        Self {
            scanners: AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::LeftmostFirst)
                .build(SCANNERS)
                .expect("the scanner patterns compile"),
        }
    }
}

/// What the bot guard decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BotVerdict {
    /// The answer.
    pub verdict: Verdict,
    /// Whether the address is to be banned (a honeypot was touched).
    pub ban: bool,
}

impl BotGuard {
    /// The verdict on a request for `path` with this `User-Agent` (`None`: absent or empty).
    pub fn check(&self, path: &str, user_agent: Option<&[u8]>) -> BotVerdict {
        let forbidden = |reason| Verdict::Respond(Response::error(StatusCode::FORBIDDEN), reason);
        if HONEYPOTS
            .iter()
            .any(|prefix| starts_with_ignore_case(path, prefix))
        {
            return BotVerdict {
                verdict: Verdict::Respond(
                    Response::error(StatusCode::NOT_FOUND),
                    Reason::owned("honeypot", format!("{path} is a honeypot")),
                ),
                ban: true,
            };
        }
        let verdict = match user_agent.filter(|ua| !ua.trim_ascii().is_empty()) {
            Some(ua) => match self.scanners.find(ua) {
                Some(found) => forbidden(Reason::owned(
                    "scanner",
                    format!("user agent of {}", SCANNERS[found.pattern().as_usize()]),
                )),
                None => Verdict::Continue,
            },
            None if SIGN_IN
                .iter()
                .any(|prefix| starts_with_ignore_case(path, prefix)) =>
            {
                forbidden(Reason::new("no-user-agent", "sign-in without a user agent"))
            }
            None => Verdict::Continue,
        };
        BotVerdict {
            verdict,
            ban: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verdict: &BotVerdict) -> Option<&'static str> {
        match &verdict.verdict {
            Verdict::Respond(_, reason) => Some(reason.rule),
            _ => None,
        }
    }

    #[test]
    fn scanners_are_refused_by_their_user_agent() {
        let guard = BotGuard::default();
        for ua in [
            "sqlmap/1.7.2#stable (https://sqlmap.org)",
            "Mozilla/5.00 (Nikto/2.1.6)",
            "Nuclei - Open-source project",
        ] {
            assert_eq!(
                rule(&guard.check("/", Some(ua.as_bytes()))),
                Some("scanner"),
                "{ua}"
            );
        }
        let browser =
            b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/126 Safari/537.36";
        assert_eq!(rule(&guard.check("/", Some(browser))), None);
        let app = b"Jellyfin-Android/2.6.1";
        assert_eq!(
            rule(&guard.check("/Users/AuthenticateByName", Some(app))),
            None
        );
    }

    #[test]
    fn sign_in_without_a_user_agent_is_refused_elsewhere_it_is_not() {
        let guard = BotGuard::default();
        assert_eq!(
            rule(&guard.check("/Users/AuthenticateByName", None)),
            Some("no-user-agent")
        );
        assert_eq!(
            rule(&guard.check("/.portcullis/login", Some(b"  "))),
            Some("no-user-agent")
        );
        assert_eq!(rule(&guard.check("/Items", None)), None);
    }

    #[test]
    fn honeypots_ban_on_first_touch() {
        let guard = BotGuard::default();
        for path in [
            "/wp-login.php",
            "/.env",
            "/.git/config",
            "/WP-ADMIN/setup.php",
            "/phpmyadmin/index.php",
        ] {
            let verdict = guard.check(path, Some(b"curl/8"));
            assert!(verdict.ban, "{path}");
            assert_eq!(rule(&verdict), Some("honeypot"));
        }
        assert!(!guard.check("/web/index.html", Some(b"curl/8")).ban);
    }

    #[test]
    fn honeypot_bans_cover_the_address_until_they_end() {
        let bans = HoneypotBans::default();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        bans.ban(ip, 1000, 2000, false);
        assert_eq!(bans.ban_end(ip, 1500), Some(2000));
        assert_eq!(bans.ban_end(ip, 2000), None);
        assert_eq!(bans.ban_end("192.0.2.10".parse().unwrap(), 1500), None);
        let ban = HoneypotBan {
            start: 1000,
            end: 2000,
            shared: false,
        };
        assert_eq!(bans.list(1500), [(ip, ban)]);
    }

    #[test]
    fn a_ban_known_twice_keeps_the_later_end() {
        let bans = HoneypotBans::default();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let ban = |start, end, shared| HoneypotBan { start, end, shared };
        bans.ban(ip, 1000, 3000, false);
        bans.ban(ip, 500, 2500, true);
        assert_eq!(bans.list(0), [(ip, ban(1000, 3000, false))]);
        // The same ban read back from Redis.
        bans.ban(ip, 1000, 3000, true);
        assert_eq!(bans.list(0), [(ip, ban(1000, 3000, true))]);
        bans.ban(ip, 2000, 4000, false);
        assert_eq!(bans.list(0), [(ip, ban(2000, 4000, false))]);
    }

    #[test]
    fn honeypot_bans_stay_bounded() {
        let bans = HoneypotBans::default();
        for i in 0..(CAPACITY as u32 + 100) {
            bans.ban(IpAddr::from(i.to_be_bytes()), 0, 10, false);
        }
        assert!(bans.list(0).len() <= CAPACITY);
    }
}
