//! What the cache holds, read and managed from outside the request path: the inventory behind
//! `regcache cache ls/stats`, purges (`cache rm`, `DELETE /_regcache/cache/<ref>`) that keep
//! content other images still use, and re-hashing (`cache verify --repair`). Safe beside a
//! running server on the same store: it reads snapshots, and announces every purge so that
//! the server drops what it keeps in memory.
//!
//! Owns: [`Inventory`] (a snapshot of blobs and records, and the images they make up), the
//! references `cache rm` takes ([`PurgeRef`]), [`PurgePlan`], [`CacheStats`], [`verify`].
//!
//! Must not: serve requests, talk to upstream, or know how the store keeps bytes.
//!
//! May import: `cache` (its record keys), `store`, `registry`, `config`.

mod inventory;
mod purge;
mod reference;
mod stats;
mod verify;

pub use inventory::{ImageFilter, ImageSummary, Inventory, InventoryError};
pub use purge::{PurgeError, PurgeReport, purge};
pub use reference::PurgeRef;
pub use stats::{CacheStats, disk_space};
pub use verify::{VerifyReport, verify};
