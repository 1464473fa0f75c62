//! Request phases replayed whole. The rules of a phase do the same thing whenever a
//! transaction starts the phase in the same state, and that state follows from the request:
//! from its line, headers and connection for phase 1, and from those and its body for
//! phase 2. Those, written one after the other, are the phase's key (see
//! [`PhaseKey`]). What a phase did (see [`Outcome`]: the `TX` keys it set or deleted and
//! the `ctl`s it ran, in order, the matches it logged, the decision and `allow` it left)
//! is kept on the thread under its key the second time the key comes, and a later
//! transaction of the thread with the same key applies it instead of walking the phase's
//! rules: a client repeats requests (the library page it lists again, a search it types
//! again, the poster another screen shows), a scanner repeats its probes, and a repeated
//! request then costs a lookup. Its verdict and log are those of the walk.
//!
//! A phase that set anything but `TX` (`IP`, `GLOBAL`, `ENV`) is not kept. No phase is
//! kept for an engine with a request rule that reads `UNIQUE_ID` (a key with it would
//! never come back), or whose rules' first links read what the rule before matched (the
//! matched variables a phase leaves are not kept; see
//! [`crate::fold::first_links_read_earlier_matches`]).
//!
//! A thread keeps at most [`GENERATION_BYTES`] of keys and outcomes in each of two
//! generations: kept outcomes go to the young one; when it is full it becomes the old one
//! (the old one is dropped), and an outcome found in the old one moves back to the young:
//! what is in use stays, what is not goes within two generations. The hashes of the keys
//! seen once are kept the same way, [`SEEN_PER_GENERATION`] per generation.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use crate::actions::AllowScope;
use crate::engine::{Decision, Match, RequestFacts};
use crate::replay::{self, Change};
use crate::rule::RuleSet;
use crate::variables::Var;

/// The longest key kept: a phase of a request longer than this (a large body) is walked.
pub(crate) const LONGEST_KEY: usize = 16 * 1024;

/// The most bytes of keys and outcomes one generation holds per thread (an edge runs a
/// thread per core; a benign phase of a Jellyfin client's request takes about a
/// kilobyte, so a generation holds about a thousand).
pub(crate) const GENERATION_BYTES: usize = 1 << 20;

/// Whether an engine's phases can be kept (see the module's documentation), and what
/// their keys hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct KeyPlan {
    /// Some rule reads `REMOTE_PORT`: the client's port is written into the key.
    pub(crate) remote_port: bool,
}

impl KeyPlan {
    /// The plan for `rules`, of which the walk evaluates those `evaluated` says (per rule
    /// index; see [`crate::walk::Walk::evaluated_rules`]), or `None` when no phase of
    /// theirs is kept. The rules of the request phases count: CRS's sampling rule reads
    /// `UNIQUE_ID`, past a jump its settings take.
    pub(crate) fn of(rules: &RuleSet, evaluated: &[bool]) -> Option<KeyPlan> {
        let reads = |var: Var| {
            let request_rules = (rules.rules.iter().zip(evaluated))
                .filter(|(rule, evaluated)| **evaluated && rule.phase <= 2);
            request_rules.map(|(rule, _)| rule).any(|rule| {
                rule.links
                    .iter()
                    .flat_map(|l| &l.targets)
                    .any(|t| t.var == var)
                    || rule
                        .macros()
                        .flat_map(|m| m.references())
                        .any(|(v, _)| v == var)
            })
        };
        if reads(Var::UniqueId) || crate::fold::first_links_read_earlier_matches(rules) {
            return None;
        }
        Some(KeyPlan {
            remote_port: reads(Var::RemotePort),
        })
    }
}

/// The key of a transaction's next phase: the request's line, headers and connection, then
/// its body once phase 2 is to run. Each value is written as its length and its bytes, so no
/// two requests share a key.
#[derive(Debug, Default)]
pub(crate) struct PhaseKey {
    bytes: Vec<u8>,
    /// The hash of the key's first bytes, and how many: phase 2's key is phase 1's with
    /// the body after it, whose hash goes on from phase 1's.
    hashed: (usize, u64),
}

impl PhaseKey {
    /// Empties the key for another request, keeping its buffer.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.hashed = (0, 0);
    }

    /// The hash of the key, made from the hash of what was hashed before and the bytes
    /// written since. Phase 1's key is hashed whole, then phase 2's goes on from it:
    /// where phase 1's key ends follows from its bytes, so two equal keys of phase 2
    /// have equal hashes.
    pub(crate) fn hash(&mut self) -> u64 {
        let (len, before) = self.hashed;
        if len < self.bytes.len() {
            let added = replay::hash(&self.bytes[len..]);
            let hash = (before ^ added)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(29);
            self.hashed = (self.bytes.len(), hash);
        }
        self.hashed.1
    }

    /// Writes one value: its length, then its bytes; nothing once the key is too long.
    pub(crate) fn write(&mut self, value: &[u8]) {
        if self.bytes.len() <= LONGEST_KEY {
            let len = u32::try_from(value.len()).unwrap_or(u32::MAX);
            self.bytes.extend_from_slice(&len.to_le_bytes());
            self.bytes.extend_from_slice(value);
        }
    }

    /// The key, `None` when it is too long to keep.
    pub(crate) fn bytes(&self) -> Option<&[u8]> {
        (self.bytes.len() <= LONGEST_KEY).then_some(&self.bytes[..])
    }
}

