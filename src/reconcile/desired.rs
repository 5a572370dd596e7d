//! The policy the reconciler keeps in every protected namespace, and how a live policy has drifted from it. Pure:
//! no client, no clock.
//!
//! ```
//! use default_deny_guard::reconcile::desired::{DnsAllowance, PolicyTemplate, PolicyTypes};
//!
//! let template = PolicyTemplate::new("Ingress,Egress".parse().unwrap(), DnsAllowance::default());
//! let policy = template.policy("team-a");
//! assert_eq!(policy.metadata.name.as_deref(), Some("default-deny-all"));
//! assert!(template.drift(&policy).is_none());
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use crate::ownership::{self, MANAGED_BY};

/// The name of the policy in every protected namespace.
pub const POLICY_NAME: &str = "default-deny-all";

/// `--policy-types`: the directions the policy denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyTypes {
    pub ingress: bool,
    pub egress: bool,
}

impl Default for PolicyTypes {
    fn default() -> Self {
        PolicyTypes { ingress: true, egress: false }
    }
}

impl FromStr for PolicyTypes {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut types = PolicyTypes { ingress: false, egress: false };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if part.eq_ignore_ascii_case("ingress") {
                types.ingress = true;
            } else if part.eq_ignore_ascii_case("egress") {
                types.egress = true;
            } else {
                return Err(format!("unknown policy type {part:?}: expected Ingress, Egress or Ingress,Egress"));
            }
        }
        if !types.ingress && !types.egress {
            return Err("policy types must name Ingress, Egress or both".into());
        }
        Ok(types)
    }
}

impl fmt::Display for PolicyTypes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

impl PolicyTypes {
    /// In the order Kubernetes lists them.
    fn names(&self) -> Vec<String> {
        let mut out = Vec::with_capacity(2);
        if self.ingress {
            out.push("Ingress".to_owned());
        }
        if self.egress {
            out.push("Egress".to_owned());
        }
        out
    }
}

/// `key=value,key=value`: the labels of a selector's `matchLabels`. Empty selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(pub BTreeMap<String, String>);

impl FromStr for Labels {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = BTreeMap::new();
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    out.insert(k.trim().to_owned(), v.trim().to_owned());
                }
                _ => return Err(format!("{pair:?}: a label is written key=value")),
            }
        }
        Ok(Labels(out))
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pairs: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&pairs.join(","))
    }
}

/// The egress that a policy denying Egress still allows: name resolution by the cluster DNS, so that turning on
/// egress deny cannot break it. Namespace selector AND pod selector in one peer, UDP and TCP on each port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsAllowance {
    pub namespace_selector: Labels,
    pub pod_selector: Labels,
    pub ports: Vec<u16>,
}

impl Default for DnsAllowance {
    fn default() -> Self {
        DnsAllowance {
            namespace_selector: "kubernetes.io/metadata.name=kube-system".parse().expect("valid"),
            pod_selector: "k8s-app=kube-dns".parse().expect("valid"),
            ports: vec![53],
        }
    }
}

impl DnsAllowance {
    fn rule(&self) -> NetworkPolicyEgressRule {
        let selector = |labels: &Labels| LabelSelector {
            match_labels: (!labels.0.is_empty()).then(|| labels.0.clone()),
            match_expressions: None,
        };
        let ports = self
            .ports
            .iter()
            .flat_map(|&port| {
                ["UDP", "TCP"].map(|protocol| NetworkPolicyPort {
                    protocol: Some(protocol.to_owned()),
                    port: Some(IntOrString::Int(i32::from(port))),
                    end_port: None,
                })
            })
            .collect();
        NetworkPolicyEgressRule {
            to: Some(vec![NetworkPolicyPeer {
                namespace_selector: Some(selector(&self.namespace_selector)),
                pod_selector: Some(selector(&self.pod_selector)),
                ip_block: None,
            }]),
            ports: Some(ports),
        }
    }
}

/// The desired policy, for any namespace.
#[derive(Debug, Clone)]
pub struct PolicyTemplate {
    types: PolicyTypes,
    dns: DnsAllowance,
    /// The desired spec, normalised once (see [`normalize`]).
    normalized: Value,
}

