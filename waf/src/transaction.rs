//! One request's state (collections, `TX`, captures, matches, scores) and the execution of
//! the rules of each phase.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::net::IpAddr;
use std::sync::Arc;

use crate::actions::{AllowScope, BodyProcessor, Ctl, Disruptive, Effect, EngineMode, SetOp};
use crate::body::{self, Parsed};
use crate::engine::{Compiled, Decision, Match, RequestFacts, Verdict};
use crate::header_sets;
use crate::operators::atoi;
use crate::phases::{self, PhaseKey};
use crate::recall;
use crate::replay::{self, Change, Inputs, Reads};
use crate::rule::{
    CAPTURE_KEYS, Filter, Link, Prefilter, Rule, RuleSet, all_bits, any_bits, has_bits,
};
use crate::transforms::{ByteSet, Transform, apply_chain_multi, bytes_present, disjoint};
use crate::variables::{KeyRegex, Selector, Target, Var};
use crate::walk::{self, Kind};

/// A keyed value of a collection.
#[derive(Clone, Debug)]
struct Entry {
    key: String,
    /// The key in lower case, when that differs from the key (most header names come
    /// lower case already): what selectors match.
    key_lower: Option<String>,
    value: Vec<u8>,
    /// The slots (see [`Item2::slot`]) of the value and of the key.
    value_slot: u32,
    key_slot: u32,
}

impl Entry {
    /// An entry, taking two slots from `slots`.
    #[inline]
    fn new(key: impl Into<String>, value: impl Into<Vec<u8>>, slots: &mut u32) -> Entry {
        let key = key.into();
        *slots += 2;
        Entry {
            key_lower: key
                .bytes()
                .any(|b| b.is_ascii_uppercase())
                .then(|| key.to_ascii_lowercase()),
            key,
            value: value.into(),
            value_slot: *slots - 2,
            key_slot: *slots - 1,
        }
    }

    /// The key in lower case.
    fn lower(&self) -> &str {
        self.key_lower.as_deref().unwrap_or(&self.key)
    }
}

/// One value a target yields.
struct Item2<'a> {
    /// The value's number in this transaction, the key of its transformations and
    /// prefilter results: a value that stays the same while a phase runs has one for
    /// good (a new value gets a new one); `NONE` for values that change (`TX`, the
    /// matched variables), which are transformed afresh each time.
    slot: u32,
    key: &'a str,
    value: Cow<'a, [u8]>,
}

impl Item2<'_> {
    fn cacheable(&self) -> bool {
        self.slot != NONE
    }
}

/// A removal of targets in force in a transaction, by where it is written in the engine: a
/// `ctl` that ran (its rule index, link and action) or a path exclusion that applies. Kept
/// once, not copied to each rule it names (CRS's 941010 names the 33 XSS rules on nearly
/// every request); a starter link looks its rule up in the removal's sorted rule list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TargetRemoval {
    /// `ctl:ruleRemoveTarget*`.
    Ctl {
        rule: usize,
        link: usize,
        effect: usize,
    },
    /// A path exclusion of targets.
    Path(usize),
}

/// The removals of targets in force in a transaction.
#[derive(Debug)]
struct Removals {
    list: Vec<TargetRemoval>,
    /// The lowest and highest rule index they name (`(usize::MAX, 0)` for none): a rule
    /// outside is reached by none, which is decided without searching their rule lists
    /// (CRS's 941010 names the XSS rules on nearly every request, and the walk asks about
    /// every rule a request of new values evaluates).
    span: (usize, usize),
    /// The variables they take whole from rules, each with the rules it is taken from as
    /// a range of `rule_bits` (a bit per rule index): the walk asks whether a removal takes
    /// a target whole for each unknown target of each rule it meets within the span, and a
    /// bit answers without reading the removal in the rules.
    whole: Vec<(Var, std::ops::Range<usize>)>,
    /// The bit sets of `whole`, one after the other.
    rule_bits: Vec<u64>,
}

impl Default for Removals {
    fn default() -> Removals {
        Removals {
            list: Vec::new(),
            span: (usize::MAX, 0),
            whole: Vec::new(),
            rule_bits: Vec::new(),
        }
    }
}

impl Removals {
    /// Puts `removal` in force (once); `rules`: the rule indexes it names, sorted;
    /// `whole`: the variables it takes whole from them.
    fn add(&mut self, removal: TargetRemoval, rules: &[usize], whole: impl Iterator<Item = Var>) {
        if self.list.contains(&removal) {
            return;
        }
        self.list.push(removal);
        for var in whole {
            let at = self.rule_bits.len();
            let words = rules.last().map_or(0, |&last| last / 64 + 1);
            self.rule_bits.resize(at + words, 0);
            for &ri in rules {
                self.rule_bits[at + ri / 64] |= 1 << (ri % 64);
            }
            self.whole.push((var, at..at + words));
        }
        if let (Some(&first), Some(&last)) = (rules.first(), rules.last()) {
            self.span = (self.span.0.min(first), self.span.1.max(last));
        }
    }

    /// Whether some removal in force may name rule `ri`.
    fn may_reach(&self, ri: usize) -> bool {
        (self.span.0..=self.span.1).contains(&ri)
    }

    /// Whether a removal in force takes the values of variable `var` whole from rule `ri`.
    fn takes_whole(&self, ri: usize, var: Var) -> bool {
        self.may_reach(ri)
            && self.whole.iter().any(|(v, bits)| {
                removal_reaches(*v, var)
                    && self.rule_bits[bits.clone()]
                        .get(ri / 64)
                        .is_some_and(|w| w & (1 << (ri % 64)) != 0)
            })
    }
}

/// A value that matched. Finished hits go back to [`Memo::spare_hits`], so that the next
/// ones reuse their buffers.
#[derive(Clone, Debug, Default)]
struct Hit {
    name: String,
    value: Vec<u8>,
    /// `capture`: the groups of this match (`TX.0`-`TX.9`).
    captures: Option<Vec<Vec<u8>>>,
}

impl Hit {
    /// A match of `value` under the name `name` writes, in the buffers of a finished hit
    /// from `spare` when there is one.
    fn reusing(
        spare: &mut Vec<Hit>,
        name: impl FnOnce(&mut String),
        value: &[u8],
        captures: Option<Vec<Vec<u8>>>,
    ) -> Hit {
        let mut hit = spare.pop().unwrap_or_default();
        hit.name.clear();
        name(&mut hit.name);
        hit.value.clear();
        hit.value.extend_from_slice(value);
        hit.captures = captures;
        hit
    }
}

/// The collections of one transaction.
#[derive(Debug, Default)]
struct Data {
    args_get: Vec<Entry>,
    args_post: Vec<Entry>,
    headers: Vec<Entry>,
    cookies: Vec<Entry>,
    files: Vec<Entry>,
    files_sizes: Vec<Entry>,
    part_headers: Vec<Entry>,
    xml_text: Vec<Vec<u8>>,
    xml_attrs: Vec<Vec<u8>>,
    /// The first slots of the XML text nodes and attribute values.
    xml_text_slot: u32,
    xml_attrs_slot: u32,
    response_headers: Vec<Entry>,
    tx: TxVars,
    /// The `TX` keys written under names built by macros, which the regexes of `TX` targets
    /// have not been matched against at load (see [`KeyRegex::tx_keys`]).
    tx_built: Vec<String>,
    ip: VarMap,
    global: VarMap,
    env: VarMap,
    scalars: Vec<Option<Vec<u8>>>,
    /// Per scalar: the slot of its value (slot 0, the empty value, when never set).
    scalar_slots: Vec<u32>,
    /// The next free slot.
    next_slot: u32,
    matched_vars: Vec<Hit>,
    /// The hits of the link being evaluated (a buffer reused from link to link).
    link_hits: Vec<Hit>,
    rule_id: u32,
    rule_phase: u8,
}

fn keyed<'a>(
    entries: &'a [Entry],
    names: bool,
    t: &Target,
    extra: &[&Selector],
    out: &mut dyn FnMut(Item2<'a>),
) {
    for e in entries {
        let key = e.lower();
        if !t.selector.matches(key)
            || t.exclusions.iter().any(|x| x.matches(key))
            || extra.iter().any(|x| x.matches(key))
        {
            continue;
        }
        out(Item2 {
            slot: if names { e.key_slot } else { e.value_slot },
            key: &e.key,
            value: Cow::Borrowed(if names { e.key.as_bytes() } else { &e.value }),
        });
    }
}

/// A collection of named values (`TX`, `IP`, `GLOBAL`, `ENV`): hashed for the many lookups
/// and updates; read in key order when a target selects more than one key. Keys can come
/// from the request (CRS names `TX` variables after header names), so the hasher is seeded
/// per process; foldhash rather than SipHash, which cost 6% of a request.
pub(crate) type VarMap = HashMap<String, Vec<u8>, foldhash::fast::RandomState>;

/// `TX` of one transaction: what the rules decided at load set, shared by every
/// transaction of the engine (see [`crate::fold`]), under what this transaction has set or
/// deleted. Copying the shared part into each transaction cost more than reading through
/// two tables.
#[derive(Clone, Debug, Default)]
pub(crate) struct TxVars {
    /// The values set at load.
    base: Arc<VarMap>,
    /// This transaction's keys, and keys earlier transactions of the thread set (most
    /// requests set the same fifty or so): kept with their buffers, so that setting them
    /// again allocates nothing.
    own: HashMap<String, Own, foldhash::fast::RandomState>,
}

/// A key of [`TxVars::own`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum Own {
    /// Set by this transaction.
    Set(Vec<u8>),
    /// A key of the base this transaction deleted.
    Deleted,
    /// Not set by this transaction (left by an earlier one, or deleted): reads through to
    /// the base. Keeps its buffer.
    Unset(Vec<u8>),
}

thread_local! {
    /// The `own` tables of finished transactions, for the next ones on the thread.
    static SPARE_TX: std::cell::RefCell<Vec<HashMap<String, Own, foldhash::fast::RandomState>>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The most keys a finished transaction's table may hold to be kept for the next one
/// (keys can be built from request headers: an unusual request must not grow it for good).
const SPARE_TX_KEYS: usize = 256;

/// The most finished hits kept for their buffers from one transaction to the next.
const SPARE_HITS: usize = 256;

impl TxVars {
    /// A transaction's `TX`, starting with `base`.
    pub(crate) fn new(base: Arc<VarMap>) -> TxVars {
        let own = SPARE_TX
            .with(|spare| spare.borrow_mut().pop())
            // About fifty keys are set per request (scores, names built from headers).
            .unwrap_or_else(|| HashMap::with_capacity_and_hasher(64, Default::default()));
        TxVars { base, own }
    }

    /// Hands the table of this transaction's keys to the next transaction on the thread,
    /// every key unset.
    fn give_back(&mut self) {
        let mut own = std::mem::take(&mut self.own);
        if own.len() > SPARE_TX_KEYS || own.capacity() == 0 {
            return;
        }
        for slot in own.values_mut() {
            *slot = match std::mem::replace(slot, Own::Deleted) {
                Own::Set(v) | Own::Unset(v) => Own::Unset(v),
                Own::Deleted => Own::Unset(Vec::new()),
            };
        }
        SPARE_TX.with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < 4 {
                spare.push(own);
            }
        });
    }

    /// A key and its value.
    fn get_key_value(&self, key: &str) -> Option<(&String, &Vec<u8>)> {
        match self.own.get_key_value(key) {
            Some((k, Own::Set(v))) => Some((k, v)),
            Some((_, Own::Deleted)) => None,
            Some((_, Own::Unset(_))) | None => self.base.get_key_value(key),
        }
    }

    /// A key's value.
    pub(crate) fn get(&self, key: &str) -> Option<&Vec<u8>> {
        self.get_key_value(key).map(|(_, v)| v)
    }

    /// Whether this transaction has set or deleted none of `keys` (see
    /// [`crate::fold::Folding::quiet`]).
    fn untouched(&self, keys: &[String]) -> bool {
        keys.iter()
            .all(|key| !matches!(self.own.get(key.as_str()), Some(Own::Set(_) | Own::Deleted)))
    }

    /// Every key and its value, in no order.
    fn iter(&self) -> impl Iterator<Item = (&String, &Vec<u8>)> {
        let own = self.own.iter().filter_map(|(k, v)| match v {
            Own::Set(v) => Some((k, v)),
            Own::Deleted | Own::Unset(_) => None,
        });
        let base = self
            .base
            .iter()
            .filter(|(k, _)| matches!(self.own.get(k.as_str()), None | Some(Own::Unset(_))));
        own.chain(base)
    }

    /// Sets a key to what `fill` writes into its emptied value; returns whether the key
    /// was not set before.
    fn set(&mut self, key: Cow<'_, str>, fill: impl FnOnce(&mut Vec<u8>)) -> bool {
        let (slot, new) = match self.own.get_mut(&*key) {
            Some(slot) => {
                let (buf, new) = match std::mem::replace(slot, Own::Deleted) {
                    Own::Set(v) => (v, false),
                    Own::Deleted => (Vec::new(), true),
                    Own::Unset(v) => (v, !self.base.contains_key(&*key)),
                };
                *slot = Own::Set(buf);
                (slot, new)
            }
            None => {
                let new = !self.base.contains_key(&*key);
                let slot = self
                    .own
                    .entry(key.into_owned())
                    .or_insert(Own::Set(Vec::new()));
                (slot, new)
            }
        };
        if let Own::Set(buf) = slot {
            buf.clear();
            fill(buf);
        }
        new
    }

    /// Adds `delta` to a key's value read as a number (`setvar:tx.key=+n`), in one lookup
    /// of the key where this transaction has set it; returns whether the key was not set
    /// before.
    fn add(&mut self, key: Cow<'_, str>, delta: i64) -> bool {
        if let Some(Own::Set(buf)) = self.own.get_mut(&*key) {
            let n = added(Some(buf), delta);
            buf.clear();
            write_number(buf, n);
            return false;
        }
        let n = added(self.get(&key).map(Vec::as_slice), delta);
        self.set(key, |slot| write_number(slot, n))
    }

    /// Deletes a key.
    fn remove(&mut self, key: &str) {
        let in_base = self.base.contains_key(key);
        match self.own.get_mut(key) {
            Some(slot) => {
                *slot = match std::mem::replace(slot, Own::Deleted) {
                    _ if in_base => Own::Deleted,
                    Own::Set(v) | Own::Unset(v) => Own::Unset(v),
                    Own::Deleted => Own::Unset(Vec::new()),
                };
            }
            None if in_base => {
                self.own.insert(key.to_string(), Own::Deleted);
            }
            None => {}
        }
    }

    /// What this transaction set or deleted, by key.
    fn changes(&self) -> std::collections::BTreeMap<&str, Option<&[u8]>> {
        self.own
            .iter()
            .filter_map(|(k, v)| match v {
                Own::Set(v) => Some((k.as_str(), Some(v.as_slice()))),
                Own::Deleted => Some((k.as_str(), None)),
                Own::Unset(_) => None,
            })
            .collect()
    }

    /// Everything set, as one table: what the rules decided at load leave.
    pub(crate) fn into_map(self) -> VarMap {
        let mut map = (*self.base).clone();
        for (k, v) in self.own {
            match v {
                Own::Set(v) => {
                    map.insert(k, v);
                }
                Own::Deleted => {
                    map.remove(&k);
                }
                Own::Unset(_) => {}
            }
        }
        map
    }
}

/// Two `TX`s are equal when they read the same: the same base, the same changes.
impl PartialEq for TxVars {
    fn eq(&self, other: &TxVars) -> bool {
        self.base == other.base && self.changes() == other.changes()
    }
}

/// A collection [`map_items`] reads.
trait Named {
    fn get_key_value(&self, key: &str) -> Option<(&String, &Vec<u8>)>;
    fn entries(&self) -> impl Iterator<Item = (&String, &Vec<u8>)>;
}

impl Named for VarMap {
    fn get_key_value(&self, key: &str) -> Option<(&String, &Vec<u8>)> {
        HashMap::get_key_value(self, key)
    }
    fn entries(&self) -> impl Iterator<Item = (&String, &Vec<u8>)> {
        self.iter()
    }
}

impl Named for TxVars {
    fn get_key_value(&self, key: &str) -> Option<(&String, &Vec<u8>)> {
        TxVars::get_key_value(self, key)
    }
    fn entries(&self) -> impl Iterator<Item = (&String, &Vec<u8>)> {
        self.iter()
    }
}

