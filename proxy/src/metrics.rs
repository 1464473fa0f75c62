//! Prometheus metrics, served on the admin listener's `/metrics`.
//!
//! The request counter's children for every (layer, decision) pair are resolved once, so
//! counting a request is an atomic add with no label lookup.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::verdict::{DecisionKind, LayerId};

/// Every metric of the edge, in its own registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    requests: Vec<IntCounter>,
    /// `portcullis_request_duration_seconds`.
    pub request_duration: Histogram,
    /// `portcullis_upstream_errors_total{kind}`.
    pub upstream_errors: IntCounterVec,
    /// `portcullis_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `portcullis_config_reload_failures_total`.
    pub config_reload_failures: IntCounter,
    /// `portcullis_config_restart_required`: 1 while the document on disk asks for
    /// something only a restart applies (listen addresses).
    pub config_restart_required: IntGauge,
    /// `portcullis_connections_open`.
    pub connections_open: IntGauge,
    /// `portcullis_connections_refused_total{reason}`.
    pub connections_refused: IntCounterVec,
    /// `portcullis_connections_dropped_total{reason}`: connections closed by a guard
    /// before a request was read (timeouts, bad PROXY header, failed handshake).
    pub connections_dropped: IntCounterVec,
    /// `portcullis_ratelimit_decisions_total{limit,outcome}`: requests limited or refused
    /// as banned, by RateLimit.
    pub ratelimit_decisions: IntCounterVec,
    /// `portcullis_bans_total{limit}`: bans started.
    pub bans: IntCounterVec,
    /// `portcullis_ratelimit_backend_errors_total{limit}`: Redis calls that failed, by
    /// RateLimit (`honeypot` for shared honeypot bans): the replica then decides or bans
    /// with its own memory, or lists `/bans` without that limit's Redis bans.
    pub ratelimit_backend_errors: IntCounterVec,
    /// `portcullis_waf_matches_total{rule}`: CRS rules that matched, by rule id.
    pub waf_matches: IntCounterVec,
    /// `portcullis_waf_detected_total`: requests detect-only mode would have blocked.
    pub waf_detected: IntCounter,
    /// `portcullis_av_scans_total{verdict}`: upload scans by finding (`clean`, `infected`,
    /// `too-large`, `encrypted`, `limits-exceeded`, `scanner-unavailable`).
    pub av_scans: IntCounterVec,
    /// `portcullis_access_decisions_total{rule}`: every decision of the geo and access
    /// layers (granted by session or token, denied by country, code sent, code wrong,
    /// session expired or revoked, ...).
    pub access_decisions: IntCounterVec,
    /// `portcullis_requests_by_country_total{country}`: requests by the client's country
    /// (`unknown` when the database has none).
    pub requests_by_country: IntCounterVec,
    /// `portcullis_otp_mails_total{result}`: one-time code mails sent or failed.
    pub otp_mails: IntCounterVec,
    /// `portcullis_app_token_checks_total{result}`: tokens asked of the application
    /// (`valid`, `invalid`, `error`) or answered from memory (`cached`).
    pub app_token_checks: IntCounterVec,
    /// `portcullis_otp_backend_errors_total`: one-time codes judged with the replica's own
    /// memory because the shared Redis could not answer.
    pub otp_backend_errors: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let vec = IntCounterVec::new(Opts::new(name, help), labels)
        .expect("the metric's name and labels are valid");
    registry
        .register(Box::new(vec.clone()))
        .expect("each metric is registered once");
    vec
}

