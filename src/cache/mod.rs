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
mod blobs;
mod download;
mod downloads;
mod eviction;
mod manifests;
mod purge_watch;
mod records;
mod registry_cache;
mod relay;
mod repo_access;
mod single_flight;
mod tags;

pub use eviction::{Evictor, GcReport};
pub use records::{
    RecordKey, Records, SEEDED_ACCEPT_KEY, StoredManifest, TagRecord, manifest_key, manifest_media_type,
    seeded_tag_key, tag_key,
};
pub use registry_cache::{CacheParts, RegistryCache};
