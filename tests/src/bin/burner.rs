//! Test workload: burns a known amount of CPU in N threads, then prints the kernel's own
//! account of it (sum of `/proc/self/task/*/schedstat`, read while every thread is still
//! alive, just before exit) as `schedstat_ns=<n>`.
//!
//! usage: burner <seconds per thread> [threads]

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

fn burn(ns: u64) {
    let start = thread_cpu_ns();
    let mut x = 0u64;
    while thread_cpu_ns() - start < ns {
        for i in 0..1000 {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
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
    let ns = (seconds * 1e9) as u64;
    // Every thread burns, then all meet at `done`; the main thread reads schedstat while
    // the others wait at `read`, alive, so their counts are still in /proc/self/task.
    let done = Barrier::new(threads);
    let read = Barrier::new(threads);
    let total = thread::scope(|s| {
        for _ in 1..threads {
            s.spawn(|| {
                burn(ns);
                done.wait();
                read.wait();
            });
        }
        burn(ns);
        done.wait();
        let total = schedstat_sum();
        read.wait();
        total
    });
    println!("schedstat_ns={total}");
}
