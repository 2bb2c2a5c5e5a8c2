//! The listeners: OTLP/gRPC (tonic) and OTLP/HTTP (axum) for traces, metrics and logs.
//! A request is answered OK once it has its share of the budget and is handed to the
//! enrichment task; with no room it gets OTLP's throttling reply (see [`super::admission`]),
//! checked again before its body is even read. A malformed one gets a protocol error
//! (gRPC status or HTTP 4xx) and the listeners keep serving. Both listeners take their
//! TLS, bearer token and limits from a [`crate::listen::Guard`] each: a request without
//! the token gets `UNAUTHENTICATED` / 401 before anything else is looked at, and one
//! over the limit of requests in progress the same throttling answer as a full budget.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use axum::{
    Router,
    body::Bytes,
    error_handling::HandleErrorLayer,
    extract::{ConnectInfo, DefaultBodyLimit, Request, State},
    http::HeaderMap,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::post,
};
use opentelemetry_proto::tonic::collector::{
    logs::v1::{
        ExportLogsServiceRequest, ExportLogsServiceResponse,
        logs_service_server::{LogsService, LogsServiceServer},
    },
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
};
use tokio::sync::mpsc::{Sender, error::TrySendError};
use tonic::{codec::CompressionEncoding, service::interceptor::InterceptedService};
use tower::{BoxError, ServiceBuilder, limit::GlobalConcurrencyLimitLayer};

use crate::listen::{
    self, ALPN_GRPC, ALPN_HTTP1, Guard, ListenConfig, ListenError, Reason, Remote,
};

use super::{
    admission::{self, Admitted, Budget, Refusal, Signal, grpc_refusal, http_refusal},
    memory::Footprint,
    peer::{Origin, Peers},
};

/// What the listeners hand to the enrichment task, each with its share of the budget.
#[derive(Debug)]
pub enum Incoming {
    /// Spans, with where they came from.
    Traces(Admitted<ExportTraceServiceRequest>, Origin),
    /// Metrics (passed through).
    Metrics(Admitted<ExportMetricsServiceRequest>),
    /// Logs (passed through).
    Logs(Admitted<ExportLogsServiceRequest>),
}

/// Where accepted requests go: the budget they take a share of, and the bounded
/// hand-off to the enrichment task.
#[derive(Clone)]
pub struct Intake {
    /// The channel to the enrichment task.
    pub tx: Sender<Incoming>,
    /// What may be taken in.
    pub budget: Arc<Budget>,
}

impl Intake {
    /// Takes room for `message` (`items` items of `signal`) and hands it on as `wrap`
    /// makes it; counts the outcome.
    fn hand_off<T: Footprint>(
        &self,
        signal: Signal,
        message: T,
        items: usize,
        wrap: impl FnOnce(Admitted<T>) -> Incoming,
    ) -> Result<(), Refusal> {
        let outcome = match self.budget.admit(message, items) {
            None => Err(Refusal::Full),
            Some(admitted) => match self.tx.try_send(wrap(admitted)) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(_)) => Err(Refusal::Full),
                Err(TrySendError::Closed(_)) => Err(Refusal::ShuttingDown),
            },
        };
        match outcome {
            Ok(()) => self.budget.stats.accepted(signal, items),
            Err(why) => self.budget.stats.refused(signal, why),
        }
        outcome
    }

    /// Refuses at once, before the body is read, when nothing more fits.
    fn precheck(&self, signal: Signal) -> Result<(), Refusal> {
        if self.budget.is_full() {
            self.budget.stats.refused(signal, Refusal::Full);
            return Err(Refusal::Full);
        }
        Ok(())
    }
}

/// Listener settings.
#[derive(Clone, Debug)]
pub struct ReceiverConfig {
    /// gRPC address.
    pub grpc: SocketAddr,
    /// HTTP address.
    pub http: SocketAddr,
    /// Largest accepted message, bytes (after decompression for gRPC).
    pub max_message_bytes: usize,
    /// procfs, for resolving local senders.
    pub proc_root: PathBuf,
    /// TLS, bearer token and limits of both listeners.
    pub listen: ListenConfig,
}

/// What a sender that reaches a receiver bound beyond loopback, unauthenticated, can do.
const RISK: &str = "anyone who can reach it can send spans the agent enriches with the energy of local processes and forwards with its own credentials, and can fill its buffers";

