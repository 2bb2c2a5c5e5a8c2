//! Where the CUDA driver library is and which of its entry points to probe.
//!
//! libcuda.so is found from `--libcuda PATH`, else the dynamic linker's cache
//! (`/etc/ld.so.cache`), else the usual driver directories. Its exported symbols are read
//! once from the ELF dynamic symbol table and matched against [`CUDA_CALLS`]: every
//! spelling recent runtimes call (`_v2`/`_v3` ABI versions, `_ptsz`/`_ptds`
//! per-thread-default-stream variants) that the library actually exports, one probe per
//! distinct address (aliases of one function would count each call twice).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use energy_common::{ByteCount, CudaCall};
use object::{Object, ObjectSection, ObjectSymbol};

/// Where the dynamic linker's cache is.
pub const LD_SO_CACHE: &str = "/etc/ld.so.cache";

/// Directories the NVIDIA driver installs libcuda into on common distributions.
pub const DRIVER_DIRS: [&str; 6] = [
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib64",
    "/usr/lib",
    "/usr/lib/wsl/lib",
    "/usr/local/nvidia/lib64",
];

/// Why the CUDA probes are not attached.
#[derive(Debug, thiserror::Error)]
pub enum LibcudaError {
    /// Nothing found where the driver installs it.
    #[error(
        "no libcuda.so (not in {LD_SO_CACHE} nor in {}): no NVIDIA driver here, so CUDA calls are not traced; pass --libcuda PATH if it is elsewhere",
        DRIVER_DIRS.join(", ")
    )]
    NotFound,
    /// `--libcuda` names a file that is not there.
    #[error("--libcuda {0}: no such file")]
    Missing(PathBuf),
    /// The file is not a readable ELF shared library.
    #[error("{path}: not a readable ELF library: {reason}")]
    Unreadable {
        /// The library.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The library exports none of the entry points.
    #[error("{0}: exports none of the CUDA driver entry points traced (cuLaunchKernel, …)")]
    NoEntryPoints(PathBuf),
}

/// A CUDA driver entry point to probe: its base name, what it does, and the suffixes
/// its exported spellings may carry.
#[derive(Clone, Copy, Debug)]
pub struct CudaEntry {
    /// Base name, as in cuda.h without version suffix.
    pub base: &'static str,
    /// What a call does (and where its byte count is).
    pub call: CudaCall,
    /// Suffixes to try (`""` = the bare name).
    pub suffixes: &'static [&'static str],
}

const STREAM: &[&str] = &["", "_ptsz"];
const SYNC_V: &[&str] = &["", "_v2", "_ptsz"];
const V2_DEFAULT: &[&str] = &["_v2", "_v2_ptds"];
const V2_STREAM: &[&str] = &["_v2", "_v2_ptsz"];
const DEFAULT: &[&str] = &["", "_ptds"];

const fn arg(index: u8, unit: u8) -> ByteCount {
    ByteCount::Arg { index, unit }
}

const fn area(unit: u8) -> ByteCount {
    ByteCount::Area {
        width: 3,
        height: 4,
        unit,
    }
}

