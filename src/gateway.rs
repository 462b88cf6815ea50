//! Requests for an origin (decrypted from an intercepted tunnel, or plain `http://` ones):
//! the point where registry classification and the cache slot in, ahead of the upstream client.
//!
//! Today every request is forwarded (`bypass`): headers cleaned of hop-by-hop fields, bodies
//! streamed both ways, errors turned into a status and a one-line reason.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName};
use http::{Request, Response, Uri, Version};

use crate::access_log::{AccessRecord, LoggedBody, Outcome};
use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::upstream::{Origin, UpstreamClient};

/// Answers requests for origins, through the upstream client.
#[derive(Clone)]
pub struct Gateway {
    upstream: UpstreamClient,
}

impl Gateway {
    /// A gateway forwarding through `upstream`.
    pub fn new(upstream: UpstreamClient) -> Self {
        Self { upstream }
    }

    /// Handles one request for `origin` from `client`, logging it when its body ends.
    pub async fn handle(&self, client: SocketAddr, origin: &Origin, req: Request<Body>) -> Response<Body> {
        let record = AccessRecord::new(client, origin.host.to_string(), req.method().clone(), req.uri().path());
        let (res, outcome) = match self.forward(origin, req).await {
            Ok(res) => (res, Outcome::Bypass),
            Err(e) => {
                tracing::warn!(host = %origin.host, error = %e, "upstream request failed");
                (e.into_response(), Outcome::Error)
            }
        };
        let status = res.status().as_u16();
        res.map(|b| body::boxed(LoggedBody::new(b, record, outcome, status)))
    }

    /// Sends the request upstream unchanged but for hop-by-hop headers, and streams the answer.
    async fn forward(&self, origin: &Origin, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let uri: Uri = format!("{}{}", origin.base_url(), path)
            .parse()
            .map_err(|e| ProxyError::BadRequest(format!("cannot build upstream URI: {e}")))?;
        parts.uri = uri;
        // The upstream client chooses h1 or h2 by ALPN; the client's own version is irrelevant.
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        // The client sets Host (h1) or :authority (h2) from the URI: the name the client asked for.
        parts.headers.remove(header::HOST);
        let res = self.upstream.send(Request::from_parts(parts, body)).await?;
        let (mut parts, body) = res.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body::boxed(body)))
    }
}

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
}
