//! The drain: how `serve` stops without losing an admission call.
//!
//! The API server keeps its connections to a webhook open and reuses them whatever the endpoint's readiness
//! (kubernetes/kubernetes#127335), and it does not retry a POST that meets a connection as it closes. So the server
//! closes nothing a client may be about to use; it tells each client to move, in the protocol's own terms, and
//! waits:
//!
//! 1. SIGTERM ([`Drain::begin`]): `/readyz` fails at once, so the Service (kube-proxy, a load balancer) sends new
//!    connections elsewhere. Every HTTP/2 connection gets a GOAWAY (hyper's graceful shutdown: in-flight streams
//!    finish, the client opens a new connection for its next request). Every HTTP/1.1 answer from now on carries
//!    `Connection: close`, so a connection ends right after an answer, when its client knows not to reuse it.
//!    Connections that still arrive meanwhile are served the same way.
//! 2. After the shutdown delay ([`Drain::close`]): the connections already in the listener's backlog are taken and
//!    served, then the listener closes; an HTTP/1.1 connection that sent nothing since its last answer is closed,
//!    one in the middle of a request gets its answer (with `Connection: close`), and one that has not had its first
//!    request yet gets that served (hyper's graceful shutdown would close it unread: it is left a grace period).
//! 3. [`Drain::finished`]: every connection has ended, or the shutdown timeout has passed.
//!
//! Only step 2 closes a connection under a client, and only one that stayed idle through the delay.

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::http::{HeaderValue, Response, header};
use hyper_util::server::graceful::GracefulConnection;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Where the server is in its shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Serving,
    /// From SIGTERM for the shutdown delay: unready, connections asked to move, everything still answered.
    Draining,
    /// The listener is closed; in-flight requests finish.
    Closed,
}

/// The drain's state, shared by `serve`'s shutdown sequence, the accept loop and every connection. Each connection
/// holds a [`Connection`] from its accept to its end, which is how [`Drain::finished`] knows when all have ended.
#[derive(Clone)]
pub struct Drain {
    phase: Arc<watch::Sender<Phase>>,
    /// Its receivers are the open connections' [`Connection`]s, and only those.
    open: Arc<watch::Sender<()>>,
}

impl Default for Drain {
    fn default() -> Self {
        Drain::new()
    }
}

impl Drain {
    pub fn new() -> Drain {
        Drain { phase: Arc::new(watch::channel(Phase::Serving).0), open: Arc::new(watch::channel(()).0) }
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Whether `/readyz` may say ready: not from SIGTERM on.
    pub fn serving(&self) -> bool {
        self.phase() == Phase::Serving
    }

    /// Step 1, at SIGTERM: unready; GOAWAY on HTTP/2; `Connection: close` on every HTTP/1.1 answer.
    pub fn begin(&self) {
        self.advance(Phase::Draining);
        tracing::info!(
            connections = self.connections(),
            "draining: unready; HTTP/1.1 answers close their connection, HTTP/2 connections got a GOAWAY"
        );
    }

    /// Step 2, after the shutdown delay: the listener closes (after its backlog), idle connections are closed.
    pub fn close(&self) {
        self.advance(Phase::Closed);
        tracing::info!(connections = self.connections(), "closing the listener and idle connections");
    }

    /// Step 3: resolves when every connection has ended; false if `timeout` came first.
    pub async fn finished(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, self.open.closed()).await.is_ok()
    }

    /// Resolves once the listener is to close.
    pub async fn closed(&self) {
        let _ = self.phase.subscribe().wait_for(|p| *p == Phase::Closed).await;
    }

    /// Connections accepted and not yet ended (TLS handshakes included).
    pub fn connections(&self) -> usize {
        self.open.receiver_count()
    }

    fn advance(&self, to: Phase) {
        // `send_if_modified` stores the phase even when no connection is open (`send` would not).
        self.phase.send_if_modified(|phase| {
            let later = to > *phase;
            if later {
                *phase = to;
            }
            later
        });
    }

