//! Forwarding OTLP to the downstream collector or backend (`--otlp-endpoint`), gRPC or
//! HTTP/protobuf, with the standard `OTEL_EXPORTER_OTLP_*` settings. Payloads wait in a
//! bounded queue and are retried with exponential backoff while the downstream is
//! unavailable; only past the queue bound, or when the downstream rejects a payload
//! with a status OTLP says not to retry (a backend that takes no metrics, say), is
//! anything lost, and every loss is counted and logged. A rejected payload is dropped
//! rather than retried so that it cannot hold up everything queued behind it.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    },
    metrics::v1::{Metric, metric::Data},
};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
};

/// OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC.
    Grpc,
    /// OTLP/HTTP with protobuf bodies.
    HttpProtobuf,
}

impl std::str::FromStr for Protocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "grpc" => Ok(Self::Grpc),
            "http" | "http/protobuf" => Ok(Self::HttpProtobuf),
            "http/json" => {
                Err("OTLP http/json export is not supported; use grpc or http/protobuf".into())
            }
            _ => Err(format!("unknown OTLP protocol {s:?} (grpc, http/protobuf)")),
        }
    }
}

/// Where and how to forward.
#[derive(Clone, Debug)]
pub struct ForwardConfig {
    /// Base endpoint (`http://host:4317` for gRPC, `http://host:4318` for HTTP).
    pub endpoint: String,
    /// Transport.
    pub protocol: Protocol,
    /// Extra headers (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Vec<(String, String)>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Queue bound, in spans + data points + log records.
    pub max_queued_items: usize,
}

mod headers;
pub use headers::parse_headers;

/// One OTLP export to pass on.
#[derive(Clone, Debug)]
pub enum Payload {
    /// Spans.
    Traces(ExportTraceServiceRequest),
    /// Metrics.
    Metrics(ExportMetricsServiceRequest),
    /// Logs.
    Logs(ExportLogsServiceRequest),
}

impl Payload {
    /// Spans, data points or log records in it (what the queue bound counts).
    pub fn items(&self) -> usize {
        match self {
            Payload::Traces(r) => r
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .map(|ss| ss.spans.len())
                .sum::<usize>(),
            Payload::Metrics(r) => r
                .resource_metrics
                .iter()
                .flat_map(|rm| &rm.scope_metrics)
                .flat_map(|sm| &sm.metrics)
                .map(data_points)
                .sum::<usize>(),
            Payload::Logs(r) => r
                .resource_logs
                .iter()
                .flat_map(|rl| &rl.scope_logs)
                .map(|sl| sl.log_records.len())
                .sum::<usize>(),
        }
        .max(1)
    }

    /// Encodes it once (freeing the message); retries resend the same bytes.
    fn encode(self) -> Encoded {
        let items = self.items();
        let (signal, body) = match &self {
            Payload::Traces(r) => (Signal::Traces, r.encode_to_vec()),
            Payload::Metrics(r) => (Signal::Metrics, r.encode_to_vec()),
            Payload::Logs(r) => (Signal::Logs, r.encode_to_vec()),
        };
        Encoded {
            signal,
            items,
            body: body.into(),
        }
    }
}

/// Data points in one metric.
fn data_points(m: &Metric) -> usize {
    match &m.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

/// The OTLP signal of a payload, which picks the HTTP path and the gRPC method.
#[derive(Clone, Copy, Debug)]
enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    fn http_path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
            Signal::Logs => "/v1/logs",
        }
    }

    fn grpc_method(self) -> &'static str {
        match self {
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            Signal::Metrics => "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
            Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
        }
    }
}

/// A payload as it waits in the queue: encoded, so that sending (and resending) it
/// neither clones nor re-encodes the message tree.
#[derive(Debug)]
struct Encoded {
    signal: Signal,
    items: usize,
    body: Bytes,
}

/// A gRPC codec for bodies that are already protobuf-encoded. The response (an
/// `Export*ServiceResponse`) is read and discarded, as the typed clients did.
#[derive(Clone, Copy, Debug, Default)]
struct PreEncoded;

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = PreEncoded;
    type Decoder = PreEncoded;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncoded
    }

    fn decoder(&mut self) -> Self::Decoder {
        PreEncoded
    }
}

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for PreEncoded {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

/// What the forwarder has done, for the agent's own metrics.
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Items delivered downstream.
    pub forwarded: AtomicU64,
    /// Items dropped: the queue was full, or the downstream rejected them for good.
    pub dropped: AtomicU64,
    /// Items waiting now.
    pub queued: AtomicU64,
    /// Failed attempts (retried or rejected).
    pub failures: AtomicU64,
    /// The last failure.
    pub last_error: Mutex<Option<String>>,
}

/// The sending end of the forwarder.
#[derive(Clone)]
pub struct Forwarder {
    tx: mpsc::UnboundedSender<Encoded>,
    /// Counters.
    pub stats: Arc<ForwardStats>,
}

