//! replay:FILE — plays back recorded energy samples as if a meter produced them now,
//! for tests, demos, and users reproducing a problem (`run --record-power FILE` writes
//! this format).
//!
//! The file is CSV, one sample per line: `time_s,domain,kind,value[,range]`.
//! - `time_s`: seconds since the start of the recording (non-decreasing per domain);
//! - `domain`: `package-N`, `core-N`, `uncore-N`, `dram-N`, `psys` or `gpu-N`;
//! - `kind` and `value`:
//!   - `joules`: energy used since this domain's previous line (the first line of a
//!     domain only marks its start);
//!   - `counter_uj`: a cumulative microjoule counter that wraps at `range`
//!     (powercap's `energy_uj` and `max_energy_range_uj`);
//!   - `energy_mj`: NVML's cumulative total-energy counter in millijoules;
//!   - `power_w`: an instantaneous power reading in watts, integrated trapezoidally;
//!   - GPU domains only, with a pid as the fifth field: `process` (value: MiB of GPU
//!     memory the process holds: the lines of one time form NVML's list of running
//!     processes from then on) and `process_sm` (value: one per-process SM-utilisation
//!     sample in percent, as `nvmlDeviceGetProcessUtilization` gives them). A GPU with
//!     no `process_sm` line gives no per-process samples (like MIG or vGPU); one with
//!     no `process` line cannot list its processes.
//!
//! Lines starting with `#` are comments; `# estimated` marks the figures as estimates.
//! Playback starts at the first sample call; energy between two calls is read off the
//! piecewise-linear cumulative curve of each domain. Past the end, each domain reports
//! that the recording ended instead of a silent zero.

use crate::units::Joules;
use std::{collections::BTreeMap, io::Write, path::Path};

mod parse;

use super::{
    Domain, DomainError, PowerError, PowerReading, PowerSource, SampleContext, SourceInfo, energy,
    gpu::{GpuProcess, GpuProcesses},
};

/// A domain's cumulative energy at each sample time: (seconds, joules), non-decreasing.
type Curve = Vec<(f64, f64)>;

/// One recorded NVML per-process line: (seconds, pid, value).
type ProcessLine = (f64, u32, f64);

/// A GPU's recorded per-process lines.
#[derive(Clone, Debug, Default, PartialEq)]
struct GpuLines {
    running: Vec<ProcessLine>,
    sm: Vec<ProcessLine>,
}

impl GpuLines {
    /// What NVML would have said at `t1` about the time since `t0`: the processes on the
    /// GPU at the latest `process` snapshot, and the SM samples after `t0` up to `t1`.
    fn between(&self, gpu: u32, t0: f64, t1: f64) -> GpuProcesses {
        let within = |lines: &[ProcessLine]| -> Vec<ProcessLine> {
            lines
                .iter()
                .filter(|(t, _, _)| *t > t0 && *t <= t1)
                .copied()
                .collect()
        };
        // NVML's list is a snapshot: the latest one taken by `t1`.
        let running = (!self.running.is_empty()).then(|| {
            let latest = self
                .running
                .iter()
                .map(|l| l.0)
                .filter(|t| *t <= t1)
                .fold(f64::NEG_INFINITY, f64::max);
            let mut on: BTreeMap<u32, f64> = BTreeMap::new();
            for &(_, pid, mib) in self.running.iter().filter(|l| l.0 == latest) {
                on.insert(pid, mib);
            }
            on.into_iter()
                .map(|(pid, mib)| GpuProcess {
                    pid,
                    used_memory_bytes: Some((mib * 1024.0 * 1024.0) as u64),
                })
                .collect()
        });
        let sm_util = (!self.sm.is_empty()).then(|| {
            let mut sums: BTreeMap<u32, u64> = BTreeMap::new();
            for (_, pid, percent) in within(&self.sm) {
                let sum = sums.entry(pid).or_default();
                *sum = sum.saturating_add(percent.round() as u64);
            }
            sums
        });
        GpuProcesses {
            gpu,
            running,
            sm_util,
            mig: false,
            busy: None,
        }
    }
}

/// A parsed recording.
#[derive(Clone, Debug, PartialEq)]
pub struct Recording {
    curves: BTreeMap<Domain, Curve>,
    processes: BTreeMap<u32, GpuLines>,
    estimated: bool,
}

fn curve_at(curve: &Curve, t: f64) -> f64 {
    match curve.iter().position(|&(ti, _)| ti > t) {
        None => curve.last().map_or(0.0, |p| p.1),
        Some(0) => curve[0].1,
        Some(i) => {
            let (t0, e0) = curve[i - 1];
            let (t1, e1) = curve[i];
            if t1 <= t0 {
                e1
            } else {
                e0 + (e1 - e0) * (t - t0) / (t1 - t0)
            }
        }
    }
}

