//! The writing side of the history: one run's rows, one transaction per interval (so
//! a kill loses at most the interval being written), and retention by age and size.

use std::{path::Path, time::Duration};

use rusqlite::{Connection, Transaction, params};

use super::{
    HistoryError,
    rows::{GroupRow, IntervalRow, RunInfo},
    schema,
};
use crate::requests::RequestSample;

/// How long and how large the history may grow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Intervals and requests older than this are deleted.
    pub max_age: Option<Duration>,
    /// Past this many bytes the oldest intervals and requests are deleted.
    pub max_bytes: Option<u64>,
}

/// An open history, writing one run.
pub struct Store {
    conn: Connection,
    path: String,
    run_id: i64,
    retention: Retention,
    writes_since_prune: u32,
}

/// Intervals written between two retention passes.
const PRUNE_EVERY: u32 = 60;

impl Store {
    /// Opens (or creates) the history at `path` and starts a run in it.
    pub fn open(path: &Path, run: &RunInfo, retention: Retention) -> Result<Self, HistoryError> {
        let name = path.display().to_string();
        let err = |source| HistoryError::sqlite(&name, source);
        let mut conn = Connection::open(path).map_err(err)?;
        schema::prepare(&mut conn).map_err(|e| HistoryError::schema(&name, e))?;
        let command = run
            .command
            .as_ref()
            .map(|c| serde_json::to_string(c).unwrap_or_default());
        let tx = conn.transaction().map_err(err)?;
        tx.execute(
            "INSERT INTO runs (kind, started_unix_ns, host, agent_version, command, idle_policy)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                run.kind.name(),
                run.started_unix_ns as i64,
                run.host,
                env!("CARGO_PKG_VERSION"),
                command,
                run.idle_policy,
            ],
        )
        .map_err(err)?;
        let run_id = tx.last_insert_rowid();
        for (k, v) in &run.labels {
            tx.execute(
                "INSERT OR REPLACE INTO labels (run_id, key, value) VALUES (?1, ?2, ?3)",
                params![run_id, k, v],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        let mut store = Self {
            conn,
            path: name,
            run_id,
            retention,
            writes_since_prune: 0,
        };
        store.prune(run.started_unix_ns)?;
        Ok(store)
    }

    /// The id of the run being written.
    pub fn run_id(&self) -> i64 {
        self.run_id
    }

    fn err(&self, source: rusqlite::Error) -> HistoryError {
        HistoryError::sqlite(&self.path, source)
    }

    /// Writes one interval (and moves the run's end to it), in one transaction.
    pub fn write_interval(&mut self, row: &IntervalRow) -> Result<(), HistoryError> {
        let run_id = self.run_id;
        let path = &self.path;
        let err = |e| HistoryError::sqlite(path, e);
        let tx = self.conn.transaction().map_err(err)?;
        insert_interval(&tx, run_id, row).map_err(err)?;
        tx.commit().map_err(err)?;
        self.writes_since_prune += 1;
        if self.writes_since_prune >= PRUNE_EVERY {
            self.prune(row.end_unix_ns)?;
        }
        Ok(())
    }

    /// Writes enriched requests, in one transaction.
    pub fn write_requests(&mut self, samples: &[RequestSample]) -> Result<(), HistoryError> {
        if samples.is_empty() {
            return Ok(());
        }
        let run_id = self.run_id;
        let path = &self.path;
        let err = |e| HistoryError::sqlite(path, e);
        let tx = self.conn.transaction().map_err(err)?;
        insert_requests(&tx, run_id, samples).map_err(err)?;
        tx.commit().map_err(err)
    }

    /// Closes the database: the write-ahead log goes into the file and is removed.
    pub fn close(self) -> Result<(), HistoryError> {
        let path = self.path;
        self.conn
            .close()
            .map_err(|(_, e)| HistoryError::sqlite(&path, e))
    }

    /// Ends the run: when, and the measured command's exit code.
    pub fn end_run(
        &mut self,
        ended_unix_ns: u64,
        exit_code: Option<i32>,
    ) -> Result<(), HistoryError> {
        self.conn
            .execute(
                "UPDATE runs SET ended_unix_ns = max(coalesce(ended_unix_ns, 0), ?2),
                 exit_code = coalesce(?3, exit_code) WHERE id = ?1",
                params![self.run_id, ended_unix_ns as i64, exit_code],
            )
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// Applies the retention: what is older than the age limit goes, then the oldest
    /// tenth at a time while the file is over the size limit. Never the run being
    /// written's last interval.
    pub fn prune(&mut self, now_unix_ns: u64) -> Result<(), HistoryError> {
        self.writes_since_prune = 0;
        let path = self.path.clone();
        let err = |e| HistoryError::sqlite(&path, e);
        if let Some(age) = self.retention.max_age {
            let cutoff = now_unix_ns.saturating_sub(age.as_nanos() as u64) as i64;
            delete_before(&self.conn, cutoff).map_err(err)?;
        }
        if let Some(max) = self.retention.max_bytes {
            for _ in 0..20 {
                if used_bytes(&self.conn).map_err(err)? <= max {
                    break;
                }
                if !delete_oldest_tenth(&self.conn).map_err(err)? {
                    break;
                }
                vacuum(&self.conn).map_err(err)?;
            }
        }
        self.conn
            .execute(
                "DELETE FROM runs WHERE id != ?1
                 AND NOT EXISTS (SELECT 1 FROM intervals WHERE run_id = runs.id)
                 AND NOT EXISTS (SELECT 1 FROM requests WHERE run_id = runs.id)",
                [self.run_id],
            )
            .map_err(err)?;
        vacuum(&self.conn).map_err(err)
    }
}

fn insert_interval(tx: &Transaction, run_id: i64, r: &IntervalRow) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO intervals (run_id, start_unix_ns, end_unix_ns, duration_s, cpu_source,
         gpu_source, estimated, cpu_j, dram_j, gpu_j, total_j, idle_j, cpu_time_s, g_per_kwh,
         intensity_source, intensity_note, pue, carbon_g, embodied_g)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
    )?
    .execute(params![
        run_id,
        r.start_unix_ns as i64,
        r.end_unix_ns as i64,
        r.duration_s,
        r.cpu_source,
        r.gpu_source,
        r.estimated,
        r.cpu_j,
        r.dram_j,
        r.gpu_j,
        r.total_j,
        r.idle_j,
        r.cpu_time_s,
        r.g_per_kwh,
        r.intensity_source,
        r.intensity_note,
        r.pue,
        r.carbon_g,
        r.embodied_g,
    ])?;
    let id = tx.last_insert_rowid();
    let mut domain = tx.prepare_cached(
        "INSERT INTO domains (interval_id, domain, joules, source, estimated) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for d in &r.domains {
        domain.execute(params![id, d.domain, d.joules, d.source, d.estimated])?;
    }
    let mut process = tx.prepare_cached(
        "INSERT OR REPLACE INTO processes (interval_id, pid, comm, exe, model, container, cpu_time_s,
         energy_j, cpu_j, dram_j, gpu_j, idle_j, carbon_g, embodied_g)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )?;
    for p in &r.processes {
        process.execute(params![
            id,
            p.pid,
            p.comm,
            p.exe,
            p.model,
            p.container,
            p.cpu_time_s,
            p.energy_j,
            p.cpu_j,
            p.dram_j,
            p.gpu_j,
            p.idle_j,
            p.carbon_g,
            p.embodied_g
        ])?;
    }
    insert_groups(tx, "models", id, &r.models)?;
    insert_groups(tx, "containers", id, &r.containers)?;
    let mut pod = tx.prepare_cached(
        "INSERT OR REPLACE INTO container_pods (interval_id, name, pod_uid, pod_name, namespace,
         container_name) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for (c, k) in (r.containers.iter()).filter_map(|c| Some((c, c.k8s.as_ref()?))) {
        pod.execute(params![
            id,
            c.name,
            k.pod_uid,
            k.pod_name,
            k.namespace,
            k.container_name
        ])?;
    }
    tx.prepare_cached(
        "UPDATE runs SET ended_unix_ns = max(coalesce(ended_unix_ns, 0), ?2) WHERE id = ?1",
    )?
    .execute(params![run_id, r.end_unix_ns as i64])?;
    Ok(())
}

