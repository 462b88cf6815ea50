//! Image manifests and indexes, read with `oci-spec`'s image-spec types: which child manifests
//! an index has and for which platform, which blobs (config and layers) an image manifest
//! needs. Used by `regcache warm`, the OCI layout export/import and the cache's walk of
//! references. A manifest is parsed only to read what it references: what is stored and served
//! is always the bytes upstream sent (unknown fields, annotations and media types included),
//! never a re-serialization.
//!
//! Docker schema 2 manifests (`…distribution.manifest.v2+json`) and manifest lists
//! (`…manifest.list.v2+json`) have no types of their own in `oci-spec`, and need none:
//! image-spec was made from them, and their documents have the same shape (`schemaVersion`,
//! `config` and `layers`, or `manifests` with a `platform` each), so they are read into
//! `ImageManifest` and `ImageIndex`. What is Docker's own is the media type constants below
//! and [`is_index`].

use std::fmt;
use std::str::FromStr;

use oci_spec::image::{ImageIndex, ImageManifest};
use serde_json::Value;

use crate::registry::Digest;

pub use oci_spec::image::{Descriptor, Platform as DescriptorPlatform};

/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker schema 2 image manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// `Accept` for manifests: every type regcache can walk, indexes included (so that an index is
/// what gets cached for multi-platform images, as modern clients ask).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Manifests larger than this are refused (the distribution registry's own limit).
pub const MAX_MANIFEST: usize = 4 * 1024 * 1024;

/// Why a manifest cannot be walked.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the expected shape.
    #[error("manifest is not valid JSON of its kind: {0}")]
    Json(#[from] serde_json::Error),
    /// A descriptor's digest does not parse.
    #[error("manifest has a bad digest {0:?}")]
    BadDigest(String),
    /// Docker schema 1, or something else that is neither an index nor an image manifest.
    #[error("unsupported manifest type {0:?} (schema 1 manifests are not supported)")]
    Unsupported(String),
}

/// What regcache reads of a descriptor beside `oci-spec`'s own getters.
pub trait DescriptorExt {
    /// The target's digest as regcache's [`Digest`] (sha256 or sha512).
    ///
    /// # Errors
    /// When its algorithm is not one regcache verifies.
    fn parsed_digest(&self) -> Result<Digest, ManifestError>;
    /// One annotation.
    fn annotation(&self, key: &str) -> Option<&str>;
    /// `os/arch[/variant]` of an index entry, if it names its platform.
    fn platform_name(&self) -> Option<String>;
}

impl DescriptorExt for Descriptor {
    fn parsed_digest(&self) -> Result<Digest, ManifestError> {
        let digest = self.digest().to_string();
        digest.parse().map_err(|_| ManifestError::BadDigest(digest))
    }

    fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations().as_ref()?.get(key).map(String::as_str)
    }

    fn platform_name(&self) -> Option<String> {
        self.platform().as_ref().map(|p| {
            let mut name = format!("{}/{}", p.os(), p.architecture());
            if let Some(v) = p.variant() {
                name.push('/');
                name.push_str(v);
            }
            name
        })
    }
}

/// A manifest regcache can walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// An index (manifest list): child manifests.
    Index(Box<ImageIndex>),
    /// An image manifest: its config and layers (the blobs a pull fetches).
    Image(Box<ImageManifest>),
}

impl Manifest {
    /// Parses manifest bytes served with `media_type` (a generic or missing type is settled
    /// by the document's own `mediaType`, then by its shape).
    ///
    /// # Errors
    /// When it is not an index or an image manifest regcache can walk.
    pub fn parse(media_type: &str, bytes: &[u8]) -> Result<Self, ManifestError> {
        let doc: Value = serde_json::from_slice(bytes)?;
        let declared = doc
            .get("mediaType")
            .and_then(Value::as_str)
            .unwrap_or(media_type)
            .to_string();
        if doc.get("schemaVersion").and_then(Value::as_u64) == Some(1) {
            return Err(ManifestError::Unsupported(declared));
        }
        let manifest = match (doc.get("manifests").is_some(), doc.get("config").is_some()) {
            (true, false) => Self::Index(Box::new(serde_json::from_value(doc)?)),
            (false, true) => Self::Image(Box::new(serde_json::from_value(doc)?)),
            _ => return Err(ManifestError::Unsupported(declared)),
        };
        for d in manifest.descriptors() {
            d.parsed_digest()?;
        }
        Ok(manifest)
    }

    /// Every descriptor: children of an index, or config then layers (not `subject`, which is
    /// another image).
    pub fn descriptors(&self) -> Vec<&Descriptor> {
        match self {
            Self::Index(index) => index.manifests().iter().collect(),
            Self::Image(image) => std::iter::once(image.config()).chain(image.layers()).collect(),
        }
    }

