//! nvml: GPU energy through NVML (nvml-wrapper, which loads libnvidia-ml at run time).
//! Per GPU the total-energy counter when the GPU has one (Volta and newer), else power
//! readings integrated by a background sampler every 100 ms. Without the library, the
//! driver or a GPU, opening fails with the reason and the agent runs without GPU data.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use nvml_wrapper::{Nvml, error::NvmlError};

use super::{
    Domain, DomainError, PowerError, PowerReading, PowerSource, SampleContext, SourceInfo, energy,
    gpu::{GpuMeter, GpuSample},
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
            gpus.push(Gpu {
                index,
                has_counter,
                meter: Arc::new(Mutex::new(GpuMeter::default())),
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
