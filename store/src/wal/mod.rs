//! The per-shard write-ahead log: group-committed, checksummed, segment files in a directory.
//!
//! [`Wal::open`] recovers the log (returning every valid record, in order) and starts a writer
//! thread; [`Wal::append`] queues a record and resolves once the record is on disk
//! (`fdatasync` returned). Concurrent appends are batched by the writer into one write and one
//! `fdatasync` (group commit); the queue in front of it is bounded, so appenders wait when it
//! is full (back-pressure). Payloads are opaque bytes: their encoding belongs to the engine.
//!
//! # Why a writer thread
//! The engine runs on per-core tokio `current_thread` runtimes. A blocking `fdatasync` there
//! would stall every request of the shard for milliseconds, so the writer runs on its own OS
//! thread, driving the [`crate::fileio::Storage`] seam synchronously; appenders only touch a
//! bounded channel and a oneshot, which work from any runtime (or none). While the sync
//! threads run `fdatasync`s, the next batch accumulates in the queue: that is the group
//! commit, with no timer and no added latency at low load.
//!
//! # Overlapped group commit
//! With one flush in flight at a time, durable throughput is bounded by
//! `appenders / flush latency`; concurrent flushes share device cache flushes on this kind of
//! disk (BENCHMARKS.md, "store WAL"). So the writer does not wait for a batch's `fdatasync`:
//! it writes batch *n*, hands its sync to one of [`WalOptions::max_inflight_syncs`] sync
//! threads (each with its own file description of the segment, so a writeback error is
//! reported to every later sync and never consumed by a concurrent one), and goes on to batch
//! *n+1* at once. A sync started after batch *n* was written covers every batch up to *n*, so
//! when it returns `Ok`, batches up to *n* are acknowledged, in order; out-of-order
//! completions only ever acknowledge a prefix. At most `max_inflight_syncs` batches are
//! written but unacknowledged (each has its own sync); when all sync threads are busy,
//! appends accumulate into the next, larger batch. A rotation or truncation first waits for
//! every running sync. When a sync fails, every unacknowledged batch of the segment fails
//! (even if its own sync later succeeds) and the segment is retired as below, once its other
//! syncs have returned. `max_inflight_syncs = 1` is classic one-flush group commit.
//!
//! # On-disk format (version 1, little-endian)
//! The directory holds segment files named `{seq:016x}.wal`, `seq` consecutive. Each starts
//! with a 64-byte header:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `KSWALSEG` |
//! | 8 | format version (1) |
//! | 10..12 | shard id |
//! | 12..16 | salt (random per segment; seeds every record checksum) |
//! | 16..24 | segment sequence number |
//! | 24..32 | number of the first write batch in this segment |
//! | 32..40 | durable length of the previous segment |
//! | 40..48 | last revision written before this segment |
//! | 60..64 | crc32c of bytes 0..60 |
//!
//! Records follow, each starting on a 16-byte boundary: a 32-byte header
//! `payload_len u32 | crc32c u32 | revision u64 | batch u64 | version u8 | flags u8 | 0 [6]`,
//! the payload, and zero padding to the next 16-byte boundary. The crc32c covers the segment
//! salt, header bytes 8..32 and the payload. All records of one write batch carry the same
//! batch number (one more than the previous batch's); the last one has flag `BATCH_END`. A
//! batch is the unit that is written and fdatasync'ed, so a batch counts only once its
//! `BATCH_END` record decodes. Segments are preallocated (`fallocate`) to the segment size
//! when [`WalOptions::preallocate`] is set, so never-written space reads as zeros.
//!
//! # Recovery rule
//! 1. Segments other than the last were complete before the next one was created: each must
//!    decode cleanly up to the durable length recorded in its successor's header. Anything
//!    past that length belongs to a write that failed and is ignored; a decode failure before
//!    it is [`StoreError::Corrupt`].
//! 2. In the last segment, decoding stops at the first record that fails (short, zero, bad
//!    checksum, bad header) or at the end of data inside an unfinished batch. With `K` the
//!    segment's overlap window (header byte 9, at most `K` batches written but not yet
//!    acknowledged), if a valid record of a batch more than `K` past the last complete one
//!    lies beyond that point, the damaged data had been synced and acknowledged before that
//!    batch was written: that is corruption, and `open` fails with [`StoreError::Corrupt`]
//!    rather than drop acknowledged writes. Otherwise the damage is a torn tail (batches in
//!    flight, never acknowledged, cut by a crash, possibly written back out of order): the
//!    file is truncated to the end of the last complete batch and its remaining records are
//!    never applied.
//! 3. A last segment whose header is missing or all zeros, with nothing but zeros after it,
//!    is a segment whose creation was cut short: it is removed. Any other header damage is
//!    corruption.
//!
//! This is etcd's rule (a torn last entry is repaired, a CRC mismatch elsewhere is fatal),
//! made exact by the batch numbers where etcd uses a zeroed-sector heuristic. Its limit, as
//! in etcd: damage to one of the last `K` acknowledged batches, with nothing beyond the
//! window after it, looks like a torn tail and is dropped.
//!
//! # I/O failures
//! A batch whose write or `fdatasync` fails is answered with [`StoreError::Io`] (`ENOSPC`
//! included, as kind `StorageFull`) and is not acknowledged. After an `fdatasync` failure the
//! kernel may have dropped the dirty pages and a retried fsync could "succeed" without them
//! (PostgreSQL's fsyncgate), so the writer never retries on the same segment: it retires it at
//! once (truncating it to its last durable length, best effort) and starts a new segment whose
//! header records that durable length, so the failed bytes are never replayed, even if the
//! truncation did not reach the disk or the process stops right after. Earlier, successfully synced batches stay
//! durable and readable. When the fault clears, the next batch succeeds. If the disk also
//! refuses the new segment, appends keep failing until it does.
//!
//! # What the WAL owes the engine
//! 1. `append(..)` resolves `Ok` only after the record, and every record appended before it,
//!    is durable (written and fdatasync'ed).
//! 2. `open` returns exactly the records of complete batches, in append order, each payload
//!    byte-identical to what was appended; every acknowledged record is among them (except in
//!    the case named under "Recovery rule").
//! 3. A record whose append failed is never returned by a later `open`, except when the disk
//!    failed the write *and* then failed both the truncation and the creation of a new
//!    segment before a crash; the engine must treat a failed write's outcome as unknown in
//!    that case only, as etcd does for any failed proposal.
//! 4. Damage that would lose acknowledged records is reported as `Corrupt`, never skipped.
//! 5. Appends are refused with `QuotaExceeded` (retryable after `truncate_before` frees
//!    space) once the log's bytes would exceed [`WalOptions::quota_bytes`].
//!
//! # What the engine owes the WAL
//! 1. Revisions are appended in non-decreasing order (the writer refuses a record whose
//!    revision is below the last durable one with `InvalidRequest`); `append` takes the
//!    queue position at the call, so calling it in revision order is enough.
//! 2. Payloads are self-describing; the WAL adds no type information, only framing.
//! 3. The engine calls `truncate_before(rev)` only once a snapshot covering every revision
//!    below `rev` is durable; records below `rev` may then disappear.
//! 4. `open` returns records the snapshot already covers; the engine skips them by revision.
//! 5. One `Wal` per directory at a time (the writer assumes it alone writes there).

