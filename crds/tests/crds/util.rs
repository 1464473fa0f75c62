//! Checks an object the way the cluster would: the apiserver's schema (with strict field
//! validation, as kubectl asks for), its defaulting and CEL rules, then the operator's
//! `validate()`.

use std::path::{Path, PathBuf};

use portcullis_crds::{AccessPolicy, MediaServer, RateLimit, Validate, WafRuleSet, crds};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crds/ has a parent")
        .to_path_buf()
}

/// Every YAML file under `dir`, sorted.
pub fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The documents of a multi-document YAML file.
pub fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The openAPIV3Schema of the CRD serving `kind`.
fn schema_of(kind: &str) -> Value {
    let crd = crds()
        .into_iter()
        .find(|crd| crd.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD serves kind {kind}"));
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref());
    serde_json::to_value(schema.expect("every CRD has a schema")).unwrap()
}

/// Refuses unknown fields wherever the apiserver would under strict field validation.
fn strict(schema: &mut Value) {
    let Some(object) = schema.as_object_mut() else {
        return;
    };
    if object.contains_key("properties")
        && !object.contains_key("additionalProperties")
        && !object.contains_key("x-kubernetes-preserve-unknown-fields")
    {
        object.insert("additionalProperties".into(), Value::Bool(false));
    }
    for (key, child) in object.iter_mut() {
        match key.as_str() {
            "properties" => child
                .as_object_mut()
                .into_iter()
                .flat_map(|p| p.values_mut())
                .for_each(strict),
            "items" | "additionalProperties" => strict(child),
            _ => {}
        }
    }
}

/// `/spec/a/0` → `spec.a[0]`.
fn dotted(pointer: &str) -> String {
    let mut path = String::new();
    for part in pointer.split('/').filter(|p| !p.is_empty()) {
        if part.bytes().all(|b| b.is_ascii_digit()) {
            path.push_str(&format!("[{part}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(part);
        }
    }
    path
}

/// What the apiserver would answer: the defaulted object, or each error as `field: message`.
pub fn apiserver_admits(object: &Value) -> Result<Value, Vec<String>> {
    let kind = object["kind"].as_str().expect("objects have a kind");
    let schema = schema_of(kind);
    let mut strict_schema = schema.clone();
    strict(&mut strict_schema["properties"]["spec"]);
    let validator = jsonschema::validator_for(&strict_schema).expect("the CRD schema compiles");
    let errors: Vec<String> = validator
        .iter_errors(object)
        .map(|e| format!("{}: {e}", dotted(e.instance_path().as_str())))
        .collect();
    if !errors.is_empty() {
        return Err(errors);
    }
    let defaulted = kube::core::cel::apply_defaults(&schema, object);
    kube::core::cel::Validator::new()
        .validate(&schema, &defaulted, None)
        .map_err(|errors| {
            errors
                .iter()
                .map(|e| format!("{}: {}", e.field_path.trim_start_matches('.'), e.message))
                .collect::<Vec<_>>()
        })?;
    Ok(defaulted)
}

fn operator_admits<K: DeserializeOwned>(
    object: Value,
    spec: impl Fn(&K) -> &dyn Validate,
) -> Result<(), Vec<String>> {
    let typed: K =
        serde_json::from_value(object).map_err(|e| vec![format!("does not deserialize: {e}")])?;
    spec(&typed)
        .validate()
        .map_err(|e| e.0.iter().map(ToString::to_string).collect())
}

/// The apiserver's checks, then the operator's: Ok, or each error as `field: message`.
pub fn admits(object: &Value) -> Result<(), Vec<String>> {
    let defaulted = apiserver_admits(object)?;
    match object["kind"].as_str() {
        Some("MediaServer") => operator_admits::<MediaServer>(defaulted, |o| &o.spec),
        Some("AccessPolicy") => operator_admits::<AccessPolicy>(defaulted, |o| &o.spec),
        Some("WafRuleSet") => operator_admits::<WafRuleSet>(defaulted, |o| &o.spec),
        Some("RateLimit") => operator_admits::<RateLimit>(defaulted, |o| &o.spec),
        other => panic!("not a Portcullis kind: {other:?}"),
    }
}
