//! `default-deny-guard check`, the real binary: the practice guide's manifests (docs/practice.md), a directory
//! tree, stdin, broken input, JSON output; and the proof that `check` and `serve` reach the same verdict on every
//! one of the guide's policies.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

const CONTEXT: &str = "tests/fixtures/context";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", self.stdout, self.stderr))
    }

    fn lines(&self) -> Vec<&str> {
        self.stdout.lines().collect()
    }
}

/// Runs `check` in the crate's directory (so that file names in the report are relative), with `stdin` piped in.
fn check(args: &[&str], stdin: Option<&str>) -> Run {
    check_in(Path::new(env!("CARGO_MANIFEST_DIR")), args, stdin)
}

fn check_in(dir: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    let mut child = Command::new(BIN)
        .current_dir(dir)
        .arg("check")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start default-deny-guard check");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        let input = input.to_owned();
        std::thread::spawn(move || pipe.write_all(input.as_bytes()).unwrap());
    }
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// One manifest of the practice guide and what the webhook must make of it.
struct Fixture {
    path: String,
    yaml: String,
    object: Value,
    /// The classification on the first line: `deny-all (Ingress)`, ..., or `None` for `not default-deny`.
    expect: Option<String>,
}

impl Fixture {
    fn namespace(&self) -> Option<&str> {
        self.object["metadata"]["namespace"].as_str()
    }

    fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap()
    }
}

fn fixtures() -> Vec<Fixture> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(CONTEXT);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    let fixtures: Vec<Fixture> = paths
        .iter()
        .map(|p| {
            let yaml = std::fs::read_to_string(p).unwrap();
            let expect = yaml.lines().next().unwrap().split("expect: ").nth(1).unwrap().trim().to_owned();
            Fixture {
                path: format!("{CONTEXT}/{}", p.file_name().unwrap().to_string_lossy()),
                object: serde_saphyr::from_str(&yaml).unwrap(),
                yaml,
                expect: (expect != "not default-deny").then_some(expect),
            }
        })
        .collect();
    assert_eq!(fixtures.len(), 14, "every manifest of the practice guide");
    fixtures
}

