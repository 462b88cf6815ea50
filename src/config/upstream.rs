//! How regcache reaches upstream registries from a real network: a parent proxy
//! (`[upstream] proxy`, per `[[registry]]` too), the hosts that bypass it (`no_proxy`, the
//! `NO_PROXY` syntax), and the `[upstream]` section of the file.
//!
//! regcache never reads `HTTPS_PROXY`/`NO_PROXY` from its own environment: on a build host
//! those point clients at regcache itself, and following them would loop.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use base64::Engine as _;
use serde::Deserialize;

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{
    ConfigError, Credential, CredentialHelper, DurationValue, GlobText, HostPattern, HostPort, HostPortValue, Login,
    Parsed, read_secret,
};

/// A parent proxy, `http://[user:pass@]host:port`: upstream connections are opened through it
/// with `CONNECT` (RFC 9110 §9.3.6), TLS then runs end to end through the tunnel.
#[derive(Clone, PartialEq, Eq)]
pub struct ParentProxy {
    /// Where the proxy listens.
    pub address: HostPort,
    user: Option<(String, String)>,
}

impl ParentProxy {
    /// The `Proxy-Authorization` value (Basic, RFC 7617), sent to this proxy only.
    pub fn authorization(&self) -> Option<String> {
        let (user, pass) = self.user.as_ref()?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        Some(format!("Basic {encoded}"))
    }

    /// The same proxy with `password` for its user (from `proxy_password_file`/`_env`).
    pub fn with_password(mut self, password: String) -> Result<Self, String> {
        match &mut self.user {
            Some((_, pass)) => *pass = password,
            None => return Err("a proxy password needs a user in the proxy URL (http://USER@host:port)".into()),
        }
        Ok(self)
    }

    /// The URL with the password hidden, for `regcache config check`.
    pub fn redacted(&self) -> String {
        match &self.user {
            Some((user, _)) => format!("http://{user}:***@{}", self.address.authority(0)),
            None => self.to_string(),
        }
    }
}

/// Never shows the credentials: this is what logs and errors print.
impl fmt::Display for ParentProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.address.authority(0))
    }
}

impl fmt::Debug for ParentProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParentProxy({})", self.redacted())
    }
}

impl FromStr for ParentProxy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let rest = match s.split_once("://") {
            Some(("http", rest)) => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "{scheme}:// proxies are not supported: expected http://[USER:PASS@]HOST:PORT (TLS to the registry still runs end to end through it)"
                ));
            }
            None => s,
        };
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') {
            return Err(format!("{s:?}: expected http://[USER:PASS@]HOST:PORT, without a path"));
        }
        let (user, host) = match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let decode = |t: &str| {
                    percent_encoding::percent_decode_str(t)
                        .decode_utf8()
                        .map(|c| c.into_owned())
                        .map_err(|_| "the proxy user or password is not UTF-8 once percent-decoded".to_string())
                };
                let (u, p) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                (Some((decode(u)?, decode(p)?)), host)
            }
            None => (None, rest),
        };
        // Only the host part is quoted back: the user part may hold a password.
        let address = HostPort::parse(host, 80).map_err(|_| format!("{host:?}: expected HOST:PORT of the proxy"))?;
        Ok(Self { address, user })
    }
}

/// A registry's own choice: its own parent proxy, or none at all (`proxy = "direct"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyChoice {
    /// Straight to the registry.
    Direct,
    /// Through this proxy.
    Via(ParentProxy),
}

impl FromStr for ProxyChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "direct" | "none" | "" => Ok(Self::Direct),
            other => other.parse().map(Self::Via),
        }
    }
}

/// Hosts reached without the parent proxy, in `NO_PROXY`'s syntax as curl and Go read it:
/// `*` (all), a domain (`example.com` or `.example.com`: it and its subdomains, optionally
/// `:PORT`), an IP address, or a CIDR (matched against hosts given as IP addresses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy(Vec<NoProxyEntry>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum NoProxyEntry {
    All,
    Net(ipnet::IpNet),
    Domain { suffix: String, port: Option<u16> },
}

