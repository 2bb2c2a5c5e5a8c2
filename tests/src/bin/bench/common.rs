//! What every benchmark needs: the machine's description, the agent as a child process,
//! /proc readers and order statistics.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// Settings shared by the benchmarks.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A 10-second-per-benchmark run that only proves the harness works.
    pub smoke: bool,
    /// The agent binary.
    pub agent: PathBuf,
    /// `--soak-seconds`: the soak's length when not a smoke run (default 600).
    pub soak_seconds: Option<u64>,
}

/// A program built beside this one (`burner`, `ioctler`, `energy-agent`).
pub fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.with_file_name(name)
}

/// The machine, for results that carry absolute times.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "cpu_model": model,
        "kernel": kernel.trim(),
        "virtualized": cpuinfo.contains(" hypervisor"),
    })
}

/// A running agent whose JSON interval lines (when asked for) are collected.
pub struct Agent {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Agent {
    /// Starts `energy-agent run ARGS` (with `--output json` when `json`, else its
    /// output discarded) and waits until its programs are attached.
    pub fn start(s: &Settings, args: &[&str], json: bool) -> Self {
        Self::start_with(s, &[], args, json)
    }

    /// As [`Agent::start`], under `wrapper` (e.g. `taskset -c 0`).
    pub fn start_with(s: &Settings, wrapper: &[&str], args: &[&str], json: bool) -> Self {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&s.agent);
                c
            }
            None => Command::new(&s.agent),
        };
        cmd.arg("run").args(args);
        if json {
            cmd.args(["--output", "json"]);
        }
        let mut child = cmd
            .stdout(if json { Stdio::piped() } else { Stdio::null() })
            .stderr(Stdio::null())
            .spawn()
            .expect("starting energy-agent");
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if let Ok(v) = serde_json::from_str(&line) {
                        lines.lock().unwrap().push(v);
                    }
                }
            });
        }
        let agent = Self { child, lines };
        let start = Instant::now();
        // Its own program: other agents on a shared host have theirs.
        while process_switch_stats(agent.pid()).is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the agent did not attach within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        agent
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The interval lines so far.
    pub fn intervals(&self) -> Vec<Value> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for `n` more interval lines.
    pub fn wait_intervals(&self, n: usize, timeout: Duration) {
        let target = self.lines.lock().unwrap().len() + n;
        let start = Instant::now();
        while self.lines.lock().unwrap().len() < target && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops it (SIGINT), waits for it to detach, and returns its interval lines.
    pub fn stop(mut self) -> Vec<Value> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        std::thread::sleep(Duration::from_millis(300));
        self.intervals()
    }
}

/// Waits until the agent's receiver accepts connections on `port` (it binds after the
/// programs attach).
pub fn wait_listening(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the agent's receiver did not listen on {port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The ids of the BPF programs process `pid` holds (from its fds' fdinfo).
pub fn programs_of(pid: u32) -> std::collections::HashSet<u32> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Default::default();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect()
}

/// Cumulative (run time ns, runs) of the `sched_switch` program process `pid` holds,
/// or None while it holds none.
pub fn process_switch_stats(pid: u32) -> Option<(u64, u64)> {
    let ids = programs_of(pid);
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| {
            ids.contains(&p.id())
                && p.name_as_str()
                    .is_some_and(|n| n.starts_with("sched_switch"))
        })
        .map(|p| (p.run_time().as_nanos() as u64, p.run_count()))
}

/// utime + stime of a process, seconds (from /proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the comm: state is field 0; utime 11, stime 12.
    (ticks(11) + ticks(12)) / clock_ticks()
}

/// USER_HZ.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

/// Peak resident set size of a process, MiB (VmHWM).
pub fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The `q`-quantile (0–1) of `values` (nearest rank on a sorted copy).
pub fn quantile(values: &[f64], q: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (q * (v.len() - 1) as f64).round() as usize;
    v[rank.min(v.len() - 1)]
}

/// A deterministic pseudo-random sequence (the benchmarks need no more).
pub struct Lcg(u64);

impl Lcg {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}
