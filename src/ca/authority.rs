//! The certificate authority: load or generate it, describe it, and sign per-host leaves.
//!
//! No sockets here. Files: `ca.crt` (PEM certificate) and `ca.key` (PEM private key, mode 0600,
//! optionally passphrase-protected: see [`crate::ca::key`]).

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::ca::key::{self as ca_key, KeyError, KeyPassphrase, PassphraseError};

/// File name of the CA certificate inside the CA directory.
pub const CERT_FILE: &str = "ca.crt";
/// File name of the CA private key inside the CA directory.
pub const KEY_FILE: &str = "ca.key";

/// How long a generated CA is valid.
const CA_VALIDITY: Duration = Duration::days(3650);
/// How long a minted leaf is valid; leaves are re-minted well before (see `leaf_certs`).
const LEAF_VALIDITY: Duration = Duration::days(30);

/// Errors loading, generating or using the CA. Each names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Only one of the two files exists.
    #[error(
        "{present} exists but {missing} does not: put both a CA certificate and its key there, or neither to generate a new CA"
    )]
    HalfPresent {
        /// The file that exists.
        present: PathBuf,
        /// The file that is missing.
        missing: PathBuf,
    },
    /// The key file can be read by users other than its owner.
    #[error("{path}: private key is readable by others (mode {mode:o}); run: chmod 600 {path}")]
    KeyPermissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file is not what was expected.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What was expected.
        reason: String,
    },
    /// `ca init` found an existing CA.
    #[error("{0} already exists; use --force to replace it (clients trusting the old CA must be updated)")]
    Exists(PathBuf),
    /// Certificate generation or signing failed.
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    /// The key file could not be decoded or decrypted.
    #[error("{path}: {problem}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What is wrong (not a `source`: the message already says it, once).
        problem: KeyError,
    },
    /// The passphrase file could not be read.
    #[error(transparent)]
    Passphrase(#[from] PassphraseError),
}

impl CaError {
    /// Whether the operator's passphrase is what needs fixing (missing, wrong, unreadable
    /// file): a usage error, which `main` reports with exit status 2.
    pub fn is_passphrase_problem(&self) -> bool {
        match self {
            Self::Key { problem, .. } => problem.is_passphrase_problem(),
            Self::Passphrase(_) => true,
            _ => false,
        }
    }
}

/// A leaf certificate chain and its key, ready for a TLS server.
pub struct Leaf {
    /// Leaf first, then the CA.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's own private key.
    pub key: PrivateKeyDer<'static>,
}

/// What `ca show` prints and what `serve` logs at start.
#[derive(Debug, Clone)]
pub struct CaSummary {
    /// Subject distinguished name.
    pub subject: String,
    /// SHA-256 of the DER certificate, colon-separated upper-case hex.
    pub fingerprint: String,
    /// Start of validity (RFC 3339).
    pub not_before: String,
    /// End of validity (RFC 3339).
    pub not_after: String,
    /// Key algorithm.
    pub key_algorithm: String,
}

/// The loaded CA: its certificate and a signer for leaves.
pub struct CertificateAuthority {
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
    not_after: OffsetDateTime,
    cert_path: PathBuf,
}

impl CertificateAuthority {
    /// Loads the CA from `dir`, or generates one there if neither file exists. `passphrase`
    /// decrypts an encrypted key, and encrypts a generated one.
    ///
    /// # Errors
    /// Fails, naming the file, if only one file exists, a file is unreadable or malformed,
    /// the key is readable by others, encrypted without (or with the wrong) passphrase, the
    /// certificate is not a CA or the key does not match it.
    pub fn load_or_generate(dir: &Path, passphrase: Option<&KeyPassphrase>) -> Result<(Self, bool), CaError> {
        let (cert, key) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        match (cert.exists(), key.exists()) {
            (true, true) => Ok((Self::load(dir, passphrase)?, false)),
            (false, false) => Ok((Self::generate(dir, false, passphrase)?, true)),
            (true, false) => Err(CaError::HalfPresent {
                present: cert,
                missing: key,
            }),
            (false, true) => Err(CaError::HalfPresent {
                present: key,
                missing: cert,
            }),
        }
    }

