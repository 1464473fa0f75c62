//! The public API: settings, the compiled engine, request facts and verdicts.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::actions::{Ctl, Effect, EngineMode, RuleRef, Severity, parse_target_ref};
use crate::error::{ErrorKind, LoadError, RuleError};
use crate::fold::{Folding, fold};
use crate::macros::Macro;
use crate::operators::DataFiles;
use crate::parser::lex;
use crate::rule::{Builder, Item, RuleSet, resolve_skip_after};
use crate::transaction::Transaction;
use crate::variables::{Selector, Var, add_exclusion};
use crate::walk::Walk;

/// Block requests over the threshold, or only report them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    /// Disruptive actions act (`SecRuleEngine On`).
    #[default]
    Block,
    /// Rules run and report what they would have blocked (`SecRuleEngine DetectionOnly`).
    Detect,
}

/// An application whose normal traffic the engine knows, for built-in exclusions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppProfile {
    /// Jellyfin: playback, browsing, search, uploads and the websocket.
    Jellyfin,
}

impl AppProfile {
    /// The SecLang exclusions shipped for the application.
    pub fn exclusions(self) -> &'static str {
        match self {
            AppProfile::Jellyfin => include_str!("jellyfin.conf"),
        }
    }
}

/// An exclusion: rules (by id, range or tag) switched off, or some of their targets, on
/// some paths.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exclusion {
    /// Inclusive rule id ranges (a single id is `(id, id)`).
    pub rule_ids: Vec<(u32, u32)>,
    /// Rule tags.
    pub tags: Vec<String>,
    /// Request path prefixes it applies to; every request when empty.
    pub paths: Vec<String>,
    /// Targets removed from the rules (`ARGS:q`, `REQUEST_COOKIES:/^sess/`); the whole rules
    /// when empty.
    pub targets: Vec<String>,
}

/// How the engine runs the CRS. The proxy maps the edge document's `waf` section onto it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WafSettings {
    /// Block or detect only.
    pub mode: Mode,
    /// Blocking paranoia level, 1-4.
    pub paranoia_level: u8,
    /// Executing (detection) paranoia level, at least `paranoia_level`.
    pub executing_paranoia_level: u8,
    /// Inbound anomaly score that blocks.
    pub inbound_anomaly_threshold: u32,
    /// Outbound anomaly score that blocks.
    pub outbound_anomaly_threshold: u32,
    /// Built-in exclusions for this application's normal traffic.
    pub app_profile: Option<AppProfile>,
    /// Exclusions.
    pub exclusions: Vec<Exclusion>,
    /// Custom SecLang rules, loaded after the setup and before the CRS rule files.
    pub custom_rules: Option<String>,
    /// The most request (and response) body bytes inspected.
    pub request_body_limit: usize,
    /// Run the response phases (3 and 4).
    pub inspect_responses: bool,
    /// Response media types whose bodies are inspected.
    pub response_mime_types: Vec<String>,
    /// Further `tx.` settings of the CRS setup (`arg_length`, `allowed_methods`, ...).
    pub setup_vars: Vec<(String, String)>,
    /// How many request values (header values, argument names and values, ... of at most
    /// 512 bytes) each thread remembers, with the rule conditions known to find nothing in
    /// them, so that the values a client sends again are not inspected again by those (see
    /// `src/recall.rs`), and new values made of a small alphabet (numbers, hex ids, words)
    /// start with the conditions that alphabet rules out; and each thread keeps what the
    /// request phases of benign requests did, so that a request sent again is not walked
    /// through the rules again (see `src/phases.rs`); 0 turns all of it off.
    pub remembered_values: usize,
}

impl Default for WafSettings {
    fn default() -> Self {
        WafSettings {
            mode: Mode::Block,
            paranoia_level: 1,
            executing_paranoia_level: 1,
            inbound_anomaly_threshold: 5,
            outbound_anomaly_threshold: 4,
            app_profile: None,
            exclusions: Vec::new(),
            custom_rules: None,
            request_body_limit: 1 << 20,
            inspect_responses: false,
            response_mime_types: vec!["text/plain".into(), "text/html".into(), "text/xml".into()],
            setup_vars: Vec::new(),
            remembered_values: 4096,
        }
    }
}

/// An exclusion that applies on some paths, resolved to rule indices (ascending).
#[derive(Debug)]
pub(crate) struct PathExclusion {
    pub(crate) paths: Vec<String>,
    pub(crate) rules: Vec<usize>,
    pub(crate) targets: Vec<(Var, Selector)>,
}

