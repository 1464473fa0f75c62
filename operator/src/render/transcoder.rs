//! The transcoder: a Deployment that asks for an NVIDIA GPU (when the MediaServer does),
//! its Service, and the Secret with the token the app presents to it.

use std::collections::BTreeMap;

use k8s_openapi::{
    ByteString,
    api::{
        apps::v1::{Deployment, DeploymentSpec},
        core::v1::{
            Affinity, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, HTTPGetAction,
            NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, PodSpec,
            PodTemplateSpec, Probe, ResourceRequirements, Secret, SecretVolumeSource, Service,
            Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity, apis::meta::v1::ObjectMeta, util::intstr::IntOrString,
    },
};
use kube::ResourceExt;
use portcullis_crds::{
    MediaServer,
    media_server::{Fallback, TranscoderSpec},
};

use super::{
    Component, Names, Settings,
    app::{CACHE_PATH, claim_name},
    cluster_ip_service, owned_metadata, security, selector, selector_labels,
};

/// The transcoder's port.
pub const TRANSCODER_PORT: u16 = 8099;
/// Where the ffmpeg wrapper is installed in the app pod.
pub const WRAPPER_DIR: &str = "/opt/portcullis/bin";
/// The extended resource the NVIDIA device plugin advertises.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// The GPU Feature Discovery label naming the GPU model.
pub const GPU_PRODUCT_LABEL: &str = "nvidia.com/gpu.product";
const TOKEN_DIR: &str = "/etc/portcullis/transcoder";

/// The transcoder of `server`, when it has one that is enabled.
pub fn enabled(server: &MediaServer) -> Option<&TranscoderSpec> {
    server.spec.transcoder.as_ref().filter(|t| t.enabled)
}

/// The Secret holding the token; `token` is kept from the cluster or generated once by the
/// caller.
pub fn token_secret(server: &MediaServer, token: &ByteString) -> Secret {
    Secret {
        metadata: owned_metadata(
            server,
            Names::new(&server.name_any()).transcoder_token(),
            Component::Transcoder,
        ),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([("token".to_owned(), token.clone())])),
        ..Secret::default()
    }
}

fn volume_mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(read_only),
        ..VolumeMount::default()
    }
}

