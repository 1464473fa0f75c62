//! Scale benchmark on the real control plane (`cargo bench -p portcullis-operator --bench
//! scale`): 100 MediaServers created at once. Prints seconds until all are Ready, the
//! operator's peak RSS, API writes during a full resync with nothing changed, and seconds
//! from an AccessPolicy edit to the new edge document in every ConfigMap. It measures and
//! prints; it asserts nothing about time.

#[allow(dead_code)]
#[path = "../tests/operator/util.rs"]
mod util;

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ListParams;
use portcullis_crds::MediaServer;
use serde_json::json;
use util::{CLUSTER, TestNamespace, condition, eventually};

const SERVERS: usize = 100;
const METRICS: &str = "127.0.0.1:28089";

fn start_operator(namespace: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_portcullis-operator"))
        .args([
            "run",
            "--no-leader-election",
            "--namespace",
            namespace,
            "--metrics-address",
            METRICS,
        ])
        .env("KUBECONFIG", &CLUSTER.kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("the operator starts")
}

fn peak_rss_mib(child: &Child) -> f64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// The sum of a counter family in the operator's /metrics, with an optional label filter.
async fn metric(name: &str, label: &str) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(METRICS) else {
        return 0;
    };
    let request = format!("GET /metrics HTTP/1.0\r\nHost: {METRICS}\r\n\r\n");
    let mut body = String::new();
    if stream.write_all(request.as_bytes()).is_err() || stream.read_to_string(&mut body).is_err() {
        return 0;
    }
    body.lines()
        .filter(|line| line.starts_with(name) && line.contains(label))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

async fn ready_count(ns: &TestNamespace) -> usize {
    let servers = ns
        .api::<MediaServer>()
        .list(&ListParams::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    servers
        .iter()
        .filter(|s| {
            let status = serde_json::to_value(&s.status).unwrap();
            condition(&status, "Ready").is_some_and(|(status, _, _)| status == "True")
        })
        .count()
}

#[tokio::main]
async fn main() {
    let mut ns = TestNamespace::new("scale-bench").await;
    for claim in ["config", "cache", "media"] {
        ns.existing_claim(claim).await;
    }
    ns.secret("media-tls", &["tls.crt", "tls.key"]).await;
    ns.apply_value(
        json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": "family"}, "spec": {"emails": ["alice@example.org"]}}),
    )
    .await;
    let mut operator = start_operator(&ns.name);

    let start = Instant::now();
    for i in 0..SERVERS {
        ns.apply_value(json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "MediaServer",
            "metadata": {"name": format!("jellyfin-{i:03}")},
            "spec": {"host": format!("media-{i}.example.org"), "tls": {"secretName": "media-tls"},
                "storage": {"config": {"existingClaim": "config"}, "cache": {"existingClaim": "cache"},
                    "media": {"existingClaim": "media"}},
                "edge": {"replicas": 1}, "accessPolicyRef": {"name": "family"}}}))
            .await;
    }
    let created = start.elapsed();
    eventually(
        "every MediaServer Ready",
        Duration::from_secs(900),
        || async { (ready_count(&ns).await == SERVERS).then_some(()) },
    )
    .await;
    let all_ready = start.elapsed();
    let rss_first = peak_rss_mib(&operator);

    // A full resync with nothing changed: a fresh operator reconciles every object once.
    operator.kill().unwrap();
    operator.wait().unwrap();
    let mut operator = start_operator(&ns.name);
    let resync_start = Instant::now();
    eventually("a full resync", Duration::from_secs(600), || async {
        let done = metric(
            "portcullis_operator_reconcile_duration_seconds_count",
            "MediaServer",
        )
        .await;
        (done >= SERVERS as u64).then_some(())
    })
    .await;
    let resync = resync_start.elapsed();
    let resync_writes = metric("portcullis_operator_api_writes_total", "").await;

    // An AccessPolicy edit, to the new document in every ConfigMap.
    let edit = Instant::now();
    ns.apply_value(json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "AccessPolicy",
        "metadata": {"name": "family"}, "spec": {"emails": ["alice@example.org", "bob@example.org"]}}))
        .await;
    eventually(
        "bob in every edge document",
        Duration::from_secs(600),
        || async {
            let maps = ns
                .api::<ConfigMap>()
                .list(&ListParams::default())
                .await
                .ok()?
                .items;
            let updated = maps
                .iter()
                .filter(|m| {
                    m.data.as_ref().is_some_and(|d| {
                        d.get("edge.yaml")
                            .is_some_and(|y| y.contains("bob@example.org"))
                    })
                })
                .count();
            (updated == SERVERS).then_some(())
        },
    )
    .await;
    let propagated = edit.elapsed();
    let rss = peak_rss_mib(&operator).max(rss_first);
    operator.kill().unwrap();
    operator.wait().unwrap();

    println!(
        "operator scale benchmark ({SERVERS} MediaServers, real kube-apiserver + kwok, this machine)"
    );
    println!("| measure | value |");
    println!("| --- | --- |");
    println!(
        "| seconds to create {SERVERS} MediaServers | {:.1} |",
        created.as_secs_f64()
    );
    println!(
        "| seconds until all are Ready | {:.1} |",
        all_ready.as_secs_f64()
    );
    println!("| operator peak RSS (MiB) | {rss:.1} |");
    println!(
        "| seconds for a full resync of {SERVERS} | {:.1} |",
        resync.as_secs_f64()
    );
    println!("| API writes during that resync (nothing changed) | {resync_writes} |");
    println!(
        "| seconds from an AccessPolicy edit to every edge ConfigMap | {:.1} |",
        propagated.as_secs_f64()
    );
    ns.delete().await;
}
