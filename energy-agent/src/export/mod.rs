//! Where interval reports go: the console table, JSON lines (and, later, OTLP and
//! Prometheus). Each sink takes finished reports; none reaches back into the pipeline.

pub mod console;
pub mod json;

use crate::attribute::IntervalReport;

/// A destination for interval reports.
pub trait Sink {
    /// Takes one finished interval.
    fn emit(&mut self, report: &IntervalReport) -> std::io::Result<()>;
}
