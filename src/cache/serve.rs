//! The registry cache: what to serve from the store, when to ask upstream, and how.
//!
//! - Blobs and manifests by digest are immutable: a stored copy is served without contacting
//!   upstream. A blob miss becomes one shared [`downloads`](crate::cache::downloads) transfer.
//! - Tags resolve through the tag index, keyed by registry, repository, tag and the client's
//!   `Accept` set. A stale entry is revalidated with an upstream `HEAD` (Docker Hub counts
//!   manifest GETs as pulls, HEADs are free), one per tag however many clients ask at once.
//! - When upstream is unreachable, times out, or answers 5xx/429, cached tags are served stale
//!   (`Warning: 110`) up to `max_stale`, and `/v2/` is answered locally.
//! - A store that cannot be written never fails a pull: the response is passed through.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::cache::downloads::{DownloadState, Downloads, Joined};
use crate::cache::eviction::Evictor;
use crate::cache::repo_access::{RepoAccess, repo_key};
use crate::cache::single_flight::SingleFlight;
use crate::config::settings::CachePolicy;
use crate::error::ProxyError;
use crate::registry::digest::{Algorithm, Digest};
use crate::registry::headers::{self, DOCKER_API_VERSION, DOCKER_CONTENT_DIGEST, X_CACHE};
use crate::registry::range::{self, ByteRange};
use crate::registry::request::{self as registry, AcceptSet, Reference, RegistryRequest};
use crate::store::local::{self as store, ContentStore, StoredManifest, TagRecord};
use crate::telemetry::access_log::Outcome;
use crate::upstream::auth::{Requester, UpstreamAuth};
use crate::upstream::client::{Origin, UpstreamClient};

/// Manifests are buffered to be verified; the distribution registry refuses larger ones.
/// An upstream manifest over this is answered 502 rather than passed through: it cannot be
/// verified without being held whole, no conforming registry serves one, and streaming it on
/// would hand clients unverified content of any size.
const MAX_MANIFEST: usize = 4 * 1024 * 1024;
/// After a store write fails, skip caching for this long instead of failing every request.
const STORE_BACKOFF_MS: u64 = 30_000;
/// A tag's validation time is written to disk at most this often when its digest is unchanged.
const TAG_PERSIST_EVERY_MS: u64 = 10 * 60 * 1000;
/// Bytes of manifests kept in memory (a typical manifest is 1–10 KiB).
const MANIFEST_MEMORY: u64 = 16 * 1024 * 1024;

/// A response and what the cache did to produce it.
pub type Served = (Response<Body>, Outcome);

/// An upstream answer small enough to share between coalesced requests.
#[derive(Debug, Clone)]
struct Fetched {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    /// Fingerprint of the credentials it was fetched with.
    auth: String,
}

/// Result of asking upstream about a tag with `HEAD`.
#[derive(Debug, Clone)]
enum Revalidation {
    /// 200 with a digest.
    Current(TagRecord),
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
struct TagMemo {
    record: TagRecord,
    persisted_ms: u64,
}

/// The caching layer between intercepted registry requests and upstream.
pub struct RegistryCache {
    store: ContentStore,
    downloads: Downloads,
    upstream: UpstreamClient,
    /// regcache's own accounts and tokens, for clients that send no credentials.
    auth: Arc<UpstreamAuth>,
    /// Who may read which cached repository (private content never leaks).
    access: RepoAccess,
    /// Replaced whole on a reload; readers take a snapshot.
    policy: arc_swap::ArcSwap<CachePolicy>,
    body_idle: Duration,
    /// Download tasks, so that a graceful shutdown can wait for them.
    tasks: tokio_util::task::TaskTracker,
    /// Keeps the store within its disk budget; told about reads and downloads.
    evictor: Arc<Evictor>,
    tags: moka::sync::Cache<String, TagMemo>,
    /// Recently used manifests, so that a GET of a cached manifest costs no disk I/O. They were
    /// verified when stored; this is a copy of the store, never a replacement for it.
    manifests: moka::sync::Cache<String, StoredManifest>,
    manifest_fetches: SingleFlight<String, Result<Fetched, ProxyError>>,
    revalidations: SingleFlight<String, Revalidation>,
    health: Arc<StoreHealth>,
    /// Purges by `regcache cache rm`/`verify --repair` in other processes (see
    /// [`crate::cache::purge_notice`]): checked on each memory lookup, which then starts afresh.
    purges: crate::cache::purge_notice::PurgeWatch,
}

/// Whether the store can be written; shared with download tasks.
#[derive(Default)]
struct StoreHealth {
    broken_until_ms: AtomicU64,
    failures: AtomicU64,
}

impl StoreHealth {
    fn usable(&self) -> bool {
        store::now_ms() >= self.broken_until_ms.load(Ordering::Relaxed)
    }

