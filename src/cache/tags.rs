//! Tags (OCI distribution-spec "Pulling manifests" by tag): resolved through the tag records,
//! keyed by registry, repository, tag and the client's `Accept` set. A fresh record is served
//! as is; a stale one is revalidated with an upstream `HEAD` (Docker Hub counts manifest GETs
//! as pulls, HEADs are free), one per tag however many clients ask at once; when upstream is
//! unreachable, times out or answers 5xx/429, the cached tag is served stale (`Warning: 110`)
//! up to `max_stale`. How long a record is fresh is `tag_ttl`, or under `tag_ttl_mode =
//! "upstream-first"` what upstream said of it ([`super::freshness`]): then its `no-store` keeps
//! the tag out of the records (the manifest is still kept by digest) and its `ETag` goes back
//! as `If-None-Match`, a `304` meaning the tag has not moved.

use http::header::{HeaderMap, HeaderValue, IF_NONE_MATCH};
use http::{Method, Response, StatusCode, Uri};

use crate::body;
use crate::cache::answers::Served;
use crate::cache::answers::{content_type, manifest_response, set_manifest_headers};
use crate::cache::answers::{error, fetched_response, head_only, passthrough, upstream_unavailable};
use crate::cache::freshness::UpstreamFreshness;
use crate::cache::records::{TagFreshness, TagRecord, seeded_tag_key, tag_key};
use crate::cache::{Ctx, RegistryCache};
use crate::clock::now_ms;
use crate::error::ProxyError;
use crate::registry::headers::{self, DOCKER_CONTENT_DIGEST};
use crate::registry::{AcceptSet, Algorithm, Digest};
use crate::telemetry::Outcome;
use crate::upstream::Requester;

/// A tag's validation time is written to disk at most this often when its digest is unchanged.
pub(super) const TAG_PERSIST_EVERY_MS: u64 = 10 * 60 * 1000;
/// Result of asking upstream about a tag with `HEAD`.
#[derive(Debug, Clone)]
pub(super) enum Revalidation {
    /// 200 with a digest.
    Current {
        /// The tag's answer now.
        record: TagRecord,
        /// `false` when upstream said `no-store`.
        storable: bool,
    },
    /// 304 to the record's `ETag`: the tag has not moved.
    NotModified(TagFreshness),
    /// 200 without `Docker-Content-Digest`: only a GET can tell.
    NoDigest,
    /// Upstream is in trouble (unreachable, timeout, 5xx, 429): stale content may be served.
    Unavailable {
        reason: String,
        head: Option<(StatusCode, HeaderMap)>,
    },
    /// Upstream answered, but not with the manifest (401, 403, 404, …): the client must see it.
    Refused,
}

/// Memory of a tag: the record, and when it was last written to disk.
#[derive(Debug, Clone)]
pub(super) struct TagMemo {
    record: TagRecord,
    persisted_ms: u64,
}

