//! The reconciler's metrics, registered on an [`Exporter`] of their own, beside the build
//! information (not the webhook's metrics: a reconciler has no certificate whose expiry to report).

use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts};

use super::state::Survey;
use crate::audit::{Audit, Check, ExceptionState};
use crate::metrics::Exporter;

/// From 1 ms: a reconcile that needs no API call takes microseconds, one apply a few milliseconds.
const DURATION_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

#[derive(Clone)]
pub struct ReconcileMetrics {
    namespaces: IntGaugeVec,
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: Histogram,
    violations: IntGaugeVec,
    exceptions: IntGaugeVec,
    coverage: IntGaugeVec,
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
        let violations = IntGaugeVec::new(
            Opts::new(
                "default_deny_guard_violations",
                "Existing objects in violation, by rule: R1 (a default-deny NetworkPolicy in a system namespace), \
                 coverage (an application namespace with no default-deny NetworkPolicy).",
            ),
            &["rule"],
        )
        .unwrap();
        let exceptions = IntGaugeVec::new(
            Opts::new(
                "default_deny_guard_exceptions_active",
                "Exception annotations on namespaces and default-deny NetworkPolicies, by state: valid, expiring \
                 (within --exceptions-expiring-within), expired, invalid.",
            ),
            &["state"],
        )
        .unwrap();
        let coverage = IntGaugeVec::new(
            Opts::new(
                "default_deny_guard_namespace_coverage",
                "Namespaces by coverage: covered (a default-deny NetworkPolicy is in force, the reconciler's or \
                 another), uncovered, exempt (system namespace or exception). Namespaces being deleted are not counted.",
            ),
            &["state"],
        )
        .unwrap();
        let registry = metrics.registry();
        registry.register(Box::new(violations.clone())).unwrap();
        registry.register(Box::new(exceptions.clone())).unwrap();
        registry.register(Box::new(coverage.clone())).unwrap();
        registry.register(Box::new(namespaces.clone())).unwrap();
        registry.register(Box::new(reconciles.clone())).unwrap();
        registry.register(Box::new(errors.clone())).unwrap();
        registry.register(Box::new(duration.clone())).unwrap();
        // Every state is shown from the start, 0 until the first survey.
        for state in ["protected", "unprotected", "exempt"] {
            namespaces.with_label_values(&[state]).set(0);
        }
        let metrics = ReconcileMetrics { namespaces, reconciles, errors, duration, violations, exceptions, coverage };
        metrics.set_audit(&Audit::default());
        metrics
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

    /// Sets the audit's gauges: every series of their closed label sets, so that a 0 is a 0 and not a gap.
    pub fn set_audit(&self, audit: &Audit) {
        for check in Check::VIOLATIONS {
            self.violations.with_label_values(&[check.as_str()]).set(audit.count(check) as i64);
        }
        for state in ExceptionState::ALL {
            self.exceptions.with_label_values(&[state.as_str()]).set(audit.exceptions(state) as i64);
        }
        let c = audit.coverage;
        for (state, n) in [("covered", c.covered), ("uncovered", c.uncovered), ("exempt", c.exempt)] {
            self.coverage.with_label_values(&[state]).set(n as i64);
        }
    }
}
