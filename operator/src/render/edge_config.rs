//! The edge document (`edge.yaml`) for a MediaServer: its spec and the resources it
//! references, turned into the self-contained contract the proxy loads.
//!
//! Secret material is referred to by the paths where the edge Deployment mounts it
//! ([`mounts`]), never copied into the document.

use std::net::SocketAddr;

use kube::ResourceExt;
use portcullis_crds::{
    MediaServer,
    access_policy::{AccessPolicySpec, GeoIpSource},
    common::DomainName,
    edge::{
        Access, Antivirus, App, ClientIdentity, CloudflareAccess, Countries, EDGE_API_VERSION,
        EDGE_KIND, EdgeBan, EdgeConfig, JWKS_REFRESH, Limits, Listen, Otp, RateLimit, Session,
        Smtp, Source, Timeouts, Tls, Upstream, Waf, WafExclusion,
    },
    media_server::{AntivirusSpec, AppKind},
    rate_limit::{BackendType, RateLimitSpec},
    waf_rule_set::WafRuleSetSpec,
};

use super::{Named, Names, Resolved};

/// Where the edge container finds each file the document refers to.
pub mod mounts {
    /// The directory the edge-config ConfigMap is mounted at (a directory, never subPath,
    /// so the kubelet's updates reach the proxy).
    pub const CONFIG_DIR: &str = "/etc/portcullis/config";
    /// The edge document's file name in the ConfigMap.
    pub const CONFIG_FILE: &str = "edge.yaml";
    /// The TLS Secret's directory.
    pub const TLS_DIR: &str = "/etc/portcullis/tls";
    /// The session-keys Secret's directory.
    pub const SESSION_DIR: &str = "/etc/portcullis/session";
    /// The SMTP credentials Secret's directory.
    pub const SMTP_DIR: &str = "/etc/portcullis/smtp";
    /// The country database's directory.
    pub const GEOIP_DIR: &str = "/etc/portcullis/geoip";
    /// The Core Rule Set's directory.
    pub const CRS_DIR: &str = "/etc/portcullis/crs";
    /// The directory holding each Redis URL Secret, one subdirectory per RateLimit.
    pub const REDIS_DIR: &str = "/etc/portcullis/redis";
    /// The HTTPS port inside the pod.
    pub const HTTPS_PORT: u16 = 8443;
    /// The plain-HTTP port inside the pod.
    pub const HTTP_PORT: u16 = 8080;
    /// The admin port (health, readiness, metrics).
    pub const ADMIN_PORT: u16 = 9090;
    /// The app's HTTP port.
    pub const APP_PORT: u16 = 8096;
    /// clamd's port in the edge pod (its sidecar listens on the loopback interface only).
    pub const CLAMD_PORT: u16 = 3310;
    /// clamd's and freshclam's configuration files (keys of the edge ConfigMap).
    pub const CLAMAV_CONFIG_DIR: &str = "/etc/portcullis/clamav";
    /// The ClamAV signature database.
    pub const CLAMAV_DB_DIR: &str = "/var/lib/clamav";
    /// Keys of the session Secret: the key that signs, then the one before it.
    pub const SESSION_KEYS: [&str; 2] = ["current", "previous"];
}

/// The file name of the country database inside [`mounts::GEOIP_DIR`].
pub const GEOIP_FILE: &str = "country.mmdb";

fn listen_on(port: u16) -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], port))
}

