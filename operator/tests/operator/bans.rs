//! RateLimit `status.activeBans` from a real edge.
//!
//! kwok gives a pod an address from its node's pod network, so the edge pod runs on a kwok
//! node of this test whose pod network is on loopback (`127.a.b.0/24`, all of 127/8 is this
//! machine's): its pod IP is an address here. The test plays the scheduler (a Binding) and
//! the kubelet (it starts the real `portcullis-proxy` on that address with the document
//! the operator rendered), real HTTPS requests from other loopback addresses get banned,
//! and the operator asks the pod for its bans as it would in a cluster.

use std::{
    net::{IpAddr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use k8s_openapi::{
    api::core::v1::{ConfigMap, Node, Pod},
    jiff::{Timestamp, ToSpan},
};
use kube::api::{ListParams, PostParams};
use portcullis_crds::{RateLimit, edge::EdgeConfig};
use portcullis_operator::render::Settings;
use serde_json::{Value, json};

use crate::util::{TestNamespace, eventually, proxy_binary, tool};

const TIMEOUT: Duration = Duration::from_secs(120);
/// The extended resource only the loopback node has: the edge asks for it, so the
/// scheduler leaves the pod Pending until the test binds it there.
const LOOPBACK_RESOURCE: &str = "test.portcullis.dev/loopback";

/// A kwok node whose pod network is on loopback, tainted so that no other pod lands on it;
/// deleted when dropped.
struct LoopbackNode {
    name: String,
    network: String,
}

impl LoopbackNode {
    /// Creates the node (its pod network derived from this process's id) and waits until
    /// kwok reports it Ready.
    async fn create(ns: &TestNamespace) -> Self {
        let pid = std::process::id();
        let network = format!("127.{}.{}", 1 + (pid >> 8) % 254, pid & 0xff);
        let name = format!("loopback-{pid}");
        let capacity = json!({
            "cpu": "8", "memory": "32Gi", "pods": "110", LOOPBACK_RESOURCE: "10",
        });
        let node: Node = serde_json::from_value(json!({
            "metadata": {
                "name": name,
                "annotations": {"kwok.x-k8s.io/node": "fake"},
                "labels": {"kubernetes.io/hostname": name, "type": "kwok"},
            },
            "spec": {
                "podCIDR": format!("{network}.0/24"),
                "taints": [{"key": LOOPBACK_RESOURCE, "value": pid.to_string(), "effect": "NoSchedule"}],
            },
            "status": {"capacity": capacity, "allocatable": capacity},
        }))
        .unwrap();
        let nodes = kube::Api::<Node>::all(ns.client.clone());
        nodes.create(&PostParams::default(), &node).await.unwrap();
        let created = Self { name, network };
        eventually("the loopback node Ready", TIMEOUT, || async {
            let node = nodes.get(&created.name).await.ok()?;
            node.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        })
        .await;
        created
    }

    /// Binds the Pending edge pod of `ns` to this node (as a scheduler would) and waits
    /// until kwok reports it Ready; returns its IP.
    async fn bind_edge_pod(&self, ns: &TestNamespace) -> IpAddr {
        let pods = ns.api::<Pod>();
        let edge = ListParams::default().labels("app.kubernetes.io/component=edge");
        let pod = eventually("the Pending edge pod", TIMEOUT, || async {
            pods.list(&edge).await.ok()?.items.into_iter().next()
        })
        .await;
        let name = pod.metadata.name.unwrap();
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.name},
        });
        pods.create_subresource::<Value, Value>("binding", &name, &PostParams::default(), &binding)
            .await
            .unwrap();
        let ip = eventually("the edge pod Ready", TIMEOUT, || async {
            let status = pods.get(&name).await.ok()?.status?;
            let ready = status
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            status.pod_ip.filter(|_| ready)
        })
        .await;
        let ip: IpAddr = ip.parse().unwrap();
        assert!(
            ip.to_string().starts_with(&format!("{}.", self.network)),
            "kwok gave {ip}, not an address of {}.0/24",
            self.network
        );
        ip
    }

    /// Deletes the node once kwok has finished deleting the pods on it (it stops looking
    /// after pods of a node that is gone; the pod garbage collector would take longer).
    async fn delete(self, client: kube::Client) {
        let on_node = ListParams::default().fields(&format!("spec.nodeName={}", self.name));
        eventually("no pod left on the loopback node", TIMEOUT, || async {
            let pods = kube::Api::<Pod>::all(client.clone())
                .list(&on_node)
                .await
                .ok()?;
            pods.items.is_empty().then_some(())
        })
        .await;
    }
}

impl Drop for LoopbackNode {
    fn drop(&mut self) {
        let _ = tool("kubectl")
            .args(["delete", "node", &self.name, "--wait=false"])
            .output();
    }
}

