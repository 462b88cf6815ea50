//! The registry-mirror listener's settings (`[mirror]`, `--mirror-*`): where it listens, its
//! TLS, its login, and which upstream a request without a registry name goes to.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, DurationValue, HostPort, Parsed};

/// Renew an ACME certificate this long before it expires (Let's Encrypt's advice for its
/// 90-day certificates); short-lived certificates are renewed at two thirds of their life.
const DEFAULT_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

/// Docker Hub's registry API host, where `docker.io` and its aliases are fetched from.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// The mirror listener, when one is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MirrorConfig {
    /// Address of the mirror listener.
    pub listen: SocketAddr,
    /// Its TLS.
    pub tls: MirrorTls,
    /// The upstream of a request that names no registry (dockerd's `registry-mirrors` are
    /// Docker Hub's): the host regcache fetches from.
    pub default_registry: HostPort,
    /// htpasswd file (bcrypt entries): clients must log in (`docker login`), Basic.
    pub htpasswd: Option<PathBuf>,
}

/// Where the mirror's server certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MirrorTls {
    /// Minted from regcache's CA for these names (the first one when a client sends no SNI).
    Minted(Vec<String>),
    /// Read from PEM files (re-read on a reload).
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
    /// Obtained from an ACME CA (Let's Encrypt, step-ca, pebble), kept under the data dir
    /// and renewed before it expires.
    Acme(AcmeSettings),
    /// Plain HTTP (`insecure_http = true`): for dockerd `insecure-registries` in a lab.
    Plain,
}

/// How the mirror's certificate is obtained by ACME (RFC 8555), proven by TLS-ALPN-01
/// (RFC 8737) on the mirror's own listener: the CA must reach it on port 443 of each name
/// (or whatever port the CA validates on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// DNS names of the certificate, the first one for clients that send no SNI.
    pub names: Vec<String>,
    /// The CA's directory URL (`https://acme-v02.api.letsencrypt.org/directory`).
    pub directory: String,
    /// Contact address given to the CA for expiry notices.
    pub email: Option<String>,
    /// PEM root trusted for the directory's own HTTPS (a private CA), instead of the system's.
    pub ca_cert: Option<PathBuf>,
    /// Renew this long before expiry (at most a third of the certificate's lifetime).
    pub renew_before: Duration,
}

/// `[mirror]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorLayer {
    /// `listen = "0.0.0.0:5443"`: the mirror is off without it.
    pub listen: Option<Parsed<SocketAddr>>,
    /// `names = ["mirror.internal"]`: names a certificate from regcache's CA is minted for.
    #[serde(default)]
    pub names: Vec<String>,
    /// `tls_cert = "/etc/regcache/mirror.crt"` (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// `tls_key = "/etc/regcache/mirror.key"`
    pub tls_key: Option<PathBuf>,
    /// `insecure_http = false`: plain HTTP.
    pub insecure_http: Option<bool>,
    /// `default_registry = "docker.io"`
    pub default_registry: Option<String>,
    /// `auth_htpasswd = "/etc/regcache/mirror.htpasswd"`
    pub auth_htpasswd: Option<PathBuf>,
    /// `acme_directory = "https://acme-v02.api.letsencrypt.org/directory"`: the certificate for
    /// `names` comes from this ACME CA.
    pub acme_directory: Option<String>,
    /// `acme_email = "ops@example.com"`
    pub acme_email: Option<String>,
    /// `acme_ca_cert = "/etc/regcache/acme-root.pem"`: trust for the directory's HTTPS.
    pub acme_ca_cert: Option<PathBuf>,
    /// `acme_renew_before = "30d"`
    pub acme_renew_before: Option<Parsed<DurationValue>>,
}

impl MirrorLayer {
    /// `self` over `lower`: `self`'s values win; names are not merged (a list names one set).
    pub fn over(self, lower: MirrorLayer) -> MirrorLayer {
        MirrorLayer {
            listen: self.listen.or(lower.listen),
            names: if self.names.is_empty() { lower.names } else { self.names },
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            insecure_http: self.insecure_http.or(lower.insecure_http),
            default_registry: self.default_registry.or(lower.default_registry),
            auth_htpasswd: self.auth_htpasswd.or(lower.auth_htpasswd),
            acme_directory: self.acme_directory.or(lower.acme_directory),
            acme_email: self.acme_email.or(lower.acme_email),
            acme_ca_cert: self.acme_ca_cert.or(lower.acme_ca_cert),
            acme_renew_before: self.acme_renew_before.or(lower.acme_renew_before),
        }
    }

