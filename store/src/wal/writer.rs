//! Recovery and the writer thread: group commit, rotation, truncation, failure handling.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::Thread;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use super::format::{self, FLAG_BATCH_END, SEGMENT_HEADER_LEN, SegmentHeader};
use super::{Request, Shared, WalOptions, WalRecord};
use crate::backend::Revision;
use crate::error::StoreError;
use crate::fileio::{Storage, StorageFile, SyncHandle};

/// A queued append: payload, revision, where to send the outcome.
type Pending = (Bytes, u64, oneshot::Sender<Result<(), StoreError>>);

/// A segment file the log still holds.
#[derive(Debug)]
struct Segment {
    seq: u64,
    path: PathBuf,
    /// Highest revision in it, or the header's base revision if it holds no record.
    last_revision: u64,
    /// Valid, durable bytes (header included).
    durable_len: u64,
    /// Size of the file (preallocation included).
    file_len: u64,
}

/// The segment being appended to.
#[derive(Debug)]
struct Active {
    file: Box<dyn StorageFile>,
    header: SegmentHeader,
    /// Where the next batch goes.
    write_off: u64,
    /// End of the last acknowledged batch: everything before it is durable.
    durable_off: u64,
    /// Set after a failed write or sync: nothing more is written to this file.
    broken: bool,
    /// Set after a failed sync: nothing more written to this file is acknowledged.
    sync_failed: bool,
}

/// A batch that is written and waits for a sync that covers it.
struct Inflight {
    batch: u64,
    /// Segment offset right after the batch.
    end_off: u64,
    last_revision: u64,
    framed_bytes: u64,
    replies: Vec<oneshot::Sender<Result<(), StoreError>>>,
}

/// A sync job for one sync thread: sync `handle`, which covers every batch up to `batch`.
struct SyncJob {
    handle: Box<dyn SyncHandle>,
    batch: u64,
    seq: u64,
}

/// A finished sync job, handed back to the writer.
struct SyncDone {
    slot: usize,
    handle: Box<dyn SyncHandle>,
    batch: u64,
    seq: u64,
    result: io::Result<()>,
}

/// One sync thread and the handle it uses while idle (`None` while its job runs).
struct Slot {
    jobs: std::sync::mpsc::Sender<SyncJob>,
    handle: Option<Box<dyn SyncHandle>>,
    busy: bool,
}

/// Finished sync jobs, and the writer thread to wake when one arrives.
struct Completions {
    done: Mutex<Vec<SyncDone>>,
    writer: Thread,
}

/// Wakes the writer thread (parked while it waits for requests or syncs).
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

pub(super) struct Writer {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    shard: u16,
    segment_bytes: u64,
    preallocate: bool,
    max_batch_records: usize,
    max_batch_bytes: usize,
    quota_bytes: Option<u64>,
    max_inflight: usize,
    segments: VecDeque<Segment>,
    active: Option<Active>,
    next_batch: u64,
    /// Highest acknowledged (durable) revision.
    last_revision: u64,
    /// Highest revision written (acknowledged or in flight): the admission bound.
    written_revision: u64,
    buf: Vec<u8>,
    shared: Arc<Shared>,
    /// Written batches awaiting a covering sync, in batch order (at most `max_inflight`).
    inflight: VecDeque<Inflight>,
    inflight_bytes: u64,
    /// Sync threads (empty until `run` starts them; recovery and rotation sync inline).
    slots: Vec<Slot>,
    completions: Option<Arc<Completions>>,
}

fn corrupt(msg: String) -> StoreError {
    StoreError::Corrupt(msg)
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".wal")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

fn random_salt(seq: u64) -> u32 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(seq);
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    (h.finish() >> 16) as u32
}

