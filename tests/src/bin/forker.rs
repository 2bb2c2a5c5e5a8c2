//! Test workload: starts many short processes (each a copy of this program that burns a
//! few milliseconds and exits), `parallel` at a time, and prints each child's pid.
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
            let mut first = running.remove(0);
            first.wait().expect("wait");
        }
        let child = Command::new(&exe)
            .args(["--child", &burn_ms])
            .spawn()
            .expect("spawn child");
        writeln!(out, "{}", child.id()).expect("stdout");
        running.push(child);
    }
    for mut child in running {
        child.wait().expect("wait");
    }
}
