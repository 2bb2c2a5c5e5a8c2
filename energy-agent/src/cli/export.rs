//! The export and receive flags of `run` (and the OTLP flags `measure` shares), turned
//! into the plain [`ExportConfig`] the topology starts.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::Args;

use crate::{
    export::forward::{self, ForwardConfig, Protocol},
    receive::{
        enricher::{EnrichConfig, ServiceRule},
        server::ReceiverConfig,
        spans::Selection,
    },
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
}

impl OtlpArgs {
    /// The forwarding settings (queue bound `queue`), when an endpoint is set.
    pub fn forward_config(&self, queue: usize) -> anyhow::Result<Option<ForwardConfig>> {
        let Some(endpoint) = &self.otlp_endpoint else {
            return Ok(None);
        };
        let headers = match &self.otlp_headers {
            Some(h) => forward::parse_headers(h).map_err(anyhow::Error::msg)?,
            None => Vec::new(),
        };
        let endpoint = if endpoint.contains("://") {
            endpoint.clone()
        } else {
            format!("http://{endpoint}")
        };
        Ok(Some(ForwardConfig {
            endpoint,
            protocol: self.otlp_protocol,
            headers,
            timeout: Duration::from_millis(self.otlp_timeout.max(1)),
            max_queued_items: queue.max(1),
        }))
    }
}

/// Export and receive flags of `run`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// OTLP destination. Setting an endpoint enables the receiver.
    #[command(flatten)]
    pub otlp: OtlpArgs,
    /// Items (spans, data points, log records) the forward queue holds while the
    /// downstream is unavailable; older items are dropped past it, and counted.
    #[arg(long, default_value_t = 200_000, help_heading = "Export")]
    pub otlp_queue: usize,
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

/// The default `--receive`: used only when an endpoint is set.
const DEFAULT_RECEIVE: &str = "127.0.0.1:4317";

impl ExportArgs {
    /// The exporters these flags ask for; `interval` is the sampling interval (a span
    /// waits at most one interval plus `--hold-margin` for its energy).
    pub fn export_config(&self, interval: Duration) -> anyhow::Result<ExportConfig> {
        let forward = self.otlp.forward_config(self.otlp_queue)?;
        if forward.is_none() && self.receive != DEFAULT_RECEIVE && self.receive != "off" {
            anyhow::bail!(
                "--receive needs --otlp-endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT): enriched spans must go somewhere"
            );
        }
        let receive = match (&forward, self.receive.as_str()) {
            (Some(_), receive) if receive != "off" => Some(self.receive_config(interval)?),
            _ => None,
        };
        Ok(ExportConfig {
            forward,
            metrics_interval: self.metrics_interval,
            receive,
            prometheus: self.prometheus,
            metrics_top: self.metrics_top,
        })
    }

    fn receive_config(&self, interval: Duration) -> anyhow::Result<ReceiveConfig> {
        let receive = &self.receive;
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
            },
            enrich: EnrichConfig {
                selection: self.enrich.clone(),
                services: self.services.clone(),
                max_delay: interval + self.hold_margin,
                max_held_spans: self.max_held_spans,
                proc_root: PathBuf::from("/proc"),
            },
        })
    }
}
