//! Load-test tooling: a closed-loop HTTPS load generator for the webhook (and for `examples/floor.rs`).
//!
//! N keep-alive connections, each sending one request at a time and the next as soon as the answer is in (as
//! kube-apiserver's webhook client does, over HTTP/1.1 by default). Latency runs from the request's first byte
//! to the answer's last, recorded in an HDR histogram (1 µs to 60 s, 3 significant digits). It never aborts on an
//! error: a failed request is counted by kind, a broken connection is opened again (after 10 ms), and the run
//! goes on until its time or its request count is used up, so that it can keep the load on while certificates
//! rotate or the server restarts.
//!
//! ```text
//! cargo run --release --example loadgen -- --url https://127.0.0.1:8443 --ca certs/ca.crt \
//!     --connections 8 --duration 10s [--http2] [--mix standard | --body /validate=review.json ...] [--json out.json]
//! ```
//!
//! A request is *answered* when the status is 2xx and the body is JSON with `response.allowed`; anything else is
//! *failed* (lost), by kind: `connect`, `tls`, `closed` (the connection ended before the answer), `reset`, `io`,
//! `timeout`, `status_NNN`, `bad_answer`. As with Go's client (the API server's), a request that never left, because
//! its kept-alive connection had already closed or an HTTP/2 GOAWAY came before its stream, is sent again on a new
//! connection and counted as `resent`, not failed; an answer with `Connection: close` ends its connection.
//! `--server-pid PID` adds the server's CPU time (utime and stime of /proc/PID/stat over the measured window) and
//! memory (VmRSS samples, VmHWM) to the report. `--interval` prints a line per interval, and the JSON report keeps
//! the timeline (answered, failed and RSS per interval).

#[path = "../tests/common/reviews.rs"]
mod reviews;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;

#[derive(Parser, Clone)]
#[command(about = "Closed-loop HTTPS load generator for default-deny-guard (load-test tooling)")]
struct Args {
    /// Base URL, e.g. https://127.0.0.1:8443 (the mix adds /validate or /mutate and `?timeout=10s`).
    #[arg(long)]
    url: String,
    /// CA certificate (PEM) to verify the server with.
    #[arg(long)]
    ca: PathBuf,
    /// TLS server name to verify (default: the URL's host).
    #[arg(long)]
    server_name: Option<String>,
    /// Keep-alive connections, each with one request in flight (per stream with --http2).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// HTTP/2 streams in flight per connection (only with --http2).
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Measure for this long (after the warm-up), e.g. 10s.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// Measure this many requests (after the warm-up) instead of a duration.
    #[arg(long)]
    requests: Option<u64>,
    /// With --requests: stop after this long all the same.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    duration_limit: Duration,
    /// Requests before this much time has passed are sent but not measured.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    warmup: Duration,
    /// HTTP/2 (ALPN h2) instead of HTTP/1.1.
    #[arg(long)]
    http2: bool,
    /// `standard`: the issue's mix (80% NetworkPolicy CREATE/UPDATE, 10% DELETE, 10% Namespace CREATE).
    #[arg(long, default_value = "standard")]
    mix: String,
    /// Send fixed bodies instead of the mix, in turn: `PATH=FILE` (e.g. `/validate=review.json`), repeatable.
    #[arg(long = "body", value_name = "PATH=FILE")]
    bodies: Vec<String>,
    /// Time limit of one request; past it the request is a `timeout` failure and its connection is replaced.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    timeout: Duration,
    /// The server's process id: report its CPU time and memory from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Print a progress line (and keep a timeline entry) every interval.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    interval: Duration,
    /// Print no progress lines.
    #[arg(long)]
    quiet: bool,
    /// A name for this run in the report.
    #[arg(long, default_value = "")]
    label: String,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

struct Request {
    path: String,
    body: Bytes,
}

/// Counters shared by the workers.
#[derive(Default)]
struct Counters {
    sent: AtomicU64,
    answered: AtomicU64,
    allowed: AtomicU64,
    failed: AtomicU64,
    /// Requests sent again on a new connection because the old one had closed before they left (not failures).
    resent: AtomicU64,
    /// Answers that closed their connection (`Connection: close`), as a draining server sends.
    closed_by_answer: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Counters {
    fn fail(&self, kind: &str) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        *self.errors.lock().unwrap().entry(kind.to_owned()).or_default() += 1;
    }
}

/// When the run measures, and when it stops.
struct Plan {
    measure_from: Instant,
    /// Duration mode: the end; requests mode: a safety limit.
    deadline: Instant,
    /// Requests mode: the measured requests left to start.
    remaining: Option<AtomicU64>,
    /// Set by SIGINT: start no more requests, finish and report (hack/rollout-test.sh ends a run this way).
    stop: std::sync::atomic::AtomicBool,
}

impl Plan {
    /// Whether a worker may start another request.
    fn go(&self) -> bool {
        let now = Instant::now();
        if now >= self.deadline || self.stop.load(Ordering::Relaxed) {
            return false;
        }
        match &self.remaining {
            Some(left) if now >= self.measure_from => {
                left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
            }
            _ => true,
        }
    }
}

enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

struct Target {
    host: String,
    port: u16,
    authority: String,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
    http2: bool,
}

fn parse_url(url: &str) -> Result<(String, u16), String> {
    let rest = url.strip_prefix("https://").ok_or("--url must start with https://")?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
            (h.to_owned(), p.parse().map_err(|_| format!("bad port in {url}"))?)
        }
        _ => (authority.to_owned(), 443),
    };
    Ok((host.trim_start_matches('[').trim_end_matches(']').to_owned(), port))
}

