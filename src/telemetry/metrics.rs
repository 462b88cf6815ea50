//! What regcache counts, exposed at `GET /metrics` (Prometheus text format 0.0.4) and summed up
//! on the status page.
//!
//! One [`Metrics`] per server, made by `app` and handed to each component that counts (access
//! log, cache, downloads, eviction, upstream client, TLS termination): nothing reaches a global,
//! so a test or a one-shot command gets its own set. Counting is cheap: atomics, and for
//! labelled series a read-locked hash lookup. No lock is ever held across I/O.
//!
//! Label values stay bounded: `registry` is a canonical registry name (a configured registry
//! host, or for upstream requests the host of a `/v2/` API call) or `other`, never a CDN,
//! token or tunnelled host; `outcome`, `kind` and `reason` are fixed words.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use crate::config::HostPort;
use crate::config::canonical_registry;
use crate::registry::{RegistryRequest, classify};
use crate::telemetry::top_images::{ImageCount, TopImages};
use crate::telemetry::{Listener, Outcome};

/// `Content-Type` of `GET /metrics`.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The `registry` label of traffic that is not for a configured registry (tunnels, other
/// hosts, redirect targets such as CDNs, token services, regcache's own endpoints).
pub const OTHER: &str = "other";

/// Docker Hub's canonical registry name, whose pull quota the status page shows.
pub const DOCKER_HUB: &str = "docker.io";

/// Repositories remembered for "top images" (see [`TopImages`]).
const TOP_IMAGES_CAPACITY: usize = 1024;

/// Every outcome, in the order the status page lists them.
pub const OUTCOMES: [Outcome; 10] = [
    Outcome::Hit,
    Outcome::Miss,
    Outcome::Revalidated,
    Outcome::Stale,
    Outcome::Bypass,
    Outcome::Tunnel,
    Outcome::Intercept,
    Outcome::Deny,
    Outcome::Local,
    Outcome::Error,
];

/// What a response body was, for byte counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// A blob (layer or config).
    Blob,
    /// A manifest or image index.
    Manifest,
}

impl BodyKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Blob => "blob",
            Self::Manifest => "manifest",
        }
    }
}

/// Why a client's TLS handshake on an intercepted tunnel failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The client sent an alert: it does not trust regcache's CA (or refused the certificate).
    Rejected,
    /// The client went away or sent something that is not TLS.
    Aborted,
    /// The handshake did not finish in time.
    Timeout,
    /// regcache could not produce a certificate for the host.
    Certificate,
}

impl TlsFailure {
    const ALL: [TlsFailure; 4] = [Self::Rejected, Self::Aborted, Self::Timeout, Self::Certificate];

