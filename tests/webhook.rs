//! The real server over HTTPS, with reviews shaped like kube-apiserver's: every rule both ways, the known traps of
//! docs/design.md section 4, bad input, metrics.

mod common;

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

const EXC: &str = "default-deny-guard.io/exception";
const EXP: &str = "default-deny-guard.io/exception-expires";

fn deny_all(ns: &str, name: &str) -> Value {
    network_policy(ns, name, deny_all_spec())
}

/// Sends a review to `path` and returns its checked `response`.
async fn answer(guard: &Guard, path: &str, review: &Review) -> Value {
    let reply = guard.client().review(guard, path, &review.json()).await;
    response_of(&reply, review)
}

fn message(response: &Value) -> &str {
    response["status"]["message"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn r1_denies_default_deny_in_system_namespaces_and_allows_elsewhere() {
    let guard = Guard::start(&[]);
    let review = Review::network_policy("CREATE", "kube-system", "default-deny-all")
        .object(deny_all("kube-system", "default-deny-all"));
    let r = answer(&guard, "/validate", &review).await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["status"]["code"], 403);
    assert!(message(&r).contains("kube-system/default-deny-all is deny-all (Ingress)"), "{r}");

    let review = Review::network_policy("CREATE", "production", "default-deny-all")
        .object(deny_all("production", "default-deny-all"));
    let r = answer(&guard, "/validate", &review).await;
    assert_eq!(r["allowed"], true);
    assert!(r.get("status").is_none() && r.get("patch").is_none() && r.get("warnings").is_none(), "{r}");
}

#[tokio::test]
async fn r2_delete_denied_then_allowed_with_exception_and_in_teardown() {
    let guard = Guard::start(&[]);
    let old = deny_all("production", "default-deny-all");

    // A collection delete (`kubectl delete networkpolicy --all`) sends one review per object, with no name.
    let collection = Review::network_policy("DELETE", "production", "").old(old.clone());
    let r = answer(&guard, "/validate", &collection).await;
    assert_eq!(r["allowed"], false);
    assert!(message(&r).contains("NetworkPolicy production/default-deny-all is the default-deny policy"), "{r}");
    assert!(message(&r).contains("kubectl annotate networkpolicy default-deny-all -n production"), "{r}");

    let with_exception = annotate(annotate(old.clone(), EXC, "SEC-789 migration to Cilium"), EXP, "2099-12-31");
    let review = Review::network_policy("DELETE", "production", "default-deny-all").old(with_exception);
    let r = answer(&guard, "/validate", &review).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(r["auditAnnotations"]["exception-reason"], "SEC-789 migration to Cilium");
    assert_eq!(r["auditAnnotations"]["exception-expires"], "2099-12-31");
    assert_eq!(r["auditAnnotations"]["exception-rule"], "R2");

    let expired = annotate(annotate(old.clone(), EXC, "SEC-789"), EXP, "2020-01-01");
    let review = Review::network_policy("DELETE", "production", "default-deny-all").old(expired);
    let r = answer(&guard, "/validate", &review).await;
    assert_eq!(r["allowed"], false);
    assert!(message(&r).contains("expired"), "the answer says why the exception is void: {r}");

    let teardown = Review::network_policy("DELETE", "production", "").old(old).user(NAMESPACE_CONTROLLER);
    assert_eq!(answer(&guard, "/validate", &teardown).await["allowed"], true);
}

#[tokio::test]
async fn r3_weakening_update_is_denied_unless_excepted() {
    let guard = Guard::start(&[]);
    let old = deny_all("production", "default-deny-all");
    let open = network_policy(
        "production",
        "default-deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]}),
    );
    let review =
        Review::network_policy("UPDATE", "production", "default-deny-all").object(open.clone()).old(old.clone());
    let r = answer(&guard, "/validate", &review).await;
    assert_eq!(r["allowed"], false);
    assert!(message(&r).contains("from deny-all (Ingress) into a policy that allows all traffic"), "{r}");

    let review = Review::network_policy("UPDATE", "production", "default-deny-all")
        .object(annotate(open, EXC, "incident 42"))
        .old(old.clone());
    assert_eq!(answer(&guard, "/validate", &review).await["allowed"], true);

    let tightened = network_policy(
        "production",
        "default-deny-all",
        json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}),
    );
    let review = Review::network_policy("UPDATE", "production", "default-deny-all").object(tightened).old(old);
    assert_eq!(answer(&guard, "/validate", &review).await["allowed"], true);
}

