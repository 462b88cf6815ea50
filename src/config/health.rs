//! `[health]`: the periodic store check behind `/healthz`, as the distribution registry's
//! `health.storagedriver {enabled, interval, threshold}`.

use std::time::Duration;

use serde::Deserialize;

use crate::config::{ConfigError, DurationValue, Parsed};

/// How the store is checked for `/healthz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Whether the store is checked at all (off: `/healthz` is always 200).
    pub enabled: bool,
    /// Time between two checks (a write, a read and a delete of a small object).
    pub interval: Duration,
    /// Consecutive failed checks after which `/healthz` answers 503.
    pub threshold: u32,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(10),
            threshold: 3,
        }
    }
}

/// `[health]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthLayer {
    /// `enabled = false` turns the store check off.
    pub enabled: Option<bool>,
    /// `interval = "10s"`
    pub interval: Option<Parsed<DurationValue>>,
    /// `threshold = 3`
    pub threshold: Option<u32>,
}

impl HealthLayer {
    /// `self` over `lower`.
    pub fn over(self, lower: Self) -> Self {
        Self {
            enabled: self.enabled.or(lower.enabled),
            interval: self.interval.or(lower.interval),
            threshold: self.threshold.or(lower.threshold),
        }
    }

    /// Defaults filled in and checked.
    ///
    /// # Errors
    /// A zero interval or threshold.
    pub fn resolve(self, origin: &str) -> Result<HealthPolicy, ConfigError> {
        let d = HealthPolicy::default();
        let interval = self.interval.map_or(d.interval, |v| v.0.0);
        if interval.is_zero() {
            return Err(ConfigError::new(
                origin,
                "health.interval",
                "expected a duration above 0, e.g. \"10s\"",
            ));
        }
        let threshold = self.threshold.unwrap_or(d.threshold);
        if threshold == 0 {
            return Err(ConfigError::new(origin, "health.threshold", "expected at least 1"));
        }
        Ok(HealthPolicy {
            enabled: self.enabled.unwrap_or(d.enabled),
            interval,
            threshold,
        })
    }
}
