//! `check`: the webhook's rules, offline, over manifest files, directories and stdin, for GitOps CI
//! (docs/design.md section 5).
//!
//! Each NetworkPolicy and Namespace is judged as the CREATE that `kubectl apply` would send, by the very functions
//! `serve` calls ([`Settings::judge_network_policy`], [`Settings::judge_namespace_create`]), knowing nothing of the
//! cluster ([`NamespaceFacts::default`]); so the verdicts are the webhook's, word for word. What this module adds is
//! the reading: files and directories, multi-document YAML, JSON streams, `List` kinds, and the report.
//!
//! ```no_run
//! use default_deny_guard::check::Checker;
//! use default_deny_guard::rules::Settings;
//!
//! let checker = Checker::new(Settings::default(), "default".into(), jiff::Timestamp::now());
//! let report = checker.check_paths(&["overlays/prod".into()], &mut std::io::stdin());
//! std::process::exit(report.exit_code().into());
//! ```

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace as NamespaceKind;
use k8s_openapi::api::networking::v1::NetworkPolicy as NetworkPolicyKind;
use k8s_openapi::{ListableResource, Resource};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_saphyr::MessageFormatter as _;

use crate::cli::{CheckArgs, OutputFormat};
use crate::rules::{Decision, Namespace, NamespaceFacts, NetworkPolicy, Operation, Request, RuleId, Settings, Verdict};

/// Exit statuses, as CI reads them.
pub const EXIT_CLEAN: u8 = 0;
pub const EXIT_VIOLATION: u8 = 1;
pub const EXIT_UNREADABLE: u8 = 2;

/// How stdin is named in findings.
pub const STDIN_NAME: &str = "<stdin>";

// === Errors ===

/// Input that cannot be checked. Collected rather than fatal, so that one run reports every broken file; any of
/// them makes the exit status 2, since a manifest that was not read was not checked either.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{file}: {source}")]
    Read { file: String, source: io::Error },
    #[error("{file}: not UTF-8 text, as YAML and JSON manifests are")]
    NotUtf8 { file: String },
    #[error("{}: {message}", position(.file, *.line, *.column))]
    Syntax { file: String, line: Option<usize>, column: Option<usize>, message: String },
    /// A document of a kind the rules judge that is not a valid object of that kind: `serve` would deny it
    /// (fail closed), and the API server would reject it anyway.
    #[error("{}: {object} cannot be read as a {kind}: {message}", document_position(.place))]
    Object { place: Box<Place>, kind: &'static str, object: String, message: String },
    #[error("{}: a {kind} whose `items` is not a list", document_position(.place))]
    NotAList { place: Box<Place>, kind: String },
}

/// Where an unreadable document is: `file:line` of its start, where editors and CI problem matchers look, then
/// which document (and item) of the file it is. The bad field's own line is not known (the document is read as
/// a whole), so its path is in the message instead (`spec.ingress: invalid type ...`).
fn document_position(place: &Place) -> String {
    let at = position(&place.file, place.line, None);
    match place.item {
        Some(i) => format!("{at}: document {}, items[{i}]", place.document),
        None => format!("{at}: document {}", place.document),
    }
}

fn position(file: &str, line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}"),
        (Some(l), None) => format!("{file}:{l}"),
        _ => file.to_owned(),
    }
}

impl InputError {
    fn to_out(&self) -> ErrorOut<'_> {
        let (file, line, column, document, item, message) = match self {
            InputError::Read { file, source } => (file, None, None, None, None, source.to_string()),
            InputError::NotUtf8 { file } => (file, None, None, None, None, "not UTF-8 text".to_owned()),
            InputError::Syntax { file, line, column, message } => (file, *line, *column, None, None, message.clone()),
            InputError::Object { place, .. } | InputError::NotAList { place, .. } => {
                let message = self.to_string();
                let at = format!("{}: ", document_position(place));
                let message = message.strip_prefix(&at).unwrap_or(&message).to_owned();
                (&place.file, place.line, None, Some(place.document), place.item, message)
            }
        };
        ErrorOut { file, line, column, document, item, message }
    }
}

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
pub struct Judged {
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

impl Judged {
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

