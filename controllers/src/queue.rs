//! The work queue: rate-limited, deduplicating, bounded.
//!
//! Semantics follow client-go's `workqueue` (read, not copied):
//! - an item is in the queue at most once (`add` of a queued item is coalesced);
//! - an item being processed is never handed to a second worker: an `add` during processing
//!   marks it dirty and it is queued again when the worker calls `done`;
//! - `add_rate_limited` delays by the maximum of a per-item exponential backoff
//!   (5 ms doubling to 1000 s, reset by `forget`) and an overall token bucket
//!   (10 qps, burst 100), upstream's `DefaultControllerRateLimiter`;
//! - `add_after` holds an item until a deadline (earliest deadline wins).
//!
//! [`QueueCore`] is the sans-IO state machine: every call takes `now`, nothing reads a clock.
//! [`WorkQueue`] is the async shell around it (tokio clock, so tests can pause time).
//!
//! Bound: at most `capacity` distinct items are queued or waiting; adds beyond it are refused
//! ([`AddOutcome::Full`]) and counted. Level-triggered controllers recover a refused key at the
//! next informer event or resync, so refusing is safe where growing without bound is not.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::Hash;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

/// What became of an `add`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddOutcome {
    /// Queued (or scheduled) now.
    Queued,
    /// Already queued, waiting or dirty: coalesced with the earlier add.
    Coalesced,
    /// The queue is at capacity; the add was dropped.
    Full,
    /// The queue is shutting down.
    ShutDown,
}

/// Per-item exponential backoff: `base * 2^failures`, capped at `max`.
#[derive(Debug)]
pub struct ItemExponentialBackoff<K> {
    base: Duration,
    max: Duration,
    failures: HashMap<K, u32>,
}

impl<K: Hash + Eq + Clone> ItemExponentialBackoff<K> {
    /// A backoff from `base` doubling up to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            failures: HashMap::new(),
        }
    }

    /// The delay for the next retry of `item`, counting this failure.
    pub fn when(&mut self, item: &K) -> Duration {
        let n = self.failures.entry(item.clone()).or_insert(0);
        let exp = *n;
        *n = n.saturating_add(1);
        // 2^31 * 5 ms is far past any max; saturate instead of overflowing.
        let factor = 1u64.checked_shl(exp.min(40)).unwrap_or(u64::MAX);
        let nanos = (self.base.as_nanos() as u64).saturating_mul(factor);
        Duration::from_nanos(nanos).min(self.max)
    }

    /// Failures recorded for `item`.
    pub fn num_requeues(&self, item: &K) -> u32 {
        self.failures.get(item).copied().unwrap_or(0)
    }

    /// Clears `item`'s failures.
    pub fn forget(&mut self, item: &K) {
        self.failures.remove(item);
    }
}

/// A token bucket refilled at `qps` up to `burst` tokens; a reservation past the tokens
/// available is delayed until its token will have accrued (golang.org/x/time/rate semantics).
#[derive(Debug)]
pub struct TokenBucket {
    qps: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(qps: f64, burst: u32) -> Self {
        assert!(qps > 0.0, "qps must be positive");
        Self {
            qps,
            burst: f64::from(burst),
            tokens: f64::from(burst),
            last: None,
        }
    }

    /// Reserves one token at `now`; returns how long the caller must wait for it.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.qps).min(self.burst);
        }
        self.last = Some(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.qps)
        }
    }
}

/// Upstream's default controller rate limiter: the maximum of the two.
#[derive(Debug)]
pub struct RateLimiter<K> {
    per_item: ItemExponentialBackoff<K>,
    bucket: TokenBucket,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    /// 5 ms..1000 s per item, 10 qps with a burst of 100 overall.
    pub fn default_controller() -> Self {
        Self::new(
            ItemExponentialBackoff::new(Duration::from_millis(5), Duration::from_secs(1000)),
            TokenBucket::new(10.0, 100),
        )
    }