/// Gives `out` a named value unless the target's exclusions or `extra` exclude its key.
fn named_item<'a>(
    k: &'a str,
    v: &'a [u8],
    t: &Target,
    extra: &[&Selector],
    out: &mut dyn FnMut(Item2<'a>),
) {
    if t.exclusions.iter().any(|x| x.matches(k)) || extra.iter().any(|x| x.matches(k)) {
        return;
    }
    out(Item2 {
        slot: NONE,
        key: k,
        value: Cow::Borrowed(v),
    });
}

fn map_items<'a>(
    map: &'a impl Named,
    t: &Target,
    extra: &[&Selector],
    out: &mut dyn FnMut(Item2<'a>),
) {
    let mut push = |k: &'a String, v: &'a Vec<u8>| named_item(k, v, t, extra, out);
    match &t.selector {
        Selector::Key(k) => {
            if let Some((k, v)) = map.get_key_value(k) {
                push(k, v);
            }
        }
        sel => {
            let mut selected: Vec<(&'a String, &'a Vec<u8>)> =
                map.entries().filter(|(k, _)| sel.matches(k)).collect();
            selected.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (k, v) in selected {
                push(k, v);
            }
        }
    }
}

impl Data {
    /// The `TX` values a regex selects, in key order: among the literal keys it matched at
    /// load those set now, and the keys built by macros it matches.
    fn tx_selected<'a>(
        &'a self,
        re: &KeyRegex,
        t: &Target,
        extra: &[&Selector],
        out: &mut dyn FnMut(Item2<'a>),
    ) {
        let mut selected: Vec<(&'a String, &'a Vec<u8>)> =
            Vec::with_capacity(re.tx_keys.len() + self.tx_built.len());
        selected.extend(
            re.tx_keys
                .iter()
                .chain(self.tx_built.iter().filter(|k| re.is_match(k)))
                .filter_map(|k| self.tx.get_key_value(k)),
        );
        if !self.tx_built.is_empty() {
            selected.sort_unstable_by(|a, b| a.0.cmp(b.0));
            selected.dedup_by(|a, b| a.0 == b.0);
        }
        for (k, v) in selected {
            named_item(k, v, t, extra, out);
        }
    }

    /// Calls `out` with each value a target selects, but those `extra` excludes.
    fn items<'a>(&'a self, t: &Target, extra: &[&Selector], out: &mut dyn FnMut(Item2<'a>)) {
        let list = |v: &'a [Vec<u8>], first: u32, out: &mut dyn FnMut(Item2<'a>)| {
            for (i, x) in (first..).zip(v) {
                out(Item2 {
                    slot: i,
                    key: "",
                    value: Cow::Borrowed(x),
                });
            }
        };
        match t.var {
            Var::Args => {
                keyed(&self.args_get, false, t, extra, out);
                keyed(&self.args_post, false, t, extra, out);
            }
            Var::ArgsGet => keyed(&self.args_get, false, t, extra, out),
            Var::ArgsPost => keyed(&self.args_post, false, t, extra, out),
            Var::ArgsNames => {
                keyed(&self.args_get, true, t, extra, out);
                keyed(&self.args_post, true, t, extra, out);
            }
            Var::ArgsGetNames => keyed(&self.args_get, true, t, extra, out),
            Var::ArgsPostNames => keyed(&self.args_post, true, t, extra, out),
            Var::RequestHeaders => keyed(&self.headers, false, t, extra, out),
            Var::RequestHeadersNames => keyed(&self.headers, true, t, extra, out),
            Var::RequestCookies => keyed(&self.cookies, false, t, extra, out),
            Var::RequestCookiesNames => keyed(&self.cookies, true, t, extra, out),
            Var::Files => keyed(&self.files, false, t, extra, out),
            Var::FilesNames => keyed(&self.files, true, t, extra, out),
            Var::FilesSizes => keyed(&self.files_sizes, false, t, extra, out),
            Var::MultipartPartHeaders => keyed(&self.part_headers, false, t, extra, out),
            Var::ResponseHeaders => keyed(&self.response_headers, false, t, extra, out),
            Var::ResponseHeadersNames => keyed(&self.response_headers, true, t, extra, out),
            Var::Xml => match &t.selector {
                Selector::Key(k) if k == "//@*" => list(&self.xml_attrs, self.xml_attrs_slot, out),
                Selector::Key(k) if k == "/*" => list(&self.xml_text, self.xml_text_slot, out),
                _ => {
                    list(&self.xml_text, self.xml_text_slot, out);
                    list(&self.xml_attrs, self.xml_attrs_slot, out);
                }
            },
            Var::Tx => match &t.selector {
                Selector::Regex(re) => self.tx_selected(re, t, extra, out),
                _ => map_items(&self.tx, t, extra, out),
            },
            Var::Ip => map_items(&self.ip, t, extra, out),
            Var::Global => map_items(&self.global, t, extra, out),
            Var::Env => map_items(&self.env, t, extra, out),
            Var::Rule => {
                if let Some(v) = self.rule_value(&t.selector) {
                    out(Item2 {
                        slot: NONE,
                        key: "",
                        value: Cow::Owned(v),
                    });
                }
            }
            Var::MatchedVars | Var::MatchedVarsNames => {
                for h in &self.matched_vars {
                    let key = h.name.split_once(':').map_or("", |(_, k)| k);
                    if !t.selector.matches(&key.to_ascii_lowercase()) {
                        continue;
                    }
                    out(Item2 {
                        slot: NONE,
                        key,
                        value: if t.var == Var::MatchedVars {
                            Cow::Borrowed(&h.value)
                        } else {
                            Cow::Borrowed(h.name.as_bytes())
                        },
                    });
                }
            }
            // Like Coraza, a variable that was never set reads as one empty value.
            v => out(Item2 {
                slot: if v.is_volatile() {
                    NONE
                } else {
                    self.scalar_slots.get(v as usize).copied().unwrap_or(0)
                },
                key: "",
                value: Cow::Borrowed(self.scalar(v).map_or(&b""[..], Vec::as_slice)),
            }),
        }
    }

    fn rule_value(&self, sel: &Selector) -> Option<Vec<u8>> {
        match sel {
            Selector::Key(k) if k == "id" => Some(self.rule_id.to_string().into_bytes()),
            Selector::Key(k) if k == "phase" => Some(self.rule_phase.to_string().into_bytes()),
            _ => None,
        }
    }

    /// The first value of `var` (with `key`), for macros.
    fn lookup(&self, var: Var, key: Option<&str>) -> Option<Cow<'_, [u8]>> {
        match (var, key) {
            (Var::Tx, Some(k)) => return self.tx.get(k).map(|v| Cow::Borrowed(&v[..])),
            (v, None) if !v.is_collection() => {
                return self.scalar(v).map(|v| Cow::Borrowed(&v[..]));
            }
            _ => {}
        }
        let t = Target {
            var,
            selector: key.map_or(Selector::All, |k| Selector::Key(k.to_string())),
            count: false,
            exclusions: Vec::new(),
        };
        if var == Var::Rule {
            return self.rule_value(&t.selector).map(Cow::Owned);
        }
        let mut first = None;
        self.items(&t, &[], &mut |i| {
            if first.is_none() {
                first = Some(i.value);
            }
        });
        first
    }

    /// A scalar's value, the table grown to hold every scalar on first use.
    fn scalar_mut(&mut self, var: Var) -> &mut Option<Vec<u8>> {
        let i = var as usize;
        if self.scalars.len() <= i {
            self.scalars.resize(Var::ALL.len(), None);
            self.scalar_slots.resize(Var::ALL.len(), 0);
        }
        &mut self.scalars[i]
    }

    /// Sets a volatile scalar (one without a slot, e.g. `MATCHED_VAR`) to a copy of
    /// `value`, reusing its buffer: these change on every match.
    fn set_volatile(&mut self, var: Var, value: &[u8]) {
        debug_assert!(var.is_volatile());
        let buf = self.scalar_mut(var).get_or_insert_default();
        buf.clear();
        buf.extend_from_slice(value);
    }

    fn set_scalar(&mut self, var: Var, value: impl Into<Vec<u8>>) {
        self.set_scalar_to(var, value.into());
    }

    /// [`Data::set_scalar`], once in the code: a transaction sets about fifteen scalars
    /// as it starts, and a copy inlined at each call would be code to fetch for each.
    #[inline(never)]
    fn set_scalar_to(&mut self, var: Var, value: Vec<u8>) {
        *self.scalar_mut(var) = Some(value);
        if !var.is_volatile() {
            self.scalar_slots[var as usize] = self.take_slots(1);
        }
    }

    /// Sets a scalar that often holds what `like` holds, sharing its slot when it does,
    /// so that what the memo learns of the value (transformations, scans, known verdicts)
    /// is worked out once.
    fn set_scalar_like(&mut self, var: Var, value: Vec<u8>, like: Var) {
        if self.scalar(like) == Some(&value) {
            let slot = self.scalar_slots[like as usize];
            *self.scalar_mut(var) = Some(value);
            self.scalar_slots[var as usize] = slot;
        } else {
            self.set_scalar_to(var, value);
        }
    }

    /// Reserves `n` consecutive slots and returns the first.
    fn take_slots(&mut self, n: usize) -> u32 {
        let first = self.next_slot;
        self.next_slot = self
            .next_slot
            .saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
        first
    }

    fn scalar(&self, var: Var) -> Option<&Vec<u8>> {
        self.scalars.get(var as usize).and_then(Option::as_ref)
    }

    /// Writes the request's header set (see [`crate::header_sets`]) into `key`: its
    /// method, its protocol and its headers, in order (the cookies come from them).
    fn header_set_key(&self, key: &mut Vec<u8>) {
        key.clear();
        for var in [Var::RequestMethod, Var::RequestProtocol] {
            header_sets::push(key, self.scalar(var).map_or(&[][..], Vec::as_slice));
        }
        for e in &self.headers {
            header_sets::push(key, e.key.as_bytes());
            header_sets::push(key, &e.value);
        }
    }

    /// The slots of the values of the header set: the method, the protocol, the headers'
    /// and the cookies' names and values.
    fn header_set_slots(&self) -> impl Iterator<Item = u32> + '_ {
        let scalars = [Var::RequestMethod, Var::RequestProtocol]
            .map(|v| self.scalar_slots.get(v as usize).copied().unwrap_or(0));
        let entries = self.headers.iter().chain(&self.cookies);
        scalars
            .into_iter()
            .chain(entries.flat_map(|e| [e.key_slot, e.value_slot]))
    }
}

/// "None": the item's own value (for a transformed value), no prefilter (for a candidate
/// set), no row yet (for a slot).
const NONE: u32 = u32::MAX;
/// Not computed yet.
const UNSET: u32 = u32::MAX - 1;

/// What the memo knows of one distinct value (a slot's own or a transformed one).
#[derive(Clone, Copy, Debug)]
struct ValueInfo {
    /// The bytes it holds.
    present: ByteSet,
    /// Per prefilter part: its scan (an offset into the pool), or `UNSET`.
    scans: [u32; 2],
    /// A value that differs from this one only in the case of letters (whose scans, which
    /// ignore case, are the same): its buffer (`NONE` for the slot's own value), or
    /// `UNSET`.
    same_case: u32,
}

/// What a transaction computes once and reuses: each value's transformations (per chain,
/// each step once, shared by every chain that reaches the same value and applies the same
/// step, and skipped outright on values without the bytes the step acts on), the
/// prefilter's scans of each distinct value, and per phase each link group's candidates
/// over all its values.
#[derive(Debug, Default)]
struct Memo {
    /// Per slot: the offset of its row in `table`, or `NONE`.
    rows: Vec<u32>,
    /// Rows of one cell per chain: cell 0 (the empty chain) holds the info of the value
    /// itself (an index into `infos`), cell `c` the value under chain `c` (an index into
    /// `bufs`, or `NONE` when the chain left it as it was); `UNSET` until computed.
    table: Vec<u32>,
    /// Transformed values, each distinct per slot.
    bufs: Vec<Vec<u8>>,
    /// Per transformed value: its info (an index into `infos`).
    buf_info: Vec<u32>,
    /// Per transformed value: the previous one of the same slot, or `NONE`.
    buf_prev: Vec<u32>,
    /// Per slot: its last transformed value, or `NONE`.
    last_buf: Vec<u32>,
    /// What is known of each distinct value.
    infos: Vec<ValueInfo>,
    /// (slot, input value, transformation) to the output value.
    steps: HashMap<(u32, u32, Transform), u32, BuildHasherDefault<MixHasher>>,
    /// Candidate sets, as runs of 64-bit words.
    pool: Vec<u64>,
    /// Per link group: its candidate set in the current phase, or `UNSET`.
    groups: Vec<u32>,
    /// Whether `unknown` holds this phase's rows.
    unknown_ready: bool,
    /// The phase running, as a bit of [`RuleSet::recall_target_phases`]; every bit outside
    /// the phases (a rule evaluated alone, at load).
    phase_bits: u8,
    /// The phases (as [`Memo::phase_bits`]) that have worked out their rows of `unknown`
    /// in this transaction: a target's row has been made when one of them reads it.
    phases_learned: u8,
    /// Per target of [`RuleSet::recall_targets`], a row of [`RuleSet::recall_words`]
    /// words: the links some value of the target is not known to find nothing in.
    unknown: Vec<u64>,
    /// This phase's links (their recall bits, [`RuleSet::recall_words`] words) that some
    /// target they read has a value not known to: the union of the phase's rows of
    /// `unknown`, each limited to the links reading its target. A link outside it finds
    /// nothing in any of its targets, which one bit test says.
    unknown_links: Vec<u64>,
    /// What the thread remembers of values is about which engine, and how much of it.
    recall: Recollection,
    /// Per slot: the first word of its row in `known`, `UNSET` until first needed, or
    /// `NONE` for a value that is not remembered (too long); and the row's index in
    /// `known_rows_at` (the word over the row's width, kept to spare a division).
    known_rows: Vec<(u32, u32)>,
    /// The rows, in the order they were made.
    known_rows_at: Vec<KnownRow>,
    /// Rows of [`RuleSet::recall_words`] words: per link with a recall bit, whether it is
    /// known to find nothing in the value (see [`crate::recall`]).
    known: Vec<u64>,
    /// The bytes of the values this transaction learned something of, to remember them by
    /// when it ends.
    known_values: Vec<u8>,
    /// Hits of earlier transactions, kept for their buffers (a transaction holds them in
    /// [`Transaction::spare_hits`] while it runs, and hands back at most [`SPARE_HITS`]).
    spare_hits: Vec<Hit>,
    /// The fingerprint of a replayable rule being written (see [`crate::replay`]).
    fingerprint: Vec<u8>,
    /// The request's header set (see [`crate::header_sets`]): `None` until looked up,
    /// then `None` inside when it has no number (too long, or no memory of values).
    header_set: Option<Option<header_sets::SetRef>>,
    /// The key the header set is looked up by (a buffer kept from one transaction to the
    /// next).
    header_key: Vec<u8>,
    /// Whether the rows of `unknown` of the targets of
    /// [`RuleSet::recall_target_headers`] are made (once per transaction).
    header_rows_ready: bool,
    /// Per rule index, a bit: idle for the request's header set (see
    /// [`header_sets::mark_idle`]), as the thread's table had it when the set was
    /// looked up.
    idle: Vec<u64>,
    /// The key of the transaction's next request phase (see [`crate::phases`]); empty when
    /// the engine keeps none (a buffer kept from one transaction to the next).
    phase_key: PhaseKey,
}

/// Which engine's knowledge of values a transaction uses, and how much of it is kept.
#[derive(Clone, Copy, Debug, Default)]
struct Recollection {
    engine: u64,
    capacity: usize,
    words: usize,
}

/// A value's row of known verdicts (its words in [`Memo::known`] are in the order of the
/// rows).
#[derive(Clone, Copy, Debug)]
struct KnownRow {
    /// Once this transaction learned something of the value: where its bytes are in
    /// [`Memo::known_values`].
    learned: Option<(u32, u32)>,
}

