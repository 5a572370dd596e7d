//! Load-test tooling, not a product feature: the floor server of `hack/load-test.sh`.
//!
//! The very stack of `serve` — the same accept loop, connection limits and hyper builders chosen by ALPN
//! ([`server::serve_https`]), the same rustls configuration ([`tls::server_config`]), the same body reading
//! ([`server::read_body`]) and an axum Router — but a handler that answers one fixed AdmissionReview without
//! parsing or deciding anything. What `serve` costs beyond this floor is the cost of our code.
//!
//! ```text
//! cargo run --release --example floor -- --tls-cert certs/tls.crt --tls-key certs/tls.key [--addr 127.0.0.1:0] \
//!     [--read-json]
//! ```
//! It logs `listening (HTTPS)` with the bound address as `serve --log-format json` does, and stops on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::Parser;
use default_deny_guard::drain::Drain;
use default_deny_guard::metrics::Metrics;
use default_deny_guard::server::{self, ConnectionLimits};
use default_deny_guard::telemetry;
use default_deny_guard::telemetry::LogFormat;
use default_deny_guard::tls::{self, CertificateStore, TlsFiles};
use tokio::net::TcpListener;

/// The fixed answer: an allowed v1 review, as small as a real one.
const ANSWER: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"00000000-0000-0000-0000-000000000000","allowed":true}}"#;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:0")]
    addr: SocketAddr,
    #[arg(long)]
    tls_cert: PathBuf,
    #[arg(long)]
    tls_key: PathBuf,
    /// As `serve --max-body-bytes`.
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Read the body as JSON with serde_json (every value checked, nothing kept) before the fixed answer: the
    /// least that any webhook reading the review must do, so that ours/this floor is the cost of our code
    /// beyond reading JSON.
    #[arg(long)]
    read_json: bool,
}

async fn answer(body: Body, limit: usize, read_json: bool) -> Response {
    // The body is read as `serve` reads it (same limit and timeout), then dropped unread or only checked.
    let Ok(bytes) = server::read_body(body, limit, Duration::from_secs(10)).await else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    if read_json && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
        return StatusCode::BAD_REQUEST.into_response();
    }
    ([(header::CONTENT_TYPE, "application/json")], ANSWER).into_response()
}

fn main() {
    let args = Args::parse();
    let _logs = telemetry::init(LogFormat::Json);
    // The same runtime as `serve` (src/main.rs).
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async move {
        let (store, _) = CertificateStore::open(TlsFiles { cert: args.tls_cert, key: args.tls_key }, &Metrics::new())
            .expect("serving certificate");
        let config = tls::server_config(store, None).expect("TLS configuration");
        let listener = TcpListener::bind(args.addr).await.expect("bind");
        tracing::info!(server = "webhook", addr = %listener.local_addr().expect("bound"), "listening (HTTPS)");
        let (limit, read_json) = (args.max_body_bytes, args.read_json);
        let app = Router::new()
            .route("/validate", post(move |body: Body| answer(body, limit, read_json)))
            .route("/mutate", post(move |body: Body| answer(body, limit, read_json)));
        let drain = Drain::new();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let serving = tokio::spawn(server::serve_https(
            listener,
            acceptor,
            app,
            ConnectionLimits::default(),
            drain.clone(),
            Duration::from_secs(5),
        ));
        default_deny_guard::signal::shutdown_signal().await;
        drain.close();
        let _ = serving.await;
    });
}
