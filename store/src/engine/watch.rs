//! Watch: the bounded event history, the watcher registry with its field index, the fan-out
//! thread, and the per-watcher stream.
//!
//! ## Guarantees (checked by the validators in `tests/watch_guarantees.rs`)
//! - **Ordered:** a watcher sees events in strictly increasing revision order.
//! - **Unique:** no event (key, revision) is delivered twice.
//! - **Atomic:** all of one revision's matching events arrive in one batch.
//! - **Bookmarkable:** a [`WatchEvent::Progress`]`(r)` means every matching event `<= r` has
//!   been delivered; `r` is never below an event already delivered.
//! - **Reliable / resumable:** every matching event from the start revision on is delivered,
//!   until the stream ends with an error; after `WatchTooSlow { resume_from }` a new watch
//!   from `resume_from` continues with no gap and no duplicate.
//! - **Compaction:** a watch whose start revision is below the compaction point fails with
//!   `Compacted`; from the compaction point itself it is allowed, as in etcd (events at that
//!   revision carry no previous value, which compaction removed).
//!
//! ## Data flow
//! A commit appends its revision's events to the [`EventLog`] (a bounded ring) once the
//! revision is visible; writers never wait for watchers. One fan-out thread moves revisions
//! from the ring to watchers: watchers with an `Equals` requirement on an indexed field are
//! found through the index by the event's (old and new) field values, the others by a scan;
//! each event is one `Arc` shared by every watcher it goes to. Each watcher has a bounded
//! queue; a watcher whose queue would overflow is cut off with `WatchTooSlow` and removed.
//!
//! **Lock order:** registry, then event log; registry, then shards; registry, then a
//! watcher's queue. Writers hold the sequencer and shards, then the event log, and never the
//! registry.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use parking_lot::{Condvar, Mutex};

use super::mvcc::KeyRange;
use crate::backend::{KeyValue, Requirement, Revision, WatchEvent, WatchFilter};
use crate::envelope::Envelope;
use crate::error::StoreError;

/// Most events handed out in one stream item (whole revisions; a larger revision goes alone).
const MAX_BATCH_EVENTS: usize = 1024;

/// Most revisions the fan-out thread moves per lock of the event log.
const FANOUT_CHUNK: usize = 256;

/// Catch-up is read in chunks of about this many events (whole revisions), each only once
/// the watcher has taken the previous one: a watch from an old revision holds at most one
/// chunk, however much history it has to replay (etcd's unsynced watchers work the same way).
pub(crate) const CATCHUP_CHUNK_EVENTS: usize = 8192;

/// Where a watcher that is still catching up reads its next chunk (the engine).
pub(crate) trait HistorySource: Send + Sync + std::fmt::Debug {
    /// Matching events of revisions `[from, to]` (`from <= to`), in whole revisions, stopping
    /// after the first revision that brings the count to `max_events`; also the next revision
    /// to read (`to + 1` when everything up to `to` was read).
    fn catchup_chunk(
        &self,
        range: &KeyRange,
        filter: &WatchFilter,
        from: u64,
        to: u64,
        max_events: usize,
    ) -> Result<(RevEvents, u64), StoreError>;
}

/// One change of one key.
#[derive(Debug)]
pub(crate) struct EventRec {
    pub(crate) rev: u64,
    pub(crate) key: Bytes,
    /// The new value; `None` for a delete.
    pub(crate) new: Option<Envelope>,
    /// The value before this revision, if known.
    pub(crate) prev: Option<Envelope>,
}

/// Revisions with their events, in order (catch-up).
pub(crate) type RevEvents = Vec<(u64, Vec<Arc<EventRec>>)>;

/// All events of one revision, in key order.
#[derive(Debug)]
pub(crate) struct RevBatch {
    pub(crate) rev: u64,
    pub(crate) events: Vec<Arc<EventRec>>,
}