/// A hasher for small integer keys.
#[derive(Default)]
struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }

    fn write_isize(&mut self, v: isize) {
        self.write_u64(v as u64);
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

/// Whether a candidate set (an offset into the pool; `NONE` for "no prefilter") has a
/// link's bits.
fn candidate(pool: &[u64], set: u32, filter: Filter) -> bool {
    set == NONE || has_bits(&pool[set as usize..], filter)
}

impl Memo {
    /// The row of a slot, made on first use.
    fn row(&mut self, rules: &RuleSet, slot: u32) -> usize {
        let s = slot as usize;
        if self.rows.len() <= s {
            self.rows.resize(s + 1, NONE);
        }
        if self.rows[s] == NONE {
            self.rows[s] = u32::try_from(self.table.len()).unwrap_or(NONE);
            self.table
                .resize(self.table.len() + rules.chains.len(), UNSET);
        }
        self.rows[s] as usize
    }

    /// The bytes of a value of an item.
    fn bytes<'a>(&'a self, item: &'a Item2<'_>, buf: u32) -> &'a [u8] {
        if buf == NONE {
            &item.value
        } else {
            &self.bufs[buf as usize]
        }
    }

    /// The info of a value of an item.
    fn info(&mut self, rules: &RuleSet, item: &Item2<'_>, buf: u32) -> usize {
        if buf != NONE {
            return self.buf_info[buf as usize] as usize;
        }
        let row = self.row(rules, item.slot);
        if self.table[row] == UNSET {
            self.table[row] = self.new_info(&item.value, UNSET);
        }
        self.table[row] as usize
    }

    fn new_info(&mut self, value: &[u8], same_case: u32) -> u32 {
        self.infos.push(ValueInfo {
            present: bytes_present(value),
            scans: [UNSET; 2],
            same_case,
        });
        u32::try_from(self.infos.len() - 1).unwrap_or(NONE)
    }

    /// The transformed value of a cacheable item under a chain, computed at most once per
    /// (item, chain), from its parent chain's.
    fn buf(&mut self, rules: &RuleSet, item: &Item2<'_>, chain: u32) -> u32 {
        let Some(step) = rules.chains[chain as usize] else {
            return NONE;
        };
        let row = self.row(rules, item.slot);
        let cell = row + chain as usize;
        if self.table[cell] != UNSET {
            return self.table[cell];
        }
        // A value without any byte the chain's steps act on goes through unchanged.
        if let Some(triggers) = rules.chain_triggers[chain as usize] {
            let info = self.info(rules, item, NONE);
            if disjoint(self.infos[info].present, triggers) {
                self.table[cell] = NONE;
                return NONE;
            }
        }
        let parent = self.buf(rules, item, step.parent);
        if let Some(triggers) = step.transform.triggers() {
            let info = self.info(rules, item, parent);
            if disjoint(self.infos[info].present, triggers) {
                self.table[cell] = parent;
                return parent;
            }
        }
        // A step from the value itself belongs to one chain only (the trie's root has one
        // child per transformation), whose cell is this one: nothing to share through
        // `steps`, which deeper chains whose parents left the value as it was still use.
        let key = (item.slot, parent, step.transform);
        let shared = step.parent != 0;
        if shared && let Some(&known) = self.steps.get(&key) {
            self.table[cell] = known;
            return known;
        }
        let input: &[u8] = if parent == NONE {
            &item.value
        } else {
            &self.bufs[parent as usize]
        };
        let buf = match step.transform.changed(input) {
            None => parent,
            Some(v) if v == input => parent,
            Some(v) if v == *item.value => NONE,
            Some(v) => {
                // Another chain may have made the same value already: one buffer (and one
                // prefilter scan) per distinct value.
                let slot = item.slot as usize;
                if self.last_buf.len() <= slot {
                    self.last_buf.resize(slot + 1, NONE);
                }
                let mut known = self.last_buf[slot];
                while known != NONE && self.bufs[known as usize] != v {
                    known = self.buf_prev[known as usize];
                }
                if known == NONE {
                    // A step that changed only the case of letters (`lowercase`, and often
                    // `cmdLine` or a decoding of a value with nothing to decode but
                    // capitals) leaves the prefilter's scans as they were.
                    let same_case =
                        if matches!(step.transform, Transform::Lowercase | Transform::Uppercase)
                            || v.eq_ignore_ascii_case(input)
                        {
                            parent
                        } else {
                            UNSET
                        };
                    let info = self.new_info(&v, same_case);
                    self.bufs.push(v);
                    self.buf_info.push(info);
                    self.buf_prev.push(self.last_buf[slot]);
                    known = u32::try_from(self.bufs.len() - 1).unwrap_or(NONE);
                    self.last_buf[slot] = known;
                }
                known
            }
        };
        if shared {
            self.steps.insert(key, buf);
        }
        self.table[cell] = buf;
        buf
    }

    /// The prefilter's candidates (of one part) for a cacheable item under a chain.
    #[inline]
    fn cand(&mut self, rules: &RuleSet, item: &Item2<'_>, chain: u32, part: usize) -> u32 {
        // Once known, three lookups.
        if let Some(&row) = self.rows.get(item.slot as usize)
            && row != NONE
        {
            let row = row as usize;
            let buf = if chain == 0 {
                NONE
            } else {
                self.table[row + chain as usize]
            };
            let info = match buf {
                UNSET => UNSET,
                NONE => self.table[row],
                b => self.buf_info[b as usize],
            };
            if info != UNSET {
                let scan = self.infos[info as usize].scans[part];
                if scan != UNSET {
                    return scan;
                }
            }
        }
        let buf = self.buf(rules, item, chain);
        self.scan(rules, item, buf, part)
    }

    /// Empties the memo for another transaction, keeping its allocations.
    fn clear(&mut self) {
        self.rows.clear();
        self.table.clear();
        self.bufs.clear();
        self.buf_info.clear();
        self.buf_prev.clear();
        self.last_buf.clear();
        self.infos.clear();
        self.steps.clear();
        self.pool.clear();
        self.groups.clear();
        self.unknown_ready = false;
        self.unknown.clear();
        self.unknown_links.clear();
        self.known_rows.clear();
        self.known_rows_at.clear();
        self.known.clear();
        self.known_values.clear();
        self.header_set = None;
        self.header_rows_ready = false;
        self.phase_key.clear();
        self.idle.clear();
    }

    /// The first word of the row of known verdicts of a cacheable item's value, recalled
    /// on first use; `NONE` when the value is not remembered.
    #[inline]
    fn known_row(&mut self, rules: &RuleSet, item: &Item2<'_>) -> u32 {
        match self.known_rows.get(item.slot as usize) {
            Some(&(word, _)) if word != UNSET => word,
            _ => self.recall_row(rules, item),
        }
    }

    /// Recalls the row of known verdicts of a cacheable item's value (see
    /// [`Memo::known_row`]).
    #[inline(never)]
    fn recall_row(&mut self, rules: &RuleSet, item: &Item2<'_>) -> u32 {
        let s = item.slot as usize;
        if self.known_rows.len() <= s {
            self.known_rows.resize(s + 1, (UNSET, UNSET));
        }
        let r = self.recall;
        let (row, at) = if r.capacity == 0 || item.value.len() > recall::LONGEST {
            (NONE, NONE)
        } else {
            let at = u32::try_from(self.known_rows_at.len()).unwrap_or(NONE);
            let word = self.known.len();
            self.known.resize(word + r.words, 0);
            let row = &mut self.known[word..];
            if !recall::recall(r.engine, r.capacity, &item.value, row)
                && let Some(a) = recall::alphabet(&bytes_present(&item.value))
            {
                // A new value: what its alphabet rules out is known before any link runs.
                let known = &rules.alphabet_rows[a * r.words..(a + 1) * r.words];
                for (k, a) in row.iter_mut().zip(known) {
                    *k |= a;
                }
            }
            self.known_rows_at.push(KnownRow { learned: None });
            (u32::try_from(word).unwrap_or(NONE), at)
        };
        self.known_rows[s] = (row, at);
        row
    }

    /// Whether the link with recall bit `bit` is known to find nothing in the item's value.
    #[inline]
    fn is_known(&mut self, rules: &RuleSet, item: &Item2<'_>, bit: u32) -> bool {
        if !item.cacheable() {
            return false;
        }
        let word = self.known_row(rules, item);
        word != NONE && self.known[(word + bit / 64) as usize] & (1 << (bit % 64)) != 0
    }

    /// Whether the links with recall bits `first..first + count` are all known to find
    /// nothing in the item's value.
    fn knows_all(&mut self, rules: &RuleSet, item: &Item2<'_>, first: u32, count: u32) -> bool {
        if !item.cacheable() {
            return false;
        }
        let word = self.known_row(rules, item);
        word != NONE && all_bits(&self.known[word as usize..], first, count)
    }

    /// Records that the link with recall bit `bit` finds nothing in the item's value.
    fn learn(&mut self, rules: &RuleSet, item: &Item2<'_>, bit: u32) {
        if !item.cacheable() {
            return;
        }
        let word = self.known_row(rules, item);
        if word == NONE {
            return;
        }
        let (word, mask) = ((word + bit / 64) as usize, 1 << (bit % 64));
        if self.known[word] & mask == 0 {
            self.known[word] |= mask;
            let at = self.known_rows[item.slot as usize].1 as usize;
            if self.known_rows_at[at].learned.is_none() {
                // The first thing learned of the value: its bytes are kept to remember it
                // by when the transaction ends.
                let start = self.known_values.len();
                self.known_values.extend_from_slice(&item.value);
                let end = self.known_values.len();
                self.known_rows_at[at].learned = Some((
                    u32::try_from(start).unwrap_or(NONE),
                    u32::try_from(end).unwrap_or(NONE),
                ));
            }
        }
    }

    /// Hands what this transaction learned of values to the thread's memory of them.
    fn remember_learned(&self) {
        let r = self.recall;
        for (row, at) in self.known_rows_at.iter().enumerate() {
            let Some((start, end)) = at.learned else {
                continue;
            };
            let word = row * r.words;
            recall::remember(
                r.engine,
                r.capacity,
                &self.known_values[start as usize..end as usize],
                &self.known[word..word + r.words],
            );
        }
    }

    /// Whether the memo's allocations are small enough to keep for another transaction.
    fn reusable(&self) -> bool {
        self.table.capacity() <= 1 << 16
            && self.pool.capacity() <= 1 << 16
            && self.unknown.capacity() <= 1 << 16
            && self.bufs.capacity() <= 1 << 12
            && self.steps.capacity() <= 1 << 12
            && self.known.capacity() <= 1 << 16
            && self.known_values.capacity() <= 1 << 16
            && self.header_key.capacity() <= 1 << 16
    }
}

