//! What a registry request is, per the OCI distribution spec, and the names it is cached under.
//!
//! Endpoints (distribution-spec "API"): `GET /v2/` (end-1), manifests (end-3, end-7, end-9),
//! blobs (end-2, end-10), uploads (end-4a/b, end-5, end-6, end-11), tag lists (end-8a/b),
//! referrers (end-12a/b). Everything else under an intercepted host, such as a token realm,
//! is passed through.

use http::{HeaderMap, Method, header};

use crate::config::HostPort;
use crate::digest::Digest;

/// One classified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryRequest {
    /// `GET /v2/`: API version check, and where clients discover how to authenticate.
    Ping,
    /// `GET`/`HEAD /v2/<name>/manifests/<reference>`.
    Manifest {
        /// Repository name as requested.
        name: String,
        /// Tag or digest.
        reference: Reference,
    },
    /// `GET`/`HEAD /v2/<name>/blobs/<digest>`.
    Blob {
        /// Repository name as requested.
        name: String,
        /// The blob's digest.
        digest: Digest,
    },
    /// `/v2/<name>/tags/list`.
    TagList,
    /// `/v2/<name>/referrers/<digest>`.
    Referrers,
    /// Pushes: uploads, manifest PUT, deletes.
    Write,
    /// Anything else (token endpoints, catalog, unknown paths, bad names).
    Other,
}

/// A manifest reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// A mutable tag, revalidated.
    Tag(String),
    /// An immutable digest.
    Digest(Digest),
}

/// Classifies a request by method and path.
pub fn classify(method: &Method, path: &str) -> RegistryRequest {
    if path == "/v2/" || path == "/v2" {
        return if method == Method::GET || method == Method::HEAD {
            RegistryRequest::Ping
        } else {
            RegistryRequest::Other
        };
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return RegistryRequest::Other;
    };
    let read = method == Method::GET || method == Method::HEAD;

    if rest.contains("/blobs/uploads") {
        return RegistryRequest::Write;
    }
    if let Some((name, reference)) = rest.rsplit_once("/manifests/") {
        if !valid_name(name) || reference.contains('/') {
            return RegistryRequest::Other;
        }
        if !read {
            return RegistryRequest::Write;
        }
        let reference = if reference.contains(':') {
            match reference.parse::<Digest>() {
                Ok(d) => Reference::Digest(d),
                Err(_) => return RegistryRequest::Other,
            }
        } else if valid_tag(reference) {
            Reference::Tag(reference.to_string())
        } else {
            return RegistryRequest::Other;
        };
        return RegistryRequest::Manifest {
            name: name.to_string(),
            reference,
        };
    }
    if let Some((name, digest)) = rest.rsplit_once("/blobs/") {
        if !valid_name(name) {
            return RegistryRequest::Other;
        }
        if !read {
            return RegistryRequest::Write;
        }
        return match digest.parse::<Digest>() {
            Ok(digest) => RegistryRequest::Blob {
                name: name.to_string(),
                digest,
            },
            Err(_) => RegistryRequest::Other,
        };
    }
    if let Some(name) = rest.strip_suffix("/tags/list")
        && valid_name(name)
    {
        return RegistryRequest::TagList;
    }
    if let Some((name, _)) = rest.rsplit_once("/referrers/")
        && valid_name(name)
    {
        return RegistryRequest::Referrers;
    }
    RegistryRequest::Other
}

/// Repository names: `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
/// (distribution-spec "Pulling manifests"), checked component by component.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        })
}

/// Tags: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// The registry name cache keys use: Docker Hub's aliases are one registry, `docker.io`;
/// other hosts keep their port when it is not 443.
pub fn canonical_registry(host: &HostPort) -> String {
    match host.host.as_str() {
        "registry-1.docker.io" | "index.docker.io" | "docker.io" | "registry.hub.docker.com" if host.port == 443 => {
            "docker.io".to_string()
        }
        _ => host.authority(443),
    }
}

/// The repository name cache keys use: one-component Docker Hub names mean `library/<name>`.
pub fn canonical_repository(registry: &str, name: &str) -> String {
    if registry == "docker.io" && !name.contains('/') {
        format!("library/{name}")
    } else {
        name.to_string()
    }
}

/// The media types a client accepts, normalised (parameters and q-values dropped, sorted,
/// de-duplicated) so that equal sets give equal cache keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AcceptSet {
    types: Vec<String>,
}

