//! Replicas of a fleet streaming a blob in flight to each other (`--peer-advertise`,
//! `--peer-secret-file`).
//!
//! The serving side is [`RegistryCache::serve_peer`] (in `blobs.rs`). Here: a replica that lost the race for a blob's lease copies the blob from the winner
//! into a spool of its own, hashes it like any download, and serves its clients from that
//! copy, so their first byte comes as soon as the winner's clients' does. The copy is not
//! committed while the winner holds the lease (the bucket gets each blob once): once it is
//! verified, the winner's commit is waited for. If the winner dies mid-blob, the copy goes on
//! from the byte it had: from the store if the blob was committed meanwhile, from the replica
//! that holds the lease now, or from upstream (`Range: bytes=N-`) once this one takes the lease
//! over — and then this one commits it.

use std::time::Duration;

use futures_util::StreamExt as _;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use tokio::time::Instant;

use crate::cache::transfer::{Broke, ByteSource, DownloadJob, Source, Started, feed, store_unavailable};
use crate::registry::Digest;
use crate::store::{Access, Claim, Lease, Store, VerifiedSpool};
use crate::telemetry::{LeaseOutcome, Metrics};
use crate::upstream::{PeerBody, PeerClient, Requester, content_range};

/// How often a copy whose source broke off looks again for where to go on from (the store,
/// the lease), and how long it keeps looking.
const RESUME_POLL: Duration = Duration::from_secs(1);
const RESUME_WITHIN: Duration = Duration::from_secs(300);
/// How often a verified copy looks for the winner's commit, and how long it waits before it
/// commits its own copy (a winner that holds the lease but never commits).
const COMMIT_POLL: Duration = Duration::from_millis(200);
const COMMIT_WITHIN: Duration = Duration::from_secs(300);

/// Copies the blob of `job` from the replica `holder` that is downloading it (`from_peer`, its
/// answer), verifies the copy, and waits for that replica's commit (see the module's notes).
pub(super) async fn copy_from_peer(job: DownloadJob, peers: PeerClient, from_peer: PeerBody, holder: &str) {
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
        ..
    } = job;
    let mut writer = match store.create_blob(&digest, None).await {
        Ok(w) => w,
        Err(e) => return store_unavailable(&e, &health, handle, reply),
    };
    writer.copy_only();
    writer.expect_len(from_peer.total);
    let in_flight = evictor.download_started(from_peer.total);
    handle.running(writer.spool_path().to_path_buf(), from_peer.total);
    let _ = reply.send(Started::Copying);
    metrics.store.lease(LeaseOutcome::Streamed);
    tracing::info!(%digest, holder, "streaming the blob from the replica downloading it");
    let mut source = Source::Fleet.bytes(from_peer.body, from_peer.skip, &metrics);
    let mut lease = None;
    let origin = Origin {
        store: &store,
        peers: &peers,
        upstream: &upstream,
        url: &url,
        headers: &headers,
        digest: &digest,
        metrics: &metrics,
    };
    loop {
        match feed(&handle, &mut writer, source, idle, &digest).await {
            Ok(()) => break,
            Err(Broke::Write) => {
                writer.discard().await;
                return handle.fail(Broke::Write.why());
            }
            Err(_) => {}
        }
        let at = writer.received();
        tracing::warn!(%digest, at, "the blob's source broke off; going on from where it stopped");
        match origin.resume(at).await {
            Ok((next, taken)) => {
                source = next;
                lease = taken.or(lease);
            }
            Err(why) => {
                tracing::warn!(%digest, at, why, "cannot go on with the blob");
                writer.discard().await;
                return handle.fail(&why);
            }
        }
    }
    match writer.verify().await {
        Ok(spool) => match settle(&store, spool, lease, &digest, &metrics).await {
            Ok(len) => handle.done(len),
            Err(why) => handle.fail(&why),
        },
        Err(e) => {
            tracing::warn!(%digest, error = %e, "the blob copied from another replica does not verify");
            handle.fail(&e.to_string());
        }
    }
    drop(in_flight);
    evictor.added();
}

/// Where the rest of a blob can come from.
struct Origin<'a> {
    store: &'a Store,
    peers: &'a PeerClient,
    upstream: &'a Requester,
    url: &'a Uri,
    headers: &'a HeaderMap,
    digest: &'a Digest,
    metrics: &'a std::sync::Arc<Metrics>,
}

