//! Wiring: builds every component from a [`Config`], binds the listener and runs the accept loop.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::endpoints::LocalEndpoints;
use crate::ca::authority::CertificateAuthority;
use crate::cache::eviction::Evictor;
use crate::cache::serve::RegistryCache;
use crate::config::file::{ConfigError, ConfigSource};
use crate::config::settings::Config;
use crate::proxy::client_auth::{ClientGate, HtpasswdError};
use crate::proxy::gateway::Gateway;
use crate::proxy::leaf_certs::LeafCertCache;
use crate::proxy::limits::ConnectionLimiter;
use crate::proxy::listener;
use crate::store::local::ContentStore;
use crate::upstream::auth::UpstreamAuth;
use crate::upstream::client::{UpstreamClient, UpstreamSetupError};

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
    /// The htpasswd file is unusable.
    #[error(transparent)]
    Htpasswd(#[from] HtpasswdError),
    /// The listener's TLS certificate or key is unusable.
    #[error("{0}")]
    ListenerTls(String),
}

/// Why a reload was refused (the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Its upstream TLS settings are unusable.
    #[error(transparent)]
    Upstream(#[from] UpstreamSetupError),
    /// Its htpasswd file is unusable.
    #[error(transparent)]
    Htpasswd(#[from] HtpasswdError),
    /// regcache was started without a configuration source (tests, embedding).
    #[error("no configuration source to reload from")]
    NoSource,
}

/// What every connection needs.
pub struct Shared {
    /// The running configuration; replaced whole on a reload.
    config: Arc<ArcSwap<Config>>,
    /// Where the configuration is read from again on a reload.
    source: Option<ConfigSource>,
    /// Serialises reloads (SIGHUP and the admin endpoint may race).
    reloading: tokio::sync::Mutex<()>,
    /// The cache (its tag policy follows reloads).
    cache: Arc<RegistryCache>,
    /// regcache's upstream accounts; replaced on a reload.
    auth: Arc<UpstreamAuth>,
    /// Keeps the store within its budget (which a reload may change).
    evictor: Arc<Evictor>,
    /// Who may use the proxy; replaced on a reload.
    pub gate: ArcSwap<ClientGate>,
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
    /// `/`, `/healthz`, `/ca.crt`.
    pub local: LocalEndpoints,
    /// The bound address (to recognise requests for regcache itself).
    pub listen_addr: SocketAddr,
}

/// A built proxy, bound and ready to run.
pub struct App {
    listener: TcpListener,
    listener_tls: Option<tokio_rustls::TlsAcceptor>,
    limiter: ConnectionLimiter,
    shared: Arc<Shared>,
}

impl App {
    /// Builds the components and binds `config.listen`.
    ///
    /// # Errors
    /// If the data directory, upstream CA bundles or listen address are unusable.
    pub async fn build(
        config: Config,
        ca: Arc<CertificateAuthority>,
        source: Option<ConfigSource>,
    ) -> Result<Self, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let gate = ClientGate::build(&config.access)?;
        let listener_tls = match &config.listener_tls {
            Some((cert, key)) => Some(listener::tls_acceptor(cert, key).map_err(StartError::ListenerTls)?),
            None => None,
        };
        let upstream = UpstreamClient::new(&config)?;
        let store = ContentStore::new(config.data_dir.join("cache"));
        let swept = store.sweep_temporary_files();
        if swept > 0 {
            tracing::info!(files = swept, "removed partial downloads left by an earlier run");
        }
        let tasks = TaskTracker::new();
        crate::telemetry::metrics::spawn_store_scan(store.clone());
        let auth = Arc::new(UpstreamAuth::new(config.credentials.clone()));
        let evictor = Evictor::new(store.clone(), config.budget);
        tokio::spawn(evictor.clone().run());
        let cache = Arc::new(RegistryCache::new(
            store,
            upstream.clone(),
            config.cache.clone(),
            config.timeouts.upstream_response,
            tasks.clone(),
            auth.clone(),
            evictor.clone(),
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
        let limiter = ConnectionLimiter::new(config.limits.max_connections);
        let config = Arc::new(ArcSwap::from_pointee(config));
        let shared = Arc::new(Shared {
            leaf_certs,
            gateway: Gateway::new(upstream.clone(), cache.clone(), config.clone()),
            upstream,
            local: LocalEndpoints::new(ca.cert_pem().to_string()),
            listen_addr,
            config,
            source,
            reloading: tokio::sync::Mutex::new(()),
            cache,
            gate: ArcSwap::from_pointee(gate),
            auth,
            evictor,
            shutdown: CancellationToken::new(),
            tasks,
        });
        Ok(Self {
            listener,
            listener_tls,
            limiter,
            shared,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.listen_addr
    }

    /// A handle to reload the configuration while [`App::run`] runs.
    pub fn reloader(&self) -> Reloader {
        Reloader(self.shared.clone())
    }

    /// Accepts connections until `shutdown` resolves, then drains: stops accepting, lets
    /// in-flight responses and downloads finish for up to the configured grace period, and
    /// returns. Partial downloads never become cache entries (they are committed only when
    /// verified, and their temporary files are swept at the next start).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let Some(slot) = self.limiter.try_admit() else {
                            self.limiter.refuse(stream, peer, self.listener_tls.is_some());
                            continue;
                        };
                        match &self.listener_tls {
                            None => {
                                self.shared.tasks.spawn(listener::serve_connection(stream, peer, self.shared.clone(), slot));
                            }
                            Some(tls) => {
                                self.shared.tasks.spawn(listener::serve_tls_connection(tls.clone(), stream, peer, self.shared.clone(), slot));
                            }
                        }
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        }
        drop(self.listener);
        let grace = self.shared.config().shutdown_grace;
        let shared = self.shared;
        shared.shutdown.cancel();
        shared.tasks.close();
        let busy = shared.tasks.len();
        if busy > 0 {
            tracing::info!(
                tasks = busy,
                grace_s = grace.as_secs(),
                "draining connections and downloads"
            );
        }
        match tokio::time::timeout(grace, shared.tasks.wait()).await {
            Ok(()) => tracing::info!("drained"),
            Err(_) => tracing::warn!(
                tasks = shared.tasks.len(),
                "shutdown grace period over; cutting the remaining connections and downloads"
            ),
        }
    }
}

/// Reloads the configuration of a running [`App`].
#[derive(Clone)]
pub struct Reloader(Arc<Shared>);

impl Reloader {
    /// Re-reads the configuration source and applies it; see [`Shared::reload`].
    ///
    /// # Errors
    /// If the new configuration is invalid: the running one stays.
    pub async fn reload(&self) -> Result<Vec<String>, ReloadError> {
        self.0.reload().await
    }
}

impl Shared {
    /// The running configuration (a snapshot: a reload does not change it under the caller).
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The cache (for the admin API).
    pub fn cache(&self) -> &RegistryCache {
        &self.cache
    }

    /// Re-reads the configuration source and applies what can change while running:
    /// registries, address overrides, upstream TLS, credentials, tag policies, timeouts for new
    /// connections, push and non-registry policies. Connections and downloads under way are
    /// untouched. Returns one line per change; settings that need a restart are reported too.
    ///
    /// # Errors
    /// If the new configuration is invalid: nothing changes.
    pub async fn reload(&self) -> Result<Vec<String>, ReloadError> {
        let _one_at_a_time = self.reloading.lock().await;
        let source = self.source.as_ref().ok_or(ReloadError::NoSource)?;
        let loaded = source.load()?;
        let new = loaded.config;
        let old = self.config();
        // Build everything that can fail before changing anything.
        let gate = ClientGate::build(&new.access)?;
        self.upstream.reconfigure(&new)?;
        self.gate.store(Arc::new(gate));
        self.auth.set_accounts(new.credentials.clone());
        self.evictor.set_budget(new.budget);
        self.cache.set_policy(new.cache.clone());
        let hosts: Vec<String> = new
            .registries
            .iter()
            .filter_map(|p| p.exact_host().map(str::to_string))
            .collect();
        self.leaf_certs.prewarm(hosts.iter().map(String::as_str)).await;
        let changes = describe_changes(&old, &new);
        self.config.store(Arc::new(new));
        Ok(changes)
    }
}

/// What differs between two configurations, one line each.
fn describe_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let names = |c: &Config| c.registries.iter().map(ToString::to_string).collect::<Vec<_>>();
    let (a, b) = (names(old), names(new));
    let added: Vec<_> = b.iter().filter(|n| !a.contains(n)).cloned().collect();
    let removed: Vec<_> = a.iter().filter(|n| !b.contains(n)).cloned().collect();
    if !added.is_empty() {
        out.push(format!("registries added: {}", added.join(", ")));
    }
    if !removed.is_empty() {
        out.push(format!("registries removed: {}", removed.join(", ")));
    }
    if old.connect_to != new.connect_to {
        out.push(format!("address overrides: {} now", new.connect_to.len()));
    }
    if old.access != new.access {
        out.push("client access (htpasswd, allowlist, tunnel rules) reloaded".into());
    }
    if old.credentials.len() != new.credentials.len() {
        out.push(format!("upstream credentials: {} now", new.credentials.len()));
    }
    let restart = [
        ("listen", old.listen != new.listen),
        ("data_dir", old.data_dir != new.data_dir),
        ("ca_dir", old.ca_dir != new.ca_dir),
        ("log_format", old.log_format != new.log_format),
        (
            "limits.max_connections",
            old.limits.max_connections != new.limits.max_connections,
        ),
    ];
    for (key, changed) in restart {
        if changed {
            out.push(format!("{key} changed: takes effect at the next restart"));
        }
    }
    out
}
