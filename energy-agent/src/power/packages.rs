//! Which CPU belongs to which package, from sysfs (`cpuN/topology/physical_package_id`).

use std::{collections::BTreeMap, path::Path};

/// CPU → package map of a host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuPackages {
    package_of: BTreeMap<u32, u32>,
}

impl CpuPackages {
    /// Reads `<cpu_root>/cpuN/topology/physical_package_id` for every CPU directory
    /// (`cpu_root` is normally /sys/devices/system/cpu). A CPU without the file (offline
    /// CPUs on some kernels) is put in package 0.
    pub fn read(cpu_root: &Path) -> Self {
        let mut package_of = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(cpu_root) else {
            return Self::single(1);
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(cpu) = name
                .to_str()
                .and_then(|n| n.strip_prefix("cpu"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let package =
                std::fs::read_to_string(entry.path().join("topology/physical_package_id"))
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .map_or(0, |p| p.max(0) as u32);
            package_of.insert(cpu, package);
        }
        if package_of.is_empty() {
            return Self::single(1);
        }
        Self { package_of }
    }

    /// This host's topology.
    pub fn host() -> Self {
        Self::read(Path::new("/sys/devices/system/cpu"))
    }

    /// `cpus` CPUs in one package.
    pub fn single(cpus: u32) -> Self {
        Self {
            package_of: (0..cpus.max(1)).map(|c| (c, 0)).collect(),
        }
    }

    /// Explicit CPU → package pairs.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (u32, u32)>) -> Self {
        Self {
            package_of: pairs.into_iter().collect(),
        }
    }

    /// The package of `cpu` (package 0 for a CPU the map does not know).
    pub fn package_of(&self, cpu: u32) -> u32 {
        self.package_of.get(&cpu).copied().unwrap_or(0)
    }

    /// The distinct packages, ascending.
    pub fn packages(&self) -> Vec<u32> {
        let mut p: Vec<u32> = self.package_of.values().copied().collect();
        p.sort_unstable();
        p.dedup();
        p
    }

    /// The CPUs of `package`, ascending.
    pub fn cpus_of(&self, package: u32) -> Vec<u32> {
        self.package_of
            .iter()
            .filter(|&(_, &p)| p == package)
            .map(|(&c, _)| c)
            .collect()
    }

    /// Number of CPUs known.
    pub fn cpu_count(&self) -> u32 {
        self.package_of.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_two_packages_from_a_sysfs_tree() {
        let dir = tempfile::tempdir().unwrap();
        for (cpu, pkg) in [(0, 0), (1, 0), (2, 1), (3, 1)] {
            let t = dir.path().join(format!("cpu{cpu}/topology"));
            std::fs::create_dir_all(&t).unwrap();
            std::fs::write(t.join("physical_package_id"), format!("{pkg}\n")).unwrap();
        }
        std::fs::create_dir_all(dir.path().join("cpufreq")).unwrap();
        let t = CpuPackages::read(dir.path());
        assert_eq!(t.packages(), vec![0, 1]);
        assert_eq!(t.cpus_of(1), vec![2, 3]);
        assert_eq!(t.package_of(3), 1);
        assert_eq!(t.cpu_count(), 4);
    }

    #[test]
    fn missing_tree_is_one_package() {
        let t = CpuPackages::read(Path::new("/nonexistent"));
        assert_eq!(t.packages(), vec![0]);
    }

    #[test]
    fn this_host_has_a_package() {
        assert!(!CpuPackages::host().packages().is_empty());
    }
}
