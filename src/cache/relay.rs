//! Relaying: what upstream answers is passed to the client as is (hop-by-hop headers
//! stripped, `X-Cache` set), for requests the cache does not keep (token endpoints, uploads,
//! tag lists), for clients upstream refuses, and when nothing cached can answer. Also the
//! `/v2/` ping, answered locally while upstream is down so that cached images stay pullable.

use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use crate::body::Body;
use crate::cache::answers::{Served, error, local_ping, passthrough, upstream_unavailable};
use crate::cache::{Ctx, RegistryCache};
use crate::error::ProxyError;
use crate::registry::headers::{self, X_CACHE};
use crate::telemetry::{Listener, Outcome};
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
        .logging_in(ctx.listener == Listener::Mirror)
    }

    /// Streams upstream's answer to the client's request back, uncached, labelled `outcome`.
    pub(super) async fn relay(&self, ctx: &Ctx<'_>, method: Method, outcome: Outcome) -> Served {
        match self.ask_upstream(ctx, method).await {
            Ok(res) => passthrough(res, outcome),
            Err(e) => error(e),
        }
    }
}
