//! The edge: its Deployment, public Service, the ConfigMap holding the edge document, and
//! the Secret holding its session signing keys.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{
            Affinity, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
            EmptyDirVolumeSource, ExecAction, HTTPGetAction, KeyToPath,
            PersistentVolumeClaimVolumeSource, PodAffinityTerm, PodAntiAffinity, PodSpec,
            PodTemplateSpec, Probe, Secret, SecretVolumeSource, Service, ServicePort, ServiceSpec,
            Volume, VolumeMount, WeightedPodAffinityTerm,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity, apis::meta::v1::ObjectMeta, util::intstr::IntOrString,
    },
};
use kube::ResourceExt;
use portcullis_crds::{
    MediaServer,
    access_policy::GeoIpSource,
    edge::{EdgeConfig, MAX_SCAN_SIZE},
    media_server::{AntivirusSpec, ServiceType},
    rate_limit::BackendType,
};

use super::{
    Component, Names, RESTART_HASH_ANNOTATION, Resolved, Settings,
    edge_config::{GEOIP_FILE, mounts, redis_dir},
    owned_metadata, security, selector, selector_labels,
};

/// The ConfigMap holding the rendered edge document.
pub fn config_map(server: &MediaServer, document: &EdgeConfig) -> ConfigMap {
    ConfigMap {
        metadata: owned_metadata(
            server,
            Names::new(&server.name_any()).edge_config(),
            Component::Edge,
        ),
        data: Some(
            [(mounts::CONFIG_FILE.to_owned(), document.to_yaml())]
                .into_iter()
                .chain(
                    document
                        .antivirus
                        .is_some()
                        .then(|| {
                            [
                                (CLAMD_CONF.to_owned(), clamd_conf()),
                                (FRESHCLAM_CONF.to_owned(), freshclam_conf()),
                            ]
                        })
                        .into_iter()
                        .flatten(),
                )
                .collect(),
        ),
        ..ConfigMap::default()
    }
}

/// clamd's configuration file in the edge ConfigMap.
const CLAMD_CONF: &str = "clamd.conf";
/// freshclam's configuration file in the edge ConfigMap.
const FRESHCLAM_CONF: &str = "freshclam.conf";

/// clamd's configuration: on the pod's loopback interface only, alerting on what it cannot
/// look into. Its size limits sit at the most the edge ever sends ([`MAX_SCAN_SIZE`]): the
/// edge enforces the MediaServer's `maxScanSize` itself, so the file is the same for every
/// MediaServer and a change of limit needs no clamd restart.
fn clamd_conf() -> String {
    let mib = MAX_SCAN_SIZE.bytes() >> 20;
    format!(
        "# Rendered by the Portcullis operator.
Foreground yes
LogTime yes
TCPSocket {port}
TCPAddr 127.0.0.1
DatabaseDirectory {db}
TemporaryDirectory /tmp
StreamMaxLength {mib}M
MaxFileSize {mib}M
MaxScanSize {scan}M
AlertEncrypted yes
AlertExceedsMax yes
",
        port = mounts::CLAMD_PORT,
        db = mounts::CLAMAV_DB_DIR,
        scan = mib * 4,
    )
}

/// freshclam's configuration: the official mirror, twelve checks a day, and clamd told to
/// reload after each update.
fn freshclam_conf() -> String {
    format!(
        "# Rendered by the Portcullis operator.
Foreground yes
LogTime yes
DatabaseDirectory {db}
DatabaseMirror database.clamav.net
Checks 12
NotifyClamd {config}/{CLAMD_CONF}
",
        db = mounts::CLAMAV_DB_DIR,
        config = mounts::CLAMAV_CONFIG_DIR,
    )
}

