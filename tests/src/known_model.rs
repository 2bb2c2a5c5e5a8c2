//! The known power model of the idle-power tests and benchmark: a powercap tree at
//! package = 10 W + 15 W per busy CPU of this machine and DRAM 2 W, under which a
//! process's dynamic energy is exactly 15 W × its CPU time, and a workload of three
//! concurrent processes of different CPU shares whose load varies from interval to
//! interval, measured with `measure` and `run --output json`.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    AgentRun, agent_bin,
    powercap::{PowercapTree, ZoneSpec},
    test_bin,
};

/// The package zone.
pub const PKG: &str = "intel-rapl:0";
/// Its DRAM zone.
pub const DRAM: &str = "intel-rapl:0/intel-rapl:0:0";
/// The package's idle power, watts.
pub const IDLE_W: f64 = 10.0;
/// Watts per busy CPU.
pub const K_W: f64 = 15.0;

/// Three concurrent processes of different CPU shares whose load varies from interval
/// to interval, about 8 s each: 0.3 CPU steady; 0.5 CPU in 400 ms bursts; 2 threads at
/// 0.25 CPU each in 300 ms bursts.
pub const WORKLOAD: [&[&str]; 3] = [
    &["2.4", "1", "0.3"],
    &["3.6", "1", "0.5", "-", "800"],
    &["2.0", "2", "0.25", "-", "1200"],
];

/// A number, or a panic naming the value.
pub fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The tree, advancing at the known model.
pub fn tree() -> PowercapTree {
    PowercapTree::start_following_load(
        vec![
            ZoneSpec {
                path: PKG,
                name: "package-0",
                watts: IDLE_W,
                range_uj: 262_143_328_850,
            },
            ZoneSpec {
                path: DRAM,
                name: "dram",
                watts: 2.0,
                range_uj: 65_712_999_613,
            },
        ],
        &[(PKG, K_W)],
        0,
    )
}

fn utf8(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

/// The flags every agent command gets: the tree's meter, `state` (None: `--no-state`)
/// and `--interval`.
pub fn flags<'a>(root: &'a Path, state: Option<&'a Path>, interval: &'a str) -> Vec<&'a str> {
    let mut v = vec![
        "--no-gpu",
        "--power-source",
        "rapl-powercap",
        "--powercap-root",
        utf8(root),
    ];
    match state {
        Some(s) => v.extend(["--state-dir", utf8(s)]),
        None => v.push("--no-state"),
    }
    v.extend(["--interval", interval]);
    v
}

/// One burner of the workload: its energy and CPU time per the agent, and its CPU time
/// per the kernel's schedstat.
#[derive(Debug)]
pub struct Burned {
    /// Energy attributed, joules.
    pub energy_j: f64,
    /// CPU time per the agent, seconds.
    pub cpu_s: f64,
    /// CPU time per the kernel's schedstat (the agent's where the burner is not done).
    pub schedstat_s: f64,
}

impl Burned {
    /// Energy over the known model's dynamic energy of its CPU time.
    pub fn ratio(&self) -> f64 {
        self.energy_j / (K_W * self.cpu_s)
    }
}

/// `measure --json` of `workload` (burner arguments) started by one shell; each
/// burner's figures, the report, and the instants the command ran between.
pub fn measure_workload(
    workload: &[&[&str]],
    flags: &[&str],
) -> (Vec<Burned>, serde_json::Value, Instant, Instant) {
    let dir = tempfile::tempdir().expect("tempdir");
    let burner = test_bin("burner");
    let mut script: String = workload
        .iter()
        .enumerate()
        .map(|(i, args)| {
            format!(
                "{} {} > {d}/{i}.out & echo $! > {d}/{i}.pid\n",
                burner.display(),
                args.join(" "),
                d = dir.path().display()
            )
        })
        .collect();
    script.push_str("wait\n");
    let started = Instant::now();
    let out = Command::new(agent_bin())
        .args(["measure", "--json"])
        .args(flags)
        .args(["--", "sh", "-c", &script])
        .output()
        .expect("running measure");
    let ended = Instant::now();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value =
        serde_json::from_str(stderr.trim().lines().last().unwrap_or_default())
            .unwrap_or_else(|e| panic!("report is not JSON ({e}): {stderr}"));
    let burned = (0..workload.len())
        .map(|i| {
            let read = |ext| std::fs::read_to_string(dir.path().join(format!("{i}.{ext}")));
            let pid: u64 = read("pid")
                .expect("pid file")
                .trim()
                .parse()
                .expect("a pid");
            let schedstat: f64 = read("out")
                .expect("burner output")
                .trim()
                .strip_prefix("schedstat_ns=")
                .and_then(|n| n.parse().ok())
                .expect("schedstat_ns=N");
            let p = (report["processes"].as_array().expect("processes").iter())
                .find(|p| p["pid"].as_u64() == Some(pid))
                .unwrap_or_else(|| panic!("burner {pid} not in the report: {report}"));
            Burned {
                energy_j: f(&p["energy_j"]),
                cpu_s: f(&p["cpu_time_s"]),
                schedstat_s: schedstat / 1e9,
            }
        })
        .collect();
    (burned, report, started, ended)
}

/// The report's idle power entry for `domain`.
pub fn idle_of<'a>(idle_power: &'a serde_json::Value, domain: &str) -> &'a serde_json::Value {
    (idle_power.as_array().expect("idle_power").iter())
        .find(|d| d["domain"] == domain)
        .unwrap_or_else(|| panic!("no idle power for {domain}: {idle_power}"))
}

/// Starts a burner for each entry of `workload` (its arguments), output discarded.
pub fn spawn(workload: &[&[&str]]) -> Vec<Child> {
    workload
        .iter()
        .map(|a| {
            Command::new(test_bin("burner"))
                .args(*a)
                .stdout(Stdio::null())
                .spawn()
                .expect("burner")
        })
        .collect()
}

/// Starts `workload` (burner arguments), then the agent (no idle lead); returns the
/// intervals and the burners' pids once they are done, and when the agent ran.
pub fn run_workload(
    workload: &[&[&str]],
    flags: &[&str],
) -> (Vec<serde_json::Value>, Vec<u32>, Instant, Instant) {
    let mut burners = spawn(workload);
    let started = Instant::now();
    let mut agent = AgentRun::start(flags);
    for b in &mut burners {
        assert!(b.wait().expect("burner").success());
    }
    agent.wait_intervals(2, Duration::from_secs(10));
    let (_, intervals) = agent.stop();
    let pids = burners.iter().map(Child::id).collect();
    (intervals, pids, started, Instant::now())
}

/// (energy, CPU time) of `pid` over the intervals `keep` selects.
pub fn sum_of(
    intervals: &[serde_json::Value],
    pid: u32,
    keep: impl Fn(&serde_json::Value) -> bool,
) -> Burned {
    let (mut energy_j, mut cpu_s) = (0.0, 0.0);
    for i in intervals.iter().filter(|i| keep(i)) {
        for p in i["processes"].as_array().expect("processes") {
            if p["pid"].as_u64() == Some(u64::from(pid)) {
                energy_j += f(&p["energy_j"]);
                cpu_s += f(&p["cpu_time_s"]);
            }
        }
    }
    Burned {
        energy_j,
        cpu_s,
        schedstat_s: cpu_s,
    }
}
