//! How much memory a decoded OTLP message holds: what the receiver's budget counts, so
//! that its bound is one on memory. Decoded, a message takes several times its protobuf
//! size (a span of SDK-like attributes, about 180 bytes on the wire, holds about 1.5 KB:
//! each attribute is a key string, a value enum and a `Vec` slot), so the wire size
//! alone would let the budget hold several times what it says.

use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    },
    common::v1::{
        AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList,
        any_value::Value,
    },
    logs::v1::{LogRecord, ResourceLogs, ScopeLogs},
    metrics::v1::{
        Exemplar, ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram,
        HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary,
        SummaryDataPoint, exponential_histogram_data_point::Buckets, metric::Data,
        summary_data_point::ValueAtQuantile,
    },
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span::Event, span::Link},
};

/// What the allocator adds to each allocation (its header and rounding), about.
const PER_ALLOCATION: usize = 16;

/// Bytes a value owns on the heap (not counting itself).
pub trait Footprint {
    /// Heap bytes owned.
    fn heap(&self) -> usize;
}

/// Bytes a decoded message takes in all: itself and what it owns.
pub fn size_of_message<T: Footprint>(message: &T) -> usize {
    size_of::<T>() + message.heap()
}

fn allocation(bytes: usize) -> usize {
    if bytes == 0 {
        0
    } else {
        bytes + PER_ALLOCATION
    }
}

impl Footprint for String {
    fn heap(&self) -> usize {
        allocation(self.capacity())
    }
}

impl<T: Footprint> Footprint for Vec<T> {
    fn heap(&self) -> usize {
        allocation(self.capacity() * size_of::<T>()) + self.iter().map(T::heap).sum::<usize>()
    }
}

impl<T: Footprint> Footprint for Option<T> {
    fn heap(&self) -> usize {
        self.as_ref().map_or(0, T::heap)
    }
}

macro_rules! owns_nothing {
    ($($t:ty),*) => {
        $(impl Footprint for $t {
            fn heap(&self) -> usize {
                0
            }
        })*
    };
}

owns_nothing!(u8, u64, f64, ValueAtQuantile);

/// A message owns what its fields own.
macro_rules! fields {
    ($($t:ty: $($f:ident),+;)*) => {
        $(impl Footprint for $t {
            fn heap(&self) -> usize {
                0 $(+ self.$f.heap())+
            }
        })*
    };
}

fields! {
    ExportTraceServiceRequest: resource_spans;
    ResourceSpans: resource, scope_spans, schema_url;
    ScopeSpans: scope, spans, schema_url;
    Span: trace_id, span_id, trace_state, parent_span_id, name, attributes, events, links, status;
    Event: name, attributes;
    Link: trace_id, span_id, trace_state, attributes;
    Status: message;
    Resource: attributes, entity_refs;
    EntityRef: schema_url, r#type, id_keys, description_keys;
    InstrumentationScope: name, version, attributes;
    KeyValue: key, value;
    AnyValue: value;
    ArrayValue: values;
    KeyValueList: values;
    ExportLogsServiceRequest: resource_logs;
    ResourceLogs: resource, scope_logs, schema_url;
    ScopeLogs: scope, log_records, schema_url;
    LogRecord: severity_text, body, attributes, trace_id, span_id, event_name;
    ExportMetricsServiceRequest: resource_metrics;
    ResourceMetrics: resource, scope_metrics, schema_url;
    ScopeMetrics: scope, metrics, schema_url;
    Metric: name, description, unit, metadata, data;
    Gauge: data_points;
    Sum: data_points;
    Histogram: data_points;
    ExponentialHistogram: data_points;
    Summary: data_points;
    NumberDataPoint: attributes, exemplars;
    HistogramDataPoint: attributes, bucket_counts, explicit_bounds, exemplars;
    ExponentialHistogramDataPoint: attributes, positive, negative, exemplars;
    Buckets: bucket_counts;
    SummaryDataPoint: attributes, quantile_values;
    Exemplar: filtered_attributes, span_id, trace_id;
}

impl Footprint for Value {
    fn heap(&self) -> usize {
        match self {
            Value::StringValue(s) => s.heap(),
            Value::BytesValue(b) => b.heap(),
            Value::ArrayValue(a) => a.heap(),
            Value::KvlistValue(kv) => kv.heap(),
            Value::BoolValue(_)
            | Value::IntValue(_)
            | Value::DoubleValue(_)
            | Value::StringValueStrindex(_) => 0,
        }
    }
}

impl Footprint for Data {
    fn heap(&self) -> usize {
        match self {
            Data::Gauge(g) => g.heap(),
            Data::Sum(s) => s.heap(),
            Data::Histogram(h) => h.heap(),
            Data::ExponentialHistogram(h) => h.heap(),
            Data::Summary(s) => s.heap(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(value.into())),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_span_counts_what_it_owns() {
        let bare = Span::default();
        assert_eq!(size_of_message(&bare), size_of::<Span>());
        let span = Span {
            name: "chat".into(),
            trace_id: vec![1; 16],
            attributes: vec![kv("gen_ai.request.model", "m")],
            ..Default::default()
        };
        let expected = size_of::<Span>()
            + (4 + PER_ALLOCATION)
            + (16 + PER_ALLOCATION)
            + (size_of::<KeyValue>() + PER_ALLOCATION)
            + (20 + PER_ALLOCATION)
            + (1 + PER_ALLOCATION);
        assert_eq!(size_of_message(&span), expected);
    }

    #[test]
    fn decoded_spans_take_several_times_their_wire_size() {
        use prost::Message;
        let spans: Vec<Span> = (0..100u64)
            .map(|i| Span {
                name: "chat model".into(),
                trace_id: vec![7; 16],
                span_id: i.to_be_bytes().to_vec(),
                attributes: (0..8).map(|k| kv(&format!("attr.{k}"), "value")).collect(),
                ..Default::default()
            })
            .collect();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        };
        let decoded =
            ExportTraceServiceRequest::decode(&request.encode_to_vec()[..]).expect("round trip");
        let ratio = size_of_message(&decoded) as f64 / decoded.encoded_len() as f64;
        assert!(ratio > 3.0, "decoded {ratio:.1}× the wire size");
    }
}
