//! AdmissionReview in, AdmissionReview out: the wire format around the rules.
//!
//! The review is decoded with the objects kept as raw JSON, and each is then read as the kind the request names.
//! kube's `AdmissionRequest<T>` decodes the object eagerly, so an object that is not what its kind says would make
//! the whole review unreadable, where the webhook must deny it with a message that says what was wrong (SPEC
//! section 4). The answer is written here too: kube's `AdmissionResponse` sends the patch as a JSON array of numbers
//! rather than base64, and its `invalid()` answers with an empty uid and always `admission.k8s.io/v1`, which
//! kube-apiserver counts as a failed call. kube's `Operation` and `GroupVersionKind` are used as they are.

use std::borrow::Cow;
use std::collections::BTreeMap;

use jiff::Timestamp;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::Namespace as NamespaceKind;
use k8s_openapi::api::networking::v1::NetworkPolicy as NetworkPolicyKind;
use kube::core::GroupVersionKind;
use kube::core::admission::Operation as KubeOperation;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::rules::{Decision, NamespaceFacts, Operation, Request, RuleId, SetLabel, Settings, Verdict};

pub const API_VERSION_V1: &str = "admission.k8s.io/v1";
pub const API_VERSION_V1BETA1: &str = "admission.k8s.io/v1beta1";

/// The two endpoints. Each judges what is registered for it and allows anything else untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Webhook {
    /// `POST /validate`: NetworkPolicy CREATE/UPDATE/DELETE (R1, R2, R3) and Namespace UPDATE (R5).
    Validate,
    /// `POST /mutate`: Namespace CREATE (R4).
    Mutate,
}

impl Webhook {
    pub fn as_str(self) -> &'static str {
        match self {
            Webhook::Validate => "validate",
            Webhook::Mutate => "mutate",
        }
    }
}

/// What the shell knows of namespaces: the namespace cache when there is a cluster, nothing otherwise.
pub trait NamespaceLookup: Send + Sync {
    fn facts(&self, settings: &Settings, namespace: &str) -> NamespaceFacts;
}

/// No cluster: teardown is recognised by the trusted deleters' names alone.
impl NamespaceLookup for () {
    fn facts(&self, _: &Settings, _: &str) -> NamespaceFacts {
        NamespaceFacts::default()
    }
}

/// A body that is not an AdmissionReview this webhook can answer: HTTP 400, since there is no uid to answer to.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not a readable AdmissionReview: {0}")]
    Decode(String),
    #[error("the body is a {0:?}, not an AdmissionReview")]
    NotAReview(String),
    #[error("unsupported AdmissionReview apiVersion {0:?}: expected {API_VERSION_V1} or {API_VERSION_V1BETA1}")]
    Version(String),
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("the AdmissionReview's request has no uid")]
    NoUid,
}

// === The review as kube-apiserver sends it ===

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<'a> {
    #[serde(default, borrow)]
    api_version: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    request: Option<RequestIn<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<'a> {
    #[serde(default, borrow)]
    uid: Cow<'a, str>,
    kind: GroupVersionKind,
    #[serde(default, borrow)]
    sub_resource: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    namespace: Option<Cow<'a, str>>,
    operation: KubeOperation,
    #[serde(default, borrow)]
    user_info: UserInfoIn<'a>,
    #[serde(default, borrow)]
    object: Option<&'a RawValue>,
    #[serde(default, borrow)]
    old_object: Option<&'a RawValue>,
    #[serde(default)]
    dry_run: Option<bool>,
}

#[derive(Default, Deserialize)]
struct UserInfoIn<'a> {
    #[serde(default, borrow)]
    username: Option<Cow<'a, str>>,
}

// === The answer ===

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'a str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    patch_type: Option<&'static str>,
    /// Standard base64 of the JSON Patch, the API's encoding of `[]byte`.
    #[serde(skip_serializing_if = "Option::is_none")]
    patch: Option<k8s_openapi::ByteString>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    audit_annotations: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    warnings: &'a [String],
}

/// A `metav1.Status`, as kube-apiserver reads it from a denial.
#[derive(Serialize)]
struct StatusOut<'a> {
    status: &'static str,
    code: u16,
    reason: &'static str,
    message: &'a str,
}

/// One review, answered: the response body and what the log line and the metrics say about it.
#[derive(Debug)]
pub struct Reviewed {
    pub body: Vec<u8>,
    pub uid: String,
    /// The request's kind (e.g. `NetworkPolicy`).
    pub kind: String,
    pub operation: &'static str,
    pub namespace: String,
    pub name: String,
    pub user: String,
    pub dry_run: bool,
    pub decision: Decision,
    /// The object could not be read as its kind, and the review was denied for it (fail closed).
    pub unreadable: bool,
}

impl Reviewed {
    /// The `decision` label of the metrics: the verdict, or `error` for a review denied because its object could
    /// not be read.
    pub fn decision_label(&self) -> &'static str {
        if self.unreadable { "error" } else { self.decision.verdict.as_str() }
    }
}

