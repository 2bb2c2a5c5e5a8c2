//! `run`'s exporters: the OTLP receiver with span enrichment and forwarding, OTLP
//! metrics, and the Prometheus endpoint. They read what the interval loop produces; a
//! scrape or a push never triggers a sample.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use clap::Args;
use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    attribute::{IntervalReport, requests::IntervalRecord},
    clock::WallClock,
    export::{
        forward::{self, ForwardConfig, Forwarder, Payload, Protocol},
        metrics::{self, MetricsState},
        otlp::OtlpMetrics,
    },
    receive::{
        enricher::{EnrichConfig, Enricher, ServiceRule},
        server::{Incoming, ReceiverConfig},
        spans::Selection,
    },
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

impl ExportArgs {
    /// Whether any exporter is configured (then `run` prints no table by default).
    pub fn any(&self) -> bool {
        self.otlp.otlp_endpoint.is_some() || self.prometheus.is_some()
    }
}

/// Messages from the interval loop to the enrichment task.
pub enum ToEnricher {
    /// A new attributed interval.
    Interval(IntervalRecord),
    /// Release everything held, then answer.
    Flush(oneshot::Sender<()>),
}

/// The running exporters.
pub struct Exporters {
    metrics: Arc<Mutex<MetricsState>>,
    otlp_metrics: Option<OtlpMetrics>,
    enricher: Option<mpsc::UnboundedSender<ToEnricher>>,
    forwarder: Option<Forwarder>,
    shutdown: watch::Sender<bool>,
    clock: WallClock,
}

impl Exporters {
    /// Starts what `args` configure (inside the tokio runtime).
    pub async fn start(
        args: &ExportArgs,
        interval: Duration,
        clock: WallClock,
    ) -> anyhow::Result<Self> {
        let metrics = Arc::new(Mutex::new(MetricsState::new(args.metrics_top)));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let forward = args.otlp.forward_config(args.otlp_queue)?;
        if args.otlp.otlp_endpoint.is_none()
            && args.receive != "127.0.0.1:4317"
            && args.receive != "off"
        {
            anyhow::bail!(
                "--receive needs --otlp-endpoint (or OTEL_EXPORTER_OTLP_ENDPOINT): enriched spans must go somewhere"
            );
        }
        let forwarder = forward.clone().map(forward::spawn);
        let otlp_metrics = forwarder.as_ref().map(|fwd| {
            OtlpMetrics::start(fwd.clone(), args.metrics_interval, metrics.clone(), clock)
        });
        let enricher = match (&forwarder, args.receive.as_str()) {
            (Some(fwd), receive) if receive != "off" => {
                let grpc: SocketAddr = receive.parse().with_context(|| {
                    format!("--receive {receive:?} is not an address (or `off`)")
                })?;
                let http = args
                    .receive_http
                    .unwrap_or_else(|| SocketAddr::new(grpc.ip(), grpc.port().wrapping_add(1)));
                let (in_tx, in_rx) = mpsc::unbounded_channel();
                let bound = crate::receive::server::start(
                    ReceiverConfig {
                        grpc,
                        http,
                        max_message_bytes: args.max_message_bytes,
                        proc_root: PathBuf::from("/proc"),
                    },
                    in_tx,
                    shutdown_rx,
                )
                .await?;
                log::info!(
                    "OTLP receiver on grpc {} and http {}",
                    bound.grpc,
                    bound.http
                );
                eprintln!(
                    "energy-agent: receiving OTLP on {} (gRPC) and {} (HTTP)",
                    bound.grpc, bound.http
                );
                let enricher = Enricher::new(
                    EnrichConfig {
                        selection: args.enrich.clone(),
                        services: args.services.clone(),
                        max_delay: interval + args.hold_margin,
                        max_held_spans: args.max_held_spans,
                        proc_root: PathBuf::from("/proc"),
                    },
                    // History long enough for the longest requests worth enriching.
                    ((Duration::from_secs(600).as_secs_f64() / interval.as_secs_f64()).ceil()
                        as usize)
                        .max(16),
                );
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(enrich_task(
                    enricher,
                    in_rx,
                    rx,
                    fwd.clone(),
                    metrics.clone(),
                ));
                Some(tx)
            }
            _ => None,
        };
        if let Some(addr) = args.prometheus {
            let bound =
                crate::export::prometheus::serve(addr, metrics.clone(), shutdown.subscribe())
                    .await?;
            eprintln!("energy-agent: Prometheus metrics on http://{bound}/metrics");
        }
        Ok(Self {
            metrics,
            otlp_metrics,
            enricher,
            forwarder,
            shutdown,
            clock,
        })
    }

