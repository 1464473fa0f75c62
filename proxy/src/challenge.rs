//! The proof-of-work challenge: a browser over a RateLimit whose response is `Challenge`
//! gets a small page whose JavaScript finds a number `n` such that
//! `SHA-256(challenge ":" n)` starts with [`DIFFICULTY`] zero bits (a second or two on a
//! phone), posts it, and earns a signed pass cookie bound to its address for [`PASS_TTL`]
//! seconds, during which challenge limits let it through. A self-hosted answer to
//! Cloudflare's bot challenge: a script kiddie's loop pays a second of CPU per pass, a
//! person clicks nothing.
//!
//! Challenges and passes are sealed with the session keys ([`crate::access::signing`]),
//! so every replica accepts what another issued; without an access policy a key of the
//! process is used.
//!
//! | rule | answer |
//! | --- | --- |
//! | `challenge` | 429 with the challenge page |
//! | `challenge-solved` | 303 to the page first asked for, pass cookie set |
//! | `challenge-failed` | 403 (wrong, expired, or another address's challenge) |

use std::{net::IpAddr, sync::OnceLock};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use sha2::{Digest, Sha256};

use crate::{
    access::{
        self, login,
        pages::escape,
        signing::{self, Purpose, Signer},
    },
    verdict::{Body, Reason, Response, Verdict},
};

/// Where solutions are posted.
pub const CHALLENGE_PATH: &str = "/.portcullis/challenge";
/// Leading zero bits the hash must have (65 536 tries on average).
pub const DIFFICULTY: u32 = 16;
/// How long a pass lasts, in seconds.
pub const PASS_TTL: u64 = 3600;
/// How long a challenge may take to solve, in seconds.
const CHALLENGE_TTL: u64 = 300;
/// The pass cookie.
pub const PASS_COOKIE: &str = "portcullis_pass";

/// Issues and checks challenges and passes.
#[derive(Clone, Debug)]
pub struct Challenger {
    signer: Signer,
}

/// A key for this process, when no access policy brings session keys.
fn process_signer() -> Signer {
    static KEY: OnceLock<[u8; 32]> = OnceLock::new();
    let key = KEY.get_or_init(signing::random::<32>);
    Signer::new([key]).expect("one key")
}

/// Whether `digest` starts with `bits` zero bits.
fn leading_zero_bits(digest: &[u8], bits: u32) -> bool {
    let mut left = bits;
    for byte in digest {
        if left == 0 {
            return true;
        }
        let take = left.min(8);
        if byte.leading_zeros() < take {
            return false;
        }
        left -= take;
    }
    left == 0
}

/// The JavaScript of the page: finds the answer with WebCrypto and posts it.
const SCRIPT: &str = r#"(async()=>{const f=document.getElementById('f'),c=f.challenge.value,d=+f.dataset.bits,e=new TextEncoder();
for(let n=0;;n++){const h=new Uint8Array(await crypto.subtle.digest('SHA-256',e.encode(c+':'+n)));let z=0;
for(const b of h){if(b===0){z+=8;continue}z+=Math.clz32(b)-24;break}
if(z>=d){f.answer.value=String(n);f.submit();return}
if(n%2000===0){document.getElementById('p').textContent='Checking your browser… '+n}}})();"#;

impl Challenger {
    /// A challenger sealing with `signer` (the session keys), or a key of the process.
    pub fn new(signer: Option<&Signer>) -> Self {
        Self {
            signer: signer.cloned().unwrap_or_else(process_signer),
        }
    }

    /// A challenge for `ip` at `now` (seconds).
    pub fn issue(&self, ip: IpAddr, now: u64) -> String {
        let nonce = signing::encode(&signing::random::<12>());
        let payload = format!("{}:{ip}:{nonce}", now + CHALLENGE_TTL);
        self.signer.seal(Purpose::Challenge, payload.as_bytes())
    }

