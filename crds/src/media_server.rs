//! `MediaServer`: a Jellyfin instance with its hardened edge and optional GPU transcoder.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::ResourceRequirements,
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::Condition},
};
use kube::{CustomResource, KubeSchema};
use regex::Regex;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    backup::{BackupSpec, BackupStatus, RestoreSpec, RestoreStatus, check_schedule},
    common::{ByteSize, Cidr, DomainName, Duration, LocalObjectReference},
    rate_limit::HttpMethod,
    validation::{Problems, Validate, ValidationErrors},
};

/// A self-hosted media server exposed to the internet only through Portcullis' edge.
///
/// The operator runs the application with a ClusterIP Service that only the edge may reach,
/// the edge proxy in front of it with the referenced access policy, WAF rule set and rate
/// limits, and, when asked, a transcoder on a GPU node.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "MediaServer",
    namespaced,
    doc = "A Jellyfin media server exposed to the internet only through the Portcullis edge, with an optional GPU transcoder.",
    status = "MediaServerStatus",
    shortname = "ms",
    category = "portcullis",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Host","type":"string","jsonPath":".spec.host"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Backup","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"BackupReady\")].status"}"#,
    printcolumn = r#"{"name":"Last Backup","type":"date","priority":1,"jsonPath":".status.backup.lastSuccessTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[x_kube(validation = Rule::new("!has(self.transcoder) || !self.transcoder.enabled || has(self.storage.cache.existingClaim) || (has(self.storage.cache.accessMode) && self.storage.cache.accessMode == 'ReadWriteMany')").message("the transcoder shares the cache volume with the app: spec.storage.cache.accessMode must be ReadWriteMany (or use an existingClaim that is)").reason(Reason::FieldValueInvalid).field_path(".storage.cache.accessMode"))]
#[x_kube(validation = Rule::new("!has(self.restore) || has(self.backup)").message("a restore reads from spec.backup.destination: set spec.backup too").reason(Reason::FieldValueRequired).field_path(".backup"))]
#[serde(rename_all = "camelCase")]
pub struct MediaServerSpec {
    /// The media server application and its container image.
    #[serde(default)]
    pub app: AppSpec,
    /// The public host name users type in their browser, e.g. `media.example.org`.
    /// Requests for any other host are refused by the edge.
    pub host: DomainName,
    /// The certificate the edge presents for `host`.
    pub tls: TlsSpec,
    /// Volumes for the application's configuration, cache and media library.
    pub storage: StorageSpec,
    /// The edge proxy that is the only way in from outside the cluster.
    #[serde(default)]
    pub edge: EdgeSpec,
    /// The AccessPolicy (same namespace) deciding who may reach the app: countries,
    /// e-mail addresses, one-time codes, sessions. Without one, the edge lets every
    /// request that passes the other layers through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_policy_ref: Option<LocalObjectReference>,
    /// The WafRuleSet (same namespace) the edge runs on every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waf_rule_set_ref: Option<LocalObjectReference>,
    /// The RateLimits (same namespace) the edge enforces, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub rate_limit_refs: Vec<LocalObjectReference>,
    /// A transcoder that runs the app's ffmpeg jobs, on a GPU when one is available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcoder: Option<TranscoderSpec>,
    /// Scheduled backups of the configuration volume (its SQLite databases copied with
    /// SQLite's online backup, metadata and plugin configuration included; caches, logs and
    /// media left out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
    /// Put a backup back into the configuration volume (the app is stopped meanwhile).
    /// Remove the field once status.restore reports the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreSpec>,
}

/// The media server application.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AppSpec {
    /// Which application this is. Only Jellyfin is supported today.
    #[serde(default)]
    pub kind: AppKind,
    /// The container image without its tag.
    #[serde(default = "default_app_image")]
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// The image tag, i.e. the application version.
    #[serde(default = "default_app_version")]
    #[schemars(length(min = 1, max = 128))]
    pub version: String,
    /// CPU and memory for the application container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

impl Default for AppSpec {
    fn default() -> Self {
        Self {
            kind: AppKind::default(),
            image: default_app_image(),
            version: default_app_version(),
            resources: None,
        }
    }
}

fn default_app_image() -> String {
    "docker.io/jellyfin/jellyfin".to_owned()
}

