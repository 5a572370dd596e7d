//! Prometheus metrics (docs/design.md section 6), on a registry of their own, served as text on the metrics port.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::admission::{DecisionLabel, ReviewKind, Webhook};
use crate::rules::{Operation, RuleId};

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Upper bounds of the latency histogram: from 50 µs, since a decision takes microseconds and a slow one is news.
const DURATION_BUCKETS: &[f64] =
    &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// A registry that exports the build information, as every process of this binary does; `serve` adds the
/// webhook's metrics to it ([`Metrics`]), `reconcile` the reconciler's.
#[derive(Clone)]
pub struct Exporter {
    registry: Registry,
}

impl Default for Exporter {
    fn default() -> Self {
        Self::new()
    }
}

impl Exporter {
    pub fn new() -> Exporter {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new("default_deny_guard_build_info", "The running version; always 1."),
            &["version"],
        )
        .unwrap();
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        registry.register(Box::new(build_info)).unwrap();
        Exporter { registry }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// `GET /metrics`, for the plain-HTTP metrics port.
    pub fn router(self) -> axum::Router {
        let render = |axum::extract::State(exporter): axum::extract::State<Exporter>| async move {
            ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], exporter.render())
        };
        axum::Router::new().route("/metrics", axum::routing::get(render)).with_state(self)
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(8192);
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding never fails");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The webhook's metrics. Every label value comes from a closed set (the enums of the arguments, or a `&'static
/// str` written in the program), never from a request: no client can grow the number of series (SPEC section 6).
#[derive(Clone)]
pub struct Metrics {
    exporter: Exporter,
    requests: IntCounterVec,
    /// The children of `requests`, one slot per combination of label values ([`request_slot`]), made on first use.
    request_children: Arc<[OnceLock<IntCounter>]>,
    duration: HistogramVec,
    /// The children of `duration`, by webhook, made on first use.
    duration_children: Arc<[OnceLock<Histogram>; Webhook::ALL.len()]>,
    exceptions: IntCounterVec,
    invalid: IntCounterVec,
    tls_reloads: IntCounterVec,
    certificate_expiry: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The rule label: the rule that decided, or `none`.
pub fn rule_label(rule: Option<RuleId>) -> &'static str {
    rule.map_or("none", RuleId::as_str)
}

/// Combinations of the label values of `requests`.
const REQUEST_SLOTS: usize = Webhook::ALL.len()
    * ReviewKind::ALL.len()
    * Operation::ALL.len()
    * DecisionLabel::ALL.len()
    * (RuleId::ALL.len() + 1);

/// The slot of one combination: a mixed-radix number of the enums' positions.
fn request_slot(
    webhook: Webhook,
    kind: ReviewKind,
    operation: Operation,
    decision: DecisionLabel,
    rule: Option<RuleId>,
) -> usize {
    let mut slot = webhook as usize;
    slot = slot * ReviewKind::ALL.len() + kind as usize;
    slot = slot * Operation::ALL.len() + operation as usize;
    slot = slot * DecisionLabel::ALL.len() + decision as usize;
    slot * (RuleId::ALL.len() + 1) + rule.map_or(0, |r| r as usize + 1)
}

