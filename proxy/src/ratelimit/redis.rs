//! Counters and bans in Redis, shared by every edge replica: the same steps as
//! [`super::gcra`], run atomically by a Lua script on the server (one round trip), over a
//! [`RedisLink`] (250 ms per call; the caller falls back to the replica's memory on an
//! error, and says so in the logs and metrics, so the edge never fails open silently).
//!
//! Two more uses of the same server: [`RedisStore::bans`] lists the bans held under a
//! rule's key prefix (a bounded `SCAN`, for the admin `/bans` list), and a stream of bans
//! ([`RedisStore::publish_ban`], [`RedisStore::read_bans`]) shares honeypot bans between
//! replicas ([`crate::bots`]).

use std::{
    future::Future,
    time::{Duration, Instant},
};

use redis::{RedisResult, Script, Value};

use super::gcra::{Op, Outcome, Params};
use crate::redis_link::{CALL_TIMEOUT, RedisLink};

/// Keys one `SCAN` call examines.
const SCAN_COUNT: usize = 1_000;
/// Most `SCAN` calls one listing makes: about this many thousand keys are examined at most.
const LIST_SCANS: usize = 100;
/// Most bans one listing returns.
pub const LIST_MAX: usize = 10_000;
/// Longest one listing may take, all its calls together (each is also bounded by
/// [`CALL_TIMEOUT`]).
const LIST_DEADLINE: Duration = Duration::from_secs(2);

/// A ban as Redis holds it: the key (without the rule's prefix), start and end in
/// milliseconds since the epoch.
pub type HeldBan = (String, u64, u64);

/// The bans found under a prefix.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BanList {
    /// The bans in force, sorted by key.
    pub bans: Vec<HeldBan>,
    /// Whether every key under the prefix was examined (false: a bound was reached first).
    pub complete: bool,
}

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
    /// The URL it was made from (never logged: it may hold a password).
    url: String,
    link: RedisLink,
    script: Script,
}

impl RedisStore {
    /// A store for the server at `url` (`redis://[user:password@]host:port[/db]`); nothing
    /// connects until the first request.
    pub fn new(url: &str) -> redis::RedisResult<Self> {
        Ok(Self {
            url: url.to_owned(),
            link: RedisLink::new(url)?,
            script: Script::new(STEP),
        })
    }

    /// Whether both stores speak to the same server (the same URL).
    pub fn same_server(&self, other: &Self) -> bool {
        self.url == other.url
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

impl RedisStore {
    /// The bans in force at `now` under the keys that start with `prefix` (a rule's keys in
    /// [`Self::step`]'s layout). Bounded: at most [`LIST_SCANS`] `SCAN` calls, [`LIST_MAX`]
    /// bans and [`LIST_DEADLINE`]; [`BanList::complete`] says whether a bound cut it short.
    pub async fn bans(&self, prefix: &str, now: u64) -> Result<BanList, String> {
        let mut connection = self.link.connection().await?;
        let deadline = Instant::now() + LIST_DEADLINE;
        let pattern = format!("{}*", glob_escape(prefix));
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut cursor = 0u64;
        let mut complete = false;
        for _ in 0..LIST_SCANS {
            if Instant::now() >= deadline {
                break;
            }
            let (next, found): (u64, Vec<Vec<u8>>) = within(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT)
                    .query_async(&mut connection),
            )
            .await?;
            keys.extend(found);
            cursor = next;
            if cursor == 0 {
                complete = true;
                break;
            }
        }
        // SCAN may return a key twice.
        keys.sort_unstable();
        keys.dedup();
        let mut bans = Vec::new();
        for chunk in keys.chunks(SCAN_COUNT) {
            if Instant::now() >= deadline {
                complete = false;
                break;
            }
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.cmd("HMGET").arg(key).arg("bs").arg("be");
            }
            let rows: Vec<(Option<u64>, Option<u64>)> =
                within(pipe.query_async(&mut connection)).await?;
            bans.extend(live_bans(prefix, chunk, &rows, now));
            if bans.len() > LIST_MAX {
                complete = false;
                bans.truncate(LIST_MAX);
                break;
            }
        }
        bans.sort_unstable();
        Ok(BanList { bans, complete })
    }

    /// Appends a ban of `key` from `start` to `end` to the stream `stream`, which keeps
    /// about the last `max_len` bans and disappears `ttl` after the last one.
    pub async fn publish_ban(
        &self,
        stream: &str,
        key: &str,
        start: u64,
        end: u64,
        max_len: usize,
        ttl: Duration,
    ) -> Result<(), String> {
        let mut connection = self.link.connection().await?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XADD")
            .arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(max_len)
            .arg("*")
            .arg("key")
            .arg(key)
            .arg("start")
            .arg(start)
            .arg("end")
            .arg(end)
            .ignore()
            .cmd("PEXPIRE")
            .arg(stream)
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
            .ignore();
        within(pipe.query_async::<()>(&mut connection)).await
    }

