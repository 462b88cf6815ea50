//! Coalescing of identical concurrent operations: the first caller starts the work, later
//! callers with the same key wait for its result. The work runs in its own task, so it
//! finishes (and its result is stored) even if every caller goes away.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

type Flights<K, V> = Arc<Mutex<HashMap<K, Shared<BoxFuture<'static, Option<V>>>>>>;

/// A table of operations in progress, by key.
pub struct SingleFlight<K, V> {
    flights: Flights<K, V>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            flights: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `work` for `key` unless the same key is already in flight, in which case this waits
    /// for that run. Returns `None` only if the work panicked.
    pub async fn run<F>(&self, key: K, work: impl FnOnce() -> F) -> Option<V>
    where
        F: Future<Output = V> + Send + 'static,
    {
        let flight = {
            let mut map = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(existing) = map.get(&key) {
                existing.clone()
            } else {
                let flights = self.flights.clone();
                let key2 = key.clone();
                let fut = work();
                let handle = tokio::spawn(async move {
                    let v = fut.await;
                    // Remove before publishing, so a caller arriving after completion starts anew.
                    flights.lock().unwrap_or_else(|p| p.into_inner()).remove(&key2);
                    v
                });
                let shared = async move { handle.await.ok() }.boxed().shared();
                map.insert(key, shared.clone());
                shared
            }
        };
        flight.await
    }

    /// How many keys are in flight.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.flights.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is in flight.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let sf = Arc::new(SingleFlight::<String, usize>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..10 {
            let sf = sf.clone();
            let runs = runs.clone();
            tasks.push(tokio::spawn(async move {
                sf.run("k".to_string(), || async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    runs.fetch_add(1, Ordering::SeqCst) + 100
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), Some(100));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(sf.is_empty());
        // Later calls run again.
        let r = sf.run("k".to_string(), || async { 7 }).await;
        assert_eq!(r, Some(7));
    }

    #[tokio::test]
    async fn work_completes_when_callers_leave() {
        let sf = SingleFlight::<u8, ()>::default();
        let done = Arc::new(AtomicUsize::new(0));
        let d = done.clone();
        let call = sf.run(1, || async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            d.fetch_add(1, Ordering::SeqCst);
        });
        let _ = tokio::time::timeout(Duration::from_millis(5), call).await;
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(done.load(Ordering::SeqCst), 1);
        assert!(sf.is_empty());
    }
}
