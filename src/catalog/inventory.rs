//! What the store holds, read from disk while `serve` may be running on it: the data behind
//! `regcache cache ls` / `stats`, `GET /_regcache/cache`, purges and verification.
//!
//! Reading is safe next to a running server without any lock: the store's records are written
//! whole (the local index is append-only, and a torn line fails its checksum and is skipped),
//! and a blob is committed only once complete and verified. A snapshot may miss an entry
//! written while it was being taken; nothing here ever writes.
//!
//! What is read: every blob with its size and last use ([`crate::store::BlobStore::list`]),
//! and every record (the keys of [`crate::cache::RecordKey`]: tags, manifests, repository
//! membership and public status).
//!
//! **Last used** of an image is the most recent of: when regcache last wrote its tag or
//! manifest entries (first pull, tag moved, revalidation — a tag is rewritten at most every
//! 10 minutes), and the last use the store records for its content (the local store: the
//! files' access or modification time, which hits move). A base layer shared by two images
//! counts as a use of both. Manifests served from the server's memory touch nothing on disk.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::cache::{RecordKey, TagRecord, manifest_media_type};
use crate::config::HostPort;
use crate::registry::Digest;
pub use crate::registry::manifest::{MAX_MANIFEST, References, parse_references};
use crate::store::{Access, Store, StoreError};

