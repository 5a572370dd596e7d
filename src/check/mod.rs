//! `check`: the webhook's rules, offline, over manifest files, directories and stdin, for GitOps CI
//! (docs/design.md section 5).
//!
//! Each NetworkPolicy and Namespace is judged as the CREATE that `kubectl apply` would send, by the very functions
//! `serve` calls ([`Settings::judge_network_policy`], [`Settings::judge_namespace_create`]), knowing nothing of the
//! cluster ([`NamespaceFacts::default`]); so the verdicts are the webhook's, word for word. What this module adds is
//! the reading ([`input`]: files and directories, multi-document YAML, JSON streams, `List` kinds) and the report
//! ([`report`]). Here: the configuration, the command, and the judging.
//!
//! ```no_run
//! use default_deny_guard::check::Checker;
//! use default_deny_guard::rules::Settings;
//!
//! let checker = Checker::new(Settings::default(), "default".into(), jiff::Timestamp::now());
//! let report = checker.check_paths(&["overlays/prod".into()], &mut std::io::stdin());
//! std::process::exit(report.exit_code().into());
//! ```

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace as NamespaceKind;
use k8s_openapi::api::networking::v1::NetworkPolicy as NetworkPolicyKind;
use serde_json::Value;

use crate::rules::{Namespace, NamespaceFacts, NetworkPolicy, Operation, Request, Settings};
use input::{
    ListItems, is, is_kustomization, json_documents, json_error, kustomization_note, read, type_of, walk,
    yaml_documents, yaml_error,
};

/// How `check` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// A line per finding, then a summary.
    Text,
    /// One JSON document: summary, results, skipped documents, errors.
    Json,
}

/// What `check` is asked to do.
#[derive(Debug, Clone)]
pub struct CheckConfig {
    pub paths: Vec<PathBuf>,
    /// The namespace of objects that name none (as `kubectl apply -n`).
    pub namespace: String,
    pub output: OutputFormat,
    /// Report every object judged, not only findings.
    pub verbose: bool,
    pub settings: Settings,
}

/// Exit statuses, as CI reads them.
pub const EXIT_CLEAN: u8 = 0;
pub const EXIT_VIOLATION: u8 = 1;
pub const EXIT_UNREADABLE: u8 = 2;

/// How stdin is named in findings.
pub const STDIN_NAME: &str = "<stdin>";

mod input;
mod report;
#[cfg(test)]
mod tests;

pub use input::{Format, InputError};
pub use report::{JudgedObject, Note, ObjectKind, Place, Report, Skipped};

// === The command ===

/// `default-deny-guard check`: prints the report and returns the exit status.
pub fn run(args: &CheckConfig) -> ExitCode {
    let checker = Checker::new(args.settings.clone(), args.namespace.clone(), Timestamp::now());
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
    pub fn judge_policy(&self, place: Place, policy: &NetworkPolicy) -> JudgedObject {
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
        JudgedObject {
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
    pub fn judge_namespace(&self, place: Place, ns: &Namespace) -> JudgedObject {
        let meta = &ns.metadata;
        let request = Request {
            operation: Operation::Create,
            name: &meta.name,
            namespace: "",
            user: "",
            object: Some(ns),
            old_object: None,
        };
        JudgedObject {
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

fn shown_name(name: &str, generate_name: &str) -> String {
    if name.is_empty() { format!("{generate_name}<generated>") } else { name.to_owned() }
}
