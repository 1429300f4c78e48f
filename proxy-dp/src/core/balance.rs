//! Choosing a backend for a new connection or flow: the per-route, per-shard [`Balancer`]
//! over an immutable, shared [`BackendSet`].
//!
//! The routing table builds one `BackendSet` per route when its Service or EndpointSlices
//! change and hands it out as an `Arc`; every shard keeps its own `Balancer` for it
//! (round-robin cursor, open connections per backend, ClientIP affinity entries), so the
//! data path never shares mutable state between cores.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::ServiceKey;
use super::maglev::Maglev;

/// How a route spreads new connections over its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Policy {
    /// Each new connection goes to the next backend in turn (the default).
    #[default]
    RoundRobin,
    /// The backend with the fewest open connections (from this shard); ties in turn.
    LeastConnections,
    /// Maglev consistent hashing of the client address and port.
    Maglev,
}

impl Policy {
    /// Parses the `proxy.kubeshard.io/lb-policy` annotation value.
    pub fn from_annotation(v: &str) -> Option<Policy> {
        match v {
            "round-robin" | "rr" => Some(Policy::RoundRobin),
            "least-connections" | "leastconn" => Some(Policy::LeastConnections),
            "maglev" => Some(Policy::Maglev),
            _ => None,
        }
    }
}

/// The backends of one route (one frontend of one Service port) as the table computed them:
/// immutable, shared by every shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSet {
    /// The Service this route belongs to.
    pub service: ServiceKey,
    /// The Service port's name ("" when unnamed).
    pub port_name: String,
    /// The chosen endpoints: the ready ones, or, when none is ready, the serving-but-
    /// terminating ones. Sorted, no duplicates.
    pub backends: Vec<SocketAddr>,
    /// True when `backends` holds terminating endpoints (no ready one was left).
    pub terminating_fallback: bool,
    /// The balancing policy.
    pub policy: Policy,
    /// `sessionAffinity: ClientIP` and its timeout, if set.
    pub affinity: Option<Duration>,
    maglev: Option<Maglev>,
}

impl BackendSet {
    /// Builds a set; `backends` is sorted and deduplicated, and a Maglev table is built when
    /// the policy asks for one.
    pub fn new(
        service: ServiceKey,
        port_name: String,
        mut backends: Vec<SocketAddr>,
        terminating_fallback: bool,
        policy: Policy,
        affinity: Option<Duration>,
    ) -> BackendSet {
        backends.sort_unstable();
        backends.dedup();
        let maglev = (policy == Policy::Maglev).then(|| Maglev::build(&backends));
        BackendSet {
            service,
            port_name,
            backends,
            terminating_fallback,
            policy,
            affinity,
            maglev,
        }
    }

    /// Rebuilds the Maglev table (if any) keeping `previous`'s table size when it still
    /// fits, so a change of one backend moves few flows (see [`Maglev::build_sized`]).
    pub fn sized_like(mut self, previous: &BackendSet) -> BackendSet {
        if self.policy == Policy::Maglev
            && let Some(prev) = previous.maglev.as_ref()
            && !prev.is_empty()
        {
            self.maglev = Some(Maglev::build_sized(&self.backends, Some(prev.len())));
        }
        self
    }

    /// The Maglev table size (0 without one).
    pub fn maglev_size(&self) -> usize {
        self.maglev.as_ref().map_or(0, Maglev::len)
    }

    /// Whether no backend is left (the shell refuses connections: RST).
    pub fn is_empty(&self) -> bool {
        self.backends.is_empty()
    }
}

/// A flow hash of a client address (used by Maglev).
pub fn flow_hash(client: SocketAddr) -> u64 {
    let mut key = [0u8; 18];
    match client.ip() {
        IpAddr::V4(v4) => key[..4].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => key[..16].copy_from_slice(&v6.octets()),
    }
    key[16..].copy_from_slice(&client.port().to_be_bytes());
    shards::stable_hash(&key)
}

/// The most ClientIP affinity entries one balancer keeps; beyond it, new clients are
/// balanced without being remembered (counted in [`Balancer::affinity_full`]).
pub const MAX_AFFINITY_ENTRIES: usize = 65_536;

/// Per-shard balancing state of one route. Sans-IO: time comes in as `now`.
#[derive(Debug)]
pub struct Balancer {
    set: Arc<BackendSet>,
    cursor: usize,
    /// Open connections per backend, by index into `set.backends`.
    active: Vec<u32>,
    /// ClientIP → (backend, last use).
    affinity: HashMap<IpAddr, (SocketAddr, Instant)>,
    affinity_full: u64,
}

