//! AdmissionReview in, AdmissionReview out: the wire format around the rules.
//!
//! The review is decoded with the objects kept as raw JSON, and each is then read as the kind the request names.
//! kube's `AdmissionRequest<T>` decodes the object eagerly, so an object that is not what its kind says would make
//! the whole review unreadable, where the webhook must deny it with a message that says what was wrong
//! (docs/design.md section 4). The answer is written here too: kube's `AdmissionResponse` sends the patch as a JSON
//! array of numbers rather than base64, and its `invalid()` answers with an empty uid and always
//! `admission.k8s.io/v1`, which kube-apiserver counts as a failed call. kube's `Operation` is used as it is.

use std::borrow::Cow;
use std::collections::BTreeMap;

use jiff::Timestamp;
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::Namespace as NamespaceKind;
use k8s_openapi::api::networking::v1::NetworkPolicy as NetworkPolicyKind;
use kube::core::admission::Operation as KubeOperation;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::rules::default_deny::object_or_null;
use crate::rules::{
    Decision, ExceptionKeys, Metadata, Namespace, NamespaceFacts, NetworkPolicy, Operation, PolicySpec, Request,
    RuleId, SetLabel, Settings, Verdict, null_as_default,
};

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

// === The review as kube-apiserver sends it ===

/// The review, with its objects as `O`: [`AnyObject`] when read in one pass, raw JSON in the two-pass fallback.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(bound(deserialize = "O: Deserialize<'de>"))]
struct ReviewIn<'a, O> {
    #[serde(default, borrow)]
    api_version: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    request: Option<RequestIn<'a, O>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(bound(deserialize = "O: Deserialize<'de>"))]
struct RequestIn<'a, O> {
    #[serde(default, borrow)]
    uid: Cow<'a, str>,
    #[serde(borrow)]
    kind: KindIn<'a>,
    #[serde(default, borrow)]
    sub_resource: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    namespace: Option<Cow<'a, str>>,
    operation: KubeOperation,
    #[serde(default, borrow)]
    user_info: UserInfoIn<'a>,
    #[serde(default)]
    object: Option<O>,
    #[serde(default)]
    old_object: Option<O>,
    #[serde(default)]
    dry_run: Option<bool>,
}

/// An object read in the envelope's own pass, before its kind is known: the fields of a NetworkPolicy, of which a
/// Namespace reads the metadata. Decoded as [`crate::rules::NetworkPolicy`] is, but for the annotations' values
/// (see [`MetadataIn`]).
///
/// Why: reading the objects as raw JSON and then again as their kind scans every byte of them twice; this single
/// pass takes a typical NetworkPolicy CREATE from ~71,000 to ~50,000 instructions (callgrind,
/// `examples/profile_review`), and the 1,000-rule UPDATE from 28.7 to 16.9 million.
/// An object that does not read as this (a Namespace whose `spec` a NetworkPolicy's could not be, a deeper object
/// than the parser's depth limit allows inside the envelope, any error at all) sends the whole review down the
/// two-pass path, whose answer, error messages included, is the reference: the fast path may refuse more, never
/// accept more (`tests::one_pass_answers_as_two_passes` compares them).
#[derive(Deserialize)]
struct AnyObject<'a> {
    #[serde(default, borrow, deserialize_with = "object_or_null")]
    metadata: MetadataIn<'a>,
    #[serde(default, deserialize_with = "object_or_null")]
    spec: PolicySpec,
}

/// [`Metadata`] as the one pass reads it: the same fields and the same rules (keep the two in step; building a
/// `Metadata` from it names every field), except that each annotation's value is kept as raw JSON and only the
/// exception keys' values are decoded, in [`MetadataIn::into_metadata`].
///
/// Why: `kubectl.kubernetes.io/last-applied-configuration` is the whole object again as an escaped string;
/// unescaping it into a `String` that no rule reads took seven reallocations of the parser's scratch buffer and
/// ~6,000 of a typical CREATE's ~50,000 instructions.
#[derive(Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetadataIn<'a> {
    #[serde(default, deserialize_with = "null_as_default")]
    name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    generate_name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    labels: BTreeMap<String, String>,
    #[serde(default, borrow, deserialize_with = "null_as_default")]
    annotations: RawAnnotations<'a>,
    #[serde(default)]
    deletion_timestamp: Option<String>,
}

