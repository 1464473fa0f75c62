//! The Helm chart and the examples on the real control plane: the chart lints and renders,
//! its RBAC is exactly what the operator uses and enough to run it, every example reports
//! Ready (or why not) in the kstatus shape `kubectl wait`, Argo CD and Flux read, and the
//! dashboard only queries metrics the code exports.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use k8s_openapi::{
    api::{
        apps::v1::Deployment,
        batch::v1::CronJob,
        coordination::v1::Lease,
        core::v1::Secret,
        events::v1::Event,
        networking::v1::NetworkPolicy,
        rbac::v1::{ClusterRole, PolicyRule, Role},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use kube::api::{Patch, PatchParams};
use portcullis_crds::MediaServer;
use regex::Regex;
use serde_json::{Value, json};

use crate::util::{
    OperatorProcess, TestNamespace, can_i, condition, eventually, kubeconfig_for_service_account,
    root, run_ok, tool,
};

const CHART: &str = "charts/portcullis";
const TIMEOUT: Duration = Duration::from_secs(120);

/// Every (API group, resource, verb) the operator uses, each with where in the code it does.
/// The chart's ClusterRole must grant exactly these.
const OPERATOR_RULES: &[(&str, &str, &[&str])] = &[
    // controller/mod.rs watches the four kinds (list, watch); lib.rs lists MediaServers at
    // start-up; resolve.rs gets the referenced policies.
    ("portcullis.dev", "mediaservers", &["get", "list", "watch"]),
    (
        "portcullis.dev",
        "accesspolicies",
        &["get", "list", "watch"],
    ),
    ("portcullis.dev", "wafrulesets", &["get", "list", "watch"]),
    ("portcullis.dev", "ratelimits", &["get", "list", "watch"]),
    // media_server.rs write_status and policy.rs reconcile: patch_status (server-side apply).
    ("portcullis.dev", "mediaservers/status", &["patch"]),
    ("portcullis.dev", "accesspolicies/status", &["patch"]),
    ("portcullis.dev", "wafrulesets/status", &["patch"]),
    ("portcullis.dev", "ratelimits/status", &["patch"]),
    // Controller::owns (list, watch); apply.rs reads before it applies (get) and applies
    // (patch, and create for an apply that creates); delete_owned deletes the transcoder's
    // Deployment, Service, NetworkPolicy and token Secret when it is turned off.
    (
        "apps",
        "deployments",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    (
        "",
        "services",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    (
        "networking.k8s.io",
        "networkpolicies",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    // Watched (owned session keys and referenced TLS/SMTP/GeoIP/Redis Secrets; only their
    // metadata, which takes the same list and watch verbs), read by kept_keys and
    // resolve.rs, applied, and the transcoder token deleted.
    (
        "",
        "secrets",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    // The edge document (owned) and GeoIP ConfigMaps (referenced): never deleted.
    (
        "",
        "configmaps",
        &["get", "list", "watch", "create", "patch"],
    ),
    // The app's claims: owned, applied, never deleted (the data stays); backup
    // destinations: watched and read.
    (
        "",
        "persistentvolumeclaims",
        &["get", "list", "watch", "create", "patch"],
    ),
    // controller/backup.rs: the backup CronJob (applied, deleted with spec.backup), its
    // Jobs (watched, listed) and restore Jobs (applied, deleted with spec.restore).
    (
        "batch",
        "cronjobs",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    (
        "batch",
        "jobs",
        &["get", "list", "watch", "create", "patch", "delete"],
    ),
    // controller/backup.rs with pauseApp: the backup Jobs' ServiceAccount, Role and
    // RoleBinding, applied (get, then patch or create) and deleted; the Role grants get and
    // patch of the app's deployments/scale, which the operator must hold to grant.
    ("", "serviceaccounts", &["get", "create", "patch", "delete"]),
    (
        "rbac.authorization.k8s.io",
        "roles",
        &["get", "create", "patch", "delete"],
    ),
    (
        "rbac.authorization.k8s.io",
        "rolebindings",
        &["get", "create", "patch", "delete"],
    ),
    ("apps", "deployments/scale", &["get", "patch"]),
    // render/certificate.rs through apply_in: get, then apply.
    (
        "cert-manager.io",
        "certificates",
        &["get", "create", "patch"],
    ),
    // bans.rs lists the edge pods to ask each ready one for its bans; controller/backup.rs
    // lists a Job's pods for the tool's termination message.
    ("", "pods", &["list"]),
    // context.rs warn: kube-runtime's Recorder creates an Event, then patches its series.
    ("events.k8s.io", "events", &["create", "patch"]),
];

/// The leader Lease (lib.rs `lead`, kube-lease-manager): created once if missing, then read
/// and patched by name; these rules live in a Role of the release namespace.
const LEASE_RULES: &[(&str, &str, &[&str], Option<&str>)] = &[
    ("coordination.k8s.io", "leases", &["create"], None),
    (
        "coordination.k8s.io",
        "leases",
        &["get", "patch"],
        Some("portcullis-operator"),
    ),
];

/// Each granted (group, resource, verb, name) as one line, so two rule lists compare as sets.
fn grants(rules: &[PolicyRule]) -> BTreeSet<String> {
    let mut grants = BTreeSet::new();
    for rule in rules {
        let names = rule.resource_names.clone().unwrap_or_default();
        let names: Vec<&str> = if names.is_empty() {
            vec!["*"]
        } else {
            names.iter().map(String::as_str).collect()
        };
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    for name in &names {
                        grants.insert(format!("{group}/{resource} {verb} {name}"));
                    }
                }
            }
        }
    }
    grants
}

fn expected_grants(rules: &[(&str, &str, &[&str], Option<&str>)]) -> BTreeSet<String> {
    rules
        .iter()
        .flat_map(|(group, resource, verbs, name)| {
            verbs
                .iter()
                .map(move |verb| format!("{group}/{resource} {verb} {}", name.unwrap_or("*")))
        })
        .collect()
}

/// `helm template` of the chart with `values` (`--set` pairs); the documents it renders.
fn template(values: &[&str]) -> Vec<Value> {
    let mut helm = tool("helm");
    helm.args([
        "template",
        "portcullis",
        CHART,
        "--namespace",
        "portcullis-system",
    ]);
    for value in values {
        helm.args(["--set", value]);
    }
    let output = helm.output().unwrap();
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "helm template {values:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_saphyr::from_multiple::<Value>(&String::from_utf8(output.stdout).unwrap())
        .unwrap()
        .into_iter()
        .filter(|document| !document.is_null())
        .collect()
}

fn find<'a>(documents: &'a [Value], kind: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// The reasons `helm template` refuses `values`, or `None` if it renders them.
fn refusal(values: &[&str]) -> Option<String> {
    let mut helm = tool("helm");
    helm.args(["template", "portcullis", CHART]);
    for value in values {
        helm.args(["--set", value]);
    }
    let output = helm.output().unwrap();
    (!output.status.success()).then(|| String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn the_chart_lints_and_renders_cleanly_with_restricted_pod_security() {
    let everything = [
        "replicas=2",
        "watchNamespace=media",
        "metrics.serviceMonitor.enabled=true",
        "metrics.podMonitor.enabled=true",
        "dashboard.enabled=true",
    ];
    for values in [&[][..], &everything[..]] {
        let mut lint = tool("helm");
        lint.args(["lint", "--strict", CHART]);
        for value in values {
            lint.args(["--set", value]);
        }
        let out = run_ok(&mut lint);
        assert!(
            !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "{out}"
        );
    }

    let defaults = template(&[]);
    let kinds: BTreeSet<&str> = defaults
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount",
        ])
    );
    let pod = &find(&defaults, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    let container = &pod["containers"][0];
    assert_eq!(
        container["securityContext"],
        json!({"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
               "privileged": false, "capabilities": {"drop": ["ALL"]}})
    );
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(container["resources"]["limits"]["memory"].is_string());
    let env = |name: &str| {
        container["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .cloned()
    };
    assert_eq!(
        env("POD_NAMESPACE").unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace",
        "leader election is on by default, with the Lease in the release namespace"
    );
    assert!(
        env("PORTCULLIS_WATCH_NAMESPACE").is_none(),
        "every namespace by default"
    );

    let all = template(&everything);
    for kind in ["ServiceMonitor", "PodMonitor", "ConfigMap", "RoleBinding"] {
        find(&all, kind);
    }
    assert!(
        !all.iter().any(|d| d["kind"] == "ClusterRoleBinding"),
        "one watched namespace gets a RoleBinding there, not cluster-wide rights"
    );
    let dashboard = find(&all, "ConfigMap");
    let file =
        std::fs::read_to_string(root().join(CHART).join("dashboards/portcullis.json")).unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(dashboard["data"]["portcullis.json"].as_str().unwrap())
            .unwrap(),
        serde_json::from_str::<Value>(&file).unwrap()
    );
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");

    let typo = refusal(&["replica=2"]).expect("an unknown key is refused");
    assert!(typo.contains("replica"), "{typo}");
    let racing = refusal(&["replicas=2", "leaderElection.enabled=false"])
        .expect("two writers without a Lease are refused");
    assert!(racing.contains("leaderElection"), "{racing}");
    assert!(
        refusal(&["crs.image.path=opt/owasp-crs"]).is_some(),
        "the CRS path in the image is absolute"
    );
}

/// The metric names the code registers: every `"portcullis_..."` string literal in the
/// three metrics modules, with the series a histogram adds.
fn exported_metrics() -> BTreeSet<String> {
    let literal = Regex::new(r#""(portcullis_[a-z0-9_]+)""#).unwrap();
    let histogram = Regex::new(r#"HistogramOpts::new\(\s*"(portcullis_[a-z0-9_]+)""#).unwrap();
    let mut names = BTreeSet::new();
    for file in [
        "proxy/src/metrics.rs",
        "operator/src/metrics.rs",
        "transcoder/src/metrics.rs",
    ] {
        let source = std::fs::read_to_string(root().join(file)).unwrap();
        names.extend(literal.captures_iter(&source).map(|c| c[1].to_owned()));
        for name in histogram.captures_iter(&source) {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{}{suffix}", &name[1]));
            }
        }
    }
    names
}

/// Every string in a JSON document.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(text) => out.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| strings(item, out)),
        Value::Object(fields) => fields.values().for_each(|field| strings(field, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_queries_only_metrics_the_code_exports() {
    let exported = exported_metrics();
    for known in [
        "portcullis_requests_total",
        "portcullis_operator_reconciles_total",
        "portcullis_transcoder_gpu",
        "portcullis_request_duration_seconds_bucket",
    ] {
        assert!(exported.contains(known), "{known} not found in the sources");
    }
    let text =
        std::fs::read_to_string(root().join(CHART).join("dashboards/portcullis.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    assert_eq!(dashboard["uid"], "portcullis");

    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_i64().unwrap()),
            "panel ids are unique"
        );
        if panel["type"] == "row" {
            continue;
        }
        let title = panel["title"].as_str().unwrap();
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{title}: the data source is the dashboard's variable"
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            assert!(expr.contains("portcullis_"), "{title}: {expr}");
            queries.push(expr.to_owned());
        }
    }
    assert!(queries.len() >= 20, "{} queries", queries.len());

    let mut texts = Vec::new();
    strings(&dashboard, &mut texts);
    let name = Regex::new(r"portcullis_[a-z0-9_]+").unwrap();
    let used: BTreeSet<&str> = texts
        .iter()
        .flat_map(|text| name.find_iter(text).map(|m| m.as_str()))
        .collect();
    let unknown: Vec<&&str> = used.iter().filter(|n| !exported.contains(**n)).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics no code exports: {unknown:?}"
    );
    for family in [
        "portcullis_requests_total",
        "portcullis_requests_by_country_total",
        "portcullis_otp_mails_total",
        "portcullis_bans_total",
        "portcullis_config_reloads_total",
        "portcullis_transcoder_gpu",
        "portcullis_transcoder_jobs_total",
        "portcullis_operator_reconcile_errors_total",
    ] {
        assert!(used.contains(family), "no panel shows {family}");
    }
}

/// A Helm release on the test cluster, uninstalled when dropped (its ClusterRole and
/// ClusterRoleBinding outlive the namespace otherwise).
struct Release {
    name: String,
    namespace: String,
}

impl Release {
    fn install(namespace: &str, values: &[&str]) -> Self {
        let mut helm = tool("helm");
        helm.args(["install", namespace, CHART, "--namespace", namespace]);
        for value in values {
            helm.args(["--set", value]);
        }
        let notes = run_ok(&mut helm);
        assert!(notes.contains("kubectl get portcullis"), "{notes}");
        Self {
            name: namespace.to_owned(),
            namespace: namespace.to_owned(),
        }
    }

    /// The objects of the release, as installed.
    fn manifest(&self) -> Vec<Value> {
        let text =
            run_ok(tool("helm").args(["get", "manifest", &self.name, "-n", &self.namespace]));
        serde_saphyr::from_multiple::<Value>(&text)
            .unwrap()
            .into_iter()
            .filter(|d| !d.is_null())
            .collect()
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = tool("helm")
            .args(["uninstall", &self.name, "-n", &self.namespace])
            .output();
    }
}

/// The operator's command line and environment from a rendered Deployment, with the values
/// the kubelet would fill in (`fieldRef`s) and `metrics` as the metrics address.
fn operator_command(
    deployment: &Value,
    pod: &str,
    namespace: &str,
    metrics: &str,
) -> (Vec<String>, Vec<(String, String)>) {
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    let env = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|variable| {
            let name = variable["name"].as_str().unwrap().to_owned();
            let value = match (
                &variable["value"],
                &variable["valueFrom"]["fieldRef"]["fieldPath"],
            ) {
                _ if name == "PORTCULLIS_METRICS_ADDRESS" => metrics.to_owned(),
                (Value::String(value), _) => value.clone(),
                (_, Value::String(field)) if field == "metadata.name" => pod.to_owned(),
                (_, Value::String(field)) if field == "metadata.namespace" => namespace.to_owned(),
                other => panic!("{name}: unexpected value {other:?}"),
            };
            (name, value)
        })
        .collect();
    (args, env)
}

/// The seed's prerequisites: the media claim, volumes for the claims the operator makes,
/// and the Secrets it names (placeholders: the operator checks keys only).
async fn seed_prerequisites(ns: &mut TestNamespace) {
    ns.existing_claim("nas-media").await;
    ns.existing_claim("jellyfin-backups").await;
    ns.volume_for("jellyfin-config").await;
    ns.volume_for("jellyfin-cache").await;
    ns.secret("media-example-org-tls", &["tls.crt", "tls.key"])
        .await;
    ns.secret("smtp-credentials", &["username", "password"])
        .await;
    ns.secret("geoip-country", &["country.mmdb"]).await;
}

fn example_files(example: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("examples").join(example))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The real `kubectl wait --for=condition=<condition>` on every Portcullis resource of the
/// namespace.
fn kubectl_wait(namespace: &str, condition: &str, resources: &[&str]) {
    run_ok(
        tool("kubectl")
            .args(["wait", "-n", namespace, "--timeout=120s"])
            .arg(format!("--for=condition={condition}"))
            .args(resources),
    );
}

const ALL_KINDS: &[&str] = &[
    "mediaservers,accesspolicies,wafrulesets,ratelimits",
    "--all",
];

/// The kstatus status of an object (sigs.k8s.io/cli-utils `kstatus`, the rules Flux's
/// health checks and `kubectl wait` rely on): `Current`, `InProgress` or `Failed`.
fn kstatus(object: &Value) -> &'static str {
    let status = &object["status"];
    let is = |type_: &str, value: &str| condition(status, type_).is_some_and(|c| c.0 == value);
    if status["observedGeneration"] != object["metadata"]["generation"] {
        return "InProgress";
    }
    let current_conditions = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|c| c["observedGeneration"] == object["metadata"]["generation"]);
    if !current_conditions || is("Reconciling", "True") {
        "InProgress"
    } else if is("Stalled", "True") {
        "Failed"
    } else if is("Ready", "True") {
        "Current"
    } else {
        "InProgress"
    }
}