    /// Loads an existing CA from `dir`, decrypting its key with `passphrase` if it is encrypted.
    ///
    /// # Errors
    /// As for [`Self::load_or_generate`], and if either file is missing.
    pub fn load(dir: &Path, passphrase: Option<&KeyPassphrase>) -> Result<Self, CaError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);

        let meta = fs::metadata(&key_path).map_err(|source| CaError::Io {
            path: key_path.clone(),
            source,
        })?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CaError::KeyPermissions { path: key_path, mode });
        }
        let key_pem = fs::read(&key_path).map_err(|source| CaError::Io {
            path: key_path.clone(),
            source,
        })?;
        let key_der = ca_key::decode(&key_pem, passphrase).map_err(|problem| CaError::Key {
            path: key_path.clone(),
            problem,
        })?;
        let key = KeyPair::try_from(&key_der).map_err(|e| CaError::Invalid {
            path: key_path.clone(),
            reason: format!("unsupported private key (expected RSA or ECDSA P-256/P-384): {e}"),
        })?;

        let cert_pem_bytes = fs::read(&cert_path).map_err(|source| CaError::Io {
            path: cert_path.clone(),
            source,
        })?;
        let cert_der = CertificateDer::from_pem_slice(&cert_pem_bytes).map_err(|e| CaError::Invalid {
            path: cert_path.clone(),
            reason: format!("expected a PEM certificate (-----BEGIN CERTIFICATE-----): {e}"),
        })?;
        let invalid = |reason: String| CaError::Invalid {
            path: cert_path.clone(),
            reason,
        };
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert_der)
            .map_err(|e| invalid(format!("not a valid X.509 certificate: {e}")))?;
        if !parsed.is_ca() {
            return Err(invalid(
                "certificate is not a CA (basicConstraints CA:TRUE is missing)".into(),
            ));
        }
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(CaError::Invalid {
                path: key_path,
                reason: format!(
                    "private key does not belong to the certificate in {}",
                    cert_path.display()
                ),
            });
        }
        let not_after = parsed.validity().not_after.to_datetime();
        if not_after <= OffsetDateTime::now_utc() {
            return Err(invalid(format!("CA certificate expired on {}", rfc3339(not_after))));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| invalid(format!("cannot use this certificate as an issuer: {e}")))?;
        let cert_pem = String::from_utf8_lossy(&cert_pem_bytes).into_owned();
        Ok(Self {
            cert_der: cert_der.into_owned(),
            cert_pem,
            issuer,
            not_after,
            cert_path,
        })
    }

    /// Generates a new CA in `dir` (created if needed); refuses to overwrite unless `force`.
    ///
    /// The key is written with mode 0600 before any byte of it is written, then renamed into
    /// place; with a `passphrase` it is written encrypted (PKCS#8, PBES2 with AES-256-CBC).
    ///
    /// # Errors
    /// [`CaError::Exists`] without `force`, I/O errors naming the file.
    pub fn generate(dir: &Path, force: bool, passphrase: Option<&KeyPassphrase>) -> Result<Self, CaError> {
        Self::generate_constrained(dir, force, passphrase, &[])
    }

    /// As [`CertificateAuthority::generate`], with X.509 name constraints (RFC 5280 §4.2.1.10)
    /// when `permitted` is not empty: the CA can then sign only for those DNS domains and their
    /// subdomains, so a stolen key cannot impersonate any other site to clients that trust it.
    /// The price: a registry outside the list cannot be intercepted without a new CA.
    ///
    /// # Errors
    /// As [`CertificateAuthority::generate`].
    pub fn generate_constrained(
        dir: &Path,
        force: bool,
        passphrase: Option<&KeyPassphrase>,
        permitted: &[String],
    ) -> Result<Self, CaError> {
        let cert_path = dir.join(CERT_FILE);
        let key_path = dir.join(KEY_FILE);
        if !force {
            for p in [&cert_path, &key_path] {
                if p.exists() {
                    return Err(CaError::Exists(p.clone()));
                }
            }
        }
        fs::create_dir_all(dir).map_err(|source| CaError::Io {
            path: dir.to_path_buf(),
            source,
        })?;

        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("regcache CA on {}", crate::os::hostname()));
        dn.push(DnType::OrganizationName, "regcache");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + CA_VALIDITY;
        params.serial_number = Some(random_serial());
        if !permitted.is_empty() {
            params.name_constraints = Some(rcgen::NameConstraints {
                permitted_subtrees: permitted
                    .iter()
                    .map(|d| rcgen::GeneralSubtree::DnsName(d.clone()))
                    .collect(),
                excluded_subtrees: Vec::new(),
            });
        }
        let cert = params.self_signed(&key)?;

        let key_pem = zeroize::Zeroizing::new(match passphrase {
            None => key.serialize_pem(),
            Some(p) => ca_key::encrypt_pkcs8_pem(&key.serialize_der(), p).map_err(|reason| CaError::Invalid {
                path: key_path.clone(),
                reason,
            })?,
        });
        write_file(&key_path, key_pem.as_bytes(), 0o600)?;
        write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
        let not_after = params.not_after;
        let issuer = Issuer::new(params, key);
        Ok(Self {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer,
            not_after,
            cert_path,
        })
    }

    /// The DNS domains `ca init --name-constraints` permits by default: the built-in registries
    /// (`docker.io` covers Docker Hub's registry and token hosts; `*.` patterns become their domain).
    pub fn default_permitted_domains() -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for pattern in crate::config::DEFAULT_REGISTRIES {
            let domain = pattern.trim_start_matches("*.");
            let domain = if domain.ends_with(".docker.io") {
                "docker.io"
            } else {
                domain
            };
            if !out.iter().any(|d| d == domain) {
                out.push(domain.to_string());
            }
        }
        out
    }

    /// The CA certificate in PEM, as served at `/ca.crt`.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER.
    #[cfg(test)]
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Where the certificate was loaded from or written to.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Subject, fingerprint and validity.
    pub fn summary(&self) -> CaSummary {
        summarize(&self.cert_der).expect("the CA certificate was parsed when it was loaded")
    }

    /// Signs a fresh leaf for exactly `host` (a DNS SAN, or an IP SAN for an IP literal).
    ///
    /// Each leaf gets its own P-256 key and a random serial; validity is one hour back (clock
    /// skew) to 30 days ahead, never beyond the CA's own expiry.
    ///
    /// # Errors
    /// If `host` cannot be a SAN or signing fails.
    pub fn mint_leaf(&self, host: &str) -> Result<Leaf, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![host.to_string()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        dn.push(DnType::OrganizationName, "regcache");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = (now + LEAF_VALIDITY).min(self.not_after);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Leaf {
            chain: vec![cert.der().clone(), self.cert_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        })
    }
}

