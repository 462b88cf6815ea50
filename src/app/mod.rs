//! Wiring: every component built from a [`Config`] and handed what it needs (the one place
//! that knows them all), the listeners bound, run until told to stop, then drained; and the
//! reload that applies a new configuration to the running parts.
//!
//! Owns: [`App`], [`Reloader`].
//!
//! Must not: hold logic of its own beyond construction, reload and shutdown order.
//!
//! May import: `admin`, `proxy`, `mirror`, `front`, `cache`, `store`, `upstream`, `ca`,
//! `telemetry`, `config`, `body` (every folder but `cli`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{Request, Response};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{AdminService, Reload, StoreCheck};
use crate::body::Body;
use crate::ca::CertificateAuthority;
use crate::cache::{CacheParts, Evictor, RegistryCache};
use crate::config::{Config, ConfigError, ConfigSource};
use crate::front::{ClientGate, Gateway, HtpasswdError, LeafCertCache, LocalService};
use crate::mirror::{Mirror, MirrorListener, MirrorSetupError};
use crate::proxy::{Proxy, ProxyListener};
use crate::store::Store;
use crate::telemetry::Metrics;
use crate::upstream::{PeerClient, UpstreamAuth, UpstreamClient, UpstreamSetupError};

/// Errors starting the proxy. Each names what it concerns.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listener could not be bound, or its TLS files are unusable.
    #[error(transparent)]
    Listen(#[from] crate::proxy::ListenError),
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
    /// The mirror's address cannot be bound.
    #[error("{0}")]
    MirrorListen(std::io::Error),
    /// The mirror's login or certificate files are unusable.
    #[error(transparent)]
    Mirror(#[from] MirrorSetupError),
    /// The store's settings do not make a client.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
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
    /// The mirror's new login or certificate files are unusable.
    #[error(transparent)]
    Mirror(#[from] MirrorSetupError),
    /// regcache was started without a configuration source (tests, embedding).
    #[error("no configuration source to reload from")]
    NoSource,
}

/// A built proxy, bound and ready to run.
pub struct App {
    /// `None` for a mirror-only instance (`proxy_listener = false`).
    listener: Option<ProxyListener>,
    proxy: Arc<Proxy>,
    mirror: Option<(MirrorListener, Arc<Mirror>)>,
    reloader: Reloader,
}

impl App {
    /// Builds the components and binds `config.listen`.
    ///
    /// # Errors
    /// If the data directory, upstream CA bundles, htpasswd file or listen address are
    /// unusable.
    pub async fn build(
        config: Config,
        ca: Arc<CertificateAuthority>,
        source: Option<ConfigSource>,
    ) -> Result<Self, StartError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let metrics = Arc::new(Metrics::new());
        let gate = Arc::new(ArcSwap::from_pointee(ClientGate::build(&config.access)?));
        let upstream = UpstreamClient::new(&config, metrics.clone())?;
        let store = crate::cache::open_store(
            &config.store,
            &config.data_dir,
            Arc::new(StoreRequests(metrics.clone())),
        )?;
        let swept = store.spool_files().sweep_all();
        if swept > 0 {
            tracing::info!(files = swept, "removed partial downloads left by an earlier run");
        }
        spawn_usage_scan(store.clone(), metrics.clone());
        let tasks = TaskTracker::new();
        let auth = Arc::new(UpstreamAuth::new(config.credentials.clone()));
        let evictor = Evictor::new(store.clone(), config.budget, metrics.clone());
        tokio::spawn(evictor.clone().run());
        let cache = Arc::new(RegistryCache::new(
            CacheParts {
                store,
                upstream: upstream.clone(),
                auth: auth.clone(),
                evictor: evictor.clone(),
                tasks: tasks.clone(),
                metrics: metrics.clone(),
                peers: PeerClient::from_store(&config.store),
            },
            config.cache.clone(),
            config.timeouts.upstream_response,
        ));
        let listener = match config.proxy_listener {
            true => Some(ProxyListener::bind(&config).await?),
            false => None,
        };
        let mirror_listener = MirrorListener::bind(&config).await.map_err(StartError::MirrorListen)?;
        let leaf_certs = LeafCertCache::new(ca.clone());
        leaf_certs
            .prewarm(config.registries.iter().filter_map(|p| p.exact_host()))
            .await;
        if let Some(crate::config::MirrorTls::Minted(names)) = config.mirror.as_ref().map(|m| &m.tls) {
            leaf_certs.prewarm(names.iter().map(String::as_str)).await;
        }
        let config = Arc::new(ArcSwap::from_pointee(config));
        let shutdown = CancellationToken::new();
        let gateway = Gateway::new(upstream.clone(), cache.clone(), config.clone(), metrics.clone());
        let mirror = match mirror_listener {
            Some(l) => {
                let m = Mirror::new(
                    config.clone(),
                    gateway.clone(),
                    leaf_certs.clone(),
                    shutdown.clone(),
                    tasks.clone(),
                    metrics.clone(),
                )?;
                Some((l, Arc::new(m)))
            }
            None => None,
        };
        let reloader = Reloader(Arc::new(ReloadParts {
            config: config.clone(),
            source,
            reloading: tokio::sync::Mutex::new(()),
            cache: cache.clone(),
            auth,
            evictor,
            upstream: upstream.clone(),
            gate: gate.clone(),
            leaf_certs: leaf_certs.clone(),
            mirror: mirror.as_ref().map(|(_, m)| m.clone()),
        }));
        let health = StoreCheck::new(config.load().health);
        health.spawn(cache.clone(), metrics.clone());
        let admin = AdminService::new(
            ca.cert_pem().to_string(),
            cache.clone(),
            metrics.clone(),
            Arc::new(reloader.clone()),
            health,
        );
        let local: Arc<dyn LocalService> = Arc::new(LocalAnswers(admin));
        if listener.is_none()
            && let Some((_, m)) = &mirror
        {
            // Mirror-only: regcache's own endpoints move to the mirror listener.
            m.answer_locally(local.clone());
        }
        let listen_addr = listener
            .as_ref()
            .map_or(config.load().listen, ProxyListener::local_addr);
        let proxy = Arc::new(Proxy {
            gateway,
            config,
            gate,
            shutdown,
            tasks,
            leaf_certs,
            upstream,
            local,
            listen_addr,
            metrics,
        });
        Ok(Self {
            listener,
            proxy,
            mirror,
            reloader,
        })
    }

    /// The proxy listener's address actually bound (useful with port 0); `None` when the
    /// proxy listener is off.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().map(|_| self.proxy.listen_addr)
    }

    /// The mirror's bound address, when it is on.
    pub fn mirror_addr(&self) -> Option<SocketAddr> {
        self.mirror.as_ref().map(|(l, _)| l.local_addr())
    }

    /// A handle to reload the configuration while [`App::run`] runs.
    pub fn reloader(&self) -> Reloader {
        self.reloader.clone()
    }

    /// Accepts connections until `shutdown` resolves, then drains: stops accepting, lets
    /// in-flight responses and downloads finish for up to the configured grace period, and
    /// returns. Partial downloads never become cache entries (they are committed only when
    /// verified, and their spool files are swept at the next start).
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let proxy = self.proxy;
        let stop_mirror = CancellationToken::new();
        let mirror = self.mirror.map(|(listener, mirror)| {
            let stop = stop_mirror.clone();
            tokio::spawn(async move { listener.run(mirror, stop.cancelled_owned()).await })
        });
        match self.listener {
            Some(listener) => listener.run(proxy.clone(), shutdown).await,
            None => shutdown.await,
        }
        stop_mirror.cancel();
        if let Some(accepting) = mirror {
            let _ = accepting.await;
        }
        let grace = proxy.config().shutdown_grace;
        proxy.shutdown.cancel();
        proxy.tasks.close();
        let busy = proxy.tasks.len();
        if busy > 0 {
            tracing::info!(
                tasks = busy,
                grace_s = grace.as_secs(),
                "draining connections and downloads"
            );
        }
        match tokio::time::timeout(grace, proxy.tasks.wait()).await {
            Ok(()) => tracing::info!("drained"),
            Err(_) => tracing::warn!(
                tasks = proxy.tasks.len(),
                "shutdown grace period over; cutting the remaining connections and downloads"
            ),
        }
    }
}

