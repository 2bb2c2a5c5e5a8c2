//! TLS, mutual TLS and bearer tokens on the agent's listeners, against independent
//! clients: the OpenTelemetry Python SDK's OTLP exporters (configured only through the
//! standard OTEL_EXPORTER_OTLP_* variables), grpcio and urllib clients
//! (tests/py/tls_client.py) and a real Prometheus scraping /metrics over TLS with a
//! token. Certificates are made by openssl for each test.

use std::{
    io::Read,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use energy_tests::{
    AgentRun,
    otlp::{
        Backend, forwarding_agent, free_port_pair, prometheus_query, python, run_script, script,
        wait_for,
    },
    require_root,
    tls::Pki,
};

const TOKEN: &str = "receiver-token-0123456789abcdef";

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// A token file in `dir` holding [`TOKEN`].
fn token_file(dir: &Path) -> String {
    let path = dir.join("token");
    std::fs::write(&path, format!("{TOKEN}\n")).expect("writing the token");
    s(&path)
}

/// One request by tests/py/tls_client.py: its outcome (`OK`, a gRPC code, `HTTP 401`,
/// `TLS`, `CONNECTION`) and detail.
fn client(kind: &str, url: &str, args: &[&str]) -> (String, String) {
    let mut all = vec![kind, url];
    all.extend_from_slice(args);
    let v = run_script("tls_client.py", &all);
    (
        v["outcome"].as_str().unwrap_or("?").to_string(),
        v["detail"].as_str().unwrap_or("").to_string(),
    )
}

/// The agent receiving on `port` over TLS (certificate and key from `pki`), forwarding
/// to a plain backend on `backend_port`; `extra` adds flags; its stderr goes to `log`.
fn tls_agent(
    port: u16,
    backend_port: u16,
    pki: &Pki,
    extra: &[&str],
    log: Option<&Path>,
) -> AgentRun {
    let endpoint = format!("http://127.0.0.1:{backend_port}");
    let (cert, key) = (s(&pki.server_cert), s(&pki.server_key));
    let mut args = vec!["--receive-tls-cert", &cert, "--receive-tls-key", &key];
    args.extend_from_slice(extra);
    let log = log.map(|p| std::fs::File::create(p).expect("the agent's log"));
    forwarding_agent(port, &endpoint, &args, |c| {
        if let Some(log) = log {
            c.stderr(log);
        }
    })
}

fn rejected(interval: &serde_json::Value, listener: &str, reason: &str) -> u64 {
    interval["otlp"]["listeners"][listener]["rejected"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("no {listener}/{reason} count in {}", interval["otlp"]))
}

#[test]
fn the_sdk_exporters_reach_an_mtls_receiver_with_a_token_and_spans_are_enriched() {
    require_root();
    let pki = Pki::generate();
    let dir = tempfile::tempdir().expect("a temp dir");
    let token = token_file(dir.path());
    let (port, backend_port) = (free_port_pair(), free_port_pair());
    let backend = Backend::start(backend_port);
    let ca = s(&pki.ca);
    let agent = tls_agent(
        port,
        backend_port,
        &pki,
        &["--receive-client-ca", &ca, "--receive-token-file", &token],
        None,
    );
    for (protocol, target) in [
        ("grpc", format!("https://localhost:{port}")),
        ("http", format!("https://localhost:{}", port + 1)),
    ] {
        let out = Command::new(python())
            .arg(script("inference_server.py"))
            .args([&target, protocol, "2", "0.1"])
            .env("OTEL_EXPORTER_OTLP_CERTIFICATE", &pki.ca)
            .env("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &pki.client_cert)
            .env("OTEL_EXPORTER_OTLP_CLIENT_KEY", &pki.client_key)
            .env(
                "OTEL_EXPORTER_OTLP_HEADERS",
                format!("authorization=Bearer%20{TOKEN}"),
            )
            // requests lets these override the exporter's CA file (some CI images set
            // them): the SDK must trust only OTEL_EXPORTER_OTLP_CERTIFICATE here.
            .env_remove("REQUESTS_CA_BUNDLE")
            .env_remove("CURL_CA_BUNDLE")
            .output()
            .expect("running the inference server");
        assert!(
            out.status.success(),
            "{protocol}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let spans = wait_for(Duration::from_secs(20), || {
        let s = backend.received("span");
        (s.iter()
            .filter(|s| s["attributes"].get("energy.joules").is_some())
            .count()
            >= 4)
            .then_some(s)
    })
    .unwrap_or_else(|| panic!("enriched spans: {:?}", backend.received("span")));
    assert_eq!(
        spans.len(),
        8,
        "2 requests + 2 children per protocol, once each"
    );
    let (status, intervals) = agent.stop();
    assert!(status.success());
    let last = intervals.last().expect("an interval");
    for listener in ["OTLP/gRPC receiver", "OTLP/HTTP receiver"] {
        assert_eq!(rejected(last, listener, "unauthenticated"), 0);
    }
}

#[test]
fn senders_without_the_certificate_or_the_token_are_refused_and_counted() {
    require_root();
    let pki = Pki::generate();
    let dir = tempfile::tempdir().expect("a temp dir");
    let token = token_file(dir.path());
    let (port, backend_port) = (free_port_pair(), free_port_pair());
    let backend = Backend::start(backend_port);
    let ca = s(&pki.ca);
    let mut agent = tls_agent(
        port,
        backend_port,
        &pki,
        &["--receive-client-ca", &ca, "--receive-token-file", &token],
        None,
    );
    let (cert, key, other_ca) = (s(&pki.client_cert), s(&pki.client_key), s(&pki.other_ca));
    let grpc = format!("https://localhost:{port}");
    let http = format!("https://localhost:{}", port + 1);
    let good = ["--ca", &ca, "--cert", &cert, "--key", &key];
    let bearer = ["--token", TOKEN];
    let with_token = [&good[..], &bearer[..]].concat();
    // Everything right: accepted.
    assert_eq!(client("grpc", &grpc, &with_token).0, "OK");
    assert_eq!(client("http", &http, &with_token).0, "OK");
    // The certificate but no token, or a wrong one: UNAUTHENTICATED / 401.
    assert_eq!(client("grpc", &grpc, &good).0, "UNAUTHENTICATED");
    let wrong = [
        &good[..],
        &["--token", "receiver-token-0123456789abcdeX"][..],
    ]
    .concat();
    assert_eq!(client("grpc", &grpc, &wrong).0, "UNAUTHENTICATED");
    assert_eq!(client("http", &http, &good).0, "HTTP 401");
    // The token but no client certificate: the handshake fails.
    let no_cert = ["--ca", &ca, "--token", TOKEN];
    for (kind, url) in [("grpc", &grpc), ("http", &http)] {
        let (outcome, detail) = client(kind, url, &no_cert);
        assert!(
            ["TLS", "UNAVAILABLE", "CONNECTION"].contains(&outcome.as_str()),
            "{kind} without a client certificate: {outcome} {detail}"
        );
    }
    // A client that does not trust the agent's CA refuses it.
    let (outcome, detail) = client("http", &http, &["--ca", &other_ca]);
    assert_eq!(outcome, "TLS", "{detail}");
    assert!(detail.contains("CERTIFICATE_VERIFY_FAILED"), "{detail}");
    // Plaintext to a TLS port.
    let (outcome, _) = client("grpc", &format!("http://127.0.0.1:{port}"), &bearer);
    assert_ne!(outcome, "OK");

    agent.wait_intervals(2, Duration::from_secs(10));
    let (status, intervals) = agent.stop();
    assert!(status.success());
    let last = intervals.last().expect("an interval");
    assert_eq!(rejected(last, "OTLP/gRPC receiver", "unauthenticated"), 2);
    assert_eq!(rejected(last, "OTLP/HTTP receiver", "unauthenticated"), 1);
    let handshakes = rejected(last, "OTLP/gRPC receiver", "tls_handshake")
        + rejected(last, "OTLP/HTTP receiver", "tls_handshake");
    assert!(
        handshakes >= 3,
        "no client certificate ×2, an untrusted server, plaintext: {handshakes}"
    );
    let spans = backend.received("span");
    assert_eq!(
        spans.iter().filter(|s| s["name"] == "tls-client").count(),
        2,
        "only the two authenticated requests went on: {spans:?}"
    );
}

#[test]
fn a_renewed_certificate_is_served_after_sighup_and_the_agent_keeps_running() {
    require_root();
    let pki = Pki::generate();
    let dir = tempfile::tempdir().expect("a temp dir");
    // The agent serves copies, which the test then replaces.
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(&pki.server_cert, &cert).expect("copying the certificate");
    std::fs::copy(&pki.server_key, &key).expect("copying the key");
    let (port, backend_port) = (free_port_pair(), free_port_pair());
    let _backend = Backend::start(backend_port);
    let endpoint = format!("http://127.0.0.1:{backend_port}");
    let (cert_arg, key_arg) = (s(&cert), s(&key));
    let mut agent = forwarding_agent(
        port,
        &endpoint,
        &[
            "--receive-tls-cert",
            &cert_arg,
            "--receive-tls-key",
            &key_arg,
        ],
        |_| {},
    );
    let http = format!("https://localhost:{}", port + 1);
    let (ca, other_ca) = (s(&pki.ca), s(&pki.other_ca));
    assert_eq!(client("http", &http, &["--ca", &ca]).0, "OK");
    assert_eq!(client("http", &http, &["--ca", &other_ca]).0, "TLS");
    // Renewal: the other CA's certificate, written over the files.
    std::fs::copy(&pki.other_server_cert, &cert).expect("replacing the certificate");
    std::fs::copy(&pki.other_server_key, &key).expect("replacing the key");
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    let renewed = wait_for(Duration::from_secs(5), || {
        (client("http", &http, &["--ca", &other_ca]).0 == "OK").then_some(())
    });
    assert!(renewed.is_some(), "the new certificate is served");
    assert_eq!(client("http", &http, &["--ca", &ca]).0, "TLS");
    let grpc = format!("https://localhost:{port}");
    assert_eq!(client("grpc", &grpc, &["--ca", &other_ca]).0, "OK");
    // A broken file keeps the certificate in use.
    std::fs::write(&cert, "not a certificate").expect("breaking the file");
    // SAFETY: as above.
    unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(client("http", &http, &["--ca", &other_ca]).0, "OK");
    agent.wait_intervals(1, Duration::from_secs(5));
    let (status, _) = agent.stop();
    assert!(status.success(), "SIGHUP does not stop the agent: {status}");
}

#[test]
fn a_real_prometheus_scrapes_over_tls_with_a_token_and_others_get_401() {
    require_root();
    let pki = Pki::generate();
    let dir = tempfile::tempdir().expect("a temp dir");
    let token = token_file(dir.path());
    let (metrics_port, prom_port) = (free_port_pair(), free_port_pair());
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: energy\n    scheme: https\n    tls_config:\n      ca_file: {}\n      server_name: localhost\n    authorization:\n      credentials_file: {}\n    static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n",
            pki.ca.display(),
            token
        ),
    )
    .expect("writing the Prometheus config");
    let addr = format!("127.0.0.1:{metrics_port}");
    let (cert, key) = (s(&pki.server_cert), s(&pki.server_key));
    let mut agent = AgentRun::start(&[
        "--interval",
        "500ms",
        "--no-gpu",
        "--prometheus",
        &addr,
        "--prometheus-tls-cert",
        &cert,
        "--prometheus-tls-key",
        &key,
        "--prometheus-token-file",
        &token,
    ]);
    let mut prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (apt-get install prometheus)");
    let query = |q: &str| prometheus_query(prom_port, q);
    let up = wait_for(Duration::from_secs(30), || {
        query(r#"up{job="energy"}"#).filter(|v| *v == 1.0)
    });
    let power = wait_for(Duration::from_secs(10), || {
        query("hw_host_power_watts").filter(|v| *v > 0.0)
    });
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let url = format!("https://localhost:{metrics_port}");
    let ca = s(&pki.ca);
    let without = client("metrics", &url, &["--ca", &ca]);
    let with = client("metrics", &url, &["--ca", &ca, "--token", TOKEN]);
    agent.wait_intervals(1, Duration::from_secs(5));
    agent.stop();
    assert!(
        up.is_some(),
        "Prometheus scrapes the TLS endpoint with the token"
    );
    assert!(power.is_some(), "hw_host_power_watts through Prometheus");
    assert_eq!(without.0, "HTTP 401", "{without:?}");
    assert_eq!(with.0, "OK", "{with:?}");
}

#[test]
fn a_listener_beyond_loopback_without_tls_or_token_warns_once() {
    require_root();
    let (port, backend_port) = (free_port_pair(), free_port_pair());
    let _backend = Backend::start(backend_port);
    let dir = tempfile::tempdir().expect("a temp dir");
    let log = dir.path().join("agent.log");
    let receive = format!("0.0.0.0:{port}");
    let endpoint = format!("http://127.0.0.1:{backend_port}");
    let log_file = std::fs::File::create(&log).expect("the log");
    let mut agent = AgentRun::start_with(
        &[
            "--interval",
            "500ms",
            "--no-gpu",
            "--receive",
            &receive,
            "--otlp-endpoint",
            &endpoint,
        ],
        |c| {
            c.stderr(log_file);
        },
    );
    agent.wait_intervals(2, Duration::from_secs(10));
    agent.stop();
    let mut text = String::new();
    std::fs::File::open(&log)
        .and_then(|mut f| f.read_to_string(&mut text))
        .expect("reading the log");
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("reachable from the network"))
        .collect();
    assert_eq!(
        warnings.len(),
        2,
        "once per listener (gRPC, HTTP), naming the risk: {text}"
    );
    assert!(
        warnings
            .iter()
            .all(|w| w.contains("enriches") && w.contains("127.0.0.1")),
        "{warnings:?}"
    );
    assert!(
        warnings[0].contains(&format!("0.0.0.0:{port}")),
        "{warnings:?}"
    );
}
