//! The public API on small requests: phases, block and detect modes, exclusions, custom
//! rules and the verdict.

use portcullis_waf::{Decision, Exclusion, Mode, RequestFacts, WafEngine, WafSettings};

use crate::util::{custom_engine, decide, engine, get, logged_after_headers};

const ATTACK: &str =
    "/search?q=1%27%20OR%20%271%27%3D%271%27%20UNION%20SELECT%20password%20FROM%20users--";

#[test]
fn benign_request_is_allowed_with_a_zero_score() {
    let e = engine(&WafSettings::default());
    let mut tx = e.transaction(get("/Items?SortBy=SortName&Limit=100"));
    assert_eq!(tx.process_request_headers().decision, Decision::Allow);
    let v = tx.process_request_body(b"");
    assert_eq!(v.decision, Decision::Allow);
    assert_eq!(v.inbound_score, 0);
    assert!(v.matched.is_empty(), "{:?}", v.rule_ids());
    // The settings reach the CRS as its setup variables.
    assert_eq!(tx.tx_var("blocking_paranoia_level").as_deref(), Some("1"));
    assert_eq!(
        tx.tx_var("inbound_anomaly_score_threshold").as_deref(),
        Some("5")
    );
}

#[test]
fn responses_are_inspected_only_when_enabled() {
    let leak = b"<html><body>You have an error in your SQL syntax; check the manual that \
                 corresponds to your MySQL server version for the right syntax</body></html>";
    let run = |inspect: bool| {
        let e = engine(&WafSettings {
            inspect_responses: inspect,
            ..WafSettings::default()
        });
        let mut tx = e.transaction(get("/Items"));
        tx.process_request_headers();
        tx.process_request_body(b"");
        tx.process_response_headers(
            200,
            "HTTP/1.1",
            &[("Content-Type".into(), b"text/html".to_vec())],
        );
        tx.process_response_body(leak)
    };
    let v = run(true);
    assert!(v.rule_ids().contains(&951230), "{:?}", v.rule_ids());
    assert!(v.outbound_score >= 4, "{}", v.outbound_score);
    assert!(v.is_blocked());
    let v = run(false);
    assert!(v.matched.is_empty(), "{:?}", v.rule_ids());
    assert!(!v.is_blocked());
}

#[test]
fn sql_injection_is_blocked_by_the_anomaly_score_in_block_mode() {
    let e = engine(&WafSettings::default());
    let mut tx = e.transaction(get(ATTACK));
    tx.process_request_headers();
    let v = tx.process_request_body(b"");
    assert_eq!(
        v.decision,
        Decision::Block {
            status: 403,
            rule_id: 949110
        }
    );
    assert!(v.inbound_score >= 5, "{}", v.inbound_score);
    let ids = v.rule_ids();
    assert!(ids.contains(&942100), "{ids:?}");
    let m = v.matched.iter().find(|m| m.id == 942100).unwrap();
    assert!(m.msg.contains("SQL Injection"), "{}", m.msg);
    assert!(m.tags.iter().any(|t| t == "attack-sqli"));
}

#[test]
fn detect_mode_reports_what_it_would_block() {
    let e = engine(&WafSettings {
        mode: Mode::Detect,
        ..WafSettings::default()
    });
    let mut tx = e.transaction(get(ATTACK));
    tx.process_request_headers();
    let v = tx.process_request_body(b"");
    assert_eq!(
        v.decision,
        Decision::Detected {
            status: 403,
            rule_id: 949110
        }
    );
    assert!(!v.is_blocked());
}

