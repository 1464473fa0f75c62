//! Layer 7, bot guards: known vulnerability scanners are refused by their user agent,
//! clients without a user agent are refused on sign-in paths, and honeypot paths — files a
//! media server never has, which only scanners ask for — ban the address on first touch.
//!
//! A honeypot ban lasts [`HONEYPOT_BAN`] and covers every path; the proxy records it in the
//! rate limiter's store under the rule name [`HONEYPOT_RULE`], so it is logged, counted and
//! listed like any other ban.
//!
//! | rule | status |
//! | --- | --- |
//! | `scanner` | 403 |
//! | `no-user-agent` (sign-in paths) | 403 |
//! | `honeypot` | 404, and the address is banned |

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use http::StatusCode;

use crate::{
    app_rules::starts_with_ignore_case,
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

/// Most addresses banned by honeypots at once; past it, expired bans are dropped, then the
/// oldest.
const CAPACITY: usize = 100_000;

/// Addresses banned for touching a honeypot: (start, end) in milliseconds since the epoch.
/// Kept across policy reloads.
#[derive(Debug, Default)]
pub struct HoneypotBans {
    bans: Mutex<HashMap<IpAddr, (u64, u64)>>,
}

impl HoneypotBans {
    /// Bans `ip` from `start` to `end`.
    pub fn ban(&self, ip: IpAddr, start: u64, end: u64) {
        let mut bans = self.bans.lock().unwrap_or_else(PoisonError::into_inner);
        if bans.len() >= CAPACITY && !bans.contains_key(&ip) {
            bans.retain(|_, (_, until)| *until > start);
            if bans.len() >= CAPACITY
                && let Some(oldest) = bans
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(ip, _)| *ip)
            {
                bans.remove(&oldest);
            }
        }
        bans.insert(ip, (start, end));
    }

    /// When the ban of `ip` in force at `now` ends, if there is one.
    pub fn ban_end(&self, ip: IpAddr, now: u64) -> Option<u64> {
        let bans = self.bans.lock().unwrap_or_else(PoisonError::into_inner);
        bans.get(&ip).map(|(_, end)| *end).filter(|end| *end > now)
    }

    /// The bans in force at `now`: address, start, end.
    pub fn list(&self, now: u64) -> Vec<(IpAddr, u64, u64)> {
        let bans = self.bans.lock().unwrap_or_else(PoisonError::into_inner);
        let mut list: Vec<_> = bans
            .iter()
            .filter(|(_, (_, end))| *end > now)
            .map(|(ip, (start, end))| (*ip, *start, *end))
            .collect();
        list.sort_unstable();
        list
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
        bans.ban(ip, 1000, 2000);
        assert_eq!(bans.ban_end(ip, 1500), Some(2000));
        assert_eq!(bans.ban_end(ip, 2000), None);
        assert_eq!(bans.ban_end("192.0.2.10".parse().unwrap(), 1500), None);
        assert_eq!(bans.list(1500), [(ip, 1000, 2000)]);
    }

    #[test]
    fn honeypot_bans_stay_bounded() {
        let bans = HoneypotBans::default();
        for i in 0..(CAPACITY as u32 + 100) {
            bans.ban(IpAddr::from(i.to_be_bytes()), 0, 10);
        }
        assert!(bans.list(0).len() <= CAPACITY);
    }
}
