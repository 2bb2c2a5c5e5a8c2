//! Builds the eBPF object (energy-ebpf) with nightly and leaves it in OUT_DIR/energy.
//!
//! The nested `cargo build` uses the flags aya-build 0.2.0 uses, but its output is
//! captured rather than turned line by line into cargo warnings: a successful build shows
//! one line (which toolchain, how long) plus any compiler warnings; a failed one prints
//! the compiler's and cargo's messages without cargo's `Compiling …`/`Downloading …`
//! progress lines, and fails the build.
//!
//! With the `bench-reference` feature it also builds the benchmark's reference programs
//! (energy-ebpf's `reference` binary) into OUT_DIR/reference.
//!
//! Without bpf-linker on PATH (or with ENERGY_SKIP_EBPF=1) it writes an empty object and
//! warns, so `cargo check`/`cargo clippy` work anywhere; the agent then refuses to start
//! with a message that says how to build it (`cargo xtask build`).
use std::{
    env,
    ffi::OsString,
    fs,
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    thread,
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};

/// The toolchain `rustup run` gets for the eBPF crate (see docs/TOOLCHAIN.md).
const NIGHTLY: &str = "nightly";

fn main() -> Result<()> {
    println!("cargo:rerun-if-env-changed=ENERGY_SKIP_EBPF");
    println!("cargo:rerun-if-env-changed=PATH");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let ebpf_dir = manifest_dir.join("../energy-ebpf");
    let common_dir = manifest_dir.join("../energy-common");
    // energy-ebpf is no dependency of ours, so cargo only reruns this script when told to.
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!("cargo:rerun-if-changed={}", common_dir.display());

    let skip = env::var_os("ENERGY_SKIP_EBPF").is_some_and(|v| v == "1");
    if skip || !on_path("bpf-linker") {
        let why = if skip {
            "ENERGY_SKIP_EBPF=1"
        } else {
            "bpf-linker is not on PATH"
        };
        println!(
            "cargo:warning={why}: building without eBPF programs; run `cargo xtask build` for a working agent"
        );
        fs::write(out_dir.join("energy"), b"").context("writing empty eBPF object")?;
        fs::write(out_dir.join("reference"), b"").context("writing empty eBPF object")?;
        return Ok(());
    }

    let started = Instant::now();
    let toolchain = Toolchain::find();
    let build = NestedBuild::run(&toolchain, &out_dir)?;
    if !build.status.success() {
        for message in &build.messages {
            eprintln!("{message}");
        }
        // An expected failure, reported above: exit without anyhow's backtrace.
        eprintln!(
            "building the eBPF programs (energy-ebpf) with {} failed ({})",
            toolchain.describe(),
            build.status
        );
        std::process::exit(1);
    }
    let names = copy_executables(&build.executables, &out_dir)?;
    let when = if build.fresh {
        "already up to date".to_string()
    } else {
        format!("in {:.1}s", started.elapsed().as_secs_f64())
    };
    println!(
        "cargo:warning=eBPF programs ({names}) built by {} ({when})",
        toolchain.describe()
    );
    // Compiler warnings on the eBPF crates are the only other thing worth a line.
    for line in build.messages.iter().flat_map(|m| m.lines()) {
        if !line.trim().is_empty() {
            println!("cargo:warning={line}");
        }
    }
    Ok(())
}

/// How to run nightly's cargo and rustc: through `rustup run nightly`, or (without
/// rustup) whatever is on PATH, as aya-build does.
struct Toolchain {
    /// `rustup run nightly`, or nothing.
    prefix: Vec<OsString>,
}

impl Toolchain {
    fn find() -> Self {
        let prefix = match find_on_path("rustup") {
            Some(rustup) => vec![rustup.into(), "run".into(), NIGHTLY.into()],
            None => Vec::new(),
        };
        Self { prefix }
    }

    /// `program` run by this toolchain.
    fn command(&self, program: &str) -> Command {
        match self.prefix.split_first() {
            Some((wrapper, args)) => {
                let mut cmd = Command::new(wrapper);
                cmd.args(args).arg(program);
                cmd
            }
            None => Command::new(program),
        }
    }

    /// `rustc 1.97.0-nightly (e50aa6fba 2026-05-19) via rustup run nightly`.
    fn describe(&self) -> String {
        let how = if self.prefix.is_empty() {
            "the rustc on PATH (no rustup)".to_string()
        } else {
            format!("rustup run {NIGHTLY}")
        };
        let version = self
            .command("rustc")
            .arg("-V")
            .env_remove("RUSTC")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        match version {
            Some(version) => format!("{version} via {how}"),
            None => how,
        }
    }
}

/// What the nested `cargo build` of energy-ebpf left behind.
struct NestedBuild {
    status: ExitStatus,
    /// Rendered compiler messages (each ending in a newline), then cargo's own lines
    /// other than progress lines.
    messages: Vec<String>,
    /// (binary target name, path) of each built eBPF object.
    executables: Vec<(String, PathBuf)>,
    /// Whether cargo found every artifact up to date (nothing was compiled).
    fresh: bool,
}

