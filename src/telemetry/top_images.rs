//! The most requested repositories, in bounded memory, for the status page.
//!
//! Counting every repository ever seen would let a client grow memory without bound (each
//! distinct name is a new entry), so this keeps at most `capacity` entries with the
//! *space-saving* algorithm (Metwally et al., 2005): when the table is full, a new name takes
//! the place of the least requested one and inherits its count plus one. Names that are
//! really among the most requested are never displaced; a newcomer's count may be
//! over-estimated by at most what it inherited, which `ImageCount::overestimate` reports.

use std::collections::HashMap;
use std::sync::Mutex;

/// How often one repository was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageCount {
    /// Canonical registry (`docker.io`, `ghcr.io`, …).
    pub registry: String,
    /// Canonical repository (`library/alpine`).
    pub repository: String,
    /// Manifest requests counted (an upper bound when `overestimate` is not 0).
    pub requests: u64,
    /// How much of `requests` was inherited from a displaced entry.
    pub overestimate: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    count: u64,
    error: u64,
}

/// A bounded table of request counts per (registry, repository).
#[derive(Debug)]
pub struct TopImages {
    capacity: usize,
    slots: Mutex<HashMap<(String, String), Slot>>,
}

impl TopImages {
    /// A table keeping at most `capacity` repositories (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request for `registry`/`repository`. The lock is held for a hash lookup, or
    /// when the table is full and the name is new, for one scan of at most `capacity` entries.
    pub fn record(&self, registry: &str, repository: &str) {
        let key = (registry.to_string(), repository.to_string());
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get_mut(&key) {
            slot.count += 1;
            return;
        }
        let mut inherited = 0;
        if slots.len() >= self.capacity {
            let least = slots
                .iter()
                .min_by_key(|(_, s)| s.count)
                .map(|(k, s)| (k.clone(), s.count));
            if let Some((k, count)) = least {
                slots.remove(&k);
                inherited = count;
            }
        }
        slots.insert(
            key,
            Slot {
                count: inherited + 1,
                error: inherited,
            },
        );
    }

    /// The `n` most requested repositories, most requested first (ties by name).
    pub fn top(&self, n: usize) -> Vec<ImageCount> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<ImageCount> = slots
            .iter()
            .map(|((registry, repository), s)| ImageCount {
                registry: registry.clone(),
                repository: repository.clone(),
                requests: s.count,
                overestimate: s.error,
            })
            .collect();
        drop(slots);
        all.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then_with(|| a.registry.cmp(&b.registry))
                .then_with(|| a.repository.cmp(&b.repository))
        });
        all.truncate(n);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_orders_by_requests() {
        let t = TopImages::new(10);
        for _ in 0..3 {
            t.record("docker.io", "library/alpine");
        }
        t.record("ghcr.io", "org/app");
        t.record("ghcr.io", "org/app");
        t.record("quay.io", "x/y");
        let top = t.top(2);
        assert_eq!(top.len(), 2);
        assert_eq!(
            (top[0].registry.as_str(), top[0].repository.as_str(), top[0].requests),
            ("docker.io", "library/alpine", 3)
        );
        assert_eq!((top[1].repository.as_str(), top[1].requests), ("org/app", 2));
        assert!(top.iter().all(|c| c.overestimate == 0));
    }

    #[test]
    fn stays_bounded_and_keeps_the_heavy_hitters() {
        // A third of 1500 requests: above the 1/capacity share the algorithm guarantees to keep.
        let t = TopImages::new(4);
        for i in 0..1000 {
            if i % 2 == 0 {
                t.record("docker.io", "library/busybox");
            }
            t.record("ghcr.io", &format!("noise/{i}"));
        }
        let all = t.top(100);
        assert_eq!(all.len(), 4, "never more than the capacity");
        assert_eq!(all[0].repository, "library/busybox");
        assert_eq!((all[0].requests, all[0].overestimate), (500, 0));
        assert!(all[1..].iter().all(|c| c.overestimate + 1 == c.requests));
    }
}
