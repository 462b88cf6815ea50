//! The mirror's certificate from an ACME CA (RFC 8555), the way the distribution registry's
//! `letsencrypt` block gets one: an account and a certificate kept under the data dir, an order
//! when there is none (or it does not cover the names), and a renewal before it expires, all
//! while the listener keeps serving.
//!
//! Possession of each name is proven by TLS-ALPN-01 (RFC 8737) on the mirror's own listener,
//! so no second port is needed: a validation connection offers only the ALPN protocol
//! `acme-tls/1`, and gets a self-signed certificate for the name carrying the critical
//! `acmeIdentifier` extension (the SHA-256 of the key authorization), then is closed.
//!
//! Files (`<data_dir>/acme/<directory host>/`): `account.json` (the account's key, 0600) and
//! `<first name>.pem` (the key and the chain in one file, 0600, replaced by rename so a crash
//! never pairs a key with another certificate).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_util::sync::CancellationToken;

use crate::config::AcmeSettings;
use crate::front::server;
use crate::mirror::MIRROR_ALPN;

/// The ALPN protocol of a TLS-ALPN-01 validation (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// How long an order may take from "ready" to a certificate, and a challenge to validate.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// The first retry after a failed order; doubled per failure up to [`MAX_RETRY`]. Slow enough
/// that a name the CA cannot reach does not run into Let's Encrypt's failed-validation limit.
const FIRST_RETRY: Duration = Duration::from_secs(60);
const MAX_RETRY: Duration = Duration::from_secs(3 * 3600);
/// The renewal time is re-checked at least this often (a suspended VM's clock jumps).
const RECHECK: Duration = Duration::from_secs(3600);
/// `urn:ietf:params:acme:error:accountDoesNotExist` (RFC 8555 §6.7): the CA forgot the
/// stored account (a reset test CA, a deactivated account); a new one is made.
const ACCOUNT_GONE: &str = "urn:ietf:params:acme:error:accountDoesNotExist";

