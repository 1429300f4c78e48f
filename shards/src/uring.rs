//! A per-thread io_uring ring whose completions are awaited from a tokio `current_thread`
//! runtime (a shard's, or any plain one).
//!
//! # Shape
//!
//! - [`Ring::current`] gives the calling thread's ring (created on first use, one per thread
//!   and runtime). The ring registers an eventfd with the kernel; the runtime's reactor watches
//!   that eventfd (`AsyncFd`), so completions wake the tasks that wait for them without any
//!   extra thread or busy polling.
//! - Each operation is a future ([`Op`]) that owns its buffers until the kernel completes it
//!   and hands them back with the result, as `(Result<T, UringError>, B)` ([`BufResult`],
//!   monoio's shape). Buffers implement the `unsafe` traits [`IoBuf`]/[`IoBufMut`], whose
//!   contract is that their memory does not move when the value is moved.
//! - If an operation's future is dropped while the kernel still works on it, its buffers move
//!   into the ring's pending table and are freed only when the completion arrives ("leak into
//!   the ring, never free early"). A ring dropped with such operations still pending cancels
//!   them and waits a bounded time; whatever is still not complete is leaked on purpose.
//! - Submission is bounded: at most `max_in_flight` operations (default: the completion
//!   queue size, so the completion queue cannot overflow) are in the kernel at once; more wait
//!   (back-pressure) until completions free a place.
//!
//! # Driving completions
//!
//! There is no driver task (a plain runtime may have no `LocalSet` to run one). Every pending
//! operation reaps the completion queue when polled. The last pending operation polled is the
//! one registered with the eventfd; when it finishes or is dropped it wakes another pending
//! operation so that one registers instead. So some pending operation always watches the
//! eventfd while any operation is pending.
//!
//! # Unsafe
//!
//! This is the only module of the crate allowed `unsafe`: pushing a submission entry that
//! points at a buffer (the kernel reads or writes it later), the buffer traits, and creating
//! the eventfd. Every block carries a `// SAFETY:` comment.
#![allow(unsafe_code)]

use std::any::Any;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::io;
use std::io::Read as _;
use std::marker::PhantomData;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, squeue, types};
use tokio::io::unix::AsyncFd;

/// The result of an operation that owned a buffer: the outcome, and the buffer handed back.
pub type BufResult<T, B> = (Result<T, UringError>, B);

/// Creating a ring failed. Callers fall back to ordinary (std/tokio) I/O.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// io_uring is not available: the kernel lacks it (`ENOSYS`), it is disabled
    /// (`kernel.io_uring_disabled`, `EPERM`), or a seccomp filter forbids it. Not retryable:
    /// use std I/O.
    #[error("io_uring is not available on this system: {0}")]
    Unavailable(io::Error),
    /// Creating the ring or its eventfd failed for another reason (e.g. resource limits).
    /// Retryable once resources free up.
    #[error("setting up the io_uring ring: {0}")]
    Io(io::Error),
    /// Not called from inside a tokio runtime with I/O enabled. Not retryable from here.
    #[error("a ring must be created inside a tokio runtime with I/O enabled")]
    NoRuntime,
}

/// An io_uring operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UringError {
    /// The kernel completed the operation with an error (e.g. `EBADF` for a closed fd, `EIO`).
    /// Retryable only as the errno allows (`EAGAIN`, `EINTR`); `EIO` on a WAL write/fsync is
    /// not (the page cache state is unknown).
    #[error("{op}: {source}")]
    Os {
        /// The operation ("write", "read", "fsync", "fdatasync", "splice"...).
        op: &'static str,
        /// The OS error the kernel reported.
        source: io::Error,
    },
    /// The ring refused the submission (`io_uring_enter` failed, e.g. `ENOMEM`). Retryable.
    #[error("submitting to io_uring: {0}")]
    Submit(io::Error),
    /// The request is larger than one io_uring operation carries (`u32::MAX` bytes). Not
    /// retryable as is: split it.
    #[error("{len} bytes is more than one io_uring operation carries")]
    TooLarge {
        /// The requested length.
        len: usize,
    },
    /// A linked write + sync wrote only part of the buffer, so the sync did not run. Retry
    /// the rest (it is a normal short write, e.g. at a size limit).
    #[error("short write: {written} of {len} bytes; the linked sync did not run")]
    ShortWrite {
        /// Bytes written.
        written: usize,
        /// Bytes asked for.
        len: usize,
    },
    /// A write or splice made no progress (wrote 0 bytes) where data remained. Not retryable.
    #[error("{op} made no progress")]
    WriteZero {
        /// The operation.
        op: &'static str,
    },
}

impl UringError {
    /// The OS error number, if the kernel reported one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            UringError::Os { source, .. } | UringError::Submit(source) => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A buffer the kernel may read from while an operation is in flight.
///
/// # Safety
///
/// Implementors guarantee that [`stable_ptr`](IoBuf::stable_ptr) points to
/// [`bytes_init`](IoBuf::bytes_init) initialised bytes, and that this memory stays valid and
/// does not move when the value itself is moved (heap memory or `'static` data), until the
/// value is dropped or mutated through `&mut`.
pub unsafe trait IoBuf: 'static {
    /// The start of the buffer.
    fn stable_ptr(&self) -> *const u8;
    /// How many bytes, from the start, hold data.
    fn bytes_init(&self) -> usize;
}

/// A buffer the kernel may write into while an operation is in flight.
///
/// # Safety
///
/// As [`IoBuf`], and [`stable_mut_ptr`](IoBufMut::stable_mut_ptr) is valid for writes of
/// [`bytes_total`](IoBufMut::bytes_total) bytes.
pub unsafe trait IoBufMut: IoBuf {
    /// The start of the buffer, for writing.
    fn stable_mut_ptr(&mut self) -> *mut u8;
    /// How many bytes the buffer can hold (a `Vec`'s capacity).
    fn bytes_total(&self) -> usize;
    /// Records that the first `n` bytes are now initialised.
    ///
    /// # Safety
    ///
    /// The first `n` bytes (`n <= bytes_total`) must have been written.
    unsafe fn set_init(&mut self, n: usize);
}

