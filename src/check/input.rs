//! `check`'s input: files and directories, YAML and JSON documents, `List`s, and what cannot be read.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Namespace as NamespaceKind;
use k8s_openapi::api::networking::v1::NetworkPolicy as NetworkPolicyKind;
use k8s_openapi::{ListableResource, Resource};
use serde::Deserialize;
use serde_json::Value;
use serde_saphyr::MessageFormatter as _;

use super::report::{ObjectKind, Place};

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
pub(super) fn document_position(place: &Place) -> String {
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

/// The lists that can hold the kinds the rules judge, and what their items are.
#[derive(Debug, Clone, Copy)]
pub(super) enum ListItems {
    /// `v1` `List`: each item says what it is.
    Own,
    /// A typed list (`NetworkPolicyList`): the API server leaves apiVersion and kind out of its items.
    Typed { api_version: &'static str, kind: &'static str },
}

impl ListItems {
    pub(super) fn of(api_version: &str, kind: &str) -> Option<ListItems> {
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

pub(super) fn type_of(value: &Value) -> (&str, &str) {
    let field = |key| value.get(key).and_then(Value::as_str).unwrap_or_default();
    (field("apiVersion"), field("kind"))
}

pub(super) fn is<K: Resource>(api_version: &str, kind: &str) -> bool {
    api_version == K::API_VERSION && kind == K::KIND
}

fn is_list_of<K: ListableResource>(api_version: &str, kind: &str) -> bool {
    api_version == K::API_VERSION && kind == K::LIST_KIND
}

/// Reads a document as the kind it names, with the path of what does not fit (`spec.ingress: invalid type ...`).
pub(super) fn read<T: for<'de> Deserialize<'de>>(
    place: &Place,
    kind: ObjectKind,
    value: Value,
) -> Result<T, InputError> {
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
pub(super) fn walk(dir: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<InputError>) {
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
pub(super) fn is_kustomization(path: &Path) -> bool {
    path.file_name().is_some_and(|n| {
        ["kustomization.yaml", "kustomization.yml", "Kustomization"].contains(&n.to_str().unwrap_or_default())
    })
}

/// A kustomization changes what gets applied (its `namespace`, patches, name prefixes), and `check` reads the files
/// as they are: a namespace-less base is judged in `--namespace` and may pass where the build fails.
pub(super) fn kustomization_note(file: &Path) -> super::Note {
    let dir = match file.parent().map(Path::display).map(|d| d.to_string()) {
        Some(d) if !d.is_empty() => d,
        _ => ".".to_owned(),
    };
    super::Note {
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
pub(super) fn yaml_documents(text: &str) -> Result<Vec<(Option<usize>, Value)>, serde_saphyr::Error> {
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
pub(super) fn json_documents(text: &str) -> Result<Vec<(Option<usize>, Value)>, serde_json::Error> {
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

pub(super) fn yaml_error(file: &str, text: &str, e: &serde_saphyr::Error) -> InputError {
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

pub(super) fn json_error(file: &str, e: &serde_json::Error) -> InputError {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
    InputError::Syntax { file: file.to_owned(), line: known(e.line()), column: known(e.column()), message }
}
