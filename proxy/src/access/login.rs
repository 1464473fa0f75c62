//! The sign-in flow's moving parts: one-time codes, the pending sign-in cookie, CSRF tokens,
//! the return URL, and the little state a replica keeps (attempts, cooldowns).
//!
//! Between the e-mail form and the code form the browser holds a *pending* cookie, sealed
//! under the session keys: the e-mail, a random nonce, the expiry, the return path and a
//! commitment to the code, `HMAC(key, nonce, e-mail, code)`. The code itself is never
//! stored. For an address that may not sign in the commitment is random, so no code can
//! match, and the browser sees exactly what it would have seen for an allowed address.
//! Wrong codes are counted per nonce and a used nonce is spent ([`attempt_step`]), in the
//! replica's memory ([`LoginState`]) or in a Redis every replica shares
//! ([`super::attempts`]); both entries live until the code expires.

use std::{collections::HashMap, sync::Mutex};

use super::signing::{self, Purpose, Signer};

/// The nonce of one pending sign-in.
pub type Nonce = [u8; 16];

/// A pending sign-in, as the pending cookie carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    /// The nonce.
    pub nonce: Nonce,
    /// When the code expires, in seconds since the epoch.
    pub expires: u64,
    /// The commitment to the code.
    pub commitment: [u8; signing::MAC_LEN],
    /// Where to go after signing in.
    pub return_to: String,
    /// The address typed in.
    pub email: String,
}

impl Pending {
    /// Seals the pending sign-in into a cookie value.
    pub fn seal(&self, signer: &Signer) -> String {
        let payload = format!(
            "{}:{}:{}:{}:{}",
            signing::encode(&self.nonce),
            self.expires,
            signing::encode(&self.commitment),
            signing::encode(self.return_to.as_bytes()),
            self.email
        );
        signer.seal(Purpose::Pending, payload.as_bytes())
    }

    /// Opens a pending cookie value, if its MAC holds.
    pub fn open(signer: &Signer, sealed: &str) -> Option<Self> {
        let payload = signer.open(Purpose::Pending, sealed)?;
        let text = String::from_utf8(payload).ok()?;
        let mut parts = text.splitn(5, ':');
        let nonce = signing::decode(parts.next()?)?.try_into().ok()?;
        let expires = parts.next()?.parse().ok()?;
        let commitment = signing::decode(parts.next()?)?.try_into().ok()?;
        let return_to = String::from_utf8(signing::decode(parts.next()?)?).ok()?;
        let email = parts.next()?.to_owned();
        Some(Self {
            nonce,
            expires,
            commitment,
            return_to,
            email,
        })
    }
}

/// The commitment to `code` for a sign-in.
pub fn commit(signer: &Signer, nonce: &Nonce, email: &str, code: &str) -> [u8; signing::MAC_LEN] {
    signer.sign(Purpose::Code, &[nonce, email.as_bytes(), code.as_bytes()])
}

/// Whether `code` matches the pending sign-in's commitment (constant time).
pub fn code_matches(signer: &Signer, pending: &Pending, code: &str) -> bool {
    signer.verify(
        Purpose::Code,
        &[&pending.nonce, pending.email.as_bytes(), code.as_bytes()],
        &pending.commitment,
    )
}

/// A random numeric code of `digits` digits, uniformly drawn.
pub fn new_code(digits: u32) -> String {
    let mut code = String::with_capacity(digits as usize);
    while code.len() < digits as usize {
        for byte in signing::random::<32>() {
            // 250 is the largest multiple of 10 below 256: rejecting above it keeps digits uniform.
            if byte < 250 && code.len() < digits as usize {
                code.push(char::from(b'0' + byte % 10));
            }
        }
    }
    code
}

/// The CSRF token of the forms, for the browser's CSRF cookie value.
pub fn csrf_token(signer: &Signer, cookie: &str) -> String {
    signing::encode(&signer.sign(Purpose::Csrf, &[cookie.as_bytes()]))
}

/// Whether a form's CSRF token belongs to the browser's CSRF cookie.
pub fn csrf_matches(signer: &Signer, cookie: &str, token: &str) -> bool {
    signing::decode(token)
        .is_some_and(|tag| signer.verify(Purpose::Csrf, &[cookie.as_bytes()], &tag))
}

/// The return path after signing in: `target` when it is a local path on this host, `/`
/// otherwise (no open redirect: no scheme, no `//host`, no `/\host`, no control characters).
pub fn safe_return_path(target: &str) -> &str {
    let bytes = target.as_bytes();
    let local = bytes.first() == Some(&b'/')
        && !matches!(bytes.get(1), Some(b'/' | b'\\'))
        && bytes.len() <= 2048
        && bytes.iter().all(|b| b.is_ascii_graphic())
        && !target.starts_with("/.portcullis/");
    if local { target } else { "/" }
}

