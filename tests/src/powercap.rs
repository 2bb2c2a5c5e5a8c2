//! A powercap tree written by the test, whose counters advance at known power: the
//! ground truth for the agent's RAPL path on machines without RAPL.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// One zone: where it is, its power, and its wrap range.
#[derive(Clone, Debug)]
pub struct ZoneSpec {
    /// Directory relative to the root, e.g. `intel-rapl:0` or `intel-rapl:0/intel-rapl:0:0`.
    pub path: &'static str,
    /// The `name` file: `package-0`, `core`, `dram`, `psys`.
    pub name: &'static str,
    /// Watts the counter advances at.
    pub watts: f64,
    /// `max_energy_range_uj`.
    pub range_uj: u64,
}

/// A powercap tree in a temp dir with a thread advancing every zone's `energy_uj`.
pub struct PowercapTree {
    dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    zones: Arc<Mutex<Vec<ZoneSpec>>>,
    writer: Option<JoinHandle<()>>,
}

fn create_zone(dir: &Path, spec: &ZoneSpec, energy_uj: u64) {
    let zone = dir.join(spec.path);
    std::fs::create_dir_all(&zone).expect("zone dir");
    std::fs::write(zone.join("name"), format!("{}\n", spec.name)).expect("name");
    std::fs::write(
        zone.join("max_energy_range_uj"),
        format!("{}\n", spec.range_uj),
    )
    .expect("max");
    write_energy(dir, spec, energy_uj);
}

fn write_energy(dir: &Path, spec: &ZoneSpec, energy_uj: u64) {
    let zone = dir.join(spec.path);
    // Write-then-rename so the agent never reads a half-written number.
    let tmp = zone.join(".energy_uj.tmp");
    std::fs::write(&tmp, format!("{energy_uj}\n")).expect("energy");
    std::fs::rename(&tmp, zone.join("energy_uj")).expect("rename");
}

impl PowercapTree {
    /// Creates the zones and starts advancing them every 10 ms. `start_uj` is where the
    /// counters start (near the range to wrap early).
    pub fn start(zones: Vec<ZoneSpec>, start_uj: u64) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for z in &zones {
            create_zone(dir.path(), z, start_uj % z.range_uj);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let zones = Arc::new(Mutex::new(zones));
        let writer = {
            let (root, stop, zones) = (dir.path().to_path_buf(), stop.clone(), zones.clone());
            std::thread::spawn(move || {
                // A real-time thread, like the hardware counter it stands for: CPU-bound
                // test workloads must not delay its updates (best effort; needs root).
                // Every 10 ms, not faster: at RT priority its own CPU use is taken from
                // the workloads the tests measure.
                // SAFETY: sched_param is plain data; 0 = the calling thread.
                unsafe {
                    let param = libc::sched_param { sched_priority: 10 };
                    libc::sched_setscheduler(0, libc::SCHED_FIFO, &param);
                }
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let s = t0.elapsed().as_secs_f64();
                    for z in zones.lock().expect("zones").iter() {
                        if z.watts < 0.0 {
                            continue;
                        }
                        let uj = start_uj as f64 + z.watts * s * 1e6;
                        write_energy(&root, z, (uj as u64) % z.range_uj);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Self {
            dir,
            stop,
            zones,
            writer: Some(writer),
        }
    }

    /// The tree's root (`--powercap-root`).
    pub fn root(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Removes a zone mid-run (the driver unloading it, a hot-unplugged socket).
    pub fn remove(&self, path: &str) {
        let mut zones = self.zones.lock().expect("zones");
        zones.retain(|z| z.path != path);
        std::fs::remove_dir_all(self.dir.path().join(path)).expect("remove zone");
    }
}

impl Drop for PowercapTree {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}
