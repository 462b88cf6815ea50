//! Counters of a shared store: requests to the bucket by operation and result, and how each
//! fleet download lease ended for this replica.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    op: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabels {
    outcome: &'static str,
}

/// How a fleet download lease ended for this replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// It claimed the blob and downloaded it.
    Won,
    /// Another replica held it; this one served that replica's commit.
    Followed,
    /// Another replica held it; this one streamed the blob from it while it downloaded.
    Streamed,
    /// The holder stopped renewing it (died mid-blob); this one took over and downloaded.
    TakenOver,
}

impl LeaseOutcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Won => "won",
            Self::Followed => "followed",
            Self::Streamed => "streamed",
            Self::TakenOver => "taken_over",
        }
    }
}

/// The store's counter families.
#[derive(Debug, Clone, Default)]
pub struct StoreMetrics {
    requests: Family<RequestLabels, Counter>,
    leases: Family<LeaseLabels, Counter>,
}

impl StoreMetrics {
    /// Registers the families in `r`.
    pub fn register(r: &mut Registry) -> Self {
        let me = Self::default();
        r.register(
            "store_requests",
            "Requests to the shared store (S3) by operation and result (error: failed, not a miss)",
            me.requests.clone(),
        );
        r.register(
            "fleet_leases",
            "Fleet download leases by outcome: won (downloaded), followed (served another replica's commit), streamed (streamed from the downloading replica), taken_over (its holder died)",
            me.leases.clone(),
        );
        for outcome in [
            LeaseOutcome::Won,
            LeaseOutcome::Followed,
            LeaseOutcome::Streamed,
            LeaseOutcome::TakenOver,
        ] {
            let _ = me.leases.get_or_create(&LeaseLabels {
                outcome: outcome.as_str(),
            });
        }
        me
    }

    /// One request to the store.
    pub fn request(&self, op: &'static str, ok: bool) {
        self.requests
            .get_or_create(&RequestLabels {
                op,
                result: if ok { "ok" } else { "error" },
            })
            .inc();
    }

    /// How a lease ended.
    pub fn lease(&self, outcome: LeaseOutcome) {
        self.leases
            .get_or_create(&LeaseLabels {
                outcome: outcome.as_str(),
            })
            .inc();
    }
}
