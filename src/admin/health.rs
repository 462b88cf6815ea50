//! `/healthz` and the store check behind it, as the distribution registry's
//! `health.storagedriver`: every `interval` a write, a read and a delete of a small object;
//! after `threshold` failures in a row `/healthz` is `503` with the reason (pulls meanwhile
//! pass through uncached, as for any store failure), and `200` again after one success. A
//! balancer then stops sending clients to a replica whose store is gone, and only then.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{Response, StatusCode};

use crate::body::{self, Body};
use crate::cache::RegistryCache;
use crate::config::HealthPolicy;
use crate::telemetry::Metrics;

/// What the checks found so far.
#[derive(Debug, Default, Clone)]
struct CheckState {
    failures: u32,
    last_error: Option<String>,
    last_checked: Option<Instant>,
    last_took: Duration,
}

/// The store check and its latest results.
pub struct StoreCheck {
    policy: HealthPolicy,
    state: Mutex<CheckState>,
}

impl StoreCheck {
    /// A check run by `policy` (none has run yet: healthy until one fails).
    pub fn new(policy: HealthPolicy) -> Arc<Self> {
        Arc::new(Self {
            policy,
            state: Mutex::new(CheckState::default()),
        })
    }

    /// Checks the store now and then every interval, for as long as the process runs.
    pub fn spawn(self: &Arc<Self>, cache: Arc<RegistryCache>, metrics: Arc<Metrics>) {
        if !self.policy.enabled {
            return;
        }
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(me.policy.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                me.check_once(&cache, &metrics).await;
            }
        });
    }

    async fn check_once(&self, cache: &RegistryCache, metrics: &Metrics) {
        let store = cache.store().blobs();
        let started = Instant::now();
        // A store that hangs fails its check rather than stalling the next ones.
        let limit = self.policy.interval.max(Duration::from_secs(5));
        let result = match tokio::time::timeout(limit, store.probe()).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {}s", limit.as_secs())),
        };
        let mut s = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        s.last_checked = Some(Instant::now());
        s.last_took = started.elapsed();
        match result {
            Ok(()) => {
                if s.failures >= self.policy.threshold {
                    tracing::info!(store = %store.describe(), "store check passed again; /healthz is 200");
                }
                s.failures = 0;
                s.last_error = None;
            }
            Err(e) => {
                s.failures = s.failures.saturating_add(1);
                if s.failures == self.policy.threshold {
                    tracing::error!(store = %store.describe(), error = %e, failures = s.failures, "store check failed {} times in a row; /healthz is 503", s.failures);
                } else {
                    tracing::warn!(store = %store.describe(), error = %e, failures = s.failures, "store check failed");
                }
                s.last_error = Some(e);
            }
        }
        metrics.upstream.store_check_failures(s.failures);
    }

    /// `/healthz` (`verbose`: JSON of each check).
    pub fn respond(&self, cache: &RegistryCache, verbose: bool) -> Response<Body> {
        let store = cache.store().blobs().describe();
        let s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let healthy = !self.policy.enabled || s.failures < self.policy.threshold;
        let status = if healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        if verbose {
            let check = serde_json::json!({
                "name": "store",
                "store": store,
                "healthy": healthy,
                "enabled": self.policy.enabled,
                "consecutive_failures": s.failures,
                "threshold": self.policy.threshold,
                "interval_seconds": self.policy.interval.as_secs_f64(),
                "last_error": s.last_error,
                "last_checked_seconds_ago": s.last_checked.map(|t| t.elapsed().as_secs_f64()),
                "last_took_ms": s.last_took.as_millis() as u64,
            });
            let doc = serde_json::json!({
                "status": if healthy { "ok" } else { "unhealthy" },
                "checks": [check],
            });
            let mut res = body::text(status, format!("{doc:#}\n"));
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            return res;
        }
        let line = match (&s.last_error, self.policy.enabled) {
            (_, false) => format!("store {store}: not checked ([health] enabled = false)"),
            (None, true) if s.last_checked.is_none() => format!("store {store}: first check running"),
            (None, true) => format!("store {store}: reachable"),
            (Some(e), true) if healthy => format!(
                "store {store}: last check failed ({} of {} before /healthz fails): {e}; pulls pass through uncached",
                s.failures, self.policy.threshold
            ),
            (Some(e), true) => format!(
                "store {store}: {} checks in a row failed: {e}; pulls pass through uncached",
                s.failures
            ),
        };
        let head = if healthy { "ok" } else { "unhealthy" };
        body::text(status, format!("{head}\n{line}\n"))
    }
}