    /// The mirror's settings (`None` without `listen`). `accounts` says whether upstream
    /// accounts are configured: then the mirror must have a login, or private repositories
    /// would be public to whoever reaches it.
    ///
    /// # Errors
    /// On conflicting or missing TLS settings, a bad registry name, or accounts without login.
    pub fn resolve(self, origin: &str, accounts: bool) -> Result<Option<MirrorConfig>, ConfigError> {
        let err = |key: &str, msg: String| ConfigError::new(origin, format!("mirror.{key}"), msg);
        let Some(listen) = self.listen.map(|p| p.0) else {
            // A mirror setting without the mirror is a mistake (a forgotten --mirror-listen),
            // never silently nothing.
            let set = [
                ("names", !self.names.is_empty()),
                ("tls_cert", self.tls_cert.is_some()),
                ("tls_key", self.tls_key.is_some()),
                ("insecure_http", self.insecure_http == Some(true)),
                ("default_registry", self.default_registry.is_some()),
                ("auth_htpasswd", self.auth_htpasswd.is_some()),
                ("acme_directory", self.acme_directory.is_some()),
                ("acme_email", self.acme_email.is_some()),
                ("acme_ca_cert", self.acme_ca_cert.is_some()),
                ("acme_renew_before", self.acme_renew_before.is_some()),
            ];
            return match set.iter().find(|(_, on)| *on) {
                Some((key, _)) => Err(err(
                    key,
                    "is a mirror setting, but the mirror is off: set mirror.listen (--mirror-listen ADDR:PORT)".into(),
                )),
                None => Ok(None),
            };
        };
        let insecure = self.insecure_http.unwrap_or(false);
        let acme_only = |key: &str| {
            err(
                key,
                "is an ACME setting: set mirror.acme_directory (--acme-directory) too, or remove it".into(),
            )
        };
        if self.acme_directory.is_none() {
            if self.acme_email.is_some() {
                return Err(acme_only("acme_email"));
            }
            if self.acme_ca_cert.is_some() {
                return Err(acme_only("acme_ca_cert"));
            }
            if self.acme_renew_before.is_some() {
                return Err(acme_only("acme_renew_before"));
            }
        }
        let tls = match (self.tls_cert, self.tls_key, insecure, self.acme_directory) {
            (Some(_), None, _, _) => return Err(err("tls_key", "tls_cert is set but tls_key is not".into())),
            (None, Some(_), _, _) => return Err(err("tls_cert", "tls_key is set but tls_cert is not".into())),
            (Some(_), Some(_), true, _) => {
                return Err(err(
                    "insecure_http",
                    "insecure_http and tls_cert exclude each other: choose plain HTTP or TLS".into(),
                ));
            }
            (_, _, true, Some(_)) => {
                return Err(err(
                    "insecure_http",
                    "insecure_http and acme_directory exclude each other: choose plain HTTP or TLS".into(),
                ));
            }
            (Some(_), Some(_), false, Some(_)) => {
                return Err(err(
                    "acme_directory",
                    "acme_directory and tls_cert exclude each other: the certificate comes from files or from ACME"
                        .into(),
                ));
            }
            (Some(cert), Some(key), false, None) => MirrorTls::Files { cert, key },
            (None, None, true, None) => MirrorTls::Plain,
            (None, None, false, Some(directory)) => {
                if self.names.is_empty() {
                    return Err(err(
                        "names",
                        "ACME needs the names to certify: --mirror-name NAME (DNS names the CA can reach)".into(),
                    ));
                }
                let names = mirror_names(self.names, &err)?;
                if let Some(ip) = names.iter().find(|n| n.parse::<std::net::IpAddr>().is_ok()) {
                    return Err(err(
                        "names",
                        format!("{ip}: ACME certificates here are for DNS names, not IP addresses"),
                    ));
                }
                if !directory.starts_with("https://") {
                    return Err(err(
                        "acme_directory",
                        format!("{directory:?}: expected the CA's https:// directory URL"),
                    ));
                }
                if let Some(e) = &self.acme_email
                    && (!e.contains('@') || e.contains(char::is_whitespace))
                {
                    return Err(err("acme_email", format!("{e:?}: expected an email address")));
                }
                MirrorTls::Acme(AcmeSettings {
                    names,
                    directory,
                    email: self.acme_email,
                    ca_cert: self.acme_ca_cert,
                    renew_before: self.acme_renew_before.map_or(DEFAULT_RENEW_BEFORE, |d| d.0.0),
                })
            }
            (None, None, false, None) if !self.names.is_empty() => MirrorTls::Minted(mirror_names(self.names, &err)?),
            (None, None, false, None) => {
                return Err(err(
                    "names",
                    "the mirror needs TLS: --mirror-name NAME (a certificate from regcache's CA), \
                     --mirror-tls-cert/--mirror-tls-key, --acme-directory URL, or --mirror-insecure-http for plain HTTP"
                        .into(),
                ));
            }
        };
        let default_registry = upstream_of(self.default_registry.as_deref().unwrap_or("docker.io"))
            .map_err(|e| err("default_registry", e))?;
        if accounts && self.auth_htpasswd.is_none() {
            return Err(err(
                "auth_htpasswd",
                "upstream accounts are configured ([[credentials]]) and the mirror has no login: anyone who \
                 reaches it could pull private repositories; set --mirror-htpasswd (or mirror.auth_htpasswd)"
                    .into(),
            ));
        }
        Ok(Some(MirrorConfig {
            listen,
            tls,
            default_registry,
            htpasswd: self.auth_htpasswd,
        }))
    }
}

