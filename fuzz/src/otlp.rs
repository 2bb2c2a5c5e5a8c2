//! OTLP as any sender can send it. The first byte picks the signal (traces, metrics,
//! logs), the transport (gRPC: an optionally gzip-compressed protobuf message, as tonic
//! hands it to the receiver; HTTP: the receiver's own `decode_body`, protobuf or JSON,
//! optionally gzip) and, for traces, whether every span is a request; the rest is the
//! body. Decoded traces go through the enricher with an interval covering their spans
//! for each process they name, and the harness asserts that every span comes out,
//! every energy attribute is a non-negative number, and the spans of a process never
//! get more than the process had.

use std::{collections::BTreeMap, io::Read, path::PathBuf, time::Duration};

use energy_agent::{
    attribute::EnergyByClass,
    receive::{
        admission::{log_items, metric_items, trace_items},
        enricher::{EnrichConfig, Enricher, Origin},
        memory::size_of_message,
        server::decode_body,
        spans::{self, Selection, names},
    },
    requests::{IntervalRecord, ProcessInterval},
    units::{Joules, Nanos},
};
use opentelemetry_proto::tonic::{
    collector::{
        logs::v1::ExportLogsServiceRequest, metrics::v1::ExportMetricsServiceRequest,
        trace::v1::ExportTraceServiceRequest,
    },
    common::v1::any_value::Value,
};
use prost::Message;

/// The receiver's default `--max-message-bytes` is 4 MiB; 1 MiB keeps runs fast.
const MAX: usize = 1 << 20;

/// Energy each process has in the interval: 1 J of CPU, 0.5 J of DRAM.
const PROCESS_J: f64 = 1.5;

/// One input.
pub fn run(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let http = selector & 0x04 != 0;
    let json = selector & 0x08 != 0;
    let gzip = selector & 0x10 != 0;
    match selector % 3 {
        0 => {
            if let Some(r) = decode::<ExportTraceServiceRequest>(http, json, gzip, body) {
                let _ = size_of_message(&r);
                let _ = enrich(r, selector & 0x20 != 0);
            }
        }
        1 => {
            if let Some(r) = decode::<ExportMetricsServiceRequest>(http, json, gzip, body) {
                let _ = (metric_items(&r), size_of_message(&r));
            }
        }
        _ => {
            if let Some(r) = decode::<ExportLogsServiceRequest>(http, json, gzip, body) {
                let _ = (log_items(&r), size_of_message(&r));
            }
        }
    }
}

fn decode<T: Message + Default + serde::de::DeserializeOwned>(
    http: bool,
    json: bool,
    gzip: bool,
    body: &[u8],
) -> Option<T> {
    if http {
        let content_type = if json {
            "application/json"
        } else {
            "application/x-protobuf"
        };
        return decode_body::<T>(content_type, gzip, body, MAX)
            .ok()
            .map(|(m, _)| m);
    }
    let mut inflated = Vec::new();
    let bytes = if gzip {
        flate2::read::GzDecoder::new(body)
            .take(MAX as u64)
            .read_to_end(&mut inflated)
            .ok()?;
        &inflated[..]
    } else {
        body
    };
    T::decode(bytes).ok()
}

/// The processes a request names (`process.pid` of its resources), at most 8.
fn pids(r: &ExportTraceServiceRequest) -> Vec<u32> {
    let mut pids: Vec<u32> = r
        .resource_spans
        .iter()
        .filter_map(|rs| {
            let attrs = &rs.resource.as_ref()?.attributes;
            u32::try_from(spans::attr_int(attrs, names::PROCESS_PID)?).ok()
        })
        .filter(|&p| p > 0)
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids.truncate(8);
    pids
}

