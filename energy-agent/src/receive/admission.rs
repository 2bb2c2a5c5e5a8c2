//! What the receiver may take in: one budget, in items (spans, data points, log
//! records) and bytes of memory (decoded while waiting for the enricher and held by it,
//! encoded once queued for the downstream; see [`super::memory`]), for everything
//! accepted and not yet out of the agent — waiting
//! to be enriched, held by the enricher, queued or in flight to the downstream. A
//! request is answered OK only once its share of the budget is taken; with no room it
//! gets OTLP's throttling reply (gRPC `RESOURCE_EXHAUSTED` with `RetryInfo`, HTTP 429
//! with `Retry-After`), so the sender's SDK retries it later and memory stays bounded.
//! The share travels with the request ([`Admitted`]) and is given back when the
//! forwarder is done with it (delivered, or dropped and counted).

use std::{
    ops::Deref,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    },
    metrics::v1::{Metric, metric::Data},
};
use prost::Message;

use super::memory::{Footprint, size_of_message};

/// How long a throttled sender is asked to wait before retrying.
pub const RETRY_DELAY: Duration = Duration::from_secs(1);

/// The OTLP signal of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Spans.
    Traces,
    /// Data points.
    Metrics,
    /// Log records.
    Logs,
}

impl Signal {
    /// Every signal, in the order counters are kept.
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    /// Its name in metrics and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The budget (or the hand-off to the enricher) is full: retry later.
    Full,
    /// The agent is shutting down.
    ShuttingDown,
}

/// The budget: limits and what is taken now.
#[derive(Debug)]
pub struct Budget {
    max_items: u64,
    max_bytes: u64,
    /// (items, bytes) taken.
    used: Mutex<(u64, u64)>,
    /// Counters of what was admitted and refused.
    pub stats: ReceiverStats,
}

impl Budget {
    /// A budget of `max_items` items and `max_bytes` bytes (each at least 1).
    pub fn new(max_items: usize, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            max_items: (max_items as u64).max(1),
            max_bytes: (max_bytes as u64).max(1),
            used: Mutex::new((0, 0)),
            stats: ReceiverStats::default(),
        })
    }

    /// Whether nothing more fits: checked before a request is read, so a sender is
    /// throttled without the agent decoding what it cannot take.
    pub fn is_full(&self) -> bool {
        let (items, bytes) = self.taken();
        items >= self.max_items || bytes >= self.max_bytes
    }

    /// (items, bytes) taken now.
    pub fn taken(&self) -> (u64, u64) {
        self.used.lock().map_or((0, 0), |u| *u)
    }

    /// Takes room for `items` items of `bytes` bytes, if there is; a request larger
    /// than the whole budget is taken when nothing else is.
    pub fn try_take(self: &Arc<Self>, items: usize, bytes: usize) -> Option<Ticket> {
        let items = (items as u64).clamp(1, self.max_items);
        let bytes = (bytes as u64).min(self.max_bytes);
        let mut used = self.used.lock().ok()?;
        if used.0 + items > self.max_items || used.1 + bytes > self.max_bytes {
            return None;
        }
        used.0 += items;
        used.1 += bytes;
        Some(Ticket {
            budget: Some(self.clone()),
            items,
            bytes,
        })
    }

    /// Admits `message` (`items` items; its bytes are what it takes in memory,
    /// decoded), if there is room.
    pub fn admit<T: Footprint>(self: &Arc<Self>, message: T, items: usize) -> Option<Admitted<T>> {
        let ticket = self.try_take(items, size_of_message(&message))?;
        Some(Admitted { message, ticket })
    }

    /// Changes a ticket's bytes from `from` to `to`.
    fn resize(&self, from: u64, to: u64) {
        if let Ok(mut used) = self.used.lock() {
            used.1 = (used.1 + to).saturating_sub(from);
        }
    }

    fn give_back(&self, items: u64, bytes: u64) {
        if let Ok(mut used) = self.used.lock() {
            used.0 = used.0.saturating_sub(items);
            used.1 = used.1.saturating_sub(bytes);
        }
    }
}

