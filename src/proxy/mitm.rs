//! Intercepted tunnels: TLS terminated with a leaf minted for the CONNECT host, then the
//! decrypted HTTP/1.1 or HTTP/2 requests handed to the [`Gateway`](crate::front::Gateway).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_rustls::TlsAcceptor;

use crate::body;
use crate::front::{limits, server};
use crate::proxy::Proxy;
use crate::telemetry::{Listener, TlsFailure};
use crate::upstream::Origin;

/// A client that has not finished its TLS handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);

/// Serves one intercepted tunnel to completion, its requests bounded by the running
/// configuration's idle timeout and limits.
pub async fn serve(upgraded: Upgraded, client: SocketAddr, origin: Origin, proxy: &Proxy) {
    let start = Instant::now();
    let running = proxy.config();
    let (idle, limits) = (running.timeouts.client_idle, running.limits);
    let metrics = &proxy.metrics;
    let gateway = proxy.gateway.clone();
    let config = match proxy.leaf_certs.server_config(&origin.host.host).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(host = %origin.host, error = %e, "cannot mint a certificate for intercepted host");
            metrics.tls_handshake_failed(TlsFailure::Certificate);
            return;
        }
    };
    let accept = TlsAcceptor::from(config).accept(TokioIo::new(upgraded));
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(tls)) => {
            metrics.tls_handshake_ok();
            tls
        }
        Ok(Err(e)) => {
            let reason = server::handshake_failure(&e);
            metrics.tls_handshake_failed(reason);
            if reason == TlsFailure::Rejected {
                tracing::warn!(%client, host = %origin.host, error = %e, "client rejected regcache's certificate (does it trust the regcache CA?)");
            } else {
                tracing::debug!(%client, host = %origin.host, error = %e, "client left during the TLS handshake");
            }
            return;
        }
        Err(_) => {
            tracing::warn!(%client, host = %origin.host, "TLS handshake with client timed out");
            metrics.tls_handshake_failed(TlsFailure::Timeout);
            return;
        }
    };
    let alpn = tls
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());

    let requests = Arc::new(AtomicU64::new(0));
    let counter = requests.clone();
    let origin = Arc::new(origin);
    let origin_for_service = origin.clone();
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        counter.fetch_add(1, Ordering::Relaxed);
        let gateway = gateway.clone();
        let origin = origin_for_service.clone();
        async move {
            if let Some(res) = limits::request_line_refusal(&req, limits.max_request_line) {
                return Ok::<_, Infallible>(res);
            }
            Ok::<_, Infallible>(
                gateway
                    .handle(client, Listener::Proxy, &origin, true, req.map(body::boxed))
                    .await,
            )
        }
    });
    let builder = server::http_server(limits, idle);
    // On a graceful shutdown: finish the responses under way (h2: all streams), then close.
    let conn = builder.serve_connection(TokioIo::new(tls), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = proxy.shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = &result {
        tracing::debug!(%client, host = %origin.host, error = %e, "intercepted connection ended with an error");
    }
    tracing::info!(
        target: "regcache::access",
        %client,
        host = %origin.host,
        method = "CONNECT",
        cache = "intercept",
        status = 200u16,
        alpn = alpn.as_deref().unwrap_or("none"),
        requests = requests.load(Ordering::Relaxed),
        ms = start.elapsed().as_millis() as u64,
        "tunnel closed"
    );
}
