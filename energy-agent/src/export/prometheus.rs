//! The Prometheus endpoint (`--prometheus`, off by default; 127.0.0.1:9464 when given
//! without an address): `GET /metrics` renders the cumulative state in text format.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};
use tokio::sync::watch;

use super::metrics::{MetricsState, render_prometheus};

async fn scrape(State(state): State<Arc<Mutex<MetricsState>>>) -> impl IntoResponse {
    let text = state
        .lock()
        .map(|s| render_prometheus(&s))
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// Serves `/metrics` on `addr` until `shutdown` turns true; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<Mutex<MetricsState>>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the Prometheus endpoint on {addr}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .with_state(state);
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(e) = served {
            log::error!("Prometheus endpoint stopped: {e}");
        }
    });
    Ok(bound)
}
