//! The system calls of a privilege drop, and making every thread do it.
//!
//! Linux keeps capabilities, user ids, the bounding set and `no_new_privs` per thread,
//! and `capset(2)` changes only the caller's, so each thread of the process has to make
//! the calls itself. [`apply_to_threads`] does what glibc does for `setuid` (and libcap's
//! psx for capabilities): it signals every other thread, whose handler applies the plan
//! to itself with raw system calls only (async-signal-safe, no allocation), then reads
//! back each thread's credentials from procfs and signals again any that does not match
//! (a thread created meanwhile), until all do.

use std::{
    sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering::SeqCst},
    time::{Duration, Instant},
};

use super::caps::{CAP_SETPCAP, CapSet, ThreadCreds};

/// What each thread is to end with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Effective and permitted set (inheritable and ambient are emptied).
    pub keep: CapSet,
    /// Also drop everything else from the bounding set (needs CAP_SETPCAP; skipped
    /// where the thread does not have it).
    pub bounding: bool,
    /// Switch to this (uid, gid), with no supplementary groups.
    pub user: Option<(u32, u32)>,
}

/// A step that failed, with its errno.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// Which call.
    pub step: &'static str,
    /// errno.
    pub errno: i32,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.step,
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}

const VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn errno() -> i32 {
    // SAFETY: reads the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

fn check(step: &'static str, rc: libc::c_long) -> Result<libc::c_long, Failure> {
    if rc < 0 {
        Err(Failure {
            step,
            errno: errno(),
        })
    } else {
        Ok(rc)
    }
}

/// (effective, permitted) of the calling thread.
fn capget() -> Result<(CapSet, CapSet), Failure> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: a version-3 header and two data structs, as capget(2) expects.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    check("capget", rc)?;
    let join = |lo: u32, hi: u32| CapSet(u64::from(lo) | (u64::from(hi) << 32));
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
    ))
}

/// Sets the calling thread's effective and permitted sets; inheritable emptied.
fn capset(effective: CapSet, permitted: CapSet) -> Result<(), Failure> {
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let split = |s: CapSet| (s.0 as u32, (s.0 >> 32) as u32);
    let (e0, e1) = split(effective);
    let (p0, p1) = split(permitted);
    let data = [
        Data {
            effective: e0,
            permitted: p0,
            inheritable: 0,
        },
        Data {
            effective: e1,
            permitted: p1,
            inheritable: 0,
        },
    ];
    // SAFETY: as capget.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    check("capset", rc).map(drop)
}

fn prctl(step: &'static str, option: libc::c_int, arg: libc::c_ulong) -> Result<i32, Failure> {
    // SAFETY: prctl with integer arguments only.
    let rc = unsafe { libc::prctl(option, arg, 0 as libc::c_ulong, 0 as libc::c_ulong, 0) };
    check(step, libc::c_long::from(rc)).map(|r| r as i32)
}

/// Highest capability number the kernel knows (`/proc/sys/kernel/cap_last_cap`), read
/// before any handler runs.
static LAST_CAP: AtomicU32 = AtomicU32::new(40);

/// The calling thread's real, effective and saved uid.
fn resuid() -> [u32; 3] {
    let (mut r, mut e, mut s) = (0, 0, 0);
    // SAFETY: three out-pointers to u32, as getresuid(2) expects.
    unsafe { libc::getresuid(&mut r, &mut e, &mut s) };
    [r, e, s]
}

