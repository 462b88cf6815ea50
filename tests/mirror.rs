//! The registry-mirror listener with real parts: the distribution registry upstream (as
//! `ghcr.io` and as Docker Hub's `registry-1.docker.io`, mapped to loopback), skopeo with a
//! `registries.conf` mirror and by the mirror's own name, containerd's `ctr` with a
//! `hosts.toml` (its `?ns=`), and the forward proxy in the same process over the same cache.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::{Dockerd, FaultRegistry, PullWorld, Regcache, Registry, RegistryAuth, SkopeoCopy, TestImage};

/// regcache with the mirror on (a leaf from its CA for `localhost`), caching `ghcr.io` and
/// Docker Hub, both mapped to the given upstreams.
fn regcache_with_mirror(w: &PullWorld, ghcr: &Registry, hub: &Registry, extra: &[&str]) -> Regcache {
    Regcache::builder()
        .connect_to("ghcr.io:443", ghcr.addr())
        .connect_to("registry-1.docker.io:443", hub.addr())
        .upstream_ca(&w.upstream_ca_file)
        .args(["--mirror-listen", "127.0.0.1:0", "--mirror-name", "localhost"])
        .args(extra)
        .start()
}

/// A `registries.conf` sending `prefix` to the mirror at `location` (podman/CRI-O/skopeo).
fn registries_conf(dir: &Path, prefix: &str, location: &str) -> PathBuf {
    let path = dir.join(format!("registries-{}.conf", support::random_hex(4)));
    std::fs::write(
        &path,
        format!("[[registry]]\nprefix = \"{prefix}\"\nlocation = \"{prefix}\"\n\n[[registry.mirror]]\nlocation = \"{location}\"\n"),
    )
    .unwrap();
    path
}

