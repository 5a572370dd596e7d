//! The decision logic: objects in, decision out. No I/O, no async, no clock: the caller passes the time and what
//! it knows of the policy's namespace, so that `serve` and `check` reach the very same verdicts.
//!
//! Each rule of docs/design.md section 4 lives in one function here: [`Settings::r1_system_namespace`],
//! [`Settings::r2_delete`], [`Settings::r3_weakening`], [`Settings::r4_label_new_namespace`] and
//! [`Settings::r5_keep_label`].

pub mod default_deny;
pub mod exception;
pub mod exemption;
pub mod messages;
pub mod system_namespaces;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Deserializer};

pub use default_deny::{DefaultDeny, Direction, PolicySpec};
pub use exception::{Exception, ExceptionKeys};
pub use exemption::Exemption;
pub use system_namespaces::{LabelMatch, SystemNamespaces};

// === Vocabulary ===

/// The rules of docs/design.md section 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RuleId {
    /// No default-deny policy in a system namespace.
    R1,
    /// No deletion of a default-deny policy without an exception.
    R2,
    /// No weakening of a default-deny policy without an exception.
    R3,
    /// New namespaces get the enable label.
    R4,
    /// The enable label stays.
    R5,
}

impl RuleId {
    pub const ALL: [RuleId; 5] = [RuleId::R1, RuleId::R2, RuleId::R3, RuleId::R4, RuleId::R5];

    pub fn as_str(self) -> &'static str {
        match self {
            RuleId::R1 => "R1",
            RuleId::R2 => "R2",
            RuleId::R3 => "R3",
            RuleId::R4 => "R4",
            RuleId::R5 => "R5",
        }
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RuleId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        RuleId::ALL
            .into_iter()
            .find(|r| r.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown rule {s:?}: expected one of R1, R2, R3, R4, R5"))
    }
}

/// `enforce` denies; `warn` allows and returns the denial as a warning (kubectl prints it), for a phased roll-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Enforce,
    Warn,
}

/// The label that marks a namespace for the default-deny policy, `default-deny=enabled` by default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnableLabel {
    pub key: String,
    pub value: String,
}

impl Default for EnableLabel {
    fn default() -> Self {
        EnableLabel { key: "default-deny".into(), value: "enabled".into() }
    }
}

impl FromStr for EnableLabel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
                Ok(EnableLabel { key: k.trim().into(), value: v.trim().into() })
            }
            _ => Err(format!("{s:?}: the enable label is written key=value, e.g. default-deny=enabled")),
        }
    }
}

impl fmt::Display for EnableLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

/// Everything the rules are configured by (docs/design.md section 2).
#[derive(Debug, Clone)]
pub struct Settings {
    pub system_namespaces: SystemNamespaces,
    pub enable_label: EnableLabel,
    pub exception_keys: ExceptionKeys,
    /// Users whose DELETEs are namespace teardown (the namespace controller, the garbage collector).
    pub trusted_deleters: Vec<String>,
    /// Rules in warn mode; the others enforce.
    pub warn: Vec<RuleId>,
}

pub const DEFAULT_TRUSTED_DELETERS: [&str; 2] = [
    "system:serviceaccount:kube-system:namespace-controller",
    "system:serviceaccount:kube-system:generic-garbage-collector",
];

impl Default for Settings {
    fn default() -> Self {
        Settings {
            system_namespaces: SystemNamespaces::default(),
            enable_label: EnableLabel::default(),
            exception_keys: ExceptionKeys::default(),
            trusted_deleters: DEFAULT_TRUSTED_DELETERS.iter().map(|s| s.to_string()).collect(),
            warn: Vec::new(),
        }
    }
}

impl Settings {
    pub fn mode(&self, rule: RuleId) -> Mode {
        if self.warn.contains(&rule) { Mode::Warn } else { Mode::Enforce }
    }
}

// === Objects, as far as the rules read them ===

/// The metadata fields the rules read. `null` reads as absent, as in a YAML `labels:` with nothing under it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Metadata {
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub generate_name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub deletion_timestamp: Option<String>,
}

