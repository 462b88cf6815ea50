//! Plain-data configuration: what `serve` runs with, after the command line has been parsed.
//!
//! Nothing here does I/O. Values are validated when parsed, so a `Config` that exists is usable.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::config::{ConnectTo, HealthPolicy, HostPattern, HostPort, Limits, MirrorConfig, StoreConfig, UpstreamProxy};

/// Registry hosts intercepted (and later cached) with no configuration at all.
///
/// `auth.docker.io` is Docker Hub's token realm: intercepting it keeps a Hub pull on one
/// trust path (the regcache CA) and lets later issues run the token flow for clients.
pub const DEFAULT_REGISTRIES: &[&str] = &[
    "registry-1.docker.io",
    "auth.docker.io",
    "ghcr.io",
    "quay.io",
    "gcr.io",
    "*.gcr.io",
    "*.pkg.dev",
    "registry.k8s.io",
    "public.ecr.aws",
    "mcr.microsoft.com",
    "nvcr.io",
    "registry.gitlab.com",
];

/// Everything `regcache serve` needs to run.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address of the proxy listener.
    pub listen: SocketAddr,
    /// Whether the proxy listener runs (off: a mirror-only instance).
    pub proxy_listener: bool,
    /// Directory for cache state.
    pub data_dir: PathBuf,
    /// Directory holding `ca.crt` and `ca.key`.
    pub ca_dir: PathBuf,
    /// Hosts whose CONNECTs are intercepted (TLS terminated with a minted leaf).
    pub registries: Vec<HostPattern>,
    /// Dial overrides: the name stays (SNI, Host), only the address changes.
    pub connect_to: Vec<ConnectTo>,
    /// Extra PEM bundles trusted for upstream TLS, on top of the system roots.
    pub upstream_ca: Vec<PathBuf>,
    /// What happens to CONNECTs and plain requests for hosts that are not registries.
    pub non_registry: NonRegistryPolicy,
    /// Timeouts applied on both sides of the proxy.
    pub timeouts: Timeouts,
    /// How long tags stay fresh and how long stale content may be served.
    pub cache: CachePolicy,
    /// Per-registry upstream TLS settings (`[[registry]]` sections of the config file).
    pub upstream_tls: Vec<UpstreamTls>,
    /// Accounts regcache uses upstream when a client sends no `Authorization`.
    pub credentials: Vec<Credential>,
    /// Whether pushes (`POST`/`PUT`/`PATCH`/`DELETE` under `/v2/`) are relayed to registries.
    pub allow_push: bool,
    /// Accept any upstream certificate, for every registry (rpardini's `VERIFY_SSL=false`).
    pub upstream_skip_verify: bool,
    /// Disk budget of the cache.
    pub budget: CacheBudget,
    /// Log line format.
    pub log_format: LogFormat,
    /// How long SIGTERM waits for in-flight responses and downloads before exiting.
    pub shutdown_grace: Duration,
    /// Who may use the proxy.
    pub access: AccessPolicy,
    /// TLS on the proxy listener itself (`HTTPS_PROXY=https://…`): certificate chain and key.
    pub listener_tls: Option<(PathBuf, PathBuf)>,
    /// Bounds on client input: connections, request heads, request lines.
    pub limits: Limits,
    /// The registry-mirror listener, if one is configured.
    pub mirror: Option<MirrorConfig>,
    /// Where the cache lives.
    pub store: StoreConfig,
    /// Parent proxies for upstream connections.
    pub upstream_proxy: UpstreamProxy,
    /// The periodic store check behind `/healthz`.
    pub health: HealthPolicy,
}

