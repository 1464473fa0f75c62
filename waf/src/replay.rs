//! Rule outcomes replayed: a rule evaluated on every request (it matches, or reads `TX`, so
//! what a thread remembers of values cannot pass over it) does the same thing whenever what
//! it reads is the same. For such a rule, the values it can read when it starts (its
//! targets' values, the `TX` keys and variables its macros and additions read) are written
//! one after the other into a fingerprint; the first evaluation records what it changed
//! (`TX` keys set or deleted, captures, `ctl`s run) and whether it matched, and a later
//! transaction of the thread with the same fingerprint applies those changes instead of
//! evaluating the rule. CRS's restricted-header rule (920450: a capture and a `setvar` per
//! header name, then a chain over the `TX` keys it built) and its score sums are such rules:
//! a client sends the same header names and, benign, the same scores on every request.
//!
//! What a rule does must depend on nothing but the fingerprint: rules that set variables
//! of other collections than `TX` (`IP`, `GLOBAL`, `ENV`), set environment variables, open
//! collections, add to a `TX` key named by a macro, or disrupt other than by scoring
//! (`deny`, `drop`, `allow`) are not replayed, nor is any rule when some first link reads
//! what the rule before it matched (the matched variables a replayed rule leaves are not
//! restored). An evaluation that logged a match is not kept (its log entry reads the
//! matched values). A removal of targets in force for the rule, which changes what it
//! reads, evaluates it as usual.
//!
//! A `TX` key a rule builds with a macro and no other rule can read (CRS's 920450 writes
//! one per header name, read only by its own chained link) is not kept with its outcome:
//! a replay, which does not evaluate the chain, leaves it unset (see
//! [`Inputs::private_writes`]).

use std::hash::BuildHasher;

use crate::actions::{Disruptive, Effect, SetOp};
use crate::fold::Folding;
use crate::macros::Macro;
use crate::rule::RuleSet;
use crate::transaction::VarMap;
use crate::variables::{KeyRegex, Selector, Target, Var};

/// What a replayable rule reads when it starts, in the order its fingerprint is written:
/// first what decides whether it matches, then what its actions read when it does.
#[derive(Debug, Default)]
pub(crate) struct Inputs {
    /// The targets of its links, each read whole.
    pub(crate) targets: Vec<Target>,
    /// What its operators' arguments read.
    pub(crate) matching: Reads,
    /// What its actions read, and not its arguments: the `TX` keys and variables of its
    /// `setvar`s' macros, the keys it adds to. An evaluation that ran no action read none
    /// of it (see [`Outcomes::keep`]).
    pub(crate) effects: Reads,
    /// Its targets and arguments read the request's header set only (see
    /// [`crate::header_sets`]): the set's number stands for them in the fingerprint (see
    /// [`write_header_set`]).
    pub(crate) header_set_only: bool,
    /// Its `setvar`s on `TX` keys built by macros that no other rule reads, but through
    /// the key regexes listed with each: a key none of them matches is not kept with its
    /// outcomes, since only the rule itself, when evaluated, reads it.
    pub(crate) private_writes: Vec<PrivateWrite>,
}

/// A `setvar` of a replayable rule on a `TX` key built by a macro that other rules read
/// only through key regexes, if at all (see [`Inputs::private_writes`]).
#[derive(Debug)]
pub(crate) struct PrivateWrite {
    /// Its link and action.
    pub(crate) at: (usize, usize),
    /// The other rules' key regexes that may match a key it builds: CRS's 920450 builds
    /// `header_name_920450_` and the header's name, which 921180's `/paramcounter_.*/`
    /// matches when a header is named so.
    pub(crate) readers: Vec<KeyRegex>,
}

impl PrivateWrite {
    /// Whether what it set under `key` is read by no other rule.
    pub(crate) fn is_private(&self, key: &str) -> bool {
        !self.readers.iter().any(|re| re.is_match(key))
    }
}