// SAFETY: a Vec's heap allocation does not move when the Vec is moved, and `as_ptr` points to
// `len` initialised bytes.
unsafe impl IoBuf for Vec<u8> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: the capacity is allocated (writable) memory owned by the Vec, stable across moves.
unsafe impl IoBufMut for Vec<u8> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.capacity()
    }
    unsafe fn set_init(&mut self, n: usize) {
        if n <= self.capacity() {
            // SAFETY: the caller guarantees the first `n <= capacity` bytes were written.
            unsafe { self.set_len(n) };
        }
    }
}

// SAFETY: a boxed slice's allocation does not move with the box; all of it is initialised.
unsafe impl IoBuf for Box<[u8]> {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

// SAFETY: as above; the whole slice is writable and already initialised.
unsafe impl IoBufMut for Box<[u8]> {
    fn stable_mut_ptr(&mut self) -> *mut u8 {
        self.as_mut_ptr()
    }
    fn bytes_total(&self) -> usize {
        self.len()
    }
    unsafe fn set_init(&mut self, _n: usize) {}
}

// SAFETY: 'static data never moves and is never freed.
unsafe impl IoBuf for &'static [u8] {
    fn stable_ptr(&self) -> *const u8 {
        self.as_ptr()
    }
    fn bytes_init(&self) -> usize {
        self.len()
    }
}

/// How to size a ring.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct RingConfig {
    /// Submission queue entries (a power of two; the completion queue gets twice as many).
    pub entries: u32,
    /// Operations in the kernel at once; `0` = the completion queue size.
    pub max_in_flight: usize,
}

impl Default for RingConfig {
    fn default() -> Self {
        // Modest: the ring's memory is a few tens of KiB, well inside any memlock limit.
        Self {
            entries: 128,
            max_in_flight: 0,
        }
    }
}

impl RingConfig {
    /// Sets the submission queue size.
    pub fn entries(mut self, n: u32) -> Self {
        self.entries = n;
        self
    }
    /// Sets the in-flight bound.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }
}

/// Counters describing a ring right now (for tests and metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RingStats {
    /// Operations submitted whose completion has not been reaped.
    pub in_flight: usize,
    /// Of those, operations whose future was dropped (their buffers held by the ring).
    pub abandoned: usize,
    /// Operations waiting for an in-flight place (back-pressure).
    pub waiting_to_submit: usize,
    /// Operations completed since the ring was created.
    pub completed: u64,
}

/// `user_data` of entries the ring itself submits (cancellations at drop).
const INTERNAL_USER_DATA: u64 = u64::MAX;

/// Kernel results of one op: one per submitted entry, in completion order (a linked pair
/// completes in submission order).
type Results = [i32; 2];

enum Slot {
    Free,
    /// In the kernel; the op future waits for `pending` more completions.
    Waiting {
        op_id: u64,
        waker: Option<Waker>,
        pending: u8,
        got: u8,
        res: Results,
    },
    /// Completed; the results wait for the op future to collect them.
    Done {
        res: Results,
    },
    /// In the kernel, but the op future was dropped: the ring holds its buffers until the
    /// last (`pending`) completion arrives.
    Abandoned {
        _keep: Box<dyn Any>,
        pending: u8,
    },
}

struct Inner {
    ring: IoUring,
    slots: Vec<Slot>,
    free: Vec<usize>,
    in_flight: usize,
    max_in_flight: usize,
    /// Ops waiting for an in-flight place, oldest first.
    submit_waiters: VecDeque<(u64, Waker)>,
    /// The op whose waker is registered with the eventfd.
    poller: Option<u64>,
    next_op_id: u64,
    abandoned: usize,
    completed: u64,
}

impl Inner {
    /// Moves every available completion into its slot and wakes its waiter.
    fn reap(&mut self) {
        let mut freed = 0usize;
        for cqe in self.ring.completion() {
            let ud = cqe.user_data();
            if ud == INTERNAL_USER_DATA {
                continue;
            }
            let Some(slot) = usize::try_from(ud).ok().and_then(|i| self.slots.get_mut(i)) else {
                continue;
            };
            freed += 1;
            match slot {
                Slot::Waiting {
                    waker,
                    pending,
                    got,
                    res,
                    ..
                } => {
                    if let Some(r) = res.get_mut(usize::from(*got)) {
                        *r = cqe.result();
                    }
                    *got += 1;
                    *pending = pending.saturating_sub(1);
                    if *pending == 0 {
                        self.completed += 1;
                        if let Some(w) = waker.take() {
                            w.wake();
                        }
                        let res = *res;
                        *slot = Slot::Done { res };
                    }
                }
                Slot::Abandoned { pending, .. } => {
                    *pending = pending.saturating_sub(1);
                    if *pending == 0 {
                        // The kernel is done with the buffers: now they may go.
                        self.completed += 1;
                        *slot = Slot::Free;
                        self.free.push(ud as usize);
                        self.abandoned -= 1;
                    }
                }
                // Done/Free cannot receive a completion (one CQE per submitted entry).
                Slot::Done { .. } | Slot::Free => {}
            }
        }
        self.in_flight -= freed.min(self.in_flight);
        for _ in 0..freed {
            match self.submit_waiters.pop_front() {
                Some((_, w)) => w.wake(),
                None => break,
            }
        }
    }

