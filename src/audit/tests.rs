//! Table-driven tests of the audit: every finding of SPEC section 9 (R1, coverage, each exception state), what is
//! not a finding, the counts and gauges' inputs, the next change, the reports, and the agreement with the webhook.

use serde_json::{Value, json};

use super::report::{self, ReportApi};
use super::*;
use crate::rules::SystemNamespaces;

const NOW: &str = "2026-06-30T12:00:00Z";
const EXC: &str = "default-deny-guard.io/exception";
const EXP: &str = "default-deny-guard.io/exception-expires";
const ON: (&str, &str) = ("default-deny", "enabled");

fn now() -> Timestamp {
    NOW.parse().unwrap()
}

fn settings() -> Settings {
    Settings {
        system_namespaces: SystemNamespaces::new(
            ["kube-system", "kube-public", "kube-node-lease"],
            Some("platform/system=true".parse().unwrap()),
        )
        .unwrap(),
        ..Settings::default()
    }
}

fn ns(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> ObjectMeta {
    let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    ObjectMeta {
        name: Some(name.into()),
        uid: Some(format!("uid-{name}")),
        labels: Some(map(labels)),
        annotations: Some(map(annotations)),
        ..ObjectMeta::default()
    }
}

fn policy(namespace: &str, name: &str, annotations: &[(&str, &str)], spec: Value) -> AuditedPolicy {
    let annotations: serde_json::Map<String, Value> =
        annotations.iter().map(|(k, v)| (k.to_string(), Value::from(*v))).collect();
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}-{name}"),
                     "annotations": annotations},
        "spec": spec,
    }))
    .unwrap()
}

fn deny_all() -> Value {
    json!({"podSelector": {}, "policyTypes": ["Ingress"]})
}

/// The context document's "deny all except monitoring".
fn deny_except_monitoring() -> Value {
    json!({"podSelector": {}, "policyTypes": ["Ingress"],
           "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}], "ports": [{"port": 9090}]}]})
}

fn some_pods() -> Value {
    json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]})
}

fn run(namespaces: &[ObjectMeta], policies: &[AuditedPolicy]) -> Audit {
    audit(&settings(), &AuditConfig::default(), namespaces, policies, now())
}

/// One line per finding: `result severity rule subject [state]`.
fn lines(a: &Audit) -> Vec<String> {
    a.findings
        .iter()
        .map(|f| {
            let state = f.exception.as_ref().map(|e| format!(" {}", e.state.as_str())).unwrap_or_default();
            format!("{} {} {} {}{state}", f.outcome.as_str(), f.severity.as_str(), f.check, f.subject)
        })
        .collect()
}

