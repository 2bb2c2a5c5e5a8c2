//! The agent's metrics: one model, two encodings. [`MetricsState`] holds every series
//! cumulatively, updated once per interval and per enriched request (sampling is
//! independent of exporting: a Prometheus scrape or an OTLP push only reads it).
//! Energy and carbon are monotonic counters (`*_joules_total`), never per-interval
//! gauges. Per-process series exist only for the top N processes of an interval and
//! those a model rule matched; the rest are summed under `process.pid="other"`. Series
//! of processes, models and containers (and a model's request histogram) not updated
//! for [`EVICT_AFTER`] intervals are dropped, so a host's churn of processes,
//! executables and containers cannot grow the state without bound.
//!
//! Both encodings are derived from this state, and only from it:
//! [`super::prometheus::render`] writes the Prometheus text exposition,
//! [`super::otlp::MetricsEncoding`] the OTLP `ExportMetricsServiceRequest` pushed
//! through the forwarder. Each value, the request histogram included, is recorded
//! once, here.
//!
//! Names follow OTel (no unit in the name; the unit is metadata) and the README's
//! Metrics table (they are user contracts); the Prometheus exposition spells them as
//! OTel's Prometheus rules do (`energy.process` + J → `energy_process_joules_total`).

use std::collections::{BTreeMap, HashMap};

use crate::carbon::CarbonReport;

/// How a metric behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Monotonic sum.
    Counter,
    /// Value now.
    Gauge,
    /// Distribution.
    Histogram,
}

/// A metric's description.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Def {
    /// OTel name.
    pub name: &'static str,
    /// UCUM unit (`J`, `W`, `g`, `s`, `1`).
    pub unit: &'static str,
    /// Kind.
    pub kind: Kind,
    /// Description.
    pub help: &'static str,
}

macro_rules! def {
    ($id:ident, $name:literal, $unit:literal, $kind:ident, $help:literal) => {
        /// `$name`: $help
        pub const $id: Def = Def {
            name: $name,
            unit: $unit,
            kind: Kind::$kind,
            help: $help,
        };
    };
}

