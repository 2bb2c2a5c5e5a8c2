//! The queries: a history opened read-only, summed over a window (by interval end) and
//! optionally over the runs with one label.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::Path,
};

use rusqlite::{Connection, OpenFlags, params};

use super::{Figures, GroupBy, HostFigures, Report, ReportError, stats};
use crate::history::schema;

/// Which intervals and requests count: those that end in `[since, until]`, of the runs
/// with `label` when one is given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// Earliest end, Unix ns.
    pub since: Option<u64>,
    /// Latest end, Unix ns.
    pub until: Option<u64>,
    /// Only runs with this label (key, value).
    pub label: Option<(String, String)>,
}

/// The SQL condition of a window on a table aliased `t` with `end_unix_ns` and
/// `run_id`; parameters ?1–?4.
const IN_WINDOW: &str = "t.end_unix_ns >= ?1 AND t.end_unix_ns <= ?2
    AND (?3 IS NULL OR t.run_id IN (SELECT run_id FROM labels WHERE key = ?3 AND value = ?4))";

impl Window {
    fn params(&self) -> (i64, i64, Option<String>, Option<String>) {
        (
            self.since.map_or(0, |s| s as i64),
            self.until
                .map_or(i64::MAX, |u| u.min(i64::MAX as u64) as i64),
            self.label.as_ref().map(|l| l.0.clone()),
            self.label.as_ref().map(|l| l.1.clone()),
        )
    }
}

/// The name of a group whose process had no name (it exited before it was seen).
const UNKNOWN: &str = "(unknown)";

/// One enriched request as read back.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The run it was recorded in.
    pub run_id: i64,
    /// Model.
    pub model: String,
    /// Energy, J.
    pub joules: f64,
    /// Carbon, g.
    pub carbon_g: f64,
    /// Tokens, when carried.
    pub tokens: Option<u64>,
}

/// One group's sums in one run.
struct GroupRun {
    name: String,
    run_id: i64,
    energy_j: f64,
    estimated_j: f64,
    carbon_g: f64,
    embodied_g: f64,
    cpu_time_s: f64,
    idle_j: f64,
}

/// A history opened for reading.
pub struct History {
    conn: Connection,
    path: String,
}

impl History {
    /// Opens `path` read-only and checks its schema.
    pub fn open(path: &Path) -> Result<Self, ReportError> {
        let name = path.display().to_string();
        if !path.is_file() {
            return Err(ReportError::Usage(format!("history {name}: no such file")));
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(
            |source| ReportError::Sqlite {
                path: name.clone(),
                source,
            },
        )?;
        schema::check(&conn).map_err(|source| ReportError::Schema {
            path: name.clone(),
            source,
        })?;
        Ok(Self { conn, path: name })
    }

    /// The file's name.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub(super) fn err(&self, source: rusqlite::Error) -> ReportError {
        ReportError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The report over `w`, grouped `by`.
    pub fn report(&self, by: &GroupBy, w: &Window) -> Result<Report, ReportError> {
        let labels = self.run_labels().map_err(|e| self.err(e))?;
        let rows = self.group_runs(by, w, &labels).map_err(|e| self.err(e))?;
        let samples = match by {
            GroupBy::Model | GroupBy::Label(_) => {
                let mut by_group: HashMap<String, Vec<Sample>> = HashMap::new();
                for s in self.samples(w).map_err(|e| self.err(e))? {
                    let key = match by {
                        GroupBy::Label(key) => label_name(labels.get(&s.run_id), key.as_deref()),
                        _ if s.model.is_empty() => UNKNOWN.into(),
                        _ => s.model.clone(),
                    };
                    by_group.entry(key).or_default().push(s);
                }
                by_group
            }
            _ => HashMap::new(),
        };
        let mut groups = figures(rows, samples);
        groups.sort_by(|a, b| b.energy_j.total_cmp(&a.energy_j).then(a.name.cmp(&b.name)));
        let host = self.host(w).map_err(|e| self.err(e))?;
        let (from, to) = self.bounds(w).map_err(|e| self.err(e))?;
        Ok(Report {
            file: self.path.clone(),
            by: by.name(),
            from_unix_ns: from,
            to_unix_ns: to,
            groups,
            host,
        })
    }

    /// Every run's labels.
    pub fn run_labels(&self) -> rusqlite::Result<HashMap<i64, Vec<(String, String)>>> {
        let mut stmt = self
            .conn
            .prepare("SELECT run_id, key, value FROM labels ORDER BY run_id, key")?;
        let mut out: HashMap<i64, Vec<(String, String)>> = HashMap::new();
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        for row in rows {
            let (run, k, v): (i64, String, String) = row?;
            out.entry(run).or_default().push((k, v));
        }
        Ok(out)
    }

    /// Whether the history has the pods table (version 2 and later).
    fn has_pods(&self) -> rusqlite::Result<bool> {
        self.conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'container_pods'",
            [],
            |r| r.get(0),
        )
    }

