//! Table-driven tests of the rules: every case of docs/design.md sections 3 and 4, every manifest of the practice
//! guide (docs/practice.md).

use super::*;
use serde_json::{Value, json};

const NOW: &str = "2026-06-30T12:00:00Z";
const ADMIN: &str = "kubernetes-admin";
const NS_CONTROLLER: &str = "system:serviceaccount:kube-system:namespace-controller";
const GC: &str = "system:serviceaccount:kube-system:generic-garbage-collector";

fn now() -> Timestamp {
    NOW.parse().unwrap()
}

fn policy(v: Value) -> NetworkPolicy {
    serde_json::from_value(v).unwrap()
}

fn namespace(v: Value) -> Namespace {
    serde_json::from_value(v).unwrap()
}

fn classify(spec: Value) -> Option<String> {
    policy(json!({ "spec": spec })).spec.default_deny().map(|d| d.to_string())
}

// === Section 3: which policy is default-deny ===

#[test]
fn default_deny_classification_table() {
    let cases: Vec<(&str, Value, Option<&str>)> = vec![
        ("ingress: []", json!({"podSelector": {}, "ingress": []}), Some("deny-all (Ingress)")),
        ("ingress: null", json!({"podSelector": {}, "ingress": null}), Some("deny-all (Ingress)")),
        ("ingress omitted", json!({"podSelector": {}}), Some("deny-all (Ingress)")),
        ("spec {}", json!({}), Some("deny-all (Ingress)")),
        ("podSelector null", json!({"podSelector": null}), Some("deny-all (Ingress)")),
        ("matchLabels {}", json!({"podSelector": {"matchLabels": {}}}), Some("deny-all (Ingress)")),
        ("matchExpressions []", json!({"podSelector": {"matchExpressions": []}}), Some("deny-all (Ingress)")),
        (
            "both empty",
            json!({"podSelector": {"matchLabels": {}, "matchExpressions": []}, "ingress": []}),
            Some("deny-all (Ingress)"),
        ),
        ("matchLabels selects some", json!({"podSelector": {"matchLabels": {"app": "web"}}}), None),
        (
            "matchExpressions selects some",
            json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}}),
            None,
        ),
        ("ingress [{}] allows all", json!({"podSelector": {}, "ingress": [{}]}), None),
        (
            "a rule with empty peers and ports allows all",
            json!({"podSelector": {}, "ingress": [{"from": [], "ports": []}]}),
            None,
        ),
        (
            "null peers and ports allow all",
            json!({"podSelector": {}, "ingress": [{"from": null, "ports": null}]}),
            None,
        ),
        (
            "one allow-all rule among others allows all",
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}, {}]}),
            None,
        ),
        (
            "an ingress rule with peers",
            json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}),
            Some("default-deny with 1 allow rule (Ingress)"),
        ),
        (
            "a rule with ports only",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}, {"ports": [{"port": 443}]}]}),
            Some("default-deny with 2 allow rules (Ingress)"),
        ),
        (
            "policyTypes Egress with no egress rules",
            json!({"podSelector": {}, "policyTypes": ["Egress"]}),
            Some("deny-all (Egress)"),
        ),
        (
            "policyTypes Egress ignores ingress rules",
            json!({"podSelector": {}, "policyTypes": ["Egress"], "ingress": []}),
            Some("deny-all (Egress)"),
        ),
        (
            "policyTypes Egress with egress [{}]",
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}),
            None,
        ),
        (
            "Ingress and Egress, both empty",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": []}),
            Some("deny-all (Ingress, Egress)"),
        ),
        (
            "order of policyTypes does not matter",
            json!({"podSelector": {}, "policyTypes": ["Egress", "Ingress"]}),
            Some("deny-all (Ingress, Egress)"),
        ),
        (
            "ingress open, egress denied",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [{}]}),
            Some("deny-all (Egress)"),
        ),
        (
            "ingress denied, egress open",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "egress": [{}]}),
            Some("deny-all (Ingress)"),
        ),
        (
            "both open",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [{}], "egress": [{}]}),
            None,
        ),
        (
            "no policyTypes: egress rules make Egress governed",
            json!({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]}),
            Some("default-deny with 1 allow rule (Ingress, Egress)"),
        ),
        (
            "no policyTypes: egress [{}] governs Egress but allows it; ingress still denied",
            json!({"podSelector": {}, "egress": [{}]}),
            Some("deny-all (Ingress)"),
        ),
        (
            "no policyTypes: an empty egress list does not govern Egress (Kubernetes' defaulting)",
            json!({"podSelector": {}, "ingress": [{}], "egress": []}),
            None,
        ),
        (
            "empty policyTypes defaults like absent",
            json!({"podSelector": {}, "policyTypes": []}),
            Some("deny-all (Ingress)"),
        ),
        (
            "deny all except DNS egress",
            json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                   "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": 53, "protocol": "UDP"}]}]}),
            Some("default-deny with 1 allow rule (Ingress, Egress)"),
        ),
        (
            "an ingress rule named `to` is not a peer list: it allows all",
            json!({"podSelector": {}, "ingress": [{"to": [{"podSelector": {}}]}]}),
            None,
        ),
    ];
    for (what, spec, want) in cases {
        assert_eq!(classify(spec).as_deref(), want, "{what}");
    }
}

