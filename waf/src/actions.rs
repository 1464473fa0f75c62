//! Actions: metadata, flow (`chain`, `skipAfter`), disruptive (`deny`, `block`, ...) and
//! the per-match ones (`setvar`, `ctl`, `capture`).

use crate::error::ErrorKind;
use crate::macros::Macro;
use crate::parser::RawAction;
use crate::transforms::Transform;
use crate::variables::{Selector, Var};

/// What a rule does to the transaction when it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disruptive {
    /// Go on.
    Pass,
    /// Do what the phase's `SecDefaultAction` says.
    Block,
    /// Stop and answer with the status.
    Deny,
    /// Stop and close the connection (reported as a block).
    Drop,
    /// Stop inspecting: the rest of this phase (`allow:phase`), the request phases
    /// (`allow:request`), or everything (`allow`).
    Allow(AllowScope),
}

/// How far `allow` reaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AllowScope {
    /// The rest of the current phase.
    Phase,
    /// The rest of the request phases.
    Request,
    /// All remaining phases.
    All,
}

/// A rule's severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// 0
    Emergency,
    /// 1
    Alert,
    /// 2
    Critical,
    /// 3
    Error,
    /// 4
    Warning,
    /// 5
    Notice,
    /// 6
    Info,
    /// 7
    Debug,
}

impl Severity {
    fn parse(s: &str) -> Option<Severity> {
        Some(match s.to_ascii_uppercase().as_str() {
            "EMERGENCY" | "0" => Severity::Emergency,
            "ALERT" | "1" => Severity::Alert,
            "CRITICAL" | "2" => Severity::Critical,
            "ERROR" | "3" => Severity::Error,
            "WARNING" | "4" => Severity::Warning,
            "NOTICE" | "5" => Severity::Notice,
            "INFO" | "6" => Severity::Info,
            "DEBUG" | "7" => Severity::Debug,
            _ => return None,
        })
    }

    /// The upper-case name.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Emergency => "EMERGENCY",
            Severity::Alert => "ALERT",
            Severity::Critical => "CRITICAL",
            Severity::Error => "ERROR",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Info => "INFO",
            Severity::Debug => "DEBUG",
        }
    }
}

/// How `setvar` changes a variable.
#[derive(Clone, Debug)]
pub enum SetOp {
    /// `=value`
    Set(Macro),
    /// `=+value`
    Add(Macro),
    /// `=-value`
    Sub(Macro),
    /// `!name`
    Delete,
}

impl SetOp {
    /// The value written, added or subtracted; `None` for a deletion.
    pub fn value(&self) -> Option<&Macro> {
        match self {
            SetOp::Set(m) | SetOp::Add(m) | SetOp::Sub(m) => Some(m),
            SetOp::Delete => None,
        }
    }
}

/// A request body processor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyProcessor {
    /// `application/x-www-form-urlencoded`.
    UrlEncoded,
    /// `multipart/form-data`.
    Multipart,
    /// JSON.
    Json,
    /// XML.
    Xml,
}

impl BodyProcessor {
    /// The name `REQBODY_PROCESSOR` shows.
    pub fn name(self) -> &'static str {
        match self {
            BodyProcessor::UrlEncoded => "URLENCODED",
            BodyProcessor::Multipart => "MULTIPART",
            BodyProcessor::Json => "JSON",
            BodyProcessor::Xml => "XML",
        }
    }

    fn parse(s: &str) -> Option<BodyProcessor> {
        Some(match s.to_ascii_uppercase().as_str() {
            "URLENCODED" => BodyProcessor::UrlEncoded,
            "MULTIPART" => BodyProcessor::Multipart,
            "JSON" => BodyProcessor::Json,
            "XML" => BodyProcessor::Xml,
            _ => return None,
        })
    }
}

/// Which rules a `ctl` or exclusion names.
#[derive(Clone, Debug)]
pub enum RuleRef {
    /// Ids, as inclusive ranges.
    Ids(Vec<(u32, u32)>),
    /// A tag.
    Tag(String),
    /// A message.
    Msg(String),
}

/// `ctl:` changes to this transaction.
#[derive(Clone, Debug)]
pub enum Ctl {
    /// `ruleRemoveById`, `ruleRemoveByTag`, `ruleRemoveByMsg`, with the indices of the
    /// rules named, resolved once the rule set is complete.
    RemoveRules(RuleRef, Vec<usize>),
    /// `ruleRemoveTargetById`, `ruleRemoveTargetByTag`, `ruleRemoveTargetByMsg`, with the
    /// indices of the rules named (ascending).
    RemoveTarget(RuleRef, Vec<usize>, Var, Selector),
    /// `ruleEngine`.
    RuleEngine(EngineMode),
    /// `requestBodyProcessor`.
    RequestBodyProcessor(BodyProcessor),
    /// `forceRequestBodyVariable`.
    ForceRequestBodyVariable(bool),
    /// `requestBodyAccess`.
    RequestBodyAccess(bool),
    /// `responseBodyAccess`.
    ResponseBodyAccess(bool),
    /// `auditEngine`, `auditLogParts`: this engine writes no audit log, so they change
    /// nothing; the decision log gets the verdict instead.
    AuditLog,
}

