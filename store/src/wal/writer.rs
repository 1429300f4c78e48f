//! Recovery and the writer thread: group commit, rotation, truncation, failure handling.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::format::{self, FLAG_BATCH_END, SEGMENT_HEADER_LEN, SegmentHeader};
use super::{Request, Shared, WalOptions, WalRecord};
use crate::backend::Revision;
use crate::error::StoreError;
use crate::fileio::{Storage, StorageFile};

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
    /// Where the next batch goes; everything before it is durable.
    write_off: u64,
    /// Set after a failed write or sync: nothing more is written to this file.
    broken: bool,
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
    segments: VecDeque<Segment>,
    active: Option<Active>,
    next_batch: u64,
    last_revision: u64,
    buf: Vec<u8>,
    shared: Arc<Shared>,
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
        let mut datas = Vec::with_capacity(seqs.len());
        for &seq in &seqs {
            datas.push(storage.read(&dir.join(segment_name(seq)))?);
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
            segments: VecDeque::new(),
            active: None,
            next_batch: 1,
            last_revision: 0,
            buf: Vec::new(),
            shared,
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
            let file_len = data.len() as u64;
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
            broken: false,
        });
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
            broken: false,
        });
        Ok(())
    }

    /// Closes the active segment (truncating a broken one to its durable length) and starts
    /// the next, whose header records that length.
    fn rotate(&mut self) -> io::Result<()> {
        let (seq, durable) = match self.active.as_mut() {
            Some(a) => {
                if a.broken {
                    let cut = a.file.set_len(a.write_off).and_then(|()| a.file.sync_all());
                    if let Err(e) = cut {
                        tracing::warn!(shard = self.shard, error = %e, "could not truncate a failed WAL segment");
                    }
                }
                (a.header.seq + 1, a.write_off)
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

    /// The writer thread's loop: drain the queue into batches until every sender is gone.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Request>) {
        self.storage.prepare_thread();
        tracing::debug!(
            shard = self.shard,
            io = self.storage.name(),
            "WAL writer started"
        );
        let mut batch: Vec<Pending> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            let mut control = None;
            let mut bytes = 0usize;
            let mut next = Some(first);
            // Bounded by max_batch_records / max_batch_bytes.
            while let Some(req) = next.take() {
                match req {
                    Request::Append {
                        payload,
                        revision,
                        reply,
                    } => {
                        bytes += payload.len();
                        batch.push((payload, revision, reply));
                    }
                    Request::TruncateBefore { revision, reply } => {
                        control = Some((revision, reply));
                        break;
                    }
                }
                if batch.len() >= self.max_batch_records || bytes >= self.max_batch_bytes {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if !batch.is_empty() {
                self.commit(&mut batch);
            }
            if let Some((revision, reply)) = control {
                let _ = reply.send(self.truncate_before(revision));
            }
        }
        self.retire_broken();
        if let Some(a) = self.active.as_mut()
            && !a.broken
        {
            let _ = a.file.sync_data();
        }
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

    /// Writes one batch with one write and one fdatasync, then answers every appender.
    fn commit(&mut self, batch: &mut Vec<Pending>) {
        // Admission: order and quota. Refused records are answered now and left out.
        let mut accepted = Vec::with_capacity(batch.len());
        let mut last = self.last_revision;
        let mut logical = self.shared.logical_bytes.load(Ordering::Relaxed);
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
        match self.write_batch(&accepted) {
            Ok(()) => {
                self.shared
                    .records
                    .fetch_add(accepted.len() as u64, Ordering::Relaxed);
                self.shared.batches.fetch_add(1, Ordering::Relaxed);
                self.publish();
                for (_, _, reply) in accepted {
                    let _ = reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::warn!(shard = self.shard, error = %e, records = accepted.len(), "WAL batch failed");
                self.shared.failed_batches.fetch_add(1, Ordering::Relaxed);
                // Retire the failed segment now, not at the next append: its failed bytes may
                // sit complete in the file, and a clean restart must not replay them.
                self.retire_broken();
                self.publish();
                for (_, _, reply) in accepted {
                    let _ = reply.send(Err(StoreError::Io(copy_err(&e))));
                }
            }
        }
    }

    fn write_batch(&mut self, accepted: &[Pending]) -> io::Result<()> {
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
        if needs_rotation {
            self.rotate()?;
        }
        let Some(active) = self.active.as_mut() else {
            return Err(io::Error::other("no active WAL segment"));
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
        let written = res.and_then(|()| active.file.sync_data());
        if let Err(e) = written {
            active.broken = true;
            return Err(e);
        }
        active.write_off += len as u64;
        let write_off = active.write_off;
        if let Some((_, revision, _)) = accepted.last() {
            self.last_revision = *revision;
        }
        if let Some(seg) = self.segments.back_mut() {
            seg.durable_len = write_off;
            seg.file_len = seg.file_len.max(write_off);
            seg.last_revision = self.last_revision;
        }
        // Keep the buffer from pinning a huge allocation after a rare huge batch.
        if self.buf.capacity() > 2 * self.max_batch_bytes.max(1 << 20) {
            self.buf = Vec::new();
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
