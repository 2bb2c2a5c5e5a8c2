//! Idempotent tool set-up, as docs/TOOLCHAIN.md describes it: each step says what it
//! does and skips itself when already done.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The nightly toolchain that builds the eBPF crate (energy-agent's build.rs runs
/// `rustup run nightly cargo build`).
pub const NIGHTLY: &str = "nightly";

/// What set-up found or made.
pub struct Tools {
    /// Directory holding bpf-linker, to put first on PATH for builds.
    pub bin_dir: PathBuf,
}

/// Runs every set-up step.
pub fn setup() -> Result<Tools> {
    let tools = setup_build()?;
    step("tracefs", ensure_tracefs)?;
    Ok(tools)
}

/// The steps a build needs (not tracefs, which only running the agent does): what
/// `cargo xtask build` runs, so it works where nothing can be mounted, as in the
/// Dockerfile's builder stage.
pub fn setup_build() -> Result<Tools> {
    step("nightly toolchain", ensure_nightly)?;
    step("rust-src for nightly", ensure_rust_src)?;
    let bin_dir = step("bpf-linker", ensure_bpf_linker)?;
    Ok(Tools { bin_dir })
}

fn step<T>(name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    eprintln!("[setup] {name}: checking");
    let out = f().with_context(|| format!("set-up step `{name}` failed"))?;
    Ok(out)
}

fn say(msg: &str) {
    eprintln!("[setup]   {msg}");
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_version() -> Result<String> {
    output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "-vV"]))
}

fn ensure_nightly() -> Result<()> {
    match nightly_version() {
        Ok(v) => {
            let release = v.lines().find(|l| l.starts_with("release:")).unwrap_or("");
            say(&format!("found ({})", release.trim()));
            Ok(())
        }
        Err(e) => bail!(
            "the `{NIGHTLY}` toolchain is needed to build the eBPF programs and was not found ({e}); install it with `rustup toolchain install nightly`"
        ),
    }
}

fn nightly_sysroot() -> Result<PathBuf> {
    let sysroot =
        output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?;
    Ok(PathBuf::from(sysroot.trim()))
}

/// The environment variable naming an offline rust-src archive (docs/TOOLCHAIN.md).
const RUST_SRC_ARCHIVE: &str = "ENERGY_RUST_SRC_ARCHIVE";

fn ensure_rust_src() -> Result<()> {
    let sysroot = nightly_sysroot()?;
    let src = sysroot.join("lib/rustlib/src/rust/library/core");
    if src.is_dir() {
        say("already installed");
        return Ok(());
    }
    // An archive named explicitly wins: it is there for machines rustup cannot serve.
    if let Some(archive) = env::var_os(RUST_SRC_ARCHIVE).map(PathBuf::from) {
        if !archive.is_file() {
            bail!("{RUST_SRC_ARCHIVE}={} is not a file", archive.display());
        }
        say(&format!(
            "unpacking {} ({RUST_SRC_ARCHIVE})",
            archive.display()
        ));
        return unpack_rust_src(&archive, &sysroot, &src);
    }
    say("installing with rustup (needed for -Z build-std=core)");
    let status = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", NIGHTLY])
        .status()
        .context("running rustup")?;
    if status.success() && src.is_dir() {
        say("installed");
        return Ok(());
    }
    let version = nightly_version()?;
    let Some(archive) = find_rust_src_archive(&version) else {
        bail!(
            "rust-src for {NIGHTLY} is missing and rustup could not install it; install it with `rustup component add rust-src --toolchain {NIGHTLY}` or set {RUST_SRC_ARCHIVE} to a rust-src archive for this exact nightly (docs/TOOLCHAIN.md)"
        );
    };
    say(&format!("rustup failed; unpacking {}", archive.display()));
    unpack_rust_src(&archive, &sysroot, &src)
}

/// Unpacks a `.tar.xz` of the nightly's `lib/rustlib/src` (top entry `rust/`) into its
/// sysroot and checks that `src` (library/core) is then there.
fn unpack_rust_src(archive: &Path, sysroot: &Path, src: &Path) -> Result<()> {
    let dest = sysroot.join("lib/rustlib/src");
    std::fs::create_dir_all(&dest)?;
    let status = Command::new("tar")
        .arg("-xJf")
        .arg(archive)
        .arg("-C")
        .arg(&dest)
        .status()
        .context("running tar")?;
    if !status.success() || !src.is_dir() {
        bail!(
            "unpacking {} did not produce {}",
            archive.display(),
            src.display()
        );
    }
    say("installed from archive");
    Ok(())
}

