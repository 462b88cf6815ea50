//! The local disk store: a cacache directory (`<data-dir>/cache`).
//!
//! - Blobs and manifest bytes live in cacache's content-addressed layout
//!   (`content-v2/<algorithm>/<hex[0..2]>/<hex[2..4]>/<hex[4..]>`), so a digest is stored once
//!   whatever registry or repository it came from. They are renamed into place from the spool
//!   directory (`tmp/`) once verified, and served with plain file reads.
//! - Records are cacache index entries (`index-v5/`): appended lines, safe for several
//!   processes at once (a torn line fails its checksum and is skipped), removed with tombstones.
//! - Last use is a content file's access time: [`BlobStore::touch`] sets it (the eviction
//!   order), and administrative reads open files with `O_NOATIME` so that they do not count.
//! - Purges by other processes are announced in `purges.log`, whose size and modification
//!   time are the purge mark (one `stat`).

use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::registry::{Algorithm, Digest};
use crate::store::spool::file_stream;
use crate::store::{
    Access, BlobInfo, BlobReader, BlobStore, Committed, Entry, EntryIndex, Listing, StoreError, VerifiedSpool, shown,
};

/// The file (in the cache directory) that announces purges to a running server.
const PURGE_LOG: &str = "purges.log";
/// [`PURGE_LOG`] is started afresh when it grows past this.
const PURGE_LOG_MAX: u64 = 1024 * 1024;
/// The content directory, as cacache names it.
const CONTENT_DIR: &str = "content-v2";
/// The index directory, as cacache names it.
const INDEX_DIR: &str = "index-v5";

/// A cacache directory holding content and records.
#[derive(Debug, Clone)]
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// Where cacache keeps content with this digest.
    pub fn content_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join(CONTENT_DIR)
            .join(digest.algorithm().as_str())
            .join(&hex[0..2])
            .join(&hex[2..4])
            .join(&hex[4..])
    }

    fn open_file(&self, digest: &Digest, access: Access) -> io::Result<Option<std::fs::File>> {
        let path = self.content_path(digest);
        let opened = match access {
            Access::Use => std::fs::File::open(&path),
            Access::Inspect => open_noatime(&path),
        };
        match opened {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every content file, with what its path says it is. Blocking.
    fn walk_content(&self) -> Listing {
        let mut listing = Listing::default();
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let base = self.root.join(CONTENT_DIR).join(algorithm.as_str());
            let mut dirs = vec![base.clone()];
            while let Some(dir) = dirs.pop() {
                let Ok(list) = std::fs::read_dir(&dir) else { continue };
                for entry in list.flatten() {
                    let path = entry.path();
                    // Gone in between (a purge or eviction elsewhere): skip it.
                    let Ok(meta) = entry.metadata() else { continue };
                    if meta.is_dir() {
                        dirs.push(path);
                        continue;
                    }
                    match digest_of_content_path(&base, algorithm, &path) {
                        Some(digest) => listing.blobs.push(BlobInfo {
                            digest,
                            len: meta.len(),
                            last_used: meta.accessed().ok().max(meta.modified().ok()).unwrap_or(UNIX_EPOCH),
                            modified: meta.modified().unwrap_or(UNIX_EPOCH),
                        }),
                        None => listing.stray.push(shown(&path)),
                    }
                }
            }
        }
        listing
    }
}

#[async_trait::async_trait]
impl BlobStore for LocalStore {
    fn spool_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn describe(&self) -> String {
        shown(&self.root)
    }

