//! Which process produced a resource's spans. The kernel's word comes first: a local
//! connection's sender (its socket traced to its process). The sender's own
//! `process.pid` is believed only when it names a process the sender can see — itself,
//! or, translated through the sender's pid namespace, one of that namespace's
//! processes — so a server in a container, which numbers processes in its own
//! namespace, is still found, and a sender cannot take another container's or the
//! host's processes' energy. For senders that are not local (another host, another
//! network namespace), the resource's `process.pid`, else a `--service` rule.
//!
//! `--service` rules match command lines, which are read on a thread of their own (every
//! 10 s, and soon after a miss), never on the enrichment task.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel},
    },
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::common::v1::KeyValue;
use regex::Regex;

use super::{Origin, PidNamespace};
use crate::receive::spans::{attr_int, attr_str, names};

/// `--service NAME=REGEX`: spans of service NAME come from the process whose command
/// line matches REGEX.
#[derive(Clone, Debug)]
pub struct ServiceRule {
    /// `service.name` (or `service.instance.id`).
    pub service: String,
    /// Matched against `/proc/<pid>/cmdline`.
    pub regex: Regex,
}

impl std::str::FromStr for ServiceRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (service, re) = s
            .split_once('=')
            .ok_or_else(|| format!("--service {s:?} is not NAME=REGEX"))?;
        Ok(Self {
            service: service.to_string(),
            regex: Regex::new(re).map_err(|e| format!("--service {service}: {e}"))?,
        })
    }
}

/// The process a resource's spans belong to, from the pid its resource claims and where
/// its connection came from; None when neither names one.
pub(super) fn trusted_pid(claimed: Option<u32>, origin: &Origin) -> Option<u32> {
    let Some(peer) = origin.pid else {
        // Not a local sender: its word is all there is.
        return claimed;
    };
    let Some(claimed) = claimed else {
        return Some(peer);
    };
    let named = origin
        .namespace
        .as_deref()
        .and_then(|ns| ns.to_agents(claimed));
    if named.is_none() {
        log::debug!(
            "a sender (pid {peer}) claimed process.pid {claimed}, which is no process it can see; its spans go to the sender"
        );
    }
    Some(named.unwrap_or(peer))
}

/// The namespace a local sender's thread ids are to be read through, when it is not the
/// agent's (spans from elsewhere keep their ids as they are).
pub(super) fn threads_namespace(origin: &Origin) -> Option<&PidNamespace> {
    origin.pid?;
    origin.namespace.as_deref().filter(|ns| !ns.is_agents)
}

/// The resource's `process.pid`, when it is a plausible pid.
pub(super) fn claimed_pid(attrs: &[KeyValue]) -> Option<u32> {
    attr_int(attrs, names::PROCESS_PID)
        .and_then(|p| u32::try_from(p).ok())
        .filter(|&p| p > 0)
}

/// Why a resource's spans have no process.
pub(super) fn unresolved(attrs: &[KeyValue]) -> String {
    format!(
        "no process.pid in the resource, the sender's connection is not local, and no --service rule found a process for service.name={}",
        attr_str(attrs, names::SERVICE_NAME).unwrap_or("(none)")
    )
}

/// How often the command lines are read while rules are in use.
const REFRESH: Duration = Duration::from_secs(10);
/// The least time between two reads (misses ask for one).
const MIN_GAP: Duration = Duration::from_secs(1);

/// What the last read of the command lines found.
#[derive(Default)]
struct Found {
    /// Per rule, the first process (by pid) whose command line matched.
    pids: Vec<Option<u32>>,
    /// Reads so far.
    reads: u64,
}

/// `--service` rules and the processes they found.
pub(super) struct Services {
    rules: Arc<[ServiceRule]>,
    proc_root: PathBuf,
    found: Arc<Mutex<Found>>,
    /// Wakes the reader thread (started at the first lookup).
    wake: Option<SyncSender<()>>,
    failed: bool,
}

