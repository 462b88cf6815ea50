//! The task that fetches one blob into the store: it runs on its own from the first byte, so
//! the download completes (and is cached) even if the client that started it goes away, and
//! reports how it began to that client; every client reads the bytes through the download's
//! followers ([`super::downloads`]).

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::cache::StoreHealth;
use crate::cache::downloads::DownloadHandle;
use crate::cache::eviction::Evictor;
use crate::error::ProxyError;
use crate::registry::Digest;
use crate::registry::headers;
use crate::store::{BlobWriter, Claim, Lease, Store};
use crate::telemetry::{BodyKind, LeaseOutcome, Metrics};
use crate::upstream::Requester;

/// How a blob download began, told to the request that started it.
pub(super) enum Started {
    /// Upstream answered 200; bytes are flowing into the download.
    Streaming,
    /// Another replica on the same store downloaded it: it is in the store now.
    Committed,
    /// The store cannot be written: fetch for yourself.
    StoreUnavailable,
    /// Upstream answered something else (401, 404, …): pass it on.
    Refused(Response<Incoming>),
    /// Upstream could not be reached.
    Failed(ProxyError),
}

/// Everything the download task needs.
pub(super) struct DownloadJob {
    pub(super) evictor: Arc<Evictor>,
    pub(super) upstream: Requester,
    pub(super) store: Store,
    pub(super) metrics: Arc<Metrics>,
    pub(super) health: Arc<StoreHealth>,
    pub(super) url: Uri,
    pub(super) headers: HeaderMap,
    pub(super) handle: DownloadHandle,
    pub(super) idle: Duration,
    pub(super) digest: Digest,
    pub(super) reply: tokio::sync::oneshot::Sender<Started>,
}

/// Fetches a blob into the store, reporting to the request that started it how it began.
pub(super) async fn download_blob(job: DownloadJob) {
    let DownloadJob {
        evictor,
        upstream,
        store,
        metrics,
        health,
        url,
        headers,
        handle,
        idle,
        digest,
        reply,
    } = job;
    // Fleet-wide single flight: one replica sharing the store downloads, the others wait for
    // its commit (a store of one process always grants the claim).
    let (lease, outcome) = match store.blobs().claim(&digest).await {
        Ok(Claim::Won(lease)) => (lease, LeaseOutcome::Won),
        Ok(Claim::TakenOver(lease)) => (lease, LeaseOutcome::TakenOver),
        Ok(Claim::Held { holder, expires }) => match wait_for_holder(&store, &digest, &holder, expires).await {
            Waited::Committed(len) => {
                metrics.store.lease(LeaseOutcome::Followed);
                handle.done(len);
                let _ = reply.send(Started::Committed);
                return;
            }
            Waited::Claimed(claim) => claim,
        },
        Err(e) => {
            tracing::warn!(%digest, error = %e, "no fleet download lease; downloading anyway");
            (Lease::none(), LeaseOutcome::Won)
        }
    };
    if lease.is_shared() {
        // Another replica may have committed it and released its claim since our miss.
        if let Some(len) = store.blobs().stat(&digest).await {
            metrics.store.lease(LeaseOutcome::Followed);
            handle.done(len);
            let _ = reply.send(Started::Committed);
            return;
        }
        metrics.store.lease(outcome);
    }
    // Given back when this task ends (committed or not); dropped early, a task gives it back.
    let mut writer = match store.create_blob(&digest, None).await {
        Ok(w) => w,
        Err(e) => {
            health.failed(&e);
            handle.abandon();
            let _ = reply.send(Started::StoreUnavailable);
            return;
        }
    };
    let res = match upstream.send(Method::GET, url, headers).await {
        Ok(res) => res,
        Err(e) => {
            writer.discard().await;
            handle.abandon();
            let _ = reply.send(Started::Failed(e));
            return;
        }
    };
    if res.status() != StatusCode::OK {
        writer.discard().await;
        handle.abandon();
        let _ = reply.send(Started::Refused(res));
        return;
    }
    let total = headers::content_length(res.headers());
    let in_flight = evictor.download_started(total);
    writer.expect_len(total);
    handle.running(writer.spool_path().to_path_buf(), total);
    let _ = reply.send(Started::Streaming);
    run_download(handle, writer, res.into_body(), idle, digest, &metrics).await;
    lease.release().await;
    drop(in_flight);
    evictor.added();
}

