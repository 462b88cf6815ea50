//! The client side: one pooled, keep-alive HTTP client for every upstream registry.
//!
//! TLS is verified against the system roots plus `--upstream-ca` bundles, with SNI and `Host`
//! of the name the client asked for. `--connect-to` and a parent proxy change only how the
//! TCP connection is made (see [`super::dial`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderMap};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpStream;

use crate::body::{self, Body};
use crate::config::{Config, HostPattern, HostPort, Timeouts};
use crate::error::{ProxyError, chain_line};
use crate::registry::headers::strip_hop_by_hop;
use crate::telemetry::Metrics;
use crate::upstream::dial::{Dialer, host_port_of};
use crate::upstream::egress;

/// Errors building the upstream client (bad `--upstream-ca` files).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamSetupError {
    /// A CA bundle could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The bundle.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A CA bundle holds no usable certificate.
    #[error("{path}: {reason}")]
    Bundle {
        /// The bundle.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The TLS configuration could not be built.
    #[error("upstream TLS setup: {0}")]
    Tls(#[from] rustls::Error),
}

/// Where a request goes: scheme plus `host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `true` for https.
    pub tls: bool,
    /// The host and port as the client named them.
    pub host: HostPort,
}

impl Origin {
    /// The URI authority (port omitted when it is the scheme's default).
    pub fn authority(&self) -> String {
        self.host.authority(if self.tls { 443 } else { 80 })
    }

    /// `https://authority` or `http://authority`.
    pub fn base_url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.authority())
    }
}

/// A pooled client to every upstream, shared by all connections.
///
/// Clones share one current configuration, which [`UpstreamClient::reconfigure`] replaces on a
/// reload: requests already sent keep the client (and connections) they started with.
#[derive(Clone)]
pub struct UpstreamClient {
    current: Arc<arc_swap::ArcSwap<Inner>>,
    /// Upstream requests by registry and kind, and announced rate limits.
    metrics: Arc<Metrics>,
}

struct Inner {
    client: Client<HttpsConnector<Dialer>, Body>,
    timeouts: Timeouts,
    dialer: Dialer,
}

impl UpstreamClient {
    /// Builds the client: trust roots, connect-to overrides, timeouts, pool.
    ///
    /// # Errors
    /// If an `--upstream-ca` file is unreadable or holds no certificate.
    pub fn new(config: &Config, metrics: Arc<Metrics>) -> Result<Self, UpstreamSetupError> {
        Ok(Self {
            current: Arc::new(arc_swap::ArcSwap::from_pointee(Inner::build(config, &metrics)?)),
            metrics,
        })
    }

    /// Replaces trust roots, overrides and timeouts for requests from now on.
    ///
    /// # Errors
    /// As [`UpstreamClient::new`]; the current configuration then stays.
    pub fn reconfigure(&self, config: &Config) -> Result<(), UpstreamSetupError> {
        let inner = Inner::build(config, &self.metrics)?;
        self.current.store(Arc::new(inner));
        Ok(())
    }

    fn inner(&self) -> Arc<Inner> {
        self.current.load_full()
    }
}

impl Inner {
    fn build(config: &Config, metrics: &Metrics) -> Result<Self, UpstreamSetupError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        if added == 0 {
            // Distroless or scratch images have no system store.
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for path in &config.upstream_ca {
            add_bundle(&mut roots, path)?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = HostVerifier::build(config, roots, provider.clone())?;
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();

        let dialer = Dialer::new(config, metrics.upstream.clone());
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            // HTTP/1.1 upstream: bulk blob transfers run ~2x faster than over h2 (flow-control
            // windows and 16 KiB frames), and the pool keeps connections alive anyway.
            .enable_http1()
            .wrap_connector(dialer.clone());
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build(https);
        Ok(Self {
            client,
            timeouts: config.timeouts,
            dialer,
        })
    }
}

fn add_bundle(roots: &mut rustls::RootCertStore, path: &Path) -> Result<(), UpstreamSetupError> {
    for cert in load_bundle(path)? {
        roots.add(cert).map_err(|e| UpstreamSetupError::Bundle {
            path: path.to_path_buf(),
            reason: format!("certificate not usable as a trust anchor: {e}"),
        })?;
    }
    Ok(())
}

/// Upstream certificate checks, chosen by server name: the common roots, or a registry's own
/// extra CA, or (`skip_verify`) none at all. Handshake signatures are always checked, so the
/// server must still hold the key of the certificate it shows.
#[derive(Debug)]
struct HostVerifier {
    default: Arc<rustls::client::WebPkiServerVerifier>,
    per_host: Vec<(HostPattern, Option<Arc<rustls::client::WebPkiServerVerifier>>)>,
    skip_all: bool,
}

impl HostVerifier {
    fn build(
        config: &Config,
        roots: rustls::RootCertStore,
        provider: Arc<rustls::crypto::CryptoProvider>,
    ) -> Result<Self, UpstreamSetupError> {
        let webpki = |roots: rustls::RootCertStore| {
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| UpstreamSetupError::Tls(rustls::Error::General(e.to_string())))
        };
        let mut per_host = Vec::new();
        for t in &config.upstream_tls {
            let verifier = if t.skip_verify {
                tracing::warn!(registry = %t.host, "upstream certificates are NOT verified for this registry (skip_verify)");
                None
            } else {
                let mut own = roots.clone();
                if let Some(ca) = &t.ca {
                    add_bundle(&mut own, ca)?;
                }
                Some(webpki(own)?)
            };
            per_host.push((t.host.clone(), verifier));
        }
        if config.upstream_skip_verify {
            tracing::warn!("upstream certificates are NOT verified for any registry (upstream_skip_verify)");
        }
        Ok(Self {
            default: webpki(roots)?,
            per_host,
            skip_all: config.upstream_skip_verify,
        })
    }
}

