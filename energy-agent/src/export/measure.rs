//! The `measure` report: a command's duration, CPU time, joules per domain, grams of
//! CO2e and what the whole host spent in the same window (its "energy to solution"),
//! summed from interval reports, and rendered like `perf stat`, as JSON, or as the
//! attributes of one OTLP span.

pub mod resplit;

use std::{collections::BTreeMap, time::Duration};

use crate::{
    attribute::{EnergyByClass, IdleOrigin, IdlePower, idle_summary},
    carbon::CarbonReport,
    units::Joules,
};
use resplit::Resplit;

/// Which processes belong to the measured command.
pub trait Membership {
    /// Whether `pid` is one of the command's processes.
    fn contains(&self, pid: u32) -> bool;
}

/// One process of the command, summed over the run.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct MeasuredProcess {
    /// Process id.
    pub pid: u32,
    /// Name.
    pub comm: String,
    /// On-CPU time, seconds.
    pub cpu_time_s: f64,
    /// Energy attributed.
    pub energy_j: Joules,
    /// GPU energy attributed.
    pub gpu_energy_j: Joules,
    /// CUDA kernel launches.
    pub gpu_launches: u64,
    /// Seconds blocked in CUDA synchronisation.
    pub gpu_sync_s: f64,
}

/// Energy by domain, as in the report.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct EnergyJ {
    /// cpu + dram + gpu.
    pub total: Joules,
    /// CPU packages.
    pub cpu: Joules,
    /// DRAM.
    pub dram: Joules,
    /// GPUs.
    pub gpu: Joules,
    /// Idle (host only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<Joules>,
}

/// Which sources measured.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Sources {
    /// CPU/DRAM source.
    pub cpu: String,
    /// GPU source or `none`.
    pub gpu: String,
}

/// The `measure --json` report (a user contract: fields may be added, never renamed).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct MeasureReport {
    /// The command as given.
    pub command: Vec<String>,
    /// Its exit code (128 + signal when killed).
    pub exit_code: i32,
    /// From start to exit, seconds.
    pub duration_s: f64,
    /// On-CPU time of the whole tree, seconds.
    pub cpu_time_s: f64,
    /// Energy attributed to the tree.
    pub energy_j: EnergyJ,
    /// Operational carbon of that energy, grams.
    pub carbon_g: f64,
    /// Embodied carbon share of the tree, grams (0 unless configured).
    pub embodied_g: f64,
    /// Energy-weighted average intensity, gCO2e/kWh.
    pub intensity_g_per_kwh: f64,
    /// Where the intensity came from.
    pub intensity_source: String,
    /// PUE applied.
    pub pue: f64,
    /// Sources.
    pub sources: Sources,
    /// Whether any figure is estimated.
    pub estimated: bool,
    /// What the whole host spent in the same window, idle included.
    pub host_energy_j: EnergyJ,
    /// The window the host figures cover, seconds.
    pub window_s: f64,
    /// Idle energy policy.
    pub idle_policy: String,
    /// The idle power every interval was re-split with: each domain's figure at the
    /// end of the run, with its origin and band.
    pub idle_power: Vec<IdlePower>,
    /// The least trustworthy of their origins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_origin: Option<IdleOrigin>,
    /// Whether any of them is uncertain (then so are the energies).
    pub idle_uncertain: bool,
    /// Per process of the tree, most energy first.
    pub processes: Vec<MeasuredProcess>,
}

/// Sums interval reports into a measurement.
#[derive(Debug, Default)]
pub struct Accumulator {
    report: MeasureReport,
    processes: BTreeMap<u32, MeasuredProcess>,
    tree_j: EnergyByClass,
    host_j: EnergyByClass,
    host_idle_j: Joules,
    grams_for_intensity: f64,
    resplit: Resplit,
}