    fn failed(&self, e: &store::StoreError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        crate::telemetry::metrics::global().store_write_failed();
        self.broken_until_ms
            .store(store::now_ms() + STORE_BACKOFF_MS, Ordering::Relaxed);
        tracing::error!(error = %e, "cache write failed; passing responses through uncached for 30 s");
    }
}

/// Everything about one registry request that the handlers need.
struct Ctx<'a> {
    origin: &'a Origin,
    registry: String,
    repository: String,
    head: bool,
    headers: &'a HeaderMap,
    url: Uri,
}

impl RegistryCache {
    /// A cache over `store`, asking `upstream` on misses.
    pub fn new(
        store: ContentStore,
        upstream: UpstreamClient,
        policy: CachePolicy,
        body_idle: Duration,
        tasks: tokio_util::task::TaskTracker,
        auth: Arc<UpstreamAuth>,
        evictor: Arc<Evictor>,
    ) -> Self {
        Self {
            purges: crate::cache::purge_notice::PurgeWatch::new(store.root()),
            store,
            downloads: Downloads::default(),
            upstream,
            auth,
            access: RepoAccess::new(policy.public_recheck, policy.private_grace),
            policy: arc_swap::ArcSwap::from_pointee(policy),
            body_idle,
            tasks,
            evictor,
            tags: moka::sync::Cache::new(100_000),
            manifests: moka::sync::Cache::builder()
                .max_capacity(MANIFEST_MEMORY)
                .weigher(|k: &String, m: &StoredManifest| (k.len() + m.bytes.len()).try_into().unwrap_or(u32::MAX))
                .build(),
            manifest_fetches: SingleFlight::default(),
            revalidations: SingleFlight::default(),
            health: Arc::new(StoreHealth::default()),
        }
    }

    /// Replaces tag freshness rules (a configuration reload); requests under way keep theirs.
    pub fn set_policy(&self, policy: CachePolicy) {
        self.policy.store(Arc::new(policy));
    }

    /// Store writes that failed since start (each made a response pass through uncached).
    pub fn store_failures(&self) -> u64 {
        self.health.failures.load(Ordering::Relaxed)
    }

    /// Blob downloads in progress.
    pub fn downloads_in_flight(&self) -> usize {
        self.downloads.in_flight()
    }

    /// The store this cache serves from.
    pub fn store(&self) -> &ContentStore {
        &self.store
    }

    /// Drops every in-memory copy of manifests and tags, after a purge removed some from the
    /// store: each is read from the store again on its next use (and is a miss if it is gone).
    pub fn forget_all(&self) {
        self.manifests.invalidate_all();
        self.tags.invalidate_all();
    }

    /// Forgets memory when another process announced a purge (one `stat`).
    fn notice_purges(&self) {
        // Another process's purge is noticed within a quarter of a second.
        if self.purges.changed_throttled(250) {
            tracing::info!("the store was purged by another process; in-memory manifests and tags dropped");
            self.forget_all();
        }
    }

    /// Serves one request for a registry host.
    pub async fn handle(&self, origin: &Origin, req: Request<Body>) -> Served {
        let class = registry::classify(req.method(), req.uri().path());
        let (name, class) = match class {
            RegistryRequest::Manifest { name, reference } => (name, Some(Class::Manifest(reference))),
            RegistryRequest::Blob { name, digest } => (name, Some(Class::Blob(digest))),
            RegistryRequest::Ping => (String::new(), Some(Class::Ping)),
            RegistryRequest::Invalid(bad) => return (bad.into_response(), Outcome::Error),
            _ => (String::new(), None),
        };
        let Some(class) = class else {
            return self.bypass(origin, req).await;
        };
        let registry = registry::canonical_registry(&origin.host);
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let url: Uri = match format!("{}{}", origin.base_url(), path).parse() {
            Ok(u) => u,
            Err(e) => return error(ProxyError::BadRequest(format!("cannot build upstream URI: {e}"))),
        };
        let ctx = Ctx {
            origin,
            repository: registry::canonical_repository(&registry, &name),
            registry,
            head: req.method() == Method::HEAD,
            headers: req.headers(),
            url,
        };
        if let Class::Manifest(_) = class {
            crate::telemetry::metrics::global().image_requested(&ctx.registry, &ctx.repository);
        }
        match class {
            // With an account for this registry, regcache authenticates for its clients: they
            // must not start a login of their own (which would replace regcache's).
            Class::Ping if self.auth.has_accounts_for(&origin.host) => (local_ping(ctx.head), Outcome::Hit),
            Class::Ping => self.ping(&ctx).await,
            Class::Blob(digest) => self.blob(&ctx, &digest).await,
            Class::Manifest(Reference::Digest(digest)) => self.manifest_by_digest(&ctx, &digest).await,
            Class::Manifest(Reference::Tag(tag)) => self.manifest_by_tag(&ctx, &tag).await,
        }
    }