#[test]
fn context_manifests_get_their_expected_classification_and_pass_where_they_are() {
    let run = check(&["--output", "json", CONTEXT], None);
    assert_eq!(run.code, 0, "{}{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["summary"]["files"], 14, "README.md is not a manifest");
    assert_eq!(report["summary"]["networkPolicies"], 14);
    assert_eq!(report["summary"]["violations"], 0);
    assert_eq!(report["summary"]["exitCode"], 0);
    let results = report["results"].as_array().unwrap();
    for fixture in fixtures() {
        let result = results.iter().find(|r| r["file"] == fixture.path.as_str()).expect(&fixture.path);
        assert_eq!(result["defaultDeny"].as_str(), fixture.expect.as_deref(), "{}", fixture.path);
        assert_eq!(result["verdict"], "allow", "{}: no context manifest is in a system namespace", fixture.path);
        assert_eq!(result["name"], fixture.name());
        assert_eq!(result["namespace"], fixture.namespace().unwrap_or("default"), "namespace-less: --namespace");
        assert_eq!(result["namespaceFromFlag"], fixture.namespace().is_none());
        assert_eq!((result["document"].as_u64(), result["line"].as_u64()), (Some(1), Some(2)), "{result}");
    }
    // Clean: the text report is the summary alone.
    let text = check(&[CONTEXT], None);
    assert_eq!(text.code, 0);
    assert_eq!(text.lines().len(), 1, "{}", text.stdout);
    assert!(text.stdout.starts_with("14 files (14 documents): 14 NetworkPolicies and 0 Namespaces judged"));
}

#[test]
fn namespace_less_context_manifests_placed_into_kube_system_are_denied() {
    let run = check(&["--namespace", "kube-system", CONTEXT], None);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let mut expected: Vec<String> = fixtures()
        .iter()
        .filter(|f| f.namespace().is_none() && f.expect.is_some())
        .map(|f| {
            format!(
                "{}:1: NetworkPolicy kube-system/{} (namespace from --namespace): R1: NetworkPolicy kube-system/{} \
                 is {} and kube-system is a system namespace",
                f.path,
                f.name(),
                f.name(),
                f.expect.as_deref().unwrap()
            )
        })
        .collect();
    expected.sort();
    assert_eq!(expected.len(), 3, "the heredoc and the two whitelists of the common mistakes");
    let lines = run.lines();
    let (findings, summary) = lines.split_at(lines.len() - 1);
    assert_eq!(findings.len(), expected.len(), "{}", run.stdout);
    for (line, want) in findings.iter().zip(&expected) {
        assert!(line.starts_with(want.as_str()), "{line}\n  wanted {want}...");
    }
    assert!(summary[0].contains("; 3 violations, 0 warnings"), "{}", summary[0]);

    let warned = check(&["--namespace", "kube-system", "--warn", "R1", CONTEXT], None);
    assert_eq!(warned.code, 0, "warn mode passes: {}", warned.stdout);
    assert_eq!(warned.lines().iter().filter(|l| l.contains(": R1 (warn): ")).count(), 3, "{}", warned.stdout);
}

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n";

#[test]
fn a_directory_tree_is_searched_recursively() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "base/policies.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: default-deny-all\nspec:\n  \
         podSelector: {}\n  ingress: []\n",
    );
    write(
        root,
        "overlays/system/patch.yml",
        &format!(
            "{DEPLOYMENT}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: deny-egress\n  \
             namespace: kube-public\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n"
        ),
    );
    write(
        root,
        "overlays/prod/namespaces.json",
        r#"{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
  {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}
]}"#,
    );
    write(root, "overlays/prod/kustomization.yaml", "resources:\n- ../../base\nnamespace: prod\n");
    write(root, "overlays/prod/README.md", "kind: NetworkPolicy\n");
    write(root, ".git/deny.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n");

    let run = check_in(root, &["."], None);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert_eq!(
        run.lines(),
        [
            "./overlays/prod/namespaces.json:1.items[0]: Namespace shop: R4 (patch): namespace shop labelled \
             default-deny=enabled",
            "./overlays/prod/namespaces.json:1.items[1]: Namespace kube-system: R4 (allow): kube-system is a system \
             namespace: no label",
            "./overlays/system/patch.yml:2: NetworkPolicy kube-public/deny-egress: R1: NetworkPolicy \
             kube-public/deny-egress is deny-all (Egress) and kube-public is a system namespace: a policy that \
             selects every pod there cuts the cluster's own traffic (DNS, API server, node heartbeats). Default-deny \
             belongs in application namespaces; in kube-public, select the pods to restrict with a podSelector \
             instead.",
            "4 files (5 documents): 2 NetworkPolicies and 2 Namespaces judged, 2 other objects skipped; 1 violation, \
             0 warnings, 1 namespace to label, 0 unreadable inputs",
        ]
    );
    // The kustomization is skipped as another object, and said to be one: what kustomize builds may differ.
    assert_eq!(
        run.stderr,
        "./overlays/prod/kustomization.yaml: warning: this is a kustomization: check judges the files as they are, \
         not what kustomize builds from them (its namespace, patches and name prefixes are not applied). To check \
         what will be applied: kubectl kustomize ./overlays/prod | default-deny-guard check - (or kustomize build \
         ./overlays/prod)\n"
    );
    let json = check_in(root, &["-o", "json", "overlays"], None).json();
    assert_eq!(json["notes"][0]["file"], "overlays/prod/kustomization.yaml");
    assert!(
        json["notes"][0]["message"]
            .as_str()
            .unwrap()
            .contains("kubectl kustomize overlays/prod | default-deny-guard check -")
    );

    // Verbose adds what passes; `-v` names the file as given.
    let verbose = check_in(root, &["-v", "base"], None);
    assert_eq!(verbose.code, 0);
    assert_eq!(
        verbose.lines()[0],
        "base/policies.yaml:1: NetworkPolicy default/default-deny-all (namespace from --namespace): allow: default \
         is not a system namespace [deny-all (Ingress)]"
    );
}

