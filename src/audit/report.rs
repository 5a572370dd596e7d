//! The audit as PolicyReports, the format that Kyverno, Policy Reporter's UI and `kubectl get policyreport -A`
//! read: `wgpolicyk8s.io/v1alpha2` PolicyReport and ClusterPolicyReport, and the same content as `openreports.io/v1alpha1`
//! Report and ClusterReport.
//!
//! - one PolicyReport `default-deny-guard` in each namespace with a finding, its results the findings about that
//!   namespace and its policies;
//! - one ClusterPolicyReport `default-deny-guard`: the cluster-wide summary, one result per check (R1, coverage,
//!   exceptions) that names the objects concerned.
//!
//! kube's `CustomResource` derive wraps a type's fields in `spec`; a report keeps them at the root, so [`Report`]
//! implements `kube::Resource` itself, for the four kinds at once (the dynamic type says which), and [`crds`] builds
//! the CustomResourceDefinitions from its schema with the rewrite the derive uses.

use std::borrow::Cow;
use std::collections::BTreeMap;

use jiff::Timestamp;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceColumnDefinition, CustomResourceDefinition, CustomResourceDefinitionNames,
    CustomResourceDefinitionSpec, CustomResourceDefinitionVersion, CustomResourceValidation, JSONSchemaProps,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::DynamicResourceScope;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Audit, Check, ExceptionState, Finding, Outcome, Severity, Subject};
use crate::ownership;

/// The name of every report the reconciler writes, and its `source`.
pub const SOURCE: &str = ownership::MANAGER;
/// At most this many objects are named in one summary result; the message gives the count.
const SUMMARY_RESOURCES: usize = 50;

/// Which report API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReportApi {
    /// `wgpolicyk8s.io/v1alpha2` PolicyReport and ClusterPolicyReport.
    WgPolicy,
    /// `openreports.io/v1alpha1` Report and ClusterReport.
    OpenReports,
}

impl ReportApi {
    pub const ALL: [ReportApi; 2] = [ReportApi::WgPolicy, ReportApi::OpenReports];

    pub fn group(self) -> &'static str {
        match self {
            ReportApi::WgPolicy => "wgpolicyk8s.io",
            ReportApi::OpenReports => "openreports.io",
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            ReportApi::WgPolicy => "v1alpha2",
            ReportApi::OpenReports => "v1alpha1",
        }
    }

    pub fn group_version(self) -> String {
        format!("{}/{}", self.group(), self.version())
    }

    pub fn namespaced(self) -> ReportType {
        ReportType { api: self, cluster: false }
    }

    pub fn cluster(self) -> ReportType {
        ReportType { api: self, cluster: true }
    }
}

impl std::str::FromStr for ReportApi {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        ReportApi::ALL
            .into_iter()
            .find(|a| a.group() == s.trim())
            .ok_or_else(|| format!("unknown report API {s:?}: expected wgpolicyk8s.io or openreports.io"))
    }
}

/// One of the four report kinds: the dynamic type of [`Report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReportType {
    pub api: ReportApi,
    pub cluster: bool,
}

impl ReportType {
    pub fn kind(self) -> &'static str {
        match (self.api, self.cluster) {
            (ReportApi::WgPolicy, false) => "PolicyReport",
            (ReportApi::WgPolicy, true) => "ClusterPolicyReport",
            (ReportApi::OpenReports, false) => "Report",
            (ReportApi::OpenReports, true) => "ClusterReport",
        }
    }

    pub fn plural(self) -> &'static str {
        match (self.api, self.cluster) {
            (ReportApi::WgPolicy, false) => "policyreports",
            (ReportApi::WgPolicy, true) => "clusterpolicyreports",
            (ReportApi::OpenReports, false) => "reports",
            (ReportApi::OpenReports, true) => "clusterreports",
        }
    }

    fn short_name(self) -> &'static str {
        match (self.api, self.cluster) {
            (ReportApi::WgPolicy, false) => "polr",
            (ReportApi::WgPolicy, true) => "cpolr",
            (ReportApi::OpenReports, false) => "reps",
            (ReportApi::OpenReports, true) => "creps",
        }
    }
}

/// A report of any of the four kinds. Only what the reconciler writes is modelled; the CRDs of Kyverno and Policy
/// Reporter accept it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(description = "Results of default-deny-guard's audit of existing NetworkPolicies and namespaces")]
pub struct Report {
    pub api_version: String,
    pub kind: String,
    #[schemars(schema_with = "object_schema")]
    pub metadata: ObjectMeta,
    /// Counts of the results by outcome.
    #[serde(default)]
    pub summary: Summary,
    #[serde(default)]
    pub results: Vec<ReportResult>,
}

fn object_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "type": "object" })
}

/// The counts of a report's results.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Summary {
    #[serde(default)]
    pub pass: u32,
    #[serde(default)]
    pub fail: u32,
    #[serde(default)]
    pub warn: u32,
    #[serde(default)]
    pub error: u32,
    #[serde(default)]
    pub skip: u32,
}