    fn alloc_slot(&mut self, op_id: u64, pending: u8) -> usize {
        let slot = Slot::Waiting {
            op_id,
            waker: None,
            pending,
            got: 0,
            res: [0; 2],
        };
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        }
    }

    fn free_slot(&mut self, i: usize) {
        self.slots[i] = Slot::Free;
        self.free.push(i);
    }

    /// Called when op `op_id` stops waiting: if it was the eventfd poller, wake another
    /// pending op to take over (see the module doc).
    fn hand_over_polling(&mut self, op_id: u64) {
        if self.poller != Some(op_id) {
            return;
        }
        self.poller = None;
        if let Some((_, w)) = self.submit_waiters.iter().find(|(id, _)| *id != op_id) {
            w.wake_by_ref();
            return;
        }
        for s in &self.slots {
            if let Slot::Waiting {
                op_id: other,
                waker: Some(w),
                ..
            } = s
                && *other != op_id
            {
                w.wake_by_ref();
                return;
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Only abandoned ops can be in flight here: a live op future keeps the ring alive.
        self.reap();
        if self.in_flight == 0 {
            return;
        }
        for (i, s) in self.slots.iter().enumerate() {
            if matches!(s, Slot::Abandoned { .. }) {
                let e = opcode::AsyncCancel::new(i as u64)
                    .build()
                    .user_data(INTERNAL_USER_DATA);
                // SAFETY: a cancel entry references no memory of ours.
                if unsafe { self.ring.submission().push(&e) }.is_err() {
                    let _ = self.ring.submit();
                    // SAFETY: as above.
                    let _ = unsafe { self.ring.submission().push(&e) };
                }
            }
        }
        let deadline = Instant::now() + Duration::from_secs(1);
        while self.in_flight > 0 && Instant::now() < deadline {
            let ts = types::Timespec::new().nsec(50_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap();
        }
        if self.in_flight > 0 {
            // The kernel may still write into these buffers after the ring fd closes: leak
            // them rather than free memory the kernel can touch.
            tracing::warn!(
                ops = self.in_flight,
                "io_uring dropped with uncancellable ops; leaking their buffers"
            );
            for s in self.slots.drain(..) {
                if let Slot::Abandoned { _keep, .. } = s {
                    std::mem::forget(_keep);
                }
            }
        }
    }
}

struct Shared {
    inner: RefCell<Inner>,
    eventfd: AsyncFd<std::fs::File>,
}

/// A thread's io_uring ring. Cheap to clone (`Rc`); `!Send`: it belongs to the thread (and
/// runtime) that created it.
#[derive(Clone)]
pub struct Ring {
    shared: Rc<Shared>,
}

impl fmt::Debug for Ring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ring")
            .field("stats", &self.stats())
            .finish()
    }
}

thread_local! {
    static THREAD_RING: RefCell<Option<(tokio::runtime::Id, Ring)>> = const { RefCell::new(None) };
}

/// Drops the calling thread's cached ring (shards call this before their runtime goes).
pub(crate) fn release_thread_ring() {
    let ring = THREAD_RING.with(|r| r.borrow_mut().take());
    drop(ring);
}

fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd(2) takes no pointers; the flags are valid constants.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by eventfd(2), is open, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Ring {
    /// Creates a ring for the calling thread, registered with the current tokio runtime.
    /// Prefer [`Ring::current`], which shares one ring per thread.
    pub fn new(config: RingConfig) -> Result<Ring, SetupError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(SetupError::NoRuntime);
        }
        let entries = config.entries.clamp(1, 4096).next_power_of_two();
        let ring = IoUring::new(entries).map_err(|e| match e.raw_os_error() {
            Some(libc::ENOSYS) | Some(libc::EPERM) | Some(libc::EACCES) => {
                SetupError::Unavailable(e)
            }
            _ => SetupError::Io(e),
        })?;
        let cq = ring.params().cq_entries() as usize;
        let efd = eventfd().map_err(SetupError::Io)?;
        ring.submitter()
            .register_eventfd(efd.as_raw_fd())
            .map_err(SetupError::Io)?;
        let file = std::fs::File::from(efd);
        // SAFETY: `file` owns the eventfd, so it stays open and refers to the same file
        // description for as long as the AsyncFd (which owns `file`) exists, and `as_raw_fd`
        // always returns that fd.
        let eventfd =
            unsafe { AsyncFd::register_with_interest(file, tokio::io::Interest::READABLE) }
                .map_err(|e| SetupError::Io(e.into_parts().1))?;
        let max_in_flight = if config.max_in_flight == 0 {
            cq
        } else {
            config.max_in_flight.min(cq)
        };
        Ok(Ring {
            shared: Rc::new(Shared {
                inner: RefCell::new(Inner {
                    ring,
                    slots: Vec::new(),
                    free: Vec::new(),
                    in_flight: 0,
                    max_in_flight,
                    submit_waiters: VecDeque::new(),
                    poller: None,
                    next_op_id: 0,
                    abandoned: 0,
                    completed: 0,
                }),
                eventfd,
            }),
        })
    }

    /// The calling thread's ring for the current runtime, created (with
    /// [`RingConfig::default`]) on first use. On a shard it lives as long as the shard.
    pub fn current() -> Result<Ring, SetupError> {
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| SetupError::NoRuntime)?
            .id();
        THREAD_RING.with(|cell| {
            if let Some((id, ring)) = &*cell.borrow()
                && *id == rt
            {
                return Ok(ring.clone());
            }
            let ring = Ring::new(RingConfig::default())?;
            // Replaces (drops) a ring left over from an earlier runtime on this thread.
            let old = cell.borrow_mut().replace((rt, ring.clone()));
            drop(old);
            Ok(ring)
        })
    }

    /// Counters for this ring right now.
    pub fn stats(&self) -> RingStats {
        let inner = self.shared.inner.borrow();
        RingStats {
            in_flight: inner.in_flight,
            abandoned: inner.abandoned,
            waiting_to_submit: inner.submit_waiters.len(),
            completed: inner.completed,
        }
    }

    /// Whether io_uring can be set up here at all (kernel support, not disabled by sysctl or
    /// seccomp), without a runtime: callers pick io_uring or std I/O once at start.
    pub fn probe() -> Result<(), SetupError> {
        IoUring::new(2)
            .map(drop)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOSYS) | Some(libc::EPERM) | Some(libc::EACCES) => {
                    SetupError::Unavailable(e)
                }
                _ => SetupError::Io(e),
            })
    }

    /// The most operations this ring keeps in the kernel at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.inner.borrow().max_in_flight
    }

    fn op<'a, T: Operation>(&self, op: T) -> Op<'a, T> {
        Op {
            ring: self.clone(),
            op: Some(op),
            slot: None,
            op_id: None,
            _fd: PhantomData,
        }
    }

    /// Writes `buf[..len]` at `offset` of `fd` (`pwrite`). Returns the bytes written (a short
    /// count is possible) and the buffer.
    pub fn write_at<'a, B: IoBuf>(
        &self,
        fd: &'a impl AsFd,
        buf: B,
        offset: u64,
    ) -> Op<'a, WriteAt<B>> {
        self.op(WriteAt {
            fd: fd.as_fd().as_raw_fd(),
            buf,
            pos: 0,
            offset,
        })
    }

    /// Writes all of `buf` at `offset`, resubmitting after short writes. Returns the buffer.
    pub async fn write_all_at<B: IoBuf>(
        &self,
        fd: &impl AsFd,
        buf: B,
        offset: u64,
    ) -> BufResult<(), B> {
        let len = buf.bytes_init();
        let raw = fd.as_fd().as_raw_fd();
        let mut op = WriteAt {
            fd: raw,
            buf,
            pos: 0,
            offset,
        };
        while op.pos < len {
            let pos = op.pos;
            let (res, mut back) = self.op(op).await_inner().await;
            match res {
                Ok(0) => return (Err(UringError::WriteZero { op: "write" }), back.buf),
                Ok(n) => back.pos = pos + n,
                Err(e) => return (Err(e), back.buf),
            }
            back.offset = offset + back.pos as u64;
            op = back;
        }
        (Ok(()), op.buf)
    }

    /// Writes `buf[..len]` at `offset` and then `fdatasync`s `fd`, submitted together as a
    /// linked pair (one `io_uring_enter`, the sync starts only after the whole write
    /// succeeded): the WAL's commit step. Resolves to `Ok(len)` only when both succeeded; a
    /// short write is [`UringError::ShortWrite`] (nothing was synced).
    pub fn write_at_fdatasync<'a, B: IoBuf>(
        &self,
        fd: &'a impl AsFd,
        buf: B,
        offset: u64,
    ) -> Op<'a, WriteSync<B>> {
        self.op(WriteSync {
            fd: fd.as_fd().as_raw_fd(),
            buf,
            offset,
        })
    }

    /// Writes the buffers in order, as one `pwritev` at `offset`. Returns the bytes written
    /// (a short count is possible) and the buffers. At most 1024 buffers (`IOV_MAX`).
    pub fn writev_at<'a, B: IoBuf>(
        &self,
        fd: &'a impl AsFd,
        bufs: Vec<B>,
        offset: u64,
    ) -> Op<'a, WritevAt<B>> {
        self.op(WritevAt {
            fd: fd.as_fd().as_raw_fd(),
            bufs,
            iovecs: Vec::new(),
            offset,
        })
    }

    /// Reads into `buf` from `offset` of `fd` (`pread`), filling it from its start up to its
    /// capacity; the buffer's length becomes the bytes read. 0 means end of file.
    pub fn read_at<'a, B: IoBufMut>(
        &self,
        fd: &'a impl AsFd,
        buf: B,
        offset: u64,
    ) -> Op<'a, ReadAt<B>> {
        self.op(ReadAt {
            fd: fd.as_fd().as_raw_fd(),
            buf,
            offset,
        })
    }

    /// `fsync(2)`: flushes data and metadata of `fd`.
    pub fn fsync<'a>(&self, fd: &'a impl AsFd) -> Op<'a, Fsync> {
        self.op(Fsync {
            fd: fd.as_fd().as_raw_fd(),
            datasync: false,
        })
    }

    /// `fdatasync(2)`: flushes data (and the metadata needed to read it back) of `fd`.
    pub fn fdatasync<'a>(&self, fd: &'a impl AsFd) -> Op<'a, Fsync> {
        self.op(Fsync {
            fd: fd.as_fd().as_raw_fd(),
            datasync: true,
        })
    }

    /// `splice(2)`: moves up to `len` bytes from `fd_in` to `fd_out`, one of which must be a
    /// pipe. An offset of `None` uses (and, for non-pipes, advances) the file position; pipes
    /// must be given `None`. Returns the bytes moved (0 at end of input).
    pub fn splice<'a>(
        &self,
        fd_in: &'a impl AsFd,
        off_in: Option<u64>,
        fd_out: &'a impl AsFd,
        off_out: Option<u64>,
        len: u32,
    ) -> Op<'a, Splice> {
        self.op(Splice {
            fd_in: fd_in.as_fd().as_raw_fd(),
            off_in,
            fd_out: fd_out.as_fd().as_raw_fd(),
            off_out,
            len,
        })
    }

    /// Waits until `poll_fd` is ready for `events` (`POLLIN`/`POLLOUT`, a one-shot
    /// `IORING_OP_POLL_ADD`), then `splice(2)`s up to `len` bytes from `fd_in` to `fd_out`
    /// (a linked pair: the splice starts only after the poll fired). Both fds use their file
    /// positions (sockets and pipes). Returns the bytes moved (0 at end of input).
    ///
    /// This is how a socket splice waits for data through the ring alone: a bare splice on a
    /// non-blocking socket fails with `EAGAIN`, and pairing it with a readiness source outside
    /// the ring (the runtime's reactor) loses wake-ups. Dropping the future before it completes
    /// cancels both entries (`IORING_OP_ASYNC_CANCEL`), so an abandoned wait does not keep the
    /// fds' files open until some far-off event.
    pub fn poll_splice<'a>(
        &self,
        poll_fd: &'a impl AsFd,
        events: PollEvents,
        fd_in: &'a impl AsFd,
        fd_out: &'a impl AsFd,
        len: u32,
    ) -> Op<'a, PollSplice> {
        self.op(PollSplice {
            poll_fd: poll_fd.as_fd().as_raw_fd(),
            events,
            fd_in: fd_in.as_fd().as_raw_fd(),
            fd_out: fd_out.as_fd().as_raw_fd(),
            len,
        })
    }

    /// A no-op round trip through the kernel (for tests and measuring ring overhead).
    pub fn nop(&self) -> Op<'static, Nop> {
        self.op(Nop)
    }
}

