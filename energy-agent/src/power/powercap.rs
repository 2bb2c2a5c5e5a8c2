//! rapl-powercap: the kernel's powercap tree (`/sys/class/powercap/intel-rapl:*`, which
//! the AMD RAPL driver also fills), `energy_uj` wrap-corrected against
//! `max_energy_range_uj`. `--powercap-root DIR` points it at another tree.
//!
//! `intel-rapl-mmio:*` zones are skipped: they expose the same package counter through
//! MMIO and would count it twice.

use crate::units::Joules;
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    Domain, Meter, PowerError, PowerReading, PowerSource, SampleContext, SourceInfo,
    counter::EnergyCounter,
};

/// Default location of the tree.
pub const DEFAULT_ROOT: &str = "/sys/class/powercap";

#[derive(Debug)]
struct Zone {
    domain: Domain,
    dir: PathBuf,
    counter: EnergyCounter,
}

/// The powercap RAPL zones of a host (or of a tree written by a test).
#[derive(Debug)]
pub struct Powercap {
    root: PathBuf,
    zones: Vec<Zone>,
}

const INFO: SourceInfo = SourceInfo {
    name: "rapl-powercap",
    estimated: false,
    resolution_j: 1e-6,
};

fn read_u64(path: &Path) -> Result<u64, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.trim()
        .parse()
        .map_err(|_| format!("{}: not a number: {:?}", path.display(), text.trim()))
}

/// The domain a zone stands for, from its `name` file and its parent package.
fn zone_domain(name: &str, package: Option<u32>) -> Option<Domain> {
    let name = name.trim();
    if let Some(n) = name.strip_prefix("package-") {
        return n.parse().ok().map(Domain::Package);
    }
    let pkg = package.unwrap_or(0);
    match name {
        "core" => Some(Domain::Core(pkg)),
        "uncore" => Some(Domain::Uncore(pkg)),
        "dram" => Some(Domain::Dram(pkg)),
        "psys" => Some(Domain::Psys),
        _ => None,
    }
}

/// `intel-rapl:N` (depth 1) or `intel-rapl:N:M` (depth 2).
fn zone_depth(file_name: &str) -> Option<usize> {
    let rest = file_name.strip_prefix("intel-rapl:")?;
    let parts: Vec<&str> = rest.split(':').collect();
    parts
        .iter()
        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .then_some(parts.len())
}

fn subdirs(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(zone_depth)
                .is_some_and(|d| d == depth)
        })
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

impl Powercap {
    /// Finds every RAPL zone under `root`. Fails when there is none.
    pub fn open(root: &Path) -> Result<Self, PowerError> {
        if !root.is_dir() {
            return Err(PowerError::Unavailable(format!(
                "{} does not exist (no powercap driver loaded)",
                root.display()
            )));
        }
        let mut zones = Vec::new();
        let mut problems = Vec::new();
        for top in subdirs(root, 1) {
            let Ok(name) = std::fs::read_to_string(top.join("name")) else {
                problems.push(format!("{}: no name file", top.display()));
                continue;
            };
            let Some(domain) = zone_domain(&name, None) else {
                problems.push(format!(
                    "{}: unknown zone name {:?}",
                    top.display(),
                    name.trim()
                ));
                continue;
            };
            let package = match domain {
                Domain::Package(n) => Some(n),
                _ => None,
            };
            let mut add = |dir: PathBuf, domain: Domain| {
                let range = read_u64(&dir.join("max_energy_range_uj")).unwrap_or(u64::MAX);
                zones.push(Zone {
                    domain,
                    dir,
                    counter: EnergyCounter::new(range),
                });
            };
            add(top.clone(), domain);
            for sub in subdirs(&top, 2) {
                let name = std::fs::read_to_string(sub.join("name")).unwrap_or_default();
                match zone_domain(&name, package) {
                    Some(d) => add(sub, d),
                    None => problems.push(format!(
                        "{}: unknown zone name {:?}",
                        sub.display(),
                        name.trim()
                    )),
                }
            }
        }
        if zones.is_empty() {
            let mut why = format!("no intel-rapl zones under {}", root.display());
            if !problems.is_empty() {
                why.push_str(&format!(" ({})", problems.join("; ")));
            }
            return Err(PowerError::Unavailable(why));
        }
        for p in problems {
            log::warn!("powercap: {p}");
        }
        Ok(Self {
            root: root.to_path_buf(),
            zones,
        })
    }

    /// The tree's root.
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Meter for Powercap {
    /// Names each zone with the value it reads now: a counter that stays at zero, or a
    /// tree nobody updates.
    fn not_advancing(&self, wait: Duration) -> String {
        let values: Vec<String> = self
            .zones
            .iter()
            .map(|z| {
                let v = read_u64(&z.dir.join("energy_uj")).map_or_else(|e| e, |v| v.to_string());
                format!("{}={v}", z.domain)
            })
            .collect();
        format!(
            "no energy_uj counter under {} advanced in {:?} ({}): the counters read 0 or are frozen",
            self.root.display(),
            wait,
            values.join(", ")
        )
    }
}

impl PowerSource for Powercap {
    fn info(&self) -> SourceInfo {
        INFO
    }