impl PolicyTemplate {
    pub fn new(types: PolicyTypes, dns: DnsAllowance) -> PolicyTemplate {
        let mut template = PolicyTemplate { types, dns, normalized: Value::Null };
        template.normalized = normalize(serde_json::to_value(template.spec()).expect("a spec serializes"));
        template
    }

    pub fn types(&self) -> PolicyTypes {
        self.types
    }

    /// `podSelector: {}`; `policyTypes` as configured; `ingress: []` when denying ingress; when denying egress, one
    /// egress rule: the DNS allowance. The empty lists are written out so that the apply owns them, and a rule
    /// added by someone else is taken back by the next forced apply.
    pub fn spec(&self) -> NetworkPolicySpec {
        NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(self.types.names()),
            ingress: self.types.ingress.then(Vec::new),
            egress: self.types.egress.then(|| vec![self.dns.rule()]),
        }
    }

    /// The policy to apply in `namespace`.
    pub fn policy(&self, namespace: &str) -> NetworkPolicy {
        NetworkPolicy {
            metadata: ObjectMeta {
                name: Some(POLICY_NAME.to_owned()),
                namespace: Some(namespace.to_owned()),
                labels: Some(ownership::managed_labels()),
                ..ObjectMeta::default()
            },
            spec: Some(self.spec()),
        }
    }

    /// How `live` differs from the desired policy, in what the reconciler owns: the spec and the managed-by label.
    /// Other labels and annotations are other people's business.
    pub fn drift(&self, live: &NetworkPolicy) -> Option<Drift> {
        let mut fields = Vec::new();
        let managed = ownership::is_managed(live.metadata.labels.as_ref());
        if !managed {
            fields.push(format!("metadata.labels[{MANAGED_BY}]"));
        }
        let live_spec = live.spec.as_ref().map(|s| normalize(serde_json::to_value(s).expect("a spec serializes")));
        let live_spec = live_spec.unwrap_or(Value::Null);
        let empty = serde_json::Map::new();
        let want = self.normalized.as_object().unwrap_or(&empty);
        let have = live_spec.as_object().unwrap_or(&empty);
        let mut keys: Vec<&String> = want.keys().chain(have.keys()).collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            if want.get(key) != have.get(key) {
                fields.push(format!("spec.{key}"));
            }
        }
        (!fields.is_empty()).then_some(Drift { fields })
    }
}

/// What differs between a live policy and the desired one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// Paths such as `spec.ingress` or `metadata.labels[app.kubernetes.io/managed-by]`.
    pub fields: Vec<String>,
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fields.join(", "))
    }
}

