//! The interval stages, wired once for `run`, `top` and `measure`: probe read → power
//! sample → attribution (with identities) → carbon, each interval turned into one
//! [`CarbonReport`].

use std::{collections::HashMap, path::PathBuf};

use anyhow::Context as _;

use super::state::IdleStore;
use crate::{
    attribute::{
        AttributionConfig, Attributor, GpuTimeline, IntervalReport, SourceNames, ThreadTimeline,
        idle::{
            IdleModel,
            state::{Method, StoredIdle},
        },
    },
    carbon::{Carbon, CarbonOptions, CarbonReport},
    clock::{WallClock, monotonic_ns},
    identity::{
        Identity,
        k8s::{K8sConfig, Pods},
    },
    power::{
        PowerReading, PowerSource, PowerSources, SampleContext,
        estimate::{Estimate, HostFacts},
        packages::CpuPackages,
        replay::Recorder,
        select::PowerOptions,
    },
    probe::{Lifecycle, Probe, SchedInterval, possible_cpus},
    units::Nanos,
};

/// What the interval stages are built from.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// Where power figures come from.
    pub power: PowerOptions,
    /// Where carbon intensity comes from, PUE and embodied carbon.
    pub carbon: CarbonOptions,
    /// How energy is attributed.
    pub attribution: AttributionConfig,
    /// Also write every interval's energy per domain here (`--record-power`).
    pub record_power: Option<PathBuf>,
    /// Where learned idle power is kept between runs (None: not kept).
    pub state_dir: Option<PathBuf>,
    /// Where pod metadata comes from (None: containers keep only what their cgroup
    /// path says).
    pub pods: Option<K8sConfig>,
}

/// Everything between the probe and the exporters.
pub struct Pipeline {
    identity: Identity,
    power: PowerSources,
    attributor: Attributor,
    idle_store: IdleStore,
    carbon: Carbon,
    recorder: Option<Recorder<std::fs::File>>,
    cpus: usize,
    clock: WallClock,
    /// Reads of the probe since the interval began (sub-interval sampling).
    pending: Vec<SchedInterval>,
}

impl Pipeline {
    /// Chooses the power sources and carbon provider, and starts the first interval of
    /// the probe and the meters at the same moment.
    pub fn new(config: &PipelineConfig, probe: &mut Probe) -> anyhow::Result<Self> {
        let mut power = crate::power::select(&config.power).context("choosing the power source")?;
        log_sources(&power);
        let packages = CpuPackages::host();
        let carbon =
            Carbon::new(&config.carbon, packages.cpu_count()).map_err(anyhow::Error::msg)?;
        // The estimate model of this host: a meter's fallback idle power before any
        // fit or calibration (flagged uncertain).
        let prior = if power.estimated() {
            Vec::new()
        } else {
            Estimate::new(&HostFacts::host(), packages.clone()).idle_power()
        };
        let idle_store = IdleStore::open(config.state_dir.as_deref(), &config.power, &power);
        let attributor = Attributor::new(config.attribution.clone(), packages, power.idle_power())
            .with_prior(prior)
            .with_calibrations(idle_store.calibrations());
        // Baseline: the probe's first interval and the meters both start here.
        probe.read_interval()?;
        let now = monotonic_ns();
        power.sample(&SampleContext {
            now_ns: now,
            ..Default::default()
        });
        let recorder = match &config.record_power {
            Some(path) => Some(start_recording(path, &power, now)?),
            None => None,
        };
        let mut identity = Identity::for_host();
        if let Some(k8s) = &config.pods {
            log::info!("pod metadata from {}", k8s.url());
            identity = identity.with_pods(Pods::start(k8s.clone()).context("pod metadata")?);
        }
        Ok(Self {
            identity,
            power,
            attributor,
            idle_store,
            carbon,
            recorder,
            cpus: possible_cpus() as usize,
            clock: WallClock::now(),
            pending: Vec::new(),
        })
    }

    /// The wall clock the reports' times convert with: a handle on the pipeline's
    /// own, which [`Pipeline::next`] re-anchors every interval.
    pub fn clock(&self) -> WallClock {
        self.clock.clone()
    }

    /// Whether any figure is estimated, and the sources' names.
    pub fn sources(&self) -> (bool, SourceNames) {
        let (cpu, gpu) = self.power.names();
        (self.power.estimated(), SourceNames { cpu, gpu })
    }

    /// What the attribution stage knows of each domain's idle power.
    pub fn idle(&self) -> &IdleModel {
        self.attributor.idle()
    }

    /// The state dir in use (for reports).
    pub fn idle_store(&self) -> &IdleStore {
        &self.idle_store
    }

    /// Keeps this run's good fits in the state file, as made by `method`; returns the
    /// entries the file took.
    pub fn store_idle(&self, method: Method) -> Vec<StoredIdle> {
        self.idle_store
            .save(&self.attributor.idle().learned(), method)
    }

