//! `energy-agent check`: what works on this host, what does not, and the fix for each.

mod containers;
mod idle;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use crate::{
    carbon::CarbonOptions,
    identity::cgroup::Hierarchy,
    power::{self, SourceChoice, select::PowerOptions},
    probe::{
        self, SCHED_TRACEPOINTS,
        privileges::Capabilities,
        tracefs::{TRACEFS_PATHS, Tracefs},
    },
};

/// What to check beside the host itself: the sources `run` would use with the same
/// flags.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    /// Power sources.
    pub power: PowerOptions,
    /// Carbon options, or why the flags do not make any.
    pub carbon: Result<CarbonOptions, String>,
    /// `--libcuda`.
    pub libcuda: Option<PathBuf>,
    /// `--state-dir` (None with `--no-state`).
    pub state_dir: Option<PathBuf>,
    /// `--idle-power`.
    pub idle_power: BTreeMap<String, crate::units::Watts>,
    /// The pod metadata source the flags describe (None: none), or why they do not
    /// make one.
    pub pods: Result<Option<crate::identity::k8s::K8sConfig>, String>,
    /// Print one JSON object instead of text.
    pub json: bool,
}

/// Outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works.
    Pass,
    /// Works with a limitation, or not needed.
    Warn,
    /// Does not work; the agent cannot run until it is fixed.
    Fail,
    /// Not checked because an earlier check failed.
    Skip,
}

/// One line of the report.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Check {
    /// Short name, stable for scripts.
    pub name: String,
    /// Outcome.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// How to fix it (empty when nothing needs fixing).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

impl Check {
    fn new(name: impl Into<String>, status: Status, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status,
            detail: detail.into(),
            fix: String::new(),
        }
    }

    fn fix(mut self, fix: impl Into<String>) -> Self {
        self.fix = fix.into();
        self
    }
}

/// The whole report.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    /// Whether the agent can run here (no check failed).
    pub ok: bool,
    /// Every check, in order.
    pub checks: Vec<Check>,
}

/// Runs every check and prints the report; exit code 1 when the agent cannot run.
pub fn check(config: &CheckConfig) -> anyhow::Result<i32> {
    let mut checks = run_checks();
    containers::check_containers(&mut checks, &Hierarchy::host(), &config.pods);
    check_libcuda(&mut checks, config.libcuda.as_deref());
    check_power(&mut checks, &config.power);
    idle::check_idle(
        &mut checks,
        &config.power,
        config.state_dir.as_deref(),
        &config.idle_power,
    );
    check_carbon(&mut checks, &config.carbon);
    let report = Report {
        ok: checks.iter().all(|c| c.status != Status::Fail),
        checks,
    };
    if config.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.ok { 0 } else { 1 })
}

/// Renders the report for a terminal.
pub fn render(report: &Report) -> String {
    let mut s = String::new();
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    for c in &report.checks {
        let tag = match c.status {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        };
        s.push_str(&format!("{tag}  {:<width$}  {}\n", c.name, c.detail));
        if !c.fix.is_empty() {
            s.push_str(&format!("      {:<width$}  fix: {}\n", "", c.fix));
        }
    }
    s.push_str(if report.ok {
        "\nenergy-agent can run on this host.\n"
    } else {
        "\nenergy-agent cannot run on this host until the FAIL lines are fixed.\n"
    });
    s
}

/// Every check, in dependency order.
pub fn run_checks() -> Vec<Check> {
    let mut checks = Vec::new();
    let privileged = check_privileges(&mut checks);
    check_kernel(&mut checks);
    checks.push(check_runtime_privileges());
    checks.push(check_btf(Path::new(probe::KERNEL_BTF)));
    let tracefs = check_tracefs(&mut checks, privileged);
    if let Some(tracefs) = &tracefs {
        check_tracepoints(&mut checks, tracefs);
    }
    check_bpf_load(&mut checks, privileged);
    checks
}

