//! Forwarding OTLP to the downstream collector or backend (`--otlp-endpoint`), gRPC or
//! HTTP/protobuf, with the standard `OTEL_EXPORTER_OTLP_*` settings. Payloads wait in a
//! bounded queue ([`queue`]) and up to `--otlp-concurrency` are in flight at once. What
//! OTLP calls retryable (gRPC `UNAVAILABLE`, `RESOURCE_EXHAUSTED` with `RetryInfo`, …;
//! HTTP 429/502/503/504) is retried after the delay the downstream asked for, else with
//! exponential backoff and jitter ([`retry`]); anything else is dropped at once, counted
//! and logged, so that one payload the downstream refuses cannot hold up the rest. A
//! `partial_success` in an OK answer is logged and its rejected items counted.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::{
    logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
    trace::v1::ExportTraceServiceRequest,
};
use prost::Message;
use tokio::{sync::Notify, task::JoinSet, time::Instant};

use crate::{
    receive::admission::{Ticket, log_items, metric_items, trace_items},
    tls::{
        TlsError,
        client::{ClientMaterial, ClientTls},
    },
};
use queue::{LogEvery, Queue};
use retry::{Backoff, Delivered, Failure};
use send::Transport;

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
    /// Exports in flight at once.
    pub concurrency: usize,
    /// TLS for an `https://` endpoint: the CAs to trust and the client certificate.
    pub tls: ClientTls,
}

/// Forwarding settings that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// A TLS file cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The endpoint cannot be connected to as given.
    #[error("OTLP endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The endpoint.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// A header that cannot be sent.
    #[error("OTLP header {0:?} is not a valid header name and value")]
    Header(String),
}

impl ForwardConfig {
    /// Whether the endpoint is `https://`, so that TLS is used.
    pub fn is_tls(&self) -> bool {
        self.endpoint
            .get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    }

    /// Fails on what [`spawn`] would fail on (a header that cannot be sent, a TLS file
    /// that cannot be used), so that a command can refuse bad settings before it
    /// starts its work.
    pub fn check(&self) -> Result<(), ForwardError> {
        let tls = self.prepare()?;
        send::grpc_endpoint(self, tls.as_ref()).map(drop)
    }

    /// Checks the headers and loads the TLS material (when the endpoint is
    /// `https://`): every error a forwarder could meet before its first export.
    fn prepare(&self) -> Result<Option<ClientMaterial>, ForwardError> {
        for (k, v) in &self.headers {
            let name = k.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>();
            let value = v.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>();
            if name.is_err() || value.is_err() {
                return Err(ForwardError::Header(k.clone()));
            }
        }
        if !self.is_tls() {
            return Ok(None);
        }
        Ok(Some(self.tls.load()?))
    }
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
            Payload::Traces(r) => trace_items(r),
            Payload::Metrics(r) => metric_items(r),
            Payload::Logs(r) => log_items(r),
        }
        .max(1)
    }

    /// Encodes it once (freeing the message); retries resend the same bytes.
    fn encode(self, ticket: Ticket) -> Encoded {
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
            ticket,
        }
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
/// neither clones nor re-encodes the message tree; with the receiver's budget share
/// it holds until it is delivered or dropped.
#[derive(Debug)]
struct Encoded {
    signal: Signal,
    items: usize,
    body: Bytes,
    ticket: Ticket,
}

/// What the forwarder has done, for the agent's own metrics.
#[derive(Debug, Default)]
pub struct ForwardStats {
    /// Items delivered downstream (less what it rejected in a `partial_success`).
    pub forwarded: AtomicU64,
    /// Items dropped: an older push of the agent's metrics past the queue bound, or a
    /// payload the downstream refused for good.
    pub dropped: AtomicU64,
    /// Items waiting or in flight now.
    pub queued: AtomicU64,
    /// Failed attempts (retried or not).
    pub failures: AtomicU64,
    /// Failed attempts that were retried.
    pub retries: AtomicU64,
    /// Items the downstream rejected within an OK answer (`partial_success`).
    pub rejected: AtomicU64,
    /// The last failure.
    pub last_error: Mutex<Option<String>>,
}

