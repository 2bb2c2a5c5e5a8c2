use super::*;
use crate::receive::spans::names;
use crate::units::Joules;
use crate::{attribute::EnergyByClass, requests::ProcessInterval};
use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, span::SpanKind},
};
use std::path::PathBuf;

const S: u64 = 1_000_000_000;
const T0: u64 = 1_800_000_000 * S;

fn kv(k: &str, v: Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn span(
    id: u8,
    parent: Option<u8>,
    kind: SpanKind,
    start: u64,
    end: u64,
    attrs: Vec<KeyValue>,
) -> Span {
    Span {
        trace_id: vec![9; 16],
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: format!("span-{id}"),
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes: attrs,
        ..Default::default()
    }
}

fn batch(pid: Option<i64>, spans: Vec<Span>) -> ExportTraceServiceRequest {
    let mut attrs = vec![kv("service.name", Value::StringValue("llm".into()))];
    if let Some(pid) = pid {
        attrs.push(kv("process.pid", Value::IntValue(pid)));
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: attrs,
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn record(start: u64, pid: u32, cpu_j: f64) -> IntervalRecord {
    IntervalRecord {
        start_ns: start,
        end_ns: start + S,
        processes: [(
            pid,
            ProcessInterval {
                model: "llm".into(),
                joules: EnergyByClass {
                    cpu_j: Joules(cpu_j),
                    ..Default::default()
                },
                embodied_g: 0.0,
                cpu_ns: crate::units::Nanos(S),
                threads: [(pid, S)].into(),
                timeline: Default::default(),
                gpu_threads: Default::default(),
                gpu_timeline: Default::default(),
            },
        )]
        .into(),
        g_per_kwh: 100.0,
        intensity_source: "fixed".into(),
        pue: 1.0,
        estimated: true,
        source: "estimate".into(),
        idle_origin: Some(crate::attribute::IdleOrigin::Fitted),
        idle_uncertain: false,
    }
}

fn enricher(max_held: usize) -> Enricher {
    Enricher::new(
        EnrichConfig {
            selection: Selection::Default,
            services: vec!["llm-svc=my-llm-server".parse().unwrap()],
            max_delay: Duration::from_secs(30),
            max_held_spans: max_held,
            proc_root: PathBuf::from("/proc"),
        },
        16,
    )
}

fn attrs_of(r: &ExportTraceServiceRequest) -> Vec<Vec<KeyValue>> {
    r.resource_spans[0].scope_spans[0]
        .spans
        .iter()
        .map(|s| s.attributes.clone())
        .collect()
}

fn joules(attrs: &[KeyValue]) -> Option<f64> {
    match spans::attr(attrs, names::ENERGY_JOULES)? {
        Value::DoubleValue(d) => Some(*d),
        _ => None,
    }
}

#[test]
fn held_until_covered_then_enriched_and_otherwise_untouched() {
    let mut e = enricher(1000);
    let req = batch(
        Some(42),
        vec![
            span(
                1,
                None,
                SpanKind::Server,
                T0,
                T0 + S / 2,
                vec![kv("http.route", Value::StringValue("/v1".into()))],
            ),
            span(2, Some(1), SpanKind::Client, T0, T0 + S / 4, vec![]),
        ],
    );
    let original = req.clone();
    assert!(e.accept(req, Origin::default()).is_empty());
    assert_eq!(e.stats.held, 2);
    assert!(e.release(false).is_empty(), "nothing attributed yet");
    let out = e.on_interval(record(T0, 42, 8.0));
    assert_eq!(out.len(), 1);
    let attrs = attrs_of(&out[0]);
    assert_eq!(joules(&attrs[0]), Some(4.0), "half of the interval");
    assert_eq!(joules(&attrs[1]), None, "not a request span");
    assert_eq!(
        attrs[1],
        original.resource_spans[0].scope_spans[0].spans[1].attributes
    );
    assert_eq!(spans::attr_str(&attrs[0], "http.route"), Some("/v1"));
    assert_eq!(
        out[0].resource_spans[0].resource,
        original.resource_spans[0].resource
    );
    assert_eq!(e.stats.enriched, 1);
    assert_eq!(e.stats.held, 0);
    let requests: Vec<(String, f64)> = (e.take_requests().into_iter())
        .map(|r| (r.model, r.joules.get()))
        .collect();
    assert_eq!(requests, vec![("llm".to_string(), 4.0)]);
}

#[test]
fn unknown_senders_are_marked_with_a_reason() {
    let mut e = enricher(1000);
    e.accept(
        batch(
            None,
            vec![span(1, None, SpanKind::Server, T0, T0 + S / 2, vec![])],
        ),
        Origin::default(),
    );
    let out = e.on_interval(record(T0, 42, 8.0));
    let attrs = attrs_of(&out[0]);
    assert_eq!(
        spans::attr_str(&attrs[0], names::ENERGY_STATUS),
        Some("unattributed")
    );
    let reason = spans::attr_str(&attrs[0], names::ENERGY_STATUS_REASON).unwrap();
    assert!(reason.contains("service.name=llm"), "{reason}");
    assert_eq!(e.stats.unattributed, 1);
}

#[test]
fn the_connection_origin_names_the_process_when_the_resource_does_not() {
    let mut e = enricher(1000);
    e.accept(
        batch(
            None,
            vec![span(1, None, SpanKind::Server, T0, T0 + S, vec![])],
        ),
        Origin {
            pid: Some(42),
            ..Default::default()
        },
    );
    let out = e.on_interval(record(T0, 42, 8.0));
    assert_eq!(joules(&attrs_of(&out[0])[0]), Some(8.0));
}

#[test]
fn only_the_root_most_request_is_enriched() {
    let mut e = enricher(1000);
    let gen_ai = vec![kv("gen_ai.request.model", Value::StringValue("m".into()))];
    e.accept(
        batch(
            Some(42),
            vec![
                span(
                    3,
                    Some(2),
                    SpanKind::Internal,
                    T0,
                    T0 + S / 4,
                    gen_ai.clone(),
                ),
                span(2, Some(1), SpanKind::Internal, T0, T0 + S / 2, vec![]),
                span(1, None, SpanKind::Server, T0, T0 + S, vec![]),
            ],
        ),
        Origin::default(),
    );
    let out = e.on_interval(record(T0, 42, 8.0));
    let attrs = attrs_of(&out[0]);
    assert_eq!(joules(&attrs[0]), None, "gen_ai child of the server span");
    assert_eq!(joules(&attrs[2]), Some(8.0));
    assert_eq!(e.stats.nested, 1);
}

#[test]
fn a_parent_arriving_after_its_enriched_child_is_not_counted_again() {
    let mut e = enricher(1000);
    let gen_ai = vec![kv("gen_ai.request.model", Value::StringValue("m".into()))];
    e.accept(
        batch(
            Some(42),
            vec![span(2, Some(1), SpanKind::Internal, T0, T0 + S / 2, gen_ai)],
        ),
        Origin::default(),
    );
    let first = e.on_interval(record(T0, 42, 8.0));
    assert_eq!(joules(&attrs_of(&first[0])[0]), Some(4.0));
    e.accept(
        batch(
            Some(42),
            vec![span(1, None, SpanKind::Server, T0, T0 + S + S / 2, vec![])],
        ),
        Origin::default(),
    );
    let later = e.on_interval(record(T0 + S, 42, 8.0));
    assert_eq!(joules(&attrs_of(&later[0])[0]), None);
    assert_eq!(e.stats.nested, 1);
}

#[test]
fn a_full_buffer_passes_batches_on_at_once_marked() {
    let mut e = enricher(2);
    assert!(
        e.accept(
            batch(
                Some(42),
                vec![span(1, None, SpanKind::Server, T0, T0 + 1, vec![])]
            ),
            Origin::default()
        )
        .is_empty()
    );
    let now = e.accept(
        batch(
            Some(42),
            vec![
                span(2, None, SpanKind::Server, T0, T0 + 1, vec![]),
                span(3, None, SpanKind::Client, T0, T0 + 1, vec![]),
            ],
        ),
        Origin::default(),
    );
    assert_eq!(now.len(), 1, "passed on, not dropped");
    let attrs = attrs_of(&now[0]);
    assert!(
        spans::attr_str(&attrs[0], names::ENERGY_STATUS_REASON)
            .unwrap()
            .contains("buffer was full")
    );
    assert_eq!(e.stats.overflowed, 2);
    assert_eq!(e.stats.received, 3);
}

#[test]
fn sub_sampled_spans_wait_for_the_timelines_past_their_end_unless_their_thread_did_the_work() {
    // Read every 100 ms: thread 42, an event loop on CPU 10% of the time, and thread 43,
    // a worker on CPU half the time.
    let sampled = |start: u64| {
        let mut r = record(start, 42, 8.0);
        let p = r.processes.get_mut(&42).unwrap();
        p.threads = [(42, S / 10), (43, S / 2)].into();
        let reads = |ns| (0..10).map(move |k| (start + k * S / 10, start + (k + 1) * S / 10, ns));
        p.timeline = [
            (42, reads(S / 100).collect()),
            (43, reads(S / 20).collect()),
        ]
        .into();
        r
    };
    let naming = |id: u8, tid: i64| {
        let tid = kv(names::THREAD_NATIVE_ID, Value::IntValue(tid));
        batch(
            Some(42),
            vec![span(
                id,
                None,
                SpanKind::Server,
                T0,
                T0 + 9 * S / 10,
                vec![tid],
            )],
        )
    };
    let mut e = enricher(100);
    e.accept(naming(1, 42), Origin::default());
    e.accept(naming(2, 43), Origin::default());
    let out = e.on_interval(sampled(T0));
    assert_eq!(
        out.len(),
        1,
        "the worker's span goes at once: its thread did the work, nothing later changes it"
    );
    assert_eq!(
        out[0].resource_spans[0].scope_spans[0].spans[0].span_id,
        vec![2; 8]
    );
    assert_eq!(
        e.stats.held, 1,
        "the loop's span waits: its work may be a pool's, and the interval ends 100 ms \
         after it, too soon to see a pool thread run on"
    );
    let out = e.on_interval(sampled(T0 + S));
    assert_eq!(
        out.len(),
        1,
        "released once the timelines reach 250 ms past its end"
    );
}

#[test]
fn flush_releases_everything() {
    let mut e = enricher(100);
    e.accept(
        batch(
            Some(42),
            vec![span(1, None, SpanKind::Server, T0, T0 + 10 * S, vec![])],
        ),
        Origin::default(),
    );
    e.on_interval(record(T0, 42, 8.0));
    assert_eq!(e.stats.held, 1);
    let out = e.release(true);
    assert_eq!(out.len(), 1);
    assert_eq!(
        joules(&attrs_of(&out[0])[0]),
        Some(8.0),
        "what the history covers"
    );
}

#[test]
fn service_rules_parse() {
    let r: ServiceRule = "svc=python.*serve".parse().unwrap();
    assert_eq!(r.service, "svc");
    assert!("noequals".parse::<ServiceRule>().is_err());
}

#[test]
fn a_span_of_another_batch_in_the_same_interval_still_decides_the_split_mode() {
    // X (no thread id) and Y (thread 42) share one interval but not a moment, and come
    // in separate batches. Because X names no thread, the interval is split by
    // concurrency, not by thread activity (which here all falls within Y), whichever
    // batch is processed: Y gets the half of the interval it spans.
    let mut e = enricher(1000);
    let gen_ai = vec![kv("gen_ai.request.model", Value::StringValue("m".into()))];
    let mut y_attrs = gen_ai.clone();
    y_attrs.push(kv(names::THREAD_ID, Value::IntValue(42)));
    e.accept(
        batch(
            Some(42),
            vec![span(1, None, SpanKind::Internal, T0, T0 + S / 4, gen_ai)],
        ),
        Origin::default(),
    );
    e.accept(
        batch(
            Some(42),
            vec![span(
                2,
                None,
                SpanKind::Internal,
                T0 + S / 2,
                T0 + S,
                y_attrs,
            )],
        ),
        Origin::default(),
    );
    let mut r = record(T0, 42, 8.0);
    let p = r.processes.get_mut(&42).unwrap();
    p.timeline = [(42, vec![(T0 + S / 2, T0 + S, S)])].into();
    let out = e.on_interval(r);
    assert_eq!(out.len(), 2);
    assert_eq!(joules(&attrs_of(&out[0])[0]), Some(2.0));
    assert_eq!(joules(&attrs_of(&out[1])[0]), Some(4.0));
}

mod genai;
mod untrusted;
