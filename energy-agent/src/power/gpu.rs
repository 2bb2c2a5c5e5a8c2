//! GPU energy from what NVML offers: the total-energy counter (millijoules since the
//! driver loaded; Volta and newer) when there is one, else power readings (milliwatts)
//! integrated over time. The NVML source and the replay source share this logic, and
//! the plain data that says which processes use each GPU.

use crate::units::{Joules, Nanos, Watts};
use std::collections::BTreeMap;

use super::counter::EnergyCounter;

/// A process NVML lists on a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct GpuProcess {
    /// Process id (as NVML sees it: the host's pid namespace).
    pub pid: u32,
    /// GPU memory it holds, bytes, when the driver says.
    pub used_memory_bytes: Option<u64>,
}

/// Who used one GPU in one interval, as far as NVML can tell.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct GpuProcesses {
    /// GPU index.
    pub gpu: u32,
    /// Processes on the GPU now (compute and graphics); `None` when NVML cannot list them.
    pub running: Option<Vec<GpuProcess>>,
    /// Per process, the sum of its SM-utilisation samples (percent) since the last read:
    /// each sample covers one sampling period, so the sums are proportional to the SM
    /// time each process used. `None` when the GPU gives no per-process samples
    /// (unsupported, MIG, vGPU); empty when it does but none fell in the interval.
    pub sm_util: Option<BTreeMap<u32, u64>>,
    /// Whether the GPU is partitioned (MIG): processes come from its instances.
    pub mig: bool,
    /// The GPU's average utilisation since the last read (0–1: the fraction of time a
    /// kernel ran, from NVML's samples), the load its idle power is fitted on; `None`
    /// when NVML took none or cannot say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub busy: Option<f64>,
}

/// One reading of a GPU, as NVML reports it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GpuSample {
    /// `nvmlDeviceGetTotalEnergyConsumption`: mJ since the driver loaded.
    EnergyMj(u64),
    /// `nvmlDeviceGetPowerUsage`: mW now.
    PowerMw(u32),
}

/// Integrates power readings with the trapezoidal rule.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PowerIntegrator {
    last: Option<(u64, Watts)>,
    joules: Joules,
}

impl PowerIntegrator {
    /// Adds a reading of `watts` taken at `ts_ns` (monotonic). Readings must come in
    /// time order; an older one is ignored.
    pub fn add(&mut self, ts_ns: u64, watts: Watts) {
        let watts = Watts(watts.get().max(0.0));
        if let Some((t0, w0)) = self.last {
            if ts_ns < t0 {
                return;
            }
            self.joules += (w0 + watts) * 0.5 * Nanos::between(t0, ts_ns);
        }
        self.last = Some((ts_ns, watts));
    }

    /// The energy integrated since the previous call.
    pub fn take(&mut self) -> Joules {
        std::mem::take(&mut self.joules)
    }
}

/// Turns one GPU's readings into joules per interval.
#[derive(Clone, Debug)]
pub struct GpuMeter {
    counter: EnergyCounter,
    integrator: PowerIntegrator,
    counted: Joules,
}

impl Default for GpuMeter {
    fn default() -> Self {
        Self {
            counter: EnergyCounter::restarting(),
            integrator: PowerIntegrator::default(),
            counted: Joules::ZERO,
        }
    }
}

impl GpuMeter {
    /// Feeds a reading taken at `ts_ns`.
    pub fn feed(&mut self, ts_ns: u64, sample: GpuSample) {
        match sample {
            GpuSample::EnergyMj(mj) => {
                if let Some(delta) = self.counter.advance(mj) {
                    self.counted += Joules::from_milli(delta);
                }
            }
            GpuSample::PowerMw(mw) => self.integrator.add(ts_ns, Watts(f64::from(mw) / 1e3)),
        }
    }

    /// Joules since the previous call: counter deltas plus integrated power.
    pub fn take(&mut self) -> Joules {
        std::mem::take(&mut self.counted) + self.integrator.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn counter_deltas_in_joules() {
        let mut m = GpuMeter::default();
        m.feed(0, GpuSample::EnergyMj(1_000_000));
        assert_eq!(m.take(), Joules(0.0));
        m.feed(S, GpuSample::EnergyMj(1_250_000));
        m.feed(2 * S, GpuSample::EnergyMj(1_300_000));
        assert_eq!(m.take(), Joules(300.0));
    }

    #[test]
    fn driver_reload_does_not_make_a_huge_delta() {
        let mut m = GpuMeter::default();
        m.feed(0, GpuSample::EnergyMj(9_000_000));
        m.feed(S, GpuSample::EnergyMj(2_000));
        m.feed(2 * S, GpuSample::EnergyMj(3_000));
        assert_eq!(m.take(), Joules(1.0));
    }

    #[test]
    fn power_is_integrated_trapezoidally() {
        let mut m = GpuMeter::default();
        // 100 W for 1 s, then a linear ramp 100 → 300 W over 1 s: 100 + 200 = 300 J.
        m.feed(0, GpuSample::PowerMw(100_000));
        m.feed(S, GpuSample::PowerMw(100_000));
        m.feed(2 * S, GpuSample::PowerMw(300_000));
        assert!((m.take().get() - 300.0).abs() < 1e-9);
        // Next interval continues from the last reading.
        m.feed(3 * S, GpuSample::PowerMw(300_000));
        assert!((m.take().get() - 300.0).abs() < 1e-9);
    }

    #[test]
    fn out_of_order_power_readings_are_ignored() {
        let mut p = PowerIntegrator::default();
        p.add(10, Watts(50.0));
        p.add(5, Watts(1e9));
        p.add(10 + S, Watts(50.0));
        assert!((p.take().get() - 50.0).abs() < 1e-9);
    }
}