/// Renders the edge document of `server` with everything it references.
pub fn render(server: &MediaServer, resolved: &Resolved) -> EdgeConfig {
    let spec = &server.spec;
    let names = Names::new(&server.name_any());
    let namespace = server.namespace().unwrap_or_default();
    let mut timeouts = Timeouts::default();
    // Leave the kubelet five seconds between the drain and SIGKILL.
    let grace = u64::try_from(spec.edge.termination_grace_period_seconds)
        .unwrap_or(30)
        .saturating_sub(5)
        .max(1);
    timeouts.shutdown_grace = portcullis_crds::common::Duration::from_secs(grace);
    let mut limits = Limits::default();
    if let Some(waf) = &resolved.waf_rule_set {
        limits.max_body = limits.max_body.max(waf.resource.spec.request_body_limit);
    }
    if let Some(antivirus) = &spec.edge.antivirus {
        limits.max_body = limits.max_body.max(antivirus.max_scan_size);
    }
    EdgeConfig {
        api_version: EDGE_API_VERSION.to_owned(),
        kind: EDGE_KIND.to_owned(),
        source: Source {
            namespace: namespace.clone(),
            name: server.name_any(),
            generation: server.metadata.generation.unwrap_or_default(),
        },
        app: App {
            kind: spec.app.kind,
            display_name: match spec.app.kind {
                AppKind::Jellyfin => "Jellyfin".to_owned(),
            },
        },
        host: spec.host.clone(),
        listen: Listen {
            https: listen_on(mounts::HTTPS_PORT),
            http: Some(listen_on(mounts::HTTP_PORT)),
            admin: listen_on(mounts::ADMIN_PORT),
            proxy_protocol: spec.edge.proxy_protocol,
        },
        tls: Tls {
            cert_file: format!("{}/tls.crt", mounts::TLS_DIR).into(),
            key_file: format!("{}/tls.key", mounts::TLS_DIR).into(),
            hsts_max_age: portcullis_crds::common::Duration::from_secs(365 * 24 * 3600),
        },
        client_identity: ClientIdentity {
            trusted_proxies: spec.edge.trusted_proxies.clone(),
            behind_cloudflare: spec.edge.behind_cloudflare,
        },
        limits,
        timeouts,
        upstream: Upstream {
            address: format!("{}.{namespace}.svc:{}", names.app(), mounts::APP_PORT),
            tls: None,
            pool_size: 128,
        },
        access: resolved
            .access_policy
            .as_ref()
            .map(|policy| access(&policy.resource.spec, &resolved.rate_limits)),
        waf: resolved
            .waf_rule_set
            .as_ref()
            .map(|waf| render_waf(&waf.resource.spec)),
        rate_limits: resolved.rate_limits.iter().map(rate_limit).collect(),
        antivirus: spec.edge.antivirus.as_ref().map(antivirus),
    }
}

/// The antivirus section: the scan settings, and the clamd sidecar's loopback address.
fn antivirus(spec: &AntivirusSpec) -> Antivirus {
    Antivirus {
        clamd: format!("127.0.0.1:{}", mounts::CLAMD_PORT),
        paths: spec.paths.clone(),
        methods: spec.methods.clone(),
        content_types: spec.content_types.clone(),
        max_scan_size: spec.max_scan_size,
        on_unscannable: spec.on_unscannable,
        timeout: spec.timeout,
    }
}

/// The access section. The one-time-code state (wrong-code counts, spent codes) is shared
/// through the Redis of the first RateLimit that keeps its counters in Redis: an AccessPolicy
/// names no Redis of its own, a MediaServer's edge replicas need one store they all reach,
/// and that Secret is already mounted in the edge pod. Without one, each replica keeps its
/// own.
fn access(policy: &AccessPolicySpec, rate_limits: &[Named<portcullis_crds::RateLimit>]) -> Access {
    let countries = policy
        .countries
        .as_ref()
        .map_or_else(Countries::default, |c| Countries {
            allow: c.allow.clone(),
            deny: c.deny.clone(),
        });
    Access {
        countries,
        geoip_file: policy.geoip.as_ref().map(|source| match source {
            GeoIpSource {
                path: Some(path), ..
            } => path.into(),
            _ => format!("{}/{GEOIP_FILE}", mounts::GEOIP_DIR).into(),
        }),
        emails: policy.emails.clone(),
        email_domains: policy.email_domains.clone(),
        otp: policy.otp.as_ref().map(|otp| Otp {
            length: otp.length,
            ttl: otp.ttl,
            max_attempts: otp.max_attempts,
            resend_cooldown: otp.resend_cooldown,
            smtp: Smtp {
                host: otp.smtp.host.clone(),
                port: otp.smtp.port,
                tls: otp.smtp.tls,
                username_file: otp
                    .smtp
                    .credentials_secret
                    .as_ref()
                    .map(|_| format!("{}/username", mounts::SMTP_DIR).into()),
                password_file: otp
                    .smtp
                    .credentials_secret
                    .as_ref()
                    .map(|_| format!("{}/password", mounts::SMTP_DIR).into()),
                from: otp.smtp.from.clone(),
            },
            redis_url_file: rate_limits.iter().find_map(redis_url_file),
        }),
        session: Session {
            ttl: policy.session.ttl,
            idle_ttl: policy.session.idle_ttl,
            cookie_name: policy.session.cookie_name.clone(),
            cookie_domain: policy.session.cookie_domain.clone(),
            key_files: mounts::SESSION_KEYS
                .iter()
                .map(|key| format!("{}/{key}", mounts::SESSION_DIR).into())
                .collect(),
        },
        bypass: policy.bypass.clone(),
        app_token_cache_ttl: policy
            .app_tokens
            .enabled
            .then_some(policy.app_tokens.cache_ttl),
        revoked_before: policy.revoked_before.clone(),
        revoked_emails: policy.revoked_emails.clone(),
        cloudflare_access: policy
            .cloudflare_access
            .as_ref()
            .map(|cloudflare| CloudflareAccess {
                team_domain: DomainName::from(cloudflare.team_domain.as_str()),
                audiences: cloudflare.audiences.clone(),
                jwks_url: None,
                jwks_refresh: JWKS_REFRESH,
            }),
    }
}

