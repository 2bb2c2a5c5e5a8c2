//! `/healthz` and `/readyz`: what a DaemonSet's liveness and readiness probes ask, on
//! `--health ADDR` and beside `/metrics` on the Prometheus listener.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use energy_tests::{
    agent_bin, http_get as get,
    otlp::{free_port_pair, wait_for},
    require_root,
};

#[test]
fn readiness_follows_the_probe_and_the_first_interval_on_both_listeners() {
    require_root();
    let (health_port, metrics_port) = (free_port_pair(), free_port_pair());
    // A long first interval: the health listener is up before the probe loads, and
    // readiness must wait for the interval that closes 5 s after the probe attached.
    let mut agent = Command::new(agent_bin())
        .args(["run", "--output", "none", "--interval", "5s", "--no-gpu"])
        .args(["--health", &format!("127.0.0.1:{health_port}")])
        .args(["--prometheus", &format!("127.0.0.1:{metrics_port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the agent");
    let first = wait_for(Duration::from_secs(10), || get(health_port, "/healthz"));
    let early_ready = get(health_port, "/readyz");
    let ready = wait_for(Duration::from_secs(30), || {
        get(health_port, "/readyz").filter(|(status, _)| *status == 200)
    });
    let live = get(health_port, "/healthz");
    let beside_metrics = (
        get(metrics_port, "/healthz"),
        get(metrics_port, "/readyz"),
        get(metrics_port, "/metrics"),
    );
    let unknown = get(health_port, "/metrics");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGTERM) };
    let status = agent.wait().expect("waiting for the agent");

    let (code, body) = first.expect("/healthz answers while the agent starts");
    assert_eq!(code, 200, "alive while starting: {body}");
    let (code, body) = early_ready.expect("/readyz answers");
    assert_eq!(code, 503, "not ready before the first interval: {body}");
    assert!(
        body.contains("starting") || body.contains("first interval"),
        "{body}"
    );
    let (_, body) = ready.expect("/readyz turns 200 after the first interval");
    assert!(body.starts_with("ready: "), "{body}");
    let (code, body) = live.expect("/healthz");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("last interval closed"), "{body}");
    let (h, r, m) = beside_metrics;
    assert_eq!(
        h.map(|x| x.0),
        Some(200),
        "/healthz on the Prometheus listener"
    );
    assert_eq!(
        r.map(|x| x.0),
        Some(200),
        "/readyz on the Prometheus listener"
    );
    let (code, text) = m.expect("/metrics");
    assert_eq!(code, 200);
    assert!(text.contains("hw_host_power_watts"), "{text}");
    assert_eq!(
        unknown.map(|x| x.0),
        Some(404),
        "the health listener serves only the probes"
    );
    assert!(status.success(), "{status}");
}
