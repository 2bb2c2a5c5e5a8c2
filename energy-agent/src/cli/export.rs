//! The export and receive flags of `run` (and the OTLP flags `measure` shares), turned
//! into the plain [`ExportConfig`] the topology starts.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;

use crate::{
    export::forward::{self, ForwardConfig, Protocol},
    listen::{Limits, ListenConfig},
    receive::{
        enricher::{EnrichConfig, ServiceRule},
        server::ReceiverConfig,
        spans::Selection,
    },
    tls::{client::ClientTls, server::ServerTls},
    topology::{ExportConfig, ReceiveConfig},
};

/// Where OTLP goes (`run` forwards there; `measure` sends its span there).
#[derive(Debug, Clone, Args)]
pub struct OtlpArgs {
    /// Where to send OTLP; standard OTEL_EXPORTER_OTLP_* variables apply.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", help_heading = "Export")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport: grpc or http/protobuf.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "grpc", value_parser = parse_protocol, help_heading = "Export")]
    pub otlp_protocol: Protocol,
    /// OTLP headers, `key=value,key2=value2`.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_HEADERS",
        hide_env_values = true,
        help_heading = "Export"
    )]
    pub otlp_headers: Option<String>,
    /// OTLP request timeout, milliseconds.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_TIMEOUT",
        default_value_t = 10_000,
        help_heading = "Export"
    )]
    pub otlp_timeout: u64,
    /// CA certificates (PEM) that an https:// endpoint's certificate must chain to,
    /// instead of the system's roots.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_CERTIFICATE",
        value_name = "FILE",
        help_heading = "Export"
    )]
    pub otlp_certificate: Option<PathBuf>,
    /// Client certificate chain (PEM) presented to an https:// endpoint (mTLS).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        value_name = "FILE",
        help_heading = "Export"
    )]
    pub otlp_client_certificate: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        value_name = "FILE",
        help_heading = "Export"
    )]
    pub otlp_client_key: Option<PathBuf>,
    /// An endpoint given without a scheme is plaintext (http://) rather than TLS
    /// (https://); an explicit scheme always wins.
    #[arg(
        long,
        env = "OTEL_EXPORTER_OTLP_INSECURE",
        num_args = 0..=1,
        default_value = "false",
        default_missing_value = "true",
        value_parser = parse_otel_bool,
        help_heading = "Export"
    )]
    pub otlp_insecure: bool,
}

/// An OpenTelemetry boolean setting: `true` in any case is true, anything else false
/// (the SDK configuration specification).
fn parse_otel_bool(s: &str) -> Result<bool, String> {
    Ok(s.trim().eq_ignore_ascii_case("true"))
}

/// The endpoint as a URL: with its scheme as given; without one, `https://` unless
/// `insecure` (OTEL_EXPORTER_OTLP_INSECURE), as the OpenTelemetry SDKs read it.
pub fn endpoint_url(endpoint: &str, insecure: bool) -> anyhow::Result<String> {
    match endpoint.split_once("://") {
        Some((scheme, _))
            if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") =>
        {
            Ok(endpoint.to_string())
        }
        Some((scheme, _)) => anyhow::bail!(
            "OTLP endpoint {endpoint:?}: unsupported scheme {scheme:?} (http or https)"
        ),
        None if insecure => Ok(format!("http://{endpoint}")),
        None => Ok(format!("https://{endpoint}")),
    }
}

