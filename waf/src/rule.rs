//! The compiled rule set: directives turned into rules (with their chains), markers and
//! per-phase order, every regex and phrase list compiled once.

use std::collections::HashMap;

use aho_corasick::automaton::{Automaton, StateID};
use aho_corasick::{Anchored, MatchKind, dfa::DFA, nfa::contiguous::NFA};

use crate::actions::{
    Actions, Ctl, Disruptive, Effect, RuleRef, Severity, parse_actions, parse_id_ranges,
};
use crate::error::{ErrorKind, RuleError};
use crate::macros::Macro;
use crate::operators::{DataFiles, Operator};
use crate::parser::{Directive, Location, split_actions, split_operator, split_variables};
use crate::recall;
use crate::transforms::{ByteSet, Transform};
use crate::variables::{ParsedTarget, Selector, Target, Var, add_exclusion, fold_targets};

/// One link of a rule: the starter or a chained rule.
#[derive(Debug)]
pub struct Link {
    /// What it inspects; empty for `SecAction`.
    pub targets: Vec<Target>,
    /// The operator.
    pub operator: Operator,
    /// `!@op`.
    pub negated: bool,
    /// The transformations, defaults included.
    pub transforms: Vec<Transform>,
    /// The id of the transformation chain in [`RuleSet::chains`], shared by every link
    /// with the same transformations (the key of the per-transaction transformation
    /// cache).
    pub chain: u32,
    /// Where the link sits in its chain's literal prefilter, when it has one.
    pub filter: Option<Filter>,
    /// `capture`.
    pub capture: bool,
    /// `multiMatch`.
    pub multi_match: bool,
    /// Per-match actions.
    pub effects: Vec<Effect>,
    /// Its bit in what a thread remembers of values (see [`crate::recall`]), when its
    /// verdict on a value depends on the value alone (its operator argument is a constant)
    /// and it inspects values that stay the same during a transaction.
    pub recall: Option<u32>,
    /// Whether it has a recall bit and every target is steady: it finds nothing in a phase
    /// when every value its targets select is known to it (see
    /// [`RuleSet::recall_targets`]).
    pub steady: bool,
    /// When steady: per target, its row in [`RuleSet::recall_targets`].
    pub recall_rows: Vec<u32>,
}

impl Link {
    /// Per byte set of `alphabets`: whether the link can find something in a value made
    /// only of its bytes, its transformations included (each step's result, under
    /// `multiMatch`). `false` is certain (see [`Operator::can_match_over`] and
    /// [`Transform::image`]); a negated operator, or an argument that is not a constant,
    /// gives `true`.
    pub fn can_find_over(&self, alphabets: &[ByteSet]) -> Vec<bool> {
        let arg = match self.operator.argument().map(Macro::literal) {
            None => "",
            Some(Some(arg)) => arg,
            Some(None) => return vec![true; alphabets.len()],
        };
        if self.negated {
            return vec![true; alphabets.len()];
        }
        // What the operator reads of each alphabet: the value transformed, or under
        // `multiMatch` the value after each step (and before the first).
        let steps = if self.multi_match {
            self.transforms.len() + 1
        } else {
            1
        };
        let mut sets = Vec::with_capacity(alphabets.len() * steps);
        for &alphabet in alphabets {
            let mut set = alphabet;
            if self.multi_match {
                sets.push(set);
            }
            for t in &self.transforms {
                set = t.image(set);
                if self.multi_match {
                    sets.push(set);
                }
            }
            if !self.multi_match {
                sets.push(set);
            }
        }
        let matches = self.operator.can_match_over(arg.as_bytes(), &sets);
        matches.chunks(steps).map(|c| c.contains(&true)).collect()
    }
}

/// A link's place in the literal prefilter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    /// The first of its bits in the candidate sets: one per literal set the link requires,
    /// consecutive (a value is a candidate when it has all of them).
    pub bit: u32,
    /// How many bits.
    pub bits: u32,
    /// The prefilter part it is in (0: expressions' literals, 1: `@pm` phrases).
    pub part: u8,
    /// The group of links with the same targets and chain, when every target is a value
    /// that stays the same during a phase: one candidate set per group and phase then
    /// decides for all of its values at once.
    pub group: Option<u32>,
}

/// One step of the transformation trie: a chain is its parent chain plus one
/// transformation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChainStep {
    /// The chain this one extends.
    pub parent: u32,
    /// The transformation it adds.
    pub transform: Transform,
}

/// The literals of every prefiltered link, in two parts (the expressions' literals and the
/// `@pm` phrases, scanned apart so that values only phrase rules read are not scanned for
/// the expressions' literals and the other way round): one scan of a value says which of
/// the links' literal sets it meets (each link then reads its bits in the scan of the value
/// transformed by its own chain).
#[derive(Debug)]
pub struct Prefilter {
    /// The parts.
    pub parts: [PrefilterPart; 2],
}

/// The bits one literal sets, as (word, mask) pairs of a candidate set.
pub type Owners = Vec<(u32, u64)>;

/// One part of the prefilter, with its own bits.
#[derive(Debug)]
pub struct PrefilterPart {
    /// The literals of two bytes or more, ASCII case-insensitive, reporting overlapping
    /// matches, with per literal the bits it sets as (word, mask) pairs.
    pub matcher: Option<(Literals, Vec<Owners>)>,
    /// The one-byte literals, by nibble of a value's byte set (see [`ByteSet`]): the
    /// nibbles (0-63, bytes 4n to 4n + 3) that hold a byte some set has as a literal.
    pub nibbles: Vec<u8>,
    /// Per nibble of `nibbles` and per pattern of its four bits: the bits of the sets
    /// holding one of the pattern's bytes (either case of a letter), `words` words each. A
    /// value's one-byte literals are found with a lookup per nibble, not per byte.
    pub nibble_rows: Vec<u64>,
    /// The number of 64-bit words of a candidate set.
    pub words: usize,
}

impl PrefilterPart {
    /// Adds to `set` (a candidate set of `words` words) the bits of the literal sets
    /// `value` meets; `present` is the set of its bytes.
    pub fn scan(&self, value: &[u8], present: ByteSet, set: &mut [u64]) {
        for (k, &n) in self.nibbles.iter().enumerate() {
            let pattern = (present[usize::from(n / 16)] >> (n % 16 * 4)) as usize & 0xf;
            if pattern != 0 {
                let row = (k * 16 + pattern) * self.words;
                for (s, r) in set.iter_mut().zip(&self.nibble_rows[row..row + self.words]) {
                    *s |= r;
                }
            }
        }
        if let Some((literals, owners)) = &self.matcher {
            match literals {
                Literals::Dfa(dfa, start) => mark_literals(dfa, *start, value, owners, set),
                Literals::Nfa(nfa, start) => mark_literals(nfa, *start, value, owners, set),
            }
        }
    }
}

