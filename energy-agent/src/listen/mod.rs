//! What every listener of the agent (the OTLP receiver's gRPC and HTTP ports, the
//! Prometheus endpoint) has in common: optional TLS and mTLS ([`crate::tls::server`]),
//! an optional bearer token ([`token`]), and limits — connections open at once,
//! requests in progress at once (past it a request is refused at once, not queued),
//! a time limit on each TLS handshake and each request. A [`Guard`] holds one
//! listener's settings and counts what it refused (`energy_agent.listener.rejected`).
//!
//! Defaults ([`Limits::default`]): 256 connections, 64 requests in progress, 30 s per
//! request, 10 s per handshake.

pub mod conn;
pub mod token;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};

use crate::tls::{
    TlsError,
    server::{Reloading, ServerTls},
};
pub use conn::{AxumListener, Conn, Remote};
use token::Tokens;

/// ALPN for gRPC (HTTP/2 only).
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// ALPN for the HTTP/1.1 listeners.
pub const ALPN_HTTP1: &[&[u8]] = &[b"http/1.1"];

/// A listener's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
    /// Requests in progress at once; one more is refused with the listener's
    /// throttling answer.
    pub max_concurrent_requests: usize,
    /// Longest a request may take, from its headers to the answer (its body included).
    pub request_timeout: Duration,
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            max_concurrent_requests: 64,
            request_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// A listener's security settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenConfig {
    /// TLS (and mTLS with a client CA); plaintext when none.
    pub tls: Option<ServerTls>,
    /// Bearer tokens, one per line; none: no token asked.
    pub token_file: Option<PathBuf>,
    /// Limits.
    pub limits: Limits,
}

/// A listener that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A TLS file cannot be used.
    #[error("{listener}: {source}")]
    Tls {
        /// The listener.
        listener: &'static str,
        /// Why.
        source: TlsError,
    },
    /// The token file cannot be used.
    #[error("token file {}: {reason}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Why a listener refused a connection or a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No or a wrong bearer token (gRPC `UNAUTHENTICATED`, HTTP 401).
    Unauthenticated,
    /// The TLS handshake failed (no client certificate with mTLS, an untrusted one, not
    /// TLS at all) or timed out.
    TlsHandshake,
    /// Over the connection limit.
    ConnectionLimit,
    /// Over the limit of requests in progress.
    Overloaded,
    /// Past the request timeout.
    Timeout,
}

impl Reason {
    /// Every reason, in the counters' order.
    pub const ALL: [Reason; 5] = [
        Reason::Unauthenticated,
        Reason::TlsHandshake,
        Reason::ConnectionLimit,
        Reason::Overloaded,
        Reason::Timeout,
    ];

    /// The `reason` label.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Unauthenticated => "unauthenticated",
            Reason::TlsHandshake => "tls_handshake",
            Reason::ConnectionLimit => "connection_limit",
            Reason::Overloaded => "overloaded",
            Reason::Timeout => "timeout",
        }
    }
}

/// One listener's settings and counters, shared by its accept loop and its server.
pub struct Guard {
    name: &'static str,
    tls: Option<Arc<Reloading>>,
    tokens: Option<Tokens>,
    limits: Limits,
    rejected: [AtomicU64; Reason::ALL.len()],
    connections: Arc<Semaphore>,
    requests: Arc<Semaphore>,
    last_log: Mutex<Option<Instant>>,
}

