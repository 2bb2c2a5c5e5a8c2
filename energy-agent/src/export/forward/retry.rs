//! What OTLP says to do with each answer: which failures are retried and after how
//! long (the server's `RetryInfo` / `Retry-After` when it gives one, else exponential
//! backoff with jitter, capped), which are dropped at once, and what a `partial_success`
//! in an OK answer reports.

use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;

/// First backoff after a failure without a server-given delay.
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest backoff.
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Longest server-given delay honoured (a longer one is cut to this).
pub const MAX_SERVER_DELAY: Duration = Duration::from_secs(60);

/// A failed attempt, by what OTLP says to do about it.
#[derive(Debug, PartialEq)]
pub enum Failure {
    /// Try the same payload again: after `after` when the downstream said so, else
    /// after the backoff.
    Retry {
        /// What failed.
        error: String,
        /// The delay the downstream asked for.
        after: Option<Duration>,
    },
    /// The downstream will not take this payload; retrying cannot help.
    Permanent(String),
}

/// What an OK answer said: `partial_success` (the same two fields, `rejected_*` = 1 and
/// `error_message` = 2, in the trace, metrics and logs responses).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    /// Items the downstream rejected although it answered OK.
    pub rejected: u64,
    /// Its reason, if any.
    pub message: String,
}

impl Delivered {
    /// Reads an `Export*ServiceResponse` body; an empty or unreadable one is a plain OK.
    pub fn decode(body: impl bytes::Buf) -> Self {
        let partial = ExportTraceServiceResponse::decode(body)
            .ok()
            .and_then(|r| r.partial_success);
        match partial {
            Some(p) => Self {
                rejected: u64::try_from(p.rejected_spans).unwrap_or(0),
                message: p.error_message,
            },
            None => Self::default(),
        }
    }
}

/// Whether a gRPC code is one OTLP retries (`RESOURCE_EXHAUSTED` only when the server
/// sends `RetryInfo`, which [`grpc_failure`] checks).
pub fn grpc_retryable(code: tonic::Code) -> bool {
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
    )
}

/// Whether an HTTP status may be retried (OTLP/HTTP: 429, 502, 503, 504).
pub fn http_retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// The delay a gRPC status asks for: `RetryInfo` in its details, or in the
/// `google.rpc.retryinfo-bin` trailer some servers use instead.
fn retry_info(s: &tonic::Status) -> Option<Duration> {
    use tonic_types::StatusExt;
    if let Some(info) = s.get_details_retry_info() {
        return info.retry_delay;
    }
    let bin = s
        .metadata()
        .get_bin("google.rpc.retryinfo-bin")?
        .to_bytes()
        .ok()?;
    let info = tonic_types::pb::RetryInfo::decode(bin).ok()?.retry_delay?;
    let secs = u64::try_from(info.seconds).ok()?;
    Some(Duration::new(secs, u32::try_from(info.nanos).unwrap_or(0)))
}

/// A gRPC failure, classified. `UNKNOWN` is retried only when tonic made it from a
/// failure of the transport itself (it then has a source error); from the server it
/// is final, as OTLP says.
pub fn grpc_failure(s: &tonic::Status) -> Failure {
    let mut error = format!("gRPC {:?}: {}", s.code(), s.message());
    if let Some(source) = std::error::Error::source(s) {
        error = with_hint(format!("{error}: {}", crate::tls::error_chain(source)));
    }
    let after = retry_info(s);
    let transport = s.code() == tonic::Code::Unknown && std::error::Error::source(s).is_some();
    let retry = match s.code() {
        tonic::Code::ResourceExhausted => after.is_some(),
        code => grpc_retryable(code) || transport,
    };
    if retry {
        Failure::Retry { error, after }
    } else {
        Failure::Permanent(error)
    }
}

/// `error` with what to do about it when it is a TLS certificate failure (the
/// forwarder retries those like any connection failure, so the log line must say how
/// to fix them).
pub fn with_hint(error: String) -> String {
    match crate::tls::certificate_hint(&error) {
        Some(hint) => format!("{error} ({hint})"),
        None => error,
    }
}

/// An HTTP failure (`status` not 2xx), classified, with its `Retry-After` (seconds or
/// an HTTP date).
pub fn http_failure(status: u16, retry_after: Option<&str>, error: String) -> Failure {
    if !http_retryable(status) {
        return Failure::Permanent(error);
    }
    let after = retry_after.and_then(|v| {
        let v = v.trim();
        match v.parse::<u64>() {
            Ok(secs) => Some(Duration::from_secs(secs)),
            Err(_) => httpdate::parse_http_date(v).ok().map(|t| {
                t.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            }),
        }
    });
    Failure::Retry { error, after }
}

/// Exponential backoff with jitter: each delay is drawn between half and all of
/// [`BACKOFF_START`] doubled per consecutive failure, capped at [`BACKOFF_CAP`], so
/// senders that failed together do not retry together.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_START,
        }
    }
}

impl Backoff {
    /// The delay after one more failure.
    pub fn failed(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_CAP);
        d.mul_f64(0.5 + fastrand::f64() * 0.5)
    }

    /// Delay for a failure: the server's (cut to [`MAX_SERVER_DELAY`]), else the
    /// backoff's.
    pub fn delay(&mut self, after: Option<Duration>) -> Duration {
        match after {
            Some(d) => d.min(MAX_SERVER_DELAY),
            None => self.failed(),
        }
    }

    /// An attempt got an answer: start again from the shortest delay.
    pub fn reset(&mut self) {
        self.next = BACKOFF_START;
    }
}
