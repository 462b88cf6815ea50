//! Air-gapped seeding: `regcache cache export` writes cached images to an OCI image layout
//! (image-spec "image-layout": `oci-layout`, `index.json`, `blobs/<alg>/<hex>`), and
//! `regcache cache import` loads one into the cache of another machine.
//!
//! The registry an image belongs to survives the trip: each `index.json` entry carries the
//! full reference (`ghcr.io/org/app:1.2`, `docker.io/library/alpine:latest`, or
//! `…@sha256:…` for an export by digest) in `org.opencontainers.image.ref.name` and, for
//! containerd's `ctr import`, in `io.containerd.image.name`; `io.regcache.public` says whether
//! the repository was public where it was exported (see [`crate::cache::repo_access`]). Import reads
//! `org.opencontainers.image.ref.name` (or `io.containerd.image.name`) and refuses entries that
//! do not name their registry.
//!
//! Export includes what the cache holds: an index with the platforms that are fully cached
//! (the layout spec allows referenced blobs to be absent). Import verifies every manifest and
//! blob against its digest and length before anything is recorded; if one is missing or
//! corrupt the whole import is refused, the content it had copied is removed, and no tag,
//! manifest or membership entry is written, so nothing half-imported is ever served.

use std::collections::{BTreeMap, HashSet};
use std::io::{Read as _, Write};
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use indicatif::HumanBytes;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt as _;

use crate::cli::args::{CommandError, ExportArgs, ImportArgs};
use crate::config::file::ConfigError;
use crate::images::seed::{self, SeedImage, SeedManifest};
use crate::registry::digest::Digest;
use crate::registry::image_ref::ImageRef;
use crate::registry::manifest::{self, Descriptor, MAX_MANIFEST, Manifest, ManifestError, OCI_INDEX};
use crate::registry::request::Reference;
use crate::store::local::{self as store, ContentStore, StoreError, TagRecord};

/// The layout marker file.
pub const LAYOUT_FILE: &str = "oci-layout";
/// The layout's entry point.
pub const INDEX_FILE: &str = "index.json";
/// The annotation holding an image's full reference (registry included).
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// containerd's annotation for the full image name (what `ctr import` reads).
pub const CONTAINERD_NAME: &str = "io.containerd.image.name";
/// regcache's annotation: `"true"` when the repository was public where it was exported.
pub const PUBLIC: &str = "io.regcache.public";

const LAYOUT_VERSION: &str = "1.0.0";
/// `index.json` larger than this is refused.
const MAX_INDEX: u64 = 16 * 1024 * 1024;
/// Copy buffer.
const CHUNK: usize = 1024 * 1024;

