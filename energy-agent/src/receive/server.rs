//! The listeners: OTLP/gRPC (tonic) and OTLP/HTTP (axum) for traces, metrics and logs.
//! Each request is answered as soon as it is queued; a malformed one gets a protocol
//! error (gRPC status or HTTP 4xx) and the listeners keep serving.

use std::{io::Read, net::SocketAddr, path::PathBuf};

use axum::{
    Router,
    body::Bytes,
    extract::{ConnectInfo, DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode, header},
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
use tokio::sync::mpsc::UnboundedSender;
use tonic::codec::CompressionEncoding;

use super::peer::{Origin, Peers};

/// What the listeners hand to the enrichment task.
#[derive(Debug)]
pub enum Incoming {
    /// Spans, with where they came from.
    Traces(ExportTraceServiceRequest, Origin),
    /// Metrics (passed through).
    Metrics(ExportMetricsServiceRequest),
    /// Logs (passed through).
    Logs(ExportLogsServiceRequest),
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
    tx: UnboundedSender<Incoming>,
    peers: Peers,
    ours: SocketAddr,
}

fn queued(sent: bool) -> Result<(), tonic::Status> {
    if sent {
        Ok(())
    } else {
        Err(tonic::Status::unavailable("the agent is shutting down"))
    }
}

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let origin = self.peers.origin(request.remote_addr(), self.ours).await;
        queued(
            self.tx
                .send(Incoming::Traces(request.into_inner(), origin))
                .is_ok(),
        )?;
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
        queued(
            self.tx
                .send(Incoming::Metrics(request.into_inner()))
                .is_ok(),
        )?;
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
        queued(self.tx.send(Incoming::Logs(request.into_inner())).is_ok())?;
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
    tx: UnboundedSender<Incoming>,
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
        tx: tx.clone(),
        peers: peers.clone(),
        ours: bound.grpc,
    };
    serve_grpc(grpc_listener, svc, max, shutdown.clone());
    let state = HttpState {
        tx,
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
    let grpc = tonic::transport::Server::builder()
        .add_service(
            TraceServiceServer::new(svc.clone())
                .max_decoding_message_size(max)
                .accept_compressed(CompressionEncoding::Gzip),
        )
        .add_service(
            MetricsServiceServer::new(svc.clone())
                .max_decoding_message_size(max)
                .accept_compressed(CompressionEncoding::Gzip),
        )
        .add_service(
            LogsServiceServer::new(svc)
                .max_decoding_message_size(max)
                .accept_compressed(CompressionEncoding::Gzip),
        )
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
    tx: UnboundedSender<Incoming>,
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

fn sent(ok: bool) -> Result<(), Reject> {
    if ok {
        Ok(())
    } else {
        Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the agent is shutting down",
        ))
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
    if let Err(r) = sent(s.tx.send(Incoming::Traces(request, origin)).is_ok()) {
        return r.into_response();
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
    if let Err(r) = sent(s.tx.send(Incoming::Metrics(request)).is_ok()) {
        return r.into_response();
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
    if let Err(r) = sent(s.tx.send(Incoming::Logs(request)).is_ok()) {
        return r.into_response();
    }
    ok(
        ExportLogsServiceResponse {
            partial_success: None,
        },
        format,
    )
}
