//! OTLP out of the agent: its metrics, and the one span `measure` emits for the
//! measured command.
//!
//! Metrics are encoded here straight from the cumulative [`MetricsState`] (the model
//! the Prometheus exposition is rendered from as well, so each series is recorded once)
//! into an `ExportMetricsServiceRequest`, and pushed every `--metrics-interval` through
//! the forwarder ([`super::forward`]): the same bounded queue and retries as forwarded
//! spans, one transport for both.
//!
//! The `measure` span is one `ExportTraceServiceRequest` sent once through the
//! forwarder's transport (so TLS, headers and timeouts are the forwarder's), on a small
//! runtime of its own.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use opentelemetry_proto::tonic::{
    collector::{metrics::v1::ExportMetricsServiceRequest, trace::v1::ExportTraceServiceRequest},
    common::v1::{AnyValue, InstrumentationScope, KeyValue as ProtoKeyValue, any_value},
    metrics::v1::{
        AggregationTemporality, Gauge, Histogram as ProtoHistogram, HistogramDataPoint, Metric,
        NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric::Data, number_data_point,
    },
    resource::v1::Resource as ProtoResource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind},
};
use resource::resource;

use super::{
    forward::{self, ForwardConfig, Forwarder, Payload},
    metrics::{self, Def, Kind, MetricsState},
};
use crate::clock::{WallClock, monotonic_ns};

pub mod resource;

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "energy-agent".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    }
}

/// The OTLP encoding of the agent's metrics, read from [`MetricsState`] (the one model
/// the Prometheus exposition reads too): counters as cumulative monotonic sums, gauges,
/// and the request histogram with explicit [`metrics::REQUEST_BUCKETS`], every
/// cumulative series starting at the same instant (the agent's start), under the
/// agent's resource ([`resource`]: the service and its host) and an `energy-agent`
/// scope.
#[derive(Clone, Debug)]
pub struct MetricsEncoding {
    resource: ProtoResource,
    start_ns: u64,
}

impl MetricsEncoding {
    /// An encoding whose cumulative series start at `start_ns` (Unix nanoseconds).
    pub fn new(start_ns: u64) -> Self {
        Self {
            resource: resource(),
            start_ns,
        }
    }

    /// The state as one export request, stamped `now_ns` (Unix nanoseconds); metrics
    /// without a series are left out.
    pub fn encode(&self, state: &MetricsState, now_ns: u64) -> ExportMetricsServiceRequest {
        let times = (self.start_ns, now_ns);
        let metrics = metrics::ALL
            .iter()
            .filter_map(|def| {
                let data = match def.kind {
                    Kind::Counter => Data::Sum(Sum {
                        data_points: number_points(state, def, times),
                        aggregation_temporality: AggregationTemporality::Cumulative.into(),
                        is_monotonic: true,
                    }),
                    Kind::Gauge => Data::Gauge(Gauge {
                        data_points: number_points(state, def, (0, now_ns)),
                    }),
                    Kind::Histogram => Data::Histogram(ProtoHistogram {
                        data_points: histogram_points(state, def, times),
                        aggregation_temporality: AggregationTemporality::Cumulative.into(),
                    }),
                };
                has_points(&data).then(|| Metric {
                    name: def.name.into(),
                    description: def.help.into(),
                    unit: def.unit.into(),
                    metadata: Vec::new(),
                    data: Some(data),
                })
            })
            .collect();
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(scope()),
                    metrics,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }
}

fn has_points(data: &Data) -> bool {
    match data {
        Data::Sum(s) => !s.data_points.is_empty(),
        Data::Gauge(g) => !g.data_points.is_empty(),
        Data::Histogram(h) => !h.data_points.is_empty(),
        _ => false,
    }
}

fn attributes(labels: &metrics::Labels) -> Vec<ProtoKeyValue> {
    labels
        .iter()
        .map(|(k, v)| ProtoKeyValue {
            key: (*k).into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.clone())),
            }),
            key_strindex: 0,
        })
        .collect()
}

/// The counter or gauge series of `def`, stamped `(start, now)`.
fn number_points(
    state: &MetricsState,
    def: &Def,
    (start_ns, now_ns): (u64, u64),
) -> Vec<NumberDataPoint> {
    state
        .values
        .iter()
        .filter(|((name, _), _)| *name == def.name)
        .map(|((_, labels), v)| NumberDataPoint {
            attributes: attributes(labels),
            start_time_unix_nano: start_ns,
            time_unix_nano: now_ns,
            value: Some(number_data_point::Value::AsDouble(*v)),
            ..Default::default()
        })
        .collect()
}