impl ForwardStats {
    fn error(&self, e: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(e);
        }
    }
}

/// What the sending handles and the task share.
struct Shared {
    queue: Mutex<Queue>,
    wake: Notify,
    stats: Arc<ForwardStats>,
    max_queued_items: usize,
    closed: std::sync::atomic::AtomicBool,
}

/// Closes the queue when the last [`Forwarder`] goes.
struct Handle(Arc<Shared>);

impl Drop for Handle {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Relaxed);
        self.0.wake.notify_one();
    }
}

/// The sending end of the forwarder.
#[derive(Clone)]
pub struct Forwarder {
    handle: Arc<Handle>,
    /// Counters.
    pub stats: Arc<ForwardStats>,
}

impl Forwarder {
    /// Encodes and queues a payload of the agent's own (never blocks; past the bound
    /// the oldest of these are dropped and counted).
    pub fn send(&self, payload: Payload) {
        self.forward(payload, Ticket::untracked());
    }

    /// Encodes and queues a payload the receiver accepted, with its budget share,
    /// given back once the payload is delivered or dropped.
    pub fn forward(&self, payload: Payload, ticket: Ticket) {
        let mut encoded = payload.encode(ticket);
        encoded
            .ticket
            .resize(encoded.body.len() + size_of::<Encoded>());
        let shared = &self.handle.0;
        self.stats
            .queued
            .fetch_add(encoded.items as u64, Ordering::Relaxed);
        if let Ok(mut q) = shared.queue.lock() {
            q.push(encoded, shared.max_queued_items, &self.stats);
        }
        shared.wake.notify_one();
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

/// Starts the forwarding task on the current tokio runtime; fails on a header or a
/// TLS file that cannot be used.
pub fn spawn(config: ForwardConfig) -> Result<Forwarder, ForwardError> {
    let tls = config.prepare()?;
    let transport = Transport::new(&config, tls.as_ref())?;
    let stats = Arc::new(ForwardStats::default());
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue::default()),
        wake: Notify::new(),
        stats: stats.clone(),
        max_queued_items: config.max_queued_items,
        closed: Default::default(),
    });
    tokio::spawn(run(config, transport, shared.clone()));
    Ok(Forwarder {
        handle: Arc::new(Handle(shared)),
        stats,
    })
}

/// Sends one payload once, outside any queue, and waits for the answer (`measure`'s
/// span); the error says what failed.
pub async fn deliver_once(config: &ForwardConfig, payload: Payload) -> Result<(), String> {
    let tls = config.prepare().map_err(|e| e.to_string())?;
    let transport = Transport::new(config, tls.as_ref()).map_err(|e| e.to_string())?;
    match transport
        .attempt(&payload.encode(Ticket::untracked()))
        .await
    {
        Ok(_) => Ok(()),
        Err(Failure::Retry { error, .. } | Failure::Permanent(error)) => Err(error),
    }
}

/// The logs of the sending loop, each at most every 10 s.
#[derive(Default)]
struct Logs {
    retry: LogEvery,
    reject: LogEvery,
    partial: LogEvery,
}