/// The variables part of a rule reads by name, besides its targets.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Reads {
    /// `TX` keys (lower case).
    pub(crate) tx_keys: Vec<String>,
    /// Other variables (but the matched variables, which the rule sets before reading,
    /// and `RULE`, which is its own).
    pub(crate) lookups: Vec<(Var, Option<String>)>,
}

impl Reads {
    /// Whether nothing is read.
    pub(crate) fn is_empty(&self) -> bool {
        self.tx_keys.is_empty() && self.lookups.is_empty()
    }

    /// Adds what macro `m` reads, but what `other` already reads.
    fn add_macro(&mut self, m: &Macro, other: &Reads) {
        for (var, key) in m.references() {
            match (var, key) {
                (Var::Tx, Some(k)) => self.add_key(k, other),
                (
                    Var::MatchedVar
                    | Var::MatchedVarName
                    | Var::MatchedVars
                    | Var::MatchedVarsNames
                    | Var::Rule,
                    _,
                ) => {}
                (v, k) => {
                    let read = (v, k.map(str::to_string));
                    if !self.lookups.contains(&read) && !other.lookups.contains(&read) {
                        self.lookups.push(read);
                    }
                }
            }
        }
    }

    /// Adds a `TX` key (as `TX` keys are stored: lower case) once, unless `other` reads it.
    fn add_key(&mut self, key: &str, other: &Reads) {
        let key = key.to_ascii_lowercase();
        if !self.tx_keys.contains(&key) && !other.tx_keys.contains(&key) {
            self.tx_keys.push(key);
        }
    }
}

/// Per rule index, what it reads when it is replayable (see the module's doc), planned
/// once the rule set, its decided arguments and `folding` are final.
pub(crate) fn plan(rules: &RuleSet, folding: &Folding) -> Vec<Option<Inputs>> {
    if crate::fold::first_links_read_earlier_matches(rules) {
        return rules.rules.iter().map(|_| None).collect();
    }
    let decided = |ri: usize| folding.starts.get(ri).is_some_and(Option::is_some);
    let reads: Vec<TxReads<'_>> = rules.rules.iter().map(TxReads::of).collect();
    (0..rules.rules.len())
        .map(|ri| {
            let empty = |t: &Target| empty_at_start(t, ri, &reads, &folding.tx);
            let mut inputs = inputs(&rules.rules[ri], decided(ri), empty)?;
            inputs.private_writes = private_writes(rules, &reads, ri);
            Some(inputs)
        })
        .collect()
}

/// Whether target `t` of rule `ri` holds nothing whenever the rule starts: a regex of
/// `TX` keys that matches no key the configuration sets (`base`), no literal key a rule
/// writes and no key another rule builds (`reads`). CRS's 920450 reads back the keys it
/// builds itself, `TX:/^header_name_920450_/`.
fn empty_at_start(t: &Target, ri: usize, reads: &[TxReads<'_>], base: &VarMap) -> bool {
    let Selector::Regex(re) = &t.selector else {
        return false;
    };
    let built_elsewhere = |(rj, r): (usize, &TxReads<'_>)| {
        rj != ri && r.prefixes.iter().any(|p| re.may_match_prefixed(p))
    };
    t.var == Var::Tx
        && re.tx_keys.is_empty()
        && !base.keys().any(|k| re.is_match(k))
        && !reads.iter().enumerate().any(built_elsewhere)
}

/// What a rule may read of `TX`, as far as the keys built by macros go.
#[derive(Default)]
struct TxReads<'a> {
    /// Literal keys, lower case: its targets and macros read them, its `setvar`s write
    /// them (counted as reads: `+=` reads).
    keys: Vec<String>,
    /// The literal beginnings of the keys its `setvar`s build.
    prefixes: Vec<&'a str>,
    /// Its targets' key regexes.
    regexes: Vec<&'a KeyRegex>,
    /// Whether it reads every key (a `TX` target without a key, a macro of `TX` whole).
    all: bool,
}

