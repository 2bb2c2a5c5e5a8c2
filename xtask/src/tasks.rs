//! build, run and test: each runs set-up first, so every command works on a fresh machine.

use std::{env, ffi::OsString, path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::setup::{self, Tools, is_root, workspace_root};

/// A cargo command in the workspace with bpf-linker first on PATH.
fn cargo(tools: &Tools) -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    let mut paths = vec![tools.bin_dir.clone()];
    if let Some(path) = env::var_os("PATH") {
        paths.extend(env::split_paths(&path));
    }
    cmd.env(
        "PATH",
        env::join_paths(paths).unwrap_or_else(|_| OsString::from("/usr/bin")),
    );
    cmd
}

fn run_step(name: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("[xtask] {name}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    Ok(())
}

/// The cargo target directory.
pub fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// `cargo xtask build [--release]`.
pub fn build(release: bool) -> Result<()> {
    let tools = setup::setup_build()?;
    let mut cmd = cargo(&tools);
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    run_step("building the workspace", &mut cmd)
}

/// `cargo xtask run [-- ARGS]`: the agent on its defaults when ARGS is empty.
pub fn run(args: &[String]) -> Result<()> {
    let tools = setup::setup()?;
    run_step(
        "building energy-agent (release)",
        cargo(&tools).args(["build", "--release", "-p", "energy-agent"]),
    )?;
    let mut args: Vec<String> = args.iter().filter(|a| *a != "--").cloned().collect();
    if args.is_empty() {
        args.push("run".into());
    }
    if !is_root() {
        eprintln!("[xtask] note: not running as root; the agent needs root or CAP_BPF+CAP_PERFMON");
    }
    let binary = target_dir().join("release/energy-agent");
    eprintln!("[xtask] {} {}", binary.display(), args.join(" "));
    let status = Command::new(&binary)
        .args(&args)
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}

/// Sums of the `test result:` lines cargo test printed.
#[derive(Debug, Default, PartialEq, Eq)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    /// Adds one `test result: ok. 5 passed; 0 failed; 1 ignored; …` line.
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match kind {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

/// Runs a cargo test command, echoing its output and adding its results to `tally`.
fn run_tests(name: &str, cmd: &mut Command, tally: &mut Tally) -> Result<()> {
    use std::io::{BufRead, BufReader};
    eprintln!("[xtask] {name}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        tally.add_line(&line);
    }
    let status = child.wait()?;
    if !status.success() {
        println!(
            "tests: {} passed, {} failed",
            tally.passed,
            tally.failed.max(1)
        );
        bail!("{name} failed ({status})");
    }
    Ok(())
}

/// Commands the tests and benchmarks need, with the Debian package of each.
const TEST_TOOLS: &[(&str, &str)] = &[
    ("tmux", "tmux"),
    ("setpriv", "util-linux"),
    ("prometheus", "prometheus"),
    ("promtool", "prometheus"),
    ("capsh", "libcap2-bin"),
    ("unshare", "util-linux"),
    ("perf", "linux-perf"),
    ("taskset", "util-linux"),
    // The package of the command depends on libfaketime, which tests/tests/clock.rs preloads.
    ("faketime", "faketime"),
    ("chromium", "chromium"),
    ("openssl", "openssl"),
    ("setcap", "libcap2-bin"),
];

/// Commands the benchmarks use when present, with their Debian package: bpftrace's
/// one-liners are extra references of the probe benchmark (it runs without them).
const BENCH_TOOLS: &[(&str, &str)] = &[("bpftrace", "bpftrace")];

/// The benchmarks.
const BENCHMARKS: [&str; 7] = [
    "probe", "slowdown", "agent", "enrich", "accuracy", "idle", "soak",
];

/// A short run of every benchmark on the debug build: it proves the harness works (the
/// numbers mean nothing); each counts as a test.
fn bench_smoke(tally: &mut Tally) -> Result<()> {
    eprintln!("[xtask] benchmark smoke runs (harness only; numbers in BENCHMARKS.md)");
    let mut failed = Vec::new();
    for name in BENCHMARKS {
        let status = Command::new(target_dir().join("debug/bench"))
            .args([name, "--smoke", "--out"])
            .arg(target_dir().join("bench/smoke"))
            .env("ENERGY_AGENT_BIN", target_dir().join("debug/energy-agent"))
            .stdout(std::process::Stdio::null())
            .status()
            .with_context(|| format!("running the {name} benchmark"))?;
        println!(
            "bench smoke {name} ... {}",
            if status.success() { "ok" } else { "FAILED" }
        );
        if status.success() {
            tally.passed += 1;
        } else {
            tally.failed += 1;
            failed.push(name);
        }
    }
    if !failed.is_empty() {
        println!("tests: {} passed, {} failed", tally.passed, tally.failed);
        bail!("benchmark smoke runs failed: {}", failed.join(", "));
    }
    Ok(())
}

/// Seconds each fuzz target runs in `cargo xtask test` (`ENERGY_FUZZ_SECONDS`).
const FUZZ_SMOKE_SECONDS: u64 = 20;

/// Every fuzz target for a short while (the six together about two minutes, plus their
/// build): each counts as a test, and a crash fails the run with its input's path.
fn fuzz_smoke(tally: &mut Tally) -> Result<()> {
    let seconds = env::var("ENERGY_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(FUZZ_SMOKE_SECONDS);
    setup::ensure_cargo_fuzz()?;
    crate::fuzz::build()?;
    let mut crashed = Vec::new();
    for target in crate::fuzz::TARGETS {
        let o = crate::fuzz::run_target(target, seconds)?;
        println!(
            "fuzz {target} ({} executions, corpus {}) ... {}",
            o.runs,
            o.corpus,
            if o.clean { "ok" } else { "FAILED" }
        );
        if o.clean {
            tally.passed += 1;
        } else {
            tally.failed += 1;
            crashed.push(format!(
                "{target}: {}",
                o.artifact
                    .map_or("no artifact".into(), |p| p.display().to_string())
            ));
        }
    }
    if !crashed.is_empty() {
        println!("tests: {} passed, {} failed", tally.passed, tally.failed);
        bail!("fuzz targets crashed: {}", crashed.join("; "));
    }
    Ok(())
}

/// `cargo xtask bench [NAME…] [--smoke]`: the benchmarks on a release build; a full run
/// updates BENCHMARKS.md's tables and the plots in docs/bench.
pub fn bench(args: &[String]) -> Result<()> {
    if !is_root() {
        bail!("the benchmarks load eBPF programs and read their statistics: run as root");
    }
    let tools = setup::setup()?;
    setup::ensure_test_tools(TEST_TOOLS)?;
    if let Err(e) = setup::ensure_test_tools(BENCH_TOOLS) {
        eprintln!("[xtask] bpftrace unavailable ({e:#}): the probe benchmark runs without it");
    }
    build_agent_and_test_programs(
        &tools,
        true,
        "building the agent and the benchmarks (release)",
    )?;
    let args: Vec<&String> = args.iter().filter(|a| *a != "--").collect();
    let mut cmd = Command::new(target_dir().join("release/bench"));
    cmd.args(&args)
        .arg("--out")
        .arg(target_dir().join("bench"))
        .env(
            "ENERGY_AGENT_BIN",
            target_dir().join("release/energy-agent"),
        );
    if !args.iter().any(|a| *a == "--smoke") {
        cmd.arg("--markdown")
            .arg(workspace_root().join("BENCHMARKS.md"))
            .arg("--plots")
            .arg(workspace_root().join("docs/bench"));
    }
    run_step("running the benchmarks", &mut cmd)
}

/// Builds the agent and the tests crate's programs (test helpers, the benchmarks).
fn build_agent_and_test_programs(tools: &Tools, release: bool, step: &str) -> Result<()> {
    let mut cmd = cargo(tools);
    cmd.arg("build");
    if release {
        cmd.arg("--release");
    }
    cmd.args(["-p", "energy-agent", "-p", "energy-tests", "--bins"]);
    run_step(step, &mut cmd)
}

/// `cargo xtask test [-- FILTER]`: unit tests, then end-to-end tests one at a time
/// (they load eBPF programs and measure CPU time, so they share the kernel and CPUs).
/// Ends with one `tests: N passed, N failed, N skipped` line over everything.
pub fn test(args: &[String]) -> Result<()> {
    let filter: Vec<String> = args.iter().filter(|a| *a != "--").cloned().collect();
    if !is_root() {
        bail!(
            "the tests load real eBPF programs and need root (or CAP_BPF+CAP_PERFMON+CAP_SYS_ADMIN); run `cargo xtask test` as root"
        );
    }
    let tools = setup::setup()?;
    setup::ensure_test_tools(TEST_TOOLS)?;
    let python = setup::ensure_python_peers(
        &target_dir(),
        &workspace_root().join("tests/py/requirements.txt"),
    )?;
    build_agent_and_test_programs(&tools, false, "building the agent and test programs")?;
    let mut unit = cargo(&tools);
    unit.args([
        "test",
        "-p",
        "energy-common",
        "-p",
        "energy-agent",
        "-p",
        "xtask",
        // The fuzz harnesses, replaying their seeds and every input that once crashed.
        "-p",
        "energy-fuzz",
    ]);
    unit.args(["--", "--color", "never"]).args(&filter);
    let mut tally = Tally::default();
    run_tests("unit tests", &mut unit, &mut tally)?;
    let mut e2e = cargo(&tools);
    e2e.args(["test", "-p", "energy-tests"])
        .env("ENERGY_AGENT_BIN", target_dir().join("debug/energy-agent"))
        .env("ENERGY_TEST_PYTHON", &python)
        .args(["--", "--test-threads=1", "--color", "never"])
        .args(&filter);
    run_tests(
        "end-to-end tests (real eBPF, as root)",
        &mut e2e,
        &mut tally,
    )?;
    if filter.is_empty() {
        bench_smoke(&mut tally)?;
        fuzz_smoke(&mut tally)?;
    }
    println!(
        "tests: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    if tally.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_cargo_test_summaries() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 34 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.09s");
        t.add_line(
            "test result: FAILED. 1 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 3 tests");
        assert_eq!(
            t,
            Tally {
                passed: 35,
                failed: 3,
                ignored: 2
            }
        );
    }
}