fn check_privileges(checks: &mut Vec<Check>) -> bool {
    match Capabilities::current(Path::new("/proc")) {
        Ok(caps) => {
            let missing = caps.missing_for_bpf();
            if missing.is_empty() {
                let who = if caps.euid() == 0 {
                    "running as root".to_string()
                } else {
                    format!("uid {} with CAP_BPF and CAP_PERFMON", caps.euid())
                };
                checks.push(Check::new("privileges", Status::Pass, who));
                true
            } else {
                checks.push(
                    Check::new(
                        "privileges",
                        Status::Fail,
                        format!("uid {} lacks {}", caps.euid(), missing.join(", ")),
                    )
                    .fix("run as root, or grant the binary the capabilities: setcap cap_bpf,cap_perfmon,cap_dac_read_search,cap_sys_ptrace+ep energy-agent"),
                );
                false
            }
        }
        Err(e) => {
            checks.push(Check::new(
                "privileges",
                Status::Warn,
                format!("cannot read /proc/self/status: {e}"),
            ));
            true
        }
    }
}

/// What `run` keeps once started (the same computation as `lockdown::lock_down`, with
/// CAP_BPF predicted from the kernel where `run` tries it).
fn check_runtime_privileges() -> Check {
    use crate::lockdown::{
        RUNTIME,
        caps::{CAP_BPF, CapSet, ThreadCreds},
        predict_bpf_for_reads,
    };
    let Some(creds) = ThreadCreds::current() else {
        return Check::new(
            "privileges after start",
            Status::Warn,
            "cannot read /proc/thread-self/status",
        );
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let sysctl = std::fs::read_to_string("/proc/sys/kernel/unprivileged_bpf_disabled")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let bpf = parse_kernel_release(release.trim())
        .is_some_and(|r| predict_bpf_for_reads(r, sysctl))
        && creds.permitted.has(CAP_BPF);
    let wanted = if bpf {
        RUNTIME.or(CapSet::of(&[CAP_BPF]))
    } else {
        RUNTIME
    };
    let kept = wanted.and(creds.permitted);
    let why_bpf = if bpf {
        "cap_bpf too: this kernel refuses map reads without it"
    } else {
        "not cap_bpf: this kernel reads maps without it"
    };
    let detail = format!(
        "run keeps {} ({why_bpf}) in its probe threads and none in the threads that receive, enrich and forward OTLP; every other capability dropped, bounding set cut, no_new_privs; --user NAME switches to that user keeping the same",
        kept.names()
    );
    if RUNTIME.within(creds.permitted) {
        return Check::new("privileges after start", Status::Pass, detail);
    }
    Check::new("privileges after start", Status::Warn, detail).fix(
        "without cap_sys_ptrace other users' processes are named from their command line and their OTLP spans need process.pid; without cap_dac_read_search powercap counters and tracefs are unreadable: add them with setcap",
    )
}

/// Kernel release as (major, minor), from `uname -r` text like `6.18.44-fc`.
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn check_kernel(checks: &mut Vec<Check>) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    match parse_kernel_release(release) {
        Some(v) if v >= (5, 19) => checks.push(Check::new(
            "kernel",
            Status::Pass,
            format!("Linux {release} (ring buffer and per-CPU map reads need ≥ 5.19)"),
        )),
        Some(_) => checks.push(
            Check::new(
                "kernel",
                Status::Fail,
                format!("Linux {release} is older than 5.19"),
            )
            .fix("upgrade to Linux ≥ 5.19 (ring buffers: 5.8, bpf_map_lookup_percpu_elem: 5.19)"),
        ),
        None => checks.push(Check::new(
            "kernel",
            Status::Warn,
            format!("cannot parse kernel release {release:?}"),
        )),
    }
}