pub mod format;
mod writer;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::backend::Revision;
use crate::error::StoreError;
use crate::fileio::{Storage, default_storage};

/// Options of a [`Wal`]; [`WalOptions::new`] documents the defaults.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// The file I/O seam (the std implementation, or a fault-injecting one in tests).
    pub storage: Arc<dyn Storage>,
    /// A segment is closed and a new one started once a batch would grow it past this.
    pub segment_bytes: u64,
    /// Preallocate each segment to `segment_bytes` so appends do not change the file size.
    pub preallocate: bool,
    /// Capacity of the queue in front of the writer (records); appenders wait when it is full.
    pub queue_capacity: usize,
    /// Most records in one group-committed batch.
    pub max_batch_records: usize,
    /// Most payload bytes in one batch (a single larger record still goes alone).
    pub max_batch_bytes: usize,
    /// Largest accepted payload.
    pub max_record_bytes: usize,
    /// Refuse appends with `QuotaExceeded` once the log's bytes would exceed this.
    pub quota_bytes: Option<u64>,
    /// Most batches written whose `fdatasync` is still running (overlapped group commit),
    /// 1..=64; 1 is the classic one-flush-at-a-time group commit.
    pub max_inflight_syncs: usize,
}

impl WalOptions {
    /// Defaults: io_uring file I/O where a ring can be set up (std otherwise, logged), 64 MiB
    /// preallocated segments, a 4096-record queue, batches of up to 1024 records / 4 MiB,
    /// 16 MiB records, no quota, up to 4 overlapped `fdatasync`s.
    pub fn new() -> Self {
        Self::with_storage(default_storage())
    }

