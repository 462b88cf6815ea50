//! Recipes of docs/ca-trust.md tried with the real clients (the Debian system store recipe is
//! tried in tests/setup_script.rs, dockerd's certs.d in tests/dockerd_pull.rs, skopeo's cert
//! dir in the pull tests):
//!
//! * containerd: `hosts.toml` with `ca = "…/regcache-ca.crt"`, with `ctr` (containerd 1.6) on
//!   the containerd a private dockerd starts, `HTTPS_PROXY` at regcache;
//! * Go clients: `SSL_CERT_FILE` pointing at a bundle of the "system" roots plus regcache's CA,
//!   with skopeo: an intercepted registry and a tunnelled one (whose certificate comes from the
//!   "system" roots) both work; with regcache's CA alone the tunnelled one fails.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::{Dockerd, PullWorld, Regcache, Registry, RegistryAuth, SkopeoCopy, TestCa, TestImage};

/// `ctr --address SOCK --namespace regcache-test ARGS…` with `HTTPS_PROXY` = `proxy`.
fn ctr(dockerd: &Dockerd, proxy: &str, args: &[&str]) -> Output {
    Command::new("/usr/bin/ctr")
        .arg("--address")
        .arg(dockerd.containerd_address())
        .args(["--namespace", "regcache-test"])
        .args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HTTPS_PROXY", proxy)
        .env("HTTP_PROXY", proxy)
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containerd_hosts_toml_with_ca_pulls_through_regcache() {
    if !Dockerd::runs_here("ca_trust_recipes::containerd_hosts_toml_with_ca_pulls_through_regcache") {
        return;
    }
    let w = PullWorld::new();
    let registry = Registry::start(&w.ca, &["registry.test"], RegistryAuth::None);
    let image = TestImage::generate(&[256 * 1024, 32 * 1024]);
    support::push(&registry.url(), "team/tool", "v2", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();
    let proxy = Regcache::builder()
        .registry("registry.test")
        .connect_to("registry.test:443", registry.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    // Only for its containerd: the engine itself pulls nothing here.
    let dockerd = Dockerd::builder().start();
    let reference = "registry.test/team/tool:v2";

    // Without the recipe, containerd does not trust regcache's leaf for registry.test.
    let refused = ctr(&dockerd, &proxy.proxy_url(), &["content", "fetch", reference]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(
        text(&refused).contains("x509") || text(&refused).contains("certificate"),
        "{}",
        text(&refused)
    );

    // The recipe: <hosts-dir>/registry.test/hosts.toml naming regcache's CA.
    let hosts_dir = w.tmp.path().join("certs.d");
    let host_dir = hosts_dir.join("registry.test");
    std::fs::create_dir_all(&host_dir).unwrap();
    let ca_file = host_dir.join("regcache-ca.crt");
    std::fs::write(&ca_file, proxy.ca_cert_pem()).unwrap();
    std::fs::write(
        host_dir.join("hosts.toml"),
        format!(
            "server = \"https://registry.test\"\n\n[host.\"https://registry.test\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{}\"\n",
            ca_file.display()
        ),
    )
    .unwrap();
    let hosts_dir = hosts_dir.to_str().unwrap();
    let fetched = ctr(
        &dockerd,
        &proxy.proxy_url(),
        &["content", "fetch", "--hosts-dir", hosts_dir, reference],
    );
    assert!(fetched.status.success(), "{}", text(&fetched));

    // containerd verified every digest on the way in; it now holds manifest, config, layers.
    let listed = ctr(&dockerd, &proxy.proxy_url(), &["content", "ls", "-q"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    for digest in std::iter::once(image.manifest_digest.clone()).chain(image.blob_digests()) {
        assert!(listed.lines().any(|l| l.trim() == digest), "{digest} in:\n{listed}");
    }
    let logs = proxy.logs();
    for digest in image.blob_digests() {
        assert!(
            logs.lines()
                .any(|l| l.contains("host=registry.test:443") && l.contains(&format!("/blobs/{digest}"))),
            "{digest} went through regcache:\n{logs}"
        );
    }
}

/// Copies `src` with skopeo through `proxy`, trusting only what `SSL_CERT_FILE`/`SSL_CERT_DIR`
/// say (no `--src-cert-dir`).
fn skopeo_with_roots(w: &PullWorld, proxy: &Regcache, src: &str, cert_file: &Path, cert_dir: &Path) -> Output {
    let dest = w.tmp.path().join(format!("pull-{}", support::random_hex(4)));
    SkopeoCopy::to_dir(src, &dest)
        .proxy(&proxy.proxy_url())
        .env("SSL_CERT_FILE", cert_file.to_str().unwrap())
        .env("SSL_CERT_DIR", cert_dir.to_str().unwrap())
        .run()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_cert_file_needs_a_bundle_of_system_roots_and_regcache_ca() {
    let w = PullWorld::new();
    // Intercepted: regcache re-signs it. Tunnelled: its own certificate, from a CA that stands
    // for the public roots a real machine has in its system store.
    let intercepted = Registry::start(&w.ca, &["registry.test"], RegistryAuth::None);
    let public_roots = TestCa::new();
    let tunnelled = Registry::start(&public_roots, &["elsewhere.test"], RegistryAuth::None);
    let image = TestImage::generate(&[64 * 1024]);
    support::push(&intercepted.url(), "team/a", "v1", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();
    support::push(&tunnelled.url(), "team/b", "v1", &image, None, &public_roots.cert_pem())
        .await
        .unwrap();
    let proxy = Regcache::builder()
        .registry("registry.test")
        .connect_to("registry.test:443", intercepted.addr())
        .connect_to("elsewhere.test:443", tunnelled.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();

    let empty_dir = w.tmp.path().join("no-cert-dir");
    std::fs::create_dir_all(&empty_dir).unwrap();
    let regcache_only = w.tmp.path().join("regcache-only.pem");
    std::fs::write(&regcache_only, proxy.ca_cert_pem()).unwrap();
    let bundle = w.tmp.path().join("bundle.pem");
    std::fs::write(&bundle, format!("{}{}", public_roots.cert_pem(), proxy.ca_cert_pem())).unwrap();

    // regcache's CA alone: the intercepted registry works, every other TLS host breaks.
    let out = skopeo_with_roots(
        &w,
        &proxy,
        "docker://registry.test/team/a:v1",
        &regcache_only,
        &empty_dir,
    );
    assert!(out.status.success(), "{}", text(&out));
    let out = skopeo_with_roots(
        &w,
        &proxy,
        "docker://elsewhere.test/team/b:v1",
        &regcache_only,
        &empty_dir,
    );
    assert!(!out.status.success(), "tunnelled host trusted without its roots");
    assert!(
        text(&out).contains("x509") || text(&out).contains("certificate"),
        "{}",
        text(&out)
    );

    // The recipe: system roots + regcache's CA in one bundle. Both work.
    for src in ["docker://registry.test/team/a:v1", "docker://elsewhere.test/team/b:v1"] {
        let out = skopeo_with_roots(&w, &proxy, src, &bundle, &empty_dir);
        assert!(out.status.success(), "{src}: {}", text(&out));
    }
    let logs = proxy.logs();
    assert!(
        logs.lines()
            .any(|l| l.contains("host=elsewhere.test:443") && l.contains("cache=\"tunnel\"")),
        "elsewhere.test was tunnelled, not intercepted:\n{logs}"
    );

    // Go also reads the certificate directories (/etc/ssl/certs, /etc/pki/tls/certs, or
    // SSL_CERT_DIR) next to SSL_CERT_FILE: with the "system" CA in the directory, regcache's CA
    // alone in SSL_CERT_FILE works too. docs/ca-trust.md says why the bundle is still the advice.
    let dir_with_roots = w.tmp.path().join("cert-dir");
    std::fs::create_dir_all(&dir_with_roots).unwrap();
    std::fs::write(dir_with_roots.join("public.pem"), public_roots.cert_pem()).unwrap();
    let out = skopeo_with_roots(
        &w,
        &proxy,
        "docker://elsewhere.test/team/b:v1",
        &regcache_only,
        &dir_with_roots,
    );
    assert!(out.status.success(), "{}", text(&out));
}
