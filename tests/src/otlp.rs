//! The Python peers of the OTLP tests (tests/py): a backend that records what it
//! receives, an inference server using the OpenTelemetry SDK, and an abuse client.

use std::{
    io::Read,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The agent receiving OTLP/gRPC on 127.0.0.1:`port` (HTTP on the next port) and
/// forwarding to `endpoint`, with intervals of 500 ms and its own metrics pushed every
/// second, then `extra` flags; `configure` sets its environment or stderr.
pub fn forwarding_agent(
    port: u16,
    endpoint: &str,
    extra: &[&str],
    configure: impl FnOnce(&mut Command),
) -> crate::AgentRun {
    let receive = format!("127.0.0.1:{port}");
    let mut args = vec![
        "--interval",
        "500ms",
        "--no-gpu",
        "--receive",
        &receive,
        "--otlp-endpoint",
        endpoint,
        "--metrics-interval",
        "1s",
    ];
    args.extend_from_slice(extra);
    crate::AgentRun::start_with(&args, configure)
}

/// The largest value of PromQL `query` at the Prometheus serving its API on
/// 127.0.0.1:`port`, when it has one.
pub fn prometheus_query(port: u16, query: &str) -> Option<f64> {
    let out = Command::new(python())
        .args(["-c", "import sys, urllib.request, urllib.parse; print(urllib.request.urlopen('http://127.0.0.1:' + sys.argv[1] + '/api/v1/query?query=' + urllib.parse.quote(sys.argv[2]), timeout=5).read().decode())"])
        .args([port.to_string(), query.to_string()])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["data"]["result"]
        .as_array()?
        .iter()
        .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
        .reduce(f64::max)
}

/// The Python with the test peers installed (`cargo xtask test` sets it up).
pub fn python() -> PathBuf {
    std::env::var_os("ENERGY_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// A script of tests/py.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("py").join(name)
}

/// A TCP port that was free a moment ago (and its neighbour, for OTLP/HTTP).
pub fn free_port_pair() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = a.local_addr().unwrap().port();
        if port < 65535 && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// Polls `check` until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts a peer of tests/py (stdout piped) and waits for its "ready" line; what it
/// prints after that is left in its stdout.
pub fn start_peer(command: &mut Command, name: &str) -> Child {
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap_or_else(|e| {
        panic!("starting {name} (cargo xtask test installs its packages): {e}")
    });
    let mut byte = [0u8; 1];
    let mut line = Vec::new();
    let stdout = child.stdout.as_mut().expect("its stdout");
    // Byte by byte, so that nothing after the line is read into a buffer and lost.
    while stdout.read(&mut byte).is_ok_and(|n| n == 1) && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    assert_eq!(
        String::from_utf8_lossy(&line).trim(),
        "ready",
        "{name} did not start"
    );
    child
}

/// The recording backend.
pub struct Backend {
    child: Child,
    /// Its JSON-lines file.
    pub out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Backend {
    /// Starts the backend on `port` and waits until it serves.
    pub fn start(port: u16) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("received.jsonl");
        Self::start_into(port, out, dir)
    }

    fn start_into(port: u16, out: PathBuf, dir: tempfile::TempDir) -> Self {
        let child = start_peer(
            Command::new(python())
                .arg(script("backend.py"))
                .arg(port.to_string())
                .arg(&out),
            "backend.py",
        );
        Self {
            child,
            out,
            _dir: dir,
        }
    }

    /// Everything received so far of `signal` (span, metric, log).
    pub fn received(&self, signal: &str) -> Vec<serde_json::Value> {
        received(&self.out, signal)
    }
}

/// The lines of a peer's JSON-lines file whose `signal` is `signal`.
fn received(out: &Path, signal: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["signal"] == signal)
        .collect()
}

/// The OTLP backend behind TLS (tests/py/tls_sink.py), gRPC or HTTP, optionally
/// requiring a client certificate.
pub struct TlsSink {
    child: Child,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl TlsSink {
    /// Starts it on `port` (`protocol` grpc or http) with the server certificate and
    /// key; with `client_ca`, clients must present a certificate it signed.
    pub fn start(
        protocol: &str,
        port: u16,
        (cert, key): (&Path, &Path),
        client_ca: Option<&Path>,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("received.jsonl");
        let mut command = Command::new(python());
        command
            .arg(script("tls_sink.py"))
            .arg(protocol)
            .arg(port.to_string())
            .arg(&out)
            .arg(cert)
            .arg(key);
        command.args(client_ca);
        let child = start_peer(&mut command, "tls_sink.py");
        Self {
            child,
            out,
            _dir: dir,
        }
    }

    /// Everything received so far of `signal` (span, metric, log).
    pub fn received(&self, signal: &str) -> Vec<serde_json::Value> {
        received(&self.out, signal)
    }
}

impl Drop for TlsSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a script of tests/py to its end; returns the JSON it printed.
pub fn run_script<S: AsRef<std::ffi::OsStr>>(name: &str, args: &[S]) -> serde_json::Value {
    let out = Command::new(python())
        .arg(script(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{name}'s report: {e}"))
}

/// Runs the inference server against `endpoint`; returns its report (pid, requests).
pub fn inference_server(
    endpoint: &str,
    protocol: &str,
    requests: u32,
    unit_s: f64,
    extra: &[&str],
) -> serde_json::Value {
    let (requests, unit_s) = (requests.to_string(), unit_s.to_string());
    let mut args = vec![endpoint, protocol, &requests, &unit_s];
    args.extend_from_slice(extra);
    run_script("inference_server.py", &args)
}
