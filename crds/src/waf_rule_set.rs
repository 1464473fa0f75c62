//! `WafRuleSet`: the web application firewall the edge runs, built on the OWASP Core Rule Set.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    common::ByteSize,
    validation::{Problems, Validate, ValidationErrors},
};

/// A web application firewall: the OWASP Core Rule Set (CRS) v4 at a paranoia level, with
/// exclusions for false positives and rules of your own in SecLang.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "WafRuleSet",
    namespaced,
    doc = "A web application firewall for a MediaServer: the OWASP Core Rule Set v4 with paranoia level, thresholds, exclusions and custom SecLang rules.",
    status = "WafRuleSetStatus",
    shortname = "waf",
    category = "portcullis",
    derive = "PartialEq",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Paranoia","type":"integer","jsonPath":".spec.crs.paranoiaLevel"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WafRuleSetSpec {
    /// `Block` refuses a request whose anomaly score reaches the threshold (403 with a
    /// request id); `Detect` only logs what it would have blocked.
    #[serde(default)]
    pub mode: WafMode,
    /// The OWASP Core Rule Set.
    #[serde(default)]
    pub crs: CrsSpec,
    /// Rules switched off, or switched off for some requests or arguments, to silence
    /// false positives.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 256))]
    pub exclusions: Vec<Exclusion>,
    /// Rules of your own in SecLang (ModSecurity syntax), run after the CRS initialisation
    /// and before its blocking evaluation. Use rule ids 1-99999 (the range CRS leaves to
    /// users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 262144))]
    pub custom_rules: Option<String>,
    /// The most request body the WAF inspects; larger bodies are refused with 413.
    #[serde(default = "default_body_limit")]
    pub request_body_limit: ByteSize,
    /// Also inspect responses (CRS phases 3 and 4: data leakage rules). Costs latency on
    /// every response.
    #[serde(default)]
    pub inspect_responses: bool,
}

fn default_body_limit() -> ByteSize {
    ByteSize::from_mib(13)
}

/// Whether the WAF blocks or only reports.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WafMode {
    /// Refuse requests that reach the anomaly threshold.
    #[default]
    Block,
    /// Log and count what would have been refused, refuse nothing.
    Detect,
}

/// The OWASP Core Rule Set settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("!has(self.executingParanoiaLevel) || self.executingParanoiaLevel >= self.paranoiaLevel").message("executingParanoiaLevel cannot be lower than paranoiaLevel").field_path(".executingParanoiaLevel"))]
#[serde(rename_all = "camelCase")]
pub struct CrsSpec {
    /// Run the Core Rule Set; when false only custom rules run.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// 1 (few false positives) to 4 (strictest): which CRS rules count towards blocking.
    #[serde(default = "default_paranoia")]
    #[schemars(range(min = 1, max = 4))]
    pub paranoia_level: i32,
    /// Rules up to this level also run and are logged, without counting towards blocking;
    /// useful before raising `paranoiaLevel`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4))]
    pub executing_paranoia_level: Option<i32>,
    /// The request anomaly score at which a request is blocked (CRS default 5: one
    /// critical match).
    #[serde(default = "default_inbound_threshold")]
    #[schemars(range(min = 1, max = 10000))]
    pub inbound_anomaly_threshold: i32,
    /// The response anomaly score at which a response is blocked (CRS default 4).
    #[serde(default = "default_outbound_threshold")]
    #[schemars(range(min = 1, max = 10000))]
    pub outbound_anomaly_threshold: i32,
    /// Apply Portcullis' exclusions for Jellyfin's normal traffic (playback, browsing,
    /// search, uploads, the websocket), like a CRS application plugin.
    #[serde(default = "default_true")]
    pub app_exclusions: bool,
}

impl Default for CrsSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            paranoia_level: default_paranoia(),
            executing_paranoia_level: None,
            inbound_anomaly_threshold: default_inbound_threshold(),
            outbound_anomaly_threshold: default_outbound_threshold(),
            app_exclusions: true,
        }
    }
}

const fn default_true() -> bool {
    true
}

const fn default_paranoia() -> i32 {
    1
}

const fn default_inbound_threshold() -> i32 {
    5
}

const fn default_outbound_threshold() -> i32 {
    4
}

