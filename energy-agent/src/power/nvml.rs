//! nvml: GPU energy through NVML (nvml-wrapper, which loads libnvidia-ml at run time).
//! Per GPU the total-energy counter when the GPU has one (Volta and newer), else power
//! readings integrated by a background sampler every 100 ms. Without the library, the
//! driver or a GPU, opening fails with the reason and the agent runs without GPU data.
//!
//! Each sample also says who used each GPU: the running compute and graphics processes
//! (from every MIG instance when the GPU is partitioned) and the per-process SM
//! utilisation samples NVML took since the previous read.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use nvml_wrapper::{Device, Nvml, enums::device::UsedGpuMemory, error::NvmlError};

use super::{
    Domain, DomainError, PowerError, PowerReading, PowerSource, SampleContext, SourceInfo, energy,
    gpu::{GpuMeter, GpuProcess, GpuProcesses, GpuSample},
};
use crate::clock::monotonic_ns;

const INFO: SourceInfo = SourceInfo {
    name: "nvml",
    estimated: false,
    resolution_j: 1e-3,
};

/// How often power is read for GPUs without an energy counter.
const POWER_PERIOD: Duration = Duration::from_millis(100);

/// A readable explanation of an NVML failure, with what to do about it.
pub fn explain(e: &NvmlError) -> String {
    match e {
        NvmlError::LibloadingError(inner) => format!(
            "no GPU source: libnvidia-ml.so.1 could not be loaded ({inner}); install the NVIDIA driver to measure GPUs"
        ),
        NvmlError::DriverNotLoaded => {
            "no GPU source: the NVIDIA kernel driver is not loaded".to_string()
        }
        NvmlError::NoPermission => {
            "no GPU source: NVML refused access (run as root or fix /dev/nvidia* permissions)"
                .to_string()
        }
        other => format!("no GPU source: NVML failed: {other}"),
    }
}

struct Gpu {
    index: u32,
    has_counter: bool,
    meter: Arc<Mutex<GpuMeter>>,
    /// Timestamp (µs) of the newest per-process sample seen.
    last_sample_us: u64,
    /// Timestamp (µs) of the newest device utilisation sample seen.
    last_util_us: u64,
}

/// The host's NVIDIA GPUs.
pub struct NvmlSource {
    nvml: Arc<Nvml>,
    gpus: Vec<Gpu>,
    stop: Arc<AtomicBool>,
    sampler: Option<JoinHandle<()>>,
}

impl NvmlSource {
    /// Initialises NVML and finds every GPU whose energy or power it can read.
    pub fn open() -> Result<Self, PowerError> {
        let nvml = Nvml::init().map_err(|e| PowerError::Unavailable(explain(&e)))?;
        let count = nvml
            .device_count()
            .map_err(|e| PowerError::Unavailable(explain(&e)))?;
        let mut gpus = Vec::new();
        let mut why = Vec::new();
        for index in 0..count {
            let device = match nvml.device_by_index(index) {
                Ok(d) => d,
                Err(e) => {
                    why.push(format!("gpu {index}: {e}"));
                    continue;
                }
            };
            let has_counter = device.total_energy_consumption().is_ok();
            if !has_counter && device.power_usage().is_err() {
                why.push(format!("gpu {index}: neither energy nor power readable"));
                continue;
            }
            // NVML stamps samples with wall-clock µs: start from now, not from
            // whatever its buffer holds from before the agent.
            let now_us = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64);
            gpus.push(Gpu {
                index,
                has_counter,
                meter: Arc::new(Mutex::new(GpuMeter::default())),
                last_sample_us: now_us,
                last_util_us: now_us,
            });
        }
        if gpus.is_empty() {
            return Err(PowerError::Unavailable(format!(
                "no GPU source: NVML found {count} GPU(s) and none readable ({})",
                why.join("; ")
            )));
        }
        let mut source = Self {
            nvml: Arc::new(nvml),
            gpus,
            stop: Arc::new(AtomicBool::new(false)),
            sampler: None,
        };
        source.start_power_sampler();
        Ok(source)
    }

    /// The NVML handle, for per-process queries.
    pub fn nvml(&self) -> &Nvml {
        &self.nvml
    }

    fn start_power_sampler(&mut self) {
        let targets: Vec<(u32, Arc<Mutex<GpuMeter>>)> = self
            .gpus
            .iter()
            .filter(|g| !g.has_counter)
            .map(|g| (g.index, g.meter.clone()))
            .collect();
        if targets.is_empty() {
            return;
        }
        let nvml = self.nvml.clone();
        let stop = self.stop.clone();
        self.sampler = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (index, meter) in &targets {
                    if let Ok(mw) = nvml.device_by_index(*index).and_then(|d| d.power_usage())
                        && let Ok(mut m) = meter.lock()
                    {
                        m.feed(monotonic_ns(), GpuSample::PowerMw(mw));
                    }
                }
                std::thread::sleep(POWER_PERIOD);
            }
        }));
    }
}

impl Drop for NvmlSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.sampler.take() {
            let _ = handle.join();
        }
    }
}

impl PowerSource for NvmlSource {
    fn info(&self) -> SourceInfo {
        INFO
    }

