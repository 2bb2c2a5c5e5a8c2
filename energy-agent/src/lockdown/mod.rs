//! Least privilege for `run`: once the programs are loaded and attached, the meters
//! opened and the listeners bound (their certificates and tokens read), the agent keeps
//! only what reading goes on needing, in every thread:
//!
//! - [`RUNTIME`]: CAP_DAC_READ_SEARCH (powercap's `energy_uj` is readable by root only
//!   since PLATYPUS; other users' `/proc/<pid>/fd`) and CAP_SYS_PTRACE (other processes'
//!   `/proc/<pid>/exe` and `fd` links: a process's executable, the sender of a local
//!   connection);
//! - CAP_BPF only where this kernel refuses map reads without it (before Linux 6.5 with
//!   `kernel.unprivileged_bpf_disabled` set): tried, not assumed ([`needs_bpf_for_reads`]);
//! - nothing else: the effective, permitted and inheritable sets cut to that, the ambient
//!   set emptied, the bounding set cut to it too (where CAP_SETPCAP allows), and
//!   `no_new_privs` set, so nothing can be regained through execve;
//! - optionally another user (`--user NAME`, keeping the same set across the switch);
//! - and the threads that receive, decode, enrich and forward OTLP (the runtime named
//!   `energy-net`) hold no capability at all; the one question they need the
//!   capabilities for (which process is this local sender) goes to the receiver's
//!   resolver thread (`energy-peers`, started before the drop, so it keeps this set).
//!
//! Threads share one address space: the per-thread split keeps a logic error in the
//! network path (a crafted path, say) from using the capabilities, not a memory-safety
//! bug from reaching the other threads (docs/SECURITY.md).

pub mod caps;
pub mod sys;

use std::{
    ffi::CString,
    sync::atomic::{AtomicBool, Ordering},
};

use caps::{CAP_BPF, CAP_DAC_READ_SEARCH, CAP_SETPCAP, CAP_SYS_PTRACE, CapSet};
use sys::Plan;

/// What every thread but the network-facing ones keeps after start-up (and CAP_BPF
/// where map reads need it).
pub const RUNTIME: CapSet = CapSet::of(&[CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE]);

/// The name of the network-facing runtime's threads.
pub const NET_THREAD: &str = "energy-net";

/// A privilege drop that could not be done: `run` does not go on with more privileges
/// than it says it has.
#[derive(Debug, thiserror::Error)]
pub enum LockdownError {
    /// `--user NAME` names no user.
    #[error("--user {0}: no such user")]
    NoUser(String),
    /// A thread could not drop.
    #[error("dropping privileges: {0}")]
    Drop(String),
    /// Switching user needs CAP_SETUID and CAP_SETGID.
    #[error("--user needs root (or CAP_SETUID and CAP_SETGID)")]
    CannotSwitch,
}

/// The user to run as: (uid, gid, name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    /// Its uid.
    pub uid: u32,
    /// Its primary group.
    pub gid: u32,
    /// Its name.
    pub name: String,
}

/// Looks up `name` in the user database (read now, before anything is dropped).
pub fn resolve_user(name: &str) -> Result<User, LockdownError> {
    let c = CString::new(name).map_err(|_| LockdownError::NoUser(name.into()))?;
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwnam_r with a zeroed passwd, a buffer of its stated length and an
    // out-pointer; on success `result` points at `pwd`.
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return Err(LockdownError::NoUser(name.into()));
    }
    Ok(User {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        name: name.into(),
    })
}

/// What the drop left.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// Every thread's effective and permitted set (the network threads': none).
    pub kept: CapSet,
    /// Whether CAP_BPF is among them because map reads need it here.
    pub bpf_for_reads: bool,
    /// Whether the bounding set was cut (CAP_SETPCAP was held).
    pub bounding_cut: bool,
    /// The user switched to.
    pub user: Option<User>,
}

impl Outcome {
    /// One line for the start-up message.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "privileges dropped: {} in the probe threads, none in the OTLP threads",
            self.kept.names()
        );
        if self.bpf_for_reads {
            s.push_str(" (cap_bpf: this kernel needs it for map reads)");
        }
        if let Some(u) = &self.user {
            s.push_str(&format!("; running as {} (uid {})", u.name, u.uid));
        }
        s.push_str("; no_new_privs");
        s
    }
}

