//! A mocked Kubernetes API for the reconciler's tests, kube's documented way: `tower_test::mock::pair()` behind
//! `kube::Client::new`. Each expected request is asserted exactly (method, path and query, content type, body) and
//! answered with the given status and body.

use axum::http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

pub type ApiHandle = mock::Handle<Request<Body>, Response<Body>>;

/// A namespace's metadata as the tests need it: name, labels, annotations, and a `resourceVersion` of "5".
pub fn namespace_meta(
    name: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
    let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        name: Some(name.into()),
        labels: Some(map(labels)),
        annotations: Some(map(annotations)),
        resource_version: Some("5".into()),
        ..Default::default()
    }
}

/// A client whose requests arrive at the returned handle.
pub fn client() -> (kube::Client, ApiHandle) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, "default"), handle)
}

/// One request the code under test must send, and the answer to give.
pub struct Expect {
    pub method: &'static str,
    /// Path and query, exactly.
    pub uri: String,
    pub content_type: Option<&'static str>,
    /// The exact body, when given; the body is returned to the test either way.
    pub body: Option<Value>,
    pub status: u16,
    pub answer: Value,
}

impl Expect {
    pub fn new(method: &'static str, uri: impl Into<String>) -> Expect {
        Expect { method, uri: uri.into(), content_type: None, body: None, status: 200, answer: json!({}) }
    }

    pub fn content_type(mut self, content_type: &'static str) -> Expect {
        self.content_type = Some(content_type);
        self
    }

    pub fn body(mut self, body: Value) -> Expect {
        self.body = Some(body);
        self
    }

    pub fn answer(mut self, status: u16, answer: Value) -> Expect {
        self.status = status;
        self.answer = answer;
        self
    }
}

/// Waits for the next request, checks it against `expect`, answers it, and returns the request's body.
pub async fn serve(handle: &mut ApiHandle, expect: Expect) -> Value {
    let (request, send) =
        handle.next_request().await.unwrap_or_else(|| panic!("no request; expected {} {}", expect.method, expect.uri));
    let (method, uri) = (request.method().to_string(), request.uri().to_string());
    assert_eq!((method.as_str(), uri.as_str()), (expect.method, expect.uri.as_str()), "request line");
    if let Some(want) = expect.content_type {
        let got = request.headers().get("content-type").and_then(|v| v.to_str().ok());
        assert_eq!(got, Some(want), "content type of {method} {uri}");
    }
    let bytes = request.into_body().collect().await.expect("request body").to_bytes();
    let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("a JSON body") };
    if let Some(want) = &expect.body {
        assert_eq!(&body, want, "body of {method} {uri}");
    }
    let response = Response::builder()
        .status(StatusCode::from_u16(expect.status).expect("a status"))
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(&expect.answer).expect("JSON")))
        .expect("a response");
    send.send_response(response);
    body
}

/// Asserts that no request is made: once every client is dropped, the handle sees the end.
pub async fn no_more_requests(mut handle: ApiHandle) {
    if let Some((request, _)) = handle.next_request().await {
        panic!("unexpected request {} {}", request.method(), request.uri());
    }
}

/// An API error answer, as the API server writes it.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code})
}
