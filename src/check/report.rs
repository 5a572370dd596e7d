//! `check`'s report: what was judged, skipped or unreadable, as text for people and JSON for machines.

use std::fmt;
use std::io::{self, Write};

use k8s_openapi::Resource;
use k8s_openapi::api::core::v1::Namespace as NamespaceKind;
use k8s_openapi::api::networking::v1::NetworkPolicy as NetworkPolicyKind;
use serde::Serialize;

use super::input::InputError;
use super::{EXIT_CLEAN, EXIT_UNREADABLE, EXIT_VIOLATION};
use crate::rules::{Decision, RuleId, Verdict};

// === What was found ===

/// Where a manifest is: its file, its document there, and its index in a `List`'s `items`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Place {
    pub file: String,
    /// 1-based, counting the documents the parser yields: empty documents (a lone `---`, a Helm template that
    /// rendered to nothing) are not counted.
    pub document: usize,
    /// 0-based index in the `items` of a `List` document.
    pub item: Option<usize>,
    /// 1-based line where the document starts (for an item, where its `List` starts).
    pub line: Option<usize>,
}

impl fmt::Display for Place {
    /// `file:document` or `file:document.items[i]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.document)?;
        match self.item {
            Some(i) => write!(f, ".items[{i}]"),
            None => Ok(()),
        }
    }
}

/// The kinds the rules judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    NetworkPolicy,
    Namespace,
}

impl ObjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::NetworkPolicy => NetworkPolicyKind::KIND,
            ObjectKind::Namespace => NamespaceKind::KIND,
        }
    }
}

/// One object, judged.
#[derive(Debug, Clone)]
pub struct JudgedObject {
    pub place: Place,
    pub kind: ObjectKind,
    /// The policy's namespace (its own, else `--namespace`); none for a Namespace.
    pub namespace: Option<String>,
    pub name: String,
    /// The policy has no `metadata.namespace`, so it was judged in `--namespace`.
    pub namespace_from_flag: bool,
    /// What kind of default-deny policy it is (`deny-all (Ingress)`), if it is one.
    pub default_deny: Option<String>,
    pub decision: Decision,
}

impl JudgedObject {
    /// What a person reads first: `NetworkPolicy ns/name` or `Namespace name`.
    fn object(&self) -> String {
        match &self.namespace {
            Some(ns) if self.namespace_from_flag => {
                format!("{} {ns}/{} (namespace from --namespace)", self.kind.as_str(), self.name)
            }
            Some(ns) => format!("{} {ns}/{}", self.kind.as_str(), self.name),
            None => format!("{} {}", self.kind.as_str(), self.name),
        }
    }

    /// The rule and how it decided: a bare `R1` for a denial; the other outcomes name themselves (`R1 (warn)`,
    /// `R4 (patch)`).
    fn outcome(&self) -> String {
        let d = &self.decision;
        match (d.verdict, d.rule) {
            (Verdict::Deny, Some(rule)) => rule.to_string(),
            (verdict, Some(rule)) => format!("{rule} ({})", verdict.as_str()),
            (verdict, None) => verdict.as_str().to_owned(),
        }
    }

    /// Reported in text without `--verbose`: every violation, warning and label, and every Namespace, since
    /// whether a new namespace gets the label is what a reader of its manifest wants to know.
    fn is_finding(&self) -> bool {
        self.decision.verdict != Verdict::Allow || self.kind == ObjectKind::Namespace
    }

    pub(super) fn text(&self) -> String {
        let mut line = format!("{}: {}: {}: {}", self.place, self.object(), self.outcome(), self.decision.message);
        // What kind of default-deny policy an allowed one is; the message already says when it is none.
        if let (Verdict::Allow, Some(kind)) = (self.decision.verdict, &self.default_deny) {
            line.push_str(&format!(" [{kind}]"));
        }
        line
    }

    fn to_out(&self) -> ResultOut<'_> {
        let d = &self.decision;
        ResultOut {
            place: &self.place,
            kind: self.kind.as_str(),
            namespace: self.namespace.as_deref(),
            name: &self.name,
            namespace_from_flag: self.namespace_from_flag,
            default_deny: self.default_deny.as_deref(),
            verdict: d.verdict.as_str(),
            allowed: d.allowed(),
            rule: d.rule.map(RuleId::as_str),
            message: &d.message,
            warnings: &d.warnings,
            set_label: d.set_label.as_ref().map(|l| format!("{}={}", l.key, l.value)),
        }
    }
}

/// A document that is not a NetworkPolicy (`networking.k8s.io/v1`) or a Namespace (`v1`).
#[derive(Debug, Clone)]
pub struct Skipped {
    pub place: Place,
    pub api_version: String,
    pub kind: String,
}

/// Something the reader must know about how the input was read, though nothing in it is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Note {
    pub file: String,
    pub message: String,
}

/// Everything one run found.
#[derive(Debug, Default)]
pub struct Report {
    /// Files read, stdin included.
    pub files: usize,
    /// Documents parsed (a `List` is one).
    pub documents: usize,
    pub judged: Vec<JudgedObject>,
    pub skipped: Vec<Skipped>,
    pub errors: Vec<InputError>,
    pub notes: Vec<Note>,
}

impl Report {
    fn count(&self, pred: impl Fn(&JudgedObject) -> bool) -> usize {
        self.judged.iter().filter(|j| pred(j)).count()
    }

    /// Denials of rules in enforce mode: what fails the build.
    pub fn violations(&self) -> usize {
        self.count(|j| j.decision.verdict == Verdict::Deny)
    }

    /// 2 when some input was not checked, else 1 on a violation, else 0 (warnings allowed).
    pub fn exit_code(&self) -> u8 {
        if !self.errors.is_empty() {
            EXIT_UNREADABLE
        } else if self.violations() > 0 {
            EXIT_VIOLATION
        } else {
            EXIT_CLEAN
        }
    }