/// The automaton of a prefilter part's literals of two bytes or more, ASCII
/// case-insensitive, with standard match semantics (each state lists every literal that
/// ends there), and its unanchored start state.
#[derive(Debug)]
pub enum Literals {
    /// A DFA: one transition per byte.
    Dfa(DFA, StateID),
    /// A contiguous NFA, for sets too large for a DFA.
    Nfa(NFA, StateID),
}

/// Adds to `set` the bits of every literal of `automaton` (started at `start`) that occurs
/// in `value`: the automaton is stepped byte by byte, each match state naming the literals
/// that end there, overlapping ones included.
fn mark_literals<A: Automaton>(
    automaton: &A,
    start: StateID,
    value: &[u8],
    owners: &[Owners],
    set: &mut [u64],
) {
    let mut state = start;
    for &b in value {
        state = automaton.next_state(Anchored::No, state, b);
        if automaton.is_special(state) && automaton.is_match(state) {
            for i in 0..automaton.match_len(state) {
                for &(w, mask) in &owners[automaton.match_pattern(state, i).as_usize()] {
                    set[w as usize] |= mask;
                }
            }
        }
    }
}

/// Whether a candidate set has all of a filter's bits.
pub fn has_bits(set: &[u64], filter: Filter) -> bool {
    all_bits(set, filter.bit, filter.bits)
}

/// The words of bits `first..first + count` (`count` > 0) and the masks of the first and
/// last of them.
#[inline]
fn bit_range(first: u32, count: u32) -> (usize, usize, u64, u64) {
    let last = first + count - 1;
    (
        (first / 64) as usize,
        (last / 64) as usize,
        u64::MAX << (first % 64),
        u64::MAX >> (63 - last % 64),
    )
}

/// Whether bits `first..first + count` of `set` are all set.
#[inline]
pub fn all_bits(set: &[u64], first: u32, count: u32) -> bool {
    if count == 0 {
        return true;
    }
    let (first_word, last_word, head, tail) = bit_range(first, count);
    if first_word == last_word {
        let mask = head & tail;
        return set[first_word] & mask == mask;
    }
    set[first_word] & head == head
        && set[first_word + 1..last_word]
            .iter()
            .all(|&w| w == u64::MAX)
        && set[last_word] & tail == tail
}

/// Whether any of bits `first..first + count` of `set` is set.
#[inline]
pub fn any_bits(set: &[u64], first: u32, count: u32) -> bool {
    if count == 0 {
        return false;
    }
    let (first_word, last_word, head, tail) = bit_range(first, count);
    if first_word == last_word {
        return set[first_word] & head & tail != 0;
    }
    set[first_word] & head != 0
        || set[first_word + 1..last_word].iter().any(|&w| w != 0)
        || set[last_word] & tail != 0
}

/// The most literals an automaton of the prefilter is built as a DFA for.
const DFA_LITERALS: usize = 4096;

/// Builds one automaton of literals with their bits.
fn automaton(mut literals: Vec<(Vec<u8>, u32)>) -> Option<(Literals, Vec<Owners>)> {
    literals.sort();
    let mut patterns: Vec<Vec<u8>> = Vec::new();
    let mut owners: Vec<Vec<(u32, u64)>> = Vec::new();
    for (lit, bit) in literals {
        if patterns.last() != Some(&lit) {
            patterns.push(lit);
            owners.push(Vec::new());
        }
        if let Some(o) = owners.last_mut() {
            match o.iter_mut().find(|(w, _)| *w == bit / 64) {
                Some((_, mask)) => *mask |= 1 << (bit % 64),
                None => o.push((bit / 64, 1 << (bit % 64))),
            }
        }
    }
    if patterns.is_empty() {
        return None;
    }
    // A DFA reads one transition per byte where the NFA follows failure transitions, but
    // its size grows with the literals: the CRS's 2 900 expression literals take 6 MB as a
    // DFA (0.4 MB as an NFA), its 6 000 phrases 78 MB (1.6 MB), so only the smaller
    // automata are DFAs.
    // Unanchored searches are what both builders make by default: a start state is an
    // invariant of the built automaton, not something the literals can break. A DFA too
    // large for its state ids falls back to the NFA, whose ids run out only past 2^31
    // states.
    let unanchored = "an automaton built for unanchored searches has an unanchored start";
    let dfa = (patterns.len() <= DFA_LITERALS)
        .then(|| {
            DFA::builder()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .prefilter(false)
                .build(&patterns)
                .ok()
        })
        .flatten();
    let literals = match dfa {
        Some(dfa) => {
            let start = dfa.start_state(Anchored::No).expect(unanchored);
            Literals::Dfa(dfa, start)
        }
        None => {
            let nfa = NFA::builder()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .prefilter(false)
                .build(&patterns)
                .expect("the prefilter's literals fit an NFA's state ids");
            let start = nfa.start_state(Anchored::No).expect(unanchored);
            Literals::Nfa(nfa, start)
        }
    };
    Some((literals, owners))
}

/// The `TX` keys of a `capture`'s groups.
pub const CAPTURE_KEYS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// A rule with its chain.
#[derive(Debug)]
pub struct Rule {
    /// The id (0 only for rules without one, which SecLang allows in no place we load).
    pub id: u32,
    /// 1-5.
    pub phase: u8,
    /// The starter first, then each chained rule.
    pub links: Vec<Link>,
    /// `msg`.
    pub msg: Option<Macro>,
    /// `logdata`.
    pub logdata: Option<Macro>,
    /// `tag`s.
    pub tags: Vec<String>,
    /// `severity`.
    pub severity: Option<Severity>,
    /// Whether a match is logged (`log`/`nolog`, defaults included).
    pub log: bool,
    /// The disruptive action, `block` resolved through `SecDefaultAction`.
    pub disruptive: Disruptive,
    /// `status`.
    pub status: Option<u16>,
    /// `skipAfter`: the marker's name.
    pub skip_after: Option<String>,
    /// `skipAfter`: the position in its phase where evaluation goes on when the rule
    /// matches (after the first marker of that name, or the phase's end when the marker is
    /// not after the rule), resolved once every rule is loaded.
    pub skip_to: Option<usize>,
    /// `skip`.
    pub skip: u32,
    /// Where the rule starts.
    pub location: Location,
    /// Whether each match sets `MATCHED_VAR` and `MATCHED_VAR_NAME` as it is found (see
    /// [`RuleSet::plan_matched_var`]); otherwise only the last one does, before `msg` and
    /// `logdata` are written.
    pub tracks_matched_var: bool,
}

impl Rule {
    /// Whether the rule is named by `r`.
    pub fn is_named_by(&self, r: &RuleRef) -> bool {
        match r {
            RuleRef::Ids(ranges) => ranges.iter().any(|&(a, b)| (a..=b).contains(&self.id)),
            RuleRef::Tag(t) => self.tags.iter().any(|x| x.eq_ignore_ascii_case(t)),
            RuleRef::Msg(m) => self.msg.as_ref().and_then(Macro::literal) == Some(m.as_str()),
        }
    }

