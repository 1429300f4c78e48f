//! The file I/O seam under the write-ahead log and the snapshots.
//!
//! Everything the durability layer does to a disk goes through [`Storage`] and
//! [`StorageFile`], so that tests can put [`FaultStorage`] in its place: it runs on real files
//! but injects write errors, full-disk errors (`ENOSPC`) and fsync failures at chosen points,
//! counts the syncs it sees, and can simulate a crash by rolling every file and directory back
//! to what had been made durable (TigerBeetle's fault-injecting storage, redb's counting
//! backend, TiKV's fail points).
//!
//! The seam is synchronous: the WAL calls it from its own writer thread, never from a shard's
//! runtime, so a slow fdatasync never stalls request handling. Reading a snapshot by mmap is the
//! one operation outside the seam (a mapping needs a real file).

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;

/// A file opened for positional writes.
#[allow(clippy::len_without_is_empty)]
pub trait StorageFile: Send + fmt::Debug {
    /// Writes all of `buf` at `offset`. On error an unknown prefix may have been written.
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// [`StorageFile::write_all_at`] with an owned buffer, handed back (io_uring needs the
    /// buffer to stay put while the kernel reads it; this saves a copy).
    fn write_all_at_owned(&mut self, buf: Vec<u8>, offset: u64) -> (io::Result<()>, Vec<u8>) {
        let res = self.write_all_at(&buf, offset);
        (res, buf)
    }
    /// Makes the written data durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
    /// Makes data and metadata durable (`fsync`).
    fn sync_all(&mut self) -> io::Result<()>;
    /// Truncates or extends (with zeros) the file to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Reserves disk blocks for the first `len` bytes and extends the file to at least that
    /// size (`fallocate`, mode 0), so later writes below `len` change no file size.
    fn allocate(&mut self, len: u64) -> io::Result<()>;
    /// The file's current size in bytes.
    fn len(&self) -> io::Result<u64>;
}

/// An independent handle on a file, used only to make its written data durable from another
/// thread while the owner of the [`StorageFile`] goes on writing (overlapped group commit).
///
/// Each handle is its own open file description, so a writeback error is reported to every
/// handle that syncs after it, never "consumed" by a concurrent sync on another handle.
pub trait SyncHandle: Send + fmt::Debug {
    /// `fdatasync`: every write that completed before this call is durable once it returns
    /// `Ok`.
    fn sync_data(&mut self) -> io::Result<()>;
}

/// Directory-level operations and file opening.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Called once on the WAL writer thread before it does any I/O (io_uring sets up the
    /// thread's ring here). Files used on other threads use plain syscalls.
    fn prepare_thread(&self) {}
    /// A short name for logs and benches ("std", "io_uring", "fault").
    fn name(&self) -> &'static str {
        "std"
    }
    /// Creates `dir` and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Creates a new file (fails if it exists), opened for writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Opens an existing file for writing.
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;
    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// Reads a file up to the end of its last data extent, skipping a trailing hole or
    /// preallocated, never-written range (which reads as zeros): returns the bytes and the
    /// file's full length. Every byte past the returned ones reads as zero. The default reads
    /// the whole file.
    fn read_data(&self, path: &Path) -> io::Result<(Vec<u8>, u64)> {
        let data = self.read(path)?;
        let len = data.len() as u64;
        Ok((data, len))
    }
    /// Opens a [`SyncHandle`] on an existing file.
    fn open_sync_handle(&self, path: &Path) -> io::Result<Box<dyn SyncHandle>>;
    /// The names of the entries of `dir` (files only, no `.`/`..`), unsorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames `from` to `to` (atomically replacing `to`).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory's entries (creations, removals, renames) durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// The production implementation: plain `std::fs` plus `fallocate`.
#[derive(Debug, Clone, Copy, Default)]
pub struct StdStorage;

/// A file of [`StdStorage`].
#[derive(Debug)]
pub struct StdFile {
    file: File,
}

