//! rapl-msr: the RAPL model-specific registers through `/dev/cpu/N/msr`, one CPU per
//! package. Opt-in only (`--power-source rapl-msr`): raw MSR access is what PLATYPUS
//! (CVE-2020-8694) exploited, and the kernel now restricts it; prefer the powercap or
//! perf interfaces, which the kernel rate-limits and permission-checks.

use crate::units::Joules;
use std::{
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    Domain, Meter, PowerError, PowerReading, PowerSource, SampleContext, SourceInfo,
    counter::EnergyCounter, packages::CpuPackages,
};

/// Default directory of the per-CPU MSR devices.
pub const DEFAULT_DEV: &str = "/dev/cpu";

/// Intel MSR_RAPL_POWER_UNIT.
pub const MSR_RAPL_POWER_UNIT: u64 = 0x606;
/// Intel MSR_PKG_ENERGY_STATUS.
pub const MSR_PKG_ENERGY_STATUS: u64 = 0x611;
/// Intel MSR_DRAM_ENERGY_STATUS.
pub const MSR_DRAM_ENERGY_STATUS: u64 = 0x619;
/// Intel MSR_PP0_ENERGY_STATUS (cores).
pub const MSR_PP0_ENERGY_STATUS: u64 = 0x639;
/// Intel MSR_PP1_ENERGY_STATUS (uncore / integrated GPU).
pub const MSR_PP1_ENERGY_STATUS: u64 = 0x641;
/// Intel MSR_PLATFORM_ENERGY_STATUS (psys).
pub const MSR_PLATFORM_ENERGY_STATUS: u64 = 0x64d;
/// AMD MSR_AMD_RAPL_POWER_UNIT.
pub const MSR_AMD_RAPL_POWER_UNIT: u64 = 0xc001_0299;
/// AMD MSR_AMD_PKG_ENERGY_STATUS.
pub const MSR_AMD_PKG_ENERGY_STATUS: u64 = 0xc001_029b;

/// Joules per counter step, from a RAPL power-unit register: bits 12:8 hold the
/// energy-status unit ESU, and one step is 1/2^ESU J (Intel SDM vol. 4, 2.16).
pub fn energy_unit(power_unit_raw: u64) -> f64 {
    let esu = (power_unit_raw >> 8) & 0x1f;
    1.0 / (1u64 << esu) as f64
}

/// The 32-bit counter in an energy-status register (the upper bits are reserved).
pub fn energy_counter(status_raw: u64) -> u64 {
    status_raw & 0xffff_ffff
}

/// One register of an open device: the msr driver checks CAP_SYS_RAWIO when the device
/// is opened, so the agent opens each once, before it drops its privileges, and reads
/// the registers with `pread` from then on.
fn read_msr(file: &std::fs::File, msr: u64) -> std::io::Result<u64> {
    let mut buf = [0u8; 8];
    file.read_exact_at(&mut buf, msr)?;
    Ok(u64::from_le_bytes(buf))
}

struct Register {
    domain: Domain,
    device: PathBuf,
    file: std::sync::Arc<std::fs::File>,
    msr: u64,
    unit: f64,
    counter: EnergyCounter,
}

/// RAPL read straight from the MSRs.
pub struct MsrRapl {
    registers: Vec<Register>,
}

const INFO: SourceInfo = SourceInfo {
    name: "rapl-msr",
    estimated: false,
    resolution_j: 6.103515625e-05,
};

impl MsrRapl {
    /// Opens the MSR devices under `dev` (normally /dev/cpu) for one CPU per package,
    /// keeping each energy register that reads.
    pub fn open(dev: &Path, topology: &CpuPackages) -> Result<Self, PowerError> {
        let mut registers = Vec::new();
        let mut why = Vec::new();
        for package in topology.packages() {
            let Some(&cpu) = topology.cpus_of(package).first() else {
                continue;
            };
            let device = dev.join(cpu.to_string()).join("msr");
            let file = match std::fs::File::open(&device) {
                Ok(f) => std::sync::Arc::new(f),
                Err(e) => {
                    why.push(format!("{}: {e}", device.display()));
                    continue;
                }
            };
            let (unit_raw, layout): (u64, &[(u64, Domain)]) =
                match read_msr(&file, MSR_RAPL_POWER_UNIT) {
                    Ok(raw) => (
                        raw,
                        &[
                            (MSR_PKG_ENERGY_STATUS, Domain::Package(package)),
                            (MSR_PP0_ENERGY_STATUS, Domain::Core(package)),
                            (MSR_PP1_ENERGY_STATUS, Domain::Uncore(package)),
                            (MSR_DRAM_ENERGY_STATUS, Domain::Dram(package)),
                            (MSR_PLATFORM_ENERGY_STATUS, Domain::Psys),
                        ],
                    ),
                    Err(intel) => match read_msr(&file, MSR_AMD_RAPL_POWER_UNIT) {
                        Ok(raw) => (
                            raw,
                            &[(MSR_AMD_PKG_ENERGY_STATUS, Domain::Package(package))],
                        ),
                        Err(_) => {
                            why.push(format!("{}: {intel}", device.display()));
                            continue;
                        }
                    },
                };
            let unit = energy_unit(unit_raw);
            for &(msr, domain) in layout {
                if domain == Domain::Psys
                    && registers
                        .iter()
                        .any(|r: &Register| r.domain == Domain::Psys)
                {
                    continue;
                }
                if read_msr(&file, msr).is_ok() {
                    registers.push(Register {
                        domain,
                        device: device.clone(),
                        file: file.clone(),
                        msr,
                        unit,
                        counter: EnergyCounter::new(1 << 32),
                    });
                }
            }
        }
        if registers.is_empty() {
            return Err(PowerError::Unavailable(format!(
                "no readable RAPL MSR ({}); load the msr module (modprobe msr) and run as root",
                if why.is_empty() {
                    "no packages".to_string()
                } else {
                    why.join("; ")
                }
            )));
        }
        Ok(Self { registers })
    }
}