/// Opens a connection; the error is its kind. A request that cannot get a connection is lost: Go's client (the API
/// server's) does not retry a failed dial either.
async fn connect(t: &Target) -> Result<Conn, Failure> {
    let tcp = TcpStream::connect((t.host.as_str(), t.port)).await.map_err(|_| "connect")?;
    let _ = tcp.set_nodelay(true);
    let tls = t.tls.connect(t.server_name.clone(), tcp).await.map_err(|_| "tls")?;
    let io = hyper_util::rt::TokioIo::new(tls);
    if t.http2 {
        let (send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.map_err(|_| "io")?;
        tokio::spawn(conn);
        Ok(Conn::H2(send))
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|_| "io")?;
        tokio::spawn(conn);
        Ok(Conn::H1(send))
    }
}

/// Why a request got no answer.
enum Failure {
    /// It never reached the server: the connection had closed (HTTP/1.1) or the server had said GOAWAY before the
    /// stream (HTTP/2). A client sends it again on a new connection, as Go's (the API server's) does; not a loss.
    Unsent,
    /// Sent (or the connection could not be made): lost, by kind.
    Lost(String),
}

impl From<&str> for Failure {
    fn from(kind: &str) -> Self {
        Failure::Lost(kind.to_owned())
    }
}

/// A lost request's kind from hyper's error: `closed` (the connection ended before the answer), `reset`, or `io`.
fn lost_kind(e: &hyper::Error) -> Failure {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            // A stream above the GOAWAY's last stream id: the server never saw it (RFC 9113, section 6.8).
            if (h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR))
                || h2.reason() == Some(h2::Reason::REFUSED_STREAM)
            {
                return Failure::Unsent;
            }
        }
        if let Some(io) = s.downcast_ref::<std::io::Error>()
            && matches!(io.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe)
        {
            return "reset".into();
        }
        source = s.source();
    }
    if e.is_incomplete_message() { "closed".into() } else { "io".into() }
}

/// An answer: whether it allowed the request, and whether the server ended the connection with it.
struct Answer {
    allowed: bool,
    close: bool,
}

