//! Rules the configuration decides, evaluated once at load instead of on every request.
//!
//! CRS reads its configuration through `TX` on every request: some thirty rules of
//! `REQUEST-901` set what the setup left unset, and each rule file opens with rules that
//! compare `TX:DETECTION_PARANOIA_LEVEL` with the levels of its rules and skip those above
//! it. Such a rule comes out the same on every request when
//! - its tests read only literal `TX` keys (targets, counts, operator macros) that no rule
//!   evaluated per request can have written before it;
//! - no rule evaluated per request before it can skip it (`skipAfter`, `skip`), and no
//!   `ctl` run before it or path exclusion can remove its `TX` targets;
//! - it never matches (then its actions never run; with a single test, or a chain whose
//!   first link alone meets the first condition and never matches), or it always
//!   matches, neither logged nor disruptive, and its only actions are `setvar`s that read
//!   such keys and write literal `TX` keys no rule evaluated per request can have read or
//!   written before it, and no `ctl` or exclusion can remove it (a removed rule is passed
//!   over per request, its jump not taken).
//!
//! [`fold`] walks the request phases in the order they run, evaluates each such rule once
//! on a probe transaction and notes whether it matched ([`Fold`]); every transaction then
//! starts with the `TX` the probe ended with ([`Folding::tx`]), passes over a rule that
//! never matches and takes the jump of one that always does. Moving a decided rule's
//! `setvar`s to the start of the transaction changes nothing a rule can see, by the last
//! condition. After a rule evaluated per request that can end the phase (`allow`,
//! `ctl:ruleEngine`) nothing more is decided; the response phases are not walked.
//!
//! The same walk decides operator arguments: a rule evaluated per request whose argument
//! reads only literal `TX` keys no rule evaluated per request can have written before it (or
//! it itself) gets the text that argument always expands to ([`FixedArgument`]). Its
//! verdict on a value then depends on the value alone, so what a thread remembers of values
//! covers it (`@within %{tx.allowed_methods}` on `REQUEST_METHOD`, `@within
//! %{tx.allowed_http_versions}` on `REQUEST_PROTOCOL`), and nothing is expanded per request.
//!
//! And it decides first links: a rule evaluated per request whose first link reads only
//! literal `TX` keys no rule evaluated per request can have written before it, and which
//! matches, always matches the same values ([`Folding::starts`]). Each request takes those
//! matches as they are and runs the rule's actions and the rest of its chain as usual (CRS's
//! score sums: `TX:BLOCKING_PARANOIA_LEVEL "@ge 1"`, then a `setvar` adding a score).

use std::collections::HashSet;
use std::sync::Arc;

use crate::actions::{Ctl, Disruptive, Effect};
use crate::engine::{Compiled, RequestFacts};
use crate::macros::Macro;
use crate::rule::{CAPTURE_KEYS, Item, Link, Rule, RuleSet};
use crate::transaction::{Transaction, VarMap};
use crate::variables::{Selector, Var};

/// What the configuration decides about a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fold {
    /// Evaluated on each request.
    Run,
    /// Never matches.
    Never,
    /// Always matches; its `setvar`s are in [`Folding::tx`], what is left is its jump.
    Always,
}

/// What the first link of a rule evaluated per request always matches, when the
/// configuration decides it: the name and value of each match, as the link records them.
pub(crate) type DecidedStart = Box<[(String, Vec<u8>)]>;

/// The rules decided at load, and the `TX` every transaction starts with.
#[derive(Debug, Default)]
pub(crate) struct Folding {
    /// Per rule index.
    pub(crate) rules: Vec<Fold>,
    /// `TX` after the `setvar`s of the rules that always match.
    pub(crate) tx: Arc<VarMap>,
    /// Per rule index: for a rule evaluated per request whose first link reads only `TX`
    /// keys the configuration decides and always matches (CRS's score sums,
    /// `TX:BLOCKING_PARANOIA_LEVEL "@ge 1"` then a `setvar` adding a score), that link's
    /// matches, which each request then takes as they are instead of evaluating the link;
    /// its actions and the rest of its chain run as usual.
    pub(crate) starts: Vec<Option<DecidedStart>>,
    /// Per rule index: for a rule evaluated per request that reads and writes only literal
    /// `TX` keys and, from the values [`Folding::tx`] gives them, leaves everything as it
    /// was (CRS's score sums adding scores of 0, its threshold checks that do not match),
    /// those keys: a transaction that has set or deleted none of them passes over the
    /// rule (see [`quiet_keys`]).
    pub(crate) quiet: Vec<Option<QuietKeys>>,
}

