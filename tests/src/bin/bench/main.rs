//! The benchmarks (`cargo xtask bench`): per-probe cost, workload slowdown, agent cost,
//! enrichment throughput and delay, accuracy against procfs sampling, and per-process
//! accuracy under a known power model (idle power). Method and latest numbers:
//! BENCHMARKS.md.
//!
//! usage: bench [probe|slowdown|agent|enrich|accuracy|idle|soak …] [--smoke] [--out DIR]
//!              [--markdown FILE --plots DIR] [--soak-seconds N]
//!
//! Each benchmark writes DIR/NAME.json (default target/bench) and prints its table;
//! with --markdown, the table between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`
//! in FILE is replaced, and the plots go to --plots. Needs root, perf and the agent
//! (ENERGY_AGENT_BIN, else the one built beside this program).

mod accuracy;
mod agent_cost;
mod common;
mod enrich;
mod idle;
mod otlp;
mod plot;
mod probe_cost;
mod probe_subjects;
mod slowdown;
mod soak;

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use common::Settings;

/// A benchmark: name, what it measures, run, table, plot.
struct Bench {
    name: &'static str,
    title: &'static str,
    run: fn(&Settings) -> Value,
    table: fn(&Value) -> String,
    plot: Option<plot::Plot>,
}

const BENCHES: [Bench; 7] = [
    Bench {
        name: "probe",
        title: "per-probe cost",
        run: probe_cost::run,
        table: probe_cost::table,
        plot: Some(plot::probe),
    },
    Bench {
        name: "slowdown",
        title: "workload slowdown",
        run: slowdown::run,
        table: slowdown::table,
        plot: Some(plot::slowdown),
    },
    Bench {
        name: "agent",
        title: "agent cost",
        run: agent_cost::run,
        table: agent_cost::table,
        plot: None,
    },
    Bench {
        name: "enrich",
        title: "enrichment throughput and delay",
        run: enrich::run,
        table: enrich::table,
        plot: Some(plot::enrich),
    },
    Bench {
        name: "accuracy",
        title: "accuracy against procfs sampling",
        run: accuracy::run,
        table: accuracy::table,
        plot: Some(plot::accuracy),
    },
    Bench {
        name: "idle",
        title: "per-process accuracy under a known power model",
        run: idle::run,
        table: idle::table,
        plot: None,
    },
    Bench {
        name: "soak",
        title: "soak: churn, load and outages",
        run: soak::run,
        table: soak::table,
        plot: None,
    },
];