fn check_btf(path: &Path) -> Check {
    let offsets = probe::btf::Btf::from_file(path).and_then(|btf| {
        Ok((
            btf.member_offset("task_struct", "pid")?,
            btf.member_offset("task_struct", "tgid")?,
        ))
    });
    match offsets {
        Ok((pid, tgid)) => Check::new(
            "btf",
            Status::Pass,
            format!(
                "{}: task_struct.pid at {pid}, .tgid at {tgid}",
                path.display()
            ),
        ),
        Err(e) => Check::new("btf", Status::Fail, e.to_string()).fix(
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (all major distributions since 2020)",
        ),
    }
}

fn check_tracefs(checks: &mut Vec<Check>, privileged: bool) -> Option<Tracefs> {
    if let Some(found) = Tracefs::find() {
        checks.push(Check::new(
            "tracefs",
            Status::Pass,
            format!("mounted at {}", found.root().display()),
        ));
        return Some(found);
    }
    if privileged {
        match Tracefs::find_or_mount() {
            Ok(found) => {
                checks.push(Check::new(
                    "tracefs",
                    Status::Pass,
                    format!("was not mounted; mounted it at {}", found.root().display()),
                ));
                return Some(found);
            }
            Err(e) => checks.push(
                Check::new("tracefs", Status::Fail, e.to_string())
                    .fix("mount -t tracefs tracefs /sys/kernel/tracing (needs CONFIG_TRACING)"),
            ),
        }
    } else {
        checks.push(
            Check::new(
                "tracefs",
                Status::Fail,
                format!("not mounted at {}", TRACEFS_PATHS.join(" or ")),
            )
            .fix("mount -t tracefs tracefs /sys/kernel/tracing (the agent does this itself when run as root)"),
        );
    }
    None
}

fn check_tracepoints(checks: &mut Vec<Check>, tracefs: &Tracefs) {
    for (_, event) in SCHED_TRACEPOINTS {
        let name = format!("tracepoint sched:{event}");
        match tracefs.format("sched", event) {
            Ok(_) => checks.push(Check::new(name, Status::Pass, "present")),
            Err(e) => checks.push(
                Check::new(name, Status::Fail, e.to_string())
                    .fix("use a kernel with CONFIG_TRACEPOINTS and scheduler tracepoints"),
            ),
        }
    }
    let name = "tracepoint syscalls:sys_enter_ioctl";
    checks.push(match tracefs.format("syscalls", "sys_enter_ioctl") {
        Ok(_) => Check::new(
            name,
            Status::Pass,
            "present (NVIDIA ioctls are counted where the NVIDIA driver is loaded)",
        ),
        Err(e) => Check::new(
            name,
            Status::Warn,
            format!("{e}; NVIDIA ioctls are not counted"),
        )
        .fix("use a kernel with CONFIG_FTRACE_SYSCALLS for the driver-level GPU signal"),
    });
}

/// The CUDA driver library whose entry points the uprobes attach to.
fn check_libcuda(checks: &mut Vec<Check>, libcuda: Option<&Path>) {
    let found = probe::cuda::find_libcuda(libcuda, Path::new("/"))
        .and_then(|lib| Ok((probe::cuda::probe_points(&lib)?, lib)));
    checks.push(match found {
        Ok((points, lib)) => Check::new(
            "libcuda",
            Status::Pass,
            format!(
                "{}: {} CUDA driver entry points to trace",
                lib.display(),
                points.len()
            ),
        ),
        Err(e) => Check::new("libcuda", Status::Warn, e.to_string())
            .fix("only needed on GPU hosts: install the NVIDIA driver, or pass --libcuda PATH"),
    });
}