#[test]
fn findings_table() {
    // (case, namespaces, policies, expected findings)
    type Case = (&'static str, Vec<ObjectMeta>, Vec<AuditedPolicy>, Vec<&'static str>);
    let cases: Vec<Case> = vec![
        (
            "a covered namespace: nothing",
            vec![ns("team-a", &[ON], &[])],
            vec![policy("team-a", "default-deny-all", &[], deny_all())],
            vec![],
        ),
        (
            "the team's own deny-all-except-monitoring covers, whatever its name",
            vec![ns("team-b", &[], &[])],
            vec![policy("team-b", "allow-monitoring-only", &[], deny_except_monitoring())],
            vec![],
        ),
        ("no policy: uncovered", vec![ns("team-c", &[ON], &[])], vec![], vec!["fail high coverage namespace team-c"]),
        (
            "a policy that selects some pods does not cover",
            vec![ns("team-d", &[], &[])],
            vec![policy("team-d", "web", &[], some_pods())],
            vec!["fail high coverage namespace team-d"],
        ),
        (
            "an allow-all policy does not cover",
            vec![ns("team-d", &[], &[])],
            vec![policy("team-d", "open", &[], json!({"podSelector": {}, "ingress": [{}]}))],
            vec!["fail high coverage namespace team-d"],
        ),
        (
            "R1: a deny-all in kube-system, by name",
            vec![ns("kube-system", &[], &[])],
            vec![policy("kube-system", "default-deny-all", &[], deny_all())],
            vec!["fail critical R1 networkpolicy kube-system/default-deny-all"],
        ),
        (
            "R1: the team's default-deny with allow rules in a label-selected system namespace",
            vec![ns("platform", &[("platform/system", "true")], &[])],
            vec![policy("platform", "deny-but-monitoring", &[], deny_except_monitoring())],
            vec!["fail critical R1 networkpolicy platform/deny-but-monitoring"],
        ),
        (
            "a policy that selects some pods in kube-system is fine, and system namespaces need no coverage",
            vec![ns("kube-system", &[], &[]), ns("kube-public", &[], &[])],
            vec![policy("kube-system", "dns-only", &[], some_pods())],
            vec![],
        ),
        (
            "an exception on a system namespace's policy is not read (R1 has none)",
            vec![ns("kube-system", &[], &[])],
            vec![policy("kube-system", "deny", &[(EXC, "why")], deny_all())],
            vec!["fail critical R1 networkpolicy kube-system/deny"],
        ),
        (
            "a namespace with a valid exception: exempt, the exception reported as skip",
            vec![ns("legacy", &[], &[(EXC, "legacy app, SEC-789")])],
            vec![],
            vec!["skip info exception namespace legacy valid"],
        ),
        (
            "an exception expiring within the window",
            vec![ns("legacy", &[], &[(EXC, "migration"), (EXP, "2026-07-02")])],
            vec![],
            vec!["warn medium exception namespace legacy expiring"],
        ),
        (
            "an exception beyond the window is valid",
            vec![ns("legacy", &[], &[(EXC, "migration"), (EXP, "2026-08-01")])],
            vec![],
            vec!["skip info exception namespace legacy valid"],
        ),
        (
            "an expired namespace exception: protection resumes, so it is uncovered until the policy is there",
            vec![ns("legacy", &[ON], &[(EXC, "migration"), (EXP, "2026-06-01")])],
            vec![],
            vec!["warn low exception namespace legacy expired", "fail high coverage namespace legacy"],
        ),
        (
            "an expired exception on a covered namespace",
            vec![ns("legacy", &[ON], &[(EXC, "migration"), (EXP, "2026-06-30T11:00:00Z")])],
            vec![policy("legacy", "default-deny-all", &[], deny_all())],
            vec!["warn low exception namespace legacy expired"],
        ),
        (
            "an empty reason is invalid, and does not exempt",
            vec![ns("team-e", &[], &[(EXC, " ")])],
            vec![],
            vec!["warn low exception namespace team-e invalid", "fail high coverage namespace team-e"],
        ),
        (
            "an unreadable expiry is invalid",
            vec![ns("team-e", &[], &[(EXC, "x"), (EXP, "next week")])],
            vec![policy("team-e", "d", &[], deny_all())],
            vec!["warn low exception namespace team-e invalid"],
        ),
        (
            "exceptions on default-deny policies, by state; on other policies they mean nothing",
            vec![ns("team-f", &[ON], &[])],
            vec![
                policy("team-f", "a-valid", &[(EXC, "SEC-1")], deny_all()),
                policy("team-f", "b-expiring", &[(EXC, "SEC-2"), (EXP, "2026-06-30T13:00:00Z")], deny_all()),
                policy("team-f", "c-expired", &[(EXC, "SEC-3"), (EXP, "2026-06-29")], deny_all()),
                policy("team-f", "d-invalid", &[(EXP, "2026-07-30")], deny_all()),
                policy("team-f", "e-not-default-deny", &[(EXC, "SEC-5")], some_pods()),
            ],
            vec![
                "skip info exception networkpolicy team-f/a-valid valid",
                "warn medium exception networkpolicy team-f/b-expiring expiring",
                "warn low exception networkpolicy team-f/c-expired expired",
                "warn low exception networkpolicy team-f/d-invalid invalid",
            ],
        ),
        (
            "a namespace being deleted is not audited",
            vec![ObjectMeta {
                deletion_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now())),
                ..ns("leaving", &[ON], &[])
            }],
            vec![],
            vec![],
        ),
        (
            "a policy whose namespace the cache does not hold yet is judged by the namespace's name",
            vec![],
            vec![policy("kube-system", "deny", &[], deny_all()), policy("team-z", "deny", &[], deny_all())],
            vec!["fail critical R1 networkpolicy kube-system/deny"],
        ),
    ];
    for (case, namespaces, policies, want) in cases {
        let got = run(&namespaces, &policies);
        assert_eq!(lines(&got), want, "{case}");
    }
}

