//! What a thread's earlier transactions learned about request values: per value, the rule
//! conditions (links) known to find nothing in it.
//!
//! A link whose operator argument is a constant decides on a value from the value's bytes
//! alone: its transformations and its operator are fixed when the rules are compiled. So
//! when a value comes back (a client sends the same `User-Agent`, `Accept` and
//! authorization headers, and mostly the same argument names, on every request), every
//! link already known to find nothing in it is skipped, with its transformations,
//! prefilter scans and operator. Only that negative knowledge is kept: a link that matches
//! is evaluated again, since its match has effects (captures, `setvar`, the log).
//!
//! The knowledge is per thread (no locking on the request path) and per compiled engine (a
//! reload starts afresh); it keeps at most [`crate::WafSettings::remembered_values`] values
//! of at most [`LONGEST`] bytes, in two generations: a value found in the older one moves
//! to the newer, and when the newer is full the older is dropped.
//!
//! A value met for the first time is not a blank either: when all its bytes belong to one
//! of a few small [`ALPHABETS`] (a number, an item id in hex digits, a word, a path), the
//! links whose every match needs a byte outside that alphabet, after their
//! transformations, are known to find nothing in it before any of them runs (worked out
//! once per engine, see [`crate::rule::Link::can_find_over`]).

use std::cell::RefCell;
use std::collections::HashMap;

use crate::transforms::{ByteSet, set_of, within};

/// The longest value remembered, in bytes; longer values are evaluated every time.
pub const LONGEST: usize = 512;