/// Why an export or import failed.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The directory is not a usable OCI image layout.
    #[error("{path}: {reason}")]
    Layout {
        /// The file at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A blob the image needs is not in the layout.
    #[error("blob {digest} is missing from the layout ({path})")]
    Missing {
        /// The blob.
        digest: Digest,
        /// Where it should be.
        path: PathBuf,
    },
    /// A blob or manifest does not match its digest or length.
    #[error("blob {digest} is corrupt ({path}): {reason}")]
    Corrupt {
        /// The blob.
        digest: Digest,
        /// Its file.
        path: PathBuf,
        /// The mismatch.
        reason: String,
    },
    /// The image is not (fully) in the cache.
    #[error("{0}")]
    NotCached(String),
    /// A manifest that cannot be walked.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The store could not be read or written.
    #[error("cache: {0}")]
    Store(#[from] StoreError),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// `index.json`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexJson {
    schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

/// `oci-layout`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutMarker {
    image_layout_version: String,
}

/// `DIR/blobs/<alg>/<hex>`.
pub fn blob_path(layout: &Path, digest: &Digest) -> PathBuf {
    layout
        .join("blobs")
        .join(digest.algorithm().as_str())
        .join(digest.hex())
}

/// An image walked in the cache or in a layout: its manifests and blobs.
#[derive(Debug, Default)]
struct Walked {
    children: Vec<SeedManifest>,
    blobs: Vec<Descriptor>,
    platforms: Vec<String>,
    left_out: Vec<String>,
}

// ---- export ----

/// What exporting one image did.
#[derive(Debug)]
pub struct Exported {
    /// The digest the reference resolved to in the cache.
    pub digest: Digest,
    /// Blobs written (or already in the layout).
    pub blobs: usize,
    /// Their bytes.
    pub bytes: u64,
    /// Platforms included from an index.
    pub platforms: Vec<String>,
    /// Platforms of the index that are not fully cached and were left out.
    pub left_out: Vec<String>,
}

/// Writes cached images into a layout directory.
pub struct Exporter {
    store: ContentStore,
    dir: PathBuf,
    entries: Vec<Descriptor>,
}

impl Exporter {
    /// Starts a layout in `dir` (created; refused unless empty), reading from `store`.
    ///
    /// # Errors
    /// If `dir` is not empty or cannot be created.
    pub fn create(store: ContentStore, dir: &Path) -> Result<Self, LayoutError> {
        if let Ok(mut list) = std::fs::read_dir(dir)
            && list.next().is_some()
        {
            return Err(LayoutError::Layout {
                path: dir.to_path_buf(),
                reason: "not empty: export writes a new layout into an empty or new directory".into(),
            });
        }
        std::fs::create_dir_all(dir.join("blobs")).map_err(io_err(dir))?;
        let marker = serde_json::to_vec(&LayoutMarker {
            image_layout_version: LAYOUT_VERSION.into(),
        })
        .map_err(|e| std::io::Error::other(e.to_string()))
        .map_err(io_err(dir))?;
        let path = dir.join(LAYOUT_FILE);
        std::fs::write(&path, marker).map_err(io_err(&path))?;
        Ok(Self {
            store,
            dir: dir.to_path_buf(),
            entries: Vec::new(),
        })
    }

    /// Adds one cached image: its manifests and blobs to `blobs/`, an entry to `index.json`
    /// (written by [`Exporter::finish`]). Reads only the cache: no network.
    ///
    /// # Errors
    /// When the image is not cached (or not completely), or a cached blob is corrupt.
    pub async fn add(&mut self, image: &ImageRef) -> Result<Exported, LayoutError> {
        let (registry, repository) = (&image.registry, &image.repository);
        let digest = match &image.reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(tag) => self.resolve_tag(image, tag).await?,
        };
        let top = self
            .store
            .manifest(registry, repository, &digest)
            .await
            .ok_or_else(|| LayoutError::NotCached(format!("manifest {digest} is not cached")))?;
        let top = SeedManifest {
            digest: top.digest,
            media_type: top.media_type,
            bytes: top.bytes,
        };
        let walked = self.walk_cached(image, &top).await?;
        let mut bytes = 0;
        for m in walked.children.iter().chain(std::iter::once(&top)) {
            write_file(&blob_path(&self.dir, &m.digest), &m.bytes)?;
        }
        for b in &walked.blobs {
            let d = b.parsed_digest()?;
            let dst = blob_path(&self.dir, &d);
            let src = self.store.content_path(&d);
            bytes += tokio::task::spawn_blocking(move || copy_verified(&src, &dst, &d))
                .await
                .map_err(|e| LayoutError::NotCached(format!("copy task failed: {e}")))??;
        }
        let public = self.store.public_since(registry, repository).await.is_some();
        let name = image.to_string();
        let annotations = BTreeMap::from([
            (REF_NAME.to_string(), name.clone()),
            (CONTAINERD_NAME.to_string(), name.clone()),
            (PUBLIC.to_string(), public.to_string()),
        ]);
        self.entries.retain(|e| e.annotations.get(REF_NAME) != Some(&name));
        self.entries.push(Descriptor {
            media_type: top.media_type.clone(),
            digest: top.digest.to_string(),
            size: top.bytes.len() as u64,
            platform: None,
            urls: Vec::new(),
            annotations,
        });
        Ok(Exported {
            digest: top.digest,
            blobs: walked.blobs.len(),
            bytes,
            platforms: walked.platforms,
            left_out: walked.left_out,
        })
    }

    /// Writes `index.json` (atomically: a layout without it is no layout).
    ///
    /// # Errors
    /// If it cannot be written.
    pub fn finish(self) -> Result<PathBuf, LayoutError> {
        let index = IndexJson {
            schema_version: 2,
            media_type: Some(OCI_INDEX.into()),
            manifests: self.entries,
        };
        let json = serde_json::to_vec_pretty(&index).map_err(|e| LayoutError::Layout {
            path: self.dir.join(INDEX_FILE),
            reason: e.to_string(),
        })?;
        write_file(&self.dir.join(INDEX_FILE), &json)?;
        Ok(self.dir)
    }

    /// The digest a tag has in the cache: the record `warm`/`import` wrote, else the most
    /// recently validated record any client's pull left, preferring an index (it covers every
    /// platform).
    async fn resolve_tag(&self, image: &ImageRef, tag: &str) -> Result<Digest, LayoutError> {
        let (registry, repository) = (&image.registry, &image.repository);
        let mut records: Vec<TagRecord> = Vec::new();
        if let Some(r) = self.store.tag(&store::seeded_tag_key(registry, repository, tag)).await {
            records.push(r);
        }
        records.extend(
            self.store
                .tag_records(registry, repository, tag)
                .await
                .into_iter()
                .map(|(_, r)| r),
        );
        records.sort_by_key(|r| (manifest::is_index(&r.media_type), r.validated_at_ms));
        for r in records.iter().rev() {
            if let Ok(d) = r.digest.parse::<Digest>()
                && self.store.manifest(registry, repository, &d).await.is_some()
            {
                return Ok(d);
            }
        }
        Err(LayoutError::NotCached(
            "not in the cache (pull it through regcache, or run regcache warm, first)".into(),
        ))
    }

    /// The cached children and blobs of `top`; an index keeps the platforms fully cached.
    async fn walk_cached(&self, image: &ImageRef, top: &SeedManifest) -> Result<Walked, LayoutError> {
        let (registry, repository) = (&image.registry, &image.repository);
        let mut walked = Walked::default();
        let mut pending = vec![(Manifest::parse(&top.media_type, &top.bytes)?, None::<String>, 0)];
        while let Some((parsed, platform, depth)) = pending.pop() {
            match parsed {
                Manifest::Index(entries) if depth < 2 => {
                    let before = walked.children.len();
                    for d in entries {
                        let label = d
                            .platform
                            .as_ref()
                            .map_or_else(|| d.digest.clone(), ToString::to_string);
                        let digest = d.parsed_digest()?;
                        match self.store.manifest(registry, repository, &digest).await {
                            Some(m) => {
                                let parsed = Manifest::parse(&m.media_type, &m.bytes)?;
                                if let Some(missing) = self.first_missing_blob(&parsed).await {
                                    walked.left_out.push(format!("{label} (blob {missing} not cached)"));
                                    continue;
                                }
                                walked.children.push(SeedManifest {
                                    digest,
                                    media_type: m.media_type,
                                    bytes: m.bytes,
                                });
                                pending.push((parsed, Some(label), depth + 1));
                            }
                            None => walked.left_out.push(label),
                        }
                    }
                    if walked.children.len() == before {
                        return Err(LayoutError::NotCached(
                            "no platform of this index is fully cached (run regcache warm --platform …)".into(),
                        ));
                    }
                }
                Manifest::Index(_) => {
                    return Err(LayoutError::NotCached("indexes nested more than 2 deep".into()));
                }
                image_manifest @ Manifest::Image { .. } => {
                    if let Some(missing) = self.first_missing_blob(&image_manifest).await {
                        return Err(LayoutError::NotCached(format!(
                            "not fully cached: blob {missing} is missing (run regcache warm first)"
                        )));
                    }
                    if let Some(p) = platform {
                        walked.platforms.push(p);
                    }
                    for b in image_manifest.blobs() {
                        if !walked.blobs.iter().any(|x| x.digest == b.digest) {
                            walked.blobs.push(b.clone());
                        }
                    }
                }
            }
        }
        Ok(walked)
    }

    async fn first_missing_blob(&self, m: &Manifest) -> Option<String> {
        for b in m.blobs() {
            match b.parsed_digest() {
                Ok(d) if self.store.blob(&d).await.is_some() => {}
                _ => return Some(b.digest.clone()),
            }
        }
        None
    }
}