/// Rules to switch off: by id or tag, everywhere or only for some paths, and either whole
/// or only for some targets (such as one argument or cookie).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(validation = Rule::new("size(self.ruleIds) + size(self.ruleIdRanges) + size(self.tags) > 0").message("name the rules to exclude with ruleIds, ruleIdRanges or tags"))]
#[serde(rename_all = "camelCase")]
pub struct Exclusion {
    /// Rule ids, e.g. `942100`.
    #[serde(default)]
    #[schemars(length(max = 512), inner(range(min = 1, max = 9999999)))]
    pub rule_ids: Vec<i32>,
    /// Inclusive id ranges, e.g. `942000-942999`.
    #[serde(default)]
    #[schemars(length(max = 64), inner(regex(pattern = r"^[0-9]{1,7}-[0-9]{1,7}$")))]
    pub rule_id_ranges: Vec<String>,
    /// Rule tags, e.g. `attack-sqli` or `paranoia-level/2`.
    #[serde(default)]
    #[schemars(length(max = 64), inner(length(min = 1, max = 128)))]
    pub tags: Vec<String>,
    /// Only for requests whose path starts with one of these; everywhere when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^/[^\s?#]*$"), length(max = 512))
    )]
    pub paths: Vec<String>,
    /// Only stop the rules from looking at these targets (e.g. `ARGS:searchTerm`,
    /// `REQUEST_COOKIES:session`, `REQUEST_HEADERS:User-Agent`); the whole rule when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(regex(pattern = r"^[A-Z_]+(:[^\s|,]+)?$"), length(max = 256))
    )]
    pub targets: Vec<String>,
}

/// What the operator last observed of a WafRuleSet.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WafRuleSetStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling and Stalled, in the standard Kubernetes shape.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// How many custom rules compiled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_rule_count: Option<i32>,
    /// The MediaServers that use this rule set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used_by: Vec<String>,
}

/// Targets (SecLang collections) an exclusion may name.
const EXCLUDABLE_TARGETS: &[&str] = &[
    "ARGS",
    "ARGS_GET",
    "ARGS_POST",
    "ARGS_NAMES",
    "ARGS_GET_NAMES",
    "ARGS_POST_NAMES",
    "REQUEST_COOKIES",
    "REQUEST_COOKIES_NAMES",
    "REQUEST_HEADERS",
    "REQUEST_HEADERS_NAMES",
    "REQUEST_BODY",
    "REQUEST_URI",
    "REQUEST_FILENAME",
    "REQUEST_BASENAME",
    "FILES",
    "FILES_NAMES",
    "XML",
];

impl Validate for WafRuleSetSpec {
    fn validate(&self) -> Result<(), ValidationErrors> {
        let mut problems = Problems::default();
        for (i, exclusion) in self.exclusions.iter().enumerate() {
            for (j, range) in exclusion.rule_id_ranges.iter().enumerate() {
                let bounds = range.split_once('-').and_then(|(low, high)| {
                    Some((low.parse::<i32>().ok()?, high.parse::<i32>().ok()?))
                });
                problems.require(
                    bounds.is_some_and(|(low, high)| low <= high),
                    format!("spec.exclusions[{i}].ruleIdRanges[{j}]"),
                    format!(
                        "{range:?} is not a range such as 942000-942999 with its lower id first"
                    ),
                );
            }
            for (j, target) in exclusion.targets.iter().enumerate() {
                let collection = target.split_once(':').map_or(target.as_str(), |(c, _)| c);
                problems.require(
                    EXCLUDABLE_TARGETS.contains(&collection),
                    format!("spec.exclusions[{i}].targets[{j}]"),
                    format!(
                        "{collection} is not a target rules can be excluded from; use one of {}",
                        EXCLUDABLE_TARGETS.join(", ")
                    ),
                );
            }
        }
        if let Some(rules) = self.custom_rules.as_deref() {
            // The edge's own parser and compiler: what passes here loads there. `@pmFromFile`
            // names the CRS's data files, which the edge has and the operator has not.
            let data_files = if self.crs.enabled {
                portcullis_waf::DataFiles::NamesOnly
            } else {
                portcullis_waf::DataFiles::Absent
            };
            problems.check(
                portcullis_waf::WafEngine::validate_rules(rules, data_files)
                    .map_err(|error| error.to_string()),
                "spec.customRules",
            );
        }
        problems.require(
            self.crs.enabled || self.custom_rules.as_deref().is_some_and(|r| !r.trim().is_empty()),
            "spec.crs.enabled",
            "with the Core Rule Set off and no custom rules the WAF would inspect nothing; remove the WafRuleSet reference instead",
        );
        problems.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(crs_enabled: bool, custom_rules: &str) -> WafRuleSetSpec {
        serde_json::from_value(serde_json::json!({
            "crs": {"enabled": crs_enabled},
            "customRules": custom_rules,
        }))
        .unwrap()
    }

    #[test]
    fn a_crs_data_file_is_accepted_with_the_crs_and_refused_without_it() {
        let rule = "SecRule REQUEST_HEADERS:User-Agent \"@pmFromFile scanners-user-agents.data\" \"id:10001,phase:1,deny,status:403\"";
        spec(true, rule).validate().unwrap();
        let error = spec(false, rule).validate().unwrap_err().to_string();
        assert!(error.contains("spec.customRules"), "{error}");
        assert!(error.contains("Core Rule Set is off"), "{error}");
        // Custom rules alone are fine without the CRS.
        spec(
            false,
            "SecRule ARGS \"@contains x\" \"id:10002,phase:1,deny,status:403\"",
        )
        .validate()
        .unwrap();
    }
}
