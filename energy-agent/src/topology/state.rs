//! The state dir as the loops use it: this host's stored calibrations of the meters in
//! use at start, the run's good fits at the end. A state dir that cannot be used is
//! said once, and the agent goes on without persistence.

use std::path::{Path, PathBuf};

use crate::{
    attribute::idle::{
        Calibration,
        fit::Fit,
        state::{Method, StateDir, StoredIdle},
    },
    power::{Domain, PowerSources, SourceChoice, select::PowerOptions},
    units::Watts,
};

/// Where idle power is kept, and which meters the figures belong to.
#[derive(Clone, Debug)]
pub struct IdleStore {
    dir: Option<StateDir>,
    problem: Option<String>,
    cpu_meter: String,
    gpu_meter: String,
}

/// The meter a CPU-side source stands for: its name, and its location where it has one
/// (a calibration of one powercap tree says nothing of another).
fn cpu_meter(name: &str, options: &PowerOptions) -> String {
    match (&options.choice, name) {
        (_, "rapl-powercap") => format!("rapl-powercap:{}", options.powercap_root.display()),
        (SourceChoice::Replay(path), _) => format!("replay:{}", path.display()),
        _ => name.to_string(),
    }
}

impl IdleStore {
    /// Opens `dir` (None: no persistence) for the sources in use; a dir that cannot be
    /// used is said once (in the log), see [`IdleStore::problem`].
    pub fn open(dir: Option<&Path>, options: &PowerOptions, power: &PowerSources) -> Self {
        let store = Self::open_quietly(dir, options, power);
        if let Some(p) = &store.problem {
            log::warn!("{p}");
        }
        store
    }

    /// [`IdleStore::open`] without the log line (for `check`, which reports it).
    pub fn open_quietly(dir: Option<&Path>, options: &PowerOptions, power: &PowerSources) -> Self {
        let (cpu, gpu) = power.names();
        let (dir, problem) = match dir.map(StateDir::open) {
            None => (None, None),
            Some(Ok(s)) => (Some(s), None),
            Some(Err(e)) => (
                None,
                Some(format!(
                    "state dir unusable ({e}): idle power is not kept between runs; --state-dir DIR chooses another"
                )),
            ),
        };
        Self {
            dir,
            problem,
            cpu_meter: cpu_meter(cpu, options),
            gpu_meter: gpu.to_string(),
        }
    }

    /// Why the state dir cannot be used, when it cannot.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// The state file, when persistence is on.
    pub fn file(&self) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.file().to_path_buf())
    }

    fn meter_of(&self, domain: Domain) -> &str {
        match domain {
            Domain::Gpu(_) => &self.gpu_meter,
            _ => &self.cpu_meter,
        }
    }

    /// This host's stored entries for the meters in use (a file that cannot be read is
    /// said, and ignored).
    pub fn stored(&self) -> Vec<StoredIdle> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        match dir.load() {
            Ok(entries) => entries
                .into_iter()
                .filter(|e| {
                    e.domain
                        .parse::<Domain>()
                        .is_ok_and(|d| self.meter_of(d) == e.meter)
                })
                .collect(),
            Err(e) => {
                log::warn!("idle power state: {e}");
                Vec::new()
            }
        }
    }

    /// The stored entries as the attribution stage takes them.
    pub fn calibrations(&self) -> Vec<Calibration> {
        self.stored()
            .into_iter()
            .filter_map(|e| {
                Some(Calibration {
                    domain: e.domain.parse().ok()?,
                    idle: Watts(e.idle_w),
                    uncertainty: Watts(e.uncertainty_w),
                    at: e.at,
                })
            })
            .collect()
    }

    /// Stores `fits` (made by `method`); returns the entries the file took (a failure
    /// to write is said, and nothing is taken).
    pub fn save(&self, fits: &[(Domain, Fit)], method: Method) -> Vec<StoredIdle> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let entries: Vec<StoredIdle> = fits
            .iter()
            .map(|(d, f)| StoredIdle::new(self.meter_of(*d), &d.to_string(), f, method))
            .collect();
        if entries.is_empty() {
            return entries;
        }
        match dir.store(entries) {
            Ok(taken) => taken,
            Err(e) => {
                log::warn!("idle power state not saved: {e}");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_powercap_meter_is_named_by_its_tree() {
        let options = PowerOptions {
            powercap_root: "/tmp/tree".into(),
            ..PowerOptions::default()
        };
        assert_eq!(
            cpu_meter("rapl-powercap", &options),
            "rapl-powercap:/tmp/tree"
        );
        assert_eq!(cpu_meter("rapl-perf", &options), "rapl-perf");
        let replay = PowerOptions {
            choice: SourceChoice::Replay("/r.csv".into()),
            ..PowerOptions::default()
        };
        assert_eq!(cpu_meter("replay", &replay), "replay:/r.csv");
    }
}
