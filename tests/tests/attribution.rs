//! Attribution on real eBPF data: conservation per interval against a powercap tree the
//! test advances at a known power, and proportionality between two processes whose
//! CPU use the test fixes at 2:1.

use std::{process::Command, time::Duration};

use energy_tests::{
    AgentRun,
    powercap::{PowercapTree, ZoneSpec},
    require_root, test_bin,
};

fn burn(seconds: &str, duty: &str, cpu: &str) -> std::process::Child {
    Command::new(test_bin("burner"))
        .args([seconds, "1", duty, cpu])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("burner")
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn processes_plus_idle_equal_what_the_meter_measured_and_split_2_to_1() {
    require_root();
    let tree = PowercapTree::start(
        vec![
            ZoneSpec {
                path: "intel-rapl:0",
                name: "package-0",
                watts: 24.0,
                range_uj: 262_143_328_850,
            },
            ZoneSpec {
                path: "intel-rapl:0/intel-rapl:0:0",
                name: "dram",
                watts: 4.0,
                range_uj: 65_712_999_613,
            },
        ],
        0,
    );
    let root = tree.root();
    let mut agent = AgentRun::start(&[
        "--interval",
        "500ms",
        "--no-gpu",
        "--powercap-root",
        root.to_str().unwrap(),
        "--idle-power",
        "package=6",
        "--idle-power",
        "dram=1",
    ]);
    // A burns all of CPU 0 for 2 s, B half of CPU 1 (5 ms of every 10) for 1 s of CPU:
    // side by side for 2 s with CPU use 2:1 throughout.
    let (mut a, mut b) = (burn("2.0", "1.0", "0"), burn("1.0", "0.5", "1"));
    let (pid_a, pid_b) = (a.id(), b.id());
    assert!(a.wait().unwrap().success() && b.wait().unwrap().success());
    agent.wait_intervals(2, Duration::from_secs(10));
    let (_, intervals) = agent.stop();

    let mut checked = 0;
    let (mut ja, mut jb, mut ca, mut cb) = (0.0, 0.0, 0.0, 0.0);
    for i in &intervals {
        let power = &i["power"];
        let (cpu_j, dram_j) = (f(&power["cpu_j"]), f(&power["dram_j"]));
        let processes = i["processes"].as_array().unwrap();
        let sum =
            |key: &str| processes.iter().map(|p| f(&p[key])).sum::<f64>() + f(&i["idle"][key]);
        // Conservation, to rounding, in every interval.
        assert!(
            (sum("cpu_j") - cpu_j).abs() <= 1e-9 * cpu_j.max(1.0),
            "cpu: {} vs {cpu_j}",
            sum("cpu_j")
        );
        assert!(
            (sum("dram_j") - dram_j).abs() <= 1e-9 * dram_j.max(1.0),
            "dram: {} vs {dram_j}",
            sum("dram_j")
        );
        let secs = f(&i["duration_s"]);
        if secs > 0.4 {
            // And the measured energy is what the test wrote: 24 W and 4 W.
            assert!(
                (cpu_j / secs - 24.0).abs() < 24.0 * 0.05,
                "package {} W",
                cpu_j / secs
            );
            assert!(
                (dram_j / secs - 4.0).abs() < 4.0 * 0.05,
                "dram {} W",
                dram_j / secs
            );
            checked += 1;
        }
        // Proportionality in the intervals where both ran side by side all along: at
        // the edges one runs alone, and a constant meter's dynamic energy then goes to
        // whoever ran.
        let find = |pid: u32| {
            processes
                .iter()
                .find(|p| p["pid"].as_u64() == Some(u64::from(pid)))
        };
        if let (Some(pa), Some(pb)) = (find(pid_a), find(pid_b))
            && f(&pa["cpu_time_s"]) > 0.9 * secs
            && f(&pb["cpu_time_s"]) > 0.4 * secs
        {
            ja += f(&pa["cpu_j"]);
            ca += f(&pa["cpu_time_s"]);
            jb += f(&pb["cpu_j"]);
            cb += f(&pb["cpu_time_s"]);
        }
    }
    assert!(checked >= 3, "full intervals checked: {checked}");
    assert!(cb > 0.5, "steady intervals found: B ran {cb} s in them");
    // The workload's own ratio (B can lose a slice to other tasks on its CPU).
    assert!(
        (ca / cb - 2.0).abs() < 0.1,
        "workload CPU time ratio {ca}/{cb}"
    );
    let ratio = ja / jb;
    let cpu_ratio = ca / cb;
    eprintln!(
        "steady state: CPU {ca:.3} s : {cb:.3} s = {cpu_ratio:.3}, dynamic energy {ja:.3} J : {jb:.3} J = {ratio:.3}"
    );
    // Dynamic energy follows CPU use: the agent's split matches the CPU it measured…
    assert!(
        (ratio - cpu_ratio).abs() <= cpu_ratio * 0.03,
        "energy ratio {ratio} vs CPU ratio {cpu_ratio}"
    );
    // …and with the workload at 2:1 (its own jitter aside), energy is 2:1 within 3%.
    if (cpu_ratio - 2.0).abs() <= 2.0 * 0.03 {
        assert!(
            (ratio - 2.0).abs() <= 2.0 * 0.03,
            "dynamic energy ratio {ratio}"
        );
    }
}