/// Who may use the proxy, and where non-registry tunnels may go.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    /// htpasswd file (bcrypt entries): clients must send `Proxy-Authorization: Basic`.
    pub htpasswd: Option<PathBuf>,
    /// Source networks allowed to connect; empty = any.
    pub allow_clients: Vec<ipnet::IpNet>,
    /// Accept listening on a non-loopback address with neither authentication nor allowlist.
    pub insecure_open_proxy: bool,
    /// Ports non-registry CONNECTs may reach (`tunnel` policy).
    pub tunnel_ports: Vec<u16>,
    /// Hosts non-registry CONNECTs may reach (`allowlist` policy).
    pub tunnel_allow: Vec<HostPattern>,
}

impl AccessPolicy {
    /// Why listening on `listen` is refused, if it is: an open relay.
    pub fn open_relay_refusal(&self, listen: SocketAddr) -> Option<String> {
        let open = self.htpasswd.is_none() && self.allow_clients.is_empty();
        (open && !listen.ip().is_loopback() && !self.insecure_open_proxy).then(|| {
            format!(
                "listening on {listen} with neither --auth-htpasswd nor --allow-client would make an open proxy \
                 for anyone who can reach it; add one of them, or --insecure-open-proxy if a firewall already \
                 restricts who can connect"
            )
        })
    }
}

/// Log line format: human-readable text or one JSON object per line (for collectors).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// `tracing`'s human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("{other:?}: expected \"text\" or \"json\"")),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "text",
            Self::Json => "json",
        })
    }
}

/// How much disk the cache may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheBudget {
    /// Upper bound of the store's size in bytes.
    pub max_size: Option<u64>,
    /// Free space to keep on the store's filesystem, in bytes.
    pub min_free: Option<u64>,
    /// Content unused for this long may be evicted.
    pub inactive: Option<Duration>,
}

/// Upstream TLS trust for the registries matching `host`, on top of the global settings.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// The registries concerned.
    pub host: HostPattern,
    /// An extra CA bundle trusted for these registries only.
    pub ca: Option<PathBuf>,
    /// Accept any certificate (a lab registry with a self-signed certificate). Dangerous.
    pub skip_verify: bool,
}

/// An upstream account for one registry, optionally only for repositories matching a glob
/// (several accounts on one host).
#[derive(Debug, Clone)]
pub struct Credential {
    /// The registry host (as clients name it, e.g. `registry-1.docker.io` or `ghcr.io`).
    pub registry: HostPort,
    /// Repositories covered (`*` crosses `/`); `None` = all of the registry's.
    pub repository: Option<GlobText>,
    /// Where the user name and secret come from.
    pub login: Login,
}

/// An account's user name and secret: given, or asked of a docker credential helper.
#[derive(Clone)]
pub enum Login {
    /// A fixed user name and password (or token). Never printed (see the `Debug` impl).
    Password {
        /// User name.
        username: String,
        /// Password or token.
        password: String,
    },
    /// `docker-credential-<name>` (or a path), asked at run time.
    Helper(CredentialHelper),
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Password { username, .. } => write!(f, "Password({username:?}, <redacted>)"),
            Self::Helper(h) => write!(f, "{h:?}"),
        }
    }
}

/// A docker credential helper (the docker-credential-helpers protocol: `get` with the server
/// on stdin, `{"Username","Secret"}` on stdout), as ECR, GCR/GAR, ACR and `pass` provide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialHelper {
    /// The program: `docker-credential-<name>` from `PATH`, or the path given.
    pub program: String,
    /// How long one run may take before it is killed.
    pub timeout: Duration,
    /// How long an answer is reused when its secret carries no expiry of its own.
    pub ttl: Duration,
}

/// A compiled glob that remembers its text (for display).
#[derive(Debug, Clone)]
pub struct GlobText {
    /// The glob as written.
    pub text: String,
    matcher: globset::GlobMatcher,
}

impl GlobText {
    /// Whether `s` matches.
    pub fn is_match(&self, s: &str) -> bool {
        self.matcher.is_match(s)
    }
}

impl FromStr for GlobText {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let matcher = globset::Glob::new(s)
            .map_err(|e| format!("bad glob {s:?}: {e}"))?
            .compile_matcher();
        Ok(Self {
            text: s.to_string(),
            matcher,
        })
    }
}

