//! AdmissionReviews shaped like kube-apiserver's, and the bodies the benchmarks and the load generator send.
//! Free of the test server's helpers (and of `CARGO_BIN_EXE_*`), so that examples can include it too:
//! `#[path = "../tests/common/reviews.rs"] mod reviews;`.
#![allow(dead_code)]

use serde_json::{Value, json};

pub const ADMIN: &str = "kubernetes-admin";
pub const NAMESPACE_CONTROLLER: &str = "system:serviceaccount:kube-system:namespace-controller";

/// An AdmissionReview with every field kube-apiserver fills in.
#[derive(Clone)]
pub struct Review {
    pub api_version: &'static str,
    pub uid: String,
    pub operation: &'static str,
    pub namespace: Option<String>,
    pub name: String,
    pub user: String,
    pub object: Value,
    pub old_object: Value,
    pub dry_run: bool,
    kind: (&'static str, &'static str, &'static str),
    resource: &'static str,
}

static NEXT_UID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn new_uid() -> String {
    let n = NEXT_UID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:08x}-6393-11e8-b7cc-{:012x}", std::process::id(), n)
}

impl Review {
    fn new(
        kind: (&'static str, &'static str, &'static str),
        resource: &'static str,
        operation: &'static str,
    ) -> Review {
        Review {
            api_version: "admission.k8s.io/v1",
            uid: new_uid(),
            operation,
            namespace: None,
            name: String::new(),
            user: ADMIN.into(),
            object: Value::Null,
            old_object: Value::Null,
            dry_run: false,
            kind,
            resource,
        }
    }

    /// A NetworkPolicy review; `object`/`old_object` as the operation has them (CREATE: object; UPDATE: both;
    /// DELETE: old_object).
    pub fn network_policy(operation: &'static str, namespace: &str, name: &str) -> Review {
        let mut r = Review::new(("networking.k8s.io", "v1", "NetworkPolicy"), "networkpolicies", operation);
        r.namespace = Some(namespace.into());
        r.name = name.into();
        r
    }

    pub fn namespace(operation: &'static str, name: &str) -> Review {
        let mut r = Review::new(("", "v1", "Namespace"), "namespaces", operation);
        r.name = name.into();
        r
    }

    pub fn other(
        kind: (&'static str, &'static str, &'static str),
        resource: &'static str,
        operation: &'static str,
    ) -> Review {
        Review::new(kind, resource, operation)
    }

    pub fn object(mut self, v: Value) -> Self {
        self.object = v;
        self
    }

    pub fn old(mut self, v: Value) -> Self {
        self.old_object = v;
        self
    }

    pub fn user(mut self, u: &str) -> Self {
        self.user = u.into();
        self
    }

    pub fn json(&self) -> Value {
        let (group, version, kind) = self.kind;
        let options_kind = match self.operation {
            "CREATE" => "CreateOptions",
            "UPDATE" => "UpdateOptions",
            _ => "DeleteOptions",
        };
        let mut request = json!({
            "uid": self.uid,
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": self.resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "requestResource": {"group": group, "version": version, "resource": self.resource},
            "name": self.name,
            "operation": self.operation,
            "userInfo": {
                "username": self.user,
                "uid": "5b2a8b3c-0000-4000-8000-000000000001",
                "groups": ["system:masters", "system:authenticated"]
            },
            "object": self.object,
            "oldObject": self.old_object,
            "dryRun": self.dry_run,
            "options": {"kind": options_kind, "apiVersion": "meta.k8s.io/v1"}
        });
        if let Some(ns) = &self.namespace {
            request["namespace"] = json!(ns);
        }
        // kube-apiserver leaves out an empty name.
        if self.name.is_empty() {
            request.as_object_mut().unwrap().remove("name");
        }
        json!({"kind": "AdmissionReview", "apiVersion": self.api_version, "request": request})
    }
}

/// A NetworkPolicy as kube-apiserver stores it: defaulted, with uid, resourceVersion and managedFields.
pub fn network_policy(namespace: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": "0a1b2c3d-0000-4000-8000-00000000000a",
            "resourceVersion": "4711",
            "generation": 1,
            "creationTimestamp": "2026-11-20T10:00:00Z",
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": format!(
                    "{{\"apiVersion\":\"networking.k8s.io/v1\",\"kind\":\"NetworkPolicy\",\"metadata\":{{\"annotations\":{{}},\"name\":\"{name}\",\"namespace\":\"{namespace}\"}},\"spec\":{spec}}}\n"
                )
            },
            "managedFields": [{
                "manager": "kubectl-client-side-apply",
                "operation": "Update",
                "apiVersion": "networking.k8s.io/v1",
                "time": "2026-11-20T10:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}}},
                             "f:spec": {"f:podSelector": {}, "f:policyTypes": {}}}
            }]
        },
        "spec": spec
    })
}

pub fn deny_all_spec() -> Value {
    json!({"podSelector": {}, "policyTypes": ["Ingress"]})
}

pub fn namespace_object(name: &str, labels: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": name, "labels": labels, "annotations": annotations, "creationTimestamp": null},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    })
}

