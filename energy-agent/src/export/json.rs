//! One JSON object per interval on a line (`energy-agent run --output json`), for
//! scripts and tests.

use std::io::Write;

use super::Sink;
use crate::{attribute::IntervalReport, clock::WallClock};

/// Writes each interval as one JSON line.
pub struct JsonLines<W: Write> {
    out: W,
    clock: WallClock,
}

impl<W: Write> JsonLines<W> {
    /// JSON lines to `out`, with wall-clock times from `clock`.
    pub fn new(out: W, clock: WallClock) -> Self {
        Self { out, clock }
    }
}

impl<W: Write> Sink for JsonLines<W> {
    fn emit(&mut self, report: &IntervalReport) -> std::io::Result<()> {
        let mut value = serde_json::to_value(report).map_err(std::io::Error::other)?;
        if let Some(map) = value.as_object_mut() {
            map.insert(
                "start_unix_ns".into(),
                self.clock.unix_ns(report.start_ns).into(),
            );
            map.insert(
                "end_unix_ns".into(),
                self.clock.unix_ns(report.end_ns).into(),
            );
        }
        serde_json::to_writer(&mut self.out, &value).map_err(std::io::Error::other)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_parseable_line_per_interval() {
        let mut buf = Vec::new();
        let clock = WallClock::now();
        {
            let mut sink = JsonLines::new(&mut buf, clock);
            let report = IntervalReport {
                start_ns: 1,
                end_ns: 1_000_000_001,
                duration_s: 1.0,
                ..Default::default()
            };
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
    }
}