/// Answers one AdmissionReview. Pure but for `facts`, which reads the namespace cache.
pub fn review(
    settings: &Settings,
    facts: &dyn NamespaceLookup,
    webhook: Webhook,
    body: &[u8],
    now: Timestamp,
) -> Result<Reviewed, ReviewError> {
    let review: ReviewIn<'_> = decode(body).map_err(|e| ReviewError::Decode(e.to_string()))?;
    match review.kind.as_deref() {
        Some("AdmissionReview") => {}
        other => return Err(ReviewError::NotAReview(other.unwrap_or_default().to_owned())),
    }
    let api_version = review.api_version.unwrap_or_default();
    if api_version != API_VERSION_V1 && api_version != API_VERSION_V1BETA1 {
        return Err(ReviewError::Version(api_version.into_owned()));
    }
    let req = review.request.ok_or(ReviewError::NoRequest)?;
    if req.uid.is_empty() {
        return Err(ReviewError::NoUid);
    }

    let operation = match req.operation {
        KubeOperation::Create => Operation::Create,
        KubeOperation::Update => Operation::Update,
        KubeOperation::Delete => Operation::Delete,
        KubeOperation::Connect => Operation::Connect,
    };
    let judged = judge(settings, facts, webhook, &req, operation, now);

    let patch = judged.decision.set_label.as_ref().map(|set| {
        let bytes = serde_json::to_vec(&label_patch(set)).expect("a JSON Patch always serializes");
        k8s_openapi::ByteString(bytes)
    });
    let d = &judged.decision;
    let status = (!d.allowed()).then(|| {
        let (code, reason) = if judged.unreadable { (400, "BadRequest") } else { (403, "Forbidden") };
        StatusOut { status: "Failure", code, reason, message: &d.message }
    });
    let out = ReviewOut {
        api_version: &api_version,
        kind: "AdmissionReview",
        response: ResponseOut {
            uid: &req.uid,
            allowed: d.allowed(),
            status,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            audit_annotations: &d.audit_annotations,
            warnings: &d.warnings,
        },
    };
    let body = serde_json::to_vec(&out).expect("a response always serializes");

    Ok(Reviewed {
        body,
        uid: req.uid.into_owned(),
        kind: req.kind.kind,
        operation: match operation {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
        },
        namespace: judged.namespace,
        name: judged.name,
        user: req.user_info.username.unwrap_or_default().into_owned(),
        dry_run: req.dry_run.unwrap_or(false),
        unreadable: judged.unreadable,
        decision: judged.decision,
    })
}

struct Judged {
    decision: Decision,
    namespace: String,
    name: String,
    /// The object could not be read as its kind.
    unreadable: bool,
}

fn is_kind<K: k8s_openapi::Resource>(gvk: &GroupVersionKind) -> bool {
    gvk.group == K::GROUP && gvk.version == K::VERSION && gvk.kind == K::KIND
}

/// Reads the request's objects as the kind it names and runs the rules registered for `webhook`.
fn judge(
    settings: &Settings,
    facts: &dyn NamespaceLookup,
    webhook: Webhook,
    req: &RequestIn<'_>,
    operation: Operation,
    now: Timestamp,
) -> Judged {
    let request_name = req.name.as_deref().unwrap_or_default();
    let request_namespace = req.namespace.as_deref().unwrap_or_default();
    let user = req.user_info.username.as_deref().unwrap_or_default();
    let untouched = |why: &str| Judged {
        decision: Decision::allow(None, why),
        namespace: request_namespace.to_owned(),
        name: request_name.to_owned(),
        unreadable: false,
    };
    // Subresources (status, finalize) cannot change what the rules read.
    if req.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        return untouched("subresource requests are not judged");
    }

    if is_kind::<NetworkPolicyKind>(&req.kind) {
        if webhook != Webhook::Validate {
            return untouched("NetworkPolicies are judged by /validate");
        }
        let (object, old_object) = match (read_object(req.object, "object"), read_object(req.old_object, "oldObject")) {
            (Ok(o), Ok(old)) => (o, old),
            (Err(e), _) | (_, Err(e)) => return unreadable("NetworkPolicy", request_namespace, request_name, e),
        };
        let request = Request {
            operation,
            name: request_name,
            namespace: request_namespace,
            user,
            object: object.as_ref(),
            old_object: old_object.as_ref(),
        };
        let namespace = request.policy_namespace();
        let decision = settings.judge_network_policy(&request, facts.facts(settings, namespace), now);
        return Judged {
            namespace: namespace.to_owned(),
            name: request.object_name().to_owned(),
            decision,
            unreadable: false,
        };
    }

    if is_kind::<NamespaceKind>(&req.kind) {
        let judge_ns: fn(&Settings, &Request<'_, crate::rules::Namespace>, Timestamp) -> Decision =
            match (webhook, operation) {
                (Webhook::Validate, Operation::Update) => Settings::judge_namespace_update,
                (Webhook::Mutate, Operation::Create) => Settings::judge_namespace_create,
                _ => return untouched("this operation on a Namespace is not judged by this webhook"),
            };
        let (object, old_object) = match (read_object(req.object, "object"), read_object(req.old_object, "oldObject")) {
            (Ok(o), Ok(old)) => (o, old),
            (Err(e), _) | (_, Err(e)) => return unreadable("Namespace", "", request_name, e),
        };
        let request = Request {
            operation,
            name: request_name,
            namespace: request_namespace,
            user,
            object: object.as_ref(),
            old_object: old_object.as_ref(),
        };
        let decision = judge_ns(settings, &request, now);
        return Judged {
            namespace: String::new(),
            name: request.object_name().to_owned(),
            decision,
            unreadable: false,
        };
    }

    untouched("not a kind this webhook judges")
}

