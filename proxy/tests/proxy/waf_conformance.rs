//! A sample of CRS's own regression suite (go-ftw YAML) through the real proxy: each request
//! goes over TLS as raw bytes to the edge in detect-only mode with CRS's test settings (PL 4,
//! thresholds 5/4, no application exclusions), and the rules it matched are read back from
//! `portcullis_waf_matches_total{rule}`. `waf/tests/waf/conformance.rs` runs the whole suite
//! in process; this checks that the edge hands the engine what a web server hands
//! ModSecurity (target, headers, Host, body), so the rules match through the proxy as they
//! do in process.
//!
//! The sample: the attack rule files (921, 930-934, 941-944), tests of one stage with
//! expected ids whose request the edge's hygiene layer lets through unchanged (GET or POST,
//! HTTP/1.1, an origin-form target without the characters a URI may not hold raw, which the
//! edge refuses with 400, printable headers, no Transfer-Encoding), every
//! `STRIDE`th of them. Wire-level cases are the hygiene layer's own tests.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::ftw::{Wire, ids, scalar, wire, yaml_files};
use crate::util::{HOST, Proxy, Settings, admin_get, raw_tls};
use crate::waf::crs_dir;

/// Every how many qualifying tests one is sent.
const STRIDE: usize = 6;

/// The rule files sampled: the attack categories.
/// (913, scanner user agents, is left out: the bot layer refuses those agents before the WAF.)
const RULE_FILES: [&str; 10] = [
    "REQUEST-921-",
    "REQUEST-930-",
    "REQUEST-931-",
    "REQUEST-932-",
    "REQUEST-933-",
    "REQUEST-934-",
    "REQUEST-941-",
    "REQUEST-942-",
    "REQUEST-943-",
    "REQUEST-944-",
];

/// One sampled test: its name, request and expectations.
struct Case {
    name: String,
    wire: Wire,
    expect: Vec<u64>,
    no_expect: Vec<u64>,
}

/// Whether the edge passes this request to the WAF as it is (the hygiene layer refuses or
/// rewrites the others before any rule runs).
fn reaches_the_waf_unchanged(wire: &Wire) -> bool {
    let printable = |bytes: &[u8]| {
        bytes
            .iter()
            .all(|b| (0x20..0x7f).contains(b) || *b == b'\t')
    };
    ["GET", "POST"].contains(&wire.method.as_str())
        && wire.version == "HTTP/1.1"
        && wire.uri.starts_with('/')
        && wire.uri.len() <= 4096
        && printable(wire.uri.as_bytes())
        && !wire.uri.bytes().any(|b| b" \"<>\\^`{|}".contains(&b))
        && wire.headers.len() < 30
        && wire.headers.iter().all(|(name, value)| {
            !name.is_empty()
                && printable(name.as_bytes())
                && printable(value)
                && !name.eq_ignore_ascii_case("transfer-encoding")
                && !name.eq_ignore_ascii_case("expect")
        })
        && wire
            .headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case("content-length"))
            .count()
            <= 1
}

/// The sampled tests, in file order.
fn sample() -> Vec<Case> {
    let mut files = Vec::new();
    yaml_files(&crs_dir().join("tests/regression/tests"), &mut files);
    let mut qualifying = Vec::new();
    for file in files.iter().filter(|f| {
        let dir = f.parent().and_then(|p| p.file_name()).unwrap_or_default();
        RULE_FILES
            .iter()
            .any(|prefix| dir.to_string_lossy().starts_with(prefix))
    }) {
        let doc: Value = serde_saphyr::from_str(&std::fs::read_to_string(file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        for test in doc["tests"].as_array().into_iter().flatten() {
            let [stage] = test["stages"].as_array().map_or(&[][..], Vec::as_slice) else {
                continue;
            };
            let log = &stage["output"]["log"];
            let expect = ids(log.get("expect_ids"));
            let input = &stage["input"];
            if expect.is_empty()
                || input.get("encoded_request").is_some()
                || input.get("raw_request").is_some()
            {
                continue;
            }
            let wire = wire(input);
            if !reaches_the_waf_unchanged(&wire) {
                continue;
            }
            qualifying.push(Case {
                name: format!(
                    "{}#{}",
                    file.file_stem().unwrap().to_string_lossy(),
                    scalar(&test["test_id"])
                ),
                wire,
                expect,
                no_expect: ids(log.get("no_expect_ids")),
            });
        }
    }
    qualifying.into_iter().step_by(STRIDE).collect()
}

/// The request as bytes: the test's own headers, with the edge's host as `Host` and the
/// connection closed after the answer.
fn raw_request(wire: &Wire) -> Vec<u8> {
    let mut out = format!("{} {} HTTP/1.1\r\nHost: {HOST}\r\n", wire.method, wire.uri).into_bytes();
    for (name, value) in &wire.headers {
        if name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case("connection") {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.extend_from_slice(&wire.body);
    out
}

/// How many times each rule has matched, from the proxy's metrics.
async fn matches(proxy: &Proxy) -> BTreeMap<u64, f64> {
    let (_, text) = admin_get(proxy.admin(), "/metrics").await.unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix("portcullis_waf_matches_total{rule=\""))
        .filter_map(|rest| {
            let (rule, count) = rest.split_once("\"} ")?;
            Some((rule.parse().ok()?, count.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn a_sample_of_the_crs_regression_suite_matches_through_the_proxy() {
    let cases = sample();
    assert!(cases.len() >= 100, "only {} tests sampled", cases.len());
    let proxy = Proxy::start(Settings {
        methods: vec!["GET", "POST"],
        max_uri_bytes: 8192,
        max_body: "13Mi",
        max_connections_per_ip: 1000,
        extra: format!(
            "waf:
  mode: Detect
  crsDir: {crs}
  paranoiaLevel: 4
  executingParanoiaLevel: 4
  inboundAnomalyThreshold: 5
  outboundAnomalyThreshold: 4
  appExclusions: false
  requestBodyLimit: 13Mi
  inspectResponses: false
",
            crs = crs_dir().display()
        ),
        ..Settings::default()
    });
    let mut failed = Vec::new();
    let mut before = matches(&proxy).await;
    for case in &cases {
        let (status, answer) = raw_tls(proxy.https(), &raw_request(&case.wire)).await;
        let after = matches(&proxy).await;
        let matched: Vec<u64> = after
            .iter()
            .filter(|(rule, count)| before.get(rule).is_none_or(|old| old < count))
            .map(|(rule, _)| *rule)
            .collect();
        let missing: Vec<u64> = case
            .expect
            .iter()
            .filter(|id| !matched.contains(id))
            .copied()
            .collect();
        let unwanted: Vec<u64> = case
            .no_expect
            .iter()
            .filter(|id| matched.contains(id))
            .copied()
            .collect();
        if !missing.is_empty() || !unwanted.is_empty() {
            let first_line = answer.lines().next().unwrap_or_default().to_owned();
            failed.push(format!(
                "{}: {} {} -> {status} ({first_line}); missing {missing:?}, unwanted {unwanted:?}, matched {matched:?}",
                case.name, case.wire.method, case.wire.uri
            ));
        }
        before = after;
    }
    println!(
        "{} of {} sampled CRS regression tests pass through the proxy",
        cases.len() - failed.len(),
        cases.len()
    );
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
