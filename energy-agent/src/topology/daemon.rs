//! The `run` daemon: the probe, the interval stages and the exporters, driven by one
//! loop — an interval tick closes an interval, a sub-tick reads the probe finer while
//! spans are received, the ring buffer is drained as it fills, and SIGINT/SIGTERM (or
//! `--duration`) end the run after the partial interval so nothing measured is lost.

use std::{io::stdout, time::Duration};

use anyhow::Context as _;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{Signal, SignalKind, signal},
    time::{Instant, Interval, MissedTickBehavior},
};

use super::{
    exporters::{ExportConfig, Exporters},
    pipeline::{Pipeline, PipelineConfig},
};
use crate::{
    attribute::idle::state::Method,
    clock::{WallClock, monotonic_ns},
    export::{Sink, console::ConsoleTable, json::JsonLines},
    probe::{Probe, ProbeConfig},
};

/// Shortest interval: RAPL figures are never exposed finer than this (PLATYPUS,
/// CVE-2020-8694, used fine-grained RAPL readings as a side channel).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// How often a running daemon keeps its good idle-power fits in the state file (and
/// once more at the end).
const STORE_IDLE_EVERY: Duration = Duration::from_secs(300);

/// Finest sub-interval probe read while spans are received.
const MIN_SUB_PERIOD: Duration = Duration::from_millis(20);

/// What the console shows every interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Console {
    /// A compact table of the `rows` busiest processes.
    Table {
        /// Process rows.
        rows: usize,
    },
    /// One JSON object per interval.
    Json,
    /// Nothing (exporters only).
    Off,
}

/// Everything `run` is built from.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// The eBPF programs.
    pub probe: ProbeConfig,
    /// The interval stages.
    pub pipeline: PipelineConfig,
    /// Length of one interval (at least [`MIN_INTERVAL`]).
    pub interval: Duration,
    /// Stop after this long (None: until a signal).
    pub duration: Option<Duration>,
    /// The console output.
    pub console: Console,
    /// The exporters.
    pub export: ExportConfig,
    /// How finely the probe is read within an interval while spans are received.
    pub request_resolution: Duration,
}

/// Runs the agent until the duration elapses or a signal arrives; returns the exit
/// code.
pub fn run(config: DaemonConfig) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(config))
}

/// The running stages.
struct Daemon {
    probe: AsyncFd<Probe>,
    pipeline: Pipeline,
    sink: Option<Box<dyn Sink>>,
    exporters: Exporters,
    stored_idle_at: Instant,
}

async fn run_async(config: DaemonConfig) -> anyhow::Result<i32> {
    if config.interval < MIN_INTERVAL {
        anyhow::bail!(
            "--interval must be at least {MIN_INTERVAL:?}: energy counters are never exposed finer (CVE-2020-8694)"
        );
    }
    let mut daemon = Daemon::start(&config).await?;
    log::info!("probe attached; interval {:?}", config.interval);
    daemon.run_loop(&config).await?;
    daemon.pipeline.store_idle(Method::Fitted);
    log::info!("detaching");
    let Daemon {
        probe, exporters, ..
    } = daemon;
    drop(probe);
    exporters.shutdown().await;
    Ok(0)
}

/// A ticker whose first tick is one `period` from now.
fn ticker(period: Duration, missed: MissedTickBehavior) -> Interval {
    let mut t = tokio::time::interval_at(Instant::now() + period, period);
    t.set_missed_tick_behavior(missed);
    t
}

fn console_sink(console: Console, clock: WallClock) -> Option<Box<dyn Sink>> {
    match console {
        Console::Table { rows } => Some(Box::new(ConsoleTable::new(stdout(), rows))),
        Console::Json => Some(Box::new(JsonLines::new(stdout(), clock))),
        Console::Off => None,
    }
}

impl Daemon {
    /// Loads the probe, starts the interval stages at the same moment, and the
    /// exporters.
    async fn start(config: &DaemonConfig) -> anyhow::Result<Self> {
        let mut probe = Probe::load(&config.probe)?;
        let pipeline = Pipeline::new(&config.pipeline, &mut probe)?;
        let clock = pipeline.clock();
        let sink = console_sink(config.console, clock);
        let exporters = Exporters::start(&config.export, config.interval, clock).await?;
        // SAFETY: the ring buffer's descriptor is owned by `probe`, which the AsyncFd
        // owns, so it stays open for as long as it is registered.
        let probe = unsafe { AsyncFd::register_with_interest(probe, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("watching the probe's ring buffer: {e}"))?;
        Ok(Self {
            probe,
            pipeline,
            sink,
            exporters,
            stored_idle_at: Instant::now(),
        })
    }

    /// Ticks until the end; the partial interval since the last tick is emitted too.
    async fn run_loop(&mut self, config: &DaemonConfig) -> anyhow::Result<()> {
        let mut tick = ticker(config.interval, MissedTickBehavior::Delay);
        let deadline = config.duration.map(|d| Instant::now() + d);
        let sub_period = config.request_resolution.max(MIN_SUB_PERIOD);
        let mut sub_tick = ticker(sub_period, MissedTickBehavior::Skip);
        let sub_sampling = self.exporters.receiving() && sub_period < config.interval;
        // Made once, before the loop: a signal that arrives while an interval is being
        // processed is then still seen by the next select.
        let mut signals = Signals::install()?;
        loop {
            let stop = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let finished = tokio::select! {
                biased;
                _ = signals.recv() => true,
                _ = tick.tick() => {
                    if !self.emit_interval()? {
                        return Ok(());
                    }
                    // A duration that is a whole number of intervals ends on this tick.
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(());
                    }
                    false
                }
                _ = sub_tick.tick(), if sub_sampling => {
                    self.pipeline.sub_sample(self.probe.get_mut())?;
                    false
                }
                guard = self.probe.readable_mut() => {
                    let mut guard = guard.context("polling the ring buffer")?;
                    guard.get_inner_mut().drain_events();
                    guard.get_inner_mut().flush_log();
                    guard.clear_ready();
                    false
                }
                _ = stop => true,
            };
            if finished {
                // The partial interval since the last tick, so nothing measured is lost.
                self.emit_interval()?;
                return Ok(());
            }
        }
    }

    /// Closes, exports and prints one interval; false when the output went away (a
    /// closed pipe), which ends the run quietly like other Unix tools.
    fn emit_interval(&mut self) -> anyhow::Result<bool> {
        let report = self.pipeline.next(self.probe.get_mut())?;
        let lag = monotonic_ns().saturating_sub(report.end_ns);
        self.exporters.observe(&report, Duration::from_nanos(lag));
        if self.stored_idle_at.elapsed() >= STORE_IDLE_EVERY {
            self.pipeline.store_idle(Method::Fitted);
            self.stored_idle_at = Instant::now();
        }
        let Some(sink) = &mut self.sink else {
            return Ok(true);
        };
        match sink.emit(&report) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e).context("writing the interval report"),
        }
    }
}

/// SIGINT and SIGTERM, either of which ends the run.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