/// One result: a rule's verdict on some objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportResult {
    pub source: String,
    pub policy: String,
    pub rule: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<String>,
    /// pass, fail, warn, error or skip.
    pub result: String,
    #[serde(default)]
    pub scored: bool,
    pub timestamp: ResultTimestamp,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<ResourceRef>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// When a result was first seen, as the report APIs write it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ResultTimestamp {
    pub seconds: i64,
    #[serde(default)]
    pub nanos: i32,
}

impl From<Timestamp> for ResultTimestamp {
    fn from(t: Timestamp) -> Self {
        ResultTimestamp { seconds: t.as_second(), nanos: 0 }
    }
}

/// The object a result is about (an ObjectReference's fields that reports use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRef {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl From<&Subject> for ResourceRef {
    fn from(s: &Subject) -> Self {
        ResourceRef {
            api_version: s.kind.api_version().into(),
            kind: s.kind.as_str().into(),
            name: s.name.clone(),
            namespace: s.object_namespace().map(str::to_owned),
            uid: s.uid.clone(),
        }
    }
}

impl kube::Resource for Report {
    type DynamicType = ReportType;
    type Scope = DynamicResourceScope;

    fn kind(t: &ReportType) -> Cow<'_, str> {
        t.kind().into()
    }
    fn group(t: &ReportType) -> Cow<'_, str> {
        t.api.group().into()
    }
    fn version(t: &ReportType) -> Cow<'_, str> {
        t.api.version().into()
    }
    fn plural(t: &ReportType) -> Cow<'_, str> {
        t.plural().into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Report {
    /// The metadata the reconciler writes on a report in `namespace` (`None`: the cluster report): its name and
    /// the managed-by label, nothing else (so that a listed report compares equal to the one it would write).
    pub fn metadata(namespace: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some(SOURCE.into()),
            namespace: namespace.map(str::to_owned),
            labels: Some(ownership::managed_labels()),
            ..ObjectMeta::default()
        }
    }

    fn new(t: ReportType, namespace: Option<&str>, results: Vec<ReportResult>) -> Report {
        let mut summary = Summary::default();
        for r in &results {
            match r.result.as_str() {
                "pass" => summary.pass += 1,
                "fail" => summary.fail += 1,
                "warn" => summary.warn += 1,
                "skip" => summary.skip += 1,
                _ => summary.error += 1,
            }
        }
        Report {
            api_version: t.api.group_version(),
            kind: t.kind().into(),
            metadata: Report::metadata(namespace),
            summary,
            results,
        }
    }

    /// The namespace of a PolicyReport; `None` for the cluster report.
    pub fn namespace(&self) -> Option<&str> {
        self.metadata.namespace.as_deref()
    }
}

fn category(check: Check) -> &'static str {
    match check {
        Check::SystemNamespace | Check::Coverage => "Network Policy",
        Check::Exception => "Exceptions",
    }
}

fn result(finding: &Finding, first_seen: Timestamp) -> ReportResult {
    let mut properties = BTreeMap::new();
    if let Some(e) = &finding.exception {
        properties.insert("exception-state".into(), e.state.as_str().into());
        properties.insert("exception-reason".into(), e.reason.clone());
        if let Some(x) = &e.expires {
            properties.insert("exception-expires".into(), x.clone());
        }
    }
    ReportResult {
        source: SOURCE.into(),
        policy: SOURCE.into(),
        rule: finding.check.as_str().into(),
        category: Some(category(finding.check).into()),
        severity: Some(finding.severity.as_str().into()),
        result: finding.outcome.as_str().into(),
        scored: true,
        timestamp: first_seen.into(),
        message: finding.message.clone(),
        resources: vec![ResourceRef::from(&finding.subject)],
        properties,
    }
}

/// The reports of `audit` in API `api`: one per namespace with a finding, sorted by namespace, then the cluster
/// report. `first_seen` gives each result's timestamp from its key (a finding's [`Finding::key`], or a summary's
/// `cluster/<rule>/<result>`), so that a report changes only when its findings do.
pub fn reports(audit: &Audit, api: ReportApi, first_seen: impl Fn(&str) -> Timestamp) -> Vec<Report> {
    let mut by_namespace: BTreeMap<&str, Vec<ReportResult>> = BTreeMap::new();
    for f in &audit.findings {
        by_namespace.entry(f.subject.namespace.as_str()).or_default().push(result(f, first_seen(&f.key())));
    }
    let mut out: Vec<Report> =
        by_namespace.into_iter().map(|(ns, results)| Report::new(api.namespaced(), Some(ns), results)).collect();
    out.push(Report::new(api.cluster(), None, summary_results(audit, &first_seen)));
    out
}