/// Decodes the patch as kube-apiserver does (standard base64) and applies it.
fn apply_patch(response: &Value, object: &Value) -> Value {
    assert_eq!(response["patchType"], "JSONPatch");
    let encoded = response["patch"].as_str().expect("the patch is a base64 string, not an array of numbers");
    let bytes = base64::engine::general_purpose::STANDARD.decode(encoded).expect("standard base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
    let mut patched = object.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    patched
}

#[tokio::test]
async fn r4_patch_labels_new_namespaces() {
    let guard = Guard::start(&[]);
    let cases = [
        ("no labels", json!(null), json!({"default-deny": "enabled"}), false),
        (
            "other labels kept",
            json!({"team": "payments"}),
            json!({"team": "payments", "default-deny": "enabled"}),
            false,
        ),
        (
            "another value overwritten, with a warning",
            json!({"default-deny": "disabled"}),
            json!({"default-deny": "enabled"}),
            true,
        ),
    ];
    for (what, labels, want, warns) in cases {
        let mut object = namespace_object("payments", labels.clone(), json!(null));
        if labels.is_null() {
            object["metadata"].as_object_mut().unwrap().remove("labels");
        }
        let review = Review::namespace("CREATE", "payments").object(object.clone());
        let r = answer(&guard, "/mutate", &review).await;
        assert_eq!(r["allowed"], true, "{what}");
        assert_eq!(apply_patch(&r, &object)["metadata"]["labels"], want, "{what}");
        assert_eq!(r.get("warnings").is_some(), warns, "{what}: {r}");
    }

    // `generateName`: kube-apiserver sends an empty name; the namespace is still labelled.
    let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"generateName": "ci-run-"}});
    let review = Review::namespace("CREATE", "").object(object.clone());
    let r = answer(&guard, "/mutate", &review).await;
    assert_eq!(apply_patch(&r, &object)["metadata"]["labels"]["default-deny"], "enabled");

    for (what, object) in [
        ("already enabled", namespace_object("payments", json!({"default-deny": "enabled"}), json!(null))),
        ("system namespace", namespace_object("kube-system", json!(null), json!(null))),
        ("valid exception", namespace_object("legacy", json!(null), json!({EXC: "legacy CRM until Q3"}))),
    ] {
        let review = Review::namespace("CREATE", "x").object(object);
        let r = answer(&guard, "/mutate", &review).await;
        assert_eq!(r["allowed"], true, "{what}");
        assert!(r.get("patch").is_none() && r.get("patchType").is_none(), "{what}: {r}");
    }
}

#[tokio::test]
async fn r5_label_removal_denied_unless_excepted() {
    let guard = Guard::start(&[]);
    let old = namespace_object("payments", json!({"default-deny": "enabled"}), json!(null));
    let new = namespace_object("payments", json!({}), json!(null));
    let review = Review::namespace("UPDATE", "payments").object(new.clone()).old(old.clone());
    let r = answer(&guard, "/validate", &review).await;
    assert_eq!(r["allowed"], false);
    assert!(message(&r).contains("payments must keep the label default-deny=enabled"), "{r}");

    let review = Review::namespace("UPDATE", "payments").object(annotate(new, EXC, "moving to Cilium")).old(old);
    let r = answer(&guard, "/validate", &review).await;
    assert_eq!(r["allowed"], true);
    assert_eq!(r["auditAnnotations"]["exception-rule"], "R5");
}