def!(
    ENERGY_PROCESS,
    "energy.process",
    "J",
    Counter,
    "Energy attributed to a process, by domain."
);
def!(
    ENERGY_MODEL,
    "energy.model",
    "J",
    Counter,
    "Energy attributed to a model, by domain."
);
def!(
    ENERGY_CONTAINER,
    "energy.container",
    "J",
    Counter,
    "Energy attributed to a container (or cgroup)."
);
def!(
    HW_HOST_ENERGY,
    "hw.host.energy",
    "J",
    Counter,
    "Energy of the host by domain, and the idle bucket."
);
def!(
    HW_HOST_POWER,
    "hw.host.power",
    "W",
    Gauge,
    "Power of the host by domain over the last interval."
);
def!(
    ENERGY_IDLE_POWER,
    "energy.idle.power",
    "W",
    Gauge,
    "Idle power under the split, per domain, with its origin and whether it is uncertain."
);
def!(
    ENERGY_IDLE_UNCERTAINTY,
    "energy.idle.power.uncertainty",
    "W",
    Gauge,
    "Half-width of the idle power's band (twice its standard error), where a fit gives one."
);
def!(
    CARBON_MODEL,
    "carbon.model",
    "g",
    Counter,
    "Operational carbon of a model, gCO2e."
);
def!(
    REQUESTS_ENERGY,
    "requests.energy",
    "J",
    Histogram,
    "Energy per enriched request, by model."
);
def!(
    REQUESTS_ENERGY_PER_OUTPUT_TOKEN,
    "requests.energy.per_output_token",
    "J",
    Histogram,
    "Joules per output token of enriched requests with gen_ai output tokens, by model."
);
def!(
    REQUESTS_ENERGY_PER_1K_TOKENS,
    "requests.energy.per_1k_tokens",
    "J",
    Histogram,
    "Joules per 1,000 tokens (input and output) of enriched requests with gen_ai tokens, by model."
);
def!(
    AGENT_INFO,
    "energy_agent.info",
    "1",
    Gauge,
    "Sources in use (value 1)."
);
def!(
    AGENT_LAG,
    "energy_agent.interval.lag",
    "s",
    Gauge,
    "How late the last interval was processed."
);
def!(
    AGENT_TASKS,
    "energy_agent.probe.tasks",
    "1",
    Gauge,
    "Threads in the kernel task map."
);
def!(
    AGENT_TASKS_MAX,
    "energy_agent.probe.tasks.max",
    "1",
    Gauge,
    "Capacity of the kernel task map."
);
def!(
    AGENT_TASKS_SWEPT,
    "energy_agent.probe.tasks.swept",
    "1",
    Counter,
    "Task map entries of gone threads removed by the liveness sweep (missed final switches)."
);
def!(
    AGENT_PROBE_LOST,
    "energy_agent.probe.lost",
    "1",
    Counter,
    "Probe records lost (map full, ring buffer full, skipped runs)."
);
def!(
    AGENT_SPANS,
    "energy_agent.spans",
    "1",
    Counter,
    "Spans received, enriched, unattributed, overflowed, nested, invalid, duplicate."
);
def!(
    AGENT_SPANS_HELD,
    "energy_agent.spans.held",
    "1",
    Gauge,
    "Spans waiting for their interval."
);
def!(
    AGENT_OTLP_QUEUED,
    "energy_agent.otlp.queued",
    "1",
    Gauge,
    "Items waiting to be forwarded downstream."
);
def!(
    AGENT_OTLP_DROPPED,
    "energy_agent.otlp.dropped",
    "1",
    Counter,
    "Items dropped: older pushes of our own metrics past the queue bound, or what the downstream refused for good."
);
def!(
    AGENT_OTLP_FORWARDED,
    "energy_agent.otlp.forwarded",
    "1",
    Counter,
    "Items forwarded downstream."
);

def!(
    AGENT_ERRORS,
    "energy_agent.errors",
    "1",
    Counter,
    "Transient failures the running agent logged and survived, by component."
);
def!(
    AGENT_OTLP_RETRIES,
    "energy_agent.otlp.retries",
    "1",
    Counter,
    "Export attempts that failed with a retryable status and were retried."
);
def!(
    AGENT_OTLP_REJECTED,
    "energy_agent.otlp.rejected",
    "1",
    Counter,
    "Items the downstream rejected within an OK answer (partial_success)."
);
def!(
    AGENT_RECEIVER_REQUESTS,
    "energy_agent.receiver.requests",
    "1",
    Counter,
    "OTLP requests received, by signal and outcome (accepted, throttled, unavailable)."
);
def!(
    AGENT_RECEIVER_ITEMS,
    "energy_agent.receiver.items",
    "1",
    Counter,
    "Spans, data points and log records accepted, by signal."
);
def!(
    AGENT_RECEIVER_PENDING,
    "energy_agent.receiver.pending",
    "1",
    Gauge,
    "Items accepted and not yet forwarded or dropped (the receiver's budget in use)."
);
def!(
    AGENT_RECEIVER_PENDING_BYTES,
    "energy_agent.receiver.pending.bytes",
    "By",
    Gauge,
    "Bytes (protobuf, as received) accepted and not yet forwarded or dropped."
);
def!(
    AGENT_ENRICHER_INTERVALS_DROPPED,
    "energy_agent.enricher.intervals.dropped",
    "1",
    Counter,
    "Attributed intervals the enricher's full hand-off could not take."
);

def!(
    AGENT_LISTENER_REJECTED,
    "energy_agent.listener.rejected",
    "1",
    Counter,
    "Connections and requests a listener refused, by listener and reason (unauthenticated, tls_handshake, connection_limit, overloaded, timeout)."
);

