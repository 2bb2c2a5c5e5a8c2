//! The power meters' files, written with whatever the input says into a tree of the
//! kernel's shape and read by the agent's own sources: the powercap tree (zone names,
//! `max_energy_range_uj`, three successive `energy_uj` values), the perf power PMU's
//! sysfs directory (`type`, an event, its scale, the cpumask) and an MSR device (the
//! power-unit register and three successive package energy counts). Every energy a
//! source reports must be a non-negative number no larger than its counter can hold.

use std::{
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use energy_agent::power::{
    Meter, PowerReading, PowerSource, SampleContext,
    msr::{MSR_PKG_ENERGY_STATUS, MSR_RAPL_POWER_UNIT, MsrRapl},
    packages::CpuPackages,
    perf::{parse_cpu_list, parse_event_config, read_pmu},
    powercap::Powercap,
};

use crate::{assert_sane, fields};

/// A scratch directory for the whole fuzzing process, emptied per input.
fn scratch(name: &str) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR
        .get_or_init(|| tempfile::tempdir().expect("a scratch dir"))
        .path()
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("the scratch dir");
    dir
}

fn write(path: &Path, text: &str) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("a dir");
    }
    std::fs::write(path, text).expect("writing a file");
}

/// One input: the first byte picks the source.
pub fn run(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => powercap(rest),
        1 => perf(rest),
        _ => msr(rest),
    }
}

/// Every energy of a reading is sane and at most `max_j`.
fn check(reading: &PowerReading, max_j: f64) {
    for e in &reading.energies {
        let j = e.joules.get();
        assert_sane("a domain's energy", j);
        assert!(
            j <= max_j,
            "{} reports {j} J, its counter holds {max_j}",
            e.domain
        );
    }
}

fn powercap(data: &[u8]) {
    let f = fields(data, 6);
    let get = |i: usize| f.get(i).map_or("", String::as_str);
    let root = scratch("powercap");
    let zone = root.join("intel-rapl:0");
    let sub = zone.join("intel-rapl:0:0");
    write(&zone.join("name"), get(0));
    write(&zone.join("max_energy_range_uj"), get(1));
    write(&zone.join("energy_uj"), get(3));
    write(&sub.join("name"), get(2));
    write(&sub.join("max_energy_range_uj"), get(1));
    write(&sub.join("energy_uj"), get(3));
    let Ok(mut source) = Powercap::open(&root) else {
        return;
    };
    let range = get(1).trim().parse::<u64>().unwrap_or(u64::MAX).max(1);
    let max_j = range as f64 * 1e-6;
    let ctx = SampleContext::default();
    check(&source.sample(&ctx), max_j);
    for value in [get(4), get(5)] {
        write(&zone.join("energy_uj"), value);
        write(&sub.join("energy_uj"), value);
        check(&source.sample(&ctx), max_j);
    }
    let _ = source.not_advancing(Duration::from_millis(150));
}

fn perf(data: &[u8]) {
    let f = fields(data, 4);
    let get = |i: usize| f.get(i).map_or("", String::as_str);
    let _ = parse_event_config(get(1));
    let cpus = parse_cpu_list(get(3));
    assert!(
        cpus.len() <= energy_agent::power::perf::MAX_CPU_ID as usize,
        "a cpumask of {} CPUs",
        cpus.len()
    );
    let root = scratch("perf");
    write(&root.join("type"), get(0));
    write(&root.join("events/energy-pkg"), get(1));
    write(&root.join("events/energy-pkg.scale"), get(2));
    write(&root.join("cpumask"), get(3));
    if let Ok((_, events)) = read_pmu(&root) {
        for e in events {
            // Joules are counts × scale: a scale that is not a positive number would
            // report negative or NaN energy.
            assert!(
                e.scale.is_finite() && e.scale > 0.0,
                "event {} has scale {}",
                e.name,
                e.scale
            );
        }
    }
}

fn msr(data: &[u8]) {
    let word = |i: usize| {
        let mut b = [0u8; 8];
        for (j, byte) in b.iter_mut().enumerate() {
            *byte = data.get(i * 8 + j).copied().unwrap_or(0);
        }
        u64::from_le_bytes(b)
    };
    let dev = scratch("msr");
    let path = dev.join("0/msr");
    std::fs::create_dir_all(dev.join("0")).expect("the device dir");
    let file = std::fs::File::create(&path).expect("the device");
    let put = |msr: u64, v: u64| {
        file.write_all_at(&v.to_le_bytes(), msr)
            .expect("a register")
    };
    put(MSR_RAPL_POWER_UNIT, word(0));
    put(MSR_PKG_ENERGY_STATUS, word(1));
    let Ok(mut source) = MsrRapl::open(&dev, &CpuPackages::single(1)) else {
        return;
    };
    let unit = energy_agent::power::msr::energy_unit(word(0));
    let max_j = (1u64 << 32) as f64 * unit;
    let ctx = SampleContext::default();
    check(&source.sample(&ctx), max_j);
    for i in [2, 3] {
        put(MSR_PKG_ENERGY_STATUS, word(i));
        check(&source.sample(&ctx), max_j);
    }
}
