//! Just enough of image manifests and indexes (OCI image-spec, Docker schema 2) to walk an
//! image: which child manifests an index has and for which platform, which blobs (config and
//! layers) an image manifest needs. Used by `regcache warm` and the OCI layout export/import.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::registry::Digest;

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
    #[error("manifest is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A descriptor's digest does not parse.
    #[error("manifest has a bad digest {0:?}")]
    BadDigest(String),
    /// Docker schema 1, or something else that is neither an index nor an image manifest.
    #[error("unsupported manifest type {0:?} (schema 1 manifests are not supported)")]
    Unsupported(String),
}

/// A content descriptor (OCI image-spec "Descriptor").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the target.
    #[serde(default)]
    pub media_type: String,
    /// Digest of the target.
    pub digest: String,
    /// Length of the target.
    #[serde(default)]
    pub size: u64,
    /// Platform of a child manifest in an index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<DescriptorPlatform>,
    /// Where non-distributable layers must be fetched from instead (Windows base layers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    /// The target's digest.
    ///
    /// # Errors
    /// When it does not parse (or is an unsupported algorithm).
    pub fn parsed_digest(&self) -> Result<Digest, ManifestError> {
        self.digest
            .parse()
            .map_err(|_| ManifestError::BadDigest(self.digest.clone()))
    }
}

/// `platform` of an index entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DescriptorPlatform {
    /// `linux`, `windows`, …
    #[serde(default)]
    pub os: String,
    /// `amd64`, `arm64`, …
    #[serde(default)]
    pub architecture: String,
    /// `v7`, `v8`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl fmt::Display for DescriptorPlatform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What a manifest points at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// An index (manifest list): child manifests.
    Index(Vec<Descriptor>),
    /// An image manifest: its config and layers (the blobs a pull fetches).
    Image {
        /// The config blob.
        config: Descriptor,
        /// Layer blobs, in order.
        layers: Vec<Descriptor>,
    },
}

impl Manifest {
    /// Parses manifest bytes served with `media_type` (a generic or missing type is settled
    /// by the document's own `mediaType`, then by its shape).
    ///
    /// # Errors
    /// When it is not an index or an image manifest regcache can walk.
    pub fn parse(media_type: &str, bytes: &[u8]) -> Result<Self, ManifestError> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Doc {
            #[serde(default)]
            schema_version: Option<u32>,
            #[serde(default)]
            media_type: Option<String>,
            #[serde(default)]
            manifests: Option<Vec<Descriptor>>,
            #[serde(default)]
            config: Option<Descriptor>,
            #[serde(default)]
            layers: Option<Vec<Descriptor>>,
        }
        let doc: Doc = serde_json::from_slice(bytes)?;
        let declared = doc.media_type.clone().unwrap_or_else(|| media_type.to_string());
        if doc.schema_version == Some(1) {
            return Err(ManifestError::Unsupported(declared));
        }
        let manifest = match (doc.manifests, doc.config) {
            (Some(children), None) => Self::Index(children),
            (None, Some(config)) => Self::Image {
                config,
                layers: doc.layers.unwrap_or_default(),
            },
            _ => return Err(ManifestError::Unsupported(declared)),
        };
        for d in manifest.descriptors() {
            d.parsed_digest()?;
        }
        Ok(manifest)
    }

    /// Every descriptor: children of an index, or config then layers.
    pub fn descriptors(&self) -> Vec<&Descriptor> {
        match self {
            Self::Index(children) => children.iter().collect(),
            Self::Image { config, layers } => std::iter::once(config).chain(layers).collect(),
        }
    }

    /// The blobs a pull of this image manifest fetches: config and layers, without the
    /// non-distributable ones (fetched by clients from their `urls`, never from the registry).
    pub fn blobs(&self) -> Vec<&Descriptor> {
        match self {
            Self::Index(_) => Vec::new(),
            Self::Image { config, layers } => std::iter::once(config)
                .chain(layers.iter().filter(|l| l.urls.is_empty()))
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
        self.os == p.os
            && self.architecture == p.architecture
            && match (&self.variant, &p.variant) {
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
        match (self, &d.platform) {
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
/// image, not part of this one). Unparsable bytes reference nothing.
pub fn parse_references(manifest: &[u8]) -> References {
    #[derive(serde::Deserialize)]
    struct Descriptor {
        digest: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Manifest {
        config: Option<Descriptor>,
        #[serde(default)]
        layers: Vec<Descriptor>,
        #[serde(default)]
        manifests: Vec<Descriptor>,
    }
    let Ok(m) = serde_json::from_slice::<Manifest>(manifest) else {
        return References::default();
    };
    let parse = |d: Descriptor| d.digest?.parse::<Digest>().ok();
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

    #[test]
    fn image_manifests_and_indexes() {
        let m = format!(
            r#"{{"schemaVersion":2,"config":{{"mediaType":"c","digest":"{A}","size":3}},
            "layers":[{{"digest":"{B}","size":5}},{{"digest":"{A}","size":9,"urls":["https://x"]}}]}}"#
        );
        let parsed = Manifest::parse(OCI_MANIFEST, m.as_bytes()).unwrap();
        let blobs: Vec<&str> = parsed.blobs().iter().map(|d| d.digest.as_str()).collect();
        assert_eq!(blobs, vec![A, B], "config, then distributable layers");

        let idx = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[
            {{"digest":"{A}","size":1,"platform":{{"os":"linux","architecture":"amd64"}}}},
            {{"digest":"{B}","size":1,"platform":{{"os":"linux","architecture":"arm64","variant":"v8"}}}}]}}"#
        );
        let Manifest::Index(children) = Manifest::parse("application/json", idx.as_bytes()).unwrap() else {
            panic!("an index")
        };
        let arm: PlatformFilter = PlatformFilter::from_args(&["linux/arm64".parse().unwrap()]);
        let picked: Vec<&str> = children
            .iter()
            .filter(|d| arm.wants(d))
            .map(|d| d.digest.as_str())
            .collect();
        assert_eq!(picked, vec![B]);
        let v7 = PlatformFilter::from_args(&["linux/arm64/v7".parse().unwrap()]);
        assert!(!children.iter().any(|d| v7.wants(d)));
        let all = PlatformFilter::from_args(&["linux/amd64".parse().unwrap(), "ALL".parse().unwrap()]);
        assert!(children.iter().all(|d| all.wants(d)));
        assert_eq!(
            effective_media_type("application/json", idx.as_bytes()),
            OCI_INDEX.to_string()
        );
    }

    #[test]
    fn unwalkable_manifests_are_refused() {
        assert!(matches!(
            Manifest::parse("x", br#"{"schemaVersion":1,"fsLayers":[]}"#),
            Err(ManifestError::Unsupported(_))
        ));
        assert!(Manifest::parse("x", b"not json").is_err());
        assert!(matches!(
            Manifest::parse("x", br#"{"config":{"digest":"md5:00","size":1},"layers":[]}"#),
            Err(ManifestError::BadDigest(_))
        ));
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
