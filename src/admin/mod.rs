//! What regcache answers about itself: the banner (or the HTML status page for browsers),
//! `/healthz`, `/metrics`, `/ca.crt`, the client setup script (`/setup/systemd`), the cache's
//! admin API (`/_regcache/cache`, loopback only), `POST /_regcache/reload`, and the fleet's
//! peer endpoint (`/_regcache/peer/blobs/<digest>`, for replicas showing the shared secret).
//!
//! Owns: [`AdminService`], the status page, the setup script template.
//!
//! Must not: accept connections (a listener hands requests in), or change the configuration
//! itself (a reload goes through [`Reload`], which `app` implements).
//!
//! May import: `catalog`, `cache`, `upstream`, `telemetry`, `config`, `body`.

mod cache_api;
mod endpoints;
mod reload;
mod setup_script;
mod status_page;

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};

use crate::body::Body;
use crate::cache::RegistryCache;
use crate::telemetry::Metrics;
use crate::upstream::PEER_BLOB_PATH;

pub use reload::RELOAD_PATH;

/// `/healthz`: always `200 ok` while regcache serves — a store it cannot reach only makes
/// pulls pass through uncached, which a balancer must not turn into an outage — with the
/// store's state on the next line.
async fn health(cache: &RegistryCache) -> Response<Body> {
    let store = cache.store().blobs();
    let line = match store.probe().await {
        Ok(()) => format!("store {}: reachable", store.describe()),
        Err(e) => format!(
            "store {}: unreachable ({e}); pulls pass through uncached",
            store.describe()
        ),
    };
    crate::body::text(http::StatusCode::OK, format!("ok\n{line}\n"))
}

/// Re-reads the configuration and applies it (what SIGHUP does).
#[async_trait::async_trait]
pub trait Reload: Send + Sync {
    /// One line per change, or why the new configuration was refused (the running one stays).
    async fn reload(&self) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>>;
}

/// Regcache's own endpoints.
pub struct AdminService {
    endpoints: endpoints::LocalEndpoints,
    cache: Arc<RegistryCache>,
    metrics: Arc<Metrics>,
    reload: Arc<dyn Reload>,
}

impl AdminService {
    /// Endpoints serving `ca_pem` at `/ca.crt`, `metrics` at `/metrics`, `cache`'s admin API,
    /// and reloads through `reload`.
    pub fn new(ca_pem: String, cache: Arc<RegistryCache>, metrics: Arc<Metrics>, reload: Arc<dyn Reload>) -> Self {
        Self {
            endpoints: endpoints::LocalEndpoints::new(ca_pem),
            cache,
            metrics,
            reload,
        }
    }

    /// The answer to `req` from `client`.
    pub async fn respond<B>(&self, req: &Request<B>, client: SocketAddr) -> Response<Body> {
        let path = req.uri().path();
        if path == RELOAD_PATH {
            reload::respond(req, client, &*self.reload).await
        } else if cache_api::is_cache_path(path) {
            cache_api::respond(req, client, &self.cache).await
        } else if path == "/healthz" && (req.method() == http::Method::GET || req.method() == http::Method::HEAD) {
            health(&self.cache).await
        } else if let Some(digest) = path.strip_prefix(PEER_BLOB_PATH)
            && (req.method() == http::Method::GET || req.method() == http::Method::HEAD)
        {
            self.cache
                .serve_peer(req.headers(), req.method() == http::Method::HEAD, digest)
                .await
        } else {
            self.endpoints.respond(req, &self.metrics)
        }
    }
}