impl NestedBuild {
    /// Runs `cargo build` for bpfel-unknown-none with aya-build 0.2.0's flags.
    fn run(toolchain: &Toolchain, out_dir: &Path) -> Result<Self> {
        let mut cmd = nested_cargo(toolchain, out_dir)?;
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let stderr = child
            .stderr
            .take()
            .context("no stderr from the nested cargo")?;
        let stderr = thread::spawn(move || {
            BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>()
        });
        let stdout = child
            .stdout
            .take()
            .context("no stdout from the nested cargo")?;
        let mut build = Self {
            status: ExitStatus::default(),
            messages: Vec::new(),
            executables: Vec::new(),
            fresh: true,
        };
        for line in BufReader::new(stdout).lines() {
            build.read_message(&line.context("reading the nested cargo's output")?);
        }
        build.status = child
            .wait()
            .with_context(|| format!("waiting for {cmd:?}"))?;
        let stderr = stderr
            .join()
            .map_err(|_| anyhow!("reading the nested cargo's stderr panicked"))?;
        build.messages.extend(
            stderr
                .into_iter()
                .filter(|l| !is_progress(l) && !l.trim().is_empty()),
        );
        Ok(build)
    }

    /// Takes one line of `--message-format=json` output.
    fn read_message(&mut self, line: &str) {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            self.messages.push(line.to_string());
            return;
        };
        match message["reason"].as_str() {
            Some("compiler-message") => {
                if let Some(rendered) = message["message"]["rendered"].as_str() {
                    self.messages.push(format!("{}\n", rendered.trim_end()));
                }
            }
            Some("compiler-artifact") => {
                self.fresh &= message["fresh"] == true;
                if let (Some(name), Some(exe)) = (
                    message["target"]["name"].as_str(),
                    message["executable"].as_str(),
                ) {
                    self.executables.push((name.to_string(), exe.into()));
                }
            }
            _ => {}
        }
    }
}

/// The nested `cargo build`: the flags aya-build 0.2.0 passes, with its own target
/// directory under OUT_DIR (cargo would otherwise wait on its own lock).
fn nested_cargo(toolchain: &Toolchain, out_dir: &Path) -> Result<Command> {
    let endian = env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN not set")?;
    let target = match endian.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported endian {other:?}"),
    };
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    let arch = if arch.starts_with("riscv64") {
        "riscv64"
    } else {
        &arch
    };
    let mut cmd = toolchain.command("cargo");
    cmd.args([
        "build",
        "--package",
        "energy-ebpf",
        "--message-format=json",
        "--release",
        "--target",
        target,
        "-Z",
        "build-std=core",
    ]);
    // The agent's programs; the benchmark's reference programs only when asked for.
    cmd.args(["--bin", "energy"]);
    if env::var_os("CARGO_FEATURE_BENCH_REFERENCE").is_some() {
        cmd.args(["--bin", "reference"]);
    }
    cmd.arg("--target-dir").arg(out_dir.join("ebpf-target"));
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_string(),
        "-Clink-arg=--btf".to_string(),
        // BPF v3: 64-bit atomics (compare-and-swap, exchange; Linux ≥ 5.12), which the
        // hot-task cache's slot hand-over uses.
        "-Ctarget-cpu=v3".to_string(),
    ];
    cmd.env("CARGO_ENCODED_RUSTFLAGS", rustflags.join("\x1f"));
    // The outer build's rustc (stable) must not leak into the nightly build.
    cmd.env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER");
    Ok(cmd)
}

/// Whether `line` is one of cargo's progress lines (`   Compiling foo v1.0`,
/// `  Downloaded bar v2.0`, `    Finished …`): a capitalised verb right-aligned to
/// column 12. Errors, warnings and their `Caused by:` details never look like that.
fn is_progress(line: &str) -> bool {
    let rest = line.trim_start();
    let indent = line.len() - rest.len();
    let Some((verb, _)) = rest.split_once(' ') else {
        return false;
    };
    let aligned = indent + verb.len() == 12 || (indent == 0 && verb.len() > 12);
    aligned
        && verb.starts_with(|c: char| c.is_ascii_uppercase())
        && verb.chars().all(|c| c.is_ascii_alphabetic())
}

/// Copies each built object to OUT_DIR/NAME; returns the names.
fn copy_executables(executables: &[(String, PathBuf)], out_dir: &Path) -> Result<String> {
    if executables.is_empty() {
        bail!("the nested cargo build of energy-ebpf succeeded but reported no binary");
    }
    for (name, path) in executables {
        let dst = out_dir.join(name);
        fs::copy(path, &dst)
            .with_context(|| format!("copying {} to {}", path.display(), dst.display()))?;
    }
    let names: Vec<&str> = executables.iter().map(|(n, _)| n.as_str()).collect();
    Ok(names.join(", "))
}

fn find_on_path(program: &str) -> Option<PathBuf> {
    let paths = env::var_os("PATH")?;
    env::split_paths(&paths)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn on_path(program: &str) -> bool {
    find_on_path(program).is_some()
}
