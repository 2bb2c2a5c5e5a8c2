//! The `run` daemon: the probe, the interval stages and the exporters, driven by one
//! loop — an interval tick closes an interval, a sub-tick reads the probe finer while
//! spans are received, the ring buffer is drained as it fills, and SIGINT/SIGTERM (or
//! `--duration`) end the run after the partial interval so nothing measured is lost.
//! `--health` serves the loop's liveness and readiness from the first moment.

use std::{
    io::stdout,
    net::SocketAddr,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{Signal, SignalKind, signal},
    sync::watch,
    time::{Instant, Interval, MissedTickBehavior},
};

use super::{
    exporters::{ExportConfig, Exporters},
    faults::Faults,
    pipeline::{Pipeline, PipelineConfig},
};
use crate::{
    attribute::idle::state::Method,
    clock::{WallClock, monotonic_ns},
    export::{Sink, console::ConsoleTable, health::Health, json::JsonLines},
    lockdown,
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
    /// The user to switch to once started (`--user`).
    pub user: Option<String>,
    /// Serve `/healthz` and `/readyz` here (also served beside `--prometheus`).
    pub health: Option<SocketAddr>,
}

/// Longest the agent takes to stop after a signal: releasing held spans, the final
/// interval, draining the forward queue. A second signal stops it at once.
pub const STOP_BUDGET: Duration = Duration::from_millis(1500);

/// Runs the agent until the duration elapses or a signal arrives; returns the exit
/// code.
pub fn run(config: DaemonConfig) -> anyhow::Result<i32> {
    catch_stop_signals_early();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(run_async(config));
    // A start-up abandoned on a signal may still be loading on a blocking thread: the
    // process exits without waiting for it (the kernel detaches what it attached).
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// The running stages.
struct Daemon {
    probe: AsyncFd<Probe>,
    pipeline: Pipeline,
    sink: Option<Box<dyn Sink>>,
    exporters: Exporters,
    faults: Faults,
    stored_idle_at: Instant,
    health: Health,
    /// The runtime of the network-facing tasks (receive, enrich, forward, /metrics),
    /// whose threads hold no capability.
    net: NetRuntime,
}

/// The network-facing runtime; shut down (without waiting) when dropped, so that it
/// may be dropped inside the main runtime.
struct NetRuntime(Option<tokio::runtime::Runtime>);

impl NetRuntime {
    fn start() -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(lockdown::NET_THREAD)
            .on_thread_start(lockdown::net_thread_start)
            .enable_all()
            .build()
            .context("starting the network runtime")?;
        Ok(Self(Some(runtime)))
    }

    fn handle(&self) -> Option<tokio::runtime::Handle> {
        self.0.as_ref().map(|r| r.handle().clone())
    }
}

impl Drop for NetRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

async fn run_async(config: DaemonConfig) -> anyhow::Result<i32> {
    if config.interval < MIN_INTERVAL {
        anyhow::bail!(
            "--interval must be at least {MIN_INTERVAL:?}: energy counters are never exposed finer (CVE-2020-8694)"
        );
    }
    // First of all, so that no signal is missed, whatever phase it comes in (a
    // background job of a script starts with SIGINT ignored; catching it here is what
    // makes it stop the agent).
    let mut signals = Signals::install()?;
    if STOP_REQUESTED.load(Ordering::Relaxed) {
        log::info!("stopped before starting");
        return Ok(0);
    }
    let user = config
        .user
        .as_deref()
        .map(lockdown::resolve_user)
        .transpose()?;
    let health = Health::new(config.interval);
    let (health_stop, health_stopped) = watch::channel(false);
    if let Some(addr) = config.health {
        let bound = crate::export::health::serve(addr, health.clone(), health_stopped).await?;
        eprintln!("energy-agent: health on http://{bound}/healthz and /readyz");
    }
    let Some(mut daemon) = Daemon::start(&config, user, &mut signals, &health).await? else {
        log::info!("stopped while starting");
        return Ok(0);
    };
    health.attached();
    log::info!("probe attached; interval {:?}", config.interval);
    let ended = daemon.run_loop(&config, &mut signals).await;
    log::info!("detaching");
    health.stopping();
    daemon.stop(ended, &mut signals).await;
    let _ = health_stop.send(true);
    Ok(0)
}

