//! The `energy-agent` binary: errors become one clear line and a non-zero exit code.

fn main() {
    // Large buffers (the kernel BTF that aya parses at load, ~5 MB) stay mmap-backed and
    // go back to the kernel when freed. Without a fixed threshold glibc raises it after
    // the first such free and the next ones stay in the heap for good.
    // SAFETY: called before any other thread exists.
    unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024) };
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