/// Reads the certificate in `dir` and describes it, without needing the key.
///
/// # Errors
/// If the certificate is missing or malformed.
pub fn summarize_file(dir: &Path) -> Result<CaSummary, CaError> {
    let path = dir.join(CERT_FILE);
    let pem = fs::read(&path).map_err(|source| CaError::Io {
        path: path.clone(),
        source,
    })?;
    let der = CertificateDer::from_pem_slice(&pem).map_err(|e| CaError::Invalid {
        path: path.clone(),
        reason: format!("expected a PEM certificate: {e}"),
    })?;
    summarize(&der).map_err(|reason| CaError::Invalid { path, reason })
}

/// SHA-256 fingerprint of a DER certificate, as `AB:CD:…` (the form `openssl x509 -fingerprint -sha256` prints).
pub fn fingerprint(der: &[u8]) -> String {
    let digest = Sha256::digest(der);
    let mut out = String::with_capacity(digest.len() * 3);
    for (i, b) in digest.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        let _ = write!(out, "{b:02X}");
    }
    out
}

fn summarize(der: &CertificateDer<'_>) -> Result<CaSummary, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("not a valid X.509 certificate: {e}"))?;
    let spki = cert.public_key();
    let key_algorithm = match spki.parsed() {
        Ok(x509_parser::public_key::PublicKey::EC(p)) => format!("ECDSA ({} bits)", p.key_size()),
        Ok(x509_parser::public_key::PublicKey::RSA(r)) => format!("RSA ({} bits)", r.key_size()),
        _ => spki.algorithm.algorithm.to_id_string(),
    };
    Ok(CaSummary {
        subject: cert.subject().to_string(),
        fingerprint: fingerprint(der),
        not_before: rfc3339(cert.validity().not_before.to_datetime()),
        not_after: rfc3339(cert.validity().not_after.to_datetime()),
        key_algorithm,
    })
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // positive INTEGER
    SerialNumber::from_slice(&bytes)
}

