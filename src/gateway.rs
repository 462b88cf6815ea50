//! Requests for an origin (decrypted from an intercepted tunnel, or plain `http://` ones):
//! registry hosts go through the [`RegistryCache`], other hosts straight upstream. Either way
//! the request is logged once, when its response body ends.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};

use crate::access_log::{AccessRecord, LoggedBody, Outcome};
use crate::body::{self, Body};
use crate::cache::RegistryCache;
use crate::upstream::{Origin, UpstreamClient};

/// Answers requests for origins.
#[derive(Clone)]
pub struct Gateway {
    upstream: UpstreamClient,
    cache: Arc<RegistryCache>,
}

impl Gateway {
    /// A gateway caching registry traffic in `cache` and forwarding the rest through `upstream`.
    pub fn new(upstream: UpstreamClient, cache: Arc<RegistryCache>) -> Self {
        Self { upstream, cache }
    }

    /// Handles one request for `origin` from `client`. `registry` says whether the origin is a
    /// configured registry (cached) or any other host (forwarded as is).
    pub async fn handle(
        &self,
        client: SocketAddr,
        origin: &Origin,
        registry: bool,
        req: Request<Body>,
    ) -> Response<Body> {
        let record = AccessRecord::new(client, origin.host.to_string(), req.method().clone(), req.uri().path())
            .with_registry(registry.then(|| crate::registry::canonical_registry(&origin.host)));
        let head = req.method() == http::Method::HEAD;
        let (res, outcome) = if registry {
            self.cache.handle(origin, req).await
        } else {
            match self.upstream.forward(origin, req).await {
                Ok(res) => (res, Outcome::Bypass),
                Err(e) => {
                    tracing::warn!(host = %origin.host, error = %e, "upstream request failed");
                    (e.into_response(), Outcome::Error)
                }
            }
        };
        let status = res.status().as_u16();
        let expected = if head || status == 304 || status == 204 {
            Some(0)
        } else {
            crate::headers::content_length(res.headers())
        };
        res.map(|b| body::boxed(LoggedBody::new(b, record, outcome, status, expected)))
    }
}
