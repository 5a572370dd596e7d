//! The rules as in-API-server admission policies (docs/design.md section 8): a ValidatingAdmissionPolicy and binding for each
//! of R1, R2, R3 and R5, and a MutatingAdmissionPolicy and binding for R4, generated from the same [`Settings`] and
//! the same words ([`crate::rules::messages`]) as the webhook, so that the API server decides as the webhook does
//! while no webhook replica answers.
//!
//! One policy per rule, not one for all: each rule then has its own mode (the binding's `validationActions`), its
//! own audit annotations and its own line in the API server's metrics
//! (`apiserver_validating_admission_policy_check_total{policy=...}`), and the chart sets each mode from its values.
//!
//! The settings enter the CEL as `variables` holding JSON literals (`systemNames: ["kube-system", ...]`), never
//! spliced into the expressions, so that the chart's template ([`helm_template`]) is this same output with the
//! literals filled in by Helm from its values.
//!
//! What CEL cannot do stays the webhook's ([`DIFFERENCES`]): CEL has no clock, so an exception's expiry is not
//! read here; a MutatingAdmissionPolicy cannot warn.

mod cel;
mod helm;

use std::fmt;
use std::str::FromStr;

use k8s_openapi::api::admissionregistration::v1 as vap;
use k8s_openapi::api::admissionregistration::v1alpha1 as map_spec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};
use serde::Serialize;
use serde_json::Value;

use crate::rules::{Mode, RuleId, Settings, messages};

pub use helm::{helm_template, webhook_match_conditions};

use cel::{concat, hole, lit};

/// What the policies leave to the webhook, and how the API server's answers differ from the webhook's. Printed in
/// each policy's annotations and in docs/apiserver-policies.md.
pub const DIFFERENCES: &[&str] = &[
    "exception expiry: CEL has no clock, so the exception-expires annotation is not read here; an expired or \
     malformed expiry still counts when the policies decide alone (the webhook refuses it)",
    "R4 warnings: a MutatingAdmissionPolicy cannot warn, so the warnings that another value of the enable label \
     was overwritten or that an exception does not count come from the webhook only; with R4 in warn mode no \
     MutatingAdmissionPolicy is made",
    "message prefix: kubectl prints \"ValidatingAdmissionPolicy '<policy>' with binding '<binding>' denied request: \
     <message>\" (the webhook's: \"admission webhook \\\"<webhook>\\\" denied the request: <message>\"); a warning \
     is prefixed \"Validation failed for ValidatingAdmissionPolicy '<policy>' with binding '<binding>': \"",
    "audit annotations: keyed by policy (<policy>/exception-reason); a rule in warn mode is recorded as \
     validation.policy.admission.k8s.io/validation_failure, not warned-rule",
    "warn mode beside the webhook: a rule in warn mode is bound [Audit] only, so that kubectl prints its warning \
     once (the webhook's); without the webhook it is bound [Warn, Audit]",
];

/// A Kubernetes minor version, `1.34` (a `v` and a patch are accepted and ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
}

impl KubeVersion {
    /// The newest version the end-to-end suite runs on.
    pub const NEWEST_TESTED: KubeVersion = KubeVersion { major: 1, minor: 37 };
    /// ValidatingAdmissionPolicy `admissionregistration.k8s.io/v1` is GA.
    pub const VALIDATING_V1: KubeVersion = KubeVersion { major: 1, minor: 30 };

    /// The MutatingAdmissionPolicy version to use: v1 from 1.36, v1beta1 on 1.34 and 1.35 (behind the
    /// `MutatingAdmissionPolicy` feature gate and the `admissionregistration.k8s.io/v1beta1` API), none before.
    pub fn mutating_policy_version(self) -> Option<&'static str> {
        match (self.major, self.minor) {
            (1, 36..) | (2.., _) => Some("v1"),
            (1, 34 | 35) => Some("v1beta1"),
            _ => None,
        }
    }
}

