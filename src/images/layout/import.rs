//! `regcache cache import`: an OCI image layout loaded into the cache, all or nothing: every
//! manifest and blob is verified against its digest and length before anything is recorded.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use indicatif::HumanBytes;
use tokio::io::AsyncReadExt as _;

use oci_spec::image::{ImageIndex, OciLayout};

use super::{
    CHUNK, CONTAINERD_NAME, INDEX_FILE, LAYOUT_FILE, LayoutError, MAX_INDEX, PUBLIC, REF_NAME, Walked, blob_path,
    io_err,
};
use crate::cache::Records;
use crate::images::Progress;
use crate::images::seed::{self, SeedImage, SeedManifest};
use crate::registry::manifest::{self, Descriptor, DescriptorExt, MAX_MANIFEST, Manifest};
use crate::registry::{Digest, ImageRef, Reference};
use crate::store::StoreError;

/// An image of the layout, verified and staged, waiting to be recorded.
#[derive(Debug)]
pub struct Staged {
    /// Its reference (from the annotation).
    pub image: ImageRef,
    /// The manifest the reference names.
    pub top: SeedManifest,
    children: Vec<SeedManifest>,
    /// Its blobs (config and layers), verified.
    pub blobs: Vec<Digest>,
    public: bool,
    /// Platforms included from an index.
    pub platforms: Vec<String>,
    /// Blob bytes copied into the cache (the rest was cached already).
    pub copied: u64,
}

/// Loads a layout into a store: [`Importer::stage`] verifies and copies blobs, then
/// [`Importer::commit`] records everything, or [`Importer::roll_back`] removes what was copied.
pub struct Importer {
    store: Records,
    dir: PathBuf,
    /// Blobs this import added to the store (removed on roll-back).
    created: Vec<Digest>,
    /// Blobs verified so far (shared layers are checked once).
    verified: HashSet<Digest>,
}

impl Importer {
    /// An import of the layout in `dir` into `store`.
    pub fn new(store: Records, dir: &Path) -> Self {
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
        let marker: OciLayout = serde_json::from_slice(&marker).map_err(|e| LayoutError::Layout {
            path: marker_path.clone(),
            reason: format!("not an OCI layout marker: {e}"),
        })?;
        if marker.image_layout_version().split('.').next() != Some("1") {
            return Err(LayoutError::Layout {
                path: marker_path,
                reason: format!(
                    "imageLayoutVersion {:?} is not supported (1.x is)",
                    marker.image_layout_version()
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
        let index: ImageIndex = serde_json::from_slice(&bytes).map_err(|e| LayoutError::Layout {
            path: index_path.clone(),
            reason: format!("not an image index: {e}"),
        })?;
        let mut out = Vec::new();
        for (i, d) in index.manifests().iter().enumerate() {
            let bad = |reason: String| LayoutError::Layout {
                path: index_path.clone(),
                reason: format!("manifests[{i}] ({}): {reason}", d.digest()),
            };
            let name = d
                .annotation(REF_NAME)
                .filter(|n| ImageRef::parse_qualified(n).is_ok())
                .or_else(|| d.annotation(CONTAINERD_NAME))
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
            let public = d.annotation(PUBLIC) == Some("true");
            out.push((image, d.clone(), public));
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
        progress: &dyn Progress,
    ) -> Result<Staged, LayoutError> {
        let top = self.read_manifest(desc).await?;
        let mut walked = Walked::default();
        let mut pending = vec![(Manifest::parse(&top.media_type, &top.bytes)?, None::<String>, 0)];
        while let Some((parsed, platform, depth)) = pending.pop() {
            match parsed {
                Manifest::Index(index) if depth < 2 => {
                    let before = walked.children.len();
                    for d in index.manifests() {
                        // Platforms left out at export are absent: the layout spec allows it.
                        let Ok(digest) = d.parsed_digest() else { continue };
                        if !blob_path(&self.dir, &digest).exists() {
                            continue;
                        }
                        let child = self.read_manifest(d).await?;
                        let label = d.platform_name().unwrap_or_else(|| d.digest().to_string());
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
                image_manifest @ Manifest::Image(_) => {
                    walked.platforms.extend(platform);
                    for b in image_manifest.blobs() {
                        if !walked.blobs.iter().any(|x| x.digest() == b.digest()) {
                            walked.blobs.push(b.clone());
                        }
                    }
                }
            }
        }
        let total: u64 = walked.blobs.iter().map(Descriptor::size).sum();
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
            copied += self.import_blob(&digest, b.size(), progress).await?;
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

    /// Records staged images (manifests, membership, public status, tags; see [`seed`]).
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

    /// Removes the blobs this import added. A running `serve` that uses one meanwhile merely
    /// downloads it again: nothing it recorded is ever wrong.
    pub async fn roll_back(self) {
        for digest in self.created {
            let _ = self.store.store().blobs().delete(&digest, None).await;
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
        if desc.size() != 0 && desc.size() != bytes.len() as u64 {
            return Err(corrupt(format!(
                "{} bytes, the descriptor says {}",
                bytes.len(),
                desc.size()
            )));
        }
        let actual = Digest::of(digest.algorithm(), &bytes);
        if actual != digest {
            return Err(corrupt(format!("does not match its digest (hashes to {actual})")));
        }
        let media_type = match desc.media_type().to_string() {
            declared if declared.is_empty() => manifest::effective_media_type("", &bytes),
            declared => declared,
        };
        Ok(SeedManifest {
            digest,
            media_type,
            bytes,
        })
    }

    /// Verifies one blob of the layout: copied into the store through a verifying
    /// [`BlobWriter`](crate::store::BlobWriter), or re-hashed when the store has it already.
    /// Returns the bytes copied.
    async fn import_blob(&mut self, digest: &Digest, size: u64, progress: &dyn Progress) -> Result<u64, LayoutError> {
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
        let cached = self.store.store().blobs().stat(digest).await.is_some();
        let mut writer = if cached {
            None
        } else {
            Some(self.store.store().create_blob(digest, expected).await?)
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
                Ok(stored) => {
                    if stored.new {
                        self.created.push(digest.clone());
                    }
                }
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
