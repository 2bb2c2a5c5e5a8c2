//! Carbon per inference, end to end with independent peers: an inference server using
//! the Python OpenTelemetry SDK and OTLP exporter sends request spans to the agent; a
//! Python OTLP backend (opentelemetry-proto + grpcio) receives what the agent forwards.

use std::{process::Command, time::Duration};

use energy_tests::{
    AgentRun,
    otlp::{Backend, free_port_pair, inference_server, prometheus_query, python, script, wait_for},
    powercap::PowercapTree,
    require_root,
};

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The agent forwarding to `backend_port`, receiving on `port` (gRPC) and `port + 1`.
fn agent(port: u16, backend_port: u16, extra: &[&str]) -> AgentRun {
    agent_every("500ms", port, backend_port, extra)
}

/// [`agent`] with intervals of `interval`.
fn agent_every(interval: &str, port: u16, backend_port: u16, extra: &[&str]) -> AgentRun {
    let receive = format!("127.0.0.1:{port}");
    let endpoint = format!("http://127.0.0.1:{backend_port}");
    let mut args = vec![
        "--interval",
        interval,
        "--no-gpu",
        "--receive",
        &receive,
        "--otlp-endpoint",
        &endpoint,
        "--carbon-intensity",
        "300",
        "--pue",
        "1.2",
        "--metrics-interval",
        "1s",
    ];
    args.extend_from_slice(extra);
    AgentRun::start(&args)
}