impl Metrics {
    /// Registers every metric in a new registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests_vec = counter_vec(
            &registry,
            "portcullis_requests_total",
            "Requests by the layer that decided and what it decided.",
            &["layer", "decision"],
        );
        let mut requests = Vec::with_capacity(LayerId::ALL.len() * DecisionKind::ALL.len());
        for layer in LayerId::ALL {
            for decision in DecisionKind::ALL {
                requests.push(requests_vec.with_label_values(&[layer.as_str(), decision.as_str()]));
            }
        }
        let request_duration = Histogram::with_opts(
            HistogramOpts::new(
                "portcullis_request_duration_seconds",
                "Time from the request head to the end of the response.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0,
            ]),
        )
        .expect("the histogram is valid");
        registry
            .register(Box::new(request_duration.clone()))
            .expect("each metric is registered once");
        let config_reload_failures = IntCounter::new(
            "portcullis_config_reload_failures_total",
            "Edge documents that were rejected; the last good one kept serving.",
        )
        .expect("the metric is valid");
        registry
            .register(Box::new(config_reload_failures.clone()))
            .expect("each metric is registered once");
        let waf_detected = IntCounter::new(
            "portcullis_waf_detected_total",
            "Requests the WAF would have blocked in detect-only mode.",
        )
        .expect("the metric is valid");
        registry
            .register(Box::new(waf_detected.clone()))
            .expect("each metric is registered once");
        let gauge = |name: &str, help: &str| {
            let gauge = IntGauge::new(name, help).expect("the metric is valid");
            registry
                .register(Box::new(gauge.clone()))
                .expect("each metric is registered once");
            gauge
        };
        let config_restart_required = gauge(
            "portcullis_config_restart_required",
            "1 while the document asks for a change only a restart applies.",
        );
        let connections_open = gauge("portcullis_connections_open", "Open client connections.");
        let otp_backend_errors = IntCounter::new(
            "portcullis_otp_backend_errors_total",
            "One-time codes judged locally because the shared Redis could not answer.",
        )
        .expect("the metric is valid");
        registry
            .register(Box::new(otp_backend_errors.clone()))
            .expect("each metric is registered once");
        Self {
            requests,
            request_duration,
            upstream_errors: counter_vec(
                &registry,
                "portcullis_upstream_errors_total",
                "Requests the origin failed, by kind.",
                &["kind"],
            ),
            config_reloads: counter_vec(
                &registry,
                "portcullis_config_reloads_total",
                "Edge document reloads, by result.",
                &["result"],
            ),
            config_reload_failures,
            config_restart_required,
            connections_open,
            connections_refused: counter_vec(
                &registry,
                "portcullis_connections_refused_total",
                "Client connections refused by a connection cap.",
                &["reason"],
            ),
            connections_dropped: counter_vec(
                &registry,
                "portcullis_connections_dropped_total",
                "Client connections closed before a request was read.",
                &["reason"],
            ),
            ratelimit_decisions: counter_vec(
                &registry,
                "portcullis_ratelimit_decisions_total",
                "Requests limited or refused as banned, by RateLimit.",
                &["limit", "outcome"],
            ),
            bans: counter_vec(
                &registry,
                "portcullis_bans_total",
                "Bans started, by RateLimit.",
                &["limit"],
            ),
            ratelimit_backend_errors: counter_vec(
                &registry,
                "portcullis_ratelimit_backend_errors_total",
                "Redis calls that failed; the replica decided, banned or listed with its own memory instead.",
                &["limit"],
            ),
            waf_matches: counter_vec(
                &registry,
                "portcullis_waf_matches_total",
                "WAF rules that matched, by rule id.",
                &["rule"],
            ),
            waf_detected,
            av_scans: counter_vec(
                &registry,
                "portcullis_av_scans_total",
                "Upload scans by clamd, by finding.",
                &["verdict"],
            ),
            access_decisions: counter_vec(
                &registry,
                "portcullis_access_decisions_total",
                "Decisions of the geo and access layers, by rule.",
                &["rule"],
            ),
            requests_by_country: counter_vec(
                &registry,
                "portcullis_requests_by_country_total",
                "Requests by the client's country.",
                &["country"],
            ),
            otp_mails: counter_vec(
                &registry,
                "portcullis_otp_mails_total",
                "One-time code mails, by result.",
                &["result"],
            ),
            app_token_checks: counter_vec(
                &registry,
                "portcullis_app_token_checks_total",
                "Application tokens checked, by result.",
                &["result"],
            ),
            otp_backend_errors,
            registry,
        }
    }

    /// `portcullis_requests_total{layer,decision}`.
    pub fn request(&self, layer: LayerId, decision: DecisionKind) -> &IntCounter {
        &self.requests[layer.index() * DecisionKind::ALL.len() + decision.index()]
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8192);
        let encoder = TextEncoder::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = encoder.encode(&self.registry.gather(), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_counters_carry_their_labels() {
        let metrics = Metrics::new();
        metrics
            .request(LayerId::Hygiene, DecisionKind::Respond)
            .inc();
        metrics
            .request(LayerId::Upstream, DecisionKind::Pass)
            .inc_by(2);
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(
            text.contains(r#"portcullis_requests_total{decision="respond",layer="hygiene"} 1"#),
            "{text}"
        );
        assert!(text.contains(r#"portcullis_requests_total{decision="pass",layer="upstream"} 2"#));
    }

    #[test]
    fn reload_metrics_are_exported() {
        let metrics = Metrics::new();
        metrics.config_reloads.with_label_values(&["failure"]).inc();
        metrics.config_reload_failures.inc();
        let text = String::from_utf8(metrics.render()).unwrap();
        assert!(text.contains(r#"portcullis_config_reloads_total{result="failure"} 1"#));
        assert!(text.contains("portcullis_config_reload_failures_total 1"));
    }
}
