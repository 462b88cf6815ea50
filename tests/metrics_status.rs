//! `/metrics`, the status page and the Grafana dashboard, over real sockets: the distribution
//! registry (Debian's `docker-registry`) and an in-process stand-in for Docker Hub (it sends
//! `ratelimit-remaining`) behind TLS from a test CA, regcache as a child process, clients
//! through it (reqwest, skopeo), and headless Chromium rendering the status page.
//!
//! `/metrics` is parsed by a strict Prometheus text-format (0.0.4) parser written here, so a
//! malformed exposition fails the tests rather than a scrape in production.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::image::OCI_MANIFEST;
use support::{PullWorld, Regcache, Registry, RegistryAuth, TestCa, TestImage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CHROMIUM: &str = "/usr/bin/chromium";
const DOCKER_HUB_HOST: &str = "registry-1.docker.io";
/// What the stand-in for Docker Hub announces as pulls left.
const HUB_REMAINING: i64 = 76;

// ---------------------------------------------------------------------------------------------
// A strict parser for the Prometheus text format, version 0.0.4.
// ---------------------------------------------------------------------------------------------

/// One sample line.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition.
#[derive(Debug, Default)]
struct Exposition {
    /// Family name → type, from `# TYPE` lines.
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ if s.is_empty() || s.contains(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E') => {
            Err(format!("{s:?} is not a sample value"))
        }
        _ => s
            .parse::<f64>()
            .map_err(|e| format!("{s:?} is not a sample value: {e}")),
    }
}

/// The family a sample belongs to, given the declared types (histogram and summary samples
/// carry suffixes).
fn family_of(name: &str, types: &BTreeMap<String, String>) -> Option<String> {
    if types.contains_key(name) {
        return Some(name.to_string());
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && matches!(types.get(base).map(String::as_str), Some("histogram" | "summary"))
        {
            return Some(base.to_string());
        }
    }
    None
}

/// Parses `name{a="b",c="d"}` (labels optional) at the start of `line`; returns the rest.
fn parse_series(line: &str) -> Result<(String, BTreeMap<String, String>, &str), String> {
    let end = line.find(['{', ' ']).ok_or_else(|| format!("no value in {line:?}"))?;
    let name = &line[..end];
    if !valid_metric_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut labels = BTreeMap::new();
    let mut rest = &line[end..];
    if let Some(after) = rest.strip_prefix('{') {
        rest = after;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=').ok_or_else(|| format!("label without '=' in {line:?}"))?;
            let key = &rest[..eq];
            if !valid_label_name(key) {
                return Err(format!("invalid label name {key:?} in {line:?}"));
            }
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or_else(|| format!("label value not quoted in {line:?}"))?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let close = loop {
                match chars.next() {
                    None => return Err(format!("unterminated label value in {line:?}")),
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?} in {line:?}")),
                    },
                    Some((_, '\n')) => return Err(format!("raw newline in label value in {line:?}")),
                    Some((_, c)) => value.push(c),
                }
            };
            rest = &rest[close + 1..];
            if labels.insert(key.to_string(), value).is_some() {
                return Err(format!("label {key:?} twice in {line:?}"));
            }
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err(format!("expected ',' or '}}' after a label in {line:?}"));
            }
        }
    }
    Ok((name.to_string(), labels, rest))
}