fn energy_test(protocol: &str) {
    require_root();
    let (port, backend_port) = (free_port_pair(), free_port_pair());
    let backend = Backend::start(backend_port);
    let mut agent = agent(port, backend_port, &[]);
    let target = match protocol {
        "grpc" => format!("http://127.0.0.1:{port}"),
        _ => format!("http://127.0.0.1:{}", port + 1),
    };
    let report = inference_server(&target, protocol, 8, 0.15, &[]);
    let pid = report["pid"].as_u64().unwrap();
    let spans = wait_for(Duration::from_secs(20), || {
        let s = backend.received("span");
        (s.len() >= 16).then_some(s)
    })
    .unwrap_or_else(|| panic!("not every span arrived: {:?}", backend.received("span")));
    agent.wait_intervals(1, Duration::from_secs(10));
    let (status, intervals) = agent.stop();
    assert!(status.success());
    assert_eq!(spans.len(), 16, "8 requests + 8 children, each once");

    let mut big = Vec::new();
    let mut small = Vec::new();
    for s in &spans {
        let a = &s["attributes"];
        assert_eq!(
            s["resource"]["service.name"], "llm-server",
            "resource untouched"
        );
        if s["name"] == "decode" {
            assert!(
                a.get("energy.joules").is_none() && a.get("energy.status").is_none(),
                "child not enriched: {s}"
            );
            continue;
        }
        assert_eq!(s["events"], 1, "events untouched");
        assert_eq!(
            a["gen_ai.request.model"], "tiny-llama",
            "attributes untouched"
        );
        let j = f(&a["energy.joules"]);
        let sum =
            f(&a["energy.cpu.joules"]) + f(&a["energy.dram.joules"]) + f(&a["energy.gpu.joules"]);
        assert!((j - sum).abs() < 1e-9, "{s}");
        assert_eq!(a["energy.estimated"], true);
        assert_eq!(a["energy.source"], "estimate");
        assert!(
            (f(&a["carbon.intensity.gco2e_per_kwh"]) - 300.0).abs() < 1e-9,
            "{s}"
        );
        let expected_g = j / 3.6e6 * 300.0 * 1.2;
        assert!(
            (f(&a["carbon.gco2e"]) - expected_g).abs() <= expected_g * 1e-9,
            "carbon = energy × intensity × PUE: {s}"
        );
        match a["request.type"].as_str() {
            Some("big") => big.push(j),
            Some("small") => small.push(j),
            other => panic!("unexpected request {other:?}"),
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let ratio = mean(&big) / mean(&small);
    eprintln!("{protocol}: big {big:?}, small {small:?}, ratio {ratio:.3}");
    assert!(
        (ratio - 2.0).abs() <= 0.2,
        "2× work gets 2× energy (±10%): {ratio}"
    );
    let process_j: f64 = intervals
        .iter()
        .flat_map(|i| i["processes"].as_array().unwrap().iter())
        .filter(|p| p["pid"].as_u64() == Some(pid))
        .map(|p| f(&p["energy_j"]))
        .sum();
    let requests_j: f64 = big.iter().chain(&small).sum();
    assert!(
        requests_j <= process_j * 1.0001,
        "requests {requests_j} J ≤ process {process_j} J"
    );
    assert!(
        requests_j > process_j * 0.3,
        "requests carry most of the process's energy: {requests_j} of {process_j}"
    );
    // The agent's own metrics went out over OTLP too.
    let metrics = wait_for(Duration::from_secs(5), || {
        let names: Vec<String> = backend
            .received("metric")
            .iter()
            .map(|m| m["name"].as_str().unwrap().to_string())
            .collect();
        (names.iter().any(|n| n == "energy.process")
            && names.iter().any(|n| n == "requests.energy"))
        .then_some(names)
    });
    assert!(
        metrics.is_some(),
        "OTLP metrics: {:?}",
        backend.received("metric")
    );
}

#[test]
fn request_spans_over_grpc_gain_energy_and_carbon() {
    energy_test("grpc");
}

#[test]
fn request_spans_over_http_gain_energy_and_carbon() {
    energy_test("http");
}

/// The known power model of [`request_energy_is_the_dynamic_power_of_its_cpu_time`]:
/// package-0 = `IDLE_W` + `W_PER_BUSY_CPU` per busy CPU of this machine.
const IDLE_W: f64 = 10.0;
const W_PER_BUSY_CPU: f64 = 20.0;

/// Under the estimate, the ratios of `energy_test` hold by construction (energy ∝ CPU
/// time is the estimate's model). Here the meter is a powercap tree the test advances
/// at a known power model, idle W + k W per busy CPU, with the agent told the idle
/// power: the dynamic energy is then k × the machine's busy CPU time, every process's
/// part of it is k × its own CPU time, and with the default idle policy (bucket) a
/// request gets no idle share. So each request span must carry k × the CPU time its
/// worker thread used within it, as the server measured it with the kernel's thread
/// clock, independently of the agent.
///
/// Tolerance, per request, from the method (1 s intervals, 20 ms request resolution,
/// k = 20 W, the server's two GIL-sharing workers keeping about one CPU busy):
/// - the tree's busy time comes from the kernel's idle clocks shown in 10 ms units:
///   under 20 ms (2 CPUs) at each of an interval's reads, ≤ 2% of its ≥ 1 s busy;
/// - the agent reads a value written up to 10 ms before: ≤ (10 W + 20 W × 2 CPUs) ×
///   10 ms = 0.5 J of the interval's ≥ 20 J dynamic energy, ≤ 2.5%;
/// - the request's CPU is read off 20 ms buckets, taken as even within a bucket; the
///   GIL hands over every 5 ms, so each edge of a span is off by ≤ 5 ms of CPU: 10 ms
///   of the smallest request's 0.3 s, ≤ 3.3%;
/// - the agent's on-CPU clock (scheduler switches) vs the kernel's idle and thread
///   clocks: irq time, steal time and the idle task's time outside tickless idle,
///   ≤ 1% each way.
///
/// That bounds each request within ±10% of k × its CPU time. Idle power taken for
/// dynamic would add at least 10 W / (20 W × 2 CPUs) = 25% (more on a quieter
/// machine), well outside it.
#[test]
fn request_energy_is_the_dynamic_power_of_its_cpu_time() {
    require_root();
    let tree = PowercapTree::package_following_load(IDLE_W, W_PER_BUSY_CPU);
    let root = tree.root();
    let (port, backend_port) = (free_port_pair(), free_port_pair());
    let backend = Backend::start(backend_port);
    let idle_power = format!("package={IDLE_W}");
    let mut agent = agent_every(
        "1s",
        port,
        backend_port,
        &[
            "--powercap-root",
            root.to_str().expect("a UTF-8 temp path"),
            "--idle-power",
            &idle_power,
            "--request-resolution",
            "20ms",
        ],
    );
    let report = inference_server(&format!("http://127.0.0.1:{port}"), "grpc", 8, 0.3, &[]);
    let spans = wait_for(Duration::from_secs(20), || {
        let s = backend.received("span");
        (s.len() >= 16).then_some(s)
    })
    .unwrap_or_else(|| panic!("not every span arrived: {:?}", backend.received("span")));
    agent.wait_intervals(1, Duration::from_secs(10));
    let (status, _) = agent.stop();
    assert!(status.success());

    let requests = report["requests"]
        .as_array()
        .expect("the server's requests");
    assert_eq!(requests.len(), 8);
    let (mut sum_j, mut sum_truth) = (0.0, 0.0);
    for r in requests {
        let id = r["span_id"].as_str().expect("a span id");
        let span = spans
            .iter()
            .find(|s| s["span_id"] == id)
            .unwrap_or_else(|| panic!("span {id} not forwarded"));
        let a = &span["attributes"];
        assert_eq!(a["energy.source"], "rapl-powercap", "{span}");
        assert_eq!(a["energy.estimated"], false, "{span}");
        assert_eq!(
            f(&a["energy.idle.joules"]),
            0.0,
            "bucket policy: no idle share"
        );
        let j = f(&a["energy.joules"]);
        let truth = W_PER_BUSY_CPU * f(&r["cpu_s"]);
        eprintln!(
            "{} request {id}: {j:.3} J, truth {truth:.3} J ({:+.1}%)",
            r["type"],
            (j / truth - 1.0) * 100.0
        );
        assert!(
            (j - truth).abs() <= truth * 0.10,
            "request {id}: {j} J, expected {W_PER_BUSY_CPU} W × {} s = {truth} J ±10%",
            r["cpu_s"]
        );
        sum_j += j;
        sum_truth += truth;
    }
    eprintln!(
        "all requests: {sum_j:.3} J, truth {sum_truth:.3} J; the tree saw {:.3} busy CPU-s",
        tree.busy_cpu_s()
    );
}

#[test]
fn without_process_pid_the_sender_is_found_from_the_connection() {
    require_root();
    let (port, backend_port) = (free_port_pair(), free_port_pair());
    let backend = Backend::start(backend_port);
    let agent = agent(port, backend_port, &[]);
    inference_server(
        &format!("http://127.0.0.1:{port}"),
        "grpc",
        2,
        0.1,
        &["--no-pid"],
    );
    let spans = wait_for(Duration::from_secs(20), || {
        let s = backend.received("span");
        (s.len() >= 4).then_some(s)
    })
    .expect("spans arrive");
    agent.stop();
    for s in spans.iter().filter(|s| s["name"] == "chat tiny-llama") {
        assert!(s["resource"].get("process.pid").is_none());
        assert!(
            f(&s["attributes"]["energy.joules"]) > 0.0,
            "enriched through the connection's pid: {s}"
        );
    }
}

#[test]
fn malformed_and_oversized_requests_get_protocol_errors_and_serving_goes_on() {
    require_root();
    let (port, backend_port) = (free_port_pair(), free_port_pair());
    let _backend = Backend::start(backend_port);
    let mut agent = agent(port, backend_port, &[]);
    let out = Command::new(python())
        .arg(script("otlp_abuse.py"))
        .args([port.to_string(), (port + 1).to_string()])
        .output()
        .expect("otlp_abuse.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("{r}");
    for case in ["grpc_garbage", "grpc_truncated"] {
        assert!(
            ["INVALID_ARGUMENT", "INTERNAL"].contains(&r[case].as_str().unwrap()),
            "{case}: {}",
            r[case]
        );
    }
    assert!(
        ["RESOURCE_EXHAUSTED", "OUT_OF_RANGE"].contains(&r["grpc_oversized"].as_str().unwrap()),
        "oversized: {}",
        r["grpc_oversized"]
    );
    assert_eq!(r["grpc_valid_after"], "OK");
    assert_eq!(r["http_garbage"], 400);
    assert_eq!(r["http_truncated"], 400);
    assert_eq!(r["http_bad_json"], 400);
    assert_eq!(r["http_wrong_type"], 415);
    assert_eq!(r["http_oversized"], 413);
    assert_eq!(r["http_valid_after"], 200);
    assert_eq!(r["http_valid_json"], 200);
    agent.wait_intervals(1, Duration::from_secs(5));
    let (status, _) = agent.stop();
    assert!(status.success(), "the agent kept serving and exits cleanly");
}

#[test]
fn a_backend_down_for_10_s_loses_no_span() {
    require_root();
    let (port, backend_port) = (free_port_pair(), free_port_pair());
    let agent = agent(port, backend_port, &[]);
    inference_server(&format!("http://127.0.0.1:{port}"), "grpc", 6, 0.05, &[]);
    std::thread::sleep(Duration::from_secs(10));
    let backend = Backend::start(backend_port);
    let spans = wait_for(Duration::from_secs(30), || {
        let s = backend.received("span");
        (s.len() >= 12).then_some(s)
    })
    .unwrap_or_else(|| panic!("spans after the outage: {}", backend.received("span").len()));
    agent.stop();
    assert_eq!(spans.len(), 12);
    let enriched = spans
        .iter()
        .filter(|s| s["attributes"].get("energy.joules").is_some())
        .count();
    assert_eq!(enriched, 6);
}

#[test]
fn measure_with_an_endpoint_sends_one_span() {
    require_root();
    let backend_port = free_port_pair();
    let backend = Backend::start(backend_port);
    let out = Command::new(energy_tests::agent_bin())
        .args([
            "measure",
            "--no-gpu",
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{backend_port}"),
            "--",
            "true",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans = wait_for(Duration::from_secs(10), || {
        let s = backend.received("span");
        (!s.is_empty()).then_some(s)
    })
    .expect("the measure span");
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0]["name"], "measure true");
    assert!(spans[0]["attributes"]["energy.joules"].as_f64().is_some());
    assert!(spans[0]["attributes"]["carbon.gco2e"].as_f64().is_some());
}

#[test]
fn a_real_prometheus_scrapes_process_and_model_series() {
    require_root();
    let (metrics_port, prom_port) = (free_port_pair(), free_port_pair());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: energy\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )
    .unwrap();
    let prometheus_addr = format!("127.0.0.1:{metrics_port}");
    let mut agent = AgentRun::start(&[
        "--interval",
        "500ms",
        "--no-gpu",
        "--prometheus",
        &prometheus_addr,
        "--model",
        "burners=burner",
    ]);
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus (apt-get install prometheus)");
    let burner = Command::new(energy_tests::test_bin("burner"))
        .args(["1.5", "1"])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(burner.success());
    let query = |q: &str| prometheus_query(prom_port, q);
    let process = wait_for(Duration::from_secs(30), || {
        query(r#"sum(energy_process_joules_total{model="burners"})"#).filter(|v| *v > 0.0)
    });
    let model = wait_for(Duration::from_secs(10), || {
        query(r#"energy_model_joules_total{model="burners",energy_domain="cpu"}"#)
            .filter(|v| *v > 0.0)
    });
    let host = wait_for(Duration::from_secs(10), || {
        query("hw_host_power_watts").filter(|v| *v > 0.0)
    });
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    agent.wait_intervals(1, Duration::from_secs(5));
    agent.stop();
    assert!(
        process.is_some(),
        "energy_process_joules_total for the burner through Prometheus"
    );
    assert!(
        model.is_some(),
        "energy_model_joules_total through Prometheus"
    );
    assert!(host.is_some(), "hw_host_power_watts through Prometheus");
}