/// The `TX` keys a quiet rule reads and writes (lower case): while a transaction has set
/// or deleted none of them, the rule does nothing (see [`Folding::quiet`]).
pub(crate) type QuietKeys = Box<[String]>;

impl Folding {
    /// Nothing decided: every rule of `rules` runs on each request.
    pub(crate) fn none(rules: &RuleSet) -> Folding {
        Folding {
            rules: vec![Fold::Run; rules.rules.len()],
            tx: Arc::default(),
            starts: vec![None; rules.rules.len()],
            quiet: vec![None; rules.rules.len()],
        }
    }
}

/// An operator argument the configuration decides: rule `rule`'s link `link` always
/// expands its argument to `text`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FixedArgument {
    pub(crate) rule: usize,
    pub(crate) link: usize,
    pub(crate) text: String,
}

/// What a rule touches of `TX`, when its tests read nothing else.
struct TxUse<'a> {
    /// The keys its targets and operator arguments read.
    tests: Vec<&'a str>,
    /// The keys its actions read and write, when they are only `setvar`s on literal `TX`
    /// keys with `TX` macros.
    effects: Option<(Vec<&'a str>, Vec<&'a str>)>,
}

/// The `TX` keys a macro reads, or `None` when it reads anything else.
fn tx_refs<'a>(m: &'a Macro, reads: &mut Vec<&'a str>) -> Option<()> {
    for (var, key) in m.references() {
        reads.push(key.filter(|_| var == Var::Tx)?);
    }
    Some(())
}

/// Adds the `TX` keys a link's test reads (its targets, counts and operator macro) to
/// `tests`, or returns `None` when it reads anything else or captures.
fn link_tests<'a>(link: &'a Link, tests: &mut Vec<&'a str>) -> Option<()> {
    if link.capture {
        return None;
    }
    for t in &link.targets {
        let Selector::Key(k) = &t.selector else {
            return None;
        };
        if t.var != Var::Tx || !t.exclusions.is_empty() {
            return None;
        }
        tests.push(k.as_str());
    }
    if let Some(m) = link.operator.argument() {
        tx_refs(m, tests)?;
    }
    Some(())
}

/// What `rule` touches of `TX`, or `None` when its tests read anything else or it
/// captures.
fn tx_use(rule: &Rule) -> Option<TxUse<'_>> {
    let mut tests = Vec::new();
    let mut effects = Some((Vec::new(), Vec::new()));
    for link in &rule.links {
        link_tests(link, &mut tests)?;
        for e in &link.effects {
            effects = effects.and_then(|(mut reads, mut writes)| {
                let Effect::SetVar {
                    collection,
                    key,
                    op,
                } = e
                else {
                    return None;
                };
                if matches!(collection, Var::Ip | Var::Global | Var::Env) {
                    return None;
                }
                writes.push(key.literal()?);
                if let Some(m) = op.value() {
                    tx_refs(m, &mut reads)?;
                }
                Some((reads, writes))
            });
        }
    }
    Some(TxUse { tests, effects })
}

/// What the rules left to each request have read and written of `TX` so far.
#[derive(Default)]
struct Touched {
    read_keys: HashSet<String>,
    read_selectors: Vec<Selector>,
    read_all: bool,
    written_keys: HashSet<String>,
    /// Keys built by macros: each starts with one of these (all keys for an empty one).
    written_prefixes: Vec<String>,
    /// Per rule index: whether a `ctl` run before, or a path exclusion, may remove it (see
    /// [`crate::engine::removable_rules`]).
    removable: Vec<bool>,
    /// Per rule index: whether a `ctl` run before, or a path exclusion, may remove one of
    /// its `TX` targets.
    retargetable: Vec<bool>,
}

impl Touched {
    /// Nothing read or written yet; the rules a `ctl` run before them or a path exclusion
    /// may remove, and the `TX` targets path exclusions may remove.
    fn new(engine: &Compiled) -> Touched {
        let n = engine.rules.rules.len();
        let mut touched = Touched {
            removable: crate::engine::removable_rules(engine),
            retargetable: vec![false; n],
            ..Touched::default()
        };
        for ex in &engine.path_exclusions {
            if ex.targets.iter().any(|(v, _)| *v == Var::Tx) {
                ex.rules
                    .iter()
                    .for_each(|&i| touched.retargetable[i] = true);
            }
        }
        touched
    }

    /// Whether `key` holds the same value on every request here.
    fn known(&self, key: &str) -> bool {
        !self.written_keys.contains(key)
            && !self
                .written_prefixes
                .iter()
                .any(|p| key.starts_with(p.as_str()))
    }