/// Reads a raw object as `T`, or says where it is not one.
fn read_object<T: for<'de> Deserialize<'de>>(raw: Option<&RawValue>, field: &str) -> Result<Option<T>, String> {
    let Some(raw) = raw else { return Ok(None) };
    decode(raw.get().as_bytes()).map(Some).map_err(|e| match e.path {
        Some(path) => format!("{field}.{path}: {}", e.error),
        None => format!("{field}: {}", e.error),
    })
}

/// A decoding error and where it happened (`None`: at the top).
struct DecodeError {
    path: Option<String>,
    error: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.path {
            Some(path) => write!(f, "{path}: {}", self.error),
            None => f.write_str(&self.error),
        }
    }
}

/// Decodes JSON, and on failure says where. The path is only tracked
/// when decoding has failed, since tracking it costs an allocation per object key on the fast path.
fn decode<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<T, DecodeError> {
    serde_json::from_slice(bytes).map_err(|first| {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let tracked: Result<T, _> = serde_path_to_error::deserialize(&mut de);
        match tracked {
            Err(e) => {
                let path = e.path().to_string();
                DecodeError { path: (path != ".").then_some(path), error: e.into_inner().to_string() }
            }
            // Trailing characters: the tracked run stops before them.
            Ok(_) => DecodeError { path: None, error: first.to_string() },
        }
    })
}

/// Fail closed: an object that is not what its kind says is denied, whatever the rule modes.
fn unreadable(kind: &str, namespace: &str, name: &str, error: String) -> Judged {
    let mut decision = Decision::allow(None, String::new());
    decision.verdict = Verdict::Deny;
    decision.message = format!(
        "default-deny-guard cannot read the request's {kind} ({error}), so it cannot tell whether a rule applies; \
         denied to stay safe"
    );
    Judged { decision, namespace: namespace.to_owned(), name: name.to_owned(), unreadable: true }
}

/// The JSON Patch that sets R4's label: into the existing `metadata.labels`, or as a new map.
pub fn label_patch(set: &SetLabel) -> Patch {
    let (path, value) = if set.labels_present {
        (PointerBuf::from_tokens(["metadata", "labels", set.key.as_str()]), serde_json::json!(set.value))
    } else {
        (PointerBuf::from_tokens(["metadata", "labels"]), serde_json::json!({ &set.key: &set.value }))
    };
    Patch(vec![PatchOperation::Add(AddOperation { path, value })])
}

/// The rule label of the metrics: the rule that decided, or `none`.
pub fn rule_label(rule: Option<RuleId>) -> &'static str {
    rule.map_or("none", RuleId::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_patch_shapes() {
        let cases = [
            ("default-deny", true, r#"[{"op":"add","path":"/metadata/labels/default-deny","value":"enabled"}]"#),
            ("default-deny", false, r#"[{"op":"add","path":"/metadata/labels","value":{"default-deny":"enabled"}}]"#),
            // A key with a slash is one JSON Pointer token: `/` is escaped as `~1`, `~` as `~0`.
            (
                "example.com/net~pol",
                true,
                r#"[{"op":"add","path":"/metadata/labels/example.com~1net~0pol","value":"enabled"}]"#,
            ),
        ];
        for (key, labels_present, want) in cases {
            let set = SetLabel { key: key.into(), value: "enabled".into(), labels_present };
            assert_eq!(serde_json::to_string(&label_patch(&set)).unwrap(), want);
        }
    }

    #[test]
    fn patch_applies_to_the_namespace() {
        for (labels, want) in [
            (serde_json::json!(null), serde_json::json!({"default-deny": "enabled"})),
            (serde_json::json!({"team": "a"}), serde_json::json!({"team": "a", "default-deny": "enabled"})),
            (serde_json::json!({"default-deny": "off"}), serde_json::json!({"default-deny": "enabled"})),
        ] {
            let mut ns = serde_json::json!({"metadata": {"name": "a"}});
            if !labels.is_null() {
                ns["metadata"]["labels"] = labels.clone();
            }
            let set =
                SetLabel { key: "default-deny".into(), value: "enabled".into(), labels_present: !labels.is_null() };
            json_patch::patch(&mut ns, &label_patch(&set)).unwrap();
            assert_eq!(ns["metadata"]["labels"], want);
        }
    }
}