pub(crate) fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// A string borrowed from the JSON it is read from when it has no escapes, copied when it has. For the keys that
/// hand-written visitors match: serde's own `Cow<str>` always copies (only fields marked `borrow` borrow), which
/// was an allocation per key of every ingress rule and annotation.
#[derive(Deserialize)]
#[serde(transparent)]
pub(crate) struct BorrowedStr<'a>(#[serde(borrow)] pub(crate) std::borrow::Cow<'a, str>);

/// A `networking.k8s.io/v1` NetworkPolicy. A missing or `null` spec is `{}`: a deny-all ingress policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct NetworkPolicy {
    #[serde(default, deserialize_with = "default_deny::object_or_null")]
    pub metadata: Metadata,
    #[serde(default, deserialize_with = "default_deny::object_or_null")]
    pub spec: PolicySpec,
}

/// A `v1` Namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Namespace {
    #[serde(default, deserialize_with = "default_deny::object_or_null")]
    pub metadata: Metadata,
}

/// The operation of an admission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Create,
    Update,
    Delete,
    Connect,
}

impl Operation {
    pub const ALL: [Operation; 4] = [Operation::Create, Operation::Update, Operation::Delete, Operation::Connect];

    /// As the API server writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
        }
    }
}

/// One admission request, as far as the rules read it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a, T> {
    pub operation: Operation,
    /// `request.name`: empty for a collection delete's per-object reviews and for `generateName`.
    pub name: &'a str,
    /// `request.namespace`: empty for cluster-scoped objects.
    pub namespace: &'a str,
    pub user: &'a str,
    pub object: Option<&'a T>,
    pub old_object: Option<&'a T>,
}

impl<T> Request<'_, T> {
    fn objects(&self) -> impl Iterator<Item = &T> {
        self.object.into_iter().chain(self.old_object)
    }
}

impl Request<'_, NetworkPolicy> {
    /// `metadata.namespace`, else `request.namespace` (docs/design.md section 4, R1).
    pub fn policy_namespace(&self) -> &str {
        self.objects().find_map(|o| o.metadata.namespace.as_deref().filter(|n| !n.is_empty())).unwrap_or(self.namespace)
    }
}

impl<'a, T: HasMetadata> Request<'a, T> {
    /// The object's name: from the object itself, since `request.name` is empty for a collection delete and for
    /// `generateName`.
    pub fn object_name(&self) -> &str {
        self.objects().map(|o| o.metadata().name.as_str()).find(|n| !n.is_empty()).unwrap_or(self.name)
    }
}

/// Objects with [`Metadata`].
pub trait HasMetadata {
    fn metadata(&self) -> &Metadata;
}

impl HasMetadata for NetworkPolicy {
    fn metadata(&self) -> &Metadata {
        &self.metadata
    }
}

impl HasMetadata for Namespace {
    fn metadata(&self) -> &Metadata {
        &self.metadata
    }
}

/// What the caller knows of a NetworkPolicy's namespace, from the namespace cache when it has one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NamespaceFacts {
    /// The namespace has a `deletionTimestamp`: its content is being torn down.
    pub terminating: bool,
    /// The namespace carries the label that marks system namespaces.
    pub system_by_label: bool,
}

// === Decisions ===

/// What the webhook answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Allowed, with a label patch (R4).
    Patch,
    /// Allowed although a rule in warn mode would have denied it.
    Warn,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Patch => "patch",
            Verdict::Warn => "warn",
            Verdict::Deny => "deny",
        }
    }

    pub fn allowed(self) -> bool {
        self != Verdict::Deny
    }
}

/// The label that R4 sets on a new namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetLabel {
    pub key: String,
    pub value: String,
    /// Whether the object already has a `metadata.labels` map (decides the shape of the JSON Patch).
    pub labels_present: bool,
}

/// The outcome of one review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    /// The rule that decided, if one applied.
    pub rule: Option<RuleId>,
    /// The denial (or, when allowed, why), written for the person who ran kubectl.
    pub message: String,
    /// Warnings that kubectl prints.
    pub warnings: Vec<String>,
    /// Recorded in the API server's audit log.
    pub audit_annotations: BTreeMap<String, String>,
    /// An exception annotation let this request through.
    pub exception_used: bool,
    pub set_label: Option<SetLabel>,
}

impl Decision {
    pub fn allow(rule: Option<RuleId>, message: impl Into<String>) -> Decision {
        Decision {
            verdict: Verdict::Allow,
            rule,
            message: message.into(),
            warnings: Vec::new(),
            audit_annotations: BTreeMap::new(),
            exception_used: false,
            set_label: None,
        }
    }