    fn as_str(self) -> &'static str {
        match self {
            Self::Rejected => "rejected",
            Self::Aborted => "aborted",
            Self::Timeout => "timeout",
            Self::Certificate => "certificate",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    registry: String,
    outcome: &'static str,
    listener: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    registry: String,
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RegistryLabels {
    registry: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

/// Every counter and gauge regcache keeps. Methods are named after the event they count.
pub struct Metrics {
    registry: Registry,
    started: Instant,
    requests: Family<RequestLabels, Counter>,
    /// Per-outcome totals over all registries, for the status page (families cannot be summed).
    outcome_totals: [AtomicU64; OUTCOMES.len()],
    cache_served_bytes: Family<KindLabels, Counter>,
    upstream_fetched_bytes: Family<KindLabels, Counter>,
    upstream_requests: Family<UpstreamLabels, Counter>,
    ratelimit_remaining: Family<RegistryLabels, Gauge>,
    manifest_gets_avoided: Family<RegistryLabels, Counter>,
    manifest_gets_avoided_total: AtomicU64,
    downloads_in_flight: Gauge,
    cache_size: Gauge,
    cache_entries: Gauge,
    evictions: Counter,
    store_write_failures: Counter,
    tls_handshakes: Counter,
    tls_errors: Family<ReasonLabels, Counter>,
    top_images: TopImages,
    /// The shared store's requests and leases.
    pub store: super::StoreMetrics,
    /// Upstream connections and the store check.
    pub upstream: super::UpstreamMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set, all zero, registered under the `regcache_` prefix.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("regcache");
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "requests",
            "Requests answered, by registry (canonical name, or `other`), outcome (as in the access log) and listener (`proxy` or `mirror`)",
            requests.clone(),
        );
        let cache_served_bytes = Family::<KindLabels, Counter>::default();
        r.register_with_unit(
            "cache_served",
            "Blob and manifest body bytes sent to clients from the cache (hit, revalidated, stale)",
            Unit::Bytes,
            cache_served_bytes.clone(),
        );
        let upstream_fetched_bytes = Family::<KindLabels, Counter>::default();
        r.register_with_unit(
            "upstream_fetched",
            "Blob and manifest body bytes received from upstream (a download shared by many clients counts once)",
            Unit::Bytes,
            upstream_fetched_bytes.clone(),
        );
        for kind in [BodyKind::Blob, BodyKind::Manifest] {
            let labels = KindLabels { kind: kind.as_str() };
            // Created up front so that dashboards see 0 rather than no data.
            let _ = cache_served_bytes.get_or_create(&labels);
            let _ = upstream_fetched_bytes.get_or_create(&labels);
        }
        let upstream_requests = Family::<UpstreamLabels, Counter>::default();
        r.register(
            "upstream_requests",
            "HTTP requests sent upstream, by registry and kind (manifest_get is what Docker Hub counts as a pull)",
            upstream_requests.clone(),
        );
        let ratelimit_remaining = Family::<RegistryLabels, Gauge>::default();
        r.register(
            "upstream_ratelimit_remaining",
            "Last `ratelimit-remaining` an upstream registry announced (Docker Hub: pulls left in its window)",
            ratelimit_remaining.clone(),
        );
        let manifest_gets_avoided = Family::<RegistryLabels, Counter>::default();
        r.register(
            "upstream_manifest_gets_avoided",
            "Client manifest GETs answered from the cache without an upstream GET (pulls not counted by the registry)",
            manifest_gets_avoided.clone(),
        );
        let downloads_in_flight = Gauge::default();
        r.register(
            "downloads_in_flight",
            "Blob downloads from upstream in progress",
            downloads_in_flight.clone(),
        );
        let cache_size = Gauge::default();
        r.register_with_unit(
            "cache_size",
            "Bytes of blob and manifest content in the store (scanned at start, then added on each commit)",
            Unit::Bytes,
            cache_size.clone(),
        );
        let cache_entries = Gauge::default();
        r.register(
            "cache_entries",
            "Blob and manifest content files in the store (scanned at start, then added on each commit)",
            cache_entries.clone(),
        );
        let evictions = Counter::default();
        r.register(
            "cache_evictions",
            "Content removed from the store to stay within its budget (no budget yet: always 0)",
            evictions.clone(),
        );
        let store_write_failures = Counter::default();
        r.register(
            "store_write_failures",
            "Cache writes that failed (each made responses pass through uncached for 30 s)",
            store_write_failures.clone(),
        );
        let tls_handshakes = Counter::default();
        r.register(
            "tls_handshakes",
            "Client TLS handshakes completed on intercepted tunnels",
            tls_handshakes.clone(),
        );
        let tls_errors = Family::<ReasonLabels, Counter>::default();
        r.register(
            "tls_handshake_errors",
            "Client TLS handshakes on intercepted tunnels that failed, by reason (rejected: the client does not trust the CA)",
            tls_errors.clone(),
        );
        for reason in TlsFailure::ALL {
            let _ = tls_errors.get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            });
        }
        let store = super::StoreMetrics::register(&mut r);
        let upstream = super::UpstreamMetrics::register(&mut r);
        let start_time = Gauge::<i64>::default();
        start_time.set(unix_seconds(SystemTime::now()));
        r.register_with_unit(
            "start_time",
            "When this regcache process started, in Unix seconds",
            Unit::Seconds,
            start_time,
        );
        r.register(
            "build",
            "The running version",
            Info::new(VersionLabels {
                version: env!("CARGO_PKG_VERSION"),
            }),
        );
        Self {
            registry: r,
            started: Instant::now(),
            requests,
            outcome_totals: Default::default(),
            cache_served_bytes,
            upstream_fetched_bytes,
            upstream_requests,
            ratelimit_remaining,
            manifest_gets_avoided,
            manifest_gets_avoided_total: AtomicU64::new(0),
            downloads_in_flight,
            cache_size,
            cache_entries,
            evictions,
            store_write_failures,
            tls_handshakes,
            tls_errors,
            top_images: TopImages::new(TOP_IMAGES_CAPACITY),
            store,
            upstream,
        }
    }

    /// The exposition, in Prometheus text format 0.0.4.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; the encoder's error type is fmt::Error.
        if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }

    /// A request's access-log line was written: counts it, and for blob and manifest bodies
    /// where the bytes came from (`registry` is `None` for anything that is not a configured
    /// registry).
    pub fn request_done(
        &self,
        registry: Option<&str>,
        listener: Listener,
        outcome: Outcome,
        method: &Method,
        path: &str,
        bytes: u64,
    ) {
        let label = registry.unwrap_or(OTHER);
        self.requests
            .get_or_create(&RequestLabels {
                registry: label.to_string(),
                outcome: outcome.as_str(),
                listener: listener.as_str(),
            })
            .inc();
        self.outcome_totals[outcome_index(outcome)].fetch_add(1, Ordering::Relaxed);
        let from_cache = matches!(outcome, Outcome::Hit | Outcome::Revalidated | Outcome::Stale);
        // Only GETs carry bodies and avoid pulls (and a cached HEAD stays cheap: no parsing).
        // A bypassed blob or manifest was relayed from upstream to this one client as is.
        if registry.is_none() || method != Method::GET || !(from_cache || outcome == Outcome::Bypass) {
            return;
        }
        let Some(kind) = body_kind(method, path) else {
            return;
        };
        if !from_cache {
            self.upstream_bytes(kind, bytes);
            return;
        }
        self.cache_served_bytes
            .get_or_create(&KindLabels { kind: kind.as_str() })
            .inc_by(bytes);
        if kind == BodyKind::Manifest {
            self.manifest_gets_avoided
                .get_or_create(&RegistryLabels {
                    registry: label.to_string(),
                })
                .inc();
            self.manifest_gets_avoided_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A CONNECT tunnel (not intercepted) closed.
    pub fn tunnel_closed(&self) {
        self.request_done(None, Listener::Proxy, Outcome::Tunnel, &Method::CONNECT, "", 0);
    }

    /// A client asked for a manifest of `registry`/`repository` (for "top images").
    pub fn image_requested(&self, registry: &str, repository: &str) {
        self.top_images.record(registry, repository);
    }

    /// `bytes` of a blob or manifest body arrived from upstream.
    pub fn upstream_bytes(&self, kind: BodyKind, bytes: u64) {
        self.upstream_fetched_bytes
            .get_or_create(&KindLabels { kind: kind.as_str() })
            .inc_by(bytes);
    }

    /// A request is about to be sent upstream to `host`; the returned handle records what the
    /// response says about rate limits.
    pub fn upstream_request(&self, method: &Method, path: &str, host: Option<&HostPort>) -> UpstreamCall {
        let class = classify(method, path);
        let kind = match (&class, method) {
            (RegistryRequest::Manifest { .. }, &Method::GET) => "manifest_get",
            (RegistryRequest::Manifest { .. }, &Method::HEAD) => "manifest_head",
            (RegistryRequest::Blob { .. }, &Method::GET) => "blob_get",
            _ => "other",
        };
        // Only registry API paths name a registry; a CDN or token host stays `other`.
        let registry = match host {
            Some(h) if path == "/v2" || path.starts_with("/v2/") => canonical_registry(h),
            _ => OTHER.to_string(),
        };
        self.upstream_requests
            .get_or_create(&UpstreamLabels {
                registry: registry.clone(),
                kind,
            })
            .inc();
        UpstreamCall { registry }
    }

    /// Upstream answered `call` with `headers`: a `ratelimit-remaining` (Docker Hub:
    /// `76;w=21600`) sets that registry's gauge.
    pub fn upstream_answered(&self, call: &UpstreamCall, headers: &HeaderMap) {
        if call.registry == OTHER {
            return;
        }
        let Some(remaining) = headers
            .get("ratelimit-remaining")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_ratelimit)
        else {
            return;
        };
        self.ratelimit_remaining
            .get_or_create(&RegistryLabels {
                registry: call.registry.clone(),
            })
            .set(remaining);
    }

    /// A blob download from upstream started.
    pub fn download_started(&self) {
        self.downloads_in_flight.inc();
    }

    /// A blob download ended (stored, failed or abandoned).
    pub fn download_finished(&self) {
        self.downloads_in_flight.dec();
    }

    /// New content of `bytes` was committed to the store.
    pub fn content_stored(&self, bytes: u64) {
        self.cache_entries.inc();
        self.cache_size.inc_by(clamp_i64(bytes));
    }

    /// The start-up scan found `entries` content files of `bytes` in all.
    pub fn content_scanned(&self, entries: u64, bytes: u64) {
        self.cache_entries.inc_by(clamp_i64(entries));
        self.cache_size.inc_by(clamp_i64(bytes));
    }

    /// Content of `bytes` was removed from the store to stay within its budget. Nothing calls
    /// this yet: the store has no budget.
    pub fn evicted(&self, bytes: u64) {
        self.evictions.inc();
        self.cache_entries.dec();
        self.cache_size.dec_by(clamp_i64(bytes));
    }

    /// A cache write failed.
    pub fn store_write_failed(&self) {
        self.store_write_failures.inc();
    }

    /// A client completed a TLS handshake on an intercepted tunnel.
    pub fn tls_handshake_ok(&self) {
        self.tls_handshakes.inc();
    }

    /// A client's TLS handshake on an intercepted tunnel failed.
    pub fn tls_handshake_failed(&self, reason: TlsFailure) {
        self.tls_errors
            .get_or_create(&ReasonLabels {
                reason: reason.as_str(),
            })
            .inc();
    }

    /// Totals for the status page.
    pub fn snapshot(&self) -> Snapshot {
        let outcomes = OUTCOMES.map(|o| (o, self.outcome_totals[outcome_index(o)].load(Ordering::Relaxed)));
        let kind_sum = |f: &Family<KindLabels, Counter>| {
            [BodyKind::Blob, BodyKind::Manifest]
                .iter()
                .map(|k| f.get(&KindLabels { kind: k.as_str() }).map_or(0, |c| c.get()))
                .sum()
        };
        let tls_errors = TlsFailure::ALL
            .iter()
            .map(|r| {
                self.tls_errors
                    .get(&ReasonLabels { reason: r.as_str() })
                    .map_or(0, |c| c.get())
            })
            .sum();
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            uptime: self.started.elapsed(),
            outcomes,
            cache_served_bytes: kind_sum(&self.cache_served_bytes),
            upstream_fetched_bytes: kind_sum(&self.upstream_fetched_bytes),
            manifest_gets_avoided: self.manifest_gets_avoided_total.load(Ordering::Relaxed),
            docker_hub_remaining: self
                .ratelimit_remaining
                .get(&RegistryLabels {
                    registry: DOCKER_HUB.to_string(),
                })
                .map(|g| g.get()),
            cache_size_bytes: self.cache_size.get(),
            cache_entries: self.cache_entries.get(),
            evictions: self.evictions.get(),
            downloads_in_flight: self.downloads_in_flight.get(),
            tls_handshakes: self.tls_handshakes.get(),
            tls_errors,
            top_images: self.top_images.top(10),
        }
    }
}