    /// A limiter of the two given parts.
    pub fn new(per_item: ItemExponentialBackoff<K>, bucket: TokenBucket) -> Self {
        Self { per_item, bucket }
    }

    /// The delay before `item` may be retried.
    pub fn when(&mut self, item: &K, now: Instant) -> Duration {
        let a = self.per_item.when(item);
        let b = self.bucket.reserve(now);
        a.max(b)
    }

    /// Clears `item`'s backoff.
    pub fn forget(&mut self, item: &K) {
        self.per_item.forget(item);
    }

    /// Failures recorded for `item`.
    pub fn num_requeues(&self, item: &K) -> u32 {
        self.per_item.num_requeues(item)
    }
}

/// The sans-IO queue state machine. See the module doc for its semantics.
#[derive(Debug)]
pub struct QueueCore<K> {
    queue: VecDeque<K>,
    dirty: HashSet<K>,
    processing: HashSet<K>,
    waiting: BinaryHeap<Reverse<(Instant, u64, K)>>,
    waiting_at: HashMap<K, Instant>,
    seq: u64,
    limiter: RateLimiter<K>,
    capacity: usize,
    dropped: u64,
    shutting_down: bool,
}

impl<K: Hash + Eq + Clone + Ord> QueueCore<K> {
    /// An empty queue holding at most `capacity` distinct items.
    pub fn new(capacity: usize, limiter: RateLimiter<K>) -> Self {
        assert!(capacity > 0);
        Self {
            queue: VecDeque::new(),
            dirty: HashSet::new(),
            processing: HashSet::new(),
            waiting: BinaryHeap::new(),
            waiting_at: HashMap::new(),
            seq: 0,
            limiter,
            capacity,
            dropped: 0,
            shutting_down: false,
        }
    }

    /// Marks `item` as needing processing.
    pub fn add(&mut self, item: K) -> AddOutcome {
        if self.shutting_down {
            return AddOutcome::ShutDown;
        }
        if self.dirty.contains(&item) {
            return AddOutcome::Coalesced;
        }
        if self.dirty.len() >= self.capacity {
            self.dropped += 1;
            return AddOutcome::Full;
        }
        self.dirty.insert(item.clone());
        if !self.processing.contains(&item) {
            self.queue.push_back(item);
        }
        AddOutcome::Queued
    }

    /// Adds `item` once `at` has come.
    pub fn add_at(&mut self, item: K, at: Instant, now: Instant) -> AddOutcome {
        if self.shutting_down {
            return AddOutcome::ShutDown;
        }
        if at <= now {
            return self.add(item);
        }
        if let Some(&prev) = self.waiting_at.get(&item) {
            if prev <= at {
                return AddOutcome::Coalesced;
            }
        } else if self.waiting_at.len() >= self.capacity {
            self.dropped += 1;
            return AddOutcome::Full;
        }
        self.waiting_at.insert(item.clone(), at);
        self.seq += 1;
        self.waiting.push(Reverse((at, self.seq, item)));
        AddOutcome::Queued
    }

    /// Adds `item` after the rate limiter's delay for it.
    pub fn add_rate_limited(&mut self, item: K, now: Instant) -> AddOutcome {
        let delay = self.limiter.when(&item, now);
        self.add_at(item, now + delay, now)
    }

    /// Clears `item`'s backoff (call after a successful reconcile).
    pub fn forget(&mut self, item: &K) {
        self.limiter.forget(item);
    }

    /// Failures recorded for `item`.
    pub fn num_requeues(&self, item: &K) -> u32 {
        self.limiter.num_requeues(item)
    }