/// Why a certificate could not be obtained or stored.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// The CA answered with a problem, or could not be reached.
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    /// The CA offered no way regcache can prove the name.
    #[error("ACME: the CA offers no tls-alpn-01 challenge for {0} (regcache proves names on the mirror listener)")]
    NoTlsAlpn(String),
    /// A name was not validated.
    #[error("ACME: {name} was not validated ({status:?}){detail}")]
    NotValidated {
        /// The name.
        name: String,
        /// Its authorization's state.
        status: AuthorizationStatus,
        /// The CA's explanation, if it gave one.
        detail: String,
    },
    /// The order ended in another state than ready.
    #[error("ACME: the order is {0:?}, not ready; did the CA reach the mirror on port 443 of every name?")]
    Order(OrderStatus),
    /// What the CA issued is unusable.
    #[error("ACME: the issued certificate: {0}")]
    Issued(String),
    /// A key or certificate could not be made.
    #[error("ACME: {0}")]
    Key(#[from] rcgen::Error),
    /// A file under the data dir.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A certificate being served.
struct Issued {
    config: Arc<rustls::ServerConfig>,
    not_before: SystemTime,
    not_after: SystemTime,
}

/// The mirror's ACME certificate and the validation answers under way.
pub struct AcmeCertificate {
    settings: AcmeSettings,
    dir: PathBuf,
    current: ArcSwapOption<Issued>,
    /// Name → the `acme-tls/1` configuration proving it, while an order is open.
    challenges: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
}

impl AcmeCertificate {
    /// The certificate state for `settings`, with the stored certificate loaded if it covers
    /// the names (an unusable stored file is logged and replaced by the next order).
    ///
    /// # Errors
    /// If the ACME folder cannot be created.
    pub fn load(settings: AcmeSettings, data_dir: &Path) -> Result<Self, AcmeError> {
        let dir = data_dir.join("acme").join(directory_slug(&settings.directory));
        std::fs::create_dir_all(&dir).map_err(|source| AcmeError::Io {
            path: dir.clone(),
            source,
        })?;
        let me = Self {
            settings,
            dir,
            current: ArcSwapOption::empty(),
            challenges: Mutex::new(HashMap::new()),
        };
        let path = me.cert_path();
        match std::fs::read(&path) {
            Ok(pem) => match issued_from_pem(&pem, &me.settings.names) {
                Ok(issued) => {
                    tracing::info!(
                        file = %path.display(),
                        expires = %time_text(issued.not_after),
                        "mirror certificate (ACME) loaded"
                    );
                    me.current.store(Some(Arc::new(issued)));
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "stored ACME certificate not used; ordering a new one")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "stored ACME certificate unreadable; ordering a new one")
            }
        }
        Ok(me)
    }

    /// The configuration for the mirror's own connections, once a certificate is held.
    pub fn server_config(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.current.load().as_ref().map(|i| i.config.clone())
    }

    /// The `acme-tls/1` configuration for a validation of `name`, while one is expected.
    pub fn challenge_config(&self, name: &str) -> Option<Arc<rustls::ServerConfig>> {
        self.challenges.lock().ok()?.get(name).cloned()
    }

    /// Keeps a valid certificate until `shutdown`: orders one now if none is held, then
    /// renews each one before it expires; a failed order is retried with a growing delay
    /// (the certificate held meanwhile, if any, goes on being served).
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        loop {
            let due = self.current.load().as_ref().map(|i| self.renew_at(i));
            let wait = due.map_or(Duration::ZERO, |at| {
                at.duration_since(SystemTime::now()).unwrap_or(Duration::ZERO)
            });
            if !wait.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(wait.min(RECHECK)) => continue,
                    _ = shutdown.cancelled() => return,
                }
            }
            let result = tokio::select! {
                r = self.obtain() => r,
                _ = shutdown.cancelled() => return,
            };
            self.challenges.lock().map(|mut c| c.clear()).ok();
            match result {
                Ok(issued) => {
                    failures = 0;
                    tracing::info!(
                        names = %self.settings.names.join(","),
                        expires = %time_text(issued.not_after),
                        renew_at = %time_text(self.renew_at(&issued)),
                        "mirror certificate obtained from the ACME CA"
                    );
                    self.current.store(Some(Arc::new(issued)));
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let retry = FIRST_RETRY.saturating_mul(1 << (failures - 1).min(16)).min(MAX_RETRY);
                    tracing::warn!(
                        error = %e,
                        retry_in_s = retry.as_secs(),
                        held = self.current.load().is_some(),
                        "mirror certificate not obtained from the ACME CA"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(retry) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
    }

    /// When `issued` is due for renewal: `renew_before` ahead of its expiry, but at least
    /// two thirds into its life (a short-lived certificate is not renewed continuously).
    fn renew_at(&self, issued: &Issued) -> SystemTime {
        let life = issued
            .not_after
            .duration_since(issued.not_before)
            .unwrap_or(Duration::ZERO);
        issued.not_after - self.settings.renew_before.min(life / 3)
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.settings.names[0]))
    }

    /// An account (stored, or new), an order, its validations, a certificate, stored.
    async fn obtain(&self) -> Result<Issued, AcmeError> {
        let account = self.account().await?;
        let pem = match self.order(&account).await {
            Err(AcmeError::Protocol(instant_acme::Error::Api(p))) if p.r#type.as_deref() == Some(ACCOUNT_GONE) => {
                tracing::warn!("the ACME CA no longer knows regcache's account; registering a new one");
                let _ = std::fs::remove_file(self.dir.join("account.json"));
                self.order(&self.account().await?).await?
            }
            r => r?,
        };
        let issued = issued_from_pem(pem.as_bytes(), &self.settings.names).map_err(AcmeError::Issued)?;
        write_private(&self.cert_path(), pem.as_bytes())?;
        Ok(issued)
    }

    /// The stored account, or a new one registered (and stored).
    async fn account(&self) -> Result<Account, AcmeError> {
        let path = self.dir.join("account.json");
        let builder = || match &self.settings.ca_cert {
            Some(root) => Account::builder_with_root(root),
            None => Account::builder(),
        };
        if let Ok(bytes) = std::fs::read(&path) {
            match serde_json::from_slice::<AccountCredentials>(&bytes) {
                Ok(creds) => return Ok(builder()?.from_credentials(creds).await?),
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "stored ACME account unusable; registering a new one")
                }
            }
        }
        let contact = self
            .settings
            .email
            .iter()
            .map(|e| format!("mailto:{e}"))
            .collect::<Vec<_>>();
        let contact = contact.iter().map(String::as_str).collect::<Vec<_>>();
        let new = NewAccount {
            contact: &contact,
            terms_of_service_agreed: true,
            only_return_existing: false,
        };
        let (account, creds) = builder()?.create(&new, self.settings.directory.clone(), None).await?;
        let json = serde_json::to_vec(&creds).map_err(|e| AcmeError::Issued(e.to_string()))?;
        write_private(&path, &json)?;
        tracing::info!(directory = %self.settings.directory, "registered an ACME account");
        Ok(account)
    }

    /// One order for the names: each pending authorization answered by TLS-ALPN-01, then a
    /// CSR for a fresh key; returns the key and the chain as one PEM text.
    async fn order(&self, account: &Account) -> Result<String, AcmeError> {
        let ids: Vec<Identifier> = self.settings.names.iter().cloned().map(Identifier::Dns).collect();
        let mut order = account.new_order(&NewOrder::new(&ids)).await?;
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            let name = authz.identifier().to_string();
            match authz.status {
                AuthorizationStatus::Valid => continue,
                AuthorizationStatus::Pending => {}
                status => {
                    return Err(AcmeError::NotValidated {
                        name,
                        status,
                        detail: String::new(),
                    });
                }
            }
            let mut challenge = authz
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or_else(|| AcmeError::NoTlsAlpn(name.clone()))?;
            let proof = challenge_config(&name, challenge.key_authorization().digest().as_ref())?;
            if let Ok(mut c) = self.challenges.lock() {
                c.insert(name, proof);
            }
            challenge.set_ready().await?;
        }
        let retries = RetryPolicy::new().timeout(ORDER_TIMEOUT);
        let status = order.poll_ready(&retries).await?;
        if status != OrderStatus::Ready {
            return Err(self.why_not_ready(&mut order, status).await);
        }
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(self.settings.names.clone())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key)?;
        order.finalize_csr(csr.der()).await?;
        let chain = order.poll_certificate(&retries).await?;
        Ok(format!("{}{chain}", key.serialize_pem()))
    }

    /// The first name whose validation failed, with the CA's reason.
    async fn why_not_ready(&self, order: &mut instant_acme::Order, status: OrderStatus) -> AcmeError {
        let mut authorizations = order.authorizations();
        while let Some(Ok(authz)) = authorizations.next().await {
            if authz.status == AuthorizationStatus::Valid {
                continue;
            }
            let detail = authz
                .challenges
                .iter()
                .filter_map(|c| c.error.as_ref())
                .map(|p| format!(": {}", p.detail.as_deref().unwrap_or("no detail")))
                .next()
                .unwrap_or_default();
            return AcmeError::NotValidated {
                name: authz.identifier().to_string(),
                status: authz.status,
                detail,
            };
        }
        AcmeError::Order(status)
    }
}