    fn text(&self) -> String {
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
    pub judged: Vec<Judged>,
    pub skipped: Vec<Skipped>,
    pub errors: Vec<InputError>,
    pub notes: Vec<Note>,
}

impl Report {
    fn count(&self, pred: impl Fn(&Judged) -> bool) -> usize {
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
            results: self.judged.iter().map(Judged::to_out).collect(),
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

// === The command ===

/// `default-deny-guard check`: prints the report and returns the exit status.
pub fn run(args: &CheckArgs) -> ExitCode {
    let settings = match args.rules.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("default-deny-guard check: {e}");
            return ExitCode::from(EXIT_UNREADABLE);
        }
    };
    let checker = Checker::new(settings, args.namespace.clone(), Timestamp::now());
    let report = checker.check_paths(&args.paths, &mut io::stdin().lock());
    let (mut out, mut err) = (io::stdout().lock(), io::stderr().lock());
    // A closed pipe (`check ... | head`) is the reader's choice; the exit status still tells the verdict.
    let _ = match args.output {
        OutputFormat::Text => report.write_text(&mut out, &mut err, args.verbose),
        OutputFormat::Json => writeln!(out, "{}", report.json()),
    };
    let _ = out.flush();
    ExitCode::from(report.exit_code())
}

/// How a file's text is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// By extension; otherwise (stdin, a file named on the command line) by the first character, since `kubectl
    /// get -o json` output starts with `{` and a JSON stream is not YAML.
    pub fn of(path: Option<&Path>, text: &str) -> Format {
        match path.and_then(Path::extension).and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("json") => Format::Json,
            Some("yaml" | "yml") => Format::Yaml,
            _ if text.trim_start().starts_with(['{', '[']) => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// The rules' configuration, and where a namespace-less policy goes.
#[derive(Debug, Clone)]
pub struct Checker {
    settings: Settings,
    /// The namespace of a policy without `metadata.namespace` (`--namespace`).
    namespace: String,
    /// Exceptions are judged against this time.
    now: Timestamp,
}

impl Checker {
    pub fn new(settings: Settings, namespace: String, now: Timestamp) -> Checker {
        Checker { settings, namespace, now }
    }

    /// Checks files, directories (recursively) and `-` (read from `stdin`), in the order given.
    pub fn check_paths(&self, paths: &[PathBuf], stdin: &mut dyn Read) -> Report {
        let mut report = Report::default();
        for path in paths {
            if path.as_os_str() == "-" {
                let mut bytes = Vec::new();
                match stdin.read_to_end(&mut bytes) {
                    Ok(_) => self.check_bytes(STDIN_NAME, None, bytes, &mut report),
                    Err(source) => report.errors.push(InputError::Read { file: STDIN_NAME.into(), source }),
                }
                continue;
            }
            let mut files = Vec::new();
            match fs::metadata(path) {
                Ok(m) if m.is_dir() => walk(path, &mut files, &mut report.errors),
                // Named on the command line: checked whatever its extension.
                Ok(_) => files.push(path.clone()),
                Err(source) => report.errors.push(InputError::Read { file: path.display().to_string(), source }),
            }
            for file in files {
                let name = file.display().to_string();
                if is_kustomization(&file) {
                    report.notes.push(kustomization_note(&file));
                }
                match fs::read(&file) {
                    Ok(bytes) => self.check_bytes(&name, Some(&file), bytes, &mut report),
                    Err(source) => report.errors.push(InputError::Read { file: name, source }),
                }
            }
        }
        report
    }

    fn check_bytes(&self, name: &str, path: Option<&Path>, bytes: Vec<u8>, report: &mut Report) {
        report.files += 1;
        match String::from_utf8(bytes) {
            Ok(text) => {
                let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
                self.check_text(name, text, Format::of(path, text), report);
            }
            Err(_) => report.errors.push(InputError::NotUtf8 { file: name.into() }),
        }
    }

    /// Checks one file's text. A syntax error anywhere in it makes the whole file unreadable: the parser reads
    /// the file as one stream, and the file must be fixed before it can be deployed anyway.
    pub fn check_text(&self, file: &str, text: &str, format: Format, report: &mut Report) {
        let documents = match format {
            Format::Yaml => yaml_documents(text).map_err(|e| yaml_error(file, text, &e)),
            Format::Json => json_documents(text).map_err(|e| json_error(file, &e)),
        };
        let documents = match documents {
            Ok(d) => d,
            Err(e) => return report.errors.push(e),
        };
        for (i, (line, value)) in documents.into_iter().enumerate() {
            report.documents += 1;
            let place = Place { file: file.to_owned(), document: i + 1, item: None, line };
            self.check_document(place, value, report);
        }
    }

    /// A document: a `List` is unpacked (one level, as `kubectl get -o yaml` writes them), anything else judged
    /// or skipped.
    fn check_document(&self, place: Place, mut value: Value, report: &mut Report) {
        let (api_version, kind) = type_of(&value);
        let Some(items_are) = ListItems::of(api_version, kind) else {
            return self.judge(place, value, report);
        };
        let kind = kind.to_owned();
        let items = match value.get_mut("items").map(Value::take) {
            Some(Value::Array(items)) => items,
            None | Some(Value::Null) => Vec::new(),
            Some(_) => return report.errors.push(InputError::NotAList { place: Box::new(place), kind }),
        };
        for (i, mut item) in items.into_iter().enumerate() {
            if let (ListItems::Typed { api_version, kind }, Some(fields)) = (items_are, item.as_object_mut()) {
                fields.entry("apiVersion").or_insert_with(|| api_version.into());
                fields.entry("kind").or_insert_with(|| kind.into());
            }
            self.judge(Place { item: Some(i), ..place.clone() }, item, report);
        }
    }

    fn judge(&self, place: Place, value: Value, report: &mut Report) {
        let (api_version, kind) = type_of(&value);
        if is::<NetworkPolicyKind>(api_version, kind) {
            match read::<NetworkPolicy>(&place, ObjectKind::NetworkPolicy, value) {
                Ok(policy) => report.judged.push(self.judge_policy(place, &policy)),
                Err(e) => report.errors.push(e),
            }
        } else if is::<NamespaceKind>(api_version, kind) {
            match read::<Namespace>(&place, ObjectKind::Namespace, value) {
                Ok(ns) => report.judged.push(self.judge_namespace(place, &ns)),
                Err(e) => report.errors.push(e),
            }
        } else {
            // A NetworkPolicy of another apiVersion lands here too: the webhook is registered for v1 only.
            let (api_version, kind) = (api_version.to_owned(), kind.to_owned());
            report.skipped.push(Skipped { place, api_version, kind });
        }
    }

    /// The CREATE that `kubectl apply` sends for a new policy.
    pub fn judge_policy(&self, place: Place, policy: &NetworkPolicy) -> Judged {
        let meta = &policy.metadata;
        let request = Request {
            operation: Operation::Create,
            name: &meta.name,
            namespace: &self.namespace,
            user: "",
            object: Some(policy),
            old_object: None,
        };
        // Offline there is no namespace cache: the system namespaces are the configured names.
        let decision = self.settings.judge_network_policy(&request, NamespaceFacts::default(), self.now);
        Judged {
            place,
            kind: ObjectKind::NetworkPolicy,
            namespace: Some(request.policy_namespace().to_owned()),
            name: shown_name(request.object_name(), &meta.generate_name),
            namespace_from_flag: meta.namespace.as_deref().is_none_or(str::is_empty),
            default_deny: policy.spec.default_deny().map(|d| d.to_string()),
            decision,
        }
    }

    /// The CREATE of a new namespace: whether R4 labels it.
    pub fn judge_namespace(&self, place: Place, ns: &Namespace) -> Judged {
        let meta = &ns.metadata;
        let request = Request {
            operation: Operation::Create,
            name: &meta.name,
            namespace: "",
            user: "",
            object: Some(ns),
            old_object: None,
        };
        Judged {
            place,
            kind: ObjectKind::Namespace,
            namespace: None,
            name: shown_name(request.object_name(), &meta.generate_name),
            namespace_from_flag: false,
            default_deny: None,
            decision: self.settings.judge_namespace_create(&request, self.now),
        }
    }
}

/// The lists that can hold the kinds the rules judge, and what their items are.
#[derive(Debug, Clone, Copy)]
enum ListItems {
    /// `v1` `List`: each item says what it is.
    Own,
    /// A typed list (`NetworkPolicyList`): the API server leaves apiVersion and kind out of its items.
    Typed { api_version: &'static str, kind: &'static str },
}

impl ListItems {
    fn of(api_version: &str, kind: &str) -> Option<ListItems> {
        fn typed<K: ListableResource>() -> ListItems {
            ListItems::Typed { api_version: K::API_VERSION, kind: K::KIND }
        }
        if api_version == "v1" && kind == "List" {
            Some(ListItems::Own)
        } else if is_list_of::<NetworkPolicyKind>(api_version, kind) {
            Some(typed::<NetworkPolicyKind>())
        } else if is_list_of::<NamespaceKind>(api_version, kind) {
            Some(typed::<NamespaceKind>())
        } else {
            None
        }
    }
}

fn shown_name(name: &str, generate_name: &str) -> String {
    if name.is_empty() { format!("{generate_name}<generated>") } else { name.to_owned() }
}

fn type_of(value: &Value) -> (&str, &str) {
    let field = |key| value.get(key).and_then(Value::as_str).unwrap_or_default();
    (field("apiVersion"), field("kind"))
}

fn is<K: Resource>(api_version: &str, kind: &str) -> bool {
    api_version == K::API_VERSION && kind == K::KIND
}

fn is_list_of<K: ListableResource>(api_version: &str, kind: &str) -> bool {
    api_version == K::API_VERSION && kind == K::LIST_KIND
}

/// Reads a document as the kind it names, with the path of what does not fit (`spec.ingress: invalid type ...`).
fn read<T: for<'de> Deserialize<'de>>(place: &Place, kind: ObjectKind, value: Value) -> Result<T, InputError> {
    let object = match value.pointer("/metadata/name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => format!("{} {name}", kind.as_str()),
        _ => format!("a {}", kind.as_str()),
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = if path == "." { e.inner().to_string() } else { format!("{path}: {}", e.inner()) };
        InputError::Object { place: Box::new(place.clone()), kind: kind.as_str(), object, message }
    })
}

/// Directories are searched for `.yaml`, `.yml` and `.json` files, in name order so that reports are stable.
fn walk(dir: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<InputError>) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(source) => return errors.push(InputError::Read { file: dir.display().to_string(), source }),
    };
    let mut entries: Vec<fs::DirEntry> = entries
        .filter_map(|e| {
            e.map_err(|source| errors.push(InputError::Read { file: dir.display().to_string(), source })).ok()
        })
        .collect();
    entries.sort_by_key(fs::DirEntry::file_name);
    for entry in entries {
        // Hidden entries (.git, .github, editors' files) hold no manifests to deploy; ripgrep skips them too.
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let Ok(file_type) = entry.file_type() else { continue };
        if file_type.is_dir() {
            walk(&path, files, errors);
        } else if (is_manifest_name(&path) || is_kustomization(&path)) && (file_type.is_file() || path.is_file()) {
            // A symlink is followed to a file only: a link to a directory up the tree would loop.
            files.push(path);
        }
    }
}

