//! The TOML config file (`--config FILE` or `ENERGY_AGENT_CONFIG`): everything the
//! source, carbon and attribution flags set, plus `run`'s own; a flag given on the
//! command line (or through its environment variable) overrides the file.
//!
//! ```toml
//! [power]
//! source = "auto"            # --power-source
//! powercap_root = "/sys/class/powercap"
//! gpu = true                 # false = --no-gpu
//! libcuda = "/usr/lib/x86_64-linux-gnu/libcuda.so.1"   # --libcuda
//!
//! [carbon]
//! region = "FR"              # or: intensity = 56.0 / file = "intensity.csv"
//! pue = 1.2
//! embodied_kgco2e = 1200.0
//! lifetime_years = 4.0
//! refresh = "5m"
//! timeout = "5s"
//! # [carbon.electricity_maps] zone, token, url / [carbon.watttime] region, username, password, url
//!
//! [attribution]
//! idle = "bucket"            # or "share"
//! idle_power = { package = 12.0, "dram-0" = 3.0 }
//! state_dir = "/var/lib/energy-agent"   # --state-dir
//! state = true               # false = --no-state
//!
//! [[model]]
//! name = "llama"
//! regex = "vllm.*llama"
//!
//! [kubernetes]               # pod metadata (README "Containers and pods")
//! api = true                 # --k8s-api; or kubelet_url = "https://127.0.0.1:10250/pods"
//! node_name = "node-1"       # --k8s-node-name (else NODE_NAME)
//! labels = ["app.kubernetes.io/name"]   # --k8s-label
//! refresh = "60s"            # also api_url, token_file, ca_file
//!
//! [run]
//! interval = "1s"
//! output = "table"
//! top = 10
//!
//! [budget.llama]             # energy-agent gate, measure --budget
//! max_gco2e_per_1k_requests = 2.0
//! max_joules_per_token = 0.5
//! max_kwh_per_run = 1.0
//! ```

use std::{collections::BTreeMap, path::Path};

use clap::{ArgMatches, parser::ValueSource};
use serde::Deserialize;

use super::{
    run::{Output, RunArgs},
    sources::SourceArgs,
};
use crate::attribute::{models::ModelRule, split::IdlePolicy};

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Power sources.
    #[serde(default)]
    pub power: PowerSection,
    /// Carbon intensity, PUE, embodied carbon.
    #[serde(default)]
    pub carbon: CarbonSection,
    /// Attribution.
    #[serde(default)]
    pub attribution: AttributionSection,
    /// Model rules, in priority order (after any `--model` flags).
    #[serde(default)]
    pub model: Vec<ModelSection>,
    /// Pod metadata.
    #[serde(default)]
    pub kubernetes: KubernetesSection,
    /// `run`'s own settings.
    #[serde(default)]
    pub run: RunSection,
    /// Carbon budgets per model, which `energy-agent gate` and `measure --budget` check.
    #[serde(default)]
    pub budget: BTreeMap<String, crate::gate::Budget>,
}

/// `[power]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerSection {
    /// `--power-source`.
    pub source: Option<String>,
    /// `--powercap-root`.
    pub powercap_root: Option<std::path::PathBuf>,
    /// Look for GPUs (false = `--no-gpu`).
    pub gpu: Option<bool>,
    /// `--libcuda`.
    pub libcuda: Option<std::path::PathBuf>,
}

/// `[carbon]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CarbonSection {
    /// `--region`.
    pub region: Option<String>,
    /// `--carbon-intensity`.
    pub intensity: Option<f64>,
    /// `--carbon-file`.
    pub file: Option<std::path::PathBuf>,
    /// `--pue`.
    pub pue: Option<f64>,
    /// `--embodied-kgco2e`.
    pub embodied_kgco2e: Option<f64>,
    /// `--lifetime-years`.
    pub lifetime_years: Option<f64>,
    /// `--carbon-refresh` (humantime).
    pub refresh: Option<String>,
    /// `--carbon-timeout` (humantime).
    pub timeout: Option<String>,
    /// `[carbon.electricity_maps]`.
    pub electricity_maps: Option<ElectricityMapsSection>,
    /// `[carbon.watttime]`.
    pub watttime: Option<WattTimeSection>,
}

/// `[carbon.electricity_maps]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElectricityMapsSection {
    /// Zone.
    pub zone: String,
    /// Token (else ELECTRICITYMAPS_TOKEN).
    pub token: Option<String>,
    /// Base URL.
    pub url: Option<String>,
}

