//! Requests for an origin (decrypted from an intercepted tunnel, or plain `http://` ones):
//! registry hosts go through the [`RegistryCache`], other hosts straight upstream. Either way
//! the request is logged once, when its response body ends.

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Request, Response, StatusCode};

use crate::body::{self, Body};
use crate::cache::RegistryCache;
use crate::config::Config;
use crate::registry::ErrorCode;
use crate::telemetry::{AccessRecord, Listener, LoggedBody, Metrics, Outcome};
use crate::upstream::{Origin, UpstreamClient};

/// Answers requests for origins.
#[derive(Clone)]
pub struct Gateway {
    upstream: UpstreamClient,
    cache: Arc<RegistryCache>,
    config: Arc<ArcSwap<Config>>,
    metrics: Arc<Metrics>,
}

impl Gateway {
    /// A gateway caching registry traffic in `cache` and forwarding the rest through `upstream`,
    /// under the running `config` (push policy).
    pub fn new(
        upstream: UpstreamClient,
        cache: Arc<RegistryCache>,
        config: Arc<ArcSwap<Config>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            upstream,
            cache,
            config,
            metrics,
        }
    }

    /// Handles one request for `origin` from `client`, come in on `listener`. `registry` says
    /// whether the origin is a configured registry (cached) or any other host (forwarded as is).
    pub async fn handle(
        &self,
        client: SocketAddr,
        listener: Listener,
        origin: &Origin,
        registry: bool,
        req: Request<Body>,
    ) -> Response<Body> {
        let record = AccessRecord::new(
            &self.metrics,
            client,
            origin.host.to_string(),
            req.method().clone(),
            req.uri().path(),
        )
        .with_registry(registry.then(|| crate::config::canonical_registry(&origin.host)))
        .with_listener(listener);
        let head = req.method() == http::Method::HEAD;
        let (res, outcome) = if registry && is_push(&req) && listener == Listener::Mirror {
            // OCI distribution-spec: a registry that does not support an operation answers
            // `UNSUPPORTED`; a mirror is read-only whatever `allow_push` says.
            let mut res = ErrorCode::Unsupported.response(
                StatusCode::METHOD_NOT_ALLOWED,
                "regcache's mirror is read-only: push to the registry itself",
            );
            res.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
            (res, Outcome::Deny)
        } else if registry && is_push(&req) && !self.config.load().allow_push {
            let mut res = body::text(
                StatusCode::METHOD_NOT_ALLOWED,
                "regcache: pushes through this proxy are disabled (allow_push = false)",
            );
            res.headers_mut()
                .insert(http::header::ALLOW, http::HeaderValue::from_static("GET, HEAD"));
            (res, Outcome::Deny)
        } else if registry && listener == Listener::Mirror {
            let (res, outcome) = self.cache.handle(origin, req, listener).await;
            (upstream_challenge_hidden(res), outcome)
        } else if registry {
            self.cache.handle(origin, req, listener).await
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
            crate::registry::headers::content_length(res.headers())
        };
        res.map(|b| body::boxed(LoggedBody::new(b, record, outcome, status, expected)))
    }
}

/// A mirror's client cannot follow upstream's `WWW-Authenticate` (it would log in to the
/// upstream's token service and send that token to the mirror). Upstream refusing regcache —
/// anonymous, or with its account — is, for the mirror's client, a repository it cannot have:
/// `404 NAME_UNKNOWN`, as registries answer for what a user may not see, after which dockerd
/// and containerd try the next endpoint (the upstream itself, with the user's own login).
fn upstream_challenge_hidden(mut res: Response<Body>) -> Response<Body> {
    res.headers_mut().remove(http::header::WWW_AUTHENTICATE);
    if !matches!(res.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
        return res;
    }
    ErrorCode::NameUnknown.response(
        StatusCode::NOT_FOUND,
        "not found, or not readable with regcache's upstream accounts",
    )
}

/// Whether `req` writes to a registry (OCI distribution-spec "Pushing", "Deleting").
fn is_push<B>(req: &Request<B>) -> bool {
    use http::Method;
    matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) && req.uri().path().starts_with("/v2/")
}
