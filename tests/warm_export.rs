//! `regcache warm`, `regcache cache export` and `regcache cache import` against the real
//! distribution registry (TLS from a test CA, under ghcr.io's name via --connect-to), with
//! skopeo pulling through regcache after the registry is stopped: what was warmed or imported
//! is served from the cache alone, with the digests the registry had.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use support::image::{RegistryClient, TestImage, TestIndex, host_arch};
use support::{PullWorld, Regcache, Registry, RegistryAuth, TokenServer, cert_dir_with, run_cli, skopeo_copy};

/// The platform that is not this machine's, in two-platform test indexes.
fn other_arch() -> &'static str {
    if host_arch() == "arm64" { "amd64" } else { "arm64" }
}

/// An index for `linux/<host>` and `linux/<other>`.
fn two_platform_index(layer_sizes: &[u64]) -> TestIndex {
    TestIndex::generate(&[("linux", host_arch()), ("linux", other_arch())], layer_sizes)
}

/// `regcache <args…>` with the data dir and ghcr.io pointed at `registry` (as serve gets them).
fn regcache_cli(w: &PullWorld, registry: &Registry, data_dir: &Path, args: &[&str]) -> Output {
    let connect = format!("ghcr.io:443={}", registry.addr());
    let mut all: Vec<&str> = args.to_vec();
    all.extend([
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--connect-to",
        &connect,
        "--upstream-ca",
        w.upstream_ca_file.to_str().unwrap(),
    ]);
    run_cli(&all)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

/// GETs of paths containing `part` the registry has logged, once the count is `expected` or
/// 5 s have passed (the registry writes a line after each response is finished).
fn gets(registry: &Registry, part: &str, expected: usize) -> usize {
    let count = || registry.count_requests("GET", part);
    support::poll_until(Duration::from_secs(5), || (count() == expected).then_some(()))
        .map_or_else(count, |()| expected)
}

/// GETs of a blob the registry has logged (see [`gets`]).
fn blob_gets(registry: &Registry, digest: &str, expected: usize) -> usize {
    gets(registry, &format!("/blobs/{digest}"), expected)
}

/// GETs of a manifest the registry has logged (see [`gets`]).
fn manifest_gets(registry: &Registry, repo: &str, reference: &str, expected: usize) -> usize {
    gets(registry, &format!("/v2/{repo}/manifests/{reference}"), expected)
}

/// regcache's access-log lines for requests under `/v2/<repo>/`.
fn repo_lines(logs: &str, repo: &str) -> Vec<String> {
    logs.lines()
        .filter(|l| l.contains("regcache::access") && l.contains(&format!("path=/v2/{repo}/")))
        .map(str::to_string)
        .collect()
}

/// Every request of a pull of `repo` was answered from the cache: blobs and manifests by digest
/// are hits, the tag a hit (or stale, had its freshness run out while the registry is down).
fn assert_served_from_cache(proxy: &Regcache, repo: &str, blobs: usize) {
    let logs = proxy.logs();
    let lines = repo_lines(&logs, repo);
    assert!(!lines.is_empty(), "no request for {repo} in the log:\n{logs}");
    for l in &lines {
        let tag_request = l.contains("/manifests/") && !l.contains("/manifests/sha256:");
        let ok = l.contains("cache=\"hit\"") || (tag_request && l.contains("cache=\"stale\""));
        assert!(ok && l.contains("status=200"), "not served from the cache: {l}");
    }
    let blob_lines = lines.iter().filter(|l| l.contains("/blobs/")).count();
    assert_eq!(blob_lines, blobs, "every blob of {repo} was asked for: {lines:#?}");
}

/// A client GET through regcache with its own `Accept`: (status, X-Cache).
async fn get_through(proxy: &Regcache, url: &str, accept: &str) -> (u16, Option<String>) {
    let config = support::rustls_client_config(&[&proxy.ca_cert_pem()]).as_ref().clone();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .proxy(reqwest::Proxy::all(proxy.proxy_url()).unwrap())
        .build()
        .unwrap();
    let res = client.get(url).header("accept", accept).send().await.unwrap();
    let x_cache = res
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = res.status().as_u16();
    let _ = res.bytes().await;
    (status, x_cache)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_while_serving_then_a_pull_with_upstream_stopped_is_served_from_cache() {
    let w = PullWorld::new();
    let mut registry = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let ca = w.ca.cert_pem();
    let image = TestImage::generate(&[1024 * 1024, 256 * 1024]);
    support::push(&registry.url(), "team/app", "v1", &image, None, &ca)
        .await
        .unwrap();
    let index = two_platform_index(&[512 * 1024, 64 * 1024]);
    support::push_index(&registry.url(), "team/multi", "v2", &index, None, &ca)
        .await
        .unwrap();
    let host = index.image_for_arch(host_arch()).unwrap();
    let other = index.image_for_arch(other_arch()).unwrap();

    let proxy = Regcache::builder()
        .connect_to("ghcr.io:443", registry.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    // warm writes into the data dir of the running serve.
    let out = regcache_cli(
        &w,
        &registry,
        proxy.data_dir(),
        &["warm", "ghcr.io/team/app:v1", "ghcr.io/team/multi:v2"],
    );
    assert_ok(&out, "warm");
    let text = stdout(&out);
    assert!(text.contains("pulled          ghcr.io/team/app:v1"), "{text}");
    assert!(text.contains("pulled          ghcr.io/team/multi:v2"), "{text}");
    assert!(
        text.contains(&format!("linux/{}", host_arch())) && !text.contains(&format!("linux/{}", other_arch())),
        "{text}"
    );
    assert!(text.contains("warm: 2 pulled, 0 already cached, 0 failed"), "{text}");

    // The index and this machine's platform only: the other platform's manifest and blobs
    // were never asked for.
    for d in image.blob_digests().iter().chain(&host.blob_digests()) {
        assert_eq!(blob_gets(&registry, d, 1), 1, "blob {d} fetched once");
    }
    for d in other.blob_digests() {
        assert_eq!(blob_gets(&registry, &d, 0), 0, "blob {d} of the other platform");
    }
    assert_eq!(manifest_gets(&registry, "team/multi", &other.manifest_digest, 0), 0);
    assert_eq!(manifest_gets(&registry, "team/multi", &host.manifest_digest, 1), 1);

    // Again: everything is cached, the tags are checked with a HEAD and nothing is fetched.
    let out = regcache_cli(
        &w,
        &registry,
        proxy.data_dir(),
        &["warm", "ghcr.io/team/app:v1", "ghcr.io/team/multi:v2"],
    );
    assert_ok(&out, "second warm");
    let text = stdout(&out);
    assert!(text.contains("already cached  ghcr.io/team/app:v1"), "{text}");
    assert!(text.contains("warm: 0 pulled, 2 already cached, 0 failed"), "{text}");
    assert_eq!(
        manifest_gets(&registry, "team/app", "v1", 1),
        1,
        "no second manifest GET"
    );
    for d in image.blob_digests() {
        assert_eq!(blob_gets(&registry, &d, 1), 1, "blob {d} not fetched again");
    }

    registry.stop();
    w.pull_through(&proxy, "docker://ghcr.io/team/app:v1", None, &image);
    w.pull_through(&proxy, "docker://ghcr.io/team/multi:v2", None, host);
    assert_served_from_cache(&proxy, "team/app", image.blob_digests().len());
    assert_served_from_cache(&proxy, "team/multi", host.blob_digests().len());

    // Another client's Accept list finds the warmed tag too (X-Cache says so) …
    let docker_accept = "application/vnd.docker.distribution.manifest.v2+json, \
        application/vnd.docker.distribution.manifest.list.v2+json, \
        application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
        application/vnd.docker.distribution.manifest.v1+prettyjws, application/json";
    let (status, x_cache) = get_through(&proxy, "https://ghcr.io/v2/team/multi/manifests/v2", docker_accept).await;
    assert_eq!(status, 200);
    assert!(matches!(x_cache.as_deref(), Some("HIT" | "STALE")), "{x_cache:?}");
    let layer = &host.layers[0].digest;
    let (status, x_cache) = get_through(&proxy, &format!("https://ghcr.io/v2/team/multi/blobs/{layer}"), "*/*").await;
    assert_eq!((status, x_cache.as_deref()), (200, Some("HIT")));
    // … but a client that does not accept an index is never served one.
    let (status, _) = get_through(
        &proxy,
        "https://ghcr.io/v2/team/multi/manifests/v2",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
    .await;
    assert_ne!(status, 200, "an index is not what this client accepts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_takes_the_platforms_asked_for_and_reports_failures() {
    let w = PullWorld::new();
    let registry = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let index = two_platform_index(&[256 * 1024]);
    support::push_index(&registry.url(), "team/multi", "v1", &index, None, &w.ca.cert_pem())
        .await
        .unwrap();
    let host = index.image_for_arch(host_arch()).unwrap();
    let other = index.image_for_arch(other_arch()).unwrap();
    let data = w.tmp.path().join("data");

    let platform = format!("linux/{}", other_arch());
    let out = regcache_cli(
        &w,
        &registry,
        &data,
        &["warm", "--platform", &platform, "ghcr.io/team/multi:v1"],
    );
    assert_ok(&out, "warm --platform");
    assert!(
        stdout(&out).contains("pulled          ghcr.io/team/multi:v1"),
        "{}",
        stdout(&out)
    );
    for d in other.blob_digests() {
        assert_eq!(blob_gets(&registry, &d, 1), 1, "{platform} blob {d}");
    }
    for d in host.blob_digests() {
        assert_eq!(blob_gets(&registry, &d, 0), 0, "blob {d} of a platform not asked for");
    }

    // --platform all, from a file (comments, a duplicate), next to an image that does not exist.
    let list = w.tmp.path().join("images.txt");
    std::fs::write(
        &list,
        "# CI images\nghcr.io/team/multi:v1\n\nghcr.io/team/nope:v1  # gone\nghcr.io/team/multi:v1\n",
    )
    .unwrap();
    let out = regcache_cli(
        &w,
        &registry,
        &data,
        &["warm", "--platform", "all", "--from-file", list.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("pulled          ghcr.io/team/multi:v1"), "{text}");
    assert!(
        text.contains("failed          ghcr.io/team/nope:v1: upstream answered 404"),
        "{text}"
    );
    assert!(text.contains("warm: 1 pulled, 0 already cached, 1 failed"), "{text}");
    assert!(
        stderr(&out).contains("regcache: error: warm: 1 of 2 images failed"),
        "{}",
        stderr(&out)
    );
    for d in host.blob_digests().iter().chain(&other.blob_digests()) {
        assert_eq!(blob_gets(&registry, d, 1), 1, "blob {d} fetched exactly once");
    }

    let out = regcache_cli(
        &w,
        &registry,
        &data,
        &["warm", "--platform", "linux/s390x", "ghcr.io/team/multi:v1"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("the index has no manifest for linux/s390x"),
        "{}",
        stdout(&out)
    );

    // Usage errors: exit 2 and one line.
    for args in [
        vec!["warm", "Not/Valid"],
        vec!["warm"],
        vec!["warm", "--platform", "linux", "alpine"],
    ] {
        let out = regcache_cli(&w, &registry, &data, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    std::fs::write(&list, "alpine\nNot/Valid\n").unwrap();
    let out = regcache_cli(&w, &registry, &data, &["warm", "--from-file", list.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&format!("{}:2: REF", list.display())), "{err}");
}

/// Pushes `image` as `docker.io/library/app:v1` into a Hub-like `registry` whose `tokens`
/// server knows bob.
async fn push_as_bob(w: &PullWorld, registry: &Registry, tokens: &TokenServer, image: &TestImage) {
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
    pusher.push_image("library/app", "v1", image).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_uses_the_accounts_of_the_config_file_and_private_content_stays_private() {
    let w = PullWorld::new();
    let tokens = TokenServer::start(&w.ca, &["auth.docker.io"], Some(("bob", "hunter2")));
    let mut registry = Registry::start(
        &w.ca,
        &["registry-1.docker.io"],
        tokens.registry_auth("https://auth.docker.io/token", "registry.docker.io"),
    );
    let image = TestImage::generate(&[256 * 1024, 32 * 1024]);
    push_as_bob(&w, &registry, &tokens, &image).await;
    let pass_file = w.tmp.path().join("hub.pass");
    std::fs::write(&pass_file, "hunter2\n").unwrap();
    let config = w.tmp.path().join("regcache.toml");
    std::fs::write(
        &config,
        format!(
            "[[credentials]]\nregistry = \"registry-1.docker.io\"\nusername = \"bob\"\npassword_file = \"{}\"\n",
            pass_file.display()
        ),
    )
    .unwrap();
    let data = w.tmp.path().join("data");
    let hosts = [
        format!("registry-1.docker.io:443={}", registry.addr()),
        format!("auth.docker.io:443={}", tokens.addr()),
    ];
    let warm = |with_config: bool| {
        let mut args = vec![
            "warm",
            "app:v1",
            "--data-dir",
            data.to_str().unwrap(),
            "--connect-to",
            &hosts[0],
            "--connect-to",
            &hosts[1],
            "--upstream-ca",
            w.upstream_ca_file.to_str().unwrap(),
        ];
        if with_config {
            args.extend(["--config", config.to_str().unwrap()]);
        }
        run_cli(&args)
    };

    // Without the account, the token host refuses: a failure that says what to do.
    let out = warm(false);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("failed          docker.io/library/app:v1: upstream answered 401")
            && stdout(&out).contains("[[credentials]]"),
        "{}",
        stdout(&out)
    );
    // With the config file serve uses, warm runs the token flow with regcache's account.
    let before = tokens.request_count();
    let out = warm(true);
    assert_ok(&out, "warm --config");
    assert!(
        stdout(&out).contains("pulled          docker.io/library/app:v1"),
        "{}",
        stdout(&out)
    );
    let mine: Vec<_> = tokens.requests().into_iter().skip(before).collect();
    assert!(
        mine.iter()
            .any(|r| r.user.as_deref() == Some("bob") && r.scopes.iter().any(|s| s == "repository:library/app:pull")),
        "{mine:?}"
    );
    assert!(!stdout(&out).contains("hunter2") && !stderr(&out).contains("hunter2"));
    registry.stop();

    // Offline, a serve holding the same account shares it with its clients …
    let with_account = Regcache::builder()
        .data_dir(&data)
        .connect_to("registry-1.docker.io:443", registry.addr())
        .connect_to("auth.docker.io:443", tokens.addr())
        .upstream_ca(&w.upstream_ca_file)
        .arg("--config")
        .arg(&config)
        .start();
    w.pull_through(&with_account, "docker://docker.io/app:v1", None, &image);
    assert_served_from_cache(&with_account, "library/app", image.blob_digests().len());
    drop(with_account);
    // … and one without it serves nobody: warm did not record the repository as public.
    let without = Regcache::builder()
        .data_dir(&data)
        .connect_to("registry-1.docker.io:443", registry.addr())
        .connect_to("auth.docker.io:443", tokens.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    let cert_dir = cert_dir_with(w.tmp.path(), &[&without.ca_cert_pem()]);
    let dest = w.tmp.path().join("refused");
    let out = skopeo_copy(
        &without.proxy_url(),
        &cert_dir,
        "docker://docker.io/app:v1",
        &dest,
        None,
    );
    assert!(!out.status.success(), "private content is not served to anyone");
}

/// A registry with an image (`team/app:v1`) and a two-platform index (`team/multi:v2`), both
/// in regcache's cache at `data` (the image by a skopeo pull through regcache, the index by
/// `warm`), exported to a layout. Returns what it made and the layout.
struct Exported {
    w: PullWorld,
    registry: Registry,
    image: TestImage,
    index: TestIndex,
    layout: PathBuf,
}

async fn cache_and_export() -> Exported {
    let w = PullWorld::new();
    let registry = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let ca = w.ca.cert_pem();
    let image = TestImage::generate(&[768 * 1024, 128 * 1024]);
    support::push(&registry.url(), "team/app", "v1", &image, None, &ca)
        .await
        .unwrap();
    let index = two_platform_index(&[256 * 1024, 32 * 1024]);
    support::push_index(&registry.url(), "team/multi", "v2", &index, None, &ca)
        .await
        .unwrap();
    let data = w.tmp.path().join("data-connected");
    {
        let proxy = Regcache::builder()
            .data_dir(&data)
            .connect_to("ghcr.io:443", registry.addr())
            .upstream_ca(&w.upstream_ca_file)
            .start();
        w.pull_through(&proxy, "docker://ghcr.io/team/app:v1", None, &image);
        let out = regcache_cli(&w, &registry, &data, &["warm", "ghcr.io/team/multi:v2"]);
        assert_ok(&out, "warm");
    }
    let layout = w.tmp.path().join("layout");
    let out = run_cli(&[
        "cache",
        "export",
        "--data-dir",
        data.to_str().unwrap(),
        "ghcr.io/team/app:v1",
        "ghcr.io/team/multi:v2",
        "--to",
        layout.to_str().unwrap(),
    ]);
    assert_ok(&out, "cache export");
    let text = stdout(&out);
    assert!(text.contains("exported  ghcr.io/team/app:v1"), "{text}");
    assert!(
        text.contains(&format!("left out, not cached: linux/{}", other_arch())),
        "{text}"
    );
    assert!(text.contains("export: 2 exported, 0 failed"), "{text}");
    Exported {
        w,
        registry,
        image,
        index,
        layout,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_into_an_empty_data_dir_serves_the_same_digests_offline() {
    let Exported {
        w,
        mut registry,
        image,
        index,
        layout,
    } = cache_and_export().await;
    let host = index.image_for_arch(host_arch()).unwrap();

    // An OCI image layout, each image named with its registry.
    let marker: serde_json::Value = serde_json::from_slice(&std::fs::read(layout.join("oci-layout")).unwrap()).unwrap();
    assert_eq!(marker["imageLayoutVersion"], "1.0.0");
    let index_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let entries = index_json["manifests"].as_array().unwrap();
    let named = |name: &str| {
        entries
            .iter()
            .find(|e| e["annotations"]["org.opencontainers.image.ref.name"] == name)
            .unwrap_or_else(|| panic!("{name} in {index_json:#}"))
            .clone()
    };
    assert_eq!(named("ghcr.io/team/app:v1")["digest"], image.manifest_digest.as_str());
    assert_eq!(named("ghcr.io/team/multi:v2")["digest"], index.digest.as_str());
    assert_eq!(
        named("ghcr.io/team/app:v1")["annotations"]["io.regcache.public"],
        "true"
    );
    let blob = |d: &str| layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
    for d in image.blob_digests().iter().chain(&host.blob_digests()) {
        assert_eq!(support::sha256_digest_of_file(&blob(d)).unwrap(), *d);
    }
    let other = index.image_for_arch(other_arch()).unwrap();
    assert!(!blob(&other.layers[0].digest).exists(), "not cached, not exported");
    // Other OCI tools read it: skopeo copies the image out of the layout by that name.
    let dest = w.tmp.path().join("from-layout");
    let out = support::SkopeoCopy::to_dir(&format!("oci:{}:ghcr.io/team/app:v1", layout.display()), &dest).run();
    assert!(out.status.success(), "skopeo oci: {}", stderr(&out));
    assert_eq!(support::manifest_digest_of_dir(&dest), image.manifest_digest);

    // The offline site: an empty data dir, the registry unreachable.
    registry.stop();
    let offline = w.tmp.path().join("data-offline");
    let out = run_cli(&[
        "cache",
        "import",
        layout.to_str().unwrap(),
        "--data-dir",
        offline.to_str().unwrap(),
    ]);
    assert_ok(&out, "cache import");
    let text = stdout(&out);
    assert!(text.contains("imported  ghcr.io/team/app:v1"), "{text}");
    assert!(text.contains("import: 2 images"), "{text}");

    let proxy = Regcache::builder()
        .data_dir(&offline)
        .connect_to("ghcr.io:443", registry.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    w.pull_through(&proxy, "docker://ghcr.io/team/app:v1", None, &image);
    w.pull_through(&proxy, "docker://ghcr.io/team/multi:v2", None, host);
    assert_served_from_cache(&proxy, "team/app", image.blob_digests().len());
    assert_served_from_cache(&proxy, "team/multi", host.blob_digests().len());
    // By digest too.
    let by_digest = format!("docker://ghcr.io/team/app@{}", image.manifest_digest);
    w.pull_through(&proxy, &by_digest, None, &image);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_of_a_layout_with_a_corrupt_blob_is_refused_and_nothing_is_served() {
    let Exported {
        w,
        mut registry,
        image,
        layout,
        ..
    } = cache_and_export().await;
    registry.stop();

    // The last layer of the image flipped by one bit: the blobs before it are fine (and get
    // copied before the corrupt one is found).
    let layer = &image.layers.last().unwrap().digest;
    let path = layout.join("blobs/sha256").join(layer.trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();

    let offline = w.tmp.path().join("data-offline");
    let out = run_cli(&[
        "cache",
        "import",
        layout.to_str().unwrap(),
        "--data-dir",
        offline.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}{}", stdout(&out), stderr(&out));
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.starts_with("regcache: error:"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("import refused, nothing recorded"), "{line}");
    assert!(
        line.contains(layer) && line.contains("does not match its digest"),
        "{line}"
    );
    assert!(!stdout(&out).contains("imported"), "{}", stdout(&out));
    let content = offline.join("cache/content-v2");
    let files = walk_files(&content);
    assert!(
        files.is_empty(),
        "content copied before the failure was removed: {files:?}"
    );

    // A regcache on that data dir has nothing to serve (and upstream is gone).
    let proxy = Regcache::builder()
        .data_dir(&offline)
        .connect_to("ghcr.io:443", registry.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    let cert_dir = cert_dir_with(w.tmp.path(), &[&proxy.ca_cert_pem()]);
    let dest = w.tmp.path().join("nothing");
    let out = skopeo_copy(
        &proxy.proxy_url(),
        &cert_dir,
        "docker://ghcr.io/team/app:v1",
        &dest,
        None,
    );
    assert!(!out.status.success(), "nothing was imported, nothing is served");
    let (status, x_cache) = get_through(
        &proxy,
        &format!("https://ghcr.io/v2/team/app/manifests/{}", image.manifest_digest),
        support::image::MANIFEST_ACCEPT,
    )
    .await;
    assert_ne!(status, 200, "{x_cache:?}");

    // A truncated blob and a missing one are refused alike.
    std::fs::write(&path, &bytes[..middle]).unwrap();
    let out = run_cli(&[
        "cache",
        "import",
        layout.to_str().unwrap(),
        "--data-dir",
        offline.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains(layer.as_str()), "{}", stderr(&out));
    std::fs::remove_file(&path).unwrap();
    let out = run_cli(&[
        "cache",
        "import",
        layout.to_str().unwrap(),
        "--data-dir",
        offline.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("is missing from the layout"), "{}", stderr(&out));
    assert!(walk_files(&content).is_empty());
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(list) = std::fs::read_dir(&d) else { continue };
        for e in list.flatten() {
            if e.path().is_dir() {
                dirs.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// regcache's own token for an account is reused while the token server's `expires_in` (less
/// a 5 s margin) lasts, and fetched anew after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accounts_token_is_reused_for_its_expires_in_and_no_longer() {
    let w = PullWorld::new();
    // 7 s tokens: reused for 2 s.
    let tokens = TokenServer::builder(&w.ca)
        .names(&["auth.docker.io"])
        .credentials("bob", "hunter2")
        .expires_in(7)
        .start();
    let registry = Registry::start(
        &w.ca,
        &["registry-1.docker.io"],
        tokens.registry_auth("https://auth.docker.io/token", "registry.docker.io"),
    );
    let image = TestImage::generate(&[64 * 1024, 32 * 1024, 16 * 1024]);
    push_as_bob(&w, &registry, &tokens, &image).await;
    let config = w.tmp.path().join("regcache.toml");
    std::fs::write(
        &config,
        "[[credentials]]\nregistry = \"registry-1.docker.io\"\nusername = \"bob\"\npassword = \"hunter2\"\n",
    )
    .unwrap();
    let proxy = Regcache::builder()
        .connect_to("registry-1.docker.io:443", registry.addr())
        .connect_to("auth.docker.io:443", tokens.addr())
        .upstream_ca(&w.upstream_ca_file)
        .arg("--config")
        .arg(&config)
        .start();
    // regcache's own token requests, for pulls (the push above asked for pull,push).
    let bobs = || {
        tokens
            .requests()
            .iter()
            .filter(|r| r.user.as_deref() == Some("bob") && r.scopes == ["repository:library/app:pull"])
            .count()
    };
    let layers = image.layer_digests();
    let blob = |d: &str| format!("https://registry-1.docker.io/v2/library/app/blobs/{d}");
    assert_eq!(get_through(&proxy, &blob(&layers[0]), "*/*").await.0, 200);
    assert_eq!(get_through(&proxy, &blob(&layers[1]), "*/*").await.0, 200);
    assert_eq!(bobs(), 1, "one token for both, within its lifetime");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(get_through(&proxy, &blob(&layers[2]), "*/*").await.0, 200);
    assert_eq!(bobs(), 2, "a new token once expires_in (less 5 s) has passed");
}