impl Services {
    /// Rules matched against the command lines under `proc_root`.
    pub fn new(rules: Vec<ServiceRule>, proc_root: PathBuf) -> Self {
        Self {
            rules: rules.into(),
            proc_root,
            found: Arc::default(),
            wake: None,
            failed: false,
        }
    }

    /// The process the resource's `service.name` (else `service.instance.id`) rules
    /// found at the last read; a miss asks for a new read.
    pub fn pid_of(&mut self, attrs: &[KeyValue]) -> Option<u32> {
        let names = [names::SERVICE_NAME, names::SERVICE_INSTANCE_ID];
        let wanted: Vec<usize> = names
            .iter()
            .filter_map(|n| attr_str(attrs, n))
            .flat_map(|name| {
                self.rules
                    .iter()
                    .enumerate()
                    .filter(move |(_, r)| r.service == name)
                    .map(|(i, _)| i)
            })
            .collect();
        if wanted.is_empty() {
            return None;
        }
        self.start();
        let found = self.found.lock().ok().and_then(|f| {
            wanted
                .iter()
                .find_map(|&i| f.pids.get(i).copied().flatten())
        });
        if found.is_none()
            && let Some(wake) = &self.wake
        {
            let _ = wake.try_send(());
        }
        found
    }

    /// Starts the reader thread, once.
    fn start(&mut self) {
        if self.wake.is_some() || self.failed {
            return;
        }
        let (wake, woken) = sync_channel(1);
        let (rules, root, found) = (
            self.rules.clone(),
            self.proc_root.clone(),
            self.found.clone(),
        );
        match std::thread::Builder::new()
            .name("energy-services".into())
            .spawn(move || read_command_lines(&rules, &root, &found, &woken))
        {
            Ok(_) => self.wake = Some(wake),
            Err(e) => {
                log::warn!("--service rules are not applied: starting their thread failed: {e}");
                self.failed = true;
            }
        }
    }

    /// Reads of the command lines so far.
    #[cfg(test)]
    pub fn reads(&self) -> u64 {
        self.found.lock().map_or(0, |f| f.reads)
    }
}

