//! Interval wall times follow CLOCK_REALTIME through a step. The agent runs under
//! libfaketime, which offsets the CLOCK_REALTIME it reads (its CLOCK_MONOTONIC and the
//! kernel's `bpf_ktime_get_ns` stay real) by what a file says; the test rewrites the
//! file while the agent runs, as an NTP step of the wall clock would move it.

use std::{
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use energy_tests::{AgentRun, require_root};

/// Where Debian-family systems put the thread-safe libfaketime (`libfaketime`).
fn libfaketime() -> PathBuf {
    let candidates = [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketimeMT.so.1",
        "/usr/lib/faketime/libfaketimeMT.so.1",
        "/usr/local/lib/faketime/libfaketimeMT.so.1",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!("libfaketime is missing (apt-get install libfaketime; cargo xtask setup installs it)")
        })
}

fn unix_ns(t: SystemTime) -> i128 {
    t.duration_since(UNIX_EPOCH).expect("after 1970").as_nanos() as i128
}

/// One interval and what the test's (real) clock read when it arrived.
struct Seen {
    end_unix_ns: i128,
    start_unix_ns: i128,
    duration_s: f64,
    received_ns: i128,
    /// The offset file's content in force at least 2.5 s before the interval arrived
    /// (libfaketime re-reads the file at most every second; the interval is 500 ms).
    settled_offset_s: Option<i64>,
}

/// Collects intervals for `for_s`, with the offset `offset_s` written at the start.
fn collect(
    agent: &mut AgentRun,
    rc: &std::path::Path,
    offset_s: i64,
    for_s: u64,
    out: &mut Vec<Seen>,
) {
    std::fs::write(rc, format!("{offset_s:+}\n")).expect("writing the faketime file");
    let written = Instant::now();
    while written.elapsed() < Duration::from_secs(for_s) {
        agent.wait_intervals(1, Duration::from_secs(10));
        let received_ns = unix_ns(SystemTime::now());
        let i = agent.intervals.last().expect("an interval");
        let ns = |k: &str| i[k].as_u64().unwrap_or_else(|| panic!("no {k}: {i}")) as i128;
        out.push(Seen {
            end_unix_ns: ns("end_unix_ns"),
            start_unix_ns: ns("start_unix_ns"),
            duration_s: i["duration_s"].as_f64().expect("duration_s"),
            received_ns,
            settled_offset_s: (written.elapsed() > Duration::from_millis(2_500))
                .then_some(offset_s),
        });
    }
}

#[test]
fn interval_wall_times_follow_a_step_of_the_wall_clock() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let rc = dir.path().join("faketime.rc");
    std::fs::write(&rc, "+0\n").expect("writing the faketime file");
    let preload = libfaketime();
    let rc_path = rc.to_str().expect("utf-8 path").to_string();
    let mut agent = AgentRun::start_with_env(
        &["--interval", "500ms", "--no-gpu"],
        &[
            ("LD_PRELOAD", preload.to_str().expect("utf-8 path")),
            ("FAKETIME_TIMESTAMP_FILE", &rc_path),
            ("FAKETIME_CACHE_DURATION", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    let mut seen = Vec::new();
    // Real time, then an hour forward (a step or a resume), then ten minutes back.
    for offset_s in [0, 3_600, -600] {
        collect(&mut agent, &rc, offset_s, 5, &mut seen);
    }
    let (status, _) = agent.stop();
    assert!(status.success(), "the agent failed: {status}");

    let mut checked = [0usize; 3];
    for (n, s) in seen.iter().enumerate() {
        // The interval's bounds are one conversion: its wall length is its length.
        let wall_s = (s.end_unix_ns - s.start_unix_ns) as f64 / 1e9;
        assert!(
            (wall_s - s.duration_s).abs() < 1e-3,
            "interval {n}: {wall_s} s of wall time for {} s",
            s.duration_s
        );
        let Some(offset_s) = s.settled_offset_s else {
            continue;
        };
        // The agent's wall clock at the interval's end, against the test's real clock
        // when the line arrived plus the agent's offset: printed after its end, and
        // well within a second of it.
        let expected = s.received_ns + i128::from(offset_s) * 1_000_000_000;
        let late_ms = (expected - s.end_unix_ns) as f64 / 1e6;
        assert!(
            (-50.0..1_000.0).contains(&late_ms),
            "interval {n} under a {offset_s:+} s wall clock ends {late_ms} ms before it arrived"
        );
        checked[[0, 3_600, -600]
            .iter()
            .position(|&o| o == offset_s)
            .expect("one of the offsets")] += 1;
    }
    assert!(
        checked.iter().all(|&c| c >= 2),
        "too few settled intervals per offset: {checked:?}"
    );
}
