//! The compiled policy: the example document compiles with real certificate files, and
//! documents whose files are wrong are refused with the reason.

use portcullis_crds::edge::EdgeConfig;
use portcullis_proxy::{
    model::{CompileError, Policy},
    verdict::LayerId,
};

use std::path::{Path, PathBuf};

use crate::{
    access::country_database,
    util::{pki, scratch},
};

/// The mounted files of the example besides the certificate: the country database, the
/// SMTP credentials and the session keys, under the scratch directory.
fn mounted(name: &str) -> PathBuf {
    let dir = scratch().join("model-mounts");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    let content: Vec<u8> = match name {
        "username" => b"mailer\n".to_vec(),
        "password" => b"secret\n".to_vec(),
        _ => name.bytes().cycle().take(64).collect(),
    };
    // Tests run in parallel: write beside, then rename, so a reader never sees half a file.
    let partial = dir.join(format!("{name}.{:?}", std::thread::current().id()));
    std::fs::write(&partial, content).unwrap();
    std::fs::rename(&partial, &path).unwrap();
    path
}

fn example(cert: &Path, key: &Path) -> EdgeConfig {
    let mut text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/edge/edge.yaml"
    ))
    .unwrap()
    .replace("/etc/portcullis/tls/tls.crt", cert.to_str().unwrap())
    .replace("/etc/portcullis/tls/tls.key", key.to_str().unwrap())
    .replace(
        "/etc/portcullis/crs",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata/crs"),
    )
    .replace(
        "/etc/portcullis/geoip/country.mmdb",
        country_database().to_str().unwrap(),
    );
    for name in ["username", "password"] {
        text = text.replace(
            &format!("/etc/portcullis/smtp/{name}"),
            mounted(name).to_str().unwrap(),
        );
    }
    for name in ["current", "previous"] {
        text = text.replace(
            &format!("/etc/portcullis/session/{name}"),
            mounted(name).to_str().unwrap(),
        );
    }
    EdgeConfig::from_yaml(&text).unwrap()
}

#[test]
fn the_example_document_compiles_into_the_policy_it_describes() {
    let pki = pki();
    let policy = Policy::try_from(example(&pki.edge_cert, &pki.edge_key)).unwrap();
    assert_eq!(policy.source, "media/jellyfin@1");
    assert_eq!(policy.host, "media.example.org");
    assert_eq!(policy.host_header, "media.example.org");
    assert_eq!(policy.hsts, "max-age=31536000");
    assert_eq!(policy.listen.https.port(), 8443);
    assert!(policy.trusted_proxies.contains("10.1.2.3".parse().unwrap()));
    assert!(
        !policy
            .trusted_proxies
            .contains("192.0.2.1".parse().unwrap())
    );
    assert_eq!(
        policy
            .layers
            .iter()
            .map(|layer| layer.id())
            .collect::<Vec<_>>(),
        [LayerId::Hygiene]
    );
    assert_eq!(policy.connections.max_total, 10_000);
    assert_eq!(policy.connections.max_per_ip, 128);
    assert_eq!(policy.timeouts.header_read.as_secs(), 10);
    assert_eq!(policy.timeouts.body_read.as_secs(), 30);
    assert_eq!(policy.timeouts.shutdown_grace.as_secs(), 25);
    assert_eq!(policy.upstream.address, "jellyfin-app.media.svc:8096");
    assert_eq!(policy.upstream.connect_timeout.as_secs(), 5);
    assert_eq!(policy.upstream.read_timeout.as_secs(), 300);
    assert_eq!(policy.upstream.idle_timeout.as_secs(), 60);
    assert_eq!(policy.upstream.pool_size, 128);
    assert!(policy.upstream.tls.is_none());
    assert!(!policy.geo.filter.is_empty());
    assert!(policy.geo.db.is_some());
    let access = policy.access.as_ref().unwrap();
    assert!(access.allows("alice@example.org"));
    assert!(!access.allows("mallory@example.org"));
    assert_eq!(access.otp().unwrap().ttl().as_secs(), 600);
    assert_eq!(access.app_token_ttl().unwrap().as_secs(), 60);
    assert!(policy.waf.as_ref().unwrap().rule_count() > 100);
    let crs_files = policy
        .files
        .iter()
        .filter(|f| f.to_string_lossy().contains("testdata/crs"))
        .count();
    assert!(crs_files > 20, "the CRS rule files are watched");
    let other_files: Vec<_> = policy
        .files
        .iter()
        .filter(|f| !f.to_string_lossy().contains("testdata/crs"))
        .cloned()
        .collect();
    assert_eq!(
        other_files,
        [
            pki.edge_cert.clone(),
            pki.edge_key.clone(),
            country_database(),
            mounted("current"),
            mounted("previous"),
            mounted("username"),
            mounted("password"),
        ]
    );
}

#[test]
fn a_country_database_that_is_not_one_is_refused() {
    let pki = pki();
    let mut doc = example(&pki.edge_cert, &pki.edge_key);
    doc.access.as_mut().unwrap().geoip_file = Some(pki.edge_cert.clone());
    let error = Policy::try_from(doc).unwrap_err();
    assert!(matches!(error, CompileError::GeoDb(_)), "{error}");
}

#[test]
fn a_short_session_key_is_refused_naming_the_file() {
    let pki = pki();
    let mut doc = example(&pki.edge_cert, &pki.edge_key);
    let short = scratch().join("short-session-key");
    std::fs::write(&short, b"too short").unwrap();
    doc.access.as_mut().unwrap().session.key_files = vec![short];
    let error = Policy::try_from(doc).unwrap_err();
    assert!(matches!(error, CompileError::Access(_)), "{error}");
    assert!(error.to_string().contains("short-session-key"), "{error}");
}

#[test]
fn a_missing_certificate_is_refused_naming_the_file() {
    let pki = pki();
    let missing = Path::new("/nonexistent/tls.crt");
    let error = Policy::try_from(example(missing, &pki.edge_key)).unwrap_err();
    assert!(matches!(error, CompileError::Tls(_)), "{error}");
    assert!(
        error.to_string().contains("/nonexistent/tls.crt"),
        "{error}"
    );
}

#[test]
fn a_key_that_does_not_belong_to_the_certificate_is_refused() {
    let pki = pki();
    let error = Policy::try_from(example(&pki.edge_cert, &pki.renewed_key)).unwrap_err();
    assert!(matches!(error, CompileError::Tls(_)), "{error}");
}

#[test]
fn an_unreadable_upstream_ca_bundle_is_refused() {
    let pki = pki();
    let mut doc = example(&pki.edge_cert, &pki.edge_key);
    doc.upstream.tls = Some(portcullis_crds::edge::UpstreamTls {
        ca_file: pki.edge_key.clone(),
        server_name: "origin.test".into(),
    });
    let error = Policy::try_from(doc).unwrap_err();
    assert!(matches!(error, CompileError::UpstreamCa(_)), "{error}");
}
