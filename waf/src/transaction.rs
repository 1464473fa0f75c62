//! One request's state (collections, `TX`, captures, matches, scores) and the execution of
//! the rules of each phase.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::actions::{AllowScope, BodyProcessor, Ctl, Disruptive, Effect, EngineMode, SetOp};
use crate::body::{self, Parsed};
use crate::engine::{Compiled, Decision, Match, RequestFacts, Verdict};
use crate::operators::atoi;
use crate::rule::{Item, Link, Rule};
use crate::transforms::{Transform, apply_chain_multi};
use crate::variables::{Selector, Target, Var};

/// A keyed value of a collection.
#[derive(Clone, Debug)]
struct Entry {
    key: String,
    key_lower: String,
    value: Vec<u8>,
}

impl Entry {
    fn new(key: impl Into<String>, value: impl Into<Vec<u8>>) -> Entry {
        let key = key.into();
        Entry {
            key_lower: key.to_ascii_lowercase(),
            key,
            value: value.into(),
        }
    }
}

/// One value a target yields.
struct Item2<'a> {
    /// The collection the value is stored in (the cache key), with its index there.
    source: Var,
    idx: u32,
    /// Whether transformed values may be cached.
    cacheable: bool,
    key: &'a str,
    value: Cow<'a, [u8]>,
}

/// A value that matched.
#[derive(Clone, Debug)]
struct Hit {
    name: String,
    value: Vec<u8>,
    /// `capture`: the groups of this match (`TX.0`-`TX.9`).
    captures: Option<Vec<Vec<u8>>>,
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
    response_headers: Vec<Entry>,
    tx: BTreeMap<String, Vec<u8>>,
    ip: BTreeMap<String, Vec<u8>>,
    global: BTreeMap<String, Vec<u8>>,
    env: BTreeMap<String, Vec<u8>>,
    scalars: Vec<Option<Vec<u8>>>,
    matched_vars: Vec<Hit>,
    rule_id: u32,
    rule_phase: u8,
}

fn keyed<'a>(
    entries: &'a [Entry],
    source: Var,
    names: bool,
    t: &Target,
    extra: &[&Selector],
    out: &mut Vec<Item2<'a>>,
) {
    for (i, e) in entries.iter().enumerate() {
        if !t.selector.matches(&e.key_lower)
            || t.exclusions.iter().any(|x| x.matches(&e.key_lower))
            || extra.iter().any(|x| x.matches(&e.key_lower))
        {
            continue;
        }
        out.push(Item2 {
            source,
            idx: u32::try_from(i).unwrap_or(u32::MAX),
            cacheable: true,
            key: &e.key,
            value: Cow::Borrowed(if names { e.key.as_bytes() } else { &e.value }),
        });
    }
}

fn map_items<'a>(
    map: &'a BTreeMap<String, Vec<u8>>,
    source: Var,
    t: &Target,
    extra: &[&Selector],
    out: &mut Vec<Item2<'a>>,
) {
    let mut push = |k: &'a String, v: &'a Vec<u8>| {
        if t.exclusions.iter().any(|x| x.matches(k)) || extra.iter().any(|x| x.matches(k)) {
            return;
        }
        out.push(Item2 {
            source,
            idx: 0,
            cacheable: false,
            key: k,
            value: Cow::Borrowed(v),
        });
    };
    match &t.selector {
        Selector::Key(k) => {
            if let Some((k, v)) = map.get_key_value(k) {
                push(k, v);
            }
        }
        sel => {
            for (k, v) in map {
                if sel.matches(k) {
                    push(k, v);
                }
            }
        }
    }
}

