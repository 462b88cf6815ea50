//! Content-addressed storage: blobs and manifest bytes by digest ([`BlobStore`]), small keyed
//! records beside them ([`EntryIndex`]), and the spool every blob is written through
//! ([`BlobWriter`]). Two backends sit behind the same two traits: the local disk (a cacache
//! directory, [`LocalStore`]) and an S3-compatible bucket shared by replicas ([`S3Store`]).
//!
//! Owns: where bytes live, how they are written so that nothing unverified is ever visible
//! under a digest (spooled, hashed while they stream, committed only when length and digest
//! match), reads with `Range`, listing, deletion, usage, last-use order, and the purge mark
//! other processes use to tell a running server that records went away.
//!
//! Must not: know what a record means (tags, manifests and repository records are the cache's
//! keys, see `cache::records`), talk to upstream, or count metrics (callers count what they
//! stored, from [`Committed`]). cacache and object_store appear only in this folder.
//!
//! May import: `registry` (digests), `config` (the bucket's settings), `clock`, `os`.

mod local;
mod s3;
mod s3_index;
mod s3_lease;
mod s3_use;
mod spool;
mod tier;
mod upload;

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::Stream;

use crate::registry::Digest;

pub use local::LocalStore;
pub use s3::S3Store;
pub use spool::{BlobWriter, READ_CHUNK, SpoolFiles, read_at};
pub use upload::{UploadFeed, UploadSource};

/// Store failures. None of them fails a pull: callers fall back to passing through.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The filesystem (or the backend) refused: disk full, permissions, I/O error.
    #[error("{path}: {source}")]
    Io {
        /// The file, directory or object.
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
    /// An index operation failed.
    #[error("cache index: {0}")]
    Index(String),
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// Whether a read is a use of the content, which moves it back in the eviction order. Reads
/// for `cache ls`, `verify` or `export` inspect the store and must not make it look used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A client is served from it.
    Use,
    /// An administrative read.
    Inspect,
}

/// A stored blob, as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// Its digest.
    pub digest: Digest,
    /// Its length.
    pub len: u64,
    /// When it was last used (read for a client, or written), as far as the store knows.
    pub last_used: SystemTime,
    /// When it was last written: a conditional delete removes it only if this is unchanged.
    pub modified: SystemTime,
}

/// Everything in a [`BlobStore`], read at one moment.
#[derive(Debug, Default)]
pub struct Listing {
    /// The blobs.
    pub blobs: Vec<BlobInfo>,
    /// Things in the content area that are not named by a digest (left alone, reported).
    pub stray: Vec<String>,
}

/// A stream of bytes read from the store (`Sync`, as response bodies must be).
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send + Sync>>;

/// Bytes `start..start + len` of a blob, opened: removing the blob from now on does not cut
/// the read short.
pub struct BlobReader {
    /// The blob's whole length.
    pub total: u64,
    /// The bytes asked for, in chunks of at most [`READ_CHUNK`].
    pub stream: ByteStream,
}

impl fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlobReader")
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

/// A blob the store now holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// Its length.
    pub len: u64,
    /// Whether it is new content (not already stored under this digest).
    pub new: bool,
}

/// A spooled blob whose length and digest were checked: the only thing a backend commits.
#[derive(Debug)]
pub struct VerifiedSpool {
    /// Its digest (the bytes hash to it).
    pub digest: Digest,
    /// The spool file.
    pub path: PathBuf,
    /// The spool file, still open (for the background `fsync`).
    pub file: std::fs::File,
    /// Its length.
    pub len: u64,
    /// The backend already holds it: it was uploaded while it downloaded (see
    /// [`BlobStore::start_upload`]) and completed once verified.
    pub uploaded: bool,
}

impl VerifiedSpool {
    /// Removes the spool file (the blob is committed by another process, or not wanted).
    pub async fn discard(self) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}

