//! Flags for how `serve` reaches upstreams from a real network (`[upstream]`, `[health]`).

use clap::Args;

use crate::config::{DurationValue, HealthLayer, NoProxy, ParentProxy, Parsed, UpstreamLayer};

/// `--upstream-proxy`, `--upstream-no-proxy`, `--health-*`.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Upstream")]
pub struct UpstreamArgs {
    /// A parent proxy for every upstream connection, `http://[USER:PASS@]HOST:PORT`: registry
    /// requests and tunnels go through it with CONNECT (regcache ignores its own HTTPS_PROXY).
    #[arg(long = "upstream-proxy", env = "REGCACHE_UPSTREAM_PROXY", value_name = "URL")]
    pub upstream_proxy: Option<ParentProxy>,

    /// Hosts reached without the parent proxy, as NO_PROXY spells them: `*`, domains
    /// (`.corp.example`), IP addresses, CIDRs (`10.0.0.0/8`), comma-separated.
    #[arg(long = "upstream-no-proxy", env = "REGCACHE_UPSTREAM_NO_PROXY", value_name = "LIST")]
    pub upstream_no_proxy: Option<NoProxy>,

    /// Time between two store checks behind /healthz [default: 10s].
    #[arg(long = "health-interval", env = "REGCACHE_HEALTH_INTERVAL", value_name = "DURATION")]
    pub health_interval: Option<DurationValue>,

    /// Consecutive failed store checks after which /healthz answers 503 [default: 3].
    #[arg(long = "health-threshold", env = "REGCACHE_HEALTH_THRESHOLD", value_name = "N")]
    pub health_threshold: Option<u32>,
}

impl UpstreamArgs {
    /// What these flags set, as the `[upstream]` and `[health]` layers.
    pub fn layers(&self) -> (UpstreamLayer, HealthLayer) {
        (
            UpstreamLayer {
                proxy: self.upstream_proxy.clone().map(Parsed),
                no_proxy: self.upstream_no_proxy.clone().map(Parsed),
                ..UpstreamLayer::default()
            },
            HealthLayer {
                interval: self.health_interval.map(Parsed),
                threshold: self.health_threshold,
                ..HealthLayer::default()
            },
        )
    }
}
