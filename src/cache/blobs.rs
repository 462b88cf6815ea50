//! Blobs by digest (OCI distribution-spec "Pulling blobs"): immutable, so a stored copy is
//! served without asking upstream (with `Range`); a miss joins or starts the one shared
//! download of that digest ([`super::downloads`]), which every client follows as it grows.

use std::sync::Arc;

use futures_util::TryStreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};

use crate::body::{self, Body};
use crate::cache::answers::Served;
use crate::cache::answers::{error, passthrough};
use crate::cache::download::download_blob;
use crate::cache::downloads::{Download, DownloadState, Joined};
use crate::cache::eviction::Evictor;
use crate::cache::transfer::{DownloadJob, Started};
use crate::cache::{Ctx, RegistryCache};
use crate::error::ProxyError;
use crate::registry::Digest;
use crate::registry::headers::{self, DOCKER_API_VERSION, DOCKER_CONTENT_DIGEST, X_CACHE};
use crate::registry::range::{self, ByteRange};
use crate::store::{Access, Store};
use crate::telemetry::Outcome;

impl RegistryCache {
    pub(super) async fn blob(&self, ctx: &Ctx<'_>, digest: &Digest) -> Served {
        if let Some(total) = self.store().blobs().stat(digest).await {
            if let Some(refused) = self.authorize(ctx, Some(digest), false).await {
                return refused;
            }
            if let Some(res) = blob_from_store(self.store(), &self.evictor, ctx.headers, ctx.head, digest, total).await
            {
                return (res, Outcome::Hit);
            }
        }
        if let Some(dl) = self.downloads.get(digest) {
            if let Some(refused) = self.authorize(ctx, Some(digest), false).await {
                return refused;
            }
            if let Some(served) = follow(ctx, digest, &dl).await {
                return served;
            }
        }
        if ctx.head {
            // A HEAD stays a HEAD upstream: it tells the client the size without a transfer.
            return self.relay(ctx, Method::HEAD, Outcome::Miss).await;
        }
        if !self.store_usable() {
            return self.relay(ctx, Method::GET, Outcome::Bypass).await;
        }
        match self.downloads.join_or_start(digest, self.store()) {
            Joined::Existing(dl) => {
                if let Some(refused) = self.authorize(ctx, Some(digest), false).await {
                    return refused;
                }
                match follow(ctx, digest, &dl).await {
                    Some(served) => served,
                    None => self.relay(ctx, Method::GET, Outcome::Bypass).await,
                }
            }
            Joined::New(dl, handle) => {
                // It may have been committed between the store check and registering.
                if let Some(total) = self.store().blobs().stat(digest).await {
                    handle.abandon();
                    if let Some(refused) = self.authorize(ctx, Some(digest), false).await {
                        return refused;
                    }
                    return match blob_from_store(self.store(), &self.evictor, ctx.headers, ctx.head, digest, total)
                        .await
                    {
                        Some(res) => (res, Outcome::Hit),
                        // Removed again meanwhile: fetch it for this client alone.
                        None => self.relay(ctx, Method::GET, Outcome::Bypass).await,
                    };
                }
                // The download runs in its own task from the first byte on, so it completes
                // (and is cached) even if this client goes away while upstream is answering.
                let (reply, started) = tokio::sync::oneshot::channel();
                self.tasks.spawn(download_blob(DownloadJob {
                    evictor: self.evictor.clone(),
                    upstream: self.requester(ctx),
                    store: self.store().clone(),
                    metrics: self.metrics.clone(),
                    health: self.health.clone(),
                    url: ctx.url.clone(),
                    headers: headers::for_upstream(ctx.headers),
                    handle,
                    idle: self.body_idle,
                    digest: digest.clone(),
                    reply,
                    peers: self.peers.clone(),
                }));
                match started.await {
                    Ok(Started::Streaming) => {
                        // Upstream served it through this repository to this client.
                        self.learn(ctx, Some(digest), None).await;
                        match follow(ctx, digest, &dl).await {
                            Some(served) => served,
                            None => self.relay(ctx, Method::GET, Outcome::Bypass).await,
                        }
                    }
                    Ok(Started::Copying) => {
                        // Upstream served it to another replica's client, not to this one.
                        if let Some(refused) = self.authorize(ctx, Some(digest), false).await {
                            return refused;
                        }
                        match follow(ctx, digest, &dl).await {
                            Some(served) => served,
                            None => self.relay(ctx, Method::GET, Outcome::Bypass).await,
                        }
                    }
                    Ok(Started::Committed) => {
                        // Another replica fetched it, for its own client: this one must be
                        // allowed to read it too.
                        if let Some(refused) = self.authorize(ctx, Some(digest), false).await {
                            return refused;
                        }
                        let total = self.store().blobs().stat(digest).await;
                        match total {
                            Some(total) => {
                                match blob_from_store(self.store(), &self.evictor, ctx.headers, ctx.head, digest, total)
                                    .await
                                {
                                    Some(res) => (res, Outcome::Hit),
                                    None => self.relay(ctx, Method::GET, Outcome::Bypass).await,
                                }
                            }
                            None => self.relay(ctx, Method::GET, Outcome::Bypass).await,
                        }
                    }
                    Ok(Started::StoreUnavailable) => self.relay(ctx, Method::GET, Outcome::Bypass).await,
                    Ok(Started::Refused(res)) => passthrough(res, Outcome::Miss),
                    Ok(Started::Failed(e)) => error(e),
                    Err(_) => error(ProxyError::Upstream {
                        target: ctx.origin.host.to_string(),
                        reason: "blob download task ended".into(),
                    }),
                }
            }
        }
    }