#[tokio::test]
async fn warn_mode_allows_with_a_warning() {
    let guard = Guard::start(&["--warn", "R1,R2"]);
    let review = Review::network_policy("CREATE", "kube-system", "d").object(deny_all("kube-system", "d"));
    let r = answer(&guard, "/validate", &review).await;
    assert_eq!(r["allowed"], true);
    let warning = r["warnings"][0].as_str().unwrap();
    assert!(warning.starts_with("R1 (warn mode, allowed): NetworkPolicy kube-system/d is deny-all"), "{warning}");
    assert_eq!(r["auditAnnotations"]["warned-rule"], "R1");

    // R5 still enforces.
    let old = namespace_object("p", json!({"default-deny": "enabled"}), json!(null));
    let review = Review::namespace("UPDATE", "p").object(namespace_object("p", json!({}), json!(null))).old(old);
    assert_eq!(answer(&guard, "/validate", &review).await["allowed"], false);
}

#[tokio::test]
async fn v1beta1_is_answered_in_v1beta1_and_dry_run_gets_the_same_decision() {
    let guard = Guard::start(&[]);
    let mut review = Review::network_policy("CREATE", "kube-system", "d").object(deny_all("kube-system", "d"));
    review.api_version = "admission.k8s.io/v1beta1";
    review.dry_run = true;
    let r = answer(&guard, "/validate", &review).await; // checks apiVersion and uid
    assert_eq!(r["allowed"], false);
    let line = guard.wait_for_log("for the dry run", |l| l["uid"] == review.uid.as_str());
    assert_eq!(line["dry_run"], true);
    assert_eq!(line["decision"], "deny");
    assert_eq!(line["rule"], "R1");
}

#[tokio::test]
async fn kinds_that_are_not_ours_are_allowed_untouched() {
    let guard = Guard::start(&[]);
    let review =
        Review::other(("apps", "v1", "Deployment"), "deployments", "CREATE").object(json!({"spec": "anything"}));
    let r = answer(&guard, "/validate", &review).await;
    assert_eq!(r, json!({"uid": review.uid, "allowed": true}));
    // A Namespace CREATE sent to /validate, or a NetworkPolicy sent to /mutate: not theirs to judge.
    let review = Review::namespace("CREATE", "a").object(namespace_object("a", json!(null), json!(null)));
    assert_eq!(answer(&guard, "/validate", &review).await, json!({"uid": review.uid, "allowed": true}));
    let review = Review::network_policy("CREATE", "kube-system", "d").object(deny_all("kube-system", "d"));
    assert_eq!(answer(&guard, "/mutate", &review).await, json!({"uid": review.uid, "allowed": true}));
    // Status subresource updates cannot change labels.
    let mut review = Review::namespace("UPDATE", "p")
        .object(namespace_object("p", json!({}), json!(null)))
        .old(namespace_object("p", json!({"default-deny": "enabled"}), json!(null)))
        .json();
    review["request"]["subResource"] = json!("status");
    let reply = guard.client().review(&guard, "/validate", &review).await;
    assert_eq!(reply.json()["response"]["allowed"], true);
}

#[tokio::test]
async fn unreadable_objects_are_denied_with_what_was_wrong() {
    let guard = Guard::start(&[]);
    let cases = [
        (
            json!({"metadata": {"name": "d", "namespace": "production"}, "spec": {"podSelector": "all"}}),
            "object.spec.podSelector",
        ),
        (
            json!({"metadata": {"name": "d", "namespace": "production"}, "spec": {"policyTypes": ["Sideways"]}}),
            "object.spec.policyTypes[0]: unknown variant `Sideways`",
        ),
        (
            json!({"metadata": {"name": "d", "namespace": "production"}, "spec": {"ingress": [{"from": "everyone"}]}}),
            "object.spec.ingress[0].from",
        ),
        (json!("a string"), "object: invalid type: string"),
    ];
    for (object, says) in cases {
        let review = Review::network_policy("CREATE", "production", "d").object(object);
        let r = answer(&guard, "/validate", &review).await;
        assert_eq!(r["allowed"], false);
        assert_eq!(r["status"]["code"], 400);
        assert!(message(&r).contains(says), "{says}: {r}");
    }
}

