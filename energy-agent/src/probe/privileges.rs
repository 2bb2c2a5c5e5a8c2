//! Which capabilities the agent holds, read from /proc/self/status (no libcap needed).

use std::path::Path;

/// CAP_SYS_ADMIN: on kernels before 5.8 the only way to load BPF programs.
pub const CAP_SYS_ADMIN: u32 = 21;
/// CAP_PERFMON (Linux ≥ 5.8): perf events and tracing BPF programs.
pub const CAP_PERFMON: u32 = 38;
/// CAP_BPF (Linux ≥ 5.8): bpf() map and program creation.
pub const CAP_BPF: u32 = 39;

/// The effective capability set of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    effective: u64,
    euid: u32,
}

impl Capabilities {
    /// Reads the calling process's capabilities from `proc_root/self/status`.
    pub fn current(proc_root: &Path) -> std::io::Result<Self> {
        let status = std::fs::read_to_string(proc_root.join("self/status"))?;
        Self::parse(&status).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no CapEff/Uid line in /proc/self/status",
            )
        })
    }

    /// Parses the `CapEff:` and `Uid:` lines of a `/proc/<pid>/status` file.
    pub fn parse(status: &str) -> Option<Self> {
        let mut effective = None;
        let mut euid = None;
        for line in status.lines() {
            if let Some(hex) = line.strip_prefix("CapEff:") {
                effective = u64::from_str_radix(hex.trim(), 16).ok();
            } else if let Some(ids) = line.strip_prefix("Uid:") {
                euid = ids.split_whitespace().nth(1).and_then(|s| s.parse().ok());
            }
        }
        Some(Self {
            effective: effective?,
            euid: euid?,
        })
    }

    /// Whether capability number `cap` is effective.
    pub fn has(&self, cap: u32) -> bool {
        cap < 64 && self.effective & (1 << cap) != 0
    }

    /// Effective user id.
    pub fn euid(&self) -> u32 {
        self.euid
    }

    /// Capabilities still needed to load and attach tracing programs; empty when none.
    pub fn missing_for_bpf(&self) -> Vec<&'static str> {
        if self.has(CAP_SYS_ADMIN) {
            return Vec::new();
        }
        let mut missing = Vec::new();
        if !self.has(CAP_BPF) {
            missing.push("CAP_BPF");
        }
        if !self.has(CAP_PERFMON) {
            missing.push("CAP_PERFMON");
        }
        missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT: &str = "Name:\tcat\nUid:\t0\t0\t0\t0\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\n";
    const NOBODY: &str = "Uid:\t65534\t65534\t65534\t65534\nCapEff:\t0000000000000000\n";
    const BPF_ONLY: &str = "Uid:\t1000\t1000\t1000\t1000\nCapEff:\t000000c000000000\n";

    #[test]
    fn root_has_everything() {
        let caps = Capabilities::parse(ROOT).unwrap();
        assert_eq!(caps.euid(), 0);
        assert!(caps.missing_for_bpf().is_empty());
    }

    #[test]
    fn nobody_misses_bpf_and_perfmon() {
        let caps = Capabilities::parse(NOBODY).unwrap();
        assert_eq!(caps.euid(), 65534);
        assert_eq!(caps.missing_for_bpf(), vec!["CAP_BPF", "CAP_PERFMON"]);
    }

    #[test]
    fn bpf_and_perfmon_suffice() {
        let caps = Capabilities::parse(BPF_ONLY).unwrap();
        assert!(caps.has(CAP_BPF) && caps.has(CAP_PERFMON) && !caps.has(CAP_SYS_ADMIN));
        assert!(caps.missing_for_bpf().is_empty());
    }

    #[test]
    fn garbage_is_none() {
        assert!(Capabilities::parse("CapEff:\tzz\nUid:\t0 0 0 0\n").is_none());
        assert!(Capabilities::parse("").is_none());
    }
}