/// Sets the cache size and entry gauges from what an earlier run stored. It runs while
/// requests are served: content committed during the scan may be counted twice, so the gauges
/// are approximate until it ends (logged).
fn spawn_usage_scan(store: Store, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        match store.blobs().usage().await {
            Ok((entries, bytes)) => {
                metrics.content_scanned(entries, bytes);
                tracing::debug!(entries, bytes, "cache content scanned");
            }
            Err(e) => tracing::warn!(error = %e, "cannot scan the store; cache size gauges start at 0"),
        }
    });
}

/// The shared store's requests, counted in the metrics.
#[derive(Debug)]
struct StoreRequests(Arc<Metrics>);

impl crate::store::RequestCounter for StoreRequests {
    fn request(&self, op: &'static str, ok: bool) {
        self.0.store.request(op, ok);
    }
}

/// The proxy's requests for regcache itself, answered by the admin endpoints.
struct LocalAnswers(AdminService);

#[async_trait::async_trait]
impl LocalService for LocalAnswers {
    async fn respond(&self, req: Request<()>, client: SocketAddr) -> Response<Body> {
        self.0.respond(&req, client).await
    }
}

/// What a reload changes.
struct ReloadParts {
    /// The running configuration; replaced whole on a reload.
    config: Arc<ArcSwap<Config>>,
    /// Where the configuration is read from again on a reload.
    source: Option<ConfigSource>,
    /// Serialises reloads (SIGHUP and the admin endpoint may race).
    reloading: tokio::sync::Mutex<()>,
    /// The cache (its tag policy follows reloads).
    cache: Arc<RegistryCache>,
    /// regcache's upstream accounts.
    auth: Arc<UpstreamAuth>,
    /// Keeps the store within its budget (which a reload may change).
    evictor: Arc<Evictor>,
    /// Trust roots, overrides and timeouts for new upstream requests.
    upstream: UpstreamClient,
    /// Who may use the proxy.
    gate: Arc<ArcSwap<ClientGate>>,
    /// Leaves for newly configured registries are minted ahead of their first client.
    leaf_certs: LeafCertCache,
    /// The mirror (its login and certificate files are re-read).
    mirror: Option<Arc<Mirror>>,
}

