//! Self-tests of the end-to-end fixtures in `tests/support`, without the
//! proxy: real docker-registry, real skopeo, in-process token server.
//!
//! skopeo (a Go client) never uses a proxy for 127.0.0.1, so these pulls go
//! straight to the registry.

mod support;

use std::net::SocketAddr;
use std::path::Path;

use support::image::{ImageFormat, ImageSpec, RegistryClient, TestImage, TestIndex};
use support::skopeo::{SkopeoCopy, assert_success, verify_dir_blobs};
use support::{Registry, RegistryAuth, TestCa, TokenServer, cert_dir_with, manifest_digest_of_dir, skopeo_copy};

/// Pulls `src` with skopeo (no proxy) into a fresh dir under `tmp` and
/// checks manifest and blob digests against `image`.
fn pull_and_check(tmp: &Path, cert_dir: &Path, src: &str, creds: Option<(&str, &str)>, image: &TestImage) {
    let dest = tmp.join(format!("pull-{}", support::random_hex(4)));
    let out = skopeo_copy("", cert_dir, src, &dest, creds);
    assert_success(&out, &format!("skopeo copy {src}"));
    assert_eq!(manifest_digest_of_dir(&dest), image.manifest_digest);
    let mut expected = image.blob_digests();
    expected.sort();
    assert_eq!(verify_dir_blobs(&dest), expected);
}

fn two_layer_image() -> TestImage {
    TestImage::generate(&[512 * 1024, 2 * 1024 * 1024 + 17])
}

#[test]
fn test_ca_issues_server_cert() {
    let ca = TestCa::new();
    let (cert, key) = ca.issue_server_cert(&["ghcr.io", "127.0.0.1"]);
    assert!(cert.contains("BEGIN CERTIFICATE"));
    assert!(key.contains("PRIVATE KEY"));
    let dir = tempfile::tempdir().expect("temp dir");
    let path = ca.write_cert(dir.path());
    assert_eq!(path.file_name().and_then(|n| n.to_str()), Some("test-ca.crt"));
    assert_eq!(std::fs::read_to_string(&path).expect("read CA"), ca.cert_pem());
}

