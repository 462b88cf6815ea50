//! The registry protocol as regcache needs it: which request a path is (OCI distribution-spec
//! "Pulling manifests", "Pulling blobs"), repository names, tags and digests, image
//! references as people type them, what a manifest references, `Range`, and header hygiene.
//!
//! Owns: parsing and classification, with registry-style errors for malformed input. Pure
//! functions and value types.
//!
//! Must not: do I/O of any kind (no sockets, no files), or decide what is cached.
//!
//! May import: `config` (host names), `body` (registry JSON errors).

mod digest;
pub mod headers;
mod image_ref;
pub mod manifest;
pub mod range;
mod request;

pub use digest::{Algorithm, Digest, Hasher};
pub use image_ref::{DOCKER_HUB_HOST, ImageRef};
pub use request::{
    AcceptSet, ErrorCode, InvalidRequest, Reference, RegistryRequest, canonical_repository, classify, split_repository,
};
