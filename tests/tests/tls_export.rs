//! TLS on the way out: the agent forwards to (and `measure` sends its span to) OTLP
//! backends behind TLS — Python's grpcio and http.server with the ssl module, serving a
//! certificate this test made with openssl — with the OpenTelemetry SDKs' environment
//! (`OTEL_EXPORTER_OTLP_CERTIFICATE`, `_CLIENT_CERTIFICATE`, `_CLIENT_KEY`, `_HEADERS`,
//! `_INSECURE`) or the flags; and a backend whose certificate another CA signed is
//! refused with a message that says so and what to do.

use std::{
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use energy_tests::{
    agent_bin,
    otlp::{Backend, TlsSink, forwarding_agent, free_port_pair, run_script, wait_for},
    require_root,
    tls::Pki,
};

/// `measure -- true` with `args` and `envs`; its output.
fn measure(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut command = Command::new(agent_bin());
    command.args(["measure", "--no-gpu"]).args(args);
    for (k, v) in envs {
        command.env(k, v);
    }
    command
        .args(["--", "true"])
        .output()
        .expect("running energy-agent measure")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn forwards_over_grpc_mtls_with_the_sdk_environment_and_its_headers() {
    require_root();
    let pki = Pki::generate();
    let (port, sink_port) = (free_port_pair(), free_port_pair());
    let sink = TlsSink::start(
        "grpc",
        sink_port,
        (&pki.server_cert, &pki.server_key),
        Some(&pki.ca),
    );
    // No scheme: TLS, as the SDKs read an endpoint without one.
    let endpoint = format!("localhost:{sink_port}");
    let agent = forwarding_agent(port, &endpoint, &[], |c| {
        c.env("OTEL_EXPORTER_OTLP_CERTIFICATE", &pki.ca)
            .env("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", &pki.client_cert)
            .env("OTEL_EXPORTER_OTLP_CLIENT_KEY", &pki.client_key)
            .env(
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20s3cret",
            );
    });
    let answers = run_script("send_spans.py", &[port.to_string(), "over-tls*3".into()]);
    assert_eq!(answers["over-tls"], "OK", "{answers}");
    let spans = wait_for(Duration::from_secs(15), || {
        let s = sink.received("span");
        (s.len() >= 3).then_some(s)
    })
    .expect("the spans reach the TLS backend");
    for s in &spans {
        assert_eq!(s["name"], "over-tls");
        assert_eq!(s["authorization"], "Bearer s3cret", "{s}");
        assert_eq!(s["client"], "energy-agent client", "{s}");
    }
    let metrics = wait_for(Duration::from_secs(10), || {
        let m = sink.received("metric");
        (!m.is_empty()).then_some(m)
    })
    .expect("the agent's own metrics reach the TLS backend too");
    assert_eq!(metrics[0]["client"], "energy-agent client");
    let (status, _) = agent.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn forwards_over_https_with_the_flags() {
    require_root();
    let pki = Pki::generate();
    let (port, sink_port) = (free_port_pair(), free_port_pair());
    let sink = TlsSink::start(
        "http",
        sink_port,
        (&pki.server_cert, &pki.server_key),
        Some(&pki.ca),
    );
    let endpoint = format!("https://127.0.0.1:{sink_port}");
    let (ca, cert, key) = (
        pki.ca.to_string_lossy().into_owned(),
        pki.client_cert.to_string_lossy().into_owned(),
        pki.client_key.to_string_lossy().into_owned(),
    );
    let agent = forwarding_agent(
        port,
        &endpoint,
        &[
            "--otlp-protocol",
            "http/protobuf",
            "--otlp-certificate",
            &ca,
            "--otlp-client-certificate",
            &cert,
            "--otlp-client-key",
            &key,
        ],
        |_| {},
    );
    let answers = run_script("send_spans.py", &[port.to_string(), "over-https*2".into()]);
    assert_eq!(answers["over-https"], "OK", "{answers}");
    let spans = wait_for(Duration::from_secs(15), || {
        let s = sink.received("span");
        (s.len() >= 2).then_some(s)
    })
    .expect("the spans reach the HTTPS backend");
    assert!(
        spans
            .iter()
            .all(|s| s["name"] == "over-https" && s["client"] == "energy-agent client"),
        "{spans:?}"
    );
    let (status, _) = agent.stop();
    assert!(status.success(), "{status}");
}

#[test]
fn measure_sends_its_span_over_tls_and_plaintext_when_insecure() {
    require_root();
    let pki = Pki::generate();
    for protocol in ["grpc", "http"] {
        let port = free_port_pair();
        let sink = TlsSink::start(protocol, port, (&pki.server_cert, &pki.server_key), None);
        let endpoint = format!("https://localhost:{port}");
        let out = measure(
            &[
                "--otlp-protocol",
                if protocol == "grpc" {
                    "grpc"
                } else {
                    "http/protobuf"
                },
                "--otlp-endpoint",
                &endpoint,
            ],
            &[("OTEL_EXPORTER_OTLP_CERTIFICATE", &pki.ca)],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            !stderr(&out).contains("exporting the measure span"),
            "{protocol}: {}",
            stderr(&out)
        );
        let spans = sink.received("span");
        assert_eq!(spans.len(), 1, "{protocol}: {spans:?}");
        assert_eq!(spans[0]["name"], "measure true");
    }
    // No scheme and OTEL_EXPORTER_OTLP_INSECURE=true: plaintext.
    let port = free_port_pair();
    let backend = Backend::start(port);
    let out = Command::new(agent_bin())
        .args(["measure", "--no-gpu", "--otlp-endpoint"])
        .arg(format!("127.0.0.1:{port}"))
        .env("OTEL_EXPORTER_OTLP_INSECURE", "TRUE")
        .args(["--", "true"])
        .output()
        .expect("running measure");
    assert!(out.status.success(), "{}", stderr(&out));
    let spans = wait_for(Duration::from_secs(5), || {
        let s = backend.received("span");
        (!s.is_empty()).then_some(s)
    })
    .expect("the span over plaintext");
    assert_eq!(spans[0]["name"], "measure true");
}

#[test]
fn a_certificate_from_another_ca_is_refused_with_a_clear_message() {
    require_root();
    let pki = Pki::generate();
    for protocol in ["grpc", "http"] {
        let port = free_port_pair();
        // The sink's certificate is signed by the other CA; the agent trusts only `ca`.
        let sink = TlsSink::start(
            protocol,
            port,
            (&pki.other_server_cert, &pki.other_server_key),
            None,
        );
        let endpoint = format!("https://127.0.0.1:{port}");
        let out = measure(
            &[
                "--otlp-protocol",
                if protocol == "grpc" {
                    "grpc"
                } else {
                    "http/protobuf"
                },
                "--otlp-endpoint",
                &endpoint,
            ],
            &[("OTEL_EXPORTER_OTLP_CERTIFICATE", &pki.ca)],
        );
        let err = stderr(&out);
        assert!(
            out.status.success(),
            "a failed span export does not fail measure: {err}"
        );
        assert!(
            err.contains("invalid peer certificate") && err.contains("UnknownIssuer"),
            "{protocol}: the error names the certificate failure: {err}"
        );
        assert!(
            err.contains("not signed by a trusted CA") && err.contains("--otlp-certificate"),
            "{protocol}: the error says what to do: {err}"
        );
        assert!(sink.received("span").is_empty(), "{protocol}: nothing sent");
    }
    // The daemon logs the same, keeps the spans queued, and sends none.
    let (port, sink_port) = (free_port_pair(), free_port_pair());
    let sink = TlsSink::start(
        "grpc",
        sink_port,
        (&pki.other_server_cert, &pki.other_server_key),
        None,
    );
    let dir = tempfile::tempdir().expect("a temp dir");
    let log = dir.path().join("agent.log");
    let log_file = std::fs::File::create(&log).expect("the log file");
    let endpoint = format!("https://127.0.0.1:{sink_port}");
    let ca = pki.ca.to_string_lossy().into_owned();
    let agent = forwarding_agent(port, &endpoint, &["--otlp-certificate", &ca], |c| {
        c.stderr(log_file);
    });
    let answers = run_script("send_spans.py", &[port.to_string(), "refused*2".into()]);
    assert_eq!(
        answers["refused"], "OK",
        "the receiver still accepts: {answers}"
    );
    let logged = wait_for(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("UnknownIssuer").then_some(text)
    })
    .expect("the daemon logs the certificate failure");
    assert!(logged.contains("--otlp-certificate"), "{logged}");
    assert!(sink.received("span").is_empty());
    let (_, intervals) = agent.stop();
    let last = intervals.last().expect("intervals");
    assert!(
        last["otlp"]["forward"]["failures"].as_u64() > Some(0),
        "{}",
        last["otlp"]
    );
}

#[test]
fn bad_tls_settings_stop_the_start_with_the_file_named() {
    require_root();
    let pki = Pki::generate();
    let out = measure(
        &[
            "--otlp-endpoint",
            "https://127.0.0.1:1",
            "--otlp-client-certificate",
        ],
        &[],
    );
    // clap: the flag needs its value.
    assert!(!out.status.success());
    let missing = pki.dir().join("missing.pem");
    let cert = pki.client_cert.to_string_lossy().into_owned();
    for (flags, named) in [
        (
            ["--otlp-certificate", &*missing.to_string_lossy()],
            "missing.pem",
        ),
        (["--otlp-client-certificate", &cert], "--otlp-client-key"),
    ] {
        let agent = Command::new(agent_bin())
            .args(["run", "--no-gpu", "--duration", "1s"])
            .args(["--otlp-endpoint", "https://127.0.0.1:1"])
            .args(flags)
            .output()
            .expect("running the agent");
        let err = stderr(&agent);
        assert_eq!(agent.status.code(), Some(2), "{err}");
        assert!(err.contains(named), "the error names {named}: {err}");
    }
}
