//! `energy-agent check`: its flags.

use clap::Args;

use super::sources::SourceArgs;
use crate::check::CheckConfig;

/// Options of `energy-agent check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print the result as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Power source flags (the sources `run` would use with the same flags).
    #[command(flatten)]
    pub sources: SourceArgs,
}

impl CheckArgs {
    /// What the checks look at.
    pub fn check_config(&self) -> CheckConfig {
        CheckConfig {
            power: self.sources.power_options(),
            carbon: self.sources.carbon_options(),
            libcuda: self.sources.libcuda.clone(),
            state_dir: self.sources.state_dir(),
            idle_power: self.sources.attribution().idle_power,
            pods: self.sources.k8s.config(),
            json: self.json,
        }
    }
}