/// Parses sizes such as `50GiB`, `500MB`, `32g` (nginx style: k, m, g, t are binary), or bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let expected = || format!("{s:?}: expected a size like 50GiB, 500MB, 32g or a number of bytes");
    let n: u64 = num.parse().map_err(|_| expected())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "t" | "tib" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(expected()),
    };
    n.checked_mul(mult).ok_or_else(expected)
}

/// Whose word decides how long a tag stays fresh.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TagTtlMode {
    /// regcache's `tag_ttl` rules alone (upstream's `Cache-Control` and `Expires` are ignored).
    #[default]
    Override,
    /// Upstream's own freshness (`Cache-Control: max-age`, `no-cache`, `Expires`) where it
    /// states one, and its `no-store` (the tag is not kept); `tag_ttl` rules otherwise.
    UpstreamFirst,
}

impl FromStr for TagTtlMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "override" => Ok(Self::Override),
            "upstream-first" => Ok(Self::UpstreamFirst),
            other => Err(format!("{other:?}: expected override or upstream-first")),
        }
    }
}

impl fmt::Display for TagTtlMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Override => "override",
            Self::UpstreamFirst => "upstream-first",
        })
    }
}

/// Freshness of tags: manifests and blobs by digest never change and need no policy.
#[derive(Debug, Clone)]
pub struct CachePolicy {
    /// How long a tag → digest answer is used before an upstream `HEAD` revalidates it.
    pub tag_ttl: Duration,
    /// Whether upstream's `Cache-Control`/`Expires` on a tag comes before `tag_ttl`.
    pub tag_ttl_mode: TagTtlMode,
    /// Overrides of `tag_ttl` by registry, repository glob and tag glob; the first match wins.
    pub tag_ttl_rules: Vec<TagTtlRule>,
    /// How long after its last successful validation a tag may still be served when upstream
    /// fails (unreachable, timeout, 5xx, 429).
    pub max_stale: Duration,
    /// Per-registry overrides of `tag_ttl` and `max_stale` (`[[registry]]` sections), by
    /// canonical registry name (`docker.io` for Docker Hub).
    pub per_registry: Vec<RegistryPolicy>,
    /// How often regcache checks again whether a cached repository is public.
    pub public_recheck: Duration,
    /// While upstream is unreachable, private content is served only to credentials upstream
    /// accepted within this window.
    pub private_grace: Duration,
}

/// `tag_ttl` / `max_stale` of one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryPolicy {
    /// Canonical registry name.
    pub registry: String,
    /// Replaces the global `tag_ttl` (tag rules still come first).
    pub tag_ttl: Option<Duration>,
    /// Replaces the global `max_stale`.
    pub max_stale: Option<Duration>,
}

impl Default for CachePolicy {
    fn default() -> Self {
        Self {
            tag_ttl: Duration::from_secs(60),
            tag_ttl_mode: TagTtlMode::Override,
            tag_ttl_rules: Vec::new(),
            max_stale: Duration::from_secs(7 * 86_400),
            per_registry: Vec::new(),
            public_recheck: Duration::from_secs(3600),
            private_grace: Duration::from_secs(3600),
        }
    }
}

impl CachePolicy {
    /// The revalidation interval for one tag: the first matching rule, else the registry's
    /// own, else the global one.
    pub fn tag_ttl(&self, registry: &str, repository: &str, tag: &str) -> Duration {
        self.tag_ttl_rules
            .iter()
            .find(|r| r.matches(registry, repository, tag))
            .map(|r| r.ttl)
            .or_else(|| self.registry(registry).and_then(|p| p.tag_ttl))
            .unwrap_or(self.tag_ttl)
    }

