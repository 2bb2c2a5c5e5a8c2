//! `energy-agent top`: a live full-screen view of processes or models sorted by power,
//! with joules and grams of CO2e since it started, the host's power per domain, and
//! which figures are measured and which estimated.
//!
//! Keys: `s` cycles the sort (watts, joules, carbon, CPU), `m` switches processes and
//! models, `q` (or Ctrl-C) quits and restores the terminal.

use std::{
    collections::HashMap,
    io::IsTerminal,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Args;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Paragraph, Row, Table},
};

use super::{pipeline::Pipeline, sources::SourceArgs};
use crate::{
    attribute::IntervalReport,
    probe::{Probe, ProbeConfig},
};

/// Options of `energy-agent top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Refresh interval.
    #[arg(long, default_value = "1s", value_parser = super::parse_duration)]
    pub interval: Duration,
    /// Source, carbon and attribution flags.
    #[command(flatten)]
    pub sources: SourceArgs,
}

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
    fn next(self) -> Self {
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
    last: Option<IntervalReport>,
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
    pub fn update(&mut self, r: IntervalReport) {
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
                p.carbon_g,
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
                m.carbon_g,
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
        let secs = r.duration_s.max(1e-9);
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
                p.total_j / secs,
                p.cpu_j / secs,
                p.dram_j / secs,
                p.gpu_j / secs,
                r.idle.energy_j / secs,
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
        ]
    }

    fn draw(&self, frame: &mut Frame) {
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

fn fold(e: &mut Entry, cpu_s: f64, joules: f64, gpu_j: f64, grams: f64, secs: f64) {
    e.cpu_pct = 100.0 * cpu_s / secs;
    e.watts = joules / secs;
    e.gpu_watts = gpu_j / secs;
    e.joules += joules;
    e.grams += grams;
    e.grams_per_hour = grams / secs * 3600.0;
}

/// Runs the view until `q`.
pub fn top(args: TopArgs) -> anyhow::Result<i32> {
    if !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "top needs a terminal; use `energy-agent run` (or --output json) for a stream"
        );
    }
    let mut probe = Probe::load(&ProbeConfig {
        libcuda: args.sources.libcuda.clone(),
        ..ProbeConfig::default()
    })?;
    let mut pipeline = Pipeline::new(&args.sources, &mut probe, None)?;
    let mut terminal = ratatui::init();
    let result = (|| -> anyhow::Result<()> {
        let mut view = View::default();
        let mut next = Instant::now() + args.interval;
        loop {
            terminal.draw(|f| view.draw(f)).context("drawing")?;
            let wait = next
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(50));
            if event::poll(wait).context("reading keys")?
                && let Event::Key(k) = event::read().context("reading keys")?
                && k.kind == KeyEventKind::Press
            {
                match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(());
                    }
                    KeyCode::Char('s') => view.sort = view.sort.next(),
                    KeyCode::Char('m') => view.by_model = !view.by_model,
                    _ => {}
                }
            }
            probe.drain_events();
            if Instant::now() >= next {
                view.update(pipeline.next(&mut probe)?);
                next += args.interval;
            }
        }
    })();
    ratatui::restore();
    result.map(|()| 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribute::{GroupReport, ProcessReport};

    fn report(pid: u32, comm: &str, j: f64) -> IntervalReport {
        let p = ProcessReport {
            pid,
            comm: comm.into(),
            model: comm.into(),
            cpu_time_s: 0.5,
            energy_j: j,
            carbon_g: j * 1e-4,
            ..Default::default()
        };
        IntervalReport {
            duration_s: 1.0,
            models: vec![GroupReport {
                name: comm.into(),
                processes: 1,
                energy_j: j,
                carbon_g: j * 1e-4,
                ..Default::default()
            }],
            processes: vec![p],
            ..Default::default()
        }
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
        r.processes[0].joules.gpu_j = 4.0;
        v.update(r);
        assert_eq!(v.rows()[0].gpu_watts, 4.0);
    }

    #[test]
    fn sort_and_mode_keys() {
        let mut v = View::default();
        v.update(report(1, "big-then-idle", 100.0));
        let mut r = report(2, "steady", 2.0);
        r.processes.push(ProcessReport {
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
