//! `energy-agent top`: its flags.

use std::time::Duration;

use clap::Args;

use super::sources::SourceArgs;

/// Options of `energy-agent top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Refresh interval.
    #[arg(long, default_value = "1s", value_parser = super::parse_duration)]
    pub interval: Duration,
    /// Source, carbon and attribution flags.
    #[command(flatten)]
    pub sources: SourceArgs,
}
