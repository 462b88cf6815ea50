//! What the store holds, read from disk while `serve` may be running on it: the data behind
//! `regcache cache ls` / `stats`, `GET /_regcache/cache`, purges and verification.
//!
//! Reading is safe next to a running server without any lock: cacache's index is append-only
//! (a bucket line is written whole, and a torn line fails its checksum and is skipped), and a
//! content file is renamed into place only once complete and verified. A snapshot may miss an
//! entry written while it was being taken; nothing here ever writes.
//!
//! Layout read (see [`crate::store::local`]): content files under `content-v2/<algorithm>/…` named by
//! digest (blobs have no index entry of their own); index entries `tag/<registry>/<repo>:<tag>#
//! <accept set>` (a [`TagRecord`] in metadata), `manifest/<registry>/<repo>@<digest>`,
//! `member/<registry>/<repo>@<digest>` and `public/<registry>/<repo>`.
//!
//! **Last used** of an image is the most recent of: when regcache last wrote its tag or
//! manifest entries (first pull, tag moved, revalidation — a tag is rewritten at most every
//! 10 minutes), and the access or modification time of its content files. Blobs are read from
//! disk on every hit, so their access time moves as the filesystem keeps it (Linux's default
//! `relatime`: at least once a day; never under `noatime`). A base layer shared by two images
//! counts as a use of both. Manifests served from the server's memory touch nothing on disk.

pub use crate::registry::manifest::{References, parse_references};
use std::collections::{HashMap, HashSet};
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use serde::Serialize;

use crate::config::settings::HostPort;
use crate::registry::digest::{Algorithm, Digest};
use crate::store::local::TagRecord;

/// Manifests larger than this are not parsed (the distribution registry refuses them too).
const MAX_MANIFEST: u64 = 4 * 1024 * 1024;

/// Failures reading the store.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The data directory does not exist (a typo, or not the `--data-dir` of `serve`).
    #[error("{0}: no such data directory (give the --data-dir that serve uses)")]
    NoDataDir(PathBuf),
    /// A directory or file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// cacache could not list its index.
    #[error("cache index: {0}")]
    Index(String),
}

/// One content file (a blob or a manifest's bytes).
#[derive(Debug, Clone)]
pub struct ContentFile {
    /// Its length.
    pub size: u64,
    /// Unix ms of its last access or modification, whichever is later.
    pub touched_ms: u64,
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
    /// The cache directory (`<data-dir>/cache`).
    pub root: PathBuf,
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
    /// Files in `content-v2` whose path is not a digest.
    pub stray: Vec<PathBuf>,
    /// Partial downloads in `tmp/`: count and bytes.
    pub temporary: (u64, u64),
    /// Bytes of the index on disk.
    pub index_bytes: u64,
}

impl Inventory {
    /// Reads the store under `data_dir` (`<data_dir>/cache`). Blocking.
    ///
    /// # Errors
    /// If `data_dir` does not exist, or the store cannot be read.
    pub fn read(data_dir: &Path) -> Result<Self, InventoryError> {
        if !data_dir.is_dir() {
            return Err(InventoryError::NoDataDir(data_dir.to_path_buf()));
        }
        Self::read_store(&data_dir.join("cache"))
    }

    /// Reads the cache directory itself (empty when it does not exist yet). Blocking.
    ///
    /// # Errors
    /// If the store cannot be read.
    pub fn read_store(root: &Path) -> Result<Self, InventoryError> {
        let mut inv = Inventory {
            root: root.to_path_buf(),
            ..Inventory::default()
        };
        if !root.exists() {
            return Ok(inv);
        }
        inv.scan_content()?;
        inv.scan_index()?;
        inv.temporary = dir_usage(&root.join("tmp"), |name| name.ends_with(".partial"));
        inv.index_bytes = dir_usage(&root.join("index-v5"), |_| true).1;
        let digests: HashSet<Digest> = inv.manifests.iter().map(|m| m.digest.clone()).collect();
        for d in digests {
            if inv.content.contains_key(&d)
                && let Ok(bytes) = read_noatime(&content_path(root, &d), MAX_MANIFEST)
            {
                inv.references.insert(d, parse_references(&bytes));
            }
        }
        Ok(inv)
    }