    /// The blobs a pull of this image manifest fetches: config and layers, without the
    /// non-distributable ones (fetched by clients from their `urls`, never from the registry).
    pub fn blobs(&self) -> Vec<&Descriptor> {
        match self {
            Self::Index(_) => Vec::new(),
            Self::Image(image) => std::iter::once(image.config())
                .chain(
                    image
                        .layers()
                        .iter()
                        .filter(|l| l.urls().as_ref().is_none_or(Vec::is_empty)),
                )
                .collect(),
        }
    }
}

/// Whether `media_type` is an index (OCI index or Docker manifest list).
pub fn is_index(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_LIST
}

/// The media type to record for a manifest: the `Content-Type` it came with, unless that is
/// generic and the document declares its own.
pub fn effective_media_type(content_type: &str, bytes: &[u8]) -> String {
    let generic = content_type.is_empty() || content_type == "application/json" || content_type == "text/plain";
    if generic
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes)
        && let Some(mt) = v.get("mediaType").and_then(|m| m.as_str())
    {
        return mt.to_string();
    }
    content_type.to_string()
}

/// One `--platform`: `os/arch[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Operating system.
    pub os: String,
    /// CPU architecture (Go/OCI names: `amd64`, `arm64`).
    pub architecture: String,
    /// Variant, matched only when given.
    pub variant: Option<String>,
}

impl Platform {
    /// The machine regcache runs on, as OCI names it (what clients here pull by default).
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        Self {
            os: std::env::consts::OS.to_string(),
            architecture: architecture.to_string(),
            variant: None,
        }
    }

    /// Whether an index entry is for this platform. A variant is compared only when both sides
    /// name one (`linux/arm64` matches `linux/arm64/v8`).
    pub fn matches(&self, p: &DescriptorPlatform) -> bool {
        self.os == p.os().to_string()
            && self.architecture == p.architecture().to_string()
            && match (&self.variant, p.variant()) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => Ok(Self {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, variant] if ok(os) && ok(arch) && ok(variant) => Ok(Self {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(variant.to_string()),
            }),
            _ => Err(format!("{s:?}: expected OS/ARCH[/VARIANT] (e.g. linux/amd64) or all")),
        }
    }
}

/// Which children of an index to take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformFilter {
    /// Every child manifest.
    All,
    /// Those matching one of these.
    Only(Vec<Platform>),
}

impl PlatformFilter {
    /// From `--platform` values (`all` anywhere means every platform); none means the host's.
    pub fn from_args(args: &[PlatformArg]) -> Self {
        if args.is_empty() {
            return Self::Only(vec![Platform::host()]);
        }
        let mut only = Vec::new();
        for a in args {
            match a {
                PlatformArg::All => return Self::All,
                PlatformArg::One(p) => only.push(p.clone()),
            }
        }
        Self::Only(only)
    }

    /// Whether an index entry is wanted. Entries without a platform are taken only by `all`.
    pub fn wants(&self, d: &Descriptor) -> bool {
        match (self, d.platform()) {
            (Self::All, _) => true,
            (Self::Only(ps), Some(p)) => ps.iter().any(|want| want.matches(p)),
            (Self::Only(_), None) => false,
        }
    }
}

impl fmt::Display for PlatformFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("all"),
            Self::Only(ps) => {
                let names: Vec<String> = ps.iter().map(ToString::to_string).collect();
                f.write_str(&names.join(", "))
            }
        }
    }
}

/// One `--platform` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformArg {
    /// `all`.
    All,
    /// `os/arch[/variant]`.
    One(Platform),
}

impl FromStr for PlatformArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("all") {
            Ok(Self::All)
        } else {
            s.parse().map(Self::One)
        }
    }
}

/// What a manifest references.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct References {
    /// Config and layers (blobs).
    pub blobs: Vec<Digest>,
    /// Child manifests of an index.
    pub children: Vec<Digest>,
}

