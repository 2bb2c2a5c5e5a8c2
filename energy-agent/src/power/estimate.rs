//! estimate: a documented power model for hosts with no usable meter (cloud VMs, and
//! hosts whose RAPL counters read zero). Always labelled estimated.
//!
//! Per package: `P = P_idle + (P_max − P_idle) · u`, with `u` the package's busy fraction
//! in the interval (from the probe's exact on-CPU time). The figures:
//! - bare metal with a CPU model in the bundled table (`data/cpu_tdp.csv`, from
//!   CodeCarbon 3.3.2, MIT): `P_max` = TDP per package, `P_idle` = TDP × 0.74 / 3.5;
//! - otherwise (unknown CPUs, and every virtual machine, whose vCPUs are a slice of a
//!   socket the guest cannot see): per hardware thread 0.74 W idle and 3.5 W at full
//!   load, Cloud Carbon Footprint's averages from SPECpower results (Apache-2.0);
//! - DRAM: 0.392 W per GiB installed (Cloud Carbon Footprint's memory coefficient),
//!   split evenly across packages; a constant, so all of it is idle energy.

use crate::units::{Nanos, Watts};
use std::path::Path;

use super::{
    Domain, PowerReading, PowerSource, SampleContext, SourceInfo, energy, packages::CpuPackages,
};

/// Watts per hardware thread at 0% utilisation (CCF average, SPECpower-derived).
pub const THREAD_IDLE_W: f64 = 0.74;
/// Watts per hardware thread at 100% utilisation (CCF average, SPECpower-derived).
pub const THREAD_MAX_W: f64 = 3.5;
/// Watts per GiB of installed memory (CCF memory coefficient, 0.000392 kWh/GB·h).
pub const DRAM_W_PER_GIB: f64 = 0.392;

/// The bundled CPU model → TDP table.
const TDP_TABLE: &str = include_str!("../../data/cpu_tdp.csv");

const INFO: SourceInfo = SourceInfo {
    name: "estimate",
    estimated: true,
    resolution_j: 0.0,
};

/// What the model needs to know about the host.
#[derive(Clone, Debug, PartialEq)]
pub struct HostFacts {
    /// `model name` from /proc/cpuinfo.
    pub model_name: String,
    /// Hardware threads (logical CPUs) online.
    pub threads: u32,
    /// Whether the CPU flags include `hypervisor` (a virtual machine).
    pub hypervisor: bool,
    /// Installed memory, GiB (MemTotal).
    pub mem_gib: f64,
}

impl HostFacts {
    /// Reads `<proc>/cpuinfo` and `<proc>/meminfo`.
    pub fn read(proc_root: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string(proc_root.join("cpuinfo")).unwrap_or_default();
        let meminfo = std::fs::read_to_string(proc_root.join("meminfo")).unwrap_or_default();
        Self::parse(&cpuinfo, &meminfo)
    }

