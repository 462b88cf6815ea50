//! An S3-compatible bucket as the store (AWS S3, MinIO, Ceph RGW, SeaweedFS), through the
//! `object_store` crate (SigV4, retries, multipart): one bucket shared by a fleet of replicas.
//!
//! Layout under the prefix: `blobs/<algorithm>/<hex>` (content, written only after the spool
//! was verified, so nothing unverified is ever visible under a digest key — a multipart
//! upload is invisible until completed), `index/<readable key start>+<hash>` (one small JSON
//! object per record, replaced whole by each write: a reader sees the old record or the new
//! one, never a mix), `used/<algorithm>/<hex>` (when a blob was last served, `s3_use.rs`),
//! `leases/…` (`s3_lease.rs`) and `purge-mark` (rewritten by every purge; running replicas
//! poll it).

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt as _, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt as _;

use crate::config::S3Config;
use crate::registry::Digest;
use crate::store::spool::file_stream;
use crate::store::tier::DiskTier;
use crate::store::{
    Access, BlobInfo, BlobReader, BlobStore, ByteStream, Committed, Listing, RequestCounter, StoreError, UploadFeed,
    UploadSource, VerifiedSpool,
};

/// Blobs up to this size are one PUT; larger ones a multipart upload of parts this size.
const PART: usize = 8 * 1024 * 1024;
/// Parts uploaded at once: memory for an upload stays under `PART * PARALLEL_PARTS`.
const PARALLEL_PARTS: usize = 4;
/// How often one replica renews a blob's use marker, at most: the resolution of "last used"
/// on the bucket (see `s3_use.rs`).
pub(super) const USE_MARK_EVERY: Duration = Duration::from_secs(3600);
/// How often a running server re-reads the purge mark.
const PURGE_POLL: Duration = Duration::from_secs(5);

/// A client for the bucket: `AWS_*` variables first (as every S3 tool reads them), then the
/// configured settings over them.
pub(super) fn client(options: &S3Config) -> Result<AmazonS3, StoreError> {
    // A bucket that does not answer must cost a pull little: it is then passed through
    // uncached. object_store's defaults retry for minutes.
    let retry = object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(5),
    };
    let client_options = object_store::ClientOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(120));
    let mut b = AmazonS3Builder::from_env()
        .with_retry(retry)
        .with_client_options(client_options)
        .with_bucket_name(&options.bucket)
        .with_region(options.region.as_deref().unwrap_or("us-east-1"))
        .with_virtual_hosted_style_request(!options.path_style)
        .with_allow_http(options.allow_http);
    if let Some(e) = &options.endpoint {
        b = b.with_endpoint(e);
    }
    if let Some(k) = &options.access_key_id {
        b = b.with_access_key_id(k);
    }
    if let Some(s) = &options.secret_access_key {
        b = b.with_secret_access_key(s);
    }
    b.build()
        .map_err(|e| StoreError::io(options.url(), io::Error::other(e)))
}

/// The bucket store: content and records.
#[derive(Debug)]
pub struct S3Store {
    pub(super) objects: AmazonS3,
    pub(super) options: S3Config,
    /// Local directory for spools (blobs being downloaded are written here first).
    spool_dir: PathBuf,
    /// The local disk tier, when it has a size.
    tier: Option<Arc<DiskTier>>,
    /// Counts requests to the bucket.
    pub(super) counter: Arc<dyn RequestCounter>,
    pub(super) prefix: ObjectPath,
    /// Changes when the purge mark object does (polled).
    pub(super) purge_seen: Arc<AtomicU64>,
    /// Blobs whose use marker this replica wrote lately (see `s3_use.rs`).
    pub(super) marked: moka::sync::Cache<Digest, ()>,
}