/// `names` lower-cased and checked: host names or IP addresses, no ports.
fn mirror_names(names: Vec<String>, err: &dyn Fn(&str, String) -> ConfigError) -> Result<Vec<String>, ConfigError> {
    let mut out = Vec::new();
    for n in names {
        if let Ok(ip) = n.parse::<std::net::IpAddr>() {
            out.push(ip.to_string());
            continue;
        }
        if n.contains(':') {
            return Err(err(
                "names",
                format!("{n:?}: expected a host name or IP address, no port"),
            ));
        }
        out.push(HostPort::parse(&n, 443).map_err(|e| err("names", e))?.host);
    }
    Ok(out)
}

/// The host regcache fetches a registry named `name` from: Docker Hub's names are its API
/// host, any other name is itself (`HOST[:PORT]`, port 443 by default).
///
/// # Errors
/// If `name` is not a host.
pub fn upstream_of(name: &str) -> Result<HostPort, String> {
    let hp = HostPort::parse(name, 443)?;
    Ok(match hp.host.as_str() {
        "docker.io" | "index.docker.io" | "registry.hub.docker.com" | DOCKER_HUB_API if hp.port == 443 => HostPort {
            host: DOCKER_HUB_API.to_string(),
            port: 443,
        },
        _ => hp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(toml_text: &str) -> MirrorLayer {
        #[derive(Deserialize)]
        struct Doc {
            mirror: MirrorLayer,
        }
        toml::from_str::<Doc>(toml_text).unwrap().mirror
    }

    #[test]
    fn off_without_listen() {
        assert_eq!(MirrorLayer::default().resolve("t", true).unwrap(), None);
        for text in [
            "[mirror]\nacme_email = \"ops@example.com\"\n",
            "[mirror]\nnames = [\"m.example\"]\n",
        ] {
            let e = layer(text).resolve("t", false).unwrap_err();
            assert!(e.message.contains("--mirror-listen"), "{text}: {e}");
        }
    }

    #[test]
    fn tls_choice_and_its_errors() {
        let m = layer("[mirror]\nlisten = \"127.0.0.1:5443\"\nnames = [\"mirror.test\", \"127.0.0.1\"]\n")
            .resolve("t", false)
            .unwrap()
            .unwrap();
        assert_eq!(m.tls, MirrorTls::Minted(vec!["mirror.test".into(), "127.0.0.1".into()]));
        assert_eq!(
            m.default_registry,
            HostPort::parse("registry-1.docker.io", 443).unwrap()
        );
        let e = layer("[mirror]\nlisten = \"127.0.0.1:5443\"\n")
            .resolve("t", false)
            .unwrap_err();
        assert_eq!(e.key, "mirror.names");
        assert!(e.message.contains("--mirror-insecure-http"), "{e}");
        let e = layer("[mirror]\nlisten = \"127.0.0.1:5443\"\ntls_cert = \"c\"\n")
            .resolve("t", false)
            .unwrap_err();
        assert_eq!(e.key, "mirror.tls_key");
        let plain =
            layer("[mirror]\nlisten = \"127.0.0.1:5443\"\ninsecure_http = true\ndefault_registry = \"ghcr.io\"\n")
                .resolve("t", false)
                .unwrap()
                .unwrap();
        assert_eq!(plain.tls, MirrorTls::Plain);
        assert_eq!(plain.default_registry, HostPort::parse("ghcr.io", 443).unwrap());
    }

    #[test]
    fn acme_settings_and_their_errors() {
        let base = "[mirror]\nlisten = \"0.0.0.0:443\"\nnames = [\"Mirror.Example.com\"]\n";
        let m = layer(&format!(
            "{base}acme_directory = \"https://acme.example/dir\"\nacme_email = \"ops@example.com\"\nacme_renew_before = \"10d\"\n"
        ))
        .resolve("t", false)
        .unwrap()
        .unwrap();
        assert_eq!(
            m.tls,
            MirrorTls::Acme(AcmeSettings {
                names: vec!["mirror.example.com".into()],
                directory: "https://acme.example/dir".into(),
                email: Some("ops@example.com".into()),
                ca_cert: None,
                renew_before: Duration::from_secs(10 * 86400),
            })
        );
        let refused = |extra: &str, key: &str, needle: &str| {
            let e = layer(&format!("{base}{extra}")).resolve("t", false).unwrap_err();
            assert_eq!(e.key, key, "{extra}: {e}");
            assert!(e.message.contains(needle), "{extra}: {e}");
        };
        refused(
            "acme_email = \"ops@example.com\"\n",
            "mirror.acme_email",
            "acme_directory",
        );
        refused(
            "acme_directory = \"http://acme.example/dir\"\n",
            "mirror.acme_directory",
            "https://",
        );
        refused(
            "acme_directory = \"https://a/dir\"\ntls_cert = \"c\"\ntls_key = \"k\"\n",
            "mirror.acme_directory",
            "exclude",
        );
        refused(
            "acme_directory = \"https://a/dir\"\ninsecure_http = true\n",
            "mirror.insecure_http",
            "exclude",
        );
        refused(
            "acme_directory = \"https://a/dir\"\nacme_email = \"nobody\"\n",
            "mirror.acme_email",
            "email",
        );
        let e =
            layer("[mirror]\nlisten = \"0.0.0.0:443\"\nnames = [\"10.0.0.1\"]\nacme_directory = \"https://a/dir\"\n")
                .resolve("t", false)
                .unwrap_err();
        assert!(e.message.contains("not IP addresses"), "{e}");
        let e = layer("[mirror]\nlisten = \"0.0.0.0:443\"\nacme_directory = \"https://a/dir\"\n")
            .resolve("t", false)
            .unwrap_err();
        assert_eq!(e.key, "mirror.names");
    }

    #[test]
    fn accounts_without_a_mirror_login_are_refused() {
        let l = layer("[mirror]\nlisten = \"0.0.0.0:5443\"\ninsecure_http = true\n");
        let e = l.clone().resolve("regcache.toml", true).unwrap_err();
        assert_eq!(e.key, "mirror.auth_htpasswd");
        assert!(e.message.contains("private repositories"), "{e}");
        assert!(l.resolve("regcache.toml", false).unwrap().is_some());
    }

    #[test]
    fn docker_hub_names_are_fetched_from_its_api_host() {
        for n in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
            assert_eq!(upstream_of(n).unwrap().host, "registry-1.docker.io");
        }
        assert_eq!(
            upstream_of("localhost:5000").unwrap(),
            HostPort::parse("localhost:5000", 443).unwrap()
        );
    }
}