#[derive(Clone)]
struct Grpc {
    intake: Intake,
    peers: Peers,
    ours: SocketAddr,
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let origin = self.peers.origin(request.remote_addr(), self.ours).await;
        let request = request.into_inner();
        let items = admission::trace_items(&request);
        self.intake
            .hand_off(Signal::Traces, request, items, |r| {
                Incoming::Traces(r, origin)
            })
            .map_err(grpc_refusal)?;
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl MetricsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let items = admission::metric_items(&request);
        self.intake
            .hand_off(Signal::Metrics, request, items, Incoming::Metrics)
            .map_err(grpc_refusal)?;
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl LogsService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        let request = request.into_inner();
        let items = admission::log_items(&request);
        self.intake
            .hand_off(Signal::Logs, request, items, Incoming::Logs)
            .map_err(grpc_refusal)?;
        Ok(tonic::Response::new(ExportLogsServiceResponse {
            partial_success: None,
        }))
    }
}

/// The bound listeners.
pub struct Bound {
    /// The gRPC address actually bound (port 0 resolved).
    pub grpc: SocketAddr,
    /// The HTTP address actually bound.
    pub http: SocketAddr,
    /// The gRPC listener's settings and counters.
    pub grpc_guard: Arc<Guard>,
    /// The HTTP listener's.
    pub http_guard: Arc<Guard>,
}

/// Why the receiver cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A TLS or token file cannot be used.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// An address cannot be bound.
    #[error("binding the {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The thread that finds local senders' processes cannot start.
    #[error("starting the peer resolver thread: {0}")]
    Resolver(std::io::Error),
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<tokio::net::TcpListener, StartError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })
}

/// Binds both listeners and serves until `shutdown` resolves.
pub async fn start(
    config: ReceiverConfig,
    intake: Intake,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Bound, StartError> {
    const GRPC: &str = "OTLP/gRPC receiver";
    const HTTP: &str = "OTLP/HTTP receiver";
    let grpc_guard = Guard::new(GRPC, &config.listen, ALPN_GRPC)?;
    let http_guard = Guard::new(HTTP, &config.listen, ALPN_HTTP1)?;
    let grpc_listener = bind(GRPC, config.grpc).await?;
    let http_listener = bind(HTTP, config.http).await?;
    let local = |l: &tokio::net::TcpListener, what, addr| {
        l.local_addr()
            .map_err(|source| StartError::Bind { what, addr, source })
    };
    let bound = Bound {
        grpc: local(&grpc_listener, GRPC, config.grpc)?,
        http: local(&http_listener, HTTP, config.http)?,
        grpc_guard,
        http_guard,
    };
    bound.grpc_guard.warn_if_exposed(bound.grpc, RISK);
    bound.http_guard.warn_if_exposed(bound.http, RISK);
    let peers = Peers::new(config.proc_root.clone()).map_err(StartError::Resolver)?;
    let max = config.max_message_bytes;
    let svc = Grpc {
        intake: intake.clone(),
        peers: peers.clone(),
        ours: bound.grpc,
    };
    serve_grpc(
        grpc_listener,
        (svc, bound.grpc_guard.clone()),
        max,
        shutdown.clone(),
    );
    let state = HttpState {
        intake,
        peers,
        ours: bound.http,
        max,
    };
    serve_http(http_listener, (state, bound.http_guard.clone()), shutdown).map_err(|source| {
        StartError::Bind {
            what: HTTP,
            addr: bound.http,
            source,
        }
    })?;
    Ok(bound)
}

/// Serves the three OTLP/gRPC services on `listener` (messages up to `max` bytes,
/// gzip accepted) until `shutdown` turns true: the bearer token is checked first, then
/// the budget, before the body is read; the guard's limits wrap everything.
fn serve_grpc(
    listener: tokio::net::TcpListener,
    (svc, guard): (Grpc, Arc<Guard>),
    max: usize,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let precheck = |signal| {
        let intake = svc.intake.clone();
        let guard = guard.clone();
        move |request: tonic::Request<()>| {
            let token = request
                .metadata()
                .get("authorization")
                .map(|v| v.as_bytes());
            if !guard.authorized(token, request.remote_addr()) {
                return Err(tonic::Status::unauthenticated(
                    "missing or invalid bearer token (authorization: Bearer TOKEN)",
                ));
            }
            intake.precheck(signal).map_err(grpc_refusal)?;
            Ok(request)
        }
    };
    let limits = {
        let g = guard.clone();
        ServiceBuilder::new()
            .map_err(move |e: BoxError| -> BoxError {
                match g.layer_error(&e) {
                    Some(Reason::Overloaded) => Box::new(grpc_refusal(Refusal::Full)),
                    Some(_) => Box::new(tonic::Status::deadline_exceeded(
                        "the request took longer than the receiver's request timeout",
                    )),
                    None => e,
                }
            })
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(
                guard.requests(),
            ))
            .timeout(guard.limits().request_timeout)
    };
    let conns =
        tokio_stream::wrappers::ReceiverStream::new(guard.accept(listener, shutdown.clone()));
    let grpc = tonic::transport::Server::builder()
        .layer(limits)
        .add_service(InterceptedService::new(
            TraceServiceServer::new(svc.clone())
                .max_decoding_message_size(max)
                .accept_compressed(CompressionEncoding::Gzip),
            precheck(Signal::Traces),
        ))
        .add_service(InterceptedService::new(
            MetricsServiceServer::new(svc.clone())
                .max_decoding_message_size(max)
                .accept_compressed(CompressionEncoding::Gzip),
            precheck(Signal::Metrics),
        ))
        .add_service(InterceptedService::new(
            LogsServiceServer::new(svc.clone())
                .max_decoding_message_size(max)
                .accept_compressed(CompressionEncoding::Gzip),
            precheck(Signal::Logs),
        ))
        .serve_with_incoming_shutdown(
            tokio_stream::StreamExt::map(conns, Ok::<_, std::io::Error>),
            async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            },
        );
    tokio::spawn(async move {
        if let Err(e) = grpc.await {
            log::error!("OTLP/gRPC receiver stopped: {e}");
        }
    });
}

