//! The command line: clap definitions and their conversion into [`Config`].
//!
//! Every `serve` flag also reads `REGCACHE_<NAME>` from the environment; list flags take
//! comma-separated values there.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{
    self as config_file, CacheLayer, ConfigSource, DurationValue, Layer, LimitsLayer, Parsed, RegistrySection,
    SizeValue, TimeoutsLayer,
};
use crate::config::{self, Config, ConnectTo, HostPattern, LogFormat, NonRegistryPolicy, TagTtlMode, TagTtlRule};
use crate::registry::ImageRef;
use crate::registry::manifest::PlatformArg;

/// regcache: a caching HTTPS proxy for container registries.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level subcommands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per process
pub enum Command {
    /// Run the proxy.
    Serve(ServeArgs),
    /// Manage the certificate authority that signs intercepted hosts' certificates.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Check the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Fetch images into the cache ahead of time, through the same upstream code and
    /// configuration as serve (safe while serve runs on the same data directory).
    Warm(WarmArgs),
    /// Inspect, purge, verify, evict, export and import the cache on disk (safe while serve runs
    /// on the same data dir).
    #[command(subcommand)]
    Cache(CacheCommand),
}

/// Flags of `regcache serve` (and `regcache config check`).
///
/// None has a clap default: a flag or `REGCACHE_*` variable that is absent leaves the value to
/// the config file, then to the built-in default (shown in each help text).
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML config file [default: ./regcache.toml if it exists]. See regcache.example.toml.
    #[arg(long, env = "REGCACHE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address and port the proxy listens on (HTTPS_PROXY=http://ADDR:PORT) [default: 127.0.0.1:3128].
    #[arg(long, env = "REGCACHE_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,

    /// Run no forward proxy, only the registry mirror (--mirror-listen), which then also
    /// answers /metrics, /healthz, /ca.crt and the status page.
    #[arg(long, env = "REGCACHE_NO_PROXY_LISTENER")]
    pub no_proxy_listener: bool,

    /// Directory for cached content and state [default: ./data].
    #[arg(long, env = "REGCACHE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Directory with the CA (ca.crt, ca.key) [default: ./ca]. Generated there on first start
    /// if both are missing; bring your own by putting an RSA or ECDSA CA there.
    #[arg(long, env = "REGCACHE_CA_DIR", value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,

    /// File whose first line is the passphrase of an encrypted ca.key (e.g. a CA reused from
    /// rpardini/docker-registry-proxy). Without it, REGCACHE_CA_KEY_PASSPHRASE is read.
    #[arg(long, env = "REGCACHE_CA_KEY_PASSPHRASE_FILE", value_name = "FILE")]
    pub ca_key_passphrase_file: Option<PathBuf>,

    /// Extra registry host to intercept, on top of the built-in list (Docker Hub, ghcr.io,
    /// quay.io, gcr.io, *.gcr.io, *.pkg.dev, registry.k8s.io, public.ecr.aws,
    /// mcr.microsoft.com, nvcr.io, registry.gitlab.com). Port defaults to 443; `*.` wildcards.
    #[arg(
        long = "registry",
        env = "REGCACHE_REGISTRY",
        value_name = "HOST[:PORT]",
        value_delimiter = ','
    )]
    pub registries: Vec<HostPattern>,

    /// Dial ADDR:PORT whenever HOST:PORT is requested, keeping the name for TLS and Host
    /// (like curl --connect-to). For internal mirrors, air-gapped setups and tests.
    #[arg(
        long,
        env = "REGCACHE_CONNECT_TO",
        value_name = "HOST[:PORT]=ADDR:PORT",
        value_delimiter = ','
    )]
    pub connect_to: Vec<ConnectTo>,

    /// PEM bundle of extra CAs trusted for upstream registries (added to the system roots).
    #[arg(long, env = "REGCACHE_UPSTREAM_CA", value_name = "FILE", value_delimiter = ',')]
    pub upstream_ca: Vec<PathBuf>,

    /// What to do with CONNECTs to hosts that are not registries: relay them untouched, or
    /// refuse them with 403 [default: tunnel].
    #[arg(long, env = "REGCACHE_NON_REGISTRY", value_enum)]
    pub non_registry: Option<NonRegistryPolicy>,

    /// Close client connections idle for this long (also idle tunnels) [default: 5m].
    #[arg(long, env = "REGCACHE_IDLE_TIMEOUT", value_name = "DURATION", value_parser = config::parse_duration)]
    pub idle_timeout: Option<Duration>,

    /// Give up connecting (TCP + TLS) to an upstream after this long: 502 [default: 10s].
    #[arg(long, env = "REGCACHE_CONNECT_TIMEOUT", value_name = "DURATION", value_parser = config::parse_duration)]
    pub connect_timeout: Option<Duration>,

    /// How long a tag's digest is trusted before regcache revalidates it with an upstream HEAD
    /// (free on Docker Hub, unlike a GET). 0 revalidates on every pull [default: 60s].
    #[arg(long, env = "REGCACHE_TAG_TTL", value_name = "DURATION", value_parser = config::parse_duration)]
    pub tag_ttl: Option<Duration>,

    /// Whose word decides a tag's freshness: `override` (--tag-ttl and its rules alone) or
    /// `upstream-first` (upstream's Cache-Control max-age/no-cache/Expires where it sends them,
    /// and its no-store: such a tag is never kept; --tag-ttl otherwise) [default: override].
    #[arg(long, env = "REGCACHE_TAG_TTL_MODE", value_name = "MODE")]
    pub tag_ttl_mode: Option<TagTtlMode>,

    /// Per-registry/repository/tag override of --tag-ttl; the first matching rule wins.
    /// Example: docker.io/library/*:latest=5m (registry names are canonical: docker.io for Hub).
    #[arg(
        long = "tag-ttl-rule",
        env = "REGCACHE_TAG_TTL_RULE",
        value_name = "REGISTRY/REPO_GLOB[:TAG_GLOB]=DURATION",
        value_delimiter = ','
    )]
    pub tag_ttl_rules: Vec<TagTtlRule>,

    /// Serve a cached tag this long after its last successful validation when upstream is
    /// unreachable, times out, or answers 5xx or 429 [default: 7d].
    #[arg(long, env = "REGCACHE_MAX_STALE", value_name = "DURATION", value_parser = config::parse_duration)]
    pub max_stale: Option<Duration>,

    /// Give up waiting for an upstream's response headers after this long: 504 [default: 60s].
    #[arg(long, env = "REGCACHE_RESPONSE_TIMEOUT", value_name = "DURATION", value_parser = config::parse_duration)]
    pub response_timeout: Option<Duration>,

    /// Disk budget of the cache (e.g. 50GiB, 500MB, 32g): least recently used content is
    /// evicted down to 90 % of it [default: no limit].
    #[arg(long, env = "REGCACHE_MAX_SIZE", value_name = "SIZE", value_parser = config::parse_size)]
    pub max_size: Option<u64>,

    /// Free space to keep on the cache's filesystem (e.g. 5GiB): least recently used content is
    /// evicted to keep it [default: none].
    #[arg(long, env = "REGCACHE_MIN_FREE", value_name = "SIZE", value_parser = config::parse_size)]
    pub min_free: Option<u64>,

    /// Log lines as human-readable text or as one JSON object per line [default: text].
    /// Filter with RUST_LOG (e.g. RUST_LOG=info,regcache=debug).
    #[arg(long, env = "REGCACHE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// htpasswd file of bcrypt entries (`htpasswd -B`): clients must authenticate with
    /// Proxy-Authorization: Basic (HTTPS_PROXY=http://user:pass@host:3128), else 407.
    #[arg(long, env = "REGCACHE_AUTH_HTPASSWD", value_name = "FILE")]
    pub auth_htpasswd: Option<PathBuf>,

    /// Source network allowed to use the proxy (repeatable); others get 403. Default: anyone
    /// who can reach the port.
    #[arg(
        long = "allow-client",
        env = "REGCACHE_ALLOW_CLIENT",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub allow_clients: Vec<ipnet::IpNet>,

    /// Allow listening on a non-loopback address with neither --auth-htpasswd nor
    /// --allow-client (an open proxy: only behind a firewall that restricts who connects).
    #[arg(long, env = "REGCACHE_INSECURE_OPEN_PROXY")]
    pub insecure_open_proxy: bool,

    /// Port that non-registry CONNECTs may reach under --non-registry tunnel (repeatable)
    /// [default: 443].
    #[arg(
        long = "tunnel-port",
        env = "REGCACHE_TUNNEL_PORT",
        value_name = "PORT",
        value_delimiter = ','
    )]
    pub tunnel_ports: Vec<u16>,

    /// Host that non-registry CONNECTs may reach under --non-registry allowlist (repeatable).
    #[arg(
        long = "tunnel-allow",
        env = "REGCACHE_TUNNEL_ALLOW",
        value_name = "HOST[:PORT]",
        value_delimiter = ','
    )]
    pub tunnel_allow: Vec<HostPattern>,

    /// Certificate chain (PEM) for TLS on the proxy listener itself, so that credentials do not
    /// cross the network in clear (HTTPS_PROXY=https://…). With --tls-key.
    #[arg(long, env = "REGCACHE_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) for --tls-cert.
    #[arg(long, env = "REGCACHE_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// Client connections open at once, tunnels included; more are answered 503 until one
    /// closes [default: 4096]. Needs a restart to change.
    #[arg(long, env = "REGCACHE_MAX_CONNECTIONS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,

    /// On SIGTERM, wait this long for in-flight responses and downloads [default: 30s].
    #[arg(long, env = "REGCACHE_SHUTDOWN_TIMEOUT", value_name = "DURATION", value_parser = config::parse_duration)]
    pub shutdown_timeout: Option<Duration>,

    /// The registry-mirror listener.
    #[command(flatten)]
    pub mirror: super::mirror_args::MirrorArgs,

    /// Where the cache lives.
    #[command(flatten)]
    pub store: super::store_args::StoreArgs,

    /// Parent proxy and store checks.
    #[command(flatten)]
    pub upstream: super::upstream_args::UpstreamArgs,
}