    fn scan_content(&mut self) -> Result<(), InventoryError> {
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let base = self.root.join("content-v2").join(algorithm.as_str());
            let mut dirs = vec![base.clone()];
            while let Some(dir) = dirs.pop() {
                let list = match std::fs::read_dir(&dir) {
                    Ok(l) => l,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(InventoryError::Io { path: dir, source }),
                };
                for entry in list.flatten() {
                    let path = entry.path();
                    // Gone in between (a purge or eviction elsewhere): skip it.
                    let Ok(meta) = entry.metadata() else { continue };
                    if meta.is_dir() {
                        dirs.push(path);
                        continue;
                    }
                    match digest_of_content_path(&base, algorithm, &path) {
                        Some(d) => {
                            self.content.insert(
                                d,
                                ContentFile {
                                    size: meta.len(),
                                    touched_ms: touched_ms(&meta),
                                },
                            );
                        }
                        None => self.stray.push(path),
                    }
                }
            }
        }
        Ok(())
    }

    fn scan_index(&mut self) -> Result<(), InventoryError> {
        if !self.root.join("index-v5").exists() {
            return Ok(());
        }
        for entry in cacache::index::ls(&self.root) {
            // A bucket that vanished or cannot be read is skipped, not fatal: it may have been
            // removed while we walked.
            let Ok(entry) = entry else { continue };
            let written_ms = u64::try_from(entry.time).unwrap_or(u64::MAX);
            let key = entry.key;
            if let Some(rest) = key.strip_prefix("tag/") {
                let Some((registry, repository, tag)) = parse_tag_key(rest) else {
                    continue;
                };
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
            } else if let Some(rest) = key.strip_prefix("manifest/") {
                let Some((registry, repository, digest)) = parse_digest_key(rest) else {
                    continue;
                };
                let media_type = entry
                    .metadata
                    .get("media_type")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_string();
                self.manifests.push(ManifestEntry {
                    registry,
                    repository,
                    digest,
                    media_type,
                    written_ms,
                    key,
                });
            } else if let Some(rest) = key.strip_prefix("member/") {
                let Some((registry, repository, digest)) = parse_digest_key(rest) else {
                    continue;
                };
                self.members.push(RepoEntry {
                    registry,
                    repository,
                    digest: Some(digest),
                    key,
                });
            } else if let Some(rest) = key.strip_prefix("public/") {
                let Some((registry, repository)) = rest.split_once('/') else {
                    continue;
                };
                self.publics.push(RepoEntry {
                    registry: registry.to_string(),
                    repository: repository.to_string(),
                    digest: None,
                    key,
                });
            }
        }
        Ok(())
    }

    /// Where the content with `digest` lives.
    pub fn content_path(&self, digest: &Digest) -> PathBuf {
        content_path(&self.root, digest)
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
    Ok(crate::registry::request::canonical_registry(&hp))
}

/// Where the content with `digest` lives under the cache directory `root` (as
/// [`crate::store::local::ContentStore::content_path`]).
pub fn content_path(root: &Path, digest: &Digest) -> PathBuf {
    crate::store::local::ContentStore::new(root.to_path_buf()).content_path(digest)
}

/// The digest a content path names, if it is one.
fn digest_of_content_path(base: &Path, algorithm: Algorithm, path: &Path) -> Option<Digest> {
    let rel = path.strip_prefix(base).ok()?;
    let hex: String = rel
        .components()
        .map(|c| c.as_os_str().to_str())
        .collect::<Option<Vec<_>>>()?
        .concat();
    format!("{}:{hex}", algorithm.as_str()).parse().ok()
}

/// `<registry>/<repo>:<tag>#<accept>` → parts.
fn parse_tag_key(rest: &str) -> Option<(String, String, String)> {
    let (name, _accept) = rest.split_once('#')?;
    let (registry, path) = name.split_once('/')?;
    let (repository, tag) = path.rsplit_once(':')?;
    (!repository.is_empty() && !tag.is_empty()).then(|| (registry.to_string(), repository.to_string(), tag.to_string()))
}

