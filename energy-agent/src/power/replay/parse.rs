//! Reading a recording: each line is a header (blank or `#` comment), a GPU's NVML
//! process line, or a domain's sample line; each step rejects a malformed line with its
//! line number, and a recording without samples is rejected as a whole.

use std::collections::BTreeMap;

use super::{Curve, GpuLines, Recording};
use crate::power::{Domain, PowerError, counter::EnergyCounter};

/// Where a line is, for its error messages: `replay NAME line N: ...`.
#[derive(Clone, Copy)]
struct At<'a> {
    name: &'a str,
    line_no: usize,
}

impl At<'_> {
    fn bad(&self, what: String) -> PowerError {
        PowerError::Invalid(format!(
            "replay {} line {}: {what}",
            self.name, self.line_no
        ))
    }

    /// A non-negative finite number.
    fn number(&self, s: &str) -> Result<f64, PowerError> {
        s.parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| self.bad(format!("bad value {s:?}")))
    }

    /// A raw counter value.
    fn integer(&self, s: &str) -> Result<u64, PowerError> {
        s.parse::<u64>()
            .map_err(|_| self.bad(format!("bad counter value {s:?}")))
    }
}

/// One data line: `time_s,domain,kind,value[,fifth]`, its time and domain parsed.
struct Line<'a> {
    t: f64,
    domain: Domain,
    kind: &'a str,
    value: &'a str,
    /// The range (`counter_uj`) or the pid (`process`, `process_sm`).
    fifth: Option<&'a str>,
}

/// What a line that is not data says: None for data, Some(marks estimated) for a blank
/// line or a comment (`# estimated` is the one comment with a meaning).
fn header(line: &str) -> Option<bool> {
    if line.is_empty() {
        return Some(false);
    }
    line.strip_prefix('#')
        .map(|comment| comment.trim() == "estimated")
}

/// Splits a data line into its fields and parses its time and domain.
fn split_line<'a>(line: &'a str, at: At) -> Result<Line<'a>, PowerError> {
    let fields: Vec<&str> = line.split(',').map(str::trim).collect();
    if !(4..=5).contains(&fields.len()) {
        return Err(at.bad(format!(
            "expected time_s,domain,kind,value[,range], got {} fields: {line:?}",
            fields.len()
        )));
    }
    let t: f64 = fields[0]
        .parse()
        .ok()
        .filter(|t: &f64| t.is_finite() && *t >= 0.0)
        .ok_or_else(|| at.bad(format!("bad time {:?}", fields[0])))?;
    let domain: Domain = fields[1].parse().map_err(|e| at.bad(e))?;
    Ok(Line {
        t,
        domain,
        kind: fields[2],
        value: fields[3],
        fifth: fields.get(4).copied(),
    })
}

/// Adds a GPU's `process` or `process_sm` line to its NVML view.
fn add_process_line(
    line: &Line,
    processes: &mut BTreeMap<u32, GpuLines>,
    at: At,
) -> Result<(), PowerError> {
    let kind = line.kind;
    let Domain::Gpu(gpu) = line.domain else {
        return Err(at.bad(format!(
            "{kind} lines are for GPU domains, not {}",
            line.domain
        )));
    };
    let pid: u32 = line
        .fifth
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| at.bad(format!("{kind} needs a pid as its fifth field")))?;
    let value: f64 = line
        .value
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| at.bad(format!("bad value {:?}", line.value)))?;
    // SM utilisation in percent, summed over NVML's samples of an interval (what
    // --record-power writes): far below 2^32 however many samples.
    if kind == "process_sm" && value > f64::from(u32::MAX) {
        return Err(at.bad(format!("process_sm value {value} is no sum of percentages")));
    }
    let lines = processes.entry(gpu).or_default();
    let list = if kind == "process" {
        &mut lines.running
    } else {
        &mut lines.sm
    };
    list.push((line.t, pid, value));
    Ok(())
}

/// One domain's cumulative curve as its sample lines are read.
#[derive(Default)]
struct Builder {
    curve: Curve,
    counter: Option<EnergyCounter>,
    last_power: Option<(f64, f64)>,
}

impl Builder {
    /// Adds a sample line: the energy it adds since the domain's previous line.
    fn add(&mut self, line: &Line, at: At) -> Result<(), PowerError> {
        let t = line.t;
        if let Some(&(last_t, _)) = self.curve.last()
            && t < last_t
        {
            return Err(at.bad(format!(
                "time {t} goes backwards for {} (after {last_t})",
                line.domain
            )));
        }
        let before = self.curve.last().map_or(0.0, |p| p.1);
        let added = self.energy_of(line, at)?;
        self.curve.push((t, before + added));
        Ok(())
    }

    /// The joules one sample line adds, by its kind.
    fn energy_of(&mut self, line: &Line, at: At) -> Result<f64, PowerError> {
        let first = self.curve.is_empty();
        Ok(match line.kind {
            "joules" => {
                let j = at.number(line.value)?;
                if first { 0.0 } else { j }
            }
            "counter_uj" => {
                let Some(range) = line.fifth else {
                    return Err(at.bad("counter_uj needs a range (max_energy_range_uj)".into()));
                };
                let range = at.integer(range)?;
                let raw = at.integer(line.value)?;
                if raw >= range {
                    return Err(at.bad(format!("counter {raw} is not below its range {range}")));
                }
                let c = self
                    .counter
                    .get_or_insert_with(|| EnergyCounter::new(range));
                c.advance(raw).map_or(0.0, |d| d as f64 / 1e6)
            }
            "energy_mj" => {
                let raw = at.integer(line.value)?;
                let c = self.counter.get_or_insert_with(EnergyCounter::restarting);
                c.advance(raw).map_or(0.0, |d| d as f64 / 1e3)
            }
            "power_w" => {
                let w = at.number(line.value)?;
                let e = self
                    .last_power
                    .map_or(0.0, |(t0, w0)| (w0 + w) / 2.0 * (line.t - t0));
                self.last_power = Some((line.t, w));
                e
            }
            other => {
                return Err(at.bad(format!(
                    "unknown kind {other:?} (joules, counter_uj, energy_mj, power_w, process or process_sm)"
                )));
            }
        })
    }
}

impl Recording {
    /// Parses the text of a recording; `name` labels errors.
    pub fn parse(text: &str, name: &str) -> Result<Self, PowerError> {
        let mut builders: BTreeMap<Domain, Builder> = BTreeMap::new();
        let mut processes: BTreeMap<u32, GpuLines> = BTreeMap::new();
        let mut estimated = false;
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if let Some(marks_estimated) = header(line) {
                estimated |= marks_estimated;
                continue;
            }
            let at = At {
                name,
                line_no: index + 1,
            };
            let line = split_line(line, at)?;
            if matches!(line.kind, "process" | "process_sm") {
                add_process_line(&line, &mut processes, at)?;
            } else {
                builders.entry(line.domain).or_default().add(&line, at)?;
            }
        }
        Self::finish(builders, processes, estimated, name)
    }

    /// The recording the lines built; one with no sample line is rejected.
    fn finish(
        builders: BTreeMap<Domain, Builder>,
        processes: BTreeMap<u32, GpuLines>,
        estimated: bool,
        name: &str,
    ) -> Result<Self, PowerError> {
        if builders.is_empty() {
            return Err(PowerError::Invalid(format!("replay {name}: no samples")));
        }
        Ok(Self {
            curves: builders.into_iter().map(|(d, b)| (d, b.curve)).collect(),
            processes,
            estimated,
        })
    }
}
