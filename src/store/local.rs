//! The on-disk cache: a cacache directory (`<data-dir>/cache`). The only module that knows
//! cacache.
//!
//! - Blobs and manifest bytes live in cacache's content-addressed layout
//!   (`content-v2/<algorithm>/<hex[0..2]>/<hex[2..4]>/<hex[4..]>`), so a digest is stored once
//!   whatever registry or repository it came from.
//! - Blobs are written by regcache itself to `tmp/`, hashed as they stream, and renamed into
//!   place only when length and digest match. That way concurrent readers can follow a download
//!   in progress, and nothing unverified is ever at a content path.
//! - Manifest entries (`manifest/<registry>/<repo>@<digest>`, with the media type) and tag
//!   entries (`tag/<registry>/<repo>:<tag>#<accept set>`, with the digest) are cacache index
//!   entries, so two registries never share one.
//!
//! Hits are served from the content path with plain file reads: content was verified when
//! written, and clients verify digests again.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;

use crate::registry::digest::{Algorithm, Digest, Hasher};

/// Store failures. None of them fails a pull: callers fall back to passing through.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The filesystem refused (disk full, permissions, I/O error).
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The bytes written do not hash to the expected digest.
    #[error("content does not match {expected}: got {actual}")]
    DigestMismatch {
        /// The digest asked for.
        expected: Digest,
        /// What the bytes hash to.
        actual: Digest,
    },
    /// The number of bytes differs from what upstream announced.
    #[error("expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Announced length.
        expected: u64,
        /// Bytes received.
        actual: u64,
    },
    /// A cacache index operation failed.
    #[error("cache index: {0}")]
    Index(String),
}

/// A blob present in the store.
#[derive(Debug, Clone)]
pub struct StoredBlob {
    /// The content file.
    pub path: PathBuf,
    /// Its length.
    pub len: u64,
}

/// A manifest present in the store, with its media type.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    /// The exact bytes (their digest is the key).
    pub bytes: Bytes,
    /// `Content-Type` to serve it with.
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
}

/// What a tag resolved to the last time upstream was asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    /// The manifest digest.
    pub digest: String,
    /// The manifest's media type.
    pub media_type: String,
    /// The manifest's length.
    pub size: u64,
    /// Unix milliseconds of the last successful validation with upstream.
    pub validated_at_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct ManifestMeta {
    media_type: String,
}

/// Writes shorter than this are gathered before touching the file: upstream frames are often
/// 16 KiB, and every write is a blocking-pool hop.
const WRITE_BATCH: usize = 512 * 1024;
/// Longest time received bytes wait before being written out for followers.
const BATCH_MAX_DELAY: std::time::Duration = std::time::Duration::from_millis(20);

/// The cache directory.
#[derive(Debug, Clone)]
pub struct ContentStore {
    root: PathBuf,
}

