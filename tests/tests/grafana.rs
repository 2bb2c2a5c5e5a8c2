//! The Grafana dashboard and the Prometheus rules (deploy/grafana), against a real
//! Prometheus scraping a real agent under load: an inference server (the Python
//! OpenTelemetry SDK) sends request spans through the agent to a Python OTLP backend
//! while a burner runs. Every query of every dashboard panel, with the dashboard's
//! variables at "All", must return series with finite values; every rule must load,
//! evaluate without error and (recording rules) return series; `promtool check rules`
//! and `promtool test rules` (the alerts firing on the histories they are for) pass.

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use energy_tests::{
    AgentRun,
    otlp::{Backend, free_port_pair, inference_server, python, wait_for},
    repo_root, require_root,
};
use serde_json::Value;

const NODE: &str = "node-a";

/// A Prometheus scraping the agent every second as the scrape config in
/// deploy/grafana would (the target labelled with its node), with the rules loaded.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(metrics_port: u16) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port_pair();
        let rules = repo_root().join("deploy/grafana/energy-rules.yaml");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: energy-agent\n    honor_labels: true\n    static_configs:\n\
                 \x20     - targets: ['127.0.0.1:{metrics_port}']\n        labels:\n          k8s_node_name: {NODE}\n",
                rules.display()
            ),
        )
        .expect("prometheus.yml");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (apt-get install prometheus)");
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    /// GET /api/v1/PATH?query=… through Python's urllib; the decoded answer.
    fn api(&self, path: &str, query: Option<&str>) -> Option<Value> {
        let out = Command::new(python())
            .args([
                "-c",
                "import sys, urllib.request, urllib.parse\n\
                 url = 'http://127.0.0.1:' + sys.argv[1] + '/api/v1/' + sys.argv[2]\n\
                 if len(sys.argv) > 3: url += '?query=' + urllib.parse.quote(sys.argv[3])\n\
                 try:\n    print(urllib.request.urlopen(url, timeout=5).read().decode())\n\
                 except urllib.error.HTTPError as e:\n    print(e.read().decode())",
            ])
            .arg(self.port.to_string())
            .arg(path)
            .args(query)
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    fn query(&self, expr: &str) -> Value {
        self.api("query", Some(expr))
            .unwrap_or_else(|| panic!("no answer from Prometheus for {expr}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every (panel title, expression) of the dashboard, its variables at "All" and
/// `$__rate_interval` at 20 s (20 scrapes).
fn panel_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo_root().join("deploy/grafana/energy-dashboard.json"))
        .expect("the dashboard");
    let dash: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "node", "model"]);
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        assert_eq!(p["datasource"]["uid"], "${datasource}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "a panel without a query: {p}");
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "20s")
                .replace("$node", ".*")
                .replace("$model", ".*");
            out.push((p["title"].as_str().expect("title").to_string(), expr));
        }
    }
    out
}

