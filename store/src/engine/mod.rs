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
//! **Lock order:** sequencer, leases, shards (ascending index), commit queue, watch event
//! log (the commit queue is only ever *tried* from a log completion, never waited for). The watch
//! registry is taken before shards or the event log, and never while holding the sequencer.
//!
//! **Invariants:** `visible <= applied`; every version above `visible` belongs to a
//! revision still being committed; `compacted <= visible`.

mod lease;
pub mod log;
mod mvcc;
mod record;
mod wal_log;
pub mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex, RwLock};

pub use lease::{Clock, MAX_TTL_SECONDS, MIN_TTL_SECONDS, ManualClock, SystemClock};
use lease::{Lease, LeaseTable, ttl_duration};
pub use log::{AppendFuture, LogStore, MemLog};
use mvcc::{KeyRange, Shard};
use record::{Entry, Record};
use watch::{EventRec, HistorySource, RevBatch, WatchHub};

use crate::backend::{
    Backend, Compare, CompareOp, CompareTarget, LeaseGrant, LeaseId, LeaseTimeToLive, RangeRequest,
    RangeResponse, Revision, StoreStatus, Txn, TxnOp, TxnOpResponse, TxnResponse, WatchFilter,
    WatchRequest, WatchStream,
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
    /// The file I/O the WAL goes through (the std one by default; a fault-injecting one in
    /// tests).
    pub storage: Arc<dyn crate::fileio::Storage>,
    /// Take a snapshot (and truncate the WAL) once the WAL has grown by this many bytes
    /// since the last one; `None`: only on [`Engine::snapshot`] and at close.
    pub snapshot_log_bytes: Option<u64>,
    /// Most overlapped `fdatasync`s per shard WAL ([`crate::wal::WalOptions`]), 1..=64.
    pub wal_inflight_syncs: usize,
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
            storage: Arc::new(crate::fileio::StdStorage),
            snapshot_log_bytes: Some(256 << 20),
            wal_inflight_syncs: 4,
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

/// The shard that owns `key` among `n`: the substrate's stable routing hash
/// (`shards::shard_for_key`: FNV-1a 64 + murmur3 finaliser), fixed forever because on-disk
/// placement depends on it.
pub fn shard_of(key: &[u8], n: usize) -> usize {
    shards::shard_for_key(key, n).index()
}

/// The sequencer's state.
#[derive(Debug, Default)]
struct Seq {
    /// The last applied revision (the head of the revision chain; may not be durable yet).
    applied: u64,
    /// The highest revision number ever issued. Above `applied` after a failed write was
    /// rolled back, and after recovery from a crash that left log records of unacknowledged
    /// revisions past the chain's head (a later revision's shard synced before an earlier
    /// one's). Numbers are never reused, so a log never sees one twice: revisions are
    /// monotonic, not gap-free, which is all DESIGN.md promises and all clients rely on.
    issued: u64,
}

/// What to undo if a pending write's log append fails.
#[derive(Debug)]
enum Undo {
    None,
    /// A revision's applied changes.
    Changes(Vec<Change>),
    /// A lease grant.
    Grant(i64),
    /// A lease revocation (with the revision deleting its keys, if any).
    Revoke(i64, Lease, Vec<Change>),
}

/// A write waiting for its log appends, in the commit queue (revision order).
struct Pending {
    /// The revision that becomes visible when the appends are durable (0: none).
    rev: u64,
    /// Every log append of the revision, joined; `None` once resolved (or for a barrier).
    appends: Option<AppendFuture>,
    undo: Undo,
    done: futures::channel::oneshot::Sender<Result<(), StoreError>>,
    /// Set when an append failed: the pump rolls this write and every later one back.
    failed: Option<StoreError>,
}

/// The commit queue: writes whose appends are not yet known durable, in revision order.
///
/// Whoever finds the front durable publishes it: the log's own completion wakes
/// [`Inner::settle`] through [`SettleWaker`], so a durable write becomes visible and is
/// acknowledged on the WAL writer's thread, with no hand-off to another thread. Only a failed
/// append (rollback needs the sequencer) and close go through the pump thread.
#[derive(Default)]
struct Commits {
    queue: Mutex<std::collections::VecDeque<Pending>>,
    /// A settle was asked for while another thread held the queue: the holder runs again.
    dirty: AtomicBool,
}

impl std::fmt::Debug for Commits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commits").finish_non_exhaustive()
    }
}

/// The waker every queued append future is polled with: settles the commit queue.
struct SettleWaker(Weak<Inner>);

impl std::task::Wake for SettleWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(inner) = self.0.upgrade() {
            inner.settle();
        }
    }
}

type Ack = futures::channel::oneshot::Receiver<Result<(), StoreError>>;

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
    disk_quota: Option<u64>,
    watch_buffer: usize,
    clock: Arc<dyn Clock>,
    log: Option<Arc<dyn LogStore>>,
    /// Writes waiting for their log appends (with a log).
    commits: Commits,
    /// Polls the commit queue's futures (see [`Commits`]).
    settle_waker: std::task::Waker,
    /// Tells the pump thread that an append failed; `None` once closing.
    pump: Mutex<Option<mpsc::Sender<()>>>,
    /// One snapshot at a time; holds the log size after the last one and its revision.
    snapshot_state: Mutex<(u64, u64)>,
    snapshot_log_bytes: Option<u64>,
}

/// The embedded engine. Open with [`Engine::open`]; share as `Arc<Engine>` (or
/// `Arc<dyn Backend>`); stop with [`Engine::close`].
#[derive(Debug)]
pub struct Engine {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Engine {
    /// Opens an engine: in memory if `cfg.data_dir` is `None`, otherwise durable on the
    /// per-shard WALs in `data_dir` (created if missing, recovered if present; an existing
    /// directory keeps its shard count).
    ///
    /// Errors: `InvalidRequest` for a bad config; `Io` for file or thread failures;
    /// `Corrupt` if the log is damaged beyond a torn tail.
    pub fn open(cfg: EngineConfig) -> Result<Arc<Self>, StoreError> {
        match &cfg.data_dir {
            None => Self::start(cfg, None),
            Some(dir) => {
                let log = wal_log::WalLog::open(
                    dir,
                    cfg.shards.clamp(1, 4096),
                    cfg.storage.clone(),
                    cfg.disk_quota_bytes,
                    cfg.wal_inflight_syncs,
                )?;
                Self::open_with_log(cfg, Arc::new(log))
            }
        }
    }

