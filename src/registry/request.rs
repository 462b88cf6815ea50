//! What a registry request is, per the OCI distribution spec, and the names it is cached under.
//!
//! Endpoints (distribution-spec "API"): `GET /v2/` (end-1), manifests (end-3, end-7, end-9),
//! blobs (end-2, end-10), uploads (end-4a/b, end-5, end-6, end-11), tag lists (end-8a/b),
//! referrers (end-12a/b). Everything else under an intercepted host, such as a token realm,
//! is passed through.

use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, header};

use crate::body::{self, Body};
use crate::registry::Digest;

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
    /// A request for a repository, digest or reference that cannot exist (a name outside the
    /// grammar, traversal, a digest regcache cannot verify): answered with a registry-style
    /// error, never forwarded nor looked up.
    Invalid(InvalidRequest),
    /// Anything else (token endpoints, catalog, unknown paths).
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

/// The distribution-spec error codes regcache answers itself ("Error Codes" table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// `NAME_INVALID`: invalid repository name.
    NameInvalid,
    /// `DIGEST_INVALID`: the digest is malformed or of an algorithm regcache cannot verify.
    DigestInvalid,
    /// `MANIFEST_INVALID`: the manifest reference is neither a tag nor a digest.
    ManifestInvalid,
    /// `NAME_UNKNOWN`: the repository is not known (or not visible to this client).
    NameUnknown,
    /// `UNAUTHORIZED`: authentication required.
    Unauthorized,
    /// `DENIED`: access to the resource is denied.
    Denied,
    /// `UNSUPPORTED`: the operation is not supported.
    Unsupported,
}

impl ErrorCode {
    /// The code as it appears in the JSON body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NameInvalid => "NAME_INVALID",
            Self::DigestInvalid => "DIGEST_INVALID",
            Self::ManifestInvalid => "MANIFEST_INVALID",
            Self::NameUnknown => "NAME_UNKNOWN",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Denied => "DENIED",
            Self::Unsupported => "UNSUPPORTED",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::NameInvalid => "invalid repository name",
            Self::DigestInvalid => "invalid digest",
            Self::ManifestInvalid => "invalid manifest reference",
            Self::NameUnknown => "repository name not known to registry",
            Self::Unauthorized => "authentication required",
            Self::Denied => "requested access to the resource is denied",
            Self::Unsupported => "the operation is unsupported",
        }
    }

    /// A registry-style error answer (OCI distribution-spec "Error Codes"): `status`, and a
    /// JSON body with this code, its message and `detail`.
    pub fn response(self, status: StatusCode, detail: &str) -> Response<Body> {
        let doc = serde_json::json!({
            "errors": [{ "code": self.as_str(), "message": self.message(), "detail": detail }]
        });
        let mut res = Response::new(body::full(doc.to_string()));
        *res.status_mut() = status;
        let h = res.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            crate::registry::headers::DOCKER_API_VERSION,
            HeaderValue::from_static("registry/2.0"),
        );
        res
    }
}

/// Why a request was classified [`RegistryRequest::Invalid`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidRequest {
    /// The error code.
    pub code: ErrorCode,
    /// What exactly is wrong (for the client's error message and the log).
    pub detail: String,
}

impl InvalidRequest {
    fn request(code: ErrorCode, detail: impl Into<String>) -> RegistryRequest {
        RegistryRequest::Invalid(Self {
            code,
            detail: detail.into(),
        })
    }

    /// `400 Bad Request` with a distribution-spec error body.
    pub fn into_response(self) -> Response<Body> {
        self.code.response(StatusCode::BAD_REQUEST, &self.detail)
    }
}

/// Which endpoint a `/v2/<name>/…` path names: the marker that comes last wins, because a
/// repository name may itself contain `manifests`, `blobs` or `tags` components.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Manifests,
    Blobs,
    Referrers,
    TagList,
}

fn endpoint(rest: &str) -> Option<(&str, Endpoint, &str)> {
    let mut best: Option<(usize, &str, Endpoint)> = None;
    for (marker, kind) in [
        ("/manifests/", Endpoint::Manifests),
        ("/blobs/", Endpoint::Blobs),
        ("/referrers/", Endpoint::Referrers),
    ] {
        if let Some(i) = rest.rfind(marker)
            && best.is_none_or(|(j, ..)| i > j)
        {
            best = Some((i, marker, kind));
        }
    }
    if let Some(name) = rest.strip_suffix("/tags/list")
        && best.is_none_or(|(j, ..)| name.len() > j)
    {
        return Some((name, Endpoint::TagList, ""));
    }
    best.map(|(i, marker, kind)| (&rest[..i], kind, &rest[i + marker.len()..]))
}

/// The repository name a path after `/v2/` names, and the rest (`/manifests/…`, `/blobs/…`,
/// `/tags/list`, `/referrers/…`, `/blobs/uploads…`); `None` for a path that names none.
pub fn split_repository(rest: &str) -> Option<(&str, &str)> {
    let name = match rest.rsplit_once("/blobs/uploads") {
        Some((name, _)) => name,
        None => endpoint(rest)?.0,
    };
    (!name.is_empty()).then(|| (name, &rest[name.len()..]))
}

