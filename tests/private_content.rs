//! Private images never leak from the cache, and regcache's own upstream accounts: the real
//! distribution registry with htpasswd Basic auth or Docker token auth (a separate token host
//! under Docker Hub's names), skopeo and reqwest through regcache.

mod support;

use std::path::Path;

use base64::Engine as _;
use support::image::{RegistryClient, TestImage};
use support::{Regcache, Registry, RegistryAuth, TokenServer};

type World = support::PullWorld;

/// A client through regcache trusting only its CA.
fn client(p: &Regcache) -> reqwest::Client {
    let config = support::rustls_client_config(&[&p.ca_cert_pem()]).as_ref().clone();
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .proxy(reqwest::Proxy::all(p.proxy_url()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

async fn status(c: &reqwest::Client, url: &str, auth: Option<&str>, accept: &str) -> (u16, Option<String>) {
    let mut req = c.get(url).header("accept", accept);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let res = req.send().await.unwrap();
    let x_cache = res
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let code = res.status().as_u16();
    let _ = res.bytes().await;
    (code, x_cache)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_private_content_is_served_only_to_clients_upstream_accepts() {
    let w = World::new();
    let registry = Registry::start(&w.ca, &["quay.io"], RegistryAuth::basic("alice", "s3cret"));
    let image = TestImage::generate(&[512 * 1024, 64 * 1024]);
    support::push(
        &registry.url(),
        "org/private",
        "1.0",
        &image,
        Some(("alice", "s3cret")),
        &w.ca.cert_pem(),
    )
    .await
    .unwrap();
    let proxy = Regcache::builder()
        .connect_to("quay.io:443", registry.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    // An authorized client pulls: everything is cached.
    w.pull_through(
        &proxy,
        "docker://quay.io/org/private:1.0",
        Some(("alice", "s3cret")),
        &image,
    );
    let layer = &image.layers[0].digest;
    let blob_gets = |r: &Registry| r.count_requests("GET", &format!("/blobs/{layer}"));
    let gets_before = support::poll_until(std::time::Duration::from_secs(5), || {
        let n = blob_gets(&registry);
        (n >= 1).then_some(n)
    })
    .expect("the layer was fetched upstream once");

    let c = client(&proxy);
    let base = "https://quay.io/v2/org/private";
    let urls = [
        format!("{base}/manifests/1.0"),
        format!("{base}/manifests/{}", image.manifest_digest),
        format!("{base}/blobs/{layer}"),
    ];
    let alice = basic("alice", "s3cret");
    let mallory = basic("alice", "guess");
    for url in &urls {
        let (code, _) = status(&c, url, None, image.media_type).await;
        assert_eq!(code, 401, "no credentials: {url}");
        let (code, _) = status(&c, url, Some(&mallory), image.media_type).await;
        assert_eq!(code, 401, "wrong credentials: {url}");
        let (code, x_cache) = status(&c, url, Some(&alice), image.media_type).await;
        assert_eq!(code, 200, "right credentials: {url}");
        // Content by digest comes from the cache (the tag entry is per Accept set, and this
        // client's differs from skopeo's, so the tag itself may be a miss).
        if !url.ends_with("/1.0") {
            assert_eq!(x_cache.as_deref(), Some("HIT"), "{url}");
        }
    }
    // Through another repository name, a known digest is no key either.
    let (code, _) = status(&c, &format!("https://quay.io/v2/org/other/blobs/{layer}"), None, "*/*").await;
    assert_eq!(code, 401);
    assert_eq!(
        blob_gets(&registry),
        gets_before,
        "the authorized client was served from cache"
    );
    let logs = proxy.logs();
    assert!(
        !logs.contains("s3cret") && !logs.contains("guess"),
        "no password in the logs"
    );
}

fn write_credentials_config(dir: &Path, registry: &str, user: &str, pass: &str) -> std::path::PathBuf {
    let pass_file = dir.join("registry.pass");
    std::fs::write(&pass_file, format!("{pass}\n")).unwrap();
    let cfg = dir.join("regcache.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[credentials]]\nregistry = \"{registry}\"\nusername = \"{user}\"\npassword_file = \"{}\"\n",
            pass_file.display()
        ),
    )
    .unwrap();
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regcache_basic_credentials_let_a_client_without_login_pull_a_private_image() {
    let w = World::new();
    let registry = Registry::start(&w.ca, &["quay.io"], RegistryAuth::basic("alice", "s3cret"));
    let image = TestImage::generate(&[256 * 1024]);
    support::push(
        &registry.url(),
        "org/private",
        "1.0",
        &image,
        Some(("alice", "s3cret")),
        &w.ca.cert_pem(),
    )
    .await
    .unwrap();
    let cfg = write_credentials_config(w.tmp.path(), "quay.io", "alice", "s3cret");
    let proxy = Regcache::builder()
        .connect_to("quay.io:443", registry.addr())
        .upstream_ca(&w.upstream_ca_file)
        .arg("--config")
        .arg(&cfg)
        .start();
    w.pull_through(&proxy, "docker://quay.io/org/private:1.0", None, &image);
    let logs = proxy.logs();
    assert!(!logs.contains("s3cret"), "no password in the logs");
    assert!(
        !logs.contains(&base64::engine::general_purpose::STANDARD.encode("alice:s3cret")),
        "no encoded password in the logs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regcache_runs_the_token_flow_for_a_client_without_login() {
    let w = World::new();
    let tokens = TokenServer::start(&w.ca, &["auth.docker.io"], Some(("bob", "hunter2")));
    let registry = Registry::start(
        &w.ca,
        &["registry-1.docker.io"],
        tokens.registry_auth("https://auth.docker.io/token", "registry.docker.io"),
    );
    let image = TestImage::generate(&[256 * 1024, 32 * 1024]);
    let pusher = RegistryClient::new(
        "https://registry-1.docker.io",
        &w.ca.cert_pem(),
        Some(("bob", "hunter2")),
        &[
            ("registry-1.docker.io", registry.addr()),
            ("auth.docker.io", tokens.addr()),
        ],
    )
    .unwrap();
    pusher.push_image("library/app", "v1", &image).await.unwrap();
    let cfg = write_credentials_config(w.tmp.path(), "registry-1.docker.io", "bob", "hunter2");
    let proxy = Regcache::builder()
        .connect_to("registry-1.docker.io:443", registry.addr())
        .connect_to("auth.docker.io:443", tokens.addr())
        .upstream_ca(&w.upstream_ca_file)
        .arg("--config")
        .arg(&cfg)
        .start();
    let before = tokens.request_count();
    w.pull_through(&proxy, "docker://docker.io/app:v1", None, &image);
    let mine: Vec<_> = tokens.requests().into_iter().skip(before).collect();
    assert!(!mine.is_empty(), "regcache asked the token host");
    assert!(
        mine.iter().all(|r| r.user.as_deref() == Some("bob")),
        "with its account: {mine:?}"
    );
    assert!(
        mine.iter()
            .any(|r| r.scopes.iter().any(|s| s == "repository:library/app:pull")),
        "{mine:?}"
    );
    // The token is reused until it expires: far fewer token requests than upstream requests.
    assert!(mine.len() <= 3, "tokens are cached: {} requests", mine.len());
    let logs = proxy.logs();
    assert!(!logs.contains("hunter2"), "no password in the logs");
    assert!(!logs.to_ascii_lowercase().contains("bearer ey"), "no token in the logs");
}