/// `[carbon.watttime]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WattTimeSection {
    /// Region.
    pub region: String,
    /// Account (else WATTTIME_USERNAME).
    pub username: Option<String>,
    /// Password (else WATTTIME_PASSWORD).
    pub password: Option<String>,
    /// Base URL.
    pub url: Option<String>,
}

/// `[attribution]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributionSection {
    /// `--idle`.
    pub idle: Option<IdlePolicy>,
    /// `--idle-power`, domain or class → watts.
    #[serde(default)]
    pub idle_power: BTreeMap<String, f64>,
    /// `--state-dir`.
    pub state_dir: Option<std::path::PathBuf>,
    /// Keep learned idle power between runs (false = `--no-state`).
    pub state: Option<bool>,
}

/// `[[model]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Model name.
    pub name: String,
    /// Regex on the command line.
    pub regex: String,
}

/// `[kubernetes]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSection {
    /// `--kubelet-url`.
    pub kubelet_url: Option<String>,
    /// `--k8s-api`.
    pub api: Option<bool>,
    /// `--k8s-api-url`.
    pub api_url: Option<String>,
    /// `--k8s-node-name`.
    pub node_name: Option<String>,
    /// `--k8s-label`, after the command line's.
    #[serde(default)]
    pub labels: Vec<String>,
    /// `--k8s-token-file`.
    pub token_file: Option<std::path::PathBuf>,
    /// `--k8s-ca-file`.
    pub ca_file: Option<std::path::PathBuf>,
    /// `--k8s-refresh` (humantime).
    pub refresh: Option<String>,
}

/// `[run]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// `--interval` (humantime).
    pub interval: Option<String>,
    /// `--output` (table or json).
    pub output: Option<String>,
    /// `--top`.
    pub top: Option<usize>,
}