    /// Whether `answer` solves `challenge`, issued to `ip` and not expired at `now`.
    pub fn solved(&self, challenge: &str, answer: &str, ip: IpAddr, now: u64) -> bool {
        let Some(payload) = self.signer.open(Purpose::Challenge, challenge) else {
            return false;
        };
        let text = String::from_utf8_lossy(&payload);
        let mut parts = text.splitn(3, ':');
        let fresh = parts
            .next()
            .and_then(|expires| expires.parse::<u64>().ok())
            .is_some_and(|expires| expires > now);
        let own = parts.next() == Some(ip.to_string().as_str());
        let digest = Sha256::digest(format!("{challenge}:{answer}").as_bytes());
        fresh
            && own
            && answer.len() <= 20
            && answer.bytes().all(|b| b.is_ascii_digit())
            && leading_zero_bits(&digest, DIFFICULTY)
    }

    /// The `Set-Cookie` of a pass for `ip` from `now`.
    pub fn pass_cookie(&self, ip: IpAddr, now: u64) -> String {
        let pass = self
            .signer
            .seal(Purpose::Pass, format!("{}:{ip}", now + PASS_TTL).as_bytes());
        format!("{PASS_COOKIE}={pass}; Path=/; Max-Age={PASS_TTL}; Secure; HttpOnly; SameSite=Lax")
    }

    /// Whether the request carries a pass for `ip`, valid at `now`.
    pub fn has_pass(&self, headers: &HeaderMap, ip: IpAddr, now: u64) -> bool {
        let Some(payload) = access::cookie(headers, PASS_COOKIE)
            .and_then(|value| self.signer.open(Purpose::Pass, value))
        else {
            return false;
        };
        let text = String::from_utf8_lossy(&payload);
        text.split_once(':').is_some_and(|(expires, owner)| {
            expires.parse::<u64>().is_ok_and(|expires| expires > now) && owner == ip.to_string()
        })
    }