impl ContentStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The cache directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// Where cacache keeps content with this digest.
    pub fn content_path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root
            .join("content-v2")
            .join(digest.algorithm().as_str())
            .join(&hex[0..2])
            .join(&hex[2..4])
            .join(&hex[4..])
    }

    /// Removes leftovers of downloads interrupted by a crash or restart. Run before serving.
    pub fn sweep_temporary_files(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(self.tmp_dir()) else {
            return 0;
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }

    /// Every content file (blobs and manifests) with its metadata, by walking the content
    /// directory. Blocking: run it on the blocking pool.
    pub fn content_files(&self) -> Vec<(PathBuf, std::fs::Metadata)> {
        let mut out = Vec::new();
        let mut dirs = vec![self.root.join("content-v2")];
        while let Some(dir) = dirs.pop() {
            let Ok(list) = std::fs::read_dir(&dir) else { continue };
            for entry in list.flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    dirs.push(entry.path());
                } else if meta.is_file() {
                    out.push((entry.path(), meta));
                }
            }
        }
        out
    }

    /// Content files in the store and their total size. Blocking, as [`Self::content_files`].
    pub fn content_usage(&self) -> (u64, u64) {
        let files = self.content_files();
        (files.len() as u64, files.iter().map(|(_, m)| m.len()).sum())
    }

    /// The blob with `digest`, if stored.
    pub async fn blob(&self, digest: &Digest) -> Option<StoredBlob> {
        let path = self.content_path(digest);
        let meta = tokio::fs::metadata(&path).await.ok()?;
        meta.is_file().then_some(StoredBlob { len: meta.len(), path })
    }

    /// Starts writing a blob that must turn out to be `digest` (and `expected_len`, if known).
    ///
    /// # Errors
    /// If the temporary file cannot be created.
    pub async fn blob_writer(&self, digest: &Digest, expected_len: Option<u64>) -> Result<BlobWriter, StoreError> {
        let dir = self.tmp_dir();
        tokio::fs::create_dir_all(&dir).await.map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(format!(
            "{}-{}.{:016x}.partial",
            digest.algorithm().as_str(),
            digest.hex(),
            rand::random::<u64>()
        ));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|source| StoreError::Io {
                path: path.clone(),
                source,
            })?
            .into_std()
            .await;
        Ok(BlobWriter {
            sink: Some(Sink {
                file,
                hasher: digest.hasher(),
            }),
            inflight: None,
            path,
            final_path: self.content_path(digest),
            digest: digest.clone(),
            expected_len,
            pending: Vec::new(),
            pending_len: 0,
            queued: 0,
            flushed: 0,
            last_dispatch: std::time::Instant::now(),
        })
    }

    /// The manifest `digest` as cached for `registry`/`repository`, re-verified.
    pub async fn manifest(&self, registry: &str, repository: &str, digest: &Digest) -> Option<StoredManifest> {
        let key = manifest_key(registry, repository, digest);
        let entry = cacache::index::find_async(&self.root, &key).await.ok()??;
        let meta: ManifestMeta = serde_json::from_value(entry.metadata).ok()?;
        let bytes = tokio::fs::read(self.content_path(digest)).await.ok()?;
        // Manifests are small: verifying on every read costs microseconds.
        if !digest.matches(&bytes) {
            tracing::warn!(%digest, "cached manifest is corrupt; ignoring it");
            return None;
        }
        Some(StoredManifest {
            bytes: Bytes::from(bytes),
            media_type: meta.media_type,
            digest: digest.clone(),
        })
    }

    /// Stores manifest bytes (which must hash to `digest`) for `registry`/`repository`.
    ///
    /// # Errors
    /// On a digest mismatch or an I/O failure.
    pub async fn put_manifest(
        &self,
        registry: &str,
        repository: &str,
        digest: &Digest,
        media_type: &str,
        bytes: &Bytes,
    ) -> Result<(), StoreError> {
        // cacache hashes what it is given and refuses to commit on a mismatch: the one check.
        let sri = integrity(digest)?;
        let new_content = !tokio::fs::try_exists(self.content_path(digest)).await.unwrap_or(true);
        let written = cacache::WriteOpts::new()
            .algorithm(cache_algorithm(digest.algorithm()))
            .integrity(sri.clone())
            .size(bytes.len())
            .open_hash(&self.root)
            .await
            .map_err(index_err)?;
        let mut writer = written;
        writer.write_all(bytes).await.map_err(|source| StoreError::Io {
            path: self.root.clone(),
            source,
        })?;
        writer.commit().await.map_err(index_err)?;
        if new_content {
            crate::telemetry::metrics::global().content_stored(bytes.len() as u64);
        }
        let meta = serde_json::to_value(ManifestMeta {
            media_type: media_type.to_string(),
        })
        .map_err(|e| StoreError::Index(e.to_string()))?;
        cacache::index::insert_async(
            &self.root,
            &manifest_key(registry, repository, digest),
            cacache::WriteOpts::new()
                .integrity(sri)
                .size(bytes.len())
                .metadata(meta),
        )
        .await
        .map_err(index_err)?;
        Ok(())
    }

    /// The last known resolution of a tag for one `Accept` set.
    pub async fn tag(&self, key: &str) -> Option<TagRecord> {
        let entry = cacache::index::find_async(&self.root, key).await.ok()??;
        serde_json::from_value(entry.metadata).ok()
    }

    /// Records a tag resolution.
    ///
    /// # Errors
    /// On an I/O failure, or a record whose digest does not parse.
    pub async fn put_tag(&self, key: &str, record: &TagRecord) -> Result<(), StoreError> {
        let digest: Digest = record.digest.parse().map_err(StoreError::Index)?;
        let meta = serde_json::to_value(record).map_err(|e| StoreError::Index(e.to_string()))?;
        cacache::index::insert_async(
            &self.root,
            key,
            cacache::WriteOpts::new()
                .integrity(integrity(&digest)?)
                .size(record.size as usize)
                .metadata(meta),
        )
        .await
        .map_err(index_err)?;
        Ok(())
    }
}