impl Config {
    /// Reads and parses a config file; errors name the file and the problem.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))
    }

    /// Parses config text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// Fills every source/carbon/attribution setting the command line left at its
    /// default (`m` are the subcommand's matches).
    pub fn apply_sources(&self, args: &mut SourceArgs, m: &ArgMatches) -> Result<(), String> {
        let flags = Flags(m);
        self.apply_power(args, flags)?;
        self.apply_carbon(args, flags)?;
        self.apply_attribution(args, flags)?;
        self.apply_kubernetes(args, flags)
    }

    fn apply_kubernetes(&self, args: &mut SourceArgs, flags: Flags) -> Result<(), String> {
        let (k, a) = (&self.kubernetes, &mut args.k8s);
        flags.take(
            &mut a.kubelet_url,
            "kubelet_url",
            k.kubelet_url.clone().map(Some),
        );
        flags.take(&mut a.k8s_api, "k8s_api", k.api);
        flags.take(
            &mut a.k8s_api_url,
            "k8s_api_url",
            k.api_url.clone().map(Some),
        );
        flags.take(
            &mut a.k8s_node_name,
            "k8s_node_name",
            k.node_name.clone().map(Some),
        );
        flags.take(
            &mut a.k8s_token_file,
            "k8s_token_file",
            k.token_file.clone(),
        );
        flags.take(&mut a.k8s_ca_file, "k8s_ca_file", k.ca_file.clone());
        let refresh = k
            .refresh
            .as_deref()
            .map(super::parse_duration)
            .transpose()?;
        flags.take(&mut a.k8s_refresh, "k8s_refresh", refresh);
        for label in &k.labels {
            if !a.k8s_labels.contains(label) {
                a.k8s_labels.push(label.clone());
            }
        }
        Ok(())
    }

    fn apply_power(&self, args: &mut SourceArgs, flags: Flags) -> Result<(), String> {
        let p = &self.power;
        let source = p.source.as_deref().map(str::parse).transpose()?;
        flags.take(&mut args.power_source, "power_source", source);
        flags.take(
            &mut args.powercap_root,
            "powercap_root",
            p.powercap_root.clone(),
        );
        flags.take(&mut args.no_gpu, "no_gpu", p.gpu.map(|gpu| !gpu));
        flags.take(&mut args.libcuda, "libcuda", p.libcuda.clone().map(Some));
        Ok(())
    }

    fn apply_carbon(&self, args: &mut SourceArgs, flags: Flags) -> Result<(), String> {
        let c = &self.carbon;
        flags.take(&mut args.region, "region", c.region.clone().map(Some));
        flags.take(
            &mut args.carbon_intensity,
            "carbon_intensity",
            c.intensity.map(Some),
        );
        flags.take(
            &mut args.carbon_file,
            "carbon_file",
            c.file.clone().map(Some),
        );
        flags.take(&mut args.pue, "pue", c.pue);
        let embodied = c.embodied_kgco2e.map(Some);
        flags.take(&mut args.embodied_kgco2e, "embodied_kgco2e", embodied);
        flags.take(&mut args.lifetime_years, "lifetime_years", c.lifetime_years);
        let duration = |s: &Option<String>| s.as_deref().map(super::parse_duration).transpose();
        flags.take(
            &mut args.carbon_refresh,
            "carbon_refresh",
            duration(&c.refresh)?,
        );
        flags.take(
            &mut args.carbon_timeout,
            "carbon_timeout",
            duration(&c.timeout)?,
        );
        if let Some(em) = &c.electricity_maps {
            let zone = Some(Some(em.zone.clone()));
            flags.take(
                &mut args.electricity_maps_zone,
                "electricity_maps_zone",
                zone,
            );
            let token = em.token.clone().map(Some);
            flags.take(
                &mut args.electricity_maps_token,
                "electricity_maps_token",
                token,
            );
            flags.take(
                &mut args.electricity_maps_url,
                "electricity_maps_url",
                em.url.clone(),
            );
        }
        if let Some(wt) = &c.watttime {
            let region = Some(Some(wt.region.clone()));
            flags.take(&mut args.watttime_region, "watttime_region", region);
            let username = wt.username.clone().map(Some);
            flags.take(&mut args.watttime_username, "watttime_username", username);
            let password = wt.password.clone().map(Some);
            flags.take(&mut args.watttime_password, "watttime_password", password);
            flags.take(&mut args.watttime_url, "watttime_url", wt.url.clone());
        }
        Ok(())
    }

    fn apply_attribution(&self, args: &mut SourceArgs, flags: Flags) -> Result<(), String> {
        let a = &self.attribution;
        flags.take(&mut args.idle, "idle", a.idle);
        flags.take(&mut args.state_dir, "state_dir", a.state_dir.clone());
        flags.take(&mut args.no_state, "no_state", a.state.map(|keep| !keep));
        // Lists: the command line's entries first (first match wins), then the file's.
        for (domain, watts) in &a.idle_power {
            if !args.idle_power.iter().any(|(d, _)| d == domain) {
                args.idle_power.push((domain.clone(), *watts));
            }
        }
        for rule in &self.model {
            args.models.push(ModelRule::new(&rule.name, &rule.regex)?);
        }
        Ok(())
    }

    /// Fills `run`'s own settings the command line left at their defaults.
    pub fn apply_run(&self, args: &mut RunArgs, m: &ArgMatches) -> Result<(), String> {
        self.apply_sources(&mut args.sources, m)?;
        let flags = Flags(m);
        let r = &self.run;
        let interval = r
            .interval
            .as_deref()
            .map(super::parse_duration)
            .transpose()?;
        flags.take(&mut args.interval, "interval", interval);
        let output = match r.output.as_deref() {
            None => None,
            Some("table") => Some(Output::Table),
            Some("json") => Some(Output::Json),
            Some("none") => Some(Output::None),
            Some(other) => return Err(format!("[run] output {other:?}: table, json or none")),
        };
        flags.take(&mut args.output, "output", output.map(Some));
        flags.take(&mut args.top, "top", r.top);
        Ok(())
    }
}

/// The command line's matches: which settings it gave (a flag or its environment
/// variable), which the file may then fill.
#[derive(Clone, Copy)]
struct Flags<'a>(&'a ArgMatches);