    /// The defaults of [`WalOptions::new`] over another storage.
    pub fn with_storage(storage: Arc<dyn Storage>) -> Self {
        Self {
            storage,
            segment_bytes: 64 << 20,
            preallocate: true,
            queue_capacity: 4096,
            max_batch_records: 1024,
            max_batch_bytes: 4 << 20,
            max_record_bytes: 16 << 20,
            quota_bytes: None,
            max_inflight_syncs: 4,
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        let bad = |what: &str| Err(StoreError::InvalidRequest(format!("WalOptions: {what}")));
        if self.queue_capacity == 0 || self.max_batch_records == 0 || self.max_batch_bytes == 0 {
            return bad("queue and batch limits must be positive");
        }
        if !(1..=64).contains(&self.max_inflight_syncs) {
            return bad("max_inflight_syncs must be in 1..=64");
        }
        if self.max_record_bytes > format::MAX_PAYLOAD_LEN {
            return bad("max_record_bytes above the format's 64 MiB");
        }
        if self.segment_bytes < (format::SEGMENT_HEADER_LEN as u64) * 2 {
            return bad("segment_bytes too small");
        }
        Ok(())
    }
}

impl Default for WalOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// One record returned by recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord {
    /// The revision it was appended with.
    pub revision: Revision,
    /// The payload, exactly as appended.
    pub payload: Bytes,
}

/// Counters of a [`Wal`], for tests and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WalStats {
    /// Records made durable since open.
    pub records: u64,
    /// Batches made durable since open (one write + one fdatasync each).
    pub batches: u64,
    /// Batches that failed (write, fdatasync or rotation error).
    pub failed_batches: u64,
    /// Segment files currently in the directory.
    pub segments: u64,
}

#[derive(Debug, Default)]
struct Shared {
    records: AtomicU64,
    batches: AtomicU64,
    failed_batches: AtomicU64,
    segments: AtomicU64,
    logical_bytes: AtomicU64,
    disk_bytes: AtomicU64,
    durable_revision: AtomicU64,
}

