//! The state file: what the agent learned of each meter's idle power, kept between runs
//! (`<state dir>/idle-power.json`, default dir [`DEFAULT_DIR`], `--state-dir`), so that
//! `measure` and a restarted `run` start from it.
//!
//! Keyed by host (`/etc/machine-id`, else the hostname: a state dir copied with a disk
//! image applies to no other machine), then by meter (`rapl-powercap:/sys/class/powercap`,
//! `nvml`, …: a calibration belongs to the counters it was made on) and domain. Each
//! entry says how it was made (`calibrate`, or `fitted` by a run), when, from how many
//! samples, and its uncertainty. Written atomically (a temp file in the same dir, then
//! rename), merged with what is there, so concurrent agents never leave half a file.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::fit::Fit;

/// Where state is kept unless `--state-dir` says otherwise.
pub const DEFAULT_DIR: &str = "/var/lib/energy-agent";

/// The file in the state dir.
pub const FILE_NAME: &str = "idle-power.json";

/// The file's format version.
const VERSION: u32 = 1;

/// Entries per host at most (the oldest go first).
const MAX_ENTRIES: usize = 64;

/// Entries older than this are dropped.
const MAX_AGE: Duration = Duration::from_secs(180 * 24 * 3600);

/// A run's fit replaces a stored entry that is at least this old, whatever their
/// uncertainties.
const REFIT_AFTER: Duration = Duration::from_secs(24 * 3600);

/// How an entry was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// `energy-agent calibrate`: load levels driven on purpose.
    Calibrate,
    /// A good fit of a `run` or `measure`.
    Fitted,
}

/// One meter domain's stored idle power.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredIdle {
    /// The meter: source name, and its location where it has one.
    pub meter: String,
    /// The domain (`package-0`, `dram-0`, `gpu-0`, `psys`).
    pub domain: String,
    /// Idle power, watts.
    pub idle_w: f64,
    /// Watts per busy CPU (per 100% of a GPU).
    pub per_busy_w: f64,
    /// Twice the fit's standard error, watts.
    pub uncertainty_w: f64,
    /// Samples (intervals) the fit used.
    pub samples: usize,
    /// Least busy sample.
    pub busy_min: f64,
    /// Most busy sample.
    pub busy_max: f64,
    /// How it was made.
    pub method: Method,
    /// When (RFC 3339, UTC).
    pub at: String,
    /// When (Unix seconds).
    pub at_unix_s: u64,
}

impl StoredIdle {
    /// An entry for `fit` of `domain` on `meter`, made now by `method`.
    pub fn new(meter: &str, domain: &str, fit: &Fit, method: Method) -> Self {
        let now = SystemTime::now();
        Self {
            meter: meter.to_string(),
            domain: domain.to_string(),
            idle_w: fit.idle_w,
            per_busy_w: fit.per_busy_w,
            uncertainty_w: fit.uncertainty_w,
            samples: fit.samples,
            busy_min: fit.busy_min,
            busy_max: fit.busy_max,
            method,
            at: humantime::format_rfc3339_seconds(now).to_string(),
            at_unix_s: now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        }
    }

    /// The date part of `at` (`2025-06-01`).
    pub fn date(&self) -> &str {
        self.at.get(..10).unwrap_or(&self.at)
    }
}

/// One host's entries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostState {
    /// Its hostname when written (for people reading the file).
    pub hostname: String,
    /// Its entries.
    pub entries: Vec<StoredIdle>,
}

/// The whole file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateFile {
    /// Format version.
    pub version: u32,
    /// By host key.
    pub hosts: BTreeMap<String, HostState>,
}

