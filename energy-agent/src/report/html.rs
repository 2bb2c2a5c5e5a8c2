//! `--format html`: one self-contained page (inline CSS and SVG, nothing fetched): the
//! table, the host's figures, and three plots.

use std::fmt::Write as _;

use super::{
    History, Report, ReportError, Window, plots,
    render::{heading, sig},
};

/// Escapes text for HTML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:1em 0}
th,td{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
figure{margin:2em 0}
figcaption{font-weight:bold;margin-bottom:.5em}
.note{color:#666}";

/// The page for `report`, with its plots drawn from the same history and window.
pub fn page(history: &History, report: &Report, w: &Window) -> Result<String, ReportError> {
    let series = history.model_energy_series(w).map_err(|e| history.err(e))?;
    let hours = history.carbon_by_hour(w).map_err(|e| history.err(e))?;
    let (from, to) = (
        report.from_unix_ns.unwrap_or(0),
        report.to_unix_ns.unwrap_or(0),
    );
    let mut top: Vec<(String, f64)> = Vec::new();
    for (_, _, model, j) in &series {
        match top.iter_mut().find(|t| &t.0 == model) {
            Some(t) => t.1 += j,
            None => top.push((model.clone(), *j)),
        }
    }
    top.sort_by(|a, b| b.1.total_cmp(&a.1));
    let top: Vec<String> = top.into_iter().map(|t| t.0).collect();
    let power = plots::power_plot(&plots::power_series(&series, &top, from, to), from)
        .map_err(ReportError::Plot)?;
    let requests = plots::requests_plot(&report.groups).map_err(ReportError::Plot)?;
    let carbon = plots::carbon_plot(&hours).map_err(ReportError::Plot)?;
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>energy-agent report</title><style>{STYLE}</style></head><body>\n\
         <h1>Energy and carbon report</h1>\n<p id=\"heading\">{}</p>\n",
        escape(&heading(report))
    );
    out += &groups_table(report);
    out += &host_list(report);
    for (id, caption, svg) in [
        ("plot-power", "Power over time per model", power),
        ("plot-requests", "Energy per request per model", requests),
        ("plot-carbon", "Carbon by hour", carbon),
    ] {
        let _ = write!(
            out,
            "<figure id=\"{id}\"><figcaption>{caption}</figcaption>\n{svg}\n</figure>\n"
        );
    }
    out += "</body></html>\n";
    Ok(out)
}

fn groups_table(r: &Report) -> String {
    let mut out = format!(
        "<table id=\"groups\"><thead><tr><th>{}</th><th>energy J</th><th>carbon gCO2e</th>\
         <th>requests</th><th>J/request</th><th>gCO2e/request</th><th>J/token</th>\
         <th>requests/J</th><th>p50 J</th><th>p95 J</th><th>measured J</th><th>estimated J</th>\
         </tr></thead><tbody>\n",
        escape(&r.by)
    );
    let o = |v: Option<f64>| v.map_or_else(|| "-".into(), sig);
    for f in &r.groups {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&f.name),
            sig(f.energy_j),
            sig(f.carbon_g),
            f.requests,
            o(f.j_per_request),
            o(f.g_per_request),
            o(f.j_per_token),
            o(f.requests_per_j),
            o(f.p50_j),
            o(f.p95_j),
            sig(f.measured_j),
            sig(f.estimated_j),
        );
    }
    out + "</tbody></table>\n"
}

fn host_list(r: &Report) -> String {
    let h = &r.host;
    let idle = super::render::idle_share(h);
    format!(
        "<ul id=\"host\"><li>host energy: <b>{} J</b> (measured {} J, estimated {} J)</li>\
         <li>host carbon: <b>{} gCO2e</b> (+{} g embodied)</li><li>idle share: {idle}</li>\
         <li>energy sources: {}</li><li>intensity: {} g/kWh ({})</li></ul>\n",
        sig(h.energy_j),
        sig(h.measured_j),
        sig(h.estimated_j),
        sig(h.carbon_g),
        sig(h.embodied_g),
        escape(&h.sources.join(", ")),
        h.g_per_kwh.map_or_else(|| "-".into(), sig),
        escape(&h.intensity_sources.join(", ")),
    )
}
