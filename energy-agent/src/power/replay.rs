//! replay:FILE — plays back recorded energy samples as if a meter produced them now,
//! for tests, demos, and users reproducing a problem (`run --record-power FILE` writes
//! this format).
//!
//! The file is CSV, one sample per line: `time_s,domain,kind,value[,range]`.
//! - `time_s`: seconds since the start of the recording (non-decreasing per domain);
//! - `domain`: `package-N`, `core-N`, `uncore-N`, `dram-N`, `psys` or `gpu-N`;
//! - `kind` and `value`:
//!   - `joules`: energy used since this domain's previous line (the first line of a
//!     domain only marks its start);
//!   - `counter_uj`: a cumulative microjoule counter that wraps at `range`
//!     (powercap's `energy_uj` and `max_energy_range_uj`);
//!   - `energy_mj`: NVML's cumulative total-energy counter in millijoules;
//!   - `power_w`: an instantaneous power reading in watts, integrated trapezoidally.
//!
//! Lines starting with `#` are comments; `# estimated` marks the figures as estimates.
//! Playback starts at the first sample call; energy between two calls is read off the
//! piecewise-linear cumulative curve of each domain. Past the end, each domain reports
//! that the recording ended instead of a silent zero.

use std::{collections::BTreeMap, io::Write, path::Path};

use super::{
    Domain, DomainError, PowerError, PowerReading, PowerSource, SampleContext, SourceInfo,
    counter::EnergyCounter, energy,
};

/// A domain's cumulative energy at each sample time: (seconds, joules), non-decreasing.
type Curve = Vec<(f64, f64)>;

/// A parsed recording.
#[derive(Clone, Debug, PartialEq)]
pub struct Recording {
    curves: BTreeMap<Domain, Curve>,
    estimated: bool,
}

fn curve_at(curve: &Curve, t: f64) -> f64 {
    match curve.iter().position(|&(ti, _)| ti > t) {
        None => curve.last().map_or(0.0, |p| p.1),
        Some(0) => curve[0].1,
        Some(i) => {
            let (t0, e0) = curve[i - 1];
            let (t1, e1) = curve[i];
            if t1 <= t0 {
                e1
            } else {
                e0 + (e1 - e0) * (t - t0) / (t1 - t0)
            }
        }
    }
}

struct Builder {
    curve: Curve,
    counter: Option<EnergyCounter>,
    last_power: Option<(f64, f64)>,
}