/// Content by digest. Implementations are shared by every request (`Arc<dyn BlobStore>`).
#[async_trait::async_trait]
pub trait BlobStore: Send + Sync + fmt::Debug + 'static {
    /// A local directory where blobs being written are spooled before they are committed
    /// (readers of a download in progress follow the spool file). Every backend has one.
    fn spool_dir(&self) -> PathBuf;

    /// Where the store is, for people: a directory, a bucket URL.
    fn describe(&self) -> String;

    /// Where the blob `digest` is or would be, for people (a file path, an object URL).
    fn location(&self, digest: &Digest) -> String;

    /// Starts handing the backend the bytes of a blob of `len` bytes while they arrive (a
    /// multipart upload), for backends where a commit would otherwise transfer it again.
    /// `None`: the spool is committed whole, as usual.
    fn start_upload(&self, _digest: &Digest, _len: u64) -> Option<UploadFeed> {
        None
    }

    /// Makes a verified spool the stored blob (put-verified). Called only by
    /// [`BlobWriter::commit`], after length and digest matched.
    ///
    /// # Errors
    /// If the backend cannot take it; the spool is then removed by the caller.
    async fn commit(&self, spool: VerifiedSpool) -> Result<Committed, StoreError>;

    /// The blob's length, if it is stored.
    async fn stat(&self, digest: &Digest) -> Option<u64>;

    /// Opens bytes `start..start + len` (`len` `None`: to the end) of the blob, or `Ok(None)`
    /// if it is not stored (or went away meanwhile).
    ///
    /// # Errors
    /// If it is stored but cannot be read.
    async fn open(
        &self,
        digest: &Digest,
        start: u64,
        len: Option<u64>,
        access: Access,
    ) -> Result<Option<BlobReader>, StoreError>;

    /// Reads a small blob (a manifest) whole, refusing one over `limit` bytes. Not verified
    /// here: a caller that serves it checks the digest (manifests are cheap to hash).
    ///
    /// # Errors
    /// If it is stored but cannot be read, or is over `limit`.
    async fn read(&self, digest: &Digest, limit: u64, access: Access) -> Result<Option<Bytes>, StoreError>;

    /// Removes the blob; with `if_unchanged`, only if its length and modification time are
    /// still those (a blob replaced meanwhile is left alone). Whether it was removed.
    ///
    /// # Errors
    /// If it exists and cannot be removed.
    async fn delete(&self, digest: &Digest, if_unchanged: Option<&BlobInfo>) -> Result<bool, StoreError>;

    /// Every blob. Walks the whole store: for eviction passes and administrative commands.
    ///
    /// # Errors
    /// If the store cannot be read at all.
    async fn list(&self) -> Result<Listing, StoreError>;

    /// Notes that these blobs were just used, for the eviction order (batched by the caller).
    async fn touch(&self, digests: Vec<Digest>);

    /// Room left for the store, where it is bounded by a filesystem; `None` when unknown.
    async fn free_space(&self) -> Option<u64>;

    /// Claims the right to download `digest` for every process sharing this store (fleet-wide
    /// single flight). A store only one process uses has nothing to claim: always won.
    ///
    /// # Errors
    /// If the claim cannot be made or read (callers then download as if they had won).
    async fn claim(&self, _digest: &Digest) -> Result<Claim, StoreError> {
        Ok(Claim::Won(Lease::none()))
    }

    /// The turn to run an eviction pass, for one process at a time among those sharing the
    /// store (`None`: another one is at it). Always given for a store one process uses.
    async fn claim_eviction(&self) -> Option<Lease> {
        Some(Lease::none())
    }

    /// Whether the store works (for `/healthz`): a write, a read and a delete of a small
    /// object of this process's own.
    ///
    /// # Errors
    /// Why it does not.
    async fn probe(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Blobs stored and their total size. By default, from [`BlobStore::list`].
    ///
    /// # Errors
    /// As [`BlobStore::list`].
    async fn usage(&self) -> Result<(u64, u64), StoreError> {
        let listing = self.list().await?;
        Ok((listing.blobs.len() as u64, listing.blobs.iter().map(|b| b.len).sum()))
    }
}

/// Counts a shared store's requests by operation and result; the store is handed one by
/// whoever keeps the metrics (it never sees them itself).
pub trait RequestCounter: Send + Sync + fmt::Debug {
    /// One request of `op` (`head`, `get`, `put`, `delete`, `list`, `multipart`); `ok` unless
    /// it failed (a missing object is an answer).
    fn request(&self, op: &'static str, ok: bool);
}

/// Counts nothing (one-shot commands).
#[derive(Debug)]
pub struct NoCount;

impl RequestCounter for NoCount {
    fn request(&self, _op: &'static str, _ok: bool) {}
}

/// The outcome of [`BlobStore::claim`].
#[derive(Debug)]
pub enum Claim {
    /// This process downloads it; keep the lease until the blob is committed or given up.
    Won(Lease),
    /// This process took over the claim of one that stopped renewing it (it died mid-blob).
    TakenOver(Lease),
    /// Another process is downloading it.
    Held {
        /// Who holds it (`host:pid`), for logs.
        holder: String,
        /// When its claim lapses unless renewed.
        expires: SystemTime,
        /// Where it serves the blob while downloading it (its `--peer-advertise` URL).
        peer: Option<String>,
    },
}

/// Gives a claim back.
type Release = Box<dyn FnOnce() -> Pin<Box<dyn std::future::Future<Output = ()> + Send>> + Send + Sync>;

/// A held claim: renewed in the background while it lives, given back by
/// [`Lease::release`] (or, when dropped, by a task of the runtime).
pub struct Lease {
    release: Option<Release>,
}

impl Lease {
    /// A claim with nothing behind it (a store one process uses).
    pub fn none() -> Self {
        Self { release: None }
    }

    /// Whether it stands for a claim other processes see (not [`Lease::none`]).
    pub fn is_shared(&self) -> bool {
        self.release.is_some()
    }

    /// A claim that the future `release` makes gives back.
    pub fn new<F>(release: impl FnOnce() -> F + Send + Sync + 'static) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        Self {
            release: Some(Box::new(move || Box::pin(release()))),
        }
    }

