//! The MediaServer controller on the real control plane.

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Event, Pod, Secret},
    networking::v1::NetworkPolicy,
};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use portcullis_crds::{AccessPolicy, MediaServer, edge::EdgeConfig};
use serde_json::{Value, json};

use crate::util::{TestNamespace, condition, eventually, root};

const READY_TIMEOUT: Duration = Duration::from_secs(120);

async fn status_of(ns: &TestNamespace, name: &str) -> Value {
    let server = ns.api::<MediaServer>().get(name).await.unwrap();
    serde_json::to_value(server.status).unwrap()
}

/// Waits until condition `type_` of MediaServer `name` is True; returns its status.
async fn wait_condition(ns: &TestNamespace, name: &str, type_: &str) -> Value {
    eventually(
        &format!("MediaServer {name} {type_}"),
        READY_TIMEOUT,
        || async {
            let status = status_of(ns, name).await;
            (condition(&status, type_)?.0 == "True").then_some(status)
        },
    )
    .await
}

async fn wait_ready(ns: &TestNamespace, name: &str) -> Value {
    wait_condition(ns, name, "Ready").await
}

async fn wait_stalled(ns: &TestNamespace, name: &str) -> Value {
    wait_condition(ns, name, "Stalled").await
}

fn minimal(access_policy: Option<&str>) -> Value {
    let mut spec = json!({
        "host": "media.example.org",
        "tls": {"secretName": "media-tls"},
        "storage": {"config": {"existingClaim": "config"}, "cache": {"existingClaim": "cache"}, "media": {"existingClaim": "media"}},
        "edge": {"replicas": 1},
    });
    if let Some(policy) = access_policy {
        spec["accessPolicyRef"] = json!({"name": policy});
    }
    json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "MediaServer", "metadata": {"name": "jellyfin"}, "spec": spec})
}

fn policy(emails: &[&str]) -> Value {
    json!({
        "apiVersion": "portcullis.dev/v1alpha1",
        "kind": "AccessPolicy",
        "metadata": {"name": "family"},
        "spec": {"emails": emails},
    })
}

async fn minimal_namespace(test: &str) -> TestNamespace {
    let mut ns = TestNamespace::new(test).await;
    for claim in ["config", "cache", "media"] {
        ns.existing_claim(claim).await;
    }
    ns.secret("media-tls", &["tls.crt", "tls.key"]).await;
    ns
}