    /// Anything not cached (token endpoints, uploads, tag lists, …) goes upstream untouched.
    async fn bypass(&self, origin: &Origin, req: Request<Body>) -> Served {
        match self.upstream.forward(origin, req).await {
            Ok(mut res) => {
                res.headers_mut()
                    .insert(X_CACHE, HeaderValue::from_static(Outcome::Bypass.x_cache()));
                (res, Outcome::Bypass)
            }
            Err(e) => error(e),
        }
    }

    // ---- /v2/ ----

    /// Forwards the ping (clients learn how to authenticate from it); answers it locally when
    /// upstream is down, so cached images stay pullable.
    async fn ping(&self, ctx: &Ctx<'_>) -> Served {
        let method = if ctx.head { Method::HEAD } else { Method::GET };
        match self.ask_upstream(ctx, method).await {
            Ok(res) if !upstream_unavailable(res.status()) => passthrough(res, Outcome::Bypass),
            Ok(res) => {
                tracing::warn!(registry = %ctx.registry, status = res.status().as_u16(), "registry unavailable; answering /v2/ locally");
                (local_ping(ctx.head), Outcome::Stale)
            }
            Err(e) => {
                tracing::warn!(registry = %ctx.registry, error = %e, "registry unreachable; answering /v2/ locally");
                (local_ping(ctx.head), Outcome::Stale)
            }
        }
    }

    // ---- blobs ----