/// The series of an instant query, asserting it succeeded.
fn series(prom: &Prometheus, expr: &str) -> Vec<Value> {
    let v = prom.query(expr);
    assert_eq!(v["status"], "success", "{expr}: {v}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn finite(s: &Value) -> bool {
    s["value"][1]
        .as_str()
        .and_then(|v| v.parse::<f64>().ok())
        .is_some_and(f64::is_finite)
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo_root().join("deploy/grafana"))
        .output()
        .expect("promtool (apt-get install prometheus)");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn promtool_checks_and_unit_tests_the_rules() {
    promtool(&["check", "rules", "energy-rules.yaml"]);
    promtool(&["test", "rules", "energy-rules.test.yaml"]);
}

#[test]
fn every_panel_and_rule_returns_data_from_a_prometheus_scraping_an_agent_under_load() {
    require_root();
    let (port, backend_port, metrics_port) = (free_port_pair(), free_port_pair(), free_port_pair());
    let backend = Backend::start(backend_port);
    let (receive, endpoint, metrics) = (
        format!("127.0.0.1:{port}"),
        format!("http://127.0.0.1:{backend_port}"),
        format!("127.0.0.1:{metrics_port}"),
    );
    let mut agent = AgentRun::start(&[
        "--interval",
        "500ms",
        "--no-gpu",
        "--receive",
        &receive,
        "--otlp-endpoint",
        &endpoint,
        "--prometheus",
        &metrics,
        "--carbon-intensity",
        "300",
        "--model",
        "tiny-llama=inference_server",
        "--model",
        "burners=burner",
    ]);
    let prom = Prometheus::start(metrics_port);
    // Until Prometheus listens, a query has no answer: that is "not yet", not a failure.
    let up = wait_for(Duration::from_secs(20), || {
        let v = prom.api("query", Some("up == 1"))?;
        let result = v["data"]["result"].as_array()?;
        (!result.is_empty()).then_some(())
    });
    assert!(up.is_some(), "Prometheus scrapes the agent");
    let burner = Command::new(energy_tests::test_bin("burner"))
        .args(["3.0", "1", "0.5"])
        .stdout(Stdio::null())
        .spawn()
        .expect("the burner");
    let report = inference_server(&format!("http://{receive}"), "grpc", 12, 0.1, &[]);
    let requests = report["requests"].as_array().map_or(0, Vec::len);
    assert_eq!(requests, 12, "{report}");
    let _ = burner.wait_with_output();
    // Every request enriched and its histogram scraped, and at least three scrapes of
    // it in the panels' 20 s window (a rate needs two).
    let scraped = wait_for(Duration::from_secs(20), || {
        let n = series(&prom, "sum(requests_energy_joules_count)")
            .first()
            .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())?;
        let scrapes = series(&prom, "count_over_time(requests_energy_joules_count[20s])")
            .first()
            .and_then(|s| s["value"][1].as_str()?.parse::<f64>().ok())?;
        (n >= 12.0 && scrapes >= 3.0).then_some(())
    });
    assert!(scraped.is_some(), "12 enriched requests through Prometheus");

    let mut empty = Vec::new();
    for (title, expr) in panel_queries() {
        let result = series(&prom, &expr);
        eprintln!("{title}: {} series ({expr})", result.len());
        if result.is_empty() || !result.iter().all(finite) {
            empty.push(format!("{title}: {expr} → {result:?}"));
        }
    }
    let node_label = series(&prom, "count by (k8s_node_name) (energy_agent_info)");
    let models = series(
        &prom,
        "sum by (model) (rate(requests_energy_joules_count[20s]))",
    );

    // The rules: loaded, evaluated without error; recording rules have series.
    let rules = wait_for(Duration::from_secs(10), || {
        let v = prom.api("rules", None)?;
        let groups = v["data"]["groups"].as_array()?.clone();
        let all: Vec<Value> = groups
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        (all.len() == 5
            && all
                .iter()
                .all(|r| r["lastEvaluation"] != "0001-01-01T00:00:00Z"))
        .then_some(all)
    })
    .expect("the five rules loaded and evaluated");
    let mut failing = Vec::new();
    for r in &rules {
        let expr = r["query"].as_str().expect("query");
        let evaluated = series(&prom, expr);
        if r["health"] != "ok" {
            failing.push(format!(
                "{}: health {} ({})",
                r["name"], r["health"], r["lastError"]
            ));
        }
        if r["type"] == "recording" && evaluated.is_empty() {
            failing.push(format!("{}: no series", r["name"]));
        }
        eprintln!("rule {}: {} series now", r["name"], evaluated.len());
    }
    // This host has no meter: the informational alert is pending here, and the
    // fall-back alert is not (nothing was ever measured).
    let alerts = prom.api("alerts", None).expect("alerts");
    let names: Vec<&str> = alerts["data"]["alerts"]
        .as_array()
        .expect("alerts list")
        .iter()
        .filter_map(|a| a["labels"]["alertname"].as_str())
        .collect();
    agent.wait_intervals(1, Duration::from_secs(5));
    let (status, _) = agent.stop();
    drop(backend);
    assert!(status.success());

    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );
    assert_eq!(
        node_label.first().map(|s| &s["metric"]["k8s_node_name"]),
        Some(&Value::from(NODE)),
        "the node label the panels group by"
    );
    assert!(
        models.iter().any(|s| s["metric"]["model"] == "tiny-llama"),
        "requests attributed to the inference server's model: {models:?}"
    );
    assert!(failing.is_empty(), "rules:\n{}", failing.join("\n"));
    assert!(names.contains(&"EnergyNodeEstimated"), "{alerts}");
    assert!(!names.contains(&"EnergyNodeFellBackToEstimate"), "{alerts}");
}