impl Metrics {
    pub fn new() -> Metrics {
        let exporter = Exporter::new();
        let registry = exporter.registry();
        let requests = IntCounterVec::new(
            Opts::new("default_deny_guard_admission_requests_total", "Admission reviews answered, by outcome."),
            &["webhook", "kind", "operation", "decision", "rule"],
        )
        .unwrap();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "default_deny_guard_admission_duration_seconds",
                "Time to answer an admission review, from the complete body to the encoded answer.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["webhook"],
        )
        .unwrap();
        let exceptions = IntCounterVec::new(
            Opts::new("default_deny_guard_exceptions_total", "Requests let through by an exception annotation."),
            &["kind"],
        )
        .unwrap();
        let invalid = IntCounterVec::new(
            Opts::new(
                "default_deny_guard_invalid_requests_total",
                "Requests answered with an HTTP error: not an AdmissionReview, wrong method or content type, too large.",
            ),
            &["reason"],
        )
        .unwrap();
        let tls_reloads = IntCounterVec::new(
            Opts::new("default_deny_guard_tls_reloads_total", "Reloads of the serving certificate, by result."),
            &["result"],
        )
        .unwrap();
        let certificate_expiry = Gauge::new(
            "default_deny_guard_certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate in use, in seconds since the Unix epoch.",
        )
        .unwrap();
        for c in [&requests, &exceptions, &invalid, &tls_reloads] {
            registry.register(Box::new(c.clone())).unwrap();
        }
        registry.register(Box::new(duration.clone())).unwrap();
        registry.register(Box::new(certificate_expiry.clone())).unwrap();
        Metrics {
            exporter,
            requests,
            request_children: (0..REQUEST_SLOTS).map(|_| OnceLock::new()).collect(),
            duration,
            duration_children: Arc::new([const { OnceLock::new() }; Webhook::ALL.len()]),
            exceptions,
            invalid,
            tls_reloads,
            certificate_expiry,
        }
    }

    /// Counts one answered review. A series appears on its first use, so that /metrics shows what happened.
    pub fn observe_review(
        &self,
        webhook: Webhook,
        kind: ReviewKind,
        operation: Operation,
        decision: DecisionLabel,
        rule: Option<RuleId>,
        elapsed: Duration,
    ) {
        // `with_label_values` hashes the five values and takes the vector's lock on every call; a child made once
        // and kept is a plain atomic increment (~600 fewer instructions a review, and no lock that the runtime's
        // threads share).
        let labels = [webhook.as_str(), kind.as_str(), operation.as_str(), decision.as_str(), rule_label(rule)];
        self.request_children[request_slot(webhook, kind, operation, decision, rule)]
            .get_or_init(|| self.requests.with_label_values(&labels))
            .inc();
        self.duration_children[webhook as usize]
            .get_or_init(|| self.duration.with_label_values(&[webhook.as_str()]))
            .observe(elapsed.as_secs_f64());
    }

    pub fn exception_used(&self, kind: ReviewKind) {
        self.exceptions.with_label_values(&[kind.as_str()]).inc();
    }

    /// `reason`: one of the program's own words (`not_found`, `method`, `too_large`, ...).
    pub fn invalid_request(&self, reason: &'static str) {
        self.invalid.with_label_values(&[reason]).inc();
    }

    pub fn tls_reload(&self, ok: bool) {
        self.tls_reloads.with_label_values(&[if ok { "success" } else { "error" }]).inc();
    }

    pub fn set_certificate_expiry(&self, unix_seconds: i64) {
        self.certificate_expiry.set(unix_seconds as f64);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        self.exporter.render()
    }

    pub fn exporter(&self) -> &Exporter {
        &self.exporter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_distinct_and_in_range() {
        let mut seen = std::collections::HashSet::new();
        let rules = std::iter::once(None).chain(RuleId::ALL.map(Some));
        for w in Webhook::ALL {
            for k in ReviewKind::ALL {
                for o in Operation::ALL {
                    for d in DecisionLabel::ALL {
                        for r in rules.clone() {
                            let slot = request_slot(w, k, o, d, r);
                            assert!(slot < REQUEST_SLOTS);
                            assert!(seen.insert(slot));
                        }
                    }
                }
            }
        }
        assert_eq!(seen.len(), REQUEST_SLOTS);
    }

    #[test]
    fn series_appear_on_first_use_with_the_values_of_the_enums() {
        let m = Metrics::new();
        let us5 = Duration::from_micros(5);
        for _ in 0..3 {
            m.observe_review(
                Webhook::Validate,
                ReviewKind::NetworkPolicy,
                Operation::Create,
                DecisionLabel::Allow,
                None,
                us5,
            );
        }
        m.observe_review(Webhook::Validate, ReviewKind::Other, Operation::Create, DecisionLabel::Allow, None, us5);
        m.observe_review(
            Webhook::Validate,
            ReviewKind::Namespace,
            Operation::Update,
            DecisionLabel::Deny,
            Some(RuleId::R5),
            us5,
        );
        let text = m.render();
        for want in [
            r#"default_deny_guard_admission_requests_total{decision="allow",kind="NetworkPolicy",operation="CREATE",rule="none",webhook="validate"} 3"#,
            r#"default_deny_guard_admission_requests_total{decision="allow",kind="other",operation="CREATE",rule="none",webhook="validate"} 1"#,
            r#"default_deny_guard_admission_requests_total{decision="deny",kind="Namespace",operation="UPDATE",rule="R5",webhook="validate"} 1"#,
            r#"default_deny_guard_admission_duration_seconds_count{webhook="validate"} 5"#,
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        assert!(!text.contains(r#"webhook="mutate""#), "no series before first use: {text}");
    }
}