/// The rule engine's mode for a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineMode {
    /// Rules run and disruptive actions act.
    On,
    /// Rules run; disruptive actions are only reported.
    DetectionOnly,
    /// No rule runs.
    Off,
}

impl EngineMode {
    fn parse(s: &str) -> Option<EngineMode> {
        Some(match s.to_ascii_lowercase().as_str() {
            "on" => EngineMode::On,
            "detectiononly" => EngineMode::DetectionOnly,
            "off" => EngineMode::Off,
            _ => return None,
        })
    }
}

/// A per-match action, in the order written.
#[derive(Clone, Debug)]
pub enum Effect {
    /// `setvar`: on `TX`, `IP`, `GLOBAL` or `ENV`.
    SetVar {
        /// The collection.
        collection: Var,
        /// The key (may contain macros).
        key: Macro,
        /// The change.
        op: SetOp,
    },
    /// `setenv`.
    SetEnv(Macro, Macro),
    /// `initcol`: opens a collection for this transaction (not persisted).
    InitCol(Var),
    /// `ctl`.
    Ctl(Ctl),
}

/// The actions of one rule (or chain link), parsed.
#[derive(Clone, Debug, Default)]
pub struct Actions {
    /// `id`.
    pub id: Option<u32>,
    /// `phase` (1-5).
    pub phase: Option<u8>,
    /// `msg`.
    pub msg: Option<Macro>,
    /// `logdata`.
    pub logdata: Option<Macro>,
    /// `tag`s.
    pub tags: Vec<String>,
    /// `severity`.
    pub severity: Option<Severity>,
    /// `chain`.
    pub chain: bool,
    /// `skipAfter`.
    pub skip_after: Option<String>,
    /// `skip`.
    pub skip: u32,
    /// `capture`.
    pub capture: bool,
    /// `multiMatch`.
    pub multi_match: bool,
    /// Whether `t:none` appeared (drops the default transformations).
    pub t_none: bool,
    /// The transformations after the last `t:none`.
    pub transforms: Vec<Transform>,
    /// The disruptive action, if written.
    pub disruptive: Option<Disruptive>,
    /// `status`.
    pub status: Option<u16>,
    /// `log` (`Some(true)`) or `nolog` (`Some(false)`).
    pub log: Option<bool>,
    /// Per-match actions.
    pub effects: Vec<Effect>,
}

fn need(a: &RawAction) -> Result<&str, ErrorKind> {
    a.value.as_deref().ok_or_else(|| ErrorKind::Invalid {
        what: "action",
        detail: format!("`{}` needs a value", a.name),
    })
}

fn invalid(what: &'static str, detail: impl Into<String>) -> ErrorKind {
    ErrorKind::Invalid {
        what,
        detail: detail.into(),
    }
}

/// Reads `1-5,7` into id ranges.
pub fn parse_id_ranges(s: &str) -> Result<Vec<(u32, u32)>, ErrorKind> {
    s.split([',', ' '])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (a, b) = p.split_once('-').unwrap_or((p, p));
            let a: u32 = a.trim().parse().map_err(|_| invalid("rule id", p))?;
            let b: u32 = b.trim().parse().map_err(|_| invalid("rule id", p))?;
            Ok((a, b))
        })
        .collect()
}

/// Reads a `ctl` target (`ARGS:name`, `REQUEST_COOKIES:/re/`) into a variable and selector.
pub fn parse_target_ref(s: &str) -> Result<(Var, Selector), ErrorKind> {
    let (name, key) = match s.split_once(':') {
        Some((n, k)) => (n, Some(k)),
        None => (s, None),
    };
    let var = Var::from_name(&name.trim().to_ascii_uppercase())
        .ok_or_else(|| ErrorKind::UnsupportedVariable(name.to_string()))?;
    Ok((var, Selector::parse(var, key)?))
}

