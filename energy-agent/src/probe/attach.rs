//! Loading and attaching the programs. The scheduler programs (raw tracepoints) are
//! required. The GPU-driver programs are not: the CUDA uprobes (attached to the library
//! file, so every process that maps it is covered, those started later included) and
//! the NVIDIA ioctl tracepoint; without libcuda or syscall tracepoints the agent runs
//! on, and [`GpuProbeStatus`] says what is missing and why.

use std::path::{Path, PathBuf};

use aya::{
    Btf, Ebpf,
    programs::{
        BtfTracePoint, Program, ProgramError, RawTracePoint, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeScope},
    },
};
use energy_common::{CudaCall, names};

use super::{
    IOCTLS_ENV, KernelLayout, ProbeError, SCHED_TRACEPOINTS,
    cuda::{self, ProbePoint},
    privileged,
};

/// What the GPU-driver programs are attached to.
#[derive(Clone, Debug)]
pub struct GpuProbeStatus {
    /// The CUDA driver library and the entry points probed, or why none are.
    pub cuda: Result<CudaAttached, String>,
    /// Whether the NVIDIA ioctl tracepoint is attached, or why not.
    pub ioctl: Result<(), String>,
}

/// The CUDA probes in place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaAttached {
    /// The library file.
    pub library: PathBuf,
    /// Entry points probed.
    pub symbols: Vec<String>,
    /// Entry points whose probe failed, with the reason.
    pub failed: Vec<(String, String)>,
}

impl GpuProbeStatus {
    /// One line per part, for the log and `check`.
    pub fn lines(&self) -> Vec<String> {
        let cuda = match &self.cuda {
            Ok(a) => {
                let mut line = format!(
                    "CUDA driver calls traced: {} entry points of {}",
                    a.symbols.len(),
                    a.library.display()
                );
                if let Some((symbol, why)) = a.failed.first() {
                    line.push_str(&format!(
                        " ({} failed, first {symbol}: {why})",
                        a.failed.len()
                    ));
                }
                line
            }
            Err(why) => format!("CUDA driver calls not traced: {why}"),
        };
        let ioctl = match &self.ioctl {
            Ok(()) => "NVIDIA ioctls counted (syscalls/sys_enter_ioctl, type 'F')".to_string(),
            Err(why) => format!("NVIDIA ioctls not counted: {why}"),
        };
        vec![cuda, ioctl]
    }
}

/// Loads the scheduler programs without attaching them (for `check`).
pub fn load_sched_programs(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    for (program, _) in SCHED_TRACEPOINTS {
        raw_tracepoint(ebpf, program)?;
    }
    Ok(())
}

/// Loads the scheduler programs and attaches each to its raw tracepoint, `sched_switch`
/// as the typed program where `btf` is given and the kernel takes it; any other failure
/// fails the agent. Returns the `sched_switch` program attached.
pub fn sched_programs(ebpf: &mut Ebpf, btf: Option<&Btf>) -> Result<&'static str, ProbeError> {
    let typed = match btf {
        Some(btf) => typed_switch(ebpf, btf),
        None => Err("not asked for".to_string()),
    };
    let switch = match typed {
        Ok(()) => names::PROG_SCHED_SWITCH_BTF,
        Err(why) => {
            log::info!("sched_switch traced by a raw tracepoint program (typed one: {why})");
            names::PROG_SCHED_SWITCH
        }
    };
    for (program, tracepoint) in SCHED_TRACEPOINTS {
        if program == names::PROG_SCHED_SWITCH && switch != program {
            continue;
        }
        raw_tracepoint(ebpf, program)?
            .attach(tracepoint)
            .map_err(|e| privileged(program_error(program, "attach", e)))?;
    }
    Ok(switch)
}

/// Loads and attaches the typed `sched_switch` program.
fn typed_switch(ebpf: &mut Ebpf, btf: &Btf) -> Result<(), String> {
    let name = names::PROG_SCHED_SWITCH_BTF;
    let program: &mut BtfTracePoint = program(ebpf, name)
        .map_err(|e| e.to_string())?
        .try_into()
        .map_err(|e: ProgramError| e.to_string())?;
    program
        .load("sched_switch", btf)
        .map_err(|e| format!("load: {e}"))?;
    program.attach().map_err(|e| format!("attach: {e}"))?;
    Ok(())
}

/// Loads the GPU-driver programs without attaching them (for `check`).
pub fn load_gpu_programs(ebpf: &mut Ebpf) -> Result<(), ProbeError> {
    uprobe(ebpf, names::PROG_CUDA_CALL)?;
    uprobe(ebpf, names::PROG_CUDA_SYNC_RETURN)?;
    tracepoint(ebpf)?;
    Ok(())
}

/// Where the NVIDIA driver's control device is, when it is loaded.
const NVIDIA_CONTROL_DEVICE: &str = "/dev/nvidiactl";

