//! Every invalid object a user could plausibly write is refused, by the apiserver's rules or
//! by the operator's `validate()`, with a message naming the field. The cases live in
//! `crds/tests/invalid/`, where the real-apiserver test in `e2e/` reads them too.

use crate::util::{admits, apiserver_admits, documents, root, yaml_files};

struct Case {
    file: String,
    field: String,
    by: String,
    object: serde_json::Value,
}

fn header(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("# {key}: ")))
        .unwrap_or_else(|| panic!("missing `# {key}:` header"))
        .to_owned()
}

fn cases() -> Vec<Case> {
    yaml_files(&root().join("crds/tests/invalid"))
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            Case {
                file: path.file_name().unwrap().to_string_lossy().into_owned(),
                field: header(&text, "field"),
                by: header(&text, "by"),
                object: documents(&path).remove(0),
            }
        })
        .collect()
}

/// Whether an error is about `field`: reported at it, or at its parent naming it (as for
/// an unknown field: `spec: 'hots' was unexpected`).
fn names_field(error: &str, field: &str) -> bool {
    let (parent, name) = field.rsplit_once('.').unwrap_or(("", field));
    error.starts_with(field)
        || (error.starts_with(&format!("{parent}:")) && error.contains(&format!("'{name}'")))
}

#[test]
fn every_invalid_object_is_refused_with_a_message_naming_the_field() {
    let cases = cases();
    assert!(cases.len() >= 30, "only {} invalid cases", cases.len());
    for case in cases {
        let errors = admits(&case.object)
            .err()
            .unwrap_or_else(|| panic!("{}: was admitted", case.file));
        assert!(
            errors.iter().any(|e| names_field(e, &case.field)),
            "{}: no error names {}: {errors:#?}",
            case.file,
            case.field
        );
    }
}

#[test]
fn each_case_is_refused_by_the_layer_its_header_names() {
    for case in cases() {
        let by_apiserver = apiserver_admits(&case.object).is_err();
        match case.by.as_str() {
            "apiserver" => assert!(
                by_apiserver,
                "{}: the apiserver rules let it through",
                case.file
            ),
            "operator" => assert!(
                !by_apiserver,
                "{}: the apiserver already refuses it; mark it by: apiserver",
                case.file
            ),
            other => panic!("{}: unknown `by: {other}`", case.file),
        }
    }
}