/// An upstream request in progress: which registry it concerns, for what its response says.
#[derive(Debug)]
pub struct UpstreamCall {
    registry: String,
}

/// Everything the status page shows, read at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// regcache's version.
    pub version: &'static str,
    /// Time since the metrics were created (at start).
    pub uptime: Duration,
    /// Requests per outcome, in [`OUTCOMES`] order.
    pub outcomes: [(Outcome, u64); OUTCOMES.len()],
    /// Blob and manifest bytes sent from the cache.
    pub cache_served_bytes: u64,
    /// Blob and manifest bytes received from upstream.
    pub upstream_fetched_bytes: u64,
    /// Manifest GETs answered without an upstream GET.
    pub manifest_gets_avoided: u64,
    /// Docker Hub's last announced `ratelimit-remaining`, if it was ever seen.
    pub docker_hub_remaining: Option<i64>,
    /// Bytes of content in the store.
    pub cache_size_bytes: i64,
    /// Content files in the store.
    pub cache_entries: i64,
    /// Content removed to stay within the budget.
    pub evictions: u64,
    /// Blob downloads in progress.
    pub downloads_in_flight: i64,
    /// Completed client TLS handshakes.
    pub tls_handshakes: u64,
    /// Failed client TLS handshakes.
    pub tls_errors: u64,
    /// The most requested repositories.
    pub top_images: Vec<ImageCount>,
}