impl Forwarder {
    /// Encodes and queues a payload (never blocks; the queue bound is enforced by the
    /// task).
    pub fn send(&self, payload: Payload) {
        let encoded = payload.encode();
        let items = encoded.items as u64;
        self.stats.queued.fetch_add(items, Ordering::Relaxed);
        if self.tx.send(encoded).is_err() {
            self.stats.queued.fetch_sub(items, Ordering::Relaxed);
            self.stats.dropped.fetch_add(items, Ordering::Relaxed);
        }
    }
}

/// The HTTP URL of a signal: the base endpoint plus `/v1/<signal>` unless it already
/// names a signal path.
pub fn http_url(endpoint: &str, path: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") || base.ends_with("/v1/metrics") || base.ends_with("/v1/logs") {
        base.to_string()
    } else {
        format!("{base}{path}")
    }
}

/// Starts the forwarding task on the current tokio runtime.
pub fn spawn(config: ForwardConfig) -> Forwarder {
    let (tx, rx) = mpsc::unbounded_channel();
    let stats = Arc::new(ForwardStats::default());
    tokio::spawn(run(config, rx, stats.clone()));
    Forwarder { tx, stats }
}

async fn run(
    config: ForwardConfig,
    mut rx: mpsc::UnboundedReceiver<Encoded>,
    stats: Arc<ForwardStats>,
) {
    let grpc = grpc_client(&config);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(config.timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut queue = Queue::default();
    let mut retry = Retry::default();
    loop {
        let wait = match (queue.payloads.is_empty(), retry.at) {
            (true, _) => Duration::from_secs(3600),
            (false, Some(t)) => t.saturating_duration_since(Instant::now()),
            (false, None) => Duration::ZERO,
        };
        tokio::select! {
            msg = rx.recv() => {
                let Some(p) = msg else { break };
                queue.push(p, &config, &stats);
                continue;
            }
            _ = tokio::time::sleep(wait) => {}
        }
        let Some(front) = queue.payloads.front() else {
            continue;
        };
        let result = match &grpc {
            Some(c) => send_grpc(c.clone(), &config, front).await,
            None if config.protocol == Protocol::Grpc => {
                Err(Failure::Retry("no usable gRPC endpoint".into()))
            }
            None => send_http(&agent, &config, front).await,
        };
        match result {
            Ok(()) => {
                queue.delivered(&stats);
                retry = Retry::default();
            }
            Err(Failure::Retry(e)) => retry.failed(e, &config, &stats, queue.items),
            Err(Failure::Rejected(e)) => {
                queue.rejected(e, &config, &stats);
                retry = Retry::default();
            }
        }
    }
}

/// The gRPC client for `config`, when it uses gRPC and its endpoint is a URL
/// (connecting lazily, so a downstream that is not up yet is retried like any other).
fn grpc_client(config: &ForwardConfig) -> Option<tonic::client::Grpc<tonic::transport::Channel>> {
    if config.protocol != Protocol::Grpc {
        return None;
    }
    match tonic::transport::Endpoint::from_shared(config.endpoint.clone()) {
        Ok(ep) => {
            let channel = ep
                .timeout(config.timeout)
                .connect_timeout(config.timeout)
                .connect_lazy();
            Some(tonic::client::Grpc::new(channel))
        }
        Err(e) => {
            log::error!("OTLP endpoint {:?} is not a URL: {e}", config.endpoint);
            None
        }
    }
}

/// The payloads waiting to be sent, oldest first, bounded in items.
#[derive(Default)]
struct Queue {
    payloads: VecDeque<Encoded>,
    /// Items in `payloads`.
    items: usize,
    last_drop_log: Option<Instant>,
    last_reject_log: Option<Instant>,
}

impl Queue {
    /// Queues a payload; past the bound, drops the oldest payloads (never the newest),
    /// counting and logging (at most every 10 s) what was lost.
    fn push(&mut self, p: Encoded, config: &ForwardConfig, stats: &ForwardStats) {
        self.items += p.items;
        self.payloads.push_back(p);
        while self.items > config.max_queued_items && self.payloads.len() > 1 {
            let old = self.payloads.pop_front().expect("non-empty");
            let n = old.items;
            self.items -= n;
            stats.queued.fetch_sub(n as u64, Ordering::Relaxed);
            stats.dropped.fetch_add(n as u64, Ordering::Relaxed);
            if self
                .last_drop_log
                .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
            {
                log::warn!(
                    "OTLP queue full ({} items): dropped {n} oldest items (see energy_agent_otlp_dropped_total)",
                    config.max_queued_items
                );
                self.last_drop_log = Some(Instant::now());
            }
        }
    }

    /// The downstream rejected the oldest payload for good (`e`): it is dropped, counted
    /// and logged (at most every 10 s).
    fn rejected(&mut self, e: String, config: &ForwardConfig, stats: &ForwardStats) {
        let Some(front) = self.payloads.pop_front() else {
            return;
        };
        let n = front.items;
        self.items -= n;
        stats.queued.fetch_sub(n as u64, Ordering::Relaxed);
        stats.dropped.fetch_add(n as u64, Ordering::Relaxed);
        stats.failures.fetch_add(1, Ordering::Relaxed);
        if self
            .last_reject_log
            .is_none_or(|t| t.elapsed() > Duration::from_secs(10))
        {
            log::warn!(
                "OTLP {:?} export to {} rejected ({e}), not retryable: dropped {n} items (see energy_agent_otlp_dropped_total)",
                front.signal,
                config.endpoint
            );
            self.last_reject_log = Some(Instant::now());
        }
        if let Ok(mut last) = stats.last_error.lock() {
            *last = Some(e);
        }
    }

    /// The oldest payload was delivered.
    fn delivered(&mut self, stats: &ForwardStats) {
        if let Some(front) = self.payloads.pop_front() {
            let n = front.items;
            self.items -= n;
            stats.queued.fetch_sub(n as u64, Ordering::Relaxed);
            stats.forwarded.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Exponential backoff between failed attempts: 100 ms doubling up to 5 s.
struct Retry {
    backoff: Duration,
    /// When to try again; none while the last attempt succeeded.
    at: Option<Instant>,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            backoff: Duration::from_millis(100),
            at: None,
        }
    }
}

impl Retry {
    /// An attempt failed with `e` (`queued` items waiting): counts it, logs every 50th
    /// failure, and schedules the next attempt.
    fn failed(&mut self, e: String, config: &ForwardConfig, stats: &ForwardStats, queued: usize) {
        stats.failures.fetch_add(1, Ordering::Relaxed);
        if stats.failures.load(Ordering::Relaxed) % 50 == 1 {
            log::warn!(
                "OTLP export to {} failed ({e}); retrying in {:?} with {queued} items queued",
                config.endpoint,
                self.backoff,
            );
        }
        if let Ok(mut last) = stats.last_error.lock() {
            *last = Some(e);
        }
        self.at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(Duration::from_secs(5));
    }
}

/// A failed attempt, by what OTLP says to do about it.
#[derive(Debug)]
enum Failure {
    /// Try the same payload again later (the downstream is unavailable, overloaded,
    /// or the connection failed).
    Retry(String),
    /// The downstream will not take this payload; retrying cannot help.
    Rejected(String),
}

/// Whether a gRPC status may be retried: OTLP's retryable codes, and `Unknown`, which
/// tonic also reports for failures of the transport itself.
fn grpc_retryable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Cancelled
            | DeadlineExceeded
            | ResourceExhausted
            | Aborted
            | OutOfRange
            | Unavailable
            | DataLoss
            | Unknown
    )
}