/// A request that must be refused: what it is, the request, and the status and message fragment expected.
struct BadRequest {
    what: &'static str,
    method: &'static str,
    url: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    says: &'static str,
}

type BadRequestRow = (&'static str, &'static str, String, Option<&'static str>, Vec<u8>, u16, &'static str);

impl From<BadRequestRow> for BadRequest {
    fn from((what, method, url, content_type, body, status, says): BadRequestRow) -> Self {
        BadRequest { what, method, url, content_type, body, status, says }
    }
}

#[tokio::test]
async fn bad_input_gets_a_4xx_with_a_json_status_and_a_log_line() {
    let guard = Guard::start(&["--max-body-bytes", "65536"]);
    let client = guard.client();
    let validate = guard.url("/validate");
    let good = serde_json::to_vec(&Review::namespace("UPDATE", "a").json()).unwrap();
    let cases: Vec<BadRequestRow> = vec![
        ("GET /validate", "GET", validate.clone(), None, vec![], 405, "method GET not allowed"),
        ("PUT /mutate", "PUT", guard.url("/mutate"), Some("application/json"), good.clone(), 405, "not allowed"),
        (
            "unknown path",
            "POST",
            guard.url("/admit"),
            Some("application/json"),
            good.clone(),
            404,
            "no such endpoint /admit",
        ),
        ("no content type", "POST", validate.clone(), None, good.clone(), 415, "Content-Type: application/json"),
        ("text/plain", "POST", validate.clone(), Some("text/plain"), good.clone(), 415, "Content-Type"),
        ("yaml", "POST", validate.clone(), Some("application/yaml"), good.clone(), 415, "Content-Type"),
        (
            "too large",
            "POST",
            validate.clone(),
            Some("application/json"),
            vec![b' '; 70_000],
            413,
            "larger than --max-body-bytes",
        ),
        (
            "empty body",
            "POST",
            validate.clone(),
            Some("application/json"),
            vec![],
            400,
            "not a readable AdmissionReview",
        ),
        (
            "invalid JSON",
            "POST",
            validate.clone(),
            Some("application/json"),
            b"{\"kind\": ".to_vec(),
            400,
            "not a readable AdmissionReview",
        ),
        (
            "trailing garbage",
            "POST",
            validate.clone(),
            Some("application/json"),
            [&good[..], b"}"].concat(),
            400,
            "trailing characters",
        ),
        (
            "JSON array",
            "POST",
            validate.clone(),
            Some("application/json"),
            b"[1,2]".to_vec(),
            400,
            "not a readable AdmissionReview",
        ),
        (
            "another kind",
            "POST",
            validate.clone(),
            Some("application/json"),
            br#"{"kind":"Pod","apiVersion":"v1"}"#.to_vec(),
            400,
            "is a \"Pod\", not an AdmissionReview",
        ),
        (
            "no kind",
            "POST",
            validate.clone(),
            Some("application/json"),
            br#"{"apiVersion":"admission.k8s.io/v1"}"#.to_vec(),
            400,
            "the body has no \"kind\": an AdmissionReview was expected (kind AdmissionReview, apiVersion \
             admission.k8s.io/v1, a request with a uid)",
        ),
        (
            "an empty object",
            "POST",
            validate.clone(),
            Some("application/json"),
            b"{}".to_vec(),
            400,
            "the body has no \"kind\": an AdmissionReview was expected",
        ),
        (
            "unknown version",
            "POST",
            validate.clone(),
            Some("application/json"),
            br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v2"}"#.to_vec(),
            400,
            "unsupported AdmissionReview apiVersion \"admission.k8s.io/v2\"",
        ),
        (
            "no request",
            "POST",
            validate.clone(),
            Some("application/json"),
            br#"{"kind":"AdmissionReview","apiVersion":"admission.k8s.io/v1"}"#.to_vec(),
            400,
            "has no request",
        ),
        (
            "no uid",
            "POST",
            validate.clone(),
            Some("application/json"),
            {
                let mut r = Review::namespace("UPDATE", "a").json();
                r["request"].as_object_mut().unwrap().remove("uid");
                serde_json::to_vec(&r).unwrap()
            },
            400,
            "has no uid",
        ),
        (
            "empty uid",
            "POST",
            validate.clone(),
            Some("application/json"),
            {
                let mut r = Review::namespace("UPDATE", "a").json();
                r["request"]["uid"] = json!("");
                serde_json::to_vec(&r).unwrap()
            },
            400,
            "has no uid",
        ),
        (
            "no operation",
            "POST",
            validate.clone(),
            Some("application/json"),
            {
                let mut r = Review::namespace("UPDATE", "a").json();
                r["request"].as_object_mut().unwrap().remove("operation");
                serde_json::to_vec(&r).unwrap()
            },
            400,
            "request: missing field `operation`",
        ),
        (
            "unknown operation",
            "POST",
            validate.clone(),
            Some("application/json"),
            {
                let mut r = Review::namespace("UPDATE", "a").json();
                r["request"]["operation"] = json!("PATCH");
                serde_json::to_vec(&r).unwrap()
            },
            400,
            "request.operation: unknown variant `PATCH`",
        ),
        (
            "uid a number",
            "POST",
            validate.clone(),
            Some("application/json"),
            {
                let mut r = Review::namespace("UPDATE", "a").json();
                r["request"]["uid"] = json!(42);
                serde_json::to_vec(&r).unwrap()
            },
            400,
            "request.uid: invalid type",
        ),
        (
            "not UTF-8",
            "POST",
            validate.clone(),
            Some("application/json"),
            b"{\"kind\": \"\xff\xfe\"}".to_vec(),
            400,
            "not a readable AdmissionReview",
        ),
    ];
    for BadRequest { what, method, url, content_type: ct, body, status, says } in
        cases.into_iter().map(BadRequest::from)
    {
        let reply = client.request(method, &url, ct, body).await;
        assert_eq!(reply.status, status, "{what}: {}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.content_type, "application/json", "{what}");
        let v = reply.json();
        assert_eq!(
            (v["kind"].as_str(), v["status"].as_str(), v["code"].as_u64()),
            (Some("Status"), Some("Failure"), Some(status as u64)),
            "{what}"
        );
        assert!(v["message"].as_str().unwrap().contains(says), "{what}: {v}");
        guard.wait_for_log(what, |l| l["message"] == "request rejected" && l["detail"] == v["message"]);
    }
    // The server is still there and answering.
    assert_eq!(client.get(&guard.url("/healthz")).await.status, 200);
}

#[tokio::test]
async fn large_update_reviews_beyond_axum_default_limit_are_answered() {
    let guard = Guard::start(&[]);
    // 2 x ~1.5 MB: object and oldObject of an UPDATE, each with thousands of rules; axum's default limit is 2 MB.
    let rules: Vec<Value> = (0..12_000)
        .map(|i| json!({"from": [{"ipBlock": {"cidr": format!("10.{}.{}.0/24", i / 256, i % 256)}}], "ports": [{"port": 8000 + i % 1000}]}))
        .collect();
    let spec = json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": rules});
    let old = network_policy("production", "big", spec.clone());
    let mut open = spec.clone();
    open["ingress"].as_array_mut().unwrap().push(json!({}));
    let review = Review::network_policy("UPDATE", "production", "big")
        .object(network_policy("production", "big", open))
        .old(old);
    let body = serde_json::to_vec(&review.json()).unwrap();
    assert!(body.len() > 2 * 1024 * 1024, "{}", body.len());
    let r = answer(&guard, "/validate", &review).await;
    assert_eq!(r["allowed"], false);
    assert!(message(&r).contains("from default-deny with 12000 allow rules (Ingress)"), "{r}");
}

#[tokio::test]
async fn http2_and_http1_keep_alive_both_work() {
    let guard = Guard::start(&[]);
    let review = Review::network_policy("CREATE", "kube-system", "d").object(deny_all("kube-system", "d"));
    let h2 = guard.client_h2().review(&guard, "/validate", &review.json()).await;
    assert_eq!(h2.version, hyper::Version::HTTP_2);
    assert_eq!(response_of(&h2, &review)["allowed"], false);

    let h1 = guard.client();
    for _ in 0..3 {
        let reply = h1.review(&guard, "/validate", &review.json()).await;
        assert_eq!(reply.version, hyper::Version::HTTP_11);
        assert_eq!(response_of(&reply, &review)["allowed"], false);
    }
}

#[tokio::test]
async fn tls_is_1_2_or_later_and_the_dev_ca_is_where_the_log_says() {
    let guard = Guard::start(&[]);
    let line = guard.wait_for_log("about the dev certificate", |l| l["ca"].is_string());
    assert_eq!(line["ca"], "certs/ca.crt");
    assert_eq!(line["created"], true);
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::pem::PemObject::pem_file_iter(guard.ca_path()).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let config =
            rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(&[version])
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let reply = Https::with_config(config, Protocol::Http1).get(&guard.url("/healthz")).await;
        assert_eq!((reply.status, reply.body.as_slice()), (200, b"ok".as_slice()));
    }
}