/// Drops, in every object, the fields that are `null`, `[]` or `{}` once normalised: the API server omits empty
/// lists and selectors (`ingress: []` comes back absent, `podSelector: {}` may), and each of them means the same as
/// the field left out. List elements are kept, so `[{}]` (allow everything) stays apart from `[]`.
pub fn normalize(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, normalize(v)))
                .filter(|(_, v)| match v {
                    Value::Null => false,
                    Value::Array(a) => !a.is_empty(),
                    Value::Object(o) => !o.is_empty(),
                    _ => true,
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(normalize).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules;
    use serde_json::json;

    fn template(types: &str) -> PolicyTemplate {
        PolicyTemplate::new(types.parse().unwrap(), DnsAllowance::default())
    }

    fn dns_rule() -> Value {
        json!({
            "to": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}
            }],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
        })
    }

    #[test]
    fn desired_policy_for_each_policy_types_value() {
        let labels = json!({"app.kubernetes.io/managed-by": "default-deny-guard"});
        let rows = [
            ("Ingress", json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []}), "deny-all (Ingress)"),
            (
                "Ingress,Egress",
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": [dns_rule()]}),
                "default-deny with 1 allow rule (Ingress, Egress)",
            ),
            (
                "egress, ingress",
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [], "egress": [dns_rule()]}),
                "default-deny with 1 allow rule (Ingress, Egress)",
            ),
            (
                "Egress",
                json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [dns_rule()]}),
                "default-deny with 1 allow rule (Egress)",
            ),
        ];
        for (types, spec, kind) in rows {
            let policy = serde_json::to_value(template(types).policy("team-a")).unwrap();
            let want = json!({
                "apiVersion": "networking.k8s.io/v1",
                "kind": "NetworkPolicy",
                "metadata": {"name": "default-deny-all", "namespace": "team-a", "labels": labels},
                "spec": spec,
            });
            assert_eq!(policy, want, "--policy-types {types}");
            // The webhook's own rules see it as the default-deny policy it is meant to be.
            let judged: rules::NetworkPolicy = serde_json::from_value(policy).unwrap();
            assert_eq!(judged.spec.default_deny().map(|d| d.to_string()).as_deref(), Some(kind), "{types}");
        }
    }

    #[test]
    fn policy_types_parse() {
        assert_eq!("Ingress".parse::<PolicyTypes>().unwrap(), PolicyTypes::default());
        assert_eq!("Ingress,Egress".parse::<PolicyTypes>().unwrap().to_string(), "Ingress,Egress");
        assert_eq!("Egress,Ingress".parse::<PolicyTypes>().unwrap().to_string(), "Ingress,Egress");
        for bad in ["", ",", "Ingres", "Ingress,All"] {
            assert!(bad.parse::<PolicyTypes>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn dns_selector_and_ports_are_configurable() {
        let dns = DnsAllowance {
            namespace_selector: "kubernetes.io/metadata.name=openshift-dns".parse().unwrap(),
            pod_selector: "dns.operator.openshift.io/daemonset-dns=default".parse().unwrap(),
            ports: vec![5353],
        };
        let spec = serde_json::to_value(PolicyTemplate::new("Egress".parse().unwrap(), dns).spec()).unwrap();
        assert_eq!(
            spec["egress"],
            json!([{
                "to": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "openshift-dns"}},
                    "podSelector": {"matchLabels": {"dns.operator.openshift.io/daemonset-dns": "default"}}
                }],
                "ports": [{"protocol": "UDP", "port": 5353}, {"protocol": "TCP", "port": 5353}]
            }])
        );
        assert_eq!("".parse::<Labels>().unwrap(), Labels::default());
        assert_eq!("a=1, b=".parse::<Labels>().unwrap().to_string(), "a=1,b=");
        assert!("novalue".parse::<Labels>().is_err());
        assert!("=x".parse::<Labels>().is_err());
    }

    fn live(spec: Value, labels: Value) -> NetworkPolicy {
        serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny-all", "namespace": "team-a", "labels": labels, "resourceVersion": "7"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn drift_table() {
        let ours = json!({"app.kubernetes.io/managed-by": "default-deny-guard", "team": "a"});
        let ingress = template("Ingress");
        let both = template("Ingress,Egress");
        let rows: Vec<(&PolicyTemplate, Value, Value, Option<&str>)> = vec![
            // As the API server returns it: `ingress: []` omitted.
            (&ingress, json!({"podSelector": {}, "policyTypes": ["Ingress"]}), ours.clone(), None),
            (&ingress, json!({"podSelector": {"matchLabels": {}}, "policyTypes": ["Ingress"]}), ours.clone(), None),
            (
                &ingress,
                json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]}),
                ours.clone(),
                Some("spec.ingress"),
            ),
            (
                &ingress,
                json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "x"}}}]}]}),
                ours.clone(),
                Some("spec.ingress"),
            ),
            (
                &ingress,
                json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}),
                ours.clone(),
                Some("spec.podSelector"),
            ),
            (
                &ingress,
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
                ours.clone(),
                Some("spec.policyTypes"),
            ),
            (
                &ingress,
                json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
                json!({}),
                Some("metadata.labels[app.kubernetes.io/managed-by]"),
            ),
            (
                &ingress,
                json!({"podSelector": {}, "policyTypes": ["Ingress"], "egress": [{}]}),
                ours.clone(),
                Some("spec.egress"),
            ),
            (
                &both,
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "egress": [dns_rule()]}),
                ours.clone(),
                None,
            ),
            // Turning egress deny on: the Ingress-only policy has drifted from the new configuration.
            (
                &both,
                json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
                ours.clone(),
                Some("spec.egress, spec.policyTypes"),
            ),
            (
                &both,
                json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "egress": []}),
                ours.clone(),
                Some("spec.egress"),
            ),
        ];
        for (template, spec, labels, want) in rows {
            let got = template.drift(&live(spec.clone(), labels)).map(|d| d.to_string());
            assert_eq!(got.as_deref(), want, "{spec}");
        }
    }
}