    /// Whether no rule left to each request has read `key` yet.
    fn unread(&self, key: &str) -> bool {
        !self.read_all
            && !self.read_keys.contains(key)
            && !self.read_selectors.iter().any(|s| s.matches(key))
    }

    fn read_macro(&mut self, m: &Macro) {
        for (var, key) in m.references() {
            match (var, key) {
                (Var::Tx, Some(k)) => {
                    self.read_keys.insert(k.to_string());
                }
                (Var::Tx, None) => self.read_all = true,
                _ => {}
            }
        }
    }

    /// Notes what a rule evaluated per request may read and write.
    fn record(&mut self, rule: &Rule) {
        for m in rule.macros() {
            self.read_macro(m);
        }
        for link in &rule.links {
            for t in link.targets.iter().filter(|t| t.var == Var::Tx) {
                match &t.selector {
                    Selector::Key(k) => {
                        self.read_keys.insert(k.clone());
                    }
                    Selector::All => self.read_all = true,
                    s @ Selector::Regex(_) => self.read_selectors.push(s.clone()),
                }
            }
            if link.capture {
                self.written_keys
                    .extend(CAPTURE_KEYS.iter().map(|k| k.to_string()));
            }
            for e in &link.effects {
                match e {
                    Effect::SetVar {
                        collection, key, ..
                    } => {
                        if matches!(collection, Var::Ip | Var::Global | Var::Env) {
                            continue;
                        }
                        match key.literal() {
                            Some(k) => {
                                self.written_keys.insert(k.to_string());
                            }
                            None => self
                                .written_prefixes
                                .push(key.literal_prefix().to_ascii_lowercase()),
                        }
                    }
                    Effect::Ctl(Ctl::RemoveTarget(_, rules, Var::Tx, _)) => {
                        rules.iter().for_each(|&i| self.retargetable[i] = true);
                    }
                    Effect::SetEnv(..) | Effect::InitCol(_) | Effect::Ctl(_) => {}
                }
            }
        }
    }
}

/// Whether a rule evaluated per request may end its phase or every later one.
fn may_stop(rule: &Rule) -> bool {
    matches!(rule.disruptive, Disruptive::Allow(_))
        || rule.links.iter().any(|l| {
            l.effects
                .iter()
                .any(|e| matches!(e, Effect::Ctl(Ctl::RuleEngine(_))))
        })
}

/// Whether some rule's first link reads the matched variables, which hold the last match
/// of an earlier rule there: then no rule may be passed over or settled other than by its
/// own evaluation (a decided rule must not match, nor a later link decide its rule, nor an
/// outcome be replayed, and every rule sets the matched variables on each match), or the
/// value read would not be the one it is.
pub(crate) fn first_links_read_earlier_matches(rules: &RuleSet) -> bool {
    rules.rules.iter().any(reads_earlier_match)
}

/// Whether a rule's first link reads the matched variables (see
/// [`first_links_read_earlier_matches`]).
fn reads_earlier_match(rule: &Rule) -> bool {
    let matched = |v: Var| {
        matches!(
            v,
            Var::MatchedVar | Var::MatchedVarName | Var::MatchedVars | Var::MatchedVarsNames
        )
    };
    rule.links.first().is_some_and(|l| {
        l.targets.iter().any(|t| matched(t.var))
            || l.operator
                .argument()
                .is_some_and(|m| m.references().any(|(v, _)| matched(v)))
    })
}

/// The arguments of a rule evaluated per request (`ri`, already recorded in `touched`) that
/// read only `TX` keys known here, expanded with the `TX` of `probe`.
fn fixed_arguments(
    ri: usize,
    rule: &Rule,
    touched: &Touched,
    probe: &mut Transaction,
    out: &mut Vec<FixedArgument>,
) {
    for (l, link) in rule.links.iter().enumerate() {
        let Some(m) = link.operator.argument().filter(|m| m.literal().is_none()) else {
            continue;
        };
        let mut reads = Vec::new();
        if tx_refs(m, &mut reads).is_none() || !reads.iter().all(|k| touched.known(k)) {
            continue;
        }
        let tx = probe.tx();
        let text = m.expand(|_, k| k.and_then(|k| tx.get(k)));
        if let Ok(text) = String::from_utf8(text.into_owned()) {
            out.push(FixedArgument {
                rule: ri,
                link: l,
                text,
            });
        }
    }
}

/// Whether the first link of rule `ri` comes out the same on every request: it has targets
/// (a link without is an action, which always matches), reads only `TX` keys no rule
/// evaluated per request can have written before it (`touched`, which does not hold the
/// rule yet), and no `ctl` run before or path exclusion can remove one of its targets.
fn starter_decided(ri: usize, rule: &Rule, touched: &Touched) -> bool {
    let Some(starter) = rule.links.first().filter(|l| !l.targets.is_empty()) else {
        return false;
    };
    let mut tests = Vec::new();
    !touched.retargetable[ri]
        && link_tests(starter, &mut tests).is_some()
        && tests.iter().all(|k| touched.known(k))
}