/// Writes a file whole, through a temporary name (a reader never sees half of it).
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tmp = partial_path(path);
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

/// Copies a cached blob into the layout, re-hashing it on the way: a blob corrupted on disk
/// since it was cached is never exported. Skips a blob the layout already has. Blocking.
fn copy_verified(src: &Path, dst: &Path, digest: &Digest) -> Result<u64, LayoutError> {
    if let Ok(meta) = std::fs::metadata(dst) {
        return Ok(meta.len());
    }
    if let Some(dir) = dst.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tmp = partial_path(dst);
    let mut input = std::fs::File::open(src).map_err(io_err(src))?;
    let mut output = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut hasher = digest.hasher();
    let mut buf = vec![0u8; CHUNK];
    let mut len = 0u64;
    loop {
        let n = input.read(&mut buf).map_err(io_err(src))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        output.write_all(&buf[..n]).map_err(io_err(&tmp))?;
        len += n as u64;
    }
    let actual = hasher.finish();
    if actual != *digest {
        let _ = std::fs::remove_file(&tmp);
        return Err(LayoutError::Corrupt {
            digest: digest.clone(),
            path: src.to_path_buf(),
            reason: format!("the cached copy hashes to {actual} (run regcache cache verify --repair)"),
        });
    }
    output.sync_all().map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, dst).map_err(io_err(dst))?;
    Ok(len)
}