    /// Every macro the rule expands: its links' operator arguments, the keys and values
    /// of their `setvar`s and `setenv`s, its `msg` and `logdata`.
    pub fn macros(&self) -> impl Iterator<Item = &Macro> {
        let links = self.links.iter().flat_map(|link| {
            let effects = link.effects.iter().flat_map(|e| match e {
                Effect::SetVar { key, op, .. } => [Some(key), op.value()],
                Effect::SetEnv(k, v) => [Some(k), Some(v)],
                Effect::InitCol(_) | Effect::Ctl(_) => [None, None],
            });
            link.operator
                .argument()
                .into_iter()
                .chain(effects.flatten())
        });
        links.chain(self.msg.iter()).chain(self.logdata.iter())
    }
}

/// An entry of a phase: a rule (index into [`RuleSet::rules`]) or a marker.
#[derive(Clone, Debug)]
pub enum Item {
    /// A rule.
    Rule(usize),
    /// A `SecMarker`.
    Marker(String),
}

/// All rules, in load order per phase.
#[derive(Debug)]
pub struct RuleSet {
    /// Every rule.
    pub rules: Vec<Rule>,
    /// The transformation trie: index 0 is the empty chain (`None`), every other chain is
    /// its parent plus one step.
    pub chains: Vec<Option<ChainStep>>,
    /// Per chain: the bytes without which none of its steps changes a value (so a value
    /// without any leaves the whole chain as it is), or `None` when a step may change any
    /// value.
    pub chain_triggers: Vec<Option<ByteSet>>,
    /// The literal prefilter, when a link has literals.
    pub prefilter: Option<Prefilter>,
    /// The number of link groups (see [`Filter::group`]).
    pub groups: usize,
    /// Per link group: the range of words of the candidate sets its links' bits are in.
    pub group_words: Vec<(u32, u32)>,
    /// Per link group: its target set, the groups with the same targets (whatever their
    /// chain or prefilter part).
    pub group_sets: Vec<u32>,
    /// Per link group: the transformation chain of its links.
    pub group_chain: Vec<u32>,
    /// Per link group: the prefilter part of its links.
    pub group_part: Vec<u8>,
    /// Per target set: its groups.
    pub set_groups: Vec<Vec<u32>>,
    /// Per link group: each link's bit in what is remembered of values, with its filter
    /// (every link of a group has both; the bits are consecutive).
    pub group_links: Vec<Vec<(u32, Filter)>>,
    /// Per target set: the range of the recall bits of all its groups' links, `(first,
    /// count)`.
    pub set_links: Vec<(u32, u32)>,
    /// The number of 64-bit words of what is remembered of one value.
    pub recall_words: usize,
    /// Per alphabet of [`recall::ALPHABETS`], a row of [`RuleSet::recall_words`] words: the
    /// links that cannot find anything in a value made of the alphabet's bytes (see
    /// [`Link::can_find_over`]), known of every such value before any link has run.
    pub alphabet_rows: Vec<u64>,
    /// The distinct targets of the links with [`Link::steady`], without their exclusions
    /// (which only leave values out): one pass per phase over them says, per target,
    /// which links some value it selects is not known to. A target of one key has a row
    /// of its own, since only the links reading that key ever learn its values.
    pub recall_targets: Vec<Target>,
    /// Per target of [`RuleSet::recall_targets`], a row of [`RuleSet::recall_words`] words:
    /// the steady links that read it (their recall bits).
    pub recall_target_readers: Vec<u64>,
    /// Per target of [`RuleSet::recall_targets`]: the phases whose links read its row, as
    /// bits (phase `p` is bit `p - 1`), so that a phase works out only the rows it reads.
    pub recall_target_phases: Vec<u8>,
    /// Per target of [`RuleSet::recall_targets`]: whether it reads the method, the
    /// protocol or the headers (cookies among them), and some rule the walk may evaluate
    /// reads it: its row comes with the request's header set (see
    /// [`crate::header_sets`]).
    pub recall_target_headers: Vec<bool>,
    /// Per phase bit (see [`phase_bit`]), then for every phase at once: the rows of
    /// [`RuleSet::recall_targets`] the phase reads (see [`RuleSet::phase_rows`]).
    pub recall_phase_rows: Vec<PhaseRows>,
    /// The items of phases 1-5.
    pub phases: [Vec<Item>; 5],
    /// `SecComponentSignature` values.
    pub signatures: Vec<String>,
}

impl Default for RuleSet {
    fn default() -> Self {
        RuleSet {
            rules: Vec::new(),
            chains: vec![None],
            chain_triggers: vec![Some([0; 4])],
            prefilter: None,
            groups: 0,
            group_words: Vec::new(),
            group_sets: Vec::new(),
            group_chain: Vec::new(),
            group_part: Vec::new(),
            set_groups: Vec::new(),
            group_links: Vec::new(),
            set_links: Vec::new(),
            recall_words: 0,
            alphabet_rows: Vec::new(),
            recall_targets: Vec::new(),
            recall_target_readers: Vec::new(),
            recall_target_phases: Vec::new(),
            recall_target_headers: Vec::new(),
            recall_phase_rows: Vec::new(),
            phases: Default::default(),
            signatures: Vec::new(),
        }
    }
}

/// Whether the values a target yields stay the same while a phase runs (request and
/// response data, not `TX`, counts or the values of the rule being evaluated).
fn is_steady(t: &Target) -> bool {
    !t.count && !t.var.is_volatile()
}

/// A text that is the same for two targets exactly when they select the same values.
fn target_key(t: &Target) -> String {
    let sel = |s: &Selector| match s {
        Selector::All => String::new(),
        Selector::Key(k) => format!("={k}"),
        Selector::Regex(r) => format!("~{}", r.regex.as_str()),
    };
    let mut key = format!(
        "{}{}{}",
        if t.count { "&" } else { "" },
        t.var.name(),
        sel(&t.selector)
    );
    for e in &t.exclusions {
        key.push('!');
        key.push_str(&sel(e));
    }
    key
}

impl RuleSet {
    /// Gives each `TX` target selected by a regex the keys it matches among the literal
    /// names `setvar` writes and `capture` fills, so that reading it looks these up instead of
    /// testing every `TX` key (CRS holds about a hundred).
    pub fn plan_tx_keys(&mut self) {
        let mut literal: Vec<String> = CAPTURE_KEYS.iter().map(|k| k.to_string()).collect();
        for link in self.rules.iter().flat_map(|r| &r.links) {
            for e in &link.effects {
                if let Effect::SetVar {
                    collection: Var::Tx,
                    key,
                    ..
                } = e
                    && let Some(k) = key.literal()
                {
                    literal.push(k.to_string());
                }
            }
        }
        literal.sort_unstable();
        literal.dedup();
        for t in self
            .rules
            .iter_mut()
            .flat_map(|r| &mut r.links)
            .flat_map(|l| &mut l.targets)
            .filter(|t| t.var == Var::Tx)
        {
            if let Selector::Regex(re) = &mut t.selector {
                re.tx_keys = literal.iter().filter(|k| re.is_match(k)).cloned().collect();
            }
        }
    }

