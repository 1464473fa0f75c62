//! What a phase's walk over its rules reads first: one small record per item, laid out in
//! the phase's order. Most rules of a request are decided by the memory of values (their
//! first link is known to find nothing in every value it reads) or at load (see
//! [`crate::fold`]: a rule that never matches is passed over, one that always matches
//! leaves only its jump, which the record holds); the walk decides those from these
//! records alone, without touching the rules themselves, which lie scattered over the heap
//! (in the edge the CPU caches hold TLS and proxy state between two requests, so every
//! line a request reads is a miss).

use crate::fold::{Fold, Folding};
use crate::rule::{Item, RuleSet};
use crate::variables::Var;

/// "No rule" (a marker) or "no recall bit".
pub(crate) const NONE: u32 = u32::MAX;

/// One item of a phase, as the walk reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Step {
    /// The rule's index, or [`NONE`] for a marker.
    pub(crate) rule: u32,
    /// What the walk does there.
    pub(crate) kind: Kind,
}

/// What the walk does at an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A marker: nothing.
    Marker,
    /// A rule the configuration decides never matches ([`Fold::Never`]): passed over.
    Never,
    /// A rule the configuration decides always matches ([`Fold::Always`]): its jump,
    /// to step `to` ([`NONE`]: none) and over `skip` rules, is all that is left of it.
    Always { to: u32, skip: u32 },
    /// A rule evaluated per request.
    Run {
        /// Its first link's recall bit when that link is steady (see
        /// [`crate::rule::Link::steady`]), else [`NONE`].
        bit: u32,
        /// Its first link's recall rows: a range of [`Walk::rows`] (and of
        /// [`Walk::vars`]).
        rows: (u32, u32),
        /// Its later links that decide the rule alone: a range of [`Walk::later`].
        later: (u32, u32),
    },
}

/// The steps of phases 1-5, in the order of [`RuleSet::phases`]. Markers and rules that
/// never match do nothing and have no step, but in a phase with a rule that skips a
/// number of rules (`skip`), which counts them.
#[derive(Debug, Default)]
pub(crate) struct Walk {
    /// Per phase, its steps.
    pub(crate) phases: [Vec<Step>; 5],
    /// Per phase and item: the index of the first step at or after it (one more entry for
    /// the end): where a jump to the item lands.
    pub(crate) step_of: [Vec<u32>; 5],
    /// The recall rows of the steps' first links, one after the other.
    pub(crate) rows: Vec<u32>,
    /// The variable of each target whose row is in `rows`: a `ctl` that removes it is
    /// checked without reading the rule.
    pub(crate) vars: Vec<Var>,
    /// Later links (after the first) that are steady and follow only links without
    /// per-match actions or captures, as their recall bit and a range of `rows`: when one
    /// is known to find nothing, its rule cannot match, and passing it over changes nothing
    /// a later rule can read (see [`crate::fold::first_links_read_earlier_matches`]). CRS's
    /// protocol checks are such chains: `GET` matches `REQUEST_METHOD`, and the
    /// `Content-Length` header it chains to is absent.
    pub(crate) later: Vec<(u32, (u32, u32))>,
    /// Per phase and step: the recall bit of a [`Kind::Run`] step's first link (as in
    /// the step), else [`NONE`]; the walk passes over runs of steps whose bit it knows
    /// finds nothing by reading these alone.
    pub(crate) bits: [Vec<u32>; 5],
}

