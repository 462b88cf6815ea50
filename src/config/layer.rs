//! Where a [`Config`] comes from: the TOML file, `REGCACHE_*` variables and flags, and
//! rpardini/docker-registry-proxy's variables, layered as flags > `REGCACHE_*` > rpardini
//! variables > file > defaults.
//!
//! Every source is read into the same [`Layer`] (the file's schema: every key optional), the
//! layers are stacked, and [`Layer::resolve`] fills defaults and checks what spans keys.
//! Values are parsed while the file is deserialized, so an error carries the file, line and key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::config::Limits;
use crate::config::MirrorLayer;
use crate::config::StoreLayer;
use crate::config::canonical_registry;
use crate::config::{
    self, AccessPolicy, CacheBudget, CachePolicy, Config, ConnectTo, HostPattern, HostPort, LogFormat,
    NonRegistryPolicy, RegistryPolicy, TagTtlMode, TagTtlRule, Timeouts, UpstreamTls,
};
use crate::config::{CredentialSection, HealthLayer, ProxyChoice, UpstreamLayer};

/// The file read when `--config` is not given, if it exists in the working directory.
pub const DEFAULT_FILE: &str = "regcache.toml";

/// A configuration error, naming where it comes from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {key}: {message}")]
pub struct ConfigError {
    /// `FILE:LINE`, `environment` or `command line`.
    pub origin: String,
    /// The key (`cache.tag_ttl`, `registry[2].host`, `REGISTRIES`).
    pub key: String,
    /// What is wrong and what was expected.
    pub message: String,
}

impl ConfigError {
    /// An error about an environment variable.
    pub fn new_env(var: &str, message: impl Into<String>) -> Self {
        Self::new("environment", var, message)
    }

    pub(crate) fn new(origin: impl Into<String>, key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            origin: origin.into(),
            key: key.into(),
            message: message.into(),
        }
    }
}

/// A value parsed from a TOML string with the type's own syntax (the one its flag takes).
#[derive(Debug, Clone)]
pub struct Parsed<T>(pub T);

impl<'de, T> Deserialize<'de> for Parsed<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map(Parsed).map_err(serde::de::Error::custom)
    }
}

/// A duration such as `30s`, `5m`, `7d`.
#[derive(Debug, Clone, Copy)]
pub struct DurationValue(pub Duration);

impl FromStr for DurationValue {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        config::parse_duration(s).map(Self)
    }
}

/// A size such as `50GiB` or `32g`.
#[derive(Debug, Clone, Copy)]
pub struct SizeValue(pub u64);

impl FromStr for SizeValue {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        config::parse_size(s).map(Self)
    }
}

type Dur = Option<Parsed<DurationValue>>;

