//! Recording a whole image in the store the way pulls through the proxy leave it, for
//! `regcache warm` and `regcache cache import`: the cache then serves it exactly as if a client
//! had pulled it.
//!
//! Order matters, because `serve` may be reading the same store meanwhile: blobs are already
//! committed (verified) by the caller; then manifests (children before their index), then
//! repository membership and public status (what access control asks, see
//! the cache's repository access), and the tag record last. A tag is thus never visible before
//! everything it leads to is, and an interrupted seeding leaves no entry that points at missing
//! content.

use bytes::Bytes;

use crate::cache::{Records, TagFreshness, TagRecord, seeded_tag_key};
use crate::clock::now_ms;
use crate::registry::{Digest, ImageRef, Reference};
use crate::store::StoreError;

/// A manifest with its digest and media type.
#[derive(Debug, Clone)]
pub struct SeedManifest {
    /// Its digest (the bytes were verified against it).
    pub digest: Digest,
    /// Media type to serve it with.
    pub media_type: String,
    /// The exact bytes.
    pub bytes: Bytes,
}

/// An image whose blobs are all in the store, ready to be recorded.
#[derive(Debug)]
pub struct SeedImage<'a> {
    /// Registry, repository and (for a tag) the tag to record.
    pub image: &'a ImageRef,
    /// The manifest the reference resolves to (an index, or an image manifest).
    pub top: SeedManifest,
    /// Child manifests of an index that were fetched (the chosen platforms).
    pub children: Vec<SeedManifest>,
    /// Every blob of the chosen images (config and layers), already committed to the store.
    pub blobs: Vec<Digest>,
    /// Whether the repository is readable anonymously (recorded so that cached content is
    /// served to any client, upstream reachable or not).
    pub public: bool,
}

/// Writes manifests, membership, public status and the tag record; see the module docs.
///
/// # Errors
/// The first store failure (what was written before it stays: it points at present content).
pub async fn record(store: &Records, seed: &SeedImage<'_>) -> Result<(), StoreError> {
    let (registry, repository) = (&seed.image.registry, &seed.image.repository);
    for m in seed.children.iter().chain(std::iter::once(&seed.top)) {
        if store.manifest(registry, repository, &m.digest).await.is_none() {
            store
                .put_manifest(registry, repository, &m.digest, &m.media_type, &m.bytes)
                .await?;
        }
    }
    let members = seed
        .blobs
        .iter()
        .chain(seed.children.iter().map(|m| &m.digest))
        .chain(std::iter::once(&seed.top.digest));
    for digest in members {
        if !store.is_member(registry, repository, digest).await {
            store.put_member(registry, repository, digest).await?;
        }
    }
    if seed.public {
        store.put_public(registry, repository).await?;
    }
    if let Reference::Tag(tag) = &seed.image.reference {
        let record = TagRecord {
            digest: seed.top.digest.to_string(),
            media_type: seed.top.media_type.clone(),
            size: seed.top.bytes.len() as u64,
            validated_at_ms: now_ms(),
            upstream: TagFreshness::default(),
        };
        store
            .put_tag(&seeded_tag_key(registry, repository, tag), &record)
            .await?;
    }
    Ok(())
}