#[test]
fn json_bodies_are_parsed_into_args() {
    let e = engine(&WafSettings::default());
    let facts = RequestFacts::new("POST", "/Items/Filters", "HTTP/1.1")
        .header("Host", "media.example.org")
        .header("Content-Type", "application/json");
    let mut tx = e.transaction(facts);
    tx.process_request_headers();
    let v = tx.process_request_body(br#"{"Name":"<script>alert(document.cookie)</script>"}"#);
    assert!(v.is_blocked(), "{:?}", v.rule_ids());
    let m = v.matched.iter().find(|m| m.id == 941100).unwrap();
    assert_eq!(m.variable, "ARGS:json.Name");
}

#[test]
fn exclusions_remove_rules_or_targets_on_their_paths() {
    let by_target = Exclusion {
        tags: vec!["attack-sqli".into()],
        paths: vec!["/search".into()],
        targets: vec!["ARGS:q".into()],
        ..Exclusion::default()
    };
    let e = engine(&WafSettings {
        exclusions: vec![by_target],
        ..WafSettings::default()
    });
    let mut tx = e.transaction(get(ATTACK));
    tx.process_request_headers();
    let v = tx.process_request_body(b"");
    assert!(
        !v.rule_ids().iter().any(|id| (942000..943000).contains(id)),
        "{:?}",
        v.rule_ids()
    );
    // Elsewhere the same argument is still inspected.
    let mut tx = e.transaction(get(&ATTACK.replace("/search", "/other")));
    tx.process_request_headers();
    assert!(tx.process_request_body(b"").is_blocked());

    let whole_rules = Exclusion {
        rule_ids: vec![(942000, 942999), (949110, 949110)],
        ..Exclusion::default()
    };
    let e = engine(&WafSettings {
        exclusions: vec![whole_rules],
        ..WafSettings::default()
    });
    let mut tx = e.transaction(get(ATTACK));
    tx.process_request_headers();
    let v = tx.process_request_body(b"");
    assert!(!v.is_blocked());
    assert!(!v.rule_ids().contains(&942100));
}

#[test]
fn a_custom_rule_that_raises_the_paranoia_level_per_request_is_obeyed() {
    // The CRS's paranoia-level gates read `TX:detection_paranoia_level`; a custom rule
    // (loaded before the CRS files) that sets it from the request keeps them per request.
    let e = engine(&WafSettings {
        custom_rules: Some(
            "SecRule REQUEST_HEADERS:X-Paranoia \"@streq 4\" \
             \"id:1000,phase:1,pass,nolog,setvar:tx.detection_paranoia_level=4\""
                .into(),
        ),
        ..WafSettings::default()
    });
    let ids = |paranoid: bool| {
        // No Accept header: rule 920300, paranoia level 3.
        let mut facts = RequestFacts::new("GET", "/Items", "HTTP/1.1")
            .header("Host", "media.example.org")
            .header(
                "User-Agent",
                "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Firefox/128.0",
            );
        if paranoid {
            facts = facts.header("X-Paranoia", "4");
        }
        let mut tx = e.transaction(facts);
        tx.process_request_headers();
        tx.process_request_body(b"").rule_ids()
    };
    assert!(!ids(false).contains(&920300), "{:?}", ids(false));
    assert!(ids(true).contains(&920300), "{:?}", ids(true));
}

#[test]
fn a_tx_regex_target_reads_literal_and_built_keys_in_key_order() {
    let settings = WafSettings {
        custom_rules: Some(
            "SecAction \"id:1,phase:1,pass,nolog,setvar:tx.pick_c=3,setvar:tx.other=9\"\n\
             SecRule ARGS:n \"@rx ^(.*)$\" \"id:2,phase:1,pass,nolog,capture,\
                setvar:tx.pick_%{tx.1}=1\"\n\
             SecRule TX:/^pick_/ \"@rx .\" \"id:3,phase:1,pass,log,msg:'first'\"\n\
             SecRule &TX:/^pick_/ \"@eq 2\" \"id:4,phase:1,deny,status:418\"\n"
                .into(),
        ),
        ..WafSettings::default()
    };
    let e = WafEngine::custom_only(&settings).unwrap();
    let run = |uri: &str| {
        let mut tx = e.transaction(get(uri));
        tx.process_request_headers()
    };
    // `pick_b`, built from the argument, is read before `pick_c`.
    let v = run("/?n=B");
    assert_eq!(
        v.decision,
        Decision::Block {
            status: 418,
            rule_id: 4
        }
    );
    assert_eq!(v.matched[0].variable, "TX:pick_b");
    let v = run("/");
    assert_eq!(v.decision, Decision::Allow);
    assert_eq!(v.matched[0].variable, "TX:pick_c");
}

#[test]
fn unique_ids_are_sixteen_hex_digits_counting_up() {
    let settings = WafSettings {
        custom_rules: Some(
            "SecRule UNIQUE_ID \"!@rx ^[0-9a-f]{16}$\" \"id:1,phase:1,deny,status:500\"\n\
             SecRule UNIQUE_ID \"@streq 000000000000000a\" \"id:2,phase:1,deny,status:403\"\n"
                .into(),
        ),
        ..WafSettings::default()
    };
    let e = WafEngine::custom_only(&settings).unwrap();
    // Every id has the form (rule 1 passes); one of eleven in a row is `...0a` (rule 2).
    let decisions: Vec<Decision> = (0..11)
        .map(|_| e.transaction(get("/")).process_request_headers().decision)
        .collect();
    let blocked: Vec<&Decision> = decisions
        .iter()
        .filter(|d| **d != Decision::Allow)
        .collect();
    assert_eq!(
        blocked,
        [&Decision::Block {
            status: 403,
            rule_id: 2
        }],
        "{decisions:?}"
    );
}

#[test]
fn a_rule_excluded_everywhere_does_not_shift_where_skip_after_lands() {
    let settings = WafSettings {
        custom_rules: Some(
            "SecRule ARGS:a \"@streq x\" \"id:1001,phase:1,pass,nolog\"\n\
             SecRule ARGS:a \"@streq y\" \"id:1002,phase:1,pass,nolog,skipAfter:END\"\n\
             SecRule ARGS:a \"@streq y\" \"id:1003,phase:1,deny,status:418\"\n\
             SecMarker END\n\
             SecRule ARGS:a \"@streq y\" \"id:1004,phase:1,deny,status:451\"\n"
                .into(),
        ),
        exclusions: vec![Exclusion {
            rule_ids: vec![(1001, 1001)],
            ..Exclusion::default()
        }],
        ..WafSettings::default()
    };
    let e = WafEngine::custom_only(&settings).unwrap();
    let mut tx = e.transaction(get("/?a=y"));
    // 1002 skips 1003 and lands on 1004, the rule after the marker, as it would had 1001
    // never been loaded.
    assert_eq!(
        tx.process_request_headers().decision,
        Decision::Block {
            status: 451,
            rule_id: 1004
        }
    );
}

#[test]
fn custom_rules_run_with_the_crs() {
    let e = engine(&WafSettings {
        custom_rules: Some(
            "SecRule REQUEST_HEADERS:X-Forbidden \"@streq yes\" \
             \"id:1000,phase:1,deny,status:451,msg:'forbidden header %{MATCHED_VAR}',log\""
                .into(),
        ),
        ..WafSettings::default()
    });
    let mut tx = e.transaction(get("/").header("X-Forbidden", "yes"));
    let v = tx.process_request_headers();
    assert_eq!(
        v.decision,
        Decision::Block {
            status: 451,
            rule_id: 1000
        }
    );
    assert_eq!(v.matched[0].msg, "forbidden header yes");
}

#[test]
fn paranoia_level_selects_the_rules_that_run() {
    // 920300 (missing Accept header) only runs from paranoia level 3.
    let facts = || {
        RequestFacts::new("GET", "/", "HTTP/1.1")
            .header("Host", "media.example.org")
            .header("User-Agent", "curl/8")
    };
    let pl1 = engine(&WafSettings::default());
    let mut tx = pl1.transaction(facts());
    tx.process_request_headers();
    assert!(!tx.process_request_body(b"").rule_ids().contains(&920300));
    let pl3 = engine(&WafSettings {
        paranoia_level: 3,
        executing_paranoia_level: 3,
        ..WafSettings::default()
    });
    let mut tx = pl3.transaction(facts());
    tx.process_request_headers();
    assert!(tx.process_request_body(b"").rule_ids().contains(&920300));
}

#[test]
fn the_engine_is_shared_across_threads_and_transactions_move_between_them() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<portcullis_waf::WafEngine>();
    send::<portcullis_waf::Transaction>();
    let e = engine(&WafSettings::default());
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let e = e.clone();
            std::thread::spawn(move || {
                let mut tx = e.transaction(get(ATTACK));
                tx.process_request_headers();
                tx.process_request_body(b"").is_blocked()
            })
        })
        .collect();
    for h in handles {
        assert!(h.join().unwrap());
    }
}

