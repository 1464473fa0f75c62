//! The cluster fixture: the control plane is brought up once per test run (or reused),
//! each test gets its own namespace and its own operator watching only that namespace.

use std::{
    collections::BTreeMap,
    future::Future,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, LazyLock},
    time::{Duration, Instant},
};

use k8s_openapi::{
    ByteString,
    api::core::v1::{
        HostPathVolumeSource, Namespace, ObjectReference, PersistentVolume, PersistentVolumeClaim,
        PersistentVolumeSpec, Secret,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    Api, Client, Config, ResourceExt,
    api::{DeleteParams, Patch, PatchParams, PostParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use portcullis_crds::{AccessPolicy, MediaServer, RateLimit, WafRuleSet};
use portcullis_operator::{context::Context, metrics::Metrics, render::Settings};
use serde_json::Value;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// What `e2e/cluster env` exports.
pub struct Cluster {
    /// The admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The directory with kubectl, helm and the control-plane binaries.
    pub bin: PathBuf,
}

/// The running control plane: started (or reused) once per test process.
pub static CLUSTER: LazyLock<Cluster> = LazyLock::new(|| {
    let script = root().join("e2e/cluster");
    let up = Command::new(&script)
        .arg("up")
        .status()
        .expect("e2e/cluster runs");
    assert!(up.success(), "e2e/cluster up failed; see its output above");
    let env = Command::new(&script)
        .arg("env")
        .output()
        .expect("e2e/cluster env runs");
    let env = String::from_utf8(env.stdout).unwrap();
    let value = |key: &str| {
        env.lines()
            .find_map(|line| line.strip_prefix(&format!("export {key}=")))
            .map(|v| PathBuf::from(v.split_whitespace().next().unwrap().trim_matches('"')))
            .unwrap_or_else(|| panic!("e2e/cluster env has no {key}:\n{env}"))
    };
    Cluster {
        kubeconfig: value("KUBECONFIG"),
        bin: value("PORTCULLIS_E2E_BIN"),
    }
});

/// A command running `tool` (kubectl, helm) from the cluster's bin directory as admin.
pub fn tool(tool: &str) -> Command {
    let mut command = Command::new(CLUSTER.bin.join(tool));
    command
        .env("KUBECONFIG", &CLUSTER.kubeconfig)
        .current_dir(root());
    command
}

/// Runs `command`, fails the test unless it succeeds, and returns its standard output.
pub fn run_ok(command: &mut Command) -> String {
    let output = command.output().expect("the command runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A kubeconfig that authenticates as ServiceAccount `account` of `namespace`
/// (`e2e/cluster kubeconfig-for-sa`).
pub fn kubeconfig_for_service_account(namespace: &str, account: &str) -> PathBuf {
    let output = run_ok(Command::new(root().join("e2e/cluster")).args([
        "kubeconfig-for-sa",
        namespace,
        account,
    ]));
    PathBuf::from(output.lines().last().unwrap_or_default().trim())
}

/// `kubectl auth can-i VERB RESOURCE ...` as `user`: true for "yes", false for "no"; any
/// other answer (a resource the apiserver does not know) fails the test.
pub fn can_i(user: &str, args: &[&str]) -> bool {
    let output = tool("kubectl")
        .args(["auth", "can-i", "--as", user])
        .args(args)
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let warnings = String::from_utf8_lossy(&output.stderr);
    assert!(
        (answer == "yes" || answer == "no") && !warnings.contains("doesn't have a resource type"),
        "can-i {args:?}: {answer} {warnings}"
    );
    answer == "yes"
}

/// A client with the admin identity.
pub async fn client() -> Client {
    let kubeconfig = Kubeconfig::read_from(&CLUSTER.kubeconfig).expect("the kubeconfig reads");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// Polls `check` until it returns `Some`, or fails the test after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Installs (or updates) the CRDs and waits until the apiserver serves them.
pub async fn install_crds(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in portcullis_crds::crds() {
        let name = crd.name_any();
        crds.patch(
            &name,
            &PatchParams::apply("portcullis-tests").force(),
            &Patch::Apply(&crd),
        )
        .await
        .unwrap();
        eventually(
            &format!("CRD {name} established"),
            Duration::from_secs(30),
            || async {
                let crd = crds.get(&name).await.ok()?;
                let conditions = crd.status?.conditions?;
                conditions
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True")
                    .then_some(())
            },
        )
        .await;
    }
}

/// A namespace of one test, with the persistent volumes it made.
pub struct TestNamespace {
    /// The client.
    pub client: Client,
    /// The namespace.
    pub name: String,
    volumes: Vec<String>,
}

impl TestNamespace {
    /// A fresh namespace named after the test, with the CRDs installed.
    pub async fn new(test: &str) -> Self {
        let client = client().await;
        install_crds(&client).await;
        let name = format!("{test}-{}", std::process::id());
        let namespace: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .unwrap();
        Self {
            client,
            name,
            volumes: Vec::new(),
        }
    }

    /// The API of a namespaced kind in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// Starts an operator that watches only this namespace.
    pub fn start_operator(&self) -> Arc<Context> {
        self.start_operator_with(Settings::default())
    }

    /// Starts an operator with `settings` that watches only this namespace.
    pub fn start_operator_with(&self, settings: Settings) -> Arc<Context> {
        let ctx = Context::new(
            self.client.clone(),
            settings,
            Metrics::default(),
            format!("test-{}", self.name),
            Some(self.name.clone()),
        );
        tokio::spawn(portcullis_operator::controller::run(ctx.clone()));
        ctx
    }

    /// A persistent volume pre-bound to `claim` in this namespace, so the claim binds at
    /// once (no provisioner runs here) and pods using it can be scheduled.
    pub async fn volume_for(&mut self, claim: &str) {
        let name = format!("{}-{claim}", self.name);
        let volume = PersistentVolume {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            spec: Some(PersistentVolumeSpec {
                capacity: Some(BTreeMap::from([(
                    "storage".to_owned(),
                    Quantity("1Ti".to_owned()),
                )])),
                access_modes: Some(vec![
                    "ReadWriteOnce".into(),
                    "ReadWriteMany".into(),
                    "ReadOnlyMany".into(),
                ]),
                host_path: Some(HostPathVolumeSource {
                    path: format!("/tmp/{name}"),
                    ..Default::default()
                }),
                claim_ref: Some(ObjectReference {
                    namespace: Some(self.name.clone()),
                    name: Some(claim.to_owned()),
                    ..Default::default()
                }),
                storage_class_name: Some(String::new()),
                ..Default::default()
            }),
            ..Default::default()
        };
        Api::<PersistentVolume>::all(self.client.clone())
            .create(&PostParams::default(), &volume)
            .await
            .unwrap();
        self.volumes.push(name);
    }

    /// An existing claim (as a user would have for the media library), bound to a volume.
    pub async fn existing_claim(&mut self, claim: &str) {
        self.volume_for(claim).await;
        let pvc: PersistentVolumeClaim = serde_json::from_value(serde_json::json!({
            "metadata": {"name": claim},
            "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "resources": {"requests": {"storage": "1Gi"}}},
        }))
        .unwrap();
        self.api::<PersistentVolumeClaim>()
            .create(&PostParams::default(), &pvc)
            .await
            .unwrap();
    }

    /// A Secret with `keys` (values are placeholders: the operator only checks keys).
    pub async fn secret(&self, name: &str, keys: &[&str]) {
        let secret = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(name.to_owned()),
                ..Default::default()
            },
            data: Some(
                keys.iter()
                    .map(|k| ((*k).to_owned(), ByteString(b"placeholder".to_vec())))
                    .collect(),
            ),
            ..Default::default()
        };
        self.api::<Secret>()
            .patch(
                name,
                &PatchParams::apply("portcullis-tests"),
                &Patch::Apply(&secret),
            )
            .await
            .unwrap();
    }

    /// Applies every document of a YAML file of Portcullis resources in this namespace.
    pub async fn apply_file(&self, path: &Path) {
        let text = std::fs::read_to_string(path).unwrap();
        for document in serde_saphyr::from_multiple::<Value>(&text).unwrap() {
            self.apply_value(document).await;
        }
    }

    /// Applies one Portcullis resource given as JSON.
    pub async fn apply_value(&self, document: Value) {
        let name = document["metadata"]["name"].as_str().unwrap().to_owned();
        let params = PatchParams::apply("portcullis-tests").force();
        let patch = Patch::Apply(&document);
        let result = match document["kind"].as_str().unwrap() {
            "MediaServer" => self
                .api::<MediaServer>()
                .patch(&name, &params, &patch)
                .await
                .map(drop),
            "AccessPolicy" => self
                .api::<AccessPolicy>()
                .patch(&name, &params, &patch)
                .await
                .map(drop),
            "WafRuleSet" => self
                .api::<WafRuleSet>()
                .patch(&name, &params, &patch)
                .await
                .map(drop),
            "RateLimit" => self
                .api::<RateLimit>()
                .patch(&name, &params, &patch)
                .await
                .map(drop),
            other => panic!("not a Portcullis kind: {other}"),
        };
        result.unwrap_or_else(|e| panic!("applying {name}: {e}"));
    }

    /// Deletes the namespace and the volumes the test made.
    pub async fn delete(self) {
        let volumes: Api<PersistentVolume> = Api::all(self.client.clone());
        for volume in &self.volumes {
            let _ = volumes.delete(volume, &DeleteParams::default()).await;
        }
        Api::<Namespace>::all(self.client.clone())
            .delete(&self.name, &DeleteParams::default())
            .await
            .unwrap();
    }
}

/// The status of the `type_` condition of a resource's status, if present.
pub fn condition(status: &Value, type_: &str) -> Option<(String, String, String)> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            let text = |key: &str| c[key].as_str().unwrap_or_default().to_owned();
            (text("status"), text("reason"), text("message"))
        })
}

/// The sum of the samples of metric `name` whose line contains `label`, scraped from the
/// operator's /metrics at `address`; 0 when it cannot be reached.
pub fn metric(address: &str, name: &str, label: &str) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(address) else {
        return 0;
    };
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {address}\r\n\r\n");
    let mut body = String::new();
    if stream.write_all(request.as_bytes()).is_err() || stream.read_to_string(&mut body).is_err() {
        return 0;
    }
    body.lines()
        .filter(|line| line.starts_with(name) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The `portcullis-proxy` binary of this build (target dir and profile of the operator's
/// test binary), built first: a no-op when it is up to date, so a test never runs a stale
/// edge.
pub fn proxy_binary() -> &'static Path {
    static BINARY: LazyLock<PathBuf> =
        LazyLock::new(|| workspace_binary("portcullis-proxy", "portcullis-proxy"));
    &BINARY
}

/// The `portcullis-backup` binary of this build, built first as [`proxy_binary`] is.
pub fn backup_binary() -> &'static Path {
    static BINARY: LazyLock<PathBuf> =
        LazyLock::new(|| workspace_binary("portcullis-backup", "portcullis-backup"));
    &BINARY
}

/// Builds binary `bin` of workspace package `package` into the operator's test binary's
/// target dir and profile; returns its path.
fn workspace_binary(package: &str, bin: &str) -> PathBuf {
    let operator = Path::new(env!("CARGO_BIN_EXE_portcullis-operator"));
    let profile_dir = operator.parent().unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let mut build = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    build
        .args(["build", "--locked", "-p", package, "--bin", bin])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(root());
    match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => {}
        Some(profile) => {
            build.args(["--profile", profile]);
        }
        None => panic!("no profile directory above {}", operator.display()),
    }
    run_ok(&mut build);
    profile_dir.join(bin)
}