/// The bounded history of recent revisions.
#[derive(Debug)]
pub(crate) struct EventLog {
    ring: VecDeque<Arc<RevBatch>>,
    events: usize,
    cap_events: usize,
    /// Every revision in `[floor, last]` is in the ring.
    floor: u64,
    last: u64,
    /// Revisions up to here have been fanned out; the ring evicts only those (unless the
    /// fan-out falls more than `max(cap_events * 4, 65536)` events behind, which cuts every watcher off).
    fanned: u64,
    stop: bool,
}

/// What a watcher's stream yields, in order.
#[derive(Debug)]
enum Item {
    Rev(Vec<Arc<EventRec>>),
    Progress(u64),
}

impl Item {
    fn len(&self) -> usize {
        match self {
            Item::Rev(e) => e.len(),
            Item::Progress(_) => 1,
        }
    }
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Item>,
    /// Events in `items` (bounded by the watcher's capacity).
    queued: usize,
    /// The error that ends the stream once `items` is drained.
    end: Option<StoreError>,
    finished: bool,
    waker: Option<Waker>,
    /// The consumer dropped the stream.
    dropped: bool,
    /// While catching up: the next revision to read from history. Live events are not
    /// offered until the catch-up reaches the fan-out cursor (see `min_rev`).
    catchup_from: Option<u64>,
}

#[derive(Debug)]
pub(crate) struct Watcher {
    id: u64,
    range: KeyRange,
    filter: WatchFilter,
    /// The `(field, value)` this watcher is indexed under, if any.
    index_key: Option<(String, String)>,
    /// Attach previous values (asked for, or needed by a filter).
    with_prev: bool,
    /// The revision the watch starts from.
    start: u64,
    /// Live events below this revision were covered by catch-up (or precede the start);
    /// `u64::MAX` while the watcher is still catching up, so the fan-out passes it by.
    min_rev: AtomicU64,
    cap: usize,
    q: Mutex<Queue>,
}

impl Watcher {
    fn matches(&self, e: &EventRec) -> bool {
        if e.rev < self.min_rev.load(Ordering::Acquire) || !self.range.contains(&e.key) {
            return false;
        }
        if self.filter.labels.is_empty() && self.filter.fields.is_empty() {
            return true;
        }
        e.new
            .as_ref()
            .is_some_and(|v| filter_matches(&self.filter, v))
            || e.prev
                .as_ref()
                .is_some_and(|v| filter_matches(&self.filter, v))
    }

    /// Queues one revision's events; `false` if the watcher is gone or was cut off.
    fn offer(&self, rev: u64, events: Vec<Arc<EventRec>>) -> bool {
        let mut q = self.q.lock();
        if q.dropped || q.end.is_some() {
            return false;
        }
        if q.queued + events.len() > self.cap {
            q.end = Some(StoreError::WatchTooSlow {
                resume_from: Revision(rev),
            });
            if let Some(w) = q.waker.take() {
                w.wake();
            }
            return false;
        }
        q.queued += events.len();
        q.items.push_back(Item::Rev(events));
        if let Some(w) = q.waker.take() {
            w.wake();
        }
        true
    }

    fn end_with(&self, e: StoreError) {
        let mut q = self.q.lock();
        if q.end.is_none() {
            q.end = Some(e);
        }
        if let Some(w) = q.waker.take() {
            w.wake();
        }
    }
}

fn requirement_holds(r: &Requirement, get: impl Fn(&str) -> Option<String>) -> bool {
    match r {
        Requirement::Equals(k, v) => get(k).as_deref() == Some(v.as_str()),
        Requirement::NotEquals(k, v) => get(k).as_deref() != Some(v.as_str()),
        Requirement::In(k, vs) => get(k).is_some_and(|x| vs.contains(&x)),
        Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(&x)),
        Requirement::Exists(k) => get(k).is_some(),
        Requirement::DoesNotExist(k) => get(k).is_none(),
    }
}

