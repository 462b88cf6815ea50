//! The proxy's front door: the accept loop under the connection limit, then one HTTP/1.1
//! connection per client, where each request is a CONNECT (see [`super::connect`]), an
//! absolute-form `http://` request to forward (see [`super::forward`]), or a request for
//! regcache itself (handed to the [`LocalService`](crate::front::LocalService)).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use std::future::Future;

use tokio::net::TcpListener;

use crate::body::{self, Body};
use crate::config::Config;
use crate::error::ProxyError;
use crate::front::limits::{self, ConnectionLimiter, ConnectionSlot};
use crate::front::{AuthCheck, client_allowed, server};
use crate::proxy::connect::connect;
use crate::proxy::forward::absolute_form;
use crate::proxy::{Proxy, local, refuse};
use crate::telemetry::{AccessRecord, Outcome};

/// The bound proxy listener: the socket, its TLS (when `--tls-cert` is given) and the
/// connection limit.
pub struct ProxyListener {
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limiter: ConnectionLimiter,
    addr: SocketAddr,
}

impl ProxyListener {
    /// Binds `config.listen` (and loads the listener's certificate, if any).
    ///
    /// # Errors
    /// One line naming the address that cannot be bound, or the certificate file that is
    /// unusable.
    pub async fn bind(config: &Config) -> Result<Self, ListenError> {
        let tls = match &config.listener_tls {
            Some((cert, key)) => Some(tls_acceptor(cert, key).map_err(ListenError::Tls)?),
            None => None,
        };
        let bind_err = |source| ListenError::Bind {
            addr: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen).await.map_err(bind_err)?;
        let addr = listener.local_addr().map_err(bind_err)?;
        Ok(Self {
            listener,
            tls,
            limiter: ConnectionLimiter::new(config.limits.max_connections),
            addr,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepts connections until `shutdown` resolves, then stops accepting (the socket is
    /// closed); connections under way go on in `proxy.tasks`.
    pub async fn run(self, proxy: Arc<Proxy>, shutdown: impl Future<Output = ()>) {
        let tls = self.tls.clone();
        server::accept_until(
            &self.listener,
            &self.limiter,
            || tls.is_some(),
            shutdown,
            |stream, peer, slot| match &tls {
                None => {
                    proxy.tasks.spawn(serve_connection(stream, peer, proxy.clone(), slot));
                }
                Some(acceptor) => {
                    proxy.tasks.spawn(serve_tls_connection(
                        acceptor.clone(),
                        stream,
                        peer,
                        proxy.clone(),
                        slot,
                    ));
                }
            },
        )
        .await;
    }
}

/// Why the proxy listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The listener's TLS certificate or key is unusable.
    #[error("{0}")]
    Tls(String),
}

/// Serves one accepted client connection until it closes. `slot` is its place under the
/// connection limit; tunnels opened on it keep a copy until they close.
///
/// On a graceful shutdown the connection finishes the response under way, then closes.
async fn serve_connection<IO>(stream: IO, client: SocketAddr, proxy: Arc<Proxy>, slot: ConnectionSlot)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let config = proxy.config();
    let idle = config.timeouts.client_idle;
    let limits = config.limits;
    let shutdown = proxy.shutdown.clone();
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        let slot = slot.clone();
        async move { Ok::<_, Infallible>(route(req, client, proxy, slot).await) }
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
async fn serve_tls_connection(
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    client: SocketAddr,
    proxy: Arc<Proxy>,
    slot: ConnectionSlot,
) {
    match tokio::time::timeout(LISTENER_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => serve_connection(tls, client, proxy, slot).await,
        Ok(Err(e)) => tracing::debug!(%client, error = %e, "TLS handshake with the proxy listener failed"),
        Err(_) => tracing::debug!(%client, "TLS handshake with the proxy listener timed out"),
    }
}

/// The listener's own TLS, from PEM files. The proxy protocol (CONNECT) is HTTP/1.1.
fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    server::tls_from_files(cert, key, &[b"http/1.1"]).map(tokio_rustls::TlsAcceptor::from)
}

async fn route(req: Request<Incoming>, client: SocketAddr, proxy: Arc<Proxy>, slot: ConnectionSlot) -> Response<Body> {
    let gate = proxy.gate.load_full();
    if !client_allowed(&gate.allow, client) {
        let record = AccessRecord::new(
            &proxy.metrics,
            client,
            proxy.listen_addr.to_string(),
            req.method().clone(),
            "",
        );
        tracing::warn!(%client, "client address not in --allow-client; refused");
        return refuse(
            record,
            Outcome::Deny,
            ProxyError::Forbidden(format!("{} may not use this proxy", client.ip())),
        );
    }
    if let Some(res) = limits::request_line_refusal(&req, proxy.config().limits.max_request_line) {
        let record = AccessRecord::new(
            &proxy.metrics,
            client,
            proxy.listen_addr.to_string(),
            req.method().clone(),
            "",
        );
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
                let record = AccessRecord::new(&proxy.metrics, client, target, req.method().clone(), "");
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
        return connect(req, client, proxy, slot).await;
    }
    match (req.uri().scheme_str(), req.uri().authority()) {
        (Some(_), Some(_)) => absolute_form(req, client, proxy).await,
        _ => local(&req, client, &proxy).await,
    }
}