impl NoProxy {
    /// Whether `target` bypasses the parent proxy.
    pub fn matches(&self, target: &HostPort) -> bool {
        let ip = target.host.parse::<IpAddr>().ok();
        self.0.iter().any(|e| match e {
            NoProxyEntry::All => true,
            NoProxyEntry::Net(net) => ip.is_some_and(|ip| net.contains(&ip)),
            NoProxyEntry::Domain { suffix, port } => {
                port.is_none_or(|p| p == target.port)
                    && (target.host == *suffix
                        || target
                            .host
                            .strip_suffix(suffix.as_str())
                            .is_some_and(|head| head.ends_with('.')))
            }
        })
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The list as `NO_PROXY` would spell it.
    pub fn render(&self) -> String {
        let items: Vec<String> = self
            .0
            .iter()
            .map(|e| match e {
                NoProxyEntry::All => "*".to_string(),
                NoProxyEntry::Net(n) => n.to_string(),
                NoProxyEntry::Domain { suffix, port: None } => suffix.clone(),
                NoProxyEntry::Domain { suffix, port: Some(p) } => format!("{suffix}:{p}"),
            })
            .collect();
        items.join(",")
    }
}

impl FromStr for NoProxy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for item in s.split([',', ' ', '\t', '\n']).map(str::trim).filter(|i| !i.is_empty()) {
            let entry = if item == "*" {
                NoProxyEntry::All
            } else if let Ok(net) = item.parse::<ipnet::IpNet>() {
                NoProxyEntry::Net(net.trunc())
            } else if let Ok(ip) = item.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
                NoProxyEntry::Net(ipnet::IpNet::from(ip))
            } else {
                let bare = item.trim_start_matches("*.").trim_start_matches('.');
                let hp = HostPort::parse(bare, 0)
                    .map_err(|_| format!("{item:?}: expected *, a domain, an IP address or a CIDR (as in NO_PROXY)"))?;
                NoProxyEntry::Domain {
                    suffix: hp.host,
                    port: (hp.port != 0).then_some(hp.port),
                }
            };
            entries.push(entry);
        }
        Ok(Self(entries))
    }
}

/// Which upstream connections go through which parent proxy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamProxy {
    /// The parent for every host not excepted.
    pub default: Option<ParentProxy>,
    /// Hosts reached directly despite `default`.
    pub no_proxy: NoProxy,
    /// Registries with their own choice (first match wins); it beats `no_proxy`.
    pub per_registry: Vec<(HostPattern, ProxyChoice)>,
}

impl UpstreamProxy {
    /// The parent proxy a connection to `target` goes through, if any.
    pub fn parent_for(&self, target: &HostPort) -> Option<&ParentProxy> {
        if let Some((_, choice)) = self.per_registry.iter().find(|(p, _)| p.matches(target)) {
            return match choice {
                ProxyChoice::Direct => None,
                ProxyChoice::Via(p) => Some(p),
            };
        }
        if self.no_proxy.matches(target) {
            return None;
        }
        self.default.as_ref()
    }
}

/// `[upstream]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamLayer {
    /// `proxy = "http://proxy.corp:3128"`
    pub proxy: Option<Parsed<ParentProxy>>,
    /// A file holding the password for the proxy URL's user.
    pub proxy_password_file: Option<std::path::PathBuf>,
    /// An environment variable holding it.
    pub proxy_password_env: Option<String>,
    /// `no_proxy = "localhost,.corp,10.0.0.0/8"`
    pub no_proxy: Option<Parsed<NoProxy>>,
}

impl UpstreamLayer {
    /// `self` over `lower`.
    pub fn over(self, lower: Self) -> Self {
        Self {
            proxy: self.proxy.or(lower.proxy),
            proxy_password_file: self.proxy_password_file.or(lower.proxy_password_file),
            proxy_password_env: self.proxy_password_env.or(lower.proxy_password_env),
            no_proxy: self.no_proxy.or(lower.no_proxy),
        }
    }

