//! `energy-agent gate`: a model's recorded figures against its carbon budget (from the
//! config file's `[budget.MODEL]`), and its drift against a baseline, as a CI/CD gate.
//! Exit 0 when every check is within its limit, 1 when one is over, 2 when one cannot
//! be checked: insufficient data is never a pass.
//!
//! After [`crate::report`] in the stage order: it judges the report's figures.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::{
    carbon::J_PER_KWH,
    report::{
        Figures,
        compare::Comparison,
        render::{columns, sig},
        stats::Change,
    },
};

/// One model's budget (`[budget.MODEL]` in the config file); unset limits are not
/// checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Grams CO2e per 1,000 requests (operational).
    pub max_gco2e_per_1k_requests: Option<f64>,
    /// Joules per token (gen_ai input + output tokens).
    pub max_joules_per_token: Option<f64>,
    /// kWh of one run (a `run` or a `measure`).
    pub max_kwh_per_run: Option<f64>,
}

/// Budgets by model name.
pub type Budgets = BTreeMap<String, Budget>;

/// What one check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Within the limit.
    Within,
    /// Does not apply to this input (a measure report has no requests).
    NotApplicable,
    /// The data cannot decide.
    Unusable,
    /// Over the limit.
    Over,
}

/// One comparison of a figure with its limit.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Check {
    /// Model.
    pub model: String,
    /// What is limited (`max_joules_per_token`, `max_regression j_per_request`, …).
    pub limit: String,
    /// The limit.
    pub budget: f64,
    /// The figure, when there is one.
    pub actual: Option<f64>,
    /// The outcome.
    pub verdict: Verdict,
    /// Why, when the figure is missing or needs context.
    pub note: String,
}

fn check(model: &str, limit: &str, budget: f64, actual: Result<f64, String>) -> Check {
    let (actual, verdict, note) = match actual {
        Ok(v) if v.is_finite() && v > budget => (Some(v), Verdict::Over, String::new()),
        Ok(v) if v.is_finite() => (Some(v), Verdict::Within, String::new()),
        Ok(v) => (None, Verdict::Unusable, format!("not a number: {v}")),
        Err(note) => (None, Verdict::Unusable, note),
    };
    Check {
        model: model.into(),
        limit: limit.into(),
        budget,
        actual,
        verdict,
        note,
    }
}

/// A model's history figures (None: nothing recorded in the window) against its budget.
pub fn check_figures(model: &str, budget: &Budget, f: Option<&Figures>) -> Vec<Check> {
    let none = || format!("no intervals of {model} in the window");
    let mut out = Vec::new();
    if let Some(max) = budget.max_gco2e_per_1k_requests {
        let v = match f {
            None => Err(none()),
            Some(f) => f
                .g_per_request
                .map(|g| g * 1000.0)
                .ok_or_else(|| "no enriched requests recorded".to_string()),
        };
        out.push(check(model, "max_gco2e_per_1k_requests", max, v));
    }
    if let Some(max) = budget.max_joules_per_token {
        let v = match f {
            None => Err(none()),
            Some(f) => f
                .j_per_token
                .ok_or_else(|| "no recorded request carried token counts".to_string()),
        };
        out.push(check(model, "max_joules_per_token", max, v));
    }
    if let Some(max) = budget.max_kwh_per_run {
        let v = match f {
            None => Err(none()),
            Some(f) if f.energy_j <= 0.0 => Err("no energy recorded".into()),
            Some(f) => Ok(f.max_run_kwh),
        };
        out.push(check(model, "max_kwh_per_run", max, v));
    }
    out
}

/// A `measure --json` report (its command taken as one run of `model`) against the
/// budget: only `max_kwh_per_run` applies; the per-request limits are listed as not
/// applicable.
pub fn check_measure(model: &str, budget: &Budget, report: &serde_json::Value) -> Vec<Check> {
    let mut out = Vec::new();
    for (limit, max) in [
        (
            "max_gco2e_per_1k_requests",
            budget.max_gco2e_per_1k_requests,
        ),
        ("max_joules_per_token", budget.max_joules_per_token),
    ] {
        if let Some(max) = max {
            out.push(Check {
                model: model.into(),
                limit: limit.into(),
                budget: max,
                actual: None,
                verdict: Verdict::NotApplicable,
                note: "a measure report has no requests".into(),
            });
        }
    }
    if let Some(max) = budget.max_kwh_per_run {
        let kwh = report["energy_j"]["total"]
            .as_f64()
            .filter(|j| *j >= 0.0)
            .map(|j| j / J_PER_KWH)
            .ok_or_else(|| "the report has no energy_j.total".to_string());
        out.push(check(model, "max_kwh_per_run", max, kwh));
    }
    out
}