impl Guard {
    /// Loads the listener's TLS files and tokens (`alpn`: what its TLS offers).
    pub fn new(
        name: &'static str,
        config: &ListenConfig,
        alpn: &[&'static [u8]],
    ) -> Result<Arc<Self>, ListenError> {
        let tls = match &config.tls {
            Some(tls) => Some(Reloading::new(name, tls.clone(), alpn).map_err(|source| {
                ListenError::Tls {
                    listener: name,
                    source,
                }
            })?),
            None => None,
        };
        let tokens = config.token_file.as_deref().map(Tokens::load).transpose()?;
        Ok(Arc::new(Self {
            name,
            tls,
            tokens,
            limits: config.limits,
            rejected: Default::default(),
            connections: Arc::new(Semaphore::new(config.limits.max_connections.max(1))),
            requests: Arc::new(Semaphore::new(config.limits.max_concurrent_requests.max(1))),
            last_log: Mutex::new(None),
        }))
    }

    /// The listener's name (`OTLP/gRPC receiver`, …).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// `https` with TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// The limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The permits of requests in progress (for a concurrency-limit layer).
    pub fn requests(&self) -> Arc<Semaphore> {
        self.requests.clone()
    }

    /// Accepts on `listener` until `shutdown`: connections through their handshake.
    pub fn accept(
        self: &Arc<Self>,
        listener: TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> tokio::sync::mpsc::Receiver<Conn> {
        conn::accept(self.clone(), listener, shutdown)
    }

    /// [`Guard::accept`] as axum's server takes it.
    pub fn axum(
        self: &Arc<Self>,
        listener: TcpListener,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<AxumListener> {
        let local = listener.local_addr()?;
        Ok(AxumListener {
            rx: self.accept(listener, shutdown),
            local,
        })
    }

    /// Whether a request with this `authorization` header may go on (always, without a
    /// token file); a refusal is counted and logged (at most every 10 s).
    pub fn authorized(&self, header: Option<&[u8]>, remote: Option<SocketAddr>) -> bool {
        let Some(tokens) = &self.tokens else {
            return true;
        };
        if tokens.accepts(header) {
            return true;
        }
        let why = if header.is_some() {
            "a wrong bearer token"
        } else {
            "no bearer token"
        };
        let from = remote.map_or_else(String::new, |r| format!(" from {r}"));
        self.count(Reason::Unauthenticated, || {
            format!("refused a request{from} with {why}")
        });
        false
    }

    /// Counts a refused connection (over the limit).
    fn reject(&self, reason: Reason, remote: SocketAddr) {
        self.count(reason, || {
            format!(
                "closed a connection from {remote}: {} connections are open (the limit)",
                self.limits.max_connections
            )
        });
    }

    fn handshake_failed(&self, remote: SocketAddr, why: &str) {
        self.count(Reason::TlsHandshake, || {
            format!("TLS handshake with {remote} failed: {why}")
        });
    }

    /// Counts the error of a limit layer and says which limit it was; `None` for any
    /// other error.
    pub fn layer_error(&self, e: &tower::BoxError) -> Option<Reason> {
        let reason = if e.is::<tower::load_shed::error::Overloaded>() {
            Reason::Overloaded
        } else if e.is::<tower::timeout::error::Elapsed>() {
            Reason::Timeout
        } else {
            return None;
        };
        self.count(reason, || match reason {
            Reason::Overloaded => format!(
                "refused a request: {} are in progress (the limit)",
                self.limits.max_concurrent_requests
            ),
            _ => format!(
                "a request took longer than {:?} and was cut",
                self.limits.request_timeout
            ),
        });
        Some(reason)
    }

    fn count(&self, reason: Reason, message: impl FnOnce() -> String) {
        let i = Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        let n = self.rejected[i].fetch_add(1, Relaxed) + 1;
        let due = self.last_log.lock().is_ok_and(|mut last| {
            let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(10));
            if due {
                *last = Some(Instant::now());
            }
            due
        });
        if due {
            log::warn!(
                "{}: {} ({n} {} so far; energy_agent_listener_rejected_total)",
                self.name,
                message(),
                reason.name()
            );
        }
    }

    /// What it refused so far, by reason.
    pub fn rejected(&self) -> impl Iterator<Item = (Reason, u64)> + '_ {
        Reason::ALL
            .iter()
            .zip(&self.rejected)
            .map(|(r, n)| (*r, n.load(Relaxed)))
    }

    /// Rereads the TLS files and the tokens when they changed (`force`: in any case,
    /// SIGHUP); a file that does not load keeps what was loaded, with the reason
    /// logged.
    pub fn reload(&self, force: bool) {
        if let Some(tls) = &self.tls {
            let done = if force {
                Some(tls.reload())
            } else {
                tls.reload_if_changed()
            };
            if let Some(Err(e)) = done {
                log::error!("{}: keeping the previous TLS certificate: {e}", self.name);
            }
        }
        if let Some(tokens) = &self.tokens {
            match tokens.reload(force) {
                Some(Err(e)) => {
                    log::error!("{}: keeping the previous tokens: {e}", self.name);
                }
                Some(Ok(())) => log::info!(
                    "{}: tokens reloaded from {}",
                    self.name,
                    tokens.path().display()
                ),
                None => {}
            }
        }
    }

    /// Warns, once, when the listener is bound where other hosts can reach it without
    /// TLS or a token; `risk` says what such a peer can do.
    pub fn warn_if_exposed(&self, bound: SocketAddr, risk: &str) {
        if bound.ip().is_loopback() {
            return;
        }
        match (&self.tls, &self.tokens) {
            (None, None) => log::warn!(
                "{} on {bound} is reachable from the network with neither TLS nor a bearer token: {risk}. Bind it to 127.0.0.1, or set its TLS certificate and a token file (docs/SECURITY.md)",
                self.name
            ),
            (None, Some(_)) => log::warn!(
                "{} on {bound} asks for a bearer token but has no TLS: the token and the data cross the network in clear text. Set its TLS certificate (docs/SECURITY.md)",
                self.name
            ),
            _ => {}
        }
    }

    /// Whether a client certificate is required.
    pub fn mutual_tls(&self) -> bool {
        self.tls.as_ref().is_some_and(|t| t.mutual())
    }

    /// Whether a bearer token is required.
    pub fn token_required(&self) -> bool {
        self.tokens.is_some()
    }
}

/// Refuses a request without the listener's bearer token: 401 with
/// `WWW-Authenticate: Bearer`.
pub async fn http_auth(
    axum::extract::State(guard): axum::extract::State<Arc<Guard>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::{
        extract::ConnectInfo,
        http::{StatusCode, header},
        response::IntoResponse,
    };
    let remote = request
        .extensions()
        .get::<ConnectInfo<Remote>>()
        .map(|c| c.0.0);
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if guard.authorized(token, remote) {
        return next.run(request).await;
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "missing or invalid bearer token (Authorization: Bearer TOKEN)",
    )
        .into_response()
}

/// The HTTP answer to a limit layer's error `e`, counted: `overloaded` past the limit
/// of requests in progress (each listener's own throttling answer), 408 past the
/// request timeout.
pub fn http_limit_answer(
    guard: &Guard,
    e: &tower::BoxError,
    overloaded: impl FnOnce() -> axum::response::Response,
) -> axum::response::Response {
    use axum::{http::StatusCode, response::IntoResponse};
    match guard.layer_error(e) {
        Some(Reason::Overloaded) => overloaded(),
        Some(_) => (StatusCode::REQUEST_TIMEOUT, "request timeout").into_response(),
        None => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// The security settings in one line, for the start-up message.
pub fn describe(guard: &Guard) -> String {
    let mut parts = vec![if guard.mutual_tls() {
        "mTLS"
    } else if guard.tls.is_some() {
        "TLS"
    } else {
        "plaintext"
    }];
    if guard.token_required() {
        parts.push("bearer token");
    }
    parts.join(", ")
}

/// Rereads every guard's files when they change (polled every 2 s) and all of them
/// on SIGHUP, until `shutdown`.
pub fn spawn_reloader(guards: Vec<Arc<Guard>>, mut shutdown: watch::Receiver<bool>) {
    if guards.iter().all(|g| g.tls.is_none() && g.tokens.is_none()) {
        return;
    }
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    tokio::spawn(async move {
        let mut hangup = hangup.ok();
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            let force = tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                _ = tick.tick() => false,
                Some(()) = async {
                    match hangup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => true,
            };
            if force {
                log::info!("SIGHUP: reloading the listeners' certificates and tokens");
            }
            for guard in &guards {
                guard.reload(force);
            }
        }
    });
}