impl ContentStore {
    /// Records that upstream served `digest` through `registry`/`repository` (see
    /// [`crate::cache::repo_access`]), so that it is known after a restart.
    ///
    /// # Errors
    /// On an I/O failure.
    pub async fn put_member(&self, registry: &str, repository: &str, digest: &Digest) -> Result<(), StoreError> {
        cacache::index::insert_async(
            &self.root,
            &format!("member/{registry}/{repository}@{digest}"),
            cacache::WriteOpts::new().integrity(integrity(digest)?),
        )
        .await
        .map_err(index_err)?;
        Ok(())
    }

    /// Whether [`ContentStore::put_member`] recorded `digest` in this repository.
    pub async fn is_member(&self, registry: &str, repository: &str, digest: &Digest) -> bool {
        matches!(
            cacache::index::find_async(&self.root, &format!("member/{registry}/{repository}@{digest}")).await,
            Ok(Some(_))
        )
    }

    /// Records that a repository was found public (readable anonymously) now.
    ///
    /// # Errors
    /// On an I/O failure.
    pub async fn put_public(&self, registry: &str, repository: &str) -> Result<(), StoreError> {
        let empty = Digest::of(Algorithm::Sha256, b"");
        cacache::index::insert_async(
            &self.root,
            &format!("public/{registry}/{repository}"),
            cacache::WriteOpts::new()
                .integrity(integrity(&empty)?)
                .metadata(serde_json::json!({ "checked_at_ms": now_ms() })),
        )
        .await
        .map_err(index_err)?;
        Ok(())
    }

    /// When the repository was last found public, if ever.
    pub async fn public_since(&self, registry: &str, repository: &str) -> Option<u64> {
        let entry = cacache::index::find_async(&self.root, &format!("public/{registry}/{repository}"))
            .await
            .ok()??;
        entry.metadata.get("checked_at_ms")?.as_u64()
    }
}

impl ContentStore {
    /// Every tag record of `registry`/`repository`:`tag`, one per Accept set clients used, with
    /// its key. Walks the whole index: for one-shot commands (`cache export`), not for requests.
    pub async fn tag_records(&self, registry: &str, repository: &str, tag: &str) -> Vec<(String, TagRecord)> {
        let root = self.root.clone();
        let prefix = tag_key(registry, repository, tag, "");
        tokio::task::spawn_blocking(move || {
            cacache::index::ls(&root)
                .filter_map(Result::ok)
                .filter(|e| e.key.starts_with(&prefix))
                .filter_map(|e| Some((e.key, serde_json::from_value(e.metadata).ok()?)))
                .collect()
        })
        .await
        .unwrap_or_default()
    }
}

/// Accept key of the tag records `regcache warm` and `regcache cache import` write. A client's
/// own Accept set never produces it (empty media types are dropped, so no key starts with a
/// comma); the cache falls back to it for any client that accepts the recorded media type
/// (see `RegistryCache::manifest_by_tag`), because warm cannot know every client's Accept list.
pub const SEEDED_ACCEPT_KEY: &str = ",seeded";

/// Index key of the seeded tag record (see [`SEEDED_ACCEPT_KEY`]).
pub fn seeded_tag_key(registry: &str, repository: &str, tag: &str) -> String {
    tag_key(registry, repository, tag, SEEDED_ACCEPT_KEY)
}

/// Index key of a manifest entry.
pub fn manifest_key(registry: &str, repository: &str, digest: &Digest) -> String {
    format!("manifest/{registry}/{repository}@{digest}")
}

