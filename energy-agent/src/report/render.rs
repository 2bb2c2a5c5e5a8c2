//! The report as a table (for people), JSON (the `Report` fields) and CSV (one row per
//! group, then the host; full precision).

use std::fmt::Write as _;

use super::{Figures, Report, rfc3339};

/// Four significant digits, in plain notation where that stays short.
pub fn sig(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let mag = v.abs().log10().floor() as i32;
    if !(-3..6).contains(&mag) {
        return format!("{v:.3e}");
    }
    format!("{v:.*}", (3 - mag).max(0) as usize)
}

fn opt(v: Option<f64>) -> String {
    v.map_or_else(|| "-".into(), sig)
}

/// The measured and estimated parts of an energy, as a short note.
fn provenance(measured: f64, estimated: f64) -> String {
    let total = measured + estimated;
    if total <= 0.0 {
        return "-".into();
    }
    match estimated / total {
        e if e <= 0.0 => "measured".into(),
        e if e >= 1.0 => "estimated".into(),
        e => format!("{:.0}% estimated", e * 100.0),
    }
}

/// The heading line: file, window, intervals, runs.
pub fn heading(r: &Report) -> String {
    let window = match (r.from_unix_ns, r.to_unix_ns) {
        (Some(a), Some(b)) => format!("{} to {}", rfc3339(a), rfc3339(b)),
        _ => "no intervals in the window".into(),
    };
    format!(
        "{}: {window} ({:.1} s in {} intervals, {} runs)",
        r.file, r.host.duration_s, r.host.intervals, r.host.runs
    )
}

/// A table for people.
pub fn table(r: &Report) -> String {
    let mut out = heading(r);
    out.push('\n');
    let header = [
        r.by.as_str(),
        "energy J",
        "carbon g",
        "requests",
        "J/req",
        "gCO2e/req",
        "J/token",
        "req/J",
        "p50 J",
        "p95 J",
        "source",
    ];
    let rows: Vec<Vec<String>> = r.groups.iter().map(row).collect();
    out += &columns(&header, &rows, &[false, true]);
    out += &host(r);
    out
}

/// Aligned columns: the header, then the rows; column i is right-aligned when
/// `right[i]` (the last entry holds for the columns past the list).
pub fn columns(header: &[&str], rows: &[Vec<String>], right: &[bool]) -> String {
    let width = |i: usize| {
        (rows
            .iter()
            .map(|row| row.get(i).map_or(0, |c| c.chars().count())))
        .chain([header[i].chars().count()])
        .max()
        .unwrap_or(0)
    };
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            if i > 0 {
                l.push_str("  ");
            }
            if *right.get(i).or(right.last()).unwrap_or(&false) {
                let _ = write!(l, "{c:>w$}");
            } else {
                let _ = write!(l, "{c:<w$}");
            }
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

fn row(f: &Figures) -> Vec<String> {
    vec![
        f.name.clone(),
        sig(f.energy_j),
        sig(f.carbon_g),
        if f.requests > 0 {
            f.requests.to_string()
        } else {
            "-".into()
        },
        opt(f.j_per_request),
        opt(f.g_per_request),
        opt(f.j_per_token),
        opt(f.requests_per_j),
        opt(f.p50_j),
        opt(f.p95_j),
        provenance(f.measured_j, f.estimated_j),
    ]
}

/// The host's idle share as a percentage, or `-`.
pub fn idle_share(h: &super::HostFigures) -> String {
    h.idle_share
        .map_or_else(|| "-".into(), |s| format!("{:.1}%", s * 100.0))
}

/// The host's lines under the table.
fn host(r: &Report) -> String {
    let h = &r.host;
    let idle = idle_share(h);
    let mut out = format!(
        "host: {} J, {} gCO2e (+{} g embodied), idle {idle}, {}\n",
        sig(h.energy_j),
        sig(h.carbon_g),
        sig(h.embodied_g),
        provenance(h.measured_j, h.estimated_j),
    );
    let _ = writeln!(out, "energy sources: {}", list(&h.sources));
    let _ = writeln!(
        out,
        "intensity: {} g/kWh on average ({})",
        opt(h.g_per_kwh),
        list(&h.intensity_sources)
    );
    out
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}

/// The report as one JSON object.
pub fn json(r: &Report) -> String {
    serde_json::to_string_pretty(r).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")) + "\n"
}

/// A CSV field, quoted when it holds a comma, a quote or a newline.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The CSV columns.
pub const CSV_HEADER: &str = "group,name,runs,energy_j,measured_j,estimated_j,carbon_g,embodied_g,cpu_time_s,idle_j,max_run_kwh,requests,request_j,tokens,j_per_request,g_per_request,j_per_token,requests_per_j,p50_j,p95_j";

/// The report as CSV: one row per group, then a `host` row.
pub fn csv(r: &Report) -> String {
    let o = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    let mut out = String::from(CSV_HEADER);
    out.push('\n');
    for f in &r.groups {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            csv_field(&r.by),
            csv_field(&f.name),
            f.runs,
            f.energy_j,
            f.measured_j,
            f.estimated_j,
            f.carbon_g,
            f.embodied_g,
            f.cpu_time_s,
            f.idle_j,
            f.max_run_kwh,
            f.requests,
            f.request_j,
            f.tokens,
            o(f.j_per_request),
            o(f.g_per_request),
            o(f.j_per_token),
            o(f.requests_per_j),
            o(f.p50_j),
            o(f.p95_j),
        );
    }
    let h = &r.host;
    let _ = writeln!(
        out,
        "host,host,{},{},{},{},{},{},,{},,,,,,,,,,",
        h.runs, h.energy_j, h.measured_j, h.estimated_j, h.carbon_g, h.embodied_g, h.idle_j
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn significant_digits() {
        assert_eq!(sig(1234.567), "1235");
        assert_eq!(sig(12.34567), "12.35");
        assert_eq!(sig(0.012345), "0.01235");
        assert_eq!(sig(0.00001234), "1.234e-5");
        assert_eq!(sig(0.0), "0");
    }

    #[test]
    fn csv_quotes_what_needs_it() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("plain"), "plain");
    }
}