/// The reader thread: reads every `REFRESH`, or on a wake (at most once per `MIN_GAP`),
/// until the `Services` is dropped.
fn read_command_lines(
    rules: &[ServiceRule],
    proc_root: &Path,
    found: &Mutex<Found>,
    woken: &Receiver<()>,
) {
    loop {
        let pids = match_rules(proc_root, rules);
        if let Ok(mut f) = found.lock() {
            f.pids = pids;
            f.reads += 1;
        }
        let read_at = Instant::now();
        match woken.recv_timeout(REFRESH) {
            Ok(()) => std::thread::sleep(MIN_GAP.saturating_sub(read_at.elapsed())),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        while woken.try_recv().is_ok() {}
    }
}

/// Per rule, the first process (in /proc order, the agent left out) whose command
/// line, arguments joined by spaces, matches it.
fn match_rules(proc_root: &Path, rules: &[ServiceRule]) -> Vec<Option<u32>> {
    let mut pids = vec![None; rules.len()];
    let me = std::process::id();
    for (pid, dir) in crate::receive::peer::numbered(proc_root) {
        if pid == me {
            continue;
        }
        let args = crate::identity::read_cmdline(&dir);
        if args.is_empty() {
            continue;
        }
        let line = args.join(" ");
        for (slot, rule) in pids.iter_mut().zip(rules) {
            if slot.is_none() && rule.regex.is_match(&line) {
                *slot = Some(pid);
            }
        }
        if pids.iter().all(Option::is_some) {
            break;
        }
    }
    pids
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{collections::HashMap, sync::Arc};

    fn origin(pid: Option<u32>, namespace: Option<PidNamespace>) -> Origin {
        Origin {
            pid,
            namespace: namespace.map(Arc::new),
        }
    }

    fn host() -> PidNamespace {
        PidNamespace {
            is_agents: true,
            pids: HashMap::new(),
        }
    }

    fn container() -> PidNamespace {
        // 1 and 2 there are 5000 and 5001 here.
        PidNamespace {
            is_agents: false,
            pids: [(1, 5000), (2, 5001)].into(),
        }
    }

    #[test]
    fn the_connection_wins_and_claims_count_only_within_the_senders_namespace() {
        // Not local: the claim is all there is.
        assert_eq!(trusted_pid(Some(77), &origin(None, None)), Some(77));
        assert_eq!(trusted_pid(None, &origin(None, None)), None);
        // Local, no claim: the sender.
        assert_eq!(
            trusted_pid(None, &origin(Some(5000), Some(container()))),
            Some(5000)
        );
        // A container's own numbering, translated.
        assert_eq!(
            trusted_pid(Some(1), &origin(Some(5000), Some(container()))),
            Some(5000)
        );
        assert_eq!(
            trusted_pid(Some(2), &origin(Some(5000), Some(container()))),
            Some(5001)
        );
        // A pid the container cannot see (a host process): the sender.
        assert_eq!(
            trusted_pid(Some(300), &origin(Some(5000), Some(container()))),
            Some(5000)
        );
        // In the agent's namespace, pids are the agent's.
        assert_eq!(
            trusted_pid(Some(300), &origin(Some(400), Some(host()))),
            Some(300)
        );
        // Namespace unknown: the sender.
        assert_eq!(trusted_pid(Some(300), &origin(Some(400), None)), Some(400));
        assert!(threads_namespace(&origin(Some(5000), Some(container()))).is_some());
        assert!(threads_namespace(&origin(Some(400), Some(host()))).is_none());
        assert!(threads_namespace(&origin(None, Some(container()))).is_none());
    }

    fn service(name: &str) -> Vec<KeyValue> {
        use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value::Value};
        vec![KeyValue {
            key: names::SERVICE_NAME.into(),
            value: Some(AnyValue {
                value: Some(Value::StringValue(name.into())),
            }),
            ..Default::default()
        }]
    }

    #[test]
    fn service_rules_find_processes_off_the_caller_and_catch_up_after_a_miss() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let process = |pid: u32, cmdline: &[u8]| {
            std::fs::create_dir_all(root.join(pid.to_string())).unwrap();
            std::fs::write(root.join(format!("{pid}/cmdline")), cmdline).unwrap();
        };
        process(120, b"bash\0");
        process(130, b"python\0my-llm-server\0--port\x008000\0");
        let rules = vec![
            "llm=my-llm-server --port".parse().unwrap(),
            "late=other-server".parse().unwrap(),
        ];
        let mut s = Services::new(rules, root.to_path_buf());
        assert_eq!(s.pid_of(&service("other")), None);
        assert_eq!(s.reads(), 0, "no rule for it: nothing read, no thread");
        let wait_reads = |s: &Services, n: u64| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while s.reads() < n {
                assert!(
                    Instant::now() < deadline,
                    "the reader thread read {} times",
                    s.reads()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        // The first lookup starts the reader and returns at once: a miss (which asks
        // for a second read, MIN_GAP later) unless the reader's first read beat it.
        // Either way a lookup after the first read finds the process; then, once the
        // second read a miss asked for has had its time, the reader is idle.
        let _ = s.pid_of(&service("llm"));
        wait_reads(&s, 1);
        assert_eq!(s.pid_of(&service("llm")), Some(130));
        std::thread::sleep(MIN_GAP + Duration::from_millis(500));
        let reads = s.reads();
        assert!((1..=2).contains(&reads), "{reads} reads");
        // A server started after the reads: the miss asks for a new one, which comes
        // within MIN_GAP rather than REFRESH.
        process(140, b"other-server\0");
        let missed = Instant::now();
        assert_eq!(s.pid_of(&service("late")), None, "not read yet");
        wait_reads(&s, reads + 1);
        assert!(missed.elapsed() < REFRESH / 2, "{:?}", missed.elapsed());
        assert_eq!(s.pid_of(&service("late")), Some(140));
        assert_eq!(s.pid_of(&service("llm")), Some(130));
    }
}