impl Walk {
    /// The walk of `rules` as `folding` decides them; made again whenever either changes.
    pub(crate) fn new(rules: &RuleSet, folding: &Folding) -> Walk {
        let mut walk = Walk::default();
        // A rule passed over because a later link finds nothing would leave what the rule
        // before it matched where its first link's matches would have been: only when no
        // rule's first link reads that (CRS reads it in chained links only).
        let later_decides = !crate::fold::first_links_read_earlier_matches(rules);
        for (phase, items) in rules.phases.iter().enumerate() {
            let mut all = Vec::with_capacity(items.len());
            for item in items {
                let step = match *item {
                    Item::Marker(_) => Step {
                        rule: NONE,
                        kind: Kind::Marker,
                    },
                    Item::Rule(ri) => {
                        let rule = &rules.rules[ri];
                        let kind = match folding.rules.get(ri).copied().unwrap_or(Fold::Run) {
                            Fold::Never => Kind::Never,
                            Fold::Always => Kind::Always {
                                to: rule
                                    .skip_to
                                    .and_then(|to| u32::try_from(to).ok())
                                    .unwrap_or(NONE),
                                skip: rule.skip,
                            },
                            Fold::Run => {
                                let first = rule.links.first();
                                let bit = first
                                    .filter(|l| l.steady)
                                    .and_then(|l| l.recall)
                                    .unwrap_or(NONE);
                                let rows = match first.filter(|_| bit != NONE) {
                                    Some(first) => walk.add_rows(first),
                                    None => range(walk.rows.len(), walk.rows.len()),
                                };
                                let first_later = walk.later.len();
                                if later_decides {
                                    walk.add_later(rule);
                                }
                                Kind::Run {
                                    bit,
                                    rows,
                                    later: range(first_later, walk.later.len()),
                                }
                            }
                        };
                        Step {
                            rule: u32::try_from(ri).unwrap_or(NONE),
                            kind,
                        }
                    }
                };
                all.push(step);
            }
            let counted = items
                .iter()
                .any(|item| matches!(item, Item::Rule(ri) if rules.rules[*ri].skip > 0));
            let mut steps = Vec::with_capacity(all.len());
            let step_of = &mut walk.step_of[phase];
            for step in all {
                step_of.push(u32::try_from(steps.len()).unwrap_or(NONE));
                if counted || !matches!(step.kind, Kind::Marker | Kind::Never) {
                    steps.push(step);
                }
            }
            step_of.push(u32::try_from(steps.len()).unwrap_or(NONE));
            for step in &mut steps {
                if let Kind::Always { to, .. } = &mut step.kind
                    && *to != NONE
                {
                    *to = step_of[*to as usize];
                }
            }
            walk.bits[phase] = steps
                .iter()
                .map(|step| match step.kind {
                    Kind::Run { bit, .. } => bit,
                    _ => NONE,
                })
                .collect();
            walk.phases[phase] = steps;
        }
        walk
    }

    /// Per rule index, whether some step of the walk may evaluate the rule: a
    /// [`Kind::Run`] step reachable from the start of its phase. A rule the configuration
    /// decides always matches is the end of the way through it but to where it jumps and
    /// over what it skips, unless `removable` (per rule index) says a `ctl` run before it or
    /// a path exclusion can remove it, which leaves the way on. Jumps and skips of rules
    /// evaluated per request are taken to be both taken and not: the answer may say
    /// `true` of a rule no request evaluates, never `false` of one some request does.
    /// CRS's rules above the paranoia level and its sampling rules lie past such jumps.
    pub(crate) fn evaluated_rules(&self, rules: &RuleSet, removable: &[bool]) -> Vec<bool> {
        let mut evaluated = vec![false; rules.rules.len()];
        for (phase, steps) in (1u8..).zip(&self.phases) {
            let mut reached = vec![false; steps.len()];
            let mut todo = vec![0usize];
            // Where the walk goes from step `from` on with `skip` rules to pass over (as
            // `run_phase` counts them: every step but markers): the first after them.
            let over = |from: usize, skip: u32, todo: &mut Vec<usize>| {
                let (mut at, mut left) = (from, skip);
                while at < steps.len() && left > 0 {
                    if steps[at].kind != Kind::Marker {
                        left -= 1;
                    }
                    at += 1;
                }
                todo.push(at);
            };
            while let Some(at) = todo.pop() {
                if at >= steps.len() || reached[at] {
                    continue;
                }
                reached[at] = true;
                let step = steps[at];
                let ri = step.rule as usize;
                match step.kind {
                    Kind::Marker | Kind::Never => todo.push(at + 1),
                    Kind::Run { .. } => {
                        evaluated[ri] = true;
                        // Not matched: on; matched: its jump, then its skip.
                        todo.push(at + 1);
                        let rule = &rules.rules[ri];
                        let to = rule.skip_to.map_or(at + 1, |to| self.landing(phase, to));
                        over(to, rule.skip, &mut todo);
                    }
                    Kind::Always { to, skip } => {
                        if removable.get(ri) == Some(&true) {
                            todo.push(at + 1);
                        }
                        let from = if to == NONE { at + 1 } else { to as usize };
                        over(from, skip, &mut todo);
                    }
                }
            }
        }
        evaluated
    }

