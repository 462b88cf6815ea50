//! A local disk tier in front of the bucket: blobs this replica committed or read whole are
//! kept in a directory of the data dir, up to a size, least recently used dropped first, so
//! that hits cost no bucket transfer. The bucket stays the truth: a blob is looked up there
//! first (a HEAD), and one the bucket no longer has is dropped here too; only when the bucket
//! cannot be reached is what the tier holds served on its own (it is verified content).

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use tokio::io::AsyncWriteExt as _;

use crate::registry::Digest;

/// Trimming frees down to this fraction of the size.
const TRIM_TO: f64 = 0.9;

/// The tier's directory and its bound.
#[derive(Debug)]
pub struct DiskTier {
    dir: PathBuf,
    max_size: u64,
    used: AtomicU64,
    /// Blobs being copied in from the bucket (one copy each).
    filling: Mutex<HashSet<Digest>>,
}

impl DiskTier {
    /// The tier in `dir` (created if missing), holding at most `max_size` bytes; what an
    /// earlier run left there is counted (and kept).
    pub fn new(dir: PathBuf, max_size: u64) -> Self {
        let _ = std::fs::create_dir_all(&dir);
        let used = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        Self {
            dir,
            max_size,
            used: AtomicU64::new(used),
            filling: Mutex::new(HashSet::new()),
        }
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir
            .join(format!("{}-{}", digest.algorithm().as_str(), digest.hex()))
    }

    /// The blob's file, opened, and its length (its use noted for the LRU order).
    pub fn open(&self, digest: &Digest) -> Option<(std::fs::File, u64)> {
        let file = std::fs::File::open(self.path(digest)).ok()?;
        let len = file.metadata().ok()?.len();
        // The modification time is the tier's "last used" (the owner may set it through a
        // read-only handle); a failure only makes the order less exact.
        let _ = file.set_modified(SystemTime::now());
        Some((file, len))
    }

    /// The blob's length, if the tier holds it.
    pub fn len_of(&self, digest: &Digest) -> Option<u64> {
        std::fs::metadata(self.path(digest)).ok().map(|m| m.len())
    }

    /// Moves a verified file (a committed spool) into the tier.
    pub async fn adopt(&self, digest: &Digest, file: &Path, len: u64) {
        if len > self.max_size {
            let _ = tokio::fs::remove_file(file).await;
            return;
        }
        let dest = self.path(digest);
        let existed = tokio::fs::try_exists(&dest).await.unwrap_or(false);
        match tokio::fs::rename(file, &dest).await {
            Ok(()) if !existed => {
                self.used.fetch_add(len, Ordering::Relaxed);
                self.trim().await;
            }
            Ok(()) => {}
            Err(e) => {
                tracing::debug!(%digest, error = %e, "cannot keep the blob in the local tier");
                let _ = tokio::fs::remove_file(file).await;
            }
        }
    }

    /// Copies `bytes` (the whole blob, from the bucket) into the tier, verifying it on the
    /// way; does nothing if a copy of this blob is already under way.
    pub async fn fill(&self, digest: Digest, len: u64, bytes: impl Stream<Item = io::Result<Bytes>>) {
        if len > self.max_size || !self.filling.lock().is_ok_and(|mut f| f.insert(digest.clone())) {
            return;
        }
        let tmp = self
            .dir
            .join(format!(".fill-{}-{:08x}", digest.hex(), rand::random::<u32>()));
        let kept = self.copy_verified(&digest, len, bytes, &tmp).await;
        match kept {
            Ok(()) => self.adopt(&digest, &tmp, len).await,
            Err(e) => {
                tracing::debug!(%digest, error = %e, "blob not copied into the local tier");
                let _ = tokio::fs::remove_file(&tmp).await;
            }
        }
        if let Ok(mut f) = self.filling.lock() {
            f.remove(&digest);
        }
    }