    /// The answer to another replica's `GET /_regcache/peer/blobs/<digest>` (see
    /// [`super::peer`]): the blob as this replica's download of it goes (with `Range`, the last
    /// byte only once verified, as for every follower), or from the store once committed.
    pub async fn serve_peer(&self, headers: &HeaderMap, head: bool, digest: &str) -> Response<Body> {
        let Some(peers) = &self.peers else {
            return body::text(
                StatusCode::NOT_FOUND,
                "regcache: this replica serves no peers (--peer-secret-file)",
            );
        };
        if !peers.authorizes(headers) {
            let mut res = body::text(
                StatusCode::UNAUTHORIZED,
                "regcache: the fleet's peer secret is required",
            );
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"regcache-peer\""),
            );
            return res;
        }
        let Ok(digest) = digest.parse::<Digest>() else {
            return body::text(StatusCode::BAD_REQUEST, format!("regcache: {digest:?} is not a digest"));
        };
        if let Some(dl) = self.downloads.get(&digest) {
            let state = dl.started().await;
            if let Some(res) = blob_from_download(headers, head, &"this replica's upstream", &digest, &dl, state) {
                return res;
            }
        }
        if let Some(total) = self.store().blobs().stat(&digest).await
            && let Some(res) = blob_from_store(self.store(), &self.evictor, headers, head, &digest, total).await
        {
            return res;
        }
        body::text(
            StatusCode::NOT_FOUND,
            format!("regcache: not downloading {digest} and not holding it"),
        )
    }
}

fn blob_headers(h: &mut HeaderMap, digest: &Digest, outcome: Outcome) {
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers::set(h, DOCKER_CONTENT_DIGEST, &digest.to_string());
    headers::set(h, header::ETAG, &format!("\"{digest}\""));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(DOCKER_API_VERSION, HeaderValue::from_static("registry/2.0"));
    h.insert(X_CACHE, HeaderValue::from_static(outcome.x_cache()));
}