/// A normalised e-mail address (trimmed, lower case), if it looks like one.
pub fn normalise_email(input: &str) -> Option<String> {
    let email = input.trim().to_ascii_lowercase();
    let (local, domain) = email.rsplit_once('@')?;
    let ok = !local.is_empty()
        && local.len() <= 64
        && domain.len() <= 253
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && email.bytes().all(|b| {
            b.is_ascii_graphic() && !matches!(b, b'<' | b'>' | b'"' | b',' | b':' | b';' | b'\\')
        });
    ok.then_some(email)
}

/// What a replica remembers of one pending sign-in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Attempts {
    wrong: u32,
    used: bool,
    until: u64,
}

/// The last code asked for by one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// When it was asked for.
    pub at: u64,
    /// Its pending sign-in (re-issued during the cooldown, so the mailed code still works).
    pub pending: Pending,
}

/// What one try of a code did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// The code was right: the sign-in is spent now.
    SignedIn,
    /// The code was wrong; this many tries are left (0: the attempt is over).
    Wrong {
        /// Tries left.
        left: u32,
    },
    /// The sign-in already succeeded once (a replay, or two submissions racing).
    Used,
    /// The cap of wrong codes was already reached.
    Exhausted,
}

/// The attempt rule on what is remembered of one pending sign-in (wrong codes so far,
/// spent or not) and whether the code just typed is right: the new memory and the outcome.
/// The Redis store runs the same rule in Lua ([`super::attempts`]).
pub const fn attempt_step(
    wrong: u32,
    used: bool,
    correct: bool,
    max_wrong: u32,
) -> (u32, bool, Attempt) {
    if used {
        (wrong, used, Attempt::Used)
    } else if wrong >= max_wrong {
        (wrong, used, Attempt::Exhausted)
    } else if correct {
        (wrong, true, Attempt::SignedIn)
    } else {
        let wrong = wrong + 1;
        (
            wrong,
            false,
            Attempt::Wrong {
                left: max_wrong - wrong,
            },
        )
    }
}

/// Most entries per map; past it, expired entries are dropped and new sign-ins refused.
const CAPACITY: usize = 100_000;