    /// Moves every waiting item whose deadline has come into the queue.
    fn promote_due(&mut self, now: Instant) {
        while let Some(Reverse((at, _, _))) = self.waiting.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((at, _, item))) = self.waiting.pop() else {
                break;
            };
            // A heap entry is live only if it is the item's current deadline.
            if self.waiting_at.get(&item) == Some(&at) {
                self.waiting_at.remove(&item);
                let _ = self.add(item);
            }
        }
    }

    /// The next item to process, now marked as processing; `None` if nothing is ready.
    pub fn pop(&mut self, now: Instant) -> Option<K> {
        self.promote_due(now);
        let item = self.queue.pop_front()?;
        self.dirty.remove(&item);
        self.processing.insert(item.clone());
        Some(item)
    }

    /// Ends processing of `item`; it is queued again if it was added meanwhile.
    pub fn done(&mut self, item: &K) {
        self.processing.remove(item);
        if self.dirty.contains(item) {
            self.queue.push_back(item.clone());
        }
    }

    /// The earliest deadline of a waiting item.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        // Drop stale heap entries so the deadline is real.
        while let Some(Reverse((at, _, item))) = self.waiting.peek() {
            if self.waiting_at.get(item) == Some(at) {
                return Some(*at);
            }
            self.waiting.pop();
        }
        None
    }

    /// Items ready to be processed.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Whether no item is ready.
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Items waiting for a deadline.
    pub fn waiting_len(&self) -> usize {
        self.waiting_at.len()
    }

    /// Items being processed.
    pub fn processing_len(&self) -> usize {
        self.processing.len()
    }

    /// Adds refused because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Refuses new adds; `pop` drains what is queued.
    pub fn shut_down(&mut self) {
        self.shutting_down = true;
        self.waiting.clear();
        self.waiting_at.clear();
    }

    /// Whether `shut_down` was called.
    pub fn is_shut_down(&self) -> bool {
        self.shutting_down
    }
}

/// The async queue shell: a [`QueueCore`] behind a lock, woken by a [`Notify`]. Cheap to clone.
#[derive(Debug)]
pub struct WorkQueue<K> {
    inner: Arc<Shared<K>>,
}

#[derive(Debug)]
struct Shared<K> {
    core: Mutex<QueueCore<K>>,
    notify: Notify,
    name: String,
}