impl OtlpArgs {
    /// The forwarding settings (queue bound `queue` items, `concurrency` exports in
    /// flight), when an endpoint is set.
    pub fn forward_config(
        &self,
        queue: usize,
        concurrency: usize,
    ) -> anyhow::Result<Option<ForwardConfig>> {
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(None);
        };
        let headers = match &self.otlp_headers {
            Some(h) => forward::parse_headers(h).map_err(anyhow::Error::msg)?,
            None => Vec::new(),
        };
        let endpoint = endpoint_url(endpoint, self.otlp_insecure)?;
        let tls = ClientTls {
            ca: self.otlp_certificate.clone(),
            cert: self.otlp_client_certificate.clone(),
            key: self.otlp_client_key.clone(),
        };
        let plaintext = endpoint
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("http://"));
        if plaintext && tls != ClientTls::default() {
            log::warn!(
                "--otlp-certificate / --otlp-client-* are set but the endpoint {endpoint} is http://: the connection is not encrypted (use https://)"
            );
        }
        let config = ForwardConfig {
            endpoint,
            protocol: self.otlp_protocol,
            headers,
            timeout: Duration::from_millis(self.otlp_timeout.max(1)),
            max_queued_items: queue.max(1),
            concurrency: concurrency.max(1),
            tls,
        };
        config.check()?;
        Ok(Some(config))
    }
}

/// Export and receive flags of `run`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// OTLP destination. Setting an endpoint enables the receiver.
    #[command(flatten)]
    pub otlp: OtlpArgs,
    /// Items (spans, data points, log records) accepted and not yet forwarded: waiting
    /// for enrichment, held, or queued while the downstream is slow or down. Past it the
    /// receiver answers with OTLP's throttling reply, which senders retry; older pushes
    /// of the agent's own metrics are dropped past it, and counted.
    #[arg(long, default_value_t = 200_000, help_heading = "Export")]
    pub otlp_queue: usize,
    /// Memory, bytes, that what was accepted and not yet forwarded may take (decoded
    /// while it waits for enrichment, encoded once queued); the same throttling past it.
    #[arg(long, default_value_t = DEFAULT_QUEUE_BYTES, help_heading = "Export")]
    pub otlp_queue_bytes: usize,
    /// Exports to --otlp-endpoint in flight at once.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64), help_heading = "Export")]
    pub otlp_concurrency: u16,
    /// How often the agent's own metrics are pushed over OTLP.
    #[arg(long, default_value = "10s", value_parser = super::parse_duration, help_heading = "Export")]
    pub metrics_interval: Duration,
    /// OTLP/gRPC receiver address (`off` to disable); OTLP/HTTP listens on the next port.
    #[arg(long, default_value = "127.0.0.1:4317", help_heading = "Receive")]
    pub receive: String,
    /// OTLP/HTTP receiver address (default: the gRPC port + 1).
    #[arg(long, help_heading = "Receive")]
    pub receive_http: Option<SocketAddr>,
    /// Largest accepted OTLP message, bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024, help_heading = "Receive")]
    pub max_message_bytes: usize,
    /// Which spans are requests: default (SERVER spans and gen_ai.* spans), all,
    /// server, gen_ai, or name=REGEX. Only the root-most request of a trace is enriched.
    #[arg(long, default_value = "default", value_parser = parse_selection, help_heading = "Receive")]
    pub enrich: Selection,
    /// Spans of service NAME come from the process whose command line matches REGEX
    /// (when the resource has no process.pid and the connection is not local).
    #[arg(long = "service", value_name = "NAME=REGEX", value_parser = parse_service, help_heading = "Receive")]
    pub services: Vec<ServiceRule>,
    /// Extra time a span may wait, past one interval, for its interval's energy.
    #[arg(long, default_value = "1s", value_parser = super::parse_duration, help_heading = "Receive")]
    pub hold_margin: Duration,
    /// While receiving spans, how finely the probe is read within an interval, so each
    /// request gets its thread's CPU time within the request itself.
    #[arg(long, default_value = "100ms", value_parser = super::parse_duration, help_heading = "Receive")]
    pub request_resolution: Duration,
    /// Spans held at once; past it batches are forwarded unenriched and counted.
    #[arg(long, default_value_t = 100_000, help_heading = "Receive")]
    pub max_held_spans: usize,
    /// Serve Prometheus metrics at ADDR (default when given without a value:
    /// 127.0.0.1:9464).
    #[arg(long, num_args = 0..=1, default_missing_value = "127.0.0.1:9464", help_heading = "Export")]
    pub prometheus: Option<SocketAddr>,
    /// Serve liveness and readiness (`/healthz`, `/readyz`) at ADDR (default when given
    /// without a value: 127.0.0.1:9465); the Prometheus listener serves them too.
    #[arg(long, num_args = 0..=1, default_missing_value = crate::export::health::DEFAULT_ADDR, help_heading = "Export")]
    pub health: Option<SocketAddr>,
    /// Per-process metric series per interval: the top N by energy (and every process a
    /// model rule matched); the rest are summed as process.pid="other".
    #[arg(long, default_value_t = 20, help_heading = "Export")]
    pub metrics_top: usize,
    /// TLS, mTLS and bearer token of the OTLP receiver (both ports).
    #[command(flatten)]
    pub receive_security: ReceiveSecurity,
    /// TLS, mTLS and bearer token of the Prometheus endpoint.
    #[command(flatten)]
    pub prometheus_security: PrometheusSecurity,
    /// Limits of every listener.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// `--receive-tls-*`, `--receive-client-ca`, `--receive-token-file`.
