//! The whole request path without the network: AdmissionReview bytes in, response bytes out.
//!
//! `cargo bench --bench review` (add `-- --quick` for a fast look). Throughput is in review bytes per second.

#[path = "../tests/common/mod.rs"]
mod common;

use common::{Review, deny_all_spec, namespace_object, network_policy};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use default_deny_guard::admission::{self, Webhook};
use default_deny_guard::rules::{Settings, SystemNamespaces};
use serde_json::{Value, json};

fn body(review: &Review) -> Vec<u8> {
    serde_json::to_vec(&review.json()).unwrap()
}

fn spec_with_rules(n: usize) -> Value {
    let rules: Vec<Value> = (0..n)
        .map(|i| {
            json!({"from": [{"namespaceSelector": {"matchLabels": {"team": format!("team-{i}")}},
                             "podSelector": {"matchLabels": {"app": "client"}}}],
                   "ports": [{"protocol": "TCP", "port": 8000 + (i % 1000)}]})
        })
        .collect();
    json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": rules})
}

fn bench(c: &mut Criterion) {
    let settings = Settings::default();
    let now = jiff::Timestamp::now();
    let cases = [
        (
            "networkpolicy_create",
            Webhook::Validate,
            body(&Review::network_policy("CREATE", "production", "default-deny-all").object(network_policy(
                "production",
                "default-deny-all",
                json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [
                    {"from": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}},
                               "podSelector": {"matchLabels": {"app": "prometheus"}}}],
                     "ports": [{"protocol": "TCP", "port": 9090}]}]}),
            ))),
        ),
        (
            "networkpolicy_delete",
            Webhook::Validate,
            body(&Review::network_policy("DELETE", "production", "").old(network_policy(
                "production",
                "default-deny-all",
                deny_all_spec(),
            ))),
        ),
        (
            "namespace_create_patch",
            Webhook::Mutate,
            body(&Review::namespace("CREATE", "payments").object(namespace_object(
                "payments",
                json!({"team": "payments"}),
                json!(null),
            ))),
        ),
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
        let spec = spec_with_rules(n);
        let mut open = spec.clone();
        open["ingress"].as_array_mut().unwrap().push(json!({}));
        let body = body(
            &Review::network_policy("UPDATE", "production", "big")
                .object(network_policy("production", "big", open))
                .old(network_policy("production", "big", spec)),
        );
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &body, |b, body| {
            b.iter(|| admission::review(&settings, &(), Webhook::Validate, body, now).unwrap())
        });
    }
    group.finish();

    // Cost does not grow with configuration: 3 system namespaces against 10,000 names and patterns.
    let mut group = c.benchmark_group("system_namespaces");
    let create = body(&Review::network_policy("CREATE", "team-4711-prod", "default-deny-all").object(network_policy(
        "team-4711-prod",
        "default-deny-all",
        deny_all_spec(),
    )));
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