    /// Allowed by a valid exception: recorded in the audit log.
    fn excepted(rule: RuleId, message: String, reason: &str, expires: Option<&str>) -> Decision {
        let mut d = Decision::allow(Some(rule), message);
        d.exception_used = true;
        d.audit_annotations.insert("exception-rule".into(), rule.to_string());
        d.audit_annotations.insert("exception-reason".into(), reason.to_owned());
        if let Some(e) = expires {
            d.audit_annotations.insert("exception-expires".into(), e.to_owned());
        }
        d
    }

    pub fn allowed(&self) -> bool {
        self.verdict.allowed()
    }
}

// === The rules ===

impl Settings {
    /// A rule's violation, as its mode wants it: a denial, or an allowance with the denial as a warning.
    fn violation(&self, rule: RuleId, message: String) -> Decision {
        let mut d = Decision::allow(Some(rule), message);
        match self.mode(rule) {
            Mode::Enforce => d.verdict = Verdict::Deny,
            Mode::Warn => {
                d.verdict = Verdict::Warn;
                d.warnings.push(messages::warn_mode(rule.as_str(), &d.message));
                d.audit_annotations.insert("warned-rule".into(), rule.to_string());
            }
        }
        d
    }

    /// Why a NetworkPolicy's namespace is a system namespace, if it is one.
    fn system_reason(&self, namespace: &str, facts: NamespaceFacts) -> Option<String> {
        if self.system_namespaces.contains_name(namespace) {
            Some(messages::system_by_name(namespace))
        } else if facts.system_by_label {
            let label = self.system_namespaces.label().map(ToString::to_string).unwrap_or_default();
            Some(messages::system_by_label(namespace, &label))
        } else {
            None
        }
    }

    fn is_trusted_deleter(&self, user: &str) -> bool {
        self.trusted_deleters.iter().any(|t| t == user)
    }

    fn annotate_hint(&self, kind: &str, name: &str, namespace: Option<&str>) -> String {
        let ns = namespace.map(|n| format!(" -n {n}")).unwrap_or_default();
        messages::annotate_hint(kind, name, &ns, &self.exception_keys.reason, &self.exception_keys.expires)
    }

    /// Judges a NetworkPolicy CREATE, UPDATE or DELETE (R1, R2, R3). `facts` is what the caller knows of the
    /// policy's namespace ([`Request::policy_namespace`]).
    pub fn judge_network_policy(
        &self,
        req: &Request<'_, NetworkPolicy>,
        facts: NamespaceFacts,
        now: Timestamp,
    ) -> Decision {
        match req.operation {
            Operation::Create | Operation::Update => {
                let Some(object) = req.object else {
                    return Decision::allow(None, "no object in the request");
                };
                if let Some(d) = self.r1_system_namespace(req, object, facts) {
                    return d;
                }
                match (req.operation, req.old_object) {
                    (Operation::Update, Some(old)) => self.r3_weakening(req, old, object, facts, now),
                    // Said by what held, so that `check -v` and the debug log never read as "not default-deny"
                    // for a policy that is.
                    _ if object.spec.default_deny().is_some() => {
                        Decision::allow(None, format!("{} is not a system namespace", req.policy_namespace()))
                    }
                    _ => Decision::allow(None, "not a default-deny policy"),
                }
            }
            Operation::Delete => self.r2_delete(req, facts, now),
            Operation::Connect => Decision::allow(None, "CONNECT is not judged"),
        }
    }

    /// R1: a default-deny policy never lands in a system namespace.
    fn r1_system_namespace(
        &self,
        req: &Request<'_, NetworkPolicy>,
        object: &NetworkPolicy,
        facts: NamespaceFacts,
    ) -> Option<Decision> {
        let namespace = req.policy_namespace();
        let deny = object.spec.default_deny()?;
        let why = self.system_reason(namespace, facts)?;
        let name = req.object_name();
        Some(self.violation(RuleId::R1, messages::r1_system_namespace(namespace, name, &deny.to_string(), &why)))
    }