/// Annotations with their values as raw JSON, in document order.
#[derive(Default)]
struct RawAnnotations<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for RawAnnotations<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for Visitor<'a> {
            type Value = RawAnnotations<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of strings")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    // What a `String` would not take must not pass here either. JSON syntax and control
                    // characters the parser checked while skipping the value, but not lone surrogates (`\ud800`):
                    // a value with a `\u` escape is decoded here to be sure.
                    let text = value.get();
                    let string = text.starts_with('"')
                        && (!text.contains("\\u") || serde_json::from_str::<String>(text).is_ok());
                    if !string {
                        return Err(serde::de::Error::custom("an annotation's value is not a string"));
                    }
                    entries.push((key, value));
                }
                Ok(RawAnnotations(entries))
            }
        }
        d.deserialize_map(Visitor(std::marker::PhantomData))
    }
}

impl MetadataIn<'_> {
    /// The rules' `Metadata`, with the annotations they read: the exception keys (a key given twice: the last
    /// wins, as in a map).
    fn into_metadata(self, keys: &ExceptionKeys) -> Metadata {
        let mut annotations = BTreeMap::new();
        for (key, value) in self.annotations.0 {
            if *key == *keys.reason || *key == *keys.expires {
                let value: String = serde_json::from_str(value.get()).expect("checked to be a string");
                annotations.insert(key.into_owned(), value);
            }
        }
        Metadata {
            name: self.name,
            generate_name: self.generate_name,
            namespace: self.namespace,
            labels: self.labels,
            annotations,
            deletion_timestamp: self.deletion_timestamp,
        }
    }
}

/// How an object field turns into the kind that the request names.
trait ObjectIn {
    /// `field`: `object` or `oldObject`, for the error message.
    fn read_as<K: Kind>(self, field: &str, keys: &ExceptionKeys) -> Result<K, String>;
}

impl ObjectIn for AnyObject<'_> {
    fn read_as<K: Kind>(self, _: &str, keys: &ExceptionKeys) -> Result<K, String> {
        Ok(K::from_parts(self.metadata.into_metadata(keys), self.spec))
    }
}

impl ObjectIn for &RawValue {
    fn read_as<K: Kind>(self, field: &str, _: &ExceptionKeys) -> Result<K, String> {
        decode(self.get()).map_err(|e| match e.path {
            Some(path) => format!("{field}.{path}: {}", e.error),
            None => format!("{field}: {}", e.error),
        })
    }
}

/// kube's `GroupVersionKind`, read the same way (same fields, same name in error messages), borrowing its text
/// instead of allocating three strings per review.
#[derive(Deserialize)]
#[serde(rename = "GroupVersionKind")]
struct KindIn<'a> {
    #[serde(borrow)]
    group: Cow<'a, str>,
    #[serde(borrow)]
    version: Cow<'a, str>,
    #[serde(borrow)]
    kind: Cow<'a, str>,
}

/// The kinds the rules read.
trait Kind: for<'de> Deserialize<'de> {
    fn from_parts(metadata: Metadata, spec: PolicySpec) -> Self;
}

impl Kind for NetworkPolicy {
    fn from_parts(metadata: Metadata, spec: PolicySpec) -> Self {
        NetworkPolicy { metadata, spec }
    }
}

impl Kind for Namespace {
    fn from_parts(metadata: Metadata, _: PolicySpec) -> Self {
        Namespace { metadata }
    }
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
    // One pass, objects included (see `AnyObject`). UTF-8 is checked once for the whole body, so that the parser
    // does not check each string again. Anything that does not read goes the two-pass way below.
    if let Ok(text) = std::str::from_utf8(body)
        && let Ok(review) = serde_json::from_str::<ReviewIn<'_, AnyObject<'_>>>(text)
    {
        return answer(settings, facts, webhook, review, now);
    }
    review_two_pass(settings, facts, webhook, body, now)
}