/// One source of settings; also the schema of the TOML file (see `regcache.example.toml`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    /// `listen = "127.0.0.1:3128"`
    pub listen: Option<Parsed<SocketAddr>>,
    /// `proxy_listener = false`: no forward proxy, only the mirror (which then also answers
    /// regcache's own endpoints).
    pub proxy_listener: Option<bool>,
    /// `data_dir = "/var/lib/regcache/data"`
    pub data_dir: Option<PathBuf>,
    /// `ca_dir = "/var/lib/regcache/ca"`
    pub ca_dir: Option<PathBuf>,
    /// `non_registry = "tunnel" | "deny"`
    pub non_registry: Option<Parsed<NonRegistryPolicy>>,
    /// `upstream_ca = ["/etc/ssl/internal.pem"]`
    #[serde(default)]
    pub upstream_ca: Vec<PathBuf>,
    /// `connect_to = ["ghcr.io=10.0.0.5:443"]`
    #[serde(default)]
    pub connect_to: Vec<Parsed<ConnectTo>>,
    /// `allow_push = true`
    pub allow_push: Option<bool>,
    /// `upstream_skip_verify = false`: accept any upstream certificate. Dangerous.
    pub upstream_skip_verify: Option<bool>,
    /// `log_format = "text" | "json"`
    pub log_format: Option<Parsed<LogFormat>>,
    /// `shutdown_timeout = "30s"`
    pub shutdown_timeout: Dur,
    /// `auth_htpasswd = "/etc/regcache/htpasswd"` (bcrypt entries).
    pub auth_htpasswd: Option<PathBuf>,
    /// `allow_clients = ["10.0.0.0/8"]`
    #[serde(default)]
    pub allow_clients: Vec<Parsed<ipnet::IpNet>>,
    /// `insecure_open_proxy = false`
    pub insecure_open_proxy: Option<bool>,
    /// `tunnel_ports = [443]`: ports non-registry CONNECTs may reach.
    pub tunnel_ports: Option<Vec<u16>>,
    /// `tunnel_allow = ["github.com", "*.githubusercontent.com"]` (with `non_registry = "allowlist"`).
    #[serde(default)]
    pub tunnel_allow: Vec<Parsed<HostPattern>>,
    /// `tls_cert = "/etc/regcache/proxy.crt"`: TLS on the listener (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// `tls_key = "/etc/regcache/proxy.key"`
    pub tls_key: Option<PathBuf>,
    /// `[timeouts]`
    #[serde(default)]
    pub timeouts: TimeoutsLayer,
    /// `[limits]`
    #[serde(default)]
    pub limits: LimitsLayer,
    /// `[cache]`
    #[serde(default)]
    pub cache: CacheLayer,
    /// `[[registry]]`: registries to intercept and cache, with per-registry settings.
    #[serde(default, rename = "registry")]
    pub registries: Vec<RegistrySection>,
    /// `[[credentials]]`: upstream accounts.
    #[serde(default)]
    pub credentials: Vec<CredentialSection>,
    /// `[store]`: where the cache lives (local disk, or an S3-compatible bucket).
    #[serde(default)]
    pub store: StoreLayer,
    /// `[mirror]`: the registry-mirror listener.
    #[serde(default)]
    pub mirror: MirrorLayer,
    /// `[upstream]`: a parent proxy for upstream connections.
    #[serde(default)]
    pub upstream: UpstreamLayer,
    /// `[health]`: the store check behind `/healthz`.
    #[serde(default)]
    pub health: HealthLayer,
}

/// `[timeouts]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsLayer {
    /// Idle client connections and tunnels are closed after this.
    pub idle: Dur,
    /// TCP + TLS connect to an upstream.
    pub connect: Dur,
    /// Upstream response headers.
    pub response: Dur,
}

/// `[limits]`: bounds on client input (see `front::limits`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsLayer {
    /// Client connections open at once, tunnels included.
    pub max_connections: Option<usize>,
    /// Bytes of a request head, e.g. `"64KiB"`.
    pub max_header_size: Option<Parsed<SizeValue>>,
    /// Header fields in a request.
    pub max_headers: Option<usize>,
    /// Bytes of a request target, e.g. `"8KiB"`.
    pub max_request_line: Option<Parsed<SizeValue>>,
}

/// `[cache]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheLayer {
    /// Tag revalidation interval.
    pub tag_ttl: Dur,
    /// `"override"` or `"upstream-first"`.
    pub tag_ttl_mode: Option<Parsed<TagTtlMode>>,
    /// `["docker.io/library/*:latest=5m"]`
    #[serde(default)]
    pub tag_ttl_rules: Vec<Parsed<TagTtlRule>>,
    /// Stale tags may be served this long when upstream fails.
    pub max_stale: Dur,
    /// Disk budget.
    pub max_size: Option<Parsed<SizeValue>>,
    /// Free space to keep on the filesystem.
    pub min_free: Option<Parsed<SizeValue>>,
    /// Content unused this long may be evicted.
    pub inactive: Dur,
    /// Recheck interval of a repository's public status.
    pub public_recheck: Dur,
    /// Outage window for private content (see `CachePolicy::private_grace`).
    pub private_grace: Dur,
    /// Rules built from rpardini's regex variables (not a file key).
    #[serde(skip)]
    pub path_rules: Vec<TagTtlRule>,
}

