//! A driver for profilers: answers one of the benchmark's reviews N times, nothing else, so that callgrind's
//! instruction counts (stable on a loaded machine, unlike wall time) compare before and after a change.
//!
//! ```text
//! cargo build --release --example profile_review
//! valgrind --tool=callgrind --callgrind-out-file=target/callgrind.out \
//!     target/release/examples/profile_review networkpolicy_create 10000
//! callgrind_annotate target/callgrind.out | head -40
//! ```
//!
//! Cases: networkpolicy_create, networkpolicy_update, networkpolicy_delete, namespace_create_patch,
//! update_N_rules (object and oldObject with N ingress rules each, e.g. update_1000_rules), system_namespaces_3
//! and system_namespaces_10000 (the same review, with 3 system namespaces or with 10,000 names and patterns);
//! and `record_json`: the metrics and the JSON log line of a decision (to a sink), without the review.
//! `json_only:CASE` (e.g. `json_only:networkpolicy_create`): the case's body read as JSON and thrown away, what
//! `floor --read-json` adds to the floor, the least that any reading of the review costs.

#[path = "../tests/common/reviews.rs"]
mod reviews;

use std::time::Duration;

use default_deny_guard::admission::{self, Webhook};
use default_deny_guard::metrics::Metrics;
use default_deny_guard::rules::{Settings, SystemNamespaces};
use default_deny_guard::telemetry::LogFormat;
use default_deny_guard::{server, telemetry};
use reviews::bodies;

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let case = args.next().unwrap_or_else(|| "networkpolicy_create".into());
    let iterations: u64 = args.next().map_or(10_000, |n| n.parse().expect("iterations: a number"));
    let mut settings = Settings::default();
    let (json_only, case) = match case.strip_prefix("json_only:") {
        Some(case) => (true, case.to_owned()),
        None => (false, case),
    };
    let (webhook, body) = match case.as_str() {
        "networkpolicy_create" => (Webhook::Validate, bodies::networkpolicy_create()),
        "networkpolicy_update" => (Webhook::Validate, bodies::networkpolicy_update()),
        "networkpolicy_delete" => (Webhook::Validate, bodies::networkpolicy_delete()),
        "namespace_create_patch" => (Webhook::Mutate, bodies::namespace_create()),
        rules if rules.starts_with("update_") && rules.ends_with("_rules") => {
            let n = rules["update_".len()..rules.len() - "_rules".len()].parse().expect("update_N_rules");
            (Webhook::Validate, bodies::large_update(n))
        }
        "system_namespaces_3" => (Webhook::Validate, bodies::networkpolicy_create_in("team-4711-prod")),
        "system_namespaces_10000" => {
            let many: Vec<String> = (0..10_000)
                .map(|i| if i % 2 == 0 { format!("system-{i}") } else { format!("platform-{i}-*") })
                .collect();
            settings.system_namespaces = SystemNamespaces::new(&many, None).unwrap();
            (Webhook::Validate, bodies::networkpolicy_create_in("team-4711-prod"))
        }
        "record_json" => {
            let body = bodies::networkpolicy_create();
            let reviewed = admission::review(&settings, &(), Webhook::Validate, &body, now()).unwrap();
            let metrics = Metrics::new();
            let subscriber = telemetry::subscriber(LogFormat::Json, false, std::io::sink);
            tracing::subscriber::with_default(subscriber, || {
                for _ in 0..iterations {
                    server::record_decision(&metrics, Webhook::Validate, &reviewed, Duration::from_micros(4), true);
                }
            });
            println!("{case}: {iterations} decisions recorded");
            return;
        }
        other => panic!("unknown case {other}"),
    };
    if json_only {
        // What `floor --read-json` does: the body checked as JSON, nothing kept or decided.
        for _ in 0..iterations {
            serde_json::from_slice::<serde::de::IgnoredAny>(std::hint::black_box(&body)).unwrap();
        }
        println!("json_only {case}: {iterations} bodies of {} bytes read", body.len());
        return;
    }
    let now = now();
    let mut bytes = 0usize;
    for _ in 0..iterations {
        let reviewed = admission::review(&settings, &(), webhook, std::hint::black_box(&body), now).unwrap();
        bytes += std::hint::black_box(reviewed.body.len());
    }
    println!("{case}: {iterations} reviews of {} bytes, {bytes} answer bytes", body.len());
}
