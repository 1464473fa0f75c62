//! Loading: every CRS file parses and compiles; unsupported constructs are reported with
//! their line.

use portcullis_waf::{ErrorKind, LoadError, WafEngine, WafSettings};

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
    assert!(WafEngine::validate_rules(
        "SecRule REQUEST_HEADERS:User-Agent \"@pm sqlmap nikto\" \"id:10,phase:1,deny,status:403\"",
        &crs_dir().join("rules"),
    )
    .is_ok());
    let err =
        WafEngine::validate_rules("SecRule ARGS \"@rx (\" \"id:11\"", &crs_dir()).unwrap_err();
    assert!(err.to_string().contains("custom_rules:1"), "{err}");
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