    async fn probe(&self) -> Result<(), StoreError> {
        // A write, a read and a delete next to the spools: what a pull needs of the disk.
        let dir = self.spool_dir();
        let path = dir.join(format!(".health-check-{}", std::process::id()));
        let stamp = format!("regcache health check {}\n", crate::clock::now_ms());
        let fail = |e: std::io::Error| StoreError::io(&path, e);
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| StoreError::io(&dir, e))?;
        tokio::fs::write(&path, stamp.as_bytes()).await.map_err(fail)?;
        let read = tokio::fs::read(&path).await.map_err(fail)?;
        tokio::fs::remove_file(&path).await.map_err(fail)?;
        if read != stamp.as_bytes() {
            return Err(fail(std::io::Error::other("read back other bytes than were written")));
        }
        Ok(())
    }

    fn location(&self, digest: &Digest) -> String {
        shown(&self.content_path(digest))
    }

    /// The rename happens before the data is fsynced: a process crash (the case that matters,
    /// `kill -9` included) cannot lose page-cache data, and waiting for the disk would hold
    /// every client's last byte back by seconds per GiB. The fsync follows in the background.
    async fn commit(&self, spool: VerifiedSpool) -> Result<Committed, StoreError> {
        let final_path = self.content_path(&spool.digest);
        let parent = final_path.parent().map(Path::to_path_buf).unwrap_or_default();
        tokio::fs::create_dir_all(&parent)
            .await
            .map_err(|e| StoreError::io(&parent, e))?;
        let new = !tokio::fs::try_exists(&final_path).await.unwrap_or(true);
        tokio::fs::rename(&spool.path, &final_path)
            .await
            .map_err(|e| StoreError::io(&final_path, e))?;
        let file = spool.file;
        tokio::task::spawn_blocking(move || {
            let _ = file.sync_all();
            if let Ok(dir) = std::fs::File::open(parent) {
                let _ = dir.sync_all();
            }
        });
        Ok(Committed { len: spool.len, new })
    }

    async fn stat(&self, digest: &Digest) -> Option<u64> {
        let meta = tokio::fs::metadata(self.content_path(digest)).await.ok()?;
        meta.is_file().then_some(meta.len())
    }

    async fn open(
        &self,
        digest: &Digest,
        start: u64,
        len: Option<u64>,
        access: Access,
    ) -> Result<Option<BlobReader>, StoreError> {
        let me = self.clone();
        let d = digest.clone();
        let opened = tokio::task::spawn_blocking(move || -> io::Result<Option<(std::fs::File, u64)>> {
            let Some(file) = me.open_file(&d, access)? else {
                return Ok(None);
            };
            let total = file.metadata()?.len();
            Ok(Some((file, total)))
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r)
        .map_err(|e| StoreError::io(self.content_path(digest), e))?;
        let Some((file, total)) = opened else {
            return Ok(None);
        };
        let len = len.unwrap_or_else(|| total.saturating_sub(start));
        Ok(Some(BlobReader {
            total,
            stream: Box::pin(file_stream(file, start, len)),
        }))
    }

    async fn read(&self, digest: &Digest, limit: u64, access: Access) -> Result<Option<Bytes>, StoreError> {
        let me = self.clone();
        let d = digest.clone();
        let path = self.content_path(digest);
        tokio::task::spawn_blocking(move || -> io::Result<Option<Bytes>> {
            let Some(file) = me.open_file(&d, access)? else {
                return Ok(None);
            };
            let mut buf = Vec::new();
            file.take(limit + 1).read_to_end(&mut buf)?;
            if buf.len() as u64 > limit {
                return Err(io::Error::other(format!("larger than {limit} bytes")));
            }
            Ok(Some(Bytes::from(buf)))
        })
        .await
        .map_err(io::Error::other)
        .and_then(|r| r)
        .map_err(|e| StoreError::io(path, e))
    }

    async fn delete(&self, digest: &Digest, if_unchanged: Option<&BlobInfo>) -> Result<bool, StoreError> {
        let path = self.content_path(digest);
        if let Some(expected) = if_unchanged {
            let unchanged = match tokio::fs::metadata(&path).await {
                Ok(m) => m.len() == expected.len && m.modified().ok() == Some(expected.modified),
                Err(_) => false,
            };
            if !unchanged {
                return Ok(false);
            }
        }
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StoreError::io(path, e)),
        }
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || me.walk_content())
            .await
            .map_err(|e| StoreError::io(&self.root, io::Error::other(e)))
    }

    async fn touch(&self, digests: Vec<Digest>) {
        let paths: Vec<PathBuf> = digests.iter().map(|d| self.content_path(d)).collect();
        let _ = tokio::task::spawn_blocking(move || {
            let now = SystemTime::now();
            for path in paths {
                if let Ok(f) = std::fs::File::options().write(true).open(&path) {
                    let _ = f.set_times(std::fs::FileTimes::new().set_accessed(now));
                }
            }
        })
        .await;
    }

    async fn free_space(&self) -> Option<u64> {
        free_bytes(&self.root)
    }
}

