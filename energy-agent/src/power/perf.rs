//! rapl-perf: the perf_event `power` PMU (`/sys/bus/event_source/devices/power`), one
//! counter per package and event, opened on one CPU of each package (the PMU's cpumask).
//! The kernel extends the 32-bit RAPL registers to 64 bits for perf, so these counters
//! do not wrap in practice; the shared counter type still guards the difference.

use crate::units::Joules;
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    Domain, Meter, PowerError, PowerReading, PowerSource, SampleContext, SourceInfo,
    counter::EnergyCounter, packages::CpuPackages,
};

/// Default location of the PMU.
pub const DEFAULT_PMU: &str = "/sys/bus/event_source/devices/power";

const INFO: SourceInfo = SourceInfo {
    name: "rapl-perf",
    estimated: false,
    resolution_j: 1.0 / 4_294_967_296.0, // 2^-32 J, the usual energy-pkg scale
};

/// One RAPL event the PMU offers: `events/<name>` with its scale and unit.
#[derive(Clone, Debug, PartialEq)]
pub struct PmuEvent {
    /// Event name, e.g. `energy-pkg`.
    pub name: String,
    /// The `config` value (`event=0x02`).
    pub config: u64,
    /// Joules per count (`<name>.scale`).
    pub scale: f64,
}

/// Parses an event file like `event=0x02` into its config value.
pub fn parse_event_config(text: &str) -> Option<u64> {
    text.trim().split(',').find_map(|term| {
        let value = term.trim().strip_prefix("event=")?;
        match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => value.parse().ok(),
        }
    })
}

/// CPU ids at or past this are not real (Linux's `NR_CPUS` is at most 8192): a list
/// naming them is ignored there rather than expanded (`0-4294967295` would be 16 GiB).
pub const MAX_CPU_ID: u32 = 1 << 16;

/// Parses a cpumask list like `0`, `0,28` or `0-1,4` (ids below [`MAX_CPU_ID`], each
/// once, in order).
pub fn parse_cpu_list(text: &str) -> Vec<u32> {
    let mut cpus = std::collections::BTreeSet::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    cpus.extend(a..=b.min(MAX_CPU_ID - 1));
                }
            }
            None => cpus.extend(part.parse::<u32>().ok().filter(|&c| c < MAX_CPU_ID)),
        }
    }
    cpus.into_iter().collect()
}

/// The domain an event measures on a package.
fn event_domain(name: &str, package: u32) -> Option<Domain> {
    match name {
        "energy-pkg" => Some(Domain::Package(package)),
        "energy-cores" => Some(Domain::Core(package)),
        "energy-gpu" => Some(Domain::Uncore(package)),
        "energy-ram" => Some(Domain::Dram(package)),
        "energy-psys" => Some(Domain::Psys),
        _ => None,
    }
}

/// Reads the PMU's type and RAPL events from its sysfs directory.
pub fn read_pmu(pmu: &Path) -> Result<(u32, Vec<PmuEvent>), PowerError> {
    let unavailable = |what: String| PowerError::Unavailable(what);
    let pmu_type: u32 = std::fs::read_to_string(pmu.join("type"))
        .map_err(|e| {
            unavailable(format!(
                "{}: {e} (no RAPL perf PMU)",
                pmu.join("type").display()
            ))
        })?
        .trim()
        .parse()
        .map_err(|_| unavailable(format!("{}: not a number", pmu.join("type").display())))?;
    let mut events = Vec::new();
    for entry in std::fs::read_dir(pmu.join("events"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.contains('.') || !name.starts_with("energy-") {
            continue;
        }
        let config = std::fs::read_to_string(entry.path())
            .ok()
            .and_then(|t| parse_event_config(&t));
        // Joules are counts × scale: a scale that is not a positive number (0, negative,
        // NaN, inf all parse) would report no, negative or NaN energy.
        let scale = std::fs::read_to_string(pmu.join("events").join(format!("{name}.scale")))
            .ok()
            .and_then(|t| t.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0);
        if let (Some(config), Some(scale)) = (config, scale) {
            events.push(PmuEvent {
                name,
                config,
                scale,
            });
        }
    }
    events.sort_by(|a, b| a.name.cmp(&b.name));
    if events.is_empty() {
        return Err(unavailable(format!(
            "{}: no energy-* events",
            pmu.display()
        )));
    }
    Ok((pmu_type, events))
}

/// `struct perf_event_attr` up to `config1` (PERF_ATTR_SIZE_VER0, 64 bytes).
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}
const _: () = assert!(size_of::<PerfEventAttr>() == 64);