    /// Adds a link's recall rows (and its targets' variables): their range of
    /// [`Walk::rows`].
    fn add_rows(&mut self, link: &crate::rule::Link) -> (u32, u32) {
        let start = self.rows.len();
        self.rows.extend(&link.recall_rows);
        self.vars.extend(link.targets.iter().map(|t| t.var));
        range(start, self.rows.len())
    }

    /// Adds to [`Walk::later`] the later links of `rule` that decide it alone: steady,
    /// after links that neither act nor capture on a match.
    fn add_later(&mut self, rule: &crate::rule::Rule) {
        for (n, link) in rule.links.iter().enumerate().skip(1) {
            let before = &rule.links[..n];
            if before
                .iter()
                .any(|l| l.capture || !l.effects.is_empty() || l.targets.is_empty())
            {
                break;
            }
            if let Some(bit) = link.recall.filter(|_| link.steady) {
                let rows = self.add_rows(link);
                self.later.push((bit, rows));
            }
        }
    }

    /// The later links of a [`Kind::Run`] step with range `later`.
    pub(crate) fn later(&self, later: (u32, u32)) -> &[(u32, (u32, u32))] {
        &self.later[later.0 as usize..later.1 as usize]
    }

    /// Where a jump to item `to` of phase `phase` (1-5) lands: a step index.
    pub(crate) fn landing(&self, phase: u8, to: usize) -> usize {
        self.step_of[usize::from(phase - 1)][to] as usize
    }

    /// The recall rows of a [`Kind::Run`] step with rows `rows`.
    pub(crate) fn rows(&self, rows: (u32, u32)) -> &[u32] {
        &self.rows[rows.0 as usize..rows.1 as usize]
    }

    /// The variables of the targets of a [`Kind::Run`] step with rows `rows`, in their
    /// order.
    pub(crate) fn vars(&self, rows: (u32, u32)) -> &[Var] {
        &self.vars[rows.0 as usize..rows.1 as usize]
    }
}

