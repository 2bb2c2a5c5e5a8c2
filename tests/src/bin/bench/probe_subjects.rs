//! What the probe benchmark measures on `sched_switch`, one at a time: the reference
//! programs of energy-ebpf's `reference` object (loaded here), the agent's own program
//! (a running agent's), and bpftrace one-liners where bpftrace is installed.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{BtfTracePoint, RawTracePoint},
};

use crate::common::{Agent, Settings, process_switch_stats};

/// Something whose `sched_switch` program is measured.
#[derive(Clone, Debug)]
pub enum Subject {
    /// A program of the reference object.
    Reference(&'static str),
    /// The agent's program, with a label and the binary (the A/B variants of
    /// `ENERGY_BENCH_AGENTS`, else the agent under test).
    Agent(String, std::path::PathBuf),
    /// A bpftrace one-liner (label, script).
    Bpftrace(&'static str, &'static str),
}

impl Subject {
    /// The name in the tables.
    pub fn label(&self) -> String {
        match self {
            Subject::Reference(name) => (*name).to_string(),
            Subject::Agent(label, _) => label.clone(),
            Subject::Bpftrace(label, _) => (*label).to_string(),
        }
    }
}

/// The reference object, loaded, its programs not attached.
pub struct References {
    ebpf: Ebpf,
    /// The typed programs this kernel loaded (some kernels refuse tp_btf programs).
    pub typed: Vec<&'static str>,
}

/// The reference programs that are raw tracepoints; `ing_btf_*` are typed (tp_btf).
pub const RAW: [&str; 8] = [
    "ref_empty",
    "ref_naive",
    "ing_array",
    "ing_ktime",
    "ing_pid_tgid",
    "ing_cgroup",
    "ing_probe_read",
    "ing_pcpu_hash",
];
/// The typed (tp_btf) reference programs.
pub const TYPED: [&str; 2] = ["ing_btf_empty", "ing_btf_read"];
/// A reference program on a shared hash (one value for all CPUs).
pub const SHARED: &str = "ing_hash";

impl References {
    /// Loads the object with the kernel's `task_struct` layout and its programs.
    pub fn load() -> Self {
        let layout = energy_agent::probe::KernelLayout::read().expect("reading the kernel layout");
        let mut ebpf = EbpfLoader::new()
            .override_global("TASK_RUNTIME_OFFSET", &layout.task_runtime_offset, true)
            .load(energy_agent::probe::REFERENCE_OBJECT)
            .expect("loading the reference programs (built with bpf-linker?)");
        for name in RAW.iter().chain([&SHARED]) {
            let p: &mut RawTracePoint = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .unwrap_or_else(|| panic!("reference program {name} missing"));
            p.load().unwrap_or_else(|e| panic!("loading {name}: {e}"));
        }
        let btf = Btf::from_sys_fs().expect("the kernel's BTF");
        let mut typed = Vec::new();
        for name in TYPED {
            let p: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .and_then(|p| p.try_into().ok())
                .unwrap_or_else(|| panic!("reference program {name} missing"));
            // Kernels without tp_btf support on this hook refuse these: the ingredient
            // is then reported as not measured, the rest of the benchmark still runs.
            match p.load("sched_switch", &btf) {
                Ok(()) => typed.push(name),
                Err(e) => eprintln!("bench: {name} does not load on this kernel ({e}): skipped"),
            }
        }
        Self { ebpf, typed }
    }

    /// Attaches program `name`, runs `load`, detaches; (run time ns, runs) in between.
    fn measure(&mut self, name: &str, load: &dyn Fn()) -> (f64, f64) {
        let program = self.ebpf.program_mut(name).expect("a loaded program");
        let stats = |p: &aya::programs::Program| {
            let fd = p.fd().expect("a loaded program's fd");
            energy_agent::probe::progstats::program_stats(std::os::fd::AsFd::as_fd(fd))
                .expect("reading bpf_prog_info")
        };
        let link: Box<dyn FnOnce(&mut aya::programs::Program)> = match program {
            aya::programs::Program::RawTracePoint(p) => {
                let id = p.attach("sched_switch").expect("attaching");
                Box::new(move |p| {
                    if let aya::programs::Program::RawTracePoint(p) = p {
                        let _ = p.detach(id);
                    }
                })
            }
            aya::programs::Program::BtfTracePoint(p) => {
                let id = p.attach().expect("attaching");
                Box::new(move |p| {
                    if let aya::programs::Program::BtfTracePoint(p) = p {
                        let _ = p.detach(id);
                    }
                })
            }
            _ => panic!("{name}: not a tracepoint program"),
        };
        let before = stats(program);
        load();
        let after = stats(program);
        link(program);
        delta(
            (before.run_time_ns, before.run_cnt),
            (after.run_time_ns, after.run_cnt),
        )
    }
}

/// (ns, runs) between two cumulative readings.
fn delta(before: (u64, u64), after: (u64, u64)) -> (f64, f64) {
    (
        after.0.saturating_sub(before.0) as f64,
        after.1.saturating_sub(before.1) as f64,
    )
}

/// Measures `subject` under `load`: (run time ns, runs) of its `sched_switch` program.
pub fn measure(
    s: &Settings,
    refs: &mut References,
    subject: &Subject,
    load: &dyn Fn(),
) -> (f64, f64) {
    match subject {
        Subject::Reference(name) => refs.measure(name, load),
        Subject::Agent(_, binary) => {
            let settings = Settings {
                agent: binary.clone(),
                ..s.clone()
            };
            let agent = Agent::start(&settings, &["--interval", "1s", "--no-gpu"], false);
            let result = measure_process(agent.pid(), load);
            agent.stop();
            result
        }
        Subject::Bpftrace(_, script) => {
            let mut child = Command::new("bpftrace")
                .args(["-e", script])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting bpftrace");
            wait_for_program(child.id());
            let result = measure_process(child.id(), load);
            stop(&mut child);
            result
        }
    }
}

fn wait_for_program(pid: u32) {
    let start = Instant::now();
    while process_switch_stats(pid).is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "process {pid} attached no sched_switch program within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn measure_process(pid: u32, load: &dyn Fn()) -> (f64, f64) {
    let before = process_switch_stats(pid).expect("the program is attached");
    load();
    let after = process_switch_stats(pid).expect("the program is still attached");
    delta(before, after)
}

fn stop(child: &mut Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let _ = child.wait();
}
