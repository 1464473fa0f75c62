//! Shared helpers: where the CRS is, and engines built once.

use std::path::PathBuf;

use portcullis_waf::{Decision, Match, RequestFacts, WafEngine, WafSettings};

/// The CRS v4 release the tests run (beside the checkout, in `shared/`).
pub fn crs_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/crs");
    assert!(
        dir.join("rules").is_dir(),
        "the CRS test data is missing at {}",
        dir.display()
    );
    dir
}

/// An engine over the test CRS.
pub fn engine(settings: &WafSettings) -> WafEngine {
    WafEngine::new(settings, &crs_dir()).unwrap_or_else(|e| panic!("{e}"))
}

/// An engine of `rules` (SecLang) alone, without the CRS.
pub fn custom_engine(rules: &str) -> WafEngine {
    WafEngine::custom_only(&WafSettings {
        custom_rules: Some(rules.into()),
        ..WafSettings::default()
    })
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The engine's decision on a request without a body, after both request phases.
pub fn decide(engine: &WafEngine, request: RequestFacts) -> Decision {
    let mut tx = engine.transaction(request);
    tx.process_request_headers();
    tx.process_request_body(b"").decision
}

/// The matches the engine logs for a GET of `uri` (see [`get`]) after its headers.
pub fn logged_after_headers(engine: &WafEngine, uri: &str) -> Vec<Match> {
    let mut tx = engine.transaction(get(uri));
    tx.process_request_headers().matched
}

/// A browser-like request.
pub fn get(uri: &str) -> RequestFacts {
    RequestFacts::new("GET", uri, "HTTP/1.1")
        .header("Host", "media.example.org")
        .header(
            "User-Agent",
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        )
        .header("Accept", "application/json")
}
