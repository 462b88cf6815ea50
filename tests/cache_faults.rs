//! The registry cache against an in-process registry that misbehaves on demand
//! ([`support::FaultRegistry`]): cut and corrupted downloads, 429/503/timeouts and outages
//! during revalidation, redirects to a CDN, Range requests, HEAD answered locally, tag
//! revalidation intervals, one download per blob, content negotiation, several registries,
//! and a cache directory that cannot be written.
//!
//! Clients are reqwest through regcache (trusting only regcache's CA, no redirects followed
//! client-side, so whatever the client sees is what regcache answered).

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use support::image::{DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST};
use support::{Fault, FaultRegistry, FaultRule, Regcache, TestCa};

// ----- world ---------------------------------------------------------------------------------

struct World {
    ca: TestCa,
    tmp: tempfile::TempDir,
    ca_file: PathBuf,
}

fn world() -> World {
    support::install_crypto_provider();
    let ca = TestCa::new();
    let tmp = tempfile::tempdir().unwrap();
    let ca_file = ca.write_cert(tmp.path());
    World { ca, tmp, ca_file }
}

/// regcache with `--connect-to HOST:443=<registry>` for each pair, trusting the test CA
/// upstream, plus `args`.
fn proxy(w: &World, hosts: &[(&str, &FaultRegistry)], args: &[&str]) -> Regcache {
    let mut b = Regcache::builder().upstream_ca(&w.ca_file).args(args);
    for (host, reg) in hosts {
        let host_port = if host.contains(':') {
            host.to_string()
        } else {
            format!("{host}:443")
        };
        b = b.connect_to(&host_port, reg.addr());
    }
    b.start()
}

fn tls_config(ca_pem: &str, http1_only: bool) -> rustls::ClientConfig {
    let mut config = support::rustls_client_config(&[ca_pem]).as_ref().clone();
    if http1_only {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    config
}

/// A client through regcache trusting only its CA; redirects are not followed.
fn client(p: &Regcache) -> reqwest::Client {
    client_with(p, false)
}

fn client_with(p: &Regcache, http1_only: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config(&p.ca_cert_pem(), http1_only))
        .proxy(reqwest::Proxy::all(p.proxy_url()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30));
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

/// A client straight to a fault registry (fixture self-tests).
fn direct_client(ca: &TestCa, http1_only: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(tls_config(&ca.cert_pem(), http1_only))
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30));
    if http1_only {
        b = b.http1_only();
    }
    b.build().unwrap()
}

/// What a client got: status, headers, and the body or the error that ended it.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: HeaderMap,
    body: Result<Bytes, String>,
}

impl Got {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn x_cache(&self) -> Option<&str> {
        self.header("x-cache")
    }
    fn body(&self) -> &Bytes {
        self.body.as_ref().expect("response body read completely")
    }
    /// 200 with a body of exactly `len` bytes that ended cleanly.
    fn looks_complete(&self, len: usize) -> bool {
        self.status == 200 && self.body.as_ref().is_ok_and(|b| b.len() == len)
    }
}

async fn send(req: reqwest::RequestBuilder) -> Result<Got, String> {
    let res = req.send().await.map_err(|e| format!("{e:?}"))?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.bytes().await.map_err(|e| format!("{e:?}"));
    Ok(Got { status, headers, body })
}

async fn get(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = c.get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req).await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

async fn head(c: &reqwest::Client, url: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = c.head(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(req).await.unwrap_or_else(|e| panic!("HEAD {url}: {e}"))
}

fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore as _;
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    v
}

/// An image stored in a fault registry: config and layer blobs plus a manifest.
#[derive(Clone, Debug)]
struct Img {
    media_type: &'static str,
    manifest: Vec<u8>,
    digest: String,
    config_digest: String,
    /// `(digest, bytes)` per layer.
    layers: Vec<(String, Bytes)>,
}

/// Stores random layers of `sizes`, a config and a manifest (`media_type`: OCI or Docker
/// schema 2) in `reg` under `repo`, tagged `tag` if given.
fn put_image(reg: &FaultRegistry, repo: &str, tag: Option<&str>, media_type: &'static str, sizes: &[usize]) -> Img {
    let layers: Vec<(String, Bytes)> = sizes
        .iter()
        .map(|&n| {
            let data = Bytes::from(random_bytes(n));
            (reg.put_blob(data.clone()), data)
        })
        .collect();
    let (config_type, layer_type) = if media_type == DOCKER_MANIFEST {
        (
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.docker.image.rootfs.diff.tar",
        )
    } else {
        (OCI_CONFIG, "application/vnd.oci.image.layer.v1.tar")
    };
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Labels": { "nonce": support::random_hex(8) } },
        "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>() },
    }))
    .unwrap();
    let config_len = config.len();
    let config_digest = reg.put_blob(config);
    let manifest = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": { "mediaType": config_type, "digest": config_digest, "size": config_len },
        "layers": layers.iter().map(|(d, b)| serde_json::json!({
            "mediaType": layer_type, "digest": d, "size": b.len()
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let digest = reg.put_manifest(repo, tag, media_type, manifest.clone());
    Img {
        media_type,
        manifest,
        digest,
        config_digest,
        layers,
    }
}

/// An index (`media_type`: OCI index or Docker list) over `children`, stored under `repo`.
fn put_index(
    reg: &FaultRegistry,
    repo: &str,
    tag: Option<&str>,
    media_type: &str,
    children: &[&Img],
) -> (String, Vec<u8>) {
    let body = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": children.iter().map(|c| serde_json::json!({
            "mediaType": c.media_type, "digest": c.digest, "size": c.manifest.len(),
            "platform": { "architecture": "amd64", "os": "linux" }
        })).collect::<Vec<_>>(),
    }))
    .unwrap();
    let digest = reg.put_manifest(repo, tag, media_type, body.clone());
    (digest, body)
}

fn manifest_url(host: &str, repo: &str, reference: &str) -> String {
    format!("https://{host}/v2/{repo}/manifests/{reference}")
}

fn blob_url(host: &str, repo: &str, digest: &str) -> String {
    format!("https://{host}/v2/{repo}/blobs/{digest}")
}

/// Where cacache keeps content whose sha256 is `digest`.
fn cached_content_path(data_dir: &Path, digest: &str) -> PathBuf {
    let hex = digest.trim_start_matches("sha256:");
    data_dir
        .join("cache/content-v2/sha256")
        .join(&hex[..2])
        .join(&hex[2..4])
        .join(&hex[4..])
}

fn assert_x_cache(got: &Got, expected: &str, what: &str, p: &Regcache) {
    assert_eq!(
        got.x_cache(),
        Some(expected),
        "{what}: X-Cache (status {}); regcache log:\n{}",
        got.status,
        p.logs()
    );
}

fn assert_stale(got: &Got, expected_body: &[u8], what: &str, p: &Regcache) {
    assert_eq!(got.status, 200, "{what}: status; log:\n{}", p.logs());
    assert_eq!(got.body().as_ref(), expected_body, "{what}: body");
    assert_x_cache(got, "STALE", what, p);
    let warning = got.header("warning").unwrap_or_default();
    assert!(
        warning.contains("110") && warning.contains("\"Response is Stale\""),
        "{what}: Warning header {warning:?}"
    );
}

const H: &str = "ghcr.io";
const REPO: &str = "team/app";

