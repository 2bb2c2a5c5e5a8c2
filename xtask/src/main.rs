//! `cargo xtask <command>`: everything a fresh machine needs, one command each.
//!
//! - `setup`: rust-src for nightly, bpf-linker built against nightly's LLVM, tracefs.
//! - `build [--release]`: setup, then build the workspace (with the eBPF object).
//! - `run [-- ARGS]`: build (release) and run the agent; no ARGS = `run` on defaults.
//! - `test [-- FILTER]`: setup, build, then every test (unit, then end-to-end as root),
//!   then a smoke run of each benchmark and 20 s of each fuzz target.
//! - `bench [NAME…] [--smoke]`: the benchmarks on a release build (BENCHMARKS.md).
//! - `fuzz [TARGET…] [--time S]`: the cargo-fuzz targets (`fuzz/`), each for S seconds.

mod fuzz;
mod setup;
mod tasks;

use anyhow::{Result, bail};

fn main() {
    if let Err(err) = dispatch() {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn dispatch() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| "help".into());
    let rest: Vec<String> = args.collect();
    match command.as_str() {
        "setup" => setup::setup().map(|_| ()),
        "build" => tasks::build(rest.iter().any(|a| a == "--release")),
        "run" => tasks::run(&rest),
        "test" => tasks::test(&rest),
        "bench" => tasks::bench(&rest),
        "fuzz" => fuzz::fuzz(&rest),
        "help" | "--help" | "-h" => {
            println!("{}", HELP);
            Ok(())
        }
        other => bail!("unknown command {other:?}\n\n{HELP}"),
    }
}

const HELP: &str = "usage: cargo xtask <command>

commands:
  setup              install rust-src for nightly, build bpf-linker, mount tracefs
  build [--release]  setup, then build the agent with its eBPF programs
  run [-- ARGS]      build (release) and run `energy-agent ARGS` (default: run)
  test [-- FILTER]   setup, build and run every test (needs root for eBPF)
  bench [NAME…]      run the benchmarks (probe, slowdown, agent, enrich, accuracy, idle) on a
                     release build and update BENCHMARKS.md; --smoke for a quick check
  fuzz [TARGET…]     run the fuzz targets (otlp, sysfs, replay, config, carbon, procfs)
                     under libFuzzer, each for --time S seconds (default 60)";