/// Serves the OTLP/HTTP paths on `listener` until `shutdown` turns true: the guard's
/// limits, then its bearer token, then the budget, before the body is read.
fn serve_http(
    listener: tokio::net::TcpListener,
    (state, guard): (HttpState, Arc<Guard>),
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let limits = {
        let g = guard.clone();
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(move |e: BoxError| {
                let answer = listen::http_limit_answer(&g, &e, || http_refusal(Refusal::Full));
                async move { answer }
            }))
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(
                guard.requests(),
            ))
            .timeout(guard.limits().request_timeout)
    };
    let app = Router::new()
        .route("/v1/traces", post(http_traces))
        .route("/v1/metrics", post(http_metrics))
        .route("/v1/logs", post(http_logs))
        .layer(DefaultBodyLimit::max(state.max))
        .route_layer(middleware::from_fn_with_state(state.clone(), http_precheck))
        .route_layer(middleware::from_fn_with_state(
            guard.clone(),
            listen::http_auth,
        ))
        .route_layer(limits)
        .with_state(state);
    let conns = guard.axum(listener, shutdown.clone())?;
    tokio::spawn(async move {
        let served = axum::serve(conns, app.into_make_service_with_connect_info::<Remote>())
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(e) = served {
            log::error!("OTLP/HTTP receiver stopped: {e}");
        }
    });
    Ok(())
}

#[derive(Clone)]
struct HttpState {
    intake: Intake,
    peers: Peers,
    ours: SocketAddr,
    max: usize,
}

/// Throttles a request before its body is read when nothing more fits.
async fn http_precheck(State(s): State<HttpState>, request: Request, next: Next) -> Response {
    let signal = match request.uri().path() {
        "/v1/metrics" => Signal::Metrics,
        "/v1/logs" => Signal::Logs,
        _ => Signal::Traces,
    };
    match s.intake.precheck(signal) {
        Ok(()) => next.run(request).await,
        Err(why) => http_refusal(why),
    }
}

async fn http_traces(
    State(s): State<HttpState>,
    ConnectInfo(Remote(peer)): ConnectInfo<Remote>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (request, format) = match decode::<ExportTraceServiceRequest>(&headers, &body, s.max) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let origin = s.peers.origin(Some(peer), s.ours).await;
    let items = admission::trace_items(&request);
    if let Err(why) = s.intake.hand_off(Signal::Traces, request, items, |r| {
        Incoming::Traces(r, origin)
    }) {
        return http_refusal(why);
    }
    ok(
        ExportTraceServiceResponse {
            partial_success: None,
        },
        format,
    )
}

async fn http_metrics(State(s): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let (request, format) = match decode::<ExportMetricsServiceRequest>(&headers, &body, s.max) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let items = admission::metric_items(&request);
    if let Err(why) = s
        .intake
        .hand_off(Signal::Metrics, request, items, Incoming::Metrics)
    {
        return http_refusal(why);
    }
    ok(
        ExportMetricsServiceResponse {
            partial_success: None,
        },
        format,
    )
}

async fn http_logs(State(s): State<HttpState>, headers: HeaderMap, body: Bytes) -> Response {
    let (request, format) = match decode::<ExportLogsServiceRequest>(&headers, &body, s.max) {
        Ok(v) => v,
        Err(r) => return r.into_response(),
    };
    let items = admission::log_items(&request);
    if let Err(why) = s
        .intake
        .hand_off(Signal::Logs, request, items, Incoming::Logs)
    {
        return http_refusal(why);
    }
    ok(
        ExportLogsServiceResponse {
            partial_success: None,
        },
        format,
    )
}

mod decode;
pub use decode::{Format, decode_body};
use decode::{decode, ok};

#[cfg(test)]
mod tests;