/// Writes the key of phase 1 of a request into `key`: the request's line, headers and
/// connection, which all a transaction's data start from (see the module's
/// documentation).
pub(crate) fn write_request_key(plan: KeyPlan, facts: &RequestFacts, key: &mut PhaseKey) {
    key.write(facts.method.as_bytes());
    key.write(facts.uri.as_bytes());
    key.write(facts.protocol.as_bytes());
    key.write(
        &u32::try_from(facts.headers.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    for (name, value) in &facts.headers {
        key.write(name.as_bytes());
        key.write(value);
    }
    match facts.client_addr {
        IpAddr::V4(a) => key.write(&a.octets()),
        IpAddr::V6(a) => key.write(&a.octets()),
    }
    key.write(&facts.server_port.to_le_bytes());
    if plan.remote_port {
        key.write(&facts.client_port.to_le_bytes());
    }
}

/// What a phase did from a key.
#[derive(Debug)]
struct Kept {
    phase: u8,
    key: Vec<u8>,
    outcome: Outcome,
}

/// What a phase did: what a replay applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// The `TX` keys it set or deleted and the `ctl`s it ran, in order.
    pub(crate) changes: Vec<Change>,
    /// The matches it logged.
    pub(crate) matches: Vec<Match>,
    /// The transaction's decision after it.
    pub(crate) decision: Decision,
    /// The transaction's `allow` after it.
    pub(crate) allow: Option<AllowScope>,
}

impl Kept {
    /// The bytes it holds, roughly.
    fn size(&self) -> usize {
        let logged = |m: &Match| {
            m.msg.len()
                + m.data.len()
                + m.variable.len()
                + m.tags.iter().map(|t| t.len() + 24).sum::<usize>()
                + std::mem::size_of::<Match>()
        };
        self.key.len()
            + self.outcome.changes.iter().map(Change::size).sum::<usize>()
            + self.outcome.matches.iter().map(logged).sum::<usize>()
            + 64
    }
}

/// The phases a thread kept, for one engine.
#[derive(Debug, Default)]
struct Memory {
    engine: u64,
    young: HashMap<u64, Kept, Hasher>,
    young_bytes: usize,
    old: HashMap<u64, Kept, Hasher>,
    /// The hashes of keys looked up once: a phase is kept the second time its key comes,
    /// so the many requests that never come back (new ids, positions) keep nothing.
    young_seen: HashSet<u64, Hasher>,
    old_seen: HashSet<u64, Hasher>,
    /// How many phases were replayed (for the tests).
    #[cfg(test)]
    replayed: u64,
}

/// The hasher of the memory's tables (their keys are hashes already).
type Hasher = foldhash::fast::RandomState;

/// How many hashes of keys seen once a generation holds.
pub(crate) const SEEN_PER_GENERATION: usize = 1 << 14;

thread_local! {
    static MEMORY: RefCell<Memory> = RefCell::new(Memory::default());
}

impl Memory {
    /// Makes this the memory of engine `engine`, forgetting what another kept.
    fn prepare(&mut self, engine: u64) {
        if self.engine != engine {
            *self = Memory {
                engine,
                ..Memory::default()
            };
        }
    }

    /// Puts `kept` in the young generation, which becomes the old one when full.
    fn put(&mut self, hash: u64, kept: Kept) {
        let size = kept.size();
        if self.young_bytes + size > GENERATION_BYTES {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
        }
        self.young_bytes += size;
        if let Some(replaced) = self.young.insert(hash, kept) {
            self.young_bytes = self.young_bytes.saturating_sub(replaced.size());
        }
    }

    /// Counts a phase replayed, for the tests.
    fn count_replay(&mut self) {
        #[cfg(test)]
        {
            self.replayed += 1;
        }
    }

    /// Notes a key's hash seen; whether it was seen before.
    fn seen(&mut self, hash: u64) -> bool {
        if self.young_seen.contains(&hash) || self.old_seen.remove(&hash) {
            return true;
        }
        if self.young_seen.len() >= SEEN_PER_GENERATION {
            self.old_seen = std::mem::take(&mut self.young_seen);
        }
        self.young_seen.insert(hash);
        false
    }
}

/// What the thread has of a phase's key (see [`look_up`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// What the phase did was kept, and applied.
    Replayed,
    /// The key came once before: the phase, walked, is to be kept (see [`keep`]) under
    /// this hash of the key.
    Again(u64),
    /// The key is new.
    New,
}