/// `[[registry]]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySection {
    /// `host = "registry.internal:5000"` or `"*.pkg.dev"`.
    pub host: Parsed<HostPattern>,
    /// Dial this address instead of resolving `host` (exact hosts only).
    pub address: Option<Parsed<SocketAddr>>,
    /// Extra CA bundle trusted for this registry only.
    pub upstream_ca: Option<PathBuf>,
    /// Accept any certificate from this registry.
    #[serde(default)]
    pub skip_verify: bool,
    /// Overrides `cache.tag_ttl` for this registry.
    pub tag_ttl: Dur,
    /// Overrides `cache.max_stale` for this registry.
    pub max_stale: Dur,
    /// This registry's parent proxy, or `"direct"` (overrides `upstream.proxy`).
    pub proxy: Option<Parsed<ProxyChoice>>,
}

impl RegistrySection {
    /// A section naming only the host (as `--registry` does).
    pub fn host_only(host: HostPattern) -> Self {
        Self {
            host: Parsed(host),
            address: None,
            upstream_ca: None,
            skip_verify: false,
            tag_ttl: None,
            max_stale: None,
            proxy: None,
        }
    }
}

/// A `HOST[:PORT]` (port 443 by default).
#[derive(Debug, Clone)]
pub struct HostPortValue(pub HostPort);

impl FromStr for HostPortValue {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        HostPort::parse(s, 443).map(Self)
    }
}