/// The alphabets a new value is known by before any link has run, smaller ones first: a
/// value made of an alphabet's bytes (a number, an item id in hex digits, a word, a term,
/// a path, a URI without escapes, a compact JSON body) cannot meet the links whose every
/// match needs a byte outside it (see [`crate::rule::RuleSet::alphabet_rows`]). A value
/// takes the first alphabet holding all its bytes.
pub const ALPHABETS: [ByteSet; 10] = [
    set_of(b"0123456789"),
    set_of(b"0123456789abcdef"),
    set_of(b"0123456789abcdef-"),
    set_of(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"),
    set_of(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-.,"),
    set_of(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-., "),
    set_of(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-.,:/"),
    set_of(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-.,:/?=&"),
    set_of(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-.,:/?=& "),
    set_of(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-.,:{}[]\""),
];

/// The first of [`ALPHABETS`] holding every byte of `present`, if any.
pub fn alphabet(present: &ByteSet) -> Option<usize> {
    ALPHABETS
        .iter()
        .position(|alphabet| within(present, alphabet))
}

type Generation = HashMap<Box<[u8]>, Box<[u64]>, foldhash::fast::RandomState>;

/// The values one thread remembers for one engine.
#[derive(Default)]
struct Remembered {
    /// The engine the knowledge is about (see [`crate::engine::Compiled`]).
    engine: u64,
    newer: Generation,
    older: Generation,
}

thread_local! {
    static REMEMBERED: RefCell<Remembered> = RefCell::new(Remembered::default());
}

impl Remembered {
    /// Whether the knowledge is about `engine`, forgetting an older engine's. A transaction
    /// of an engine older than the one remembered (still running after a reload) neither
    /// reads nor writes.
    fn about(&mut self, engine: u64) -> bool {
        if engine > self.engine {
            self.engine = engine;
            self.newer.clear();
            self.older.clear();
        }
        engine == self.engine
    }

    /// Puts a value into the newer generation, first making it the older one when it holds
    /// half of `capacity` (so both together never hold more than `capacity`).
    fn insert(&mut self, capacity: usize, value: Box<[u8]>, known: Box<[u64]>) {
        if self.newer.len() >= capacity.div_ceil(2) {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(value, known);
    }
}

/// ORs what is known of `value` for `engine` into `bits` (`capacity` as in [`remember`]);
/// whether the value was remembered.
pub fn recall(engine: u64, capacity: usize, value: &[u8], bits: &mut [u64]) -> bool {
    REMEMBERED.with(|r| {
        let mut r = r.borrow_mut();
        if !r.about(engine) {
            return false;
        }
        let or_into = |bits: &mut [u64], known: &[u64]| {
            for (b, k) in bits.iter_mut().zip(known) {
                *b |= k;
            }
        };
        if let Some(known) = r.newer.get(value) {
            or_into(bits, known);
            true
        } else if let Some((value, known)) = r.older.remove_entry(value) {
            // Still in use: it moves to the newer generation.
            or_into(bits, &known);
            r.insert(capacity, value, known);
            true
        } else {
            false
        }
    })
}

/// Adds `bits` to what is known of `value` for `engine`, keeping at most `capacity` values.
pub fn remember(engine: u64, capacity: usize, value: &[u8], bits: &[u64]) {
    if capacity == 0 || value.len() > LONGEST {
        return;
    }
    REMEMBERED.with(|r| {
        let mut r = r.borrow_mut();
        if !r.about(engine) {
            return;
        }
        if let Some(known) = r.newer.get_mut(value) {
            for (k, b) in known.iter_mut().zip(bits) {
                *k |= b;
            }
            return;
        }
        let mut known: Box<[u64]> = bits.into();
        if let Some(older) = r.older.remove(value) {
            for (k, o) in known.iter_mut().zip(older.iter()) {
                *k |= o;
            }
        }
        r.insert(capacity, value.into(), known);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPACITY: usize = 4;

    fn known(engine: u64, value: &[u8]) -> u64 {
        let mut bits = [0u64];
        let remembered = recall(engine, CAPACITY, value, &mut bits);
        assert_eq!(remembered, bits[0] != 0);
        bits[0]
    }

    #[test]
    fn knowledge_accumulates_per_value() {
        remember(1_000, CAPACITY, b"Mozilla/5.0", &[0b0011]);
        remember(1_000, CAPACITY, b"Mozilla/5.0", &[0b0100]);
        remember(1_000, CAPACITY, b"curl/8.0", &[0b1000]);
        assert_eq!(known(1_000, b"Mozilla/5.0"), 0b0111);
        assert_eq!(known(1_000, b"curl/8.0"), 0b1000);
        assert_eq!(known(1_000, b"never seen"), 0);
    }

    #[test]
    fn a_newer_engine_forgets_the_older_ones_knowledge() {
        remember(2_000, CAPACITY, b"value", &[1]);
        remember(2_001, CAPACITY, b"other", &[1]);
        assert_eq!(known(2_001, b"value"), 0);
        // A transaction of the old engine, still running, neither reads nor writes.
        remember(2_000, CAPACITY, b"other", &[2]);
        assert_eq!(known(2_000, b"other"), 0);
        assert_eq!(known(2_001, b"other"), 1);
    }

    #[test]
    fn at_most_capacity_values_are_kept_and_recent_ones_survive() {
        let engine = 3_000;
        remember(engine, CAPACITY, b"kept", &[1]);
        for i in 0..100u32 {
            remember(engine, CAPACITY, &i.to_le_bytes(), &[1]);
            // Used on every round, so it moves to the newer generation each time.
            assert_eq!(known(engine, b"kept"), 1, "round {i}");
        }
        REMEMBERED.with(|r| {
            let r = r.borrow();
            assert!(r.newer.len() + r.older.len() <= CAPACITY);
        });
        assert_eq!(known(engine, &0u32.to_le_bytes()), 0);
    }

    #[test]
    fn long_values_and_a_zero_capacity_are_not_remembered() {
        let long = vec![b'a'; LONGEST + 1];
        remember(4_000, CAPACITY, &long, &[1]);
        remember(4_000, 0, b"short", &[1]);
        assert_eq!(known(4_000, &long), 0);
        assert_eq!(known(4_000, b"short"), 0);
    }
}