impl Recording {
    /// Parses the text of a recording; `name` labels errors.
    pub fn parse(text: &str, name: &str) -> Result<Self, PowerError> {
        let mut builders: BTreeMap<Domain, Builder> = BTreeMap::new();
        let mut estimated = false;
        for (index, raw) in text.lines().enumerate() {
            let line_no = index + 1;
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                if comment.trim() == "estimated" {
                    estimated = true;
                }
                continue;
            }
            let bad =
                |what: String| PowerError::Invalid(format!("replay {name} line {line_no}: {what}"));
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if !(4..=5).contains(&fields.len()) {
                return Err(bad(format!(
                    "expected time_s,domain,kind,value[,range], got {} fields: {line:?}",
                    fields.len()
                )));
            }
            let t: f64 = fields[0]
                .parse()
                .ok()
                .filter(|t: &f64| t.is_finite() && *t >= 0.0)
                .ok_or_else(|| bad(format!("bad time {:?}", fields[0])))?;
            let domain: Domain = fields[1].parse().map_err(bad)?;
            let b = builders.entry(domain).or_insert_with(|| Builder {
                curve: Vec::new(),
                counter: None,
                last_power: None,
            });
            if let Some(&(last_t, _)) = b.curve.last()
                && t < last_t
            {
                return Err(bad(format!(
                    "time {t} goes backwards for {domain} (after {last_t})"
                )));
            }
            let before = b.curve.last().map_or(0.0, |p| p.1);
            let number = |s: &str| -> Result<f64, PowerError> {
                s.parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite() && *v >= 0.0)
                    .ok_or_else(|| bad(format!("bad value {s:?}")))
            };
            let integer = |s: &str| -> Result<u64, PowerError> {
                s.parse::<u64>()
                    .map_err(|_| bad(format!("bad counter value {s:?}")))
            };
            let first = b.curve.is_empty();
            let added = match fields[2] {
                "joules" => {
                    let j = number(fields[3])?;
                    if first { 0.0 } else { j }
                }
                "counter_uj" => {
                    let range = match fields.get(4) {
                        Some(r) => integer(r)?,
                        None => {
                            return Err(bad(
                                "counter_uj needs a range (max_energy_range_uj)".into()
                            ));
                        }
                    };
                    let raw = integer(fields[3])?;
                    if raw >= range {
                        return Err(bad(format!("counter {raw} is not below its range {range}")));
                    }
                    let c = b.counter.get_or_insert_with(|| EnergyCounter::new(range));
                    c.advance(raw).map_or(0.0, |d| d as f64 / 1e6)
                }
                "energy_mj" => {
                    let raw = integer(fields[3])?;
                    let c = b.counter.get_or_insert_with(EnergyCounter::restarting);
                    c.advance(raw).map_or(0.0, |d| d as f64 / 1e3)
                }
                "power_w" => {
                    let w = number(fields[3])?;
                    let e = b
                        .last_power
                        .map_or(0.0, |(t0, w0)| (w0 + w) / 2.0 * (t - t0));
                    b.last_power = Some((t, w));
                    e
                }
                other => {
                    return Err(bad(format!(
                        "unknown kind {other:?} (joules, counter_uj, energy_mj or power_w)"
                    )));
                }
            };
            b.curve.push((t, before + added));
        }
        if builders.is_empty() {
            return Err(PowerError::Invalid(format!("replay {name}: no samples")));
        }
        Ok(Self {
            curves: builders.into_iter().map(|(d, b)| (d, b.curve)).collect(),
            estimated,
        })
    }

    /// Reads and parses a recording file.
    pub fn load(path: &Path) -> Result<Self, PowerError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PowerError::Invalid(format!("replay {}: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Energy of `domain` between `t0` and `t1` seconds into the recording.
    pub fn energy_between(&self, domain: Domain, t0: f64, t1: f64) -> f64 {
        self.curves
            .get(&domain)
            .map_or(0.0, |c| (curve_at(c, t1) - curve_at(c, t0)).max(0.0))
    }

    /// The recorded domains.
    pub fn domains(&self) -> Vec<Domain> {
        self.curves.keys().copied().collect()
    }

    /// When the last sample of `domain` was taken, seconds.
    pub fn end(&self, domain: Domain) -> f64 {
        self.curves
            .get(&domain)
            .and_then(|c| c.last())
            .map_or(0.0, |p| p.0)
    }
}

/// Plays a recording back in real time.
pub struct Replay {
    recording: Recording,
    start_ns: Option<u64>,
    last_t: f64,
    /// Only the domains of this class set are reported (CPU source vs GPU source).
    keep: fn(Domain) -> bool,
}

impl Replay {
    /// Plays `recording`, reporting the domains for which `keep` is true.
    pub fn new(recording: Recording, keep: fn(Domain) -> bool) -> Self {
        Self {
            recording,
            start_ns: None,
            last_t: 0.0,
            keep,
        }
    }
}

impl PowerSource for Replay {
    fn info(&self) -> SourceInfo {
        SourceInfo {
            name: "replay",
            estimated: self.recording.estimated,
            resolution_j: 0.0,
        }
    }

    fn domains(&self) -> Vec<Domain> {
        self.recording
            .domains()
            .into_iter()
            .filter(|d| (self.keep)(*d))
            .collect()
    }

    fn sample(&mut self, ctx: &SampleContext) -> PowerReading {
        let mut reading = PowerReading::default();
        let Some(start) = self.start_ns else {
            self.start_ns = Some(ctx.now_ns);
            return reading;
        };
        let t = ctx.now_ns.saturating_sub(start) as f64 / 1e9;
        let info = self.info();
        for domain in self.domains() {
            let end = self.recording.end(domain);
            if self.last_t >= end {
                reading.errors.push(DomainError {
                    domain,
                    error: format!("the recording ended at {end} s"),
                });
                continue;
            }
            let j = self.recording.energy_between(domain, self.last_t, t);
            reading.energies.push(energy(&info, domain, j));
        }
        self.last_t = t;
        reading
    }
}

/// Writes readings in the replay format (`run --record-power FILE`).
pub struct Recorder<W: Write> {
    out: W,
    start_ns: Option<u64>,
}

impl<W: Write> Recorder<W> {
    /// A recorder writing to `out`.
    pub fn new(mut out: W, estimated: bool) -> std::io::Result<Self> {
        writeln!(
            out,
            "# energy-agent replay v1: time_s,domain,kind,value[,range]"
        )?;
        if estimated {
            writeln!(out, "# estimated")?;
        }
        Ok(Self {
            out,
            start_ns: None,
        })
    }

    /// Records one reading taken at `now_ns` (the first call marks the start of each
    /// domain).
    pub fn record(&mut self, now_ns: u64, reading: &PowerReading) -> std::io::Result<()> {
        let start = *self.start_ns.get_or_insert(now_ns);
        let t = now_ns.saturating_sub(start) as f64 / 1e9;
        for e in &reading.energies {
            writeln!(self.out, "{t:.9},{},joules,{}", e.domain, e.joules)?;
        }
        self.out.flush()
    }

    /// Marks the start of `domains` at `now_ns`.
    pub fn start(&mut self, now_ns: u64, domains: &[Domain]) -> std::io::Result<()> {
        self.start_ns = Some(now_ns);
        for d in domains {
            writeln!(self.out, "0.000000000,{d},joules,0")?;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    fn ctx(now_ns: u64) -> SampleContext {
        SampleContext {
            now_ns,
            ..Default::default()
        }
    }

    #[test]
    fn all_kinds_become_energy() {
        let text = "\
# a recording
0,package-0,counter_uj,9000000,10000000
1,package-0,counter_uj,500000,10000000
0,dram-0,joules,99
1,dram-0,joules,2.5
0,gpu-0,energy_mj,1000
1,gpu-0,energy_mj,301000
0,gpu-1,power_w,100
1,gpu-1,power_w,300
";
        let rec = Recording::parse(text, "t").unwrap();
        assert_eq!(
            rec.energy_between(Domain::Package(0), 0.0, 1.0),
            1.5,
            "wrapped counter"
        );
        assert_eq!(rec.energy_between(Domain::Dram(0), 0.0, 1.0), 2.5);
        assert_eq!(rec.energy_between(Domain::Gpu(0), 0.0, 1.0), 300.0);
        assert_eq!(rec.energy_between(Domain::Gpu(1), 0.0, 1.0), 200.0);
        // Linear in between.
        assert_eq!(rec.energy_between(Domain::Gpu(0), 0.0, 0.5), 150.0);
    }

    #[test]
    fn playback_follows_the_clock_and_says_when_it_ends() {
        let rec = Recording::parse("0,package-0,joules,0\n2,package-0,joules,20\n", "t").unwrap();
        let mut r = Replay::new(rec, |_| true);
        assert!(r.sample(&ctx(10 * S)).energies.is_empty());
        assert_eq!(
            r.sample(&ctx(11 * S))
                .joules_of(Domain::Package(0))
                .unwrap(),
            10.0
        );
        assert_eq!(
            r.sample(&ctx(12 * S))
                .joules_of(Domain::Package(0))
                .unwrap(),
            10.0
        );
        let after = r.sample(&ctx(13 * S));
        assert!(after.energies.is_empty());
        assert!(after.errors[0].error.contains("ended at 2 s"));
    }

    #[test]
    fn domain_filter_splits_cpu_and_gpu() {
        let rec = Recording::parse("0,package-0,joules,0\n0,gpu-0,power_w,1\n", "t").unwrap();
        assert_eq!(
            Replay::new(rec.clone(), |d| d.class() != crate::power::DomainClass::Gpu).domains(),
            vec![Domain::Package(0)]
        );
        assert_eq!(
            Replay::new(rec, |d| d.class() == crate::power::DomainClass::Gpu).domains(),
            vec![Domain::Gpu(0)]
        );
    }

    #[test]
    fn malformed_lines_name_the_line() {
        for (text, line, what) in [
            ("0,package-0,joules\n", 1, "expected time_s"),
            (
                "0,package-0,joules,1\nx,package-0,joules,1\n",
                2,
                "bad time",
            ),
            ("0,socket-0,joules,1\n", 1, "unknown domain"),
            ("# c\n0,package-0,watts,1\n", 2, "unknown kind"),
            ("0,package-0,counter_uj,5\n", 1, "needs a range"),
            ("0,package-0,counter_uj,50,10\n", 1, "not below its range"),
            (
                "1,package-0,joules,1\n0,package-0,joules,1\n",
                2,
                "goes backwards",
            ),
            ("0,package-0,joules,-3\n", 1, "bad value"),
        ] {
            let err = Recording::parse(text, "f.csv").unwrap_err().to_string();
            assert!(err.contains(&format!("line {line}:")), "{text:?}: {err}");
            assert!(err.contains(what), "{text:?}: {err}");
        }
        assert!(
            Recording::parse("# nothing\n", "f")
                .unwrap_err()
                .to_string()
                .contains("no samples")
        );
    }

    #[test]
    fn recorder_output_replays_to_the_same_figures() {
        let info = SourceInfo {
            name: "rapl-powercap",
            estimated: false,
            resolution_j: 1e-6,
        };
        let mut buf = Vec::new();
        let mut rec = Recorder::new(&mut buf, false).unwrap();
        rec.start(5 * S, &[Domain::Package(0), Domain::Gpu(0)])
            .unwrap();
        let readings: Vec<(u64, f64, f64)> = vec![
            (6 * S, 12.5, 200.0),
            (7 * S, 30.0, 0.0),
            (8 * S, 0.125, 75.25),
        ];
        for &(t, pkg, gpu) in &readings {
            let reading = PowerReading {
                energies: vec![
                    energy(&info, Domain::Package(0), pkg),
                    energy(&info, Domain::Gpu(0), gpu),
                ],
                errors: vec![],
            };
            rec.record(t, &reading).unwrap();
        }
        let text = String::from_utf8(buf).unwrap();
        let mut replay = Replay::new(Recording::parse(&text, "rec").unwrap(), |_| true);
        replay.sample(&ctx(100 * S));
        for (i, &(_, pkg, gpu)) in readings.iter().enumerate() {
            let r = replay.sample(&ctx((101 + i as u64) * S));
            assert!((r.joules_of(Domain::Package(0)).unwrap() - pkg).abs() < 1e-9);
            assert!((r.joules_of(Domain::Gpu(0)).unwrap() - gpu).abs() < 1e-9);
        }
    }
}
