//! Counters and bans in Redis, shared by every edge replica: the same steps as
//! [`super::gcra`], run atomically by a Lua script on the server (one round trip), over a
//! [`RedisLink`] (250 ms per call; the caller falls back to the replica's memory on an
//! error).

use redis::Script;

use super::gcra::{Op, Outcome, Params};
use crate::redis_link::RedisLink;

/// The GCRA step of [`super::gcra::step`], in Lua. KEYS[1]: the key's hash. ARGV: now,
/// interval, tolerance, ban_after (0: no bans), ban_duration, op, lifted_before. Returns
/// `{0}` allowed, `{1, retry_after}` limited, `{2, start, end}` banned, `{3, start, end}`
/// banned by this request.
const STEP: &str = r"
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tolerance = tonumber(ARGV[3])
local ban_after = tonumber(ARGV[4])
local ban_duration = tonumber(ARGV[5])
local op = ARGV[6]
local lifted = tonumber(ARGV[7])
local s = redis.call('HMGET', KEYS[1], 'tat', 'v', 'w', 'bs', 'be')
local tat = tonumber(s[1]) or 0
local v = tonumber(s[2]) or 0
local w = tonumber(s[3]) or 0
local bs = tonumber(s[4]) or 0
local be = tonumber(s[5]) or 0
local function save()
  local keep = math.max(tat, w, be) - now
  if keep <= 0 then
    redis.call('DEL', KEYS[1])
    return
  end
  redis.call('HSET', KEYS[1], 'tat', string.format('%d', tat), 'v', v,
    'w', string.format('%d', w), 'bs', string.format('%d', bs), 'be', string.format('%d', be))
  redis.call('PEXPIRE', KEYS[1], string.format('%d', keep + 1000))
end
if be > now then
  if bs < lifted then
    bs = 0
    be = 0
    v = 0
  else
    return {2, bs, be}
  end
end
local t = math.max(tat, now)
if op == 'count' then
  tat = t + interval
  save()
  return {0}
end
if t - now > tolerance then
  if w <= now then
    v = 0
    w = now + ban_duration
  end
  v = v + 1
  if ban_after > 0 and v >= ban_after then
    v = 0
    bs = now
    be = now + ban_duration
    save()
    return {3, bs, be}
  end
  save()
  return {1, t - tolerance - now}
end
if op == 'take' then
  tat = t + interval
end
save()
return {0}
";

/// The limiter's counters in a Redis server shared by the replicas.
#[derive(Debug)]
pub struct RedisStore {
    link: RedisLink,
    script: Script,
}

impl RedisStore {
    /// A store for the server at `url` (`redis://[user:password@]host:port[/db]`); nothing
    /// connects until the first request.
    pub fn new(url: &str) -> redis::RedisResult<Self> {
        Ok(Self {
            link: RedisLink::new(url)?,
            script: Script::new(STEP),
        })
    }

    /// Runs one step of the limiter for `key` (already namespaced) in Redis.
    pub async fn step(
        &self,
        key: &str,
        params: &Params,
        op: Op,
        now: u64,
        lifted_before: u64,
    ) -> Result<Outcome, String> {
        let op = match op {
            Op::Take => "take",
            Op::Peek => "peek",
            Op::Count => "count",
        };
        let mut invocation = self.script.key(key);
        invocation
            .arg(now)
            .arg(params.interval)
            .arg(params.tolerance)
            .arg(params.ban_after.unwrap_or(0))
            .arg(params.ban_duration)
            .arg(op)
            .arg(lifted_before);
        let answer: Vec<u64> = self.link.invoke(&invocation).await?;
        match answer.as_slice() {
            [0, ..] => Ok(Outcome::Allowed),
            [1, retry_after, ..] => Ok(Outcome::Limited {
                retry_after: *retry_after,
            }),
            [code @ (2 | 3), start, end, ..] => Ok(Outcome::Banned {
                start: *start,
                end: *end,
                new: *code == 3,
            }),
            other => Err(format!("unexpected answer {other:?}")),
        }
    }
}