    /// Gives the claim back now (a one-shot command must, before its runtime ends).
    pub async fn release(mut self) {
        if let Some(release) = self.release.take() {
            release().await;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(release) = self.release.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(release());
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease").field("held", &self.release.is_some()).finish()
    }
}

/// A small keyed record next to the content: what the cache knows about tags, manifests and
/// repositories. The key and metadata are the cache's; the store only keeps them.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The content it is about, if any.
    pub digest: Option<Digest>,
    /// A size the writer gave (a manifest's length).
    pub size: u64,
    /// The record itself (JSON).
    pub metadata: serde_json::Value,
    /// Unix milliseconds when it was written.
    pub written_ms: u64,
}

/// Keyed records. Writes replace the record under a key; every process using the same store
/// sees them.
#[async_trait::async_trait]
pub trait EntryIndex: Send + Sync + fmt::Debug + 'static {
    /// The record under `key`.
    async fn get(&self, key: &str) -> Option<Entry>;

    /// Writes a record under `key`, replacing any earlier one.
    ///
    /// # Errors
    /// If it cannot be written.
    async fn put(
        &self,
        key: &str,
        digest: Option<&Digest>,
        size: u64,
        metadata: serde_json::Value,
    ) -> Result<(), StoreError>;

    /// Removes the record under `key` (nothing if there is none).
    ///
    /// # Errors
    /// If it cannot be removed.
    async fn remove(&self, key: &str) -> Result<(), StoreError>;

    /// Every record whose key starts with `prefix` (all of them for `""`).
    ///
    /// # Errors
    /// If the index cannot be read at all.
    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError>;

    /// Bytes the index takes.
    async fn footprint(&self) -> u64;

    /// Tells other processes using this store (a running server) that records were purged
    /// (`what`, for a log line), so that they drop copies they keep in memory.
    ///
    /// # Errors
    /// One line saying what the failure means for a running server (the purge itself is done).
    fn announce_purge(&self, what: &str) -> Result<(), String>;

    /// A value that changes whenever a purge is announced (cheap: a `stat` for the local
    /// store), compared by a running server now and then.
    fn purge_mark(&self) -> u64;
}

/// A store: content and records, as one cheap handle.
#[derive(Debug, Clone)]
pub struct Store {
    blobs: Arc<dyn BlobStore>,
    index: Arc<dyn EntryIndex>,
}

impl Store {
    /// The local disk store in the cacache directory `root` (created on first write).
    pub fn local(root: PathBuf) -> Self {
        let local = Arc::new(LocalStore::new(root));
        Self {
            blobs: local.clone(),
            index: local,
        }
    }

    /// The S3-compatible bucket store (no request made yet), with its local disk tier in
    /// `tier_dir` when the options give it a size.
    ///
    /// # Errors
    /// If the options do not make a client.
    pub fn s3(
        options: crate::config::S3Config,
        spool_dir: PathBuf,
        tier_dir: PathBuf,
        counter: Arc<dyn RequestCounter>,
    ) -> Result<Self, StoreError> {
        let s3 = S3Store::new(options, spool_dir, tier_dir, counter)?;
        Ok(Self {
            blobs: s3.clone(),
            index: s3,
        })
    }

    /// Content by digest.
    pub fn blobs(&self) -> &dyn BlobStore {
        &*self.blobs
    }

    /// Keyed records.
    pub fn index(&self) -> &dyn EntryIndex {
        &*self.index
    }

    /// Starts writing a blob that must turn out to be `digest` (and `expected_len`, if known).
    ///
    /// # Errors
    /// If the spool file cannot be created.
    pub async fn create_blob(&self, digest: &Digest, expected_len: Option<u64>) -> Result<BlobWriter, StoreError> {
        BlobWriter::create(self.blobs.clone(), digest, expected_len).await
    }

    /// Stores bytes held in memory (a manifest), which must hash to `digest`.
    ///
    /// # Errors
    /// On a digest mismatch or an I/O failure.
    pub async fn put_bytes(&self, digest: &Digest, bytes: &Bytes) -> Result<Committed, StoreError> {
        let mut writer = self.create_blob(digest, Some(bytes.len() as u64)).await?;
        writer.write(bytes.clone()).await?;
        writer.commit().await
    }

    /// Commits a spool [`BlobWriter::verify`] checked.
    ///
    /// # Errors
    /// If the backend cannot take it (the spool is then removed).
    pub async fn commit_verified(&self, spool: VerifiedSpool) -> Result<Committed, StoreError> {
        let path = spool.path.clone();
        let result = self.blobs.commit(spool).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&path).await;
        }
        result
    }

    /// The spool directory's leftovers: files, and what they hold.
    pub fn spool_files(&self) -> SpoolFiles {
        SpoolFiles::new(self.blobs.spool_dir())
    }
}

/// A path for people, as `Display` would show it.
pub(crate) fn shown(path: &Path) -> String {
    path.display().to_string()
}
