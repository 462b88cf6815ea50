//! `regcache cache rm REF` and `DELETE /_regcache/cache/<ref>`: remove what a reference (see
//! [`crate::catalog::reference`]) names from the store, keeping content that other cached images still
//! use.
//!
//! Records are removed first (for the local store, with cacache's tombstones: an appended line,
//! safe next to a running server that may be appending to the same bucket), then content (a
//! client streaming a blob keeps the blob it opened). A blob or manifest is kept while a remaining manifest,
//! tag or repository membership of another image still names it, unless the digest itself was
//! given.
//!
//! Every purge is announced through the store ([`crate::store::EntryIndex::announce_purge`]),
//! so that a running server drops its in-memory manifests and tags on its next request.

use std::collections::HashSet;

use serde::Serialize;

use crate::catalog::inventory::{Inventory, InventoryError};
pub use crate::catalog::reference::{Pattern, PurgeRef};
use crate::registry::Digest;
use crate::store::Store;

/// Why a purge did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PurgeError {
    /// The reference is malformed (a usage error).
    #[error("{0}")]
    BadRef(String),
    /// Nothing cached matches it.
    #[error("nothing cached matches {0}")]
    NothingMatched(String),
    /// The store could not be read.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// A record could not be removed.
    #[error(transparent)]
    Index(#[from] crate::store::StoreError),
}

/// A removed tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RemovedTag {
    /// Registry.
    pub registry: String,
    /// Repository.
    pub repository: String,
    /// Tag.
    pub tag: String,
    /// What it pointed at.
    pub digest: String,
}

/// A removed manifest entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct RemovedManifest {
    /// Registry.
    pub registry: String,
    /// Repository.
    pub repository: String,
    /// Digest.
    pub digest: String,
}

/// A removed content file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RemovedContent {
    /// Its digest.
    pub digest: String,
    /// `blob` or `manifest`.
    pub kind: &'static str,
    /// Its size.
    pub size: u64,
}

/// What a purge removed (the JSON answer of `DELETE /_regcache/cache/<ref>` and `cache rm --json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    /// The reference as given.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Tags removed (one per tag, whatever the number of `Accept` variants).
    pub tags: Vec<RemovedTag>,
    /// Manifest entries removed.
    pub manifests: Vec<RemovedManifest>,
    /// Content files removed.
    pub content: Vec<RemovedContent>,
    /// Repository records removed (blob membership and public status, used for access control).
    pub repository_records: u64,
    /// Content kept because other cached images still use it.
    pub kept: u64,
    /// Bytes of content files removed.
    pub bytes_freed: u64,
    /// Content files that could not be removed, with the reason.
    pub failed: Vec<String>,
}

/// The index keys and content files a purge removes, worked out from a snapshot.
#[derive(Debug, Default)]
pub struct PurgePlan {
    keys: Vec<String>,
    content: Vec<(Digest, u64, &'static str)>,
    report: PurgeReport,
}

impl PurgePlan {
    /// Whether it removes nothing.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.content.is_empty()
    }