    /// How long a tag's answer stays fresh: what upstream said of it (`upstream`, when it
    /// said anything) under [`TagTtlMode::UpstreamFirst`], else [`CachePolicy::tag_ttl`].
    pub fn tag_freshness(&self, registry: &str, repository: &str, tag: &str, upstream: Option<Duration>) -> Duration {
        match (self.tag_ttl_mode, upstream) {
            (TagTtlMode::UpstreamFirst, Some(ttl)) => ttl,
            _ => self.tag_ttl(registry, repository, tag),
        }
    }

    /// Whether upstream has the first word on tags: its `no-store` obeyed (the tag is never
    /// kept), its `ETag` sent back when revalidating.
    pub fn upstream_first(&self) -> bool {
        self.tag_ttl_mode == TagTtlMode::UpstreamFirst
    }

    /// How long a tag of `registry` may be served stale.
    pub fn max_stale(&self, registry: &str) -> Duration {
        self.registry(registry)
            .and_then(|p| p.max_stale)
            .unwrap_or(self.max_stale)
    }

    fn registry(&self, registry: &str) -> Option<&RegistryPolicy> {
        self.per_registry.iter().find(|p| p.registry == registry)
    }
}

/// `REGISTRY/REPO_GLOB[:TAG_GLOB]=DURATION`, e.g. `docker.io/library/*:latest=5m` or
/// `ghcr.io/org/**=0`. `*` matches across `/` too. Registry names are canonical (`docker.io`
/// for Docker Hub, `host:port` when the port is not 443).
///
/// rpardini/docker-registry-proxy's `MANIFEST_CACHE_*_REGEX` become [`TagTtlRule::path_regex`]
/// rules instead: a regular expression searched in the request path
/// `/v2/<repository>/manifests/<tag>`, as nginx matched its `$uri`.
#[derive(Debug, Clone)]
pub struct TagTtlRule {
    matcher: RuleMatcher,
    text: String,
    /// The interval for matching tags.
    pub ttl: Duration,
}

#[derive(Debug, Clone)]
enum RuleMatcher {
    Glob {
        registry: String,
        repository: globset::GlobMatcher,
        tag: Option<globset::GlobMatcher>,
    },
    PathRegex(regex::Regex),
}

impl TagTtlRule {
    /// A rule matching tags whose manifest path `/v2/<repository>/manifests/<tag>` contains a
    /// match of `pattern`.
    pub fn path_regex(pattern: &str, ttl: Duration) -> Result<Self, String> {
        let re = regex::Regex::new(pattern).map_err(|e| format!("{pattern:?}: not a regular expression: {e}"))?;
        Ok(Self {
            matcher: RuleMatcher::PathRegex(re),
            text: format!("path ~ {pattern}"),
            ttl,
        })
    }

    fn matches(&self, registry: &str, repository: &str, tag: &str) -> bool {
        match &self.matcher {
            RuleMatcher::Glob {
                registry: r,
                repository: repo,
                tag: t,
            } => r == registry && repo.is_match(repository) && t.as_ref().is_none_or(|t| t.is_match(tag)),
            RuleMatcher::PathRegex(re) => re.is_match(&format!("/v2/{repository}/manifests/{tag}")),
        }
    }
}

impl fmt::Display for TagTtlRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for TagTtlRule {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let expected = "expected REGISTRY/REPO_GLOB[:TAG_GLOB]=DURATION, e.g. docker.io/library/*:latest=5m";
        let (pattern, ttl) = s.rsplit_once('=').ok_or_else(|| format!("{s:?}: {expected}"))?;
        let ttl = parse_duration(ttl)?;
        let (registry, rest) = pattern.split_once('/').ok_or_else(|| format!("{s:?}: {expected}"))?;
        let (repo, tag) = match rest.rsplit_once(':') {
            Some((r, t)) => (r, Some(t)),
            None => (rest, None),
        };
        let glob = |g: &str| {
            globset::Glob::new(g)
                .map(|g| g.compile_matcher())
                .map_err(|e| format!("{s:?}: bad glob {g:?}: {e}"))
        };
        if registry.is_empty() || repo.is_empty() {
            return Err(format!("{s:?}: {expected}"));
        }
        Ok(Self {
            matcher: RuleMatcher::Glob {
                registry: registry.to_ascii_lowercase(),
                repository: glob(repo)?,
                tag: tag.map(glob).transpose()?,
            },
            text: s.trim().to_string(),
            ttl,
        })
    }
}