/// The state of the sign-in flow a replica keeps across policy reloads.
#[derive(Debug, Default)]
pub struct LoginState {
    attempts: Mutex<HashMap<Nonce, Attempts>>,
    sent: Mutex<HashMap<String, Sent>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LoginState {
    /// The code asked for by `email` less than `cooldown` seconds ago, if any.
    pub fn recent(&self, email: &str, cooldown: u64, now: u64) -> Option<Pending> {
        lock(&self.sent)
            .get(email)
            .filter(|sent| now < sent.at.saturating_add(cooldown) && now < sent.pending.expires)
            .map(|sent| sent.pending.clone())
    }

    /// Records a new pending sign-in for `email`; `false` when the replica is full.
    pub fn record(&self, email: &str, pending: &Pending, now: u64) -> bool {
        let mut sent = lock(&self.sent);
        if sent.len() >= CAPACITY {
            sent.retain(|_, s| s.pending.expires > now);
            if sent.len() >= CAPACITY {
                return false;
            }
        }
        sent.insert(
            email.to_owned(),
            Sent {
                at: now,
                pending: pending.clone(),
            },
        );
        true
    }

    /// Tries a code for `pending` in this replica's memory: [`attempt_step`] on what the
    /// replica remembers of it.
    pub fn attempt(&self, pending: &Pending, correct: bool, max_wrong: u32, now: u64) -> Attempt {
        let mut attempts = lock(&self.attempts);
        if attempts.len() >= CAPACITY {
            attempts.retain(|_, a| a.until > now);
        }
        let entry = attempts.entry(pending.nonce).or_insert(Attempts {
            wrong: 0,
            used: false,
            until: pending.expires,
        });
        let (wrong, used, outcome) = attempt_step(entry.wrong, entry.used, correct, max_wrong);
        entry.wrong = wrong;
        entry.used = used;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new([b"0123456789abcdef0123456789abcdef"]).unwrap()
    }

    fn pending(code: &str) -> Pending {
        let nonce = signing::random::<16>();
        Pending {
            nonce,
            expires: 2000,
            commitment: commit(&signer(), &nonce, "alice@example.org", code),
            return_to: "/web/#/home".into(),
            email: "alice@example.org".into(),
        }
    }

    #[test]
    fn a_pending_sign_in_round_trips_and_refuses_tampering() {
        let p = pending("123456");
        let sealed = p.seal(&signer());
        assert_eq!(Pending::open(&signer(), &sealed), Some(p));
        assert_eq!(Pending::open(&signer(), &sealed.replace('.', "x.")), None);
    }

    #[test]
    fn only_the_committed_code_matches() {
        let p = pending("123456");
        assert!(code_matches(&signer(), &p, "123456"));
        assert!(!code_matches(&signer(), &p, "123457"));
        assert!(!code_matches(&signer(), &p, ""));
        // The same code for another address does not match.
        let mut other = p.clone();
        other.email = "mallory@example.org".into();
        assert!(!code_matches(&signer(), &other, "123456"));
    }

    #[test]
    fn codes_have_the_asked_length_and_only_digits() {
        for digits in [4, 6, 8, 10] {
            let code = new_code(digits);
            assert_eq!(code.len(), digits as usize);
            assert!(code.bytes().all(|b| b.is_ascii_digit()));
        }
        assert_ne!(new_code(10), new_code(10));
    }

    #[test]
    fn csrf_tokens_are_bound_to_their_cookie() {
        let token = csrf_token(&signer(), "cookie-a");
        assert!(csrf_matches(&signer(), "cookie-a", &token));
        assert!(!csrf_matches(&signer(), "cookie-b", &token));
        assert!(!csrf_matches(&signer(), "cookie-a", "forged"));
    }

    #[test]
    fn only_local_paths_are_returned_to() {
        assert_eq!(
            safe_return_path("/web/index.html#!/home"),
            "/web/index.html#!/home"
        );
        assert_eq!(safe_return_path("/Items?x=1"), "/Items?x=1");
        for evil in [
            "//evil.example/",
            "/\\evil.example",
            "https://evil.example/",
            "evil.example",
            "/\t/evil.example",
            "",
            "/.portcullis/logout",
            "javascript:alert(1)",
        ] {
            assert_eq!(safe_return_path(evil), "/", "{evil:?}");
        }
    }

    #[test]
    fn email_addresses_are_normalised_or_refused() {
        assert_eq!(
            normalise_email("  Alice@Example.ORG "),
            Some("alice@example.org".into())
        );
        for bad in [
            "alice",
            "@example.org",
            "alice@localhost",
            "a@b.c>",
            "a b@c.d",
            "a@.b",
        ] {
            assert_eq!(normalise_email(bad), None, "{bad}");
        }
    }

    #[test]
    fn wrong_codes_are_capped_and_a_used_sign_in_is_spent() {
        let state = LoginState::default();
        let p = pending("123456");
        assert_eq!(
            state.attempt(&p, false, 3, 1000),
            Attempt::Wrong { left: 2 }
        );
        assert_eq!(
            state.attempt(&p, false, 3, 1000),
            Attempt::Wrong { left: 1 }
        );
        assert_eq!(
            state.attempt(&p, false, 3, 1000),
            Attempt::Wrong { left: 0 }
        );
        // Past the cap even the right code is refused.
        assert_eq!(state.attempt(&p, true, 3, 1000), Attempt::Exhausted);
        let q = pending("654321");
        assert_eq!(
            state.attempt(&q, false, 3, 1000),
            Attempt::Wrong { left: 2 }
        );
        assert_eq!(state.attempt(&q, true, 3, 1000), Attempt::SignedIn);
        assert_eq!(state.attempt(&q, true, 3, 1000), Attempt::Used);
        assert_eq!(state.attempt(&q, false, 3, 1000), Attempt::Used);
    }

    #[test]
    fn the_attempt_rule_spends_once_and_counts_only_wrong_codes() {
        assert_eq!(
            attempt_step(0, false, true, 3),
            (0, true, Attempt::SignedIn)
        );
        assert_eq!(
            attempt_step(2, false, false, 3),
            (3, false, Attempt::Wrong { left: 0 })
        );
        assert_eq!(
            attempt_step(3, false, true, 3),
            (3, false, Attempt::Exhausted)
        );
        assert_eq!(attempt_step(1, true, true, 3), (1, true, Attempt::Used));
    }

    #[test]
    fn a_recent_code_is_reused_during_the_cooldown_only() {
        let state = LoginState::default();
        let p = pending("123456");
        assert!(state.record("alice@example.org", &p, 1000));
        assert_eq!(state.recent("alice@example.org", 60, 1030), Some(p));
        assert_eq!(state.recent("alice@example.org", 60, 1060), None);
        assert_eq!(state.recent("bob@example.org", 60, 1030), None);
    }
}