impl<'a> TxReads<'a> {
    fn of(rule: &'a crate::rule::Rule) -> TxReads<'a> {
        let mut reads = TxReads::default();
        for t in rule.links.iter().flat_map(|l| &l.targets) {
            match &t.selector {
                _ if t.var != Var::Tx => {}
                Selector::All => reads.all = true,
                Selector::Key(k) => reads.keys.push(k.to_ascii_lowercase()),
                Selector::Regex(re) => reads.regexes.push(re),
            }
        }
        for (var, key) in rule.macros().flat_map(Macro::references) {
            match (var, key) {
                (Var::Tx, Some(k)) => reads.keys.push(k.to_ascii_lowercase()),
                (Var::Tx, None) => reads.all = true,
                _ => {}
            }
        }
        for effect in rule.links.iter().flat_map(|l| &l.effects) {
            if let Effect::SetVar {
                collection: Var::Tx,
                key,
                ..
            } = effect
            {
                match key.literal() {
                    Some(k) => reads.keys.push(k.to_ascii_lowercase()),
                    None => reads.prefixes.push(key.literal_prefix()),
                }
            }
        }
        reads
    }

    /// Whether it may read a key that starts with `prefix` otherwise than through a key
    /// regex (those that may match such a key are added to `regexes`).
    fn reads_prefixed(&self, prefix: &str, regexes: &mut Vec<KeyRegex>) -> bool {
        regexes.extend(
            (self.regexes.iter())
                .filter(|re| re.may_match_prefixed(prefix))
                .map(|re| (*re).clone()),
        );
        self.all
            || self.keys.iter().any(|k| k.starts_with(prefix))
            || self
                .prefixes
                .iter()
                .any(|p| p.starts_with(prefix) || prefix.starts_with(p))
    }
}

/// The `setvar`s of rule `ri` on `TX` keys built by macros that no other rule reads but
/// through key regexes; `reads`: what each rule may read.
fn private_writes(rules: &RuleSet, reads: &[TxReads<'_>], ri: usize) -> Vec<PrivateWrite> {
    let mut private = Vec::new();
    for (l, link) in rules.rules[ri].links.iter().enumerate() {
        for (e, effect) in link.effects.iter().enumerate() {
            let Effect::SetVar {
                collection: Var::Tx,
                key,
                ..
            } = effect
            else {
                continue;
            };
            if key.literal().is_some() {
                continue;
            }
            let prefix = key.literal_prefix();
            let mut readers = Vec::new();
            let mut read_elsewhere = false;
            for (_, r) in reads.iter().enumerate().filter(|&(rj, _)| rj != ri) {
                read_elsewhere |= r.reads_prefixed(prefix, &mut readers);
            }
            if !read_elsewhere {
                private.push(PrivateWrite {
                    at: (l, e),
                    readers,
                });
            }
        }
    }
    private
}

/// What rule `rule` reads when it starts, or `None` when it is not replayable.
/// `first_decided`: its first link's matches are decided at load (see
/// [`Folding::starts`]), so that the link reads nothing that changes.
/// `empty_at_start`: whether a target of it holds nothing whenever it starts (then the
/// fingerprint leaves it out).
fn inputs(
    rule: &crate::rule::Rule,
    first_decided: bool,
    empty_at_start: impl Fn(&Target) -> bool,
) -> Option<Inputs> {
    if !matches!(rule.disruptive, Disruptive::Pass | Disruptive::Block) {
        return None;
    }
    let mut inputs = Inputs::default();
    let none = Reads::default();
    let skipped = usize::from(first_decided);
    for link in rule.links.iter().skip(skipped) {
        let read = link.targets.iter().filter(|t| !empty_at_start(t));
        inputs.targets.extend(read.cloned());
        if let Some(m) = link.operator.argument() {
            inputs.matching.add_macro(m, &none);
        }
    }
    inputs.header_set_only = !inputs.targets.is_empty()
        && inputs.targets.iter().all(|t| t.var.is_of_header_set())
        && inputs.matching.tx_keys.is_empty()
        && inputs
            .matching
            .lookups
            .iter()
            .all(|(v, _)| v.is_of_header_set());
    for link in &rule.links {
        for effect in &link.effects {
            match effect {
                Effect::SetVar {
                    collection: Var::Tx,
                    key,
                    op,
                } => {
                    inputs.effects.add_macro(key, &inputs.matching);
                    if let Some(value) = op.value() {
                        inputs.effects.add_macro(value, &inputs.matching);
                    }
                    if matches!(op, SetOp::Add(_) | SetOp::Sub(_)) {
                        inputs.effects.add_key(key.literal()?, &inputs.matching);
                    }
                }
                Effect::Ctl(_) => {}
                Effect::SetVar { .. } | Effect::SetEnv(..) | Effect::InitCol(_) => return None,
            }
        }
    }
    Some(inputs)
}

/// One change a rule's evaluation made, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// A `TX` key set to a value (by a `setvar` or a capture); `built`: its name was built
    /// by a macro (listed for the regexes of `TX` targets when new).
    Set {
        key: String,
        value: Vec<u8>,
        built: bool,
    },
    /// A `TX` key deleted.
    Remove(String),
    /// The `ctl` of rule `rule` (an index of [`RuleSet::rules`]), link `link`, action
    /// `effect`, run.
    Ctl {
        rule: usize,
        link: usize,
        effect: usize,
    },
}

/// Of `changes`, the last to each `TX` key, in order: a replay applies them one after the
/// other and reads nothing in between, so an earlier change to a key is overwritten (CRS's
/// 920450 captures each header name into `TX:0` in turn).
pub(crate) fn last_changes(mut changes: Vec<Change>) -> Vec<Change> {
    fn key(c: &Change) -> Option<&str> {
        match c {
            Change::Set { key, .. } | Change::Remove(key) => Some(key),
            Change::Ctl { .. } => None,
        }
    }
    let overwritten: Vec<bool> = (0..changes.len())
        .map(|i| {
            key(&changes[i]).is_some_and(|k| changes[i + 1..].iter().any(|c| key(c) == Some(k)))
        })
        .collect();
    let mut overwritten = overwritten.into_iter();
    changes.retain(|_| !overwritten.next().unwrap_or(false));
    changes
}

/// What one evaluation of a rule did, with the fingerprint it started from.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    fingerprint: Vec<u8>,
    /// The fingerprint's hash, compared first.
    hash: u64,
    /// How often it was applied since it was kept (halved whenever another outcome of
    /// the rule replaces one): the least used is replaced.
    uses: u32,
    /// Whether the rule matched.
    pub(crate) matched: bool,
    /// What it changed, in order.
    pub(crate) changes: Vec<Change>,
}