#[test]
fn a_value_known_to_find_nothing_does_not_hide_a_new_one_beside_it() {
    // Two links read ARGS: one with a literal prefilter, one without (libinjection). Once
    // `q=hello` is known to both, a request that repeats it is skipped by them, but a new
    // value in ARGS beside it (or in its place) is inspected again.
    let e = custom_engine(
        "SecRule ARGS \"@rx attack\" \"id:1,phase:2,deny,status:403\"\n\
         SecRule ARGS \"@detectSQLi\" \"id:2,phase:2,deny,status:406\"",
    );
    let decide = |uri: &str| decide(&e, get(uri));
    for _ in 0..3 {
        assert_eq!(decide("/?q=hello"), Decision::Allow);
    }
    let blocked = |status, rule_id| Decision::Block { status, rule_id };
    assert_eq!(decide("/?q=hello&r=an+attack"), blocked(403, 1));
    assert_eq!(decide("/?q=hello&r=1'+OR+1=1--"), blocked(406, 2));
    assert_eq!(decide("/?q=attack"), blocked(403, 1));
    assert_eq!(decide("/?q=hello"), Decision::Allow);
}

#[test]
fn a_header_known_to_find_nothing_does_not_hide_a_new_value_under_its_name() {
    // Links that read one header learn only that header's values: once its value is known
    // to them they are decided without looking, whatever the other headers hold, and a new
    // value under the name is inspected again.
    let e = custom_engine(
        "SecRule REQUEST_HEADERS:User-Agent \"@rx attack\" \"id:1,phase:1,deny,status:403\"\n\
         SecRule REQUEST_HEADERS:User-Agent \"@detectSQLi\" \"id:2,phase:1,deny,status:406\"",
    );
    let decide = |agent: &str, note: &str| {
        let facts = RequestFacts::new("GET", "/", "HTTP/1.1")
            .header("Host", "media.example.org")
            .header("User-Agent", agent)
            .header("X-Note", note);
        decide(&e, facts)
    };
    for _ in 0..3 {
        assert_eq!(decide("curl/8", "an attack, 1' OR 1=1--"), Decision::Allow);
    }
    let blocked = |status, rule_id| Decision::Block { status, rule_id };
    assert_eq!(decide("an attack", "curl/8"), blocked(403, 1));
    assert_eq!(decide("1' OR 1=1--", "curl/8"), blocked(406, 2));
    assert_eq!(decide("curl/8", "an attack"), Decision::Allow);
}