impl FromStr for KubeVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?}: a Kubernetes version is written MAJOR.MINOR, e.g. 1.34");
        let t = s.trim().trim_start_matches('v');
        let mut parts = t.split('.');
        let major = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let minor = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        if parts.next().is_some_and(|p| p.parse::<u32>().is_err()) || parts.next().is_some() {
            return Err(bad());
        }
        Ok(KubeVersion { major, minor })
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// How the policies are made, besides the rules' settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub kube_version: KubeVersion,
    /// The objects are named `<prefix>-r1` ... `<prefix>-r5`.
    pub name_prefix: String,
    /// Namespaces the bindings leave out (the webhook's own namespace, as the chart does).
    pub exempt_namespaces: Vec<String>,
    /// The webhook runs too: a rule in warn mode is then bound `[Audit]` only, so that kubectl prints its warning
    /// once.
    pub with_webhook: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            kube_version: KubeVersion::NEWEST_TESTED,
            name_prefix: "default-deny-guard".into(),
            exempt_namespaces: Vec::new(),
            with_webhook: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "Kubernetes {0} has no admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy (GA in 1.30): the webhook \
         is the only engine there"
    )]
    TooOld(KubeVersion),
    #[error("--name-prefix {0:?}: the policies' names must be DNS subdomains (lower case, digits, '-', '.')")]
    BadName(String),
    #[error("writing YAML: {0}")]
    Yaml(String),
}

/// The policies and bindings for `settings`, as objects in the order to apply them (each policy before its
/// binding).
pub fn documents(settings: &Settings, options: &Options) -> Result<Vec<Value>, Error> {
    if options.kube_version < KubeVersion::VALIDATING_V1 {
        return Err(Error::TooOld(options.kube_version));
    }
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.len() <= 240
            && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && n.starts_with(|c: char| c.is_ascii_alphanumeric())
    };
    if !name_ok(&options.name_prefix) {
        return Err(Error::BadName(options.name_prefix.clone()));
    }
    Ok(Generator { target: Target::Cluster { settings, options } }.documents())
}

/// [`documents`] as multi-document YAML, as `default-deny-guard policies` prints it.
pub fn render(settings: &Settings, options: &Options) -> Result<String, Error> {
    let docs = documents(settings, options)?;
    let mut out = format!(
        "# In-API-server admission policies for default-deny-guard's rules (Kubernetes {}), made by\n\
         # `default-deny-guard policies`. Apply with `kubectl apply -f`. What they leave to the webhook is listed in\n\
         # each policy's annotation default-deny-guard.io/left-to-the-webhook.\n",
        options.kube_version
    );
    out.push_str(&to_yaml(&docs)?);
    Ok(out)
}

fn to_yaml(docs: &[Value]) -> Result<String, Error> {
    serde_saphyr::to_string_multiple(docs).map_err(|e| Error::Yaml(e.to_string()))
}

// === The settings, as CEL variables ===

/// A setting the CEL reads, as a variable holding a JSON literal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setting {
    SystemNames,
    SystemPrefixes,
    /// `[]` (none), `["key"]` (the label is present) or `["key", "value"]`.
    SystemLabel,
    EnableKey,
    EnableValue,
    ExceptionKey,
    ExpiresKey,
    TrustedDeleters,
}

impl Setting {
    const ALL: [Setting; 8] = [
        Setting::SystemNames,
        Setting::SystemPrefixes,
        Setting::SystemLabel,
        Setting::EnableKey,
        Setting::EnableValue,
        Setting::ExceptionKey,
        Setting::ExpiresKey,
        Setting::TrustedDeleters,
    ];