impl Outcome {
    /// About the bytes it takes.
    fn size(&self) -> usize {
        self.fingerprint.len() + self.changes.iter().map(Change::size).sum::<usize>()
    }
}

impl Change {
    /// About the bytes it takes.
    pub(crate) fn size(&self) -> usize {
        std::mem::size_of::<Change>()
            + match self {
                Change::Set { key, value, .. } => key.len() + value.len(),
                Change::Remove(key) => key.len(),
                Change::Ctl { .. } => 0,
            }
    }
}

/// The outcomes kept for one rule.
#[derive(Debug, Default)]
struct Kept {
    outcomes: Vec<Outcome>,
    /// Evaluations looked up, and those found.
    tries: u32,
    hits: u32,
    /// Evaluations not looked up since the rule was let go (see [`RETRIAL`]).
    skipped: u32,
}

/// The most outcomes kept per rule: the header sets of the clients of a server, say.
const KEPT_PER_RULE: usize = 16;
/// The longest fingerprint kept: a rule that reads more (a body) is evaluated as usual.
pub(crate) const LONGEST_FINGERPRINT: usize = 2048;
/// The most bytes of fingerprints and changes a thread's outcomes keep: beyond, no new
/// outcome is kept.
const MOST_BYTES: usize = 256 << 10;
/// After this many lookups, a rule found less than a quarter of the time is no longer
/// looked up on the thread: its values change from request to request.
const TRIAL: u32 = 64;
/// After this many evaluations without lookups, a rule let go is tried again: the traffic
/// that made its values change (a burst of new clients, an attack) may have passed.
const RETRIAL: u32 = 4096;

