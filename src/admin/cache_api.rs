//! The cache's admin API on the proxy's own listener: `GET /_regcache/cache` (what
//! `regcache cache ls --json` prints; `?registry=R&repo=GLOB` filter alike) and
//! `DELETE /_regcache/cache/<ref>` (what `regcache cache rm` does, answered with the JSON
//! report). Only loopback clients may use it, as `POST /_regcache/reload`: whoever can reach
//! the proxy from the network must not be able to list or empty the cache.
//!
//! A purge through the API also drops the server's in-memory copies at once.

use std::net::SocketAddr;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use serde::Serialize;

use crate::body::{self, Body};
use crate::cache::RegistryCache;
use crate::catalog::{ImageFilter, Inventory};
use crate::catalog::{PurgeError, purge};

/// The listing; a purge is `DELETE` of `/_regcache/cache/<ref>` (the reference URL-encoded).
pub const CACHE_PATH: &str = "/_regcache/cache";

/// Whether `path` is the cache API's.
pub fn is_cache_path(path: &str) -> bool {
    path == CACHE_PATH || path.strip_prefix(CACHE_PATH).is_some_and(|rest| rest.starts_with('/'))
}

/// Whether `client` may use the admin API: loopback only (IPv4-mapped IPv6 loopback included).
pub fn admin_allowed(client: SocketAddr) -> bool {
    crate::config::canonical_ip(client.ip()).is_loopback()
}

/// Answers a request for [`CACHE_PATH`] or below.
pub async fn respond<B>(req: &Request<B>, client: SocketAddr, cache: &RegistryCache) -> Response<Body> {
    if !admin_allowed(client) {
        return body::text(
            StatusCode::FORBIDDEN,
            "regcache: the cache API is only accepted from loopback",
        );
    }
    let path = req.uri().path();
    let store = cache.store();
    let reference = path
        .strip_prefix(CACHE_PATH)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or("");
    match *req.method() {
        Method::GET | Method::HEAD if reference.is_empty() => {
            let query = req.uri().query().unwrap_or("");
            let filter = match ImageFilter::new(param(query, "registry").as_deref(), param(query, "repo").as_deref()) {
                Ok(f) => f,
                Err(e) => return json_error(StatusCode::BAD_REQUEST, e),
            };
            match Inventory::read_store(store).await {
                Ok(inv) => json(StatusCode::OK, &inv.images(&filter)),
                Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        Method::DELETE if !reference.is_empty() => {
            let reference = match percent_encoding::percent_decode_str(reference).decode_utf8() {
                Ok(r) => r.into_owned(),
                Err(_) => return json_error(StatusCode::BAD_REQUEST, "the reference is not UTF-8".into()),
            };
            match purge(store, &reference).await {
                Ok(report) => {
                    cache.forget_all();
                    tracing::info!(
                        reference = %report.reference,
                        tags = report.tags.len(),
                        manifests = report.manifests.len(),
                        content = report.content.len(),
                        bytes_freed = report.bytes_freed,
                        via = "admin endpoint",
                        "cache purged"
                    );
                    json(StatusCode::OK, &report)
                }
                Err(e @ PurgeError::BadRef(_)) => json_error(StatusCode::BAD_REQUEST, e.to_string()),
                Err(e @ PurgeError::NothingMatched(_)) => json_error(StatusCode::NOT_FOUND, e.to_string()),
                Err(e) => json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        Method::DELETE => json_error(
            StatusCode::BAD_REQUEST,
            "name what to purge: DELETE /_regcache/cache/<ref> (e.g. ghcr.io%2Forg%2Fapp%3A1.2)".into(),
        ),
        _ => {
            let mut res = body::text(
                StatusCode::METHOD_NOT_ALLOWED,
                "regcache: GET /_regcache/cache lists the cache, DELETE /_regcache/cache/<ref> purges",
            );
            res.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, DELETE"));
            res
        }
    }
}

/// The first value of `name` in a query string, URL-decoded.
fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    let text = match serde_json::to_string(value) {
        Ok(t) => t,
        Err(e) => return body::text(StatusCode::INTERNAL_SERVER_ERROR, format!("regcache: {e}")),
    };
    let mut res = Response::new(body::full(text));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

fn json_error(status: StatusCode, error: String) -> Response<Body> {
    json(status, &serde_json::json!({ "error": error }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_clients_may_administer_the_cache() {
        let ok = ["127.0.0.1:5000", "127.1.2.3:1", "[::1]:80", "[::ffff:127.0.0.1]:80"];
        for a in ok {
            assert!(admin_allowed(a.parse().unwrap()), "{a}");
        }
        for a in [
            "10.0.0.1:5000",
            "192.168.1.2:1",
            "[2001:db8::1]:80",
            "[::ffff:10.0.0.1]:80",
            "0.0.0.0:1",
        ] {
            assert!(!admin_allowed(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn paths_and_query_parameters() {
        assert!(is_cache_path("/_regcache/cache"));
        assert!(is_cache_path("/_regcache/cache/ghcr.io%2Forg"));
        assert!(!is_cache_path("/_regcache/cachex"));
        assert!(!is_cache_path("/_regcache/reload"));
        assert_eq!(param("registry=ghcr.io&repo=org%2F*", "repo").as_deref(), Some("org/*"));
        assert_eq!(param("registry=ghcr.io", "repo"), None);
    }
}
