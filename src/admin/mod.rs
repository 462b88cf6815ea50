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
mod health;
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

pub use health::StoreCheck;
pub use reload::RELOAD_PATH;

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
    health: Arc<StoreCheck>,
}

impl AdminService {
    /// Endpoints serving `ca_pem` at `/ca.crt`, `metrics` at `/metrics`, `cache`'s admin API,
    /// reloads through `reload`, and `/healthz` from `health`.
    pub fn new(
        ca_pem: String,
        cache: Arc<RegistryCache>,
        metrics: Arc<Metrics>,
        reload: Arc<dyn Reload>,
        health: Arc<StoreCheck>,
    ) -> Self {
        Self {
            endpoints: endpoints::LocalEndpoints::new(ca_pem),
            cache,
            metrics,
            reload,
            health,
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
            let verbose = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "verbose" || p.starts_with("verbose=")));
            self.health.respond(&self.cache, verbose)
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