/// The names kustomize reads a directory's kustomization from.
fn is_kustomization(path: &Path) -> bool {
    path.file_name().is_some_and(|n| {
        ["kustomization.yaml", "kustomization.yml", "Kustomization"].contains(&n.to_str().unwrap_or_default())
    })
}

/// A kustomization changes what gets applied (its `namespace`, patches, name prefixes), and `check` reads the files
/// as they are: a namespace-less base is judged in `--namespace` and may pass where the build fails.
fn kustomization_note(file: &Path) -> Note {
    let dir = match file.parent().map(Path::display).map(|d| d.to_string()) {
        Some(d) if !d.is_empty() => d,
        _ => ".".to_owned(),
    };
    Note {
        file: file.display().to_string(),
        message: format!(
            "this is a kustomization: check judges the files as they are, not what kustomize builds from them \
             (its namespace, patches and name prefixes are not applied). To check what will be applied: \
             kubectl kustomize {dir} | default-deny-guard check - (or kustomize build {dir})"
        ),
    }
}

fn is_manifest_name(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    matches!(ext.as_deref(), Some("yaml" | "yml" | "json"))
}

// === Parsing ===

/// Every non-empty document, with the line where it starts.
fn yaml_documents(text: &str) -> Result<Vec<(Option<usize>, Value)>, serde_saphyr::Error> {
    // The default budget guards a service against hostile input; here the input is the user's own repository, and
    // a chart's rendered CRDs can exceed 1,024 documents or 250,000 nodes. Depth and aliases stay bounded.
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 1_000_000,
            max_nodes: 50_000_000,
            max_events: 100_000_000,
        },
    };
    let documents: Vec<serde_saphyr::Spanned<Value>> = serde_saphyr::from_multiple_with_options(text, options)?;
    Ok(documents.into_iter().map(|d| (known(d.referenced.line() as usize), d.value)).collect())
}

