//! `regcache config check`: the effective configuration (secrets redacted), or the first
//! error as `FILE:LINE: KEY: what was expected` (exit status 2).

use std::io::Write as _;

use crate::cli::args::ServeArgs;

/// `regcache config check`: the effective configuration, or the first error (exit 2).
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let loaded = args.source().load()?;
    let mut out = std::io::stdout().lock();
    match &loaded.file {
        Some(f) => writeln!(
            out,
            "# from {} (and flags, REGCACHE_* variables, defaults)",
            f.display()
        )?,
        None => writeln!(out, "# no config file (flags, REGCACHE_* variables and defaults only)")?,
    }
    for line in &loaded.env_mappings {
        writeln!(out, "# rpardini variable: {line}")?;
    }
    write!(out, "{}", crate::config::render(&loaded.config))?;
    writeln!(out, "# configuration OK")?;
    Ok(())
}
