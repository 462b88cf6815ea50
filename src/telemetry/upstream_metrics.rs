//! Counters of how regcache reaches upstreams: TCP connections opened by route and result
//! (a pooled connection serves many requests, so this shows reuse and a parent proxy's load),
//! and the store check behind `/healthz`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    route: &'static str,
    result: &'static str,
}

/// How an upstream connection is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Resolved and dialled directly.
    Direct,
    /// To a `--connect-to` address.
    ConnectTo,
    /// Through a parent proxy's `CONNECT`.
    Parent,
}

impl Route {
    fn as_str(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::ConnectTo => "connect_to",
            Self::Parent => "parent",
        }
    }
}

/// The families.
#[derive(Debug, Clone, Default)]
pub struct UpstreamMetrics {
    connections: Family<ConnectionLabels, Counter>,
    store_check_failures: Gauge,
}

impl UpstreamMetrics {
    /// Registers the families in `r`.
    pub fn register(r: &mut Registry) -> Self {
        let me = Self::default();
        r.register(
            "upstream_connections",
            "TCP connections opened to upstreams, by route (direct, connect_to, parent) and result",
            me.connections.clone(),
        );
        r.register(
            "store_check_failures",
            "Consecutive failed store checks (write, read, delete of a small object); /healthz is 503 from [health] threshold on",
            me.store_check_failures.clone(),
        );
        me
    }

    /// One connection attempt by `route`.
    pub fn connection(&self, route: Route, ok: bool) {
        self.connections
            .get_or_create(&ConnectionLabels {
                route: route.as_str(),
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// The store check's current run of failures.
    pub fn store_check_failures(&self, n: u32) {
        self.store_check_failures.set(i64::from(n));
    }
}
