//! `measure`: runs a command (its whole process tree, followed through fork records),
//! leaves its stdin/stdout/stderr alone, samples the interval stages while it runs, and
//! hands the summed report to its outputs: stderr or a file, as text or JSON, and one
//! OTLP span when an endpoint is set. Exits with the command's exit code.

use std::{
    collections::HashSet,
    io::Write,
    path::PathBuf,
    process::{Child, Command, ExitStatus},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant, SystemTime},
};

use anyhow::Context as _;

use super::pipeline::{Pipeline, PipelineConfig};
use crate::{
    attribute::idle::state::Method,
    export::{
        forward::ForwardConfig,
        measure::{Accumulator, MeasureReport, Membership, render, span_attributes},
        otlp::{FinishedSpan, export_span},
    },
    history::{HistorySink, IntervalRow, RecordConfig, RunInfo, RunKind},
    probe::{Lifecycle, Probe, ProbeConfig},
};

/// Everything `measure` is built from.
#[derive(Clone, Debug)]
pub struct MeasureConfig {
    /// The eBPF programs.
    pub probe: ProbeConfig,
    /// The interval stages.
    pub pipeline: PipelineConfig,
    /// Sampling interval while the command runs.
    pub interval: Duration,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Report as JSON instead of text.
    pub json: bool,
    /// Write the report here instead of stderr.
    pub output: Option<PathBuf>,
    /// Also send one span for the command here.
    pub otlp: Option<ForwardConfig>,
    /// Also write the run (the command's processes, the host) to a history.
    pub record: Option<RecordConfig>,
    /// Check the report against this model's budget (`measure --budget`).
    pub budget: Option<(String, crate::gate::Budget)>,
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
}

impl Membership for ProcessTree {
    fn contains(&self, pid: u32) -> bool {
        self.members.contains(&pid)
    }
}

static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATE.store(true, Ordering::Relaxed);
}

/// Like `time` and `perf stat`: Ctrl-C is for the command (the report still comes), and
/// SIGTERM to the agent is passed on to the command.
fn leave_signals_to_the_command() {
    // SAFETY: installing signal dispositions; the handler only stores an atomic.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
        libc::signal(
            libc::SIGTERM,
            on_terminate as *const () as libc::sighandler_t,
        );
    }
}

/// The command being measured and what has been summed of it so far.
struct Measurement {
    probe: Probe,
    pipeline: Pipeline,
    tree: ProcessTree,
    acc: Accumulator,
    history: Option<HistorySink>,
}

/// Runs the command and reports; returns its exit code.
pub fn measure(config: MeasureConfig) -> anyhow::Result<i32> {
    let mut probe = Probe::load(&config.probe)?;
    let pipeline = Pipeline::new(&config.pipeline, &mut probe)?;
    let history = match &config.record {
        Some(r) => Some(HistorySink::start(
            r,
            &RunInfo::starting_now(RunKind::Measure, r, Some(config.command.clone())),
        )?),
        None => None,
    };
    let started = Instant::now();
    let started_wall = SystemTime::now();
    let mut child = Command::new(&config.command[0])
        .args(&config.command[1..])
        .spawn()
        .with_context(|| format!("starting {:?}", config.command[0]))?;
    leave_signals_to_the_command();
    let mut m = Measurement {
        probe,
        pipeline,
        tree: ProcessTree::new(child.id()),
        acc: Accumulator::default(),
        history,
    };
    let status = m.until_exit(&mut child, config.interval)?;
    let duration = started.elapsed();
    m.until_exit_records(child.id())?;
    m.pipeline.store_idle(Method::Fitted);
    let code = exit_code(status);
    let idle = m.pipeline.idle().current();
    let report = m.acc.finish(config.command.clone(), code, duration, idle);
    if let Some(h) = m.history.take() {
        h.finish(unix_ns(SystemTime::now()), Some(code));
    }
    if let Some(otlp) = &config.otlp {
        send_span(otlp, &config.command, &report, started_wall, duration);
    }
    write_report(&config, &report)?;
    match &config.budget {
        Some((model, budget)) => {
            let checks = crate::gate::check_measure(model, budget, &serde_json::to_value(&report)?);
            eprint!("{}", crate::gate::render(&checks));
            // The command's own failure comes first.
            Ok(if code != 0 {
                code
            } else {
                crate::gate::exit_code(&checks)
            })
        }
        None => Ok(code),
    }
}

impl Measurement {
    /// Samples every `interval` until the command exits.
    fn until_exit(&mut self, child: &mut Child, interval: Duration) -> anyhow::Result<ExitStatus> {
        let mut next_read = Instant::now() + interval;
        loop {
            if let Some(status) = child.try_wait().context("waiting for the command")? {
                return Ok(status);
            }
            if TERMINATE.swap(false, Ordering::Relaxed) {
                // SAFETY: signalling our own child.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            }
            self.probe.drain_events();
            if Instant::now() >= next_read {
                self.add_interval()?;
                next_read += interval;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The command's last switch (and its exit records) can follow the wake-up of its
    /// parent: reads until the root's exit is in, briefly.
    fn until_exit_records(&mut self, root: u32) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_millis(500);
        std::thread::sleep(Duration::from_millis(20));
        loop {
            let exited = self.add_interval()?;
            if exited.contains(&root) || Instant::now() >= deadline {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// One interval into the accumulator; returns the processes that exited in it.
    fn add_interval(&mut self) -> anyhow::Result<Vec<u32>> {
        let (report, lifecycle) = self.pipeline.next_with_lifecycle(&mut self.probe)?;
        self.tree.grow(&lifecycle);
        self.acc.add(&report, &self.tree);
        if let Some(h) = &self.history {
            let clock = self.pipeline.clock();
            h.interval(IntervalRow::from_report(&report, &clock, |pid| {
                self.tree.contains(pid)
            }));
        }
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
}

/// One span for the whole command (a failure to deliver it is reported, not fatal).
fn send_span(
    otlp: &ForwardConfig,
    command: &[String],
    report: &MeasureReport,
    started: SystemTime,
    duration: Duration,
) {
    let span = FinishedSpan {
        name: format!("measure {}", command.join(" ")),
        start: started,
        end: started + duration,
        attributes: span_attributes(report),
    };
    if let Err(e) = export_span(otlp, span) {
        eprintln!("energy-agent: {e:#}");
    }
}

/// The report, as text or JSON, to stderr or the `-o` file.
fn write_report(config: &MeasureConfig, report: &MeasureReport) -> anyhow::Result<()> {
    let text = if config.json {
        format!("{}\n", serde_json::to_string(report)?)
    } else {
        render(report)
    };
    match &config.output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
        }
        None => {
            let _ = std::io::stderr().write_all(text.as_bytes());
        }
    }
    Ok(())
}

/// Nanoseconds since the Unix epoch.
fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The shell convention: the exit code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn exit_codes_follow_the_shell() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(9)), 137);
    }
}
