//! `--record FILE` and its settings, shared by `run` and `measure`: the history
//! database and the labels the run is stored with.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use crate::history::{RecordConfig, Retention};

/// History flags.
#[derive(Debug, Clone, Args)]
pub struct RecordArgs {
    /// Write every interval (processes, models, containers, host, carbon, sources) and
    /// every enriched request to this SQLite database (created when missing).
    #[arg(long, value_name = "FILE", help_heading = "History")]
    pub record: Option<PathBuf>,
    /// A label of the run, KEY=VALUE (repeatable): model, version, commit, …
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label, help_heading = "History")]
    pub labels: Vec<(String, String)>,
    /// Delete intervals and requests older than this (e.g. 30d).
    #[arg(long, value_name = "AGE", value_parser = super::parse_duration, help_heading = "History")]
    pub record_max_age: Option<Duration>,
    /// Keep the database under this size (e.g. 500MB, 2GiB): the oldest data goes first.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, help_heading = "History")]
    pub record_max_size: Option<u64>,
}

/// Parses `KEY=VALUE`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    let k = k.trim();
    if k.is_empty() || !k.chars().all(|c| c.is_alphanumeric() || "._-".contains(c)) {
        return Err(format!("{s:?}: a key is letters, digits, '.', '_' or '-'"));
    }
    Ok((k.to_string(), v.trim().to_string()))
}

/// Parses a size: bytes, or with a k/M/G/T suffix (decimal) or KiB/MiB/GiB/TiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("{s:?} is not a size (examples: 500MB, 2GiB)"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0f64.powi(4),
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (B, kB, MB, GB, KiB, MiB, GiB)"
            ));
        }
    };
    Ok((n * factor) as u64)
}

impl RecordArgs {
    /// The history settings, when `--record` is given; `idle_policy` is the run's.
    pub fn record_config(&self, idle_policy: &str) -> anyhow::Result<Option<RecordConfig>> {
        let Some(path) = &self.record else {
            if !self.labels.is_empty() {
                anyhow::bail!(
                    "--label needs --record FILE: labels are stored with the recorded run"
                );
            }
            return Ok(None);
        };
        Ok(Some(RecordConfig {
            path: path.clone(),
            labels: self.labels.clone(),
            retention: Retention {
                max_age: self.record_max_age,
                max_bytes: self.record_max_size,
            },
            idle_policy: idle_policy.to_string(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_sizes() {
        assert_eq!(
            parse_label("version=1.2").unwrap(),
            ("version".into(), "1.2".into())
        );
        assert!(parse_label("version").unwrap_err().contains("KEY=VALUE"));
        assert!(parse_label("a b=1").is_err());
        assert_eq!(parse_size("500MB").unwrap(), 500_000_000);
        assert_eq!(parse_size("2GiB").unwrap(), 2 * 1024 * 1024 * 1024);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(
            parse_size("5 parsecs")
                .unwrap_err()
                .contains("unknown unit")
        );
    }
}
