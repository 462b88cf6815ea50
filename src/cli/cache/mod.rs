//! `regcache cache …`: the store inspected and managed from the command line, one file per
//! subcommand, each a thin layer over `catalog`, `cache` and `images` (reading, purging,
//! verifying, evicting, exporting, importing) that prints what they report. `serve` may be
//! running on the same data directory meanwhile (see the catalog for why that is safe, and
//! how a running server learns about a purge).

mod export;
mod gc;
mod import;
mod ls;
mod rm;
mod stats;
mod verify;

use crate::catalog::{Inventory, InventoryError};
use crate::cli::args::{CacheCommand, CommandError, DataDirArg};
use crate::store::Store;

/// Why a `cache` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheCliError {
    /// The operator's input is wrong (exit status 2, like a bad flag).
    #[error("{0}")]
    Usage(String),
    /// The store could not be read or changed, or a check failed (exit status 1).
    #[error("{0}")]
    Failed(String),
}

impl CacheCliError {
    /// Whether this is a usage error (exit status 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Usage(_))
    }
}

impl From<CommandError> for CacheCliError {
    fn from(e: CommandError) -> Self {
        if e.is_usage() {
            Self::Usage(e.to_string())
        } else {
            Self::Failed(e.to_string())
        }
    }
}

impl From<std::io::Error> for CacheCliError {
    fn from(e: std::io::Error) -> Self {
        Self::Failed(format!("standard output: {e}"))
    }
}

impl From<serde_json::Error> for CacheCliError {
    fn from(e: serde_json::Error) -> Self {
        Self::Failed(e.to_string())
    }
}

/// Runs one `cache` subcommand, printing to standard output.
///
/// # Errors
/// [`CacheCliError::Usage`] for bad references or filters; [`CacheCliError::Failed`] when the
/// store cannot be read or changed, nothing matched a `rm`, or `verify` left corruption.
pub fn run(cmd: CacheCommand) -> Result<(), CacheCliError> {
    match cmd {
        CacheCommand::Stats { data, json } => stats::run(&data, json),
        CacheCommand::Ls {
            data,
            registry,
            repo,
            json,
        } => ls::run(&data, registry.as_deref(), repo.as_deref(), json),
        CacheCommand::Rm { data, references, json } => rm::run(&data, &references, json),
        CacheCommand::Verify { data, repair, json } => verify::run(&data, repair, json),
        CacheCommand::Gc(args) => gc::run(&args),
        CacheCommand::Export(args) => Ok(export::run(&args)?),
        CacheCommand::Import(args) => Ok(import::run(&args)?),
    }
}

/// A runtime for the store's calls: one thread is plenty for a one-shot command.
fn runtime() -> Result<tokio::runtime::Runtime, CacheCliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CacheCliError::Failed(format!("cannot start the async runtime: {e}")))
}

/// The store the flags name: `DIR/cache` once `DIR` is known to exist (a typo must not look
/// like an empty cache), or the bucket.
fn store(data: &DataDirArg) -> Result<Store, CacheCliError> {
    let config = data
        .store
        .layer()
        .resolve("flags")
        .map_err(|e| CacheCliError::Usage(e.to_string()))?;
    if config == crate::config::StoreConfig::Local && !data.data_dir.is_dir() {
        return Err(CacheCliError::Failed(
            InventoryError::NoDataDir(data.data_dir.clone()).to_string(),
        ));
    }
    // Inside the runtime: the bucket store starts its purge-mark watch there.
    runtime()?
        .block_on(async {
            crate::cache::open_store(&config, &data.data_dir, std::sync::Arc::new(crate::store::NoCount))
        })
        .map_err(|e| CacheCliError::Failed(e.to_string()))
}

/// A snapshot of the store the flags name.
fn read(data: &DataDirArg) -> Result<Inventory, CacheCliError> {
    let store = store(data)?;
    runtime()?
        .block_on(Inventory::read_store(&store))
        .map_err(|e| CacheCliError::Failed(e.to_string()))
}

/// `1.5 MiB`-style sizes (binary units, one decimal).
pub(super) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `3m ago`-style ages.
pub(super) fn ago(ms: u64, now_ms: u64) -> String {
    let s = now_ms.saturating_sub(ms) / 1000;
    match s {
        0..60 => "just now".into(),
        60..3600 => format!("{}m ago", s / 60),
        3600..86_400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_ages_read_well() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(ago(1_000, 30_000), "just now");
        assert_eq!(ago(0, 3 * 60_000), "3m ago");
        assert_eq!(ago(0, 2 * 86_400_000), "2d ago");
        assert_eq!(ago(10, 0), "just now", "a clock step back is not a negative age");
    }
}