/// An operation's parameters and owned buffers. Implemented by the op types this module
/// offers; sealed.
pub trait Operation: sealed::Sealed + 'static {
    /// What the op's future resolves to.
    type Output;
    /// Builds the submission entry. The entry may point into `self`'s buffers, which stay
    /// put until the completion (the op is owned by the future or, once that is dropped, by
    /// the ring).
    #[doc(hidden)]
    fn entry(&mut self) -> Result<squeue::Entry, UringError>;
    /// Whether [`linked`](Operation::linked) returns an entry (the op takes two places).
    #[doc(hidden)]
    const LINKED: bool = false;
    /// A second entry linked after the first (`IOSQE_IO_LINK`): it runs only if the first
    /// succeeds in full. Built right after [`entry`](Operation::entry).
    #[doc(hidden)]
    fn linked(&mut self) -> Option<squeue::Entry> {
        None
    }
    /// Whether dropping the op's future while it is in the kernel cancels it (ops that wait
    /// on an outside event, like a poll); other ops run to completion with the ring holding
    /// their buffers.
    #[doc(hidden)]
    const CANCEL_ON_DROP: bool = false;
    /// Turns the kernel's result into the output, handing buffers back.
    #[doc(hidden)]
    fn complete(self, res: Results) -> Self::Output;
    /// Turns a failure before submission into the output, handing buffers back.
    #[doc(hidden)]
    fn fail(self, err: UringError) -> Self::Output;
}

mod sealed {
    pub trait Sealed {}
    impl<B> Sealed for super::WriteAt<B> {}
    impl<B> Sealed for super::WritevAt<B> {}
    impl<B> Sealed for super::WriteSync<B> {}
    impl<B> Sealed for super::ReadAt<B> {}
    impl Sealed for super::Fsync {}
    impl Sealed for super::Splice {}
    impl Sealed for super::PollSplice {}
    impl Sealed for super::Nop {}
}

fn os_err(op: &'static str, res: i32) -> UringError {
    UringError::Os {
        op,
        source: io::Error::from_raw_os_error(-res),
    }
}

fn u32_len(len: usize) -> Result<u32, UringError> {
    u32::try_from(len).map_err(|_| UringError::TooLarge { len })
}

/// A positioned write ([`Ring::write_at`]).
pub struct WriteAt<B> {
    fd: RawFd,
    buf: B,
    /// Bytes of `buf` already written (by earlier rounds of `write_all_at`).
    pos: usize,
    offset: u64,
}

impl<B: IoBuf> Operation for WriteAt<B> {
    type Output = BufResult<usize, B>;
    fn entry(&mut self) -> Result<squeue::Entry, UringError> {
        let len = u32_len(self.buf.bytes_init().saturating_sub(self.pos))?;
        // `pos <= bytes_init`, so the pointer stays within (or one past) the buffer.
        let ptr = self.buf.stable_ptr().wrapping_add(self.pos);
        Ok(opcode::Write::new(types::Fd(self.fd), ptr, len)
            .offset(self.offset)
            .build())
    }
    fn complete(self, res: Results) -> Self::Output {
        let res = res[0];
        if res < 0 {
            (Err(os_err("write", res)), self.buf)
        } else {
            (Ok(res as usize), self.buf)
        }
    }
    fn fail(self, err: UringError) -> Self::Output {
        (Err(err), self.buf)
    }
}

/// A positioned write linked to an fdatasync ([`Ring::write_at_fdatasync`]).
pub struct WriteSync<B> {
    fd: RawFd,
    buf: B,
    offset: u64,
}

impl<B: IoBuf> Operation for WriteSync<B> {
    type Output = BufResult<usize, B>;
    const LINKED: bool = true;
    fn entry(&mut self) -> Result<squeue::Entry, UringError> {
        let len = u32_len(self.buf.bytes_init())?;
        Ok(
            opcode::Write::new(types::Fd(self.fd), self.buf.stable_ptr(), len)
                .offset(self.offset)
                .build(),
        )
    }
    fn linked(&mut self) -> Option<squeue::Entry> {
        Some(
            opcode::Fsync::new(types::Fd(self.fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        )
    }
    fn complete(self, res: Results) -> Self::Output {
        let [written, synced] = res;
        let len = self.buf.bytes_init();
        if written < 0 {
            return (Err(os_err("write", written)), self.buf);
        }
        let n = written as usize;
        if n < len {
            return (Err(UringError::ShortWrite { written: n, len }), self.buf);
        }
        if synced < 0 {
            return (Err(os_err("fdatasync", synced)), self.buf);
        }
        (Ok(n), self.buf)
    }
    fn fail(self, err: UringError) -> Self::Output {
        (Err(err), self.buf)
    }
}

/// A vectored positioned write ([`Ring::writev_at`]).
pub struct WritevAt<B> {
    fd: RawFd,
    bufs: Vec<B>,
    /// Built at submission; a heap array the kernel reads, so it lives in the op (moved
    /// with it, never reallocated after the entry is built).
    iovecs: Vec<libc::iovec>,
    offset: u64,
}

/// The kernel's `IOV_MAX`.
const IOV_MAX: usize = 1024;

impl<B: IoBuf> Operation for WritevAt<B> {
    type Output = BufResult<usize, Vec<B>>;
    fn entry(&mut self) -> Result<squeue::Entry, UringError> {
        if self.bufs.len() > IOV_MAX {
            return Err(UringError::TooLarge {
                len: self.bufs.len(),
            });
        }
        let total: usize = self.bufs.iter().map(IoBuf::bytes_init).sum();
        u32_len(total)?;
        self.iovecs = self
            .bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.stable_ptr() as *mut libc::c_void,
                iov_len: b.bytes_init(),
            })
            .collect();
        // The count is <= IOV_MAX, so it fits a u32.
        Ok(opcode::Writev::new(
            types::Fd(self.fd),
            self.iovecs.as_ptr(),
            self.iovecs.len() as u32,
        )
        .offset(self.offset)
        .build())
    }
    fn complete(self, res: Results) -> Self::Output {
        let res = res[0];
        if res < 0 {
            (Err(os_err("writev", res)), self.bufs)
        } else {
            (Ok(res as usize), self.bufs)
        }
    }
    fn fail(self, err: UringError) -> Self::Output {
        (Err(err), self.bufs)
    }
}

