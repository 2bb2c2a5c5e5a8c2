//! Intensity forecasts, for planning when to run a deferrable job (`energy-agent
//! when`): a time-series file, or the forecast endpoints of Electricity Maps (v3
//! `carbon-intensity/forecast`) and WattTime (v3 `forecast`, marginal `co2_moer`). A
//! forecast is a step function: each point's value holds until the next point, the
//! last one for one step.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{
    remote::{Api, G_PER_KWH_PER_LB_PER_MWH, RemoteOptions, agent, get, watttime_login},
    series::Series,
};

/// (time, g/kWh) points.
pub type Points = Vec<(SystemTime, f64)>;

/// A forecast (or a recorded series), sorted by time.
#[derive(Clone, Debug, PartialEq)]
pub struct Forecast {
    /// Where it came from (`file:…`, `electricitymaps:DE forecast`, …).
    pub source: String,
    /// (time, g/kWh), sorted.
    pub points: Vec<(SystemTime, f64)>,
    /// How long the last point holds.
    pub step: Duration,
}

impl Forecast {
    /// A series file as a forecast; its last row holds for the series' mean spacing.
    pub fn from_series(series: &Series) -> Self {
        let points = series.points().to_vec();
        Self {
            source: format!("file:{}", series.name()),
            step: mean_step(&points),
            points,
        }
    }

    /// Where the forecast ends: the last point plus one step.
    pub fn end(&self) -> Option<SystemTime> {
        self.points.last().map(|p| p.0 + self.step)
    }
}

/// The mean spacing of the points (an hour for a single point).
fn mean_step(points: &[(SystemTime, f64)]) -> Duration {
    match (points.first(), points.last()) {
        (Some(a), Some(b)) if points.len() > 1 => {
            b.0.duration_since(a.0).unwrap_or_default() / (points.len() as u32 - 1)
        }
        _ => Duration::from_secs(3600),
    }
}

/// Parses RFC 3339 with `Z` or a numeric offset, with or without fractional seconds.
pub fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let t = text.trim();
    if let Ok(at) = humantime::parse_rfc3339_weak(t.trim_end_matches('Z')) {
        return Some(at);
    }
    // A numeric offset: ±HH:MM after the time.
    let (body, sign, offset) = match t.len().checked_sub(6).map(|i| t.split_at(i)) {
        Some((body, off)) if off.starts_with('+') || off.starts_with('-') => {
            (body, if off.starts_with('+') { 1 } else { -1 }, &off[1..])
        }
        _ => return None,
    };
    let (h, m) = offset.split_once(':')?;
    let secs = h.parse::<u64>().ok()? * 3600 + m.parse::<u64>().ok()? * 60;
    let local = humantime::parse_rfc3339_weak(body).ok()?;
    if sign > 0 {
        local.checked_sub(Duration::from_secs(secs))
    } else {
        local.checked_add(Duration::from_secs(secs))
    }
}

fn sorted(
    mut points: Vec<(SystemTime, f64)>,
    what: &str,
) -> Result<Vec<(SystemTime, f64)>, String> {
    if points.is_empty() {
        return Err(format!("{what}: no forecast points"));
    }
    points.sort_by_key(|p| p.0);
    Ok(points)
}