    /// Builds the literal prefilter, once every target is final (after updates and
    /// exclusions): each link whose operator has literals (`@rx` with required literals,
    /// `@pm`), is not negated and counts no collection gets a bit per literal set, and a
    /// group when all its targets are steady (and it is not `multiMatch`, whose values are
    /// each step of its chain). Rules tagged `paranoia-level/N` above `paranoia_level`
    /// (which CRS skips at that level) are left out, which keeps the automata small; were
    /// one to run, it would run unfiltered.
    pub fn plan_prefilter(&mut self, paranoia_level: u8) {
        // The prefiltered links with their part, group and sets; then per part one bit per
        // set, consecutive per link and per group (so that a group's union touches few
        // words).
        let mut planned = Vec::new();
        let mut groups: HashMap<(String, u32, u8), u32> = HashMap::new();
        for (r, rule) in self.rules.iter_mut().enumerate() {
            let above = is_above(rule, paranoia_level);
            for (l, link) in rule.links.iter_mut().enumerate() {
                link.filter = None;
                if above {
                    continue;
                }
                let Some(required) = link.operator.literals() else {
                    continue;
                };
                if link.negated || link.targets.is_empty() || link.targets.iter().any(|t| t.count) {
                    continue;
                }
                let part = u8::from(matches!(link.operator, Operator::Pm { .. }));
                let group = (!link.multi_match && link.targets.iter().all(is_steady)).then(|| {
                    let key: Vec<String> = link.targets.iter().map(target_key).collect();
                    let next = u32::try_from(groups.len()).unwrap_or(u32::MAX);
                    *groups
                        .entry((key.join("|"), link.chain, part))
                        .or_insert(next)
                });
                let sets: Vec<Vec<Vec<u8>>> = required.iter().map(|s| s.to_vec()).collect();
                planned.push((part, group, r, l, sets));
            }
        }
        planned
            .sort_by_key(|(part, group, r, l, _)| (*part, group.map_or(u32::MAX, |g| g), *r, *l));
        self.groups = groups.len();
        // Groups that differ only in their chain or part select the same values.
        let mut target_sets: HashMap<&str, u32> = HashMap::new();
        self.group_sets = vec![0; groups.len()];
        self.group_chain = vec![0; groups.len()];
        self.group_part = vec![0; groups.len()];
        let mut by_group: Vec<_> = groups.iter().map(|(key, &g)| (g, key)).collect();
        by_group.sort_unstable();
        for (g, (key, chain, part)) in by_group {
            let next = u32::try_from(target_sets.len()).unwrap_or(u32::MAX);
            let set = *target_sets.entry(key).or_insert(next);
            self.group_sets[g as usize] = set;
            self.group_chain[g as usize] = *chain;
            self.group_part[g as usize] = *part;
        }
        self.set_groups = vec![Vec::new(); target_sets.len()];
        for (g, &set) in (0u32..).zip(&self.group_sets) {
            self.set_groups[set as usize].push(g);
        }
        self.group_words = vec![(u32::MAX, 0); groups.len()];
        let mut order: [Vec<Vec<Vec<u8>>>; 2] = [Vec::new(), Vec::new()];
        for (part, group, r, l, sets) in planned {
            let bits = &mut order[usize::from(part)];
            let first = u32::try_from(bits.len()).unwrap_or(u32::MAX);
            let count = u32::try_from(sets.len()).unwrap_or(u32::MAX);
            bits.extend(sets);
            if let Some(g) = group {
                let words = &mut self.group_words[g as usize];
                words.0 = words.0.min(first / 64);
                words.1 = words.1.max((first + count).div_ceil(64));
            }
            self.rules[r].links[l].filter = Some(Filter {
                bit: first,
                bits: count,
                part,
                group,
            });
        }
        let [rx, pm] = order;
        self.prefilter = Some(Prefilter {
            parts: [prefilter_part(rx), prefilter_part(pm)],
        });
    }

    /// Decides which rules set `MATCHED_VAR` and `MATCHED_VAR_NAME` on each match: those
    /// whose links read either (as a target, in an operator's argument or in an action's
    /// text). The others only need the last match's, for their `msg` and `logdata`, since
    /// no other rule can see it: unless some rule's first link reads what the rule before
    /// it matched, in which case every rule sets them on each match. CRS's score sums and
    /// its restricted-header rule (five matches per request) read neither.
    pub fn plan_matched_var(&mut self) {
        let all = crate::fold::first_links_read_earlier_matches(self);
        let reads = |m: &Macro| {
            m.references()
                .any(|(v, _)| matches!(v, Var::MatchedVar | Var::MatchedVarName))
        };
        for rule in &mut self.rules {
            rule.tracks_matched_var = all
                || rule.links.iter().any(|l| {
                    l.targets
                        .iter()
                        .any(|t| matches!(t.var, Var::MatchedVar | Var::MatchedVarName))
                        || l.operator.argument().is_some_and(reads)
                        || l.effects.iter().any(|e| match e {
                            Effect::SetVar { key, op, .. } => {
                                reads(key) || op.value().is_some_and(reads)
                            }
                            Effect::SetEnv(k, v) => reads(k) || reads(v),
                            Effect::InitCol(_) | Effect::Ctl(_) => false,
                        })
                });
        }
    }