/// The compiled rules and settings every transaction shares.
#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) rules: RuleSet,
    pub(crate) mode: EngineMode,
    pub(crate) request_body_limit: usize,
    pub(crate) inspect_responses: bool,
    pub(crate) response_mime_types: Vec<String>,
    pub(crate) path_exclusions: Vec<PathExclusion>,
    /// The rules decided at load and the `TX` each transaction starts with.
    pub(crate) folding: Folding,
    /// What each phase's walk reads first, made from `rules` and `folding`.
    pub(crate) walk: Walk,
    /// Per rule index, what it reads when its outcomes are replayed (see
    /// [`crate::replay`]), made from `rules` with its decided arguments.
    pub(crate) replay: Vec<Option<crate::replay::Inputs>>,
    /// What the keys of request phases kept whole hold (see [`crate::phases`]); `None`
    /// when none is kept.
    pub(crate) phase_keys: Option<crate::phases::KeyPlan>,
    /// This engine's number, unique in the process and growing: what a thread remembers of
    /// values is about one engine (see [`crate::recall`]).
    pub(crate) number: u64,
    /// [`WafSettings::remembered_values`].
    pub(crate) remembered_values: usize,
    unique: AtomicU64,
}

impl Compiled {
    /// The next transaction's `UNIQUE_ID`: 16 hex digits (written by hand into a byte
    /// array: the formatting machinery, or pushing the digits one `char` at a time, cost
    /// more than the rest of it).
    pub(crate) fn next_unique_id(&self) -> String {
        let n = self.unique.fetch_add(1, Ordering::Relaxed);
        let mut digits = [0u8; 16];
        for (i, digit) in digits.iter_mut().rev().enumerate() {
            *digit = b"0123456789abcdef"[((n >> (i * 4)) & 0xf) as usize];
        }
        std::str::from_utf8(&digits)
            .map(str::to_owned)
            .unwrap_or_default()
    }
}

/// The WAF: the CRS compiled once. Cheap to clone and shared across threads.
#[derive(Clone, Debug)]
pub struct WafEngine {
    inner: Arc<Compiled>,
}

#[cfg(test)]
impl WafEngine {
    /// The compiled rules, for the crate's unit tests.
    pub(crate) fn compiled(&self) -> &Compiled {
        &self.inner
    }

    /// An engine of `rules` alone (as [`WafEngine::custom_only`] loads custom rules), for
    /// the crate's unit tests; panics when they do not load.
    pub(crate) fn of_rules(rules: &str) -> WafEngine {
        WafEngine::custom_only(&WafSettings {
            custom_rules: Some(rules.into()),
            ..WafSettings::default()
        })
        .unwrap_or_else(|e| panic!("{e}"))
    }
}

/// What the proxy knows about a request before its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestFacts {
    /// The method (`GET`).
    pub method: String,
    /// The request target as received (`/path?query`).
    pub uri: String,
    /// The protocol (`HTTP/1.1`).
    pub protocol: String,
    /// Headers in order, repeated names kept.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The client's address.
    pub client_addr: IpAddr,
    /// The client's port.
    pub client_port: u16,
    /// The port the request arrived on.
    pub server_port: u16,
}

impl RequestFacts {
    /// A request with no headers from 127.0.0.1.
    pub fn new(method: &str, uri: &str, protocol: &str) -> RequestFacts {
        RequestFacts {
            method: method.to_string(),
            uri: uri.to_string(),
            protocol: protocol.to_string(),
            headers: Vec::new(),
            client_addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
            client_port: 0,
            server_port: 0,
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> RequestFacts {
        self.headers.push((name.to_string(), value.into()));
        self
    }
}

/// What to do with the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Let it through.
    Allow,
    /// Let it through, but a rule would have blocked it (detect mode).
    Detected {
        /// The status it would have got.
        status: u16,
        /// The rule that would have blocked.
        rule_id: u32,
    },
    /// Refuse it with this status.
    Block {
        /// The HTTP status.
        status: u16,
        /// The rule that blocked (949110 for the inbound anomaly score).
        rule_id: u32,
    },
}

/// A rule that matched and logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    /// The rule id.
    pub id: u32,
    /// The phase it ran in.
    pub phase: u8,
    /// Its message, expanded.
    pub msg: String,
    /// Its log data, expanded.
    pub data: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its severity.
    pub severity: Option<Severity>,
    /// The first variable that matched (`ARGS:q`).
    pub variable: String,
}

