//! Counters and bans in Redis, shared by every edge replica: the same steps as
//! [`super::gcra`], run atomically by a Lua script on the server (one round trip).
//!
//! A store that cannot reach Redis (not started yet, killed, too slow) answers an error at
//! once; the caller then decides with the replica's own memory and says so in the logs and
//! metrics, so the edge never fails open silently. Reconnecting is attempted at most once a
//! second; each call is bounded by [`CALL_TIMEOUT`].

use std::{
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use redis::{
    Client, Script,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use super::gcra::{Op, Outcome, Params};

/// Longest wait for one answer from Redis before the replica decides alone.
pub const CALL_TIMEOUT: Duration = Duration::from_millis(250);
/// Wait between two attempts to connect.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

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

/// A Redis server shared by the replicas.
pub struct RedisStore {
    client: Client,
    script: Script,
    connection: tokio::sync::Mutex<Option<ConnectionManager>>,
    next_attempt: Mutex<Instant>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field(
                "server",
                &self.client.get_connection_info().addr().to_string(),
            )
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for the server at `url` (`redis://[user:password@]host:port[/db]`); nothing
    /// connects until the first request.
    pub fn new(url: &str) -> redis::RedisResult<Self> {
        Ok(Self {
            client: Client::open(url)?,
            script: Script::new(STEP),
            connection: tokio::sync::Mutex::new(None),
            next_attempt: Mutex::new(Instant::now()),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, String> {
        let mut slot = self.connection.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        {
            let mut next = self
                .next_attempt
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if Instant::now() < *next {
                return Err("not connected (retrying)".to_owned());
            }
            *next = Instant::now() + RECONNECT_EVERY;
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1);
        let connection = tokio::time::timeout(
            CALL_TIMEOUT * 2,
            ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| "connecting timed out".to_owned())?
        .map_err(|e| e.to_string())?;
        *slot = Some(connection.clone());
        Ok(connection)
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
        let mut connection = self.connection().await?;
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
        let answer: Vec<u64> =
            tokio::time::timeout(CALL_TIMEOUT, invocation.invoke_async(&mut connection))
                .await
                .map_err(|_| "no answer in time".to_owned())?
                .map_err(|e| e.to_string())?;
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
