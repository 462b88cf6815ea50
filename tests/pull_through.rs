//! Real clients pull real images through regcache: the distribution registry (Debian's
//! `docker-registry`) behind TLS from a test CA, skopeo with `HTTPS_PROXY` trusting only
//! regcache's CA. Anonymous, htpasswd Basic auth, and Bearer tokens from a separate token host
//! under Docker Hub's names; a registry on a port other than 443.

mod support;

use support::image::{RegistryClient, TestImage};
use support::{Regcache, Registry, RegistryAuth, TokenServer, cert_dir_with, skopeo_copy};

type World = support::PullWorld;

fn world() -> World {
    World::new()
}

/// Pulls `src` through `proxy` with skopeo into a fresh directory and checks every digest.
fn pull_and_verify(w: &World, proxy: &Regcache, src: &str, creds: Option<(&str, &str)>, image: &TestImage) {
    w.pull_through(proxy, src, creds, image);
}

fn pull_fails(w: &World, proxy: &Regcache, src: &str, creds: Option<(&str, &str)>) -> String {
    let cert_dir = cert_dir_with(w.tmp.path(), &[&proxy.ca_cert_pem()]);
    let dest = w.tmp.path().join(format!("fail-{}", support::random_hex(4)));
    let out = skopeo_copy(&proxy.proxy_url(), &cert_dir, src, &dest, creds);
    assert!(!out.status.success(), "pull of {src} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn access_lines<'a>(logs: &'a str, host: &str) -> Vec<&'a str> {
    logs.lines()
        .filter(|l| l.contains("regcache::access") && l.contains(&format!("host={host}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_an_anonymous_image_through_regcache() {
    let w = world();
    let registry = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let image = TestImage::generate(&[3 * 1024 * 1024, 1024 * 1024, 200 * 1024]);
    support::push(&registry.url(), "team/app", "v1", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();

    let proxy = Regcache::builder()
        .connect_to("ghcr.io:443", registry.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    pull_and_verify(&w, &proxy, "docker://ghcr.io/team/app:v1", None, &image);

    // Every blob went through regcache to the real registry.
    for layer in &image.layers {
        let n = support::poll_until(std::time::Duration::from_secs(5), || {
            let n = registry.count_requests("GET", &layer.digest);
            (n >= 1).then_some(n)
        });
        assert_eq!(n, Some(1), "blob {} fetched once upstream", layer.digest);
    }
    let logs = proxy.logs();
    let lines = access_lines(&logs, "ghcr.io:443");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("path=/v2/team/app/manifests/v1") && l.contains("status=200")),
        "{logs}"
    );
    assert!(
        lines.iter().any(|l| l.contains("cache=\"intercept\""))
            || proxy.wait_for_log("cache=\"intercept\"", std::time::Duration::from_secs(5)),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_from_a_basic_auth_registry() {
    let w = world();
    let registry = Registry::start(&w.ca, &["quay.io"], RegistryAuth::basic("alice", "s3cret"));
    let image = TestImage::generate(&[1024 * 1024, 64 * 1024]);
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
    // The registry's own verdicts reach the client: no credentials, wrong credentials (cached
    // content is refused alike: tests/private_content.rs).
    let err = pull_fails(&w, &proxy, "docker://quay.io/org/private:1.0", None);
    assert!(
        err.contains("unauthorized") || err.contains("401") || err.contains("authentication required"),
        "{err}"
    );
    pull_fails(&w, &proxy, "docker://quay.io/org/private:1.0", Some(("alice", "wrong")));
    pull_and_verify(
        &w,
        &proxy,
        "docker://quay.io/org/private:1.0",
        Some(("alice", "s3cret")),
        &image,
    );

    let logs = proxy.logs();
    assert!(
        !logs.contains("s3cret") && !logs.contains("YWxpY2U6czNjcmV0"),
        "credentials must never be logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_pulls_from_docker_hub_names_with_bearer_tokens_from_another_host() {
    let w = world();
    let tokens = TokenServer::start(&w.ca, &["auth.docker.io"], Some(("bob", "hunter2")));
    let registry = Registry::start(
        &w.ca,
        &["registry-1.docker.io"],
        tokens.registry_auth("https://auth.docker.io/token", "registry.docker.io"),
    );
    let image = TestImage::generate(&[2 * 1024 * 1024, 128 * 1024]);
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

    // Both Docker Hub hosts are intercepted by default; only the addresses are overridden.
    let proxy = Regcache::builder()
        .connect_to("registry-1.docker.io:443", registry.addr())
        .connect_to("auth.docker.io:443", tokens.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    // Without credentials the token host says no and so does the pull (nothing cached yet).
    pull_fails(&w, &proxy, "docker://docker.io/app:v1", None);

    let before = tokens.request_count();
    // `docker.io/app` is what users type: skopeo expands it to registry-1.docker.io/library/app.
    pull_and_verify(
        &w,
        &proxy,
        "docker://docker.io/app:v1",
        Some(("bob", "hunter2")),
        &image,
    );
    assert!(
        tokens.request_count() > before,
        "skopeo fetched a token through regcache"
    );
    let last = tokens.requests().pop().unwrap();
    assert_eq!(last.user.as_deref(), Some("bob"));
    assert!(
        last.scopes.iter().any(|s| s == "repository:library/app:pull"),
        "{:?}",
        last.scopes
    );

    let logs = proxy.logs();
    assert!(
        access_lines(&logs, "auth.docker.io:443")
            .iter()
            .any(|l| l.contains("path=/token") && l.contains("status=200")),
        "token request went through regcache: {logs}"
    );
    assert!(!logs.contains("hunter2"));
    assert!(
        !logs.to_ascii_lowercase().contains("bearer ey"),
        "tokens must never be logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_on_port_5000_is_intercepted_by_host_and_port() {
    let w = world();
    let registry = Registry::start(&w.ca, &["registry.internal"], RegistryAuth::None);
    let image = TestImage::generate(&[512 * 1024]);
    support::push(&registry.url(), "ci/builder", "main", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();

    let proxy = Regcache::builder()
        .registry("registry.internal:5000")
        .connect_to("registry.internal:5000", registry.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    pull_and_verify(
        &w,
        &proxy,
        "docker://registry.internal:5000/ci/builder:main",
        None,
        &image,
    );
    let logs = proxy.logs();
    assert!(
        access_lines(&logs, "registry.internal:5000")
            .iter()
            .any(|l| l.contains("/v2/ci/builder/manifests/main")),
        "{logs}"
    );
}
