//! Absolute-form requests (`GET http://host/…`): a configured registry goes through the
//! [`Gateway`](crate::front::Gateway) (and so the cache), any other host is forwarded as the
//! non-registry policy allows; a request for regcache's own address is answered locally.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::config::{HostPort, NonRegistryPolicy};
use crate::error::ProxyError;
use crate::proxy::connect::is_self;
use crate::proxy::{Proxy, local, refuse};
use crate::telemetry::{AccessRecord, Listener, Outcome};
use crate::upstream::Origin;

pub(super) async fn absolute_form(req: Request<Incoming>, client: SocketAddr, proxy: Arc<Proxy>) -> Response<Body> {
    let uri = req.uri();
    let record = AccessRecord::new(
        &proxy.metrics,
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
    if is_self(&host, proxy.listen_addr) {
        return local(&req, client, &proxy).await;
    }
    let config = proxy.config();
    let registry = config.is_registry(&host);
    let access = &config.access;
    let refused = match config.non_registry {
        _ if registry => None,
        NonRegistryPolicy::Deny => Some("not a configured registry (--non-registry deny)"),
        NonRegistryPolicy::Allowlist if !access.tunnel_allow.iter().any(|p| p.matches(&host)) => {
            Some("not a configured registry nor in --tunnel-allow")
        }
        // Plain requests reach the same ports as tunnels, plus 80: an open proxy's classic
        // abuse is a POST to port 25 of somebody's mail server.
        NonRegistryPolicy::Tunnel if host.port != 80 && !access.tunnel_ports.contains(&host.port) => {
            Some("its port is neither 80 nor a tunnel port (--tunnel-port)")
        }
        _ => None,
    };
    if let Some(why) = refused {
        return refuse(
            record,
            Outcome::Deny,
            ProxyError::Forbidden(format!("request to {host} refused: {why}")),
        );
    }
    let origin = Origin { tls, host };
    proxy
        .gateway
        .handle(client, Listener::Proxy, &origin, registry, req.map(body::boxed))
        .await
}