/// How waiting for another replica's download ended.
enum Waited {
    /// The blob is in the store, this long.
    Committed(u64),
    /// The holder gave up or died: this process holds the claim now (won, or taken over).
    Claimed((Lease, LeaseOutcome)),
}

/// How often a waiting replica looks for the committed blob, and re-reads the claim.
const COMMIT_POLL: Duration = Duration::from_millis(200);
const CLAIM_POLL: Duration = Duration::from_secs(1);

/// Waits until the blob another replica (`holder`) is downloading is committed, or until its
/// claim is released or lapses (then this process claims it, and downloads).
async fn wait_for_holder(store: &Store, digest: &Digest, holder: &str, expires: std::time::SystemTime) -> Waited {
    let lapses_in_s = expires
        .duration_since(std::time::SystemTime::now())
        .map_or(0, |d| d.as_secs());
    tracing::info!(%digest, holder, lapses_in_s, "another replica is downloading this blob; waiting for it");
    let mut last_claim = tokio::time::Instant::now();
    loop {
        if let Some(len) = store.blobs().stat(digest).await {
            return Waited::Committed(len);
        }
        tokio::time::sleep(COMMIT_POLL).await;
        if last_claim.elapsed() < CLAIM_POLL {
            continue;
        }
        last_claim = tokio::time::Instant::now();
        match store.blobs().claim(digest).await {
            Ok(Claim::Won(lease)) => return Waited::Claimed((lease, LeaseOutcome::Won)),
            Ok(Claim::TakenOver(lease)) => return Waited::Claimed((lease, LeaseOutcome::TakenOver)),
            Ok(Claim::Held { .. }) => {}
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot read the fleet download lease; downloading");
                return Waited::Claimed((Lease::none(), LeaseOutcome::Won));
            }
        }
    }
}

/// Streams the upstream body into the store, publishing progress to readers.
async fn run_download(
    handle: DownloadHandle,
    mut writer: BlobWriter,
    mut body: Incoming,
    idle: Duration,
    digest: Digest,
    metrics: &Metrics,
) {
    loop {
        // `None` once upstream has sent everything: then whatever is gathered is written out.
        let data = match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => {
                tracing::warn!(%digest, "upstream stalled mid-blob; discarding");
                writer.discard().await;
                return handle.fail("upstream stalled");
            }
            Ok(None) => None,
            Ok(Some(Err(e))) => {
                tracing::warn!(%digest, error = %e, "upstream broke off mid-blob; discarding");
                writer.discard().await;
                return handle.fail("upstream closed the connection mid-blob");
            }
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    metrics.upstream_bytes(BodyKind::Blob, data.len() as u64);
                    Some(data)
                }
                Err(_) => continue,
            },
        };
        let at_end = data.is_none();
        let written = match data {
            Some(data) => writer.write(data).await,
            None => writer.flush().await,
        };
        match written {
            Ok(chunks) => handle.append(chunks),
            Err(e) => {
                tracing::error!(%digest, error = %e, "cache write failed mid-blob; discarding");
                writer.discard().await;
                return handle.fail("cache write failed");
            }
        }
        if at_end {
            break;
        }
    }
    match writer.commit().await {
        Ok(stored) => {
            tracing::debug!(%digest, bytes = stored.len, "blob cached");
            if stored.new {
                metrics.content_stored(stored.len);
            }
            handle.done(stored.len);
        }
        Err(e) => {
            tracing::warn!(%digest, error = %e, "blob from upstream rejected; not cached");
            handle.fail(&e.to_string());
        }
    }
}