    /// Opens an engine on `log`, recovering its state from the log's records. The engine
    /// has one data shard per log shard (`cfg.shards` is ignored).
    ///
    /// Errors: `Corrupt` if a record fails validation; as [`Engine::open`] otherwise.
    pub fn open_with_log(
        mut cfg: EngineConfig,
        log: Arc<dyn LogStore>,
    ) -> Result<Arc<Self>, StoreError> {
        cfg.shards = log.shards();
        Self::start(cfg, Some(log))
    }

    fn start(cfg: EngineConfig, log: Option<Arc<dyn LogStore>>) -> Result<Arc<Self>, StoreError> {
        if cfg.shards == 0 || cfg.shards > 4096 {
            return Err(StoreError::InvalidRequest(format!(
                "shards must be in 1..=4096, got {}",
                cfg.shards
            )));
        }
        let mut shards: Vec<Shard> = (0..cfg.shards).map(|_| Shard::default()).collect();
        let mut leases = LeaseTable::default();
        let mut seq = Seq::default();
        let mut compacted = 0;
        let mut snap_at = 0;
        if let Some(log) = &log {
            let snap_dir = log.snapshot_dir().map(|(dir, _)| dir);
            let rec = recover(
                snap_dir.as_deref(),
                log.take_recovered()?,
                &mut shards,
                &mut leases,
                cfg.clock.now(),
            )?;
            seq = Seq {
                applied: rec.head,
                issued: rec.issued,
            };
            compacted = rec.compacted;
            snap_at = rec.snapshot;
        }
        let bytes: u64 = shards.iter().map(|s| s.bytes).sum();
        let hub = Arc::new(WatchHub::new(
            seq.applied,
            cfg.event_history_events,
            cfg.progress_interval,
        ));
        let (pump_tx, pump_rx) = mpsc::channel::<()>();
        let inner = Arc::new_cyclic(|weak| Inner {
            shards: shards.into_iter().map(RwLock::new).collect(),
            visible: AtomicU64::new(seq.applied),
            seq: Mutex::new(seq),
            compacted: AtomicU64::new(compacted),
            leases: Mutex::new(leases),
            hub,
            bytes: AtomicU64::new(bytes),
            closed: AtomicBool::new(false),
            stop: (Mutex::new(false), Condvar::new()),
            memory_quota: cfg.memory_quota_bytes,
            disk_quota: cfg.disk_quota_bytes,
            watch_buffer: cfg.watch_buffer_events,
            clock: cfg.clock.clone(),
            commits: Commits::default(),
            settle_waker: std::task::Waker::from(Arc::new(SettleWaker(weak.clone()))),
            pump: Mutex::new(log.is_some().then_some(pump_tx)),
            snapshot_state: Mutex::new((log.as_ref().map_or(0, |l| l.disk_bytes()), snap_at)),
            snapshot_log_bytes: cfg.snapshot_log_bytes,
            log,
        });
        let mut threads = Vec::new();
        let hub = inner.hub.clone();
        threads.push(
            std::thread::Builder::new()
                .name("store-watch".into())
                .spawn(move || hub.run_fanout())?,
        );
        if inner.log.is_some() {
            let weak = Arc::downgrade(&inner);
            threads.push(
                std::thread::Builder::new()
                    .name("store-commit".into())
                    .spawn(move || pump_loop(&weak, &pump_rx))?,
            );
        }
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
        // Writes already sequenced finish (the pump waits for the commit queue to drain once
        // it sees the channel closed).
        drop(self.inner.pump.lock().take());
        let threads = std::mem::take(&mut *self.threads.lock());
        let had_threads = !threads.is_empty();
        for t in threads {
            let _ = t.join();
        }
        if let Some(log) = &self.inner.log
            && had_threads
        {
            // A snapshot at close makes the next open a map plus a short replay.
            if let Err(e) = self.inner.snapshot() {
                tracing::warn!(error = %e, "snapshot at close failed; the WAL still has it all");
            }
            log.close();
        }
        // Anything still queued (a write sequenced while closing) can no longer settle.
        let left: Vec<Pending> = self.inner.commits.queue.lock().drain(..).collect();
        for p in left {
            let _ = p
                .done
                .send(Err(StoreError::Unavailable("store closed".into())));
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

    /// Writes a snapshot of every shard at the visible revision (every retained version,
    /// so reads and watches at older revisions keep working after a restart), then drops
    /// the WAL records it covers. Returns the snapshot's revision (0: nothing to do, e.g.
    /// no log). Runs automatically once the WAL grows by `snapshot_log_bytes`, and at close.
    pub fn snapshot(&self) -> Result<Revision, StoreError> {
        self.inner.snapshot().map(Revision)
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

fn lease_loop(inner: &Weak<Inner>, every: Duration) {
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
        if let Err(e) = i.maybe_snapshot() {
            tracing::warn!(error = %e, "background snapshot failed; will retry");
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
        skip_count: bool,
    ) -> Result<RangeResponse, StoreError> {
        let limit = limit
            .filter(|l| *l > 0)
            .map(|l| usize::try_from(l).unwrap_or(usize::MAX));
        if range.is_single() {
            // The common GET: one shard, one key, no merge.
            let shard = self.shards[self.shard_for(&range.start)].read();
            if rev < shard.compacted {
                return Err(StoreError::Compacted {
                    requested: Revision(rev),
                    compact_revision: Revision(shard.compacted),
                });
            }
            let env = shard.get(&range.start, rev).cloned();
            drop(shard);
            let count = u64::from(env.is_some());
            let kvs = match env {
                Some(e) if !count_only => vec![if keys_only {
                    e.key_value_keys_only()
                } else {
                    e.key_value()
                }],
                _ => Vec::new(),
            };
            return Ok(RangeResponse {
                kvs,
                more: false,
                count,
                revision: Revision(rev),
            });
        }
        let mut found: Vec<Envelope> = Vec::new();
        let mut count = 0u64;
        // Without a total to report, a shard's scan stops one key past the limit: that key
        // proves `more`, and no shard's keys past it can be among the first `limit`.
        let stop_after = limit.filter(|_| skip_count && !count_only);
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
                    return true;
                }
                stop_after.is_none()
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

    /// The revision a read of `req` is served at (latest when none is given), after checking
    /// the range end and that the revision is neither in the future nor compacted.
    fn read_revision(&self, req: &RangeRequest) -> Result<u64, StoreError> {
        check_range_end(&req.key, &req.range_end)?;
        let visible = self.visible();
        let rev = match req.revision {
            None | Some(Revision(0)) => visible,
            Some(r) if r.0 > visible => {
                return Err(StoreError::FutureRevision {
                    requested: r,
                    current: Revision(visible),
                });
            }
            Some(r) => r.0,
        };
        let compacted = self.compacted.load(Ordering::Acquire);
        if rev < compacted {
            return Err(StoreError::Compacted {
                requested: Revision(rev),
                compact_revision: Revision(compacted),
            });
        }
        Ok(rev)
    }

    fn range(&self, req: &RangeRequest) -> Result<RangeResponse, StoreError> {
        let rev = self.read_revision(req)?;
        let range = KeyRange::new(&req.key, &req.range_end);
        let mut resp = self.read(
            &range,
            rev,
            req.limit,
            req.keys_only,
            req.count_only,
            req.skip_count,
        )?;
        // A latest read reports the store's revision, which may have moved past `rev` only
        // by revisions this read did not see; report the one it was served at.
        resp.revision = Revision(rev);
        Ok(resp)
    }

    /// [`Backend::list_raw`] on the envelopes: the filter is checked on each envelope in
    /// place, and only the matching ones' key and raw bytes (shared, not copied) come out.
    fn list_raw(
        &self,
        req: &RangeRequest,
        filter: &crate::WatchFilter,
    ) -> Result<crate::RawList, StoreError> {
        let rev = self.read_revision(req)?;
        let range = KeyRange::new(&req.key, &req.range_end);
        let limit = req
            .limit
            .filter(|l| *l > 0)
            .map(|l| usize::try_from(l).unwrap_or(usize::MAX));
        let mut found: Vec<crate::RawKv> = Vec::new();
        for s in self.shards_of(&range) {
            let shard = self.shards[s].read();
            if rev < shard.compacted {
                return Err(StoreError::Compacted {
                    requested: Revision(rev),
                    compact_revision: Revision(shard.compacted),
                });
            }
            // Each shard stops one match past the limit: that match proves `resume`, and no
            // shard's matches past it can be among the first `limit`.
            let mut taken = 0usize;
            shard.scan(&range, rev, |env| {
                if watch::filter_matches(filter, env) {
                    found.push(crate::RawKv {
                        key: env.key(),
                        raw: env.raw(),
                    });
                    taken += 1;
                }
                limit.is_none_or(|l| taken <= l)
            });
        }
        // Each shard's matches are sorted already: this merges the runs.
        found.sort_by(|a, b| a.key.cmp(&b.key));
        let resume = match limit {
            Some(l) if found.len() > l => {
                let next = found[l].key.clone();
                found.truncate(l);
                Some(next)
            }
            _ => None,
        };
        Ok(crate::RawList {
            items: found,
            resume,
            revision: Revision(rev),
        })
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
                    let mut resp =
                        self.read(&range, at, r.limit, r.keys_only, r.count_only, r.skip_count)?;
                    resp.revision = Revision(rev);
                    TxnOpResponse::Range(resp)
                }
            };
            responses.push(r);
        }
        Ok(responses)
    }

    /// Runs a transaction under the sequencer. The response is final once the returned ack
    /// (if any) resolves `Ok`: the write (or, for a read, the state it saw) is durable.
    fn txn(&self, txn: Txn) -> Result<(TxnResponse, Option<Ack>), StoreError> {
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
            let resp = TxnResponse {
                succeeded,
                revision: Revision(current),
                responses,
            };
            return Ok((resp, self.barrier(&seq)));
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
        if grow > 0 {
            self.check_quota(grow)?;
        }
        let rev = seq.issued.max(current) + 1;
        let mut changes = Vec::new();
        let responses = match self.apply_ops(ops, rev, &mut changes) {
            Ok(r) => r,
            Err(e) => {
                self.rollback(rev, &changes);
                return Err(e);
            }
        };
        if changes.is_empty() {
            let resp = TxnResponse {
                succeeded,
                revision: Revision(current),
                responses,
            };
            return Ok((resp, self.barrier(&seq)));
        }
        seq.applied = rev;
        seq.issued = rev;
        let ack = self.commit(rev, current, changes, Vec::new(), Undo::Changes);
        Ok((
            TxnResponse {
                succeeded,
                revision: Revision(rev),
                responses,
            },
            ack,
        ))
    }

    fn check_quota(&self, grow: u64) -> Result<(), StoreError> {
        if let Some(q) = self.memory_quota {
            let held = self.bytes.load(Ordering::Acquire);
            if held + grow > q {
                return Err(StoreError::QuotaExceeded(format!(
                    "memory quota of {q} bytes: {held} held, {grow} more requested"
                )));
            }
        }
        if let (Some(q), Some(log)) = (self.disk_quota, &self.log) {
            let used = log.disk_bytes();
            if used + grow > q {
                return Err(StoreError::QuotaExceeded(format!(
                    "disk quota of {q} bytes: {used} used, {grow} more requested"
                )));
            }
        }
        Ok(())
    }

    /// With a log: an ack that resolves once everything applied so far is durable (for
    /// responses that reflect applied state without writing).
    fn barrier(&self, seq: &Seq) -> Option<Ack> {
        if self.log.is_none() || seq.applied <= self.visible() {
            return None;
        }
        self.enqueue(0, Vec::new(), Undo::None)
    }

    /// Queues a pending write (sequencer held, so the queue is in revision order) and
    /// settles what is durable. `None` only without a log.
    fn enqueue(&self, rev: u64, appends: Vec<AppendFuture>, undo: Undo) -> Option<Ack> {
        self.log.as_ref()?;
        let (done, ack) = futures::channel::oneshot::channel();
        if self.pump.lock().is_none() {
            let _ = done.send(Err(StoreError::Unavailable("store closed".into())));
            return Some(ack);
        }
        // Polled outside tokio's cooperative budget: inside a task the budget could answer
        // Pending and wake at once, from inside `settle`.
        let appends: Option<AppendFuture> = match appends.len() {
            0 => None,
            1 => appends
                .into_iter()
                .next()
                .map(|a| -> AppendFuture { Box::pin(tokio::task::unconstrained(a)) }),
            _ => Some(Box::pin(tokio::task::unconstrained(async move {
                futures::future::join_all(appends)
                    .await
                    .into_iter()
                    .find_map(Result::err)
                    .map_or(Ok(()), Err)
            }))),
        };
        self.commits.queue.lock().push_back(Pending {
            rev,
            appends,
            undo,
            done,
            failed: None,
        });
        self.settle();
        Some(ack)
    }

    /// Publishes and acknowledges every durable write at the front of the commit queue.
    /// Called by the log's completions (through [`SettleWaker`]) and after each enqueue;
    /// never blocks on the queue: a caller finding it busy leaves the work to the holder.
    fn settle(&self) {
        self.commits.dirty.store(true, Ordering::SeqCst);
        // Bounded: each round either takes the queue and clears `dirty`, or leaves.
        loop {
            let Some(mut q) = self.commits.queue.try_lock() else {
                return;
            };
            while self.commits.dirty.swap(false, Ordering::SeqCst) {
                self.settle_front(&mut q);
            }
            drop(q);
            if !self.commits.dirty.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    /// Settles the durable front of the queue (queue held). A failed front stays, marked,
    /// for the pump thread.
    fn settle_front(&self, q: &mut std::collections::VecDeque<Pending>) {
        let mut cx = std::task::Context::from_waker(&self.settle_waker);
        while let Some(front) = q.front_mut() {
            if front.failed.is_some() {
                return;
            }
            let ready = match front.appends.as_mut() {
                None => std::task::Poll::Ready(Ok(())),
                Some(f) => f.as_mut().poll(&mut cx),
            };
            match ready {
                std::task::Poll::Pending => return,
                std::task::Poll::Ready(Ok(())) => {
                    if let Some(p) = q.pop_front() {
                        self.durable(p);
                    }
                }
                std::task::Poll::Ready(Err(e)) => {
                    front.appends = None;
                    front.failed = Some(e);
                    if let Some(tx) = &*self.pump.lock() {
                        let _ = tx.send(());
                    }
                    return;
                }
            }
        }
    }

    /// After a revision applied (sequencer held): lease attachments, then either
    /// visibility and watch events right away (no log) or the log appends, with visibility
    /// left to the commit queue. `extra` records go to shard 0 after the revision's parts.
    fn commit(
        &self,
        rev: u64,
        prev: u64,
        changes: Vec<Change>,
        extra: Vec<Record>,
        undo: impl FnOnce(Vec<Change>) -> Undo,
    ) -> Option<Ack> {
        self.attach_leases(&changes);
        let Some(log) = &self.log else {
            self.publish(rev, changes);
            return None;
        };
        let mut by_shard: std::collections::BTreeMap<usize, Vec<Entry>> = Default::default();
        for c in &changes {
            let e = match &c.new {
                Some(env) => Entry::Put(env.clone()),
                None => Entry::Delete(c.key.clone()),
            };
            by_shard.entry(c.shard).or_default().push(e);
        }
        let parts = u16::try_from(by_shard.len()).unwrap_or(u16::MAX);
        let mut appends = Vec::with_capacity(by_shard.len() + extra.len());
        for (s, entries) in by_shard {
            let payload = record::encode(&Record::Part {
                rev,
                prev,
                parts,
                entries,
            });
            appends.push(log.append(s, payload, rev));
        }
        for r in &extra {
            appends.push(log.append(0, record::encode(r), rev));
        }
        self.enqueue(rev, appends, undo(changes))
    }

    fn attach_leases(&self, changes: &[Change]) {
        let mut leases = self.leases.lock();
        for c in changes {
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

    fn detach_leases(&self, changes: &[Change]) {
        let mut leases = self.leases.lock();
        for c in changes.iter().rev() {
            let old = c.prev.as_ref().and_then(Envelope::lease);
            let new = c.new.as_ref().and_then(Envelope::lease);
            if let Some(n) = new {
                leases.detach(n, &c.key);
            }
            if let Some(o) = old {
                leases.attach(o, &c.key);
            }
        }
    }

    /// Makes `rev` visible and hands its events to watchers (in revision order).
    fn publish(&self, rev: u64, mut changes: Vec<Change>) {
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

    /// A pending write's appends are durable: it becomes visible and is acknowledged.
    fn durable(&self, p: Pending) {
        match p.undo {
            Undo::Changes(changes) | Undo::Revoke(_, _, changes) if p.rev > 0 => {
                self.publish(p.rev, changes);
            }
            _ => {}
        }
        let _ = p.done.send(Ok(()));
    }

    /// The pump: if the front write's append failed, it and every write sequenced after it
    /// are rolled back and fail; the store stays readable and takes new writes (which
    /// follow the last durable revision in the log's chain).
    fn fail_front(&self) {
        let mut seq = self.seq.lock();
        let mut q = self.commits.queue.lock();
        let Some(err) = q.front_mut().and_then(|p| p.failed.take()) else {
            return;
        };
        let mut items: Vec<Pending> = q.drain(..).collect();
        drop(q);
        for p in items.iter_mut().rev() {
            match std::mem::replace(&mut p.undo, Undo::None) {
                Undo::None => {}
                Undo::Changes(changes) => {
                    self.rollback(p.rev, &changes);
                    self.detach_leases(&changes);
                }
                Undo::Grant(id) => {
                    self.leases.lock().leases.remove(&id);
                }
                Undo::Revoke(id, lease, changes) => {
                    self.rollback(p.rev, &changes);
                    self.leases.lock().leases.insert(id, lease);
                    self.detach_leases(&changes);
                }
            }
        }
        seq.applied = self.visible();
        drop(seq);
        tracing::warn!(error = %err, failed = items.len(), "log append failed; writes rolled back");
        let mut err = Some(err);
        for p in items {
            let e = err.take().unwrap_or_else(|| {
                StoreError::Unavailable("an earlier write failed to become durable".into())
            });
            let _ = p.done.send(Err(e));
        }
    }

    fn lease_grant(
        &self,
        ttl: i64,
        id: Option<LeaseId>,
    ) -> Result<(LeaseGrant, Option<Ack>), StoreError> {
        self.check_open()?;
        if ttl > MAX_TTL_SECONDS {
            return Err(StoreError::InvalidRequest(format!(
                "lease TTL {ttl} exceeds the maximum {MAX_TTL_SECONDS}"
            )));
        }
        let ttl = ttl.max(MIN_TTL_SECONDS);
        let seq = self.seq.lock();
        let id = {
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
            id
        };
        let ack = self.log.as_ref().and_then(|log| {
            let f = log.append(
                0,
                record::encode(&Record::LeaseGrant { id, ttl }),
                seq.issued.max(seq.applied),
            );
            self.enqueue(0, vec![f], Undo::Grant(id))
        });
        Ok((
            LeaseGrant {
                id: LeaseId(id),
                ttl_seconds: ttl,
            },
            ack,
        ))
    }

    /// Revokes a lease (deleting its keys at one new revision). `only_if_expired` makes it a
    /// no-op for a lease that was renewed meanwhile (the expiry task's race).
    fn lease_revoke(
        &self,
        id: LeaseId,
        only_if_expired: bool,
    ) -> Result<(Revision, Option<Ack>), StoreError> {
        self.check_open()?;
        let mut seq = self.seq.lock();
        let lease = {
            let mut leases = self.leases.lock();
            let now = self.clock.now();
            match leases.leases.get(&id.0) {
                None => return Err(StoreError::LeaseNotFound(id.0)),
                Some(l) if only_if_expired && l.expiry > now => {
                    return Ok((Revision(seq.applied), None));
                }
                Some(_) => {}
            }
            match leases.leases.remove(&id.0) {
                Some(l) => l,
                None => return Err(StoreError::LeaseNotFound(id.0)),
            }
        };
        let ops: Vec<TxnOp> = lease
            .keys
            .iter()
            .map(|key| TxnOp::Delete {
                key: key.clone(),
                range_end: crate::RangeEnd::Single,
                prev_kv: false,
            })
            .collect();
        let current = seq.applied;
        let rev = seq.issued.max(current) + 1;
        let mut changes = Vec::new();
        if let Err(e) = self.apply_ops(ops, rev, &mut changes) {
            self.rollback(rev, &changes);
            self.leases.lock().leases.insert(id.0, lease);
            return Err(e);
        }
        let revoke = Record::LeaseRevoke { id: id.0 };
        if changes.is_empty() {
            let ack = self.log.as_ref().and_then(|log| {
                let f = log.append(0, record::encode(&revoke), seq.issued.max(current));
                self.enqueue(0, vec![f], Undo::Revoke(id.0, lease, Vec::new()))
            });
            return Ok((Revision(current), ack));
        }
        seq.applied = rev;
        seq.issued = rev;
        let ack = self.commit(rev, current, changes, vec![revoke], move |c| {
            Undo::Revoke(id.0, lease, c)
        });
        Ok((Revision(rev), ack))
    }

    fn expire_leases(&self) -> Result<usize, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Ok(0);
        }
        let expired = self.leases.lock().expired(self.clock.now());
        let mut n = 0;
        let mut acks = Vec::new();
        for id in expired {
            match self.lease_revoke(id, true) {
                Ok((_, ack)) => {
                    n += 1;
                    acks.extend(ack);
                }
                Err(StoreError::LeaseNotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        // Wait (bounded, without an executor: callers may be inside one) until the
        // revocations are durable, so the caller observes them.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for mut ack in acks {
            loop {
                match ack.try_recv() {
                    Ok(Some(r)) => {
                        r?;
                        break;
                    }
                    Ok(None) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    Ok(None) => {
                        return Err(StoreError::Unavailable(
                            "lease revocation not durable within 10s".into(),
                        ));
                    }
                    Err(_) => return Err(StoreError::Unavailable("store closed".into())),
                }
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

    fn compact(&self, rev: Revision) -> Result<Option<Ack>, StoreError> {
        self.check_open()?;
        let seq = self.seq.lock();
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
        // Compaction is not undone if its record fails: the history is gone from memory
        // either way, and a restart without the record merely keeps more history.
        Ok(self.log.as_ref().and_then(|log| {
            let f = log.append(
                0,
                record::encode(&Record::Compact { rev: rev.0 }),
                seq.issued.max(seq.applied),
            );
            self.enqueue(0, vec![f], Undo::None)
        }))
    }

    fn maybe_snapshot(&self) -> Result<(), StoreError> {
        let (Some(every), Some(log)) = (self.snapshot_log_bytes, &self.log) else {
            return Ok(());
        };
        let (last, _) = *self.snapshot_state.lock();
        if log.disk_bytes() >= last.saturating_add(every) {
            self.snapshot()?;
        }
        Ok(())
    }

    fn snapshot(&self) -> Result<u64, StoreError> {
        let Some(log) = &self.log else {
            return Ok(0);
        };
        let Some((dir, storage)) = log.snapshot_dir() else {
            return Ok(0);
        };
        let mut state = self.snapshot_state.lock();
        if self.visible() == state.1 {
            return Ok(state.1); // nothing new since the last snapshot (or an empty store)
        }
        // Capture under the sequencer: versions at or below the visible revision are then
        // fixed (compaction also runs under it); cloning envelopes is cheap.
        let (rev, meta, per_shard) = {
            let mut seq = self.seq.lock();
            let rev = self.visible();
            // Every record appended from now on carries a revision above `rev`, so the WAL can
            // drop everything up to `rev` inclusive once the snapshot is durable (a revision
            // number is skipped; numbers are never required to be dense).
            seq.issued = seq.issued.max(seq.applied) + 1;
            let leases: Vec<(i64, i64)> = self
                .leases
                .lock()
                .leases
                .iter()
                .map(|(id, l)| (*id, l.ttl))
                .collect();
            let meta = encode_meta(
                self.compacted.load(Ordering::Acquire),
                seq.issued.max(seq.applied),
                &leases,
            );
            let per_shard: Vec<Vec<(Vec<u8>, Bytes)>> = self
                .shards
                .iter()
                .map(|sh| {
                    let sh = sh.read();
                    let mut out = Vec::with_capacity(sh.keys.len());
                    for (k, h) in &sh.keys {
                        for v in h.iter().filter(|v| v.rev <= rev) {
                            let ck = snapshot_key(k, v.rev);
                            let val = v
                                .value
                                .as_ref()
                                .map_or_else(Bytes::new, |e| e.as_bytes().clone());
                            out.push((ck, val));
                        }
                    }
                    out
                })
                .collect();
            (rev, meta, per_shard)
        };
        for (i, mut entries) in per_shard.into_iter().enumerate() {
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let shard = u16::try_from(i).unwrap_or(u16::MAX);
            crate::snapshot::write_snapshot(
                storage.as_ref(),
                &dir.join(format!("shard-{i:03}")),
                shard,
                Revision(rev),
                &meta,
                entries.iter().map(|(k, v)| (&k[..], &v[..])),
            )?;
        }
        log.truncate_before(rev + 1)?;
        *state = (log.disk_bytes(), rev);
        Ok(rev)
    }

    fn status(&self) -> StoreStatus {
        StoreStatus {
            revision: Revision(self.visible()),
            compact_revision: Revision(self.compacted.load(Ordering::Acquire)),
            db_size_bytes: self.log.as_ref().map_or(0, |l| l.disk_bytes()),
            db_size_in_use_bytes: self.bytes.load(Ordering::Acquire),
            version: concat!("kubeshard-engine ", env!("CARGO_PKG_VERSION")).into(),
        }
    }

    /// Catch-up events for `range` in revisions `[from, to]` that pass `passes`, read from
    /// the MVCC history, in whole revisions up to the first that brings the count to
    /// `max_events`; also the next revision to read. Holds at most about `max_events`
    /// events (and as many revision numbers while it finds the cut).
    fn history_events(
        &self,
        range: &KeyRange,
        passes: &dyn Fn(&EventRec) -> bool,
        from: u64,
        to: u64,
        max_events: usize,
    ) -> Result<(watch::RevEvents, u64), StoreError> {
        // Every matching version of `[from, to]` as an event, shard by shard.
        let visit = |to: u64, f: &mut dyn FnMut(EventRec)| -> Result<(), StoreError> {
            for s in self.shards_of(range) {
                let shard = self.shards[s].read();
                if from < shard.compacted {
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
                        let e = EventRec {
                            rev: v.rev,
                            key: key.clone(),
                            new: v.value.clone(),
                            prev,
                        };
                        if passes(&e) {
                            f(e);
                        }
                    }
                }
            }
            Ok(())
        };
        // First pass (only when the window may be larger than a chunk): the smallest
        // `max_events` revisions, kept in a bounded max-heap, give the last revision to read.
        let mut cut = to;
        if max_events < usize::MAX {
            let mut smallest = std::collections::BinaryHeap::with_capacity(max_events.min(1 << 16));
            let mut matched = 0usize;
            visit(to, &mut |e| {
                matched += 1;
                if smallest.len() < max_events.max(1) {
                    smallest.push(e.rev);
                } else if smallest.peek().is_some_and(|top| e.rev < *top) {
                    smallest.pop();
                    smallest.push(e.rev);
                }
            })?;
            if matched > max_events.max(1)
                && let Some(top) = smallest.peek()
            {
                cut = *top;
            }
        }
        let mut all: Vec<Arc<EventRec>> = Vec::new();
        visit(cut, &mut |e| all.push(Arc::new(e)))?;
        all.sort_by(|a, b| a.rev.cmp(&b.rev).then_with(|| a.key.cmp(&b.key)));
        let mut out: watch::RevEvents = Vec::new();
        for e in all {
            match out.last_mut() {
                Some((r, evs)) if *r == e.rev => evs.push(e),
                _ => out.push((e.rev, vec![e])),
            }
        }
        Ok((out, cut + 1))
    }

    /// Registers a watcher. Catch-up (revisions already fanned out) is collected without the
    /// registry lock, which the fan-out thread needs for every delivery: a watch from an old
    /// revision must not stall every other watcher while it reads history. Only the few
    /// revisions fanned out meanwhile are read under the lock. A catch-up larger than one
    /// chunk is left to the stream, which reads it chunk by chunk as the consumer takes it.
    fn watch(self: &Arc<Self>, req: WatchRequest) -> Result<watch::WatchStreamImpl, StoreError> {
        self.check_open()?;
        check_range_end(&req.key, &req.range_end)?;
        let range = KeyRange::new(&req.key, &req.range_end);
        let start = match req.start_revision {
            None | Some(Revision(0)) => self.visible() + 1,
            Some(r) => r.0,
        };
        let compacted = self.compacted.load(Ordering::Acquire);
        // As etcd: watching from the compaction point itself is allowed (the versions at
        // it are kept); only below it is compacted.
        if compacted > 0 && start < compacted {
            return Err(StoreError::Compacted {
                requested: Revision(start),
                compact_revision: Revision(compacted),
            });
        }
        let chunk = watch::CATCHUP_CHUNK_EVENTS;
        let mut catchup = Vec::new();
        // Revisions below `next` are in `catchup` (or were before `start`).
        let mut next = start;
        // One pass without the registry lock reads the bulk.
        let cursor = self.hub.reg.lock().cursor;
        let mut pending = false;
        if next <= cursor {
            let (evs, n) = self.catchup_chunk(&range, &req.filter, next, cursor, chunk)?;
            catchup.extend(evs);
            next = n;
            pending = next <= cursor;
        }
        let mut reg = self.hub.reg.lock();
        let cursor = reg.cursor;
        if !pending && next <= cursor {
            // Revisions fanned out meanwhile, read under the lock.
            let (evs, n) = self.catchup_chunk(&range, &req.filter, next, cursor, chunk)?;
            catchup.extend(evs);
            next = n;
            pending = next <= cursor;
        }
        let weak: Weak<Inner> = Arc::downgrade(self);
        Ok(self.hub.register(
            &mut reg,
            range,
            req.filter,
            req.prev_kv,
            req.progress_notify,
            start,
            self.watch_buffer,
            catchup,
            pending.then_some(next),
            weak,
        ))
    }
}

impl watch::HistorySource for Inner {
    /// From the event ring when it still holds the revisions, else from the MVCC history.
    fn catchup_chunk(
        &self,
        range: &KeyRange,
        filter: &WatchFilter,
        from: u64,
        to: u64,
        max_events: usize,
    ) -> Result<(watch::RevEvents, u64), StoreError> {
        let unfiltered = filter.labels.is_empty() && filter.fields.is_empty();
        let passes = |e: &EventRec| {
            unfiltered
                || e.new
                    .as_ref()
                    .is_some_and(|v| watch::filter_matches(filter, v))
                || e.prev
                    .as_ref()
                    .is_some_and(|v| watch::filter_matches(filter, v))
        };
        match self.hub.history(from, to) {
            Some(batches) => {
                let mut out = Vec::new();
                let mut taken = 0usize;
                for b in batches {
                    let evs: Vec<_> = b
                        .events
                        .iter()
                        .filter(|e| range.contains(&e.key) && passes(e))
                        .cloned()
                        .collect();
                    if !evs.is_empty() {
                        taken += evs.len();
                        out.push((b.rev, evs));
                    }
                    if taken >= max_events {
                        return Ok((out, b.rev + 1));
                    }
                }
                Ok((out, to + 1))
            }
            None => self.history_events(range, &passes, from, to, max_events),
        }
    }
}

/// Waits for a pending write's acknowledgement.
async fn wait(ack: Option<Ack>) -> Result<(), StoreError> {
    match ack {
        None => Ok(()),
        Some(rx) => rx.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "store closed before the write became durable".into(),
            ))
        }),
    }
}

/// The pump: rolls back after a failed append, and at close waits for the commit queue to
/// drain. Durable writes are settled by the log's completions, not here (the periodic
/// settle is only a safety net).
fn pump_loop(inner: &Weak<Inner>, rx: &mpsc::Receiver<()>) {
    // Until the channel closes (close drops the sender).
    while let Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) =
        rx.recv_timeout(Duration::from_millis(100))
    {
        let Some(i) = inner.upgrade() else { return };
        i.fail_front();
        i.settle();
    }
    // Closing: every write sequenced so far settles (bounded in time: the WAL answers every
    // append, but a stuck disk must not hang close forever).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let Some(i) = inner.upgrade() else { return };
        i.fail_front();
        i.settle();
        if i.commits.queue.lock().is_empty() || std::time::Instant::now() > deadline {
            return;
        }
        drop(i);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// What recovery found.
struct Recovered {
    /// The last revision of the chain (the recovered store's revision).
    head: u64,
    /// The highest revision number in the log.
    issued: u64,
    compacted: u64,
    /// The newest revision every shard's snapshot covers (0: none).
    snapshot: u64,
}

/// Rebuilds shards and leases from the log's records (see `record` for the chain rule).
fn recover(
    snap_dir: Option<&std::path::Path>,
    records: Vec<Vec<(u64, Bytes)>>,
    shards: &mut [Shard],
    leases: &mut LeaseTable,
    now: Duration,
) -> Result<Recovered, StoreError> {
    let n = shards.len();
    // Snapshots first (every retained version up to each shard's snapshot revision), one
    // thread per shard: each maps, checks and loads its own shard's newest snapshot, so the
    // checksum and structure checks of the shards run in parallel too.
    let mut snap_rev = vec![0u64; n];
    let mut meta: Option<(u64, Meta)> = None;
    let loaded: Vec<Result<Option<LoadedShard>, StoreError>> = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..n)
            .filter(|_| snap_dir.is_some())
            .map(|i| {
                sc.spawn(move || {
                    let Some(dir) = snap_dir else { return Ok(None) };
                    let shard = u16::try_from(i).unwrap_or(u16::MAX);
                    let snap = crate::snapshot::Snapshot::open_latest(
                        &dir.join(format!("shard-{i:03}")),
                        shard,
                    )?;
                    snap.map(|s| load_snapshot(&s, i, n)).transpose()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(StoreError::Corrupt("snapshot loading panicked".into()))
                })
            })
            .collect()
    });
    for (i, l) in loaded.into_iter().enumerate() {
        let Some(l) = l? else { continue };
        if let Some(r) = snap_rev.get_mut(i) {
            *r = l.rev;
        }
        if meta.as_ref().is_none_or(|(r, _)| l.rev > *r) {
            meta = Some((l.rev, l.meta));
        }
        if let Some(s) = shards.get_mut(i) {
            *s = l.shard;
        }
    }
    let mut meta_issued = 0;
    let mut meta_compacted = 0;
    if let Some((_, m)) = meta {
        meta_issued = m.issued;
        meta_compacted = m.compacted;
        for (id, ttl) in m.leases {
            leases.grant(id, ttl, now);
        }
    }
    let start = if !snap_rev.is_empty() && snap_rev.iter().all(|r| *r > 0) {
        snap_rev.iter().copied().min().unwrap_or(0)
    } else {
        0
    };
    struct Rev {
        prev: u64,
        parts: u16,
        got: u16,
        entries: Vec<Entry>,
    }
    let mut revs: std::collections::HashMap<u64, Rev> = Default::default();
    let mut issued = 0u64;
    let mut compacts = Vec::new();
    for shard_records in records {
        for (wal_rev, payload) in shard_records {
            issued = issued.max(wal_rev);
            match record::decode(payload)? {
                Record::Part {
                    rev,
                    prev,
                    parts,
                    entries,
                } => {
                    issued = issued.max(rev);
                    let r = revs.entry(rev).or_insert(Rev {
                        prev,
                        parts,
                        got: 0,
                        entries: Vec::new(),
                    });
                    if r.prev != prev || r.parts != parts {
                        return Err(StoreError::Corrupt(format!(
                            "revision {rev}: parts disagree on their chain position"
                        )));
                    }
                    r.got += 1;
                    r.entries.extend(entries);
                }
                Record::LeaseGrant { id, ttl } => leases.grant(id, ttl, now),
                Record::LeaseRevoke { id } => {
                    leases.leases.remove(&id);
                }
                Record::Compact { rev } => compacts.push(rev),
            }
        }
    }
    let mut next: std::collections::HashMap<u64, u64> = Default::default();
    for (rev, r) in &revs {
        if r.got == r.parts {
            let e = next.entry(r.prev).or_insert(*rev);
            *e = (*e).max(*rev);
        }
    }
    let mut head = start;
    while let Some(rev) = next.get(&head).copied() {
        let Some(r) = revs.remove(&rev) else { break };
        for e in r.entries {
            let (key, value) = match e {
                Entry::Put(env) => (env.key(), Some(env)),
                Entry::Delete(k) => (k, None),
            };
            let k = shard_of(&key, n);
            if rev <= snap_rev[k] {
                continue; // the snapshot has it
            }
            let s = &mut shards[k];
            if value.is_none() && s.get(&key, rev).is_none() {
                return Err(StoreError::Corrupt(format!(
                    "revision {rev} deletes a key that does not exist"
                )));
            }
            if !s.push(key, rev, value) {
                return Err(StoreError::Corrupt(format!(
                    "revision {rev} writes a key twice"
                )));
            }
        }
        head = rev;
    }
    // Attach keys to their leases; keys whose lease is gone get an expired stand-in, so the
    // expiry task deletes them (their lease was revoked or its grant lost).
    for s in shards.iter() {
        for (key, h) in &s.keys {
            let Some(l) = h
                .last()
                .and_then(|v| v.value.as_ref())
                .and_then(Envelope::lease)
            else {
                continue;
            };
            let lease = leases.leases.entry(l.0).or_insert_with(|| Lease {
                ttl: 1,
                expiry: now,
                keys: Default::default(),
            });
            lease.keys.insert(key.clone());
        }
    }
    let compacted = compacts
        .into_iter()
        .filter(|c| *c <= head)
        .max()
        .unwrap_or(0)
        .max(meta_compacted);
    let issued = issued.max(meta_issued).max(head);
    if compacted > 0 {
        for s in shards.iter_mut() {
            s.compact(compacted);
        }
    }
    Ok(Recovered {
        head,
        issued,
        compacted,
        snapshot: start,
    })
}

/// A snapshot entry's key: the object key, zero padding, the revision (big-endian) and the
/// key length (big-endian u32), padded so its length is a multiple of 16. Every key and
/// value blob in the snapshot archive then has a length that is a multiple of 16, so the
/// envelopes land 16-byte aligned in the mapped file and are used in place.
fn snapshot_key(key: &[u8], rev: u64) -> Vec<u8> {
    let len = (key.len() + 12).div_ceil(16) * 16;
    let mut ck = Vec::with_capacity(len);
    ck.extend_from_slice(key);
    ck.resize(len - 12, 0);
    ck.extend_from_slice(&rev.to_be_bytes());
    ck.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
    ck
}

/// Splits a snapshot entry key into (key length, revision).
fn parse_snapshot_key(ck: &[u8]) -> Option<(usize, u64)> {
    if ck.len() < 16 || !ck.len().is_multiple_of(16) {
        return None;
    }
    let tail = &ck[ck.len() - 12..];
    let mut rb = [0u8; 8];
    rb.copy_from_slice(&tail[..8]);
    let klen = u32::from_be_bytes([tail[8], tail[9], tail[10], tail[11]]) as usize;
    if klen == 0 || klen > ck.len() - 12 || ck[klen..ck.len() - 12].iter().any(|b| *b != 0) {
        return None;
    }
    Some((klen, u64::from_be_bytes(rb)))
}

/// One shard rebuilt from its snapshot.
struct LoadedShard {
    rev: u64,
    meta: Meta,
    shard: Shard,
}

/// Rebuilds shard `i` of `n` from its snapshot: validates every entry (envelopes through
/// their checked decoder, in place when aligned) and bulk-builds the key map.
fn load_snapshot(
    snap: &crate::snapshot::Snapshot,
    i: usize,
    n: usize,
) -> Result<LoadedShard, StoreError> {
    let srev = snap.revision().0;
    let meta = decode_meta(&snap.meta())?;
    let bad = |what: &str| StoreError::Corrupt(format!("snapshot of shard {i}: {what}"));
    let mut versions: Vec<(Bytes, u64, Option<Envelope>)> = Vec::with_capacity(snap.len());
    let mut bytes = 0u64;
    for (ck, val) in snap.iter() {
        let (klen, rev) = parse_snapshot_key(&ck).ok_or_else(|| bad("malformed entry key"))?;
        if rev > srev {
            return Err(bad("entry above the snapshot revision"));
        }
        let key = ck.slice(..klen);
        if shard_of(&key, n) != i {
            return Err(bad("key of another shard"));
        }
        let value = if val.is_empty() {
            None
        } else {
            // The snapshot's body checksum already covered these bytes.
            let env = Envelope::decode_checksummed(val)?;
            if env.key_ref() != &key[..] || env.mod_revision().0 != rev {
                return Err(bad("entry does not match its envelope"));
            }
            bytes += env.len() as u64;
            Some(env)
        };
        versions.push((key, rev, value));
    }
    // Entry keys sort by key then revision except for pathological keys; make it exact.
    versions.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut grouped: Vec<(Bytes, mvcc::History)> = Vec::new();
    for (key, rev, value) in versions {
        match grouped.last_mut() {
            Some((k, h)) if *k == key => {
                if h.last().is_some_and(|v| v.rev >= rev) {
                    return Err(bad("duplicate version"));
                }
                h.push(mvcc::Version { rev, value });
            }
            _ => grouped.push((key, vec![mvcc::Version { rev, value }])),
        }
    }
    Ok(LoadedShard {
        rev: srev,
        meta,
        shard: Shard {
            // Sorted input: the map is bulk-built, not inserted key by key.
            keys: grouped.into_iter().collect(),
            compacted: 0,
            bytes,
        },
    })
}

/// Engine state stored beside the shards in a snapshot.
struct Meta {
    compacted: u64,
    issued: u64,
    leases: Vec<(i64, i64)>,
}

fn encode_meta(compacted: u64, issued: u64, leases: &[(i64, i64)]) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + leases.len() * 16);
    b.push(1u8);
    b.extend_from_slice(&[0u8; 7]);
    b.extend_from_slice(&compacted.to_le_bytes());
    b.extend_from_slice(&issued.to_le_bytes());
    for (id, ttl) in leases {
        b.extend_from_slice(&id.to_le_bytes());
        b.extend_from_slice(&ttl.to_le_bytes());
    }
    // 24 + 16k bytes: pad to a multiple of 16 (keeps the snapshot's blobs aligned).
    b.extend_from_slice(&[0u8; 8]);
    b
}