/// A share of the budget; given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    budget: Option<Arc<Budget>>,
    items: u64,
    bytes: u64,
}

impl Ticket {
    /// A ticket for something not counted in any budget (the agent's own metrics,
    /// tests).
    pub fn untracked() -> Self {
        Self {
            budget: None,
            items: 0,
            bytes: 0,
        }
    }

    /// Whether it holds a share of a budget (what was accepted from a sender).
    pub fn is_tracked(&self) -> bool {
        self.budget.is_some()
    }

    /// The message now takes `bytes` (it was encoded for the downstream, which takes
    /// less than decoded): the budget counts that from now on.
    pub fn resize(&mut self, bytes: usize) {
        let bytes = bytes as u64;
        if let Some(b) = &self.budget {
            b.resize(self.bytes, bytes);
        }
        self.bytes = bytes;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.give_back(self.items, self.bytes);
        }
    }
}

/// A message with its share of the budget.
#[derive(Debug)]
pub struct Admitted<T> {
    /// The request.
    pub message: T,
    /// Its share, given back when it is dropped.
    pub ticket: Ticket,
}

impl<T> From<T> for Admitted<T> {
    fn from(message: T) -> Self {
        Self {
            message,
            ticket: Ticket::untracked(),
        }
    }
}

impl<T> Deref for Admitted<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.message
    }
}

/// Per signal: requests and items accepted, requests refused by reason.
#[derive(Debug, Default)]
pub struct ReceiverStats {
    accepted_requests: [AtomicU64; 3],
    accepted_items: [AtomicU64; 3],
    throttled: [AtomicU64; 3],
    unavailable: [AtomicU64; 3],
}

/// One signal's counters at a moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SignalCounts {
    /// Requests answered OK.
    pub accepted_requests: u64,
    /// Spans, data points or log records in them.
    pub accepted_items: u64,
    /// Requests refused because the agent was full (RESOURCE_EXHAUSTED / 429).
    pub throttled_requests: u64,
    /// Requests refused because the agent was shutting down (UNAVAILABLE / 503).
    pub unavailable_requests: u64,
}

impl ReceiverStats {
    /// Counts a request of `items` items accepted.
    pub fn accepted(&self, signal: Signal, items: usize) {
        let i = signal.index();
        self.accepted_requests[i].fetch_add(1, Ordering::Relaxed);
        self.accepted_items[i].fetch_add(items as u64, Ordering::Relaxed);
    }