#[derive(Debug, Clone, Default, Args)]
pub struct ReceiveSecurity {
    /// Serve the OTLP receiver over TLS with this certificate chain (PEM); reloaded when
    /// the file changes and on SIGHUP.
    #[arg(
        long,
        value_name = "FILE",
        requires = "receive_tls_key",
        help_heading = "Receive"
    )]
    pub receive_tls_cert: Option<PathBuf>,
    /// The receiver certificate's private key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        requires = "receive_tls_cert",
        help_heading = "Receive"
    )]
    pub receive_tls_key: Option<PathBuf>,
    /// Require senders to present a client certificate signed by one of these CAs (PEM):
    /// mutual TLS.
    #[arg(
        long,
        value_name = "FILE",
        requires = "receive_tls_cert",
        help_heading = "Receive"
    )]
    pub receive_client_ca: Option<PathBuf>,
    /// Require `authorization: Bearer TOKEN`, TOKEN one of the file's lines (at least 16
    /// characters each); others get UNAUTHENTICATED / 401.
    #[arg(long, value_name = "FILE", help_heading = "Receive")]
    pub receive_token_file: Option<PathBuf>,
}

/// `--prometheus-tls-*`, `--prometheus-client-ca`, `--prometheus-token-file`.
#[derive(Debug, Clone, Default, Args)]
pub struct PrometheusSecurity {
    /// Serve /metrics over TLS with this certificate chain (PEM).
    #[arg(
        long,
        value_name = "FILE",
        requires = "prometheus_tls_key",
        help_heading = "Export"
    )]
    pub prometheus_tls_cert: Option<PathBuf>,
    /// Its private key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        requires = "prometheus_tls_cert",
        help_heading = "Export"
    )]
    pub prometheus_tls_key: Option<PathBuf>,
    /// Require scrapers to present a client certificate signed by these CAs (PEM).
    #[arg(
        long,
        value_name = "FILE",
        requires = "prometheus_tls_cert",
        help_heading = "Export"
    )]
    pub prometheus_client_ca: Option<PathBuf>,
    /// Require `Authorization: Bearer TOKEN` on /metrics (Prometheus'
    /// `authorization: credentials_file`), TOKEN one of the file's lines.
    #[arg(long, value_name = "FILE", help_heading = "Export")]
    pub prometheus_token_file: Option<PathBuf>,
}

/// Limits of every listener (the receiver's two ports, /metrics), each its own.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Connections open at once per listener; past it a new one is closed at once.
    #[arg(long, default_value_t = Limits::default().max_connections, help_heading = "Receive")]
    pub listen_max_connections: usize,
    /// Requests in progress at once per listener; past it a request gets the
    /// throttling answer (RESOURCE_EXHAUSTED with RetryInfo / 429 with Retry-After).
    #[arg(long, default_value_t = Limits::default().max_concurrent_requests, help_heading = "Receive")]
    pub listen_max_requests: usize,
    /// Longest a request may take, body included.
    #[arg(long, default_value = "30s", value_parser = super::parse_duration, help_heading = "Receive")]
    pub listen_request_timeout: Duration,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            max_connections: self.listen_max_connections.max(1),
            max_concurrent_requests: self.listen_max_requests.max(1),
            request_timeout: self.listen_request_timeout.max(Duration::from_millis(1)),
            ..Limits::default()
        }
    }
}

