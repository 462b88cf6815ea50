//! Manifests by digest, and manifest GETs upstream for tags too: buffered (bounded) so that
//! they are verified before they are stored or served, coalesced when identical requests
//! arrive together (a manifest GET is what Docker Hub counts as a pull), kept in memory once
//! read.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri};
use http_body_util::BodyExt;

use crate::cache::answers::{Fetched, Served, content_type, error, fetched_response, manifest_response};
use crate::cache::records::{StoredManifest, manifest_key};
use crate::cache::repo_access::{auth_fingerprint, repo_key};
use crate::cache::{Ctx, RegistryCache};
use crate::error::ProxyError;
use crate::registry::headers;
use crate::registry::manifest::MAX_MANIFEST;
use crate::registry::{AcceptSet, Digest};
use crate::telemetry::{BodyKind, Metrics, Outcome};
use crate::upstream::Requester;

impl RegistryCache {
    pub(super) async fn manifest_by_digest(&self, ctx: &Ctx<'_>, digest: &Digest) -> Served {
        let accept = AcceptSet::from_headers(ctx.headers);
        if let Some(m) = self.cached_manifest(ctx, digest).await
            && accept.allows(&m.media_type)
        {
            // Stored under this repository: a member of it.
            if let Some(refused) = self.authorize(ctx, None, true).await {
                return refused;
            }
            return (
                manifest_response(ctx.head, &m.bytes, &m.media_type, digest, Outcome::Hit, false),
                Outcome::Hit,
            );
        }
        if ctx.head {
            return self.relay(ctx, Method::HEAD, Outcome::Miss).await;
        }
        let fetched = match self.fetch_manifest(ctx).await {
            Ok(f) => f,
            Err(e) => return error(e),
        };
        if fetched.status != StatusCode::OK {
            return fetched_response(&fetched, Outcome::Miss);
        }
        if !digest.matches(&fetched.body) {
            return error(ProxyError::Upstream {
                target: ctx.origin.host.to_string(),
                reason: format!("manifest does not match its digest {digest}"),
            });
        }
        if let Some(refused) = self.shared_fetch_allowed(ctx, &fetched).await {
            return refused;
        }
        let media_type = content_type(&fetched.headers);
        self.store_manifest(ctx, digest, &media_type, &fetched.body).await;
        (
            manifest_response(false, &fetched.body, &media_type, digest, Outcome::Miss, false),
            Outcome::Miss,
        )
    }

    /// GETs a manifest, coalescing identical concurrent requests (same URL and `Accept`).
    pub(super) async fn fetch_manifest(&self, ctx: &Ctx<'_>) -> Result<Fetched, ProxyError> {
        // Coalesced across credentials: with Docker Hub every CI job has its own token, and a
        // manifest GET is a counted pull. A refusal is not shared with different credentials.
        let key = format!("{}|{}", ctx.url, AcceptSet::from_headers(ctx.headers).key());
        let mine = auth_fingerprint(ctx.headers);
        let upstream = self.requester(ctx);
        let url = ctx.url.clone();
        let headers = headers::for_upstream(ctx.headers);
        let target = ctx.origin.host.to_string();
        let leader = mine.clone();
        let metrics = self.metrics.clone();
        let shared = self
            .manifest_fetches
            .run(key, move || {
                fetch_buffered(upstream, url, headers, target, leader, metrics)
            })
            .await
            .unwrap_or_else(|| {
                Err(ProxyError::Upstream {
                    target: ctx.origin.host.to_string(),
                    reason: "manifest fetch panicked".into(),
                })
            });
        match shared {
            Ok(f) if f.status != StatusCode::OK && f.auth != mine => {
                let target = ctx.origin.host.to_string();
                fetch_buffered(
                    self.requester(ctx),
                    ctx.url.clone(),
                    headers::for_upstream(ctx.headers),
                    target,
                    mine,
                    self.metrics.clone(),
                )
                .await
            }
            other => other,
        }
    }

    pub(super) async fn store_manifest(&self, ctx: &Ctx<'_>, digest: &Digest, media_type: &str, bytes: &Bytes) {
        if !self.store_usable() {
            return;
        }
        match self
            .records
            .put_manifest(&ctx.registry, &ctx.repository, digest, media_type, bytes)
            .await
        {
            Ok(committed) => {
                if committed.new {
                    self.metrics.content_stored(committed.len);
                }
                self.manifests.insert(
                    manifest_key(&ctx.registry, &ctx.repository, digest),
                    StoredManifest {
                        bytes: bytes.clone(),
                        media_type: media_type.to_string(),
                        digest: digest.clone(),
                    },
                );
            }
            Err(e) => self.store_failed(&e),
        }
    }

    /// A manifest cached for this registry and repository: from memory, else from the store.
    pub(super) async fn cached_manifest(&self, ctx: &Ctx<'_>, digest: &Digest) -> Option<StoredManifest> {
        let key = manifest_key(&ctx.registry, &ctx.repository, digest);
        self.notice_purges();
        if let Some(m) = self.manifests.get(&key) {
            return Some(m);
        }
        let m = self.records.manifest(&ctx.registry, &ctx.repository, digest).await?;
        self.access
            .add_references(&repo_key(&ctx.registry, &ctx.repository), &m.bytes);
        self.manifests.insert(key, m.clone());
        Some(m)
    }
}

/// GETs a manifest and buffers it (bounded: manifests are small and must be verified whole).
async fn fetch_buffered(
    upstream: Requester,
    url: Uri,
    headers: HeaderMap,
    target: String,
    auth: String,
    metrics: Arc<Metrics>,
) -> Result<Fetched, ProxyError> {
    let res = upstream.send(Method::GET, url, headers).await?;
    let (parts, body) = res.into_parts();
    if headers::content_length(&parts.headers).is_some_and(|n| n > MAX_MANIFEST as u64) {
        return Err(ProxyError::Upstream {
            target,
            reason: "manifest larger than 4 MiB".into(),
        });
    }
    let body = http_body_util::Limited::new(body, MAX_MANIFEST)
        .collect()
        .await
        .map_err(|e| ProxyError::Upstream {
            target,
            reason: if e.is::<http_body_util::LengthLimitError>() {
                "manifest larger than 4 MiB".into()
            } else {
                format!("reading manifest: {e}")
            },
        })?
        .to_bytes();
    if parts.status.is_success() {
        metrics.upstream_bytes(BodyKind::Manifest, body.len() as u64);
    }
    let mut headers = parts.headers;
    headers::strip_hop_by_hop(&mut headers);
    Ok(Fetched {
        status: parts.status,
        headers,
        body,
        auth,
    })
}