#[test]
fn malformed_specs_fail_to_decode_with_the_path() {
    let cases = [
        (json!({"spec": {"podSelector": "all"}}), "spec.podSelector"),
        (json!({"spec": {"policyTypes": ["Sideways"]}}), "spec.policyTypes[0]"),
        (json!({"spec": {"ingress": {}}}), "spec.ingress"),
        (json!({"spec": {"ingress": [{"from": [5]}]}}), "spec.ingress[0].from[0]"),
        (json!({"spec": {"egress": [{"ports": "80"}]}}), "spec.egress[0].ports"),
        (json!({"metadata": {"labels": ["a"]}}), "metadata.labels"),
        (json!({"metadata": {"annotations": {"a": 1}}}), "metadata.annotations.a"),
        (json!({"spec": []}), "spec"),
        (json!({"metadata": []}), "metadata"),
        (json!({"spec": {"ingress": [[]]}}), "spec.ingress[0]"),
        (json!({"spec": {"podSelector": []}}), "spec.podSelector"),
    ];
    for (v, path) in cases {
        let err = serde_path_to_error::deserialize::<_, NetworkPolicy>(v.clone()).unwrap_err();
        assert_eq!(err.path().to_string(), path, "{v}");
    }
}

#[test]
fn context_document_manifests() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/context");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let want = text.lines().next().unwrap().split("expect: ").nth(1).unwrap().trim();
        let np: NetworkPolicy = serde_saphyr::from_str(&text).unwrap();
        let got = np.spec.default_deny().map(|d| d.to_string()).unwrap_or("not default-deny".into());
        assert_eq!(got, want, "{}", path.display());
        seen += 1;
    }
    assert_eq!(seen, 14, "every manifest of the practice guide (docs/practice.md) is checked");
}

// === Section 4: the rules ===

fn deny_all(ns: Option<&str>, name: &str) -> Value {
    let mut meta = json!({"name": name});
    if let Some(ns) = ns {
        meta["namespace"] = json!(ns);
    }
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": meta,
           "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
}

fn allow_web(ns: &str) -> Value {
    json!({"metadata": {"name": "allow-web", "namespace": ns},
           "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": 80}]}]}})
}

fn with_annotations(mut v: Value, pairs: &[(&str, &str)]) -> Value {
    for (k, val) in pairs {
        v["metadata"]["annotations"][*k] = json!(val);
    }
    v
}

const EXC: &str = "default-deny-guard.io/exception";
const EXP: &str = "default-deny-guard.io/exception-expires";

struct PolicyCase {
    what: &'static str,
    op: Operation,
    request_ns: &'static str,
    user: &'static str,
    object: Option<Value>,
    old: Option<Value>,
    facts: NamespaceFacts,
    warn: &'static [RuleId],
    verdict: Verdict,
    rule: Option<RuleId>,
    /// Fragments the message must contain.
    says: &'static [&'static str],
}