/// Every value of a JSON stream (one object, a `List`, or objects one after another), with its first line.
fn json_documents(text: &str) -> Result<Vec<(Option<usize>, Value)>, serde_json::Error> {
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Value>();
    let mut documents = Vec::new();
    loop {
        let after_previous = &text[stream.byte_offset()..];
        let start = text.len() - after_previous.trim_start().len();
        match stream.next() {
            None => return Ok(documents),
            Some(Ok(value)) => documents.push((Some(text[..start].matches('\n').count() + 1), value)),
            Some(Err(e)) => return Err(e),
        }
    }
}

fn known(line: usize) -> Option<usize> {
    (line > 0).then_some(line)
}

fn yaml_error(file: &str, text: &str, e: &serde_saphyr::Error) -> InputError {
    let location = e.location();
    // The plain message: the position goes in front, where editors and CI problem matchers look for it.
    let message = serde_saphyr::DefaultMessageFormatter.format_message(e.without_snippet());
    let mut message: String = message.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.contains("{{") {
        message.push_str(
            " (this looks like an unrendered template: check what it renders to, e.g. \
             `helm template ... | default-deny-guard check -`)",
        );
    }
    InputError::Syntax {
        file: file.to_owned(),
        line: location.and_then(|l| known(l.line() as usize)),
        column: location.and_then(|l| known(l.column() as usize)),
        message,
    }
}