/// The keys of rule `ri` (evaluated per request) when it is quiet: its tests read only
/// literal `TX` keys and its actions are only `setvar`s of literal `TX` keys whose values
/// read only such keys, and evaluated on `probe` (the `TX` every transaction starts with,
/// as far as the keys it reads and writes go: those no rule decided after it writes) it
/// changes no `TX` key; and when it matches there, neither its log entry, its jump nor the
/// matched variables it leaves (`may_match`: no first link reads them) can tell. A
/// transaction that has not set or deleted any of its keys reads the same values, so the
/// rule does nothing there either: it is passed over.
fn quiet_keys(
    ri: usize,
    rule: &Rule,
    may_match: bool,
    probe: &mut Transaction,
) -> Option<QuietKeys> {
    let TxUse {
        tests: mut read_or_written,
        effects,
    } = tx_use(rule)?;
    let (reads, writes) = effects?;
    read_or_written.extend(reads);
    read_or_written.extend(writes);
    let before = probe.tx().clone();
    let matched = probe.probe_rule(ri);
    let unchanged = *probe.tx() == before;
    *probe.tx() = before;
    let unseen = !matched
        || (may_match
            && !(rule.log && rule.id != 0)
            && matches!(rule.disruptive, Disruptive::Pass | Disruptive::Block)
            && rule.skip_to.is_none()
            && rule.skip == 0);
    if !(unchanged && unseen) {
        return None;
    }
    let mut keys: Vec<String> = read_or_written
        .iter()
        .map(|k| k.to_ascii_lowercase())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    Some(keys.into_boxed_slice())
}

