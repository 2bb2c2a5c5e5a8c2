//! What the programs need to know about the running kernel: structure offsets from its
//! BTF and tracepoint record layouts from tracefs, set as globals when loading.

use std::path::Path;

use aya::EbpfLoader;
use energy_common::names;

use super::{KERNEL_BTF, ProbeError, btf, possible_cpus, tracefs::Tracefs};

/// What the programs need to know about the running kernel, set as globals at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelLayout {
    /// Possible CPUs.
    pub nr_cpus: u32,
    /// Byte offset of `task_struct.pid`.
    pub task_pid_offset: u32,
    /// Byte offset of `task_struct.tgid`.
    pub task_tgid_offset: u32,
    /// Byte offset of `task_struct.se.sum_exec_runtime`.
    pub task_runtime_offset: u32,
    /// Byte offset of `task_struct.se.exec_start`.
    pub task_exec_start_offset: u32,
    /// Byte offsets of `task_struct.cgroups`, `css_set.dfl_cgrp`, `cgroup.kn` and
    /// `kernfs_node.id` (the typed switch program's way to the cgroup id), all 0 where
    /// the BTF lacks one (the program then calls the helper).
    pub cgroup_chain_offsets: [u32; 4],
    /// 1 when `sched_process_exit` passes `group_dead` (recent kernels), else 0.
    pub exit_has_group_dead: u32,
    /// Offset of `cmd` in the `sys_enter_ioctl` record, or why that tracepoint is
    /// unusable (kernels without syscall tracepoints).
    pub ioctl_cmd_offset: Result<u32, String>,
}

impl KernelLayout {
    /// Reads the layout from the kernel's BTF and tracefs (mounting it when missing).
    pub fn read() -> Result<Self, ProbeError> {
        let btf = btf::Btf::from_file(Path::new(KERNEL_BTF))?;
        let tracefs = Tracefs::find_or_mount()?;
        let exit = tracefs.format("sched", "sched_process_exit")?;
        Ok(Self {
            nr_cpus: possible_cpus(),
            task_pid_offset: btf.member_offset("task_struct", "pid")?,
            task_tgid_offset: btf.member_offset("task_struct", "tgid")?,
            task_runtime_offset: btf.member_offset("task_struct", "se.sum_exec_runtime")?,
            task_exec_start_offset: btf.member_offset("task_struct", "se.exec_start")?,
            cgroup_chain_offsets: cgroup_chain(&btf),
            exit_has_group_dead: u32::from(exit.offset("group_dead").is_some()),
            ioctl_cmd_offset: tracefs
                .format("syscalls", "sys_enter_ioctl")
                .map_err(|e| e.to_string())
                .and_then(|f| {
                    f.offset("cmd")
                        .map(|o| o as u32)
                        .ok_or_else(|| "sys_enter_ioctl has no cmd field".to_string())
                }),
        })
    }

    pub(super) fn loader(&self) -> EbpfLoader<'_> {
        let mut loader = EbpfLoader::new();
        // The programs read kernel structures at the offsets above, not through CO-RE
        // relocations: the kernel BTF aya parsed on creating the loader (the largest
        // allocation of the agent's life) is dropped here instead of kept through the
        // load, and no relocation pass runs.
        loader
            .btf(None)
            .override_global(names::NR_CPUS, &self.nr_cpus, true)
            .override_global(names::TASK_PID_OFFSET, &self.task_pid_offset, true)
            .override_global(names::TASK_TGID_OFFSET, &self.task_tgid_offset, true)
            .override_global(names::TASK_RUNTIME_OFFSET, &self.task_runtime_offset, true)
            .override_global(
                names::TASK_EXEC_START_OFFSET,
                &self.task_exec_start_offset,
                true,
            )
            .override_global(
                names::CGROUP_CHAIN_OFFSETS,
                &self.cgroup_chain_offsets,
                true,
            )
            .override_global(names::EXIT_HAS_GROUP_DEAD, &self.exit_has_group_dead, true);
        if let Ok(offset) = &self.ioctl_cmd_offset {
            loader.override_global(names::IOCTL_CMD_OFFSET, offset, true);
        }
        loader
    }
}

/// The offsets `bpf_get_current_cgroup_id` follows from a task to its cgroup v2 id, or
/// zeros when one is missing (or is at offset 0, which a pointer chain cannot tell from
/// "missing").
fn cgroup_chain(btf: &btf::Btf) -> [u32; 4] {
    let chain = [
        ("task_struct", "cgroups"),
        ("css_set", "dfl_cgrp"),
        ("cgroup", "kn"),
        ("kernfs_node", "id"),
    ]
    .map(|(name, member)| btf.member_offset(name, member).unwrap_or(0));
    if chain.contains(&0) { [0; 4] } else { chain }
}
