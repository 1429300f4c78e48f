//! [`ShardSet`]: the pinned per-core runtimes, and [`ShardHandle`]: submitting work to them.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};

use crate::error::{InvokeError, ShutdownError, StartError, TryInvokeError};
use crate::id::{ShardContext, ShardId};
use crate::mailbox::{Mailbox, TrySendError};
use crate::route::shard_for_key;
use crate::stall::{Heartbeats, Watchdog};
use crate::sync::{Arc, AtomicBool, AtomicU64, Ordering};

/// A unit of cross-shard work: called on the target shard, it yields the shard-local
/// (`!Send`) future to run there.
type Job = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// How to build a [`ShardSet`]. `ShardConfig::default()` gives one pinned shard per core.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ShardConfig {
    /// Number of shards; `None` = one per available core.
    pub shards: Option<usize>,
    /// Pin shard `i` to core `i % cores` (best effort: a refused pin is logged, not fatal).
    /// On an oversubscribed host pinning raises wake-up latency (a pinned shard waits for its
    /// own core; BENCHMARKS.md `## shards` measured 13x on a loaded 2-core VM): turn it off
    /// there.
    pub pin: bool,
    /// Jobs each shard's mailbox holds before senders wait (`invoke_on`) or fail
    /// (`try_invoke_on`). At least 1.
    pub mailbox_capacity: usize,
    /// Invoked closures each shard runs at once; the shard takes no more from its mailbox
    /// while this many are running, so a slow shard pushes back on its callers. At least 1.
    pub max_in_flight: usize,
    /// Report a task that holds its shard longer than this; `None` disables the detector.
    pub stall_threshold: Option<Duration>,
    /// How long shutdown waits for in-flight closures on each shard before cancelling them.
    pub drain_timeout: Duration,
    /// Thread names are `{prefix}-{index}` (Linux truncates names to 15 bytes).
    pub thread_name_prefix: String,
}

impl Default for ShardConfig {
    fn default() -> Self {
        Self {
            shards: None,
            pin: true,
            mailbox_capacity: 1024,
            max_in_flight: 1024,
            stall_threshold: Some(Duration::from_millis(100)),
            drain_timeout: Duration::from_secs(10),
            thread_name_prefix: "shard".to_owned(),
        }
    }
}

impl ShardConfig {
    /// Sets the shard count.
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = Some(n);
        self
    }
    /// Sets whether threads are pinned to cores.
    pub fn pin(mut self, pin: bool) -> Self {
        self.pin = pin;
        self
    }
    /// Sets the mailbox capacity.
    pub fn mailbox_capacity(mut self, n: usize) -> Self {
        self.mailbox_capacity = n;
        self
    }
    /// Sets the in-flight limit per shard.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }
    /// Sets (or disables, with `None`) the stall threshold.
    pub fn stall_threshold(mut self, t: Option<Duration>) -> Self {
        self.stall_threshold = t;
        self
    }
    /// Sets the drain timeout.
    pub fn drain_timeout(mut self, t: Duration) -> Self {
        self.drain_timeout = t;
        self
    }
    /// Sets the thread name prefix.
    pub fn thread_name_prefix(mut self, p: impl Into<String>) -> Self {
        self.thread_name_prefix = p.into();
        self
    }
}

static NEXT_SET_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

struct Inner {
    /// Distinguishes sets, so a shard of one set is not mistaken for a shard of another.
    set_id: u64,
    mailboxes: Vec<Mailbox<Job>>,
    accepting: AtomicBool,
    beats: Option<Arc<Heartbeats>>,
    /// Jobs accepted into mailboxes, all shards (a statistic for tests and metrics).
    submitted: AtomicU64,
}

/// A cloneable, `Send + Sync` handle to a [`ShardSet`]: submits work to its shards from any
/// thread (shard threads included). Holding a handle does not keep the shards running; after
/// shutdown every submission fails with `ShuttingDown`.
#[derive(Clone)]
pub struct ShardHandle {
    inner: Arc<Inner>,
}

impl fmt::Debug for ShardHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardHandle")
            .field("set_id", &self.inner.set_id)
            .field("shards", &self.inner.mailboxes.len())
            .finish()
    }
}

impl ShardHandle {
    /// Number of shards in the set.
    pub fn shard_count(&self) -> usize {
        self.inner.mailboxes.len()
    }

    /// Every shard id, in order.
    pub fn shard_ids(&self) -> impl Iterator<Item = ShardId> + use<> {
        // The count is <= u16::MAX + 1, checked at start.
        (0..self.shard_count()).map(|i| ShardId(i as u16))
    }

    /// The shard owning `key` ([`shard_for_key`]).
    pub fn shard_for_key(&self, key: &[u8]) -> ShardId {
        shard_for_key(key, self.shard_count())
    }

