//! The deployment files, checked by the engines that will read them: the Helm chart
//! rendered by Helm's own engine (the Helm v4 Go SDK through the helm-python-sdk wheel;
//! no helm binary can be had here) must be the committed plain manifests, and both,
//! with the chart's other settings too, must validate against the Kubernetes OpenAPI
//! schemas (kubernetes-validate, strict, for Kubernetes 1.28 and 1.37); `helm lint
//! --strict` must pass; the Dockerfile, parsed by BuildKit's parser and linted by
//! hadolint, must build the image from deploy/image/rootfs.sh; and what the DaemonSet
//! grants and mounts must be what the image needs and what tests/tests/image.rs ran it
//! with.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use energy_tests::{
    otlp::{python, script},
    repo_root,
};
use serde_json::Value;

const CHART: &str = "deploy/helm/energy-agent";

/// Runs tests/py/deploy.py; its stdout.
fn deploy_py(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(script("deploy.py"))
        .args(args)
        .current_dir(repo_root())
        .output()
        .expect("running tests/py/deploy.py (cargo xtask test installs its packages)");
    assert!(
        out.status.success(),
        "deploy.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn render(values: &str) -> String {
    deploy_py(&["render", CHART, "energy-agent", "energy", values])
}

fn documents(path: &Path) -> Vec<Value> {
    let text = deploy_py(&["json", path.to_str().expect("path")]);
    serde_json::from_str(&text).expect("JSON from deploy.py")
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in the manifests"))
}

/// kubernetes-validate, strict, on `files` for one Kubernetes version: (success, output).
fn validate(version: &str, files: &[PathBuf]) -> (bool, String) {
    let bin = python().with_file_name("kubernetes-validate");
    let out = Command::new(&bin)
        .args(["--strict", "-k", version])
        .args(files)
        .output()
        .unwrap_or_else(|e| panic!("running {} ({e})", bin.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_chart_renders_to_the_committed_manifests() {
    let committed =
        std::fs::read_to_string(repo_root().join("deploy/kubernetes/energy-agent.yaml"))
            .expect("deploy/kubernetes/energy-agent.yaml");
    assert!(
        render("null") == committed,
        "deploy/kubernetes/energy-agent.yaml is not the chart's rendering: regenerate it as \
         tests/py/deploy.py says"
    );
}

#[test]
fn manifests_and_every_chart_setting_validate_against_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = vec![
        repo_root().join("deploy/kubernetes/namespace.yaml"),
        repo_root().join("deploy/kubernetes/energy-agent.yaml"),
        repo_root().join("deploy/otel-collector/inference-pod.yaml"),
    ];
    let settings = [
        (
            "root",
            r#"{"runAsRoot": true, "seccompProfile": "RuntimeDefault"}"#,
        ),
        (
            "gpu-hostport",
            r#"{"gpu": {"enabled": true}, "otlp": {"hostPort": true, "service": false}}"#,
        ),
        (
            "no-otlp",
            r#"{"otlp": {"endpoint": ""}, "privileged": true, "priorityClassName": "system-node-critical"}"#,
        ),
        (
            "extras",
            r#"{"services": [{"name": "vllm", "regex": "vllm serve"}], "extraArgs": ["--metrics-top=50"], "extraEnv": [{"name": "RUST_LOG", "value": "info"}], "config": "[carbon]\nregion = \"FR\"\n", "k8s": {"metadata": "kubelet", "labels": ["app.kubernetes.io/name"]}}"#,
        ),
    ];
    for (name, values) in settings {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, render(values)).expect("writing a rendering");
        files.push(path);
    }
    for version in ["1.28.0", "1.37.0"] {
        let (ok, text) = validate(version, &files);
        assert!(ok, "against Kubernetes {version}:\n{text}");
        let passed = text.matches(" passed for resource ").count();
        assert_eq!(
            passed,
            1 + 1 + 6 * 3 + 5 * 2,
            "every resource checked:\n{text}"
        );
    }
    // The validator rejects what the API server would: a misspelt field.
    let broken = dir.path().join("broken.yaml");
    let text = std::fs::read_to_string(&files[1]).expect("manifests");
    std::fs::write(&broken, text.replace("hostPID: true", "hostPid: true")).expect("write");
    let (ok, text) = validate("1.37.0", &[broken]);
    assert!(!ok, "a misspelt field must fail strict validation:\n{text}");
}

#[test]
fn helm_lint_strict_passes() {
    let report: Value = serde_json::from_str(&deploy_py(&["lint", CHART])).expect("lint JSON");
    let problems: Vec<&Value> = report["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|m| m["severity"].as_u64().unwrap_or(3) >= 2)
        .collect();
    assert!(
        problems.is_empty() && report["errors"].as_array().is_some_and(|e| e.is_empty()),
        "helm lint --strict: {report}"
    );
}

/// The list in `CAPS=…` (rootfs.sh) or `caps=…` (run-rootfs.sh), upper-cased without
/// `cap_`, as Kubernetes spells them.
fn script_caps(file: &str, var: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join(file)).expect("script");
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{var}=")))
        .unwrap_or_else(|| panic!("no {var}= in {file}"));
    let mut caps: Vec<String> = line
        .split(',')
        .map(|c| c.trim().trim_start_matches("cap_").to_uppercase())
        .collect();
    caps.sort();
    caps
}

#[test]
fn the_daemonset_grants_and_mounts_what_the_image_needs() {
    let docs = documents(&repo_root().join("deploy/kubernetes/energy-agent.yaml"));
    let ds = kind(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(
        pod["hostPID"], true,
        "host pids, as the eBPF programs see them"
    );
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let sc = &c["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], true, "file capabilities");
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let mut granted: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|c| c.as_str().expect("a name").to_string())
        .collect();
    granted.sort();
    assert_eq!(granted, script_caps("deploy/image/rootfs.sh", "CAPS"));
    assert_eq!(granted, script_caps("deploy/image/run-rootfs.sh", "caps"));

    // The host mounts, as run-rootfs.sh binds them.
    let volumes = pod["volumes"].as_array().expect("volumes");
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    let host_path = |host: &str| -> (String, bool) {
        let v = volumes
            .iter()
            .find(|v| v["hostPath"]["path"] == host)
            .unwrap_or_else(|| panic!("a hostPath volume for {host}"));
        let m = mounts
            .iter()
            .find(|m| m["name"] == v["name"])
            .expect("its mount");
        (
            m["mountPath"].as_str().expect("mountPath").to_string(),
            m["readOnly"] == true,
        )
    };
    assert_eq!(
        host_path("/sys/kernel/tracing"),
        ("/sys/kernel/tracing".into(), true)
    );
    assert_eq!(host_path("/sys"), ("/host/sys".into(), true));
    assert_eq!(
        volumes
            .iter()
            .filter(|v| v.get("hostPath").is_some())
            .count(),
        2,
        "no other host path"
    );
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--powercap-root=/host/sys/class/powercap"));
    assert!(args.contains(&"--config=/etc/energy-agent/config.toml"));

    // The probes ask the health listener the agent is told to open.
    let port_of = |name: &str| {
        c["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("container port {name}"))
    };
    let health = port_of("health");
    assert!(args.contains(&format!("--health=0.0.0.0:{health}").as_str()));
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "health");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "health");
    let metrics = port_of("metrics");
    assert!(args.contains(&format!("--prometheus=0.0.0.0:{metrics}").as_str()));
    assert!(
        c["resources"]["requests"]["cpu"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );

    // Node-local OTLP: the Service reaches the container's OTLP ports on the same node.
    let svc = kind(&docs, "Service");
    assert_eq!(svc["spec"]["internalTrafficPolicy"], "Local");
    for p in svc["spec"]["ports"].as_array().expect("service ports") {
        let target = p["targetPort"].as_str().expect("a named target port");
        let port = port_of(target);
        let flag = if target == "otlp-grpc" {
            "--receive"
        } else {
            "--receive-http"
        };
        assert!(args.contains(&format!("{flag}=0.0.0.0:{port}").as_str()));
    }

    // The config the image test ran the agent with is the ConfigMap's.
    let cm = kind(&docs, "ConfigMap");
    let file = std::fs::read_to_string(repo_root().join(CHART).join("files/config.toml"))
        .expect("files/config.toml");
    assert_eq!(cm["data"]["config.toml"].as_str(), Some(file.as_str()));

    // Pods, read-only: the RBAC the pod metadata needs, and nothing more.
    let role = kind(&docs, "ClusterRole");
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}])
    );
}

