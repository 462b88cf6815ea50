//! The cache on a disk budget: least-recently-used content is evicted, in the background, when
//! the store grows past `max_size` or the filesystem's free space falls under `min_free`, down
//! to a low watermark (90 % of the limit), so that eviction runs now and then rather than on
//! every download.
//!
//! - Last use is what the store records (the local store: a content file's access time). Hits
//!   do not write it: they are noted in memory and flushed every [`FLUSH_EVERY`] in one
//!   [`touch`](crate::store::BlobStore::touch) of the blobs used (nothing per request).
//! - Content being read is never evicted (readers hold a [`ReadGuard`]; they also open the blob
//!   before answering, so even an eviction by another process cannot cut a response short), and
//!   content being downloaded lives in the spool until it is complete, outside eviction's reach.
//! - Bytes of downloads in flight count against the budget, so that eviction makes room before
//!   they land instead of after the disk overshot.
//! - Temporary files nobody is writing (left by a crash, or abandoned) are removed too.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::config::CacheBudget;
use crate::registry::Digest;
use crate::store::{Store, StoreError};
use crate::telemetry::Metrics;

/// How often noted accesses are written to the store's last-use order.
pub const FLUSH_EVERY: Duration = Duration::from_secs(30);
/// Eviction frees down to this fraction of `max_size`.
const LOW_WATERMARK: f64 = 0.9;
/// Temporary files untouched this long are leftovers.
const STALE_TEMP: Duration = Duration::from_secs(3600);

/// What one eviction pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GcReport {
    /// Content files in the store before the pass.
    pub files_before: u64,
    /// Their total size.
    pub bytes_before: u64,
    /// Content files removed (least recently used first).
    pub evicted_files: u64,
    /// Bytes they held.
    pub evicted_bytes: u64,
    /// Leftover temporary files removed.
    pub temp_files: u64,
    /// Bytes they held.
    pub temp_bytes: u64,
    /// Content files kept because they were being read.
    pub kept_in_use: u64,
    /// Content files in the store after the pass.
    pub bytes_after: u64,
    /// The store is shared and another replica was evicting: this pass left it alone.
    pub deferred: bool,
}

/// Keeps the store within its budget.
pub struct Evictor {
    store: Store,
    budget: Mutex<CacheBudget>,
    in_use: Mutex<HashMap<Digest, usize>>,
    touched: Mutex<HashSet<Digest>>,
    in_flight: AtomicU64,
    wake: tokio::sync::Notify,
    /// Content newer than this is never evicted by a pass that cannot see the readers (the
    /// `cache gc` command run beside a server).
    recent_guard: Duration,
    /// Evictions are counted here (the cache size gauge goes down with them).
    metrics: Arc<Metrics>,
}

/// Held while a blob is read; it is not evicted meanwhile.
pub struct ReadGuard {
    evictor: Arc<Evictor>,
    digest: Digest,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let mut in_use = self.evictor.in_use.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = in_use.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                in_use.remove(&self.digest);
            }
        }
    }
}

/// Counts a download's expected bytes against the budget until it ends.
pub struct InFlight {
    evictor: Arc<Evictor>,
    bytes: u64,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.evictor.in_flight.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

impl Evictor {
    /// An evictor for `store` under `budget`, for the server (which sees its readers).
    pub fn new(store: Store, budget: CacheBudget, metrics: Arc<Metrics>) -> Arc<Self> {
        Self::with_guard(store, budget, Duration::ZERO, metrics)
    }