impl Snapshot {
    /// Requests with this outcome.
    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes.iter().find(|(o, _)| *o == outcome).map_or(0, |(_, n)| *n)
    }

    /// Cacheable requests (blobs, manifests, the `/v2/` ping when answered locally) answered
    /// from the cache (hit, revalidated, stale) and in all (those plus misses).
    pub fn cache_answers(&self) -> (u64, u64) {
        let answered = self.count(Outcome::Hit) + self.count(Outcome::Revalidated) + self.count(Outcome::Stale);
        (answered, answered + self.count(Outcome::Miss))
    }
}

/// `N` from a `ratelimit-remaining` value such as `76;w=21600`.
pub fn parse_ratelimit(value: &str) -> Option<i64> {
    value.split(';').next()?.trim().parse().ok()
}

fn body_kind(method: &Method, path: &str) -> Option<BodyKind> {
    match classify(method, path) {
        RegistryRequest::Blob { .. } => Some(BodyKind::Blob),
        RegistryRequest::Manifest { .. } => Some(BodyKind::Manifest),
        _ => None,
    }
}

fn outcome_index(outcome: Outcome) -> usize {
    OUTCOMES
        .iter()
        .position(|o| *o == outcome)
        .unwrap_or(OUTCOMES.len() - 1)
}