    /// Whether the calling thread is one of this set's shards, and which.
    pub fn current_shard(&self) -> Option<ShardId> {
        ShardContext::current()
            .filter(|c| c.handle().inner.set_id == self.inner.set_id)
            .map(|c| c.id())
    }

    /// Jobs accepted into mailboxes since start (all shards).
    pub fn submitted(&self) -> u64 {
        self.inner.submitted.load(Ordering::Relaxed)
    }

    /// Stalls the detector reported so far, per shard (all 0 when it is disabled).
    pub fn stall_counts(&self) -> Vec<u64> {
        match &self.inner.beats {
            Some(b) => b.counts(),
            None => vec![0; self.shard_count()],
        }
    }

    /// Jobs waiting in `shard`'s mailbox right now (a snapshot; 0 for an unknown shard).
    pub fn mailbox_len(&self, shard: ShardId) -> usize {
        self.inner
            .mailboxes
            .get(shard.index())
            .map_or(0, Mailbox::len)
    }

    /// The capacity of each mailbox.
    pub fn mailbox_capacity(&self) -> usize {
        self.inner.mailboxes.first().map_or(0, Mailbox::capacity)
    }

    fn mailbox(&self, shard: ShardId) -> Result<&Mailbox<Job>, InvokeError> {
        if !self.inner.accepting.load(Ordering::Acquire) {
            return Err(InvokeError::ShuttingDown);
        }
        self.inner
            .mailboxes
            .get(shard.index())
            .ok_or(InvokeError::NoSuchShard {
                shard,
                count: self.shard_count(),
            })
    }

    fn job<F, Fut, R>(f: F) -> (Job, oneshot::Receiver<R>)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            Box::pin(async move {
                let r = f().await;
                // The caller may have stopped waiting; the work is done either way.
                let _ = tx.send(r);
            })
        });
        (job, rx)
    }

    /// Runs `f` on `shard` and returns what the future it builds resolves to.
    ///
    /// `f` is sent to the shard (so it is `Send`); the future it returns runs there and may
    /// hold `!Send` shard-local state (`Rc`, `RefCell`, `spawn_local`). When the shard's
    /// mailbox is full this waits for space: the back-pressure that keeps queues bounded.
    /// Dropping the returned future before the job is queued withdraws it; after that the
    /// job runs to completion and its result is discarded.
    ///
    /// Errors: [`InvokeError::NoSuchShard`], [`InvokeError::ShuttingDown`], and
    /// [`InvokeError::Cancelled`] if the closure panicked or was cancelled by shutdown.
    pub fn invoke_on<F, Fut, R>(
        &self,
        shard: ShardId,
        f: F,
    ) -> impl Future<Output = Result<R, InvokeError>> + Send + 'static + use<F, Fut, R>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        let target = self.mailbox(shard).cloned();
        let inner = Arc::clone(&self.inner);
        let (job, rx) = Self::job(f);
        async move {
            let mailbox = target?;
            mailbox
                .send(job)
                .await
                .map_err(|_| InvokeError::ShuttingDown)?;
            inner.submitted.fetch_add(1, Ordering::Relaxed);
            rx.await.map_err(|_| InvokeError::Cancelled(shard))
        }
    }

    /// Like [`invoke_on`](Self::invoke_on), but fails at once with
    /// [`TryInvokeError::Full`] instead of waiting when the mailbox is full. On success the
    /// job is queued and the returned future resolves to its result.
    pub fn try_invoke_on<F, Fut, R>(
        &self,
        shard: ShardId,
        f: F,
    ) -> Result<impl Future<Output = Result<R, InvokeError>> + Send + use<F, Fut, R>, TryInvokeError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        let mailbox = self.mailbox(shard).map_err(|e| match e {
            InvokeError::NoSuchShard { shard, count } => {
                TryInvokeError::NoSuchShard { shard, count }
            }
            _ => TryInvokeError::ShuttingDown,
        })?;
        let (job, rx) = Self::job(f);
        match mailbox.try_send(job) {
            Ok(()) => {
                self.inner.submitted.fetch_add(1, Ordering::Relaxed);
                Ok(async move { rx.await.map_err(|_| InvokeError::Cancelled(shard)) })
            }
            Err(TrySendError::Full(_)) => Err(TryInvokeError::Full(shard)),
            Err(TrySendError::Closed(_)) => Err(TryInvokeError::ShuttingDown),
        }
    }

    /// Runs a clone of `f` on every shard (broadcast) and returns the results in shard
    /// order. All shards are sent their job before any result is awaited, so they run
    /// concurrently. Fails with the first error in shard order (the other jobs still run).
    pub fn invoke_on_all<F, Fut, R>(
        &self,
        f: F,
    ) -> impl Future<Output = Result<Vec<R>, InvokeError>> + Send + 'static + use<F, Fut, R>
    where
        F: FnOnce() -> Fut + Clone + Send + 'static,
        Fut: Future<Output = R> + 'static,
        R: Send + 'static,
    {
        let this = self.clone();
        async move {
            let mut receivers = Vec::with_capacity(this.shard_count());
            for shard in this.shard_ids() {
                let mailbox = this.mailbox(shard)?;
                let (job, rx) = Self::job(f.clone());
                mailbox
                    .send(job)
                    .await
                    .map_err(|_| InvokeError::ShuttingDown)?;
                this.inner.submitted.fetch_add(1, Ordering::Relaxed);
                receivers.push((shard, rx));
            }
            let mut out = Vec::with_capacity(receivers.len());
            for (shard, rx) in receivers {
                out.push(rx.await.map_err(|_| InvokeError::Cancelled(shard))?);
            }
            Ok(out)
        }
    }
}