/// The transcoder Deployment. Media and cache are mounted at the same paths as in the app,
/// so the paths in ffmpeg's arguments mean the same files on both sides.
pub fn deployment(
    server: &MediaServer,
    transcoder: &TranscoderSpec,
    settings: &Settings,
) -> Deployment {
    let name = server.name_any();
    let names = Names::new(&name);
    let storage = &server.spec.storage;
    let media = &storage.media;
    let mut resources = transcoder.resources.clone().unwrap_or_default();
    let mut env = Vec::new();
    let mut affinity = None;
    let mut runtime_class_name = None;
    if let Some(gpu) = &transcoder.gpu {
        let count = Quantity(gpu.count.to_string());
        resources
            .limits
            .get_or_insert_with(BTreeMap::new)
            .insert(GPU_RESOURCE.to_owned(), count);
        runtime_class_name = Some(gpu.runtime_class_name.clone());
        env.push(EnvVar {
            name: "NVIDIA_DRIVER_CAPABILITIES".to_owned(),
            value: Some("compute,video,utility".to_owned()),
            ..EnvVar::default()
        });
        affinity = gpu.product.as_ref().map(|product| Affinity {
            node_affinity: Some(NodeAffinity {
                required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                    node_selector_terms: vec![NodeSelectorTerm {
                        match_expressions: Some(vec![NodeSelectorRequirement {
                            key: GPU_PRODUCT_LABEL.to_owned(),
                            operator: "In".to_owned(),
                            values: Some(vec![product.clone()]),
                        }]),
                        ..NodeSelectorTerm::default()
                    }],
                }),
                ..NodeAffinity::default()
            }),
            ..Affinity::default()
        });
    }
    let fallback = match transcoder.fallback {
        Fallback::Cpu => "cpu",
        Fallback::None => "none",
    };
    let container = Container {
        name: "transcoder".to_owned(),
        image: Some(
            transcoder
                .image
                .clone()
                .unwrap_or_else(|| settings.transcoder_image.clone()),
        ),
        command: Some(vec!["portcullis-transcoder".to_owned()]),
        args: Some(vec![
            format!("--listen=0.0.0.0:{TRANSCODER_PORT}"),
            format!("--token-file={TOKEN_DIR}/token"),
            format!("--media-dir={}", media.mount_path),
            format!("--transcode-dir={CACHE_PATH}"),
            format!("--max-jobs={}", transcoder.max_concurrent_jobs),
            format!("--fallback={fallback}"),
        ]),
        env: (!env.is_empty()).then_some(env),
        ports: Some(vec![ContainerPort {
            name: Some("transcoder".to_owned()),
            container_port: i32::from(TRANSCODER_PORT),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        resources: Some(resources).filter(|r| r != &ResourceRequirements::default()),
        volume_mounts: Some(vec![
            volume_mount("media", &media.mount_path, true),
            volume_mount("cache", CACHE_PATH, false),
            volume_mount("token", TOKEN_DIR, true),
            volume_mount("tmp", "/tmp", false),
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/readyz".to_owned()),
                port: IntOrString::String("transcoder".to_owned()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(10),
            ..Probe::default()
        }),
        security_context: Some(security::container()),
        ..Container::default()
    };
    let claim = |volume_name: &str, claim_name: String, read_only: bool| Volume {
        name: volume_name.to_owned(),
        persistent_volume_claim: Some(
            k8s_openapi::api::core::v1::PersistentVolumeClaimVolumeSource {
                claim_name,
                read_only: Some(read_only),
            },
        ),
        ..Volume::default()
    };
    Deployment {
        metadata: owned_metadata(server, names.transcoder(), Component::Transcoder),
        spec: DeploymentSpec {
            replicas: Some(transcoder.replicas),
            selector: selector(&name, Component::Transcoder),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(selector_labels(&name, Component::Transcoder)),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    runtime_class_name,
                    affinity,
                    security_context: Some(security::pod(security::APP_UID)),
                    containers: vec![container],
                    volumes: Some(vec![
                        claim("media", media.existing_claim.clone(), true),
                        claim(
                            "cache",
                            claim_name(&storage.cache, names.cache_claim()),
                            false,
                        ),
                        Volume {
                            name: "token".to_owned(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(names.transcoder_token()),
                                default_mode: Some(0o440),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "tmp".to_owned(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// The transcoder's Service, reached only by the app (see the NetworkPolicy). It is
/// headless: its name resolves to every ready replica, and the ffmpeg wrapper sends each
/// job to the least loaded one (kube-proxy would pick at random).
pub fn service(server: &MediaServer) -> Service {
    let name = Names::new(&server.name_any()).transcoder();
    let mut service = cluster_ip_service(
        server,
        name,
        Component::Transcoder,
        "transcoder",
        TRANSCODER_PORT,
    );
    if let Some(spec) = service.spec.as_mut() {
        spec.cluster_ip = Some("None".to_owned());
    }
    service
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::test_support::seed_server;

    fn pod_of(server: &MediaServer) -> PodSpec {
        let transcoder = enabled(server).unwrap();
        deployment(server, transcoder, &Settings::default())
            .spec
            .template
            .spec
            .unwrap()
    }

    #[test]
    fn a_gpu_transcoder_asks_for_the_gpu_the_runtime_class_and_the_product() {
        let pod = pod_of(&seed_server());
        assert_eq!(pod.runtime_class_name.as_deref(), Some("nvidia"));
        let limits = pod.containers[0]
            .resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref()
            .unwrap();
        assert_eq!(limits[GPU_RESOURCE], Quantity("1".to_owned()));
        let terms = &pod
            .affinity
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        let requirement = &terms[0].match_expressions.as_ref().unwrap()[0];
        assert_eq!(
            (requirement.key.as_str(), requirement.values.as_deref()),
            (GPU_PRODUCT_LABEL, Some(&["Tesla-P4".to_owned()][..]))
        );
        let env = pod.containers[0].env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "NVIDIA_DRIVER_CAPABILITIES"
            && e.value.as_deref() == Some("compute,video,utility")));
    }

    #[test]
    fn media_and_cache_are_mounted_where_the_app_mounts_them() {
        let pod = pod_of(&seed_server());
        let mounts = pod.containers[0].volume_mounts.as_ref().unwrap();
        let path = |name: &str| {
            mounts
                .iter()
                .find(|m| m.name == name)
                .unwrap()
                .mount_path
                .clone()
        };
        assert_eq!(
            (path("media").as_str(), path("cache").as_str()),
            ("/media", "/cache")
        );
        let volumes = pod.volumes.unwrap();
        let cache = volumes.iter().find(|v| v.name == "cache").unwrap();
        assert_eq!(
            cache.persistent_volume_claim.as_ref().unwrap().claim_name,
            "jellyfin-cache"
        );
    }

    #[test]
    fn a_cpu_only_transcoder_asks_for_no_gpu() {
        let mut server = seed_server();
        server.spec.transcoder.as_mut().unwrap().gpu = None;
        let pod = pod_of(&server);
        assert!(pod.runtime_class_name.is_none() && pod.affinity.is_none());
        assert!(pod.containers[0].resources.is_none());
        assert!(
            pod.containers[0]
                .args
                .as_ref()
                .unwrap()
                .contains(&"--fallback=cpu".to_owned())
        );
    }

    #[test]
    fn a_disabled_transcoder_is_not_rendered() {
        let mut server = seed_server();
        server.spec.transcoder.as_mut().unwrap().enabled = false;
        assert!(enabled(&server).is_none());
    }

    #[test]
    fn the_service_is_headless_and_the_image_is_the_transcoder_one() {
        let server = seed_server();
        let spec = service(&server).spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        let mut with_default_image = server.clone();
        with_default_image.spec.transcoder.as_mut().unwrap().image = None;
        let pod = pod_of(&with_default_image);
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some(Settings::default().transcoder_image.as_str())
        );
    }
}
