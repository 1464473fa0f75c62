//! Counters and bans in the replica's memory: a sharded map of [`State`]s with a fixed
//! capacity, so a flood of distinct keys (one request each from a botnet, or forged
//! headers) costs bounded memory. When a shard is full, idle states are dropped first, then
//! an arbitrary one: the flood can only make the limiter forget, never grow.

use std::{
    collections::HashMap,
    hash::{BuildHasher, RandomState},
    sync::{Mutex, PoisonError},
};

use super::gcra::{self, Op, Outcome, Params, State};

const SHARDS: usize = 64;

/// Most keys remembered by one replica, over all rules.
pub const CAPACITY: usize = 200_000;

/// A rule's name and a key.
type RuleKey = (Box<str>, Box<str>);

/// One shard of the map.
type Shard = Mutex<HashMap<RuleKey, State>>;

/// One replica's limiter state; kept across policy reloads (rules are found by name).
#[derive(Debug)]
pub struct MemoryStore {
    shards: Vec<Shard>,
    hasher: RandomState,
    per_shard: usize,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl MemoryStore {
    /// A store remembering about `capacity` keys.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: RandomState::new(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    /// Runs one step of the limiter for `key` under rule `rule`.
    pub fn step(
        &self,
        rule: &str,
        key: &str,
        params: &Params,
        op: Op,
        now: u64,
        lifted_before: u64,
    ) -> Outcome {
        let id = (Box::from(rule), Box::from(key));
        let shard = &self.shards[self.hasher.hash_one(&id) as usize % SHARDS];
        let mut map = shard.lock().unwrap_or_else(PoisonError::into_inner);
        let state = map.get(&id).copied().unwrap_or_default();
        let (outcome, next) = gcra::step(state, params, op, now, lifted_before);
        if next.is_idle(now) {
            map.remove(&id);
        } else {
            if map.len() >= self.per_shard && !map.contains_key(&id) {
                map.retain(|_, state| !state.is_idle(now));
                if map.len() >= self.per_shard
                    && let Some(victim) = map.keys().next().cloned()
                {
                    map.remove(&victim);
                }
            }
            map.insert(id, next);
        }
        outcome
    }

    /// Keys remembered now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bans in force at `now`: rule, key, start, end.
    pub fn bans(&self, now: u64) -> Vec<(String, String, u64, u64)> {
        let mut bans = Vec::new();
        for shard in &self.shards {
            let map = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for ((rule, key), state) in map.iter() {
                if state.ban_end > now {
                    bans.push((
                        rule.to_string(),
                        key.to_string(),
                        state.ban_start,
                        state.ban_end,
                    ));
                }
            }
        }
        bans.sort();
        bans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_800_000_000_000;

    #[test]
    fn rules_and_keys_are_counted_apart() {
        let store = MemoryStore::default();
        let params = Params::new(1, 60_000, 0, None);
        assert_eq!(
            store.step("a", "k", &params, Op::Take, T0, 0),
            Outcome::Allowed
        );
        assert!(matches!(
            store.step("a", "k", &params, Op::Take, T0, 0),
            Outcome::Limited { .. }
        ));
        assert_eq!(
            store.step("b", "k", &params, Op::Take, T0, 0),
            Outcome::Allowed
        );
        assert_eq!(
            store.step("a", "other", &params, Op::Take, T0, 0),
            Outcome::Allowed
        );
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_within_capacity() {
        let store = MemoryStore::with_capacity(1_000);
        let params = Params::new(5, 60_000, 0, None);
        for i in 0..100_000u32 {
            store.step("login", &i.to_string(), &params, Op::Take, T0, 0);
        }
        assert!(store.len() <= 1_000 + SHARDS, "{}", store.len());
    }

    #[test]
    fn bans_are_listed() {
        let store = MemoryStore::default();
        let params = Params::new(1, 60_000, 0, Some((1, 600_000)));
        store.step("login", "192.0.2.1", &params, Op::Take, T0, 0);
        store.step("login", "192.0.2.1", &params, Op::Take, T0, 0);
        assert_eq!(
            store.bans(T0),
            [("login".into(), "192.0.2.1".into(), T0, T0 + 600_000)]
        );
        assert!(store.bans(T0 + 600_000).is_empty());
    }
}