impl RegistryCache {
    pub(super) async fn manifest_by_tag(&self, ctx: &Ctx<'_>, tag: &str) -> Served {
        let accept = AcceptSet::from_headers(ctx.headers);
        let key = tag_key(&ctx.registry, &ctx.repository, tag, &accept.key());
        let policy = self.policy.load_full();
        let now = now_ms();
        let Some(memo) = self.tag_memo_or_seeded(ctx, tag, &key, &accept).await else {
            return self.tag_miss(ctx, &key, &accept).await;
        };
        let ttl = policy.tag_freshness(&ctx.registry, &ctx.repository, tag, memo.record.upstream.ttl());
        let age = now.saturating_sub(memo.record.validated_at_ms);
        if !ttl.is_zero() && age < ttl.as_millis() as u64 {
            if let Some(refused) = self.authorize(ctx, None, true).await {
                return refused;
            }
            return self
                .serve_tag(ctx, &key, &accept, &memo.record, Outcome::Hit, false)
                .await;
        }

        let head_url = ctx.url.clone();
        let head_headers = headers::for_upstream(ctx.headers);
        let upstream = self.requester(ctx);
        let etag = policy
            .upstream_first()
            .then(|| memo.record.upstream.etag.clone())
            .flatten();
        let result = self
            .revalidations
            .run(key.clone(), move || revalidate(upstream, head_url, head_headers, etag))
            .await
            .unwrap_or(Revalidation::Unavailable {
                reason: "revalidation task panicked".into(),
                head: None,
            });

        // The revalidation may have been another client's (coalesced): this one's access is
        // checked on its own (free for public repositories).
        let serving = matches!(
            result,
            Revalidation::Current { .. } | Revalidation::NotModified(_) | Revalidation::Unavailable { .. }
        );
        if serving && let Some(refused) = self.authorize(ctx, None, true).await {
            return refused;
        }
        match result {
            Revalidation::Current {
                record: fresh,
                storable: false,
            } if policy.upstream_first() => {
                self.forget_tag(&key).await;
                self.serve_tag(ctx, &key, &accept, &fresh, Outcome::Revalidated, false)
                    .await
            }
            Revalidation::NotModified(stated) => {
                // A 304 may restate the lifetime or bring a new validator; the rest stands.
                let mut fresh = memo.record.clone();
                fresh.validated_at_ms = now_ms();
                fresh.upstream.ttl_ms = stated.ttl_ms.or(fresh.upstream.ttl_ms);
                fresh.upstream.etag = stated.etag.or(fresh.upstream.etag);
                self.remember_tag(&key, fresh.clone(), Some(&memo)).await;
                self.serve_tag(ctx, &key, &accept, &fresh, Outcome::Revalidated, false)
                    .await
            }
            Revalidation::Current { record: fresh, .. } if fresh.digest == memo.record.digest => {
                self.remember_tag(&key, fresh.clone(), Some(&memo)).await;
                self.serve_tag(ctx, &key, &accept, &fresh, Outcome::Revalidated, false)
                    .await
            }
            Revalidation::Current { record: fresh, .. } => {
                tracing::info!(registry = %ctx.registry, repository = %ctx.repository, tag, old = %memo.record.digest, new = %fresh.digest, "tag moved upstream");
                self.remember_tag(&key, fresh.clone(), None).await;
                self.serve_tag(ctx, &key, &accept, &fresh, Outcome::Revalidated, false)
                    .await
            }
            Revalidation::NoDigest => self.tag_miss(ctx, &key, &accept).await,
            Revalidation::Unavailable { reason, head } => {
                let max_stale = policy.max_stale(&ctx.registry).as_millis() as u64;
                if age <= max_stale.saturating_add(ttl.as_millis() as u64) {
                    tracing::warn!(registry = %ctx.registry, repository = %ctx.repository, tag, reason, "upstream unavailable; serving stale tag");
                    return self
                        .serve_tag(ctx, &key, &accept, &memo.record, Outcome::Stale, true)
                        .await;
                }
                tracing::warn!(registry = %ctx.registry, repository = %ctx.repository, tag, reason, "upstream unavailable and cached tag is older than --max-stale");
                match head {
                    // Give the client upstream's own error, via its own request.
                    Some(_) if !ctx.head => self.relay(ctx, Method::GET, Outcome::Miss).await,
                    Some((status, headers)) => head_only(status, &headers, Outcome::Miss),
                    None => error(ProxyError::Upstream {
                        target: ctx.origin.host.to_string(),
                        reason,
                    }),
                }
            }
            // Each client gets upstream's verdict on its own credentials.
            Revalidation::Refused if ctx.head => self.relay(ctx, Method::HEAD, Outcome::Miss).await,
            Revalidation::Refused => self.relay(ctx, Method::GET, Outcome::Miss).await,
        }
    }