enum Request {
    Append {
        payload: Bytes,
        revision: u64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    TruncateBefore {
        revision: u64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
}

/// A shard's write-ahead log. `Send + Sync`: share it by reference or `Arc`/`Rc`.
#[derive(Debug)]
pub struct Wal {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
    max_record_bytes: usize,
    quota_bytes: Option<u64>,
    dir: PathBuf,
    exited: Mutex<Option<oneshot::Receiver<()>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Wal {
    /// Recovers the log in `dir` (created if missing) and starts its writer.
    ///
    /// Returns the WAL and every record of every complete batch still on disk, in append
    /// order. A torn tail is truncated; damage that would lose acknowledged records is
    /// [`StoreError::Corrupt`]; I/O failures are [`StoreError::Io`]. Blocking: call it at
    /// startup, not from a hot runtime.
    pub fn open(
        dir: &Path,
        shard: u16,
        options: WalOptions,
    ) -> Result<(Self, Vec<WalRecord>), StoreError> {
        options.check()?;
        let shared = Arc::new(Shared::default());
        let (writer, records) = writer::Writer::recover(dir, shard, &options, shared.clone())?;
        let (tx, rx) = mpsc::channel(options.queue_capacity);
        let (exit_tx, exit_rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("wal-{shard}"))
            .spawn(move || {
                writer.run(rx);
                let _ = exit_tx.send(());
            })
            .map_err(StoreError::Io)?;
        let wal = Self {
            tx,
            shared,
            max_record_bytes: options.max_record_bytes,
            quota_bytes: options.quota_bytes,
            dir: dir.to_path_buf(),
            exited: Mutex::new(Some(exit_rx)),
            thread: Mutex::new(Some(thread)),
        };
        Ok((wal, records))
    }

    /// Appends a record; the future resolves once it (and everything appended before it) is
    /// durable.
    ///
    /// The record takes its place in the queue when `append` is called, not when the future
    /// is first polled, so calls made in revision order are written in revision order even
    /// when the queue is full and appenders wait. The flip side: while the queue is full, a
    /// waiting future must be polled (awaited, or spawned as a task) once space is given to
    /// it, or later appends wait behind it. Dropping the future before it resolves may
    /// or may not drop the record (if it was already queued, it is written).
    ///
    /// Errors: `ValueTooLarge` (payload above `max_record_bytes`), `InvalidRequest` (revision
    /// below the last durable one), `QuotaExceeded`, `Io` (not durable; retryable once the
    /// disk recovers), `Unavailable` (the writer has stopped).
    pub fn append(&self, payload: Bytes, revision: Revision) -> AppendFuture {
        if payload.len() > self.max_record_bytes {
            return AppendFuture::failed(StoreError::ValueTooLarge {
                size: payload.len(),
                limit: self.max_record_bytes,
            });
        }
        let mut fut = AppendFuture {
            state: State::Waiting {
                reserve: None,
                payload: Some((payload, revision.0)),
            },
        };
        let tx = match self.tx.clone().try_reserve_owned() {
            Ok(permit) => {
                fut.send(permit);
                return fut;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return AppendFuture::failed(writer_gone());
            }
            Err(mpsc::error::TrySendError::Full(tx)) => tx,
        };
        // The queue is full. Poll once right away so the record's queue position is taken
        // now (tokio's semaphore queues waiters in the order of their first poll); outside
        // tokio's cooperative budget, which could otherwise answer Pending without queueing.
        let mut reserve: ReserveFuture = Box::pin(tokio::task::unconstrained(tx.reserve_owned()));
        let mut cx = Context::from_waker(Waker::noop());
        match reserve.as_mut().poll(&mut cx) {
            Poll::Ready(Ok(permit)) => fut.send(permit),
            Poll::Ready(Err(_)) => fut.state = State::Failed(Some(writer_gone())),
            Poll::Pending => {
                if let State::Waiting { reserve: slot, .. } = &mut fut.state {
                    *slot = Some(reserve);
                }
            }
        }
        fut
    }

    /// Deletes whole segments whose records all have revisions below `revision` (the active
    /// segment is closed first if it qualifies). Returns how many segments were deleted.
    /// Call only once a durable snapshot covers every revision below `revision`.
    pub async fn truncate_before(&self, revision: Revision) -> Result<u64, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::TruncateBefore {
                revision: revision.0,
                reply,
            })
            .await
            .map_err(|_| writer_gone())?;
        rx.await.map_err(|_| writer_gone())?
    }

    /// Bytes of log data (headers and records) in live segments: what the quota counts.
    pub fn logical_bytes(&self) -> u64 {
        self.shared.logical_bytes.load(Ordering::Relaxed)
    }

    /// Bytes the segment files occupy (including preallocated space).
    pub fn disk_bytes(&self) -> u64 {
        self.shared.disk_bytes.load(Ordering::Relaxed)
    }

    /// The quota, if any.
    pub fn quota_bytes(&self) -> Option<u64> {
        self.quota_bytes
    }

    /// The highest durable revision (0 if none).
    pub fn durable_revision(&self) -> Revision {
        Revision(self.shared.durable_revision.load(Ordering::Acquire))
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Counters since open.
    pub fn stats(&self) -> WalStats {
        WalStats {
            records: self.shared.records.load(Ordering::Relaxed),
            batches: self.shared.batches.load(Ordering::Relaxed),
            failed_batches: self.shared.failed_batches.load(Ordering::Relaxed),
            segments: self.shared.segments.load(Ordering::Relaxed),
        }
    }

    /// Stops the writer after it has finished every queued append, and waits for it.
    /// Append futures still waiting for queue space keep the writer alive: drop or finish
    /// them first.
    pub async fn close(self) -> Result<(), StoreError> {
        let Self {
            tx, exited, thread, ..
        } = self;
        drop(tx);
        let exited = exited.lock().take();
        if let Some(rx) = exited {
            // Err means the thread ended without signalling (it panicked); join reports it.
            let _ = rx.await;
        }
        let handle = thread.lock().take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            return Err(StoreError::Io(io::Error::other(
                "wal writer thread panicked",
            )));
        }
        Ok(())
    }
}

fn writer_gone() -> StoreError {
    StoreError::Unavailable("the WAL writer has stopped".into())
}

type ReserveFuture = Pin<
    Box<dyn Future<Output = Result<mpsc::OwnedPermit<Request>, mpsc::error::SendError<()>>> + Send>,
>;

enum State {
    Failed(Option<StoreError>),
    Waiting {
        reserve: Option<ReserveFuture>,
        payload: Option<(Bytes, u64)>,
    },
    Sent(oneshot::Receiver<Result<(), StoreError>>),
    Done,
}

/// The future returned by [`Wal::append`]: resolves once the record is durable.
#[must_use = "the record is durable only once this resolves Ok"]
pub struct AppendFuture {
    state: State,
}

impl std::fmt::Debug for AppendFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.state {
            State::Failed(_) => "failed",
            State::Waiting { .. } => "waiting for queue space",
            State::Sent(_) => "queued",
            State::Done => "done",
        };
        f.debug_struct("AppendFuture")
            .field("state", &state)
            .finish()
    }
}

