//! Prometheus metrics of the operator.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

/// The operator's metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` serves.
    pub registry: Registry,
    /// Reconciles by kind.
    pub reconciles: IntCounterVec,
    /// Failed reconciles by kind and error variant.
    pub failures: IntCounterVec,
    /// Reconcile duration by kind.
    pub duration: HistogramVec,
    /// Writes to the API by the kind of object written.
    pub writes: IntCounterVec,
    /// Questions to edge pods about their bans, by result (`answered`, `failed`).
    pub ban_queries: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "portcullis_operator_reconciles_total",
                "Reconciles, by kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let failures = IntCounterVec::new(
            Opts::new(
                "portcullis_operator_reconcile_errors_total",
                "Failed reconciles, by kind and error.",
            ),
            &["kind", "error"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "portcullis_operator_reconcile_duration_seconds",
                "Reconcile duration, by kind.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["kind"],
        )
        .expect("valid metric");
        let writes = IntCounterVec::new(
            Opts::new(
                "portcullis_operator_api_writes_total",
                "Writes to the Kubernetes API, by object kind.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let ban_queries = IntCounterVec::new(
            Opts::new(
                "portcullis_operator_ban_queries_total",
                "Edge pods asked for the bans they enforce, by result (answered, failed).",
            ),
            &["result"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(writes.clone()),
            Box::new(ban_queries.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            reconciles,
            failures,
            duration,
            writes,
            ban_queries,
        }
    }
}

impl Metrics {
    /// The total number of writes so far, all kinds together.
    pub fn total_writes(&self) -> u64 {
        prometheus::core::Collector::collect(&self.writes)
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|metric| metric.get_counter().get_value() as u64)
            .sum()
    }
}