#[test]
fn stdin_takes_kustomize_and_helm_output() {
    // As `helm template` writes it: a `---` and a `# Source:` comment before each document, some empty.
    let helm = format!(
        "---\n# Source: app/templates/empty.yaml\n---\n# Source: app/templates/deployment.yaml\n{DEPLOYMENT}---\n\
         # Source: app/templates/netpol.yaml\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  \
         name: app-default-deny\n  labels:\n    app.kubernetes.io/managed-by: Helm\nspec:\n  podSelector:\n    \
         matchLabels: {{}}\n  policyTypes:\n  - Ingress\n  - Egress\n"
    );
    let run = check(&["--output", "json", "-n", "kube-system", "-"], Some(&helm));
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let report = run.json();
    assert_eq!(report["summary"]["documents"], 2, "empty documents are not documents");
    assert_eq!(report["skipped"][0]["kind"], "Deployment");
    let result = &report["results"][0];
    assert_eq!(result["file"], "<stdin>");
    assert_eq!((result["document"].as_u64(), result["line"].as_u64()), (Some(2), Some(13)));
    assert_eq!(result["verdict"], "deny");
    assert_eq!(result["allowed"], false);
    assert_eq!(result["rule"], "R1");
    assert_eq!(result["defaultDeny"], "deny-all (Ingress, Egress)");

    // What a failing generator leaves in a pipe without `pipefail`: nothing to fail on, but the summary says so.
    let empty = check(&["-"], Some(""));
    assert_eq!(empty.code, 0);
    assert!(empty.stdout.contains("1 file (0 documents)") && empty.stdout.contains("nothing was checked"));

    // `kubectl get networkpolicies -A -o json`: a List, as JSON.
    let listed = r#"{
    "apiVersion": "v1",
    "items": [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "default-deny-all", "namespace": "team-a"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
        },
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "oops", "namespace": "kube-node-lease"},
            "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}
        }
    ],
    "kind": "List",
    "metadata": {"resourceVersion": ""}
}"#;
    let run = check(&["-"], Some(listed));
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    assert!(
        run.lines()[0].starts_with(
            "<stdin>:1.items[1]: NetworkPolicy kube-node-lease/oops: R1: NetworkPolicy kube-node-lease/oops is \
             default-deny with 1 allow rule (Ingress)"
        ),
        "{}",
        run.stdout
    );
}

