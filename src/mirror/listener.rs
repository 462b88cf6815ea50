//! The mirror's accept loop and connections: TLS chosen per connection (a leaf from
//! regcache's CA for the name the client asked for, the certificate from files or from the
//! ACME CA, an ACME validation's proof, or none),
//! then HTTP/1.1 or HTTP/2 under the same limits as every listener.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use crate::body;
use crate::config::{Config, MirrorTls};
use crate::front::limits::{ConnectionLimiter, ConnectionSlot};
use crate::front::server;
use crate::mirror::Mirror;
use crate::mirror::acme::ACME_TLS_ALPN;
use crate::telemetry::TlsFailure;

/// A client that has not finished its TLS handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// The bound mirror listener.
pub struct MirrorListener {
    listener: TcpListener,
    limiter: ConnectionLimiter,
    addr: SocketAddr,
}

impl MirrorListener {
    /// Binds `config.mirror.listen` (`Ok(None)` when the mirror is off).
    ///
    /// # Errors
    /// One line naming the address that cannot be bound.
    pub async fn bind(config: &Config) -> Result<Option<Self>, std::io::Error> {
        let Some(m) = &config.mirror else {
            return Ok(None);
        };
        let named =
            |e: std::io::Error| std::io::Error::new(e.kind(), format!("cannot listen on {} (mirror): {e}", m.listen));
        let listener = TcpListener::bind(m.listen).await.map_err(named)?;
        let addr = listener.local_addr().map_err(named)?;
        Ok(Some(Self {
            listener,
            limiter: ConnectionLimiter::new(config.limits.max_connections),
            addr,
        }))
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepts connections until `shutdown` resolves; connections under way go on in
    /// `mirror.tasks`.
    pub async fn run(self, mirror: Arc<Mirror>, shutdown: impl Future<Output = ()>) {
        let tls = || {
            mirror
                .config
                .load()
                .mirror
                .as_ref()
                .is_some_and(|m| m.tls != MirrorTls::Plain)
        };
        server::accept_until(&self.listener, &self.limiter, tls, shutdown, |stream, peer, slot| {
            mirror.tasks.spawn(connection(stream, peer, mirror.clone(), slot));
        })
        .await;
    }
}

/// One client connection: its TLS, then its requests.
async fn connection(stream: TcpStream, client: SocketAddr, mirror: Arc<Mirror>, slot: ConnectionSlot) {
    let Some(settings) = mirror.config.load().mirror.clone() else {
        return;
    };
    let config = match &settings.tls {
        MirrorTls::Plain => return serve(stream, client, mirror, slot).await,
        MirrorTls::Files { .. } => match mirror.files_tls.load_full() {
            Some(c) => c,
            None => {
                tracing::error!(%client, "the mirror's certificate files are not loaded; connection closed");
                mirror.metrics.tls_handshake_failed(TlsFailure::Certificate);
                return;
            }
        },
        MirrorTls::Minted(_) | MirrorTls::Acme(_) => {
            return by_client_hello(stream, client, mirror, slot, &settings.tls).await;
        }
    };
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(tls)) => {
            mirror.metrics.tls_handshake_ok();
            serve(tls, client, mirror, slot).await;
        }
        Ok(Err(e)) => handshake_failed(&mirror, client, &e),
        Err(_) => mirror.metrics.tls_handshake_failed(TlsFailure::Timeout),
    }
}

/// TLS whose certificate depends on the ClientHello: the name asked for (a leaf minted for
/// it), or an ACME validation (`acme-tls/1`, answered with the proof for that name).
async fn by_client_hello(
    stream: TcpStream,
    client: SocketAddr,
    mirror: Arc<Mirror>,
    slot: ConnectionSlot,
    tls: &MirrorTls,
) {
    let start = rustls::server::Acceptor::default();
    let lazy = tokio_rustls::LazyConfigAcceptor::new(start, stream);
    let handshake = match tokio::time::timeout(HANDSHAKE_TIMEOUT, lazy).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::debug!(%client, error = %e, "mirror client sent no usable TLS hello");
            mirror.metrics.tls_handshake_failed(TlsFailure::Aborted);
            return;
        }
        Err(_) => {
            mirror.metrics.tls_handshake_failed(TlsFailure::Timeout);
            return;
        }
    };
    let hello = handshake.client_hello();
    let asked = hello.server_name().map(str::to_ascii_lowercase);
    let validation = hello
        .alpn()
        .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN));
    let config = match tls {
        MirrorTls::Acme(_) => {
            let Some(acme) = mirror.acme.as_ref() else {
                tracing::error!(
                    "the mirror's ACME settings were added by a reload: they take effect at the next restart"
                );
                mirror.metrics.tls_handshake_failed(TlsFailure::Certificate);
                return;
            };
            if validation {
                // RFC 8737 §3: the validator completes the handshake, checks the certificate
                // and closes; nothing else is served on such a connection.
                let Some(proof) = asked.as_deref().and_then(|n| acme.challenge_config(n)) else {
                    tracing::debug!(%client, name = asked.as_deref().unwrap_or(""), "acme-tls/1 hello for no open validation");
                    return;
                };
                if let Ok(Ok(mut tls)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake.into_stream(proof)).await {
                    tracing::info!(%client, name = asked.as_deref().unwrap_or(""), "answered an ACME tls-alpn-01 validation");
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut tls).await;
                }
                return;
            }
            match acme.server_config() {
                Some(c) => c,
                None => {
                    tracing::warn!(%client, "the mirror has no certificate from the ACME CA yet; connection closed");
                    mirror.metrics.tls_handshake_failed(TlsFailure::Certificate);
                    return;
                }
            }
        }
        MirrorTls::Minted(names) => {
            // The name the client asked for, if it is one of the mirror's; else the first
            // (a client that dialled an IP sends no SNI).
            let name = asked.filter(|n| names.contains(n)).unwrap_or_else(|| names[0].clone());
            match mirror.leaf_certs.server_config(&name).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(name, error = %e, "cannot mint the mirror's certificate");
                    mirror.metrics.tls_handshake_failed(TlsFailure::Certificate);
                    return;
                }
            }
        }
        MirrorTls::Files { .. } | MirrorTls::Plain => return,
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake.into_stream(config)).await {
        Ok(Ok(tls)) => {
            mirror.metrics.tls_handshake_ok();
            serve(tls, client, mirror, slot).await;
        }
        Ok(Err(e)) => handshake_failed(&mirror, client, &e),
        Err(_) => mirror.metrics.tls_handshake_failed(TlsFailure::Timeout),
    }
}

fn handshake_failed(mirror: &Mirror, client: SocketAddr, e: &std::io::Error) {
    let reason = server::handshake_failure(e);
    mirror.metrics.tls_handshake_failed(reason);
    if reason == TlsFailure::Rejected {
        tracing::warn!(%client, error = %e, "client rejected the mirror's certificate (does it trust its CA?)");
    } else {
        tracing::debug!(%client, error = %e, "client left during the mirror's TLS handshake");
    }
}

/// Serves a connection's requests until it closes (or, on a graceful shutdown, until the
/// responses under way are done).
async fn serve<IO>(io: IO, client: SocketAddr, mirror: Arc<Mirror>, _slot: ConnectionSlot)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let running = mirror.config.load_full();
    let builder = server::http_server(running.limits, running.timeouts.client_idle);
    let shutdown = mirror.shutdown.clone();
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let mirror = mirror.clone();
        async move { Ok::<_, Infallible>(mirror.respond(client, req.map(body::boxed)).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%client, error = %e, "mirror connection ended with an error");
    }
}