#[test]
fn a_chain_passed_over_by_a_later_link_matches_once_that_link_sees_a_new_value() {
    // `GET` matches the first link on every request; the chained header link, known to
    // find nothing in the header's usual value (or absent), decides the rule without it.
    let e = custom_engine(
        "SecRule REQUEST_METHOD \"@rx ^GET$\" \"id:1,phase:1,deny,status:403,chain\"\n\
         SecRule REQUEST_HEADERS:X-Note \"@rx attack\"",
    );
    let decide = |method: &str, note: Option<&str>| {
        let mut facts =
            RequestFacts::new(method, "/", "HTTP/1.1").header("Host", "media.example.org");
        if let Some(note) = note {
            facts = facts.header("X-Note", note);
        }
        decide(&e, facts)
    };
    for _ in 0..3 {
        assert_eq!(decide("GET", Some("calm")), Decision::Allow);
        assert_eq!(decide("GET", None), Decision::Allow);
    }
    let blocked = Decision::Block {
        status: 403,
        rule_id: 1,
    };
    assert_eq!(decide("GET", Some("an attack")), blocked);
    assert_eq!(decide("POST", Some("an attack")), Decision::Allow);
    assert_eq!(decide("GET", Some("calm")), Decision::Allow);
    assert_eq!(decide("GET", Some("an attack")), blocked);
}

#[test]
fn a_target_a_ctl_removes_does_not_hide_new_values_of_the_others() {
    // CRS's 941010 takes REQUEST_FILENAME from the XSS rules on nearly every request, so
    // the path never learns their bits: they are decided from the targets they still read.
    let e = custom_engine(
        "SecRule REQUEST_METHOD \"@rx .\" \"id:1,phase:1,pass,nolog,ctl:ruleRemoveTargetById=2;REQUEST_FILENAME\"\n\
         SecRule REQUEST_FILENAME|ARGS \"@rx attack\" \"id:2,phase:2,deny,status:403\"",
    );
    let decide = |uri: &str| decide(&e, get(uri));
    for _ in 0..3 {
        assert_eq!(decide("/items?q=hello"), Decision::Allow);
    }
    assert_eq!(decide("/attack?q=hello"), Decision::Allow);
    let blocked = Decision::Block {
        status: 403,
        rule_id: 2,
    };
    assert_eq!(decide("/items?q=an+attack"), blocked);
    assert_eq!(decide("/attack?q=hello&r=attack"), blocked);
    assert_eq!(decide("/items?q=hello"), Decision::Allow);
}

