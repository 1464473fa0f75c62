//! Scale benchmark on the real control plane (`cargo bench -p portcullis-operator --bench
//! scale`): 100 MediaServers created at once. Prints seconds until all are Ready, the
//! operator's peak RSS, API writes during a full resync with nothing changed, and seconds
//! from an AccessPolicy edit to the new edge document in every ConfigMap. It measures and
//! prints; it asserts nothing about time.

#[allow(dead_code)]
#[path = "../tests/operator/util.rs"]
mod util;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::ListParams;
use portcullis_crds::MediaServer;
use serde_json::json;
use util::{OperatorProcess, TestNamespace, condition, eventually, metric};

const SERVERS: usize = 100;
const METRICS: &str = "127.0.0.1:28089";

fn start_operator(namespace: &str) -> OperatorProcess {
    OperatorProcess::start(namespace, METRICS, &["--no-leader-election"])
}

fn peak_rss_mib(child: &OperatorProcess) -> f64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
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
    let operator = start_operator(&ns.name);

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
    drop(operator);
    let operator = start_operator(&ns.name);
    let resync_start = Instant::now();
    eventually("a full resync", Duration::from_secs(600), || async {
        let done = operator.reconciles();
        (done >= SERVERS as u64).then_some(())
    })
    .await;
    let resync = resync_start.elapsed();
    let resync_writes = metric(METRICS, "portcullis_operator_api_writes_total", "");

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
    drop(operator);

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
