//! The drain (src/drain.rs), one connection at a time: what a client that keeps its connection through SIGTERM
//! sees, as the API server does. The whole rollout, with a load balancer, many clients and the real API server, is
//! `hack/rollout-test.sh`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::Value;

/// A client connection of its own, HTTP/1.1 or HTTP/2 by ALPN, and the task that drives it (it ends when the
/// connection does).
struct Conn {
    sender: Sender,
    driver: tokio::task::JoinHandle<()>,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

/// An answer's status, its `Connection` header and its body.
struct Answer {
    status: u16,
    connection: Option<String>,
    body: Value,
}

impl Conn {
    async fn open(guard: &Guard, h2: bool) -> Conn {
        let mut config = tls_config(&guard.ca_path());
        config.alpn_protocols = vec![if h2 { b"h2".to_vec() } else { b"http/1.1".to_vec() }];
        let tcp = tokio::net::TcpStream::connect(guard.webhook).await.unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let io = hyper_util::rt::TokioIo::new(connector.connect("localhost".try_into().unwrap(), tcp).await.unwrap());
        if h2 {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
            Conn { sender: Sender::H2(sender), driver: tokio::spawn(async move { drop(conn.await) }) }
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            Conn { sender: Sender::H1(sender), driver: tokio::spawn(async move { drop(conn.await) }) }
        }
    }

    /// One review, as kube-apiserver sends it; an error if the connection could not carry it.
    async fn review(&mut self, review: &Review) -> Result<Answer, hyper::Error> {
        let body = Full::new(Bytes::from(serde_json::to_vec(&review.json()).unwrap()));
        let request = hyper::Request::post("https://localhost/validate?timeout=10s")
            .header("content-type", "application/json")
            .header("host", "localhost");
        let response = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(request.body(body).unwrap()).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(request.version(hyper::Version::HTTP_2).body(body).unwrap()).await?
            }
        };
        let status = response.status().as_u16();
        let connection = response.headers().get("connection").map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer { status, connection, body: serde_json::from_slice(&body).unwrap() })
    }

    /// Waits (bounded) for the connection to end; false if it is still open after `limit`.
    async fn ends_within(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, &mut self.driver).await.is_ok()
    }
}

fn review() -> Review {
    Review::network_policy("CREATE", "production", "allow-web").object(network_policy(
        "production",
        "allow-web",
        typical_spec(8080),
    ))
}

fn allowed(answer: &Answer, review: &Review) -> bool {
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.body["response"]["uid"], review.uid.as_str(), "{}", answer.body);
    answer.body["response"]["allowed"] == true
}

/// Waits without blocking the runtime (the connections' tasks run on it) for a log line whose message starts
/// with `prefix`.
async fn log_line(guard: &Guard, prefix: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = guard.logs().into_iter().find(|l| l["message"].as_str().is_some_and(|m| m.starts_with(prefix)))
        {
            return v;
        }
        assert!(Instant::now() < deadline, "no log line {prefix:?}: {:#?}", guard.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn sigterm(guard: &Guard) {
    let pid = guard.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
}

#[tokio::test]
async fn from_sigterm_every_http1_answer_closes_its_connection() {
    let mut guard = Guard::start(&["--shutdown-delay", "3s"]);
    let review = review();
    let mut kept = Conn::open(&guard, false).await;
    let before = kept.review(&review).await.unwrap();
    assert!(allowed(&before, &review));
    assert_eq!(before.connection, None, "kept alive before SIGTERM");

    sigterm(&guard);
    log_line(&guard, "draining").await;
    // The kept-alive connection: answered, told that this answer is its last, and closed after it.
    let last = kept.review(&review).await.unwrap();
    assert!(allowed(&last, &review));
    assert_eq!(last.connection.as_deref(), Some("close"));
    assert!(kept.ends_within(Duration::from_secs(2)).await, "the server closes the connection after that answer");
    // A connection opened during the delay (the balancer had not seen the unreadiness yet): the same.
    let mut late = Conn::open(&guard, false).await;
    let answer = late.review(&review).await.unwrap();
    assert!(allowed(&answer, &review));
    assert_eq!(answer.connection.as_deref(), Some("close"));
    assert!(late.ends_within(Duration::from_secs(2)).await);
    assert!(
        guard.logs().iter().all(|l| l["message"] != "shutting down: draining in-flight requests"),
        "still in the delay"
    );

    let status = guard.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn at_sigterm_every_http2_connection_gets_a_goaway_and_new_ones_are_still_served() {
    let mut guard = Guard::start(&["--shutdown-delay", "5s"]);
    let review = review();
    let mut kept = Conn::open(&guard, true).await;
    assert!(allowed(&kept.review(&review).await.unwrap(), &review));

    sigterm(&guard);
    let started = Instant::now();
    log_line(&guard, "draining").await;
    // The GOAWAY ends the idle connection at the start of the delay, not at its end (5 s).
    assert!(kept.ends_within(Duration::from_secs(3)).await, "no GOAWAY at SIGTERM");
    assert!(started.elapsed() < Duration::from_secs(4));
    assert!(kept.review(&review).await.is_err(), "a connection that got its GOAWAY takes no new request");
    // A client that opens a new connection meanwhile gets its request answered, then the GOAWAY.
    let mut late = Conn::open(&guard, true).await;
    assert!(allowed(&late.review(&review).await.unwrap(), &review));
    assert!(late.ends_within(Duration::from_secs(3)).await);

    let status = guard.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn when_the_listener_closes_idle_connections_close_and_a_new_one_gets_its_first_request_served() {
    let mut guard = Guard::start(&["--shutdown-delay", "1s"]);
    let review = review();
    // Kept alive and used before SIGTERM, then idle through the delay: closed with the listener.
    let mut idle = Conn::open(&guard, false).await;
    assert!(allowed(&idle.review(&review).await.unwrap(), &review));
    // Accepted before the listener closes, its request sent only after.
    let mut fresh = Conn::open(&guard, false).await;

    sigterm(&guard);
    log_line(&guard, "closing the listener").await;
    assert!(idle.ends_within(Duration::from_secs(2)).await, "an idle connection is closed with the listener");
    let first = fresh.review(&review).await.expect("the first request of a connection accepted before the close");
    assert!(allowed(&first, &review));
    assert_eq!(first.connection.as_deref(), Some("close"));
    let refused = tokio::net::TcpStream::connect(guard.webhook).await.is_err();
    assert!(refused, "no new connections once the listener is closed");

    let status = guard.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}");
}