    /// The routes, with the registries' own choices; reads the proxy password source.
    ///
    /// # Errors
    /// A password source without a proxy (or a user in its URL), or one that cannot be read.
    pub fn resolve(
        self,
        origin: &str,
        per_registry: Vec<(HostPattern, ProxyChoice)>,
    ) -> Result<UpstreamProxy, ConfigError> {
        let err = |key: &str, msg: String| ConfigError::new(origin, format!("upstream.{key}"), msg);
        let password = read_secret(
            self.proxy_password_file,
            self.proxy_password_env,
            ("proxy_password_file", "proxy_password_env"),
            &err,
        )?;
        let default = match (self.proxy.map(|p| p.0), password) {
            (Some(p), Some(pass)) => Some(p.with_password(pass).map_err(|e| err("proxy", e))?),
            (None, Some(_)) => return Err(err("proxy", "a proxy password is set but no proxy".into())),
            (p, None) => p,
        };
        Ok(UpstreamProxy {
            default,
            no_proxy: self.no_proxy.map(|n| n.0).unwrap_or_default(),
            per_registry,
        })
    }
}

/// `[[credentials]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSection {
    /// The registry host as clients name it (`registry-1.docker.io`, `ghcr.io`).
    pub registry: Parsed<HostPortValue>,
    /// Repositories covered, a glob (`org/*`); all when absent.
    pub repository: Option<Parsed<GlobText>>,
    /// User name (with a password source; a helper names its own).
    pub username: Option<String>,
    /// The password itself (prefer `password_file` or `password_env`).
    pub password: Option<String>,
    /// A file holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    pub password_env: Option<String>,
    /// A docker credential helper: `ecr-login` runs `docker-credential-ecr-login get`.
    pub helper: Option<String>,
    /// How long one helper run may take (default 10s).
    pub helper_timeout: Option<Parsed<DurationValue>>,
    /// How long a helper's answer is reused when its secret carries no expiry (default 5m).
    pub helper_ttl: Option<Parsed<DurationValue>>,
}

