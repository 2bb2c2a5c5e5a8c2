use super::*;
use crate::{
    attribute::{GroupReport, IntervalReport, Joules, ProcessReport},
    carbon::CarbonSummary,
};

fn process(pid: u32, exe: &str, cpu_j: f64, rule: bool) -> ProcessReport {
    ProcessReport {
        pid,
        comm: exe.into(),
        exe_name: exe.into(),
        model: if rule { "llama".into() } else { exe.into() },
        model_rule: rule,
        energy_j: cpu_j,
        joules: Joules {
            cpu_j,
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
            energy_j: 2.0,
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
fn gpu_joules_get_their_own_domain_series() {
    let mut s = MetricsState::new(5);
    let mut p = process(9, "vllm", 1.0, true);
    p.joules.gpu_j = 40.0;
    p.energy_j = 41.0;
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
