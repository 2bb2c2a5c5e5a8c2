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

/// Serves `app` on `listener` in a task until `shutdown` turns true; a failure is
/// logged as the `what` endpoint's (the HTTP endpoints: Prometheus, health).
pub(crate) fn spawn_http(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    what: &'static str,
) {
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(e) = served {
            log::error!("{what} endpoint stopped: {e}");
        }
    });
}

/// A destination for interval reports.
pub trait Sink {
    /// Takes one finished interval.
    fn emit(&mut self, report: &CarbonReport) -> std::io::Result<()>;
}