/// Index key of a tag entry.
pub fn tag_key(registry: &str, repository: &str, tag: &str, accept_key: &str) -> String {
    format!("tag/{registry}/{repository}:{tag}#{accept_key}")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn integrity(digest: &Digest) -> Result<cacache::Integrity, StoreError> {
    cacache::Integrity::from_hex(digest.hex(), cache_algorithm(digest.algorithm())).map_err(index_err)
}

fn cache_algorithm(a: Algorithm) -> cacache::Algorithm {
    match a {
        Algorithm::Sha256 => cacache::Algorithm::Sha256,
        Algorithm::Sha512 => cacache::Algorithm::Sha512,
    }
}

fn index_err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Index(e.to_string())
}

/// A blob being written: hashed as it streams, renamed into the content store on success.
///
/// Batches are hashed and written by a job on the blocking pool while the next batch is being
/// received, so network, hashing and disk overlap. Each job owns the file and the hash state
/// and hands them back. A batch is the list of the body's own `Bytes` (never gathered into one
/// buffer, which would copy every byte once more): they are hashed and written with vectored
/// writes as they are, then returned to the caller so that followers of the download can be
/// served from memory.
pub struct BlobWriter {
    sink: Option<Sink>,
    inflight: Option<tokio::task::JoinHandle<WriteJob>>,
    path: PathBuf,
    final_path: PathBuf,
    digest: Digest,
    expected_len: Option<u64>,
    pending: Vec<Bytes>,
    pending_len: usize,
    /// Bytes handed to jobs so far.
    queued: u64,
    /// Bytes known to be in the file.
    flushed: u64,
    last_dispatch: std::time::Instant,
}

/// A finished write job: the sink back, its result, and the batch it wrote at its offset.
type WriteJob = (Sink, io::Result<()>, u64, Vec<Bytes>);

/// What a write job needs and returns.
struct Sink {
    file: std::fs::File,
    hasher: Hasher,
}

impl BlobWriter {
    /// Sets the length upstream announced, checked at commit.
    pub fn expect_len(mut self, len: Option<u64>) -> Self {
        self.expected_len = len;
        self
    }

    /// The temporary file, which readers of a download in progress follow.
    pub fn temp_path(&self) -> &Path {
        &self.path
    }

    /// Appends a chunk. Returns the chunks that have reached the file since the last call,
    /// with their offsets, for followers of the download.
    ///
    /// A batch is dispatched when it is full, or when data has waited [`BATCH_MAX_DELAY`]
    /// (a slow upstream must not hold followers back until half a MiB has trickled in).
    ///
    /// # Errors
    /// On an I/O failure.
    pub async fn write(&mut self, chunk: Bytes) -> Result<Vec<(u64, Bytes)>, StoreError> {
        if !chunk.is_empty() {
            self.pending_len += chunk.len();
            self.pending.push(chunk);
        }
        let mut done = Vec::new();
        if self.inflight.as_ref().is_some_and(|j| j.is_finished()) {
            done.extend(self.wait_inflight().await?);
        }
        let overdue = self.last_dispatch.elapsed() >= BATCH_MAX_DELAY && self.inflight.is_none();
        if self.pending_len >= WRITE_BATCH || (overdue && !self.pending.is_empty()) {
            done.extend(self.dispatch().await?);
        }
        Ok(done)
    }

    /// Waits for the batch in flight, then starts a job for what is gathered. Returns the chunks
    /// of the batch that completed.
    async fn dispatch(&mut self) -> Result<Vec<(u64, Bytes)>, StoreError> {
        let done = self.wait_inflight().await?;
        self.last_dispatch = std::time::Instant::now();
        if !self.pending.is_empty() {
            let batch = std::mem::take(&mut self.pending);
            let offset = self.queued;
            self.queued += std::mem::take(&mut self.pending_len) as u64;
            let mut sink = self.sink.take().ok_or_else(|| self.lost())?;
            self.inflight = Some(tokio::task::spawn_blocking(move || {
                for chunk in &batch {
                    sink.hasher.update(chunk);
                }
                let r = write_all_vectored(&mut sink.file, &batch);
                (sink, r, offset, batch)
            }));
        }
        Ok(done)
    }