/// Reloads the configuration of a running [`App`].
#[derive(Clone)]
pub struct Reloader(Arc<ReloadParts>);

impl Reloader {
    /// Re-reads the configuration source and applies what can change while running:
    /// registries, address overrides, upstream TLS, credentials, tag policies, timeouts for new
    /// connections, push and non-registry policies. Connections and downloads under way are
    /// untouched. Returns one line per change; settings that need a restart are reported too.
    ///
    /// # Errors
    /// If the new configuration is invalid: nothing changes.
    pub async fn reload(&self) -> Result<Vec<String>, ReloadError> {
        let parts = &self.0;
        let _one_at_a_time = parts.reloading.lock().await;
        let source = parts.source.as_ref().ok_or(ReloadError::NoSource)?;
        let loaded = source.load()?;
        let new = loaded.config;
        let old = parts.config.load_full();
        // Build everything that can fail before changing anything.
        let gate = ClientGate::build(&new.access)?;
        if let Some(m) = &parts.mirror {
            m.reload(&new)?;
        }
        parts.upstream.reconfigure(&new)?;
        parts.gate.store(Arc::new(gate));
        parts.auth.set_accounts(new.credentials.clone());
        parts.evictor.set_budget(new.budget);
        parts.cache.set_policy(new.cache.clone());
        let hosts: Vec<String> = new
            .registries
            .iter()
            .filter_map(|p| p.exact_host().map(str::to_string))
            .collect();
        parts.leaf_certs.prewarm(hosts.iter().map(String::as_str)).await;
        let changes = describe_changes(&old, &new);
        parts.config.store(Arc::new(new));
        Ok(changes)
    }
}

#[async_trait::async_trait]
impl Reload for Reloader {
    async fn reload(&self) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Reloader::reload(self).await?)
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
    if old.mirror != new.mirror && old.mirror.is_some() && new.mirror.is_some() {
        out.push("mirror login, certificate and default registry reloaded".into());
    }
    if old.credentials.len() != new.credentials.len() {
        out.push(format!("upstream credentials: {} now", new.credentials.len()));
    }
    let acme = |c: &Config| match c.mirror.as_ref().map(|m| &m.tls) {
        Some(crate::config::MirrorTls::Acme(a)) => Some(a.clone()),
        _ => None,
    };
    let restart = [
        ("listen", old.listen != new.listen),
        (
            "mirror.listen",
            old.mirror.as_ref().map(|m| m.listen) != new.mirror.as_ref().map(|m| m.listen),
        ),
        ("mirror ACME settings", acme(old) != acme(new)),
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