    /// Whether spans are being received (and enriched).
    pub fn receiving(&self) -> bool {
        self.enricher.is_some()
    }

    /// Takes a finished interval: metrics, and the record the enricher waits for.
    pub fn observe(&self, report: &IntervalReport, lag: Duration) {
        if let Ok(mut m) = self.metrics.lock() {
            m.observe(report);
            m.set_value(metrics::AGENT_LAG, &[], lag.as_secs_f64());
        }
        if let Some(tx) = &self.enricher {
            let _ = tx.send(ToEnricher::Interval(IntervalRecord::from_report(
                report,
                &self.clock,
            )));
        }
    }

    /// Releases held spans, queues a last metrics push, drains the forward queue
    /// (bounded wait).
    pub async fn shutdown(self) {
        if let Some(tx) = &self.enricher {
            let (ack, done) = oneshot::channel();
            if tx.send(ToEnricher::Flush(ack)).is_ok() {
                let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
            }
        }
        if let Some(m) = self.otlp_metrics {
            m.shutdown();
        }
        let _ = self.shutdown.send(true);
        if let Some(f) = &self.forwarder {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while f.stats.queued.load(std::sync::atomic::Ordering::Relaxed) > 0
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn enrich_task(
    mut enricher: Enricher,
    mut incoming: mpsc::UnboundedReceiver<Incoming>,
    mut control: mpsc::UnboundedReceiver<ToEnricher>,
    forwarder: Forwarder,
    metrics: Arc<Mutex<MetricsState>>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        let released = tokio::select! {
            msg = incoming.recv() => match msg {
                Some(Incoming::Traces(r, origin)) => enricher.accept(r, origin),
                Some(Incoming::Metrics(m)) => {
                    forwarder.send(Payload::Metrics(m));
                    Vec::new()
                }
                Some(Incoming::Logs(l)) => {
                    forwarder.send(Payload::Logs(l));
                    Vec::new()
                }
                None => enricher.release(true),
            },
            msg = control.recv() => match msg {
                Some(ToEnricher::Interval(record)) => enricher.on_interval(record),
                Some(ToEnricher::Flush(ack)) => {
                    for r in enricher.release(true) {
                        forwarder.send(Payload::Traces(r));
                    }
                    record(&mut enricher, &forwarder, &metrics);
                    let _ = ack.send(());
                    Vec::new()
                }
                None => break,
            },
            _ = tick.tick() => enricher.release(false),
        };
        for r in released {
            forwarder.send(Payload::Traces(r));
        }
        record(&mut enricher, &forwarder, &metrics);
    }
}

/// Moves the enricher's and forwarder's counters into the metrics.
fn record(enricher: &mut Enricher, forwarder: &Forwarder, metrics: &Mutex<MetricsState>) {
    use std::sync::atomic::Ordering::Relaxed;
    let requests = enricher.take_requests();
    let s = enricher.stats;
    let Ok(mut m) = metrics.lock() else { return };
    for (model, joules) in &requests {
        m.observe_request(model, *joules);
    }
    for (state, v) in [
        ("received", s.received),
        ("enriched", s.enriched),
        ("unattributed", s.unattributed),
        ("overflowed", s.overflowed),
        ("nested", s.nested),
    ] {
        m.set_value(metrics::AGENT_SPANS, &[("state", state)], v as f64);
    }
    m.set_value(metrics::AGENT_SPANS_HELD, &[], s.held as f64);
    m.set_value(
        metrics::AGENT_OTLP_QUEUED,
        &[],
        forwarder.stats.queued.load(Relaxed) as f64,
    );
    m.set_value(
        metrics::AGENT_OTLP_DROPPED,
        &[],
        forwarder.stats.dropped.load(Relaxed) as f64,
    );
    m.set_value(
        metrics::AGENT_OTLP_FORWARDED,
        &[],
        forwarder.stats.forwarded.load(Relaxed) as f64,
    );
}
