//! `energy-agent when --duration D [--within W]`: the greenest time to start a
//! deferrable job (training, batch inference) in a forecast of grid intensity, and what
//! waiting saves against starting now.
//!
//! After [`crate::carbon`] in the stage order: it reads a [`Forecast`] and nothing
//! else. A start is a candidate when the forecast covers the whole job: from `from`
//! itself, or from any point of the forecast up to `from + within − duration`.

use std::time::{Duration, SystemTime};

use crate::carbon::{J_PER_KWH, forecast::Forecast};

/// The plan.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Plan {
    /// The greenest start, Unix s.
    pub start_unix_s: f64,
    /// The same, RFC 3339.
    pub start: String,
    /// How long from `from` until then, s.
    pub wait_s: f64,
    /// Mean intensity over the job from that start, g/kWh.
    pub g_per_kwh: f64,
    /// Mean intensity over the job starting at `from`, when the forecast covers it.
    pub now_g_per_kwh: Option<f64>,
    /// (now − best) / now.
    pub saving_fraction: Option<f64>,
    /// Grams saved for the job's energy (`--energy-kwh`), at PUE `pue`.
    pub saving_g: Option<f64>,
    /// The forecast's source.
    pub source: String,
}

/// The mean of the step function over `[start, start + d]`; None where the forecast
/// does not cover it.
pub fn mean_over(f: &Forecast, start: SystemTime, d: Duration) -> Option<f64> {
    let end = start + d;
    let first = f.points.first()?.0;
    if start < first || end > f.end()? || d.is_zero() {
        return None;
    }
    let mut weighted = 0.0;
    for (i, (t, g)) in f.points.iter().enumerate() {
        let until = f.points.get(i + 1).map_or(*t + f.step, |n| n.0);
        let (a, b) = ((*t).max(start), until.min(end));
        if b > a {
            weighted += g * b.duration_since(a).unwrap_or_default().as_secs_f64();
        }
    }
    Some(weighted / d.as_secs_f64())
}

/// The greenest start within `[from, from + within − duration]`.
pub fn plan(
    f: &Forecast,
    from: SystemTime,
    duration: Duration,
    within: Duration,
    energy: Option<(f64, f64)>,
) -> Result<Plan, String> {
    if duration.is_zero() {
        return Err("--duration must be more than zero".into());
    }
    if within < duration {
        return Err(format!(
            "--within {} is shorter than --duration {}",
            humantime::format_duration(within),
            humantime::format_duration(duration)
        ));
    }
    let latest = from + (within - duration);
    let candidates = std::iter::once(from)
        .chain((f.points.iter().map(|p| p.0)).filter(|t| *t > from && *t <= latest));
    let best = candidates
        .filter_map(|s| mean_over(f, s, duration).map(|g| (s, g)))
        // The earliest of equal windows: no waiting for nothing.
        .fold(None, |best: Option<(SystemTime, f64)>, (s, g)| match best {
            Some((_, bg)) if bg <= g => best,
            _ => Some((s, g)),
        });
    let Some((start, g)) = best else {
        let end = f
            .end()
            .map(crate::report::unix_ns)
            .map(crate::report::rfc3339);
        return Err(format!(
            "the forecast ({}, to {}) does not cover a {} job starting within {} of {}",
            f.source,
            end.unwrap_or_else(|| "empty".into()),
            humantime::format_duration(duration),
            humantime::format_duration(within),
            crate::report::rfc3339(crate::report::unix_ns(from)),
        ));
    };
    let now = mean_over(f, from, duration);
    let saving_fraction = now.filter(|n| *n > 0.0).map(|n| (n - g) / n);
    let saving_g = now.zip(energy).map(|(n, (kwh, pue))| kwh * (n - g) * pue);
    Ok(Plan {
        start_unix_s: crate::carbon::forecast::unix_s(start),
        start: crate::report::rfc3339(crate::report::unix_ns(start)),
        wait_s: start.duration_since(from).unwrap_or_default().as_secs_f64(),
        g_per_kwh: g,
        now_g_per_kwh: now,
        saving_fraction,
        saving_g,
        source: f.source.clone(),
    })
}

/// The plan for people.
pub fn render(p: &Plan, duration: Duration) -> String {
    let job = humantime::format_duration(duration);
    let wait = humantime::format_duration(Duration::from_secs(p.wait_s.round() as u64));
    let mut out = format!(
        "greenest start: {} (in {wait}): {job} at {:.1} g/kWh on average\n",
        p.start, p.g_per_kwh
    );
    match (p.now_g_per_kwh, p.saving_fraction) {
        (Some(n), Some(s)) => {
            out += &format!(
                "starting now:   {n:.1} g/kWh on average: waiting saves {:.1}% of the job's carbon\n",
                s * 100.0
            );
        }
        _ => out += "starting now:   not covered by the forecast\n",
    }
    if let Some(g) = p.saving_g {
        out += &format!("expected saving: {g:.1} gCO2e for the job's energy\n");
    }
    out += &format!("forecast: {}\n", p.source);
    out
}

/// kWh of a job drawing `watts` for `duration`.
pub fn kwh(watts: f64, duration: Duration) -> f64 {
    watts * duration.as_secs_f64() / J_PER_KWH
}

#[cfg(test)]
mod tests;
