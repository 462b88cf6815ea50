//! `regcache cache gc`: one eviction pass now, beside a running server or not.

use std::io::Write as _;
use std::sync::Arc;

use super::{CacheCliError, runtime};
use crate::cache::Evictor;
use crate::cli::args::GcArgs;
use crate::telemetry::Metrics;

/// `regcache cache gc`: one eviction pass now, beside a server or not.
pub(super) fn run(args: &GcArgs) -> Result<(), CacheCliError> {
    let config = args
        .serve
        .source()
        .load()
        .map_err(|e| CacheCliError::Usage(e.to_string()))?
        .config;
    let store = crate::cache::open_store(
        &config.store,
        &config.data_dir,
        std::sync::Arc::new(crate::store::NoCount),
    )
    .map_err(|e| CacheCliError::Failed(e.to_string()))?;
    // This process cannot see a running server's readers: recently used content is kept; its
    // evictions are counted nowhere (a one-shot command).
    let evictor = Evictor::with_guard(store.clone(), config.budget, args.keep_recent, Arc::new(Metrics::new()));
    let r = runtime()?
        .block_on(evictor.pass(true))
        .map_err(|e| CacheCliError::Failed(e.to_string()))?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let mut out = std::io::stdout().lock();
    if r.deferred {
        writeln!(
            out,
            "another replica is evicting from the shared store now: nothing done here; try again later"
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "store: {} files, {:.1} MiB before; evicted {} files ({:.1} MiB), kept {} recently used; \
         removed {} stale temporary files ({:.1} MiB); store now {:.1} MiB",
        r.files_before,
        mib(r.bytes_before),
        r.evicted_files,
        mib(r.evicted_bytes),
        r.kept_in_use,
        r.temp_files,
        mib(r.temp_bytes),
        mib(r.bytes_after)
    )?;
    let b = config.budget;
    if b.max_size.is_none() && b.min_free.is_none() && b.inactive.is_none() {
        writeln!(
            out,
            "no budget configured (--max-size, --min-free, cache.inactive): nothing is evicted"
        )?;
    }
    if r.evicted_files > 0 {
        // A running server forgets what it held in memory about removed content.
        let _ = store.index().announce_purge("cache gc");
    }
    Ok(())
}