    /// Up to `count` bans appended to `stream` after the entry `after` (`"0"`: from the
    /// first): the id of the last entry read (`None`: nothing new) and the bans.
    pub async fn read_bans(
        &self,
        stream: &str,
        after: &str,
        count: usize,
    ) -> Result<(Option<String>, Vec<HeldBan>), String> {
        let mut connection = self.link.connection().await?;
        let answer: Value = within(
            redis::cmd("XREAD")
                .arg("COUNT")
                .arg(count)
                .arg("STREAMS")
                .arg(stream)
                .arg(after)
                .query_async(&mut connection),
        )
        .await?;
        stream_bans(answer)
    }
}

/// Runs one call with the [`CALL_TIMEOUT`] bound.
async fn within<T>(call: impl Future<Output = RedisResult<T>>) -> Result<T, String> {
    tokio::time::timeout(CALL_TIMEOUT, call)
        .await
        .map_err(|_| "no answer in time".to_owned())?
        .map_err(|e| e.to_string())
}

/// `text` with the characters special to Redis glob patterns escaped.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// The bans in force at `now` among `keys` and their `(bs, be)` fields.
fn live_bans(
    prefix: &str,
    keys: &[Vec<u8>],
    rows: &[(Option<u64>, Option<u64>)],
    now: u64,
) -> Vec<HeldBan> {
    keys.iter()
        .zip(rows)
        .filter_map(|(key, row)| match *row {
            (Some(start), Some(end)) if end > now => Some((
                String::from_utf8_lossy(key.strip_prefix(prefix.as_bytes())?).into_owned(),
                start,
                end,
            )),
            _ => None,
        })
        .collect()
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The entries of an `XREAD` answer for one stream (RESP2 arrays or a RESP3 map): the last
/// id and the bans (`key`, `start`, `end` fields; malformed entries are skipped).
fn stream_bans(answer: Value) -> Result<(Option<String>, Vec<HeldBan>), String> {
    let entries = match answer {
        Value::Nil => return Ok((None, Vec::new())),
        Value::Array(streams) => match streams.into_iter().next() {
            Some(Value::Array(mut pair)) if pair.len() == 2 => pair.pop(),
            None => return Ok((None, Vec::new())),
            Some(_) => None,
        },
        Value::Map(streams) => streams.into_iter().next().map(|(_, entries)| entries),
        _ => None,
    };
    let Some(Value::Array(entries)) = entries else {
        return Err("unexpected XREAD answer".to_owned());
    };
    let mut last = None;
    let mut bans = Vec::new();
    for entry in entries {
        let Value::Array(parts) = entry else {
            continue;
        };
        let [id, Value::Array(fields)] = parts.as_slice() else {
            continue;
        };
        last = text(id).or(last);
        let (mut key, mut start, mut end) = (None, None, None);
        for pair in fields.chunks(2) {
            let [name, value] = pair else { continue };
            match text(name).as_deref() {
                Some("key") => key = text(value),
                Some("start") => start = text(value).and_then(|v| v.parse().ok()),
                Some("end") => end = text(value).and_then(|v| v.parse().ok()),
                _ => {}
            }
        }
        if let (Some(key), Some(start), Some(end)) = (key, start, end) {
            bans.push((key, start, end));
        }
    }
    Ok((last, bans))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[&str]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(fields.iter().map(|f| bulk(f)).collect()),
        ])
    }

    #[test]
    fn glob_characters_in_a_prefix_match_only_themselves() {
        assert_eq!(
            glob_escape("portcullis:rl:media.example.org:login:"),
            "portcullis:rl:media.example.org:login:"
        );
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn only_bans_in_force_are_listed_without_the_prefix() {
        let prefix = "portcullis:rl:h:login:";
        let keys = [
            b"portcullis:rl:h:login:192.0.2.1".to_vec(),
            b"portcullis:rl:h:login:192.0.2.2".to_vec(),
            b"portcullis:rl:h:login:192.0.2.3".to_vec(),
            b"portcullis:rl:h:login:192.0.2.4".to_vec(),
        ];
        let rows = [
            (Some(1_000), Some(5_000)),
            (Some(0), Some(0)),
            (Some(1_000), Some(2_000)),
            (None, None),
        ];
        assert_eq!(
            live_bans(prefix, &keys, &rows, 3_000),
            [("192.0.2.1".to_owned(), 1_000, 5_000)]
        );
    }

    #[test]
    fn stream_entries_become_bans_and_the_last_id_is_kept() {
        let entries = Value::Array(vec![
            entry("1-0", &["key", "192.0.2.1", "start", "1000", "end", "5000"]),
            entry("2-0", &["key", "192.0.2.2"]),
            entry("3-0", &["start", "1", "end", "2", "key", "2001:db8::1"]),
        ]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("s"), entries.clone()])]);
        let expected = (
            Some("3-0".to_owned()),
            vec![
                ("192.0.2.1".to_owned(), 1_000, 5_000),
                ("2001:db8::1".to_owned(), 1, 2),
            ],
        );
        assert_eq!(stream_bans(resp2).unwrap(), expected);
        let resp3 = Value::Map(vec![(bulk("s"), entries)]);
        assert_eq!(stream_bans(resp3).unwrap(), expected);
        assert_eq!(stream_bans(Value::Nil).unwrap(), (None, Vec::new()));
        assert!(stream_bans(Value::Int(1)).is_err());
    }
}