/// Parses an exposition; every rule of the format that regcache's output must follow is
/// checked: names, label syntax and escapes, values, one HELP and one TYPE per family before
/// its samples, families not interleaved, no duplicate series, a final newline.
fn parse_exposition(text: &str) -> Result<Exposition, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("exposition does not end with a newline".into());
    }
    let mut exp = Exposition::default();
    let mut helps = BTreeSet::new();
    let mut finished_families = BTreeSet::new();
    let mut current: Option<String> = None;
    let mut seen_series = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}", n + 1);
        if line.is_empty() {
            return Err(at("empty line".into()));
        }
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.splitn(4, ' ');
            let (blank, keyword, name) = (parts.next(), parts.next(), parts.next());
            let rest = parts.next().unwrap_or("");
            if blank != Some("") {
                return Err(at(format!("unexpected comment {line:?}")));
            }
            let name = name.ok_or_else(|| at(format!("incomplete {line:?}")))?;
            if !valid_metric_name(name) {
                return Err(at(format!("invalid metric name {name:?}")));
            }
            if finished_families.contains(name) || exp.samples.iter().any(|s| s.name == name) {
                return Err(at(format!("{keyword:?} for {name} after its samples")));
            }
            match keyword {
                Some("HELP") => {
                    if !helps.insert(name.to_string()) {
                        return Err(at(format!("second HELP for {name}")));
                    }
                    let mut chars = rest.chars();
                    while let Some(c) = chars.next() {
                        if c == '\\' && !matches!(chars.next(), Some('\\' | 'n')) {
                            return Err(at(format!("bad escape in HELP of {name}")));
                        }
                    }
                }
                Some("TYPE") => {
                    if !matches!(rest, "counter" | "gauge" | "histogram" | "summary" | "untyped") {
                        return Err(at(format!("unknown type {rest:?} for {name}")));
                    }
                    if exp.types.insert(name.to_string(), rest.to_string()).is_some() {
                        return Err(at(format!("second TYPE for {name}")));
                    }
                }
                _ => return Err(at(format!("unexpected comment {line:?}"))),
            }
            continue;
        }
        let (name, labels, rest) = parse_series(line).map_err(at)?;
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| at(format!("no space before the value in {line:?}")))?;
        let mut fields = rest.split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| at(format!("bad timestamp {ts:?}")))?;
        }
        if fields.next().is_some() {
            return Err(at(format!("trailing fields in {line:?}")));
        }
        let family = family_of(&name, &exp.types).ok_or_else(|| at(format!("sample {name} has no TYPE before it")))?;
        if current.as_deref() != Some(family.as_str()) {
            if finished_families.contains(&family) {
                return Err(at(format!("samples of {family} are not contiguous")));
            }
            if let Some(previous) = current.replace(family.clone()) {
                finished_families.insert(previous);
            }
        }
        if exp.types[&family] == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at(format!("counter {name} has value {value}")));
        }
        if !seen_series.insert((name.clone(), labels.clone())) {
            return Err(at(format!("duplicate series {name}{labels:?}")));
        }
        exp.samples.push(Sample { name, labels, value });
    }
    Ok(exp)
}

impl Exposition {
    /// The sample with exactly these labels (0 when absent: a series not yet created).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map_or(0.0, |s| s.value)
    }

    /// The sum of every sample of `name` whose labels include `filter`.
    fn sum(&self, name: &str, filter: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| {
                s.name == name
                    && filter
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
            })
            .map(|s| s.value)
            .sum()
    }

    /// Every series name a query can use, from the declared families.
    fn exposed_names(&self) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for (family, kind) in &self.types {
            match kind.as_str() {
                "histogram" => {
                    for s in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{family}{s}"));
                    }
                }
                "summary" => {
                    names.insert(family.clone());
                    for s in ["_sum", "_count"] {
                        names.insert(format!("{family}{s}"));
                    }
                }
                _ => {
                    names.insert(family.clone());
                }
            }
        }
        names
    }
}