impl Recording {
    /// Reads and parses a recording file.
    pub fn load(path: &Path) -> Result<Self, PowerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PowerError::Invalid(format!("replay {}: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Energy of `domain` between `t0` and `t1` seconds into the recording.
    pub fn energy_between(&self, domain: Domain, t0: f64, t1: f64) -> Joules {
        let j = self
            .curves
            .get(&domain)
            .map_or(0.0, |c| (curve_at(c, t1) - curve_at(c, t0)).max(0.0));
        Joules(j)
    }

    /// The recorded domains.
    pub fn domains(&self) -> Vec<Domain> {
        self.curves.keys().copied().collect()
    }

    /// When the last sample of `domain` was taken, seconds.
    pub fn end(&self, domain: Domain) -> f64 {
        self.curves
            .get(&domain)
            .and_then(|c| c.last())
            .map_or(0.0, |p| p.0)
    }
}

/// Plays a recording back in real time.
pub struct Replay {
    recording: Recording,
    start_ns: Option<u64>,
    last_t: f64,
    /// Only the domains of this class set are reported (CPU source vs GPU source).
    keep: fn(Domain) -> bool,
}

impl Replay {
    /// Plays `recording`, reporting the domains for which `keep` is true.
    pub fn new(recording: Recording, keep: fn(Domain) -> bool) -> Self {
        Self {
            recording,
            start_ns: None,
            last_t: 0.0,
            keep,
        }
    }
}

impl PowerSource for Replay {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            name: "replay",
            estimated: self.recording.estimated,
            resolution_j: 0.0,
        }
    }

    fn domains(&self) -> Vec<Domain> {
        self.recording
            .domains()
            .into_iter()
            .filter(|d| (self.keep)(*d))
            .collect()
    }

    fn sample(&mut self, ctx: &SampleContext) -> PowerReading {
        let mut reading = PowerReading::default();
        let Some(start) = self.start_ns else {
            self.start_ns = Some(ctx.now_ns);
            return reading;
        };
        let t = ctx.now_ns.saturating_sub(start) as f64 / 1e9;
        let info = self.info();
        for domain in self.domains() {
            let end = self.recording.end(domain);
            if self.last_t >= end {
                reading.errors.push(DomainError {
                    domain,
                    error: format!("the recording ended at {end} s"),
                });
                continue;
            }
            let j = self.recording.energy_between(domain, self.last_t, t);
            reading.energies.push(energy(&info, domain, j));
            if let Domain::Gpu(gpu) = domain
                && let Some(lines) = self.recording.processes.get(&gpu)
            {
                reading
                    .gpu_processes
                    .push(lines.between(gpu, self.last_t, t));
            }
        }
        self.last_t = t;
        reading
    }
}

/// Writes readings in the replay format (`run --record-power FILE`).
pub struct Recorder<W: Write> {
    out: W,
    start_ns: Option<u64>,
}

impl<W: Write> Recorder<W> {
    /// A recorder writing to `out`.
    pub fn new(mut out: W, estimated: bool) -> std::io::Result<Self> {
        writeln!(
            out,
            "# energy-agent replay v1: time_s,domain,kind,value[,range]"
        )?;
        if estimated {
            writeln!(out, "# estimated")?;
        }
        Ok(Self {
            out,
            start_ns: None,
        })
    }

    /// Records one reading taken at `now_ns` (the first call marks the start of each
    /// domain).
    pub fn record(&mut self, now_ns: u64, reading: &PowerReading) -> std::io::Result<()> {
        let start = *self.start_ns.get_or_insert(now_ns);
        let t = now_ns.saturating_sub(start) as f64 / 1e9;
        for e in &reading.energies {
            writeln!(self.out, "{t:.9},{},joules,{}", e.domain, e.joules)?;
        }
        for g in &reading.gpu_processes {
            let domain = Domain::Gpu(g.gpu);
            for p in g.running.iter().flatten() {
                let mib = p.used_memory_bytes.unwrap_or(0) as f64 / (1024.0 * 1024.0);
                writeln!(self.out, "{t:.9},{domain},process,{mib},{}", p.pid)?;
            }
            for (pid, sum) in g.sm_util.iter().flatten() {
                writeln!(self.out, "{t:.9},{domain},process_sm,{sum},{pid}")?;
            }
        }
        self.out.flush()
    }

