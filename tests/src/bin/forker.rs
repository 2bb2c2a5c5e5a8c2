//! Test workload: starts many short processes (each a copy of this program that burns a
//! few milliseconds and exits), `parallel` at a time, and prints `done PID NS` for each
//! child when it is reaped, NS being the CPU time the kernel accounted to it (wait4's
//! rusage: user + system, which the kernel keeps equal to the task's runtime).
//!
//! usage: forker <children> <parallel> <burn-ms>    (child mode: forker --child <burn-ms>)

use std::{
    io::Write,
    process::{Child, Command},
    time::{Duration, Instant},
};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--child") {
        let ms: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
        let until = Instant::now() + Duration::from_millis(ms);
        let mut x = 1u64;
        while Instant::now() < until {
            x = std::hint::black_box(x.wrapping_mul(3).wrapping_add(1));
        }
        return;
    }
    let children: usize = args.get(1).and_then(|s| s.parse().ok()).expect("children");
    let parallel: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(4);
    let burn_ms = args.get(3).cloned().unwrap_or_else(|| "2".into());
    let exe = std::env::current_exe().expect("current_exe");
    let mut running: Vec<Child> = Vec::new();
    let mut out = std::io::stdout().lock();
    for _ in 0..children {
        if running.len() >= parallel {
            reap(running.remove(0), &mut out);
        }
        let child = Command::new(&exe)
            .args(["--child", &burn_ms])
            .spawn()
            .expect("spawn child");
        running.push(child);
    }
    for child in running {
        reap(child, &mut out);
    }
}

/// Waits for `child` and prints `done PID NS` with the CPU time the kernel gave it.
fn reap(child: Child, out: &mut impl Write) {
    let pid = child.id();
    let mut status = 0;
    // SAFETY: rusage is plain data, filled by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, which `child` no longer reaps (it is dropped).
    let rc = unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
    assert_eq!(rc, pid as i32, "wait4: {}", std::io::Error::last_os_error());
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    writeln!(
        out,
        "done {pid} {}",
        ns(usage.ru_utime) + ns(usage.ru_stime)
    )
    .expect("stdout");
}