fn default_app_version() -> String {
    "10.10.7".to_owned()
}

/// The kinds of media server Portcullis knows how to run and protect.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AppKind {
    /// Jellyfin (<https://jellyfin.org>).
    #[default]
    Jellyfin,
}

/// Where the edge's certificate comes from: exactly one of `secretName` or `issuerRef`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.secretName) != has(self.issuerRef)").message("set exactly one of secretName or issuerRef"))]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A Secret of type `kubernetes.io/tls` (keys `tls.crt` and `tls.key`) in the same
    /// namespace, managed by you.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: Option<String>,
    /// A cert-manager issuer; the operator requests a Certificate for `host` from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerReference>,
}

/// A cert-manager Issuer or ClusterIssuer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IssuerReference {
    /// The issuer's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (same namespace) or `ClusterIssuer`.
    #[serde(default)]
    pub kind: IssuerKind,
    /// The issuer's API group.
    #[serde(default = "default_issuer_group")]
    #[schemars(length(min = 1, max = 253))]
    pub group: String,
}

fn default_issuer_group() -> String {
    "cert-manager.io".to_owned()
}

/// The kind of a cert-manager issuer.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IssuerKind {
    /// A namespaced Issuer in the MediaServer's namespace.
    #[default]
    Issuer,
    /// A cluster-wide ClusterIssuer.
    ClusterIssuer,
}

/// The application's volumes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// The application's configuration and database (mounted at `/config`).
    #[serde(default = "default_config_volume")]
    pub config: VolumeSpec,
    /// The application's cache, including transcoded segments (mounted at `/cache`).
    #[serde(default = "default_cache_volume")]
    pub cache: VolumeSpec,
    /// The media library.
    pub media: MediaVolumeSpec,
}

fn default_config_volume() -> VolumeSpec {
    VolumeSpec::sized("5Gi")
}

fn default_cache_volume() -> VolumeSpec {
    VolumeSpec::sized("20Gi")
}

/// A volume: either a claim you already have, or one the operator creates for you.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.existingClaim) != has(self.size)").message("set exactly one of existingClaim or size"))]
#[x_kube(validation = Rule::new("!has(self.existingClaim) || (!has(self.storageClassName) && !has(self.accessMode))").message("storageClassName and accessMode only apply to a claim the operator creates (size)"))]
#[serde(rename_all = "camelCase")]
pub struct VolumeSpec {
    /// The name of an existing PersistentVolumeClaim in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub existing_claim: Option<String>,
    /// The size of a claim the operator creates, e.g. `10Gi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
    /// The storage class of a claim the operator creates; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// The access mode of a claim the operator creates; ReadWriteOnce when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_mode: Option<AccessMode>,
}

impl VolumeSpec {
    fn sized(size: &str) -> Self {
        Self {
            existing_claim: None,
            size: Some(Quantity(size.to_owned())),
            storage_class_name: None,
            access_mode: None,
        }
    }
}

/// How a volume may be mounted.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AccessMode {
    /// Mounted read-write by one node.
    #[default]
    ReadWriteOnce,
    /// Mounted read-write by many nodes (needed to share with the transcoder).
    ReadWriteMany,
    /// Mounted read-only by many nodes.
    ReadOnlyMany,
}

/// The media library volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MediaVolumeSpec {
    /// The name of an existing PersistentVolumeClaim holding the library.
    #[schemars(length(min = 1, max = 253))]
    pub existing_claim: String,
    /// Where the library is mounted in the app (and the transcoder).
    #[serde(default = "default_media_path")]
    #[schemars(regex(pattern = r"^/[^\x00]*$"), length(max = 1024))]
    pub mount_path: String,
    /// Mount the library read-only, so a compromised app cannot alter or encrypt it.
    #[serde(default = "default_true")]
    pub read_only: bool,
}

fn default_media_path() -> String {
    "/media".to_owned()
}

const fn default_true() -> bool {
    true
}

