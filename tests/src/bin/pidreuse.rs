//! Test program: starts a program under a pid of the caller's choosing, the way
//! checkpoint/restore does (`clone3` with `set_tid`, Linux ≥ 5.5, CAP_SYS_ADMIN in the
//! pid namespace's owner; the host's when run as root), so a test can reuse a pid on
//! purpose instead of cycling the whole pid space.
//!
//! usage: pidreuse <pid> <program> [args...]   (the child execs program)
//!        pidreuse <pid> --sleep <seconds>      (the child sleeps and exits, no exec:
//!                                               a new process that keeps this name)
//! Prints the child's pid, waits for it and exits with its status; exits 17 (EEXIST)
//! when the pid is taken, 1 on any other failure.

use std::ffi::CString;

/// `struct clone_args` up to `set_tid_size` (CLONE_ARGS_SIZE_VER1).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(pid), Some(program)) = (args.get(1).and_then(|p| p.parse::<i32>().ok()), args.get(2))
    else {
        eprintln!("usage: pidreuse <pid> <program> [args...]");
        std::process::exit(1);
    };
    // Everything the child needs is made before the clone: after it, the child only
    // calls execv (this program is single-threaded, but the rule keeps it safe).
    let argv: Vec<CString> = args[2..]
        .iter()
        .map(|a| CString::new(a.as_str()).expect("no NUL in arguments"))
        .collect();
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let path = CString::new(program.as_str()).expect("no NUL in the program");
    let sleep_s: Option<u32> =
        (program == "--sleep").then(|| args.get(3).and_then(|s| s.parse().ok()).unwrap_or(60));
    let set_tid = [pid];
    let clone_args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: set_tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: a valid clone_args of the size passed; no CLONE_VM, so the child has its
    // own copy of memory, as after fork.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &clone_args as *const CloneArgs,
            size_of::<CloneArgs>(),
        )
    };
    if ret == 0 {
        if let Some(seconds) = sleep_s {
            // SAFETY: plain libc calls with no preconditions.
            unsafe {
                libc::sleep(seconds);
                libc::_exit(0);
            }
        }
        // SAFETY: path and argv are NUL-terminated and outlive the call.
        unsafe {
            libc::execv(path.as_ptr(), argv_ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    if ret < 0 {
        let err = std::io::Error::last_os_error();
        eprintln!("pidreuse: clone3 with pid {pid}: {err}");
        std::process::exit(if err.raw_os_error() == Some(libc::EEXIST) {
            17
        } else {
            1
        });
    }
    println!("{ret}");
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(ret as i32, &mut status, 0) };
    std::process::exit(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    });
}
