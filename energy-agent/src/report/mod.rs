//! `energy-agent report FILE`: what a history holds, summed over a window and grouped
//! by model, process, container or run label — energy, carbon, J/request,
//! gCO2e/request, J/token, requests per joule, p50/p95 energy per request, idle share,
//! measured vs estimated — as a table, JSON, CSV or one self-contained HTML page with
//! plots; and the drift between two windows or two labels ([`compare`]).
//!
//! The stage after [`crate::history`]: it reads the database the history writes
//! (read-only) and nothing else.

pub mod compare;
pub mod html;
mod plots;
pub mod query;
pub mod render;
pub mod stats;
#[cfg(test)]
mod tests;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use query::{History, Window};

/// How rows are grouped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GroupBy {
    /// By model (rule match, else executable name).
    Model,
    /// By process (executable and pid, per run).
    Process,
    /// By container id (else cgroup).
    Container,
    /// By Kubernetes pod (`namespace/pod`; a container in no known pod by its id).
    Pod,
    /// By run label: all of a run's labels, or the value of one key.
    Label(Option<String>),
}

impl std::str::FromStr for GroupBy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "model" => Ok(Self::Model),
            "process" => Ok(Self::Process),
            "container" => Ok(Self::Container),
            "pod" => Ok(Self::Pod),
            "label" => Ok(Self::Label(None)),
            other => match other.strip_prefix("label:") {
                Some(key) if !key.is_empty() => Ok(Self::Label(Some(key.to_string()))),
                _ => Err(format!(
                    "--by {other:?}: model, process, container, pod, label or label:KEY"
                )),
            },
        }
    }
}

impl GroupBy {
    /// The name used in headings.
    pub fn name(&self) -> String {
        match self {
            Self::Model => "model".into(),
            Self::Process => "process".into(),
            Self::Container => "container".into(),
            Self::Pod => "pod".into(),
            Self::Label(None) => "label".into(),
            Self::Label(Some(k)) => format!("label {k}"),
        }
    }
}

/// One group's figures over the window.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Figures {
    /// Model, process, container or label.
    pub name: String,
    /// Runs it appears in.
    pub runs: usize,
    /// Energy, J.
    pub energy_j: f64,
    /// Of which measured by a meter, J.
    pub measured_j: f64,
    /// Of which estimated, J.
    pub estimated_j: f64,
    /// Operational carbon, g.
    pub carbon_g: f64,
    /// Embodied carbon, g.
    pub embodied_g: f64,
    /// On-CPU time, s.
    pub cpu_time_s: f64,
    /// Allocated idle energy within `energy_j` (`--idle share`), J.
    pub idle_j: f64,
    /// Its largest energy in one run, kWh (the `max_kwh_per_run` budget).
    pub max_run_kwh: f64,
    /// Enriched requests.
    pub requests: usize,
    /// Their energy, J.
    pub request_j: f64,
    /// Their carbon, g.
    pub request_g: f64,
    /// Tokens of the requests that carried them.
    pub tokens: u64,
    /// Mean energy per request, J.
    pub j_per_request: Option<f64>,
    /// Mean carbon per request, g.
    pub g_per_request: Option<f64>,
    /// Energy per token over the requests that carried tokens, J.
    pub j_per_token: Option<f64>,
    /// Requests per joule of request energy (throughput per watt).
    pub requests_per_j: Option<f64>,
    /// Median energy per request, J.
    pub p50_j: Option<f64>,
    /// 95th percentile of energy per request, J.
    pub p95_j: Option<f64>,
}

/// The whole host over the window.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct HostFigures {
    /// Runs with intervals in the window.
    pub runs: usize,
    /// Intervals.
    pub intervals: usize,
    /// Time they cover, s.
    pub duration_s: f64,
    /// Energy, J.
    pub energy_j: f64,
    /// Of which measured, J.
    pub measured_j: f64,
    /// Of which estimated, J.
    pub estimated_j: f64,
    /// Idle energy (the idle bucket and any allocated idle share), J.
    pub idle_j: f64,
    /// Idle energy over all energy.
    pub idle_share: Option<f64>,
    /// Operational carbon, g.
    pub carbon_g: f64,
    /// Embodied carbon, g.
    pub embodied_g: f64,
    /// Energy-weighted grid intensity, g/kWh.
    pub g_per_kwh: Option<f64>,
    /// The energy sources seen (`rapl-powercap`, `estimate+nvml`, …).
    pub sources: Vec<String>,
    /// The intensity sources seen.
    pub intensity_sources: Vec<String>,
}

/// A report: the window, the groups (most energy first), the host.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Report {
    /// The history file.
    pub file: String,
    /// How the groups are formed.
    pub by: String,
    /// First interval start in the window, Unix ns.
    pub from_unix_ns: Option<u64>,
    /// Last interval end in the window, Unix ns.
    pub to_unix_ns: Option<u64>,
    /// Per group.
    pub groups: Vec<Figures>,
    /// The host.
    pub host: HostFigures,
}

/// A report that cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The database could not be read.
    #[error("history {path}: {source}")]
    Sqlite {
        /// The file.
        path: String,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// Not a history this agent reads.
    #[error("history {path}: {source}")]
    Schema {
        /// The file.
        path: String,
        /// What is wrong.
        source: crate::history::schema::SchemaError,
    },
    /// A bad argument (a time, a comparison).
    #[error("{0}")]
    Usage(String),
    /// The plots could not be drawn.
    #[error("drawing the plots: {0}")]
    Plot(String),
}

/// Parses a point in time: RFC 3339, Unix seconds, or a duration meaning that long
/// before `now` (`24h`, `7d`); Unix ns.
pub fn parse_time(text: &str, now: SystemTime) -> Result<u64, String> {
    let t = text.trim();
    let at = if let Ok(secs) = t.parse::<f64>() {
        (secs >= 0.0 && secs.is_finite())
            .then(|| UNIX_EPOCH + Duration::from_secs_f64(secs))
            .ok_or_else(|| format!("{t:?}: negative time"))?
    } else if let Ok(ago) = humantime::parse_duration(t) {
        now.checked_sub(ago)
            .ok_or_else(|| format!("{t:?} is before 1970"))?
    } else {
        humantime::parse_rfc3339_weak(t.trim_end_matches('Z'))
            .or_else(|_| humantime::parse_rfc3339(t))
            .map_err(|_| {
                format!("{t:?} is not a time (RFC 3339, Unix seconds, or a duration ago: 24h)")
            })?
    };
    Ok(unix_ns(at))
}

/// Nanoseconds since the Unix epoch.
pub fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// RFC 3339 (seconds) of Unix ns.
pub fn rfc3339(ns: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}
