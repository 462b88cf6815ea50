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

use crate::app::Shared;
use crate::body::{self, Body};
use crate::config::settings::{HostPort, NonRegistryPolicy};
use crate::error::ProxyError;
use crate::proxy::client_auth::{self, AuthCheck};
use crate::proxy::limits::{self, ConnectionSlot};
use crate::proxy::{mitm, tunnel};
use crate::telemetry::access_log::{AccessRecord, Outcome};
use crate::upstream::client::Origin;

/// Serves one accepted client connection until it closes. `slot` is its place under the
/// connection limit; tunnels opened on it keep a copy until they close.
///
/// On a graceful shutdown the connection finishes the response under way, then closes.
pub async fn serve_connection<IO>(stream: IO, client: SocketAddr, shared: Arc<Shared>, slot: ConnectionSlot)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let config = shared.config();
    let idle = config.timeouts.client_idle;
    let limits = config.limits;
    let shutdown = shared.shutdown.clone();
    let service = service_fn(move |req| {
        let shared = shared.clone();
        let slot = slot.clone();
        async move { Ok::<_, Infallible>(route(req, client, shared, slot).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    if limits.max_headers != limits::HYPER_DEFAULT_MAX_HEADERS {
        builder.max_headers(limits.max_headers);
    }
    let conn = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%client, error = %e, "client connection ended with an error");
    }
}

/// A client that has not finished its TLS handshake with the listener in this time is dropped.
const LISTENER_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Serves one client connection that speaks TLS to the proxy itself (`HTTPS_PROXY=https://…`).
pub async fn serve_tls_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    client: SocketAddr,
    shared: Arc<Shared>,
    slot: ConnectionSlot,
) {
    match tokio::time::timeout(LISTENER_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => serve_connection(tls, client, shared, slot).await,
        Ok(Err(e)) => tracing::debug!(%client, error = %e, "TLS handshake with the proxy listener failed"),
        Err(_) => tracing::debug!(%client, "TLS handshake with the proxy listener timed out"),
    }
}

/// The listener's own TLS configuration, from PEM files.
///
/// # Errors
/// One line naming the file that is unreadable or holds no usable certificate or key.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in this file", cert.display()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: no usable private key: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    // The proxy protocol (CONNECT) is HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

async fn route(
    req: Request<Incoming>,
    client: SocketAddr,
    shared: Arc<Shared>,
    slot: ConnectionSlot,
) -> Response<Body> {
    let gate = shared.gate.load_full();
    if !client_auth::client_allowed(&gate.allow, client) {
        let record = AccessRecord::new(client, shared.listen_addr.to_string(), req.method().clone(), "");
        tracing::warn!(%client, "client address not in --allow-client; refused");
        return refuse(
            record,
            Outcome::Deny,
            ProxyError::Forbidden(format!("{} may not use this proxy", client.ip())),
        );
    }
    if let Some(res) = limits::request_line_refusal(&req, shared.config().limits.max_request_line) {
        let record = AccessRecord::new(client, shared.listen_addr.to_string(), req.method().clone(), "");
        record.emit(Outcome::Error, res.status().as_u16(), 0, true);
        return res;
    }
    let proxied = req.method() == Method::CONNECT || req.uri().scheme().is_some();
    if proxied && let Some(htpasswd) = &gate.htpasswd {
        let header = req.headers().get(http::header::PROXY_AUTHORIZATION);
        match htpasswd.check(header).await {
            AuthCheck::User(_) => {}
            check => {
                let target = req
                    .uri()
                    .authority()
                    .map(|a| a.as_str().to_string())
                    .unwrap_or_default();
                let record = AccessRecord::new(client, target, req.method().clone(), "");
                if let AuthCheck::Refused(user) = check {
                    tracing::warn!(%client, user = user.as_deref().unwrap_or(""), "proxy authentication failed");
                }
                let mut res = body::text(
                    http::StatusCode::PROXY_AUTHENTICATION_REQUIRED,
                    "regcache: proxy authentication required (HTTPS_PROXY=http://USER:PASSWORD@HOST:PORT)",
                );
                res.headers_mut().insert(
                    http::header::PROXY_AUTHENTICATE,
                    http::HeaderValue::from_static("Basic realm=\"regcache\""),
                );
                record.emit(Outcome::Deny, 407, 0, true);
                return res;
            }
        }
    }
    if req.method() == Method::CONNECT {
        return connect(req, client, shared, slot).await;
    }
    match (req.uri().scheme_str(), req.uri().authority()) {
        (Some(_), Some(_)) => absolute_form(req, client, shared).await,
        _ => local(&req, client, &shared).await,
    }
}

async fn local<B>(req: &Request<B>, client: SocketAddr, shared: &Shared) -> Response<Body> {
    let record = AccessRecord::new(
        client,
        shared.listen_addr.to_string(),
        req.method().clone(),
        req.uri().path(),
    );
    let res = if req.uri().path() == RELOAD_PATH {
        reload(req, client, shared).await
    } else if crate::admin::cache_api::is_cache_path(req.uri().path()) {
        crate::admin::cache_api::respond(req, client, shared.cache()).await
    } else {
        shared.local.respond(req)
    };
    record.emit(Outcome::Local, res.status().as_u16(), 0, true);
    res
}

/// `POST /_regcache/reload`: re-read the configuration, as SIGHUP does.
pub const RELOAD_PATH: &str = "/_regcache/reload";

async fn reload<B>(req: &Request<B>, client: SocketAddr, shared: &Shared) -> Response<Body> {
    use http::StatusCode;
    if !client.ip().is_loopback() {
        return body::text(StatusCode::FORBIDDEN, "regcache: reload is only accepted from loopback");
    }
    if req.method() != Method::POST {
        let mut res = body::text(StatusCode::METHOD_NOT_ALLOWED, "regcache: reload needs POST");
        res.headers_mut()
            .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
        return res;
    }
    match shared.reload().await {
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

/// Answers a request refused before it reached any upstream, and logs it.
fn refuse(record: AccessRecord, outcome: Outcome, err: ProxyError) -> Response<Body> {
    let res = err.into_response();
    record.emit(outcome, res.status().as_u16(), 0, true);
    res
}

async fn connect(
    req: Request<Incoming>,
    client: SocketAddr,
    shared: Arc<Shared>,
    slot: ConnectionSlot,
) -> Response<Body> {
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

    let config = shared.config();
    if config.is_registry(&target) {
        let origin = Origin {
            tls: true,
            host: target,
        };
        let tasks = shared.tasks.clone();
        tasks.spawn(async move {
            let _slot = slot;
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let config = shared.config();
                    mitm::serve(
                        upgraded,
                        client,
                        origin,
                        &shared.leaf_certs,
                        shared.gateway.clone(),
                        (config.timeouts.client_idle, config.limits),
                        shared.shutdown.clone(),
                    )
                    .await;
                }
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
    let upstream = match shared.upstream.dial(&target).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%client, host = %target, error = %e, "tunnel target unreachable");
            return refuse(record, Outcome::Error, e);
        }
    };
    let idle = config.timeouts.client_idle;
    shared.tasks.spawn(async move {
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
        crate::telemetry::metrics::global().tunnel_closed();
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
        return local(&req, client, &shared).await;
    }
    let config = shared.config();
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
    shared
        .gateway
        .handle(client, &origin, registry, req.map(body::boxed))
        .await
}

/// Why a CONNECT to a non-registry `target` is refused, if it is.
fn tunnel_refusal(config: &crate::config::settings::Config, target: &HostPort) -> Option<String> {
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