/// skopeo copies `src` (no proxy) into a fresh dir, trusting regcache's CA only; with
/// `conf`, through its mirrors. Checks every digest.
fn skopeo_pull(
    w: &PullWorld,
    rc: &Regcache,
    src: &str,
    conf: Option<&Path>,
    creds: Option<(&str, &str)>,
    image: &TestImage,
) {
    let cert_dir = support::cert_dir_with(w.tmp.path(), &[&rc.ca_cert_pem()]);
    let dest = w.tmp.path().join(format!("pull-{}", support::random_hex(4)));
    let mut copy = SkopeoCopy::to_dir(src, &dest).cert_dir(&cert_dir);
    if let Some(c) = conf {
        // skopeo 1.9 reads `--registries-conf`, not `CONTAINERS_REGISTRIES_CONF`.
        copy = copy.arg("--registries-conf").arg(c.to_str().unwrap());
    }
    if let Some((u, p)) = creds {
        copy = copy.creds(u, p);
    }
    let out = copy.run();
    if !out.status.success() {
        eprintln!("----- regcache -----\n{}", rc.logs());
    }
    support::skopeo::assert_success(&out, &format!("skopeo copy {src} through the mirror"));
    assert_eq!(support::manifest_digest_of_dir(&dest), image.manifest_digest);
    let mut expected = image.blob_digests();
    expected.sort();
    assert_eq!(
        support::skopeo::verify_dir_blobs(&dest),
        expected,
        "{src}: blobs re-hashed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_cache_behind_the_proxy_and_the_mirror() {
    let w = PullWorld::new();
    let ghcr = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let mut hub = Registry::start(&w.ca, &["registry-1.docker.io"], RegistryAuth::None);
    let app = TestImage::generate(&[300 * 1024, 40 * 1024]);
    let alpine = TestImage::generate(&[200 * 1024]);
    support::push(&ghcr.url(), "org/app", "1.0", &app, None, &w.ca.cert_pem())
        .await
        .unwrap();
    support::push(&hub.url(), "library/alpine", "3.20", &alpine, None, &w.ca.cert_pem())
        .await
        .unwrap();
    let rc = regcache_with_mirror(&w, &ghcr, &hub, &[]);
    let mirror = format!("localhost:{}", rc.mirror_addr().port());

    // Through the forward proxy first: the layers are cached.
    w.pull_through(&rc, "docker://ghcr.io/org/app:1.0", None, &app);
    let blob_gets = ghcr.count_requests("GET", "/blobs/");
    assert!(blob_gets >= app.blob_digests().len(), "the proxy fetched the blobs");

    // Then ghcr.io through the mirror, as podman's registries.conf names it: every blob is a
    // hit of the proxy's download, upstream sees no blob GET.
    let conf = registries_conf(w.tmp.path(), "ghcr.io", &format!("{mirror}/ghcr.io"));
    skopeo_pull(&w, &rc, "docker://ghcr.io/org/app:1.0", Some(&conf), None, &app);
    assert_eq!(
        ghcr.count_requests("GET", "/blobs/"),
        blob_gets,
        "no upstream blob GET for the mirror"
    );
    for digest in app.blob_digests() {
        let hits = rc.mirror_lines(&format!("/blobs/{digest}"));
        assert!(
            hits.iter()
                .any(|l| l.contains("cache=\"hit\"") && l.contains("host=ghcr.io:443")),
            "{digest} served from the cache through the mirror:\n{}",
            rc.logs()
        );
    }

    // Docker Hub is the default registry; an official image's name gets `library/`.
    skopeo_pull(&w, &rc, &format!("docker://{mirror}/alpine:3.20"), None, None, &alpine);
    assert!(hub.count_requests("GET", "/v2/library/alpine/manifests/3.20") > 0);

    // Upstream gone: the mirror still answers /v2/ and serves the cached image (the tag is
    // served stale), through the mirror and through the proxy alike.
    hub.stop();
    skopeo_pull(
        &w,
        &rc,
        &format!("docker://{mirror}/library/alpine:3.20"),
        None,
        None,
        &alpine,
    );
    w.pull_through(&rc, "docker://docker.io/library/alpine:3.20", None, &alpine);
    let metrics = reqwest::get(format!("{}/metrics", rc.proxy_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("regcache_requests_total{")
            && l.contains("listener=\"mirror\"")
            && l.contains("outcome=\"hit\"")),
        "mirror hits are counted with listener=\"mirror\":\n{metrics}"
    );
}

/// A client for the mirror trusting regcache's CA.
fn client(rc: &Regcache) -> reqwest::Client {
    support::reqwest_builder(&[&rc.ca_cert_pem()])
        .resolve("localhost", rc.mirror_addr())
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_is_no_open_relay_and_read_only() {
    let w = PullWorld::new();
    let ghcr = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let hub = Registry::start(&w.ca, &["registry-1.docker.io"], RegistryAuth::None);
    let rc = regcache_with_mirror(&w, &ghcr, &hub, &[]);
    let base = format!("https://localhost:{}", rc.mirror_addr().port());
    let c = client(&rc);

    let ping = c.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(ping.status(), 200);
    assert_eq!(ping.headers()["docker-distribution-api-version"], "registry/2.0");

    for path in [
        "/v2/evil.example/x/manifests/1",
        "/v2/x/manifests/1?ns=evil.example",
        "/v2/127.0.0.1:22/x/manifests/1",
    ] {
        let res = c.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(res.status(), 403, "{path}");
        let body = res.text().await.unwrap();
        assert!(
            body.contains("\"DENIED\"") && body.contains("does not cache"),
            "{path}: {body}"
        );
    }
    assert_eq!(
        ghcr.count_requests("GET", "/manifests/"),
        0,
        "nothing reached an upstream"
    );

    for (method, path) in [
        (reqwest::Method::PUT, "/v2/library/x/manifests/1"),
        (reqwest::Method::POST, "/v2/library/x/blobs/uploads/"),
        (reqwest::Method::DELETE, "/v2/ghcr.io/org/x/manifests/sha256:aa"),
    ] {
        let res = c.request(method.clone(), format!("{base}{path}")).send().await.unwrap();
        assert_eq!(res.status(), 405, "{method} {path}");
        let body = res.text().await.unwrap();
        assert!(body.contains("\"UNSUPPORTED\""), "{method} {path}: {body}");
    }
    assert_eq!(hub.count_requests("PUT", "/"), 0);
    assert_eq!(hub.count_requests("POST", "/"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_login_with_htpasswd() {
    let w = PullWorld::new();
    // An in-process upstream that records each request's `Authorization`.
    let ghcr = FaultRegistry::new(&w.ca, &["ghcr.io"]);
    let hub = Registry::start(&w.ca, &["registry-1.docker.io"], RegistryAuth::None);
    let image = TestImage::generate(&[64 * 1024]);
    for i in 0..image.layers.len() {
        ghcr.put_blob(image.layer_bytes(i));
    }
    ghcr.put_blob(image.config.clone());
    ghcr.put_manifest("org/app", Some("1.0"), image.media_type, image.manifest.clone());
    let htpasswd = w.tmp.path().join("mirror.htpasswd");
    std::fs::write(&htpasswd, support::registry::htpasswd_line("ci", "s3cret")).unwrap();
    let rc = Regcache::builder()
        .connect_to("ghcr.io:443", ghcr.addr())
        .connect_to("registry-1.docker.io:443", hub.addr())
        .upstream_ca(&w.upstream_ca_file)
        .args(["--mirror-listen", "127.0.0.1:0", "--mirror-name", "localhost"])
        .args(["--mirror-htpasswd", htpasswd.to_str().unwrap()])
        .start();
    let port = rc.mirror_addr().port();
    let base = format!("https://localhost:{port}");
    let c = client(&rc);

    // `docker login`'s first step: /v2/ answers the Basic challenge.
    let res = c.get(format!("{base}/v2/")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(
        res.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic realm=")
    );
    let wrong = c
        .get(format!("{base}/v2/"))
        .basic_auth("ci", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let manifest = format!("{base}/v2/ghcr.io/org/app/manifests/1.0");
    let refused = c.get(&manifest).basic_auth("ci", Some("nope")).send().await.unwrap();
    assert_eq!(refused.status(), 401);
    assert!(refused.text().await.unwrap().contains("\"UNAUTHORIZED\""));
    assert_eq!(ghcr.count_any("/manifests/"), 0, "no content without a login");
    let ok = c
        .get(format!("{base}/v2/"))
        .basic_auth("ci", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    // skopeo logs in after the challenge and pulls; the login never goes upstream.
    skopeo_pull(
        &w,
        &rc,
        &format!("docker://localhost:{port}/ghcr.io/org/app:1.0"),
        None,
        Some(("ci", "s3cret")),
        &image,
    );
    let requests = ghcr.requests();
    assert!(requests.iter().any(|r| r.path.contains("/blobs/")), "{requests:?}");
    assert!(
        requests.iter().all(|r| r.authorization.is_none()),
        "the mirror's credentials never reach upstream: {requests:?}"
    );
}

/// `regcache serve` with the mirror on and state under `dir`, plus `extra`: for a start that is
/// refused (it would run otherwise).
fn serve_with_mirror(dir: &Path, extra: &[&str]) -> Output {
    let (data, ca) = (dir.join("data"), dir.join("ca"));
    let mut args = vec!["serve", "--listen", "127.0.0.1:0", "--mirror-listen", "127.0.0.1:0"];
    args.extend(["--data-dir", data.to_str().unwrap(), "--ca-dir", ca.to_str().unwrap()]);
    args.extend_from_slice(extra);
    support::run_cli(&args)
}

#[test]
fn upstream_accounts_without_a_mirror_login_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("regcache.toml");
    std::fs::write(
        &config,
        "[[credentials]]\nregistry = \"ghcr.io\"\nusername = \"bot\"\npassword = \"pw\"\n",
    )
    .unwrap();
    let out = serve_with_mirror(
        dir.path(),
        &["--config", config.to_str().unwrap(), "--mirror-insecure-http"],
    );
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("mirror.auth_htpasswd") && stderr.contains("private repositories"),
        "{stderr}"
    );
}

/// `ctr --address SOCK --namespace NS ARGS…`, no proxy: containerd reaches the mirror itself.
fn ctr(dockerd: &Dockerd, namespace: &str, args: &[&str]) -> Output {
    Command::new("/usr/bin/ctr")
        .arg("--address")
        .arg(dockerd.containerd_address())
        .args(["--namespace", namespace])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .output()
        .expect("run ctr (Debian package containerd, a dependency of docker.io)")
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `ctr content fetch --hosts-dir hosts reference`, which must succeed and leave every one of
/// `digests` in containerd's content store (`what` says which fetch, in messages).
fn ctr_fetch(dockerd: &Dockerd, rc: &Regcache, hosts: &str, reference: &str, digests: &[String], what: &str) {
    let fetched = ctr(
        dockerd,
        "mirror-a",
        &["content", "fetch", "--hosts-dir", hosts, reference],
    );
    assert!(
        fetched.status.success(),
        "{reference}{what}: {}\n{}",
        text(&fetched),
        rc.logs()
    );
    let listed = text(&ctr(dockerd, "mirror-a", &["content", "ls", "-q"]));
    for d in digests {
        assert!(
            listed.lines().any(|l| l.trim() == d),
            "{reference}{what}: {d} in\n{listed}"
        );
    }
}

/// `<hosts-dir>/<registry>/hosts.toml` sending `registry` to the mirror (containerd's recipe).
fn hosts_toml(hosts_dir: &Path, registry: &str, server: &str, mirror: &str, ca: &Path) {
    let dir = hosts_dir.join(registry);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"{server}\"\n\n[host.\"https://{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n",
            ca.display()
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_hosts_toml_pulls_docker_hub_and_ghcr_through_the_mirror() {
    if !Dockerd::runs_here("mirror::containerd_hosts_toml_pulls_docker_hub_and_ghcr_through_the_mirror") {
        return;
    }
    let w = PullWorld::new();
    let mut ghcr = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let mut hub = Registry::start(&w.ca, &["registry-1.docker.io"], RegistryAuth::None);
    let app = TestImage::generate(&[256 * 1024, 32 * 1024]);
    let alpine = TestImage::generate(&[128 * 1024]);
    support::push(&ghcr.url(), "org/app", "1.0", &app, None, &w.ca.cert_pem())
        .await
        .unwrap();
    support::push(&hub.url(), "library/alpine", "3.20", &alpine, None, &w.ca.cert_pem())
        .await
        .unwrap();
    let rc = regcache_with_mirror(&w, &ghcr, &hub, &[]);
    let mirror = format!("localhost:{}", rc.mirror_addr().port());
    let dockerd = Dockerd::builder().start();

    let hosts_dir = w.tmp.path().join("hosts.d");
    let ca = w.tmp.path().join("regcache-ca.crt");
    std::fs::write(&ca, rc.ca_cert_pem()).unwrap();
    hosts_toml(&hosts_dir, "docker.io", "https://registry-1.docker.io", &mirror, &ca);
    hosts_toml(&hosts_dir, "ghcr.io", "https://ghcr.io", &mirror, &ca);
    let hosts = hosts_dir.to_str().unwrap();
    let pulls = [
        ("docker.io/library/alpine:3.20", &alpine),
        ("ghcr.io/org/app:1.0", &app),
    ];
    let digests = |image: &TestImage| {
        std::iter::once(image.manifest_digest.clone())
            .chain(image.blob_digests())
            .collect::<Vec<_>>()
    };
    for (reference, image) in pulls {
        ctr_fetch(&dockerd, &rc, hosts, reference, &digests(image), "");
    }
    // containerd names the registry with `?ns=` (the access log keeps paths, not queries:
    // the upstream host shows which registry the mirror chose).
    for (image, host) in [(&alpine, "host=registry-1.docker.io:443"), (&app, "host=ghcr.io:443")] {
        for digest in image.blob_digests() {
            assert!(
                rc.mirror_lines(&format!("/blobs/{digest}"))
                    .iter()
                    .any(|l| l.contains(host)),
                "{digest} fetched from {host} through the mirror:\n{}",
                rc.logs()
            );
        }
    }

    // Every upstream stopped, containerd's copy removed: pulled again from the mirror alone.
    let blob_gets = ghcr.count_requests("GET", "/blobs/") + hub.count_requests("GET", "/blobs/");
    ghcr.stop();
    hub.stop();
    for (reference, image) in pulls {
        let digests = digests(image);
        let mut rm = vec!["content", "rm"];
        rm.extend(digests.iter().map(String::as_str));
        let _ = ctr(&dockerd, "mirror-a", &rm);
        ctr_fetch(&dockerd, &rc, hosts, reference, &digests, " offline");
    }
    assert_eq!(
        ghcr.count_requests("GET", "/blobs/") + hub.count_requests("GET", "/blobs/"),
        blob_gets,
        "no upstream blob GET while offline"
    );
}

/// Whether a client trusting only `ca_pem` gets `/v2/` from the mirror.
async fn trusted_by(rc: &Regcache, ca_pem: &str) -> bool {
    let c = support::reqwest_builder(&[ca_pem])
        .resolve("localhost", rc.mirror_addr())
        .build()
        .unwrap();
    let url = format!("https://localhost:{}/v2/", rc.mirror_addr().port());
    c.get(url).send().await.is_ok_and(|r| r.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_given_certificate_is_reread_on_sighup_and_plain_http_is_explicit() {
    let w = PullWorld::new();
    let ghcr = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let hub = Registry::start(&w.ca, &["registry-1.docker.io"], RegistryAuth::None);
    let (first, second) = (support::TestCa::new(), support::TestCa::new());
    let (cert, key) = (w.tmp.path().join("mirror.crt"), w.tmp.path().join("mirror.key"));
    let write = |ca: &support::TestCa| {
        let (c, k) = ca.issue_server_cert(&["localhost"]);
        std::fs::write(&cert, c).unwrap();
        std::fs::write(&key, k).unwrap();
    };
    write(&first);
    let rc = Regcache::builder()
        .connect_to("ghcr.io:443", ghcr.addr())
        .connect_to("registry-1.docker.io:443", hub.addr())
        .upstream_ca(&w.upstream_ca_file)
        .args(["--mirror-listen", "127.0.0.1:0"])
        .args([
            "--mirror-tls-cert",
            cert.to_str().unwrap(),
            "--mirror-tls-key",
            key.to_str().unwrap(),
        ])
        .start();
    assert!(
        trusted_by(&rc, &first.cert_pem()).await,
        "the given certificate is served"
    );
    assert!(!trusted_by(&rc, &rc.ca_cert_pem()).await, "not one from regcache's CA");

    write(&second);
    let pid = rc.pid().expect("running").to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    assert!(
        rc.wait_for_log("configuration reloaded", std::time::Duration::from_secs(10)),
        "{}",
        rc.logs()
    );
    assert!(
        trusted_by(&rc, &second.cert_pem()).await,
        "the new certificate after SIGHUP"
    );
    assert!(!trusted_by(&rc, &first.cert_pem()).await, "the old one is gone");

    // A broken file on reload: refused, the running certificate stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    assert!(
        rc.wait_for_log("reload refused", std::time::Duration::from_secs(10)),
        "{}",
        rc.logs()
    );
    assert!(
        trusted_by(&rc, &second.cert_pem()).await,
        "still served after a bad reload"
    );

    let plain = Regcache::builder()
        .connect_to("ghcr.io:443", ghcr.addr())
        .upstream_ca(&w.upstream_ca_file)
        .args(["--mirror-listen", "127.0.0.1:0", "--mirror-insecure-http"])
        .start();
    let res = reqwest::get(format!("http://{}/v2/", plain.mirror_addr()))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["docker-distribution-api-version"], "registry/2.0");

    // Without any TLS choice the mirror does not start, and says what to add.
    let dir = tempfile::tempdir().unwrap();
    let out = serve_with_mirror(dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--mirror-name") && stderr.contains("--mirror-insecure-http"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_only_instance_has_no_proxy_and_answers_its_own_endpoints() {
    let w = PullWorld::new();
    let ghcr = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let hub = Registry::start(&w.ca, &["registry-1.docker.io"], RegistryAuth::None);
    let app = TestImage::generate(&[100 * 1024]);
    support::push(&ghcr.url(), "org/app", "1.0", &app, None, &w.ca.cert_pem())
        .await
        .unwrap();
    let rc = regcache_with_mirror(&w, &ghcr, &hub, &["--no-proxy-listener"]);
    let logs = rc.logs();
    assert!(!logs.contains("regcache listening on"), "no proxy listener:\n{logs}");
    assert!(!logs.contains("HTTPS_PROXY="), "no proxy advice:\n{logs}");
    let mirror = format!("localhost:{}", rc.mirror_addr().port());
    skopeo_pull(
        &w,
        &rc,
        &format!("docker://{mirror}/ghcr.io/org/app:1.0"),
        None,
        None,
        &app,
    );

    // regcache's own endpoints are on the mirror now.
    let c = client(&rc);
    let base = format!("https://{mirror}");
    let health = c.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = get_text(&c, &format!("{base}/metrics")).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("regcache_requests_total{") && l.contains("listener=\"mirror\"")),
        "{metrics}"
    );
    let ca = get_text(&c, &format!("{base}/ca.crt")).await;
    assert_eq!(ca.trim(), rc.ca_cert_pem().trim());

    // Nothing to serve at all is refused.
    let out = support::run_cli(&["serve", "--no-proxy-listener", "--data-dir", "/nonexistent-regcache"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--mirror-listen"), "{}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_answers_health_checks_without_login() {
    let w = PullWorld::new();
    let ghcr = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let hub = Registry::start(&w.ca, &["registry-1.docker.io"], RegistryAuth::None);
    let htpasswd = w.tmp.path().join("mirror.htpasswd");
    std::fs::write(&htpasswd, support::registry::htpasswd_line("ci", "s3cret")).unwrap();
    let rc = regcache_with_mirror(&w, &ghcr, &hub, &["--mirror-htpasswd", htpasswd.to_str().unwrap()]);
    let c = client(&rc);
    let base = format!("https://localhost:{}", rc.mirror_addr().port());
    assert_eq!(c.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
    assert_eq!(c.get(format!("{base}/v2/")).send().await.unwrap().status(), 401);
    // With the proxy listener on, regcache's other endpoints stay there.
    assert_eq!(
        c.get(format!("{base}/metrics"))
            .basic_auth("ci", Some("s3cret"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

/// The body of a `200` answer to `GET url`.
async fn get_text(c: &reqwest::Client, url: &str) -> String {
    let res = c.get(url).send().await.unwrap();
    assert_eq!(res.status(), 200, "GET {url}");
    res.text().await.unwrap()
}