/// One request on `conn`.
async fn send(conn: &mut Conn, t: &Target, req: &Request) -> Result<Answer, Failure> {
    let request = hyper::Request::post(format!("{}?timeout=10s", req.path))
        .header(hyper::header::HOST, &t.authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::ACCEPT, "application/json")
        .body(Full::new(req.body.clone()))
        .expect("a valid request");
    // `ready` fails on a connection that has closed: the request never left, as with Go's `nothingWrittenError`.
    // `try_send_request` hands back a request that the connection closed under before writing it.
    let sent = match conn {
        Conn::H1(s) => {
            s.ready().await.map_err(|_| Failure::Unsent)?;
            s.try_send_request(request).await
        }
        Conn::H2(s) => {
            s.ready().await.map_err(|_| Failure::Unsent)?;
            let mut request = request;
            *request.version_mut() = hyper::Version::HTTP_2;
            request.headers_mut().remove(hyper::header::HOST);
            *request.uri_mut() = format!("https://{}{}?timeout=10s", t.authority, req.path).parse().unwrap();
            s.try_send_request(request).await
        }
    };
    let response = match sent {
        Ok(response) => response,
        Err(mut e) => {
            return Err(if e.take_message().is_some() { Failure::Unsent } else { lost_kind(e.error()) });
        }
    };
    let status = response.status();
    let close = response
        .headers()
        .get(hyper::header::CONNECTION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
    let body = response.into_body().collect().await.map_err(|e| lost_kind(&e))?.to_bytes();
    if !status.is_success() {
        return Err(Failure::Lost(format!("status_{}", status.as_u16())));
    }
    let v: Value = serde_json::from_slice(&body).map_err(|_| "bad_answer")?;
    let allowed = v["response"]["allowed"].as_bool().ok_or("bad_answer")?;
    Ok(Answer { allowed, close })
}

/// The HTTP/2 connection that several streams' workers share (--streams), opened by whichever needs it first.
type SharedH2 = Arc<tokio::sync::Mutex<Option<hyper::client::conn::http2::SendRequest<Full<Bytes>>>>>;

/// One connection's closed loop (or one stream's, with --http2 --streams).
async fn worker(
    id: usize,
    target: Arc<Target>,
    requests: Arc<Vec<Request>>,
    plan: Arc<Plan>,
    counters: Arc<Counters>,
    timeout: Duration,
    shared: Option<SharedH2>,
) -> Histogram<u64> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut conn: Option<Conn> = None;
    let mut next = id; // Workers start at different places in the mix.
    while plan.go() {
        let req = &requests[next % requests.len()];
        next += 1;
        let measured = Instant::now() >= plan.measure_from;
        let started = Instant::now();
        // A request that never left is sent again on a new connection, a few times at most (as Go's client does).
        let mut resent = 0;
        let outcome = tokio::time::timeout(timeout, async {
            loop {
                if conn.is_none() {
                    // HTTP/2 streams of one connection share its SendRequest.
                    conn = Some(match &shared {
                        Some(cell) => {
                            let mut cell = cell.lock().await;
                            match cell.as_ref().filter(|s| !s.is_closed()) {
                                Some(s) => Conn::H2(s.clone()),
                                None => match connect(&target).await? {
                                    Conn::H2(s) => {
                                        *cell = Some(s.clone());
                                        Conn::H2(s)
                                    }
                                    other => other,
                                },
                            }
                        }
                        None => connect(&target).await?,
                    });
                }
                match send(conn.as_mut().expect("connected"), &target, req).await {
                    Err(Failure::Unsent) if resent < 3 => {
                        resent += 1;
                        conn = None;
                        if let Some(cell) = &shared {
                            cell.lock().await.take();
                        }
                    }
                    Err(Failure::Unsent) => return Err(Failure::Lost("unsent".into())),
                    other => return other,
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err("timeout".into()));
        let elapsed = started.elapsed();
        if measured {
            counters.sent.fetch_add(1, Ordering::Relaxed);
            counters.resent.fetch_add(resent, Ordering::Relaxed);
        }
        match outcome {
            Ok(answer) => {
                if measured {
                    counters.answered.fetch_add(1, Ordering::Relaxed);
                    if answer.allowed {
                        counters.allowed.fetch_add(1, Ordering::Relaxed);
                    }
                    if answer.close {
                        counters.closed_by_answer.fetch_add(1, Ordering::Relaxed);
                    }
                    hist.saturating_record(elapsed.as_micros().max(1) as u64);
                }
                if answer.close {
                    // As Go's client does: a `Connection: close` answer is the connection's last.
                    conn = None;
                    if let Some(cell) = &shared {
                        cell.lock().await.take();
                    }
                }
            }
            Err(failure) => {
                let kind = match failure {
                    Failure::Lost(kind) => kind,
                    Failure::Unsent => "unsent".to_owned(),
                };
                if measured {
                    counters.fail(&kind);
                }
                if kind.starts_with("status_") || kind == "bad_answer" {
                    continue; // The connection still works.
                }
                conn = None;
                if let Some(cell) = &shared {
                    cell.lock().await.take();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    hist
}

/// The CPU time of a process, in seconds: in user space (utime) and in the kernel on its behalf (stime).
#[derive(Clone, Copy)]
struct CpuTimes {
    user: f64,
    system: f64,
}

impl CpuTimes {
    fn total(self) -> f64 {
        self.user + self.system
    }

    fn since(self, start: CpuTimes) -> CpuTimes {
        CpuTimes { user: self.user - start.user, system: self.system - start.system }
    }
}

fn cpu_seconds(pid: u32) -> Option<CpuTimes> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: count fields after the last `)`.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(CpuTimes { user: utime / clock_ticks(), system: stime / clock_ticks() })
}

/// Clock ticks per second of /proc's times: 100 on every Linux this runs on; `getconf CLK_TCK` tells if not.
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// A `kB` field of /proc/PID/status, in KiB.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix(field)?.trim().strip_suffix("kB")?.trim().parse().ok())
}

fn load_requests(args: &Args) -> Result<Vec<Request>, String> {
    if !args.bodies.is_empty() {
        return args
            .bodies
            .iter()
            .map(|spec| {
                let (path, file) = spec.split_once('=').ok_or_else(|| format!("--body {spec}: write PATH=FILE"))?;
                let body = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
                Ok(Request { path: path.to_owned(), body: body.into() })
            })
            .collect();
    }
    match args.mix.as_str() {
        "standard" => {
            // Spread by weight over a cycle of 20: each entry's share of the cycle is its weight.
            let mix = reviews::standard_mix();
            let total: u32 = mix.iter().map(|m| m.weight).sum();
            let mut slots: Vec<(f64, usize)> = Vec::new();
            for (i, m) in mix.iter().enumerate() {
                let n = m.weight * 20 / total;
                for k in 0..n {
                    // Interleave: the k-th of n copies sits at (k + 0.5) / n of the cycle.
                    slots.push(((k as f64 + 0.5) / n as f64, i));
                }
            }
            slots.sort_by(|a, b| a.0.total_cmp(&b.0));
            Ok(slots
                .into_iter()
                .map(|(_, i)| Request { path: mix[i].path.to_owned(), body: Bytes::from(mix[i].body.clone()) })
                .collect())
        }
        other => Err(format!("--mix {other}: only `standard` is known; use --body for fixed bodies")),
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("loadgen: {e}");
        std::process::exit(2);
    }
}

fn run(args: Args) -> Result<(), String> {
    let requests = Arc::new(load_requests(&args)?);
    let (host, port) = parse_url(&args.url)?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args.ca).map_err(|e| format!("{}: {e}", args.ca.display()))? {
        roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![if args.http2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
    let name = args.server_name.clone().unwrap_or_else(|| host.clone());
    let target = Arc::new(Target {
        authority: format!("{name}:{port}"),
        host,
        port,
        server_name: ServerName::try_from(name).map_err(|e| e.to_string())?,
        tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
        http2: args.http2,
    });
    let connections = args.connections.max(1);
    let streams = if args.http2 { args.streams.max(1) } else { 1 };
    let duration = match (args.duration, args.requests) {
        (Some(d), _) => d,
        (None, Some(_)) => args.duration_limit,
        (None, None) => Duration::from_secs(10),
    };

    // One runtime thread per core the generator may use (taskset decides), two at most.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let start = Instant::now();
        let plan = Arc::new(Plan {
            measure_from: start + args.warmup,
            deadline: start + args.warmup + duration,
            remaining: args.requests.map(AtomicU64::new),
            stop: Default::default(),
        });
        {
            let plan = plan.clone();
            tokio::spawn(async move {
                if tokio::signal::ctrl_c().await.is_ok() {
                    plan.stop.store(true, Ordering::Relaxed);
                }
            });
        }
        let counters = Arc::new(Counters::default());
        let mut tasks = Vec::new();
        for c in 0..connections {
            let shared = (streams > 1).then(|| Arc::new(tokio::sync::Mutex::new(None)));
            for s in 0..streams {
                tasks.push(tokio::spawn(worker(
                    c * streams + s,
                    target.clone(),
                    requests.clone(),
                    plan.clone(),
                    counters.clone(),
                    args.timeout,
                    shared.clone(),
                )));
            }
        }

        // The measured window: server CPU at its start and end; RSS and progress every interval.
        tokio::time::sleep_until(plan.measure_from.into()).await;
        let pid = args.server_pid;
        let rss = |field| pid.and_then(|p| status_kib(p, field));
        let cpu_start = pid.and_then(cpu_seconds);
        let client_cpu_start = cpu_seconds(std::process::id());
        let rss_start = rss("VmRSS:");
        let measure_start = Instant::now();
        let mut timeline = Vec::new();
        let mut rss_max = rss_start.unwrap_or(0);
        let (mut last_answered, mut last_failed) = (0, 0);
        let mut tick = tokio::time::interval_at((measure_start + args.interval).into(), args.interval);
        let all_done = futures::future::join_all(tasks);
        tokio::pin!(all_done);
        let histograms = loop {
            tokio::select! {
                hists = &mut all_done => break hists,
                _ = tick.tick() => {
                    let t = measure_start.elapsed().as_secs_f64();
                    let answered = counters.answered.load(Ordering::Relaxed);
                    let failed = counters.failed.load(Ordering::Relaxed);
                    let now_rss = rss("VmRSS:");
                    rss_max = rss_max.max(now_rss.unwrap_or(0));
                    let rate = (answered - last_answered) as f64 / args.interval.as_secs_f64();
                    if !args.quiet {
                        eprintln!(
                            "{t:7.1}s answered {answered} (+{}, {rate:.0}/s) failed {failed} (+{}){}",
                            answered - last_answered,
                            failed - last_failed,
                            now_rss.map(|r| format!(" server RSS {:.1} MiB", r as f64 / 1024.0)).unwrap_or_default()
                        );
                    }
                    timeline.push(json!({"t_s": t, "answered": answered, "failed": failed, "rss_kib": now_rss}));
                    (last_answered, last_failed) = (answered, failed);
                }
            }
        };
        let elapsed = measure_start.elapsed().as_secs_f64();
        let server_cpu = match (cpu_start, pid.and_then(cpu_seconds)) {
            (Some(a), Some(b)) => Some(b.since(a)),
            _ => None,
        };
        let cpu = server_cpu.map(CpuTimes::total);
        let client_cpu = match (client_cpu_start, cpu_seconds(std::process::id())) {
            (Some(a), Some(b)) => Some(b.since(a).total()),
            _ => None,
        };
        let rss_end = rss("VmRSS:");
        rss_max = rss_max.max(rss_end.unwrap_or(0));
        let hwm = rss("VmHWM:");

        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
        for h in histograms.into_iter().flatten() {
            hist.add(h).expect("same bounds");
        }
        let answered = counters.answered.load(Ordering::Relaxed);
        let throughput = answered as f64 / elapsed;
        let q = |p: f64| if hist.is_empty() { 0 } else { hist.value_at_quantile(p) };
        let report = json!({
            "label": args.label,
            "url": args.url,
            "protocol": if args.http2 { "h2" } else { "http/1.1" },
            "connections": connections,
            "streams_per_connection": streams,
            "mix": if args.bodies.is_empty() { args.mix.clone() } else { "bodies".into() },
            "warmup_s": args.warmup.as_secs_f64(),
            "duration_s": elapsed,
            "sent": counters.sent.load(Ordering::Relaxed),
            "answered": answered,
            "allowed": counters.allowed.load(Ordering::Relaxed),
            "denied": answered - counters.allowed.load(Ordering::Relaxed),
            "failed": counters.failed.load(Ordering::Relaxed),
            "resent": counters.resent.load(Ordering::Relaxed),
            "closed_by_answer": counters.closed_by_answer.load(Ordering::Relaxed),
            "errors": *counters.errors.lock().unwrap(),
            "throughput_rps": throughput,
            "latency_us": {
                "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
                "max": hist.max(), "mean": hist.mean(),
            },
            "client_cpu_s": client_cpu,
            "client_cpu_s_per_10k": client_cpu.map(|c| c * 10_000.0 / answered.max(1) as f64),
            "server": pid.map(|pid| json!({
                "pid": pid,
                "cpu_s": cpu,
                "cpu_s_per_10k": cpu.map(|c| if answered > 0 { c * 10_000.0 / answered as f64 } else { 0.0 }),
                // The split says whether a difference is our code (user) or the kernel's work for us (system).
                "cpu_user_s": server_cpu.map(|c| c.user),
                "cpu_system_s": server_cpu.map(|c| c.system),
                "rss_kib_start": rss_start,
                "rss_kib_end": rss_end,
                "rss_kib_max": rss_max,
                "vm_hwm_kib": hwm,
            })),
            "timeline": timeline,
        });
        println!(
            "{} {} conns={} answered={} failed={} {:.0} req/s p50={}µs p99={}µs p99.9={}µs max={}µs{}",
            args.label,
            report["protocol"].as_str().unwrap(),
            connections,
            answered,
            report["failed"],
            throughput,
            q(0.5),
            q(0.99),
            q(0.999),
            hist.max(),
            cpu.map(|c| format!(" server cpu {:.3}s/10k", c * 10_000.0 / answered.max(1) as f64)).unwrap_or_default()
        );
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_vec_pretty(&report).unwrap())
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(())
    })
}