/// Applies `plan` to the calling thread: raw system calls only, so that it may run
/// in a signal handler. Safe to run again on a thread that already has it.
pub fn apply_to_this_thread(plan: &Plan) -> Result<(), Failure> {
    let (_, permitted) = capget()?;
    // Everything permitted made effective for the steps below.
    capset(permitted, permitted)?;
    if plan.bounding && permitted.has(CAP_SETPCAP) {
        for cap in 0..=LAST_CAP.load(SeqCst).min(63) {
            let cap = libc::c_ulong::from(cap);
            if !plan.keep.has(cap as u32)
                && prctl("PR_CAPBSET_READ", libc::PR_CAPBSET_READ, cap)? == 1
            {
                prctl("PR_CAPBSET_DROP", libc::PR_CAPBSET_DROP, cap)?;
            }
        }
    }
    // Ambient capabilities (4.3+); an older kernel has none to clear.
    let _ = prctl(
        "PR_CAP_AMBIENT",
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    );
    if let Some((uid, gid)) = plan.user
        && resuid() != [uid; 3]
    {
        prctl("PR_SET_KEEPCAPS", libc::PR_SET_KEEPCAPS, 1)?;
        // Raw calls: glibc's wrappers would signal every thread themselves.
        // SAFETY: setgroups with no groups; setresgid/setresuid with plain ids.
        unsafe {
            check(
                "setgroups",
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
            )?;
            check(
                "setresgid",
                libc::syscall(libc::SYS_setresgid, gid, gid, gid),
            )?;
            check(
                "setresuid",
                libc::syscall(libc::SYS_setresuid, uid, uid, uid),
            )?;
        }
        prctl("PR_SET_KEEPCAPS", libc::PR_SET_KEEPCAPS, 0)?;
    }
    let keep = plan.keep.and(permitted);
    capset(keep, keep)?;
    prctl("PR_SET_NO_NEW_PRIVS", libc::PR_SET_NO_NEW_PRIVS, 1)?;
    Ok(())
}

/// Whether a thread's credentials are what `plan` leaves.
pub fn matches(creds: &ThreadCreds, plan: &Plan, had_setpcap: bool) -> bool {
    creds.effective == plan.keep
        && creds.permitted == plan.keep
        && creds.inheritable.is_empty()
        && creds.ambient.is_empty()
        && creds.no_new_privs
        && plan
            .user
            .is_none_or(|(uid, gid)| creds.uid == [uid; 3] && creds.gid == [gid; 3])
        && (!plan.bounding || !had_setpcap || creds.bounding.within(plan.keep))
}

/// The plan the handler applies (published before the signals go out).
static PLAN_KEEP: AtomicU64 = AtomicU64::new(0);
static PLAN_FLAGS: AtomicU32 = AtomicU32::new(0);
static PLAN_UID: AtomicU32 = AtomicU32::new(0);
static PLAN_GID: AtomicU32 = AtomicU32::new(0);
/// Handlers that ran, and the first failure (step index << 16 | errno).
static DONE: AtomicUsize = AtomicUsize::new(0);
static FAILED: AtomicI32 = AtomicI32::new(0);

const STEPS: [&str; 9] = [
    "capget",
    "capset",
    "PR_CAPBSET_READ",
    "PR_CAPBSET_DROP",
    "PR_SET_KEEPCAPS",
    "setgroups",
    "setresgid",
    "setresuid",
    "PR_SET_NO_NEW_PRIVS",
];

fn published() -> Plan {
    let flags = PLAN_FLAGS.load(SeqCst);
    Plan {
        keep: CapSet(PLAN_KEEP.load(SeqCst)),
        bounding: flags & 1 != 0,
        user: (flags & 2 != 0).then(|| (PLAN_UID.load(SeqCst), PLAN_GID.load(SeqCst))),
    }
}

extern "C" fn on_signal(_: libc::c_int) {
    let saved = errno();
    if let Err(f) = apply_to_this_thread(&published()) {
        let step = STEPS.iter().position(|s| *s == f.step).unwrap_or(0) as i32;
        let _ = FAILED.compare_exchange(0, (step + 1) << 16 | (f.errno & 0xffff), SeqCst, SeqCst);
    }
    DONE.fetch_add(1, SeqCst);
    // SAFETY: restores the interrupted code's errno.
    unsafe { *libc::__errno_location() = saved };
}

/// The signal the drop travels on (a real-time one glibc leaves to applications).
fn signal() -> libc::c_int {
    libc::SIGRTMIN() + 8
}

fn gettid() -> u32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