/// Every Portcullis resource of the namespace as `kubectl get -o json` prints it.
fn portcullis_objects(namespace: &str) -> Vec<Value> {
    let text = run_ok(tool("kubectl").args(["get", "portcullis", "-n", namespace, "-o", "json"]));
    serde_json::from_str::<Value>(&text).unwrap()["items"]
        .as_array()
        .unwrap()
        .clone()
}

/// `Kind/name` and kstatus of every Portcullis resource of the namespace, sorted.
fn kstatus_of(namespace: &str) -> Vec<(String, &'static str)> {
    let mut statuses: Vec<_> = portcullis_objects(namespace)
        .iter()
        .map(|o| {
            (
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap(),
                    o["metadata"]["name"].as_str().unwrap()
                ),
                kstatus(o),
            )
        })
        .collect();
    statuses.sort();
    statuses
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_runs_the_seed_under_the_charts_least_privilege_identity() {
    let mut ns = TestNamespace::new("chart-rbac").await;
    let release = Release::install(&ns.name, &[&format!("watchNamespace={}", ns.name)]);
    let manifest = release.manifest();
    let account = find(&manifest, "ServiceAccount")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let user = format!("system:serviceaccount:{}:{account}", ns.name);

    // The rules are exactly those the code needs.
    let role_name = find(&manifest, "ClusterRole")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let cluster_role = kube::Api::<ClusterRole>::all(ns.client.clone())
        .get(&role_name)
        .await
        .unwrap();
    let expected: Vec<_> = OPERATOR_RULES
        .iter()
        .map(|(group, resource, verbs)| (*group, *resource, *verbs, None))
        .collect();
    assert_eq!(
        grants(&cluster_role.rules.unwrap_or_default()),
        expected_grants(&expected)
    );
    let lease_role = find(&manifest, "Role")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let role = ns.api::<Role>().get(&lease_role).await.unwrap();
    assert_eq!(
        grants(&role.rules.unwrap_or_default()),
        expected_grants(LEASE_RULES)
    );

    // What the apiserver allows that identity, and what not.
    let here = ["-n", ns.name.as_str()];
    for allowed in [
        &["patch", "deployments.apps"][..],
        &["patch", "deployments.apps", "--subresource=scale"],
        &["create", "roles.rbac.authorization.k8s.io"],
        &["delete", "secrets"],
        &[
            "patch",
            "mediaservers.portcullis.dev",
            "--subresource=status",
        ],
        &["create", "events.events.k8s.io"],
        &["get", "leases.coordination.k8s.io/portcullis-operator"],
        &["list", "pods"],
    ] {
        assert!(
            can_i(&user, &[allowed, &here].concat()),
            "cannot {allowed:?}"
        );
    }
    for refused in [
        &["delete", "secrets", "--all-namespaces"][..],
        &["get", "secrets", "-n", "default"],
        &["list", "mediaservers.portcullis.dev", "-n", "default"],
        &["create", "pods", "-n", ns.name.as_str()],
        &["get", "pods", "-n", ns.name.as_str()],
        &["list", "pods", "-n", "default"],
        &["update", "deployments.apps", "-n", ns.name.as_str()],
        &["delete", "configmaps", "-n", ns.name.as_str()],
        &["delete", "persistentvolumeclaims", "-n", ns.name.as_str()],
        &[
            "patch",
            "mediaservers.portcullis.dev",
            "-n",
            ns.name.as_str(),
        ],
        &[
            "delete",
            "mediaservers.portcullis.dev",
            "-n",
            ns.name.as_str(),
        ],
        &[
            "patch",
            "leases.coordination.k8s.io/other",
            "-n",
            ns.name.as_str(),
        ],
        &["create", "leases.coordination.k8s.io", "-n", "default"],
        &["list", "nodes"],
        &["create", "clusterrolebindings.rbac.authorization.k8s.io"],
        &["escalate", "clusterroles.rbac.authorization.k8s.io"],
    ] {
        assert!(!can_i(&user, refused), "can {refused:?}");
    }

    // The operator binary as the chart runs it, under that identity.
    seed_prerequisites(&mut ns).await;
    for file in example_files("seed") {
        ns.apply_file(&file).await;
    }
    let kubeconfig = kubeconfig_for_service_account(&ns.name, &account);
    let metrics = "127.0.0.1:28093";
    let pod = format!("{account}-0");
    let (args, env) = operator_command(find(&manifest, "Deployment"), &pod, &ns.name, metrics);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let _operator = OperatorProcess::start_as(
        &kubeconfig,
        &args,
        env.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        metrics,
    );
    let holder = eventually("the operator leads", TIMEOUT, || async {
        ns.api::<Lease>()
            .get("portcullis-operator")
            .await
            .ok()?
            .spec?
            .holder_identity
    })
    .await;
    assert_eq!(holder, pod);
    kubectl_wait(&ns.name, "Ready", ALL_KINDS);
    let server = ns.api::<MediaServer>().get("jellyfin").await.unwrap();
    assert_eq!(server.status.unwrap().transcoder.unwrap().ready_replicas, 1);
    // The seed's nightly backup, scheduled under this identity.
    let backups = kube::Api::<CronJob>::namespaced(ns.client.clone(), &ns.name)
        .get("jellyfin-backup")
        .await
        .unwrap();
    assert_eq!(backups.spec.schedule, "30 3 * * *");
    for (object, status) in kstatus_of(&ns.name) {
        assert_eq!(status, "Current", "{object}");
    }

    // The NetworkPolicies as the chart's settings make them: the operator's own pods (its
    // namespace, its pod labels) reach the edge's admin port for the bans, and scrapers
    // (every namespace by default) the edge's and the transcoder's metrics.
    let policies = kube::Api::<NetworkPolicy>::namespaced(ns.client.clone(), &ns.name);
    let peers_on = |policy: &NetworkPolicy, port: i32| -> Vec<Value> {
        policy
            .spec
            .as_ref()
            .unwrap()
            .ingress
            .iter()
            .flatten()
            .filter(|rule| {
                rule.ports
                    .iter()
                    .flatten()
                    .any(|p| p.port == Some(IntOrString::Int(port)))
            })
            .flat_map(|rule| rule.from.iter().flatten())
            .map(|peer| serde_json::to_value(peer).unwrap())
            .collect()
    };
    let pod_labels = &find(&manifest, "Deployment")["spec"]["template"]["metadata"]["labels"];
    let edge = policies.get("jellyfin-edge").await.unwrap();
    assert_eq!(
        peers_on(&edge, 9090),
        [
            json!({"namespaceSelector": {}}),
            json!({
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name}},
                "podSelector": {"matchLabels": pod_labels},
            }),
        ]
    );
    let transcoder = policies.get("jellyfin-transcoder").await.unwrap();
    assert!(
        peers_on(&transcoder, 8099).contains(&json!({"namespaceSelector": {}})),
        "Prometheus may scrape the transcoder"
    );

    // Turning the transcoder off deletes what it owned: the delete verbs are enough.
    let off = json!({"spec": {"transcoder": {"enabled": false}}});
    ns.api::<MediaServer>()
        .patch("jellyfin", &PatchParams::default(), &Patch::Merge(&off))
        .await
        .unwrap();
    eventually("the transcoder gone", TIMEOUT, || async {
        let deployment = ns
            .api::<Deployment>()
            .get_opt("jellyfin-transcoder")
            .await
            .ok()?;
        let token = ns
            .api::<Secret>()
            .get_opt("jellyfin-transcoder-token")
            .await
            .ok()?;
        (deployment.is_none() && token.is_none()).then_some(())
    })
    .await;
    kubectl_wait(&ns.name, "Ready", &["mediaserver/jellyfin"]);

    // pauseApp: the backup Jobs' identity is made under this identity too (Kubernetes
    // refuses a Role granting what its maker does not hold).
    let pause = json!({"spec": {"backup": {"pauseApp": true}}});
    ns.api::<MediaServer>()
        .patch("jellyfin", &PatchParams::default(), &Patch::Merge(&pause))
        .await
        .unwrap();
    crate::backup::wait_backup_identity(&ns).await;

    // A broken reference: the Warning Event is published under this identity too.
    ns.apply_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "MediaServer",
        "metadata": {"name": "broken"},
        "spec": {"host": "broken.example.org", "tls": {"secretName": "media-example-org-tls"},
            "storage": {"media": {"existingClaim": "nas-media"}},
            "accessPolicyRef": {"name": "missing"}},
    }))
    .await;
    kubectl_wait(&ns.name, "Stalled", &["mediaserver/broken"]);
    eventually("the operator's Warning Event", TIMEOUT, || async {
        let events = kube::Api::<Event>::namespaced(ns.client.clone(), &ns.name)
            .list(&Default::default())
            .await
            .ok()?;
        events
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("MissingReference")
                    && e.reporting_instance.as_deref() == Some(pod.as_str())
            })
            .then_some(())
    })
    .await;
    drop(release);
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_minimal_example_becomes_ready_for_kubectl_wait_and_kstatus() {
    let mut ns = TestNamespace::new("example-minimal").await;
    ns.existing_claim("media").await;
    ns.volume_for("jellyfin-config").await;
    ns.volume_for("jellyfin-cache").await;
    ns.secret("media-example-org-tls", &["tls.crt", "tls.key"])
        .await;
    for file in example_files("minimal") {
        ns.apply_file(&file).await;
    }
    let _ctx = ns.start_operator();
    kubectl_wait(&ns.name, "Ready", ALL_KINDS);
    assert_eq!(
        kstatus_of(&ns.name),
        [("MediaServer/jellyfin".to_owned(), "Current")]
    );
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_behind_cloudflare_example_says_it_needs_cert_manager() {
    let mut ns = TestNamespace::new("example-cloudflare").await;
    ns.existing_claim("media").await;
    ns.volume_for("jellyfin-config").await;
    ns.volume_for("jellyfin-cache").await;
    ns.secret("smtp-credentials", &["username", "password"])
        .await;
    for file in example_files("behind-cloudflare") {
        ns.apply_file(&file).await;
    }
    let _ctx = ns.start_operator();
    // No cert-manager on the test cluster: the MediaServer cannot get its certificate.
    kubectl_wait(&ns.name, "Stalled", &["mediaserver/jellyfin"]);
    kubectl_wait(&ns.name, "Ready", &["accesspolicy/family"]);
    let server = portcullis_objects(&ns.name)
        .into_iter()
        .find(|o| o["kind"] == "MediaServer")
        .unwrap();
    let (ready, reason, message) = condition(&server["status"], "Ready").unwrap();
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "CertManagerMissing")
    );
    assert!(message.contains("cert-manager"), "{message}");
    assert_eq!(
        kstatus_of(&ns.name),
        [
            ("AccessPolicy/family".to_owned(), "Current"),
            ("MediaServer/jellyfin".to_owned(), "Failed"),
        ]
    );
    ns.delete().await;
}