    /// Works out what purging `what` from `inv` removes.
    pub fn new(inv: &Inventory, what: &PurgeRef, reference: &str) -> Self {
        let in_repos = |reg: &Pattern, repo: &Pattern, r: &str, p: &str| reg.matches(r) && repo.matches(p);
        let (tags, roots, whole_repos): (Vec<usize>, Vec<(String, String, Digest)>, bool) = {
            let sel = |f: &dyn Fn(&crate::catalog::inventory::TagEntry) -> bool| -> Vec<usize> {
                inv.tags
                    .iter()
                    .enumerate()
                    .filter(|(_, t)| f(t))
                    .map(|(i, _)| i)
                    .collect()
            };
            match what {
                PurgeRef::Digest(d) => (sel(&|t| t.record.digest == d.to_string()), vec![], false),
                PurgeRef::Registry(reg) => (sel(&|t| reg.matches(&t.registry)), vec![], true),
                PurgeRef::Repository(reg, repo) => {
                    (sel(&|t| in_repos(reg, repo, &t.registry, &t.repository)), vec![], true)
                }
                PurgeRef::Tag(reg, repo, tag) => {
                    let ts = sel(&|t| in_repos(reg, repo, &t.registry, &t.repository) && tag.matches(&t.tag));
                    let roots = ts
                        .iter()
                        .filter_map(|&i| {
                            let t = &inv.tags[i];
                            Some((t.registry.clone(), t.repository.clone(), t.record.digest.parse().ok()?))
                        })
                        .collect();
                    (ts, roots, false)
                }
                PurgeRef::Image(reg, repo, d) => {
                    let ts =
                        sel(&|t| in_repos(reg, repo, &t.registry, &t.repository) && t.record.digest == d.to_string());
                    let roots = inv
                        .manifests
                        .iter()
                        .filter(|m| in_repos(reg, repo, &m.registry, &m.repository) && m.digest == *d)
                        .map(|m| (m.registry.clone(), m.repository.clone(), d.clone()))
                        .chain(ts.iter().map(|&i| {
                            let t = &inv.tags[i];
                            (t.registry.clone(), t.repository.clone(), d.clone())
                        }))
                        .collect();
                    (ts, roots, false)
                }
            }
        };
        let removed_tags: HashSet<usize> = tags.iter().copied().collect();

        // Manifest entries.
        let mut manifests: HashSet<usize> = HashSet::new();
        match what {
            PurgeRef::Digest(d) => manifests.extend(
                inv.manifests
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| m.digest == *d)
                    .map(|(i, _)| i),
            ),
            PurgeRef::Registry(reg) => manifests.extend(
                inv.manifests
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| reg.matches(&m.registry))
                    .map(|(i, _)| i),
            ),
            PurgeRef::Repository(reg, repo) => manifests.extend(
                inv.manifests
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| in_repos(reg, repo, &m.registry, &m.repository))
                    .map(|(i, _)| i),
            ),
            PurgeRef::Tag(..) | PurgeRef::Image(..) => {
                // The images' manifests (and cached children), unless a remaining tag or
                // manifest of the same repository still leads to them.
                let explicit = matches!(what, PurgeRef::Image(..));
                let mut candidates: Vec<(String, String, Digest)> = Vec::new();
                for (reg, repo, root) in &roots {
                    for d in &inv.walk(root).manifests {
                        candidates.push((reg.clone(), repo.clone(), d.clone()));
                    }
                }
                loop {
                    let before = manifests.len();
                    for (reg, repo, d) in &candidates {
                        let Some(i) = inv
                            .manifests
                            .iter()
                            .position(|m| m.registry == *reg && m.repository == *repo && m.digest == *d)
                        else {
                            continue;
                        };
                        if manifests.contains(&i) {
                            continue;
                        }
                        let is_root = roots.iter().any(|(r, p, root)| r == reg && p == repo && root == d);
                        if (explicit && is_root) || !still_led_to(inv, &removed_tags, &manifests, reg, repo, d) {
                            manifests.insert(i);
                        }
                    }
                    if manifests.len() == before {
                        break;
                    }
                }
            }
        }

        // Repository records (membership and public status).
        let mut records: Vec<&str> = Vec::new();
        let mut candidates: HashSet<Digest> = HashSet::new();
        for &i in &manifests {
            let m = &inv.manifests[i];
            candidates.insert(m.digest.clone());
            if let Some(r) = inv.references.get(&m.digest) {
                candidates.extend(r.blobs.iter().cloned());
            }
        }
        let mut removed_members: HashSet<usize> = HashSet::new();
        for (i, e) in inv.members.iter().enumerate() {
            let Some(d) = &e.digest else { continue };
            let gone = match what {
                PurgeRef::Digest(x) => d == x,
                PurgeRef::Registry(reg) => reg.matches(&e.registry),
                PurgeRef::Repository(reg, repo) => in_repos(reg, repo, &e.registry, &e.repository),
                // Membership of what the removed images consisted of, unless the repository's
                // remaining manifests still reference it.
                PurgeRef::Tag(..) | PurgeRef::Image(..) => {
                    candidates.contains(d)
                        && manifests.iter().any(|&m| {
                            inv.manifests[m].registry == e.registry && inv.manifests[m].repository == e.repository
                        })
                        && !referenced_in_repo(inv, &manifests, &removed_tags, &e.registry, &e.repository, d)
                }
            };
            if gone {
                removed_members.insert(i);
                records.push(&e.key);
                candidates.insert(d.clone());
            }
        }
        if whole_repos {
            for e in &inv.publics {
                let gone = match what {
                    PurgeRef::Registry(reg) => reg.matches(&e.registry),
                    PurgeRef::Repository(reg, repo) => in_repos(reg, repo, &e.registry, &e.repository),
                    _ => false,
                };
                if gone {
                    records.push(&e.key);
                }
            }
        }
        for &i in &tags {
            if let Ok(d) = inv.tags[i].record.digest.parse() {
                candidates.insert(d);
            }
        }

        if let PurgeRef::Digest(d) = what {
            // That content alone: what its manifests referenced stays for `cache gc` to judge.
            candidates = HashSet::from([d.clone()]);
        }

        // Content: what the removed entries named, unless something remaining still names it.
        let mut keep: HashSet<&Digest> = HashSet::new();
        for (i, m) in inv.manifests.iter().enumerate() {
            if manifests.contains(&i) {
                continue;
            }
            keep.insert(&m.digest);
            if let Some(r) = inv.references.get(&m.digest) {
                keep.extend(r.blobs.iter().chain(&r.children));
            }
        }
        let remaining_tag_digests: HashSet<Digest> = inv
            .tags
            .iter()
            .enumerate()
            .filter(|(i, _)| !removed_tags.contains(i))
            .filter_map(|(_, t)| t.record.digest.parse().ok())
            .collect();
        keep.extend(remaining_tag_digests.iter());
        for (i, e) in inv.members.iter().enumerate() {
            if !removed_members.contains(&i)
                && let Some(d) = &e.digest
            {
                keep.insert(d);
            }
        }
        let named = match what {
            PurgeRef::Digest(d) => Some(d),
            _ => None,
        };
        let manifest_digests = inv.manifest_digests();
        let mut plan = PurgePlan::default();
        let mut kept = 0;
        let mut sorted: Vec<&Digest> = candidates.iter().chain(named).collect();
        sorted.sort_by_key(|d| d.to_string());
        sorted.dedup();
        for d in sorted {
            let Some(c) = inv.content.get(d) else { continue };
            if keep.contains(d) && named != Some(d) {
                kept += 1;
                continue;
            }
            let kind = if manifest_digests.contains(d) {
                "manifest"
            } else {
                "blob"
            };
            plan.content.push((d.clone(), c.size, kind));
        }

        // The plan and its report.
        let mut seen = HashSet::new();
        for &i in &tags {
            let t = &inv.tags[i];
            plan.keys.push(t.key.clone());
            let r = RemovedTag {
                registry: t.registry.clone(),
                repository: t.repository.clone(),
                tag: t.tag.clone(),
                digest: t.record.digest.clone(),
            };
            if seen.insert(r.clone()) {
                plan.report.tags.push(r);
            }
        }
        let mut ms: Vec<usize> = manifests.into_iter().collect();
        ms.sort_by(|a, b| inv.manifests[*a].key.cmp(&inv.manifests[*b].key));
        for i in ms {
            let m = &inv.manifests[i];
            plan.keys.push(m.key.clone());
            plan.report.manifests.push(RemovedManifest {
                registry: m.registry.clone(),
                repository: m.repository.clone(),
                digest: m.digest.to_string(),
            });
        }
        plan.report.repository_records = records.len() as u64;
        plan.keys.extend(records.into_iter().map(str::to_string));
        plan.report
            .tags
            .sort_by(|a, b| (&a.registry, &a.repository, &a.tag).cmp(&(&b.registry, &b.repository, &b.tag)));
        plan.report.reference = reference.to_string();
        plan.report.kept = kept;
        plan
    }

    /// Removes the planned index entries, then the content files, and announces the purge to
    /// a running server. Content already gone (removed concurrently) is not counted as freed.
    ///
    /// # Errors
    /// If an index entry cannot be removed (nothing after it is attempted).
    pub async fn execute(mut self, store: &Store) -> Result<PurgeReport, PurgeError> {
        for key in &self.keys {
            store.index().remove(key).await?;
        }
        for (digest, size, kind) in std::mem::take(&mut self.content) {
            match store.blobs().delete(&digest, None).await {
                Ok(true) => {
                    self.report.bytes_freed += size;
                    self.report.content.push(RemovedContent {
                        digest: digest.to_string(),
                        kind,
                        size,
                    });
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(digest = %digest, error = %e, "cannot remove cached content");
                    self.report.failed.push(e.to_string());
                }
            }
        }
        if let Err(e) = store.index().announce_purge(&self.report.reference) {
            self.report.failed.push(e);
        }
        Ok(self.report)
    }
}