    fn group_runs(
        &self,
        by: &GroupBy,
        w: &Window,
        labels: &HashMap<i64, Vec<(String, String)>>,
    ) -> rusqlite::Result<Vec<GroupRun>> {
        let (from, name) = match by {
            GroupBy::Model | GroupBy::Label(_) => ("models g", "g.name"),
            GroupBy::Container => ("containers g", "g.name"),
            // A version 1 history has no pods: its containers are their own groups.
            GroupBy::Pod if !self.has_pods()? => ("containers g", "g.name"),
            GroupBy::Pod => (
                "containers g LEFT JOIN container_pods p USING (interval_id, name)",
                "coalesce(p.namespace || '/' || p.pod_name, 'pod ' || p.pod_uid, g.name)",
            ),
            GroupBy::Process => ("processes g", "g.exe || ' (pid ' || g.pid || ')'"),
        };
        let sql = format!(
            "SELECT {name}, t.run_id, sum(g.energy_j),
                    sum(CASE WHEN t.estimated THEN g.energy_j ELSE 0 END),
                    sum(g.carbon_g), sum(g.embodied_g), sum(g.cpu_time_s), sum(g.idle_j)
             FROM {from} JOIN intervals t ON t.id = g.interval_id
             WHERE {IN_WINDOW} GROUP BY 1, 2"
        );
        let (a, b, c, d) = w.params();
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![a, b, c, d], |r| {
            Ok(GroupRun {
                name: r.get(0)?,
                run_id: r.get(1)?,
                energy_j: r.get(2)?,
                estimated_j: r.get(3)?,
                carbon_g: r.get(4)?,
                embodied_g: r.get(5)?,
                cpu_time_s: r.get(6)?,
                idle_j: r.get(7)?,
            })
        })?;
        let mut out: Vec<GroupRun> = rows.collect::<rusqlite::Result<_>>()?;
        for g in &mut out {
            if g.name.is_empty() {
                g.name = UNKNOWN.into();
            }
        }
        if let GroupBy::Label(key) = by {
            // A run's models together are the run: one row per run, named by its label.
            let mut per_run: BTreeMap<i64, GroupRun> = BTreeMap::new();
            for g in out {
                let e = per_run.entry(g.run_id).or_insert_with(|| GroupRun {
                    name: label_name(labels.get(&g.run_id), key.as_deref()),
                    run_id: g.run_id,
                    energy_j: 0.0,
                    estimated_j: 0.0,
                    carbon_g: 0.0,
                    embodied_g: 0.0,
                    cpu_time_s: 0.0,
                    idle_j: 0.0,
                });
                e.energy_j += g.energy_j;
                e.estimated_j += g.estimated_j;
                e.carbon_g += g.carbon_g;
                e.embodied_g += g.embodied_g;
                e.cpu_time_s += g.cpu_time_s;
                e.idle_j += g.idle_j;
            }
            out = per_run.into_values().collect();
        }
        Ok(out)
    }

    /// The enriched requests that ended in `w`.
    pub fn samples(&self, w: &Window) -> rusqlite::Result<Vec<Sample>> {
        let sql = format!(
            "SELECT t.run_id, t.model, t.joules, t.carbon_g, t.tokens FROM requests t
             WHERE {IN_WINDOW} ORDER BY t.end_unix_ns"
        );
        let (a, b, c, d) = w.params();
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![a, b, c, d], |r| {
            Ok(Sample {
                run_id: r.get(0)?,
                model: r.get(1)?,
                joules: r.get(2)?,
                carbon_g: r.get(3)?,
                tokens: r.get::<_, Option<i64>>(4)?.map(|t| t.max(0) as u64),
            })
        })?;
        rows.collect()
    }

    fn host(&self, w: &Window) -> rusqlite::Result<HostFigures> {
        let (a, b, c, d) = w.params();
        let sql = format!(
            "SELECT count(*), count(DISTINCT t.run_id), coalesce(sum(t.duration_s), 0),
                    coalesce(sum(t.total_j), 0),
                    coalesce(sum(CASE WHEN t.estimated THEN t.total_j ELSE 0 END), 0),
                    coalesce(sum(t.idle_j), 0), coalesce(sum(t.carbon_g), 0),
                    coalesce(sum(t.embodied_g), 0), coalesce(sum(t.total_j * t.g_per_kwh), 0),
                    coalesce((SELECT sum(p.idle_j) FROM processes p JOIN intervals t
                              ON t.id = p.interval_id WHERE {IN_WINDOW}), 0)
             FROM intervals t WHERE {IN_WINDOW}"
        );
        let mut h = self.conn.query_row(&sql, params![a, b, c, d], |r| {
            let energy: f64 = r.get(3)?;
            let weighted: f64 = r.get(8)?;
            let idle = r.get::<_, f64>(5)? + r.get::<_, f64>(9)?;
            Ok(HostFigures {
                intervals: r.get::<_, i64>(0)? as usize,
                runs: r.get::<_, i64>(1)? as usize,
                duration_s: r.get(2)?,
                energy_j: energy,
                estimated_j: r.get(4)?,
                measured_j: energy - r.get::<_, f64>(4)?,
                idle_j: idle,
                idle_share: (energy > 0.0).then(|| idle / energy),
                carbon_g: r.get(6)?,
                embodied_g: r.get(7)?,
                g_per_kwh: (energy > 0.0).then(|| weighted / energy),
                ..Default::default()
            })
        })?;
        let distinct = |expr: &str| -> rusqlite::Result<Vec<String>> {
            let sql =
                format!("SELECT DISTINCT {expr} FROM intervals t WHERE {IN_WINDOW} ORDER BY 1");
            let mut stmt = self.conn.prepare(&sql)?;
            let rows = stmt.query_map(params![a, b, c, d], |r| r.get(0))?;
            rows.collect()
        };
        h.sources = distinct(
            "CASE WHEN t.gpu_source = 'none' THEN t.cpu_source ELSE t.cpu_source || '+' || t.gpu_source END
             || CASE WHEN t.estimated THEN ' (estimated)' ELSE ' (measured)' END",
        )?;
        h.intensity_sources = distinct("t.intensity_source")?;
        Ok(h)
    }

    fn bounds(&self, w: &Window) -> rusqlite::Result<(Option<u64>, Option<u64>)> {
        let (a, b, c, d) = w.params();
        let sql = format!(
            "SELECT min(t.start_unix_ns), max(t.end_unix_ns) FROM intervals t WHERE {IN_WINDOW}"
        );
        self.conn.query_row(&sql, params![a, b, c, d], |r| {
            Ok((
                r.get::<_, Option<i64>>(0)?.map(|v| v as u64),
                r.get::<_, Option<i64>>(1)?.map(|v| v as u64),
            ))
        })
    }

    /// Per interval: its end (Unix ns), length (s), and each model's energy (J).
    pub fn model_energy_series(
        &self,
        w: &Window,
    ) -> rusqlite::Result<Vec<(u64, f64, String, f64)>> {
        let (a, b, c, d) = w.params();
        let sql = format!(
            "SELECT t.end_unix_ns, t.duration_s, g.name, g.energy_j
             FROM models g JOIN intervals t ON t.id = g.interval_id
             WHERE {IN_WINDOW} ORDER BY t.end_unix_ns"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![a, b, c, d], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        rows.collect()
    }

    /// The host's operational grams per clock hour (start of the hour, Unix ns).
    pub fn carbon_by_hour(&self, w: &Window) -> rusqlite::Result<Vec<(u64, f64)>> {
        let (a, b, c, d) = w.params();
        let sql = format!(
            "SELECT t.end_unix_ns / 3600000000000, sum(t.carbon_g) FROM intervals t
             WHERE {IN_WINDOW} GROUP BY 1 ORDER BY 1"
        );
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map(params![a, b, c, d], |r| {
            Ok((r.get::<_, i64>(0)? as u64 * 3_600_000_000_000, r.get(1)?))
        })?;
        rows.collect()
    }
}