/// The engine's answer so far, for the decision log and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Allow, detected or block.
    pub decision: Decision,
    /// The logging rules that matched, in order.
    pub matched: Vec<Match>,
    /// The inbound anomaly score at the blocking paranoia level.
    pub inbound_score: i64,
    /// The outbound anomaly score at the blocking paranoia level.
    pub outbound_score: i64,
}

impl Verdict {
    /// Whether the request must be refused.
    pub fn is_blocked(&self) -> bool {
        matches!(self.decision, Decision::Block { .. })
    }

    /// The ids of the matched rules.
    pub fn rule_ids(&self) -> Vec<u32> {
        self.matched.iter().map(|m| m.id).collect()
    }
}

fn read(path: &Path) -> Result<String, LoadError> {
    std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Finds the rules directory and the setup file of a CRS directory (the release root with
/// `rules/`, or the `rules/` directory itself).
fn locate(crs_dir: &Path) -> Result<(PathBuf, PathBuf), LoadError> {
    let rules = if crs_dir.join("rules").is_dir() {
        crs_dir.join("rules")
    } else {
        crs_dir.to_path_buf()
    };
    let mut candidates = vec![crs_dir.to_path_buf()];
    if let Some(parent) = rules.parent() {
        candidates.push(parent.to_path_buf());
    }
    for dir in candidates {
        for name in ["crs-setup.conf", "crs-setup.conf.example"] {
            let p = dir.join(name);
            if p.is_file() {
                return Ok((rules, p));
            }
        }
    }
    Err(LoadError::MissingSetup(crs_dir.to_path_buf()))
}

/// The SecLang the settings stand for: the setup values the CRS reads from `TX`.
fn generated_setup(s: &WafSettings) -> String {
    let mut vars = vec![
        (
            "blocking_paranoia_level".to_string(),
            s.paranoia_level.to_string(),
        ),
        (
            "detection_paranoia_level".to_string(),
            s.executing_paranoia_level.to_string(),
        ),
        (
            "inbound_anomaly_score_threshold".to_string(),
            s.inbound_anomaly_threshold.to_string(),
        ),
        (
            "outbound_anomaly_score_threshold".to_string(),
            s.outbound_anomaly_threshold.to_string(),
        ),
    ];
    vars.extend(s.setup_vars.iter().cloned());
    let mut text = String::from("SecAction \"id:9999001,phase:1,pass,t:none,nolog");
    for (k, v) in vars {
        text.push_str(&format!(",setvar:'tx.{k}={}'", v.replace('\'', "\\'")));
    }
    text.push_str("\"\n");
    text
}

impl WafEngine {
    /// Loads and compiles the CRS in `crs_dir` with `settings`: the setup file (with the
    /// settings applied after it), the application exclusions, the custom rules, then
    /// `rules/REQUEST-*.conf` and `rules/RESPONSE-*.conf` in name order. Every directive
    /// that does not parse or uses an unsupported construct is reported.
    pub fn new(settings: &WafSettings, crs_dir: &Path) -> Result<WafEngine, LoadError> {
        validate(settings)?;
        let (rules_dir, setup) = locate(crs_dir)?;
        let mut sources = vec![(setup.display().to_string(), read(&setup)?)];
        sources.push(("generated setup".into(), generated_setup(settings)));
        if let Some(app) = settings.app_profile {
            sources.push((format!("{app:?} exclusions"), app.exclusions().to_string()));
        }
        if let Some(c) = &settings.custom_rules {
            sources.push(("custom_rules".into(), c.clone()));
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(&rules_dir)
            .map_err(|source| LoadError::Read {
                path: rules_dir.clone(),
                source,
            })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                name.ends_with(".conf")
                    && (name.starts_with("REQUEST-") || name.starts_with("RESPONSE-"))
            })
            .collect();
        files.sort_by_key(|p| {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            (name.starts_with("RESPONSE-"), name)
        });
        for f in files {
            sources.push((f.display().to_string(), read(&f)?));
        }
        compile(settings, &sources, DataFiles::Dir(&rules_dir))
    }

    /// Compiles only the custom rules of `settings`, without the Core Rule Set: no anomaly
    /// scoring unless the rules score themselves, so a rule refuses a request with a
    /// disruptive action of its own (`deny`, `drop`, with `status:`). `@pmFromFile` is
    /// refused, since its files are the CRS's.
    pub fn custom_only(settings: &WafSettings) -> Result<WafEngine, LoadError> {
        validate(settings)?;
        let Some(custom) = &settings.custom_rules else {
            return Err(LoadError::Settings(
                "no custom rules to run without the Core Rule Set".into(),
            ));
        };
        let sources = [("custom_rules".to_string(), custom.clone())];
        compile(settings, &sources, DataFiles::Absent)
    }

    /// Starts the inspection of one request.
    pub fn transaction(&self, facts: RequestFacts) -> Transaction {
        Transaction::new(self.inner.clone(), facts)
    }

    /// The number of rules loaded (chains count once).
    pub fn rule_count(&self) -> usize {
        self.inner
            .rules
            .phases
            .iter()
            .flatten()
            .filter(|i| matches!(i, Item::Rule(_)))
            .count()
    }

    /// Checks custom SecLang rules with the same parser and compiler the engine uses,
    /// without loading the CRS. `data` resolves `@pmFromFile`.
    pub fn validate_rules(text: &str, data: DataFiles) -> Result<(), LoadError> {
        let directives = lex(text, "custom_rules").map_err(|e| LoadError::Rules(vec![e]))?;
        let mut builder = Builder::new(data);
        builder.add(directives);
        builder.finish().map(|_| ()).map_err(LoadError::Rules)
    }
}

/// Parses and compiles `sources` (label, SecLang) in order into an engine for `settings`.
fn compile(
    settings: &WafSettings,
    sources: &[(String, String)],
    data: DataFiles,
) -> Result<WafEngine, LoadError> {
    let mut builder = Builder::new(data);
    let mut errors = Vec::new();
    for (name, text) in sources {
        match lex(text, name) {
            Ok(d) => builder.add(d),
            Err(e) => errors.push(e),
        }
    }
    let mut rules = match builder.finish() {
        Ok(r) if errors.is_empty() => r,
        Ok(_) => return Err(LoadError::Rules(errors)),
        Err(mut e) => {
            errors.append(&mut e);
            return Err(LoadError::Rules(errors));
        }
    };
    let path_exclusions = apply_exclusions(&mut rules, &settings.exclusions)?;
    rules.plan_tx_keys();
    rules.plan_prefilter(settings.executing_paranoia_level);
    rules.plan_recall(settings.executing_paranoia_level);
    rules.plan_matched_var();
    /// The number of the next engine compiled.
    static NEXT_ENGINE: AtomicU64 = AtomicU64::new(1);
    // The walk and the replay plan, which only whole phases use (not the fold's probe,
    // which evaluates rules one by one), are made after the fold, from its outcome.
    let folding = Folding::none(&rules);
    let mut inner = Arc::new(Compiled {
        rules,
        mode: match settings.mode {
            Mode::Block => EngineMode::On,
            Mode::Detect => EngineMode::DetectionOnly,
        },
        request_body_limit: settings.request_body_limit,
        inspect_responses: settings.inspect_responses,
        response_mime_types: settings
            .response_mime_types
            .iter()
            .map(|m| m.to_ascii_lowercase())
            .collect(),
        path_exclusions,
        folding,
        walk: Walk::default(),
        replay: Vec::new(),
        phase_keys: None,
        number: NEXT_ENGINE.fetch_add(1, Ordering::Relaxed),
        remembered_values: settings.remembered_values,
        unique: AtomicU64::new(1),
    });
    let (folding, arguments) = fold(&inner);
    let compiled = Arc::get_mut(&mut inner)
        .expect("the fold's probe transaction has ended and nothing else holds the engine");
    compiled.folding = folding;
    if !arguments.is_empty() {
        for a in arguments {
            if let Some(m) = compiled.rules.rules[a.rule].links[a.link]
                .operator
                .argument_mut()
            {
                *m = Macro::fixed(a.text);
            }
        }
        // Links with a decided argument may now be remembered. The probe may have left
        // what it learned under the old plan: the engine takes a new number, which
        // nothing is remembered for.
        compiled
            .rules
            .plan_recall(settings.executing_paranoia_level);
        compiled.number = NEXT_ENGINE.fetch_add(1, Ordering::Relaxed);
    }
    compiled.walk = Walk::new(&compiled.rules, &compiled.folding);
    let evaluated = compiled
        .walk
        .evaluated_rules(&compiled.rules, &removable_rules(compiled));
    compiled.rules.keep_rows_of(&evaluated);
    compiled.replay = crate::replay::plan(&compiled.rules, &compiled.folding);
    if settings.remembered_values > 0 {
        compiled.phase_keys = crate::phases::KeyPlan::of(&compiled.rules, &evaluated);
    }
    Ok(WafEngine { inner })
}

/// Per rule index, whether a transaction can remove the rule before it runs: a path
/// exclusion without targets names it, or a `ctl` of a rule that runs before it (an earlier
/// phase, or earlier in its phase) does. A `ctl` removing a rule that has already run
/// changes nothing of it: CRS's sampling rule (`ctl:ruleRemoveByTag=OWASP_CRS`, early in
/// phase 1) names nearly every rule, and would otherwise make every jump over the rules
/// above the paranoia level uncertain.
pub(crate) fn removable_rules(compiled: &Compiled) -> Vec<bool> {
    let rules = &compiled.rules;
    let mut removable = vec![false; rules.rules.len()];
    // Per rule index: when it runs, as (phase, position in the phase).
    let mut order = vec![(u8::MAX, usize::MAX); rules.rules.len()];
    for (phase, items) in (1u8..).zip(&rules.phases) {
        for (at, item) in items.iter().enumerate() {
            if let crate::rule::Item::Rule(ri) = item {
                order[*ri] = (phase, at);
            }
        }
    }
    for (ri, rule) in rules.rules.iter().enumerate() {
        let ctls = rule
            .links
            .iter()
            .flat_map(|l| &l.effects)
            .filter_map(|e| match e {
                Effect::Ctl(Ctl::RemoveRules(_, named)) => Some(named),
                _ => None,
            });
        for &named in ctls.flatten() {
            if order[ri] < order[named]
                && let Some(r) = removable.get_mut(named)
            {
                *r = true;
            }
        }
    }
    let paths = compiled
        .path_exclusions
        .iter()
        .filter(|ex| ex.targets.is_empty())
        .flat_map(|ex| &ex.rules);
    for &ri in paths {
        if let Some(r) = removable.get_mut(ri) {
            *r = true;
        }
    }
    removable
}

fn validate(s: &WafSettings) -> Result<(), LoadError> {
    if !(1..=4).contains(&s.paranoia_level) {
        return Err(LoadError::Settings(format!(
            "paranoia level {} is not 1-4",
            s.paranoia_level
        )));
    }
    if !(s.paranoia_level..=4).contains(&s.executing_paranoia_level) {
        return Err(LoadError::Settings(format!(
            "executing paranoia level {} is not {}-4",
            s.executing_paranoia_level, s.paranoia_level
        )));
    }
    for (k, _) in &s.setup_vars {
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(LoadError::Settings(format!("setup variable name `{k}`")));
        }
    }
    Ok(())
}

