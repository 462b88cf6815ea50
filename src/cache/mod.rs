//! The pull-through cache: for a registry request, what to serve from the store, when to ask
//! upstream, and how — the hit / miss / revalidated / stale decision behind every answer.
//!
//! - Blobs and manifests by digest are immutable: a stored copy is served without contacting
//!   upstream. A blob miss becomes one shared download ([`downloads`]) that every client
//!   follows, however many ask at once.
//! - Tags resolve through the tag records, revalidated with a `HEAD` when stale; served stale
//!   while upstream is down, within `max_stale`.
//! - Private content goes only to clients upstream accepts ([`access`]).
//! - A store that cannot be written never fails a pull: the response is passed through.
//! - The store is kept within its disk budget ([`Evictor`]).
//!
//! Owns: [`RegistryCache`], the cache's records in the store ([`Records`]), the download table,
//! single flight, repository access, eviction, noticing purges by other processes.
//!
//! Must not: accept connections or terminate TLS (the proxy and other listeners do), know how
//! the store keeps bytes (only the `store` traits), or format metrics.
//!
//! May import: `store`, `upstream`, `registry`, `telemetry`, `config`, `body`, `error`, `clock`.

mod access;
mod answers;
mod blobs;
mod download;
mod downloads;
mod eviction;
mod freshness;
mod manifests;
mod peer;
mod purge_watch;
mod records;
mod relay;
mod repo_access;
mod single_flight;
mod tags;
mod transfer;

pub use eviction::Evictor;
#[cfg(test)]
pub use records::tag_key;
pub use records::{RecordKey, Records, StoredManifest, TagFreshness, TagRecord, manifest_media_type, seeded_tag_key};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, Method, Request, Uri};
use tokio_util::task::TaskTracker;

use crate::body::Body;
use crate::clock::now_ms;
use crate::config::{CachePolicy, canonical_registry};
use crate::error::ProxyError;
use crate::registry::{Digest, Reference, RegistryRequest, canonical_repository, classify};
use crate::store::{Store, StoreError};
use crate::telemetry::{Listener, Metrics, Outcome};
use crate::upstream::{Origin, PeerClient, UpstreamAuth, UpstreamClient};
use answers::{Fetched, Served, error, local_ping};
use downloads::Downloads;
use purge_watch::PurgeWatch;
use repo_access::RepoAccess;
use single_flight::SingleFlight;
use tags::{Revalidation, TagMemo};

/// The store `config` names: `data_dir/cache` on the local disk, or the bucket (its spools
/// under `data_dir/spool`, on the local disk like every download's, its local tier under
/// `data_dir/tier`).
///
/// # Errors
/// If the bucket's settings do not make a client.
pub fn open_store(
    config: &crate::config::StoreConfig,
    data_dir: &std::path::Path,
    counter: Arc<dyn crate::store::RequestCounter>,
) -> Result<Store, StoreError> {
    match config {
        crate::config::StoreConfig::Local => Ok(Store::local(data_dir.join("cache"))),
        crate::config::StoreConfig::S3(s3) => {
            Store::s3((**s3).clone(), data_dir.join("spool"), data_dir.join("tier"), counter)
        }
    }
}

/// After a store write fails, skip caching for this long instead of failing every request.
const STORE_BACKOFF_MS: u64 = 30_000;
/// Bytes of manifests kept in memory (a typical manifest is 1–10 KiB).
const MANIFEST_MEMORY: u64 = 16 * 1024 * 1024;

/// The caching layer between intercepted registry requests and upstream.
pub struct RegistryCache {
    /// Content, and the cache's records in the store's index.
    records: Records,
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
    tasks: TaskTracker,
    /// Keeps the store within its disk budget; told about reads and downloads.
    evictor: Arc<Evictor>,
    tags: moka::sync::Cache<String, TagMemo>,
    /// Recently used manifests, so that a GET of a cached manifest costs no disk I/O. They were
    /// verified when stored; this is a copy of the store, never a replacement for it.
    manifests: moka::sync::Cache<String, StoredManifest>,
    manifest_fetches: SingleFlight<String, Result<Fetched, ProxyError>>,
    revalidations: SingleFlight<String, Revalidation>,
    health: Arc<StoreHealth>,
    /// The other replicas of a fleet, when they stream blobs in flight to each other.
    peers: Option<PeerClient>,
    /// Purges by `regcache cache rm`/`verify --repair` in other processes: checked on each
    /// memory lookup, which then starts afresh.
    purges: PurgeWatch,
    metrics: Arc<Metrics>,
}