// ---- import ----

/// An image of the layout, verified and staged, waiting to be recorded.
#[derive(Debug)]
pub struct Staged {
    /// Its reference (from the annotation).
    pub image: ImageRef,
    /// The manifest the reference names.
    pub top: SeedManifest,
    children: Vec<SeedManifest>,
    blobs: Vec<Digest>,
    public: bool,
    /// Platforms included from an index.
    pub platforms: Vec<String>,
    /// Blob bytes copied into the cache (the rest was cached already).
    pub copied: u64,
}

/// Loads a layout into a store: [`Importer::stage`] verifies and copies blobs, then
/// [`Importer::commit`] records everything, or [`Importer::roll_back`] removes what was copied.
pub struct Importer {
    store: ContentStore,
    dir: PathBuf,
    /// Content files this import created (removed on roll-back).
    created: Vec<PathBuf>,
    /// Blobs verified so far (shared layers are checked once).
    verified: HashSet<Digest>,
}

impl Importer {
    /// An import of the layout in `dir` into `store`.
    pub fn new(store: ContentStore, dir: &Path) -> Self {
        Self {
            store,
            dir: dir.to_path_buf(),
            created: Vec::new(),
            verified: HashSet::new(),
        }
    }

    /// Reads `oci-layout` and `index.json`: the images the layout holds, with their references
    /// and whether they were public where they came from.
    ///
    /// # Errors
    /// If the directory is not an OCI image layout, or an entry names no full reference.
    pub fn entries(&self) -> Result<Vec<(ImageRef, Descriptor, bool)>, LayoutError> {
        let marker_path = self.dir.join(LAYOUT_FILE);
        let marker = std::fs::read(&marker_path).map_err(|e| LayoutError::Layout {
            path: marker_path.clone(),
            reason: format!("not an OCI image layout: {e}"),
        })?;
        let marker: LayoutMarker = serde_json::from_slice(&marker).map_err(|e| LayoutError::Layout {
            path: marker_path.clone(),
            reason: format!("not an OCI layout marker: {e}"),
        })?;
        if marker.image_layout_version.split('.').next() != Some("1") {
            return Err(LayoutError::Layout {
                path: marker_path,
                reason: format!(
                    "imageLayoutVersion {:?} is not supported (1.x is)",
                    marker.image_layout_version
                ),
            });
        }
        let index_path = self.dir.join(INDEX_FILE);
        let len = std::fs::metadata(&index_path).map_err(io_err(&index_path))?.len();
        if len > MAX_INDEX {
            return Err(LayoutError::Layout {
                path: index_path,
                reason: "larger than 16 MiB".into(),
            });
        }
        let bytes = std::fs::read(&index_path).map_err(io_err(&index_path))?;
        let index: IndexJson = serde_json::from_slice(&bytes).map_err(|e| LayoutError::Layout {
            path: index_path.clone(),
            reason: format!("not an image index: {e}"),
        })?;
        let mut out = Vec::new();
        for (i, d) in index.manifests.into_iter().enumerate() {
            let bad = |reason: String| LayoutError::Layout {
                path: index_path.clone(),
                reason: format!("manifests[{i}] ({}): {reason}", d.digest),
            };
            let name = d
                .annotations
                .get(REF_NAME)
                .filter(|n| ImageRef::parse_qualified(n).is_ok())
                .or_else(|| d.annotations.get(CONTAINERD_NAME))
                .ok_or_else(|| {
                    bad(format!(
                        "no {REF_NAME} annotation naming the registry (like ghcr.io/org/app:1.2)"
                    ))
                })?;
            let image = ImageRef::parse_qualified(name).map_err(|e| bad(format!("{REF_NAME}: {e}")))?;
            let digest = d.parsed_digest().map_err(|e| bad(e.to_string()))?;
            if let Reference::Digest(named) = &image.reference
                && *named != digest
            {
                return Err(bad(format!("named {named} but the entry is {digest}")));
            }
            let public = d.annotations.get(PUBLIC).is_some_and(|v| v == "true");
            out.push((image, d, public));
        }
        Ok(out)
    }

