//! `regcache warm`: fetch images into the cache ahead of a CI burst.
//!
//! It goes through the code `serve` uses upstream ([`UpstreamClient`] with the same
//! configuration: `--connect-to`, upstream CAs, timeouts; [`Requester`] with regcache's
//! `[[credentials]]` and token flow, anonymous tokens otherwise), and leaves the store as a pull
//! through the proxy would: blobs verified by [`BlobWriter`](crate::store::BlobWriter) (spooled,
//! then committed), manifests, membership and public status, then the tag (see
//! [`super::seed`]). The store's records are safe for several processes and blob commits are
//! atomic, so a running `serve` on the same data directory sees each object appear whole, and
//! a blob both fetch at once is simply committed twice with the same bytes.
//!
//! Like the cache, a tag is resolved with a `HEAD` first (free on Docker Hub); the manifest is
//! fetched only when its digest is not cached yet.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode, Uri};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use indicatif::HumanBytes;

use super::seed::{self, SeedImage, SeedManifest};
use crate::cache::Records;
use crate::config::Config;
use crate::error::ProxyError;
use crate::images::Progress;
use crate::registry::headers::{self as hdr, DOCKER_CONTENT_DIGEST};
use crate::registry::manifest::{
    self, Descriptor, DescriptorExt, MANIFEST_ACCEPT, MAX_MANIFEST, Manifest, ManifestError, PlatformFilter,
};
use crate::registry::{Algorithm, Digest, ImageRef, Reference};
use crate::store::StoreError;
use crate::telemetry::Metrics;
use crate::upstream::{Requester, UpstreamAuth, UpstreamClient};

/// Blobs of one image fetched at once.
const BLOB_JOBS: usize = 4;
/// Images warmed at once (by the command that drives a [`Warmer`]).
pub const IMAGE_JOBS: usize = 3;
/// Indexes nested deeper than this are refused (real ones have one level).
const MAX_DEPTH: usize = 2;

