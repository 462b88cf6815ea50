//! Per-host TLS server configurations for intercepted hosts, minted on demand and reused.
//!
//! Go clients open one CONNECT per parallel request (30+ per pull), so every handshake after
//! the first for a host must find its certificate here. Concurrent first handshakes for one
//! host mint once (`moka`'s `try_get_with` coalesces them).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustls::ServerConfig;

use crate::ca::{CaError, CertificateAuthority};

/// Leaves live 30 days; drop them from the cache well before so a served leaf always has
/// weeks of validity left.
const LEAF_CACHE_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Bound on distinct hosts kept; each entry is a few KiB.
const LEAF_CACHE_CAPACITY: u64 = 10_000;

/// Cache of TLS server configurations, one per intercepted host name.
#[derive(Clone)]
pub struct LeafCertCache {
    ca: Arc<CertificateAuthority>,
    configs: moka::future::Cache<String, Arc<ServerConfig>>,
    minted: Arc<AtomicU64>,
}

impl LeafCertCache {
    /// An empty cache signing with `ca`.
    pub fn new(ca: Arc<CertificateAuthority>) -> Self {
        Self {
            ca,
            configs: moka::future::Cache::builder()
                .max_capacity(LEAF_CACHE_CAPACITY)
                .time_to_live(LEAF_CACHE_TTL)
                .build(),
            minted: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The server configuration for `host`, minting its leaf on first use.
    ///
    /// ALPN offers `h2` and `http/1.1`: Go clients speak HTTP/1.1, curl prefers h2.
    ///
    /// # Errors
    /// If the leaf cannot be minted for this name.
    pub async fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, Arc<CaError>> {
        let ca = self.ca.clone();
        let minted = self.minted.clone();
        let host_owned = host.to_string();
        self.configs
            .try_get_with(host.to_string(), async move {
                let leaf = ca.mint_leaf(&host_owned)?;
                minted.fetch_add(1, Ordering::Relaxed);
                let provider = Arc::new(server_provider());
                let mut config = ServerConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| CaError::Invalid {
                        path: ca.cert_path().to_path_buf(),
                        reason: e.to_string(),
                    })?
                    .with_no_client_auth()
                    .with_single_cert(leaf.chain, leaf.key)
                    .map_err(|e| CaError::Invalid {
                        path: ca.cert_path().to_path_buf(),
                        reason: e.to_string(),
                    })?;
                config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                config.ignore_client_order = true;
                // Session tickets let a client's 30+ tunnels per pull resume instead of redoing
                // the full handshake.
                if let Ok(ticketer) = rustls::crypto::aws_lc_rs::Ticketer::new() {
                    config.ticketer = ticketer;
                }
                Ok::<_, CaError>(Arc::new(config))
            })
            .await
    }

    /// Mints the leaves of `hosts` now, so that the first pull does not pay for them (nor for
    /// the one-time set-up of the signing code, about 35 ms on the first handshake otherwise).
    pub async fn prewarm<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) {
        for host in hosts {
            if let Err(e) = self.server_config(host).await {
                tracing::warn!(host, error = %e, "cannot mint a certificate at start");
            }
        }
    }

    /// How many leaves have been minted since start.
    #[cfg(test)]
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }
}

/// aws-lc-rs with TLS 1.3 AES-128-GCM preferred (the server's order wins): its SHA-256 key
/// schedule makes each of a pull's many handshakes cheaper than AES-256's SHA-384 one, which
/// rustls and OpenSSL clients list first. Both are strong; Go clients prefer AES-128 anyway.
fn server_provider() -> rustls::crypto::CryptoProvider {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    provider
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};

    fn verify(ca: &CertificateAuthority, leaf: &crate::ca::Leaf, name: &str) -> Result<(), rustls::Error> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.cert_der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .unwrap();
        verifier
            .verify_server_cert(
                &leaf.chain[0],
                &leaf.chain[1..],
                &ServerName::try_from(name.to_string()).unwrap(),
                &[],
                UnixTime::now(),
            )
            .map(|_| ())
    }

    #[test]
    fn leaf_chains_to_ca_with_exact_san() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate(dir.path(), false, None).unwrap();
        let leaf = ca.mint_leaf("ghcr.io").unwrap();
        verify(&ca, &leaf, "ghcr.io").expect("leaf must verify against the CA for its own name");
        assert!(
            verify(&ca, &leaf, "quay.io").is_err(),
            "leaf must not be valid for another name"
        );
        assert!(verify(&ca, &leaf, "x.ghcr.io").is_err(), "leaf must not be a wildcard");

        let (_, parsed) = x509_parser::parse_x509_certificate(&leaf.chain[0]).unwrap();
        let san = parsed.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 1);
        assert!(!parsed.is_ca());

        let ip_leaf = ca.mint_leaf("127.0.0.1").unwrap();
        verify(&ca, &ip_leaf, "127.0.0.1").expect("IP literal gets an IP SAN");

        // Another CA does not validate it.
        let other_dir = tempfile::tempdir().unwrap();
        let other = CertificateAuthority::generate(other_dir.path(), false, None).unwrap();
        assert!(verify(&other, &leaf, "ghcr.io").is_err());
    }

    #[test]
    fn aes_128_is_preferred_and_nothing_is_dropped() {
        let ours = server_provider();
        let default = rustls::crypto::aws_lc_rs::default_provider();
        assert_eq!(
            ours.cipher_suites[0].suite(),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        assert_eq!(ours.cipher_suites.len(), default.cipher_suites.len());
    }

    #[tokio::test]
    async fn configs_are_reused_per_host_and_minted_once_under_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(CertificateAuthority::generate(dir.path(), false, None).unwrap());
        let cache = LeafCertCache::new(ca);
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let c = cache.clone();
            tasks.push(tokio::spawn(async move { c.server_config("ghcr.io").await.unwrap() }));
        }
        let mut configs = Vec::new();
        for t in tasks {
            configs.push(t.await.unwrap());
        }
        assert!(configs.windows(2).all(|w| Arc::ptr_eq(&w[0], &w[1])));
        assert_eq!(cache.minted(), 1);
        let quay = cache.server_config("quay.io").await.unwrap();
        assert!(!Arc::ptr_eq(&quay, &configs[0]));
        assert_eq!(cache.minted(), 2);
    }
}