/// Whether a tag or manifest of `registry/repository` that is not being removed leads to `d`.
fn still_led_to(
    inv: &Inventory,
    removed_tags: &HashSet<usize>,
    removed_manifests: &HashSet<usize>,
    registry: &str,
    repository: &str,
    d: &Digest,
) -> bool {
    let ds = d.to_string();
    let by_tag = inv.tags.iter().enumerate().any(|(i, t)| {
        !removed_tags.contains(&i) && t.registry == registry && t.repository == repository && t.record.digest == ds
    });
    by_tag
        || inv.manifests.iter().enumerate().any(|(i, m)| {
            !removed_manifests.contains(&i)
                && m.registry == registry
                && m.repository == repository
                && m.digest != *d
                && inv.references.get(&m.digest).is_some_and(|r| r.children.contains(d))
        })
}

/// Whether a remaining manifest or tag of `registry/repository` names or references `d`.
fn referenced_in_repo(
    inv: &Inventory,
    removed_manifests: &HashSet<usize>,
    removed_tags: &HashSet<usize>,
    registry: &str,
    repository: &str,
    d: &Digest,
) -> bool {
    let ds = d.to_string();
    inv.manifests.iter().enumerate().any(|(i, m)| {
        !removed_manifests.contains(&i)
            && m.registry == registry
            && m.repository == repository
            && (m.digest == *d
                || inv
                    .references
                    .get(&m.digest)
                    .is_some_and(|r| r.blobs.contains(d) || r.children.contains(d)))
    }) || inv.tags.iter().enumerate().any(|(i, t)| {
        !removed_tags.contains(&i) && t.registry == registry && t.repository == repository && t.record.digest == ds
    })
}

