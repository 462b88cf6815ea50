//! What every listener shares — the forward proxy (`proxy`) and the registry mirror
//! (`mirror`): who may use it (htpasswd, source allowlist), server certificates minted from
//! regcache's CA or read from files, bounds on client input, the HTTP server's settings, and
//! the [`Gateway`] through which a listener's requests reach the cache (or, for hosts that are
//! not registries, upstream), logged once each.
//!
//! Owns: [`Htpasswd`] and [`ClientGate`], [`LeafCertCache`], input limits, [`Gateway`], the
//! server settings ([`server`]).
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
