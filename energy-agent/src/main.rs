//! The `energy-agent` binary: errors become one clear line and a non-zero exit code.

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    match energy_agent::cli::main() {
        Ok(code) => std::process::exit(code),
        Err(err) => {
            eprintln!("energy-agent: {}", one_line(&err));
            std::process::exit(2);
        }
    }
}

/// The error and its causes on one line, without repeating a cause already in the text.
fn one_line(err: &anyhow::Error) -> String {
    let mut text = err.to_string();
    for cause in err.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