thread_local! {
    /// Memos of finished transactions, reused by the next ones on the thread (most
    /// transactions need the same room, which is then allocated once).
    static SPARE_MEMOS: std::cell::RefCell<Vec<Memo>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Memo {
    /// A memo, reused when the thread has one to spare.
    fn take(recall: Recollection) -> Memo {
        let mut memo = SPARE_MEMOS
            .with(|spare| spare.borrow_mut().pop())
            .unwrap_or_default();
        memo.recall = recall;
        memo.phase_bits = u8::MAX;
        memo
    }

    /// Gives the memo back for reuse.
    fn give_back(mut self) {
        if !self.reusable() {
            return;
        }
        self.clear();
        SPARE_MEMOS.with(|spare| {
            let mut spare = spare.borrow_mut();
            if spare.len() < 4 {
                spare.push(self);
            }
        });
    }

    /// A prefilter part's scan of a value of an item (once per distinct value).
    fn scan(&mut self, rules: &RuleSet, item: &Item2<'_>, buf: u32, part: usize) -> u32 {
        let Some(filter) = rules.prefilter.as_ref().map(|p| &p.parts[part]) else {
            return NONE;
        };
        let info = self.info(rules, item, buf);
        if self.infos[info].scans[part] != UNSET {
            return self.infos[info].scans[part];
        }
        // The prefilter ignores case: a value's case variant shares its scan.
        let same_case = self.infos[info].same_case;
        if same_case != UNSET {
            let set = self.scan(rules, item, same_case, part);
            self.infos[info].scans[part] = set;
            return set;
        }
        let off = self.pool.len();
        self.pool.resize(off + filter.words, 0);
        let value: &[u8] = if buf == NONE {
            &item.value
        } else {
            &self.bufs[buf as usize]
        };
        filter.scan(value, self.infos[info].present, &mut self.pool[off..]);
        let set = u32::try_from(off).unwrap_or(NONE);
        self.infos[info].scans[part] = set;
        set
    }

    /// Whether a steady link (see [`Link::steady`]) with recall bit `bit` and recall rows
    /// `rows` (one per target) is known to find nothing in every value of its targets in
    /// this phase: no value its targets select lacks its bit, but in the targets
    /// `taken_whole` (by index) says are not read. A link outside this phase's
    /// `unknown_links` is decided by that one bit.
    fn finds_nothing(
        &mut self,
        rules: &RuleSet,
        d: &Data,
        bit: u32,
        rows: &[u32],
        taken_whole: impl Fn(usize) -> bool,
    ) -> bool {
        if self.recall.capacity == 0 {
            return false;
        }
        if !self.unknown_ready {
            self.learn_unknown(rules, d);
        }
        if self.unknown_links[(bit / 64) as usize] & (1 << (bit % 64)) == 0 {
            return true;
        }
        let known = |row: u32| self.target_finds_nothing(row, bit);
        match rows.iter().position(|&row| !known(row)) {
            None => true,
            Some(first) => (first..rows.len()).all(|t| known(rows[t]) || taken_whole(t)),
        }
    }

    /// Whether the link with recall bit `bit` is known to find nothing in any value of the
    /// target with recall row `row`, by this phase's rows (see [`Memo::learn_unknown`]).
    fn target_finds_nothing(&self, row: u32, bit: u32) -> bool {
        let word = row as usize * self.recall.words + (bit / 64) as usize;
        self.unknown[word] & (1 << (bit % 64)) == 0
    }

    /// Whether some value of the target with recall row `row` is not known to find
    /// nothing to one of the links with recall bits `first..first + count`, by this
    /// phase's rows.
    fn target_unknown_to_any(&self, row: u32, first: u32, count: u32) -> bool {
        any_bits(
            &self.unknown[row as usize * self.recall.words..],
            first,
            count,
        )
    }

    /// One pass over the values of the targets of [`RuleSet::recall_targets`] whose rows
    /// this phase's links read: per target, the links some value is not known to find
    /// nothing in. The row of a variable fixed when the transaction started is worked out
    /// once: knowledge only grows, so it over-estimates at worst; those of the header set
    /// (all of them, the first time) come from the thread's table of header sets when an
    /// earlier transaction kept them there. Then the union of the phase's rows, each
    /// limited to the links reading its target (`unknown_links`).
    fn learn_unknown(&mut self, rules: &RuleSet, d: &Data) {
        let words = self.recall.words;
        if self.unknown.is_empty() {
            self.unknown.resize(rules.recall_targets.len() * words, 0);
            self.phases_learned = 0;
        }
        if !self.header_rows_ready {
            self.learn_header_rows(rules, d);
        }
        let rows = rules.phase_rows(self.phase_bits);
        for &row in &rows.learned {
            let row = row as usize;
            if rules.recall_targets[row].var.is_fixed()
                && rules.recall_target_phases[row] & self.phases_learned != 0
            {
                continue;
            }
            self.learn_target(rules, d, row);
        }
        self.phases_learned |= self.phase_bits;
        self.unknown_links.clear();
        self.unknown_links.resize(words, 0);
        for &row in &rows.read {
            let row = row as usize;
            let readers = &rules.recall_target_readers[row * words..(row + 1) * words];
            let unknown = &self.unknown[row * words..(row + 1) * words];
            for ((u, r), k) in self.unknown_links.iter_mut().zip(readers).zip(unknown) {
                *u |= r & k;
            }
        }
        self.unknown_ready = true;
    }

    /// Makes the row of `unknown` of target `row`: the links some value it selects is not
    /// known to find nothing in.
    fn learn_target(&mut self, rules: &RuleSet, d: &Data, row: usize) {
        let words = self.recall.words;
        let out = row * words;
        self.unknown[out..out + words].fill(0);
        d.items(&rules.recall_targets[row], &[], &mut |item| {
            let known = if item.cacheable() {
                self.known_row(rules, &item)
            } else {
                NONE
            };
            if known == NONE {
                self.unknown[out..out + words].fill(u64::MAX);
            } else {
                let word = known as usize;
                for w in 0..words {
                    self.unknown[out + w] |= !self.known[word + w];
                }
            }
        });
    }

    /// Makes the rows of the targets of [`RuleSet::recall_target_headers`], taken from
    /// the thread's table of header sets when it keeps them for the request's set, else
    /// worked out and kept there.
    fn learn_header_rows(&mut self, rules: &RuleSet, d: &Data) {
        self.header_rows_ready = true;
        let words = self.recall.words;
        let rows = || {
            (0..rules.recall_targets.len())
                .filter(|&row| rules.recall_target_headers.get(row) == Some(&true))
        };
        let set = self.header_set(d);
        if let Some(set) = set {
            let unknown = &mut self.unknown;
            let taken = header_sets::with_rows(set, |kept| {
                for (row, kept) in rows().zip(kept.chunks(words)) {
                    unknown[row * words..(row + 1) * words].copy_from_slice(kept);
                }
            });
            if taken {
                return;
            }
        }
        for row in rows() {
            self.learn_target(rules, d, row);
        }
        if let Some(set) = set {
            let kept: Vec<u64> = rows()
                .flat_map(|row| &self.unknown[row * words..(row + 1) * words])
                .copied()
                .collect();
            header_sets::keep_rows(set, &kept);
        }
    }

    /// At the end of the transaction: forgets the rows the thread's table keeps for the
    /// request's header set when this transaction learned something of its values (the
    /// next transaction with the set works them out again, knowing more).
    fn forget_header_rows_if_learned(&self, d: &Data) {
        let Some(Some(set)) = self.header_set else {
            return;
        };
        // A slot without a row (`UNSET`, `NONE`) has no entry in `known_rows_at`.
        let learned = d.header_set_slots().any(|slot| {
            self.known_rows
                .get(slot as usize)
                .and_then(|&(_, at)| self.known_rows_at.get(at as usize))
                .is_some_and(|row| row.learned.is_some())
        });
        if learned {
            header_sets::forget_rows(set);
        }
    }

    /// Whether rule `ri` is idle for the request's header set (see
    /// [`header_sets::mark_idle`]).
    fn is_idle(&mut self, d: &Data, ri: usize) -> bool {
        self.header_set(d).is_some() && header_sets::has_rule_bit(&self.idle, ri)
    }

    /// Marks rule `ri` idle for the request's header set, here and in the thread's table.
    fn mark_idle(&mut self, ri: usize) {
        if let Some(Some(set)) = self.header_set {
            header_sets::mark_idle(set, ri);
            header_sets::set_rule_bit(&mut self.idle, ri);
        }
    }

    /// The request's header set on the thread (see [`crate::header_sets`]), looked up
    /// once per transaction; `None` without a memory of values.
    fn header_set(&mut self, d: &Data) -> Option<header_sets::SetRef> {
        if let Some(set) = self.header_set {
            return set;
        }
        let set = if self.recall.capacity == 0 {
            None
        } else {
            d.header_set_key(&mut self.header_key);
            let set = header_sets::find(self.recall.engine, &self.header_key);
            if let Some(set) = set {
                header_sets::idle(set, &mut self.idle);
            }
            set
        };
        self.header_set = Some(set);
        set
    }

    /// The union of the candidates of every value a link group selects, computed once per
    /// phase, together with those of the other groups of its target set (`link` is one of
    /// the group's links).
    fn group(&mut self, rules: &RuleSet, d: &Data, group: u32, link: &Link) -> u32 {
        let Some(prefilter) = rules.prefilter.as_ref() else {
            return NONE;
        };
        let g = group as usize;
        if self.groups.len() <= g {
            self.groups.resize(rules.groups, UNSET);
        }
        if self.groups[g] == UNSET {
            self.target_set(rules, prefilter, d, rules.group_sets[g], link);
        }
        self.groups[g]
    }

    /// Computes the candidate sets of every group of a target set (`link` is one of their
    /// links) in one pass over its values. A value every link of the set is known to find
    /// nothing in adds nothing, nor does a value to a group whose every link is known to
    /// find nothing in it; a link whose literals a value lacks learns that it finds
    /// nothing in it.
    fn target_set(
        &mut self,
        rules: &RuleSet,
        prefilter: &Prefilter,
        d: &Data,
        set: u32,
        link: &Link,
    ) {
        let groups = &rules.set_groups[set as usize];
        for &g in groups {
            let off = self.pool.len();
            self.pool.resize(
                off + prefilter.parts[usize::from(rules.group_part[g as usize])].words,
                0,
            );
            self.groups[g as usize] = u32::try_from(off).unwrap_or(NONE);
        }
        let (first, count) = rules.set_links[set as usize];
        // This phase's rows of what is known of each target's values, when made: a target
        // whose every value every link of the set is known to find nothing in adds
        // nothing.
        let known_targets = (self.unknown_ready && link.steady).then_some(&link.recall_rows);
        for (ti, t) in link.targets.iter().enumerate() {
            if let Some(rows) = known_targets
                && !self.target_unknown_to_any(rows[ti], first, count)
            {
                continue;
            }
            d.items(t, &[], &mut |item| {
                if self.knows_all(rules, &item, first, count) {
                    return;
                }
                for &g in groups {
                    let g = g as usize;
                    let links = &rules.group_links[g];
                    if let Some(&(first, _)) = links.first()
                        && self.knows_all(rules, &item, first, links.len() as u32)
                    {
                        continue;
                    }
                    let part = usize::from(rules.group_part[g]);
                    let c = self.cand(rules, &item, rules.group_chain[g], part);
                    if c == NONE {
                        continue;
                    }
                    let (c, off) = (c as usize, self.groups[g] as usize);
                    let (from, to) = rules.group_words[g];
                    let to = (to as usize).min(prefilter.parts[part].words);
                    for w in from as usize..to {
                        self.pool[off + w] |= self.pool[c + w];
                    }
                    for &(bit, filter) in links {
                        if !has_bits(&self.pool[c..], filter) {
                            self.learn(rules, &item, bit);
                        }
                    }
                }
            });
        }
    }
}

/// Why evaluation of a phase stopped.
enum Flow {
    Continue,
    StopPhase,
    Interrupt,
}

impl Drop for Transaction {
    fn drop(&mut self) {
        self.memo.remember_learned();
        self.memo.forget_header_rows_if_learned(&self.d);
        self.clear_matched();
        self.spare_hits.truncate(SPARE_HITS);
        self.memo.spare_hits = std::mem::take(&mut self.spare_hits);
        std::mem::take(&mut self.memo).give_back();
        self.d.tx.give_back();
    }
}

/// The per-request WAF state. Create one with [`crate::WafEngine::transaction`], then call
/// the `process_*` methods in request order; each returns the verdict so far.
#[derive(Debug)]
pub struct Transaction {
    engine: Arc<Compiled>,
    d: Data,
    /// What `d` has not read of the request yet: a phase replayed whole reads nothing of
    /// it (see [`crate::phases`]), and the first walked reads it (see
    /// [`Transaction::read_request`]).
    unread: Option<Unread>,
    memo: Memo,
    mode: EngineMode,
    /// Per rule index: removed from this transaction (empty until a rule is).
    removed: Vec<bool>,
    /// Per rule index: targets removed by `ctl` or path exclusions in this transaction.
    target_removals: Removals,
    matches: Vec<Match>,
    /// Finished hits, whose buffers the next ones reuse.
    spare_hits: Vec<Hit>,
    /// Buffers macros expand into: a `setvar`'s key and value, a link's argument.
    scratch: (Vec<u8>, Vec<u8>),
    /// While a replayable rule is evaluated for the first time with its values: what it
    /// changes, in order (see [`crate::replay`]).
    journal: Option<Vec<Change>>,
    /// While a phase whose key the thread has kept nothing for is walked: what it changes,
    /// in order (see [`crate::phases`]).
    phase_journal: Option<Vec<Change>>,
    /// The phase being walked did something its journal cannot say (set `IP`, `GLOBAL`
    /// or `ENV`): it is not kept.
    phase_unkept: bool,
    decision: Decision,
    body_processor: Option<BodyProcessor>,
    force_body_variable: bool,
    request_body_access: bool,
    response_body_access: bool,
    allow: Option<AllowScope>,
    content_type: String,
    response_content_type: String,
    phases_done: u8,
}

/// The request as the proxy gave it, until a transaction reads it (see
/// [`Transaction::unread`]).
#[derive(Debug)]
struct Unread {
    facts: RequestFacts,
    /// The request body (as much as is inspected), once given, when the body processor
    /// is to parse it.
    body: Option<Vec<u8>>,
}

impl Transaction {
    pub(crate) fn new(engine: Arc<Compiled>, facts: RequestFacts) -> Transaction {
        // Slot 0 is the empty value every unset scalar reads as.
        let d = Data {
            next_slot: 1,
            // What the rules decided at load set (see `fold`).
            tx: TxVars::new(engine.folding.tx.clone()),
            ..Data::default()
        };
        let content_type = facts
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let body_processor = processor_for(&content_type);
        let mut memo = Memo::take(Recollection {
            engine: engine.number,
            capacity: engine.remembered_values,
            words: engine.rules.recall_words,
        });
        if let Some(plan) = engine.phase_keys {
            phases::write_request_key(plan, &facts, &mut memo.phase_key);
        }
        let mut tx = Transaction {
            mode: engine.mode,
            d,
            unread: Some(Unread { facts, body: None }),
            spare_hits: std::mem::take(&mut memo.spare_hits),
            scratch: Default::default(),
            journal: None,
            phase_journal: None,
            phase_unkept: false,
            memo,
            removed: Vec::new(),
            target_removals: Removals::default(),
            matches: Vec::new(),
            decision: Decision::Allow,
            body_processor,
            force_body_variable: false,
            request_body_access: true,
            response_body_access: engine.inspect_responses,
            allow: None,
            content_type,
            response_content_type: String::new(),
            phases_done: 0,
            engine,
        };
        // A phase replayed whole reads nothing of the request (see `phases`): without
        // them, the request is read now.
        if tx.engine.phase_keys.is_none() {
            tx.read_request();
        }
        tx
    }

    /// Reads what is left unread of the request into the transaction's data (see
    /// [`Transaction::unread`]): its line, headers and connection, then its body, which
    /// the body processor parses.
    fn read_request(&mut self) {
        let Some(unread) = self.unread.take() else {
            return;
        };
        let RequestFacts {
            method,
            uri,
            protocol,
            headers,
            client_addr,
            client_port,
            server_port,
        } = unread.facts;
        let d = &mut self.d;
        let raw_uri = uri.clone();
        // An absolute-form target keeps only its path for REQUEST_URI (an origin-form one,
        // nearly every request, is not searched for a scheme).
        let absolute = if uri.starts_with('/') {
            None
        } else {
            uri.find("://")
        };
        let uri = match absolute {
            Some(i) => {
                let rest = &uri[i + 3..];
                rest.find('/')
                    .map_or_else(|| "/".to_string(), |p| rest[p..].to_string())
            }
            _ => uri,
        };
        let (path, query) = match uri.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (uri.clone(), None),
        };
        // Like ModSecurity and Coraza, the path variables are percent-decoded (`+` stays).
        let path = percent_decode(path.split('#').next().unwrap_or_default());
        let basename = path
            .rsplit(|&b| b == b'/')
            .next()
            .unwrap_or_default()
            .to_vec();
        for (k, v) in query
            .as_deref()
            .map(|q| body::parse_urlencoded(q.as_bytes()))
            .unwrap_or_default()
        {
            d.args_get.push(Entry::new(k, v, &mut d.next_slot));
        }
        for (k, v) in headers {
            if k.eq_ignore_ascii_case("cookie") {
                for c in v.split(|&b| b == b';') {
                    let c = c.trim_ascii();
                    if c.is_empty() {
                        continue;
                    }
                    let (ck, cv) = match c.iter().position(|&b| b == b'=') {
                        Some(i) => (&c[..i], &c[i + 1..]),
                        None => (c, &b""[..]),
                    };
                    d.cookies.push(Entry::new(
                        String::from_utf8_lossy(ck).into_owned(),
                        cv,
                        &mut d.next_slot,
                    ));
                }
            }
            d.headers.push(Entry::new(k, v, &mut d.next_slot));
        }
        d.set_scalar(Var::RequestMethod, method.clone());
        d.set_scalar(Var::RequestProtocol, protocol.clone());
        // Joined by hand: the formatting machinery cost more than the copies.
        let mut line = Vec::with_capacity(method.len() + raw_uri.len() + protocol.len() + 2);
        for (i, part) in [&method, &raw_uri, &protocol].into_iter().enumerate() {
            if i > 0 {
                line.push(b' ');
            }
            line.extend_from_slice(part.as_bytes());
        }
        d.set_scalar(Var::RequestLine, line);
        d.set_scalar(Var::RequestUri, uri.clone());
        // The same as the URI unless the request line held an absolute URI.
        d.set_scalar_like(Var::RequestUriRaw, raw_uri.into_bytes(), Var::RequestUri);
        d.set_scalar(Var::RequestFilename, path);
        d.set_scalar(Var::RequestBasename, basename);
        d.set_scalar(Var::QueryString, query.unwrap_or_default());
        d.set_scalar(Var::RemoteAddr, address_text(client_addr));
        d.set_scalar(Var::RemotePort, itoa::Buffer::new().format(client_port));
        d.set_scalar(Var::ServerPort, itoa::Buffer::new().format(server_port));
        d.set_scalar(Var::UniqueId, self.engine.next_unique_id());
        let combined: usize = d.args_get.iter().map(|e| e.key.len() + e.value.len()).sum();
        d.set_scalar(Var::ArgsCombinedSize, itoa::Buffer::new().format(combined));
        if let Some(p) = self.body_processor {
            d.set_scalar(Var::ReqbodyProcessor, p.name());
        }
        self.apply_path_exclusions();
        if let Some(body) = unread.body {
            self.parse_request_body(&body);
        }
    }

    /// Applies the configured exclusions whose path prefixes match this request.
    fn apply_path_exclusions(&mut self) {
        let engine = self.engine.clone();
        let path = self
            .d
            .scalar(Var::RequestFilename)
            .cloned()
            .unwrap_or_default();
        for (n, ex) in engine.path_exclusions.iter().enumerate() {
            if !ex.paths.iter().any(|p| path.starts_with(p.as_bytes())) {
                continue;
            }
            if ex.targets.is_empty() {
                for &i in &ex.rules {
                    self.remove_rule(i);
                }
            } else {
                let whole = ex
                    .targets
                    .iter()
                    .filter(|(_, s)| matches!(s, Selector::All))
                    .map(|(v, _)| *v);
                self.target_removals
                    .add(TargetRemoval::Path(n), &ex.rules, whole);
            }
        }
    }

    /// Phase 1: the request line and headers.
    pub fn process_request_headers(&mut self) -> Verdict {
        self.run_phase(1);
        self.verdict()
    }

    /// Phase 2: the request body (pass an empty slice when there is none; phase 2 runs
    /// either way). At most the configured body limit is inspected.
    pub fn process_request_body(&mut self, body: &[u8]) -> Verdict {
        self.ensure_phase(1);
        let body = &body[..body.len().min(self.engine.request_body_limit)];
        if self.phases_done < 2 {
            // Phase 2 starts from what phase 1 left, which the key so far decides, and the
            // body.
            self.memo.phase_key.write(body);
            if self.request_body_access {
                // Parsed when the request is read, if a phase is walked; a body too long
                // for a key is parsed now, without a copy.
                match &mut self.unread {
                    Some(unread) if self.memo.phase_key.bytes().is_some() => {
                        unread.body = Some(body.to_vec());
                    }
                    _ => {
                        self.read_request();
                        self.parse_request_body(body);
                    }
                }
            }
        }
        self.run_phase(2);
        self.verdict()
    }

    /// Phase 3: the response status and headers (only when response inspection is on).
    pub fn process_response_headers(
        &mut self,
        status: u16,
        protocol: &str,
        headers: &[(String, Vec<u8>)],
    ) -> Verdict {
        self.ensure_phase(2);
        if !self.engine.inspect_responses {
            return self.verdict();
        }
        self.read_request();
        self.d.set_scalar(Var::ResponseStatus, status.to_string());
        self.d.set_scalar(Var::ResponseProtocol, protocol);
        for (k, v) in headers {
            if k.eq_ignore_ascii_case("content-type") {
                self.response_content_type = String::from_utf8_lossy(v).into_owned();
                self.d.set_scalar(Var::ResponseContentType, v.clone());
            }
            if k.eq_ignore_ascii_case("content-length") {
                self.d.set_scalar(Var::ResponseContentLength, v.clone());
            }
            self.d
                .response_headers
                .push(Entry::new(k.clone(), v.clone(), &mut self.d.next_slot));
        }
        self.run_phase(3);
        self.verdict()
    }

    /// Phase 4: the response body, when its media type is one the settings inspect.
    pub fn process_response_body(&mut self, body: &[u8]) -> Verdict {
        if !self.engine.inspect_responses {
            return self.verdict();
        }
        self.ensure_phase(3);
        self.read_request();
        let mime = self
            .response_content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if self.response_body_access && self.engine.response_mime_types.contains(&mime) {
            let body = &body[..body.len().min(self.engine.request_body_limit)];
            self.d.set_scalar(Var::ResponseBody, body);
        }
        self.run_phase(4);
        self.verdict()
    }

    /// Phase 5 (logging): the correlation rules. Call once the exchange is over.
    pub fn process_logging(&mut self) -> Verdict {
        self.ensure_phase(4);
        self.run_phase(5);
        self.verdict()
    }

    /// The verdict so far.
    pub fn verdict(&self) -> Verdict {
        let score = |k: &str| self.d.tx.get(k).map_or(0, |v| atoi(v));
        Verdict {
            decision: self.decision,
            matched: self.matches.clone(),
            inbound_score: score("blocking_inbound_anomaly_score"),
            outbound_score: score("blocking_outbound_anomaly_score"),
        }
    }

    /// The value of a `TX` variable, for tests and the decision log.
    pub fn tx_var(&self, name: &str) -> Option<String> {
        self.d
            .tx
            .get(&name.to_ascii_lowercase())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    fn ensure_phase(&mut self, phase: u8) {
        for p in self.phases_done + 1..=phase {
            self.run_phase(p);
        }
    }

    fn parse_request_body(&mut self, body: &[u8]) {
        self.d.set_scalar(
            Var::RequestBodyLength,
            itoa::Buffer::new().format(body.len()),
        );
        let mut processor = self.body_processor;
        if processor.is_none() && self.force_body_variable {
            processor = Some(BodyProcessor::UrlEncoded);
        }
        let parsed: Option<Parsed> = match processor {
            Some(BodyProcessor::UrlEncoded) => Some(Parsed {
                args: body::parse_urlencoded(body),
                ..Parsed::default()
            }),
            Some(BodyProcessor::Multipart) => Some(body::parse_multipart(body, &self.content_type)),
            Some(BodyProcessor::Json) => Some(body::parse_json(body)),
            Some(BodyProcessor::Xml) => Some(body::parse_xml(body)),
            None => None,
        };
        if let Some(p) = processor {
            self.d.set_scalar(Var::ReqbodyProcessor, p.name());
        }
        // REQUEST_BODY holds urlencoded and JSON bodies (934210 looks for Django lookups in
        // raw JSON), and others only when forced; the regression suite pins this down.
        if matches!(
            processor,
            Some(BodyProcessor::UrlEncoded | BodyProcessor::Json)
        ) || self.force_body_variable
        {
            self.d.set_scalar(Var::RequestBody, body);
        }
        let Some(parsed) = parsed else { return };
        self.d.set_scalar(
            Var::ReqbodyError,
            if parsed.error.is_some() { "1" } else { "0" },
        );
        if let Some(e) = &parsed.error {
            self.d.set_scalar(Var::ReqbodyErrorMsg, e.as_str());
        }
        for (k, v) in parsed.args {
            self.d
                .args_post
                .push(Entry::new(k, v, &mut self.d.next_slot));
        }
        let mut combined = 0usize;
        for f in &parsed.files {
            combined += f.size;
            self.d.files.push(Entry::new(
                f.field.clone(),
                f.filename.clone(),
                &mut self.d.next_slot,
            ));
            self.d.files_sizes.push(Entry::new(
                f.field.clone(),
                f.size.to_string(),
                &mut self.d.next_slot,
            ));
            self.d
                .set_scalar(Var::MultipartFilename, f.filename.clone());
            self.d.set_scalar(Var::MultipartName, f.field.clone());
        }
        if processor == Some(BodyProcessor::Multipart) {
            self.d
                .set_scalar(Var::FilesCombinedSize, combined.to_string());
            self.d.set_scalar(
                Var::MultipartStrictError,
                if parsed.error.is_some() { "1" } else { "0" },
            );
        }
        for (k, v) in parsed.part_headers {
            self.d
                .part_headers
                .push(Entry::new(k, v, &mut self.d.next_slot));
        }
        self.d.xml_text_slot = self.d.take_slots(parsed.xml_text.len());
        self.d.xml_attrs_slot = self.d.take_slots(parsed.xml_attrs.len());
        self.d.xml_text = parsed.xml_text;
        self.d.xml_attrs = parsed.xml_attrs;
        let combined: usize = self
            .d
            .args_get
            .iter()
            .chain(&self.d.args_post)
            .map(|e| e.key.len() + e.value.len())
            .sum();
        self.d
            .set_scalar(Var::ArgsCombinedSize, combined.to_string());
    }

    fn run_phase(&mut self, phase: u8) {
        if phase <= self.phases_done {
            return;
        }
        self.phases_done = phase;
        if self.mode == EngineMode::Off || matches!(self.decision, Decision::Block { .. }) {
            return;
        }
        match self.allow {
            Some(AllowScope::All) => return,
            Some(AllowScope::Request) if phase <= 2 => return,
            _ => {}
        }
        if phase > 1 && self.allow == Some(AllowScope::Phase) {
            self.allow = None;
        }
        if phase > 2 || self.engine.phase_keys.is_none() || self.memo.phase_key.bytes().is_none() {
            self.walk_phase(phase);
            return;
        }
        // A request phase the thread has walked from the same key is replayed (see
        // `phases`); another is walked, and kept the second time its key comes.
        let mut key = std::mem::take(&mut self.memo.phase_key);
        let hash = key.hash();
        let bytes = key.bytes().unwrap_or_default();
        let engine = self.engine.clone();
        let looked_up = phases::look_up(engine.number, phase, (bytes, hash), |outcome| {
            self.apply_changes(&engine.rules, &outcome.changes);
            self.matches.extend(outcome.matches.iter().cloned());
            self.decision = outcome.decision;
            self.allow = outcome.allow;
        });
        match looked_up {
            phases::Lookup::Replayed => {}
            phases::Lookup::New => self.walk_phase(phase),
            phases::Lookup::Again(hash) => {
                self.phase_journal = Some(Vec::new());
                self.phase_unkept = false;
                let logged = self.matches.len();
                self.walk_phase(phase);
                let changes = self.phase_journal.take().unwrap_or_default();
                if !self.phase_unkept {
                    let outcome = phases::Outcome {
                        changes,
                        matches: self.matches[logged..].to_vec(),
                        decision: self.decision,
                        allow: self.allow,
                    };
                    phases::keep(engine.number, phase, bytes, hash, outcome);
                }
            }
        }
        self.memo.phase_key = key;
    }

    /// Walks the rules of a phase.
    fn walk_phase(&mut self, phase: u8) {
        self.read_request();
        let engine = self.engine.clone();
        // The request's collections grow between phases: group results are per phase.
        self.memo.groups.fill(UNSET);
        self.memo.unknown_ready = false;
        self.memo.phase_bits = crate::rule::phase_bit(phase);
        let steps = &engine.walk.phases[usize::from(phase - 1)];
        let bits = &engine.walk.bits[usize::from(phase - 1)];
        let mut i = 0;
        let mut skip = 0u32;
        while i < steps.len() {
            // Most steps are rules whose first link is known to find nothing in any value
            // of its targets (the test below): passed over by their bits alone, when no
            // rule is to be skipped and this phase's rows are made, up to a removed rule
            // (which leaves the matched variables as they are).
            if skip == 0 && self.memo.unknown_ready {
                let from = i;
                let unknown = &self.memo.unknown_links;
                i = if self.removed.is_empty() {
                    pass_known(bits, unknown, i, |_| false)
                } else {
                    let removed =
                        |i: usize| self.removed.get(steps[i].rule as usize) == Some(&true);
                    pass_known(bits, unknown, i, removed)
                };
                if i > from {
                    self.clear_matched();
                }
                if i == steps.len() {
                    break;
                }
            }
            let step = steps[i];
            i += 1;
            if step.kind == Kind::Marker {
                continue;
            }
            if skip > 0 {
                skip -= 1;
                continue;
            }
            let ri = step.rule as usize;
            if self.removed.get(ri) == Some(&true) {
                continue;
            }
            match step.kind {
                Kind::Run { bit, rows, later } => {
                    // A quiet rule whose keys no rule has set: it would do nothing.
                    if let Some(keys) = &engine.folding.quiet[ri]
                        && self.d.tx.untouched(keys)
                        && !self.target_removals.may_reach(ri)
                    {
                        self.clear_matched();
                        continue;
                    }
                    // Most rules are decided by their first link being known to find
                    // nothing: that test alone, from the step, without reading the rule.
                    if bit != walk::NONE
                        && self.known_to_find_nothing(
                            &engine.rules,
                            ri,
                            bit,
                            engine.walk.rows(rows),
                            |t| engine.walk.vars(rows)[t],
                            true,
                        )
                    {
                        self.clear_matched();
                        continue;
                    }
                    // Nor can it match when a later link that decides it alone is known
                    // to find nothing.
                    if engine.walk.later(later).iter().any(|&(bit, rows)| {
                        self.memo.finds_nothing(
                            &engine.rules,
                            &self.d,
                            bit,
                            engine.walk.rows(rows),
                            |_| false,
                        )
                    }) {
                        self.clear_matched();
                        continue;
                    }
                    let start = engine.folding.starts[ri].as_deref();
                    if start.is_none() && self.group_rules_out(&engine.rules, ri) {
                        self.clear_matched();
                        continue;
                    }
                    // Both tests of its first link are made: not again in `eval_link`.
                    let replayable = engine.replay[ri]
                        .as_ref()
                        .filter(|_| self.memo.recall.capacity > 0)
                        .filter(|_| !self.target_removals.may_reach(ri));
                    // A rule that reads only the header set and did nothing with it.
                    if replayable.is_some_and(|inputs| inputs.header_set_only)
                        && self.memo.is_idle(&self.d, ri)
                    {
                        self.clear_matched();
                        continue;
                    }
                    let matched = match replayable {
                        Some(inputs) => self.eval_rule_remembered(&engine.rules, ri, inputs, start),
                        None => self.eval_rule(&engine.rules, ri, start, true),
                    };
                    if !matched {
                        continue;
                    }
                }
                Kind::Marker | Kind::Never => continue,
                // Its `setvar`s are in the `TX` this transaction started with, and it
                // neither logs nor disrupts: only its jump is left.
                Kind::Always { to, skip: over } => {
                    if to != walk::NONE {
                        i = to as usize;
                    }
                    skip = over;
                    continue;
                }
            }
            let rule = &engine.rules.rules[ri];
            if let Some(to) = rule.skip_to {
                i = engine.walk.landing(phase, to);
            }
            skip = rule.skip;
            match self.disrupt(rule) {
                Flow::Continue => {}
                Flow::StopPhase => return,
                Flow::Interrupt => return,
            }
            if self.mode == EngineMode::Off {
                return;
            }
        }
    }

    /// Whether rule `ri` cannot match because the values of its first link's group hold
    /// none of the link's literals (what [`Transaction::eval_link`] tests first), decided
    /// without starting to evaluate the rule: most rules a request of new values does not
    /// pass over by what is known of its values end here.
    fn group_rules_out(&mut self, rules: &RuleSet, ri: usize) -> bool {
        let Some(link) = rules.rules[ri].links.first() else {
            return false;
        };
        match link.filter {
            Some(
                filter @ Filter {
                    group: Some(group), ..
                },
            ) => {
                let set = self.memo.group(rules, &self.d, group, link);
                !candidate(&self.memo.pool, set, filter)
            }
            _ => false,
        }
    }

    /// Evaluates rule `ri` on its own, outside its phase: how [`crate::fold`] decides a rule
    /// at load. Returns whether it matched.
    pub(crate) fn probe_rule(&mut self, ri: usize) -> bool {
        let engine = self.engine.clone();
        self.eval_rule(&engine.rules, ri, None, false)
    }

    /// The matches (name and value) of the first link of rule `ri`, evaluated alone,
    /// without its actions: whether the rule can start matching, and with what (see
    /// [`crate::fold`]).
    pub(crate) fn starter_matches(&mut self, ri: usize) -> Vec<(String, Vec<u8>)> {
        let engine = self.engine.clone();
        let mut hits = Vec::new();
        if let Some(l) = engine.rules.rules[ri].links.first() {
            self.eval_link(&engine.rules, ri, true, false, l, &mut hits);
        }
        hits.into_iter().map(|h| (h.name, h.value)).collect()
    }

    /// This transaction's `TX`.
    pub(crate) fn tx(&mut self) -> &mut TxVars {
        &mut self.d.tx
    }

    fn disrupt(&mut self, rule: &Rule) -> Flow {
        match rule.disruptive {
            Disruptive::Pass | Disruptive::Block => Flow::Continue,
            Disruptive::Deny | Disruptive::Drop => {
                let status = rule.status.unwrap_or(403);
                match self.mode {
                    EngineMode::On => {
                        self.decision = Decision::Block {
                            status,
                            rule_id: rule.id,
                        };
                        Flow::Interrupt
                    }
                    _ => {
                        if self.decision == Decision::Allow {
                            self.decision = Decision::Detected {
                                status,
                                rule_id: rule.id,
                            };
                        }
                        Flow::Continue
                    }
                }
            }
            Disruptive::Allow(scope) => {
                self.allow = Some(scope);
                Flow::StopPhase
            }
        }
    }

    /// [`Transaction::eval_rule`] for a replayable rule (see [`crate::replay`]): what it did
    /// from the same values in an earlier transaction of the thread is applied instead,
    /// and what it does now is kept for the next. Looked up first by what decides whether
    /// it matches (most such rules neither match nor act on most requests), then by what
    /// its actions read as well.
    fn eval_rule_remembered(
        &mut self,
        rules: &RuleSet,
        ri: usize,
        inputs: &Inputs,
        start: Option<&[(String, Vec<u8>)]>,
    ) -> bool {
        let (engine, count) = (self.engine.number, rules.rules.len());
        // One borrow of the thread's outcomes decides, and applies what is found.
        let looked_up = replay::with_outcomes(engine, count, |outcomes| {
            if !outcomes.wanted(ri) {
                return None;
            }
            self.memo.fingerprint.clear();
            let set = if inputs.header_set_only {
                self.memo.header_set(&self.d)
            } else {
                None
            };
            if let Some(set) = set {
                replay::write_header_set(&mut self.memo.fingerprint, set.number);
            } else if !self.write_fingerprint(&inputs.targets, &inputs.matching) {
                return None;
            }
            let matching = (
                self.memo.fingerprint.len(),
                replay::hash(&self.memo.fingerprint),
            );
            let mut found = outcomes.take(ri, &self.memo.fingerprint, matching.1);
            let mut whole = matching;
            if found.is_none() && !inputs.effects.is_empty() {
                if !self.write_fingerprint(&[], &inputs.effects) {
                    return None;
                }
                whole = (
                    self.memo.fingerprint.len(),
                    replay::hash(&self.memo.fingerprint),
                );
                found = outcomes.take(ri, &self.memo.fingerprint, whole.1);
            }
            match found {
                Some((at, outcome)) => {
                    self.replay(rules, ri, &outcome);
                    let matched = outcome.matched;
                    outcomes.put_back(ri, at, outcome);
                    Some(Ok(matched))
                }
                None => Some(Err((matching, whole))),
            }
        });
        let (matching, whole) = match looked_up {
            Some(Ok(matched)) => return matched,
            Some(Err(fingerprints)) => fingerprints,
            None => return self.eval_rule(rules, ri, start, true),
        };
        self.journal = Some(Vec::new());
        let logged = self.matches.len();
        let matched = self.eval_rule(rules, ri, start, true);
        let changes = self.journal.take().unwrap_or_default();
        if self.matches.len() == logged {
            let idle = !matched && changes.is_empty();
            if idle && inputs.header_set_only {
                self.memo.mark_idle(ri);
            }
            let (len, hash) = if idle { matching } else { whole };
            let fp = &self.memo.fingerprint[..len];
            replay::with_outcomes(engine, count, |o| o.keep(ri, (fp, hash), matched, changes));
        }
        matched
    }

    /// Adds the values of `targets` and what `reads` names, as they are now, to the
    /// memo's fingerprint of a replayable rule; `false` when that is longer than
    /// [`replay::LONGEST_FINGERPRINT`].
    fn write_fingerprint(&mut self, targets: &[Target], reads: &Reads) -> bool {
        let mut fp = std::mem::take(&mut self.memo.fingerprint);
        let d = &self.d;
        for t in targets {
            d.items(t, &[], &mut |item| {
                replay::write(&mut fp, item.key.as_bytes());
                replay::write(&mut fp, &item.value);
            });
            replay::end(&mut fp);
        }
        for key in &reads.tx_keys {
            match d.tx.get(key) {
                Some(v) => replay::write(&mut fp, v),
                None => replay::end(&mut fp),
            }
        }
        for (var, key) in &reads.lookups {
            match d.lookup(*var, key.as_deref()) {
                Some(v) => replay::write(&mut fp, &v),
                None => replay::end(&mut fp),
            }
        }
        let fits = fp.len() <= replay::LONGEST_FINGERPRINT;
        self.memo.fingerprint = fp;
        fits
    }

    /// Applies what rule `ri` did in an earlier transaction from the same values.
    fn replay(&mut self, rules: &RuleSet, ri: usize, outcome: &replay::Outcome) {
        let rule = &rules.rules[ri];
        self.clear_matched();
        self.d.rule_id = rule.id;
        self.d.rule_phase = rule.phase;
        self.apply_changes(rules, &outcome.changes);
    }

    /// Applies what a rule or a phase changed (see [`crate::replay`], [`crate::phases`]).
    fn apply_changes(&mut self, rules: &RuleSet, changes: &[Change]) {
        for change in changes {
            if self.phase_journal.is_some() {
                self.record(change.clone(), false);
            }
            match change {
                Change::Set { key, value, built } => {
                    let new = self
                        .d
                        .tx
                        .set(Cow::Borrowed(key), |slot| slot.extend_from_slice(value));
                    if new && *built {
                        self.d.tx_built.push(key.clone());
                    }
                }
                Change::Remove(key) => self.d.tx.remove(key),
                &Change::Ctl { rule, link, effect } => {
                    if let Some(Effect::Ctl(c)) = (rules.rules.get(rule))
                        .and_then(|r| r.links.get(link))
                        .and_then(|l| l.effects.get(effect))
                    {
                        self.ctl(c, (rule, link, effect));
                    }
                }
            }
        }
    }

    /// Whether a journal is being written: a change is worth making only then.
    fn journaling(&self) -> bool {
        self.journal.is_some() || self.phase_journal.is_some()
    }

    /// Writes a change into the journal of the phase being walked, when there is one, and
    /// into the journal of the rule being evaluated, when there is one and `rule` says so
    /// (see [`crate::phases`], [`crate::replay`]).
    fn record(&mut self, change: Change, rule: bool) {
        let rule_journal = self.journal.as_mut().filter(|_| rule);
        match (&mut self.phase_journal, rule_journal) {
            (Some(phase), Some(rule)) => {
                phase.push(change.clone());
                rule.push(change);
            }
            (Some(journal), None) | (None, Some(journal)) => journal.push(change),
            (None, None) => {}
        }
    }

    /// Evaluates rule `ri` and its chain; on a match runs the per-match actions and records
    /// the match. Returns whether it matched. `start`: the matches of its first link when
    /// the configuration decides them (see [`crate::fold::Folding::starts`]), taken instead
    /// of evaluating the link. `first_tested`: its first link is known to be decided
    /// neither by [`Transaction::finds_nothing`] nor by [`Transaction::group_rules_out`].
    fn eval_rule(
        &mut self,
        rules: &RuleSet,
        ri: usize,
        start: Option<&[(String, Vec<u8>)]>,
        first_tested: bool,
    ) -> bool {
        let rule = &rules.rules[ri];
        self.clear_matched();
        self.d.rule_id = rule.id;
        self.d.rule_phase = rule.phase;
        // Like ModSecurity and Coraza, each link's per-match actions run as soon as the link
        // matches, before the next link is evaluated (CRS prepares `TX` values in chain
        // starters and scores in the last link).
        let logs = rule.log && rule.id != 0;
        let tracks = rule.tracks_matched_var;
        let mut first: Option<String> = None;
        // Whether the last match was an action's (of nothing) rather than the last of
        // `MATCHED_VARS`: what `MATCHED_VAR` holds when the rule is logged.
        let mut last_is_action = false;
        for (n, link) in rule.links.iter().enumerate() {
            if link.targets.is_empty() {
                // An action (`SecAction`): one match of nothing.
                last_is_action = true;
                if tracks {
                    self.set_matched(&Hit::default());
                }
                for (k, e) in link.effects.iter().enumerate() {
                    self.effect(e, (ri, n, k));
                }
                if logs && first.is_none() {
                    first = Some(String::new());
                }
                continue;
            }
            let mut h = std::mem::take(&mut self.d.link_hits);
            match start.filter(|_| n == 0) {
                Some(decided) => h.extend(decided.iter().map(|(name, value)| {
                    Hit::reusing(&mut self.spare_hits, |n| n.push_str(name), value, None)
                })),
                None => self.eval_link(rules, ri, n == 0, n == 0 && first_tested, link, &mut h),
            }
            if h.is_empty() {
                self.d.link_hits = h;
                return false;
            }
            last_is_action = false;
            for hit in &h {
                if tracks {
                    self.set_matched(hit);
                }
                if let Some(c) = &hit.captures {
                    for (key, v) in CAPTURE_KEYS.iter().zip(c) {
                        self.d.tx.set(Cow::Borrowed(key), |slot| {
                            slot.extend_from_slice(v);
                        });
                        if self.journaling() {
                            let change = Change::Set {
                                key: (*key).to_string(),
                                value: v.clone(),
                                built: false,
                            };
                            self.record(change, true);
                        }
                    }
                }
                for (k, e) in link.effects.iter().enumerate() {
                    self.effect(e, (ri, n, k));
                }
            }
            if logs && first.is_none() {
                first = h.first().map(|x| x.name.clone());
            }
            for hit in h.drain(..) {
                if hit.name.is_empty() {
                    self.spare_hits.push(hit);
                } else {
                    self.d.matched_vars.push(hit);
                }
            }
            self.d.link_hits = h;
        }
        if logs {
            if !tracks {
                self.set_last_matched(last_is_action);
            }
            let expand = |m: &Option<crate::macros::Macro>| {
                m.as_ref()
                    .map(|m| {
                        String::from_utf8_lossy(&m.expand(|v, k| self.d.lookup(v, k))).into_owned()
                    })
                    .unwrap_or_default()
            };
            self.matches.push(Match {
                id: rule.id,
                phase: rule.phase,
                msg: expand(&rule.msg),
                data: expand(&rule.logdata),
                tags: rule.tags.clone(),
                severity: rule.severity,
                variable: first.unwrap_or_default(),
            });
        }
        true
    }

    /// Empties `MATCHED_VARS`, keeping the hits' buffers for the next ones. Most rules a
    /// request passes over had none: tested first, inline.
    #[inline]
    fn clear_matched(&mut self) {
        if !self.d.matched_vars.is_empty() {
            self.spare_hits.append(&mut self.d.matched_vars);
        }
    }

    fn set_matched(&mut self, h: &Hit) {
        self.d.set_volatile(Var::MatchedVar, &h.value);
        self.d.set_volatile(Var::MatchedVarName, h.name.as_bytes());
    }

    /// Sets `MATCHED_VAR` and `MATCHED_VAR_NAME` to the rule's last match, for a rule that
    /// does not set them on each (see [`RuleSet::plan_matched_var`]): an action's match of
    /// nothing when `action`, else the last of `MATCHED_VARS`.
    fn set_last_matched(&mut self, action: bool) {
        let matched = std::mem::take(&mut self.d.matched_vars);
        match matched.last() {
            Some(h) if !action => self.set_matched(h),
            _ => self.set_matched(&Hit::default()),
        }
        self.d.matched_vars = matched;
    }

    /// Whether link `link` of rule `ri` (its first when `starter`) is known to find nothing
    /// in this phase (see [`Memo::finds_nothing`]).
    fn finds_nothing(&mut self, rules: &RuleSet, ri: usize, starter: bool, link: &Link) -> bool {
        match link.recall.filter(|_| link.steady) {
            Some(bit) => self.known_to_find_nothing(
                rules,
                ri,
                bit,
                &link.recall_rows,
                |t| link.targets[t].var,
                starter,
            ),
            None => false,
        }
    }

    /// [`Transaction::finds_nothing`] for the link of rule `ri` with recall bit `bit`,
    /// recall rows `rows` and target variables `var_of` (by index), its first when
    /// `starter`.
    fn known_to_find_nothing(
        &mut self,
        rules: &RuleSet,
        ri: usize,
        bit: u32,
        rows: &[u32],
        var_of: impl Fn(usize) -> Var,
        starter: bool,
    ) -> bool {
        // A `ctl` removal applies to a rule's first link; a target it takes whole is not
        // read, so its values never learn the link's bit.
        let removals = &self.target_removals;
        let taken_whole = |t: usize| starter && removals.takes_whole(ri, var_of(t));
        self.memo
            .finds_nothing(rules, &self.d, bit, rows, taken_whole)
    }

    /// The values link `link` of rule `ri` matches (its first when `starter`; `tested`:
    /// known to be decided neither by [`Transaction::finds_nothing`] nor by its group's
    /// candidates, the two tests made first here otherwise).
    fn eval_link(
        &mut self,
        rules: &RuleSet,
        ri: usize,
        starter: bool,
        tested: bool,
        link: &Link,
        hits: &mut Vec<Hit>,
    ) {
        if !tested && self.finds_nothing(rules, ri, starter, link) {
            return;
        }
        // A group whose values hold none of the link's literals cannot match: skip it
        // without looking at its values.
        if !tested
            && let Some(
                filter @ Filter {
                    group: Some(group), ..
                },
            ) = link.filter
        {
            let set = self.memo.group(rules, &self.d, group, link);
            if !candidate(&self.memo.pool, set, filter) {
                return;
            }
        }
        // A macro argument expands into a buffer reused from link to link.
        let mut arg_buf = std::mem::take(&mut self.scratch.1);
        let arg: &[u8] = match link.operator.argument() {
            Some(m) => m.expand_in(|v, k| self.d.lookup(v, k), &mut arg_buf),
            None => b"",
        };
        let want_caps = link.capture && !link.negated;
        // The engine is held here only when a removal is in force: most links need none.
        let engine: Arc<Compiled>;
        let removed_targets: Vec<(Var, &Selector)> =
            if starter && self.target_removals.may_reach(ri) {
                engine = Arc::clone(&self.engine);
                removed_targets(&engine, &self.target_removals.list, ri)
            } else {
                Vec::new()
            };
        if let [t] = link.targets.as_slice()
            && t.var == Var::Tx
            && t.exclusions.is_empty()
            && removed_targets.is_empty()
            && link.transforms.is_empty()
            && !link.multi_match
            && !want_caps
            && let Selector::Key(key) = &t.selector
        {
            self.eval_tx_key(link, t, key, arg, hits);
            self.scratch.1 = arg_buf;
            return;
        }
        let mut caps = Vec::new();
        let d = &self.d;
        let memo = &mut self.memo;
        let spare = &mut self.spare_hits;
        // This phase's rows of what is known of each target's values, when made: a target
        // whose every value the link is known to find nothing in is passed whole.
        let known_targets = link
            .recall
            .filter(|_| link.steady && memo.unknown_ready)
            .map(|bit| (bit, &link.recall_rows));
        for (ti, t) in link.targets.iter().enumerate() {
            if let Some((bit, rows)) = known_targets
                && memo.target_finds_nothing(rows[ti], bit)
            {
                continue;
            }
            let extra_t: Vec<&Selector> = if removed_targets.is_empty() {
                Vec::new()
            } else {
                removed_targets
                    .iter()
                    .filter(|(v, _)| removal_reaches(*v, t.var))
                    .map(|(_, s)| *s)
                    .collect()
            };
            if extra_t.iter().any(|s| matches!(s, Selector::All)) {
                continue;
            }
            if t.count {
                let mut n = 0usize;
                d.items(t, &extra_t, &mut |_| n += 1);
                let mut digits = itoa::Buffer::new();
                let value = digits.format(n).as_bytes();
                test_value(link, arg, value, None, (hits, spare), |n| count_name(n, t));
                continue;
            }
            d.items(t, &extra_t, &mut |item| {
                // A value this link is known to find nothing in is skipped; one it finds
                // nothing in now is remembered.
                let recall_bit = link.recall.filter(|_| item.cacheable());
                if let Some(bit) = recall_bit
                    && memo.is_known(rules, &item, bit)
                {
                    return;
                }
                let before = hits.len();
                'evaluate: {
                    let name = |out: &mut String| {
                        if item.key.is_empty() && !t.var.is_collection() {
                            out.push_str(t.var.name());
                        } else {
                            push_var_key_name(out, t.var.name(), item.key);
                        }
                    };
                    if link.multi_match {
                        if !item.cacheable() {
                            for v in apply_chain_multi(&link.transforms, &item.value) {
                                let cap = want_caps.then_some(&mut caps);
                                test_value(link, arg, &v, cap, (hits, spare), name);
                            }
                            break 'evaluate;
                        }
                        for buf in multi_values(rules, memo, &item, link) {
                            if let Some(f) = link.filter {
                                let set = memo.scan(rules, &item, buf, usize::from(f.part));
                                if !candidate(&memo.pool, set, f) {
                                    continue;
                                }
                            }
                            let v = memo.bytes(&item, buf);
                            let cap = want_caps.then_some(&mut caps);
                            test_value(link, arg, v, cap, (hits, spare), name);
                        }
                        break 'evaluate;
                    }
                    if let Some(f) = link.filter
                        && item.cacheable()
                    {
                        let set = memo.cand(rules, &item, link.chain, usize::from(f.part));
                        if !candidate(&memo.pool, set, f) {
                            break 'evaluate;
                        }
                    }
                    let owned;
                    let value: &[u8] = if item.cacheable() {
                        let buf = memo.buf(rules, &item, link.chain);
                        memo.bytes(&item, buf)
                    } else {
                        owned = apply_chain(&link.transforms, &item.value);
                        &owned
                    };
                    let cap = want_caps.then_some(&mut caps);
                    test_value(link, arg, value, cap, (hits, spare), name);
                }
                if let Some(bit) = recall_bit
                    && hits.len() == before
                {
                    memo.learn(rules, &item, bit);
                }
            });
        }
        self.scratch.1 = arg_buf;
    }

    /// Evaluates a link on one `TX` variable (or its count), untransformed: what
    /// `eval_link` does for it, without going through the collection's values one by one
    /// (CRS reads a `TX` variable this way about a hundred times per request, mostly
    /// `TX:DETECTION_PARANOIA_LEVEL` to skip the rules above the paranoia level).
    fn eval_tx_key(&mut self, link: &Link, t: &Target, key: &str, arg: &[u8], hits: &mut Vec<Hit>) {
        let value = self.d.tx.get(key);
        let spare = &mut self.spare_hits;
        if t.count {
            let n: &[u8] = if value.is_some() { b"1" } else { b"0" };
            test_value(link, arg, n, None, (hits, spare), |n| count_name(n, t));
        } else if let Some(value) = value {
            test_value(link, arg, value, None, (hits, spare), |n| {
                push_var_key_name(n, t.var.name(), key);
            });
        }
    }

    /// Runs a per-match action; `at` is where it is written (rule index, link, action).
    fn effect(&mut self, e: &Effect, at: (usize, usize, usize)) {
        match e {
            Effect::SetVar {
                collection,
                key,
                op,
            } => {
                // Macros expand into the transaction's scratch buffers: most `setvar`s
                // then allocate nothing.
                let (mut key_buf, mut value_buf) = std::mem::take(&mut self.scratch);
                // Whether the key is built by a macro (a literal one was lower-cased when
                // the rule was parsed).
                let (key, built) = match key.literal() {
                    Some(k) => (Cow::Borrowed(k), false),
                    None => {
                        key_buf.clear();
                        key.expand_into(|v, k| self.d.lookup(v, k), &mut key_buf);
                        key_buf.make_ascii_lowercase();
                        let key = match std::str::from_utf8(&key_buf) {
                            Ok(k) => Cow::Borrowed(k),
                            Err(_) => String::from_utf8_lossy(&key_buf).into_owned().into(),
                        };
                        (key, true)
                    }
                };
                let value: &[u8] = match op {
                    SetOp::Set(m) | SetOp::Add(m) | SetOp::Sub(m) => {
                        m.expand_in(|v, k| self.d.lookup(v, k), &mut value_buf)
                    }
                    SetOp::Delete => b"",
                };
                let map = match collection {
                    Var::Ip => Some(&mut self.d.ip),
                    Var::Global => Some(&mut self.d.global),
                    Var::Env => Some(&mut self.d.env),
                    _ => None,
                };
                // What `+=` and `-=` add to the current value.
                let delta = match op {
                    SetOp::Add(_) => Some(atoi(value)),
                    SetOp::Sub(_) => Some((-1i64).saturating_mul(atoi(value))),
                    SetOp::Set(_) | SetOp::Delete => None,
                };
                // A key built by a macro is listed for the regexes of `TX` targets the first
                // time it is set.
                let new_key = match (map, op, delta) {
                    (Some(m), SetOp::Delete, _) => {
                        m.remove(&*key);
                        false
                    }
                    (None, SetOp::Delete, _) => {
                        self.d.tx.remove(&key);
                        false
                    }
                    (Some(m), _, Some(delta)) => {
                        let n = added(m.get(&*key).map(Vec::as_slice), delta);
                        set_var(m, key.clone(), |slot| write_number(slot, n));
                        false
                    }
                    (Some(m), _, None) => {
                        set_var(m, key.clone(), |slot| slot.extend_from_slice(value));
                        false
                    }
                    (None, _, Some(delta)) => self.d.tx.add(key.clone(), delta),
                    (None, _, None) => self
                        .d
                        .tx
                        .set(key.clone(), |slot| slot.extend_from_slice(value)),
                };
                // A key no other rule reads is not replayed (see `replay::Inputs`).
                let private = built
                    && self.journal.is_some()
                    && (self.engine.replay.get(at.0))
                        .and_then(Option::as_ref)
                        .and_then(|i| i.private_writes.iter().find(|w| w.at == (at.1, at.2)))
                        .is_some_and(|w| w.is_private(&key));
                if *collection != Var::Tx {
                    self.phase_unkept = true;
                } else if self.phase_journal.is_some() || (self.journal.is_some() && !private) {
                    let change = match self.d.tx.get(&key) {
                        Some(value) => Change::Set {
                            key: key.clone().into_owned(),
                            value: value.clone(),
                            built,
                        },
                        None => Change::Remove(key.clone().into_owned()),
                    };
                    self.record(change, !private);
                }
                if new_key && built {
                    self.d.tx_built.push(key.into_owned());
                }
                self.scratch = (key_buf, value_buf);
            }
            Effect::SetEnv(k, v) => {
                let k = String::from_utf8_lossy(&k.expand(|a, b| self.d.lookup(a, b)))
                    .to_ascii_lowercase();
                let v = v.expand(|a, b| self.d.lookup(a, b)).into_owned();
                self.d.env.insert(k, v);
                self.phase_unkept = true;
            }
            Effect::InitCol(_) => {}
            Effect::Ctl(c) => {
                if self.journaling() {
                    let (rule, link, effect) = at;
                    self.record(Change::Ctl { rule, link, effect }, true);
                }
                self.ctl(c, at);
            }
        }
    }

    /// Removes rule `ri` from this transaction.
    fn remove_rule(&mut self, ri: usize) {
        if self.removed.is_empty() {
            self.removed.resize(self.engine.rules.rules.len(), false);
        }
        self.removed[ri] = true;
    }

    fn ctl(&mut self, c: &Ctl, (rule, link, effect): (usize, usize, usize)) {
        match c {
            Ctl::RemoveRules(_, rules) => {
                for &i in rules {
                    self.remove_rule(i);
                }
            }
            Ctl::RemoveTarget(_, rules, var, selector) => {
                // Run again for each value its rule matched, it removes nothing more.
                let whole = matches!(selector, Selector::All).then_some(*var);
                self.target_removals.add(
                    TargetRemoval::Ctl { rule, link, effect },
                    rules,
                    whole.into_iter(),
                );
            }
            Ctl::RuleEngine(m) => self.mode = *m,
            Ctl::RequestBodyProcessor(p) => {
                self.body_processor = Some(*p);
                // (Once the request is read: reading it sets the variable.)
                if self.unread.is_none() {
                    self.d.set_scalar(Var::ReqbodyProcessor, p.name());
                }
            }
            Ctl::ForceRequestBodyVariable(b) => self.force_body_variable = *b,
            Ctl::RequestBodyAccess(b) => self.request_body_access = *b,
            Ctl::ResponseBodyAccess(b) => self.response_body_access = *b,
            Ctl::AuditLog => {}
        }
    }
}