#[tokio::test]
async fn health_and_readiness() {
    let guard = Guard::start(&[]);
    let client = guard.client();
    assert_eq!(client.get(&guard.url("/healthz")).await.status, 200);
    // Ready as soon as it serves when no namespace cache is needed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while client.get(&guard.url("/readyz")).await.status != 200 {
        assert!(std::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn metrics_count_what_was_sent() {
    let guard = Guard::start(&[]);
    let client = guard.client();
    let deny = Review::network_policy("CREATE", "kube-system", "d").object(deny_all("kube-system", "d"));
    for _ in 0..3 {
        client.review(&guard, "/validate", &deny.json()).await;
    }
    let excepted =
        Review::network_policy("DELETE", "production", "d").old(annotate(deny_all("production", "d"), EXC, "ok"));
    client.review(&guard, "/validate", &excepted.json()).await;
    let ns = Review::namespace("CREATE", "a").object(namespace_object("a", json!(null), json!(null)));
    client.review(&guard, "/mutate", &ns.json()).await;
    client.request("GET", &guard.url("/validate"), None, vec![]).await;
    client.request("POST", &guard.url("/validate"), Some("application/json"), b"nope".to_vec()).await;

    let unreadable = Review::network_policy("CREATE", "production", "d").object(json!({"spec": []}));
    client.review(&guard, "/validate", &unreadable.json()).await;

    let text = guard.metrics_text().await;
    let requests = "default_deny_guard_admission_requests_total";
    let np = [("webhook", "validate"), ("kind", "NetworkPolicy")];
    assert_eq!(
        metric(&text, requests, &[np[0], np[1], ("operation", "CREATE"), ("decision", "deny"), ("rule", "R1")]),
        3.0
    );
    assert_eq!(
        metric(&text, requests, &[np[0], np[1], ("operation", "DELETE"), ("decision", "allow"), ("rule", "R2")]),
        1.0
    );
    assert_eq!(
        metric(&text, requests, &[("webhook", "mutate"), ("kind", "Namespace"), ("decision", "patch"), ("rule", "R4")]),
        1.0
    );
    assert_eq!(metric(&text, requests, &[np[0], np[1], ("decision", "error"), ("rule", "none")]), 1.0);
    assert_eq!(metric(&text, "default_deny_guard_exceptions_total", &[("kind", "NetworkPolicy")]), 1.0);
    assert_eq!(metric(&text, "default_deny_guard_admission_duration_seconds_count", &[("webhook", "validate")]), 5.0);
    assert_eq!(
        metric(
            &text,
            "default_deny_guard_admission_duration_seconds_bucket",
            &[("webhook", "validate"), ("le", "+Inf")]
        ),
        5.0
    );
    assert_eq!(metric(&text, "default_deny_guard_invalid_requests_total", &[("reason", "method")]), 1.0);
    assert_eq!(metric(&text, "default_deny_guard_invalid_requests_total", &[("reason", "not_a_review")]), 1.0);
    assert_eq!(metric(&text, "default_deny_guard_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    let expiry = metric(&text, "default_deny_guard_certificate_expiry_timestamp_seconds", &[]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(expiry > now + 300.0 * 86_400.0, "the dev certificate lasts a year: {expiry}");
    for line in text.lines().filter(|l| l.starts_with("# HELP")) {
        assert!(line.split_whitespace().count() > 3, "every metric has help text: {line}");
    }
}

#[tokio::test]
async fn one_log_line_per_decision_with_the_fields_of_the_spec() {
    let guard = Guard::start(&[]);
    let review = Review::network_policy("DELETE", "production", "").old(deny_all("production", "default-deny-all"));
    guard.client().review(&guard, "/validate", &review.json()).await;
    let line = guard.wait_for_log("for the decision", |l| l["message"] == "admission decision");
    for (field, want) in [
        ("uid", json!(review.uid)),
        ("kind", json!("NetworkPolicy")),
        ("namespace", json!("production")),
        ("name", json!("default-deny-all")),
        ("operation", json!("DELETE")),
        ("user", json!(ADMIN)),
        ("decision", json!("deny")),
        ("rule", json!("R2")),
        ("level", json!("INFO")),
    ] {
        assert_eq!(line[field], want, "{field}: {line}");
    }
    assert!(line["latency_us"].is_u64(), "{line}");
    assert_eq!(guard.logs().iter().filter(|l| l["message"] == "admission decision").count(), 1);
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits_0() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut guard = Guard::start(&[]);
    let review = Review::network_policy("CREATE", "kube-system", "d").object(deny_all("kube-system", "d"));
    let body = serde_json::to_vec(&review.json()).unwrap();

    // An HTTP/1.1 request whose body is still arriving when SIGTERM comes.
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls_config(&guard.ca_path())));
    let tcp = tokio::net::TcpStream::connect(guard.webhook).await.unwrap();
    let mut tls = connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap();
    let head = format!(
        "POST /validate?timeout=10s HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.write_all(&body[..body.len() / 2]).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let pid = guard.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    guard.wait_for_log("about the shutdown", |l| l["message"].as_str().is_some_and(|m| m.starts_with("shutting down")));
    // New connections are refused once shutdown began.
    let refused = async {
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(guard.webhook).await.is_err() {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        false
    };
    assert!(refused.await, "the listener closes on SIGTERM");

    tls.write_all(&body[body.len() / 2..]).await.unwrap();
    tls.flush().await.unwrap();
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(&review.uid), "the in-flight review is answered: {text}");
    let status = guard.wait_exit(std::time::Duration::from_secs(30));
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn serve_refuses_a_bad_configuration_clearly() {
    let out = std::process::Command::new(BIN)
        .args(["serve", "--system-namespaces", "*", "--namespace-cache", "off"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("would make every namespace a system namespace"), "{stderr}");

    let out = std::process::Command::new(BIN)
        .args([
            "serve",
            "--tls-cert",
            "/nonexistent/tls.crt",
            "--tls-key",
            "/nonexistent/tls.key",
            "--namespace-cache",
            "off",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/tls.crt"));
}

#[tokio::test]
async fn during_the_shutdown_delay_it_is_unready_but_still_answers() {
    let mut guard = Guard::start(&["--shutdown-delay", "2s"]);
    let client = guard.client();
    let review = Review::network_policy("CREATE", "kube-system", "d").object(deny_all("kube-system", "d"));
    assert_eq!(response_of(&client.review(&guard, "/validate", &review.json()).await, &review)["allowed"], false);

    let pid = guard.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    guard.wait_for_log("about the delay", |l| l["message"].as_str().is_some_and(|m| m.starts_with("unready")));
    assert_eq!(client.get(&guard.url("/readyz")).await.status, 503, "unready at once");
    // The API server may still send a few reviews before it sees the endpoint go: they are answered, on the same
    // keep-alive connection and on new ones.
    for client in [&client, &guard.client()] {
        let reply = client.review(&guard, "/validate", &review.json()).await;
        assert_eq!(response_of(&reply, &review)["allowed"], false);
    }
    let status = guard.wait_exit(std::time::Duration::from_secs(30));
    assert!(status.success(), "{status}");
}

/// A body over `--max-body-bytes` (9 MB against the default 8 MiB) is answered 413 with a `Status` over HTTP/1.1 and
/// HTTP/2 alike. Over HTTP/2 the client is still sending when the answer goes out; the server must go on reading
/// the rest rather than reset the stream, which curl 7.x took for `(92) Stream error in the HTTP/2 framing layer`
/// and showed instead of the 413. So the HTTP/2 half sends frame by frame, as flow control allows: 8.5 MB, then it
/// reads the whole answer, then waits for a reset that must not come, then sends the rest.
#[tokio::test]
async fn an_oversize_body_is_answered_413_over_http1_and_http2() {
    use hyper::body::Bytes;
    use std::sync::Arc;
    use std::time::Duration;
    let guard = Guard::start(&[]);
    let body = vec![b' '; 9_000_000];
    let says = "the body is larger than --max-body-bytes (8388608 bytes)";

    let reply = guard.client().request("POST", &guard.url("/validate"), Some("application/json"), body.clone()).await;
    assert_eq!((reply.status, reply.version), (413, hyper::Version::HTTP_11));
    assert_eq!(reply.json()["message"], says);

    let mut config = tls_config(&guard.ca_path());
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(guard.webhook).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    let (mut h2, connection) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(connection);
    let request = hyper::Request::post(guard.url("/validate")).header("content-type", "application/json");
    let (response, mut send) = h2.send_request(request.body(()).unwrap(), false).unwrap();
    let mut rest = Bytes::from(body);
    let first = rest.split_to(8_500_000);
    let sent = send_under_flow_control(&mut send, first, false, 0).await;

    let response = tokio::time::timeout(Duration::from_secs(20), response).await.unwrap().unwrap();
    assert_eq!(response.status(), 413);
    let mut answer = response.into_body();
    let mut text = Vec::new();
    while let Some(data) = answer.data().await {
        text.extend_from_slice(&data.unwrap());
    }
    let status: Value = serde_json::from_slice(&text).unwrap();
    assert_eq!((status["kind"].as_str(), status["code"].as_u64()), (Some("Status"), Some(413)));
    assert_eq!(status["message"], says);

    // The answer is in; the stream must still be open for the rest of the body.
    let reset = tokio::time::timeout(Duration::from_millis(500), std::future::poll_fn(|cx| send.poll_reset(cx)));
    if let Ok(reason) = reset.await {
        panic!("the stream was reset after the answer, with {sent} of 9000000 bytes sent: {reason:?}");
    }
    assert_eq!(send_under_flow_control(&mut send, rest, true, sent).await, 9_000_000);
}

/// Sends `part` on an HTTP/2 stream as the peer's flow control allows; `sent` bytes went before it.
async fn send_under_flow_control(
    send: &mut h2::SendStream<hyper::body::Bytes>,
    mut part: hyper::body::Bytes,
    end: bool,
    mut sent: usize,
) -> usize {
    while !part.is_empty() {
        send.reserve_capacity(part.len().min(1 << 20));
        let poll = std::future::poll_fn(|cx| send.poll_capacity(cx));
        let granted = match tokio::time::timeout(std::time::Duration::from_secs(20), poll).await {
            Ok(Some(Ok(n))) => n,
            other => panic!("no more flow control after {sent} bytes: {other:?}"),
        };
        let chunk = part.split_to(granted.min(part.len()));
        sent += chunk.len();
        let last = end && part.is_empty();
        send.send_data(chunk, last).unwrap_or_else(|e| panic!("the stream closed after {sent} bytes: {e}"));
    }
    sent
}
