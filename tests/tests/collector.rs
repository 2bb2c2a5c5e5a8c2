//! The node-local hop of deploy/otel-collector, up to the gateway: an inference server
//! (the Python OpenTelemetry SDK) configured as deploy/otel-collector/inference-pod.yaml
//! configures vLLM, the agent as the DaemonSet runs it (its OTEL_RESOURCE_ATTRIBUTES),
//! and the Python opentelemetry-proto backend standing in for the gateway Collector.
//! What the gateway's k8sattributes associates by must arrive: the inference pod's
//! resource on its enriched spans, untouched, and the agent's pod and node on the
//! agent's own metrics, all decoded by an independent OTLP implementation.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use energy_tests::{
    agent_bin,
    otlp::{Backend, free_port_pair, python, script, wait_for},
    repo_root, require_root,
};
use serde_json::Value;

/// The value of env var `name` of the first container of the first object of `file`
/// (a YAML manifest) with `$(VAR)` references replaced from `vars`.
fn manifest_env(file: &str, name: &str, vars: &[(&str, &str)]) -> String {
    let out = Command::new(python())
        .arg(script("deploy.py"))
        .arg("json")
        .arg(repo_root().join(file))
        .output()
        .expect("tests/py/deploy.py");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let env = docs
        .iter()
        .find_map(|d| d["spec"]["template"]["spec"]["containers"][0]["env"].as_array())
        .unwrap_or_else(|| panic!("no container env in {file}"));
    let mut value = env
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no {name} in {file}"))
        .to_string();
    for (var, v) in vars {
        value = value.replace(&format!("$({var})"), v);
    }
    assert!(!value.contains("$("), "every reference resolved: {value}");
    value
}

#[test]
fn pod_and_node_attributes_reach_the_gateway_through_the_agent() {
    require_root();
    let (port, backend_port, health_port) = (free_port_pair(), free_port_pair(), free_port_pair());
    let backend = Backend::start(backend_port);
    let agent_resource = manifest_env(
        "deploy/kubernetes/energy-agent.yaml",
        "OTEL_RESOURCE_ATTRIBUTES",
        &[
            ("K8S_NODE_NAME", "node-a"),
            ("K8S_POD_NAME", "energy-agent-x7k2p"),
            ("K8S_POD_NAMESPACE", "energy"),
            ("K8S_POD_UID", "0b6e0a52-agent"),
        ],
    );
    let mut agent = Command::new(agent_bin())
        .args(["run", "--output", "none", "--interval", "500ms", "--no-gpu"])
        .args(["--receive", &format!("127.0.0.1:{port}")])
        .args([
            "--otlp-endpoint",
            &format!("http://127.0.0.1:{backend_port}"),
        ])
        .args(["--metrics-interval", "1s"])
        .args(["--health", &format!("127.0.0.1:{health_port}")])
        .env("OTEL_RESOURCE_ATTRIBUTES", &agent_resource)
        .stdout(Stdio::null())
        .spawn()
        .expect("starting the agent");
    let up = wait_for(Duration::from_secs(30), || {
        energy_tests::http_get(health_port, "/readyz").filter(|r| r.0 == 200)
    });
    let pod_resource = manifest_env(
        "deploy/otel-collector/inference-pod.yaml",
        "OTEL_RESOURCE_ATTRIBUTES",
        &[
            ("K8S_POD_UID", "7d1c9e30-llama"),
            ("K8S_POD_IP", "10.1.2.3"),
        ],
    );
    let served = Command::new(python())
        .arg(script("inference_server.py"))
        .args([&format!("http://127.0.0.1:{port}"), "grpc", "4", "0.05"])
        .env("OTEL_RESOURCE_ATTRIBUTES", &pod_resource)
        .output()
        .expect("running inference_server.py");
    let spans = wait_for(Duration::from_secs(20), || {
        let s = backend.received("span");
        (s.len() >= 8).then_some(s)
    });
    let metrics = wait_for(Duration::from_secs(10), || {
        let m = backend.received("metric");
        m.iter().any(|m| m["name"] == "energy.process").then_some(m)
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(agent.id() as i32, libc::SIGINT) };
    let status = agent.wait().expect("the agent");

    assert!(up.is_some(), "the agent became ready");
    assert!(
        served.status.success(),
        "{}",
        String::from_utf8_lossy(&served.stderr)
    );
    let spans = spans.expect("every span at the stand-in gateway");
    for s in &spans {
        assert_eq!(s["resource"]["k8s.pod.uid"], "7d1c9e30-llama", "{s}");
        assert_eq!(s["resource"]["k8s.pod.ip"], "10.1.2.3", "{s}");
    }
    let enriched = spans
        .iter()
        .filter(|s| s["attributes"]["energy.joules"].as_f64().is_some())
        .count();
    assert_eq!(enriched, 4, "each request enriched on the way: {spans:?}");
    let metrics = metrics.expect("the agent's metrics at the stand-in gateway");
    for m in &metrics {
        let r = &m["resource"];
        assert_eq!(r["service.name"], "energy-agent", "{m}");
        assert_eq!(r["k8s.node.name"], "node-a", "{m}");
        assert_eq!(r["k8s.pod.uid"], "0b6e0a52-agent", "{m}");
        assert_eq!(r["k8s.pod.name"], "energy-agent-x7k2p", "{m}");
        assert_eq!(r["k8s.namespace.name"], "energy", "{m}");
    }
    assert!(status.success(), "{status}");
}
