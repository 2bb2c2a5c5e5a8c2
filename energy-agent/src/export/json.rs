//! One JSON object per interval on a line (`energy-agent run --output json`), for
//! scripts and tests: the attribution report's fields, with each process, model,
//! container and the idle bucket given its grams (`carbon_g`, `embodied_g`), the
//! interval's `carbon` summary, and wall-clock start and end.

use std::io::Write;

use super::Sink;
use serde_json::Value;

use crate::{
    attribute::GroupReport,
    carbon::{CarbonReport, Footprint},
    clock::WallClock,
};

/// A field each line carries from outside the interval report (the OTLP path's
/// counters), read when the line is written.
type Field = (&'static str, Box<dyn Fn() -> Value + Send>);

/// Writes each interval as one JSON line.
pub struct JsonLines<W: Write> {
    out: W,
    clock: WallClock,
    fields: Vec<Field>,
}

impl<W: Write> JsonLines<W> {
    /// JSON lines to `out`, with wall-clock times from `clock`.
    pub fn new(out: W, clock: WallClock) -> Self {
        Self {
            out,
            clock,
            fields: Vec::new(),
        }
    }

    /// Adds `key` to every line, with the value `value` gives then.
    pub fn with_field(
        mut self,
        key: &'static str,
        value: impl Fn() -> Value + Send + 'static,
    ) -> Self {
        self.fields.push((key, Box::new(value)));
        self
    }
}

/// A row's JSON object with its grams added.
fn with_grams(row: &impl serde::Serialize, grams: Footprint) -> serde_json::Result<Value> {
    let mut value = serde_json::to_value(row)?;
    if let Some(map) = value.as_object_mut() {
        map.insert("carbon_g".into(), grams.carbon_g.into());
        map.insert("embodied_g".into(), grams.embodied_g.into());
    }
    Ok(value)
}

/// The rows of `groups`, each with its grams.
fn groups(groups: &[GroupReport], r: &CarbonReport) -> serde_json::Result<Value> {
    groups
        .iter()
        .map(|g| with_grams(g, r.carbon.group(g)))
        .collect()
}

/// One interval as a JSON object.
pub fn interval_json(r: &CarbonReport, clock: &WallClock) -> serde_json::Result<Value> {
    let mut value = serde_json::to_value(&r.energy)?;
    let Some(map) = value.as_object_mut() else {
        return Ok(value);
    };
    let processes: serde_json::Result<Vec<Value>> = r
        .processes
        .iter()
        .map(|p| with_grams(p, r.carbon.process(p)))
        .collect();
    let fields: [(&str, Value); 7] = [
        ("processes", Value::Array(processes?)),
        ("models", groups(&r.models, r)?),
        ("containers", groups(&r.containers, r)?),
        ("idle", with_grams(&r.idle, r.idle())?),
        ("carbon", serde_json::to_value(&r.carbon)?),
        ("start_unix_ns", clock.unix_ns(r.start_ns).into()),
        ("end_unix_ns", clock.unix_ns(r.end_ns).into()),
    ];
    for (key, v) in fields {
        map.insert(key.into(), v);
    }
    Ok(value)
}

impl<W: Write> Sink for JsonLines<W> {
    fn emit(&mut self, report: &CarbonReport) -> std::io::Result<()> {
        let mut value = interval_json(report, &self.clock).map_err(std::io::Error::other)?;
        if let Some(map) = value.as_object_mut() {
            for (key, field) in &self.fields {
                map.insert((*key).into(), field());
            }
        }
        serde_json::to_writer(&mut self.out, &value).map_err(std::io::Error::other)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribute::ProcessReport;
    use crate::units::Joules;

    #[test]
    fn one_parseable_line_per_interval() {
        let mut buf = Vec::new();
        let clock = WallClock::now();
        {
            let mut sink = JsonLines::new(&mut buf, clock);
            let mut energy = crate::attribute::IntervalReport {
                start_ns: 1,
                end_ns: 1_000_000_001,
                duration_s: 1.0,
                processes: vec![ProcessReport {
                    pid: 7,
                    energy_j: Joules(36_000.0),
                    cpu_time_s: 0.5,
                    ..Default::default()
                }],
                ..Default::default()
            };
            crate::attribute::regroup(&mut energy);
            let mut carbon = crate::carbon::CarbonSummary {
                pue: 1.5,
                ..Default::default()
            };
            carbon.intensity.g_per_kwh = 100.0;
            let report = CarbonReport { energy, carbon };
            sink.emit(&report).unwrap();
            sink.emit(&report).unwrap();
        }
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["duration_s"], 1.0);
        let start = lines[0]["start_unix_ns"].as_u64().unwrap();
        let end = lines[0]["end_unix_ns"].as_u64().unwrap();
        assert_eq!(end - start, 1_000_000_000);
        // 36 kJ = 0.01 kWh at 100 g/kWh × PUE 1.5 = 1.5 g, on the process and its model.
        let grams = |v: &serde_json::Value| v["carbon_g"].as_f64().unwrap();
        assert!((grams(&lines[0]["processes"][0]) - 1.5).abs() < 1e-12);
        assert!((grams(&lines[0]["models"][0]) - 1.5).abs() < 1e-12);
        assert_eq!(lines[0]["processes"][0]["pid"], 7);
        assert_eq!(lines[0]["idle"]["carbon_g"], 0.0);
        assert_eq!(lines[0]["carbon"]["pue"], 1.5);
    }
}
