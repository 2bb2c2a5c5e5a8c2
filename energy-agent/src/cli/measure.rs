//! `energy-agent measure -- CMD ARGS…`: runs CMD (its whole process tree), leaves its
//! stdin/stdout/stderr alone, exits with its exit code, and reports — like `perf stat` —
//! its duration, CPU time, joules per domain, grams of CO2e and what the whole host
//! spent in the same window: the command's "energy to solution".

use std::{
    collections::{BTreeMap, HashSet},
    io::Write,
    path::PathBuf,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;

use super::{exporters::OtlpArgs, pipeline::Pipeline, sources::SourceArgs};
use crate::{
    attribute::{IntervalReport, Joules},
    export::otlp::{FinishedSpan, export_span},
    probe::{Lifecycle, Probe, ProbeConfig},
};

/// Options of `energy-agent measure`.
#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// Print the report as one JSON object (the schema in DESIGN.md).
    #[arg(long)]
    pub json: bool,
    /// Write the report to FILE instead of stderr.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Sampling interval while the command runs.
    #[arg(long, default_value = "250ms", value_parser = super::parse_duration)]
    pub interval: Duration,
    /// Source, carbon and attribution flags.
    #[command(flatten)]
    pub sources: SourceArgs,
    /// With an endpoint, one span for the command goes there too.
    #[command(flatten)]
    pub otlp: OtlpArgs,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// The command's processes, grown from fork records.
#[derive(Debug, Default)]
pub struct ProcessTree {
    members: HashSet<u32>,
}

impl ProcessTree {
    /// A tree rooted at `root`.
    pub fn new(root: u32) -> Self {
        Self {
            members: HashSet::from([root]),
        }
    }

    /// Adds the children of members, in the order the kernel reported the forks.
    pub fn grow(&mut self, lifecycle: &[Lifecycle]) {
        for event in lifecycle {
            if let Lifecycle::Fork {
                parent_tgid, child, ..
            } = event
                && self.members.contains(parent_tgid)
            {
                self.members.insert(*child);
            }
        }
    }

    /// Whether `pid` belongs to the command.
    pub fn contains(&self, pid: u32) -> bool {
        self.members.contains(&pid)
    }
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
    /// Energy attributed, joules.
    pub energy_j: f64,
    /// GPU energy attributed, joules.
    pub gpu_energy_j: f64,
    /// CUDA kernel launches.
    pub gpu_launches: u64,
    /// Seconds blocked in CUDA synchronisation.
    pub gpu_sync_s: f64,
}

/// Energy by domain, as in the report.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct EnergyJ {
    /// cpu + dram + gpu.
    pub total: f64,
    /// CPU packages.
    pub cpu: f64,
    /// DRAM.
    pub dram: f64,
    /// GPUs.
    pub gpu: f64,
    /// Idle (host only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<f64>,
}

/// Which sources measured.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Sources {
    /// CPU/DRAM source.
    pub cpu: String,
    /// GPU source or `none`.
    pub gpu: String,
}

/// The `measure --json` report (DESIGN.md; more fields may be added).
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
    /// Per process of the tree, most energy first.
    pub processes: Vec<MeasuredProcess>,
}

/// Sums interval reports into a measurement.
#[derive(Debug, Default)]
pub struct Accumulator {
    report: MeasureReport,
    processes: BTreeMap<u32, MeasuredProcess>,
    tree_j: Joules,
    host_j: Joules,
    host_idle_j: f64,
    grams_for_intensity: f64,
}