const fn entry(base: &'static str, call: CudaCall, suffixes: &'static [&'static str]) -> CudaEntry {
    CudaEntry {
        base,
        call,
        suffixes,
    }
}

use CudaCall::{Copy, Launch, Memset, Sync};

/// Every entry point traced. Byte counts come from the argument cuda.h documents for
/// each call (`ByteCount`, `N` × element size, `Width × Height`, or the 2D descriptor).
pub const CUDA_CALLS: &[CudaEntry] = &[
    entry("cuLaunchKernel", Launch, STREAM),
    entry("cuLaunchKernelEx", Launch, STREAM),
    entry("cuLaunchCooperativeKernel", Launch, STREAM),
    entry("cuGraphLaunch", Launch, STREAM),
    entry("cuMemcpy", Copy(arg(2, 1)), DEFAULT),
    entry("cuMemcpyAsync", Copy(arg(2, 1)), STREAM),
    entry("cuMemcpyHtoD", Copy(arg(2, 1)), V2_DEFAULT),
    entry("cuMemcpyDtoH", Copy(arg(2, 1)), V2_DEFAULT),
    entry("cuMemcpyDtoD", Copy(arg(2, 1)), V2_DEFAULT),
    entry("cuMemcpyHtoDAsync", Copy(arg(2, 1)), V2_STREAM),
    entry("cuMemcpyDtoHAsync", Copy(arg(2, 1)), V2_STREAM),
    entry("cuMemcpyDtoDAsync", Copy(arg(2, 1)), V2_STREAM),
    entry("cuMemcpyPeer", Copy(arg(4, 1)), DEFAULT),
    entry("cuMemcpyPeerAsync", Copy(arg(4, 1)), STREAM),
    entry("cuMemcpy2D", Copy(ByteCount::Memcpy2d), V2_DEFAULT),
    entry("cuMemcpy2DUnaligned", Copy(ByteCount::Memcpy2d), V2_DEFAULT),
    entry("cuMemcpy2DAsync", Copy(ByteCount::Memcpy2d), V2_STREAM),
    entry("cuMemcpy3D", Copy(ByteCount::Unknown), V2_DEFAULT),
    entry("cuMemcpy3DAsync", Copy(ByteCount::Unknown), V2_STREAM),
    entry("cuMemcpy3DPeer", Copy(ByteCount::Unknown), DEFAULT),
    entry("cuMemcpy3DPeerAsync", Copy(ByteCount::Unknown), STREAM),
    entry("cuMemcpyBatchAsync", Copy(ByteCount::Unknown), STREAM),
    entry("cuMemsetD8", Memset(arg(2, 1)), V2_DEFAULT),
    entry("cuMemsetD16", Memset(arg(2, 2)), V2_DEFAULT),
    entry("cuMemsetD32", Memset(arg(2, 4)), V2_DEFAULT),
    entry("cuMemsetD8Async", Memset(arg(2, 1)), STREAM),
    entry("cuMemsetD16Async", Memset(arg(2, 2)), STREAM),
    entry("cuMemsetD32Async", Memset(arg(2, 4)), STREAM),
    entry("cuMemsetD2D8", Memset(area(1)), V2_DEFAULT),
    entry("cuMemsetD2D16", Memset(area(2)), V2_DEFAULT),
    entry("cuMemsetD2D32", Memset(area(4)), V2_DEFAULT),
    entry("cuMemsetD2D8Async", Memset(area(1)), STREAM),
    entry("cuMemsetD2D16Async", Memset(area(2)), STREAM),
    entry("cuMemsetD2D32Async", Memset(area(4)), STREAM),
    entry("cuCtxSynchronize", Sync, SYNC_V),
    entry("cuStreamSynchronize", Sync, STREAM),
    entry("cuEventSynchronize", Sync, &[""]),
];

/// Every exported spelling to look for, with what it does, in table order.
pub fn candidate_names() -> Vec<(String, CudaCall)> {
    CUDA_CALLS
        .iter()
        .flat_map(|e| {
            e.suffixes
                .iter()
                .map(move |s| (format!("{}{s}", e.base), e.call))
        })
        .collect()
}

/// An entry point found in the library: name, file offset (for the uprobe), call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    /// Exported symbol name.
    pub symbol: String,
    /// Offset of its code in the file.
    pub file_offset: u64,
    /// What it does.
    pub call: CudaCall,
}

/// Finds libcuda: `explicit` when given, else the linker cache, else the driver
/// directories under `root` (`/` outside tests).
pub fn find_libcuda(explicit: Option<&Path>, root: &Path) -> Result<PathBuf, LibcudaError> {
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(LibcudaError::Missing(path.to_path_buf()))
        };
    }
    let under = |p: &str| root.join(p.trim_start_matches('/'));
    if let Ok(cache) = std::fs::read(under(LD_SO_CACHE))
        && let Some(path) = from_ld_cache(&cache)
            .into_iter()
            .map(|p| under(&p))
            .find(|p| p.is_file())
    {
        return Ok(path);
    }
    for dir in DRIVER_DIRS {
        for name in ["libcuda.so.1", "libcuda.so"] {
            let path = under(dir).join(name);
            if path.is_file() {
                return Ok(path);
            }
        }
    }
    Err(LibcudaError::NotFound)
}

/// The libcuda paths named in a linker cache, `libcuda.so.1` first. The cache's string
/// table holds each library's full path as a NUL-terminated string; both the old and
/// the new (glibc 2.32+) formats keep them so, which is all this needs.
pub fn from_ld_cache(cache: &[u8]) -> Vec<String> {
    let mut found: Vec<String> = cache
        .split(|&b| b == 0)
        .filter_map(|s| std::str::from_utf8(s).ok())
        .filter(|s| s.starts_with('/'))
        .filter(|s| s.ends_with("/libcuda.so.1") || s.ends_with("/libcuda.so"))
        .map(str::to_string)
        .collect();
    found.sort_by_key(|s| (!s.ends_with(".so.1"), s.clone()));
    found.dedup();
    found
}