impl Origin<'_> {
    /// The blob from byte `at` on: from the store if it was committed meanwhile, from the
    /// replica holding its lease now, or from upstream once this replica holds the lease
    /// (returned: this replica then commits the blob).
    async fn resume(&self, at: u64) -> Result<(ByteSource, Option<Lease>), String> {
        let deadline = Instant::now() + RESUME_WITHIN;
        while Instant::now() < deadline {
            if self.store.blobs().stat(self.digest).await.is_some()
                && let Ok(Some(reader)) = self.store.blobs().open(self.digest, at, None, Access::Use).await
            {
                return Ok((Box::pin(reader.stream.map(|r| r.map_err(|e| e.to_string()))), None));
            }
            match self.store.blobs().claim(self.digest).await {
                Ok(Claim::Won(lease) | Claim::TakenOver(lease)) => {
                    self.metrics.store.lease(LeaseOutcome::TakenOver);
                    return Ok((self.rest_from_upstream(at).await?, Some(lease)));
                }
                Ok(Claim::Held { peer: Some(peer), .. }) if !self.peers.is_self(&peer) => {
                    match self.peers.open(&peer, self.digest, at).await {
                        Ok(b) => return Ok((Source::Fleet.bytes(b.body, b.skip, self.metrics), None)),
                        Err(why) => {
                            tracing::debug!(digest = %self.digest, why, "the lease's holder cannot be streamed from")
                        }
                    }
                }
                Ok(Claim::Held { .. }) => {}
                Err(e) => return Err(format!("cannot read the fleet download lease: {e}")),
            }
            tokio::time::sleep(RESUME_POLL).await;
        }
        Err(format!(
            "no source for the rest of the blob within {}s",
            RESUME_WITHIN.as_secs()
        ))
    }

    /// The blob from upstream from byte `at` on (a registry that ignores `Range` sends it
    /// whole: the first `at` bytes are dropped).
    async fn rest_from_upstream(&self, at: u64) -> Result<ByteSource, String> {
        let mut headers = self.headers.clone();
        let range = HeaderValue::from_str(&format!("bytes={at}-")).map_err(|e| e.to_string())?;
        headers.insert(header::RANGE, range);
        let res = self
            .upstream
            .send(Method::GET, self.url.clone(), headers)
            .await
            .map_err(|e| e.to_string())?;
        let skip = match res.status() {
            StatusCode::PARTIAL_CONTENT if content_range(res.headers()).map(|(start, _)| start) == Some(at) => 0,
            StatusCode::OK => at,
            status => return Err(format!("upstream answered {status} for the rest of the blob")),
        };
        Ok(Source::Upstream.bytes(res.into_body(), skip, self.metrics))
    }
}

/// Ends a verified copy: the replica holding the lease commits the blob (waited for); this one
/// commits its copy if it holds the lease itself, if the holder let it go without committing,
/// or if the holder has not committed within [`COMMIT_WITHIN`] (the same verified content
/// under its digest, so no harm). The blob's length.
async fn settle(
    store: &Store,
    spool: VerifiedSpool,
    mut lease: Option<Lease>,
    digest: &Digest,
    metrics: &Metrics,
) -> Result<u64, String> {
    let deadline = Instant::now() + COMMIT_WITHIN;
    while lease.is_none() && Instant::now() < deadline {
        if let Some(len) = store.blobs().stat(digest).await {
            spool.discard().await;
            return Ok(len);
        }
        match store.blobs().claim(digest).await {
            Ok(Claim::Won(l) | Claim::TakenOver(l)) => lease = Some(l),
            Ok(Claim::Held { .. }) => tokio::time::sleep(COMMIT_POLL).await,
            Err(e) => {
                tracing::warn!(%digest, error = %e, "cannot read the fleet download lease; committing the copy");
                break;
            }
        }
    }
    // Committed by the holder just before it let the lease go?
    if let Some(len) = store.blobs().stat(digest).await {
        spool.discard().await;
        if let Some(l) = lease {
            l.release().await;
        }
        return Ok(len);
    }
    let committed = store.commit_verified(spool).await;
    if let Some(l) = lease {
        l.release().await;
    }
    match committed {
        Ok(c) => {
            if c.new {
                metrics.content_stored(c.len);
            }
            Ok(c.len)
        }
        Err(e) => {
            tracing::warn!(%digest, error = %e, "cannot commit the copied blob");
            Err(format!("cache write failed: {e}"))
        }
    }
}
