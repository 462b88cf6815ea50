//! The command line: clap definitions and their conversion into [`Config`].
//!
//! Every `serve` flag also reads `REGCACHE_<NAME>` from the environment; list flags take
//! comma-separated values there.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, CachePolicy, Config, ConnectTo, HostPattern, NonRegistryPolicy, TagTtlRule, Timeouts};

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
}

/// Flags of `regcache serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port the proxy listens on (HTTPS_PROXY=http://ADDR:PORT).
    #[arg(
        long,
        env = "REGCACHE_LISTEN",
        value_name = "ADDR:PORT",
        default_value = "127.0.0.1:3128"
    )]
    pub listen: SocketAddr,

    /// Directory for cached content and state.
    #[arg(long, env = "REGCACHE_DATA_DIR", value_name = "DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// `--ca-dir`.
    #[command(flatten)]
    pub ca: CaDirArg,

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
    /// refuse them with 403.
    #[arg(long, env = "REGCACHE_NON_REGISTRY", value_enum, default_value_t = NonRegistryPolicy::Tunnel)]
    pub non_registry: NonRegistryPolicy,

    /// Close client connections idle for this long (also idle tunnels).
    #[arg(long, env = "REGCACHE_IDLE_TIMEOUT", value_name = "DURATION", default_value = "5m", value_parser = config::parse_duration)]
    pub idle_timeout: Duration,

    /// Give up connecting (TCP + TLS) to an upstream after this long: 502.
    #[arg(long, env = "REGCACHE_CONNECT_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = config::parse_duration)]
    pub connect_timeout: Duration,

    /// How long a tag's digest is trusted before regcache revalidates it with an upstream HEAD
    /// (free on Docker Hub, unlike a GET). 0 revalidates on every pull.
    #[arg(long, env = "REGCACHE_TAG_TTL", value_name = "DURATION", default_value = "60s", value_parser = config::parse_duration)]
    pub tag_ttl: Duration,

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
    /// unreachable, times out, or answers 5xx or 429.
    #[arg(long, env = "REGCACHE_MAX_STALE", value_name = "DURATION", default_value = "7d", value_parser = config::parse_duration)]
    pub max_stale: Duration,

    /// Give up waiting for an upstream's response headers after this long: 504.
    #[arg(long, env = "REGCACHE_RESPONSE_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = config::parse_duration)]
    pub response_timeout: Duration,
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
    /// The plain configuration these flags describe.
    pub fn into_config(self) -> Config {
        Config {
            listen: self.listen,
            data_dir: self.data_dir,
            ca_dir: self.ca.ca_dir,
            registries: Config::registries_with_defaults(&self.registries),
            connect_to: self.connect_to,
            upstream_ca: self.upstream_ca,
            non_registry: self.non_registry,
            timeouts: Timeouts {
                client_idle: self.idle_timeout,
                upstream_connect: self.connect_timeout,
                upstream_response: self.response_timeout,
            },
            cache: CachePolicy {
                tag_ttl: self.tag_ttl,
                tag_ttl_rules: self.tag_ttl_rules,
                max_stale: self.max_stale,
            },
        }
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
        let cfg = args.into_config();
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
        let cfg = args.into_config();
        assert_eq!(cfg.connect_to.len(), 2);
        assert_eq!(cfg.non_registry, NonRegistryPolicy::Deny);
        assert_eq!(cfg.timeouts.upstream_connect, Duration::from_secs(3));
        assert!(cfg.is_registry(&config::HostPort::parse("reg.local:5000", 443).unwrap()));
    }

    #[test]
    fn bad_values_are_rejected_with_the_flag_named() {
        let err = Cli::try_parse_from(["regcache", "serve", "--connect-to", "ghcr.io"]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("--connect-to"), "{msg}");
        assert!(msg.contains("HOST[:PORT]=ADDR:PORT"), "{msg}");
    }
}
