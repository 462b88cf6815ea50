//! Relaying: what upstream answers is passed to the client as is (hop-by-hop headers
//! stripped, `X-Cache` set), for requests the cache does not keep (token endpoints, uploads,
//! tag lists), for clients upstream refuses, and when nothing cached can answer. Also the
//! `/v2/` ping, answered locally while upstream is down so that cached images stay pullable.

use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::cache::manifests::Fetched;
use crate::cache::registry_cache::{Ctx, RegistryCache, Served};
use crate::error::ProxyError;
use crate::registry::headers::{self, DOCKER_API_VERSION, X_CACHE};
use crate::telemetry::Outcome;
use crate::upstream::{Origin, Requester};

impl RegistryCache {
    /// Anything not cached (token endpoints, uploads, tag lists, …) goes upstream untouched.
    pub(super) async fn bypass(&self, origin: &Origin, req: Request<Body>) -> Served {
        match self.upstream.forward(origin, req).await {
            Ok(mut res) => {
                res.headers_mut()
                    .insert(X_CACHE, HeaderValue::from_static(Outcome::Bypass.x_cache()));
                (res, Outcome::Bypass)
            }
            Err(e) => error(e),
        }
    }

    // ---- /v2/ ----

    /// Forwards the ping (clients learn how to authenticate from it); answers it locally when
    /// upstream is down, so cached images stay pullable.
    pub(super) async fn ping(&self, ctx: &Ctx<'_>) -> Served {
        let method = if ctx.head { Method::HEAD } else { Method::GET };
        match self.ask_upstream(ctx, method).await {
            Ok(res) if !upstream_unavailable(res.status()) => passthrough(res, Outcome::Bypass),
            Ok(res) => {
                tracing::warn!(registry = %ctx.registry, status = res.status().as_u16(), "registry unavailable; answering /v2/ locally");
                (local_ping(ctx.head), Outcome::Stale)
            }
            Err(e) => {
                tracing::warn!(registry = %ctx.registry, error = %e, "registry unreachable; answering /v2/ locally");
                (local_ping(ctx.head), Outcome::Stale)
            }
        }
    }

    // ---- blobs ----

    /// Sends the client's request upstream for this client alone (its own credentials), as
    /// `method`, following redirects.
    pub(super) async fn ask_upstream(&self, ctx: &Ctx<'_>, method: Method) -> Result<Response<Incoming>, ProxyError> {
        self.requester(ctx)
            .send(method, ctx.url.clone(), headers::for_upstream(ctx.headers))
            .await
    }

    /// Upstream requests for this request's repository.
    pub(super) fn requester(&self, ctx: &Ctx<'_>) -> Requester {
        Requester::new(
            self.upstream.clone(),
            self.auth.clone(),
            ctx.origin.host.clone(),
            ctx.repository.clone(),
        )
    }

    /// Streams upstream's answer to the client's request back, uncached, labelled `outcome`.
    pub(super) async fn relay(&self, ctx: &Ctx<'_>, method: Method, outcome: Outcome) -> Served {
        match self.ask_upstream(ctx, method).await {
            Ok(res) => passthrough(res, outcome),
            Err(e) => error(e),
        }
    }
}

pub(super) fn upstream_unavailable(status: StatusCode) -> bool {
    status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS
}

pub(super) fn error(e: ProxyError) -> Served {
    tracing::warn!(error = %e, "registry request failed");
    (e.into_response(), Outcome::Error)
}

pub(super) fn passthrough(res: Response<Incoming>, outcome: Outcome) -> Served {
    let (mut parts, body) = res.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    parts
        .headers
        .insert(X_CACHE, HeaderValue::from_static(outcome.x_cache()));
    (Response::from_parts(parts, body::boxed(body)), outcome)
}

pub(super) fn fetched_response(f: &Fetched, outcome: Outcome) -> Served {
    let mut res = Response::new(body::full(f.body.clone()));
    *res.status_mut() = f.status;
    *res.headers_mut() = f.headers.clone();
    res.headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(outcome.x_cache()));
    (res, outcome)
}

pub(super) fn head_only(status: StatusCode, h: &HeaderMap, outcome: Outcome) -> Served {
    let mut res = Response::new(body::empty());
    *res.status_mut() = status;
    *res.headers_mut() = h.clone();
    res.headers_mut()
        .insert(X_CACHE, HeaderValue::from_static(outcome.x_cache()));
    (res, outcome)
}

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
