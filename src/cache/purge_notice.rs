//! How a running server learns that another process purged the store (`regcache cache rm`,
//! `verify --repair`): the server keeps recently used manifests and tags in memory with no time
//! limit, so without being told it would keep serving a purged manifest by tag until restarted.
//!
//! Each purge appends a line (time, pid, what) to [`PURGE_LOG`] in the cache directory. The
//! server checks that file's size and modification time on each manifest or tag lookup (one
//! `stat`, no read) and, when they changed, drops its in-memory manifests and tags; they are
//! read from the store again, and purged ones are misses. The log starts afresh past 1 MiB.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The file (in the cache directory) that announces purges to a running server.
pub const PURGE_LOG: &str = "purges.log";
/// [`PURGE_LOG`] is started afresh when it grows past this.
const PURGE_LOG_MAX: u64 = 1024 * 1024;

/// Appends a line to [`PURGE_LOG`], which a running server watches (see [`PurgeWatch`]).
///
/// # Errors
/// One line saying what a failure means for a running server (the purge itself is done).
pub fn announce(root: &Path, what: &str) -> Result<(), String> {
    let path = root.join(PURGE_LOG);
    let fresh = std::fs::metadata(&path).is_ok_and(|m| m.len() > PURGE_LOG_MAX);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(!fresh)
        .write(true)
        .truncate(fresh)
        .open(&path);
    let line = format!("{}\t{}\t{what}\n", crate::store::local::now_ms(), std::process::id());
    file.and_then(|mut f| f.write_all(line.as_bytes())).map_err(|e| {
        tracing::warn!(path = %path.display(), error = %e, "cannot announce the purge to a running server");
        format!(
            "{}: {e} (a running server may serve purged manifests and tags from memory until it restarts)",
            path.display()
        )
    })
}

/// Notices purges made by other processes: [`PURGE_LOG`]'s size or modification time changed
/// since the last check. One `stat` per check.
#[derive(Debug)]
pub struct PurgeWatch {
    path: PathBuf,
    len: AtomicU64,
    mtime_ns: AtomicU64,
    checked_ms: AtomicU64,
}

impl PurgeWatch {
    /// Watches the purge log of the cache directory `root`, from its current state.
    pub fn new(root: &Path) -> Self {
        let path = root.join(PURGE_LOG);
        let (len, mtime_ns) = stamp(&path);
        Self {
            path,
            len: AtomicU64::new(len),
            mtime_ns: AtomicU64::new(mtime_ns),
            checked_ms: AtomicU64::new(0),
        }
    }

    /// As [`PurgeWatch::changed`], at most once per `every_ms` (a `stat` per cached HEAD cost a
    /// fifth of the hit path's throughput); other calls answer `false` at once.
    pub fn changed_throttled(&self, every_ms: u64) -> bool {
        let now = crate::store::local::now_ms();
        let last = self.checked_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < every_ms
            || self
                .checked_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        self.changed()
    }

    /// Whether a purge was announced since the last call.
    pub fn changed(&self) -> bool {
        let (len, mtime_ns) = stamp(&self.path);
        let old_len = self.len.swap(len, Ordering::Relaxed);
        let old_mtime = self.mtime_ns.swap(mtime_ns, Ordering::Relaxed);
        old_len != len || old_mtime != mtime_ns
    }
}

fn stamp(path: &Path) -> (u64, u64) {
    match std::fs::metadata(path) {
        Ok(m) => {
            let mtime = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as u64);
            (m.len(), mtime)
        }
        Err(_) => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_watch_notices_announcements() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let watch = PurgeWatch::new(root);
        assert!(!watch.changed());
        announce(root, "ghcr.io").unwrap();
        assert!(watch.changed());
        assert!(!watch.changed());
        announce(root, "quay.io").unwrap();
        assert!(watch.changed());
    }
}