/// The ClamAV parts of an edge pod that scans uploads: an init container that fetches the
/// signature database before clamd starts (`freshclam` once), clamd beside the edge
/// (ready once it answers a ping: the pod takes no traffic before), and freshclam keeping
/// the database fresh. The database lives on the MediaServer's claim when it names one
/// (it survives restarts, sparing the ClamAV mirrors), else on a scratch volume.
fn clamav(
    server: &MediaServer,
    spec: &AntivirusSpec,
    settings: &Settings,
) -> (Vec<Volume>, Container, Vec<Container>) {
    let image = spec
        .clamd
        .image
        .clone()
        .unwrap_or_else(|| settings.clamav_image.clone());
    let database = match &spec.clamd.database_claim {
        Some(claim) => Volume {
            name: "clamav-db".to_owned(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.clone(),
                read_only: Some(false),
            }),
            ..Volume::default()
        },
        None => Volume {
            name: "clamav-db".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("2Gi".to_owned())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    };
    let volumes = vec![
        database,
        Volume {
            name: "clamav-tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource::default()),
            ..Volume::default()
        },
        Volume {
            name: "clamav-config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: Names::new(&server.name_any()).edge_config(),
                items: Some(vec![
                    KeyToPath {
                        key: CLAMD_CONF.to_owned(),
                        path: CLAMD_CONF.to_owned(),
                        ..KeyToPath::default()
                    },
                    KeyToPath {
                        key: FRESHCLAM_CONF.to_owned(),
                        path: FRESHCLAM_CONF.to_owned(),
                        ..KeyToPath::default()
                    },
                ]),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    let mounts = vec![
        VolumeMount {
            name: "clamav-db".to_owned(),
            mount_path: mounts::CLAMAV_DB_DIR.to_owned(),
            ..VolumeMount::default()
        },
        VolumeMount {
            name: "clamav-tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        },
        read_only_mount("clamav-config", mounts::CLAMAV_CONFIG_DIR),
    ];
    let config = |file: &str| format!("--config-file={}/{file}", mounts::CLAMAV_CONFIG_DIR);
    let container = |name: &str, command: Vec<String>| Container {
        name: name.to_owned(),
        image: Some(image.clone()),
        command: Some(command),
        volume_mounts: Some(mounts.clone()),
        security_context: Some(security::container()),
        ..Container::default()
    };
    let init = container(
        "freshclam-init",
        vec![
            "freshclam".to_owned(),
            config(FRESHCLAM_CONF),
            "--stdout".to_owned(),
        ],
    );
    let ping = Probe {
        exec: Some(ExecAction {
            command: Some(vec![
                "clamdscan".to_owned(),
                config(CLAMD_CONF),
                "--ping".to_owned(),
                "1".to_owned(),
            ]),
        }),
        period_seconds: Some(10),
        timeout_seconds: Some(5),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    let clamd = Container {
        resources: spec.clamd.resources.clone(),
        readiness_probe: Some(ping.clone()),
        liveness_probe: Some(ping.clone()),
        // Loading the whole database takes a minute or two.
        startup_probe: Some(Probe {
            period_seconds: Some(5),
            failure_threshold: Some(60),
            ..ping
        }),
        ..container("clamd", vec!["clamd".to_owned(), config(CLAMD_CONF)])
    };
    let freshclam = container(
        "freshclam",
        vec![
            "freshclam".to_owned(),
            config(FRESHCLAM_CONF),
            "--daemon".to_owned(),
            "--stdout".to_owned(),
        ],
    );
    (volumes, init, vec![clamd, freshclam])
}

/// The Secret holding the session signing keys. `keys` are the values to keep (read from
/// the cluster, or generated once by the caller); this function never invents them.
pub fn session_keys(server: &MediaServer, keys: &BTreeMap<String, ByteString>) -> Secret {
    Secret {
        metadata: owned_metadata(
            server,
            Names::new(&server.name_any()).session_keys(),
            Component::Edge,
        ),
        type_: Some("Opaque".to_owned()),
        data: Some(keys.clone()),
        ..Secret::default()
    }
}

fn secret_volume(name: &str, secret: &str, items: Option<Vec<KeyToPath>>) -> Volume {
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            items,
            default_mode: Some(0o440),
            optional: Some(false),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn key_to(key: &str, path: &str) -> Option<Vec<KeyToPath>> {
    Some(vec![KeyToPath {
        key: key.to_owned(),
        path: path.to_owned(),
        ..KeyToPath::default()
    }])
}

fn read_only_mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

/// The TLS Secret the edge mounts: the user's, or the one cert-manager fills for an issuer.
pub fn tls_secret_name(server: &MediaServer) -> String {
    server
        .spec
        .tls
        .secret_name
        .clone()
        .unwrap_or_else(|| format!("{}-tls", Names::new(&server.name_any()).edge()))
}

/// Every volume the edge needs, with where it is mounted: the document's directory, TLS,
/// session keys, and what the referenced policies bring (SMTP, country database, Redis).
fn volumes(server: &MediaServer, resolved: &Resolved) -> Vec<(Volume, VolumeMount)> {
    let names = Names::new(&server.name_any());
    let mut volumes = vec![
        (
            Volume {
                name: "config".to_owned(),
                config_map: Some(ConfigMapVolumeSource {
                    name: names.edge_config(),
                    optional: Some(false),
                    ..ConfigMapVolumeSource::default()
                }),
                ..Volume::default()
            },
            read_only_mount("config", mounts::CONFIG_DIR),
        ),
        (
            secret_volume("tls", &tls_secret_name(server), None),
            read_only_mount("tls", mounts::TLS_DIR),
        ),
        (
            secret_volume("session", &names.session_keys(), None),
            read_only_mount("session", mounts::SESSION_DIR),
        ),
    ];
    if let Some(policy) = &resolved.access_policy {
        let spec = &policy.resource.spec;
        if let Some(secret) = spec
            .otp
            .as_ref()
            .and_then(|otp| otp.smtp.credentials_secret.as_ref())
        {
            volumes.push((
                secret_volume("smtp", secret, None),
                read_only_mount("smtp", mounts::SMTP_DIR),
            ));
        }
        match &spec.geoip {
            Some(GeoIpSource {
                secret_ref: Some(secret),
                ..
            }) => volumes.push((
                secret_volume("geoip", &secret.name, key_to(&secret.key, GEOIP_FILE)),
                read_only_mount("geoip", mounts::GEOIP_DIR),
            )),
            Some(GeoIpSource {
                config_map_ref: Some(map),
                ..
            }) => volumes.push((
                Volume {
                    name: "geoip".to_owned(),
                    config_map: Some(ConfigMapVolumeSource {
                        name: map.name.clone(),
                        items: key_to(&map.key, GEOIP_FILE),
                        optional: Some(false),
                        ..ConfigMapVolumeSource::default()
                    }),
                    ..Volume::default()
                },
                read_only_mount("geoip", mounts::GEOIP_DIR),
            )),
            _ => {}
        }
    }
    for (i, limit) in resolved.rate_limits.iter().enumerate() {
        let spec = &limit.resource.spec;
        if let (BackendType::Redis, Some(redis)) = (spec.backend.type_, &spec.backend.redis) {
            let name = format!("redis-{i}");
            volumes.push((
                secret_volume(&name, &redis.url_secret_ref.name, None),
                read_only_mount(&name, &redis_dir(&limit.name)),
            ));
        }
    }
    volumes
}

fn port(name: &str, number: u16) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(number),
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

fn admin_probe(path: &str, period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    }
}

/// The OWASP CRS rule files in the edge pod: an init container copies them, unmodified, out
/// of the official CRS release image (`settings.crs_image`, pinned by the chart) into a
/// volume the edge reads at `mounts::CRS_DIR`.
fn crs_rules(settings: &Settings) -> (Volume, VolumeMount, Container) {
    let volume = Volume {
        name: "crs".to_owned(),
        empty_dir: Some(k8s_openapi::api::core::v1::EmptyDirVolumeSource::default()),
        ..Volume::default()
    };
    let init = Container {
        name: "crs".to_owned(),
        image: Some(settings.crs_image.clone()),
        command: Some(vec![
            "cp".to_owned(),
            "-R".to_owned(),
            format!("{}/.", settings.crs_path.trim_end_matches('/')),
            format!("{}/", mounts::CRS_DIR),
        ]),
        volume_mounts: Some(vec![VolumeMount {
            name: "crs".to_owned(),
            mount_path: mounts::CRS_DIR.to_owned(),
            ..VolumeMount::default()
        }]),
        security_context: Some(security::container()),
        ..Container::default()
    };
    (volume, read_only_mount("crs", mounts::CRS_DIR), init)
}

/// The edge's Deployment. Its pod template changes only when a running proxy cannot apply
/// the change live: the document's restart hash, or the set of mounted volumes.
pub fn deployment(
    server: &MediaServer,
    resolved: &Resolved,
    document: &EdgeConfig,
    settings: &Settings,
) -> Deployment {
    let name = server.name_any();
    let spec = &server.spec.edge;
    let (mut volumes, mut volume_mounts): (Vec<_>, Vec<_>) =
        volumes(server, resolved).into_iter().unzip();
    let mut init_containers = Vec::new();
    if document
        .waf
        .as_ref()
        .is_some_and(|waf| waf.crs_dir.is_some())
    {
        let (volume, mount, init) = crs_rules(settings);
        volumes.push(volume);
        volume_mounts.push(mount);
        init_containers.push(init);
    }
    let mut sidecars = Vec::new();
    if let Some(antivirus) = spec
        .antivirus
        .as_ref()
        .filter(|_| document.antivirus.is_some())
    {
        let (clamav_volumes, init, containers) = clamav(server, antivirus, settings);
        volumes.extend(clamav_volumes);
        init_containers.push(init);
        sidecars = containers;
    }
    let container = Container {
        name: "edge".to_owned(),
        image: Some(spec.image.clone().unwrap_or_else(|| settings.image.clone())),
        command: Some(vec!["portcullis-proxy".to_owned()]),
        args: Some(vec![
            "--config".to_owned(),
            format!("{}/{}", mounts::CONFIG_DIR, mounts::CONFIG_FILE),
        ]),
        ports: Some(vec![
            port("https", mounts::HTTPS_PORT),
            port("http", mounts::HTTP_PORT),
            port("admin", mounts::ADMIN_PORT),
        ]),
        volume_mounts: Some(volume_mounts),
        resources: spec.resources.clone(),
        readiness_probe: Some(admin_probe("/readyz", 5)),
        liveness_probe: Some(admin_probe("/healthz", 10)),
        security_context: Some(security::container()),
        ..Container::default()
    };
    let anti_affinity = Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(selector(&name, Component::Edge)),
                        topology_key: "kubernetes.io/hostname".to_owned(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            ..PodAntiAffinity::default()
        }),
        ..Affinity::default()
    };
    Deployment {
        metadata: owned_metadata(server, Names::new(&name).edge(), Component::Edge),
        spec: DeploymentSpec {
            replicas: Some(spec.replicas),
            selector: selector(&name, Component::Edge),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(selector_labels(&name, Component::Edge)),
                    annotations: Some(BTreeMap::from([(
                        RESTART_HASH_ANNOTATION.to_owned(),
                        document.restart_hash(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(spec.termination_grace_period_seconds),
                    security_context: Some(security::pod(security::PORTCULLIS_UID)),
                    affinity: Some(anti_affinity),
                    init_containers: (!init_containers.is_empty()).then_some(init_containers),
                    containers: std::iter::once(container).chain(sidecars).collect(),
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// The edge's public Service: HTTPS on 443, the redirect on 80.
pub fn service(server: &MediaServer) -> Service {
    let name = server.name_any();
    let spec = &server.spec.edge.service;
    let mut metadata = owned_metadata(server, Names::new(&name).edge(), Component::Edge);
    if !spec.annotations.is_empty() {
        metadata.annotations = Some(spec.annotations.clone());
    }
    let service_port = |port_name: &str, port: i32, node_port: Option<i32>| ServicePort {
        name: Some(port_name.to_owned()),
        port,
        target_port: Some(IntOrString::String(port_name.to_owned())),
        node_port,
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    };
    let type_ = match spec.type_ {
        ServiceType::LoadBalancer => "LoadBalancer",
        ServiceType::NodePort => "NodePort",
        ServiceType::ClusterIP => "ClusterIP",
    };
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some(type_.to_owned()),
            selector: Some(selector_labels(&name, Component::Edge)),
            // Keep the client's address on the packets (no SNAT) where the type allows it.
            external_traffic_policy: (spec.type_ != ServiceType::ClusterIP)
                .then(|| "Local".to_owned()),
            ports: Some(vec![
                service_port("https", 443, spec.https_node_port),
                service_port("http", 80, spec.http_node_port),
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{edge_config, test_support::seed_server};

    fn rendered(server: &MediaServer) -> Deployment {
        let resolved = Resolved::default();
        deployment(
            server,
            &resolved,
            &edge_config::render(server, &resolved),
            &Settings::default(),
        )
    }

    fn pod(deployment: &Deployment) -> &PodSpec {
        deployment.spec.template.spec.as_ref().unwrap()
    }

    #[test]
    fn a_crs_rule_set_copies_the_rules_from_the_crs_image_into_a_read_only_mount() {
        let server = seed_server();
        let waf: portcullis_crds::WafRuleSet = serde_saphyr::from_str(
            &std::fs::read_to_string(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/seed/wafruleset.yaml"
            ))
            .unwrap(),
        )
        .unwrap();
        let resolved = Resolved {
            waf_rule_set: Some(crate::render::Named {
                name: "crs-pl1".into(),
                resource: waf,
            }),
            ..Resolved::default()
        };
        let settings = Settings::default();
        let document = edge_config::render(&server, &resolved);
        let deployment = deployment(&server, &resolved, &document, &settings);
        let pod = pod(&deployment);
        let init = &pod.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.image.as_deref(), Some(settings.crs_image.as_str()));
        assert_eq!(
            init.command.as_ref().unwrap(),
            &["cp", "-R", "/opt/owasp-crs/.", "/etc/portcullis/crs/"]
        );
        let mount = pod.containers[0]
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "crs")
            .unwrap();
        assert_eq!(mount.mount_path, "/etc/portcullis/crs");
        assert_eq!(mount.read_only, Some(true));
        // Without a rule set there is nothing to copy.
        assert!(pod_of_plain(&server).init_containers.is_none());
    }

    fn pod_of_plain(server: &MediaServer) -> PodSpec {
        rendered(server).spec.template.spec.unwrap()
    }

    #[test]
    fn the_document_is_mounted_as_a_directory_never_a_sub_path() {
        let deployment = rendered(&seed_server());
        let mounts = pod(&deployment).containers[0]
            .volume_mounts
            .as_ref()
            .unwrap();
        let config = mounts.iter().find(|m| m.name == "config").unwrap();
        assert_eq!(config.mount_path, "/etc/portcullis/config");
        assert!(mounts.iter().all(|m| m.sub_path.is_none()));
    }

    #[test]
    fn the_restart_hash_ignores_policy_edits() {
        let server = seed_server();
        let before = rendered(&server);
        let mut changed = server.clone();
        changed
            .spec
            .edge
            .trusted_proxies
            .push("192.0.2.0/24".parse().unwrap());
        let after = rendered(&changed);
        assert_eq!(before.spec.template, after.spec.template);
    }

    #[test]
    fn edge_replicas_spread_over_nodes_and_drain_within_their_grace_period() {
        let mut server = seed_server();
        server.spec.edge.replicas = 3;
        server.spec.edge.termination_grace_period_seconds = 45;
        let deployment = rendered(&server);
        assert_eq!(deployment.spec.replicas, Some(3));
        let pod = pod(&deployment);
        assert_eq!(pod.termination_grace_period_seconds, Some(45));
        assert!(pod.affinity.as_ref().unwrap().pod_anti_affinity.is_some());
        assert_eq!(
            pod.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
    }

    #[test]
    fn the_service_exposes_https_and_the_redirect_as_asked() {
        let mut server = seed_server();
        server.spec.edge.service.type_ = ServiceType::NodePort;
        server.spec.edge.service.https_node_port = Some(30443);
        let spec = service(&server).spec.unwrap();
        assert_eq!(spec.type_.as_deref(), Some("NodePort"));
        let ports = spec.ports.unwrap();
        assert_eq!((ports[0].port, ports[0].node_port), (443, Some(30443)));
        assert_eq!(ports[1].port, 80);
        assert_eq!(spec.external_traffic_policy.as_deref(), Some("Local"));
    }

    #[test]
    fn an_issuer_certificate_is_read_from_the_secret_cert_manager_fills() {
        let mut server = seed_server();
        server.spec.tls.secret_name = None;
        assert_eq!(tls_secret_name(&server), "jellyfin-edge-tls");
    }

    #[test]
    fn the_config_map_holds_the_document_the_proxy_reads() {
        let server = seed_server();
        let document = edge_config::render(&server, &Resolved::default());
        let map = config_map(&server, &document);
        let text = &map.data.unwrap()["edge.yaml"];
        assert_eq!(EdgeConfig::from_yaml(text).unwrap(), document);
    }

    fn scanning(database_claim: Option<&str>) -> MediaServer {
        let mut server = seed_server();
        let mut antivirus = portcullis_crds::media_server::AntivirusSpec::default();
        antivirus.clamd.database_claim = database_claim.map(str::to_owned);
        server.spec.edge.antivirus = Some(antivirus);
        server
    }

    #[test]
    fn an_edge_that_scans_uploads_runs_clamd_beside_it_with_a_fresh_database() {
        let server = scanning(None);
        let resolved = Resolved::default();
        let settings = Settings::default();
        let document = edge_config::render(&server, &resolved);
        let deployment = deployment(&server, &resolved, &document, &settings);
        let pod = pod(&deployment);
        let names: Vec<_> = pod.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["edge", "clamd", "freshclam"]);
        let clamd = &pod.containers[1];
        assert_eq!(clamd.image.as_deref(), Some(settings.clamav_image.as_str()));
        assert_eq!(
            clamd.command.as_ref().unwrap(),
            &["clamd", "--config-file=/etc/portcullis/clamav/clamd.conf"]
        );
        // The pod takes traffic only once clamd answers.
        let ping = clamd
            .readiness_probe
            .as_ref()
            .unwrap()
            .exec
            .as_ref()
            .unwrap();
        assert_eq!(
            ping.command.as_ref().unwrap(),
            &[
                "clamdscan",
                "--config-file=/etc/portcullis/clamav/clamd.conf",
                "--ping",
                "1"
            ]
        );
        assert!(clamd.startup_probe.is_some());
        assert_eq!(
            clamd
                .security_context
                .as_ref()
                .unwrap()
                .read_only_root_filesystem,
            Some(true)
        );
        // The database is fetched before clamd starts, and kept fresh beside it.
        let init = pod.init_containers.as_ref().unwrap();
        let fetch = init.iter().find(|c| c.name == "freshclam-init").unwrap();
        assert!(
            !fetch
                .command
                .as_ref()
                .unwrap()
                .contains(&"--daemon".to_owned())
        );
        assert!(
            pod.containers[2]
                .command
                .as_ref()
                .unwrap()
                .contains(&"--daemon".to_owned())
        );
        for container in [fetch, clamd, &pod.containers[2]] {
            let mounts = container.volume_mounts.as_ref().unwrap();
            let db = mounts.iter().find(|m| m.name == "clamav-db").unwrap();
            assert_eq!(db.mount_path, "/var/lib/clamav");
            assert!(mounts.iter().any(|m| m.mount_path == "/tmp"));
        }
        let volumes = pod.volumes.as_ref().unwrap();
        let db = volumes.iter().find(|v| v.name == "clamav-db").unwrap();
        assert!(db.empty_dir.is_some());
        // The edge is pointed at the clamd its pod runs; clamd listens on loopback only and
        // reports encrypted archives, so the edge can tell them from clean ones.
        assert_eq!(document.antivirus.as_ref().unwrap().clamd, "127.0.0.1:3310");
        let config = config_map(&server, &document).data.unwrap();
        let clamd_conf = &config["clamd.conf"];
        for line in [
            "TCPSocket 3310",
            "TCPAddr 127.0.0.1",
            "DatabaseDirectory /var/lib/clamav",
            "AlertEncrypted yes",
            "StreamMaxLength 256M",
        ] {
            assert!(
                clamd_conf.lines().any(|l| l == line),
                "{line} in {clamd_conf}"
            );
        }
        assert!(
            config["freshclam.conf"]
                .lines()
                .any(|l| l == "NotifyClamd /etc/portcullis/clamav/clamd.conf")
        );
    }

    #[test]
    fn the_signature_database_may_live_on_a_claim_of_its_own() {
        let deployment = rendered(&scanning(Some("clamav-db")));
        let volumes = pod(&deployment).volumes.as_ref().unwrap();
        let db = volumes.iter().find(|v| v.name == "clamav-db").unwrap();
        assert_eq!(
            db.persistent_volume_claim.as_ref().unwrap().claim_name,
            "clamav-db"
        );
    }

    #[test]
    fn an_edge_that_scans_nothing_runs_no_clamd() {
        let server = seed_server();
        let deployment = rendered(&server);
        assert_eq!(pod(&deployment).containers.len(), 1);
        let document = edge_config::render(&server, &Resolved::default());
        assert!(document.antivirus.is_none());
        let config = config_map(&server, &document).data.unwrap();
        assert_eq!(config.keys().collect::<Vec<_>>(), ["edge.yaml"]);
    }
}