    /// A tag with no usable entry: ask upstream (HEAD for HEAD, GET for GET) and remember.
    pub(super) async fn tag_miss(&self, ctx: &Ctx<'_>, key: &str, accept: &AcceptSet) -> Served {
        if ctx.head {
            let res = match self.ask_upstream(ctx, Method::HEAD).await {
                Ok(res) => res,
                Err(e) => return error(e),
            };
            let fresh = UpstreamFreshness::of(&Method::HEAD, &ctx.url, res.status(), res.headers());
            if res.status() == StatusCode::OK
                && let Some(record) = record_from_head(res.headers(), fresh.record)
                && accept.allows(&record.media_type)
                && self.keeps_tag(fresh.storable)
            {
                self.remember_tag(key, record, None).await;
            }
            return passthrough(res, Outcome::Miss);
        }
        let fetched = match self.fetch_manifest(ctx).await {
            Ok(f) => f,
            Err(e) => return error(e),
        };
        if fetched.status != StatusCode::OK {
            return fetched_response(&fetched, Outcome::Miss);
        }
        if let Some(refused) = self.shared_fetch_allowed(ctx, &fetched).await {
            return refused;
        }
        let media_type = content_type(&fetched.headers);
        let announced = fetched
            .headers
            .get(DOCKER_CONTENT_DIGEST)
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.parse::<Digest>().ok());
        let algorithm = announced.as_ref().map_or(Algorithm::Sha256, Digest::algorithm);
        let digest = Digest::of(algorithm, &fetched.body);
        if announced.as_ref().is_some_and(|a| *a != digest) {
            tracing::warn!(registry = %ctx.registry, repository = %ctx.repository, "manifest body does not match Docker-Content-Digest; not caching");
            return fetched_response(&fetched, Outcome::Miss);
        }
        if accept.allows(&media_type) {
            // Kept by digest even when upstream says `no-store`: content by digest never changes;
            // only the tag's answer is not to be kept.
            self.store_manifest(ctx, &digest, &media_type, &fetched.body).await;
            let fresh = UpstreamFreshness::of(&Method::GET, &ctx.url, fetched.status, &fetched.headers);
            if self.keeps_tag(fresh.storable) {
                let record = TagRecord {
                    digest: digest.to_string(),
                    media_type: media_type.clone(),
                    size: fetched.body.len() as u64,
                    validated_at_ms: now_ms(),
                    upstream: fresh.record,
                };
                self.remember_tag(key, record, None).await;
            }
        }
        (
            manifest_response(false, &fetched.body, &media_type, &digest, Outcome::Miss, false),
            Outcome::Miss,
        )
    }

    /// Serves a tag from its record: HEAD from the record alone, GET with the stored manifest
    /// (fetched if only the record is known, e.g. after a HEAD-only client).
    pub(super) async fn serve_tag(
        &self,
        ctx: &Ctx<'_>,
        key: &str,
        accept: &AcceptSet,
        record: &TagRecord,
        outcome: Outcome,
        stale: bool,
    ) -> Served {
        let Ok(digest) = record.digest.parse::<Digest>() else {
            return self.tag_miss(ctx, key, accept).await;
        };
        if !accept.allows(&record.media_type) {
            return self.tag_miss(ctx, key, accept).await;
        }
        if ctx.head {
            let mut res = Response::new(body::empty());
            set_manifest_headers(
                res.headers_mut(),
                record.size,
                &record.media_type,
                &digest,
                outcome,
                stale,
            );
            return (res, outcome);
        }
        match self.cached_manifest(ctx, &digest).await {
            Some(m) => (
                manifest_response(false, &m.bytes, &m.media_type, &digest, outcome, stale),
                outcome,
            ),
            None if stale => error(ProxyError::Upstream {
                target: ctx.origin.host.to_string(),
                reason: "registry unavailable and this manifest is not cached".into(),
            }),
            None => self.tag_miss(ctx, key, accept).await,
        }
    }

    pub(super) async fn tag_memo(&self, key: &str) -> Option<TagMemo> {
        self.notice_purges();
        if let Some(m) = self.tags.get(key) {
            return Some(m);
        }
        let record = self.records.tag(key).await?;
        let memo = TagMemo {
            persisted_ms: record.validated_at_ms,
            record,
        };
        self.tags.insert(key.to_string(), memo.clone());
        Some(memo)
    }

    /// The tag's record for this client's Accept set, else the one `regcache warm` or
    /// `regcache cache import` wrote ([`SEEDED_ACCEPT_KEY`](super::records::SEEDED_ACCEPT_KEY)) if this client accepts its
    /// media type.
    ///
    /// Why a fallback rather than seeding every client's key: docker, containerd, skopeo,
    /// podman, buildkit and crane each send their own Accept list, and it changes between their
    /// versions; a seeded image missed by one unforeseen list would need upstream, which may be
    /// gone. Serving the seeded record is what upstream would do: registries return the stored
    /// manifest whenever its type is accepted (conversions happen only when it is not), and a
    /// client that does not accept it never gets it (checked here and in `serve_tag`). Revalidation
    /// then runs with the client's own headers and records under its own key.
    pub(super) async fn tag_memo_or_seeded(
        &self,
        ctx: &Ctx<'_>,
        tag: &str,
        key: &str,
        accept: &AcceptSet,
    ) -> Option<TagMemo> {
        if let Some(memo) = self.tag_memo(key).await {
            return Some(memo);
        }
        let record = self
            .records
            .tag(&seeded_tag_key(&ctx.registry, &ctx.repository, tag))
            .await?;
        if !accept.allows(&record.media_type) {
            return None;
        }
        // Remembered under this client's key (in memory only), like any record it resolved.
        let memo = TagMemo {
            persisted_ms: record.validated_at_ms,
            record,
        };
        self.tags.insert(key.to_string(), memo.clone());
        Some(memo)
    }

    /// Whether a tag's answer is kept: always under `tag_ttl_mode = "override"`, unless upstream
    /// said `no-store` under `"upstream-first"`.
    fn keeps_tag(&self, storable: bool) -> bool {
        storable || !self.policy.load().upstream_first()
    }

    /// Drops a tag's record (upstream now says `no-store`), in memory and on disk.
    async fn forget_tag(&self, key: &str) {
        self.tags.invalidate(key);
        if self.store_usable()
            && let Err(e) = self.records.forget_tag(key).await
        {
            self.store_failed(&e);
        }
    }

    /// Remembers a tag resolution; writes it to disk when the digest changed or the stored
    /// validation time is old (so revalidations do not grow the index without bound).
    pub(super) async fn remember_tag(&self, key: &str, record: TagRecord, previous: Option<&TagMemo>) {
        let now = now_ms();
        let persist = match previous {
            Some(p) => p.record.digest != record.digest || now.saturating_sub(p.persisted_ms) >= TAG_PERSIST_EVERY_MS,
            None => true,
        };
        let mut persisted_ms = previous.map_or(0, |p| p.persisted_ms);
        if persist && self.store_usable() {
            match self.records.put_tag(key, &record).await {
                Ok(()) => persisted_ms = record.validated_at_ms,
                Err(e) => self.store_failed(&e),
            }
        }
        self.tags.insert(key.to_string(), TagMemo { record, persisted_ms });
    }
}