fn json_error(file: &str, e: &serde_json::Error) -> InputError {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    InputError::Syntax { file: file.to_owned(), line: known(e.line()), column: known(e.column()), message }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker() -> Checker {
        Checker::new(Settings::default(), "default".into(), "2026-06-30T12:00:00Z".parse().unwrap())
    }

    fn check(text: &str, format: Format) -> Report {
        let mut report = Report::default();
        checker().check_text("m.yaml", text, format, &mut report);
        report
    }

    const DENY_ALL_KUBE_SYSTEM: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: default-deny-all
  namespace: kube-system
spec:
  podSelector: {}
";

    #[test]
    fn multi_document_yaml_with_empty_documents_and_other_kinds() {
        let text = format!(
            "---\n# Source: chart/templates/empty.yaml\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  \
             name: web\n---\n{DENY_ALL_KUBE_SYSTEM}---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-a\n"
        );
        let report = check(&text, Format::Yaml);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.documents, 3);
        assert_eq!(report.skipped.len(), 1);
        assert_eq!((report.skipped[0].kind.as_str(), report.skipped[0].place.line), ("Deployment", Some(4)));
        let [policy, ns] = &report.judged[..] else { panic!("{:?}", report.judged) };
        assert_eq!((policy.place.document, policy.place.line), (2, Some(9)));
        assert_eq!(policy.decision.verdict, Verdict::Deny);
        assert_eq!(policy.decision.rule, Some(RuleId::R1));
        assert_eq!(policy.default_deny.as_deref(), Some("deny-all (Ingress)"));
        assert_eq!(ns.decision.verdict, Verdict::Patch);
        assert_eq!(report.exit_code(), EXIT_VIOLATION);
        assert_eq!(
            policy.text(),
            format!("m.yaml:2: NetworkPolicy kube-system/default-deny-all: R1: {}", policy.decision.message)
        );
        assert_eq!(ns.text(), "m.yaml:3: Namespace team-a: R4 (patch): namespace team-a labelled default-deny=enabled");
    }

    #[test]
    fn namespace_less_policy_is_judged_in_the_flag_namespace() {
        let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: p\nspec: {}\n";
        let report = check(text, Format::Yaml);
        assert_eq!(report.judged[0].namespace.as_deref(), Some("default"));
        assert!(report.judged[0].namespace_from_flag);
        assert_eq!(report.exit_code(), EXIT_CLEAN);

        let system = Checker::new(Settings::default(), "kube-system".into(), Timestamp::now());
        let mut report = Report::default();
        system.check_text("m.yaml", text, Format::Yaml, &mut report);
        assert_eq!(report.judged[0].decision.rule, Some(RuleId::R1));
        assert!(report.judged[0].text().contains("kube-system/p (namespace from --namespace): R1:"));
    }

    #[test]
    fn lists_are_unpacked_and_typed_list_items_get_their_kind() {
        let text = r#"{"apiVersion": "v1", "kind": "List", "items": [
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "a", "namespace": "kube-public"}, "spec": {}},
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}
        ]}
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicyList",
         "items": [{"metadata": {"name": "b", "namespace": "kube-node-lease"}, "spec": {"podSelector": {}}}]}"#;
        let report = check(text, Format::Json);
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.documents, 2);
        let places: Vec<String> = report.judged.iter().map(|j| j.place.to_string()).collect();
        assert_eq!(places, ["m.yaml:1.items[0]", "m.yaml:2.items[0]"]);
        assert_eq!(report.judged[1].place.line, Some(6));
        assert!(report.judged.iter().all(|j| j.decision.verdict == Verdict::Deny));
        assert_eq!(report.skipped[0].place.to_string(), "m.yaml:1.items[1]");
    }

    #[test]
    fn other_api_versions_are_not_ours() {
        let text = DENY_ALL_KUBE_SYSTEM.replace("networking.k8s.io/v1", "extensions/v1beta1");
        let report = check(&text, Format::Yaml);
        assert!(report.judged.is_empty());
        assert_eq!(report.skipped[0].api_version, "extensions/v1beta1");
        assert_eq!(report.exit_code(), EXIT_CLEAN);
    }

    #[test]
    fn syntax_errors_say_where() {
        let report = check("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: [a\n  labels: {}\n", Format::Yaml);
        let [InputError::Syntax { line, column, .. }] = &report.errors[..] else { panic!("{:?}", report.errors) };
        assert_eq!(*line, Some(5), "{}", report.errors[0]);
        assert!(column.is_some());
        assert!(report.errors[0].to_string().starts_with("m.yaml:5:"), "{}", report.errors[0]);
        assert_eq!(report.exit_code(), EXIT_UNREADABLE);

        let report = check("{\"kind\": \"List\",\n \"items\": [}\n", Format::Json);
        assert_eq!(report.errors[0].to_string(), "m.yaml:2:12: expected value");

        let report = check("metadata:\n  name: {{ .Release.Name }}\n", Format::Yaml);
        assert!(report.errors[0].to_string().contains("helm template"), "{}", report.errors[0]);
    }

    #[test]
    fn a_document_of_our_kind_that_does_not_fit_is_unreadable() {
        let text = DENY_ALL_KUBE_SYSTEM.replace("podSelector: {}", "podSelector: {}\n  ingress: {}");
        let report = check(&text, Format::Yaml);
        assert_eq!(report.exit_code(), EXIT_UNREADABLE);
        let e = report.errors[0].to_string();
        assert!(
            e.starts_with(
                "m.yaml:1: document 1: NetworkPolicy default-deny-all cannot be read as a NetworkPolicy: spec.ingress:"
            ),
            "{e}"
        );
    }

    #[test]
    fn warn_mode_passes_with_a_warning() {
        let settings = Settings { warn: vec![RuleId::R1], ..Settings::default() };
        let mut report = Report::default();
        Checker::new(settings, "default".into(), Timestamp::now()).check_text(
            "m.yaml",
            DENY_ALL_KUBE_SYSTEM,
            Format::Yaml,
            &mut report,
        );
        assert_eq!(report.judged[0].decision.verdict, Verdict::Warn);
        assert!(report.judged[0].text().contains(": R1 (warn): "));
        assert_eq!(report.exit_code(), EXIT_CLEAN);
    }

    #[test]
    fn format_by_extension_then_by_content() {
        assert_eq!(Format::of(Some(Path::new("a.JSON")), "x: 1"), Format::Json);
        assert_eq!(Format::of(Some(Path::new("a.yml")), "{}"), Format::Yaml);
        assert_eq!(Format::of(None, "\n  {\"kind\": \"List\"}"), Format::Json);
        assert_eq!(Format::of(Some(Path::new("manifest")), "# comment\nkind: List"), Format::Yaml);
    }

    #[test]
    fn walk_finds_manifests_in_name_order_and_skips_hidden_entries() {
        let dir = std::env::temp_dir().join(format!("ddg-walk-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        for f in ["b/z.yml", "b/a.json", "a.yaml", "notes.txt", ".git/x.yaml", "c/.hidden.yaml", "c/Kustomization"] {
            let path = dir.join(f);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, "").unwrap();
        }
        let (mut files, mut errors) = (Vec::new(), Vec::new());
        walk(&dir, &mut files, &mut errors);
        let names: Vec<String> =
            files.iter().map(|f| f.strip_prefix(&dir).unwrap().to_string_lossy().into_owned()).collect();
        // A kustomization without an extension is read too, so that check can say it was one.
        assert_eq!(names, ["a.yaml", "b/a.json", "b/z.yml", "c/Kustomization"]);
        assert!(errors.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn summary_counts() {
        let mut report = check(DENY_ALL_KUBE_SYSTEM, Format::Yaml);
        report.files = 1;
        let mut out = Vec::new();
        let mut err = Vec::new();
        report.write_text(&mut out, &mut err, false).unwrap();
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.ends_with(
                "1 file (1 document): 1 NetworkPolicy and 0 Namespaces judged, 0 other objects skipped; 1 violation, \
             0 warnings, 0 namespaces to label, 0 unreadable inputs\n"
            ),
            "{out}"
        );
    }
}
