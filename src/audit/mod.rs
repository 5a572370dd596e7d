//! The audit of what already exists: an admission webhook judges changes, and never sees what was there before it
//! was installed or what slipped in while it was down. [`audit`] judges the cluster as it is, with the webhook's own
//! settings and rule functions (R1 is [`Settings::judge_network_policy`], exceptions are [`Exception::read`],
//! exemptions are [`Settings::namespace_exemption`]), and returns what an operator has to know:
//!
//! - **R1**: every default-deny NetworkPolicy in a system namespace (it may be cutting the cluster's DNS now);
//! - **coverage**: every application namespace with no default-deny policy in force, by Kubernetes semantics (any
//!   policy that selects every pod and restricts a direction: the reconciler's or the team's own);
//! - **exceptions**: every exception annotation in use, valid, expiring within a window, expired or unreadable.
//!
//! Pure, like the rules: objects and a clock in, [`Audit`] out. The reconciler turns it into metrics, reports and
//! Events ([`report`] builds the PolicyReports).

pub mod report;
#[cfg(test)]
mod tests;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::rules::{self, Exception, NamespaceFacts, Operation, PolicySpec, Request, RuleId, Settings, Verdict};

/// A NetworkPolicy as the audit reads it: its metadata and the counted spec of [`rules::PolicySpec`]. The
/// reconciler's watch decodes every policy of the cluster straight into this, so that its cache keeps no rule
/// bodies.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AuditedPolicy {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default, deserialize_with = "rules::default_deny::object_or_null")]
    pub spec: PolicySpec,
}

impl kube::Resource for AuditedPolicy {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "NetworkPolicy".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "networking.k8s.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "networkpolicies".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl AuditedPolicy {
    /// The policy as the rules read it.
    fn as_rules_policy(&self) -> rules::NetworkPolicy {
        let m = &self.metadata;
        rules::NetworkPolicy {
            metadata: rules::Metadata {
                name: m.name.clone().unwrap_or_default(),
                namespace: m.namespace.clone(),
                labels: m.labels.clone().unwrap_or_default(),
                annotations: m.annotations.clone().unwrap_or_default(),
                ..rules::Metadata::default()
            },
            spec: self.spec.clone(),
        }
    }
}

/// What the audit checks: the `rule` of a finding, of its PolicyReport result and of the
/// `default_deny_guard_violations` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Check {
    /// R1: a default-deny policy in a system namespace.
    #[serde(rename = "R1")]
    SystemNamespace,
    /// An application namespace without a default-deny policy.
    #[serde(rename = "coverage")]
    Coverage,
    /// An exception annotation in use.
    #[serde(rename = "exception")]
    Exception,
}

impl Check {
    pub const ALL: [Check; 3] = [Check::SystemNamespace, Check::Coverage, Check::Exception];
    /// The checks whose findings are violations (the `rule` label of `default_deny_guard_violations`).
    pub const VIOLATIONS: [Check; 2] = [Check::SystemNamespace, Check::Coverage];

    pub fn as_str(self) -> &'static str {
        match self {
            Check::SystemNamespace => RuleId::R1.as_str(),
            Check::Coverage => "coverage",
            Check::Exception => "exception",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A finding's result, in the PolicyReport's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A violation.
    Fail,
    /// Needs a person soon: an exception about to expire, expired or unreadable.
    Warn,
    /// An exception that lets the object off the rules, as recorded (not a violation: `--once` exits 0 on it).
    Skip,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Fail => "fail",
            Outcome::Warn => "warn",
            Outcome::Skip => "skip",
        }
    }
}

/// A finding's severity, in the PolicyReport's words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    High,
    Medium,
    Low,
    Info,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
            Severity::Info => "info",
        }
    }
}

/// Where an exception stands (the `state` label of `default_deny_guard_exceptions_active`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExceptionState {
    Valid,
    /// Valid, and expires within the window.
    Expiring,
    Expired,
    /// Does not count for another reason: an empty reason, an unreadable date, an expiry without a reason.
    Invalid,
}

impl ExceptionState {
    pub const ALL: [ExceptionState; 4] =
        [ExceptionState::Valid, ExceptionState::Expiring, ExceptionState::Expired, ExceptionState::Invalid];

    pub fn as_str(self) -> &'static str {
        match self {
            ExceptionState::Valid => "valid",
            ExceptionState::Expiring => "expiring",
            ExceptionState::Expired => "expired",
            ExceptionState::Invalid => "invalid",
        }
    }
}

/// The kind of object a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum SubjectKind {
    Namespace,
    NetworkPolicy,
}

