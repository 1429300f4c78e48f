//! The controller runtime: the [`Controller`] trait and the worker pool that drains a
//! [`WorkQueue`] into it.
//!
//! Contract (level-triggered, as upstream and kube-runtime): `reconcile(key)` reads the
//! current state of `key` from caches and makes the world match; it is called again whenever
//! the key is re-added, so it must be idempotent and must not assume which event caused it.
//! The queue guarantees one reconcile per key at a time.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::queue::WorkQueue;
use crate::util::ObjectKey;

/// What to do with a key after a successful reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the next event.
    Done,
    /// Reconcile again after this long (even without an event).
    RequeueAfter(Duration),
}

/// A reconcile failure. Every error is retried with the queue's per-item backoff.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReconcileError {
    /// The API answered with an error (conflicts included: the next pass rereads the cache).
    #[error("api: {0}")]
    Api(String),
    /// The object cannot be reconciled as it stands (bad selector, bad int-or-percent).
    #[error("invalid object: {0}")]
    Invalid(String),
}

/// A reconciler of keys.
pub trait Controller: Send + Sync + 'static {
    /// The controller's name (`--controllers`, logs, metrics).
    fn name(&self) -> &'static str;

    /// Makes the world match the desired state of `key`.
    fn reconcile(
        &self,
        key: ObjectKey,
    ) -> impl Future<Output = Result<Action, ReconcileError>> + Send;
}

/// Counters of a worker pool (for `/metrics`).
#[derive(Debug, Default)]
pub struct Stats {
    /// Reconciles that succeeded.
    pub ok: std::sync::atomic::AtomicU64,
    /// Reconciles that failed (and were requeued with backoff).
    pub errors: std::sync::atomic::AtomicU64,
}

/// Runs `workers` tasks that take keys from `queue` and reconcile them until the queue shuts
/// down. Errors requeue the key with backoff; success forgets its backoff.
pub async fn run_workers<C: Controller>(
    ctl: Arc<C>,
    queue: WorkQueue<ObjectKey>,
    workers: usize,
    stats: Arc<Stats>,
) {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let (ctl, queue, stats) = (ctl.clone(), queue.clone(), stats.clone());
        set.spawn(async move {
            while let Some(key) = queue.get().await {
                let res = ctl.reconcile(key.clone()).await;
                match res {
                    Ok(Action::Done) => {
                        queue.forget(&key);
                        stats.ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Ok(Action::RequeueAfter(d)) => {
                        queue.forget(&key);
                        queue.add_after(key.clone(), d);
                        stats.ok.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(e) => {
                        let n = queue.num_requeues(&key);
                        if n < 5 {
                            tracing::debug!(controller = ctl.name(), %key, error = %e, "reconcile failed; retrying");
                        } else {
                            tracing::warn!(controller = ctl.name(), %key, error = %e, retries = n, "reconcile keeps failing");
                        }
                        queue.add_rate_limited(key.clone());
                        stats.errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                queue.done(&key);
            }
        });
    }
    while set.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails each key twice, then succeeds; records concurrency per key.
    struct Flaky {
        calls: Mutex<HashMap<ObjectKey, usize>>,
        in_flight: Mutex<HashMap<ObjectKey, usize>>,
        max_in_flight_per_key: AtomicUsize,
    }

    impl Controller for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }

        async fn reconcile(&self, key: ObjectKey) -> Result<Action, ReconcileError> {
            {
                let mut f = self.in_flight.lock();
                let n = f.entry(key.clone()).or_default();
                *n += 1;
                self.max_in_flight_per_key.fetch_max(*n, Ordering::SeqCst);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            *self.in_flight.lock().get_mut(&key).unwrap() -= 1;
            let mut c = self.calls.lock();
            let n = c.entry(key).or_default();
            *n += 1;
            if *n <= 2 {
                Err(ReconcileError::Api("boom".into()))
            } else {
                Ok(Action::Done)
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retries_with_backoff_and_never_runs_a_key_twice_at_once() {
        let ctl = Arc::new(Flaky {
            calls: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
            max_in_flight_per_key: AtomicUsize::new(0),
        });
        let q: WorkQueue<ObjectKey> = WorkQueue::new("flaky", 100);
        let stats = Arc::new(Stats::default());
        let h = tokio::spawn(run_workers(ctl.clone(), q.clone(), 4, stats.clone()));
        for i in 0..10 {
            for _ in 0..3 {
                q.add(ObjectKey::new("ns", &format!("k{i}")));
                tokio::task::yield_now().await;
            }
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        q.shut_down();
        h.await.unwrap();
        assert_eq!(ctl.max_in_flight_per_key.load(Ordering::SeqCst), 1);
        let calls = ctl.calls.lock();
        assert_eq!(calls.len(), 10);
        assert!(calls.values().all(|n| *n >= 3), "{calls:?}");
        assert_eq!(stats.errors.load(Ordering::Relaxed), 20);
    }
}