fn insert_groups(
    tx: &Transaction,
    table: &str,
    id: i64,
    groups: &[GroupRow],
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(&format!(
        "INSERT OR REPLACE INTO {table} (interval_id, name, processes, cpu_time_s, energy_j, gpu_j,
         idle_j, watts, carbon_g, embodied_g) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    ))?;
    for g in groups {
        stmt.execute(params![
            id,
            g.name,
            g.processes,
            g.cpu_time_s,
            g.energy_j,
            g.gpu_j,
            g.idle_j,
            g.watts,
            g.carbon_g,
            g.embodied_g
        ])?;
    }
    Ok(())
}

fn insert_requests(
    tx: &Transaction,
    run_id: i64,
    samples: &[RequestSample],
) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO requests (run_id, end_unix_ns, model, joules, carbon_g, tokens, estimated)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for s in samples {
        stmt.execute(params![
            run_id,
            s.end_unix_ns as i64,
            s.model,
            s.joules.get(),
            s.carbon_g,
            s.tokens.map(|t| t as i64),
            s.estimated
        ])?;
    }
    Ok(())
}

/// Deletes intervals and requests that ended before `cutoff` (Unix ns).
fn delete_before(conn: &Connection, cutoff: i64) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM intervals WHERE end_unix_ns < ?1", [cutoff])?;
    conn.execute("DELETE FROM requests WHERE end_unix_ns < ?1", [cutoff])?;
    Ok(())
}

/// Gives the free pages back to the file system (each step of the pragma frees one).
fn vacuum(conn: &Connection) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare("PRAGMA incremental_vacuum")?;
    let mut rows = stmt.query([])?;
    while rows.next()?.is_some() {}
    Ok(())
}

/// Bytes the database's pages hold (free pages not counted).
fn used_bytes(conn: &Connection) -> rusqlite::Result<u64> {
    let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    let free: i64 = conn.query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
    let size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    Ok(((pages - free).max(0) * size) as u64)
}

/// Deletes the oldest tenth of the intervals (at least one, never the newest) and the
/// requests that ended before what remains; false when nothing could go.
fn delete_oldest_tenth(conn: &Connection) -> rusqlite::Result<bool> {
    let count: i64 = conn.query_row("SELECT count(*) FROM intervals", [], |r| r.get(0))?;
    if count <= 1 {
        let requests: i64 = conn.query_row("SELECT count(*) FROM requests", [], |r| r.get(0))?;
        if requests == 0 {
            return Ok(false);
        }
        conn.execute(
            "DELETE FROM requests WHERE id IN (SELECT id FROM requests ORDER BY end_unix_ns
             LIMIT max(1, (SELECT count(*) FROM requests) / 10))",
            [],
        )?;
        return Ok(true);
    }
    let n = (count / 10).clamp(1, count - 1);
    let cutoff: i64 = conn.query_row(
        "SELECT end_unix_ns FROM intervals ORDER BY end_unix_ns LIMIT 1 OFFSET ?1",
        [n - 1],
        |r| r.get(0),
    )?;
    delete_before(conn, cutoff + 1)?;
    Ok(true)
}
