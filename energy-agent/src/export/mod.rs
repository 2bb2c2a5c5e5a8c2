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