impl SubjectKind {
    pub fn api_version(self) -> &'static str {
        match self {
            SubjectKind::Namespace => "v1",
            SubjectKind::NetworkPolicy => "networking.k8s.io/v1",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Namespace => "Namespace",
            SubjectKind::NetworkPolicy => "NetworkPolicy",
        }
    }
}

/// The object a finding is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Subject {
    pub kind: SubjectKind,
    /// The namespace the finding belongs to: a NetworkPolicy's namespace, or the Namespace itself.
    pub namespace: String,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl Subject {
    /// The object's own `metadata.namespace`: `None` for a Namespace, which is cluster-scoped.
    pub fn object_namespace(&self) -> Option<&str> {
        match self.kind {
            SubjectKind::Namespace => None,
            SubjectKind::NetworkPolicy => Some(&self.namespace),
        }
    }

    fn namespace(meta: &ObjectMeta) -> Subject {
        let name = meta.name.clone().unwrap_or_default();
        Subject { kind: SubjectKind::Namespace, namespace: name.clone(), name, uid: meta.uid.clone() }
    }

    fn policy(meta: &ObjectMeta) -> Subject {
        Subject {
            kind: SubjectKind::NetworkPolicy,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
        }
    }
}

impl fmt::Display for Subject {
    /// As kubectl names it: `namespace/team-a`, `networkpolicy/default-deny-all -n kube-system`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            SubjectKind::Namespace => write!(f, "namespace {}", self.name),
            SubjectKind::NetworkPolicy => write!(f, "networkpolicy {}/{}", self.namespace, self.name),
        }
    }
}

/// An exception annotation as the audit found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExceptionUse {
    pub state: ExceptionState,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// One thing the audit found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    #[serde(rename = "rule")]
    pub check: Check,
    #[serde(rename = "result")]
    pub outcome: Outcome,
    pub severity: Severity,
    pub subject: Subject,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exception: Option<ExceptionUse>,
}

impl Finding {
    /// What makes this finding the same one from one audit to the next (an Event is published once per key).
    pub fn key(&self) -> String {
        let state = self.exception.as_ref().map_or("", |e| e.state.as_str());
        let s = &self.subject;
        format!("{}/{state}/{:?}/{}/{}/{}", self.check, s.kind, s.namespace, s.name, s.uid.as_deref().unwrap_or(""))
    }

    /// The reason of the Event about it.
    pub fn event_reason(&self) -> &'static str {
        match (self.check, self.exception.as_ref().map(|e| e.state)) {
            (Check::SystemNamespace, _) => "DefaultDenyInSystemNamespace",
            (Check::Coverage, _) => "NamespaceUncovered",
            (Check::Exception, Some(ExceptionState::Expiring)) => "ExceptionExpiringSoon",
            (Check::Exception, Some(ExceptionState::Expired)) => "ExceptionExpired",
            (Check::Exception, Some(ExceptionState::Invalid)) => "ExceptionInvalid",
            (Check::Exception, _) => "ExceptionInUse",
        }
    }
}

/// Namespaces by coverage (the `state` label of `default_deny_guard_namespace_coverage`). Namespaces being deleted
/// are not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Coverage {
    /// Application namespaces with a default-deny policy in force.
    pub covered: usize,
    /// Application namespaces without one.
    pub uncovered: usize,
    /// System namespaces and namespaces with a valid exception.
    pub exempt: usize,
}

/// What the audit found, sorted by namespace, then object, then check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    pub findings: Vec<Finding>,
    pub coverage: Coverage,
    /// The next instant at which the answer changes with no change to the objects: an exception that enters its
    /// expiry window or expires. The reconciler audits again then.
    pub next_change: Option<Timestamp>,
}

impl Audit {
    /// Findings of a check (for `Check::Exception`, every exception found, whatever its state).
    pub fn count(&self, check: Check) -> usize {
        self.findings.iter().filter(|f| f.check == check).count()
    }

    pub fn exceptions(&self, state: ExceptionState) -> usize {
        self.findings.iter().filter(|f| f.exception.as_ref().is_some_and(|e| e.state == state)).count()
    }

    /// Whether anything needs a person: a violation, or an exception that expires soon, expired or does not count.
    pub fn needs_attention(&self) -> bool {
        self.findings.iter().any(|f| f.outcome != Outcome::Skip)
    }
}

/// How the audit is configured beyond the rules' settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    /// An exception that expires within this long is reported as expiring.
    pub expiring_within: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { expiring_within: Duration::from_secs(7 * 24 * 3600) }
    }
}