impl StorageFile for StdFile {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.file.sync_all()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        let len_i64 = i64::try_from(len).map_err(|_| io::Error::other("allocation too large"))?;
        match nix::fcntl::fallocate(&self.file, nix::fcntl::FallocateFlags::empty(), 0, len_i64) {
            Ok(()) => Ok(()),
            // Filesystems without fallocate (some tmpfs/overlay setups): a sparse extension
            // keeps the "no size change on append" property, which is what matters most.
            Err(nix::errno::Errno::EOPNOTSUPP) => {
                if self.file.metadata()?.len() < len {
                    self.file.set_len(len)?;
                }
                Ok(())
            }
            Err(e) => Err(io::Error::from(e)),
        }
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

impl Storage for StdStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(StdFile { file }))
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(StdFile { file }))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }
    fn read_data(&self, path: &Path) -> io::Result<(Vec<u8>, u64)> {
        read_data_extents(path)
    }
    fn open_sync_handle(&self, path: &Path) -> io::Result<Box<dyn SyncHandle>> {
        Ok(Box::new(StdSyncHandle {
            file: File::open(path)?,
        }))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        Ok(names)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
}

/// A [`SyncHandle`] of [`StdStorage`] (and [`UringStorage`]): a read-only descriptor of its own.
#[derive(Debug)]
pub struct StdSyncHandle {
    file: File,
}

impl SyncHandle for StdSyncHandle {
    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Reads `path` up to the end of its last data extent (`SEEK_DATA`/`SEEK_HOLE`). Holes and
/// unwritten (preallocated) extents read as zeros by definition, so nothing non-zero is
/// skipped; where the filesystem does not report extents, this reads the whole file.
fn read_data_extents(path: &Path) -> io::Result<(Vec<u8>, u64)> {
    use nix::unistd::{Whence, lseek};
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let file_len = i64::try_from(len).map_err(|_| io::Error::other("file too large"))?;
    let mut end: i64 = 0;
    let mut off: i64 = 0;
    // Bounded: each round moves past one data extent; a file has far fewer than this.
    for _ in 0..1_000_000 {
        if off >= file_len {
            break;
        }
        let data = match lseek(&file, off, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break, // only a hole remains
            Err(_) => {
                end = file_len; // no extent information: read everything
                break;
            }
        };
        let Ok(hole) = lseek(&file, data, Whence::SeekHole) else {
            end = file_len;
            break;
        };
        if hole <= data {
            end = file_len;
            break;
        }
        end = hole;
        off = hole;
    }
    let end =
        usize::try_from(end.clamp(0, file_len)).map_err(|_| io::Error::other("file too large"))?;
    let mut buf = vec![0u8; end];
    file.read_exact_at(&mut buf, 0)?;
    Ok((buf, len))
}

// ---------------------------------------------------------------------------------------------
// io_uring
// ---------------------------------------------------------------------------------------------

/// The calling thread's io_uring context: a small `current_thread` runtime (the ring awaits
/// completions through its reactor) and the ring from `shards`.
struct UringCtx {
    rt: tokio::runtime::Runtime,
    ring: shards::uring::Ring,
}

thread_local! {
    static URING: std::cell::RefCell<Option<UringCtx>> = const { std::cell::RefCell::new(None) };
}

fn uring_err(e: shards::uring::UringError) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::other(e.to_string()),
    }
}

/// Runs `f` with the thread's ring if [`Storage::prepare_thread`] set one up here.
fn with_uring<T>(f: impl FnOnce(&UringCtx) -> T) -> Option<T> {
    URING.with(|cell| cell.borrow().as_ref().map(f))
}

/// [`StdStorage`] whose data writes and fdatasyncs go through an io_uring ring (`shards`'
/// per-thread ring) on the WAL writer thread. Every other operation, and any I/O from other
/// threads (recovery, snapshots), uses plain syscalls. If the ring cannot be set up, the
/// writer thread logs it and falls back to std I/O.
#[derive(Debug, Clone, Copy, Default)]
pub struct UringStorage;

impl UringStorage {
    /// Whether io_uring works here: sets up (and drops) a ring on a scratch thread.
    pub fn probe() -> Result<(), String> {
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                let ring = shards::uring::Ring::new(shards::uring::RingConfig::default())
                    .map_err(|e| e.to_string())?;
                ring.nop().await.map_err(|e| e.to_string())
            })
        })
        .join()
        .unwrap_or_else(|_| Err("probe thread panicked".into()))
    }
}