/// Each model's drift against `max` (a fraction): over when significantly worse by
/// more than `max`; unusable when a side has too few requests.
pub fn check_drift(c: &Comparison, max: f64, model: Option<&str>) -> Vec<Check> {
    let mut out = Vec::new();
    for m in c
        .models
        .iter()
        .filter(|m| model.is_none_or(|x| x == m.model))
    {
        for (metric, change) in [
            ("j_per_request", m.j_per_request),
            ("j_per_token", m.j_per_token),
        ] {
            if metric == "j_per_token" && change.is_none() && m.j_per_request.is_some() {
                continue; // Requests without token counts: J/request is the check.
            }
            out.push(drift_check(&m.model, metric, max, change, m.requests));
        }
    }
    if let Some(model) = model
        && out.is_empty()
    {
        out.push(drift_check(model, "j_per_request", max, None, (0, 0)));
    }
    out
}

fn drift_check(model: &str, metric: &str, max: f64, c: Option<Change>, n: (usize, usize)) -> Check {
    let limit = format!("max_regression {metric}");
    match c {
        None => Check {
            model: model.into(),
            limit,
            budget: max,
            actual: None,
            verdict: Verdict::Unusable,
            note: format!(
                "{} / {} requests: at least 2 on each side are needed",
                n.0, n.1
            ),
        },
        Some(c) => Check {
            model: model.into(),
            limit,
            budget: max,
            actual: Some(c.change),
            verdict: if c.regressed(max) {
                Verdict::Over
            } else {
                Verdict::Within
            },
            note: format!(
                "95% CI [{:+.1}%, {:+.1}%], {} → {} J",
                c.low * 100.0,
                c.high * 100.0,
                sig(c.mean_a),
                sig(c.mean_b)
            ),
        },
    }
}

/// The exit code: 1 when a check is over, else 2 when one is unusable or nothing
/// could be checked, else 0.
pub fn exit_code(checks: &[Check]) -> i32 {
    if checks.iter().any(|c| c.verdict == Verdict::Over) {
        1
    } else if checks.iter().any(|c| c.verdict == Verdict::Unusable)
        || !checks.iter().any(|c| c.verdict == Verdict::Within)
    {
        2
    } else {
        0
    }
}

/// The comparison table and the verdict line.
pub fn render(checks: &[Check]) -> String {
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|c| {
            let pct = c.limit.starts_with("max_regression");
            let show = |v: f64| {
                if pct {
                    format!("{:+.1}%", v * 100.0)
                } else {
                    sig(v)
                }
            };
            vec![
                c.model.clone(),
                c.limit.clone(),
                show(c.budget),
                c.actual.map_or_else(|| "-".into(), show),
                match c.verdict {
                    Verdict::Within => "within",
                    Verdict::NotApplicable => "n/a",
                    Verdict::Unusable => "NO DATA",
                    Verdict::Over => "OVER",
                }
                .into(),
                c.note.clone(),
            ]
        })
        .collect();
    let header = ["model", "limit", "budget", "actual", "status", "note"];
    let mut out = columns(&header, &rows, &[false, false, true, true, false]);
    let over = checks.iter().filter(|c| c.verdict == Verdict::Over).count();
    let unusable = checks
        .iter()
        .filter(|c| c.verdict == Verdict::Unusable)
        .count();
    let _ = match exit_code(checks) {
        0 => writeln!(
            out,
            "gate: pass ({} within budget, {} not applicable)",
            checks
                .iter()
                .filter(|c| c.verdict == Verdict::Within)
                .count(),
            checks
                .iter()
                .filter(|c| c.verdict == Verdict::NotApplicable)
                .count()
        ),
        1 => writeln!(out, "gate: FAIL ({over} over budget)"),
        _ if checks.is_empty() => writeln!(out, "gate: UNUSABLE (nothing to check)"),
        _ => writeln!(out, "gate: UNUSABLE ({unusable} without enough data)"),
    };
    out
}

#[cfg(test)]
mod tests;