    /// Gives a bit in what is remembered of values (see [`crate::recall`]) to each link
    /// whose verdict on a value depends on the value alone (its operator argument, if any,
    /// is a constant) and that inspects values that stay the same during a transaction,
    /// but the rules tagged above `paranoia_level`, which CRS skips at that level. Runs
    /// after [`RuleSet::plan_prefilter`], whose groups it lists; planned again when
    /// arguments have been decided at load (see [`crate::fold`]).
    pub fn plan_recall(&mut self, paranoia_level: u8) {
        // The links of a group, and the groups of a target set, get consecutive bits, so
        // that whether all of them are known to find nothing in a value is a test of one
        // range.
        let mut planned: Vec<(u32, u32, usize, usize)> = Vec::new();
        self.recall_targets.clear();
        self.recall_target_phases.clear();
        self.recall_target_headers.clear();
        let mut rows: HashMap<String, u32> = HashMap::new();
        for (r, rule) in self.rules.iter_mut().enumerate() {
            let above = is_above(rule, paranoia_level);
            let phase_bit = phase_bit(rule.phase);
            for (l, link) in rule.links.iter_mut().enumerate() {
                link.recall = None;
                let constant = link
                    .operator
                    .argument()
                    .is_none_or(|m| m.literal().is_some());
                let recallable = !above && constant && link.targets.iter().any(is_steady);
                link.steady = recallable && link.targets.iter().all(is_steady);
                link.recall_rows.clear();
                if link.steady {
                    for t in &link.targets {
                        let target = Target {
                            var: t.var,
                            selector: t.selector.clone(),
                            count: false,
                            exclusions: Vec::new(),
                        };
                        let next = u32::try_from(self.recall_targets.len()).unwrap_or(u32::MAX);
                        let row = *rows.entry(target_key(&target)).or_insert(next);
                        if row == next {
                            self.recall_targets.push(target);
                            self.recall_target_phases.push(0);
                        }
                        self.recall_target_phases[row as usize] |= phase_bit;
                        link.recall_rows.push(row);
                    }
                }
                if recallable {
                    let group = link.filter.and_then(|f| f.group);
                    let set = group.map_or(u32::MAX, |g| self.group_sets[g as usize]);
                    planned.push((set, group.unwrap_or(u32::MAX), r, l));
                }
            }
        }
        planned.sort_unstable();
        self.group_links = vec![Vec::new(); self.groups];
        self.set_links = vec![(u32::MAX, 0); self.set_groups.len()];
        for (bit, &(set, group, r, l)) in (0u32..).zip(&planned) {
            let link = &mut self.rules[r].links[l];
            link.recall = Some(bit);
            if let Some((first, count)) = self.set_links.get_mut(set as usize) {
                *first = (*first).min(bit);
                *count += 1;
            }
            if let (Some(links), Some(filter)) =
                (self.group_links.get_mut(group as usize), link.filter)
            {
                links.push((bit, filter));
            }
        }
        self.recall_words = planned.len().div_ceil(64);
        // Per link with a bit: the targets it reads (when steady) and the alphabets that
        // rule it out, each a row of `recall_words` words.
        let words = self.recall_words;
        self.recall_target_readers = vec![0; self.recall_targets.len() * words];
        self.alphabet_rows = vec![0; recall::ALPHABETS.len() * words];
        let mark = |rows: &mut [u64], row: usize, bit: u32| {
            rows[row * words + (bit / 64) as usize] |= 1 << (bit % 64);
        };
        for link in self.rules.iter().flat_map(|r| &r.links) {
            let Some(bit) = link.recall else { continue };
            if link.steady {
                for &row in &link.recall_rows {
                    mark(&mut self.recall_target_readers, row as usize, bit);
                }
            }
            let alphabets = link.can_find_over(&recall::ALPHABETS);
            for (a, _) in alphabets.iter().enumerate().filter(|(_, can)| !**can) {
                mark(&mut self.alphabet_rows, a, bit);
            }
        }
        self.plan_phase_rows();
    }

    /// Lists the rows of [`RuleSet::recall_targets`] each phase reads, and those it works
    /// out itself (not those of the header set), from [`RuleSet::recall_target_phases`] and
    /// [`RuleSet::recall_target_headers`].
    fn plan_phase_rows(&mut self) {
        let rows = |bits: u8, learned: bool| -> Vec<u32> {
            (0u32..)
                .zip(&self.recall_target_phases)
                .filter(|&(row, &phases)| {
                    phases & bits != 0
                        && !(learned && self.recall_target_headers.get(row as usize) == Some(&true))
                })
                .map(|(row, _)| row)
                .collect()
        };
        self.recall_phase_rows = (0..=8)
            .map(|p| {
                let bits = if p == 8 { u8::MAX } else { 1 << p };
                PhaseRows {
                    read: rows(bits, false),
                    learned: rows(bits, true),
                }
            })
            .collect();
    }

    /// The rows of [`RuleSet::recall_targets`] read while `phase_bits` (one phase's bit,
    /// or every bit: outside the phases) is the phase.
    pub(crate) fn phase_rows(&self, phase_bits: u8) -> &PhaseRows {
        let index = if phase_bits.count_ones() == 1 {
            phase_bits.trailing_zeros() as usize
        } else {
            8
        };
        &self.recall_phase_rows[index]
    }

    /// Makes [`RuleSet::recall_target_phases`] those of the rules the walk may evaluate
    /// (`evaluated`, per rule index, see [`crate::walk::Walk::evaluated_rules`]): a target
    /// only other rules read has no row worked out per request. Then marks the targets
    /// of [`RuleSet::recall_target_headers`].
    pub(crate) fn keep_rows_of(&mut self, evaluated: &[bool]) {
        self.recall_target_phases.fill(0);
        for (rule, _) in self.rules.iter().zip(evaluated).filter(|(_, e)| **e) {
            let bit = phase_bit(rule.phase);
            for &row in rule.links.iter().flat_map(|l| &l.recall_rows) {
                self.recall_target_phases[row as usize] |= bit;
            }
        }
        self.recall_target_headers = self
            .recall_targets
            .iter()
            .zip(&self.recall_target_phases)
            .map(|(t, &phases)| phases != 0 && t.var.is_of_header_set())
            .collect();
        self.plan_phase_rows();
    }
}

/// The rows of [`RuleSet::recall_targets`] one phase reads.
#[derive(Debug, Default)]
pub struct PhaseRows {
    /// Every row its links read.
    pub read: Vec<u32>,
    /// Those it works out itself: all but the header set's (see
    /// [`RuleSet::recall_target_headers`]).
    pub learned: Vec<u32>,
}

/// Phase `phase` (1-5) as a bit of [`RuleSet::recall_target_phases`].
pub fn phase_bit(phase: u8) -> u8 {
    1 << (phase.clamp(1, 8) - 1)
}

/// Whether a rule is tagged `paranoia-level/N` above `paranoia_level`.
fn is_above(rule: &Rule, paranoia_level: u8) -> bool {
    rule.tags.iter().any(|t| {
        t.strip_prefix("paranoia-level/")
            .and_then(|n| n.parse::<u8>().ok())
            .is_some_and(|n| n > paranoia_level)
    })
}

/// Builds one prefilter part from its literal sets (set `n` has bit `n`).
fn prefilter_part(sets: Vec<Vec<Vec<u8>>>) -> PrefilterPart {
    let words = sets.len().div_ceil(64);
    let mut bytes = vec![0u64; 256 * words];
    let mut long = Vec::new();
    for (bit, set) in (0u32..).zip(sets) {
        for lit in set {
            if let [b] = lit[..] {
                for c in [b.to_ascii_lowercase(), b.to_ascii_uppercase()] {
                    bytes[usize::from(c) * words + (bit / 64) as usize] |= 1 << (bit % 64);
                }
            } else {
                long.push((lit, bit));
            }
        }
    }
    // A nibble's row for a pattern is the union of the rows of the pattern's bytes.
    let row = |b: usize| &bytes[b * words..(b + 1) * words];
    let nibbles: Vec<u8> = (0u8..64)
        .filter(|&n| (0..4).any(|i| row(usize::from(n) * 4 + i).iter().any(|&w| w != 0)))
        .collect();
    let mut nibble_rows = vec![0u64; nibbles.len() * 16 * words];
    for (k, &n) in nibbles.iter().enumerate() {
        for pattern in 0..16 {
            let out = (k * 16 + pattern) * words;
            for i in (0..4).filter(|i| pattern & (1 << i) != 0) {
                for (o, r) in nibble_rows[out..out + words]
                    .iter_mut()
                    .zip(row(usize::from(n) * 4 + i))
                {
                    *o |= r;
                }
            }
        }
    }
    PrefilterPart {
        matcher: automaton(long),
        nibbles,
        nibble_rows,
        words,
    }
}

