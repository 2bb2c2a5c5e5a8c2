//! Where results go: the console table and JSON lines (as [`Sink`]s of interval
//! reports), the cumulative metrics and their two encodings (Prometheus text, OTLP), the
//! `top` view, the `measure` report, the OTLP forwarder for enriched spans and the
//! agent's metrics, and the agent's liveness and readiness endpoints. None reaches back
//! into the pipeline.

pub mod console;
pub mod forward;
pub mod health;
pub mod json;
pub mod measure;
pub mod metrics;
pub mod otlp;
pub mod prometheus;
pub mod top;

use crate::carbon::CarbonReport;

/// A destination for interval reports.
pub trait Sink {
    /// Takes one finished interval.
    fn emit(&mut self, report: &CarbonReport) -> std::io::Result<()>;
}
