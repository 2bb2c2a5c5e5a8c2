//! An OTLP/gRPC load generator and a counting sink, for the enrichment benchmarks.

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_client::TraceServiceClient,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value as Any},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind},
};

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn kv(key: &str, value: Any) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// What the sink saw.
#[derive(Default)]
pub struct SinkState {
    ids: HashSet<u64>,
    /// Arrival minus span end, ns, per span.
    pub delays_ns: Vec<f64>,
    /// Spans that carried `energy.joules`.
    pub enriched: u64,
    /// Spans seen more than once.
    pub duplicates: u64,
}

impl SinkState {
    /// Distinct spans received.
    pub fn received(&self) -> u64 {
        self.ids.len() as u64
    }
}

#[derive(Clone)]
struct Sink(Arc<Mutex<SinkState>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let now = unix_ns();
        let mut s = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                for span in ss.spans {
                    let id = u64::from_be_bytes(span.span_id[..8].try_into().unwrap_or([0; 8]));
                    if !s.ids.insert(id) {
                        s.duplicates += 1;
                        continue;
                    }
                    s.delays_ns
                        .push(now.saturating_sub(span.end_time_unix_nano) as f64);
                    if span.attributes.iter().any(|a| a.key == "energy.joules") {
                        s.enriched += 1;
                    }
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Takes the agent's own metrics and drops them (so that a drop the agent counts is a
/// span's, not a metric refused as unimplemented).
#[derive(Clone, Copy)]
struct MetricsSink;

#[tonic::async_trait]
impl MetricsService for MetricsSink {
    async fn export(
        &self,
        _: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// A running server: what stops it, and its task.
type Serving = (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
);

/// A sink that can be taken away and brought back on its address (the soak's outages),
/// keeping one record of what it received.
#[derive(Clone)]
pub struct SinkHandle {
    addr: SocketAddr,
    state: Arc<Mutex<SinkState>>,
    running: Arc<Mutex<Option<Serving>>>,
}

impl SinkHandle {
    /// Serves a sink on `addr` (inside a tokio runtime).
    pub async fn start(addr: SocketAddr) -> Self {
        let handle = Self {
            addr,
            state: Arc::new(Mutex::new(SinkState::default())),
            running: Arc::new(Mutex::new(None)),
        };
        handle.restart().await;
        handle
    }

    /// Stops serving: connections are refused until [`SinkHandle::restart`].
    pub async fn stop(&self) {
        let running = self.running.lock().unwrap().take();
        if let Some((stop, task)) = running {
            let _ = stop.send(());
            let _ = task.await;
        }
    }

    /// Serves again on the same address.
    pub async fn restart(&self) {
        let service =
            TraceServiceServer::new(Sink(self.state.clone())).max_decoding_message_size(64 << 20);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let addr = self.addr;
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .add_service(MetricsServiceServer::new(MetricsSink))
                .serve_with_shutdown(addr, async {
                    let _ = stopped.await;
                })
                .await;
        });
        *self.running.lock().unwrap() = Some((stop, task));
        // Until it accepts connections.
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Distinct spans received.
    pub fn received(&self) -> u64 {
        self.state.lock().unwrap().received()
    }
}

/// Serves a sink on `addr` in the current runtime; returns what it records.
pub fn start_sink(addr: SocketAddr) -> Arc<Mutex<SinkState>> {
    let state = Arc::new(Mutex::new(SinkState::default()));
    let service = TraceServiceServer::new(Sink(state.clone())).max_decoding_message_size(64 << 20);
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(service)
            .serve(addr)
            .await;
    });
    state
}

/// One batch of `n` SERVER spans of process `pid`, ids from `next_id`, ending now.
fn batch(pid: u32, next_id: &AtomicU64, n: usize) -> ExportTraceServiceRequest {
    let end = unix_ns();
    let spans = (0..n)
        .map(|_| {
            let id = next_id.fetch_add(1, Ordering::Relaxed);
            Span {
                trace_id: [id.to_be_bytes(), 7u64.to_be_bytes()].concat(),
                span_id: id.to_be_bytes().to_vec(),
                name: "chat bench-model".into(),
                kind: SpanKind::Server as i32,
                start_time_unix_nano: end - 10_000_000,
                end_time_unix_nano: end,
                attributes: vec![
                    kv("gen_ai.operation.name", Any::StringValue("chat".into())),
                    kv(
                        "gen_ai.request.model",
                        Any::StringValue("bench-model".into()),
                    ),
                ],
                ..Default::default()
            }
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", Any::StringValue("bench".into())),
                    kv("process.pid", Any::IntValue(i64::from(pid))),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// What a load step achieved.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sent {
    /// Spans accepted by the agent.
    pub spans: u64,
    /// Batches refused or failed.
    pub failed_batches: u64,
    /// Seconds the step took.
    pub seconds: f64,
}

/// [`generate`] as a task of its own.
pub async fn generate_owned(
    endpoint: String,
    rate: u64,
    seconds: f64,
    next_id: Arc<AtomicU64>,
) -> Sent {
    generate(&endpoint, rate, seconds, next_id).await
}

/// Sends `rate` spans/s to `endpoint` for `seconds`, in batches of up to 500, at most
/// 16 batches in flight.
pub async fn generate(endpoint: &str, rate: u64, seconds: f64, next_id: Arc<AtomicU64>) -> Sent {
    let client = TraceServiceClient::connect(endpoint.to_string())
        .await
        .expect("connecting to the agent's receiver")
        .max_encoding_message_size(64 << 20);
    let per_batch = (rate / 20).clamp(1, 500) as usize;
    let batches = ((rate as f64 * seconds) / per_batch as f64).ceil() as u64;
    let gap = Duration::from_secs_f64(per_batch as f64 / rate as f64);
    let pid = std::process::id();
    let permits = Arc::new(tokio::sync::Semaphore::new(16));
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..batches {
        tokio::time::sleep_until((start + gap * k as u32).into()).await;
        let permit = permits.clone().acquire_owned().await.unwrap();
        let mut client = client.clone();
        let request = batch(pid, &next_id, per_batch);
        let (sent, failed) = (sent.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            match client.export(request).await {
                Ok(_) => sent.fetch_add(per_batch as u64, Ordering::Relaxed),
                Err(_) => failed.fetch_add(1, Ordering::Relaxed),
            };
            drop(permit);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Sent {
        spans: sent.load(Ordering::Relaxed),
        failed_batches: failed.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
    }
}