    /// Parses the text of /proc/cpuinfo and /proc/meminfo.
    pub fn parse(cpuinfo: &str, meminfo: &str) -> Self {
        let field = |line: &str, key: &str| -> Option<String> {
            let (k, v) = line.split_once(':')?;
            (k.trim() == key).then(|| v.trim().to_string())
        };
        let model_name = cpuinfo
            .lines()
            .find_map(|l| field(l, "model name"))
            .unwrap_or_else(|| "unknown".into());
        let threads = cpuinfo
            .lines()
            .filter(|l| field(l, "processor").is_some())
            .count()
            .max(1) as u32;
        let hypervisor = cpuinfo
            .lines()
            .find_map(|l| field(l, "flags"))
            .is_some_and(|f| f.split_whitespace().any(|w| w == "hypervisor"));
        let mem_kib: f64 = meminfo
            .lines()
            .find_map(|l| field(l, "MemTotal"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Self {
            model_name,
            threads,
            hypervisor,
            mem_gib: mem_kib / (1024.0 * 1024.0),
        }
    }

    /// This host's facts.
    pub fn host() -> Self {
        Self::read(Path::new("/proc"))
    }
}

/// A CPU model name without trademarks, clock speed and filler words, for matching:
/// `Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz` → `intel xeon platinum 8375c`.
pub fn normalize_model(name: &str) -> String {
    let name = name.split(" @ ").next().unwrap_or(name);
    let cleaned = name
        .replace("(R)", " ")
        .replace("(r)", " ")
        .replace("(TM)", " ")
        .replace("(tm)", " ");
    cleaned
        .split_whitespace()
        .filter(|w| !matches!(w.to_ascii_lowercase().as_str(), "cpu" | "processor"))
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The table entry for a CPU model: exact match after normalisation, else the longest
/// entry (with a model number in it) found as whole words in the name.
pub fn lookup_tdp(model_name: &str) -> Option<(String, f64)> {
    let wanted = normalize_model(model_name);
    let padded = format!(" {wanted} ");
    let mut best: Option<(String, f64, usize)> = None;
    for line in TDP_TABLE.lines().skip_while(|l| l.starts_with('#')).skip(1) {
        let Some((name, tdp)) = line.rsplit_once(',') else {
            continue;
        };
        let Ok(tdp) = tdp.parse::<f64>() else {
            continue;
        };
        let entry = normalize_model(name);
        if entry == wanted {
            return Some((name.to_string(), tdp));
        }
        let contained =
            entry.bytes().any(|b| b.is_ascii_digit()) && padded.contains(&format!(" {entry} "));
        if contained && best.as_ref().is_none_or(|b| entry.len() > b.2) {
            best = Some((name.to_string(), tdp, entry.len()));
        }
    }
    best.map(|(name, tdp, _)| (name, tdp))
}

/// Where a package's figures come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Basis {
    /// The CPU model's TDP from the bundled table.
    Tdp {
        /// Table entry.
        model: String,
        /// Watts per package.
        tdp_w: f64,
    },
    /// Per-thread defaults (unknown CPU, or a virtual machine).
    PerThread {
        /// Why the table was not used.
        reason: String,
    },
}

/// Idle and full-load watts of one package.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Figures {
    /// Watts at 0% utilisation.
    pub idle_w: f64,
    /// Watts at 100% utilisation.
    pub max_w: f64,
}

impl Figures {
    /// Power at utilisation `u` (clamped to 0..=1).
    pub fn power_w(&self, u: f64) -> f64 {
        self.idle_w + (self.max_w - self.idle_w) * u.clamp(0.0, 1.0)
    }
}

/// The model's figures for one host.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    /// Where the CPU figures come from.
    pub basis: Basis,
    /// Figures per package.
    pub packages: Vec<(u32, Figures)>,
    /// DRAM watts (whole host).
    pub dram_w: f64,
}

impl Model {
    /// Builds the model for a host.
    pub fn for_host(facts: &HostFacts, topology: &CpuPackages) -> Self {
        let table = lookup_tdp(&facts.model_name);
        let basis = match (facts.hypervisor, table) {
            (false, Some((model, tdp_w))) => Basis::Tdp { model, tdp_w },
            (true, _) => Basis::PerThread {
                reason: "virtual machine: its vCPUs are an unknown share of the host's sockets"
                    .into(),
            },
            (false, None) => Basis::PerThread {
                reason: format!("CPU model {:?} is not in the table", facts.model_name),
            },
        };
        let packages = topology
            .packages()
            .into_iter()
            .map(|p| {
                let figures = match &basis {
                    Basis::Tdp { tdp_w, .. } => Figures {
                        idle_w: tdp_w * THREAD_IDLE_W / THREAD_MAX_W,
                        max_w: *tdp_w,
                    },
                    Basis::PerThread { .. } => {
                        let threads = topology.cpus_of(p).len() as f64;
                        Figures {
                            idle_w: threads * THREAD_IDLE_W,
                            max_w: threads * THREAD_MAX_W,
                        }
                    }
                };
                (p, figures)
            })
            .collect();
        Self {
            basis,
            packages,
            dram_w: facts.mem_gib * DRAM_W_PER_GIB,
        }
    }