impl AcceptSet {
    /// From every `Accept` header of a request.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let mut types: Vec<String> = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| t.split(';').next())
            .map(|t| t.trim().to_ascii_lowercase())
            .filter(|t| !t.is_empty())
            .collect();
        types.sort();
        types.dedup();
        Self { types }
    }

    /// Whether a response of `media_type` may be served to this client. No `Accept` at all,
    /// or `*/*`, accepts anything.
    pub fn allows(&self, media_type: &str) -> bool {
        let mt = media_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        self.types.is_empty()
            || self.types.iter().any(|t| {
                t == &mt
                    || t == "*/*"
                    || t.strip_suffix("/*")
                        .is_some_and(|major| mt.split('/').next() == Some(major))
            })
    }

    /// The stable key form.
    pub fn key(&self) -> String {
        self.types.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[test]
    fn classification() {
        use RegistryRequest as R;
        let get = Method::GET;
        assert_eq!(classify(&get, "/v2/"), R::Ping);
        assert_eq!(
            classify(&get, "/v2/library/alpine/manifests/3.20"),
            R::Manifest {
                name: "library/alpine".into(),
                reference: Reference::Tag("3.20".into())
            }
        );
        assert!(matches!(
            classify(&Method::HEAD, &format!("/v2/a/b/c/manifests/{D}")),
            R::Manifest {
                reference: Reference::Digest(_),
                ..
            }
        ));
        assert!(matches!(
            classify(&get, &format!("/v2/org/app/blobs/{D}")),
            R::Blob { .. }
        ));
        // A repository may itself contain "manifests" or "blobs" as a component.
        assert_eq!(
            classify(&get, "/v2/x/manifests/y/manifests/latest"),
            R::Manifest {
                name: "x/manifests/y".into(),
                reference: Reference::Tag("latest".into())
            }
        );
        assert_eq!(classify(&Method::POST, "/v2/org/app/blobs/uploads/"), R::Write);
        assert_eq!(classify(&Method::PATCH, "/v2/org/app/blobs/uploads/1234"), R::Write);
        assert_eq!(classify(&Method::PUT, "/v2/org/app/manifests/v1"), R::Write);
        assert_eq!(classify(&Method::DELETE, &format!("/v2/org/app/blobs/{D}")), R::Write);
        assert_eq!(classify(&get, "/v2/org/app/tags/list"), R::TagList);
        assert_eq!(classify(&get, &format!("/v2/org/app/referrers/{D}")), R::Referrers);
        assert_eq!(classify(&get, "/token"), R::Other);
        assert_eq!(classify(&get, "/v2/_catalog"), R::Other);
        assert_eq!(
            classify(&get, "/v2/Upper/manifests/v1"),
            R::Other,
            "upper-case names are invalid"
        );
        assert_eq!(classify(&get, "/v2/org/app/manifests/-bad"), R::Other);
        assert_eq!(classify(&get, "/v2/org/app/blobs/sha256:short"), R::Other);
        assert_eq!(classify(&get, "/v2/org/app/manifests/md5:00"), R::Other);
    }

    #[test]
    fn canonical_names() {
        let hp = |s: &str| HostPort::parse(s, 443).unwrap();
        assert_eq!(canonical_registry(&hp("registry-1.docker.io")), "docker.io");
        assert_eq!(canonical_registry(&hp("index.docker.io")), "docker.io");
        assert_eq!(canonical_registry(&hp("ghcr.io")), "ghcr.io");
        assert_eq!(canonical_registry(&hp("reg.local:5000")), "reg.local:5000");
        assert_eq!(
            canonical_registry(&hp("registry-1.docker.io:5000")),
            "registry-1.docker.io:5000"
        );
        assert_eq!(canonical_repository("docker.io", "alpine"), "library/alpine");
        assert_eq!(canonical_repository("docker.io", "bitnami/redis"), "bitnami/redis");
        assert_eq!(canonical_repository("ghcr.io", "alpine"), "alpine");
    }

    #[test]
    fn accept_sets() {
        let mut h = HeaderMap::new();
        h.append(
            header::ACCEPT,
            "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json;q=0.9"
                .parse()
                .unwrap(),
        );
        h.append(
            header::ACCEPT,
            "application/vnd.oci.image.index.v1+json".parse().unwrap(),
        );
        let a = AcceptSet::from_headers(&h);
        assert_eq!(
            a.key(),
            "application/vnd.docker.distribution.manifest.v2+json,application/vnd.oci.image.index.v1+json"
        );
        assert!(a.allows("application/vnd.oci.image.index.v1+json"));
        assert!(!a.allows("application/vnd.oci.image.manifest.v1+json"));
        assert!(AcceptSet::from_headers(&HeaderMap::new()).allows("anything/at-all"));
        let mut star = HeaderMap::new();
        star.insert(header::ACCEPT, "*/*".parse().unwrap());
        assert!(AcceptSet::from_headers(&star).allows("application/json"));
    }
}