// ----- fixture self-tests (no proxy) ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_fault_registry_serves_content_and_faults() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let img = put_image(&reg, REPO, Some("v1"), OCI_MANIFEST, &[100_000]);
    let (layer, data) = img.layers[0].clone();
    let base = reg.url();
    for http1 in [false, true] {
        let c = direct_client(&w.ca, http1);
        let got = get(&c, &format!("{base}/v2/"), &[]).await;
        assert_eq!(got.status, 200);

        // Manifest by tag and digest, with content negotiation.
        let url = format!("{base}/v2/{REPO}/manifests/v1");
        let got = get(&c, &url, &[("accept", OCI_MANIFEST)]).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body().as_ref(), img.manifest.as_slice());
        assert_eq!(got.header("content-type"), Some(OCI_MANIFEST));
        assert_eq!(got.header("docker-content-digest"), Some(img.digest.as_str()));
        assert_eq!(get(&c, &url, &[("accept", DOCKER_MANIFEST)]).await.status, 404);
        let got = head(&c, &url, &[("accept", "*/*")]).await;
        assert_eq!(got.status, 200);
        assert_eq!(
            got.header("content-length"),
            Some(img.manifest.len().to_string().as_str())
        );
        let by_digest = format!("{base}/v2/{REPO}/manifests/{}", img.digest);
        assert_eq!(get(&c, &by_digest, &[("accept", OCI_MANIFEST)]).await.status, 200);
        assert_eq!(get(&c, &by_digest, &[("accept", OCI_INDEX)]).await.status, 404);

        // Blob, HEAD, ranges, /cdn/.
        let burl = format!("{base}/v2/{REPO}/blobs/{layer}");
        let got = get(&c, &burl, &[]).await;
        assert_eq!(got.body().as_ref(), data.as_ref());
        assert_eq!(got.header("content-type"), Some("application/octet-stream"));
        let got = head(&c, &burl, &[]).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("content-length"), Some("100000"));
        assert!(got.body().is_empty());
        let got = get(&c, &burl, &[("range", "bytes=10-19")]).await;
        assert_eq!(got.status, 206);
        assert_eq!(got.header("content-range"), Some("bytes 10-19/100000"));
        assert_eq!(got.body().as_ref(), &data[10..20]);
        assert_eq!(get(&c, &burl, &[("range", "bytes=100000-")]).await.status, 416);
        let got = get(&c, &format!("{base}/cdn/{layer}?sig=1"), &[]).await;
        assert_eq!(got.body().as_ref(), data.as_ref());
        assert_eq!(
            get(&c, &format!("{base}/v2/{REPO}/blobs/sha256:{}", "0".repeat(64)), &[])
                .await
                .status,
            404
        );

        // Faults.
        reg.set_fault(&layer, Fault::CutAfter(1000));
        let got = send(c.get(&burl)).await;
        assert!(
            got.as_ref().is_err() || got.as_ref().is_ok_and(|g| g.body.is_err()),
            "cut body must end in an error: {got:?}"
        );
        reg.set_fault(&layer, Fault::WrongBytes);
        let got = get(&c, &burl, &[]).await;
        assert_eq!(got.body().len(), data.len());
        assert_ne!(got.body().as_ref(), data.as_ref());
        reg.set_fault(&layer, Fault::Status(429));
        let got = get(&c, &burl, &[]).await;
        assert_eq!(got.status, 429);
        assert_eq!(got.header("retry-after"), Some("1"));
        reg.set_fault(
            &layer,
            Fault::Redirect {
                location: "/cdn/x".into(),
            },
        );
        let got = get(&c, &burl, &[]).await;
        assert_eq!((got.status, got.header("location")), (307, Some("/cdn/x")));
        reg.set_fault(&layer, Fault::DelayHeaders(Duration::from_millis(300)));
        let t = Instant::now();
        assert_eq!(get(&c, &burl, &[]).await.status, 200);
        assert!(t.elapsed() >= Duration::from_millis(300));
        reg.set_fault(
            &layer,
            Fault::SlowBody {
                chunk: 25_000,
                every: Duration::from_millis(100),
            },
        );
        let t = Instant::now();
        assert_eq!(get(&c, &burl, &[]).await.body().as_ref(), data.as_ref());
        assert!(t.elapsed() >= Duration::from_millis(300));
        reg.clear_faults();
        reg.add_fault(FaultRule::new(&layer, Fault::Status(503)).method("HEAD").times(1));
        assert_eq!(get(&c, &burl, &[]).await.status, 200, "rule only for HEAD");
        assert_eq!(head(&c, &burl, &[]).await.status, 503);
        assert_eq!(head(&c, &burl, &[]).await.status, 200, "rule used up");
    }
    let got = get(
        &direct_client(&w.ca, false),
        &format!("{base}/v2/"),
        &[("authorization", "Bearer xyz")],
    )
    .await;
    assert_eq!(got.status, 200);
    let last = reg.requests().pop().unwrap();
    assert_eq!(last.authorization.as_deref(), Some("Bearer xyz"));
    assert!(reg.count("GET", &layer) >= 10);
    assert!(reg.completed("GET", &layer) >= 2);
    assert!(reg.connections() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_fault_registry_stops_and_starts_on_the_same_port() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let c = direct_client(&w.ca, true);
    let url = format!("{}/v2/", reg.url());
    assert_eq!(get(&c, &url, &[]).await.status, 200);
    reg.stop();
    assert!(!reg.is_running());
    assert!(
        std::net::TcpStream::connect(reg.addr()).is_err(),
        "port closed while stopped"
    );
    assert!(send(c.get(&url)).await.is_err(), "pooled connection was dropped too");
    reg.start();
    assert_eq!(get(&c, &url, &[]).await.status, 200);
    assert!(reg.connections() >= 2);
}

// ----- blobs: verification -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_blob_download_is_not_cached_and_the_next_pull_succeeds() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let data = Bytes::from(random_bytes(1024 * 1024));
    let digest = reg.put_blob(data.clone());
    let p = proxy(&w, &[(H, &reg)], &[]);
    let c = client(&p);
    let url = blob_url(H, REPO, &digest);

    reg.set_fault(&digest, Fault::CutAfter(300_000));
    let got = send(c.get(&url)).await;
    if let Ok(got) = &got {
        assert!(
            !got.looks_complete(data.len()),
            "a cut download must not look complete to the client: status {} body {:?}",
            got.status,
            got.body.as_ref().map(|b| b.len())
        );
    }
    let after_cut = reg.count("GET", &digest);
    assert!(after_cut >= 1);

    reg.clear_faults();
    let got = get(&c, &url, &[]).await;
    assert_eq!(got.status, 200, "{}", p.logs());
    assert_eq!(got.body().as_ref(), data.as_ref());
    assert_x_cache(&got, "MISS", "after a cut download nothing is cached", &p);
    assert_eq!(reg.count("GET", &digest), after_cut + 1, "went upstream again");

    let got = get(&c, &url, &[]).await;
    assert_eq!(got.body().as_ref(), data.as_ref());
    assert_x_cache(&got, "HIT", "complete download cached", &p);
    assert_eq!(reg.count("GET", &digest), after_cut + 1, "a hit needs no upstream GET");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_with_wrong_bytes_is_not_cached() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let data = Bytes::from(random_bytes(512 * 1024));
    let digest = reg.put_blob(data.clone());
    let p = proxy(&w, &[(H, &reg)], &[]);
    let c = client(&p);
    let url = blob_url(H, REPO, &digest);

    reg.set_fault(&digest, Fault::WrongBytes);
    for attempt in 1..=2 {
        if let Ok(got) = send(c.get(&url)).await {
            assert!(
                !got.looks_complete(data.len()),
                "attempt {attempt}: bytes not matching the digest must not reach the client as a \
                 complete body: status {} X-Cache {:?}",
                got.status,
                got.x_cache()
            );
        }
        assert!(
            reg.count("GET", &digest) >= attempt,
            "attempt {attempt} went upstream (nothing cached)"
        );
    }
    reg.clear_faults();
    let before = reg.count("GET", &digest);
    let got = get(&c, &url, &[]).await;
    assert_eq!(got.body().as_ref(), data.as_ref());
    assert_x_cache(&got, "MISS", "good bytes after bad", &p);
    assert_eq!(reg.count("GET", &digest), before + 1);
    let got = get(&c, &url, &[]).await;
    assert_x_cache(&got, "HIT", "verified blob cached", &p);
    assert_eq!(got.body().as_ref(), data.as_ref());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_by_digest_with_wrong_bytes_is_not_cached() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let img = put_image(&reg, REPO, Some("v1"), OCI_MANIFEST, &[1000]);
    let p = proxy(&w, &[(H, &reg)], &[]);
    let c = client(&p);
    let url = manifest_url(H, REPO, &img.digest);
    let accept = [("accept", OCI_MANIFEST)];
    let path = format!("/manifests/{}", img.digest);

    reg.set_fault(&path, Fault::WrongBytes);
    for attempt in 1..=2 {
        if let Ok(got) = send(c.get(&url).header("accept", OCI_MANIFEST)).await {
            assert!(
                !(got.status == 200 && got.body.as_ref().is_ok_and(|b| support::sha256_digest(b) != img.digest)),
                "attempt {attempt}: a manifest not matching its digest reached the client as 200"
            );
        }
        assert_eq!(reg.count("GET", &path), attempt, "attempt {attempt} went upstream");
    }
    reg.clear_faults();
    let got = get(&c, &url, &accept).await;
    assert_eq!(got.body().as_ref(), img.manifest.as_slice());
    assert_x_cache(&got, "MISS", "good manifest after bad", &p);
    let got = get(&c, &url, &accept).await;
    assert_eq!(got.body().as_ref(), img.manifest.as_slice());
    assert_x_cache(&got, "HIT", "verified manifest cached", &p);
    assert_eq!(reg.count("GET", &path), 3);
}