/// Classifies a request by method and path.
pub fn classify(method: &Method, path: &str) -> RegistryRequest {
    use ErrorCode::{DigestInvalid, ManifestInvalid, NameInvalid};
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
    if let Some(why) = hostile_segment(rest) {
        return InvalidRequest::request(NameInvalid, why);
    }
    let read = method == Method::GET || method == Method::HEAD;

    // Uploads: `/v2/<name>/blobs/uploads/[<id>]`; the id is one opaque segment (its state
    // travels in the query), and the registry's business.
    if let Some((name, after)) = rest.rsplit_once("/blobs/uploads")
        && (after.is_empty() || after.strip_prefix('/').is_some_and(|id| !id.contains('/')))
    {
        return if valid_name(name) {
            RegistryRequest::Write
        } else {
            InvalidRequest::request(NameInvalid, format!("{name:?} is not a repository name"))
        };
    }
    let Some((name, kind, reference)) = endpoint(rest) else {
        return RegistryRequest::Other;
    };
    if !valid_name(name) {
        return InvalidRequest::request(NameInvalid, format!("{name:?} is not a repository name"));
    }
    let digest = |s: &str| {
        s.parse::<Digest>()
            .map_err(|e| InvalidRequest::request(DigestInvalid, e))
    };
    match kind {
        Endpoint::TagList => RegistryRequest::TagList,
        Endpoint::Referrers => match digest(reference) {
            Ok(_) => RegistryRequest::Referrers,
            Err(bad) => bad,
        },
        Endpoint::Blobs => match digest(reference) {
            Ok(_) if !read => RegistryRequest::Write,
            Ok(digest) => RegistryRequest::Blob {
                name: name.to_string(),
                digest,
            },
            Err(bad) => bad,
        },
        Endpoint::Manifests => {
            let reference = if reference.contains(':') {
                match digest(reference) {
                    Ok(d) => Reference::Digest(d),
                    Err(bad) => return bad,
                }
            } else if valid_tag(reference) {
                Reference::Tag(reference.to_string())
            } else {
                return InvalidRequest::request(
                    ManifestInvalid,
                    format!("{reference:?} is neither a tag ([a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}) nor a digest"),
                );
            };
            if !read {
                return RegistryRequest::Write;
            }
            RegistryRequest::Manifest {
                name: name.to_string(),
                reference,
            }
        }
    }
}

/// A path segment that is a traversal or hides one: `.` or `..` (also percent-encoded), an
/// encoded `/`, a backslash, or a control character. Never part of a registry API path; a
/// server that decodes or normalises paths could be led outside what the name says.
fn hostile_segment(rest: &str) -> Option<String> {
    rest.split('/').find_map(|raw| {
        let seg = percent_decode(raw);
        let bad = seg == b"." || seg == b".." || seg.iter().any(|&b| b == b'/' || b == b'\\' || b < 0x20 || b == 0x7f);
        bad.then(|| {
            format!("path segment {raw:?} is a traversal, an encoded slash or backslash, or a control character")
        })
    })
}

/// `%XX` sequences decoded (invalid ones kept as they are).
fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && let (Some(h), Some(l)) = (b.get(i + 1).copied().and_then(hex), b.get(i + 2).copied().and_then(hex))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
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

    use RegistryRequest as R;

    #[test]
    fn classification() {
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
        // A repository may also contain "blobs" or "tags": the last endpoint marker wins.
        assert!(matches!(
            classify(&get, &format!("/v2/a/manifests/b/blobs/{D}")),
            R::Blob { name, .. } if name == "a/manifests/b"
        ));
        assert_eq!(classify(&get, "/v2/a/blobs/tags/list"), R::TagList);
        let code = |path: &str| match classify(&get, path) {
            R::Invalid(bad) => Some(bad.code),
            _ => None,
        };
        use ErrorCode::*;
        assert_eq!(code("/v2/Upper/manifests/v1"), Some(NameInvalid), "upper-case names");
        assert_eq!(code("/v2/org/../app/manifests/v1"), Some(NameInvalid));
        assert_eq!(code("/v2/org/%2E%2e/app/manifests/v1"), Some(NameInvalid));
        assert_eq!(code("/v2/org%2Fapp/manifests/v1"), Some(NameInvalid));
        assert_eq!(code("/v2/org%5capp/manifests/v1"), Some(NameInvalid));
        assert_eq!(code("/v2/org%00app/manifests/v1"), Some(NameInvalid));
        assert_eq!(
            code("/v2/../../etc/passwd"),
            Some(NameInvalid),
            "no endpoint, still traversal"
        );
        assert_eq!(code("/v2//abs/blobs/uploads/"), Some(NameInvalid));
        assert_eq!(code("/v2/org/app/manifests/-bad"), Some(ManifestInvalid));
        assert_eq!(code("/v2/org/app/manifests/a/b"), Some(ManifestInvalid));
        assert_eq!(code("/v2/org/app/blobs/sha256:short"), Some(DigestInvalid));
        assert_eq!(code("/v2/org/app/manifests/md5:00"), Some(DigestInvalid));
        assert_eq!(code("/v2/org/app/referrers/sha256:00"), Some(DigestInvalid));
        assert_eq!(
            code("/v2/org/app/blobs/uploads/opaque-ID_%3D"),
            None,
            "upload ids are opaque"
        );
    }

    #[test]
    fn invalid_requests_answer_in_the_registry_error_style() {
        let R::Invalid(bad) = classify(&Method::GET, "/v2/x/blobs/md5:00") else {
            panic!("invalid")
        };
        let res = bad.into_response();
        assert_eq!(res.status(), StatusCode::BAD_REQUEST);
        assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn canonical_names() {
        use crate::config::{HostPort, canonical_registry};
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
