//! Configuration: the plain data `serve` runs with, and where it comes from.
//!
//! Owns: [`Config`] and its parts (plain data, validated when parsed, no I/O), host names and
//! patterns as configuration spells them, the TOML file's schema ([`Layer`]), the layering of
//! sources (flags > `REGCACHE_*` > rpardini/docker-registry-proxy variables > file > defaults)
//! and the rendering of `regcache config check`.
//!
//! Must not: open sockets, touch the store, or know how a setting is used.
//!
//! May import: nothing else of the crate (it is the bottom layer).

mod health;
mod host;
mod layer;
mod limits;
mod mirror;
mod render;
mod rpardini;
mod secret;
mod settings;
mod source;
mod store;
mod upstream;

pub use health::{HealthLayer, HealthPolicy};
pub use host::{ConnectTo, HostPattern, HostPort, canonical_ip, canonical_registry};
pub use layer::{
    CacheLayer, ConfigError, DEFAULT_FILE, DurationValue, HostPortValue, Layer, LimitsLayer, Parsed, RegistrySection,
    SizeValue, TimeoutsLayer,
};
pub use limits::{HYPER_DEFAULT_MAX_HEADERS, Limits};
pub use mirror::{AcmeSettings, MirrorConfig, MirrorLayer, MirrorTls, upstream_of};
pub use render::{format_duration, render};
pub use secret::read_secret;
pub use settings::{
    AccessPolicy, CacheBudget, CachePolicy, Config, Credential, CredentialHelper, DEFAULT_REGISTRIES, GlobText,
    LogFormat, Login, NonRegistryPolicy, RegistryPolicy, TagTtlMode, TagTtlRule, Timeouts, UpstreamTls, parse_duration,
    parse_size,
};
pub use source::ConfigSource;
pub use store::{S3Config, StoreConfig, StoreLayer};
pub use upstream::{
    CredentialSection, NoProxy, ParentProxy, ProxyChoice, UpstreamLayer, UpstreamProxy, resolve_credentials,
};
