//! Every example a user may copy is admitted and survives a serde round trip.

use portcullis_crds::{AccessPolicy, MediaServer, RateLimit, WafRuleSet};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

use crate::util::{admits, apiserver_admits, documents, root, yaml_files};

fn round_trips<K: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(object: Value) {
    let typed: K = serde_json::from_value(object).expect("deserializes");
    let again: K = serde_json::from_value(serde_json::to_value(&typed).unwrap()).unwrap();
    assert_eq!(typed, again);
    let yaml = serde_saphyr::to_string(&typed).unwrap();
    let from_yaml: K = serde_saphyr::from_str(&yaml).unwrap();
    assert_eq!(typed, from_yaml);
}

fn resource_examples() -> Vec<(String, Value)> {
    let files = yaml_files(&root().join("examples"));
    files
        .iter()
        .filter(|path| {
            documents(path)
                .iter()
                .all(|d| d["apiVersion"] == "portcullis.dev/v1alpha1")
        })
        .flat_map(|path| {
            documents(path)
                .into_iter()
                .map(move |d| (path.display().to_string(), d))
        })
        .collect()
}

#[test]
fn every_example_is_admitted_by_the_apiserver_rules_and_the_operator() {
    let examples = resource_examples();
    assert!(
        examples.len() >= 8,
        "expected the seed, minimal and behind-Cloudflare examples, found {}",
        examples.len()
    );
    for (file, object) in examples {
        if let Err(errors) = admits(&object) {
            panic!(
                "{file}: {} was refused: {errors:#?}",
                object["metadata"]["name"]
            );
        }
    }
}

#[test]
fn every_example_survives_a_serde_round_trip_after_defaulting() {
    for (file, object) in resource_examples() {
        let defaulted = apiserver_admits(&object).unwrap_or_else(|e| panic!("{file}: {e:?}"));
        match object["kind"].as_str().unwrap() {
            "MediaServer" => round_trips::<MediaServer>(defaulted),
            "AccessPolicy" => round_trips::<AccessPolicy>(defaulted),
            "WafRuleSet" => round_trips::<WafRuleSet>(defaulted),
            "RateLimit" => round_trips::<RateLimit>(defaulted),
            other => panic!("{file}: unexpected kind {other}"),
        }
    }
}

#[test]
fn defaults_fill_what_the_minimal_example_leaves_out() {
    let object = documents(&root().join("examples/minimal/mediaserver.yaml")).remove(0);
    let server: MediaServer = serde_json::from_value(apiserver_admits(&object).unwrap()).unwrap();
    assert_eq!(server.spec.edge.replicas, 2);
    assert_eq!(server.spec.app.image, "docker.io/jellyfin/jellyfin");
    assert_eq!(server.spec.storage.config.size.as_ref().unwrap().0, "5Gi");
    assert!(
        server.spec.storage.media.read_only,
        "media is read-only unless asked otherwise"
    );
    assert_eq!(server.spec.storage.media.mount_path, "/media");
}
