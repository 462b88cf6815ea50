//! The task that fetches one blob into the store: it runs on its own from the first byte, so
//! the download completes (and is cached) even if the client that started it goes away, and
//! reports how it began to that client; every client reads the bytes through the download's
//! followers ([`super::downloads`]).

use std::time::Duration;

use http::{Method, StatusCode};

use crate::cache::downloads::DownloadHandle;
use crate::cache::peer;
use crate::cache::transfer::{DownloadJob, Source, Started, feed, store_unavailable};
use crate::registry::Digest;
use crate::registry::headers;
use crate::store::{BlobWriter, Claim, Lease, Store};
use crate::telemetry::{LeaseOutcome, Metrics};

/// Fetches a blob into the store, reporting to the request that started it how it began.
pub(super) async fn download_blob(job: DownloadJob) {
    let (store, digest) = (job.store.clone(), job.digest.clone());
    // Fleet-wide single flight: one replica sharing the store downloads; the others stream it
    // from that one while it does, or wait for its commit (a store of one process always
    // grants the claim).
    let (lease, outcome) = match store.blobs().claim(&digest).await {
        Ok(Claim::Won(lease)) => (lease, LeaseOutcome::Won),
        Ok(Claim::TakenOver(lease)) => (lease, LeaseOutcome::TakenOver),
        Ok(Claim::Held { holder, expires, peer }) => {
            if let (Some(peers), Some(peer)) = (job.peers.clone(), peer.as_deref())
                && !peers.is_self(peer)
            {
                match peers.open(peer, &digest, 0).await {
                    Ok(from_peer) => return peer::copy_from_peer(job, peers, from_peer, &holder).await,
                    Err(why) => tracing::info!(
                        %digest,
                        holder,
                        why,
                        "cannot stream the blob from the replica downloading it; waiting for its commit"
                    ),
                }
            }
            match wait_for_holder(&store, &digest, &holder, expires).await {
                Waited::Committed(len) => {
                    job.metrics.store.lease(LeaseOutcome::Followed);
                    job.handle.done(len);
                    let _ = job.reply.send(Started::Committed);
                    return;
                }
                Waited::Claimed(claim) => claim,
            }
        }
        Err(e) => {
            tracing::warn!(%digest, error = %e, "no fleet download lease; downloading anyway");
            (Lease::none(), LeaseOutcome::Won)
        }
    };
    let DownloadJob {
        evictor,
        upstream,
        metrics,
        health,
        url,
        headers,
        handle,
        idle,
        reply,
        ..
    } = job;
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
        Err(e) => return store_unavailable(&e, &health, handle, reply),
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
    let source = Source::Upstream.bytes(res.into_body(), 0, &metrics);
    match feed(&handle, &mut writer, source, idle, &digest).await {
        Ok(()) => commit(handle, writer, &digest, &metrics).await,
        Err(broke) => {
            writer.discard().await;
            handle.fail(broke.why());
        }
    }
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

/// Verifies the spooled blob and commits it, telling its readers.
async fn commit(handle: DownloadHandle, writer: BlobWriter, digest: &Digest, metrics: &Metrics) {
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
