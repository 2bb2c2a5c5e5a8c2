//! The kernel task map stays bounded: 10,000 short threads leave it flat (each
//! thread's final switch removes its entry), and entries a missed final switch would
//! leave — made here by writing entries and hot-task cache slots for threads that have
//! ended into the real maps, since the kernel cannot be made to skip a switch — are
//! removed by the liveness sweep, while a live thread's entry stays.

use std::{
    sync::mpsc,
    time::{Duration, Instant},
};

use aya::maps::{Array, Map, MapData, PerCpuHashMap, PerCpuValues};
use energy_agent::probe::{Probe, ProbeConfig, ProbeStats, possible_cpus};
use energy_common::{SLOT_EMPTY, TaskKey, TaskSlot, TaskTime, names};
use energy_tests::require_root;

/// Held by each test: the second test finds its probe's maps among this process's
/// descriptors by name, so the two must not have probes loaded at the same time.
static ONE_PROBE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn load() -> Probe {
    let config = ProbeConfig {
        sweep_every: Duration::from_secs(1),
        ..ProbeConfig::default()
    };
    let mut probe = Probe::load(&config).expect("loading the probe");
    probe.read_interval().expect("first read");
    probe
}

/// This process's own `TASKS` map (the one its probe loaded, among any other agent's
/// on the host), opened again from its id.
fn own_task_map() -> PerCpuHashMap<MapData, TaskKey, TaskTime> {
    PerCpuHashMap::try_from(own_map(names::TASKS)).expect("TASKS is a per-CPU hash")
}

/// This process's own map `name`, opened again from its id.
fn own_map(name: &str) -> Map {
    for fd in std::fs::read_dir("/proc/self/fdinfo").expect("fdinfo") {
        let text = std::fs::read_to_string(fd.expect("fdinfo entry").path()).unwrap_or_default();
        let Some(id) = text
            .lines()
            .find_map(|l| l.strip_prefix("map_id:"))
            .and_then(|v| v.trim().parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(data) = MapData::from_id(id) else {
            continue;
        };
        if data
            .info()
            .ok()
            .and_then(|i| i.name_as_str().map(String::from))
            == Some(name.into())
        {
            return Map::from_map_data(data).expect("a map");
        }
    }
    panic!("no {name} map among this process's descriptors");
}

/// Thread ids of `n` threads that ran and ended.
fn ended_thread_ids(n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| {
            std::thread::spawn(|| {
                // SAFETY: gettid has no preconditions.
                unsafe { libc::gettid() as u32 }
            })
            .join()
            .expect("a short thread")
        })
        .collect()
}

/// Reads the probe every 100 ms until `done` says so, then for `after` more; the stats
/// of every read.
fn read_until(probe: &mut Probe, done: &mpsc::Receiver<()>, after: Duration) -> Vec<ProbeStats> {
    let mut stats = Vec::new();
    let mut finished: Option<Instant> = None;
    while finished.is_none_or(|t| t.elapsed() < after) {
        std::thread::sleep(Duration::from_millis(100));
        stats.push(probe.read_interval().expect("read_interval").stats);
        if finished.is_none() && done.try_recv().is_ok() {
            finished = Some(Instant::now());
        }
    }
    stats
}

#[test]
fn ten_thousand_short_threads_leave_the_task_map_flat() {
    require_root();
    let _alone = ONE_PROBE_AT_A_TIME.lock();
    let mut probe = load();
    // A second of the host's own threads first, so that they are in the map.
    std::thread::sleep(Duration::from_secs(1));
    let before = probe.read_interval().expect("read").stats.tasks_tracked;
    let (tx, done) = mpsc::channel();
    let spawner = std::thread::spawn(move || {
        for _ in 0..200 {
            let batch: Vec<_> = (0..50)
                .map(|_| {
                    std::thread::spawn(|| {
                        let until = Instant::now() + Duration::from_micros(200);
                        while Instant::now() < until {
                            std::hint::spin_loop();
                        }
                    })
                })
                .collect();
            for t in batch {
                t.join().expect("a short thread");
            }
        }
        let _ = tx.send(());
    });
    let stats = read_until(&mut probe, &done, Duration::from_secs(2));
    spawner.join().expect("the spawner");
    let peak = stats.iter().map(|s| s.tasks_tracked).max().unwrap_or(0);
    let last = *stats.last().expect("reads");
    eprintln!(
        "task map: {before} entries before, {peak} at most, {} after 10,000 threads ({} reads, {} swept)",
        last.tasks_tracked,
        stats.len(),
        last.tasks_swept
    );
    assert_eq!(last.task_map_full, 0, "{last:?}");
    assert_eq!(last.events_lost, 0, "{last:?}");
    // 50 threads at a time, and the host's own activity: never the 10,000.
    assert!(
        peak <= before + 1_000,
        "the task map rose from {before} to {peak} entries under 10,000 short threads"
    );
    assert!(
        last.tasks_tracked <= before + 200,
        "the task map grew from {before} to {} entries: {last:?}",
        last.tasks_tracked
    );
    assert_eq!(last.max_tasks, u64::from(ProbeConfig::default().max_tasks));
}