/// Fallback when rustup fails and no archive is named: an offline copy of the component
/// placed beside the checkout, `shared/toolchain/rust-src-RELEASE-DATE.tar.xz` next to
/// or inside the workspace (`rustc 1.97.0-nightly (… 2026-05-19)` gives
/// `rust-src-1.97.0-nightly-2026-05-19.tar.xz`).
fn find_rust_src_archive(version: &str) -> Option<PathBuf> {
    let release = version
        .lines()
        .find_map(|l| l.strip_prefix("release: "))?
        .trim()
        .to_string();
    let date = version
        .lines()
        .find_map(|l| l.strip_prefix("commit-date: "))?
        .trim()
        .to_string();
    let name = format!("rust-src-{release}-{date}.tar.xz");
    let root = workspace_root();
    [
        root.join("../shared/toolchain"),
        root.join("shared/toolchain"),
    ]
    .into_iter()
    .map(|d| d.join(&name))
    .find(|p| p.is_file())
}

/// The workspace root (the parent of xtask/).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo_home() -> PathBuf {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// bpf-linker must link against the same LLVM as the nightly that compiles the eBPF
/// crate; it is rebuilt when the nightly changed since it was installed.
fn ensure_bpf_linker() -> Result<PathBuf> {
    let version = nightly_version()?;
    let llvm_major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.trim().split('.').next().map(str::to_string))
        .context("nightly rustc does not report its LLVM version")?;
    let feature = format!("llvm-{llvm_major}");
    let home = cargo_home();
    let bin_dir = home.join("bin");
    let linker = bin_dir.join("bpf-linker");
    if linker.is_file() && installed_matches(&home, &feature, &version) && runs(&linker) {
        say(&format!(
            "{} matches nightly's LLVM {llvm_major}",
            linker.display()
        ));
        return Ok(bin_dir);
    }
    if !["21", "22", "23"].contains(&llvm_major.as_str()) {
        bail!("nightly uses LLVM {llvm_major}, which bpf-linker 0.13 does not support (21–23)");
    }
    let sysroot = nightly_sysroot()?;
    let llvm_lib = std::fs::read_dir(sysroot.join("lib"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM-") && n.ends_with(".so"))
        .context("no libLLVM-*.so in the nightly sysroot")?;
    let llvm_lib = llvm_lib
        .trim_start_matches("lib")
        .trim_end_matches(".so")
        .to_string();
    say(&format!(
        "building bpf-linker against nightly's {llvm_lib} (about a minute on 2 cores)"
    ));
    let lib_dir = sysroot.join("lib");
    let rustflags = format!(
        "-L {0} -l dylib={llvm_lib} -C link-args=-Wl,-rpath,{0}",
        lib_dir.display()
    );
    let status = Command::new("cargo")
        .args([
            &format!("+{NIGHTLY}"),
            "install",
            "bpf-linker",
            "--version",
            "^0.13",
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &format!("{feature},no-llvm-linking"),
        ])
        .env("RUSTFLAGS", rustflags)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() || !runs(&linker) {
        bail!("building bpf-linker failed (see the cargo output above)");
    }
    say(&format!("installed {}", linker.display()));
    Ok(bin_dir)
}

/// Whether cargo's install record says bpf-linker was built with `feature` by `rustc_vv`.
fn installed_matches(home: &Path, feature: &str, rustc_vv: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(home.join(".crates2.json")) else {
        return false;
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
        return false;
    };
    let Some(installs) = json["installs"].as_object() else {
        return false;
    };
    installs.iter().any(|(name, entry)| {
        name.starts_with("bpf-linker ")
            && entry["features"]
                .as_array()
                .is_some_and(|f| f.iter().any(|v| v == feature))
            && entry["rustc"].as_str().map(str::trim) == Some(rustc_vv.trim())
    })
}

/// The cargo-fuzz `cargo xtask fuzz` runs (nightly builds the targets).
const CARGO_FUZZ_VERSION: &str = "0.13.2";

/// Installs cargo-fuzz from crates.io unless it is there already.
pub fn ensure_cargo_fuzz() -> Result<()> {
    step("cargo-fuzz", || {
        let found = Command::new("cargo")
            .args(["fuzz", "--version"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        if let Some(version) = found {
            say(&format!("found ({version})"));
            return Ok(());
        }
        say(&format!(
            "installing cargo-fuzz {CARGO_FUZZ_VERSION} with cargo install (about a minute)"
        ));
        let status = Command::new("cargo")
            .args([
                "install",
                "cargo-fuzz",
                "--locked",
                "--version",
                CARGO_FUZZ_VERSION,
            ])
            .status()
            .context("running cargo install cargo-fuzz")?;
        if !status.success() {
            bail!("cargo install cargo-fuzz failed");
        }
        Ok(())
    })
}

fn runs(linker: &Path) -> bool {
    Command::new(linker)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn ensure_tracefs() -> Result<()> {
    let mounted = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find(|p| Path::new(p).join("events").is_dir());
    if let Some(path) = mounted {
        say(&format!("mounted at {path}"));
        return Ok(());
    }
    if !is_root() {
        say("not mounted; the agent mounts it itself when run as root");
        return Ok(());
    }
    say("mounting at /sys/kernel/tracing");
    let status = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status()
        .context("running mount")?;
    if !status.success() {
        bail!("mount -t tracefs tracefs /sys/kernel/tracing failed");
    }
    Ok(())
}

/// Installs the Debian packages the end-to-end tests use as real peers, when missing:
/// (command that must exist, package that provides it).
pub fn ensure_test_tools(tools: &[(&str, &str)]) -> Result<()> {
    step("test tools", || {
        let missing: Vec<&str> = tools
            .iter()
            .filter(|(cmd, _)| !on_path(cmd))
            .map(|(_, pkg)| *pkg)
            .collect();
        if missing.is_empty() {
            say(&format!(
                "present: {}",
                tools.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")
            ));
            return Ok(());
        }
        say(&format!("installing {} with apt-get", missing.join(" ")));
        let update = Command::new("apt-get").args(["update", "-q"]).status();
        if !update.is_ok_and(|s| s.success()) {
            say("apt-get update failed; trying the install anyway");
        }
        let status = Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get install {} failed", missing.join(" "));
        }
        Ok(())
    })
}

/// A Python virtual environment under the target directory with the test peers of
/// `requirements` (the independent OTLP implementations); rebuilt when the file
/// changes. Returns its python.
pub fn ensure_python_peers(target: &Path, requirements: &Path) -> Result<PathBuf> {
    step("python test peers", || {
        let venv = target.join("py-venv");
        let python = venv.join("bin/python");
        let wanted = std::fs::read_to_string(requirements)
            .with_context(|| format!("reading {}", requirements.display()))?;
        let stamp = venv.join("requirements.installed");
        if python.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == wanted) {
            say(&format!("{} is up to date", venv.display()));
            return Ok(python);
        }
        let python3 = ["python3", "python"]
            .into_iter()
            .find(|p| on_path(p))
            .context("no python3 on PATH (the OTLP tests use the Python OpenTelemetry SDK as an independent peer)")?;
        say(&format!(
            "creating {} and installing {}",
            venv.display(),
            requirements.display()
        ));
        let status = Command::new(python3)
            .args(["-m", "venv"])
            .arg(&venv)
            .status()?;
        if !status.success() {
            bail!("python3 -m venv failed (install python3-venv)");
        }
        let status = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "-r",
            ])
            .arg(requirements)
            .status()?;
        if !status.success() {
            bail!("pip install -r {} failed", requirements.display());
        }
        std::fs::write(&stamp, wanted)?;
        Ok(python)
    })
}