/// An operator process, stopped when dropped.
pub struct OperatorProcess {
    child: std::process::Child,
    /// Where its /metrics is served.
    pub metrics: String,
}

impl OperatorProcess {
    /// Starts the operator binary on this cluster, watching `namespace`, with `extra` flags.
    pub fn start(namespace: &str, metrics: &str, extra: &[&str]) -> Self {
        let mut args = vec![
            "run",
            "--namespace",
            namespace,
            "--metrics-address",
            metrics,
        ];
        args.extend(extra);
        Self::start_as(&CLUSTER.kubeconfig, &args, [("RUST_LOG", "warn")], metrics)
    }

    /// Starts the operator binary with `args` and `env` under the identity of `kubeconfig`;
    /// `metrics` is where those arguments make it serve /metrics.
    pub fn start_as<'a>(
        kubeconfig: &Path,
        args: &[&str],
        env: impl IntoIterator<Item = (&'a str, &'a str)>,
        metrics: &str,
    ) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis-operator"))
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig)
            .envs(env)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the operator starts");
        Self {
            child,
            metrics: metrics.to_owned(),
        }
    }

    /// The process id (the scale benchmark reads its peak RSS).
    #[allow(dead_code)]
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// MediaServer reconciles it has finished.
    pub fn reconciles(&self) -> u64 {
        metric(
            &self.metrics,
            "portcullis_operator_reconcile_duration_seconds_count",
            "MediaServer",
        )
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
