//! The answers the cache builds: from what upstream said (passed on, or buffered and shared
//! between coalesced requests), from the store (manifest headers), or locally (the `/v2/`
//! ping while upstream is down, errors). Pure functions over headers and bodies.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::registry::Digest;
use crate::registry::headers::{self, DOCKER_API_VERSION, DOCKER_CONTENT_DIGEST, X_CACHE};
use crate::telemetry::Outcome;

/// A response and what the cache did to produce it.
pub type Served = (Response<Body>, Outcome);

/// An upstream answer small enough to share between coalesced requests.
#[derive(Debug, Clone)]
pub(super) struct Fetched {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    /// Fingerprint of the credentials it was fetched with.
    pub(super) auth: String,
}

/// Whether an upstream status means trouble (5xx, 429): stale content may be served then.
pub(super) fn upstream_unavailable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

/// A request the cache could not answer: logged, and its status for the client.
pub(super) fn error(e: ProxyError) -> Served {
    tracing::warn!(error = %e, "registry request failed");
    (e.into_response(), Outcome::Error)
}

/// Upstream's answer to this client, streamed on as is (hop-by-hop headers dropped).
pub(super) fn passthrough(res: Response<Incoming>, outcome: Outcome) -> Served {
    let (mut parts, body) = res.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(X_CACHE, HeaderValue::from_static(outcome.x_cache()));
    (Response::from_parts(parts, body::boxed(body)), outcome)
}

/// A buffered upstream answer (possibly fetched for another client), for this one.
pub(super) fn fetched_response(f: &Fetched, outcome: Outcome) -> Served {
    let mut res = Response::new(body::full(f.body.clone()));
    *res.status_mut() = f.status;
    *res.headers_mut() = f.headers.clone();
    res.headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(outcome.x_cache()));
    (res, outcome)
}

/// Upstream's status and headers, without a body (for a `HEAD`).
pub(super) fn head_only(status: StatusCode, h: &HeaderMap, outcome: Outcome) -> Served {
    let mut res = Response::new(body::empty());
    *res.status_mut() = status;
    *res.headers_mut() = h.clone();
    res.headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(outcome.x_cache()));
    (res, outcome)
}

/// `/v2/` answered by regcache itself while the registry is unreachable (`Warning: 110`).
pub(super) fn local_ping(head: bool) -> Response<Body> {
    let mut res = Response::new(if head { body::empty() } else { body::full("{}") });
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
    h.insert(DOCKER_API_VERSION, HeaderValue::from_static("registry/2.0"));
    h.insert(X_CACHE, HeaderValue::from_static(Outcome::Stale.x_cache()));
    h.insert(header::WARNING, HeaderValue::from_static("110 - \"Response is Stale\""));
    res
}

/// The media type of a response (`Content-Type` without parameters).
pub(super) fn content_type(h: &HeaderMap) -> String {
    h.get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
        .unwrap_or_else(|| "application/octet-stream".to_string())
}

/// The headers of a manifest answer: type, length, digest, `ETag`, `X-Cache`.
pub(super) fn set_manifest_headers(
    h: &mut HeaderMap,
    len: u64,
    media_type: &str,
    digest: &Digest,
    outcome: Outcome,
    stale: bool,
) {
    headers::set(h, header::CONTENT_TYPE, media_type);
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    headers::set(h, DOCKER_CONTENT_DIGEST, &digest.to_string());
    headers::set(h, header::ETAG, &format!("\"{digest}\""));
    h.insert(DOCKER_API_VERSION, HeaderValue::from_static("registry/2.0"));
    h.insert(X_CACHE, HeaderValue::from_static(outcome.x_cache()));
    if stale {
        h.insert(header::WARNING, HeaderValue::from_static("110 - \"Response is Stale\""));
    }
}

/// A manifest answer from its bytes (no body for a `HEAD`).
pub(super) fn manifest_response(
    head: bool,
    bytes: &Bytes,
    media_type: &str,
    digest: &Digest,
    outcome: Outcome,
    stale: bool,
) -> Response<Body> {
    let mut res = Response::new(if head { body::empty() } else { body::full(bytes.clone()) });
    set_manifest_headers(
        res.headers_mut(),
        bytes.len() as u64,
        media_type,
        digest,
        outcome,
        stale,
    );
    res
}
