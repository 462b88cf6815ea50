//! What every listener shares — the forward proxy (`proxy`) and the registry mirror
//! (`mirror`): who may use it (htpasswd, source allowlist), server certificates minted from
//! regcache's CA or read from files, bounds on client input, the HTTP server's settings, and
//! the [`Gateway`] through which a listener's requests reach the cache (or, for hosts that are
//! not registries, upstream), logged once each.
//!
//! Owns: [`Htpasswd`] and [`ClientGate`], [`LeafCertCache`], input limits, [`Gateway`], the
//! server settings ([`server`]), the [`LocalService`] seam to regcache's own endpoints.
//!
//! Must not: accept connections or decide what a request means (the listeners do), read or
//! write the store, or speak the registry protocol (the cache does).
//!
//! May import: `cache`, `upstream`, `ca`, `registry`, `telemetry`, `config`, `body`, `clock`.

mod client_auth;
mod gateway;
mod leaf_certs;
pub mod limits;
pub mod server;

pub use client_auth::{AuthCheck, ClientGate, Htpasswd, HtpasswdError, client_allowed};
pub use gateway::Gateway;
pub use leaf_certs::LeafCertCache;

use std::net::SocketAddr;

use http::{Request, Response};

use crate::body::Body;

/// Requests addressed to regcache itself (`/`, `/healthz`, `/metrics`, `/ca.crt`, the admin
/// API), as a listener receives them: the proxy's (sent to it directly, or as `http://`
/// requests for its own address) or, when the proxy listener is off, the mirror's. The
/// listener logs them; what they answer is the admin layer's business.
#[async_trait::async_trait]
pub trait LocalService: Send + Sync {
    /// The answer to `req` from `client`.
    async fn respond(&self, req: Request<()>, client: SocketAddr) -> Response<Body>;
}
