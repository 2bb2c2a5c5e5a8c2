//! One TCP socket's inode by its addresses, asked of the kernel through netlink's
//! `sock_diag` (`inet_diag`, as `ss` does): a hash lookup in the kernel, where reading
//! `/proc/net/tcp{,6}` walks every bucket of the connection table, for each read chunk
//! (it was an eighth of the agent's CPU at 1,000 spans/s on one connection, which is
//! re-checked every second).
//!
//! Where the kernel has no `inet_diag` (a module, `tcp_diag`, that may be absent) or the
//! lookup fails, the caller reads the table instead.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// `NETLINK_SOCK_DIAG` (include/uapi/linux/netlink.h).
const NETLINK_SOCK_DIAG: libc::c_int = 4;
/// `SOCK_DIAG_BY_FAMILY` (include/uapi/linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLMSG_ERROR`.
const NLMSG_ERROR: u16 = 2;
/// `NLM_F_REQUEST`.
const NLM_F_REQUEST: u16 = 1;
/// `INET_DIAG_NOCOOKIE`: match the socket by its addresses alone.
const NO_COOKIE: u32 = !0;

/// `struct nlmsghdr`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlMsgHdr {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

/// `struct inet_diag_sockid`: ports and addresses in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [u8; 16],
    dst: [u8; 16],
    interface: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// Byte offset of `idiag_inode` in `struct inet_diag_msg` (family, state, timer,
/// retrans; the 48-byte id; expires, rqueue, wqueue, uid).
const INODE_OFFSET: usize = 4 + 48 + 16;

/// A netlink socket for `sock_diag` lookups.
pub struct Diag {
    fd: OwnedFd,
    seq: u32,
}

impl Diag {
    /// Opens the netlink socket.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just opened and own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: a valid option value of the size passed; a failure only leaves the
        // socket blocking, which the kernel answers at once anyway.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const timeout).cast(),
                size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        Ok(Self { fd, seq: 0 })
    }

    /// The inode of the TCP socket whose own address is `local` and whose peer is
    /// `remote`; `Ok(None)` when the kernel has no such socket (or cannot tell).
    pub fn inode(&mut self, local: SocketAddr, remote: SocketAddr) -> io::Result<Option<u64>> {
        let family = match (local.ip(), remote.ip()) {
            (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET,
            (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6,
            _ => return Ok(None),
        };
        self.seq = self.seq.wrapping_add(1);
        let message = Message {
            header: NlMsgHdr {
                len: size_of::<Message>() as u32,
                kind: SOCK_DIAG_BY_FAMILY,
                flags: NLM_F_REQUEST,
                seq: self.seq,
                pid: 0,
            },
            request: Request {
                family: family as u8,
                protocol: libc::IPPROTO_TCP as u8,
                states: !0,
                id: SockId {
                    sport: local.port().to_be_bytes(),
                    dport: remote.port().to_be_bytes(),
                    src: address_bytes(local.ip()),
                    dst: address_bytes(remote.ip()),
                    interface: 0,
                    cookie: [NO_COOKIE; 2],
                },
                ..Request::default()
            },
        };
        // SAFETY: an all-zero sockaddr_nl is valid; the kernel is nl_pid 0.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: sending a plain-data message of its own size to a valid address.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                (&raw const message).cast(),
                size_of::<Message>(),
                0,
                (&raw const kernel).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut reply = [0u8; 512];
        loop {
            // SAFETY: receiving into a buffer of the length passed.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    reply.as_mut_ptr().cast(),
                    reply.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            match parse_reply(&reply[..n as usize], self.seq)? {
                Reply::Stale => continue,
                Reply::Inode(inode) => return Ok(inode),
            }
        }
    }
}

/// The request as sent.
#[repr(C)]
struct Message {
    header: NlMsgHdr,
    request: Request,
}

/// What one netlink reply says.
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    /// The answer to an earlier request (one that timed out): read on.
    Stale,
    /// The socket's inode, or `None` when there is no such socket.
    Inode(Option<u64>),
}