/// A thread's outcomes of replayable rules, for one engine.
#[derive(Debug, Default)]
pub(crate) struct Outcomes {
    /// The engine they are of.
    engine: u64,
    /// Per rule index.
    rules: Vec<Kept>,
    /// What the kept outcomes take, about (see [`MOST_BYTES`]).
    bytes: usize,
}

thread_local! {
    /// The thread's outcomes: shared by the transactions the thread runs (an edge worker
    /// has many in flight, each evaluating rules in turn, never two at once).
    static OUTCOMES: std::cell::RefCell<Outcomes> = const {
        std::cell::RefCell::new(Outcomes {
            engine: 0,
            rules: Vec::new(),
            bytes: 0,
        })
    };
}

/// Runs `f` on the thread's outcomes, made those of engine `engine` with `rules` rules.
pub(crate) fn with_outcomes<R>(engine: u64, rules: usize, f: impl FnOnce(&mut Outcomes) -> R) -> R {
    OUTCOMES.with(|o| {
        let mut o = o.borrow_mut();
        o.prepare(engine, rules);
        f(&mut o)
    })
}

/// The hash a fingerprint is looked up by.
pub(crate) fn hash(fingerprint: &[u8]) -> u64 {
    foldhash::fast::FixedState::with_seed(0).hash_one(fingerprint)
}

impl Outcomes {
    /// Makes these the outcomes of engine `engine` with `rules` rules, forgetting those of
    /// any other.
    fn prepare(&mut self, engine: u64, rules: usize) {
        if self.engine != engine || self.rules.len() != rules {
            self.engine = engine;
            self.rules.clear();
            self.rules.resize_with(rules, Kept::default);
            self.bytes = 0;
        }
    }

    /// Whether rule `ri` is looked up on this thread now; counts the lookup (of one
    /// fingerprint or two, see [`Outcomes::keep`]).
    pub(crate) fn wanted(&mut self, ri: usize) -> bool {
        let Some(kept) = self.rules.get_mut(ri) else {
            return false;
        };
        if kept.tries < TRIAL || kept.hits * 4 >= kept.tries {
            kept.tries = kept.tries.saturating_add(1);
            return true;
        }
        kept.skipped += 1;
        if kept.skipped >= RETRIAL {
            (kept.tries, kept.hits, kept.skipped) = (0, 0, 0);
        }
        false
    }

    /// Takes the outcome of rule `ri` kept for `fingerprint` (whose [`hash`] is `hash`),
    /// to apply it (then [`Outcomes::put_back`]); counts it found.
    pub(crate) fn take(
        &mut self,
        ri: usize,
        fingerprint: &[u8],
        hash: u64,
    ) -> Option<(usize, Outcome)> {
        let kept = self.rules.get_mut(ri)?;
        let at = kept
            .outcomes
            .iter()
            .position(|o| o.hash == hash && o.fingerprint == fingerprint)?;
        kept.hits = kept.hits.saturating_add(1);
        let outcome = &mut kept.outcomes[at];
        outcome.uses = outcome.uses.saturating_add(1);
        Some((at, std::mem::take(outcome)))
    }

    /// How often an outcome of rule `ri` was found.
    #[cfg(test)]
    pub(crate) fn hits(&self, ri: usize) -> u32 {
        self.rules.get(ri).map_or(0, |k| k.hits)
    }