fn requirement_holds_ref<'v>(r: &Requirement, get: impl Fn(&str) -> Option<&'v str>) -> bool {
    let has = |k: &str, v: &str| get(k) == Some(v);
    match r {
        Requirement::Equals(k, v) => has(k, v),
        Requirement::NotEquals(k, v) => !has(k, v),
        Requirement::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
        Requirement::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
        Requirement::Exists(k) => get(k).is_some(),
        Requirement::DoesNotExist(k) => get(k).is_none(),
    }
}

/// Whether `env` satisfies every label and field requirement of `f`.
pub(crate) fn filter_matches(f: &WatchFilter, env: &Envelope) -> bool {
    f.labels
        .iter()
        .all(|r| requirement_holds_ref(r, |k| env.label(k)))
        && f.fields
            .iter()
            .all(|r| requirement_holds_ref(r, |k| env.field(k)))
}

/// Whether a key-value (as a client sees it) satisfies `f`: the validators' reference.
pub fn filter_matches_kv(f: &WatchFilter, kv: &KeyValue) -> bool {
    let find = |pairs: &[(String, String)], k: &str| {
        pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    };
    f.labels
        .iter()
        .all(|r| requirement_holds(r, |k| find(&kv.value.labels, k)))
        && f.fields
            .iter()
            .all(|r| requirement_holds(r, |k| find(&kv.value.fields, k)))
}

/// Watchers, the field index, and the fan-out position.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// Every revision `<= cursor` has been offered to the registered watchers.
    pub(crate) cursor: u64,
    watchers: HashMap<u64, Arc<Watcher>>,
    general: BTreeSet<u64>,
    index: HashMap<(String, String), BTreeSet<u64>>,
    /// How many watchers are indexed under each field name.
    indexed_names: HashMap<String, usize>,
    progress: BTreeSet<u64>,
    next_id: u64,
}

impl Registry {
    pub(crate) fn watcher_count(&self) -> usize {
        self.watchers.len()
    }

    fn remove(&mut self, id: u64) {
        let Some(w) = self.watchers.remove(&id) else {
            return;
        };
        self.general.remove(&id);
        self.progress.remove(&id);
        if let Some(k) = &w.index_key {
            if let Some(set) = self.index.get_mut(k) {
                set.remove(&id);
                if set.is_empty() {
                    self.index.remove(k);
                }
            }
            if let Some(n) = self.indexed_names.get_mut(&k.0) {
                *n -= 1;
                if *n == 0 {
                    self.indexed_names.remove(&k.0);
                }
            }
        }
    }

    /// Offers one revision to every watcher it concerns.
    fn deliver(&mut self, batch: &RevBatch) {
        let mut hits: Vec<(u64, Vec<Arc<EventRec>>)> = Vec::new();
        for id in &self.general {
            let Some(w) = self.watchers.get(id) else {
                continue;
            };
            let evs: Vec<_> = batch
                .events
                .iter()
                .filter(|e| w.matches(e))
                .cloned()
                .collect();
            if !evs.is_empty() {
                hits.push((*id, evs));
            }
        }
        if !self.index.is_empty() {
            let mut indexed: HashMap<u64, Vec<Arc<EventRec>>> = HashMap::new();
            let mut cand: Vec<u64> = Vec::new();
            for e in &batch.events {
                cand.clear();
                for env in e.new.iter().chain(e.prev.iter()) {
                    for (name, value) in env.fields() {
                        if !self.indexed_names.contains_key(name) {
                            continue;
                        }
                        let k = (name.to_owned(), value.to_owned());
                        if let Some(ids) = self.index.get(&k) {
                            cand.extend(ids.iter().copied());
                        }
                    }
                }
                cand.sort_unstable();
                cand.dedup();
                for id in &cand {
                    if let Some(w) = self.watchers.get(id)
                        && w.matches(e)
                    {
                        indexed.entry(*id).or_default().push(e.clone());
                    }
                }
            }
            hits.extend(indexed);
        }
        for (id, evs) in hits {
            let keep = self
                .watchers
                .get(&id)
                .is_some_and(|w| w.offer(batch.rev, evs));
            if !keep {
                self.remove(id);
            }
        }
    }
}

