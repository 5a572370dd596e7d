//! The reconciler's metrics, registered on an [`Exporter`] of their own, beside the build
//! information (not the webhook's metrics: a reconciler has no certificate whose expiry to report).

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts};

use super::state::Survey;
use crate::metrics::Exporter;

/// From 1 ms: a reconcile that needs no API call takes microseconds, one apply a few milliseconds.
const DURATION_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Clone)]
pub struct ReconcileMetrics {
    namespaces: IntGaugeVec,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: Histogram,
}

impl ReconcileMetrics {
    /// Registers the reconciler's metrics on `metrics`' registry.
    pub fn register(metrics: &Exporter) -> ReconcileMetrics {
        let namespaces = IntGaugeVec::new(
            Opts::new(
                "default_deny_guard_namespaces",
                "Namespaces by state: protected (the default-deny policy is in place), unprotected, exempt (system \
                 namespace or exception). Namespaces being deleted are not counted.",
            ),
            &["state"],
        )
        .unwrap();
        let reconciles = IntCounterVec::new(
            Opts::new("default_deny_guard_reconcile_total", "Namespace reconciles, by result."),
            &["result"],
        )
        .unwrap();
        let errors = IntCounterVec::new(
            Opts::new("default_deny_guard_reconcile_errors_total", "Failed reconciles, by kind of error."),
            &["reason"],
        )
        .unwrap();
        let duration = Histogram::with_opts(
            HistogramOpts::new("default_deny_guard_reconcile_duration_seconds", "Time to reconcile one namespace.")
                .buckets(DURATION_BUCKETS.to_vec()),
        )
        .unwrap();
        let registry = metrics.registry();
        registry.register(Box::new(namespaces.clone())).unwrap();
        registry.register(Box::new(reconciles.clone())).unwrap();
        registry.register(Box::new(errors.clone())).unwrap();
        registry.register(Box::new(duration.clone())).unwrap();
        // Every state is shown from the start, 0 until the first survey.
        for state in ["protected", "unprotected", "exempt"] {
            namespaces.with_label_values(&[state]).set(0);
        }
        ReconcileMetrics { namespaces, reconciles, errors, duration }
    }

    pub fn observe(&self, result: &str, elapsed: Duration) {
        self.reconciles.with_label_values(&[result]).inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    pub fn error(&self, reason: &str) {
        self.errors.with_label_values(&[reason]).inc();
    }

    pub fn set_survey(&self, survey: &Survey) {
        self.namespaces.with_label_values(&["protected"]).set(survey.protected as i64);
        self.namespaces.with_label_values(&["unprotected"]).set(survey.unprotected.len() as i64);
        self.namespaces.with_label_values(&["exempt"]).set(survey.exempt as i64);
    }
}
