//! The reconcile against a mocked Kubernetes API: the exact requests for each situation.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt, stream};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMetaExt;
use kube::runtime::controller::{self, Action};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::watcher;
use serde_json::{Value, json};

use super::*;
use crate::metrics::Exporter;
use crate::reconcile::desired::DnsAllowance;
use crate::reconcile::mock::{self, ApiHandle, Expect, serve, status};

const POLICY_URL: &str = "/apis/networking.k8s.io/v1/namespaces/team-a/networkpolicies/default-deny-all";
const EVENTS_URL: &str = "/apis/events.k8s.io/v1/namespaces/default/events?";
const APPLY: &str = "application/apply-patch+yaml";
const ENABLED: (&str, &str) = ("default-deny", "enabled");
const EXCEPTION: &str = "default-deny-guard.io/exception";

fn now() -> Timestamp {
    "2026-06-30T12:00:00Z".parse().unwrap()
}

struct Harness {
    ctx: Arc<Context>,
    api: ApiHandle,
    metrics: Exporter,
}

/// A context over the mocked API, with `cached` as the managed-policy cache (synced).
fn harness(policy_types: &str, cached: Vec<NetworkPolicy>) -> Harness {
    let (client, api) = mock::client();
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for policy in cached {
        writer.apply_watcher_event(&watcher::Event::InitApply(policy));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let metrics = Exporter::new();
    let ctx = Context::new(
        client,
        Settings::default(),
        PolicyTemplate::new(policy_types.parse().unwrap(), DnsAllowance::default()),
        store,
        ReconcileMetrics::register(&metrics),
        Timing::default(),
        Reporter { controller: "default-deny-guard".into(), instance: Some("reconciler-0".into()) },
    )
    .with_clock(now);
    Harness { ctx: Arc::new(ctx), api, metrics }
}

fn namespace(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Arc<NamespaceMeta> {
    let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let meta = ObjectMeta {
        name: Some(name.into()),
        uid: Some(format!("uid-{name}")),
        resource_version: Some("100".into()),
        labels: Some(map(labels)),
        annotations: Some(map(annotations)),
        ..ObjectMeta::default()
    };
    Arc::new(meta.into_response_partial::<Namespace>())
}

/// The desired policy as the API server stores and returns it: `ingress: []` dropped, server fields added.
fn stored(spec: Value, resource_version: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "default-deny-all",
            "namespace": "team-a",
            "uid": "uid-policy",
            "resourceVersion": resource_version,
            "generation": 1,
            "labels": {"app.kubernetes.io/managed-by": "default-deny-guard"},
            "managedFields": [{"manager": "default-deny-guard", "operation": "Apply", "apiVersion": "networking.k8s.io/v1", "fieldsType": "FieldsV1", "fieldsV1": {}}]
        },
        "spec": spec,
    })
}

fn cached(spec: Value, resource_version: &str) -> NetworkPolicy {
    serde_json::from_value(stored(spec, resource_version)).unwrap()
}

fn deny_ingress() -> Value {
    json!({"podSelector": {}, "policyTypes": ["Ingress"]})
}

/// The apply body for team-a with `--policy-types Ingress`.
fn apply_body(resource_version: Option<&str>) -> Value {
    let mut metadata = json!({
        "name": "default-deny-all",
        "namespace": "team-a",
        "labels": {"app.kubernetes.io/managed-by": "default-deny-guard"},
    });
    if let Some(rv) = resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": metadata,
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []},
    })
}

/// The policy's server-side apply, as kube's `Api::patch` sends it (`force`: taking over fields another manager owns).
fn expect_apply(force: bool) -> Expect {
    let force = if force { "force=true&" } else { "" };
    Expect::new("PATCH", format!("{POLICY_URL}?&{force}fieldManager=default-deny-guard")).content_type(APPLY)
}

/// Serves the Event the reconciler publishes, checks what matters in it, and returns it.
async fn expect_event(api: &mut ApiHandle, type_: &str, reason: &str, action: &str) -> Value {
    let event = serve(api, Expect::new("POST", EVENTS_URL).answer(201, json!({}))).await;
    assert_eq!(event["type"], type_);
    assert_eq!(event["reason"], reason);
    assert_eq!(event["action"], action);
    assert_eq!(event["reportingController"], "default-deny-guard");
    assert_eq!(event["reportingInstance"], "reconciler-0");
    assert_eq!(event["regarding"]["kind"], "Namespace");
    assert_eq!(event["regarding"]["apiVersion"], "v1");
    assert_eq!(event["regarding"]["name"], "team-a");
    assert_eq!(event["related"]["kind"], "NetworkPolicy");
    assert_eq!(event["related"]["name"], "default-deny-all");
    assert_eq!(event["related"]["namespace"], "team-a");
    event
}

