//! The source flags shared by `run`, `check` (and later `measure`, `top`): where power
//! comes from.

use std::path::PathBuf;

use clap::Args;

use crate::power::{SourceChoice, powercap, select::PowerOptions};

/// Power source flags.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// Where CPU/DRAM energy comes from: auto, rapl-perf, rapl-powercap, rapl-msr
    /// (opt-in: raw MSR access, see CVE-2020-8694), estimate, or replay:FILE.
    #[arg(long, default_value = "auto", value_parser = parse_choice)]
    pub power_source: SourceChoice,
    /// Root of the powercap tree (tests and containers point it elsewhere).
    #[arg(long, default_value = powercap::DEFAULT_ROOT)]
    pub powercap_root: PathBuf,
    /// Do not look for NVIDIA GPUs.
    #[arg(long)]
    pub no_gpu: bool,
}

fn parse_choice(s: &str) -> Result<SourceChoice, String> {
    s.parse()
}

impl SourceArgs {
    /// The power options these flags describe.
    pub fn power_options(&self) -> PowerOptions {
        PowerOptions {
            choice: self.power_source.clone(),
            powercap_root: self.powercap_root.clone(),
            gpu: !self.no_gpu,
            ..PowerOptions::default()
        }
    }
}