/// The default storage: io_uring where a ring can be set up, std otherwise (logged).
pub fn default_storage() -> Arc<dyn Storage> {
    static CHOICE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    match CHOICE.get_or_init(UringStorage::probe) {
        Ok(()) => Arc::new(UringStorage),
        Err(e) => {
            tracing::info!(error = %e, "io_uring unavailable; the WAL uses std file I/O");
            Arc::new(StdStorage)
        }
    }
}

/// A file of [`UringStorage`].
#[derive(Debug)]
pub struct UringFile {
    inner: StdFile,
}

impl StorageFile for UringFile {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        // Borrowed buffers take the plain path; the writer uses `write_all_at_owned`.
        self.inner.write_all_at(buf, offset)
    }
    fn write_all_at_owned(&mut self, buf: Vec<u8>, offset: u64) -> (io::Result<()>, Vec<u8>) {
        let file = &self.inner.file;
        let mut buf = Some(buf);
        let done = with_uring(|ctx| {
            let buf = buf.take().unwrap_or_default();
            let (res, buf) = ctx.rt.block_on(ctx.ring.write_all_at(file, buf, offset));
            (res.map_err(uring_err), buf)
        });
        match done {
            Some(done) => done,
            None => {
                let buf = buf.take().unwrap_or_default();
                let res = self.inner.write_all_at(&buf, offset);
                (res, buf)
            }
        }
    }
    fn sync_data(&mut self) -> io::Result<()> {
        let file = &self.inner.file;
        match with_uring(|ctx| ctx.rt.block_on(ctx.ring.fdatasync(file)).map_err(uring_err)) {
            Some(res) => res,
            None => self.inner.sync_data(),
        }
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.inner.sync_all()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        self.inner.allocate(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
}

impl Storage for UringStorage {
    fn prepare_thread(&self) {
        let ctx = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| e.to_string())
            .and_then(|rt| {
                let ring = rt
                    .block_on(async {
                        shards::uring::Ring::new(shards::uring::RingConfig::default())
                    })
                    .map_err(|e| e.to_string())?;
                Ok(UringCtx { rt, ring })
            });
        match ctx {
            Ok(ctx) => URING.with(|cell| *cell.borrow_mut() = Some(ctx)),
            Err(e) => {
                tracing::warn!(error = %e, "io_uring ring setup failed; this WAL writer uses std file I/O")
            }
        }
    }
    fn name(&self) -> &'static str {
        if with_uring(|_| ()).is_some() {
            "io_uring"
        } else {
            "io_uring(std fallback)"
        }
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        StdStorage.create_dir_all(dir)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Box::new(UringFile {
            inner: StdFile { file },
        }))
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Box::new(UringFile {
            inner: StdFile { file },
        }))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        StdStorage.read(path)
    }
    fn read_data(&self, path: &Path) -> io::Result<(Vec<u8>, u64)> {
        StdStorage.read_data(path)
    }
    fn open_sync_handle(&self, path: &Path) -> io::Result<Box<dyn SyncHandle>> {
        StdStorage.open_sync_handle(path)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        StdStorage.list(dir)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        StdStorage.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        StdStorage.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        StdStorage.sync_dir(dir)
    }
}

// ---------------------------------------------------------------------------------------------
// Fault injection
// ---------------------------------------------------------------------------------------------

/// Which operation a [`Fault`] hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultOp {
    /// `write_all_at`.
    Write,
    /// `sync_data` / `sync_all` on a file.
    Sync,
    /// `create` of a new file.
    Create,
    /// `allocate` / `set_len`.
    Allocate,
    /// `sync_dir`.
    SyncDir,
}

/// What an injected fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FaultKind {
    /// Fails with `EIO`, writing nothing.
    Eio,
    /// Fails with `ENOSPC` (full disk), writing nothing.
    NoSpace,
    /// For writes: writes the first half of the buffer, then fails with `EIO`.
    ShortWriteEio,
}

/// One armed fault: skip `skip` matching operations, then fail the next `count` of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub op: FaultOp,
    pub kind: FaultKind,
    pub skip: u32,
    pub count: u32,
}

