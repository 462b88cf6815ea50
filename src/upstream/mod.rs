//! Talking to upstream registries: one pooled HTTPS client for every registry (trust roots,
//! `--connect-to` overrides, timeouts, redirects followed inside regcache), the registries'
//! token flow with regcache's own accounts, and the egress guard that keeps client-driven
//! connections away from loopback, link-local and the proxy itself (SSRF).
//!
//! Owns: [`UpstreamClient`], [`Origin`], [`UpstreamAuth`] and [`Requester`] (a request as
//! the client or as regcache), errors mapped to [`ProxyError`](crate::error::ProxyError), and
//! [`PeerClient`], which streams a blob in flight from another replica of a fleet.
//!
//! Must not: cache anything beyond connections and tokens, or know about the store.
//!
//! May import: `registry`, `telemetry`, `config`, `body`, `error`.

mod auth;
mod buffered_tcp;
mod client;
mod credential_helper;
mod dial;
mod egress;
mod peer;

pub use auth::{Requester, UpstreamAuth};
pub use client::{Origin, UpstreamClient, UpstreamSetupError};
pub use peer::{PEER_BLOB_PATH, PeerBody, PeerClient, content_range};
