//! `energy-agent report FILE`: its flags.

use std::{io::Write as _, path::PathBuf, time::SystemTime};

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use crate::report::{GroupBy, History, Window, compare, html, parse_time, render};

/// Options of `energy-agent report`.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The history (`run --record FILE`, `measure --record FILE`).
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Group by model, process, container, pod (namespace/name), label (all of a run's
    /// labels) or label:KEY.
    #[arg(long, default_value = "model", value_parser = parse_by)]
    pub by: GroupBy,
    /// The window.
    #[command(flatten)]
    pub window: WindowArgs,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Write to FILE instead of stdout.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Compare energy per request and per token between two windows or two labels:
    /// FROM/TO..FROM/TO, or key=A..key=B (key=A..B).
    #[arg(long, value_name = "A..B")]
    pub compare: Option<String>,
}

/// Report formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// One JSON object.
    Json,
    /// One row per group.
    Csv,
    /// One self-contained page with plots.
    Html,
}

fn parse_by(s: &str) -> Result<GroupBy, String> {
    s.parse()
}

/// What counts: `--since`, `--until`, `--label` (shared with `gate`).
#[derive(Debug, Clone, Args)]
pub struct WindowArgs {
    /// Only what ended at or after this time: RFC 3339, Unix seconds, or a duration
    /// ago (24h).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Only what ended at or before this time.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only the runs with this label.
    #[arg(long, value_name = "KEY=VALUE", value_parser = super::record::parse_label)]
    pub label: Option<(String, String)>,
}

impl WindowArgs {
    /// The window these flags describe.
    pub fn window(&self) -> anyhow::Result<Window> {
        let now = SystemTime::now();
        let at = |t: &Option<String>, flag: &str| {
            t.as_deref()
                .map(|t| parse_time(t, now))
                .transpose()
                .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
        };
        Ok(Window {
            since: at(&self.since, "--since")?,
            until: at(&self.until, "--until")?,
            label: self.label.clone(),
        })
    }
}

impl ReportArgs {
    /// Makes the report and writes it; returns the exit code.
    pub fn run(&self) -> anyhow::Result<i32> {
        let history = History::open(&self.file)?;
        let w = self.window.window()?;
        let text = match &self.compare {
            Some(spec) => {
                let (a, b) =
                    compare::parse_spec(spec, SystemTime::now()).map_err(anyhow::Error::msg)?;
                let c = compare::compare(&history, &a, &b, &w)?;
                match self.format {
                    Format::Table => compare::table(&c),
                    Format::Json => serde_json::to_string_pretty(&c)? + "\n",
                    Format::Csv => compare::csv(&c),
                    Format::Html => anyhow::bail!("--compare renders as table, json or csv"),
                }
            }
            None => {
                let r = history.report(&self.by, &w)?;
                match self.format {
                    Format::Table => render::table(&r),
                    Format::Json => render::json(&r),
                    Format::Csv => render::csv(&r),
                    Format::Html => html::page(&history, &r, &w)?,
                }
            }
        };
        match &self.output {
            Some(path) => {
                std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?
            }
            None => {
                let _ = std::io::stdout().write_all(text.as_bytes());
            }
        }
        Ok(0)
    }
}