    /// Verifies one image of the layout and copies its blobs into the store (each verified as
    /// it is written); records nothing yet.
    ///
    /// # Errors
    /// A missing or corrupt manifest or blob.
    pub async fn stage(
        &mut self,
        image: ImageRef,
        desc: &Descriptor,
        public: bool,
        progress: &crate::cli::progress::ImageProgress,
    ) -> Result<Staged, LayoutError> {
        let top = self.read_manifest(desc).await?;
        let mut walked = Walked::default();
        let mut pending = vec![(Manifest::parse(&top.media_type, &top.bytes)?, None::<String>, 0)];
        while let Some((parsed, platform, depth)) = pending.pop() {
            match parsed {
                Manifest::Index(entries) if depth < 2 => {
                    let before = walked.children.len();
                    for d in entries {
                        // Platforms left out at export are absent: the layout spec allows it.
                        let Ok(digest) = d.parsed_digest() else { continue };
                        if !blob_path(&self.dir, &digest).exists() {
                            continue;
                        }
                        let child = self.read_manifest(&d).await?;
                        let label = d
                            .platform
                            .as_ref()
                            .map_or_else(|| d.digest.clone(), ToString::to_string);
                        pending.push((
                            Manifest::parse(&child.media_type, &child.bytes)?,
                            Some(label),
                            depth + 1,
                        ));
                        walked.children.push(child);
                    }
                    if walked.children.len() == before {
                        return Err(LayoutError::Layout {
                            path: blob_path(&self.dir, &top.digest),
                            reason: "none of this index's manifests is in the layout".into(),
                        });
                    }
                }
                Manifest::Index(_) => {
                    return Err(LayoutError::Layout {
                        path: blob_path(&self.dir, &top.digest),
                        reason: "indexes nested more than 2 deep".into(),
                    });
                }
                image_manifest @ Manifest::Image { .. } => {
                    walked.platforms.extend(platform);
                    for b in image_manifest.blobs() {
                        if !walked.blobs.iter().any(|x| x.digest == b.digest) {
                            walked.blobs.push(b.clone());
                        }
                    }
                }
            }
        }
        let total: u64 = walked.blobs.iter().map(|b| b.size).sum();
        progress.add_total(total);
        progress.stage(&format!(
            "verifying {} blobs ({})",
            walked.blobs.len(),
            HumanBytes(total)
        ));
        let mut copied = 0;
        let mut blobs = Vec::new();
        for b in &walked.blobs {
            let digest = b.parsed_digest()?;
            copied += self.import_blob(&digest, b.size, progress).await?;
            blobs.push(digest);
        }
        Ok(Staged {
            image,
            top,
            children: walked.children,
            blobs,
            public,
            platforms: walked.platforms,
            copied,
        })
    }