/// Purges `reference` from `store`.
///
/// # Errors
/// A malformed reference, nothing matching, or a store failure.
pub async fn purge(store: &Store, reference: &str) -> Result<PurgeReport, PurgeError> {
    let what: PurgeRef = reference.parse().map_err(PurgeError::BadRef)?;
    let inv = Inventory::read_store(store).await?;
    let plan = PurgePlan::new(&inv, &what, reference);
    if plan.is_empty() {
        return Err(PurgeError::NothingMatched(reference.to_string()));
    }
    plan.execute(store).await
}

#[cfg(test)]
mod tests {
    use super::*;

    use bytes::Bytes;

    use crate::cache::{Records, TagFreshness, TagRecord, tag_key};
    use crate::registry::Algorithm;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Records,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        Fixture {
            store: Records::new(Store::local(dir.path().join("cache"))),
            _dir: dir,
        }
    }

    async fn blob(store: &Records, data: &[u8]) -> Digest {
        let d = Digest::of(Algorithm::Sha256, data);
        let mut w = store.store().create_blob(&d, None).await.unwrap();
        w.write(Bytes::copy_from_slice(data)).await.unwrap();
        w.commit().await.unwrap();
        d
    }

    /// An image `repo:tag` of a config unique to it and `layers`.
    async fn image(store: &Records, registry: &str, repo: &str, tag: &str, layers: &[Digest]) -> (Digest, Digest) {
        let config = blob(store, format!("config {registry}/{repo}:{tag}").as_bytes()).await;
        let layers: Vec<String> = layers.iter().map(|l| format!(r#"{{"digest":"{l}"}}"#)).collect();
        let manifest = format!(
            r#"{{"config":{{"digest":"{config}"}},"layers":[{}]}}"#,
            layers.join(",")
        );
        let md = Digest::of(Algorithm::Sha256, manifest.as_bytes());
        store
            .put_manifest(registry, repo, &md, "t", &Bytes::from(manifest.clone()))
            .await
            .unwrap();
        let record = TagRecord {
            digest: md.to_string(),
            media_type: "t".into(),
            size: manifest.len() as u64,
            validated_at_ms: 1,
            upstream: TagFreshness::default(),
        };
        store
            .put_tag(&tag_key(registry, repo, tag, "x"), &record)
            .await
            .unwrap();
        store.put_member(registry, repo, &config).await.unwrap();
        (md, config)
    }

    async fn listed(store: &Store) -> Vec<String> {
        Inventory::read_store(store)
            .await
            .unwrap()
            .images(&Default::default())
            .into_iter()
            .map(|i| i.reference)
            .collect()
    }

    #[tokio::test]
    async fn a_tag_purge_keeps_layers_other_images_use() {
        let f = fixture();
        let base = blob(&f.store, &[1u8; 3000]).await;
        let own = blob(&f.store, &[2u8; 5000]).await;
        let (m1, c1) = image(&f.store, "ghcr.io", "org/app", "1.0", &[base.clone(), own.clone()]).await;
        let (_, c2) = image(&f.store, "ghcr.io", "org/web", "2.0", std::slice::from_ref(&base)).await;
        f.store.put_member("ghcr.io", "org/app", &own).await.unwrap();

        let report = purge(f.store.store(), "ghcr.io/org/app:1.0").await.unwrap();
        assert_eq!(report.tags.len(), 1);
        assert_eq!(report.manifests.len(), 1);
        let removed: HashSet<String> = report.content.iter().map(|c| c.digest.clone()).collect();
        let expected: HashSet<String> = [&m1, &c1, &own].iter().map(|d| d.to_string()).collect();
        assert_eq!(removed, expected, "{report:?}");
        assert_eq!(report.kept, 1, "the shared base layer");
        assert_eq!(report.bytes_freed, report.content.iter().map(|c| c.size).sum::<u64>());
        assert!(
            report.repository_records >= 2,
            "membership of removed content forgotten"
        );
        assert!(
            f.store.store().blobs().stat(&base).await.is_some() && f.store.store().blobs().stat(&c2).await.is_some()
        );
        assert!(f.store.store().blobs().stat(&own).await.is_none());
        assert_eq!(listed(f.store.store()).await, vec!["ghcr.io/org/web:2.0".to_string()]);
        assert!(!f.store.is_member("ghcr.io", "org/app", &own).await);

        assert!(matches!(
            purge(f.store.store(), "ghcr.io/org/app:1.0").await,
            Err(PurgeError::NothingMatched(_))
        ));
        assert!(matches!(
            purge(f.store.store(), "ghcr.io/Bad").await,
            Err(PurgeError::BadRef(_))
        ));
    }

    #[tokio::test]
    async fn a_second_tag_of_the_same_image_keeps_it() {
        let f = fixture();
        let layer = blob(&f.store, &[3u8; 100]).await;
        let (md, _) = image(&f.store, "ghcr.io", "org/app", "1.0", std::slice::from_ref(&layer)).await;
        let record = f.store.tag(&tag_key("ghcr.io", "org/app", "1.0", "x")).await.unwrap();
        f.store
            .put_tag(&tag_key("ghcr.io", "org/app", "latest", "x"), &record)
            .await
            .unwrap();
        let report = purge(f.store.store(), "ghcr.io/org/app:1.0").await.unwrap();
        assert_eq!(report.tags.len(), 1);
        assert!(report.manifests.is_empty() && report.content.is_empty(), "{report:?}");
        assert!(f.store.manifest("ghcr.io", "org/app", &md).await.is_some());
        assert_eq!(
            listed(f.store.store()).await,
            vec!["ghcr.io/org/app:latest".to_string()]
        );

        // A manifest's digest: its entries, the tags on it and its file; its blobs stay.
        let report = purge(f.store.store(), &md.to_string()).await.unwrap();
        assert_eq!(report.tags.len(), 1);
        assert_eq!(report.manifests.len(), 1);
        assert_eq!(report.content.len(), 1);
        assert_eq!(report.content[0].kind, "manifest");
        assert!(listed(f.store.store()).await.is_empty());
        assert!(f.store.store().blobs().stat(&layer).await.is_some());
    }

    #[tokio::test]
    async fn registries_globs_and_digests() {
        let f = fixture();
        let shared = blob(&f.store, &[4u8; 700]).await;
        image(&f.store, "ghcr.io", "org/a", "1", std::slice::from_ref(&shared)).await;
        image(&f.store, "ghcr.io", "org/b", "1", std::slice::from_ref(&shared)).await;
        image(&f.store, "ghcr.io", "other/c", "1", &[]).await;
        let (qm, _) = image(&f.store, "quay.io", "org/a", "1", std::slice::from_ref(&shared)).await;
        f.store.put_public("ghcr.io", "org/a").await.unwrap();

        let report = purge(f.store.store(), "ghcr.io/org/*").await.unwrap();
        assert_eq!(report.tags.len(), 2);
        assert_eq!(report.kept, 1, "quay.io still uses the shared layer");
        assert!(f.store.public_since("ghcr.io", "org/a").await.is_none());
        assert_eq!(listed(f.store.store()).await.len(), 2);

        // A named digest goes even though a manifest still references it.
        let report = purge(f.store.store(), &shared.to_string()).await.unwrap();
        assert_eq!(report.content.len(), 1);
        assert_eq!(report.content[0].kind, "blob");
        assert!(f.store.store().blobs().stat(&shared).await.is_none());
        assert_eq!(
            listed(f.store.store()).await.len(),
            2,
            "the images stay, missing a layer"
        );

        let report = purge(f.store.store(), "quay.io").await.unwrap();
        assert_eq!(report.manifests[0].digest, qm.to_string());
        assert_eq!(listed(f.store.store()).await, vec!["ghcr.io/other/c:1".to_string()]);
        let only = Inventory::read_store(f.store.store()).await.unwrap().manifests[0]
            .digest
            .clone();
        let report = purge(f.store.store(), &format!("ghcr.io/other/c@{only}"))
            .await
            .unwrap();
        assert_eq!(report.tags.len(), 1);
        assert!(listed(f.store.store()).await.is_empty());
        let inv = Inventory::read_store(f.store.store()).await.unwrap();
        assert!(inv.content.is_empty(), "everything went: {:?}", inv.content.keys());
    }

    #[tokio::test]
    async fn an_index_is_one_image_with_its_cached_platforms() {
        let f = fixture();
        let layer = blob(&f.store, &[7u8; 900]).await;
        let (amd64, config) = image(
            &f.store,
            "ghcr.io",
            "org/multi",
            "amd64-only",
            std::slice::from_ref(&layer),
        )
        .await;
        // The index names a second platform that was never pulled.
        let absent = Digest::of(Algorithm::Sha256, b"arm64 manifest");
        let index = format!(r#"{{"manifests":[{{"digest":"{amd64}"}},{{"digest":"{absent}"}}]}}"#);
        let id = Digest::of(Algorithm::Sha256, index.as_bytes());
        f.store
            .put_manifest("ghcr.io", "org/multi", &id, "index", &Bytes::from(index.clone()))
            .await
            .unwrap();
        let record = TagRecord {
            digest: id.to_string(),
            media_type: "index".into(),
            size: index.len() as u64,
            validated_at_ms: 1,
            upstream: TagFreshness::default(),
        };
        f.store
            .put_tag(&tag_key("ghcr.io", "org/multi", "1", "x"), &record)
            .await
            .unwrap();
        // Drop the per-platform tag the helper made: the index is what was pulled.
        purge(f.store.store(), "ghcr.io/org/multi:amd64-only").await.unwrap();

        let inv = Inventory::read_store(f.store.store()).await.unwrap();
        let images = inv.images(&Default::default());
        assert_eq!(
            images.len(),
            1,
            "the platform manifest belongs to the index: {images:?}"
        );
        let i = &images[0];
        assert_eq!(i.reference, "ghcr.io/org/multi:1");
        assert_eq!((i.manifests, i.blobs, i.missing_blobs), (2, 2, 0));
        let size: u64 = [&id, &amd64, &config, &layer]
            .iter()
            .map(|d| inv.content[*d].size)
            .sum();
        assert_eq!(i.size, size);

        let report = purge(f.store.store(), "ghcr.io/org/multi:1").await.unwrap();
        assert_eq!(
            report.manifests.len(),
            2,
            "the index and its cached platform: {report:?}"
        );
        assert_eq!(report.content.len(), 4);
        assert!(Inventory::read_store(f.store.store()).await.unwrap().content.is_empty());
    }
}
