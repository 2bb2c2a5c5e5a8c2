//! `energy-agent when --duration D`: its flags.

use std::time::{Duration, SystemTime};

use clap::Args;

use super::sources::SourceArgs;
use crate::{
    carbon::{
        forecast::{self, Forecast},
        series::Series,
    },
    when,
};

/// Options of `energy-agent when`.
#[derive(Debug, Args)]
pub struct WhenArgs {
    /// How long the job runs.
    #[arg(long, value_parser = super::parse_duration)]
    pub duration: Duration,
    /// It must finish within this long from now (or --from).
    #[arg(long, default_value = "24h", value_parser = super::parse_duration)]
    pub within: Duration,
    /// Plan from this time instead of now (RFC 3339 or Unix seconds).
    #[arg(long, value_name = "TIME")]
    pub from: Option<String>,
    /// The job's energy, kWh, for the expected saving in grams.
    #[arg(long, value_name = "KWH", conflicts_with = "power_w")]
    pub energy_kwh: Option<f64>,
    /// Or its average power, W.
    #[arg(long, value_name = "W")]
    pub power_w: Option<f64>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    /// Where the forecast comes from: --carbon-file CSV, --electricity-maps-zone or
    /// --watttime-region (and --pue for the saving).
    #[command(flatten)]
    pub sources: SourceArgs,
}

impl WhenArgs {
    /// Prints the plan; returns the exit code.
    pub fn run(&self) -> anyhow::Result<i32> {
        let now = SystemTime::now();
        let from = match &self.from {
            Some(t) => {
                let ns = crate::report::parse_time(t, now)
                    .map_err(|e| anyhow::anyhow!("--from: {e}"))?;
                std::time::UNIX_EPOCH + Duration::from_nanos(ns)
            }
            None => now,
        };
        let f = self.forecast()?;
        let energy = match (self.energy_kwh, self.power_w) {
            (Some(kwh), _) => Some((kwh, self.sources.pue)),
            (None, Some(w)) => Some((when::kwh(w, self.duration), self.sources.pue)),
            _ => None,
        };
        let p =
            when::plan(&f, from, self.duration, self.within, energy).map_err(anyhow::Error::msg)?;
        if self.json {
            println!("{}", serde_json::to_string(&p)?);
        } else {
            print!("{}", when::render(&p, self.duration));
        }
        Ok(0)
    }

    fn forecast(&self) -> anyhow::Result<Forecast> {
        let opts = self.sources.carbon_options().map_err(anyhow::Error::msg)?;
        if let Some(path) = &opts.file {
            return Ok(Forecast::from_series(
                &Series::load(path).map_err(anyhow::Error::msg)?,
            ));
        }
        match &opts.api {
            Some((api, remote)) => {
                forecast::fetch(api, remote, self.within).map_err(anyhow::Error::msg)
            }
            None => anyhow::bail!(
                "when needs a forecast: --carbon-file CSV, --electricity-maps-zone ZONE or --watttime-region REGION"
            ),
        }
    }
}