/// What a [`RegistryCache`] is built from.
pub struct CacheParts {
    /// Where content and records are.
    pub store: Store,
    /// The pooled upstream client.
    pub upstream: UpstreamClient,
    /// regcache's own upstream accounts.
    pub auth: Arc<UpstreamAuth>,
    /// The disk budget's keeper.
    pub evictor: Arc<Evictor>,
    /// Where download tasks run (a graceful shutdown waits for them).
    pub tasks: TaskTracker,
    /// Where cache events are counted.
    pub metrics: Arc<Metrics>,
    /// The other replicas of a fleet, when they stream blobs in flight to each other.
    pub peers: Option<PeerClient>,
}

/// Whether the store can be written; shared with download tasks. A write failure (disk full,
/// I/O error) makes responses pass through uncached for a while instead of failing pulls.
struct StoreHealth {
    broken_until_ms: AtomicU64,
    failures: AtomicU64,
    metrics: Arc<Metrics>,
}

impl StoreHealth {
    fn usable(&self) -> bool {
        now_ms() >= self.broken_until_ms.load(Ordering::Relaxed)
    }

    fn failed(&self, e: &StoreError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.metrics.store_write_failed();
        self.broken_until_ms
            .store(now_ms() + STORE_BACKOFF_MS, Ordering::Relaxed);
        tracing::error!(error = %e, "cache write failed; passing responses through uncached for 30 s");
    }
}

/// Everything about one registry request that the handlers need.
struct Ctx<'a> {
    origin: &'a Origin,
    /// A mirror's clients talk to regcache only and cannot run upstream's token flow, so
    /// regcache runs it for them (with its account, or anonymously); a proxy's clients run it
    /// themselves unless regcache holds an account.
    listener: Listener,
    registry: String,
    repository: String,
    head: bool,
    headers: &'a HeaderMap,
    url: Uri,
}

impl RegistryCache {
    /// A cache over `parts.store`, asking `parts.upstream` on misses; `body_idle` bounds how
    /// long an upstream body may stall.
    pub fn new(parts: CacheParts, policy: CachePolicy, body_idle: Duration) -> Self {
        let CacheParts {
            store,
            upstream,
            auth,
            evictor,
            tasks,
            metrics,
            peers,
        } = parts;
        Self {
            purges: PurgeWatch::new(store.clone()),
            records: Records::new(store),
            downloads: Downloads::new(metrics.clone()),
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
            health: Arc::new(StoreHealth {
                broken_until_ms: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                metrics: metrics.clone(),
            }),
            peers,
            metrics,
        }
    }

    /// Replaces tag freshness rules (a configuration reload); requests under way keep theirs.
    pub fn set_policy(&self, policy: CachePolicy) {
        self.policy.store(Arc::new(policy));
    }

    /// The store this cache serves from.
    pub fn store(&self) -> &Store {
        self.records.store()
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

    /// Serves one request for a registry host that came in on `listener`.
    pub async fn handle(&self, origin: &Origin, req: Request<Body>, listener: Listener) -> Served {
        let class = classify(req.method(), req.uri().path());
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
        let registry = canonical_registry(&origin.host);
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let url: Uri = match format!("{}{}", origin.base_url(), path).parse() {
            Ok(u) => u,
            Err(e) => return error(ProxyError::BadRequest(format!("cannot build upstream URI: {e}"))),
        };
        let ctx = Ctx {
            origin,
            listener,
            repository: canonical_repository(&registry, &name),
            registry,
            head: req.method() == Method::HEAD,
            headers: req.headers(),
            url,
        };
        if let Class::Manifest(_) = class {
            self.metrics.image_requested(&ctx.registry, &ctx.repository);
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

    fn store_usable(&self) -> bool {
        self.health.usable()
    }

    fn store_failed(&self, e: &StoreError) {
        self.health.failed(e);
    }
}

enum Class {
    Ping,
    Blob(Digest),
    Manifest(Reference),
}
