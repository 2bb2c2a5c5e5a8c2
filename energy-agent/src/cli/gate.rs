//! `energy-agent gate`: its flags, and the choice of what is checked.

use std::{path::PathBuf, time::SystemTime};

use anyhow::Context as _;
use clap::Args;

use crate::{
    gate::{self, Budgets, Check},
    report::{GroupBy, History, compare},
};

/// Options of `energy-agent gate`.
#[derive(Debug, Args)]
pub struct GateArgs {
    /// The config file with the budgets (`[budget.MODEL]`).
    #[arg(long, value_name = "FILE")]
    pub budget: Option<PathBuf>,
    /// Check the figures recorded in this history.
    #[arg(long, value_name = "FILE", conflicts_with = "measure_json")]
    pub history: Option<PathBuf>,
    /// Check one `measure --json` report.
    #[arg(long, value_name = "FILE")]
    pub measure_json: Option<PathBuf>,
    /// Only this model (default: every model with a budget).
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// The window.
    #[command(flatten)]
    pub window: super::report::WindowArgs,
    /// Fail when J/request or J/token is significantly worse in B than in A by more than
    /// this (10%, 0.1); needs --compare.
    #[arg(long, value_name = "PCT", value_parser = parse_fraction, requires = "compare")]
    pub max_regression: Option<f64>,
    /// The baseline and the candidate: FROM/TO..FROM/TO or key=A..key=B (key=A..B).
    #[arg(long, value_name = "A..B", requires = "history")]
    pub compare: Option<String>,
}

/// Parses `10%` or `0.1`.
pub fn parse_fraction(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => t.parse::<f64>(),
    }
    .map_err(|_| format!("{s:?} is not a percentage (10%) or a fraction (0.1)"))?;
    if !(v.is_finite() && v >= 0.0) {
        return Err(format!("{s:?}: must be zero or more"));
    }
    Ok(v)
}

/// Reads the budgets of a config file; an error when it has none.
pub fn load_budgets(path: &std::path::Path) -> anyhow::Result<Budgets> {
    let config = super::config::Config::load(path)?;
    if config.budget.is_empty() {
        anyhow::bail!(
            "config {}: no [budget.MODEL] section to check against",
            path.display()
        );
    }
    Ok(config.budget)
}

/// The one budget a single-command check uses: `model`'s, else the only one.
pub fn pick_budget<'a>(
    budgets: &'a Budgets,
    model: Option<&'a str>,
) -> anyhow::Result<(&'a str, &'a gate::Budget)> {
    match model {
        Some(m) => budgets
            .get(m)
            .map(|b| (m, b))
            .ok_or_else(|| anyhow::anyhow!("no [budget.{m}] in the budget file")),
        None if budgets.len() == 1 => budgets
            .iter()
            .next()
            .map(|(m, b)| (m.as_str(), b))
            .ok_or_else(|| anyhow::anyhow!("no budget")),
        None => anyhow::bail!(
            "the budget file has {} models: choose one with --model (or --label model=NAME)",
            budgets.len()
        ),
    }
}

impl GateArgs {
    /// Runs the checks, prints the table; returns 0 (within), 1 (over) or 2 (unusable).
    pub fn run(&self) -> anyhow::Result<i32> {
        if self.budget.is_none() && self.max_regression.is_none() {
            anyhow::bail!("nothing to check: give --budget FILE and/or --max-regression");
        }
        let budgets = match &self.budget {
            Some(path) => load_budgets(path)?,
            None => Budgets::new(),
        };
        let checks = match (&self.history, &self.measure_json) {
            (Some(path), None) => self.history_checks(path, &budgets)?,
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let report: serde_json::Value =
                    serde_json::from_str(text.trim()).with_context(|| {
                        format!("{} is not a measure --json report", path.display())
                    })?;
                let (model, budget) = pick_budget(&budgets, self.model.as_deref())?;
                gate::check_measure(model, budget, &report)
            }
            _ => anyhow::bail!("give --history FILE or --measure-json FILE"),
        };
        print!("{}", gate::render(&checks));
        Ok(gate::exit_code(&checks))
    }

    fn history_checks(
        &self,
        path: &std::path::Path,
        budgets: &Budgets,
    ) -> anyhow::Result<Vec<Check>> {
        let history = History::open(path)?;
        let w = self.window.window()?;
        let report = history.report(&GroupBy::Model, &w)?;
        let models: Vec<&str> = match &self.model {
            Some(m) => vec![m.as_str()],
            None => budgets.keys().map(String::as_str).collect(),
        };
        let mut checks = Vec::new();
        for model in models {
            let Some(budget) = budgets.get(model) else {
                if self.budget.is_some() {
                    anyhow::bail!("no [budget.{model}] in the budget file");
                }
                continue;
            };
            let figures = report.groups.iter().find(|g| g.name == model);
            checks.extend(gate::check_figures(model, budget, figures));
        }
        if let (Some(max), Some(spec)) = (self.max_regression, &self.compare) {
            let (a, b) =
                compare::parse_spec(spec, SystemTime::now()).map_err(anyhow::Error::msg)?;
            let c = compare::compare(&history, &a, &b, &w)?;
            println!("baseline A: {}\ncandidate B: {}", c.a, c.b);
            checks.extend(gate::check_drift(&c, max, self.model.as_deref()));
        }
        Ok(checks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractions() {
        assert_eq!(parse_fraction("10%").unwrap(), 0.1);
        assert_eq!(parse_fraction("0.25").unwrap(), 0.25);
        assert!(parse_fraction("-5%").is_err());
        assert!(parse_fraction("ten").is_err());
    }
}