/// Positions `start..end` of one of the walk's lists, as the steps hold them.
fn range(start: usize, end: usize) -> (u32, u32) {
    (
        u32::try_from(start).unwrap_or(NONE),
        u32::try_from(end).unwrap_or(NONE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::WafEngine;

    #[test]
    fn steps_follow_the_items_and_carry_what_decides_a_rule_without_it() {
        let engine = WafEngine::of_rules(
            "SecRule ARGS|REQUEST_HEADERS:User-Agent \"@rx attack\" \"id:1,phase:2,deny,setvar:tx.score=+6\"\n\
                 SecRule TX:score \"@gt 5\" \"id:2,phase:2,deny\"\n\
                 SecAction \"id:3,phase:2,pass,nolog,setvar:tx.level=1,skipAfter:END\"\n\
                 SecRule ARGS \"@rx skipped\" \"id:5,phase:2,deny\"\n\
                 SecMarker END\n\
                 SecRule TX:level \"@lt 1\" \"id:4,phase:2,deny\"",
        );
        let c = engine.compiled();
        let steps = &c.walk.phases[1];
        // The marker and rule 4, decided never to match, have no step.
        assert_eq!(steps.len(), c.rules.phases[1].len() - 2);
        assert!(steps.iter().all(|s| s.rule != NONE));
        let rule = |id| {
            c.rules
                .rules
                .iter()
                .position(|r| r.id == id)
                .and_then(|ri| {
                    steps
                        .iter()
                        .find(|s| s.rule as usize == ri)
                        .map(|s| (ri, *s))
                })
        };
        let (ri, steady) = rule(1).unwrap_or_else(|| panic!("no step for rule 1"));
        let Kind::Run { bit, rows, .. } = steady.kind else {
            panic!("rule 1 is not run: {steady:?}");
        };
        let first = &c.rules.rules[ri].links[0];
        assert_eq!(Some(bit), first.recall);
        assert_eq!(c.walk.rows(rows), first.recall_rows.as_slice());
        assert_eq!(c.walk.rows(rows).len(), 2);
        let vars: Vec<Var> = first.targets.iter().map(|t| t.var).collect();
        assert_eq!(c.walk.vars(rows), vars.as_slice());
        // The bits the walk passes steps over by: those of the first links of the steps
        // that have one.
        let bits: Vec<u32> = steps
            .iter()
            .map(|s| match s.kind {
                Kind::Run { bit, .. } => bit,
                _ => NONE,
            })
            .collect();
        assert_eq!(c.walk.bits[1], bits);
        assert!(bits.contains(&bit) && bits.contains(&NONE));
        let (_, on_tx) = rule(2).unwrap_or_else(|| panic!("no step for rule 2"));
        let Kind::Run { bit, rows, .. } = on_tx.kind else {
            panic!("rule 2 is not run: {on_tx:?}");
        };
        assert_eq!((bit, c.walk.rows(rows)), (NONE, &[][..]));
        // An action that always matches is its jump: past the marker, where rule 4, the
        // item after it, has no step.
        let (_, action) = rule(3).unwrap_or_else(|| panic!("no step for rule 3"));
        let end = u32::try_from(steps.len()).unwrap_or(NONE);
        assert_eq!(action.kind, Kind::Always { to: end, skip: 0 });
        assert!(rule(4).is_none());
        let items = c.rules.phases[1].len();
        assert_eq!(c.walk.landing(2, items - 1), steps.len());
        assert_eq!(c.walk.landing(2, items), steps.len());
    }

    #[test]
    fn rules_past_a_decided_jump_are_not_evaluated_and_their_targets_get_no_row() {
        let engine = WafEngine::of_rules(
            "SecAction \"id:900,phase:1,pass,nolog,setvar:tx.level=1\"\n\
             SecRule TX:level \"@lt 2\" \"id:1,phase:1,pass,nolog,skipAfter:END-HIGH\"\n\
             SecRule REQUEST_HEADERS:X-High \"@rx high\" \"id:2,phase:1,deny\"\n\
             SecMarker END-HIGH\n\
             SecRule ARGS \"@rx low\" \"id:3,phase:1,deny\"\n\
             SecRule REQUEST_HEADERS:X-Skip \"@rx ^skip$\" \"id:4,phase:1,pass,nolog,skipAfter:END-SKIP\"\n\
             SecRule ARGS \"@rx mid\" \"id:5,phase:1,deny\"\n\
             SecMarker END-SKIP\n\
             SecRule ARGS \"@rx z\" \"id:7,phase:1,pass,nolog,ctl:ruleRemoveById=6\"\n\
             SecRule TX:level \"@lt 2\" \"id:6,phase:1,pass,nolog,skipAfter:END-R\"\n\
             SecRule REQUEST_HEADERS:X-Removed \"@rx r\" \"id:8,phase:1,deny\"\n\
             SecMarker END-R\n\
             SecRule TX:level \"@lt 2\" \"id:9,phase:1,pass,nolog,skip:1\"\n\
             SecRule REQUEST_HEADERS:X-Skipped \"@rx s\" \"id:10,phase:1,deny\"\n\
             SecRule TX:level \"@lt 2\" \"id:12,phase:1,pass,nolog,skipAfter:END-LATE\"\n\
             SecRule REQUEST_HEADERS:X-Late \"@rx l\" \"id:13,phase:1,deny\"\n\
             SecMarker END-LATE\n\
             SecRule ARGS \"@rx y\" \"id:11,phase:1,pass,nolog,ctl:ruleRemoveById=12\"",
        );
        let c = engine.compiled();
        let evaluated = c
            .walk
            .evaluated_rules(&c.rules, &crate::engine::removable_rules(c));
        let of = |id: u32| {
            let ri = c.rules.rules.iter().position(|r| r.id == id).unwrap();
            evaluated[ri]
        };
        // Past decided jumps and skips: 2, 10 and 13; the decided rules themselves are not
        // evaluated either. 5 follows a rule evaluated per request, 8 a jump rule 7 may
        // remove before it runs; 11 removes the jump of 12 only after it has run.
        for (id, expected) in [(1, false), (2, false), (3, true), (4, true), (5, true)] {
            assert_eq!(of(id), expected, "rule {id}");
        }
        for (id, expected) in [(6, false), (8, true), (9, false), (10, false), (7, true)] {
            assert_eq!(of(id), expected, "rule {id}");
        }
        for (id, expected) in [(12, false), (13, false), (11, true)] {
            assert_eq!(of(id), expected, "rule {id}");
        }
        let phases = |name: &str| {
            let row = c.rules.recall_targets.iter().position(
                |t| matches!(&t.selector, crate::variables::Selector::Key(k) if k == name),
            );
            row.map(|r| c.rules.recall_target_phases[r])
        };
        assert_eq!(phases("x-high"), Some(0));
        assert_eq!(phases("x-skipped"), Some(0));
        assert_eq!(phases("x-removed"), Some(1));
        assert_eq!(phases("x-late"), Some(0));
        assert_eq!(phases("x-skip"), Some(1));
    }

    /// The later links of the step of the rule with id `id`, as their links' recall bits.
    fn later_bits(c: &crate::engine::Compiled, id: u32) -> Vec<Option<u32>> {
        let ri = c.rules.rules.iter().position(|r| r.id == id);
        let step = c.walk.phases[0]
            .iter()
            .find(|s| Some(s.rule as usize) == ri);
        match step.map(|s| s.kind) {
            Some(Kind::Run { later, .. }) => {
                c.walk.later(later).iter().map(|l| Some(l.0)).collect()
            }
            other => panic!("rule {id} is not run: {other:?}"),
        }
    }

    #[test]
    fn a_later_link_decides_its_rule_when_the_links_before_it_leave_nothing() {
        let engine = WafEngine::of_rules(
            "SecRule REQUEST_METHOD \"@rx ^GET$\" \"id:1,phase:1,deny,chain\"\n\
                 SecRule REQUEST_HEADERS:Content-Length \"@rx .\" \"chain\"\n\
                 SecRule TX:x \"@eq 1\" \"chain\"\n\
                 SecRule REQUEST_HEADERS:X-A \"@rx a\"\n\
                 SecRule REQUEST_METHOD \"@rx ^GET$\" \"id:2,phase:1,deny,setvar:tx.seen=1,chain\"\n\
                 SecRule REQUEST_HEADERS:Content-Length \"@rx .\"\n\
                 SecRule REQUEST_METHOD \"@rx ^(GET)$\" \"id:3,phase:1,deny,capture,chain\"\n\
                 SecRule REQUEST_HEADERS:Content-Length \"@rx .\"",
        );
        let c = engine.compiled();
        let links = |id: u32, n: usize| {
            let rule = c.rules.rules.iter().find(|r| r.id == id);
            rule.and_then(|r| r.links[n].recall)
        };
        // Rule 1: the Content-Length link and the X-A link (past `TX:x`, which is not
        // steady, but leaves nothing either); rule 2 acts on its first link's matches and
        // rule 3 captures them, so passing them over would lose what they leave.
        assert_eq!(later_bits(c, 1), vec![links(1, 1), links(1, 3)]);
        assert!(later_bits(c, 1).iter().all(Option::is_some));
        assert_eq!(later_bits(c, 2), vec![]);
        assert_eq!(later_bits(c, 3), vec![]);
        // A first link that reads what the rule before it matched keeps every rule whole.
        let engine = WafEngine::of_rules(
            "SecRule REQUEST_METHOD \"@rx ^GET$\" \"id:1,phase:1,pass,nolog,chain\"\n\
                 SecRule REQUEST_HEADERS:Content-Length \"@rx .\"\n\
                 SecRule MATCHED_VAR \"@rx GET\" \"id:2,phase:1,deny\"",
        );
        assert_eq!(later_bits(engine.compiled(), 1), vec![]);
    }

    #[test]
    fn a_phase_with_a_rule_that_skips_a_number_of_rules_keeps_a_step_per_item() {
        // `skip` counts rules, those decided never to match among them (2 here is decided:
        // no rule before it can skip it).
        let engine = WafEngine::of_rules(
            "SecRule TX:unset \"@rx .\" \"id:2,phase:2,deny\"\n\
                 SecRule ARGS \"@rx a\" \"id:1,phase:2,pass,nolog,skip:1\"\n\
                 SecMarker END\n\
                 SecRule ARGS \"@rx b\" \"id:3,phase:1,pass,nolog,skipAfter:END1\"\n\
                 SecMarker END1",
        );
        let c = engine.compiled();
        assert_eq!(c.walk.phases[1].len(), c.rules.phases[1].len());
        assert!(c.walk.phases[1].iter().any(|s| s.kind == Kind::Never));
        assert!(c.walk.phases[1].iter().any(|s| s.kind == Kind::Marker));
        // Phase 1 counts nothing: its marker has no step.
        assert_eq!(c.walk.phases[0].len(), 1);
    }
}