/// Looks up what the thread kept of phase `phase` of engine `engine` from `key` (whose
/// [`PhaseKey::hash`] is `key_hash`), and runs `apply` on its changes when it kept
/// something.
pub(crate) fn look_up(
    engine: u64,
    phase: u8,
    (key, key_hash): (&[u8], u64),
    apply: impl FnOnce(&Outcome),
) -> Lookup {
    let hash = key_hash.wrapping_add(u64::from(phase));
    let same = |k: &Kept| k.phase == phase && k.key == key;
    MEMORY.with(|m| {
        let mut m = m.borrow_mut();
        m.prepare(engine);
        if let Some(kept) = m.young.get(&hash).filter(|k| same(k)) {
            apply(&kept.outcome);
            m.count_replay();
            return Lookup::Replayed;
        }
        match m.old.remove(&hash) {
            Some(kept) if same(&kept) => {
                apply(&kept.outcome);
                m.put(hash, kept);
                m.count_replay();
                return Lookup::Replayed;
            }
            Some(other) => {
                m.old.insert(hash, other);
            }
            None => {}
        }
        if m.seen(hash) {
            Lookup::Again(hash)
        } else {
            Lookup::New
        }
    })
}

/// Keeps what phase `phase` of engine `engine` did from `key`, whose hash [`look_up`]
/// gave.
pub(crate) fn keep(engine: u64, phase: u8, key: &[u8], hash: u64, mut outcome: Outcome) {
    outcome.changes = replay::last_changes(outcome.changes);
    let kept = Kept {
        phase,
        key: key.to_vec(),
        outcome,
    };
    MEMORY.with(|m| {
        let mut m = m.borrow_mut();
        m.prepare(engine);
        m.put(hash, kept);
    });
}

/// How many phases of engine `engine` the thread replayed.
#[cfg(test)]
pub(crate) fn replayed(engine: u64) -> u64 {
    MEMORY.with(|m| {
        let m = m.borrow();
        if m.engine == engine { m.replayed } else { 0 }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str) -> Change {
        Change::Set {
            key: key.to_string(),
            value: b"1".to_vec(),
            built: false,
        }
    }

    /// Looks `key` up and keeps `changes` for it when it comes again; what was replayed.
    fn run(engine: u64, key: &[u8], changes: &[Change]) -> Option<Vec<Change>> {
        let mut replayed = None;
        match look_up(engine, 1, (key, replay::hash(key)), |o| {
            replayed = Some(o.changes.clone());
        }) {
            Lookup::Again(hash) => {
                let outcome = Outcome {
                    changes: changes.to_vec(),
                    matches: Vec::new(),
                    decision: Decision::Allow,
                    allow: None,
                };
                keep(engine, 1, key, hash, outcome);
            }
            Lookup::Replayed | Lookup::New => {}
        }
        replayed
    }

    #[test]
    fn a_phase_is_kept_the_second_time_and_found_by_its_whole_key_for_its_engine() {
        let x = vec![set("x")];
        assert_eq!(run(7001, b"GET /a", &x), None);
        assert_eq!(run(7001, b"GET /a", &x), None);
        assert_eq!(run(7001, b"GET /a", &[]), Some(x.clone()));
        assert_eq!(run(7001, b"GET /b", &[]), None);
        // Another engine's phases are forgotten.
        assert_eq!(run(7002, b"GET /a", &[]), None);
        assert_eq!(run(7001, b"GET /a", &[]), None);
    }

    #[test]
    fn what_is_in_use_outlives_a_generation_and_the_rest_goes() {
        let engine = 7003;
        let key = |n: usize| format!("GET /{n:06}").into_bytes();
        let long = vec![set(&"k".repeat(64))];
        for _ in 0..2 {
            run(engine, &key(0), &[set("first")]);
            run(engine, &key(1), &[set("second")]);
        }
        // Enough outcomes to fill more than two generations; the first is used all along.
        let per_generation = GENERATION_BYTES / 200;
        for n in 2..3 * per_generation {
            run(engine, &key(n), &long);
            run(engine, &key(n), &long);
            if n % 1000 == 0 {
                assert!(run(engine, &key(0), &[]).is_some(), "{n}");
            }
        }
        assert_eq!(run(engine, &key(0), &[]), Some(vec![set("first")]));
        assert_eq!(run(engine, &key(1), &[]), None);
    }

    #[test]
    fn a_keys_hash_goes_on_from_the_hash_of_its_first_part() {
        // Phase 1's key, hashed, then the body: twice the same, and another body.
        let key = |body: &[u8]| {
            let mut key = PhaseKey::default();
            key.write(b"POST");
            key.write(b"/");
            let first = key.hash();
            key.write(body);
            (first, key.hash())
        };
        let (first, whole) = key(b"{}");
        assert_eq!(key(b"{}"), (first, whole));
        assert_ne!(whole, first);
        assert_ne!(key(b"[]").1, whole);
        // Cleared, the key starts again.
        let mut again = PhaseKey::default();
        again.write(b"GET");
        again.hash();
        again.clear();
        again.write(b"POST");
        again.write(b"/");
        assert_eq!(again.hash(), first);
    }

    #[test]
    fn a_key_too_long_is_not_one() {
        let mut key = PhaseKey::default();
        key.write(b"GET / HTTP/1.1");
        assert!(key.bytes().is_some());
        key.write(&vec![b'a'; LONGEST_KEY]);
        assert!(key.bytes().is_none());
        key.write(b"more");
        assert!(key.bytes().is_none());
    }
}
