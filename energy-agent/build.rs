//! Builds the eBPF object (energy-ebpf) with aya-build and leaves it in OUT_DIR/energy.
//!
//! Without bpf-linker on PATH (or with ENERGY_SKIP_EBPF=1) it writes an empty object and
//! warns, so `cargo check`/`cargo clippy` work anywhere; the agent then refuses to start
//! with a message that says how to build it (`cargo xtask build`).
use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, Result};

fn main() -> Result<()> {
    println!("cargo:rerun-if-env-changed=ENERGY_SKIP_EBPF");
    println!("cargo:rerun-if-env-changed=PATH");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?);
    let ebpf_dir = manifest_dir.join("../energy-ebpf");
    let ebpf_dir = ebpf_dir.to_str().context("non-UTF-8 path to energy-ebpf")?;

    let common_dir = manifest_dir.join("../energy-common");
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
        println!("cargo:rerun-if-changed={ebpf_dir}");
        fs::write(out_dir.join("energy"), b"").context("writing empty eBPF object")?;
        return Ok(());
    }
    let package = aya_build::Package {
        name: "energy-ebpf",
        root_dir: ebpf_dir,
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::default())
}

fn on_path(program: &str) -> bool {
    env::var_os("PATH")
        .map(|paths| env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
        .unwrap_or(false)
}
