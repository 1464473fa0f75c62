//! The header sets a thread has met: a client sends the same method, protocol and headers
//! (cookies among them) on request after request, and what the rules make of them once is
//! what they make of them again. Each distinct set gets a number on the thread, the first
//! time it is met, and can keep the rows of what is known of its values (see
//! [`crate::transaction`]'s `Memo::learn_unknown`) for the next transaction that brings it.
//!
//! Knowledge of values is only ever of the kind "this link finds nothing in this value",
//! true for good, so rows kept from an earlier transaction are never wrong: they may only
//! know less than the thread knows now. A transaction that learns something of the set's
//! values forgets its rows, and the next one works them out afresh.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

/// The most sets a thread keeps for one engine; past it, it forgets them all and starts
/// again.
const CAPACITY: usize = 64;
/// The longest set kept (its encoded bytes): a request with more header bytes is not
/// numbered.
pub(crate) const LONGEST: usize = 4096;

/// The number of the next set a thread meets: numbers are never given twice in the
/// process, so that a number names one set on every thread (a transaction may move from
/// thread to thread between its phases, and its fingerprints with it).
static NEXT: AtomicU64 = AtomicU64::new(1);

/// A header set as a transaction holds it: where it is in the table of the thread that
/// numbered it, and its number (that table may have forgotten it since).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SetRef {
    index: u32,
    /// What fingerprints of rules that read only the set name it by.
    pub(crate) number: u64,
}

#[derive(Debug, Default)]
struct Entry {
    number: u64,
    /// The rows of what is known of the set's values; empty until kept.
    rows: Vec<u64>,
    /// Per rule index, a bit: the rule reads only the set, and neither matched nor acted
    /// when it was evaluated with it (see [`mark_idle`]).
    idle: Vec<u64>,
}

#[derive(Debug, Default)]
struct Sets {
    engine: u64,
    index: HashMap<Box<[u8]>, u32, foldhash::fast::RandomState>,
    entries: Vec<Entry>,
}

thread_local! {
    static SETS: std::cell::RefCell<Sets> = std::cell::RefCell::new(Sets::default());
}

/// Appends one value to a set's key: its length, then its bytes.
pub(crate) fn push(key: &mut Vec<u8>, value: &[u8]) {
    key.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
    key.extend_from_slice(value);
}

/// The set whose encoded bytes are `key` (see [`push`]), numbered when new; `None` for a
/// key longer than [`LONGEST`].
pub(crate) fn find(engine: u64, key: &[u8]) -> Option<SetRef> {
    if key.len() > LONGEST {
        return None;
    }
    SETS.with(|s| {
        let mut s = s.borrow_mut();
        if s.engine != engine {
            s.index.clear();
            s.entries.clear();
            s.engine = engine;
        }
        if let Some(&index) = s.index.get(key) {
            let number = s.entries[index as usize].number;
            return Some(SetRef { index, number });
        }
        if s.entries.len() >= CAPACITY {
            s.index.clear();
            s.entries.clear();
        }
        let number = NEXT.fetch_add(1, Ordering::Relaxed);
        let index = u32::try_from(s.entries.len()).ok()?;
        s.entries.push(Entry {
            number,
            ..Entry::default()
        });
        s.index.insert(key.into(), index);
        Some(SetRef { index, number })
    })
}

/// Runs `f` on the entry of `set` in this thread's table, if the table still holds it
/// (it may have forgotten it, or `set` may have been numbered on another thread).
fn with_entry<R>(set: SetRef, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
    SETS.with(|s| {
        let mut s = s.borrow_mut();
        s.entries
            .get_mut(set.index as usize)
            .filter(|e| e.number == set.number)
            .map(f)
    })
}

/// Calls `f` with the rows kept for `set`, if any; returns whether it did.
pub(crate) fn with_rows(set: SetRef, f: impl FnOnce(&[u64])) -> bool {
    with_entry(set, |e| {
        let kept = !e.rows.is_empty();
        if kept {
            f(&e.rows);
        }
        kept
    })
    .unwrap_or(false)
}

/// Keeps `rows` for `set` (nothing when the table has forgotten it).
pub(crate) fn keep_rows(set: SetRef, rows: &[u64]) {
    with_entry(set, |e| {
        e.rows.clear();
        e.rows.extend_from_slice(rows);
    });
}

/// Copies into `idle` the rules marked idle for `set` (see [`mark_idle`]); nothing when
/// the table has forgotten it.
pub(crate) fn idle(set: SetRef, idle: &mut Vec<u64>) {
    with_entry(set, |e| {
        idle.clear();
        idle.extend_from_slice(&e.idle);
    });
}

/// Marks rule `ri` idle for `set`: it reads only the set (its targets and arguments), and
/// an evaluation with it neither matched nor acted, so every evaluation with it does the
/// same, whatever else the request holds.
pub(crate) fn mark_idle(set: SetRef, ri: usize) {
    with_entry(set, |e| set_rule_bit(&mut e.idle, ri));
}

/// Sets rule `ri`'s bit in a set of rules, growing it as needed.
#[inline]
pub(crate) fn set_rule_bit(rules: &mut Vec<u64>, ri: usize) {
    if rules.len() <= ri / 64 {
        rules.resize(ri / 64 + 1, 0);
    }
    rules[ri / 64] |= 1 << (ri % 64);
}

/// Whether rule `ri`'s bit is set in a set of rules.
#[inline]
pub(crate) fn has_rule_bit(rules: &[u64], ri: usize) -> bool {
    rules
        .get(ri / 64)
        .is_some_and(|w| w & (1 << (ri % 64)) != 0)
}

/// Forgets the rows kept for `set`.
pub(crate) fn forget_rows(set: SetRef) {
    keep_rows(set, &[]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_set_keeps_its_number_and_rows_until_the_table_is_full_or_the_engine_changes() {
        let key = |n: usize| {
            let mut k = Vec::new();
            push(&mut k, format!("set {n}").as_bytes());
            k
        };
        let first = find(1, &key(0)).unwrap();
        assert_eq!(find(1, &key(0)), Some(first));
        assert!(!with_rows(first, |_| {}));
        keep_rows(first, &[7, 9]);
        let mut seen = Vec::new();
        assert!(with_rows(first, |r| seen.extend_from_slice(r)));
        assert_eq!(seen, [7, 9]);
        forget_rows(first);
        assert!(!with_rows(first, |_| {}));
        mark_idle(first, 70);
        let mut idle = Vec::new();
        super::idle(first, &mut idle);
        assert_eq!(idle, [0, 1 << 6]);
        keep_rows(first, &[1]);
        // A full table forgets every set: the old reference reads nothing, and the same
        // key gets a new number.
        let numbers: Vec<u64> = (1..=CAPACITY)
            .map(|n| find(1, &key(n)).unwrap().number)
            .collect();
        assert!(!with_rows(first, |_| {}));
        let again = find(1, &key(0)).unwrap();
        assert!(again.number > first.number && !numbers.contains(&again.number));
        // Another engine starts afresh; a key too long is not numbered.
        assert_ne!(find(2, &key(0)).map(|s| s.number), Some(again.number));
        assert_eq!(find(2, &vec![0; LONGEST + 1]), None);
    }
}