/// `PERF_FLAG_FD_CLOEXEC` from linux/perf_event.h.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 1 << 3;

fn perf_event_open(pmu_type: u32, config: u64, cpu: u32) -> io::Result<OwnedFd> {
    let attr = PerfEventAttr {
        type_: pmu_type,
        size: size_of::<PerfEventAttr>() as u32,
        config,
        ..Default::default()
    };
    // SAFETY: attr is a valid perf_event_attr of the declared size; pid -1 + cpu = a
    // system-wide counter on that CPU; no group; close-on-exec.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &raw const attr,
            -1i32,
            cpu as i32,
            -1i32,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn read_count(fd: &OwnedFd) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    // SAFETY: reading 8 bytes into a valid buffer from a perf event descriptor.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    if n != 8 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(buf))
}

struct Counter {
    domain: Domain,
    scale: f64,
    fd: OwnedFd,
    counter: EnergyCounter,
}

/// Open RAPL perf counters.
pub struct PerfRapl {
    pmu: PathBuf,
    counters: Vec<Counter>,
}

impl PerfRapl {
    /// Opens every RAPL event of the PMU at `pmu`, once per package (psys once).
    pub fn open(pmu: &Path, topology: &CpuPackages) -> Result<Self, PowerError> {
        let (pmu_type, events) = read_pmu(pmu)?;
        let cpus = std::fs::read_to_string(pmu.join("cpumask"))
            .map(|t| parse_cpu_list(&t))
            .unwrap_or_else(|_| vec![0]);
        let mut counters = Vec::new();
        let mut errors = Vec::new();
        for event in &events {
            let mut seen_psys = false;
            for &cpu in &cpus {
                let Some(domain) = event_domain(&event.name, topology.package_of(cpu)) else {
                    continue;
                };
                if domain == Domain::Psys {
                    if seen_psys {
                        continue;
                    }
                    seen_psys = true;
                }
                match perf_event_open(pmu_type, event.config, cpu) {
                    Ok(fd) => counters.push(Counter {
                        domain,
                        scale: event.scale,
                        fd,
                        counter: EnergyCounter::new(u64::MAX),
                    }),
                    Err(e) => errors.push(format!("{} on cpu {cpu}: {e}", event.name)),
                }
            }
        }
        if counters.is_empty() {
            return Err(PowerError::Unavailable(format!(
                "perf_event_open failed for every RAPL event ({})",
                errors.join("; ")
            )));
        }
        Ok(Self {
            pmu: pmu.to_path_buf(),
            counters,
        })
    }
}

impl Meter for PerfRapl {
    /// Names the counters and the PMU: virtual machines often expose the PMU with
    /// counters that always read 0 J.
    fn not_advancing(&self, wait: Duration) -> String {
        let names: Vec<String> = self.counters.iter().map(|c| c.domain.to_string()).collect();
        format!(
            "the RAPL perf counters ({}) at {} read 0 J over {wait:?}: no RAPL behind them (typical of VMs)",
            names.join(", "),
            self.pmu.display()
        )
    }
}

impl PowerSource for PerfRapl {
    fn info(&self) -> SourceInfo {
        INFO
    }

    fn domains(&self) -> Vec<Domain> {
        self.counters.iter().map(|c| c.domain).collect()
    }