impl rustls::client::danger::ServerCertVerifier for HostVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let host = server_name.to_str();
        let chosen = self
            .per_host
            .iter()
            .find(|(p, _)| p.matches_host(&host))
            .map(|(_, v)| v);
        let verifier = match chosen {
            Some(None) => return Ok(rustls::client::danger::ServerCertVerified::assertion()),
            Some(Some(v)) => v,
            None if self.skip_all => return Ok(rustls::client::danger::ServerCertVerified::assertion()),
            None => &self.default,
        };
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.default.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.default.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.default.supported_verify_schemes()
    }
}

impl UpstreamClient {
    /// Sends `req` (absolute-form URI) and waits for the response headers.
    ///
    /// # Errors
    /// [`ProxyError::Connect`] / [`ProxyError::Tls`] when no connection could be made,
    /// [`ProxyError::Timeout`] when headers did not arrive in time, [`ProxyError::Upstream`]
    /// otherwise.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, ProxyError> {
        let target = target_of(req.uri());
        let call = self
            .metrics
            .upstream_request(req.method(), req.uri().path(), host_port_of(req.uri()).as_ref());
        let inner = self.inner();
        let after = inner.timeouts.upstream_response;
        match tokio::time::timeout(after, inner.client.request(req)).await {
            Err(_) => Err(ProxyError::Timeout { target, after }),
            Ok(Ok(res)) => {
                self.metrics.upstream_answered(&call, res.headers());
                Ok(res)
            }
            Ok(Err(e)) => Err(classify(target, &e)),
        }
    }

    /// Forwards a client's request to `origin` unchanged but for hop-by-hop headers, and
    /// streams the answer back (bodies flow both ways without buffering).
    ///
    /// # Errors
    /// As for [`Self::send`], or a request whose URI cannot be rebuilt.
    pub async fn forward(&self, origin: &Origin, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        parts.uri = format!("{}{}", origin.base_url(), path)
            .parse()
            .map_err(|e| ProxyError::BadRequest(format!("cannot build upstream URI: {e}")))?;
        // The client picks h1 or h2 by ALPN per connection; the inner request's version is moot.
        parts.version = Version::HTTP_11;
        strip_hop_by_hop(&mut parts.headers);
        // Host (h1) or :authority (h2) come from the URI: the name the client asked for.
        parts.headers.remove(header::HOST);
        let res = self.send(Request::from_parts(parts, body)).await?;
        let (mut parts, body) = res.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, body::boxed(body)))
    }

    /// Sends a body-less request and follows redirects (301/302/303/307/308, at most
    /// [`MAX_REDIRECTS`]), as blob downloads need: registries send clients to a CDN or a signed
    /// storage URL. `Authorization` is dropped as soon as the scheme or host changes, so
    /// credentials never reach a host they were not meant for.
    ///
    /// # Errors
    /// As for [`Self::send`]; too many redirects or a bad `Location` is
    /// [`ProxyError::Upstream`].
    pub async fn send_following_redirects(
        &self,
        method: Method,
        url: Uri,
        mut headers: HeaderMap,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut method = method;
        let mut url = url;
        for _ in 0..=MAX_REDIRECTS {
            let mut req = Request::new(body::empty());
            *req.method_mut() = method.clone();
            *req.uri_mut() = url.clone();
            *req.headers_mut() = headers.clone();
            let res = self.send(req).await?;
            let status = res.status();
            let is_redirect = matches!(status.as_u16(), 301 | 302 | 303 | 307 | 308);
            let location = res.headers().get(header::LOCATION).and_then(|l| l.to_str().ok());
            let (true, Some(location)) = (is_redirect, location) else {
                return Ok(res);
            };
            let next = resolve_location(&url, location).ok_or_else(|| ProxyError::Upstream {
                target: target_of(&url),
                reason: format!("redirect to an unusable Location {location:?}"),
            })?;
            if next.scheme() != url.scheme() || next.authority() != url.authority() {
                headers.remove(header::AUTHORIZATION);
            }
            if status == StatusCode::SEE_OTHER && method != Method::HEAD {
                method = Method::GET;
            }
            tracing::debug!(from = %target_of(&url), to = %target_of(&next), status = status.as_u16(), "following redirect");
            url = next;
        }
        Err(ProxyError::Upstream {
            target: target_of(&url),
            reason: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// Opens a raw TCP connection for a tunnel, as the pooled client dials (`--connect-to`,
    /// parent proxy, Happy Eyeballs), within the connect timeout. Without a `--connect-to`
    /// mapping, internal destinations are refused (see [`egress`]).
    ///
    /// # Errors
    /// [`ProxyError::Forbidden`] for an internal destination, [`ProxyError::Connect`] on
    /// failure, a parent proxy's refusal, or timeout.
    pub async fn dial(&self, target: &HostPort) -> Result<TcpStream, ProxyError> {
        let inner = self.inner();
        let after = inner.timeouts.upstream_connect;
        let connect_err = |reason: String| ProxyError::Connect {
            target: target.to_string(),
            reason,
        };
        match tokio::time::timeout(after, inner.dialer.connect(target)).await {
            Err(_) => Err(connect_err(format!("timed out after {}s", after.as_secs()))),
            Ok(Err(e)) => match egress::Refused::find(&e) {
                Some(r) => Err(ProxyError::Forbidden(format!("CONNECT to {target} refused: {r}"))),
                None => Err(connect_err(e.to_string())),
            },
            Ok(Ok(s)) => Ok(s),
        }
    }
}

/// Redirects followed for one blob before giving up.
pub const MAX_REDIRECTS: usize = 5;

/// Resolves a `Location` against the URL it came from (RFC 9110 §10.2.2: it may be relative).
fn resolve_location(base: &Uri, location: &str) -> Option<Uri> {
    let location = location.trim();
    if let Ok(abs) = location.parse::<Uri>()
        && abs.scheme().is_some()
        && abs.authority().is_some()
    {
        return matches!(abs.scheme_str(), Some("http" | "https")).then_some(abs);
    }
    let scheme = base.scheme_str()?;
    let authority = base.authority()?.as_str();
    let joined = if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{scheme}://{authority}{dir}/{location}")
    };
    joined.parse().ok()
}

fn target_of(uri: &Uri) -> String {
    host_port_of(uri).map_or_else(|| "?".to_string(), |t| t.to_string())
}

/// Maps a client error to whose fault it was, with a one-line reason.
fn classify(target: String, err: &hyper_util::client::legacy::Error) -> ProxyError {
    if let Some(refused) = egress::Refused::find(err) {
        return ProxyError::Forbidden(format!("request to {target} refused: {refused}"));
    }
    let reason = chain_line(err);
    if caused_by_tls(err) {
        return ProxyError::Tls {
            target,
            reason: strip_client_prefix(&reason),
        };
    }
    if err.is_connect() {
        ProxyError::Connect {
            target,
            reason: strip_client_prefix(&reason),
        }
    } else {
        ProxyError::Upstream {
            target,
            reason: strip_client_prefix(&reason),
        }
    }
}

/// Whether a rustls error sits anywhere in the chain. `io::Error::source()` skips the error
/// it wraps, so wrapped I/O errors are opened with `get_ref` as well.
fn caused_by_tls(err: &(dyn std::error::Error + 'static)) -> bool {
    if err.downcast_ref::<rustls::Error>().is_some() {
        return true;
    }
    if let Some(inner) = err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref())
        && caused_by_tls(inner)
    {
        return true;
    }
    err.source().is_some_and(caused_by_tls)
}

fn strip_client_prefix(reason: &str) -> String {
    reason
        .strip_prefix("client error (Connect): ")
        .unwrap_or(reason)
        .to_string()
}

fn load_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, UpstreamSetupError> {
    let bytes = std::fs::read(path).map_err(|source| UpstreamSetupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| UpstreamSetupError::Bundle {
            path: path.to_path_buf(),
            reason: format!("malformed PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(UpstreamSetupError::Bundle {
            path: path.to_path_buf(),
            reason: "no PEM certificate (-----BEGIN CERTIFICATE-----) found".into(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_resolve_like_a_browser() {
        let base: Uri = "https://ghcr.io/v2/org/app/blobs/sha256:aa".parse().unwrap();
        let r = |l: &str| resolve_location(&base, l).map(|u| u.to_string());
        assert_eq!(r("https://cdn.example/x?sig=1").unwrap(), "https://cdn.example/x?sig=1");
        assert_eq!(r("//cdn.example/x").unwrap(), "https://cdn.example/x");
        assert_eq!(r("/blobs/x?y=1").unwrap(), "https://ghcr.io/blobs/x?y=1");
        assert_eq!(r("other").unwrap(), "https://ghcr.io/v2/org/app/blobs/other");
        assert!(r("ftp://x/y").is_none());
    }
}
