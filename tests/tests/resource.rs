//! The resource on exported metrics, as an independent OTLP implementation decodes it
//! (the Python backend: opentelemetry-proto + grpcio): two agents on one host push
//! under the same `host.*` attributes and different `service.instance.id`s, so their
//! series never collide in a backend, nor those of different hosts.

use std::time::Duration;

use energy_tests::{
    AgentRun,
    otlp::{Backend, free_port_pair, wait_for},
    require_root,
};

fn agent(backend_port: u16) -> AgentRun {
    let endpoint = format!("http://127.0.0.1:{backend_port}");
    AgentRun::start(&[
        "--interval",
        "500ms",
        "--no-gpu",
        "--otlp-endpoint",
        &endpoint,
        "--metrics-interval",
        "1s",
        "--receive",
        "off",
    ])
}

fn text(resource: &serde_json::Value, key: &str) -> Option<String> {
    resource[key].as_str().map(String::from)
}

#[test]
fn metrics_name_their_host_and_agent_instance() {
    require_root();
    let port = free_port_pair();
    let backend = Backend::start(port);
    let first = agent(port);
    let second = agent(port);
    let resources = wait_for(Duration::from_secs(15), || {
        let mut ids: Vec<serde_json::Value> = backend
            .received("metric")
            .into_iter()
            .map(|m| m["resource"].clone())
            .collect();
        ids.sort_by_key(|r| text(r, "service.instance.id"));
        ids.dedup();
        (ids.len() >= 2).then_some(ids)
    });
    let _ = first.stop();
    let _ = second.stop();
    let resources = resources.unwrap_or_else(|| {
        panic!(
            "two agents' metrics: {:?}",
            backend.received("metric").first()
        )
    });
    assert_eq!(
        resources.len(),
        2,
        "one resource per agent, the same on every push: {resources:?}"
    );

    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let machine_id = ["/etc/machine-id", "/var/lib/dbus/machine-id"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .map(|t| t.trim().to_string())
        .filter(|t| t.len() == 32);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    for r in &resources {
        assert_eq!(
            text(r, "service.name").as_deref(),
            Some("energy-agent"),
            "{r}"
        );
        assert_eq!(
            text(r, "host.name").as_deref(),
            Some(hostname.trim()),
            "{r}"
        );
        assert_eq!(text(r, "host.id"), machine_id, "{r}");
        assert_eq!(text(r, "host.arch").as_deref(), Some(arch), "{r}");
        let id = text(r, "service.instance.id").expect("a service.instance.id");
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "a UUID: {id}");
        assert!(id.as_bytes()[14] == b'4', "version 4: {id}");
    }
    assert_ne!(
        text(&resources[0], "service.instance.id"),
        text(&resources[1], "service.instance.id"),
        "two agents on one host"
    );
}