/// The histogram series of `def`, stamped `(start, now)`.
fn histogram_points(
    state: &MetricsState,
    def: &Def,
    (start_ns, now_ns): (u64, u64),
) -> Vec<HistogramDataPoint> {
    state
        .histograms
        .iter()
        .filter(|((name, _), _)| *name == def.name)
        .map(|((_, labels), h)| {
            let mut bucket_counts = h.counts.clone();
            bucket_counts.resize(metrics::REQUEST_BUCKETS.len() + 1, 0);
            HistogramDataPoint {
                attributes: attributes(labels),
                start_time_unix_nano: start_ns,
                time_unix_nano: now_ns,
                count: h.count,
                sum: Some(h.sum),
                bucket_counts,
                explicit_bounds: metrics::REQUEST_BUCKETS.to_vec(),
                min: (h.count > 0).then_some(h.min),
                max: (h.count > 0).then_some(h.max),
                ..Default::default()
            }
        })
        .collect()
}

/// Pushes the agent's metrics over OTLP every `--metrics-interval`, through the
/// forwarder, so they get the spans' bounded queue and retries. Dropping it stops the
/// pushes; [`OtlpMetrics::shutdown`] pushes a last one first.
pub struct OtlpMetrics {
    push: Push,
    task: tokio::task::JoinHandle<()>,
}

/// What one push needs.
#[derive(Clone)]
struct Push {
    encoding: MetricsEncoding,
    state: Arc<Mutex<MetricsState>>,
    forwarder: Forwarder,
    clock: WallClock,
}

impl Push {
    /// Encodes the state now and queues it.
    fn send(&self) {
        let now_ns = self.clock.unix_ns(monotonic_ns());
        let Ok(request) = self.state.lock().map(|s| self.encoding.encode(&s, now_ns)) else {
            return;
        };
        self.forwarder.send(Payload::Metrics(request));
    }
}

impl OtlpMetrics {
    /// Starts pushing every `every` (the first push one period from now); must be
    /// called inside a tokio runtime. The cumulative series start now.
    pub fn start(
        forwarder: Forwarder,
        every: Duration,
        state: Arc<Mutex<MetricsState>>,
        clock: WallClock,
    ) -> Self {
        let push = Push {
            encoding: MetricsEncoding::new(clock.unix_ns(monotonic_ns())),
            state,
            forwarder,
            clock,
        };
        let periodic = push.clone();
        let task = tokio::spawn(async move {
            let every = every.max(Duration::from_millis(1));
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                periodic.send();
            }
        });
        Self { push, task }
    }

    /// Stops the periodic pushes and queues a last one, with what is recorded by now.
    pub fn shutdown(self) {
        self.task.abort();
        self.push.send();
    }
}

impl Drop for OtlpMetrics {
    fn drop(&mut self) {
        self.task.abort();
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
    pub attributes: Vec<ProtoKeyValue>,
}

impl FinishedSpan {
    /// The span as an export request: a new trace of one INTERNAL span, under the
    /// agent's resource and scope.
    pub fn request(self) -> ExportTraceServiceRequest {
        let unix_ns = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        };
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        // Random and never all zero (an invalid id in OTLP).
        while trace_id == [0; 16] {
            trace_id.iter_mut().for_each(|b| *b = fastrand::u8(..));
        }
        while span_id == [0; 8] {
            span_id.iter_mut().for_each(|b| *b = fastrand::u8(..));
        }
        let span = Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
            name: self.name,
            kind: SpanKind::Internal.into(),
            start_time_unix_nano: unix_ns(self.start),
            end_time_unix_nano: unix_ns(self.end),
            attributes: self.attributes,
            ..Default::default()
        };
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans: vec![span],
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }
}

/// Exports one span and waits for it to be delivered (or to fail).
pub fn export_span(config: &ForwardConfig, span: FinishedSpan) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime
        .block_on(forward::deliver_once(
            config,
            Payload::Traces(span.request()),
        ))
        .map_err(|e| anyhow::anyhow!("exporting the measure span: {e}"))
}
