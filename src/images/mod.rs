//! Whole images moved in and out of the store without a client pulling them: `regcache warm`
//! (fetched from upstream through the same client and accounts `serve` uses), `regcache cache
//! export`/`import` (OCI image layouts, for air-gapped machines), and recording an image as a
//! pull through the proxy would leave it ([`seed`]), so that the cache serves it the same way.
//!
//! Owns: [`Warmer`], [`Exporter`], [`Importer`], and the order in which an image's records are
//! written (a tag never before what it leads to).
//!
//! Must not: print, draw progress bars or read the command line (the CLI does, through
//! [`Progress`]), or accept connections.
//!
//! May import: `cache` (its records), `store`, `upstream`, `registry`, `telemetry`, `config`,
//! `error`, `clock`.

mod layout;
mod seed;
mod warm;

pub use layout::{Exporter, INDEX_FILE, Importer, LayoutError};
pub use warm::{IMAGE_JOBS, WarmError, WarmReport, Warmer};

/// How the transfer of one image is shown (bars on a terminal, lines elsewhere: the CLI's
/// choice).
pub trait Progress: Sync {
    /// What is happening now ("resolving", "fetching 3 blobs").
    fn stage(&self, what: &str);
    /// More bytes to transfer.
    fn add_total(&self, bytes: u64);
    /// Bytes transferred.
    fn advance(&self, bytes: u64);
    /// A blob is complete.
    fn blob_done(&self, digest: &str, bytes: u64);
}