/// Applies exclusions without paths to the rule set and resolves the others.
fn apply_exclusions(
    rules: &mut RuleSet,
    exclusions: &[Exclusion],
) -> Result<Vec<PathExclusion>, LoadError> {
    let mut out = Vec::new();
    for (n, ex) in exclusions.iter().enumerate() {
        let refs: Vec<RuleRef> = std::iter::once(RuleRef::Ids(ex.rule_ids.clone()))
            .chain(ex.tags.iter().map(|t| RuleRef::Tag(t.clone())))
            .collect();
        let selected: Vec<usize> = (0..rules.rules.len())
            .filter(|&i| refs.iter().any(|r| rules.rules[i].is_named_by(r)))
            .collect();
        let targets = ex
            .targets
            .iter()
            .map(|t| parse_target_ref(t))
            .collect::<Result<Vec<_>, ErrorKind>>()
            .map_err(|e| {
                LoadError::Rules(vec![RuleError {
                    file: "exclusions".into(),
                    line: n + 1,
                    kind: e,
                }])
            })?;
        if !ex.paths.is_empty() {
            out.push(PathExclusion {
                paths: ex.paths.clone(),
                rules: selected,
                targets,
            });
            continue;
        }
        if targets.is_empty() {
            for phase in &mut rules.phases {
                phase.retain(|it| !matches!(it, Item::Rule(i) if selected.contains(i)));
            }
            resolve_skip_after(rules);
        } else {
            for &i in &selected {
                for (v, s) in &targets {
                    add_exclusion(&mut rules.rules[i].links[0].targets, *v, s.clone());
                }
            }
        }
    }
    Ok(out)
}
