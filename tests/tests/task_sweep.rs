//! The kernel task map stays bounded: 10,000 short threads leave it flat (each
//! thread's final switch removes its entry), and entries a missed final switch would
//! leave — made here by writing entries for threads that have ended into the real
//! map, since the kernel cannot be made to skip a switch — are removed by the liveness
//! sweep, while a live thread's entry stays.

use std::{
    sync::mpsc,
    time::{Duration, Instant},
};

use aya::maps::{Map, MapData, PerCpuHashMap, PerCpuValues};
use energy_agent::probe::{Probe, ProbeConfig, ProbeStats, possible_cpus};
use energy_common::{TaskKey, TaskTime, names};
use energy_tests::require_root;

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
            == Some(names::TASKS.into())
        {
            let map = Map::from_map_data(data).expect("a map");
            return PerCpuHashMap::try_from(map).expect("TASKS is a per-CPU hash");
        }
    }
    panic!("no TASKS map among this process's descriptors");
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
    let swept_before = probe.stats().expect("stats").tasks_swept;
    let present =
        |tasks: &PerCpuHashMap<MapData, TaskKey, TaskTime>, k: &TaskKey| tasks.get(k, 0).is_ok();
    assert!(stale.iter().all(|k| present(&tasks, k)), "inserted");
    assert!(
        present(&tasks, &live),
        "the sleeper ran, so it has an entry"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut left = stale.len();
    while left > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        probe.read_interval().expect("read_interval");
        left = stale.iter().filter(|k| present(&tasks, k)).count();
    }
    let stats = probe.stats().expect("stats");
    eprintln!(
        "{} of 200 stale entries left after {:?}; swept {} in all",
        left,
        Duration::from_secs(10) - deadline.saturating_duration_since(Instant::now()),
        stats.tasks_swept - swept_before
    );
    let live_kept = present(&tasks, &live);
    let _ = stop_tx.send(());
    sleeper.join().expect("the sleeper");
    assert_eq!(left, 0, "{left} of 200 stale entries still in the map");
    assert!(
        stats.tasks_swept >= swept_before + 200,
        "the sweep counts what it removes: {} before, {stats:?}",
        swept_before
    );
    assert!(
        live_kept,
        "the entry of a live, sleeping thread must stay: {live:?}"
    );
}
