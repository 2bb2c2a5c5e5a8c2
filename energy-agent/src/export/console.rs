//! The compact per-interval table `energy-agent run` prints when no exporter is set:
//! the busiest processes, the models, the idle bucket, and the host's domains, sources
//! and carbon intensity.

use std::io::Write;

use super::Sink;
use crate::units::{Joules, Watts};
use crate::{
    attribute::GroupReport,
    carbon::{CarbonReport, CarbonSummary},
};

/// Prints the top processes and models by energy, every interval.
pub struct ConsoleTable<W: Write> {
    out: W,
    top: usize,
}

impl<W: Write> ConsoleTable<W> {
    /// A table of the `top` processes written to `out`.
    pub fn new(out: W, top: usize) -> Self {
        Self { out, top }
    }
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        s.chars().take(width - 1).chain(['…']).collect()
    }
}

fn row(
    s: &mut String,
    pid: &str,
    name: &str,
    cpu_pct: Option<f64>,
    watts: Watts,
    joules: Joules,
    mg: f64,
) {
    let cpu = cpu_pct.map_or(String::new(), |c| format!("{c:.1}"));
    s.push_str(&format!(
        "{pid:>8} {:<18} {cpu:>7} {watts:>9.2} {joules:>10.2} {mg:>10.3}\n",
        truncate(name, 18)
    ));
}

/// The rows of `groups` (models), with their grams under `carbon`.
fn group_rows(
    s: &mut String,
    title: &str,
    groups: &[GroupReport],
    carbon: &CarbonSummary,
    top: usize,
    secs: f64,
) {
    if groups.is_empty() {
        return;
    }
    s.push_str(&format!("{:>8} {:<18}\n", "", title));
    for g in groups.iter().take(top) {
        row(
            s,
            "",
            &g.name,
            Some(100.0 * g.cpu_time_s / secs),
            g.watts,
            g.energy_j,
            carbon.group(g).carbon_g * 1e3,
        );
    }
}

/// Renders one interval as text.
pub fn render(report: &CarbonReport, top: usize) -> String {
    let mut s = String::new();
    let secs = report.duration_s.max(1e-9);
    s.push_str(&format!(
        "{:>8} {:<18} {:>7} {:>9} {:>10} {:>10}\n",
        "PID", "PROCESS", "CPU%", "W", "J", "mgCO2e"
    ));
    for p in report.processes.iter().take(top) {
        let name = if p.exited {
            format!("{} (exited)", p.comm)
        } else {
            p.comm.clone()
        };
        row(
            &mut s,
            &p.pid.to_string(),
            &name,
            Some(100.0 * p.cpu_time_s / secs),
            p.watts,
            p.energy_j,
            report.carbon.process(p).carbon_g * 1e3,
        );
    }
    let idle = &report.idle;
    row(
        &mut s,
        "",
        "idle",
        None,
        idle.watts,
        idle.energy_j,
        report.idle().carbon_g * 1e3,
    );
    let attributed = report.processes.iter().map(|p| p.energy_j).sum::<Joules>() + idle.energy_j;
    let carbon = report.carbon.grams(attributed);
    row(
        &mut s,
        "",
        &format!("total ({} proc)", report.processes.len()),
        Some(100.0 * report.total_cpu_time_s / secs),
        attributed.per(report.duration()),
        attributed,
        carbon * 1e3,
    );
    let grouped = report.models.iter().any(|m| m.processes > 1)
        || report.processes.iter().any(|p| p.model != p.exe_name);
    if grouped {
        group_rows(&mut s, "MODEL", &report.models, &report.carbon, top, secs);
    }
    s.push_str(&render_power(report));
    let p = &report.probe;
    if p.task_map_full + p.events_lost + p.missed_runs > 0 {
        s.push_str(&format!(
            "  probe losses: task map full {}, events lost {}, runs missed {}\n",
            p.task_map_full, p.events_lost, p.missed_runs
        ));
    }
    s
}

