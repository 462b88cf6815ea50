//! Blob downloads in progress, one per digest, shared by every client that wants that blob.
//!
//! The first miss registers a [`Download`]; the task that fetches it writes to the store's
//! spool file and publishes how many bytes are there. Every client (the first one included)
//! reads that file as it grows (or, once committed, the stored blob), so concurrent requests cost one upstream transfer, late joiners and
//! `Range` requests start wherever they like, and the download finishes even if the client
//! that started it goes away.
//!
//! The last byte of a blob of known length is only released once the digest has been
//! verified: a client never receives a complete-looking body with the wrong content.

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt as _};
use tokio::sync::watch;

use crate::registry::Digest;
use crate::store::{Access, ByteStream, READ_CHUNK, Store, read_at};
use crate::telemetry::Metrics;

/// Where a download stands.
#[derive(Debug, Clone)]
pub enum DownloadState {
    /// Asking upstream.
    Connecting,
    /// Upstream answered 200; bytes are arriving.
    Running {
        /// The file being written.
        temp: Arc<PathBuf>,
        /// Bytes written so far.
        written: u64,
        /// Length announced by upstream.
        total: Option<u64>,
    },
    /// Verified and in the store.
    Done {
        /// Length of the blob.
        len: u64,
    },
    /// Never started (upstream refused, store unwritable): each waiter asks upstream itself.
    Abandoned,
    /// Started and broke (upstream cut, digest mismatch, disk error).
    Failed(Arc<str>),
}

/// One blob being fetched.
pub struct Download {
    state: watch::Receiver<DownloadState>,
    /// Where the blob is once committed (for readers that start after the spool is gone).
    store: Store,
    digest: Digest,
    recent: Arc<Mutex<Recent>>,
}

/// How much of the newest data a download keeps in memory for clients following it closely.
/// Followers within this window are served from memory; slower ones read the file.
const RECENT_BYTES: usize = 2 * 1024 * 1024;

/// The newest batches written, as shared `Bytes` (no copies per reader).
#[derive(Default)]
struct Recent {
    chunks: std::collections::VecDeque<(u64, Bytes)>,
    bytes: usize,
}

impl Recent {
    fn push(&mut self, offset: u64, chunk: Bytes) {
        self.bytes += chunk.len();
        self.chunks.push_back((offset, chunk));
        while self.bytes > RECENT_BYTES && self.chunks.len() > 1 {
            if let Some((_, old)) = self.chunks.pop_front() {
                self.bytes -= old.len();
            }
        }
    }

    /// Bytes from `pos` up to `limit` (exclusive), if `pos` is still in memory.
    fn slice(&self, pos: u64, limit: u64) -> Option<Bytes> {
        if pos >= limit {
            return None;
        }
        self.chunks.iter().find_map(|(off, chunk)| {
            let end = off + chunk.len() as u64;
            (pos >= *off && pos < end).then(|| {
                let stop = end.min(limit);
                chunk.slice((pos - off) as usize..(stop - off) as usize)
            })
        })
    }
}

impl Download {
    /// The current state.
    #[cfg(test)]
    pub fn state(&self) -> DownloadState {
        self.state.borrow().clone()
    }

    /// Waits until the download has left [`DownloadState::Connecting`].
    pub async fn started(&self) -> DownloadState {
        let mut rx = self.state.clone();
        match rx.wait_for(|s| !matches!(s, DownloadState::Connecting)).await {
            Ok(s) => s.clone(),
            Err(_) => DownloadState::Failed("download task ended".into()),
        }
    }

    /// The bytes `start..end` (end exclusive; `None` = to the end) as they become available.
    pub fn read(&self, start: u64, end: Option<u64>) -> impl Stream<Item = io::Result<Bytes>> + Send + 'static {
        let reader = Reader {
            rx: self.state.clone(),
            store: self.store.clone(),
            digest: self.digest.clone(),
            recent: self.recent.clone(),
            source: Source::Closed,
            pos: start,
            end,
            finished: false,
        };
        futures_util::stream::unfold(reader, |mut r| async move {
            if r.finished {
                return None;
            }
            match r.next_chunk().await {
                Ok(Some(b)) => Some((Ok(b), r)),
                Ok(None) => None,
                Err(e) => {
                    r.finished = true;
                    Some((Err(e), r))
                }
            }
        })
    }
}

struct Reader {
    rx: watch::Receiver<DownloadState>,
    store: Store,
    digest: Digest,
    recent: Arc<Mutex<Recent>>,
    source: Source,
    pos: u64,
    end: Option<u64>,
    finished: bool,
}