/// One listener's settings from its four flags and the shared limits.
fn listen_config(
    (cert, key, client_ca): (&Option<PathBuf>, &Option<PathBuf>, &Option<PathBuf>),
    token_file: &Option<PathBuf>,
    limits: Limits,
) -> ListenConfig {
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(ServerTls {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: client_ca.clone(),
        }),
        // clap's `requires` makes these go together.
        _ => None,
    };
    ListenConfig {
        tls,
        token_file: token_file.clone(),
        limits,
    }
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    s.parse()
}

fn parse_selection(s: &str) -> Result<Selection, String> {
    s.parse()
}

fn parse_service(s: &str) -> Result<ServiceRule, String> {
    s.parse()
}

/// The default `--otlp-queue-bytes`.
const DEFAULT_QUEUE_BYTES: usize = 16 * 1024 * 1024;

/// The default `--receive`: used only when an endpoint is set.
const DEFAULT_RECEIVE: &str = "127.0.0.1:4317";

impl ExportArgs {
    /// The exporters these flags ask for; `interval` is the sampling interval (a span
    /// waits at most one interval plus `--hold-margin` for its energy).
    pub fn export_config(&self, interval: Duration) -> anyhow::Result<ExportConfig> {
        let forward = self
            .otlp
            .forward_config(self.otlp_queue, usize::from(self.otlp_concurrency))?;
        if forward.is_none() && self.receive != DEFAULT_RECEIVE && self.receive != "off" {
            anyhow::bail!(
                "--receive needs --otlp-endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT): enriched spans must go somewhere"
            );
        }
        let receive = match (&forward, self.receive.as_str()) {
            (Some(_), receive) if receive != "off" => Some(self.receive_config(interval)?),
            _ => None,
        };
        let p = &self.prometheus_security;
        Ok(ExportConfig {
            forward,
            metrics_interval: self.metrics_interval,
            receive,
            prometheus: self.prometheus,
            prometheus_listen: listen_config(
                (
                    &p.prometheus_tls_cert,
                    &p.prometheus_tls_key,
                    &p.prometheus_client_ca,
                ),
                &p.prometheus_token_file,
                self.limits.limits(),
            ),
            metrics_top: self.metrics_top,
            record: None,
        })
    }

    fn receive_config(&self, interval: Duration) -> anyhow::Result<ReceiveConfig> {
        let receive = &self.receive;
        let r = &self.receive_security;
        let grpc: SocketAddr = receive
            .parse()
            .with_context(|| format!("--receive {receive:?} is not an address (or `off`)"))?;
        let http = self
            .receive_http
            .unwrap_or_else(|| SocketAddr::new(grpc.ip(), grpc.port().wrapping_add(1)));
        Ok(ReceiveConfig {
            receiver: ReceiverConfig {
                grpc,
                http,
                max_message_bytes: self.max_message_bytes,
                proc_root: PathBuf::from("/proc"),
                listen: listen_config(
                    (
                        &r.receive_tls_cert,
                        &r.receive_tls_key,
                        &r.receive_client_ca,
                    ),
                    &r.receive_token_file,
                    self.limits.limits(),
                ),
            },
            enrich: EnrichConfig {
                selection: self.enrich.clone(),
                services: self.services.clone(),
                max_delay: interval + self.hold_margin,
                max_held_spans: self.max_held_spans,
                proc_root: PathBuf::from("/proc"),
            },
            max_pending_items: self.otlp_queue.max(1),
            max_pending_bytes: self.otlp_queue_bytes.max(1),
        })
    }
}