fn check_bpf_load(checks: &mut Vec<Check>, privileged: bool) {
    if !privileged {
        checks.push(Check::new("bpf load", Status::Skip, "needs privileges"));
        checks.push(Check::new("ring buffer", Status::Skip, "needs privileges"));
        return;
    }
    match probe::try_load() {
        Ok(()) => {
            checks.push(Check::new(
                "bpf load",
                Status::Pass,
                "scheduler (raw tracepoints) and GPU-driver (uprobes, ioctl tracepoint) programs pass the verifier",
            ));
            checks.push(Check::new(
                "ring buffer",
                Status::Pass,
                "BPF_MAP_TYPE_RINGBUF created",
            ));
        }
        Err(e) => {
            checks.push(Check::new("bpf load", Status::Fail, e.to_string()).fix(
                "see the verifier or kernel message above; run with RUST_LOG=debug for details",
            ));
            checks.push(Check::new(
                "ring buffer",
                Status::Skip,
                "object did not load",
            ));
        }
    }
}

/// The carbon intensity source and its current value (a live API is asked once).
fn check_carbon(checks: &mut Vec<Check>, options: &Result<CarbonOptions, String>) {
    let carbon = options
        .clone()
        .and_then(|o| crate::carbon::Carbon::new(&o, 1));
    match carbon {
        Ok(mut c) => {
            let i = c.intensity(std::time::SystemTime::now());
            let detail = format!(
                "{:.1} gCO2e/kWh from {}, PUE {}",
                i.g_per_kwh, i.source, c.pue
            );
            checks.push(match i.note {
                Some(note) => Check::new(
                    "carbon intensity",
                    Status::Warn,
                    format!("{detail}; {note}"),
                )
                .fix("check the API settings and network, or set --region / --carbon-intensity"),
                None => Check::new("carbon intensity", Status::Pass, detail),
            });
        }
        Err(e) => checks.push(
            Check::new("carbon intensity", Status::Fail, e)
                .fix("fix the carbon flags (see energy-agent run --help, Carbon)"),
        ),
    }
}

/// One line per power source: in use, available, or why not.
fn check_power(checks: &mut Vec<Check>, opts: &PowerOptions) {
    let explicit = opts.choice != SourceChoice::Auto;
    let statuses = power::survey(opts);
    if explicit && !statuses.iter().any(|s| s.selected) {
        let reason = power::select(opts)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        checks.push(
            Check::new(
                "power source",
                Status::Fail,
                format!("{:?} cannot be used: {reason}", opts.choice),
            )
            .fix("use --power-source auto, or fix the reason above"),
        );
    }
    for s in statuses {
        let name = format!("power {}", s.name);
        let check = match (s.selected, s.usable) {
            (true, _) if s.name == "estimate" => Check::new(name, Status::Warn, format!("in use: {}", s.detail))
                .fix("figures are estimated: no usable energy meter here (bare metal or a VM exposing RAPL gives measured figures)"),
            (true, _) => Check::new(name, Status::Pass, format!("in use: {}", s.detail)),
            (false, true) => Check::new(name, Status::Pass, format!("available: {}", s.detail)),
            (false, false) => Check::new(name, Status::Warn, s.detail),
        };
        checks.push(check);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release_parsing() {
        assert_eq!(parse_kernel_release("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_kernel_release("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(parse_kernel_release("garbage"), None);
    }

    #[test]
    fn render_marks_failures_and_fixes() {
        let report = Report {
            ok: false,
            checks: vec![
                Check::new("kernel", Status::Pass, "Linux 6.18"),
                Check::new("privileges", Status::Fail, "uid 65534 lacks CAP_BPF")
                    .fix("run as root"),
            ],
        };
        let text = render(&report);
        assert!(text.contains("PASS  kernel"));
        assert!(text.contains("FAIL  privileges"));
        assert!(text.contains("fix: run as root"));
        assert!(text.contains("cannot run"));
    }

    #[test]
    fn btf_check_fails_without_kernel_btf() {
        let check = check_btf(Path::new("/nonexistent/vmlinux"));
        assert_eq!(check.status, Status::Fail);
        assert!(check.fix.contains("CONFIG_DEBUG_INFO_BTF"));
    }
}
