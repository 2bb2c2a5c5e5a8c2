//! Which process is on the other end of a local TCP connection: its socket in
//! `/proc/net/tcp{,6}` (by the peer's address and ours), then the process holding that
//! socket inode among `/proc/<pid>/fd`. Only loopback peers can be resolved.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
};

/// Parses an address column of /proc/net/tcp{,6}: `0100007F:1F90` or 32 hex digits.
pub fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(ip, 16).ok()?.to_le_bytes(),
        )),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(&ip[i * 8..i * 8 + 8], 16).ok()?;
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Same endpoint, looking through IPv4-mapped IPv6 addresses.
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |s: SocketAddr| match s.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(s, |v4| SocketAddr::new(IpAddr::V4(v4), s.port())),
        IpAddr::V4(_) => s,
    };
    canon(a) == canon(b)
}

/// The inode of the socket whose local end is `peer` and remote end `ours`.
pub fn socket_inode(proc_root: &Path, peer: SocketAddr, ours: SocketAddr) -> Option<u64> {
    for table in ["net/tcp", "net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(proc_root.join(table)) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let (Some(local), Some(remote)) = (parse_proc_addr(f[1]), parse_proc_addr(f[2])) else {
                continue;
            };
            if same(local, peer) && same(remote, ours) {
                return f[9].parse().ok().filter(|&i| i != 0);
            }
        }
    }
    None
}

/// The process (tgid) holding socket `inode`.
pub fn pid_of_socket(proc_root: &Path, inode: u64) -> Option<u32> {
    let wanted = format!("socket:[{inode}]");
    let entries = std::fs::read_dir(proc_root).ok()?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == wanted.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// The local process that opened the connection from `peer` to `ours`, if any.
pub fn pid_of_peer(proc_root: &Path, peer: SocketAddr, ours: SocketAddr) -> Option<u32> {
    if !peer.ip().is_loopback()
        && !matches!(peer.ip(), IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
    {
        return None;
    }
    pid_of_socket(proc_root, socket_inode(proc_root, peer, ours)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_addresses() {
        assert_eq!(
            parse_proc_addr("0100007F:1F90"),
            Some("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(
            parse_proc_addr("00000000000000000000000001000000:10E1"),
            Some("[::1]:4321".parse().unwrap())
        );
        assert_eq!(
            parse_proc_addr("0000000000000000FFFF00000100007F:0050"),
            Some("[::ffff:127.0.0.1]:80".parse().unwrap())
        );
        assert_eq!(parse_proc_addr("zz:1"), None);
    }

    #[test]
    fn finds_this_process_from_its_own_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(server).unwrap();
        let (_accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let pid = pid_of_peer(Path::new("/proc"), peer, server);
        assert_eq!(pid, Some(std::process::id()));
    }

    #[test]
    fn remote_peers_are_not_resolved() {
        let peer: SocketAddr = "192.0.2.7:5555".parse().unwrap();
        assert_eq!(
            pid_of_peer(Path::new("/proc"), peer, "127.0.0.1:4317".parse().unwrap()),
            None
        );
    }
}
