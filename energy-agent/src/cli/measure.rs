//! `energy-agent measure -- CMD ARGS…`: its flags.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::{export::OtlpArgs, record::RecordArgs, sources::SourceArgs};
use crate::topology::MeasureConfig;

/// Options of `energy-agent measure`.
#[derive(Debug, Args)]
pub struct MeasureArgs {
    /// Print the report as one JSON object (the schema in the README).
    #[arg(long)]
    pub json: bool,
    /// Write the report to FILE instead of stderr.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Sampling interval while the command runs.
    #[arg(long, default_value = "250ms", value_parser = super::parse_duration)]
    pub interval: Duration,
    /// Source, carbon and attribution flags.
    #[command(flatten)]
    pub sources: SourceArgs,
    /// With an endpoint, one span for the command goes there too.
    #[command(flatten)]
    pub otlp: OtlpArgs,
    /// History flags.
    #[command(flatten)]
    pub record: RecordArgs,
    /// Check the command against its budget in this config file (`[budget.MODEL]`,
    /// MODEL from `--label model=NAME` or the file's only budget): when the command
    /// succeeds, exit 1 over budget, 2 when it cannot be checked.
    #[arg(long, value_name = "FILE")]
    pub budget: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

impl MeasureArgs {
    /// What the measurement is built from.
    pub fn measure_config(&self) -> anyhow::Result<MeasureConfig> {
        Ok(MeasureConfig {
            probe: self.sources.probe_config(),
            pipeline: self.sources.pipeline_config(None)?,
            interval: self.interval,
            command: self.command.clone(),
            json: self.json,
            output: self.output.clone(),
            otlp: self.otlp.forward_config(1, 1)?,
            record: (self.record)
                .record_config(&format!("{:?}", self.sources.idle).to_lowercase())?,
            budget: match &self.budget {
                None => None,
                Some(path) => {
                    let budgets = super::gate::load_budgets(path)?;
                    let model = (self.record.labels.iter())
                        .find(|(k, _)| k == "model")
                        .map(|(_, v)| v.as_str());
                    let (model, budget) = super::gate::pick_budget(&budgets, model)?;
                    Some((model.to_string(), *budget))
                }
            },
        })
    }
}