    /// Counts a request refused.
    pub fn refused(&self, signal: Signal, why: Refusal) {
        let counter = match why {
            Refusal::Full => &self.throttled,
            Refusal::ShuttingDown => &self.unavailable,
        };
        counter[signal.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// One signal's counters now.
    pub fn counts(&self, signal: Signal) -> SignalCounts {
        let i = signal.index();
        let load = |a: &[AtomicU64; 3]| a[i].load(Ordering::Relaxed);
        SignalCounts {
            accepted_requests: load(&self.accepted_requests),
            accepted_items: load(&self.accepted_items),
            throttled_requests: load(&self.throttled),
            unavailable_requests: load(&self.unavailable),
        }
    }
}

/// Spans in a request.
pub fn trace_items(r: &ExportTraceServiceRequest) -> usize {
    r.resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

/// Data points in a request (what a metrics request costs, not its metric count).
pub fn metric_items(r: &ExportMetricsServiceRequest) -> usize {
    r.resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .map(data_points)
        .sum()
}

/// Log records in a request.
pub fn log_items(r: &ExportLogsServiceRequest) -> usize {
    r.resource_logs
        .iter()
        .flat_map(|rl| &rl.scope_logs)
        .map(|sl| sl.log_records.len())
        .sum()
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

/// The gRPC throttling reply: `RESOURCE_EXHAUSTED` with `RetryInfo` in the status
/// details (`grpc-status-details-bin`, what OTLP specifies), and the same `RetryInfo` in
/// `google.rpc.retryinfo-bin`, the trailer the Python SDK's exporter reads. Shutting
/// down is `UNAVAILABLE`, which OTLP senders retry with their own backoff.
pub fn grpc_refusal(why: Refusal) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    match why {
        Refusal::ShuttingDown => tonic::Status::unavailable("the agent is shutting down"),
        Refusal::Full => {
            let retry = tonic_types::pb::RetryInfo {
                retry_delay: Some(prost_types::Duration {
                    seconds: RETRY_DELAY.as_secs() as i64,
                    nanos: RETRY_DELAY.subsec_nanos() as i32,
                }),
            };
            let mut metadata = tonic::metadata::MetadataMap::new();
            metadata.insert_bin(
                "google.rpc.retryinfo-bin",
                tonic::metadata::MetadataValue::from_bytes(&retry.encode_to_vec()),
            );
            tonic::Status::with_error_details_and_metadata(
                tonic::Code::ResourceExhausted,
                "the agent's OTLP buffers are full; retry later",
                ErrorDetails::with_retry_info(Some(RETRY_DELAY)),
                metadata,
            )
        }
    }
}

/// The HTTP throttling reply: 429 with `Retry-After` (whole seconds) when full, 503
/// when shutting down.
pub fn http_refusal(why: Refusal) -> axum::response::Response {
    use axum::{http::StatusCode, response::IntoResponse};
    let retry_after = RETRY_DELAY.as_secs().max(1).to_string();
    match why {
        Refusal::Full => (
            StatusCode::TOO_MANY_REQUESTS,
            [(axum::http::header::RETRY_AFTER, retry_after)],
            "the agent's OTLP buffers are full; retry later",
        )
            .into_response(),
        Refusal::ShuttingDown => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(axum::http::header::RETRY_AFTER, retry_after)],
            "the agent is shutting down",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_holds_its_share_until_dropped() {
        let b = Budget::new(10, 1000);
        let t = b.try_take(6, 100).expect("room");
        assert!(b.try_take(5, 100).is_none(), "6 + 5 > 10 items");
        assert!(b.try_take(4, 100).is_some_and(|t| t.is_tracked()));
        assert_eq!(b.taken(), (6, 100), "the second ticket was dropped at once");
        drop(t);
        assert_eq!(b.taken(), (0, 0));
        assert!(
            b.try_take(1, 1001).is_some(),
            "larger than all: taken alone"
        );
    }

    #[test]
    fn a_resized_ticket_counts_its_new_size() {
        let b = Budget::new(10, 1000);
        let mut t = b.try_take(1, 600).expect("room");
        t.resize(100);
        assert_eq!(b.taken(), (1, 100), "encoded, it takes less");
        assert!(b.try_take(1, 800).is_some());
        drop(t);
        assert_eq!(b.taken(), (0, 0));
    }

    #[test]
    fn full_is_either_bound() {
        let b = Budget::new(10, 100);
        let _t = b.try_take(1, 100).expect("room");
        assert!(b.is_full(), "no bytes left");
        assert!(b.try_take(1, 1).is_none());
        assert!(!Ticket::untracked().is_tracked());
    }

    #[test]
    fn the_grpc_refusal_carries_retry_info() {
        use tonic_types::StatusExt;
        let s = grpc_refusal(Refusal::Full);
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        let retry = s
            .get_details_retry_info()
            .expect("RetryInfo in the details");
        assert_eq!(retry.retry_delay, Some(RETRY_DELAY));
        assert!(s.metadata().get_bin("google.rpc.retryinfo-bin").is_some());
        assert_eq!(
            grpc_refusal(Refusal::ShuttingDown).code(),
            tonic::Code::Unavailable
        );
    }

    #[test]
    fn the_http_refusal_says_when_to_retry() {
        let r = http_refusal(Refusal::Full);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "1");
        assert_eq!(http_refusal(Refusal::ShuttingDown).status(), 503);
    }
}
