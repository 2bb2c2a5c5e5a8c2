//! `run`'s exporters and their wiring: the OTLP receiver feeding the enricher, which
//! hands enriched spans to the forwarder; OTLP metrics; the Prometheus endpoint. They
//! read what the interval loop produces; a scrape or a push never triggers a sample.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{mpsc, oneshot, watch};

use crate::{
    carbon::CarbonReport,
    clock::WallClock,
    export::{
        forward::{self, ForwardConfig, Forwarder, Payload},
        health::Health,
        metrics::{self, MetricsState},
        otlp::OtlpMetrics,
    },
    receive::{
        enricher::{EnrichConfig, Enricher},
        server::{Incoming, ReceiverConfig},
    },
    requests::IntervalRecord,
};

/// What `run` exports, and where from.
#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// Where OTLP goes (enriched spans, passed-through metrics and logs, our metrics).
    pub forward: Option<ForwardConfig>,
    /// How often the agent's own metrics are pushed over OTLP.
    pub metrics_interval: Duration,
    /// The OTLP receiver and the enrichment of what it receives (needs `forward`).
    pub receive: Option<ReceiveConfig>,
    /// Serve Prometheus metrics here.
    pub prometheus: Option<SocketAddr>,
    /// Per-process metric series per interval.
    pub metrics_top: usize,
}

/// The OTLP receiver and the enricher behind it.
#[derive(Clone, Debug)]
pub struct ReceiveConfig {
    /// Listeners.
    pub receiver: ReceiverConfig,
    /// Which spans are requests and how long they are held.
    pub enrich: EnrichConfig,
}

impl ExportConfig {
    /// Whether any exporter is configured (then `run` prints no table by default).
    pub fn any(&self) -> bool {
        self.forward.is_some() || self.prometheus.is_some()
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
    /// Starts what `config` asks for (inside the tokio runtime); `interval` is the
    /// sampling interval, which bounds how long the enricher keeps history; `health` is
    /// served beside the Prometheus metrics.
    pub async fn start(
        config: &ExportConfig,
        interval: Duration,
        clock: WallClock,
        health: &Health,
    ) -> anyhow::Result<Self> {
        let metrics = Arc::new(Mutex::new(MetricsState::new(config.metrics_top)));
        let (shutdown, _) = watch::channel(false);
        let forwarder = config.forward.clone().map(forward::spawn);
        let otlp_metrics = forwarder.as_ref().map(|fwd| {
            OtlpMetrics::start(fwd.clone(), config.metrics_interval, metrics.clone(), clock)
        });
        let enricher = match (&forwarder, &config.receive) {
            (Some(forwarder), Some(receive)) => {
                let sinks = EnrichSinks {
                    forwarder: forwarder.clone(),
                    metrics: metrics.clone(),
                };
                Some(start_receiving(receive, interval, sinks, shutdown.subscribe()).await?)
            }
            _ => None,
        };
        if let Some(addr) = config.prometheus {
            let bound = crate::export::prometheus::serve(
                addr,
                metrics.clone(),
                health,
                shutdown.subscribe(),
            )
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
    pub fn observe(&self, report: &CarbonReport, lag: Duration) {
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

    /// Publishes the running loop's failure counts (`energy_agent.errors`).
    pub fn observe_faults(&self, faults: &super::faults::Faults) {
        if let Ok(mut m) = self.metrics.lock() {
            for (component, n) in faults.totals() {
                m.set_value(metrics::AGENT_ERRORS, &[("component", component)], n as f64);
            }
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

/// Where the enrichment task's output goes.
struct EnrichSinks {
    forwarder: Forwarder,
    metrics: Arc<Mutex<MetricsState>>,
}

/// Binds the OTLP listeners and starts the task that enriches what they receive;
/// returns the channel the interval loop feeds it through.
async fn start_receiving(
    config: &ReceiveConfig,
    interval: Duration,
    sinks: EnrichSinks,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<mpsc::UnboundedSender<ToEnricher>> {
    let (in_tx, in_rx) = mpsc::unbounded_channel();
    let bound = crate::receive::server::start(config.receiver.clone(), in_tx, shutdown).await?;
    log::info!(
        "OTLP receiver on grpc {} and http {}",
        bound.grpc,
        bound.http
    );
    eprintln!(
        "energy-agent: receiving OTLP on {} (gRPC) and {} (HTTP)",
        bound.grpc, bound.http
    );
    let enricher = Enricher::new(config.enrich.clone(), history_intervals(interval));
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(enrich_task(enricher, in_rx, rx, sinks));
    Ok(tx)
}

/// Intervals of history the enricher keeps: enough for the longest requests worth
/// enriching (10 minutes), and at least 16.
fn history_intervals(interval: Duration) -> usize {
    ((Duration::from_secs(600).as_secs_f64() / interval.as_secs_f64()).ceil() as usize).max(16)
}

/// Moves received batches through the enricher to the forwarder as intervals arrive.
async fn enrich_task(
    mut enricher: Enricher,
    mut incoming: mpsc::UnboundedReceiver<Incoming>,
    mut control: mpsc::UnboundedReceiver<ToEnricher>,
    sinks: EnrichSinks,
) {
    let EnrichSinks { forwarder, metrics } = sinks;
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