/// Whether an HTTP status may be retried (OTLP/HTTP: 429, 502, 503, 504).
fn http_retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

fn with_headers<T>(config: &ForwardConfig, body: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    for (k, v) in &config.headers {
        if let (Ok(k), Ok(v)) = (
            k.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
            v.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>(),
        ) {
            req.metadata_mut().insert(k, v);
        }
    }
    req
}

async fn send_grpc(
    mut client: tonic::client::Grpc<tonic::transport::Channel>,
    config: &ForwardConfig,
    payload: &Encoded,
) -> Result<(), Failure> {
    client
        .ready()
        .await
        .map_err(|e| Failure::Retry(format!("gRPC connection: {e}")))?;
    let method = tonic::codegen::http::uri::PathAndQuery::from_static(payload.signal.grpc_method());
    client
        .unary(
            with_headers(config, payload.body.clone()),
            method,
            PreEncoded,
        )
        .await
        .map(|_| ())
        .map_err(|s| {
            let e = format!("gRPC {:?}: {}", s.code(), s.message());
            if grpc_retryable(s.code()) {
                Failure::Retry(e)
            } else {
                Failure::Rejected(e)
            }
        })
}

async fn send_http(
    agent: &ureq::Agent,
    config: &ForwardConfig,
    payload: &Encoded,
) -> Result<(), Failure> {
    let url = http_url(&config.endpoint, payload.signal.http_path());
    let body = payload.body.clone();
    let headers = config.headers.clone();
    let agent = agent.clone();
    tokio::task::spawn_blocking(move || {
        let mut req = agent
            .post(&url)
            .header("Content-Type", "application/x-protobuf");
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req
            .send(&body[..])
            .map_err(|e| Failure::Retry(format!("POST {url}: {e}")))?;
        let status = resp.status().as_u16();
        let e = format!("POST {url}: HTTP {status}");
        match status {
            200..300 => Ok(()),
            s if http_retryable(s) => Err(Failure::Retry(e)),
            _ => Err(Failure::Rejected(e)),
        }
    })
    .await
    .map_err(|e| Failure::Retry(format!("HTTP task: {e}")))?
}

#[cfg(test)]
mod tests;