/// Every metric, in exposition order.
pub const ALL: [Def; 31] = [
    ENERGY_PROCESS,
    ENERGY_MODEL,
    ENERGY_CONTAINER,
    HW_HOST_ENERGY,
    HW_HOST_POWER,
    ENERGY_IDLE_POWER,
    ENERGY_IDLE_UNCERTAINTY,
    CARBON_MODEL,
    REQUESTS_ENERGY,
    REQUESTS_ENERGY_PER_OUTPUT_TOKEN,
    REQUESTS_ENERGY_PER_1K_TOKENS,
    AGENT_INFO,
    AGENT_LAG,
    AGENT_TASKS,
    AGENT_TASKS_MAX,
    AGENT_TASKS_SWEPT,
    AGENT_PROBE_LOST,
    AGENT_SPANS,
    AGENT_SPANS_HELD,
    AGENT_OTLP_QUEUED,
    AGENT_OTLP_DROPPED,
    AGENT_OTLP_FORWARDED,
    AGENT_ERRORS,
    AGENT_OTLP_RETRIES,
    AGENT_OTLP_REJECTED,
    AGENT_RECEIVER_REQUESTS,
    AGENT_RECEIVER_ITEMS,
    AGENT_RECEIVER_PENDING,
    AGENT_RECEIVER_PENDING_BYTES,
    AGENT_ENRICHER_INTERVALS_DROPPED,
    AGENT_LISTENER_REJECTED,
];

/// Intervals after which a process, model or container series nothing updated is
/// dropped.
pub const EVICT_AFTER: u64 = 300;

/// Label set, sorted by key.
pub type Labels = Vec<(&'static str, String)>;

/// Upper bounds of the request energy histogram, joules.
pub const REQUEST_BUCKETS: [f64; 12] = [
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0,
];

/// A cumulative histogram.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Counts per bucket of [`REQUEST_BUCKETS`] (not cumulative), then +Inf.
    pub counts: Vec<u64>,
    /// Sum of observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// Smallest observation (meaningful once `count > 0`; OTLP carries it).
    pub min: f64,
    /// Largest observation (likewise).
    pub max: f64,
}

