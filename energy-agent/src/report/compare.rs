//! `report --compare A..B`: each model's energy per request and per token in B against
//! A, with a 95% confidence interval from the per-request samples. A side is a window
//! (`FROM/TO`, each a time `parse_time` reads) or a label (`version=1.2`; the other
//! side may give just the value: `version=1.2..1.3`).

use std::{collections::BTreeMap, fmt::Write as _, time::SystemTime};

use super::{
    History, ReportError, Window, parse_time,
    query::Sample,
    render::sig,
    stats::{Change, change},
};

/// One side of a comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Side {
    /// Intervals and requests that ended in `[since, until]`, Unix ns.
    Window {
        /// Start.
        since: u64,
        /// End.
        until: u64,
    },
    /// The runs with this label.
    Label(String, String),
}

impl Side {
    /// The window of this side within `base` (whose since/until also bound a label).
    pub fn window(&self, base: &Window) -> Window {
        match self {
            Side::Window { since, until } => Window {
                since: Some(*since),
                until: Some(*until),
                label: base.label.clone(),
            },
            Side::Label(k, v) => Window {
                label: Some((k.clone(), v.clone())),
                ..base.clone()
            },
        }
    }

    fn describe(&self) -> String {
        match self {
            Side::Window { since, until } => {
                format!("{}/{}", super::rfc3339(*since), super::rfc3339(*until))
            }
            Side::Label(k, v) => format!("{k}={v}"),
        }
    }
}

/// Parses `A..B`.
pub fn parse_spec(text: &str, now: SystemTime) -> Result<(Side, Side), String> {
    let (a, b) = text.split_once("..").ok_or_else(|| {
        format!("--compare {text:?}: expected A..B (FROM/TO..FROM/TO or key=A..key=B)")
    })?;
    let a = parse_side(a, None, now)?;
    let key = match &a {
        Side::Label(k, _) => Some(k.as_str()),
        Side::Window { .. } => None,
    };
    let b = parse_side(b, key, now)?;
    Ok((a, b))
}

fn parse_side(text: &str, key: Option<&str>, now: SystemTime) -> Result<Side, String> {
    let t = text.trim();
    if let Some((from, to)) = t.split_once('/') {
        let (since, until) = (parse_time(from, now)?, parse_time(to, now)?);
        if since >= until {
            return Err(format!("--compare window {t:?} ends before it starts"));
        }
        return Ok(Side::Window { since, until });
    }
    if let Some((k, v)) = t.split_once('=') {
        return Ok(Side::Label(k.trim().into(), v.trim().into()));
    }
    match key {
        Some(k) if !t.is_empty() => Ok(Side::Label(k.into(), t.into())),
        _ => Err(format!(
            "--compare side {t:?}: a window FROM/TO or a label key=value"
        )),
    }
}

/// One model's change from A to B.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ModelDrift {
    /// Model.
    pub model: String,
    /// Requests in A and in B.
    pub requests: (usize, usize),
    /// Energy per request (None: fewer than two requests on a side).
    pub j_per_request: Option<Change>,
    /// Energy per token, per request (None: fewer than two requests with tokens).
    pub j_per_token: Option<Change>,
}

/// A comparison of two sides.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Comparison {
    /// Side A.
    pub a: String,
    /// Side B.
    pub b: String,
    /// Per model seen on either side, by name.
    pub models: Vec<ModelDrift>,
}

/// Compares the requests of `a` and `b` (within `base`).
pub fn compare(
    history: &History,
    a: &Side,
    b: &Side,
    base: &Window,
) -> Result<Comparison, ReportError> {
    let by_model = |side: &Side| -> Result<BTreeMap<String, Vec<Sample>>, ReportError> {
        let mut m: BTreeMap<String, Vec<Sample>> = BTreeMap::new();
        for s in history
            .samples(&side.window(base))
            .map_err(|e| history.err(e))?
        {
            m.entry(s.model.clone()).or_default().push(s);
        }
        Ok(m)
    };
    let (sa, sb) = (by_model(a)?, by_model(b)?);
    let mut names: Vec<&String> = sa.keys().chain(sb.keys()).collect();
    names.sort();
    names.dedup();
    let empty = Vec::new();
    let models = names
        .into_iter()
        .map(|name| {
            let (xa, xb) = (
                sa.get(name).unwrap_or(&empty),
                sb.get(name).unwrap_or(&empty),
            );
            let joules = |s: &[Sample]| s.iter().map(|s| s.joules).collect::<Vec<_>>();
            let per_token = |s: &[Sample]| {
                (s.iter())
                    .filter_map(|s| s.tokens.filter(|t| *t > 0).map(|t| s.joules / t as f64))
                    .collect::<Vec<_>>()
            };
            ModelDrift {
                model: name.clone(),
                requests: (xa.len(), xb.len()),
                j_per_request: change(&joules(xa), &joules(xb)),
                j_per_token: change(&per_token(xa), &per_token(xb)),
            }
        })
        .collect();
    Ok(Comparison {
        a: a.describe(),
        b: b.describe(),
        models,
    })
}

fn pct(c: &Option<Change>) -> String {
    match c {
        Some(c) => format!(
            "{:+.1}% [{:+.1}%, {:+.1}%] ({} → {})",
            c.change * 100.0,
            c.low * 100.0,
            c.high * 100.0,
            sig(c.mean_a),
            sig(c.mean_b)
        ),
        None => "insufficient data".into(),
    }
}

/// The comparison for people.
pub fn table(c: &Comparison) -> String {
    let out = format!("A: {}\nB: {}\n", c.a, c.b);
    let rows: Vec<Vec<String>> = (c.models.iter())
        .map(|m| {
            vec![
                m.model.clone(),
                format!("{} / {}", m.requests.0, m.requests.1),
                pct(&m.j_per_request),
                pct(&m.j_per_token),
            ]
        })
        .collect();
    let header = [
        "model",
        "requests A / B",
        "J/request change [95% CI]",
        "J/token change [95% CI]",
    ];
    out + &super::render::columns(&header, &rows, &[false])
}

/// The comparison as CSV, one row per model.
pub fn csv(c: &Comparison) -> String {
    let mut out =
        String::from("model,requests_a,requests_b,metric,mean_a,mean_b,change,low,high\n");
    for m in &c.models {
        for (metric, ch) in [
            ("j_per_request", &m.j_per_request),
            ("j_per_token", &m.j_per_token),
        ] {
            let cells = match ch {
                Some(c) => format!(
                    "{},{},{},{},{}",
                    c.mean_a, c.mean_b, c.change, c.low, c.high
                ),
                None => ",,,,".into(),
            };
            let _ = writeln!(
                out,
                "{},{},{},{metric},{cells}",
                super::render::csv_field(&m.model),
                m.requests.0,
                m.requests.1
            );
        }
    }
    out
}