/// Writes `bytes` to `path` whole, created with `mode`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    crate::os::write_atomic(path, bytes, mode).map_err(|source| CaError::Io {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_then_reload_keeps_identity() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, created) = CertificateAuthority::load_or_generate(dir.path(), None).unwrap();
        assert!(created);
        let mode = fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let s = ca.summary();
        assert!(s.subject.contains("regcache CA on"), "{}", s.subject);
        assert!(s.key_algorithm.starts_with("ECDSA"), "{}", s.key_algorithm);
        let (again, created) = CertificateAuthority::load_or_generate(dir.path(), None).unwrap();
        assert!(!created);
        assert_eq!(again.summary().fingerprint, s.fingerprint);
        assert_eq!(s.fingerprint.len(), 32 * 3 - 1);
    }

    #[test]
    fn passphrase_protected_key_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let pass = KeyPassphrase::new(b"open sesame".to_vec(), "test");
        let generated = CertificateAuthority::generate(dir.path(), false, Some(&pass)).unwrap();
        let key = dir.path().join(KEY_FILE);
        let pem = fs::read_to_string(&key).unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED PRIVATE KEY-----"), "{pem}");
        let loaded = CertificateAuthority::load(dir.path(), Some(&pass)).unwrap();
        assert_eq!(loaded.summary().fingerprint, generated.summary().fingerprint);
        loaded.mint_leaf("ghcr.io").unwrap();

        let err = CertificateAuthority::load(dir.path(), None).err().unwrap();
        assert!(err.is_passphrase_problem(), "{err}");
        assert!(err.to_string().starts_with(&key.display().to_string()), "{err}");
        let wrong = KeyPassphrase::new(b"open barley".to_vec(), "test");
        let err = CertificateAuthority::load(dir.path(), Some(&wrong)).err().unwrap();
        assert!(err.is_passphrase_problem(), "{err}");
        assert!(err.to_string().contains("wrong passphrase"), "{err}");
    }

    #[test]
    fn init_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let first = CertificateAuthority::generate(dir.path(), false, None)
            .unwrap()
            .summary()
            .fingerprint;
        assert!(matches!(
            CertificateAuthority::generate(dir.path(), false, None),
            Err(CaError::Exists(_))
        ));
        let second = CertificateAuthority::generate(dir.path(), true, None)
            .unwrap()
            .summary()
            .fingerprint;
        assert_ne!(first, second);
    }

    #[test]
    fn key_readable_by_others_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::generate(dir.path(), false, None).unwrap();
        let key = dir.path().join(KEY_FILE);
        fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
        let err = CertificateAuthority::load(dir.path(), None).err().unwrap().to_string();
        assert!(err.contains(&key.display().to_string()), "{err}");
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn corrupt_pem_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::generate(dir.path(), false, None).unwrap();
        let cert = dir.path().join(CERT_FILE);
        fs::write(
            &cert,
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let err = CertificateAuthority::load(dir.path(), None).err().unwrap().to_string();
        assert!(err.starts_with(&cert.display().to_string()), "{err}");

        let key = dir.path().join(KEY_FILE);
        write_file(&key, b"garbage", 0o600).unwrap();
        let err = CertificateAuthority::load(dir.path(), None).err().unwrap().to_string();
        assert!(err.starts_with(&key.display().to_string()), "{err}");
    }

    #[test]
    fn half_present_ca_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        CertificateAuthority::generate(dir.path(), false, None).unwrap();
        fs::remove_file(dir.path().join(KEY_FILE)).unwrap();
        let err = CertificateAuthority::load_or_generate(dir.path(), None).err().unwrap();
        assert!(matches!(err, CaError::HalfPresent { .. }), "{err}");
    }

    #[test]
    fn leaf_cert_is_refused_as_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate(dir.path(), false, None).unwrap();
        let leaf = ca.mint_leaf("ghcr.io").unwrap();
        let other = tempfile::tempdir().unwrap();
        let leaf_pem = pem_encode("CERTIFICATE", &leaf.chain[0]);
        fs::write(other.path().join(CERT_FILE), leaf_pem).unwrap();
        write_file(
            &other.path().join(KEY_FILE),
            pem_encode("PRIVATE KEY", leaf.key.secret_der()).as_bytes(),
            0o600,
        )
        .unwrap();
        let err = CertificateAuthority::load(other.path(), None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a CA"), "{err}");
    }

    #[test]
    fn key_that_does_not_match_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        CertificateAuthority::generate(a.path(), false, None).unwrap();
        CertificateAuthority::generate(b.path(), false, None).unwrap();
        fs::copy(b.path().join(KEY_FILE), a.path().join(KEY_FILE)).unwrap();
        let err = CertificateAuthority::load(a.path(), None).err().unwrap().to_string();
        assert!(err.contains("does not belong"), "{err}");
    }

    fn pem_encode(tag: &str, der: &[u8]) -> String {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut out = format!("-----BEGIN {tag}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {tag}-----\n"));
        out
    }
}