    /// R2: deleting a default-deny policy needs an exception, unless it is namespace teardown or a system
    /// namespace's repair.
    fn r2_delete(&self, req: &Request<'_, NetworkPolicy>, facts: NamespaceFacts, now: Timestamp) -> Decision {
        let namespace = req.policy_namespace();
        let name = req.object_name();
        // Teardown first: it must never hang, even when the review lacks what the other checks read.
        if facts.terminating {
            return Decision::allow(Some(RuleId::R2), format!("namespace {namespace} is being deleted (teardown)"));
        }
        if self.is_trusted_deleter(req.user) {
            return Decision::allow(Some(RuleId::R2), format!("{} deletes as part of namespace teardown", req.user));
        }
        let Some(old) = req.old_object else {
            return self.violation(
                RuleId::R2,
                format!(
                    "the DELETE review of NetworkPolicy {namespace}/{name} has no oldObject, so the webhook cannot \
                     tell whether it is the namespace's default-deny policy (the API server sends oldObject from \
                     Kubernetes 1.15 on)"
                ),
            );
        };
        let Some(deny) = old.spec.default_deny() else {
            return Decision::allow(None, "not a default-deny policy");
        };
        if self.system_reason(namespace, facts).is_some() {
            return Decision::allow(Some(RuleId::R2), "removing a default-deny policy from a system namespace");
        }
        let exception = Exception::read(&old.metadata.annotations, &self.exception_keys, now);
        if let Exception::Valid { reason, expires } = &exception {
            return Decision::excepted(
                RuleId::R2,
                format!("deleting NetworkPolicy {namespace}/{name} under {exception}"),
                reason,
                expires.as_deref(),
            );
        }
        let hint = self.annotate_hint("networkpolicy", name, Some(namespace));
        self.violation(
            RuleId::R2,
            messages::r2_delete(namespace, name, &deny.to_string(), &hint, &void_note(&exception)),
        )
    }

    /// R3: an UPDATE that turns a default-deny policy into one that is not is a deletion in disguise.
    fn r3_weakening(
        &self,
        req: &Request<'_, NetworkPolicy>,
        old: &NetworkPolicy,
        new: &NetworkPolicy,
        facts: NamespaceFacts,
        now: Timestamp,
    ) -> Decision {
        let Some(before) = old.spec.default_deny() else {
            return Decision::allow(None, "not a default-deny policy");
        };
        if new.spec.default_deny().is_some() {
            return Decision::allow(None, "still a default-deny policy");
        }
        let namespace = req.policy_namespace();
        if self.system_reason(namespace, facts).is_some() {
            return Decision::allow(Some(RuleId::R3), "weakening a default-deny policy in a system namespace");
        }
        let name = req.object_name();
        let exception = Exception::read(&new.metadata.annotations, &self.exception_keys, now);
        if let Exception::Valid { reason, expires } = &exception {
            return Decision::excepted(
                RuleId::R3,
                format!("weakening NetworkPolicy {namespace}/{name} under {exception}"),
                reason,
                expires.as_deref(),
            );
        }
        let after = if new.spec.pod_selector.selects_everything() {
            messages::R3_ALLOWS_ALL
        } else {
            messages::R3_SELECTS_SOME
        };
        let keys = &self.exception_keys;
        self.violation(
            RuleId::R3,
            messages::r3_weakening(
                namespace,
                name,
                &before.to_string(),
                after,
                &keys.reason,
                &keys.expires,
                &void_note(&exception),
            ),
        )
    }

    /// Judges a Namespace CREATE: R4.
    pub fn judge_namespace_create(&self, req: &Request<'_, Namespace>, now: Timestamp) -> Decision {
        match (req.operation, req.object) {
            (Operation::Create, Some(ns)) => self.r4_label_new_namespace(req, ns, now),
            _ => Decision::allow(None, "only a Namespace CREATE gets the label"),
        }
    }

