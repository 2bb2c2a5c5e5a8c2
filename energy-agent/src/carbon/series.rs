//! `--carbon-file CSV`: a time series of intensities, `timestamp,g_per_kwh` per line
//! (RFC 3339 or Unix seconds), looked up at each interval's time: the value of the last
//! row at or before it. Before the first row the first value is used, and after a gap
//! longer than the series' own spacing the last value is kept; both are noted.

use std::{
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use super::{Intensity, IntensityProvider};

/// A loaded series, sorted by time.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    name: String,
    points: Vec<(SystemTime, f64)>,
}

fn parse_time(text: &str) -> Option<SystemTime> {
    if let Ok(secs) = text.parse::<f64>() {
        // Past Duration's (or SystemTime's) range, or NaN: not a time.
        return Duration::try_from_secs_f64(secs)
            .ok()
            .and_then(|d| UNIX_EPOCH.checked_add(d));
    }
    humantime::parse_rfc3339_weak(text.trim_end_matches('Z'))
        .ok()
        .or_else(|| humantime::parse_rfc3339(text).ok())
}

impl Series {
    /// Parses `timestamp,g_per_kwh` lines (a header line and `#` comments are allowed).
    pub fn parse(text: &str, name: &str) -> Result<Self, String> {
        let mut points = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |what: &str| format!("carbon file {name} line {}: {what}: {line:?}", i + 1);
            let (t, v) = line
                .split_once(',')
                .ok_or_else(|| bad("expected timestamp,g_per_kwh"))?;
            let Some(t) = parse_time(t.trim()) else {
                if points.is_empty() && i == 0 {
                    continue; // a header
                }
                return Err(bad("bad timestamp (RFC 3339 or Unix seconds)"));
            };
            let v: f64 = v
                .trim()
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| bad("bad intensity"))?;
            points.push((t, v));
        }
        if points.is_empty() {
            return Err(format!("carbon file {name}: no rows"));
        }
        points.sort_by_key(|p| p.0);
        Ok(Self {
            name: name.to_string(),
            points,
        })
    }

    /// Reads a series file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("carbon file {}: {e}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The rows, sorted by time.
    pub fn points(&self) -> &[(SystemTime, f64)] {
        &self.points
    }

    /// The file's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value in force at `at`, with a note when `at` is outside the series.
    pub fn at(&self, at: SystemTime) -> (f64, Option<String>) {
        let idx = self.points.partition_point(|p| p.0 <= at);
        if idx == 0 {
            return (
                self.points[0].1,
                Some("before the first row of the carbon file: using the first value".into()),
            );
        }
        let (t, v) = self.points[idx - 1];
        let spacing = if self.points.len() > 1 {
            let span = self.points[self.points.len() - 1]
                .0
                .duration_since(self.points[0].0)
                .unwrap_or_default();
            span / (self.points.len() as u32 - 1)
        } else {
            Duration::from_secs(3600)
        };
        let late = idx == self.points.len() && at.duration_since(t).unwrap_or_default() > spacing;
        (
            v,
            late.then(|| "after the last row of the carbon file: keeping its value".into()),
        )
    }
}

impl IntensityProvider for Series {
    fn intensity(&mut self, at: SystemTime) -> Intensity {
        let (g, note) = self.at(at);
        Intensity {
            g_per_kwh: g,
            source: format!("file:{}", self.name),
            note,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> SystemTime {
        parse_time(s).unwrap()
    }

    const CSV: &str = "timestamp,g_per_kwh\n2026-11-29T10:00:00Z,100\n2026-11-29T11:00:00Z,200\n# comment\n2026-11-29T12:00:00Z,50\n";

    #[test]
    fn step_lookup_at_boundaries() {
        let s = Series::parse(CSV, "x.csv").unwrap();
        assert_eq!(
            s.at(t("2026-11-29T10:00:00Z")),
            (100.0, None),
            "exactly at a row"
        );
        assert_eq!(
            s.at(t("2026-11-29T10:59:59Z")).0,
            100.0,
            "just before the next"
        );
        assert_eq!(
            s.at(t("2026-11-29T11:00:00Z")).0,
            200.0,
            "the next row starts"
        );
        assert_eq!(
            s.at(t("2026-11-29T12:30:00Z")),
            (50.0, None),
            "within one spacing after the last"
        );
        let (v, note) = s.at(t("2026-11-29T09:00:00Z"));
        assert_eq!(v, 100.0);
        assert!(note.unwrap().contains("before the first row"));
        let (v, note) = s.at(t("2026-11-29T14:00:00Z"));
        assert_eq!(v, 50.0);
        assert!(note.unwrap().contains("after the last row"));
    }

    #[test]
    fn unix_seconds_and_unsorted_rows() {
        let s = Series::parse("200,2\n100,1\n", "u").unwrap();
        assert_eq!(s.at(UNIX_EPOCH + Duration::from_secs(150)).0, 1.0);
        assert_eq!(s.at(UNIX_EPOCH + Duration::from_secs(250)).0, 2.0);
    }

    #[test]
    fn bad_rows_name_the_line() {
        let e = Series::parse("2026-11-29T10:00:00Z,100\nnot-a-time,3\n", "f").unwrap_err();
        assert!(e.contains("line 2") && e.contains("bad timestamp"), "{e}");
        let e = Series::parse("2026-11-29T10:00:00Z,-4\n", "f").unwrap_err();
        assert!(e.contains("bad intensity"), "{e}");
        assert!(Series::parse("", "f").unwrap_err().contains("no rows"));
    }

    /// Found by the carbon fuzz target (fuzz/regressions/carbon/series-time-huge): a
    /// Unix time past Duration's range panicked instead of naming the line.
    #[test]
    fn a_time_out_of_range_is_a_bad_timestamp() {
        for time in [
            "2023017225866755222222222220017225866755",
            "1e300",
            "inf",
            "NaN",
            "-5",
        ] {
            let text = format!("2026-11-29T10:00:00Z,100\n{time},100\n");
            let e = Series::parse(&text, "f").unwrap_err();
            assert!(
                e.contains("line 2") && e.contains("bad timestamp"),
                "{time}: {e}"
            );
        }
    }
}