/// The watch side of the engine.
#[derive(Debug)]
pub(crate) struct WatchHub {
    pub(crate) log: Mutex<EventLog>,
    log_cv: Condvar,
    pub(crate) reg: Mutex<Registry>,
    progress_interval: Duration,
}

impl WatchHub {
    /// A hub whose history starts after revision `current`.
    pub(crate) fn new(current: u64, cap_events: usize, progress_interval: Duration) -> Self {
        Self {
            log: Mutex::new(EventLog {
                ring: VecDeque::new(),
                events: 0,
                cap_events: cap_events.max(1),
                floor: current + 1,
                last: current,
                fanned: current,
                stop: false,
            }),
            log_cv: Condvar::new(),
            reg: Mutex::new(Registry {
                cursor: current,
                ..Registry::default()
            }),
            progress_interval,
        }
    }

    /// Appends a visible revision's events (called in revision order, by the committer).
    pub(crate) fn append(&self, batch: RevBatch) {
        let mut log = self.log.lock();
        debug_assert!(batch.rev > log.last);
        log.events += batch.events.len();
        log.last = batch.rev;
        log.ring.push_back(Arc::new(batch));
        while log.events > log.cap_events && log.ring.len() > 1 {
            let overrun = log.events > log.cap_events.saturating_mul(4).max(1 << 16);
            if !overrun && log.ring.front().is_some_and(|b| b.rev > log.fanned) {
                break;
            }
            if let Some(old) = log.ring.pop_front() {
                log.events -= old.events.len();
                log.floor = old.rev + 1;
            }
        }
        drop(log);
        self.log_cv.notify_one();
    }

    /// The ring's revisions in `[from, to]`, if the ring still holds all of them.
    pub(crate) fn history(&self, from: u64, to: u64) -> Option<Vec<Arc<RevBatch>>> {
        let log = self.log.lock();
        if from < log.floor {
            return None;
        }
        let start = log.ring.partition_point(|b| b.rev < from);
        Some(
            log.ring
                .range(start..)
                .take_while(|b| b.rev <= to)
                .cloned()
                .collect(),
        )
    }

