//! Which process is on the other end of a local TCP connection: its socket in
//! `/proc/net/tcp{,6}` (by the peer's address and ours), then the process holding that
//! socket inode among `/proc/<pid>/fd`, and that process's pid namespace. Only loopback
//! peers can be resolved.
//!
//! The walks through procfs block and grow with the host's processes, so they run on a
//! thread of their own, never on the async workers that serve OTLP; each connection is
//! resolved once and cached by its addresses and socket inode.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};

mod diag;
mod namespace;

pub use namespace::PidNamespace;

/// Where a batch came from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The sending process, when the connection was local and resolvable.
    pub pid: Option<u32>,
    /// The sending process's pid namespace, when it could be read: which `process.pid`
    /// values it may claim, and what they mean.
    pub namespace: Option<Arc<PidNamespace>>,
}

/// The entries of `dir` named by a number (the processes under `/proc`, the threads
/// under `/proc/<pid>/task`), with their paths.
pub(crate) fn numbered(dir: &Path) -> impl Iterator<Item = (u32, PathBuf)> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path())))
}

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
                let word = u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The address, IPv4-mapped IPv6 addresses seen as IPv4.
fn canonical(s: SocketAddr) -> SocketAddr {
    match s.ip() {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(s, |v4| SocketAddr::new(IpAddr::V4(v4), s.port())),
        IpAddr::V4(_) => s,
    }
}

/// Whether `peer` can be a process of this host's network namespace.
fn is_loopback(peer: SocketAddr) -> bool {
    canonical(peer).ip().is_loopback()
}

/// Every TCP socket's inode, by (local, remote) address (canonical).
pub fn socket_table(proc_root: &Path) -> HashMap<(SocketAddr, SocketAddr), u64> {
    let mut table = HashMap::new();
    for name in ["net/tcp", "net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(proc_root.join(name)) else {
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
            if let Some(inode) = f[9].parse().ok().filter(|&i: &u64| i != 0) {
                table.insert((canonical(local), canonical(remote)), inode);
            }
        }
    }
    table
}

/// The process (tgid) holding each of `inodes`, where found: one walk over every
/// `/proc/<pid>/fd`, ending once all are found.
fn pids_of_sockets(proc_root: &Path, inodes: &HashSet<u64>) -> HashMap<u64, u32> {
    let mut found = HashMap::new();
    for (pid, dir) in numbered(proc_root) {
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(link) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let inode = link
                .to_str()
                .and_then(|l| l.strip_prefix("socket:["))
                .and_then(|l| l.strip_suffix(']'))
                .and_then(|l| l.parse::<u64>().ok());
            if let Some(inode) = inode.filter(|i| inodes.contains(i)) {
                found.entry(inode).or_insert(pid);
                if found.len() == inodes.len() {
                    return found;
                }
            }
        }
    }
    found
}

/// How long a connection's entry is used without looking at the socket table; after
/// that its socket inode is checked (the same addresses may be a new connection).
const RECHECK: Duration = Duration::from_secs(1);
/// How long a socket's process is trusted before the fds are walked again (the socket
/// may have been handed to another process).
const REWALK: Duration = Duration::from_secs(60);
/// Most connections cached.
const MAX_CONNECTIONS: usize = 4096;
/// Most resolutions waiting for the resolver thread.
const MAX_WAITING: usize = 1024;

/// A cached connection.
#[derive(Clone)]
struct Entry {
    inode: u64,
    origin: Origin,
    checked: Instant,
    walked: Instant,
}

/// A connection (peer, ours) to resolve, and where the answer goes.
struct Job {
    peer: SocketAddr,
    ours: SocketAddr,
    reply: oneshot::Sender<Origin>,
}

/// What the resolver thread and the handlers share.
struct Shared {
    proc_root: PathBuf,
    cache: Mutex<HashMap<(SocketAddr, SocketAddr), Entry>>,
    /// Walks over every process's fds so far.
    walks: AtomicU64,
}

impl Shared {
    fn cached(&self, key: (SocketAddr, SocketAddr), fresh: Duration) -> Option<Entry> {
        let cache = self.cache.lock().ok()?;
        cache
            .get(&key)
            .filter(|e| e.checked.elapsed() < fresh)
            .cloned()
    }
}

/// Resolves and caches the process behind each connection; cheap to clone.
#[derive(Clone)]
pub struct Peers {
    shared: Arc<Shared>,
    jobs: mpsc::Sender<Job>,
}