    async fn blob(&self, ctx: &Ctx<'_>, digest: &Digest) -> Served {
        if let Some(stored) = self.store.blob(digest).await {
            if let Some(refused) = self.authorize(ctx, Some(digest), false).await {
                return refused;
            }
            if let Some(res) = self.blob_from_file(ctx, digest, stored.path, stored.len).await {
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
        match self.downloads.join_or_start(digest, self.store.content_path(digest)) {
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
                if let Some(stored) = self.store.blob(digest).await {
                    handle.abandon();
                    if let Some(refused) = self.authorize(ctx, Some(digest), false).await {
                        return refused;
                    }
                    return match self.blob_from_file(ctx, digest, stored.path, stored.len).await {
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
                    store: self.store.clone(),
                    health: self.health.clone(),
                    url: ctx.url.clone(),
                    headers: headers::for_upstream(ctx.headers),
                    handle,
                    idle: self.body_idle,
                    digest: digest.clone(),
                    reply,
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

    // ---- manifests ----

    async fn manifest_by_digest(&self, ctx: &Ctx<'_>, digest: &Digest) -> Served {
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

    async fn manifest_by_tag(&self, ctx: &Ctx<'_>, tag: &str) -> Served {
        let accept = AcceptSet::from_headers(ctx.headers);
        let key = store::tag_key(&ctx.registry, &ctx.repository, tag, &accept.key());
        let policy = self.policy.load_full();
        let ttl = policy.tag_ttl(&ctx.registry, &ctx.repository, tag);
        let now = store::now_ms();
        let Some(memo) = self.tag_memo_or_seeded(ctx, tag, &key, &accept).await else {
            return self.tag_miss(ctx, &key, &accept).await;
        };
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
        let result = self
            .revalidations
            .run(key.clone(), move || revalidate(upstream, head_url, head_headers))
            .await
            .unwrap_or(Revalidation::Unavailable {
                reason: "revalidation task panicked".into(),
                head: None,
            });

        // The revalidation may have been another client's (coalesced): this one's access is
        // checked on its own (free for public repositories).
        let serving = matches!(result, Revalidation::Current(_) | Revalidation::Unavailable { .. });
        if serving && let Some(refused) = self.authorize(ctx, None, true).await {
            return refused;
        }
        match result {
            Revalidation::Current(fresh) if fresh.digest == memo.record.digest => {
                self.remember_tag(&key, fresh.clone(), Some(&memo)).await;
                self.serve_tag(ctx, &key, &accept, &fresh, Outcome::Revalidated, false)
                    .await
            }
            Revalidation::Current(fresh) => {
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
    async fn tag_miss(&self, ctx: &Ctx<'_>, key: &str, accept: &AcceptSet) -> Served {
        if ctx.head {
            let res = match self.ask_upstream(ctx, Method::HEAD).await {
                Ok(res) => res,
                Err(e) => return error(e),
            };
            if res.status() == StatusCode::OK
                && let Some(record) = record_from_head(res.headers())
                && accept.allows(&record.media_type)
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
            self.store_manifest(ctx, &digest, &media_type, &fetched.body).await;
            let record = TagRecord {
                digest: digest.to_string(),
                media_type: media_type.clone(),
                size: fetched.body.len() as u64,
                validated_at_ms: store::now_ms(),
            };
            self.remember_tag(key, record, None).await;
        }
        (
            manifest_response(false, &fetched.body, &media_type, &digest, Outcome::Miss, false),
            Outcome::Miss,
        )
    }

    /// Serves a tag from its record: HEAD from the record alone, GET with the stored manifest
    /// (fetched if only the record is known, e.g. after a HEAD-only client).
    async fn serve_tag(
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

    /// Sends the client's request upstream for this client alone (its own credentials), as
    /// `method`, following redirects.
    async fn ask_upstream(&self, ctx: &Ctx<'_>, method: Method) -> Result<Response<Incoming>, ProxyError> {
        self.requester(ctx)
            .send(method, ctx.url.clone(), headers::for_upstream(ctx.headers))
            .await
    }

    /// Upstream requests for this request's repository.
    fn requester(&self, ctx: &Ctx<'_>) -> Requester {
        Requester::new(
            self.upstream.clone(),
            self.auth.clone(),
            ctx.origin.host.clone(),
            ctx.repository.clone(),
        )
    }

    /// Records what a successful upstream answer to this client proves: the object is in the
    /// repository, the client's credentials are good for it (or, without credentials and
    /// without an account of regcache's, that the repository is public), and a manifest's
    /// references are in the repository too.
    async fn learn(&self, ctx: &Ctx<'_>, object: Option<&Digest>, manifest: Option<&[u8]>) {
        let repo = repo_key(&ctx.registry, &ctx.repository);
        if let Some(d) = object {
            self.add_member(ctx, &repo, d).await;
        }
        if let Some(body) = manifest {
            self.access.add_references(&repo, body);
        }
        if ctx.headers.contains_key(header::AUTHORIZATION) {
            self.access.set_verified(&auth_fingerprint(ctx.headers), &repo);
        } else if self.auth.account(&ctx.origin.host, &ctx.repository).is_none() {
            self.set_public(ctx, &repo).await;
        }
    }

    /// `digest` is in this repository: remembered, and recorded in the store for restarts.
    async fn add_member(&self, ctx: &Ctx<'_>, repo: &str, digest: &Digest) {
        if self.access.is_member(repo, digest) {
            return;
        }
        self.access.add_member(repo, digest);
        if self.store_usable()
            && let Err(e) = self.store.put_member(&ctx.registry, &ctx.repository, digest).await
        {
            self.store_failed(&e);
        }
    }

    /// The repository is readable anonymously: remembered, and recorded for restarts (where it
    /// lets cached public content be served while upstream is down).
    async fn set_public(&self, ctx: &Ctx<'_>, repo: &str) {
        if self.access.public(repo) == Some(true) {
            return;
        }
        self.access.set_public(repo, true);
        if self.store_usable()
            && let Err(e) = self.store.put_public(&ctx.registry, &ctx.repository).await
        {
            self.store_failed(&e);
        }
    }

    /// Membership from memory, else from the store.
    async fn is_member(&self, ctx: &Ctx<'_>, repo: &str, digest: &Digest) -> bool {
        if self.access.is_member(repo, digest) {
            return true;
        }
        let stored = self.store.is_member(&ctx.registry, &ctx.repository, digest).await;
        if stored {
            self.access.add_member(repo, digest);
        }
        stored
    }

    /// Public status from memory; when memory knows nothing, from the store if recent. The
    /// store is read once per repository (memory then holds the answer), never per request.
    async fn public_status(&self, ctx: &Ctx<'_>, repo: &str) -> Option<bool> {
        if let Some(p) = self.access.public(repo) {
            return Some(p);
        }
        let at = self.store.public_since(&ctx.registry, &ctx.repository).await?;
        let fresh = store::now_ms().saturating_sub(at) < self.policy.load().public_recheck.as_millis() as u64;
        fresh.then(|| {
            self.access.set_public(repo, true);
            true
        })
    }

    /// A manifest fetch answered 200, possibly for another client (coalesced): whether this
    /// client may have it. `Some(response)` is the refusal to send instead.
    async fn shared_fetch_allowed(&self, ctx: &Ctx<'_>, fetched: &Fetched) -> Option<Served> {
        if fetched.auth == auth_fingerprint(ctx.headers) {
            self.learn(ctx, None, Some(&fetched.body)).await;
            return None;
        }
        self.authorize(ctx, None, true).await
    }

    /// Whether this client may be served a cached object of this repository (`object` = a
    /// blob digest; `None` with `member` = a manifest or tag stored under this repository).
    /// `None` = yes; `Some(response)` = upstream's refusal (or 502 when upstream cannot be
    /// asked and nothing recent vouches for the client), to send instead.
    ///
    /// Public repositories cost nothing; private ones one upstream `HEAD` per credential and
    /// repository every few minutes (free on Docker Hub).
    async fn authorize(&self, ctx: &Ctx<'_>, object: Option<&Digest>, member: bool) -> Option<Served> {
        let repo = repo_key(&ctx.registry, &ctx.repository);
        let member = match object {
            Some(d) if !member => self.is_member(ctx, &repo, d).await,
            _ => member,
        };
        let public = self.public_status(ctx, &repo).await;
        if member && public == Some(true) {
            return None;
        }
        let credential = ctx
            .headers
            .contains_key(header::AUTHORIZATION)
            .then(|| auth_fingerprint(ctx.headers));
        let requester = self.requester(ctx);
        if member {
            if public == Some(true) {
                return None;
            }
            // The operator shares regcache's account with every client allowed to use the proxy.
            if credential.is_none() && requester.has_account() {
                return None;
            }
            if let Some(c) = &credential
                && self.access.verified(c, &repo)
            {
                return None;
            }
        }
        let headers = headers::for_upstream(ctx.headers);
        // Is it public? Asked once per repository (and object) per recheck interval.
        if public != Some(false) {
            match requester
                .send_anonymously(Method::HEAD, ctx.url.clone(), headers.clone())
                .await
            {
                Ok(res) if res.status() == StatusCode::OK => {
                    self.set_public(ctx, &repo).await;
                    if let Some(d) = object {
                        self.add_member(ctx, &repo, d).await;
                    }
                    return None;
                }
                Ok(res) if !upstream_unavailable(res.status()) => {
                    if public.is_none() {
                        self.access.set_public(&repo, false);
                    }
                    if credential.is_none() && !requester.has_account() {
                        // Upstream's own challenge, so that the client can log in.
                        return Some(refusal(res, ctx.head));
                    }
                }
                Ok(_) | Err(_) => return self.unverifiable(ctx, &repo, member, credential.as_deref()).await,
            }
        }
        match requester.send(Method::HEAD, ctx.url.clone(), headers).await {
            Ok(res) if res.status() == StatusCode::OK => {
                if let Some(d) = object {
                    self.add_member(ctx, &repo, d).await;
                }
                if let Some(c) = &credential {
                    self.access.set_verified(c, &repo);
                }
                None
            }
            Ok(res) if !upstream_unavailable(res.status()) => {
                tracing::info!(registry = %ctx.registry, repository = %ctx.repository, status = res.status().as_u16(), "cached content refused to a client upstream does not allow");
                Some(refusal(res, ctx.head))
            }
            Ok(_) | Err(_) => self.unverifiable(ctx, &repo, member, credential.as_deref()).await,
        }
    }

    /// Upstream cannot say whether this client may read the repository: serve only what a
    /// recent check vouches for.
    async fn unverifiable(&self, ctx: &Ctx<'_>, repo: &str, member: bool, credential: Option<&str>) -> Option<Served> {
        // Found public once (memory or store, however long ago) is what an outage relies on.
        let vouched = member
            && (self.access.public(repo) == Some(true)
                || credential.is_some_and(|c| self.access.verified_for_outage(c, repo))
                || self.store.public_since(&ctx.registry, &ctx.repository).await.is_some());
        if vouched {
            return None;
        }
        Some(error(ProxyError::Upstream {
            target: ctx.origin.host.to_string(),
            reason: "registry unavailable, and access to this cached content cannot be verified".into(),
        }))
    }

    /// Streams upstream's answer to the client's request back, uncached, labelled `outcome`.
    async fn relay(&self, ctx: &Ctx<'_>, method: Method, outcome: Outcome) -> Served {
        match self.ask_upstream(ctx, method).await {
            Ok(res) => passthrough(res, outcome),
            Err(e) => error(e),
        }
    }

    /// GETs a manifest, coalescing identical concurrent requests (same URL and `Accept`).
    async fn fetch_manifest(&self, ctx: &Ctx<'_>) -> Result<Fetched, ProxyError> {
        // Coalesced across credentials: with Docker Hub every CI job has its own token, and a
        // manifest GET is a counted pull. A refusal is not shared with different credentials.
        let key = format!("{}|{}", ctx.url, AcceptSet::from_headers(ctx.headers).key());
        let mine = auth_fingerprint(ctx.headers);
        let upstream = self.requester(ctx);
        let url = ctx.url.clone();
        let headers = headers::for_upstream(ctx.headers);
        let target = ctx.origin.host.to_string();
        let leader = mine.clone();
        let shared = self
            .manifest_fetches
            .run(key, move || fetch_buffered(upstream, url, headers, target, leader))
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
                )
                .await
            }
            other => other,
        }
    }

    async fn store_manifest(&self, ctx: &Ctx<'_>, digest: &Digest, media_type: &str, bytes: &Bytes) {
        if !self.store_usable() {
            return;
        }
        match self
            .store
            .put_manifest(&ctx.registry, &ctx.repository, digest, media_type, bytes)
            .await
        {
            Ok(()) => self.manifests.insert(
                store::manifest_key(&ctx.registry, &ctx.repository, digest),
                StoredManifest {
                    bytes: bytes.clone(),
                    media_type: media_type.to_string(),
                    digest: digest.clone(),
                },
            ),
            Err(e) => self.store_failed(&e),
        }
    }

    /// A manifest cached for this registry and repository: from memory, else from the store.
    async fn cached_manifest(&self, ctx: &Ctx<'_>, digest: &Digest) -> Option<StoredManifest> {
        let key = store::manifest_key(&ctx.registry, &ctx.repository, digest);
        self.notice_purges();
        if let Some(m) = self.manifests.get(&key) {
            return Some(m);
        }
        let m = self.store.manifest(&ctx.registry, &ctx.repository, digest).await?;
        self.access
            .add_references(&repo_key(&ctx.registry, &ctx.repository), &m.bytes);
        self.manifests.insert(key, m.clone());
        Some(m)
    }

    async fn tag_memo(&self, key: &str) -> Option<TagMemo> {
        self.notice_purges();
        if let Some(m) = self.tags.get(key) {
            return Some(m);
        }
        let record = self.store.tag(key).await?;
        let memo = TagMemo {
            persisted_ms: record.validated_at_ms,
            record,
        };
        self.tags.insert(key.to_string(), memo.clone());
        Some(memo)
    }

    /// The tag's record for this client's Accept set, else the one `regcache warm` or
    /// `regcache cache import` wrote ([`store::SEEDED_ACCEPT_KEY`]) if this client accepts its
    /// media type.
    ///
    /// Why a fallback rather than seeding every client's key: docker, containerd, skopeo,
    /// podman, buildkit and crane each send their own Accept list, and it changes between their
    /// versions; a seeded image missed by one unforeseen list would need upstream, which may be
    /// gone. Serving the seeded record is what upstream would do: registries return the stored
    /// manifest whenever its type is accepted (conversions happen only when it is not), and a
    /// client that does not accept it never gets it (checked here and in `serve_tag`). Revalidation
    /// then runs with the client's own headers and records under its own key.
    async fn tag_memo_or_seeded(&self, ctx: &Ctx<'_>, tag: &str, key: &str, accept: &AcceptSet) -> Option<TagMemo> {
        if let Some(memo) = self.tag_memo(key).await {
            return Some(memo);
        }
        let record = self
            .store
            .tag(&store::seeded_tag_key(&ctx.registry, &ctx.repository, tag))
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

    /// Remembers a tag resolution; writes it to disk when the digest changed or the stored
    /// validation time is old (so revalidations do not grow the index without bound).
    async fn remember_tag(&self, key: &str, record: TagRecord, previous: Option<&TagMemo>) {
        let now = store::now_ms();
        let persist = match previous {
            Some(p) => p.record.digest != record.digest || now.saturating_sub(p.persisted_ms) >= TAG_PERSIST_EVERY_MS,
            None => true,
        };
        let mut persisted_ms = previous.map_or(0, |p| p.persisted_ms);
        if persist && self.store_usable() {
            match self.store.put_tag(key, &record).await {
                Ok(()) => persisted_ms = record.validated_at_ms,
                Err(e) => self.store_failed(&e),
            }
        }
        self.tags.insert(key.to_string(), TagMemo { record, persisted_ms });
    }

    async fn blob_from_file(
        &self,
        ctx: &Ctx<'_>,
        digest: &Digest,
        path: std::path::PathBuf,
        total: u64,
    ) -> Option<Response<Body>> {
        blob_from_file(&self.evictor, ctx, digest, path, total).await
    }

    fn store_usable(&self) -> bool {
        self.health.usable()
    }

    fn store_failed(&self, e: &store::StoreError) {
        self.health.failed(e);
    }
}

enum Class {
    Ping,
    Blob(Digest),
    Manifest(Reference),
}

/// How a blob download began, told to the request that started it.
enum Started {
    /// Upstream answered 200; bytes are flowing into the download.
    Streaming,
    /// The store cannot be written: fetch for yourself.
    StoreUnavailable,
    /// Upstream answered something else (401, 404, …): pass it on.
    Refused(Response<Incoming>),
    /// Upstream could not be reached.
    Failed(ProxyError),
}

struct DownloadJob {
    evictor: Arc<Evictor>,
    upstream: Requester,
    store: ContentStore,
    health: Arc<StoreHealth>,
    url: Uri,
    headers: HeaderMap,
    handle: crate::cache::downloads::DownloadHandle,
    idle: Duration,
    digest: Digest,
    reply: tokio::sync::oneshot::Sender<Started>,
}

/// Fetches a blob into the store, reporting to the request that started it how it began.
async fn download_blob(job: DownloadJob) {
    let DownloadJob {
        evictor,
        upstream,
        store,
        health,
        url,
        headers,
        handle,
        idle,
        digest,
        reply,
    } = job;
    let writer = match store.blob_writer(&digest, None).await {
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
    let writer = writer.expect_len(total);
    handle.running(writer.temp_path().to_path_buf(), total);
    let _ = reply.send(Started::Streaming);
    run_download(handle, writer, res.into_body(), idle, digest).await;
    drop(in_flight);
    evictor.added();
}

/// Streams the upstream body into the store, publishing progress to readers.
async fn run_download(
    handle: crate::cache::downloads::DownloadHandle,
    mut writer: store::BlobWriter,
    mut body: Incoming,
    idle: Duration,
    digest: Digest,
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
                    crate::telemetry::metrics::global()
                        .upstream_bytes(crate::telemetry::metrics::BodyKind::Blob, data.len() as u64);
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
            handle.done(stored.len);
        }
        Err(e) => {
            tracing::warn!(%digest, error = %e, "blob from upstream rejected; not cached");
            handle.fail(&e.to_string());
        }
    }
}

/// GETs a manifest and buffers it (bounded: manifests are small and must be verified whole).
async fn fetch_buffered(
    upstream: Requester,
    url: Uri,
    headers: HeaderMap,
    target: String,
    auth: String,
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
        crate::telemetry::metrics::global()
            .upstream_bytes(crate::telemetry::metrics::BodyKind::Manifest, body.len() as u64);
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

/// Asks upstream for a tag's current digest with a HEAD.
async fn revalidate(upstream: Requester, url: Uri, headers: HeaderMap) -> Revalidation {
    match upstream.send(Method::HEAD, url, headers).await {
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
            } else if status == StatusCode::OK {
                match record_from_head(&h) {
                    Some(r) => Revalidation::Current(r),
                    None => Revalidation::NoDigest,
                }
            } else {
                Revalidation::Refused
            }
        }
    }
}

/// A tag record from manifest response headers (HEAD or GET).
fn record_from_head(h: &HeaderMap) -> Option<TagRecord> {
    let digest = h.get(DOCKER_CONTENT_DIGEST)?.to_str().ok()?.parse::<Digest>().ok()?;
    Some(TagRecord {
        digest: digest.to_string(),
        media_type: content_type(h),
        size: headers::content_length(h)?,
        validated_at_ms: store::now_ms(),
    })
}

fn upstream_unavailable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

fn content_type(h: &HeaderMap) -> String {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
        .unwrap_or_else(|| "application/octet-stream".to_string())
}

/// A short, non-reversible fingerprint of the client's credentials, to coalesce only requests
/// that upstream would answer alike.
fn auth_fingerprint(h: &HeaderMap) -> String {
    match h.get(header::AUTHORIZATION) {
        None => "anonymous".into(),
        Some(v) => Digest::of(Algorithm::Sha256, v.as_bytes()).hex()[..16].to_string(),
    }
}

fn error(e: ProxyError) -> Served {
    tracing::warn!(error = %e, "registry request failed");
    (e.into_response(), Outcome::Error)
}

/// Upstream's refusal of a check, for the client: its status and headers (`WWW-Authenticate`
/// included, so the client can log in), no body.
fn refusal(res: Response<Incoming>, head: bool) -> Served {
    let status = res.status();
    let mut h = res.headers().clone();
    headers::strip_hop_by_hop(&mut h);
    // The check was a HEAD: its length is not this answer's.
    h.remove(header::CONTENT_LENGTH);
    h.remove(header::CONTENT_TYPE);
    h.remove(DOCKER_CONTENT_DIGEST);
    let code = match status {
        StatusCode::UNAUTHORIZED => "UNAUTHORIZED",
        StatusCode::FORBIDDEN => "DENIED",
        StatusCode::NOT_FOUND => "NAME_UNKNOWN",
        _ => "DENIED",
    };
    let text = format!(
        r#"{{"errors":[{{"code":"{code}","message":"upstream refused these credentials for this repository"}}]}}"#
    );
    let mut res = if head {
        let mut r = Response::new(body::empty());
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
        *r.headers_mut() = h;
        r
    } else {
        let mut r = Response::new(body::full(text));
        *r.headers_mut() = h;
        r
    };
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    res.headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(Outcome::Deny.x_cache()));
    (res, Outcome::Deny)
}

fn passthrough(res: Response<Incoming>, outcome: Outcome) -> Served {
    let (mut parts, body) = res.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(X_CACHE, HeaderValue::from_static(outcome.x_cache()));
    (Response::from_parts(parts, body::boxed(body)), outcome)
}

fn fetched_response(f: &Fetched, outcome: Outcome) -> Served {
    let mut res = Response::new(body::full(f.body.clone()));
    *res.status_mut() = f.status;
    *res.headers_mut() = f.headers.clone();
    res.headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(outcome.x_cache()));
    (res, outcome)
}

fn head_only(status: StatusCode, h: &HeaderMap, outcome: Outcome) -> Served {
    let mut res = Response::new(body::empty());
    *res.status_mut() = status;
    *res.headers_mut() = h.clone();
    res.headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(outcome.x_cache()));
    (res, outcome)
}

fn local_ping(head: bool) -> Response<Body> {
    let mut res = Response::new(if head { body::empty() } else { body::full("{}") });
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
    h.insert(DOCKER_API_VERSION, HeaderValue::from_static("registry/2.0"));
    h.insert(X_CACHE, HeaderValue::from_static(Outcome::Stale.x_cache()));
    h.insert(header::WARNING, HeaderValue::from_static("110 - \"Response is Stale\""));
    res
}

fn set_manifest_headers(h: &mut HeaderMap, len: u64, media_type: &str, digest: &Digest, outcome: Outcome, stale: bool) {
    headers::set(h, header::CONTENT_TYPE, media_type);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers::set(h, DOCKER_CONTENT_DIGEST, &digest.to_string());
    headers::set(h, header::ETAG, &format!("\"{digest}\""));
    h.insert(DOCKER_API_VERSION, HeaderValue::from_static("registry/2.0"));
    h.insert(X_CACHE, HeaderValue::from_static(outcome.x_cache()));
    if stale {
        h.insert(header::WARNING, HeaderValue::from_static("110 - \"Response is Stale\""));
    }
}

fn manifest_response(
    head: bool,
    bytes: &Bytes,
    media_type: &str,
    digest: &Digest,
    outcome: Outcome,
    stale: bool,
) -> Response<Body> {
    let mut res = Response::new(if head { body::empty() } else { body::full(bytes.clone()) });
    set_manifest_headers(
        res.headers_mut(),
        bytes.len() as u64,
        media_type,
        digest,
        outcome,
        stale,
    );
    res
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

/// A cached blob's answer. The file is opened before answering (and kept from eviction while
/// it is read), so a removal meanwhile cannot cut the response short; `None` if it is gone
/// already (then the caller fetches it again).
async fn blob_from_file(
    evictor: &Arc<Evictor>,
    ctx: &Ctx<'_>,
    digest: &Digest,
    path: std::path::PathBuf,
    total: u64,
) -> Option<Response<Body>> {
    // Content verified when written; clients verify again. Served with plain reads.
    let (status, start, end) = match range_head(ctx.headers, total) {
        Ok(r) => r,
        Err(res) => return Some(*res),
    };
    let guard = evictor.reading(&path);
    let body = if ctx.head {
        body::empty()
    } else {
        let file = tokio::fs::File::open(&path).await.ok()?.into_std().await;
        let stream = crate::cache::downloads::open_file_stream(file, path, start, end - start);
        let stream = stream.map_ok(move |chunk| {
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
async fn follow(ctx: &Ctx<'_>, digest: &Digest, dl: &Arc<crate::cache::downloads::Download>) -> Option<Served> {
    let state = dl.started().await;
    blob_from_download(ctx, digest, dl, state).map(|res| (res, Outcome::Miss))
}

/// A response following a download in progress, or `None` if it never started (the caller
/// then asks upstream itself).
fn blob_from_download(
    ctx: &Ctx<'_>,
    digest: &Digest,
    dl: &Arc<crate::cache::downloads::Download>,
    state: DownloadState,
) -> Option<Response<Body>> {
    let total = match state {
        DownloadState::Running { total, .. } => total,
        DownloadState::Done { len } => Some(len),
        DownloadState::Connecting | DownloadState::Abandoned => return None,
        DownloadState::Failed(why) => {
            return Some(
                error(ProxyError::Upstream {
                    target: ctx.origin.host.to_string(),
                    reason: format!("blob download failed: {why}"),
                })
                .0,
            );
        }
    };
    let (status, start, end) = match total {
        Some(t) => match range_head(ctx.headers, t) {
            Ok((s, a, b)) => (s, a, Some(b)),
            Err(res) => return Some(*res),
        },
        // Unknown length: ranges cannot be checked yet; send everything.
        None => (StatusCode::OK, 0, None),
    };
    let body = if ctx.head {
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
