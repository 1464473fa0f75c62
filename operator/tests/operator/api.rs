//! The API as the apiserver serves it: the schema and CEL rules refuse invalid objects
//! (the cases of `crds/tests/invalid/` marked `by: apiserver`), and `kubectl explain`
//! shows the field documentation.

use std::process::Command;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use portcullis_crds::{AccessPolicy, MediaServer, RateLimit, WafRuleSet};
use serde_json::Value;

use crate::util::{CLUSTER, TestNamespace, eventually, root};

async fn server_side_dry_run(ns: &TestNamespace, object: &Value) -> Result<(), String> {
    let name = object["metadata"]["name"].as_str().unwrap();
    let params = PatchParams::apply("portcullis-tests")
        .force()
        .dry_run()
        .validation_strict();
    let patch = Patch::Apply(object);
    let result = match object["kind"].as_str().unwrap() {
        "MediaServer" => ns
            .api::<MediaServer>()
            .patch(name, &params, &patch)
            .await
            .map(drop),
        "AccessPolicy" => ns
            .api::<AccessPolicy>()
            .patch(name, &params, &patch)
            .await
            .map(drop),
        "WafRuleSet" => ns
            .api::<WafRuleSet>()
            .patch(name, &params, &patch)
            .await
            .map(drop),
        "RateLimit" => ns
            .api::<RateLimit>()
            .patch(name, &params, &patch)
            .await
            .map(drop),
        other => panic!("unexpected kind {other}"),
    };
    result.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_apiserver_refuses_every_invalid_object_its_rules_cover_naming_the_field() {
    let ns = TestNamespace::new("invalid").await;
    let dir = root().join("crds/tests/invalid");
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let header = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
                .unwrap()
                .to_owned()
        };
        if header("by") != "apiserver" {
            continue;
        }
        let field = header("field");
        let object: Value = serde_saphyr::from_str(&text).unwrap();
        let error = server_side_dry_run(&ns, &object)
            .await
            .err()
            .unwrap_or_else(|| panic!("{}: the apiserver accepted it", path.display()));
        // The apiserver names fields as spec.a.b or spec.a[0]; an unknown field by its name.
        let last = field.rsplit('.').next().unwrap();
        let last = last.split('[').next().unwrap();
        assert!(
            error.contains(&field) || error.contains(last),
            "{}: {error} does not name {field}",
            path.display()
        );
        checked += 1;
    }
    assert!(
        checked >= 25,
        "only {checked} cases were checked against the apiserver"
    );
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_example_is_accepted_by_the_apiserver() {
    let ns = TestNamespace::new("examples").await;
    for dir in ["seed", "minimal", "behind-cloudflare"] {
        for entry in std::fs::read_dir(root().join("examples").join(dir)).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for object in serde_saphyr::from_multiple::<Value>(&text).unwrap() {
                server_side_dry_run(&ns, &object)
                    .await
                    .unwrap_or_else(|e| panic!("{dir}: {e}"));
            }
        }
    }
    ns.delete().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kubectl_explain_prints_the_field_documentation() {
    let ns = TestNamespace::new("explain").await;
    // The apiserver publishes a CRD's OpenAPI schema a moment after it is established,
    // and again after each change to it; `kubectl explain` reads that schema.
    let text = eventually(
        "kubectl explain mediaserver.spec",
        Duration::from_secs(60),
        || async {
            let output = Command::new(CLUSTER.bin.join("kubectl"))
                .args(["explain", "mediaserver.spec"])
                .env("KUBECONFIG", &CLUSTER.kubeconfig)
                .output()
                .unwrap();
            if !output.status.success() {
                eprintln!(
                    "kubectl explain: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                );
                return None;
            }
            Some(String::from_utf8_lossy(&output.stdout).into_owned())
        },
    )
    .await;
    assert!(
        text.contains("The public host name users type in their browser"),
        "{text}"
    );
    assert!(text.contains("accessPolicyRef"), "{text}");
    let output = Command::new(CLUSTER.bin.join("kubectl"))
        .args(["get", "portcullis", "-n", &ns.name])
        .env("KUBECONFIG", &CLUSTER.kubeconfig)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the portcullis category lists: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    ns.delete().await;
}