    fn domains(&self) -> Vec<Domain> {
        self.zones.iter().map(|z| z.domain).collect()
    }

    fn sample(&mut self, _ctx: &SampleContext) -> PowerReading {
        let mut reading = PowerReading::default();
        for zone in &mut self.zones {
            let read = read_u64(&zone.dir.join("energy_uj"));
            reading.add_counter_read(
                &INFO,
                zone.domain,
                &mut zone.counter,
                read,
                Joules::from_micro(1),
            );
        }
        reading
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Writes a zone directory with the files the kernel provides.
    pub(crate) fn write_zone(dir: &Path, name: &str, energy_uj: u64, max_uj: u64) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("name"), format!("{name}\n")).unwrap();
        std::fs::write(dir.join("energy_uj"), format!("{energy_uj}\n")).unwrap();
        std::fs::write(dir.join("max_energy_range_uj"), format!("{max_uj}\n")).unwrap();
    }

    #[test]
    fn finds_packages_subzones_and_psys() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        write_zone(&r.join("intel-rapl:0"), "package-0", 100, 1_000_000);
        write_zone(
            &r.join("intel-rapl:0/intel-rapl:0:0"),
            "core",
            50,
            1_000_000,
        );
        write_zone(
            &r.join("intel-rapl:0/intel-rapl:0:1"),
            "dram",
            10,
            1_000_000,
        );
        write_zone(&r.join("intel-rapl:1"), "package-1", 100, 1_000_000);
        write_zone(&r.join("intel-rapl:2"), "psys", 100, 1_000_000);
        write_zone(&r.join("intel-rapl-mmio:0"), "package-0", 100, 1_000_000);
        std::fs::create_dir_all(r.join("intel-rapl")).unwrap();
        let pc = Powercap::open(r).unwrap();
        let mut domains = pc.domains();
        domains.sort();
        assert_eq!(
            domains,
            vec![
                Domain::Package(0),
                Domain::Package(1),
                Domain::Core(0),
                Domain::Dram(0),
                Domain::Psys
            ]
        );
    }

    #[test]
    fn deltas_in_joules_and_first_read_is_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let z = dir.path().join("intel-rapl:0");
        write_zone(&z, "package-0", 1_000_000, 10_000_000);
        let mut pc = Powercap::open(dir.path()).unwrap();
        assert!(pc.sample(&SampleContext::default()).energies.is_empty());
        std::fs::write(z.join("energy_uj"), "3500000").unwrap();
        let r = pc.sample(&SampleContext::default());
        assert_eq!(r.joules_of(Domain::Package(0)).unwrap(), Joules(2.5));
    }

    #[test]
    fn wrap_mid_run_is_exact_and_never_negative() {
        let dir = tempfile::tempdir().unwrap();
        let z = dir.path().join("intel-rapl:0");
        write_zone(&z, "package-0", 9_000_000, 10_000_000);
        let mut pc = Powercap::open(dir.path()).unwrap();
        pc.sample(&SampleContext::default());
        std::fs::write(z.join("energy_uj"), "500000").unwrap();
        let r = pc.sample(&SampleContext::default());
        assert_eq!(r.joules_of(Domain::Package(0)).unwrap(), Joules(1.5));
    }

    #[test]
    fn an_unreadable_zone_is_an_error_and_the_rest_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let p0 = dir.path().join("intel-rapl:0");
        let p1 = dir.path().join("intel-rapl:1");
        write_zone(&p0, "package-0", 0, 10_000_000);
        write_zone(&p1, "package-1", 0, 10_000_000);
        let mut pc = Powercap::open(dir.path()).unwrap();
        pc.sample(&SampleContext::default());
        std::fs::remove_dir_all(&p1).unwrap();
        std::fs::write(p0.join("energy_uj"), "1000000").unwrap();
        let r = pc.sample(&SampleContext::default());
        assert_eq!(r.joules_of(Domain::Package(0)).unwrap(), Joules(1.0));
        assert_eq!(r.errors.len(), 1);
        assert_eq!(r.errors[0].domain, Domain::Package(1));
        assert!(
            r.errors[0].error.contains("energy_uj"),
            "{}",
            r.errors[0].error
        );
        // It comes back: the first read after is a new baseline, not a jump.
        write_zone(&p1, "package-1", 7_000_000, 10_000_000);
        let r = pc.sample(&SampleContext::default());
        assert!(r.errors.is_empty());
        assert!(r.energies.iter().all(|e| e.domain != Domain::Package(1)));
    }

    #[test]
    fn a_counter_stuck_at_zero_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        write_zone(&dir.path().join("intel-rapl:0"), "package-0", 0, 10_000_000);
        let mut pc = Powercap::open(dir.path()).unwrap();
        let err = pc.check_advancing(Duration::from_millis(5)).unwrap_err();
        assert!(err.to_string().contains("package-0=0"), "{err}");
    }

    #[test]
    fn empty_or_missing_tree_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let err = Powercap::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("no intel-rapl zones"), "{err}");
        let err = Powercap::open(&dir.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
