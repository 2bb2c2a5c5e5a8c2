use super::*;

/// A `/proc/<pid>/stat` line of a process named `comm` started at `start` ticks.
fn stat_line(pid: u32, comm: &str, start: u64) -> String {
    // Fields 3 to 21, then starttime (22) and a few more.
    let middle = "S 1 1 1 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0";
    format!("{pid} ({comm}) {middle} {start} 1000000 200 18446744073709551615\n")
}

/// Writes process `pid` into the fake procfs at `root`.
fn write_process(root: &std::path::Path, pid: u32, comm: &str, start: u64, cgroup: &str) {
    let p = root.join(pid.to_string());
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("stat"), stat_line(pid, comm, start)).unwrap();
    std::fs::write(p.join("comm"), format!("{comm}\n")).unwrap();
    std::fs::write(p.join("cmdline"), format!("/usr/bin/{comm}\0serve.py\0")).unwrap();
    std::fs::write(p.join("cgroup"), format!("0::{cgroup}\n")).unwrap();
}

fn fake_proc() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("42");
    std::fs::create_dir_all(&p).unwrap();
    std::fs::write(p.join("stat"), stat_line(42, "python3", 1_000)).unwrap();
    std::fs::write(p.join("comm"), "python3\n").unwrap();
    std::fs::write(
        p.join("cmdline"),
        b"/usr/bin/python3\0serve.py\0--model\0llama\0",
    )
    .unwrap();
    std::fs::write(p.join("cgroup"), "0::/system.slice/vllm.service\n").unwrap();
    dir
}

fn exit(tgid: u32, tid: u32, comm: &str, group_dead: bool) -> Lifecycle {
    Lifecycle::Exit {
        tgid,
        tid,
        comm: comm.into(),
        group_dead,
        cgroup_id: 0,
        ts_ns: 0,
    }
}

const S: u64 = 1_000_000_000;

#[test]
fn reads_a_live_process() {
    let dir = fake_proc();
    let mut id = Identity::new(dir.path(), CgroupResolver::new(None));
    let info = id.process(42, 0, 0).clone();
    assert_eq!(info.comm, "python3");
    assert_eq!(
        info.cmdline,
        vec!["/usr/bin/python3", "serve.py", "--model", "llama"]
    );
    assert_eq!(info.exe_name, "python3");
    assert_eq!(info.cgroup.as_deref(), Some("/system.slice/vllm.service"));
    assert_eq!(info.start_time, Some(1_000));
    assert!(!info.exited);
}

#[test]
fn command_lines_skip_empty_arguments_and_unreadable_ones_are_empty() {
    let dir = fake_proc();
    let p = dir.path().join("42");
    std::fs::write(p.join("cmdline"), b"a\0\0b c\0").unwrap();
    assert_eq!(read_cmdline(&p), vec!["a", "b c"]);
    assert!(
        read_cmdline(&dir.path().join("43")).is_empty(),
        "no such process"
    );
}

#[test]
fn start_times_are_read_past_names_with_spaces_and_parentheses() {
    assert_eq!(
        parse_start_time(&stat_line(7, "a) (b c", 123_456)),
        Some(123_456)
    );
    assert_eq!(parse_start_time("7 (short) S 1 2"), None, "truncated");
    assert_eq!(parse_start_time("no name"), None);
    // This process, as the kernel writes it.
    let own = procfs::start_time(std::path::Path::new("/proc/self"));
    assert!(own.is_some_and(|t| t > 0), "{own:?}");
}

#[test]
fn exited_process_keeps_its_exit_name_until_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let mut id = Identity::new(dir.path(), CgroupResolver::new(None));
    id.observe(&[exit(7, 7, "short", true)], 0);
    let info = id.process(7, 0, 0);
    assert_eq!(info.comm, "short");
    assert!(info.exited);
    id.forget_exited();
    assert!(id.is_empty());
}

#[test]
fn exec_refreshes_the_name() {
    let dir = fake_proc();
    let mut id = Identity::new(dir.path(), CgroupResolver::new(None));
    std::fs::write(dir.path().join("42/comm"), "bash\n").unwrap();
    assert_eq!(id.process(42, 0, 0).comm, "bash");
    std::fs::write(dir.path().join("42/comm"), "python3\n").unwrap();
    id.observe(
        &[Lifecycle::Exec {
            tgid: 42,
            comm: "python3".into(),
            ts_ns: 0,
        }],
        0,
    );
    assert_eq!(id.process(42, 0, 0).comm, "python3");
}

#[test]
fn a_reused_pid_never_inherits_the_old_identity() {
    // No record at all tells of the change (exit and fork records lost): only the
    // start time does.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut id = Identity::new(root, CgroupResolver::new(None));
    write_process(root, 42, "alpha", 1_000, "/docker/aaaa");
    id.observe(&[], S);
    assert_eq!(id.process(42, 0, S).comm, "alpha");
    id.forget_exited();
    write_process(root, 42, "beta", 2_000, "/system.slice/beta.service");
    id.observe(&[], 2 * S);
    let info = id.process(42, 0, 2 * S).clone();
    assert_eq!(
        (info.comm.as_str(), info.start_time, info.exited),
        ("beta", Some(2_000), false)
    );
    assert_eq!(info.cmdline, vec!["/usr/bin/beta", "serve.py"]);
    assert_eq!(info.cgroup.as_deref(), Some("/system.slice/beta.service"));
    assert_eq!(id.len(), 1);
}

