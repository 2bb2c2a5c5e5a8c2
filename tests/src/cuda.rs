//! The stand-in CUDA driver (tests/cuda/libcuda_standin.c) and the program that drives
//! it (tests/cuda/cuda_caller.c), compiled with the system C compiler for each test.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
};

/// A freshly built stand-in library and caller.
pub struct StandIn {
    _dir: tempfile::TempDir,
    /// `libcuda.so.1` exporting the CUDA driver entry points.
    pub library: PathBuf,
    /// The caller program, linked against it.
    pub caller: PathBuf,
}

fn sources() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cuda")
}

fn cc(args: &[&str]) {
    let out = Command::new("cc")
        .args(args)
        .output()
        .expect("running cc (the C compiler, needed to build the stand-in libcuda)");
    assert!(
        out.status.success(),
        "cc {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl StandIn {
    /// Compiles the library (at -O0, so every entry point keeps its own code) and the
    /// caller into a temporary directory.
    pub fn build() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let library = dir.path().join("libcuda.so.1");
        let caller = dir.path().join("cuda_caller");
        let src = sources();
        cc(&[
            "-O0",
            "-shared",
            "-fPIC",
            "-o",
            library.to_str().unwrap(),
            src.join("libcuda_standin.c").to_str().unwrap(),
        ]);
        let rpath = format!("-Wl,-rpath,{}", dir.path().display());
        let libdir = format!("-L{}", dir.path().display());
        cc(&[
            "-O0",
            "-o",
            caller.to_str().unwrap(),
            src.join("cuda_caller.c").to_str().unwrap(),
            &libdir,
            "-l:libcuda.so.1",
            &rpath,
            "-lpthread",
        ]);
        Self {
            _dir: dir,
            library,
            caller,
        }
    }

    /// Starts the caller: thread `a` launches `n` kernels, thread `b` `m`, each then
    /// blocks `sync_us` in a synchronize call. With `wait`, it stops before calling
    /// anything until [`Caller::go`].
    pub fn start(&self, n: u64, m: u64, sync_us: u64, wait: bool) -> Caller {
        let mut cmd = Command::new(&self.caller);
        cmd.args([n.to_string(), m.to_string(), sync_us.to_string()]);
        if wait {
            cmd.arg("wait");
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting cuda_caller");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("cuda_caller's first line");
        let ids: serde_json::Value = serde_json::from_str(&line).expect("cuda_caller ids");
        let id = |k: &str| ids[k].as_u64().expect("id") as u32;
        Caller {
            pid: id("pid"),
            a: id("a"),
            b: id("b"),
            main: id("main"),
            stdin: child.stdin.take(),
            child,
        }
    }
}

/// A running caller and its thread ids.
pub struct Caller {
    child: Child,
    stdin: Option<ChildStdin>,
    /// Process id.
    pub pid: u32,
    /// Thread launching `n` kernels.
    pub a: u32,
    /// Thread launching `m` kernels.
    pub b: u32,
    /// Main thread (copies, memsets, graph launches, context sync).
    pub main: u32,
}

impl Caller {
    /// Lets a waiting caller go on.
    pub fn go(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            stdin.write_all(b"go\n").expect("writing to cuda_caller");
        }
    }

    /// Waits for it to finish; panics unless it succeeded.
    pub fn wait(mut self) {
        self.go();
        let status = self.child.wait().expect("waiting for cuda_caller");
        assert!(status.success(), "cuda_caller: {status}");
    }
}

/// Sum of one GPU-activity field for thread `tid` of `pid` over `intervals`.
pub fn thread_calls(intervals: &[serde_json::Value], pid: u32, tid: u32, field: &str) -> u64 {
    intervals
        .iter()
        .flat_map(|i| i["processes"].as_array().into_iter().flatten())
        .filter(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        .filter_map(|p| p["gpu_threads"][tid.to_string()][field].as_u64())
        .sum()
}