/// Reads one reply to request `seq`.
fn parse_reply(bytes: &[u8], seq: u32) -> io::Result<Reply> {
    let field = |at: usize| -> io::Result<u32> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_ne_bytes(b.try_into().unwrap_or_default()))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short sock_diag reply"))
    };
    let header = size_of::<NlMsgHdr>();
    let kind = bytes
        .get(4..6)
        .map(|b| u16::from_ne_bytes([b[0], b[1]]))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short sock_diag reply"))?;
    if field(8)? != seq {
        return Ok(Reply::Stale);
    }
    if kind == NLMSG_ERROR {
        // The error is the negated errno; ENOENT: no such socket.
        let errno = -(field(header)? as i32);
        return match errno {
            0 | libc::ENOENT => Ok(Reply::Inode(None)),
            e => Err(io::Error::from_raw_os_error(e)),
        };
    }
    if kind != SOCK_DIAG_BY_FAMILY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected sock_diag reply type {kind}"),
        ));
    }
    let inode = field(header + INODE_OFFSET)?;
    Ok(Reply::Inode((inode != 0).then_some(u64::from(inode))))
}

/// An address as `inet_diag_sockid` holds it: network byte order, IPv4 in the first four
/// bytes.
fn address_bytes(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(v4) => out[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => out = v6.octets(),
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{
        net::{TcpListener, TcpStream},
        os::unix::fs::MetadataExt,
    };

    use super::*;

    /// The inode of a socket this process holds, from its descriptor.
    fn inode_of(stream: &TcpStream) -> u64 {
        std::fs::metadata(format!("/proc/self/fd/{}", stream.as_raw_fd()))
            .expect("fd")
            .ino()
    }

    #[test]
    fn finds_both_ends_of_a_loopback_connection_by_their_addresses() {
        let mut diag = match Diag::open() {
            Ok(diag) => diag,
            Err(e) => return eprintln!("no netlink sock_diag here ({e}): nothing to check"),
        };
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(listener) = TcpListener::bind(bind) else {
                continue;
            };
            let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (server, _) = listener.accept().unwrap();
            let (a, b) = (client.local_addr().unwrap(), client.peer_addr().unwrap());
            match diag.inode(a, b) {
                Ok(Some(inode)) => assert_eq!(inode, inode_of(&client), "{bind}"),
                // A kernel without tcp_diag: the caller reads the table instead.
                Ok(None) => return eprintln!("no inet_diag for TCP here: nothing to check"),
                Err(e) => panic!("{bind}: {e}"),
            }
            assert_eq!(diag.inode(b, a).unwrap(), Some(inode_of(&server)));
            // Swapped ports: no such socket.
            let none = SocketAddr::new(a.ip(), 1);
            assert_eq!(diag.inode(none, b).unwrap(), None);
        }
    }

    #[test]
    fn replies_are_read_by_their_sequence_number() {
        let mut error = vec![0u8; 36];
        error[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        error[8..12].copy_from_slice(&7u32.to_ne_bytes());
        error[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert_eq!(parse_reply(&error, 7).unwrap(), Reply::Inode(None));
        assert_eq!(parse_reply(&error, 8).unwrap(), Reply::Stale);
        error[16..20].copy_from_slice(&(-libc::EPERM).to_ne_bytes());
        assert!(parse_reply(&error, 7).is_err());
        let mut found = vec![0u8; 16 + 72];
        found[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        found[8..12].copy_from_slice(&7u32.to_ne_bytes());
        found[16 + INODE_OFFSET..16 + INODE_OFFSET + 4].copy_from_slice(&4242u32.to_ne_bytes());
        assert_eq!(parse_reply(&found, 7).unwrap(), Reply::Inode(Some(4242)));
        assert!(parse_reply(&found[..20], 7).is_err());
    }
}
