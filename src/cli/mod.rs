//! The command line: clap definitions ([`Cli`]), their conversion into a configuration layer,
//! and one file per command — `serve`, `ca …`, `config check`, `warm`, `cache …` — each a thin
//! layer that reads arguments, calls the library, prints what it reports, and turns the
//! outcome into an exit status (0; 1 for a failure at run time; 2 for the operator's input).
//!
//! Owns: argument parsing, output formatting, progress bars, exit statuses, tracing set-up.
//!
//! Must not: hold logic the library lacks (a command is arguments in, a library call, a report
//! out).
//!
//! May import: `app`, `images`, `catalog`, `cache`, `store`, `ca`, `registry`, `telemetry`,
//! `config`, `clock`, `os` (it is the top layer; only the binary's `main` uses it).

mod args;
mod ca;
mod cache;
mod config_check;
mod mirror_args;
mod progress;
mod serve;
mod store_args;
mod upstream_args;
mod warm;

use std::process::ExitCode;

pub use args::Cli;
use args::{Command, CommandError, ConfigCommand};
use cache::CacheCliError;

use crate::ca::CaError;
use crate::config::ConfigError;

/// Runs the command `cli` names; one line `regcache: error: …` on standard error when it fails.
pub fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Ca(cmd) => ca::run(cmd),
        Command::Config(ConfigCommand::Check(args)) => config_check::run(&args),
        Command::Warm(args) => warm::run(&args).map_err(Into::into),
        Command::Cache(cmd) => cache::run(cmd).map_err(anyhow::Error::from),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("regcache: error: {}", one_line(&e));
            // A configuration error, or a missing or wrong CA key passphrase, is the operator's
            // input: a usage error, like a bad flag (clap exits 2 too).
            if e.downcast_ref::<ConfigError>().is_some()
                || e.downcast_ref::<CaError>().is_some_and(CaError::is_passphrase_problem)
                || e.downcast_ref::<CommandError>().is_some_and(CommandError::is_usage)
                || e.downcast_ref::<CacheCliError>().is_some_and(CacheCliError::is_usage)
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// The error and its causes on one line, without repeating a cause the message already quotes.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg.replace('\n', " ")
}