/// How [`FaultStorage::crash`] treats writes that were not yet synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced write is lost.
    DropUnsynced,
    /// Unsynced writes are kept up to this many bytes (in write order, the last one cut
    /// short): a torn write as a power cut leaves it.
    KeepUnsyncedBytes(u64),
    /// The first `n` unsynced writes are lost and every later unsynced change is kept: the
    /// page cache wrote back out of order (a later batch reached the disk, an earlier did
    /// not).
    DropFirstUnsyncedWrites(u64),
}

#[derive(Debug, Clone)]
enum PendingOp {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug, Default)]
struct Image {
    /// The file's content as of its last successful sync.
    durable: Vec<u8>,
    /// Changes since then, in order.
    pending: Vec<PendingOp>,
    /// How many changes were ever drained from `pending` (made durable or dropped), so a
    /// sync can make durable exactly the changes that existed when it started.
    drained: u64,
}

impl Image {
    /// Makes the oldest `n` pending changes durable.
    fn persist(&mut self, n: usize) {
        let n = n.min(self.pending.len());
        let mut content = std::mem::take(&mut self.durable);
        for op in self.pending.drain(..n) {
            Image::apply(&mut content, &op);
        }
        self.durable = content;
        self.drained += n as u64;
    }

    /// Drops every pending change (a failed writeback).
    fn persist_none(&mut self) {
        self.drained += self.pending.len() as u64;
        self.pending.clear();
    }

    fn apply(content: &mut Vec<u8>, op: &PendingOp) {
        match op {
            PendingOp::Write(off, data) => {
                let off = usize::try_from(*off).unwrap_or(usize::MAX);
                let end = off.saturating_add(data.len());
                if content.len() < end {
                    content.resize(end, 0);
                }
                if let Some(dst) = content.get_mut(off..end) {
                    dst.copy_from_slice(data);
                }
            }
            PendingOp::SetLen(len) => content.resize(usize::try_from(*len).unwrap_or(0), 0),
        }
    }
}

#[derive(Debug)]
enum DirOp {
    Created(PathBuf),
    Removed(PathBuf),
    Renamed {
        from: PathBuf,
        to: PathBuf,
        replaced: bool,
    },
}

#[derive(Debug, Default)]
struct FaultState {
    faults: Vec<Fault>,
    generation: u64,
    /// Durable content of every file this storage has touched, by path.
    images: HashMap<PathBuf, Image>,
    /// Directory operations not yet made durable by `sync_dir`, by directory, in order.
    dir_pending: HashMap<PathBuf, Vec<DirOp>>,
}

impl FaultState {
    /// Consumes a matching armed fault, if one fires for this operation.
    fn fire(&mut self, op: FaultOp) -> Option<FaultKind> {
        let fault = self.faults.iter_mut().find(|f| f.op == op && f.count > 0)?;
        if fault.skip > 0 {
            fault.skip -= 1;
            return None;
        }
        fault.count -= 1;
        Some(fault.kind)
    }

    fn image(&mut self, path: &Path) -> &mut Image {
        self.images
            .entry(path.to_path_buf())
            .or_insert_with(|| Image {
                durable: fs::read(path).unwrap_or_default(),
                ..Image::default()
            })
    }
}

fn fault_error(kind: FaultKind, what: &str) -> io::Error {
    match kind {
        FaultKind::NoSpace => io::Error::from_raw_os_error(libc_enospc()),
        FaultKind::Eio | FaultKind::ShortWriteEio => {
            io::Error::other(format!("injected I/O error during {what} (EIO)"))
        }
    }
}

const fn libc_enospc() -> i32 {
    nix::errno::Errno::ENOSPC as i32
}

/// A [`Storage`] over real files that injects faults, counts syncs and simulates crashes.
///
/// Cloning shares the state, so a test keeps a clone to arm faults while the WAL owns another.
#[derive(Debug, Clone, Default)]
pub struct FaultStorage {
    state: Arc<Mutex<FaultState>>,
    /// The "boot" this handle belongs to; after a crash, handles of earlier boots are dead.
    generation: u64,
    syncs: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
    gate: Arc<SyncGate>,
}