    /// Puts back an outcome [`Outcomes::take`] took.
    pub(crate) fn put_back(&mut self, ri: usize, at: usize, outcome: Outcome) {
        if let Some(slot) = self.rules.get_mut(ri).and_then(|k| k.outcomes.get_mut(at)) {
            *slot = outcome;
        }
    }

    /// Keeps what rule `ri` did from `fingerprint` (whose [`hash`] is `hash`). An
    /// evaluation that neither matched nor changed anything ran no action, so it read
    /// nothing of [`Inputs::effects`]: it is kept for the fingerprint of the targets and
    /// [`Inputs::matching`] alone, which any state of the other `TX` keys shares. Others
    /// are kept for the whole fingerprint, which is longer (more values written), so the
    /// two kinds never meet.
    pub(crate) fn keep(
        &mut self,
        ri: usize,
        (fingerprint, hash): (&[u8], u64),
        matched: bool,
        changes: Vec<Change>,
    ) {
        let Some(kept) = self.rules.get_mut(ri) else {
            return;
        };
        let outcome = Outcome {
            fingerprint: fingerprint.to_vec(),
            hash,
            uses: 0,
            matched,
            changes: last_changes(changes),
        };
        let size = outcome.size();
        if kept.outcomes.len() < KEPT_PER_RULE {
            if self.bytes + size > MOST_BYTES {
                return;
            }
            self.bytes += size;
            kept.outcomes.push(outcome);
        } else {
            let Some(least) = (0..kept.outcomes.len()).min_by_key(|&i| kept.outcomes[i].uses)
            else {
                return;
            };
            let old = kept.outcomes[least].size();
            if (self.bytes + size).saturating_sub(old) > MOST_BYTES {
                return;
            }
            self.bytes = (self.bytes + size).saturating_sub(old);
            kept.outcomes[least] = outcome;
            for o in &mut kept.outcomes {
                o.uses /= 2;
            }
        }
    }
}

/// Writes one value into a fingerprint: its length, then its bytes; nothing once the
/// fingerprint is longer than [`LONGEST_FINGERPRINT`] (it will not be used).
pub(crate) fn write(fingerprint: &mut Vec<u8>, value: &[u8]) {
    if fingerprint.len() > LONGEST_FINGERPRINT {
        return;
    }
    fingerprint.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
    fingerprint.extend_from_slice(value);
}

/// Writes the number of a header set (see [`crate::header_sets`]) into a fingerprint, in
/// place of the values of a rule's targets and arguments ([`Inputs::header_set_only`]).
/// Its mark is a length no value has (nor the end of a list), so a fingerprint so written
/// never equals one with the values themselves.
pub(crate) fn write_header_set(fingerprint: &mut Vec<u8>, number: u64) {
    fingerprint.extend_from_slice(&(u32::MAX - 1).to_le_bytes());
    fingerprint.extend_from_slice(&number.to_le_bytes());
}

