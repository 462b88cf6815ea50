//! The proxy's front door: one HTTP/1.1 connection per client, where each request is a
//! CONNECT (intercept, tunnel or refuse), an absolute-form `http://` request to forward, or a
//! request for regcache itself.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::access_log::{AccessRecord, Outcome};
use crate::app::Shared;
use crate::body::{self, Body};
use crate::config::{HostPort, NonRegistryPolicy};
use crate::error::ProxyError;
use crate::upstream::Origin;
use crate::{mitm, tunnel};

/// Serves one accepted client connection until it closes.
pub async fn serve_connection(stream: TcpStream, client: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let idle = shared.config.timeouts.client_idle;
    let service = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(route(req, client, shared).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%client, error = %e, "client connection ended with an error");
    }
}

async fn route(req: Request<Incoming>, client: SocketAddr, shared: Arc<Shared>) -> Response<Body> {
    if req.method() == Method::CONNECT {
        return connect(req, client, shared).await;
    }
    match (req.uri().scheme_str(), req.uri().authority()) {
        (Some(_), Some(_)) => absolute_form(req, client, shared).await,
        _ => local(&req, client, &shared),
    }
}

fn local<B>(req: &Request<B>, client: SocketAddr, shared: &Shared) -> Response<Body> {
    let record = AccessRecord::new(
        client,
        shared.listen_addr.to_string(),
        req.method().clone(),
        req.uri().path(),
    );
    let res = shared.local.respond(req);
    record.emit(Outcome::Local, res.status().as_u16(), 0, true);
    res
}

/// Answers a request refused before it reached any upstream, and logs it.
fn refuse(record: AccessRecord, outcome: Outcome, err: ProxyError) -> Response<Body> {
    let res = err.into_response();
    record.emit(outcome, res.status().as_u16(), 0, true);
    res
}

async fn connect(req: Request<Incoming>, client: SocketAddr, shared: Arc<Shared>) -> Response<Body> {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let record = AccessRecord::new(client, raw.clone(), Method::CONNECT, "");
    let target = match req.uri().authority() {
        Some(a) if a.port().is_some() => HostPort::parse(a.as_str(), 443),
        _ => Err(format!("{raw:?}: CONNECT needs a HOST:PORT target")),
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => return refuse(record, Outcome::Error, ProxyError::BadRequest(e)),
    };
    if is_self(&target, shared.listen_addr) {
        return refuse(
            record,
            Outcome::Deny,
            ProxyError::Forbidden(format!("CONNECT to {target} refused: that is regcache itself")),
        );
    }

    if shared.config.is_registry(&target) {
        let origin = Origin {
            tls: true,
            host: target,
        };
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let idle = shared.config.timeouts.client_idle;
                    mitm::serve(
                        upgraded,
                        client,
                        origin,
                        &shared.leaf_certs,
                        shared.gateway.clone(),
                        idle,
                    )
                    .await;
                }
                Err(e) => tracing::debug!(%client, error = %e, "CONNECT upgrade failed"),
            }
        });
        return Response::new(body::empty());
    }

    if shared.config.non_registry == NonRegistryPolicy::Deny {
        return refuse(
            record,
            Outcome::Deny,
            ProxyError::Forbidden(format!(
                "CONNECT to {target} refused: not a configured registry (--non-registry deny)"
            )),
        );
    }

    // Dial before answering, so an unreachable target is a 502 rather than a dead tunnel.
    let upstream = match shared.upstream.dial(&target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%client, host = %target, error = %e, "tunnel target unreachable");
            return refuse(record, Outcome::Error, e);
        }
    };
    let idle = shared.config.timeouts.client_idle;
    tokio::spawn(async move {
        let start = Instant::now();
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(%client, error = %e, "CONNECT upgrade failed");
                return;
            }
        };
        let result = tunnel::relay(TokioIo::new(upgraded), upstream, idle).await;
        let (up, down, idled_out, error) = match &result {
            Ok(r) => (r.up, r.down, r.idled_out, None),
            Err(e) => (0, 0, false, Some(e.to_string())),
        };
        tracing::info!(
            target: "regcache::access",
            %client,
            host = %target,
            method = "CONNECT",
            cache = "tunnel",
            status = 200u16,
            bytes_up = up,
            bytes = down,
            ms = start.elapsed().as_millis() as u64,
            idled_out,
            error = error.as_deref().unwrap_or(""),
            "tunnel closed"
        );
        crate::metrics::global().tunnel_closed();
    });
    Response::new(body::empty())
}

async fn absolute_form(req: Request<Incoming>, client: SocketAddr, shared: Arc<Shared>) -> Response<Body> {
    let uri = req.uri();
    let record = AccessRecord::new(
        client,
        uri.authority().map(|a| a.as_str()).unwrap_or(""),
        req.method().clone(),
        uri.path(),
    );
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        other => {
            let msg = format!(
                "unsupported scheme {:?}: only http:// is proxied in plain form",
                other.unwrap_or("")
            );
            return refuse(record, Outcome::Error, ProxyError::BadRequest(msg));
        }
    };
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let host = match HostPort::parse(authority, if tls { 443 } else { 80 }) {
        Ok(h) => h,
        Err(e) => return refuse(record, Outcome::Error, ProxyError::BadRequest(e)),
    };
    if is_self(&host, shared.listen_addr) {
        return local(&req, client, &shared);
    }
    let registry = shared.config.is_registry(&host);
    if !registry && shared.config.non_registry == NonRegistryPolicy::Deny {
        return refuse(
            record,
            Outcome::Deny,
            ProxyError::Forbidden(format!(
                "request to {host} refused: not a configured registry (--non-registry deny)"
            )),
        );
    }
    let origin = Origin { tls, host };
    shared
        .gateway
        .handle(client, &origin, registry, req.map(body::boxed))
        .await
}

/// Whether `target` names the proxy's own listener (a request loop).
fn is_self(target: &HostPort, listen: SocketAddr) -> bool {
    if target.port != listen.port() {
        return false;
    }
    match target.host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip == listen.ip() || (listen.ip().is_unspecified() && ip.is_loopback()),
        Err(_) => target.host == "localhost" && (listen.ip().is_loopback() || listen.ip().is_unspecified()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_detection() {
        let listen: SocketAddr = "127.0.0.1:3128".parse().unwrap();
        let hp = |s: &str| HostPort::parse(s, 443).unwrap();
        assert!(is_self(&hp("127.0.0.1:3128"), listen));
        assert!(is_self(&hp("localhost:3128"), listen));
        assert!(!is_self(&hp("127.0.0.1:3129"), listen));
        assert!(!is_self(&hp("ghcr.io:3128"), listen));
        let any: SocketAddr = "0.0.0.0:3128".parse().unwrap();
        assert!(is_self(&hp("127.0.0.2:3128"), any));
    }
}
