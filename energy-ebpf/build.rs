//! Rebuild the eBPF object when bpf-linker changes (aya-template does the same).
fn main() {
    let linker = which::which("bpf-linker");
    if let Ok(path) = linker {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