/// Fills in the rule indices of every `ctl` that names rules.
fn resolve_ctl_rules(rules: &mut [Rule]) {
    let named = |rules: &[Rule], r: &RuleRef| -> Vec<usize> {
        (0..rules.len())
            .filter(|&i| rules[i].is_named_by(r))
            .collect()
    };
    for i in 0..rules.len() {
        for l in 0..rules[i].links.len() {
            for e in 0..rules[i].links[l].effects.len() {
                let resolved = match &rules[i].links[l].effects[e] {
                    Effect::Ctl(Ctl::RemoveRules(r, _) | Ctl::RemoveTarget(r, _, _, _)) => {
                        named(rules, r)
                    }
                    _ => continue,
                };
                if let Effect::Ctl(Ctl::RemoveRules(_, idx) | Ctl::RemoveTarget(_, idx, _, _)) =
                    &mut rules[i].links[l].effects[e]
                {
                    *idx = resolved;
                }
            }
        }
    }
}

/// Fills in where evaluation goes on after each rule with `skipAfter`: again whenever
/// items are removed from a phase, since the positions move.
pub fn resolve_skip_after(set: &mut RuleSet) {
    for items in &set.phases {
        let mut markers: HashMap<&str, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            if let Item::Marker(m) = item {
                markers.entry(m).or_insert(i);
            }
        }
        for (i, item) in items.iter().enumerate() {
            let Item::Rule(r) = *item else { continue };
            let rule = &mut set.rules[r];
            rule.skip_to = rule.skip_after.as_deref().map(|m| match markers.get(m) {
                Some(&at) if at > i => at + 1,
                _ => items.len(),
            });
        }
    }
}

/// Builds a [`RuleSet`] from directives, collecting every error.
pub struct Builder<'a> {
    data: DataFiles<'a>,
    set: RuleSet,
    defaults: HashMap<u8, Actions>,
    pending: Option<(Actions, Vec<Link>, Location)>,
    deferred: Vec<Directive>,
    steps: HashMap<ChainStep, u32>,
    /// Every error found.
    pub errors: Vec<RuleError>,
}

impl<'a> Builder<'a> {
    /// A builder resolving `@pmFromFile` files as `data` says.
    pub fn new(data: DataFiles<'a>) -> Self {
        Builder {
            data,
            set: RuleSet::default(),
            defaults: HashMap::new(),
            pending: None,
            deferred: Vec::new(),
            steps: HashMap::new(),
            errors: Vec::new(),
        }
    }

    /// Adds the directives of one source.
    pub fn add(&mut self, directives: Vec<Directive>) {
        for d in directives {
            if let Err(e) = self.directive(d) {
                self.errors.push(e);
            }
        }
        if let Some((_, _, loc)) = self.pending.take() {
            self.errors.push(loc.error(ErrorKind::Syntax(
                "the last rule of the source ends with `chain`".into(),
            )));
        }
    }

    /// Applies the deferred target updates and removals, then returns the rule set.
    pub fn finish(mut self) -> Result<RuleSet, Vec<RuleError>> {
        for d in std::mem::take(&mut self.deferred) {
            if let Err(e) = self.update(&d) {
                self.errors.push(e);
            }
        }
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let mut set = self.set;
        resolve_ctl_rules(&mut set.rules);
        resolve_skip_after(&mut set);
        Ok(set)
    }

    fn directive(&mut self, d: Directive) -> Result<(), RuleError> {
        let loc = d.location.clone();
        let err = |k| loc.error(k);
        let arity = |n: usize| {
            if d.args.len() == n {
                Ok(())
            } else {
                Err(err(ErrorKind::Syntax(format!(
                    "{} takes {n} argument(s), got {}",
                    d.name,
                    d.args.len()
                ))))
            }
        };
        let name = d.name.to_ascii_lowercase();
        if self.pending.is_some() && name != "secrule" {
            return Err(err(ErrorKind::Syntax(format!(
                "{} follows a rule that ends with `chain`",
                d.name
            ))));
        }
        match name.as_str() {
            "secrule" => {
                if d.args.len() != 2 && d.args.len() != 3 {
                    return Err(err(ErrorKind::Syntax(format!(
                        "SecRule takes 2 or 3 arguments, got {}",
                        d.args.len()
                    ))));
                }
                let raw_vars = split_variables(&d.args[0], &loc)?;
                let op = split_operator(&d.args[1]);
                let actions = match d.args.get(2) {
                    Some(a) => split_actions(a, &loc)?,
                    None => Vec::new(),
                };
                let actions = parse_actions(&actions).map_err(err)?;
                let parsed = raw_vars
                    .iter()
                    .map(ParsedTarget::compile)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(err)?;
                let targets = fold_targets(parsed).map_err(err)?;
                let operator = Operator::compile(&op.name, &op.argument, self.data).map_err(err)?;
                self.push_link(actions, targets, operator, op.negated, loc)
            }
            "secaction" => {
                arity(1)?;
                let actions = parse_actions(&split_actions(&d.args[0], &loc)?).map_err(err)?;
                self.push_link(actions, Vec::new(), Operator::Unconditional, false, loc)
            }
            "secmarker" => {
                arity(1)?;
                for phase in &mut self.set.phases {
                    phase.push(Item::Marker(d.args[0].clone()));
                }
                Ok(())
            }
            "secdefaultaction" => {
                arity(1)?;
                let a = parse_actions(&split_actions(&d.args[0], &loc)?).map_err(err)?;
                let phase = a.phase.ok_or_else(|| {
                    err(ErrorKind::Syntax("SecDefaultAction needs a phase".into()))
                })?;
                if a.disruptive.is_none() {
                    return Err(err(ErrorKind::Syntax(
                        "SecDefaultAction needs a disruptive action".into(),
                    )));
                }
                self.defaults.insert(phase, a);
                Ok(())
            }
            "seccomponentsignature" => {
                arity(1)?;
                self.set.signatures.push(d.args[0].clone());
                Ok(())
            }
            "secruleupdatetargetbyid"
            | "secruleupdatetargetbytag"
            | "secruleupdatetargetbymsg"
            | "secruleremovebyid"
            | "secruleremovebytag"
            | "secruleremovebymsg" => {
                self.deferred.push(d);
                Ok(())
            }
            _ => Err(err(ErrorKind::UnsupportedDirective(d.name.clone()))),
        }
    }