#[test]
fn broken_yaml_exits_2_with_file_and_line_and_the_rest_is_still_checked() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "a-broken.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: x\n  namespace: kube-system\n\
         spec:\n  podSelector: {}\n   ingress: []\n",
    );
    write(
        dir.path(),
        "b-good.yaml",
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: good\n  namespace: kube-system\n",
    );
    let run = check_in(dir.path(), &["a-broken.yaml", "b-good.yaml"], None);
    assert_eq!(run.code, 2, "unreadable input outranks the violation: {}{}", run.stdout, run.stderr);
    let stderr_line = run.stderr.lines().next().unwrap();
    assert!(stderr_line.starts_with("a-broken.yaml:8:"), "file:line:column first: {}", run.stderr);
    assert!(run.stdout.contains("b-good.yaml:1: NetworkPolicy kube-system/good: R1:"), "{}", run.stdout);
    assert!(run.stdout.ends_with("1 violation, 0 warnings, 0 namespaces to label, 1 unreadable input\n"));

    let json = check_in(dir.path(), &["-o", "json", "a-broken.yaml"], None);
    assert_eq!(json.code, 2);
    let report = json.json();
    let error = &report["errors"][0];
    assert_eq!((error["file"].as_str(), error["line"].as_u64()), (Some("a-broken.yaml"), Some(8)), "{error}");
    assert!(error["column"].as_u64().is_some());
    assert!(!error["message"].as_str().unwrap().is_empty());
    assert_eq!(report["summary"]["exitCode"], 2);
    assert!(json.stderr.is_empty(), "JSON mode writes one document, on stdout");

    // A NetworkPolicy that is YAML but not a NetworkPolicy: `serve` would deny it, `check` cannot judge it. The
    // position is the line where its document starts (the third, on line 6), then which document it is; the
    // field's path says what is wrong.
    write(
        dir.path(),
        "c-wrong-type.yaml",
        &format!(
            "{DEPLOYMENT}---\n{DEPLOYMENT}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  \
             name: wrong\nspec:\n  ingress: {{}}\n"
        ),
    );
    let run = check_in(dir.path(), &["c-wrong-type.yaml"], None);
    assert_eq!(run.code, 2);
    assert_eq!(
        run.stderr,
        "c-wrong-type.yaml:15: document 3: NetworkPolicy wrong cannot be read as a NetworkPolicy: spec.ingress: \
         invalid type: map, expected a sequence\n",
    );
    let json = check_in(dir.path(), &["-o", "json", "c-wrong-type.yaml"], None).json();
    let error = &json["errors"][0];
    assert_eq!((error["line"].as_u64(), error["document"].as_u64()), (Some(15), Some(3)), "{error}");
    assert_eq!(
        error["message"],
        "NetworkPolicy wrong cannot be read as a NetworkPolicy: spec.ingress: invalid type: map, expected a sequence"
    );

    // A missing path: the error names the cause, and the summary does not guess at another one.
    let missing = check_in(dir.path(), &["no-such-dir"], None);
    assert_eq!(missing.code, 2);
    assert_eq!(missing.stderr, "no-such-dir: No such file or directory (os error 2)\n");
    assert!(missing.stdout.ends_with("1 unreadable input (nothing was checked)\n"), "{}", missing.stdout);
    // A directory without manifests is another matter.
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let empty = check_in(dir.path(), &["empty"], None);
    assert_eq!(empty.code, 0);
    assert!(empty.stdout.ends_with("(no .yaml, .yml or .json file found: nothing was checked)\n"), "{}", empty.stdout);

    let json_broken = check(&["-"], Some("{\"apiVersion\": \"v1\",\n  \"kind\": \"List\"\n  \"items\": []}"));
    assert_eq!(json_broken.code, 2);
    assert!(json_broken.stderr.starts_with("<stdin>:3:3: expected `,` or `}`"), "{}", json_broken.stderr);
}

#[test]
fn flags_configure_the_rules_as_for_serve() {
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: d\n  namespace: \
                  openshift-dns\nspec:\n  podSelector: {}\n";
    assert_eq!(check(&["-"], Some(policy)).code, 0);
    let run = check(&["--system-namespaces", "kube-system,openshift-*", "-"], Some(policy));
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(run.stdout.contains("openshift-dns is a system namespace"), "{}", run.stdout);
    let bad = check(&["--system-namespaces", "*", "-"], Some(policy));
    assert_eq!(bad.code, 2, "a configuration that makes no sense is not a pass");

    let ns = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: team-b\n  labels:\n    tier: gold\n";
    let run = check(&["--enable-label", "netpol=default-deny", "-"], Some(ns));
    assert_eq!(run.code, 0);
    assert_eq!(
        run.lines()[0],
        "<stdin>:1: Namespace team-b: R4 (patch): namespace team-b labelled netpol=default-deny"
    );
}

// === The same verdict as `serve` ===

/// Where a fixture is put: where it says (namespace-less: `default`, as kubectl would), or into kube-system.
#[derive(Clone, Copy, Debug)]
enum Placement {
    AsWritten,
    KubeSystem,
}