fn parse_ctl(value: &str) -> Result<Ctl, ErrorKind> {
    let (name, arg) = value
        .split_once('=')
        .ok_or_else(|| invalid("ctl", format!("`{value}` has no `=`")))?;
    let bool_arg = || match arg.to_ascii_lowercase().as_str() {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(invalid("ctl", format!("`{value}`: expected On or Off"))),
    };
    let target_arg = |mk: fn(String) -> Result<RuleRef, ErrorKind>| {
        let (r, t) = arg
            .split_once(';')
            .ok_or_else(|| invalid("ctl", format!("`{value}`: expected RULE;TARGET")))?;
        let (var, sel) = parse_target_ref(t)?;
        Ok::<Ctl, ErrorKind>(Ctl::RemoveTarget(mk(r.to_string())?, Vec::new(), var, sel))
    };
    Ok(match name.to_ascii_lowercase().as_str() {
        "ruleremovebyid" => Ctl::RemoveRules(RuleRef::Ids(parse_id_ranges(arg)?), Vec::new()),
        "ruleremovebytag" => Ctl::RemoveRules(RuleRef::Tag(arg.to_string()), Vec::new()),
        "ruleremovebymsg" => Ctl::RemoveRules(RuleRef::Msg(arg.to_string()), Vec::new()),
        "ruleremovetargetbyid" => target_arg(|r| Ok(RuleRef::Ids(parse_id_ranges(&r)?)))?,
        "ruleremovetargetbytag" => target_arg(|r| Ok(RuleRef::Tag(r)))?,
        "ruleremovetargetbymsg" => target_arg(|r| Ok(RuleRef::Msg(r)))?,
        "ruleengine" => {
            Ctl::RuleEngine(EngineMode::parse(arg).ok_or_else(|| invalid("ctl:ruleEngine", arg))?)
        }
        "requestbodyprocessor" => Ctl::RequestBodyProcessor(
            BodyProcessor::parse(arg).ok_or_else(|| invalid("ctl:requestBodyProcessor", arg))?,
        ),
        "forcerequestbodyvariable" => Ctl::ForceRequestBodyVariable(bool_arg()?),
        "requestbodyaccess" => Ctl::RequestBodyAccess(bool_arg()?),
        "responsebodyaccess" => Ctl::ResponseBodyAccess(bool_arg()?),
        "auditengine" | "auditlogparts" => Ctl::AuditLog,
        _ => return Err(ErrorKind::UnsupportedAction(format!("ctl:{name}"))),
    })
}

fn parse_setvar(value: &str) -> Result<Effect, ErrorKind> {
    let (delete, body) = match value.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (name, val) = match body.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (body, None),
    };
    let (coll, key) = name
        .split_once('.')
        .ok_or_else(|| invalid("setvar", format!("`{value}` names no collection")))?;
    let collection = match coll.trim().to_ascii_uppercase().as_str() {
        "TX" => Var::Tx,
        "IP" => Var::Ip,
        "GLOBAL" => Var::Global,
        "ENV" => Var::Env,
        other => return Err(ErrorKind::UnsupportedVariable(other.to_string())),
    };
    let key = Macro::parse(&key.trim().to_ascii_lowercase())?;
    let op = if delete {
        SetOp::Delete
    } else {
        match val {
            None => SetOp::Set(Macro::parse("1")?),
            Some(v) => {
                if let Some(n) = v.strip_prefix('+') {
                    SetOp::Add(Macro::parse(n)?)
                } else if let Some(n) = v.strip_prefix('-') {
                    SetOp::Sub(Macro::parse(n)?)
                } else {
                    SetOp::Set(Macro::parse(v)?)
                }
            }
        }
    };
    Ok(Effect::SetVar {
        collection,
        key,
        op,
    })
}

