//! Sessions: the signed cookie a successful sign-in sets, checked on every request.
//!
//! The cookie holds the e-mail, when the session began (`issued`) and when it was last seen
//! in use (`seen`), sealed under the session keys ([`super::signing`]). It is refused when its
//! MAC fails, when it is older than the absolute lifetime, when it has been idle longer than
//! the idle lifetime, when it began before the policy's `revokedBefore`, or when its e-mail
//! is on the policy's revocation list. Because the check needs nothing but the keys and the
//! policy, every edge replica decides the same way, at once, after a policy change.
//!
//! The idle clock is moved forward by re-issuing the cookie with a new `seen`, at most once
//! per [`Session::refresh_every`], so a busy client does not get a new cookie per request.

use std::{collections::HashSet, time::Duration};

use super::signing::{Purpose, Signer};

/// What a valid session cookie says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    /// Who signed in.
    pub email: String,
    /// When the session began, in seconds since the epoch.
    pub issued: u64,
    /// When it was last seen in use, in seconds since the epoch.
    pub seen: u64,
}

impl Claims {
    fn payload(&self) -> String {
        format!("{}:{}:{}", self.issued, self.seen, self.email)
    }

    fn parse(payload: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut parts = text.splitn(3, ':');
        let issued = parts.next()?.parse().ok()?;
        let seen = parts.next()?.parse().ok()?;
        let email = parts.next()?.to_owned();
        Some(Self {
            email,
            issued,
            seen,
        })
    }
}

/// Why a session cookie was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Tampered, signed with an unknown key, or not a session cookie at all.
    Invalid,
    /// Older than the absolute lifetime.
    Expired,
    /// Unused for longer than the idle lifetime.
    Idle,
    /// Revoked by the policy (`revokedBefore` or the e-mail's revocation).
    Revoked,
}

impl Refusal {
    /// A stable name for logs and metrics.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Invalid => "session-invalid",
            Self::Expired => "session-expired",
            Self::Idle => "session-idle",
            Self::Revoked => "session-revoked",
        }
    }
}

/// A session that was accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Its claims.
    pub claims: Claims,
    /// A re-issued cookie value to send back, when the idle clock needs moving.
    pub refreshed: Option<String>,
}

/// The compiled session settings of an access policy.
#[derive(Clone, Debug)]
pub struct Session {
    /// The cookie's name.
    pub cookie_name: String,
    /// The cookie's `Domain`, when set.
    pub cookie_domain: Option<String>,
    ttl: u64,
    idle_ttl: u64,
    revoked_before: u64,
    revoked_emails: HashSet<String>,
}

