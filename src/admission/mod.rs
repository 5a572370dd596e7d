//! AdmissionReview in, AdmissionReview out: the wire format around the rules.
//!
//! The review is decoded with the objects kept as raw JSON, and each is then read as the kind the request names.
//! kube's `AdmissionRequest<T>` decodes the object eagerly, so an object that is not what its kind says would make
//! the whole review unreadable, where the webhook must deny it with a message that says what was wrong
//! (docs/design.md section 4). The answer is written here too: kube's `AdmissionResponse` sends the patch as a JSON
//! array of numbers rather than base64, and its `invalid()` answers with an empty uid and always
//! `admission.k8s.io/v1`, which kube-apiserver counts as a failed call. kube's `Operation` is used as it is.
//!
//! By concern: [`wire`], the review and the answer as they go over the wire; [`decode`], the one-pass decoder and
//! the decoding that says where it failed; here, the answer to a review: which rules run and what is sent back.

mod decode;
mod wire;

use std::borrow::Cow;

use jiff::Timestamp;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::Namespace as NamespaceKind;
use k8s_openapi::api::networking::v1::NetworkPolicy as NetworkPolicyKind;
use kube::core::admission::Operation as KubeOperation;
use serde_json::value::RawValue;

use crate::rules::{
    Decision, ExceptionKeys, Namespace, NamespaceFacts, NetworkPolicy, Operation, Request, SetLabel, Settings, Verdict,
};
use decode::{AnyObject, Kind, ObjectIn, decode};
use wire::{KindIn, RequestIn, ResponseOut, ReviewIn, ReviewOut, StatusOut};

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
    pub const ALL: [Webhook; 2] = [Webhook::Validate, Webhook::Mutate];

    pub fn as_str(self) -> &'static str {
        match self {
            Webhook::Validate => "validate",
            Webhook::Mutate => "mutate",
        }
    }
}

/// The kind of a review, as far as the webhooks care: a closed set, so that what a client writes in
/// `request.kind` can never become a metric label of its own (SPEC section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewKind {
    /// `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
    /// `v1` Namespace.
    Namespace,
    /// Any other group, version or kind: allowed untouched.
    Other,
}

impl ReviewKind {
    pub const ALL: [ReviewKind; 3] = [ReviewKind::NetworkPolicy, ReviewKind::Namespace, ReviewKind::Other];

    pub fn as_str(self) -> &'static str {
        match self {
            ReviewKind::NetworkPolicy => "NetworkPolicy",
            ReviewKind::Namespace => "Namespace",
            ReviewKind::Other => "other",
        }
    }
}

/// What a review came to, for the metrics and the log: the verdict, or `Error` for a review denied because its
/// object could not be read as its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionLabel {
    Allow,
    Patch,
    Warn,
    Deny,
    Error,
}

impl DecisionLabel {
    pub const ALL: [DecisionLabel; 5] =
        [DecisionLabel::Allow, DecisionLabel::Patch, DecisionLabel::Warn, DecisionLabel::Deny, DecisionLabel::Error];

    pub fn as_str(self) -> &'static str {
        match self {
            DecisionLabel::Allow => "allow",
            DecisionLabel::Patch => "patch",
            DecisionLabel::Warn => "warn",
            DecisionLabel::Deny => "deny",
            DecisionLabel::Error => "error",
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
    #[error(
        "the body is a {0:?}, not an AdmissionReview: send the AdmissionReview that kube-apiserver sends \
         (kind AdmissionReview, apiVersion {API_VERSION_V1}, a request with a uid)"
    )]
    NotAReview(String),
    #[error(
        "the body has no \"kind\": an AdmissionReview was expected (kind AdmissionReview, apiVersion \
         {API_VERSION_V1}, a request with a uid)"
    )]
    NoKind,
    #[error("unsupported AdmissionReview apiVersion {0:?}: expected {API_VERSION_V1} or {API_VERSION_V1BETA1}")]
    Version(String),
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("the AdmissionReview's request has no uid")]
    NoUid,
}

/// One review, answered: the response body and what the log line and the metrics say about it. The request's
/// own strings are borrowed from the body it was read from.
#[derive(Debug)]
pub struct Reviewed<'a> {
    pub body: Vec<u8>,
    pub uid: Cow<'a, str>,
    pub kind: ReviewKind,
    /// `request.kind.kind` as sent (for the log line only: a label would let a client grow the metrics).
    pub kind_sent: Cow<'a, str>,
    pub operation: Operation,
    pub namespace: String,
    pub name: String,
    pub user: Cow<'a, str>,
    pub dry_run: bool,
    pub decision: Decision,
    /// The object could not be read as its kind, and the review was denied for it (fail closed).
    pub unreadable: bool,
}

