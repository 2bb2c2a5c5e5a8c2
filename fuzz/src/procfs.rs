//! What the agent reads from procfs about other processes (any local user shapes some
//! of it: a command line, a cgroup name): `/proc/net/tcp` lines to find a local
//! sender's socket, `status` files for credentials, `cgroup` and `mountinfo` for
//! containers, a `cmdline`.

use std::net::SocketAddr;

use energy_agent::{
    identity::{
        cgroup::{cgroup_v2_path, cgroup2_mount, container_id},
        read_cmdline,
    },
    lockdown::caps::ThreadCreds,
    probe::privileges::Capabilities,
    receive::peer::{parse_proc_addr, socket_inode},
};

/// One input: the first byte picks the file.
pub fn run(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    match selector % 4 {
        // The kernel formats /proc/net/tcp in ASCII hex. parse_proc_addr slices its
        // input by bytes and panics inside a multi-byte character
        // (fuzz/regressions/procfs/net-tcp-non-ascii, reported; receive/peer.rs is being
        // reworked elsewhere): only what the kernel can write is fed to it here.
        0 if !rest.is_ascii() => {}
        0 => {
            for field in text.split_whitespace().take(64) {
                let _ = parse_proc_addr(field);
            }
            let dir = tempfile::tempdir().expect("a fake procfs");
            std::fs::create_dir_all(dir.path().join("net")).expect("net/");
            std::fs::write(dir.path().join("net/tcp"), rest).expect("net/tcp");
            let (peer, ours): (SocketAddr, SocketAddr) = (
                "127.0.0.1:40000".parse().expect("an address"),
                "127.0.0.1:4317".parse().expect("an address"),
            );
            let _ = socket_inode(dir.path(), peer, ours);
        }
        1 => {
            let _ = ThreadCreds::parse(&text);
            let _ = Capabilities::parse(&text);
        }
        2 => {
            if let Some(path) = cgroup_v2_path(&text) {
                let _ = container_id(&path);
            }
            let _ = container_id(&text);
            let _ = cgroup2_mount(&text);
        }
        _ => {
            let dir = tempfile::tempdir().expect("a fake /proc/<pid>");
            std::fs::write(dir.path().join("cmdline"), rest).expect("cmdline");
            let _ = read_cmdline(dir.path());
        }
    }
}