/// Asks upstream for a tag's current digest with a HEAD (conditional on `etag` when given).
pub(super) async fn revalidate(
    upstream: Requester,
    url: Uri,
    mut headers: HeaderMap,
    etag: Option<String>,
) -> Revalidation {
    let conditional = match etag.as_deref().map(HeaderValue::from_str) {
        Some(Ok(v)) => {
            headers.insert(IF_NONE_MATCH, v);
            true
        }
        _ => false,
    };
    match upstream.send(Method::HEAD, url.clone(), headers).await {
        Err(e) => Revalidation::Unavailable {
            reason: e.to_string(),
            head: None,
        },
        Ok(res) => {
            let status = res.status();
            let mut h = res.headers().clone();
            headers::strip_hop_by_hop(&mut h);
            if upstream_unavailable(status) {
                Revalidation::Unavailable {
                    reason: format!("upstream answered {status}"),
                    head: Some((status, h)),
                }
            } else if status == StatusCode::NOT_MODIFIED && conditional {
                // The 304's headers update the stored answer's (RFC 9111 "Freshening Stored
                // Responses upon Validation"): judged as the 200 they now describe.
                Revalidation::NotModified(UpstreamFreshness::of(&Method::HEAD, &url, StatusCode::OK, &h).record)
            } else if status == StatusCode::OK {
                let fresh = UpstreamFreshness::of(&Method::HEAD, &url, status, &h);
                match record_from_head(&h, fresh.record) {
                    Some(record) => Revalidation::Current {
                        record,
                        storable: fresh.storable,
                    },
                    None => Revalidation::NoDigest,
                }
            } else {
                Revalidation::Refused
            }
        }
    }
}

/// A tag record from manifest response headers (HEAD or GET) and what they say of freshness.
pub(super) fn record_from_head(h: &HeaderMap, upstream: TagFreshness) -> Option<TagRecord> {
    let digest = h.get(DOCKER_CONTENT_DIGEST)?.to_str().ok()?.parse::<Digest>().ok()?;
    Some(TagRecord {
        digest: digest.to_string(),
        media_type: content_type(h),
        size: headers::content_length(h)?,
        validated_at_ms: now_ms(),
        upstream,
    })
}
