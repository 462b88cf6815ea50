//! `regcache cache stats`: what the store holds, in totals and per registry, and how much room
//! the filesystem has left.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::Serialize;

use crate::catalog::inventory::Inventory;
use crate::registry::Digest;

/// Hit and miss counts live in the server's memory only (its `/metrics`); the store has none.
pub const HIT_MISS_NOTE: &str =
    "not recorded in the store: a running server counts them in regcache_requests_total at /metrics";

/// Files and bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Count {
    /// How many.
    pub count: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, bytes: u64) {
        self.count += 1;
        self.bytes += bytes;
    }
}

/// One registry's share. Content shared between registries counts in each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RegistryStats {
    /// Canonical registry name.
    pub registry: String,
    /// Repositories with a tag, manifest or blob recorded.
    pub repositories: u64,
    /// Distinct `repository:tag`s.
    pub tags: u64,
    /// Manifest entries (a manifest cached for two repositories counts twice).
    pub manifests: u64,
    /// Cached blobs its manifests reference or upstream served through it.
    pub blobs: u64,
    /// Bytes of its cached manifests and blobs.
    pub bytes: u64,
}

/// Free space on the filesystem holding the data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DiskSpace {
    /// Size of the filesystem.
    pub total_bytes: u64,
    /// Free bytes.
    pub free_bytes: u64,
    /// Free bytes an unprivileged process may use.
    pub available_bytes: u64,
}

/// `regcache cache stats` (also its `--json` form).
#[derive(Debug, Clone, Serialize)]
pub struct CacheStats {
    /// The cache directory.
    pub cache_dir: String,
    /// All content files (blobs and manifests).
    pub content: Count,
    /// Blob content files (config and layers).
    pub blobs: Count,
    /// Manifest content files (one per digest, however many repositories share it).
    pub manifests: Count,
    /// Live index entries of every kind (tags per `Accept` set, manifests, repository records).
    pub index_entries: u64,
    /// Manifest index entries (per registry and repository).
    pub manifest_entries: u64,
    /// Distinct `registry/repository:tag`s.
    pub tags: u64,
    /// Distinct repositories.
    pub repositories: u64,
    /// Blobs no cached manifest references (pulled by digest alone, or left by a purge).
    pub unreferenced_blobs: Count,
    /// Partial downloads (in progress now, or left by a crash until the next start).
    pub temporary: Count,
    /// Bytes of the index.
    pub index_bytes: u64,
    /// Per registry, by name.
    pub registries: Vec<RegistryStats>,
    /// The filesystem's free space (`null` when it cannot be read).
    pub disk: Option<DiskSpace>,
    /// Always `null`: see `hit_miss`.
    pub hits: Option<u64>,
    /// Always `null`: see `hit_miss`.
    pub misses: Option<u64>,
    /// Why there are no hit and miss counts.
    pub hit_miss: &'static str,
}

impl CacheStats {
    /// Sums up `inv`; `disk` is the filesystem the store lives on.
    pub fn of(inv: &Inventory, disk: Option<DiskSpace>) -> Self {
        let manifest_digests = inv.manifest_digests();
        let mut content = Count::default();
        let mut blobs = Count::default();
        let mut manifests = Count::default();
        for (d, c) in &inv.content {
            content.add(c.size);
            if manifest_digests.contains(d) {
                manifests.add(c.size);
            } else {
                blobs.add(c.size);
            }
        }
        let referenced: HashSet<&Digest> = inv
            .references
            .values()
            .flat_map(|r| r.blobs.iter().chain(&r.children))
            .collect();
        let mut unreferenced_blobs = Count::default();
        for (d, c) in &inv.content {
            if !manifest_digests.contains(d) && !referenced.contains(d) {
                unreferenced_blobs.add(c.size);
            }
        }

        let mut per: BTreeMap<&str, Acc<'_>> = BTreeMap::new();
        for t in &inv.tags {
            let acc = per.entry(&t.registry).or_default();
            acc.repos.insert(&t.repository);
            acc.tags.insert((&t.repository, &t.tag));
        }
        for m in &inv.manifests {
            let acc = per.entry(&m.registry).or_default();
            acc.repos.insert(&m.repository);
            acc.manifest_entries += 1;
            acc.manifests.insert(&m.digest);
            if let Some(r) = inv.references.get(&m.digest) {
                acc.blobs.extend(r.blobs.iter());
            }
        }
        for m in &inv.members {
            let acc = per.entry(&m.registry).or_default();
            acc.repos.insert(&m.repository);
            if let Some(d) = &m.digest
                && !manifest_digests.contains(d)
            {
                acc.blobs.insert(d);
            }
        }
        let registries = per
            .into_iter()
            .map(|(registry, acc)| {
                let cached_blobs: Vec<&Digest> = acc
                    .blobs
                    .iter()
                    .copied()
                    .filter(|d| inv.content.contains_key(*d))
                    .collect();
                let bytes = acc
                    .manifests
                    .iter()
                    .chain(&cached_blobs)
                    .filter_map(|d| inv.content.get(*d))
                    .map(|c| c.size)
                    .sum();
                RegistryStats {
                    registry: registry.to_string(),
                    repositories: acc.repos.len() as u64,
                    tags: acc.tags.len() as u64,
                    manifests: acc.manifest_entries,
                    blobs: cached_blobs.len() as u64,
                    bytes,
                }
            })
            .collect::<Vec<_>>();
        let repositories = inv
            .tags
            .iter()
            .map(|t| (&t.registry, &t.repository))
            .chain(inv.manifests.iter().map(|m| (&m.registry, &m.repository)))
            .chain(inv.members.iter().map(|m| (&m.registry, &m.repository)))
            .collect::<HashSet<_>>()
            .len() as u64;
        let tags = inv
            .tags
            .iter()
            .map(|t| (&t.registry, &t.repository, &t.tag))
            .collect::<HashSet<_>>()
            .len() as u64;
        Self {
            cache_dir: inv.location.clone(),
            content,
            blobs,
            manifests,
            index_entries: (inv.tags.len() + inv.manifests.len() + inv.members.len() + inv.publics.len()) as u64,
            manifest_entries: inv.manifests.len() as u64,
            tags,
            repositories,
            unreferenced_blobs,
            temporary: Count {
                count: inv.temporary.0,
                bytes: inv.temporary.1,
            },
            index_bytes: inv.index_bytes,
            registries,
            disk,
            hits: None,
            misses: None,
            hit_miss: HIT_MISS_NOTE,
        }
    }
}

