//! The AdmissionReview as kube-apiserver sends it, and the answer as it reads it.

use std::borrow::Cow;
use std::collections::BTreeMap;

use kube::core::admission::Operation as KubeOperation;
use serde::{Deserialize, Serialize};

// === The review as kube-apiserver sends it ===

/// The review, with its objects as `O`: `decode::AnyObject` when read in one pass, raw JSON in the two-pass fallback.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(bound(deserialize = "O: Deserialize<'de>"))]
pub(super) struct ReviewIn<'a, O> {
    #[serde(default, borrow)]
    pub(super) api_version: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(super) kind: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(super) request: Option<RequestIn<'a, O>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[serde(bound(deserialize = "O: Deserialize<'de>"))]
pub(super) struct RequestIn<'a, O> {
    #[serde(default, borrow)]
    pub(super) uid: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) kind: KindIn<'a>,
    #[serde(default, borrow)]
    pub(super) sub_resource: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(super) name: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub(super) namespace: Option<Cow<'a, str>>,
    pub(super) operation: KubeOperation,
    #[serde(default, borrow)]
    pub(super) user_info: UserInfoIn<'a>,
    #[serde(default)]
    pub(super) object: Option<O>,
    #[serde(default)]
    pub(super) old_object: Option<O>,
    #[serde(default)]
    pub(super) dry_run: Option<bool>,
}

/// kube's `GroupVersionKind`, read the same way (same fields, same name in error messages), borrowing its text
/// instead of allocating three strings per review.
#[derive(Deserialize)]
#[serde(rename = "GroupVersionKind")]
pub(super) struct KindIn<'a> {
    #[serde(borrow)]
    pub(super) group: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) version: Cow<'a, str>,
    #[serde(borrow)]
    pub(super) kind: Cow<'a, str>,
}

#[derive(Default, Deserialize)]
pub(super) struct UserInfoIn<'a> {
    #[serde(default, borrow)]
    pub(super) username: Option<Cow<'a, str>>,
}

// === The answer ===

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ReviewOut<'a> {
    pub(super) api_version: &'a str,
    pub(super) kind: &'static str,
    pub(super) response: ResponseOut<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ResponseOut<'a> {
    pub(super) uid: &'a str,
    pub(super) allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) status: Option<StatusOut<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) patch_type: Option<&'static str>,
    /// Standard base64 of the JSON Patch, the API's encoding of `[]byte`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) patch: Option<k8s_openapi::ByteString>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) audit_annotations: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub(super) warnings: &'a [String],
}

/// A `metav1.Status`, as kube-apiserver reads it from a denial.
#[derive(Serialize)]
pub(super) struct StatusOut<'a> {
    pub(super) status: &'static str,
    pub(super) code: u16,
    pub(super) reason: &'static str,
    pub(super) message: &'a str,
}