/// Copies an I/O error so one failure can be reported to every appender of a batch.
fn copy_err(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

impl Writer {
    /// Recovers the log in `dir`: see the recovery rule in the module doc.
    pub(super) fn recover(
        dir: &Path,
        shard: u16,
        opts: &WalOptions,
        shared: Arc<Shared>,
    ) -> Result<(Self, Vec<WalRecord>), StoreError> {
        let storage = opts.storage.clone();
        storage.create_dir_all(dir)?;
        let mut seqs: Vec<u64> = storage
            .list(dir)?
            .iter()
            .filter_map(|n| parse_segment_name(n))
            .collect();
        seqs.sort_unstable();
        for pair in seqs.windows(2) {
            if let [a, b] = pair
                && *b != a + 1
            {
                return Err(corrupt(format!(
                    "WAL segment {} is missing (found {a:016x} and {b:016x})",
                    segment_name(a + 1)
                )));
            }
        }
        // Only up to the end of each file's data: a preallocated segment's never-written
        // tail reads as zeros anyway, and reading it back costs more than the records.
        let mut datas = Vec::with_capacity(seqs.len());
        let mut file_lens = Vec::with_capacity(seqs.len());
        for &seq in &seqs {
            let (data, len) = storage.read_data(&dir.join(segment_name(seq)))?;
            datas.push(data);
            file_lens.push(len);
        }
        // Rule 3: a last segment whose creation was cut short is removed.
        if let Some(last) = datas.last()
            && SegmentHeader::decode(last).is_err()
        {
            let seq = seqs.last().copied().unwrap_or_default();
            if last.iter().any(|&b| b != 0) {
                return Err(corrupt(format!(
                    "WAL segment {} has a damaged header",
                    segment_name(seq)
                )));
            }
            tracing::warn!(
                shard,
                seq,
                "removing a WAL segment whose creation was cut short"
            );
            storage.remove(&dir.join(segment_name(seq)))?;
            storage.sync_dir(dir)?;
            seqs.pop();
            datas.pop();
            file_lens.pop();
        }
        let mut headers = Vec::with_capacity(datas.len());
        for (data, &seq) in datas.iter().zip(&seqs) {
            let h = SegmentHeader::decode(data)
                .map_err(|e| corrupt(format!("WAL segment {}: header {e:?}", segment_name(seq))))?;
            if h.seq != seq || h.shard != shard {
                return Err(corrupt(format!(
                    "WAL segment {} has seq {} of shard {} (expected shard {shard})",
                    segment_name(seq),
                    h.seq,
                    h.shard
                )));
            }
            headers.push(h);
        }

        let mut writer = Self {
            storage: storage.clone(),
            dir: dir.to_path_buf(),
            shard,
            segment_bytes: opts.segment_bytes,
            preallocate: opts.preallocate,
            max_batch_records: opts.max_batch_records,
            max_batch_bytes: opts.max_batch_bytes,
            quota_bytes: opts.quota_bytes,
            max_inflight: opts.max_inflight_syncs,
            segments: VecDeque::new(),
            active: None,
            next_batch: 1,
            last_revision: 0,
            written_revision: 0,
            buf: Vec::new(),
            shared,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            slots: Vec::new(),
            completions: None,
        };
        let mut records = Vec::new();
        let mut tail: Option<(u64, usize, bool)> = None; // (seq, valid_end, needs truncation)
        let n = datas.len();
        for (i, (data, h)) in datas.into_iter().zip(headers.iter()).enumerate() {
            let is_last = i + 1 == n;
            let name = segment_name(h.seq);
            let limit = match headers.get(i + 1) {
                Some(next) => usize::try_from(next.prev_durable_len).unwrap_or(usize::MAX),
                None => data.len(),
            };
            let scan = format::scan_segment(&data, limit)
                .map_err(|e| corrupt(format!("WAL segment {name}: {e:?}")))?;
            if h.first_batch < writer.next_batch {
                return Err(corrupt(format!(
                    "WAL segment {name}: batch numbers go backwards"
                )));
            }
            if !is_last && (scan.stopped.is_some() || scan.valid_end != limit) {
                return Err(corrupt(format!(
                    "WAL segment {name}: damaged at offset {} before its durable length {limit} \
                     ({:?})",
                    scan.valid_end, scan.stopped
                )));
            }
            if is_last && let (Some((off, err)), Some(later)) = (scan.stopped, scan.later_batch_at)
            {
                return Err(corrupt(format!(
                    "WAL segment {name}: record at offset {off} is damaged ({err:?}) but a \
                     later batch follows at offset {later}; refusing to drop acknowledged writes"
                )));
            }
            let file_len = file_lens.get(i).copied().unwrap_or(data.len() as u64);
            let dirty = is_last
                && data
                    .get(scan.valid_end..)
                    .is_some_and(|t| t.iter().any(|&b| b != 0));
            // Replayed payloads point into this buffer: drop the preallocated (or torn) tail
            // so it is not kept alive with them.
            let mut data = data;
            data.truncate(scan.valid_end);
            data.shrink_to_fit();
            let data = Bytes::from(data);
            let mut last_revision = h.base_revision.max(writer.last_revision);
            for rec in &scan.records {
                if rec.revision < last_revision {
                    return Err(corrupt(format!(
                        "WAL segment {name}: revision {} after {last_revision}",
                        rec.revision
                    )));
                }
                last_revision = rec.revision;
                records.push(WalRecord {
                    revision: Revision(rec.revision),
                    payload: data.slice(rec.payload.clone()),
                });
            }
            writer.last_revision = last_revision;
            writer.written_revision = last_revision;
            writer.next_batch = scan.last_batch + 1;
            if is_last {
                tail = Some((h.seq, scan.valid_end, dirty));
            }
            writer.segments.push_back(Segment {
                seq: h.seq,
                path: dir.join(&name),
                last_revision,
                durable_len: scan.valid_end as u64,
                file_len,
            });
        }
        match (tail, headers.last()) {
            (Some((seq, valid_end, dirty)), Some(header)) => {
                writer.reopen_tail(seq, valid_end as u64, dirty, *header)?;
            }
            _ => {
                let base = writer.last_revision;
                writer.start_segment(0, base).map_err(StoreError::Io)?;
            }
        }
        writer.publish();
        Ok((writer, records))
    }

    /// Opens the last segment for appending, cutting a torn tail first.
    fn reopen_tail(
        &mut self,
        seq: u64,
        valid_end: u64,
        dirty: bool,
        header: SegmentHeader,
    ) -> Result<(), StoreError> {
        let path = self.dir.join(segment_name(seq));
        let mut file = self.storage.open(&path)?;
        if dirty {
            tracing::warn!(
                shard = self.shard,
                seq,
                valid_end,
                "truncating a torn WAL tail"
            );
            file.set_len(valid_end)?;
            if self.preallocate {
                file.allocate(self.segment_bytes)?;
            }
            file.sync_all()?;
            let file_len = file.len()?;
            if let Some(seg) = self.segments.back_mut() {
                seg.file_len = file_len;
            }
        }
        self.active = Some(Active {
            file,
            header,
            write_off: valid_end,
            durable_off: valid_end,
            broken: false,
            sync_failed: false,
        });
        self.open_sync_handles(&path).map_err(StoreError::Io)?;
        Ok(())
    }

    /// Gives every sync slot a fresh handle on the active segment (no sync may be running).
    fn open_sync_handles(&mut self, path: &Path) -> io::Result<()> {
        for slot in &mut self.slots {
            slot.handle = Some(self.storage.open_sync_handle(path)?);
        }
        Ok(())
    }

    /// Creates segment `seq`, durable (header synced, directory synced) before any record.
    fn start_segment(&mut self, seq: u64, prev_durable_len: u64) -> io::Result<()> {
        let path = self.dir.join(segment_name(seq));
        let header = SegmentHeader {
            shard: self.shard,
            salt: random_salt(seq),
            seq,
            first_batch: self.next_batch,
            prev_durable_len,
            base_revision: self.last_revision,
            overlap: u8::try_from(self.max_inflight).unwrap_or(u8::MAX),
        };
        // A leftover of an earlier failed attempt at this very segment would block the name.
        let _ = self.storage.remove(&path);
        let mut file = self.storage.create(&path)?;
        let made = (|| {
            if self.preallocate {
                file.allocate(self.segment_bytes)?;
            }
            file.write_all_at(&header.encode(), 0)?;
            file.sync_all()?;
            self.storage.sync_dir(&self.dir)?;
            for slot in &mut self.slots {
                slot.handle = Some(self.storage.open_sync_handle(&path)?);
            }
            file.len()
        })();
        let file_len = match made {
            Ok(len) => len,
            Err(e) => {
                drop(file);
                // Best effort, so a retry can create the same name; recovery removes an
                // all-zero leftover anyway.
                let _ = self.storage.remove(&path);
                return Err(e);
            }
        };
        self.segments.push_back(Segment {
            seq,
            path,
            last_revision: self.last_revision,
            durable_len: SEGMENT_HEADER_LEN as u64,
            file_len,
        });
        self.active = Some(Active {
            file,
            header,
            write_off: SEGMENT_HEADER_LEN as u64,
            durable_off: SEGMENT_HEADER_LEN as u64,
            broken: false,
            sync_failed: false,
        });
        Ok(())
    }

    /// Closes the active segment (truncating a broken one to its durable length) and starts
    /// the next, whose header records that length.
    fn rotate(&mut self) -> io::Result<()> {
        let (seq, durable) = match self.active.as_mut() {
            Some(a) => {
                if a.broken {
                    let cut = a
                        .file
                        .set_len(a.durable_off)
                        .and_then(|()| a.file.sync_all());
                    if let Err(e) = cut {
                        tracing::warn!(shard = self.shard, error = %e, "could not truncate a failed WAL segment");
                    }
                }
                (a.header.seq + 1, a.durable_off)
            }
            None => (self.segments.back().map_or(0, |s| s.seq + 1), 0),
        };
        self.start_segment(seq, durable)?;
        Ok(())
    }

    /// Publishes size counters for the engine.
    fn publish(&self) {
        let logical: u64 = self.segments.iter().map(|s| s.durable_len).sum();
        let disk: u64 = self
            .segments
            .iter()
            .map(|s| s.file_len.max(s.durable_len))
            .sum();
        self.shared.logical_bytes.store(logical, Ordering::Relaxed);
        self.shared.disk_bytes.store(disk, Ordering::Relaxed);
        self.shared
            .segments
            .store(self.segments.len() as u64, Ordering::Relaxed);
        self.shared
            .durable_revision
            .store(self.last_revision, Ordering::Release);
    }

    /// Starts the sync threads (one per overlapped sync) with handles on the active segment.
    fn start_syncers(&mut self) -> io::Result<()> {
        let completions = Arc::new(Completions {
            done: Mutex::new(Vec::new()),
            writer: std::thread::current(),
        });
        for i in 0..self.max_inflight {
            let (jobs, rx) = std::sync::mpsc::channel::<SyncJob>();
            let done = completions.clone();
            std::thread::Builder::new()
                .name(format!("wal-{}-sync{i}", self.shard))
                .spawn(move || {
                    // Ends when the writer drops the job sender.
                    while let Ok(mut job) = rx.recv() {
                        let result = job.handle.sync_data();
                        done.done.lock().push(SyncDone {
                            slot: i,
                            handle: job.handle,
                            batch: job.batch,
                            seq: job.seq,
                            result,
                        });
                        done.writer.unpark();
                    }
                })?;
            self.slots.push(Slot {
                jobs,
                handle: None,
                busy: false,
            });
        }
        self.completions = Some(completions);
        if let Some(seq) = self.active.as_ref().map(|a| a.header.seq) {
            let path = self.dir.join(segment_name(seq));
            self.open_sync_handles(&path)?;
        }
        Ok(())
    }

    /// The writer thread's loop: drain the queue into batches until every sender is gone.
    ///
    /// Overlapped group commit: a batch is written and its `fdatasync` handed to a free sync
    /// thread, and the writer goes on to the next batch at once; at most `max_inflight`
    /// syncs run. A sync started after batch *n* was written covers every batch up to *n*, so
    /// when it returns, batches up to *n* are acknowledged, in order.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        self.storage.prepare_thread();
        if let Err(e) = self.start_syncers() {
            // Without sync threads nothing can become durable: answer everything with it.
            tracing::error!(shard = self.shard, error = %e, "WAL sync threads could not start");
            while let Some(req) = rx.blocking_recv() {
                match req {
                    Request::Append { reply, .. } => {
                        let _ = reply.send(Err(StoreError::Io(copy_err(&e))));
                    }
                    Request::TruncateBefore { reply, .. } => {
                        let _ = reply.send(Err(StoreError::Io(copy_err(&e))));
                    }
                }
            }
            return;
        }
        tracing::debug!(
            shard = self.shard,
            io = self.storage.name(),
            overlap = self.max_inflight,
            "WAL writer started"
        );
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut batch: Vec<Pending> = Vec::new();
        let mut bytes = 0usize;
        let mut control: Option<(u64, oneshot::Sender<Result<u64, StoreError>>)> = None;
        let mut closed = false;
        loop {
            self.reap();
            // Take requests while the batch has room (bounded by max_batch_records/bytes).
            while !closed
                && control.is_none()
                && batch.len() < self.max_batch_records
                && bytes < self.max_batch_bytes
            {
                match rx.poll_recv(&mut cx) {
                    Poll::Ready(Some(Request::Append {
                        payload,
                        revision,
                        reply,
                    })) => {
                        bytes += payload.len();
                        batch.push((payload, revision, reply));
                    }
                    Poll::Ready(Some(Request::TruncateBefore { revision, reply })) => {
                        control = Some((revision, reply));
                    }
                    Poll::Ready(None) => closed = true,
                    Poll::Pending => break,
                }
            }
            if !batch.is_empty() && self.free_slot().is_some() {
                self.commit(&mut batch);
                bytes = 0;
                continue;
            }
            if batch.is_empty() {
                if let Some((revision, reply)) = control.take() {
                    self.drain();
                    let _ = reply.send(self.truncate_before(revision));
                    continue;
                }
                if closed {
                    break;
                }
            }
            // Nothing to do until a request arrives or a sync returns (both unpark us).
            std::thread::park();
        }
        self.drain();
        self.retire_broken();
        if let Some(a) = self.active.as_mut()
            && !a.broken
        {
            let _ = a.file.sync_data();
        }
        // Dropping the slots ends the sync threads.
        self.slots.clear();
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| !s.busy && s.handle.is_some())
    }

    fn syncs_running(&self) -> bool {
        self.slots.iter().any(|s| s.busy)
    }

    /// Waits until no sync runs, handling every completion.
    fn drain(&mut self) {
        // Bounded by the syncs in flight (each returns once; the disk decides when).
        while self.syncs_running() {
            self.reap();
            if self.syncs_running() {
                std::thread::park();
            }
        }
        self.reap();
    }

    /// Handles finished syncs: acknowledges the batches they cover, or fails every batch of
    /// a segment whose sync failed.
    fn reap(&mut self) {
        let done = match &self.completions {
            Some(c) => std::mem::take(&mut *c.done.lock()),
            None => return,
        };
        if done.is_empty() {
            return;
        }
        let active_seq = self.active.as_ref().map(|a| a.header.seq);
        let mut covered = 0u64;
        for d in done {
            if let Some(slot) = self.slots.get_mut(d.slot) {
                slot.busy = false;
                // A handle of a retired segment is of no further use.
                if Some(d.seq) == active_seq {
                    slot.handle = Some(d.handle);
                }
            }
            match d.result {
                Ok(()) => {
                    if Some(d.seq) == active_seq
                        && !self.active.as_ref().is_some_and(|a| a.sync_failed)
                    {
                        covered = covered.max(d.batch);
                    }
                }
                Err(e) => self.sync_failed(&e),
            }
        }
        if covered > 0 {
            self.acknowledge(covered);
        }
        if !self.syncs_running() && self.active.as_ref().is_some_and(|a| a.broken) {
            // Every batch a sync could still cover is decided; the rest cannot be.
            self.fail_inflight(&io::Error::other("the WAL segment failed"));
            // Retire the failed segment now, not at the next append: its failed bytes may
            // sit complete in the file, and a clean restart must not replay them.
            self.retire_broken();
            self.publish();
        }
    }

    /// Acknowledges every in-flight batch up to `covered`, in order.
    fn acknowledge(&mut self, covered: u64) {
        let mut records = 0u64;
        let mut batches = 0u64;
        let mut end = None;
        let mut replies = Vec::new();
        while self.inflight.front().is_some_and(|b| b.batch <= covered) {
            let Some(b) = self.inflight.pop_front() else {
                break;
            };
            self.inflight_bytes -= b.framed_bytes;
            self.last_revision = self.last_revision.max(b.last_revision);
            end = Some(b.end_off);
            records += b.replies.len() as u64;
            batches += 1;
            replies.push(b.replies);
        }
        let Some(end) = end else { return };
        if let Some(a) = self.active.as_mut() {
            a.durable_off = end;
        }
        if let Some(seg) = self.segments.back_mut() {
            seg.durable_len = end;
            seg.file_len = seg.file_len.max(end);
            seg.last_revision = self.last_revision;
        }
        self.shared.records.fetch_add(records, Ordering::Relaxed);
        self.shared.batches.fetch_add(batches, Ordering::Relaxed);
        self.publish();
        // Answer only once the counters and the durable revision show the batches.
        for reply in replies.into_iter().flatten() {
            let _ = reply.send(Ok(()));
        }
    }

    /// A sync of the active segment failed: nothing written to it since its last
    /// acknowledged batch can be trusted (fsyncgate), so every unacknowledged batch fails and
    /// the segment is retired once its other syncs have returned.
    fn sync_failed(&mut self, e: &io::Error) {
        if let Some(a) = self.active.as_mut() {
            a.broken = true;
            a.sync_failed = true;
        }
        self.fail_inflight(e);
    }

    fn fail_inflight(&mut self, e: &io::Error) {
        if self.inflight.is_empty() {
            return;
        }
        tracing::warn!(shard = self.shard, error = %e, batches = self.inflight.len(), "WAL batches failed");
        for b in self.inflight.drain(..) {
            self.shared.failed_batches.fetch_add(1, Ordering::Relaxed);
            for reply in b.replies {
                let _ = reply.send(Err(StoreError::Io(copy_err(e))));
            }
        }
        self.inflight_bytes = 0;
        self.written_revision = self.last_revision;
    }

    /// If the active segment is broken, truncates it to its durable length and starts the
    /// next segment (whose header records that length). On failure it stays broken and the
    /// next batch tries again.
    fn retire_broken(&mut self) {
        if self.active.as_ref().is_some_and(|a| a.broken)
            && let Err(e) = self.rotate()
        {
            tracing::warn!(shard = self.shard, error = %e, "could not retire a failed WAL segment");
        }
    }

    /// Admits a batch, writes it and starts its sync (a slot must be free).
    fn commit(&mut self, batch: &mut Vec<Pending>) {
        // Admission: order and quota. Refused records are answered now and left out.
        let mut accepted = Vec::with_capacity(batch.len());
        let mut last = self.written_revision;
        let mut logical = self.shared.logical_bytes.load(Ordering::Relaxed) + self.inflight_bytes;
        let mut over_quota = false;
        for (payload, revision, reply) in batch.drain(..) {
            if revision < last {
                let _ = reply.send(Err(StoreError::InvalidRequest(format!(
                    "WAL append of revision {revision} after revision {last}"
                ))));
                continue;
            }
            let framed = format::framed_len(payload.len()) as u64;
            if let Some(quota) = self.quota_bytes
                && (over_quota || logical + framed > quota)
            {
                // Later records are refused too, so no record overtakes a refused one.
                over_quota = true;
                let _ = reply.send(Err(StoreError::QuotaExceeded(format!(
                    "WAL of shard {} holds {logical} bytes; quota {quota}",
                    self.shard
                ))));
                continue;
            }
            logical += framed;
            last = revision;
            accepted.push((payload, revision, reply));
        }
        if accepted.is_empty() {
            return;
        }
        if let Err(e) = self.write_batch(accepted) {
            tracing::warn!(shard = self.shard, error = %e, "WAL batch failed");
            // The failed batch was answered by write_batch. Let the syncs still running
            // decide the batches before it, then retire the segment at their durable end.
            self.drain();
            self.retire_broken();
            self.publish();
        }
    }

    /// Writes one batch with one write and hands its fdatasync to a free sync thread. On a
    /// write failure the batch is answered `Io` here and the segment is marked broken.
    fn write_batch(&mut self, accepted: Vec<Pending>) -> io::Result<()> {
        let len: usize = accepted
            .iter()
            .map(|(p, _, _)| format::framed_len(p.len()))
            .sum();
        let needs_rotation = match &self.active {
            None => true,
            Some(a) => {
                a.broken
                    || (a.write_off > SEGMENT_HEADER_LEN as u64
                        && a.write_off + len as u64 > self.segment_bytes)
            }
        };
        let fail = |accepted: Vec<Pending>, shared: &Shared, e: &io::Error| {
            shared.failed_batches.fetch_add(1, Ordering::Relaxed);
            for (_, _, reply) in accepted {
                let _ = reply.send(Err(StoreError::Io(copy_err(e))));
            }
        };
        if needs_rotation {
            // Batches of the old segment are acknowledged before the new one takes writes,
            // so acknowledgements stay in order across segments.
            self.drain();
            if let Err(e) = self.rotate() {
                fail(accepted, &self.shared, &e);
                return Err(e);
            }
        }
        let Some(slot) = self.free_slot() else {
            let e = io::Error::other("no WAL sync slot free");
            fail(accepted, &self.shared, &e);
            return Err(e);
        };
        let Some(active) = self.active.as_mut() else {
            let e = io::Error::other("no active WAL segment");
            fail(accepted, &self.shared, &e);
            return Err(e);
        };
        let batch = self.next_batch;
        // A batch number is never reused, even if this batch fails.
        self.next_batch += 1;
        self.buf.clear();
        for (i, (payload, revision, _)) in accepted.iter().enumerate() {
            let flags = if i + 1 == accepted.len() {
                FLAG_BATCH_END
            } else {
                0
            };
            format::encode_record(
                &mut self.buf,
                active.header.salt,
                *revision,
                batch,
                flags,
                payload,
            );
        }
        debug_assert_eq!(self.buf.len(), len);
        let (res, buf) = active
            .file
            .write_all_at_owned(std::mem::take(&mut self.buf), active.write_off);
        self.buf = buf;
        if let Err(e) = res {
            active.broken = true;
            fail(accepted, &self.shared, &e);
            return Err(e);
        }
        active.write_off += len as u64;
        let end_off = active.write_off;
        let seq = active.header.seq;
        let last_revision = accepted.last().map_or(self.written_revision, |a| a.1);
        self.written_revision = last_revision;
        self.inflight_bytes += len as u64;
        self.inflight.push_back(Inflight {
            batch,
            end_off,
            last_revision,
            framed_bytes: len as u64,
            replies: accepted.into_iter().map(|(_, _, reply)| reply).collect(),
        });
        // Keep the buffer from pinning a huge allocation after a rare huge batch.
        if self.buf.capacity() > 2 * self.max_batch_bytes.max(1 << 20) {
            self.buf = Vec::new();
        }
        if let Some(s) = self.slots.get_mut(slot)
            && let Some(handle) = s.handle.take()
        {
            s.busy = true;
            if let Err(std::sync::mpsc::SendError(job)) =
                s.jobs.send(SyncJob { handle, batch, seq })
            {
                // The sync thread is gone: nothing written can become durable any more.
                s.busy = false;
                s.handle = Some(job.handle);
                let e = io::Error::other("WAL sync thread stopped");
                self.sync_failed(&e);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Deletes the oldest segments whose records are all below `revision`.
    fn truncate_before(&mut self, revision: u64) -> Result<u64, StoreError> {
        let active_done = self.segments.back().is_some_and(|s| {
            s.last_revision < revision && s.durable_len > SEGMENT_HEADER_LEN as u64
        });
        if active_done {
            // Everything is covered: close the active segment so it can go too.
            self.rotate()?;
        }
        let mut removed = 0;
        while self.segments.len() > 1 {
            let Some(oldest) = self.segments.front() else {
                break;
            };
            if oldest.last_revision >= revision {
                break;
            }
            // Oldest first, so a crash midway leaves a contiguous run of segments.
            self.storage.remove(&oldest.path)?;
            self.segments.pop_front();
            removed += 1;
        }
        if removed > 0 {
            self.storage.sync_dir(&self.dir)?;
        }
        self.publish();
        Ok(removed)
    }
}