#[test]
fn coverage_counts_and_attention() {
    let namespaces = [
        ns("team-a", &[ON], &[]),
        ns("team-b", &[], &[]),
        ns("team-c", &[], &[]),
        ns("legacy", &[], &[(EXC, "legacy")]),
        ns("kube-system", &[], &[]),
    ];
    let policies =
        [policy("team-a", "default-deny-all", &[], deny_all()), policy("team-b", "own", &[], deny_except_monitoring())];
    let a = run(&namespaces, &policies);
    assert_eq!(a.coverage, Coverage { covered: 2, uncovered: 1, exempt: 2 });
    assert_eq!((a.count(Check::SystemNamespace), a.count(Check::Coverage), a.count(Check::Exception)), (0, 1, 1));
    assert_eq!(a.exceptions(ExceptionState::Valid), 1);
    assert!(a.needs_attention(), "an uncovered namespace needs a person");

    let fixed = run(&namespaces[..2], &policies);
    assert!(!fixed.needs_attention(), "{:?}", lines(&fixed));
    let only_valid = run(&[ns("legacy", &[], &[(EXC, "legacy")])], &[]);
    assert_eq!(lines(&only_valid), ["skip info exception namespace legacy valid"]);
    assert!(!only_valid.needs_attention(), "a valid exception is as recorded");
}

#[test]
fn the_next_change_is_the_next_window_entry_or_expiry() {
    let config = AuditConfig { expiring_within: Duration::from_secs(3600) };
    let at = |s: &str| s.parse::<Timestamp>().unwrap();
    let audit_at = |namespaces: &[ObjectMeta], t| audit(&settings(), &config, namespaces, &[], t);
    let namespaces =
        [ns("a", &[], &[(EXC, "x"), (EXP, "2026-06-30T15:00:00Z")]), ns("b", &[], &[(EXC, "y"), (EXP, "2026-07-01")])];
    // a enters its window at 14:00 and expires at 15:00; b (a date: valid through July 1st) enters its window on
    // July 1st at 23:00.
    assert_eq!(audit_at(&namespaces, now()).next_change, Some(at("2026-06-30T14:00:00Z")));
    let later = audit_at(&namespaces, at("2026-06-30T14:30:00Z"));
    assert_eq!(lines(&later)[0], "warn medium exception namespace a expiring");
    assert_eq!(later.next_change, Some(at("2026-06-30T15:00:00Z")));
    let expired = audit_at(&namespaces, at("2026-06-30T15:00:00Z"));
    assert!(lines(&expired).contains(&"warn low exception namespace a expired".to_owned()), "{:?}", lines(&expired));
    assert!(lines(&expired).contains(&"fail high coverage namespace a".to_owned()), "protection resumes at expiry");
    assert_eq!(expired.next_change, Some(at("2026-07-01T23:00:00Z")));
    assert_eq!(audit_at(&[ns("c", &[], &[(EXC, "no expiry")])], now()).next_change, None);
}

/// The audit's R1 is the webhook's: for every policy of the practice guide's shapes, in a system namespace, the
/// audit reports it exactly when the webhook denies its CREATE, with the webhook's message.
#[test]
fn r1_agrees_with_the_webhook() {
    let settings = settings();
    let specs = [
        deny_all(),
        deny_except_monitoring(),
        some_pods(),
        json!({}),
        json!({"podSelector": {}, "ingress": [{}]}),
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": 53, "protocol": "UDP"}]}]}),
        json!({"podSelector": {"matchExpressions": []}, "policyTypes": ["Ingress", "Egress"]}),
    ];
    for (i, spec) in specs.into_iter().enumerate() {
        for namespace in ["kube-system", "team-a"] {
            let p = policy(namespace, &format!("p{i}"), &[], spec.clone());
            let a = audit(
                &settings,
                &AuditConfig::default(),
                &[ns(namespace, &[ON], &[])],
                std::slice::from_ref(&p),
                now(),
            );
            let object = p.as_rules_policy();
            let req = Request {
                operation: Operation::Create,
                name: "",
                namespace,
                user: "u",
                object: Some(&object),
                old_object: None,
            };
            let d = settings.judge_network_policy(&req, NamespaceFacts::default(), now());
            let found = a.findings.iter().find(|f| f.check == Check::SystemNamespace);
            assert_eq!(found.is_some(), !d.allowed(), "{namespace} {spec}");
            if let Some(f) = found {
                assert!(f.message.starts_with(&d.message), "{}\n{}", f.message, d.message);
            }
        }
    }
    // Warn mode: still a finding (the policy is there either way).
    let warn = Settings { warn: vec![RuleId::R1], ..settings };
    let a = audit(&warn, &AuditConfig::default(), &[], &[policy("kube-system", "d", &[], deny_all())], now());
    assert_eq!(lines(&a), ["fail critical R1 networkpolicy kube-system/d"]);
}

