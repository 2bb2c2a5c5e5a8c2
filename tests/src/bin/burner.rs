//! Test workload: burns a known amount of CPU in N threads, then prints the kernel's own
//! account of it (sum of `/proc/self/task/*/schedstat`, read while every thread is still
//! alive, just before exit) as `schedstat_ns=<n>`.
//!
//! usage: burner <seconds per thread> [threads] [duty] [cpu|-] [period_ms]
//!
//! `duty` (0–1, default 1) burns that fraction of every period (10 ms unless
//! `period_ms` says otherwise: a long one makes a load that varies from interval to
//! interval) and sleeps the rest; `cpu` pins the process to one CPU (`-`: not pinned).

use std::{sync::Barrier, thread};

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; CLOCK_THREAD_CPUTIME_ID exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Burns `ns` of this thread's CPU time; with `duty` < 1, only `duty` × `period` of
/// CPU time in every `period` of wall time (measured on the thread's own CPU clock, so
/// the ratio holds however the scheduler slices it).
fn burn(ns: u64, duty: f64, period: std::time::Duration) {
    let start = thread_cpu_ns();
    let mut x = 0u64;
    let per_period = (period.as_nanos() as f64 * duty) as u64;
    let mut next = std::time::Instant::now();
    while thread_cpu_ns() - start < ns {
        let period_cpu = thread_cpu_ns();
        next += period;
        while thread_cpu_ns() - period_cpu < per_period && thread_cpu_ns() - start < ns {
            for i in 0..1000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
            }
        }
        if duty < 1.0 {
            std::thread::sleep(next.saturating_duration_since(std::time::Instant::now()));
        }
    }
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, for this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0,
            "pinning to cpu {cpu}"
        );
    }
}

fn schedstat_sum() -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc/self/task").expect("/proc/self/task") {
        let path = entry.expect("task entry").path().join("schedstat");
        let text = std::fs::read_to_string(&path).expect("schedstat");
        total += energy_tests::parse_schedstat_ns(&text).expect("schedstat format");
    }
    total
}

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .expect("usage: burner <seconds> [threads]");
    let threads: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let duty: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(1.0);
    if let Some(cpu) = args.next().and_then(|s| s.parse().ok()) {
        pin(cpu);
    }
    let period_ms: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let period = std::time::Duration::from_millis(period_ms.max(1));
    let ns = (seconds * 1e9) as u64;
    // Every thread burns, then all meet at `done`; the main thread reads schedstat while
    // the others wait at `read`, alive, so their counts are still in /proc/self/task.
    let done = Barrier::new(threads);
    let read = Barrier::new(threads);
    let total = thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(|| {
                burn(ns, duty, period);
                done.wait();
                read.wait();
            });
        }
        burn(ns, duty, period);
        done.wait();
        let total = schedstat_sum();
        read.wait();
        total
    });
    println!("schedstat_ns={total}");
}