/// Failures reading the store.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The data directory does not exist (a typo, or not the `--data-dir` of `serve`).
    #[error("{0}: no such data directory (give the --data-dir that serve uses)")]
    NoDataDir(PathBuf),
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One content file (a blob or a manifest's bytes).
#[derive(Debug, Clone)]
pub struct ContentFile {
    /// Its length.
    pub size: u64,
    /// Unix ms of its last use as the store records it (for the local store, the later of
    /// the file's access and modification times).
    pub touched_ms: u64,
    /// When it was last written (a conditional delete checks it is unchanged).
    pub modified: SystemTime,
}

/// A tag entry: one `Accept` set's resolution of `registry/repository:tag`.
#[derive(Debug, Clone)]
pub struct TagEntry {
    /// The index key.
    pub key: String,
    /// Canonical registry.
    pub registry: String,
    /// Repository.
    pub repository: String,
    /// Tag.
    pub tag: String,
    /// What the tag resolved to.
    pub record: TagRecord,
    /// Unix ms the entry was written.
    pub written_ms: u64,
}

/// A manifest entry: `digest` cached for `registry/repository`.
#[derive(Debug, Clone)]
pub struct ManifestEntry {
    /// The index key.
    pub key: String,
    /// Canonical registry.
    pub registry: String,
    /// Repository.
    pub repository: String,
    /// The manifest's digest.
    pub digest: Digest,
    /// Its media type, as served.
    pub media_type: String,
    /// Unix ms the entry was written.
    pub written_ms: u64,
}

/// An index entry that names a repository and possibly a digest (`member/…`, `public/…`).
#[derive(Debug, Clone)]
pub struct RepoEntry {
    /// The index key.
    pub key: String,
    /// Canonical registry.
    pub registry: String,
    /// Repository.
    pub repository: String,
    /// The member's digest (`None` for `public/…`).
    pub digest: Option<Digest>,
}

/// A snapshot of the store.
#[derive(Debug, Default)]
pub struct Inventory {
    /// Where the store is (the cache directory, `<data-dir>/cache`, for the local store).
    pub location: String,
    /// Content files by digest.
    pub content: HashMap<Digest, ContentFile>,
    /// Tag entries.
    pub tags: Vec<TagEntry>,
    /// Manifest entries.
    pub manifests: Vec<ManifestEntry>,
    /// `member/…` entries.
    pub members: Vec<RepoEntry>,
    /// `public/…` entries.
    pub publics: Vec<RepoEntry>,
    /// What each stored manifest references (parsed from its content).
    pub references: HashMap<Digest, References>,
    /// Things in the content area whose name is not a digest.
    pub stray: Vec<String>,
    /// Partial downloads in `tmp/`: count and bytes.
    pub temporary: (u64, u64),
    /// Bytes of the index on disk.
    pub index_bytes: u64,
}

impl Inventory {
    /// Reads the store of the data directory `data_dir` (`<data_dir>/cache`, the local store).
    ///
    /// # Errors
    /// If `data_dir` does not exist, or the store cannot be read.
    #[cfg(test)]
    pub async fn read(data_dir: &std::path::Path) -> Result<Self, InventoryError> {
        if !data_dir.is_dir() {
            return Err(InventoryError::NoDataDir(data_dir.to_path_buf()));
        }
        Self::read_store(&Store::local(data_dir.join("cache"))).await
    }

    /// Reads `store` (empty when nothing was ever written to it).
    ///
    /// # Errors
    /// If the store cannot be read.
    pub async fn read_store(store: &Store) -> Result<Self, InventoryError> {
        let mut inv = Inventory {
            location: store.blobs().describe(),
            ..Inventory::default()
        };
        let listing = store.blobs().list().await?;
        inv.stray = listing.stray;
        for b in listing.blobs {
            inv.content.insert(
                b.digest,
                ContentFile {
                    size: b.len,
                    touched_ms: unix_ms(b.last_used),
                    modified: b.modified,
                },
            );
        }
        inv.scan_index(store).await?;
        let spools = store.spool_files();
        inv.temporary = tokio::task::spawn_blocking(move || spools.usage())
            .await
            .unwrap_or((0, 0));
        inv.index_bytes = store.index().footprint().await;
        let digests: HashSet<Digest> = inv.manifests.iter().map(|m| m.digest.clone()).collect();
        for d in digests {
            if inv.content.contains_key(&d)
                && let Ok(Some(bytes)) = store.blobs().read(&d, MAX_MANIFEST as u64, Access::Inspect).await
            {
                inv.references.insert(d, parse_references(&bytes));
            }
        }
        Ok(inv)
    }

    async fn scan_index(&mut self, store: &Store) -> Result<(), InventoryError> {
        for entry in store.index().list("").await? {
            let written_ms = entry.written_ms;
            let key = entry.key;
            match RecordKey::parse(&key) {
                Some(RecordKey::Tag {
                    registry,
                    repository,
                    tag,
                }) => {
                    let Ok(record) = serde_json::from_value::<TagRecord>(entry.metadata) else {
                        continue;
                    };
                    self.tags.push(TagEntry {
                        registry,
                        repository,
                        tag,
                        record,
                        written_ms,
                        key,
                    });
                }
                Some(RecordKey::Manifest {
                    registry,
                    repository,
                    digest,
                }) => self.manifests.push(ManifestEntry {
                    registry,
                    repository,
                    digest,
                    media_type: manifest_media_type(&entry.metadata),
                    written_ms,
                    key,
                }),
                Some(RecordKey::Member {
                    registry,
                    repository,
                    digest,
                }) => self.members.push(RepoEntry {
                    registry,
                    repository,
                    digest: Some(digest),
                    key,
                }),
                Some(RecordKey::Public { registry, repository }) => self.publics.push(RepoEntry {
                    registry,
                    repository,
                    digest: None,
                    key,
                }),
                None => {}
            }
        }
        Ok(())
    }

    /// Digests that some manifest entry names (their content files are manifests).
    pub fn manifest_digests(&self) -> HashSet<&Digest> {
        self.manifests.iter().map(|m| &m.digest).collect()
    }

    /// The images, one per tag (deduplicated over `Accept` sets) plus one per manifest that no
    /// tag and no other manifest of its repository leads to (pulled by digest), sorted.
    pub fn images(&self, filter: &ImageFilter) -> Vec<ImageSummary> {
        let entries: EntryMap<'_> = self
            .manifests
            .iter()
            .map(|m| ((m.registry.as_str(), m.repository.as_str(), &m.digest), m))
            .collect();
        let mut out = Vec::new();
        let mut seen_tags = HashSet::new();
        let mut reached: HashSet<(&str, &str, String)> = HashSet::new();
        let mut tags: Vec<&TagEntry> = self
            .tags
            .iter()
            .filter(|t| filter.matches(&t.registry, &t.repository))
            .collect();
        // Newest first, so that the kept duplicate carries the latest time.
        tags.sort_by_key(|t| std::cmp::Reverse(t.written_ms));
        for t in tags {
            reached.insert((&t.registry, &t.repository, t.record.digest.clone()));
            if !seen_tags.insert((&t.registry, &t.repository, &t.tag, &t.record.digest)) {
                continue;
            }
            let Ok(digest) = t.record.digest.parse::<Digest>() else {
                continue;
            };
            let mut image = self.summarize(
                &entries,
                &t.registry,
                &t.repository,
                &digest,
                Some(&t.record.media_type),
            );
            image.tag = Some(t.tag.clone());
            image.last_used_ms = image.last_used_ms.max(t.written_ms);
            out.push(image.finish());
        }
        // Children of cached indexes are part of their index's image.
        for m in &self.manifests {
            if let Some(refs) = self.references.get(&m.digest) {
                for c in &refs.children {
                    reached.insert((&m.registry, &m.repository, c.to_string()));
                }
            }
        }
        for m in &self.manifests {
            if !filter.matches(&m.registry, &m.repository)
                || reached.contains(&(m.registry.as_str(), m.repository.as_str(), m.digest.to_string()))
            {
                continue;
            }
            reached.insert((&m.registry, &m.repository, m.digest.to_string()));
            let image = self.summarize(&entries, &m.registry, &m.repository, &m.digest, Some(&m.media_type));
            out.push(image.finish());
        }
        out.sort_by(|a, b| {
            (&a.registry, &a.repository, &a.tag, &a.digest).cmp(&(&b.registry, &b.repository, &b.tag, &b.digest))
        });
        out
    }

    /// Size, content and last use of the image whose top manifest is `digest`.
    fn summarize(
        &self,
        entries: &EntryMap<'_>,
        registry: &str,
        repository: &str,
        digest: &Digest,
        media_type: Option<&str>,
    ) -> ImageSummary {
        let walk = self.walk(digest);
        let mut size = 0;
        let mut last_used_ms = 0;
        for d in walk.manifests.iter().chain(&walk.blobs) {
            if let Some(c) = self.content.get(d) {
                size += c.size;
                last_used_ms = last_used_ms.max(c.touched_ms);
            }
        }
        for d in &walk.manifests {
            if let Some(m) = entries.get(&(registry, repository, d)) {
                last_used_ms = last_used_ms.max(m.written_ms);
            }
        }
        let media_type = entries
            .get(&(registry, repository, digest))
            .map(|m| m.media_type.clone())
            .or(media_type.map(str::to_string))
            .unwrap_or_default();
        ImageSummary {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag: None,
            reference: String::new(),
            digest: digest.to_string(),
            media_type,
            cached: self.content.contains_key(digest),
            size,
            manifests: walk.manifests.iter().filter(|d| self.content.contains_key(d)).count() as u64,
            blobs: walk.blobs.iter().filter(|d| self.content.contains_key(d)).count() as u64,
            missing_blobs: walk.blobs.iter().filter(|d| !self.content.contains_key(d)).count() as u64,
            last_used: String::new(),
            last_used_ms,
        }
    }

    /// Everything the manifest `digest` leads to: itself and the child manifests that are
    /// cached, and the blobs those reference (cached or not).
    pub fn walk(&self, digest: &Digest) -> Walk {
        let mut walk = Walk::default();
        let mut stack = vec![digest.clone()];
        while let Some(d) = stack.pop() {
            if walk.manifests.contains(&d) {
                continue;
            }
            let Some(refs) = self.references.get(&d) else {
                // Not cached, or not a manifest regcache stored: nothing to follow.
                if d == *digest {
                    walk.manifests.insert(d);
                }
                continue;
            };
            walk.manifests.insert(d);
            walk.blobs.extend(refs.blobs.iter().cloned());
            stack.extend(
                refs.children
                    .iter()
                    .filter(|c| self.references.contains_key(*c))
                    .cloned(),
            );
        }
        walk
    }
}

/// Manifest entries by registry, repository and digest.
type EntryMap<'a> = HashMap<(&'a str, &'a str, &'a Digest), &'a ManifestEntry>;

