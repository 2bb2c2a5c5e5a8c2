//! The `energy-agent` command line: one module per subcommand.

pub mod check;
pub mod measure;
pub mod pipeline;
pub mod run;
pub mod sources;
pub mod top;

use clap::{Parser, Subcommand};

/// Measures the energy and carbon of processes, models and inference requests.
#[derive(Debug, Parser)]
#[command(name = "energy-agent", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: sample every interval and print or export the results.
    Run(run::RunArgs),
    /// A live full-screen view of processes and models by power.
    Top(top::TopArgs),
    /// Run a command and report its energy and carbon, like `perf stat`.
    Measure(measure::MeasureArgs),
    /// Report what works on this host and how to fix what does not.
    Check(check::CheckArgs),
}

/// Parses the command line and runs the chosen command; returns the exit code.
pub fn main() -> anyhow::Result<i32> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Top(args) => top::top(args),
        Command::Measure(args) => measure::measure(args),
        Command::Check(args) => check::check(args),
    }
}

/// Parses a duration such as `1s`, `250ms` or `2m`.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 1s, 500ms, 2m)"))
}