// ----- stale serving -------------------------------------------------------------------------

/// Caches `team/app:v1` with `--tag-ttl 0`, then revalidation meets `fault`: the cached
/// manifest is served stale.
async fn stale_on_revalidation(fault: Fault, extra: &[&str]) {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let img = put_image(&reg, REPO, Some("v1"), OCI_MANIFEST, &[1000]);
    let mut args = vec!["--tag-ttl", "0"];
    args.extend_from_slice(extra);
    let p = proxy(&w, &[(H, &reg)], &args);
    let c = client(&p);
    let url = manifest_url(H, REPO, "v1");
    let accept = [("accept", OCI_MANIFEST)];

    let got = get(&c, &url, &accept).await;
    assert_eq!(got.status, 200);
    assert_x_cache(&got, "MISS", "first pull", &p);
    assert_eq!(reg.count("GET", "/manifests/v1"), 1);

    reg.set_fault("/manifests/v1", fault.clone());
    let heads = reg.count("HEAD", "/manifests/v1");
    let t = Instant::now();
    let got = get(&c, &url, &accept).await;
    let took = t.elapsed();
    assert_stale(&got, &img.manifest, &format!("revalidation met {fault:?}"), &p);
    assert_eq!(got.header("docker-content-digest"), Some(img.digest.as_str()));
    assert!(
        reg.count("HEAD", "/manifests/v1") > heads,
        "regcache tried to revalidate with HEAD"
    );
    assert_eq!(
        reg.count("GET", "/manifests/v1"),
        1,
        "revalidation is a HEAD, never a GET"
    );
    if let Fault::DelayHeaders(d) = fault {
        assert!(
            took < d,
            "stale answer after the response timeout, not after {d:?} ({took:?})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidation_429_serves_stale_with_warning() {
    stale_on_revalidation(Fault::Status(429), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidation_503_serves_stale_with_warning() {
    stale_on_revalidation(Fault::Status(503), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revalidation_timeout_serves_stale_with_warning() {
    stale_on_revalidation(
        Fault::DelayHeaders(Duration::from_secs(5)),
        &["--response-timeout", "1s"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_ping_answered_locally_and_cached_image_served() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let img = put_image(&reg, REPO, Some("v1"), OCI_MANIFEST, &[200_000, 3000]);
    let p = proxy(&w, &[(H, &reg)], &["--tag-ttl", "0"]);
    let accept = [("accept", OCI_MANIFEST)];
    {
        let c = client(&p);
        assert_eq!(get(&c, &format!("https://{H}/v2/"), &[]).await.status, 200);
        assert_eq!(get(&c, &manifest_url(H, REPO, "v1"), &accept).await.status, 200);
        assert_eq!(get(&c, &manifest_url(H, REPO, &img.digest), &accept).await.status, 200);
        for (d, _) in &img.layers {
            assert_eq!(get(&c, &blob_url(H, REPO, d), &[]).await.status, 200);
        }
        assert_eq!(get(&c, &blob_url(H, REPO, &img.config_digest), &[]).await.status, 200);
    }

    reg.stop();
    let before = reg.request_count();
    let c = client(&p);
    let got = get(&c, &format!("https://{H}/v2/"), &[]).await;
    assert_eq!(got.status, 200, "GET /v2/ answered by regcache while upstream is down");
    assert!(got.x_cache().is_some(), "X-Cache on every registry response");

    let got = get(&c, &manifest_url(H, REPO, "v1"), &accept).await;
    assert_stale(&got, &img.manifest, "tag while upstream is down", &p);
    let got = get(&c, &manifest_url(H, REPO, &img.digest), &accept).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body().as_ref(), img.manifest.as_slice());
    assert_x_cache(&got, "HIT", "manifest by digest while down", &p);
    for (d, data) in &img.layers {
        let got = get(&c, &blob_url(H, REPO, d), &[]).await;
        assert_eq!(got.body().as_ref(), data.as_ref());
        assert_x_cache(&got, "HIT", "blob while down", &p);
    }
    let got = head(&c, &blob_url(H, REPO, &img.config_digest), &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(reg.request_count(), before);

    // Back up: the tag is revalidated again.
    reg.start();
    let got = get(&c, &manifest_url(H, REPO, "v1"), &accept).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body().as_ref(), img.manifest.as_slice());
    assert_x_cache(&got, "REVALIDATED", "tag once upstream is back", &p);
    assert!(got.header("warning").is_none(), "no Warning once revalidated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_serving_ends_after_max_stale() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let img = put_image(&reg, REPO, Some("v1"), OCI_MANIFEST, &[1000]);
    let p = proxy(&w, &[(H, &reg)], &["--tag-ttl", "0", "--max-stale", "2s"]);
    let c = client(&p);
    let url = manifest_url(H, REPO, "v1");
    let accept = [("accept", OCI_MANIFEST)];
    assert_eq!(get(&c, &url, &accept).await.status, 200);
    reg.stop();
    assert_stale(&get(&c, &url, &accept).await, &img.manifest, "within max-stale", &p);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let got = get(&c, &url, &accept).await;
    assert_ne!(
        got.status,
        200,
        "beyond --max-stale the tag must not be served (X-Cache {:?})",
        got.x_cache()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_tag_is_not_served_from_cache_after_the_interval() {
    // Inferred from the spec: only unreachable/timeout/5xx/429 are served stale; the
    // registry's own verdict (404 for a deleted tag, 401 for revoked access) reaches the client.
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    put_image(&reg, REPO, Some("gone"), OCI_MANIFEST, &[1000]);
    put_image(&reg, REPO, Some("private"), OCI_MANIFEST, &[1000]);
    let p = proxy(&w, &[(H, &reg)], &["--tag-ttl", "0"]);
    let c = client(&p);
    let accept = [("accept", OCI_MANIFEST)];
    assert_eq!(get(&c, &manifest_url(H, REPO, "gone"), &accept).await.status, 200);
    assert_eq!(get(&c, &manifest_url(H, REPO, "private"), &accept).await.status, 200);
    reg.untag(REPO, "gone");
    let got = get(&c, &manifest_url(H, REPO, "gone"), &accept).await;
    assert_eq!(got.status, 404, "X-Cache {:?}", got.x_cache());
    reg.set_fault("/manifests/private", Fault::Status(401));
    let got = get(&c, &manifest_url(H, REPO, "private"), &accept).await;
    assert_eq!(got.status, 401, "X-Cache {:?}", got.x_cache());
}

// ----- ranges --------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_requests_on_a_cached_blob() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let data = Bytes::from(random_bytes(1024 * 1024));
    let digest = reg.put_blob(data.clone());
    let p = proxy(&w, &[(H, &reg)], &[]);
    let c = client(&p);
    let url = blob_url(H, REPO, &digest);
    assert_eq!(get(&c, &url, &[]).await.body().as_ref(), data.as_ref());
    let gets = reg.count("GET", &digest);

    let got = get(&c, &url, &[("range", "bytes=1000-")]).await;
    assert_eq!(got.status, 206, "{}", p.logs());
    assert_eq!(got.header("content-range"), Some("bytes 1000-1048575/1048576"));
    assert_eq!(got.body().as_ref(), &data[1000..]);
    assert_x_cache(&got, "HIT", "range from a cached blob", &p);

    let got = get(&c, &url, &[("range", "bytes=10-19")]).await;
    assert_eq!(got.status, 206);
    assert_eq!(got.header("content-range"), Some("bytes 10-19/1048576"));
    assert_eq!(got.header("content-length"), Some("10"));
    assert_eq!(got.body().as_ref(), &data[10..20]);

    let got = get(&c, &url, &[("range", "bytes=1048575-")]).await;
    assert_eq!(got.status, 206);
    assert_eq!(got.body().as_ref(), &data[1_048_575..]);

    let got = get(&c, &url, &[("range", "bytes=2000000-")]).await;
    assert_eq!(got.status, 416);
    assert_eq!(
        reg.count("GET", &digest),
        gets,
        "ranges of a cached blob never go upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_requests_while_the_download_is_in_flight() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let data = Bytes::from(random_bytes(2 * 1024 * 1024));
    let digest = reg.put_blob(data.clone());
    // 32 chunks of 64 KiB, 60 ms apart: about two seconds in flight.
    reg.set_fault(
        &digest,
        Fault::SlowBody {
            chunk: 64 * 1024,
            every: Duration::from_millis(60),
        },
    );
    let p = proxy(&w, &[(H, &reg)], &[]);
    let url = blob_url(H, REPO, &digest);

    let first = {
        let c = client(&p);
        let url = url.clone();
        tokio::spawn(async move {
            let got = get(&c, &url, &[]).await;
            (got, Instant::now())
        })
    };
    assert_eq!(
        reg.wait_for_count("GET", &digest, 1, Duration::from_secs(10)),
        1,
        "download started"
    );
    let c = client(&p);
    let got = get(&c, &url, &[("range", "bytes=100-199")]).await;
    let small_done = Instant::now();
    assert_eq!(got.status, 206, "{}", p.logs());
    assert_eq!(got.header("content-range"), Some("bytes 100-199/2097152"));
    assert_eq!(got.body().as_ref(), &data[100..200]);

    let got = get(&c, &url, &[("range", "bytes=1048576-")]).await;
    assert_eq!(got.status, 206);
    assert_eq!(got.header("content-range"), Some("bytes 1048576-2097151/2097152"));
    assert_eq!(got.body().as_ref(), &data[1_048_576..]);

    let (full, full_done) = first.await.unwrap();
    assert_eq!(full.body().as_ref(), data.as_ref());
    assert!(
        small_done < full_done,
        "the first bytes are served from the in-flight download, before it ends"
    );
    assert_eq!(reg.count("GET", &digest), 1, "one upstream download for all three");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_request_on_a_miss_is_honoured() {
    // The distribution registry's proxy mode ignores Range on a miss; containerd resumes
    // interrupted downloads with `Range: bytes=N-` and expects a 206.
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let data = Bytes::from(random_bytes(600_000));
    let digest = reg.put_blob(data.clone());
    let p = proxy(&w, &[(H, &reg)], &[]);
    let c = client(&p);
    let url = blob_url(H, REPO, &digest);
    let got = get(&c, &url, &[("range", "bytes=500000-")]).await;
    assert_eq!(got.status, 206, "X-Cache {:?}", got.x_cache());
    assert_eq!(got.header("content-range"), Some("bytes 500000-599999/600000"));
    assert_eq!(got.body().as_ref(), &data[500_000..]);
    let got = get(&c, &url, &[("range", "bytes=0-99")]).await;
    assert_eq!(got.status, 206);
    assert_eq!(got.body().as_ref(), &data[..100]);
    let got = get(&c, &url, &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body().as_ref(), data.as_ref());
}

// ----- HEAD ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_on_cached_manifest_and_blob_is_answered_locally() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let img = put_image(&reg, REPO, Some("v1"), DOCKER_MANIFEST, &[70_000]);
    let (layer, data) = img.layers[0].clone();
    let p = proxy(&w, &[(H, &reg)], &[]);
    let c = client(&p);
    let accept = [("accept", DOCKER_MANIFEST)];
    assert_eq!(get(&c, &manifest_url(H, REPO, "v1"), &accept).await.status, 200);
    assert_eq!(get(&c, &manifest_url(H, REPO, &img.digest), &accept).await.status, 200);
    assert_eq!(
        get(&c, &blob_url(H, REPO, &layer), &[]).await.body().as_ref(),
        data.as_ref()
    );
    let before = reg.request_count();

    for reference in ["v1", img.digest.as_str()] {
        let got = head(&c, &manifest_url(H, REPO, reference), &accept).await;
        let what = format!("HEAD manifest {reference}");
        assert_eq!(got.status, 200, "{what}");
        assert_x_cache(&got, "HIT", &what, &p);
        assert_eq!(
            got.header("content-length"),
            Some(img.manifest.len().to_string().as_str()),
            "{what}"
        );
        assert_eq!(got.header("content-type"), Some(DOCKER_MANIFEST), "{what}");
        assert_eq!(got.header("docker-content-digest"), Some(img.digest.as_str()), "{what}");
        assert!(
            got.header("etag").is_some_and(|e| e.contains(&img.digest)),
            "{what}: ETag {:?}",
            got.header("etag")
        );
    }
    let got = head(&c, &blob_url(H, REPO, &layer), &[]).await;
    assert_eq!(got.status, 200);
    assert_x_cache(&got, "HIT", "HEAD blob", &p);
    assert_eq!(got.header("content-length"), Some("70000"));
    assert_eq!(got.header("content-type"), Some("application/octet-stream"));
    assert_eq!(got.header("docker-content-digest"), Some(layer.as_str()));
    assert!(got.header("etag").is_some_and(|e| e.contains(&layer)));
    assert_eq!(reg.request_count(), before, "HEADs of cached content never go upstream");
    // Through another repository, the blob must be shown to be in it first (one anonymous
    // HEAD upstream, never a GET); after that it is a plain hit.
    for _ in 0..2 {
        let got = head(&c, &blob_url(H, "other/repo", &layer), &[]).await;
        assert_eq!(got.status, 200);
        assert_x_cache(&got, "HIT", "HEAD blob via another repository", &p);
    }
    assert_eq!(reg.count("HEAD", &format!("/v2/other/repo/blobs/{layer}")), 1);
    assert_eq!(reg.request_count(), before + 1);
    // The access line is written when the response ends and read from a pipe: poll.
    let logged = support::poll_until(Duration::from_secs(5), || {
        p.logs()
            .lines()
            .any(|l| l.contains("method=HEAD") && l.contains(&layer) && l.contains("cache=\"hit\""))
            .then_some(())
    });
    assert!(logged.is_some(), "access log says cache=\"hit\": {}", p.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_on_uncached_content_is_a_head_upstream_never_a_get() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let img = put_image(&reg, REPO, Some("v1"), OCI_MANIFEST, &[50_000]);
    let (layer, _) = img.layers[0].clone();
    let p = proxy(&w, &[(H, &reg)], &[]);
    let c = client(&p);
    let accept = [("accept", OCI_MANIFEST)];

    let got = head(&c, &blob_url(H, REPO, &layer), &[]).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-length"), Some("50000"));
    assert!(got.x_cache().is_some(), "X-Cache on every registry response");
    let got = head(&c, &manifest_url(H, REPO, "v1"), &accept).await;
    assert_eq!(got.status, 200);
    assert_eq!(got.header("docker-content-digest"), Some(img.digest.as_str()));
    let got = head(&c, &manifest_url(H, REPO, &img.config_digest), &accept).await;
    assert_eq!(got.status, 404, "no such manifest");

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reg.count("HEAD", &layer), 1);
    assert_eq!(
        reg.count("GET", &layer),
        0,
        "a client HEAD never becomes an upstream GET"
    );
    assert_eq!(reg.count("HEAD", "/manifests/v1"), 1);
    assert_eq!(reg.count("GET", "/manifests/"), 0, "no manifest GET for HEADs");
}

// ----- tags ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_is_served_from_cache_within_the_interval_and_revalidated_with_one_head_after() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let img = put_image(&reg, REPO, Some("v1"), OCI_MANIFEST, &[1000]);
    let p = proxy(&w, &[(H, &reg)], &["--tag-ttl", "2s"]);
    let c = client(&p);
    let url = manifest_url(H, REPO, "v1");
    let accept = [("accept", OCI_MANIFEST)];
    let start = Instant::now();

    let got = get(&c, &url, &accept).await;
    assert_x_cache(&got, "MISS", "first pull", &p);
    let counts = || (reg.count("GET", "/manifests/v1"), reg.count("HEAD", "/manifests/v1"));
    assert_eq!(counts(), (1, 0));
    for _ in 0..3 {
        let got = get(&c, &url, &accept).await;
        assert_eq!(got.body().as_ref(), img.manifest.as_slice());
        assert_x_cache(&got, "HIT", "within the interval", &p);
    }
    assert_x_cache(&head(&c, &url, &accept).await, "HIT", "HEAD within the interval", &p);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "test too slow to be meaningful"
    );
    assert_eq!(counts(), (1, 0), "no upstream request within the interval");

    tokio::time::sleep(Duration::from_millis(2300).saturating_sub(start.elapsed())).await;
    let got = get(&c, &url, &accept).await;
    assert_eq!(got.body().as_ref(), img.manifest.as_slice());
    assert_x_cache(&got, "REVALIDATED", "after the interval", &p);
    assert_eq!(
        counts(),
        (1, 1),
        "exactly one HEAD and no GET when the digest is unchanged"
    );
    let got = get(&c, &url, &accept).await;
    assert_x_cache(&got, "HIT", "right after revalidation", &p);
    assert_eq!(counts(), (1, 1), "at most one revalidation per interval");
    let rev = reg.requests().into_iter().find(|r| r.method == "HEAD").unwrap();
    assert!(
        rev.accept.as_deref().is_some_and(|a| a.contains(OCI_MANIFEST)),
        "revalidation carries the client's Accept: {:?}",
        rev.accept
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_tag_serves_the_new_digest_after_the_interval() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let a = put_image(&reg, REPO, Some("latest"), OCI_MANIFEST, &[1000]);
    let b = put_image(&reg, REPO, None, OCI_MANIFEST, &[2000]);
    let p = proxy(&w, &[(H, &reg)], &["--tag-ttl", "1500ms"]);
    let c = client(&p);
    let url = manifest_url(H, REPO, "latest");
    let accept = [("accept", OCI_MANIFEST)];
    let start = Instant::now();
    assert_eq!(get(&c, &url, &accept).await.body().as_ref(), a.manifest.as_slice());
    reg.retag(REPO, "latest", &b.digest);
    let got = get(&c, &url, &accept).await;
    assert!(start.elapsed() < Duration::from_millis(1500), "test too slow");
    assert_eq!(
        got.body().as_ref(),
        a.manifest.as_slice(),
        "within the interval: cached"
    );

    tokio::time::sleep(Duration::from_millis(1800).saturating_sub(start.elapsed())).await;
    let got = get(&c, &url, &accept).await;
    assert_eq!(got.status, 200);
    assert_eq!(
        got.body().as_ref(),
        b.manifest.as_slice(),
        "the moved tag's new manifest"
    );
    assert_eq!(got.header("docker-content-digest"), Some(b.digest.as_str()));
    let got = get(&c, &url, &accept).await;
    assert_eq!(got.body().as_ref(), b.manifest.as_slice());
    assert_x_cache(&got, "HIT", "new digest cached", &p);
    // The old manifest stays reachable by digest.
    let got = get(&c, &manifest_url(H, REPO, &a.digest), &accept).await;
    assert_eq!(got.body().as_ref(), a.manifest.as_slice());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_revalidations_of_one_tag_make_one_upstream_head() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let img = put_image(&reg, REPO, Some("v1"), OCI_MANIFEST, &[1000]);
    let p = proxy(&w, &[(H, &reg)], &["--tag-ttl", "1s"]);
    let url = manifest_url(H, REPO, "v1");
    assert_eq!(get(&client(&p), &url, &[("accept", OCI_MANIFEST)]).await.status, 200);
    // Slow HEADs so that all the revalidations overlap.
    reg.add_fault(FaultRule::new("/manifests/v1", Fault::DelayHeaders(Duration::from_millis(700))).method("HEAD"));
    tokio::time::sleep(Duration::from_millis(1300)).await;

    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let c = client(&p);
            let url = url.clone();
            tokio::spawn(async move { get(&c, &url, &[("accept", OCI_MANIFEST)]).await })
        })
        .collect();
    for t in tasks {
        let got = t.await.unwrap();
        assert_eq!(got.status, 200);
        assert_eq!(got.body().as_ref(), img.manifest.as_slice());
    }
    assert_eq!(
        reg.count("HEAD", "/manifests/v1"),
        1,
        "one upstream HEAD for ten clients"
    );
    assert_eq!(reg.count("GET", "/manifests/v1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_ttl_rule_overrides_the_default_per_repo_and_tag() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    put_image(&reg, REPO, Some("stable"), OCI_MANIFEST, &[1000]);
    put_image(&reg, REPO, Some("edge"), OCI_MANIFEST, &[1000]);
    let p = proxy(
        &w,
        &[(H, &reg)],
        &["--tag-ttl", "0", "--tag-ttl-rule", "ghcr.io/team/*:stable=1h"],
    );
    let c = client(&p);
    let accept = [("accept", OCI_MANIFEST)];
    for _ in 0..2 {
        assert_eq!(get(&c, &manifest_url(H, REPO, "stable"), &accept).await.status, 200);
        assert_eq!(get(&c, &manifest_url(H, REPO, "edge"), &accept).await.status, 200);
    }
    assert_eq!(
        reg.count_any("/manifests/stable"),
        1,
        "rule: 1h, second pull from cache"
    );
    assert_eq!(reg.count("HEAD", "/manifests/edge"), 1, "default 0: always revalidated");
}

/// `Cache-Control: VALUE` from upstream on every answer for `path`.
fn cache_control(reg: &FaultRegistry, path: &str, value: &str) {
    reg.add_fault(FaultRule::new(
        path,
        Fault::Header {
            name: "cache-control".into(),
            value: value.into(),
        },
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_first_revalidates_a_tag_when_upstreams_max_age_ends() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let img = put_image(&reg, REPO, Some("v1"), OCI_MANIFEST, &[1000]);
    cache_control(&reg, "/manifests/v1", "max-age=5");
    // tag_ttl says an hour; upstream says five seconds and comes first.
    let p = proxy(
        &w,
        &[(H, &reg)],
        &["--tag-ttl", "1h", "--tag-ttl-mode", "upstream-first"],
    );
    let c = client(&p);
    let accept = [("accept", OCI_MANIFEST)];
    let url = manifest_url(H, REPO, "v1");
    assert_eq!(get(&c, &url, &accept).await.x_cache(), Some("MISS"));
    assert_eq!(get(&c, &url, &accept).await.x_cache(), Some("HIT"), "fresh for 5 s");
    assert_eq!(reg.count("HEAD", "/manifests/v1"), 0);
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    let again = get(&c, &url, &accept).await;
    assert_eq!(again.x_cache(), Some("REVALIDATED"), "stale after upstream's 5 s");
    assert_eq!(again.body(), &Bytes::from(img.manifest.clone()));
    assert_eq!(reg.count("HEAD", "/manifests/v1"), 1);
    // The revalidation sent upstream's ETag back; the registry answered 304.
    let heads: Vec<_> = reg
        .requests()
        .into_iter()
        .filter(|r| r.method == "HEAD" && r.path.ends_with("/manifests/v1"))
        .collect();
    assert_eq!(
        heads[0].if_none_match.as_deref(),
        Some(format!("\"{}\"", img.digest).as_str())
    );
    assert_eq!(heads[0].status, 304);
    assert_eq!(
        get(&c, &url, &accept).await.x_cache(),
        Some("HIT"),
        "fresh again for 5 s"
    );
    assert_eq!(reg.count("GET", "/manifests/v1"), 1, "the manifest itself fetched once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_mode_ignores_upstreams_cache_control() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    put_image(&reg, REPO, Some("v1"), OCI_MANIFEST, &[1000]);
    cache_control(&reg, "/manifests/v1", "max-age=5");
    let p = proxy(&w, &[(H, &reg)], &["--tag-ttl", "0"]);
    let c = client(&p);
    let accept = [("accept", OCI_MANIFEST)];
    let url = manifest_url(H, REPO, "v1");
    assert_eq!(get(&c, &url, &accept).await.x_cache(), Some("MISS"));
    assert_eq!(
        get(&c, &url, &accept).await.x_cache(),
        Some("REVALIDATED"),
        "tag_ttl 0 decides"
    );
    assert_eq!(reg.count("HEAD", "/manifests/v1"), 1);
    assert!(
        reg.requests().iter().all(|r| r.if_none_match.is_none()),
        "no conditional requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_no_store_keeps_a_tag_out_of_the_cache_but_not_its_manifest() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let img = put_image(&reg, REPO, Some("v1"), OCI_MANIFEST, &[1000]);
    cache_control(&reg, "/manifests/v1", "no-store");
    let p = proxy(
        &w,
        &[(H, &reg)],
        &["--tag-ttl", "1h", "--tag-ttl-mode", "upstream-first"],
    );
    let c = client(&p);
    let accept = [("accept", OCI_MANIFEST)];
    let url = manifest_url(H, REPO, "v1");
    for _ in 0..3 {
        let got = get(&c, &url, &accept).await;
        assert_eq!(got.x_cache(), Some("MISS"), "never answered from a kept tag");
        assert_eq!(got.body(), &Bytes::from(img.manifest.clone()));
    }
    assert_eq!(reg.count("GET", "/manifests/v1"), 3);
    // Content by digest is kept all the same.
    let by_digest = get(&c, &manifest_url(H, REPO, &img.digest), &accept).await;
    assert_eq!(by_digest.x_cache(), Some("HIT"));
    assert_eq!(reg.count_any(&format!("/manifests/{}", img.digest)), 0);
    // A HEAD-only client is not given a kept tag either.
    assert_eq!(head(&c, &url, &accept).await.x_cache(), Some("MISS"));
    assert_eq!(head(&c, &url, &accept).await.x_cache(), Some("MISS"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_authorization_goes_upstream_on_misses_and_revalidations() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let img = put_image(&reg, REPO, Some("v1"), OCI_MANIFEST, &[1000]);
    let p = proxy(&w, &[(H, &reg)], &["--tag-ttl", "0"]);
    let c = client(&p);
    let alpha = [("accept", OCI_MANIFEST), ("authorization", "Bearer alpha")];
    assert_eq!(get(&c, &manifest_url(H, REPO, "v1"), &alpha).await.status, 200);
    let layer = &img.layers[0].0;
    assert_eq!(
        get(&c, &blob_url(H, REPO, layer), &[("authorization", "Bearer alpha")])
            .await
            .status,
        200
    );
    let beta = [("accept", OCI_MANIFEST), ("authorization", "Bearer beta")];
    assert_eq!(get(&c, &manifest_url(H, REPO, "v1"), &beta).await.status, 200);
    let requests = reg.requests();
    let auth_of = |method: &str, part: &str| {
        requests
            .iter()
            .filter(|r| r.method == method && r.path.contains(part))
            .map(|r| r.authorization.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(auth_of("GET", "/manifests/v1"), vec![Some("Bearer alpha".to_owned())]);
    assert_eq!(auth_of("GET", layer), vec![Some("Bearer alpha".to_owned())]);
    let heads = auth_of("HEAD", "/manifests/v1");
    assert!(heads.contains(&Some("Bearer beta".to_owned())), "{heads:?}");
    // Besides beta's own revalidation, at most regcache's anonymous check of whether the
    // repository is public: alpha's credentials never go out for beta.
    assert!(
        heads.iter().all(|a| a.is_none() || a.as_deref() == Some("Bearer beta")),
        "{heads:?}"
    );
    support::poll_until(Duration::from_secs(5), || {
        (p.logs().matches("path=/v2/team/app/").count() >= 3).then_some(())
    });
    let logs = p.logs();
    assert!(!logs.contains("alpha") && !logs.contains("beta"), "tokens never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_is_never_cached() {
    let w = world();
    let auth = FaultRegistry::new(&w.ca, &["auth.docker.io"]);
    let p = proxy(&w, &[("auth.docker.io", &auth)], &[]);
    let c = client(&p);
    let url = "https://auth.docker.io/token?service=registry.docker.io&scope=repository:library/alpine:pull";
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let got = get(&c, url, &[]).await;
        assert_eq!(got.status, 200);
        let x = got.x_cache().map(str::to_owned);
        assert!(
            x.is_some() && !matches!(x.as_deref(), Some("HIT" | "STALE" | "REVALIDATED")),
            "token answered from cache: {x:?}"
        );
        tokens.push(got.body().clone());
    }
    assert_ne!(tokens[0], tokens[1]);
    assert_eq!(auth.tokens_issued(), 2);
}

// ----- redirects -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_redirect_to_a_cdn_is_followed_without_authorization() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let cdn = FaultRegistry::new(&w.ca, &["cdn.test"]);
    let data = Bytes::from(random_bytes(300_000));
    let digest = reg.put_blob(data.clone());
    cdn.put_blob(data.clone());
    reg.set_fault(
        &format!("/blobs/{digest}"),
        Fault::Redirect {
            location: format!("https://cdn.test/cdn/{digest}?sig=s3cr3tsig&expires=1"),
        },
    );
    let p = proxy(&w, &[(H, &reg), ("cdn.test", &cdn)], &[]);
    let c = client(&p);
    let url = blob_url(H, REPO, &digest);
    let got = get(&c, &url, &[("authorization", "Bearer regtoken")]).await;
    assert_eq!(
        got.status,
        200,
        "regcache follows the redirect itself; log:\n{}",
        p.logs()
    );
    assert_eq!(got.body().as_ref(), data.as_ref());
    assert_x_cache(&got, "MISS", "redirected blob", &p);

    let reg_get = reg.requests().into_iter().find(|r| r.path.contains(&digest)).unwrap();
    assert_eq!(reg_get.authorization.as_deref(), Some("Bearer regtoken"));
    let cdn_reqs: Vec<_> = cdn
        .requests()
        .into_iter()
        .filter(|r| r.path.contains(&digest))
        .collect();
    assert_eq!(cdn_reqs.len(), 1, "{cdn_reqs:?}");
    assert_eq!(cdn_reqs[0].method, "GET");
    assert!(
        cdn_reqs[0].path.contains("sig=s3cr3tsig"),
        "query kept: {}",
        cdn_reqs[0].path
    );
    assert_eq!(
        cdn_reqs[0].authorization, None,
        "Authorization must be dropped when the redirect changes host"
    );

    // Keyed by digest: a second pull of the blob downloads nothing (through another
    // repository, one HEAD first shows the blob is in it).
    let gets = (reg.count("GET", &digest), cdn.count("GET", &digest));
    let got = get(&c, &blob_url(H, "other/app", &digest), &[]).await;
    assert_eq!(got.body().as_ref(), data.as_ref());
    assert_x_cache(&got, "HIT", "redirected blob cached by digest", &p);
    assert_eq!((reg.count("GET", &digest), cdn.count("GET", &digest)), gets);
    assert!(
        cdn.requests().iter().all(|r| r.authorization.is_none()),
        "the CDN never gets credentials"
    );
    assert!(p.wait_for_log(&format!("path=/v2/other/app/blobs/{digest}"), Duration::from_secs(5)));
    assert!(!p.logs().contains("s3cr3tsig"), "signed URL query never logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_and_every_kind_of_blob_redirect_is_followed() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let p = proxy(&w, &[(H, &reg)], &[]);
    let c = client(&p);
    for status in [301u16, 302, 303, 307, 308] {
        let data = Bytes::from(random_bytes(10_000 + status as usize));
        let digest = reg.put_blob(data.clone());
        reg.set_fault(
            &format!("/blobs/{digest}"),
            Fault::RedirectWith {
                status,
                location: format!("/cdn/{digest}?sig={status}"),
            },
        );
        let got = get(&c, &blob_url(H, REPO, &digest), &[]).await;
        assert_eq!(got.status, 200, "after a {status}; log:\n{}", p.logs());
        assert_eq!(got.body().as_ref(), data.as_ref(), "after a {status}");
        assert_eq!(
            reg.count("GET", &format!("/cdn/{digest}?sig={status}")),
            1,
            "relative Location resolved against the registry"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_loop_is_bounded_and_not_cached() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let data = Bytes::from(random_bytes(5000));
    let digest = reg.put_blob(data.clone());
    let path = format!("/v2/{REPO}/blobs/{digest}");
    reg.set_fault(&path, Fault::Redirect { location: path.clone() });
    let p = proxy(&w, &[(H, &reg)], &[]);
    let c = client(&p);
    let t = Instant::now();
    let got = send(c.get(blob_url(H, REPO, &digest))).await;
    assert!(t.elapsed() < Duration::from_secs(20));
    if let Ok(got) = &got {
        assert!(
            !got.looks_complete(data.len()),
            "a redirect loop cannot produce the blob"
        );
    }
    let hops = reg.count("GET", &path);
    assert!((2..=30).contains(&hops), "bounded redirects, got {hops}");
    reg.clear_faults();
    let got = get(&c, &blob_url(H, REPO, &digest), &[]).await;
    assert_eq!(got.body().as_ref(), data.as_ref());
    assert_x_cache(&got, "MISS", "after the loop", &p);
}

// ----- one download per blob -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_for_one_blob_make_one_upstream_get() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let data = Bytes::from(random_bytes(2 * 1024 * 1024));
    let digest = reg.put_blob(data.clone());
    reg.set_fault(
        &digest,
        Fault::SlowBody {
            chunk: 64 * 1024,
            every: Duration::from_millis(30),
        },
    );
    let p = proxy(&w, &[(H, &reg)], &[]);
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let c = client_with(&p, i % 2 == 0);
            let url = blob_url(H, REPO, &digest);
            tokio::spawn(async move { get(&c, &url, &[]).await })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        let got = t.await.unwrap();
        assert_eq!(got.status, 200, "client {i}");
        assert!(got.body().as_ref() == data.as_ref(), "client {i}: right bytes");
    }
    assert_eq!(reg.count("GET", &digest), 1, "one upstream GET for ten clients");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_fast_followers_of_one_download_get_exact_bytes() {
    // Followers close to the head of a download are served from memory, slower ones from the
    // file; one that alternates (falls behind, catches up, falls behind) must still get every
    // byte in order. Upstream is throttled so that the download stays ahead of a paused reader.
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let data = Bytes::from(random_bytes(24 * 1024 * 1024));
    let digest = reg.put_blob(data.clone());
    reg.set_fault(
        &digest,
        Fault::SlowBody {
            chunk: 1024 * 1024,
            every: Duration::from_millis(30),
        },
    );
    let p = proxy(&w, &[(H, &reg)], &[]);
    let url = blob_url(H, REPO, &digest);
    let paused = {
        let c = client_with(&p, true);
        let url = url.clone();
        tokio::spawn(async move {
            let mut res = c.get(url).send().await.unwrap();
            let mut got = Vec::new();
            let mut pauses = 0;
            while let Some(chunk) = res.chunk().await.unwrap() {
                got.extend_from_slice(&chunk);
                // Pause twice, at different depths, long enough for the download to move
                // several MiB past this reader.
                if (got.len() > 2 * 1024 * 1024 && pauses == 0) || (got.len() > 9 * 1024 * 1024 && pauses == 1) {
                    pauses += 1;
                    tokio::time::sleep(Duration::from_millis(400)).await;
                }
            }
            got
        })
    };
    let fast = get(&client_with(&p, false), &url, &[]).await;
    assert_eq!(fast.status, 200);
    assert!(
        fast.body().as_ref() == data.as_ref(),
        "the fast follower got the right bytes"
    );
    let slow = paused.await.unwrap();
    assert_eq!(slow.len(), data.len());
    assert!(slow == data.as_ref(), "the paused follower got the right bytes");
    assert_eq!(reg.count("GET", &digest), 1, "one upstream GET for both");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn download_completes_and_is_cached_when_the_first_client_disconnects() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let data = Bytes::from(random_bytes(2 * 1024 * 1024));
    let digest = reg.put_blob(data.clone());
    reg.set_fault(
        &digest,
        Fault::SlowBody {
            chunk: 64 * 1024,
            every: Duration::from_millis(40),
        },
    );
    let p = proxy(&w, &[(H, &reg)], &[]);
    {
        let c = client_with(&p, true);
        let mut res = c.get(blob_url(H, REPO, &digest)).send().await.unwrap();
        assert_eq!(res.status(), 200);
        let first = res.chunk().await.unwrap().expect("a first chunk");
        assert!(!first.is_empty());
        assert_eq!(
            reg.completed("GET", &digest),
            0,
            "the body streams to the client while it downloads (not after)"
        );
        // Dropping response and client closes the connection mid-body.
    }
    let done = support::poll_until(Duration::from_secs(15), || {
        (reg.completed("GET", &digest) == 1).then_some(())
    });
    assert!(
        done.is_some(),
        "the upstream download went on after the client left; log:\n{}",
        p.logs()
    );
    let file = cached_content_path(p.data_dir(), &digest);
    support::poll_until(Duration::from_secs(5), || file.exists().then_some(()));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let got = get(&client(&p), &blob_url(H, REPO, &digest), &[]).await;
    assert_eq!(got.body().as_ref(), data.as_ref());
    assert_x_cache(&got, "HIT", "cached although the first client left", &p);
    assert_eq!(reg.count("GET", &digest), 1, "no new upstream GET");
}

// ----- content negotiation and keys ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_never_get_a_media_type_they_did_not_accept() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let child = put_image(&reg, REPO, None, OCI_MANIFEST, &[1000]);
    let (index_digest, index) = put_index(&reg, REPO, Some("v1"), OCI_INDEX, &[&child]);
    let docker = put_image(&reg, REPO, Some("v1"), DOCKER_MANIFEST, &[1000]);
    let p = proxy(&w, &[(H, &reg)], &[]);
    let c = client(&p);
    let url = manifest_url(H, REPO, "v1");

    for round in ["MISS", "HIT"] {
        let got = get(&c, &url, &[("accept", OCI_INDEX)]).await;
        assert_eq!(got.header("content-type"), Some(OCI_INDEX), "{round}");
        assert_eq!(got.body().as_ref(), index.as_slice());
        assert_x_cache(&got, round, "OCI index", &p);
        let got = get(&c, &url, &[("accept", DOCKER_MANIFEST)]).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("content-type"), Some(DOCKER_MANIFEST), "{round}");
        assert_eq!(got.body().as_ref(), docker.manifest.as_slice());
        assert_x_cache(&got, round, "Docker schema 2", &p);
        let got = head(&c, &url, &[("accept", DOCKER_MANIFEST)]).await;
        assert_eq!(got.header("content-type"), Some(DOCKER_MANIFEST));
        assert_eq!(got.header("docker-content-digest"), Some(docker.digest.as_str()));
    }
    // Types nobody has: the registry's 404, never a cached manifest of another type.
    for accept in [DOCKER_MANIFEST_LIST, OCI_MANIFEST] {
        let got = get(&c, &url, &[("accept", accept)]).await;
        assert_eq!(got.status, 404, "Accept {accept}: {:?}", got.header("content-type"));
        let got = head(&c, &url, &[("accept", accept)]).await;
        assert_eq!(got.status, 404, "HEAD Accept {accept}");
    }
    // By digest too: the cached index is not handed to a client accepting only schema 2.
    let got = get(
        &c,
        &manifest_url(H, REPO, &index_digest),
        &[("accept", DOCKER_MANIFEST)],
    )
    .await;
    assert!(
        got.status != 200 || got.header("content-type") == Some(DOCKER_MANIFEST),
        "index served to a client accepting only schema 2"
    );
    assert_ne!(got.body.as_ref().ok().map(|b| b.as_ref()), Some(index.as_slice()));
    // An index and its platform manifest are separate entries.
    let got = get(&c, &manifest_url(H, REPO, &child.digest), &[("accept", OCI_MANIFEST)]).await;
    assert_eq!(got.body().as_ref(), child.manifest.as_slice());
    assert_eq!(got.header("content-type"), Some(OCI_MANIFEST));
    // Accepting both: whichever is served, type and bytes match.
    let both = format!("{OCI_INDEX}, {DOCKER_MANIFEST}");
    let got = get(&c, &url, &[("accept", both.as_str())]).await;
    match got.header("content-type") {
        Some(OCI_INDEX) => assert_eq!(got.body().as_ref(), index.as_slice()),
        Some(DOCKER_MANIFEST) => assert_eq!(got.body().as_ref(), docker.manifest.as_slice()),
        other => panic!("unexpected type {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_repo_and_tag_on_two_registries_stay_apart() {
    let w = world();
    let ghcr = FaultRegistry::new(&w.ca, &["ghcr.io"]);
    let quay = FaultRegistry::new(&w.ca, &["quay.io"]);
    let a = put_image(&ghcr, REPO, Some("v1"), OCI_MANIFEST, &[1000]);
    let b = put_image(&quay, REPO, Some("v1"), OCI_MANIFEST, &[1000]);
    let p = proxy(&w, &[("ghcr.io", &ghcr), ("quay.io", &quay)], &[]);
    let c = client(&p);
    let accept = [("accept", OCI_MANIFEST)];
    for round in ["MISS", "HIT"] {
        let got = get(&c, &manifest_url("ghcr.io", REPO, "v1"), &accept).await;
        assert_eq!(got.body().as_ref(), a.manifest.as_slice(), "ghcr.io {round}");
        assert_x_cache(&got, round, "ghcr.io", &p);
        let got = get(&c, &manifest_url("quay.io", REPO, "v1"), &accept).await;
        assert_eq!(got.body().as_ref(), b.manifest.as_slice(), "quay.io {round}");
        assert_x_cache(&got, round, "quay.io", &p);
    }
    assert_eq!(ghcr.count("GET", "/manifests/v1"), 1);
    assert_eq!(quay.count("GET", "/manifests/v1"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_is_cached_once_for_every_registry_and_repo() {
    let w = world();
    let ghcr = FaultRegistry::new(&w.ca, &["ghcr.io"]);
    let quay = FaultRegistry::new(&w.ca, &["quay.io"]);
    let data = Bytes::from(random_bytes(100_000));
    let digest = ghcr.put_blob(data.clone());
    quay.put_blob(data.clone());
    let p = proxy(&w, &[("ghcr.io", &ghcr), ("quay.io", &quay)], &[]);
    let c = client(&p);
    let got = get(&c, &blob_url("ghcr.io", "team/app", &digest), &[]).await;
    assert_x_cache(&got, "MISS", "first", &p);
    for (host, repo) in [("ghcr.io", "other/repo"), ("quay.io", "team/app"), ("quay.io", "x/y/z")] {
        let got = get(&c, &blob_url(host, repo, &digest), &[]).await;
        assert_eq!(got.body().as_ref(), data.as_ref());
        assert_x_cache(&got, "HIT", &format!("{host}/{repo}"), &p);
    }
    assert_eq!(ghcr.count("GET", &digest), 1);
    assert_eq!(quay.count("GET", &digest), 0, "downloaded once for every registry");
    // Each other repository was asked once whether the blob is in it (a HEAD, no body).
    assert_eq!(ghcr.count("HEAD", &digest), 1);
    assert_eq!(quay.count("HEAD", &digest), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_hub_aliases_and_implied_library_share_entries() {
    let w = world();
    let names = ["registry-1.docker.io", "index.docker.io", "docker.io"];
    let hub = FaultRegistry::new(&w.ca, &names);
    let img = put_image(&hub, "library/alpine", Some("3.20"), OCI_MANIFEST, &[1000]);
    let p = proxy(
        &w,
        &[
            ("registry-1.docker.io", &hub),
            ("index.docker.io", &hub),
            ("docker.io", &hub),
        ],
        &["--registry", "index.docker.io", "--registry", "docker.io"],
    );
    let c = client(&p);
    let accept = [("accept", OCI_MANIFEST)];
    let got = get(
        &c,
        &manifest_url("registry-1.docker.io", "library/alpine", "3.20"),
        &accept,
    )
    .await;
    assert_x_cache(&got, "MISS", "first", &p);
    for (host, repo) in [
        ("index.docker.io", "library/alpine"),
        ("docker.io", "library/alpine"),
        ("registry-1.docker.io", "alpine"),
    ] {
        let got = get(&c, &manifest_url(host, repo, "3.20"), &accept).await;
        assert_eq!(got.status, 200, "{host}/{repo}");
        assert_eq!(got.body().as_ref(), img.manifest.as_slice(), "{host}/{repo}");
        assert_x_cache(&got, "HIT", &format!("{host}/{repo}"), &p);
    }
    assert_eq!(hub.count_any("/manifests/"), 1);
}

// ----- cache trouble -------------------------------------------------------------------------

async fn pull_with_broken_store(p: &Regcache, reg: &FaultRegistry, img: &Img) {
    for _ in 0..2 {
        let c = client(p);
        let accept = [("accept", OCI_MANIFEST)];
        assert_eq!(get(&c, &format!("https://{H}/v2/"), &[]).await.status, 200);
        let got = get(&c, &manifest_url(H, REPO, "v1"), &accept).await;
        assert_eq!(got.status, 200, "log:\n{}", p.logs());
        assert_eq!(got.body().as_ref(), img.manifest.as_slice());
        let got = get(&c, &manifest_url(H, REPO, &img.digest), &accept).await;
        assert_eq!(got.body().as_ref(), img.manifest.as_slice());
        for (d, data) in &img.layers {
            let got = get(&c, &blob_url(H, REPO, d), &[]).await;
            assert_eq!(got.status, 200, "log:\n{}", p.logs());
            assert!(got.body().as_ref() == data.as_ref(), "blob passed through intact");
        }
    }
    assert!(reg.count("GET", &img.layers[0].0) >= 1);
    assert!(
        p.wait_for_log("cache write failed", Duration::from_secs(5)),
        "log names the failure:\n{}",
        p.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_succeeds_when_the_store_is_replaced_by_a_file() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let img = put_image(&reg, REPO, Some("v1"), OCI_MANIFEST, &[300_000, 1000]);
    let p = proxy(&w, &[(H, &reg)], &[]);
    let store = p.data_dir().join("cache");
    if store.is_dir() {
        std::fs::remove_dir_all(&store).unwrap();
    } else if store.exists() {
        std::fs::remove_file(&store).unwrap();
    }
    std::fs::write(&store, b"not a directory").unwrap();
    pull_with_broken_store(&p, &reg, &img).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_succeeds_when_the_store_is_a_file_from_the_start() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let img = put_image(&reg, REPO, Some("v1"), OCI_MANIFEST, &[300_000, 1000]);
    let data_dir = w.tmp.path().join("data");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(data_dir.join("cache"), b"not a directory").unwrap();
    let p = Regcache::builder()
        .data_dir(&data_dir)
        .upstream_ca(&w.ca_file)
        .connect_to("ghcr.io:443", reg.addr())
        .start();
    pull_with_broken_store(&p, &reg, &img).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_pass_through_uncached() {
    let w = world();
    let reg = FaultRegistry::new(&w.ca, &[H]);
    let p = proxy(&w, &[(H, &reg)], &[]);
    let c = client(&p);
    let url = format!("https://{H}/v2/{REPO}/blobs/uploads/");
    for _ in 0..2 {
        let got = send(c.post(&url).body("x")).await.unwrap();
        // The fault registry refuses uploads: its verdict reaches the client.
        assert_eq!(got.status, 405);
        assert_eq!(got.x_cache(), Some("BYPASS"), "uploads are never cached");
    }
    assert_eq!(reg.count("POST", "/blobs/uploads/"), 2);
}