/// The reference path: the envelope with its objects as raw JSON, then each object as the kind the request
/// names, so that an object that is not what its kind says is denied with a message that says where.
fn review_two_pass(
    settings: &Settings,
    facts: &dyn NamespaceLookup,
    webhook: Webhook,
    body: &[u8],
    now: Timestamp,
) -> Result<Reviewed, ReviewError> {
    let review: ReviewIn<'_, &RawValue> = decode(body).map_err(|e| ReviewError::Decode(e.to_string()))?;
    answer(settings, facts, webhook, review, now)
}

fn answer<O: ObjectIn>(
    settings: &Settings,
    facts: &dyn NamespaceLookup,
    webhook: Webhook,
    review: ReviewIn<'_, O>,
    now: Timestamp,
) -> Result<Reviewed, ReviewError> {
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
    let judged = judge(settings, facts, webhook, &mut req, operation, now);

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
        uid: req.uid.into_owned(),
        kind: req.kind.kind.into_owned(),
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

fn is_kind<K: k8s_openapi::Resource>(gvk: &KindIn<'_>) -> bool {
    gvk.group == K::GROUP && gvk.version == K::VERSION && gvk.kind == K::KIND
}

/// Reads the request's objects as the kind it names and runs the rules registered for `webhook`.
fn judge<O: ObjectIn>(
    settings: &Settings,
    facts: &dyn NamespaceLookup,
    webhook: Webhook,
    req: &mut RequestIn<'_, O>,
    operation: Operation,
    now: Timestamp,
) -> Judged {
    let (object, old_object) = (req.object.take(), req.old_object.take());
    let keys = &settings.exception_keys;
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
        let (object, old_object) = match read_objects::<NetworkPolicy, _>(object, old_object, keys) {
            Ok(objects) => objects,
            Err(e) => return unreadable("NetworkPolicy", request_namespace, request_name, e),
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
        let judge_ns: fn(&Settings, &Request<'_, Namespace>, Timestamp) -> Decision = match (webhook, operation) {
            (Webhook::Validate, Operation::Update) => Settings::judge_namespace_update,
            (Webhook::Mutate, Operation::Create) => Settings::judge_namespace_create,
            _ => return untouched("this operation on a Namespace is not judged by this webhook"),
        };
        let (object, old_object) = match read_objects::<Namespace, _>(object, old_object, keys) {
            Ok(objects) => objects,
            Err(e) => return unreadable("Namespace", "", request_name, e),
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

/// Reads the request's object and oldObject as `K`, or says which one is not a `K` and where.
fn read_objects<K: Kind, O: ObjectIn>(
    object: Option<O>,
    old_object: Option<O>,
    keys: &ExceptionKeys,
) -> Result<(Option<K>, Option<K>), String> {
    let read = |o: Option<O>, field| o.map(|o| o.read_as(field, keys)).transpose();
    Ok((read(object, "object")?, read(old_object, "oldObject")?))
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
fn decode<'de, T: Deserialize<'de>>(input: impl Input<'de>) -> Result<T, DecodeError> {
    input.parse().map_err(|first| {
        let mut de = input.deserializer();
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

/// JSON input: bytes, or text already known to be UTF-8 (which the parser then does not check again).
trait Input<'de>: Copy {
    type Read: serde_json::de::Read<'de>;
    fn parse<T: Deserialize<'de>>(self) -> serde_json::Result<T>;
    fn deserializer(self) -> serde_json::Deserializer<Self::Read>;
}

impl<'de> Input<'de> for &'de [u8] {
    type Read = serde_json::de::SliceRead<'de>;
    fn parse<T: Deserialize<'de>>(self) -> serde_json::Result<T> {
        serde_json::from_slice(self)
    }
    fn deserializer(self) -> serde_json::Deserializer<Self::Read> {
        serde_json::Deserializer::from_slice(self)
    }
}

impl<'de> Input<'de> for &'de str {
    type Read = serde_json::de::StrRead<'de>;
    fn parse<T: Deserialize<'de>>(self) -> serde_json::Result<T> {
        serde_json::from_str(self)
    }
    fn deserializer(self) -> serde_json::Deserializer<Self::Read> {
        serde_json::Deserializer::from_str(self)
    }
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