/// Sets an annotation on an object.
pub fn annotate(mut object: Value, key: &str, value: &str) -> Value {
    object["metadata"]["annotations"][key] = json!(value);
    object
}

// === Bodies of the benchmarks and of the load generator ===

/// The spec of a typical application policy: every pod selected, ingress only from the monitoring namespace's
/// Prometheus.
pub fn typical_spec(port: u16) -> Value {
    json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}},
                   "podSelector": {"matchLabels": {"app": "prometheus"}}}],
         "ports": [{"protocol": "TCP", "port": port}]}]})
}

/// A default-deny spec whose ingress has `n` allow rules, each with a peer and a port.
pub fn spec_with_rules(n: usize) -> Value {
    let rules: Vec<Value> = (0..n)
        .map(|i| {
            json!({"from": [{"namespaceSelector": {"matchLabels": {"team": format!("team-{i}")}},
                             "podSelector": {"matchLabels": {"app": "client"}}}],
                   "ports": [{"protocol": "TCP", "port": 8000 + (i % 1000)}]})
        })
        .collect();
    json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": rules})
}

/// Serialized review bodies: what kube-apiserver POSTs.
pub mod bodies {
    use super::*;

    fn bytes(review: &Review) -> Vec<u8> {
        serde_json::to_vec(&review.json()).unwrap()
    }

    /// A typical NetworkPolicy CREATE (about 1.5 KB, with kubectl's last-applied-configuration and managedFields):
    /// allowed, the namespace is not a system one.
    pub fn networkpolicy_create() -> Vec<u8> {
        bytes(&Review::network_policy("CREATE", "production", "default-deny-all").object(network_policy(
            "production",
            "default-deny-all",
            typical_spec(9090),
        )))
    }

    /// A typical UPDATE that keeps the policy default-deny (a port changes): allowed.
    pub fn networkpolicy_update() -> Vec<u8> {
        bytes(
            &Review::network_policy("UPDATE", "production", "default-deny-all")
                .object(network_policy("production", "default-deny-all", typical_spec(9091)))
                .old(network_policy("production", "default-deny-all", typical_spec(9090))),
        )
    }

    /// A collection DELETE's review (empty `request.name`) of a default-deny policy by an administrator, without
    /// an exception: denied by R2, the longest message.
    pub fn networkpolicy_delete() -> Vec<u8> {
        bytes(&Review::network_policy("DELETE", "production", "").old(network_policy(
            "production",
            "default-deny-all",
            deny_all_spec(),
        )))
    }

    /// The namespace controller's DELETE of the same policy during namespace teardown: allowed.
    pub fn networkpolicy_delete_teardown() -> Vec<u8> {
        bytes(&Review::network_policy("DELETE", "production", "").user(NAMESPACE_CONTROLLER).old(network_policy(
            "production",
            "default-deny-all",
            deny_all_spec(),
        )))
    }

    /// A Namespace CREATE that gets the enable label as a JSON Patch (R4), for `/mutate`.
    pub fn namespace_create() -> Vec<u8> {
        bytes(&Review::namespace("CREATE", "payments").object(namespace_object(
            "payments",
            json!({"team": "payments"}),
            json!(null),
        )))
    }

    /// An UPDATE whose object and oldObject each have `n` ingress rules; the new one adds `- {}`, which opens the
    /// policy: denied by R3.
    pub fn large_update(n: usize) -> Vec<u8> {
        let spec = spec_with_rules(n);
        let mut open = spec.clone();
        open["ingress"].as_array_mut().unwrap().push(json!({}));
        bytes(
            &Review::network_policy("UPDATE", "production", "big")
                .object(network_policy("production", "big", open))
                .old(network_policy("production", "big", spec)),
        )
    }

    /// A default-deny CREATE in a namespace named `namespace` (allowed unless it is a system namespace).
    pub fn networkpolicy_create_in(namespace: &str) -> Vec<u8> {
        bytes(&Review::network_policy("CREATE", namespace, "default-deny-all").object(network_policy(
            namespace,
            "default-deny-all",
            deny_all_spec(),
        )))
    }
}

/// One kind of request of a load mix: where it goes, how often, and its body.
pub struct MixEntry {
    pub name: &'static str,
    pub path: &'static str,
    /// Out of the sum of all weights.
    pub weight: u32,
    pub body: Vec<u8>,
}

/// The mix of the performance issue: 80% NetworkPolicy CREATE/UPDATE, 10% DELETE (half teardown by the namespace
/// controller, half an administrator's denied delete), 10% Namespace CREATE with a patch.
pub fn standard_mix() -> Vec<MixEntry> {
    vec![
        MixEntry { name: "np-create", path: "/validate", weight: 40, body: bodies::networkpolicy_create() },
        MixEntry { name: "np-update", path: "/validate", weight: 40, body: bodies::networkpolicy_update() },
        MixEntry {
            name: "np-delete-teardown",
            path: "/validate",
            weight: 5,
            body: bodies::networkpolicy_delete_teardown(),
        },
        MixEntry { name: "np-delete-denied", path: "/validate", weight: 5, body: bodies::networkpolicy_delete() },
        MixEntry { name: "ns-create", path: "/mutate", weight: 10, body: bodies::namespace_create() },
    ]
}