impl ShardHandle {
    /// Builds one `T` on every shard with `make(shard)` and installs it as that shard's
    /// instance (Seastar's `sharded<T>::start`); code on a shard reaches it with
    /// [`local::<T>()`](crate::local). `T` may be `!Send`: it is created on its shard and never
    /// leaves it. Replaces earlier instances of `T`. Dropped when the shard stops.
    pub fn install_local<T, F>(
        &self,
        make: F,
    ) -> impl Future<Output = Result<(), InvokeError>> + Send + 'static + use<T, F>
    where
        T: 'static,
        F: Fn(ShardId) -> T + Clone + Send + 'static,
    {
        let all = self.invoke_on_all(move || async move {
            if let Some(id) = crate::id::current_shard() {
                crate::id::set_local(make(id));
            }
        });
        async move { all.await.map(drop) }
    }
}

/// One pinned tokio `current_thread` runtime per shard, each inside a `LocalSet`.
///
/// Start with [`ShardSet::start`], submit work through [`ShardSet::handle`], stop with
/// [`ShardSet::shutdown`] (dropping the set also shuts it down, ignoring errors).
///
/// Shutdown: (1) new submissions fail with `ShuttingDown`; (2) each shard runs every job
/// already in its mailbox and waits for its in-flight closures, up to `drain_timeout`;
/// (3) remaining shard-local tasks (e.g. `spawn_local`ed accept loops) are cancelled, the
/// runtime is dropped; (4) every thread, the watchdog included, is joined.
pub struct ShardSet {
    handle: ShardHandle,
    threads: Vec<(ShardId, JoinHandle<()>)>,
    watchdog: Option<Watchdog>,
}

impl fmt::Debug for ShardSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardSet")
            .field("handle", &self.handle)
            .finish()
    }
}

impl ShardSet {
    /// Starts the shards and waits until every one is running.
    pub fn start(config: ShardConfig) -> Result<ShardSet, StartError> {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let count = match config.shards {
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        if count == 0 || count > usize::from(u16::MAX) + 1 {
            return Err(StartError::InvalidShardCount(count));
        }
        if config.mailbox_capacity == 0 {
            return Err(StartError::InvalidConfig(
                "mailbox_capacity must be at least 1",
            ));
        }
        if config.max_in_flight == 0 {
            return Err(StartError::InvalidConfig(
                "max_in_flight must be at least 1",
            ));
        }
        let beats = config
            .stall_threshold
            .map(|t| Arc::new(Heartbeats::new(count, t)));
        let inner = Arc::new(Inner {
            set_id: NEXT_SET_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            mailboxes: (0..count)
                .map(|_| Mailbox::new(config.mailbox_capacity))
                .collect(),
            accepting: AtomicBool::new(true),
            beats: beats.clone(),
            submitted: AtomicU64::new(0),
        });
        let mut set = ShardSet {
            handle: ShardHandle { inner },
            threads: Vec::new(),
            watchdog: None,
        };

        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), StartError>>();
        for i in 0..count {
            let id = ShardId(i as u16);
            let core = if config.pin && !cores.is_empty() {
                Some(cores[i % cores.len()])
            } else {
                None
            };
            let handle = set.handle.clone();
            let ready = ready_tx.clone();
            let cfg = config.clone();
            let beats = beats.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("{}-{i}", config.thread_name_prefix))
                .spawn(move || shard_main(id, count, core, handle, cfg, beats, ready));
            match spawned {
                Ok(t) => set.threads.push((id, t)),
                Err(source) => {
                    let _ = set.stop();
                    return Err(StartError::Spawn { shard: id, source });
                }
            }
        }
        drop(ready_tx);
        for _ in 0..count {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    let _ = set.stop();
                    return Err(e);
                }
                // A shard thread died before reporting: treat as a runtime failure.
                Err(_) => {
                    let _ = set.stop();
                    return Err(StartError::Runtime {
                        shard: ShardId(0),
                        source: std::io::Error::other("a shard thread exited during start"),
                    });
                }
            }
        }
        if let Some(b) = beats {
            match Watchdog::start(b, format!("{}-watch", config.thread_name_prefix)) {
                Ok(w) => set.watchdog = Some(w),
                Err(source) => {
                    let _ = set.stop();
                    return Err(StartError::Spawn {
                        shard: ShardId(0),
                        source,
                    });
                }
            }
        }
        Ok(set)
    }

    /// A handle to submit work to the shards.
    pub fn handle(&self) -> &ShardHandle {
        &self.handle
    }

    /// Number of shards.
    pub fn shard_count(&self) -> usize {
        self.handle.shard_count()
    }

    /// Shuts the set down gracefully and joins every thread (see the type doc). Blocks the
    /// calling thread; from async code call it through `spawn_blocking`.
    pub fn shutdown(mut self) -> Result<(), ShutdownError> {
        self.stop()
    }

    fn stop(&mut self) -> Result<(), ShutdownError> {
        self.handle.inner.accepting.store(false, Ordering::Release);
        for m in &self.handle.inner.mailboxes {
            m.close();
        }
        if let Some(me) = self.handle.current_shard() {
            // A shard cannot join itself: the shards are told to stop and exit on their own
            // (detached) once their queued work is drained.
            self.threads.clear();
            drop(self.watchdog.take());
            return Err(ShutdownError::CalledFromShard(me));
        }
        let mut result = Ok(());
        for (id, t) in self.threads.drain(..) {
            if t.join().is_err() && result.is_ok() {
                result = Err(ShutdownError::ShardPanicked(id));
            }
        }
        drop(self.watchdog.take());
        result
    }
}