/// Lets a test hold file syncs (a slow disk) to observe what queues up behind one.
#[derive(Debug, Default)]
struct SyncGate {
    held: std::sync::Mutex<bool>,
    cv: std::sync::Condvar,
    waiting: AtomicU64,
}

impl SyncGate {
    /// Blocks while the gate is held, at most 10 s (tests stay bounded even if one forgets
    /// to release it).
    fn pass(&self) {
        let Ok(held) = self.held.lock() else { return };
        if !*held {
            return;
        }
        self.waiting.fetch_add(1, Ordering::SeqCst);
        let _ = self
            .cv
            .wait_timeout_while(held, std::time::Duration::from_secs(10), |h| *h);
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    fn set(&self, value: bool) {
        if let Ok(mut held) = self.held.lock() {
            *held = value;
        }
        self.cv.notify_all();
    }
}

impl FaultStorage {
    /// A storage with no faults armed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Arms a fault (faults for the same operation fire in the order they were armed).
    pub fn inject(&self, fault: Fault) {
        self.state.lock().faults.push(fault);
    }

    /// Disarms every fault: the "disk" is healthy again.
    pub fn clear_faults(&self) {
        self.state.lock().faults.clear();
    }

    /// Makes every file sync wait until [`FaultStorage::release_syncs`] (a slow disk).
    pub fn hold_syncs(&self) {
        self.gate.set(true);
    }

    /// Lets held syncs proceed.
    pub fn release_syncs(&self) {
        self.gate.set(false);
    }

    /// How many syncs are waiting at the gate right now.
    pub fn syncs_waiting(&self) -> u64 {
        self.gate.waiting.load(Ordering::SeqCst)
    }

    /// How many file syncs (`sync_data` + `sync_all`) succeeded so far.
    pub fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    /// How many `write_all_at` calls succeeded so far.
    pub fn write_count(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// A handle for the system "rebooted" after [`FaultStorage::crash`]: it shares the files,
    /// faults and counters, but not the dead handles of the earlier boot.
    pub fn restarted(&self) -> Self {
        let mut s = self.clone();
        s.generation = self.state.lock().generation;
        s
    }

    /// Simulates a power cut: this handle, its clones and every file opened through them
    /// fail from now on (use [`FaultStorage::restarted`] to go on), every
    /// file goes back to its last synced content (plus, with
    /// [`CrashMode::KeepUnsyncedBytes`], a torn prefix of the unsynced writes), and every
    /// directory operation not made durable by `sync_dir` is undone.
    pub fn crash(&self, mode: CrashMode) -> io::Result<()> {
        let mut state = self.state.lock();
        state.generation += 1;
        state.faults.clear();
        // Undo directory operations that never reached the disk, newest first.
        let dir_pending = std::mem::take(&mut state.dir_pending);
        for (_, ops) in dir_pending {
            for op in ops.into_iter().rev() {
                match op {
                    DirOp::Created(path) => {
                        let _ = fs::remove_file(&path);
                        state.images.remove(&path);
                    }
                    DirOp::Removed(path) => {
                        let content = state.images.get(&path).map(|i| i.durable.clone());
                        fs::write(&path, content.unwrap_or_default())?;
                    }
                    DirOp::Renamed { from, to, replaced } => {
                        fs::rename(&to, &from)?;
                        if let Some(img) = state.images.remove(&to) {
                            state.images.insert(from.clone(), img);
                        }
                        if replaced {
                            // The replaced file's durable image was dropped by the rename;
                            // it is gone for good in this model (rare in our use: snapshots
                            // never overwrite one another).
                        }
                    }
                }
            }
        }
        let mut budget = match mode {
            CrashMode::DropUnsynced | CrashMode::DropFirstUnsyncedWrites(_) => 0,
            CrashMode::KeepUnsyncedBytes(n) => n,
        };
        let mut drop_first = match mode {
            CrashMode::DropFirstUnsyncedWrites(n) => n,
            _ => 0,
        };
        let keep_later = matches!(mode, CrashMode::DropFirstUnsyncedWrites(_));
        for (path, image) in &mut state.images {
            let mut content = std::mem::take(&mut image.durable);
            image.drained += image.pending.len() as u64;
            for op in image.pending.drain(..) {
                match op {
                    PendingOp::Write(..) if keep_later && drop_first > 0 => drop_first -= 1,
                    op if keep_later => Image::apply(&mut content, &op),
                    PendingOp::Write(off, mut data) if budget > 0 => {
                        let keep = usize::try_from(budget)
                            .unwrap_or(usize::MAX)
                            .min(data.len());
                        data.truncate(keep);
                        budget -= keep as u64;
                        Image::apply(&mut content, &PendingOp::Write(off, data));
                    }
                    _ => {}
                }
            }
            if path.exists() {
                fs::write(path, &content)?;
            }
            image.durable = content;
        }
        Ok(())
    }

    /// Locks the state if this handle's boot is still the current one.
    fn alive(&self) -> io::Result<parking_lot::MutexGuard<'_, FaultState>> {
        let state = self.state.lock();
        if state.generation == self.generation {
            Ok(state)
        } else {
            Err(io::Error::other(
                "storage crashed (simulated): handle is dead",
            ))
        }
    }