/// The domain line, the host line and the carbon line.
fn render_power(report: &CarbonReport) -> String {
    let p = &report.power;
    let domains: Vec<String> = p
        .domains
        .iter()
        .map(|d| {
            let idle = report.idle_power.iter().find(|ip| ip.domain == d.domain);
            let idle = idle.map_or(String::new(), |ip| {
                format!(" (idle {})", super::idle_text(ip))
            });
            format!("{} {:.2} W{idle}", d.domain, d.watts)
        })
        .chain(
            p.errors
                .iter()
                .map(|e| format!("{} unreadable ({})", e.domain, e.error)),
        )
        .collect();
    let c = &report.carbon;
    let mut s = format!(
        "  domains: {}\n  host {:.2} W ({:.2} J: cpu {:.2}, dram {:.2}, gpu {:.2}); sources: cpu {}, gpu {} — {}\n  carbon {:.1} g/kWh from {} × PUE {} = {:.3} mg{}\n",
        domains.join(" · "),
        p.total_j.per(report.duration()),
        p.total_j,
        p.cpu_j,
        p.dram_j,
        p.gpu_j,
        p.sources.cpu,
        p.sources.gpu,
        if p.estimated { "ESTIMATED" } else { "measured" },
        c.intensity.g_per_kwh,
        c.intensity.source,
        c.pue,
        c.host_g * 1e3,
        if c.embodied_host_g > 0.0 {
            format!(" + {:.3} mg embodied", c.embodied_host_g * 1e3)
        } else {
            String::new()
        },
    );
    if let Some(note) = &c.intensity.note {
        s.push_str(&format!("  note: {note}\n"));
    }
    s
}

impl<W: Write> Sink for ConsoleTable<W> {
    fn emit(&mut self, report: &CarbonReport) -> std::io::Result<()> {
        writeln!(self.out, "{}", render(report, self.top))?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribute::{IdlePower, IntervalReport, ProcessReport};

    #[test]
    fn renders_rows_idle_total_and_host() {
        let proc = |pid, comm: &str, s, j| ProcessReport {
            pid,
            comm: comm.into(),
            model: "shared".into(),
            cpu_time_s: s,
            energy_j: Joules(j),
            watts: Watts(j),
            ..Default::default()
        };
        let mut energy = IntervalReport {
            duration_s: 1.0,
            processes: vec![
                proc(1, "burner", 0.5, 3.0),
                proc(2, "a-very-long-process-name", 0.25, 1.0),
                proc(3, "x", 0.1, 0.5),
            ],
            total_cpu_time_s: 0.85,
            ..Default::default()
        };
        energy.idle.energy_j = Joules(2.0);
        energy.idle.watts = Watts(2.0);
        let domain = crate::power::Domain::Package(0);
        energy.power.domains.push(crate::attribute::DomainPower {
            domain,
            joules: Joules(6.5),
            watts: Watts(6.5),
            source: "rapl-powercap",
            estimated: false,
        });
        let mut ip = IdlePower::new(domain, Watts(2.0), crate::attribute::IdleOrigin::Fitted);
        ip.uncertainty_w = Some(Watts(0.125));
        energy.idle_power.push(ip);
        crate::attribute::regroup(&mut energy);
        let mut carbon = CarbonSummary {
            pue: 1.0,
            ..Default::default()
        };
        carbon.intensity.g_per_kwh = 400.0;
        let report = CarbonReport { energy, carbon };
        let text = render(&report, 2);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("PID") && lines[0].contains("mgCO2e"),
            "{text}"
        );
        assert!(
            lines[1].contains("burner") && lines[1].contains("50.0") && lines[1].contains("3.00")
        );
        assert!(lines[2].contains("a-very-long-proce…"), "{text}");
        assert!(lines[3].contains("idle") && lines[3].contains("2.00"));
        assert!(
            lines[4].contains("total (3 proc)") && lines[4].contains("6.50"),
            "{text}"
        );
        // 3 J at 400 g/kWh = 0.333 mg; the total's 6.5 J = 0.722 mg.
        assert!(lines[1].contains("0.333"), "{text}");
        assert!(lines[4].contains("0.722"), "{text}");
        assert!(text.contains("MODEL"));
        assert!(text.contains("host") && text.contains("carbon"));
        assert!(
            text.contains("package-0 6.50 W (idle 2.00 ± 0.12 W fitted)"),
            "{text}"
        );
    }
}
