//! Helpers shared by the end-to-end tests: the agent binary, the test programs, and the
//! kernel's own accounting (`/proc/<pid>/task/*/schedstat`) to compare against.

pub mod browser;
pub mod cuda;
pub mod known_model;
pub mod lifecycle;
pub mod otlp;
pub mod powercap;
pub mod tls;

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

/// The energy-agent binary under test (set by `cargo xtask test`, else next to the tests).
pub fn agent_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ENERGY_AGENT_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/debug/deps/<test> → target/debug/energy-agent
    let dir = exe.parent().and_then(|p| p.parent()).expect("target dir");
    dir.join("energy-agent")
}

/// Whether the tests run as root (the eBPF tests need it; CI always is).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Panics with a clear message unless running as root.
pub fn require_root() {
    assert!(
        is_root(),
        "this test loads eBPF programs and must run as root (cargo xtask test)"
    );
}

/// Sum of `sum_exec_runtime` (ns) over the threads in a schedstat listing.
pub fn parse_schedstat_ns(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// A running `energy-agent run --output json` whose interval lines are collected.
pub struct AgentRun {
    child: Child,
    lines: mpsc::Receiver<serde_json::Value>,
    /// Every interval received so far.
    pub intervals: Vec<serde_json::Value>,
}

impl AgentRun {
    /// Starts the agent with `args` after `run --output json`, and waits for its first
    /// interval (so the probe is attached before the test goes on).
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(args, |_| {})
    }

    /// [`AgentRun::start`], with `env` added to the agent's environment.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_with(args, |command| {
            command.envs(env.iter().copied());
        })
    }

    /// [`AgentRun::start`], with `configure` given the command before it starts (to
    /// set its environment, its stderr, the user it runs as).
    pub fn start_with(args: &[&str], configure: impl FnOnce(&mut Command)) -> Self {
        let mut command = Command::new(agent_bin());
        command
            .args(["run", "--output", "json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        configure(&mut command);
        let mut child = command.spawn().expect("starting energy-agent");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(e) => panic!("agent printed a line that is not JSON ({e}): {line}"),
                }
            }
        });
        let mut run = Self {
            child,
            lines: rx,
            intervals: Vec::new(),
        };
        run.wait_intervals(1, Duration::from_secs(30));
        run
    }

    /// Waits until `n` more intervals have arrived.
    pub fn wait_intervals(&mut self, n: usize, timeout: Duration) {
        for _ in 0..n {
            match self.lines.recv_timeout(timeout) {
                Ok(v) => self.intervals.push(v),
                Err(e) => panic!("no interval from the agent within {timeout:?}: {e}"),
            }
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops the agent with SIGINT, collects the remaining intervals, and returns its
    /// exit status.
    pub fn stop(mut self) -> (std::process::ExitStatus, Vec<serde_json::Value>) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("waiting for energy-agent");
        while let Ok(v) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.intervals.push(v);
        }
        (status, std::mem::take(&mut self.intervals))
    }
}

/// An agent a test did not stop (it panicked first) is killed, not left running.
impl Drop for AgentRun {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Total on-CPU ns the agent reported for `pid` over `intervals`.
pub fn agent_cpu_ns(intervals: &[serde_json::Value], pid: u32) -> u64 {
    intervals
        .iter()
        .flat_map(|i| i["processes"].as_array().into_iter().flatten())
        .filter(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .map(|p| p["cpu_time_ns"].as_u64().unwrap_or(0))
        .sum()
}

/// Path of a test program built beside the tests (`burner`, `forker`).
pub fn test_bin(name: &str) -> PathBuf {
    agent_bin().with_file_name(name)
}

/// Every interval's entry for `domain` in `power.domains` (joules, watts, source).
pub fn domain_series(intervals: &[serde_json::Value], domain: &str) -> Vec<serde_json::Value> {
    intervals
        .iter()
        .filter_map(|i| {
            i["power"]["domains"]
                .as_array()?
                .iter()
                .find(|d| d["domain"] == domain)
                .cloned()
        })
        .collect()
}

/// The workspace's root (for the files under deploy/ the tests check).
pub fn repo_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// `GET path` on 127.0.0.1:`port`: the status code and the body, or None when nothing
/// answers (the agent's health and metrics endpoints).
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}