/// Audits `namespaces` and `policies` at `now`.
pub fn audit<'a>(
    settings: &Settings,
    config: &AuditConfig,
    namespaces: impl IntoIterator<Item = &'a ObjectMeta>,
    policies: impl IntoIterator<Item = &'a AuditedPolicy>,
    now: Timestamp,
) -> Audit {
    let window = SignedDuration::try_from(config.expiring_within).unwrap_or(SignedDuration::MAX);
    let namespaces: BTreeMap<&str, &ObjectMeta> =
        namespaces.into_iter().map(|m| (m.name.as_deref().unwrap_or_default(), m)).collect();
    let mut by_namespace: HashMap<&str, Vec<&AuditedPolicy>> = HashMap::new();
    for p in policies {
        by_namespace.entry(p.metadata.namespace.as_deref().unwrap_or_default()).or_default().push(p);
    }
    let empty = BTreeMap::new();
    let mut out = Audit::default();
    let mut next = NextChange::default();

    for (&name, &meta) in &namespaces {
        if meta.deletion_timestamp.is_some() {
            continue;
        }
        let labels = meta.labels.as_ref().unwrap_or(&empty);
        let annotations = meta.annotations.as_ref().unwrap_or(&empty);
        let mut policies = by_namespace.remove(name).unwrap_or_default();
        policies.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let facts =
            NamespaceFacts { terminating: false, system_by_label: settings.system_namespaces.selects_labels(labels) };
        let system = settings.is_system_namespace(name, labels);

        // The namespace itself: its exception, then its coverage.
        let subject = Subject::namespace(meta);
        let exemption = settings.namespace_exemption(name, labels, annotations, now);
        if !system && let Some(found) = exception_finding(settings, window, &subject, annotations, now, &mut next) {
            out.findings.push(found);
        }
        let covered = policies.iter().any(|p| p.spec.default_deny().is_some());
        if exemption.is_exempt() {
            out.coverage.exempt += 1;
        } else if covered {
            out.coverage.covered += 1;
        } else {
            out.coverage.uncovered += 1;
            out.findings.push(Finding {
                check: Check::Coverage,
                outcome: Outcome::Fail,
                severity: Severity::High,
                message: uncovered_message(settings, name, labels, &exemption),
                subject,
                exception: None,
            });
        }

        // Its policies: R1 by the webhook's own rule, and the exceptions of the default-deny ones.
        for p in policies {
            out.findings.extend(policy_findings(settings, window, p, facts, system, now, &mut next));
        }
    }
    // Policies whose namespace is not in the cache (listed between the two listings): judged by name alone.
    let mut orphans: Vec<&AuditedPolicy> = by_namespace.into_values().flatten().collect();
    orphans.sort_by(|a, b| (&a.metadata.namespace, &a.metadata.name).cmp(&(&b.metadata.namespace, &b.metadata.name)));
    for p in orphans {
        let ns = p.metadata.namespace.as_deref().unwrap_or_default();
        let system = settings.system_namespaces.contains_name(ns);
        out.findings.extend(policy_findings(settings, window, p, NamespaceFacts::default(), system, now, &mut next));
    }
    out.next_change = next.0;
    out
}

/// The earliest future instant seen.
#[derive(Default)]
struct NextChange(Option<Timestamp>);

impl NextChange {
    fn at(&mut self, t: Timestamp, now: Timestamp) {
        if t > now && self.0.is_none_or(|n| t < n) {
            self.0 = Some(t);
        }
    }
}

fn policy_findings(
    settings: &Settings,
    window: SignedDuration,
    policy: &AuditedPolicy,
    facts: NamespaceFacts,
    system: bool,
    now: Timestamp,
    next: &mut NextChange,
) -> Vec<Finding> {
    let mut found = Vec::new();
    if policy.spec.default_deny().is_none() {
        return found;
    }
    let subject = Subject::policy(&policy.metadata);
    let object = policy.as_rules_policy();
    // R1 as the webhook judges the policy's CREATE: the same function, so the same verdict and words.
    let request = Request {
        operation: Operation::Create,
        name: &object.metadata.name,
        namespace: &subject.namespace,
        user: "",
        object: Some(&object),
        old_object: None,
    };
    let decision = settings.judge_network_policy(&request, facts, now);
    if decision.rule == Some(RuleId::R1) && matches!(decision.verdict, Verdict::Deny | Verdict::Warn) {
        found.push(Finding {
            check: Check::SystemNamespace,
            outcome: Outcome::Fail,
            severity: Severity::Critical,
            subject: subject.clone(),
            message: format!(
                "{} It may be cutting that traffic now: delete it (kubectl delete networkpolicy {} -n {}; allowed \
                 in a system namespace) or make its podSelector select only the pods to restrict.",
                decision.message, subject.name, subject.namespace
            ),
            exception: None,
        });
    }
    // In a system namespace the rules never read an exception: none to report.
    if !system && let Some(f) = exception_finding(settings, window, &subject, &object.metadata.annotations, now, next) {
        found.push(f);
    }
    found
}

