//! Pure render functions: a MediaServer and what it references in, Kubernetes objects out.
//!
//! Nothing here talks to the cluster, so every object the operator writes is unit-tested
//! from a spec. One module per owned object family.

pub mod app;
pub mod backup;
pub mod certificate;
pub mod edge;
pub mod edge_config;
pub mod network_policy;
pub mod security;
pub mod transcoder;

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Service, ServicePort, ServiceSpec},
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube::{Resource, ResourceExt};
use portcullis_crds::{AccessPolicy, MediaServer, RateLimit, WafRuleSet};

/// The field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "portcullis-operator";
/// Annotation on every owned object: the hash of what the operator last applied, so an
/// unchanged object is not written again.
pub const APPLIED_HASH_ANNOTATION: &str = "portcullis.dev/applied-hash";
/// Pod template annotation that changes only when the edge must restart.
pub const RESTART_HASH_ANNOTATION: &str = "portcullis.dev/restart-hash";

/// Operator-wide settings that are not part of any resource (from flags).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    /// The image holding `portcullis-proxy`, `portcullis-transcoder` and `portcullis-ffmpeg`.
    pub image: String,
    /// The transcoder's image: the Portcullis binaries next to jellyfin-ffmpeg (the
    /// Dockerfile's `transcoder` target).
    pub transcoder_image: String,
    /// The official OWASP CRS release image the rule files are copied from.
    pub crs_image: String,
    /// The CRS directory in that image (`rules/` and `crs-setup.conf.example`).
    pub crs_path: String,
    /// The ClamAV image (`clamd`, `freshclam`, `clamdscan`) for edges that scan uploads.
    pub clamav_image: String,
    /// The pod networks of the cluster, given to the app as its known proxies so it
    /// believes the edge's X-Forwarded-For (only edge pods can reach it).
    pub pod_networks: Vec<String>,
    /// The namespaces whose pods may scrape the edge's admin port and the transcoder's
    /// `/metrics` (the empty selector: every namespace).
    pub metrics_namespaces: LabelSelector,
    /// The operator's own pods, let in to the edge's admin port to read its bans; `None`
    /// when the operator does not run in the cluster (or is not told where).
    pub operator_pods: Option<OperatorPods>,
    /// How often the edge pods are asked for their bans (RateLimit `status.activeBans`);
    /// zero turns it off.
    pub ban_poll_interval: std::time::Duration,
}

/// Where the operator's pods run, for the NetworkPolicies that must let them in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorPods {
    /// Their namespace.
    pub namespace: String,
    /// Labels that select them in that namespace (none: every pod there).
    pub labels: BTreeMap<String, String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            image: format!(
                "ghcr.io/portcullis-dev/portcullis:{}",
                env!("CARGO_PKG_VERSION")
            ),
            transcoder_image: format!(
                "ghcr.io/portcullis-dev/portcullis-transcoder:{}",
                env!("CARGO_PKG_VERSION")
            ),
            crs_image: "docker.io/owasp/modsecurity-crs:4.18.0-nginx-202509051009".to_owned(),
            crs_path: "/opt/owasp-crs".to_owned(),
            clamav_image: "docker.io/clamav/clamav-debian:1.4.3".to_owned(),
            pod_networks: vec![
                "10.0.0.0/8".to_owned(),
                "172.16.0.0/12".to_owned(),
                "192.168.0.0/16".to_owned(),
            ],
            metrics_namespaces: LabelSelector::default(),
            operator_pods: None,
            ban_poll_interval: std::time::Duration::from_secs(30),
        }
    }
}

/// A referenced resource, by name, with its spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Named<T> {
    /// The resource's name.
    pub name: String,
    /// The resource.
    pub resource: T,
}

/// Everything a MediaServer references, fetched and checked.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resolved {
    /// The access policy.
    pub access_policy: Option<Named<AccessPolicy>>,
    /// The WAF rule set.
    pub waf_rule_set: Option<Named<WafRuleSet>>,
    /// The rate limits, in the MediaServer's order.
    pub rate_limits: Vec<Named<RateLimit>>,
}

/// The names of a MediaServer's children.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    base: String,
}

impl Names {
    /// The names of the children of the MediaServer called `name`.
    pub fn new(name: &str) -> Self {
        Self {
            base: name.to_owned(),
        }
    }

    /// The app's Deployment, Service and NetworkPolicy.
    pub fn app(&self) -> String {
        format!("{}-app", self.base)
    }

