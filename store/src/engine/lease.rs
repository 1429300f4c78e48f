//! Leases: TTLs whose expiry deletes the keys attached to them, and the clock they run on.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::backend::LeaseId;

/// A monotonic clock. The engine reads time only through this, so tests can drive lease
/// expiry with a [`ManualClock`].
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Time elapsed since some fixed origin.
    fn now(&self) -> Duration;
}

/// The real monotonic clock.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A clock starting at zero now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            origin: Instant::now(),
        })
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to (tests).
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    /// A clock at zero.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let n = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(n, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

/// Shortest TTL granted (etcd's minimum is of the same order); shorter requests are raised.
pub const MIN_TTL_SECONDS: i64 = 1;

/// Longest TTL granted (etcd's `MaxLeaseTTL`, 9,000,000,000 s).
pub const MAX_TTL_SECONDS: i64 = 9_000_000_000;

#[derive(Debug, Clone)]
pub(crate) struct Lease {
    pub(crate) ttl: i64,
    pub(crate) expiry: Duration,
    pub(crate) keys: BTreeSet<Bytes>,
}

/// Every live lease. Bounded by the keys and grants the quota admits.
#[derive(Debug, Default)]
pub(crate) struct LeaseTable {
    pub(crate) leases: HashMap<i64, Lease>,
    next_id: i64,
}

impl LeaseTable {
    /// A fresh, unused, positive id.
    pub(crate) fn fresh_id(&mut self, seed: u64) -> i64 {
        if self.next_id == 0 {
            // Start from a time-derived value so ids differ across restarts, as etcd's do.
            self.next_id = i64::try_from(seed % (1 << 48)).unwrap_or(1).max(1) << 8;
        }
        loop {
            self.next_id = self.next_id.wrapping_add(1);
            if self.next_id <= 0 {
                self.next_id = 1;
            }
            if !self.leases.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    pub(crate) fn grant(&mut self, id: i64, ttl: i64, now: Duration) {
        self.leases.insert(
            id,
            Lease {
                ttl,
                expiry: now + ttl_duration(ttl),
                keys: BTreeSet::new(),
            },
        );
    }

    pub(crate) fn live(&self, id: LeaseId, now: Duration) -> Option<&Lease> {
        self.leases.get(&id.0).filter(|l| l.expiry > now)
    }

    /// Leases whose expiry has passed.
    pub(crate) fn expired(&self, now: Duration) -> Vec<LeaseId> {
        let mut v: Vec<_> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expiry <= now)
            .map(|(id, _)| LeaseId(*id))
            .collect();
        v.sort();
        v
    }

    pub(crate) fn attach(&mut self, id: LeaseId, key: &Bytes) {
        if let Some(l) = self.leases.get_mut(&id.0) {
            l.keys.insert(key.clone());
        }
    }

    pub(crate) fn detach(&mut self, id: LeaseId, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&id.0) {
            l.keys.remove(key);
        }
    }
}

pub(crate) fn ttl_duration(ttl: i64) -> Duration {
    Duration::from_secs(u64::try_from(ttl).unwrap_or(0))
}