impl S3Store {
    /// A store on the bucket (no request is made yet); inside a runtime, a task polls the
    /// purge mark while the store lives.
    ///
    /// # Errors
    /// If the options do not make a client (a bad endpoint URL).
    pub fn new(
        options: S3Config,
        spool_dir: PathBuf,
        tier_dir: PathBuf,
        counter: Arc<dyn RequestCounter>,
    ) -> Result<Arc<Self>, StoreError> {
        let tier = options
            .local_cache_size
            .filter(|n| *n > 0)
            .map(|n| Arc::new(DiskTier::new(tier_dir, n)));
        let store = Arc::new(Self {
            tier,
            counter,
            objects: client(&options)?,
            prefix: ObjectPath::from(options.prefix.as_str()),
            options,
            spool_dir,
            purge_seen: Arc::new(AtomicU64::new(0)),
            marked: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(USE_MARK_EVERY)
                .build(),
        });
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(poll_purge_mark(Arc::downgrade(&store)));
        }
        Ok(store)
    }

    fn blob_path(&self, digest: &Digest) -> ObjectPath {
        self.digest_path("blobs", digest)
    }

    /// `<prefix>/<area>/<algorithm>/<hex>`: where content and its lease are kept.
    pub(super) fn digest_path(&self, area: &str, digest: &Digest) -> ObjectPath {
        self.prefix
            .clone()
            .join(area)
            .join(digest.algorithm().as_str())
            .join(digest.hex())
    }

    /// The objects under `<prefix>/<area>/<algorithm>/<hex>` by digest, and the keys there that
    /// name no digest.
    pub(super) async fn list_digests(
        &self,
        area: &str,
    ) -> Result<(Vec<(Digest, object_store::ObjectMeta)>, Vec<String>), StoreError> {
        let root = self.prefix.clone().join(area);
        let (mut found, mut stray) = (Vec::new(), Vec::new());
        self.counter.request("list", true);
        let mut objects = self.objects.list(Some(&root));
        while let Some(meta) = objects.next().await {
            let meta = self.counted("list", meta).map_err(|e| self.err(&root, e))?;
            let parts: Vec<_> = meta
                .location
                .prefix_match(&root)
                .map(|p| p.collect())
                .unwrap_or_default();
            let digest = match parts.as_slice() {
                [algo, hex] => format!("{}:{}", algo.as_ref(), hex.as_ref()).parse::<Digest>().ok(),
                _ => None,
            };
            match digest {
                Some(digest) => found.push((digest, meta)),
                None => stray.push(meta.location.to_string()),
            }
        }
        Ok((found, stray))
    }

    pub(super) fn purge_path(&self) -> ObjectPath {
        self.prefix.clone().join("purge-mark")
    }

    /// Counts a request's result (a missing object is an answer, not an error).
    pub(super) fn counted<T>(&self, op: &'static str, r: object_store::Result<T>) -> object_store::Result<T> {
        self.counter
            .request(op, r.as_ref().is_ok_and(|_| true) || r.as_ref().is_err_and(not_found));
        r
    }

    pub(super) fn err(&self, path: &ObjectPath, e: object_store::Error) -> StoreError {
        StoreError::io(format!("s3://{}/{path}", self.options.bucket), io::Error::other(e))
    }

    /// Uploads the spool file to `path`: one PUT, or a multipart upload of bounded parts.
    async fn upload(&self, path: &ObjectPath, spool: &VerifiedSpool) -> Result<(), StoreError> {
        let local = |e| StoreError::io(&spool.path, e);
        let mut file = tokio::fs::File::open(&spool.path).await.map_err(local)?;
        if spool.len <= PART as u64 {
            let mut buf = Vec::with_capacity(spool.len as usize);
            file.read_to_end(&mut buf).await.map_err(local)?;
            let put = self.objects.put(path, PutPayload::from(buf)).await;
            let put = self.counted("put", put);
            put.map_err(|e| self.err(path, e))?;
            return Ok(());
        }
        let upload = self
            .counted("multipart", self.objects.put_multipart(path).await)
            .map_err(|e| self.err(path, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        loop {
            let mut chunk = bytes::BytesMut::with_capacity(PART);
            while chunk.len() < PART {
                if file.read_buf(&mut chunk).await.map_err(local)? == 0 {
                    break;
                }
            }
            if chunk.is_empty() {
                break;
            }
            if let Err(e) = writer.wait_for_capacity(PARALLEL_PARTS).await {
                let _ = writer.abort().await;
                return Err(self.err(path, e));
            }
            writer.put(chunk.freeze());
        }
        let done = writer.finish().await;
        self.counted("multipart", done).map_err(|e| self.err(path, e))?;
        Ok(())
    }
}

/// What an upload task returns when the writer did not verify the blob (not a failure).
const ABORTED: &str = "aborted: not verified";

/// A multipart upload of what `source` feeds, completed only on a `true` verdict.
async fn stream_upload(objects: &AmazonS3, path: &ObjectPath, source: UploadSource) -> Result<(), String> {
    let UploadSource { mut chunks, verdict } = source;
    let upload = objects.put_multipart(path).await.map_err(|e| e.to_string())?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
    while let Some(chunk) = chunks.recv().await {
        if let Err(e) = writer.wait_for_capacity(PARALLEL_PARTS).await {
            let _ = writer.abort().await;
            return Err(e.to_string());
        }
        writer.put(chunk);
    }
    match verdict.await {
        Ok(true) => writer.finish().await.map(|_| ()).map_err(|e| e.to_string()),
        _ => {
            let _ = writer.abort().await;
            Err(ABORTED.into())
        }
    }
}

/// Keeps `purge_seen` in step with the purge mark object until the store is dropped.
async fn poll_purge_mark(store: Weak<S3Store>) {
    loop {
        let Some(s) = store.upgrade() else {
            return;
        };
        if let Ok(meta) = s.objects.head(&s.purge_path()).await {
            let tag = meta.e_tag.unwrap_or_else(|| meta.last_modified.to_rfc3339());
            s.purge_seen.store(fnv(tag.as_bytes()), Ordering::Relaxed);
        }
        drop(s);
        tokio::time::sleep(PURGE_POLL).await;
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// An object's `last_modified` (milliseconds since the epoch) as a `SystemTime`.
pub(super) fn system_time(unix_ms: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(unix_ms).unwrap_or(0))
}

pub(super) fn not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

#[async_trait::async_trait]
impl BlobStore for S3Store {
    fn spool_dir(&self) -> PathBuf {
        self.spool_dir.clone()
    }

    fn describe(&self) -> String {
        match &self.options.endpoint {
            Some(e) => format!("{} at {e}", self.options.url()),
            None => self.options.url(),
        }
    }

    fn location(&self, digest: &Digest) -> String {
        format!("s3://{}/{}", self.options.bucket, self.blob_path(digest))
    }

    fn start_upload(&self, digest: &Digest, len: u64) -> Option<UploadFeed> {
        if len <= PART as u64 {
            return None;
        }
        let (feed, source) = UploadFeed::channel();
        let (objects, path, counter) = (self.objects.clone(), self.blob_path(digest), self.counter.clone());
        let task = tokio::spawn(async move {
            let r = stream_upload(&objects, &path, source).await;
            counter.request("stream", r.as_ref().map_or_else(|e| e == ABORTED, |()| true));
            r
        });
        Some(feed.with_task(task))
    }

    async fn commit(&self, spool: VerifiedSpool) -> Result<Committed, StoreError> {
        let path = self.blob_path(&spool.digest);
        // Content-addressed: an object already there is this content (it was verified too).
        let new = match spool.uploaded {
            true => false,
            false => match self.counted("head", self.objects.head(&path).await) {
                Ok(meta) if meta.size == spool.len => false,
                Ok(_) => true,
                Err(e) if not_found(&e) => true,
                Err(e) => return Err(self.err(&path, e)),
            },
        };
        if new {
            self.upload(&path, &spool).await?;
        }
        // Readers that follow the download hold the spool file open: moving or removing its
        // name does not cut them short.
        match &self.tier {
            Some(tier) => tier.adopt(&spool.digest, &spool.path, spool.len).await,
            None => {
                let _ = tokio::fs::remove_file(&spool.path).await;
            }
        }
        Ok(Committed {
            len: spool.len,
            new: new || spool.uploaded,
        })
    }

    async fn stat(&self, digest: &Digest) -> Option<u64> {
        match self.counted("head", self.objects.head(&self.blob_path(digest)).await) {
            Ok(m) => Some(m.size),
            Err(e) if not_found(&e) => {
                if let Some(tier) = &self.tier {
                    tier.remove(digest).await;
                }
                None
            }
            // The bucket cannot say: what the tier holds is verified content, served on its own.
            Err(_) => self.tier.as_ref().and_then(|t| t.len_of(digest)),
        }
    }

    async fn open(
        &self,
        digest: &Digest,
        start: u64,
        len: Option<u64>,
        _access: Access,
    ) -> Result<Option<BlobReader>, StoreError> {
        if let Some((file, total)) = self.tier.as_ref().and_then(|t| t.open(digest)) {
            let len = len
                .unwrap_or_else(|| total.saturating_sub(start))
                .min(total.saturating_sub(start));
            return Ok(Some(BlobReader {
                total,
                stream: Box::pin(file_stream(file, start, len)),
            }));
        }
        let path = self.blob_path(digest);
        if len == Some(0) {
            // Nothing to read (an empty blob): only its length is wanted.
            return match self.counted("head", self.objects.head(&path).await) {
                Ok(m) => Ok(Some(BlobReader {
                    total: m.size,
                    stream: Box::pin(futures_util::stream::empty()),
                })),
                Err(e) if not_found(&e) => Ok(None),
                Err(e) => Err(self.err(&path, e)),
            };
        }
        // One ranged GET: its answer names the object's whole length (Content-Range).
        let range = match len {
            Some(l) => GetRange::Bounded(start..start.saturating_add(l)),
            None => GetRange::Offset(start),
        };
        let options = GetOptions {
            range: Some(range),
            ..GetOptions::default()
        };
        let got = match self.counted("get", self.objects.get_opts(&path, options).await) {
            Ok(g) => g,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(self.err(&path, e)),
        };
        let total = got.meta.size;
        let stream = got.into_stream().map_err(io::Error::other);
        let whole = start == 0 && len.is_none_or(|l| l >= total);
        let stream: ByteStream = match &self.tier {
            Some(tier) if whole => {
                // A whole read: the tier keeps a copy of the bytes as they go to the client
                // (verified there; a client that leaves early, or a tier that falls behind,
                // leaves it incomplete, and so not kept).
                let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(crate::store::upload::FEED_QUEUE);
                let copy =
                    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (Ok(b), rx)) });
                tokio::spawn({
                    let (tier, digest) = (tier.clone(), digest.clone());
                    async move { tier.fill(digest, total, copy).await }
                });
                Box::pin(sync_wrapper::SyncStream::new(stream.inspect_ok(move |chunk| {
                    let _ = tx.try_send(chunk.clone());
                })))
            }
            _ => Box::pin(sync_wrapper::SyncStream::new(stream)),
        };
        Ok(Some(BlobReader { total, stream }))
    }

    async fn read(&self, digest: &Digest, limit: u64, _access: Access) -> Result<Option<Bytes>, StoreError> {
        let path = self.blob_path(digest);
        let got = match self.counted("get", self.objects.get(&path).await) {
            Ok(g) => g,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(self.err(&path, e)),
        };
        if got.meta.size > limit {
            return Err(StoreError::io(
                self.location(digest),
                io::Error::other(format!("{} bytes, over the {limit}-byte limit", got.meta.size)),
            ));
        }
        got.bytes().await.map(Some).map_err(|e| self.err(&path, e))
    }

    async fn delete(&self, digest: &Digest, if_unchanged: Option<&BlobInfo>) -> Result<bool, StoreError> {
        let path = self.blob_path(digest);
        match self.counted("head", self.objects.head(&path).await) {
            Ok(meta) => {
                if let Some(expected) = if_unchanged
                    && (meta.size != expected.len
                        || system_time(meta.last_modified.timestamp_millis()) != expected.modified)
                {
                    return Ok(false);
                }
            }
            Err(e) if not_found(&e) => return Ok(false),
            Err(e) => return Err(self.err(&path, e)),
        }
        if let Some(tier) = &self.tier {
            tier.remove(digest).await;
        }
        let deleted = self.counted("delete", self.objects.delete(&path).await);
        self.forget_use(digest).await;
        match deleted {
            Ok(()) => Ok(true),
            Err(e) if not_found(&e) => Ok(false),
            Err(e) => Err(self.err(&path, e)),
        }
    }

    async fn list(&self) -> Result<Listing, StoreError> {
        let (found, stray) = self.list_digests("blobs").await?;
        let mut listing = Listing {
            blobs: found
                .into_iter()
                .map(|(digest, meta)| BlobInfo {
                    digest,
                    len: meta.size,
                    last_used: system_time(meta.last_modified.timestamp_millis()),
                    modified: system_time(meta.last_modified.timestamp_millis()),
                })
                .collect(),
            stray,
        };
        match self.last_uses().await {
            Ok(uses) => {
                for blob in &mut listing.blobs {
                    if let Some(used) = uses.get(&blob.digest) {
                        blob.last_used = blob.last_used.max(*used);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list the bucket's use markers; last use is write time"),
        }
        Ok(listing)
    }

    async fn touch(&self, digests: Vec<Digest>) {
        self.mark_used(digests).await;
    }

    async fn free_space(&self) -> Option<u64> {
        None
    }

    async fn probe(&self) -> Result<(), StoreError> {
        // A write, a read and a delete of this replica's own object: what a pull needs.
        let path = self
            .prefix
            .clone()
            .join("health")
            .join(format!("{}-{}", crate::os::hostname(), std::process::id()));
        let stamp = Bytes::from(format!("regcache health check {}\n", crate::clock::now_ms()));
        self.counted("put", self.objects.put(&path, stamp.clone().into()).await)
            .map_err(|e| self.err(&path, e))?;
        let read = match self.counted("get", self.objects.get(&path).await) {
            Ok(r) => r.bytes().await.map_err(|e| self.err(&path, e))?,
            Err(e) => return Err(self.err(&path, e)),
        };
        if read != stamp {
            return Err(StoreError::io(
                format!("s3://{}/{path}", self.options.bucket),
                io::Error::other("read back other bytes than were written"),
            ));
        }
        self.counted("delete", self.objects.delete(&path).await)
            .map_err(|e| self.err(&path, e))?;
        Ok(())
    }

    async fn claim(&self, digest: &Digest) -> Result<crate::store::Claim, StoreError> {
        self.claim_blob(digest).await
    }

    async fn claim_eviction(&self) -> Option<crate::store::Lease> {
        self.claim_eviction_pass().await
    }
}
