//! The embedded engine: the default [`Backend`].
//!
//! ## Shape
//! - **Shards:** the key space is split into `shards` partitions by the stable routing hash
//!   of the key ([`shard_of`]); each partition is a multi-version map (`mvcc::Shard`) behind
//!   its own read-write lock, so reads of different shards never contend and a LIST fans out
//!   to every shard and merges in key order.
//! - **Revisions:** one cluster-wide counter. Write transactions are sequenced by one lock
//!   (the *sequencer*): it evaluates compares, assigns the next revision, applies the writes
//!   to every shard the transaction touches, and hands the revision's events to the watch
//!   hub. A revision becomes *visible* (readable at the latest revision, watchable) only as a
//!   whole, so a multi-shard transaction is atomic to readers and watchers alike.
//! - **Reads** at the latest revision read at the visible revision; MVCC makes a read at a
//!   fixed revision consistent across shards without locking them together.
//! - **Watch:** see [`watch`]; events reach watchers in revision order from one bounded ring,
//!   through a field index, and slow watchers are cut off instead of slowing writers.
//! - **Leases** live in a table beside the shards; a background thread revokes expired ones
//!   (deleting their keys in one transaction). Time comes from a [`Clock`].
//!
//! **Lock order:** sequencer, leases, shards (ascending index), watch event log. The watch
//! registry is taken before shards or the event log, and never while holding the sequencer.
//!
//! **Invariants:** `visible <= applied`; every version above `visible` belongs to a
//! revision still being committed; `compacted <= visible`.

mod lease;
mod mvcc;
pub mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};

pub use lease::{Clock, MAX_TTL_SECONDS, MIN_TTL_SECONDS, ManualClock, SystemClock};
use lease::{LeaseTable, ttl_duration};
use mvcc::{KeyRange, Shard};
use watch::{EventRec, RevBatch, WatchHub};

use crate::backend::{
    Backend, Compare, CompareOp, CompareTarget, LeaseGrant, LeaseId, LeaseTimeToLive, RangeRequest,
    RangeResponse, Revision, StoreStatus, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchRequest,
    WatchStream,
};
use crate::envelope::{self, Envelope, VersionMeta};
use crate::error::StoreError;

/// How to open an [`Engine`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Where the WAL and snapshots live; `None` for an ephemeral in-memory store (tests).
    pub data_dir: Option<PathBuf>,
    /// Number of data partitions (one per core is the intent); at least 1.
    pub shards: usize,
    /// Refuse writes that would hold more than this many bytes of values (every retained
    /// version) with `QuotaExceeded`; deletes and compaction stay allowed.
    pub memory_quota_bytes: Option<u64>,
    /// Refuse writes once the data directory would exceed this (with the WAL).
    pub disk_quota_bytes: Option<u64>,
    /// Most live events queued per watcher before it is cut off with `WatchTooSlow`.
    pub watch_buffer_events: usize,
    /// Most events kept in the in-memory watch history (older catch-up reads the MVCC
    /// history instead).
    pub event_history_events: usize,
    /// How often watchers that asked for progress notifications get a bookmark when idle.
    pub progress_interval: Duration,
    /// How often the lease expiry task looks for expired leases.
    pub lease_check_interval: Duration,
    /// The clock leases run on.
    pub clock: Arc<dyn Clock>,
}

impl EngineConfig {
    /// An ephemeral in-memory engine with one shard per available core.
    pub fn in_memory() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        Self {
            data_dir: None,
            shards: cores,
            memory_quota_bytes: None,
            disk_quota_bytes: None,
            watch_buffer_events: 10_000,
            event_history_events: 100_000,
            progress_interval: Duration::from_secs(5),
            lease_check_interval: Duration::from_millis(250),
            clock: SystemClock::new(),
        }
    }

    /// A durable engine in `dir` (see [`EngineConfig::in_memory`] for the other defaults).
    pub fn durable(dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: Some(dir.into()),
            ..Self::in_memory()
        }
    }
}