/// For every context policy, in both placements and with R1 enforced and warned: `check` on the manifest and a
/// CREATE review of the same object to a real `serve` give the same verdict, rule, message and warnings.
#[tokio::test]
async fn check_gives_the_same_verdict_as_serve_on_every_context_policy() {
    let (mut compared, mut judged_r1) = (0, 0);
    for modes in [&[][..], &["--warn", "R1"][..]] {
        let guard = Guard::start(modes);
        let client = guard.client();
        for fixture in fixtures() {
            for placement in [Placement::AsWritten, Placement::KubeSystem] {
                let what = format!("{} {placement:?} {modes:?}", fixture.path);
                let (namespace, run) = match (placement, fixture.namespace()) {
                    (Placement::AsWritten, own) => {
                        let mut args = modes.to_vec();
                        args.extend(["--output", "json", fixture.path.as_str()]);
                        (own.unwrap_or("default").to_owned(), check(&args, None))
                    }
                    (Placement::KubeSystem, own) => {
                        // A namespaced manifest is edited, as an overlay would; a namespace-less one is applied
                        // with `-n kube-system`.
                        let yaml = match own {
                            Some(ns) => {
                                let from = format!("\n  namespace: {ns}\n");
                                assert!(fixture.yaml.contains(&from), "{what}");
                                fixture.yaml.replace(&from, "\n  namespace: kube-system\n")
                            }
                            None => fixture.yaml.clone(),
                        };
                        let mut args = modes.to_vec();
                        args.extend(["--output", "json", "--namespace", "kube-system", "-"]);
                        ("kube-system".to_owned(), check(&args, Some(&yaml)))
                    }
                };
                let report = run.json();
                assert_eq!(report["results"].as_array().map(Vec::len), Some(1), "{what}: {report}");
                let checked = &report["results"][0];

                // The API server puts the request's namespace into a namespace-less object before admission.
                let mut object = fixture.object.clone();
                object["metadata"]["namespace"] = namespace.clone().into();
                let review = Review::network_policy("CREATE", &namespace, fixture.name()).object(object);
                let reply = client.review(&guard, "/validate", &review.json()).await;
                let response = response_of(&reply, &review);
                let logged = guard.wait_for_log(&review.uid, |v| v["uid"] == review.uid.as_str());

                assert_eq!(checked["allowed"], response["allowed"], "{what}");
                assert_eq!(checked["verdict"], logged["decision"], "{what}");
                assert_eq!(checked["rule"].as_str().unwrap_or("none"), logged["rule"], "{what}");
                assert_eq!(checked["message"], logged["reason"], "{what}");
                assert_eq!(checked["namespace"], logged["namespace"], "{what}");
                assert_eq!(checked["name"], logged["name"], "{what}");
                let served_warnings = response.get("warnings").cloned().unwrap_or_else(|| serde_json::json!([]));
                assert_eq!(checked["warnings"], served_warnings, "{what}");
                if response["allowed"] == false {
                    assert_eq!(checked["message"], response["status"]["message"], "{what}");
                }
                let expected_exit = if checked["verdict"] == "deny" { 1 } else { 0 };
                assert_eq!(run.code, expected_exit, "{what}");

                // And the verdict is the one the practice guide calls for.
                let in_system = matches!(placement, Placement::KubeSystem) && fixture.expect.is_some();
                let want = match (in_system, modes.is_empty()) {
                    (false, _) => "allow",
                    (true, true) => "deny",
                    (true, false) => "warn",
                };
                assert_eq!(checked["verdict"], want, "{what}");
                compared += 1;
                judged_r1 += usize::from(checked["rule"] == "R1");
            }
        }
    }
    assert_eq!(compared, 14 * 2 * 2, "every fixture, both placements, both modes");
    assert_eq!(judged_r1, 13 * 2, "in kube-system, every default-deny fixture meets R1");
}
