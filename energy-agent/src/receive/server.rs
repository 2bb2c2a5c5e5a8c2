//! The listeners: OTLP/gRPC (tonic) and OTLP/HTTP (axum) for traces, metrics and logs.
//! A request is answered OK once it has its share of the budget and is handed to the
//! enrichment task; with no room it gets OTLP's throttling reply (see [`super::admission`]),
//! checked again before its body is even read. A malformed one gets a protocol error
//! (gRPC status or HTTP 4xx) and the listeners keep serving.

use std::{io::Read, net::SocketAddr, path::PathBuf, sync::Arc};

use axum::{
    Router,
    body::Bytes,
    extract::{ConnectInfo, DefaultBodyLimit, Request, State},
    http::{HeaderMap, StatusCode, header},
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
use prost::Message;
use tokio::sync::mpsc::{Sender, error::TrySendError};
use tonic::{codec::CompressionEncoding, service::interceptor::InterceptedService};

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
}

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
}

/// Binds both listeners and serves until `shutdown` resolves.
pub async fn start(
    config: ReceiverConfig,
    intake: Intake,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<Bound> {
    use anyhow::Context as _;
    let grpc_listener = tokio::net::TcpListener::bind(config.grpc)
        .await
        .with_context(|| format!("binding the OTLP/gRPC receiver on {}", config.grpc))?;
    let http_listener = tokio::net::TcpListener::bind(config.http)
        .await
        .with_context(|| format!("binding the OTLP/HTTP receiver on {}", config.http))?;
    let bound = Bound {
        grpc: grpc_listener.local_addr()?,
        http: http_listener.local_addr()?,
    };
    let peers =
        Peers::new(config.proc_root.clone()).context("starting the peer resolver thread")?;
    let max = config.max_message_bytes;
    let svc = Grpc {
        intake: intake.clone(),
        peers: peers.clone(),
        ours: bound.grpc,
    };
    serve_grpc(grpc_listener, svc, max, shutdown.clone());
    let state = HttpState {
        intake,
        peers,
        ours: bound.http,
        max,
    };
    serve_http(http_listener, state, shutdown);
    Ok(bound)
}

/// Serves the three OTLP/gRPC services on `listener` (messages up to `max` bytes,
/// gzip accepted) until `shutdown` turns true.
fn serve_grpc(
    listener: tokio::net::TcpListener,
    svc: Grpc,
    max: usize,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let precheck = |signal| {
        let intake = svc.intake.clone();
        move |request: tonic::Request<()>| {
            intake.precheck(signal).map_err(grpc_refusal)?;
            Ok(request)
        }
    };
    let grpc = tonic::transport::Server::builder()
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
            tonic::transport::server::TcpIncoming::from(listener),
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

/// Serves the OTLP/HTTP paths on `listener` until `shutdown` turns true.
fn serve_http(
    listener: tokio::net::TcpListener,
    state: HttpState,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let app = Router::new()
        .route("/v1/traces", post(http_traces))
        .route("/v1/metrics", post(http_metrics))
        .route("/v1/logs", post(http_logs))
        .layer(DefaultBodyLimit::max(state.max))
        .route_layer(middleware::from_fn_with_state(state.clone(), http_precheck))
        .with_state(state);
    tokio::spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        })
        .await;
        if let Err(e) = served {
            log::error!("OTLP/HTTP receiver stopped: {e}");
        }
    });
}

#[derive(Clone)]
struct HttpState {
    intake: Intake,
    peers: Peers,
    ours: SocketAddr,
    max: usize,
}

/// Body format of an OTLP/HTTP request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Protobuf,
    Json,
}

/// A rejected request: its HTTP status and why.
struct Reject(StatusCode, String);

impl IntoResponse for Reject {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Reject {
    Reject(status, message.into())
}

/// Decodes an OTLP/HTTP body: gzip if so encoded, then protobuf or JSON by content type.
fn decode<T: Message + Default + serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: &Bytes,
    max: usize,
) -> Result<(T, Format), Reject> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let format = match content_type.as_str() {
        "application/x-protobuf" | "application/protobuf" => Format::Protobuf,
        "application/json" => Format::Json,
        other => {
            return Err(error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "unsupported content type {other:?}: use application/x-protobuf or application/json"
                ),
            ));
        }
    };
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let mut inflated = Vec::new();
    let bytes: &[u8] = if gzip {
        let mut reader = flate2::read::GzDecoder::new(&body[..]).take(max as u64 + 1);
        reader
            .read_to_end(&mut inflated)
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("bad gzip body: {e}")))?;
        if inflated.len() > max {
            return Err(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {max} bytes once decompressed"),
            ));
        }
        &inflated
    } else {
        body
    };
    let message = match format {
        Format::Protobuf => T::decode(bytes).map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                format!("malformed OTLP protobuf: {e}"),
            )
        })?,
        Format::Json => serde_json::from_slice(bytes)
            .map_err(|e| error(StatusCode::BAD_REQUEST, format!("malformed OTLP JSON: {e}")))?,
    };
    Ok((message, format))
}

fn ok<T: Message + serde::Serialize>(response: T, format: Format) -> Response {
    match format {
        Format::Protobuf => (
            [(header::CONTENT_TYPE, "application/x-protobuf")],
            response.encode_to_vec(),
        )
            .into_response(),
        Format::Json => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_vec(&response).unwrap_or_else(|_| b"{}".to_vec()),
        )
            .into_response(),
    }
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
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
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

#[cfg(test)]
mod tests;
