//! Leader election on the real control plane: of two operator replicas only the Lease
//! holder reconciles, and the other takes over when the holder dies.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams};
use portcullis_crds::MediaServer;
use serde_json::json;

use crate::util::{OperatorProcess, TestNamespace, eventually};

// The waits are generous: this test shares two cores with the rest of the suite (helm
// installs, other operators), and a Lease hand-over plus a first reconcile then takes a
// while. What it checks does not depend on how long that takes.

#[tokio::test(flavor = "multi_thread")]
async fn only_the_lease_holder_reconciles_and_a_standby_takes_over() {
    let mut ns = TestNamespace::new("leader").await;
    for claim in ["config", "cache", "media"] {
        ns.existing_claim(claim).await;
    }
    ns.secret("media-tls", &["tls.crt", "tls.key"]).await;
    ns.apply_value(
        json!({"apiVersion": "portcullis.dev/v1alpha1", "kind": "MediaServer",
        "metadata": {"name": "jellyfin"},
        "spec": {"host": "media.example.org", "tls": {"secretName": "media-tls"},
            "storage": {"config": {"existingClaim": "config"}, "cache": {"existingClaim": "cache"},
                "media": {"existingClaim": "media"}}, "edge": {"replicas": 1}}}),
    )
    .await;
    let start = |address: &str, identity: &str| {
        OperatorProcess::start(
            &ns.name,
            address,
            &["--lease-namespace", &ns.name, "--identity", identity],
        )
    };
    let mut first = Some(start("127.0.0.1:28091", "replica-a"));
    let second = start("127.0.0.1:28092", "replica-b");
    let leases = ns.api::<Lease>();
    let holder = eventually("a Lease holder", Duration::from_secs(120), || async {
        leases
            .get("portcullis-operator")
            .await
            .ok()?
            .spec?
            .holder_identity
    })
    .await;
    let (leader, standby) = if holder == "replica-a" {
        (first.as_ref().unwrap(), &second)
    } else {
        (&second, first.as_ref().unwrap())
    };
    eventually(
        "the leader reconciles",
        Duration::from_secs(120),
        || async { (leader.reconciles() > 0).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        standby.reconciles(),
        0,
        "the standby reconciled while the other replica held the Lease"
    );

    // The leader dies; the standby takes the Lease once it expires and starts reconciling.
    let survivor_address = standby.metrics.clone();
    if holder == "replica-a" {
        first.take();
    } else {
        drop(second);
    }
    let touch = json!({"metadata": {"annotations": {"example.org/touch": "after-failover"}}});
    ns.api::<MediaServer>()
        .patch("jellyfin", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .unwrap();
    eventually(
        "the standby takes over",
        Duration::from_secs(90),
        || async {
            let reconciles = crate::util::metric(
                &survivor_address,
                "portcullis_operator_reconcile_duration_seconds_count",
                "MediaServer",
            );
            (reconciles > 0).then_some(())
        },
    )
    .await;
    let new_holder = leases
        .get("portcullis-operator")
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    assert_ne!(new_holder, holder);
    drop(first);
    ns.delete().await;
}