impl Default for StateFile {
    fn default() -> Self {
        Self {
            version: VERSION,
            hosts: BTreeMap::new(),
        }
    }
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The directory or file could not be used.
    #[error("{path}: {error}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// The file is not a state file this agent understands.
    #[error("{path}: not an idle-power state file ({error}); it will be replaced")]
    Format {
        /// The path.
        path: PathBuf,
        /// What is wrong.
        error: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |error| StateError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// This host's key: `machine-id:<id>`, else `hostname:<name>`.
pub fn host_key(etc: &Path, proc_root: &Path) -> (String, String) {
    let read = |p: PathBuf| {
        std::fs::read_to_string(p)
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let hostname = read(proc_root.join("sys/kernel/hostname")).unwrap_or_default();
    let key = match read(etc.join("machine-id")) {
        Some(id) => format!("machine-id:{id}"),
        None => format!("hostname:{hostname}"),
    };
    (key, hostname)
}

/// A state dir in use for this host.
#[derive(Clone, Debug)]
pub struct StateDir {
    file: PathBuf,
    host: String,
    hostname: String,
}

impl StateDir {
    /// Creates `dir` if needed and checks it can be written.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let probe = dir.join(format!(".write-test.{}", std::process::id()));
        std::fs::write(&probe, b"").map_err(io(dir))?;
        let _ = std::fs::remove_file(&probe);
        let (host, hostname) = host_key(Path::new("/etc"), Path::new("/proc"));
        Ok(Self {
            file: dir.join(FILE_NAME),
            host,
            hostname,
        })
    }

    /// The state file's path.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The whole file (empty when there is none yet).
    fn read(&self) -> Result<StateFile, StateError> {
        let text = match std::fs::read_to_string(&self.file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StateFile::default()),
            Err(e) => return Err(io(&self.file)(e)),
        };
        let state: StateFile = serde_json::from_str(&text).map_err(|e| StateError::Format {
            path: self.file.clone(),
            error: e.to_string(),
        })?;
        if state.version != VERSION {
            return Err(StateError::Format {
                path: self.file.clone(),
                error: format!("version {} (this agent writes {VERSION})", state.version),
            });
        }
        Ok(state)
    }

    /// This host's entries.
    pub fn load(&self) -> Result<Vec<StoredIdle>, StateError> {
        Ok(self
            .read()?
            .hosts
            .remove(&self.host)
            .map(|h| h.entries)
            .unwrap_or_default())
    }

    /// Merges `new` into this host's entries (see [`merge`]) and writes the file
    /// atomically; returns the entries that were taken.
    pub fn store(&self, new: Vec<StoredIdle>) -> Result<Vec<StoredIdle>, StateError> {
        // A file this agent cannot read is replaced (the error was shown at load).
        let mut state = self.read().unwrap_or_default();
        let host = state.hosts.entry(self.host.clone()).or_default();
        host.hostname.clone_from(&self.hostname);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let taken: Vec<StoredIdle> = new
            .into_iter()
            .filter(|e| merge(&mut host.entries, e.clone(), now))
            .collect();
        prune(&mut host.entries, now);
        let text = serde_json::to_string_pretty(&state).map_err(|e| StateError::Format {
            path: self.file.clone(),
            error: e.to_string(),
        })?;
        write_atomically(&self.file, text.as_bytes())?;
        Ok(taken)
    }
}

/// Puts `new` in `entries` unless a better one is there: a calibration always
/// replaces; a run's fit replaces another fit, a calibration with a larger
/// uncertainty, or one older than a day. Returns whether it was taken.
pub fn merge(entries: &mut Vec<StoredIdle>, new: StoredIdle, now_unix_s: u64) -> bool {
    let same = |e: &StoredIdle| e.meter == new.meter && e.domain == new.domain;
    if let Some(old) = entries.iter().find(|e| same(e)) {
        let stale = now_unix_s.saturating_sub(old.at_unix_s) >= REFIT_AFTER.as_secs();
        let take = new.method == Method::Calibrate
            || old.method == Method::Fitted
            || new.uncertainty_w <= old.uncertainty_w
            || stale;
        if !take {
            return false;
        }
    }
    entries.retain(|e| !same(e));
    entries.push(new);
    true
}

/// Drops entries older than [`MAX_AGE`] and all but the newest [`MAX_ENTRIES`].
fn prune(entries: &mut Vec<StoredIdle>, now_unix_s: u64) {
    entries.retain(|e| now_unix_s.saturating_sub(e.at_unix_s) < MAX_AGE.as_secs());
    entries.sort_by_key(|e| std::cmp::Reverse(e.at_unix_s));
    entries.truncate(MAX_ENTRIES);
    entries.sort_by(|a, b| (&a.meter, &a.domain).cmp(&(&b.meter, &b.domain)));
}

/// Writes `path` through a temp file in its directory, flushed, then renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let tmp = path.with_extension(format!("json.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fit(idle_w: f64, uncertainty_w: f64) -> Fit {
        Fit {
            idle_w,
            per_busy_w: 15.0,
            uncertainty_w,
            samples: 100,
            effective_samples: 100.0,
            busy_min: 0.0,
            busy_max: 2.0,
            spread: 0.8,
            residual_w: 0.1,
        }
    }

    #[test]
    fn stores_merges_and_reloads_through_an_atomic_write() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("nested")).expect("a state dir");
        assert!(state.load().unwrap().is_empty(), "nothing stored yet");
        let cal = StoredIdle::new(
            "rapl-powercap:/x",
            "package-0",
            &fit(10.0, 0.2),
            Method::Calibrate,
        );
        let dram = StoredIdle::new(
            "rapl-powercap:/x",
            "dram-0",
            &fit(2.0, 0.05),
            Method::Calibrate,
        );
        assert_eq!(state.store(vec![cal.clone(), dram]).unwrap().len(), 2);
        // A run's fit with a wider band does not replace a fresh calibration…
        let worse = StoredIdle::new(
            "rapl-powercap:/x",
            "package-0",
            &fit(11.0, 0.5),
            Method::Fitted,
        );
        assert!(state.store(vec![worse]).unwrap().is_empty());
        // …a better one does.
        let better = StoredIdle::new(
            "rapl-powercap:/x",
            "package-0",
            &fit(10.1, 0.1),
            Method::Fitted,
        );
        assert_eq!(
            state.store(vec![better.clone()]).unwrap(),
            vec![better.clone()]
        );
        let loaded = state.load().unwrap();
        assert_eq!(loaded.len(), 2);
        assert!(loaded.contains(&better), "{loaded:?}");
        let names: Vec<_> = std::fs::read_dir(dir.path().join("nested"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, vec![FILE_NAME.to_string()], "no temp file left");
        assert_eq!(cal.date().len(), 10);
    }

    #[test]
    fn another_hosts_entries_and_a_broken_file_are_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let mut file = StateFile::default();
        file.hosts.insert(
            "machine-id:someone-else".into(),
            HostState {
                hostname: "other".into(),
                entries: vec![StoredIdle::new(
                    "m",
                    "package-0",
                    &fit(9.0, 0.1),
                    Method::Calibrate,
                )],
            },
        );
        std::fs::write(state.file(), serde_json::to_string(&file).unwrap()).unwrap();
        assert!(state.load().unwrap().is_empty());
        std::fs::write(state.file(), "{ not json").unwrap();
        let err = state.load().unwrap_err().to_string();
        assert!(err.contains("not an idle-power state file"), "{err}");
        // Storing replaces the broken file.
        state
            .store(vec![StoredIdle::new(
                "m",
                "package-0",
                &fit(9.0, 0.1),
                Method::Calibrate,
            )])
            .unwrap();
        assert_eq!(state.load().unwrap().len(), 1);
    }

    #[test]
    fn an_unwritable_dir_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "").unwrap();
        let err = StateDir::open(&blocker.join("sub"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("file/sub"), "{err}");
    }

    #[test]
    fn stale_entries_are_replaced_and_old_ones_pruned() {
        let mut entries = vec![StoredIdle {
            at_unix_s: 1000,
            ..StoredIdle::new("m", "package-0", &fit(10.0, 0.01), Method::Calibrate)
        }];
        let now = 1000 + REFIT_AFTER.as_secs();
        let fresh = StoredIdle {
            at_unix_s: now,
            ..StoredIdle::new("m", "package-0", &fit(12.0, 0.5), Method::Fitted)
        };
        assert!(merge(&mut entries, fresh.clone(), now));
        assert_eq!(entries, vec![fresh]);
        prune(&mut entries, now + MAX_AGE.as_secs() * 2);
        assert!(entries.is_empty());
        let mut many: Vec<StoredIdle> = (0..100)
            .map(|i| StoredIdle {
                at_unix_s: i,
                ..StoredIdle::new("m", &format!("gpu-{i}"), &fit(1.0, 0.1), Method::Fitted)
            })
            .collect();
        prune(&mut many, 200);
        assert_eq!(many.len(), MAX_ENTRIES);
        assert!(many.iter().all(|e| e.at_unix_s >= 100 - MAX_ENTRIES as u64));
    }
}
