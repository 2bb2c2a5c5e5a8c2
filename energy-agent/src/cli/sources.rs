//! The flags shared by `run`, `top`, `measure`, `check` and `calibrate`: where power
//! and carbon figures come from, how energy is attributed, and where learned idle power
//! is kept.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use crate::{
    attribute::{
        AttributionConfig,
        idle::state,
        models::{ModelRule, ModelRules},
        split::IdlePolicy,
    },
    carbon::{
        CarbonOptions, DEFAULT_REFRESH,
        remote::{Api, RemoteOptions},
    },
    power::{SourceChoice, powercap, select::PowerOptions},
    probe::ProbeConfig,
    topology::PipelineConfig,
    units::Watts,
};

/// Source, carbon and attribution flags.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Where CPU/DRAM energy comes from: auto, rapl-perf, rapl-powercap, rapl-msr
    /// (opt-in: raw MSR access, see CVE-2020-8694), estimate, or replay:FILE.
    #[arg(long, default_value = "auto", value_parser = parse_choice, help_heading = "Power")]
    pub power_source: SourceChoice,
    /// Root of the powercap tree (tests and containers point it elsewhere).
    #[arg(long, default_value = powercap::DEFAULT_ROOT, help_heading = "Power")]
    pub powercap_root: PathBuf,
    /// Do not look for NVIDIA GPUs.
    #[arg(long, help_heading = "Power")]
    pub no_gpu: bool,
    /// The CUDA driver library (libcuda.so) whose calls are traced, when it is not in
    /// the linker cache or the usual driver directories.
    #[arg(long, value_name = "PATH", help_heading = "Power")]
    pub libcuda: Option<PathBuf>,

    /// Grid region for the bundled intensity table: ISO 3166 code (FR, FRA) or country
    /// name; without it the world average (475 g/kWh) is used.
    #[arg(long, value_name = "CODE", help_heading = "Carbon")]
    pub region: Option<String>,
    /// A fixed grid intensity, gCO2e/kWh (overrides every other intensity source).
    #[arg(long, value_name = "G_PER_KWH", help_heading = "Carbon")]
    pub carbon_intensity: Option<f64>,
    /// A time series of intensities: CSV lines `timestamp,g_per_kwh` (RFC 3339 or Unix s).
    #[arg(long, value_name = "CSV", help_heading = "Carbon")]
    pub carbon_file: Option<PathBuf>,
    /// Power usage effectiveness of the facility (carbon = kWh × intensity × PUE).
    #[arg(long, default_value_t = 1.0, help_heading = "Carbon")]
    pub pue: f64,
    /// The host's total embodied emissions, kgCO2e (SCI's TE); enables embodied carbon.
    #[arg(long, value_name = "KG", help_heading = "Carbon")]
    pub embodied_kgco2e: Option<f64>,
    /// The host's expected lifetime, years (SCI's EL).
    #[arg(long, default_value_t = 4.0, help_heading = "Carbon")]
    pub lifetime_years: f64,
    /// Live intensity from Electricity Maps for this zone (e.g. DE, US-CAL-CISO).
    #[arg(long, value_name = "ZONE", help_heading = "Carbon")]
    pub electricity_maps_zone: Option<String>,
    /// Electricity Maps API token.
    #[arg(
        long,
        env = "ELECTRICITYMAPS_TOKEN",
        hide_env_values = true,
        help_heading = "Carbon"
    )]
    pub electricity_maps_token: Option<String>,
    /// Electricity Maps API base URL.
    #[arg(
        long,
        default_value = "https://api.electricitymaps.com/v3",
        help_heading = "Carbon"
    )]
    pub electricity_maps_url: String,
    /// Live marginal intensity from WattTime for this region (e.g. CAISO_NORTH); needs a
    /// plan with forecast access.
    #[arg(long, value_name = "REGION", help_heading = "Carbon")]
    pub watttime_region: Option<String>,
    /// WattTime account name.
    #[arg(long, env = "WATTTIME_USERNAME", help_heading = "Carbon")]
    pub watttime_username: Option<String>,
    /// WattTime account password.
    #[arg(
        long,
        env = "WATTTIME_PASSWORD",
        hide_env_values = true,
        help_heading = "Carbon"
    )]
    pub watttime_password: Option<String>,
    /// WattTime API base URL.
    #[arg(
        long,
        default_value = "https://api.watttime.org",
        help_heading = "Carbon"
    )]
    pub watttime_url: String,
    /// How often a live intensity is fetched again.
    #[arg(long, default_value = "5m", value_parser = super::parse_duration, help_heading = "Carbon")]
    pub carbon_refresh: Duration,
    /// Timeout of one intensity request.
    #[arg(long, default_value = "5s", value_parser = super::parse_duration, help_heading = "Carbon")]
    pub carbon_timeout: Duration,

    /// A model: NAME=REGEX matched on the command line, then, in a pod, the container
    /// name, pod name and pod labels as KEY=VALUE (repeatable; first rule wins).
    #[arg(long = "model", value_name = "NAME=REGEX", value_parser = parse_model, help_heading = "Attribution")]
    pub models: Vec<ModelRule>,
    /// Idle energy: an explicit `idle` row (bucket) or spread over processes (share).
    #[arg(long, default_value = "bucket", value_parser = parse_idle, help_heading = "Attribution")]
    pub idle: IdlePolicy,
    /// Idle power of a domain or class: DOMAIN=WATTS (package-0=12.5, dram=3); others are
    /// the power model's or the lowest power seen.
    #[arg(long = "idle-power", value_name = "DOMAIN=WATTS", value_parser = parse_idle_power, help_heading = "Attribution")]
    pub idle_power: Vec<(String, f64)>,
    /// Where learned idle power is kept between runs (the `calibrate` result, good fits
    /// of runs); created if needed, and the agent goes on without it when it cannot be.
    #[arg(long, value_name = "DIR", default_value = state::DEFAULT_DIR, help_heading = "Attribution")]
    pub state_dir: PathBuf,
    /// Neither read nor write the state dir.
    #[arg(long, help_heading = "Attribution")]
    pub no_state: bool,
    /// Where pod metadata comes from.
    #[command(flatten)]
    pub k8s: super::k8s::K8sArgs,
}