fn counted(metrics: &Exporter, line: &str) -> bool {
    metrics.render().lines().any(|l| l == line)
}

/// Runs one reconcile of `ns` while the test answers the API; returns its result after `answer` is done.
async fn reconcile_with<F>(h: Harness, ns: Arc<NamespaceMeta>, answer: F) -> (Result<Action, ReconcileError>, Exporter)
where
    F: AsyncFnOnce(&mut ApiHandle),
{
    let Harness { ctx, mut api, metrics } = h;
    let task = tokio::spawn(reconcile(ns, ctx));
    answer(&mut api).await;
    let result = task.await.expect("the reconcile finished");
    mock::no_more_requests(api).await;
    (result, metrics)
}

#[tokio::test]
async fn new_namespace_gets_the_policy_by_server_side_apply_and_an_event() {
    let h = harness("Ingress", vec![]);
    let (result, metrics) = reconcile_with(h, namespace("team-a", &[ENABLED], &[]), async |api| {
        serve(api, expect_apply(false).body(apply_body(None)).answer(201, stored(deny_ingress(), "1"))).await;
        let event = expect_event(api, "Normal", "PolicyCreated", "Create").await;
        assert_eq!(event["note"], "Created NetworkPolicy default-deny-all (denies all ingress).");
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(600)));
    assert!(counted(&metrics, r#"default_deny_guard_reconcile_total{result="created"} 1"#));
}

#[tokio::test]
async fn egress_deny_applies_the_dns_allowance() {
    let h = harness("Ingress,Egress", vec![]);
    let (result, _) = reconcile_with(h, namespace("team-a", &[ENABLED], &[]), async |api| {
        let body = serve(
            api,
            expect_apply(false)
                .answer(201, stored(json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}), "1")),
        )
        .await;
        assert_eq!(body["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
        assert_eq!(
            body["spec"]["egress"],
            json!([{
                "to": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}
                }],
                "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
            }])
        );
        let event = expect_event(api, "Normal", "PolicyCreated", "Create").await;
        assert_eq!(
            event["note"],
            "Created NetworkPolicy default-deny-all (denies all ingress and all egress except DNS)."
        );
    })
    .await;
    result.unwrap();
}

#[tokio::test]
async fn deleted_policy_is_recreated_and_reported_as_restored() {
    let h = harness("Ingress", vec![]);
    // What the policy watch reports when the policy is deleted.
    h.ctx.policy_deleted("team-a");
    let (result, metrics) = reconcile_with(h, namespace("team-a", &[ENABLED], &[]), async |api| {
        serve(api, expect_apply(false).body(apply_body(None)).answer(201, stored(deny_ingress(), "9"))).await;
        let event = expect_event(api, "Normal", "PolicyRestored", "Recreate").await;
        assert_eq!(event["note"], "Recreated NetworkPolicy default-deny-all, which was deleted (denies all ingress).");
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(600)));
    assert!(counted(&metrics, r#"default_deny_guard_reconcile_total{result="restored"} 1"#));
}

#[tokio::test]
async fn drifted_policy_is_restored_by_a_forced_apply_conditional_on_the_version_seen() {
    let weakened = json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]});
    let h = harness("Ingress", vec![cached(weakened, "41")]);
    let (result, metrics) = reconcile_with(h, namespace("team-a", &[ENABLED], &[]), async |api| {
        serve(api, expect_apply(true).body(apply_body(Some("41"))).answer(200, stored(deny_ingress(), "42"))).await;
        let event = expect_event(api, "Normal", "PolicyRestored", "Restore").await;
        assert_eq!(
            event["note"],
            "Restored NetworkPolicy default-deny-all, which had been changed (spec.ingress): denies all ingress."
        );
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(600)));
    assert!(counted(&metrics, r#"default_deny_guard_reconcile_total{result="restored"} 1"#));
}

#[tokio::test]
async fn drift_in_fields_that_another_manager_owns_is_replaced() {
    // A narrowed podSelector set by `kubectl edit`: the forced apply does not remove matchLabels it never owned.
    let narrowed = json!({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]});
    let h = harness("Ingress", vec![cached(narrowed.clone(), "41")]);
    let (result, _) = reconcile_with(h, namespace("team-a", &[ENABLED], &[]), async |api| {
        serve(api, expect_apply(true).body(apply_body(Some("41"))).answer(200, stored(narrowed.clone(), "42"))).await;
        let mut replacement = stored(json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []}), "42");
        replacement["metadata"].as_object_mut().unwrap().remove("managedFields");
        serve(
            api,
            Expect::new("PUT", format!("{POLICY_URL}?&fieldManager=default-deny-guard"))
                .content_type("application/json")
                .body(replacement)
                .answer(200, stored(deny_ingress(), "43")),
        )
        .await;
        let event = expect_event(api, "Normal", "PolicyRestored", "Restore").await;
        assert!(event["note"].as_str().unwrap().contains("(spec.podSelector)"));
    })
    .await;
    result.unwrap();
}