/// The edge proxy deployment and how it is exposed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EdgeSpec {
    /// How many edge pods run; spread over nodes when there are several.
    #[serde(default = "default_edge_replicas")]
    #[schemars(range(min = 1, max = 20))]
    pub replicas: i32,
    /// The edge container image; the operator's own version when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// The Service that exposes the edge.
    #[serde(default)]
    pub service: EdgeServiceSpec,
    /// CPU and memory for the edge container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Proxies in front of the edge (e.g. a load balancer) whose X-Forwarded-For entries
    /// are believed. Addresses from anywhere else are taken as the client itself.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub trusted_proxies: Vec<Cidr>,
    /// The edge sits behind Cloudflare: Cloudflare's published ranges are trusted for the
    /// client address and its country header.
    #[serde(default)]
    pub behind_cloudflare: bool,
    /// Expect the PROXY protocol (v1 or v2) from the load balancer on the public ports.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Seconds an edge pod is given to finish requests in flight when it stops.
    #[serde(default = "default_grace_seconds")]
    #[schemars(range(min = 1, max = 3600))]
    pub termination_grace_period_seconds: i64,
    /// Scan uploads for malware with ClamAV before the application gets them; off when
    /// absent. The operator runs clamd beside the edge (a sidecar with its signature
    /// database, kept fresh by freshclam).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub antivirus: Option<AntivirusSpec>,
}

impl Default for EdgeSpec {
    fn default() -> Self {
        Self {
            replicas: default_edge_replicas(),
            image: None,
            service: EdgeServiceSpec::default(),
            resources: None,
            trusted_proxies: Vec::new(),
            behind_cloudflare: false,
            proxy_protocol: false,
            termination_grace_period_seconds: default_grace_seconds(),
            antivirus: None,
        }
    }
}

/// Upload scanning: which request bodies the edge streams to clamd, and what happens to
/// bodies it cannot scan. A body is forwarded to the application only after a clean verdict.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AntivirusSpec {
    /// Regular expressions on the request path (percent-decoded, matched without regard to
    /// case, as Jellyfin routes); every path when empty. The default lists Jellyfin's
    /// uploads: subtitles, item images, user avatars and the splash screen.
    #[serde(default = "default_scan_paths")]
    #[schemars(length(max = 64))]
    pub paths: Vec<String>,
    /// Methods whose bodies are scanned.
    #[serde(default = "default_scan_methods")]
    #[schemars(length(min = 1, max = 7))]
    pub methods: Vec<HttpMethod>,
    /// Media types scanned (`image/png`, or `image/*`); every type when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub content_types: Vec<String>,
    /// The largest body scanned. The edge holds a scanned body in memory until the
    /// verdict, so this bounds the memory of each upload in flight; a larger body is
    /// unscannable.
    #[serde(default = "default_max_scan_size")]
    pub max_scan_size: ByteSize,
    /// What happens to a body that cannot be scanned (over `maxScanSize`, an encrypted
    /// archive, clamd down or too slow): `Block` refuses it, `Allow` forwards it and logs.
    #[serde(default)]
    pub on_unscannable: UnscannableAction,
    /// The longest clamd may take over any one step of a scan: connecting, taking the next
    /// part of the body, giving its verdict. A slow client is not held against it; a clamd
    /// that stops answering is, and the body is then unscannable.
    #[serde(default = "default_scan_timeout")]
    pub timeout: Duration,
    /// The clamd container beside the edge.
    #[serde(default)]
    pub clamd: ClamdSpec,
}

impl Default for AntivirusSpec {
    fn default() -> Self {
        Self {
            paths: default_scan_paths(),
            methods: default_scan_methods(),
            content_types: Vec::new(),
            max_scan_size: default_max_scan_size(),
            on_unscannable: UnscannableAction::default(),
            timeout: default_scan_timeout(),
            clamd: ClamdSpec::default(),
        }
    }
}

/// Jellyfin's upload endpoints (a base URL before them is allowed).
pub const JELLYFIN_UPLOAD_PATHS: [&str; 4] = [
    "/Videos/[^/]+/Subtitles$",
    "/Items/[^/]+/Images/[^/]+(/[^/]+)?$",
    "/Users/[^/]+/Images/[^/]+(/[^/]+)?$|/UserImage$",
    "/Branding/Splashscreen$",
];

fn default_scan_paths() -> Vec<String> {
    JELLYFIN_UPLOAD_PATHS.map(str::to_owned).to_vec()
}

fn default_scan_methods() -> Vec<HttpMethod> {
    vec![HttpMethod::POST, HttpMethod::PUT]
}