/// The finding about an exception annotation on `subject`, if it carries one.
fn exception_finding(
    settings: &Settings,
    window: SignedDuration,
    subject: &Subject,
    annotations: &BTreeMap<String, String>,
    now: Timestamp,
    next: &mut NextChange,
) -> Option<Finding> {
    let keys = &settings.exception_keys;
    let raw_expires = annotations.get(&keys.expires).map(|e| e.trim().to_owned());
    let effect = match subject.kind {
        SubjectKind::Namespace => "the namespace gets no default-deny policy",
        SubjectKind::NetworkPolicy => "it may be deleted or weakened",
    };
    let exception = Exception::read(annotations, keys, now);
    let until = exception.valid_until();
    let (state, reason, message) = match exception {
        Exception::Absent => return None,
        Exception::Valid { reason, expires } => {
            if let Some(u) = until {
                next.at(u, now);
                next.at(u.checked_sub(window).unwrap_or(now), now);
            }
            let expiring = until.is_some_and(|u| u.duration_since(now) <= window);
            let when = match &expires {
                Some(e) => format!("expires {e}"),
                None => "no expiry".to_owned(),
            };
            if expiring {
                let message = format!(
                    "{subject} has an exception ({reason:?}, {when}) that expires within {}: {effect} until then. \
                     Renew {} if it is still needed; otherwise protection resumes on its own.",
                    humantime::format_duration(Duration::try_from(window).unwrap_or_default()),
                    keys.expires
                );
                (ExceptionState::Expiring, reason, message)
            } else {
                (
                    ExceptionState::Valid,
                    reason.clone(),
                    format!("{subject} has an exception ({reason:?}, {when}): {effect}."),
                )
            }
        }
        Exception::Void { why, expired } => {
            let reason = annotations.get(&keys.reason).cloned().unwrap_or_default();
            if expired {
                let resumed = match subject.kind {
                    SubjectKind::Namespace => "the namespace is protected again",
                    SubjectKind::NetworkPolicy => "deleting or weakening it is refused again",
                };
                let message = format!(
                    "the exception of {subject} ({reason:?}) expired ({}={}): {resumed}. Remove the annotations, or \
                     renew the expiry if the exception is still needed.",
                    keys.expires,
                    raw_expires.as_deref().unwrap_or_default()
                );
                (ExceptionState::Expired, reason, message)
            } else {
                (ExceptionState::Invalid, reason, format!("the exception of {subject} does not count: {why}."))
            }
        }
    };
    let (outcome, severity) = match state {
        ExceptionState::Valid => (Outcome::Skip, Severity::Info),
        ExceptionState::Expiring => (Outcome::Warn, Severity::Medium),
        ExceptionState::Expired | ExceptionState::Invalid => (Outcome::Warn, Severity::Low),
    };
    Some(Finding {
        check: Check::Exception,
        outcome,
        severity,
        subject: subject.clone(),
        message,
        exception: Some(ExceptionUse { state, reason, expires: raw_expires }),
    })
}

fn uncovered_message(
    settings: &Settings,
    name: &str,
    labels: &BTreeMap<String, String>,
    exemption: &rules::Exemption,
) -> String {
    let label = &settings.enable_label;
    let fix = if settings.is_enabled(labels) {
        format!(
            "It is labelled {label}, so the reconciler should have created its default-deny policy: see the \
             namespace's Events (kubectl get events -n default --field-selector regarding.name={name}) and the \
             reconciler's log."
        )
    } else {
        format!(
            "Label it (kubectl label namespace {name} {label}: the reconciler then creates its default-deny policy), \
             apply a default-deny policy of your own, or record why it stays open (kubectl annotate namespace {name} \
             {}='<reason>').",
            settings.exception_keys.reason
        )
    };
    let void = match exemption {
        rules::Exemption::NotExempt { void_exception: Some(why) } => format!(" Its exception does not count: {why}."),
        _ => String::new(),
    };
    format!(
        "namespace {name} has no default-deny NetworkPolicy: every pod in it accepts traffic from anywhere. {fix}{void}"
    )
}