#[tokio::test]
async fn a_conditional_apply_that_lost_a_race_is_retried_shortly_without_an_event() {
    let h =
        harness("Ingress", vec![cached(json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]}), "41")]);
    let (result, metrics) = reconcile_with(h, namespace("team-a", &[ENABLED], &[]), async |api| {
        let conflict = status(
            409,
            "Conflict",
            "Operation cannot be fulfilled on networkpolicies.networking.k8s.io \"default-deny-all\": the object has \
             been modified; please apply your changes to the latest version and try again",
        );
        serve(api, expect_apply(true).answer(409, conflict)).await;
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(1)));
    assert!(counted(&metrics, r#"default_deny_guard_reconcile_total{result="superseded"} 1"#));
}

#[tokio::test]
async fn a_policy_of_that_name_with_other_values_is_left_alone_with_a_warning() {
    let h = harness("Ingress", vec![]);
    let (result, metrics) = reconcile_with(h, namespace("team-a", &[ENABLED], &[]), async |api| {
        let mut conflict = status(
            409,
            "Conflict",
            "Apply failed with 1 conflict: conflict with \"kubectl-client-side-apply\" using networking.k8s.io/v1: .spec.ingress",
        );
        conflict["details"] = json!({"causes": [{"reason": "FieldManagerConflict", "message": "conflict with \"kubectl-client-side-apply\"", "field": ".spec.ingress"}]});
        serve(
            api,
            expect_apply(false).body(apply_body(None)).answer(409, conflict),
        )
        .await;
        let event = serve(api, Expect::new("POST", EVENTS_URL).answer(201, json!({}))).await;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "PolicyConflict");
        assert!(event["note"].as_str().unwrap().contains("kubectl-client-side-apply"));
    })
    .await;
    assert_eq!(result.unwrap(), Action::requeue(Duration::from_secs(600)));
    assert!(counted(&metrics, r#"default_deny_guard_reconcile_total{result="conflict"} 1"#));
}

#[tokio::test]
async fn a_policy_already_there_outside_the_cache_is_adopted_without_an_event() {
    let h = harness("Ingress", vec![]);
    let (result, metrics) = reconcile_with(h, namespace("team-a", &[ENABLED], &[]), async |api| {
        serve(api, expect_apply(false).body(apply_body(None)).answer(200, stored(deny_ingress(), "12"))).await;
    })
    .await;
    result.unwrap();
    assert!(counted(&metrics, r#"default_deny_guard_reconcile_total{result="in_sync"} 1"#));
}

/// Situations in which the reconciler must not call the API at all.
#[tokio::test]
async fn no_request_for_protected_exempt_system_unlabelled_or_terminating_namespaces() {
    let good = || cached(deny_ingress(), "7");
    let weakened = || cached(json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]}), "7");
    let mut terminating = (*namespace("team-a", &[ENABLED], &[])).clone();
    terminating.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now()));
    type Row<'a> = (&'a str, Arc<NamespaceMeta>, Vec<NetworkPolicy>, Action, &'a str);
    let rows: Vec<Row> = vec![
        (
            "in sync",
            namespace("team-a", &[ENABLED], &[]),
            vec![good()],
            Action::requeue(Duration::from_secs(600)),
            "in_sync",
        ),
        (
            "exception on the namespace",
            namespace("team-a", &[ENABLED], &[(EXCEPTION, "legacy CRM, SEC-789")]),
            vec![],
            Action::requeue(Duration::from_secs(600)),
            "exempt",
        ),
        (
            // Opted out with the policy still there, changed: left as it is (the reconciler never deletes).
            "exception, policy left behind",
            namespace("team-a", &[], &[(EXCEPTION, "moving to Cilium policies")]),
            vec![weakened()],
            Action::requeue(Duration::from_secs(600)),
            "exempt",
        ),
        (
            // Looked at again just after the exception expires, when that is sooner than the resync.
            "exception that expires in 5 minutes",
            namespace(
                "team-a",
                &[ENABLED],
                &[(EXCEPTION, "load test"), ("default-deny-guard.io/exception-expires", "2026-06-30T12:05:00Z")],
            ),
            vec![],
            Action::requeue(Duration::from_secs(301)),
            "exempt",
        ),
        (
            "system namespace, even labelled",
            namespace("kube-system", &[ENABLED], &[]),
            vec![],
            Action::requeue(Duration::from_secs(600)),
            "exempt",
        ),
        (
            "not labelled",
            namespace("team-a", &[], &[]),
            vec![],
            Action::requeue(Duration::from_secs(600)),
            "not_enabled",
        ),
        ("being deleted", Arc::new(terminating), vec![], Action::await_change(), "terminating"),
    ];
    for (what, ns, cache, want, result) in rows {
        let h = harness("Ingress", cache);
        let (got, metrics) = reconcile_with(h, ns, async |_| {}).await;
        assert_eq!(got.unwrap(), want, "{what}");
        assert!(counted(&metrics, &format!(r#"default_deny_guard_reconcile_total{{result="{result}"}} 1"#)), "{what}");
    }
}

#[tokio::test]
async fn api_errors_fail_the_reconcile_and_are_retried_with_exponential_backoff() {
    let h = harness("Ingress", vec![]);
    let Harness { ctx, mut api, metrics } = h;
    let ns = namespace("team-a", &[ENABLED], &[]);
    let apply = || expect_apply(false).body(apply_body(None));

    // Each failure doubles the delay: 1 s, 2 s, 4 s.
    for (attempt, want) in [(1, 1), (2, 2), (3, 4)] {
        let task = tokio::spawn(reconcile(ns.clone(), ctx.clone()));
        serve(&mut api, apply().answer(500, status(500, "InternalError", "etcdserver: request timed out"))).await;
        let error = task.await.unwrap().unwrap_err();
        assert_eq!(error.reason(), "server_error", "attempt {attempt}");
        assert!(error.to_string().contains("team-a/default-deny-all"), "{error}");
        assert_eq!(error_policy(ns.clone(), &error, ctx.clone()), Action::requeue(Duration::from_secs(want)));
    }
    // 429 with Retry-After: never sooner than the API server asks.
    let task = tokio::spawn(reconcile(ns.clone(), ctx.clone()));
    let mut throttled = status(429, "TooManyRequests", "too many requests");
    throttled["details"] = json!({"retryAfterSeconds": 30});
    serve(&mut api, apply().answer(429, throttled)).await;
    let error = task.await.unwrap().unwrap_err();
    assert_eq!((error.reason(), error.retry_after()), ("throttled", Some(Duration::from_secs(30))));
    assert_eq!(error_policy(ns.clone(), &error, ctx.clone()), Action::requeue(Duration::from_secs(30)));
    // Unreachable: the connection itself fails.
    let task = tokio::spawn(reconcile(ns.clone(), ctx.clone()));
    let (_, send) = api.next_request().await.unwrap();
    send.send_error(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"));
    let error = task.await.unwrap().unwrap_err();
    assert_eq!(error.reason(), "unreachable");
    assert_eq!(error_policy(ns.clone(), &error, ctx.clone()), Action::requeue(Duration::from_secs(16)));
    // A success resets the backoff.
    let task = tokio::spawn(reconcile(ns.clone(), ctx.clone()));
    serve(&mut api, apply().answer(201, stored(deny_ingress(), "1"))).await;
    expect_event(&mut api, "Normal", "PolicyCreated", "Create").await;
    task.await.unwrap().unwrap();
    let forbidden = ReconcileError::Apply {
        namespace: "team-a".into(),
        source: kube::Error::Api(kube::core::Status::failure("forbidden", "Forbidden").with_code(403).boxed()),
    };
    assert_eq!(error_policy(ns.clone(), &forbidden, ctx.clone()), Action::requeue(Duration::from_secs(1)));
    assert!(counted(&metrics, r#"default_deny_guard_reconcile_errors_total{reason="server_error"} 3"#));
    assert!(counted(&metrics, r#"default_deny_guard_reconcile_errors_total{reason="throttled"} 1"#));
    assert!(counted(&metrics, r#"default_deny_guard_reconcile_errors_total{reason="unreachable"} 1"#));
    assert!(counted(&metrics, r#"default_deny_guard_reconcile_total{result="error"} 5"#));
}

#[test]
fn backoff_doubles_up_to_the_maximum() {
    let timing = Timing::default();
    let delays: Vec<u64> = (1..=12).map(|n| timing.backoff(n, None).as_secs()).collect();
    assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]);
    assert_eq!(timing.backoff(u32::MAX, None), Duration::from_secs(300));
    assert_eq!(timing.backoff(1, Some(Duration::from_secs(7))), Duration::from_secs(7));
}

#[tokio::test]
async fn a_reconcile_that_hangs_times_out() {
    let Harness { ctx, mut api, .. } = harness("Ingress", vec![]);
    let mut ctx = Arc::into_inner(ctx).unwrap();
    ctx.timing.timeout = Duration::from_millis(50);
    let ctx = Arc::new(ctx);
    let task = tokio::spawn(reconcile(namespace("team-a", &[ENABLED], &[]), ctx.clone()));
    // The API server takes the request and never answers.
    let (_request, _pending) = api.next_request().await.unwrap();
    let error = task.await.unwrap().unwrap_err();
    assert_eq!(error.reason(), "timeout");
    assert_eq!(error_policy(namespace("team-a", &[], &[]), &error, ctx), Action::requeue(Duration::from_secs(1)));
}

/// The whole loop as the controller runs it: kube's applier calls the reconcile, the error policy requeues it
/// after the backoff, and the retry succeeds. Time is paused, so the backoff passes instantly.
#[tokio::test(start_paused = true)]
async fn the_applier_retries_a_failed_namespace_after_the_backoff() {
    let Harness { ctx, mut api, .. } = harness("Ingress", vec![]);
    let (namespaces, mut writer) = reflector::store::<NamespaceMeta>();
    writer.apply_watcher_event(&watcher::Event::Init);
    writer.apply_watcher_event(&watcher::Event::InitApply((*namespace("team-a", &[ENABLED], &[])).clone()));
    writer.apply_watcher_event(&watcher::Event::InitDone);
    let queue = stream::iter([Ok::<_, std::convert::Infallible>(ObjectRef::<NamespaceMeta>::new("team-a"))])
        .chain(stream::pending());
    let mut results = pin!(controller::applier(
        |ns, ctx| Box::pin(reconcile(ns, ctx)),
        error_policy,
        ctx.clone(),
        namespaces,
        queue,
        controller::Config::default(),
    ));
    let apply = || expect_apply(false).body(apply_body(None));

    let driver = async {
        serve(
            &mut api,
            apply()
                .answer(503, status(503, "ServiceUnavailable", "the server is currently unable to handle the request")),
        )
        .await;
        let failed_at = tokio::time::Instant::now();
        serve(&mut api, apply().answer(201, stored(deny_ingress(), "1"))).await;
        let waited = failed_at.elapsed();
        expect_event(&mut api, "Normal", "PolicyCreated", "Create").await;
        waited
    };
    let reconciles = async {
        let first = results.next().await.unwrap();
        assert!(
            matches!(first, Err(controller::Error::ReconcilerFailed(ReconcileError::Apply { .. }, _))),
            "{first:?}"
        );
        let second = results.next().await.unwrap().expect("the retry succeeds");
        assert_eq!(second.0.name, "team-a");
    };
    let (waited, ()) = tokio::join!(driver, reconciles);
    assert!(waited >= Duration::from_secs(1), "retried after the backoff, not at once: {waited:?}");
}
