//! Flags of the registry-mirror listener (`--mirror-*`, `--acme-*`), flattened into
//! `serve`'s flags under their own help heading.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::config::{DurationValue, MirrorLayer, Parsed};

/// Flags of the registry-mirror listener (`[mirror]` in the config file).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Registry mirror")]
pub struct MirrorArgs {
    /// Also serve the registry API at /v2/ on ADDR:PORT, as a mirror for dockerd
    /// (registry-mirrors), containerd (hosts.toml), podman and k3s [default: off].
    #[arg(long = "mirror-listen", env = "REGCACHE_MIRROR_LISTEN", value_name = "ADDR:PORT")]
    pub mirror_listen: Option<SocketAddr>,

    /// Name clients reach the mirror by; its certificate is minted from regcache's CA for
    /// these names (repeatable).
    #[arg(
        long = "mirror-name",
        env = "REGCACHE_MIRROR_NAME",
        value_name = "NAME",
        value_delimiter = ','
    )]
    pub mirror_names: Vec<String>,

    /// Certificate chain (PEM) for the mirror instead of one from regcache's CA; re-read on
    /// SIGHUP. With --mirror-tls-key.
    #[arg(long = "mirror-tls-cert", env = "REGCACHE_MIRROR_TLS_CERT", value_name = "FILE")]
    pub mirror_tls_cert: Option<PathBuf>,

    /// Private key (PEM) for --mirror-tls-cert.
    #[arg(long = "mirror-tls-key", env = "REGCACHE_MIRROR_TLS_KEY", value_name = "FILE")]
    pub mirror_tls_key: Option<PathBuf>,

    /// Serve the mirror over plain HTTP (dockerd `insecure-registries`, a lab only).
    #[arg(long = "mirror-insecure-http", env = "REGCACHE_MIRROR_INSECURE_HTTP")]
    pub mirror_insecure_http: bool,

    /// Registry for requests that name none (dockerd's mirrors are Docker Hub's)
    /// [default: docker.io].
    #[arg(
        long = "mirror-default-registry",
        env = "REGCACHE_MIRROR_DEFAULT_REGISTRY",
        value_name = "REGISTRY"
    )]
    pub mirror_default_registry: Option<String>,

    /// htpasswd file (bcrypt entries, `htpasswd -B`): mirror clients log in (`docker login`).
    /// Required when upstream accounts are configured.
    #[arg(long = "mirror-htpasswd", env = "REGCACHE_MIRROR_HTPASSWD", value_name = "FILE")]
    pub mirror_htpasswd: Option<PathBuf>,

    /// Obtain the mirror's certificate for its --mirror-name names from this ACME CA
    /// (TLS-ALPN-01 on the mirror listener, so the CA must reach it on the names' port 443);
    /// kept under the data dir and renewed with no restart.
    #[arg(long = "acme-directory", env = "REGCACHE_ACME_DIRECTORY", value_name = "URL")]
    pub acme_directory: Option<String>,

    /// Contact address given to the ACME CA (expiry notices).
    #[arg(long = "acme-email", env = "REGCACHE_ACME_EMAIL", value_name = "EMAIL")]
    pub acme_email: Option<String>,

    /// PEM root trusted for the ACME directory's own HTTPS (a private CA such as step-ca)
    /// instead of the system's roots.
    #[arg(long = "acme-ca-cert", env = "REGCACHE_ACME_CA_CERT", value_name = "FILE")]
    pub acme_ca_cert: Option<PathBuf>,

    /// Renew the ACME certificate this long before it expires (at most a third of its
    /// lifetime) [default: 30d].
    #[arg(
        long = "acme-renew-before",
        env = "REGCACHE_ACME_RENEW_BEFORE",
        value_name = "DURATION"
    )]
    pub acme_renew_before: Option<DurationValue>,
}

impl MirrorArgs {
    pub(super) fn layer(&self) -> MirrorLayer {
        MirrorLayer {
            listen: self.mirror_listen.map(Parsed),
            names: self.mirror_names.clone(),
            tls_cert: self.mirror_tls_cert.clone(),
            tls_key: self.mirror_tls_key.clone(),
            insecure_http: self.mirror_insecure_http.then_some(true),
            default_registry: self.mirror_default_registry.clone(),
            auth_htpasswd: self.mirror_htpasswd.clone(),
            acme_directory: self.acme_directory.clone(),
            acme_email: self.acme_email.clone(),
            acme_ca_cert: self.acme_ca_cert.clone(),
            acme_renew_before: self.acme_renew_before.map(Parsed),
        }
    }
}