/// The entry points `library` exports, one per distinct code address (the first name
/// in table order wins).
pub fn probe_points(library: &Path) -> Result<Vec<ProbePoint>, LibcudaError> {
    let unreadable = |reason: String| LibcudaError::Unreadable {
        path: library.to_path_buf(),
        reason,
    };
    let data = std::fs::read(library).map_err(|e| unreadable(e.to_string()))?;
    let file = object::File::parse(&*data).map_err(|e| unreadable(e.to_string()))?;
    // Exported, defined symbol → file offset.
    let mut exported: BTreeMap<&str, u64> = BTreeMap::new();
    for sym in file.dynamic_symbols() {
        if sym.is_undefined() || !sym.is_global() || sym.kind() != object::SymbolKind::Text {
            continue;
        }
        let (Ok(name), Some(index)) = (sym.name(), sym.section_index()) else {
            continue;
        };
        let Ok(section) = file.section_by_index(index) else {
            continue;
        };
        let Some((file_start, _)) = section.file_range() else {
            continue;
        };
        if let Some(within) = sym.address().checked_sub(section.address()) {
            exported.insert(name, within + file_start);
        }
    }
    let mut seen = std::collections::HashSet::new();
    let points: Vec<ProbePoint> = candidate_names()
        .into_iter()
        .filter_map(|(symbol, call)| {
            let offset = *exported.get(symbol.as_str())?;
            seen.insert(offset).then_some(ProbePoint {
                symbol,
                file_offset: offset,
                call,
            })
        })
        .collect();
    if points.is_empty() {
        return Err(LibcudaError::NoEntryPoints(library.to_path_buf()));
    }
    Ok(points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_is_listed_once() {
        let names = candidate_names();
        let mut unique: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), names.len());
        for name in [
            "cuLaunchKernel",
            "cuLaunchKernel_ptsz",
            "cuLaunchKernelEx_ptsz",
            "cuMemcpyHtoDAsync_v2_ptsz",
            "cuMemcpyDtoH_v2_ptds",
            "cuMemsetD32Async",
            "cuStreamSynchronize_ptsz",
            "cuEventSynchronize",
        ] {
            assert!(unique.contains(&name), "{name}");
        }
    }

    #[test]
    fn linker_cache_strings_give_the_paths() {
        let mut cache = b"glibc-ld.so.cache1.1\0\0\x01\0".to_vec();
        for s in [
            "libcuda.so.1",
            "/usr/lib/x86_64-linux-gnu/libcuda.so",
            "libc.so.6",
            "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
            "/usr/lib/x86_64-linux-gnu/libc.so.6",
        ] {
            cache.extend_from_slice(s.as_bytes());
            cache.push(0);
        }
        assert_eq!(
            from_ld_cache(&cache),
            [
                "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
                "/usr/lib/x86_64-linux-gnu/libcuda.so"
            ]
        );
    }

    #[test]
    fn found_in_a_driver_directory_or_explained() {
        let root = tempfile::tempdir().unwrap();
        let err = find_libcuda(None, root.path()).unwrap_err().to_string();
        assert!(
            err.contains("no libcuda.so") && err.contains("--libcuda"),
            "{err}"
        );
        let dir = root.path().join("usr/lib64");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("libcuda.so.1"), b"").unwrap();
        assert_eq!(
            find_libcuda(None, root.path()).unwrap(),
            dir.join("libcuda.so.1")
        );
        let missing = root.path().join("nope.so");
        assert!(matches!(
            find_libcuda(Some(&missing), root.path()),
            Err(LibcudaError::Missing(_))
        ));
    }

    #[test]
    fn a_library_without_cuda_symbols_is_refused_with_the_reason() {
        // Any real ELF library without the CUDA API: libc, wherever it is.
        let libc = ["/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib64/libc.so.6"]
            .iter()
            .map(Path::new)
            .find(|p| p.exists());
        let Some(libc) = libc else {
            eprintln!("no libc.so.6 at the usual paths");
            return;
        };
        let err = probe_points(libc).unwrap_err();
        assert!(matches!(err, LibcudaError::NoEntryPoints(_)), "{err}");
    }

    #[test]
    fn a_file_that_is_not_elf_is_unreadable() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), b"not a library").unwrap();
        let err = probe_points(file.path()).unwrap_err();
        assert!(matches!(err, LibcudaError::Unreadable { .. }), "{err}");
    }
}
