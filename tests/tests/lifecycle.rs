//! The lifecycle on real recorded data: `run --record` with a burner and an inference
//! server (the Python OpenTelemetry SDK) sending request spans, `measure --record
//! --label`, a SIGKILL in the middle of a recorded run, `report` in every format (the
//! HTML page in headless Chromium), `gate`'s exit codes and drift between two recorded
//! versions, and `when` on a series file with a known best window.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use energy_tests::{
    agent_bin, browser,
    lifecycle::{agent, close, f, group, printed_model_j, record_run, report_json, text},
    require_root, test_bin,
};

#[test]
fn a_recorded_run_reports_what_was_printed_and_the_requests_the_backend_got() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("history.db");
    let (intervals, spans) = record_run(&db, "1", 0.05);
    let r = report_json(&db, &[]);
    // Every printed interval is in the history, with the same figures.
    assert_eq!(
        r["host"]["intervals"].as_u64(),
        Some(intervals.len() as u64)
    );
    let host_j: f64 = intervals.iter().map(|i| f(&i["power"]["total_j"])).sum();
    let host_g: f64 = intervals.iter().map(|i| f(&i["carbon"]["host_g"])).sum();
    close(f(&r["host"]["energy_j"]), host_j, "host energy");
    close(f(&r["host"]["carbon_g"]), host_g, "host carbon");
    close(f(&r["host"]["g_per_kwh"]), 300.0, "intensity");
    for model in ["burner", "tiny-llama"] {
        let g = group(&r, model);
        close(f(&g["energy_j"]), printed_model_j(&intervals, model), model);
        assert!(f(&g["energy_j"]) > 0.0, "{model} used energy");
        close(
            f(&g["estimated_j"]),
            f(&g["energy_j"]),
            "this VM's energy is estimated",
        );
    }
    // The requests are the spans the backend received.
    let llama = group(&r, "tiny-llama");
    let joules: Vec<f64> = spans
        .iter()
        .map(|s| f(&s["attributes"]["energy.joules"]))
        .collect();
    let grams: f64 = spans
        .iter()
        .map(|s| f(&s["attributes"]["carbon.gco2e"]))
        .sum();
    let tokens: f64 = (spans.iter())
        .map(|s| {
            f(&s["attributes"]["gen_ai.usage.input_tokens"])
                + f(&s["attributes"]["gen_ai.usage.output_tokens"])
        })
        .sum();
    assert_eq!(llama["requests"], 8);
    close(
        f(&llama["request_j"]),
        joules.iter().sum(),
        "request energy",
    );
    close(f(&llama["g_per_request"]), grams / 8.0, "gCO2e per request");
    close(f(&llama["tokens"]), tokens, "tokens");
    close(
        f(&llama["j_per_token"]),
        joules.iter().sum::<f64>() / tokens,
        "J/token",
    );
    close(
        f(&llama["requests_per_j"]),
        8.0 / joules.iter().sum::<f64>(),
        "requests per J",
    );
    let (lo, hi) = joules
        .iter()
        .fold((f64::MAX, 0.0f64), |(l, h), j| (l.min(*j), h.max(*j)));
    assert!(
        f(&llama["p50_j"]) >= lo
            && f(&llama["p95_j"]) <= hi
            && f(&llama["p50_j"]) <= f(&llama["p95_j"])
    );
    assert!(
        f(&llama["request_j"]) <= f(&llama["energy_j"]) * 1.0001,
        "requests ≤ their model"
    );
    check_other_formats(&db, &r);
}