impl AppendFuture {
    fn failed(e: StoreError) -> Self {
        Self {
            state: State::Failed(Some(e)),
        }
    }

    fn send(&mut self, permit: mpsc::OwnedPermit<Request>) {
        let State::Waiting { payload, .. } = &mut self.state else {
            return;
        };
        let Some((payload, revision)) = payload.take() else {
            return;
        };
        let (reply, rx) = oneshot::channel();
        permit.send(Request::Append {
            payload,
            revision,
            reply,
        });
        self.state = State::Sent(rx);
    }
}

impl Future for AppendFuture {
    type Output = Result<(), StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match &mut self.state {
                State::Failed(e) => {
                    let e = e.take().unwrap_or_else(writer_gone);
                    self.state = State::Done;
                    return Poll::Ready(Err(e));
                }
                State::Waiting { reserve, .. } => {
                    let Some(reserve) = reserve.as_mut() else {
                        self.state = State::Failed(Some(writer_gone()));
                        continue;
                    };
                    match reserve.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(permit)) => self.send(permit),
                        Poll::Ready(Err(_)) => self.state = State::Failed(Some(writer_gone())),
                    }
                }
                State::Sent(rx) => {
                    let result = match Pin::new(rx).poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(result)) => result,
                        Poll::Ready(Err(_)) => Err(writer_gone()),
                    };
                    self.state = State::Done;
                    return Poll::Ready(result);
                }
                State::Done => {
                    return Poll::Ready(Err(StoreError::InvalidRequest(
                        "AppendFuture polled after completion".into(),
                    )));
                }
            }
        }
    }
}