const fn default_max_scan_size() -> ByteSize {
    ByteSize::from_mib(25)
}

const fn default_scan_timeout() -> Duration {
    Duration::from_secs(30)
}

/// What the edge does with a body it cannot scan.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UnscannableAction {
    /// Refuse it: 413 over the size limit, 403 for an encrypted archive, 503 when clamd is
    /// down or too slow.
    #[default]
    Block,
    /// Forward it unscanned, and log and count why.
    Allow,
}

/// The clamd sidecar.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClamdSpec {
    /// The image with `clamd` and `freshclam`; `clamav/clamav-debian` of a pinned
    /// release when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// CPU and memory for clamd (the full signature database needs about 1.5 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// An existing PersistentVolumeClaim (same namespace) for the signature database, so
    /// that it survives pod restarts; a scratch volume, filled anew at each start, when
    /// unset. With several edge replicas it must be ReadWriteMany.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub database_claim: Option<String>,
}

const fn default_edge_replicas() -> i32 {
    2
}

const fn default_grace_seconds() -> i64 {
    30
}

/// The edge's Service.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(validation = Rule::new("self.type != 'ClusterIP' || (!has(self.httpsNodePort) && !has(self.httpNodePort))").message("node ports need type NodePort or LoadBalancer"))]
#[serde(rename_all = "camelCase")]
pub struct EdgeServiceSpec {
    /// How the Service is exposed.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// A fixed node port for HTTPS; chosen by the cluster when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub https_node_port: Option<i32>,
    /// A fixed node port for the plain-HTTP redirect; chosen by the cluster when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 30000, max = 32767))]
    pub http_node_port: Option<i32>,
    /// Annotations for the Service, e.g. for a cloud load balancer.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// How a Service is exposed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ServiceType {
    /// A cloud or bare-metal (e.g. MetalLB) load balancer.
    #[default]
    LoadBalancer,
    /// A port on every node.
    NodePort,
    /// Reachable inside the cluster only (e.g. behind an existing ingress or tunnel).
    ClusterIP,
}

/// The transcoder that runs the app's ffmpeg jobs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("has(self.gpu) || self.fallback == 'Cpu'").message("a transcoder without a gpu can only work with fallback: Cpu"))]
#[serde(rename_all = "camelCase")]
pub struct TranscoderSpec {
    /// Run the app's ffmpeg jobs on the transcoder; when false the app transcodes itself.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How many transcoder pods run; jobs go to the least loaded one.
    #[serde(default = "default_transcoder_replicas")]
    #[schemars(range(min = 1, max = 16))]
    pub replicas: i32,
    /// The transcoder container image; the operator's own version when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
    /// The GPU each transcoder pod asks for; none means CPU only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuSpec>,
    /// What to do when the GPU is busy, absent or failing: transcode on the CPU, or refuse.
    #[serde(default)]
    pub fallback: Fallback,
    /// The most jobs one transcoder pod runs at once.
    #[serde(default = "default_max_jobs")]
    #[schemars(range(min = 1, max = 64))]
    pub max_concurrent_jobs: i32,
    /// CPU and memory for the transcoder container (CPU fallback needs plenty of CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

const fn default_transcoder_replicas() -> i32 {
    1
}

const fn default_max_jobs() -> i32 {
    2
}

/// The NVIDIA GPU a transcoder pod asks for through the NVIDIA device plugin.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GpuSpec {
    /// How many `nvidia.com/gpu` each pod requests.
    #[serde(default = "default_gpu_count")]
    #[schemars(range(min = 1, max = 8))]
    pub count: i32,
    /// Only schedule on nodes whose GPU Feature Discovery label `nvidia.com/gpu.product`
    /// has this value, e.g. `Tesla-P4`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"))]
    pub product: Option<String>,
    /// The RuntimeClass that exposes the GPU to containers.
    #[serde(default = "default_runtime_class")]
    #[schemars(length(min = 1, max = 253))]
    pub runtime_class_name: String,
}

const fn default_gpu_count() -> i32 {
    1
}

fn default_runtime_class() -> String {
    "nvidia".to_owned()
}

/// What the transcoder does when the GPU cannot take a job.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fallback {
    /// Rewrite hardware ffmpeg arguments to software ones and transcode on the CPU.
    #[default]
    Cpu,
    /// Refuse the job; the app reports a playback error.
    None,
}