/// Writes the end of a list (no value has this length) into a fingerprint.
pub(crate) fn end(fingerprint: &mut Vec<u8>) {
    fingerprint.extend_from_slice(&u32::MAX.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::WafEngine;

    /// What a replayable rule reads, counted: its targets, then the `TX` keys and lookups
    /// of its arguments, then those of its actions.
    type Read = (usize, (Vec<String>, usize), (Vec<String>, usize));

    /// Per rule id, what it reads when replayable, for `rules` alone.
    fn planned(rules: &str) -> Vec<(u32, Option<Read>)> {
        let engine = WafEngine::of_rules(rules);
        let c = engine.compiled();
        c.rules
            .rules
            .iter()
            .zip(&c.replay)
            .map(|(r, i)| {
                let read = i.as_ref().map(|i| {
                    let reads = |r: &Reads| (r.tx_keys.clone(), r.lookups.len());
                    (i.targets.len(), reads(&i.matching), reads(&i.effects))
                });
                (r.id, read)
            })
            .collect()
    }

    #[test]
    fn rules_that_read_and_change_only_the_transaction_are_replayable() {
        let rules = "SecRule REQUEST_HEADERS_NAMES \"@rx ^.*$\" \"id:1,phase:1,pass,nolog,capture,setvar:'tx.h_%{tx.0}=/%{tx.0}/',chain\"\n\
             SecRule TX:/^h_/ \"@within %{tx.restricted}\" \"setvar:tx.Score=+%{tx.critical},ctl:ruleRemoveById=9\"\n\
             SecRule ARGS \"@streq %{REQUEST_HEADERS.host}\" \"id:2,phase:2,block,setvar:tx.seen=%{matched_var}\"\n\
             SecRule ARGS \"@rx a\" \"id:3,phase:2,deny\"\n\
             SecRule ARGS \"@rx a\" \"id:4,phase:2,pass,setvar:ip.seen=1\"\n\
             SecRule ARGS \"@rx a\" \"id:5,phase:2,pass,setenv:seen=1\"\n\
             SecRule ARGS \"@rx a\" \"id:6,phase:2,pass,setvar:'tx.%{tx.name}=+1'\"\n\
             SecRule ARGS \"@rx a\" \"id:7,phase:2,pass,setvar:'tx.%{tx.name}=1'\"\n\
             SecRule ARGS \"@streq %{tx.wanted}\" \"id:8,phase:2,pass,setvar:tx.wanted=+%{tx.step}\"\n\
             SecAction \"id:9,phase:2,pass\"";
        let keys = |k: &[&str]| k.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        assert_eq!(
            planned(rules),
            [
                (
                    1,
                    // `tx.restricted`, which no rule sets, was decided at load.
                    Some((2, (keys(&[]), 0), (keys(&["0", "critical", "score"]), 0)))
                ),
                (2, Some((1, (keys(&[]), 1), (keys(&[]), 0)))),
                (3, None),
                (4, None),
                (5, None),
                (6, None),
                (7, Some((1, (keys(&[]), 0), (keys(&["name"]), 0)))),
                // The key its argument reads is not read again for its addition.
                (8, Some((1, (keys(&["wanted"]), 0), (keys(&["step"]), 0)))),
                (9, Some((0, (keys(&[]), 0), (keys(&[]), 0)))),
            ]
        );
    }

    #[test]
    fn a_rule_whose_first_link_the_configuration_decides_reads_no_target() {
        // CRS's score sums: the level is set at load, the score per request.
        let rules = "SecAction \"id:1,phase:1,pass,nolog,setvar:tx.level=1\"\n\
             SecRule ARGS \"@rx a\" \"id:2,phase:2,pass,nolog,setvar:tx.score=+1\"\n\
             SecRule TX:level \"@ge 1\" \"id:3,phase:2,pass,nolog,setvar:tx.total=+%{tx.score}\"";
        let planned = planned(rules);
        let keys = |k: &[&str]| k.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        assert_eq!(
            planned[2],
            (3, Some((0, (keys(&[]), 0), (keys(&["score", "total"]), 0))))
        );
        assert_eq!(
            planned[1],
            (2, Some((1, (keys(&[]), 0), (keys(&["score"]), 0))))
        );
    }

    #[test]
    fn no_rule_is_replayable_when_a_first_link_reads_an_earlier_match() {
        let rules = "SecRule ARGS \"@rx a\" \"id:1,phase:2,pass\"\n\
             SecRule MATCHED_VARS \"@rx a\" \"id:2,phase:2,pass\"";
        assert_eq!(planned(rules), [(1, None), (2, None)]);
    }

    #[test]
    fn a_key_regex_only_its_own_rule_fills_is_left_out_of_the_fingerprint() {
        // Rules 1 and 2 read back the keys they build; rule 3 builds keys rule 1 reads.
        let engine = WafEngine::of_rules(
            "SecRule REQUEST_HEADERS_NAMES \"@rx ^.*$\" \"id:1,phase:1,pass,nolog,capture,setvar:'tx.h_%{tx.0}=1',chain\"\n\
             SecRule TX:/^h_/ \"@streq 2\" \"setvar:tx.score=+1\"\n\
             SecRule REQUEST_HEADERS_NAMES \"@rx ^.*$\" \"id:2,phase:1,pass,nolog,capture,setvar:'tx.hx_%{tx.0}=1',chain\"\n\
             SecRule TX:/^hx_/ \"@streq 2\" \"setvar:tx.score=+1\"\n\
             SecRule ARGS_NAMES \"@rx ^.*$\" \"id:3,phase:2,pass,nolog,capture,setvar:'tx.h_arg_%{tx.0}=1'\"",
        );
        let c = engine.compiled();
        let read = |ri: usize| {
            let inputs = c.replay[ri].as_ref().unwrap();
            (inputs.targets.len(), inputs.header_set_only)
        };
        assert_eq!(read(0), (2, false));
        assert_eq!(read(1), (1, true));
    }

    #[test]
    fn an_outcome_keeps_the_last_change_to_each_key_in_order() {
        let set = |key: &str, value: &str| Change::Set {
            key: key.into(),
            value: value.into(),
            built: false,
        };
        let ctl = |link| Change::Ctl {
            rule: 0,
            link,
            effect: 0,
        };
        let changes = vec![
            set("0", "host"),
            set("a", "1"),
            ctl(0),
            set("0", "accept"),
            Change::Remove("a".into()),
            ctl(0),
            set("0", "user-agent"),
        ];
        assert_eq!(
            last_changes(changes),
            vec![
                ctl(0),
                Change::Remove("a".into()),
                ctl(0),
                set("0", "user-agent")
            ]
        );
    }

    #[test]
    fn the_least_used_outcome_makes_room_and_a_rule_seldom_found_is_let_go() {
        let mut outcomes = Outcomes::default();
        outcomes.prepare(7, 2);
        let look = |o: &mut Outcomes, value: &[u8]| {
            let fp = value.to_vec();
            match o.take(0, &fp, hash(&fp)) {
                Some((at, outcome)) => {
                    let matched = outcome.matched;
                    o.put_back(0, at, outcome);
                    Some(matched)
                }
                None => None,
            }
        };
        let keep = |o: &mut Outcomes, ri: usize, value: &[u8], matched: bool| {
            o.keep(ri, (value, hash(value)), matched, Vec::new());
        };
        for n in 0..KEPT_PER_RULE {
            let value = n.to_string();
            assert_eq!(look(&mut outcomes, value.as_bytes()), None);
            keep(&mut outcomes, 0, value.as_bytes(), n % 2 == 0);
        }
        // All kept; "0" used twice more, then a new value replaces one used least.
        assert_eq!(look(&mut outcomes, b"0"), Some(true));
        assert_eq!(look(&mut outcomes, b"0"), Some(true));
        assert_eq!(look(&mut outcomes, b"1"), Some(false));
        assert_eq!(look(&mut outcomes, b"new"), None);
        keep(&mut outcomes, 0, b"new", true);
        assert_eq!(look(&mut outcomes, b"new"), Some(true));
        assert_eq!(look(&mut outcomes, b"0"), Some(true));
        assert_eq!(look(&mut outcomes, b"1"), Some(false));
        // Another engine forgets them.
        outcomes.prepare(8, 2);
        assert_eq!(look(&mut outcomes, b"0"), None);
        // A rule whose values never come back is let go after its trial.
        for n in 0..TRIAL {
            let fp = n.to_string().into_bytes();
            assert!(outcomes.wanted(1));
            assert!(outcomes.take(1, &fp, hash(&fp)).is_none());
            keep(&mut outcomes, 1, &fp, false);
        }
        assert!(!outcomes.wanted(1));
        assert!(outcomes.wanted(0));
        // Until it is tried again.
        for _ in 1..RETRIAL {
            assert!(!outcomes.wanted(1));
        }
        assert!(outcomes.wanted(1));
    }
}
