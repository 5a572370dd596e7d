//! The whole request path without the network: AdmissionReview bytes in, response bytes out.
//!
//! `cargo bench --bench review` (add `-- --quick` for a fast look). Throughput is in review bytes per second.
//! The bodies are those of `tests/common/reviews.rs`, which the load generator (`examples/loadgen.rs`) sends too.

#[path = "../tests/common/reviews.rs"]
mod reviews;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use default_deny_guard::admission::{self, Webhook};
use default_deny_guard::metrics::Metrics;
use default_deny_guard::rules::{Settings, SystemNamespaces};
use default_deny_guard::telemetry::LogFormat;
use default_deny_guard::{server, telemetry};
use reviews::bodies;

fn bench(c: &mut Criterion) {
    let settings = Settings::default();
    let now = jiff::Timestamp::now();
    let cases = [
        ("networkpolicy_create", Webhook::Validate, bodies::networkpolicy_create()),
        ("networkpolicy_update", Webhook::Validate, bodies::networkpolicy_update()),
        ("networkpolicy_delete", Webhook::Validate, bodies::networkpolicy_delete()),
        ("namespace_create_patch", Webhook::Mutate, bodies::namespace_create()),
        ("update_1000_rules", Webhook::Validate, bodies::large_update(1000)),
    ];
    let mut group = c.benchmark_group("review");
    for (name, webhook, body) in &cases {
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new(*name, body.len()), body, |b, body| {
            b.iter(|| admission::review(&settings, &(), *webhook, body, now).unwrap())
        });
    }
    group.finish();

    // Cost linear in the size of the review: object and oldObject each with n rules.
    let mut group = c.benchmark_group("update_rules");
    for n in [250, 1000, 4000] {
        let body = bodies::large_update(n);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &body, |b, body| {
            b.iter(|| admission::review(&settings, &(), Webhook::Validate, body, now).unwrap())
        });
    }
    group.finish();

    // Cost does not grow with configuration: 3 system namespaces against 10,000 names and patterns.
    let mut group = c.benchmark_group("system_namespaces");
    let create = bodies::networkpolicy_create_in("team-4711-prod");
    let many: Vec<String> =
        (0..10_000).map(|i| if i % 2 == 0 { format!("system-{i}") } else { format!("platform-{i}-*") }).collect();
    for (label, settings) in [
        ("3", Settings::default()),
        ("10000", Settings { system_namespaces: SystemNamespaces::new(&many, None).unwrap(), ..Settings::default() }),
    ] {
        group.bench_function(label, |b| {
            b.iter(|| admission::review(&settings, &(), Webhook::Validate, &create, now).unwrap())
        });
    }
    group.finish();

    // What the server adds to each decision: the metrics and the log line (written to a sink here).
    let mut group = c.benchmark_group("record");
    let body = bodies::networkpolicy_create();
    let reviewed = admission::review(&settings, &(), Webhook::Validate, &body, now).unwrap();
    let metrics = Metrics::new();
    let elapsed = std::time::Duration::from_micros(4);
    group.bench_function("metrics_only", |b| {
        b.iter(|| server::record_decision(&metrics, Webhook::Validate, &reviewed, elapsed, true))
    });
    for (name, format) in [("metrics_and_json_log", LogFormat::Json), ("metrics_and_text_log", LogFormat::Text)] {
        let subscriber = telemetry::subscriber(format, false, std::io::sink);
        tracing::subscriber::with_default(subscriber, || {
            group.bench_function(name, |b| {
                b.iter(|| server::record_decision(&metrics, Webhook::Validate, &reviewed, elapsed, true))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
