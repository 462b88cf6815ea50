//! `regcache ca init --name-constraints`: a CA that can sign only for the intercepted domains.
//! Checked with openssl (the extension is there) and with skopeo, a Go client that enforces
//! name constraints: a pull from a permitted registry works through regcache, one from a host
//! outside the constraints is refused by the client.

mod support;

use std::process::Command;

use support::image::TestImage;
use support::{Regcache, Registry, RegistryAuth, cert_dir_with, run_cli, skopeo_copy};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_constrained_ca_signs_only_for_the_permitted_domains() {
    let w = support::PullWorld::new();
    let ca_dir = w.tmp.path().join("ca");
    let out = run_cli(&[
        "ca",
        "init",
        "--name-constraints",
        "--permit",
        "registry.test",
        "--ca-dir",
        ca_dir.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("may sign only for") && stdout.contains("registry.test"),
        "{stdout}"
    );

    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(ca_dir.join("ca.crt"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("X509v3 Name Constraints"), "{text}");
    for domain in ["DNS:ghcr.io", "DNS:docker.io", "DNS:registry.test", "DNS:pkg.dev"] {
        assert!(text.contains(domain), "{domain} permitted: {text}");
    }

    let image = TestImage::generate(&[64 * 1024]);
    let inside = Registry::start(&w.ca, &["cache.registry.test"], RegistryAuth::None);
    let outside = Registry::start(&w.ca, &["elsewhere.example"], RegistryAuth::None);
    for r in [&inside, &outside] {
        support::push(&r.url(), "team/app", "v1", &image, None, &w.ca.cert_pem())
            .await
            .unwrap();
    }
    let proxy = Regcache::builder()
        .ca_dir(&ca_dir)
        .registry("cache.registry.test")
        .registry("elsewhere.example")
        .connect_to("cache.registry.test:443", inside.addr())
        .connect_to("elsewhere.example:443", outside.addr())
        .upstream_ca(&w.upstream_ca_file)
        .start();
    // A subdomain of a permitted domain: signed, trusted, pulled.
    w.pull_through(&proxy, "docker://cache.registry.test/team/app:v1", None, &image);

    // Outside the constraints the client itself refuses regcache's certificate.
    let cert_dir = cert_dir_with(w.tmp.path(), &[&proxy.ca_cert_pem()]);
    let dest = w.tmp.path().join("refused");
    let out = skopeo_copy(
        &proxy.proxy_url(),
        &cert_dir,
        "docker://elsewhere.example/team/app:v1",
        &dest,
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a constrained CA must not be accepted for elsewhere.example"
    );
    assert!(
        err.contains("not permitted") || err.contains("not authorized to sign"),
        "the client names the constraint: {err}"
    );

    // Bad --permit values are refused.
    let out = run_cli(&[
        "ca",
        "init",
        "--force",
        "--name-constraints",
        "--permit",
        "not a domain",
        "--ca-dir",
        ca_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--permit"));
}
