//! The live view behind `energy-agent top`: processes or models sorted by power, with
//! joules and grams of CO2e since it started, the host's power per domain, and which
//! figures are measured and which estimated.

use std::{collections::HashMap, time::Instant};

use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Paragraph, Row, Table},
};

use crate::{carbon::CarbonReport, units::Joules};

/// What the rows are sorted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    /// Current watts.
    Watts,
    /// Joules so far.
    Joules,
    /// Grams so far.
    Carbon,
    /// Current CPU use.
    Cpu,
}

impl SortKey {
    /// The next key in the cycle (the `s` key).
    pub fn next(self) -> Self {
        match self {
            SortKey::Watts => SortKey::Joules,
            SortKey::Joules => SortKey::Carbon,
            SortKey::Carbon => SortKey::Cpu,
            SortKey::Cpu => SortKey::Watts,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SortKey::Watts => "watts",
            SortKey::Joules => "joules",
            SortKey::Carbon => "carbon",
            SortKey::Cpu => "cpu",
        }
    }
}

/// One row of the view: current rate and totals since `top` started.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Entry {
    /// pid (processes) or empty (models).
    pub id: String,
    /// Name.
    pub name: String,
    /// CPU use now, percent of one CPU.
    pub cpu_pct: f64,
    /// Watts now.
    pub watts: f64,
    /// Of which GPU watts now.
    pub gpu_watts: f64,
    /// Joules so far.
    pub joules: f64,
    /// Grams CO2e so far.
    pub grams: f64,
    /// Grams per hour at the current rate.
    pub grams_per_hour: f64,
}

/// The view's state: totals per process and model, the last report, the sort and mode.
#[derive(Debug)]
pub struct View {
    processes: HashMap<u32, Entry>,
    models: HashMap<String, Entry>,
    last: Option<CarbonReport>,
    /// Sort key.
    pub sort: SortKey,
    /// Models instead of processes.
    pub by_model: bool,
    started: Instant,
}

impl Default for View {
    fn default() -> Self {
        Self {
            processes: HashMap::new(),
            models: HashMap::new(),
            last: None,
            sort: SortKey::Watts,
            by_model: false,
            started: Instant::now(),
        }
    }
}

impl View {
    /// Folds in one interval.
    pub fn update(&mut self, r: CarbonReport) {
        let secs = r.duration_s.max(1e-9);
        for e in self.processes.values_mut().chain(self.models.values_mut()) {
            e.watts = 0.0;
            e.gpu_watts = 0.0;
            e.cpu_pct = 0.0;
            e.grams_per_hour = 0.0;
        }
        for p in &r.processes {
            let e = self.processes.entry(p.pid).or_insert_with(|| Entry {
                id: p.pid.to_string(),
                ..Default::default()
            });
            e.name = p.comm.clone();
            fold(
                e,
                p.cpu_time_s,
                p.energy_j,
                p.joules.gpu_j,
                r.carbon.process(p).carbon_g,
                secs,
            );
        }
        for m in &r.models {
            let e = self.models.entry(m.name.clone()).or_insert_with(|| Entry {
                name: m.name.clone(),
                ..Default::default()
            });
            fold(
                e,
                m.cpu_time_s,
                m.energy_j,
                m.joules.gpu_j,
                r.carbon.group(m).carbon_g,
                secs,
            );
        }
        // Processes gone for a while drop out of the view.
        let live: std::collections::HashSet<u32> = r.processes.iter().map(|p| p.pid).collect();
        self.processes
            .retain(|pid, e| live.contains(pid) || e.joules > 0.0);
        if self.processes.len() > 2000 {
            self.processes.retain(|pid, _| live.contains(pid));
        }
        self.last = Some(r);
    }

    /// The rows in display order.
    pub fn rows(&self) -> Vec<Entry> {
        let mut rows: Vec<Entry> = if self.by_model {
            self.models.values().cloned().collect()
        } else {
            self.processes.values().cloned().collect()
        };
        let key = |e: &Entry| match self.sort {
            SortKey::Watts => e.watts,
            SortKey::Joules => e.joules,
            SortKey::Carbon => e.grams,
            SortKey::Cpu => e.cpu_pct,
        };
        rows.sort_by(|a, b| key(b).total_cmp(&key(a)).then(a.name.cmp(&b.name)));
        rows
    }

