//! The mirror with a real Docker engine (Debian's `docker.io`, private instance): dockerd's
//! `registry-mirrors` pulls of a Docker Hub image through the mirror, offline from the cache,
//! and — with regcache stopped — straight from "Docker Hub" (a distribution registry on
//! port 443 of a loopback address that dockerd's private `/etc/hosts` names
//! `registry-1.docker.io`), the fallback mirror mode exists for; and `docker login` to a
//! mirror with htpasswd, then pulls by the mirror's name.

mod support;

use std::net::{IpAddr, SocketAddr};

use support::{Dockerd, PullWorld, Regcache, Registry, RegistryAuth};

/// A loopback address of this test's own (127.0.0.0/8 is all local on Linux), so that its
/// port 443 is free whatever else runs.
fn own_loopback_ip() -> IpAddr {
    let b = support::random_hex(2);
    let (x, y) = (
        u8::from_str_radix(&b[..2], 16).unwrap(),
        u8::from_str_radix(&b[2..], 16).unwrap(),
    );
    IpAddr::from([127, 80, x, y.max(1)])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerd_pulls_through_the_mirror_offline_and_falls_back_to_the_hub_without_it() {
    if !Dockerd::runs_here(
        "mirror_dockerd::dockerd_pulls_through_the_mirror_offline_and_falls_back_to_the_hub_without_it",
    ) {
        return;
    }
    let w = PullWorld::new();
    let ip = own_loopback_ip();
    let mut hub = Registry::builder(&w.ca)
        .names(&["registry-1.docker.io"])
        .bind(SocketAddr::new(ip, 443))
        .start();
    let image = support::ImageSpec::new(&[512 * 1024, 64 * 1024])
        .format(support::ImageFormat::Docker)
        .build();
    support::push(&hub.url(), "library/alpine", "3.20", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();
    let mut rc = Regcache::builder()
        .connect_to("registry-1.docker.io:443", hub.addr())
        .upstream_ca(&w.upstream_ca_file)
        .args(["--mirror-listen", "127.0.0.1:0", "--mirror-name", "localhost"])
        .start();
    let mirror = format!("localhost:{}", rc.mirror_addr().port());
    // dockerd reaches Docker Hub by itself too: the name resolves to the hub registry, whose
    // CA is among dockerd's system roots (it checks Docker Hub against those only).
    let dockerd = Dockerd::builder()
        .registry_mirror(&format!("https://{mirror}"))
        .trust(&mirror, &rc.ca_cert_pem())
        .resolve("registry-1.docker.io", ip)
        .system_root(&w.ca.cert_pem())
        .start();
    let out = dockerd.docker_ok(&["pull", "alpine:3.20"]);
    assert!(out.contains(&format!("Digest: {}", image.manifest_digest)), "{out}");
    let id = dockerd.docker_ok(&["image", "inspect", "--format", "{{.Id}}", "alpine:3.20"]);
    assert_eq!(id.trim(), image.config_digest);
    for digest in image.blob_digests() {
        assert!(
            rc.mirror_lines(&format!("/blobs/{digest}"))
                .iter()
                .any(|l| l.contains("host=registry-1.docker.io:443")),
            "{digest} came through the mirror, not straight from the hub:\n{}",
            rc.logs()
        );
    }

    // Docker Hub gone, the image removed: pulled again from the mirror's cache.
    dockerd.docker_ok(&["rmi", "alpine:3.20"]);
    hub.stop();
    let out = dockerd.docker_ok(&["pull", "alpine:3.20"]);
    assert!(out.contains(&format!("Digest: {}", image.manifest_digest)), "{out}");
    let id = dockerd.docker_ok(&["image", "inspect", "--format", "{{.Id}}", "alpine:3.20"]);
    assert_eq!(
        id.trim(),
        image.config_digest,
        "the cached pull produced the same image"
    );

    // The mirror gone, Docker Hub back: dockerd falls back to it by itself.
    dockerd.docker_ok(&["rmi", "alpine:3.20"]);
    hub.restart();
    rc.kill();
    let before = hub.count_requests("GET", "/blobs/");
    let out = dockerd.docker_ok(&["pull", "alpine:3.20"]);
    assert!(out.contains(&format!("Digest: {}", image.manifest_digest)), "{out}");
    let id = dockerd.docker_ok(&["image", "inspect", "--format", "{{.Id}}", "alpine:3.20"]);
    assert_eq!(id.trim(), image.config_digest);
    assert!(
        hub.count_requests("GET", "/blobs/") >= before + image.blob_digests().len(),
        "the layers came straight from the hub"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_login_to_the_mirror_then_pull_by_its_name() {
    if !Dockerd::runs_here("mirror_dockerd::docker_login_to_the_mirror_then_pull_by_its_name") {
        return;
    }
    let w = PullWorld::new();
    let hub = Registry::start(&w.ca, &["registry-1.docker.io"], RegistryAuth::None);
    let image = support::ImageSpec::new(&[256 * 1024])
        .format(support::ImageFormat::Docker)
        .build();
    support::push(&hub.url(), "library/busybox", "1.36", &image, None, &w.ca.cert_pem())
        .await
        .unwrap();
    let htpasswd = w.tmp.path().join("mirror.htpasswd");
    std::fs::write(&htpasswd, support::registry::htpasswd_line("ci", "s3cret")).unwrap();
    let rc = Regcache::builder()
        .connect_to("registry-1.docker.io:443", hub.addr())
        .upstream_ca(&w.upstream_ca_file)
        .args(["--mirror-listen", "127.0.0.1:0", "--mirror-name", "localhost"])
        .args(["--mirror-htpasswd", htpasswd.to_str().unwrap()])
        .start();
    let mirror = format!("localhost:{}", rc.mirror_addr().port());
    let dockerd = Dockerd::builder().trust(&mirror, &rc.ca_cert_pem()).start();
    let reference = format!("{mirror}/library/busybox:1.36");

    // No login: refused, nothing pulled. (dockerd then retries a loopback registry over
    // plain HTTP, which a TLS port cannot answer, and reports that last error.)
    let out = dockerd.docker(&["pull", &reference]);
    assert!(!out.status.success(), "a pull without login must fail");
    assert!(
        rc.logs()
            .lines()
            .any(|l| l.contains("listener=\"mirror\"") && l.contains("path=/v2/") && l.contains("status=401")),
        "the mirror answered the Basic challenge:\n{}",
        rc.logs()
    );
    assert!(
        !rc.logs()
            .lines()
            .any(|l| l.contains("/manifests/1.36") && l.contains("status=200")),
        "no manifest served without login"
    );
    assert_eq!(hub.count_requests("GET", "/blobs/"), 0, "no content without login");

    // A wrong password: `docker login` itself fails.
    let out = dockerd.docker(&["login", &mirror, "-u", "ci", "-p", "wrong"]);
    assert!(!out.status.success(), "docker login with a wrong password must fail");

    // The right one: logged in, the pull works.
    let out = dockerd.docker_ok(&["login", &mirror, "-u", "ci", "-p", "s3cret"]);
    assert!(out.contains("Login Succeeded"), "{out}");
    let out = dockerd.docker_ok(&["pull", &reference]);
    assert!(out.contains(&format!("Digest: {}", image.manifest_digest)), "{out}");
    let id = dockerd.docker_ok(&["image", "inspect", "--format", "{{.Id}}", &reference]);
    assert_eq!(id.trim(), image.config_digest);
    assert!(!rc.logs().contains("s3cret"), "the password is never logged");
}
