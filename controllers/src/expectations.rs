//! Expectations: what a controller has asked the API for and not yet seen in its cache.
//!
//! A ReplicaSet that created 5 pods must not create 5 more before its informer has seen them,
//! or it double-creates. Before issuing creates (deletes) the controller records how many it
//! expects; each informer event lowers the count; a key is reconciled only when its
//! expectations are satisfied (both counts at or below zero) or have expired (upstream: 5 min,
//! the safety net for a lost watch event). Deletes are tracked by pod key so a delete event
//! for a pod the controller did not delete does not count twice (upstream's
//! `UIDTrackingControllerExpectations`).
//!
//! Sans-IO: callers pass `now`.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Upstream's `ExpectationsTimeout`.
pub const EXPECTATIONS_TIMEOUT: Duration = Duration::from_secs(5 * 60);

#[derive(Debug)]
struct Entry {
    adds: i64,
    deletes: HashSet<String>,
    set_at: Instant,
}

/// Expectations per controller key `K`. Thread-safe (one lock; entries are tiny).
#[derive(Debug)]
pub struct Expectations<K> {
    entries: Mutex<HashMap<K, Entry>>,
    timeout: Duration,
}

impl<K: Hash + Eq + Clone> Default for Expectations<K> {
    fn default() -> Self {
        Self::new(EXPECTATIONS_TIMEOUT)
    }
}

impl<K: Hash + Eq + Clone> Expectations<K> {
    /// Expectations expiring after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            timeout,
        }
    }

    /// Whether `key` may be reconciled: no entry, all observed, or expired.
    pub fn satisfied(&self, key: &K, now: Instant) -> bool {
        match self.entries.lock().get(key) {
            None => true,
            Some(e) => {
                (e.adds <= 0 && e.deletes.is_empty())
                    || now.saturating_duration_since(e.set_at) > self.timeout
            }
        }
    }

    /// Records that `adds` creates and the deletes of `deletes` (pod keys) are in flight;
    /// replaces what was recorded before.
    pub fn expect(
        &self,
        key: &K,
        adds: usize,
        deletes: impl IntoIterator<Item = String>,
        now: Instant,
    ) {
        self.entries.lock().insert(
            key.clone(),
            Entry {
                adds: i64::try_from(adds).unwrap_or(i64::MAX),
                deletes: deletes.into_iter().collect(),
                set_at: now,
            },
        );
    }

    /// A create was observed (or will never happen: the create failed or was skipped).
    pub fn creation_observed(&self, key: &K) {
        self.lower_adds(key, 1);
    }

    /// `n` creates will never happen (skipped after an error).
    pub fn lower_adds(&self, key: &K, n: usize) {
        if let Some(e) = self.entries.lock().get_mut(key) {
            e.adds -= i64::try_from(n).unwrap_or(i64::MAX);
        }
    }

    /// The delete of `pod_key` was observed (or failed).
    pub fn deletion_observed(&self, key: &K, pod_key: &str) {
        if let Some(e) = self.entries.lock().get_mut(key) {
            e.deletes.remove(pod_key);
        }
    }

    /// Forgets `key` (its object was deleted).
    pub fn delete(&self, key: &K) {
        self.entries.lock().remove(key);
    }

    /// Creates still expected for `key` (for tests and metrics).
    pub fn pending_adds(&self, key: &K) -> i64 {
        self.entries.lock().get(key).map_or(0, |e| e.adds.max(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_until_observed_or_expired() {
        let t = Instant::now();
        let e: Expectations<String> = Expectations::default();
        let k = "ns/rs".to_string();
        assert!(e.satisfied(&k, t));
        e.expect(&k, 2, ["ns/p1".to_string()], t);
        assert!(!e.satisfied(&k, t));
        e.creation_observed(&k);
        e.creation_observed(&k);
        assert!(!e.satisfied(&k, t), "the delete is still pending");
        e.deletion_observed(&k, "ns/other");
        assert!(!e.satisfied(&k, t), "an unrelated delete does not count");
        e.deletion_observed(&k, "ns/p1");
        assert!(e.satisfied(&k, t));
        e.expect(&k, 1, [], t);
        assert!(!e.satisfied(&k, t + Duration::from_secs(299)));
        assert!(e.satisfied(&k, t + Duration::from_secs(301)), "expired");
    }
}
