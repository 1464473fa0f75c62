//! Layer 10, the web application firewall: the OWASP Core Rule Set v4 run natively by
//! [`portcullis_waf`], on the request head before the upstream is contacted and on the body
//! (held back up to the inspection limit and decided before any of it is forwarded, so a
//! blocked body never reaches the application; the rest of a longer body then streams).
//! An application that answers without reading the body (a 404 on an unknown path) may
//! still have its answer reach the client before the body's refusal: the body itself never
//! reaches it.
//!
//! [`Waf::new`] maps the document's `waf` section onto the engine's settings and compiles
//! the rules once, off the request path; [`Waf::facts`] and [`outcome`] are the pure glue
//! between a request and the engine's [`Verdict`].
//!
//! | rule | answer |
//! | --- | --- |
//! | `anomaly-score` (blocking mode, score over the threshold or a blocking rule) | the engine's status (403), with the request id |
//! | detect-only | let through; the matches go to the log and metrics |

use std::{net::IpAddr, path::PathBuf};

use http::StatusCode;
use portcullis_crds::{edge, media_server::AppKind, waf_rule_set::WafMode};
use portcullis_waf::{
    AppProfile, Decision, Exclusion, LoadError, Mode, RequestFacts, Transaction,
    Verdict as WafVerdict, WafEngine, WafSettings,
};

use crate::verdict::{Reason, Response, Verdict};

/// Why the WAF could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum WafError {
    /// The rules did not load.
    #[error("waf: {0}")]
    Load(#[from] LoadError),
}

/// The compiled WAF.
#[derive(Debug)]
pub struct Waf {
    engine: WafEngine,
    /// Block or only detect.
    pub mode: WafMode,
    /// The most body bytes inspected.
    pub body_limit: usize,
}

/// The document's exclusions as the engine's.
fn exclusions(doc: &edge::Waf) -> Vec<Exclusion> {
    doc.exclusions
        .iter()
        .map(|exclusion| Exclusion {
            rule_ids: exclusion
                .rule_ids
                .iter()
                .map(|id| {
                    (
                        u32::try_from(*id).unwrap_or(0),
                        u32::try_from(*id).unwrap_or(0),
                    )
                })
                .chain(exclusion.rule_id_ranges.iter().map(|(from, to)| {
                    (
                        u32::try_from(*from).unwrap_or(0),
                        u32::try_from(*to).unwrap_or(0),
                    )
                }))
                .collect(),
            tags: exclusion.tags.clone(),
            paths: exclusion.paths.clone(),
            targets: exclusion.targets.clone(),
        })
        .collect()
}

impl Waf {
    /// Compiles the document's WAF: the CRS in `crsDir` with the custom rules, or the custom
    /// rules alone without a `crsDir`; `None` when there is neither.
    pub fn new(doc: &edge::Waf, app: AppKind) -> Result<Option<Self>, WafError> {
        if doc.crs_dir.is_none() && doc.custom_rules.is_none() {
            return Ok(None);
        }
        let body_limit = usize::try_from(doc.request_body_limit.bytes()).unwrap_or(usize::MAX);
        let settings = WafSettings {
            mode: match doc.mode {
                WafMode::Block => Mode::Block,
                WafMode::Detect => Mode::Detect,
            },
            paranoia_level: u8::try_from(doc.paranoia_level).unwrap_or(1),
            executing_paranoia_level: u8::try_from(doc.executing_paranoia_level).unwrap_or(1),
            inbound_anomaly_threshold: u32::try_from(doc.inbound_anomaly_threshold).unwrap_or(5),
            outbound_anomaly_threshold: u32::try_from(doc.outbound_anomaly_threshold).unwrap_or(4),
            app_profile: doc.app_exclusions.then_some(match app {
                AppKind::Jellyfin => AppProfile::Jellyfin,
            }),
            exclusions: exclusions(doc),
            custom_rules: doc.custom_rules.clone(),
            request_body_limit: body_limit,
            inspect_responses: doc.inspect_responses,
            ..WafSettings::default()
        };
        let engine = match &doc.crs_dir {
            Some(crs_dir) => WafEngine::new(&settings, crs_dir)?,
            None => WafEngine::custom_only(&settings)?,
        };
        Ok(Some(Self {
            engine,
            mode: doc.mode,
            body_limit,
        }))
    }