/// Status, length and `Content-Range` for a blob of `total` bytes under the client's `Range`.
fn range_head(h: &HeaderMap, total: u64) -> Result<(StatusCode, u64, u64), Box<Response<Body>>> {
    match range::parse(h, total) {
        ByteRange::Full => Ok((StatusCode::OK, 0, total)),
        ByteRange::Partial { start, end } => Ok((StatusCode::PARTIAL_CONTENT, start, end + 1)),
        ByteRange::Unsatisfiable => {
            let mut res = body::text(StatusCode::RANGE_NOT_SATISFIABLE, "regcache: range not satisfiable");
            headers::set(res.headers_mut(), header::CONTENT_RANGE, &format!("bytes */{total}"));
            Err(Box::new(res))
        }
    }
}

/// A cached blob's answer. The blob is opened before answering (and kept from eviction while
/// it is read), so a removal meanwhile cannot cut the response short; `None` if it is gone
/// already (then the caller fetches it again).
async fn blob_from_store(
    store: &Store,
    evictor: &Arc<Evictor>,
    asked: &HeaderMap,
    head: bool,
    digest: &Digest,
    total: u64,
) -> Option<Response<Body>> {
    // Content verified when written; clients verify again. Served with plain reads.
    let (status, start, end) = match range_head(asked, total) {
        Ok(r) => r,
        Err(res) => return Some(*res),
    };
    let guard = evictor.reading(digest);
    let body = if head {
        body::empty()
    } else {
        let reader = store
            .blobs()
            .open(digest, start, Some(end - start), Access::Use)
            .await
            .ok()??;
        let stream = reader.stream.map_ok(move |chunk| {
            let _reading = &guard;
            hyper::body::Frame::data(chunk)
        });
        body::boxed(http_body_util::StreamBody::new(stream))
    };
    let mut res = Response::new(body);
    *res.status_mut() = status;
    blob_headers(res.headers_mut(), digest, Outcome::Hit);
    res.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if status == StatusCode::PARTIAL_CONTENT {
        headers::set(
            res.headers_mut(),
            header::CONTENT_RANGE,
            &format!("bytes {start}-{}/{total}", end - 1),
        );
    }
    Some(res)
}

/// Serves a client from a download in progress once it has started, or `None` if it never
/// did (the caller then asks upstream itself).
async fn follow(ctx: &Ctx<'_>, digest: &Digest, dl: &Arc<Download>) -> Option<Served> {
    let state = dl.started().await;
    blob_from_download(ctx.headers, ctx.head, &ctx.origin.host, digest, dl, state).map(|res| (res, Outcome::Miss))
}

/// A response following a download in progress, or `None` if it never started (the caller
/// then asks upstream itself).
fn blob_from_download(
    asked: &HeaderMap,
    head: bool,
    host: &dyn std::fmt::Display,
    digest: &Digest,
    dl: &Arc<Download>,
    state: DownloadState,
) -> Option<Response<Body>> {
    let total = match state {
        DownloadState::Running { total, .. } => total,
        DownloadState::Done { len } => Some(len),
        DownloadState::Connecting | DownloadState::Abandoned => return None,
        DownloadState::Failed(why) => {
            return Some(
                error(ProxyError::Upstream {
                    target: host.to_string(),
                    reason: format!("blob download failed: {why}"),
                })
                .0,
            );
        }
    };
    let (status, start, end) = match total {
        Some(t) => match range_head(asked, t) {
            Ok((s, a, b)) => (s, a, Some(b)),
            Err(res) => return Some(*res),
        },
        // Unknown length: ranges cannot be checked yet; send everything.
        None => (StatusCode::OK, 0, None),
    };
    let body = if head {
        body::empty()
    } else {
        body::boxed(http_body_util::StreamBody::new(
            dl.read(start, end).map_ok(hyper::body::Frame::data),
        ))
    };
    let mut res = Response::new(body);
    *res.status_mut() = status;
    blob_headers(res.headers_mut(), digest, Outcome::Miss);
    if let Some(end) = end {
        res.headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
        if status == StatusCode::PARTIAL_CONTENT
            && let Some(t) = total
        {
            headers::set(
                res.headers_mut(),
                header::CONTENT_RANGE,
                &format!("bytes {start}-{}/{t}", end - 1),
            );
        }
    }
    Some(res)
}