impl Accumulator {
    /// Adds one interval; only `tree` members count towards the command.
    pub fn add(&mut self, r: &CarbonReport, tree: &impl Membership) {
        self.report.window_s += r.duration_s;
        self.host_j.merge(&EnergyByClass {
            cpu_j: r.power.cpu_j,
            dram_j: r.power.dram_j,
            gpu_j: r.power.gpu_j,
            idle_j: Joules::ZERO,
        });
        self.host_idle_j += r.idle.energy_j;
        self.resplit
            .add(r, r.processes.iter().filter(|p| tree.contains(p.pid)));
        for p in r.processes.iter().filter(|p| tree.contains(p.pid)) {
            let m = self
                .processes
                .entry(p.pid)
                .or_insert_with(|| MeasuredProcess {
                    pid: p.pid,
                    ..Default::default()
                });
            if !p.comm.is_empty() {
                m.comm = p.comm.clone();
            }
            m.cpu_time_s += p.cpu_time_s;
            m.energy_j += p.energy_j;
            m.gpu_energy_j += p.joules.gpu_j;
            m.gpu_launches += p.gpu_activity.launches;
            m.gpu_sync_s += p.gpu_activity.sync_ns as f64 / 1e9;
            self.tree_j.merge(&p.joules);
            let grams = r.carbon.process(p);
            self.report.carbon_g += grams.carbon_g;
            self.report.embodied_g += grams.embodied_g;
            self.grams_for_intensity += p.energy_j.get() * r.carbon.intensity.g_per_kwh;
        }
        self.report.pue = r.carbon.pue;
        self.report.intensity_source = r.carbon.intensity.source.clone();
        if self.report.intensity_g_per_kwh == 0.0 {
            self.report.intensity_g_per_kwh = r.carbon.intensity.g_per_kwh;
        }
        self.report.idle_policy = format!("{:?}", r.idle_policy).to_lowercase();
        self.report.sources = Sources {
            cpu: r.power.sources.cpu.to_string(),
            gpu: r.power.sources.gpu.to_string(),
        };
        self.report.estimated |= r.power.estimated;
    }

    /// The finished report, every interval re-split with `idle` (each domain's idle
    /// power at the end of the run; see [`resplit`]).
    pub fn finish(
        mut self,
        command: Vec<String>,
        exit_code: i32,
        duration: Duration,
        idle: Vec<IdlePower>,
    ) -> MeasureReport {
        self.apply_idle(&idle);
        let energy = |j: &EnergyByClass, idle: Option<Joules>| EnergyJ {
            total: j.total(),
            cpu: j.cpu_j,
            dram: j.dram_j,
            gpu: j.gpu_j,
            idle,
        };
        let r = &mut self.report;
        r.command = command;
        r.exit_code = exit_code;
        r.duration_s = duration.as_secs_f64();
        r.energy_j = energy(&self.tree_j, None);
        r.host_energy_j = energy(&self.host_j, Some(self.host_idle_j));
        if self.tree_j.total() > Joules::ZERO {
            r.intensity_g_per_kwh = self.grams_for_intensity / self.tree_j.total().get();
        }
        (r.idle_origin, r.idle_uncertain) = idle_summary(&idle);
        r.idle_power = idle;
        let mut processes: Vec<MeasuredProcess> = self.processes.into_values().collect();
        processes.sort_by(|a, b| b.energy_j.total_cmp(&a.energy_j).then(a.pid.cmp(&b.pid)));
        r.cpu_time_s = processes.iter().map(|p| p.cpu_time_s).sum();
        r.processes = processes;
        self.report
    }

    /// Moves what the final idle power says is idle out of the processes (or back).
    fn apply_idle(&mut self, idle: &[IdlePower]) {
        let (changes, host) = self.resplit.apply(idle);
        for (pid, c) in changes {
            let Some(m) = self.processes.get_mut(&pid) else {
                continue;
            };
            m.energy_j = (m.energy_j - c.moved.total()).non_negative();
            m.gpu_energy_j = (m.gpu_energy_j - c.moved.gpu_j).non_negative();
            let t = &mut self.tree_j;
            t.cpu_j = (t.cpu_j - c.moved.cpu_j).non_negative();
            t.dram_j = (t.dram_j - c.moved.dram_j).non_negative();
            t.gpu_j = (t.gpu_j - c.moved.gpu_j).non_negative();
            self.report.carbon_g = (self.report.carbon_g - c.grams).max(0.0);
            self.grams_for_intensity -= c.joules_intensity;
        }
        let host_total = self.host_j.total();
        self.host_idle_j = (self.host_idle_j + host).non_negative().min(host_total);
    }
}

