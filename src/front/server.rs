//! The HTTP server settings every listener applies to its clients (timeouts and head limits,
//! HTTP/1.1 and HTTP/2 alike), and server TLS from PEM files.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::front::limits::{ConnectionLimiter, ConnectionSlot};
use crate::telemetry::TlsFailure;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

use crate::config::{HYPER_DEFAULT_MAX_HEADERS, Limits};

/// Accepts connections on `listener` until `shutdown` resolves, each under `limiter` (one
/// over the limit is answered 503, in TLS when `tls` says the listener speaks it) and handed
/// to `admit` with its slot. Accept errors (EMFILE and friends) back off instead of spinning.
pub async fn accept_until(
    listener: &TcpListener,
    limiter: &ConnectionLimiter,
    tls: impl Fn() -> bool,
    shutdown: impl Future<Output = ()>,
    mut admit: impl FnMut(TcpStream, SocketAddr, ConnectionSlot),
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    match limiter.try_admit() {
                        Some(slot) => admit(stream, peer, slot),
                        None => limiter.refuse(stream, peer, tls()),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// The smallest buffer hyper's HTTP/1.1 server accepts.
const MIN_BUF: usize = 8192;

/// An HTTP/1.1 + HTTP/2 server for decrypted client connections: a client idle longer than
/// `idle` while sending a head is dropped, and heads are bounded by `limits`.
pub fn http_server(limits: Limits, idle: Duration) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        // hyper-util's auto builder has no `max_header_size`; the read buffer holds a request
        // head until it is parsed, so its bound is the head's (hyper refuses less than 8 KiB).
        .max_buf_size(limits.max_header_bytes.max(MIN_BUF))
        .keep_alive(true);
    if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        builder.http1().max_headers(limits.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// A server TLS configuration from PEM files (a chain, leaf first, and its key), offering
/// `alpn` in order.
///
/// # Errors
/// One line naming the file that is unreadable or holds no usable certificate or key.
pub fn tls_from_files(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, String> {
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
    tls_from_chain(certs, key_der, alpn).map_err(|e| format!("{}: {e}", cert.display()))
}

/// A server configuration presenting `chain` (leaf first) with `key`, offering `alpn`.
///
/// # Errors
/// If the key is unusable or does not pair with the leaf.
pub fn tls_from_chain(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Why a client's TLS handshake failed: a client that rejects the certificate says so with an
/// alert ([`TlsFailure::Rejected`], a trust problem); one that merely went away (EOF, reset)
/// is [`TlsFailure::Aborted`].
pub fn handshake_failure(e: &std::io::Error) -> TlsFailure {
    let alert = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|r| matches!(r, rustls::Error::AlertReceived(_)));
    if alert {
        TlsFailure::Rejected
    } else {
        TlsFailure::Aborted
    }
}