    fn name(self) -> &'static str {
        match self {
            Setting::SystemNames => "systemNames",
            Setting::SystemPrefixes => "systemPrefixes",
            Setting::SystemLabel => "systemLabel",
            Setting::EnableKey => "enableKey",
            Setting::EnableValue => "enableValue",
            Setting::ExceptionKey => "exceptionKey",
            Setting::ExpiresKey => "expiresKey",
            Setting::TrustedDeleters => "trustedDeleters",
        }
    }

    /// The JSON literal (JSON strings and lists of strings are CEL literals too).
    fn literal(self, s: &Settings) -> String {
        let json = match self {
            Setting::SystemNames => serde_json::json!(s.system_namespaces.exact_names()),
            Setting::SystemPrefixes => serde_json::json!(s.system_namespaces.prefixes()),
            Setting::SystemLabel => match s.system_namespaces.label() {
                None => serde_json::json!([]),
                Some(l) => match &l.value {
                    None => serde_json::json!([l.key]),
                    Some(v) => serde_json::json!([l.key, v]),
                },
            },
            Setting::EnableKey => serde_json::json!(s.enable_label.key),
            Setting::EnableValue => serde_json::json!(s.enable_label.value),
            Setting::ExceptionKey => serde_json::json!(s.exception_keys.reason),
            Setting::ExpiresKey => serde_json::json!(s.exception_keys.expires),
            Setting::TrustedDeleters => serde_json::json!(s.trusted_deleters),
        };
        json.to_string()
    }

    fn var(self) -> String {
        format!("variables.{}", self.name())
    }
}

/// Whether the output is for a cluster (the settings' values) or the chart's template (Helm fills them in).
#[derive(Clone, Copy)]
enum Target<'a> {
    Cluster { settings: &'a Settings, options: &'a Options },
    Helm,
}

struct Generator<'a> {
    target: Target<'a>,
}

/// The rules that are ValidatingAdmissionPolicies.
const VALIDATED: [RuleId; 4] = [RuleId::R1, RuleId::R2, RuleId::R3, RuleId::R5];