impl Default for PolicyCase {
    fn default() -> Self {
        PolicyCase {
            what: "",
            op: Operation::Create,
            request_ns: "",
            user: ADMIN,
            object: None,
            old: None,
            facts: NamespaceFacts::default(),
            warn: &[],
            verdict: Verdict::Allow,
            rule: None,
            says: &[],
        }
    }
}

fn run_policy_cases(cases: Vec<PolicyCase>) {
    let label_settings = Settings {
        system_namespaces: SystemNamespaces::new(
            ["kube-system", "kube-public", "kube-node-lease", "openshift-*"],
            Some("platform.example.com/system=true".parse().unwrap()),
        )
        .unwrap(),
        ..Settings::default()
    };
    for c in cases {
        let settings = Settings { warn: c.warn.to_vec(), ..label_settings.clone() };
        let object = c.object.map(policy);
        let old = c.old.map(policy);
        let req = Request {
            operation: c.op,
            name: "",
            namespace: c.request_ns,
            user: c.user,
            object: object.as_ref(),
            old_object: old.as_ref(),
        };
        let d = settings.judge_network_policy(&req, c.facts, now());
        assert_eq!((d.verdict, d.rule), (c.verdict, c.rule), "{}: {}", c.what, d.message);
        for s in c.says {
            assert!(d.message.contains(s), "{}: message {:?} lacks {s:?}", c.what, d.message);
        }
        if d.verdict == Verdict::Warn {
            assert!(d.warnings.iter().any(|w| w.contains(&d.message)), "{}: warning carries the denial", c.what);
        } else {
            assert!(d.warnings.is_empty(), "{}: {:?}", c.what, d.warnings);
        }
        assert_eq!(d.exception_used, d.audit_annotations.contains_key("exception-reason"), "{}", c.what);
    }
}