/// The documents of a GitOps example file.
fn gitops(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(root().join("examples/gitops").join(file)).unwrap();
    serde_saphyr::from_multiple::<Value>(&text).unwrap()
}

/// Values as `--set-json` arguments for `helm template`.
fn set_json(values: &Value) -> Vec<String> {
    values
        .as_object()
        .unwrap()
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect()
}

fn template_json(values: &Value) {
    let mut helm = tool("helm");
    helm.args(["template", "portcullis", CHART]);
    for value in set_json(values) {
        helm.args(["--set-json", &value]);
    }
    run_ok(&mut helm);
}

#[test]
fn the_gitops_examples_deploy_the_chart_and_the_seed_with_valid_values() {
    // Both tools deploy the same two things: the chart with its values, and examples/seed,
    // which the RBAC test above applies and sees Ready.
    let applications = gitops("argocd/portcullis.yaml");
    let paths: Vec<&str> = applications
        .iter()
        .map(|a| {
            assert_eq!(a["kind"], "Application");
            a["spec"]["source"]["path"].as_str().unwrap()
        })
        .collect();
    assert_eq!(paths, [CHART, "examples/seed"]);
    template_json(&applications[0]["spec"]["source"]["helm"]["valuesObject"]);
    assert!(
        applications[0]["spec"]["syncPolicy"]["syncOptions"]
            .as_array()
            .unwrap()
            .contains(&json!("ServerSideApply=true"))
    );

    let flux = gitops("flux/portcullis.yaml");
    let kinds: Vec<&str> = flux.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["GitRepository", "HelmRelease", "Kustomization"]);
    assert_eq!(
        flux[1]["spec"]["chart"]["spec"]["chart"],
        format!("./{CHART}")
    );
    template_json(&flux[1]["spec"]["values"]);
    assert_eq!(flux[2]["spec"]["path"], "./examples/seed");
    assert_eq!(
        flux[2]["spec"]["wait"], true,
        "Flux waits on kstatus health"
    );
    for path in [CHART, "examples/seed"] {
        assert!(Path::new(&root().join(path)).is_dir(), "{path}");
    }
}
