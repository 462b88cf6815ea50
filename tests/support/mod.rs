//! Shared end-to-end test fixtures for regcache.
//!
//! Everything here runs real programs on loopback (`127.0.0.1`, ephemeral
//! ports): the distribution registry binary (`/usr/bin/docker-registry`), an
//! in-process Docker token issuer, skopeo as the client, and the regcache
//! binary itself. Each fixture cleans up on `Drop` (child processes killed,
//! temporary directories removed) and prints its captured logs when the test
//! is already panicking.
//!
//! Use from an integration test with `mod support;`.
#![allow(dead_code, unused_imports)]

pub mod ca;
pub mod dockerd;
pub mod fault_registry;
pub mod haproxy;
pub mod image;
pub mod pebble;
pub mod regcache;
pub mod registry;
pub mod seaweed;
pub mod skip;
pub mod skopeo;
pub mod squid;
pub mod token;
pub mod world;

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

pub use ca::TestCa;
pub use dockerd::{Dockerd, DockerdBuilder};
pub use fault_registry::{Fault, FaultRegistry, FaultRule, RequestRecord};
pub use image::{
    ImageFormat, ImageSpec, PushedImage, PushedIndex, RegistryClient, TestImage, TestIndex, push, push_index,
};
pub use regcache::{Regcache, RegcacheBuilder, run_cli};
pub use registry::{AccessLogEntry, Registry, RegistryAuth, RegistryBuilder};
pub use skopeo::{SkopeoCopy, cert_dir_with, dir_blob_digests, manifest_digest_of_dir, skopeo_copy};
pub use token::{TokenServer, TokenServerBuilder};
pub use world::PullWorld;

/// Boxed error used by every fallible fixture function.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// Result alias used by every fallible fixture function.
pub type Result<T> = std::result::Result<T, Error>;

/// Installs aws-lc-rs as the process-wide rustls provider.
///
/// Safe to call many times from parallel tests: a second install fails and
/// that failure is ignored on purpose.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Returns a port on 127.0.0.1 that was free a moment ago.
///
/// Binds `127.0.0.1:0`, reads the port and closes the socket. Another process
/// may grab it before the caller binds it; callers that spawn servers on it
/// retry on "address already in use".
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to pick a free port");
    listener.local_addr().expect("local_addr of a bound listener").port()
}

/// `n` distinct ports on 127.0.0.1 that were free a moment ago (all held open together while
/// they are picked, so no two are the same, which `n` calls of [`free_port`] do not promise).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0 to pick a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local_addr of a bound listener").port())
        .collect()
}

/// Polls `check` every 50 ms until it returns `Some`, or gives up after
/// `timeout` and returns `None`.
pub fn poll_until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `sha256:<hex>` of `data` (aws-lc-rs: fast even in debug builds).
pub fn sha256_digest(data: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    format!("sha256:{}", hex(digest.as_ref()))
}

/// `sha256:<hex>` of a file's content, read in chunks.
pub fn sha256_digest_of_file(path: &Path) -> Result<String> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("sha256:{}", hex(hasher.finish().as_ref())))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        write!(s, "{b:02x}").expect("writing to a String cannot fail");
    }
    s
}

/// Random lower-case hex string of `n_bytes` random bytes.
pub fn random_hex(n_bytes: usize) -> String {
    use rand::RngCore as _;
    let mut buf = vec![0u8; n_bytes];
    rand::rng().fill_bytes(&mut buf);
    hex(&buf)
}

/// A rustls client config (aws-lc-rs passed explicitly) trusting only the
/// PEM certificates in `ca_pems`, ALPN `h2`, `http/1.1`, and TLS session
/// resumption disabled.
///
/// Resumption is off on purpose: rustls caches sessions per server *name*,
/// and every fixture is `127.0.0.1`, so a ticket from one server (say the Go
/// registry, TLS_AES_128_GCM_SHA256) is offered to another (the rustls token
/// server, which prefers another suite and group). rustls then sends a
/// HelloRetryRequest, the client drops the now-incompatible PSK from its
/// second ClientHello, and the rustls server aborts with `missing_extension`.
pub fn rustls_client_config(ca_pems: &[&str]) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for pem in ca_pems {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            roots
                .add(cert.expect("parse CA PEM"))
                .expect("CA is a valid trust anchor");
        }
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("aws-lc-rs supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    std::sync::Arc::new(config)
}

/// A reqwest client builder that trusts only `ca_pems` (see
/// [`rustls_client_config`]) and uses no proxy (add one with `.proxy(..)`).
pub fn reqwest_builder(ca_pems: &[&str]) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(rustls_client_config(ca_pems).as_ref().clone())
}

/// The value of the Prometheus text line starting with `prefix` (0 when absent).
pub fn metric_value(text: &str, prefix: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Reads a log file for display, never failing (missing file → note).
pub(crate) fn read_log_lossy(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<could not read {}: {e}>", path.display()),
    }
}
