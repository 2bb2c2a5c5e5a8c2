//! SVG plots of the results (plotters), where a picture says more than the table.

use std::path::Path;

use plotters::prelude::*;
use serde_json::Value;

type Result = std::result::Result<(), Box<dyn std::error::Error>>;

/// Draws a benchmark's result to an SVG file.
pub type Plot = fn(&Value, &Path) -> Result;

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

/// Horizontal bars: median ns per run of each program measured on `sched_switch`.
pub fn probe(r: &Value, path: &Path) -> Result {
    let programs: Vec<(String, f64)> = r["subjects"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or("?").to_string(),
                num(&p["ns"]["median"]),
            )
        })
        .collect();
    let max = programs.iter().map(|p| p.1).fold(50.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (720, 60 + 30 * programs.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "sched_switch programs, median ns per run (same run)",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(160)
        .build_cartesian_2d(0.0..max, 0..programs.len())?;
    let names: Vec<String> = programs.iter().map(|p| p.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(programs.len() + 1)
        .y_label_formatter(&|i| names.get(*i).cloned().unwrap_or_default())
        .x_desc("ns per run")
        .draw()?;
    chart.draw_series(programs.iter().enumerate().map(|(i, (name, ns))| {
        let color = if name.starts_with("ref_") || name.starts_with("bpftrace") {
            BLACK.mix(0.4)
        } else if name.starts_with("ing_") {
            BLUE.mix(0.4)
        } else {
            RED.mix(0.7)
        };
        Rectangle::new([(0.0, i), (*ns, i + 1)], color.filled())
    }))?;
    root.present()?;
    Ok(())
}

/// Per-pair slowdown ratios for each workload, with the 1% line.
pub fn slowdown(r: &Value, path: &Path) -> Result {
    let series: Vec<(&str, Vec<f64>)> = ["messaging", "pipe"]
        .iter()
        .map(|w| {
            (
                *w,
                r[*w]["ratios"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(num)
                    .collect(),
            )
        })
        .collect();
    let all: Vec<f64> = series.iter().flat_map(|s| s.1.clone()).collect();
    let lo = all.iter().copied().fold(0.98, f64::min) - 0.01;
    let hi = all.iter().copied().fold(1.03, f64::max) + 0.01;
    let n = series.iter().map(|s| s.1.len()).max().unwrap_or(1);
    let root = SVGBackend::new(path, (720, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "time with agent / without, per interleaved pair",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(0..n, lo..hi)?;
    chart
        .configure_mesh()
        .x_desc("pair")
        .y_desc("ratio")
        .draw()?;
    for ((name, ratios), color) in series.iter().zip([BLUE, GREEN]) {
        chart
            .draw_series(
                ratios
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Circle::new((i, *v), 4, color.filled())),
            )?
            .label(*name)
            .legend(move |(x, y)| Circle::new((x, y), 4, color.filled()));
    }
    chart.draw_series(LineSeries::new([(0, 1.01), (n, 1.01)], RED))?;
    chart.configure_series_labels().border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// Accepted throughput and p99 delay against offered load.
pub fn enrich(r: &Value, path: &Path) -> Result {
    let steps: Vec<(f64, f64, f64)> = r["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            (
                num(&s["offered_per_s"]),
                num(&s["received"]) / num(&r["step_seconds"]).max(1e-9),
                num(&s["delay_p99_ms"]),
            )
        })
        .collect();
    let max = steps.iter().map(|s| s.0.max(s.1)).fold(1.0, f64::max) * 1.1;
    let max_delay = steps.iter().map(|s| s.2).fold(1200.0, f64::max) * 1.1;
    let root = SVGBackend::new(path, (720, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "enrichment on one core: delivered vs offered",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(70)
        .right_y_label_area_size(60)
        .build_cartesian_2d(0.0..max, 0.0..max)?
        .set_secondary_coord(0.0..max, 0.0..max_delay);
    chart
        .configure_mesh()
        .x_desc("offered spans/s")
        .y_desc("delivered spans/s")
        .draw()?;
    chart
        .configure_secondary_axes()
        .y_desc("p99 delay, ms")
        .draw()?;
    chart
        .draw_series(LineSeries::new(steps.iter().map(|s| (s.0, s.1)), BLUE))?
        .label("delivered/s")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
    chart
        .draw_secondary_series(LineSeries::new(steps.iter().map(|s| (s.0, s.2)), RED))?
        .label("p99 delay (right)")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
    chart.configure_series_labels().border_style(BLACK).draw()?;
    root.present()?;
    Ok(())
}

/// Missed CPU time: the agent vs 1 s procfs sampling.
pub fn accuracy(r: &Value, path: &Path) -> Result {
    let bars = [
        (
            "energy-agent (eBPF)",
            100.0 * num(&r["agent_missed_fraction"]),
        ),
        (
            "procfs every 1 s",
            100.0 * num(&r["procfs_missed_fraction"]),
        ),
    ];
    let max = bars.iter().map(|b| b.1.abs()).fold(5.0, f64::max) * 1.2;
    let root = SVGBackend::new(path, (720, 220)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "CPU time of 5–500 ms processes missed, %",
            ("sans-serif", 18),
        )
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(160)
        .build_cartesian_2d(0.0..max, 0..bars.len())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(bars.len() + 1)
        .y_label_formatter(&|i| bars.get(*i).map(|b| b.0.to_string()).unwrap_or_default())
        .draw()?;
    chart.draw_series(bars.iter().enumerate().map(|(i, (_, pct))| {
        Rectangle::new([(0.0, i), (pct.max(0.0), i + 1)], BLUE.mix(0.6).filled())
    }))?;
    root.present()?;
    Ok(())
}