/// The cluster report's results: one per check.
fn summary_results(audit: &Audit, first_seen: &impl Fn(&str) -> Timestamp) -> Vec<ReportResult> {
    let of = |check: Check| audit.findings.iter().filter(move |f| f.check == check);
    let mut out = Vec::new();
    let c = audit.coverage;
    let r1: Vec<&Finding> = of(Check::SystemNamespace).collect();
    let uncovered: Vec<&Finding> = of(Check::Coverage).collect();
    let exceptions: Vec<&Finding> = of(Check::Exception).collect();
    let attention = exceptions.iter().filter(|f| f.outcome != Outcome::Skip).count();
    let rows = [
        (
            Check::SystemNamespace,
            if r1.is_empty() { "pass" } else { "fail" },
            Severity::Critical,
            if r1.is_empty() {
                "no default-deny NetworkPolicy in a system namespace".to_owned()
            } else {
                match r1.len() {
                    1 => "1 default-deny NetworkPolicy in a system namespace: it may be cutting the cluster's own \
                          traffic (DNS, API server) now"
                        .to_owned(),
                    n => format!(
                        "{n} default-deny NetworkPolicies in system namespaces: they may be cutting the cluster's \
                         own traffic (DNS, API server) now"
                    ),
                }
            },
            r1,
        ),
        (
            Check::Coverage,
            if uncovered.is_empty() { "pass" } else { "fail" },
            Severity::High,
            format!(
                "{} of {} application namespaces have a default-deny NetworkPolicy in force ({} uncovered, {} exempt)",
                c.covered,
                c.covered + c.uncovered,
                c.uncovered,
                c.exempt
            ),
            uncovered,
        ),
        (
            Check::Exception,
            match (exceptions.is_empty(), attention) {
                (true, _) => "pass",
                (false, 0) => "skip",
                _ => "warn",
            },
            if attention == 0 { Severity::Info } else { Severity::Medium },
            format!(
                "{} exceptions in use: {} valid, {} expiring, {} expired, {} invalid",
                exceptions.len(),
                audit.exceptions(ExceptionState::Valid),
                audit.exceptions(ExceptionState::Expiring),
                audit.exceptions(ExceptionState::Expired),
                audit.exceptions(ExceptionState::Invalid)
            ),
            exceptions,
        ),
    ];
    for (check, result, severity, mut message, findings) in rows {
        if findings.len() > SUMMARY_RESOURCES {
            message.push_str(&format!(" (the first {SUMMARY_RESOURCES} are named)"));
        }
        out.push(ReportResult {
            source: SOURCE.into(),
            policy: SOURCE.into(),
            rule: check.as_str().into(),
            category: Some(category(check).into()),
            severity: Some(severity.as_str().into()),
            result: result.into(),
            scored: true,
            timestamp: first_seen(&format!("cluster/{check}/{result}")).into(),
            message,
            resources: findings.iter().take(SUMMARY_RESOURCES).map(|f| ResourceRef::from(&f.subject)).collect(),
            properties: BTreeMap::new(),
        });
    }
    out
}

/// The CustomResourceDefinitions of `api`'s two kinds, from [`Report`]'s schema, for clusters that do not have them
/// from Kyverno or Policy Reporter (`default-deny-guard crds`).
pub fn crds(api: ReportApi) -> Vec<CustomResourceDefinition> {
    let generator = schemars::generate::SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .with_transform(kube_core::schema::StructuralSchemaRewriter)
        .into_generator();
    let mut schema = serde_json::to_value(generator.into_root_schema_for::<Report>()).expect("a schema is JSON");
    if let Some(o) = schema.as_object_mut() {
        o.remove("title");
        o.remove("$schema");
    }
    let schema: JSONSchemaProps = serde_json::from_value(schema).expect("schemars writes an OpenAPI v3 schema");
    let column = |name: &str, path: &str, type_: &str| CustomResourceColumnDefinition {
        name: name.into(),
        json_path: path.into(),
        type_: type_.into(),
        ..CustomResourceColumnDefinition::default()
    };
    [api.namespaced(), api.cluster()]
        .into_iter()
        .map(|t| CustomResourceDefinition {
            metadata: ObjectMeta { name: Some(format!("{}.{}", t.plural(), api.group())), ..ObjectMeta::default() },
            spec: CustomResourceDefinitionSpec {
                group: api.group().into(),
                names: CustomResourceDefinitionNames {
                    kind: t.kind().into(),
                    list_kind: Some(format!("{}List", t.kind())),
                    plural: t.plural().into(),
                    singular: Some(t.kind().to_lowercase()),
                    short_names: Some(vec![t.short_name().into()]),
                    ..CustomResourceDefinitionNames::default()
                },
                scope: if t.cluster { "Cluster" } else { "Namespaced" }.into(),
                versions: vec![CustomResourceDefinitionVersion {
                    name: api.version().into(),
                    served: true,
                    storage: true,
                    schema: Some(CustomResourceValidation { open_api_v3_schema: Some(schema.clone()) }),
                    additional_printer_columns: Some(vec![
                        column("Pass", ".summary.pass", "integer"),
                        column("Fail", ".summary.fail", "integer"),
                        column("Warn", ".summary.warn", "integer"),
                        column("Error", ".summary.error", "integer"),
                        column("Skip", ".summary.skip", "integer"),
                        column("Age", ".metadata.creationTimestamp", "date"),
                    ]),
                    ..CustomResourceDefinitionVersion::default()
                }],
                ..CustomResourceDefinitionSpec::default()
            },
            status: None,
        })
        .collect()
}