/// Keeps up to `config.concurrency` payloads in flight; after a retryable failure,
/// sends nothing more until its delay has passed.
async fn run(config: ForwardConfig, transport: Transport, shared: Arc<Shared>) {
    let concurrency = config.concurrency.max(1);
    let mut backoff = Backoff::default();
    let mut paused_until: Option<Instant> = None;
    let mut in_flight = JoinSet::new();
    let mut logs = Logs::default();
    loop {
        if paused_until.is_some_and(|t| t <= Instant::now()) {
            paused_until = None;
        }
        while paused_until.is_none() && in_flight.len() < concurrency {
            let Some(p) = shared.queue.lock().ok().and_then(|mut q| q.pop()) else {
                break;
            };
            let transport = transport.clone();
            in_flight.spawn(async move {
                let result = transport.attempt(&p).await;
                (p, result)
            });
        }
        let idle = shared.queue.lock().map_or(true, |q| q.is_empty());
        if in_flight.is_empty() && idle && shared.closed.load(Ordering::Relaxed) {
            break;
        }
        let resume = paused_until.unwrap_or_else(Instant::now);
        tokio::select! {
            done = in_flight.join_next(), if !in_flight.is_empty() => {
                let Some(Ok((p, result))) = done else {
                    log::error!("an OTLP export task failed");
                    continue;
                };
                let stats = &shared.stats;
                match result {
                    Ok(d) => {
                        backoff.reset();
                        delivered(p, d, stats, &config, &mut logs.partial);
                    }
                    Err(Failure::Retry { error, after }) => {
                        let delay = backoff.delay(after);
                        let until = Instant::now() + delay;
                        paused_until = Some(paused_until.map_or(until, |t| t.max(until)));
                        retried(p, error, delay, &shared, &config, &mut logs.retry);
                    }
                    Err(Failure::Permanent(error)) => {
                        backoff.reset();
                        refused(p, error, stats, &config, &mut logs.reject);
                    }
                }
            }
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep_until(resume), if paused_until.is_some() => {}
        }
    }
}

/// A payload was delivered; what the downstream rejected within it is counted and
/// logged.
fn delivered(
    p: Encoded,
    d: Delivered,
    stats: &ForwardStats,
    config: &ForwardConfig,
    log: &mut LogEvery,
) {
    let n = p.items as u64;
    let rejected = d.rejected.min(n);
    stats.queued.fetch_sub(n, Ordering::Relaxed);
    stats.forwarded.fetch_add(n - rejected, Ordering::Relaxed);
    stats.rejected.fetch_add(rejected, Ordering::Relaxed);
    if (rejected > 0 || !d.message.is_empty()) && log.due() {
        log::warn!(
            "OTLP {:?} export to {}: the downstream rejected {rejected} of {n} items ({}) (see energy_agent_otlp_rejected_total)",
            p.signal,
            config.endpoint,
            d.message
        );
    }
}

/// A retryable failure: the payload goes first in the queue again.
fn retried(
    p: Encoded,
    e: String,
    delay: Duration,
    shared: &Shared,
    config: &ForwardConfig,
    log: &mut LogEvery,
) {
    shared.stats.failures.fetch_add(1, Ordering::Relaxed);
    shared.stats.retries.fetch_add(1, Ordering::Relaxed);
    let queued = shared.stats.queued.load(Ordering::Relaxed);
    if log.due() {
        log::warn!(
            "OTLP export to {} failed ({e}); retrying in {delay:?} with {queued} items queued",
            config.endpoint,
        );
    }
    shared.stats.error(e);
    if let Ok(mut q) = shared.queue.lock() {
        q.push_front(p);
    }
}

/// The downstream refused a payload for good: it is dropped, counted and logged.
fn refused(
    p: Encoded,
    e: String,
    stats: &ForwardStats,
    config: &ForwardConfig,
    log: &mut LogEvery,
) {
    let n = p.items as u64;
    stats.queued.fetch_sub(n, Ordering::Relaxed);
    stats.dropped.fetch_add(n, Ordering::Relaxed);
    stats.failures.fetch_add(1, Ordering::Relaxed);
    if log.due() {
        log::warn!(
            "OTLP {:?} export to {} rejected ({e}), not retryable: dropped {n} items (see energy_agent_otlp_dropped_total)",
            p.signal,
            config.endpoint
        );
    }
    stats.error(e);
}

mod queue;
mod retry;
mod send;
#[cfg(test)]
mod tests;
