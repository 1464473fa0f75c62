//! The CRD YAML committed in the chart is exactly what the types generate.

use portcullis_crds::{crd_file_name, crd_yaml, crds};

use crate::util::root;

#[test]
fn committed_crds_match_the_types() {
    let dir = root().join("charts/portcullis/crds");
    for crd in crds() {
        let path = dir.join(crd_file_name(&crd));
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == crd_yaml(&crd),
            "{} differs from the types; run `cargo run -p portcullis-crds --bin crdgen` and commit it",
            path.display()
        );
    }
}

#[test]
fn every_kind_has_its_short_name_category_status_and_ready_column() {
    for (crd, short) in crds().iter().zip(["ms", "ap", "waf", "rl"]) {
        let names = &crd.spec.names;
        assert_eq!(names.short_names.as_deref(), Some(&[short.to_owned()][..]));
        assert_eq!(
            names.categories.as_deref(),
            Some(&["portcullis".to_owned()][..])
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        assert!(
            version
                .subresources
                .as_ref()
                .is_some_and(|s| s.status.is_some()),
            "{}: no status subresource",
            names.kind
        );
        let columns = version
            .additional_printer_columns
            .as_deref()
            .unwrap_or_default();
        assert_eq!(
            columns.first().map(|c| c.name.as_str()),
            Some("Ready"),
            "{}",
            names.kind
        );
        assert_eq!(
            columns.last().map(|c| c.name.as_str()),
            Some("Age"),
            "{}",
            names.kind
        );
    }
}

#[test]
fn every_schema_field_has_a_description_for_kubectl_explain() {
    fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
        if let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, child) in properties {
                let child_path = format!("{path}.{name}");
                if child.get("description").is_none()
                    && !matches!(name.as_str(), "apiVersion" | "kind" | "metadata")
                {
                    missing.push(child_path.clone());
                }
                walk(&child_path, child, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let mut missing = Vec::new();
    for crd in crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        walk(
            &crd.spec.names.kind,
            &schema["openAPIV3Schema"],
            &mut missing,
        );
    }
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:#?}"
    );
}

/// Walks every sub-schema of every CRD.
fn each_schema(visit: &mut dyn FnMut(&str, &serde_json::Value)) {
    fn walk(
        path: &str,
        schema: &serde_json::Value,
        visit: &mut dyn FnMut(&str, &serde_json::Value),
    ) {
        visit(path, schema);
        if let Some(properties) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, child) in properties {
                walk(&format!("{path}.{name}"), child, visit);
            }
        }
        for key in ["items", "additionalProperties"] {
            if let Some(child) = schema.get(key).filter(|c| c.is_object()) {
                walk(&format!("{path}[]"), child, visit);
            }
        }
    }
    for crd in crds() {
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        walk(&crd.spec.names.kind, &schema["openAPIV3Schema"], visit);
    }
}

#[test]
fn every_default_satisfies_its_own_schema() {
    let mut failures = Vec::new();
    each_schema(&mut |path, schema| {
        if let Some(default) = schema.get("default") {
            let validator = jsonschema::validator_for(schema).expect("sub-schemas compile");
            failures.extend(
                validator
                    .iter_errors(default)
                    .map(|e| format!("{path}: default {default}: {e}")),
            );
        }
    });
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn only_formats_kubernetes_recognises_are_used() {
    const KNOWN: &[&str] = &[
        "int32",
        "int64",
        "float",
        "double",
        "byte",
        "date",
        "date-time",
        "password",
    ];
    let mut unknown = Vec::new();
    each_schema(&mut |path, schema| {
        if let Some(format) = schema.get("format").and_then(|f| f.as_str())
            && !KNOWN.contains(&format)
        {
            unknown.push(format!("{path}: {format}"));
        }
    });
    assert!(unknown.is_empty(), "the apiserver warns about {unknown:?}");
}