#[test]
fn the_parser_rejects_what_prometheus_would() {
    let ok =
        "# HELP a_total A thing.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\"} 1\n# TYPE g gauge\ng -2.5e3\n";
    let exp = parse_exposition(ok).unwrap();
    assert_eq!(exp.value("a_total", &[("x", "q\"\\\n")]), 1.0);
    assert_eq!(exp.value("g", &[]), -2500.0);
    for bad in [
        "a_total 1\n",                                              // no TYPE
        "# TYPE a counter\na 1",                                    // no final newline
        "# TYPE a counter\na{x=\"1\",x=\"2\"} 1\n",                 // label twice
        "# TYPE a counter\na{x=1} 1\n",                             // unquoted
        "# TYPE a counter\na{x=\"\\t\"} 1\n",                       // bad escape
        "# TYPE a counter\na -1\n",                                 // negative counter
        "# TYPE a gauge\na one\n",                                  // not a number
        "# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na{x=\"y\"} 1\n", // interleaved
        "# TYPE a gauge\na 1\na 2\n",                               // duplicate series
        "# TYPE a gauge\na 1\n\n",                                  // empty line
        "# TYPE 1a gauge\n",                                        // bad name
        "# TYPE a gauge\na 1\n# HELP a late\n",                     // HELP after samples
        "# TYPE a gauge\n# TYPE a counter\n",                       // TYPE twice
        "# TYPE a gauge\na{__x=\"1\"} 1\n",                         // reserved label
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Talking to regcache.
// ---------------------------------------------------------------------------------------------

/// A plain client for regcache's own endpoints (no proxy).
fn direct_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A client through regcache that trusts only regcache's CA (so every TLS connection to a
/// registry host is intercepted).
fn client_via(proxy: &Regcache) -> reqwest::Client {
    reqwest::Client::builder()
        .proxy(reqwest::Proxy::all(proxy.proxy_url()).unwrap())
        .tls_certs_only([reqwest::Certificate::from_pem(proxy.ca_cert_pem().as_bytes()).unwrap()])
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `GET /metrics`, checked and parsed.
async fn scrape(proxy: &Regcache) -> (Exposition, String) {
    let res = direct_client()
        .get(format!("http://{}/metrics", proxy.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let content_type = res.headers()["content-type"].to_str().unwrap().to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "Prometheus text format, got {content_type}"
    );
    let text = res.text().await.unwrap();
    let exp = parse_exposition(&text).unwrap_or_else(|e| panic!("/metrics is not valid Prometheus text: {e}\n{text}"));
    (exp, text)
}

/// Scrapes until `ready` holds (access lines, and so request counters, are written when a
/// response body ends, which can be just after the client has read the last byte).
async fn scrape_until(proxy: &Regcache, what: &str, ready: impl Fn(&Exposition) -> bool) -> Exposition {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (exp, text) = scrape(proxy).await;
        if ready(&exp) {
            return exp;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last scrape:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GETs `url` through the proxy; returns X-Cache and the body.
async fn get(client: &reqwest::Client, url: &str, accept: Option<&str>) -> (String, Bytes) {
    let mut req = client.get(url);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200, "{url}");
    let x_cache = res
        .headers()
        .get("x-cache")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (x_cache, res.bytes().await.unwrap())
}

// ---------------------------------------------------------------------------------------------
// A stand-in for Docker Hub: one repository, one tag, one blob, and Hub's rate-limit headers.
// ---------------------------------------------------------------------------------------------

struct FakeHub {
    addr: SocketAddr,
    manifest: Bytes,
    manifest_digest: String,
    blob: Bytes,
    blob_digest: String,
    /// `METHOD path` of every request.
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeHub {
    async fn start(ca: &TestCa) -> FakeHub {
        let blob: Bytes = (0..96 * 1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
            .collect();
        let blob_digest = support::sha256_digest(&blob);
        let manifest = Bytes::from(
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": blob_digest, "size": blob.len() },
                "layers": [],
            }))
            .unwrap(),
        );
        let manifest_digest = support::sha256_digest(&manifest);
        let tls = tokio_rustls::TlsAcceptor::from(ca.rustls_server_config(&[DOCKER_HUB_HOST]));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let hub = FakeHub {
            addr,
            manifest,
            manifest_digest,
            blob,
            blob_digest,
            requests: requests.clone(),
        };
        let content = Arc::new((
            hub.manifest.clone(),
            hub.manifest_digest.clone(),
            hub.blob.clone(),
            hub.blob_digest.clone(),
        ));
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let (tls, content, requests) = (tls.clone(), content.clone(), requests.clone());
                tokio::spawn(async move {
                    let Ok(stream) = tls.accept(tcp).await else { return };
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let content = content.clone();
                        requests
                            .lock()
                            .unwrap()
                            .push(format!("{} {}", req.method(), req.uri().path()));
                        async move { Ok::<_, Infallible>(hub_route(&req, &content)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        hub
    }

    fn count(&self, method: &str, path_part: &str) -> usize {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.starts_with(&format!("{method} ")) && r.contains(path_part))
            .count()
    }
}

type HubBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn hub_route(req: &Request<Incoming>, content: &(Bytes, String, Bytes, String)) -> Response<HubBody> {
    let (manifest, manifest_digest, blob, blob_digest) = content;
    let path = req.uri().path();
    let head = req.method() == hyper::Method::HEAD;
    let body = |b: &Bytes| -> HubBody {
        if head {
            Empty::new().boxed()
        } else {
            Full::new(b.clone()).boxed()
        }
    };
    let repo = "/v2/library/alpine/";
    if path == "/v2/" {
        return Response::new(Full::new(Bytes::from_static(b"{}")).boxed());
    }
    if path == format!("{repo}manifests/latest") || path == format!("{repo}manifests/{manifest_digest}") {
        return Response::builder()
            .header("content-type", OCI_MANIFEST)
            .header("content-length", manifest.len())
            .header("docker-content-digest", manifest_digest.as_str())
            .header("ratelimit-limit", "100;w=21600")
            .header("ratelimit-remaining", format!("{HUB_REMAINING};w=21600"))
            .body(body(manifest))
            .unwrap();
    }
    if path == format!("{repo}blobs/{blob_digest}") {
        return Response::builder()
            .header("content-type", "application/octet-stream")
            .header("content-length", blob.len())
            .header("docker-content-digest", blob_digest.as_str())
            .body(body(blob))
            .unwrap();
    }
    Response::builder()
        .status(404)
        .body(Full::new(Bytes::from_static(b"{\"errors\":[{\"code\":\"NAME_UNKNOWN\"}]}")).boxed())
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_across_a_miss_then_a_hit_and_the_cache_gauges_survive_a_restart() {
    let w = PullWorld::new();
    let registry = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let image = TestImage::generate(&[300 * 1024]);
    support::push(&registry.url(), "team/app", "v1", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();
    let mut proxy = Regcache::builder()
        .connect_to("ghcr.io:443", registry.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    let client = client_via(&proxy);
    let layer = &image.layers[0];
    let n = layer.size as f64;
    let blob_url = format!("https://ghcr.io/v2/team/app/blobs/{}", layer.digest);
    let ghcr = ("registry", "ghcr.io");

    let (before, _) = scrape(&proxy).await;
    assert_eq!(before.value("regcache_cache_entries", &[]), 0.0, "fresh data dir");
    assert_eq!(
        before.value("regcache_upstream_requests_total", &[ghcr, ("kind", "blob_get")]),
        0.0
    );

    // Miss: one upstream blob GET, the body counted as fetched upstream and stored.
    let (x_cache, body) = get(&client, &blob_url, None).await;
    assert_eq!(x_cache, "MISS");
    assert_eq!(support::sha256_digest(&body), layer.digest);
    let after_miss = scrape_until(&proxy, "the miss to be counted", |m| {
        m.sum("regcache_requests_total", &[ghcr, ("outcome", "miss")]) == 1.0
            && m.value("regcache_cache_entries", &[]) == 1.0
    })
    .await;
    assert_eq!(
        after_miss.value("regcache_upstream_requests_total", &[ghcr, ("kind", "blob_get")]),
        1.0
    );
    assert_eq!(
        after_miss.value("regcache_upstream_fetched_bytes_total", &[("kind", "blob")]),
        n
    );
    assert_eq!(
        after_miss.value("regcache_cache_served_bytes_total", &[("kind", "blob")]),
        0.0
    );
    assert_eq!(after_miss.value("regcache_cache_size_bytes", &[]), n);
    assert_eq!(after_miss.value("regcache_downloads_in_flight", &[]), 0.0);
    assert!(
        after_miss.value("regcache_tls_handshakes_total", &[]) >= 1.0,
        "the tunnel was intercepted"
    );
    // The registry writes its access log on its own time.
    support::poll_until(Duration::from_secs(5), || {
        (registry.count_requests("GET", &layer.digest) >= 1).then_some(())
    });
    assert_eq!(registry.count_requests("GET", &layer.digest), 1);

    // Hit: nothing upstream, the same bytes counted as served from the cache.
    let (x_cache, body) = get(&client, &blob_url, None).await;
    assert_eq!(x_cache, "HIT");
    assert_eq!(body.len() as f64, n);
    let after_hit = scrape_until(&proxy, "the hit to be counted", |m| {
        m.sum("regcache_requests_total", &[ghcr, ("outcome", "hit")]) == 1.0
    })
    .await;
    assert_eq!(
        after_hit.value("regcache_upstream_requests_total", &[ghcr, ("kind", "blob_get")]),
        1.0
    );
    assert_eq!(
        after_hit.value("regcache_upstream_fetched_bytes_total", &[("kind", "blob")]),
        n
    );
    assert_eq!(
        after_hit.value("regcache_cache_served_bytes_total", &[("kind", "blob")]),
        n
    );
    assert_eq!(
        after_hit.value("regcache_cache_entries", &[]),
        1.0,
        "a hit stores nothing"
    );

    // A manifest by tag: the first GET is a pull upstream, the second is a pull avoided.
    let manifest_url = "https://ghcr.io/v2/team/app/manifests/v1";
    let (x_cache, manifest) = get(&client, manifest_url, Some(image.media_type)).await;
    assert_eq!(
        (x_cache.as_str(), manifest.as_ref()),
        ("MISS", image.manifest.as_slice())
    );
    let (x_cache, _) = get(&client, manifest_url, Some(image.media_type)).await;
    assert_eq!(x_cache, "HIT");
    let m = scrape_until(&proxy, "the manifest hit to be counted", |m| {
        m.sum("regcache_requests_total", &[ghcr, ("outcome", "hit")]) == 2.0
    })
    .await;
    let manifest_len = manifest.len() as f64;
    assert_eq!(
        m.value("regcache_upstream_requests_total", &[ghcr, ("kind", "manifest_get")]),
        1.0
    );
    assert_eq!(m.value("regcache_upstream_manifest_gets_avoided_total", &[ghcr]), 1.0);
    assert_eq!(
        m.value("regcache_upstream_fetched_bytes_total", &[("kind", "manifest")]),
        manifest_len
    );
    assert_eq!(
        m.value("regcache_cache_served_bytes_total", &[("kind", "manifest")]),
        manifest_len
    );
    assert_eq!(m.value("regcache_cache_entries", &[]), 2.0);
    assert_eq!(m.value("regcache_cache_size_bytes", &[]), n + manifest_len);
    assert_eq!(m.sum("regcache_tls_handshake_errors_total", &[]), 0.0);
    assert_eq!(m.value("regcache_cache_evictions_total", &[]), 0.0);
    assert_eq!(
        m.value("regcache_build_info", &[("version", env!("CARGO_PKG_VERSION"))]),
        1.0
    );

    // A new process counts from zero, but learns the store's size from a scan.
    drop(client);
    proxy.restart();
    let m = scrape_until(&proxy, "the start-up scan", |m| {
        m.value("regcache_cache_entries", &[]) == 2.0
    })
    .await;
    assert_eq!(m.value("regcache_cache_size_bytes", &[]), n + manifest_len);
    assert_eq!(m.sum("regcache_requests_total", &[ghcr, ("outcome", "hit")]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_client_handshakes_are_counted_by_reason() {
    support::install_crypto_provider();
    let proxy = Regcache::start::<&str>(&[]);

    // A client that does not trust regcache's CA rejects the minted certificate with an alert.
    let mut tcp = connect_through(proxy.addr(), "ghcr.io:443").await;
    let stranger = TestCa::new().rustls_client_config();
    let name = rustls::pki_types::ServerName::try_from("ghcr.io").unwrap();
    let handshake = tokio_rustls::TlsConnector::from(stranger).connect(name, &mut tcp).await;
    assert!(handshake.is_err(), "the stranger's client must refuse regcache's leaf");
    drop(tcp);
    // A client that leaves before saying anything.
    drop(connect_through(proxy.addr(), "ghcr.io:443").await);

    let m = scrape_until(&proxy, "both failures", |m| {
        m.value("regcache_tls_handshake_errors_total", &[("reason", "rejected")]) == 1.0
            && m.value("regcache_tls_handshake_errors_total", &[("reason", "aborted")]) == 1.0
    })
    .await;
    assert_eq!(m.value("regcache_tls_handshakes_total", &[]), 0.0);
    assert_eq!(
        m.value("regcache_tls_handshake_errors_total", &[("reason", "timeout")]),
        0.0
    );
}

/// Opens a CONNECT tunnel through the proxy and reads its `200` answer.
async fn connect_through(proxy: SocketAddr, target: &str) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    s
}

/// Pulls the stand-in Docker Hub's manifest and blob through the proxy twice (a miss, then a
/// hit each), plus a HEAD: every metric family then has a series.
async fn exercise_docker_hub(proxy: &Regcache, hub: &FakeHub) {
    let client = client_via(proxy);
    let manifest_url = format!("https://{DOCKER_HUB_HOST}/v2/library/alpine/manifests/latest");
    let blob_url = format!("https://{DOCKER_HUB_HOST}/v2/library/alpine/blobs/{}", hub.blob_digest);
    for expected in ["MISS", "HIT"] {
        let (x_cache, body) = get(&client, &manifest_url, Some(OCI_MANIFEST)).await;
        assert_eq!((x_cache.as_str(), &body), (expected, &hub.manifest));
        let (x_cache, body) = get(&client, &blob_url, None).await;
        assert_eq!((x_cache.as_str(), &body), (expected, &hub.blob));
    }
    let head = client
        .head(format!(
            "https://{DOCKER_HUB_HOST}/v2/library/alpine/manifests/{}",
            hub.manifest_digest
        ))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(hub.count("GET", "/manifests/"), 1, "one pull counted by Docker Hub");
    assert_eq!(hub.count("GET", "/blobs/"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grafana_dashboard_queries_only_metrics_that_are_exposed() {
    let w = PullWorld::new();
    let hub = FakeHub::start(&w.ca).await;
    let proxy = Regcache::builder()
        .connect_to(&format!("{DOCKER_HUB_HOST}:443"), hub.addr)
        .upstream_ca(&w.upstream_ca_file)
        .start();
    exercise_docker_hub(&proxy, &hub).await;
    let docker = ("registry", "docker.io");
    let m = scrape_until(&proxy, "Docker Hub traffic", |m| {
        m.sum("regcache_requests_total", &[docker, ("outcome", "hit")]) == 3.0
    })
    .await;
    assert_eq!(
        m.value("regcache_upstream_ratelimit_remaining", &[docker]),
        HUB_REMAINING as f64
    );
    assert_eq!(
        m.value("regcache_upstream_requests_total", &[docker, ("kind", "manifest_get")]),
        1.0
    );
    let exposed = m.exposed_names();

    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/regcache-dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));

    // A Prometheus data source variable, used by every panel and target.
    let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
    let ds = variables
        .iter()
        .find(|v| v["type"] == "datasource" && v["query"] == "prometheus")
        .expect("a datasource variable of type prometheus");
    let ds_ref = format!("${{{}}}", ds["name"].as_str().expect("variable name"));

    let mut panels = Vec::new();
    collect_panels(&dashboard["panels"], &mut panels);
    assert!(!panels.is_empty(), "no panels");
    let mut used = BTreeSet::new();
    let mut titles = Vec::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().expect("panel title").to_string();
        assert_eq!(panel["datasource"]["uid"], ds_ref.as_str(), "{title}: data source");
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for target in targets {
            let expr = target["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: target without expr"));
            let names = metric_names_in(expr);
            assert!(!names.is_empty(), "{title}: {expr:?} uses no regcache metric");
            for name in names {
                assert!(
                    exposed.contains(&name),
                    "{title}: {expr:?} uses {name}, which /metrics does not expose; it has {exposed:#?}"
                );
                used.insert(name);
            }
        }
        titles.push(title.to_lowercase());
    }
    for wanted in [
        "hit ratio",
        "requests by outcome",
        "bytes from cache",
        "manifest gets",
        "ratelimit",
        "downloads",
        "cache size",
        "tls",
    ] {
        assert!(
            titles.iter().any(|t| t.contains(wanted)),
            "no panel about {wanted:?}: {titles:?}"
        );
    }
    for needed in [
        "regcache_requests_total",
        "regcache_cache_served_bytes_total",
        "regcache_upstream_fetched_bytes_total",
        "regcache_upstream_requests_total",
        "regcache_upstream_ratelimit_remaining",
        "regcache_downloads_in_flight",
        "regcache_cache_size_bytes",
        "regcache_tls_handshake_errors_total",
    ] {
        assert!(used.contains(needed), "the dashboard never queries {needed}");
    }
}

/// Every panel, including those nested in collapsed rows.
fn collect_panels<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a serde_json::Value>) {
    for panel in value.as_array().into_iter().flatten() {
        out.push(panel);
        collect_panels(&panel["panels"], out);
    }
}

/// The `regcache_*` identifiers in a PromQL expression (label values in quotes skipped).
fn metric_names_in(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut in_quotes = false;
    let mut word = String::new();
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_quotes = !in_quotes;
        }
        if !in_quotes && (c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            word.push(c);
            continue;
        }
        if word.starts_with("regcache_") {
            names.insert(std::mem::take(&mut word));
        }
        word.clear();
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_renders_in_chromium_with_the_real_numbers() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} not found: the status page test needs Debian's chromium package \
         (tests/run.sh installs it; or apt-get install chromium)"
    );
    let w = PullWorld::new();
    let registry = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let hub = FakeHub::start(&w.ca).await;
    let image = TestImage::generate(&[512 * 1024, 200 * 1024]);
    support::push(&registry.url(), "team/app", "v1", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();
    let proxy = Regcache::builder()
        .connect_to("ghcr.io:443", registry.addr())
        .connect_to(&format!("{DOCKER_HUB_HOST}:443"), hub.addr)
        .upstream_ca(&w.upstream_ca_file)
        .start();

    // Two real pulls of one image (the second from the cache), and Docker Hub traffic.
    tokio::task::block_in_place(|| {
        w.pull_through(&proxy, "docker://ghcr.io/team/app:v1", None, &image);
        w.pull_through(&proxy, "docker://ghcr.io/team/app:v1", None, &image);
    });
    exercise_docker_hub(&proxy, &hub).await;
    let ghcr = ("registry", "ghcr.io");
    let blobs = image.blob_digests().len() as f64;
    scrape_until(&proxy, "the second pull's hits", |m| {
        m.sum("regcache_requests_total", &[ghcr, ("outcome", "hit")]) >= blobs + 1.0
    })
    .await;
    // Settled: two scrapes a moment apart agree on every cacheable request counter.
    let cacheable_counts = |m: &Exposition| {
        ["hit", "miss", "revalidated", "stale"].map(|o| m.sum("regcache_requests_total", &[("outcome", o)]))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        let (a, _) = scrape(&proxy).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (b, text) = scrape(&proxy).await;
        if cacheable_counts(&a) == cacheable_counts(&b) {
            break b;
        }
        assert!(Instant::now() < deadline, "request counters never settled:\n{text}");
    };

    // curl and scripts keep the one-line banner; browsers get the page.
    let base = format!("http://{}/", proxy.addr());
    let banner = direct_client().get(&base).send().await.unwrap().text().await.unwrap();
    assert!(
        banner.starts_with("regcache ") && banner.lines().count() == 1,
        "{banner}"
    );
    let page = direct_client()
        .get(&base)
        .header("accept", "text/html,application/xhtml+xml;q=0.9,*/*;q=0.8")
        .send()
        .await
        .unwrap();
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.text().await.unwrap().starts_with("<!DOCTYPE html>"));

    // What the page must say, from the metrics.
    let outcome = |o: &str| m.sum("regcache_requests_total", &[("outcome", o)]) as u64;
    let answered = outcome("hit") + outcome("revalidated") + outcome("stale");
    let cacheable = answered + outcome("miss");
    let ratio = format!("{:.1}%", answered as f64 * 100.0 / cacheable as f64);
    let saved = m.sum("regcache_cache_served_bytes_total", &[]) as u64;
    let avoided = m.sum("regcache_upstream_manifest_gets_avoided_total", &[]) as u64;
    let entries = m.value("regcache_cache_entries", &[]) as u64;
    let size = m.value("regcache_cache_size_bytes", &[]) as u64;
    assert!(saved >= image.total_blob_size(), "the second pull came from the cache");
    assert!(
        avoided >= 2,
        "the second pull and the second Docker Hub GET avoided a pull"
    );

    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let dom = tokio::task::block_in_place(|| chromium(&w.tmp.path().join("chromium-dom"), &["--dump-dom", &base]));
    let expect = [
        format!("id=\"hit-ratio\" title=\"{answered} of {cacheable}\">{ratio}</div>"),
        format!("id=\"bytes-saved\" title=\"{saved} bytes\">"),
        format!("id=\"pulls-avoided\" title=\"{avoided}\">"),
        format!("id=\"docker-hub-quota\" title=\"{HUB_REMAINING}\">{HUB_REMAINING}</div>"),
        format!("id=\"cache-size\" title=\"{size} bytes\">"),
        format!("<span id=\"cache-entries\">{entries}</span>"),
        "budget: no limit".to_string(),
        "<td>ghcr.io</td><td>team/app</td>".to_string(),
        "<td>docker.io</td><td>library/alpine</td>".to_string(),
        format!("version {}", env!("CARGO_PKG_VERSION")),
    ];
    std::fs::write(artifacts.join("status-page.html"), &dom).unwrap();
    for needle in &expect {
        assert!(dom.contains(needle.as_str()), "rendered DOM lacks {needle:?}:\n{dom}");
    }

    let png = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&png);
    let screenshot = format!("--screenshot={}", png.display());
    tokio::task::block_in_place(|| {
        chromium(
            &w.tmp.path().join("chromium-shot"),
            &[&screenshot, "--window-size=1200,900", &base],
        )
    });
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("no screenshot at {}: {e}", png.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(bytes.len() > 10_000, "a blank screenshot? {} bytes", bytes.len());
    println!("status page screenshot: {}", png.display());
}

/// Runs headless Chromium with `args` (its profile in `profile`), waits up to 60 s, and
/// returns its standard output; panics with its output when it fails.
fn chromium(profile: &Path, args: &[&str]) -> String {
    let out_file = profile.with_extension("stdout");
    let err_file = profile.with_extension("stderr");
    let mut child = Command::new(CHROMIUM)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--no-proxy-server"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).unwrap())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {CHROMIUM}: {e}"));
    let status = support::poll_until(Duration::from_secs(60), || child.try_wait().ok().flatten());
    let read = |p: &PathBuf| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("chromium {args:?} did not finish in 60 s; stderr:\n{}", read(&err_file));
    };
    assert!(
        status.success(),
        "chromium {args:?} failed ({status}); stderr:\n{}",
        read(&err_file)
    );
    read(&out_file)
}
