//! Image references as users type them (`alpine`, `ghcr.io/org/app:1.2`, `app@sha256:…`), with
//! docker's defaults, turned into the names the cache keys use.
//!
//! Rules (docker's reference grammar): the first `/`-separated component is a registry when it
//! contains `.` or `:` or is `localhost`; otherwise the registry is Docker Hub. A missing tag is
//! `latest`; with both a tag and a digest the digest wins (the tag is ignored, as docker does).
//! Docker Hub's names (`docker.io`, `index.docker.io`, `registry-1.docker.io`) are one registry,
//! `docker.io`, reached at `registry-1.docker.io`; one-component names there are `library/…`.

use std::fmt;
use std::str::FromStr;

use http::Method;

use crate::config::HostPort;
use crate::registry::{Digest, Reference, RegistryRequest, canonical_repository, classify};

/// The host Docker Hub's registry API is served from (what clients dial for `docker.io`).
pub const DOCKER_HUB_HOST: &str = "registry-1.docker.io";

/// A fully resolved image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Canonical registry name, as cache keys use it (`docker.io`, `ghcr.io`, `reg.local:5000`).
    pub registry: String,
    /// The host to ask (`registry-1.docker.io:443` for `docker.io`).
    pub host: HostPort,
    /// Canonical repository name (`library/alpine` on Docker Hub).
    pub repository: String,
    /// Tag or digest.
    pub reference: Reference,
}

impl ImageRef {
    /// Parses a reference as docker does, defaults included (`alpine` →
    /// `docker.io/library/alpine:latest`).
    ///
    /// # Errors
    /// A one-line reason when it is not a valid reference.
    pub fn parse(s: &str) -> Result<Self, String> {
        parse(s, false)
    }

    /// Parses a reference that must name its registry (`ghcr.io/org/app:1.2`, never `app:1.2`):
    /// for names read back from files (an OCI layout), where guessing Docker Hub would put an
    /// image under the wrong registry.
    ///
    /// # Errors
    /// As [`ImageRef::parse`], or when the registry is not named.
    pub fn parse_qualified(s: &str) -> Result<Self, String> {
        parse(s, true)
    }

    /// The tag, if the reference is one.
    pub fn tag(&self) -> Option<&str> {
        match &self.reference {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        }
    }

    /// `https://HOST/v2/REPO/manifests/REF`.
    pub fn manifest_url(&self, reference: &str) -> String {
        format!(
            "https://{}/v2/{}/manifests/{reference}",
            self.host.authority(443),
            self.repository
        )
    }

    /// `https://HOST/v2/REPO/blobs/DIGEST`.
    pub fn blob_url(&self, digest: &Digest) -> String {
        format!(
            "https://{}/v2/{}/blobs/{digest}",
            self.host.authority(443),
            self.repository
        )
    }

    /// The same repository at another reference (a child manifest of an index, say).
    pub fn with_digest(&self, digest: &Digest) -> Self {
        Self {
            reference: Reference::Digest(digest.clone()),
            ..self.clone()
        }
    }
}

impl fmt::Display for ImageRef {
    /// The canonical full form: `docker.io/library/alpine:latest`, `ghcr.io/org/app@sha256:…`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(t) => write!(f, "{}/{}:{t}", self.registry, self.repository),
            Reference::Digest(d) => write!(f, "{}/{}@{d}", self.registry, self.repository),
        }
    }
}

impl FromStr for ImageRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

