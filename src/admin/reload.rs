//! `POST /_regcache/reload`: re-read the configuration, as SIGHUP does (loopback only).

use std::net::SocketAddr;

use http::{HeaderValue, Method, Request, Response, StatusCode, header};

use crate::admin::Reload;
use crate::body::{self, Body};
use crate::config::canonical_ip;

/// The endpoint's path.
pub const RELOAD_PATH: &str = "/_regcache/reload";

/// Answers a request for [`RELOAD_PATH`].
pub async fn respond<B>(req: &Request<B>, client: SocketAddr, reload: &dyn Reload) -> Response<Body> {
    if !canonical_ip(client.ip()).is_loopback() {
        return body::text(StatusCode::FORBIDDEN, "regcache: reload is only accepted from loopback");
    }
    if req.method() != Method::POST {
        let mut res = body::text(StatusCode::METHOD_NOT_ALLOWED, "regcache: reload needs POST");
        res.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return res;
    }
    match reload.reload().await {
        Ok(changes) => {
            tracing::info!(changes = ?changes, via = "admin endpoint", "configuration reloaded");
            let mut text = String::from("reloaded\n");
            for c in changes {
                text.push_str(&c);
                text.push('\n');
            }
            body::text(StatusCode::OK, text)
        }
        Err(e) => {
            tracing::error!(error = %e, via = "admin endpoint", "configuration reload refused; keeping the running one");
            body::text(StatusCode::UNPROCESSABLE_ENTITY, format!("reload refused: {e}"))
        }
    }
}