    /// The rule files of a CRS directory; a change to any recompiles the policy.
    pub fn files(doc: &edge::Waf) -> Vec<PathBuf> {
        let Some(dir) = &doc.crs_dir else {
            return Vec::new();
        };
        let mut files = Vec::new();
        for candidate in [
            dir.join("crs-setup.conf"),
            dir.join("crs-setup.conf.example"),
        ] {
            if candidate.is_file() {
                files.push(candidate);
            }
        }
        let rules = if dir.join("rules").is_dir() {
            dir.join("rules")
        } else {
            dir.clone()
        };
        if let Ok(entries) = std::fs::read_dir(&rules) {
            let mut found: Vec<PathBuf> = entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|path| {
                    path.extension()
                        .is_some_and(|ext| ext == "conf" || ext == "data")
                })
                .collect();
            found.sort();
            files.extend(found);
        }
        files
    }

    /// Starts the inspection of a request.
    pub fn transaction(&self, facts: RequestFacts) -> Transaction {
        self.engine.transaction(facts)
    }

    /// The number of rules loaded.
    pub fn rule_count(&self) -> usize {
        self.engine.rule_count()
    }
}

/// The request facts the engine reads: method, target, protocol, headers, addresses.
///
/// An HTTP/2 request names its host in the `:authority` pseudo-header, not in `Host`; the
/// engine sees it as `Host` (as nginx and Apache hand it to ModSecurity), or CRS rule 920280
/// would count every browser's request as missing its Host header.
pub fn facts<'a>(
    method: &str,
    target: &str,
    http2: bool,
    authority: Option<&str>,
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    client: Option<(IpAddr, u16)>,
    server_port: u16,
) -> RequestFacts {
    let mut facts = RequestFacts::new(method, target, if http2 { "HTTP/2.0" } else { "HTTP/1.1" });
    facts.headers = headers
        .map(|(name, value)| (name.to_owned(), value.to_vec()))
        .collect();
    let has_host = facts
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"));
    if let (false, Some(authority)) = (has_host, authority) {
        facts
            .headers
            .insert(0, ("host".to_owned(), authority.as_bytes().to_vec()));
    }
    if let Some((ip, port)) = client {
        facts.client_addr = ip;
        facts.client_port = port;
    }
    facts.server_port = server_port;
    facts
}

/// The edge's verdict on the engine's: a block becomes the error page with the engine's
/// status; allowed and detected requests continue.
pub fn outcome(verdict: &WafVerdict) -> Verdict {
    match verdict.decision {
        Decision::Block { status, rule_id } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
            Verdict::Respond(
                Response::error(status),
                Reason::owned("anomaly-score", summary(verdict, rule_id)),
            )
        }
        Decision::Allow | Decision::Detected { .. } => Verdict::Continue,
    }
}