/// Where a reader gets bytes that are no longer in memory.
enum Source {
    /// Nothing opened yet.
    Closed,
    /// The spool file, read at any offset.
    Spool(std::fs::File),
    /// The committed blob, read in order from where the reader was.
    Stored(ByteStream),
}

impl Reader {
    async fn next_chunk(&mut self) -> io::Result<Option<Bytes>> {
        loop {
            if self.end.is_some_and(|e| self.pos >= e) {
                return Ok(None);
            }
            if let Source::Stored(stream) = &mut self.source {
                // Committed, so verified: read it to the end asked for.
                return match stream.next().await {
                    Some(Ok(bytes)) => {
                        self.pos += bytes.len() as u64;
                        Ok(Some(bytes))
                    }
                    Some(Err(e)) => Err(e),
                    None if self.end.is_some_and(|e| self.pos < e) => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob shorter than the range asked for",
                    )),
                    None => Ok(None),
                };
            }
            let state = self.rx.borrow_and_update().clone();
            let (available, complete, temp) = match state {
                DownloadState::Connecting => (0, false, None),
                // Hold back the final byte until the digest is verified.
                DownloadState::Running { temp, written, total } => {
                    let avail = match total {
                        Some(t) => written.min(t.saturating_sub(1)),
                        None => written,
                    };
                    (avail, false, Some(temp))
                }
                DownloadState::Done { len } => (len, true, None),
                DownloadState::Abandoned => return Err(io::Error::other("download abandoned")),
                DownloadState::Failed(why) => return Err(io::Error::other(format!("blob download failed: {why}"))),
            };
            if self.pos < available {
                let limit = self.end.map_or(available, |e| e.min(available));
                let in_memory = self
                    .recent
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .slice(self.pos, limit);
                if let Some(bytes) = in_memory {
                    self.pos += bytes.len() as u64;
                    return Ok(Some(bytes));
                }
                let want = (limit - self.pos).min(READ_CHUNK as u64) as usize;
                self.open(temp.as_deref()).await?;
                let file = match std::mem::replace(&mut self.source, Source::Closed) {
                    Source::Spool(file) => file,
                    stored @ Source::Stored(_) => {
                        self.source = stored;
                        continue;
                    }
                    Source::Closed => return Err(io::Error::other("blob file not open")),
                };
                let (file, bytes) = read_at(file, self.pos, want).await?;
                self.source = Source::Spool(file);
                if bytes.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob file shorter than announced",
                    ));
                }
                self.pos += bytes.len() as u64;
                return Ok(Some(bytes));
            }
            if complete {
                return if self.end.is_some_and(|e| self.pos < e) {
                    Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "blob shorter than the range asked for",
                    ))
                } else {
                    Ok(None)
                };
            }
            if self.rx.changed().await.is_err() {
                return Err(io::Error::other("blob download ended without a result"));
            }
        }
    }

    /// Opens the spool file, or, once the blob is committed (the spool renamed or removed),
    /// the stored blob from the current position.
    async fn open(&mut self, temp: Option<&PathBuf>) -> io::Result<()> {
        if !matches!(self.source, Source::Closed) {
            return Ok(());
        }
        if let Some(temp) = temp.cloned() {
            let opened = tokio::task::spawn_blocking(move || std::fs::File::open(temp))
                .await
                .map_err(io::Error::other)?;
            if let Ok(file) = opened {
                self.source = Source::Spool(file);
                return Ok(());
            }
        }
        let len = self.end.map(|e| e.saturating_sub(self.pos));
        let (store, digest, pos) = (self.store.clone(), self.digest.clone(), self.pos);
        // On a task of its own: the store's future is not `Sync`, and a response body must be.
        let opened = tokio::spawn(async move { store.blobs().open(&digest, pos, len, Access::Use).await })
            .await
            .map_err(io::Error::other)?;
        let reader = opened
            .map_err(io::Error::other)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "downloaded blob is gone from the store"))?;
        self.source = Source::Stored(reader.stream);
        Ok(())
    }
}

/// The writer's side of a [`Download`]: reports progress; unregisters when dropped.
pub struct DownloadHandle {
    state: watch::Sender<DownloadState>,
    recent: Arc<Mutex<Recent>>,
    digest: Digest,
    table: Arc<Mutex<HashMap<Digest, Arc<Download>>>>,
    metrics: Arc<Metrics>,
}