/// `regcache config …`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration (file, REGCACHE_* and rpardini variables, flags) and print
    /// the effective settings, secrets redacted. Exit status 2 when it is invalid.
    Check(ServeArgs),
}

/// `regcache warm`.
#[derive(Debug, Clone, Args)]
pub struct WarmArgs {
    /// Images as docker names them: alpine (docker.io/library/alpine:latest),
    /// ghcr.io/org/app:1.2, registry.internal:5000/ci/builder@sha256:…
    #[arg(value_name = "REF")]
    pub refs: Vec<ImageRef>,

    /// File with one REF per line (blank lines and # comments are skipped).
    #[arg(long, value_name = "FILE")]
    pub from_file: Option<PathBuf>,

    /// Platform to take from multi-platform images (repeatable), or `all`
    /// [default: this machine's, e.g. linux/amd64].
    #[arg(long = "platform", value_name = "OS/ARCH[/VARIANT]|all")]
    pub platforms: Vec<PlatformArg>,

    /// serve's flags: --config, --data-dir, --connect-to, --upstream-ca, --registry, …
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// `--data-dir` of the `cache` commands.
#[derive(Debug, Clone, Args)]
pub struct DataDirArg {
    /// The data directory serve uses (the cache is DIR/cache).
    #[arg(long, env = "REGCACHE_DATA_DIR", value_name = "DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// The store, when it is not DIR/cache.
    #[command(flatten)]
    pub store: super::store_args::StoreArgs,
}

/// `regcache cache …`: each reads the store while serve may run on it; only `rm` and
/// `verify --repair` write (index tombstones, unlinked content files).
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Totals: size, content files, blobs / manifests / tags, per registry, free disk.
    Stats {
        /// `--data-dir`.
        #[command(flatten)]
        data: DataDirArg,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Cached images, one per line: REGISTRY/REPO:TAG → DIGEST  SIZE  LAST USED.
    Ls {
        /// `--data-dir`.
        #[command(flatten)]
        data: DataDirArg,
        /// Only this registry (docker.io for Docker Hub; any of its spellings).
        #[arg(long, value_name = "REGISTRY")]
        registry: Option<String>,
        /// Only repositories matching this glob (org/*, or ghcr.io/org/* with the registry).
        #[arg(long, value_name = "GLOB")]
        repo: Option<String>,
        /// Print a JSON array (the schema of GET /_regcache/cache).
        #[arg(long)]
        json: bool,
    },
    /// Remove cached images: by registry, repository, glob, tag or digest.
    ///
    /// REF is a registry (ghcr.io), repository (ghcr.io/org/app), glob (ghcr.io/org/*), tag
    /// (ghcr.io/org/app:1.2), image (ghcr.io/org/app@sha256:…) or digest (sha256:…); names
    /// without a registry are Docker Hub's (alpine:3.20). Content other cached images still use
    /// is kept, unless its digest is named. A running server notices on its next request.
    Rm {
        /// `--data-dir`.
        #[command(flatten)]
        data: DataDirArg,
        /// What to remove (repeatable).
        #[arg(value_name = "REF", required = true)]
        references: Vec<String>,
        /// Print what was removed as JSON (one object per REF, in an array).
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every blob and manifest and report corrupt ones; exit status 1 if any remain.
    Verify {
        /// `--data-dir`.
        #[command(flatten)]
        data: DataDirArg,
        /// Remove corrupt content and the index entries that lead to it (pulled again on demand).
        #[arg(long)]
        repair: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write cached images to an OCI image layout (no network), for `cache import` elsewhere.
    /// The full reference (registry included) is in each image's
    /// org.opencontainers.image.ref.name annotation.
    Export(ExportArgs),
    /// Load an OCI image layout into the cache, verifying every digest; nothing is recorded
    /// unless the whole layout is intact.
    Import(ImportArgs),
    /// Evict least recently used content down to the budget now (--max-size, --min-free,
    /// cache.inactive), remove stale temporary files, and print what was freed. Safe beside a
    /// running server: content used in the last 10 minutes (--keep-recent) is kept.
    Gc(GcArgs),
}

/// `regcache cache gc`.
#[derive(Debug, Clone, Args)]
pub struct GcArgs {
    /// Keep content used this recently: this process cannot see a running server's readers.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = config::parse_duration)]
    pub keep_recent: Duration,

    /// serve's flags: --config, --data-dir, --max-size, --min-free, …
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// `regcache cache export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// Cached images to export (tags or digests), as for `warm`.
    #[arg(value_name = "REF", required = true)]
    pub refs: Vec<ImageRef>,

    /// Directory to write the layout to (created; must be empty if it exists).
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,

    /// serve's flags: --config, --data-dir, …
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// `regcache cache import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// An OCI image layout (oci-layout, index.json, blobs/), as `cache export` writes it.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,

    /// Treat every imported repository as public (served to any client of the proxy), whatever
    /// the layout's io.regcache.public annotation says: for layouts written by other tools.
    #[arg(long)]
    pub public: bool,

    /// serve's flags: --config, --data-dir, …
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// How a one-shot command (`warm`, `cache export`, `cache import`) failed, and so its exit
/// status.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The operator's input (configuration, a reference, a path): exit status 2.
    #[error(transparent)]
    Usage(#[from] config_file::ConfigError),
    /// A failure at run time (an image that could not be fetched, a corrupt layout): exit 1.
    #[error("{0}")]
    Failed(String),
}

impl CommandError {
    /// Whether it is a usage error (exit status 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, Self::Usage(_))
    }
}

/// `--ca-dir`, shared by `serve` and `ca`.
#[derive(Debug, Args)]
pub struct CaDirArg {
    /// Directory with the CA (ca.crt, ca.key). Generated there on first start if both are
    /// missing; bring your own by putting an RSA or ECDSA CA there (PKCS#8, PKCS#1 or SEC1 PEM).
    #[arg(long, env = "REGCACHE_CA_DIR", value_name = "DIR", default_value = "./ca")]
    pub ca_dir: PathBuf,

    /// File whose first line is the passphrase of an encrypted ca.key (encrypted PKCS#8, or
    /// OpenSSL's legacy PEM encryption); `ca init` then writes an encrypted key. Without it the
    /// passphrase is read from REGCACHE_CA_KEY_PASSPHRASE. Never pass the passphrase itself.
    #[arg(long, env = "REGCACHE_CA_KEY_PASSPHRASE_FILE", value_name = "FILE")]
    pub ca_key_passphrase_file: Option<PathBuf>,
}

/// `regcache ca …`
#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Generate a new CA (ECDSA P-256, 10 years) in the CA directory.
    Init {
        /// `--ca-dir`.
        #[command(flatten)]
        ca: CaDirArg,
        /// Replace an existing CA. Clients that trusted the old one must be given the new one.
        #[arg(long)]
        force: bool,
        /// Restrict the CA to the intercepted domains (X.509 name constraints): the built-in
        /// registries plus each --permit DOMAIN. A stolen key then cannot impersonate other
        /// sites; a registry outside the list needs a new CA.
        #[arg(long)]
        name_constraints: bool,
        /// A DNS domain (and its subdomains) the constrained CA may sign for (repeatable).
        #[arg(long = "permit", value_name = "DOMAIN", requires = "name_constraints")]
        permit: Vec<String>,
    },
    /// Print the CA's subject, SHA-256 fingerprint and validity.
    Show {
        /// `--ca-dir`.
        #[command(flatten)]
        ca: CaDirArg,
    },
    /// Write the CA certificate (PEM) to FILE, or to standard output.
    Export {
        /// `--ca-dir`.
        #[command(flatten)]
        ca: CaDirArg,
        /// Destination file; standard output when omitted.
        file: Option<PathBuf>,
    },
}

impl ServeArgs {
    /// What the flags and `REGCACHE_*` variables set, as the top configuration layer.
    pub fn layer(&self) -> Layer {
        let dur = |d: Option<Duration>| d.map(|d| Parsed(DurationValue(d)));
        Layer {
            listen: self.listen.map(Parsed),
            proxy_listener: self.no_proxy_listener.then_some(false),
            data_dir: self.data_dir.clone(),
            ca_dir: self.ca_dir.clone(),
            non_registry: self.non_registry.map(Parsed),
            upstream_ca: self.upstream_ca.clone(),
            connect_to: self.connect_to.iter().cloned().map(Parsed).collect(),
            log_format: self.log_format.map(Parsed),
            shutdown_timeout: dur(self.shutdown_timeout),
            auth_htpasswd: self.auth_htpasswd.clone(),
            allow_clients: self.allow_clients.iter().copied().map(Parsed).collect(),
            // A flag can only turn it on; absent leaves it to the lower layers.
            insecure_open_proxy: self.insecure_open_proxy.then_some(true),
            tunnel_ports: (!self.tunnel_ports.is_empty()).then(|| self.tunnel_ports.clone()),
            tunnel_allow: self.tunnel_allow.iter().cloned().map(Parsed).collect(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            timeouts: TimeoutsLayer {
                idle: dur(self.idle_timeout),
                connect: dur(self.connect_timeout),
                response: dur(self.response_timeout),
            },
            limits: LimitsLayer {
                max_connections: self.max_connections.map(|n| n as usize),
                ..LimitsLayer::default()
            },
            cache: CacheLayer {
                tag_ttl: dur(self.tag_ttl),
                tag_ttl_mode: self.tag_ttl_mode.map(Parsed),
                tag_ttl_rules: self.tag_ttl_rules.iter().cloned().map(Parsed).collect(),
                max_stale: dur(self.max_stale),
                max_size: self.max_size.map(|n| Parsed(SizeValue(n))),
                min_free: self.min_free.map(|n| Parsed(SizeValue(n))),
                ..CacheLayer::default()
            },
            registries: self
                .registries
                .iter()
                .cloned()
                .map(RegistrySection::host_only)
                .collect(),
            mirror: self.mirror.layer(),
            store: self.store.layer(),
            upstream: self.upstream.layers().0,
            health: self.upstream.layers().1,
            ..Layer::default()
        }
    }

    /// Where the configuration comes from: these flags over the config file.
    pub fn source(&self) -> ConfigSource {
        ConfigSource {
            flags: self.layer(),
            file: self
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from(config_file::DEFAULT_FILE)),
            explicit: self.config.is_some(),
        }
    }

    /// The configuration from these flags alone (defaults for the rest).
    ///
    /// # Errors
    /// As [`Layer::resolve`].
    pub fn flags_config(&self) -> Result<Config, config_file::ConfigError> {
        self.layer().resolve("command line")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_defaults() {
        let cli = Cli::try_parse_from(["regcache", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve")
        };
        let cfg = args.flags_config().unwrap();
        assert_eq!(cfg.listen, "127.0.0.1:3128".parse().unwrap());
        assert_eq!(cfg.ca_dir, PathBuf::from("./ca"));
        assert_eq!(cfg.data_dir, PathBuf::from("./data"));
        assert_eq!(cfg.non_registry, NonRegistryPolicy::Tunnel);
        assert!(cfg.registries.len() >= 12);
    }

    #[test]
    fn serve_flags() {
        let cli = Cli::try_parse_from([
            "regcache",
            "serve",
            "--registry",
            "reg.local:5000",
            "--connect-to",
            "ghcr.io=127.0.0.1:5000",
            "--connect-to",
            "quay.io:443=127.0.0.1:5001",
            "--non-registry",
            "deny",
            "--connect-timeout",
            "3s",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve")
        };
        let cfg = args.flags_config().unwrap();
        assert_eq!(cfg.connect_to.len(), 2);
        assert_eq!(cfg.non_registry, NonRegistryPolicy::Deny);
        assert_eq!(cfg.timeouts.upstream_connect, Duration::from_secs(3));
        assert!(cfg.is_registry(&config::HostPort::parse("reg.local:5000", 443).unwrap()));
    }

    #[test]
    fn access_and_limit_flags_reach_the_config() {
        let cli = Cli::try_parse_from([
            "regcache",
            "serve",
            "--listen",
            "0.0.0.0:3128",
            "--auth-htpasswd",
            "/etc/regcache/htpasswd",
            "--allow-client",
            "10.0.0.0/8",
            "--tunnel-port",
            "443,8443",
            "--non-registry",
            "allowlist",
            "--tunnel-allow",
            "github.com",
            "--tls-cert",
            "/c.pem",
            "--tls-key",
            "/k.pem",
            "--max-connections",
            "10",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("expected serve")
        };
        let cfg = args.flags_config().unwrap();
        let a = &cfg.access;
        assert_eq!(
            a.htpasswd.as_deref(),
            Some(std::path::Path::new("/etc/regcache/htpasswd"))
        );
        assert_eq!(a.allow_clients, vec!["10.0.0.0/8".parse::<ipnet::IpNet>().unwrap()]);
        assert_eq!(a.tunnel_ports, vec![443, 8443]);
        assert_eq!(a.tunnel_allow.len(), 1);
        assert!(!a.insecure_open_proxy);
        assert_eq!(
            cfg.listener_tls,
            Some((PathBuf::from("/c.pem"), PathBuf::from("/k.pem")))
        );
        assert_eq!(cfg.limits.max_connections, 10);

        let open = Cli::try_parse_from(["regcache", "serve", "--listen", "0.0.0.0:3128"]).unwrap();
        let Command::Serve(args) = open.command else {
            panic!("expected serve")
        };
        assert!(args.flags_config().is_err(), "an open relay is refused");
        let open =
            Cli::try_parse_from(["regcache", "serve", "--listen", "0.0.0.0:3128", "--insecure-open-proxy"]).unwrap();
        let Command::Serve(args) = open.command else {
            panic!("expected serve")
        };
        assert!(args.flags_config().unwrap().access.insecure_open_proxy);
        assert!(Cli::try_parse_from(["regcache", "serve", "--max-connections", "0"]).is_err());
    }

    #[test]
    fn cache_commands_parse() {
        let cli = Cli::try_parse_from([
            "regcache",
            "cache",
            "ls",
            "--data-dir",
            "/d",
            "--repo",
            "org/*",
            "--json",
        ])
        .unwrap();
        let Command::Cache(CacheCommand::Ls { data, repo, json, .. }) = cli.command else {
            panic!("expected cache ls")
        };
        assert_eq!(data.data_dir, PathBuf::from("/d"));
        assert_eq!(repo.as_deref(), Some("org/*"));
        assert!(json);
        assert!(
            Cli::try_parse_from(["regcache", "cache", "rm"]).is_err(),
            "rm needs a REF"
        );
        assert!(Cli::try_parse_from(["regcache", "cache", "verify", "--repair"]).is_ok());
    }

    #[test]
    fn bad_values_are_rejected_with_the_flag_named() {
        let err = Cli::try_parse_from(["regcache", "serve", "--connect-to", "ghcr.io"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("--connect-to"), "{msg}");
        assert!(msg.contains("HOST[:PORT]=ADDR:PORT"), "{msg}");
    }
}