/// Renders the report like `perf stat`.
pub fn render(r: &MeasureReport) -> String {
    let kind = if r.estimated { "estimated" } else { "measured" };
    let mut s = format!("\n Energy stats for '{}':\n\n", r.command.join(" "));
    s.push_str(&format!("{:>16.3} s    duration\n", r.duration_s));
    s.push_str(&format!(
        "{:>16.3} s    CPU time ({} process{})\n",
        r.cpu_time_s,
        r.processes.len(),
        if r.processes.len() == 1 { "" } else { "es" }
    ));
    s.push_str(&format!(
        "{:>16.3} J    energy: cpu {:.3} J, dram {:.3} J, gpu {:.3} J ({kind}: cpu {}, gpu {})\n",
        r.energy_j.total,
        r.energy_j.cpu,
        r.energy_j.dram,
        r.energy_j.gpu,
        r.sources.cpu,
        r.sources.gpu
    ));
    let launches: u64 = r.processes.iter().map(|p| p.gpu_launches).sum();
    if launches > 0 {
        let sync_s: f64 = r.processes.iter().map(|p| p.gpu_sync_s).sum();
        s.push_str(&format!(
            "{launches:>16}      CUDA kernel launches, {sync_s:.3} s blocked in synchronisation\n"
        ));
    }
    s.push_str(&format!(
        "{:>16.6} g    CO2e at {:.1} g/kWh ({}), PUE {}\n",
        r.carbon_g, r.intensity_g_per_kwh, r.intensity_source, r.pue
    ));
    if r.embodied_g > 0.0 {
        s.push_str(&format!(
            "{:>16.6} g    CO2e embodied (SCI M)\n",
            r.embodied_g
        ));
    }
    if !r.idle_power.is_empty() {
        s.push_str(&format!(
            "{:>16}      idle power: {} (applied to the whole run)\n",
            "",
            super::idle_line(&r.idle_power)
        ));
    }
    s.push_str(&format!(
        "{:>16.3} J    host in the same {:.3} s (idle {:.3} J, idle policy {})\n\n",
        r.host_energy_j.total,
        r.window_s,
        r.host_energy_j.idle.unwrap_or_default(),
        r.idle_policy
    ));
    s
}