/// The `acme-tls/1` answer for `name` (RFC 8737 §3): self-signed, the name as its only SAN,
/// the `acmeIdentifier` extension holding `digest`.
fn challenge_config(name: &str, digest: &[u8]) -> Result<Arc<rustls::ServerConfig>, AcmeError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_string()])?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| AcmeError::Issued(e.to_string()))?;
    // Not `with_single_cert`: it checks the certificate as a server certificate, and the
    // critical acmeIdentifier extension is one no ordinary server certificate has.
    let proof = rustls::sign::CertifiedKey::new(vec![cert.der().clone()], signing);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| AcmeError::Issued(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(proof)));
    config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
    Ok(Arc::new(config))
}

/// A certificate from PEM text holding its key and its chain (leaf first), checked to cover
/// every name in `names` and to pair with its key.
fn issued_from_pem(pem: &[u8], names: &[String]) -> Result<Issued, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let leaf = chain.first().ok_or("no certificate in it")?;
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| format!("no usable private key: {e}"))?;
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    let sans: Vec<String> = parsed
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(missing) = names.iter().find(|n| !sans.contains(n)) {
        return Err(format!("it is not for {missing} (it names {})", sans.join(", ")));
    }
    let at = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    let (not_before, not_after) = (at(parsed.validity().not_before), at(parsed.validity().not_after));
    let config = server::tls_from_chain(chain, key, &MIRROR_ALPN)?;
    Ok(Issued {
        config,
        not_before,
        not_after,
    })
}