/// The content an image consists of.
#[derive(Debug, Default)]
pub struct Walk {
    /// The top manifest and its cached children.
    pub manifests: HashSet<Digest>,
    /// Config and layer blobs they reference.
    pub blobs: HashSet<Digest>,
}

/// One line of `regcache cache ls` (and one object of its `--json` array, and of
/// `GET /_regcache/cache`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ImageSummary {
    /// Canonical registry (`docker.io` for Docker Hub).
    pub registry: String,
    /// Repository (`library/alpine`).
    pub repository: String,
    /// The tag, or `null` for a manifest cached only by digest.
    pub tag: Option<String>,
    /// `registry/repository:tag` or `registry/repository@digest`.
    pub reference: String,
    /// The top manifest's digest (an index for multi-platform images).
    pub digest: String,
    /// Its media type.
    pub media_type: String,
    /// Whether the top manifest's bytes are cached (a tag resolved by `HEAD` only has none).
    pub cached: bool,
    /// Bytes of cached content: manifests, config and layers (each counted once).
    pub size: u64,
    /// Cached manifests (the index and the platforms pulled).
    pub manifests: u64,
    /// Cached blobs (config and layers).
    pub blobs: u64,
    /// Blobs referenced by the cached manifests but not cached (layers never pulled, or evicted).
    pub missing_blobs: u64,
    /// RFC 3339 UTC, to the second (see the module documentation for what counts as a use).
    pub last_used: String,
    /// The same, in Unix milliseconds.
    pub last_used_ms: u64,
}

