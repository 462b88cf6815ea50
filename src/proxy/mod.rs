//! The forward proxy that clients reach through `HTTPS_PROXY`: accepting connections, deciding
//! per CONNECT whether to intercept, tunnel or refuse, terminating TLS for intercepted registry
//! hosts with a leaf signed by regcache's CA, and handing the decrypted requests to the cache.
//!
//! Owns: the listener and its accept loop, the CONNECT decision (who may use the proxy, where
//! a tunnel may go), byte-for-byte tunnels, TLS termination for intercepted hosts, plain
//! `http://` forwarding. What it shares with other listeners (htpasswd, leaf certificates,
//! limits, the gateway into the cache) is `front`'s.
//!
//! Must not: read or write the store, or speak the registry protocol itself (the cache does);
//! answer regcache's own endpoints (it hands them to a [`LocalService`](crate::front::LocalService) that `app` wires in).
//!
//! May import: `front`, `upstream`, `registry`, `telemetry`, `config`, `body`, `error`.

mod connect;
mod forward;
mod listener;
mod mitm;
mod tunnel;

use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Request, Response};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::Body;
use crate::config::Config;
use crate::error::ProxyError;
use crate::front::{ClientGate, Gateway, LeafCertCache, LocalService};
use crate::telemetry::{AccessRecord, Metrics, Outcome};
use crate::upstream::UpstreamClient;

pub use listener::{ListenError, ProxyListener};

/// What every client connection shares.
pub struct Proxy {
    /// The running configuration; replaced whole on a reload.
    pub config: Arc<ArcSwap<Config>>,
    /// Who may use the proxy; replaced on a reload.
    pub gate: Arc<ArcSwap<ClientGate>>,
    /// Cancelled when a graceful shutdown begins.
    pub shutdown: CancellationToken,
    /// Connection and download tasks, awaited by a graceful shutdown.
    pub tasks: TaskTracker,
    /// Per-host server certificates.
    pub leaf_certs: LeafCertCache,
    /// Request handling for origins.
    pub gateway: Gateway,
    /// Dialling for tunnels.
    pub upstream: UpstreamClient,
    /// Regcache's own endpoints.
    pub local: Arc<dyn LocalService>,
    /// The bound address (to recognise requests for regcache itself).
    pub listen_addr: SocketAddr,
    /// Request, tunnel and TLS handshake counters.
    pub metrics: Arc<Metrics>,
}

impl Proxy {
    /// The running configuration (a snapshot: a reload does not change it under the caller).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }
}

/// A request for regcache itself: answered by the local service, logged as `local`.
async fn local<B>(req: &Request<B>, client: SocketAddr, proxy: &Proxy) -> Response<Body> {
    let record = AccessRecord::new(
        &proxy.metrics,
        client,
        proxy.listen_addr.to_string(),
        req.method().clone(),
        req.uri().path(),
    );
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.headers_mut() = req.headers().clone();
    let res = proxy.local.respond(head, client).await;
    record.emit(Outcome::Local, res.status().as_u16(), 0, true);
    res
}

/// Answers a request refused before it reached any upstream, and logs it.
fn refuse(record: AccessRecord, outcome: Outcome, err: ProxyError) -> Response<Body> {
    let res = err.into_response();
    record.emit(outcome, res.status().as_u16(), 0, true);
    res
}
