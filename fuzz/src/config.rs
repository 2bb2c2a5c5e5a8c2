//! The TOML config file (`--config FILE`): parsed, then applied to `run`'s flags as
//! `energy-agent --config FILE run` does (durations, idle powers, model regexes,
//! sources). Errors are fine; a panic is not.

use std::sync::OnceLock;

use clap::{CommandFactory, FromArgMatches};
use energy_agent::cli::{Cli, Command, config::Config};

fn run_matches() -> &'static clap::ArgMatches {
    static MATCHES: OnceLock<clap::ArgMatches> = OnceLock::new();
    MATCHES.get_or_init(|| {
        Cli::command()
            .try_get_matches_from(["energy-agent", "run"])
            .expect("`run` parses")
    })
}

/// One input: the text of a config file.
pub fn run(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(config) = Config::parse(&text) else {
        return;
    };
    let matches = run_matches();
    let Ok(cli) = Cli::from_arg_matches(matches) else {
        return;
    };
    let (Command::Run(mut args), Some((_, sub))) = (cli.command, matches.subcommand()) else {
        return;
    };
    let _ = config.apply_run(&mut args, sub);
}
