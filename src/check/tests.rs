use super::*;
use crate::rules::{RuleId, Verdict};

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