fn render_waf(waf: &WafRuleSetSpec) -> Waf {
    Waf {
        mode: waf.mode,
        crs_dir: waf.crs.enabled.then(|| mounts::CRS_DIR.into()),
        paranoia_level: waf.crs.paranoia_level,
        executing_paranoia_level: waf
            .crs
            .executing_paranoia_level
            .unwrap_or(waf.crs.paranoia_level),
        inbound_anomaly_threshold: waf.crs.inbound_anomaly_threshold,
        outbound_anomaly_threshold: waf.crs.outbound_anomaly_threshold,
        app_exclusions: waf.crs.app_exclusions,
        exclusions: waf
            .exclusions
            .iter()
            .map(|exclusion| WafExclusion {
                rule_ids: exclusion.rule_ids.clone(),
                rule_id_ranges: exclusion
                    .rule_id_ranges
                    .iter()
                    .filter_map(|range| {
                        let (low, high) = range.split_once('-')?;
                        Some((low.parse().ok()?, high.parse().ok()?))
                    })
                    .collect(),
                tags: exclusion.tags.clone(),
                paths: exclusion.paths.clone(),
                targets: exclusion.targets.clone(),
            })
            .collect(),
        custom_rules: waf.custom_rules.clone(),
        request_body_limit: waf.request_body_limit,
        inspect_responses: waf.inspect_responses,
    }
}

/// The directory a RateLimit's Redis URL Secret is mounted at.
pub fn redis_dir(rate_limit: &str) -> String {
    format!("{}/{rate_limit}", mounts::REDIS_DIR)
}

/// Where the edge reads a RateLimit's Redis URL, when its counters live in Redis.
fn redis_url_file(named: &Named<portcullis_crds::RateLimit>) -> Option<std::path::PathBuf> {
    let backend = &named.resource.spec.backend;
    backend
        .redis
        .as_ref()
        .filter(|_| backend.type_ == BackendType::Redis)
        .map(|redis| format!("{}/{}", redis_dir(&named.name), redis.url_secret_ref.key).into())
}

