//! The registry-mirror listener: a plain registry endpoint at `/v2/` that dockerd
//! (`registry-mirrors`), containerd (`hosts.toml`), podman/CRI-O (`registries.conf`) and k3s
//! are pointed at, served from the same cache, store and single flight as the forward proxy —
//! a layer pulled through one is a hit through the other.
//!
//! A request's upstream is chosen by [`route`]: containerd's `?ns=`, else a registry name as
//! the first path component, else the default registry (Docker Hub). Only registries regcache
//! is configured to cache can be chosen: the mirror is never an open relay. Its clients never
//! talk to upstream, so regcache runs upstream's token flow for them (with its account, or
//! anonymously); with an account configured, the mirror must have a login (`serve` refuses to
//! start otherwise), because whoever reaches it reads what the account reads.
//!
//! Owns: the mirror's listener, its TLS (minted from regcache's CA, files re-read on reload,
//! a certificate from an ACME CA kept under the data dir, or plain HTTP), its login (htpasswd, `docker login`'s Basic challenge), routing,
//! and its local answers (`/v2/`, `/healthz`, refusals, pushes: `405 UNSUPPORTED`; with no
//! proxy listener, regcache's own endpoints through [`LocalService`]).
//!
//! Must not: reach into `proxy` (what listeners share is `front`'s), read the store, or decide
//! what is cached (the cache does, through the `Gateway`).
//!
//! May import: `front`, `upstream`, `registry`, `telemetry`, `config`, `body`, `os`.

mod acme;
mod listener;
mod route;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::body::{self, Body};
use crate::config::{Config, MirrorTls};
use crate::front::{AuthCheck, Gateway, Htpasswd, HtpasswdError, LeafCertCache, LocalService, limits, server};
use crate::registry::ErrorCode;
use crate::registry::headers::DOCKER_API_VERSION;
use crate::telemetry::{AccessRecord, Listener, Metrics, Outcome};
use crate::upstream::{Origin, PEER_BLOB_PATH};

pub use acme::{AcmeCertificate, AcmeError};
pub use listener::MirrorListener;
pub use route::{RouteError, route};

/// ALPN of the mirror's own connections.
const MIRROR_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The mirror's Basic challenge (RFC 7617), which `docker login` answers with the password.
const CHALLENGE: &str = "Basic realm=\"regcache\", charset=\"UTF-8\"";

/// What every mirror connection shares.
pub struct Mirror {
    /// The running configuration; replaced whole on a reload.
    pub config: Arc<ArcSwap<Config>>,
    /// Requests into the cache.
    pub gateway: Gateway,
    /// Server certificates from regcache's CA (for [`MirrorTls::Minted`]).
    pub leaf_certs: LeafCertCache,
    /// The login, if the mirror has one; replaced on a reload.
    login: ArcSwapOption<Htpasswd>,
    /// The certificate from files (for [`MirrorTls::Files`]); re-read on a reload.
    files_tls: ArcSwapOption<rustls::ServerConfig>,
    /// The certificate from the ACME CA (for [`MirrorTls::Acme`], as configured at start).
    acme: Option<Arc<AcmeCertificate>>,
    /// regcache's own endpoints, when the mirror answers them (the proxy listener is off).
    local: OnceLock<Arc<dyn LocalService>>,
    /// Cancelled when a graceful shutdown begins.
    pub shutdown: CancellationToken,
    /// Connection tasks, awaited by a graceful shutdown.
    pub tasks: TaskTracker,
    /// Request and TLS handshake counters.
    pub metrics: Arc<Metrics>,
}