    /// The id of a transformation chain in the trie, adding its steps as needed.
    fn chain(&mut self, transforms: &[Transform]) -> u32 {
        let mut id = 0;
        for &transform in transforms {
            let step = ChainStep {
                parent: id,
                transform,
            };
            id = match self.steps.get(&step) {
                Some(&known) => known,
                None => {
                    let next = u32::try_from(self.set.chains.len()).unwrap_or(u32::MAX);
                    let triggers = self.set.chain_triggers[id as usize]
                        .zip(transform.triggers())
                        .map(|(a, b)| [a[0] | b[0], a[1] | b[1], a[2] | b[2], a[3] | b[3]]);
                    self.set.chains.push(Some(step));
                    self.set.chain_triggers.push(triggers);
                    self.steps.insert(step, next);
                    next
                }
            };
        }
        id
    }

    fn push_link(
        &mut self,
        actions: Actions,
        targets: Vec<Target>,
        operator: Operator,
        negated: bool,
        loc: Location,
    ) -> Result<(), RuleError> {
        let starter_phase = match &self.pending {
            Some((a, _, _)) => a.phase.unwrap_or(2),
            None => actions.phase.unwrap_or(2),
        };
        let default = self.defaults.get(&starter_phase);
        let mut transforms = Vec::new();
        if !actions.t_none
            && let Some(d) = default
        {
            transforms.extend_from_slice(&d.transforms);
        }
        transforms.extend_from_slice(&actions.transforms);
        let chain = self.chain(&transforms);
        let link = Link {
            targets,
            operator,
            negated,
            transforms,
            chain,
            filter: None,
            capture: actions.capture,
            multi_match: actions.multi_match,
            effects: actions.effects.clone(),
            recall: None,
            steady: false,
            recall_rows: Vec::new(),
        };
        let chain = actions.chain;
        match self.pending.take() {
            None => {
                if actions.id.is_none() {
                    return Err(loc.error(ErrorKind::Syntax("a rule without an id".into())));
                }
                self.pending = Some((actions, vec![link], loc));
            }
            Some((starter, mut links, start_loc)) => {
                if actions.id.is_some()
                    || actions.phase.is_some()
                    || actions.disruptive.is_some()
                    || actions.skip_after.is_some()
                {
                    return Err(loc.error(ErrorKind::Syntax(
                        "a chained rule may not set id, phase, skipAfter or a disruptive action"
                            .into(),
                    )));
                }
                links.push(link);
                self.pending = Some((starter, links, start_loc));
            }
        }
        if !chain && let Some((starter, links, start_loc)) = self.pending.take() {
            self.finish_rule(starter, links, start_loc)?;
        }
        Ok(())
    }

    fn finish_rule(
        &mut self,
        a: Actions,
        links: Vec<Link>,
        loc: Location,
    ) -> Result<(), RuleError> {
        let phase = a.phase.unwrap_or(2);
        let default = self.defaults.get(&phase);
        let default_disruptive = default
            .and_then(|d| d.disruptive)
            .filter(|d| *d != Disruptive::Block)
            .unwrap_or(Disruptive::Pass);
        let disruptive = match a.disruptive {
            None | Some(Disruptive::Block) => default_disruptive,
            Some(d) => d,
        };
        let id = a.id.unwrap_or_default();
        if self.set.rules.iter().any(|r| r.id == id) {
            return Err(loc.error(ErrorKind::Invalid {
                what: "id",
                detail: format!("{id} is used twice"),
            }));
        }
        let rule = Rule {
            id,
            phase,
            links,
            msg: a.msg,
            logdata: a.logdata,
            tags: a.tags,
            severity: a.severity,
            log: a.log.or(default.and_then(|d| d.log)).unwrap_or(true),
            disruptive,
            status: a.status.or(default.and_then(|d| d.status)),
            skip_after: a.skip_after,
            skip_to: None,
            skip: a.skip,
            location: loc,
            tracks_matched_var: true,
        };
        let idx = self.set.rules.len();
        self.set.rules.push(rule);
        self.set.phases[usize::from(phase - 1)].push(Item::Rule(idx));
        Ok(())
    }