    /// Records staged images (manifests, membership, public status, tags; see [`crate::images::seed`]).
    ///
    /// # Errors
    /// The first store failure.
    pub async fn commit(&self, staged: &[Staged]) -> Result<(), LayoutError> {
        for s in staged {
            seed::record(
                &self.store,
                &SeedImage {
                    image: &s.image,
                    top: s.top.clone(),
                    children: s.children.clone(),
                    blobs: s.blobs.clone(),
                    public: s.public,
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Removes the content files this import created. A running `serve` that committed the
    /// same blob meanwhile merely downloads it again: nothing it recorded is ever wrong.
    pub async fn roll_back(self) {
        for path in self.created {
            let _ = tokio::fs::remove_file(path).await;
        }
    }

    /// Reads and verifies a manifest of the layout.
    async fn read_manifest(&self, desc: &Descriptor) -> Result<SeedManifest, LayoutError> {
        let digest = desc.parsed_digest()?;
        let path = blob_path(&self.dir, &digest);
        let meta = tokio::fs::metadata(&path).await.map_err(|_| LayoutError::Missing {
            digest: digest.clone(),
            path: path.clone(),
        })?;
        let corrupt = |reason: String| LayoutError::Corrupt {
            digest: digest.clone(),
            path: path.clone(),
            reason,
        };
        if meta.len() > MAX_MANIFEST as u64 {
            return Err(corrupt("a manifest larger than 4 MiB".into()));
        }
        let bytes = Bytes::from(tokio::fs::read(&path).await.map_err(io_err(&path))?);
        if desc.size != 0 && desc.size != bytes.len() as u64 {
            return Err(corrupt(format!(
                "{} bytes, the descriptor says {}",
                bytes.len(),
                desc.size
            )));
        }
        let actual = Digest::of(digest.algorithm(), &bytes);
        if actual != digest {
            return Err(corrupt(format!("does not match its digest (hashes to {actual})")));
        }
        let media_type = if desc.media_type.is_empty() {
            manifest::effective_media_type("", &bytes)
        } else {
            desc.media_type.clone()
        };
        Ok(SeedManifest {
            digest,
            media_type,
            bytes,
        })
    }

    /// Verifies one blob of the layout: copied into the store through a verifying
    /// [`BlobWriter`](crate::store::local::BlobWriter), or re-hashed when the store has it already.
    /// Returns the bytes copied.
    async fn import_blob(
        &mut self,
        digest: &Digest,
        size: u64,
        progress: &crate::cli::progress::ImageProgress,
    ) -> Result<u64, LayoutError> {
        if self.verified.contains(digest) {
            return Ok(0);
        }
        let path = blob_path(&self.dir, digest);
        let mut file = tokio::fs::File::open(&path).await.map_err(|_| LayoutError::Missing {
            digest: digest.clone(),
            path: path.clone(),
        })?;
        let corrupt = |reason: String| LayoutError::Corrupt {
            digest: digest.clone(),
            path: path.clone(),
            reason,
        };
        let expected = (size > 0).then_some(size);
        let cached = self.store.blob(digest).await.is_some();
        let mut writer = if cached {
            None
        } else {
            Some(self.store.blob_writer(digest, expected).await?)
        };
        let mut hasher = digest.hasher();
        let mut len = 0u64;
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK);
            let n = match file.read_buf(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    if let Some(w) = writer {
                        w.discard().await;
                    }
                    return Err(LayoutError::Io { path, source: e });
                }
            };
            if n == 0 {
                break;
            }
            len += n as u64;
            progress.advance(n as u64);
            match &mut writer {
                Some(w) => {
                    if let Err(e) = w.write(buf.freeze()).await {
                        if let Some(w) = writer {
                            w.discard().await;
                        }
                        return Err(e.into());
                    }
                }
                None => hasher.update(&buf),
            }
        }
        match writer {
            Some(w) => match w.commit().await {
                Ok(stored) => self.created.push(stored.path),
                Err(StoreError::DigestMismatch { actual, .. }) => {
                    return Err(corrupt(format!("does not match its digest (hashes to {actual})")));
                }
                Err(StoreError::SizeMismatch { expected, actual }) => {
                    return Err(corrupt(format!("{actual} bytes, the manifest says {expected}")));
                }
                Err(e) => return Err(e.into()),
            },
            None => {
                let actual = hasher.finish();
                if actual != *digest {
                    return Err(corrupt(format!("does not match its digest (hashes to {actual})")));
                }
                if let Some(e) = expected
                    && e != len
                {
                    return Err(corrupt(format!("{len} bytes, the manifest says {e}")));
                }
            }
        }
        self.verified.insert(digest.clone());
        progress.blob_done(&digest.to_string(), len);
        Ok(if cached { 0 } else { len })
    }
}

// ---- commands ----

fn runtime() -> Result<tokio::runtime::Runtime, CommandError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CommandError::Failed(format!("cannot start the async runtime: {e}")))
}