/// Attaches what can be attached; never fails the agent. The ioctl tracepoint only where
/// `nvidia_ioctls` says so, by default (`None`) where the NVIDIA driver's device exists:
/// any syscall tracepoint sends every syscall of every task through the kernel's slow
/// syscall path, a cost a host without the driver should not pay.
pub fn gpu_programs(
    ebpf: &mut Ebpf,
    layout: &KernelLayout,
    libcuda: Option<&Path>,
    nvidia_ioctls: Option<bool>,
) -> GpuProbeStatus {
    let wanted = match nvidia_ioctls {
        Some(true) => Ok(()),
        Some(false) => Err(format!("turned off ({IOCTLS_ENV}=off)")),
        None if Path::new(NVIDIA_CONTROL_DEVICE).exists() => Ok(()),
        None => Err(format!(
            "no NVIDIA driver ({NVIDIA_CONTROL_DEVICE} is missing), so the syscall tracepoint is not attached ({IOCTLS_ENV}=on attaches it anyway)"
        )),
    };
    let ioctl = wanted
        .and_then(|()| layout.ioctl_cmd_offset.clone())
        .and_then(|_| {
            tracepoint(ebpf)
                .map_err(|e| e.to_string())?
                .attach("syscalls", "sys_enter_ioctl")
                .map(drop)
                .map_err(|e| format!("attaching sys_enter_ioctl: {e}"))
        });
    let cuda = cuda::find_libcuda(libcuda, Path::new("/"))
        .and_then(|library| Ok((cuda::probe_points(&library)?, library)))
        .map_err(|e| e.to_string())
        .and_then(|(points, library)| attach_cuda(ebpf, library, &points));
    GpuProbeStatus { cuda, ioctl }
}

fn attach_cuda(
    ebpf: &mut Ebpf,
    library: PathBuf,
    points: &[ProbePoint],
) -> Result<CudaAttached, String> {
    let mut attached = CudaAttached {
        library,
        symbols: Vec::new(),
        failed: Vec::new(),
    };
    let at = |point: &ProbePoint, cookie| UProbeAttachPoint {
        location: UProbeAttachLocation::AbsoluteOffset(point.file_offset),
        cookie,
    };
    let call = uprobe(ebpf, names::PROG_CUDA_CALL).map_err(|e| e.to_string())?;
    let mut syncs = Vec::new();
    for point in points {
        match call.attach(
            at(point, Some(point.call.cookie())),
            &attached.library,
            UProbeScope::AllProcesses,
        ) {
            Ok(_) => {
                attached.symbols.push(point.symbol.clone());
                if point.call == CudaCall::Sync {
                    syncs.push(point);
                }
            }
            Err(e) => attached.failed.push((point.symbol.clone(), e.to_string())),
        }
    }
    let ret = uprobe(ebpf, names::PROG_CUDA_SYNC_RETURN).map_err(|e| e.to_string())?;
    for point in syncs {
        if let Err(e) = ret.attach(
            at(point, None),
            &attached.library,
            UProbeScope::AllProcesses,
        ) {
            attached
                .failed
                .push((format!("{} (return)", point.symbol), e.to_string()));
        }
    }
    if attached.symbols.is_empty() {
        let (symbol, why) = attached.failed.first().cloned().unwrap_or_default();
        return Err(format!(
            "no uprobe attached to {} (first failure, {symbol}: {why})",
            attached.library.display()
        ));
    }
    Ok(attached)
}

/// The named raw tracepoint program, loaded.
fn raw_tracepoint<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut RawTracePoint, ProbeError> {
    loaded(ebpf, name, RawTracePoint::load, |p| p.fd().is_ok())
}

/// The named uprobe program, loaded.
fn uprobe<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, ProbeError> {
    loaded(ebpf, name, UProbe::load, |p| p.fd().is_ok())
}

/// The ioctl tracepoint program, loaded.
fn tracepoint(ebpf: &mut Ebpf) -> Result<&mut TracePoint, ProbeError> {
    loaded(ebpf, names::PROG_NVIDIA_IOCTL, TracePoint::load, |p| {
        p.fd().is_ok()
    })
}

/// Program `name` of type `T`, loaded into the kernel unless it already is.
fn loaded<'a, T>(
    ebpf: &'a mut Ebpf,
    name: &str,
    load: fn(&mut T) -> Result<(), ProgramError>,
    is_loaded: fn(&T) -> bool,
) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let program: &mut T = program(ebpf, name)?
        .try_into()
        .map_err(|e| program_error(name, "load", e))?;
    if !is_loaded(program) {
        load(program).map_err(|e| privileged(program_error(name, "load", e)))?;
    }
    Ok(program)
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Program, ProbeError> {
    ebpf.program_mut(name).ok_or_else(|| ProbeError::Map {
        map: "programs",
        reason: format!("program {name} missing from the object"),
    })
}

fn program_error(name: &str, action: &'static str, source: ProgramError) -> ProbeError {
    ProbeError::Program {
        program: name.to_string(),
        action,
        source,
    }
}
