use super::*;
use crate::units::Joules;
use crate::{
    attribute::{EnergyByClass, GroupReport, IntervalReport, ProcessReport},
    carbon::CarbonSummary,
    export::{
        otlp::MetricsEncoding,
        prometheus::{metric_name as prometheus_name, render as render_prometheus},
    },
};

fn process(pid: u32, exe: &str, cpu_j: f64, rule: bool) -> ProcessReport {
    ProcessReport {
        pid,
        comm: exe.into(),
        exe_name: exe.into(),
        model: if rule { "llama".into() } else { exe.into() },
        model_rule: rule,
        energy_j: Joules(cpu_j),
        joules: EnergyByClass {
            cpu_j: Joules(cpu_j),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn report(processes: Vec<ProcessReport>) -> CarbonReport {
    let mut energy = IntervalReport {
        duration_s: 1.0,
        processes,
        idle: GroupReport {
            energy_j: Joules(2.0),
            ..Default::default()
        },
        ..Default::default()
    };
    crate::attribute::regroup(&mut energy);
    let mut carbon = CarbonSummary {
        pue: 1.0,
        ..Default::default()
    };
    carbon.intensity.g_per_kwh = 360.0;
    carbon.intensity.source = "fixed".into();
    CarbonReport { energy, carbon }
}

fn value(s: &MetricsState, def: Def, labels: &[(&'static str, &str)]) -> f64 {
    let mut key: Labels = labels.iter().map(|(k, v)| (*k, v.to_string())).collect();
    key.sort();
    s.values.get(&(def.name, key)).copied().unwrap_or(f64::NAN)
}

#[test]
fn counters_accumulate_and_small_processes_become_other() {
    let mut s = MetricsState::new(1);
    let r = report(vec![
        process(1, "big", 5.0, false),
        process(2, "small", 1.0, false),
        process(3, "tiny", 0.5, true),
    ]);
    s.observe(&r);
    s.observe(&r);
    let labels = |pid, exe, model| {
        [
            ("process.pid", pid),
            ("process.executable.name", exe),
            ("model", model),
            ("container.id", ""),
            ("energy.domain", "cpu"),
        ]
    };
    assert_eq!(value(&s, ENERGY_PROCESS, &labels("1", "big", "big")), 10.0);
    assert_eq!(
        value(&s, ENERGY_PROCESS, &labels("3", "tiny", "llama")),
        1.0,
        "rule-matched: own series"
    );
    let other = [
        ("process.pid", "other"),
        ("process.executable.name", "other"),
        ("model", "small"),
        ("container.id", ""),
        ("energy.domain", "cpu"),
    ];
    assert_eq!(
        value(&s, ENERGY_PROCESS, &other),
        2.0,
        "outside the top 1: summed as other"
    );
    assert_eq!(
        value(
            &s,
            ENERGY_MODEL,
            &[("model", "llama"), ("energy.domain", "cpu")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            HW_HOST_ENERGY,
            &[("energy.domain", "idle"), ("hw.id", "idle"), ("source", "")]
        ),
        4.0
    );
}

#[test]
fn prometheus_names_and_exposition() {
    assert_eq!(
        prometheus_name(&ENERGY_PROCESS),
        "energy_process_joules_total"
    );
    assert_eq!(prometheus_name(&HW_HOST_POWER), "hw_host_power_watts");
    assert_eq!(prometheus_name(&CARBON_MODEL), "carbon_model_grams_total");
    assert_eq!(prometheus_name(&REQUESTS_ENERGY), "requests_energy_joules");
    assert_eq!(prometheus_name(&AGENT_SPANS), "energy_agent_spans_total");
    let mut s = MetricsState::new(10);
    s.observe(&report(vec![process(7, "py\"thon", 3.0, true)]));
    s.observe_request("llama", 0.3);
    s.observe_request("llama", 7.0);
    let text = render_prometheus(&s);
    assert!(
        text.contains("# TYPE energy_process_joules_total counter"),
        "{text}"
    );
    assert!(text.contains(r#"energy_process_joules_total{container_id="",energy_domain="cpu",model="llama",process_executable_name="py\"thon",process_pid="7"} 3"#), "{text}");
    assert!(
        text.contains(r#"requests_energy_joules_bucket{model="llama",le="0.5"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"requests_energy_joules_bucket{model="llama",le="+Inf"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"requests_energy_joules_sum{model="llama"} 7.3"#),
        "{text}"
    );
    assert!(text.contains("energy_agent_info{"), "{text}");
}

#[test]
fn joules_per_token_series_only_for_requests_with_tokens() {
    let mut s = MetricsState::new(10);
    s.observe_request_tokens("llama", 2.0, Some(300), Some(100));
    s.observe_request_tokens("llama", 2.0, None, None);
    s.observe_request_tokens("llama", 2.0, Some(50), Some(0));
    let labels = l(&[("model", "llama")]);
    let per_output = &s.histograms[&(REQUESTS_ENERGY_PER_OUTPUT_TOKEN.name, labels.clone())];
    assert_eq!(per_output.count, 1, "only the request with output tokens");
    assert!((per_output.sum - 0.02).abs() < 1e-12);
    let per_1k = &s.histograms[&(REQUESTS_ENERGY_PER_1K_TOKENS.name, labels)];
    assert_eq!(per_1k.count, 2);
    assert!((per_1k.sum - (5.0 + 40.0)).abs() < 1e-9, "{}", per_1k.sum);
    let text = render_prometheus(&s);
    assert!(
        text.contains(r#"requests_energy_per_output_token_joules_count{model="llama"} 1"#),
        "{text}"
    );
}

#[test]
fn gone_processes_series_are_evicted_eventually() {
    let mut s = MetricsState::new(10);
    s.observe(&report(vec![process(9, "gone", 1.0, false)]));
    let key = |s: &MetricsState| {
        s.values
            .keys()
            .filter(|(n, l)| *n == ENERGY_PROCESS.name && l.iter().any(|(_, v)| v == "9"))
            .count()
    };
    assert!(key(&s) > 0);
    for _ in 0..302 {
        s.observe(&report(vec![]));
    }
    assert_eq!(key(&s), 0);
}

#[test]
fn gone_models_and_containers_series_are_evicted_and_present_ones_stay() {
    let mut s = MetricsState::new(10);
    let mut gone = process(9, "batch", 1.0, true);
    gone.model = "old-model".into();
    gone.container_id = Some("c0ffee".into());
    let mut stays = process(10, "server", 1.0, false);
    stays.container_id = Some("beef".into());
    s.observe(&report(vec![gone, stays.clone()]));
    s.observe_request("old-model", 0.5);
    let series = |s: &MetricsState, def: Def, value: &str| {
        s.values
            .keys()
            .filter(|(n, l)| *n == def.name && l.iter().any(|(_, v)| v == value))
            .count()
    };
    assert_eq!(series(&s, ENERGY_MODEL, "old-model"), 3, "cpu, dram, gpu");
    assert_eq!(series(&s, CARBON_MODEL, "old-model"), 1);
    assert_eq!(series(&s, ENERGY_CONTAINER, "c0ffee"), 1);
    assert_eq!(s.histograms.len(), 1);
    for n in 1..=EVICT_AFTER + 1 {
        s.observe(&report(vec![stays.clone()]));
        if n == EVICT_AFTER {
            assert_eq!(
                series(&s, ENERGY_MODEL, "old-model"),
                3,
                "kept for {EVICT_AFTER} intervals"
            );
        }
    }
    assert_eq!(series(&s, ENERGY_MODEL, "old-model"), 0);
    assert_eq!(series(&s, CARBON_MODEL, "old-model"), 0);
    assert_eq!(series(&s, ENERGY_CONTAINER, "c0ffee"), 0);
    assert!(
        s.histograms.is_empty(),
        "the gone model's request histogram"
    );
    assert_eq!(series(&s, ENERGY_MODEL, "server"), 3, "still running");
    assert_eq!(series(&s, ENERGY_CONTAINER, "beef"), 1);
    assert_eq!(
        value(&s, ENERGY_CONTAINER, &[("container.id", "beef")]),
        f64::from(EVICT_AFTER as u32 + 2),
        "its counter kept accumulating"
    );
}

#[test]
fn gpu_joules_get_their_own_domain_series() {
    let mut s = MetricsState::new(5);
    let mut p = process(9, "vllm", 1.0, true);
    p.joules.gpu_j = Joules(40.0);
    p.energy_j = Joules(41.0);
    s.observe(&report(vec![p]));
    let labels = |domain| {
        [
            ("process.pid", "9"),
            ("process.executable.name", "vllm"),
            ("model", "llama"),
            ("container.id", ""),
            ("energy.domain", domain),
        ]
    };
    assert_eq!(value(&s, ENERGY_PROCESS, &labels("gpu")), 40.0);
    assert_eq!(value(&s, ENERGY_PROCESS, &labels("cpu")), 1.0);
}

#[test]
fn otlp_encoding_decodes_to_the_state() {
    use opentelemetry_proto::tonic::{
        collector::metrics::v1::ExportMetricsServiceRequest,
        common::v1::any_value::Value as Any,
        metrics::v1::{AggregationTemporality, metric::Data, number_data_point::Value},
    };
    use prost::Message;

    let mut s = MetricsState::new(10);
    s.observe(&report(vec![process(7, "python", 3.0, true)]));
    s.observe(&report(vec![process(7, "python", 3.0, true)]));
    s.set_value(AGENT_LAG, &[], 0.25);
    for j in [0.03, 0.3, 0.4, 7.0, 9000.0] {
        s.observe_request("llama", j);
    }
    let bytes = MetricsEncoding::new(1_000)
        .encode(&s, 5_000)
        .encode_to_vec();
    let decoded = ExportMetricsServiceRequest::decode(&bytes[..]).expect("decodes");
    let rm = &decoded.resource_metrics[0];
    let resource: Vec<(String, Option<Any>)> = rm
        .resource
        .as_ref()
        .expect("a resource")
        .attributes
        .iter()
        .map(|kv| (kv.key.clone(), kv.value.clone().and_then(|v| v.value)))
        .collect();
    assert!(
        resource.contains(&(
            "service.name".into(),
            Some(Any::StringValue("energy-agent".into()))
        )),
        "{resource:?}"
    );
    assert!(
        resource.iter().any(|(k, _)| k == "service.version"),
        "{resource:?}"
    );
    // Who sends, from which host: series of many hosts never collide in one backend.
    let text = |key: &str| {
        resource
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| match v {
                Some(Any::StringValue(s)) => s.clone(),
                other => panic!("{key} is not a string: {other:?}"),
            })
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    assert_eq!(text("host.arch").as_deref(), Some(arch), "{resource:?}");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert_eq!(
        text("host.name").as_deref(),
        Some(hostname.trim()),
        "{resource:?}"
    );
    let machine_id = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| t.len() == 32);
    assert_eq!(text("host.id"), machine_id, "{resource:?}");
    let instance = text("service.instance.id").expect("a service.instance.id");
    assert_eq!(
        instance,
        crate::export::otlp::resource::instance_id(),
        "one id for the run"
    );
    let again = MetricsEncoding::new(2_000).encode(&s, 6_000);
    let sorted = |r: &Option<opentelemetry_proto::tonic::resource::v1::Resource>| {
        let mut kvs: Vec<String> = (r.iter().flat_map(|r| &r.attributes))
            .map(|kv| format!("{kv:?}"))
            .collect();
        kvs.sort();
        kvs
    };
    assert_eq!(
        sorted(&again.resource_metrics[0].resource),
        sorted(&rm.resource),
        "every export carries the same resource"
    );
    let sm = &rm.scope_metrics[0];
    assert_eq!(
        sm.scope.as_ref().map(|s| s.name.as_str()),
        Some("energy-agent")
    );
    let metric = |name: &str| {
        sm.metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", sm.metrics))
    };
    // Decoded attributes, and a state label set, as sorted (key, value) strings.
    let attrs = |kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]| {
        let mut v: Vec<(String, String)> = kvs
            .iter()
            .map(
                |kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Any::StringValue(v)) => (kv.key.clone(), v.clone()),
                    other => panic!("{} is not a string: {other:?}", kv.key),
                },
            )
            .collect();
        v.sort();
        v
    };
    let strings = |labels: &Labels| -> Vec<(String, String)> {
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    };

    // A counter: a cumulative monotonic sum, one point per series, as in the state.
    let process = metric("energy.process");
    assert_eq!(
        (process.unit.as_str(), process.description.as_str()),
        ("J", ENERGY_PROCESS.help)
    );
    let Some(Data::Sum(sum)) = &process.data else {
        panic!("energy.process is not a sum: {process:?}")
    };
    assert!(sum.is_monotonic);
    assert_eq!(
        sum.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );
    let series: Vec<_> = s
        .values
        .iter()
        .filter(|((n, _), _)| *n == ENERGY_PROCESS.name)
        .collect();
    assert_eq!(sum.data_points.len(), series.len());
    for p in &sum.data_points {
        let labels = attrs(&p.attributes);
        let (_, v) = series
            .iter()
            .find(|((_, l), _)| strings(l) == labels)
            .unwrap_or_else(|| panic!("{labels:?} is not a series of the state"));
        assert_eq!(p.value, Some(Value::AsDouble(**v)), "{labels:?}");
        assert_eq!((p.start_time_unix_nano, p.time_unix_nano), (1_000, 5_000));
    }
    let cpu = sum
        .data_points
        .iter()
        .find(|p| attrs(&p.attributes).contains(&("energy.domain".into(), "cpu".into())))
        .expect("the cpu series");
    assert_eq!(
        cpu.value,
        Some(Value::AsDouble(6.0)),
        "two intervals of 3 J"
    );

    // A gauge.
    let lag = metric("energy_agent.interval.lag");
    assert_eq!(lag.unit, "s");
    let Some(Data::Gauge(gauge)) = &lag.data else {
        panic!("the lag is not a gauge: {lag:?}")
    };
    assert_eq!(gauge.data_points.len(), 1);
    assert_eq!(gauge.data_points[0].value, Some(Value::AsDouble(0.25)));
    assert!(gauge.data_points[0].attributes.is_empty());

    // The histogram: the state's buckets, non-cumulative, with REQUEST_BUCKETS.
    let requests = metric("requests.energy");
    let Some(Data::Histogram(h)) = &requests.data else {
        panic!("requests.energy is not a histogram: {requests:?}")
    };
    assert_eq!(
        h.aggregation_temporality,
        AggregationTemporality::Cumulative as i32
    );
    assert_eq!(h.data_points.len(), 1);
    let p = &h.data_points[0];
    let state = &s.histograms[&(REQUESTS_ENERGY.name, l(&[("model", "llama")]))];
    assert_eq!(attrs(&p.attributes), strings(&l(&[("model", "llama")])));
    assert_eq!(p.explicit_bounds, REQUEST_BUCKETS.to_vec());
    assert_eq!(p.bucket_counts, state.counts);
    assert_eq!(
        p.bucket_counts,
        vec![0, 1, 0, 2, 0, 0, 1, 0, 0, 0, 0, 0, 1],
        "0.03 ≤ 0.05, 0.3 and 0.4 ≤ 0.5, 7 ≤ 10, 9000 > 5000"
    );
    assert_eq!(p.count, 5);
    assert!((p.sum.expect("a sum") - 9007.73).abs() < 1e-9);
    assert_eq!((p.min, p.max), (Some(0.03), Some(9000.0)));
    assert_eq!(p.start_time_unix_nano, 1_000);

    // Metrics without a series are left out; every one present is one of ALL.
    assert!(
        sm.metrics
            .iter()
            .all(|m| ALL.iter().any(|d| d.name == m.name))
    );
    assert!(
        !sm.metrics.iter().any(|m| m.name == AGENT_OTLP_DROPPED.name),
        "nothing set it"
    );
}

#[test]
fn idle_power_is_one_series_per_domain_whose_origin_is_a_label() {
    use crate::attribute::{IdleOrigin, IdlePower};
    use crate::power::Domain;
    use crate::units::Watts;
    let mut s = MetricsState::new(5);
    let mut r = report(vec![]);
    let mut lowest = IdlePower::new(Domain::Package(0), Watts(25.0), IdleOrigin::Lowest);
    lowest.uncertain = true;
    r.energy.idle_power = vec![lowest];
    s.observe(&r);
    let labels = |origin, uncertain| {
        [
            ("hw.id", "package-0"),
            ("energy.idle.origin", origin),
            ("energy.idle.uncertain", uncertain),
        ]
    };
    assert_eq!(
        value(&s, ENERGY_IDLE_POWER, &labels("lowest", "true")),
        25.0
    );
    let mut fitted = IdlePower::new(Domain::Package(0), Watts(10.0), IdleOrigin::Fitted);
    fitted.uncertainty_w = Some(Watts(0.25));
    r.energy.idle_power = vec![fitted];
    s.observe(&r);
    assert_eq!(
        value(&s, ENERGY_IDLE_POWER, &labels("fitted", "false")),
        10.0
    );
    assert_eq!(
        value(&s, ENERGY_IDLE_UNCERTAINTY, &[("hw.id", "package-0")]),
        0.25
    );
    let series = s
        .values
        .keys()
        .filter(|(n, _)| *n == ENERGY_IDLE_POWER.name)
        .count();
    assert_eq!(series, 1, "the origin changed, the series count did not");
    let text = render_prometheus(&s);
    assert!(
        text.contains("energy_idle_power_watts{energy_idle_origin=\"fitted\""),
        "{text}"
    );
}

#[test]
fn container_series_carry_the_pod_and_namespace_when_known() {
    use crate::identity::{container::ContainerInfo, k8s::PodMeta};
    let mut s = MetricsState::new(10);
    let mut in_pod = process(9, "vllm", 2.0, true);
    let pod = PodMeta {
        uid: "u-1".into(),
        name: "vllm-0".into(),
        namespace: "ml".into(),
        ..Default::default()
    };
    in_pod.container_id = Some("c0ffee".into());
    in_pod.container = Some(ContainerInfo {
        id: "c0ffee".into(),
        pod_uid: Some("u-1".into()),
        pod: Some(std::sync::Arc::new(pod)),
        container_name: Some("server".into()),
        ..Default::default()
    });
    // In a pod the metadata does not know (yet): the container id alone.
    let mut unknown = process(10, "job", 1.0, false);
    unknown.container_id = Some("beef".into());
    unknown.container = Some(ContainerInfo {
        id: "beef".into(),
        pod_uid: Some("u-2".into()),
        ..Default::default()
    });
    s.observe(&report(vec![in_pod, unknown]));
    assert_eq!(
        value(
            &s,
            ENERGY_CONTAINER,
            &[
                ("container.id", "c0ffee"),
                ("k8s.pod.name", "vllm-0"),
                ("k8s.namespace.name", "ml"),
                ("k8s.container.name", "server"),
            ]
        ),
        2.0
    );
    assert_eq!(
        value(&s, ENERGY_CONTAINER, &[("container.id", "beef")]),
        1.0
    );
}