    /// The challenge page for a browser at `ip` that asked for `target`.
    pub fn page(&self, ip: IpAddr, now: u64, target: &str, limit: &str) -> Verdict {
        let challenge = self.issue(ip, now);
        let html = format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
             <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
             <meta name=\"robots\" content=\"noindex\"><title>One moment…</title>\
             <style>body{{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto;\
             padding:0 1rem;color:#222}}</style></head><body><h1>One moment…</h1>\
             <p id=\"p\">Checking your browser. This takes a second or two.</p>\
             <form id=\"f\" method=\"post\" action=\"{CHALLENGE_PATH}\" data-bits=\"{DIFFICULTY}\">\
             <input type=\"hidden\" name=\"challenge\" value=\"{challenge}\">\
             <input type=\"hidden\" name=\"answer\" value=\"\">\
             <input type=\"hidden\" name=\"rd\" value=\"{rd}\">\
             <noscript>This check needs JavaScript.</noscript></form>\
             <script>{SCRIPT}</script></body></html>\n",
            challenge = escape(&challenge),
            rd = escape(login::safe_return_path(target)),
        );
        Verdict::Respond(
            Response {
                status: StatusCode::TOO_MANY_REQUESTS,
                headers: Vec::new(),
                body: Body::Bytes {
                    content_type: HeaderValue::from_static(crate::error_page::HTML),
                    bytes: Bytes::from(html),
                },
                close: false,
            },
            Reason::owned("challenge", format!("{limit}: over the limit, challenged")),
        )
    }

    /// The answer to a posted solution from `ip`.
    pub fn submit(&self, body: &[u8], ip: IpAddr, now: u64) -> Verdict {
        let mut challenge = String::new();
        let mut answer = String::new();
        let mut return_to = String::from("/");
        for (name, value) in form_urlencoded::parse(body) {
            match &*name {
                "challenge" => challenge = value.into_owned(),
                "answer" => answer = value.into_owned(),
                "rd" => return_to = login::safe_return_path(&value).to_owned(),
                _ => {}
            }
        }
        if !self.solved(&challenge, &answer, ip, now) {
            return Verdict::Respond(
                Response::error(StatusCode::FORBIDDEN),
                Reason::new("challenge-failed", "wrong, expired or foreign challenge"),
            );
        }
        let cookie = HeaderValue::try_from(self.pass_cookie(ip, now))
            .unwrap_or(HeaderValue::from_static(""));
        let location = HeaderValue::try_from(return_to).unwrap_or(HeaderValue::from_static("/"));
        Verdict::Respond(
            Response {
                status: StatusCode::SEE_OTHER,
                headers: vec![(header::LOCATION, location), (header::SET_COOKIE, cookie)],
                body: Body::Bytes {
                    content_type: HeaderValue::from_static("text/plain"),
                    bytes: Bytes::new(),
                },
                close: false,
            },
            Reason::new("challenge-solved", "proof of work accepted"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn solve(challenge: &str) -> String {
        (0u64..)
            .map(|n| n.to_string())
            .find(|n| {
                leading_zero_bits(
                    &Sha256::digest(format!("{challenge}:{n}").as_bytes()),
                    DIFFICULTY,
                )
            })
            .unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn zero_bits_are_counted_across_bytes() {
        assert!(leading_zero_bits(&[0, 0, 0xff], 16));
        assert!(leading_zero_bits(&[0, 0x0f], 12));
        assert!(!leading_zero_bits(&[0, 0x1f], 12));
        assert!(!leading_zero_bits(&[1, 0], 8));
    }

    #[test]
    fn a_solved_challenge_earns_a_pass_for_that_address_only() {
        let challenger = Challenger::new(None);
        let challenge = challenger.issue(ip("192.0.2.1"), NOW);
        let answer = solve(&challenge);
        assert!(challenger.solved(&challenge, &answer, ip("192.0.2.1"), NOW + 10));
        assert!(!challenger.solved(&challenge, &answer, ip("192.0.2.2"), NOW + 10));
        assert!(!challenger.solved(&challenge, &answer, ip("192.0.2.1"), NOW + CHALLENGE_TTL));
        let wrong = (answer.parse::<u64>().unwrap() + 1).to_string();
        // A neighbour of the answer is (almost surely) not one.
        if !leading_zero_bits(
            &Sha256::digest(format!("{challenge}:{wrong}").as_bytes()),
            DIFFICULTY,
        ) {
            assert!(!challenger.solved(&challenge, &wrong, ip("192.0.2.1"), NOW));
        }
        let form = format!("challenge={challenge}&answer={answer}&rd=%2Fweb%2F");
        let Verdict::Respond(response, reason) =
            challenger.submit(form.as_bytes(), ip("192.0.2.1"), NOW)
        else {
            panic!();
        };
        assert_eq!(reason.rule, "challenge-solved");
        assert_eq!(response.headers[0].1, "/web/");
        let cookie = response.headers[1].1.to_str().unwrap();
        let value = cookie.split(';').next().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_str(value).unwrap());
        assert!(challenger.has_pass(&headers, ip("192.0.2.1"), NOW + 60));
        assert!(!challenger.has_pass(&headers, ip("192.0.2.9"), NOW + 60));
        assert!(!challenger.has_pass(&headers, ip("192.0.2.1"), NOW + PASS_TTL));
    }

    #[test]
    fn forged_challenges_and_open_redirects_are_refused() {
        let challenger = Challenger::new(None);
        assert!(!challenger.solved("forged.challenge", "1", ip("192.0.2.1"), NOW));
        let challenge = challenger.issue(ip("192.0.2.1"), NOW);
        let answer = solve(&challenge);
        let form = format!("challenge={challenge}&answer={answer}&rd=%2F%2Fevil.example");
        let Verdict::Respond(response, _) =
            challenger.submit(form.as_bytes(), ip("192.0.2.1"), NOW)
        else {
            panic!();
        };
        assert_eq!(response.headers[0].1, "/");
    }

    #[test]
    fn the_page_carries_a_challenge_and_no_external_asset() {
        let challenger = Challenger::new(None);
        let Verdict::Respond(response, reason) =
            challenger.page(ip("192.0.2.1"), NOW, "/web/", "soft")
        else {
            panic!();
        };
        assert_eq!(response.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reason.rule, "challenge");
        let Body::Bytes { bytes, .. } = response.body else {
            panic!();
        };
        let html = String::from_utf8(bytes.to_vec()).unwrap();
        assert!(html.contains("name=\"challenge\"") && html.contains("crypto.subtle.digest"));
        assert!(!html.contains("http://") && !html.contains("https://"));
    }
}