/// The shard that owns `key` among `n`: the stable routing hash (FNV-1a 64 + murmur3
/// finaliser, the same function as `shards::route`), fixed forever because on-disk
/// placement depends on it.
pub fn shard_of(key: &[u8], n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    (h % n.max(1) as u64) as usize
}

/// The sequencer's state.
#[derive(Debug, Default)]
struct Seq {
    /// The last revision assigned.
    applied: u64,
}

/// One applied change, kept until the revision is visible (and for rollback).
#[derive(Debug)]
struct Change {
    shard: usize,
    key: Bytes,
    new: Option<Envelope>,
    prev: Option<Envelope>,
}

#[derive(Debug)]
struct Inner {
    shards: Vec<RwLock<Shard>>,
    seq: Mutex<Seq>,
    visible: AtomicU64,
    compacted: AtomicU64,
    leases: Mutex<LeaseTable>,
    hub: Arc<WatchHub>,
    /// Bytes of envelopes held across shards.
    bytes: AtomicU64,
    closed: AtomicBool,
    /// Wakes background threads early on close.
    stop: (Mutex<bool>, Condvar),
    memory_quota: Option<u64>,
    watch_buffer: usize,
    clock: Arc<dyn Clock>,
}

/// The embedded engine. Open with [`Engine::open`]; share as `Arc<Engine>` (or
/// `Arc<dyn Backend>`); stop with [`Engine::close`].
#[derive(Debug)]
pub struct Engine {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Engine {
    /// Opens an engine.
    ///
    /// Errors: `InvalidRequest` for a bad config; `Io` if a background thread cannot start;
    /// `Unavailable` for a `data_dir` (durability is not integrated yet).
    pub fn open(cfg: EngineConfig) -> Result<Arc<Self>, StoreError> {
        if cfg.shards == 0 || cfg.shards > 4096 {
            return Err(StoreError::InvalidRequest(format!(
                "shards must be in 1..=4096, got {}",
                cfg.shards
            )));
        }
        if cfg.data_dir.is_some() {
            return Err(StoreError::Unavailable(
                "durable engine (data_dir) is not available yet; use EngineConfig::in_memory"
                    .into(),
            ));
        }
        let hub = Arc::new(WatchHub::new(
            0,
            cfg.event_history_events,
            cfg.progress_interval,
        ));
        let inner = Arc::new(Inner {
            shards: (0..cfg.shards)
                .map(|_| RwLock::new(Shard::default()))
                .collect(),
            seq: Mutex::new(Seq::default()),
            visible: AtomicU64::new(0),
            compacted: AtomicU64::new(0),
            leases: Mutex::new(LeaseTable::default()),
            hub,
            bytes: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            stop: (Mutex::new(false), Condvar::new()),
            memory_quota: cfg.memory_quota_bytes,
            watch_buffer: cfg.watch_buffer_events,
            clock: cfg.clock.clone(),
        });
        let mut threads = Vec::new();
        let hub = inner.hub.clone();
        threads.push(
            std::thread::Builder::new()
                .name("store-watch".into())
                .spawn(move || hub.run_fanout())?,
        );
        let weak = Arc::downgrade(&inner);
        let every = cfg.lease_check_interval.max(Duration::from_millis(1));
        threads.push(
            std::thread::Builder::new()
                .name("store-lease".into())
                .spawn(move || lease_loop(&weak, every))?,
        );
        Ok(Arc::new(Self {
            inner,
            threads: Mutex::new(threads),
        }))
    }

