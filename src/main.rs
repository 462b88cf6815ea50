//! The `regcache` binary: parse the command line, install the one crypto provider, run the
//! command (see `regcache::cli`; `serve` builds the app, serves until a signal, then drains).

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = regcache::cli::Cli::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    regcache::cli::run(cli)
}