/// A run's name under `--by label` (all labels) or `--by label:KEY`.
pub fn label_name(labels: Option<&Vec<(String, String)>>, key: Option<&str>) -> String {
    let labels = labels.map(Vec::as_slice).unwrap_or_default();
    match key {
        Some(key) => labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| format!("{key}={v}"))
            .unwrap_or_else(|| format!("{key} unset")),
        None if labels.is_empty() => "(no labels)".into(),
        None => (labels.iter())
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Sums the per-run rows into groups and adds each group's request statistics.
fn figures(rows: Vec<GroupRun>, mut samples: HashMap<String, Vec<Sample>>) -> Vec<Figures> {
    let mut groups: BTreeMap<String, (Figures, BTreeSet<i64>)> = BTreeMap::new();
    for g in rows {
        let (f, runs) = groups.entry(g.name.clone()).or_insert_with(|| {
            (
                Figures {
                    name: g.name.clone(),
                    ..Default::default()
                },
                BTreeSet::new(),
            )
        });
        runs.insert(g.run_id);
        f.energy_j += g.energy_j;
        f.estimated_j += g.estimated_j;
        f.measured_j += g.energy_j - g.estimated_j;
        f.carbon_g += g.carbon_g;
        f.embodied_g += g.embodied_g;
        f.cpu_time_s += g.cpu_time_s;
        f.idle_j += g.idle_j;
        f.max_run_kwh = f.max_run_kwh.max(g.energy_j / crate::carbon::J_PER_KWH);
    }
    let mut out = Vec::with_capacity(groups.len());
    for (name, (mut f, runs)) in groups {
        f.runs = runs.len();
        if let Some(s) = samples.remove(&name) {
            add_requests(&mut f, &s);
        }
        out.push(f);
    }
    out
}

/// The per-request figures of a group from its samples.
pub fn add_requests(f: &mut Figures, samples: &[Sample]) {
    if samples.is_empty() {
        return;
    }
    let mut joules: Vec<f64> = samples.iter().map(|s| s.joules).collect();
    joules.sort_by(f64::total_cmp);
    f.requests = samples.len();
    f.request_j = joules.iter().sum();
    f.request_g = samples.iter().map(|s| s.carbon_g).sum();
    let n = samples.len() as f64;
    f.j_per_request = Some(f.request_j / n);
    f.g_per_request = Some(f.request_g / n);
    f.requests_per_j = (f.request_j > 0.0).then(|| n / f.request_j);
    f.p50_j = stats::percentile(&joules, 50.0);
    f.p95_j = stats::percentile(&joules, 95.0);
    let (tokens, token_j) = (samples.iter())
        .filter_map(|s| s.tokens.map(|t| (t, s.joules)))
        .fold((0u64, 0.0), |(t, j), (tt, jj)| (t + tt, j + jj));
    f.tokens = tokens;
    f.j_per_token = (tokens > 0).then(|| token_j / tokens as f64);
}