/// A ticker whose first tick is one `period` from now.
fn ticker(period: Duration, missed: MissedTickBehavior) -> Interval {
    let mut t = tokio::time::interval_at(Instant::now() + period, period);
    t.set_missed_tick_behavior(missed);
    t
}

/// The console sink; JSON lines carry the OTLP path's counters (`otlp`) when
/// forwarding.
fn console_sink(
    console: Console,
    clock: WallClock,
    exporters: &Exporters,
) -> Option<Box<dyn Sink>> {
    match console {
        Console::Table { rows } => Some(Box::new(ConsoleTable::new(stdout(), rows))),
        Console::Json => {
            let lines = JsonLines::new(stdout(), clock);
            Some(match exporters.otlp_json() {
                Some(otlp) => Box::new(lines.with_field("otlp", otlp)),
                None => Box::new(lines),
            })
        }
        Console::Off => None,
    }
}

/// Starts the exporters on a runtime of their own (binding the listeners, reading their
/// certificates and tokens while the agent still can); `None` when a signal came first.
async fn start_exporters(
    config: &DaemonConfig,
    clock: WallClock,
    signals: &mut Signals,
    health: &Health,
) -> anyhow::Result<Option<(Exporters, NetRuntime)>> {
    let net = NetRuntime::start()?;
    let handle = net.handle().context("the network runtime")?;
    // The receiver's sender resolver thread (`energy-peers`) is started in there,
    // before the drop, so it keeps what reading other processes' fds needs.
    let export = config.export.clone();
    let (interval, health) = (config.interval, health.clone());
    let started =
        handle.spawn(async move { Exporters::start(&export, interval, clock, &health).await });
    tokio::select! {
        biased;
        _ = signals.recv() => Ok(None),
        started = started => Ok(Some((started.context("starting the exporters")??, net))),
    }
}

/// Loads the probe and starts the interval stages at the same moment (blocking work:
/// BTF, the verifier, the meters' first reads, a carbon API's first answer).
fn start_stages(config: &DaemonConfig) -> anyhow::Result<(Probe, Pipeline)> {
    let mut probe = Probe::load(&config.probe)?;
    let pipeline = Pipeline::new(&config.pipeline, &mut probe)?;
    Ok((probe, pipeline))
}

