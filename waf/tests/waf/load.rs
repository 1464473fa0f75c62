//! Loading: every CRS file parses and compiles; unsupported constructs are reported with
//! their line.

use portcullis_waf::{
    DataFiles, Decision, ErrorKind, LoadError, RequestFacts, WafEngine, WafSettings,
};

use crate::util::{crs_dir, engine};

#[test]
fn the_whole_crs_loads_without_unsupported_constructs() {
    let e = engine(&WafSettings::default());
    assert!(e.rule_count() > 600, "{} rules", e.rule_count());
}

#[test]
fn unsupported_constructs_in_custom_rules_are_reported_with_their_lines() {
    let settings = WafSettings {
        custom_rules: Some(
            "SecRule ARGS \"@rx a\" \"id:1,phase:2,pass\"\n\
             SecRule GEO:country \"@streq X\" \"id:2,phase:1,pass\"\n\
             \n\
             SecRule ARGS \"@rbl x\" \"id:3,phase:1,\\\n  exec:/bin/true\"\n\
             SecRequestBodyAccess On\n"
                .into(),
        ),
        ..WafSettings::default()
    };
    let err = WafEngine::new(&settings, &crs_dir()).unwrap_err();
    let LoadError::Rules(errors) = err else {
        panic!("expected rule errors, got {err}");
    };
    let got: Vec<(usize, ErrorKind)> = errors.into_iter().map(|e| (e.line, e.kind)).collect();
    assert_eq!(
        got,
        vec![
            (2, ErrorKind::UnsupportedVariable("GEO".into())),
            (4, ErrorKind::UnsupportedAction("exec".into())),
            (
                6,
                ErrorKind::UnsupportedDirective("SecRequestBodyAccess".into())
            ),
        ]
    );
}

#[test]
fn custom_rules_validate_with_the_engine_parser() {
    let rules_dir = crs_dir().join("rules");
    assert!(WafEngine::validate_rules(
        "SecRule REQUEST_HEADERS:User-Agent \"@pm sqlmap nikto\" \"id:10,phase:1,deny,status:403\"",
        DataFiles::Dir(&rules_dir),
    )
    .is_ok());
    let err = WafEngine::validate_rules("SecRule ARGS \"@rx (\" \"id:11\"", DataFiles::NamesOnly)
        .unwrap_err();
    assert!(err.to_string().contains("custom_rules:1"), "{err}");
}

#[test]
fn pm_from_file_is_checked_by_name_away_from_the_crs_and_refused_without_it() {
    let rule = |file: &str| {
        format!(
            "SecRule REQUEST_HEADERS:User-Agent \"@pmFromFile {file}\" \"id:12,phase:1,deny,status:403\""
        )
    };
    // A CRS data file: read where the CRS is, accepted by name where it is not.
    let rules_dir = crs_dir().join("rules");
    WafEngine::validate_rules(
        &rule("scanners-user-agents.data"),
        DataFiles::Dir(&rules_dir),
    )
    .unwrap();
    WafEngine::validate_rules(&rule("scanners-user-agents.data"), DataFiles::NamesOnly).unwrap();
    let err = WafEngine::validate_rules(&rule("no-such-file.data"), DataFiles::Dir(&rules_dir))
        .unwrap_err();
    assert!(err.to_string().contains("no-such-file.data"), "{err}");
    let err =
        WafEngine::validate_rules(&rule("../../etc/passwd"), DataFiles::NamesOnly).unwrap_err();
    assert!(err.to_string().contains("plain file name"), "{err}");
    let err = WafEngine::validate_rules(&rule("scanners-user-agents.data"), DataFiles::Absent)
        .unwrap_err();
    assert!(err.to_string().contains("Core Rule Set is off"), "{err}");
}

#[test]
fn custom_rules_run_without_the_crs() {
    let settings = WafSettings {
        custom_rules: Some(
            "SecRule ARGS:q \"@contains forbidden\" \"id:20,phase:1,deny,status:451,msg:'custom'\""
                .into(),
        ),
        ..WafSettings::default()
    };
    let engine = WafEngine::custom_only(&settings).unwrap();
    assert_eq!(engine.rule_count(), 1);
    let verdict = |uri: &str| {
        let mut tx = engine.transaction(RequestFacts::new("GET", uri, "HTTP/1.1"));
        tx.process_request_headers();
        tx.process_request_body(b"")
    };
    assert_eq!(
        verdict("/search?q=forbidden").decision,
        Decision::Block {
            status: 451,
            rule_id: 20
        }
    );
    // Without the CRS nothing else is judged: what would score there passes here.
    assert_eq!(
        verdict("/search?q=1%27%20OR%20%271%27%3D%271").decision,
        Decision::Allow
    );
    let none = WafEngine::custom_only(&WafSettings::default()).unwrap_err();
    assert!(none.to_string().contains("no custom rules"), "{none}");
}

#[test]
fn settings_out_of_range_are_refused() {
    let s = WafSettings {
        paranoia_level: 3,
        executing_paranoia_level: 2,
        ..WafSettings::default()
    };
    assert!(matches!(
        WafEngine::new(&s, &crs_dir()),
        Err(LoadError::Settings(_))
    ));
}