    /// R4: a new namespace gets the enable label, unless it is a system namespace or has a valid exception.
    fn r4_label_new_namespace(&self, req: &Request<'_, Namespace>, ns: &Namespace, now: Timestamp) -> Decision {
        let meta = &ns.metadata;
        let name = req.object_name();
        let shown = if name.is_empty() { format!("{}<generated>", meta.generate_name) } else { name.to_owned() };
        // `generateName`: the name is not known yet, but its prefix may already say system namespace.
        let system = if name.is_empty() {
            self.system_namespaces.contains_generated(&meta.generate_name)
                || self.system_namespaces.selects_labels(&meta.labels)
        } else {
            self.is_system_namespace(name, &meta.labels)
        };
        if system {
            return Decision::allow(Some(RuleId::R4), format!("{shown} is a system namespace: no label"));
        }
        let label = &self.enable_label;
        let exception = Exception::read(&meta.annotations, &self.exception_keys, now);
        if let Exception::Valid { reason, expires } = &exception {
            return Decision::excepted(
                RuleId::R4,
                format!("namespace {shown} is not labelled {label} under {exception}"),
                reason,
                expires.as_deref(),
            );
        }
        if self.is_enabled(&meta.labels) {
            return Decision::allow(Some(RuleId::R4), format!("namespace {shown} already has {label}"));
        }
        let current = meta.labels.get(&label.key);
        let mut message = match current {
            Some(other) => format!(
                "namespace {shown}: label {}={other} replaced by {label}, so that the namespace gets its \
                 default-deny policy; to opt it out, annotate it with {}='<reason>'",
                label.key, self.exception_keys.reason
            ),
            None => format!("namespace {shown} labelled {label}"),
        };
        let void = void_note(&exception);
        if !void.is_empty() {
            message.push('.');
            message.push_str(&void);
        }
        if self.mode(RuleId::R4) == Mode::Warn {
            let mut d = Decision::allow(Some(RuleId::R4), format!("would label namespace {shown} {label}"));
            d.verdict = Verdict::Warn;
            d.warnings.push(format!("R4 (warn mode, not applied): {}", d.message));
            return d;
        }
        let mut d = Decision::allow(Some(RuleId::R4), message);
        d.verdict = Verdict::Patch;
        if current.is_some() || !matches!(exception, Exception::Absent) {
            d.warnings.push(d.message.clone());
        }
        d.set_label = Some(SetLabel {
            key: label.key.clone(),
            value: label.value.clone(),
            labels_present: !meta.labels.is_empty(),
        });
        d
    }

    /// Judges a Namespace UPDATE: R5.
    pub fn judge_namespace_update(&self, req: &Request<'_, Namespace>, now: Timestamp) -> Decision {
        match (req.operation, req.old_object, req.object) {
            (Operation::Update, Some(old), Some(new)) => self.r5_keep_label(req, old, new, now),
            _ => Decision::allow(None, "only a Namespace UPDATE can remove the label"),
        }
    }

    /// R5: the enable label stays, unless the updated namespace carries a valid exception.
    fn r5_keep_label(
        &self,
        req: &Request<'_, Namespace>,
        old: &Namespace,
        new: &Namespace,
        now: Timestamp,
    ) -> Decision {
        let label = &self.enable_label;
        if !self.is_enabled(&old.metadata.labels) || self.is_enabled(&new.metadata.labels) {
            return Decision::allow(None, format!("{label} is not removed"));
        }
        let name = req.object_name();
        if self.is_system_namespace(name, &new.metadata.labels) {
            return Decision::allow(Some(RuleId::R5), format!("{name} is a system namespace"));
        }
        if old.metadata.deletion_timestamp.is_some() {
            return Decision::allow(Some(RuleId::R5), format!("namespace {name} is being deleted"));
        }
        let exception = Exception::read(&new.metadata.annotations, &self.exception_keys, now);
        if let Exception::Valid { reason, expires } = &exception {
            return Decision::excepted(
                RuleId::R5,
                format!("label {label} removed from namespace {name} under {exception}"),
                reason,
                expires.as_deref(),
            );
        }
        let change = match new.metadata.labels.get(&label.key) {
            Some(v) => messages::r5_changing(&label.key, &format!("{v:?}")),
            None => messages::r5_removing(&label.to_string()),
        };
        let keys = &self.exception_keys;
        self.violation(
            RuleId::R5,
            messages::r5_keep_label(
                name,
                &label.to_string(),
                &change,
                &keys.reason,
                &keys.expires,
                &void_note(&exception),
            ),
        )
    }
}

/// Tells the user why the exception annotation they set did not count: a sentence of its own, to follow one that
/// ends with a full stop.
fn void_note(exception: &Exception) -> String {
    match exception {
        Exception::Void { why, .. } => messages::void_note(why),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests;