    fn domains(&self) -> Vec<Domain> {
        self.gpus.iter().map(|g| Domain::Gpu(g.index)).collect()
    }

    fn sample(&mut self, _ctx: &SampleContext) -> PowerReading {
        let mut reading = PowerReading::default();
        for gpu in &mut self.gpus {
            if let Ok(device) = self.nvml.device_by_index(gpu.index) {
                reading.gpu_processes.push(processes(&device, gpu));
            }
        }
        for gpu in &self.gpus {
            let domain = Domain::Gpu(gpu.index);
            if gpu.has_counter {
                match self
                    .nvml
                    .device_by_index(gpu.index)
                    .and_then(|d| d.total_energy_consumption())
                {
                    Ok(mj) => {
                        if let Ok(mut m) = gpu.meter.lock() {
                            m.feed(monotonic_ns(), GpuSample::EnergyMj(mj));
                        }
                    }
                    Err(e) => {
                        reading.errors.push(DomainError {
                            domain,
                            error: format!("NVML total energy: {e}"),
                        });
                        continue;
                    }
                }
            }
            if let Ok(mut m) = gpu.meter.lock() {
                reading.energies.push(energy(&INFO, domain, m.take()));
            }
        }
        reading
    }

    fn describe(&self) -> String {
        let parts: Vec<String> = self
            .gpus
            .iter()
            .map(|g| {
                format!(
                    "gpu-{} ({})",
                    g.index,
                    if g.has_counter {
                        "total-energy counter"
                    } else {
                        "power integrated every 100 ms"
                    }
                )
            })
            .collect();
        format!("nvml (measured): {}", parts.join(", "))
    }
}

/// Who is on one GPU and how much SM time each had since the last read.
fn processes(device: &Device<'_>, gpu: &mut Gpu) -> GpuProcesses {
    let mig = device.mig_mode().is_ok_and(|m| m.current == 1);
    let instances: Vec<Device<'_>> = if mig {
        (0..device.mig_device_count().unwrap_or(0))
            .filter_map(|i| device.mig_device_by_index(i).ok())
            .collect()
    } else {
        Vec::new()
    };
    let handles: Vec<&Device<'_>> = if mig {
        instances.iter().collect()
    } else {
        vec![device]
    };
    let mut running: Option<Vec<GpuProcess>> = None;
    for handle in handles {
        for list in [
            handle.running_compute_processes(),
            handle.running_graphics_processes(),
        ] {
            let Ok(list) = list else { continue };
            let all = running.get_or_insert_with(Vec::new);
            for p in list {
                if all.iter().any(|q| q.pid == p.pid) {
                    continue;
                }
                all.push(GpuProcess {
                    pid: p.pid,
                    used_memory_bytes: match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => Some(b),
                        UsedGpuMemory::Unavailable => None,
                    },
                });
            }
        }
    }
    // Per-process samples do not exist under MIG; elsewhere "not found" means none
    // were taken since the timestamp (nothing ran), anything else that they never are.
    let sm_util = if mig {
        None
    } else {
        match device.process_utilization_stats(gpu.last_sample_us) {
            Ok(samples) => {
                let mut sums = std::collections::BTreeMap::new();
                for s in samples {
                    gpu.last_sample_us = gpu.last_sample_us.max(s.timestamp);
                    *sums.entry(s.pid).or_default() += u64::from(s.sm_util);
                }
                Some(sums)
            }
            Err(NvmlError::NotFound) => Some(Default::default()),
            Err(_) => None,
        }
    };
    GpuProcesses {
        gpu: gpu.index,
        running,
        sm_util,
        mig,
        busy: utilisation(device, &mut gpu.last_util_us),
    }
}

/// The GPU's average utilisation (0–1) over NVML's samples since `last_us` (the
/// fraction of each sample period a kernel ran); None when none were taken.
fn utilisation(device: &Device<'_>, last_us: &mut u64) -> Option<f64> {
    use nvml_wrapper::{enum_wrappers::device::Sampling, enums::device::SampleValue};
    let samples = device.samples(Sampling::GpuUtilization, *last_us).ok()?;
    let mut sum = 0.0;
    let mut n = 0u32;
    for s in samples {
        *last_us = (*last_us).max(s.timestamp);
        let percent = match s.value {
            SampleValue::F64(v) => v,
            SampleValue::U32(v) => f64::from(v),
            SampleValue::U64(v) => v as f64,
            SampleValue::I64(v) => v as f64,
        };
        sum += percent.clamp(0.0, 100.0) / 100.0;
        n += 1;
    }
    (n > 0).then(|| sum / f64::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_library_is_a_clear_no_gpu_result() {
        if std::path::Path::new("/dev/nvidiactl").exists() {
            eprintln!("an NVIDIA driver is present; the absent-library path is not testable here");
            return;
        }
        let err = NvmlSource::open().err().expect("no NVML here");
        let text = err.to_string();
        assert!(text.starts_with("no GPU source:"), "{text}");
        assert!(
            text.contains("libnvidia-ml") || text.contains("driver"),
            "names what is missing: {text}"
        );
    }
}
