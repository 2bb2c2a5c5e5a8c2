//! The stages after the probe, wired once for `run`, `top` and `measure`: identities,
//! power sources, attribution and carbon, each interval turned into one report.

use std::collections::HashMap;

use anyhow::Context as _;

use super::sources::SourceArgs;
use crate::{
    attribute::{Attributor, GpuTimeline, IntervalReport, SourceNames, ThreadTimeline},
    carbon::Carbon,
    clock::{WallClock, monotonic_ns},
    identity::Identity,
    power::{PowerSources, SampleContext, replay::Recorder, topology::Topology},
    probe::{Probe, possible_cpus},
};

/// Everything between the probe and the exporters.
pub struct Pipeline {
    identity: Identity,
    power: PowerSources,
    attributor: Attributor,
    carbon: Carbon,
    recorder: Option<Recorder<std::fs::File>>,
    cpus: usize,
    clock: WallClock,
    /// Reads of the probe since the interval began (sub-interval sampling).
    pending: Vec<crate::probe::SchedInterval>,
}

impl Pipeline {
    /// Chooses the power sources and carbon provider, and starts the first interval of
    /// the probe and the meters at the same moment.
    pub fn new(
        args: &SourceArgs,
        probe: &mut Probe,
        record_power: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let mut power =
            crate::power::select(&args.power_options()).context("choosing the power source")?;
        for s in &power.statuses {
            log::info!(
                "power source {}: {} ({})",
                s.name,
                if s.selected {
                    "in use"
                } else if s.usable {
                    "available"
                } else {
                    "unavailable"
                },
                s.detail
            );
        }
        let topology = Topology::host();
        let carbon_opts = args.carbon_options().map_err(anyhow::Error::msg)?;
        let carbon = Carbon::new(&carbon_opts, topology.cpu_count()).map_err(anyhow::Error::msg)?;
        let attributor = Attributor::new(args.attribution(), topology, power.idle_power());
        // Baseline: the probe's first interval and the meters both start here.
        probe.read_interval()?;
        let now = monotonic_ns();
        power.sample(&SampleContext {
            now_ns: now,
            ..Default::default()
        });
        let recorder = match record_power {
            Some(path) => {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("creating {}", path.display()))?;
                let mut r = Recorder::new(file, power.estimated())?;
                let mut domains = power.cpu.domains();
                domains.extend(power.gpu.iter().flat_map(|g| g.domains()));
                r.start(now, &domains)?;
                Some(r)
            }
            None => None,
        };
        Ok(Self {
            identity: Identity::for_host(),
            power,
            attributor,
            carbon,
            recorder,
            cpus: possible_cpus() as usize,
            clock: WallClock::now(),
            pending: Vec::new(),
        })
    }

    /// The wall clock the reports' times convert with.
    pub fn clock(&self) -> WallClock {
        self.clock
    }

    /// Whether any figure is estimated, and the sources' names.
    pub fn sources(&self) -> (bool, SourceNames) {
        let (cpu, gpu) = self.power.names();
        (self.power.estimated(), SourceNames { cpu, gpu })
    }

    /// Closes an interval: probe read, power sample, attribution, carbon.
    pub fn next(&mut self, probe: &mut Probe) -> anyhow::Result<IntervalReport> {
        self.next_with_lifecycle(probe).map(|(report, _)| report)
    }

    /// [`Pipeline::next`], also handing out the interval's exits, execs and forks (for
    /// callers that follow process trees).
    pub fn next_with_lifecycle(
        &mut self,
        probe: &mut Probe,
    ) -> anyhow::Result<(IntervalReport, Vec<crate::probe::Lifecycle>)> {
        self.pending.push(probe.read_interval()?);
        probe.flush_log();
        let parts = std::mem::take(&mut self.pending);
        let (timeline, mut gpu_timeline) = thread_timelines(&parts);
        let sched = crate::probe::SchedInterval::merge(parts);
        let ctx = SampleContext {
            now_ns: sched.end_ns,
            elapsed_ns: sched.duration_ns(),
            cpu_busy_ns: sched.busy_ns_per_cpu(self.cpus),
        };
        let reading = self.power.sample(&ctx);
        if let Some(r) = &mut self.recorder {
            r.record(sched.end_ns, &reading)
                .context("recording power")?;
        }
        let (_, sources) = self.sources();
        let mut report = self
            .attributor
            .attribute(&sched, &reading, sources, &mut self.identity);
        for p in &mut report.processes {
            if let Some(t) = timeline.get(&p.pid) {
                p.thread_timeline = t.clone();
            }
            if let Some(t) = gpu_timeline.remove(&p.pid) {
                p.gpu_timeline = t;
            }
        }
        self.carbon
            .annotate(&mut report, self.clock.wall(sched.end_ns));
        Ok((report, sched.lifecycle))
    }

    /// Reads the probe within an interval, so per-request splits can see when each
    /// thread ran (the interval is still attributed as a whole).
    pub fn sub_sample(&mut self, probe: &mut Probe) -> anyhow::Result<()> {
        self.pending.push(probe.read_interval()?);
        Ok(())
    }
}

/// Per process, per thread: its on-CPU ns and its GPU-driver activity in each of the
/// reads (start, end, amount).
fn thread_timelines(
    parts: &[crate::probe::SchedInterval],
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