/// Parses an action list. Every action CRS v4 uses is known; anything else is reported.
pub fn parse_actions(raw: &[RawAction]) -> Result<Actions, ErrorKind> {
    let mut a = Actions::default();
    for r in raw {
        let name = r.name.as_str();
        match name.to_ascii_lowercase().as_str() {
            "id" => {
                let id: u32 = need(r)?
                    .trim()
                    .parse()
                    .map_err(|_| invalid("id", need(r).unwrap_or_default()))?;
                if id == 0 {
                    return Err(invalid("id", "0"));
                }
                a.id = Some(id);
            }
            "phase" => {
                let v = need(r)?.trim();
                a.phase = Some(match v.to_ascii_lowercase().as_str() {
                    "request" => 2,
                    "response" => 4,
                    "logging" => 5,
                    n => n
                        .parse::<u8>()
                        .ok()
                        .filter(|p| (1..=5).contains(p))
                        .ok_or_else(|| invalid("phase", v))?,
                });
            }
            "msg" => a.msg = Some(Macro::parse(need(r)?)?),
            "logdata" => a.logdata = Some(Macro::parse(need(r)?)?),
            "tag" => a.tags.push(need(r)?.to_string()),
            "severity" => {
                a.severity = Some(
                    Severity::parse(need(r)?)
                        .ok_or_else(|| invalid("severity", need(r).unwrap_or_default()))?,
                )
            }
            "ver" | "rev" | "maturity" | "accuracy" => {
                need(r)?;
            }
            "chain" => a.chain = true,
            "skipafter" => a.skip_after = Some(need(r)?.to_string()),
            "skip" => {
                a.skip = need(r)?
                    .trim()
                    .parse()
                    .map_err(|_| invalid("skip", need(r).unwrap_or_default()))?
            }
            "capture" => a.capture = true,
            "multimatch" => a.multi_match = true,
            "t" => {
                let v = need(r)?;
                if v.eq_ignore_ascii_case("none") {
                    a.t_none = true;
                    a.transforms.clear();
                } else {
                    a.transforms.push(Transform::from_name(v)?);
                }
            }
            "pass" => a.disruptive = Some(Disruptive::Pass),
            "block" => a.disruptive = Some(Disruptive::Block),
            "deny" => a.disruptive = Some(Disruptive::Deny),
            "drop" => a.disruptive = Some(Disruptive::Drop),
            "allow" => {
                let scope = match r.value.as_deref().map(str::to_ascii_lowercase).as_deref() {
                    None => AllowScope::All,
                    Some("phase") => AllowScope::Phase,
                    Some("request") => AllowScope::Request,
                    Some(other) => return Err(invalid("allow", other)),
                };
                a.disruptive = Some(Disruptive::Allow(scope));
            }
            "status" => {
                a.status = Some(
                    need(r)?
                        .trim()
                        .parse()
                        .ok()
                        .filter(|s| (100..=599).contains(s))
                        .ok_or_else(|| invalid("status", need(r).unwrap_or_default()))?,
                )
            }
            "log" => a.log = Some(true),
            "nolog" => a.log = Some(false),
            "auditlog" | "noauditlog" => {}
            "setvar" => a.effects.push(parse_setvar(need(r)?)?),
            "setenv" => {
                let v = need(r)?;
                let (k, val) = v.split_once('=').unwrap_or((v, "1"));
                a.effects
                    .push(Effect::SetEnv(Macro::parse(k)?, Macro::parse(val)?));
            }
            "initcol" => {
                let v = need(r)?;
                let (coll, _) = v.split_once('=').ok_or_else(|| invalid("initcol", v))?;
                let var = match coll.trim().to_ascii_uppercase().as_str() {
                    "IP" => Var::Ip,
                    "GLOBAL" => Var::Global,
                    other => return Err(ErrorKind::UnsupportedVariable(other.to_string())),
                };
                a.effects.push(Effect::InitCol(var));
            }
            "ctl" => a.effects.push(Effect::Ctl(parse_ctl(need(r)?)?)),
            _ => return Err(ErrorKind::UnsupportedAction(name.to_string())),
        }
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parser::{Location, split_actions};
    use std::sync::Arc;

    fn parse(s: &str) -> Result<Actions, ErrorKind> {
        let loc = Location {
            file: Arc::from("t"),
            line: 1,
        };
        parse_actions(&split_actions(s, &loc).unwrap())
    }

    #[test]
    fn crs_style_actions_parse() {
        let a = parse(
            "id:942100,phase:2,block,capture,t:none,t:utf8toUnicode,t:urlDecodeUni,\
             msg:'SQL Injection',logdata:'Matched Data: %{TX.0}',tag:'attack-sqli',\
             severity:'CRITICAL',setvar:'tx.sql_injection_score=+%{tx.critical_anomaly_score}',\
             ctl:ruleRemoveTargetByTag=xss-perf-disable;REQUEST_FILENAME",
        )
        .unwrap();
        assert_eq!(a.id, Some(942100));
        assert_eq!(a.phase, Some(2));
        assert!(a.t_none && a.capture);
        assert_eq!(
            a.transforms,
            [Transform::Utf8ToUnicode, Transform::UrlDecodeUni]
        );
        assert_eq!(a.severity, Some(Severity::Critical));
        assert_eq!(a.disruptive, Some(Disruptive::Block));
        assert_eq!(a.effects.len(), 2);
    }

    #[test]
    fn unknown_actions_are_reported_by_name() {
        assert_eq!(
            parse("id:1,exec:/bin/sh").unwrap_err(),
            ErrorKind::UnsupportedAction("exec".into())
        );
        assert_eq!(
            parse("id:1,ctl:debugLogLevel=9").unwrap_err(),
            ErrorKind::UnsupportedAction("ctl:debugLogLevel".into())
        );
    }

    #[test]
    fn id_ranges() {
        assert_eq!(parse_id_ranges("1-3,7").unwrap(), vec![(1, 3), (7, 7)]);
        assert!(parse_id_ranges("x").is_err());
    }
}