#[test]
fn messages_say_what_to_do() {
    let a = run(
        &[ns("team-c", &[], &[]), ns("kube-system", &[], &[])],
        &[policy("kube-system", "default-deny-all", &[], deny_all())],
    );
    let by_rule = |c: Check| &a.findings.iter().find(|f| f.check == c).unwrap().message;
    let r1 = by_rule(Check::SystemNamespace);
    assert!(r1.contains("kube-system is a system namespace"), "{r1}");
    assert!(r1.contains("kubectl delete networkpolicy default-deny-all -n kube-system"), "{r1}");
    let cov = by_rule(Check::Coverage);
    assert!(cov.starts_with("namespace team-c has no default-deny NetworkPolicy"), "{cov}");
    assert!(cov.contains("kubectl label namespace team-c default-deny=enabled"), "{cov}");
    assert!(cov.contains("kubectl annotate namespace team-c default-deny-guard.io/exception='<reason>'"), "{cov}");
    let exp = run(&[ns("l", &[], &[(EXC, "m"), (EXP, "2026-07-01")])], &[]);
    assert!(exp.findings[0].message.contains("expires within 7days"), "{}", exp.findings[0].message);
}

#[test]
fn reports_per_namespace_and_the_cluster_summary() {
    let a = run(
        &[ns("team-c", &[], &[]), ns("team-f", &[ON], &[]), ns("kube-system", &[], &[]), ns("ok", &[ON], &[])],
        &[
            policy("kube-system", "default-deny-all", &[], deny_all()),
            policy("team-f", "default-deny-all", &[(EXC, "SEC-2"), (EXP, "2026-07-01")], deny_all()),
            policy("ok", "default-deny-all", &[], deny_all()),
        ],
    );
    let seen: Timestamp = "2026-06-01T00:00:00Z".parse().unwrap();
    let reports = report::reports(&a, ReportApi::WgPolicy, |_| seen);
    let names: Vec<(String, Option<&str>)> = reports.iter().map(|r| (r.kind.clone(), r.namespace())).collect();
    assert_eq!(
        names,
        [
            ("PolicyReport".into(), Some("kube-system")),
            ("PolicyReport".into(), Some("team-c")),
            ("PolicyReport".into(), Some("team-f")),
            ("ClusterPolicyReport".into(), None)
        ]
    );
    let v = serde_json::to_value(&reports[0]).unwrap();
    assert_eq!(v["apiVersion"], "wgpolicyk8s.io/v1alpha2");
    assert_eq!(v["metadata"]["name"], "default-deny-guard");
    assert_eq!(v["metadata"]["labels"]["app.kubernetes.io/managed-by"], "default-deny-guard");
    assert_eq!(v["summary"], json!({"pass": 0, "fail": 1, "warn": 0, "error": 0, "skip": 0}));
    let r = &v["results"][0];
    assert_eq!(
        (&r["source"], &r["rule"], &r["result"], &r["severity"]),
        (&json!("default-deny-guard"), &json!("R1"), &json!("fail"), &json!("critical"))
    );
    assert_eq!(
        r["resources"][0],
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "name": "default-deny-all", "namespace": "kube-system", "uid": "uid-kube-system-default-deny-all"})
    );
    assert_eq!(r["timestamp"], json!({"seconds": seen.as_second(), "nanos": 0}));
    let exc = serde_json::to_value(&reports[2]).unwrap();
    assert_eq!(
        exc["results"][0]["properties"],
        json!({"exception-state": "expiring", "exception-reason": "SEC-2", "exception-expires": "2026-07-01"})
    );
    assert_eq!(serde_json::to_value(&reports[1]).unwrap()["results"][0]["resources"][0]["kind"], "Namespace");

    let cluster = serde_json::to_value(&reports[3]).unwrap();
    assert_eq!(cluster["metadata"].get("namespace"), None);
    assert_eq!(cluster["summary"], json!({"pass": 0, "fail": 2, "warn": 1, "error": 0, "skip": 0}));
    let results: Vec<(&str, &str)> = cluster["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["rule"].as_str().unwrap(), r["result"].as_str().unwrap()))
        .collect();
    assert_eq!(results, [("R1", "fail"), ("coverage", "fail"), ("exception", "warn")]);
    assert_eq!(
        cluster["results"][1]["message"],
        "2 of 3 application namespaces have a default-deny NetworkPolicy in force (1 uncovered, 1 exempt)"
    );

    // A clean cluster: only the cluster report, all pass.
    let clean = run(&[ns("ok", &[ON], &[])], &[policy("ok", "default-deny-all", &[], deny_all())]);
    let reports = report::reports(&clean, ReportApi::OpenReports, |_| seen);
    assert_eq!(reports.len(), 1);
    assert_eq!(
        (reports[0].api_version.as_str(), reports[0].kind.as_str()),
        ("openreports.io/v1alpha1", "ClusterReport")
    );
    assert_eq!(reports[0].summary.pass, 3);
}

