//! One-time-code attempts shared by every edge replica: the wrong-code count and the spent
//! mark of each pending sign-in live in Redis, so the attempt cap holds across replicas (not
//! once per replica) and a code works once on all of them.
//!
//! One Lua script runs [`super::login::attempt_step`] atomically on the server (one round
//! trip) and lets the entry expire with the code. The link is the rate limiter's kind
//! ([`RedisLink`], 250 ms per call); when Redis cannot answer, the proxy decides with the
//! replica's memory ([`super::login::LoginState`]) and says so in its logs and metrics.

use redis::Script;

use super::login::{Attempt, Pending};
use crate::redis_link::RedisLink;

/// [`super::login::attempt_step`] in Lua. KEYS[1]: the sign-in's hash. ARGV: correct (1 or
/// 0), max_wrong, time to live in milliseconds. Returns `{0, 0}` signed in, `{1, left}`
/// wrong, `{2, 0}` used, `{3, 0}` exhausted.
const TRY: &str = r"
local s = redis.call('HMGET', KEYS[1], 'w', 'u')
local wrong = tonumber(s[1]) or 0
local max_wrong = tonumber(ARGV[2])
local ttl = ARGV[3]
if s[2] == '1' then
  return {2, 0}
end
if wrong >= max_wrong then
  return {3, 0}
end
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'u', '1')
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {0, 0}
end
wrong = wrong + 1
redis.call('HSET', KEYS[1], 'w', wrong)
redis.call('PEXPIRE', KEYS[1], ttl)
return {1, max_wrong - wrong}
";

/// The attempts of one edge's sign-ins in a Redis the replicas share.
#[derive(Debug)]
pub struct SharedAttempts {
    link: RedisLink,
    script: Script,
    prefix: String,
}

impl SharedAttempts {
    /// Attempts of the edge of `host` in the Redis at `url`; nothing connects until the
    /// first code is tried.
    pub fn new(url: &str, host: &str) -> redis::RedisResult<Self> {
        Ok(Self {
            link: RedisLink::new(url)?,
            script: Script::new(TRY),
            prefix: format!("portcullis:otp:{host}:"),
        })
    }

    /// The Redis key of a pending sign-in.
    fn key(&self, pending: &Pending) -> String {
        let mut key = self.prefix.clone();
        for byte in pending.nonce {
            key.push_str(&format!("{byte:02x}"));
        }
        key
    }

    /// Tries a code for `pending` at `now` (seconds): the outcome, or why Redis could not
    /// give it.
    pub async fn attempt(
        &self,
        pending: &Pending,
        correct: bool,
        max_wrong: u32,
        now: u64,
    ) -> Result<Attempt, String> {
        // Kept while the code lives, and a second more (the clocks of replicas differ a little).
        let ttl_ms = pending.expires.saturating_sub(now).saturating_add(1) * 1000;
        let mut invocation = self.script.key(self.key(pending));
        invocation.arg(u8::from(correct)).arg(max_wrong).arg(ttl_ms);
        let answer: Vec<u32> = self.link.invoke(&invocation).await?;
        match answer.as_slice() {
            [0, ..] => Ok(Attempt::SignedIn),
            [1, left, ..] => Ok(Attempt::Wrong { left: *left }),
            [2, ..] => Ok(Attempt::Used),
            [3, ..] => Ok(Attempt::Exhausted),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }
}
