//! `cargo xtask fuzz [TARGET…] [--time S]`: the cargo-fuzz targets of `fuzz/` under
//! libFuzzer (nightly; no sanitizer, debug assertions and overflow checks on), each for
//! S seconds (default 60), starting from the committed seeds (`fuzz/corpus/TARGET`,
//! read only) and a working corpus under `fuzz/target/corpus/TARGET`. Prints the
//! executions and corpus size per target; a crash stops with its input's path, to be
//! minimised and committed to `fuzz/regressions/TARGET/` (replayed by `cargo xtask
//! test`) with a regression test beside the fix.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

use crate::setup::{self, NIGHTLY, workspace_root};

/// Every target, in the order they run.
pub const TARGETS: [&str; 6] = ["otlp", "sysfs", "replay", "config", "carbon", "procfs"];

/// What one target did.
#[derive(Debug)]
pub struct Outcome {
    /// The target.
    pub target: &'static str,
    /// Inputs executed.
    pub runs: u64,
    /// Working corpus size at the end.
    pub corpus: usize,
    /// Whether it ran clean.
    pub clean: bool,
    /// Where the crashing input is, when it crashed.
    pub artifact: Option<PathBuf>,
}

fn fuzz_dir() -> PathBuf {
    workspace_root().join("fuzz")
}

/// `cargo +nightly fuzz SUBCOMMAND` with the options every call shares.
fn cargo_fuzz(subcommand: &str) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.current_dir(workspace_root())
        .args(["run", NIGHTLY, "cargo", "fuzz", subcommand])
        .args([
            "--sanitizer",
            "none",
            "--features",
            "fuzzing",
            "--target-dir",
        ])
        .arg(fuzz_dir().join("target"))
        // The targets do not load the eBPF programs: no object to build.
        .env("ENERGY_SKIP_EBPF", "1");
    cmd
}

/// Builds every target once.
pub fn build() -> Result<()> {
    eprintln!("[xtask] building the fuzz targets (nightly, cargo-fuzz)");
    let status = cargo_fuzz("build")
        .status()
        .context("running cargo fuzz build")?;
    if !status.success() {
        bail!("cargo fuzz build failed ({status})");
    }
    Ok(())
}

/// Runs `target` for `seconds`.
pub fn run_target(target: &'static str, seconds: u64) -> Result<Outcome> {
    let work = fuzz_dir().join("target/corpus").join(target);
    let artifacts = fuzz_dir().join("target/artifacts").join(target);
    std::fs::create_dir_all(&work).context("the working corpus")?;
    std::fs::create_dir_all(&artifacts).context("the artifacts dir")?;
    let started = Instant::now();
    let out = cargo_fuzz("run")
        .arg(target)
        .arg(&work)
        .arg(fuzz_dir().join("corpus").join(target))
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .arg("-rss_limit_mb=2048")
        .arg("-timeout=10")
        .arg("-print_final_stats=1")
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .output()
        .with_context(|| format!("running cargo fuzz run {target}"))?;
    let log = String::from_utf8_lossy(&out.stderr);
    let runs = log
        .lines()
        .find_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    let corpus = std::fs::read_dir(&work).map_or(0, |d| d.count());
    let artifact = newest(&artifacts);
    let clean = out.status.success();
    if !clean {
        let tail: Vec<&str> = log.lines().rev().take(60).collect();
        for line in tail.into_iter().rev() {
            eprintln!("  {line}");
        }
    }
    eprintln!(
        "[xtask] fuzz {target}: {runs} executions in {:.0} s, corpus {corpus}{}",
        started.elapsed().as_secs_f64(),
        if clean { "" } else { ": CRASHED" }
    );
    Ok(Outcome {
        target,
        runs,
        corpus,
        clean,
        artifact: if clean { None } else { artifact },
    })
}

fn newest(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
}

/// `cargo xtask fuzz [TARGET…] [--time S]`.
pub fn fuzz(args: &[String]) -> Result<()> {
    let mut seconds = 60;
    let mut targets = Vec::new();
    let mut it = args.iter().filter(|a| *a != "--");
    while let Some(a) = it.next() {
        if a == "--time" {
            seconds = it
                .next()
                .and_then(|s| s.parse().ok())
                .context("--time needs a number of seconds")?;
        } else if let Some(t) = TARGETS.iter().find(|t| *t == a) {
            targets.push(*t);
        } else {
            bail!(
                "unknown fuzz target {a:?} (targets: {})",
                TARGETS.join(", ")
            );
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    setup::setup()?;
    setup::ensure_cargo_fuzz()?;
    build()?;
    let mut crashed = Vec::new();
    for target in targets {
        let o = run_target(target, seconds)?;
        if !o.clean {
            crashed.push(format!(
                "{} ({})",
                o.target,
                o.artifact
                    .map_or("no artifact".into(), |p| p.display().to_string())
            ));
        }
    }
    if !crashed.is_empty() {
        bail!(
            "fuzz targets crashed: {}. Reproduce with `rustup run nightly cargo fuzz run --features fuzzing --sanitizer none TARGET INPUT`, fix, and commit the input to fuzz/regressions/TARGET/",
            crashed.join(", ")
        );
    }
    Ok(())
}