#[async_trait::async_trait]
impl EntryIndex for LocalStore {
    async fn get(&self, key: &str) -> Option<Entry> {
        let found = cacache::index::find_async(&self.root, key).await.ok()??;
        Some(entry_of(found))
    }

    async fn put(
        &self,
        key: &str,
        digest: Option<&Digest>,
        size: u64,
        metadata: serde_json::Value,
    ) -> Result<(), StoreError> {
        // cacache wants an integrity on every entry; a record about no content names the
        // empty blob's.
        let empty;
        let digest = match digest {
            Some(d) => d,
            None => {
                empty = Digest::of(Algorithm::Sha256, b"");
                &empty
            }
        };
        let mut opts = cacache::WriteOpts::new()
            .integrity(integrity(digest)?)
            .metadata(metadata);
        if size > 0 {
            opts = opts.size(usize::try_from(size).unwrap_or(usize::MAX));
        }
        cacache::index::insert_async(&self.root, key, opts)
            .await
            .map_err(index_err)?;
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<(), StoreError> {
        cacache::index::delete_async(&self.root, key).await.map_err(index_err)
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        if !self.root.join(INDEX_DIR).exists() {
            return Ok(Vec::new());
        }
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            cacache::index::ls(&root)
                // A bucket that vanished or cannot be read is skipped, not fatal: it may have
                // been removed while the index was walked.
                .filter_map(Result::ok)
                .filter(|e| e.key.starts_with(&prefix))
                .map(entry_of)
                .collect()
        })
        .await
        .map_err(|e| StoreError::Index(e.to_string()))
    }

    async fn footprint(&self) -> u64 {
        let dir = self.root.join(INDEX_DIR);
        tokio::task::spawn_blocking(move || dir_bytes(&dir)).await.unwrap_or(0)
    }

    fn announce_purge(&self, what: &str) -> Result<(), String> {
        let path = self.root.join(PURGE_LOG);
        let fresh = std::fs::metadata(&path).is_ok_and(|m| m.len() > PURGE_LOG_MAX);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(!fresh)
            .write(true)
            .truncate(fresh)
            .open(&path);
        let line = format!("{}\t{}\t{what}\n", crate::clock::now_ms(), std::process::id());
        file.and_then(|mut f| f.write_all(line.as_bytes())).map_err(|e| {
            tracing::warn!(path = %path.display(), error = %e, "cannot announce the purge to a running server");
            format!(
                "{}: {e} (a running server may serve purged manifests and tags from memory until it restarts)",
                path.display()
            )
        })
    }

    fn purge_mark(&self) -> u64 {
        match std::fs::metadata(self.root.join(PURGE_LOG)) {
            Ok(m) => {
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos() as u64);
                // Size and time together: an append within the same timestamp tick still
                // changes the size.
                mtime ^ m.len().rotate_left(48)
            }
            Err(_) => 0,
        }
    }
}

fn entry_of(e: cacache::index::Metadata) -> Entry {
    Entry {
        digest: digest_of_integrity(&e.integrity),
        size: e.size as u64,
        metadata: e.metadata,
        written_ms: u64::try_from(e.time).unwrap_or(u64::MAX),
        key: e.key,
    }
}