    /// The model and its figures in one paragraph, for `check` and the README.
    pub fn explain(&self) -> String {
        let basis = match &self.basis {
            Basis::Tdp { model, tdp_w } => format!(
                "{model}: TDP {tdp_w} W per package (CodeCarbon table), idle = TDP × {THREAD_IDLE_W}/{THREAD_MAX_W}"
            ),
            Basis::PerThread { reason } => format!(
                "{THREAD_IDLE_W}–{THREAD_MAX_W} W per hardware thread (Cloud Carbon Footprint averages; {reason})"
            ),
        };
        let packages: Vec<String> = self
            .packages
            .iter()
            .map(|(p, f)| format!("package-{p} {:.2}–{:.2} W", f.idle_w, f.max_w))
            .collect();
        format!(
            "P = P_idle + (P_max − P_idle)·u; {basis}; {}; DRAM {:.2} W ({DRAM_W_PER_GIB} W/GiB installed)",
            packages.join(", "),
            self.dram_w
        )
    }
}

/// The estimate source.
pub struct Estimate {
    model: Model,
    topology: CpuPackages,
}

impl Estimate {
    /// A model of `facts` on `topology`.
    pub fn new(facts: &HostFacts, topology: CpuPackages) -> Self {
        Self {
            model: Model::for_host(facts, &topology),
            topology,
        }
    }

    /// The model's figures.
    pub fn model(&self) -> &Model {
        &self.model
    }
}

impl PowerSource for Estimate {
    fn info(&self) -> SourceInfo {
        INFO
    }

    fn domains(&self) -> Vec<Domain> {
        let mut d: Vec<Domain> = self
            .model
            .packages
            .iter()
            .map(|(p, _)| Domain::Package(*p))
            .collect();
        d.extend(self.model.packages.iter().map(|(p, _)| Domain::Dram(*p)));
        d
    }

    fn sample(&mut self, ctx: &SampleContext) -> PowerReading {
        let mut reading = PowerReading::default();
        if ctx.elapsed == Nanos(0) {
            return reading;
        }
        let dram_share = Watts(self.model.dram_w / self.model.packages.len().max(1) as f64);
        for (package, figures) in &self.model.packages {
            let cpus = self.topology.cpus_of(*package);
            let busy: Nanos = cpus
                .iter()
                .map(|&c| ctx.cpu_busy.get(c as usize).copied().unwrap_or_default())
                .sum();
            let u = busy.seconds() / (ctx.elapsed.seconds() * cpus.len().max(1) as f64);
            reading.energies.push(energy(
                &INFO,
                Domain::Package(*package),
                Watts(figures.power_w(u)) * ctx.elapsed,
            ));
            reading.energies.push(energy(
                &INFO,
                Domain::Dram(*package),
                dram_share * ctx.elapsed,
            ));
        }
        reading
    }

    fn idle_power(&self) -> Vec<(Domain, Watts)> {
        let dram_share = Watts(self.model.dram_w / self.model.packages.len().max(1) as f64);
        self.model
            .packages
            .iter()
            .flat_map(|(p, f)| {
                [
                    (Domain::Package(*p), Watts(f.idle_w)),
                    (Domain::Dram(*p), dram_share),
                ]
            })
            .collect()
    }

    fn describe(&self) -> String {
        format!("estimate (estimated): {}", self.model.explain())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(model: &str, threads: u32, hypervisor: bool) -> HostFacts {
        HostFacts {
            model_name: model.into(),
            threads,
            hypervisor,
            mem_gib: 16.0,
        }
    }

    #[test]
    fn parses_this_machines_cpuinfo_shape() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu vme hypervisor lahf_lm\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu vme hypervisor lahf_lm\n";
        let f = HostFacts::parse(cpuinfo, "MemTotal:       24684084 kB\nMemFree: 1 kB\n");
        assert_eq!(f.model_name, "Intel(R) Xeon(R) Processor");
        assert_eq!(f.threads, 2);
        assert!(f.hypervisor);
        assert!((f.mem_gib - 23.54).abs() < 0.01, "{}", f.mem_gib);
    }

    #[test]
    fn normalizes_and_finds_models() {
        assert_eq!(
            normalize_model("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"),
            "intel xeon platinum 8375c"
        );
        assert_eq!(
            lookup_tdp("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"),
            Some(("Intel Xeon Platinum 8375C".into(), 300.0))
        );
        assert_eq!(
            lookup_tdp("AMD EPYC 7763 64-Core Processor"),
            Some(("AMD EPYC 7763".into(), 280.0))
        );
        assert_eq!(lookup_tdp("Intel(R) Xeon(R) Processor"), None);
        assert_eq!(lookup_tdp("Mystery CPU 3000"), None);
    }