    /// Locks the state if boot `generation` is still the current one.
    fn alive_at(&self, generation: u64) -> io::Result<parking_lot::MutexGuard<'_, FaultState>> {
        let state = self.state.lock();
        if state.generation == generation {
            Ok(state)
        } else {
            Err(io::Error::other(
                "storage crashed (simulated): handle is dead",
            ))
        }
    }

    fn check_alive(&self, generation: u64) -> io::Result<()> {
        if self.state.lock().generation == generation {
            Ok(())
        } else {
            Err(io::Error::other(
                "storage crashed (simulated): handle is dead",
            ))
        }
    }

    fn record_dir_op(state: &mut FaultState, path: &Path, op: DirOp) {
        let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        state.dir_pending.entry(dir).or_default().push(op);
    }

    fn wrap(&self, path: &Path, file: File) -> Box<dyn StorageFile> {
        Box::new(FaultFile {
            inner: StdFile { file },
            path: path.to_path_buf(),
            storage: self.clone(),
            generation: self.generation,
        })
    }
}

impl Storage for FaultStorage {
    fn name(&self) -> &'static str {
        "fault"
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let mut state = self.alive()?;
        if let Some(kind) = state.fire(FaultOp::Create) {
            return Err(fault_error(kind, "create"));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        state.images.insert(path.to_path_buf(), Image::default());
        Self::record_dir_op(&mut state, path, DirOp::Created(path.to_path_buf()));
        drop(state);
        Ok(self.wrap(path, file))
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        self.check_alive(self.generation)?;
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        self.state.lock().image(path);
        Ok(self.wrap(path, file))
    }
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.check_alive(self.generation)?;
        fs::read(path)
    }
    fn open_sync_handle(&self, path: &Path) -> io::Result<Box<dyn SyncHandle>> {
        self.check_alive(self.generation)?;
        let file = File::open(path)?;
        self.state.lock().image(path);
        Ok(Box::new(FaultSyncHandle {
            file,
            path: path.to_path_buf(),
            storage: self.clone(),
            generation: self.generation,
        }))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.check_alive(self.generation)?;
        StdStorage.list(dir)
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = self.alive()?;
        state.image(path);
        fs::remove_file(path)?;
        Self::record_dir_op(&mut state, path, DirOp::Removed(path.to_path_buf()));
        Ok(())
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = self.alive()?;
        state.image(from);
        let replaced = to.exists();
        fs::rename(from, to)?;
        if let Some(img) = state.images.remove(from) {
            state.images.insert(to.to_path_buf(), img);
        }
        let op = DirOp::Renamed {
            from: from.to_path_buf(),
            to: to.to_path_buf(),
            replaced,
        };
        Self::record_dir_op(&mut state, to, op);
        Ok(())
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.alive()?;
        if let Some(kind) = state.fire(FaultOp::SyncDir) {
            return Err(fault_error(kind, "directory sync"));
        }
        StdStorage.sync_dir(dir)?;
        state.dir_pending.remove(dir);
        Ok(())
    }
}

