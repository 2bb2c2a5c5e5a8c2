//! `calibrate`: the agent drives the CPUs through load levels itself — idle, one core,
//! half of them, all of them, in equal parts of `--duration` — with burner threads,
//! samples every interval through the same pipeline as `run`, fits each meter domain's
//! idle power over the whole calibration (every interval weighted alike), and stores
//! the good fits in the state dir, where `run`, `top` and `measure` start from them.
//!
//! The fit uses the busy CPUs the probe measured, not the levels asked for: other load
//! on the host only shifts the samples along the line. A GPU is not driven (its idle
//! power is fitted during runs, on NVML's utilisation).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    MIN_INTERVAL,
    pipeline::{Pipeline, PipelineConfig},
};
use crate::{
    attribute::idle::{
        fit::{Fit, FitConfig, FitStatus},
        state::{Method, StoredIdle},
    },
    power::Domain,
    probe::{Probe, ProbeConfig, possible_cpus},
};

/// Everything `calibrate` is built from.
#[derive(Clone, Debug)]
pub struct CalibrateConfig {
    /// The eBPF programs (the busy time comes from them).
    pub probe: ProbeConfig,
    /// The interval stages (their `--idle-power` is ignored: everything is fitted).
    pub pipeline: PipelineConfig,
    /// How long, all levels together.
    pub duration: Duration,
    /// Sampling interval.
    pub interval: Duration,
    /// Print one JSON object.
    pub json: bool,
}

/// One domain's result.
#[derive(Debug, serde::Serialize)]
pub struct DomainResult {
    /// The domain.
    pub domain: String,
    /// `good`, or why not.
    pub status: FitStatus,
    /// The fit, good or not, when one could be computed.
    pub fit: Option<Fit>,
    /// Whether the state file took it.
    pub stored: bool,
}

/// The whole result.
#[derive(Debug, serde::Serialize)]
pub struct CalibrateReport {
    /// Busy CPUs asked for at each level.
    pub levels: Vec<usize>,
    /// Per domain.
    pub domains: Vec<DomainResult>,
    /// The state file, when persistence is on.
    pub state_file: Option<String>,
}

/// Runs the calibration and reports; exit code 1 when no domain could be fitted or
/// stored.
pub fn calibrate(mut config: CalibrateConfig) -> anyhow::Result<i32> {
    if config.interval < MIN_INTERVAL {
        anyhow::bail!("--interval must be at least {MIN_INTERVAL:?}");
    }
    config.pipeline.attribution.idle_power.clear();
    config.pipeline.attribution.idle_fit = FitConfig::CALIBRATE;
    let mut probe = Probe::load(&config.probe)?;
    let mut pipeline = Pipeline::new(&config.pipeline, &mut probe)?;
    if !has_meter(&pipeline) {
        anyhow::bail!(
            "nothing to calibrate: the power source is the estimate, whose idle power is a model (a meter is needed: RAPL or NVML)"
        );
    }
    let cpus = possible_cpus() as usize;
    let levels = levels(cpus);
    let per_level = config.duration / levels.len() as u32;
    for &busy in &levels {
        if !config.json {
            eprintln!("energy-agent: calibrating: {busy} busy CPU(s) for {per_level:?}");
        }
        let burners = Burners::start(busy);
        sample_for(&mut pipeline, &mut probe, per_level, config.interval)?;
        burners.stop();
    }
    let report = finish(&pipeline, levels);
    if config.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    let stored = report.domains.iter().any(|d| d.stored);
    Ok(if stored { 0 } else { 1 })
}

/// Whether any source in use is a meter (the estimate's domains are not fitted).
fn has_meter(pipeline: &Pipeline) -> bool {
    let (_, names) = pipeline.sources();
    names.cpu != "estimate" || names.gpu != "none"
}

/// Idle, one core, half of them, all of them (without repeats).
fn levels(cpus: usize) -> Vec<usize> {
    let mut l = vec![0, 1, cpus / 2, cpus];
    l.retain(|&n| n <= cpus);
    l.sort_unstable();
    l.dedup();
    l
}

/// Samples the pipeline every `interval` for `length`.
fn sample_for(
    pipeline: &mut Pipeline,
    probe: &mut Probe,
    length: Duration,
    interval: Duration,
) -> anyhow::Result<()> {
    let end = Instant::now() + length;
    let mut next = Instant::now() + interval;
    while Instant::now() < end {
        probe.drain_events();
        if Instant::now() >= next {
            pipeline.next(probe).context("sampling")?;
            next += interval;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The fits, stored where good.
fn finish(pipeline: &Pipeline, levels: Vec<usize>) -> CalibrateReport {
    let taken = pipeline.store_idle(Method::Calibrate);
    let was_taken = |d: Domain| taken.iter().any(|t: &StoredIdle| t.domain == d.to_string());
    CalibrateReport {
        levels,
        domains: pipeline
            .idle()
            .fits()
            .into_iter()
            .map(|(d, status, fit)| DomainResult {
                domain: d.to_string(),
                status,
                fit,
                stored: was_taken(d),
            })
            .collect(),
        state_file: pipeline
            .idle_store()
            .file()
            .map(|p| p.display().to_string()),
    }
}

/// The report for a terminal.
fn render(r: &CalibrateReport) -> String {
    let mut s = String::new();
    for d in &r.domains {
        match (&d.fit, d.status) {
            (Some(f), FitStatus::Good) => s.push_str(&format!(
                "{}: idle {:.2} ± {:.2} W, {:.2} W per busy unit ({} intervals, busy {:.2}–{:.2}){}\n",
                d.domain,
                f.idle_w,
                f.uncertainty_w,
                f.per_busy_w,
                f.samples,
                f.busy_min,
                f.busy_max,
                if d.stored { "" } else { " — not stored" }
            )),
            (_, status) => s.push_str(&format!(
                "{}: not fitted ({}){}\n",
                d.domain,
                status.name(),
                if d.domain.starts_with("gpu") {
                    ": calibrate drives the CPUs only; a GPU's idle power is fitted during runs"
                } else {
                    ": the load did not vary enough, or power did not follow it"
                }
            )),
        }
    }
    match &r.state_file {
        Some(f) if r.domains.iter().any(|d| d.stored) => s.push_str(&format!("stored in {f}\n")),
        Some(_) => s.push_str("nothing stored\n"),
        None => s.push_str("not stored: no usable state dir (--state-dir DIR)\n"),
    }
    s
}

/// Threads that keep `n` CPUs busy until stopped.
struct Burners {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Burners {
    fn start(n: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for i in 0..10_000 {
                            x = std::hint::black_box(
                                x.wrapping_mul(6364136223846793005).wrapping_add(i),
                            );
                        }
                    }
                })
            })
            .collect();
        Self { stop, threads }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_are_idle_one_half_and_all() {
        assert_eq!(levels(8), vec![0, 1, 4, 8]);
        assert_eq!(levels(2), vec![0, 1, 2]);
        assert_eq!(levels(1), vec![0, 1]);
    }
}