    /// A newly accepted connection's handle; [`Drain::finished`] waits until it is dropped.
    pub fn connection(&self) -> Connection {
        Connection {
            phase: self.phase.subscribe(),
            _open: self.open.subscribe(),
            answered: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The accept loop's source of connections: the listener until the drain closes it, then what its backlog holds
    /// (those clients were sent here before the balancer saw us unready and are waiting for their TLS handshake;
    /// closing the listener would reset them).
    pub fn incoming(&self, listener: TcpListener) -> Incoming {
        Incoming { drain: self.clone(), listener: Some(listener), backlog: None }
    }
}

/// One connection's part in the drain.
pub struct Connection {
    phase: watch::Receiver<Phase>,
    _open: watch::Receiver<()>,
    answered: Arc<AtomicBool>,
}

impl Connection {
    /// The answer hook for this connection's requests.
    pub fn answers(&self, http2: bool) -> Answers {
        Answers { phase: self.phase.clone(), http2, answered: self.answered.clone() }
    }

    /// Serves `conn` (hyper's HTTP/1.1 or HTTP/2 connection) to its end: an HTTP/2 connection gets its GOAWAY when
    /// the drain begins (at once if it began already), an HTTP/1.1 connection its graceful shutdown when the listener
    /// closes (idle: closed; busy: its answer is its last). An HTTP/1.1 connection that has had no answer yet is
    /// first given `first_request` to send its request, which is answered with `Connection: close`.
    pub async fn serve<C: GracefulConnection>(
        mut self,
        conn: C,
        http2: bool,
        first_request: Duration,
    ) -> Result<(), C::Error> {
        let until = if http2 { Phase::Draining } else { Phase::Closed };
        let mut conn = pin!(conn);
        tokio::select! {
            ended = conn.as_mut() => return ended,
            _ = self.phase.wait_for(|p| *p >= until) => {}
        }
        if !http2 && !self.answered.load(Ordering::Relaxed) {
            tokio::select! {
                ended = conn.as_mut() => return ended,
                _ = tokio::time::sleep(first_request) => {}
            }
        }
        conn.as_mut().graceful_shutdown();
        conn.await
    }
}

/// See [`Connection::answers`].
#[derive(Clone)]
pub struct Answers {
    phase: watch::Receiver<Phase>,
    http2: bool,
    answered: Arc<AtomicBool>,
}

impl Answers {
    /// While draining, an HTTP/1.1 answer ends its connection (hyper closes after writing an answer with
    /// `Connection: close`). HTTP/2 has its GOAWAY instead, and forbids the header.
    pub fn mark<B>(&self, mut response: Response<B>) -> Response<B> {
        self.answered.store(true, Ordering::Relaxed);
        if !self.http2 && *self.phase.borrow() != Phase::Serving {
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// See [`Drain::incoming`].
pub struct Incoming {
    drain: Drain,
    listener: Option<TcpListener>,
    backlog: Option<std::net::TcpListener>,
}

impl Incoming {
    /// The next connection; `None` once the listener is closed and its backlog empty.
    pub async fn next(&mut self) -> Option<std::io::Result<(TcpStream, SocketAddr)>> {
        if let Some(listener) = &self.listener {
            tokio::select! {
                accepted = listener.accept() => return Some(accepted),
                _ = self.drain.closed() => {}
            }
            // tokio's `accept` waits for the reactor's word that a connection is there; a plain non-blocking
            // `accept` sees the backlog as it is now.
            self.backlog = self.listener.take().and_then(|l| l.into_std().ok());
        }
        let backlog = self.backlog.as_ref()?;
        match backlog.accept() {
            Ok((tcp, peer)) => {
                Some(tcp.set_nonblocking(true).and_then(|()| TcpStream::from_std(tcp)).map(|t| (t, peer)))
            }
            Err(e) => {
                self.backlog = None;
                (e.kind() != std::io::ErrorKind::WouldBlock).then_some(Err(e))
            }
        }
    }
}