impl Data {
    fn items<'a>(&'a self, t: &Target, extra: &[&Selector], out: &mut Vec<Item2<'a>>) {
        // XML attributes are cached apart from text nodes (the high index bit).
        let list = |v: &'a [Vec<u8>], attrs: bool, out: &mut Vec<Item2<'a>>| {
            for (i, x) in v.iter().enumerate() {
                out.push(Item2 {
                    source: Var::Xml,
                    idx: u32::try_from(i).unwrap_or(u32::MAX >> 1)
                        | if attrs { 1 << 31 } else { 0 },
                    cacheable: true,
                    key: "",
                    value: Cow::Borrowed(x),
                });
            }
        };
        match t.var {
            Var::Args => {
                keyed(&self.args_get, Var::ArgsGet, false, t, extra, out);
                keyed(&self.args_post, Var::ArgsPost, false, t, extra, out);
            }
            Var::ArgsGet => keyed(&self.args_get, Var::ArgsGet, false, t, extra, out),
            Var::ArgsPost => keyed(&self.args_post, Var::ArgsPost, false, t, extra, out),
            Var::ArgsNames => {
                keyed(&self.args_get, Var::ArgsGetNames, true, t, extra, out);
                keyed(&self.args_post, Var::ArgsPostNames, true, t, extra, out);
            }
            Var::ArgsGetNames => keyed(&self.args_get, Var::ArgsGetNames, true, t, extra, out),
            Var::ArgsPostNames => keyed(&self.args_post, Var::ArgsPostNames, true, t, extra, out),
            Var::RequestHeaders => keyed(&self.headers, t.var, false, t, extra, out),
            Var::RequestHeadersNames => keyed(&self.headers, t.var, true, t, extra, out),
            Var::RequestCookies => keyed(&self.cookies, t.var, false, t, extra, out),
            Var::RequestCookiesNames => keyed(&self.cookies, t.var, true, t, extra, out),
            Var::Files => keyed(&self.files, t.var, false, t, extra, out),
            Var::FilesNames => keyed(&self.files, t.var, true, t, extra, out),
            Var::FilesSizes => keyed(&self.files_sizes, t.var, false, t, extra, out),
            Var::MultipartPartHeaders => keyed(&self.part_headers, t.var, false, t, extra, out),
            Var::ResponseHeaders => keyed(&self.response_headers, t.var, false, t, extra, out),
            Var::ResponseHeadersNames => keyed(&self.response_headers, t.var, true, t, extra, out),
            Var::Xml => match &t.selector {
                Selector::Key(k) if k == "//@*" => list(&self.xml_attrs, true, out),
                Selector::Key(k) if k == "/*" => list(&self.xml_text, false, out),
                _ => {
                    list(&self.xml_text, false, out);
                    list(&self.xml_attrs, true, out);
                }
            },
            Var::Tx => map_items(&self.tx, Var::Tx, t, extra, out),
            Var::Ip => map_items(&self.ip, Var::Ip, t, extra, out),
            Var::Global => map_items(&self.global, Var::Global, t, extra, out),
            Var::Env => map_items(&self.env, Var::Env, t, extra, out),
            Var::Rule => {
                if let Some(v) = self.rule_value(&t.selector) {
                    out.push(Item2 {
                        source: Var::Rule,
                        idx: 0,
                        cacheable: false,
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
                    out.push(Item2 {
                        source: t.var,
                        idx: 0,
                        cacheable: false,
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
            v => out.push(Item2 {
                source: v,
                idx: 0,
                cacheable: !v.is_volatile(),
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
    fn lookup(&self, var: Var, key: Option<&str>) -> Option<Vec<u8>> {
        match (var, key) {
            (Var::Tx, Some(k)) => return self.tx.get(k).cloned(),
            (v, None) if !v.is_collection() => return self.scalar(v).cloned(),
            _ => {}
        }
        let t = Target {
            var,
            selector: key.map_or(Selector::All, |k| Selector::Key(k.to_string())),
            count: false,
            exclusions: Vec::new(),
        };
        if var == Var::Rule {
            return self.rule_value(&t.selector);
        }
        let mut out = Vec::new();
        self.items(&t, &[], &mut out);
        out.into_iter().next().map(|i| i.value.into_owned())
    }

    fn set_scalar(&mut self, var: Var, value: impl Into<Vec<u8>>) {
        let i = var as usize;
        if self.scalars.len() <= i {
            self.scalars.resize(Var::ALL.len(), None);
        }
        self.scalars[i] = Some(value.into());
    }

    fn scalar(&self, var: Var) -> Option<&Vec<u8>> {
        self.scalars.get(var as usize).and_then(Option::as_ref)
    }
}

/// A hasher for the cache's packed integer keys (source, index, transformation prefix).
#[derive(Default)]
struct PackedHasher(u64);

impl std::hash::Hasher for PackedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .rotate_left(29);
    }
}

/// Transformed values per (source, index, transformation prefix), for one transaction;
/// `None` when the transformations left the value as it was.
type Cache = HashMap<u64, Option<Arc<[u8]>>, std::hash::BuildHasherDefault<PackedHasher>>;

/// Why evaluation of a phase stopped.
enum Flow {
    Continue,
    StopPhase,
    Interrupt,
}

/// The per-request WAF state. Create one with [`crate::WafEngine::transaction`], then call
/// the `process_*` methods in request order; each returns the verdict so far.
#[derive(Debug)]
pub struct Transaction {
    engine: Arc<Compiled>,
    d: Data,
    cache: Cache,
    mode: EngineMode,
    removed: Vec<bool>,
    /// Per rule index: targets removed by `ctl` or path exclusions in this transaction.
    removed_targets: HashMap<usize, Vec<(Var, Selector)>>,
    matches: Vec<Match>,
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

impl Transaction {
    pub(crate) fn new(engine: Arc<Compiled>, facts: RequestFacts) -> Transaction {
        let mut d = Data::default();
        let RequestFacts {
            method,
            uri,
            protocol,
            headers,
            client_addr,
            client_port,
            server_port,
        } = facts;
        let raw_uri = uri.clone();
        // An absolute-form target keeps only its path for REQUEST_URI.
        let uri = match uri.find("://") {
            Some(i) if !uri.starts_with('/') => {
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
            d.args_get.push(Entry::new(k, v));
        }
        let mut content_type = String::new();
        for (k, v) in &headers {
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
                    d.cookies
                        .push(Entry::new(String::from_utf8_lossy(ck).into_owned(), cv));
                }
            }
            if k.eq_ignore_ascii_case("content-type") && content_type.is_empty() {
                content_type = String::from_utf8_lossy(v).into_owned();
            }
            d.headers.push(Entry::new(k.clone(), v.clone()));
        }
        d.set_scalar(Var::RequestMethod, method.clone());
        d.set_scalar(Var::RequestProtocol, protocol.clone());
        d.set_scalar(Var::RequestLine, format!("{method} {raw_uri} {protocol}"));
        d.set_scalar(Var::RequestUri, uri.clone());
        d.set_scalar(Var::RequestUriRaw, raw_uri);
        d.set_scalar(Var::RequestFilename, path);
        d.set_scalar(Var::RequestBasename, basename);
        d.set_scalar(Var::QueryString, query.unwrap_or_default());
        d.set_scalar(Var::RemoteAddr, client_addr.to_string());
        d.set_scalar(Var::RemotePort, client_port.to_string());
        d.set_scalar(Var::ServerPort, server_port.to_string());
        d.set_scalar(Var::UniqueId, engine.next_unique_id());
        let combined: usize = d.args_get.iter().map(|e| e.key.len() + e.value.len()).sum();
        d.set_scalar(Var::ArgsCombinedSize, combined.to_string());
        let body_processor = processor_for(&content_type);
        if let Some(p) = body_processor {
            d.set_scalar(Var::ReqbodyProcessor, p.name());
        }
        let rule_count = engine.rules.rules.len();
        let mut tx = Transaction {
            mode: engine.mode,
            d,
            cache: Cache::default(),
            removed: vec![false; rule_count],
            removed_targets: HashMap::new(),
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
        tx.apply_path_exclusions();
        tx
    }

    /// Applies the configured exclusions whose path prefixes match this request.
    fn apply_path_exclusions(&mut self) {
        let engine = self.engine.clone();
        let path = self
            .d
            .scalar(Var::RequestFilename)
            .cloned()
            .unwrap_or_default();
        for ex in &engine.path_exclusions {
            if !ex.paths.iter().any(|p| path.starts_with(p.as_bytes())) {
                continue;
            }
            for &i in &ex.rules {
                if ex.targets.is_empty() {
                    self.removed[i] = true;
                } else {
                    for (v, s) in &ex.targets {
                        self.removed_targets
                            .entry(i)
                            .or_default()
                            .push((*v, s.clone()));
                    }
                }
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
        if self.request_body_access && self.phases_done < 2 {
            self.parse_request_body(body);
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
                .push(Entry::new(k.clone(), v.clone()));
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
        self.d
            .set_scalar(Var::RequestBodyLength, body.len().to_string());
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
            self.d.args_post.push(Entry::new(k, v));
        }
        let mut combined = 0usize;
        for f in &parsed.files {
            combined += f.size;
            self.d
                .files
                .push(Entry::new(f.field.clone(), f.filename.clone()));
            self.d
                .files_sizes
                .push(Entry::new(f.field.clone(), f.size.to_string()));
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
            self.d.part_headers.push(Entry::new(k, v));
        }
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
        let engine = self.engine.clone();
        let items = &engine.rules.phases[usize::from(phase - 1)];
        let markers = &engine.rules.markers[usize::from(phase - 1)];
        let mut i = 0;
        let mut skip = 0u32;
        while i < items.len() {
            let Item::Rule(ri) = items[i] else {
                i += 1;
                continue;
            };
            i += 1;
            if skip > 0 {
                skip -= 1;
                continue;
            }
            if self.removed[ri] {
                continue;
            }
            let rule = &engine.rules.rules[ri];
            if !self.eval_rule(ri, rule) {
                continue;
            }
            if let Some(m) = &rule.skip_after {
                i = match markers.get(m) {
                    Some(&pos) if pos >= i => pos + 1,
                    _ => items.len(),
                };
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

    /// Evaluates a rule and its chain; on a match runs the per-match actions and records
    /// the match. Returns whether it matched.
    fn eval_rule(&mut self, ri: usize, rule: &Rule) -> bool {
        self.d.matched_vars.clear();
        self.d.rule_id = rule.id;
        self.d.rule_phase = rule.phase;
        // Like ModSecurity and Coraza, each link's per-match actions run as soon as the link
        // matches, before the next link is evaluated (CRS prepares `TX` values in chain
        // starters and scores in the last link).
        let mut first: Option<Hit> = None;
        for (n, link) in rule.links.iter().enumerate() {
            let h = if link.targets.is_empty() {
                vec![Hit {
                    name: String::new(),
                    value: Vec::new(),
                    captures: None,
                }]
            } else {
                self.eval_link(ri, n == 0, link)
            };
            if h.is_empty() {
                return false;
            }
            for hit in &h {
                self.set_matched(hit);
                if let Some(c) = &hit.captures {
                    for (i, v) in c.iter().enumerate() {
                        self.d.tx.insert(i.to_string(), v.clone());
                    }
                }
                for e in &link.effects {
                    self.effect(e);
                }
            }
            if let Some(last) = h.last() {
                self.set_matched(last);
            }
            if first.is_none() {
                first = h.first().cloned();
            }
            self.d
                .matched_vars
                .extend(h.into_iter().filter(|x| !x.name.is_empty()));
        }
        if rule.log && rule.id != 0 {
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
                variable: first.map(|h| h.name).unwrap_or_default(),
            });
        }
        true
    }

    fn set_matched(&mut self, h: &Hit) {
        self.d.set_scalar(Var::MatchedVar, h.value.clone());
        self.d.set_scalar(Var::MatchedVarName, h.name.clone());
    }

    fn eval_link(&mut self, ri: usize, starter: bool, link: &Link) -> Vec<Hit> {
        let arg: Cow<'_, [u8]> = match link.operator.argument() {
            Some(m) => m.expand(|v, k| self.d.lookup(v, k)),
            None => Cow::Borrowed(b""),
        };
        let mut hits = Vec::new();
        let mut caps = Vec::new();
        let want_caps = link.capture && !link.negated;
        let d = &self.d;
        let cache = &mut self.cache;
        let removed_targets: &[(Var, Selector)] = match self.removed_targets.get(&ri) {
            Some(r) if starter => r,
            _ => &[],
        };
        let mut items = Vec::new();
        for t in &link.targets {
            items.clear();
            let extra_t: Vec<&Selector> = if removed_targets.is_empty() {
                Vec::new()
            } else {
                removed_targets
                    .iter()
                    .filter(|(v, _)| {
                        *v == t.var
                            || (*v == Var::Args && matches!(t.var, Var::ArgsGet | Var::ArgsPost))
                            || (*v == Var::ArgsNames
                                && matches!(t.var, Var::ArgsGetNames | Var::ArgsPostNames))
                    })
                    .map(|(_, s)| s)
                    .collect()
            };
            if extra_t.iter().any(|s| matches!(s, Selector::All)) {
                continue;
            }
            d.items(t, &extra_t, &mut items);
            if t.count {
                let value = items.len().to_string().into_bytes();
                let name = count_name(t);
                if link.operator.matches(&value, &arg, None) != link.negated {
                    hits.push(Hit {
                        name,
                        value,
                        captures: None,
                    });
                }
                continue;
            }
            for item in &items {
                let name = || {
                    if item.key.is_empty() && !t.var.is_collection() {
                        t.var.name().to_string()
                    } else {
                        format!("{}:{}", t.var.name(), item.key)
                    }
                };
                if link.multi_match {
                    for v in apply_chain_multi(&link.transforms, &item.value) {
                        let cap = if want_caps { Some(&mut caps) } else { None };
                        if link.operator.matches(&v, &arg, cap) != link.negated {
                            hits.push(Hit {
                                name: name(),
                                value: v,
                                captures: want_caps.then(|| caps.clone()),
                            });
                        }
                    }
                    continue;
                }
                let value = transformed(cache, item, &link.transforms, &link.prefix_ids);
                let cap = if want_caps { Some(&mut caps) } else { None };
                if link.operator.matches(&value, &arg, cap) != link.negated {
                    hits.push(Hit {
                        name: name(),
                        value: value.to_vec(),
                        captures: want_caps.then(|| caps.clone()),
                    });
                }
            }
        }
        hits
    }

    fn effect(&mut self, e: &Effect) {
        match e {
            Effect::SetVar {
                collection,
                key,
                op,
            } => {
                let key = String::from_utf8_lossy(&key.expand(|v, k| self.d.lookup(v, k)))
                    .to_ascii_lowercase();
                let value = match op {
                    SetOp::Set(m) | SetOp::Add(m) | SetOp::Sub(m) => {
                        Some(m.expand(|v, k| self.d.lookup(v, k)).into_owned())
                    }
                    SetOp::Delete => None,
                };
                let map = match collection {
                    Var::Ip => &mut self.d.ip,
                    Var::Global => &mut self.d.global,
                    Var::Env => &mut self.d.env,
                    _ => &mut self.d.tx,
                };
                match (op, value) {
                    (SetOp::Delete, _) => {
                        map.remove(&key);
                    }
                    (SetOp::Set(_), Some(v)) => {
                        map.insert(key, v);
                    }
                    (SetOp::Add(_), Some(v)) => {
                        let cur = map.get(&key).map_or(0, |c| atoi(c));
                        map.insert(key, (cur + atoi(&v)).to_string().into_bytes());
                    }
                    (SetOp::Sub(_), Some(v)) => {
                        let cur = map.get(&key).map_or(0, |c| atoi(c));
                        map.insert(key, (cur - atoi(&v)).to_string().into_bytes());
                    }
                    _ => {}
                }
            }
            Effect::SetEnv(k, v) => {
                let k = String::from_utf8_lossy(&k.expand(|a, b| self.d.lookup(a, b)))
                    .to_ascii_lowercase();
                let v = v.expand(|a, b| self.d.lookup(a, b)).into_owned();
                self.d.env.insert(k, v);
            }
            Effect::InitCol(_) => {}
            Effect::Ctl(c) => self.ctl(c),
        }
    }

    fn ctl(&mut self, c: &Ctl) {
        match c {
            Ctl::RemoveRules(_, rules) => {
                for &i in rules {
                    self.removed[i] = true;
                }
            }
            Ctl::RemoveTarget(_, rules, v, s) => {
                for &i in rules {
                    self.removed_targets
                        .entry(i)
                        .or_default()
                        .push((*v, s.clone()));
                }
            }
            Ctl::RuleEngine(m) => self.mode = *m,
            Ctl::RequestBodyProcessor(p) => {
                self.body_processor = Some(*p);
                self.d.set_scalar(Var::ReqbodyProcessor, p.name());
            }
            Ctl::ForceRequestBodyVariable(b) => self.force_body_variable = *b,
            Ctl::RequestBodyAccess(b) => self.request_body_access = *b,
            Ctl::ResponseBodyAccess(b) => self.response_body_access = *b,
            Ctl::AuditLog => {}
        }
    }
}

fn count_name(t: &Target) -> String {
    match &t.selector {
        Selector::Key(k) => format!("{}:{}", t.var.name(), k),
        _ => t.var.name().to_string(),
    }
}

/// A transformed value: the original, a fresh one, or one shared with the cache.
enum Val<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
    Shared(Arc<[u8]>),
}

impl std::ops::Deref for Val<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Val::Borrowed(b) => b,
            Val::Owned(v) => v,
            Val::Shared(a) => a,
        }
    }
}

/// The transformed value of an item, from the cache when an earlier rule computed it (or a
/// prefix of it).
fn transformed<'a>(
    cache: &mut Cache,
    item: &'a Item2<'_>,
    transforms: &[Transform],
    prefix_ids: &[u32],
) -> Val<'a> {
    if transforms.is_empty() {
        return Val::Borrowed(&item.value);
    }
    if !item.cacheable {
        let mut v: Cow<'_, [u8]> = Cow::Borrowed(&item.value);
        for t in transforms {
            if let Cow::Owned(n) = t.apply(&v) {
                v = Cow::Owned(n);
            }
        }
        return match v {
            Cow::Borrowed(b) => Val::Borrowed(b),
            Cow::Owned(o) => Val::Owned(o),
        };
    }
    let key = |p: u32| (item.source as u64) << 56 | u64::from(item.idx) << 24 | u64::from(p);
    // Find the longest cached prefix; `None` in the cache means "unchanged so far".
    let mut start = 0;
    let mut cur: Option<Arc<[u8]>> = None;
    for n in (0..prefix_ids.len()).rev() {
        if let Some(v) = cache.get(&key(prefix_ids[n])) {
            if n + 1 == prefix_ids.len() {
                return v.clone().map_or(Val::Borrowed(&item.value), Val::Shared);
            }
            cur = v.clone();
            start = n + 1;
            break;
        }
    }
    for n in start..transforms.len() {
        let input: &[u8] = cur.as_deref().unwrap_or(&item.value);
        if let Cow::Owned(v) = transforms[n].apply(input) {
            cur = Some(Arc::from(v));
        }
        cache.insert(key(prefix_ids[n]), cur.clone());
    }
    cur.map_or(Val::Borrowed(&item.value), Val::Shared)
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