/// The real edge proxy on the pod's address, killed when dropped (or when this test
/// process dies).
struct Edge {
    child: Child,
    watchdog: Child,
    https: SocketAddr,
    dir: PathBuf,
}

impl Edge {
    /// Starts `portcullis-proxy` with the document the operator rendered, listening on the
    /// pod's address as it would in the pod: the admin port the pod declares, certificate
    /// files where this test wrote them, and an app that refuses connections.
    async fn start(ns: &TestNamespace, ip: IpAddr) -> Self {
        let map = ns
            .api::<ConfigMap>()
            .get("jellyfin-edge-config")
            .await
            .unwrap();
        let mut document = EdgeConfig::from_yaml(&map.data.unwrap()["edge.yaml"]).unwrap();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("bans-edge-{}", ns.name));
        std::fs::create_dir_all(dir.join("config/..1")).unwrap();
        let certificate =
            rcgen::generate_simple_self_signed(vec![document.host.to_string()]).unwrap();
        std::fs::write(dir.join("tls.crt"), certificate.cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), certificate.signing_key.serialize_pem()).unwrap();
        document.tls.cert_file = dir.join("tls.crt");
        document.tls.key_file = dir.join("tls.key");
        let https = SocketAddr::new(ip, free_port(ip));
        document.listen.https = https;
        document.listen.http = None;
        document.listen.admin.set_ip(ip);
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        document.upstream.address = closed.to_string();
        // Laid out as the kubelet mounts a ConfigMap.
        std::fs::write(dir.join("config/..1/edge.yaml"), document.to_yaml()).unwrap();
        let _ = std::fs::remove_file(dir.join("config/..data"));
        std::os::unix::fs::symlink("..1", dir.join("config/..data")).unwrap();
        let _ = std::fs::remove_file(dir.join("config/edge.yaml"));
        std::os::unix::fs::symlink("..data/edge.yaml", dir.join("config/edge.yaml")).unwrap();
        let child = Command::new(proxy_binary())
            .arg("--config")
            .arg(dir.join("config/edge.yaml"))
            .args(["--threads", "1"])
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(dir.join("access.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("proxy.log")).unwrap())
            .spawn()
            .unwrap();
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {} 2>/dev/null; do sleep 1; done; kill -9 {} 2>/dev/null",
                std::process::id(),
                child.id()
            ))
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let edge = Self {
            child,
            watchdog,
            https,
            dir,
        };
        let admin = document.listen.admin;
        eventually("the edge ready", Duration::from_secs(30), || async {
            let ready = curl(&["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("http://{admin}/readyz"))
                .output()
                .ok()?;
            (ready.stdout == b"200").then_some(())
        })
        .await;
        edge
    }

    /// The status of `GET path` over HTTPS from the local address `from`.
    fn get(&self, from: &str, path: &str) -> String {
        let host = "media.example.org";
        let port = self.https.port();
        let output = curl(&["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
            .args(["--interface", from, "--resolve"])
            .arg(format!("{host}:{port}:{}", self.https.ip()))
            .arg(format!("https://{host}:{port}{path}"))
            .output()
            .unwrap();
        String::from_utf8(output.stdout).unwrap()
    }

    /// Asks `path` from `from` until the edge answers a ban (or a limit) `times` in a row.
    fn offend(&self, from: &str, path: &str) {
        let statuses: Vec<String> = (0..6).map(|_| self.get(from, path)).collect();
        assert!(
            statuses.iter().skip(2).all(|status| status == "429"),
            "{from} {path}: {statuses:?}; the edge said: {}",
            std::fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default()
        );
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        self.stop();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

fn curl(args: &[&str]) -> Command {
    let mut command = Command::new("curl");
    command.args(["--max-time", "5"]).args(args);
    command
}

/// A port nobody listens on at `ip` now.
fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rate_limit(name: &str, path: &str, ban: &str, manual: Value) -> Value {
    json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "RateLimit",
        "metadata": {"name": name},
        "spec": {
            "match": {"pathPrefixes": [path]}, "limit": 1, "period": "10s",
            "ban": {"after": 1, "duration": ban},
            "manualBans": manual,
        },
    })
}

/// The bans RateLimit `name` lists, by key, with the seconds left and the reason.
async fn bans_of(ns: &TestNamespace, name: &str) -> (Vec<(String, i64, String)>, Option<i32>) {
    let limit = ns.api::<RateLimit>().get(name).await.unwrap();
    let status = limit.status.unwrap_or_default();
    let now = Timestamp::now().as_second();
    let mut bans: Vec<_> = status
        .active_bans
        .into_iter()
        .map(|b| (b.key, b.until.0.as_second() - now, b.reason))
        .collect();
    bans.sort();
    (bans, status.active_ban_count)
}

/// Waits until RateLimit `name` lists exactly the keys and reasons of `expected`.
async fn wait_bans(
    ns: &TestNamespace,
    name: &str,
    expected: &[(&str, &str)],
) -> Vec<(String, i64, String)> {
    let mut last = None;
    let found = tokio::time::timeout(TIMEOUT, async {
        loop {
            let (bans, count) = bans_of(ns, name).await;
            let seen: Vec<(&str, &str)> = bans
                .iter()
                .map(|(k, _, r)| (k.as_str(), r.as_str()))
                .collect();
            if seen == expected && count == Some(i32::try_from(expected.len()).unwrap()) {
                return bans;
            }
            last = Some((bans, count));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| panic!("RateLimit {name} never listed {expected:?}; last: {last:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bans_an_edge_enforces_show_on_their_rate_limit_until_they_end_or_are_lifted() {
    let mut ns = TestNamespace::new("bans").await;
    for claim in ["config", "cache", "media"] {
        ns.existing_claim(claim).await;
    }
    ns.secret("media-tls", &["tls.crt", "tls.key"]).await;
    let node = LoopbackNode::create(&ns).await;
    let incident_until = (Timestamp::now() + 2.hours()).to_string();
    ns.apply_value(rate_limit("login", "/login", "20s", json!({})))
        .await;
    let api = |lift: Value| {
        rate_limit(
            "api",
            "/api",
            "1h",
            json!({
                "add": [{"key": "203.0.113.0/24", "until": incident_until, "reason": "incident 42"}],
                "lift": lift,
            }),
        )
    };
    ns.apply_value(api(json!([]))).await;
    ns.apply_value(json!({
        "apiVersion": "portcullis.dev/v1alpha1", "kind": "MediaServer",
        "metadata": {"name": "jellyfin"},
        "spec": {
            "host": "media.example.org",
            "tls": {"secretName": "media-tls"},
            "storage": {"config": {"existingClaim": "config"}, "cache": {"existingClaim": "cache"}, "media": {"existingClaim": "media"}},
            "edge": {"replicas": 1, "resources": {"limits": {LOOPBACK_RESOURCE: "1"}}},
            "rateLimitRefs": [{"name": "login"}, {"name": "api"}],
        },
    }))
    .await;
    let ctx = ns.start_operator_with(Settings {
        ban_poll_interval: Duration::from_secs(1),
        ..Settings::default()
    });
    let ip = node.bind_edge_pod(&ns).await;
    let mut edge = Edge::start(&ns, ip).await;

    // The manual ban is listed while a MediaServer uses the limit.
    wait_bans(&ns, "api", &[("203.0.113.0/24", "incident 42")]).await;
    // Real offences, each from an address of its own.
    edge.offend("127.0.0.2", "/login");
    edge.offend("127.0.0.4", "/api");
    assert_eq!(edge.get("127.0.0.3", "/.env"), "404", "a honeypot");
    let login = wait_bans(
        &ns,
        "login",
        &[("127.0.0.2", "limit exceeded"), ("127.0.0.3", "honeypot")],
    )
    .await;
    assert!(
        (0..=20).contains(&login[0].1),
        "the ban of 127.0.0.2 ends within its 20s: {login:?}"
    );
    assert!(login[1].1 > 3000, "a honeypot bans for an hour: {login:?}");
    wait_bans(
        &ns,
        "api",
        &[
            ("127.0.0.3", "honeypot"),
            ("127.0.0.4", "limit exceeded"),
            ("203.0.113.0/24", "incident 42"),
        ],
    )
    .await;

    // Lifting a ban in the spec takes it off the list at once (it would last an hour). A
    // lift covers bans that began before a time in whole seconds; the ban may have begun in
    // this very second, so the lift names the next one.
    ns.apply_value(api(
        json!([{"key": "127.0.0.4", "before": (Timestamp::now() + 2.seconds()).to_string()}]),
    ))
    .await;
    wait_bans(
        &ns,
        "api",
        &[("127.0.0.3", "honeypot"), ("203.0.113.0/24", "incident 42")],
    )
    .await;
    // The login ban ends by itself.
    wait_bans(&ns, "login", &[("127.0.0.3", "honeypot")]).await;

    // Nothing changes: the rounds write nothing.
    let writes = || ctx.metrics.writes.with_label_values(&["RateLimit"]).get();
    let before = writes();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        writes(),
        before,
        "a round with nothing new wrote to the API"
    );

    // An edge that stops answering: the rounds go on, the bans it listed stay until they end.
    let failed = || ctx.metrics.ban_queries.with_label_values(&["failed"]).get();
    edge.stop();
    eventually("a failed question to the edge", TIMEOUT, || async {
        (failed() >= 2).then_some(())
    })
    .await;
    wait_bans(&ns, "login", &[("127.0.0.3", "honeypot")]).await;
    assert_eq!(writes(), before);

    let client = ns.client.clone();
    ns.delete().await;
    node.delete(client).await;
}