/// Timeouts; each bounds one wait so that no connection hangs forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A client connection that sends no request (or no bytes, in a tunnel) for this long is closed.
    pub client_idle: Duration,
    /// TCP connect (and, for intercepted hosts, TLS handshake) to upstream.
    pub upstream_connect: Duration,
    /// From sending a request upstream to receiving its response headers.
    pub upstream_response: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            client_idle: Duration::from_secs(300),
            upstream_connect: Duration::from_secs(10),
            upstream_response: Duration::from_secs(60),
        }
    }
}

/// Policy for hosts outside the registry list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum NonRegistryPolicy {
    /// Relay bytes untouched (CONNECT) or forward as-is (plain HTTP).
    #[default]
    Tunnel,
    /// Refuse with 403.
    Deny,
    /// Relay only to the hosts in `tunnel_allow`; refuse the rest with 403.
    Allowlist,
}

impl FromStr for NonRegistryPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tunnel" => Ok(Self::Tunnel),
            "deny" => Ok(Self::Deny),
            "allowlist" => Ok(Self::Allowlist),
            other => Err(format!("{other:?}: expected \"tunnel\", \"deny\" or \"allowlist\"")),
        }
    }
}

impl fmt::Display for NonRegistryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tunnel => "tunnel",
            Self::Deny => "deny",
            Self::Allowlist => "allowlist",
        })
    }
}

/// Parses durations such as `500ms`, `30s`, `5m`, `1h`, `7d` (a bare number means seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration like 500ms, 30s, 5m, 1h or 7d"))?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => None,
    }
    .ok_or_else(|| format!("{s:?}: expected a duration like 500ms, 30s, 5m, 1h or 7d"))?;
    Ok(Duration::from_millis(ms))
}

impl Config {
    /// Registry patterns used when none are configured, plus `extra`.
    pub fn registries_with_defaults(extra: &[HostPattern]) -> Vec<HostPattern> {
        let mut all: Vec<HostPattern> = DEFAULT_REGISTRIES
            .iter()
            .map(|s| s.parse().expect("built-in registry patterns are valid"))
            .collect();
        for p in extra {
            if !all.contains(p) {
                all.push(p.clone());
            }
        }
        all
    }