impl Drop for ShardSet {
    fn drop(&mut self) {
        if !self.threads.is_empty()
            && let Err(e) = self.stop()
        {
            tracing::error!(error = %e, "shard set shutdown on drop failed");
        }
    }
}

/// The body of shard thread `id`.
fn shard_main(
    id: ShardId,
    count: usize,
    core: Option<core_affinity::CoreId>,
    handle: ShardHandle,
    cfg: ShardConfig,
    beats: Option<Arc<Heartbeats>>,
    ready: std::sync::mpsc::Sender<Result<(), StartError>>,
) {
    if let Some(core) = core
        && !core_affinity::set_for_current(core)
    {
        tracing::warn!(
            shard = id.0,
            core = core.id,
            "could not pin shard thread to its core"
        );
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(source) => {
            let _ = ready.send(Err(StartError::Runtime { shard: id, source }));
            return;
        }
    };
    let mailbox = handle.inner.mailboxes[id.index()].clone();
    ShardContext::install(ShardContext::new(id, count, handle));
    let local = tokio::task::LocalSet::new();
    if let Some(b) = &beats {
        // Watched from now on: a job that blocks before the heartbeat task first runs is
        // still a stall.
        b.beat(id);
    }
    let _ = ready.send(Ok(()));
    drop(ready);

    local.block_on(&rt, async {
        if let Some(b) = beats.clone() {
            tokio::task::spawn_local(crate::stall::heartbeat(b, id));
        }
        pump(id, &mailbox, cfg.max_in_flight, cfg.drain_timeout).await;
        if let Some(b) = &beats {
            b.stop(id);
        }
    });
    // Cancel what is left (shard-local background tasks), then the runtime itself.
    drop(local);
    crate::id::clear_locals();
    crate::uring::release_thread_ring();
    rt.shutdown_timeout(cfg.drain_timeout);
    ShardContext::clear();
}

/// Runs mailbox jobs on this shard, at most `max_in_flight` at once, until the mailbox is
/// closed and drained; then waits (up to `drain`) for the in-flight ones.
async fn pump(id: ShardId, mailbox: &Mailbox<Job>, max_in_flight: usize, drain: Duration) {
    // Semaphore permits are u32-sized in tokio; the config is clamped to fit.
    let limit = max_in_flight
        .min(Semaphore::MAX_PERMITS)
        .min(u32::MAX as usize);
    let permits = std::sync::Arc::new(Semaphore::new(limit));
    loop {
        let Ok(permit) = std::sync::Arc::clone(&permits).acquire_owned().await else {
            break; // never closed; defensive
        };
        let Some(job) = mailbox.recv().await else {
            break;
        };
        tokio::task::spawn_local(async move {
            job().await;
            drop(permit);
        });
    }
    let all = permits.acquire_many(limit as u32);
    if tokio::time::timeout(drain, all).await.is_err() {
        tracing::warn!(shard = id.0, "drain timeout: cancelling in-flight work");
    }
}