#[test]
fn image_layers_are_valid_tars_with_matching_digests() {
    let image = ImageSpec::new(&[0, 1000, 70_000]).format(ImageFormat::Docker).build();
    assert_eq!(image.layers.len(), 3);
    for (i, layer) in image.layers.iter().enumerate() {
        let bytes = image.layer_bytes(i);
        assert_eq!(bytes.len() as u64, layer.size);
        assert_eq!(support::sha256_digest(&bytes), layer.digest);
        let mut archive = tar::Archive::new(&bytes[..]);
        let sizes: Vec<u64> = archive
            .entries()
            .expect("tar entries")
            .map(|e| e.expect("tar entry").header().size().expect("size"))
            .collect();
        assert_eq!(sizes, vec![[0, 1000, 70_000][i]]);
    }
    let config: serde_json::Value = serde_json::from_slice(&image.config).expect("config json");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().map(Vec::len), Some(3));
    let manifest: serde_json::Value = serde_json::from_slice(&image.manifest).expect("manifest json");
    assert_eq!(manifest["config"]["digest"], image.config_digest.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn push_and_pull_without_auth() {
    let ca = TestCa::new();
    let tmp = tempfile::tempdir().expect("temp dir");
    let cert_dir = cert_dir_with(tmp.path(), &[&ca.cert_pem()]);
    let registry = Registry::start(&ca, &["ghcr.io"], RegistryAuth::None);
    let image = two_layer_image();

    let pushed = support::push(&registry.url(), "team/app", "v1", &image, None, &ca.cert_pem())
        .await
        .expect("push image");
    assert_eq!(pushed.manifest_digest, image.manifest_digest);

    let src = format!("docker://127.0.0.1:{}/team/app:v1", registry.port());
    pull_and_check(tmp.path(), &cert_dir, &src, None, &image);

    // The access log saw the blob GETs.
    let seen = support::poll_until(std::time::Duration::from_secs(5), || {
        let n = registry.count_requests("GET", &image.layers[1].digest);
        (n >= 1).then_some(n)
    });
    assert_eq!(seen, Some(1), "access log:\n{}", registry.logs());

    // Without the CA, skopeo must refuse the registry's certificate.
    let empty_certs = cert_dir_with(tmp.path(), &[]);
    let out = skopeo_copy("", &empty_certs, &src, &tmp.path().join("untrusted"), None);
    assert!(!out.status.success(), "pull without the test CA succeeded");
}

#[tokio::test(flavor = "multi_thread")]
async fn push_and_pull_with_basic_auth() {
    let ca = TestCa::new();
    let tmp = tempfile::tempdir().expect("temp dir");
    let cert_dir = cert_dir_with(tmp.path(), &[&ca.cert_pem()]);
    let registry = Registry::start(&ca, &["quay.io"], RegistryAuth::basic("alice", "s3cret"));
    let image = two_layer_image();

    let anonymous = support::push(&registry.url(), "org/app", "v1", &image, None, &ca.cert_pem()).await;
    assert!(anonymous.is_err(), "anonymous push must fail");
    let wrong = support::push(
        &registry.url(),
        "org/app",
        "v1",
        &image,
        Some(("alice", "wrong")),
        &ca.cert_pem(),
    )
    .await;
    assert!(wrong.is_err(), "push with a wrong password must fail");
    support::push(
        &registry.url(),
        "org/app",
        "v1",
        &image,
        Some(("alice", "s3cret")),
        &ca.cert_pem(),
    )
    .await
    .expect("push with Basic auth");

    let src = format!("docker://127.0.0.1:{}/org/app:v1", registry.port());
    pull_and_check(tmp.path(), &cert_dir, &src, Some(("alice", "s3cret")), &image);
    let out = skopeo_copy("", &cert_dir, &src, &tmp.path().join("anon"), None);
    assert!(!out.status.success(), "anonymous pull must fail");
    let out = skopeo_copy("", &cert_dir, &src, &tmp.path().join("wrong"), Some(("alice", "nope")));
    assert!(!out.status.success(), "pull with a wrong password must fail");
}

#[tokio::test(flavor = "multi_thread")]
async fn push_and_pull_with_token_auth() {
    let ca = TestCa::new();
    let tmp = tempfile::tempdir().expect("temp dir");
    let cert_dir = cert_dir_with(tmp.path(), &[&ca.cert_pem()]);
    let tokens = TokenServer::start(&ca, &["auth.docker.io"], Some(("bob", "hunter2")));
    let registry = Registry::start(
        &ca,
        &["registry-1.docker.io"],
        tokens.registry_auth(&tokens.realm(), "registry.test"),
    );
    let image = two_layer_image();

    let anonymous = support::push(&registry.url(), "library/app", "v1", &image, None, &ca.cert_pem()).await;
    assert!(anonymous.is_err(), "push without token credentials must fail");
    support::push(
        &registry.url(),
        "library/app",
        "v1",
        &image,
        Some(("bob", "hunter2")),
        &ca.cert_pem(),
    )
    .await
    .expect("push with a token");

    let before = tokens.request_count();
    let src = format!("docker://127.0.0.1:{}/library/app:v1", registry.port());
    pull_and_check(tmp.path(), &cert_dir, &src, Some(("bob", "hunter2")), &image);
    assert!(tokens.request_count() > before, "skopeo never asked for a token");
    let last = tokens.requests().pop().expect("a token request");
    assert_eq!(last.service.as_deref(), Some("registry.test"));
    assert_eq!(last.user.as_deref(), Some("bob"));
    assert!(
        last.scopes.iter().any(|s| s == "repository:library/app:pull"),
        "scopes: {:?}",
        last.scopes
    );

    let out = skopeo_copy("", &cert_dir, &src, &tmp.path().join("anon"), None);
    assert!(!out.status.success(), "anonymous pull must fail");

    // A token minted directly works for a plain GET.
    let token = tokens.mint_token("registry.test", &["repository:library/app:pull"]);
    let client = ca.reqwest_builder().build().expect("reqwest client");
    let resp = client
        .get(format!(
            "{}/v2/library/app/manifests/{}",
            registry.url(),
            image.manifest_digest
        ))
        .header("accept", support::image::MANIFEST_ACCEPT)
        .bearer_auth(token)
        .send()
        .await
        .expect("GET manifest with minted token");
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn anonymous_token_flow_with_docker_hub_names() {
    // Registry and token server under Docker Hub's names; the realm is the
    // real one (port 443), reached through resolve overrides.
    let ca = TestCa::new();
    let tokens = TokenServer::start(&ca, &["auth.docker.io"], None);
    let registry = Registry::start(
        &ca,
        &["registry-1.docker.io"],
        tokens.registry_auth("https://auth.docker.io/token", "registry.docker.io"),
    );
    let image = two_layer_image();
    let client = RegistryClient::new(
        "https://registry-1.docker.io",
        &ca.cert_pem(),
        None,
        &[
            ("registry-1.docker.io", registry.addr()),
            ("auth.docker.io", tokens.addr()),
        ],
    )
    .expect("client");
    client
        .push_image("library/busybox", "latest", &image)
        .await
        .expect("push through docker.io names");
    let fetched = client
        .get_manifest("library/busybox", "latest")
        .await
        .expect("get manifest");
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.body, image.manifest);
    assert_eq!(
        fetched.docker_content_digest.as_deref(),
        Some(image.manifest_digest.as_str())
    );
    assert!(tokens.request_count() >= 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_platform_index() {
    let ca = TestCa::new();
    let tmp = tempfile::tempdir().expect("temp dir");
    let cert_dir = cert_dir_with(tmp.path(), &[&ca.cert_pem()]);
    let registry = Registry::start(&ca, &[], RegistryAuth::None);
    let index = TestIndex::generate_two_platform(&[4096, 8192]);
    let pushed = support::push_index(&registry.url(), "multi/app", "v1", &index, None, &ca.cert_pem())
        .await
        .expect("push index");
    assert_eq!(pushed.digest, index.digest);

    // Default copy picks the host platform.
    let host = index
        .image_for_arch(support::image::host_arch())
        .expect("index has the host arch");
    let src = format!("docker://127.0.0.1:{}/multi/app:v1", registry.port());
    pull_and_check(tmp.path(), &cert_dir, &src, None, host);

    // --all keeps the index itself.
    let dest = tmp.path().join("all");
    let out = SkopeoCopy::to_dir(&src, &dest).cert_dir(&cert_dir).arg("--all").run();
    assert_success(&out, "skopeo copy --all");
    assert_eq!(manifest_digest_of_dir(&dest), index.digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_stop_restart_and_shared_storage() {
    let ca = TestCa::new();
    let tmp = tempfile::tempdir().expect("temp dir");
    let storage = tmp.path().join("storage");
    std::fs::create_dir_all(&storage).expect("storage dir");
    let mut first = Registry::builder(&ca).storage_dir(&storage).start();
    let image = TestImage::generate(&[1024]);
    support::push(&first.url(), "a/b", "t", &image, None, &ca.cert_pem())
        .await
        .expect("push");

    let second = Registry::builder(&ca).storage_dir(&storage).start();
    let fetched = RegistryClient::new(&second.url(), &ca.cert_pem(), None, &[])
        .expect("client")
        .get_manifest("a/b", "t")
        .await
        .expect("get manifest from the second registry");
    assert_eq!(fetched.body, image.manifest);

    let port = first.port();
    first.stop();
    assert!(!first.is_running());
    let refused = std::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)));
    assert!(refused.is_err(), "stopped registry still accepts connections");
    first.restart();
    assert_eq!(first.port(), port);
    let fetched = RegistryClient::new(&first.url(), &ca.cert_pem(), None, &[])
        .expect("client")
        .get_manifest("a/b", "t")
        .await
        .expect("get manifest after restart");
    assert_eq!(fetched.status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_rejects_foreign_and_tampered_tokens() {
    let ca = TestCa::new();
    let tokens = TokenServer::start(&ca, &[], None);
    let other = TokenServer::start(&ca, &[], None);
    let registry = Registry::start(&ca, &[], tokens.registry_auth(&tokens.realm(), "registry.test"));
    let client = ca.reqwest_builder().build().expect("reqwest client");
    let get = |token: String| {
        let req = client.get(format!("{}/v2/", registry.url())).bearer_auth(token);
        async move { req.send().await.expect("GET /v2/").status().as_u16() }
    };
    let scope = ["repository:x/y:pull"];
    assert_eq!(get(tokens.mint_token("registry.test", &scope)).await, 200);
    // Wrong audience.
    assert_eq!(get(tokens.mint_token("other.service", &scope)).await, 401);
    // Signed by a key the registry does not trust (same issuer name).
    assert_eq!(get(other.mint_token("registry.test", &scope)).await, 401);
    // One signature character changed (well inside the r||s bytes).
    let good = tokens.mint_token("registry.test", &scope);
    let at = good.rfind('.').expect("JWT has a signature part") + 10;
    let flipped = if &good[at..=at] == "A" { "B" } else { "A" };
    let bad = format!("{}{flipped}{}", &good[..at], &good[at + 1..]);
    assert_eq!(get(bad).await, 401);
}

/// Writes an executable shell script standing in for the regcache binary.
fn fake_binary(dir: &Path, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(format!("fake-regcache-{}.sh", support::random_hex(4)));
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write fake binary");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

#[test]
fn regcache_fixture_waits_for_ready_line_and_restarts() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let script = fake_binary(
        tmp.path(),
        r#"echo "starting with: $*" >&2
echo "some other line"
echo "regcache listening on 127.0.0.1:4$(shuf -i 1000-9999 -n 1)"
echo "RUST_LOG=$RUST_LOG HTTPS_PROXY=${HTTPS_PROXY:-unset}" >&2
exec sleep 60"#,
    );
    let mut rc = support::Regcache::builder()
        .binary(&script)
        .connect_to("ghcr.io:443", SocketAddr::from(([127, 0, 0, 1], 1234)))
        .rust_log("debug")
        .start();
    assert!(rc.proxy_url().starts_with("http://127.0.0.1:4"));
    assert!(rc.wait_for_log("RUST_LOG=debug HTTPS_PROXY=unset", std::time::Duration::from_secs(5)));
    let logs = rc.logs();
    assert!(logs.contains("--connect-to ghcr.io:443=127.0.0.1:1234"), "{logs}");
    assert!(logs.contains(&format!("--ca-dir {}", rc.ca_dir().display())), "{logs}");
    assert_eq!(rc.ca_cert_path(), rc.ca_dir().join("ca.crt"));
    assert!(rc.is_running());
    rc.restart();
    assert!(rc.is_running());
    assert!(rc.logs().contains("=== regcache start #2 ==="));
    rc.kill();
    assert!(!rc.is_running());
}

#[test]
#[should_panic(expected = "exited with")]
fn regcache_fixture_reports_early_exit() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let script = fake_binary(tmp.path(), "echo 'bad flag' >&2\nexit 3");
    let _rc = support::Regcache::builder().binary(&script).start();
}