/// A positioned read ([`Ring::read_at`]).
pub struct ReadAt<B> {
    fd: RawFd,
    buf: B,
    offset: u64,
}

impl<B: IoBufMut> Operation for ReadAt<B> {
    type Output = BufResult<usize, B>;
    fn entry(&mut self) -> Result<squeue::Entry, UringError> {
        let len = u32_len(self.buf.bytes_total())?;
        Ok(
            opcode::Read::new(types::Fd(self.fd), self.buf.stable_mut_ptr(), len)
                .offset(self.offset)
                .build(),
        )
    }
    fn complete(mut self, res: Results) -> Self::Output {
        let res = res[0];
        if res < 0 {
            return (Err(os_err("read", res)), self.buf);
        }
        let n = res as usize;
        // SAFETY: the kernel reports it wrote `n` bytes from the start of the buffer, and
        // `n <= bytes_total` because that was the length we asked for.
        unsafe { self.buf.set_init(n) };
        (Ok(n), self.buf)
    }
    fn fail(self, err: UringError) -> Self::Output {
        (Err(err), self.buf)
    }
}

/// `fsync`/`fdatasync` ([`Ring::fsync`], [`Ring::fdatasync`]).
pub struct Fsync {
    fd: RawFd,
    datasync: bool,
}

impl Operation for Fsync {
    type Output = Result<(), UringError>;
    fn entry(&mut self) -> Result<squeue::Entry, UringError> {
        let flags = if self.datasync {
            types::FsyncFlags::DATASYNC
        } else {
            types::FsyncFlags::empty()
        };
        Ok(opcode::Fsync::new(types::Fd(self.fd)).flags(flags).build())
    }
    fn complete(self, res: Results) -> Self::Output {
        let res = res[0];
        if res < 0 {
            Err(os_err(
                if self.datasync { "fdatasync" } else { "fsync" },
                res,
            ))
        } else {
            Ok(())
        }
    }
    fn fail(self, err: UringError) -> Self::Output {
        Err(err)
    }
}

/// `splice` ([`Ring::splice`]).
pub struct Splice {
    fd_in: RawFd,
    off_in: Option<u64>,
    fd_out: RawFd,
    off_out: Option<u64>,
    len: u32,
}

fn splice_off(off: Option<u64>) -> Result<i64, UringError> {
    match off {
        None => Ok(-1),
        Some(o) => i64::try_from(o).map_err(|_| UringError::Os {
            op: "splice",
            source: io::Error::from_raw_os_error(libc::EINVAL),
        }),
    }
}

impl Operation for Splice {
    type Output = Result<usize, UringError>;
    fn entry(&mut self) -> Result<squeue::Entry, UringError> {
        Ok(opcode::Splice::new(
            types::Fd(self.fd_in),
            splice_off(self.off_in)?,
            types::Fd(self.fd_out),
            splice_off(self.off_out)?,
            self.len,
        )
        .build())
    }
    fn complete(self, res: Results) -> Self::Output {
        let res = res[0];
        if res < 0 {
            Err(os_err("splice", res))
        } else {
            Ok(res as usize)
        }
    }
    fn fail(self, err: UringError) -> Self::Output {
        Err(err)
    }
}

/// Which readiness [`Ring::poll_splice`] waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollEvents {
    /// Readable (`POLLIN`; end of input and errors count as ready).
    Readable,
    /// Writable (`POLLOUT`; errors count as ready).
    Writable,
}

/// A poll linked to a splice ([`Ring::poll_splice`]).
pub struct PollSplice {
    poll_fd: RawFd,
    events: PollEvents,
    fd_in: RawFd,
    fd_out: RawFd,
    len: u32,
}

impl Operation for PollSplice {
    type Output = Result<usize, UringError>;
    const LINKED: bool = true;
    const CANCEL_ON_DROP: bool = true;
    fn entry(&mut self) -> Result<squeue::Entry, UringError> {
        let mask = match self.events {
            PollEvents::Readable => libc::POLLIN,
            PollEvents::Writable => libc::POLLOUT,
        };
        // poll(2) masks are small positive shorts.
        Ok(opcode::PollAdd::new(types::Fd(self.poll_fd), mask as u32).build())
    }
    fn linked(&mut self) -> Option<squeue::Entry> {
        Some(
            opcode::Splice::new(
                types::Fd(self.fd_in),
                -1,
                types::Fd(self.fd_out),
                -1,
                self.len,
            )
            .build(),
        )
    }
    fn complete(self, res: Results) -> Self::Output {
        let [polled, spliced] = res;
        if polled < 0 {
            return Err(os_err("poll", polled));
        }
        if spliced < 0 {
            return Err(os_err("splice", spliced));
        }
        Ok(spliced as usize)
    }
    fn fail(self, err: UringError) -> Self::Output {
        Err(err)
    }
}