/// Whether `program` is on PATH.
pub fn on_path(program: &str) -> bool {
    env::var_os("PATH")
        .map(|paths| env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch directory under the system temp dir, unique to this test run.
    fn scratch(name: &str) -> PathBuf {
        let dir = env::temp_dir().join(format!("xtask-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        dir
    }

    /// An archive laid out as docs/TOOLCHAIN.md says (`rust/library/core/…` at the top).
    fn archive_of(dir: &Path, top: &str) -> PathBuf {
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join(top)).expect("creating the archive's tree");
        std::fs::write(tree.join(top).join("lib.rs"), "").expect("writing a file to archive");
        let archive = dir.join("rust-src.tar.xz");
        let first = top.split('/').next().expect("a top directory");
        let status = Command::new("tar")
            .arg("-cJf")
            .arg(&archive)
            .arg("-C")
            .arg(&tree)
            .arg(first)
            .status()
            .expect("running tar");
        assert!(status.success(), "tar -cJf failed: {status}");
        archive
    }

    #[test]
    fn unpacks_a_rust_src_archive_into_the_sysroot() {
        let dir = scratch("rust-src-ok");
        let archive = archive_of(&dir, "rust/library/core");
        let sysroot = dir.join("sysroot");
        let src = sysroot.join("lib/rustlib/src/rust/library/core");
        unpack_rust_src(&archive, &sysroot, &src).expect("unpacking a well-formed archive");
        assert!(
            src.join("lib.rs").is_file(),
            "{} was not unpacked",
            src.display()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn rejects_an_archive_without_library_core() {
        let dir = scratch("rust-src-bad");
        let archive = archive_of(&dir, "rust-src/lib/rustlib/src/rust/library/core");
        let sysroot = dir.join("sysroot");
        let src = sysroot.join("lib/rustlib/src/rust/library/core");
        let err = unpack_rust_src(&archive, &sysroot, &src)
            .expect_err("an archive with the wrong layout must be refused");
        assert!(
            err.to_string().contains("did not produce"),
            "unexpected error: {err:#}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
