//! `run`'s exporters and their wiring: the OTLP receiver feeding the enricher, which
//! hands enriched spans to the forwarder; OTLP metrics; the Prometheus endpoint. They
//! read what the interval loop produces; a scrape or a push never triggers a sample.
//!
//! Every hand-off on the OTLP path is bounded: the receiver takes a share of one
//! budget (`--otlp-queue` items, `--otlp-queue-bytes` bytes) for each request before it
//! answers OK, and the share is given back only when the forwarder is done with the
//! request, so what waits for the enricher, what it holds and what waits for the
//! downstream are all within it; the interval loop's records reach the enricher through
//! a bounded channel too.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use serde_json::{Value, json};
use tokio::sync::{
    mpsc::{self, error::TrySendError},
    oneshot, watch,
};

use crate::{
    carbon::CarbonReport,
    clock::WallClock,
    export::{
        forward::{self, ForwardConfig, Forwarder, Payload},
        health::Health,
        metrics::{self, MetricsState},
        otlp::OtlpMetrics,
    },
    history::{HistorySink, IntervalRow, RecordConfig, RunInfo, RunKind},
    listen::{self, Guard, ListenConfig},
    receive::{
        admission::{Admitted, Budget, Signal},
        enricher::{EnrichConfig, Enricher},
        server::{Bound, Incoming, Intake, ReceiverConfig},
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
    /// The Prometheus endpoint's TLS, token and limits.
    pub prometheus_listen: ListenConfig,
    /// Per-process metric series per interval.
    pub metrics_top: usize,
    /// Write every interval and request to a history database (`--record`).
    pub record: Option<RecordConfig>,
}

/// The OTLP receiver and the enricher behind it.
#[derive(Clone, Debug)]
pub struct ReceiveConfig {
    /// Listeners.
    pub receiver: ReceiverConfig,
    /// Which spans are requests and how long they are held.
    pub enrich: EnrichConfig,
    /// Most items (spans, data points, log records) accepted and not yet forwarded.
    pub max_pending_items: usize,
    /// Most memory (bytes) accepted and not yet forwarded may take.
    pub max_pending_bytes: usize,
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

/// Received requests waiting for the enrichment task (each within the budget too).
const INCOMING_CAPACITY: usize = 4096;
/// Interval records waiting for the enrichment task.
const CONTROL_CAPACITY: usize = 64;

/// The enrichment task, as the interval loop sees it.
struct Receiving {
    control: mpsc::Sender<ToEnricher>,
    budget: Arc<Budget>,
    /// Interval records the full control channel could not take.
    intervals_dropped: Arc<AtomicU64>,
}

/// The running exporters.
pub struct Exporters {
    metrics: Arc<Mutex<MetricsState>>,
    otlp_metrics: Option<OtlpMetrics>,
    enricher: Option<Receiving>,
    forwarder: Option<Forwarder>,
    /// Every listener's guard (TLS, tokens, limits, what each refused).
    guards: Vec<Arc<Guard>>,
    shutdown: watch::Sender<bool>,
    clock: WallClock,
    history: Option<Arc<HistorySink>>,
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
        let history = match &config.record {
            Some(r) => Some(Arc::new(HistorySink::start(
                r,
                &RunInfo::starting_now(RunKind::Run, r, None),
            )?)),
            None => None,
        };
        let forwarder = config.forward.clone().map(forward::spawn).transpose()?;
        let otlp_metrics = forwarder.as_ref().map(|fwd| {
            OtlpMetrics::start(
                fwd.clone(),
                config.metrics_interval,
                metrics.clone(),
                clock.clone(),
            )
        });
        let mut guards = Vec::new();
        let enricher = match (&forwarder, &config.receive) {
            (Some(forwarder), Some(receive)) => {
                let sinks = EnrichSinks {
                    forwarder: forwarder.clone(),
                    metrics: metrics.clone(),
                    history: history.clone(),
                };
                let (receiving, bound) =
                    start_receiving(receive, interval, sinks, shutdown.subscribe()).await?;
                guards.extend([bound.grpc_guard, bound.http_guard]);
                Some(receiving)
            }
            _ => None,
        };
        if let Some(addr) = config.prometheus {
            let listen = &config.prometheus_listen;
            let (bound, guard) = crate::export::prometheus::serve(
                addr,
                listen,
                metrics.clone(),
                health,
                shutdown.subscribe(),
            )
            .await?;
            eprintln!(
                "energy-agent: Prometheus metrics on {}://{bound}/metrics ({})",
                guard.scheme(),
                listen::describe(&guard)
            );
            guards.push(guard);
        }
        listen::spawn_reloader(guards.clone(), shutdown.subscribe());
        Ok(Self {
            metrics,
            otlp_metrics,
            enricher,
            forwarder,
            guards,
            shutdown,
            clock,
            history,
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
            record_listeners(&self.guards, &mut m);
            if let Some(f) = &self.forwarder {
                record_flow(f, self.enricher.as_ref(), &mut m);
            }
        }
        if let Some(r) = &self.enricher {
            let record = IntervalRecord::from_report(report, &self.clock);
            if let Err(TrySendError::Full(_)) = r.control.try_send(ToEnricher::Interval(record)) {
                r.intervals_dropped.fetch_add(1, Relaxed);
                log::warn!(
                    "the enricher is {CONTROL_CAPACITY} intervals behind: an interval's energy is not available to spans (energy_agent_enricher_intervals_dropped_total)"
                );
            }
        }
        if let Some(h) = &self.history {
            h.interval(IntervalRow::from_report(report, &self.clock, |_| true));
        }
    }

    /// Publishes the running loop's failure counts (`energy_agent.errors`).
    pub fn observe_faults(&self, faults: &super::faults::Faults) {
        if let Ok(mut m) = self.metrics.lock() {
            for (component, n) in faults.totals() {
                m.set_value(metrics::AGENT_ERRORS, &[("component", component)], n as f64);
            }
            if let Some(h) = &self.history {
                use std::sync::atomic::Ordering::Relaxed;
                let lost = h.stats().failed.load(Relaxed) + h.stats().dropped.load(Relaxed);
                m.set_value(
                    metrics::AGENT_ERRORS,
                    &[("component", "history")],
                    lost as f64,
                );
            }
        }
    }

    /// The OTLP path's counters as `run --output json` prints them, when forwarding:
    /// `receiver` (per signal, and the budget in use; null when not receiving) and
    /// `forward`.
    pub fn otlp_json(&self) -> Option<impl Fn() -> Value + Send + 'static> {
        let forward = self.forwarder.as_ref()?.stats.clone();
        let receiver = self
            .enricher
            .as_ref()
            .map(|r| (r.budget.clone(), r.intervals_dropped.clone()));
        let guards = self.guards.clone();
        Some(move || {
            let receiver = receiver.as_ref().map(|(budget, dropped)| {
                let (items, bytes) = budget.taken();
                let mut o = json!({
                    "pending_items": items,
                    "pending_bytes": bytes,
                    "intervals_dropped": dropped.load(Relaxed),
                });
                for signal in Signal::ALL {
                    o[signal.name()] = json!(budget.stats.counts(signal));
                }
                o
            });
            let listeners: serde_json::Map<String, Value> = guards
                .iter()
                .map(|g| {
                    let rejected: serde_json::Map<String, Value> = g
                        .rejected()
                        .map(|(r, n)| (r.name().into(), json!(n)))
                        .collect();
                    (g.name().to_string(), json!({ "rejected": rejected }))
                })
                .collect();
            json!({
                "receiver": receiver,
                "listeners": listeners,
                "forward": {
                    "forwarded": forward.forwarded.load(Relaxed),
                    "queued": forward.queued.load(Relaxed),
                    "dropped": forward.dropped.load(Relaxed),
                    "rejected": forward.rejected.load(Relaxed),
                    "retries": forward.retries.load(Relaxed),
                    "failures": forward.failures.load(Relaxed),
                },
            })
        })
    }

    /// Stops the listeners (so that what the flush releases is all there is), releases
    /// held spans, queues a last metrics push, drains the forward queue (bounded wait).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Some(r) = &self.enricher {
            let (ack, done) = oneshot::channel();
            let flushed = async {
                if r.control.send(ToEnricher::Flush(ack)).await.is_ok() {
                    let _ = done.await;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), flushed).await;
        }
        if let Some(h) = self.history.clone() {
            let flushed = tokio::task::spawn_blocking(move || h.close(Duration::from_secs(1)));
            if !flushed.await.unwrap_or(false) {
                log::warn!("history: not every interval was written before the stop");
            }
        }
        if let Some(m) = self.otlp_metrics {
            m.shutdown();
        }
        if let Some(f) = &self.forwarder {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while f.stats.queued.load(Relaxed) > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Where the enrichment task's output goes.
struct EnrichSinks {
    forwarder: Forwarder,
    metrics: Arc<Mutex<MetricsState>>,
    history: Option<Arc<HistorySink>>,
}

/// Binds the OTLP listeners and starts the task that enriches what they receive;
/// returns how the interval loop feeds it.
async fn start_receiving(
    config: &ReceiveConfig,
    interval: Duration,
    sinks: EnrichSinks,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(Receiving, Bound)> {
    let (in_tx, in_rx) = mpsc::channel(INCOMING_CAPACITY);
    let budget = Budget::new(config.max_pending_items, config.max_pending_bytes);
    let intake = Intake {
        tx: in_tx,
        budget: budget.clone(),
    };
    let bound = crate::receive::server::start(config.receiver.clone(), intake, shutdown).await?;
    let scheme = bound.grpc_guard.scheme();
    eprintln!(
        "energy-agent: receiving OTLP on {scheme}://{} (gRPC) and {scheme}://{} (HTTP) ({})",
        bound.grpc,
        bound.http,
        listen::describe(&bound.grpc_guard)
    );
    let enricher = Enricher::new(config.enrich.clone(), history_intervals(interval));
    let (control, rx) = mpsc::channel(CONTROL_CAPACITY);
    tokio::spawn(enrich_task(enricher, in_rx, rx, sinks));
    let receiving = Receiving {
        control,
        budget,
        intervals_dropped: Arc::default(),
    };
    Ok((receiving, bound))
}

/// Moves what each listener refused into the metrics.
fn record_listeners(guards: &[Arc<Guard>], m: &mut MetricsState) {
    for g in guards {
        for (reason, n) in g.rejected() {
            let labels = [("listener", g.name()), ("reason", reason.name())];
            m.set_value(metrics::AGENT_LISTENER_REJECTED, &labels, n as f64);
        }
    }
}

/// Intervals of history the enricher keeps: enough for the longest requests worth
/// enriching (10 minutes), and at least 16.
fn history_intervals(interval: Duration) -> usize {
    ((Duration::from_secs(600).as_secs_f64() / interval.as_secs_f64()).ceil() as usize).max(16)
}

/// Moves received batches through the enricher to the forwarder as intervals arrive.
async fn enrich_task(
    mut enricher: Enricher,
    mut incoming: mpsc::Receiver<Incoming>,
    mut control: mpsc::Receiver<ToEnricher>,
    sinks: EnrichSinks,
) {
    let EnrichSinks {
        forwarder,
        metrics,
        history,
    } = sinks;
    let history = history.as_deref();
    let traces = |r: Admitted<ExportTraceServiceRequest>| {
        forwarder.forward(Payload::Traces(r.message), r.ticket);
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut receiving = true;
    loop {
        tokio::select! {
            msg = incoming.recv(), if receiving => match msg {
                Some(msg) => take(&mut enricher, &forwarder, msg),
                None => {
                    receiving = false;
                    enricher.release_each(true, traces);
                }
            },
            msg = control.recv() => match msg {
                Some(ToEnricher::Interval(record)) => enricher.on_interval_each(record, traces),
                Some(ToEnricher::Flush(ack)) => {
                    // What the receiver has handed on so far is released too.
                    while let Ok(msg) = incoming.try_recv() {
                        take(&mut enricher, &forwarder, msg);
                    }
                    enricher.release_each(true, traces);
                    record(&mut enricher, &metrics, history);
                    let _ = ack.send(());
                }
                None => break,
            },
            _ = tick.tick() => enricher.release_each(false, traces),
        }
        record(&mut enricher, &metrics, history);
    }
    // The agent is stopping: nothing accepted stays behind unforwarded.
    while let Ok(msg) = incoming.try_recv() {
        take(&mut enricher, &forwarder, msg);
    }
    enricher.release_each(true, traces);
}

/// Takes one received request: spans into the enricher (what it cannot hold goes on at
/// once), metrics and logs straight to the forwarder.
fn take(enricher: &mut Enricher, forwarder: &Forwarder, msg: Incoming) {
    match msg {
        Incoming::Traces(r, origin) => {
            for b in enricher.accept(r, origin) {
                forwarder.forward(Payload::Traces(b.message), b.ticket);
            }
        }
        Incoming::Metrics(m) => forwarder.forward(Payload::Metrics(m.message), m.ticket),
        Incoming::Logs(l) => forwarder.forward(Payload::Logs(l.message), l.ticket),
    }
}

/// Moves the enricher's counters into the metrics.
fn record(enricher: &mut Enricher, metrics: &Mutex<MetricsState>, history: Option<&HistorySink>) {
    let requests = enricher.take_requests();
    let s = enricher.stats;
    let Ok(mut m) = metrics.lock() else { return };
    for r in &requests {
        m.observe_request(&r.model, r.joules.get());
        m.observe_request_tokens(&r.model, r.joules.get(), r.input_tokens, r.output_tokens);
    }
    if let Some(h) = history {
        h.requests(requests);
    }
    for (state, v) in [
        ("received", s.received),
        ("enriched", s.enriched),
        ("unattributed", s.unattributed),
        ("overflowed", s.overflowed),
        ("nested", s.nested),
        ("invalid", s.invalid),
        ("duplicate", s.duplicates),
    ] {
        m.set_value(metrics::AGENT_SPANS, &[("state", state)], v as f64);
    }
    m.set_value(metrics::AGENT_SPANS_HELD, &[], s.held as f64);
}

/// Moves the forwarder's and the receiver's counters into the metrics.
fn record_flow(forwarder: &Forwarder, receiving: Option<&Receiving>, m: &mut MetricsState) {
    let f = &forwarder.stats;
    for (def, v) in [
        (metrics::AGENT_OTLP_QUEUED, &f.queued),
        (metrics::AGENT_OTLP_DROPPED, &f.dropped),
        (metrics::AGENT_OTLP_FORWARDED, &f.forwarded),
        (metrics::AGENT_OTLP_RETRIES, &f.retries),
        (metrics::AGENT_OTLP_REJECTED, &f.rejected),
    ] {
        m.set_value(def, &[], v.load(Relaxed) as f64);
    }
    let Some(r) = receiving else { return };
    let (items, bytes) = r.budget.taken();
    m.set_value(metrics::AGENT_RECEIVER_PENDING, &[], items as f64);
    m.set_value(metrics::AGENT_RECEIVER_PENDING_BYTES, &[], bytes as f64);
    m.set_value(
        metrics::AGENT_ENRICHER_INTERVALS_DROPPED,
        &[],
        r.intervals_dropped.load(Relaxed) as f64,
    );
    for signal in Signal::ALL {
        let c = r.budget.stats.counts(signal);
        let name = signal.name();
        for (outcome, v) in [
            ("accepted", c.accepted_requests),
            ("throttled", c.throttled_requests),
            ("unavailable", c.unavailable_requests),
        ] {
            let labels = [("signal", name), ("outcome", outcome)];
            m.set_value(metrics::AGENT_RECEIVER_REQUESTS, &labels, v as f64);
        }
        let labels = [("signal", name)];
        m.set_value(
            metrics::AGENT_RECEIVER_ITEMS,
            &labels,
            c.accepted_items as f64,
        );
    }
}