    async fn copy_verified(
        &self,
        digest: &Digest,
        len: u64,
        bytes: impl Stream<Item = io::Result<Bytes>>,
        tmp: &Path,
    ) -> io::Result<()> {
        let mut file = tokio::fs::File::create(tmp).await?;
        let mut hasher = digest.hasher();
        let mut written = 0u64;
        futures_util::pin_mut!(bytes);
        while let Some(chunk) = bytes.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            written += chunk.len() as u64;
            file.write_all(&chunk).await?;
        }
        file.flush().await?;
        if written != len || hasher.finish() != *digest {
            return Err(io::Error::other("the bucket's copy does not match its digest"));
        }
        Ok(())
    }

    /// Drops the blob (the bucket no longer has it).
    pub async fn remove(&self, digest: &Digest) {
        let path = self.path(digest);
        if let Ok(m) = tokio::fs::metadata(&path).await
            && tokio::fs::remove_file(&path).await.is_ok()
        {
            self.used
                .fetch_sub(m.len().min(self.used.load(Ordering::Relaxed)), Ordering::Relaxed);
        }
    }

    /// Drops least recently used blobs while the tier is over its size.
    async fn trim(&self) {
        if self.used.load(Ordering::Relaxed) <= self.max_size {
            return;
        }
        let dir = self.dir.clone();
        let files = tokio::task::spawn_blocking(move || {
            let mut files: Vec<(SystemTime, u64, PathBuf)> = std::fs::read_dir(&dir)
                .map(|entries| {
                    entries
                        .filter_map(Result::ok)
                        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                        .filter_map(|e| {
                            let m = e.metadata().ok()?;
                            Some((m.modified().ok()?, m.len(), e.path()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            files.sort();
            files
        })
        .await
        .unwrap_or_default();
        let target = (self.max_size as f64 * TRIM_TO) as u64;
        for (_, len, path) in files {
            if self.used.load(Ordering::Relaxed) <= target {
                break;
            }
            if tokio::fs::remove_file(&path).await.is_ok() {
                self.used
                    .fetch_sub(len.min(self.used.load(Ordering::Relaxed)), Ordering::Relaxed);
            }
        }
    }

    /// Bytes held.
    #[cfg(test)]
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Algorithm;

    async fn put(tier: &DiskTier, dir: &Path, data: &[u8]) -> Digest {
        let digest = Digest::of(Algorithm::Sha256, data);
        let spool = dir.join(format!("spool-{}", digest.hex()));
        std::fs::write(&spool, data).unwrap();
        tier.adopt(&digest, &spool, data.len() as u64).await;
        digest
    }

    #[tokio::test]
    async fn the_least_recently_used_go_first_when_over_size() {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::new(dir.path().join("tier"), 2500);
        let a = put(&tier, dir.path(), &[1u8; 1000]).await;
        std::thread::sleep(std::time::Duration::from_millis(20));
        let b = put(&tier, dir.path(), &[2u8; 1000]).await;
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(tier.open(&a).is_some(), "a is used again: b is now the oldest");
        std::thread::sleep(std::time::Duration::from_millis(20));
        let c = put(&tier, dir.path(), &[3u8; 1000]).await;
        assert!(tier.len_of(&b).is_none(), "b was dropped");
        assert!(tier.len_of(&a).is_some() && tier.len_of(&c).is_some());
        assert!(tier.used() <= 2500);
        assert_eq!(DiskTier::new(dir.path().join("tier"), 2500).used(), tier.used());
    }

    #[tokio::test]
    async fn a_copy_that_does_not_match_its_digest_is_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let tier = DiskTier::new(dir.path().join("tier"), 1 << 20);
        let digest = Digest::of(Algorithm::Sha256, b"right");
        let wrong = futures_util::stream::iter([Ok(Bytes::from_static(b"wrong"))]);
        tier.fill(digest.clone(), 5, wrong).await;
        assert!(tier.len_of(&digest).is_none());
        let right = futures_util::stream::iter([Ok(Bytes::from_static(b"right"))]);
        tier.fill(digest.clone(), 5, right).await;
        assert_eq!(tier.len_of(&digest), Some(5));
    }
}