#[test]
fn a_match_reads_its_own_name_and_value_after_longer_ones_before_it() {
    // Finished matches hand their buffers to the next ones (within a transaction and to
    // the next on the thread): nothing of a longer earlier match may show through.
    let e = custom_engine(
        "SecRule ARGS \"@rx .\" \"id:1,phase:1,pass,nolog\"\n\
         SecRule ARGS:b \"@rx .\" \"id:2,phase:1,pass,log,msg:'%{MATCHED_VAR_NAME}=%{MATCHED_VAR}'\"",
    );
    let logged = |uri: &str| {
        logged_after_headers(&e, uri)
            .into_iter()
            .map(|m| (m.msg, m.variable))
            .collect::<Vec<_>>()
    };
    let b = vec![("ARGS:b=1".to_string(), "ARGS:b".to_string())];
    for _ in 0..3 {
        assert_eq!(
            logged("/?a_much_longer_argument_name=a+longer+value&b=1"),
            b
        );
        assert_eq!(logged("/?b=1"), b);
        assert_eq!(logged("/?b=12")[0].0, "ARGS:b=12");
    }
}

#[test]
fn a_logged_rule_writes_its_last_match_whether_or_not_its_links_read_each() {
    // Rule 1 reads no matched variable in its links: only its last match is written for
    // its message; rule 2 reads MATCHED_VAR in its chain, so each match sets it (the
    // chain's last match is MATCHED_VAR itself); the action (rule 3) matched nothing;
    // rule 4 does not match.
    let e = custom_engine(
        "SecRule ARGS \"@rx ^a\" \"id:1,phase:1,pass,log,msg:'%{MATCHED_VAR_NAME}',logdata:'%{MATCHED_VAR}'\"\n\
         SecRule ARGS \"@rx ^a\" \"id:2,phase:1,pass,log,msg:'%{MATCHED_VAR_NAME}',logdata:'%{MATCHED_VAR}',chain\"\n\
         SecRule MATCHED_VAR \"@rx \\d\" \"t:none\"\n\
         SecAction \"id:3,phase:1,pass,log,msg:'[%{MATCHED_VAR_NAME}]',logdata:'[%{MATCHED_VAR}]'\"\n\
         SecRule ARGS:none \"@rx .\" \"id:4,phase:1,pass,log\"",
    );
    let logged = |uri: &str| {
        logged_after_headers(&e, uri)
            .into_iter()
            .map(|m| (m.id, m.msg, m.data))
            .collect::<Vec<_>>()
    };
    let expected = vec![
        (1, "ARGS:z".to_string(), "a2".to_string()),
        (2, "MATCHED_VAR".to_string(), "a2".to_string()),
        (3, "[]".to_string(), "[]".to_string()),
    ];
    for _ in 0..3 {
        assert_eq!(logged("/?x=1&y=a1&z=a2&w=b"), expected);
    }
}

#[test]
fn a_rule_replayed_from_the_same_values_leaves_what_its_evaluation_left() {
    // Rule 1 is CRS's restricted-header idiom: a capture and a key built from it per header
    // name, then a chain over those keys that adds to a score. On repeated requests it is
    // replayed; the rules after it read the keys it built, the score and the capture it
    // left, and see them as if it had been evaluated.
    let e = custom_engine(
        "SecRule REQUEST_HEADERS_NAMES \"@rx ^.*$\" \"id:1,phase:1,pass,nolog,capture,t:none,t:lowercase,setvar:'tx.h_%{tx.0}=/%{tx.0}/',chain\"\n\
         SecRule TX:/^h_/ \"@within /x-bad/\" \"setvar:tx.score=+5\"\n\
         SecRule TX:/^h_/ \"@streq /x-note/\" \"id:2,phase:1,deny,status:403\"\n\
         SecRule TX:score \"@ge 5\" \"id:3,phase:1,deny,status:406\"\n\
         SecRule TX:0 \"@streq x-last\" \"id:4,phase:1,deny,status:407\"",
    );
    let decide = |extra: Option<&str>| {
        let mut facts = get("/").header("Host", "media.example.org");
        if let Some(name) = extra {
            facts = facts.header(name, "1");
        }
        decide(&e, facts)
    };
    let blocked = |status, rule_id| Decision::Block { status, rule_id };
    for _ in 0..3 {
        assert_eq!(decide(Some("X-Note")), blocked(403, 2));
        assert_eq!(decide(Some("X-Bad")), blocked(406, 3));
        assert_eq!(decide(Some("X-Last")), blocked(407, 4));
        assert_eq!(decide(Some("X-Other")), Decision::Allow);
        assert_eq!(decide(None), Decision::Allow);
    }
}