/// Decides what the configuration decides in `engine`'s request phases (see the module):
/// the rules, and the operator arguments of the rules left to each request.
pub(crate) fn fold(engine: &Arc<Compiled>) -> (Folding, Vec<FixedArgument>) {
    let rules = &engine.rules;
    let mut decided = vec![Fold::Run; rules.rules.len()];
    let mut starts = vec![None; rules.rules.len()];
    let mut quiet = vec![None; rules.rules.len()];
    let may_match = !first_links_read_earlier_matches(rules);
    let mut touched = Touched::new(engine);
    let mut arguments = Vec::new();
    let mut probe = Transaction::new(engine.clone(), RequestFacts::new("GET", "/", "HTTP/1.1"));
    'phases: for items in &rules.phases[..2] {
        let mut i = 0;
        // Rules before this position may be skipped by a rule evaluated per request.
        let mut shadow = 0;
        let mut skip = 0u32;
        while i < items.len() {
            let Item::Rule(ri) = items[i] else {
                i += 1;
                continue;
            };
            let at = i;
            i += 1;
            if skip > 0 {
                skip -= 1;
                continue;
            }
            let rule = &rules.rules[ri];
            // A rule a `ctl` may remove is passed over then, its jump not taken: one that
            // writes is left to run, one that does not may be decided.
            let removable = touched.removable[ri];
            let fold = (at >= shadow && !touched.retargetable[ri])
                .then(|| tx_use(rule))
                .flatten()
                .filter(|u| u.tests.iter().all(|k| touched.known(k)))
                .and_then(|u| {
                    // Whether its actions may be moved to the start of the transaction; a
                    // rule of one link whose actions may not is still decided when it never
                    // matches (its actions never run).
                    let movable = u.effects.is_some_and(|(reads, writes)| {
                        reads.iter().all(|k| touched.known(k))
                            && (writes.is_empty() || !removable)
                            && writes.iter().all(|k| touched.known(k) && touched.unread(k))
                    });
                    if !movable && rule.links.len() > 1 {
                        return None;
                    }
                    let before = probe.tx().clone();
                    let matched = probe.probe_rule(ri);
                    let keeps = if matched {
                        movable
                            && may_match
                            && !(rule.log && rule.id != 0)
                            && matches!(rule.disruptive, Disruptive::Pass | Disruptive::Block)
                    } else {
                        // A chain whose first links matched has run their `setvar`s.
                        *probe.tx() == before && (may_match || rule.links.len() == 1)
                    };
                    if !keeps {
                        *probe.tx() = before;
                    }
                    keeps.then_some(if matched { Fold::Always } else { Fold::Never })
                });
            // The matches of its first link, when they are the same on every request
            // (probed once, for both uses below).
            let starter = (fold.is_none() && starter_decided(ri, rule, &touched))
                .then(|| probe.starter_matches(ri));
            // A chain whose first link never matches never matches, whatever its other
            // links read: none of its actions ever runs.
            let fold = fold.or_else(|| {
                (rule.links.len() > 1
                    && at >= shadow
                    && starter.as_ref().is_some_and(Vec::is_empty))
                .then_some(Fold::Never)
            });
            if let Some(f) = fold {
                decided[ri] = f;
            }
            match fold {
                Some(Fold::Always) if !removable => {
                    if let Some(to) = rule.skip_to {
                        i = to;
                    }
                    skip = rule.skip;
                    continue;
                }
                Some(Fold::Always) => {}
                Some(_) => continue,
                None => {
                    // Before it is recorded: its first link runs before its actions. Whether
                    // a rule evaluated per request before it skips it is decided per request
                    // as before: only the link's result is taken from here.
                    starts[ri] = starter
                        .filter(|hits| !hits.is_empty())
                        .map(Vec::into_boxed_slice);
                    quiet[ri] = quiet_keys(ri, rule, may_match, &mut probe);
                    // Recorded first: an argument reading what the rule's own links write
                    // (or capture) is left as it is.
                    touched.record(rule);
                    fixed_arguments(ri, rule, &touched, &mut probe, &mut arguments);
                    if may_stop(rule) {
                        break 'phases;
                    }
                }
            }
            // The rules it may skip may run or not.
            if let Some(to) = rule.skip_to {
                shadow = shadow.max(to);
            }
            if rule.skip > 0 {
                let mut left = rule.skip;
                let mut end = i;
                while end < items.len() && left > 0 {
                    if matches!(items[end], Item::Rule(_)) {
                        left -= 1;
                    }
                    end += 1;
                }
                shadow = shadow.max(end);
            }
        }
    }
    let tx = std::mem::take(probe.tx()).into_map();
    let folding = Folding {
        rules: decided,
        tx: Arc::new(tx),
        starts,
        quiet,
    };
    (folding, arguments)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Decision, WafEngine};

    /// What was decided of each rule, by id.
    fn decided(e: &WafEngine) -> Vec<(u32, Fold)> {
        let c = e.compiled();
        c.rules
            .rules
            .iter()
            .zip(&c.folding.rules)
            .map(|(r, f)| (r.id, *f))
            .collect()
    }

    /// The decision on a request to `uri` with `headers`, after both request phases.
    fn decision(e: &WafEngine, uri: &str, headers: &[(&str, &str)]) -> Decision {
        let mut facts = RequestFacts::new("GET", uri, "HTTP/1.1");
        for (k, v) in headers {
            facts = facts.header(k, *v);
        }
        let mut tx = e.transaction(facts);
        tx.process_request_headers();
        tx.process_request_body(b"").decision
    }

    fn block(status: u16, rule_id: u32) -> Decision {
        Decision::Block { status, rule_id }
    }

    #[test]
    fn configuration_rules_are_decided_and_request_rules_are_not() {
        let e = WafEngine::of_rules(
            "SecAction \"id:1,phase:1,pass,nolog,setvar:tx.level=2\"\n\
             SecRule TX:level \"@lt 3\" \"id:2,phase:1,pass,nolog,skipAfter:END\"\n\
             SecRule ARGS \"@streq a\" \"id:3,phase:1,deny,status:403\"\n\
             SecMarker END\n\
             SecRule TX:level \"@gt 3\" \"id:4,phase:1,deny,status:403\"\n\
             SecRule REQUEST_HEADERS:x \"@streq y\" \"id:5,phase:1,pass,nolog,setvar:tx.level=5\"\n\
             SecRule TX:level \"@ge 5\" \"id:6,phase:2,deny,status:409\"\n\
             SecRule &TX:mode \"@eq 0\" \"id:7,phase:2,pass,nolog,setvar:tx.sum=+%{tx.level}\"\n\
             SecRule &TX:mode \"@eq 1\" \"id:8,phase:2,pass,nolog,setvar:tx.sum=+%{tx.level}\"\n\
             SecRule TX:sum \"@eq 2\" \"id:9,phase:2,deny,status:402\"\n",
        );
        use Fold::*;
        // 7 always matches but adds what 5 may change: it runs; 8 never matches.
        assert_eq!(
            decided(&e),
            [
                (1, Always),
                (2, Always),
                (3, Run),
                (4, Never),
                (5, Run),
                (6, Run),
                (7, Run),
                (8, Never),
                (9, Run)
            ]
        );
        assert_eq!(
            e.compiled().folding.tx.get("level").map(Vec::as_slice),
            Some(&b"2"[..])
        );
        assert_eq!(decision(&e, "/?q=a", &[]), block(402, 9));
        assert_eq!(decision(&e, "/", &[("x", "y")]), block(409, 6));
    }

    #[test]
    fn rules_that_may_be_skipped_or_removed_per_request_are_left_to_run() {
        let e = WafEngine::of_rules(
            "SecRule ARGS:s \"@streq 1\" \"id:10,phase:1,pass,nolog,skipAfter:M\"\n\
             SecAction \"id:11,phase:1,pass,nolog,setvar:tx.x=1\"\n\
             SecMarker M\n\
             SecRule ARGS:r \"@streq 1\" \"id:12,phase:1,pass,nolog,\
                ctl:ruleRemoveById=13,ctl:ruleRemoveById=14\"\n\
             SecAction \"id:13,phase:1,pass,nolog,setvar:tx.y=1\"\n\
             SecAction \"id:14,phase:1,pass,nolog,skipAfter:N\"\n\
             SecRule ARGS:q \"@streq 1\" \"id:15,phase:1,deny,status:403\"\n\
             SecMarker N\n\
             SecRule TX:y \"@eq 1\" \"id:16,phase:2,deny,status:409\"\n",
        );
        use Fold::*;
        // 11 may be skipped, 13 may be removed and sets `TX`; 14 may be removed but only
        // jumps, so it is decided, and what it jumps over is left to run.
        assert_eq!(
            decided(&e),
            [
                (10, Run),
                (11, Run),
                (12, Run),
                (13, Run),
                (14, Always),
                (15, Run),
                (16, Run)
            ]
        );
        assert_eq!(decision(&e, "/?q=1", &[]), block(409, 16));
        assert_eq!(decision(&e, "/?q=1&r=1", &[]), block(403, 15));
        assert_eq!(decision(&e, "/?r=1", &[]), Decision::Allow);
    }

    #[test]
    fn a_setvar_read_before_it_or_run_by_a_chain_that_fails_is_left_to_run() {
        let e = WafEngine::of_rules(
            "SecRule ARGS:a \"@streq %{tx.z}\" \"id:20,phase:1,deny,status:403\"\n\
             SecAction \"id:21,phase:1,pass,nolog,setvar:tx.z=1\"\n\
             SecRule &TX:k \"@eq 0\" \"id:30,phase:1,pass,nolog,chain,setvar:tx.p=1\"\n\
                SecRule &TX:k \"@eq 1\" \"setvar:tx.q=1\"\n\
             SecRule TX:p \"@eq 1\" \"id:31,phase:2,deny,status:410\"\n",
        );
        use Fold::*;
        assert_eq!(decided(&e), [(20, Run), (21, Run), (30, Run), (31, Run)]);
        // `TX:z` is still unset when rule 20 compares: "1" is not "", the chain's first
        // link has set `TX:p`.
        assert_eq!(decision(&e, "/?a=1", &[]), block(410, 31));
    }

    #[test]
    fn a_quiet_rule_is_passed_over_until_a_key_it_reads_or_writes_is_set() {
        let e = WafEngine::of_rules(
            "SecAction \"id:1,phase:1,pass,nolog,setvar:tx.score=0,setvar:tx.total=0,\
                setvar:tx.limit=5\"\n\
             SecRule ARGS:a \"@streq 1\" \"id:2,phase:1,pass,nolog,setvar:tx.score=+5\"\n\
             SecRule ARGS:b \"@streq 1\" \"id:3,phase:1,pass,nolog,setvar:tx.total=7\"\n\
             SecRule ARGS:c \"@streq 1\" \"id:4,phase:1,pass,nolog,setvar:tx.limit=0\"\n\
             SecRule TX:LIMIT \"@ge 1\" \"id:5,phase:2,pass,nolog,setvar:tx.total=0\"\n\
             SecRule TX:limit \"@ge 1\" \"id:6,phase:2,pass,nolog,setvar:tx.total=+%{tx.score}\"\n\
             SecRule TX:total \"@ge %{tx.limit}\" \"id:7,phase:2,deny,status:403\"\n\
             SecRule TX:limit \"@eq 5\" \"id:8,phase:2,pass,nolog,setvar:tx.seen=1\"\n\
             SecRule TX:seen \"@eq 1\" \"id:9,phase:2,deny,status:409\"\n",
        );
        let c = e.compiled();
        let quiet: Vec<(u32, Option<Vec<&str>>)> = c
            .rules
            .rules
            .iter()
            .zip(&c.folding.quiet)
            .map(|(r, q)| {
                (
                    r.id,
                    q.as_ref().map(|k| k.iter().map(String::as_str).collect()),
                )
            })
            .collect();
        // 5 sets what `TX:total` holds, 6 adds a score of 0, 7 does not match: quiet; 8
        // sets a key; 9 does not match without it, and reads it after 8 has set it.
        assert_eq!(
            quiet,
            [
                (1, None),
                (2, None),
                (3, None),
                (4, None),
                (5, Some(vec!["limit", "total"])),
                (6, Some(vec!["limit", "score", "total"])),
                (7, Some(vec!["limit", "total"])),
                (8, None),
                (9, Some(vec!["seen"]))
            ]
        );
        // 9 always blocks: these requests are told apart by the rule that blocks first.
        assert_eq!(decision(&e, "/", &[]), block(409, 9));
        // 2 adds to the score 6 adds to the total.
        assert_eq!(decision(&e, "/?a=1", &[]), block(403, 7));
        // 3 sets the total, which 5 sets back.
        assert_eq!(decision(&e, "/?b=1", &[]), block(409, 9));
        // 4 lowers the limit to the total (and 8 no longer matches).
        assert_eq!(decision(&e, "/?c=1", &[]), block(403, 7));
    }

    #[test]
    fn a_first_link_the_configuration_decides_is_taken_as_it_matches() {
        let e = WafEngine::of_rules(
            "SecAction \"id:70,phase:1,pass,nolog,setvar:tx.level=1\"\n\
             SecRule ARGS:a \"@streq 1\" \"id:71,phase:1,pass,nolog,setvar:tx.score=+3\"\n\
             SecRule TX:level \"@ge 1\" \"id:72,phase:2,pass,nolog,setvar:tx.total=+%{tx.score}\"\n\
             SecRule TX:level \"@eq 1\" \"id:73,phase:2,pass,nolog,chain\"\n\
                SecRule ARGS:c \"@streq %{MATCHED_VAR}\" \"setvar:tx.seen=1\"\n\
             SecRule ARGS:b \"@streq 1\" \"id:74,phase:2,pass,nolog,setvar:tx.level=2\"\n\
             SecRule TX:level \"@ge 1\" \"id:75,phase:2,pass,nolog,setvar:tx.total=+%{tx.score}\"\n\
             SecRule TX:total \"@ge 6\" \"id:76,phase:2,deny,status:403\"\n\
             SecRule TX:seen \"@eq 1\" \"id:78,phase:2,deny,status:405\"\n",
        );
        let c = e.compiled();
        let starts: Vec<(u32, Option<&DecidedStart>)> = c
            .rules
            .rules
            .iter()
            .zip(&c.folding.starts)
            .map(|(r, s)| (r.id, s.as_ref()))
            .collect();
        let level_1: DecidedStart = Box::new([("TX:level".to_string(), b"1".to_vec())]);
        let level_1 = Some(&level_1);
        // 72 and 73 read a level no rule before them can change: their first links are
        // decided, the rest runs per request; 74 may change the level before 75.
        assert_eq!(
            starts,
            [
                (70, None),
                (71, None),
                (72, level_1),
                (73, level_1),
                (74, None),
                (75, None),
                (76, None),
                (78, None)
            ]
        );
        assert_eq!(decision(&e, "/?a=1", &[]), block(403, 76));
        assert_eq!(decision(&e, "/?a=1&b=1", &[]), block(403, 76));
        // 73's chain reads what its first link matched.
        assert_eq!(decision(&e, "/?c=1", &[]), block(405, 78));
        assert_eq!(decision(&e, "/?c=2", &[]), Decision::Allow);
        assert_eq!(decision(&e, "/", &[]), Decision::Allow);
    }

    #[test]
    fn a_chain_whose_first_link_never_matches_is_decided_whatever_the_rest_reads() {
        let e = WafEngine::of_rules(
            "SecAction \"id:60,phase:1,pass,nolog,setvar:tx.limit=0\"\n\
             SecRule &TX:max_args \"@eq 1\" \"id:61,phase:1,deny,status:413,chain\"\n\
                SecRule &ARGS \"@gt %{tx.max_args}\" \"setvar:tx.score=+5\"\n\
             SecRule &TX:limit \"@eq 1\" \"id:62,phase:1,deny,status:414,chain\"\n\
                SecRule &ARGS \"@gt %{tx.limit}\" \"setvar:tx.score=+5\"\n\
             SecRule ARGS:on \"@streq 1\" \"id:63,phase:1,pass,nolog,setvar:tx.max_args=1\"\n\
             SecRule &TX:max_args \"@eq 1\" \"id:64,phase:2,deny,status:415,chain\"\n\
                SecRule &ARGS \"@gt %{tx.max_args}\" \"t:none\"\n\
             SecAction \"id:65,phase:2,pass,nolog,chain\"\n\
                SecRule ARGS:x \"@streq 1\" \"setvar:tx.x=1\"\n",
        );
        use Fold::*;
        // 61's first link never matches; 62's always does; 64's reads what 63 may set;
        // 65 starts with an action.
        assert_eq!(
            decided(&e),
            [
                (60, Always),
                (61, Never),
                (62, Run),
                (63, Run),
                (64, Run),
                (65, Run)
            ]
        );
        assert_eq!(decision(&e, "/?a=1&b=2", &[]), block(414, 62));
        assert_eq!(decision(&e, "/", &[]), Decision::Allow);
        assert_eq!(decision(&e, "/?on=1&b=2", &[]), block(414, 62));
        let e = WafEngine::of_rules(
            "SecRule ARGS:on \"@streq 1\" \"id:70,phase:1,pass,nolog,setvar:tx.max_args=1\"\n\
             SecRule &TX:max_args \"@eq 1\" \"id:71,phase:2,deny,status:415,chain\"\n\
                SecRule &ARGS \"@gt %{tx.max_args}\" \"t:none\"\n",
        );
        assert_eq!(decided(&e), [(70, Run), (71, Run)]);
        assert_eq!(decision(&e, "/?on=1&b=2", &[]), block(415, 71));
        assert_eq!(decision(&e, "/?b=2&c=3", &[]), Decision::Allow);
    }

    /// The argument of each rule's links, by id, where it is a literal.
    fn arguments(e: &WafEngine) -> Vec<(u32, Vec<Option<&str>>)> {
        e.compiled()
            .rules
            .rules
            .iter()
            .map(|r| {
                let args = r
                    .links
                    .iter()
                    .map(|l| l.operator.argument().and_then(Macro::literal));
                (r.id, args.collect())
            })
            .collect()
    }

    #[test]
    fn arguments_that_read_the_configuration_alone_are_decided() {
        let e = WafEngine::of_rules(
            "SecAction \"id:50,phase:1,pass,nolog,setvar:tx.allowed=GET HEAD\"\n\
             SecRule REQUEST_METHOD \"!@within %{tx.allowed}\" \"id:51,phase:1,deny,status:405\"\n\
             SecRule ARGS:m \"@streq post\" \"id:52,phase:1,pass,nolog,setvar:tx.allowed=POST\"\n\
             SecRule REQUEST_METHOD \"!@within %{tx.allowed}\" \"id:53,phase:2,deny,status:403\"\n\
             SecRule REQUEST_URI \"@rx ^/(\\w+)\" \"id:54,phase:2,capture,deny,status:418,chain\"\n\
                SecRule ARGS:n \"@streq %{tx.1}\" \"t:none\"\n\
             SecRule ARGS:k \"@streq x%{tx.allowed}\" \"id:55,phase:2,deny,status:409\"\n",
        );
        // 51 reads what the configuration set; 53 and 55 what 52 may change, 54's chain
        // what its first link captures.
        assert_eq!(
            arguments(&e),
            [
                (50, vec![None]),
                (51, vec![Some("GET HEAD")]),
                (52, vec![Some("post")]),
                (53, vec![None]),
                (54, vec![None, None]),
                (55, vec![None])
            ]
        );
        assert_eq!(decision(&e, "/", &[]), Decision::Allow);
        assert_eq!(decision(&e, "/?m=post", &[]), block(403, 53));
        assert_eq!(decision(&e, "/?k=xGET%20HEAD", &[]), block(409, 55));
        assert_eq!(decision(&e, "/?m=post&k=xPOST", &[]), block(403, 53));
        let mut tx = e.transaction(RequestFacts::new("PUT", "/", "HTTP/1.1"));
        assert_eq!(tx.process_request_headers().decision, block(405, 51));
        assert_eq!(decision(&e, "/abc?n=abc", &[]), block(418, 54));
        assert_eq!(decision(&e, "/abc?n=abd", &[]), Decision::Allow);
    }

    #[test]
    fn nothing_is_decided_after_a_rule_that_may_end_the_phase() {
        let e = WafEngine::of_rules(
            "SecRule ARGS:ok \"@streq 1\" \"id:40,phase:1,allow:phase\"\n\
             SecAction \"id:41,phase:1,pass,nolog,setvar:tx.w=1\"\n\
             SecRule TX:w \"@eq 1\" \"id:42,phase:2,deny,status:403\"\n",
        );
        assert!(decided(&e).iter().all(|(_, f)| *f == Fold::Run));
        assert_eq!(decision(&e, "/?ok=1", &[]), Decision::Allow);
        assert_eq!(decision(&e, "/", &[]), block(403, 42));
    }
}