#[test]
fn the_crds_describe_the_reports() {
    for api in ReportApi::ALL {
        let crds = report::crds(api);
        let kinds: Vec<(&str, &str)> =
            crds.iter().map(|c| (c.spec.names.kind.as_str(), c.spec.scope.as_str())).collect();
        let want = match api {
            ReportApi::WgPolicy => [("PolicyReport", "Namespaced"), ("ClusterPolicyReport", "Cluster")],
            ReportApi::OpenReports => [("Report", "Namespaced"), ("ClusterReport", "Cluster")],
        };
        assert_eq!(kinds, want);
        let crd = serde_json::to_value(&crds[0]).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        assert_eq!(crd["spec"]["versions"][0]["name"], api.version());
        // Structural: no references left, every result field typed.
        assert!(!schema.to_string().contains("$ref"), "{schema}");
        let result = &schema["properties"]["results"]["items"]["properties"];
        for field in [
            "source",
            "policy",
            "rule",
            "result",
            "severity",
            "message",
            "scored",
            "timestamp",
            "resources",
            "properties",
        ] {
            assert!(result[field]["type"].is_string(), "{field}: {result}");
        }
    }
}

#[test]
fn finding_keys_and_event_reasons() {
    let a = run(
        &[ns("legacy", &[], &[(EXC, "m"), (EXP, "2026-07-01")]), ns("team-c", &[], &[]), ns("kube-system", &[], &[])],
        &[policy("kube-system", "d", &[], deny_all())],
    );
    let reasons: Vec<&str> = a.findings.iter().map(Finding::event_reason).collect();
    assert_eq!(reasons, ["DefaultDenyInSystemNamespace", "ExceptionExpiringSoon", "NamespaceUncovered"]);
    let keys: std::collections::HashSet<String> = a.findings.iter().map(Finding::key).collect();
    assert_eq!(keys.len(), a.findings.len(), "distinct findings, distinct keys");
    // The same finding in a later audit has the same key; a change of state is a new one.
    let later = run(&[ns("legacy", &[], &[(EXC, "m"), (EXP, "2026-07-01")])], &[]);
    assert!(keys.contains(&later.findings[0].key()));
    let expired = audit(
        &settings(),
        &AuditConfig::default(),
        &[ns("legacy", &[], &[(EXC, "m"), (EXP, "2026-07-01")])],
        &[],
        "2026-07-02T00:00:00Z".parse().unwrap(),
    );
    assert!(!keys.contains(&expired.findings[0].key()));
}
