//! Hosts as configuration names them: `HOST[:PORT]`, host patterns (`*.example.com`), address
//! overrides (`HOST=ADDR:PORT`), and the canonical names cache keys use for registries and IPs.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

/// A host, with a port that defaults to 443.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Lower-case host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl HostPort {
    /// Parses `HOST`, `HOST:PORT`, `[V6]` or `[V6]:PORT`; `default_port` fills a missing port.
    pub fn parse(s: &str, default_port: u16) -> Result<Self, String> {
        let s = s.trim();
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, after) = rest
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: missing ']' after IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("{s:?}: expected ':PORT' after ']'"))?,
                ),
            };
            (v6, port)
        } else {
            match s.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{s:?}: port {p:?} is not a number from 1 to 65535"))?,
            None => default_port,
        };
        let host = normalize_host(host).ok_or_else(|| format!("{s:?}: {host:?} is not a valid host name"))?;
        Ok(Self { host, port })
    }

    /// The authority as it appears in a URI: the port is omitted when it is `default_port`.
    pub fn authority(&self, default_port: u16) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default_port {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Lower-cases a host and checks it is a DNS name or an IP literal; strips one trailing dot.
fn normalize_host(host: &str) -> Option<String> {
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if host.parse::<IpAddr>().is_ok() {
        return Some(host);
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (!host.is_empty() && host.len() <= 253 && host.split('.').all(label_ok)).then_some(host)
}

/// A registry host pattern: an exact name or `*.suffix`, with a port (443 when omitted).
///
/// `*.gcr.io` matches `eu.gcr.io` and `a.b.gcr.io`, not `gcr.io` itself (as in TLS wildcards
/// but across any number of labels, which is what registry mirrors like `*.pkg.dev` need).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Exact host, or the suffix (with its leading dot) for a wildcard.
    host: String,
    wildcard: bool,
    port: u16,
}

impl HostPattern {
    /// The host name, if this pattern names exactly one host (not a wildcard).
    pub fn exact_host(&self) -> Option<&str> {
        (!self.wildcard).then_some(self.host.as_str())
    }

    /// Whether `host` is covered by this pattern, whatever the port (TLS server names carry none).
    pub fn matches_host(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        if self.wildcard {
            host.ends_with(&self.host) && host.len() > self.host.len()
        } else {
            host == self.host
        }
    }

    /// Whether `target` is covered by this pattern.
    pub fn matches(&self, target: &HostPort) -> bool {
        if target.port != self.port {
            return false;
        }
        if self.wildcard {
            target.host.ends_with(&self.host) && target.host.len() > self.host.len()
        } else {
            target.host == self.host
        }
    }
}

impl FromStr for HostPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (wildcard, rest) = match s.trim().strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let hp = HostPort::parse(rest, 443).map_err(|e| format!("expected HOST[:PORT] or *.DOMAIN[:PORT]: {e}"))?;
        let host = if wildcard { format!(".{}", hp.host) } else { hp.host };
        Ok(Self {
            host,
            wildcard,
            port: hp.port,
        })
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let star = if self.wildcard { "*" } else { "" };
        write!(f, "{star}{}:{}", self.host, self.port)
    }
}

impl HostPattern {
    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pattern for exactly `host`.
    pub fn exact(host: &HostPort) -> Self {
        Self {
            host: host.host.clone(),
            wildcard: false,
            port: host.port,
        }
    }
}

/// `HOST[:PORT]=ADDR:PORT`: dial `ADDR:PORT` whenever `HOST:PORT` is the target (like curl's
/// `--connect-to`). The name is kept for SNI, certificate checks and the `Host` header. `ADDR`
/// may be a host name (an internal load balancer): it is resolved as the system resolves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectTo {
    /// The target as clients name it.
    pub target: HostPort,
    /// Where regcache actually connects: an IP address or a name, and a port.
    pub address: HostPort,
}

impl ConnectTo {
    /// The address `overrides` say to dial for `target`, if any.
    pub fn lookup<'a>(overrides: &'a [ConnectTo], target: &HostPort) -> Option<&'a HostPort> {
        overrides.iter().find(|c| c.target == *target).map(|c| &c.address)
    }
}

impl fmt::Display for ConnectTo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.target, self.address)
    }
}

impl FromStr for ConnectTo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (target, address) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected HOST[:PORT]=ADDR:PORT"))?;
        let target = HostPort::parse(target, 443)?;
        let address = match address.trim().parse::<SocketAddr>() {
            Ok(a) => HostPort::from(a),
            Err(_) => HostPort::parse(address, 0)
                .ok()
                .filter(|hp| hp.port != 0)
                .ok_or_else(|| {
                    format!(
                        "{s:?}: {address:?} is not ADDR:PORT (an IP address or host name and a port, e.g. 127.0.0.1:5000)"
                    )
                })?,
        };
        Ok(Self { target, address })
    }
}

impl From<SocketAddr> for HostPort {
    fn from(a: SocketAddr) -> Self {
        Self {
            host: canonical_ip(a.ip()).to_string(),
            port: a.port(),
        }
    }
}

/// The registry name cache keys use: Docker Hub's aliases are one registry, `docker.io`;
/// other hosts keep their port when it is not 443.
pub fn canonical_registry(host: &HostPort) -> String {
    match host.host.as_str() {
        "registry-1.docker.io" | "index.docker.io" | "docker.io" | "registry.hub.docker.com" if host.port == 443 => {
            "docker.io".to_string()
        }
        _ => host.authority(443),
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) as the IPv4 address they are.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}