fn clamp_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| clamp_i64(d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> HostPort {
        HostPort::parse(s, 443).unwrap()
    }

    #[test]
    fn ratelimit_values_parse_with_or_without_a_window() {
        assert_eq!(parse_ratelimit("76;w=21600"), Some(76));
        assert_eq!(parse_ratelimit(" 0 ; w=21600"), Some(0));
        assert_eq!(parse_ratelimit("100"), Some(100));
        assert_eq!(parse_ratelimit("lots"), None);
        assert_eq!(parse_ratelimit(""), None);
    }

    #[test]
    fn requests_and_bytes_are_counted_by_where_they_came_from() {
        let m = Metrics::new();
        let blob = "/v2/library/alpine/blobs/sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4";
        let manifest = "/v2/library/alpine/manifests/latest";
        m.request_done(
            Some("docker.io"),
            Listener::Proxy,
            Outcome::Hit,
            &Method::GET,
            blob,
            1000,
        );
        m.request_done(
            Some("docker.io"),
            Listener::Proxy,
            Outcome::Miss,
            &Method::GET,
            blob,
            1000,
        );
        m.request_done(
            Some("docker.io"),
            Listener::Proxy,
            Outcome::Revalidated,
            &Method::GET,
            manifest,
            50,
        );
        m.request_done(
            Some("docker.io"),
            Listener::Proxy,
            Outcome::Hit,
            &Method::HEAD,
            manifest,
            0,
        );
        m.request_done(
            Some("docker.io"),
            Listener::Proxy,
            Outcome::Bypass,
            &Method::GET,
            blob,
            7,
        );
        m.request_done(
            Some("docker.io"),
            Listener::Mirror,
            Outcome::Hit,
            &Method::HEAD,
            manifest,
            0,
        );
        m.request_done(None, Listener::Proxy, Outcome::Bypass, &Method::GET, blob, 1_000_000);
        m.tunnel_closed();
        let s = m.snapshot();
        assert_eq!(s.count(Outcome::Hit), 3);
        assert_eq!(s.count(Outcome::Tunnel), 1);
        assert_eq!(s.cache_served_bytes, 1050, "hit and revalidated bodies");
        assert_eq!(s.upstream_fetched_bytes, 7, "only the registry's bypassed blob");
        assert_eq!(s.manifest_gets_avoided, 1, "the GET, not the HEAD");
        assert_eq!(s.cache_answers(), (4, 5));
        let text = m.encode();
        assert!(text.contains("regcache_requests_total{registry=\"docker.io\",outcome=\"hit\",listener=\"proxy\"} 2"));
        assert!(text.contains("regcache_requests_total{registry=\"docker.io\",outcome=\"hit\",listener=\"mirror\"} 1"));
        assert!(text.contains("regcache_requests_total{registry=\"other\",outcome=\"tunnel\",listener=\"proxy\"} 1"));
        assert!(text.contains("regcache_cache_served_bytes_total{kind=\"blob\"} 1000"));
        assert!(text.contains("regcache_upstream_manifest_gets_avoided_total{registry=\"docker.io\"} 1"));
    }

    #[test]
    fn upstream_requests_are_classified_and_cdn_hosts_stay_other() {
        let m = Metrics::new();
        let hub = hp("registry-1.docker.io");
        m.upstream_request(&Method::GET, "/v2/library/alpine/manifests/3.20", Some(&hub));
        m.upstream_request(&Method::HEAD, "/v2/library/alpine/manifests/3.20", Some(&hub));
        m.upstream_request(
            &Method::GET,
            "/v2/library/alpine/blobs/sha256:a3ed95caeb02ffe68cdd9fd84406680ae93d633cb16422d00e8a7c22955b46d4",
            Some(&hub),
        );
        m.upstream_request(&Method::GET, "/v2/", Some(&hub));
        let cdn = m.upstream_request(&Method::GET, "/registry-v2/blobs/x", Some(&hp("cdn.example")));
        let mut h = HeaderMap::new();
        h.insert("ratelimit-remaining", http::HeaderValue::from_static("5;w=21600"));
        m.upstream_answered(&cdn, &h);
        assert_eq!(m.snapshot().docker_hub_remaining, None, "never seen from Docker Hub");
        let pull = m.upstream_request(&Method::GET, "/v2/library/alpine/manifests/3.20", Some(&hub));
        h.insert("ratelimit-remaining", http::HeaderValue::from_static("76;w=21600"));
        m.upstream_answered(&pull, &h);
        assert_eq!(m.snapshot().docker_hub_remaining, Some(76));
        let text = m.encode();
        for (kind, n) in [("manifest_get", 2), ("manifest_head", 1), ("blob_get", 1), ("other", 1)] {
            assert!(
                text.contains(&format!(
                    "regcache_upstream_requests_total{{registry=\"docker.io\",kind=\"{kind}\"}} {n}"
                )),
                "{kind}: {text}"
            );
        }
        assert!(text.contains("regcache_upstream_requests_total{registry=\"other\",kind=\"other\"} 1"));
        assert!(!text.contains("cdn.example"));
        assert!(text.contains("regcache_upstream_ratelimit_remaining{registry=\"docker.io\"} 76"));
    }

    #[test]
    fn store_and_tls_counters() {
        let m = Metrics::new();
        m.content_scanned(3, 300);
        m.content_stored(50);
        m.download_started();
        m.download_started();
        m.download_finished();
        m.tls_handshake_ok();
        m.tls_handshake_failed(TlsFailure::Rejected);
        m.tls_handshake_failed(TlsFailure::Timeout);
        let s = m.snapshot();
        assert_eq!((s.cache_entries, s.cache_size_bytes), (4, 350));
        assert_eq!(s.downloads_in_flight, 1);
        assert_eq!((s.tls_handshakes, s.tls_errors), (1, 2));
        let text = m.encode();
        assert!(text.contains("regcache_cache_size_bytes 350"));
        assert!(text.contains("regcache_tls_handshake_errors_total{reason=\"rejected\"} 1"));
        assert!(text.contains("regcache_tls_handshake_errors_total{reason=\"aborted\"} 0"));
        assert!(text.contains("regcache_cache_evictions_total 0"));
        assert!(text.contains(&format!(
            "regcache_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }
}