    /// Registers a watcher from revision `start` whose first catch-up events are `catchup`.
    /// With `catchup_from` it is still catching up: the stream reads the rest from `source`
    /// chunk by chunk; otherwise `catchup` covers every revision up to the registry's cursor
    /// and live events follow at once.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn register(
        self: &Arc<Self>,
        reg: &mut Registry,
        range: KeyRange,
        filter: WatchFilter,
        prev_kv: bool,
        progress: bool,
        start: u64,
        cap: usize,
        catchup: RevEvents,
        catchup_from: Option<u64>,
        source: Weak<dyn HistorySource>,
    ) -> WatchStreamImpl {
        let id = reg.next_id;
        reg.next_id += 1;
        let index_key = filter.fields.iter().find_map(|r| match r {
            Requirement::Equals(k, v) => Some((k.clone(), v.clone())),
            _ => None,
        });
        let with_prev = prev_kv || !filter.labels.is_empty() || !filter.fields.is_empty();
        let mut q = Queue {
            catchup_from,
            ..Queue::default()
        };
        for (_, evs) in catchup {
            q.queued += evs.len();
            q.items.push_back(Item::Rev(evs));
        }
        // Live events must fit beside the catch-up: what is queued now, or the last chunk
        // a watcher still catching up will read (at most about one chunk).
        let catchup_room = match catchup_from {
            Some(_) => q.queued.max(CATCHUP_CHUNK_EVENTS),
            None => q.queued,
        };
        let cap = cap.max(1) + catchup_room;
        let min_rev = match catchup_from {
            Some(_) => u64::MAX,
            None => start.max(reg.cursor + 1),
        };
        let w = Arc::new(Watcher {
            id,
            range,
            filter,
            index_key: index_key.clone(),
            with_prev,
            start,
            min_rev: AtomicU64::new(min_rev),
            cap,
            q: Mutex::new(q),
        });
        reg.watchers.insert(id, w.clone());
        match index_key {
            Some(k) => {
                *reg.indexed_names.entry(k.0.clone()).or_default() += 1;
                reg.index.entry(k).or_default().insert(id);
            }
            None => {
                reg.general.insert(id);
            }
        }
        if progress {
            reg.progress.insert(id);
        }
        WatchStreamImpl {
            w,
            hub: Arc::downgrade(self),
            source,
        }
    }

    /// Asks the fan-out thread to stop.
    pub(crate) fn stop(&self) {
        self.log.lock().stop = true;
        self.log_cv.notify_all();
    }

    /// Ends every watcher with `e` (engine closing).
    pub(crate) fn end_all(&self, e: impl Fn() -> StoreError) {
        let mut reg = self.reg.lock();
        let ids: Vec<u64> = reg.watchers.keys().copied().collect();
        for id in ids {
            if let Some(w) = reg.watchers.get(&id) {
                w.end_with(e());
            }
            reg.remove(id);
        }
    }

    /// The fan-out loop: runs until [`WatchHub::stop`].
    pub(crate) fn run_fanout(&self) {
        let mut cursor = self.reg.lock().cursor;
        let mut next_progress = Instant::now() + self.progress_interval;
        loop {
            let (batches, lost) = {
                let mut log = self.log.lock();
                while !log.stop && log.last <= cursor && Instant::now() < next_progress {
                    let _ = self.log_cv.wait_until(&mut log, next_progress);
                }
                if log.stop {
                    return;
                }
                let lost = log.floor > cursor + 1 && log.last > cursor;
                // The ring is in revision order: find the first unsent revision by binary
                // search, not a scan (the ring holds up to `cap_events` events).
                let from = log.ring.partition_point(|b| b.rev <= cursor);
                let batches: Vec<_> = log.ring.range(from..).take(FANOUT_CHUNK).cloned().collect();
                (batches, lost.then_some(log.floor))
            };
            let mut reg = self.reg.lock();
            if let Some(floor) = lost {
                // The ring overran the fan-out: every watcher missed events.
                let ids: Vec<u64> = reg.watchers.keys().copied().collect();
                for id in ids {
                    if let Some(w) = reg.watchers.get(&id) {
                        w.end_with(StoreError::WatchTooSlow {
                            resume_from: Revision(cursor + 1),
                        });
                    }
                    reg.remove(id);
                }
                cursor = floor - 1;
                reg.cursor = cursor;
            }
            for b in &batches {
                if b.rev <= cursor {
                    continue;
                }
                reg.deliver(b);
                cursor = b.rev;
                reg.cursor = cursor;
            }
            drop(reg);
            self.log.lock().fanned = cursor;
            let reg = self.reg.lock();
            if Instant::now() >= next_progress {
                next_progress = Instant::now() + self.progress_interval;
                let ids: Vec<u64> = reg.progress.iter().copied().collect();
                for id in ids {
                    let Some(w) = reg.watchers.get(&id) else {
                        continue;
                    };
                    let mut q = w.q.lock();
                    if q.items.is_empty()
                        && q.end.is_none()
                        && !q.dropped
                        && cursor + 1 >= w.min_rev.load(Ordering::Acquire)
                    {
                        q.items.push_back(Item::Progress(cursor));
                        if let Some(wk) = q.waker.take() {
                            wk.wake();
                        }
                    }
                }
            }
        }
    }
}

/// A watcher's stream of batches.
#[derive(Debug)]
pub(crate) struct WatchStreamImpl {
    w: Arc<Watcher>,
    hub: Weak<WatchHub>,
    source: Weak<dyn HistorySource>,
}

