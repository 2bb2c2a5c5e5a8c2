//! Where results go: the console table and JSON lines (as [`Sink`]s of interval
//! reports), the cumulative metrics and their two encodings (Prometheus text, OTLP), and
//! the OTLP forwarder for enriched spans and the agent's metrics. None reaches back
//! into the pipeline.

pub mod console;
pub mod forward;
pub mod json;
pub mod metrics;
pub mod otlp;
pub mod prometheus;

use crate::attribute::IntervalReport;

/// A destination for interval reports.
pub trait Sink {
    /// Takes one finished interval.
    fn emit(&mut self, report: &IntervalReport) -> std::io::Result<()>;
}