fn digest_of_integrity(sri: &cacache::Integrity) -> Option<Digest> {
    let (algorithm, hex) = sri.to_hex();
    let name = match algorithm {
        cacache::Algorithm::Sha256 => "sha256",
        cacache::Algorithm::Sha512 => "sha512",
        _ => return None,
    };
    format!("{name}:{hex}").parse().ok()
}

fn integrity(digest: &Digest) -> Result<cacache::Integrity, StoreError> {
    let algorithm = match digest.algorithm() {
        Algorithm::Sha256 => cacache::Algorithm::Sha256,
        Algorithm::Sha512 => cacache::Algorithm::Sha512,
    };
    cacache::Integrity::from_hex(digest.hex(), algorithm).map_err(index_err)
}

fn index_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Index(e.to_string())
}

/// The digest a content path names, if it is one.
fn digest_of_content_path(base: &Path, algorithm: Algorithm, path: &Path) -> Option<Digest> {
    let rel = path.strip_prefix(base).ok()?;
    let hex: String = rel
        .components()
        .map(|c| c.as_os_str().to_str())
        .collect::<Option<Vec<_>>>()?
        .concat();
    format!("{}:{hex}", algorithm.as_str()).parse().ok()
}

/// Opens a file for reading without updating its access time (`O_NOATIME`), so that reading
/// for `ls` or `verify` is not mistaken for a use. Falls back to a plain open where the kernel
/// refuses it (files owned by another user).
fn open_noatime(path: &Path) -> io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    match rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOATIME, Mode::empty()) {
        Ok(fd) => Ok(std::fs::File::from(fd)),
        Err(rustix::io::Errno::PERM) => std::fs::File::open(path),
        Err(e) => Err(e.into()),
    }
}

/// Free bytes for unprivileged users on the filesystem holding `path` (its nearest existing
/// ancestor).
pub(crate) fn free_bytes(path: &Path) -> Option<u64> {
    let mut p = Some(path);
    while let Some(dir) = p {
        if let Ok(s) = rustix::fs::statvfs(dir) {
            return Some(s.f_bavail.saturating_mul(s.f_frsize));
        }
        p = dir.parent();
    }
    None
}