/// Why one image could not be warmed.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    /// Upstream could not be reached or broke the exchange.
    #[error("{0}")]
    Upstream(#[from] ProxyError),
    /// Upstream answered, but not with the object.
    #[error("upstream answered {status} for {what}{hint}")]
    Refused {
        /// Its status.
        status: StatusCode,
        /// What was asked.
        what: String,
        /// What to do about it.
        hint: &'static str,
    },
    /// Upstream sent something unusable (wrong digest or length, stalled body, …).
    #[error("{what}: {reason}")]
    Invalid {
        /// The object.
        what: String,
        /// What was wrong.
        reason: String,
    },
    /// A manifest that cannot be walked.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// No child of the index is for a wanted platform.
    #[error("the index has no manifest for {wanted} (it has {available}); use --platform")]
    NoPlatform {
        /// The `--platform` values.
        wanted: String,
        /// The platforms the index lists.
        available: String,
    },
    /// The store could not be written.
    #[error("cache write failed: {0}")]
    Store(#[from] StoreError),
}

/// What warming one image did.
#[derive(Debug, Clone)]
pub struct WarmReport {
    /// The digest the reference resolved to.
    pub digest: Digest,
    /// Manifests fetched from upstream (0: all were cached).
    pub manifests_fetched: usize,
    /// Blobs fetched from upstream.
    pub blobs_fetched: usize,
    /// Their bytes.
    pub bytes_fetched: u64,
    /// Blobs of the chosen platforms, cached before or now.
    pub blobs_total: usize,
    /// Platforms taken from an index (empty for a single-platform image).
    pub platforms: Vec<String>,
}

impl WarmReport {
    /// Whether everything was cached already (only the tag was checked upstream).
    pub fn already_cached(&self) -> bool {
        self.manifests_fetched == 0 && self.blobs_fetched == 0
    }
}

/// A manifest, and whether it came from upstream (rather than the store).
struct Got {
    manifest: SeedManifest,
    fetched: bool,
}

/// Fetches images into a store through regcache's upstream client.
pub struct Warmer {
    store: Records,
    upstream: UpstreamClient,
    auth: Arc<UpstreamAuth>,
    idle: Duration,
}

impl Warmer {
    /// A warmer for `config`'s data directory, upstream settings and accounts (as `serve`).
    ///
    /// # Errors
    /// If an upstream CA bundle is unusable, or the store's settings make no client.
    pub fn new(config: &Config) -> Result<Self, String> {
        let store = crate::cache::open_store(
            &config.store,
            &config.data_dir,
            std::sync::Arc::new(crate::store::NoCount),
        )
        .map_err(|e| format!("store: {e}"))?;
        Ok(Self {
            store: Records::new(store),
            // A one-shot command: its upstream requests are counted nowhere.
            upstream: UpstreamClient::new(config, Arc::new(Metrics::new())).map_err(|e| e.to_string())?,
            auth: Arc::new(UpstreamAuth::new(config.credentials.clone())),
            idle: config.timeouts.upstream_response,
        })
    }

    /// Fetches `image` (an index's children for `platforms`, and every blob of them) into the
    /// store and records it; see the module docs.
    ///
    /// # Errors
    /// The first failure; what was committed before it is complete and verified.
    pub async fn warm(
        &self,
        image: &ImageRef,
        platforms: &PlatformFilter,
        progress: &dyn Progress,
    ) -> Result<WarmReport, WarmError> {
        let req = Requester::new(
            self.upstream.clone(),
            self.auth.clone(),
            image.host.clone(),
            image.repository.clone(),
        );
        progress.stage("resolving");
        let top = match &image.reference {
            Reference::Tag(tag) => self.manifest_by_tag(&req, image, tag).await?,
            Reference::Digest(d) => self.manifest_by_digest(&req, image, d).await?,
        };
        let mut report = WarmReport {
            digest: top.manifest.digest.clone(),
            manifests_fetched: usize::from(top.fetched),
            blobs_fetched: 0,
            bytes_fetched: 0,
            blobs_total: 0,
            platforms: Vec::new(),
        };

        let mut children = Vec::new();
        let mut blobs: Vec<Descriptor> = Vec::new();
        let mut pending = vec![(Manifest::parse(&top.manifest.media_type, &top.manifest.bytes)?, 0)];
        while let Some((parsed, depth)) = pending.pop() {
            let entries = match parsed {
                Manifest::Index(index) => index.manifests().clone(),
                image_manifest @ Manifest::Image(_) => {
                    for b in image_manifest.blobs() {
                        if !blobs.iter().any(|x| x.digest() == b.digest()) {
                            blobs.push(b.clone());
                        }
                    }
                    continue;
                }
            };
            if depth >= MAX_DEPTH {
                return Err(WarmError::Invalid {
                    what: image.to_string(),
                    reason: format!("indexes nested more than {MAX_DEPTH} deep"),
                });
            }
            let chosen: Vec<&Descriptor> = entries.iter().filter(|d| platforms.wants(d)).collect();
            if chosen.is_empty() {
                let available: Vec<String> = entries.iter().filter_map(DescriptorExt::platform_name).collect();
                return Err(WarmError::NoPlatform {
                    wanted: platforms.to_string(),
                    available: if available.is_empty() {
                        "none".into()
                    } else {
                        available.join(", ")
                    },
                });
            }
            for d in chosen {
                let child = self.manifest_by_digest(&req, image, &d.parsed_digest()?).await?;
                report.manifests_fetched += usize::from(child.fetched);
                if let Some(p) = d.platform_name() {
                    report.platforms.push(p);
                }
                pending.push((
                    Manifest::parse(&child.manifest.media_type, &child.manifest.bytes)?,
                    depth + 1,
                ));
                children.push(child.manifest);
            }
        }

        let mut digests = Vec::new();
        let mut missing = Vec::new();
        for b in &blobs {
            let d = b.parsed_digest()?;
            if self.store.store().blobs().stat(&d).await.is_none() {
                missing.push(b);
            }
            digests.push(d);
        }
        report.blobs_total = blobs.len();
        if !missing.is_empty() {
            let bytes: u64 = missing.iter().map(|b| b.size()).sum();
            progress.add_total(bytes);
            progress.stage(&format!(
                "fetching {} of {} blobs ({})",
                missing.len(),
                blobs.len(),
                HumanBytes(bytes)
            ));
        }
        let fetched: Vec<Result<Option<u64>, WarmError>> = futures_util::stream::iter(missing)
            .map(|b| self.fetch_blob(&req, image, b, progress))
            .buffer_unordered(BLOB_JOBS)
            .collect()
            .await;
        for r in fetched {
            if let Some(n) = r? {
                report.blobs_fetched += 1;
                report.bytes_fetched += n;
            }
        }

        // Fetched anonymously, it is public. With an account, ask as nobody (what `serve` does
        // before sharing cached content of a repository).
        let public = !req.has_account() || self.readable_anonymously(&req, image, &report.digest).await;
        progress.stage("recording");
        seed::record(
            &self.store,
            &SeedImage {
                image,
                top: top.manifest,
                children,
                blobs: digests,
                public,
            },
        )
        .await?;
        Ok(report)
    }

    /// A request as regcache: with its account for the repository, else anonymously (running
    /// an anonymous token flow when the registry asks for one, as Docker Hub does).
    async fn send(
        &self,
        req: &Requester,
        method: Method,
        url: &str,
        manifest: bool,
    ) -> Result<Response<Incoming>, WarmError> {
        let uri: Uri = url.parse().map_err(|e| WarmError::Invalid {
            what: url.to_string(),
            reason: format!("not a URL: {e}"),
        })?;
        let mut headers = HeaderMap::new();
        if manifest {
            headers.insert(header::ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        }
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("regcache/", env!("CARGO_PKG_VERSION"), " warm")),
        );
        let res = if req.has_account() {
            req.send(method, uri, headers).await?
        } else {
            req.send_anonymously(method, uri, headers).await?
        };
        Ok(res)
    }

    async fn manifest_by_tag(&self, req: &Requester, image: &ImageRef, tag: &str) -> Result<Got, WarmError> {
        // HEAD first: enough when this digest is cached (and free on Docker Hub).
        if let Ok(res) = self.send(req, Method::HEAD, &image.manifest_url(tag), true).await
            && res.status() == StatusCode::OK
            && let Some(digest) = announced_digest(res.headers())
            && let Some(m) = self.store.manifest(&image.registry, &image.repository, &digest).await
        {
            return Ok(Got {
                manifest: SeedManifest {
                    digest,
                    media_type: m.media_type,
                    bytes: m.bytes,
                },
                fetched: false,
            });
        }
        self.get_manifest(req, image, tag, None).await
    }

    async fn manifest_by_digest(&self, req: &Requester, image: &ImageRef, digest: &Digest) -> Result<Got, WarmError> {
        if let Some(m) = self.store.manifest(&image.registry, &image.repository, digest).await {
            return Ok(Got {
                manifest: SeedManifest {
                    digest: digest.clone(),
                    media_type: m.media_type,
                    bytes: m.bytes,
                },
                fetched: false,
            });
        }
        self.get_manifest(req, image, &digest.to_string(), Some(digest)).await
    }

    /// GETs a manifest and verifies it against `expected` (by digest) or the digest upstream
    /// announces (by tag).
    async fn get_manifest(
        &self,
        req: &Requester,
        image: &ImageRef,
        reference: &str,
        expected: Option<&Digest>,
    ) -> Result<Got, WarmError> {
        let what = image_at(image, reference);
        let res = self
            .send(req, Method::GET, &image.manifest_url(reference), true)
            .await?;
        if res.status() != StatusCode::OK {
            return Err(refused(res.status(), what));
        }
        let (parts, body) = res.into_parts();
        let invalid = |reason: String| WarmError::Invalid {
            what: what.clone(),
            reason,
        };
        if hdr::content_length(&parts.headers).is_some_and(|n| n > MAX_MANIFEST as u64) {
            return Err(invalid("manifest larger than 4 MiB".into()));
        }
        let bytes: Bytes = http_body_util::Limited::new(body, MAX_MANIFEST)
            .collect()
            .await
            .map_err(|e| invalid(format!("reading the manifest: {e}")))?
            .to_bytes();
        let announced = announced_digest(&parts.headers);
        let algorithm = expected
            .or(announced.as_ref())
            .map_or(Algorithm::Sha256, Digest::algorithm);
        let digest = Digest::of(algorithm, &bytes);
        if let Some(e) = expected
            && *e != digest
        {
            return Err(invalid(format!("manifest does not match its digest (got {digest})")));
        }
        if let Some(a) = announced
            && a != digest
        {
            return Err(invalid(format!(
                "manifest does not match Docker-Content-Digest {a} (got {digest})"
            )));
        }
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string())
            .unwrap_or_default();
        Ok(Got {
            manifest: SeedManifest {
                media_type: manifest::effective_media_type(&content_type, &bytes),
                digest,
                bytes,
            },
            fetched: true,
        })
    }

    /// Streams one blob into the store (verified on commit). `None` when it was committed
    /// meanwhile by someone else (a running `serve`).
    async fn fetch_blob(
        &self,
        req: &Requester,
        image: &ImageRef,
        desc: &Descriptor,
        progress: &dyn Progress,
    ) -> Result<Option<u64>, WarmError> {
        let digest = desc.parsed_digest()?;
        if self.store.store().blobs().stat(&digest).await.is_some() {
            return Ok(None);
        }
        let what = format!("blob {digest}");
        let res = self.send(req, Method::GET, &image.blob_url(&digest), false).await?;
        if res.status() != StatusCode::OK {
            return Err(refused(res.status(), what));
        }
        let expected = (desc.size() > 0).then_some(desc.size());
        if let (Some(e), Some(announced)) = (expected, hdr::content_length(res.headers()))
            && e != announced
        {
            return Err(WarmError::Invalid {
                what,
                reason: format!("upstream announced {announced} bytes, the manifest says {e}"),
            });
        }
        let mut writer = self.store.store().create_blob(&digest, expected).await?;
        let mut body = res.into_body();
        let failure = loop {
            match tokio::time::timeout(self.idle, body.frame()).await {
                Err(_) => break Some("upstream stalled mid-blob".to_string()),
                Ok(None) => break None,
                Ok(Some(Err(e))) => break Some(format!("upstream broke off mid-blob: {e}")),
                Ok(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else { continue };
                    let n = data.len() as u64;
                    if let Err(e) = writer.write(data).await {
                        writer.discard().await;
                        return Err(e.into());
                    }
                    progress.advance(n);
                }
            }
        };
        if let Some(reason) = failure {
            writer.discard().await;
            return Err(WarmError::Invalid { what, reason });
        }
        let stored = writer.commit().await.map_err(|e| match e {
            StoreError::DigestMismatch { .. } | StoreError::SizeMismatch { .. } => WarmError::Invalid {
                what: what.clone(),
                reason: format!("rejected, not cached: {e}"),
            },
            other => WarmError::Store(other),
        })?;
        progress.blob_done(&digest.to_string(), stored.len);
        Ok(Some(stored.len))
    }

    /// Whether upstream serves the manifest to nobody in particular.
    async fn readable_anonymously(&self, req: &Requester, image: &ImageRef, digest: &Digest) -> bool {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT));
        let Ok(uri) = image.manifest_url(&digest.to_string()).parse::<Uri>() else {
            return false;
        };
        matches!(req.send_anonymously(Method::HEAD, uri, headers).await, Ok(r) if r.status() == StatusCode::OK)
    }
}

fn announced_digest(h: &HeaderMap) -> Option<Digest> {
    h.get(DOCKER_CONTENT_DIGEST)?.to_str().ok()?.parse().ok()
}

fn image_at(image: &ImageRef, reference: &str) -> String {
    let sep = if reference.contains(':') { '@' } else { ':' };
    format!("{}/{}{sep}{reference}", image.registry, image.repository)
}

fn refused(status: StatusCode, what: String) -> WarmError {
    let hint = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
            " (a private repository? give regcache an account for it: [[credentials]] in the config file)"
        }
        _ => "",
    };
    WarmError::Refused { status, what, hint }
}