    async fn wait_inflight(&mut self) -> Result<Vec<(u64, Bytes)>, StoreError> {
        let Some(job) = self.inflight.take() else {
            return Ok(Vec::new());
        };
        let (sink, result, offset, batch) = job.await.map_err(|e| StoreError::Io {
            path: self.path.clone(),
            source: io::Error::other(e),
        })?;
        self.sink = Some(sink);
        result.map_err(|source| StoreError::Io {
            path: self.path.clone(),
            source,
        })?;
        let mut at = offset;
        let chunks = batch
            .into_iter()
            .map(|chunk| {
                let start = at;
                at += chunk.len() as u64;
                (start, chunk)
            })
            .collect();
        self.flushed = at;
        Ok(chunks)
    }

    fn lost(&self) -> StoreError {
        StoreError::Io {
            path: self.path.clone(),
            source: io::Error::other("blob file lost after an earlier failure"),
        }
    }

    /// Writes out everything gathered and waits for it; returns the chunks that reached the file.
    ///
    /// # Errors
    /// On an I/O failure.
    pub async fn flush(&mut self) -> Result<Vec<(u64, Bytes)>, StoreError> {
        let mut done = Vec::new();
        done.extend(self.dispatch().await?);
        done.extend(self.wait_inflight().await?);
        Ok(done)
    }

    /// Verifies length and digest, then moves the blob into the content store.
    ///
    /// The rename happens before the data is fsynced: a process crash (the case that matters,
    /// `kill -9` included) cannot lose page-cache data, and waiting for the disk would hold
    /// every client's last byte back by seconds per GiB. The fsync follows in the background.
    ///
    /// # Errors
    /// On a mismatch (the temporary file is removed) or an I/O failure.
    pub async fn commit(mut self) -> Result<StoredBlob, StoreError> {
        let result = self.finish().await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&self.path).await;
        }
        result
    }

    async fn finish(&mut self) -> Result<StoredBlob, StoreError> {
        self.flush().await?;
        if let Some(expected) = self.expected_len
            && expected != self.flushed
        {
            return Err(StoreError::SizeMismatch {
                expected,
                actual: self.flushed,
            });
        }
        let sink = self.sink.take().ok_or_else(|| self.lost())?;
        let actual = sink.hasher.finish();
        if actual != self.digest {
            return Err(StoreError::DigestMismatch {
                expected: self.digest.clone(),
                actual,
            });
        }
        if let Some(parent) = self.final_path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|source| StoreError::Io {
                    path: parent.to_path_buf(),
                    source,
                })?;
        }
        let new_content = !tokio::fs::try_exists(&self.final_path).await.unwrap_or(true);
        tokio::fs::rename(&self.path, &self.final_path)
            .await
            .map_err(|source| StoreError::Io {
                path: self.final_path.clone(),
                source,
            })?;
        let file = sink.file;
        let dir = self.final_path.parent().map(Path::to_path_buf);
        tokio::task::spawn_blocking(move || {
            let _ = file.sync_all();
            if let Some(dir) = dir.and_then(|d| std::fs::File::open(d).ok()) {
                let _ = dir.sync_all();
            }
        });
        if new_content {
            crate::telemetry::metrics::global().content_stored(self.flushed);
        }
        Ok(StoredBlob {
            path: self.final_path.clone(),
            len: self.flushed,
        })
    }

    /// Abandons the blob and removes the temporary file.
    pub async fn discard(mut self) {
        let _ = self.wait_inflight().await;
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}