    fn update(&mut self, d: &Directive) -> Result<(), RuleError> {
        let loc = &d.location;
        let name = d.name.to_ascii_lowercase();
        let Some(selector) = d.args.first() else {
            return Err(loc.error(ErrorKind::Syntax(format!("{} needs an argument", d.name))));
        };
        let by = |s: &str| -> Result<RuleRef, RuleError> {
            Ok(if name.ends_with("byid") {
                RuleRef::Ids(parse_id_ranges(s).map_err(|e| loc.error(e))?)
            } else if name.ends_with("bytag") {
                RuleRef::Tag(s.to_string())
            } else {
                RuleRef::Msg(s.to_string())
            })
        };
        if name.starts_with("secruleremove") {
            let refs = d
                .args
                .iter()
                .map(|a| by(a))
                .collect::<Result<Vec<_>, _>>()?;
            let removed: Vec<usize> = (0..self.set.rules.len())
                .filter(|&i| refs.iter().any(|r| self.set.rules[i].is_named_by(r)))
                .collect();
            for phase in &mut self.set.phases {
                phase.retain(|it| !matches!(it, Item::Rule(i) if removed.contains(i)));
            }
            return Ok(());
        }
        if d.args.len() != 2 {
            return Err(loc.error(ErrorKind::UnsupportedDirective(format!(
                "{} with {} arguments (target replacement)",
                d.name,
                d.args.len()
            ))));
        }
        let r = by(selector)?;
        let raws = split_variables(&d.args[1], loc)?;
        let parsed = raws
            .iter()
            .map(ParsedTarget::compile)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| loc.error(e))?;
        for rule in self.set.rules.iter_mut().filter(|x| x.is_named_by(&r)) {
            let starter = &mut rule.links[0];
            for p in &parsed {
                if p.negated {
                    add_exclusion(
                        &mut starter.targets,
                        p.target.var,
                        p.target.selector.clone(),
                    );
                } else {
                    starter.targets.push(p.target.clone());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{all_bits, any_bits};
    use crate::engine::{AppProfile, WafEngine, WafSettings};
    use crate::recall::ALPHABETS;

    /// Sets of random literals of `shortest` bytes or more over a few bytes (either case,
    /// overlapping ones likely), scanned by the part they make, against a plain
    /// case-insensitive substring search; returns the part.
    fn scan_agrees_with_a_substring_search(
        sets: usize,
        literals_per_set: u64,
        shortest: u64,
    ) -> super::PrefilterPart {
        let mut next = crate::xorshift(0x5DEE_CE66_D1CE_4E5B);
        let alphabet = b"abcAB<-";
        let mut word = |min: u64, max: u64| -> Vec<u8> {
            let len = min + next() % (max - min + 1);
            (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect()
        };
        let sets: Vec<Vec<Vec<u8>>> = (0..sets)
            .map(|n| {
                let count = 1 + n as u64 % literals_per_set;
                (0..count).map(|_| word(shortest, 8)).collect()
            })
            .collect();
        let part = super::prefilter_part(sets.clone());
        for _ in 0..200 {
            let value = word(0, 24);
            let mut scanned = vec![0u64; part.words];
            part.scan(
                &value,
                crate::transforms::bytes_present(&value),
                &mut scanned,
            );
            let lower = value.to_ascii_lowercase();
            for (bit, set) in sets.iter().enumerate() {
                let found = set.iter().any(|l| {
                    let l = l.to_ascii_lowercase();
                    lower.windows(l.len()).any(|w| w == l.as_slice())
                });
                let marked = scanned[bit / 64] & (1 << (bit % 64)) != 0;
                assert_eq!(marked, found, "set {bit} {set:?} in {value:?}");
            }
        }
        part
    }

    #[test]
    fn a_scan_marks_the_sets_of_every_literal_in_the_value_with_a_dfa() {
        let part = scan_agrees_with_a_substring_search(300, 3, 1);
        assert!(matches!(part.matcher, Some((super::Literals::Dfa(..), _))));
    }

    #[test]
    fn a_scan_marks_the_sets_of_every_literal_in_the_value_with_an_nfa() {
        // More distinct literals than a DFA is built for.
        let part = scan_agrees_with_a_substring_search(super::DFA_LITERALS + 500, 1, 4);
        assert!(matches!(part.matcher, Some((super::Literals::Nfa(..), _))));
    }

    #[test]
    fn no_crs_link_finds_anything_in_values_of_an_alphabet_that_rules_it_out() {
        let crs =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/crs");
        let settings = WafSettings {
            paranoia_level: 4,
            executing_paranoia_level: 4,
            app_profile: Some(AppProfile::Jellyfin),
            ..WafSettings::default()
        };
        let engine = WafEngine::new(&settings, &crs).unwrap_or_else(|e| panic!("{e}"));
        let rules = &engine.compiled().rules;
        let mut next = crate::xorshift(0x9E37_79B9_7F4A_7C15u64);
        let (mut checked, mut ruled_out) = (0, 0);
        for rule in &rules.rules {
            for link in rule.links.iter() {
                let Some(bit) = link.recall else { continue };
                let arg = link
                    .operator
                    .argument()
                    .and_then(|m| m.literal())
                    .unwrap_or_default()
                    .as_bytes();
                for (a, alphabet) in ALPHABETS.iter().enumerate() {
                    let word = rules.alphabet_rows[a * rules.recall_words + (bit / 64) as usize];
                    checked += 1;
                    if word & (1 << (bit % 64)) == 0 {
                        continue;
                    }
                    ruled_out += 1;
                    let bytes: Vec<u8> = (0..=255u8)
                        .filter(|&b| crate::transforms::holds(alphabet, b))
                        .collect();
                    // The link's own literals, in either case, where the alphabet has their
                    // bytes: what it looks for, if anything, is made of them.
                    let has = |b: u8| crate::transforms::holds(alphabet, b);
                    let literals: Vec<Vec<u8>> = link
                        .operator
                        .literals()
                        .unwrap_or_default()
                        .into_iter()
                        .flatten()
                        .flat_map(|l| [l.to_vec(), l.to_ascii_uppercase()])
                        .filter(|l| l.iter().all(|&b| has(b)))
                        .collect();
                    for _ in 0..200 {
                        let len = (next() % 48) as usize;
                        let mut value: Vec<u8> = (0..len)
                            .map(|_| bytes[(next() % bytes.len() as u64) as usize])
                            .collect();
                        if !literals.is_empty() && next().is_multiple_of(2) {
                            let l = &literals[(next() % literals.len() as u64) as usize];
                            let at = (next() as usize) % (value.len() + 1);
                            value.splice(at..at, l.iter().copied());
                        }
                        let values = if link.multi_match {
                            crate::transforms::apply_chain_multi(&link.transforms, &value)
                        } else {
                            let chain = link.transforms.iter();
                            vec![chain.fold(value.clone(), |v, t| t.apply(&v).into_owned())]
                        };
                        let finds = values
                            .iter()
                            .any(|v| link.operator.matches(v, arg, None) != link.negated);
                        assert!(
                            !finds,
                            "rule {} finds something in {:?}, of alphabet {a} which rules it out",
                            rule.id,
                            String::from_utf8_lossy(&value)
                        );
                    }
                }
            }
        }
        // Most links are ruled out by some alphabet: the analysis is not vacuous.
        assert!(ruled_out * 2 > checked, "{ruled_out} of {checked}");
    }

    /// Per rule id, whether it sets `MATCHED_VAR` on each match, for `rules` alone.
    fn tracking(rules: &str) -> Vec<(u32, bool)> {
        let engine = WafEngine::of_rules(rules);
        let c = engine.compiled();
        c.rules
            .rules
            .iter()
            .map(|r| (r.id, r.tracks_matched_var))
            .collect()
    }

    #[test]
    fn only_rules_whose_links_read_the_matched_variable_set_it_on_each_match() {
        let rules = "SecRule ARGS \"@rx a\" \"id:1,phase:1,pass,msg:'%{MATCHED_VAR}',setvar:tx.a=%{tx.0}\"\n\
             SecRule ARGS \"@rx a\" \"id:2,phase:1,pass,chain\"\n\
             SecRule MATCHED_VAR_NAME \"@rx b\" \"t:none\"\n\
             SecRule ARGS \"@rx a\" \"id:3,phase:1,pass,setvar:'tx.%{MATCHED_VAR_NAME}=1'\"\n\
             SecRule ARGS \"@rx a\" \"id:4,phase:1,pass,chain\"\n\
             SecRule ARGS \"@streq %{MATCHED_VAR}\" \"t:none\"\n\
             SecAction \"id:5,phase:1,pass,setenv:x=%{matched_var}\"";
        assert_eq!(
            tracking(rules),
            [(1, false), (2, true), (3, true), (4, true), (5, true)]
        );
        // A first link that reads what the rule before it matched: every rule sets it.
        let rules = "SecRule ARGS \"@rx a\" \"id:1,phase:1,pass\"\n\
             SecRule MATCHED_VAR \"@rx a\" \"id:2,phase:1,pass\"";
        assert_eq!(tracking(rules), [(1, true), (2, true)]);
    }

    #[test]
    fn all_bits_and_any_bits_test_exactly_the_range() {
        // Every range of up to 192 bits over three words, in sets with every bit set but one
        // (or none) and with no bit set but one (or none), against the bit-by-bit answers.
        for flipped in (0..192).map(Some).chain([None]) {
            for fill in [u64::MAX, 0] {
                let mut set = [fill; 3];
                if let Some(b) = flipped {
                    set[b / 64] ^= 1 << (b % 64);
                }
                let bit = |b: u32| set[(b / 64) as usize] & (1 << (b % 64)) != 0;
                for first in 0..192u32 {
                    for count in 0..=(192 - first) {
                        let range = first..first + count;
                        assert_eq!(
                            all_bits(&set, first, count),
                            range.clone().all(bit),
                            "all {fill:x} {flipped:?} {first} {count}"
                        );
                        assert_eq!(
                            any_bits(&set, first, count),
                            range.clone().any(bit),
                            "any {fill:x} {flipped:?} {first} {count}"
                        );
                    }
                }
            }
        }
    }
}