impl WatchStreamImpl {
    /// Reads the next catch-up chunk from `from` into the (empty) queue. The chunk that
    /// reaches the fan-out cursor is read under the registry lock and ends the catch-up in
    /// the same critical section, so no revision is missed or offered twice.
    fn catch_up(&self, from: u64) {
        let w = &self.w;
        let (Some(hub), Some(source)) = (self.hub.upgrade(), self.source.upgrade()) else {
            w.end_with(StoreError::Unavailable("store closed".into()));
            return;
        };
        let cursor = hub.reg.lock().cursor;
        let mut next = from;
        if next <= cursor {
            match source.catchup_chunk(&w.range, &w.filter, next, cursor, CATCHUP_CHUNK_EVENTS) {
                Ok((evs, n)) => {
                    next = n;
                    let more = next <= cursor;
                    self.push(evs, more.then_some(next));
                    if more {
                        return;
                    }
                }
                Err(e) => return self.fail(&hub, e),
            }
        }
        // Caught up with `cursor`: finish against the fan-out's position under its lock.
        let reg = hub.reg.lock();
        let cursor = reg.cursor;
        let mut evs = Vec::new();
        if next <= cursor {
            match source.catchup_chunk(&w.range, &w.filter, next, cursor, CATCHUP_CHUNK_EVENTS) {
                Ok((e, n)) => {
                    evs = e;
                    next = n;
                }
                Err(e) => {
                    drop(reg);
                    return self.fail(&hub, e);
                }
            }
        }
        if next <= cursor {
            // The fan-out moved on by more than a chunk meanwhile: keep catching up.
            self.push(evs, Some(next));
            return;
        }
        self.push(evs, None);
        // Still under the registry lock: the fan-out offers this watcher exactly the
        // revisions after `cursor`.
        w.min_rev.store(w.start.max(cursor + 1), Ordering::Release);
        drop(reg);
    }

    fn push(&self, evs: RevEvents, catchup_from: Option<u64>) {
        let mut q = self.w.q.lock();
        for (_, e) in evs {
            q.queued += e.len();
            q.items.push_back(Item::Rev(e));
        }
        q.catchup_from = catchup_from;
    }

    fn fail(&self, hub: &WatchHub, e: StoreError) {
        self.w.end_with(e);
        hub.reg.lock().remove(self.w.id);
    }
}

fn to_event(e: &EventRec, with_prev: bool) -> WatchEvent {
    let prev_kv = if with_prev {
        e.prev.as_ref().map(Envelope::key_value)
    } else {
        None
    };
    match &e.new {
        Some(v) => WatchEvent::Put {
            kv: v.key_value(),
            prev_kv,
        },
        None => WatchEvent::Delete {
            key: e.key.clone(),
            revision: Revision(e.rev),
            prev_kv,
        },
    }
}

impl Stream for WatchStreamImpl {
    type Item = Result<Vec<WatchEvent>, StoreError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let w = &self.w;
        let mut q = w.q.lock();
        if q.items.is_empty()
            && q.end.is_none()
            && !q.finished
            && let Some(from) = q.catchup_from
        {
            // Consumer-paced catch-up: the next chunk is read only once this one is taken.
            drop(q);
            self.catch_up(from);
            q = w.q.lock();
        }
        if !q.items.is_empty() {
            let mut out = Vec::new();
            while let Some(item) = q.items.front() {
                if !out.is_empty() && out.len() + item.len() > MAX_BATCH_EVENTS {
                    break;
                }
                let Some(item) = q.items.pop_front() else {
                    break;
                };
                match item {
                    Item::Rev(evs) => {
                        q.queued -= evs.len();
                        out.extend(evs.iter().map(|e| to_event(e, w.with_prev)));
                    }
                    Item::Progress(r) => out.push(WatchEvent::Progress(Revision(r))),
                }
            }
            return Poll::Ready(Some(Ok(out)));
        }
        if let Some(e) = q.end.take() {
            q.finished = true;
            return Poll::Ready(Some(Err(e)));
        }
        if q.finished {
            return Poll::Ready(None);
        }
        q.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

impl Drop for WatchStreamImpl {
    fn drop(&mut self) {
        self.w.q.lock().dropped = true;
        if let Some(hub) = self.hub.upgrade() {
            hub.reg.lock().remove(self.w.id);
        }
    }
}
