//! How a running server learns that another process purged the store (`regcache cache rm`,
//! `verify --repair`): the server keeps recently used manifests and tags in memory with no time
//! limit, so without being told it would keep serving a purged manifest by tag until restarted.
//!
//! Every purge is announced through the store's index ([`EntryIndex::announce_purge`]); the
//! server compares the index's purge mark now and then and, when it changed, drops its
//! in-memory manifests and tags. They are read from the store again, and purged ones are misses.
//!
//! [`EntryIndex::announce_purge`]: crate::store::EntryIndex::announce_purge

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::now_ms;
use crate::store::Store;

/// Notices purges made by other processes: the store's purge mark changed since the last
/// check.
#[derive(Debug)]
pub struct PurgeWatch {
    store: Store,
    mark: AtomicU64,
    checked_ms: AtomicU64,
}

impl PurgeWatch {
    /// Watches `store`'s purges, from its current state.
    pub fn new(store: Store) -> Self {
        let mark = store.index().purge_mark();
        Self {
            store,
            mark: AtomicU64::new(mark),
            checked_ms: AtomicU64::new(0),
        }
    }

    /// As [`PurgeWatch::changed`], at most once per `every_ms` (a `stat` per cached HEAD cost a
    /// fifth of the hit path's throughput); other calls answer `false` at once.
    pub fn changed_throttled(&self, every_ms: u64) -> bool {
        let now = now_ms();
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
        let mark = self.store.index().purge_mark();
        self.mark.swap(mark, Ordering::Relaxed) != mark
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_watch_notices_announcements() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("cache")).unwrap();
        let store = Store::local(dir.path().join("cache"));
        let watch = PurgeWatch::new(store.clone());
        assert!(!watch.changed());
        store.index().announce_purge("ghcr.io").unwrap();
        assert!(watch.changed());
        assert!(!watch.changed());
        store.index().announce_purge("quay.io").unwrap();
        assert!(watch.changed());
    }
}