fn rate_limit(named: &Named<portcullis_crds::RateLimit>) -> RateLimit {
    let spec: &RateLimitSpec = &named.resource.spec;
    let ban = |at: &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time, key: &str| EdgeBan {
        key: key.to_owned(),
        at: at.clone(),
    };
    RateLimit {
        name: named.name.clone(),
        path_prefixes: spec.match_.path_prefixes.clone(),
        path_regex: spec.match_.path_regex.clone(),
        methods: spec.match_.methods.clone(),
        only_statuses: spec.match_.only_statuses.clone(),
        key: spec.key.by,
        key_header: spec.key.header.clone(),
        ipv6_prefix_length: spec.key.ipv6_prefix_length,
        limit: spec.limit,
        period: spec.period,
        burst: spec.burst,
        ban_after: spec.ban.as_ref().map(|b| b.after),
        ban_duration: spec.ban.as_ref().map(|b| b.duration),
        status: spec.response.status,
        retry_after: spec.response.retry_after,
        challenge: spec.response.action == portcullis_crds::rate_limit::LimitAction::Challenge,
        redis_url_file: redis_url_file(named),
        manual_bans: spec
            .manual_bans
            .add
            .iter()
            .map(|b| ban(&b.until, &b.key))
            .collect(),
        lifted_bans: spec
            .manual_bans
            .lift
            .iter()
            .map(|b| ban(&b.before, &b.key))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use portcullis_crds::{AccessPolicy, RateLimit, WafRuleSet};

    use super::*;
    use crate::render::test_support::seed_server;

    fn seed_resolved() -> Resolved {
        let example = |file: &str| {
            std::fs::read_to_string(format!(
                "{}/../examples/seed/{file}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let policy: AccessPolicy = serde_saphyr::from_str(&example("accesspolicy.yaml")).unwrap();
        let waf: WafRuleSet = serde_saphyr::from_str(&example("wafruleset.yaml")).unwrap();
        let limits: Vec<RateLimit> =
            serde_saphyr::from_multiple(&example("ratelimits.yaml")).unwrap();
        Resolved {
            access_policy: Some(Named {
                name: "family".into(),
                resource: policy,
            }),
            waf_rule_set: Some(Named {
                name: "crs-pl1".into(),
                resource: waf,
            }),
            rate_limits: limits
                .into_iter()
                .map(|l| Named {
                    name: l.name_any(),
                    resource: l,
                })
                .collect(),
        }
    }

    #[test]
    fn upload_scanning_reaches_the_document_and_raises_the_body_limit() {
        let mut server = seed_server();
        server.spec.edge.antivirus = Some(AntivirusSpec {
            max_scan_size: portcullis_crds::common::ByteSize::from_mib(64),
            on_unscannable: portcullis_crds::media_server::UnscannableAction::Allow,
            ..AntivirusSpec::default()
        });
        let config = render(&server, &seed_resolved());
        config.validate().unwrap_or_else(|e| panic!("{e}"));
        let section = config.antivirus.as_ref().unwrap();
        assert_eq!(section.clamd, "127.0.0.1:3310");
        assert_eq!(
            section.paths,
            portcullis_crds::media_server::JELLYFIN_UPLOAD_PATHS.to_vec()
        );
        assert_eq!(section.max_scan_size.bytes(), 64 << 20);
        assert_eq!(
            section.on_unscannable,
            portcullis_crds::media_server::UnscannableAction::Allow
        );
        // A body the scanner may take is not refused earlier by the body limit.
        assert!(config.limits.max_body.bytes() >= 64 << 20);
    }

    #[test]
    fn the_seed_renders_a_document_the_proxy_accepts() {
        let config = render(&seed_server(), &seed_resolved());
        config.validate().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.upstream.address, "jellyfin-app.media.svc:8096");
        assert_eq!(config.host.as_str(), "media.example.org");
        assert_eq!(config.source.generation, 3);
        let access = config.access.as_ref().unwrap();
        assert_eq!(access.countries.allow[0].as_str(), "FR");
        assert_eq!(
            access.geoip_file.as_deref(),
            Some(std::path::Path::new("/etc/portcullis/geoip/country.mmdb"))
        );
        assert_eq!(
            access.otp.as_ref().unwrap().smtp.password_file.as_deref(),
            Some(std::path::Path::new("/etc/portcullis/smtp/password"))
        );
        assert_eq!(access.session.key_files.len(), 2);
        assert_eq!(
            config.waf.as_ref().unwrap().crs_dir.as_deref(),
            Some(std::path::Path::new(mounts::CRS_DIR))
        );
        assert_eq!(
            config
                .rate_limits
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>(),
            ["login", "api"]
        );
        assert_eq!(
            config.rate_limits[0].ban_duration.unwrap().to_string(),
            "1h"
        );
        assert!(!config.rate_limits[0].challenge);
    }

    #[test]
    fn a_challenging_limit_asks_the_edge_for_the_proof_of_work() {
        let mut resolved = seed_resolved();
        resolved.rate_limits[1].resource.spec.response.action =
            portcullis_crds::rate_limit::LimitAction::Challenge;
        let config = render(&seed_server(), &resolved);
        assert!(config.rate_limits[1].challenge);
        assert!(config.to_yaml().contains("challenge: true"));
    }

    #[test]
    fn the_document_embeds_no_secret_material() {
        let yaml = render(&seed_server(), &seed_resolved()).to_yaml();
        for secret_name in ["smtp-credentials", "geoip-country", "media-tls"] {
            assert!(
                !yaml.contains(secret_name),
                "the document names Secret {secret_name}"
            );
        }
    }

    #[test]
    fn cloudflare_access_renders_the_team_and_audiences_with_the_team_key_url() {
        let mut resolved = seed_resolved();
        assert!(
            render(&seed_server(), &resolved)
                .access
                .unwrap()
                .cloudflare_access
                .is_none()
        );
        let spec = &mut resolved.access_policy.as_mut().unwrap().resource.spec;
        let aud = "4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2";
        spec.cloudflare_access = Some(portcullis_crds::access_policy::CloudflareAccessSpec {
            team_domain: "myteam.cloudflareaccess.com".into(),
            audiences: vec![aud.into()],
        });
        let config = render(&seed_server(), &resolved);
        config.validate().unwrap_or_else(|e| panic!("{e}"));
        let cloudflare = config.access.unwrap().cloudflare_access.unwrap();
        assert_eq!(
            cloudflare.team_domain.as_str(),
            "myteam.cloudflareaccess.com"
        );
        assert_eq!(cloudflare.audiences, [aud]);
        assert_eq!(cloudflare.issuer(), "https://myteam.cloudflareaccess.com");
        assert_eq!(
            cloudflare.jwks_url(),
            "https://myteam.cloudflareaccess.com/cdn-cgi/access/certs"
        );
        assert_eq!(cloudflare.jwks_refresh, JWKS_REFRESH);
    }

    #[test]
    fn one_time_codes_share_the_redis_of_the_first_limit_that_has_one() {
        let mut resolved = seed_resolved();
        let otp_redis = |resolved: &Resolved| {
            render(&seed_server(), resolved)
                .access
                .unwrap()
                .otp
                .unwrap()
                .redis_url_file
        };
        // The seed's limits count in memory: so do the codes.
        assert_eq!(otp_redis(&resolved), None);
        let backend = &mut resolved.rate_limits[1].resource.spec.backend;
        backend.type_ = BackendType::Redis;
        backend.redis = Some(portcullis_crds::rate_limit::RedisBackend {
            url_secret_ref: portcullis_crds::common::SecretKeyReference {
                name: "redis".into(),
                key: "url".into(),
            },
        });
        let config = render(&seed_server(), &resolved);
        config.validate().unwrap_or_else(|e| panic!("{e}"));
        let shared = otp_redis(&resolved).unwrap();
        assert_eq!(
            shared,
            std::path::Path::new("/etc/portcullis/redis/api/url")
        );
        // The very file the limit itself reads, which the edge pod mounts.
        assert_eq!(config.rate_limits[1].redis_url_file.as_ref(), Some(&shared));
    }

    #[test]
    fn a_server_without_references_renders_a_plain_proxy() {
        let config = render(&seed_server(), &Resolved::default());
        config.validate().unwrap();
        assert!(config.access.is_none() && config.waf.is_none() && config.rate_limits.is_empty());
    }

    #[test]
    fn the_drain_fits_inside_the_pod_grace_period() {
        let mut server = seed_server();
        server.spec.edge.termination_grace_period_seconds = 60;
        assert_eq!(
            render(&server, &Resolved::default())
                .timeouts
                .shutdown_grace
                .get()
                .as_secs(),
            55
        );
    }

    #[test]
    fn a_policy_edit_changes_the_content_hash_but_not_the_restart_hash() {
        let before = render(&seed_server(), &seed_resolved());
        let mut resolved = seed_resolved();
        resolved
            .access_policy
            .as_mut()
            .unwrap()
            .resource
            .spec
            .emails
            .pop();
        let after = render(&seed_server(), &resolved);
        assert_ne!(before.content_hash(), after.content_hash());
        assert_eq!(before.restart_hash(), after.restart_hash());
    }
}
