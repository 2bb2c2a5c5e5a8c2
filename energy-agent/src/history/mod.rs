//! The history: every interval (per process, model and container, the host's domains,
//! carbon and sources) and every enriched request, in an embedded SQLite database
//! (`run --record FILE`, `measure --record FILE --label K=V`), so energy can be
//! reported, budgeted and compared across a model's lifecycle.
//!
//! A sink after export in the stage order: it takes the carbon stage's report (as
//! [`IntervalRow`]s) and the request stage's [`RequestSample`]s. The database is in
//! WAL mode and each interval is one transaction: a killed agent loses at most the
//! interval it was writing. Retention deletes by age and by size. The schema carries a
//! version ([`schema::SCHEMA_VERSION`]); [`crate::report`] reads it.
//!
//! [`RequestSample`]: crate::requests::RequestSample

pub mod rows;
pub mod schema;
pub mod sink;
pub mod store;
#[cfg(test)]
pub(crate) mod tests;

use std::path::PathBuf;

pub use rows::{IntervalRow, RunInfo, RunKind};
pub use sink::HistorySink;
pub use store::{Retention, Store};

/// `--record FILE` and its settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordConfig {
    /// The database file (created when missing).
    pub path: PathBuf,
    /// `--label K=V` of the run.
    pub labels: Vec<(String, String)>,
    /// Age and size limits.
    pub retention: Retention,
    /// `--idle` of the run (bucket or share), stored with it.
    pub idle_policy: String,
}

/// A history that cannot be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// SQLite failed on the file.
    #[error("history {path}: {source}")]
    Sqlite {
        /// The file.
        path: String,
        /// What SQLite said.
        source: rusqlite::Error,
    },
    /// The file's schema is not this agent's.
    #[error("history {path}: {source}")]
    Schema {
        /// The file.
        path: String,
        /// What is wrong.
        source: schema::SchemaError,
    },
    /// The writer thread could not start.
    #[error("history: starting the writer thread: {0}")]
    Thread(String),
}

impl HistoryError {
    fn sqlite(path: &str, source: rusqlite::Error) -> Self {
        Self::Sqlite {
            path: path.to_string(),
            source,
        }
    }

    /// A schema error on `path`.
    pub fn schema(path: &str, source: schema::SchemaError) -> Self {
        Self::Schema {
            path: path.to_string(),
            source,
        }
    }
}
