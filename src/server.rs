//! `serve`: the HTTPS webhook and the plain-HTTP metrics endpoint, thin adapters around [`crate::admission`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::admission::{self, NamespaceLookup, Webhook};
use crate::certs;
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::namespaces::NamespaceCache;
use crate::rules::Settings;
use crate::signal::shutdown_signal;
use crate::tls::{self, CertificateStore, TlsFiles};

/// The process's allocator. A review allocates a few dozen small blocks (the decoded fields, the decision, the
/// answer) and frees them at once; glibc's per-thread cache holds 7 blocks of a size, so most of them went through
/// its locked slow path, and the next large block (the TLS record of the next body) through a consolidation of
/// them (callgrind, `hack/callgrind-servers.sh`). Declared here, in the library, so that the load test's floor
/// servers (`examples/floor.rs`) run on it too and stay the very same stack. Not under cargo-fuzz, whose
/// sanitizers watch the system allocator.
#[cfg(not(fuzzing))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What `serve` is asked to do: the command line's flags, as plain values.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The webhook's HTTPS address and the metrics' plain-HTTP one (port 0: any free port, logged).
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    /// The serving certificate and key; without them (or with `dev`), a development pair under `dev_cert_dir`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub dev: bool,
    pub dev_cert_dir: PathBuf,
    /// Answer only clients with a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
    pub tls_reload_interval: Duration,
    pub settings: Settings,
    pub max_body_bytes: usize,
    pub namespace_cache: NamespaceCacheMode,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_delay: Duration,
    pub shutdown_timeout: Duration,
    /// Plain allows logged at info too.
    pub log_allowed: bool,
}

/// Whether `serve` watches namespaces through the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceCacheMode {
    /// When a cluster configuration is found (in-cluster, or KUBECONFIG / ~/.kube/config).
    Auto,
    /// Always: fail to start without a cluster configuration.
    On,
    /// Never: teardown is recognised by the trusted deleters' names only.
    Off,
}

