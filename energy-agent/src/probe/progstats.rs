//! Per-program counters the kernel keeps (`bpf_prog_info`): runs, run time (when
//! `kernel.bpf_stats_enabled=1`) and recursion misses, the runs the kernel skipped.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use aya_obj::generated::bpf_prog_info;

/// What the kernel counted for one loaded program.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProgramRunStats {
    /// Runs (counted only while `kernel.bpf_stats_enabled=1`).
    pub run_cnt: u64,
    /// Total run time in ns (counted only while `kernel.bpf_stats_enabled=1`).
    pub run_time_ns: u64,
    /// Runs the kernel skipped because a BPF program was already active on the CPU.
    pub recursion_misses: u64,
}

/// One program's counters, by name (the agent reports them each interval).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NamedProgramStats {
    /// Program name in the object.
    pub name: String,
    /// Its counters.
    #[serde(flatten)]
    pub stats: ProgramRunStats,
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// Reads the counters of the program behind `fd`.
pub fn program_stats(fd: BorrowedFd<'_>) -> io::Result<ProgramRunStats> {
    // SAFETY: bpf_prog_info is plain old data; all-zero is a valid value.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<bpf_prog_info>() as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: attr points to a valid buffer of info_len bytes for the kernel to fill.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &raw const attr,
            size_of::<InfoAttr>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ProgramRunStats {
        run_cnt: info.run_cnt,
        run_time_ns: info.run_time_ns,
        recursion_misses: info.recursion_misses,
    })
}
