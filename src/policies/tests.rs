use super::*;
use crate::rules::{EnableLabel, ExceptionKeys, SystemNamespaces};

fn settings(system: &[&str], label: Option<&str>, warn: &[RuleId]) -> Settings {
    Settings {
        system_namespaces: SystemNamespaces::new(system, label.map(|l| l.parse().unwrap())).unwrap(),
        warn: warn.to_vec(),
        ..Settings::default()
    }
}

fn kinds(docs: &[Value]) -> Vec<String> {
    docs.iter()
        .map(|d| format!("{} {}", d["kind"].as_str().unwrap(), d["metadata"]["name"].as_str().unwrap()))
        .collect()
}

fn variable<'a>(policy: &'a Value, name: &str) -> &'a str {
    let vars = policy["spec"]["variables"].as_array().unwrap();
    let v = vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no variable {name}"));
    v["expression"].as_str().unwrap()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind && d["metadata"]["name"] == name).unwrap_or_else(|| panic!("{kind} {name}"))
}

#[test]
fn settings_become_json_literals() {
    let custom = Settings {
        system_namespaces: SystemNamespaces::new(
            ["kube-system", "openshift-*", "istio-system", "kube-system", "openshift-*"],
            Some("platform/system=true".parse().unwrap()),
        )
        .unwrap(),
        enable_label: EnableLabel { key: "netpol".into(), value: "deny".into() },
        exception_keys: ExceptionKeys { reason: "x.io/why".into(), expires: "x.io/until".into() },
        trusted_deleters: vec!["system:kube-controller-manager".into()],
        warn: vec![],
    };
    let key_only = settings(&["kube-system"], Some("platform/system"), &[]);
    // (settings, variable, literal)
    let cases: &[(&Settings, &str, &str)] = &[
        (&Settings::default(), "systemNames", r#"["kube-node-lease","kube-public","kube-system"]"#),
        (&Settings::default(), "systemPrefixes", "[]"),
        (&Settings::default(), "systemLabel", "[]"),
        (&Settings::default(), "enableKey", r#""default-deny""#),
        (&Settings::default(), "enableValue", r#""enabled""#),
        (&Settings::default(), "exceptionKey", r#""default-deny-guard.io/exception""#),
        (&Settings::default(), "expiresKey", r#""default-deny-guard.io/exception-expires""#),
        (
            &Settings::default(),
            "trustedDeleters",
            r#"["system:serviceaccount:kube-system:namespace-controller","system:serviceaccount:kube-system:generic-garbage-collector"]"#,
        ),
        (&custom, "systemNames", r#"["istio-system","kube-system"]"#),
        (&custom, "systemPrefixes", r#"["openshift-"]"#),
        (&custom, "systemLabel", r#"["platform/system","true"]"#),
        (&key_only, "systemLabel", r#"["platform/system"]"#),
        (&custom, "enableKey", r#""netpol""#),
        (&custom, "enableValue", r#""deny""#),
        (&custom, "exceptionKey", r#""x.io/why""#),
        (&custom, "expiresKey", r#""x.io/until""#),
        (&custom, "trustedDeleters", r#"["system:kube-controller-manager"]"#),
    ];
    for (s, name, want) in cases {
        let docs = documents(s, &Options::default()).unwrap();
        // Every policy carries the same settings.
        for policy in docs.iter().filter(|d| d["kind"].as_str().unwrap().ends_with("Policy")) {
            assert_eq!(variable(policy, name), *want, "{name} in {}", policy["metadata"]["name"]);
        }
    }
}

#[test]
fn modes_versions_and_options_shape_the_bindings() {
    let actions = |docs: &[Value], name: &str| {
        find(docs, "ValidatingAdmissionPolicyBinding", name)["spec"]["validationActions"].clone()
    };
    // (warn, with_webhook, kube, expected actions of r1 and r2, warned literal of r2, expected MAP version)
    type Row = (&'static [RuleId], bool, &'static str, &'static str, &'static str, &'static str, Option<&'static str>);
    let rows: &[Row] = &[
        (&[], false, "1.37", r#"["Deny"]"#, r#"["Deny"]"#, "false", Some("v1")),
        (&[RuleId::R2], false, "1.36", r#"["Deny"]"#, r#"["Warn","Audit"]"#, "true", Some("v1")),
        (&[RuleId::R2], true, "1.35", r#"["Deny"]"#, r#"["Audit"]"#, "true", Some("v1beta1")),
        (&[RuleId::R1, RuleId::R2], true, "1.34", r#"["Audit"]"#, r#"["Audit"]"#, "true", Some("v1beta1")),
        (&[], false, "1.33", r#"["Deny"]"#, r#"["Deny"]"#, "false", None),
        (&[], false, "1.30", r#"["Deny"]"#, r#"["Deny"]"#, "false", None),
        // R4 in warn mode: a MutatingAdmissionPolicy cannot warn, so there is none.
        (&[RuleId::R4], false, "1.37", r#"["Deny"]"#, r#"["Deny"]"#, "false", None),
    ];
    for (warn, with_webhook, kube, r1, r2, warned, map) in rows {
        let options =
            Options { kube_version: kube.parse().unwrap(), with_webhook: *with_webhook, ..Options::default() };
        let docs = documents(&settings(&["kube-system"], None, warn), &options).unwrap();
        let row = format!("warn {warn:?}, with webhook {with_webhook}, {kube}");
        assert_eq!(actions(&docs, "default-deny-guard-r1").to_string(), *r1, "{row}");
        assert_eq!(actions(&docs, "default-deny-guard-r2").to_string(), *r2, "{row}");
        assert_eq!(
            variable(find(&docs, "ValidatingAdmissionPolicy", "default-deny-guard-r2"), "warned"),
            *warned,
            "{row}"
        );
        let mutating: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "MutatingAdmissionPolicy").collect();
        match map {
            Some(v) => {
                let want = format!("admissionregistration.k8s.io/{v}");
                assert_eq!(mutating.len(), 1, "{row}");
                assert_eq!(mutating[0]["apiVersion"], want.as_str(), "{row}");
                let binding = find(&docs, "MutatingAdmissionPolicyBinding", "default-deny-guard-r4");
                assert_eq!(binding["apiVersion"], want.as_str(), "{row}");
            }
            None => assert!(mutating.is_empty(), "{row}"),
        }
    }
}

#[test]
fn each_policy_comes_before_its_binding_and_names_follow_the_prefix() {
    let options =
        Options { name_prefix: "ddg".into(), exempt_namespaces: vec!["ddg-system".into()], ..Options::default() };
    let docs = documents(&Settings::default(), &options).unwrap();
    assert_eq!(
        kinds(&docs),
        [
            "ValidatingAdmissionPolicy ddg-r1",
            "ValidatingAdmissionPolicyBinding ddg-r1",
            "ValidatingAdmissionPolicy ddg-r2",
            "ValidatingAdmissionPolicyBinding ddg-r2",
            "ValidatingAdmissionPolicy ddg-r3",
            "ValidatingAdmissionPolicyBinding ddg-r3",
            "ValidatingAdmissionPolicy ddg-r5",
            "ValidatingAdmissionPolicyBinding ddg-r5",
            "MutatingAdmissionPolicy ddg-r4",
            "MutatingAdmissionPolicyBinding ddg-r4",
        ]
    );
    for binding in docs.iter().filter(|d| d["kind"].as_str().unwrap().ends_with("Binding")) {
        assert_eq!(binding["spec"]["policyName"], binding["metadata"]["name"]);
        assert_eq!(
            binding["spec"]["matchResources"]["namespaceSelector"],
            serde_json::json!({"matchExpressions": [
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["ddg-system"]}
            ]}),
        );
    }
    let open = documents(&Settings::default(), &Options::default()).unwrap();
    assert_eq!(
        find(&open, "ValidatingAdmissionPolicyBinding", "default-deny-guard-r1")["spec"]["matchResources"],
        serde_json::json!({"namespaceSelector": {}})
    );
}

#[test]
fn what_cel_cannot_do_is_said_on_the_policies() {
    let docs = documents(&Settings::default(), &Options::default()).unwrap();
    let left = |kind: &str, name: &str| {
        find(&docs, kind, name)["metadata"]["annotations"]["default-deny-guard.io/left-to-the-webhook"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(left("ValidatingAdmissionPolicy", "default-deny-guard-r1"), "", "R1 reads no exception");
    for name in ["default-deny-guard-r2", "default-deny-guard-r3", "default-deny-guard-r5"] {
        assert!(left("ValidatingAdmissionPolicy", name).starts_with("exception expiry: CEL has no clock"), "{name}");
    }
    assert!(left("MutatingAdmissionPolicy", "default-deny-guard-r4").contains("R4 warnings"));
    let yaml = render(&Settings::default(), &Options::default()).unwrap();
    assert!(yaml.starts_with("# In-API-server admission policies"), "{yaml}");
}

#[test]
fn bad_options_are_refused() {
    let old = Options { kube_version: "1.29".parse().unwrap(), ..Options::default() };
    let e = documents(&Settings::default(), &old).unwrap_err().to_string();
    assert!(e.contains("1.29") && e.contains("1.30"), "{e}");
    for bad in ["", "Upper", "-x", "a_b"] {
        let o = Options { name_prefix: bad.into(), ..Options::default() };
        assert!(documents(&Settings::default(), &o).is_err(), "{bad:?}");
    }
}

#[test]
fn kube_versions_parse() {
    let cases = [
        ("1.34", Some((1, 34))),
        ("v1.37.2", Some((1, 37))),
        (" 1.30 ", Some((1, 30))),
        ("1", None),
        ("1.x", None),
        ("1.34.x", None),
        ("1.2.3.4", None),
        ("", None),
    ];
    for (raw, want) in cases {
        let got = raw.parse::<KubeVersion>().ok().map(|v| (v.major, v.minor));
        assert_eq!(got, want, "{raw:?}");
    }
    let v = |s: &str| s.parse::<KubeVersion>().unwrap().mutating_policy_version();
    assert_eq!(
        (v("1.33"), v("1.34"), v("1.35"), v("1.36"), v("2.0")),
        (None, Some("v1beta1"), Some("v1beta1"), Some("v1"), Some("v1"))
    );
}

/// The messages in CEL are the webhook's words: every literal piece of the R1 message is in the webhook's R1
/// message for the same policy (the holes are the request's values).
#[test]
fn messages_are_the_webhooks_words() {
    let docs = documents(&Settings::default(), &Options::default()).unwrap();
    let r1 = find(&docs, "ValidatingAdmissionPolicy", "default-deny-guard-r1");
    let message = r1["spec"]["validations"][0]["messageExpression"].as_str().unwrap();
    let template = crate::rules::messages::r1_system_namespace("\u{1}", "\u{1}", "\u{1}", "\u{1}");
    for piece in template.split('\u{1}').filter(|p| !p.is_empty()) {
        assert!(message.contains(&cel::lit(piece)), "{piece:?} not in {message}");
    }
}

/// `charts/default-deny-guard/templates/apiserver-policies.yaml` is this generator's output; `DDG_BLESS=1`
/// rewrites it.
#[test]
fn chart_template() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/default-deny-guard/templates/apiserver-policies.yaml");
    let want = helm_template();
    if std::env::var_os("DDG_BLESS").is_some() {
        std::fs::write(path, &want).unwrap();
    }
    let have = std::fs::read_to_string(path).unwrap_or_default();
    assert!(have == want, "{path} is out of date: run DDG_BLESS=1 cargo test --lib policies::tests::chart_template");
    assert!(!want.contains("DDGHELM"), "a placeholder was left");
}

#[test]
fn webhook_match_conditions_read_the_enable_label() {
    let custom =
        Settings { enable_label: EnableLabel { key: "netpol".into(), value: "deny".into() }, ..Settings::default() };
    let conditions = webhook_match_conditions(&custom);
    let names: Vec<&str> = conditions.iter().map(|(w, _)| *w).collect();
    assert_eq!(names, ["networkpolicies", "namespaces", "mutate-namespaces"]);
    for (webhook, list) in &conditions[1..] {
        assert!(
            list[0].expression.contains(r#""netpol" in object.metadata.labels"#),
            "{webhook}: {}",
            list[0].expression
        );
        assert!(list[0].expression.contains(r#"== "deny""#), "{webhook}");
    }
    assert!(conditions[0].1[0].expression.contains("oldObject != null && (!has(oldObject.spec)"));
}
