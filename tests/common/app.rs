//! The webhook's router in-process (tower's `oneshot`), configured from the same flags as `serve`: for what the
//! handlers answer and log, which needs no TLS, port or signal. What does need them (TLS, HTTP/2, readiness,
//! SIGTERM, certificate reload, connection limits) starts the real binary ([`super::Guard`]).

use std::sync::{Arc, Mutex};

use axum::body::Body;
use clap::Parser;
use default_deny_guard::cli::{Cli, Command};
use default_deny_guard::metrics::Metrics;
use default_deny_guard::server::{self, AppState};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use tracing::instrument::WithSubscriber;

use super::{Reply, Review};

/// The router of `serve FLAGS...`, with no cluster, its metrics and its log lines (JSON, at info).
pub struct App {
    router: axum::Router,
    metrics: Metrics,
    logs: Arc<Mutex<Vec<u8>>>,
}

/// The log lines written so far.
#[derive(Clone)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl App {
    /// `flags` as `serve` takes them (`--warn R1`, `--max-body-bytes 65536`, ...); the namespace cache is off.
    pub fn start(flags: &[&str]) -> App {
        let argv = ["default-deny-guard", "serve", "--namespace-cache", "off"].into_iter().chain(flags.iter().copied());
        let Command::Serve(args) = Cli::try_parse_from(argv).unwrap().command else { unreachable!("serve") };
        let config = args.config().unwrap();
        let metrics = Metrics::new();
        let state = Arc::new(AppState::new(&config, Arc::new(()), metrics.clone()));
        state.set_ready(true);
        App { router: server::router(state), metrics, logs: Arc::default() }
    }

    pub async fn request(&self, method: &str, path: &str, content_type: Option<&str>, body: Vec<u8>) -> Reply {
        let mut req = hyper::Request::builder().method(method).uri(path);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let lines = Lines(self.logs.clone());
        // serve's JSON lines, at info whatever RUST_LOG says.
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(move || lines.clone())
            .finish();
        let resp =
            self.router.clone().oneshot(req.body(Body::from(body)).unwrap()).with_subscriber(subscriber).await.unwrap();
        let status = resp.status().as_u16();
        let version = resp.version();
        let content_type =
            resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes().to_vec();
        Reply { status, content_type, body, version }
    }

    /// POSTs a review as kube-apiserver does, with its `?timeout=10s`.
    pub async fn review(&self, path: &str, review: &Value) -> Reply {
        let uri = format!("{path}?timeout=10s");
        self.request("POST", &uri, Some("application/json"), serde_json::to_vec(review).unwrap()).await
    }

    /// The checked `response` of a review's answer.
    pub async fn answer(&self, path: &str, review: &Review) -> Value {
        super::response_of(&self.review(path, &review.json()).await, review)
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, None, Vec::new()).await
    }

    pub fn metrics_text(&self) -> String {
        self.metrics.render()
    }

    /// Log lines, parsed.
    pub fn logs(&self) -> Vec<Value> {
        let bytes = self.logs.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    /// The first log line that satisfies `pred`: every line of a request is written by the time it is answered.
    pub fn log_line(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let logs = self.logs();
        logs.iter().find(|l| pred(l)).cloned().unwrap_or_else(|| panic!("no log line {what}: {logs:#?}"))
    }
}
