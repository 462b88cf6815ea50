//! The other replicas of a fleet as a source of bytes: a replica that lost the race for a
//! blob's download lease streams the blob from the replica that won it (at the URL that one
//! advertises in the lease, `GET /_regcache/peer/blobs/<digest>`) while it downloads, instead
//! of waiting for the commit, so its clients' first byte comes as soon as the winner's does.
//!
//! A client of its own, not [`crate::upstream::UpstreamClient`]: peers are the fleet's own
//! listeners on private addresses (which the egress guard refuses for client-driven requests),
//! and the fleet's shared secret must never be sent to a registry.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::StoreConfig;
use crate::registry::Digest;

/// Where a replica serves blobs to its peers (the digest follows).
pub const PEER_BLOB_PATH: &str = "/_regcache/peer/blobs/";

/// How long a peer may take to answer with headers: it answers once its own download has
/// started, so a slow upstream makes the follower wait for the commit instead.
const PEER_ANSWER: Duration = Duration::from_secs(10);

/// Requests to the other replicas, and the check of theirs.
#[derive(Clone)]
pub struct PeerClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// The fleet's shared secret, sent as `Authorization: Bearer`.
    secret: String,
    /// This replica's own URL, as it advertises it (never asked).
    advertise: Option<String>,
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("advertise", &self.inner.advertise)
            .finish_non_exhaustive()
    }
}

/// A peer's answer: the blob's bytes from the offset asked for.
pub struct PeerBody {
    /// The body.
    pub body: Incoming,
    /// The blob's whole length, when the peer knows it.
    pub total: Option<u64>,
    /// Bytes at the start of `body` to drop (the peer sent the blob from its start).
    pub skip: u64,
}

impl PeerClient {
    /// The client for a bucket store with a peer secret; `None` for any other store.
    pub fn from_store(store: &StoreConfig) -> Option<Self> {
        let StoreConfig::S3(s3) = store else {
            return None;
        };
        let secret = s3.peer_secret.clone()?;
        Some(Self::new(secret, s3.peer_advertise.clone()))
    }

    /// A client showing `secret`; `advertise` is this replica's own URL.
    pub fn new(secret: String, advertise: Option<String>) -> Self {
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let https = match builder.with_native_roots() {
            Ok(b) => b,
            Err(_) => hyper_rustls::HttpsConnectorBuilder::new().with_webpki_roots(),
        }
        .https_or_http()
        .enable_http1()
        .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        Self {
            inner: Arc::new(Inner {
                secret,
                advertise,
                client,
            }),
        }
    }

    /// Whether `peer` is this replica (a lease it wrote itself before a restart).
    pub fn is_self(&self, peer: &str) -> bool {
        self.inner.advertise.as_deref() == Some(peer)
    }

    /// Whether a request carries the fleet's secret (compared in constant time).
    pub fn authorizes(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return false;
        };
        let (a, b) = (given.as_bytes(), self.inner.secret.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// Asks `peer` for the blob `digest` from byte `from` on.
    ///
    /// # Errors
    /// One line: the peer cannot be reached, refused, or does not have the blob.
    pub async fn open(&self, peer: &str, digest: &Digest, from: u64) -> Result<PeerBody, String> {
        let url = format!("{peer}{PEER_BLOB_PATH}{digest}");
        let mut req = Request::get(&url)
            .body(Empty::new())
            .map_err(|e| format!("{url}: {e}"))?;
        let bearer = HeaderValue::from_str(&format!("Bearer {}", self.inner.secret))
            .map_err(|_| "the peer secret is not a valid header value".to_string())?;
        req.headers_mut().insert(header::AUTHORIZATION, bearer);
        if from > 0 {
            req.headers_mut().insert(
                header::RANGE,
                HeaderValue::from_str(&format!("bytes={from}-")).map_err(|e| e.to_string())?,
            );
        }
        let res = match tokio::time::timeout(PEER_ANSWER, self.inner.client.request(req)).await {
            Err(_) => return Err(format!("{peer} did not answer within {}s", PEER_ANSWER.as_secs())),
            Ok(Err(e)) => return Err(format!("{peer}: {e}")),
            Ok(Ok(res)) => res,
        };
        let length = crate::registry::headers::content_length(res.headers());
        match res.status() {
            StatusCode::OK => Ok(PeerBody {
                total: length,
                skip: from,
                body: res.into_body(),
            }),
            StatusCode::PARTIAL_CONTENT => match content_range(res.headers()) {
                Some((start, total)) if start == from => Ok(PeerBody {
                    total: Some(total),
                    skip: 0,
                    body: res.into_body(),
                }),
                _ => Err(format!("{peer} answered a range other than bytes={from}-")),
            },
            status => Err(format!("{peer} answered {status}")),
        }
    }
}

/// `Content-Range: bytes START-END/TOTAL` as (START, TOTAL).
pub fn content_range(h: &HeaderMap) -> Option<(u64, u64)> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_fleet_secret_is_accepted() {
        let peers = PeerClient::new("a-shared-secret-16".into(), Some("http://10.0.0.5:3128".into()));
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
            h
        };
        assert!(peers.authorizes(&with("Bearer a-shared-secret-16")));
        assert!(!peers.authorizes(&with("Bearer a-shared-secret-17")));
        assert!(!peers.authorizes(&with("Bearer a-shared-secret")));
        assert!(!peers.authorizes(&with("Basic a-shared-secret-16")));
        assert!(!peers.authorizes(&HeaderMap::new()));
        assert!(peers.is_self("http://10.0.0.5:3128") && !peers.is_self("http://10.0.0.6:3128"));
    }

    #[test]
    fn content_ranges_parse() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("bytes 100-999/1000"));
        assert_eq!(content_range(&h), Some((100, 1000)));
        h.insert(header::CONTENT_RANGE, HeaderValue::from_static("bytes */1000"));
        assert_eq!(content_range(&h), None);
    }
}