    /// Closes an interval: probe read, power sample, attribution, carbon.
    pub fn next(&mut self, probe: &mut Probe) -> anyhow::Result<CarbonReport> {
        self.next_with_lifecycle(probe).map(|(report, _)| report)
    }

    /// [`Pipeline::next`], also handing out the interval's exits, execs and forks (for
    /// callers that follow process trees).
    pub fn next_with_lifecycle(
        &mut self,
        probe: &mut Probe,
    ) -> anyhow::Result<(CarbonReport, Vec<Lifecycle>)> {
        self.pending.push(probe.read_interval()?);
        probe.flush_log();
        if let Some(step) = self.clock.reanchor() {
            log::warn!(
                "the wall clock moved {:+.3} s against the monotonic clock (a step, suspend or VM pause); wall times follow it from this interval on",
                step as f64 / 1e9
            );
        }
        let parts = std::mem::take(&mut self.pending);
        let (timeline, gpu_timeline) = thread_timelines(&parts);
        let sched = SchedInterval::merge(parts);
        let reading = self.sample_power(&sched)?;
        let (_, sources) = self.sources();
        let mut energy = self
            .attributor
            .attribute(&sched, &reading, sources, &mut self.identity);
        attach_timelines(&mut energy, timeline, gpu_timeline);
        let report = self.carbon.annotate(energy, self.clock.wall(sched.end_ns));
        Ok((report, sched.lifecycle))
    }

    /// The meters' energy over the interval the probe just closed (recorded when asked).
    fn sample_power(&mut self, sched: &SchedInterval) -> anyhow::Result<PowerReading> {
        let ctx = SampleContext {
            now_ns: sched.end_ns,
            elapsed: Nanos(sched.duration_ns()),
            cpu_busy: (sched.busy_ns_per_cpu(self.cpus).into_iter())
                .map(Nanos)
                .collect(),
        };
        let reading = self.power.sample(&ctx);
        if let Some(r) = &mut self.recorder {
            r.record(sched.end_ns, &reading)
                .context("recording power")?;
        }
        Ok(reading)
    }

    /// Reads the probe within an interval, so per-request splits can see when each
    /// thread ran (the interval is still attributed as a whole).
    pub fn sub_sample(&mut self, probe: &mut Probe) -> anyhow::Result<()> {
        self.pending.push(probe.read_interval()?);
        Ok(())
    }
}

/// Logs which power sources are in use, available or unavailable, and why.
fn log_sources(power: &PowerSources) {
    for s in &power.statuses {
        let state = if s.selected {
            "in use"
        } else if s.usable {
            "available"
        } else {
            "unavailable"
        };
        log::info!("power source {}: {state} ({})", s.name, s.detail);
    }
}

/// Opens the `--record-power` file and writes its header.
fn start_recording(
    path: &std::path::Path,
    power: &PowerSources,
    now_ns: u64,
) -> anyhow::Result<Recorder<std::fs::File>> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut r = Recorder::new(file, power.estimated())?;
    let mut domains = power.cpu.domains();
    domains.extend(power.gpu.iter().flat_map(|g| g.domains()));
    r.start(now_ns, &domains)?;
    Ok(r)
}

/// Gives each process of the report its threads' timelines within the interval.
fn attach_timelines(
    report: &mut IntervalReport,
    mut cpu: HashMap<u32, ThreadTimeline>,
    mut gpu: HashMap<u32, GpuTimeline>,
) {
    for p in &mut report.processes {
        if let Some(t) = cpu.remove(&p.pid) {
            p.thread_timeline = t;
        }
        if let Some(t) = gpu.remove(&p.pid) {
            p.gpu_timeline = t;
        }
    }
}

/// Per process, per thread: its on-CPU ns and its GPU-driver activity in each of the
/// reads (start, end, amount).
fn thread_timelines(
    parts: &[SchedInterval],
) -> (HashMap<u32, ThreadTimeline>, HashMap<u32, GpuTimeline>) {
    let mut cpu: HashMap<u32, ThreadTimeline> = HashMap::new();
    let mut gpu: HashMap<u32, GpuTimeline> = HashMap::new();
    for part in parts {
        let mut sums: HashMap<(u32, u32), u64> = HashMap::new();
        for s in &part.slices {
            *sums.entry((s.tgid, s.tid)).or_default() += s.on_cpu_ns;
        }
        for ((tgid, tid), ns) in sums {
            cpu.entry(tgid).or_default().entry(tid).or_default().push((
                part.start_ns,
                part.end_ns,
                ns,
            ));
        }
        for t in &part.gpu {
            gpu.entry(t.tgid)
                .or_default()
                .entry(t.tid)
                .or_default()
                .push((part.start_ns, part.end_ns, t.calls));
        }
    }
    (cpu, gpu)
}