    fn sample(&mut self, _ctx: &SampleContext) -> PowerReading {
        let mut reading = PowerReading::default();
        for c in &mut self.counters {
            let read = read_count(&c.fd).map_err(|e| format!("reading the perf counter: {e}"));
            reading.add_counter_read(&INFO, c.domain, &mut c.counter, read, Joules(c.scale));
        }
        reading
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_real_sysfs_strings() {
        assert_eq!(parse_event_config("event=0x05\n"), Some(5));
        assert_eq!(parse_event_config("event=0x02"), Some(2));
        assert_eq!(parse_event_config("event=3"), Some(3));
        assert_eq!(parse_event_config("umask=0x1"), None);
        assert_eq!(parse_cpu_list("0\n"), vec![0]);
        assert_eq!(parse_cpu_list("0,28"), vec![0, 28]);
        assert_eq!(parse_cpu_list("0-2,8"), vec![0, 1, 2, 8]);
        let scale: f64 = "2.3283064365386962890625e-10\n".trim().parse().unwrap();
        assert_eq!(scale, 1.0 / (1u64 << 32) as f64);
    }

    /// Found by the sysfs fuzz target (fuzz/regressions/sysfs/perf-cpumask-huge): a
    /// cpumask range was expanded whatever its size (`2644-610000`; `0-4294967295`
    /// would have taken 16 GiB).
    #[test]
    fn a_cpumask_never_names_impossible_cpus() {
        assert_eq!(
            parse_cpu_list("2644-0610000").len(),
            (MAX_CPU_ID - 2644) as usize
        );
        assert!(parse_cpu_list("0-4294967295").len() <= MAX_CPU_ID as usize);
        assert_eq!(parse_cpu_list("70000,1"), vec![1]);
        assert_eq!(parse_cpu_list("5-2"), Vec::<u32>::new());
        // fuzz/regressions/sysfs/perf-cpumask-repeated: overlapping ranges, each once.
        let repeated = vec!["0-65535"; 64].join(",");
        assert_eq!(parse_cpu_list(&repeated).len(), MAX_CPU_ID as usize);
        assert_eq!(parse_cpu_list("4,0-2,1"), vec![0, 1, 2, 4]);
    }

    /// Found by the sysfs fuzz target (fuzz/regressions/sysfs/perf-scale-zero): a scale
    /// of `0e-9` was taken, and would have made every reading 0 J.
    #[test]
    fn an_event_whose_scale_is_not_a_positive_number_is_refused() {
        for scale in ["0e-9", "0", "-2.3e-10", "NaN", "inf", "-inf"] {
            let dir = tempfile::tempdir().unwrap();
            let ev = dir.path().join("events");
            std::fs::create_dir_all(&ev).unwrap();
            std::fs::write(dir.path().join("type"), "9\n").unwrap();
            std::fs::write(ev.join("energy-pkg"), "event=0x02\n").unwrap();
            std::fs::write(ev.join("energy-pkg.scale"), scale).unwrap();
            assert!(read_pmu(dir.path()).is_err(), "scale {scale:?} refused");
        }
    }

    #[test]
    fn reads_a_pmu_tree() {
        let dir = tempfile::tempdir().unwrap();
        let ev = dir.path().join("events");
        std::fs::create_dir_all(&ev).unwrap();
        std::fs::write(dir.path().join("type"), "9\n").unwrap();
        std::fs::write(ev.join("energy-pkg"), "event=0x02\n").unwrap();
        std::fs::write(
            ev.join("energy-pkg.scale"),
            "2.3283064365386962890625e-10\n",
        )
        .unwrap();
        std::fs::write(ev.join("energy-pkg.unit"), "Joules\n").unwrap();
        std::fs::write(ev.join("energy-ram"), "event=0x03\n").unwrap();
        std::fs::write(ev.join("energy-ram.scale"), "6.103515625e-05\n").unwrap();
        let (ty, events) = read_pmu(dir.path()).unwrap();
        assert_eq!(ty, 9);
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].name, "energy-pkg");
        assert_eq!(events[1].config, 3);
        assert_eq!(events[1].scale, 6.103515625e-05);
        assert_eq!(event_domain("energy-ram", 1), Some(Domain::Dram(1)));
        assert_eq!(event_domain("energy-psys", 1), Some(Domain::Psys));
    }
}