    pub fn summary(&self) -> String {
        let n = |count: usize, one: &str, many: &str| format!("{count} {}", if count == 1 { one } else { many });
        let policies = self.count(|j| j.kind == ObjectKind::NetworkPolicy);
        let namespaces = self.count(|j| j.kind == ObjectKind::Namespace);
        let mut s = format!(
            "{} ({}): {} and {} judged, {} skipped; {}, {}, {}, {}",
            n(self.files, "file", "files"),
            n(self.documents, "document", "documents"),
            n(policies, "NetworkPolicy", "NetworkPolicies"),
            n(namespaces, "Namespace", "Namespaces"),
            n(self.skipped.len(), "other object", "other objects"),
            n(self.violations(), "violation", "violations"),
            n(self.count(|j| j.decision.verdict == Verdict::Warn), "warning", "warnings"),
            n(self.count(|j| j.decision.verdict == Verdict::Patch), "namespace to label", "namespaces to label"),
            n(self.errors.len(), "unreadable input", "unreadable inputs"),
        );
        if self.files == 0 && !self.errors.is_empty() {
            // The cause (`No such file or directory`) is in the error above; guessing at extensions would hide it.
            s.push_str(" (nothing was checked)");
        } else if self.files == 0 {
            s.push_str(" (no .yaml, .yml or .json file found: nothing was checked)");
        } else if self.documents == 0 && self.errors.is_empty() {
            // An empty stdin is what a failing `helm template` in a pipe without `pipefail` leaves.
            s.push_str(" (no document found: nothing was checked)");
        }
        s
    }

    /// Findings on `out`, one per line, then the summary; unreadable input on `err`, as `file:line:column:`, and
    /// notes as `file: warning: ...`.
    pub fn write_text(&self, out: &mut dyn Write, err: &mut dyn Write, verbose: bool) -> io::Result<()> {
        for j in self.judged.iter().filter(|j| verbose || j.is_finding()) {
            writeln!(out, "{}", j.text())?;
        }
        for e in &self.errors {
            writeln!(err, "{e}")?;
        }
        for n in &self.notes {
            writeln!(err, "{}: warning: {}", n.file, n.message)?;
        }
        writeln!(out, "{}", self.summary())
    }

    /// One JSON document: `summary`, `results` (every judged object), `skipped` and `errors`.
    pub fn json(&self) -> String {
        let out = ReportOut {
            summary: SummaryOut {
                exit_code: self.exit_code(),
                text: self.summary(),
                files: self.files,
                documents: self.documents,
                network_policies: self.count(|j| j.kind == ObjectKind::NetworkPolicy),
                namespaces: self.count(|j| j.kind == ObjectKind::Namespace),
                skipped: self.skipped.len(),
                violations: self.violations(),
                warnings: self.count(|j| j.decision.verdict == Verdict::Warn),
                labels: self.count(|j| j.decision.verdict == Verdict::Patch),
                errors: self.errors.len(),
            },
            results: self.judged.iter().map(JudgedObject::to_out).collect(),
            skipped: self
                .skipped
                .iter()
                .map(|s| SkippedOut { place: &s.place, api_version: &s.api_version, kind: &s.kind })
                .collect(),
            errors: self.errors.iter().map(InputError::to_out).collect(),
            notes: &self.notes,
        };
        serde_json::to_string_pretty(&out).expect("a report always serializes")
    }
}

// === JSON output ===
// Structs rather than `json!`, whose maps sort their keys: a person reading the document finds the summary first
// and each result's place before its verdict.

#[derive(Serialize)]
struct ReportOut<'a> {
    summary: SummaryOut,
    results: Vec<ResultOut<'a>>,
    skipped: Vec<SkippedOut<'a>>,
    errors: Vec<ErrorOut<'a>>,
    notes: &'a [Note],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SummaryOut {
    exit_code: u8,
    text: String,
    files: usize,
    documents: usize,
    network_policies: usize,
    namespaces: usize,
    skipped: usize,
    violations: usize,
    warnings: usize,
    labels: usize,
    errors: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResultOut<'a> {
    #[serde(flatten)]
    place: &'a Place,
    kind: &'static str,
    namespace: Option<&'a str>,
    name: &'a str,
    namespace_from_flag: bool,
    default_deny: Option<&'a str>,
    verdict: &'static str,
    allowed: bool,
    rule: Option<&'static str>,
    message: &'a str,
    warnings: &'a [String],
    set_label: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SkippedOut<'a> {
    #[serde(flatten)]
    place: &'a Place,
    api_version: &'a str,
    kind: &'a str,
}

#[derive(Serialize)]
struct ErrorOut<'a> {
    file: &'a str,
    line: Option<usize>,
    column: Option<usize>,
    document: Option<usize>,
    item: Option<usize>,
    message: String,
}

impl InputError {
    fn to_out(&self) -> ErrorOut<'_> {
        let (file, line, column, document, item, message) = match self {
            InputError::Read { file, source } => (file, None, None, None, None, source.to_string()),
            InputError::NotUtf8 { file } => (file, None, None, None, None, "not UTF-8 text".to_owned()),
            InputError::Syntax { file, line, column, message } => (file, *line, *column, None, None, message.clone()),
            InputError::Object { place, .. } | InputError::NotAList { place, .. } => {
                let message = self.to_string();
                let at = format!("{}: ", super::input::document_position(place));
                let message = message.strip_prefix(&at).unwrap_or(&message).to_owned();
                (&place.file, place.line, None, Some(place.document), place.item, message)
            }
        };
        ErrorOut { file, line, column, document, item, message }
    }
}
