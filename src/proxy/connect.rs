//! CONNECT: intercept a configured registry host (TLS terminated by [`super::mitm`]), tunnel
//! any other host byte for byte as policy allows (`--non-registry`, `--tunnel-port`,
//! `--tunnel-allow`), or refuse. A tunnel's target is dialled before answering, so an
//! unreachable one is a 502 rather than a dead tunnel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::body::{self, Body};
use crate::config::{Config, HostPort, NonRegistryPolicy};
use crate::error::ProxyError;
use crate::front::limits::ConnectionSlot;
use crate::proxy::{Proxy, refuse};
use crate::proxy::{mitm, tunnel};
use crate::telemetry::{AccessRecord, Outcome};
use crate::upstream::Origin;

pub(super) async fn connect(
    req: Request<Incoming>,
    client: SocketAddr,
    proxy: Arc<Proxy>,
    slot: ConnectionSlot,
) -> Response<Body> {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_string())
        .unwrap_or_default();
    let record = AccessRecord::new(&proxy.metrics, client, raw.clone(), Method::CONNECT, "");
    let target = match req.uri().authority() {
        Some(a) if a.port().is_some() => HostPort::parse(a.as_str(), 443),
        _ => Err(format!("{raw:?}: CONNECT needs a HOST:PORT target")),
    };
    let target = match target {
        Ok(t) => t,
        Err(e) => return refuse(record, Outcome::Error, ProxyError::BadRequest(e)),
    };
    if is_self(&target, proxy.listen_addr) {
        return refuse(
            record,
            Outcome::Deny,
            ProxyError::Forbidden(format!("CONNECT to {target} refused: that is regcache itself")),
        );
    }

    let config = proxy.config();
    if config.is_registry(&target) {
        let origin = Origin {
            tls: true,
            host: target,
        };
        let tasks = proxy.tasks.clone();
        tasks.spawn(async move {
            let _slot = slot;
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => mitm::serve(upgraded, client, origin, &proxy).await,
                Err(e) => tracing::debug!(%client, error = %e, "CONNECT upgrade failed"),
            }
        });
        return Response::new(body::empty());
    }

    if let Some(why) = tunnel_refusal(&config, &target) {
        return refuse(
            record,
            Outcome::Deny,
            ProxyError::Forbidden(format!("CONNECT to {target} refused: {why}")),
        );
    }

    // Dial before answering, so an unreachable target is a 502 rather than a dead tunnel.
    let upstream = match proxy.upstream.dial(&target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%client, host = %target, error = %e, "tunnel target unreachable");
            return refuse(record, Outcome::Error, e);
        }
    };
    let idle = config.timeouts.client_idle;
    let metrics = proxy.metrics.clone();
    proxy.tasks.spawn(async move {
        let _slot = slot;
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
        metrics.tunnel_closed();
    });
    Response::new(body::empty())
}

/// Why a CONNECT to a non-registry `target` is refused, if it is.
fn tunnel_refusal(config: &Config, target: &HostPort) -> Option<String> {
    let access = &config.access;
    match config.non_registry {
        NonRegistryPolicy::Deny => Some("not a configured registry (--non-registry deny)".into()),
        NonRegistryPolicy::Tunnel if !access.tunnel_ports.contains(&target.port) => Some(format!(
            "port {} is not a tunnel port (--tunnel-port; allowed: {:?})",
            target.port, access.tunnel_ports
        )),
        NonRegistryPolicy::Tunnel => None,
        NonRegistryPolicy::Allowlist if access.tunnel_allow.iter().any(|p| p.matches(target)) => None,
        NonRegistryPolicy::Allowlist => Some("not a configured registry nor in --tunnel-allow".into()),
    }
}

/// Whether `target` names the proxy's own listener (a request loop).
pub(super) fn is_self(target: &HostPort, listen: SocketAddr) -> bool {
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