#[test]
fn entries_a_missed_final_switch_leaves_are_swept_and_live_ones_stay() {
    require_root();
    let _alone = ONE_PROBE_AT_A_TIME.lock();
    let mut probe = load();
    let mut tasks = own_task_map();
    let me = std::process::id();
    // A live thread that ran once and sleeps: its entry is in the map and must stay.
    let (tid_tx, tid_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    let sleeper = std::thread::spawn(move || {
        // SAFETY: gettid has no preconditions.
        let _ = tid_tx.send(unsafe { libc::gettid() as u32 });
        let _ = stop_rx.recv();
    });
    let live = TaskKey {
        tgid: me,
        pid: tid_rx.recv().expect("the sleeper's tid"),
    };
    // Entries of 200 ended threads, as a missed final switch leaves them: half with
    // time on CPU 0 (reported once, as a thread that ran, then idle), half empty.
    let cpus = possible_cpus() as usize;
    let stale: Vec<TaskKey> = ended_thread_ids(200)
        .into_iter()
        .map(|pid| TaskKey { tgid: me, pid })
        .collect();
    for (n, key) in stale.iter().enumerate() {
        let mut values = vec![TaskTime::default(); cpus];
        if n % 2 == 0 {
            values[0].on_cpu_ns = 1_000_000;
        }
        let values = PerCpuValues::try_from(values).expect("one value per CPU");
        tasks
            .insert(key, values, 0)
            .expect("inserting a stale entry");
    }
    // And hot-task cache slots of 100 more ended threads, where their slot is free.
    let mut cache: Array<MapData, TaskSlot> =
        Array::try_from(own_map(names::TASK_CACHE)).expect("TASK_CACHE is an array");
    let slots = probe.stats().expect("stats").cache_slots_per_cpu as u32;
    let mut stale_slots = Vec::new();
    for pid in ended_thread_ids(100) {
        let key = TaskKey { tgid: me, pid };
        let index = pid % slots;
        if cache.get(&index, 0).is_ok_and(|s| s.key == SLOT_EMPTY) {
            let slot = TaskSlot {
                key: key.pid_tgid(),
                on_cpu_ns: 500_000,
                cgroup_id: 0,
            };
            cache.set(index, slot, 0).expect("writing a stale slot");
            stale_slots.push(key);
        }
    }
    let stale: Vec<TaskKey> = stale
        .into_iter()
        .chain(stale_slots.iter().copied())
        .collect();
    let total = stale.len();
    eprintln!("{} stale cache slots written", stale_slots.len());
    assert!(stale_slots.len() >= 10, "free slots for stale threads");
    let swept_before = probe.stats().expect("stats").tasks_swept;
    let present = |probe: &Probe, k: &TaskKey| probe.tracks(k);
    assert!(stale.iter().all(|k| present(&probe, k)), "inserted");
    assert!(
        present(&probe, &live),
        "the sleeper ran, so it has an entry"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = stale.len();
    while left > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        probe.read_interval().expect("read_interval");
        left = stale.iter().filter(|k| present(&probe, k)).count();
    }
    let stats = probe.stats().expect("stats");
    eprintln!(
        "{} of {total} stale entries left after {:?}; swept {} in all",
        left,
        Duration::from_secs(10) - deadline.saturating_duration_since(Instant::now()),
        stats.tasks_swept - swept_before
    );
    let live_kept = present(&probe, &live);
    let _ = stop_tx.send(());
    sleeper.join().expect("the sleeper");
    assert_eq!(left, 0, "{left} of {total} stale entries still in the map");
    assert!(
        stats.tasks_swept >= swept_before + total as u64,
        "the sweep counts what it removes: {} before, {stats:?}",
        swept_before
    );
    assert!(
        live_kept,
        "the entry of a live, sleeping thread must stay: {live:?}"
    );
}