/// `regcache cache export REF... --to DIR`: one line per image and a summary on standard
/// output.
///
/// # Errors
/// [`CommandError::Usage`] for a bad configuration or a non-empty `--to`;
/// [`CommandError::Failed`] when any image could not be exported (the others are in the layout).
pub fn export_command(args: &ExportArgs) -> Result<(), CommandError> {
    let config = args.serve.source().load()?.config;
    crate::cli::progress::init_tracing();
    let store = ContentStore::new(config.data_dir.join("cache"));
    let mut exporter = Exporter::create(store, &args.to).map_err(|e| match e {
        LayoutError::Layout { reason, .. } => CommandError::Usage(ConfigError::new(
            "command line",
            "--to",
            format!("{}: {reason}", args.to.display()),
        )),
        other => CommandError::Failed(other.to_string()),
    })?;
    let mut out = std::io::stdout().lock();
    let mut failed = 0;
    let mut seen = HashSet::new();
    let refs: Vec<&ImageRef> = args.refs.iter().filter(|r| seen.insert(r.to_string())).collect();
    runtime()?.block_on(async {
        for image in &refs {
            match exporter.add(image).await {
                Ok(e) => {
                    let mut notes = Vec::new();
                    if !e.platforms.is_empty() {
                        notes.push(e.platforms.join(" "));
                    }
                    if !e.left_out.is_empty() {
                        notes.push(format!("left out, not cached: {}", e.left_out.join(", ")));
                    }
                    let notes = notes.iter().map(|n| format!("; {n}")).collect::<String>();
                    let _ = writeln!(
                        out,
                        "exported  {image} {} ({} blobs, {}{notes})",
                        e.digest,
                        e.blobs,
                        HumanBytes(e.bytes)
                    );
                }
                Err(e) => {
                    failed += 1;
                    let _ = writeln!(out, "failed    {image}: {e}");
                }
            }
        }
    });
    let dir = exporter.finish().map_err(|e| CommandError::Failed(e.to_string()))?;
    let _ = writeln!(
        out,
        "export: {} exported, {failed} failed, to {}",
        refs.len() - failed,
        dir.display()
    );
    let _ = out.flush();
    if failed > 0 {
        return Err(CommandError::Failed(format!(
            "export: {failed} of {} images failed",
            refs.len()
        )));
    }
    Ok(())
}