impl Generator<'_> {
    fn setting(&self, s: Setting) -> String {
        match self.target {
            Target::Cluster { settings, .. } => s.literal(settings),
            Target::Helm => helm::quoted(s.name()),
        }
    }

    fn name(&self, rule: RuleId) -> String {
        let suffix = rule.as_str().to_ascii_lowercase();
        match self.target {
            Target::Cluster { options, .. } => format!("{}-{suffix}", options.name_prefix),
            Target::Helm => format!("{}-{suffix}", helm::FULLNAME),
        }
    }

    /// Whether the rule is in warn mode, as a CEL literal.
    fn warned(&self, rule: RuleId) -> String {
        match self.target {
            Target::Cluster { settings, .. } => (settings.mode(rule) == Mode::Warn).to_string(),
            Target::Helm => helm::quoted(&format!("warned{rule}")),
        }
    }

    fn validation_actions(&self, rule: RuleId) -> Value {
        match self.target {
            Target::Cluster { settings, options } => match (settings.mode(rule), options.with_webhook) {
                (Mode::Enforce, _) => serde_json::json!(["Deny"]),
                (Mode::Warn, true) => serde_json::json!(["Audit"]),
                (Mode::Warn, false) => serde_json::json!(["Warn", "Audit"]),
            },
            Target::Helm => Value::String(helm::raw(&format!("actions{rule}"))),
        }
    }

    fn namespace_selector(&self) -> Value {
        match self.target {
            Target::Cluster { options, .. } => {
                let mut exempt: Vec<String> = options.exempt_namespaces.clone();
                exempt.sort();
                exempt.dedup();
                let selector = if exempt.is_empty() {
                    LabelSelector::default()
                } else {
                    LabelSelector {
                        match_expressions: Some(vec![LabelSelectorRequirement {
                            key: "kubernetes.io/metadata.name".into(),
                            operator: "NotIn".into(),
                            values: Some(exempt),
                        }]),
                        match_labels: None,
                    }
                };
                serde_json::to_value(selector).expect("a selector serializes")
            }
            Target::Helm => Value::String(helm::raw("namespaceSelector")),
        }
    }

    fn metadata(&self, rule: RuleId, differences: &[&str]) -> ObjectMeta {
        let mut annotations = std::collections::BTreeMap::new();
        annotations.insert("default-deny-guard.io/rule".to_owned(), rule.to_string());
        if !differences.is_empty() {
            annotations.insert("default-deny-guard.io/left-to-the-webhook".to_owned(), differences.join("; "));
        }
        ObjectMeta { name: Some(self.name(rule)), annotations: Some(annotations), ..ObjectMeta::default() }
    }

    fn with_labels(&self, mut doc: Value) -> Value {
        if let Target::Helm = self.target {
            doc["metadata"]["labels"] = Value::String(helm::raw("labels"));
        }
        doc
    }

    fn documents(&self) -> Vec<Value> {
        let mut docs = Vec::new();
        for rule in VALIDATED {
            let (policy, binding) = self.validating(rule);
            docs.push(self.with_labels(policy));
            docs.push(self.with_labels(binding));
        }
        if let Some((policy, binding)) = self.mutating() {
            docs.push(self.with_labels(policy));
            docs.push(self.with_labels(binding));
        }
        docs
    }

    /// The settings variables every policy starts with.
    fn setting_variables(&self) -> Vec<(String, String)> {
        Setting::ALL.iter().map(|s| (s.name().to_owned(), self.setting(*s))).collect()
    }

    fn validating(&self, rule: RuleId) -> (Value, Value) {
        let body = match rule {
            RuleId::R1 => self.r1(),
            RuleId::R2 => self.r2(),
            RuleId::R3 => self.r3(),
            RuleId::R5 => self.r5(),
            RuleId::R4 => unreachable!("R4 is the mutating policy"),
        };
        let mut variables = self.setting_variables();
        variables.push(("warned".into(), self.warned(rule)));
        variables.extend(body.variables);
        let warn_prefix = concat(&messages::warn_mode(rule.as_str(), ""));
        let spec = vap::ValidatingAdmissionPolicySpec {
            failure_policy: Some("Fail".into()),
            match_constraints: Some(body.resources),
            variables: Some(
                variables.into_iter().map(|(name, expression)| vap::Variable { name, expression }).collect(),
            ),
            validations: Some(vec![vap::Validation {
                expression: body.allowed,
                message_expression: Some(format!("(variables.warned ? {warn_prefix} : '') + (\n{}\n)", body.message)),
                // The static message is what the API server says if the message expression fails.
                message: Some(format!("{rule}: denied by default-deny-guard")),
                reason: Some("Forbidden".into()),
            }]),
            audit_annotations: body.exception.as_ref().map(|e| exception_audit_annotations(rule, e)),
            ..Default::default()
        };
        let policy = vap::ValidatingAdmissionPolicy {
            metadata: self.metadata(rule, &body.differences),
            spec: Some(spec),
            status: None,
        };
        let binding = vap::ValidatingAdmissionPolicyBinding {
            metadata: ObjectMeta { name: Some(self.name(rule)), ..ObjectMeta::default() },
            spec: Some(vap::ValidatingAdmissionPolicyBindingSpec {
                policy_name: Some(self.name(rule)),
                validation_actions: Some(Vec::new()),
                match_resources: Some(vap::MatchResources::default()),
                param_ref: None,
            }),
        };
        let mut binding = serde_json::to_value(binding).expect("a binding serializes");
        binding["spec"]["validationActions"] = self.validation_actions(rule);
        binding["spec"]["matchResources"] = serde_json::json!({ "namespaceSelector": self.namespace_selector() });
        (serde_json::to_value(policy).expect("a policy serializes"), binding)
    }

    /// The MutatingAdmissionPolicy for R4, when the Kubernetes version has one and R4 is enforced.
    fn mutating(&self) -> Option<(Value, Value)> {
        let version = match self.target {
            Target::Cluster { settings, options } => {
                if settings.mode(RuleId::R4) == Mode::Warn {
                    return None;
                }
                options.kube_version.mutating_policy_version()?.to_owned()
            }
            Target::Helm => helm::raw("mapVersion"),
        };
        let api_version = format!("admissionregistration.k8s.io/{version}");
        let rule = RuleId::R4;
        let body = self.r4();
        let mut variables = self.setting_variables();
        variables.extend(body.variables);
        let spec = map_spec::MutatingAdmissionPolicySpec {
            // As the mutating webhook: a namespace that misses its label is caught by the reconciler.
            failure_policy: Some("Ignore".into()),
            match_constraints: Some(map_spec::MatchResources {
                resource_rules: Some(vec![map_spec::NamedRuleWithOperations {
                    api_groups: Some(vec![String::new()]),
                    api_versions: Some(vec!["v1".into()]),
                    resources: Some(vec!["namespaces".into()]),
                    operations: Some(vec!["CREATE".into()]),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            variables: Some(
                variables.into_iter().map(|(name, expression)| map_spec::Variable { name, expression }).collect(),
            ),
            mutations: Some(vec![map_spec::Mutation {
                patch_type: "ApplyConfiguration".into(),
                // An apply configuration merges one key into `labels`, and makes the map when the namespace has
                // none (where a JSON Patch `add` of `/metadata/labels/<key>` fails).
                apply_configuration: Some(map_spec::ApplyConfiguration { expression: Some(body.allowed) }),
                json_patch: None,
            }]),
            reinvocation_policy: Some("Never".into()),
            ..Default::default()
        };
        let policy = MutatingAdmissionPolicy {
            api_version: api_version.clone(),
            kind: "MutatingAdmissionPolicy",
            metadata: self.metadata(rule, &body.differences),
            spec,
        };
        let binding = MutatingAdmissionPolicyBinding {
            api_version,
            kind: "MutatingAdmissionPolicyBinding",
            metadata: ObjectMeta { name: Some(self.name(rule)), ..ObjectMeta::default() },
            spec: map_spec::MutatingAdmissionPolicyBindingSpec {
                policy_name: Some(self.name(rule)),
                match_resources: None,
                param_ref: None,
            },
        };
        let mut binding = serde_json::to_value(binding).expect("a binding serializes");
        binding["spec"]["matchResources"] = serde_json::json!({ "namespaceSelector": self.namespace_selector() });
        Some((serde_json::to_value(policy).expect("a policy serializes"), binding))
    }
}

/// MutatingAdmissionPolicy v1beta1 (1.34) and v1 (1.36) have the spec of v1alpha1, the only version k8s-openapi
/// 0.29 (`v1_33`) has; its type writes `apiVersion: admissionregistration.k8s.io/v1alpha1`, which 1.34+ does not
/// serve by default. So the spec is k8s-openapi's and the envelope ours.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MutatingAdmissionPolicy {
    api_version: String,
    kind: &'static str,
    metadata: ObjectMeta,
    spec: map_spec::MutatingAdmissionPolicySpec,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MutatingAdmissionPolicyBinding {
    api_version: String,
    kind: &'static str,
    metadata: ObjectMeta,
    spec: map_spec::MutatingAdmissionPolicyBindingSpec,
}

// === The rules, in CEL ===

/// One rule's CEL: its variables, what allows the request (or, for R4, the apply configuration), the denial.
struct RuleCel {
    resources: vap::MatchResources,
    variables: Vec<(String, String)>,
    allowed: String,
    message: String,
    /// How a request passes by an exception, for the rules that have them.
    exception: Option<ExceptionUse>,
    differences: Vec<&'static str>,
}

/// A rule that denies when `guarded` holds, unless the exception annotation on `object` is valid (R2, R3, R5).
fn unless_excepted(
    resources: vap::MatchResources,
    variables: Vec<(String, String)>,
    guarded: &str,
    message: String,
    object: &'static str,
) -> RuleCel {
    RuleCel {
        resources,
        variables,
        allowed: format!("!({guarded} && !variables.exceptionValid)"),
        message,
        exception: Some(ExceptionUse { object, used: format!("({guarded} && variables.exceptionValid)") }),
        differences: vec![DIFFERENCES[0]],
    }
}

/// When a request passes by an exception: the object that carries it, and the condition.
struct ExceptionUse {
    object: &'static str,
    used: String,
}

fn exception_audit_annotations(rule: RuleId, e: &ExceptionUse) -> Vec<vap::AuditAnnotation> {
    let a = |key: &str, value: String| vap::AuditAnnotation { key: key.into(), value_expression: value };
    let used = &e.used;
    let annotations = format!("{}.metadata.annotations", e.object);
    // An empty value leaves the annotation out (a conditional cannot mix string and null).
    vec![
        a("exception-rule", format!("{used} ? {} : ''", lit(rule.as_str()))),
        a("exception-reason", format!("{used} ? string(variables.exceptionReason) : ''")),
        a(
            "exception-expires",
            format!(
                "{used} && has({annotations}) && {expires} in {annotations} ?\n  \
                 string({annotations}[{expires}]).trim() : ''",
                expires = Setting::ExpiresKey.var()
            ),
        ),
    ]
}

fn networkpolicy_rules(operations: &[&str]) -> vap::MatchResources {
    vap::MatchResources {
        resource_rules: Some(vec![vap::NamedRuleWithOperations {
            api_groups: Some(vec!["networking.k8s.io".into()]),
            api_versions: Some(vec!["v1".into()]),
            resources: Some(vec!["networkpolicies".into()]),
            operations: Some(operations.iter().map(|o| o.to_string()).collect()),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

fn namespace_rules(operations: &[&str]) -> vap::MatchResources {
    vap::MatchResources {
        resource_rules: Some(vec![vap::NamedRuleWithOperations {
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".into()]),
            resources: Some(vec!["namespaces".into()]),
            operations: Some(operations.iter().map(|o| o.to_string()).collect()),
            ..Default::default()
        }]),
        ..Default::default()
    }
}

/// The first non-empty `metadata.<field>` of object and oldObject, else `fallback` (as the webhook reads names
/// and namespaces).
fn first_of(field: &str, fallback: &str) -> String {
    format!(
        "object != null && has(object.metadata.{field}) && object.metadata.{field} != '' ? object.metadata.{field} :\n\
         oldObject != null && has(oldObject.metadata.{field}) && oldObject.metadata.{field} != '' ? \
         oldObject.metadata.{field} :\n{fallback}"
    )
}

/// Whether `labels` (a CEL map expression that may be absent, tested with `has_labels`) match the system label.
fn system_label_matches(has_labels: &str, labels: &str) -> String {
    let l = Setting::SystemLabel.var();
    format!("size({l}) > 0 && {has_labels} && {l}[0] in {labels} &&\n  (size({l}) == 1 || {labels}[{l}[0]] == {l}[1])")
}

fn name_is_system(name: &str) -> String {
    format!(
        "{name} in {} || {}.exists(p, {name}.startsWith(p))",
        Setting::SystemNames.var(),
        Setting::SystemPrefixes.var()
    )
}

/// The exception annotations of `obj`: `exceptionSet`, `exceptionReason`, `exceptionValid` and `voidNote` (the
/// webhook's note on an exception that does not count, as far as CEL can tell: no clock, so no expiry).
fn exception_variables(obj: &str) -> Vec<(String, String)> {
    let annotations = format!("{obj}.metadata.annotations");
    let key = Setting::ExceptionKey.var();
    let expires = Setting::ExpiresKey.var();
    let empty = messages::void_note(&messages::void_empty_reason(&hole(&key)));
    let missing = messages::void_note(&messages::void_missing_reason(&hole(&key), &hole(&expires)));
    vec![
        ("exceptionSet".into(), format!("{obj} != null && has({annotations}) && {key} in {annotations}")),
        ("exceptionReason".into(), format!("variables.exceptionSet ? {annotations}[{key}] : ''")),
        ("exceptionValid".into(), "variables.exceptionSet && variables.exceptionReason.trim() != ''".into()),
        (
            "voidNote".into(),
            format!(
                "variables.exceptionSet ? (variables.exceptionValid ? '' : {}) :\n\
                 {obj} != null && has({annotations}) && {expires} in {annotations} ? {} : ''",
                concat(&empty),
                concat(&missing)
            ),
        ),
    ]
}

/// The variables of a NetworkPolicy review: its namespace and name, and whether that namespace is a system one.
fn networkpolicy_variables() -> Vec<(String, String)> {
    let ns = NS;
    let label = Setting::SystemLabel.var();
    let label_text = hole(&format!("size({label}) == 1 ? {label}[0] : {label}[0] + '=' + {label}[1]"));
    vec![
        ("policyNamespace".into(), first_of("namespace", "has(request.namespace) ? request.namespace : ''")),
        ("name".into(), first_of("name", REQUEST_NAME)),
        ("systemByName".into(), name_is_system(ns)),
        (
            "systemByLabel".into(),
            format!(
                "namespaceObject != null && ({})",
                system_label_matches("has(namespaceObject.metadata.labels)", "namespaceObject.metadata.labels")
            ),
        ),
        ("system".into(), "variables.systemByName || variables.systemByLabel".into()),
        (
            "systemWhy".into(),
            format!(
                "variables.systemByName ? {} : {}",
                concat(&messages::system_by_name(&hole(ns))),
                concat(&messages::system_by_label(&hole(ns), &label_text))
            ),
        ),
    ]
}

const NS: &str = "variables.policyNamespace";
/// `request.name`, which is absent (not empty) for a `generateName` CREATE and a collection delete's reviews.
const REQUEST_NAME: &str = "has(request.name) ? request.name : ''";
const NAME: &str = "variables.name";

impl Generator<'_> {
    /// R1: CREATE or UPDATE of a default-deny policy in a system namespace.
    fn r1(&self) -> RuleCel {
        let mut variables = networkpolicy_variables();
        variables.extend(cel::default_deny_variables("new", "object"));
        RuleCel {
            resources: networkpolicy_rules(&["CREATE", "UPDATE"]),
            variables,
            allowed: "!(variables.newDefaultDeny && variables.system)".into(),
            message: concat(&messages::r1_system_namespace(
                &hole(NS),
                &hole(NAME),
                &hole("variables.newKind"),
                &hole("variables.systemWhy"),
            )),
            exception: None,
            differences: vec![],
        }
    }

    /// R2: DELETE of a default-deny policy outside the system namespaces, without an exception or a teardown.
    fn r2(&self) -> RuleCel {
        let mut variables = networkpolicy_variables();
        variables.extend(cel::default_deny_variables("old", "oldObject"));
        variables.extend(exception_variables("oldObject"));
        variables.push((
            "teardown".into(),
            format!(
                "(namespaceObject != null && has(namespaceObject.metadata.deletionTimestamp)) ||\n\
                 request.userInfo.username in {}",
                Setting::TrustedDeleters.var()
            ),
        ));
        let hint = messages::annotate_hint(
            "networkpolicy",
            &hole(NAME),
            &hole(&format!("' -n ' + {NS}")),
            &hole(&Setting::ExceptionKey.var()),
            &hole(&Setting::ExpiresKey.var()),
        );
        let message = messages::r2_delete(
            &hole(NS),
            &hole(NAME),
            &hole("variables.oldKind"),
            &hole(&concat(&hint)),
            &hole("variables.voidNote"),
        );
        // The API server always sends oldObject on DELETE (1.15+); the webhook refuses a review without one, and so
        // does this.
        let guarded = "!variables.teardown && oldObject != null && variables.oldDefaultDeny && !variables.system";
        unless_excepted(
            networkpolicy_rules(&["DELETE"]),
            variables,
            guarded,
            format!("oldObject == null ? 'the DELETE review has no oldObject' :\n{}", concat(&message)),
            "oldObject",
        )
    }

    /// R3: an UPDATE that turns a default-deny policy into one that is not.
    fn r3(&self) -> RuleCel {
        let mut variables = networkpolicy_variables();
        variables.extend(cel::default_deny_variables("old", "oldObject"));
        variables.extend(cel::default_deny_variables("new", "object"));
        variables.extend(exception_variables("object"));
        let after =
            format!("variables.newSelectsAll ? {} : {}", lit(messages::R3_ALLOWS_ALL), lit(messages::R3_SELECTS_SOME));
        let message = messages::r3_weakening(
            &hole(NS),
            &hole(NAME),
            &hole("variables.oldKind"),
            &hole(&after),
            &hole(&Setting::ExceptionKey.var()),
            &hole(&Setting::ExpiresKey.var()),
            &hole("variables.voidNote"),
        );
        let guarded = "variables.oldDefaultDeny && !variables.newDefaultDeny && !variables.system";
        unless_excepted(networkpolicy_rules(&["UPDATE"]), variables, guarded, concat(&message), "object")
    }

    /// R5: a Namespace UPDATE that removes or changes the enable label, without an exception.
    fn r5(&self) -> RuleCel {
        let key = Setting::EnableKey.var();
        let value = Setting::EnableValue.var();
        let enabled = |o: &str| {
            format!("has({o}.metadata.labels) && {key} in {o}.metadata.labels && {o}.metadata.labels[{key}] == {value}")
        };
        let mut variables = vec![
            ("name".into(), first_of("name", REQUEST_NAME)),
            ("had".into(), enabled("oldObject")),
            ("has".into(), enabled("object")),
            (
                "system".into(),
                format!(
                    "{} ||\n{}",
                    name_is_system(NAME),
                    system_label_matches("has(object.metadata.labels)", "object.metadata.labels")
                ),
            ),
            ("terminating".into(), "has(oldObject.metadata.deletionTimestamp)".into()),
        ];
        variables.extend(exception_variables("object"));
        let label = hole(&format!("{key} + '=' + {value}"));
        let change = format!(
            "has(object.metadata.labels) && {key} in object.metadata.labels ? {} : {}",
            concat(&messages::r5_changing(&hole(&key), &hole(&format!("'\"' + object.metadata.labels[{key}] + '\"'")))),
            concat(&messages::r5_removing(&label))
        );
        let message = messages::r5_keep_label(
            &hole(NAME),
            &label,
            &hole(&change),
            &hole(&Setting::ExceptionKey.var()),
            &hole(&Setting::ExpiresKey.var()),
            &hole("variables.voidNote"),
        );
        let guarded = "variables.had && !variables.has && !variables.system && !variables.terminating";
        unless_excepted(namespace_rules(&["UPDATE"]), variables, guarded, concat(&message), "object")
    }

    /// R4: a new namespace gets the enable label, unless it is a system namespace, has an exception, or has the
    /// label already. `allowed` is the apply configuration here.
    fn r4(&self) -> RuleCel {
        let key = Setting::EnableKey.var();
        let value = Setting::EnableValue.var();
        let generate = "object.metadata.generateName";
        let mut variables = vec![
            ("name".into(), first_of("name", REQUEST_NAME)),
            (
                "system".into(),
                format!(
                    "(variables.name == '' ?\n  has({generate}) && {generate} != '' && {prefixes}.exists(p, \
                     {generate}.startsWith(p)) :\n  {by_name}) ||\n{by_label}",
                    prefixes = Setting::SystemPrefixes.var(),
                    by_name = name_is_system(NAME),
                    by_label = system_label_matches("has(object.metadata.labels)", "object.metadata.labels"),
                ),
            ),
            (
                "labelled".into(),
                format!(
                    "has(object.metadata.labels) && {key} in object.metadata.labels && \
                     object.metadata.labels[{key}] == {value}"
                ),
            ),
        ];
        // The note on an exception that does not count is a warning, which a MutatingAdmissionPolicy cannot give.
        variables.extend(exception_variables("object").into_iter().filter(|(name, _)| name != "voidNote"));
        variables.push(("skip".into(), "variables.system || variables.exceptionValid || variables.labelled".into()));
        RuleCel {
            resources: namespace_rules(&["CREATE"]),
            variables,
            allowed: format!(
                "variables.skip ? Object{{}} :\nObject{{metadata: Object.metadata{{labels: {{{key}: {value}}}}}}}"
            ),
            message: String::new(),
            exception: None,
            differences: vec![DIFFERENCES[0], DIFFERENCES[1]],
        }
    }
}

#[cfg(test)]
mod tests;