/// The `energy-agent run` flags a rendering's DaemonSet passes, and its env names.
fn agent_args(docs: &[Value]) -> (Vec<String>, Vec<String>) {
    let c = &kind(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    let strings = |v: &Value, key: Option<&str>| -> Vec<String> {
        (v.as_array().into_iter().flatten())
            .filter_map(|a| key.map_or(a, |k| &a[k]).as_str().map(str::to_string))
            .collect()
    };
    (strings(&c["args"], None), strings(&c["env"], Some("name")))
}

/// Renders `values` and reads the documents back.
fn rendered(values: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.yaml");
    std::fs::write(&path, render(values)).expect("writing a rendering");
    documents(&path)
}

#[test]
fn the_daemonset_asks_for_its_own_nodes_pods() {
    let docs = documents(&repo_root().join("deploy/kubernetes/energy-agent.yaml"));
    let (args, env) = agent_args(&docs);
    // The API server, listing the node the downward API names.
    assert!(args.iter().any(|a| a == "--k8s-api"), "{args:?}");
    assert!(args.iter().any(|a| a == "--k8s-node-name=$(K8S_NODE_NAME)"));
    let ds = kind(&docs, "DaemonSet");
    let node_env = (ds["spec"]["template"]["spec"]["containers"][0]["env"].as_array())
        .and_then(|e| e.iter().find(|v| v["name"] == "K8S_NODE_NAME"))
        .expect("K8S_NODE_NAME");
    assert_eq!(
        node_env["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    let role = kind(&docs, "ClusterRole");
    assert_eq!(
        role["rules"],
        serde_json::json!([{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]),
        "reading pods and nothing else"
    );
    // The kubelet instead: its address from the env, nodes/proxy to be let in.
    let kubelet = rendered(r#"{"k8s": {"metadata": "kubelet", "labels": ["team"]}}"#);
    let (args, env_k) = agent_args(&kubelet);
    let url = args
        .iter()
        .find(|a| a.starts_with("--kubelet-url="))
        .expect("--kubelet-url");
    assert!(url.contains("$(K8S_HOST_IP)") && env_k.iter().any(|e| e == "K8S_HOST_IP"));
    assert!(args.iter().any(|a| a == "--k8s-label=team"));
    assert!(!args.iter().any(|a| a == "--k8s-api"));
    let rules = kind(&kubelet, "ClusterRole")["rules"].to_string();
    assert!(rules.contains("nodes/proxy"), "{rules}");
    // None: no flag at all.
    let (args, _) = agent_args(&rendered(r#"{"k8s": {"metadata": "none"}}"#));
    assert!(
        !args
            .iter()
            .any(|a| a.starts_with("--k8s") || a.starts_with("--kubelet"))
    );
    // Every such flag is one the agent has.
    let help = std::process::Command::new(energy_tests::agent_bin())
        .args(["run", "--help"])
        .output()
        .expect("energy-agent run --help");
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--k8s-api",
        "--k8s-node-name",
        "--kubelet-url",
        "--k8s-label",
        "--k8s-refresh",
    ] {
        assert!(help.contains(flag), "{flag} is no flag of energy-agent run");
    }
    assert!(env.iter().any(|e| e == "K8S_NODE_NAME"));
}

#[test]
fn as_root_the_daemonset_sets_no_new_privs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("root.yaml");
    std::fs::write(&path, render(r#"{"runAsRoot": true}"#)).expect("write");
    let docs = documents(&path);
    let pod = &kind(&docs, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"], 0);
    assert_eq!(
        pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"],
        false
    );
}

#[test]
fn the_dockerfile_builds_the_image_from_the_rootfs_script() {
    let dockerfile = repo_root().join("Dockerfile");
    let parsed: Value = serde_json::from_str(&deploy_py(&[
        "dockerfile",
        dockerfile.to_str().expect("path"),
    ]))
    .expect("JSON");
    let steps = parsed.as_array().expect("instructions");
    let froms: Vec<usize> = (0..steps.len())
        .filter(|&i| steps[i]["cmd"] == "FROM")
        .collect();
    assert_eq!(froms.len(), 2, "a builder and a runtime stage");
    let builder_runs: String = steps[froms[0]..froms[1]]
        .iter()
        .filter(|s| s["cmd"] == "RUN")
        .map(|s| s["value"][0].as_str().unwrap_or("").to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        builder_runs.contains("cargo xtask build --release"),
        "{builder_runs}"
    );
    assert!(
        builder_runs.contains("deploy/image/rootfs.sh target/release/energy-agent /rootfs"),
        "{builder_runs}"
    );
    let runtime: Vec<&Value> = steps[froms[1]..].iter().collect();
    assert_eq!(runtime[0]["value"][0], "scratch");
    assert!(
        runtime.iter().any(|s| s["cmd"] == "COPY"
            && s["flags"] == serde_json::json!(["--from=builder"])
            && s["value"] == serde_json::json!(["/rootfs/", "/"])),
        "the runtime stage is the rootfs: {runtime:?}"
    );
    assert!(
        runtime.iter().all(|s| s["cmd"] != "RUN"
            && (s["cmd"] != "COPY" || s["flags"] == serde_json::json!(["--from=builder"]))),
        "nothing but the tree in the runtime stage"
    );
    assert!(
        runtime
            .iter()
            .any(|s| s["cmd"] == "USER" && s["value"][0] == "65532:65532")
    );
    let hadolint = python().with_file_name("hadolint");
    let out = Command::new(&hadolint)
        .arg(&dockerfile)
        .output()
        .unwrap_or_else(|e| panic!("running {} ({e})", hadolint.display()));
    assert!(
        out.status.success(),
        "hadolint: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_collector_pipelines_use_only_components_they_define() {
    for file in [
        "deploy/otel-collector/gateway.yaml",
        "deploy/otel-collector/agent-scrape.yaml",
    ] {
        let docs = documents(&repo_root().join(file));
        let config = &docs[0];
        let pipelines = config["service"]["pipelines"]
            .as_object()
            .unwrap_or_else(|| panic!("{file}: service.pipelines"));
        for (name, pipeline) in pipelines {
            for kind in ["receivers", "processors", "exporters"] {
                for c in pipeline[kind].as_array().into_iter().flatten() {
                    let c = c.as_str().expect("a component name");
                    assert!(
                        config[kind].get(c).is_some(),
                        "{file}: pipeline {name} uses {kind} {c}, which is not defined"
                    );
                }
            }
        }
    }
    let gateway = documents(&repo_root().join("deploy/otel-collector/gateway.yaml"));
    let k8s = &gateway[0]["processors"]["k8sattributes"];
    let sources: Vec<&Value> = k8s["pod_association"]
        .as_array()
        .expect("pod_association")
        .iter()
        .flat_map(|a| a["sources"].as_array().into_iter().flatten())
        .collect();
    assert!(
        sources.iter().all(|s| s["from"] == "resource_attribute"),
        "never the connection: at the gateway it is the agent's pod, not the sender's"
    );
}
