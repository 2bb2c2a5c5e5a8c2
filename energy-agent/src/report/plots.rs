//! The report's plots, drawn with plotters as SVG text: power over time per model,
//! energy per request per model (p50 bar, mean dot, p95 whisker), carbon by hour.

use std::collections::BTreeMap;

use plotters::{
    coord::{Shift, types::RangedCoordf64},
    prelude::*,
};

use super::{Figures, rfc3339};

/// The colours, one per model in order of energy.
const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// Models drawn on their own in the power plot; the rest are summed as `other`.
const TOP_MODELS: usize = 7;

/// Time buckets of the power plot, at most.
const BUCKETS: usize = 300;

type Drawn = Result<(), String>;

fn draw_err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// SVG of `draw` on a `size` canvas.
fn svg(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend, Shift>) -> Drawn,
) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        draw(&root)?;
        root.present().map_err(draw_err)?;
    }
    Ok(out)
}

/// Average power per model and time bucket: (bucket end in s from `from`, per model W).
pub type PowerSeries = Vec<(String, Vec<(f64, f64)>)>;

/// Buckets (end, length, model, J) rows into at most [`BUCKETS`] averages per model,
/// the [`TOP_MODELS`] with most energy by name, the rest as `other`.
pub fn power_series(
    rows: &[(u64, f64, String, f64)],
    top: &[String],
    from: u64,
    to: u64,
) -> PowerSeries {
    let span = (to.saturating_sub(from)).max(1) as f64;
    let intervals: std::collections::BTreeSet<(u64, u64)> =
        rows.iter().map(|r| (r.0, r.1.to_bits())).collect();
    let n = intervals.len().clamp(1, BUCKETS);
    let bucket =
        |end: u64| (((end.saturating_sub(from)) as f64 / span * n as f64) as usize).min(n - 1);
    let mut seconds = vec![0.0; n];
    for (end, dur) in &intervals {
        seconds[bucket(*end)] += f64::from_bits(*dur);
    }
    let kept: Vec<&String> = top.iter().take(TOP_MODELS).collect();
    let mut joules: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (end, _, model, j) in rows {
        let name = if kept.contains(&model) {
            model.clone()
        } else {
            "other".into()
        };
        joules.entry(name).or_insert_with(|| vec![0.0; n])[bucket(*end)] += j;
    }
    let mut order: Vec<String> = kept.iter().map(|s| s.to_string()).collect();
    order.push("other".into());
    order
        .into_iter()
        .filter_map(|name| {
            let j = joules.remove(&name)?;
            let points = (0..n)
                .filter(|&i| seconds[i] > 0.0)
                .map(|i| ((i + 1) as f64 * span / n as f64 / 1e9, j[i] / seconds[i]))
                .collect();
            Some((name, points))
        })
        .collect()
}

/// Power over time per model, W against seconds since `from`.
pub fn power_plot(series: &PowerSeries, from: u64) -> Result<String, String> {
    let x_max = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.0))
        .fold(1.0, f64::max);
    let y_max = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(0.1, f64::max)
        * 1.1;
    svg((900, 380), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("Power per model (from {})", rfc3339(from)),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(draw_err)?;
        chart
            .configure_mesh()
            .x_desc("seconds since the window's start")
            .y_desc("W")
            .draw()
            .map_err(draw_err)?;
        for (i, (name, points)) in series.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(draw_err)?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(3))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(draw_err)
    })
}

/// A chart of one category per unit of x (labelled at its middle) up to `y_max`.
type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

fn categories<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: &str,
    labels: &[String],
    y_max: f64,
    y_desc: &str,
) -> Result<Chart<'a, 'b>, String> {
    let n = labels.len().max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(caption, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n as f64, 0.0..y_max)
        .map_err(draw_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n * 2 + 1)
        .x_label_formatter(&|x| {
            let i = x.floor() as usize;
            if (x - i as f64 - 0.5).abs() < 0.01 {
                labels.get(i).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        })
        .y_desc(y_desc)
        .draw()
        .map_err(draw_err)?;
    Ok(chart)
}

/// Energy per request per model: the median as a bar, the mean as a dot, the 95th
/// percentile as a whisker.
pub fn requests_plot(groups: &[Figures]) -> Result<String, String> {
    let with: Vec<&Figures> = groups.iter().filter(|g| g.requests > 0).collect();
    let y_max = with
        .iter()
        .flat_map(|g| [g.p95_j, g.j_per_request])
        .flatten()
        .fold(0.001, f64::max)
        * 1.15;
    let names: Vec<String> = with.iter().map(|g| g.name.clone()).collect();
    svg((900, 360), |root| {
        let mut chart = categories(
            root,
            "Energy per request (bar: p50, dot: mean, line: p95)",
            &names,
            y_max,
            "J per request",
        )?;
        for (i, g) in with.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let x = i as f64;
            let p50 = g.p50_j.unwrap_or(0.0);
            let p95 = g.p95_j.unwrap_or(p50);
            let mean = g.j_per_request.unwrap_or(p50);
            chart
                .draw_series([Rectangle::new(
                    [(x + 0.2, 0.0), (x + 0.8, p50)],
                    color.mix(0.7).filled(),
                )])
                .map_err(draw_err)?;
            chart
                .draw_series([PathElement::new(
                    [(x + 0.5, p50), (x + 0.5, p95)],
                    BLACK.stroke_width(2),
                )])
                .map_err(draw_err)?;
            chart
                .draw_series([Circle::new((x + 0.5, mean), 5, BLACK.filled())])
                .map_err(draw_err)?;
        }
        Ok(())
    })
}

/// The host's operational carbon per clock hour.
pub fn carbon_plot(hours: &[(u64, f64)]) -> Result<String, String> {
    let y_max = hours.iter().map(|h| h.1).fold(1e-9, f64::max) * 1.15;
    let labels: Vec<String> = hours
        .iter()
        .map(|(t, _)| rfc3339(*t).get(5..16).unwrap_or_default().replace('T', " "))
        .collect();
    svg((900, 340), |root| {
        let mut chart = categories(
            root,
            "Carbon by hour (host, operational)",
            &labels,
            y_max,
            "gCO2e",
        )?;
        chart
            .draw_series(hours.iter().enumerate().map(|(i, (_, g))| {
                Rectangle::new(
                    [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, *g)],
                    PALETTE[2].mix(0.8).filled(),
                )
            }))
            .map_err(draw_err)?;
        Ok(())
    })
}
