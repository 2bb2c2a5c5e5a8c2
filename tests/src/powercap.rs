//! A powercap tree written by the test, whose counters advance at known power: the
//! ground truth for the agent's RAPL path on machines without RAPL.
//!
//! A zone advances at its constant `watts`, and, when asked, also at so many watts per
//! busy CPU of this machine (`idle W + k W per busy core`, the model under which a
//! process's dynamic energy is exactly k × its CPU time). The tree can be frozen and
//! thawed, and keeps every value it wrote, so a test knows what any read of it saw.

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
    /// Watts the counter advances at (negative: never advances).
    pub watts: f64,
    /// `max_energy_range_uj`.
    pub range_uj: u64,
}

/// A zone as the writer keeps it.
struct Zone {
    spec: ZoneSpec,
    /// Extra watts per busy CPU.
    w_per_busy_cpu: f64,
    /// Energy so far, µJ, not wrapped.
    uj: f64,
    /// Every value written to `energy_uj`, not wrapped (the file holds it mod range).
    written: Vec<u64>,
}

struct State {
    zones: Vec<Zone>,
    frozen: bool,
    /// Busy CPU-seconds of this machine since the tree started (what the load-following
    /// zones were advanced by, frozen spells included).
    busy_s: f64,
    /// (when, `busy_s` then) at every write: how the load varied, as the tree saw it.
    history: Vec<(Instant, f64)>,
}

/// A powercap tree in a temp dir with a thread advancing every zone's `energy_uj`.
pub struct PowercapTree {
    dir: tempfile::TempDir,
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    writer: Option<JoinHandle<()>>,
}

/// A temp dir in memory (tmpfs) where there is one, like sysfs: on a disk file system a
/// rename over the old counter file can wait for the disk (ext4 flushes the replaced
/// file's data first), which stalled the writer for up to half a second here and made
/// the counters look slower than the power they stand for.
fn memory_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let in_memory = std::fs::metadata(shm).is_ok_and(|m| m.is_dir());
    if in_memory && let Ok(dir) = tempfile::tempdir_in(shm) {
        return dir;
    }
    tempfile::tempdir().expect("tempdir")
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
    std::fs::write(&tmp, format!("{}\n", energy_uj % spec.range_uj)).expect("energy");
    std::fs::rename(&tmp, zone.join("energy_uj")).expect("rename");
}

/// This machine's busy CPU time, from the kernel's idle accounting: busy = CPUs ×
/// elapsed − (idle + iowait) of `/proc/stat`. The idle figures are the kernel's
/// tickless idle clocks (exact, and current to the read) shown in 10 ms units, so the
/// total is exact to under 10 ms per CPU at any read; it never goes backwards.
struct BusyCpus {
    cpus: f64,
    tick_s: f64,
    t0: Instant,
    idle0: f64,
    last: f64,
}

impl BusyCpus {
    fn new() -> Self {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let (cpus, idle) = Self::read();
        Self {
            cpus,
            tick_s: 1.0 / ticks.max(1) as f64,
            t0: Instant::now(),
            idle0: idle,
            last: 0.0,
        }
    }

    /// (online CPUs, idle + iowait ticks summed over them).
    fn read() -> (f64, f64) {
        let stat = std::fs::read_to_string("/proc/stat").expect("reading /proc/stat");
        let cpus = stat
            .lines()
            .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
            .count();
        let all: Vec<f64> = stat
            .lines()
            .next()
            .expect("a cpu line in /proc/stat")
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().expect("a /proc/stat count"))
            .collect();
        (cpus as f64, all[3] + all[4])
    }

    /// Busy CPU-seconds since `new`.
    fn seconds(&mut self) -> f64 {
        let elapsed = self.t0.elapsed().as_secs_f64();
        let (_, idle) = Self::read();
        let busy = self.cpus * elapsed - (idle - self.idle0) * self.tick_s;
        self.last = self.last.max(busy);
        self.last
    }
}

/// Advances every zone (unless frozen) by its power over `dt` seconds and `busy` CPU
/// seconds, and writes it.
fn advance(root: &Path, state: &mut State, dt: f64, busy: f64) {
    state.busy_s += busy;
    let now = (Instant::now(), state.busy_s);
    state.history.push(now);
    if state.frozen {
        return;
    }
    for z in &mut state.zones {
        if z.spec.watts < 0.0 {
            continue;
        }
        z.uj += (z.spec.watts * dt + z.w_per_busy_cpu * busy) * 1e6;
        let uj = z.uj as u64;
        write_energy(root, &z.spec, uj);
        z.written.push(uj);
    }
}

impl PowercapTree {
    /// Creates the zones and starts advancing them every 10 ms at constant power.
    /// `start_uj` is where the counters start (near the range to wrap early).
    pub fn start(zones: Vec<ZoneSpec>, start_uj: u64) -> Self {
        Self::start_following_load(zones, &[], start_uj)
    }

    /// One package zone (`intel-rapl:0`) at `idle_w` + `w_per_busy_cpu` per busy CPU:
    /// the known power model of the per-request accuracy tests.
    pub fn package_following_load(idle_w: f64, w_per_busy_cpu: f64) -> Self {
        Self::start_following_load(
            vec![ZoneSpec {
                path: "intel-rapl:0",
                name: "package-0",
                watts: idle_w,
                range_uj: 262_143_328_850,
            }],
            &[("intel-rapl:0", w_per_busy_cpu)],
            0,
        )
    }

