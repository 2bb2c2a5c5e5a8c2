//! `energy-agent run`: the daemon loop.

use std::{io::stdout, time::Duration};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use super::{
    exporters::{ExportArgs, Exporters},
    pipeline::Pipeline,
    sources::SourceArgs,
};
use crate::{
    export::{Sink, console::ConsoleTable, json::JsonLines},
    probe::{Probe, ProbeConfig},
};

/// Shortest interval: RAPL figures are never exposed finer than this (PLATYPUS,
/// CVE-2020-8694, used fine-grained RAPL readings as a side channel).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// Options of `energy-agent run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Length of one sampling interval.
    #[arg(long, default_value = "1s", value_parser = super::parse_duration)]
    pub interval: Duration,
    /// How to print each interval (default: a table when no exporter is configured,
    /// nothing otherwise).
    #[arg(long, value_enum)]
    pub output: Option<Output>,
    /// Rows in the table (the busiest processes).
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Stop after this long (default: run until Ctrl-C or SIGTERM).
    #[arg(long, value_parser = super::parse_duration)]
    pub duration: Option<Duration>,
    /// Capacity of the kernel's task map (threads tracked at once).
    #[arg(long, default_value_t = energy_common::DEFAULT_MAX_TASKS)]
    pub max_tasks: u32,
    /// Forward the eBPF programs' own diagnostics (aya-log) to the log.
    #[arg(long)]
    pub ebpf_log: bool,
    /// Also write every interval's energy per domain to FILE, in the format
    /// `--power-source replay:FILE` plays back.
    #[arg(long, value_name = "FILE")]
    pub record_power: Option<std::path::PathBuf>,
    /// Power source flags.
    #[command(flatten)]
    pub sources: SourceArgs,
    /// Export and receive flags.
    #[command(flatten)]
    pub export: ExportArgs,
}

/// Console output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A compact table of the busiest processes.
    Table,
    /// One JSON object per interval, one per line.
    Json,
    /// Nothing (exporters only).
    None,
}

/// Runs the agent until the duration elapses or a signal arrives.
pub fn run(args: RunArgs) -> anyhow::Result<i32> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: RunArgs) -> anyhow::Result<i32> {
    if args.interval < MIN_INTERVAL {
        anyhow::bail!(
            "--interval must be at least {MIN_INTERVAL:?}: energy counters are never exposed finer (CVE-2020-8694)"
        );
    }
    let config = ProbeConfig {
        max_tasks: args.max_tasks,
        ebpf_log: args.ebpf_log,
        libcuda: args.sources.libcuda.clone(),
    };
    let mut probe = Probe::load(&config)?;
    let mut pipeline = Pipeline::new(&args.sources, &mut probe, args.record_power.as_deref())?;
    let clock = pipeline.clock();
    let output = args.output.unwrap_or(if args.export.any() {
        Output::None
    } else {
        Output::Table
    });
    let mut sink: Option<Box<dyn Sink>> = match output {
        Output::Table => Some(Box::new(ConsoleTable::new(stdout(), args.top))),
        Output::Json => Some(Box::new(JsonLines::new(stdout(), clock))),
        Output::None => None,
    };
    let exporters = Exporters::start(&args.export, args.interval, clock).await?;
    // SAFETY: the ring buffer's descriptor is owned by `probe`, which the AsyncFd owns,
    // so it stays open for as long as it is registered.
    let mut probe = unsafe { AsyncFd::register_with_interest(probe, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("watching the probe's ring buffer: {e}"))?;
    log::info!("probe attached; interval {:?}", args.interval);

    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + args.interval, args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    // Finer probe reads while enriching spans (see --request-resolution).
    let sub_period = args
        .export
        .request_resolution
        .max(std::time::Duration::from_millis(20));
    let mut sub_ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + sub_period, sub_period);
    sub_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let sub_sampling = exporters.receiving() && sub_period < args.interval;
    // Streams made once, before the loop: a signal that arrives while an interval is
    // being processed is then still seen by the next select.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    loop {
        let stop = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let finished = tokio::select! {
            biased;
            _ = sigint.recv() => true,
            _ = sigterm.recv() => true,
            _ = ticker.tick() => {
                if !emit_interval(probe.get_mut(), &mut pipeline, &mut sink, &exporters)? {
                    break;
                }
                // A duration that is a whole number of intervals ends on this tick.
                if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                    break;
                }
                false
            }
            _ = sub_ticker.tick(), if sub_sampling => {
                pipeline.sub_sample(probe.get_mut())?;
                false
            }
            guard = probe.readable_mut() => {
                let mut guard = guard.context("polling the ring buffer")?;
                guard.get_inner_mut().drain_events();
                guard.get_inner_mut().flush_log();
                guard.clear_ready();
                false
            }
            _ = stop => true,
        };
        if finished {
            // The partial interval since the last tick, so nothing measured is dropped.
            emit_interval(probe.get_mut(), &mut pipeline, &mut sink, &exporters)?;
            break;
        }
    }
    log::info!("detaching");
    drop(probe);
    exporters.shutdown().await;
    Ok(0)
}

/// Reads, summarizes and emits one interval; false when the output went away (a closed
/// pipe), which ends the run quietly like other Unix tools.
fn emit_interval(
    probe: &mut Probe,
    pipeline: &mut Pipeline,
    sink: &mut Option<Box<dyn Sink>>,
    exporters: &Exporters,
) -> anyhow::Result<bool> {
    let report = pipeline.next(probe)?;
    let lag = crate::clock::monotonic_ns().saturating_sub(report.end_ns);
    exporters.observe(&report, std::time::Duration::from_nanos(lag));
    let Some(sink) = sink else { return Ok(true) };
    match sink.emit(&report) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing the interval report"),
    }
}