/// One line for the log: the deciding rule, the score, and each matched rule with its
/// message.
pub fn summary(verdict: &WafVerdict, deciding: u32) -> String {
    let mut text = format!("rule {deciding}, inbound score {}", verdict.inbound_score);
    for matched in &verdict.matched {
        text.push_str(&format!("; {} {}", matched.id, matched.msg));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crs_dir() -> PathBuf {
        PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../shared/testdata/crs"
        ))
    }

    fn doc(mode: &str) -> edge::Waf {
        serde_json::from_value(serde_json::json!({
            "mode": mode, "crsDir": crs_dir(), "paranoiaLevel": 1, "executingParanoiaLevel": 1,
            "inboundAnomalyThreshold": 5, "outboundAnomalyThreshold": 4, "appExclusions": true,
            "requestBodyLimit": "1Mi", "inspectResponses": false
        }))
        .unwrap()
    }

    const BROWSER_HEADERS: [(&str, &[u8]); 2] = [
        (
            "User-Agent",
            b"Mozilla/5.0 (X11; Linux x86_64) Firefox/140.0",
        ),
        ("Accept", b"*/*"),
    ];

    fn run(waf: &Waf, target: &str, body: &[u8]) -> WafVerdict {
        let host = [("Host", &b"media.example.org"[..])];
        let mut tx = waf.transaction(facts(
            "GET",
            target,
            false,
            None,
            host.into_iter().chain(BROWSER_HEADERS),
            Some(("192.0.2.1".parse().unwrap(), 40000)),
            8443,
        ));
        let head = tx.process_request_headers();
        if head.is_blocked() {
            return head;
        }
        tx.process_request_body(body)
    }

    #[test]
    fn an_http2_request_names_its_host_in_the_authority() {
        let waf = Waf::new(&doc("Block"), AppKind::Jellyfin).unwrap().unwrap();
        let h2 = |authority| {
            let mut tx = waf.transaction(facts(
                "GET",
                "/web/index.html",
                true,
                authority,
                BROWSER_HEADERS.into_iter(),
                None,
                8443,
            ));
            let head = tx.process_request_headers();
            if head.is_blocked() {
                return head;
            }
            tx.process_request_body(b"")
        };
        assert!(!h2(Some("media.example.org")).is_blocked());
        // Without any host at all, CRS still says so (920280 and the anomaly threshold).
        assert!(h2(None).is_blocked());
    }

    #[test]
    fn an_sql_injection_is_blocked_and_a_search_is_not() {
        assert!(
            crs_dir().join("rules").is_dir(),
            "the CRS corpus is at {}",
            crs_dir().display()
        );
        let waf = Waf::new(&doc("Block"), AppKind::Jellyfin).unwrap().unwrap();
        assert!(waf.rule_count() > 100);
        let attack = run(&waf, "/Items?searchTerm=1'%20OR%20'1'='1'%20--", b"");
        let Verdict::Respond(response, reason) = outcome(&attack) else {
            panic!("{attack:?}");
        };
        assert_eq!(response.status, StatusCode::FORBIDDEN);
        assert_eq!(reason.rule, "anomaly-score");
        assert!(reason.detail.contains("949110"), "{}", reason.detail);
        let search = run(&waf, "/Items?searchTerm=star%20wars&Limit=24", b"");
        assert_eq!(outcome(&search), Verdict::Continue);
    }

    #[test]
    fn detect_only_lets_an_attack_through_but_reports_it() {
        let waf = Waf::new(&doc("Detect"), AppKind::Jellyfin)
            .unwrap()
            .unwrap();
        let attack = run(&waf, "/Items?searchTerm=<script>alert(1)</script>", b"");
        assert_eq!(outcome(&attack), Verdict::Continue);
        assert!(matches!(attack.decision, Decision::Detected { .. }));
        assert!(!attack.matched.is_empty());
    }

    #[test]
    fn without_a_crs_directory_only_the_custom_rules_run() {
        let mut off = doc("Block");
        off.crs_dir = None;
        assert!(Waf::new(&off, AppKind::Jellyfin).unwrap().is_none());
        off.custom_rules = Some(
            "SecRule ARGS:searchTerm \"@streq forbidden\" \"id:10001,phase:1,deny,status:403\""
                .into(),
        );
        let custom = Waf::new(&off, AppKind::Jellyfin).unwrap().unwrap();
        assert!(run(&custom, "/Items?searchTerm=forbidden", b"").is_blocked());
        // What the CRS would refuse passes: it is off.
        assert!(
            !run(
                &custom,
                "/Items?searchTerm=1%27%20OR%20%271%27%3D%271%27%20--",
                b""
            )
            .is_blocked()
        );
        assert!(Waf::files(&off).is_empty());
    }

    #[test]
    fn the_rule_files_are_watched() {
        let files = Waf::files(&doc("Block"));
        assert!(files.iter().any(|f| f.ends_with("crs-setup.conf.example")));
        assert!(
            files
                .iter()
                .any(|f| f.extension().is_some_and(|e| e == "data"))
        );
        assert!(files.len() > 20);
    }
}
