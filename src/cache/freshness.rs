//! What upstream says about how long a tag's answer stays fresh (RFC 9111 "Freshness"), read by
//! http-cache-semantics' `CachePolicy`: `Cache-Control: max-age` and `no-cache`, `Expires`
//! against `Date`, `Age`, `no-store`, and the `ETag` a revalidation sends back as
//! `If-None-Match`. Whether any of it is used is the operator's choice (`tag_ttl_mode`).
//!
//! Judged as a single-user cache would judge it: regcache checks every client's access to a
//! repository itself (`repo_access`), so `private` answers and answers to authenticated
//! requests are kept like any other (and `s-maxage`, meant for caches that cannot tell clients
//! apart, is not read).

use std::time::{Duration, SystemTime};

use http::header::{CACHE_CONTROL, ETAG, EXPIRES};
use http::{HeaderMap, Method, StatusCode, Uri};
use http_cache_semantics::{CacheOptions, CachePolicy};

use crate::cache::records::TagFreshness;

/// Upstream's verdict on one manifest answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UpstreamFreshness {
    /// `false` when upstream said `no-store`.
    pub(super) storable: bool,
    /// Lifetime and validator, as kept in the tag's record.
    pub(super) record: TagFreshness,
}

impl UpstreamFreshness {
    /// Reads the answer upstream gave to `method uri`. Only method and URI of the request
    /// matter: the client's own headers (its credentials, its `Cache-Control`) say nothing
    /// about the tag.
    pub(super) fn of(method: &Method, uri: &Uri, status: StatusCode, headers: &HeaderMap) -> Self {
        let mut req = http::Request::new(());
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri.clone();
        let mut res = http::Response::new(());
        *res.status_mut() = status;
        *res.headers_mut() = headers.clone();
        let now = SystemTime::now();
        let options = CacheOptions {
            shared: false,
            ..CacheOptions::default()
        };
        let policy = CachePolicy::new_options(&req, &res, now, options);
        // Without either header upstream stated nothing, and `tag_ttl` decides.
        let stated = headers.contains_key(CACHE_CONTROL) || headers.contains_key(EXPIRES);
        Self {
            storable: policy.is_storable(),
            record: TagFreshness {
                ttl_ms: stated.then(|| millis(policy.time_to_live(now))),
                etag: headers.get(ETAG).and_then(|v| v.to_str().ok()).map(str::to_string),
            },
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(pairs: &[(&str, &str)]) -> UpstreamFreshness {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        let uri: Uri = "https://ghcr.io/v2/org/app/manifests/1".parse().unwrap();
        UpstreamFreshness::of(&Method::HEAD, &uri, StatusCode::OK, &h)
    }

    #[test]
    fn upstream_lifetimes() {
        let f = judge(&[("cache-control", "max-age=5"), ("etag", "\"sha256:ab\"")]);
        assert!(f.storable);
        assert_eq!(f.record.ttl_ms, Some(5000));
        assert_eq!(f.record.etag.as_deref(), Some("\"sha256:ab\""));
        // An answer that has already aged upstream (a CDN in front of the registry).
        assert_eq!(
            judge(&[("cache-control", "max-age=60"), ("age", "50")]).record.ttl_ms,
            Some(10_000)
        );
        assert_eq!(judge(&[("cache-control", "no-cache")]).record.ttl_ms, Some(0));
        assert_eq!(
            judge(&[("cache-control", "private, max-age=30")]).record.ttl_ms,
            Some(30_000)
        );
        let past = judge(&[("expires", "Thu, 01 Jan 1970 00:00:00 GMT")]);
        assert_eq!(past.record.ttl_ms, Some(0));
        let gone = judge(&[("cache-control", "no-store")]);
        assert!(!gone.storable);
        let silent = judge(&[("docker-content-digest", "sha256:ab")]);
        assert!(silent.storable);
        assert_eq!(
            silent.record,
            TagFreshness::default(),
            "nothing stated: tag_ttl decides"
        );
    }
}
