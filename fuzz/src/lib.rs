//! The fuzz harnesses: one module per `cargo fuzz` target, each a `run(&[u8])` that
//! feeds the bytes to the agent's own code the way its input arrives (a request body,
//! a sysfs tree, a file) and asserts what the agent promises about the result (energy
//! never negative or NaN, requests never claiming more than their process, every item
//! passed on). A panic is a finding.
//!
//! `cargo xtask fuzz [TARGET] [--time S]` runs them under libFuzzer (nightly,
//! cargo-fuzz, `--features fuzzing`). Without that feature the crate builds on stable,
//! and its tests replay the committed seed corpora (`fuzz/corpus/TARGET/`) and every
//! input that once crashed a target (`fuzz/regressions/TARGET/`) through the same
//! harnesses, so they stay part of `cargo xtask test`.

pub mod carbon;
pub mod config;
pub mod otlp;
pub mod procfs;
pub mod replay;
pub mod sysfs;

/// Splits `data` at 0xff bytes into at most `n` fields (the last keeps the rest), as
/// lossy UTF-8: how the file-shaped targets read several files from one input.
pub fn fields(data: &[u8], n: usize) -> Vec<String> {
    data.splitn(n, |&b| b == 0xff)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .collect()
}

/// Asserts a figure the agent reports is a real, non-negative number.
pub fn assert_sane(what: &str, v: f64) {
    assert!(v.is_finite() && v >= 0.0, "{what} is {v}");
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every file of `fuzz/corpus/TARGET` and `fuzz/regressions/TARGET` through `run`.
    fn replay(target: &str, run: fn(&[u8])) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut n = 0;
        for dir in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            for entry in entries.flatten() {
                let data = std::fs::read(entry.path()).expect("reading an input");
                run(&data);
                n += 1;
            }
        }
        assert!(n > 0, "no seed inputs for {target}");
    }

    #[test]
    fn otlp_corpus() {
        replay("otlp", super::otlp::run);
    }

    #[test]
    fn sysfs_corpus() {
        replay("sysfs", super::sysfs::run);
    }

    #[test]
    fn replay_corpus() {
        replay("replay", super::replay::run);
    }

    #[test]
    fn config_corpus() {
        replay("config", super::config::run);
    }

    #[test]
    fn carbon_corpus() {
        replay("carbon", super::carbon::run);
    }

    #[test]
    fn procfs_corpus() {
        replay("procfs", super::procfs::run);
    }

    #[test]
    fn fields_split_at_0xff() {
        assert_eq!(
            super::fields(b"a\xffb\xffc\xffd", 3),
            vec!["a", "b", "c\u{fffd}d"]
        );
    }
}