/// The accounts `[[credentials]]` name, their passwords read from files and variables.
///
/// # Errors
/// A section without exactly one secret source, or one that cannot be read.
pub fn resolve_credentials(sections: Vec<CredentialSection>, origin: &str) -> Result<Vec<Credential>, ConfigError> {
    let mut credentials = Vec::new();
    for (i, c) in sections.into_iter().enumerate() {
        let key = |k: &str| format!("credentials[{i}].{k}");
        let err = |k: &str, m: String| ConfigError::new(origin, key(k), m);
        let sources = [
            c.password.is_some(),
            c.password_file.is_some(),
            c.password_env.is_some(),
            c.helper.is_some(),
        ];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(err(
                "password",
                "expected exactly one of password, password_file, password_env, helper".into(),
            ));
        }
        let password = match c.password {
            Some(p) => Some(p),
            None => read_secret(c.password_file, c.password_env, ("password_file", "password_env"), &err)?,
        };
        let login = match (password, c.helper, c.username) {
            (Some(password), None, Some(username)) => Login::Password { username, password },
            (Some(_), None, None) => return Err(err("username", "a password needs a username".into())),
            (None, Some(helper), None) => {
                if helper.trim().is_empty() || helper.chars().any(char::is_whitespace) {
                    return Err(err(
                        "helper",
                        format!("{helper:?}: expected a helper name (ecr-login) or a program path"),
                    ));
                }
                let program = if helper.contains('/') {
                    helper
                } else {
                    format!("docker-credential-{helper}")
                };
                Login::Helper(CredentialHelper {
                    program,
                    timeout: c.helper_timeout.map_or(Duration::from_secs(10), |d| d.0.0),
                    ttl: c.helper_ttl.map_or(Duration::from_secs(300), |d| d.0.0),
                })
            }
            (None, Some(_), Some(_)) => {
                return Err(err(
                    "username",
                    "a helper names the user itself: remove username".into(),
                ));
            }
            _ => return Err(err("password", "expected a password source or a helper".into())),
        };
        credentials.push(Credential {
            registry: c.registry.0.0,
            repository: c.repository.map(|g| g.0),
            login,
        });
    }
    Ok(credentials)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> HostPort {
        HostPort::parse(s, 443).unwrap()
    }

    #[test]
    fn proxy_urls_keep_credentials_out_of_display() {
        let p: ParentProxy = "http://ci%40corp:p%3Ass@proxy.corp:3128/".parse().unwrap();
        assert_eq!(p.address, HostPort::parse("proxy.corp:3128", 80).unwrap());
        assert_eq!(p.to_string(), "http://proxy.corp:3128");
        assert_eq!(p.redacted(), "http://ci@corp:***@proxy.corp:3128");
        assert!(!format!("{p:?}").contains("p:ss"));
        let expected = base64::engine::general_purpose::STANDARD.encode("ci@corp:p:ss");
        assert_eq!(p.authorization().unwrap(), format!("Basic {expected}"));
        let bare: ParentProxy = "10.0.0.1:8080".parse().unwrap();
        assert!(bare.authorization().is_none());
        assert_eq!("http://proxy".parse::<ParentProxy>().unwrap().address.port, 80);
        let e = "https://proxy:443".parse::<ParentProxy>().unwrap_err();
        assert!(e.contains("not supported"), "{e}");
        let e = "socks5://u:secret@proxy:1080".parse::<ParentProxy>().unwrap_err();
        assert!(!e.contains("secret"), "{e}");
        let e = "http://u:secret@bad host:1".parse::<ParentProxy>().unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn no_proxy_reads_like_curl_and_go() {
        let n: NoProxy = "localhost, .corp.example,registry.internal:5000 10.0.0.0/8,192.168.1.7,[::1]"
            .parse()
            .unwrap();
        assert!(n.matches(&hp("localhost")));
        assert!(n.matches(&hp("corp.example")));
        assert!(n.matches(&hp("a.b.corp.example")));
        assert!(!n.matches(&hp("evilcorp.example")));
        assert!(n.matches(&hp("registry.internal:5000")));
        assert!(!n.matches(&hp("registry.internal:443")));
        assert!(n.matches(&hp("10.1.2.3")));
        assert!(n.matches(&hp("192.168.1.7:5000")));
        assert!(n.matches(&hp("[::1]:443")));
        assert!(!n.matches(&hp("ghcr.io")));
        assert!("*".parse::<NoProxy>().unwrap().matches(&hp("ghcr.io")));
        assert!("*.corp".parse::<NoProxy>().unwrap().matches(&hp("x.corp")));
        assert!("".parse::<NoProxy>().unwrap().is_empty());
        assert!("a b/c".parse::<NoProxy>().is_err());
    }

    #[test]
    fn a_registrys_own_choice_beats_no_proxy_and_the_default() {
        let routes = UpstreamProxy {
            default: Some("http://proxy:3128".parse().unwrap()),
            no_proxy: "ghcr.io,.internal".parse().unwrap(),
            per_registry: vec![
                (
                    "ghcr.io".parse().unwrap(),
                    ProxyChoice::Via("http://other:8080".parse().unwrap()),
                ),
                ("quay.io".parse().unwrap(), "direct".parse().unwrap()),
            ],
        };
        assert_eq!(
            routes.parent_for(&hp("ghcr.io")).unwrap().to_string(),
            "http://other:8080"
        );
        assert!(routes.parent_for(&hp("quay.io")).is_none());
        assert!(routes.parent_for(&hp("registry.internal")).is_none());
        assert_eq!(
            routes.parent_for(&hp("auth.docker.io")).unwrap().to_string(),
            "http://proxy:3128"
        );
    }

    #[test]
    fn a_helper_account_names_no_user_and_no_password() {
        let section = |extra: &str| -> Result<Vec<Credential>, ConfigError> {
            let l =
                crate::config::Layer::from_toml(&format!("[[credentials]]\nregistry = \"x.ecr.aws\"\n{extra}"), "r")?;
            resolve_credentials(l.credentials, "r")
        };
        let c = section("helper = \"ecr-login\"\nhelper_timeout = \"2s\"\n").unwrap();
        let Login::Helper(h) = &c[0].login else { panic!("{c:?}") };
        assert_eq!(h.program, "docker-credential-ecr-login");
        assert_eq!(h.timeout, Duration::from_secs(2));
        let c = section("helper = \"/opt/bin/creds\"\n").unwrap();
        assert!(matches!(&c[0].login, Login::Helper(h) if h.program == "/opt/bin/creds"));
        assert_eq!(
            section("helper = \"x\"\nusername = \"u\"\n").unwrap_err().key,
            "credentials[0].username"
        );
        assert_eq!(
            section("helper = \"x\"\npassword = \"p\"\n").unwrap_err().key,
            "credentials[0].password"
        );
        assert_eq!(
            section("password = \"p\"\n").unwrap_err().key,
            "credentials[0].username"
        );
        assert_eq!(section("helper = \"a b\"\n").unwrap_err().key, "credentials[0].helper");
    }
}
