//! A real Docker engine pulls through regcache: Debian's dockerd with `HTTPS_PROXY` pointing at
//! regcache and regcache's CA in `/etc/docker/certs.d/<host>/ca.crt` (the per-registry trust
//! recipe of docs/ca-trust.md), the distribution registry as upstream. After `docker rmi`, the
//! second pull is served from regcache's cache: every blob is a hit and upstream sees no blob
//! GET.
//!
//! Go never proxies loopback names, so the image lives at `registry.test` (a name that does not
//! resolve), which regcache intercepts and maps to the loopback registry with `--connect-to`.

mod support;

use std::time::Duration;

use support::{Dockerd, ImageFormat, ImageSpec, PullWorld, Regcache, Registry, RegistryAuth};

const HOST: &str = "registry.test";
const REF: &str = "registry.test/team/app:v1";

/// regcache's access-log lines for blob GETs on `HOST` in `logs`.
fn blob_gets(logs: &str) -> Vec<&str> {
    logs.lines()
        .filter(|l| {
            l.contains("regcache::access")
                && l.contains("host=registry.test:443")
                && l.contains("method=GET")
                && l.contains("/blobs/sha256:")
        })
        .collect()
}

/// Polls regcache's log after byte offset `from` until it holds at least `n` blob GET lines.
fn wait_blob_gets(proxy: &Regcache, from: usize, n: usize) -> String {
    support::poll_until(Duration::from_secs(10), || {
        let logs = proxy.logs();
        (blob_gets(&logs[from..]).len() >= n).then(|| logs[from..].to_string())
    })
    .unwrap_or_else(|| {
        panic!(
            "fewer than {n} blob GETs logged by regcache; log since the pull:\n{}",
            &proxy.logs()[from..]
        )
    })
}

/// Makes one request of its own to the registry and waits until its access log shows it, so
/// every request of an earlier, finished pull has been logged too. Returns the log entries.
async fn registry_log_settled(w: &PullWorld, registry: &Registry) -> Vec<support::AccessLogEntry> {
    let marker = format!("/v2/settle-{}/tags/list", support::random_hex(4));
    let client = w.ca.reqwest_builder().build().unwrap();
    let _ = client.get(format!("{}{marker}", registry.url())).send().await.unwrap();
    support::poll_until(Duration::from_secs(10), || {
        let log = registry.access_log();
        log.iter().any(|e| e.path == marker).then_some(log)
    })
    .expect("the registry logged the marker request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_pulls_through_regcache_and_pulls_again_from_the_cache() {
    if !Dockerd::runs_here("dockerd_pull::dockerd_pulls_through_regcache_and_pulls_again_from_the_cache") {
        return;
    }
    let w = PullWorld::new();
    let registry = Registry::start(&w.ca, &[HOST], RegistryAuth::None);
    let image = ImageSpec::new(&[2 * 1024 * 1024, 512 * 1024, 64 * 1024])
        .format(ImageFormat::Docker)
        .build();
    support::push(&registry.url(), "team/app", "v1", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();

    let proxy = Regcache::builder()
        .registry(HOST)
        .connect_to("registry.test:443", registry.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    // dockerd trusts regcache's CA for this registry only; the registry's own (test) CA is
    // nowhere in its trust, so a pull that works was intercepted and re-signed by regcache.
    let dockerd = Dockerd::builder()
        .proxy(&proxy.proxy_url())
        .trust(HOST, &proxy.ca_cert_pem())
        .start();
    let info = dockerd.docker_ok(&["info", "--format", "{{.HTTPSProxy}}"]);
    assert_eq!(
        info.trim(),
        proxy.proxy_url(),
        "dockerd uses regcache as its HTTPS proxy"
    );

    // First pull: misses, fetched from upstream once per blob.
    let mark = proxy.logs().len();
    let out = dockerd.docker_ok(&["pull", REF]);
    assert!(out.contains(&format!("Digest: {}", image.manifest_digest)), "{out}");
    let expected_blobs = image.blob_digests().len();
    let first = wait_blob_gets(&proxy, mark, expected_blobs);
    assert!(
        blob_gets(&first).iter().all(|l| l.contains("cache=\"miss\"")),
        "first pull: every blob is a miss:\n{first}"
    );
    let log = registry_log_settled(&w, &registry).await;
    for digest in image.blob_digests() {
        let gets = log
            .iter()
            .filter(|e| e.method == "GET" && e.path.ends_with(&format!("/blobs/{digest}")))
            .count();
        assert_eq!(gets, 1, "blob {digest} fetched once upstream");
    }

    // What dockerd stored is the image that was pushed: its ID is the config digest, its
    // layers are the pushed (uncompressed) layer digests, its repo digest the manifest's.
    let id = dockerd.docker_ok(&["image", "inspect", "--format", "{{.Id}}", REF]);
    assert_eq!(id.trim(), image.config_digest);
    let layers = dockerd.docker_ok(&["image", "inspect", "--format", "{{json .RootFS.Layers}}", REF]);
    let layers: Vec<String> = serde_json::from_str(layers.trim()).unwrap();
    assert_eq!(layers, image.layer_digests());
    let repo_digests = dockerd.docker_ok(&["image", "inspect", "--format", "{{json .RepoDigests}}", REF]);
    assert!(
        repo_digests.contains(&format!("registry.test/team/app@{}", image.manifest_digest)),
        "{repo_digests}"
    );

    dockerd.docker_ok(&["rmi", REF]);
    let gone = dockerd.docker(&["image", "inspect", REF]);
    assert!(!gone.status.success(), "the image is gone after docker rmi");

    // Second pull: every blob from the cache, none from upstream.
    let upstream_before = registry_log_settled(&w, &registry).await.len();
    let mark = proxy.logs().len();
    let out = dockerd.docker_ok(&["pull", REF]);
    assert!(out.contains(&format!("Digest: {}", image.manifest_digest)), "{out}");
    let second = wait_blob_gets(&proxy, mark, expected_blobs);
    let lines = blob_gets(&second);
    assert!(
        lines
            .iter()
            .all(|l| l.contains("cache=\"hit\"") && l.contains("status=200")),
        "second pull: every blob is a cache hit:\n{second}"
    );
    for digest in image.blob_digests() {
        assert!(
            lines.iter().any(|l| l.contains(&format!("/blobs/{digest}"))),
            "second pull asked regcache for {digest}:\n{second}"
        );
    }
    let upstream_after = registry_log_settled(&w, &registry).await;
    let blob_gets_upstream: Vec<_> = upstream_after[upstream_before..]
        .iter()
        .filter(|e| e.method == "GET" && e.path.contains("/blobs/"))
        .collect();
    assert!(
        blob_gets_upstream.is_empty(),
        "upstream saw no blob GET during the second pull: {blob_gets_upstream:?}"
    );
    let id = dockerd.docker_ok(&["image", "inspect", "--format", "{{.Id}}", REF]);
    assert_eq!(
        id.trim(),
        image.config_digest,
        "the cached pull produced the same image"
    );
}