impl Histogram {
    fn record(&mut self, v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; REQUEST_BUCKETS.len() + 1];
        }
        if self.count == 0 {
            (self.min, self.max) = (v, v);
        } else {
            (self.min, self.max) = (self.min.min(v), self.max.max(v));
        }
        let i = REQUEST_BUCKETS
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(REQUEST_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// All series.
#[derive(Clone, Debug, Default)]
pub struct MetricsState {
    /// Counters and gauges: (metric, labels) → value.
    pub values: BTreeMap<(&'static str, Labels), f64>,
    /// Histograms.
    pub histograms: BTreeMap<(&'static str, Labels), Histogram>,
    /// Interval in which each process, model and container series (counter, gauge or
    /// histogram) was last updated, for eviction.
    last_touch: HashMap<(&'static str, Labels), u64>,
    interval: u64,
    /// Per-process series kept per interval.
    pub top_n: usize,
}

fn l(pairs: &[(&'static str, &str)]) -> Labels {
    let mut v: Labels = pairs.iter().map(|(k, v)| (*k, v.to_string())).collect();
    v.sort();
    v
}

/// Reads one domain class out of a [`crate::attribute::EnergyByClass`].
type Getter = fn(&crate::attribute::EnergyByClass) -> f64;

const DOMAINS: [(&str, Getter); 3] = [
    ("cpu", |j| j.cpu_j.get()),
    ("dram", |j| j.dram_j.get()),
    ("gpu", |j| j.gpu_j.get()),
];

impl MetricsState {
    /// An empty state keeping `top_n` per-process series per interval.
    pub fn new(top_n: usize) -> Self {
        Self {
            top_n,
            ..Self::default()
        }
    }

    fn add(&mut self, def: Def, labels: Labels, v: f64) {
        *self.values.entry((def.name, labels)).or_default() += v;
    }

    fn set(&mut self, def: Def, labels: Labels, v: f64) {
        self.values.insert((def.name, labels), v);
    }

    /// [`MetricsState::add`] to a series that is evicted once nothing updates it.
    fn add_evictable(&mut self, def: Def, labels: Labels, v: f64) {
        self.last_touch
            .insert((def.name, labels.clone()), self.interval);
        self.add(def, labels, v);
    }

    /// Folds one interval in.
    pub fn observe(&mut self, r: &CarbonReport) {
        self.interval += 1;
        self.observe_processes(r);
        self.observe_models(r);
        for c in &r.containers {
            let mut labels = l(&[("container.id", &c.name)]);
            labels.extend(c.k8s.as_ref().map_or_else(Vec::new, |k| k.metric_labels()));
            labels.sort();
            self.add_evictable(ENERGY_CONTAINER, labels, c.energy_j.get());
        }
        self.observe_host(r);
        self.observe_agent(r);
        self.evict_stale();
    }

    /// `energy.process`: own series for the top N and every process a model rule
    /// matched, the rest summed under `process.pid="other"`.
    fn observe_processes(&mut self, r: &CarbonReport) {
        let mut ranked: Vec<&crate::attribute::ProcessReport> = r.processes.iter().collect();
        ranked.sort_by(|a, b| b.energy_j.total_cmp(&a.energy_j));
        for (rank, p) in ranked.iter().enumerate() {
            let keep = rank < self.top_n || p.model_rule;
            let pid = if keep {
                p.pid.to_string()
            } else {
                "other".into()
            };
            let exe = if keep { p.exe_name.as_str() } else { "other" };
            let container = p
                .container_id
                .as_deref()
                .or(p.cgroup.as_deref())
                .unwrap_or("");
            for (domain, get) in DOMAINS {
                let v = get(&p.joules);
                if v > 0.0 || keep {
                    let labels = l(&[
                        ("process.pid", &pid),
                        ("process.executable.name", exe),
                        ("model", &p.model),
                        ("container.id", if keep { container } else { "" }),
                        ("energy.domain", domain),
                    ]);
                    self.add_evictable(ENERGY_PROCESS, labels, v);
                }
            }
        }
    }

    /// `energy.model` by domain and `carbon.model`.
    fn observe_models(&mut self, r: &CarbonReport) {
        for m in &r.models {
            for (domain, get) in DOMAINS {
                self.add_evictable(
                    ENERGY_MODEL,
                    l(&[("model", &m.name), ("energy.domain", domain)]),
                    get(&m.joules),
                );
            }
            self.add_evictable(
                CARBON_MODEL,
                l(&[
                    ("model", &m.name),
                    ("carbon.intensity.source", &r.carbon.intensity.source),
                ]),
                r.carbon.group(m).carbon_g,
            );
        }
    }

    /// `hw.host.energy` and `hw.host.power` per domain, and the idle bucket.
    fn observe_host(&mut self, r: &CarbonReport) {
        for d in &r.power.domains {
            let id = d.domain.to_string();
            let class = id.split('-').next().unwrap_or(&id).to_string();
            let labels = l(&[
                ("energy.domain", &class),
                ("hw.id", &id),
                ("source", d.source),
            ]);
            self.add(HW_HOST_ENERGY, labels.clone(), d.joules.get());
            self.set(HW_HOST_POWER, labels, d.watts.get());
        }
        let idle = l(&[
            ("energy.domain", "idle"),
            ("hw.id", "idle"),
            ("source", r.power.sources.cpu),
        ]);
        self.add(HW_HOST_ENERGY, idle.clone(), r.idle.energy_j.get());
        self.set(HW_HOST_POWER, idle, r.idle.energy_j.per(r.duration()).get());
        self.observe_idle_power(r);
    }

    /// `energy.idle.power` per domain, its origin a label (one series per domain: the
    /// previous interval's are replaced, so a change of origin adds none), and its band.
    fn observe_idle_power(&mut self, r: &CarbonReport) {
        self.values.retain(|(name, _), _| {
            *name != ENERGY_IDLE_POWER.name && *name != ENERGY_IDLE_UNCERTAINTY.name
        });
        for ip in &r.idle_power {
            let id = ip.domain.to_string();
            self.set(
                ENERGY_IDLE_POWER,
                l(&[
                    ("hw.id", &id),
                    ("energy.idle.origin", ip.origin.name()),
                    (
                        "energy.idle.uncertain",
                        if ip.uncertain { "true" } else { "false" },
                    ),
                ]),
                ip.watts.get(),
            );
            if let Some(u) = ip.uncertainty_w {
                self.set(ENERGY_IDLE_UNCERTAINTY, l(&[("hw.id", &id)]), u.get());
            }
        }
    }

    /// The agent's own state: sources in use and the probe's health.
    fn observe_agent(&mut self, r: &CarbonReport) {
        self.values.retain(|(name, _), _| *name != AGENT_INFO.name);
        self.set(
            AGENT_INFO,
            l(&[
                ("cpu_source", r.power.sources.cpu),
                ("gpu_source", r.power.sources.gpu),
                (
                    "estimated",
                    if r.power.estimated { "true" } else { "false" },
                ),
            ]),
            1.0,
        );
        self.set(AGENT_TASKS, Vec::new(), r.probe.task_map_entries as f64);
        self.set(AGENT_TASKS_MAX, Vec::new(), r.probe.max_tasks as f64);
        self.set(AGENT_TASKS_SWEPT, Vec::new(), r.probe.tasks_swept as f64);
        let lost = r.probe.task_map_full + r.probe.events_lost + r.probe.missed_runs;
        self.set(AGENT_PROBE_LOST, Vec::new(), lost as f64);
    }

    /// Drops the process, model and container series not updated for [`EVICT_AFTER`]
    /// intervals (gone processes, models and containers).
    fn evict_stale(&mut self) {
        let now = self.interval;
        let stale: Vec<_> = self
            .last_touch
            .iter()
            .filter(|(_, t)| now - **t > EVICT_AFTER)
            .map(|(k, _)| k.clone())
            .collect();
        for k in stale {
            self.last_touch.remove(&k);
            self.values.remove(&k);
            self.histograms.remove(&k);
        }
    }

    /// Records one enriched request's energy.
    pub fn observe_request(&mut self, model: &str, joules: f64) {
        let key = (REQUESTS_ENERGY.name, l(&[("model", model)]));
        self.last_touch.insert(key.clone(), self.interval);
        self.histograms.entry(key).or_default().record(joules);
    }

    /// Records an enriched request's joules per output token and per 1,000 tokens
    /// (input and output), where it has those tokens.
    pub fn observe_request_tokens(
        &mut self,
        model: &str,
        joules: f64,
        input: Option<u64>,
        output: Option<u64>,
    ) {
        let labels = l(&[("model", model)]);
        if let Some(output) = output.filter(|&t| t > 0) {
            self.histograms
                .entry((REQUESTS_ENERGY_PER_OUTPUT_TOKEN.name, labels.clone()))
                .or_default()
                .record(joules / output as f64);
        }
        let all = input.unwrap_or(0) + output.unwrap_or(0);
        if all > 0 {
            self.histograms
                .entry((REQUESTS_ENERGY_PER_1K_TOKENS.name, labels))
                .or_default()
                .record(joules * 1000.0 / all as f64);
        }
    }

    /// Sets a counter or gauge to an absolute value (agent health from other stages).
    pub fn set_value(&mut self, def: Def, labels: &[(&'static str, &str)], v: f64) {
        self.set(def, l(labels), v);
    }
}

#[cfg(test)]
mod tests;