#[test]
fn r1_system_namespaces() {
    let sys_label = NamespaceFacts { system_by_label: true, ..Default::default() };
    run_policy_cases(vec![
        PolicyCase {
            what: "deny-all into kube-system",
            object: Some(deny_all(Some("kube-system"), "default-deny-all")),
            verdict: Verdict::Deny,
            rule: Some(RuleId::R1),
            says: &["kube-system/default-deny-all", "deny-all (Ingress)", "kube-system is a system namespace", "DNS"],
            ..Default::default()
        },
        PolicyCase {
            what: "namespace from request.namespace when the object has none (kubectl apply -n kube-system)",
            request_ns: "kube-system",
            object: Some(deny_all(None, "default-deny-all")),
            verdict: Verdict::Deny,
            rule: Some(RuleId::R1),
            says: &["kube-system/default-deny-all"],
            ..Default::default()
        },
        PolicyCase {
            what: "metadata.namespace wins over request.namespace",
            request_ns: "kube-system",
            object: Some(deny_all(Some("production"), "default-deny-all")),
            ..Default::default()
        },
        PolicyCase {
            what: "kube-public and kube-node-lease",
            object: Some(deny_all(Some("kube-node-lease"), "x")),
            verdict: Verdict::Deny,
            rule: Some(RuleId::R1),
            ..Default::default()
        },
        PolicyCase {
            what: "prefix pattern",
            object: Some(deny_all(Some("openshift-dns"), "x")),
            verdict: Verdict::Deny,
            rule: Some(RuleId::R1),
            ..Default::default()
        },
        PolicyCase {
            what: "system by label, from the namespace cache",
            object: Some(deny_all(Some("platform-dns"), "x")),
            facts: sys_label,
            verdict: Verdict::Deny,
            rule: Some(RuleId::R1),
            says: &["carries the label platform.example.com/system=true"],
            ..Default::default()
        },
        PolicyCase {
            what: "default-deny with allow rules is default-deny too",
            object: Some(json!({"metadata": {"name": "allow-health-checks", "namespace": "kube-system"},
                "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "hc"}}}]}]}})),
            verdict: Verdict::Deny,
            rule: Some(RuleId::R1),
            says: &["default-deny with 1 allow rule (Ingress)"],
            ..Default::default()
        },
        PolicyCase {
            what: "a policy for some pods in kube-system is fine",
            object: Some(allow_web("kube-system")),
            says: &["not a default-deny policy"],
            ..Default::default()
        },
        PolicyCase {
            what: "deny-all in an application namespace is the point",
            object: Some(deny_all(Some("production"), "default-deny-all")),
            says: &["production is not a system namespace"],
            ..Default::default()
        },
        PolicyCase {
            what: "UPDATE keeping a deny-all in kube-system",
            op: Operation::Update,
            object: Some(deny_all(Some("kube-system"), "x")),
            old: Some(deny_all(Some("kube-system"), "x")),
            verdict: Verdict::Deny,
            rule: Some(RuleId::R1),
            ..Default::default()
        },
        PolicyCase {
            what: "UPDATE repairing a deny-all in kube-system",
            op: Operation::Update,
            object: Some(allow_web("kube-system")),
            old: Some(deny_all(Some("kube-system"), "x")),
            rule: Some(RuleId::R3),
            ..Default::default()
        },
        PolicyCase {
            what: "an exception does not open kube-system",
            object: Some(with_annotations(deny_all(Some("kube-system"), "x"), &[(EXC, "please")])),
            verdict: Verdict::Deny,
            rule: Some(RuleId::R1),
            ..Default::default()
        },
        PolicyCase {
            what: "R1 in warn mode",
            object: Some(deny_all(Some("kube-system"), "x")),
            warn: &[RuleId::R1],
            verdict: Verdict::Warn,
            rule: Some(RuleId::R1),
            ..Default::default()
        },
        PolicyCase {
            what: "warn mode of another rule leaves R1 enforcing",
            object: Some(deny_all(Some("kube-system"), "x")),
            warn: &[RuleId::R2, RuleId::R3],
            verdict: Verdict::Deny,
            rule: Some(RuleId::R1),
            ..Default::default()
        },
        PolicyCase { what: "CREATE without object", ..Default::default() },
    ]);
}

#[test]
fn r2_deletes() {
    let terminating = NamespaceFacts { terminating: true, ..Default::default() };
    let old = || Some(deny_all(Some("production"), "default-deny-all"));
    let del = |what, user, old_object: Option<Value>| PolicyCase {
        what,
        op: Operation::Delete,
        request_ns: "production",
        user,
        old: old_object,
        ..Default::default()
    };
    run_policy_cases(vec![
        PolicyCase {
            verdict: Verdict::Deny,
            rule: Some(RuleId::R2),
            says: &[
                "production/default-deny-all",
                "deny-all (Ingress)",
                "kubectl annotate networkpolicy \
                     default-deny-all -n production default-deny-guard.io/exception='<reason>'",
            ],
            ..del("delete by name", ADMIN, old())
        },
        PolicyCase {
            // A collection delete sends request.name "": the name comes from oldObject.
            verdict: Verdict::Deny,
            rule: Some(RuleId::R2),
            says: &["production/default-deny-all"],
            ..del("collection delete (empty request.name)", ADMIN, old())
        },
        PolicyCase {
            rule: Some(RuleId::R2),
            says: &["SEC-789"],
            ..del("valid exception", ADMIN, Some(with_annotations(old().unwrap(), &[(EXC, "SEC-789 migration")])))
        },
        PolicyCase {
            rule: Some(RuleId::R2),
            ..del(
                "exception expiring tomorrow",
                ADMIN,
                Some(with_annotations(old().unwrap(), &[(EXC, "SEC-789"), (EXP, "2026-07-01")])),
            )
        },
        PolicyCase {
            verdict: Verdict::Deny,
            rule: Some(RuleId::R2),
            says: &["to all traffic. The exception present does not count: default-deny-guard.io/exception expired \
                 (default-deny-guard.io/exception-expires=2026-06-29). To delete it on purpose, record an exception \
                 first: kubectl annotate networkpolicy"],
            ..del(
                "expired exception",
                ADMIN,
                Some(with_annotations(old().unwrap(), &[(EXC, "SEC-789"), (EXP, "2026-06-29")])),
            )
        },
        PolicyCase {
            verdict: Verdict::Deny,
            rule: Some(RuleId::R2),
            says: &["does not count", "is empty"],
            ..del("empty exception", ADMIN, Some(with_annotations(old().unwrap(), &[(EXC, "")])))
        },
        PolicyCase {
            verdict: Verdict::Deny,
            rule: Some(RuleId::R2),
            says: &["not an RFC 3339"],
            ..del(
                "unreadable expiry",
                ADMIN,
                Some(with_annotations(old().unwrap(), &[(EXC, "x"), (EXP, "end of June")])),
            )
        },
        PolicyCase { rule: Some(RuleId::R2), ..del("namespace controller", NS_CONTROLLER, old()) },
        PolicyCase { rule: Some(RuleId::R2), ..del("garbage collector", GC, old()) },
        PolicyCase {
            rule: Some(RuleId::R2),
            facts: terminating,
            says: &["being deleted"],
            ..del("teardown under the admin's name (no --use-service-account-credentials)", ADMIN, old())
        },
        PolicyCase {
            rule: Some(RuleId::R2),
            facts: terminating,
            ..del("teardown without oldObject never hangs", ADMIN, None)
        },
        PolicyCase {
            verdict: Verdict::Deny,
            rule: Some(RuleId::R2),
            says: &["no oldObject"],
            ..del("no oldObject outside teardown", ADMIN, None)
        },
        PolicyCase { ..del("a policy for some pods", ADMIN, Some(allow_web("production"))) },
        PolicyCase {
            rule: Some(RuleId::R2),
            ..del("removing one from a system namespace is a repair", ADMIN, Some(deny_all(Some("kube-system"), "x")))
        },
        PolicyCase {
            rule: Some(RuleId::R2),
            facts: NamespaceFacts { system_by_label: true, ..Default::default() },
            ..del("repair in a label-selected system namespace", ADMIN, Some(deny_all(Some("platform"), "x")))
        },
        PolicyCase {
            verdict: Verdict::Warn,
            rule: Some(RuleId::R2),
            warn: &[RuleId::R2],
            ..del("warn mode", ADMIN, old())
        },
        PolicyCase {
            verdict: Verdict::Deny,
            rule: Some(RuleId::R2),
            says: &["default-deny with 1 allow rule"],
            ..del(
                "deny all except monitoring",
                ADMIN,
                Some(json!({"metadata": {"name": "default-deny-allow-monitoring", "namespace": "development"},
                    "spec": {"podSelector": {}, "policyTypes": ["Ingress"],
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
                                 "ports": [{"port": 9090}]}]}})),
            )
        },
        PolicyCase { what: "CONNECT", op: Operation::Connect, ..Default::default() },
    ]);
}

#[test]
fn r3_weakening_updates() {
    let old = || Some(deny_all(Some("production"), "default-deny-all"));
    let open = |annotations: &[(&str, &str)]| {
        Some(with_annotations(
            json!({"metadata": {"name": "default-deny-all", "namespace": "production"},
                   "spec": {"podSelector": {}, "ingress": [{}]}}),
            annotations,
        ))
    };
    let upd = |what, object| PolicyCase { what, op: Operation::Update, object, old: old(), ..Default::default() };
    run_policy_cases(vec![
        PolicyCase {
            verdict: Verdict::Deny,
            rule: Some(RuleId::R3),
            says: &["from deny-all (Ingress) into a policy that allows all traffic", "in the same change"],
            ..upd("ingress [{}] opens it", open(&[]))
        },
        PolicyCase {
            verdict: Verdict::Deny,
            rule: Some(RuleId::R3),
            says: &["selects only some pods"],
            ..upd("narrowing the podSelector", Some(allow_web("production")))
        },
        PolicyCase {
            rule: Some(RuleId::R3),
            ..upd("with an exception on the new object", open(&[(EXC, "incident 42")]))
        },
        PolicyCase {
            verdict: Verdict::Deny,
            rule: Some(RuleId::R3),
            says: &["expired"],
            ..upd("with an expired exception", open(&[(EXC, "incident 42"), (EXP, "2020-01-01")]))
        },
        PolicyCase {
            ..upd(
                "adding an allow rule keeps it default-deny",
                Some(json!({
            "metadata": {"name": "default-deny-all", "namespace": "production"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}})),
            )
        },
        PolicyCase { ..upd("a label change", Some(deny_all(Some("production"), "default-deny-all"))) },
        PolicyCase {
            verdict: Verdict::Warn,
            rule: Some(RuleId::R3),
            warn: &[RuleId::R3],
            ..upd("warn mode", open(&[]))
        },
        PolicyCase {
            what: "opening a policy that was not default-deny",
            op: Operation::Update,
            object: open(&[]),
            old: Some(allow_web("production")),
            ..Default::default()
        },
        PolicyCase {
            what: "egress deny dropped, ingress deny kept: still default-deny",
            op: Operation::Update,
            object: Some(json!({"metadata": {"name": "d", "namespace": "p"},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})),
            old: Some(json!({"metadata": {"name": "d", "namespace": "p"},
                "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}})),
            ..Default::default()
        },
    ]);
}

struct NamespaceCase {
    what: &'static str,
    object: Value,
    old: Option<Value>,
    warn: &'static [RuleId],
    verdict: Verdict,
    rule: Option<RuleId>,
    /// The label R4 sets and whether `metadata.labels` already existed.
    sets: Option<bool>,
    warns: bool,
    says: &'static [&'static str],
}

impl Default for NamespaceCase {
    fn default() -> Self {
        NamespaceCase {
            what: "",
            object: json!({}),
            old: None,
            warn: &[],
            verdict: Verdict::Allow,
            rule: None,
            sets: None,
            warns: false,
            says: &[],
        }
    }
}

fn run_namespace_cases(cases: Vec<NamespaceCase>) {
    for c in cases {
        let settings = Settings {
            system_namespaces: SystemNamespaces::new(
                ["kube-system", "kube-public", "kube-node-lease", "openshift-*"],
                Some("platform.example.com/system=true".parse().unwrap()),
            )
            .unwrap(),
            warn: c.warn.to_vec(),
            ..Settings::default()
        };
        let object = namespace(c.object);
        let old = c.old.map(namespace);
        let req = Request {
            operation: if old.is_some() { Operation::Update } else { Operation::Create },
            name: "",
            namespace: "",
            user: ADMIN,
            object: Some(&object),
            old_object: old.as_ref(),
        };
        let d = if old.is_some() {
            settings.judge_namespace_update(&req, now())
        } else {
            settings.judge_namespace_create(&req, now())
        };
        assert_eq!((d.verdict, d.rule), (c.verdict, c.rule), "{}: {}", c.what, d.message);
        let sets = d.set_label.as_ref().map(|s| {
            assert_eq!((s.key.as_str(), s.value.as_str()), ("default-deny", "enabled"), "{}", c.what);
            s.labels_present
        });
        assert_eq!(sets, c.sets, "{}", c.what);
        assert_eq!(!d.warnings.is_empty(), c.warns, "{}: {:?}", c.what, d.warnings);
        for s in c.says {
            assert!(d.message.contains(s), "{}: message {:?} lacks {s:?}", c.what, d.message);
        }
    }
}

fn ns(name: &str, labels: Value, annotations: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
           "metadata": {"name": name, "labels": labels, "annotations": annotations}})
}

#[test]
fn r4_new_namespaces() {
    let patched = |what, object, labels_present, warns| NamespaceCase {
        what,
        object,
        verdict: Verdict::Patch,
        rule: Some(RuleId::R4),
        sets: Some(labels_present),
        warns,
        ..Default::default()
    };
    let skipped = |what, object| NamespaceCase { what, object, rule: Some(RuleId::R4), ..Default::default() };
    run_namespace_cases(vec![
        patched("no labels", json!({"metadata": {"name": "team-a"}}), false, false),
        patched("null labels", json!({"metadata": {"name": "team-a", "labels": null}}), false, false),
        patched("other labels", ns("team-a", json!({"team": "a"}), json!({})), true, false),
        NamespaceCase {
            says: &["default-deny=disabled replaced by default-deny=enabled"],
            ..patched(
                "another value is overwritten, with a warning",
                ns("a", json!({"default-deny": "disabled"}), json!({})),
                true,
                true,
            )
        },
        patched("generateName (empty name)", json!({"metadata": {"generateName": "ci-run-"}}), false, false),
        NamespaceCase {
            says: &["namespace a labelled default-deny=enabled. The exception present does not count: \
                 default-deny-guard.io/exception expired (default-deny-guard.io/exception-expires=2026-01-01)."],
            ..patched("expired exception", ns("a", json!({}), json!({EXC: "x", EXP: "2026-01-01"})), false, true)
        },
        skipped("already enabled", ns("a", json!({"default-deny": "enabled"}), json!({}))),
        skipped("kube-system", json!({"metadata": {"name": "kube-system"}})),
        skipped("prefix pattern", json!({"metadata": {"name": "openshift-ingress"}})),
        skipped("generateName under a prefix pattern", json!({"metadata": {"generateName": "openshift-job-"}})),
        skipped(
            "system by the namespace's own label",
            ns("p", json!({"platform.example.com/system": "true"}), json!({})),
        ),
        NamespaceCase {
            says: &["legacy"],
            ..skipped(
                "valid exception",
                ns("legacy", json!({"default-deny": "disabled"}), json!({EXC: "legacy CRM until Q3"})),
            )
        },
        NamespaceCase {
            what: "warn mode: no patch, a warning",
            object: json!({"metadata": {"name": "team-a"}}),
            warn: &[RuleId::R4],
            verdict: Verdict::Warn,
            rule: Some(RuleId::R4),
            warns: true,
            ..Default::default()
        },
    ]);
}

#[test]
fn r5_label_updates() {
    let enabled = || ns("prod", json!({"default-deny": "enabled", "team": "a"}), json!({}));
    let upd = |what, old: Value, new: Value| NamespaceCase { what, object: new, old: Some(old), ..Default::default() };
    run_namespace_cases(vec![
        NamespaceCase {
            verdict: Verdict::Deny,
            rule: Some(RuleId::R5),
            says: &["prod must keep the label default-deny=enabled", "removing the label"],
            ..upd("label removed", enabled(), ns("prod", json!({"team": "a"}), json!({})))
        },
        NamespaceCase {
            verdict: Verdict::Deny,
            rule: Some(RuleId::R5),
            says: &["changing the label default-deny to \"off\""],
            ..upd("label changed", enabled(), ns("prod", json!({"default-deny": "off"}), json!({})))
        },
        NamespaceCase {
            verdict: Verdict::Deny,
            rule: Some(RuleId::R5),
            ..upd("all labels dropped", enabled(), json!({"metadata": {"name": "prod"}}))
        },
        NamespaceCase {
            rule: Some(RuleId::R5),
            ..upd("with an exception", enabled(), ns("prod", json!({}), json!({EXC: "moving to Cilium policies"})))
        },
        NamespaceCase {
            verdict: Verdict::Deny,
            rule: Some(RuleId::R5),
            says: &["expired"],
            ..upd(
                "with an expired exception",
                enabled(),
                ns("prod", json!({}), json!({EXC: "x", EXP: "2020-01-01T00:00:00Z"})),
            )
        },
        NamespaceCase {
            verdict: Verdict::Warn,
            rule: Some(RuleId::R5),
            warn: &[RuleId::R5],
            warns: true,
            ..upd("warn mode", enabled(), ns("prod", json!({}), json!({})))
        },
        upd("another label changes", enabled(), ns("prod", json!({"default-deny": "enabled", "team": "b"}), json!({}))),
        upd("label added", ns("prod", json!({}), json!({})), enabled()),
        upd("never had it", ns("prod", json!({"default-deny": "off"}), json!({})), ns("prod", json!({}), json!({}))),
        NamespaceCase {
            rule: Some(RuleId::R5),
            ..upd(
                "kube-system may drop it",
                ns("kube-system", json!({"default-deny": "enabled"}), json!({})),
                ns("kube-system", json!({}), json!({})),
            )
        },
        NamespaceCase {
            rule: Some(RuleId::R5),
            ..upd(
                "a terminating namespace",
                json!({"metadata": {"name": "prod", "labels": {"default-deny": "enabled"},
                                    "deletionTimestamp": "2026-06-30T11:00:00Z"}}),
                json!({"metadata": {"name": "prod", "deletionTimestamp": "2026-06-30T11:00:00Z"}}),
            )
        },
    ]);
}

#[test]
fn exception_use_is_audited() {
    let settings = Settings::default();
    let old = policy(with_annotations(
        deny_all(Some("production"), "default-deny-all"),
        &[(EXC, "SEC-789"), (EXP, "2026-07-01")],
    ));
    let req = Request {
        operation: Operation::Delete,
        name: "default-deny-all",
        namespace: "production",
        user: ADMIN,
        object: None,
        old_object: Some(&old),
    };
    let d = settings.judge_network_policy(&req, NamespaceFacts::default(), now());
    assert!(d.allowed() && d.exception_used);
    let audit: Vec<(&str, &str)> = d.audit_annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(audit, [("exception-expires", "2026-07-01"), ("exception-reason", "SEC-789"), ("exception-rule", "R2")]);
}

#[test]
fn configured_keys_are_used() {
    let settings = Settings {
        enable_label: "example.com/netpol=default-deny".parse().unwrap(),
        exception_keys: ExceptionKeys { reason: "example.com/exempt".into(), expires: "example.com/until".into() },
        trusted_deleters: vec!["system:kube-controller-manager".into()],
        ..Settings::default()
    };
    let ns_obj = namespace(json!({"metadata": {"name": "a", "annotations": {EXC: "ignored: default key"}}}));
    let req = Request {
        operation: Operation::Create,
        name: "a",
        namespace: "",
        user: ADMIN,
        object: Some(&ns_obj),
        old_object: None,
    };
    let d = settings.judge_namespace_create(&req, now());
    let set = d.set_label.unwrap();
    assert_eq!((set.key.as_str(), set.value.as_str()), ("example.com/netpol", "default-deny"));

    let old = policy(deny_all(Some("p"), "d"));
    let mut req = Request {
        operation: Operation::Delete,
        name: "d",
        namespace: "p",
        user: NS_CONTROLLER,
        object: None,
        old_object: Some(&old),
    };
    let d = settings.judge_network_policy(&req, NamespaceFacts::default(), now());
    assert_eq!(d.verdict, Verdict::Deny, "the default deleters are replaced");
    assert!(d.message.contains("example.com/exempt='<reason>'"), "{}", d.message);
    req.user = "system:kube-controller-manager";
    assert!(settings.judge_network_policy(&req, NamespaceFacts::default(), now()).allowed());
}

#[test]
fn parses_rule_ids_and_labels() {
    assert_eq!("r2".parse::<RuleId>(), Ok(RuleId::R2));
    assert!("R6".parse::<RuleId>().is_err());
    assert!("default-deny".parse::<EnableLabel>().is_err());
    assert!("=enabled".parse::<EnableLabel>().is_err());
}

/// Keys without escapes are borrowed from the input (the reason `BorrowedStr` exists), escaped ones decoded.
#[test]
fn borrowed_str_borrows_what_it_can() {
    use std::borrow::Cow;
    let BorrowedStr(plain) = serde_json::from_str(r#""from""#).unwrap();
    assert!(matches!(plain, Cow::Borrowed("from")));
    let BorrowedStr(escaped) = serde_json::from_str(r#""fr\u006fm""#).unwrap();
    assert!(matches!(escaped, Cow::Owned(ref s) if s == "from"));
    let Err(e) = serde_json::from_str::<BorrowedStr>("1") else { panic!("a number is not a key") };
    assert!(e.to_string().contains("expected a string"), "{e}");
}