fn agent_path() -> PathBuf {
    std::env::var_os("ENERGY_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::sibling("energy-agent"))
}

fn now_utc() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Replaces the text between the benchmark's markers in `file`.
fn update_markdown(file: &Path, name: &str, body: &str) -> std::io::Result<()> {
    let text = std::fs::read_to_string(file)?;
    let (open, close) = (
        format!("<!-- bench:{name} -->"),
        format!("<!-- /bench:{name} -->"),
    );
    let (Some(a), Some(b)) = (text.find(&open), text.find(&close)) else {
        eprintln!("bench: no {open} … {close} in {}", file.display());
        return Ok(());
    };
    let updated = format!("{}{open}\n{body}\n{}", &text[..a], &text[b..]);
    std::fs::write(file, updated)
}

/// What the command line asks for.
struct Options {
    /// The benchmarks to run; empty: all.
    names: Vec<String>,
    smoke: bool,
    out: PathBuf,
    markdown: Option<PathBuf>,
    plots: PathBuf,
    soak_seconds: Option<u64>,
}

const USAGE: &str = "usage: bench [probe|slowdown|agent|enrich|accuracy|idle|soak …] [--smoke] \
                     [--out DIR] [--markdown FILE --plots DIR] [--soak-seconds N]";

/// Options that take a value.
const VALUE_OPTIONS: [&str; 4] = ["--out", "--markdown", "--plots", "--soak-seconds"];

/// Reads the command line; prints the usage and exits on `--help` (0) or a bad argument (2).
fn parse_args(args: &[String]) -> Options {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        std::process::exit(0);
    }
    if let Some(bad) = args.iter().find(|a| {
        a.starts_with('-') && a.as_str() != "--smoke" && !VALUE_OPTIONS.contains(&a.as_str())
    }) {
        eprintln!("bench: unknown option {bad:?}\n{USAGE}");
        std::process::exit(2);
    }
    let value = |f: &str| {
        args.iter()
            .position(|a| a == f)
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
    };
    let values: Vec<&String> = VALUE_OPTIONS
        .iter()
        .filter_map(|f| {
            args.iter()
                .position(|a| a == f)
                .and_then(|i| args.get(i + 1))
        })
        .collect();
    let names: Vec<String> = args
        .iter()
        .filter(|a| !a.starts_with("--") && !values.contains(a))
        .cloned()
        .collect();
    if let Some(bad) = names.iter().find(|n| !BENCHES.iter().any(|b| b.name == *n)) {
        eprintln!(
            "bench: unknown benchmark {bad:?} (probe, slowdown, agent, enrich, accuracy, idle, soak)"
        );
        std::process::exit(2);
    }
    let out = value("--out")
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench"));
    let soak_seconds = match value("--soak-seconds") {
        None => None,
        Some(v) => match v.to_str().and_then(|v| v.parse::<u64>().ok()) {
            Some(n) if n > 0 => Some(n),
            _ => {
                eprintln!("bench: --soak-seconds {v:?} is not a positive number\n{USAGE}");
                std::process::exit(2);
            }
        },
    };
    Options {
        names,
        soak_seconds,
        smoke: args.iter().any(|a| a == "--smoke"),
        markdown: value("--markdown"),
        plots: value("--plots").unwrap_or_else(|| out.clone()),
        out,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = parse_args(&args);
    let settings = Settings {
        smoke: options.smoke,
        agent: agent_path(),
        soak_seconds: options.soak_seconds,
    };
    std::fs::create_dir_all(&options.out).expect("creating the results directory");
    std::fs::create_dir_all(&options.plots).expect("creating the plots directory");
    let machine = common::machine();
    for b in BENCHES
        .iter()
        .filter(|b| options.names.is_empty() || options.names.iter().any(|n| n == b.name))
    {
        run_bench(b, &settings, &options, &machine);
    }
}

/// Runs one benchmark: its JSON record, its table on stdout, its plot, its section of
/// the markdown file.
fn run_bench(b: &Bench, settings: &Settings, options: &Options, machine: &Value) {
    eprintln!(
        "bench: {} ({}){}",
        b.name,
        b.title,
        if settings.smoke { ", smoke" } else { "" }
    );
    let started = std::time::Instant::now();
    let result = (b.run)(settings);
    let record = json!({
        "benchmark": b.name,
        "date": now_utc(),
        "machine": machine,
        "smoke": settings.smoke,
        "agent": settings.agent,
        "seconds": started.elapsed().as_secs_f64(),
        "result": result,
    });
    let json_path = options.out.join(format!("{}.json", b.name));
    std::fs::write(&json_path, serde_json::to_string_pretty(&record).unwrap())
        .expect("writing results");
    let table = (b.table)(&result);
    println!("\n## {} — {}\n\n{table}", b.name, b.title);
    let plotted = b
        .plot
        .and_then(|plot| draw(plot, b.name, &result, &options.plots));
    if let Some(md) = &options.markdown {
        let body = markdown_body(b, &record, &table, plotted.as_deref(), md);
        update_markdown(md, b.name, &body).expect("updating the markdown");
    }
    eprintln!(
        "bench: {} done in {:.1} s → {}",
        b.name,
        started.elapsed().as_secs_f64(),
        json_path.display()
    );
}

/// Draws `plot` of `result` to PLOTS/NAME.svg; the file, or None (and a message) if that
/// failed.
fn draw(plot: plot::Plot, name: &str, result: &Value, plots: &Path) -> Option<PathBuf> {
    let svg = plots.join(format!("{name}.svg"));
    match plot(result, &svg) {
        Ok(()) => Some(svg),
        Err(e) => {
            eprintln!("bench: plot {name}: {e}");
            None
        }
    }
}

/// The benchmark's section of the markdown file: when and where it ran, its table, and
/// its plot (linked relative to the markdown file).
fn markdown_body(
    b: &Bench,
    record: &Value,
    table: &str,
    plotted: Option<&Path>,
    md: &Path,
) -> String {
    let machine = &record["machine"];
    let mut body = format!(
        "Latest: {} on {} CPUs ({}), kernel {}{}.\n\n{table}",
        record["date"].as_str().unwrap_or(""),
        machine["cpus"],
        machine["cpu_model"].as_str().unwrap_or("?"),
        machine["kernel"].as_str().unwrap_or("?"),
        if machine["virtualized"] == true {
            ", a VM"
        } else {
            ""
        },
    );
    if let Some(svg) = plotted {
        let rel = svg
            .strip_prefix(md.parent().unwrap_or(Path::new(".")))
            .unwrap_or(svg);
        body.push_str(&format!("\n![{}]({})\n", b.title, rel.display()));
    }
    body
}