/// `regcache cache import DIR`: verifies the whole layout, then records it; one line per image
/// and a summary on standard output.
///
/// # Errors
/// [`CommandError::Usage`] for a bad configuration; [`CommandError::Failed`] when the layout
/// is unusable or anything in it is missing or corrupt (then nothing is recorded).
pub fn import_command(args: &ImportArgs) -> Result<(), CommandError> {
    let config = args.serve.source().load()?.config;
    crate::cli::progress::init_tracing();
    let store = ContentStore::new(config.data_dir.join("cache"));
    let reporter = crate::cli::progress::Reporter::new();
    let mut importer = Importer::new(store, &args.dir);
    let refused = |e: LayoutError| CommandError::Failed(format!("import refused, nothing recorded: {e}"));
    let entries = importer.entries().map_err(refused)?;
    if entries.is_empty() {
        return Err(refused(LayoutError::Layout {
            path: args.dir.join(INDEX_FILE),
            reason: "lists no image".into(),
        }));
    }
    let mut out = std::io::stdout().lock();
    runtime()?.block_on(async {
        let mut staged = Vec::new();
        for (image, desc, public) in entries {
            let name = image.to_string();
            let progress = reporter.image(&name);
            match importer.stage(image, &desc, public || args.public, &progress).await {
                Ok(s) => {
                    progress.finish("verified");
                    staged.push(s);
                }
                Err(e) => {
                    progress.fail(&format!("refused: {e}"));
                    importer.roll_back().await;
                    return Err(refused(LayoutError::NotCached(format!("{name}: {e}"))));
                }
            }
        }
        if let Err(e) = importer.commit(&staged).await {
            return Err(CommandError::Failed(format!("import failed while recording: {e}")));
        }
        let (mut blobs, mut copied) = (0, 0);
        for s in &staged {
            blobs += s.blobs.len();
            copied += s.copied;
            let platforms = if s.platforms.is_empty() {
                String::new()
            } else {
                format!("; {}", s.platforms.join(" "))
            };
            let _ = writeln!(
                out,
                "imported  {} {} ({} blobs, {} copied{platforms})",
                s.image,
                s.top.digest,
                s.blobs.len(),
                HumanBytes(s.copied)
            );
        }
        let _ = writeln!(
            out,
            "import: {} images, {blobs} blobs, {} copied into the cache",
            staged.len(),
            HumanBytes(copied)
        );
        let _ = out.flush();
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::digest::Algorithm;

    fn put_blob(layout: &Path, bytes: &[u8]) -> Digest {
        let d = Digest::of(Algorithm::Sha256, bytes);
        write_file(&blob_path(layout, &d), bytes).unwrap();
        d
    }

    /// A layout with one image (config + one layer) named `name`.
    fn layout_with_image(dir: &Path, name: &str) -> (Digest, Digest) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join(LAYOUT_FILE), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let config = br#"{"architecture":"amd64","os":"linux"}"#;
        let layer = vec![42u8; 300_000];
        let c = put_blob(dir, config);
        let l = put_blob(dir, &layer);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l}","size":{}}}]}}"#,
            manifest::OCI_MANIFEST,
            config.len(),
            layer.len()
        );
        let m = put_blob(dir, manifest.as_bytes());
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{m}","size":{},"annotations":{{"{REF_NAME}":"{name}","{PUBLIC}":"true"}}}}]}}"#,
            manifest::OCI_MANIFEST,
            manifest.len()
        );
        std::fs::write(dir.join(INDEX_FILE), index).unwrap();
        (m, l)
    }

    async fn import(store: &ContentStore, dir: &Path) -> Result<Vec<Staged>, LayoutError> {
        let mut importer = Importer::new(store.clone(), dir);
        let mut staged = Vec::new();
        let progress = crate::cli::progress::Reporter::with_bars(false).image("test");
        for (image, desc, public) in importer.entries()? {
            match importer.stage(image, &desc, public, &progress).await {
                Ok(s) => staged.push(s),
                Err(e) => {
                    importer.roll_back().await;
                    return Err(e);
                }
            }
        }
        importer.commit(&staged).await?;
        Ok(staged)
    }

    #[tokio::test]
    async fn import_then_export_round_trips_with_the_registry() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("in");
        let (m, l) = layout_with_image(&layout, "quay.io/org/app:1.0");
        let store = ContentStore::new(tmp.path().join("cache"));
        let staged = import(&store, &layout).await.unwrap();
        assert_eq!(staged[0].image.to_string(), "quay.io/org/app:1.0");
        assert!(store.blob(&l).await.is_some());
        assert!(store.manifest("quay.io", "org/app", &m).await.is_some());
        assert!(store.is_member("quay.io", "org/app", &l).await);
        assert!(store.public_since("quay.io", "org/app").await.is_some());
        let tag = store
            .tag(&store::seeded_tag_key("quay.io", "org/app", "1.0"))
            .await
            .unwrap();
        assert_eq!(tag.digest, m.to_string());

        let out = tmp.path().join("out");
        let mut exporter = Exporter::create(store.clone(), &out).unwrap();
        let e = exporter
            .add(&ImageRef::parse("quay.io/org/app:1.0").unwrap())
            .await
            .unwrap();
        assert_eq!(e.digest, m);
        exporter.finish().unwrap();
        let index: IndexJson = serde_json::from_slice(&std::fs::read(out.join(INDEX_FILE)).unwrap()).unwrap();
        assert_eq!(index.manifests[0].annotations[REF_NAME], "quay.io/org/app:1.0");
        assert_eq!(index.manifests[0].annotations[PUBLIC], "true");
        assert_eq!(
            std::fs::read(blob_path(&out, &l)).unwrap(),
            std::fs::read(blob_path(&layout, &l)).unwrap()
        );
        assert!(
            Exporter::create(store.clone(), &out).is_err(),
            "a non-empty directory is refused"
        );
        let mut again = Exporter::create(store, &tmp.path().join("again")).unwrap();
        assert!(matches!(
            again.add(&ImageRef::parse("quay.io/org/other:1.0").unwrap()).await,
            Err(LayoutError::NotCached(_))
        ));
    }

    #[tokio::test]
    async fn a_corrupt_blob_refuses_the_whole_import() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("in");
        let (m, l) = layout_with_image(&layout, "quay.io/org/app:1.0");
        let path = blob_path(&layout, &l);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[1000] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let store = ContentStore::new(tmp.path().join("cache"));
        let err = import(&store, &layout).await.unwrap_err();
        assert!(
            matches!(&err, LayoutError::Corrupt { digest, .. } if *digest == l),
            "{err}"
        );
        assert!(store.blob(&l).await.is_none());
        assert!(store.manifest("quay.io", "org/app", &m).await.is_none());
        assert!(
            store
                .tag(&store::seeded_tag_key("quay.io", "org/app", "1.0"))
                .await
                .is_none()
        );
        let (entries, _) = store.content_usage();
        assert_eq!(entries, 0, "the config blob copied before the failure was removed");
    }

    #[tokio::test]
    async fn entries_must_name_their_registry() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("in");
        layout_with_image(&layout, "app:1.0");
        let importer = Importer::new(ContentStore::new(tmp.path().join("cache")), &layout);
        let err = importer.entries().unwrap_err().to_string();
        assert!(err.contains("naming the registry"), "{err}");
        assert!(
            Importer::new(ContentStore::new(tmp.path().join("c")), tmp.path())
                .entries()
                .unwrap_err()
                .to_string()
                .contains("not an OCI image layout")
        );
    }
}