/// The targets the removals in force take from rule `ri`.
fn removed_targets<'e>(
    engine: &'e Compiled,
    removals: &[TargetRemoval],
    ri: usize,
) -> Vec<(Var, &'e Selector)> {
    let mut out = Vec::new();
    for r in removals {
        match *r {
            TargetRemoval::Ctl { rule, link, effect } => {
                if let Effect::Ctl(Ctl::RemoveTarget(_, rules, v, s)) =
                    &engine.rules.rules[rule].links[link].effects[effect]
                    && rules.binary_search(&ri).is_ok()
                {
                    out.push((*v, s));
                }
            }
            TargetRemoval::Path(n) => {
                let ex = &engine.path_exclusions[n];
                if ex.rules.binary_search(&ri).is_ok() {
                    out.extend(ex.targets.iter().map(|(v, s)| (*v, s)));
                }
            }
        }
    }
    out
}

/// Whether a removal of variable `removed` takes values of `target` (removing `ARGS`
/// removes `ARGS_GET` and `ARGS_POST`, and the same for their names).
fn removal_reaches(removed: Var, target: Var) -> bool {
    removed == target
        || (removed == Var::Args && matches!(target, Var::ArgsGet | Var::ArgsPost))
        || (removed == Var::ArgsNames && matches!(target, Var::ArgsGetNames | Var::ArgsPostNames))
}

