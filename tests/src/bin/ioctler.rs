//! Test workload: issues ioctls on a regular file — `nvidia` of them with NVIDIA's type
//! byte ('F') and `other` with another ('T', the terminal ioctls) — then prints its
//! pid. The file rejects them all (ENOTTY); the agent counts the attempts.
//!
//! usage: ioctler <nvidia> <other>

use std::os::fd::AsRawFd;

/// `_IOC(_IOC_NONE, type, nr, 0)`.
fn command(kind: u8, nr: u8) -> u64 {
    (u64::from(kind) << 8) | u64::from(nr)
}

fn main() {
    let mut args = std::env::args()
        .skip(1)
        .map(|a| a.parse::<u32>().expect("a count"));
    let (nvidia, other) = (args.next().unwrap_or(0), args.next().unwrap_or(0));
    let file = tempfile::tempfile().expect("a regular file");
    let fd = file.as_raw_fd();
    for (kind, count) in [(b'F', nvidia), (b'T', other)] {
        for i in 0..count {
            // SAFETY: an ioctl without an argument on our own descriptor.
            let rc = unsafe { libc::ioctl(fd, command(kind, i as u8) as _, 0) };
            assert_eq!(rc, -1, "a regular file takes no ioctls");
        }
    }
    println!("{}", std::process::id());
}