impl Reviewed<'_> {
    /// Whether the decision changes something or needs a person: a denial, a warning, a patch, an exception
    /// used, an object that could not be read. The rest are plain allows.
    pub fn notable(&self) -> bool {
        let d = &self.decision;
        self.decision_label() != DecisionLabel::Allow || d.exception_used || !d.warnings.is_empty()
    }

    pub fn decision_label(&self) -> DecisionLabel {
        if self.unreadable {
            return DecisionLabel::Error;
        }
        match self.decision.verdict {
            Verdict::Allow => DecisionLabel::Allow,
            Verdict::Patch => DecisionLabel::Patch,
            Verdict::Warn => DecisionLabel::Warn,
            Verdict::Deny => DecisionLabel::Deny,
        }
    }
}

/// Answers one AdmissionReview. Pure but for `facts`, which reads the namespace cache.
pub fn review<'a>(
    settings: &Settings,
    facts: &dyn NamespaceLookup,
    webhook: Webhook,
    body: &'a [u8],
    now: Timestamp,
) -> Result<Reviewed<'a>, ReviewError> {
    // One pass, objects included (see `AnyObject`). UTF-8 is checked once for the whole body, so that the parser
    // does not check each string again. Anything that does not read goes the two-pass way below.
    // simdutf8's `basic` check accepts and refuses exactly what `std::str::from_utf8` does, 16-32 bytes at a time.
    if let Ok(text) = simdutf8::basic::from_utf8(body)
        && let Ok(review) = serde_json::from_str::<ReviewIn<'_, Box<AnyObject<'_>>>>(text)
    {
        return answer(settings, facts, webhook, review, now);
    }
    review_two_pass(settings, facts, webhook, body, now)
}

/// The reference path: the envelope with its objects as raw JSON, then each object as the kind the request
/// names, so that an object that is not what its kind says is denied with a message that says where.
fn review_two_pass<'a>(
    settings: &Settings,
    facts: &dyn NamespaceLookup,
    webhook: Webhook,
    body: &'a [u8],
    now: Timestamp,
) -> Result<Reviewed<'a>, ReviewError> {
    let review: ReviewIn<'_, &RawValue> = decode(body).map_err(|e| ReviewError::Decode(e.to_string()))?;
    answer(settings, facts, webhook, review, now)
}

fn answer<'a, O: ObjectIn>(
    settings: &Settings,
    facts: &dyn NamespaceLookup,
    webhook: Webhook,
    review: ReviewIn<'a, O>,
    now: Timestamp,
) -> Result<Reviewed<'a>, ReviewError> {
    match review.kind.as_deref() {
        Some("AdmissionReview") => {}
        Some(other) => return Err(ReviewError::NotAReview(other.to_owned())),
        None => return Err(ReviewError::NoKind),
    }
    let api_version = review.api_version.unwrap_or_default();
    if api_version != API_VERSION_V1 && api_version != API_VERSION_V1BETA1 {
        return Err(ReviewError::Version(api_version.into_owned()));
    }
    let mut req = review.request.ok_or(ReviewError::NoRequest)?;
    if req.uid.is_empty() {
        return Err(ReviewError::NoUid);
    }

    let operation = match req.operation {
        KubeOperation::Create => Operation::Create,
        KubeOperation::Update => Operation::Update,
        KubeOperation::Delete => Operation::Delete,
        KubeOperation::Connect => Operation::Connect,
    };
    let kind = review_kind(&req.kind);
    let judged = judge(settings, facts, webhook, kind, &mut req, operation, now);

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
    // Sized for the answer at once: a growing Vec reallocated 2-3 times per review.
    let mut body = Vec::with_capacity(192 + d.message.len() + out.response.uid.len());
    serde_json::to_writer(&mut body, &out).expect("a response always serializes");

    Ok(Reviewed {
        body,
        uid: req.uid,
        kind,
        kind_sent: req.kind.kind,
        operation,
        namespace: judged.namespace,
        name: judged.name,
        user: req.user_info.username.unwrap_or_default(),
        dry_run: req.dry_run.unwrap_or(false),
        unreadable: judged.unreadable,
        decision: judged.decision,
    })
}

