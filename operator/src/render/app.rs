//! The media server application: its Deployment, ClusterIP Service and volume claims.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy},
        core::v1::{
            Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
            HTTPGetAction, PersistentVolumeClaim, PersistentVolumeClaimSpec,
            PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe, SecretKeySelector,
            Service, Volume, VolumeMount, VolumeResourceRequirements,
        },
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use kube::ResourceExt;
use portcullis_crds::{
    MediaServer,
    media_server::{AccessMode, VolumeSpec},
};

use super::{
    Component, Names, Settings, cluster_ip_service,
    edge_config::mounts,
    owned_metadata, security, selector, selector_labels,
    transcoder::{TRANSCODER_PORT, WRAPPER_DIR},
};

/// Where the app keeps its configuration.
pub const CONFIG_PATH: &str = "/config";
/// Where the app keeps its cache and transcoded segments.
pub const CACHE_PATH: &str = "/cache";

/// The readiness check: Jellyfin answers 200 `Degraded` while it starts, so only a body of
/// exactly `Healthy` counts (the Jellyfin image ships curl for its own health check).
const READINESS_SCRIPT: &str =
    "curl -fsS --max-time 3 http://127.0.0.1:8096/health | grep -qx Healthy";

/// The claims the operator creates for the app (those given as `size`).
pub fn claims(server: &MediaServer) -> Vec<PersistentVolumeClaim> {
    let names = Names::new(&server.name_any());
    let storage = &server.spec.storage;
    [
        (names.config_claim(), &storage.config),
        (names.cache_claim(), &storage.cache),
    ]
    .into_iter()
    .filter_map(|(name, volume)| {
        let size = volume.size.clone()?;
        Some(PersistentVolumeClaim {
            metadata: owned_metadata(server, name, Component::App),
            spec: Some(PersistentVolumeClaimSpec {
                access_modes: Some(vec![access_mode(volume).to_owned()]),
                storage_class_name: volume.storage_class_name.clone(),
                resources: Some(VolumeResourceRequirements {
                    requests: Some(BTreeMap::from([("storage".to_owned(), size)])),
                    ..VolumeResourceRequirements::default()
                }),
                ..PersistentVolumeClaimSpec::default()
            }),
            ..PersistentVolumeClaim::default()
        })
    })
    .collect()
}

fn access_mode(volume: &VolumeSpec) -> &'static str {
    match volume.access_mode.unwrap_or_default() {
        AccessMode::ReadWriteOnce => "ReadWriteOnce",
        AccessMode::ReadWriteMany => "ReadWriteMany",
        AccessMode::ReadOnlyMany => "ReadOnlyMany",
    }
}

/// The claim name a volume mounts: the existing one, or the one the operator creates.
pub fn claim_name(volume: &VolumeSpec, created: String) -> String {
    volume.existing_claim.clone().unwrap_or(created)
}

pub(crate) fn claim_volume(name: &str, claim: String, read_only: bool) -> Volume {
    Volume {
        name: name.to_owned(),
        persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
            claim_name: claim,
            read_only: Some(read_only),
        }),
        ..Volume::default()
    }
}