/// Bytes of the files under `dir`, recursively.
fn dir_bytes(dir: &Path) -> u64 {
    let mut bytes = 0;
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(list) = std::fs::read_dir(&d) else { continue };
        for entry in list.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                bytes += meta.len();
            }
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;

    use super::*;
    use crate::store::Store;

    fn store(dir: &tempfile::TempDir) -> (Store, LocalStore) {
        let root = dir.path().join("cache");
        (Store::local(root.clone()), LocalStore::new(root))
    }

    #[tokio::test]
    async fn committed_blobs_are_where_cacache_expects_them() {
        let dir = tempfile::tempdir().unwrap();
        let (store, local) = store(&dir);
        let data = vec![7u8; 700 * 1024];
        let digest = Digest::of(Algorithm::Sha256, &data);
        let mut w = store.create_blob(&digest, Some(data.len() as u64)).await.unwrap();
        for chunk in data.chunks(10_000) {
            w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        let stored = w.commit().await.unwrap();
        assert_eq!(
            stored,
            Committed {
                len: data.len() as u64,
                new: true
            }
        );
        let sri = integrity(&digest).unwrap();
        assert!(
            cacache::exists(&local.root, &sri).await,
            "cacache sees the blob at our content path"
        );
        assert_eq!(
            cacache::read_hash(&local.root, &sri).await.unwrap(),
            data,
            "and its integrity check passes"
        );
        assert_eq!(store.blobs().stat(&digest).await, Some(data.len() as u64));

        let d512 = Digest::of(Algorithm::Sha512, b"sha512 content");
        let mut w = store.create_blob(&d512, None).await.unwrap();
        w.write(Bytes::from_static(b"sha512 content")).await.unwrap();
        w.commit().await.unwrap();
        assert!(cacache::exists(&local.root, &integrity(&d512).unwrap()).await);
        let again = store
            .put_bytes(&d512, &Bytes::from_static(b"sha512 content"))
            .await
            .unwrap();
        assert!(!again.new, "the same content twice is not new");
    }

    #[tokio::test]
    async fn wrong_bytes_or_length_never_reach_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store(&dir);
        let digest = Digest::of(Algorithm::Sha256, b"right");
        let mut w = store.create_blob(&digest, Some(5)).await.unwrap();
        w.write(Bytes::from_static(b"wrong")).await.unwrap();
        let tmp = w.spool_path().to_path_buf();
        assert!(matches!(w.commit().await, Err(StoreError::DigestMismatch { .. })));
        assert!(!tmp.exists(), "temporary file removed");
        assert!(store.blobs().stat(&digest).await.is_none());

        let mut w = store.create_blob(&digest, Some(6)).await.unwrap();
        w.write(Bytes::from_static(b"right")).await.unwrap();
        assert!(matches!(
            w.commit().await,
            Err(StoreError::SizeMismatch { expected: 6, actual: 5 })
        ));
        assert!(store.blobs().stat(&digest).await.is_none());
    }

    #[tokio::test]
    async fn ranges_are_read_from_an_open_file_that_survives_deletion() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store(&dir);
        let data: Vec<u8> = (0..2 * READ + 10).map(|i| (i % 251) as u8).collect();
        const READ: usize = crate::store::READ_CHUNK;
        let digest = Digest::of(Algorithm::Sha256, &data);
        store.put_bytes(&digest, &Bytes::from(data.clone())).await.unwrap();
        let reader = store
            .blobs()
            .open(&digest, 5, Some(READ as u64 + 7), Access::Use)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reader.total, data.len() as u64);
        assert!(store.blobs().delete(&digest, None).await.unwrap());
        let got: Vec<u8> = reader.stream.map(|c| c.unwrap().to_vec()).concat().await;
        assert_eq!(got, &data[5..5 + READ + 7]);
        assert!(
            store
                .blobs()
                .open(&digest, 0, None, Access::Use)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn records_are_kept_per_key_and_listed_by_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store(&dir);
        let d = Digest::of(Algorithm::Sha256, b"m");
        let index = store.index();
        index
            .put("tag/ghcr.io/org/app:v1#a", Some(&d), 1, serde_json::json!({"x": 1}))
            .await
            .unwrap();
        index
            .put("public/ghcr.io/org/app", None, 0, serde_json::json!({}))
            .await
            .unwrap();
        let e = index.get("tag/ghcr.io/org/app:v1#a").await.unwrap();
        assert_eq!(
            (e.digest.as_ref(), e.size, e.metadata["x"].as_u64()),
            (Some(&d), 1, Some(1))
        );
        assert!(index.get("tag/quay.io/org/app:v1#a").await.is_none());
        assert_eq!(index.list("tag/").await.unwrap().len(), 1);
        assert_eq!(index.list("").await.unwrap().len(), 2);
        index.remove("tag/ghcr.io/org/app:v1#a").await.unwrap();
        assert!(index.get("tag/ghcr.io/org/app:v1#a").await.is_none());
        assert_eq!(index.list("").await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn purge_announcements_change_the_mark() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store(&dir);
        std::fs::create_dir_all(dir.path().join("cache")).unwrap();
        let before = store.index().purge_mark();
        store.index().announce_purge("ghcr.io").unwrap();
        let after = store.index().purge_mark();
        assert_ne!(before, after);
        store.index().announce_purge("quay.io").unwrap();
        assert_ne!(after, store.index().purge_mark());
    }

    #[tokio::test]
    async fn interrupted_downloads_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = store(&dir);
        let digest = Digest::of(Algorithm::Sha256, b"abc");
        let mut w = store.create_blob(&digest, None).await.unwrap();
        w.write(Bytes::from_static(b"ab")).await.unwrap();
        w.flush().await.unwrap();
        std::mem::forget(w);
        assert_eq!(store.spool_files().usage(), (1, 2));
        assert_eq!(store.spool_files().sweep_all(), 1);
    }
}