async fn edge_document(ns: &TestNamespace) -> EdgeConfig {
    let map = ns
        .api::<ConfigMap>()
        .get("jellyfin-edge-config")
        .await
        .unwrap();
    EdgeConfig::from_yaml(&map.data.unwrap()["edge.yaml"]).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_seed_becomes_ready_with_its_transcoder_on_the_gpu_node() {
    let mut ns = TestNamespace::new("seed").await;
    ns.existing_claim("nas-media").await;
    ns.existing_claim("jellyfin-backups").await;
    ns.volume_for("jellyfin-config").await;
    ns.volume_for("jellyfin-cache").await;
    ns.secret("media-example-org-tls", &["tls.crt", "tls.key"])
        .await;
    ns.secret("smtp-credentials", &["username", "password"])
        .await;
    ns.secret("geoip-country", &["country.mmdb"]).await;
    for file in [
        "accesspolicy.yaml",
        "wafruleset.yaml",
        "ratelimits.yaml",
        "mediaserver.yaml",
    ] {
        ns.apply_file(&root().join("examples/seed").join(file))
            .await;
    }
    let ctx = ns.start_operator();
    let status = wait_ready(&ns, "jellyfin").await;
    assert_eq!(status["url"], "https://media.example.org");
    assert_eq!(status["transcoder"]["readyReplicas"], 1);
    assert_eq!(condition(&status, "Stalled").unwrap().0, "False");
    let backup = condition(&status, "BackupReady").unwrap();
    assert_eq!(
        (backup.0.as_str(), backup.1.as_str()),
        ("Unknown", "NoBackupYet")
    );

    let pods = ns
        .api::<Pod>()
        .list(&ListParams::default().labels("app.kubernetes.io/component=transcoder"))
        .await
        .unwrap();
    assert_eq!(pods.items.len(), 1);
    assert_eq!(
        pods.items[0].spec.as_ref().unwrap().node_name.as_deref(),
        Some("kwok-gpu-0")
    );

    let document = edge_document(&ns).await;
    assert_eq!(status["configHash"], document.content_hash());
    assert_eq!(
        document.access.as_ref().unwrap().countries.allow[0].as_str(),
        "FR"
    );
    assert_eq!(document.rate_limits.len(), 2);
    let policies = ns
        .api::<NetworkPolicy>()
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(policies.items.len(), 3, "app, edge and transcoder policies");
    // Prometheus (any namespace by default) may scrape the transcoder's /metrics, which
    // shares the port the app sends jobs to.
    let transcoder = policies
        .items
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("jellyfin-transcoder"))
        .unwrap();
    let scrape = serde_json::to_value(&transcoder.spec.as_ref().unwrap().ingress).unwrap();
    assert!(
        scrape.as_array().unwrap().iter().any(|rule| {
            rule["from"] == json!([{"namespaceSelector": {}}])
                && rule["ports"] == json!([{"port": 8099, "protocol": "TCP"}])
        }),
        "{scrape}"
    );

    let policy = eventually("AccessPolicy status", READY_TIMEOUT, || async {
        let policy = ns.api::<AccessPolicy>().get("family").await.ok()?;
        let status = policy.status?;
        (!status.used_by.is_empty()).then_some(status)
    })
    .await;
    assert_eq!(policy.used_by, ["jellyfin"]);
    assert!(ctx.metrics.total_writes() > 0);
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_access_policy_edit_reaches_the_edge_document_without_restarting_the_edge() {
    let ns = minimal_namespace("policy-edit").await;
    ns.apply_value(policy(&["alice@example.org"])).await;
    ns.apply_value(minimal(Some("family"))).await;
    let _ctx = ns.start_operator();
    wait_ready(&ns, "jellyfin").await;
    let template = |d: Deployment| d.spec.template.metadata.unwrap().annotations.unwrap();
    let before = template(ns.api::<Deployment>().get("jellyfin-edge").await.unwrap());

    ns.apply_value(policy(&["alice@example.org", "bob@example.org"]))
        .await;
    eventually("bob in the edge document", READY_TIMEOUT, || async {
        let document = edge_document(&ns).await;
        (document.access?.emails.len() == 2).then_some(())
    })
    .await;
    let status = eventually("the new hash in status", READY_TIMEOUT, || async {
        let status = status_of(&ns, "jellyfin").await;
        let hash = edge_document(&ns).await.content_hash();
        (status["configHash"] == hash).then_some(status)
    })
    .await;
    assert_eq!(condition(&status, "Ready").unwrap().0, "True");
    let after = template(ns.api::<Deployment>().get("jellyfin-edge").await.unwrap());
    assert_eq!(
        before, after,
        "a policy edit is reloaded live, not by restarting pods"
    );
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_reference_stalls_with_a_warning_event_and_recovers_once_it_exists() {
    let ns = minimal_namespace("missing-ref").await;
    ns.apply_value(minimal(Some("family"))).await;
    let _ctx = ns.start_operator();
    let status = wait_stalled(&ns, "jellyfin").await;
    let (ready, reason, message) = condition(&status, "Ready").unwrap();
    assert_eq!(
        (ready.as_str(), reason.as_str()),
        ("False", "MissingReference")
    );
    assert!(message.contains("AccessPolicy \"family\""), "{message}");
    assert!(
        ns.api::<Deployment>()
            .get_opt("jellyfin-edge")
            .await
            .unwrap()
            .is_none(),
        "nothing is rolled out on a bad reference"
    );
    eventually("a Warning Event", READY_TIMEOUT, || async {
        let events = ns.api::<Event>().list(&ListParams::default()).await.ok()?;
        events
            .items
            .iter()
            .any(|e| {
                e.type_.as_deref() == Some("Warning")
                    && e.reason.as_deref() == Some("MissingReference")
            })
            .then_some(())
    })
    .await;

    ns.apply_value(policy(&["alice@example.org"])).await;
    let status = wait_ready(&ns, "jellyfin").await;
    assert_eq!(condition(&status, "Stalled").unwrap().0, "False");
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_secret_without_its_keys_is_named_in_the_status() {
    let ns = minimal_namespace("tls-keys").await;
    ns.secret("media-tls", &["tls.crt"]).await;
    ns.apply_value(minimal(None)).await;
    let _ctx = ns.start_operator();
    let status = wait_stalled(&ns, "jellyfin").await;
    let (_, reason, message) = condition(&status, "Ready").unwrap();
    assert_eq!(reason, "MissingKey");
    assert!(message.contains("tls.key"), "{message}");
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resync_with_nothing_changed_writes_nothing() {
    let ns = minimal_namespace("no-op").await;
    ns.apply_value(minimal(None)).await;
    let ctx = ns.start_operator();
    wait_ready(&ns, "jellyfin").await;
    // Let the status settle, then provoke reconciles without changing anything they render.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes = ctx.metrics.total_writes();
    // Finished reconciles: the duration is recorded when a reconcile completes.
    let reconciles = || {
        ctx.metrics
            .duration
            .with_label_values(&["MediaServer"])
            .get_sample_count()
    };
    for i in 0..3 {
        let before = reconciles();
        let patch = json!({"metadata": {"annotations": {"example.org/touch": i.to_string()}}});
        ns.api::<MediaServer>()
            .patch("jellyfin", &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .unwrap();
        // The controller may merge triggers, so wait for each reconcile before the next.
        eventually("a reconcile", READY_TIMEOUT, || async {
            (reconciles() > before).then_some(())
        })
        .await;
    }
    assert_eq!(
        ctx.metrics.total_writes(),
        writes,
        "a reconcile with nothing to change wrote to the API"
    );
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn deleting_the_media_server_garbage_collects_everything_it_owned() {
    let ns = minimal_namespace("gc").await;
    ns.apply_value(minimal(None)).await;
    let _ctx = ns.start_operator();
    wait_ready(&ns, "jellyfin").await;
    assert!(
        ns.api::<Secret>()
            .get_opt("jellyfin-edge-session")
            .await
            .unwrap()
            .is_some()
    );
    ns.api::<MediaServer>()
        .delete("jellyfin", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually("children gone", READY_TIMEOUT, || async {
        let owned = ListParams::default().labels("app.kubernetes.io/instance=jellyfin");
        let deployments = ns.api::<Deployment>().list(&owned).await.ok()?.items.len();
        let maps = ns.api::<ConfigMap>().list(&owned).await.ok()?.items.len();
        let secrets = ns.api::<Secret>().list(&owned).await.ok()?.items.len();
        let pods = ns.api::<Pod>().list(&owned).await.ok()?.items.len();
        (deployments + maps + secrets + pods == 0).then_some(())
    })
    .await;
    assert!(
        ns.api::<Secret>()
            .get_opt("media-tls")
            .await
            .unwrap()
            .is_some(),
        "the user's own Secret stays"
    );
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_issuer_without_cert_manager_is_stalled_with_the_reason() {
    let ns = minimal_namespace("issuer").await;
    let mut server = minimal(None);
    server["spec"]["tls"] = json!({"issuerRef": {"name": "letsencrypt", "kind": "ClusterIssuer"}});
    ns.apply_value(server).await;
    let _ctx = ns.start_operator();
    let status = wait_stalled(&ns, "jellyfin").await;
    let (_, reason, message) = condition(&status, "Ready").unwrap();
    assert_eq!(reason, "CertManagerMissing");
    assert!(
        message.contains("install cert-manager or use spec.tls.secretName"),
        "{message}"
    );
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_policy_forgets_a_media_server_that_stops_using_it_or_is_deleted() {
    let ns = minimal_namespace("used-by").await;
    ns.apply_value(policy(&["alice@example.org"])).await;
    ns.apply_value(minimal(Some("family"))).await;
    let _ctx = ns.start_operator();
    let used_by = |expected: usize| {
        let ns = &ns;
        move || async move {
            let policy = ns.api::<AccessPolicy>().get("family").await.ok()?;
            let status = policy.status?;
            (status.used_by.len() == expected).then_some(status.used_by)
        }
    };
    assert_eq!(
        eventually("usedBy jellyfin", READY_TIMEOUT, used_by(1)).await,
        ["jellyfin"]
    );
    ns.apply_value(minimal(None)).await;
    eventually("usedBy emptied", Duration::from_secs(30), used_by(0)).await;
    // Deleted while using it: the policy forgets it too.
    ns.apply_value(minimal(Some("family"))).await;
    eventually("usedBy jellyfin again", READY_TIMEOUT, used_by(1)).await;
    ns.api::<MediaServer>()
        .delete("jellyfin", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "usedBy emptied after the deletion",
        Duration::from_secs(30),
        used_by(0),
    )
    .await;
    ns.delete().await;
}