impl Session {
    /// Session settings: lifetimes, cookie, revocations (e-mails compared case-insensitively).
    pub fn new(
        cookie_name: String,
        cookie_domain: Option<String>,
        ttl: Duration,
        idle_ttl: Duration,
        revoked_before: u64,
        revoked_emails: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            cookie_name,
            cookie_domain,
            ttl: ttl.as_secs(),
            idle_ttl: idle_ttl.as_secs(),
            revoked_before,
            revoked_emails: revoked_emails
                .into_iter()
                .map(|email| email.to_ascii_lowercase())
                .collect(),
        }
    }

    /// How long the idle clock may lag before the cookie is re-issued.
    pub fn refresh_every(&self) -> u64 {
        (self.idle_ttl / 4).clamp(1, 300)
    }

    /// A new session for `email`, beginning `now`: the cookie value.
    pub fn issue(&self, signer: &Signer, email: &str, now: u64) -> String {
        let claims = Claims {
            email: email.to_owned(),
            issued: now,
            seen: now,
        };
        signer.seal(Purpose::Session, claims.payload().as_bytes())
    }

    /// Checks a cookie value at `now`.
    pub fn check(&self, signer: &Signer, cookie: &str, now: u64) -> Result<Accepted, Refusal> {
        let payload = signer
            .open(Purpose::Session, cookie)
            .ok_or(Refusal::Invalid)?;
        let claims = Claims::parse(&payload).ok_or(Refusal::Invalid)?;
        if claims.issued > now.saturating_add(60) || claims.seen < claims.issued {
            return Err(Refusal::Invalid);
        }
        if self.revokes(&claims.email, claims.issued) {
            return Err(Refusal::Revoked);
        }
        if now.saturating_sub(claims.issued) >= self.ttl {
            return Err(Refusal::Expired);
        }
        let idle = now.saturating_sub(claims.seen);
        if idle >= self.idle_ttl {
            return Err(Refusal::Idle);
        }
        let refreshed = (idle >= self.refresh_every()).then(|| {
            let moved = Claims {
                seen: now,
                ..claims.clone()
            };
            signer.seal(Purpose::Session, moved.payload().as_bytes())
        });
        Ok(Accepted { claims, refreshed })
    }

    /// Whether the policy revokes what `email` was granted at `issued` (seconds since the
    /// epoch): issued before `revokedBefore`, or the e-mail is revoked.
    pub fn revokes(&self, email: &str, issued: u64) -> bool {
        issued < self.revoked_before || self.revoked_emails.contains(&email.to_ascii_lowercase())
    }

    /// The `Set-Cookie` value carrying `value`, for a session that began at `issued`.
    pub fn set_cookie(&self, value: &str, issued: u64, now: u64) -> String {
        let max_age = self.ttl.saturating_sub(now.saturating_sub(issued));
        let mut cookie = format!(
            "{}={value}; Path=/; Max-Age={max_age}; Secure; HttpOnly; SameSite=Lax",
            self.cookie_name
        );
        if let Some(domain) = &self.cookie_domain {
            cookie.push_str("; Domain=");
            cookie.push_str(domain);
        }
        cookie
    }

    /// The `Set-Cookie` value that removes the session cookie (logout).
    pub fn clear_cookie(&self) -> String {
        let mut cookie = format!(
            "{}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Lax",
            self.cookie_name
        );
        if let Some(domain) = &self.cookie_domain {
            cookie.push_str("; Domain=");
            cookie.push_str(domain);
        }
        cookie
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: u64 = 3600;
    const T0: u64 = 1_800_000_000;

    fn signer() -> Signer {
        Signer::new([b"0123456789abcdef0123456789abcdef"]).unwrap()
    }

    fn session(revoked_before: u64, revoked: &[&str]) -> Session {
        Session::new(
            "portcullis_session".into(),
            None,
            Duration::from_secs(24 * HOUR),
            Duration::from_secs(2 * HOUR),
            revoked_before,
            revoked.iter().map(|e| (*e).to_owned()),
        )
    }

    #[test]
    fn a_fresh_session_is_accepted_with_its_email() {
        let s = session(0, &[]);
        let cookie = s.issue(&signer(), "alice@example.org", T0);
        let accepted = s.check(&signer(), &cookie, T0 + 5).unwrap();
        assert_eq!(accepted.claims.email, "alice@example.org");
        assert_eq!(accepted.refreshed, None);
    }

    #[test]
    fn an_idle_session_expires_and_an_active_one_is_refreshed() {
        let s = session(0, &[]);
        let cookie = s.issue(&signer(), "alice@example.org", T0);
        assert_eq!(
            s.check(&signer(), &cookie, T0 + 2 * HOUR),
            Err(Refusal::Idle)
        );
        let accepted = s.check(&signer(), &cookie, T0 + HOUR).unwrap();
        let refreshed = accepted.refreshed.unwrap();
        // The refreshed cookie keeps the session alive past the first idle deadline...
        let later = s.check(&signer(), &refreshed, T0 + 2 * HOUR + 60).unwrap();
        assert_eq!(later.claims.issued, T0);
        // ...but never past the absolute lifetime.
        let mut value = refreshed;
        let mut now = T0 + HOUR;
        while now < T0 + 24 * HOUR - HOUR {
            now += HOUR;
            value = s
                .check(&signer(), &value, now)
                .unwrap()
                .refreshed
                .unwrap_or(value);
        }
        assert_eq!(
            s.check(&signer(), &value, T0 + 24 * HOUR),
            Err(Refusal::Expired)
        );
    }

    #[test]
    fn tampered_or_foreign_cookies_are_invalid() {
        let s = session(0, &[]);
        let cookie = s.issue(&signer(), "alice@example.org", T0);
        let mut tampered = cookie.clone().into_bytes();
        tampered[3] = if tampered[3] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(s.check(&signer(), &tampered, T0), Err(Refusal::Invalid));
        let other = Signer::new([b"another key, 32 bytes long......"]).unwrap();
        assert_eq!(s.check(&other, &cookie, T0), Err(Refusal::Invalid));
        assert_eq!(s.check(&signer(), "garbage", T0), Err(Refusal::Invalid));
        // Signed for another purpose: refused.
        let pending = signer().seal(Purpose::Pending, format!("{T0}:{T0}:a@b.c").as_bytes());
        assert_eq!(s.check(&signer(), &pending, T0), Err(Refusal::Invalid));
    }

    #[test]
    fn sessions_from_the_future_are_invalid() {
        let s = session(0, &[]);
        let cookie = s.issue(&signer(), "alice@example.org", T0 + HOUR);
        assert_eq!(s.check(&signer(), &cookie, T0), Err(Refusal::Invalid));
    }

    #[test]
    fn revocation_by_time_and_by_email() {
        let cookie = session(0, &[]).issue(&signer(), "Alice@Example.org", T0);
        assert_eq!(
            session(T0 + 1, &[]).check(&signer(), &cookie, T0 + 2),
            Err(Refusal::Revoked)
        );
        assert!(session(T0, &[]).check(&signer(), &cookie, T0 + 2).is_ok());
        assert_eq!(
            session(0, &["alice@example.org"]).check(&signer(), &cookie, T0 + 2),
            Err(Refusal::Revoked)
        );
    }

    #[test]
    fn cookies_are_secure_http_only_and_lax() {
        let s = session(0, &[]);
        let set = s.set_cookie("v", T0, T0 + HOUR);
        assert_eq!(
            set,
            "portcullis_session=v; Path=/; Max-Age=82800; Secure; HttpOnly; SameSite=Lax"
        );
        assert!(s.clear_cookie().contains("Max-Age=0"));
    }
}