    /// Like [`PowercapTree::start`], and each zone named in `per_busy_cpu` (path, W)
    /// also advances at that many watts per busy CPU of this machine.
    pub fn start_following_load(
        zones: Vec<ZoneSpec>,
        per_busy_cpu: &[(&str, f64)],
        start_uj: u64,
    ) -> Self {
        let dir = memory_dir();
        let zones: Vec<Zone> = zones
            .into_iter()
            .map(|spec| {
                create_zone(dir.path(), &spec, start_uj);
                let w_per_busy_cpu = per_busy_cpu
                    .iter()
                    .find(|(p, _)| *p == spec.path)
                    .map_or(0.0, |(_, w)| *w);
                Zone {
                    spec,
                    w_per_busy_cpu,
                    uj: start_uj as f64,
                    written: vec![start_uj],
                }
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(State {
            zones,
            frozen: false,
            busy_s: 0.0,
            history: Vec::new(),
        }));
        let writer = {
            let (root, stop, state) = (dir.path().to_path_buf(), stop.clone(), state.clone());
            std::thread::spawn(move || write_loop(&root, &stop, &state))
        };
        Self {
            dir,
            stop,
            state,
            writer: Some(writer),
        }
    }

    /// The tree's root (`--powercap-root`).
    pub fn root(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Removes a zone mid-run (the driver unloading it, a hot-unplugged socket).
    pub fn remove(&self, path: &str) {
        let mut state = self.state.lock().expect("tree state");
        state.zones.retain(|z| z.spec.path != path);
        std::fs::remove_dir_all(self.dir.path().join(path)).expect("remove zone");
    }

    /// Stops every counter where it is: once this returns nothing is written until
    /// [`PowercapTree::thaw`].
    pub fn freeze(&self) {
        self.state.lock().expect("tree state").frozen = true;
    }

    /// Lets the counters advance again (from where they stopped: no catch-up).
    pub fn thaw(&self) {
        self.state.lock().expect("tree state").frozen = false;
    }

    /// From the next write on, the zone at `path` advances at `watts` (plus its watts per
    /// busy CPU): an idle power that drifts. Returns when it was changed.
    pub fn set_watts(&self, path: &str, watts: f64) -> Instant {
        let mut state = self.state.lock().expect("tree state");
        let zone = state.zones.iter_mut().find(|z| z.spec.path == path);
        zone.unwrap_or_else(|| panic!("no zone {path}")).spec.watts = watts;
        Instant::now()
    }

    /// Every value written to the zone at `path`, in order, not wrapped (µJ).
    pub fn written_uj(&self, path: &str) -> Vec<u64> {
        let state = self.state.lock().expect("tree state");
        let zone = state.zones.iter().find(|z| z.spec.path == path);
        zone.unwrap_or_else(|| panic!("no zone {path}"))
            .written
            .clone()
    }

    /// Busy CPUs of this machine on average over each `bucket` from `from` to `to`, as
    /// the writer saw them (`/proc/stat`, independently of the agent).
    pub fn busy_cpus(&self, from: Instant, to: Instant, bucket: Duration) -> Vec<f64> {
        let state = self.state.lock().expect("tree state");
        let at = |t: Instant| {
            let i = state.history.partition_point(|(w, _)| *w <= t);
            i.checked_sub(1).map(|i| state.history[i])
        };
        let mut out = Vec::new();
        let mut t = from;
        while t + bucket <= to {
            if let (Some((t0, b0)), Some((t1, b1))) = (at(t), at(t + bucket))
                && t1 > t0
            {
                out.push((b1 - b0) / t1.duration_since(t0).as_secs_f64());
            }
            t += bucket;
        }
        out
    }

    /// Busy CPU-seconds of this machine since the tree started, as the writer saw them.
    pub fn busy_cpu_s(&self) -> f64 {
        self.state.lock().expect("tree state").busy_s
    }
}

/// The writer: every 10 ms, the time and busy CPU time since the last round advance
/// the zones.
fn write_loop(root: &Path, stop: &AtomicBool, state: &Mutex<State>) {
    // A real-time thread, like the hardware counter it stands for: CPU-bound test
    // workloads must not delay its updates (best effort; needs root). Every 10 ms, not
    // faster: at RT priority its own CPU use is taken from the workloads the tests
    // measure.
    // SAFETY: sched_param is plain data; 0 = the calling thread.
    unsafe {
        let param = libc::sched_param { sched_priority: 10 };
        libc::sched_setscheduler(0, libc::SCHED_FIFO, &param);
    }
    let mut busy = BusyCpus::new();
    let (mut last_t, mut last_busy) = (Instant::now(), 0.0);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let b = busy.seconds();
        let dt = now.duration_since(last_t).as_secs_f64();
        advance(
            root,
            &mut state.lock().expect("tree state"),
            dt,
            b - last_busy,
        );
        (last_t, last_busy) = (now, b);
        std::thread::sleep(Duration::from_millis(10));
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