/// A no-op ([`Ring::nop`]).
pub struct Nop;

impl Operation for Nop {
    type Output = Result<(), UringError>;
    fn entry(&mut self) -> Result<squeue::Entry, UringError> {
        Ok(opcode::Nop::new().build())
    }
    fn complete(self, res: Results) -> Self::Output {
        let res = res[0];
        if res < 0 {
            Err(os_err("nop", res))
        } else {
            Ok(())
        }
    }
    fn fail(self, err: UringError) -> Self::Output {
        Err(err)
    }
}

/// The future of one io_uring operation. Owns the operation (and its buffers) until the
/// kernel completes it; if dropped earlier, hands them to the ring (see the module doc).
/// `'a` is the borrow of the file descriptors, which must stay open while the op may be
/// submitted.
#[must_use = "an io_uring operation does nothing unless awaited"]
pub struct Op<'a, T: Operation> {
    ring: Ring,
    op: Option<T>,
    slot: Option<usize>,
    op_id: Option<u64>,
    _fd: PhantomData<&'a ()>,
}

// No field is structurally pinned: buffers live on the heap, not in the future.
impl<T: Operation> Unpin for Op<'_, T> {}

impl<'a, T: Operation> Op<'a, T> {
    /// Resolves to the kernel's raw result and the operation itself (for ops that resubmit
    /// with updated state, like `write_all_at`).
    fn await_inner(self) -> RawOp<'a, T> {
        RawOp { op: self }
    }

    fn id(&mut self, inner: &mut Inner) -> u64 {
        *self.op_id.get_or_insert_with(|| {
            inner.next_op_id += 1;
            inner.next_op_id
        })
    }

    /// One poll step: submit if not yet, reap, collect the result or wait. `Ok(res)` carries
    /// the kernel results; `Err(e)` a failure before submission (or of the eventfd).
    fn poll_raw(&mut self, cx: &mut Context<'_>) -> Poll<Result<Results, UringError>> {
        let out = self.poll_step(cx);
        if out.is_ready() {
            // Whatever ended the wait, this op no longer watches the eventfd: hand over.
            if let (Some(id), Ok(mut inner)) = (self.op_id, self.ring.shared.inner.try_borrow_mut())
            {
                inner.submit_waiters.retain(|(w, _)| *w != id);
                inner.hand_over_polling(id);
            }
        }
        out
    }

    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Result<Results, UringError>> {
        let shared = Rc::clone(&self.ring.shared);
        loop {
            let mut inner = shared.inner.borrow_mut();
            inner.reap();
            let my_id = self.id(&mut inner);
            match self.slot {
                None => {
                    // A linked pair takes two places (a ring allowing one still runs it).
                    let need = if T::LINKED { 2 } else { 1 };
                    if inner.in_flight + need > inner.max_in_flight.max(need) {
                        match inner.submit_waiters.iter_mut().find(|(id, _)| *id == my_id) {
                            Some((_, w)) => {
                                if !w.will_wake(cx.waker()) {
                                    *w = cx.waker().clone();
                                }
                            }
                            None => inner.submit_waiters.push_back((my_id, cx.waker().clone())),
                        }
                    } else {
                        inner.submit_waiters.retain(|(id, _)| *id != my_id);
                        let Some(op) = self.op.as_mut() else {
                            return Poll::Ready(Err(UringError::Submit(io::Error::other(
                                "op polled after completion",
                            ))));
                        };
                        let entry = match op.entry() {
                            Ok(e) => e,
                            Err(e) => return Poll::Ready(Err(e)),
                        };
                        let second = op.linked();
                        let n = 1 + usize::from(second.is_some());
                        let idx = inner.alloc_slot(my_id, n as u8);
                        let entries: [squeue::Entry; 2] = match second {
                            Some(e2) => [
                                entry.flags(squeue::Flags::IO_LINK).user_data(idx as u64),
                                e2.user_data(idx as u64),
                            ],
                            None => [entry.user_data(idx as u64), opcode::Nop::new().build()],
                        };
                        let entries = &entries[..n];
                        // SAFETY: the entry points only at memory owned by `self.op` (heap
                        // buffers per the IoBuf contract, or none), which stays valid until
                        // the completion for `idx` is reaped: until then it is owned either by
                        // this future or, if the future is dropped, by slot `idx`
                        // (`Slot::Abandoned`, see `Drop for Op`). The fds are borrowed for 'a.
                        // A linked pair is pushed all-or-nothing.
                        let pushed = unsafe { inner.ring.submission().push_multiple(entries) };
                        let pushed = match pushed {
                            Ok(()) => Ok(()),
                            Err(_) => {
                                // The queue holds entries an earlier submit left: flush, retry.
                                let _ = inner.ring.submit();
                                // SAFETY: as above, same entries.
                                unsafe { inner.ring.submission().push_multiple(entries) }
                            }
                        };
                        if pushed.is_err() {
                            inner.free_slot(idx);
                            return Poll::Ready(Err(UringError::Submit(io::Error::other(
                                "submission queue full",
                            ))));
                        }
                        self.slot = Some(idx);
                        inner.in_flight += n;
                        if let Err(e) = submit(&mut inner) {
                            // The entry stays queued; a later submit sends it. Nothing to undo.
                            tracing::debug!(error = %e, "io_uring submit deferred");
                        }
                        continue;
                    }
                }
                Some(idx) => match &mut inner.slots[idx] {
                    Slot::Done { res } => {
                        let res = *res;
                        inner.free_slot(idx);
                        self.slot = None;
                        inner.hand_over_polling(my_id);
                        return Poll::Ready(Ok(res));
                    }
                    Slot::Waiting { waker, .. } => match waker {
                        Some(w) if w.will_wake(cx.waker()) => {}
                        w => *w = Some(cx.waker().clone()),
                    },
                    // Our own slot is only ever Waiting or Done while we hold it.
                    Slot::Free | Slot::Abandoned { .. } => {
                        return Poll::Ready(Err(UringError::Submit(io::Error::other("slot lost"))));
                    }
                },
            }
            // Pending: watch the eventfd (we become the poller), then re-check.
            inner.poller = Some(my_id);
            drop(inner);
            match shared.eventfd.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(UringError::Submit(e))),
                Poll::Ready(Ok(mut guard)) => {
                    let mut counter = [0u8; 8];
                    match guard.get_inner().read(&mut counter) {
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                        Err(e) => return Poll::Ready(Err(UringError::Submit(e))),
                    }
                }
            }
        }
    }
}

