//! Wiring: builds every component from a [`Config`], binds the listener and runs the accept loop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::admin::LocalEndpoints;
use crate::ca::CertificateAuthority;
use crate::cache::RegistryCache;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::leaf_certs::LeafCertCache;
use crate::listener;
use crate::store::ContentStore;
use crate::upstream::{UpstreamClient, UpstreamSetupError};

/// Errors starting the proxy. Each names what it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The data directory could not be created.
    #[error("{path}: cannot create data directory: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The upstream client could not be built.
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
}

/// What every connection needs, shared read-only.
pub struct Shared {
    /// The running configuration.
    pub config: Config,
    /// Per-host server certificates.
    pub leaf_certs: LeafCertCache,
    /// Request handling for origins.
    pub gateway: Gateway,
    /// Dialling for tunnels.
    pub upstream: UpstreamClient,
    /// `/`, `/healthz`, `/ca.crt`.
    pub local: LocalEndpoints,
    /// The bound address (to recognise requests for regcache itself).
    pub listen_addr: SocketAddr,
}

/// A built proxy, bound and ready to run.
pub struct App {
    listener: TcpListener,
    shared: Arc<Shared>,
}

impl App {
    /// Builds the components and binds `config.listen`.
    ///
    /// # Errors
    /// If the data directory, upstream CA bundles or listen address are unusable.
    pub async fn build(config: Config, ca: Arc<CertificateAuthority>) -> Result<Self, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let upstream = UpstreamClient::new(&config)?;
        let store = ContentStore::new(config.data_dir.join("cache"));
        let swept = store.sweep_temporary_files();
        if swept > 0 {
            tracing::info!(files = swept, "removed partial downloads left by an earlier run");
        }
        crate::metrics::spawn_store_scan(store.clone());
        let cache = Arc::new(RegistryCache::new(
            store,
            upstream.clone(),
            config.cache.clone(),
            config.timeouts.upstream_response,
        ));
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.listen,
                source,
            })?;
        let listen_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let leaf_certs = LeafCertCache::new(ca.clone());
        leaf_certs
            .prewarm(config.registries.iter().filter_map(|p| p.exact_host()))
            .await;
        let shared = Arc::new(Shared {
            leaf_certs,
            gateway: Gateway::new(upstream.clone(), cache),
            upstream,
            local: LocalEndpoints::new(ca.cert_pem().to_string()),
            listen_addr,
            config,
        });
        Ok(Self { listener, shared })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.listen_addr
    }

    /// Accepts connections until `shutdown` resolves.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        tokio::spawn(listener::serve_connection(stream, peer, self.shared.clone()));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
}
