//! Where results go: the console table and JSON lines (as [`Sink`]s of interval
//! reports), the cumulative metrics and their two encodings (Prometheus text, OTLP), the
//! `top` view, the `measure` report, and the OTLP forwarder for enriched spans and the
//! agent's metrics. None reaches back
//! into the pipeline.

pub mod console;
pub mod forward;
pub mod json;
pub mod measure;
pub mod metrics;
pub mod otlp;
pub mod prometheus;
pub mod top;

use crate::{attribute::IdlePower, carbon::CarbonReport};

/// One domain's idle power as the text outputs show it: `10.02 ± 0.08 W fitted`,
/// `calibrated on 2025-06-01`, `UNCERTAIN` where the figure is a fallback.
pub fn idle_text(ip: &IdlePower) -> String {
    let band = ip
        .uncertainty_w
        .map_or(String::new(), |u| format!(" ± {:.2}", u.get()));
    let when = ip.calibrated_at.as_deref().map_or(String::new(), |at| {
        format!(" on {}", at.get(..10).unwrap_or(at))
    });
    format!(
        "{:.2}{band} W {}{when}{}",
        ip.watts.get(),
        ip.origin,
        if ip.uncertain { ", UNCERTAIN" } else { "" }
    )
}

/// Every domain's idle power: `package-0 10.02 ± 0.08 W fitted, dram-0 …`.
pub fn idle_line(idle: &[IdlePower]) -> String {
    idle.iter()
        .map(|ip| format!("{} {}", ip.domain, idle_text(ip)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A destination for interval reports.
pub trait Sink {
    /// Takes one finished interval.
    fn emit(&mut self, report: &CarbonReport) -> std::io::Result<()>;
}