impl DownloadHandle {
    /// Upstream answered 200; bytes go to `temp`.
    pub fn running(&self, temp: PathBuf, total: Option<u64>) {
        self.state.send_replace(DownloadState::Running {
            temp: Arc::new(temp),
            written: 0,
            total,
        });
    }

    /// Chunks now in the file, each at its offset: kept in memory for close followers, then
    /// published (one wake-up for all of them).
    pub fn append(&self, chunks: Vec<(u64, Bytes)>) {
        let Some(end) = chunks.last().map(|(offset, c)| offset + c.len() as u64) else {
            return;
        };
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        for (offset, chunk) in chunks {
            recent.push(offset, chunk);
        }
        drop(recent);
        self.progress(end);
    }

    /// `written` bytes are now in the file.
    pub fn progress(&self, written: u64) {
        self.state.send_modify(|s| {
            if let DownloadState::Running { written: w, .. } = s {
                *w = written;
            }
        });
    }

    /// The blob is verified and in the store.
    pub fn done(self, len: u64) {
        self.finish(DownloadState::Done { len });
    }

    /// The download never started; waiters should ask upstream themselves.
    pub fn abandon(self) {
        self.finish(DownloadState::Abandoned);
    }

    /// The download broke.
    pub fn fail(self, why: &str) {
        self.finish(DownloadState::Failed(why.into()));
    }

    fn finish(&self, state: DownloadState) {
        // Followers read what is left from the file; the memory is no longer needed.
        *self.recent.lock().unwrap_or_else(|p| p.into_inner()) = Recent::default();
        self.state.send_replace(state);
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.digest);
        self.metrics.download_finished();
    }
}

impl Drop for DownloadHandle {
    fn drop(&mut self) {
        let unfinished = matches!(
            *self.state.borrow(),
            DownloadState::Connecting | DownloadState::Running { .. }
        );
        if unfinished {
            self.finish(DownloadState::Failed("download task ended unexpectedly".into()));
        }
    }
}

/// Either join a download in progress or become the one that starts it.
pub enum Joined {
    /// Someone else is fetching this blob.
    Existing(Arc<Download>),
    /// This caller fetches it and must drive the handle to an end.
    New(Arc<Download>, DownloadHandle),
}

/// The table of downloads in progress.
#[derive(Clone)]
pub struct Downloads {
    table: Arc<Mutex<HashMap<Digest, Arc<Download>>>>,
    metrics: Arc<Metrics>,
}