    #[test]
    fn hand_computed_sapphire_rapids() {
        // Xeon Platinum 8480+: TDP 350 W. Idle = 350 × 0.74 / 3.5 = 74 W.
        // At u = 0.25: 74 + (350 − 74) × 0.25 = 143 W.
        let m = Model::for_host(
            &facts("Intel(R) Xeon(R) Platinum 8480+", 112, false),
            &CpuPackages::single(112),
        );
        let f = m.packages[0].1;
        assert!((f.idle_w - 74.0).abs() < 1e-9);
        assert!((f.power_w(0.25) - 143.0).abs() < 1e-9);
        assert_eq!(
            m.basis,
            Basis::Tdp {
                model: "Intel Xeon Platinum 8480+".into(),
                tdp_w: 350.0
            }
        );
    }

    #[test]
    fn hand_computed_epyc_on_two_sockets() {
        // EPYC 7763: TDP 280 W per socket. Idle = 59.2 W; at full load 280 W.
        let topo = CpuPackages::from_pairs((0..256).map(|c| (c, c / 128)));
        let m = Model::for_host(&facts("AMD EPYC 7763 64-Core Processor", 256, false), &topo);
        assert_eq!(m.packages.len(), 2);
        for (_, f) in &m.packages {
            assert!((f.idle_w - 59.2).abs() < 1e-9);
            assert!((f.power_w(1.0) - 280.0).abs() < 1e-9);
        }
    }

    #[test]
    fn unknown_cpu_and_vms_use_per_thread_figures() {
        let m = Model::for_host(
            &facts("Mystery CPU 3000", 8, false),
            &CpuPackages::single(8),
        );
        assert!((m.packages[0].1.idle_w - 8.0 * 0.74).abs() < 1e-9);
        assert!((m.packages[0].1.max_w - 28.0).abs() < 1e-9);
        let vm = Model::for_host(
            &facts("Intel(R) Xeon(R) Platinum 8375C", 2, true),
            &CpuPackages::single(2),
        );
        assert!(matches!(vm.basis, Basis::PerThread { .. }));
        assert!((vm.packages[0].1.max_w - 7.0).abs() < 1e-9);
        assert!((vm.dram_w - 16.0 * 0.392).abs() < 1e-9);
        assert!(vm.explain().contains("virtual machine"));
    }

    #[test]
    fn monotone_in_utilisation_with_positive_idle() {
        let f = Model::for_host(&facts("Mystery", 4, false), &CpuPackages::single(4)).packages[0].1;
        assert!(f.power_w(0.0) > 0.0);
        let mut last = 0.0;
        for step in 0..=20 {
            let p = f.power_w(step as f64 / 20.0);
            assert!(p >= last);
            last = p;
        }
        assert_eq!(f.power_w(7.0), f.max_w, "clamped");
    }

    #[test]
    fn sample_turns_busy_time_into_energy() {
        let mut e = Estimate::new(&facts("Mystery", 2, true), CpuPackages::single(2));
        assert!(e.sample(&SampleContext::default()).energies.is_empty());
        // 2 s with CPU 0 fully busy and CPU 1 idle: u = 0.5 → 1.48 + 5.52 × 0.5 = 4.24 W.
        let ctx = SampleContext {
            now_ns: 2_000_000_000,
            elapsed: Nanos(2_000_000_000),
            cpu_busy: vec![Nanos(2_000_000_000), Nanos(0)],
        };
        let r = e.sample(&ctx);
        let pkg = r
            .energies
            .iter()
            .find(|x| x.domain == Domain::Package(0))
            .unwrap();
        assert!((pkg.joules.get() - 8.48).abs() < 1e-9, "{}", pkg.joules);
        assert!(pkg.estimated);
        let dram = r
            .energies
            .iter()
            .find(|x| x.domain == Domain::Dram(0))
            .unwrap();
        assert!((dram.joules.get() - 16.0 * 0.392 * 2.0).abs() < 1e-9);
    }
}