    /// Marks the start of `domains` at `now_ns`.
    pub fn start(&mut self, now_ns: u64, domains: &[Domain]) -> std::io::Result<()> {
        self.start_ns = Some(now_ns);
        for d in domains {
            writeln!(self.out, "0.000000000,{d},joules,0")?;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn ctx(now_ns: u64) -> SampleContext {
        SampleContext {
            now_ns,
            ..Default::default()
        }
    }

    /// Found by the replay fuzz target (fuzz/regressions/replay/process-sm-huge): SM
    /// samples of absurd size overflowed the per-process sum.
    #[test]
    fn an_absurd_sm_sample_is_refused_and_sums_never_overflow() {
        let text = "0,gpu-0,power_w,50\n1,gpu-0,process_sm,1e30,42\n";
        let e = Recording::parse(text, "t").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("percentages"), "{e}");
        let big = "0,gpu-0,power_w,50\n1,gpu-0,process_sm,4294967295,42\n1,gpu-0,process_sm,4294967295,42\n2,gpu-0,power_w,50\n";
        let rec = Recording::parse(big, "t").expect("within range");
        let g = rec.processes[&0].between(0, 0.0, 2.0);
        assert_eq!(
            g.sm_util,
            Some([(42, 2 * 4_294_967_295)].into_iter().collect())
        );
    }

    #[test]
    fn all_kinds_become_energy() {
        let text = "\
# a recording
0,package-0,counter_uj,9000000,10000000
1,package-0,counter_uj,500000,10000000
0,dram-0,joules,99
1,dram-0,joules,2.5
0,gpu-0,energy_mj,1000
1,gpu-0,energy_mj,301000
0,gpu-1,power_w,100
1,gpu-1,power_w,300
";
        let rec = Recording::parse(text, "t").unwrap();
        assert_eq!(
            rec.energy_between(Domain::Package(0), 0.0, 1.0),
            Joules(1.5),
            "wrapped counter"
        );
        assert_eq!(rec.energy_between(Domain::Dram(0), 0.0, 1.0), Joules(2.5));
        assert_eq!(rec.energy_between(Domain::Gpu(0), 0.0, 1.0), Joules(300.0));
        assert_eq!(rec.energy_between(Domain::Gpu(1), 0.0, 1.0), Joules(200.0));
        // Linear in between.
        assert_eq!(rec.energy_between(Domain::Gpu(0), 0.0, 0.5), Joules(150.0));
    }

    #[test]
    fn playback_follows_the_clock_and_says_when_it_ends() {
        let rec = Recording::parse("0,package-0,joules,0\n2,package-0,joules,20\n", "t").unwrap();
        let mut r = Replay::new(rec, |_| true);
        assert!(r.sample(&ctx(10 * S)).energies.is_empty());
        assert_eq!(
            r.sample(&ctx(11 * S))
                .joules_of(Domain::Package(0))
                .unwrap(),
            Joules(10.0)
        );
        assert_eq!(
            r.sample(&ctx(12 * S))
                .joules_of(Domain::Package(0))
                .unwrap(),
            Joules(10.0)
        );
        let after = r.sample(&ctx(13 * S));
        assert!(after.energies.is_empty());
        assert!(after.errors[0].error.contains("ended at 2 s"));
    }

    #[test]
    fn nvml_process_lines_play_back_per_interval() {
        let text = "\
0,gpu-0,power_w,100
0.5,gpu-0,process,2048,10
0.5,gpu-0,process,1024,20
0.5,gpu-0,process_sm,60,10
0.5,gpu-0,process_sm,20,20
1.5,gpu-0,process,2048,10
1.5,gpu-0,process_sm,90,10
1.7,gpu-0,process_sm,80,10
2,gpu-0,power_w,100
0,gpu-1,power_w,50
2,gpu-1,power_w,50
";
        let rec = Recording::parse(text, "t").unwrap();
        let mut r = Replay::new(rec, |_| true);
        r.sample(&ctx(0));
        let first = r.sample(&ctx(S));
        let g0 = &first.gpu_processes[0];
        assert_eq!(g0.gpu, 0);
        let running = g0.running.as_ref().unwrap();
        assert_eq!(running.len(), 2);
        assert_eq!(running[0].used_memory_bytes, Some(2 << 30));
        assert_eq!(
            g0.sm_util.as_ref().unwrap(),
            &[(10, 60), (20, 20)].into_iter().collect()
        );
        // gpu-1 has no process lines: it says nothing about processes.
        assert_eq!(first.gpu_processes.len(), 1);
        let second = r.sample(&ctx(2 * S));
        let g0 = &second.gpu_processes[0];
        assert_eq!(g0.running.as_ref().unwrap().len(), 1);
        assert_eq!(
            g0.sm_util.as_ref().unwrap(),
            &[(10, 170)].into_iter().collect()
        );
        // Recorded and played back, the same view.
        let mut out = Vec::new();
        let mut rec = Recorder::new(&mut out, false).unwrap();
        rec.start(0, &[Domain::Gpu(0)]).unwrap();
        rec.record(S, &second).unwrap();
        let again = Recording::parse(std::str::from_utf8(&out).unwrap(), "r").unwrap();
        let g = again.processes[&0].between(0, 0.0, 1.0);
        assert_eq!(g.sm_util, second.gpu_processes[0].sm_util);
        assert_eq!(g.running, second.gpu_processes[0].running);
        for (line, what) in [
            ("0,package-0,process,1,5\n", "for GPU domains"),
            ("0,gpu-0,process_sm,10\n", "needs a pid"),
        ] {
            let err = Recording::parse(line, "t").unwrap_err().to_string();
            assert!(err.contains(what), "{err}");
        }
    }

    #[test]
    fn domain_filter_splits_cpu_and_gpu() {
        let rec = Recording::parse("0,package-0,joules,0\n0,gpu-0,power_w,1\n", "t").unwrap();
        assert_eq!(
            Replay::new(rec.clone(), |d| d.class() != crate::power::DomainClass::Gpu).domains(),
            vec![Domain::Package(0)]
        );
        assert_eq!(
            Replay::new(rec, |d| d.class() == crate::power::DomainClass::Gpu).domains(),
            vec![Domain::Gpu(0)]
        );
    }

    #[test]
    fn malformed_lines_name_the_line() {
        for (text, line, what) in [
            ("0,package-0,joules\n", 1, "expected time_s"),
            (
                "0,package-0,joules,1\nx,package-0,joules,1\n",
                2,
                "bad time",
            ),
            ("0,socket-0,joules,1\n", 1, "unknown domain"),
            ("# c\n0,package-0,watts,1\n", 2, "unknown kind"),
            ("0,package-0,counter_uj,5\n", 1, "needs a range"),
            ("0,package-0,counter_uj,50,10\n", 1, "not below its range"),
            (
                "1,package-0,joules,1\n0,package-0,joules,1\n",
                2,
                "goes backwards",
            ),
            ("0,package-0,joules,-3\n", 1, "bad value"),
            ("0,gpu-0,energy_mj,1.5\n", 1, "bad counter value"),
            (
                "0,package-0,counter_uj,5,ten\n",
                1,
                "bad counter value \"ten\"",
            ),
            ("\n0,gpu-0,process,x,5\n", 2, "bad value \"x\""),
        ] {
            let err = Recording::parse(text, "f.csv").unwrap_err().to_string();
            assert!(err.contains(&format!("line {line}:")), "{text:?}: {err}");
            assert!(err.contains(what), "{text:?}: {err}");
        }
        assert!(
            Recording::parse("# nothing\n", "f")
                .unwrap_err()
                .to_string()
                .contains("no samples")
        );
    }

    #[test]
    fn recorder_output_replays_to_the_same_figures() {
        let info = SourceInfo {
            name: "rapl-powercap",
            estimated: false,
            resolution_j: 1e-6,
        };
        let mut buf = Vec::new();
        let mut rec = Recorder::new(&mut buf, false).unwrap();
        rec.start(5 * S, &[Domain::Package(0), Domain::Gpu(0)])
            .unwrap();
        let readings: Vec<(u64, f64, f64)> = vec![
            (6 * S, 12.5, 200.0),
            (7 * S, 30.0, 0.0),
            (8 * S, 0.125, 75.25),
        ];
        for &(t, pkg, gpu) in &readings {
            let reading = PowerReading {
                energies: vec![
                    energy(&info, Domain::Package(0), Joules(pkg)),
                    energy(&info, Domain::Gpu(0), Joules(gpu)),
                ],
                errors: vec![],
                gpu_processes: vec![],
            };
            rec.record(t, &reading).unwrap();
        }
        let text = String::from_utf8(buf).unwrap();
        let mut replay = Replay::new(Recording::parse(&text, "rec").unwrap(), |_| true);
        replay.sample(&ctx(100 * S));
        for (i, &(_, pkg, gpu)) in readings.iter().enumerate() {
            let r = replay.sample(&ctx((101 + i as u64) * S));
            assert!((r.joules_of(Domain::Package(0)).unwrap().get() - pkg).abs() < 1e-9);
            assert!((r.joules_of(Domain::Gpu(0)).unwrap().get() - gpu).abs() < 1e-9);
        }
    }
}