impl Layer {
    /// Reads a TOML file.
    ///
    /// # Errors
    /// If it cannot be read, is not TOML, or holds an unknown key or a bad value.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(path.display().to_string(), "(file)", format!("cannot read: {e}")))?;
        Self::from_toml(&text, &path.display().to_string())
    }

    /// Parses TOML text; `name` is used in errors.
    ///
    /// # Errors
    /// As [`Layer::from_file`].
    pub fn from_toml(text: &str, name: &str) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| toml_error(name, text, &e, None))?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            toml_error(name, text, e.inner(), Some(path))
        })
    }

    /// `self` over `lower`: `self`'s values win, lists keep `self`'s entries first (the first
    /// match wins wherever lists are searched).
    pub fn over(self, lower: Layer) -> Layer {
        fn cat<T>(mut a: Vec<T>, b: Vec<T>) -> Vec<T> {
            a.extend(b);
            a
        }
        Layer {
            listen: self.listen.or(lower.listen),
            proxy_listener: self.proxy_listener.or(lower.proxy_listener),
            data_dir: self.data_dir.or(lower.data_dir),
            ca_dir: self.ca_dir.or(lower.ca_dir),
            non_registry: self.non_registry.or(lower.non_registry),
            upstream_ca: cat(self.upstream_ca, lower.upstream_ca),
            connect_to: cat(self.connect_to, lower.connect_to),
            allow_push: self.allow_push.or(lower.allow_push),
            upstream_skip_verify: self.upstream_skip_verify.or(lower.upstream_skip_verify),
            log_format: self.log_format.or(lower.log_format),
            shutdown_timeout: self.shutdown_timeout.or(lower.shutdown_timeout),
            auth_htpasswd: self.auth_htpasswd.or(lower.auth_htpasswd),
            allow_clients: cat(self.allow_clients, lower.allow_clients),
            insecure_open_proxy: self.insecure_open_proxy.or(lower.insecure_open_proxy),
            tunnel_ports: self.tunnel_ports.or(lower.tunnel_ports),
            tunnel_allow: cat(self.tunnel_allow, lower.tunnel_allow),
            tls_cert: self.tls_cert.or(lower.tls_cert),
            tls_key: self.tls_key.or(lower.tls_key),
            timeouts: TimeoutsLayer {
                idle: self.timeouts.idle.or(lower.timeouts.idle),
                connect: self.timeouts.connect.or(lower.timeouts.connect),
                response: self.timeouts.response.or(lower.timeouts.response),
            },
            limits: LimitsLayer {
                max_connections: self.limits.max_connections.or(lower.limits.max_connections),
                max_header_size: self.limits.max_header_size.or(lower.limits.max_header_size),
                max_headers: self.limits.max_headers.or(lower.limits.max_headers),
                max_request_line: self.limits.max_request_line.or(lower.limits.max_request_line),
            },
            cache: CacheLayer {
                tag_ttl: self.cache.tag_ttl.or(lower.cache.tag_ttl),
                tag_ttl_mode: self.cache.tag_ttl_mode.or(lower.cache.tag_ttl_mode),
                tag_ttl_rules: cat(self.cache.tag_ttl_rules, lower.cache.tag_ttl_rules),
                max_stale: self.cache.max_stale.or(lower.cache.max_stale),
                max_size: self.cache.max_size.or(lower.cache.max_size),
                min_free: self.cache.min_free.or(lower.cache.min_free),
                inactive: self.cache.inactive.or(lower.cache.inactive),
                public_recheck: self.cache.public_recheck.or(lower.cache.public_recheck),
                private_grace: self.cache.private_grace.or(lower.cache.private_grace),
                path_rules: cat(self.cache.path_rules, lower.cache.path_rules),
            },
            registries: cat(self.registries, lower.registries),
            credentials: cat(self.credentials, lower.credentials),
            mirror: self.mirror.over(lower.mirror),
            store: self.store.over(lower.store),
            upstream: self.upstream.over(lower.upstream),
            health: self.health.over(lower.health),
        }
    }

    /// Fills defaults and builds the [`Config`]. Reads password files and variables named by
    /// `[[credentials]]`; `origin` names the layers in errors about them.
    ///
    /// # Errors
    /// On a credential without exactly one password source, or an unreadable password file.
    pub fn resolve(self, origin: &str) -> Result<Config, ConfigError> {
        let d = Timeouts::default();
        let policy = CachePolicy::default();
        let mut registries: Vec<HostPattern> = Vec::new();
        let mut connect_to: Vec<ConnectTo> = self.connect_to.into_iter().map(|p| p.0).collect();
        let mut upstream_tls = Vec::new();
        let mut per_registry: Vec<RegistryPolicy> = Vec::new();
        let mut proxies = Vec::new();
        for (i, r) in self.registries.into_iter().enumerate() {
            let host = r.host.0;
            if let Some(addr) = r.address {
                let Some(exact) = host.exact_host() else {
                    return Err(ConfigError::new(
                        origin,
                        format!("registry[{i}].address"),
                        format!("{host} is a wildcard; an address override needs an exact host"),
                    ));
                };
                let target = HostPort::parse(exact, host.port())
                    .map_err(|e| ConfigError::new(origin, format!("registry[{i}].host"), e))?;
                connect_to.push(ConnectTo {
                    target,
                    address: addr.0.into(),
                });
            }
            if r.upstream_ca.is_some() || r.skip_verify {
                upstream_tls.push(UpstreamTls {
                    host: host.clone(),
                    ca: r.upstream_ca,
                    skip_verify: r.skip_verify,
                });
            }
            if r.tag_ttl.is_some() || r.max_stale.is_some() {
                let Some(exact) = host.exact_host() else {
                    return Err(ConfigError::new(
                        origin,
                        format!("registry[{i}].tag_ttl"),
                        format!(
                            "{host} is a wildcard; tag_ttl and max_stale need an exact host (or use cache.tag_ttl_rules)"
                        ),
                    ));
                };
                let hp = HostPort::parse(exact, host.port())
                    .map_err(|e| ConfigError::new(origin, format!("registry[{i}].host"), e))?;
                per_registry.push(RegistryPolicy {
                    registry: canonical_registry(&hp),
                    tag_ttl: r.tag_ttl.map(|d| d.0.0),
                    max_stale: r.max_stale.map(|d| d.0.0),
                });
            }
            if let Some(choice) = r.proxy {
                proxies.push((host.clone(), choice.0));
            }
            registries.push(host);
        }
        let credentials = config::resolve_credentials(self.credentials, origin)?;
        let listener_tls = match (self.tls_cert, self.tls_key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::new(
                    origin,
                    "tls_key",
                    "tls_cert is set but tls_key is not",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    origin,
                    "tls_cert",
                    "tls_key is set but tls_cert is not",
                ));
            }
        };
        let mirror = self.mirror.resolve(origin, !credentials.is_empty())?;
        let store = self.store.resolve(origin)?;
        let tunnel_ports = self.tunnel_ports.unwrap_or_else(|| vec![443]);
        if tunnel_ports.contains(&0) {
            return Err(ConfigError::new(origin, "tunnel_ports", "0 is not a port"));
        }
        let access = AccessPolicy {
            htpasswd: self.auth_htpasswd,
            allow_clients: self.allow_clients.into_iter().map(|n| n.0.trunc()).collect(),
            insecure_open_proxy: self.insecure_open_proxy.unwrap_or(false),
            tunnel_ports,
            tunnel_allow: self.tunnel_allow.into_iter().map(|p| p.0).collect(),
        };
        let listen = self
            .listen
            .map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3128)), |p| p.0);
        let proxy_listener = self.proxy_listener.unwrap_or(true);
        if proxy_listener && let Some(why) = access.open_relay_refusal(listen) {
            return Err(ConfigError::new(origin, "listen", why));
        }
        if !proxy_listener && mirror.is_none() {
            return Err(ConfigError::new(
                origin,
                "proxy_listener",
                "the proxy listener is off and the mirror is off: nothing would listen; set --mirror-listen ADDR:PORT",
            ));
        }
        let limits = self.limits.resolve(origin)?;
        let mut tag_ttl_rules: Vec<TagTtlRule> = self.cache.tag_ttl_rules.into_iter().map(|r| r.0).collect();
        tag_ttl_rules.extend(self.cache.path_rules);
        Ok(Config {
            listen,
            proxy_listener,
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from("./data")),
            ca_dir: self.ca_dir.unwrap_or_else(|| PathBuf::from("./ca")),
            registries: Config::registries_with_defaults(&registries),
            connect_to,
            upstream_ca: self.upstream_ca,
            non_registry: self.non_registry.map(|p| p.0).unwrap_or_default(),
            timeouts: Timeouts {
                client_idle: self.timeouts.idle.map_or(d.client_idle, |v| v.0.0),
                upstream_connect: self.timeouts.connect.map_or(d.upstream_connect, |v| v.0.0),
                upstream_response: self.timeouts.response.map_or(d.upstream_response, |v| v.0.0),
            },
            cache: CachePolicy {
                tag_ttl: self.cache.tag_ttl.map_or(policy.tag_ttl, |v| v.0.0),
                tag_ttl_mode: self.cache.tag_ttl_mode.map_or(policy.tag_ttl_mode, |v| v.0),
                tag_ttl_rules,
                max_stale: self.cache.max_stale.map_or(policy.max_stale, |v| v.0.0),
                per_registry,
                public_recheck: self.cache.public_recheck.map_or(policy.public_recheck, |v| v.0.0),
                private_grace: self.cache.private_grace.map_or(policy.private_grace, |v| v.0.0),
            },
            upstream_tls,
            credentials,
            allow_push: self.allow_push.unwrap_or(true),
            upstream_skip_verify: self.upstream_skip_verify.unwrap_or(false),
            budget: CacheBudget {
                max_size: self.cache.max_size.map(|s| s.0.0),
                min_free: self.cache.min_free.map(|s| s.0.0),
                inactive: self.cache.inactive.map(|d| d.0.0),
            },
            log_format: self.log_format.map(|p| p.0).unwrap_or_default(),
            shutdown_grace: self.shutdown_timeout.map_or(Duration::from_secs(30), |d| d.0.0),
            access,
            listener_tls,
            limits,
            mirror,
            store,
            upstream_proxy: self.upstream.resolve(origin, proxies)?,
            health: self.health.resolve(origin)?,
        })
    }
}

