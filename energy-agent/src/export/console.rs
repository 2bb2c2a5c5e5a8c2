//! The compact per-interval table `energy-agent run` prints when no exporter is set.

use std::io::Write;

use super::Sink;
use crate::attribute::IntervalReport;

/// Prints the top processes by CPU time and a total line, every interval.
pub struct ConsoleTable<W: Write> {
    out: W,
    top: usize,
}

impl<W: Write> ConsoleTable<W> {
    /// A table of the `top` busiest processes written to `out`.
    pub fn new(out: W, top: usize) -> Self {
        Self { out, top }
    }
}

/// Renders one interval as text.
pub fn render(report: &IntervalReport, top: usize) -> String {
    let mut s = String::new();
    let secs = report.duration_s.max(1e-9);
    s.push_str(&format!(
        "{:>8} {:<16} {:>7} {:>10}\n",
        "PID", "COMM", "CPU%", "CPU ms"
    ));
    for p in report.processes.iter().take(top) {
        let name = if p.exited {
            format!("{} (exited)", p.comm)
        } else {
            p.comm.clone()
        };
        s.push_str(&format!(
            "{:>8} {:<16} {:>7.1} {:>10.1}\n",
            p.pid,
            truncate(&name, 16),
            100.0 * p.cpu_time_s / secs,
            p.cpu_time_s * 1e3
        ));
    }
    s.push_str(&format!(
        "{:>8} {:<16} {:>7.1} {:>10.1}   {} processes in {:.3} s",
        "",
        "total",
        100.0 * report.total_cpu_time_s / secs,
        report.total_cpu_time_s * 1e3,
        report.processes.len(),
        report.duration_s,
    ));
    let p = &report.probe;
    if p.task_map_full + p.events_lost + p.missed_runs > 0 {
        s.push_str(&format!(
            "  [probe losses: task map full {}, events lost {}, runs missed {}]",
            p.task_map_full, p.events_lost, p.missed_runs
        ));
    }
    s.push('\n');
    s.push_str(&render_power(report));
    s
}

/// The energy lines: each domain's watts and joules, the host total, and the sources.
fn render_power(report: &IntervalReport) -> String {
    let p = &report.power;
    let mut s = String::new();
    for d in &p.domains {
        s.push_str(&format!(
            "{:>8} {:<16} {:>9.2} W {:>9.2} J  {}{}\n",
            "",
            d.domain.to_string(),
            d.watts,
            d.joules,
            d.source,
            if d.estimated { " (estimated)" } else { "" }
        ));
    }
    for e in &p.errors {
        s.push_str(&format!(
            "{:>8} {:<16} unreadable: {}\n",
            "",
            e.domain.to_string(),
            e.error
        ));
    }
    let secs = report.duration_s.max(1e-9);
    s.push_str(&format!(
        "{:>8} {:<16} {:>9.2} W {:>9.2} J  cpu {:.2} W, dram {:.2} W, gpu {:.2} W; sources: cpu {}, gpu {}{}\n",
        "",
        "host",
        p.total_j / secs,
        p.total_j,
        p.cpu_j / secs,
        p.dram_j / secs,
        p.gpu_j / secs,
        p.sources.cpu,
        p.sources.gpu,
        if p.estimated { " — ESTIMATED" } else { " — measured" }
    ));
    s
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        s.chars().take(width - 1).chain(['…']).collect()
    }
}

impl<W: Write> Sink for ConsoleTable<W> {
    fn emit(&mut self, report: &IntervalReport) -> std::io::Result<()> {
        writeln!(self.out, "{}", render(report, self.top))?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribute::ProcessReport;

    #[test]
    fn renders_top_rows_and_total() {
        let proc = |pid, comm: &str, s| ProcessReport {
            pid,
            comm: comm.into(),
            cpu_time_s: s,
            ..Default::default()
        };
        let report = IntervalReport {
            duration_s: 1.0,
            processes: vec![
                proc(1, "burner", 0.5),
                proc(2, "a-very-long-process-name", 0.25),
                proc(3, "x", 0.1),
            ],
            total_cpu_time_s: 0.85,
            ..Default::default()
        };
        let text = render(&report, 2);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 5, "header, 2 rows, total, host energy: {text}");
        assert!(
            lines[4].contains("host") && lines[4].contains("sources"),
            "{text}"
        );
        assert!(
            lines[1].contains("burner") && lines[1].contains("50.0") && lines[1].contains("500.0")
        );
        assert!(lines[2].contains("a-very-long-pro…"));
        assert!(
            lines[3].contains("total")
                && lines[3].contains("85.0")
                && lines[3].contains("3 processes")
        );
    }
}