impl Peers {
    /// Starts the resolver thread, reading `proc_root`; it ends with the last clone.
    pub fn new(proc_root: PathBuf) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            proc_root,
            cache: Mutex::default(),
            walks: AtomicU64::new(0),
        });
        let (jobs, rx) = mpsc::channel(MAX_WAITING);
        let resolver = shared.clone();
        std::thread::Builder::new()
            .name("energy-peers".into())
            .spawn(move || resolve_jobs(&resolver, rx))?;
        Ok(Self { shared, jobs })
    }

    /// Where a request on the connection from `peer` to `ours` came from. Answers from
    /// the cache when it can, else waits for the resolver thread (without blocking the
    /// async worker).
    pub async fn origin(&self, peer: Option<SocketAddr>, ours: SocketAddr) -> Origin {
        let Some(peer) = peer.filter(|p| is_loopback(*p)) else {
            return Origin::default();
        };
        let key = (canonical(peer), canonical(ours));
        if let Some(entry) = self.shared.cached(key, RECHECK) {
            return entry.origin;
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            peer: key.0,
            ours: key.1,
            reply,
        };
        if self.jobs.send(job).await.is_err() {
            return Origin::default();
        }
        answer.await.unwrap_or_default()
    }

    /// Walks over every process's fds so far (for tests of the cache).
    #[cfg(test)]
    fn walks(&self) -> u64 {
        self.shared.walks.load(Ordering::Relaxed)
    }
}

/// The resolver thread: takes every waiting job, reads the socket table once for them,
/// walks the fds once for the sockets not cached, and answers.
fn resolve_jobs(shared: &Shared, mut jobs: mpsc::Receiver<Job>) {
    let mut namespaces = namespace::Namespaces::default();
    let mut sockets = Sockets::new(&shared.proc_root);
    while let Some(first) = jobs.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_WAITING
            && let Ok(job) = jobs.try_recv()
        {
            batch.push(job);
        }
        let inodes = sockets.inodes(&shared.proc_root, &batch);
        let inode_of = |i: usize| inodes[i];
        let mut unknown = HashSet::new();
        for (i, job) in batch.iter().enumerate() {
            let cached = shared.cached((job.peer, job.ours), REWALK);
            if let Some(inode) = inode_of(i)
                && !cached.is_some_and(|e| e.inode == inode && e.walked.elapsed() < REWALK)
            {
                unknown.insert(inode);
            }
        }
        let owners = if unknown.is_empty() {
            HashMap::new()
        } else {
            shared.walks.fetch_add(1, Ordering::Relaxed);
            pids_of_sockets(&shared.proc_root, &unknown)
        };
        let now = Instant::now();
        for (i, job) in batch.into_iter().enumerate() {
            let key = (job.peer, job.ours);
            let entry = match inode_of(i) {
                None => None,
                Some(inode) => match owners.get(&inode) {
                    Some(&pid) => Some(Entry {
                        inode,
                        origin: Origin {
                            pid: Some(pid),
                            namespace: namespaces.of(&shared.proc_root, pid),
                        },
                        checked: now,
                        walked: now,
                    }),
                    // Known socket: its process again, its namespace as it is now.
                    None => shared
                        .cached(key, REWALK)
                        .filter(|e| e.inode == inode)
                        .map(|mut e| {
                            e.origin.namespace = e
                                .origin
                                .pid
                                .and_then(|pid| namespaces.of(&shared.proc_root, pid));
                            Entry { checked: now, ..e }
                        }),
                },
            };
            let origin = entry.as_ref().map(|e| e.origin.clone()).unwrap_or_default();
            if let (Some(entry), Ok(mut cache)) = (entry, shared.cache.lock()) {
                if cache.len() >= MAX_CONNECTIONS {
                    cache.retain(|_, e| e.checked.elapsed() < REWALK);
                    if cache.len() >= MAX_CONNECTIONS {
                        cache.clear();
                    }
                }
                cache.insert(key, entry);
            }
            let _ = job.reply.send(origin);
        }
    }
}

/// Finds the sockets of connections: by a `sock_diag` lookup each where the kernel has
/// it (the host's own procfs only), else, and for what it does not find, in the socket
/// table, read once per batch.
struct Sockets {
    diag: Option<diag::Diag>,
}

impl Sockets {
    fn new(proc_root: &Path) -> Self {
        let diag = (proc_root == Path::new("/proc"))
            .then(diag::Diag::open)
            .and_then(|d| {
                d.inspect_err(|e| log::debug!("sock_diag unavailable ({e}): reading /proc/net/tcp"))
                    .ok()
            });
        Self { diag }
    }

    /// Each job's socket inode, where found.
    fn inodes(&mut self, proc_root: &Path, batch: &[Job]) -> Vec<Option<u64>> {
        let mut table = None;
        batch
            .iter()
            .map(|job| {
                let found = self
                    .diag
                    .as_mut()
                    .and_then(|d| d.inode(job.peer, job.ours).ok().flatten());
                found.or_else(|| {
                    table
                        .get_or_insert_with(|| socket_table(proc_root))
                        .get(&(job.peer, job.ours))
                        .copied()
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
