//! GPU-on-hardware check (run it on an NVIDIA host): for each GPU, NVML's total-energy
//! counter over a window next to the same window's power readings integrated every
//! 50 ms, and their ratio. Exits 2 when there is no NVML here.
//!
//! usage: gpu_power_check [seconds=10]

use std::time::{Duration, Instant};

use energy_agent::{
    clock::monotonic_ns,
    power::gpu::PowerIntegrator,
    units::{Joules, Watts},
};
use nvml_wrapper::Nvml;

fn main() {
    let seconds: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10.0);
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("{}", energy_agent::power::nvml::explain(&e));
            std::process::exit(2);
        }
    };
    let count = nvml.device_count().unwrap_or(0);
    println!(
        "driver {}, {count} GPU(s), window {seconds} s",
        nvml.sys_driver_version().unwrap_or_default()
    );
    let devices: Vec<_> = (0..count)
        .filter_map(|i| nvml.device_by_index(i).ok())
        .collect();
    let start_mj: Vec<Option<u64>> = devices
        .iter()
        .map(|d| d.total_energy_consumption().ok())
        .collect();
    let mut integrators = vec![PowerIntegrator::default(); devices.len()];
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    while Instant::now() < until {
        for (d, integ) in devices.iter().zip(&mut integrators) {
            if let Ok(mw) = d.power_usage() {
                integ.add(monotonic_ns(), Watts(f64::from(mw) / 1e3));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "{:>4} {:<28} {:>14} {:>14} {:>8}",
        "gpu", "name", "counter J", "integrated J", "ratio"
    );
    for (i, d) in devices.iter().enumerate() {
        let counter_j = match (start_mj[i], d.total_energy_consumption().ok()) {
            (Some(a), Some(b)) => Some(Joules::from_milli(b.saturating_sub(a))),
            _ => None,
        };
        let integrated = integrators[i].take();
        let ratio = counter_j.map(|c| {
            if integrated > Joules::ZERO {
                c / integrated
            } else {
                f64::NAN
            }
        });
        println!(
            "{i:>4} {:<28} {:>14} {:>14.3} {:>8}",
            d.name().unwrap_or_default(),
            counter_j.map_or("n/a".into(), |c| format!("{c:.3}")),
            integrated,
            ratio.map_or("n/a".into(), |r| format!("{r:.4}"))
        );
    }
}