/// The thread ids of this process.
pub fn threads() -> Vec<u32> {
    std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// The id that `tid` (as `/proc/self/task` names it) has in this process's own pid
/// namespace, which gettid and tgkill use: the last `NSpid` figure. The two differ when
/// the procfs mounted at /proc is another namespace's (a DaemonSet given the host's).
fn own_namespace_id(tid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/status"))
        .ok()
        .and_then(|status| last_nspid(&status))
        .unwrap_or(tid)
}

/// The last id of a status text's `NSpid:` line.
fn last_nspid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// A thread's name (`comm`).
pub fn thread_name(tid: u32) -> String {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Applies `plan` to every thread `which` selects (the caller too, when selected),
/// and checks each one's credentials afterwards. `had_setpcap`: whether the threads
/// could drop from the bounding set.
pub fn apply_to_threads(
    plan: &Plan,
    which: impl Fn(u32) -> bool,
    had_setpcap: bool,
) -> Result<(), String> {
    if let Some(last) = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        LAST_CAP.store(last, SeqCst);
    }
    PLAN_KEEP.store(plan.keep.0, SeqCst);
    let (uid, gid) = plan.user.unwrap_or((0, 0));
    PLAN_UID.store(uid, SeqCst);
    PLAN_GID.store(gid, SeqCst);
    PLAN_FLAGS.store(
        u32::from(plan.bounding) | (u32::from(plan.user.is_some()) << 1),
        SeqCst,
    );
    FAILED.store(0, SeqCst);
    // SAFETY: installs a handler that makes only async-signal-safe calls.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(signal(), &action, std::ptr::null_mut()) != 0 {
            return Err(format!("sigaction: {}", std::io::Error::last_os_error()));
        }
    }
    let me = gettid();
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    let mut pending = Vec::new();
    for _round in 0..10 {
        pending = threads()
            .into_iter()
            .filter(|&t| which(t))
            .filter(|&t| ThreadCreds::of_thread(t).is_some_and(|c| !matches(&c, plan, had_setpcap)))
            .collect();
        if pending.is_empty() {
            return Ok(());
        }
        DONE.store(0, SeqCst);
        let mut sent = 0;
        for &tid in &pending {
            let own = own_namespace_id(tid);
            if own == me {
                apply_to_this_thread(plan).map_err(|f| format!("this thread: {f}"))?;
                continue;
            }
            // SAFETY: a signal to a thread of this process, whose handler is installed.
            let rc = unsafe { libc::syscall(libc::SYS_tgkill, pid, own, signal()) };
            if rc == 0 {
                sent += 1;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while DONE.load(SeqCst) < sent && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let failed = FAILED.load(SeqCst);
        if failed != 0 {
            let step = STEPS
                .get(((failed >> 16) - 1) as usize)
                .copied()
                .unwrap_or("?");
            return Err(format!(
                "a thread: {step}: {}",
                std::io::Error::from_raw_os_error(failed & 0xffff)
            ));
        }
    }
    Err(format!(
        "threads {pending:?} do not hold the expected credentials after 10 rounds"
    ))
}

/// The calling thread's (effective, permitted) sets.
pub fn current() -> Result<(CapSet, CapSet), Failure> {
    capget()
}

/// Sets the calling thread's effective set (within its permitted set), for a moment:
/// [`super::needs_bpf_for_reads`] tries a map read without CAP_BPF this way.
pub fn set_effective(effective: CapSet) -> Result<(), Failure> {
    let (_, permitted) = capget()?;
    capset(effective.and(permitted), permitted)
}

/// Empties the calling thread's capability sets (and sets `no_new_privs`): the start
/// of every thread of the network-facing runtime.
pub fn drop_this_thread() -> Result<(), Failure> {
    capset(CapSet::EMPTY, CapSet::EMPTY)?;
    prctl("PR_SET_NO_NEW_PRIVS", libc::PR_SET_NO_NEW_PRIVS, 1).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threads_own_id_is_the_innermost_namespaces() {
        let status = "Name:\tenergy-agent\nTgid:\t4200\nNSpid:\t4217\t17\nPPid:\t1\n";
        assert_eq!(last_nspid(status), Some(17));
        assert_eq!(last_nspid("NSpid:\t99\n"), Some(99));
        assert_eq!(last_nspid("Name:\tx\n"), None);
        let me = gettid();
        assert_eq!(own_namespace_id(me), me, "in the test's own namespace");
    }
}
