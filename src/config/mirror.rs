//! The registry-mirror listener's settings (`[mirror]`, `--mirror-*`): where it listens, its
//! TLS, its login, and which upstream a request without a registry name goes to.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use crate::config::{ConfigError, HostPort, Parsed};

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
    /// Plain HTTP (`insecure_http = true`): for dockerd `insecure-registries` in a lab.
    Plain,
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
        }
    }

    /// The mirror's settings (`None` without `listen`). `accounts` says whether upstream
    /// accounts are configured: then the mirror must have a login, or private repositories
    /// would be public to whoever reaches it.
    ///
    /// # Errors
    /// On conflicting or missing TLS settings, a bad registry name, or accounts without login.
    pub fn resolve(self, origin: &str, accounts: bool) -> Result<Option<MirrorConfig>, ConfigError> {
        let Some(listen) = self.listen.map(|p| p.0) else {
            return Ok(None);
        };
        let err = |key: &str, msg: String| ConfigError::new(origin, format!("mirror.{key}"), msg);
        let insecure = self.insecure_http.unwrap_or(false);
        let tls = match (self.tls_cert, self.tls_key, insecure) {
            (Some(cert), Some(key), false) => MirrorTls::Files { cert, key },
            (Some(_), None, _) => return Err(err("tls_key", "tls_cert is set but tls_key is not".into())),
            (None, Some(_), _) => return Err(err("tls_cert", "tls_key is set but tls_cert is not".into())),
            (Some(_), Some(_), true) => {
                return Err(err(
                    "insecure_http",
                    "insecure_http and tls_cert exclude each other: choose plain HTTP or TLS".into(),
                ));
            }
            (None, None, true) => MirrorTls::Plain,
            (None, None, false) if !self.names.is_empty() => {
                let mut names = Vec::new();
                for n in self.names {
                    if let Ok(ip) = n.parse::<std::net::IpAddr>() {
                        names.push(ip.to_string());
                        continue;
                    }
                    if n.contains(':') {
                        return Err(err(
                            "names",
                            format!("{n:?}: expected a host name or IP address, no port"),
                        ));
                    }
                    names.push(HostPort::parse(&n, 443).map_err(|e| err("names", e))?.host);
                }
                MirrorTls::Minted(names)
            }
            (None, None, false) => {
                return Err(err(
                    "names",
                    "the mirror needs TLS: --mirror-name NAME (a certificate from regcache's CA), \
                     --mirror-tls-cert/--mirror-tls-key, or --mirror-insecure-http for plain HTTP"
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