/// Config, layers and child manifests of an OCI/Docker manifest or index (`subject` is another
/// image, not part of this one; non-distributable layers are counted too). Unparsable bytes
/// reference nothing.
///
/// Deliberately lenient, and so not `oci-spec`'s types, which refuse a whole document over one
/// bad field: these references keep shared layers from being purged and make blobs members of
/// a repository, so every digest that can be read counts, even in a manifest a registry
/// accepted that the spec would not (a descriptor missing its size, one unknown algorithm).
pub fn parse_references(manifest: &[u8]) -> References {
    #[derive(serde::Deserialize)]
    struct Target {
        digest: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Walk {
        config: Option<Target>,
        #[serde(default)]
        layers: Vec<Target>,
        #[serde(default)]
        manifests: Vec<Target>,
    }
    let Ok(m) = serde_json::from_slice::<Walk>(manifest) else {
        return References::default();
    };
    let parse = |t: Target| t.digest?.parse::<Digest>().ok();
    References {
        blobs: m.config.into_iter().chain(m.layers).filter_map(parse).collect(),
        children: m.manifests.into_iter().filter_map(parse).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

    fn digests(ds: &[&Descriptor]) -> Vec<String> {
        ds.iter().map(|d| d.digest().to_string()).collect()
    }

    #[test]
    fn image_manifests_and_their_blobs() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"c/d","digest":"{A}","size":3}},
            "layers":[{{"mediaType":"{LAYER}","digest":"{B}","size":5}},
            {{"mediaType":"{LAYER}","digest":"{A}","size":9,"urls":["https://x"]}}]}}"#
        );
        let parsed = Manifest::parse(OCI_MANIFEST, m.as_bytes()).unwrap();
        assert_eq!(
            digests(&parsed.blobs()),
            vec![A, B],
            "config, then distributable layers"
        );
        assert_eq!(parse_references(m.as_bytes()).blobs.len(), 3, "references: every layer");
    }

    /// An OCI index and a Docker manifest list both expand to their platforms.
    #[test]
    fn indexes_and_manifest_lists_expand_to_their_platforms() {
        for (media_type, child) in [(OCI_INDEX, OCI_MANIFEST), (DOCKER_LIST, DOCKER_MANIFEST)] {
            let idx = format!(
                r#"{{"schemaVersion":2,"mediaType":"{media_type}","manifests":[
                {{"mediaType":"{child}","digest":"{A}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
                {{"mediaType":"{child}","digest":"{B}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
            );
            let parsed = Manifest::parse("application/json", idx.as_bytes()).unwrap();
            let Manifest::Index(index) = &parsed else {
                panic!("{media_type}: an index")
            };
            let names: Vec<Option<String>> = index.manifests().iter().map(DescriptorExt::platform_name).collect();
            assert_eq!(
                names,
                vec![Some("linux/amd64".into()), Some("linux/arm64/v8".into())],
                "{media_type}"
            );
            let arm = PlatformFilter::from_args(&["linux/arm64".parse().unwrap()]);
            let picked: Vec<&Descriptor> = index.manifests().iter().filter(|d| arm.wants(d)).collect();
            assert_eq!(digests(&picked), vec![B]);
            let v7 = PlatformFilter::from_args(&["linux/arm64/v7".parse().unwrap()]);
            assert!(!index.manifests().iter().any(|d| v7.wants(d)));
            let all = PlatformFilter::from_args(&["linux/amd64".parse().unwrap(), "ALL".parse().unwrap()]);
            assert!(index.manifests().iter().all(|d| all.wants(d)));
            assert_eq!(effective_media_type("application/json", idx.as_bytes()), media_type);
            assert_eq!(parse_references(idx.as_bytes()).children.len(), 2);
        }
    }

    /// Unknown fields, annotations and media types are read past: the references are found
    /// (and what is served stays the upstream's bytes, which nothing here rewrites).
    #[test]
    fn unknown_fields_and_types_are_read_past() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/x.example+type",
            "x-vendor":{{"nested":[1,2,3]}},"annotations":{{"com.example.unknown":"yes"}},
            "config":{{"mediaType":"application/x.example.config","digest":"{A}","size":2,"x-extra":true}},
            "layers":[{{"mediaType":"application/x.example.layer","digest":"{B}","size":5,
            "annotations":{{"org.example.note":"n"}}}}],
            "subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{A}","size":7}}}}"#
        );
        let refs = parse_references(m.as_bytes());
        assert_eq!(
            refs.blobs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            vec![A, B]
        );
        assert!(refs.children.is_empty(), "subject is another image");
    }

    #[test]
    fn unwalkable_manifests_are_refused() {
        assert!(matches!(
            Manifest::parse("x", br#"{"schemaVersion":1,"fsLayers":[]}"#),
            Err(ManifestError::Unsupported(_))
        ));
        assert!(Manifest::parse("x", b"not json").is_err());
        let md5 = r#"{"schemaVersion":2,"config":{"mediaType":"c/d","digest":"md5:00","size":1},"layers":[]}"#;
        assert!(matches!(
            Manifest::parse("x", md5.as_bytes()),
            Err(ManifestError::BadDigest(_))
        ));
        // A descriptor without its required size is not a manifest of this kind.
        let sizeless = format!(r#"{{"schemaVersion":2,"config":{{"mediaType":"c/d","digest":"{A}"}},"layers":[]}}"#);
        assert!(matches!(
            Manifest::parse("x", sizeless.as_bytes()),
            Err(ManifestError::Json(_))
        ));
        assert_eq!(parse_references(b"\xff not json"), References::default());
    }

    #[test]
    fn platforms() {
        assert_eq!("linux/arm/v7".parse::<Platform>().unwrap().to_string(), "linux/arm/v7");
        assert!("linux".parse::<Platform>().is_err());
        assert!("linux/amd64/v1/x".parse::<Platform>().is_err());
        assert!("linux/".parse::<Platform>().is_err());
        assert_eq!(
            PlatformFilter::from_args(&[]),
            PlatformFilter::Only(vec![Platform::host()])
        );
    }
}