/// The table, CSV, label grouping and HTML page carry the JSON report's figures.
fn check_other_formats(db: &Path, r: &serde_json::Value) {
    let llama = group(r, "tiny-llama");
    let db_s = db.to_str().expect("path");
    let table = text(&agent(&["report", db_s]));
    assert!(
        table.contains("tiny-llama") && table.contains("burner") && table.contains("estimated"),
        "{table}"
    );
    let csv = String::from_utf8(agent(&["report", db_s, "--format", "csv"]).stdout).expect("utf-8");
    let row = csv
        .lines()
        .find(|l| l.starts_with("model,tiny-llama,"))
        .unwrap_or_else(|| panic!("{csv}"));
    let cells: Vec<&str> = row.split(',').collect();
    assert_eq!(
        cells[3].parse::<f64>().ok(),
        llama["energy_j"].as_f64(),
        "{row}"
    );
    assert_eq!(cells[11], "8", "{row}");
    let by_label = report_json(db, &["--by", "label"]);
    assert_eq!(by_label["groups"][0]["name"], "version=1");
    let html = db.with_file_name("report.html");
    let out = agent(&[
        "report",
        db_s,
        "--format",
        "html",
        "-o",
        html.to_str().expect("path"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    check_page_in_chromium(&html, r);
}

/// The page, rendered by headless Chromium: every plot has its size and its series, the
/// table has the report's figures, and a screenshot is taken (target/lifecycle/).
fn check_page_in_chromium(page: &Path, r: &serde_json::Value) {
    let seen = browser::rendered(page, CHECK_SCRIPT);
    let figs = seen["figs"].as_array().expect("figures");
    assert_eq!(figs.len(), 3, "{seen}");
    for fig in figs {
        assert!(
            f(&fig["w"]) >= 800.0 && f(&fig["h"]) >= 300.0,
            "rendered at its size: {fig}"
        );
    }
    let by_id = |id: &str| {
        figs.iter()
            .find(|f| f["id"] == id)
            .unwrap_or_else(|| panic!("{id}: {seen}"))
    };
    let power = by_id("plot-power");
    assert!(
        power["series"].as_u64() >= Some(2),
        "a line per model: {power}"
    );
    let legend = power["text"].as_str().unwrap_or_default();
    assert!(
        legend.contains("tiny-llama") && legend.contains("burner"),
        "{power}"
    );
    let requests = by_id("plot-requests");
    assert!(
        requests["circles"].as_u64() >= Some(1)
            && (requests["text"].as_str().unwrap_or_default()).contains("tiny-llama"),
        "{requests}"
    );
    assert!(
        by_id("plot-carbon")["rects"].as_u64() >= Some(2),
        "a bar per hour"
    );
    let cells: Vec<String> = (seen["cells"].as_array().into_iter().flatten())
        .map(|c| c.as_str().unwrap_or_default().to_string())
        .collect();
    let llama = group(r, "tiny-llama");
    for figure in ["energy_j", "j_per_request", "p95_j"] {
        let shown = energy_agent::report::render::sig(f(&llama[figure]));
        assert!(
            cells.contains(&shown),
            "{figure} {shown} in the table: {cells:?}"
        );
    }
    let png = browser::screenshot(page, (1200, 2600));
    assert!(
        png.len() > 40_000,
        "a page with plots is no blank: {} bytes",
        png.len()
    );
    let keep = agent_bin().with_file_name("lifecycle");
    let _ = std::fs::create_dir_all(&keep);
    let _ = std::fs::write(keep.join("report.png"), png);
}

/// Measures the rendered page: each figure's SVG size, its series lines (stroke width
/// 2), circles, bars and text; and the table's cells.
const CHECK_SCRIPT: &str = r#"
const figs = [...document.querySelectorAll('figure')].map(f => {
  const s = f.querySelector('svg'); const b = s.getBoundingClientRect();
  return {id: f.id, w: b.width, h: b.height,
    series: [...s.querySelectorAll('polyline')].filter(p => p.getAttribute('stroke-width') === '2').length,
    circles: s.querySelectorAll('circle').length,
    rects: s.querySelectorAll('rect').length,
    text: [...s.querySelectorAll('text')].map(t => t.textContent).join(' ')};
});
const cells = [...document.querySelectorAll('#groups td')].map(td => td.textContent);
const pre = document.createElement('pre'); pre.id = 'check';
pre.textContent = JSON.stringify({figs, cells});
document.body.appendChild(pre);
"#;

#[test]
fn a_slower_version_fails_the_regression_gate_and_the_faster_one_passes() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("history.db");
    record_run(&db, "1.2", 0.04);
    record_run(&db, "1.3", 0.12);
    let db_s = db.to_str().expect("path");
    let c = {
        let out = agent(&[
            "report",
            db_s,
            "--compare",
            "version=1.2..1.3",
            "--format",
            "json",
        ]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")
    };
    let llama = (c["models"].as_array().into_iter().flatten())
        .find(|m| m["model"] == "tiny-llama")
        .unwrap_or_else(|| panic!("{c}"));
    // Three times the CPU per request: J/request grows about threefold.
    let change = f(&llama["j_per_request"]["change"]);
    assert!(
        change > 1.0 && change < 4.0,
        "J/request change {change}: {llama}"
    );
    assert!(
        f(&llama["j_per_request"]["low"]) > 0.0,
        "significant: {llama}"
    );
    let gate = |compare: &str| {
        agent(&[
            "gate",
            "--history",
            db_s,
            "--model",
            "tiny-llama",
            "--compare",
            compare,
            "--max-regression",
            "10%",
        ])
    };
    let worse = gate("version=1.2..1.3");
    assert_eq!(worse.status.code(), Some(1), "{}", text(&worse));
    assert!(text(&worse).contains("OVER"), "{}", text(&worse));
    let better = gate("version=1.3..1.2");
    assert_eq!(better.status.code(), Some(0), "{}", text(&better));
    let missing = gate("version=1.2..9.9");
    assert_eq!(
        missing.status.code(),
        Some(2),
        "no requests in B is no pass: {}",
        text(&missing)
    );
}

#[test]
fn a_sigkill_loses_at_most_the_interval_being_written() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("history.db");
    let db_s = db.to_str().expect("path");
    let mut child = Command::new(agent_bin())
        .args([
            "run",
            "--output",
            "json",
            "--interval",
            "200ms",
            "--no-gpu",
            "--record",
            db_s,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting energy-agent");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let mut printed = Vec::new();
    while printed.len() < 12 {
        let line = lines.next().expect("an interval").expect("a line");
        printed.push(serde_json::from_str::<serde_json::Value>(&line).expect("JSON"));
    }
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    let r = report_json(&db, &[]);
    let stored = r["host"]["intervals"].as_u64().expect("intervals") as usize;
    assert!(
        stored + 1 >= printed.len() && stored <= printed.len() + 1,
        "{stored} intervals stored, {} printed before the kill",
        printed.len()
    );
    // The ones both have agree, to the joule.
    let common = stored.min(printed.len()) - 1;
    let until_ns = printed[common - 1]["end_unix_ns"].as_u64().expect("end") + 1_000_000;
    let until = format!("{:.6}", until_ns as f64 / 1e9);
    let r = report_json(&db, &["--until", &until]);
    let printed_j: f64 = printed[..common]
        .iter()
        .map(|i| f(&i["power"]["total_j"]))
        .sum();
    assert_eq!(r["host"]["intervals"].as_u64(), Some(common as u64));
    close(
        f(&r["host"]["energy_j"]),
        printed_j,
        "energy of the intervals both have",
    );
    // The database is whole: the next run appends to it.
    let out = agent(&[
        "run",
        "--output",
        "none",
        "--duration",
        "600ms",
        "--interval",
        "200ms",
        "--no-gpu",
        "--record",
        db_s,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(report_json(&db, &[])["host"]["runs"], 2);
}

#[test]
fn measure_records_its_run_with_labels_and_the_gate_judges_it() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("history.db");
    let (db_s, m_json) = (db.to_str().expect("path"), dir.path().join("m.json"));
    let burner = test_bin("burner");
    let out = agent(&[
        "measure",
        "--json",
        "-o",
        m_json.to_str().expect("path"),
        "--no-gpu",
        "--record",
        db_s,
        "--label",
        "model=burner",
        "--label",
        "version=2",
        "--",
        burner.to_str().expect("path"),
        "0.5",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&m_json).expect("report")).expect("JSON");
    let r = report_json(&db, &["--by", "label"]);
    let run = group(&r, "model=burner version=2");
    close(
        f(&run["energy_j"]),
        f(&m["energy_j"]["total"]),
        "the history's run is the measured command",
    );
    close(f(&run["carbon_g"]), f(&m["carbon_g"]), "and its carbon");
    check_gate_exit_codes(dir.path(), &db, &m_json, &m);
}

/// `gate` on a measured run, from its report and from the history: 0 within, 1 over,
/// 2 without data; and `measure --budget`.
fn check_gate_exit_codes(dir: &Path, db: &Path, m_json: &Path, m: &serde_json::Value) {
    let db_s = db.to_str().expect("path");
    let burner = test_bin("burner");
    let kwh = f(&m["energy_j"]["total"]) / 3.6e6;
    let budgets = |name: &str, limits: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("[budget.burner]\n{limits}\n")).expect("budget file");
        p
    };
    let within = budgets("within.toml", &format!("max_kwh_per_run = {}", kwh * 2.0));
    let over = budgets("over.toml", &format!("max_kwh_per_run = {}", kwh / 2.0));
    let tokens = budgets("tokens.toml", "max_joules_per_token = 1.0");
    let m_s = m_json.to_str().expect("path");
    let code = |args: &[&str]| {
        let out = agent(args);
        (out.status.code(), text(&out))
    };
    let p = |p: &Path| p.to_str().expect("path").to_string();
    let (w, o, t) = (p(&within), p(&over), p(&tokens));
    let cases: [(&[&str], i32, &str); 7] = [
        (&["--budget", &w, "--measure-json", m_s], 0, "within"),
        (&["--budget", &o, "--measure-json", m_s], 1, "over"),
        (
            &["--budget", &w, "--history", db_s, "--model", "burner"],
            0,
            "within",
        ),
        (
            &["--budget", &o, "--history", db_s, "--model", "burner"],
            1,
            "over",
        ),
        (
            &["--budget", &t, "--history", db_s, "--model", "burner"],
            2,
            "no requests",
        ),
        (
            &[
                "--budget",
                &w,
                "--history",
                db_s,
                "--since",
                "2030-01-01T00:00:00Z",
            ],
            2,
            "none since",
        ),
        (
            &["--budget", &w, "--history", "/nonexistent.db"],
            2,
            "no file",
        ),
    ];
    for (args, want, why) in cases {
        let (c, out) = code(&[&["gate"], args].concat());
        assert_eq!(c, Some(want), "{why} ({args:?}): {out}");
        if want == 1 {
            assert!(
                out.contains("OVER") && out.contains("max_kwh_per_run"),
                "{out}"
            );
        }
    }
    std::fs::write(m_json, "not json").expect("write");
    let (c, out) = code(&["gate", "--budget", &w, "--measure-json", m_s]);
    assert_eq!(c, Some(2), "a broken report: {out}");
    // measure --budget: the command's own exit code first, then the gate's.
    let b = burner.to_str().expect("path");
    let measure = |budget: &str, args: &[&str]| {
        let mut all = vec!["measure", "--no-gpu", "--budget", budget, "--"];
        all.extend_from_slice(args);
        code(&all).0
    };
    assert_eq!(measure(&w, &[b, "0.2", "1"]), Some(0));
    assert_eq!(
        measure(
            &p(&budgets("tiny.toml", "max_kwh_per_run = 1e-12")),
            &[b, "0.2", "1"]
        ),
        Some(1)
    );
    assert_eq!(measure(&w, &["sh", "-c", "exit 3"]), Some(3));
}

#[test]
fn when_finds_the_greenest_window_of_a_series_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("intensity.csv");
    // Hourly: the 2 h from 03:00 (60, 40) are the greenest; 00:00–02:00 is 400, 380.
    let values = [400, 380, 200, 60, 40, 300, 500, 500];
    let rows: String = (values.iter().enumerate())
        .map(|(h, g)| format!("2030-01-01T{h:02}:00:00Z,{g}\n"))
        .collect();
    std::fs::write(&csv, format!("timestamp,g_per_kwh\n{rows}")).expect("series");
    let c = csv.to_str().expect("path");
    let out = agent(&[
        "when",
        "--duration",
        "2h",
        "--within",
        "8h",
        "--carbon-file",
        c,
        "--from",
        "2030-01-01T00:00:00Z",
        "--energy-kwh",
        "10",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(p["start"], "2030-01-01T03:00:00Z", "{p}");
    assert_eq!(p["g_per_kwh"], 50.0);
    assert_eq!(p["now_g_per_kwh"], 390.0);
    close(f(&p["saving_g"]), 10.0 * 340.0, "10 kWh × 340 g/kWh");
    let table = text(&agent(&[
        "when",
        "--duration",
        "2h",
        "--within",
        "8h",
        "--carbon-file",
        c,
        "--from",
        "2030-01-01T00:00:00Z",
    ]));
    assert!(
        table.contains("2030-01-01T03:00:00Z") && table.contains("87.2%"),
        "{table}"
    );
    // Within 4 h the job must start by 02:00: 02:00–04:00 (200, 60) is the best left.
    let out = agent(&[
        "when",
        "--duration",
        "2h",
        "--within",
        "4h",
        "--carbon-file",
        c,
        "--from",
        "2030-01-01T00:00:00Z",
        "--json",
    ]);
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(p["start"], "2030-01-01T02:00:00Z", "{p}");
    let out = agent(&[
        "when",
        "--duration",
        "2h",
        "--carbon-file",
        c,
        "--from",
        "2031-01-01T00:00:00Z",
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "a window the series does not cover: {}",
        text(&out)
    );
    assert!(text(&out).contains("does not cover"), "{}", text(&out));
}