fn submit(inner: &mut Inner) -> io::Result<()> {
    loop {
        match inner.ring.submit() {
            Ok(_) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

impl<T: Operation> Future for Op<'_, T> {
    type Output = T::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T::Output> {
        let this = &mut *self;
        match this.poll_raw(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => match this.op.take() {
                Some(op) => Poll::Ready(match r {
                    Ok(res) => op.complete(res),
                    Err(e) => op.fail(e),
                }),
                // Polled again after completion (not possible through `.await`).
                None => Poll::Pending,
            },
        }
    }
}

impl<T: Operation> Drop for Op<'_, T> {
    fn drop(&mut self) {
        let Ok(mut inner) = self.ring.shared.inner.try_borrow_mut() else {
            // Cannot happen (no poll is running while we drop); if it did, keep the buffers
            // alive forever rather than risk freeing memory the kernel uses.
            if self.slot.is_some() {
                std::mem::forget(self.op.take());
            }
            return;
        };
        let Some(my_id) = self.op_id else {
            return; // never polled: nothing submitted, nothing registered
        };
        let before = inner.submit_waiters.len();
        inner.submit_waiters.retain(|(id, _)| *id != my_id);
        let was_waiting = inner.submit_waiters.len() != before;
        match self.slot.take() {
            Some(idx) => match &inner.slots[idx] {
                Slot::Done { .. } => inner.free_slot(idx),
                _ => {
                    // Still in the kernel: the ring keeps the buffers until the completion.
                    let pending = match &inner.slots[idx] {
                        Slot::Waiting { pending, .. } => *pending,
                        _ => 1,
                    };
                    let keep: Box<dyn Any> = Box::new(self.op.take());
                    inner.slots[idx] = Slot::Abandoned {
                        _keep: keep,
                        pending,
                    };
                    inner.abandoned += 1;
                    if T::CANCEL_ON_DROP {
                        // Both entries of a pair carry `idx`; cancelling the first (the
                        // wait) fails the linked one with ECANCELED. The slot is freed when
                        // their completions arrive, as for any abandoned op.
                        let e = opcode::AsyncCancel::new(idx as u64)
                            .build()
                            .user_data(INTERNAL_USER_DATA);
                        // SAFETY: a cancel entry references no memory of ours.
                        if unsafe { inner.ring.submission().push(&e) }.is_err() {
                            let _ = inner.ring.submit();
                            // SAFETY: as above.
                            let _ = unsafe { inner.ring.submission().push(&e) };
                        }
                        let _ = submit(&mut inner);
                    }
                }
            },
            None => {
                // If we had been woken for a free in-flight place but give up, pass it on.
                if !was_waiting
                    && inner.in_flight < inner.max_in_flight
                    && let Some((_, w)) = inner.submit_waiters.pop_front()
                {
                    w.wake();
                }
            }
        }
        inner.hand_over_polling(my_id);
    }
}

/// The future of [`Op::await_inner`]: the raw result plus the operation handed back.
struct RawOp<'a, T: Operation> {
    op: Op<'a, T>,
}

impl<T: Operation> Future for RawOp<'_, T> {
    type Output = (Result<usize, UringError>, T);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut self.op;
        match this.poll_raw(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(r) => match this.op.take() {
                Some(op) => Poll::Ready((
                    r.and_then(|res| {
                        let res = res[0];
                        if res < 0 {
                            Err(os_err("write", res))
                        } else {
                            Ok(res as usize)
                        }
                    }),
                    op,
                )),
                None => Poll::Pending,
            },
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::os::fd::BorrowedFd;

    #[test]
    fn a_closed_fd_gives_ebadf_for_every_op() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async {
            let ring = Ring::current().expect("ring");
            let file = tempfile::tempfile().expect("tempfile");
            let raw = file.as_raw_fd();
            drop(file); // `raw` is now closed; nothing else opens files in this test
            // SAFETY: deliberately borrowing a closed fd number to check the kernel's EBADF
            // comes back as a typed error. No memory is involved: the fd is only a number the
            // kernel validates; the test opens nothing that could reuse it before the ops run.
            let closed = unsafe { BorrowedFd::borrow_raw(raw) };
            let ebadf = Some(libc::EBADF);
            let (r, buf) = ring.write_at(&closed, vec![1u8; 8], 0).await;
            assert_eq!(r.expect_err("write").raw_os_error(), ebadf);
            assert_eq!(buf.len(), 8);
            let (r, _) = ring.read_at(&closed, Vec::with_capacity(8), 0).await;
            assert_eq!(r.expect_err("read").raw_os_error(), ebadf);
            assert_eq!(
                ring.fsync(&closed).await.expect_err("fsync").raw_os_error(),
                ebadf
            );
            assert_eq!(
                ring.fdatasync(&closed)
                    .await
                    .expect_err("fdatasync")
                    .raw_os_error(),
                ebadf
            );
        });
    }
}