fn parse(input: &str, qualified: bool) -> Result<ImageRef, String> {
    let s = input.trim();
    let bad = |why: &str| format!("{s:?}: {why}");
    if s.is_empty() {
        return Err("empty image reference".into());
    }
    let (rest, digest) = match s.rsplit_once('@') {
        Some((rest, d)) => (rest, Some(d.parse::<Digest>().map_err(|e| bad(&e))?)),
        None => (s, None),
    };
    // A ':' after the last '/' starts the tag; one before it is a registry port.
    let (name, tag) = match rest.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, Some(t)),
        _ => (rest, None),
    };
    let (domain, path) = match name.split_once('/') {
        Some((first, path)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            (Some(first), path)
        }
        _ => (None, name),
    };
    let domain = match domain {
        Some(d) => d,
        None if qualified => {
            return Err(bad(
                "names no registry (expected a full reference like ghcr.io/org/app:1.2)",
            ));
        }
        None => "docker.io",
    };
    let host = HostPort::parse(domain, 443).map_err(|e| bad(&e))?;
    let registry = crate::config::canonical_registry(&host);
    let host = if registry == "docker.io" {
        HostPort {
            host: DOCKER_HUB_HOST.into(),
            port: 443,
        }
    } else {
        host
    };
    let repository = canonical_repository(&registry, path);
    let reference = match (digest, tag) {
        (Some(d), _) => Reference::Digest(d),
        (None, Some(t)) => Reference::Tag(t.to_string()),
        (None, None) => Reference::Tag("latest".into()),
    };
    // The distribution spec's grammar for names and tags, as regcache classifies requests.
    let probe = match &reference {
        Reference::Tag(t) => format!("/v2/{repository}/manifests/{t}"),
        Reference::Digest(d) => format!("/v2/{repository}/manifests/{d}"),
    };
    match classify(&Method::GET, &probe) {
        RegistryRequest::Manifest { name, .. } if name == repository => {}
        _ if tag.is_some_and(|t| !valid_tag(t)) => {
            return Err(bad("invalid tag (letters, digits, '_', '.', '-'; at most 128)"));
        }
        _ => {
            return Err(bad(
                "invalid repository name (lower-case letters, digits and separators '.', '_', '-', '/')",
            ));
        }
    }
    Ok(ImageRef {
        registry,
        host,
        repository,
        reference,
    })
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
        && !tag.starts_with(['.', '-'])
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    fn full(s: &str) -> String {
        ImageRef::parse(s).unwrap().to_string()
    }

    #[test]
    fn docker_defaults() {
        assert_eq!(full("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(full("alpine:3.20"), "docker.io/library/alpine:3.20");
        assert_eq!(full("bitnami/redis"), "docker.io/bitnami/redis:latest");
        assert_eq!(full("docker.io/alpine"), "docker.io/library/alpine:latest");
        assert_eq!(full("index.docker.io/library/alpine:1"), "docker.io/library/alpine:1");
        let hub = ImageRef::parse("alpine").unwrap();
        assert_eq!(hub.host.to_string(), "registry-1.docker.io:443");
        assert_eq!(
            hub.manifest_url("latest"),
            "https://registry-1.docker.io/v2/library/alpine/manifests/latest"
        );
    }

    #[test]
    fn registries_ports_and_digests() {
        assert_eq!(full("ghcr.io/org/app:1.2"), "ghcr.io/org/app:1.2");
        let r = ImageRef::parse("registry.internal:5000/ci/builder").unwrap();
        assert_eq!(r.registry, "registry.internal:5000");
        assert_eq!(r.repository, "ci/builder");
        assert_eq!(r.tag(), Some("latest"));
        assert_eq!(
            r.blob_url(&D.parse().unwrap()),
            format!("https://registry.internal:5000/v2/ci/builder/blobs/{D}")
        );
        assert_eq!(full("localhost/app"), "localhost/app:latest");
        let d = ImageRef::parse(&format!("ghcr.io/org/app:1.2@{D}")).unwrap();
        assert_eq!(d.reference, Reference::Digest(D.parse().unwrap()));
        assert_eq!(d.to_string(), format!("ghcr.io/org/app@{D}"));
        assert_eq!(full(&format!("alpine@{D}")), format!("docker.io/library/alpine@{D}"));
    }

    #[test]
    fn bad_references_are_refused() {
        for bad in [
            "",
            "Upper/Case",
            "ghcr.io/org/app:bad tag",
            "ghcr.io/org/app@sha256:short",
            "ghcr.io/",
            "ghcr.io/org//app",
            "app:-x",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn qualified_references_name_their_registry() {
        assert!(ImageRef::parse_qualified("app:1.2").is_err());
        assert!(ImageRef::parse_qualified("1.2").is_err());
        assert!(ImageRef::parse_qualified("org/app:1.2").is_err());
        assert_eq!(
            ImageRef::parse_qualified("docker.io/library/alpine:3")
                .unwrap()
                .to_string(),
            "docker.io/library/alpine:3"
        );
    }
}