impl Accumulator {
    /// Adds one interval; only `tree` members count towards the command.
    pub fn add(&mut self, r: &IntervalReport, tree: &ProcessTree) {
        self.report.window_s += r.duration_s;
        self.host_j.merge(&Joules {
            cpu_j: r.power.cpu_j,
            dram_j: r.power.dram_j,
            gpu_j: r.power.gpu_j,
            idle_j: 0.0,
        });
        self.host_idle_j += r.idle.energy_j;
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
            self.report.carbon_g += p.carbon_g;
            self.report.embodied_g += p.embodied_g;
            self.grams_for_intensity += p.energy_j * r.carbon.intensity.g_per_kwh;
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

    /// The finished report.
    pub fn finish(
        mut self,
        command: Vec<String>,
        exit_code: i32,
        duration: Duration,
    ) -> MeasureReport {
        let energy = |j: &Joules, idle: Option<f64>| EnergyJ {
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
        if self.tree_j.total() > 0.0 {
            r.intensity_g_per_kwh = self.grams_for_intensity / self.tree_j.total();
        }
        let mut processes: Vec<MeasuredProcess> = self.processes.into_values().collect();
        processes.sort_by(|a, b| b.energy_j.total_cmp(&a.energy_j).then(a.pid.cmp(&b.pid)));
        r.cpu_time_s = processes.iter().map(|p| p.cpu_time_s).sum();
        r.processes = processes;
        self.report
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
    s.push_str(&format!(
        "{:>16.3} J    host in the same {:.3} s (idle {:.3} J, idle policy {})\n\n",
        r.host_energy_j.total,
        r.window_s,
        r.host_energy_j.idle.unwrap_or(0.0),
        r.idle_policy
    ));
    s
}

static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATE.store(true, Ordering::Relaxed);
}

/// Runs the command and reports; returns its exit code.
pub fn measure(args: MeasureArgs) -> anyhow::Result<i32> {
    let mut probe = Probe::load(&ProbeConfig {
        libcuda: args.sources.libcuda.clone(),
        ..ProbeConfig::default()
    })?;
    let mut pipeline = Pipeline::new(&args.sources, &mut probe, None)?;
    let otlp = args.otlp.forward_config(1)?;
    let started = Instant::now();
    let started_wall = std::time::SystemTime::now();
    let mut child = Command::new(&args.command[0])
        .args(&args.command[1..])
        .spawn()
        .with_context(|| format!("starting {:?}", args.command[0]))?;
    // Like `time` and `perf stat`: Ctrl-C is for the command; the report still comes.
    // SIGTERM to the agent is passed on to the command.
    // SAFETY: installing signal dispositions; the handler only stores an atomic.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
        libc::signal(
            libc::SIGTERM,
            on_terminate as *const () as libc::sighandler_t,
        );
    }
    let root = child.id();
    let mut tree = ProcessTree::new(root);
    let mut acc = Accumulator::default();
    let mut next_read = Instant::now() + args.interval;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for the command")? {
            break status;
        }
        if TERMINATE.swap(false, Ordering::Relaxed) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(root as i32, libc::SIGTERM) };
        }
        probe.drain_events();
        if Instant::now() >= next_read {
            add_interval(&mut pipeline, &mut probe, &mut tree, &mut acc)?;
            next_read += args.interval;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let duration = started.elapsed();
    // The command's last switch (and its exit records) can follow the wake-up of its
    // parent: read until the root's exit is in, briefly.
    let deadline = Instant::now() + Duration::from_millis(500);
    std::thread::sleep(Duration::from_millis(20));
    loop {
        let exited = add_interval(&mut pipeline, &mut probe, &mut tree, &mut acc)?;
        if exited.contains(&root) || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let code = exit_code(status);
    let report = acc.finish(args.command.clone(), code, duration);
    if let Some(config) = &otlp {
        let span = FinishedSpan {
            name: format!("measure {}", args.command.join(" ")),
            start: started_wall,
            end: started_wall + duration,
            attributes: span_attributes(&report),
        };
        if let Err(e) = export_span(config, span) {
            eprintln!("energy-agent: {e:#}");
        }
    }
    let text = if args.json {
        format!("{}\n", serde_json::to_string(&report)?)
    } else {
        render(&report)
    };
    match &args.output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => {
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
    }
    Ok(code)
}

/// The measured command's span attributes: the request attributes of DESIGN.md plus
/// the command and its exit code.
pub fn span_attributes(r: &MeasureReport) -> Vec<opentelemetry::KeyValue> {
    use crate::receive::spans::names;
    use opentelemetry::KeyValue;
    let source = if r.sources.gpu == "none" {
        r.sources.cpu.clone()
    } else {
        format!("{}+{}", r.sources.cpu, r.sources.gpu)
    };
    vec![
        KeyValue::new(names::ENERGY_JOULES, r.energy_j.total),
        KeyValue::new(names::ENERGY_CPU, r.energy_j.cpu),
        KeyValue::new(names::ENERGY_DRAM, r.energy_j.dram),
        KeyValue::new(names::ENERGY_GPU, r.energy_j.gpu),
        KeyValue::new(names::ENERGY_ESTIMATED, r.estimated),
        KeyValue::new(names::ENERGY_SOURCE, source),
        KeyValue::new(names::CARBON_G, r.carbon_g),
        KeyValue::new(names::CARBON_INTENSITY, r.intensity_g_per_kwh),
        KeyValue::new(names::CARBON_EMBODIED, r.embodied_g),
        KeyValue::new(names::CARBON_INTENSITY_SOURCE, r.intensity_source.clone()),
        KeyValue::new("process.command_line", r.command.join(" ")),
        KeyValue::new("process.exit.code", i64::from(r.exit_code)),
        KeyValue::new("process.cpu.time", r.cpu_time_s),
        KeyValue::new("energy.host.joules", r.host_energy_j.total),
        KeyValue::new(
            "energy.host.idle.joules",
            r.host_energy_j.idle.unwrap_or(0.0),
        ),
    ]
}

/// One interval into the accumulator; returns the processes that exited in it.
fn add_interval(
    pipeline: &mut Pipeline,
    probe: &mut Probe,
    tree: &mut ProcessTree,
    acc: &mut Accumulator,
) -> anyhow::Result<Vec<u32>> {
    let (report, lifecycle) = pipeline.next_with_lifecycle(probe)?;
    tree.grow(&lifecycle);
    acc.add(&report, tree);
    Ok(lifecycle
        .iter()
        .filter_map(|l| match l {
            Lifecycle::Exit {
                tgid,
                group_dead: true,
                ..
            } => Some(*tgid),
            _ => None,
        })
        .collect())
}

/// The shell convention: the exit code, or 128 + the signal that killed it.
fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribute::ProcessReport;

    #[test]
    fn the_tree_grows_from_members_only_and_in_order() {
        let mut t = ProcessTree::new(10);
        let fork = |parent_tgid, child| Lifecycle::Fork {
            parent_tgid,
            child,
            ts_ns: 0,
        };
        t.grow(&[fork(10, 11), fork(11, 12), fork(99, 100), fork(12, 13)]);
        assert!(t.contains(10) && t.contains(11) && t.contains(12) && t.contains(13));
        assert!(!t.contains(99) && !t.contains(100));
    }

    #[test]
    fn accumulates_tree_members_and_host() {
        let tree = ProcessTree::new(1);
        let mut r = IntervalReport {
            duration_s: 1.0,
            processes: vec![
                ProcessReport {
                    pid: 1,
                    comm: "cmd".into(),
                    cpu_time_s: 0.5,
                    energy_j: 6.0,
                    joules: Joules {
                        cpu_j: 5.0,
                        dram_j: 1.0,
                        gpu_j: 0.0,
                        idle_j: 0.0,
                    },
                    carbon_g: 0.001,
                    ..Default::default()
                },
                ProcessReport {
                    pid: 2,
                    energy_j: 100.0,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        r.power.cpu_j = 20.0;
        r.power.dram_j = 4.0;
        r.idle.energy_j = 10.0;
        r.carbon.intensity.g_per_kwh = 400.0;
        r.carbon.pue = 1.0;
        let mut acc = Accumulator::default();
        acc.add(&r, &tree);
        acc.add(&r, &tree);
        let m = acc.finish(vec!["cmd".into()], 0, Duration::from_secs(2));
        assert_eq!(m.energy_j.total, 12.0);
        assert_eq!(
            m.energy_j.cpu + m.energy_j.dram + m.energy_j.gpu,
            m.energy_j.total
        );
        assert_eq!(m.host_energy_j.total, 48.0);
        assert_eq!(m.host_energy_j.idle, Some(20.0));
        assert_eq!(m.cpu_time_s, 1.0);
        assert_eq!(m.processes.len(), 1);
        assert_eq!(m.intensity_g_per_kwh, 400.0);
        assert!(render(&m).contains("Energy stats for 'cmd'"));
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(9)), 137);
    }
}