/// The measured command's span attributes: the request span attributes plus
/// the command and its exit code.
pub fn span_attributes(r: &MeasureReport) -> Vec<opentelemetry_proto::tonic::common::v1::KeyValue> {
    use crate::receive::spans::{kv, names};
    use opentelemetry_proto::tonic::common::v1::any_value::Value::{
        BoolValue, DoubleValue, IntValue, StringValue,
    };
    let source = if r.sources.gpu == "none" {
        r.sources.cpu.clone()
    } else {
        format!("{}+{}", r.sources.cpu, r.sources.gpu)
    };
    vec![
        kv(names::ENERGY_JOULES, DoubleValue(r.energy_j.total.get())),
        kv(names::ENERGY_CPU, DoubleValue(r.energy_j.cpu.get())),
        kv(names::ENERGY_DRAM, DoubleValue(r.energy_j.dram.get())),
        kv(names::ENERGY_GPU, DoubleValue(r.energy_j.gpu.get())),
        kv(names::ENERGY_ESTIMATED, BoolValue(r.estimated)),
        kv(names::ENERGY_SOURCE, StringValue(source)),
        kv(
            names::ENERGY_IDLE_ORIGIN,
            StringValue(r.idle_origin.map_or("none", IdleOrigin::name).into()),
        ),
        kv(names::ENERGY_IDLE_UNCERTAIN, BoolValue(r.idle_uncertain)),
        kv(names::CARBON_G, DoubleValue(r.carbon_g)),
        kv(names::CARBON_INTENSITY, DoubleValue(r.intensity_g_per_kwh)),
        kv(names::CARBON_EMBODIED, DoubleValue(r.embodied_g)),
        kv(
            names::CARBON_INTENSITY_SOURCE,
            StringValue(r.intensity_source.clone()),
        ),
        kv("process.command_line", StringValue(r.command.join(" "))),
        kv("process.exit.code", IntValue(i64::from(r.exit_code))),
        kv("process.cpu.time", DoubleValue(r.cpu_time_s)),
        kv(
            "energy.host.joules",
            DoubleValue(r.host_energy_j.total.get()),
        ),
        kv(
            "energy.host.idle.joules",
            DoubleValue(r.host_energy_j.idle.unwrap_or_default().get()),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{attribute::ProcessReport, carbon::CarbonSummary};

    struct Only(u32);

    impl Membership for Only {
        fn contains(&self, pid: u32) -> bool {
            pid == self.0
        }
    }

    #[test]
    fn accumulates_tree_members_and_host() {
        let tree = Only(1);
        let mut energy = crate::attribute::IntervalReport {
            duration_s: 1.0,
            processes: vec![
                ProcessReport {
                    pid: 1,
                    comm: "cmd".into(),
                    cpu_time_s: 0.5,
                    energy_j: Joules(6.0),
                    joules: EnergyByClass {
                        cpu_j: Joules(5.0),
                        dram_j: Joules(1.0),
                        gpu_j: Joules(0.0),
                        idle_j: Joules(0.0),
                    },
                    ..Default::default()
                },
                ProcessReport {
                    pid: 2,
                    energy_j: Joules(100.0),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        energy.power.cpu_j = Joules(20.0);
        energy.power.dram_j = Joules(4.0);
        energy.idle.energy_j = Joules(10.0);
        let mut carbon = CarbonSummary {
            pue: 1.0,
            ..Default::default()
        };
        carbon.intensity.g_per_kwh = 400.0;
        let r = CarbonReport { energy, carbon };
        let mut acc = Accumulator::default();
        acc.add(&r, &tree);
        acc.add(&r, &tree);
        let m = acc.finish(vec!["cmd".into()], 0, Duration::from_secs(2), Vec::new());
        assert_eq!(m.energy_j.total, Joules(12.0));
        assert_eq!(
            m.energy_j.cpu + m.energy_j.dram + m.energy_j.gpu,
            m.energy_j.total
        );
        assert_eq!(m.host_energy_j.total, Joules(48.0));
        assert_eq!(m.host_energy_j.idle, Some(Joules(20.0)));
        assert_eq!(m.cpu_time_s, 1.0);
        assert_eq!(m.processes.len(), 1);
        assert_eq!(m.intensity_g_per_kwh, 400.0);
        // 12 J at 400 g/kWh.
        assert!(
            (m.carbon_g - 12.0 / 3.6e6 * 400.0).abs() < 1e-15,
            "{}",
            m.carbon_g
        );
        assert!(render(&m).contains("Energy stats for 'cmd'"));
    }

    #[test]
    fn the_whole_run_is_resplit_with_the_final_idle_power() {
        use crate::{
            attribute::{IdleExposure, IdleOrigin, IdlePower},
            power::Domain,
            units::Watts,
        };
        // One 1 s interval at 40 W attributed with a busy power (30 W) as idle: the
        // command (all the CPU time) got 10 J, the host's idle 30 J.
        let mut early = IdlePower::new(Domain::Package(0), Watts(30.0), IdleOrigin::Lowest);
        early.uncertain = true;
        early.shared = true;
        early.charged_j = Joules(30.0);
        let mut energy = crate::attribute::IntervalReport {
            duration_s: 1.0,
            idle_power: vec![early],
            processes: vec![ProcessReport {
                pid: 1,
                comm: "cmd".into(),
                cpu_time_s: 2.0,
                energy_j: Joules(10.0),
                joules: EnergyByClass {
                    cpu_j: Joules(10.0),
                    ..Default::default()
                },
                idle_exposure: vec![IdleExposure {
                    domain: Domain::Package(0),
                    seconds: 1.0,
                    idle_j: Joules(30.0),
                    dynamic_j: Joules(10.0),
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        energy.power.cpu_j = Joules(40.0);
        energy.idle.energy_j = Joules(30.0);
        let mut carbon = CarbonSummary {
            pue: 1.0,
            ..Default::default()
        };
        carbon.intensity.g_per_kwh = 360.0;
        let mut acc = Accumulator::default();
        acc.add(&CarbonReport { energy, carbon }, &Only(1));
        let mut fitted = IdlePower::new(Domain::Package(0), Watts(10.0), IdleOrigin::Fitted);
        fitted.uncertainty_w = Some(Watts(0.2));
        let m = acc.finish(vec!["cmd".into()], 0, Duration::from_secs(1), vec![fitted]);
        assert!((m.energy_j.total.get() - 30.0).abs() < 1e-9, "{m:?}");
        assert!((m.processes[0].energy_j.get() - 30.0).abs() < 1e-9);
        assert_eq!(m.host_energy_j.idle, Some(Joules(10.0)));
        assert!(
            (m.carbon_g - 30.0 / 3.6e6 * 360.0).abs() < 1e-15,
            "{}",
            m.carbon_g
        );
        assert!((m.intensity_g_per_kwh - 360.0).abs() < 1e-9);
        assert_eq!(m.idle_origin, Some(IdleOrigin::Fitted));
        assert!(!m.idle_uncertain);
        assert!(
            render(&m).contains("package-0 10.00 ± 0.20 W fitted"),
            "{}",
            render(&m)
        );
    }
}
