//! Writing a blob: spooled to a local file while it streams, hashed on the way, and handed to
//! the backend ([`BlobStore::commit`]) only once length and digest match. Until then it is
//! nowhere under its digest, so nothing unverified can be served from the store.
//!
//! Batches are hashed and written by a job on the blocking pool while the next batch is being
//! received, so network, hashing and disk overlap. Each job owns the file and the hash state
//! and hands them back. A batch is the list of the body's own `Bytes` (never gathered into one
//! buffer, which would copy every byte once more): they are hashed and written with vectored
//! writes as they are, then returned to the caller so that followers of the download can be
//! served from memory.
//!
//! Also here: positioned reads of local files (spools and the local store's content), shared by
//! every reader that streams from disk.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::Stream;

use crate::registry::{Digest, Hasher};
use crate::store::{BlobStore, Committed, StoreError, UploadFeed, VerifiedSpool};

/// Writes shorter than this are gathered before touching the file: upstream frames are often
/// 16 KiB, and every write is a blocking-pool hop.
const WRITE_BATCH: usize = 512 * 1024;
/// Longest time received bytes wait before being written out for followers.
const BATCH_MAX_DELAY: Duration = Duration::from_millis(20);
/// Read size when following a download or serving a file.
pub const READ_CHUNK: usize = 512 * 1024;
/// Spool files end with this.
const SPOOL_SUFFIX: &str = ".partial";

/// A blob being written: hashed as it streams, committed to the backend on success.
pub struct BlobWriter {
    backend: Arc<dyn BlobStore>,
    sink: Option<Sink>,
    inflight: Option<tokio::task::JoinHandle<WriteJob>>,
    path: PathBuf,
    digest: Digest,
    expected_len: Option<u64>,
    pending: Vec<Bytes>,
    pending_len: usize,
    /// Bytes handed to jobs so far.
    queued: u64,
    /// Bytes known to be in the file.
    flushed: u64,
    last_dispatch: std::time::Instant,
    /// The backend's upload of the bytes while they arrive, if it takes one.
    upload: Option<UploadFeed>,
    /// A copy of a blob another process is committing: never uploaded while it arrives.
    copy_only: bool,
}

/// A finished write job: the sink back, its result, and the batch it wrote at its offset.
type WriteJob = (Sink, io::Result<()>, u64, Vec<Bytes>);

/// What a write job needs and returns.
struct Sink {
    file: std::fs::File,
    hasher: Hasher,
}