/// A file of [`FaultStorage`].
#[derive(Debug)]
pub struct FaultFile {
    inner: StdFile,
    path: PathBuf,
    storage: FaultStorage,
    generation: u64,
}

// Every file operation runs under the state lock, so a simulated crash never interleaves
// with a write of a dead handle (which would otherwise land after the rollback).
impl FaultFile {
    fn locked<T>(
        &mut self,
        op: Option<FaultOp>,
        f: impl FnOnce(&mut StdFile, &mut Image, Option<FaultKind>) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut state = self.storage.state.lock();
        if state.generation != self.generation {
            return Err(io::Error::other(
                "storage crashed (simulated): handle is dead",
            ));
        }
        let fired = op.and_then(|op| state.fire(op));
        let image = state.image(&self.path);
        f(&mut self.inner, image, fired)
    }

    fn sync(&mut self, all: bool) -> io::Result<()> {
        self.storage.gate.pass();
        self.locked(Some(FaultOp::Sync), |file, image, fired| {
            if let Some(kind) = fired {
                // Like Linux after a failed writeback: the dirty data is dropped from the
                // "page cache" model, so a later successful sync does not make it durable.
                image.persist_none();
                return Err(fault_error(kind, "fsync"));
            }
            if all {
                file.sync_all()
            } else {
                file.sync_data()
            }?;
            image.persist(usize::MAX);
            Ok(())
        })?;
        self.storage.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A [`SyncHandle`] of [`FaultStorage`]: a sync makes durable exactly the writes made before
/// it started (never one that raced with it), like a real `fdatasync`'s guarantee.
#[derive(Debug)]
pub struct FaultSyncHandle {
    file: File,
    path: PathBuf,
    storage: FaultStorage,
    generation: u64,
}

impl SyncHandle for FaultSyncHandle {
    fn sync_data(&mut self) -> io::Result<()> {
        let target = {
            let mut state = self.storage.alive_at(self.generation)?;
            let image = state.image(&self.path);
            image.drained + image.pending.len() as u64
        };
        self.storage.gate.pass();
        {
            let mut state = self.storage.alive_at(self.generation)?;
            let fired = state.fire(FaultOp::Sync);
            let image = state.image(&self.path);
            if let Some(kind) = fired {
                image.persist_none();
                return Err(fault_error(kind, "fdatasync"));
            }
            self.file.sync_data()?;
            let n = usize::try_from(target.saturating_sub(image.drained)).unwrap_or(usize::MAX);
            image.persist(n);
        }
        self.storage.syncs.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl StorageFile for FaultFile {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.locked(Some(FaultOp::Write), |file, image, fired| match fired {
            Some(FaultKind::ShortWriteEio) => {
                let half = buf.get(..buf.len() / 2).unwrap_or_default();
                file.write_all_at(half, offset)?;
                image.pending.push(PendingOp::Write(offset, half.to_vec()));
                Err(fault_error(FaultKind::ShortWriteEio, "write"))
            }
            Some(kind) => Err(fault_error(kind, "write")),
            None => {
                file.write_all_at(buf, offset)?;
                image.pending.push(PendingOp::Write(offset, buf.to_vec()));
                Ok(())
            }
        })?;
        self.storage.writes.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.sync(false)
    }
    fn sync_all(&mut self) -> io::Result<()> {
        self.sync(true)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.locked(Some(FaultOp::Allocate), |file, image, fired| {
            if let Some(kind) = fired {
                return Err(fault_error(kind, "set_len"));
            }
            file.set_len(len)?;
            image.pending.push(PendingOp::SetLen(len));
            Ok(())
        })
    }
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        self.locked(Some(FaultOp::Allocate), |file, image, fired| {
            if let Some(kind) = fired {
                return Err(fault_error(kind, "fallocate"));
            }
            let before = file.len()?;
            file.allocate(len)?;
            if len > before {
                image.pending.push(PendingOp::SetLen(len));
            }
            Ok(())
        })
    }
    fn len(&self) -> io::Result<u64> {
        self.storage.check_alive(self.generation)?;
        self.inner.len()
    }
}