/// The limits that keep slow or stalled clients from starving the API server's requests.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time for a TLS handshake.
    pub handshake: Duration,
    /// Time a connection may wait for (the head of) its next request.
    pub idle: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    /// The defaults of `serve`'s flags.
    fn default() -> Self {
        ConnectionLimits { handshake: Duration::from_secs(5), idle: Duration::from_secs(120), max_connections: 1024 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Cert(#[from] certs::CertError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("namespace cache: {0}")]
    Kube(String),
}

/// What every handler shares: the configuration's part that the handlers read, and the shared parts.
pub struct AppState {
    settings: Settings,
    namespaces: Arc<dyn NamespaceLookup>,
    metrics: Metrics,
    ready: AtomicBool,
    drain: Drain,
    /// `--client-ca` given: the admission endpoints answer only clients with a verified certificate.
    client_cert_required: bool,
    max_body_bytes: usize,
    request_timeout: Duration,
    /// `--log-allowed`: plain allows logged at info too.
    log_allowed: bool,
}

impl AppState {
    /// The handlers' state for `config`, looking namespaces up in `namespaces` and counting into `metrics`;
    /// unready (`/readyz` 503) until [`AppState::set_ready`].
    pub fn new(config: &ServeConfig, namespaces: Arc<dyn NamespaceLookup>, metrics: Metrics) -> AppState {
        AppState {
            settings: config.settings.clone(),
            namespaces,
            metrics,
            ready: AtomicBool::new(false),
            drain: Drain::new(),
            client_cert_required: config.client_ca.is_some(),
            max_body_bytes: config.max_body_bytes,
            request_timeout: config.request_timeout,
            log_allowed: config.log_allowed,
        }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
}

/// Whether this connection's client presented a certificate that the client CA verified.
#[derive(Debug, Clone, Copy)]
pub struct ClientCertificate(pub bool);

pub async fn run(args: ServeConfig) -> Result<(), ServeError> {
    let settings = &args.settings;
    let metrics = Metrics::new();

    let files = match (&args.tls_cert, &args.tls_key, args.dev) {
        (Some(cert), Some(key), false) => TlsFiles { cert: cert.clone(), key: key.clone() },
        _ => {
            let dev = certs::ensure_dev(&args.dev_cert_dir)?;
            tracing::info!(
                cert = %dev.cert.display(),
                key = %dev.key.display(),
                ca = %dev.ca.display(),
                created = dev.created,
                "serving a development certificate (localhost, 127.0.0.1, ::1); clients trust it through the CA file"
            );
            TlsFiles { cert: dev.cert, key: dev.key }
        }
    };
    let (store, contents) = CertificateStore::open(files, &metrics)?;
    let tls_config = tls::server_config(store.clone(), args.client_ca.as_deref())?;
    tokio::spawn(store.watch(contents, args.tls_reload_interval, metrics.clone()));

    let (namespaces, cache) = namespace_lookup(&args, settings).await?;
    let state = Arc::new(AppState::new(&args, namespaces, metrics.clone()));

    let webhook = bind(args.addr).await?;
    let metrics_listener = bind(args.metrics_addr).await?;
    tracing::info!(server = "webhook", addr = %webhook.local_addr().expect("bound"), "listening (HTTPS)");
    tracing::info!(server = "metrics", addr = %metrics_listener.local_addr().expect("bound"), "listening (HTTP)");

    // Ready once serving, and once the namespace cache has synced when label-selected system namespaces need it.
    {
        let state = state.clone();
        let wait_for = cache.filter(|_| state.settings.system_namespaces.label().is_some());
        tokio::spawn(async move {
            if let Some(cache) = wait_for {
                cache.synced().await;
                tracing::info!(namespaces = cache.len(), "namespace cache synced");
            }
            state.ready.store(true, Ordering::SeqCst);
        });
    }

    let app = router(state.clone());
    let limits = ConnectionLimits {
        handshake: args.handshake_timeout,
        idle: args.idle_timeout,
        max_connections: args.max_connections.max(1),
    };
    let acceptor = TlsAcceptor::from(Arc::new(tls_config));
    let drain = state.drain.clone();
    let https = tokio::spawn(serve_https(webhook, acceptor, app, limits, drain.clone(), args.shutdown_timeout));
    let metrics_app = metrics.exporter().clone().router();
    let metrics_stop = drain.clone();
    let metrics_server = tokio::spawn(async move {
        let _ = axum::serve(metrics_listener, metrics_app)
            .with_graceful_shutdown(async move { metrics_stop.closed().await })
            .await;
    });

    shutdown_signal().await;
    // Unready first, so that the Service stops routing here, and every client told to move; serve on for the delay
    // while the API server catches up; then stop accepting and finish (src/drain.rs).
    drain.begin();
    if !args.shutdown_delay.is_zero() {
        tracing::info!(delay = ?args.shutdown_delay, "unready: serving on until the endpoint is gone");
        tokio::select! {
            _ = tokio::time::sleep(args.shutdown_delay) => {}
            _ = shutdown_signal() => tracing::info!("second signal: not waiting any longer"),
        }
    }
    tracing::info!(timeout = ?args.shutdown_timeout, "shutting down: draining in-flight requests");
    drain.close();
    let _ = https.await;
    let _ = tokio::time::timeout(Duration::from_secs(1), metrics_server).await;
    tracing::info!("stopped");
    Ok(())
}

/// The namespace cache, if the cluster is reachable and the mode wants it; otherwise names only.
async fn namespace_lookup(
    args: &ServeConfig,
    settings: &Settings,
) -> Result<(Arc<dyn NamespaceLookup>, Option<NamespaceCache>), ServeError> {
    let needs_cache = settings.system_namespaces.label().is_some();
    if args.namespace_cache == NamespaceCacheMode::Off {
        if needs_cache {
            return Err(ServeError::Config(
                "--system-namespace-label needs the namespace cache; it cannot be combined with --namespace-cache off"
                    .into(),
            ));
        }
        tracing::info!("namespace cache off: teardown is recognised by the trusted deleters' names only");
        return Ok((Arc::new(()), None));
    }
    let config = match kube::Config::infer().await {
        Ok(config) => config,
        Err(e) if args.namespace_cache == NamespaceCacheMode::Auto && !needs_cache => {
            tracing::info!(
                reason = %e,
                "no cluster configuration: namespace cache off; teardown is recognised by the trusted deleters' names only"
            );
            return Ok((Arc::new(()), None));
        }
        Err(e) => return Err(ServeError::Kube(format!("no cluster configuration (in-cluster or KUBECONFIG): {e}"))),
    };
    let cluster = config.cluster_url.to_string();
    let client = kube::Client::try_from(config).map_err(|e| ServeError::Kube(e.to_string()))?;
    let (cache, watch) = NamespaceCache::start(client);
    tokio::spawn(watch);
    tracing::info!(cluster, "namespace cache watching namespaces");
    Ok((Arc::new(cache.clone()), Some(cache)))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { addr, source })
}

/// Accepts TLS connections until `drain` closes the listener, then lets in-flight requests finish (up to
/// `timeout`), with the drain's hooks on every connection and answer (src/drain.rs): HTTP/1.1 or HTTP/2 as ALPN
/// settled, every connection and handshake under `limits`, each request handed to `app` with a
/// [`ClientCertificate`] extension. `serve` runs the webhook with it; the load test's floor server
/// (`examples/floor.rs`) runs a fixed-answer `app` with it, so that the two differ only in the handlers.
pub async fn serve_https(
    listener: TcpListener,
    tls: TlsAcceptor,
    app: Router,
    limits: ConnectionLimits,
    drain: Drain,
    timeout: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's header timeout also runs while a keep-alive connection waits for its next request: it is the idle
    // timeout too.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.idle).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).keep_alive_interval(Duration::from_secs(30));
    // The protocol is the one ALPN settled. Sniffing the first bytes instead would wait, untimed, for a client that
    // sends none, and would cost a read on every new connection.
    let (http1, http2) = (builder.clone().http1_only(), builder.http2_only());
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut incoming = drain.incoming(listener);
    loop {
        // At the limit, stop accepting: new connections wait in the kernel's backlog rather than being refused.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("the semaphore is never closed"),
            _ = drain.closed() => match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (tcp, peer) = match incoming.next().await {
            Some(Ok(conn)) => conn,
            Some(Err(e)) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            None => break,
        };
        let (tls, app, connection) = (tls.clone(), app.clone(), drain.connection());
        let (http1, http2) = (http1.clone(), http2.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            let mut stream = match tokio::time::timeout(limits.handshake, tls.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let session = stream.get_ref().1;
            let verified = ClientCertificate(session.peer_certificates().is_some_and(|c| !c.is_empty()));
            let h2 = session.alpn_protocol() == Some(b"h2");
            // Which protocol each client (the API server) settles on, and how often it opens a connection.
            tracing::debug!(
                %peer,
                alpn = session.alpn_protocol().map(String::from_utf8_lossy).as_deref().unwrap_or("none"),
                http = if h2 { "HTTP/2" } else { "HTTP/1.1" },
                tls = session.protocol_version().map(|v| format!("{v:?}")).as_deref().unwrap_or("unknown"),
                "connection accepted"
            );
            let builder = if h2 {
                // HTTP/2 has no header timeout: a client that never sends its preface is cut off here. A client
                // that sent its preface (and a whole request) in the handshake's last flight has it decrypted
                // and waiting in rustls already, and the socket turns readable no more: without this check the
                // connection hung until the idle timeout (found by the load test, examples/loadgen.rs --http2).
                let buffered =
                    stream.get_mut().1.process_new_packets().is_ok_and(|io| io.plaintext_bytes_to_read() > 0);
                let first_bytes = stream.get_ref().0.readable();
                if !buffered && !matches!(tokio::time::timeout(limits.idle, first_bytes).await, Ok(Ok(()))) {
                    tracing::debug!(%peer, "HTTP/2 connection idle before its first request");
                    return;
                }
                http2
            } else {
                http1
            };
            let answers = connection.answers(h2);
            let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(verified);
                // The request line as the client sent it: kube-apiserver appends `?timeout=<timeoutSeconds>s`.
                tracing::debug!(%peer, method = %req.method(), uri = %req.uri(), version = ?req.version(), "request");
                let (answer, answers) = (app.clone().oneshot(req), answers.clone());
                async move { answer.await.map(|response| answers.mark(response)) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.serve(conn.into_owned(), h2, limits.handshake).await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(incoming);
    if !drain.finished(timeout).await {
        tracing::warn!(?timeout, "some connections were still busy at the end of the shutdown timeout");
    }
}

/// The webhook's endpoints (`POST /validate`, `POST /mutate`, `GET /healthz`, `GET /readyz`) as a service of
/// their own: `serve` hands it each request of each TLS connection; tests call it in-process.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/mutate", post(mutate))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(|State(state): State<Arc<AppState>>, uri: axum::http::Uri| async move {
            state.metrics.invalid_request("not_found");
            let message =
                format!("no such endpoint {}: the webhook serves POST /validate and POST /mutate", uri.path());
            bad_request(StatusCode::NOT_FOUND, "NotFound", message)
        })
        .method_not_allowed_fallback(|State(state): State<Arc<AppState>>, method: axum::http::Method| async move {
            state.metrics.invalid_request("method");
            let message = format!("method {method} not allowed: admission reviews are sent with POST");
            bad_request(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
        })
        .with_state(state)
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.ready.load(Ordering::SeqCst) && state.drain.serving() {
        "ok".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

// The handlers take the request whole: axum's `HeaderMap` and `Extension` extractors would clone the headers and
// the extension for every review.
async fn validate(State(state): State<Arc<AppState>>, request: axum::extract::Request) -> Response {
    admit(&state, Webhook::Validate, request).await
}

async fn mutate(State(state): State<Arc<AppState>>, request: axum::extract::Request) -> Response {
    admit(&state, Webhook::Mutate, request).await
}

/// Why a body could not be read.
pub enum BodyError {
    /// Over the limit; the unread rest, for [`drain`].
    TooLarge(Body),
    TimedOut,
    Broken(String),
}

/// Reads the body, at most `limit` bytes and within `timeout`.
pub async fn read_body(mut body: Body, limit: usize, timeout: Duration) -> Result<Bytes, BodyError> {
    let limited = http_body_util::Limited::new(&mut body, limit);
    let read = tokio::time::timeout(timeout, limited.collect()).await;
    match read {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(BodyError::TooLarge(body)),
        Ok(Err(e)) => Err(BodyError::Broken(e.to_string())),
        Err(_) => Err(BodyError::TimedOut),
    }
}

/// Reads and discards the rest of a body that was too large, at most `limit` more bytes and within `timeout`, while
/// the 413 goes out. Why: over HTTP/2, a server that answers before the request's end and stops reading must reset
/// the stream (RST_STREAM NO_ERROR, RFC 9113 section 8.1), and curl 7.x, still uploading, reports that reset as
/// `(92) Stream error in the HTTP/2 framing layer` instead of the answer. Read to its end, the stream closes
/// cleanly; HTTP/1.1 keeps its connection. Beyond the bounds the rest is dropped (a reset, or a closed
/// connection): no client can make the server read or wait without end, and nothing is kept.
async fn drain(mut body: Body, limit: usize, timeout: Duration) {
    let discard = async {
        let mut left = limit;
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else { continue };
            let Some(rest) = left.checked_sub(data.len()) else { break };
            left = rest;
        }
    };
    let _ = tokio::time::timeout(timeout, discard).await;
}

/// One admission review: checks the HTTP envelope, then answers through [`admission::review`]. The decision is
/// microseconds of CPU, so it runs on the request's task.
async fn admit(state: &AppState, webhook: Webhook, request: axum::extract::Request) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let metrics = &state.metrics;
    let client = parts.extensions.get::<ClientCertificate>();
    if state.client_cert_required && !client.is_some_and(|ClientCertificate(ok)| *ok) {
        metrics.invalid_request("client_certificate");
        return bad_request(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "a client certificate signed by the configured client CA is required".into(),
        );
    }
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        metrics.invalid_request("content_type");
        return bad_request(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            "the body must be an AdmissionReview with Content-Type: application/json".into(),
        );
    }
    let body = match read_body(body, state.max_body_bytes, state.request_timeout).await {
        Ok(body) => body,
        Err(BodyError::TooLarge(rest)) => {
            metrics.invalid_request("too_large");
            tokio::spawn(drain(rest, state.max_body_bytes, state.request_timeout));
            let message = format!("the body is larger than --max-body-bytes ({} bytes)", state.max_body_bytes);
            return bad_request(StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", message);
        }
        Err(BodyError::TimedOut) => {
            metrics.invalid_request("timeout");
            let message = format!("the body did not arrive within --request-timeout ({:?})", state.request_timeout);
            return bad_request(StatusCode::REQUEST_TIMEOUT, "Timeout", message);
        }
        Err(BodyError::Broken(e)) => {
            metrics.invalid_request("body");
            return bad_request(StatusCode::BAD_REQUEST, "BadRequest", format!("cannot read the body: {e}"));
        }
    };
    // Time the decision from the complete body: the wait for a slow client's bytes is not the webhook's latency.
    let started = Instant::now();
    let reviewed =
        match admission::review(&state.settings, state.namespaces.as_ref(), webhook, &body, jiff::Timestamp::now()) {
            Ok(r) => r,
            Err(e) => {
                metrics.invalid_request("not_a_review");
                return bad_request(StatusCode::BAD_REQUEST, "BadRequest", e.to_string());
            }
        };
    record_decision(metrics, webhook, &reviewed, started.elapsed(), state.log_allowed);
    ([(header::CONTENT_TYPE, "application/json")], reviewed.body).into_response()
}

/// Counts a decision in the metrics and writes its log line (docs/design.md section 5: uid, kind, namespace/name, operation,
/// user, decision, rule, latency): at info for a decision that changes something or needs a person, at debug for a
/// plain allow unless `log_allowed`. The API server's audit log records every request and the metrics count every
/// decision; a line per allowed request would be cost and noise. Public for the benchmark of its cost
/// (`benches/review.rs`, group `record`).
pub fn record_decision(
    metrics: &Metrics,
    webhook: Webhook,
    reviewed: &admission::Reviewed<'_>,
    elapsed: Duration,
    log_allowed: bool,
) {
    let d = &reviewed.decision;
    let decision = reviewed.decision_label();
    metrics.observe_review(webhook, reviewed.kind, reviewed.operation, decision, d.rule, elapsed);
    if d.exception_used {
        metrics.exception_used(reviewed.kind);
    }
    // Strings as `&str` values, not `%` (Display): tracing hands them to the formatter as they are, without a
    // trip through `fmt::write` each, and the text format quotes them, so that a reason with spaces stays one
    // `key="value"` field.
    macro_rules! line {
        ($level:ident) => {
            tracing::$level!(
                uid = &*reviewed.uid,
                webhook = webhook.as_str(),
                kind = &*reviewed.kind_sent,
                namespace = reviewed.namespace.as_str(),
                name = reviewed.name.as_str(),
                operation = reviewed.operation.as_str(),
                user = &*reviewed.user,
                dry_run = reviewed.dry_run,
                decision = decision.as_str(),
                rule = crate::metrics::rule_label(d.rule),
                latency_us = elapsed.as_micros() as u64,
                reason = d.message.as_str(),
                "admission decision"
            )
        };
    }
    if log_allowed || reviewed.notable() {
        line!(info);
    } else {
        line!(debug);
    }
}

/// A request that is not a review to answer: logged, and answered with a `Status` body as the API server would.
fn bad_request(status: StatusCode, reason: &'static str, message: String) -> Response {
    tracing::warn!(status = status.as_u16(), reason, detail = %message, "request rejected");
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": status.as_u16(),
        "reason": reason,
        "message": message,
    });
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