struct JudgedRequest {
    decision: Decision,
    namespace: String,
    name: String,
    /// The object could not be read as its kind.
    unreadable: bool,
}

fn is_kind<K: k8s_openapi::Resource>(gvk: &KindIn<'_>) -> bool {
    gvk.group == K::GROUP && gvk.version == K::VERSION && gvk.kind == K::KIND
}

fn review_kind(gvk: &KindIn<'_>) -> ReviewKind {
    if is_kind::<NetworkPolicyKind>(gvk) {
        ReviewKind::NetworkPolicy
    } else if is_kind::<NamespaceKind>(gvk) {
        ReviewKind::Namespace
    } else {
        ReviewKind::Other
    }
}

/// What the request says of itself, whatever its kind: the rules' [`Request`] once its objects are read.
#[derive(Clone, Copy)]
struct Sent<'a> {
    operation: Operation,
    name: &'a str,
    namespace: &'a str,
    user: &'a str,
}

impl<'a> Sent<'a> {
    fn with<K>(self, (object, old_object): &'a (Option<K>, Option<K>)) -> Request<'a, K> {
        let Sent { operation, name, namespace, user } = self;
        Request { operation, name, namespace, user, object: object.as_ref(), old_object: old_object.as_ref() }
    }
}

/// Reads the request's objects as the kind it names and runs the rules registered for `webhook`.
fn judge<O: ObjectIn>(
    settings: &Settings,
    facts: &dyn NamespaceLookup,
    webhook: Webhook,
    kind: ReviewKind,
    req: &mut RequestIn<'_, O>,
    operation: Operation,
    now: Timestamp,
) -> JudgedRequest {
    let (object, old_object) = (req.object.take(), req.old_object.take());
    let keys = &settings.exception_keys;
    let sent = Sent {
        operation,
        name: req.name.as_deref().unwrap_or_default(),
        namespace: req.namespace.as_deref().unwrap_or_default(),
        user: req.user_info.username.as_deref().unwrap_or_default(),
    };
    let untouched = |why: &str| JudgedRequest {
        decision: Decision::allow(None, why),
        namespace: sent.namespace.to_owned(),
        name: sent.name.to_owned(),
        unreadable: false,
    };
    // Subresources (status, finalize) cannot change what the rules read.
    if req.sub_resource.as_deref().is_some_and(|s| !s.is_empty()) {
        return untouched("subresource requests are not judged");
    }

    if kind == ReviewKind::NetworkPolicy {
        if webhook != Webhook::Validate {
            return untouched("NetworkPolicies are judged by /validate");
        }
        let objects = match read_objects::<NetworkPolicy, _>(object, old_object, keys) {
            Ok(objects) => objects,
            Err(e) => return unreadable("NetworkPolicy", sent.namespace, sent.name, e),
        };
        let request = sent.with(&objects);
        let namespace = request.policy_namespace();
        let decision = settings.judge_network_policy(&request, facts.facts(settings, namespace), now);
        return JudgedRequest {
            namespace: namespace.to_owned(),
            name: request.object_name().to_owned(),
            decision,
            unreadable: false,
        };
    }

    if kind == ReviewKind::Namespace {
        let judge_ns: fn(&Settings, &Request<'_, Namespace>, Timestamp) -> Decision = match (webhook, operation) {
            (Webhook::Validate, Operation::Update) => Settings::judge_namespace_update,
            (Webhook::Mutate, Operation::Create) => Settings::judge_namespace_create,
            _ => return untouched("this operation on a Namespace is not judged by this webhook"),
        };
        let objects = match read_objects::<Namespace, _>(object, old_object, keys) {
            Ok(objects) => objects,
            Err(e) => return unreadable("Namespace", "", sent.name, e),
        };
        let request = sent.with(&objects);
        let decision = judge_ns(settings, &request, now);
        return JudgedRequest {
            namespace: String::new(),
            name: request.object_name().to_owned(),
            decision,
            unreadable: false,
        };
    }

    untouched("not a kind this webhook judges")
}

/// Reads the request's object and oldObject as `K`, or says which one is not a `K` and where.
fn read_objects<K: Kind, O: ObjectIn>(
    object: Option<O>,
    old_object: Option<O>,
    keys: &ExceptionKeys,
) -> Result<(Option<K>, Option<K>), String> {
    let read = |o: Option<O>, field| o.map(|o| o.read_as(field, keys)).transpose();
    Ok((read(object, "object")?, read(old_object, "oldObject")?))
}

/// Fail closed: an object that is not what its kind says is denied, whatever the rule modes.
fn unreadable(kind: &str, namespace: &str, name: &str, error: String) -> JudgedRequest {
    let mut decision = Decision::allow(None, String::new());
    decision.verdict = Verdict::Deny;
    decision.message = format!(
        "default-deny-guard cannot read the request's {kind} ({error}), so it cannot tell whether a rule applies; \
         denied to stay safe"
    );
    JudgedRequest { decision, namespace: namespace.to_owned(), name: name.to_owned(), unreadable: true }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass decoder answers every review exactly as the two-pass reference does.
    #[test]
    fn one_pass_answers_as_two_passes() {
        let mut bodies: Vec<(String, Vec<u8>)> = Vec::new();
        for dir in ["apiserver-1.37", "apiserver-1.20", "hostile"] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(dir);
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.extension().is_some_and(|e| e == "json") {
                    bodies.push((path.display().to_string(), std::fs::read(&path).unwrap()));
                }
            }
        }
        assert!(bodies.len() > 10);
        let envelope = |kind: &str, group: &str, op: &str, object: &str| {
            format!(
                r#"{{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{{"uid":"u1",
                "kind":{{"group":"{group}","version":"v1","kind":"{kind}"}},"name":"n","namespace":"production",
                "operation":"{op}","userInfo":{{"username":"admin"}},"object":{object},"oldObject":{object}}}}}"#
            )
        };
        let objects = [
            r#"{"metadata":{"name":"a","annotations":{"x":"\ud800"}}}"#,
            r#"{"metadata":{"name":"a","annotations":{"x":"\u00e9\"q\""}}}"#,
            r#"{"metadata":{"name":"a","annotations":{"x":1}}}"#,
            r#"{"metadata":{"name":"a","annotations":{"x":null}}}"#,
            r#"{"metadata":{"name":"a","annotations":null}}"#,
            r#"{"metadata":{"name":"a","annotations":[]}}"#,
            r#"{"metadata":{"name":"a","annotations":{"default-deny-guard.io/exception":"a","default-deny-guard.io/exception":""}}}"#,
            r#"{"metadata":{"name":"a","annotations":{"default-deny-guard.io\/exception":"tested \u0041"}}}"#,
            r#"{"metadata":{"name":"a","annotations":{"default-deny-guard.io/exception":"x","default-deny-guard.io/exception-expires":"2000-01-01"}}}"#,
            r#"{"metadata":{"name":"a","labels":{"default-deny":"enabled","default-deny":"off"}}}"#,
            r#"{"metadata":{"name":"a"},"spec":"not a policy spec"}"#,
            r#"{"metadata":{"name":"a"},"spec":{"finalizers":["kubernetes"]},"status":{"phase":"Active"}}"#,
            r#"{"metadata":{"name":"a"},"spec":{"podSelector":{},"ingress":[{}]}}"#,
            r#"{"metadata":{"name":"a"},"metadata":{"name":"b"}}"#,
            r#"{"metadata":{"name":"a","namespace":"kube-system"},"spec":{"podSelector":{}}}"#,
            r#"[]"#,
            r#"null"#,
            r#""a string""#,
        ];
        for object in objects {
            for (kind, group) in [("NetworkPolicy", "networking.k8s.io"), ("Namespace", ""), ("Pod", "")] {
                for op in ["CREATE", "UPDATE", "DELETE"] {
                    bodies.push((format!("{kind} {op} {object}"), envelope(kind, group, op, object).into_bytes()));
                }
            }
        }
        // The kind after the objects, as no API server writes it.
        bodies.push((
            "kind last".into(),
            br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1","request":{"uid":"u1","name":"n",
            "object":{"metadata":{"name":"a","namespace":"kube-system"},"spec":{}},"operation":"CREATE",
            "kind":{"group":"networking.k8s.io","version":"v1","kind":"NetworkPolicy"}}}"#
                .to_vec(),
        ));
        let settings = Settings::default();
        let now: Timestamp = "2026-06-30T12:00:00Z".parse().unwrap();
        for (what, body) in &bodies {
            for webhook in [Webhook::Validate, Webhook::Mutate] {
                let one = review(&settings, &(), webhook, body, now);
                let two = review_two_pass(&settings, &(), webhook, body, now);
                assert_eq!(format!("{one:?}"), format!("{two:?}"), "{what} ({webhook:?})");
            }
        }
    }

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
