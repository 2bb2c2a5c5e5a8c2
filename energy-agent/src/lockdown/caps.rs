//! Capability sets as the kernel numbers them, and a thread's credentials as
//! `/proc/<pid>/task/<tid>/status` shows them.

use std::path::Path;

/// CAP_DAC_READ_SEARCH: read any file, list any directory.
pub const CAP_DAC_READ_SEARCH: u32 = 2;
/// CAP_SETGID.
pub const CAP_SETGID: u32 = 6;
/// CAP_SETUID.
pub const CAP_SETUID: u32 = 7;
/// CAP_SETPCAP: change the bounding set.
pub const CAP_SETPCAP: u32 = 8;
/// CAP_SYS_PTRACE: read other processes' `/proc/<pid>/exe` and `fd`.
pub const CAP_SYS_PTRACE: u32 = 19;
/// CAP_SYS_ADMIN.
pub const CAP_SYS_ADMIN: u32 = 21;
/// CAP_PERFMON.
pub const CAP_PERFMON: u32 = 38;
/// CAP_BPF.
pub const CAP_BPF: u32 = 39;

/// The kernel's names, by number (`capabilities(7)`).
pub const NAMES: [&str; 41] = [
    "cap_chown",
    "cap_dac_override",
    "cap_dac_read_search",
    "cap_fowner",
    "cap_fsetid",
    "cap_kill",
    "cap_setgid",
    "cap_setuid",
    "cap_setpcap",
    "cap_linux_immutable",
    "cap_net_bind_service",
    "cap_net_broadcast",
    "cap_net_admin",
    "cap_net_raw",
    "cap_ipc_lock",
    "cap_ipc_owner",
    "cap_sys_module",
    "cap_sys_rawio",
    "cap_sys_chroot",
    "cap_sys_ptrace",
    "cap_sys_pacct",
    "cap_sys_admin",
    "cap_sys_boot",
    "cap_sys_nice",
    "cap_sys_resource",
    "cap_sys_time",
    "cap_sys_tty_config",
    "cap_mknod",
    "cap_lease",
    "cap_audit_write",
    "cap_audit_control",
    "cap_setfcap",
    "cap_mac_override",
    "cap_mac_admin",
    "cap_syslog",
    "cap_wake_alarm",
    "cap_block_suspend",
    "cap_audit_read",
    "cap_perfmon",
    "cap_bpf",
    "cap_checkpoint_restore",
];

/// A set of capabilities, bit N for capability N.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CapSet(pub u64);

impl CapSet {
    /// No capability.
    pub const EMPTY: CapSet = CapSet(0);

    /// The set of `caps`.
    pub const fn of(caps: &[u32]) -> Self {
        let mut bits = 0u64;
        let mut i = 0;
        while i < caps.len() {
            bits |= 1 << caps[i];
            i += 1;
        }
        Self(bits)
    }

    /// Whether `cap` is in it.
    pub fn has(self, cap: u32) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }

    /// Both.
    pub fn and(self, other: CapSet) -> CapSet {
        CapSet(self.0 & other.0)
    }

    /// Either.
    pub fn or(self, other: CapSet) -> CapSet {
        CapSet(self.0 | other.0)
    }

    /// Whether every capability of `self` is in `other`.
    pub fn within(self, other: CapSet) -> bool {
        self.0 & !other.0 == 0
    }

    /// Whether it is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The names, comma-separated (`none` when empty).
    pub fn names(self) -> String {
        if self.is_empty() {
            return "none".into();
        }
        (0..64)
            .filter(|&c| self.has(c))
            .map(|c| {
                NAMES
                    .get(c as usize)
                    .map_or_else(|| format!("cap_{c}"), |n| (*n).to_string())
            })
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A thread's credentials, as procfs shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThreadCreds {
    /// Effective set.
    pub effective: CapSet,
    /// Permitted set.
    pub permitted: CapSet,
    /// Inheritable set.
    pub inheritable: CapSet,
    /// Bounding set.
    pub bounding: CapSet,
    /// Ambient set.
    pub ambient: CapSet,
    /// `no_new_privs`.
    pub no_new_privs: bool,
    /// Real, effective, saved user id.
    pub uid: [u32; 3],
    /// Real, effective, saved group id.
    pub gid: [u32; 3],
}

impl ThreadCreds {
    /// Parses a `status` file.
    pub fn parse(status: &str) -> Option<Self> {
        let mut c = ThreadCreds::default();
        let mut seen = 0;
        let hex = |v: &str| u64::from_str_radix(v.trim(), 16).ok().map(CapSet);
        let ids = |v: &str| -> Option<[u32; 3]> {
            let mut it = v.split_whitespace().map(|s| s.parse::<u32>().ok());
            Some([it.next()??, it.next()??, it.next()??])
        };
        for line in status.lines() {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            match key {
                "CapEff" => c.effective = hex(value)?,
                "CapPrm" => c.permitted = hex(value)?,
                "CapInh" => c.inheritable = hex(value)?,
                "CapBnd" => c.bounding = hex(value)?,
                "CapAmb" => c.ambient = hex(value)?,
                "NoNewPrivs" => c.no_new_privs = value.trim() == "1",
                "Uid" => c.uid = ids(value)?,
                "Gid" => c.gid = ids(value)?,
                _ => continue,
            }
            seen += 1;
        }
        (seen >= 8).then_some(c)
    }

    /// The credentials of thread `tid` of this process.
    pub fn of_thread(tid: u32) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).ok()?)
    }

    /// The calling thread's.
    pub fn current() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/thread-self/status").ok()?)
    }

    /// Those of any process's main thread.
    pub fn of_process(proc_root: &Path, pid: u32) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(proc_root.join(format!("{pid}/status"))).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tenergy-agent\nUid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\nNoNewPrivs:\t1\nCapInh:\t0000000000000000\nCapPrm:\t0000000000080004\nCapEff:\t0000000000080004\nCapBnd:\t0000000000080004\nCapAmb:\t0000000000000000\n";

    #[test]
    fn reads_a_thread_status() {
        let c = ThreadCreds::parse(STATUS).expect("a status");
        let kept = CapSet::of(&[CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE]);
        assert_eq!(c.effective, kept);
        assert_eq!(c.permitted, kept);
        assert_eq!(c.bounding, kept);
        assert!(c.ambient.is_empty() && c.no_new_privs);
        assert_eq!(c.uid, [65534; 3]);
        assert_eq!(kept.names(), "cap_dac_read_search,cap_sys_ptrace");
        assert_eq!(CapSet::EMPTY.names(), "none");
        assert!(ThreadCreds::parse("CapEff:\tzz\n").is_none());
    }

    #[test]
    fn set_operations() {
        let a = CapSet::of(&[CAP_BPF, CAP_PERFMON]);
        let b = CapSet::of(&[CAP_BPF]);
        assert!(b.within(a) && !a.within(b));
        assert_eq!(a.and(b), b);
        assert_eq!(b.or(CapSet::of(&[CAP_PERFMON])), a);
        assert_eq!(NAMES[CAP_BPF as usize], "cap_bpf");
        assert_eq!(NAMES[CAP_SYS_PTRACE as usize], "cap_sys_ptrace");
    }
}