impl Downloads {
    /// An empty table, counting downloads in `metrics`.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            table: Arc::default(),
            metrics,
        }
    }

    /// Joins the download of `digest`, or registers a new one (in `Connecting`) for the caller;
    /// the blob is committed to `store`.
    pub fn join_or_start(&self, digest: &Digest, store: &Store) -> Joined {
        let mut table = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = table.get(digest) {
            return Joined::Existing(d.clone());
        }
        let (tx, rx) = watch::channel(DownloadState::Connecting);
        let recent = Arc::new(Mutex::new(Recent::default()));
        let download = Arc::new(Download {
            state: rx,
            store: store.clone(),
            digest: digest.clone(),
            recent: recent.clone(),
        });
        table.insert(digest.clone(), download.clone());
        self.metrics.download_started();
        let handle = DownloadHandle {
            state: tx,
            recent,
            digest: digest.clone(),
            table: self.table.clone(),
            metrics: self.metrics.clone(),
        };
        Joined::New(download, handle)
    }

    /// The download of `digest`, if one is in progress.
    pub fn get(&self, digest: &Digest) -> Option<Arc<Download>> {
        self.table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(digest)
            .cloned()
    }

    /// How many downloads are in progress.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.table.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Algorithm;
    use crate::store::LocalStore;
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;

    /// A local store in `dir`, a download table, and where the store keeps `digest`.
    fn setup(dir: &tempfile::TempDir, digest: &Digest) -> (Store, Downloads, PathBuf) {
        let root = dir.path().join("cache");
        let fin = LocalStore::new(root.clone()).content_path(digest);
        std::fs::create_dir_all(fin.parent().unwrap()).unwrap();
        (Store::local(root), Downloads::new(Arc::new(Metrics::new())), fin)
    }

    async fn collect(s: impl Stream<Item = io::Result<Bytes>>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut s = std::pin::pin!(s);
        while let Some(chunk) = s.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn readers_follow_a_growing_file_and_get_the_last_byte_after_verification() {
        let dir = tempfile::tempdir().unwrap();
        let temp = dir.path().join("t.partial");
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
        let digest = Digest::of(Algorithm::Sha256, &data);
        let (store, downloads, fin) = setup(&dir, &digest);
        let Joined::New(dl, handle) = downloads.join_or_start(&digest, &store) else {
            panic!()
        };
        assert!(matches!(downloads.join_or_start(&digest, &store), Joined::Existing(_)));

        let whole = tokio::spawn(collect(dl.read(0, None)));
        let tail = tokio::spawn(collect(dl.read(599_990, None)));
        let middle = tokio::spawn(collect(dl.read(10, Some(20))));

        let mut f = tokio::fs::File::create(&temp).await.unwrap();
        handle.running(temp.clone(), Some(data.len() as u64));
        for (i, chunk) in data.chunks(100_000).enumerate() {
            f.write_all(chunk).await.unwrap();
            f.flush().await.unwrap();
            handle.progress(((i + 1) * 100_000).min(data.len()) as u64);
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // All bytes are written but not verified: the tail reader must still be waiting.
        tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        assert!(!tail.is_finished(), "last byte must wait for verification");
        std::fs::rename(&temp, &fin).unwrap();
        handle.done(data.len() as u64);

        assert_eq!(whole.await.unwrap().unwrap(), data);
        assert_eq!(tail.await.unwrap().unwrap(), &data[599_990..]);
        assert_eq!(middle.await.unwrap().unwrap(), &data[10..20]);
        assert_eq!(downloads.in_flight(), 0);
        // A reader arriving after the rename reads the final file.
        assert_eq!(collect(dl.read(5, Some(9))).await.unwrap(), &data[5..9]);
    }

    #[tokio::test]
    async fn failure_aborts_readers_and_a_dropped_handle_counts_as_failure() {
        let dir = tempfile::tempdir().unwrap();
        let digest = Digest::of(Algorithm::Sha256, b"x");
        let (store, downloads, _) = setup(&dir, &digest);
        let Joined::New(dl, handle) = downloads.join_or_start(&digest, &store) else {
            panic!()
        };
        let reader = tokio::spawn(collect(dl.read(0, None)));
        handle.fail("upstream cut the connection");
        assert!(reader.await.unwrap().is_err());

        let Joined::New(dl, handle) = downloads.join_or_start(&digest, &store) else {
            panic!()
        };
        drop(handle);
        assert!(matches!(dl.state(), DownloadState::Failed(_)));
        assert_eq!(downloads.in_flight(), 0);
    }
}

#[cfg(test)]
mod follower_tests {
    use super::*;
    use crate::registry::Algorithm;
    use crate::store::LocalStore;
    use futures_util::StreamExt;
    use std::io::Write as _;

    /// A follower that is served from memory at first, falls behind the in-memory window and
    /// continues from the file must still get every byte in order.
    #[tokio::test]
    async fn followers_switching_between_memory_and_file_get_the_right_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let temp = dir.path().join("t.partial");
        let data: Vec<u8> = (0..12 * 1024 * 1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let digest = Digest::of(Algorithm::Sha256, &data);
        let root = dir.path().join("cache");
        let fin = LocalStore::new(root.clone()).content_path(&digest);
        std::fs::create_dir_all(fin.parent().unwrap()).unwrap();
        let (store, downloads) = (Store::local(root), Downloads::new(Arc::new(Metrics::new())));
        let Joined::New(dl, handle) = downloads.join_or_start(&digest, &store) else {
            panic!()
        };
        let mut file = std::fs::File::create(&temp).unwrap();
        handle.running(temp.clone(), Some(data.len() as u64));
        let batch = 512 * 1024;
        let mut offset = 0usize;
        let mut append = |n: usize, offset: &mut usize| {
            for _ in 0..n {
                let chunk = &data[*offset..*offset + batch];
                file.write_all(chunk).unwrap();
                handle.append(vec![(*offset as u64, Bytes::copy_from_slice(chunk))]);
                *offset += batch;
            }
        };
        // Start behind the in-memory window (file), catch up into it (memory), then fall
        // behind again (file).
        // The window then holds batches 2.. of the first ones written: two reads from the
        // file, two from memory.
        let first = RECENT_BYTES / batch + 2;
        append(first, &mut offset);
        let mut reader = std::pin::pin!(dl.read(0, None));
        let mut got = Vec::new();
        for _ in 0..4 {
            got.extend_from_slice(&reader.next().await.unwrap().unwrap());
        }
        append(data.len() / batch - first, &mut offset);
        assert_eq!(offset, data.len());
        handle.done(data.len() as u64);
        std::fs::rename(&temp, &fin).unwrap();
        while let Some(chunk) = reader.next().await {
            got.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes differ from what was written");
    }
}
