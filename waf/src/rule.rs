//! The compiled rule set: directives turned into rules (with their chains), markers and
//! per-phase order, every regex and phrase list compiled once.

use std::collections::HashMap;
use std::path::Path;

use crate::actions::{
    Actions, Ctl, Disruptive, Effect, RuleRef, Severity, parse_actions, parse_id_ranges,
};
use crate::error::{ErrorKind, RuleError};
use crate::macros::Macro;
use crate::operators::Operator;
use crate::parser::{Directive, Location, split_actions, split_operator, split_variables};
use crate::transforms::Transform;
use crate::variables::{ParsedTarget, Target, add_exclusion, fold_targets};

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
    /// For each prefix of `transforms`, an id shared by every rule with the same prefix
    /// (the key of the per-transaction transformation cache).
    pub prefix_ids: Vec<u32>,
    /// `capture`.
    pub capture: bool,
    /// `multiMatch`.
    pub multi_match: bool,
    /// Per-match actions.
    pub effects: Vec<Effect>,
}

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
    /// `skipAfter`.
    pub skip_after: Option<String>,
    /// `skip`.
    pub skip: u32,
    /// Where the rule starts.
    pub location: Location,
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
#[derive(Debug, Default)]
pub struct RuleSet {
    /// Every rule.
    pub rules: Vec<Rule>,
    /// The items of phases 1-5.
    pub phases: [Vec<Item>; 5],
    /// Per phase: marker name to its position.
    pub markers: [HashMap<String, usize>; 5],
    /// `SecComponentSignature` values.
    pub signatures: Vec<String>,
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

/// Builds a [`RuleSet`] from directives, collecting every error.
pub struct Builder<'a> {
    data_dir: &'a Path,
    set: RuleSet,
    defaults: HashMap<u8, Actions>,
    pending: Option<(Actions, Vec<Link>, Location)>,
    deferred: Vec<Directive>,
    prefixes: HashMap<Vec<Transform>, u32>,
    /// Every error found.
    pub errors: Vec<RuleError>,
}

impl<'a> Builder<'a> {
    /// A builder resolving `@pmFromFile` files in `data_dir`.
    pub fn new(data_dir: &'a Path) -> Self {
        Builder {
            data_dir,
            set: RuleSet::default(),
            defaults: HashMap::new(),
            pending: None,
            deferred: Vec::new(),
            prefixes: HashMap::new(),
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
        for (p, items) in set.phases.iter().enumerate() {
            for (i, item) in items.iter().enumerate() {
                if let Item::Marker(m) = item {
                    set.markers[p].entry(m.clone()).or_insert(i);
                }
            }
        }
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
                let operator =
                    Operator::compile(&op.name, &op.argument, self.data_dir).map_err(err)?;
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

    fn prefix_ids(&mut self, transforms: &[Transform]) -> Vec<u32> {
        (1..=transforms.len())
            .map(|n| {
                let next = u32::try_from(self.prefixes.len()).unwrap_or(u32::MAX);
                *self
                    .prefixes
                    .entry(transforms[..n].to_vec())
                    .or_insert(next)
            })
            .collect()
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
        let prefix_ids = self.prefix_ids(&transforms);
        let link = Link {
            targets,
            operator,
            negated,
            transforms,
            prefix_ids,
            capture: actions.capture,
            multi_match: actions.multi_match,
            effects: actions.effects.clone(),
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
            skip: a.skip,
            location: loc,
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