impl LimitsLayer {
    /// Defaults filled in, and each value checked against what hyper can enforce.
    fn resolve(self, origin: &str) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let size = |v: Option<Parsed<SizeValue>>, key: &str, default: usize| -> Result<usize, ConfigError> {
            match v {
                None => Ok(default),
                Some(Parsed(SizeValue(n))) if (1024..=(16 << 20)).contains(&n) => Ok(n as usize),
                Some(Parsed(SizeValue(n))) => Err(ConfigError::new(
                    origin,
                    format!("limits.{key}"),
                    format!("{n} bytes: expected from 1KiB to 16MiB"),
                )),
            }
        };
        let count = |v: Option<usize>, key: &str, default: usize| -> Result<usize, ConfigError> {
            match v {
                Some(0) => Err(ConfigError::new(origin, format!("limits.{key}"), "expected at least 1")),
                Some(n) => Ok(n),
                None => Ok(default),
            }
        };
        Ok(Limits {
            max_connections: count(self.max_connections, "max_connections", d.max_connections)?,
            max_header_bytes: size(self.max_header_size, "max_header_size", d.max_header_bytes)?,
            max_headers: count(self.max_headers, "max_headers", d.max_headers)?,
            max_request_line: size(self.max_request_line, "max_request_line", d.max_request_line)?,
        })
    }
}