fn decode_meta(b: &[u8]) -> Result<Meta, StoreError> {
    let bad = || StoreError::Corrupt("snapshot engine metadata".into());
    if b.len() < 32 || b[0] != 1 || !(b.len() - 32).is_multiple_of(16) {
        return Err(bad());
    }
    let b = &b[..b.len() - 8];
    let word = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        a
    };
    let leases = (24..b.len())
        .step_by(16)
        .map(|at| {
            (
                i64::from_le_bytes(word(at)),
                i64::from_le_bytes(word(at + 8)),
            )
        })
        .collect();
    Ok(Meta {
        compacted: u64::from_le_bytes(word(8)),
        issued: u64::from_le_bytes(word(16)),
        leases,
    })
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

    async fn list_raw(
        &self,
        req: RangeRequest,
        filter: &crate::WatchFilter,
    ) -> Result<crate::RawList, StoreError> {
        self.inner.list_raw(&req, filter)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        let (resp, ack) = self.inner.txn(txn)?;
        wait(ack).await?;
        Ok(resp)
    }

    async fn watch(&self, req: WatchRequest) -> Result<WatchStream, StoreError> {
        Ok(Box::pin(self.inner.watch(req)?))
    }

    async fn lease_grant(
        &self,
        ttl_seconds: i64,
        id: Option<LeaseId>,
    ) -> Result<LeaseGrant, StoreError> {
        let (grant, ack) = self.inner.lease_grant(ttl_seconds, id)?;
        wait(ack).await?;
        Ok(grant)
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, StoreError> {
        let (rev, ack) = self.inner.lease_revoke(id, false)?;
        wait(ack).await?;
        Ok(rev)
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
        let ack = self.inner.compact(revision)?;
        wait(ack).await
    }

    async fn status(&self) -> Result<StoreStatus, StoreError> {
        Ok(self.inner.status())
    }
}

#[cfg(test)]
mod tests {
    /// Placement is part of the on-disk format: these must never change.
    #[test]
    fn shard_placement_is_stable() {
        let keys: [&[u8]; 4] = [b"", b"/registry/pods/ns/a", b"/registry/nodes/n1", b"x"];
        let got: Vec<usize> = keys.iter().map(|k| super::shard_of(k, 7)).collect();
        // FNV-1a 64 then murmur3 fmix64, modulo 7 (the reference function, inlined).
        let reference = |key: &[u8]| {
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
            (h % 7) as usize
        };
        let want: Vec<usize> = keys.iter().map(|k| reference(k)).collect();
        assert_eq!(got, want);
        assert_eq!(super::shard_of(b"anything", 1), 0);
    }
}