impl Balancer {
    /// A balancer for `set`, with no open connections.
    pub fn new(set: Arc<BackendSet>) -> Balancer {
        let n = set.backends.len();
        Balancer {
            set,
            cursor: 0,
            active: vec![0; n],
            affinity: HashMap::new(),
            affinity_full: 0,
        }
    }

    /// The current backend set.
    pub fn set(&self) -> &Arc<BackendSet> {
        &self.set
    }

    /// Replaces the backend set, keeping open-connection counts of backends that stay and
    /// affinity entries whose backend stays. O(backends of this route).
    pub fn update(&mut self, set: Arc<BackendSet>) {
        if Arc::ptr_eq(&set, &self.set) {
            return;
        }
        let mut active = vec![0; set.backends.len()];
        for (i, b) in self.set.backends.iter().enumerate() {
            if let Ok(j) = set.backends.binary_search(b) {
                active[j] = self.active[i];
            }
        }
        if set.affinity.is_none() {
            self.affinity.clear();
        } else {
            self.affinity
                .retain(|_, (b, _)| set.backends.binary_search(b).is_ok());
        }
        self.active = active;
        self.set = set;
    }

    /// Chooses a backend for a new connection from `client` at `now`, skipping `exclude`
    /// (backends that already failed to connect for this connection). Counts the connection
    /// as open on the chosen backend: the caller must call [`release`](Self::release) when it
    /// closes (or fails to connect). `None` when no eligible backend is left.
    pub fn pick(
        &mut self,
        client: SocketAddr,
        now: Instant,
        exclude: &[SocketAddr],
    ) -> Option<SocketAddr> {
        let n = self.set.backends.len();
        if n == 0 {
            return None;
        }
        if let Some(timeout) = self.set.affinity
            && let Some((b, last)) = self.affinity.get_mut(&client.ip())
            && now.saturating_duration_since(*last) < timeout
            && !exclude.contains(b)
            && let Ok(i) = self.set.backends.binary_search(b)
        {
            *last = now;
            self.active[i] += 1;
            return Some(*b);
        }
        let eligible = |i: usize| !exclude.contains(&self.set.backends[i]);
        let chosen = match self.set.policy {
            Policy::RoundRobin => {
                let found = (0..n).map(|k| (self.cursor + k) % n).find(|&i| eligible(i));
                if let Some(i) = found {
                    self.cursor = (i + 1) % n;
                }
                found
            }
            Policy::LeastConnections => {
                // Scan from the cursor so ties go round in turn.
                let mut best: Option<usize> = None;
                for k in 0..n {
                    let i = (self.cursor + k) % n;
                    if eligible(i) && best.is_none_or(|b| self.active[i] < self.active[b]) {
                        best = Some(i);
                    }
                }
                if let Some(i) = best {
                    self.cursor = (i + 1) % n;
                }
                best
            }
            Policy::Maglev => {
                // With affinity, the whole client IP is the flow key (same backend on every
                // shard); otherwise the address and port.
                let key = if self.set.affinity.is_some() {
                    SocketAddr::new(client.ip(), 0)
                } else {
                    client
                };
                let h = flow_hash(key);
                let maglev = self.set.maglev.as_ref();
                let len = maglev.map_or(0, Maglev::len);
                // Probe the following slots when the first choice is excluded; bounded by
                // the table size.
                (0..len)
                    .filter_map(|k| maglev.and_then(|m| m.probe(h, k)))
                    .find(|&i| i < n && eligible(i))
            }
        }?;
        self.active[chosen] += 1;
        let backend = self.set.backends[chosen];
        if self.set.affinity.is_some() {
            if self.affinity.len() < MAX_AFFINITY_ENTRIES
                || self.affinity.contains_key(&client.ip())
            {
                self.affinity.insert(client.ip(), (backend, now));
            } else {
                self.affinity_full += 1;
            }
        }
        Some(backend)
    }

    /// Records that a connection to `backend` (picked earlier) closed or failed.
    pub fn release(&mut self, backend: SocketAddr) {
        if let Ok(i) = self.set.backends.binary_search(&backend) {
            self.active[i] = self.active[i].saturating_sub(1);
        }
    }

    /// Open connections on `backend` counted by this balancer.
    pub fn active(&self, backend: SocketAddr) -> u32 {
        self.set
            .backends
            .binary_search(&backend)
            .map_or(0, |i| self.active[i])
    }

    /// Forgets affinity entries idle for longer than the timeout at `now`; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let Some(timeout) = self.set.affinity else {
            return 0;
        };
        let before = self.affinity.len();
        self.affinity
            .retain(|_, (_, last)| now.saturating_duration_since(*last) < timeout);
        before - self.affinity.len()
    }

    /// New clients not remembered because the affinity table was full.
    pub fn affinity_full(&self) -> u64 {
        self.affinity_full
    }
}
