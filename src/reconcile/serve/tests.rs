//! The long-running controller's wiring against a mocked API server that answers lists and keeps watches open:
//! readiness after both caches synced, the namespace gauge, and a deleted policy (seen through the policy watch)
//! mapped back to its namespace and recreated.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::client::Body;
use kube::runtime::events::Reporter;
use kube::runtime::reflector;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use super::*;
use crate::reconcile::controller::Timing;
use crate::reconcile::desired::{DnsAllowance, PolicyTemplate};
use crate::rules::Settings;

type Answer = Response<BoxBody<Bytes, Infallible>>;

fn full(value: Value) -> Answer {
    let body = Full::new(Bytes::from(serde_json::to_vec(&value).unwrap())).boxed();
    Response::builder().status(200).header("content-type", "application/json").body(body).unwrap()
}

/// A watch response that stays open; lines sent on the returned channel arrive as watch events.
fn watch_stream() -> (Answer, mpsc::UnboundedSender<Value>) {
    let (tx, rx) = mpsc::unbounded_channel::<Value>();
    let frames = futures::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_vec(&event).unwrap();
        line.push(b'\n');
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(line))), rx))
    });
    let body = BodyExt::boxed(StreamBody::new(frames));
    (Response::builder().status(200).header("content-type", "application/json").body(body).unwrap(), tx)
}

fn policy() -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": "default-deny-all", "namespace": "team-a", "uid": "uid-p", "resourceVersion": "5",
            "labels": {"app.kubernetes.io/managed-by": "default-deny-guard"}
        },
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
    })
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else { return String::new() };
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    let _ = stream.read_to_string(&mut out).await;
    out
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn watches_sync_then_a_deleted_policy_is_recreated_in_its_namespace() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Answer>();
    let client = kube::Client::new(service, "default");
    // The API server: lists, open watches, and every write reported to the test.
    let (writes_tx, mut writes) = mpsc::unbounded_channel::<(String, String, Value)>();
    let (policy_watch_tx, mut policy_watch) = mpsc::unbounded_channel::<mpsc::UnboundedSender<Value>>();
    tokio::spawn(async move {
        let mut open_watches = Vec::new();
        while let Some((request, send)) = handle.next_request().await {
            let (method, uri) = (request.method().to_string(), request.uri().to_string());
            let path = request.uri().path().to_owned();
            let watching = uri.contains("watch=true");
            let answer = match (method.as_str(), path.as_str(), watching) {
                ("GET", "/api/v1/namespaces", false) => full(json!({
                    "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
                    "metadata": {"resourceVersion": "10"},
                    "items": [
                        {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                         "metadata": {"name": "team-a", "uid": "uid-a", "resourceVersion": "3", "labels": {"default-deny": "enabled"}}},
                        {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                         "metadata": {"name": "kube-system", "uid": "uid-k", "resourceVersion": "2"}}
                    ]
                })),
                ("GET", "/apis/networking.k8s.io/v1/networkpolicies", false) => {
                    assert!(uri.contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Ddefault-deny-guard"), "{uri}");
                    full(json!({
                        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicyList",
                        "metadata": {"resourceVersion": "10"}, "items": [policy()]
                    }))
                }
                ("GET", "/apis/networking.k8s.io/v1/networkpolicies", true) => {
                    assert!(uri.contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Ddefault-deny-guard"), "{uri}");
                    let (answer, tx) = watch_stream();
                    let _ = policy_watch_tx.send(tx);
                    answer
                }
                ("GET", _, true) => {
                    let (answer, tx) = watch_stream();
                    open_watches.push(tx);
                    answer
                }
                _ => {
                    let bytes = request.into_body().collect().await.unwrap().to_bytes();
                    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                    let _ = writes_tx.send((method.clone(), uri.clone(), body));
                    let mut created = policy();
                    created["metadata"]["resourceVersion"] = json!("11");
                    let mut answer = full(created);
                    *answer.status_mut() = axum::http::StatusCode::CREATED;
                    answer
                }
            };
            send.send_response(answer);
        }
    });

    let metrics = Exporter::new();
    let reconcile_metrics = crate::reconcile::metrics::ReconcileMetrics::register(&metrics);
    let (policies, policy_writer) = reflector::store::<NetworkPolicy>();
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            Settings::default(),
            PolicyTemplate::new("Ingress".parse().unwrap(), DnsAllowance::default()),
            policies,
            reconcile_metrics.clone(),
            Timing::default(),
            Reporter { controller: "default-deny-guard".into(), instance: Some("r-0".into()) },
        )
        // As `reconcile` makes it: the policy cache is empty until the policy watch's first list.
        .with_unsynced_policies(),
    );
    let (health_addr, metrics_addr) = (free_port(), free_port());
    let endpoints = Endpoints { health_addr, metrics_addr, concurrency: 2, shutdown_timeout: Duration::from_secs(5) };
    let (stop, stopped) = oneshot::channel::<()>();
    let controller =
        tokio::spawn(run(client, ctx, policy_writer, metrics, reconcile_metrics, endpoints, None, async {
            let _ = stopped.await;
        }));

    eventually("ready", async || get(health_addr, "/readyz").await.starts_with("HTTP/1.1 200")).await;
    assert!(get(health_addr, "/healthz").await.starts_with("HTTP/1.1 200"));
    eventually("the gauge", async || {
        let text = get(metrics_addr, "/metrics").await;
        text.contains("default_deny_guard_namespaces{state=\"protected\"} 1")
            && text.contains("default_deny_guard_namespaces{state=\"exempt\"} 1")
            && text.contains("default_deny_guard_namespaces{state=\"unprotected\"} 0")
    })
    .await;
    let text = get(metrics_addr, "/metrics").await;
    assert!(text.contains("default_deny_guard_build_info"), "{text}");
    assert!(!text.contains("default_deny_guard_certificate_expiry"), "the webhook's metrics are not the reconciler's");
    // In sync at start: nothing was written.
    assert!(writes.try_recv().is_err(), "no write for a namespace already protected");

    // Someone deletes the policy: the policy watch reports it, and its namespace is reconciled.
    let watch = policy_watch.recv().await.unwrap();
    let mut deleted = policy();
    deleted["metadata"]["resourceVersion"] = json!("12");
    watch.send(json!({"type": "DELETED", "object": deleted})).unwrap();
    let (method, uri, body) = writes.recv().await.unwrap();
    assert_eq!(method, "PATCH");
    assert_eq!(
        uri,
        "/apis/networking.k8s.io/v1/namespaces/team-a/networkpolicies/default-deny-all?&fieldManager=default-deny-guard"
    );
    assert_eq!(body["spec"], json!({"podSelector": {}, "policyTypes": ["Ingress"], "ingress": []}));
    let (method, uri, event) = writes.recv().await.unwrap();
    assert_eq!((method.as_str(), uri.as_str()), ("POST", "/apis/events.k8s.io/v1/namespaces/default/events?"));
    assert_eq!(event["reason"], "PolicyRestored");
    assert_eq!(event["regarding"]["name"], "team-a");

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), controller).await.expect("stops").unwrap().unwrap();
}
