//! `energy-agent run`: its flags.

use std::time::Duration;

use clap::{Args, ValueEnum};

use super::{export::ExportArgs, record::RecordArgs, sources::SourceArgs};
use crate::{
    probe::ProbeConfig,
    topology::{Console, DaemonConfig},
};

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
    /// After start-up, run as this user (keeping only the capabilities reading goes on
    /// needing; see `check`).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Power source flags.
    #[command(flatten)]
    pub sources: SourceArgs,
    /// Export and receive flags.
    #[command(flatten)]
    pub export: ExportArgs,
    /// History flags.
    #[command(flatten)]
    pub record: RecordArgs,
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

impl RunArgs {
    /// What the daemon is built from.
    pub fn daemon_config(&self) -> anyhow::Result<DaemonConfig> {
        let mut export = self.export.export_config(self.interval)?;
        let idle = format!("{:?}", self.sources.idle).to_lowercase();
        export.record = self.record.record_config(&idle)?;
        let output = self.output.unwrap_or(if export.any() {
            Output::None
        } else {
            Output::Table
        });
        Ok(DaemonConfig {
            probe: ProbeConfig {
                max_tasks: self.max_tasks,
                ebpf_log: self.ebpf_log,
                ..self.sources.probe_config()
            },
            pipeline: self.sources.pipeline_config(self.record_power.clone())?,
            interval: self.interval,
            duration: self.duration,
            console: match output {
                Output::Table => Console::Table { rows: self.top },
                Output::Json => Console::Json,
                Output::None => Console::Off,
            },
            export,
            request_resolution: self.export.request_resolution,
            user: self.user.clone(),
            health: self.export.health,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use crate::cli::{Cli, Command};

    fn health(args: &[&str]) -> Option<std::net::SocketAddr> {
        let cli = Cli::try_parse_from([&["energy-agent", "run"], args].concat())
            .expect("the flags parse");
        let Command::Run(run) = cli.command else {
            panic!("run")
        };
        run.export.health
    }

    #[test]
    fn health_is_off_by_default_and_on_loopback_when_given_bare() {
        assert_eq!(health(&[]), None);
        assert_eq!(
            health(&["--health"]),
            Some("127.0.0.1:9465".parse().unwrap())
        );
        assert_eq!(
            health(&["--health", "0.0.0.0:8080"]),
            Some("0.0.0.0:8080".parse().unwrap())
        );
    }
}