/// Runs a link's operator on one value; a match (a non-match for `!@op`) is a hit, with
/// the operator's captures when `captures` is given.
fn test_value(
    link: &Link,
    arg: &[u8],
    value: &[u8],
    captures: Option<&mut Vec<Vec<u8>>>,
    (hits, spare): (&mut Vec<Hit>, &mut Vec<Hit>),
    name: impl Fn(&mut String),
) {
    let hit = match captures {
        Some(caps) => (link.operator.matches(value, arg, Some(&mut *caps)) != link.negated)
            .then(|| Some(std::mem::take(caps))),
        None => (link.operator.matches(value, arg, None) != link.negated).then_some(None),
    };
    if let Some(captures) = hit {
        hits.push(Hit::reusing(spare, name, value, captures));
    }
}

/// An address as text; IPv4 written by hand (`Display` cost about 1 000 instructions).
fn address_text(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(v4) => {
            let mut out = Vec::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
            }
            out
        }
        IpAddr::V6(_) => addr.to_string().into_bytes(),
    }
}

/// What `setvar:col.key=+n` (or `-n`) makes of a key's current value: the value read as a
/// number (0 when unset or not a number) plus `delta`, saturating.
fn added(current: Option<&[u8]>, delta: i64) -> i64 {
    current.map_or(0, atoi).saturating_add(delta)
}