impl Meter for MsrRapl {
    /// Names each register with the value it reads now: a hypervisor may pass the MSRs
    /// through with energy registers that never move.
    fn not_advancing(&self, wait: Duration) -> String {
        let values: Vec<String> = self
            .registers
            .iter()
            .map(|r| {
                let v = read_msr(&r.file, r.msr)
                    .map_or_else(|e| e.to_string(), |v| energy_counter(v).to_string());
                format!("{} ({} msr {:#x})={v}", r.domain, r.device.display(), r.msr)
            })
            .collect();
        format!(
            "no RAPL energy-status MSR advanced in {wait:?} ({}): the registers read 0 or are frozen (typical of VMs)",
            values.join(", ")
        )
    }
}

impl PowerSource for MsrRapl {
    fn info(&self) -> SourceInfo {
        INFO
    }

    fn domains(&self) -> Vec<Domain> {
        self.registers.iter().map(|r| r.domain).collect()
    }

    fn sample(&mut self, _ctx: &SampleContext) -> PowerReading {
        let mut reading = PowerReading::default();
        for r in &mut self.registers {
            let read = read_msr(&r.file, r.msr)
                .map(energy_counter)
                .map_err(|e| format!("{} msr {:#x}: {e}", r.device.display(), r.msr));
            reading.add_counter_read(&INFO, r.domain, &mut r.counter, read, Joules(r.unit));
        }
        reading
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_power_unit_registers() {
        // 0xA0E03 is a common value (Skylake/Cascade Lake servers): ESU = 0xE = 14.
        assert_eq!(energy_unit(0x000A_0E03), 1.0 / 16384.0);
        assert_eq!(energy_unit(0x000A_0E03), 6.103515625e-05);
        // Haswell client parts: 0xA1003, ESU = 16 → 15.3 µJ.
        assert_eq!(energy_unit(0x000A_1003), 1.0 / 65536.0);
        // AMD Zen: 0x000A1003 as well; bits above 12 are ignored.
        assert_eq!(energy_unit(0xFFFF_F0A1003), 1.0 / 65536.0);
    }

    #[test]
    fn energy_status_keeps_32_bits() {
        assert_eq!(energy_counter(0xDEAD_BEEF_1234_5678), 0x1234_5678);
    }

    /// A fake /dev/cpu/0/msr: a sparse file whose bytes at each MSR's offset hold the
    /// register, which `pread` reads exactly like the msr driver's device.
    fn write_msr(path: &Path, msr: u64, value: u64) {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .unwrap();
        file.write_all_at(&value.to_le_bytes(), msr).unwrap();
    }

    #[test]
    fn reads_and_wraps_through_a_device_file() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("0/msr");
        std::fs::create_dir_all(dev.parent().unwrap()).unwrap();
        write_msr(&dev, MSR_RAPL_POWER_UNIT, 0x000A_0E03);
        write_msr(&dev, MSR_PKG_ENERGY_STATUS, 0xFFFF_C000);
        write_msr(&dev, MSR_DRAM_ENERGY_STATUS, 100);
        let mut rapl = MsrRapl::open(dir.path(), &CpuPackages::single(1)).unwrap();
        let mut domains = rapl.domains();
        domains.sort();
        // Every register of the fake device reads (it is a file), so all are found.
        assert!(domains.contains(&Domain::Package(0)) && domains.contains(&Domain::Dram(0)));
        rapl.sample(&SampleContext::default());
        // 0xFFFFC000 → 0x4000 across the 32-bit wrap: 0x8000 steps of 1/16384 J = 2 J.
        write_msr(&dev, MSR_PKG_ENERGY_STATUS, 0x4000);
        write_msr(&dev, MSR_DRAM_ENERGY_STATUS, 100 + 16384);
        let r = rapl.sample(&SampleContext::default());
        let j = |d| r.energies.iter().find(|e| e.domain == d).unwrap().joules;
        assert_eq!(j(Domain::Package(0)), Joules(2.0));
        assert_eq!(j(Domain::Dram(0)), Joules(1.0));
    }

    #[test]
    fn frozen_registers_are_unavailable_and_advancing_ones_pass() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("0/msr");
        std::fs::create_dir_all(dev.parent().unwrap()).unwrap();
        write_msr(&dev, MSR_RAPL_POWER_UNIT, 0x000A_0E03);
        write_msr(&dev, MSR_PKG_ENERGY_STATUS, 0);
        let mut rapl = MsrRapl::open(dir.path(), &CpuPackages::single(1)).unwrap();
        let err = rapl
            .check_advancing(std::time::Duration::from_millis(5))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no RAPL energy-status MSR advanced"), "{err}");
        assert!(
            err.contains("package-0") && err.contains("0x611)=0"),
            "{err}"
        );

        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (dev, stop) = (dev.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut raw = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    raw += 16;
                    write_msr(&dev, MSR_PKG_ENERGY_STATUS, raw);
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            })
        };
        let checked = rapl.check_advancing(std::time::Duration::from_millis(30));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        assert!(
            checked.is_ok(),
            "advancing registers are usable: {checked:?}"
        );
    }

    #[test]
    fn missing_devices_say_how_to_fix() {
        let dir = tempfile::tempdir().unwrap();
        let err = MsrRapl::open(dir.path(), &CpuPackages::single(2))
            .err()
            .unwrap();
        assert!(err.to_string().contains("modprobe msr"), "{err}");
    }
}