/// Per-registry accumulator.
#[derive(Default)]
struct Acc<'a> {
    repos: HashSet<&'a str>,
    tags: HashSet<(&'a str, &'a str)>,
    manifest_entries: u64,
    manifests: HashSet<&'a Digest>,
    blobs: HashSet<&'a Digest>,
}

/// Free space of the filesystem holding `path` (`statvfs`).
pub fn disk_space(path: &Path) -> Option<DiskSpace> {
    let s = rustix::fs::statvfs(path).ok()?;
    Some(DiskSpace {
        total_bytes: s.f_blocks.saturating_mul(s.f_frsize),
        free_bytes: s.f_bfree.saturating_mul(s.f_frsize),
        available_bytes: s.f_bavail.saturating_mul(s.f_frsize),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use crate::cache::Records;
    use crate::registry::Algorithm;
    use crate::store::Store;

    #[tokio::test]
    async fn blobs_manifests_and_registries_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Records::new(Store::local(dir.path().join("cache")));
        let layer = vec![1u8; 4096];
        let ld = Digest::of(Algorithm::Sha256, &layer);
        let mut w = store.store().create_blob(&ld, None).await.unwrap();
        w.write(Bytes::from(layer)).await.unwrap();
        w.commit().await.unwrap();
        let stray = b"pulled by digest only".to_vec();
        let sd = Digest::of(Algorithm::Sha256, &stray);
        let mut w = store.store().create_blob(&sd, None).await.unwrap();
        w.write(Bytes::from(stray.clone())).await.unwrap();
        w.commit().await.unwrap();
        let manifest = format!(r#"{{"layers":[{{"digest":"{ld}"}}]}}"#);
        let md = Digest::of(Algorithm::Sha256, manifest.as_bytes());
        let bytes = Bytes::from(manifest.clone());
        for registry in ["ghcr.io", "quay.io"] {
            store.put_manifest(registry, "org/app", &md, "t", &bytes).await.unwrap();
        }
        store.put_member("quay.io", "org/app", &sd).await.unwrap();

        let inv = Inventory::read(dir.path()).await.unwrap();
        let s = CacheStats::of(&inv, disk_space(dir.path()));
        let m = manifest.len() as u64;
        assert_eq!(
            s.content,
            Count {
                count: 3,
                bytes: 4096 + stray.len() as u64 + m
            }
        );
        assert_eq!(
            s.blobs,
            Count {
                count: 2,
                bytes: 4096 + stray.len() as u64
            }
        );
        assert_eq!(s.manifests, Count { count: 1, bytes: m });
        assert_eq!(s.manifest_entries, 2);
        assert_eq!(s.unreferenced_blobs.count, 1);
        assert_eq!(s.registries.len(), 2);
        assert_eq!(s.registries[0].registry, "ghcr.io");
        assert_eq!((s.registries[0].blobs, s.registries[0].bytes), (1, 4096 + m));
        assert_eq!(s.registries[1].blobs, 2, "quay.io also got the blob pulled by digest");
        assert!(
            s.disk
                .is_some_and(|d| d.total_bytes >= d.free_bytes && d.free_bytes > 0)
        );
        assert!(s.hits.is_none() && s.misses.is_none());
    }
}