/// Appends the decimal digits of `n` to `slot`.
fn write_number(slot: &mut Vec<u8>, n: i64) {
    slot.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// Sets `key` in `map` to what `fill` writes into its emptied buffer: a variable that exists
/// keeps its buffer (most `setvar`s and captures change one that does), a new one is added.
fn set_var(map: &mut VarMap, key: Cow<'_, str>, fill: impl FnOnce(&mut Vec<u8>)) {
    let slot = match map.get_mut(&*key) {
        Some(slot) => slot,
        None => map.entry(key.into_owned()).or_default(),
    };
    slot.clear();
    fill(slot);
}

/// Writes `VAR:key`, the name of a matched value (without `format!`, which costs several
/// times more on this path that runs for every match).
fn push_var_key_name(out: &mut String, var: &str, key: &str) {
    out.push_str(var);
    out.push(':');
    out.push_str(key);
}

/// Writes the name of a count (`&VAR` or `&VAR:key`) as a matched value.
fn count_name(out: &mut String, t: &Target) {
    match &t.selector {
        Selector::Key(k) => push_var_key_name(out, t.var.name(), k),
        _ => out.push_str(t.var.name()),
    }
}

/// The value of an item after a link's transformations, computed without the memo (for
/// values that change while a phase runs).
fn apply_chain<'a>(transforms: &[Transform], value: &'a [u8]) -> Cow<'a, [u8]> {
    let mut v: Cow<'a, [u8]> = Cow::Borrowed(value);
    for t in transforms {
        if let Some(n) = t.changed(&v) {
            v = Cow::Owned(n);
        }
    }
    v
}

/// `multiMatch`: the value of a cacheable item before the transformations and after each
/// one that changed it (as memo buffers).
fn multi_values(rules: &RuleSet, memo: &mut Memo, item: &Item2<'_>, link: &Link) -> Vec<u32> {
    let mut path = Vec::with_capacity(link.transforms.len());
    let mut chain = link.chain;
    while let Some(step) = rules.chains[chain as usize] {
        path.push(chain);
        chain = step.parent;
    }
    let mut out = vec![NONE];
    let mut last = NONE;
    for &c in path.iter().rev() {
        let buf = memo.buf(rules, item, c);
        if memo.bytes(item, buf) != memo.bytes(item, last) {
            out.push(buf);
        }
        last = buf;
    }
    out
}