impl ImageSummary {
    fn finish(mut self) -> Self {
        self.reference = match &self.tag {
            Some(t) => format!("{}/{}:{t}", self.registry, self.repository),
            None => format!("{}/{}@{}", self.registry, self.repository, self.digest),
        };
        self.last_used = rfc3339(self.last_used_ms);
        self
    }
}

/// Which images `ls` shows.
#[derive(Debug, Default)]
pub struct ImageFilter {
    registry: Option<String>,
    repository: Option<globset::GlobMatcher>,
}

impl ImageFilter {
    /// Images of `registry` (any spelling: `registry-1.docker.io` means `docker.io`) whose
    /// repository, or `registry/repository`, matches the glob `repository`.
    ///
    /// # Errors
    /// A registry that is not `HOST[:PORT]`, or a bad glob.
    pub fn new(registry: Option<&str>, repository: Option<&str>) -> Result<Self, String> {
        let registry = registry.map(canonical_registry_name).transpose()?;
        let repository = repository
            .map(|g| {
                globset::Glob::new(g)
                    .map(|g| g.compile_matcher())
                    .map_err(|e| format!("--repo {g:?}: {e}"))
            })
            .transpose()?;
        Ok(Self { registry, repository })
    }

    /// Whether `registry/repository` passes.
    pub fn matches(&self, registry: &str, repository: &str) -> bool {
        self.registry.as_ref().is_none_or(|r| r == registry)
            && self
                .repository
                .as_ref()
                .is_none_or(|g| g.is_match(repository) || g.is_match(format!("{registry}/{repository}")))
    }
}