/// Why the mirror's login or certificate could not be (re)loaded.
#[derive(Debug, thiserror::Error)]
pub enum MirrorSetupError {
    /// The htpasswd file.
    #[error("mirror login: {0}")]
    Htpasswd(#[from] HtpasswdError),
    /// The certificate or key file.
    #[error("mirror certificate: {0}")]
    Tls(String),
    /// The ACME folder under the data dir.
    #[error("mirror certificate: {0}")]
    Acme(#[from] AcmeError),
}

impl Mirror {
    /// A mirror for `config.mirror` (which must be set), its login and certificate read now;
    /// with ACME, the task that obtains and renews the certificate runs in `tasks` until
    /// `shutdown`.
    ///
    /// # Errors
    /// If the htpasswd file or the certificate files are unusable.
    pub fn new(
        config: Arc<ArcSwap<Config>>,
        gateway: Gateway,
        leaf_certs: LeafCertCache,
        shutdown: CancellationToken,
        tasks: TaskTracker,
        metrics: Arc<Metrics>,
    ) -> Result<Self, MirrorSetupError> {
        let running = config.load_full();
        let acme = match running.mirror.as_ref().map(|m| &m.tls) {
            Some(MirrorTls::Acme(settings)) => {
                Some(Arc::new(AcmeCertificate::load(settings.clone(), &running.data_dir)?))
            }
            _ => None,
        };
        let mirror = Self {
            config,
            gateway,
            leaf_certs,
            login: ArcSwapOption::empty(),
            files_tls: ArcSwapOption::empty(),
            acme,
            local: OnceLock::new(),
            shutdown,
            tasks,
            metrics,
        };
        mirror.reload(&running)?;
        if let Some(acme) = &mirror.acme {
            mirror.tasks.spawn(acme.clone().maintain(mirror.shutdown.clone()));
        }
        Ok(mirror)
    }

    /// Re-reads the login and the certificate files of `config` (on SIGHUP). On an error the
    /// mirror keeps what it had.
    ///
    /// # Errors
    /// If the htpasswd file or the certificate files are unusable.
    pub fn reload(&self, config: &Config) -> Result<(), MirrorSetupError> {
        let Some(m) = &config.mirror else {
            return Ok(());
        };
        let login = match &m.htpasswd {
            Some(path) => Some(Htpasswd::load_warning_if_empty(path, "401 from the mirror")?),
            None => None,
        };
        let files_tls = match &m.tls {
            MirrorTls::Files { cert, key } => {
                Some(server::tls_from_files(cert, key, &MIRROR_ALPN).map_err(MirrorSetupError::Tls)?)
            }
            _ => None,
        };
        self.login.store(login);
        self.files_tls.store(files_tls);
        Ok(())
    }

    /// Answers regcache's own endpoints (status page, `/metrics`, `/ca.crt`, the loopback-only
    /// admin API) on the mirror, behind its login: for an instance with no proxy listener.
    pub fn answer_locally(&self, local: Arc<dyn LocalService>) {
        let _ = self.local.set(local);
    }

    /// Answers one request from `client`.
    async fn respond(&self, client: SocketAddr, req: Request<Body>) -> Response<Body> {
        let config = self.config.load_full();
        let Some(settings) = config.mirror.as_ref() else {
            return body::text(
                StatusCode::SERVICE_UNAVAILABLE,
                "regcache: the mirror is not configured",
            );
        };
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let record = || {
            AccessRecord::new(&self.metrics, client, "mirror", method.clone(), &path).with_listener(Listener::Mirror)
        };
        if let Some(res) = limits::request_line_refusal(&req, config.limits.max_request_line) {
            record().emit(Outcome::Deny, res.status().as_u16(), 0, true);
            return res;
        }
        // For load balancers' health checks: says nothing but that the mirror is up.
        if path == "/healthz" {
            return answer(record(), Outcome::Local, body::text(StatusCode::OK, "ok"));
        }
        // A replica of the fleet asking for a blob in flight shows the fleet's secret instead
        // (mirror-only replicas serve their peers here).
        let peer = path.starts_with(PEER_BLOB_PATH) && self.local.get().is_some();
        let login = self.login.load_full();
        if let Some(h) = login.as_ref().filter(|_| !peer) {
            match h.check(req.headers().get(header::AUTHORIZATION)).await {
                AuthCheck::User(_) => {}
                AuthCheck::Missing => return answer(record(), Outcome::Deny, challenge()),
                AuthCheck::Refused(user) => {
                    tracing::warn!(%client, user = user.as_deref().unwrap_or(""), "mirror login refused");
                    return answer(record(), Outcome::Deny, challenge());
                }
            }
        }
        if path == "/v2/" || path == "/v2" {
            return answer(record(), Outcome::Local, api_version_check());
        }
        if !path.starts_with("/v2/")
            && let Some(local) = self.local.get()
        {
            let mut head = Request::new(());
            *head.method_mut() = req.method().clone();
            *head.uri_mut() = req.uri().clone();
            *head.headers_mut() = req.headers().clone();
            return answer(record(), Outcome::Local, local.respond(head, client).await);
        }
        let routed = match route(&path, req.uri().query(), &settings.default_registry) {
            Ok(r) => r,
            Err(RouteError::NotRegistryPath) => {
                let res = ErrorCode::NameUnknown.response(StatusCode::NOT_FOUND, "not a registry API path");
                return answer(record(), Outcome::Deny, res);
            }
            Err(RouteError::BadRegistry(why)) => {
                let res = ErrorCode::NameInvalid.response(StatusCode::BAD_REQUEST, &why);
                return answer(record(), Outcome::Deny, res);
            }
        };
        if !config.is_registry(&routed.upstream) {
            let res = ErrorCode::Denied.response(
                StatusCode::FORBIDDEN,
                &format!(
                    "regcache does not cache {}: only configured registries are mirrored (--registry)",
                    routed.upstream
                ),
            );
            return answer(record(), Outcome::Deny, res);
        }
        let (mut parts, body) = req.into_parts();
        parts.uri = match routed.path_and_query.parse() {
            Ok(u) => u,
            Err(_) => {
                let res = ErrorCode::NameInvalid.response(StatusCode::BAD_REQUEST, "unusable path");
                return answer(record(), Outcome::Deny, res);
            }
        };
        // The mirror's login is the mirror's: it never goes upstream, and the cache must not
        // take it for upstream credentials.
        parts.headers.remove(header::AUTHORIZATION);
        let origin = Origin {
            tls: true,
            host: routed.upstream,
        };
        self.gateway
            .handle(
                client,
                Listener::Mirror,
                &origin,
                true,
                Request::from_parts(parts, body),
            )
            .await
    }
}

/// Logs a local answer and returns it.
fn answer(record: AccessRecord, outcome: Outcome, res: Response<Body>) -> Response<Body> {
    record.emit(outcome, res.status().as_u16(), 0, true);
    res
}

/// `401` with the mirror's Basic challenge.
fn challenge() -> Response<Body> {
    let mut res = ErrorCode::Unauthorized.response(StatusCode::UNAUTHORIZED, "log in to the mirror (docker login)");
    res.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
    res
}

/// OCI distribution-spec "API version check": `200` at `/v2/`, answered by the mirror itself
/// so that clients find it up whatever the state of the upstreams.
fn api_version_check() -> Response<Body> {
    let mut res = Response::new(body::full("{}"));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(DOCKER_API_VERSION, HeaderValue::from_static("registry/2.0"));
    res
}
