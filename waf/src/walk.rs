//! What a phase's walk over its rules reads first: one small record per item, laid out in
//! the phase's order. Most rules of a request are decided by the memory of values (their
//! first link is known to find nothing in every value it reads) or at load (see
//! [`crate::fold`]); the walk decides those from these records alone, without touching the
//! rules themselves, which lie scattered over the heap (in the edge the CPU caches hold
//! TLS and proxy state between two requests, so every line a request reads is a miss).

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
    /// What the configuration decides about it.
    pub(crate) fold: Fold,
    /// Its first link's recall bit when that link is steady (see
    /// [`crate::rule::Link::steady`]), else [`NONE`].
    pub(crate) bit: u32,
    /// Its first link's recall rows: a range of [`Walk::rows`] (and of [`Walk::vars`]).
    pub(crate) rows: (u32, u32),
}

/// The steps of phases 1-5, parallel to [`RuleSet::phases`] (a jump's item index is a step
/// index).
#[derive(Debug, Default)]
pub(crate) struct Walk {
    /// Per phase, one step per item.
    pub(crate) phases: [Vec<Step>; 5],
    /// The recall rows of the steps' first links, one after the other.
    pub(crate) rows: Vec<u32>,
    /// The variable of each target whose row is in `rows`: a `ctl` that removes it is
    /// checked without reading the rule.
    pub(crate) vars: Vec<Var>,
}

impl Walk {
    /// The walk of `rules` as `folding` decides them; made again whenever either changes.
    pub(crate) fn new(rules: &RuleSet, folding: &Folding) -> Walk {
        let mut walk = Walk::default();
        for (steps, items) in walk.phases.iter_mut().zip(&rules.phases) {
            for item in items {
                let step = match *item {
                    Item::Marker(_) => Step {
                        rule: NONE,
                        fold: Fold::Never,
                        bit: NONE,
                        rows: (0, 0),
                    },
                    Item::Rule(ri) => {
                        let first = rules.rules[ri].links.first();
                        let bit = first
                            .filter(|l| l.steady)
                            .and_then(|l| l.recall)
                            .unwrap_or(NONE);
                        let start = walk.rows.len();
                        if let Some(first) = first.filter(|_| bit != NONE) {
                            walk.rows.extend(&first.recall_rows);
                            walk.vars.extend(first.targets.iter().map(|t| t.var));
                        }
                        Step {
                            rule: u32::try_from(ri).unwrap_or(NONE),
                            fold: folding.rules.get(ri).copied().unwrap_or(Fold::Run),
                            bit,
                            rows: (
                                u32::try_from(start).unwrap_or(NONE),
                                u32::try_from(walk.rows.len()).unwrap_or(NONE),
                            ),
                        }
                    }
                };
                steps.push(step);
            }
        }
        walk
    }

    /// The recall rows of a step.
    pub(crate) fn rows(&self, step: &Step) -> &[u32] {
        &self.rows[step.rows.0 as usize..step.rows.1 as usize]
    }

    /// The variables of a step's targets, in the order of its rows.
    pub(crate) fn vars(&self, step: &Step) -> &[Var] {
        &self.vars[step.rows.0 as usize..step.rows.1 as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{WafEngine, WafSettings};

    #[test]
    fn steps_follow_the_items_and_carry_what_decides_a_rule_without_it() {
        let engine = WafEngine::custom_only(&WafSettings {
            custom_rules: Some(
                "SecRule ARGS|REQUEST_HEADERS:User-Agent \"@rx attack\" \"id:1,phase:2,deny\"\n\
                 SecMarker END\n\
                 SecRule TX:score \"@gt 5\" \"id:2,phase:2,deny\"\n\
                 SecAction \"id:3,phase:2,pass,nolog,setvar:tx.level=1\""
                    .into(),
            ),
            ..WafSettings::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let c = engine.compiled();
        let steps = &c.walk.phases[1];
        assert_eq!(steps.len(), c.rules.phases[1].len());
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
        let first = &c.rules.rules[ri].links[0];
        assert_eq!(Some(steady.bit), first.recall);
        assert_eq!(c.walk.rows(&steady), first.recall_rows.as_slice());
        assert_eq!(c.walk.rows(&steady).len(), 2);
        let vars: Vec<Var> = first.targets.iter().map(|t| t.var).collect();
        assert_eq!(c.walk.vars(&steady), vars.as_slice());
        assert_eq!(steady.fold, Fold::Run);
        let (_, on_tx) = rule(2).unwrap_or_else(|| panic!("no step for rule 2"));
        assert_eq!((on_tx.bit, c.walk.rows(&on_tx)), (NONE, &[][..]));
        let (_, action) = rule(3).unwrap_or_else(|| panic!("no step for rule 3"));
        assert_eq!(action.fold, Fold::Always);
        assert!(steps.iter().any(|s| s.rule == NONE));
    }
}