#[test]
fn without_group_dead_an_ended_process_is_forgotten_after_its_last_interval() {
    // Kernels without group_dead (or a full exiting map): every exit record says
    // "not the last thread".
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut id = Identity::new(root, CgroupResolver::new(None));
    write_process(root, 42, "worker", 1_000, "/");
    write_process(root, 43, "server", 1_010, "/");
    id.observe(&[], S);
    id.process(42, 0, S);
    id.process(43, 0, S);
    id.forget_exited();
    // 42 ends and is reaped; 43's leader ends while its other threads go on.
    std::fs::remove_dir_all(root.join("42")).unwrap();
    id.observe(
        &[exit(42, 42, "worker", false), exit(43, 43, "server", false)],
        2 * S,
    );
    let info = id.process(42, 0, 2 * S).clone();
    assert_eq!((info.comm.as_str(), info.exited), ("worker", true));
    id.forget_exited();
    assert_eq!(id.len(), 1, "42 forgotten, 43 alive");
    assert_eq!(id.process(43, 0, 3 * S).comm, "server");
}

#[test]
fn a_process_gone_before_first_sight_takes_its_exit_record_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut id = Identity::new(dir.path(), CgroupResolver::new(None));
    id.observe(&[exit(9, 9, "short", false)], S);
    let info = id.process(9, 0, S).clone();
    assert_eq!((info.comm.as_str(), info.exited), ("short", true));
    id.forget_exited();
    assert!(id.is_empty());
    // Gone and never named: still forgotten.
    id.observe(&[], 2 * S);
    assert!(id.process(10, 0, 2 * S).exited);
    id.forget_exited();
    assert!(id.is_empty());
}

#[test]
fn the_cache_stays_bounded_without_any_exit_record() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut id = Identity::new(root, CgroupResolver::new(None));
    write_process(root, 1, "init", 1, "/");
    let mut now = S;
    // 2,000 processes run once each and end; not one exit record arrives.
    for batch in 0..20u32 {
        id.observe(&[], now);
        for pid in 100 + batch * 100..200 + batch * 100 {
            write_process(root, pid, "job", u64::from(pid), "/");
            id.process(pid, 0, now);
        }
        id.process(1, 0, now);
        id.forget_exited();
        for pid in 100 + batch * 100..200 + batch * 100 {
            std::fs::remove_dir_all(root.join(pid.to_string())).unwrap();
        }
        now += S;
    }
    assert!(id.len() <= 1 + 100 * 11, "{} cached", id.len());
    // One sweep period later, only the live one is left.
    now += SWEEP_NS;
    id.observe(&[], now);
    id.process(1, 0, now);
    id.forget_exited();
    assert_eq!(id.len(), 1, "only init is alive");
    // A process no lookup asks for again is checked by the sweep too.
    now += SWEEP_NS;
    id.observe(&[], now);
    id.forget_exited();
    assert_eq!(id.len(), 1, "init, idle but alive, stays");
    std::fs::remove_dir_all(root.join("1")).unwrap();
    now += SWEEP_NS;
    id.observe(&[], now);
    id.forget_exited();
    assert!(id.is_empty());
}

#[test]
fn a_v1_pod_container_gets_its_pod_metadata_once_the_list_names_it() {
    use k8s::tests::{FIXTURE, config, serve, wait_for};
    let server = serve(|_| (200, FIXTURE.to_vec()));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("proc");
    let id_hex = "4f1b2c3d4e5f60718293a4b5c6d7e8f90112233445566778899aabbccddeeff0";
    let uid = "0b4d7b3e-6a8c-4c39-9a55-2f1e8d6c7a10";
    write_process(&root, 42, "vllm", 1_000, "/");
    // A v1 node with the cgroupfs driver: only the controllers' lines place it.
    std::fs::write(
        root.join("42/cgroup"),
        format!("4:cpu,cpuacct:/kubepods/burstable/pod{uid}/{id_hex}\n0::/\n"),
    )
    .unwrap();
    let pods = k8s::Pods::start(config(&server.url, dir.path())).unwrap();
    let mut id = Identity::new(&root, CgroupResolver::new(None)).with_pods(pods);
    let info = id.process(42, 0, S).clone();
    let c = info.container.clone().unwrap();
    assert_eq!(info.container_id.as_deref(), Some(id_hex));
    assert_eq!(c.pod_uid.as_deref(), Some(uid));
    assert_eq!(c.qos, Some(container::QosClass::Burstable));
    wait_for("the pod list", || id.pods().unwrap().index().0 == 1);
    let info = id.process(42, 0, 2 * S).clone();
    let c = info.container.unwrap();
    let pod = c.pod.expect("named by the list");
    assert_eq!(
        (pod.name.as_str(), pod.namespace.as_str()),
        ("vllm-llama-7d9c8b5f4-x2kqp", "inference")
    );
    assert_eq!(c.container_name.as_deref(), Some("server"));
    assert_eq!(
        pod.labels.get("app.kubernetes.io/name").map(String::as_str),
        Some("vllm")
    );
}
