//! `regcache cache export`: cached images written to an OCI image layout, each blob re-hashed
//! on the way out (a blob corrupted on disk since it was cached is never exported).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use futures_util::StreamExt as _;
use oci_spec::image::{ImageIndex, MediaType, OciLayoutBuilder};
use tokio::io::AsyncWriteExt as _;

use super::{
    CONTAINERD_NAME, INDEX_FILE, LAYOUT_FILE, LAYOUT_VERSION, LayoutError, PUBLIC, REF_NAME, Walked, blob_path, io_err,
    partial_path, write_file,
};
use crate::cache::{Records, TagRecord, seeded_tag_key};
use crate::images::seed::SeedManifest;
use crate::registry::manifest::{self, Descriptor, DescriptorExt, Manifest};
use crate::registry::{Digest, ImageRef, Reference};
use crate::store::Access;

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
    store: Records,
    dir: PathBuf,
    entries: Vec<Descriptor>,
}

impl Exporter {
    /// Starts a layout in `dir` (created; refused unless empty), reading from `store`.
    ///
    /// # Errors
    /// If `dir` is not empty or cannot be created.
    pub fn create(store: Records, dir: &Path) -> Result<Self, LayoutError> {
        if let Ok(mut list) = std::fs::read_dir(dir)
            && list.next().is_some()
        {
            return Err(LayoutError::Layout {
                path: dir.to_path_buf(),
                reason: "not empty: export writes a new layout into an empty or new directory".into(),
            });
        }
        std::fs::create_dir_all(dir.join("blobs")).map_err(io_err(dir))?;
        let marker = OciLayoutBuilder::default()
            .image_layout_version(LAYOUT_VERSION)
            .build()
            .and_then(|m| m.to_string())
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
            bytes += copy_verified(&self.store, &d, &dst).await?;
        }
        let public = self.store.public_since(registry, repository).await.is_some();
        let name = image.to_string();
        let annotations = HashMap::from([
            (REF_NAME.to_string(), name.clone()),
            (CONTAINERD_NAME.to_string(), name.clone()),
            (PUBLIC.to_string(), public.to_string()),
        ]);
        let digest: oci_spec::image::Digest = top.digest.to_string().parse().map_err(|e: oci_spec::OciSpecError| {
            LayoutError::Manifest(manifest::ManifestError::BadDigest(e.to_string()))
        })?;
        let mut entry = Descriptor::new(MediaType::from(top.media_type.as_str()), top.bytes.len() as u64, digest);
        entry.set_annotations(Some(annotations));
        self.entries.retain(|e| e.annotation(REF_NAME) != Some(name.as_str()));
        self.entries.push(entry);
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
        let mut index = ImageIndex::default();
        index.set_media_type(Some(MediaType::ImageIndex));
        index.set_manifests(self.entries);
        // Through a `serde_json::Value`, whose maps are sorted: `oci-spec` keeps annotations in
        // a `HashMap`, and the same export must give the same bytes every time.
        let json = serde_json::to_value(&index)
            .and_then(|v| serde_json::to_vec_pretty(&v))
            .map_err(|e| LayoutError::Layout {
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
        if let Some(r) = self.store.tag(&seeded_tag_key(registry, repository, tag)).await {
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
                Manifest::Index(index) if depth < 2 => {
                    let before = walked.children.len();
                    for d in index.manifests() {
                        let label = d.platform_name().unwrap_or_else(|| d.digest().to_string());
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
                image_manifest @ Manifest::Image(_) => {
                    if let Some(missing) = self.first_missing_blob(&image_manifest).await {
                        return Err(LayoutError::NotCached(format!(
                            "not fully cached: blob {missing} is missing (run regcache warm first)"
                        )));
                    }
                    if let Some(p) = platform {
                        walked.platforms.push(p);
                    }
                    for b in image_manifest.blobs() {
                        if !walked.blobs.iter().any(|x| x.digest() == b.digest()) {
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
                Ok(d) if self.store.store().blobs().stat(&d).await.is_some() => {}
                _ => return Some(b.digest().to_string()),
            }
        }
        None
    }
}

/// Copies a cached blob into the layout, re-hashing it on the way: a blob corrupted since it
/// was cached is never exported. Skips a blob the layout already has.
async fn copy_verified(store: &Records, digest: &Digest, dst: &Path) -> Result<u64, LayoutError> {
    if let Ok(meta) = tokio::fs::metadata(dst).await {
        return Ok(meta.len());
    }
    if let Some(dir) = dst.parent() {
        tokio::fs::create_dir_all(dir).await.map_err(io_err(dir))?;
    }
    let blobs = store.store().blobs();
    let src = PathBuf::from(blobs.location(digest));
    let mut reader = blobs
        .open(digest, 0, None, Access::Inspect)
        .await?
        .ok_or_else(|| LayoutError::NotCached(format!("blob {digest} is not cached")))?;
    let tmp = partial_path(dst);
    let mut output = tokio::fs::File::create(&tmp).await.map_err(io_err(&tmp))?;
    let mut hasher = digest.hasher();
    let mut len = 0u64;
    while let Some(chunk) = reader.stream.next().await {
        let chunk = chunk.map_err(io_err(&src))?;
        hasher.update(&chunk);
        output.write_all(&chunk).await.map_err(io_err(&tmp))?;
        len += chunk.len() as u64;
    }
    let actual = hasher.finish();
    if actual != *digest {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(LayoutError::Corrupt {
            digest: digest.clone(),
            path: src,
            reason: format!("the cached copy hashes to {actual} (run regcache cache verify --repair)"),
        });
    }
    output.sync_all().await.map_err(io_err(&tmp))?;
    tokio::fs::rename(&tmp, dst).await.map_err(io_err(dst))?;
    Ok(len)
}