/// Decodes `%XX` escapes (a bad escape stays as it is).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let hex = |c: u8| char::from(c).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escape = match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => u8::try_from(h << 4 | l).ok(),
            _ => None,
        };
        match escape {
            Some(v) => {
                out.push(v);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    out
}

/// The index of the first step from `i` on that the walk's fast path stops at: one without
/// a first-link bit (see [`walk::Walk::bits`]), one whose bit `unknown` holds (some value
/// is not known to it), or one `stop` names.
#[inline(always)]
fn pass_known(bits: &[u32], unknown: &[u64], mut i: usize, stop: impl Fn(usize) -> bool) -> usize {
    while let Some(&bit) = bits.get(i)
        && bit != walk::NONE
        && unknown[(bit / 64) as usize] & (1 << (bit % 64)) == 0
        && !stop(i)
    {
        i += 1;
    }
    i
}

/// The body processor a `Content-Type` selects, as ModSecurity's recommended setup does.
fn processor_for(content_type: &str) -> Option<BodyProcessor> {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if mime == "application/x-www-form-urlencoded" {
        Some(BodyProcessor::UrlEncoded)
    } else if mime == "multipart/form-data" {
        Some(BodyProcessor::Multipart)
    } else if mime == "application/json"
        || (mime.starts_with("application/") && mime.ends_with("+json"))
    {
        Some(BodyProcessor::Json)
    } else if mime == "text/xml"
        || mime == "application/xml"
        || (mime.starts_with("application/") && mime.ends_with("+xml"))
    {
        Some(BodyProcessor::Xml)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `facts` on a listening port no request before had: the same request to every rule
    /// of these tests, but not one a phase was kept for (the key of a phase holds the
    /// port, see [`crate::phases`]), so that its rules are walked again.
    fn anew(facts: RequestFacts) -> RequestFacts {
        static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(1);
        RequestFacts {
            server_port: NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            ..facts
        }
    }

    #[test]
    fn what_a_transaction_learns_of_a_value_is_remembered_for_the_next() {
        let engine =
            crate::WafEngine::of_rules("SecRule ARGS \"@contains evil\" \"id:1,phase:1,deny\"");
        let mut tx =
            engine.transaction(RequestFacts::new("GET", "/?q=new-and-harmless", "HTTP/1.1"));
        tx.process_request_headers();
        let (number, capacity) = (tx.engine.number, tx.engine.remembered_values);
        let mut known = vec![0u64; tx.engine.rules.recall_words];
        drop(tx);
        recall::recall(number, capacity, b"new-and-harmless", &mut known);
        assert!(known.iter().any(|&w| w != 0), "nothing was remembered");
    }

    #[test]
    fn a_step_that_changes_only_capitals_shares_the_prefilter_scan() {
        let engine = crate::WafEngine::of_rules(
            "SecRule ARGS \"@rx x;y\" \"id:1,phase:1,pass,nolog,t:none,t:cmdLine,multiMatch\"",
        );
        let mut tx = engine.transaction(RequestFacts::new("GET", "/?a=Hello(World)", "HTTP/1.1"));
        tx.process_request_headers();
        let memo = &tx.memo;
        // `cmdLine` only lowered the capitals: its form is scanned as the value itself is.
        let lowered = memo
            .bufs
            .iter()
            .position(|b| b == b"hello(world)")
            .expect("the cmdLine form");
        let info = memo.buf_info[lowered] as usize;
        assert_eq!(memo.infos[info].same_case, NONE);
        assert_ne!(memo.infos[info].scans[0], UNSET, "the form was not scanned");
    }

    #[test]
    fn transactions_in_flight_together_on_a_thread_replay_what_the_first_did() {
        // An edge worker holds many transactions at once: what a rule did in one is found
        // by the others, whichever memo each took.
        // (Rule 2 reads the keys rule 1 builds: rule 1's replays set them.)
        let engine = crate::WafEngine::of_rules(
            "SecRule REQUEST_HEADERS_NAMES \"@rx ^.*$\" \"id:1,phase:1,pass,nolog,capture,t:lowercase,setvar:'tx.h_%{tx.0}=1'\"\n\
             SecRule TX:/^h_/ \"@streq 2\" \"id:2,phase:1,pass,nolog\"",
        );
        let facts = || {
            RequestFacts::new("GET", "/", "HTTP/1.1")
                .header("Host", "media.example.org")
                .header("Accept", "*/*")
        };
        let mut open: Vec<Transaction> =
            (0..12).map(|_| engine.transaction(anew(facts()))).collect();
        for tx in &mut open {
            tx.process_request_headers();
            assert_eq!(tx.tx_var("h_accept").as_deref(), Some("1"));
            assert_eq!(tx.tx_var("0").as_deref(), Some("accept"));
        }
        let (number, rules) = (open[0].engine.number, open[0].engine.rules.rules.len());
        let hits = replay::with_outcomes(number, rules, |o| o.hits(0));
        assert_eq!(hits, 11, "the rule was not replayed");
    }

    #[test]
    fn a_request_sent_again_has_its_phases_replayed_with_what_they_did() {
        // Rule 1 has the body read as JSON and sets a key; rule 2 removes rule 4 (which
        // counts posts) from `/quiet`; rule 3 refuses an evil name in the body.
        let engine = crate::WafEngine::of_rules(
            "SecRule REQUEST_HEADERS:X-Json \"@streq 1\" \"id:1,phase:1,pass,nolog,ctl:requestBodyProcessor=JSON,setvar:tx.json=1\"\n\
             SecRule REQUEST_FILENAME \"@beginsWith /quiet\" \"id:2,phase:1,pass,nolog,ctl:ruleRemoveById=4\"\n\
             SecRule REQUEST_METHOD \"@streq POST\" \"id:4,phase:2,pass,nolog,setvar:tx.posted=+1\"\n\
             SecRule ARGS:json.name \"@contains evil\" \"id:3,phase:2,deny,status:403,msg:'evil'\"",
        );
        let number = engine.compiled().number;
        // Returns whether the request was refused, `tx.json`, `tx.posted`, and how many
        // phases the thread replayed for it; checks that a refusal logged rule 3.
        let send = |path: &str, body: &str| {
            let facts = RequestFacts::new("POST", path, "HTTP/1.1")
                .header("Content-Type", "text/plain")
                .header("X-Json", "1");
            let before = phases::replayed(number);
            let mut tx = engine.transaction(facts);
            tx.process_request_headers();
            let verdict = tx.process_request_body(body.as_bytes());
            let replayed = phases::replayed(number) - before;
            let logged: Vec<(u32, &str)> = (verdict.matched.iter())
                .map(|m| (m.id, m.msg.as_str()))
                .collect();
            let refused = verdict.is_blocked();
            assert_eq!(logged, if refused { vec![(3, "evil")] } else { vec![] });
            (refused, tx.tx_var("json"), tx.tx_var("posted"), replayed)
        };
        let s = |v: &str| Some(v.to_string());
        let good = r#"{"name":"good"}"#;
        // Walked twice (kept the second time), then replayed: the same to the rules.
        assert_eq!(send("/quiet", good), (false, s("1"), None, 0));
        assert_eq!(send("/quiet", good), (false, s("1"), None, 0));
        assert_eq!(send("/quiet", good), (false, s("1"), None, 2));
        assert_eq!(send("/quiet", good), (false, s("1"), None, 2));
        // The body is part of phase 2's key: an evil one is refused after phase 1 was
        // replayed (the body read as JSON by the replayed `ctl`), then the refusal is
        // replayed, logged as it was.
        for replayed in [1, 1, 2, 2] {
            let evil = send("/quiet", r#"{"name":"evil"}"#);
            assert_eq!(evil, (true, s("1"), None, replayed));
        }
        // Another path, another key: rule 4 runs.
        for replayed in [0, 0, 2] {
            assert_eq!(send("/loud", good), (false, s("1"), s("1"), replayed));
        }
    }

    #[test]
    fn a_body_too_long_for_a_key_is_parsed_and_its_phase_walked_every_time() {
        let engine = crate::WafEngine::of_rules(
            "SecRule ARGS:json.name \"@contains evil\" \"id:1,phase:2,deny,status:403\"",
        );
        let number = engine.compiled().number;
        let padding = "x".repeat(phases::LONGEST_KEY);
        let send = |name: &str| {
            let body = format!(r#"{{"pad":"{padding}","name":"{name}"}}"#);
            let facts = RequestFacts::new("POST", "/", "HTTP/1.1")
                .header("Content-Type", "application/json");
            let before = phases::replayed(number);
            let mut tx = engine.transaction(facts);
            tx.process_request_headers();
            let refused = tx.process_request_body(body.as_bytes()).is_blocked();
            (refused, phases::replayed(number) - before)
        };
        // Phase 1 is replayed from the third request on; phase 2 never is.
        assert_eq!(send("good"), (false, 0));
        assert_eq!(send("good"), (false, 0));
        assert_eq!(send("good"), (false, 1));
        assert_eq!(send("evil"), (true, 1));
    }

    #[test]
    fn phase_two_without_a_body_is_not_taken_for_phase_one() {
        // Phase 2 run by the response's headers, no body given: its key is phase 1's.
        let engine = crate::WafEngine::of_rules(
            "SecRule REQUEST_METHOD \"@streq GET\" \"id:1,phase:1,pass,nolog,setvar:tx.one=1\"\n\
             SecRule REQUEST_METHOD \"@streq GET\" \"id:2,phase:2,pass,nolog,setvar:tx.two=1\"",
        );
        for _ in 0..4 {
            let mut tx = engine.transaction(RequestFacts::new("GET", "/", "HTTP/1.1"));
            tx.process_request_headers();
            tx.process_response_headers(200, "HTTP/1.1", &[]);
            assert_eq!(
                (tx.tx_var("one").as_deref(), tx.tx_var("two").as_deref()),
                (Some("1"), Some("1"))
            );
        }
    }

    #[test]
    fn rules_known_to_find_nothing_are_passed_over_around_a_removed_rule() {
        // Rule 1 removes rule 3 from POST requests; rules 2 and 5 find nothing in the
        // values sent, which the thread learns after the first round.
        let engine = crate::WafEngine::of_rules(
            "SecRule REQUEST_METHOD \"@streq POST\" \"id:1,phase:1,pass,nolog,ctl:ruleRemoveById=3\"\n\
             SecRule ARGS \"@contains nothing-here\" \"id:2,phase:1,deny\"\n\
             SecRule ARGS \"@contains evil\" \"id:3,phase:1,deny\"\n\
             SecRule ARGS \"@contains nothing-here-either\" \"id:5,phase:1,deny\"\n\
             SecRule ARGS \"@contains bad\" \"id:4,phase:1,deny\"",
        );
        let blocked = |method: &str, value: &str| {
            let facts = RequestFacts::new(method, &format!("/?a={value}"), "HTTP/1.1");
            let mut tx = engine.transaction(facts);
            match tx.process_request_headers().decision {
                Decision::Block { rule_id, .. } => Some(rule_id),
                _ => None,
            }
        };
        for _ in 0..3 {
            assert_eq!(blocked("POST", "evil"), None);
            assert_eq!(blocked("POST", "bad"), Some(4));
            assert_eq!(blocked("POST", "fine"), None);
            assert_eq!(blocked("GET", "evil"), Some(3));
            assert_eq!(blocked("GET", "bad"), Some(4));
        }
    }

    #[test]
    fn a_key_no_other_rule_reads_is_left_out_of_replays_but_for_the_names_a_regex_reads() {
        // Rule 1 builds a key per header name, read by its chained link; rule 2 reads the
        // keys that contain `paramcounter_` (a header may be named so).
        let engine = crate::WafEngine::of_rules(
            "SecRule REQUEST_HEADERS_NAMES \"@rx ^.*$\" \"id:1,phase:1,pass,nolog,capture,t:lowercase,setvar:'tx.h_%{tx.0}=/%{tx.0}/',chain\"\n\
             SecRule TX:/^h_/ \"@within /x-forbidden/\" \"setvar:tx.forbidden=1\"\n\
             SecRule TX:/paramcounter_/ \"@rx ^/\" \"id:2,phase:1,pass,nolog,setvar:tx.seen=+1\"",
        );
        let run = |header: &str| {
            let facts = RequestFacts::new("GET", "/", "HTTP/1.1").header(header, "1");
            let mut tx = engine.transaction(anew(facts));
            tx.process_request_headers();
            let (number, rules) = (tx.engine.number, tx.engine.rules.rules.len());
            let replays = replay::with_outcomes(number, rules, |o| o.hits(0));
            let key = format!("h_{}", header.to_ascii_lowercase());
            (
                tx.tx_var(&key),
                tx.tx_var("seen"),
                tx.tx_var("forbidden"),
                replays,
            )
        };
        let s = |text: &str| Some(text.to_string());
        // Evaluated, the rule sets the key; replayed, it does not: no other rule reads it.
        assert_eq!(run("X-Forbidden"), (s("/x-forbidden/"), None, s("1"), 0));
        assert_eq!(run("X-Forbidden"), (None, None, s("1"), 1));
        // A key rule 2 reads is replayed.
        assert_eq!(
            run("Paramcounter_a"),
            (s("/paramcounter_a/"), s("1"), None, 1)
        );
        assert_eq!(
            run("Paramcounter_a"),
            (s("/paramcounter_a/"), s("1"), None, 2)
        );
    }

    #[test]
    fn a_rule_that_did_nothing_is_replayed_whatever_its_actions_would_read() {
        // Rule 2 adds to a score that rule 1 sets per request: when it matches, what it
        // did depends on the score; when it neither matches nor acts, it does not.
        let engine = crate::WafEngine::of_rules(
            "SecAction \"id:3,phase:1,pass,nolog,setvar:tx.step=5\"\n\
             SecRule REQUEST_HEADERS:X-Start \"@rx ^(\\d+)$\" \"id:1,phase:1,pass,nolog,capture,setvar:tx.score=%{tx.1}\"\n\
             SecRule ARGS:q \"@streq %{request_headers.x-bad}\" \"id:2,phase:1,pass,nolog,setvar:tx.score=+%{tx.step}\"",
        );
        let score = |start: &str, query: &str| {
            // (An argument read from the request: the thread's memory of values does not
            // pass over the rule.)
            let facts = RequestFacts::new("GET", &format!("/?q={query}"), "HTTP/1.1")
                .header("X-Start", start)
                .header("X-Bad", "evil");
            let mut tx = engine.transaction(anew(facts));
            tx.process_request_headers();
            let (number, rules) = (tx.engine.number, tx.engine.rules.rules.len());
            let ri = tx
                .engine
                .rules
                .rules
                .iter()
                .position(|r| r.id == 2)
                .unwrap();
            let hits = replay::with_outcomes(number, rules, |o| o.hits(ri));
            (tx.tx_var("score"), hits)
        };
        let s = |n: &str| Some(n.to_string());
        assert_eq!(score("1", "fine"), (s("1"), 0));
        // Found by its argument's values alone, whatever the score.
        assert_eq!(score("7", "fine"), (s("7"), 1));
        assert_eq!(score("1", "evil"), (s("6"), 1));
        // A match is kept with the score it added to.
        assert_eq!(score("7", "evil"), (s("12"), 1));
        assert_eq!(score("1", "evil"), (s("6"), 2));
        assert_eq!(score("7", "evil"), (s("12"), 3));
        assert_eq!(score("3", "fine"), (s("3"), 4));
    }

    #[test]
    fn a_header_set_keeps_its_rows_once_nothing_more_is_learned_of_it() {
        let engine = crate::WafEngine::of_rules(
            "SecRule REQUEST_HEADERS:User-Agent \"@contains evil\" \"id:1,phase:1,deny\"",
        );
        // Returns whether the request was refused, and whether the thread's table keeps
        // rows for its header set after it.
        let request = |agent: &str| {
            let facts = RequestFacts::new("GET", "/", "HTTP/1.1")
                .header("Host", "media.example.org")
                .header("User-Agent", agent);
            let mut tx = engine.transaction(anew(facts));
            let refused = tx.process_request_headers().is_blocked();
            let set = tx.memo.header_set.flatten().expect("no header set");
            drop(tx);
            (refused, header_sets::with_rows(set, |_| {}))
        };
        // The first request learns that the rule finds nothing in its agent: its rows,
        // made before, knew less, and are forgotten; the second keeps what it found.
        assert_eq!(request("a good agent"), (false, false));
        assert_eq!(request("a good agent"), (false, true));
        assert_eq!(request("a good agent"), (false, true));
        // An agent the rule matches is refused however often it comes.
        for _ in 0..3 {
            assert!(request("an evil agent").0);
        }
    }

    #[test]
    fn a_rule_reading_only_the_header_set_is_replayed_by_its_number() {
        let engine = crate::WafEngine::of_rules(
            "SecRule REQUEST_HEADERS:User-Agent \"@contains evil\" \"id:2,phase:1,pass,nolog,setvar:tx.bad=%{request_headers.host}\"",
        );
        let ri = engine
            .compiled()
            .rules
            .rules
            .iter()
            .position(|r| r.id == 2)
            .unwrap();
        assert!(
            engine.compiled().replay[ri]
                .as_ref()
                .unwrap()
                .header_set_only
        );
        // Returns `tx.bad` after the request, how often the rule was replayed, and whether
        // it is idle for the request's header set.
        let request = |host: &str, agent: &str| {
            let facts = RequestFacts::new("GET", "/", "HTTP/1.1")
                .header("Host", host)
                .header("User-Agent", agent);
            let mut tx = engine.transaction(anew(facts));
            tx.process_request_headers();
            let (number, rules) = (tx.engine.number, tx.engine.rules.rules.len());
            let hits = replay::with_outcomes(number, rules, |o| o.hits(ri));
            let idle = tx.memo.is_idle(&tx.d, ri);
            (tx.tx_var("bad"), hits, idle)
        };
        let bad = |host: &str| Some(host.to_string());
        assert_eq!(request("a.example", "evil"), (bad("a.example"), 0, false));
        // A set it does nothing with makes it idle: passed over from then on.
        assert_eq!(request("a.example", "good"), (None, 0, true));
        assert_eq!(request("a.example", "good"), (None, 0, true));
        assert_eq!(request("a.example", "evil"), (bad("a.example"), 1, false));
        // Another set, another number: evaluated, then replayed in turn.
        assert_eq!(request("b.example", "evil"), (bad("b.example"), 1, false));
        assert_eq!(request("b.example", "evil"), (bad("b.example"), 2, false));
        assert_eq!(request("a.example", "evil"), (bad("a.example"), 3, false));
    }

    #[test]
    fn a_rule_of_the_header_set_is_fingerprinted_by_its_number_alone() {
        // Its fingerprint is the set's mark and number, nothing of the values (the set's
        // key has a buffer of its own).
        let engine = crate::WafEngine::of_rules(
            "SecRule &REQUEST_HEADERS:Host \"@eq 0\" \"id:1,phase:1,pass,nolog\"",
        );
        let facts = RequestFacts::new("GET", "/", "HTTP/1.1").header("Host", "media.example.org");
        let mut tx = engine.transaction(facts);
        tx.process_request_headers();
        let set = tx.memo.header_set.flatten().expect("no header set");
        let mut expected = Vec::new();
        replay::write_header_set(&mut expected, set.number);
        assert_eq!(tx.memo.fingerprint, expected);
    }

    #[test]
    fn addresses_read_as_display_writes_them() {
        for a in [
            "0.0.0.0",
            "192.0.2.10",
            "255.255.255.255",
            "10.0.100.9",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = a.parse().unwrap();
            assert_eq!(address_text(ip), ip.to_string().into_bytes());
        }
    }

    #[test]
    fn tx_reads_through_to_the_shared_values_and_hides_what_it_changed() {
        let base: VarMap = [("a", "1"), ("b", "2")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        let mut tx = TxVars::new(Arc::new(base));
        tx.set(Cow::Borrowed("a"), |v| v.extend_from_slice(b"10"));
        tx.set(Cow::Borrowed("c"), |v| v.extend_from_slice(b"3"));
        tx.remove("b");
        tx.remove("nothing");
        assert_eq!(tx.get("a").map(Vec::as_slice), Some(&b"10"[..]));
        assert_eq!(tx.get("b"), None);
        assert_eq!(tx.get("c").map(Vec::as_slice), Some(&b"3"[..]));
        let mut keys: Vec<&String> = tx.iter().map(|(k, _)| k).collect();
        keys.sort();
        assert_eq!(keys, ["a", "c"]);
        // Deleted, then set again.
        tx.set(Cow::Borrowed("b"), |v| v.extend_from_slice(b"4"));
        let map = tx.into_map();
        assert_eq!(map.len(), 3);
        assert_eq!(map["b"], b"4");
    }

    #[test]
    fn a_removal_takes_a_variable_whole_from_the_rules_it_names_only() {
        let mut removals = Removals::default();
        let ctl = |effect| TargetRemoval::Ctl {
            rule: 0,
            link: 0,
            effect,
        };
        removals.add(ctl(0), &[3, 70, 130], [Var::Args].into_iter());
        // A removal of one key takes nothing whole, but widens the span.
        removals.add(ctl(1), &[2, 200], std::iter::empty());
        for ri in [3, 70, 130] {
            assert!(removals.takes_whole(ri, Var::Args), "rule {ri}");
            assert!(removals.takes_whole(ri, Var::ArgsGet), "rule {ri}");
            assert!(!removals.takes_whole(ri, Var::ArgsNames), "rule {ri}");
        }
        for ri in [0, 2, 4, 69, 129, 131, 200, 5000] {
            assert!(!removals.takes_whole(ri, Var::Args), "rule {ri}");
        }
        assert!(removals.may_reach(200) && !removals.may_reach(201));
        // Put in force again, it adds nothing.
        removals.add(ctl(0), &[3, 70, 130], [Var::Args].into_iter());
        assert_eq!(removals.whole.len(), 1);
    }

    #[test]
    fn adding_to_tx_reads_the_number_wherever_the_key_is_and_says_when_it_is_new() {
        let base: VarMap = [("shared", "5"), ("text", "abc"), ("gone", "7")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        let mut tx = TxVars::new(Arc::new(base));
        let read =
            |tx: &TxVars, k: &str| tx.get(k).map(|v| String::from_utf8_lossy(v).into_owned());
        // From the shared values, then from this transaction's own.
        assert!(!tx.add(Cow::Borrowed("shared"), 3));
        assert!(!tx.add(Cow::Borrowed("shared"), -10));
        assert_eq!(read(&tx, "shared").as_deref(), Some("-2"));
        // A key not set starts at 0; a value that is not a number reads as 0.
        assert!(tx.add(Cow::Borrowed("fresh"), 4));
        assert!(!tx.add(Cow::Borrowed("fresh"), 4));
        assert_eq!(read(&tx, "fresh").as_deref(), Some("8"));
        assert!(!tx.add(Cow::Borrowed("text"), 1));
        assert_eq!(read(&tx, "text").as_deref(), Some("1"));
        // A deleted shared key is new again.
        tx.remove("gone");
        assert!(tx.add(Cow::Borrowed("gone"), 2));
        assert_eq!(read(&tx, "gone").as_deref(), Some("2"));
        // Sums stop at the ends of the range.
        assert!(tx.add(Cow::Borrowed("big"), i64::MAX));
        assert!(!tx.add(Cow::Borrowed("big"), 1));
        assert_eq!(read(&tx, "big"), Some(i64::MAX.to_string()));
    }

    #[test]
    fn a_tx_table_handed_on_reads_as_new_and_keeps_its_buffers() {
        let base: Arc<VarMap> = Arc::new(
            [("a", "1"), ("b", "2")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        );
        let mut first = TxVars::new(base.clone());
        assert!(!first.set(Cow::Borrowed("a"), |v| v.extend_from_slice(b"10")));
        assert!(first.set(Cow::Borrowed("c"), |v| v.extend_from_slice(b"3")));
        first.remove("b");
        first.give_back();
        // The next transaction on the thread gets the table: nothing of the first shows.
        let mut next = TxVars::new(base.clone());
        assert!(next.own.contains_key("c"), "the table was not handed on");
        assert_eq!(next, TxVars::new(base.clone()));
        assert_eq!(next.get("a").map(Vec::as_slice), Some(&b"1"[..]));
        assert_eq!(next.get("b").map(Vec::as_slice), Some(&b"2"[..]));
        assert_eq!(next.get("c"), None);
        let mut keys: Vec<&String> = next.iter().map(|(k, _)| k).collect();
        keys.sort();
        assert_eq!(keys, ["a", "b"]);
        // Setting a left key is new unless the base has it.
        assert!(next.set(Cow::Borrowed("c"), |v| v.extend_from_slice(b"5")));
        assert!(!next.set(Cow::Borrowed("b"), |v| v.extend_from_slice(b"6")));
        next.remove("c");
        assert_eq!(next.get("c"), None);
        assert_eq!(next.clone().into_map().len(), 2);
    }
}
