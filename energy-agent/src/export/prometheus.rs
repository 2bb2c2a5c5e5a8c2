//! The Prometheus encoding of the agent's metrics and its endpoint (`--prometheus`, off
//! by default; 127.0.0.1:9464 when given without an address): `GET /metrics` renders
//! the cumulative [`MetricsState`] in text format 0.0.4, with the TLS, bearer token and
//! limits of its [`Guard`]; `/healthz` and `/readyz` ([`super::health`]) are served
//! beside it, under the same TLS and limits but without the token (a kubelet's probe
//! carries none, and they tell nothing about processes).
//!
//! The exposition is written here by hand, from the same state the OTLP encoding reads,
//! rather than by an OpenTelemetry Prometheus exporter, because:
//! - such an exporter (opentelemetry-prometheus) renders what an SDK meter provider has
//!   aggregated, so every series would have to be recorded into SDK instruments again:
//!   the second model of the same metrics this module replaces;
//! - that crate is discontinued by the opentelemetry-rust maintainers (its README: no
//!   longer recommended, it depends on the unmaintained `protobuf` crate with open
//!   advisories; they point to OTLP into Prometheus instead), and is no dependency here;
//! - its exposition is not this one: by default it adds `otel_scope_*` labels and a
//!   `target_info` series, and the names and labels below are user contracts (queries,
//!   dashboards, the README's table);
//! - what the series are (top N processes, `other`, eviction of gone processes after
//!   300 intervals) is the model's business, so an encoder that only reads
//!   [`MetricsState`] is all either endpoint needs, and the text format is small.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use axum::{
    Router,
    error_handling::HandleErrorLayer,
    extract::State,
    http::{StatusCode, header},
    middleware,
    response::IntoResponse,
    routing::get,
};
use tokio::sync::watch;
use tower::{BoxError, ServiceBuilder, limit::GlobalConcurrencyLimitLayer};

use crate::listen::{self, ALPN_HTTP1, Guard, ListenConfig, Remote};

use super::{
    health::Health,
    metrics::{ALL, Def, Kind, Labels, MetricsState, REQUEST_BUCKETS},
};

async fn scrape(State(state): State<Arc<Mutex<MetricsState>>>) -> impl IntoResponse {
    let text = state.lock().map(|s| render(&s)).unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// What a scraper that reaches /metrics beyond loopback, unauthenticated, can read.
const RISK: &str = "anyone who can reach it can read every process's energy, executable name and model, interval by interval";

/// Serves `/metrics` (and `health`'s `/healthz` and `/readyz`) on `addr` with
/// `listen`'s TLS, token and limits until `shutdown` turns true; returns the bound
/// address and the listener's guard.
pub async fn serve(
    addr: SocketAddr,
    listen: &ListenConfig,
    state: Arc<Mutex<MetricsState>>,
    health: &Health,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, Arc<Guard>)> {
    let guard = Guard::new("Prometheus endpoint", listen, ALPN_HTTP1)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the Prometheus endpoint on {addr}"))?;
    let bound = listener.local_addr()?;
    guard.warn_if_exposed(bound, RISK);
    let limits = {
        let g = guard.clone();
        ServiceBuilder::new()
            .layer(HandleErrorLayer::new(move |e: BoxError| {
                let answer = listen::http_limit_answer(&g, &e, || {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(header::RETRY_AFTER, "1")],
                        "too many scrapes in progress",
                    )
                        .into_response()
                });
                async move { answer }
            }))
            .load_shed()
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(
                guard.requests(),
            ))
            .timeout(guard.limits().request_timeout)
    };
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route_layer(middleware::from_fn_with_state(
            guard.clone(),
            listen::http_auth,
        ))
        .with_state(state)
        .merge(health.router())
        .layer(limits);
    let conns = guard.axum(listener, shutdown.clone())?;
    tokio::spawn(async move {
        let served = axum::serve(conns, app.into_make_service_with_connect_info::<Remote>())
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|stop| *stop).await;
            })
            .await;
        if let Err(e) = served {
            log::error!("Prometheus endpoint stopped: {e}");
        }
    });
    Ok((bound, guard))
}

/// The Prometheus name of a metric: dots to underscores, the unit as a suffix, and
/// `_total` on counters (OTel's Prometheus compatibility rules).
pub fn metric_name(def: &Def) -> String {
    let base = def.name.replace('.', "_");
    let unit = match def.unit {
        "J" => "_joules",
        "W" => "_watts",
        "g" => "_grams",
        "s" => "_seconds",
        _ => "",
    };
    let total = if def.kind == Kind::Counter {
        "_total"
    } else {
        ""
    };
    format!("{base}{unit}{total}")
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn label_text(labels: &Labels, extra: Option<(&str, String)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{}=\"{}\"", k.replace('.', "_"), escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// The Prometheus text exposition (format 0.0.4) of the state.
pub fn render(state: &MetricsState) -> String {
    let mut out = String::new();
    for def in ALL {
        let name = metric_name(&def);
        let kind = match def.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        out.push_str(&format!(
            "# HELP {name} {}\n# TYPE {name} {kind}\n",
            def.help
        ));
        if def.kind == Kind::Histogram {
            for ((metric, labels), h) in &state.histograms {
                if *metric != def.name {
                    continue;
                }
                let mut cumulative = 0;
                for (i, bound) in REQUEST_BUCKETS.iter().enumerate() {
                    cumulative += h.counts.get(i).copied().unwrap_or(0);
                    out.push_str(&format!(
                        "{name}_bucket{} {cumulative}\n",
                        label_text(labels, Some(("le", bound.to_string())))
                    ));
                }
                out.push_str(&format!(
                    "{name}_bucket{} {}\n",
                    label_text(labels, Some(("le", "+Inf".into()))),
                    h.count
                ));
                out.push_str(&format!(
                    "{name}_sum{} {}\n",
                    label_text(labels, None),
                    h.sum
                ));
                out.push_str(&format!(
                    "{name}_count{} {}\n",
                    label_text(labels, None),
                    h.count
                ));
            }
            continue;
        }
        for ((metric, labels), v) in &state.values {
            if *metric == def.name {
                out.push_str(&format!("{name}{} {v}\n", label_text(labels, None)));
            }
        }
    }
    out
}