/// Writes every chunk, in order, with as few `writev` calls as the kernel allows.
fn write_all_vectored(file: &mut std::fs::File, chunks: &[Bytes]) -> io::Result<()> {
    use std::io::{IoSlice, Write};
    // Linux takes at most IOV_MAX (1024) slices per call.
    for group in chunks.chunks(1024) {
        let mut slices: Vec<IoSlice<'_>> = group.iter().map(|c| IoSlice::new(c)).collect();
        let mut rest = &mut slices[..];
        while !rest.is_empty() {
            match file.write_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn committed_blobs_are_where_cacache_expects_them() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::new(dir.path().join("cache"));
        let data = vec![7u8; 700 * 1024];
        let digest = Digest::of(Algorithm::Sha256, &data);
        let mut w = store.blob_writer(&digest, Some(data.len() as u64)).await.unwrap();
        for chunk in data.chunks(10_000) {
            w.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        let stored = w.commit().await.unwrap();
        assert_eq!(stored.len, data.len() as u64);
        let sri = integrity(&digest).unwrap();
        assert!(
            cacache::exists(store.root(), &sri).await,
            "cacache sees the blob at our content path"
        );
        assert_eq!(
            cacache::read_hash(store.root(), &sri).await.unwrap(),
            data,
            "and its integrity check passes"
        );
        assert_eq!(store.blob(&digest).await.unwrap().len, data.len() as u64);

        let d512 = Digest::of(Algorithm::Sha512, b"sha512 content");
        let mut w = store.blob_writer(&d512, None).await.unwrap();
        w.write(Bytes::from_static(b"sha512 content")).await.unwrap();
        w.commit().await.unwrap();
        assert!(cacache::exists(store.root(), &integrity(&d512).unwrap()).await);
    }

    #[tokio::test]
    async fn wrong_bytes_or_length_never_reach_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::new(dir.path().join("cache"));
        let digest = Digest::of(Algorithm::Sha256, b"right");
        let mut w = store.blob_writer(&digest, Some(5)).await.unwrap();
        w.write(Bytes::from_static(b"wrong")).await.unwrap();
        let tmp = w.temp_path().to_path_buf();
        assert!(matches!(w.commit().await, Err(StoreError::DigestMismatch { .. })));
        assert!(!tmp.exists(), "temporary file removed");
        assert!(store.blob(&digest).await.is_none());

        let mut w = store.blob_writer(&digest, Some(6)).await.unwrap();
        w.write(Bytes::from_static(b"right")).await.unwrap();
        assert!(matches!(
            w.commit().await,
            Err(StoreError::SizeMismatch { expected: 6, actual: 5 })
        ));
        assert!(store.blob(&digest).await.is_none());
    }

    #[tokio::test]
    async fn manifests_and_tags_are_keyed_per_registry() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::new(dir.path().join("cache"));
        let body = Bytes::from_static(br#"{"schemaVersion":2}"#);
        let digest = Digest::of(Algorithm::Sha256, &body);
        store
            .put_manifest(
                "ghcr.io",
                "org/app",
                &digest,
                "application/vnd.oci.image.manifest.v1+json",
                &body,
            )
            .await
            .unwrap();
        let m = store.manifest("ghcr.io", "org/app", &digest).await.unwrap();
        assert_eq!(m.bytes, body);
        assert_eq!(m.media_type, "application/vnd.oci.image.manifest.v1+json");
        assert!(store.manifest("quay.io", "org/app", &digest).await.is_none());
        let other = Digest::of(Algorithm::Sha256, b"x");
        assert!(
            store
                .put_manifest("ghcr.io", "org/app", &other, "t", &body)
                .await
                .is_err()
        );

        let key = tag_key("ghcr.io", "org/app", "v1", "a,b");
        let rec = TagRecord {
            digest: digest.to_string(),
            media_type: "t".into(),
            size: 19,
            validated_at_ms: 5,
        };
        store.put_tag(&key, &rec).await.unwrap();
        assert_eq!(store.tag(&key).await.unwrap(), rec);
        assert!(store.tag(&tag_key("quay.io", "org/app", "v1", "a,b")).await.is_none());
    }

    #[tokio::test]
    async fn interrupted_downloads_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = ContentStore::new(dir.path().join("cache"));
        let digest = Digest::of(Algorithm::Sha256, b"abc");
        let mut w = store.blob_writer(&digest, None).await.unwrap();
        w.write(Bytes::from_static(b"ab")).await.unwrap();
        w.flush().await.unwrap();
        std::mem::forget(w);
        assert_eq!(store.sweep_temporary_files(), 1);
    }
}