impl Daemon {
    /// Starts every stage, then drops privileges; `None` when a signal came first (the
    /// start-up, on its own thread, is abandoned).
    async fn start(
        config: &DaemonConfig,
        user: Option<lockdown::User>,
        signals: &mut Signals,
        health: &Health,
    ) -> anyhow::Result<Option<Self>> {
        let stages = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || start_stages(&config))
        };
        let (probe, pipeline) = tokio::select! {
            biased;
            _ = signals.recv() => return Ok(None),
            started = stages => started.context("starting the probe")??,
        };
        let clock = pipeline.clock();
        let Some(exporters) = start_exporters(config, clock.clone(), signals, health).await? else {
            return Ok(None);
        };
        let (exporters, net) = exporters;
        // Everything is loaded, attached, opened and bound: from here on, only reads.
        let bpf = lockdown::needs_bpf_for_reads(|| probe.stats().is_ok())?;
        let outcome = lockdown::lock_down(bpf, user)?;
        log::info!("{}", outcome.describe());
        let sink = console_sink(config.console, clock, &exporters);
        // SAFETY: the ring buffer's descriptor is owned by `probe`, which the AsyncFd
        // owns, so it stays open for as long as it is registered.
        let probe = unsafe { AsyncFd::register_with_interest(probe, Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("watching the probe's ring buffer: {e}"))?;
        Ok(Some(Self {
            probe,
            pipeline,
            sink,
            exporters,
            faults: Faults::default(),
            stored_idle_at: Instant::now(),
            net,
            health: health.clone(),
        }))
    }

    /// Ticks until a signal, the end of `--duration` or a closed output. A failure
    /// within an interval is logged, counted and survived.
    async fn run_loop(&mut self, config: &DaemonConfig, signals: &mut Signals) -> Ended {
        let mut tick = ticker(config.interval, MissedTickBehavior::Delay);
        let deadline = config.duration.map(|d| Instant::now() + d);
        let sub_period = config.request_resolution.max(MIN_SUB_PERIOD);
        let mut sub_tick = ticker(sub_period, MissedTickBehavior::Skip);
        let sub_sampling = self.exporters.receiving() && sub_period < config.interval;
        loop {
            let stop = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = signals.recv() => return Ended::Between,
                _ = tick.tick() => {
                    if self.emit_interval() == Emitted::OutputClosed {
                        return Ended::OutputClosed;
                    }
                    // A duration that is a whole number of intervals ends on this tick.
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ended::OnTick;
                    }
                }
                _ = sub_tick.tick(), if sub_sampling => {
                    if let Err(e) = self.pipeline.sub_sample(self.probe.get_mut()) {
                        self.faults.record("probe", &e);
                    }
                }
                guard = self.probe.readable_mut() => match guard {
                    Ok(mut guard) => {
                        guard.get_inner_mut().drain_events();
                        guard.get_inner_mut().flush_log();
                        guard.clear_ready();
                    }
                    Err(e) => self.faults.record("probe", &anyhow::Error::from(e)),
                },
                _ = stop => return Ended::Between,
            }
        }
    }

    /// Closes, exports and prints one interval.
    fn emit_interval(&mut self) -> Emitted {
        let report = match self.pipeline.next(self.probe.get_mut()) {
            Ok(report) => report,
            Err(e) => {
                self.faults.record("interval", &e);
                self.exporters.observe_faults(&self.faults);
                self.health.interval_closed(false);
                return Emitted::Failed;
            }
        };
        let lag = monotonic_ns().saturating_sub(report.end_ns);
        self.exporters.observe(&report, Duration::from_nanos(lag));
        if self.stored_idle_at.elapsed() >= STORE_IDLE_EVERY {
            self.pipeline.store_idle(Method::Fitted);
            self.stored_idle_at = Instant::now();
        }
        let written = match &mut self.sink {
            None => Ok(()),
            Some(sink) => sink.emit(&report),
        };
        let emitted = match written {
            Ok(()) => Emitted::Done,
            // A closed pipe ends the run quietly, like other Unix tools.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Emitted::OutputClosed,
            Err(e) => {
                let e = anyhow::Error::from(e).context("writing the interval report");
                self.faults.record("output", &e);
                Emitted::Failed
            }
        };
        self.exporters.observe_faults(&self.faults);
        self.health.interval_closed(emitted == Emitted::Done);
        emitted
    }

    /// The partial interval since the last tick (so nothing measured is lost), then the
    /// exporters' flush, within [`STOP_BUDGET`]; a second signal cuts it short.
    async fn stop(mut self, ended: Ended, signals: &mut Signals) {
        if ended == Ended::Between {
            self.emit_interval();
        }
        self.pipeline.store_idle(Method::Fitted);
        let Daemon {
            probe,
            exporters,
            net,
            ..
        } = self;
        drop(probe);
        tokio::select! {
            biased;
            _ = signals.recv() => log::warn!("second signal: stopping without flushing"),
            _ = exporters.shutdown() => {}
            _ = tokio::time::sleep(STOP_BUDGET) => {
                log::warn!("stopping: the exporters did not flush within {STOP_BUDGET:?}");
            }
        }
        drop(net);
    }
}

/// How the loop ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// Between ticks (a signal, or `--duration` elapsed): a partial interval is due.
    Between,
    /// On a tick that closed the last interval.
    OnTick,
    /// The console's output went away.
    OutputClosed,
}

/// What became of one interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Emitted {
    /// Attributed and handed to every sink.
    Done,
    /// Lost to a failure that was logged and counted.
    Failed,
    /// The console's output went away.
    OutputClosed,
}

/// Set by a SIGINT or SIGTERM that came before the async handlers existed.
static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_stop(_: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::Relaxed);
}

/// Catches SIGINT and SIGTERM from the first moment `run` starts, before the runtime
/// and its handlers exist: a background job of a script starts with SIGINT ignored,
/// and a signal delivered while it is ignored is lost for good.
fn catch_stop_signals_early() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a handler that only stores an atomic; the struct is zeroed, then its
        // handler and flags set, as sigaction(2) expects.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = note_stop as *const () as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
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
