//! The history database's schema, with its version: created on first open, checked on
//! every open after that (a file written by a later or unknown version is refused with
//! both numbers, never misread). Version 1 files (before `container_pods`) are read as
//! they are, and brought to version 2 when opened for writing: the step only adds a
//! table.

use rusqlite::{Connection, OptionalExtension};

/// The schema this agent writes and reads.
pub const SCHEMA_VERSION: i64 = 2;

/// What version 2 added: the Kubernetes names of a container row, when its container
/// was in a pod (`name` is the `containers` row's).
const V2: &str = r#"
CREATE TABLE container_pods (
    interval_id INTEGER NOT NULL REFERENCES intervals(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    pod_uid TEXT NOT NULL,
    pod_name TEXT,
    namespace TEXT,
    container_name TEXT,
    PRIMARY KEY (interval_id, name)
) WITHOUT ROWID;
"#;

/// Tables and views, created in one transaction. Interval children are WITHOUT ROWID
/// tables keyed by interval id first, so deleting old intervals (retention) is a range
/// delete on each.
const SCHEMA: &str = r#"
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,                -- run | measure
    started_unix_ns INTEGER NOT NULL,
    ended_unix_ns INTEGER,             -- the last interval's end, or the command's exit
    host TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    command TEXT,                      -- measure: the command, JSON array
    exit_code INTEGER,                 -- measure: its exit code
    idle_policy TEXT NOT NULL
);
CREATE TABLE labels (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
) WITHOUT ROWID;
CREATE TABLE intervals (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    start_unix_ns INTEGER NOT NULL,
    end_unix_ns INTEGER NOT NULL,
    duration_s REAL NOT NULL,
    cpu_source TEXT NOT NULL,
    gpu_source TEXT NOT NULL,
    estimated INTEGER NOT NULL,
    cpu_j REAL NOT NULL,
    dram_j REAL NOT NULL,
    gpu_j REAL NOT NULL,
    total_j REAL NOT NULL,
    idle_j REAL NOT NULL,              -- the idle bucket
    cpu_time_s REAL NOT NULL,
    g_per_kwh REAL NOT NULL,
    intensity_source TEXT NOT NULL,
    intensity_note TEXT,
    pue REAL NOT NULL,
    carbon_g REAL NOT NULL,            -- the host's operational grams
    embodied_g REAL NOT NULL           -- the host's embodied grams
);
CREATE INDEX intervals_by_end ON intervals (end_unix_ns);
CREATE INDEX intervals_by_run ON intervals (run_id);
CREATE TABLE domains (
    interval_id INTEGER NOT NULL REFERENCES intervals(id) ON DELETE CASCADE,
    domain TEXT NOT NULL,
    joules REAL NOT NULL,
    source TEXT NOT NULL,
    estimated INTEGER NOT NULL,
    PRIMARY KEY (interval_id, domain)
) WITHOUT ROWID;
CREATE TABLE processes (
    interval_id INTEGER NOT NULL REFERENCES intervals(id) ON DELETE CASCADE,
    pid INTEGER NOT NULL,
    comm TEXT NOT NULL,
    exe TEXT NOT NULL,
    model TEXT NOT NULL,
    container TEXT NOT NULL,
    cpu_time_s REAL NOT NULL,
    energy_j REAL NOT NULL,
    cpu_j REAL NOT NULL,
    dram_j REAL NOT NULL,
    gpu_j REAL NOT NULL,
    idle_j REAL NOT NULL,
    carbon_g REAL NOT NULL,
    embodied_g REAL NOT NULL,
    PRIMARY KEY (interval_id, pid)
) WITHOUT ROWID;
CREATE TABLE models (
    interval_id INTEGER NOT NULL REFERENCES intervals(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    processes INTEGER NOT NULL,
    cpu_time_s REAL NOT NULL,
    energy_j REAL NOT NULL,
    gpu_j REAL NOT NULL,
    idle_j REAL NOT NULL,
    watts REAL NOT NULL,
    carbon_g REAL NOT NULL,
    embodied_g REAL NOT NULL,
    PRIMARY KEY (interval_id, name)
) WITHOUT ROWID;
CREATE TABLE containers (
    interval_id INTEGER NOT NULL REFERENCES intervals(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    processes INTEGER NOT NULL,
    cpu_time_s REAL NOT NULL,
    energy_j REAL NOT NULL,
    gpu_j REAL NOT NULL,
    idle_j REAL NOT NULL,
    watts REAL NOT NULL,
    carbon_g REAL NOT NULL,
    embodied_g REAL NOT NULL,
    PRIMARY KEY (interval_id, name)
) WITHOUT ROWID;
CREATE TABLE requests (
    id INTEGER PRIMARY KEY,
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    end_unix_ns INTEGER NOT NULL,
    model TEXT NOT NULL,
    joules REAL NOT NULL,
    carbon_g REAL NOT NULL,
    tokens INTEGER,
    estimated INTEGER NOT NULL
);
CREATE INDEX requests_by_end ON requests (end_unix_ns);
CREATE INDEX requests_by_run ON requests (run_id);
CREATE VIEW request_aggregates AS
    SELECT run_id, model, end_unix_ns / 3600000000000 AS hour,
           count(*) AS requests, sum(joules) AS joules, sum(carbon_g) AS carbon_g,
           sum(tokens) AS tokens, sum(CASE WHEN tokens IS NULL THEN 0 ELSE joules END) AS token_joules
    FROM requests GROUP BY run_id, model, hour;
"#;

/// Sets the connection up (WAL, foreign keys) and creates or checks the schema.
pub fn prepare(conn: &mut Connection) -> Result<(), SchemaError> {
    // Before the first table: pages freed by retention can be given back.
    conn.pragma_update(None, "auto_vacuum", "INCREMENTAL")?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // WAL + NORMAL: a committed interval survives the process being killed (only an
    // OS crash or power loss may take the last commits).
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    check_or_create(conn)
}

/// The schema version of an open database, `None` when it has no schema yet.
pub fn version(conn: &Connection) -> Result<Option<i64>, SchemaError> {
    let has_meta: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
        [],
        |r| r.get(0),
    )?;
    if !has_meta {
        return Ok(None);
    }
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    Ok(v.and_then(|v| v.parse().ok()))
}

fn check_or_create(conn: &mut Connection) -> Result<(), SchemaError> {
    match version(conn)? {
        Some(SCHEMA_VERSION) => Ok(()),
        Some(1) => {
            let tx = conn.transaction()?;
            tx.execute_batch(V2)?;
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
                [SCHEMA_VERSION.to_string()],
            )?;
            tx.commit()?;
            Ok(())
        }
        Some(found) => Err(SchemaError::Version(found)),
        None => {
            let tx = conn.transaction()?;
            tx.execute_batch(SCHEMA)?;
            tx.execute_batch(V2)?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                [SCHEMA_VERSION.to_string()],
            )?;
            tx.commit()?;
            Ok(())
        }
    }
}

/// Checks the schema of a database opened for reading.
pub fn check(conn: &Connection) -> Result<(), SchemaError> {
    match version(conn)? {
        Some(1 | SCHEMA_VERSION) => Ok(()),
        Some(found) => Err(SchemaError::Version(found)),
        None => Err(SchemaError::NotHistory),
    }
}

/// What is wrong with a database's schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// SQLite failed.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// Written by another version of the agent.
    #[error("schema version {0}; this agent reads version {SCHEMA_VERSION}")]
    Version(i64),
    /// Not an energy-agent history.
    #[error("not an energy-agent history (no schema version)")]
    NotHistory,
}
