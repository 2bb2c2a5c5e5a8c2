//! Process identity against the real kernel, on the path where no exit record says a
//! process ended (kernels without `group_dead` in `sched_process_exit`, a full exiting
//! map; forced here with `ProbeConfig::without_group_dead`): a reused pid — made on
//! purpose with `clone3(set_tid)`, so the test does not cycle the host's pid space —
//! never inherits the old process's name, executable, command line or cgroup, and the
//! identity cache does not grow with short-lived processes. The new process forks
//! without exec, as pre-fork workers do: an exec record would announce it, a fork alone
//! does not.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use energy_agent::{
    identity::{Identity, ProcessInfo, cgroup::cgroup2_mount},
    probe::{Lifecycle, Probe, ProbeConfig},
};
use energy_tests::{require_root, test_bin};

/// The probe and identity stage, as the pipeline drives them each interval.
struct Stages {
    probe: Probe,
    identity: Identity,
}

impl Stages {
    fn load() -> Self {
        let config = ProbeConfig {
            without_group_dead: true,
            ..ProbeConfig::default()
        };
        let mut probe = Probe::load(&config).expect("loading the probe");
        probe.read_interval().expect("first read");
        Self {
            probe,
            identity: Identity::for_host(),
        }
    }

    /// One interval 200 ms long: the identities of the processes that ran in it, and
    /// its lifecycle records.
    fn step(&mut self) -> (HashMap<u32, ProcessInfo>, Vec<Lifecycle>) {
        std::thread::sleep(Duration::from_millis(200));
        let interval = self.probe.read_interval().expect("read_interval");
        self.identity.observe(&interval.lifecycle, interval.end_ns);
        let mut seen = HashMap::new();
        for s in &interval.slices {
            seen.entry(s.tgid).or_insert_with(|| {
                self.identity
                    .process(s.tgid, s.cgroup_id, interval.end_ns)
                    .clone()
            });
        }
        self.identity.forget_exited();
        (seen, interval.lifecycle)
    }

    /// Steps until `pid` runs; its identity then.
    fn until_seen(&mut self, pid: u32) -> ProcessInfo {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(info) = self.step().0.remove(&pid) {
                return info;
            }
        }
        panic!("pid {pid} never ran in the probe's data");
    }
}

/// A copy of `sleep` named `name` in `dir`, so its name, executable and command line
/// are its own.
fn sleeper(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::copy("/bin/sleep", &path).expect("copying /bin/sleep");
    path
}

/// A cgroup v2 group of its own for this test, removed on drop.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn create() -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let root = cgroup2_mount(&mountinfo).expect("a cgroup2 mount");
        let dir = root.join(format!("energy-test-identity-{}", std::process::id()));
        std::fs::create_dir(&dir).expect("creating a cgroup");
        Self(dir)
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).expect("moving into it");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A fork of `pidreuse` under `pid` that sleeps (no exec); None when the pid was taken
/// meanwhile.
fn fork_with_pid(pid: u32) -> Option<Child> {
    let mut helper = Command::new(test_bin("pidreuse"))
        .args([&pid.to_string(), "--sleep", "60"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawning pidreuse");
    let mut line = String::new();
    BufReader::new(helper.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("reading pidreuse");
    if line.trim().is_empty() {
        let status = helper.wait().expect("pidreuse");
        assert_eq!(status.code(), Some(17), "pidreuse failed: {status}");
        return None;
    }
    assert_eq!(line.trim(), pid.to_string(), "pidreuse gave another pid");
    Some(helper)
}

#[test]
fn a_reused_pid_never_inherits_the_identity_of_the_process_before() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let alpha = sleeper(dir.path(), "reuse-alpha");
    let cgroup = TestCgroup::create();
    let mut stages = Stages::load();

    for _attempt in 0..3 {
        let mut a = Command::new(&alpha)
            .arg("60")
            .spawn()
            .expect("spawning alpha");
        let pid = a.id();
        let before = stages.until_seen(pid);
        assert_eq!(before.comm, "reuse-alpha", "{before:?}");
        kill(&mut a);
        // Its exit records, with no word that the process ended; and a few more
        // intervals, so the probe has forgotten the thread before its id comes back.
        let mut exits = Vec::new();
        for _ in 0..5 {
            exits.extend(
                stages
                    .step()
                    .1
                    .into_iter()
                    .filter(|l| matches!(l, Lifecycle::Exit { tgid, .. } if *tgid == pid)),
            );
        }
        assert!(
            !exits.is_empty()
                && exits.iter().all(|l| matches!(
                    l,
                    Lifecycle::Exit {
                        group_dead: false,
                        ..
                    }
                )),
            "the exit of {pid} without group_dead: {exits:?}"
        );

        let Some(mut helper) = fork_with_pid(pid) else {
            continue;
        };
        cgroup.add(pid);
        let after = stages.until_seen(pid);
        // SAFETY: signalling the helper's child, which the test made.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let _ = helper.wait();
        assert_eq!(
            (after.comm.as_str(), after.exe_name.as_str()),
            ("pidreuse", "pidreuse"),
            "pid {pid} is another process now: {after:?} (before: {before:?})"
        );
        assert_eq!(
            after.cmdline,
            vec![
                test_bin("pidreuse").display().to_string(),
                pid.to_string(),
                "--sleep".into(),
                "60".into()
            ]
        );
        assert!(!after.exited, "{after:?}");
        assert!(
            after.start_time > before.start_time,
            "{after:?} vs {before:?}"
        );
        let name = cgroup.0.file_name().expect("a name").to_string_lossy();
        assert!(
            after
                .cgroup
                .as_deref()
                .is_some_and(|c| c.ends_with(name.as_ref())),
            "its own cgroup, not the old one: {after:?} (before: {before:?})"
        );
        assert_ne!(after.cgroup, before.cgroup);
        return;
    }
    panic!("the pid was taken by another process three times in a row");
}

#[test]
fn without_exit_records_that_say_so_short_processes_are_still_forgotten() {
    require_root();
    let mut stages = Stages::load();
    let mut forker = Command::new(test_bin("forker"))
        .args(["400", "4", "2"])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawning forker");
    let mut peak = 0;
    while forker.try_wait().expect("try_wait").is_none() {
        stages.step();
        peak = peak.max(stages.identity.len());
    }
    for _ in 0..3 {
        stages.step();
    }
    let live = std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .count();
    let cached = stages.identity.len();
    assert!(
        cached <= live + 50,
        "{cached} identities cached with {live} processes alive (peak {peak}): the 400 ended children must go"
    );
}