/// One line: `FILE:LINE: KEY: MESSAGE`.
fn toml_error(name: &str, text: &str, e: &toml::de::Error, path: Option<String>) -> ConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let origin = match line {
        Some(l) => format!("{name}:{l}"),
        None => name.to_string(),
    };
    let key = match path.as_deref() {
        Some(p) if !p.is_empty() && p != "." => p.to_string(),
        _ => "(syntax)".to_string(),
    };
    let message = e.message().trim().replace('\n', " ");
    ConfigError::new(origin, key, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::render;

    fn err(text: &str) -> ConfigError {
        Layer::from_toml(text, "r.toml").unwrap_err()
    }

    #[test]
    fn full_file_parses_and_resolves() {
        let text = r#"
listen = "0.0.0.0:3128"
allow_clients = ["10.0.0.0/8"]
data_dir = "/var/lib/regcache/data"
non_registry = "deny"
connect_to = ["ghcr.io=127.0.0.1:5000"]
allow_push = false
log_format = "json"

[timeouts]
connect = "3s"

[cache]
tag_ttl = "5m"
max_stale = "1d"
tag_ttl_rules = ["docker.io/library/*:latest=1m"]
max_size = "50GiB"

[[registry]]
host = "reg.internal:5000"
address = "10.0.0.5:5000"
tag_ttl = "10m"
skip_verify = true

[[credentials]]
registry = "ghcr.io"
repository = "org/*"
username = "bot"
password = "s3cret"
"#;
        let cfg = Layer::from_toml(text, "r.toml").unwrap().resolve("r.toml").unwrap();
        assert_eq!(cfg.listen, "0.0.0.0:3128".parse().unwrap());
        assert_eq!(cfg.non_registry, NonRegistryPolicy::Deny);
        assert_eq!(cfg.timeouts.upstream_connect, Duration::from_secs(3));
        assert_eq!(cfg.cache.tag_ttl, Duration::from_secs(300));
        assert_eq!(
            cfg.cache.tag_ttl("reg.internal:5000", "a", "b"),
            Duration::from_secs(600)
        );
        assert_eq!(
            cfg.cache.tag_ttl("docker.io", "library/x", "latest"),
            Duration::from_secs(60)
        );
        assert_eq!(cfg.cache.max_stale("ghcr.io"), Duration::from_secs(86_400));
        assert_eq!(cfg.budget.max_size, Some(50 << 30));
        assert!(!cfg.allow_push);
        assert_eq!(cfg.log_format, LogFormat::Json);
        assert_eq!(cfg.connect_to.len(), 2);
        assert!(cfg.is_registry(&HostPort::parse("reg.internal:5000", 443).unwrap()));
        assert!(cfg.upstream_tls[0].skip_verify);
        assert!(matches!(&cfg.credentials[0].login, config::Login::Password { password, .. } if password == "s3cret"));
        let shown = render(&cfg);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        // The rendering is itself a valid file (minus comments).
        assert!(shown.contains("tag_ttl = \"5m\""), "{shown}");
    }

    #[test]
    fn an_open_relay_is_refused() {
        let e = Layer::from_toml("listen = \"0.0.0.0:3128\"\n", "r.toml")
            .unwrap()
            .resolve("r.toml")
            .unwrap_err();
        assert_eq!(e.key, "listen");
        assert!(e.message.contains("--insecure-open-proxy"), "{e}");
        for ok in [
            "insecure_open_proxy = true",
            "allow_clients = [\"10.0.0.0/8\"]",
            "auth_htpasswd = \"/x\"",
        ] {
            let text = format!("listen = \"0.0.0.0:3128\"\n{ok}\n");
            assert!(Layer::from_toml(&text, "r").unwrap().resolve("r").is_ok(), "{ok}");
        }
    }

    #[test]
    fn limits_have_defaults_and_are_checked() {
        let cfg = Layer::default().resolve("x").unwrap();
        assert_eq!(cfg.limits, Limits::default());
        let text = "[limits]\nmax_connections = 10\nmax_header_size = \"16KiB\"\nmax_headers = 50\nmax_request_line = \"2KiB\"\n";
        let cfg = Layer::from_toml(text, "r.toml").unwrap().resolve("r.toml").unwrap();
        assert_eq!(
            cfg.limits,
            Limits {
                max_connections: 10,
                max_header_bytes: 16 * 1024,
                max_headers: 50,
                max_request_line: 2 * 1024,
            }
        );
        let shown = render(&cfg);
        assert!(shown.contains("max_connections = 10"), "{shown}");
        assert!(shown.contains("max_header_size = \"16KiB\""), "{shown}");
        for (bad, key) in [
            ("[limits]\nmax_connections = 0\n", "limits.max_connections"),
            ("[limits]\nmax_header_size = \"10\"\n", "limits.max_header_size"),
            ("[limits]\nmax_request_line = \"1GiB\"\n", "limits.max_request_line"),
        ] {
            let e = Layer::from_toml(bad, "r").unwrap().resolve("r").unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
        assert!(
            Layer::from_toml("[limits]\nmax_conns = 1\n", "r").is_err(),
            "unknown keys are refused"
        );
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = err("listen = \"127.0.0.1:3128\"\n\n[cache]\ntag_ttl = \"5x\"\n");
        assert_eq!(e.origin, "r.toml:4", "{e}");
        assert_eq!(e.key, "cache.tag_ttl", "{e}");
        assert!(e.message.contains("expected a duration"), "{e}");

        let e = err("lisen = \"x\"\n");
        assert_eq!(e.origin, "r.toml:1", "{e}");
        assert!(e.message.contains("unknown field `lisen`"), "{e}");

        let e = err("[[registry]]\nhost = \"bad host\"\n");
        assert_eq!(e.key, "registry[0].host", "{e}");
        assert_eq!(e.origin, "r.toml:2", "{e}");

        let e = err("[[registry]]\nskip_verify = true\n");
        assert!(e.message.contains("missing field `host`"), "{e}");

        let e = err("listen = [\n");
        assert_eq!(e.key, "(syntax)", "{e}");
        assert!(e.origin.starts_with("r.toml:"), "{e}");
    }

    #[test]
    fn credentials_need_one_password_source() {
        let l = Layer::from_toml(
            "[[credentials]]\nregistry = \"ghcr.io\"\nusername = \"u\"\npassword = \"p\"\npassword_env = \"X\"\n",
            "r.toml",
        )
        .unwrap();
        let e = l.resolve("r.toml").unwrap_err();
        assert_eq!(e.key, "credentials[0].password");
    }

    #[test]
    fn upper_layers_win() {
        let file = Layer::from_toml("listen = \"127.0.0.1:1\"\ndata_dir = \"/file\"\n", "f").unwrap();
        let flags = Layer {
            listen: Some(Parsed("127.0.0.1:2".parse().unwrap())),
            ..Layer::default()
        };
        let cfg = flags.over(file).resolve("x").unwrap();
        assert_eq!(cfg.listen.port(), 2);
        assert_eq!(cfg.data_dir, PathBuf::from("/file"));
    }
}