impl<K> Clone for WorkQueue<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl<K: Hash + Eq + Clone + Ord + Send + 'static> WorkQueue<K> {
    /// A queue with upstream's default controller rate limiter.
    pub fn new(name: &str, capacity: usize) -> Self {
        Self::with_limiter(name, capacity, RateLimiter::default_controller())
    }

    /// A queue with the given rate limiter.
    pub fn with_limiter(name: &str, capacity: usize, limiter: RateLimiter<K>) -> Self {
        Self {
            inner: Arc::new(Shared {
                core: Mutex::new(QueueCore::new(capacity, limiter)),
                notify: Notify::new(),
                name: name.to_string(),
            }),
        }
    }

    /// The queue's name (for logs and metrics).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn outcome(&self, o: AddOutcome) -> AddOutcome {
        match o {
            AddOutcome::Queued => self.inner.notify.notify_one(),
            AddOutcome::Full => {
                tracing::warn!(queue = %self.inner.name, "work queue full; add dropped");
            }
            AddOutcome::Coalesced | AddOutcome::ShutDown => {}
        }
        o
    }

    /// See [`QueueCore::add`].
    pub fn add(&self, item: K) -> AddOutcome {
        let o = self.inner.core.lock().add(item);
        self.outcome(o)
    }

    /// Adds `item` after `delay`.
    pub fn add_after(&self, item: K, delay: Duration) -> AddOutcome {
        let n = now();
        let o = self.inner.core.lock().add_at(item, n + delay, n);
        self.outcome(o)
    }

    /// See [`QueueCore::add_rate_limited`].
    pub fn add_rate_limited(&self, item: K) -> AddOutcome {
        let o = self.inner.core.lock().add_rate_limited(item, now());
        self.outcome(o)
    }

    /// See [`QueueCore::forget`].
    pub fn forget(&self, item: &K) {
        self.inner.core.lock().forget(item);
    }

    /// Failures recorded for `item`.
    pub fn num_requeues(&self, item: &K) -> u32 {
        self.inner.core.lock().num_requeues(item)
    }

    /// See [`QueueCore::done`].
    pub fn done(&self, item: &K) {
        let mut core = self.inner.core.lock();
        core.done(item);
        if !core.is_empty() {
            self.inner.notify.notify_one();
        }
    }

    /// Items ready to process.
    pub fn len(&self) -> usize {
        self.inner.core.lock().len()
    }

    /// Whether no item is ready.
    pub fn is_empty(&self) -> bool {
        self.inner.core.lock().is_empty()
    }

    /// Stops the queue: new adds are refused, and `get` returns `None` once drained.
    pub fn shut_down(&self) {
        self.inner.core.lock().shut_down();
        self.inner.notify.notify_waiters();
        self.inner.notify.notify_one();
    }

    /// Waits for the next item; `None` once the queue is shut down and drained.
    pub async fn get(&self) -> Option<K> {
        loop {
            let notified = self.inner.notify.notified();
            let deadline = {
                let mut core = self.inner.core.lock();
                if let Some(item) = core.pop(now()) {
                    if !core.is_empty() {
                        // Chain the wake-up so several ready items reach several workers.
                        self.inner.notify.notify_one();
                    }
                    return Some(item);
                }
                if core.is_shut_down() {
                    self.inner.notify.notify_one();
                    return None;
                }
                core.next_deadline()
            };
            match deadline {
                Some(at) => {
                    let at = tokio::time::Instant::from_std(at);
                    tokio::select! {
                        () = notified => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(cap: usize) -> QueueCore<String> {
        QueueCore::new(cap, RateLimiter::default_controller())
    }

    #[test]
    fn dedups_and_never_hands_out_an_item_twice() {
        let t = Instant::now();
        let mut q = core(10);
        assert_eq!(q.add("a".into()), AddOutcome::Queued);
        assert_eq!(q.add("a".into()), AddOutcome::Coalesced);
        assert_eq!(q.len(), 1);
        assert_eq!(q.pop(t).as_deref(), Some("a"));
        // Re-added while processing: not handed out until done.
        assert_eq!(q.add("a".into()), AddOutcome::Queued);
        assert_eq!(q.add("a".into()), AddOutcome::Coalesced);
        assert_eq!(q.pop(t), None);
        q.done(&"a".to_string());
        assert_eq!(q.pop(t).as_deref(), Some("a"));
        q.done(&"a".to_string());
        assert_eq!(q.pop(t), None);
    }

    #[test]
    fn exponential_backoff_doubles_and_caps() {
        let mut b =
            ItemExponentialBackoff::new(Duration::from_millis(5), Duration::from_secs(1000));
        let k = "x".to_string();
        let ds: Vec<_> = (0..4).map(|_| b.when(&k)).collect();
        assert_eq!(
            ds,
            [5, 10, 20, 40].map(Duration::from_millis).to_vec(),
            "5 ms doubling"
        );
        for _ in 0..60 {
            b.when(&k);
        }
        assert_eq!(b.when(&k), Duration::from_secs(1000));
        b.forget(&k);
        assert_eq!(b.when(&k), Duration::from_millis(5));
    }

    #[test]
    fn token_bucket_allows_burst_then_paces() {
        let t = Instant::now();
        let mut tb = TokenBucket::new(10.0, 100);
        for _ in 0..100 {
            assert_eq!(tb.reserve(t), Duration::ZERO);
        }
        let d = tb.reserve(t);
        assert!((d.as_secs_f64() - 0.1).abs() < 1e-9, "{d:?}");
        let d = tb.reserve(t);
        assert!((d.as_secs_f64() - 0.2).abs() < 1e-9, "{d:?}");
        // After 10 s the bucket has refilled past the debt.
        assert_eq!(tb.reserve(t + Duration::from_secs(10)), Duration::ZERO);
    }

    #[test]
    fn rate_limited_adds_wait_for_their_deadline() {
        let t = Instant::now();
        let mut q = core(10);
        q.add_rate_limited("a".into(), t);
        assert_eq!(q.pop(t), None);
        assert_eq!(q.next_deadline(), Some(t + Duration::from_millis(5)));
        assert_eq!(q.pop(t + Duration::from_millis(5)).as_deref(), Some("a"));
        q.done(&"a".into());
        q.add_rate_limited("a".into(), t);
        assert_eq!(q.next_deadline(), Some(t + Duration::from_millis(10)));
        q.forget(&"a".into());
        assert_eq!(q.num_requeues(&"a".into()), 0);
    }

    #[test]
    fn earliest_deadline_wins() {
        let t = Instant::now();
        let mut q = core(10);
        q.add_at("a".into(), t + Duration::from_secs(10), t);
        q.add_at("a".into(), t + Duration::from_secs(1), t);
        q.add_at("a".into(), t + Duration::from_secs(5), t);
        assert_eq!(q.waiting_len(), 1);
        assert_eq!(q.next_deadline(), Some(t + Duration::from_secs(1)));
        assert_eq!(q.pop(t + Duration::from_secs(1)).as_deref(), Some("a"));
        q.done(&"a".into());
        assert_eq!(
            q.pop(t + Duration::from_secs(20)),
            None,
            "stale entries are dropped"
        );
    }

    #[test]
    fn capacity_bounds_distinct_items() {
        let t = Instant::now();
        let mut q = core(2);
        assert_eq!(q.add("a".into()), AddOutcome::Queued);
        assert_eq!(q.add("b".into()), AddOutcome::Queued);
        assert_eq!(q.add("c".into()), AddOutcome::Full);
        assert_eq!(q.dropped(), 1);
        assert_eq!(q.pop(t).as_deref(), Some("a"));
        assert_eq!(q.add("c".into()), AddOutcome::Queued);
    }

    #[test]
    fn shutdown_drains_then_refuses() {
        let t = Instant::now();
        let mut q = core(4);
        q.add("a".into());
        q.shut_down();
        assert_eq!(q.add("b".into()), AddOutcome::ShutDown);
        assert_eq!(q.pop(t).as_deref(), Some("a"));
        assert_eq!(q.pop(t), None);
    }

    #[tokio::test(start_paused = true)]
    async fn async_queue_wakes_for_adds_and_deadlines() {
        let q: WorkQueue<String> = WorkQueue::new("t", 16);
        let q2 = q.clone();
        let h = tokio::spawn(async move { q2.get().await });
        tokio::task::yield_now().await;
        q.add_after("late".into(), Duration::from_secs(3));
        let start = tokio::time::Instant::now();
        assert_eq!(h.await.unwrap().as_deref(), Some("late"));
        assert!(start.elapsed() >= Duration::from_secs(3));
        q.done(&"late".into());
        q.shut_down();
        assert_eq!(q.get().await, None);
    }

    proptest::proptest! {
        /// Against a model: every item added is eventually handed out, never twice at once,
        /// and the queue never holds an item twice.
        #[test]
        fn model(ops in proptest::collection::vec((0u8..4, 0u8..6), 1..200)) {
            let t = Instant::now();
            let mut q = core(64);
            let mut processing: HashSet<String> = HashSet::new();
            let mut pending: HashSet<String> = HashSet::new();
            for (op, k) in ops {
                let key = format!("k{k}");
                match op {
                    0 | 1 => { q.add(key.clone()); pending.insert(key); }
                    2 => if let Some(item) = q.pop(t) {
                        proptest::prop_assert!(processing.insert(item.clone()), "{} twice", item);
                        pending.remove(&item);
                    },
                    _ => if processing.remove(&key) { q.done(&key); },
                }
                proptest::prop_assert!(q.len() <= 6);
            }
            for k in processing.drain() { q.done(&k); }
            let mut seen = HashSet::new();
            while let Some(item) = q.pop(t) { seen.insert(item.clone()); q.done(&item); }
            for k in pending { proptest::prop_assert!(seen.contains(&k), "{} lost", k); }
        }
    }
}