/// `https://acme-v02.api.letsencrypt.org/directory` → `acme-v02.api.letsencrypt.org`, so that
/// a staging and a production CA never share an account or a certificate.
fn directory_slug(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let slug: String = authority
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if slug.is_empty() { "directory".into() } else { slug }
}

/// Writes `bytes` to `path` whole, mode 0600.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), AcmeError> {
    crate::os::write_atomic(path, bytes, 0o600).map_err(|source| AcmeError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn time_text(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0))
        .ok()
        .and_then(|d| d.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(names: &[&str], renew_before: Duration) -> AcmeSettings {
        AcmeSettings {
            names: names.iter().map(|n| n.to_string()).collect(),
            directory: "https://127.0.0.1:14000/dir".into(),
            email: None,
            ca_cert: None,
            renew_before,
        }
    }

    /// A certificate for `names`, valid from now for `life`, with its key, as one PEM text.
    fn pem_for(names: &[&str], life: Duration) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now;
        params.not_after = now + life;
        let cert = params.self_signed(&key).unwrap();
        format!("{}{}", key.serialize_pem(), cert.pem())
    }

    #[test]
    fn a_stored_certificate_is_used_only_if_it_covers_every_name() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(&["mirror.example", "m2.example"], Duration::from_secs(60));
        let acme_dir = dir.path().join("acme").join("127.0.0.1_14000");
        std::fs::create_dir_all(&acme_dir).unwrap();
        let file = acme_dir.join("mirror.example.pem");
        std::fs::write(&file, pem_for(&["mirror.example"], Duration::from_secs(3600))).unwrap();
        let a = AcmeCertificate::load(s.clone(), dir.path()).unwrap();
        assert!(
            a.server_config().is_none(),
            "a certificate missing m2.example must not be served"
        );
        std::fs::write(
            &file,
            pem_for(&["mirror.example", "m2.example"], Duration::from_secs(3600)),
        )
        .unwrap();
        let a = AcmeCertificate::load(s, dir.path()).unwrap();
        let served = a.server_config().expect("a covering certificate is served");
        assert_eq!(served.alpn_protocols, vec![b"h2".to_vec(), b"http/1.1".to_vec()]);
    }

    #[test]
    fn renewal_is_due_before_expiry_and_never_before_two_thirds_of_life() {
        let long = issued_from_pem(
            pem_for(&["m.example"], Duration::from_secs(90 * 86400)).as_bytes(),
            &["m.example".into()],
        )
        .unwrap();
        let a = AcmeCertificate {
            settings: settings(&["m.example"], Duration::from_secs(30 * 86400)),
            dir: PathBuf::new(),
            current: ArcSwapOption::empty(),
            challenges: Mutex::new(HashMap::new()),
        };
        let ahead = long.not_after.duration_since(a.renew_at(&long)).unwrap();
        assert_eq!(ahead, Duration::from_secs(30 * 86400));
        let short = issued_from_pem(
            pem_for(&["m.example"], Duration::from_secs(90)).as_bytes(),
            &["m.example".into()],
        )
        .unwrap();
        let ahead = short.not_after.duration_since(a.renew_at(&short)).unwrap();
        assert_eq!(ahead, Duration::from_secs(30), "a third of a 90 s life");
    }

    #[test]
    fn a_challenge_answer_offers_only_acme_tls() {
        let c = challenge_config("mirror.example", &[7u8; 32]).unwrap();
        assert_eq!(c.alpn_protocols, vec![ACME_TLS_ALPN.to_vec()]);
    }

    #[test]
    fn staging_and_production_keep_apart() {
        assert_eq!(
            directory_slug("https://acme-v02.api.letsencrypt.org/directory"),
            "acme-v02.api.letsencrypt.org"
        );
        assert_eq!(directory_slug("https://127.0.0.1:14000/dir"), "127.0.0.1_14000");
    }

    #[test]
    fn stored_files_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write_private(&p, b"secret").unwrap();
        write_private(&p, b"secret2").unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read(&p).unwrap(), b"secret2");
    }
}
