//! The `energy-agent` command line: one module per subcommand's flags. It only parses
//! (flags, then the config file under them) and dispatches to [`crate::topology`] and
//! [`crate::check`].

pub mod calibrate;
pub mod check;
pub mod config;
pub mod export;
pub mod gate;
pub mod k8s;
pub mod measure;
pub mod record;
pub mod report;
pub mod run;
pub mod sources;
pub mod top;
pub mod when;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Measures the energy and carbon of processes, models and inference requests.
#[derive(Debug, Parser)]
#[command(name = "energy-agent", version, about, long_about = None)]
pub struct Cli {
    /// A TOML config file for everything the flags set; flags override it.
    #[arg(long, global = true, env = "ENERGY_AGENT_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: sample every interval and print or export the results.
    Run(Box<run::RunArgs>),
    /// A live full-screen view of processes and models by power.
    Top(top::TopArgs),
    /// Run a command and report its energy and carbon, like `perf stat`.
    Measure(Box<measure::MeasureArgs>),
    /// Report what works on this host and how to fix what does not.
    Check(check::CheckArgs),
    /// Drive the CPUs through load levels, fit each meter's idle power, and keep it in
    /// the state dir for later runs.
    Calibrate(calibrate::CalibrateArgs),
    /// Sum a recorded history by model, process, container or label; compare two
    /// windows or labels.
    Report(report::ReportArgs),
    /// Check recorded figures against the carbon budgets, and drift against a baseline:
    /// exit 0 within, 1 over, 2 when the data cannot decide.
    Gate(gate::GateArgs),
    /// The greenest time to start a deferrable job, from an intensity forecast.
    When(Box<when::WhenArgs>),
}

/// Parses the command line (and the config file) and runs the chosen command; returns
/// the exit code.
pub fn main() -> anyhow::Result<i32> {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(path) = &cli.config {
        let file = config::Config::load(path)?;
        let sub = matches.subcommand().map(|(_, m)| m).unwrap_or(&matches);
        let applied = match &mut cli.command {
            Command::Run(args) => file.apply_run(args, sub),
            Command::Top(args) => file.apply_sources(&mut args.sources, sub),
            Command::Measure(args) => file.apply_sources(&mut args.sources, sub),
            Command::Check(args) => file.apply_sources(&mut args.sources, sub),
            Command::Calibrate(args) => file.apply_sources(&mut args.sources, sub),
            Command::When(args) => file.apply_sources(&mut args.sources, sub),
            Command::Report(_) | Command::Gate(_) => Ok(()),
        };
        applied.map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
    }
    match cli.command {
        Command::Run(args) => crate::topology::daemon::run(args.daemon_config()?),
        Command::Top(args) => crate::topology::top::top(
            &args.sources.probe_config(),
            &args.sources.pipeline_config(None)?,
            args.interval,
        ),
        Command::Measure(args) => crate::topology::measure::measure(args.measure_config()?),
        Command::Check(args) => crate::check::check(&args.check_config()),
        Command::Calibrate(args) => crate::topology::calibrate::calibrate(args.calibrate_config()?),
        Command::Report(args) => args.run(),
        Command::Gate(args) => args.run(),
        Command::When(args) => args.run(),
    }
}

/// Parses a duration such as `1s`, `250ms` or `2m`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 1s, 500ms, 2m)"))
}