#[test]
fn a_replayed_rule_runs_its_ctl_again_and_reads_the_scores_it_adds_to() {
    // Rule 1 removes rule 2 whenever X-Skip is yes; rule 3 adds a weight another rule took
    // from a header to a score: both are replayed on repeated values, and read anew when
    // the values change.
    let e = custom_engine(
        "SecRule REQUEST_HEADERS:X-Skip \"@streq yes\" \"id:1,phase:1,pass,nolog,ctl:ruleRemoveById=2\"\n\
         SecRule REQUEST_HEADERS:X-Attack \"@rx .\" \"id:2,phase:1,deny,status:403\"\n\
         SecRule REQUEST_HEADERS:X-Weight \"@rx ^(\\d)$\" \"id:4,phase:1,pass,nolog,capture,setvar:tx.weight=%{tx.1}\"\n\
         SecRule REQUEST_METHOD \"@rx .\" \"id:5,phase:1,pass,nolog,setvar:tx.score=+%{tx.weight}\"\n\
         SecRule TX:score \"@ge 5\" \"id:6,phase:1,deny,status:406\"",
    );
    let decide = |headers: &[(&str, &str)]| {
        let mut facts = get("/").header("Host", "media.example.org");
        for (k, v) in headers {
            facts = facts.header(k, *v);
        }
        decide(&e, facts)
    };
    let blocked = |status, rule_id| Decision::Block { status, rule_id };
    for _ in 0..3 {
        assert_eq!(
            decide(&[("X-Skip", "yes"), ("X-Attack", "1")]),
            Decision::Allow
        );
        assert_eq!(
            decide(&[("X-Skip", "no"), ("X-Attack", "1")]),
            blocked(403, 2)
        );
        assert_eq!(decide(&[("X-Weight", "3")]), Decision::Allow);
        assert_eq!(decide(&[("X-Weight", "7")]), blocked(406, 6));
        assert_eq!(decide(&[]), Decision::Allow);
    }
}

#[test]
fn jumps_land_on_the_rule_after_their_marker_past_rules_decided_at_load() {
    // Markers and rules the configuration decides never to match have no place in the
    // walk: a jump over or onto them lands where it would have.
    let e = custom_engine(
        "SecAction \"id:1,phase:1,pass,nolog,setvar:tx.level=1,skipAfter:SETUP\"\n\
         SecRule ARGS \"@rx .\" \"id:2,phase:1,deny,status:400\"\n\
         SecMarker SETUP\n\
         SecRule TX:level \"@lt 1\" \"id:3,phase:1,deny,status:401\"\n\
         SecRule ARGS:a \"@streq jump\" \"id:4,phase:1,pass,nolog,skipAfter:END\"\n\
         SecRule TX:level \"@gt 1\" \"id:5,phase:1,deny,status:402\"\n\
         SecRule ARGS:a \"@rx .\" \"id:6,phase:1,deny,status:403\"\n\
         SecMarker END\n\
         SecRule TX:level \"@eq 5\" \"id:7,phase:1,deny,status:404\"\n\
         SecRule ARGS:b \"@rx .\" \"id:8,phase:1,deny,status:418\"",
    );
    let block = |status, rule_id| Decision::Block { status, rule_id };
    assert_eq!(decide(&e, get("/")), Decision::Allow);
    assert_eq!(decide(&e, get("/?a=stay")), block(403, 6));
    assert_eq!(decide(&e, get("/?a=jump")), Decision::Allow);
    assert_eq!(decide(&e, get("/?a=jump&b=1")), block(418, 8));
}

#[test]
fn the_raw_uri_is_inspected_as_sent_when_it_differs_from_the_uri() {
    // REQUEST_URI_RAW shares what the engine learns of REQUEST_URI only when they hold
    // the same bytes: an absolute-form target keeps its host in the raw form alone.
    let e = custom_engine(
        "SecRule REQUEST_URI \"@contains evil\" \"id:1,phase:1,pass,nolog\"\n\
         SecRule REQUEST_URI_RAW \"@contains evil\" \"id:2,phase:1,deny,status:403\"",
    );
    let blocked = Decision::Block {
        status: 403,
        rule_id: 2,
    };
    for _ in 0..2 {
        assert_eq!(decide(&e, get("/x")), Decision::Allow);
        assert_eq!(decide(&e, get("/evil")), blocked);
        assert_eq!(decide(&e, get("http://evil.example/x")), blocked);
    }
}
