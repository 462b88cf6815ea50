//! The mirror's certificate from a real ACME CA: Debian's `pebble` on loopback validates the
//! mirror by TLS-ALPN-01 on the mirror's own listener; skopeo trusting pebble's root (and not
//! regcache's CA) pulls through it; short certificates are renewed with no restart; a stored
//! certificate is used again after a restart, with the CA gone.

mod support;

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use support::pebble::Pebble;
use support::{PullWorld, Regcache, Registry, RegistryAuth, SkopeoCopy, TestImage};

/// regcache caching `ghcr.io` (the given upstream) with its mirror on `127.0.0.1:port`, its
/// certificate for `localhost` from `pebble`.
fn regcache_with_acme(w: &PullWorld, ghcr: &Registry, pebble: &Pebble, port: u16, data: &Path) -> Regcache {
    Regcache::builder()
        .connect_to("ghcr.io:443", ghcr.addr())
        .upstream_ca(&w.upstream_ca_file)
        .data_dir(data)
        .args([
            "--mirror-listen",
            &format!("127.0.0.1:{port}"),
            "--mirror-name",
            "localhost",
        ])
        .args([
            "--acme-directory",
            &pebble.directory_url(),
            "--acme-email",
            "ops@example.com",
        ])
        .arg("--acme-ca-cert")
        .arg(pebble.https_ca_file())
        .start()
}

/// The leaf certificate the mirror serves to a client trusting only `root_pem` (DER), or why
/// the handshake failed.
fn served_leaf(port: u16, root_pem: &str) -> Result<Vec<u8>, String> {
    let mut config = support::rustls_client_config(&[root_pem]).as_ref().clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).map_err(|e| e.to_string())?;
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| e.to_string())?;
    }
    let leaf = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no certificate")?;
    Ok(leaf.as_ref().to_vec())
}

/// skopeo copies `ghcr.io/org/app:1.0` from the mirror by its name (`localhost:PORT/ghcr.io/…`),
/// trusting `root_pem` only; checks every digest.
fn skopeo_pull(w: &PullWorld, rc: &Regcache, port: u16, root_pem: &str, image: &TestImage) {
    let cert_dir = support::cert_dir_with(w.tmp.path(), &[root_pem]);
    let dest = w.tmp.path().join(format!("pull-{}", support::random_hex(4)));
    let src = format!("docker://localhost:{port}/ghcr.io/org/app:1.0");
    let out = SkopeoCopy::to_dir(&src, &dest).cert_dir(&cert_dir).run();
    if !out.status.success() {
        eprintln!("----- regcache -----\n{}", rc.logs());
    }
    support::skopeo::assert_success(&out, &format!("skopeo copy {src}"));
    assert_eq!(support::manifest_digest_of_dir(&dest), image.manifest_digest);
    let mut expected = image.blob_digests();
    expected.sort();
    assert_eq!(support::skopeo::verify_dir_blobs(&dest), expected, "blobs re-hashed");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_pebble_serves_pulls_and_is_renewed_without_a_restart() {
    let w = PullWorld::new();
    let ghcr = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let app = TestImage::generate(&[200 * 1024, 30 * 1024]);
    support::push(&ghcr.url(), "org/app", "1.0", &app, None, &w.ca.cert_pem())
        .await
        .unwrap();
    let port = support::free_port();
    // 45 s certificates: regcache renews at two thirds of their life, 30 s in.
    let pebble = Pebble::start(&w.ca, port, Some(Duration::from_secs(45)));
    let data = w.tmp.path().join("data");
    let rc = regcache_with_acme(&w, &ghcr, &pebble, port, &data);
    assert!(
        rc.wait_for_log("mirror certificate obtained from the ACME CA", Duration::from_secs(60)),
        "no certificate from pebble; pebble:\n{}",
        pebble.logs()
    );
    assert!(
        rc.logs().contains("answered an ACME tls-alpn-01 validation"),
        "validated on the mirror listener"
    );
    let root = pebble.root_pem();
    let first = served_leaf(port, &root).expect("the mirror's certificate chains to pebble's root");
    assert!(
        served_leaf(port, &rc.ca_cert_pem()).is_err(),
        "the ACME certificate is not one of regcache's CA"
    );

    skopeo_pull(&w, &rc, port, &root, &app);

    let dir = data.join("acme").join(format!("127.0.0.1_{}", pebble.port()));
    assert_eq!(mode(&dir.join("account.json")), 0o600, "the account key is private");
    assert_eq!(
        mode(&dir.join("localhost.pem")),
        0o600,
        "the certificate's key is private"
    );

    // Renewed while running: the served certificate changes, regcache is the same process.
    let pid = rc.pid();
    let renewed = support::poll_until(Duration::from_secs(90), || {
        served_leaf(port, &root).ok().filter(|leaf| *leaf != first)
    });
    assert!(renewed.is_some(), "the certificate was not renewed:\n{}", rc.logs());
    assert_eq!(rc.pid(), pid);
    assert!(
        rc.logs()
            .matches("mirror certificate obtained from the ACME CA")
            .count()
            >= 2
    );
    skopeo_pull(&w, &rc, port, &root, &app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_certificate_is_served_after_a_restart_with_the_ca_gone() {
    let w = PullWorld::new();
    let ghcr = Registry::start(&w.ca, &["ghcr.io"], RegistryAuth::None);
    let app = TestImage::generate(&[100 * 1024]);
    support::push(&ghcr.url(), "org/app", "1.0", &app, None, &w.ca.cert_pem())
        .await
        .unwrap();
    let port = support::free_port();
    let pebble = Pebble::start(&w.ca, port, None);
    let root = pebble.root_pem();
    let data = w.tmp.path().join("data");
    let mut rc = regcache_with_acme(&w, &ghcr, &pebble, port, &data);
    assert!(
        rc.wait_for_log("mirror certificate obtained from the ACME CA", Duration::from_secs(60)),
        "no certificate from pebble; pebble:\n{}",
        pebble.logs()
    );
    let first = served_leaf(port, &root).unwrap();
    drop(pebble);

    rc.restart();
    assert!(
        rc.wait_for_log("mirror certificate (ACME) loaded", Duration::from_secs(10)),
        "{}",
        rc.logs()
    );
    assert_eq!(
        served_leaf(port, &root).unwrap(),
        first,
        "the stored certificate, no new order"
    );
    skopeo_pull(&w, &rc, port, &root, &app);
}
