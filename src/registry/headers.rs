//! Header hygiene shared by every path that talks to upstream or answers a client.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// `X-Cache`: what regcache did (HIT, MISS, REVALIDATED, STALE, BYPASS).
pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");
/// `Docker-Content-Digest` (distribution-spec: the canonical digest of the content).
pub const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
/// `Docker-Distribution-API-Version`, sent on `/v2/` answers.
pub const DOCKER_API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

/// Removes headers that describe one connection, not the message (RFC 9110 §7.6.1), plus
/// the proxy's own credentials, which must never travel further.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        headers.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(n);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
}

/// Headers for a request regcache makes upstream on a client's behalf (a miss or a
/// revalidation): the client's own, minus what only makes sense between the client and
/// regcache. `Authorization` is kept: the client's credentials are what upstream checks.
/// `Accept-Encoding` is dropped so that bodies arrive exactly as their digest describes.
pub fn for_upstream(client: &HeaderMap) -> HeaderMap {
    let mut h = client.clone();
    strip_hop_by_hop(&mut h);
    for n in [
        header::HOST,
        header::RANGE,
        header::IF_RANGE,
        header::IF_NONE_MATCH,
        header::IF_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
        header::ACCEPT_ENCODING,
        header::CONTENT_LENGTH,
    ] {
        h.remove(n);
    }
    h
}

/// The `Content-Length`, when present and well-formed.
pub fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Sets a header from a string known to be a valid value (digests, media types from
/// upstream, numbers).
pub fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_including_those_named_in_connection() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::PROXY_AUTHORIZATION, "Basic Zm9vOmJhcg==".parse().unwrap());
        h.insert(header::AUTHORIZATION, "Bearer t".parse().unwrap());
        h.insert(header::ACCEPT, "application/json".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key(header::AUTHORIZATION));
        assert!(h.contains_key(header::ACCEPT));
    }

    #[test]
    fn upstream_requests_keep_credentials_but_not_ranges_or_encodings() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer t".parse().unwrap());
        h.insert(header::RANGE, "bytes=5-".parse().unwrap());
        h.insert(header::ACCEPT_ENCODING, "gzip".parse().unwrap());
        h.insert(header::IF_NONE_MATCH, "\"x\"".parse().unwrap());
        h.insert(header::USER_AGENT, "containerd/1.6".parse().unwrap());
        let up = for_upstream(&h);
        assert!(up.contains_key(header::AUTHORIZATION));
        assert!(up.contains_key(header::USER_AGENT));
        assert_eq!(up.len(), 2);
    }
}