/// `registry` as cache keys spell it (`docker.io` for Docker Hub, no `:443`).
///
/// # Errors
/// If it is not `HOST[:PORT]`.
pub fn canonical_registry_name(registry: &str) -> Result<String, String> {
    let hp = HostPort::parse(registry, 443).map_err(|e| format!("registry {e}"))?;
    Ok(crate::config::canonical_registry(&hp))
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Unix ms as RFC 3339 UTC to the second (`1970-01-01T00:00:00Z` for 0).
pub fn rfc3339(ms: u64) -> String {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    use crate::cache::{Records, TagFreshness, tag_key};
    use crate::registry::Algorithm;

    fn d(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64)).parse().unwrap()
    }

    #[test]
    fn references_of_images_and_indexes() {
        let m = format!(
            r#"{{"config":{{"digest":"{}"}},"layers":[{{"digest":"{}"}},{{"digest":"bad"}}],"subject":{{"digest":"{}"}}}}"#,
            d('a'),
            d('b'),
            d('c')
        );
        assert_eq!(
            parse_references(m.as_bytes()),
            References {
                blobs: vec![d('a'), d('b')],
                children: vec![]
            }
        );
        let idx = format!(r#"{{"manifests":[{{"digest":"{}"}}]}}"#, d('e'));
        assert_eq!(parse_references(idx.as_bytes()).children, vec![d('e')]);
        assert_eq!(parse_references(b"\xff not json"), References::default());
    }

    #[test]
    fn filters_canonicalise_registries_and_match_globs() {
        let f = ImageFilter::new(Some("registry-1.docker.io"), None).unwrap();
        assert!(f.matches("docker.io", "library/alpine"));
        assert!(!f.matches("ghcr.io", "library/alpine"));
        let f = ImageFilter::new(None, Some("org/*")).unwrap();
        assert!(f.matches("ghcr.io", "org/app"));
        assert!(!f.matches("ghcr.io", "other/app"));
        let f = ImageFilter::new(None, Some("ghcr.io/org/*")).unwrap();
        assert!(f.matches("ghcr.io", "org/app"));
        assert!(ImageFilter::new(Some("not a host"), None).is_err());
        assert!(ImageFilter::new(None, Some("[")).is_err());
    }

    /// Stores an image (config + one layer + manifest) under a tag, as the cache does.
    async fn put_image(store: &Records, repo: &str, tag: &str, layer: &[u8]) -> (Digest, Vec<Digest>) {
        let mut blobs = Vec::new();
        for data in [format!("config of {repo}:{tag}").into_bytes(), layer.to_vec()] {
            let digest = Digest::of(Algorithm::Sha256, &data);
            let mut w = store.store().create_blob(&digest, None).await.unwrap();
            w.write(Bytes::from(data)).await.unwrap();
            w.commit().await.unwrap();
            blobs.push(digest);
        }
        let manifest = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}"}},"layers":[{{"digest":"{}"}}]}}"#,
            blobs[0], blobs[1]
        );
        let md = Digest::of(Algorithm::Sha256, manifest.as_bytes());
        let mt = "application/vnd.oci.image.manifest.v1+json";
        store
            .put_manifest("ghcr.io", repo, &md, mt, &Bytes::from(manifest.clone()))
            .await
            .unwrap();
        let record = TagRecord {
            digest: md.to_string(),
            media_type: mt.into(),
            size: manifest.len() as u64,
            validated_at_ms: 1,
            upstream: TagFreshness::default(),
        };
        for accept in ["a", "b"] {
            store
                .put_tag(&tag_key("ghcr.io", repo, tag, accept), &record)
                .await
                .unwrap();
        }
        (md, blobs)
    }

    #[tokio::test]
    async fn images_are_listed_once_per_tag_with_their_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = Records::new(Store::local(dir.path().join("cache")));
        let shared = vec![9u8; 1000];
        let (m1, b1) = put_image(&store, "org/app", "1.0", &shared).await;
        let (m2, _) = put_image(&store, "org/other", "latest", &shared).await;
        let inv = Inventory::read(dir.path()).await.unwrap();
        assert_eq!(inv.content.len(), 5, "two manifests, two configs, one shared layer");

        let all = inv.images(&ImageFilter::default());
        assert_eq!(all.len(), 2, "{all:?}");
        let app = &all[0];
        assert_eq!(app.reference, "ghcr.io/org/app:1.0");
        assert_eq!(app.digest, m1.to_string());
        assert_eq!((app.manifests, app.blobs, app.missing_blobs), (1, 2, 0));
        let expected: u64 = std::iter::once(&m1).chain(&b1).map(|d| inv.content[d].size).sum();
        assert_eq!(app.size, expected);
        assert!(app.cached && app.last_used_ms > 0 && app.last_used.ends_with('Z'));
        assert_eq!(all[1].digest, m2.to_string());

        let only = inv.images(&ImageFilter::new(None, Some("org/oth*")).unwrap());
        assert_eq!(only.len(), 1);
        // A manifest known only by digest is listed by digest.
        let body = Bytes::from_static(br#"{"schemaVersion":2}"#);
        let loose = Digest::of(Algorithm::Sha256, &body);
        store
            .put_manifest("ghcr.io", "org/app", &loose, "t", &body)
            .await
            .unwrap();
        let inv = Inventory::read(dir.path()).await.unwrap();
        let all = inv.images(&ImageFilter::default());
        assert_eq!(all.len(), 3);
        assert!(
            all.iter()
                .any(|i| i.tag.is_none() && i.reference.ends_with(&format!("@{loose}")))
        );
    }

    #[tokio::test]
    async fn a_missing_data_dir_is_an_error_and_an_empty_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Inventory::read(&dir.path().join("nope")).await,
            Err(InventoryError::NoDataDir(_))
        ));
        let inv = Inventory::read(dir.path()).await.unwrap();
        assert!(inv.content.is_empty() && inv.tags.is_empty());
    }
}