    /// Stops the background threads and ends every watch with `Unavailable`. Reads keep
    /// working; writes fail with `Unavailable`. Idempotent.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        {
            let (m, cv) = &self.inner.stop;
            *m.lock() = true;
            cv.notify_all();
        }
        self.inner.hub.stop();
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            let _ = t.join();
        }
        self.inner
            .hub
            .end_all(|| StoreError::Unavailable("store closed".into()));
    }

    /// The latest visible revision.
    pub fn revision(&self) -> Revision {
        Revision(self.inner.visible.load(Ordering::Acquire))
    }

    /// Revokes every lease whose TTL has passed on the engine's clock; returns how many. The
    /// background task calls this periodically; tests with a [`ManualClock`] may call it
    /// directly.
    pub fn expire_leases(&self) -> Result<usize, StoreError> {
        self.inner.expire_leases()
    }

    /// Number of watchers registered (tests and metrics).
    pub fn watcher_count(&self) -> usize {
        self.inner.hub.reg.lock().watcher_count()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.close();
    }
}

fn lease_loop(inner: &std::sync::Weak<Inner>, every: Duration) {
    loop {
        let Some(i) = inner.upgrade() else {
            return;
        };
        {
            let (m, cv) = &i.stop;
            let mut stopped = m.lock();
            if *stopped {
                return;
            }
            let _ = cv.wait_for(&mut stopped, every);
            if *stopped {
                return;
            }
        }
        if let Err(e) = i.expire_leases() {
            tracing::warn!(error = %e, "lease expiry failed; will retry");
        }
    }
}

fn compare_holds(c: &Compare, env: Option<&Envelope>) -> bool {
    use std::cmp::Ordering as O;
    let ord = match &c.target {
        CompareTarget::Version(v) => env.map_or(0, Envelope::version).cmp(v),
        CompareTarget::CreateRevision(r) => env.map_or(0, |e| e.create_revision().0).cmp(&r.0),
        CompareTarget::ModRevision(r) => env.map_or(0, |e| e.mod_revision().0).cmp(&r.0),
        CompareTarget::Value(b) => match env {
            None => return false,
            Some(e) => e.raw()[..].cmp(&b[..]),
        },
        CompareTarget::Lease(l) => env
            .and_then(Envelope::lease)
            .map_or(0, |l| l.0)
            .cmp(&l.map_or(0, |l| l.0)),
    };
    match c.op {
        CompareOp::Equal => ord == O::Equal,
        CompareOp::NotEqual => ord != O::Equal,
        CompareOp::Greater => ord == O::Greater,
        CompareOp::Less => ord == O::Less,
    }
}

fn check_range_end(key: &Bytes, end: &crate::RangeEnd) -> Result<(), StoreError> {
    if key.is_empty() && !matches!(end, crate::RangeEnd::Unbounded | crate::RangeEnd::Prefix) {
        return Err(StoreError::InvalidRequest("empty key".into()));
    }
    Ok(())
}

fn validate_ops(ops: &[TxnOp]) -> Result<(), StoreError> {
    for op in ops {
        match op {
            TxnOp::Put { key, value, .. } => envelope::validate(key, value)?,
            TxnOp::Delete { key, range_end, .. } => check_range_end(key, range_end)?,
            TxnOp::Range(r) => check_range_end(&r.key, &r.range_end)?,
        }
    }
    Ok(())
}

impl Inner {
    fn visible(&self) -> u64 {
        self.visible.load(Ordering::Acquire)
    }