/// An interval over [`start`, `end`] in which each of `pids` had [`PROCESS_J`].
fn record(pids: &[u32], start: u64, end: u64) -> IntervalRecord {
    let processes = pids
        .iter()
        .map(|&pid| {
            let interval = ProcessInterval {
                model: "fuzz".into(),
                joules: EnergyByClass {
                    cpu_j: Joules(1.0),
                    dram_j: Joules(0.5),
                    ..Default::default()
                },
                embodied_g: 0.0,
                cpu_ns: Nanos(1_000_000_000),
                threads: [(pid, 1_000_000_000)].into(),
                timeline: Default::default(),
                gpu_threads: Default::default(),
                gpu_timeline: Default::default(),
            };
            (pid, interval)
        })
        .collect();
    IntervalRecord {
        start_ns: start,
        end_ns: end.max(start.saturating_add(1)),
        processes,
        g_per_kwh: 300.0,
        intensity_source: "fuzz".into(),
        pue: 1.2,
        estimated: true,
        source: "fuzz".into(),
        ..Default::default()
    }
}

/// Enriches `request` and checks the outcome; returns the spans given energy.
fn enrich(mut request: ExportTraceServiceRequest, every_span: bool) -> usize {
    // A sender's own energy.* and carbon.* attributes pass through untouched; taken out
    // here so that every one left at the end is the agent's.
    for s in request
        .resource_spans
        .iter_mut()
        .flat_map(|rs| &mut rs.scope_spans)
        .flat_map(|ss| &mut ss.spans)
    {
        s.attributes
            .retain(|kv| !kv.key.starts_with("energy.") && !kv.key.starts_with("carbon."));
    }
    let pids = pids(&request);
    let all = request
        .resource_spans
        .iter()
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans);
    let start = all
        .clone()
        .map(|s| s.start_time_unix_nano)
        .min()
        .unwrap_or(0);
    let end = all.map(|s| s.end_time_unix_nano).max().unwrap_or(0);
    let items = trace_items(&request);
    let mut enricher = Enricher::new(
        EnrichConfig {
            selection: if every_span {
                Selection::All
            } else {
                Selection::Default
            },
            services: Vec::new(),
            max_delay: Duration::from_secs(60),
            max_held_spans: 100_000,
            proc_root: PathBuf::from("/nonexistent"),
        },
        16,
    );
    let mut out = enricher.accept(request, Origin::default());
    out.extend(enricher.on_interval(record(&pids, start, end)));
    out.extend(enricher.release(true));
    let passed: usize = out.iter().map(|b| trace_items(&b.message)).sum();
    assert_eq!(passed, items, "every span is passed on");
    let mut per_pid: BTreeMap<i64, f64> = BTreeMap::new();
    let mut enriched = 0;
    for rs in out.iter().flat_map(|b| &b.message.resource_spans) {
        let pid = rs
            .resource
            .as_ref()
            .and_then(|r| spans::attr_int(&r.attributes, names::PROCESS_PID));
        for s in rs.scope_spans.iter().flat_map(|ss| &ss.spans) {
            for kv in &s.attributes {
                if let (true, Some(Value::DoubleValue(v))) = (
                    kv.key.starts_with("energy.") || kv.key.starts_with("carbon."),
                    kv.value.as_ref().and_then(|v| v.value.as_ref()),
                ) {
                    crate::assert_sane(&kv.key, *v);
                }
            }
            if let (Some(pid), Some(Value::DoubleValue(j))) =
                (pid, spans::attr(&s.attributes, names::ENERGY_JOULES))
            {
                *per_pid.entry(pid).or_default() += j;
                enriched += 1;
            }
        }
    }
    for (pid, j) in per_pid {
        assert!(
            j <= PROCESS_J * (1.0 + 1e-9) + 1e-12,
            "the requests of process {pid} got {j} J of its {PROCESS_J} J"
        );
    }
    enriched
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trace seeds decode and get energy: the harness reaches the enricher.
    #[test]
    fn trace_seeds_reach_the_enricher() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/otlp");
        for name in [
            "traces-grpc",
            "traces-grpc-gzip-all",
            "traces-http-json",
            "traces-http-gzip",
        ] {
            let data = std::fs::read(dir.join(name)).expect("a seed");
            let selector = data[0];
            let request = decode::<ExportTraceServiceRequest>(
                selector & 0x04 != 0,
                selector & 0x08 != 0,
                selector & 0x10 != 0,
                &data[1..],
            )
            .unwrap_or_else(|| panic!("{name} decodes"));
            assert!(
                enrich(request, selector & 0x20 != 0) > 0,
                "{name} is enriched"
            );
        }
    }
}