impl Flags<'_> {
    /// Sets `slot` to the file's `value` unless the command line gave flag `id`.
    fn take<T>(self, slot: &mut T, id: &str, value: Option<T>) {
        let given = matches!(
            self.0.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if let Some(v) = value
            && !given
        {
            *slot = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::{CommandFactory, FromArgMatches};
    use std::time::Duration;

    const FILE: &str = r#"
[power]
source = "estimate"
gpu = false

[carbon]
region = "FR"
pue = 1.3
refresh = "10m"

[attribution]
idle = "share"
idle_power = { package = 12.0 }
state_dir = "/srv/energy"

[[model]]
name = "llama"
regex = "llama"

[kubernetes]
api = true
node_name = "from-file"
labels = ["app", "team"]
refresh = "30s"

[run]
interval = "2s"
top = 5
"#;

    fn run_args(argv: &[&str]) -> RunArgs {
        let mut full = vec!["energy-agent", "run"];
        full.extend_from_slice(argv);
        let matches = Cli::command().try_get_matches_from(full).unwrap();
        let cli = Cli::from_arg_matches(&matches).unwrap();
        let Command::Run(mut args) = cli.command else {
            panic!("run")
        };
        let (_, sub) = matches.subcommand().unwrap();
        Config::parse(FILE)
            .unwrap()
            .apply_run(&mut args, sub)
            .unwrap();
        *args
    }

    #[test]
    fn the_file_fills_what_flags_leave_at_default() {
        let a = run_args(&[]);
        assert_eq!(a.sources.power_source, crate::power::SourceChoice::Estimate);
        assert!(a.sources.no_gpu);
        assert_eq!(a.sources.region.as_deref(), Some("FR"));
        assert_eq!(a.sources.pue, 1.3);
        assert_eq!(a.sources.carbon_refresh, Duration::from_secs(600));
        assert_eq!(a.sources.idle, IdlePolicy::Share);
        assert_eq!(a.sources.idle_power, vec![("package".to_string(), 12.0)]);
        assert_eq!(a.sources.state_dir(), Some("/srv/energy".into()));
        assert_eq!(a.sources.models.len(), 1);
        let k8s = &a.sources.k8s;
        assert!(k8s.k8s_api);
        assert_eq!(k8s.k8s_refresh, Duration::from_secs(30));
        assert_eq!(k8s.k8s_labels, ["app", "team"]);
        assert_eq!(a.interval, Duration::from_secs(2));
        assert_eq!(a.top, 5);
    }

    #[test]
    fn flags_override_the_file() {
        let a = run_args(&[
            "--pue",
            "1.1",
            "--region",
            "DE",
            "--interval",
            "500ms",
            "--idle",
            "bucket",
            "--idle-power",
            "package=3",
            "--model",
            "first=x",
            "--state-dir",
            "/tmp/s",
            "--k8s-refresh",
            "5s",
            "--k8s-label",
            "team",
            "--k8s-node-name",
            "from-flag",
        ]);
        assert_eq!(a.sources.state_dir(), Some("/tmp/s".into()));
        let k8s = &a.sources.k8s;
        assert_eq!(k8s.k8s_refresh, Duration::from_secs(5));
        assert_eq!(
            k8s.k8s_labels,
            ["team", "app"],
            "the flag's first, no twice"
        );
        assert_eq!(k8s.k8s_node_name.as_deref(), Some("from-flag"));
        assert_eq!(a.sources.pue, 1.1);
        assert_eq!(a.sources.region.as_deref(), Some("DE"));
        assert_eq!(a.interval, Duration::from_millis(500));
        assert_eq!(a.sources.idle, IdlePolicy::Bucket);
        assert_eq!(a.sources.idle_power, vec![("package".to_string(), 3.0)]);
        assert_eq!(
            a.sources.models[0].name, "first",
            "command-line rules come first"
        );
        assert_eq!(a.sources.models[1].name, "llama");
        assert_eq!(a.top, 5, "untouched flags still come from the file");
    }

    #[test]
    fn budgets_per_model() {
        let c = Config::parse(
            "[budget.llama]\nmax_joules_per_token = 0.5\nmax_kwh_per_run = 1.0\n[budget.\"mistral-7b\"]\nmax_gco2e_per_1k_requests = 2\n",
        )
        .unwrap();
        assert_eq!(c.budget["llama"].max_joules_per_token, Some(0.5));
        assert_eq!(c.budget["llama"].max_gco2e_per_1k_requests, None);
        assert_eq!(c.budget["mistral-7b"].max_gco2e_per_1k_requests, Some(2.0));
        let e = Config::parse("[budget.llama]\nmax_joules = 1\n").unwrap_err();
        assert!(e.contains("max_joules"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        let e = Config::parse("[power]\nsorce = \"auto\"\n").unwrap_err();
        assert!(e.contains("sorce"), "{e}");
        let e = Config::parse("[attribution]\nidle = \"half\"\n").unwrap_err();
        assert!(e.contains("half") || e.contains("variant"), "{e}");
        let mut args = run_args(&[]);
        let matches = Cli::command()
            .try_get_matches_from(["energy-agent", "run"])
            .unwrap();
        let (_, sub) = matches.subcommand().unwrap();
        let bad = Config::parse("[power]\nsource = \"rapl\"\n").unwrap();
        assert!(
            bad.apply_run(&mut args, sub)
                .unwrap_err()
                .contains("unknown power source")
        );
    }
}
