//! Which upstream a mirror request is for, and the path to ask it: containerd's `?ns=`, a
//! registry name as the first path component, or the default registry.

use crate::config::{HostPort, upstream_of};
use crate::registry::split_repository;

/// A mirror request resolved to its upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The registry host to fetch from.
    pub upstream: HostPort,
    /// The path and query to ask it (`ns` removed).
    pub path_and_query: String,
}

/// Why a mirror request names no usable upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Not under `/v2/<name>/…`.
    #[error("not a registry API path")]
    NotRegistryPath,
    /// The registry named (by `ns=` or the path) is not a host.
    #[error("{0}")]
    BadRegistry(String),
}

/// Resolves `path` (and `query`) against `default` (the upstream of requests that name no
/// registry), in this order:
///
/// 1. containerd's `ns=<registry>` query parameter, which it sends on every request to a
///    mirror configured in `hosts.toml`;
/// 2. a registry name as the first component, `/v2/<registry>/<repo…>/…`, for clients that
///    point a mirror at a namespace (podman/CRI-O `location = "mirror:5443/ghcr.io"`). A
///    first component is a registry name when it contains a `.` or `:` or is `localhost`, as
///    docker's reference grammar decides (a Docker Hub namespace never does);
/// 3. `default`.
///
/// Docker Hub's one-component names get `library/`, as dockerd expects of official images.
pub fn route(path: &str, query: Option<&str>, default: &HostPort) -> Result<Routed, RouteError> {
    let rest = path.strip_prefix("/v2/").ok_or(RouteError::NotRegistryPath)?;
    let mut ns = None;
    let mut kept = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.strip_prefix("ns=") {
            Some(v) => ns = Some(decode(v)),
            None => kept.push(pair),
        }
    }
    let (upstream, rest) = if let Some(ns) = ns {
        (upstream_of(&ns).map_err(RouteError::BadRegistry)?, rest)
    } else {
        match rest.split_once('/') {
            Some((first, after)) if is_registry_name(first) && split_repository(after).is_some() => {
                (upstream_of(first).map_err(RouteError::BadRegistry)?, after)
            }
            _ => (default.clone(), rest),
        }
    };
    let (name, tail) = split_repository(rest).ok_or(RouteError::NotRegistryPath)?;
    let hub = upstream == upstream_of("docker.io").expect("docker.io is a host");
    let library = if hub && !name.contains('/') { "library/" } else { "" };
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    Ok(Routed {
        upstream,
        path_and_query: format!("/v2/{library}{name}{tail}{query}"),
    })
}

/// docker's reference grammar: a first component is a registry host when it has a `.` or a
/// `:` (a port), or is `localhost`.
fn is_registry_name(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

/// `%3A` → `:` in a query value (containerd escapes a port's colon).
fn decode(v: &str) -> String {
    percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> HostPort {
        upstream_of("docker.io").unwrap()
    }

    fn r(path: &str, query: Option<&str>) -> (String, String) {
        let routed = route(path, query, &hub()).unwrap();
        (routed.upstream.to_string(), routed.path_and_query)
    }

    #[test]
    fn containerd_ns_wins_and_is_not_forwarded() {
        assert_eq!(
            r("/v2/org/app/manifests/1.0", Some("ns=ghcr.io")),
            ("ghcr.io:443".into(), "/v2/org/app/manifests/1.0".into())
        );
        assert_eq!(
            r("/v2/library/alpine/blobs/sha256:aa", Some("ns=docker.io")),
            (
                "registry-1.docker.io:443".into(),
                "/v2/library/alpine/blobs/sha256:aa".into()
            )
        );
        assert_eq!(
            r("/v2/app/tags/list", Some("n=10&ns=registry.local%3A5000&last=b")),
            ("registry.local:5000".into(), "/v2/app/tags/list?n=10&last=b".into())
        );
    }

    #[test]
    fn a_registry_as_first_component() {
        assert_eq!(
            r("/v2/ghcr.io/org/app/manifests/1.0", None),
            ("ghcr.io:443".into(), "/v2/org/app/manifests/1.0".into())
        );
        assert_eq!(
            r("/v2/localhost:5000/app/blobs/sha256:aa", None),
            ("localhost:5000".into(), "/v2/app/blobs/sha256:aa".into())
        );
        // A Docker Hub namespace has no dot: the default registry, with its name as given.
        assert_eq!(
            r("/v2/bitnami/redis/manifests/7", None),
            (
                "registry-1.docker.io:443".into(),
                "/v2/bitnami/redis/manifests/7".into()
            )
        );
        // `ghcr.io` alone is a repository named like a host on the default registry.
        assert_eq!(
            r("/v2/ghcr.io/manifests/1", None),
            (
                "registry-1.docker.io:443".into(),
                "/v2/library/ghcr.io/manifests/1".into()
            )
        );
    }

    #[test]
    fn docker_hub_official_images_get_library() {
        assert_eq!(
            r("/v2/alpine/manifests/3.20", None),
            (
                "registry-1.docker.io:443".into(),
                "/v2/library/alpine/manifests/3.20".into()
            )
        );
        let quay = upstream_of("quay.io").unwrap();
        let routed = route("/v2/alpine/manifests/3.20", None, &quay).unwrap();
        assert_eq!(
            routed.path_and_query, "/v2/alpine/manifests/3.20",
            "only Docker Hub has library/"
        );
    }

    #[test]
    fn paths_that_name_no_repository() {
        assert_eq!(route("/v1/x", None, &hub()), Err(RouteError::NotRegistryPath));
        assert_eq!(route("/v2/_catalog", None, &hub()), Err(RouteError::NotRegistryPath));
        assert!(matches!(
            route("/v2/a/manifests/1", Some("ns=bad host"), &hub()),
            Err(RouteError::BadRegistry(_))
        ));
    }
}