fn parse_choice(s: &str) -> Result<SourceChoice, String> {
    s.parse()
}

fn parse_model(s: &str) -> Result<ModelRule, String> {
    s.parse()
}

fn parse_idle(s: &str) -> Result<IdlePolicy, String> {
    s.parse()
}

fn parse_idle_power(s: &str) -> Result<(String, f64), String> {
    let (d, w) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not DOMAIN=WATTS"))?;
    let w: f64 = w
        .parse()
        .ok()
        .filter(|w: &f64| w.is_finite() && *w >= 0.0)
        .ok_or_else(|| format!("{s:?}: watts must be a non-negative number"))?;
    let known = ["package", "dram", "gpu", "psys"];
    if !known.contains(&d) && d.parse::<crate::power::Domain>().is_err() {
        return Err(format!(
            "{s:?}: unknown domain (package, dram, gpu, psys or e.g. package-0)"
        ));
    }
    Ok((d.to_string(), w))
}

impl SourceArgs {
    /// The probe settings these flags describe (the rest at their defaults).
    pub fn probe_config(&self) -> ProbeConfig {
        ProbeConfig {
            libcuda: self.libcuda.clone(),
            ..ProbeConfig::default()
        }
    }

    /// The interval stages these flags describe, recording power to `record_power`.
    pub fn pipeline_config(&self, record_power: Option<PathBuf>) -> anyhow::Result<PipelineConfig> {
        Ok(PipelineConfig {
            power: self.power_options(),
            carbon: self.carbon_options().map_err(anyhow::Error::msg)?,
            attribution: self.attribution(),
            record_power,
            state_dir: self.state_dir(),
            pods: self.k8s.config().map_err(anyhow::Error::msg)?,
        })
    }

    /// The state dir, unless `--no-state`.
    pub fn state_dir(&self) -> Option<PathBuf> {
        (!self.no_state).then(|| self.state_dir.clone())
    }

    /// The power options these flags describe.
    pub fn power_options(&self) -> PowerOptions {
        PowerOptions {
            choice: self.power_source.clone(),
            powercap_root: self.powercap_root.clone(),
            gpu: !self.no_gpu,
            ..PowerOptions::default()
        }
    }

    /// The carbon options these flags describe.
    pub fn carbon_options(&self) -> Result<CarbonOptions, String> {
        let remote = |url: &str| RemoteOptions {
            base_url: url.to_string(),
            timeout: self.carbon_timeout,
            refresh: if self.carbon_refresh.is_zero() {
                DEFAULT_REFRESH
            } else {
                self.carbon_refresh
            },
        };
        let api = match (&self.electricity_maps_zone, &self.watttime_region) {
            (Some(_), Some(_)) => {
                return Err("choose one of --electricity-maps-zone and --watttime-region".into());
            }
            (Some(zone), None) => {
                let token = self.electricity_maps_token.clone().ok_or(
                    "--electricity-maps-zone needs a token: --electricity-maps-token or ELECTRICITYMAPS_TOKEN",
                )?;
                Some((
                    Api::ElectricityMaps {
                        zone: zone.clone(),
                        token,
                    },
                    remote(&self.electricity_maps_url),
                ))
            }
            (None, Some(region)) => {
                let (Some(username), Some(password)) =
                    (&self.watttime_username, &self.watttime_password)
                else {
                    return Err(
                        "--watttime-region needs WATTTIME_USERNAME and WATTTIME_PASSWORD".into(),
                    );
                };
                Some((
                    Api::WattTime {
                        region: region.clone(),
                        username: username.clone(),
                        password: password.clone(),
                    },
                    remote(&self.watttime_url),
                ))
            }
            (None, None) => None,
        };
        // The API's zone gives the table fallback when no --region is set.
        let region = self
            .region
            .clone()
            .or_else(|| self.electricity_maps_zone.clone());
        Ok(CarbonOptions {
            region,
            fixed: self.carbon_intensity,
            file: self.carbon_file.clone(),
            api,
            pue: self.pue,
            embodied_kgco2e: self.embodied_kgco2e,
            lifetime_years: self.lifetime_years,
        })
    }

    /// The attribution configuration these flags describe.
    pub fn attribution(&self) -> AttributionConfig {
        AttributionConfig {
            idle_policy: self.idle,
            idle_power: (self.idle_power.iter())
                .map(|(domain, w)| (domain.clone(), Watts(*w)))
                .collect(),
            models: ModelRules::new(self.models.clone()),
            idle_fit: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_power_flags() {
        assert_eq!(
            parse_idle_power("package-0=12.5").unwrap(),
            ("package-0".into(), 12.5)
        );
        assert_eq!(parse_idle_power("dram=3").unwrap(), ("dram".into(), 3.0));
        assert!(
            parse_idle_power("socket=3")
                .unwrap_err()
                .contains("unknown domain")
        );
        assert!(
            parse_idle_power("dram=-1")
                .unwrap_err()
                .contains("non-negative")
        );
        assert!(
            parse_idle_power("dram")
                .unwrap_err()
                .contains("DOMAIN=WATTS")
        );
    }
}