/// What the operator last observed of a MediaServer.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MediaServerStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling and Stalled, in the standard Kubernetes shape.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// The public address of the app.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The hash of the edge document in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,
    /// The application's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<ComponentStatus>,
    /// The edge's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<ComponentStatus>,
    /// The transcoder's pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcoder: Option<ComponentStatus>,
    /// The backups: last outcome, size, duration, and the list to restore from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,
    /// The last restore requested by spec.restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore: Option<RestoreStatus>,
}

/// The readiness of one component's Deployment.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Pods wanted.
    pub replicas: i32,
    /// Pods ready.
    pub ready_replicas: i32,
}

/// The grammar of a Kubernetes resource quantity (`10Gi`, `500M`, `1.5T`).
const QUANTITY_PATTERN: &str =
    r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][-+]?[0-9]+)?$";

fn check_volume(problems: &mut Problems, field: &str, volume: &VolumeSpec, quantity: &Regex) {
    if let Some(size) = &volume.size
        && !quantity.is_match(&size.0)
    {
        problems.add(
            format!("{field}.size"),
            format!("{:?} is not a quantity such as 10Gi", size.0),
        );
    }
}

impl Validate for MediaServerSpec {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut problems = Problems::default();
        let quantity = Regex::new(QUANTITY_PATTERN).expect("the quantity pattern is valid");
        check_volume(
            &mut problems,
            "spec.storage.config",
            &self.storage.config,
            &quantity,
        );
        check_volume(
            &mut problems,
            "spec.storage.cache",
            &self.storage.cache,
            &quantity,
        );
        let media_path = &self.storage.media.mount_path;
        problems.require(
            !["/config", "/cache"].iter().any(|reserved| {
                media_path == reserved || media_path.starts_with(&format!("{reserved}/"))
            }),
            "spec.storage.media.mountPath",
            format!("{media_path:?} is inside /config or /cache, which the app already uses"),
        );
        for (i, reference) in self.rate_limit_refs.iter().enumerate() {
            problems.require(
                !self.rate_limit_refs[..i].contains(reference),
                format!("spec.rateLimitRefs[{i}]"),
                format!("RateLimit {:?} is listed twice", reference.name),
            );
        }
        for (i, proxy) in self.edge.trusted_proxies.iter().enumerate() {
            problems.require(
                proxy.0.prefix_len() != 0,
                format!("spec.edge.trustedProxies[{i}]"),
                format!("{proxy} trusts every address, so any client could forge its own address"),
            );
        }
        if let Some(backup) = &self.backup {
            problems.check(check_schedule(&backup.schedule), "spec.backup.schedule");
            problems.require(
                backup.retention.keep_last.is_some() || backup.retention.max_age.is_some(),
                "spec.backup.retention",
                "set keepLast, maxAge or both",
            );
        }
        problems.require(
            self.restore.is_none() || self.backup.is_some(),
            "spec.backup",
            "a restore reads from spec.backup.destination: set spec.backup too",
        );
        if let Some(antivirus) = &self.edge.antivirus {
            for (i, pattern) in antivirus.paths.iter().enumerate() {
                problems.check(
                    Regex::new(pattern)
                        .map(drop)
                        .map_err(|e| format!("not a valid regular expression: {e}")),
                    format!("spec.edge.antivirus.paths[{i}]"),
                );
            }
            for (i, media_type) in antivirus.content_types.iter().enumerate() {
                problems.require(
                    crate::edge::valid_media_type(media_type),
                    format!("spec.edge.antivirus.contentTypes[{i}]"),
                    format!("{media_type:?} is not a media type such as image/png or image/*"),
                );
            }
            problems.require(
                antivirus.max_scan_size.bytes() > 0
                    && antivirus.max_scan_size.bytes() <= crate::edge::MAX_SCAN_SIZE.bytes(),
                "spec.edge.antivirus.maxScanSize",
                format!(
                    "must be more than 0 and at most {}",
                    crate::edge::MAX_SCAN_SIZE
                ),
            );
            problems.require(
                !antivirus.timeout.is_zero(),
                "spec.edge.antivirus.timeout",
                "must be longer than 0s",
            );
        }
        problems.finish()
    }
}