/// Whether this kernel refuses BPF map reads on the agent's own descriptors without
/// CAP_BPF: `read` is tried with CAP_BPF and CAP_SYS_ADMIN out of the calling thread's
/// effective set for a moment. (Linux 6.5 moved `unprivileged_bpf_disabled` to map and
/// program creation; before it, every bpf() call needed CAP_BPF when it was set.)
pub fn needs_bpf_for_reads(read: impl FnOnce() -> bool) -> Result<bool, LockdownError> {
    let (effective, permitted) = sys::current().map_err(|f| LockdownError::Drop(f.to_string()))?;
    let privileged = CapSet::of(&[CAP_BPF, caps::CAP_SYS_ADMIN]);
    if permitted.and(privileged).is_empty() {
        // Loaded without them, so reads do not need them either.
        return Ok(false);
    }
    let without = CapSet(effective.0 & !privileged.0);
    sys::set_effective(without).map_err(|f| LockdownError::Drop(f.to_string()))?;
    let ok = read();
    sys::set_effective(effective).map_err(|f| LockdownError::Drop(f.to_string()))?;
    Ok(!ok)
}

static NET_LOCKED: AtomicBool = AtomicBool::new(false);

/// For the network runtime's `on_thread_start`: once the drop has happened, a new
/// thread starts with nothing (it is created by a thread that already has nothing, but
/// this does not rely on it).
pub fn net_thread_start() {
    if NET_LOCKED.load(Ordering::SeqCst)
        && let Err(e) = sys::drop_this_thread()
    {
        log::error!("a new {NET_THREAD} thread could not drop its capabilities: {e}");
    }
}

/// Drops every thread of the process to what reading goes on needing (see the module
/// doc); `bpf_for_reads` from [`needs_bpf_for_reads`]; `user` to switch to.
pub fn lock_down(bpf_for_reads: bool, user: Option<User>) -> Result<Outcome, LockdownError> {
    let (_, permitted) = sys::current().map_err(|f| LockdownError::Drop(f.to_string()))?;
    if user.is_some() && !(permitted.has(caps::CAP_SETUID) && permitted.has(caps::CAP_SETGID)) {
        return Err(LockdownError::CannotSwitch);
    }
    let wanted = if bpf_for_reads {
        RUNTIME.or(CapSet::of(&[CAP_BPF]))
    } else {
        RUNTIME
    };
    let kept = wanted.and(permitted);
    let had_setpcap = permitted.has(CAP_SETPCAP);
    let plan = Plan {
        keep: kept,
        bounding: true,
        user: user.as_ref().map(|u| (u.uid, u.gid)),
    };
    sys::apply_to_threads(&plan, |_| true, had_setpcap).map_err(LockdownError::Drop)?;
    NET_LOCKED.store(true, Ordering::SeqCst);
    let nothing = Plan {
        keep: CapSet::EMPTY,
        bounding: false,
        user: None,
    };
    sys::apply_to_threads(
        &nothing,
        |tid| sys::thread_name(tid).starts_with(NET_THREAD),
        false,
    )
    .map_err(LockdownError::Drop)?;
    Ok(Outcome {
        kept,
        bpf_for_reads,
        bounding_cut: had_setpcap,
        user,
    })
}

/// Whether a kernel of `release` with `unprivileged_bpf_disabled` = `sysctl` needs
/// CAP_BPF for map reads (what `check` predicts; `run` tries it).
pub fn predict_bpf_for_reads(release: (u32, u32), sysctl: Option<u32>) -> bool {
    release < (6, 5) && sysctl != Some(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prediction_follows_the_kernel_and_the_sysctl() {
        assert!(!predict_bpf_for_reads((6, 18), Some(2)));
        assert!(!predict_bpf_for_reads((6, 5), Some(1)));
        assert!(predict_bpf_for_reads((6, 1), Some(2)));
        assert!(!predict_bpf_for_reads((5, 19), Some(0)));
        assert!(predict_bpf_for_reads((5, 19), None));
    }

    #[test]
    fn users_are_looked_up() {
        let root = resolve_user("root").expect("root exists");
        assert_eq!((root.uid, root.gid), (0, 0));
        assert!(matches!(
            resolve_user("no-such-user-here"),
            Err(LockdownError::NoUser(_))
        ));
    }

    #[test]
    fn the_outcome_names_what_is_kept() {
        let o = Outcome {
            kept: RUNTIME,
            bpf_for_reads: false,
            bounding_cut: true,
            user: Some(User {
                uid: 65534,
                gid: 65534,
                name: "nobody".into(),
            }),
        };
        let text = o.describe();
        assert!(
            text.contains("cap_dac_read_search,cap_sys_ptrace"),
            "{text}"
        );
        assert!(text.contains("nobody (uid 65534)"), "{text}");
    }
}