    fn check_open(&self) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable("store closed".into()));
        }
        Ok(())
    }

    fn shard_for(&self, key: &[u8]) -> usize {
        shard_of(key, self.shards.len())
    }

    /// Shards that may hold keys of `range`.
    fn shards_of(&self, range: &KeyRange) -> Vec<usize> {
        if range.is_single() {
            vec![self.shard_for(&range.start)]
        } else {
            (0..self.shards.len()).collect()
        }
    }

    /// Reads `range` at `rev` (no visibility check: callers pick a legal `rev`).
    fn read(
        &self,
        range: &KeyRange,
        rev: u64,
        limit: Option<u64>,
        keys_only: bool,
        count_only: bool,
    ) -> Result<RangeResponse, StoreError> {
        let limit = limit
            .filter(|l| *l > 0)
            .map(|l| usize::try_from(l).unwrap_or(usize::MAX));
        let mut found: Vec<Envelope> = Vec::new();
        let mut count = 0u64;
        for s in self.shards_of(range) {
            let shard = self.shards[s].read();
            if rev < shard.compacted {
                return Err(StoreError::Compacted {
                    requested: Revision(rev),
                    compact_revision: Revision(shard.compacted),
                });
            }
            let mut taken = 0usize;
            shard.scan(range, rev, |env| {
                count += 1;
                if !count_only && limit.is_none_or(|l| taken < l) {
                    found.push(env.clone());
                    taken += 1;
                }
                true
            });
        }
        found.sort_by(|a, b| a.key_ref().cmp(b.key_ref()));
        if let Some(l) = limit {
            found.truncate(l);
        }
        let more = !count_only && (found.len() as u64) < count;
        let kvs = found
            .iter()
            .map(|e| {
                if keys_only {
                    e.key_value_keys_only()
                } else {
                    e.key_value()
                }
            })
            .collect();
        Ok(RangeResponse {
            kvs,
            more,
            count,
            revision: Revision(rev),
        })
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, StoreError> {
        check_range_end(&req.key, &req.range_end)?;
        let visible = self.visible();
        let rev = match req.revision {
            None | Some(Revision(0)) => visible,
            Some(r) => {
                if r.0 > visible {
                    return Err(StoreError::FutureRevision {
                        requested: r,
                        current: Revision(visible),
                    });
                }
                r.0
            }
        };
        let compacted = self.compacted.load(Ordering::Acquire);
        if rev < compacted {
            return Err(StoreError::Compacted {
                requested: Revision(rev),
                compact_revision: Revision(compacted),
            });
        }
        let range = KeyRange::new(&req.key, &req.range_end);
        let mut resp = self.read(&range, rev, req.limit, req.keys_only, req.count_only)?;
        // A latest read reports the store's revision, which may have moved past `rev` only
        // by revisions this read did not see; report the one it was served at.
        resp.revision = Revision(rev);
        Ok(resp)
    }

    /// Live values in `range` including this transaction's own writes at `rev`.
    fn live_in(&self, range: &KeyRange, rev: u64) -> Vec<Envelope> {
        let mut out = Vec::new();
        for s in self.shards_of(range) {
            self.shards[s].read().scan(range, rev, |e| {
                out.push(e.clone());
                true
            });
        }
        out
    }

    fn compares_hold(&self, compares: &[Compare], rev: u64) -> bool {
        compares.iter().all(|c| {
            let range = KeyRange::new(&c.key, &c.range_end);
            let kvs = self.live_in(&range, rev);
            if kvs.is_empty() {
                compare_holds(c, None)
            } else {
                kvs.iter().all(|e| compare_holds(c, Some(e)))
            }
        })
    }

    fn rollback(&self, rev: u64, changes: &[Change]) {
        for c in changes.iter().rev() {
            let mut shard = self.shards[c.shard].write();
            let before = shard.bytes;
            shard.pop(&c.key, rev);
            let freed = before - shard.bytes;
            self.bytes.fetch_sub(freed, Ordering::AcqRel);
        }
    }

    fn push(&self, shard: usize, key: Bytes, rev: u64, value: Option<Envelope>) -> bool {
        let add = value.as_ref().map_or(0, |e| e.len() as u64);
        let ok = self.shards[shard].write().push(key, rev, value);
        if ok {
            self.bytes.fetch_add(add, Ordering::AcqRel);
        }
        ok
    }

    /// Applies `ops` at revision `rev` (sequencer held). On error nothing stays applied.
    fn apply_ops(
        &self,
        ops: Vec<TxnOp>,
        rev: u64,
        changes: &mut Vec<Change>,
    ) -> Result<Vec<TxnOpResponse>, StoreError> {
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let r = match op {
                TxnOp::Put {
                    key,
                    value,
                    lease,
                    prev_kv,
                } => {
                    let s = self.shard_for(&key);
                    let prev = self.shards[s].read().get(&key, rev).cloned();
                    let meta = VersionMeta {
                        mod_revision: Revision(rev),
                        create_revision: prev
                            .as_ref()
                            .map_or(Revision(rev), Envelope::create_revision),
                        version: prev.as_ref().map_or(1, |p| p.version() + 1),
                        lease,
                    };
                    let env = Envelope::encode(&key, value, meta)?;
                    if !self.push(s, key.clone(), rev, Some(env.clone())) {
                        return Err(duplicate(&key));
                    }
                    let prev_resp = if prev_kv {
                        prev.as_ref().map(Envelope::key_value)
                    } else {
                        None
                    };
                    changes.push(Change {
                        shard: s,
                        key,
                        new: Some(env),
                        prev,
                    });
                    TxnOpResponse::Put { prev_kv: prev_resp }
                }
                TxnOp::Delete {
                    key,
                    range_end,
                    prev_kv,
                } => {
                    let range = KeyRange::new(&key, &range_end);
                    let victims = self.live_in(&range, rev);
                    let mut prev_kvs = Vec::new();
                    let deleted = victims.len() as u64;
                    for v in victims {
                        let k = v.key();
                        let s = self.shard_for(&k);
                        if !self.push(s, k.clone(), rev, None) {
                            return Err(duplicate(&k));
                        }
                        if prev_kv {
                            prev_kvs.push(v.key_value());
                        }
                        changes.push(Change {
                            shard: s,
                            key: k,
                            new: None,
                            prev: Some(v),
                        });
                    }
                    TxnOpResponse::Delete { deleted, prev_kvs }
                }
                TxnOp::Range(r) => {
                    let range = KeyRange::new(&r.key, &r.range_end);
                    let at = r.revision.filter(|x| x.0 > 0).map_or(rev, |x| x.0.min(rev));
                    let mut resp = self.read(&range, at, r.limit, r.keys_only, r.count_only)?;
                    resp.revision = Revision(rev);
                    TxnOpResponse::Range(resp)
                }
            };
            responses.push(r);
        }
        Ok(responses)
    }

    /// Runs a transaction under the sequencer and makes it visible.
    fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.check_open()?;
        validate_ops(&txn.success)?;
        validate_ops(&txn.failure)?;
        let mut seq = self.seq.lock();
        let current = seq.applied;
        let succeeded = self.compares_hold(&txn.compare, current);
        let ops = if succeeded { txn.success } else { txn.failure };
        let writes = ops.iter().any(|o| !matches!(o, TxnOp::Range(_)));
        if !writes {
            let mut changes = Vec::new();
            let responses = self.apply_ops(ops, current, &mut changes)?;
            return Ok(TxnResponse {
                succeeded,
                revision: Revision(current),
                responses,
            });
        }
        let now = self.clock.now();
        let mut grow = 0u64;
        {
            let leases = self.leases.lock();
            for op in &ops {
                if let TxnOp::Put {
                    key, value, lease, ..
                } = op
                {
                    grow += envelope::estimated_len(key, value);
                    if let Some(l) = lease
                        && leases.live(*l, now).is_none()
                    {
                        return Err(StoreError::LeaseNotFound(l.0));
                    }
                }
            }
        }
        if grow > 0
            && let Some(q) = self.memory_quota
        {
            let held = self.bytes.load(Ordering::Acquire);
            if held + grow > q {
                return Err(StoreError::QuotaExceeded(format!(
                    "memory quota of {q} bytes: {held} held, {grow} more requested"
                )));
            }
        }
        let rev = current + 1;
        let mut changes = Vec::new();
        let responses = match self.apply_ops(ops, rev, &mut changes) {
            Ok(r) => r,
            Err(e) => {
                self.rollback(rev, &changes);
                return Err(e);
            }
        };
        if changes.is_empty() {
            return Ok(TxnResponse {
                succeeded,
                revision: Revision(current),
                responses,
            });
        }
        seq.applied = rev;
        self.commit(rev, changes);
        Ok(TxnResponse {
            succeeded,
            revision: Revision(rev),
            responses,
        })
    }

    /// Bookkeeping after a revision applied: lease attachments, visibility, watch events.
    fn commit(&self, rev: u64, mut changes: Vec<Change>) {
        {
            let mut leases = self.leases.lock();
            for c in &changes {
                let old = c.prev.as_ref().and_then(Envelope::lease);
                let new = c.new.as_ref().and_then(Envelope::lease);
                if old != new
                    && let Some(o) = old
                {
                    leases.detach(o, &c.key);
                }
                if let Some(n) = new {
                    leases.attach(n, &c.key);
                }
            }
        }
        changes.sort_by(|a, b| a.key.cmp(&b.key));
        let events = changes
            .into_iter()
            .map(|c| {
                Arc::new(EventRec {
                    rev,
                    key: c.key,
                    new: c.new,
                    prev: c.prev,
                })
            })
            .collect();
        self.visible.store(rev, Ordering::Release);
        self.hub.append(RevBatch { rev, events });
    }

    fn lease_grant(&self, ttl: i64, id: Option<LeaseId>) -> Result<LeaseGrant, StoreError> {
        self.check_open()?;
        if ttl > MAX_TTL_SECONDS {
            return Err(StoreError::InvalidRequest(format!(
                "lease TTL {ttl} exceeds the maximum {MAX_TTL_SECONDS}"
            )));
        }
        let ttl = ttl.max(MIN_TTL_SECONDS);
        let _seq = self.seq.lock();
        let mut leases = self.leases.lock();
        let now = self.clock.now();
        let id = match id {
            Some(LeaseId(i)) if i < 0 => {
                return Err(StoreError::InvalidRequest(format!("negative lease id {i}")));
            }
            Some(LeaseId(i)) if i > 0 => {
                if leases.leases.contains_key(&i) {
                    return Err(StoreError::LeaseExists(i));
                }
                i
            }
            _ => {
                let seed = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_secs());
                leases.fresh_id(seed)
            }
        };
        leases.grant(id, ttl, now);
        Ok(LeaseGrant {
            id: LeaseId(id),
            ttl_seconds: ttl,
        })
    }

    /// Revokes a lease (deleting its keys at one new revision). `only_if_expired` makes it a
    /// no-op for a lease that was renewed meanwhile (the expiry task's race).
    fn lease_revoke(&self, id: LeaseId, only_if_expired: bool) -> Result<Revision, StoreError> {
        self.check_open()?;
        let mut seq = self.seq.lock();
        let keys = {
            let mut leases = self.leases.lock();
            let now = self.clock.now();
            match leases.leases.get(&id.0) {
                None => return Err(StoreError::LeaseNotFound(id.0)),
                Some(l) if only_if_expired && l.expiry > now => {
                    return Ok(Revision(seq.applied));
                }
                Some(_) => {}
            }
            leases
                .leases
                .remove(&id.0)
                .map(|l| l.keys)
                .unwrap_or_default()
        };
        let ops: Vec<TxnOp> = keys
            .into_iter()
            .map(|key| TxnOp::Delete {
                key,
                range_end: crate::RangeEnd::Single,
                prev_kv: false,
            })
            .collect();
        if ops.is_empty() {
            return Ok(Revision(seq.applied));
        }
        let rev = seq.applied + 1;
        let mut changes = Vec::new();
        if let Err(e) = self.apply_ops(ops, rev, &mut changes) {
            self.rollback(rev, &changes);
            return Err(e);
        }
        if changes.is_empty() {
            return Ok(Revision(seq.applied));
        }
        seq.applied = rev;
        self.commit(rev, changes);
        Ok(Revision(rev))
    }

    fn expire_leases(&self) -> Result<usize, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(0);
        }
        let expired = self.leases.lock().expired(self.clock.now());
        let mut n = 0;
        for id in expired {
            match self.lease_revoke(id, true) {
                Ok(_) => n += 1,
                Err(StoreError::LeaseNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(n)
    }

    fn lease_keep_alive(&self, id: LeaseId) -> Result<i64, StoreError> {
        self.check_open()?;
        let mut leases = self.leases.lock();
        let now = self.clock.now();
        if leases.live(id, now).is_none() {
            return Err(StoreError::LeaseNotFound(id.0));
        }
        let Some(l) = leases.leases.get_mut(&id.0) else {
            return Err(StoreError::LeaseNotFound(id.0));
        };
        l.expiry = now + ttl_duration(l.ttl);
        Ok(l.ttl)
    }

    fn lease_time_to_live(&self, id: LeaseId, with_keys: bool) -> LeaseTimeToLive {
        let leases = self.leases.lock();
        let now = self.clock.now();
        match leases.live(id, now) {
            None => LeaseTimeToLive {
                id,
                ttl_seconds: -1,
                granted_ttl_seconds: 0,
                keys: Vec::new(),
            },
            Some(l) => {
                let left = l.expiry.saturating_sub(now);
                let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
                LeaseTimeToLive {
                    id,
                    ttl_seconds: i64::try_from(secs).unwrap_or(i64::MAX),
                    granted_ttl_seconds: l.ttl,
                    keys: if with_keys {
                        l.keys.iter().cloned().collect()
                    } else {
                        Vec::new()
                    },
                }
            }
        }
    }

    fn compact(&self, rev: Revision) -> Result<(), StoreError> {
        self.check_open()?;
        let _seq = self.seq.lock();
        let visible = self.visible();
        if rev.0 > visible {
            return Err(StoreError::FutureRevision {
                requested: rev,
                current: Revision(visible),
            });
        }
        let compacted = self.compacted.load(Ordering::Acquire);
        if rev.0 <= compacted {
            return Err(StoreError::Compacted {
                requested: rev,
                compact_revision: Revision(compacted),
            });
        }
        // Publish the new floor first so new reads below it fail fast; shards enforce it
        // under their own locks for reads already running.
        self.compacted.store(rev.0, Ordering::Release);
        for s in &self.shards {
            let freed = s.write().compact(rev.0);
            self.bytes.fetch_sub(freed, Ordering::AcqRel);
        }
        Ok(())
    }

    fn status(&self) -> StoreStatus {
        StoreStatus {
            revision: Revision(self.visible()),
            compact_revision: Revision(self.compacted.load(Ordering::Acquire)),
            db_size_bytes: 0,
            db_size_in_use_bytes: self.bytes.load(Ordering::Acquire),
            version: concat!("kubeshard-engine ", env!("CARGO_PKG_VERSION")).into(),
        }
    }

    /// Catch-up events for `range` in revisions `[from, to]`, read from the MVCC history.
    fn history_events(
        &self,
        range: &KeyRange,
        from: u64,
        to: u64,
    ) -> Result<watch::RevEvents, StoreError> {
        let mut all: Vec<Arc<EventRec>> = Vec::new();
        for s in self.shards_of(range) {
            let shard = self.shards[s].read();
            if from <= shard.compacted {
                return Err(StoreError::Compacted {
                    requested: Revision(from),
                    compact_revision: Revision(shard.compacted),
                });
            }
            for (key, h) in shard.histories(range) {
                for (i, v) in h.iter().enumerate() {
                    if v.rev < from || v.rev > to {
                        continue;
                    }
                    let prev = i
                        .checked_sub(1)
                        .and_then(|j| h.get(j))
                        .and_then(|p| p.value.clone());
                    if v.value.is_none() && prev.is_none() {
                        continue;
                    }
                    all.push(Arc::new(EventRec {
                        rev: v.rev,
                        key: key.clone(),
                        new: v.value.clone(),
                        prev,
                    }));
                }
            }
        }
        all.sort_by(|a, b| a.rev.cmp(&b.rev).then_with(|| a.key.cmp(&b.key)));
        let mut out: watch::RevEvents = Vec::new();
        for e in all {
            match out.last_mut() {
                Some((r, evs)) if *r == e.rev => evs.push(e),
                _ => out.push((e.rev, vec![e])),
            }
        }
        Ok(out)
    }

    fn watch(&self, req: WatchRequest) -> Result<watch::WatchStreamImpl, StoreError> {
        self.check_open()?;
        check_range_end(&req.key, &req.range_end)?;
        let range = KeyRange::new(&req.key, &req.range_end);
        let mut reg = self.hub.reg.lock();
        let cursor = reg.cursor;
        let start = match req.start_revision {
            None | Some(Revision(0)) => self.visible() + 1,
            Some(r) => r.0,
        };
        let compacted = self.compacted.load(Ordering::Acquire);
        if compacted > 0 && start <= compacted {
            return Err(StoreError::Compacted {
                requested: Revision(start),
                compact_revision: Revision(compacted),
            });
        }
        let mut catchup = Vec::new();
        if start <= cursor {
            match self.hub.history(start, cursor) {
                Some(batches) => {
                    for b in batches {
                        let evs: Vec<_> = b
                            .events
                            .iter()
                            .filter(|e| {
                                range.contains(&e.key)
                                    && (req.filter.labels.is_empty()
                                        && req.filter.fields.is_empty()
                                        || e.new
                                            .as_ref()
                                            .is_some_and(|v| watch::filter_matches(&req.filter, v))
                                        || e.prev
                                            .as_ref()
                                            .is_some_and(|v| watch::filter_matches(&req.filter, v)))
                            })
                            .cloned()
                            .collect();
                        if !evs.is_empty() {
                            catchup.push((b.rev, evs));
                        }
                    }
                }
                None => {
                    for (rev, evs) in self.history_events(&range, start, cursor)? {
                        let evs: Vec<_> = evs
                            .into_iter()
                            .filter(|e| {
                                req.filter.labels.is_empty() && req.filter.fields.is_empty()
                                    || e.new
                                        .as_ref()
                                        .is_some_and(|v| watch::filter_matches(&req.filter, v))
                                    || e.prev
                                        .as_ref()
                                        .is_some_and(|v| watch::filter_matches(&req.filter, v))
                            })
                            .collect();
                        if !evs.is_empty() {
                            catchup.push((rev, evs));
                        }
                    }
                }
            }
        }
        let min_rev = start.max(cursor + 1);
        Ok(self.hub.register(
            &mut reg,
            range,
            req.filter,
            req.prev_kv,
            req.progress_notify,
            min_rev,
            self.watch_buffer,
            catchup,
        ))
    }
}

fn duplicate(key: &[u8]) -> StoreError {
    StoreError::InvalidRequest(format!(
        "duplicate key given in txn request: {}",
        String::from_utf8_lossy(key)
    ))
}

#[async_trait::async_trait]
impl Backend for Engine {
    async fn range(&self, req: RangeRequest) -> Result<RangeResponse, StoreError> {
        self.inner.range(&req)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        self.inner.txn(txn)
    }

    async fn watch(&self, req: WatchRequest) -> Result<WatchStream, StoreError> {
        Ok(Box::pin(self.inner.watch(req)?))
    }

    async fn lease_grant(
        &self,
        ttl_seconds: i64,
        id: Option<LeaseId>,
    ) -> Result<LeaseGrant, StoreError> {
        self.inner.lease_grant(ttl_seconds, id)
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, StoreError> {
        self.inner.lease_revoke(id, false)
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64, StoreError> {
        self.inner.lease_keep_alive(id)
    }

    async fn lease_time_to_live(
        &self,
        id: LeaseId,
        with_keys: bool,
    ) -> Result<LeaseTimeToLive, StoreError> {
        Ok(self.inner.lease_time_to_live(id, with_keys))
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision)
    }

    async fn status(&self) -> Result<StoreStatus, StoreError> {
        Ok(self.inner.status())
    }
}