    /// The header lines: sources (measured or estimated), host power, carbon, keys.
    pub fn header(&self) -> Vec<String> {
        let Some(r) = &self.last else {
            return vec!["energy-agent top — waiting for the first interval…".into()];
        };
        let p = &r.power;
        let domains: Vec<String> = p
            .domains
            .iter()
            .map(|d| {
                format!(
                    "{} {:.1} W ({})",
                    d.domain,
                    d.watts,
                    if d.estimated { "est." } else { "meas." }
                )
            })
            .collect();
        vec![
            format!(
                "energy-agent top — sources: cpu {} ({}), gpu {} — up {}s",
                p.sources.cpu,
                if p.estimated { "ESTIMATED" } else { "measured" },
                p.sources.gpu,
                self.started.elapsed().as_secs()
            ),
            format!(
                "host {:.2} W: cpu {:.2} W, dram {:.2} W, gpu {:.2} W, idle {:.2} W — {}",
                p.total_j.per(r.duration()),
                p.cpu_j.per(r.duration()),
                p.dram_j.per(r.duration()),
                p.gpu_j.per(r.duration()),
                r.idle.energy_j.per(r.duration()),
                domains.join(", ")
            ),
            format!(
                "carbon {:.1} gCO2e/kWh ({}) × PUE {}",
                r.carbon.intensity.g_per_kwh, r.carbon.intensity.source, r.carbon.pue
            ),
            format!(
                "view: {} sorted by {} — keys: s sort, m processes/models, q quit",
                if self.by_model { "models" } else { "processes" },
                self.sort.name()
            ),
            format!("idle power: {}", super::idle_line(&r.idle_power)),
        ]
    }

    /// Draws the header and the table.
    pub fn draw(&self, frame: &mut Frame) {
        let header = self.header();
        let areas = Layout::vertical([Constraint::Length(header.len() as u16), Constraint::Min(1)])
            .split(frame.area());
        let lines: Vec<Line> = header.into_iter().map(Line::from).collect();
        frame.render_widget(Paragraph::new(lines), areas[0]);
        let title = if self.by_model { "MODEL" } else { "PROCESS" };
        let head = Row::new(["PID", title, "CPU%", "W", "GPU W", "J", "gCO2e", "gCO2e/h"])
            .style(Style::default().add_modifier(Modifier::REVERSED));
        let rows: Vec<Row> = self
            .rows()
            .into_iter()
            .take(areas[1].height.saturating_sub(1) as usize)
            .map(|e| {
                Row::new([
                    e.id,
                    e.name,
                    format!("{:.1}", e.cpu_pct),
                    format!("{:.2}", e.watts),
                    format!("{:.2}", e.gpu_watts),
                    format!("{:.1}", e.joules),
                    format!("{:.4}", e.grams),
                    format!("{:.3}", e.grams_per_hour),
                ])
            })
            .collect();
        let widths = [
            Constraint::Length(8),
            Constraint::Min(16),
            Constraint::Length(7),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(10),
        ];
        frame.render_widget(Table::new(rows, widths).header(head), areas[1]);
    }
}

fn fold(e: &mut Entry, cpu_s: f64, joules: Joules, gpu_j: Joules, grams: f64, secs: f64) {
    e.cpu_pct = 100.0 * cpu_s / secs;
    e.watts = joules.get() / secs;
    e.gpu_watts = gpu_j.get() / secs;
    e.joules += joules.get();
    e.grams += grams;
    e.grams_per_hour = grams / secs * 3600.0;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        attribute::{GroupReport, IntervalReport, ProcessReport},
        carbon::CarbonSummary,
    };

    fn report(pid: u32, comm: &str, j: f64) -> CarbonReport {
        let p = ProcessReport {
            pid,
            comm: comm.into(),
            model: comm.into(),
            cpu_time_s: 0.5,
            energy_j: Joules(j),
            ..Default::default()
        };
        let energy = IntervalReport {
            duration_s: 1.0,
            models: vec![GroupReport {
                name: comm.into(),
                processes: 1,
                energy_j: Joules(j),
                ..Default::default()
            }],
            processes: vec![p],
            ..Default::default()
        };
        // 360 g/kWh: 1e-4 g per joule.
        let mut carbon = CarbonSummary {
            pue: 1.0,
            ..Default::default()
        };
        carbon.intensity.g_per_kwh = 360.0;
        CarbonReport { energy, carbon }
    }

    #[test]
    fn totals_accumulate_and_rates_are_current() {
        let mut v = View::default();
        v.update(report(1, "a", 3.0));
        v.update(report(1, "a", 5.0));
        let rows = v.rows();
        assert_eq!(rows[0].joules, 8.0);
        assert_eq!(rows[0].watts, 5.0);
        assert_eq!(rows[0].cpu_pct, 50.0);
        assert!((rows[0].grams_per_hour - 5e-4 * 3600.0).abs() < 1e-9);
        let mut r = report(1, "a", 5.0);
        r.energy.processes[0].joules.gpu_j = Joules(4.0);
        v.update(r);
        assert_eq!(v.rows()[0].gpu_watts, 4.0);
    }

    #[test]
    fn sort_and_mode_keys() {
        let mut v = View::default();
        v.update(report(1, "big-then-idle", 100.0));
        let mut r = report(2, "steady", 2.0);
        r.energy.processes.push(ProcessReport {
            pid: 1,
            comm: "big-then-idle".into(),
            ..Default::default()
        });
        v.update(r);
        assert_eq!(v.rows()[0].name, "steady", "by current watts");
        v.sort = v.sort.next();
        assert_eq!(v.sort, SortKey::Joules);
        assert_eq!(v.rows()[0].name, "big-then-idle", "by joules so far");
        v.by_model = true;
        assert!(v.rows().iter().any(|e| e.name == "steady"));
        assert!(v.header()[3].contains("models sorted by joules"));
    }
}