    /// The app's configuration claim.
    pub fn config_claim(&self) -> String {
        format!("{}-config", self.base)
    }

    /// The app's cache claim.
    pub fn cache_claim(&self) -> String {
        format!("{}-cache", self.base)
    }

    /// The edge's Deployment, Service and NetworkPolicy.
    pub fn edge(&self) -> String {
        format!("{}-edge", self.base)
    }

    /// The ConfigMap holding the edge document.
    pub fn edge_config(&self) -> String {
        format!("{}-edge-config", self.base)
    }

    /// The Secret holding the edge's session signing keys.
    pub fn session_keys(&self) -> String {
        format!("{}-edge-session", self.base)
    }

    /// The transcoder's Deployment, Service and NetworkPolicy.
    pub fn transcoder(&self) -> String {
        format!("{}-transcoder", self.base)
    }

    /// The Secret holding the token the app uses to call the transcoder.
    pub fn transcoder_token(&self) -> String {
        format!("{}-transcoder-token", self.base)
    }

    /// The CronJob taking backups.
    pub fn backup(&self) -> String {
        format!("{}-backup", self.base)
    }

    /// The Job restoring backup `from`.
    pub fn restore(&self, from: &str) -> String {
        format!("{}-restore-{}", self.base, backup::restore_suffix(from))
    }
}

/// The component a pod belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    /// The media server application.
    App,
    /// The edge proxy.
    Edge,
    /// The transcoder.
    Transcoder,
    /// The backup CronJob and its Jobs.
    Backup,
    /// A restore Job.
    Restore,
}

impl Component {
    /// The value of `app.kubernetes.io/component`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::Edge => "edge",
            Self::Transcoder => "transcoder",
            Self::Backup => "backup",
            Self::Restore => "restore",
        }
    }
}

/// The labels that select a component's pods.
pub fn selector_labels(server: &str, component: Component) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "portcullis".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), server.to_owned()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.as_str().to_owned(),
        ),
    ])
}

/// The selector of a component's pods.
pub fn selector(server: &str, component: Component) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(server, component)),
        ..LabelSelector::default()
    }
}

/// Labels on every object the operator owns: the selector labels and `managed-by`.
pub fn labels(server: &str, component: Component) -> BTreeMap<String, String> {
    let mut labels = selector_labels(server, component);
    labels.insert(
        "app.kubernetes.io/managed-by".to_owned(),
        FIELD_MANAGER.to_owned(),
    );
    labels
}

/// A ClusterIP Service named `name` in front of `component`'s pods, with one TCP port whose
/// name is also the container port it targets.
pub fn cluster_ip_service(
    server: &MediaServer,
    name: String,
    component: Component,
    port_name: &str,
    port: u16,
) -> Service {
    Service {
        metadata: owned_metadata(server, name, component),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(&server.name_any(), component)),
            ports: Some(vec![ServicePort {
                name: Some(port_name.to_owned()),
                port: i32::from(port),
                target_port: Some(IntOrString::String(port_name.to_owned())),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// Metadata of an object owned by `server`, in its namespace, controlled by it.
pub fn owned_metadata(server: &MediaServer, name: String, component: Component) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: server.metadata.namespace.clone(),
        labels: Some(labels(&server.name_any(), component)),
        owner_references: server.controller_owner_ref(&()).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! MediaServers for render tests.

    use portcullis_crds::{MediaServer, MediaServerSpec};

    /// The seed example, as the apiserver stores it after defaulting.
    pub fn seed_server() -> MediaServer {
        let spec: MediaServerSpec = serde_saphyr::from_str(
            r"
host: media.example.org
tls: {secretName: media-tls}
storage:
  config: {size: 10Gi}
  cache: {size: 50Gi, accessMode: ReadWriteMany}
  media: {existingClaim: nas-media}
accessPolicyRef: {name: family}
wafRuleSetRef: {name: crs-pl1}
rateLimitRefs: [{name: login}]
transcoder:
  gpu: {product: Tesla-P4}
",
        )
        .expect("the seed spec parses");
        let mut server = MediaServer::new("jellyfin", spec);
        server.metadata.namespace = Some("media".to_owned());
        server.metadata.uid = Some("0c0ffee0-0000-4000-8000-000000000001".to_owned());
        server.metadata.generation = Some(3);
        server
    }
}