/// Parses an Electricity Maps `carbon-intensity/forecast` body.
pub fn parse_electricity_maps(body: &str) -> Result<Vec<(SystemTime, f64)>, String> {
    let what = "Electricity Maps forecast";
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("malformed {what} body: {e}"))?;
    let list = v["forecast"]
        .as_array()
        .ok_or_else(|| format!("malformed {what} body: no forecast array"))?;
    let points = list
        .iter()
        .map(|p| {
            let at = p["datetime"].as_str().and_then(parse_timestamp);
            let g = p["carbonIntensity"]
                .as_f64()
                .filter(|g| g.is_finite() && *g >= 0.0);
            at.zip(g)
                .ok_or_else(|| format!("malformed {what} point: {p}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    sorted(points, what)
}

/// Parses a WattTime v3 `forecast` body (lbs/MWh, converted to g/kWh); also returns
/// the points' period.
pub fn parse_watttime(body: &str) -> Result<(Points, Option<Duration>), String> {
    let what = "WattTime forecast";
    let v: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("malformed {what} body: {e}"))?;
    let units = v["meta"]["units"].as_str().unwrap_or("lbs_co2_per_mwh");
    if units != "lbs_co2_per_mwh" {
        return Err(format!("{what} units {units:?}, expected lbs_co2_per_mwh"));
    }
    let list = v["data"]
        .as_array()
        .ok_or_else(|| format!("malformed {what} body: no data array"))?;
    let points = list
        .iter()
        .map(|p| {
            let at = p["point_time"].as_str().and_then(parse_timestamp);
            let g = (p["value"].as_f64())
                .filter(|g| g.is_finite() && *g >= 0.0)
                .map(|lbs| lbs * G_PER_KWH_PER_LB_PER_MWH);
            at.zip(g)
                .ok_or_else(|| format!("malformed {what} point: {p}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let period = v["meta"]["data_point_period_seconds"]
        .as_u64()
        .map(Duration::from_secs);
    Ok((sorted(points, what)?, period))
}

/// Fetches a forecast covering at least `horizon` from the API.
pub fn fetch(api: &Api, opts: &RemoteOptions, horizon: Duration) -> Result<Forecast, String> {
    let agent = agent(opts.timeout);
    let base = opts.base_url.trim_end_matches('/');
    match api {
        Api::ElectricityMaps { zone, token } => {
            let hours = horizon.as_secs().div_ceil(3600).max(1);
            let url = format!("{base}/carbon-intensity/forecast?zone={zone}&horizonHours={hours}");
            let points =
                parse_electricity_maps(&get(&agent, &url, &[("auth-token", token.clone())])?)?;
            Ok(Forecast {
                source: format!("electricitymaps:{zone} forecast"),
                step: mean_step(&points),
                points,
            })
        }
        Api::WattTime {
            region,
            username,
            password,
        } => {
            let token = watttime_login(&agent, base, username, password)?;
            let hours = horizon.as_secs().div_ceil(3600).clamp(1, 72);
            let url = format!(
                "{base}/v3/forecast?region={region}&signal_type=co2_moer&horizon_hours={hours}"
            );
            let body = get(
                &agent,
                &url,
                &[("Authorization", format!("Bearer {token}"))],
            )?;
            let (points, period) = parse_watttime(&body)?;
            Ok(Forecast {
                source: format!("watttime:{region} forecast (marginal)"),
                step: period.unwrap_or_else(|| mean_step(&points)),
                points,
            })
        }
    }
}

/// Unix seconds of a time (for messages and JSON).
pub fn unix_s(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::carbon::remote::tests::serve;

    #[test]
    fn timestamps_with_offsets_and_fractions() {
        let z = parse_timestamp("2026-05-01T10:00:00Z").unwrap();
        assert_eq!(parse_timestamp("2026-05-01T10:00:00.000Z"), Some(z));
        assert_eq!(parse_timestamp("2026-05-01T10:00:00+00:00"), Some(z));
        assert_eq!(parse_timestamp("2026-05-01T12:00:00+02:00"), Some(z));
        assert_eq!(parse_timestamp("2026-05-01T05:00:00-05:00"), Some(z));
        assert_eq!(parse_timestamp("tomorrow"), None);
    }

    #[test]
    fn electricity_maps_and_watttime_forecasts_from_a_local_server() {
        let (url, seen) = serve(|path, headers| {
            let body = if path.starts_with("/carbon-intensity/forecast") {
                assert!(
                    headers.to_ascii_lowercase().contains("auth-token: t"),
                    "{headers}"
                );
                r#"{"zone":"DE","forecast":[{"carbonIntensity":300,"datetime":"2026-05-01T11:00:00.000Z"},{"carbonIntensity":200,"datetime":"2026-05-01T10:00:00.000Z"}]}"#
            } else if path == "/login" {
                r#"{"token":"tok"}"#
            } else {
                r#"{"data":[{"point_time":"2026-05-01T10:00:00+00:00","value":1000.0},{"point_time":"2026-05-01T10:05:00+00:00","value":500.0}],"meta":{"units":"lbs_co2_per_mwh","data_point_period_seconds":300}}"#
            };
            (200, body.to_string(), Duration::ZERO)
        });
        let opts = RemoteOptions {
            base_url: url,
            timeout: Duration::from_secs(2),
            refresh: Duration::from_secs(60),
        };
        let em = Api::ElectricityMaps {
            zone: "DE".into(),
            token: "t".into(),
        };
        let f = fetch(&em, &opts, Duration::from_secs(5 * 3600)).unwrap();
        assert_eq!(f.points.len(), 2);
        assert_eq!(f.points[0].1, 200.0, "sorted by time");
        assert_eq!(f.step, Duration::from_secs(3600));
        let wt = Api::WattTime {
            region: "CAISO_NORTH".into(),
            username: "u".into(),
            password: "p".into(),
        };
        let f = fetch(&wt, &opts, Duration::from_secs(24 * 3600)).unwrap();
        assert!((f.points[0].1 - 1000.0 * G_PER_KWH_PER_LB_PER_MWH).abs() < 1e-9);
        assert_eq!(f.step, Duration::from_secs(300));
        let paths = seen.lock().unwrap().clone();
        assert!(
            paths.iter().any(|p| p.contains("horizonHours=5")),
            "{paths:?}"
        );
        assert!(
            paths.iter().any(|p| p.contains("horizon_hours=24")),
            "{paths:?}"
        );
    }

    #[test]
    fn malformed_forecasts_are_errors() {
        assert!(
            parse_electricity_maps("{}")
                .unwrap_err()
                .contains("no forecast")
        );
        assert!(
            parse_electricity_maps(r#"{"forecast":[]}"#)
                .unwrap_err()
                .contains("no forecast points")
        );
        assert!(
            parse_watttime(r#"{"data":[{"point_time":"x","value":1}]}"#)
                .unwrap_err()
                .contains("point")
        );
        assert!(
            parse_watttime(r#"{"meta":{"units":"kg"},"data":[]}"#)
                .unwrap_err()
                .contains("units")
        );
    }
}
