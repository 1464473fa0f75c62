//! The edge document: the example loads, round-trips, hashes stably, and bad documents are
//! refused with the path of what is wrong.

use portcullis_crds::edge::{EdgeConfig, EdgeConfigError};

use crate::util::root;

fn example_text() -> String {
    std::fs::read_to_string(root().join("examples/edge/edge.yaml")).unwrap()
}

fn example() -> EdgeConfig {
    EdgeConfig::from_yaml(&example_text()).unwrap_or_else(|e| panic!("{e}"))
}

fn invalid_fields(text: &str) -> Vec<String> {
    match EdgeConfig::from_yaml(text) {
        Err(EdgeConfigError::Invalid(errors)) => errors.0.into_iter().map(|e| e.field).collect(),
        other => panic!("expected validation errors, got {other:?}"),
    }
}

#[test]
fn the_example_round_trips_through_yaml() {
    let config = example();
    assert_eq!(EdgeConfig::from_yaml(&config.to_yaml()).unwrap(), config);
}

#[test]
fn the_content_hash_is_stable_and_follows_the_content() {
    let config = example();
    let hash = config.content_hash();
    assert_eq!(hash.len(), 64);
    assert_eq!(
        EdgeConfig::from_yaml(&config.to_yaml())
            .unwrap()
            .content_hash(),
        hash
    );
    let mut changed = config.clone();
    changed.access.as_mut().unwrap().emails.pop();
    assert_ne!(changed.content_hash(), hash);
}

#[test]
fn only_start_only_settings_change_the_restart_hash() {
    let config = example();
    let mut live = config.clone();
    live.access.as_mut().unwrap().emails.pop();
    live.waf.as_mut().unwrap().paranoia_level = 2;
    live.waf.as_mut().unwrap().executing_paranoia_level = 2;
    assert_eq!(live.restart_hash(), config.restart_hash());
    let mut moved = config.clone();
    moved.listen.https.set_port(9443);
    assert_ne!(moved.restart_hash(), config.restart_hash());
    let mut pooled = config.clone();
    pooled.upstream.pool_size += 1;
    assert_ne!(
        pooled.restart_hash(),
        config.restart_hash(),
        "the pool size applies only at start"
    );
    let mut grace = config.clone();
    grace.timeouts.shutdown_grace = portcullis_crds::common::Duration::from_secs(7);
    assert_ne!(
        grace.restart_hash(),
        config.restart_hash(),
        "the grace applies only at start"
    );
}

#[test]
fn an_unknown_key_is_a_parse_error_naming_it() {
    let text = example_text()
        .replace("  hstsMaxAge", "  hsts")
        .replace("tls:\n  certFile", "tls:\n  certfile");
    match EdgeConfig::from_yaml(&text) {
        Err(EdgeConfigError::Parse(error)) => {
            assert!(error.to_string().contains("certfile"), "{error}")
        }
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn a_wrong_version_is_refused() {
    let fields =
        invalid_fields(&example_text().replace("edge.portcullis.dev/v1", "edge.portcullis.dev/v2"));
    assert_eq!(fields, ["apiVersion"]);
}

#[test]
fn every_problem_is_reported_at_once_with_its_path() {
    let text = example_text()
        .replace("admin: 0.0.0.0:9090", "admin: 0.0.0.0:8443")
        .replace("keyFile: /etc/portcullis/tls/tls.key", "keyFile: tls.key")
        .replace("  geoipFile: /etc/portcullis/geoip/country.mmdb\n", "")
        .replace("executingParanoiaLevel: 1", "executingParanoiaLevel: 0")
        .replace(
            "address: jellyfin-app.media.svc:8096",
            "address: jellyfin-app",
        )
        .replace("    banDuration: 1h\n", "");
    let fields = invalid_fields(&text);
    for expected in [
        "listen.admin",
        "tls.keyFile",
        "access.geoipFile",
        "waf.executingParanoiaLevel",
        "upstream.address",
        "rateLimits[0].banDuration",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "{expected} not in {fields:?}"
        );
    }
}

#[test]
fn a_broken_antivirus_section_is_refused_field_by_field() {
    let text = example_text()
        .replace("clamd: 127.0.0.1:3310", "clamd: unix:clamd.sock")
        .replace("- /Branding/Splashscreen$", "- /Branding/(Splashscreen")
        .replace("methods: [POST, PUT]", "methods: []\n  contentTypes: [srt]")
        .replace("maxScanSize: 25Mi", "maxScanSize: 1Gi")
        .replace("timeout: 30s", "timeout: 0s");
    let fields = invalid_fields(&text);
    for expected in [
        "antivirus.clamd",
        "antivirus.paths[3]",
        "antivirus.methods",
        "antivirus.contentTypes[0]",
        "antivirus.maxScanSize",
        "antivirus.timeout",
    ] {
        assert!(
            fields.iter().any(|f| f == expected),
            "{expected} not in {fields:?}"
        );
    }
}

#[test]
fn a_negative_duration_does_not_parse() {
    let text = example_text().replace("ttl: 10m", "ttl: -10m");
    assert!(matches!(
        EdgeConfig::from_yaml(&text),
        Err(EdgeConfigError::Parse(_))
    ));
}

#[test]
fn cloudflare_access_needs_an_audience_and_keys_over_https() {
    let with = |section: &str| {
        example_text().replace(
            "  appTokenCacheTtl: 1m\n",
            &format!("  appTokenCacheTtl: 1m\n  cloudflareAccess:\n{section}"),
        )
    };
    let good = EdgeConfig::from_yaml(&with(
        "    teamDomain: myteam.cloudflareaccess.com\n    audiences: [aud1]\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let cloudflare = good.access.unwrap().cloudflare_access.unwrap();
    assert_eq!(cloudflare.issuer(), "https://myteam.cloudflareaccess.com");
    assert_eq!(
        cloudflare.jwks_url(),
        "https://myteam.cloudflareaccess.com/cdn-cgi/access/certs"
    );
    assert_eq!(cloudflare.jwks_refresh.to_string(), "1h");
    let fields = invalid_fields(&with(
        "    teamDomain: myteam.cloudflareaccess.com\n    audiences: []\n    jwksUrl: http://keys.example.org/certs\n    jwksRefresh: 0s\n",
    ));
    assert_eq!(
        fields,
        [
            "access.cloudflareAccess.audiences",
            "access.cloudflareAccess.jwksUrl",
            "access.cloudflareAccess.jwksRefresh",
        ]
    );
    // Plain HTTP is for a key server on this machine only.
    EdgeConfig::from_yaml(&with(
        "    teamDomain: myteam.cloudflareaccess.com\n    audiences: [aud1]\n    jwksUrl: http://127.0.0.1:8080/certs\n",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
}
