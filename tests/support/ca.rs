//! A throw-away certificate authority generated at runtime (rcgen, ECDSA P-256).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};

/// A test CA: ECDSA P-256 key and self-signed certificate, kept in memory.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

/// A random positive serial number (16 bytes, top bit clear, never zero).
pub fn random_serial() -> SerialNumber {
    use rand::RngCore as _;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

/// Validity window used for every test certificate: wide enough that clock
/// skew never matters, and within what Go's x509 accepts.
fn set_validity(params: &mut CertificateParams) {
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2099, 12, 31);
}

impl TestCa {
    /// Generates a new CA (fresh key, random serial, CN with a random suffix).
    pub fn new() -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate CA P-256 key");
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("regcache test CA {}", super::random_hex(4)));
        dn.push(DnType::OrganizationName, "regcache tests");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        set_validity(&mut params);
        let cert = params.self_signed(&key).expect("self-sign test CA");
        let cert_pem = cert.pem();
        let cert_der = cert.der().to_vec();
        TestCa {
            issuer: Issuer::new(params, key),
            cert_pem,
            cert_der,
        }
    }

    /// The CA certificate as PEM.
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The CA certificate as DER.
    pub fn cert_der(&self) -> Vec<u8> {
        self.cert_der.clone()
    }

    /// Writes the CA certificate to `dir/test-ca.crt` and returns that path.
    pub fn write_cert(&self, dir: &Path) -> PathBuf {
        let path = dir.join("test-ca.crt");
        std::fs::write(&path, &self.cert_pem)
            .unwrap_or_else(|e| panic!("write test CA cert to {}: {e}", path.display()));
        path
    }

    /// Issues a server certificate for `names` (DNS SANs; IP SANs for IP
    /// literals), ExtendedKeyUsage ServerAuth, random serial, fresh P-256 key.
    ///
    /// Returns `(cert_pem, key_pem)`; the key is PKCS#8 (`PRIVATE KEY`).
    pub fn issue_server_cert(&self, names: &[&str]) -> (String, String) {
        assert!(!names.is_empty(), "a server certificate needs at least one name");
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate leaf P-256 key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    (*n).try_into()
                        .unwrap_or_else(|e| panic!("invalid DNS name {n:?}: {e}")),
                ),
            })
            .collect();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names[0]);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        set_validity(&mut params);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("sign server certificate with test CA");
        (cert.pem(), key.serialize_pem())
    }

    /// The CA as a reqwest root certificate.
    pub fn reqwest_cert(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_der(&self.cert_der).expect("test CA DER parses for reqwest")
    }

    /// A rustls root store holding only this CA.
    pub fn root_store(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(self.cert_der.clone()))
            .expect("test CA is a valid trust anchor");
        roots
    }

    /// A rustls client config trusting only this CA (see
    /// [`super::rustls_client_config`]: no session resumption).
    pub fn rustls_client_config(&self) -> Arc<rustls::ClientConfig> {
        super::rustls_client_config(&[&self.cert_pem])
    }

    /// A reqwest builder trusting only this CA, no proxy, no resumption.
    pub fn reqwest_builder(&self) -> reqwest::ClientBuilder {
        super::reqwest_builder(&[&self.cert_pem])
    }

    /// A rustls server config (aws-lc-rs provider passed explicitly) serving a
    /// fresh certificate for `names`, offering h2 and http/1.1 via ALPN.
    pub fn rustls_server_config(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let (cert_pem, key_pem) = self.issue_server_cert(names);
        let certs = vec![
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("parse issued cert PEM"),
            CertificateDer::from(self.cert_der.clone()),
        ];
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("parse issued key PEM");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default protocol versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("issued cert and key match");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(config)
    }
}
