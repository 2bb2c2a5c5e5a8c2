//! OTLP export through opentelemetry-rust: the agent's metrics (observable instruments
//! that read the cumulative [`MetricsState`], pushed by the SDK's periodic reader) and
//! the one span `measure` emits for the measured command.
//!
//! Transport on purpose: the tonic exporter is built inside the tokio runtime it needs
//! (the agent's, or a small one `measure` keeps for the export); HTTP uses the blocking
//! client, which needs none.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use opentelemetry::{
    KeyValue,
    metrics::{Histogram, MeterProvider as _},
    trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _},
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::{
    Resource,
    metrics::{PeriodicReader, SdkMeterProvider},
    trace::SdkTracerProvider,
};

use super::{
    forward::{ForwardConfig, Protocol, http_url},
    metrics::{self, Def, Kind, MetricsState},
};

fn resource() -> Resource {
    Resource::builder()
        .with_service_name("energy-agent")
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

fn tonic_metadata(headers: &[(String, String)]) -> tonic::metadata::MetadataMap {
    let mut map = tonic::metadata::MetadataMap::new();
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            k.parse::<tonic::metadata::MetadataKey<tonic::metadata::Ascii>>(),
            v.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>(),
        ) {
            map.insert(k, v);
        }
    }
    map
}

/// The pushed metrics: dropping it (or [`OtlpMetrics::shutdown`]) flushes them.
pub struct OtlpMetrics {
    provider: SdkMeterProvider,
    requests: Histogram<f64>,
}

fn attributes(labels: &metrics::Labels) -> Vec<KeyValue> {
    labels
        .iter()
        .map(|(k, v)| KeyValue::new(*k, v.clone()))
        .collect()
}

impl OtlpMetrics {
    /// Starts pushing every `every`; must be called inside a tokio runtime for gRPC.
    pub fn start(
        config: &ForwardConfig,
        every: Duration,
        state: Arc<Mutex<MetricsState>>,
    ) -> anyhow::Result<Self> {
        let exporter = match config.protocol {
            Protocol::Grpc => opentelemetry_otlp::MetricExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.timeout)
                .with_metadata(tonic_metadata(&config.headers))
                .build()?,
            Protocol::HttpProtobuf => opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(http_url(&config.endpoint, "/v1/metrics"))
                .with_timeout(config.timeout)
                .with_headers(config.headers.iter().cloned().collect())
                .build()?,
        };
        let reader = PeriodicReader::builder(exporter)
            .with_interval(every)
            .build();
        let provider = SdkMeterProvider::builder()
            .with_reader(reader)
            .with_resource(resource())
            .build();
        let meter = provider.meter("energy-agent");
        for def in metrics::ALL {
            let state = state.clone();
            let read = move |def: Def| -> Vec<(f64, Vec<KeyValue>)> {
                state
                    .lock()
                    .map(|s| {
                        s.values
                            .iter()
                            .filter(|((name, _), _)| *name == def.name)
                            .map(|((_, labels), v)| (*v, attributes(labels)))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            match def.kind {
                Kind::Counter => {
                    meter
                        .f64_observable_counter(def.name)
                        .with_unit(def.unit)
                        .with_description(def.help)
                        .with_callback(move |o| {
                            for (v, attrs) in read(def) {
                                o.observe(v, &attrs);
                            }
                        })
                        .build();
                }
                Kind::Gauge => {
                    meter
                        .f64_observable_gauge(def.name)
                        .with_unit(def.unit)
                        .with_description(def.help)
                        .with_callback(move |o| {
                            for (v, attrs) in read(def) {
                                o.observe(v, &attrs);
                            }
                        })
                        .build();
                }
                Kind::Histogram => {}
            }
        }
        let requests = meter
            .f64_histogram(metrics::REQUESTS_ENERGY.name)
            .with_unit(metrics::REQUESTS_ENERGY.unit)
            .with_description(metrics::REQUESTS_ENERGY.help)
            .with_boundaries(metrics::REQUEST_BUCKETS.to_vec())
            .build();
        Ok(Self { provider, requests })
    }

    /// Records one enriched request's joules for `model`.
    pub fn record_request(&self, model: &str, joules: f64) {
        self.requests
            .record(joules, &[KeyValue::new("model", model.to_string())]);
    }

    /// Pushes what is pending and stops.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.force_flush() {
            log::warn!("flushing OTLP metrics: {e}");
        }
        let _ = self.provider.shutdown();
    }
}

/// One finished span with attributes, exported at once (for `measure`).
#[derive(Clone, Debug)]
pub struct FinishedSpan {
    /// Span name.
    pub name: String,
    /// Start.
    pub start: SystemTime,
    /// End.
    pub end: SystemTime,
    /// Attributes.
    pub attributes: Vec<KeyValue>,
}

/// Exports one span and waits for it to be delivered (or to fail).
pub fn export_span(config: &ForwardConfig, span: FinishedSpan) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let provider = runtime.block_on(async {
        let exporter = match config.protocol {
            Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(config.endpoint.clone())
                .with_timeout(config.timeout)
                .with_metadata(tonic_metadata(&config.headers))
                .build(),
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(http_url(&config.endpoint, "/v1/traces"))
                .with_timeout(config.timeout)
                .with_headers(config.headers.iter().cloned().collect())
                .build(),
        }?;
        anyhow::Ok(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource())
                .build(),
        )
    })?;
    let tracer = provider.tracer("energy-agent");
    let mut s = tracer
        .span_builder(span.name)
        .with_kind(SpanKind::Internal)
        .with_start_time(span.start)
        .with_attributes(span.attributes)
        .start(&tracer);
    s.end_with_timestamp(span.end);
    // Flush on a thread of its own while the runtime drives the gRPC connection.
    let flushed = runtime.block_on(async {
        let p = provider.clone();
        tokio::task::spawn_blocking(move || p.force_flush()).await
    });
    let _ = provider.shutdown();
    match flushed {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => anyhow::bail!("exporting the measure span: {e}"),
        Err(e) => anyhow::bail!("exporting the measure span: {e}"),
    }
}
