//! Test support: the real `default-deny-guard serve` binary on ephemeral ports, an HTTPS client that trusts the
//! CA it made, and AdmissionReviews shaped like kube-apiserver's.
#![allow(dead_code)]

pub mod app;
pub mod reviews;
#[allow(unused_imports)]
pub use app::App;
pub use reviews::*;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_default-deny-guard");

/// A running `serve`, stopped when dropped.
pub struct Guard {
    child: Child,
    pub webhook: SocketAddr,
    pub metrics: SocketAddr,
    pub dir: tempfile::TempDir,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Guard {
    /// Starts `serve` in a fresh working directory (so its development certificate goes under `DIR/certs`), with
    /// JSON logs, ephemeral ports and no cluster, plus `args`.
    pub fn start(args: &[&str]) -> Guard {
        Self::start_with(args, |_| {})
    }

    pub fn start_with(args: &[&str], prepare: impl FnOnce(&Path)) -> Guard {
        Self::launch(args, None, prepare)
    }

    /// Starts `serve` with the cluster configuration `kubeconfig` (written by `prepare` into the working directory,
    /// relative to it) and the namespace cache in its default mode.
    pub fn start_with_cluster(args: &[&str], kubeconfig: &str, prepare: impl FnOnce(&Path)) -> Guard {
        Self::launch(args, Some(kubeconfig), prepare)
    }

    fn launch(args: &[&str], kubeconfig: Option<&str>, prepare: impl FnOnce(&Path)) -> Guard {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let mut command = Command::new(BIN);
        command.current_dir(dir.path()).args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ]);
        match kubeconfig {
            Some(path) => command.env("KUBECONFIG", dir.path().join(path)),
            None => command.args(["--namespace-cache", "off"]).env_remove("KUBECONFIG"),
        };
        let mut child = command
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start default-deny-guard");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        {
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let (webhook, metrics) = loop {
            let found = |server: &str| -> Option<SocketAddr> {
                logs.lock().unwrap().iter().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find_map(|v| {
                    (v["server"] == server && v["message"].as_str()?.starts_with("listening"))
                        .then(|| v["addr"].as_str()?.parse().ok())?
                })
            };
            if let (Some(w), Some(m)) = (found("webhook"), found("metrics")) {
                break (w, m);
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("serve exited with {status}: {:#?}", logs.lock().unwrap());
            }
            assert!(Instant::now() < deadline, "serve did not start: {:#?}", logs.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        };
        Guard { child, webhook, metrics, dir, logs }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("certs/ca.crt")
    }

    /// Log lines, parsed.
    pub fn logs(&self) -> Vec<Value> {
        self.logs.lock().unwrap().iter().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Waits (bounded) for a log line that satisfies `pred`.
    pub fn wait_for_log(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = self.logs().into_iter().find(&pred) {
                return v;
            }
            assert!(Instant::now() < deadline, "no log line {what}: {:#?}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> Https {
        Https::new(&self.ca_path(), Protocol::Http1)
    }

    pub fn client_h2(&self) -> Https {
        Https::new(&self.ca_path(), Protocol::Http2)
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.webhook.port())
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        self.wait_exit(Duration::from_secs(30))
    }

    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "serve did not exit: {:#?}", self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The metrics text, fetched over plain HTTP.
    pub async fn metrics_text(&self) -> String {
        let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let uri = format!("http://{}/metrics", self.metrics);
        let resp = client.get(uri.parse().unwrap()).await.unwrap();
        assert_eq!(resp.status(), 200);
        String::from_utf8(resp.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Clone, Copy)]
pub enum Protocol {
    Http1,
    Http2,
}

/// An HTTPS client that trusts only the given CA.
pub struct Https {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Vec<u8>,
    pub version: hyper::Version,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

pub fn tls_config(ca: &Path) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

impl Https {
    pub fn new(ca: &Path, protocol: Protocol) -> Https {
        Self::with_config(tls_config(ca), protocol)
    }

    pub fn with_config(config: rustls::ClientConfig, protocol: Protocol) -> Https {
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_only();
        let connector = match protocol {
            Protocol::Http1 => builder.enable_http1().build(),
            Protocol::Http2 => builder.enable_http2().build(),
        };
        let mut client = Client::builder(TokioExecutor::new());
        if let Protocol::Http2 = protocol {
            client.http2_only(true);
        }
        Https { client: client.build(connector) }
    }

    pub async fn request(&self, method: &str, url: &str, content_type: Option<&str>, body: Vec<u8>) -> Reply {
        self.try_request(method, url, content_type, body).await.unwrap()
    }

    /// A request whose failure (TLS, connection) is an answer too.
    pub async fn try_request(
        &self,
        method: &str,
        url: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        let mut req = hyper::Request::builder().method(method).uri(url);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp =
            self.client.request(req.body(Full::new(Bytes::from(body))).unwrap()).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let version = resp.version();
        let content_type =
            resp.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes().to_vec();
        Ok(Reply { status, content_type, body, version })
    }

    /// POSTs a review as kube-apiserver does, with its `?timeout=10s`.
    pub async fn review(&self, guard: &Guard, path: &str, review: &Value) -> Reply {
        let url = guard.url(&format!("{path}?timeout=10s"));
        self.request("POST", &url, Some("application/json"), serde_json::to_vec(review).unwrap()).await
    }

    pub async fn get(&self, url: &str) -> Reply {
        self.request("GET", url, None, Vec::new()).await
    }
}

/// The `response` of an answer, after checking the envelope: kind, the apiVersion asked, the uid echoed.
pub fn response_of(reply: &Reply, review: &Review) -> Value {
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    assert_eq!(reply.content_type, "application/json");
    let v = reply.json();
    assert_eq!(v["kind"], "AdmissionReview");
    assert_eq!(v["apiVersion"], review.api_version, "answered in the version asked");
    assert_eq!(v["response"]["uid"], review.uid.as_str(), "uid echoed");
    v["response"].clone()
}

/// Prometheus text: the value of the sample `name{labels}` whose labels include all of `labels`, summed.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            if n != name {
                return None;
            }
            let labels_text = rest.trim_end_matches('}');
            let have: Vec<(&str, &str)> = labels_text
                .split(',')
                .filter(|p| !p.is_empty())
                .filter_map(|p| {
                    let (k, v) = p.split_once('=')?;
                    Some((k, v.trim_matches('"')))
                })
                .collect();
            labels.iter().all(|want| have.contains(want)).then(|| value.parse::<f64>().unwrap())
        })
        .sum()
}
