//! `energy-agent calibrate`: its flags.

use std::time::Duration;

use clap::Args;

use super::sources::SourceArgs;
use crate::topology::calibrate::CalibrateConfig;

/// Options of `energy-agent calibrate`.
#[derive(Debug, Args)]
pub struct CalibrateArgs {
    /// How long to drive the CPUs through their load levels (idle, one core, half of
    /// them, all), in equal parts.
    #[arg(long, default_value = "60s", value_parser = super::parse_duration)]
    pub duration: Duration,
    /// Sampling interval.
    #[arg(long, default_value = "500ms", value_parser = super::parse_duration)]
    pub interval: Duration,
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Power source flags (the meters `run` would use with the same flags) and
    /// `--state-dir`, where the result is stored.
    #[command(flatten)]
    pub sources: SourceArgs,
}

impl CalibrateArgs {
    /// What the calibration is built from.
    pub fn calibrate_config(&self) -> anyhow::Result<CalibrateConfig> {
        Ok(CalibrateConfig {
            probe: self.sources.probe_config(),
            pipeline: self.sources.pipeline_config(None)?,
            duration: self.duration,
            interval: self.interval,
            json: self.json,
        })
    }
}