/// `<registry>/<repo>@<digest>` → parts.
fn parse_digest_key(rest: &str) -> Option<(String, String, Digest)> {
    let (name, digest) = rest.rsplit_once('@')?;
    let (registry, repository) = name.split_once('/')?;
    Some((registry.to_string(), repository.to_string(), digest.parse().ok()?))
}

/// Opens a file for reading without updating its access time (`O_NOATIME`), so that reading
/// for `ls` or `verify` is not mistaken for a use. Falls back to a plain open where the kernel
/// refuses it (files owned by another user).
pub fn open_noatime(path: &Path) -> io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    match rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOATIME, Mode::empty()) {
        Ok(fd) => Ok(std::fs::File::from(fd)),
        Err(rustix::io::Errno::PERM) => std::fs::File::open(path),
        Err(e) => Err(e.into()),
    }
}

/// Reads a whole (small) file with [`open_noatime`]; refuses files over `limit` bytes.
fn read_noatime(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    open_noatime(path)?.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(io::Error::other("too large for a manifest"));
    }
    Ok(buf)
}

/// Unix ms of the later of a file's access and modification times.
fn touched_ms(meta: &std::fs::Metadata) -> u64 {
    let ms = |t: io::Result<std::time::SystemTime>| {
        t.ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64)
    };
    ms(meta.accessed()).max(ms(meta.modified()))
}

/// Files (whose name passes `wanted`) under `dir`, recursively: count and bytes.
fn dir_usage(dir: &Path, wanted: impl Fn(&str) -> bool) -> (u64, u64) {
    let (mut count, mut bytes) = (0, 0);
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(list) = std::fs::read_dir(&d) else { continue };
        for entry in list.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                dirs.push(entry.path());
            } else if wanted(&entry.file_name().to_string_lossy()) {
                count += 1;
                bytes += meta.len();
            }
        }
    }
    (count, bytes)
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

    use crate::store::local::{ContentStore, tag_key};

    fn d(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64)).parse().unwrap()
    }

    #[test]
    fn keys_parse_with_ports_and_nested_repositories() {
        assert_eq!(
            parse_tag_key("localhost:5000/org/team/app:1.2#application/json,*/*"),
            Some(("localhost:5000".into(), "org/team/app".into(), "1.2".into()))
        );
        assert_eq!(parse_tag_key("ghcr.io/app#x"), None);
        let key = format!("ghcr.io/org/app@{}", d('a'));
        assert_eq!(
            parse_digest_key(&key),
            Some(("ghcr.io".into(), "org/app".into(), d('a')))
        );
        assert_eq!(parse_digest_key("ghcr.io/org/app@sha256:nothex"), None);
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
    async fn put_image(store: &ContentStore, repo: &str, tag: &str, layer: &[u8]) -> (Digest, Vec<Digest>) {
        let mut blobs = Vec::new();
        for data in [format!("config of {repo}:{tag}").into_bytes(), layer.to_vec()] {
            let digest = Digest::of(Algorithm::Sha256, &data);
            let mut w = store.blob_writer(&digest, None).await.unwrap();
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
        let store = ContentStore::new(dir.path().join("cache"));
        let shared = vec![9u8; 1000];
        let (m1, b1) = put_image(&store, "org/app", "1.0", &shared).await;
        let (m2, _) = put_image(&store, "org/other", "latest", &shared).await;
        let inv = Inventory::read(dir.path()).unwrap();
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
        let inv = Inventory::read(dir.path()).unwrap();
        let all = inv.images(&ImageFilter::default());
        assert_eq!(all.len(), 3);
        assert!(
            all.iter()
                .any(|i| i.tag.is_none() && i.reference.ends_with(&format!("@{loose}")))
        );
    }

    #[test]
    fn a_missing_data_dir_is_an_error_and_an_empty_one_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Inventory::read(&dir.path().join("nope")),
            Err(InventoryError::NoDataDir(_))
        ));
        let inv = Inventory::read(dir.path()).unwrap();
        assert!(inv.content.is_empty() && inv.tags.is_empty());
    }
}