impl BlobWriter {
    /// A new spool file in `backend`'s spool directory for a blob that must turn out to be
    /// `digest` (and `expected_len`, if known).
    pub(crate) async fn create(
        backend: Arc<dyn BlobStore>,
        digest: &Digest,
        expected_len: Option<u64>,
    ) -> Result<Self, StoreError> {
        let dir = backend.spool_dir();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| StoreError::io(&dir, e))?;
        let path = dir.join(format!(
            "{}-{}.{:016x}{SPOOL_SUFFIX}",
            digest.algorithm().as_str(),
            digest.hex(),
            rand::random::<u64>()
        ));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| StoreError::io(&path, e))?
            .into_std()
            .await;
        Ok(Self {
            backend,
            sink: Some(Sink {
                file,
                hasher: digest.hasher(),
            }),
            inflight: None,
            path,
            digest: digest.clone(),
            expected_len,
            pending: Vec::new(),
            pending_len: 0,
            queued: 0,
            flushed: 0,
            last_dispatch: std::time::Instant::now(),
            upload: None,
            copy_only: false,
        })
    }

    /// Marks this as a verified copy of a blob another process is committing (a replica
    /// streaming it from the one downloading it): no upload while it arrives, and it ends with
    /// [`BlobWriter::verify`], not [`BlobWriter::commit`].
    pub fn copy_only(&mut self) {
        self.copy_only = true;
    }

    /// Bytes handed to [`BlobWriter::write`] so far (where a resumed transfer goes on from).
    pub fn received(&self) -> u64 {
        self.queued + self.pending_len as u64
    }

    /// Sets the length upstream announced, checked at commit; a backend that uploads while
    /// a blob downloads starts doing so now.
    pub fn expect_len(&mut self, len: Option<u64>) {
        self.expected_len = len;
        if let Some(len) = len
            && !self.copy_only
            && self.upload.is_none()
            && self.queued == 0
        {
            self.upload = self.backend.start_upload(&self.digest, len);
        }
    }

    /// The spool file, which readers of a download in progress follow.
    pub fn spool_path(&self) -> &Path {
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
        let (sink, result, offset, batch) = job.await.map_err(|e| StoreError::io(&self.path, io::Error::other(e)))?;
        self.sink = Some(sink);
        result.map_err(|e| StoreError::io(&self.path, e))?;
        if let Some(upload) = &mut self.upload {
            upload.feed(batch.iter().cloned());
        }
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
        StoreError::io(&self.path, io::Error::other("blob file lost after an earlier failure"))
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

    /// Verifies length and digest, then hands the blob to the backend.
    ///
    /// # Errors
    /// On a mismatch or a failure of the backend; the spool file is then removed.
    pub async fn commit(mut self) -> Result<Committed, StoreError> {
        let result = self.finish().await;
        if result.is_err() {
            if let Some(upload) = self.upload.take() {
                upload.finish(false).await;
            }
            let _ = tokio::fs::remove_file(&self.path).await;
        }
        result
    }

    /// Verifies length and digest and hands back the spool without committing it: the caller
    /// commits it ([`crate::store::Store::commit_verified`]) or removes it.
    ///
    /// # Errors
    /// On a mismatch or an I/O failure; the spool file is then removed.
    pub async fn verify(mut self) -> Result<VerifiedSpool, StoreError> {
        let result = self.check().await;
        if let Some(upload) = self.upload.take() {
            upload.finish(false).await;
        }
        if result.is_err() {
            let _ = tokio::fs::remove_file(&self.path).await;
        }
        result.map(|file| VerifiedSpool {
            digest: self.digest.clone(),
            path: self.path.clone(),
            file,
            len: self.flushed,
            uploaded: false,
        })
    }

    async fn finish(&mut self) -> Result<Committed, StoreError> {
        let file = self.check().await?;
        // Verified: an upload made while it downloaded may now become the stored blob.
        let uploaded = match self.upload.take() {
            Some(upload) => upload.finish(true).await,
            None => false,
        };
        self.backend
            .commit(VerifiedSpool {
                digest: self.digest.clone(),
                path: self.path.clone(),
                file,
                len: self.flushed,
                uploaded,
            })
            .await
    }

    /// Writes out what is left, then checks length and digest; the file, when they match.
    async fn check(&mut self) -> Result<std::fs::File, StoreError> {
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
        Ok(sink.file)
    }

    /// Abandons the blob and removes the spool file.
    pub async fn discard(mut self) {
        let _ = self.wait_inflight().await;
        if let Some(upload) = self.upload.take() {
            upload.finish(false).await;
        }
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

/// Reads up to `want` bytes at `pos` on the blocking pool, straight into a fresh buffer (one
/// copy, kernel to user; tokio's `File` would add a second). Always positions first: a
/// follower of a download alternates between memory and the file, so the file's own cursor
/// cannot be trusted.
///
/// # Errors
/// On an I/O failure.
pub async fn read_at(mut file: std::fs::File, pos: u64, want: usize) -> io::Result<(std::fs::File, Bytes)> {
    tokio::task::spawn_blocking(move || {
        std::io::Seek::seek(&mut file, io::SeekFrom::Start(pos))?;
        let mut buf = Vec::with_capacity(want);
        let mut limited = std::io::Read::take(file, want as u64);
        std::io::Read::read_to_end(&mut limited, &mut buf)?;
        Ok((limited.into_inner(), Bytes::from(buf)))
    })
    .await
    .map_err(io::Error::other)?
}

/// Streams `len` bytes of an open file from `start`, in [`READ_CHUNK`] pieces. The file being
/// open, the answer is immune to its removal meanwhile (an eviction, a `cache rm`).
pub(crate) fn file_stream(
    file: std::fs::File,
    start: u64,
    len: u64,
) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
    struct St {
        file: Option<std::fs::File>,
        pos: u64,
        left: u64,
    }
    let st = St {
        file: Some(file),
        pos: start,
        left: len,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        if st.left == 0 {
            return None;
        }
        let file = st.file.take()?;
        let want = st.left.min(READ_CHUNK as u64) as usize;
        match read_at(file, st.pos, want).await {
            Ok((_, bytes)) if bytes.is_empty() => Some((
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "cached blob is shorter than its length",
                )),
                st,
            )),
            Ok((file, bytes)) => {
                st.file = Some(file);
                st.pos += bytes.len() as u64;
                st.left -= bytes.len() as u64;
                Some((Ok(bytes), st))
            }
            // The file stays taken: the stream ends after the error.
            Err(e) => Some((Err(e), st)),
        }
    })
}

/// The spool directory: files of downloads in progress, and leftovers of interrupted ones.
#[derive(Debug, Clone)]
pub struct SpoolFiles {
    dir: PathBuf,
}

impl SpoolFiles {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    /// Removes every spool file: leftovers of downloads interrupted by a crash or restart.
    /// Run before serving. Blocking.
    pub fn sweep_all(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        entries
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(SPOOL_SUFFIX))
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    }

    /// Removes files untouched for longer than `idle` (a download in progress writes at least
    /// every few seconds): their count and bytes. Blocking.
    pub fn sweep_idle(&self, idle: Duration) -> (u64, u64) {
        let Ok(list) = std::fs::read_dir(&self.dir) else {
            return (0, 0);
        };
        let now = SystemTime::now();
        let (mut files, mut bytes) = (0, 0);
        for entry in list.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .unwrap_or_default();
            if meta.is_file() && age > idle && std::fs::remove_file(entry.path()).is_ok() {
                files += 1;
                bytes += meta.len();
            }
        }
        (files, bytes)
    }

    /// Spool files and their bytes, without touching them. Blocking.
    pub fn usage(&self) -> (u64, u64) {
        let Ok(list) = std::fs::read_dir(&self.dir) else {
            return (0, 0);
        };
        list.flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(SPOOL_SUFFIX))
            .filter_map(|e| e.metadata().ok())
            .filter(|m| m.is_file())
            .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
    }
}