    /// For a process that cannot see the server's readers: content used within `recent_guard`
    /// is kept.
    pub fn with_guard(store: Store, budget: CacheBudget, recent_guard: Duration, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            store,
            budget: Mutex::new(budget),
            in_use: Mutex::new(HashMap::new()),
            touched: Mutex::new(HashSet::new()),
            in_flight: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            recent_guard,
        })
    }

    /// Replaces the budget (a reload) and checks it at once.
    pub fn set_budget(&self, budget: CacheBudget) {
        *self.budget.lock().unwrap_or_else(|p| p.into_inner()) = budget;
        self.wake.notify_one();
    }

    fn budget(&self) -> CacheBudget {
        *self.budget.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A hit on `digest`: noted for the next flush, and protected while the guard lives.
    pub fn reading(self: &Arc<Self>, digest: &Digest) -> ReadGuard {
        self.touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.clone());
        *self
            .in_use
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(digest.clone())
            .or_insert(0) += 1;
        ReadGuard {
            evictor: self.clone(),
            digest: digest.clone(),
        }
    }

    /// A download of `bytes` (when announced) begins; eviction makes room if needed.
    pub fn download_started(self: &Arc<Self>, bytes: Option<u64>) -> InFlight {
        let bytes = bytes.unwrap_or(0);
        self.in_flight.fetch_add(bytes, Ordering::Relaxed);
        if bytes > 0 {
            self.wake.notify_one();
        }
        InFlight {
            evictor: self.clone(),
            bytes,
        }
    }

    /// Something was added to the store: check the budget soon.
    pub fn added(&self) {
        self.wake.notify_one();
    }

    /// Runs forever: flushes access times and keeps the budget, every [`FLUSH_EVERY`] or when
    /// woken (a download started or finished).
    pub async fn run(self: Arc<Self>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(FLUSH_EVERY) => {}
                _ = self.wake.notified() => {
                    // Let a burst of downloads settle into one pass.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            match self.pass(false).await {
                Ok(r) if r.evicted_files > 0 => tracing::info!(
                    evicted_files = r.evicted_files,
                    evicted_bytes = r.evicted_bytes,
                    temp_files = r.temp_files,
                    store_bytes = r.bytes_after,
                    "cache evicted least recently used content"
                ),
                Ok(r) if r.temp_files > 0 => tracing::info!(
                    temp_files = r.temp_files,
                    temp_bytes = r.temp_bytes,
                    "removed stale temporary files"
                ),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "eviction pass failed"),
            }
        }
    }

    /// Flushes noted accesses, removes stale temporary files, and evicts down to the low
    /// watermark if a limit is crossed (or, with `force`, whenever a limit is set: `cache gc`).
    ///
    /// # Errors
    /// If the store cannot be listed.
    pub async fn pass(&self, force: bool) -> Result<GcReport, StoreError> {
        self.flush_access_times().await;
        let mut report = GcReport::default();
        let spools = self.store.spool_files();
        let (files, bytes) = tokio::task::spawn_blocking(move || spools.sweep_idle(STALE_TEMP))
            .await
            .unwrap_or((0, 0));
        report.temp_files = files;
        report.temp_bytes = bytes;
        let budget = self.budget();
        let unlimited = budget.max_size.is_none() && budget.min_free.is_none() && budget.inactive.is_none();
        if unlimited && !force {
            // Nothing can be evicted: no need to walk the store every 30 s.
            return Ok(report);
        }
        // A shared store is walked and trimmed by one replica at a time.
        let Some(turn) = self.store.blobs().claim_eviction().await else {
            report.deferred = true;
            return Ok(report);
        };
        let mut entries = self.store.blobs().list().await?.blobs;
        report.files_before = entries.len() as u64;
        report.bytes_before = entries.iter().map(|e| e.len).sum();
        let mut total = report.bytes_before;
        let in_flight = self.in_flight.load(Ordering::Relaxed);
        let now = SystemTime::now();

        // Content unused for longer than `inactive` goes whatever the size.
        let mut evict_until: u64 = total;
        let over_size = budget
            .max_size
            .is_some_and(|max| total.saturating_add(in_flight) > max || (force && total > max));
        if over_size && let Some(max) = budget.max_size {
            evict_until = ((max as f64 * LOW_WATERMARK) as u64).saturating_sub(in_flight);
        }
        if let Some(min_free) = budget.min_free
            && let Some(free) = self.store.blobs().free_space().await
        {
            let wanted = min_free.saturating_add(in_flight);
            if free < wanted {
                // Free a tenth of the floor more than needed, like the size watermark.
                let need = wanted - free + min_free / 10;
                evict_until = evict_until.min(total.saturating_sub(need));
            }
        }
        entries.sort_by_key(|e| e.last_used);
        let in_use = self.in_use.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for e in entries {
            let idle = now.duration_since(e.last_used).unwrap_or_default();
            let inactive = budget.inactive.is_some_and(|limit| idle > limit);
            if total <= evict_until && !inactive {
                continue;
            }
            if in_use.contains_key(&e.digest) || idle < self.recent_guard {
                report.kept_in_use += 1;
                continue;
            }
            if self.store.blobs().delete(&e.digest, None).await.unwrap_or(false) {
                total = total.saturating_sub(e.len);
                report.evicted_files += 1;
                report.evicted_bytes += e.len;
                self.metrics.evicted(e.len);
            }
        }
        report.bytes_after = total;
        turn.release().await;
        Ok(report)
    }

    async fn flush_access_times(&self) {
        let touched: Vec<Digest> = std::mem::take(&mut *self.touched.lock().unwrap_or_else(|p| p.into_inner()))
            .into_iter()
            .collect();
        if !touched.is_empty() {
            self.store.blobs().touch(touched).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::registry::Algorithm;
    use crate::store::LocalStore;

    /// A local store in `dir`, and the same directory as the local backend sees it.
    fn stores(dir: &tempfile::TempDir) -> (Store, LocalStore) {
        let root = dir.path().join("cache");
        (Store::local(root.clone()), LocalStore::new(root))
    }

    fn evictor(store: &Store, budget: CacheBudget) -> Arc<Evictor> {
        Evictor::new(store.clone(), budget, Arc::new(Metrics::new()))
    }

    fn put(store: &LocalStore, data: &[u8], age: Duration) -> (Digest, PathBuf) {
        let d = Digest::of(Algorithm::Sha256, data);
        let path = store.content_path(&d);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, data).unwrap();
        let t = SystemTime::now() - age;
        let f = std::fs::File::options().write(true).open(&path).unwrap();
        f.set_times(std::fs::FileTimes::new().set_accessed(t).set_modified(t))
            .unwrap();
        (d, path)
    }

    #[tokio::test]
    async fn least_recently_used_goes_first_down_to_the_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let (store, local) = stores(&dir);
        let (_, old) = put(&local, &[1u8; 400], Duration::from_secs(3000));
        let (_, mid) = put(&local, &[2u8; 400], Duration::from_secs(2000));
        let (_, new) = put(&local, &[3u8; 400], Duration::from_secs(1000));
        let ev = evictor(
            &store,
            CacheBudget {
                max_size: Some(1000),
                ..CacheBudget::default()
            },
        );
        let r = ev.pass(false).await.unwrap();
        // 1200 > 1000: down to 900 → one file goes, the oldest.
        assert_eq!(r.evicted_files, 1);
        assert!(!old.exists() && mid.exists() && new.exists());
        assert_eq!(r.bytes_after, 800);
        // Under the limit: nothing more.
        assert_eq!(ev.pass(false).await.unwrap().evicted_files, 0);
    }

    #[tokio::test]
    async fn content_being_read_is_kept_and_a_hit_refreshes_last_use() {
        let dir = tempfile::tempdir().unwrap();
        let (store, local) = stores(&dir);
        let (old_digest, old) = put(&local, &[1u8; 600], Duration::from_secs(3000));
        let (_, mid) = put(&local, &[2u8; 600], Duration::from_secs(2000));
        // A budget that both files exceed on their own: everything not in use must go.
        let ev = evictor(
            &store,
            CacheBudget {
                max_size: Some(500),
                ..CacheBudget::default()
            },
        );
        let guard = ev.reading(&old_digest);
        let r = ev.pass(false).await.unwrap();
        assert!(old.exists(), "being read");
        assert!(!mid.exists(), "the other one went");
        assert_eq!(r.kept_in_use, 1);
        drop(guard);
        // The read refreshed `old`'s last use (flushed by the pass).
        let used = std::fs::metadata(&old).unwrap().accessed().unwrap();
        assert!(SystemTime::now().duration_since(used).unwrap() < Duration::from_secs(60));
    }

    #[tokio::test]
    async fn in_flight_downloads_count_and_inactive_content_goes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, local) = stores(&dir);
        let (_, a) = put(&local, &[1u8; 300], Duration::from_secs(3000));
        let (_, b) = put(&local, &[2u8; 300], Duration::from_secs(10));
        let ev = evictor(
            &store,
            CacheBudget {
                max_size: Some(1000),
                ..CacheBudget::default()
            },
        );
        let flight = ev.download_started(Some(600));
        ev.pass(false).await.unwrap();
        assert!(!a.exists() && b.exists(), "room made for the download");
        drop(flight);
        let ev = evictor(
            &store,
            CacheBudget {
                inactive: Some(Duration::from_secs(5)),
                ..CacheBudget::default()
            },
        );
        ev.pass(false).await.unwrap();
        assert!(!b.exists(), "unused longer than `inactive`");
    }

    #[tokio::test]
    async fn stale_temporary_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = stores(&dir);
        let tmp = dir.path().join("cache").join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let stale = tmp.join("x.partial");
        std::fs::write(&stale, b"abc").unwrap();
        let t = SystemTime::now() - Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_times(std::fs::FileTimes::new().set_modified(t))
            .unwrap();
        let fresh = tmp.join("y.partial");
        std::fs::write(&fresh, b"abc").unwrap();
        let r = evictor(&store, CacheBudget::default()).pass(false).await.unwrap();
        assert_eq!(r.temp_files, 1);
        assert!(!stale.exists() && fresh.exists());
        assert!(store.blobs().free_space().await.is_some_and(|f| f > 0));
    }
}