    /// Whether CONNECTs to `target` are intercepted.
    pub fn is_registry(&self, target: &HostPort) -> bool {
        self.registries.iter().any(|p| p.matches(target))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> HostPort {
        HostPort::parse(s, 443).unwrap()
    }

    #[test]
    fn host_port_parsing() {
        assert_eq!(
            hp("GHCR.io"),
            HostPort {
                host: "ghcr.io".into(),
                port: 443
            }
        );
        assert_eq!(hp("reg.local:5000").port, 5000);
        assert_eq!(
            hp("[::1]:8443"),
            HostPort {
                host: "::1".into(),
                port: 8443
            }
        );
        assert_eq!(hp("10.0.0.1").host, "10.0.0.1");
        assert!(HostPort::parse("ghcr.io:0", 443).is_err());
        assert!(HostPort::parse("ghcr.io:x", 443).is_err());
        assert!(HostPort::parse("bad host", 443).is_err());
        assert!(HostPort::parse("", 443).is_err());
        assert_eq!(hp("[::1]:8443").to_string(), "[::1]:8443");
        assert_eq!(hp("ghcr.io").authority(443), "ghcr.io");
        assert_eq!(hp("ghcr.io:5000").authority(443), "ghcr.io:5000");
    }

    #[test]
    fn patterns_match_host_and_port() {
        let exact: HostPattern = "ghcr.io".parse().unwrap();
        assert!(exact.matches(&hp("ghcr.io:443")));
        assert!(!exact.matches(&hp("ghcr.io:5000")));
        assert!(!exact.matches(&hp("x.ghcr.io")));

        let on_5000: HostPattern = "reg.internal:5000".parse().unwrap();
        assert!(on_5000.matches(&hp("reg.internal:5000")));
        assert!(!on_5000.matches(&hp("reg.internal")));

        let wild: HostPattern = "*.gcr.io".parse().unwrap();
        assert!(wild.matches(&hp("eu.gcr.io")));
        assert!(wild.matches(&hp("a.b.gcr.io")));
        assert!(!wild.matches(&hp("gcr.io")));
        assert!(!wild.matches(&hp("evilgcr.io")));
        assert!(!wild.matches(&hp("eu.gcr.io:8443")));
        assert!("*.".parse::<HostPattern>().is_err());
        assert_eq!(exact.exact_host(), Some("ghcr.io"));
        assert_eq!(wild.exact_host(), None);
    }

    #[test]
    fn defaults_cover_the_big_registries() {
        let all = Config::registries_with_defaults(&["reg.local:5000".parse().unwrap()]);
        let is = |s: &str| all.iter().any(|p| p.matches(&hp(s)));
        for h in [
            "registry-1.docker.io",
            "auth.docker.io",
            "ghcr.io",
            "us-docker.pkg.dev",
            "eu.gcr.io",
            "reg.local:5000",
        ] {
            assert!(is(h), "{h} should be a registry");
        }
        assert!(!is("example.com"));
        assert!(!is("ghcr.io:8443"));
    }

    #[test]
    fn connect_to_parsing() {
        let c: ConnectTo = "ghcr.io=127.0.0.1:5000".parse().unwrap();
        assert_eq!(c.target, hp("ghcr.io:443"));
        assert_eq!(c.address.to_string(), "127.0.0.1:5000");
        let c: ConnectTo = "reg:8443=[::1]:9".parse().unwrap();
        assert_eq!(c.target.port, 8443);
        assert!("ghcr.io".parse::<ConnectTo>().is_err());
        // A name is resolved when dialled (an internal load balancer); a port is required.
        let c: ConnectTo = "ghcr.io=lb.internal:5000".parse().unwrap();
        assert_eq!(c.address, hp("lb.internal:5000"));
        assert!("ghcr.io=lb.internal".parse::<ConnectTo>().is_err());
        assert!("ghcr.io=bad host:1".parse::<ConnectTo>().is_err());
    }

    #[test]
    fn tag_ttl_rules() {
        let policy = CachePolicy {
            tag_ttl: Duration::from_secs(60),
            tag_ttl_rules: vec![
                "docker.io/library/*:latest=5m".parse().unwrap(),
                "ghcr.io/org/*=0".parse().unwrap(),
                "reg.local:5000/ci/**:pr-*=1s".parse().unwrap(),
            ],
            max_stale: Duration::from_secs(1),
            ..CachePolicy::default()
        };
        assert_eq!(
            policy.tag_ttl("docker.io", "library/alpine", "latest"),
            Duration::from_secs(300)
        );
        assert_eq!(
            policy.tag_ttl("docker.io", "library/alpine", "3.20"),
            Duration::from_secs(60)
        );
        assert_eq!(policy.tag_ttl("ghcr.io", "org/team/app", "v1"), Duration::ZERO);
        assert_eq!(policy.tag_ttl("ghcr.io", "other/app", "v1"), Duration::from_secs(60));
        assert_eq!(
            policy.tag_ttl("reg.local:5000", "ci/a/b", "pr-12"),
            Duration::from_secs(1)
        );
        assert!("docker.io=5m".parse::<TagTtlRule>().is_err());
        assert!("docker.io/x=soon".parse::<TagTtlRule>().is_err());
        assert!("docker.io/[=1s".parse::<TagTtlRule>().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86_400));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }
}