pub(crate) fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// The app's Deployment: one replica, replaced (not rolled) because its configuration claim
/// is ReadWriteOnce.
pub fn deployment(server: &MediaServer, settings: &Settings) -> Deployment {
    let name = server.name_any();
    let names = Names::new(&name);
    let spec = &server.spec;
    let media = &spec.storage.media;
    let transcoder = spec.transcoder.as_ref().filter(|t| t.enabled);
    let mut volumes = vec![
        claim_volume(
            "config",
            claim_name(&spec.storage.config, names.config_claim()),
            false,
        ),
        claim_volume(
            "cache",
            claim_name(&spec.storage.cache, names.cache_claim()),
            false,
        ),
        claim_volume("media", media.existing_claim.clone(), media.read_only),
        empty_dir("tmp"),
    ];
    let mut volume_mounts = vec![
        mount("config", CONFIG_PATH, false),
        mount("cache", CACHE_PATH, false),
        mount("media", &media.mount_path, media.read_only),
        mount("tmp", "/tmp", false),
    ];
    let mut environment = vec![
        env("JELLYFIN_DATA_DIR", CONFIG_PATH),
        env("JELLYFIN_CONFIG_DIR", format!("{CONFIG_PATH}/config")),
        env("JELLYFIN_LOG_DIR", format!("{CONFIG_PATH}/log")),
        env("JELLYFIN_CACHE_DIR", CACHE_PATH),
        env(
            "JELLYFIN_PublishedServerUrl",
            format!("https://{}", spec.host),
        ),
    ];
    let mut init_containers = vec![known_proxies_init(settings)];
    if transcoder.is_some() {
        volumes.push(empty_dir("portcullis-bin"));
        volume_mounts.push(mount("portcullis-bin", WRAPPER_DIR, true));
        environment.extend([
            env("JELLYFIN_FFMPEG", format!("{WRAPPER_DIR}/ffmpeg")),
            env(
                "PORTCULLIS_TRANSCODER_URL",
                format!(
                    "http://{}.{}.svc:{TRANSCODER_PORT}",
                    names.transcoder(),
                    server.namespace().unwrap_or_default()
                ),
            ),
            EnvVar {
                name: "PORTCULLIS_TRANSCODER_TOKEN".to_owned(),
                value_from: Some(EnvVarSource {
                    secret_key_ref: Some(SecretKeySelector {
                        name: names.transcoder_token(),
                        key: "token".to_owned(),
                        optional: Some(false),
                    }),
                    ..EnvVarSource::default()
                }),
                ..EnvVar::default()
            },
        ]);
        init_containers.push(wrapper_init(settings));
    }
    let container = Container {
        name: "app".to_owned(),
        image: Some(format!("{}:{}", spec.app.image, spec.app.version)),
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: i32::from(mounts::APP_PORT),
            ..ContainerPort::default()
        }]),
        env: Some(environment),
        volume_mounts: Some(volume_mounts),
        resources: spec.app.resources.clone(),
        readiness_probe: Some(Probe {
            exec: Some(ExecAction {
                command: Some(vec![
                    "sh".to_owned(),
                    "-c".to_owned(),
                    READINESS_SCRIPT.to_owned(),
                ]),
            }),
            period_seconds: Some(10),
            timeout_seconds: Some(5),
            failure_threshold: Some(3),
            ..Probe::default()
        }),
        liveness_probe: Some(http_probe("/health", 30, 6)),
        startup_probe: Some(http_probe("/health", 10, 60)),
        security_context: Some(security::container()),
        ..Container::default()
    };
    Deployment {
        metadata: owned_metadata(server, names.app(), Component::App),
        spec: DeploymentSpec {
            replicas: Some(1),
            selector: selector(&name, Component::App),
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".to_owned()),
                ..DeploymentStrategy::default()
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(selector_labels(&name, Component::App)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(security::pod(security::APP_UID)),
                    init_containers: Some(init_containers),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// An emptyDir volume named `name`.
pub(crate) fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::Int(i32::from(mounts::APP_PORT)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// Writes the cluster's pod networks into Jellyfin's `network.xml` as its known proxies, so
/// Jellyfin believes the edge's X-Forwarded-For (the NetworkPolicy lets only the edge in).
fn known_proxies_init(settings: &Settings) -> Container {
    Container {
        name: "known-proxies".to_owned(),
        image: Some(settings.image.clone()),
        command: Some(vec!["portcullis-operator".to_owned()]),
        args: Some(vec![
            "jellyfin-known-proxies".to_owned(),
            "--network-xml".to_owned(),
            format!("{CONFIG_PATH}/config/network.xml"),
            "--proxies".to_owned(),
            settings.pod_networks.join(","),
        ]),
        volume_mounts: Some(vec![mount("config", CONFIG_PATH, false)]),
        security_context: Some(security::container()),
        ..Container::default()
    }
}

/// Copies `portcullis-ffmpeg` into the app pod as both `ffmpeg` and `ffprobe`.
fn wrapper_init(settings: &Settings) -> Container {
    Container {
        name: "ffmpeg-wrapper".to_owned(),
        image: Some(settings.image.clone()),
        command: Some(vec!["portcullis-ffmpeg".to_owned()]),
        args: Some(vec!["--install".to_owned(), WRAPPER_DIR.to_owned()]),
        volume_mounts: Some(vec![mount("portcullis-bin", WRAPPER_DIR, false)]),
        security_context: Some(security::container()),
        ..Container::default()
    }
}

/// The app's Service: ClusterIP only, so nothing outside the cluster reaches it directly.
pub fn service(server: &MediaServer) -> Service {
    let name = Names::new(&server.name_any()).app();
    cluster_ip_service(server, name, Component::App, "http", mounts::APP_PORT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::test_support::seed_server;

    fn pod(deployment: &Deployment) -> &PodSpec {
        deployment.spec.template.spec.as_ref().unwrap()
    }

    #[test]
    fn the_app_is_replaced_not_rolled_because_its_config_claim_is_read_write_once() {
        let deployment = deployment(&seed_server(), &Settings::default());
        let spec = &deployment.spec;
        assert_eq!(
            spec.strategy.as_ref().unwrap().type_.as_deref(),
            Some("Recreate")
        );
        assert_eq!(spec.replicas, Some(1));
    }

    #[test]
    fn only_a_healthy_body_makes_the_app_ready() {
        let deployment = deployment(&seed_server(), &Settings::default());
        let probe = pod(&deployment).containers[0]
            .readiness_probe
            .as_ref()
            .unwrap();
        let command = probe
            .exec
            .as_ref()
            .unwrap()
            .command
            .as_ref()
            .unwrap()
            .join(" ");
        assert!(
            command.contains("/health") && command.contains("grep -qx Healthy"),
            "{command}"
        );
    }

    #[test]
    fn the_app_runs_non_root_with_the_media_read_only() {
        let deployment = deployment(&seed_server(), &Settings::default());
        let pod = pod(&deployment);
        assert_eq!(
            pod.security_context.as_ref().unwrap().run_as_non_root,
            Some(true)
        );
        let container = &pod.containers[0];
        assert_eq!(
            container
                .security_context
                .as_ref()
                .unwrap()
                .allow_privilege_escalation,
            Some(false)
        );
        let media = container
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.name == "media")
            .unwrap();
        assert_eq!(
            (media.mount_path.as_str(), media.read_only),
            ("/media", Some(true))
        );
        let volume = pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "media")
            .unwrap();
        assert_eq!(
            volume.persistent_volume_claim.as_ref().unwrap().claim_name,
            "nas-media"
        );
    }

    #[test]
    fn with_a_transcoder_the_app_runs_ffmpeg_through_the_wrapper() {
        let deployment = deployment(&seed_server(), &Settings::default());
        let pod = pod(&deployment);
        let env = pod.containers[0].env.as_ref().unwrap();
        let value = |name: &str| {
            env.iter()
                .find(|e| e.name == name)
                .and_then(|e| e.value.clone())
        };
        assert_eq!(
            value("JELLYFIN_FFMPEG").as_deref(),
            Some("/opt/portcullis/bin/ffmpeg")
        );
        assert_eq!(
            value("PORTCULLIS_TRANSCODER_URL").as_deref(),
            Some("http://jellyfin-transcoder.media.svc:8099")
        );
        assert!(
            env.iter()
                .any(|e| e.name == "PORTCULLIS_TRANSCODER_TOKEN" && e.value_from.is_some())
        );
        let inits: Vec<_> = pod
            .init_containers
            .as_ref()
            .unwrap()
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(inits, ["known-proxies", "ffmpeg-wrapper"]);
    }

    #[test]
    fn without_a_transcoder_the_app_keeps_its_own_ffmpeg() {
        let mut server = seed_server();
        server.spec.transcoder = None;
        let deployment = deployment(&server, &Settings::default());
        let env = pod(&deployment).containers[0].env.as_ref().unwrap();
        assert!(env.iter().all(|e| e.name != "JELLYFIN_FFMPEG"));
    }

    #[test]
    fn only_sized_volumes_get_claims_and_existing_claims_are_used_as_they_are() {
        let mut server = seed_server();
        server.spec.storage.config.existing_claim = Some("old-config".to_owned());
        server.spec.storage.config.size = None;
        let claims = claims(&server);
        assert_eq!(claims.len(), 1);
        let cache = &claims[0];
        assert_eq!(cache.metadata.name.as_deref(), Some("jellyfin-cache"));
        let spec = cache.spec.as_ref().unwrap();
        assert_eq!(
            spec.access_modes.as_deref(),
            Some(&["ReadWriteMany".to_owned()][..])
        );
        let deployment = deployment(&server, &Settings::default());
        let config = pod(&deployment)
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "config")
            .unwrap();
        assert_eq!(
            config.persistent_volume_claim.as_ref().unwrap().claim_name,
            "old-config"
        );
    }

    #[test]
    fn the_app_service_is_cluster_ip_only_and_owned_by_the_media_server() {
        let service = service(&seed_server());
        assert_eq!(
            service.spec.as_ref().unwrap().type_.as_deref(),
            Some("ClusterIP")
        );
        let owner = &service.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("MediaServer", Some(true))
        );
    }
}
