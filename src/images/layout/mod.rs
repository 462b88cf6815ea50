//! Air-gapped seeding: `regcache cache export` writes cached images to an OCI image layout
//! (image-spec "image-layout": `oci-layout`, `index.json`, `blobs/<alg>/<hex>`), and
//! `regcache cache import` loads one into the cache of another machine.
//!
//! The registry an image belongs to survives the trip: each `index.json` entry carries the
//! full reference (`ghcr.io/org/app:1.2`, `docker.io/library/alpine:latest`, or
//! `…@sha256:…` for an export by digest) in `org.opencontainers.image.ref.name` and, for
//! containerd's `ctr import`, in `io.containerd.image.name`; `io.regcache.public` says whether
//! the repository was public where it was exported (the cache's repository access). Import reads
//! `org.opencontainers.image.ref.name` (or `io.containerd.image.name`) and refuses entries that
//! do not name their registry.
//!
//! Export includes what the cache holds: an index with the platforms that are fully cached
//! (the layout spec allows referenced blobs to be absent). Import verifies every manifest and
//! blob against its digest and length before anything is recorded; if one is missing or
//! corrupt the whole import is refused, the content it had copied is removed, and no tag,
//! manifest or membership entry is written, so nothing half-imported is ever served.

mod export;
mod import;

use std::path::{Path, PathBuf};

use crate::images::seed::SeedManifest;
use crate::registry::Digest;
use crate::registry::manifest::{Descriptor, ManifestError};
use crate::store::StoreError;

pub use export::Exporter;
pub use import::Importer;

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

pub(super) const LAYOUT_VERSION: &str = "1.0.0";
/// `index.json` larger than this is refused.
pub(super) const MAX_INDEX: u64 = 16 * 1024 * 1024;
/// Copy buffer.
pub(super) const CHUNK: usize = 1024 * 1024;

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

pub(super) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError + '_ {
    move |source| LayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
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
pub(super) struct Walked {
    children: Vec<SeedManifest>,
    blobs: Vec<Descriptor>,
    platforms: Vec<String>,
    left_out: Vec<String>,
}

// ---- export ----

/// Writes a file whole, through a temporary name (a reader never sees half of it).
pub(super) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let tmp = partial_path(path);
    std::fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}

pub(super) fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::import::Staged;
    use super::*;
    use crate::cache::{Records, seeded_tag_key};
    use crate::images::Progress;
    use crate::registry::manifest;
    use crate::registry::{Algorithm, ImageRef};
    use crate::store::Store;

    struct Quiet;

    impl Progress for Quiet {
        fn stage(&self, _: &str) {}
        fn add_total(&self, _: u64) {}
        fn advance(&self, _: u64) {}
        fn blob_done(&self, _: &str, _: u64) {}
    }

    fn records(dir: &Path) -> Records {
        Records::new(Store::local(dir.to_path_buf()))
    }

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

    async fn import(store: &Records, dir: &Path) -> Result<Vec<Staged>, LayoutError> {
        let mut importer = Importer::new(store.clone(), dir);
        let mut staged = Vec::new();
        for (image, desc, public) in importer.entries()? {
            match importer.stage(image, &desc, public, &Quiet).await {
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
        let store = records(&tmp.path().join("cache"));
        let staged = import(&store, &layout).await.unwrap();
        assert_eq!(staged[0].image.to_string(), "quay.io/org/app:1.0");
        assert!(store.store().blobs().stat(&l).await.is_some());
        assert!(store.manifest("quay.io", "org/app", &m).await.is_some());
        assert!(store.is_member("quay.io", "org/app", &l).await);
        assert!(store.public_since("quay.io", "org/app").await.is_some());
        let tag = store.tag(&seeded_tag_key("quay.io", "org/app", "1.0")).await.unwrap();
        assert_eq!(tag.digest, m.to_string());

        let out = tmp.path().join("out");
        let mut exporter = Exporter::create(store.clone(), &out).unwrap();
        let e = exporter
            .add(&ImageRef::parse("quay.io/org/app:1.0").unwrap())
            .await
            .unwrap();
        assert_eq!(e.digest, m);
        exporter.finish().unwrap();
        let index: oci_spec::image::ImageIndex =
            serde_json::from_slice(&std::fs::read(out.join(INDEX_FILE)).unwrap()).unwrap();
        use crate::registry::manifest::DescriptorExt as _;
        assert_eq!(index.manifests()[0].annotation(REF_NAME), Some("quay.io/org/app:1.0"));
        assert_eq!(index.manifests()[0].annotation(PUBLIC), Some("true"));
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
        let store = records(&tmp.path().join("cache"));
        let err = import(&store, &layout).await.unwrap_err();
        assert!(
            matches!(&err, LayoutError::Corrupt { digest, .. } if *digest == l),
            "{err}"
        );
        assert!(store.store().blobs().stat(&l).await.is_none());
        assert!(store.manifest("quay.io", "org/app", &m).await.is_none());
        assert!(store.tag(&seeded_tag_key("quay.io", "org/app", "1.0")).await.is_none());
        let (entries, _) = store.store().blobs().usage().await.unwrap();
        assert_eq!(entries, 0, "the config blob copied before the failure was removed");
    }

    #[tokio::test]
    async fn entries_must_name_their_registry() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path().join("in");
        layout_with_image(&layout, "app:1.0");
        let importer = Importer::new(records(&tmp.path().join("cache")), &layout);
        let err = importer.entries().unwrap_err().to_string();
        assert!(err.contains("naming the registry"), "{err}");
        assert!(
            Importer::new(records(&tmp.path().join("c")), tmp.path())
                .entries()
                .unwrap_err()
                .to_string()
                .contains("not an OCI image layout")
        );
    }
}
